-- Every credential names the resource it was issued for (issue 15): a token is sent
-- only to that resource. Deposits made without one were for the server's URL of the
-- time, which is its URL now (a URL change purges the server's credentials).
UPDATE credentials
SET resource = (SELECT url FROM servers WHERE servers.id = credentials.server_id)
WHERE resource IS NULL;
