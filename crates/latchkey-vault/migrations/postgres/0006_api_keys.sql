-- Latchkey API keys (the `Token` scheme). Only the SHA-256 of a key is stored, never
-- the key: the plaintext is shown once, when minted. A key acts as the principal that
-- minted it (tenant, subject, role).
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    subject       TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    name          TEXT NOT NULL,
    hash          BYTEA NOT NULL UNIQUE CHECK (octet_length(hash) = 32),
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT
);
CREATE INDEX api_keys_owner ON api_keys (tenant_id, subject);
