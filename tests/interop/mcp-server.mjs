// The MCP server (OAuth resource server) of the interop matrix, built from the
// TypeScript MCP SDK's own pieces, unmodified: McpServer with two tools (echo, add)
// over StreamableHTTPServerTransport (stateful sessions, as the SDK's examples run it)
// in express; the SDK's requireBearerAuth in front of /mcp and its
// mcpAuthMetadataRouter serving the RFC 9728 protected resource metadata that names
// the authorization server. Bearer tokens are JWTs checked with jose against the AS's
// JWKS: signature, issuer, audience = this resource's URL, expiry. A refusal is the
// SDK's 401 with `WWW-Authenticate: Bearer …, resource_metadata="…"`.
//
// Usage: node mcp-server.mjs --port N --issuer URL
// Prints one JSON line {"url": "http://127.0.0.1:N/mcp"} once it listens.
// GET /_test/log answers what it saw: every accepted token (a SHA-256 prefix, jti,
// iat, exp, client_id, scope; never the token), the number of refused ones, and every
// /mcp request (HTTP method, JSON-RPC method, session).
import { createHash, randomUUID } from "node:crypto";
import { parseArgs } from "node:util";
import { peer } from "./peers.mjs";

const { values: args } = parseArgs({
  options: { port: { type: "string" }, issuer: { type: "string" } },
});
if (!args.port || !args.issuer) throw new Error("--port and --issuer are required");
const ISSUER = args.issuer;
const BASE = `http://127.0.0.1:${args.port}`;
const RESOURCE = `${BASE}/mcp`;
const SCOPE = "mcp:tools";

const express = (await peer("express")).default;
const { McpServer } = await peer("@modelcontextprotocol/sdk/server/mcp.js");
const { StreamableHTTPServerTransport } = await peer("@modelcontextprotocol/sdk/server/streamableHttp.js");
const { requireBearerAuth } = await peer("@modelcontextprotocol/sdk/server/auth/middleware/bearerAuth.js");
const { mcpAuthMetadataRouter, getOAuthProtectedResourceMetadataUrl } = await peer(
  "@modelcontextprotocol/sdk/server/auth/router.js",
);
const { InvalidTokenError } = await peer("@modelcontextprotocol/sdk/server/auth/errors.js");
const { isInitializeRequest } = await peer("@modelcontextprotocol/sdk/types.js");
const { z } = await peer("zod");
const jose = await peer("jose");

// The AS's metadata: RFC 8414's (the Authlib AS), else the OpenID form (oidc-provider
// serves only that one).
async function asMetadata() {
  for (const doc of ["oauth-authorization-server", "openid-configuration"]) {
    const r = await fetch(`${ISSUER}/.well-known/${doc}`, { signal: AbortSignal.timeout(10000) });
    if (r.ok) return r.json();
  }
  throw new Error(`no authorization server metadata at ${ISSUER}`);
}
const meta = await asMetadata();
const jwks = jose.createRemoteJWKSet(new URL(meta.jwks_uri), { timeoutDuration: 5000 });

const seen = { accepted: [], refused: 0, requests: [] };
const verifier = {
  async verifyAccessToken(token) {
    let payload;
    try {
      ({ payload } = await jose.jwtVerify(token, jwks, { issuer: ISSUER, audience: RESOURCE, typ: "at+jwt" }));
    } catch (e) {
      seen.refused += 1;
      throw new InvalidTokenError(`token refused: ${e.code ?? e.message}`);
    }
    const hash = createHash("sha256").update(token).digest("hex").slice(0, 16);
    seen.accepted.push({ hash, jti: payload.jti, iat: payload.iat, exp: payload.exp, client_id: payload.client_id, scope: payload.scope, at: Date.now() });
    return {
      token,
      clientId: payload.client_id,
      scopes: String(payload.scope ?? "").split(" ").filter(Boolean),
      expiresAt: payload.exp,
      resource: new URL(RESOURCE),
    };
  },
};

function mcpServer() {
  const server = new McpServer({ name: "interop-mcp", version: "1.0.0" });
  server.registerTool(
    "echo",
    { description: "Echoes its text", inputSchema: { text: z.string() } },
    async ({ text }) => ({ content: [{ type: "text", text }] }),
  );
  server.registerTool(
    "add",
    { description: "Adds two numbers", inputSchema: { a: z.number(), b: z.number() } },
    async ({ a, b }) => ({ content: [{ type: "text", text: String(a + b) }] }),
  );
  return server;
}

const app = express();
app.use(express.json());
app.get("/_test/log", (_req, res) => res.json(seen));
app.use(
  mcpAuthMetadataRouter({
    oauthMetadata: meta,
    resourceServerUrl: new URL(RESOURCE),
    scopesSupported: [SCOPE],
    resourceName: "interop MCP server",
  }),
);
const auth = requireBearerAuth({
  verifier,
  requiredScopes: [SCOPE],
  resourceMetadataUrl: getOAuthProtectedResourceMetadataUrl(new URL(RESOURCE)),
});

// Sessions as in the SDK's examples: one transport (and McpServer) per session id.
const transports = new Map();
app.all("/mcp", auth, async (req, res) => {
  const sid = req.headers["mcp-session-id"];
  seen.requests.push({ http: req.method, rpc: req.body?.method ?? null, session: sid ? String(sid).slice(0, 8) : null, at: Date.now() });
  let transport = sid ? transports.get(sid) : undefined;
  if (!transport) {
    if (sid) {
      res.status(404).json({ jsonrpc: "2.0", error: { code: -32001, message: "Session not found" }, id: null });
      return;
    }
    if (req.method !== "POST" || !isInitializeRequest(req.body)) {
      res.status(400).json({ jsonrpc: "2.0", error: { code: -32000, message: "No session: initialize first" }, id: null });
      return;
    }
    transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (id) => transports.set(id, transport),
    });
    transport.onclose = () => transports.delete(transport.sessionId);
    await mcpServer().connect(transport);
  }
  await transport.handleRequest(req, res, req.body);
});

const listener = app.listen(Number(args.port), "127.0.0.1", () => {
  process.stdout.write(`${JSON.stringify({ url: RESOURCE })}\n`);
});
process.on("SIGTERM", () => {
  listener.close(() => process.exit(0));
  listener.closeAllConnections?.();
});
