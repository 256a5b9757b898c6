-- The naming setting of `/mcp` (issue 20). `unprefixed`: the server's tools, prompts
-- and resource URIs are federated under their own names instead of
-- `<server-slug>__<name>` and `latchkey://<server-slug>/<uri>`. Off by default.
ALTER TABLE servers ADD COLUMN unprefixed INTEGER NOT NULL DEFAULT 0;
