-- Server settings the broker needs: how the server authenticates (probed or explicit),
-- whose token a call uses (per user or one shared slot), the grant, and an optional
-- pre-registered client (its secret is a keyring envelope, AAD servers/client_secret/id).
ALTER TABLE servers ADD COLUMN auth_type TEXT NOT NULL DEFAULT 'headers';
ALTER TABLE servers ADD COLUMN token_scope TEXT NOT NULL DEFAULT 'per_user';
ALTER TABLE servers ADD COLUMN grant_type TEXT NOT NULL DEFAULT 'authorization_code';
ALTER TABLE servers ADD COLUMN client_id TEXT;
ALTER TABLE servers ADD COLUMN client_secret BYTEA;
ALTER TABLE servers ADD COLUMN scopes TEXT;
ALTER TABLE servers ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;
