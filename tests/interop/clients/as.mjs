// oidc-provider, unmodified from its package, as Latchkey's OWN authorization server
// (jwt mode) for the client interop run. Only this configuration is ours:
// DCR open, PKCE required (S256), resource indicators so that an access token for
// Latchkey's resource (--resource, `<public_url>/mcp`) is a JWT (RS256) with `aud` =
// that resource, the scope `mcp` (the one Latchkey's PRM lists), and the claims
// Latchkey reads: `tenant` (always "interop") and `roles` (["latchkey:admin"] for the
// account "admin" only), added with extraTokenClaims. devInteractions (its built-in
// login and consent pages) stand in for a real login: any name and password sign in.
// Access tokens live --at-ttl seconds; a client registered for the refresh_token grant
// gets a refresh token (oidc-provider's documented issueRefreshToken override: MCP
// clients do not all ask for offline_access, and OIDC grants that only with
// prompt=consent), not rotated.
//
// Usage: node as.mjs --resource URL [--at-ttl SECONDS]
// Prints one JSON line {"issuer": …} once it listens on 127.0.0.1 (a port of its own).
// GET /_test/events answers the recorded provider events (nothing secret):
// registrations, authorizations, grants, errors.
import http from "node:http";
import { parseArgs } from "node:util";
import { peer } from "./peers.mjs";

const { values: args } = parseArgs({ options: { resource: { type: "string" }, "at-ttl": { type: "string", default: "600" } } });
if (!args.resource) throw new Error("--resource URL is required");
const RESOURCE = args.resource;
const SCOPE = "mcp";
const TENANT = "interop";

const { default: Provider, errors } = await peer("oidc-provider");

const server = http.createServer();
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  scopes: ["openid", "offline_access", SCOPE],
  features: {
    devInteractions: { enabled: true },
    registration: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo(_ctx, resourceIndicator) {
        if (resourceIndicator !== RESOURCE) throw new errors.InvalidTarget();
        return {
          scope: SCOPE,
          audience: RESOURCE,
          accessTokenTTL: Number(args["at-ttl"]),
          accessTokenFormat: "jwt",
          jwt: { sign: { alg: "RS256" } },
        };
      },
    },
  },
  extraTokenClaims(_ctx, token) {
    return { tenant: TENANT, roles: token.accountId === "admin" ? ["latchkey:admin"] : [] };
  },
  issueRefreshToken: (_ctx, client) => client.grantTypeAllowed("refresh_token"),
  pkce: { required: () => true },
});

const events = [];
const record = (name, fields = {}) => {
  const e = { n: events.length + 1, at: Date.now(), name, ...fields };
  events.push(e);
  process.stderr.write(`${JSON.stringify(e)}\n`);
};
const oidcError = (err) => ({ error: err?.error ?? String(err?.message ?? err), error_description: err?.error_description });
provider.on("registration_create.success", (_ctx, client) =>
  record("registration_create.success", {
    client_id: client.clientId,
    scope: client.scope,
    redirect_uris: client.redirectUris,
    auth_method: client.tokenEndpointAuthMethod,
  }),
);
provider.on("registration_create.error", (_ctx, err) => record("registration_create.error", oidcError(err)));
provider.on("authorization.success", (ctx) =>
  record("authorization.success", { client_id: ctx.oidc.client?.clientId, scope: ctx.oidc.params?.scope, resource: ctx.oidc.params?.resource }),
);
provider.on("authorization.error", (_ctx, err) => record("authorization.error", oidcError(err)));
provider.on("grant.success", (ctx) =>
  record("grant.success", { grant_type: ctx.oidc.params?.grant_type, client_id: ctx.oidc.client?.clientId, scope: ctx.body?.scope }),
);
provider.on("grant.error", (ctx, err) => record("grant.error", { grant_type: ctx.oidc?.params?.grant_type, ...oidcError(err) }));
provider.on("server_error", (_ctx, err) => record("server_error", { error: String(err?.stack ?? err) }));

const app = provider.callback();
server.on("request", (req, res) => {
  if (req.url === "/_test/events") {
    res.setHeader("content-type", "application/json");
    res.end(JSON.stringify(events));
    return;
  }
  app(req, res);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
process.stdout.write(`${JSON.stringify({ issuer })}\n`);
