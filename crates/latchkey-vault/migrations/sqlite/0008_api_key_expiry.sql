-- API keys never outlive their bounds (issue 15, item 12): every key expires, keeps the
-- scopes its creator held (NULL for keys made before this migration: the scopes the
-- guard requires of every request) and the role its creator had when it was minted.
-- Keys made before this migration expire at their creation plus the default maxima:
-- 7 days for admin keys, 30 days for member keys (an older key is expired at once).
ALTER TABLE api_keys ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN scopes TEXT;
ALTER TABLE api_keys ADD COLUMN creator_role TEXT
    CHECK (creator_role IS NULL OR creator_role IN ('admin', 'member'));
UPDATE api_keys
   SET expires_at = created_at + CASE role WHEN 'admin' THEN 604800 ELSE 2592000 END,
       creator_role = role;
