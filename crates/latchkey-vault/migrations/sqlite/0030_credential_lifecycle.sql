-- The credential lifecycle (issue 16). `needs_consent`: the authorization server
-- refused the credential (the reason), its tokens are cleared and nothing is sent with
-- it again until a new consent replaces the row. `grant_type`: `client_credentials`
-- for a credential minted with that grant, which is renewed with it (no refresh token);
-- NULL for one from a user's consent or a deposit.
ALTER TABLE credentials ADD COLUMN needs_consent TEXT;
ALTER TABLE credentials ADD COLUMN grant_type TEXT;
