-- Static-header servers (issue 17). `servers.header_names`: the JSON array of the
-- header names a `headers` server needs, as the user typed them. `header_values`: per
-- slot (like `credentials`: `subject` NULL is the shared slot) the values, one sealed
-- JSON object name -> value bound to the tenant, server, subject and the URL they were
-- set for; `names` (plaintext) says which names have a value. A new row id on every
-- write; a URL change purges them with the server's credentials.
ALTER TABLE servers ADD COLUMN header_names TEXT NOT NULL DEFAULT '[]';

CREATE TABLE header_values (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    server_id     TEXT NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    subject       TEXT,
    url           TEXT NOT NULL,
    names         TEXT NOT NULL,
    sealed_values BYTEA NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE UNIQUE INDEX header_values_user_slot ON header_values (tenant_id, server_id, subject) WHERE subject IS NOT NULL;
CREATE UNIQUE INDEX header_values_shared_slot ON header_values (tenant_id, server_id) WHERE subject IS NULL;
