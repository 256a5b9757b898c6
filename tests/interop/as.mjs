// oidc-provider, unmodified from its package, as the authorization server (AS) of the
// interop matrix. Only its configuration is ours, chosen by --profile:
//
//   resource-indicators  resource indicators as oidc-provider's documentation shows
//                        them: the MCP resource's scope (mcp:tools) is a resource-server
//                        scope given by getResourceServerInfo, not one of the AS's
//                        `scopes` (left at its default, openid offline_access); JWT
//                        access tokens for the resource, defaultResource,
//                        useGrantedResource. Refresh tokens for every client registered
//                        for the refresh_token grant (the documented issueRefreshToken
//                        override), so this profile tests registration and resources.
//   offline-access       mcp:tools also one of the AS's `scopes`; oidc-provider's
//                        default issueRefreshToken: a refresh token only when
//                        offline_access was granted, which OIDC Core allows only with
//                        prompt=consent (oidc-provider drops it otherwise).
//   rotation             as offline-access for scopes, refresh tokens always, and
//                        rotateRefreshToken: true. Reuse detection is oidc-provider's
//                        own and always on: a consumed refresh token presented again
//                        revokes the whole grant.
//
// In every profile: DCR open (features.registration), PKCE required for every client
// (oidc-provider supports S256 only), revocation enabled, devInteractions (its built-in
// login and consent pages) for the browser, in-memory storage.
//
// Usage: node as.mjs --profile NAME --resource URL [--at-ttl SECONDS] [--port N]
// Prints one JSON line {"issuer": …} once it listens on 127.0.0.1 (a port of its own
// unless given: a restart on the same port is the same issuer that forgot everything,
// clients included, as with its default in-memory storage).
// GET /_test/events answers every recorded provider event (also written to stderr as
// JSON lines): token-endpoint grants with their grant_type, refresh-token rotations,
// revocations, registrations, errors. Nothing secret is recorded. POST
// /_test/revoke-grants ends every grant, as an administrator revoking access would.
import http from "node:http";
import { parseArgs } from "node:util";
import { peer } from "./peers.mjs";

const { values: args } = parseArgs({
  options: {
    profile: { type: "string" },
    resource: { type: "string" },
    "at-ttl": { type: "string", default: "30" },
    port: { type: "string", default: "0" },
  },
});
const PROFILES = ["resource-indicators", "offline-access", "rotation"];
if (!PROFILES.includes(args.profile)) throw new Error(`--profile must be one of ${PROFILES}`);
if (!args.resource) throw new Error("--resource URL is required");
const RESOURCE = args.resource;
const AT_TTL = Number(args["at-ttl"]);
const RESOURCE_SCOPE = "mcp:tools";

const { default: Provider, errors } = await peer("oidc-provider");

// Listen first: the issuer names the port.
const server = http.createServer();
await new Promise((resolve) => server.listen(Number(args.port), "127.0.0.1", resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const profile = args.profile;
const config = {
  scopes:
    profile === "resource-indicators"
      ? ["openid", "offline_access"]
      : ["openid", "offline_access", RESOURCE_SCOPE],
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
          scope: RESOURCE_SCOPE,
          audience: RESOURCE,
          accessTokenTTL: AT_TTL,
          accessTokenFormat: "jwt",
          jwt: { sign: { alg: "RS256" } },
        };
      },
    },
  },
  pkce: { required: () => true },
};
if (profile !== "offline-access") {
  // oidc-provider's documented override: refresh tokens whatever the scope, for clients
  // registered for the refresh_token grant.
  config.issueRefreshToken = (_ctx, client) => client.grantTypeAllowed("refresh_token");
}
if (profile === "rotation") config.rotateRefreshToken = true;

const provider = new Provider(issuer, config);

// The event log.
const events = [];
const record = (name, fields = {}) => {
  const e = { n: events.length + 1, at: Date.now(), name, ...fields };
  events.push(e);
  process.stderr.write(`${JSON.stringify(e)}\n`);
};
const oidcError = (err) => ({ error: err?.error ?? String(err?.message ?? err), error_description: err?.error_description });
provider.on("grant.success", (ctx) =>
  record("grant.success", {
    grant_type: ctx.oidc.params?.grant_type,
    client_id: ctx.oidc.client?.clientId,
    refresh_token_issued: Boolean(ctx.body?.refresh_token),
    scope: ctx.body?.scope,
  }),
);
provider.on("grant.error", (ctx, err) =>
  record("grant.error", { grant_type: ctx.oidc?.params?.grant_type, client_id: ctx.oidc?.client?.clientId, ...oidcError(err) }),
);
provider.on("grant.revoked", (ctx, grantId) => record("grant.revoked", { route: ctx.oidc?.route, grant: grantId.slice(0, 8) }));
provider.on("refresh_token.consumed", (t) => record("refresh_token.consumed", { grant: t.grantId.slice(0, 8) }));
provider.on("refresh_token.destroyed", (t) => record("refresh_token.destroyed", { grant: t.grantId.slice(0, 8) }));
provider.on("refresh_token.saved", (t) => record("refresh_token.saved", { grant: t.grantId.slice(0, 8), scope: t.scope }));
provider.on("authorization.success", (ctx) =>
  record("authorization.success", { client_id: ctx.oidc.client?.clientId, prompt: ctx.oidc.params?.prompt, scope: ctx.oidc.params?.scope }),
);
provider.on("authorization.error", (ctx, err) => record("authorization.error", oidcError(err)));
provider.on("registration_create.success", (ctx, client) =>
  record("registration_create.success", { client_id: client.clientId, scope: client.scope, auth_method: client.tokenEndpointAuthMethod }),
);
provider.on("registration_create.error", (ctx, err) => record("registration_create.error", oidcError(err)));
provider.on("revocation.error", (ctx, err) => record("revocation.error", oidcError(err)));
// Every grant, so /_test/revoke-grants can end them as an administrator would.
const grants = new Set();
provider.on("grant.saved", (g) => grants.add(g.jti));
provider.on("server_error", (ctx, err) => record("server_error", { error: String(err?.stack ?? err) }));

const app = provider.callback();
server.on("request", (req, res) => {
  // What the client asked for at the authorization endpoint, as sent (oidc-provider's
  // own events show the scope after its rules, e.g. offline_access dropped).
  if (req.url.startsWith("/auth?")) {
    const q = new URL(req.url, issuer).searchParams;
    record("authorization.request", { scope: q.get("scope"), prompt: q.get("prompt"), resource: q.get("resource") });
  }
  if (req.url === "/_test/revoke-grants" && req.method === "POST") {
    // The AS ends every grant (refresh tokens then fail with invalid_grant).
    Promise.all([...grants].map(async (id) => (await provider.Grant.find(id))?.destroy())).then(
      () => {
        record("test.grants_revoked", { count: grants.size });
        grants.clear();
        res.end("{}");
      },
      (e) => {
        res.statusCode = 500;
        res.end(JSON.stringify({ error: String(e) }));
      },
    );
    return;
  }
  if (req.url === "/_test/events") {
    res.setHeader("content-type", "application/json");
    res.end(JSON.stringify(events));
    return;
  }
  app(req, res);
});

process.on("SIGTERM", () => server.close(() => process.exit(0)));
process.stdout.write(`${JSON.stringify({ issuer, profile })}\n`);
