-- Progress of `latchkey keys rotate`, one row per sealed table, so an interrupted
-- rotation resumes after the last row it re-encrypted. Cleared when a rotation ends.
CREATE TABLE key_rotation (
    table_name  TEXT PRIMARY KEY,
    target_key  INTEGER NOT NULL,
    last_row    TEXT,
    done        BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at  BIGINT NOT NULL
);
