-- Registered OAuth clients, per server and authorization-server issuer (R-REG-3), and
-- the audit log (R-OBS-6). The audit log holds ids and field names, never a secret.
CREATE TABLE registered_clients (
    id                        TEXT PRIMARY KEY,
    tenant_id                 TEXT NOT NULL,
    server_id                 TEXT NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    issuer                    TEXT NOT NULL,
    client_id                 TEXT NOT NULL,
    client_secret             BYTEA,
    auth_method               TEXT NOT NULL,
    client_secret_expires_at  BIGINT,
    obtained_by               TEXT NOT NULL,
    created_at                BIGINT NOT NULL
);
CREATE UNIQUE INDEX registered_clients_server_issuer ON registered_clients (tenant_id, server_id, issuer);

CREATE TABLE audit_events (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    server_id   TEXT,
    subject     TEXT,
    detail      TEXT,
    at          BIGINT NOT NULL
);
CREATE INDEX audit_events_tenant_at ON audit_events (tenant_id, at);
