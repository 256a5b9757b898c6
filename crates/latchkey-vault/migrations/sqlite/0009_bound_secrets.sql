-- Credentials go only where they came from (issue 15).
-- The revocation endpoint of the issuer a token came from, recorded when it is issued or
-- deposited: a token is revoked there or nowhere (never at a rediscovered endpoint).
ALTER TABLE credentials ADD COLUMN revocation_endpoint TEXT;
-- The issuer a server's pre-registered client belongs to: its id and secret are sent to
-- that authorization server only.
ALTER TABLE servers ADD COLUMN issuer TEXT;
-- Vault-wide facts. `aad_version` = 2 once every sealed value has been re-sealed with its
-- binding (tenant, server, subject, issuer, endpoints) in its associated data; until
-- then values sealed to their row id only are still read (and re-sealed by the rotation).
CREATE TABLE vault_state (
    name   TEXT PRIMARY KEY,
    value  BIGINT NOT NULL
);
-- A rotation interrupted before this upgrade re-sealed rows without their binding: the
-- next rotation (at start-up) starts over, re-sealing every row.
DELETE FROM key_rotation;
-- A database holding no sealed value yet needs no re-seal.
INSERT INTO vault_state (name, value)
SELECT 'aad_version', 2
WHERE NOT EXISTS (SELECT 1 FROM credentials)
  AND NOT EXISTS (SELECT 1 FROM registered_clients)
  AND NOT EXISTS (SELECT 1 FROM oauth_flows)
  AND NOT EXISTS (SELECT 1 FROM servers WHERE client_secret IS NOT NULL);
