-- Latchkey schema, SQLite. Secrets are AES-256-GCM envelopes (BLOB); state is stored as its SHA-256 only.
CREATE TABLE servers (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    url         TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX servers_tenant ON servers (tenant_id);

CREATE TABLE credentials (
    id                TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL,
    server_id         TEXT NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    subject           TEXT,
    issuer            TEXT,
    resource          TEXT,
    token_endpoint    TEXT NOT NULL,
    client_id         TEXT,
    client_secret     BLOB,
    auth_method       TEXT,
    scopes            TEXT,
    access_token      BLOB,
    access_expires_at INTEGER,
    refresh_token     BLOB,
    generation        INTEGER NOT NULL DEFAULT 0,
    initiated_by      TEXT,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);
CREATE UNIQUE INDEX credentials_user_slot ON credentials (tenant_id, server_id, subject) WHERE subject IS NOT NULL;
CREATE UNIQUE INDEX credentials_shared_slot ON credentials (tenant_id, server_id) WHERE subject IS NULL;

CREATE TABLE oauth_flows (
    state_hash        TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL,
    server_id         TEXT NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    subject           TEXT,
    initiated_by      TEXT NOT NULL,
    state_created_at  INTEGER NOT NULL,
    verifier          BLOB NOT NULL,
    issuer            TEXT NOT NULL,
    resource          TEXT NOT NULL,
    redirect_uri      TEXT NOT NULL,
    client_id         TEXT NOT NULL,
    scopes            TEXT
);
CREATE INDEX oauth_flows_slot ON oauth_flows (tenant_id, server_id);
