-- Authorization servers that do not send `iss` now get a redirect URI of their own
-- (issue 15, mix-up defence). Clients registered dynamically before were registered
-- with the shared one: forget them, so the next connect registers afresh with the
-- right URI. Credentials keep their own copy of the client they were issued to, so
-- refreshes are unaffected.
DELETE FROM registered_clients WHERE obtained_by = 'dcr';
