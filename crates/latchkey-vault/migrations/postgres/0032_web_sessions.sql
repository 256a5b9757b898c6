-- People signed in to the web UI through the organisation's OpenID provider
-- (issue 19). `web_sessions`: one row per browser session, keyed by the SHA-256 of the
-- session id (the cookie's value is never stored); the principal it acts as, fixed at
-- sign-in; a bounded lifetime (`expires_at`) and an idle timeout (`last_seen_at`,
-- written at most once a minute). Signing out deletes the row, which ends the session
-- on every instance. `web_logins`: sign-ins under way, keyed by the SHA-256 of the id in
-- the browser's login cookie, single use (deleted when the callback arrives), with the
-- state's SHA-256 and the nonce; the PKCE verifier is kept only in that cookie.
CREATE TABLE web_sessions (
    id_hash       BYTEA PRIMARY KEY CHECK (octet_length(id_hash) = 32),
    tenant_id     TEXT NOT NULL,
    subject       TEXT NOT NULL,
    role          TEXT NOT NULL,
    display_name  TEXT,
    created_at    BIGINT NOT NULL,
    last_seen_at  BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL
);
CREATE INDEX web_sessions_subject ON web_sessions (tenant_id, subject);

CREATE TABLE web_logins (
    id_hash       BYTEA PRIMARY KEY CHECK (octet_length(id_hash) = 32),
    state_hash    BYTEA NOT NULL CHECK (octet_length(state_hash) = 32),
    nonce         TEXT NOT NULL,
    return_to     TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);
