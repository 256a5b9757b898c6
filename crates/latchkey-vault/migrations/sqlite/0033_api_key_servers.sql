-- API keys restricted to named servers, and a prefix to tell keys apart (issue 19).
-- `servers`: a JSON array of server ids the key may use; NULL: every server its owner
-- can use. `prefix`: the key's first 12 characters (`lk_` and 9 more), shown in
-- listings; never more of the key. Keys made before this migration have none.
ALTER TABLE api_keys ADD COLUMN servers TEXT;
ALTER TABLE api_keys ADD COLUMN prefix TEXT;
