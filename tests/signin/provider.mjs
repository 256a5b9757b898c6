// oidc-provider, unmodified from its package, as the organisation's OpenID provider
// people sign in to Latchkey with (issue 19). Only this configuration is ours
// (adapted from tests/interop/clients/as.mjs, where it is Latchkey's own AS):
//
// - a confidential web client for Latchkey's browser sign-in (redirect URI
//   `<latchkey>/v1/auth/callback`, client_secret_basic);
// - a public native client for `latchkey login`: redirect `http://127.0.0.1/callback`,
//   which oidc-provider matches on any port for a native client's loopback URI
//   (RFC 8252 §7.3), and the device authorization grant (RFC 8628);
// - resource indicators: an access token for --audience (Latchkey's `auth.audience`)
//   is a JWT (RS256) with that `aud`, lives --at-ttl seconds and carries the scope
//   `latchkey`; a refresh token for every client allowed the refresh_token grant
//   (rotated for the public client, oidc-provider's default);
// - two accounts in two tenants, with the claims Latchkey reads on both the access
//   and the ID token: alice (tenant t1, roles ["latchkey:admin"], role "admin") and
//   bob (tenant t2, no role, role "member"). devInteractions (its built-in login and
//   consent pages) stand in for a real login: any password signs in.
//
// Usage: node provider.mjs --latchkey URL --audience URL [--at-ttl SECONDS]
// Prints one JSON line {"issuer", "web_client_id", "web_client_secret",
// "cli_client_id", "scope"} once it listens on 127.0.0.1 (a port of its own).
// GET /_test/events answers the recorded provider events (nothing secret).
import http from "node:http";
import { parseArgs } from "node:util";
import { peer } from "./peers.mjs";

const { values: args } = parseArgs({
  options: {
    latchkey: { type: "string" },
    audience: { type: "string" },
    "at-ttl": { type: "string", default: "600" },
  },
});
if (!args.latchkey || !args.audience) throw new Error("--latchkey URL and --audience URL are required");
const LATCHKEY = args.latchkey.replace(/\/+$/, "");
const AUDIENCE = args.audience;
const SCOPE = "latchkey";
const WEB = { id: "latchkey-web", secret: "signin-web-client-secret-0123456789" };
const CLI = "latchkey-cli";
const DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code";

/** The accounts: login name → the claims Latchkey maps. */
export const ACCOUNTS = {
  alice: { tenant: "t1", roles: ["latchkey:admin"], role: "admin", email: "alice@t1.example" },
  bob: { tenant: "t2", roles: [], role: "member", email: "bob@t2.example" },
};
const account = (id) => ACCOUNTS[id] ?? { tenant: "t0", roles: [], role: "member", email: `${id}@t0.example` };

const { default: Provider, errors } = await peer("oidc-provider");

const server = http.createServer();
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: WEB.id,
      client_secret: WEB.secret,
      redirect_uris: [`${LATCHKEY}/v1/auth/callback`],
      post_logout_redirect_uris: [`${LATCHKEY}/`],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "client_secret_basic",
    },
    {
      client_id: CLI,
      application_type: "native",
      redirect_uris: ["http://127.0.0.1/callback"],
      grant_types: ["authorization_code", "refresh_token", DEVICE_GRANT],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
    },
  ],
  scopes: ["openid", "offline_access", "profile", "email", SCOPE],
  claims: {
    openid: ["sub", "tenant", "roles", "role"],
    profile: ["name"],
    email: ["email"],
  },
  // The scope claims go in the ID token of the code flow too (Latchkey reads the
  // tenant and role from it).
  conformIdTokenClaims: false,
  async findAccount(_ctx, id) {
    const a = account(id);
    return {
      accountId: id,
      async claims() {
        return { sub: id, name: id, email: a.email, tenant: a.tenant, roles: a.roles, role: a.role };
      },
    };
  },
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => AUDIENCE,
      useGrantedResource: () => true,
      getResourceServerInfo(_ctx, resourceIndicator) {
        if (resourceIndicator !== AUDIENCE) throw new errors.InvalidTarget();
        return {
          scope: SCOPE,
          audience: AUDIENCE,
          accessTokenTTL: Number(args["at-ttl"]),
          accessTokenFormat: "jwt",
          jwt: { sign: { alg: "RS256" } },
        };
      },
    },
  },
  extraTokenClaims(_ctx, token) {
    const a = account(token.accountId);
    return { tenant: a.tenant, roles: a.roles, role: a.role };
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
provider.on("authorization.success", (ctx) =>
  record("authorization.success", { client_id: ctx.oidc.client?.clientId, scope: ctx.oidc.params?.scope, resource: ctx.oidc.params?.resource }),
);
provider.on("authorization.error", (_ctx, err) => record("authorization.error", oidcError(err)));
provider.on("grant.success", (ctx) =>
  record("grant.success", { grant_type: ctx.oidc.params?.grant_type, client_id: ctx.oidc.client?.clientId, scope: ctx.body?.scope }),
);
provider.on("grant.error", (ctx, err) => record("grant.error", { grant_type: ctx.oidc?.params?.grant_type, ...oidcError(err) }));
provider.on("grant.revoked", (_ctx, grantId) => record("grant.revoked", { grant: grantId }));
provider.on("refresh_token.destroyed", () => record("refresh_token.destroyed"));
provider.on("revocation.error", (_ctx, err) => record("revocation.error", oidcError(err)));
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
process.stdout.write(
  `${JSON.stringify({ issuer, web_client_id: WEB.id, web_client_secret: WEB.secret, cli_client_id: CLI, scope: SCOPE })}\n`,
);
