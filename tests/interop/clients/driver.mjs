// The client half of the interop matrix (issue 16): unmodified MCP clients against
// Latchkey's own endpoints in jwt mode, with oidc-provider as Latchkey's authorization
// server. Started by scripts/interop-clients.sh, which installs the pinned peers
// (peers.lock) and sets the environment below.
//
// Setup: oidc-provider (as.mjs) for Latchkey's resource `<public_url>/mcp`; two MCP
// servers with an `echo` tool and no authorization: the TypeScript SDK's (upstream.mjs,
// 2025-11-25 sessions) and the Python SDK's (py_upstream.py, 2025-11-25 sessions and
// the 2026-07-28 wire); `latchkey serve` in
// jwt mode (issuer, audience `<public_url>/mcp`, the provider's JWKS, required scope
// `mcp`, so its PRM lists it), loopback upstreams allowed, a temporary data directory.
// An admin token (the account "admin" gets the role latchkey:admin) is obtained with
// one authorization-code flow here, and the upstreams are added as "ts-echo" and
// "py-echo" with POST /v1/servers {"auth_type": "none"}.
//
// Rows (clients) × columns (scenarios): each client discovers Latchkey's
// authorization server from its 401 challenge and PRM, registers at oidc-provider
// (DCR), gets consent (as an account of its own, `user-<row>`, a tenant member) and a
// token, then connect, tools/list and tools/call on /mcp (the tools `ts-echo__echo`
// and `py-echo__echo`) and on /mcp/{server} for each upstream (the tool `echo`); then,
// on the /mcp session kept open, one more tools/call once the access token has expired
// (the client must renew it, with its refresh token, and go on). The rows run side by
// side (most of a row's time is that wait).
//
// Relays (issue 20), for the TypeScript and Python SDK clients, through /mcp/{server}
// of the TypeScript SDK server and through /mcp (its tools `ts-echo__confirm` …): a
// client declaring elicitation, sampling and roots, with handlers, calls the upstream's
// `confirm`, `summarise`, `roots` (each sends the client a request during the call) and
// `slow` (two progress notifications for the call's progressToken). The cell passes
// when each handler ran once with what the upstream asked, each result carries the
// handler's answer, and the progress callback ran twice. Then a client declaring none
// of them calls `confirm`: the upstream's elicitation must fail (the result is an
// error that is not a timeout), and (TypeScript) the client must not have been sent
// the request.
//
// KNOWN_FAILURES below lists failures caused by Latchkey defects: they still run, are
// reported as `FAIL (known: …)` and do not fail the run. Any other failure fails the
// run, and so does a listed one that passes ("remove from known failures").
//
// Environment: CLIENTS_PEERS (the npm install), CLIENTS_LATCHKEY (the binary),
// CLIENTS_NODE, CLIENTS_PYTHON (the virtualenv's python), CLIENTS_OUT (logs),
// CLIENTS_TMP (scratch), CLIENTS_TABLE (the Markdown table), CLIENTS_LOCK (the lock
// file), CLIENTS_ONLY (optional: a comma-separated subset of the row ids),
// CLIENTS_AT_TTL (access tokens' lifetime in seconds, default 20).
import { spawn } from "node:child_process";
import { createWriteStream, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createHash, randomBytes } from "node:crypto";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { isDeepStrictEqual } from "node:util";

import { children, start as startIn } from "../process.mjs";
import { consent } from "./consent.mjs";
import { peer, resolver } from "./peers.mjs";

const need = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run scripts/interop-clients.sh)`);
  return v;
};
const HERE = path.dirname(fileURLToPath(import.meta.url));
const LATCHKEY = need("CLIENTS_LATCHKEY");
const NODE = need("CLIENTS_NODE");
const PYTHON = need("CLIENTS_PYTHON");
const OUT = need("CLIENTS_OUT");
const TMP = need("CLIENTS_TMP");
const TABLE = need("CLIENTS_TABLE");
const PINNED = readFileSync(need("CLIENTS_LOCK"), "utf8").split("\n").filter((l) => l.trim() && !l.startsWith("#"));
const pinned = (name) => PINNED.find((l) => l.split(/\s+/)[1].startsWith(`${name}@`) || l.split(/\s+/)[1].startsWith(`${name}==`))?.split(/[@=]+/).pop();
mkdirSync(OUT, { recursive: true });
// Access tokens' lifetime, and how long after a token's `exp` a client is made to call
// again: Latchkey's JWT leeway (30 s by default) and 2 s more, so that Latchkey refuses
// the old token whatever the client does.
const AT_TTL = Number(process.env.CLIENTS_AT_TTL || 20);
const EXPIRY_WAIT = 32;
const sleep = (ms) => new Promise((r) => setTimeout(r, Math.max(0, ms)));
const expOf = (jwt) => JSON.parse(Buffer.from(String(jwt).split(".")[1] ?? "", "base64url").toString() || "{}").exp;

// The rows that run the relay columns (mcp-remote does not: it is a bridge of its own).
const RELAY_ROWS = ["ts-sdk", "py-auto", "py-legacy", "py-2026"];
// Columns. Each MCP cell is: connect (initialize, or none on the 2026-07-28 wire),
// tools/list (the expected tools listed), tools/call of each (its text echoed); a
// failure names the step.
const SCENARIOS = [
  ["auth", "OAuth: 401 → PRM → DCR → consent → token"],
  ["mcp", "/mcp (ts-echo__echo, py-echo__echo)"],
  ["ts", "/mcp/{server}: TS SDK server"],
  ["py", "/mcp/{server}: Python SDK server"],
  ["expiry", "/mcp session after its access token expired"],
  ["relays-ts", "relays via /mcp/{server}: TS SDK server (elicitation, sampling, roots, progress)", RELAY_ROWS],
  ["relays-mcp", "relays via /mcp (ts-echo__confirm …)", RELAY_ROWS],
];
// Whether row `row` runs scenario `step` (a scenario may name the rows that run it).
const runs = (row, step) => !SCENARIOS.find(([s]) => s === step)?.[2] || SCENARIOS.find(([s]) => s === step)[2].includes(row);
// Rows.
const CLIENTS = [
  ["ts-sdk", `TypeScript SDK ${pinned("@modelcontextprotocol/sdk")} (StreamableHTTPClientTransport + OAuthClientProvider)`],
  ["py-auto", `Python SDK ${pinned("mcp")}, default mode (auto)`],
  ["py-legacy", `Python SDK ${pinned("mcp")}, mode legacy (2025-11-25)`],
  ["py-2026", `Python SDK ${pinned("mcp")}, mode 2026-07-28`],
  ["mcp-remote", `mcp-remote ${pinned("mcp-remote")} under the TypeScript SDK's StdioClientTransport`],
].filter(([id]) => !process.env.CLIENTS_ONLY || process.env.CLIENTS_ONLY.split(",").includes(id));

// Failures caused by Latchkey defects, one entry per cell:
//   "<row>/<scenario>": { reason: "what Latchkey does (issue N)", match: /…/ }
// `match`, when given, must match the failure's detail, so that another failure in the
// same cell is not taken for the known one. Remove an entry when its fix lands (the run
// fails while a listed cell passes).
const KNOWN_FAILURES = {};

// Cells that cannot pass by design, whoever implements them well: run all the same,
// reported as `n/a (…)`, never failing the run unless they pass or fail otherwise.
const NOT_APPLICABLE = {
  "py-2026/ts": {
    match: /^tools\/list: MCPError: No session: initialize first/,
    reason:
      "a client pinned to 2026-07-28 skips negotiation, the TS SDK server speaks 2025-11-25 only and wants a session, and /mcp/{server} relays as is",
  },
  "py-2026/relays-ts": {
    match: /^tools\/list: MCPError: No session: initialize first/,
    reason: "as for /mcp/{server} with the TS SDK server: that server wants a 2025-11-25 session",
  },
};

// ---------------------------------------------------------------------------------
// Results and the table.

const results = new Map(); // row -> Map(scenario -> {ok, detail})
const record = (row, step, ok, detail = "") => {
  if (!results.has(row)) results.set(row, new Map());
  results.get(row).set(step, { ok, detail: String(detail).replace(/\s+/g, " ").slice(0, 700) });
  const r = results.get(row).get(step);
  const verdict = ok ? "pass" : NOT_APPLICABLE[`${row}/${step}`] && knownFor(row, step, r) ? "n/a" : knownFor(row, step, r) ? "FAIL (known)" : "FAIL";
  process.stdout.write(`  ${row} / ${step}: ${verdict}${detail ? ` (${String(detail).replace(/\s+/g, " ").slice(0, 300)})` : ""}\n`);
};
const knownFor = (row, step, r) => {
  const k = KNOWN_FAILURES[`${row}/${step}`] ?? NOT_APPLICABLE[`${row}/${step}`];
  if (!k || !r || r.ok) return k;
  return !k.match || k.match.test(r.detail) ? k : undefined;
};
function cell(row, step) {
  const r = results.get(row)?.get(step);
  const known = knownFor(row, step, r);
  if (!r) return runs(row, step) ? "not run" : "–";
  const na = known && NOT_APPLICABLE[`${row}/${step}`];
  if (r.ok) return na ? "PASS (remove from NOT_APPLICABLE)" : known ? "PASS (remove from known failures)" : "PASS";
  if (na) return `n/a (${known.reason})`;
  return known ? `FAIL (known: ${known.reason})` : "FAIL";
}
function unexpected() {
  let n = 0;
  for (const [row] of CLIENTS) {
    for (const [step] of SCENARIOS) {
      if (!runs(row, step)) continue;
      const r = results.get(row)?.get(step);
      const known = knownFor(row, step, r);
      if (r ? r.ok === Boolean(known) : !known) n += 1;
    }
  }
  return n;
}
function table(seconds) {
  const lines = [
    "# Interop: clients",
    "",
    `Generated by scripts/interop-clients.sh on ${new Date().toISOString()} in ${seconds} s; Latchkey in jwt mode, oidc-provider ${pinned("oidc-provider")} as its authorization server; Node ${process.versions.node}.`,
    `Pinned (tests/interop/clients/peers.lock): ${PINNED.map((l) => l.split(/\s+/)[1]).join(", ")}.`,
    "",
    `| client | ${SCENARIOS.map(([, t]) => t).join(" | ")} |`,
    `|---|${SCENARIOS.map(() => "---").join("|")}|`,
    ...CLIENTS.map(([row, title]) => `| ${title} | ${SCENARIOS.map(([s]) => cell(row, s)).join(" | ")} |`),
  ];
  const notes = [];
  for (const [row, title] of CLIENTS) {
    for (const [s, t] of SCENARIOS) {
      const r = results.get(row)?.get(s);
      if (r && !r.ok && !NOT_APPLICABLE[`${row}/${s}`]) notes.push(`- ${title} / ${t}: ${r.detail}`);
      if (r?.ok && knownFor(row, s, r)) notes.push(`- ${title} / ${t}: passes; remove it from KNOWN_FAILURES (or NOT_APPLICABLE) in tests/interop/clients/driver.mjs`);
    }
  }
  if (notes.length) lines.push("", "Failures and stale list entries, as observed:", "", ...notes);
  return `${lines.join("\n")}\n`;
}

// ---------------------------------------------------------------------------------
// Processes and HTTP.

for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(1));

/** [`startIn`] with the logs under OUT. */
function start(name, cmd, args, opts) {
  return startIn(name, cmd, args, { dir: OUT, ...opts });
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function http(method, url, body, headers = {}) {
  const r = await fetch(url, {
    method,
    headers: body === undefined ? headers : { "content-type": "application/json", ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(20000),
  });
  const text = await r.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: r.status, headers: r.headers, text, json };
}
const brief = (r) => `${r.status} ${r.text.replace(/\s+/g, " ").slice(0, 300)}`;
const withTimeout = (promise, ms, what) =>
  Promise.race([promise, new Promise((_, reject) => setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms).unref())]);
const describe = (e) => String(e?.message ?? e).replace(/\s+/g, " ");

// ---------------------------------------------------------------------------------
// Setup.

const env = {};

async function setup() {
  const port = await freePort();
  env.base = `http://127.0.0.1:${port}`;
  env.resource = `${env.base}/mcp`;
  const as = await start("oidc-provider", NODE, [path.join(HERE, "as.mjs"), "--resource", env.resource, "--at-ttl", String(AT_TTL)], {
    ready: /^\{"issuer":"([^"]+)"/m,
    log: "as.log",
  });
  env.issuer = as.match[1];
  const meta = (await http("GET", `${env.issuer}/.well-known/openid-configuration`)).json;
  const up = await start("upstream MCP server", NODE, [path.join(HERE, "upstream.mjs")], { ready: /^\{"url":"([^"]+)"/m, log: "upstream.log" });
  env.upstream = up.match[1];
  const pyPort = await freePort();
  await start("Python upstream MCP server", PYTHON, [path.join(HERE, "py_upstream.py"), "--port", String(pyPort)], {
    ready: /Uvicorn running on/,
    log: "py-upstream.log",
  });
  env.pyUpstream = `http://127.0.0.1:${pyPort}/mcp`;
  const dir = path.join(TMP, "latchkey");
  mkdirSync(path.join(dir, "data"), { recursive: true });
  const config = path.join(dir, "latchkey.toml");
  writeFileSync(
    config,
    [
      `listen = "127.0.0.1:${port}"`,
      `public_url = "${env.base}"`,
      `data_dir = "${dir}/data"`,
      "allow_insecure_loopback = true",
      "[auth]",
      'mode = "jwt"',
      `issuer = "${env.issuer}"`,
      `audience = "${env.resource}"`,
      `jwks_url = "${meta.jwks_uri}"`,
      'required_scopes = ["mcp"]',
      "",
    ].join("\n"),
  );
  await start("latchkey serve", LATCHKEY, ["serve", "--config", config], {
    env: { LATCHKEY_LOG: "info" },
    ready: /Latchkey is listening on (http:\/\/127\.0\.0\.1:[0-9]+)/,
    log: "latchkey.log",
  });

  // An admin's token: one authorization-code flow with PKCE at oidc-provider.
  const redirect = "http://127.0.0.1:9/admin-callback";
  const reg = await http("POST", meta.registration_endpoint, {
    client_name: "interop driver (admin)",
    redirect_uris: [redirect],
    token_endpoint_auth_method: "none",
    grant_types: ["authorization_code"],
    response_types: ["code"],
    scope: "mcp",
  });
  if (reg.status !== 201) throw new Error(`DCR for the admin: ${brief(reg)}`);
  const verifier = randomBytes(32).toString("base64url");
  const authorize = new URL(meta.authorization_endpoint);
  for (const [k, v] of Object.entries({
    client_id: reg.json.client_id,
    response_type: "code",
    redirect_uri: redirect,
    scope: "mcp",
    state: randomBytes(8).toString("hex"),
    code_challenge: createHash("sha256").update(verifier).digest("base64url"),
    code_challenge_method: "S256",
    resource: env.resource,
  })) authorize.searchParams.set(k, v);
  const back = new URL(await consent(authorize.href, { login: "admin" }));
  const token = await fetch(meta.token_endpoint, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code",
      code: back.searchParams.get("code") ?? "",
      redirect_uri: redirect,
      client_id: reg.json.client_id,
      code_verifier: verifier,
      resource: env.resource,
    }),
    signal: AbortSignal.timeout(10000),
  }).then((r) => r.json());
  if (!token.access_token) throw new Error(`the admin's token: ${JSON.stringify(token)}`);
  const admin = { authorization: `Bearer ${token.access_token}` };
  const who = await http("GET", `${env.base}/v1/whoami`, undefined, admin);
  if (who.status !== 200) throw new Error(`GET /v1/whoami with the admin's token: ${brief(who)}`);
  env.ids = {};
  for (const [name, url] of [["ts-echo", env.upstream], ["py-echo", env.pyUpstream]]) {
    const added = await http("POST", `${env.base}/v1/servers`, { name, url, auth_type: "none" }, admin);
    if (added.status !== 201) throw new Error(`POST /v1/servers ${name}: ${brief(added)}`);
    env.ids[name] = added.json.id;
  }
  env.targets = [
    { id: "mcp", url: `${env.base}/mcp`, tools: ["ts-echo__echo", "py-echo__echo"] },
    { id: "ts", url: `${env.base}/mcp/${env.ids["ts-echo"]}`, tools: ["echo"] },
    { id: "py", url: `${env.base}/mcp/${env.ids["py-echo"]}`, tools: ["echo"] },
  ];
  // The relay columns: the TS SDK server's tools, directly named and federated.
  env.relayTargets = [
    { id: "relays-ts", url: `${env.base}/mcp/${env.ids["ts-echo"]}`, prefix: "" },
    { id: "relays-mcp", url: `${env.base}/mcp`, prefix: "ts-echo__" },
  ];
  process.stdout.write(`setup: Latchkey ${env.base} (jwt), oidc-provider ${env.issuer}, upstreams ${JSON.stringify(env.ids)}; the admin is ${JSON.stringify(who.json)}\n`);
}

// ---------------------------------------------------------------------------------
// The TypeScript SDK's Client on one target: tools/list, then tools/call of each tool.

async function exercise(client, target, label) {
  let step = "tools/list";
  try {
    const { tools } = await withTimeout(client.listTools(), 30000, "tools/list");
    const names = tools.map((t) => t.name);
    const missing = target.tools.filter((t) => !names.includes(t));
    if (missing.length) throw new Error(`${missing} not in tools/list: ${names}`);
    for (const name of target.tools) {
      step = `tools/call ${name}`;
      const text = `${label} ${target.id} ${name}`;
      const result = await withTimeout(client.callTool({ name, arguments: { text } }), 30000, "tools/call");
      const got = (result.content ?? []).map((c) => c.text).join("");
      if (result.isError || got !== text) throw new Error(JSON.stringify(result).slice(0, 300));
    }
  } catch (e) {
    throw new Error(`${step}: ${describe(e)}`);
  }
}

// ---------------------------------------------------------------------------------
// Relays (issue 20): what the clients' handlers answer (the Python client gets these
// too), and the checks with the TypeScript SDK's Client.

const RELAY = {
  accepted: { confirmed: true, note: "from the interop client" },
  sampled: "a summary from the client's model",
  root: "file:///interop/workspace",
};
const RELAY_TOOLS = ["confirm", "summarise", "roots", "slow"];
const textOf = (result) => (result?.content ?? []).map((c) => c.text ?? "").join("");

/**
 * A TypeScript SDK Client declaring elicitation (form mode, as the SDK server's
 * `elicitInput` wants it said), sampling and roots, its handlers recording what they
 * were asked into `calls`.
 */
function relayClient(Client, types, calls) {
  const client = new Client({ name: "interop-ts", version: "1.0.0" }, { capabilities: { elicitation: { form: {} }, sampling: {}, roots: {} } });
  client.setRequestHandler(types.ElicitRequestSchema, async (req) => {
    calls.elicitation.push(req.params.message);
    return { action: "accept", content: RELAY.accepted };
  });
  client.setRequestHandler(types.CreateMessageRequestSchema, async (req) => {
    calls.sampling.push(req.params.messages?.[0]?.content?.text);
    return { role: "assistant", content: { type: "text", text: RELAY.sampled }, model: "interop-fixed", stopReason: "endTurn" };
  });
  client.setRequestHandler(types.ListRootsRequestSchema, async () => {
    calls.roots += 1;
    return { roots: [{ uri: RELAY.root, name: "interop" }] };
  });
  return client;
}

/**
 * The relay cell: `client` from relayClient (its records in `calls`) calls each relaying
 * tool of `target`; then `bare()` (resolves with a connected client declaring none of
 * the capabilities, and `received`, every message its transport delivered) calls
 * `confirm`. Every step runs whatever another's outcome; answers the cell's detail, or
 * throws naming each failed step.
 */
async function relayChecks(client, calls, bare, target, label) {
  const name = (t) => `${target.prefix}${t}`;
  // Past the upstream's own wait for an answer (15 s), so that a lost relay shows as its error.
  const call = (c, t, text, options) =>
    withTimeout(c.callTool({ name: name(t), arguments: { text } }, undefined, options), 20000, `tools/call ${name(t)}`);
  const answered = (r) => `the tool answered ${JSON.stringify(r).slice(0, 300)}`;
  const text = `${label} ${target.id}`;
  try {
    const { tools } = await withTimeout(client.listTools(), 20000, "tools/list");
    const names = tools.map((t) => t.name);
    const missing = RELAY_TOOLS.map(name).filter((t) => !names.includes(t));
    if (missing.length) throw new Error(`${missing} not in tools/list: ${names}`);
  } catch (e) {
    throw new Error(`tools/list: ${describe(e)}`);
  }
  const passed = [];
  const failed = [];
  const check = async (step, run) => {
    try {
      passed.push(await run());
    } catch (e) {
      failed.push(`${step}: ${describe(e)}`);
    }
  };

  await check("elicitation", async () => {
    const r = await call(client, "confirm", text);
    if (!isDeepStrictEqual(calls.elicitation, [`Confirm: ${text}`])) throw new Error(`the handler saw ${JSON.stringify(calls.elicitation)}; ${answered(r)}`);
    let accepted;
    try {
      accepted = JSON.parse(textOf(r).replace(/^accepted /, ""));
    } catch {
      // not the accepted content: reported below
    }
    if (r.isError || !textOf(r).startsWith("accepted ") || !isDeepStrictEqual(accepted, RELAY.accepted)) throw new Error(answered(r));
    return "elicitation";
  });
  await check("sampling", async () => {
    const r = await call(client, "summarise", text);
    if (!isDeepStrictEqual(calls.sampling, [`Summarise: ${text}`])) throw new Error(`the handler saw ${JSON.stringify(calls.sampling)}; ${answered(r)}`);
    if (r.isError || textOf(r) !== RELAY.sampled) throw new Error(answered(r));
    return "sampling";
  });
  await check("roots", async () => {
    const r = await call(client, "roots", text);
    if (calls.roots !== 1) throw new Error(`the handler ran ${calls.roots} time(s); ${answered(r)}`);
    if (r.isError || textOf(r) !== RELAY.root) throw new Error(answered(r));
    return "roots";
  });
  await check("progress", async () => {
    const progress = [];
    const r = await call(client, "slow", text, { onprogress: (p) => progress.push(p.progress) });
    if (r.isError) throw new Error(answered(r));
    if (!isDeepStrictEqual(progress, [1, 2])) throw new Error(`the progress callback saw ${JSON.stringify(progress)}; ${answered(r)}`);
    return "progress 1, 2";
  });
  await check("without the capabilities", async () => {
    const b = await bare();
    try {
      const got = await withTimeout(
        b.client.callTool({ name: name("confirm"), arguments: { text } }).then((x) => ({ x }), (e) => ({ e })),
        20000,
        `tools/call ${name("confirm")}`,
      );
      const outcome = got.e ? `the call failed: ${describe(got.e)}` : got.x.isError ? textOf(got.x) : undefined;
      if (outcome === undefined) throw new Error(`no error: ${answered(got.x)}`);
      if (/timed? ?out/i.test(outcome)) throw new Error(`the upstream's request was not refused but timed out: ${outcome}`);
      const sent = b.received.filter((m) => m.method === "elicitation/create");
      if (sent.length) throw new Error(`the client was sent ${JSON.stringify(sent[0]).slice(0, 200)}`);
      return `without the capabilities: ${outcome}`;
    } finally {
      await b.client.close().catch(() => {});
    }
  });
  if (failed.length) throw new Error(`${failed.join("; ")}${passed.length ? ` (passed: ${passed.join("; ")})` : ""}`);
  return `relayed and answered: ${passed.join("; ")}`;
}

// The TypeScript SDK's client with an OAuthClientProvider of ours (tokens in memory,
// consent by HTTP on oidc-provider's pages); one provider for every target, so only
// the first needs consent.

async function tsSdk(row) {
  const { Client } = await peer("@modelcontextprotocol/sdk/client/index.js");
  const { StreamableHTTPClientTransport } = await peer("@modelcontextprotocol/sdk/client/streamableHttp.js");
  const { UnauthorizedError } = await peer("@modelcontextprotocol/sdk/client/auth.js");
  const types = await peer("@modelcontextprotocol/sdk/types.js");
  const store = { landed: undefined, flows: 0 };
  const redirectUrl = "http://127.0.0.1:9/callback"; // never listened on: consent() stops at it
  const provider = {
    get redirectUrl() {
      return redirectUrl;
    },
    get clientMetadata() {
      return {
        client_name: "interop: TypeScript MCP SDK",
        redirect_uris: [redirectUrl],
        grant_types: ["authorization_code", "refresh_token"],
        response_types: ["code"],
        token_endpoint_auth_method: "none",
      };
    },
    state: () => (store.state = randomBytes(8).toString("hex")),
    clientInformation: () => store.client,
    saveClientInformation: (c) => void (store.client = c),
    tokens: () => store.tokens,
    saveTokens: (t) => void (store.tokens = t),
    saveCodeVerifier: (v) => void (store.verifier = v),
    codeVerifier: () => store.verifier,
    async redirectToAuthorization(url) {
      store.flows += 1;
      store.landed = new URL(await consent(url.href, { login: `user-${row}` }));
    },
  };
  const connect = async (url, make = () => new Client({ name: "interop-ts", version: "1.0.0" })) => {
    const open = () => {
      const transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
      const client = make();
      return { client, transport, done: withTimeout(client.connect(transport), 30000, "connect") };
    };
    let c = open();
    try {
      await c.done;
    } catch (e) {
      if (!(e instanceof UnauthorizedError) || !store.landed) throw e;
      const { landed } = store;
      store.landed = undefined;
      if (landed.searchParams.get("state") !== store.state) throw new Error(`state mismatch at the redirect: ${landed}`);
      const code = landed.searchParams.get("code");
      if (!code) throw new Error(`no code at the redirect: ${landed}`);
      await withTimeout(c.transport.finishAuth(code), 20000, "finishAuth (token request)");
      c = open();
      await c.done;
    }
    return c;
  };
  let kept;
  for (const [i, target] of env.targets.entries()) {
    let c;
    try {
      try {
        c = await connect(target.url);
      } catch (e) {
        throw new Error(`connect: ${describe(e)}`);
      } finally {
        if (i === 0) record(row, "auth", Boolean(store.tokens), `${store.flows} consent(s)`);
      }
      await exercise(c.client, target, "typescript");
      record(row, target.id, true, `protocol ${c.transport.protocolVersion}`);
      if (i === 0) kept = c;
    } catch (e) {
      record(row, target.id, false, describe(e));
    } finally {
      if (c !== kept) await c?.client.close().catch(() => {});
    }
  }
  // The relays, on sessions of their own (the tokens are there by now).
  for (const target of env.relayTargets) {
    let c;
    try {
      const calls = { elicitation: [], sampling: [], roots: 0 };
      try {
        c = await withTimeout(connect(target.url, () => relayClient(Client, types, calls)), 30000, "connect");
      } catch (e) {
        throw new Error(`connect: ${describe(e)}`);
      }
      const bare = async () => {
        const b = await connect(target.url);
        const received = [];
        const deliver = b.transport.onmessage;
        b.transport.onmessage = (message, extra) => {
          received.push(message);
          deliver?.(message, extra);
        };
        return { client: b.client, received };
      };
      // One bound for the cell, whatever hangs: the row's expiry check comes after it.
      record(row, target.id, true, await withTimeout(relayChecks(c.client, calls, bare, target, "typescript"), 90000, "the relay checks"));
    } catch (e) {
      record(row, target.id, false, describe(e));
    } finally {
      await c?.client.close().catch(() => {});
    }
  }
  // The /mcp session, once its access token has expired.
  try {
    if (!kept) throw new Error("no open /mcp session");
    const before = store.tokens?.access_token;
    await sleep((expOf(before) + EXPIRY_WAIT) * 1000 - Date.now());
    await exercise(kept.client, { id: "expiry", tools: env.targets[0].tools.slice(0, 1) }, "typescript");
    if (store.tokens?.access_token === before) throw new Error("the call worked but the client still holds its first token");
    record(row, "expiry", true, `${store.flows} consent(s) in all`);
  } catch (e) {
    record(row, "expiry", false, describe(e));
  } finally {
    await kept?.client.close().catch(() => {});
  }
}

// ---------------------------------------------------------------------------------
// The Python SDK's client (py_client.py) in one mode.

function python(row, mode) {
  return new Promise((resolve) => {
    const log = createWriteStream(path.join(OUT, `${row}.log`));
    const child = spawn(
      PYTHON,
      [path.join(HERE, "py_client.py"), "--mode", mode, "--node", NODE, "--consent", path.join(HERE, "consent.mjs"), "--targets", JSON.stringify(env.targets),
        "--login", `user-${row}`, "--expiry-wait", String(EXPIRY_WAIT),
        "--relays", JSON.stringify({ targets: env.relayTargets, expect: RELAY })],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    children.add(child);
    const timer = setTimeout(() => child.kill("SIGKILL"), 200000);
    let buf = "";
    child.stdout.on("data", (d) => {
      log.write(d);
      buf += d.toString();
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        try {
          const m = JSON.parse(line);
          record(row, m.step, m.ok, m.detail);
        } catch {
          // not one of ours
        }
      }
    });
    child.stderr.on("data", (d) => log.write(d));
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      children.delete(child);
      if (code !== 0) {
        for (const [s] of SCENARIOS) if (runs(row, s) && !results.get(row)?.has(s)) record(row, s, false, `py_client.py exited ${code ?? signal}; see ${row}.log`);
      }
      resolve();
    });
  });
}

// ---------------------------------------------------------------------------------
// mcp-remote (a stdio ↔ streamable-HTTP bridge that does its own OAuth) under the TS
// SDK's stdio client, one mcp-remote per target (each URL is its own server to it, so
// each registers and asks for consent). It prints the authorization URL on stderr and
// tries to open a browser (BROWSER=/bin/true and no display here: none opens); we
// give consent by HTTP and complete its loopback callback with a plain GET, as the
// browser would after the AS's redirect.

async function mcpRemote(row) {
  const { Client } = await peer("@modelcontextprotocol/sdk/client/index.js");
  const { StdioClientTransport } = await peer("@modelcontextprotocol/sdk/client/stdio.js");
  const bin = path.join(path.dirname(resolver.resolve("mcp-remote/package.json")), "dist", "proxy.js");
  const configDir = path.join(TMP, "mcp-remote");
  mkdirSync(configDir, { recursive: true });
  const issuerAuth = new RegExp(`(${env.issuer.replace(/[.:/]/g, "\\$&")}/auth\\?\\S+)`);
  let kept;
  let mintedAt;
  for (const [i, target] of env.targets.entries()) {
    const log = createWriteStream(path.join(OUT, `mcp-remote-${target.id}.log`));
    const transport = new StdioClientTransport({
      command: NODE,
      args: [bin, target.url, "--allow-http", "--host", "127.0.0.1", "--auth-timeout", "60"],
      env: { PATH: process.env.PATH, HOME: TMP, MCP_REMOTE_CONFIG_DIR: configDir, BROWSER: "/bin/true" },
      stderr: "pipe",
    });
    const client = new Client({ name: "interop-mcp-remote", version: "1.0.0" });
    let consentError;
    let consents = 0;
    let buf = "";
    transport.stderr?.on("data", (d) => {
      log.write(d);
      if (buf === null) return;
      buf += d.toString();
      const m = buf.match(issuerAuth);
      if (!m) return;
      buf = null;
      consent(m[1], { login: `user-${row}` })
        .then(async (callback) => {
          consents += 1;
          const r = await fetch(callback, { signal: AbortSignal.timeout(10000) });
          if (i === 0) mintedAt = Date.now();
          return r;
        })
        .catch((e) => (consentError = e));
    });
    try {
      try {
        await withTimeout(client.connect(transport), 90000, "connect through mcp-remote");
        if (consentError) throw consentError;
      } catch (e) {
        throw new Error(`connect: ${consentError ? `consent: ${describe(consentError)}` : describe(e)}`);
      } finally {
        if (i === 0) record(row, "auth", consents === 1 && !consentError, `${consents} consent(s) by HTTP, its callback completed by GET`);
      }
      await exercise(client, target, "mcp-remote");
      record(row, target.id, true, `${consents} consent(s); server ${client.getServerVersion()?.name}`);
      if (i === 0) kept = client;
    } catch (e) {
      record(row, target.id, false, `${describe(e)} (see mcp-remote-${target.id}.log)`);
    } finally {
      if (client !== kept) await withTimeout(client.close(), 10000, "close").catch(() => {});
    }
  }
  // The /mcp session through the first mcp-remote, once its access token has expired
  // (minted when its callback completed): the renewal is mcp-remote's, seen at the AS.
  try {
    if (!kept || !mintedAt) throw new Error("no open /mcp session");
    await sleep(mintedAt + (AT_TTL + EXPIRY_WAIT) * 1000 - Date.now());
    const mark = (await http("GET", `${env.issuer}/_test/events`)).json.length;
    await exercise(kept, { id: "expiry", tools: env.targets[0].tools.slice(0, 1) }, "mcp-remote");
    const events = (await http("GET", `${env.issuer}/_test/events`)).json;
    const ours = new Set(events.filter((e) => e.name === "registration_create.success" && e.redirect_uris?.some((u) => u.endsWith("/oauth/callback"))).map((e) => e.client_id));
    const refreshed = events.slice(mark).filter((e) => e.name === "grant.success" && e.grant_type === "refresh_token" && ours.has(e.client_id)).length;
    record(row, "expiry", true, `${refreshed} refresh grant(s) by mcp-remote at the AS`);
  } catch (e) {
    record(row, "expiry", false, `${describe(e)} (see mcp-remote-mcp.log)`);
  } finally {
    await withTimeout(kept?.close() ?? Promise.resolve(), 10000, "close").catch(() => {});
  }
}

// ---------------------------------------------------------------------------------

const began = Date.now();
let failed = false;
try {
  await withTimeout(setup(), 90000, "setup");
  const runners = {
    "ts-sdk": tsSdk,
    "py-auto": (row) => python(row, "auto"),
    "py-legacy": (row) => python(row, "legacy"),
    "py-2026": (row) => python(row, "2026-07-28"),
    "mcp-remote": mcpRemote,
  };
  // Side by side: most of a row's time is the wait for its token's expiry.
  await Promise.all(CLIENTS.map(([row]) => runners[row](row)));
} catch (e) {
  failed = true;
  process.stdout.write(`setup failed: ${describe(e)}\n`);
}
const text = table(Math.round((Date.now() - began) / 1000));
mkdirSync(path.dirname(TABLE), { recursive: true });
writeFileSync(TABLE, text);
writeFileSync(path.join(OUT, "clients.md"), text);
process.stdout.write(`\n${text}`);
const n = unexpected();
if (n) process.stdout.write(`\n${n} cell(s) not as expected (an unlisted failure, or a listed one that passes)\n`);
process.exit(failed || n ? 1 : 0);
