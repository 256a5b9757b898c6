-- Whether the authorization server promised RFC 9207 `iss` on its responses: recorded
-- with the flow so the callback can insist on it without rediscovering.
ALTER TABLE oauth_flows ADD COLUMN iss_required BOOLEAN NOT NULL DEFAULT FALSE;
