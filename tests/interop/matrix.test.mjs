// The interop matrix (issue 16): unmodified third-party peers against a real
// `latchkey serve`. For each peer (today: oidc-provider in three configurations, see
// as.mjs; the TypeScript MCP SDK's example server, AS and MCP server in one program;
// an Authlib AS, py_as.py) this starts the authorization server, the MCP server it
// protects (mcp-server.mjs, or the peer's own) and a fresh `latchkey serve` (local mode, loopback upstreams
// allowed, a temporary data directory), then runs the scenarios in order and records
// pass/fail per scenario. node:test and playwright-core (headless Chromium for the
// consent pages), as in tests/e2e/.
//
// A scenario that fails because of a Latchkey defect issue 16 lists is in
// KNOWN_FAILURES below (with its bullet of the issue): it still runs, is reported as
// `FAIL (known: …)` and does not fail the run. Any other failure fails the run, and so
// does a listed scenario that passes (`PASS (remove from known failures)`): remove its
// entry when the defect is fixed.
//
// Environment (scripts/interop.sh sets it): INTEROP_PEERS (the installed packages),
// INTEROP_LATCHKEY (the binary), INTEROP_NODE, INTEROP_PLAYWRIGHT_CORE,
// INTEROP_CHROMIUM, INTEROP_PYTHON (the virtualenv's python), INTEROP_OUT (logs), INTEROP_TMP (scratch), INTEROP_MATRIX (the
// Markdown table), INTEROP_AT_TTL (access-token lifetime in seconds, default 20),
// INTEROP_ONLY (a comma-separated subset of the profiles).

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createRequire } from "node:module";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { killAll, start as startIn } from "./process.mjs";

const need = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run scripts/interop.sh)`);
  return v;
};
const HERE = path.dirname(fileURLToPath(import.meta.url));
const LATCHKEY = need("INTEROP_LATCHKEY");
const NODE = need("INTEROP_NODE");
const OUT = need("INTEROP_OUT");
const TMP = need("INTEROP_TMP");
const MATRIX = need("INTEROP_MATRIX");
const AT_TTL = Number(process.env.INTEROP_AT_TTL || 20);
const { chromium } = createRequire(import.meta.url)(need("INTEROP_PLAYWRIGHT_CORE"));
need("INTEROP_PEERS");
mkdirSync(OUT, { recursive: true });

// The peers (rows) and scenarios (columns), in table order. oidc-provider's profiles
// run as.mjs + mcp-server.mjs; `ts-sdk-demo` is the TypeScript MCP SDK's example server
// (simpleStreamableHttp --oauth-strict: its demo authorization server and its MCP
// server in one program, which brings its own MCP server URL and tools).
const OIDC_PROFILES = ["resource-indicators", "offline-access", "rotation"];
// `authlib` is our small authorization server on Authlib (py_as.py, in the virtualenv
// scripts/interop.sh makes), protecting mcp-server.mjs as oidc-provider does.
const PROFILES = [...OIDC_PROFILES, "ts-sdk-demo", "authlib"].filter(
  (p) => !process.env.INTEROP_ONLY || process.env.INTEROP_ONLY.split(",").includes(p),
);
const PEER_NAMES = {
  "ts-sdk-demo": "MCP TS SDK example (simpleStreamableHttp --oauth-strict)",
  authlib: "Authlib (Python, Flask)",
};
const peerName = (profile) => PEER_NAMES[profile] ?? `oidc-provider (${profile})`;
// The tool each profile's MCP server has that answers its argument back.
const ECHO = { name: "echo", args: (text) => ({ text }), answer: (text) => text };
const TOOLS = { "ts-sdk-demo": { name: "greet", args: (name) => ({ name }), answer: (name) => `Hello, ${name}!` } };
const SCENARIOS = [
  ["doctor", "doctor"],
  ["add", "add server"],
  ["connect", "connect"],
  ["rest", "REST call"],
  ["proxy", "/mcp/{id}"],
  ["federated", "/mcp"],
  ["steady", "/mcp: 1 upstream request per call"],
  ["refresh", "refresh ×50"],
  ["restart", "restart"],
  ["refresh2", "refresh after restart"],
  ["disconnect", "disconnect + revoke"],
  ["dead", "grant revoked at the AS"],
  ["forgotten", "AS forgot its clients"],
];
// Scenarios run for some profiles only (the other rows show "—").
const ONLY_FOR = { dead: ["rotation", "authlib"], forgotten: ["resource-indicators", "authlib"] };

// Cells that cannot apply to a peer by its design (not run; the table shows `n/a`
// with the reason), keyed `<peer>/<scenario>`.
const NOT_APPLICABLE = {
  [`${PEER_NAMES["ts-sdk-demo"]}/refresh`]: {
    reason: "the demo AS issues no refresh token (its exchangeRefreshToken throws); access tokens live 1 h",
  },
  [`${PEER_NAMES["ts-sdk-demo"]}/refresh2`]: { reason: "no refresh token, as above" },
};
// Cells that pass with a narrower check than the column's, keyed as above: `PASS (…)`.
const NARROWER = {
  [`${PEER_NAMES["ts-sdk-demo"]}/connect`]: "no refresh token issued: status says refreshable false, expires_at set",
  [`${PEER_NAMES["ts-sdk-demo"]}/disconnect`]: "the demo AS has no revocation endpoint: token forgotten, calls answer 409",
};

// Failures Latchkey has today, each with the bullet of issue 16 it belongs to. Remove an
// entry when its fix lands: the run fails while a listed scenario passes, except for an
// entry marked `flaky` (a race that does not lose every time), whose pass is reported
// as `PASS (known flaky: …)`.
// `match`, when given, must match every part of the failure (parts are separated by
// " | "), so another failure in the same scenario is not taken for the known one.
const KNOWN_FAILURES = {
};

// ---------------------------------------------------------------------------------
// Results and the table.

const results = new Map(); // peer -> Map(scenario -> {ok, detail})
let unexpected = 0;

function cell(peer, scenario) {
  const r = results.get(peer)?.get(scenario);
  const known = r?.unknown ? undefined : KNOWN_FAILURES[`${peer}/${scenario}`];
  const na = NOT_APPLICABLE[`${peer}/${scenario}`];
  if (na) return `n/a (${na.reason})`;
  if (!r) return ONLY_FOR[scenario] ? "—" : "not run";
  if (r.ok && known?.flaky) return "PASS (known flaky)";
  const narrower = NARROWER[`${peer}/${scenario}`];
  if (r.ok) return known ? "PASS (remove from known failures)" : narrower ? `PASS (${narrower})` : "PASS";
  return known ? `FAIL (known: ${known.reason})` : "FAIL";
}

function writeMatrix() {
  const lines = [
    "# Interop matrix",
    "",
    `Generated by scripts/interop.sh on ${new Date().toISOString()}; access tokens live ${AT_TTL} s.`,
    `Peers (tests/interop/peers.lock): ${PINNED.join(", ")}; Chromium ${browserVersion}; Node ${process.versions.node}.`,
    "",
    `| peer | ${SCENARIOS.map(([, title]) => title).join(" | ")} |`,
    `|---|${SCENARIOS.map(() => "---").join("|")}|`,
  ];
  for (const profile of PROFILES) {
    const peer = peerName(profile);
    lines.push(`| ${peer} | ${SCENARIOS.map(([s]) => cell(peer, s)).join(" | ")} |`);
  }
  const notes = [];
  for (const profile of PROFILES) {
    const peer = peerName(profile);
    for (const [s, title] of SCENARIOS) {
      const r = results.get(peer)?.get(s);
      const known = r?.unknown ? undefined : KNOWN_FAILURES[`${peer}/${s}`];
      if (r && !r.ok) notes.push(`- ${peer} / ${title}${known ? ` (issue 16, ${known.bullet})` : ""}: ${r.detail}`);
      if (r && r.ok && known && !known.flaky) notes.push(`- ${peer} / ${title}: passes; remove it from KNOWN_FAILURES`);
    }
  }
  if (notes.length) lines.push("", "Failures, as observed:", "", ...notes);
  const text = `${lines.join("\n")}\n`;
  mkdirSync(path.dirname(MATRIX), { recursive: true });
  writeFileSync(MATRIX, text);
  writeFileSync(path.join(OUT, "matrix.md"), text);
  return text;
}

/** Runs one scenario as a node:test test: it fails the run only when unexpected. */
function scenario(peer, id, fn, timeout = 90000) {
  const title = SCENARIOS.find(([s]) => s === id)[1];
  const na = NOT_APPLICABLE[`${peer}/${id}`];
  if (na) {
    test(title, { skip: `n/a: ${na.reason}` }, () => {});
    return;
  }
  test(title, { timeout }, async (t) => {
    let ok = true;
    let detail = "";
    try {
      await fn();
    } catch (e) {
      ok = false;
      detail = String(e?.message ?? e).replace(/\s+/g, " ").slice(0, 600);
    }
    if (!results.has(peer)) results.set(peer, new Map());
    results.get(peer).set(id, { ok, detail });
    let known = KNOWN_FAILURES[`${peer}/${id}`];
    if (!ok && known?.match && !detail.replace(/ \(authorization request.*$/, "").split(" | ").every((part) => known.match.test(part))) {
      known = undefined;
      results.get(peer).get(id).unknown = true;
    }
    if (!ok) t.diagnostic(`failed: ${detail}`);
    if (ok && known && !known.flaky) {
      unexpected += 1;
      assert.fail(`${peer} / ${title} passes: remove it from KNOWN_FAILURES`);
    }
    if (!ok && !known) {
      unexpected += 1;
      assert.fail(detail);
    }
  });
}

// ---------------------------------------------------------------------------------
// Processes.

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    killAll();
    process.exit(1);
  });
}

/** [`startIn`] with the logs under OUT. */
function start(name, cmd, args, opts) {
  return startIn(name, cmd, args, { dir: OUT, ...opts });
}

async function stop(child, timeout = 10000) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), timeout);
  await gone;
  clearTimeout(timer);
}

/** A free loopback port (the MCP server's, which the AS must know before it starts). */
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

function run(cmd, args, timeout = 30000) {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout, env: process.env }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === "number" ? err.code : -1) : 0, stdout, stderr });
    });
  });
}

// ---------------------------------------------------------------------------------
// HTTP helpers (every request bounded).

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function http(method, url, body, headers = {}, timeout = 20000) {
  const r = await fetch(url, {
    method,
    headers: body === undefined ? headers : { "content-type": "application/json", ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(timeout),
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

/** One JSON-RPC POST over streamable HTTP; the answer to `body.id` from JSON or SSE. */
async function rpc(url, body, session, version) {
  const headers = { accept: "application/json, text/event-stream" };
  if (session) headers["mcp-session-id"] = session;
  if (version) headers["mcp-protocol-version"] = version;
  const r = await http("POST", url, body, headers);
  let msg;
  if ((r.headers.get("content-type") || "").includes("text/event-stream")) {
    for (const line of r.text.split("\n")) {
      if (!line.startsWith("data:")) continue;
      try {
        const m = JSON.parse(line.slice(5));
        if (m.id === body.id) msg = m;
      } catch {
        // not JSON: ignored
      }
    }
  } else {
    msg = r.json;
  }
  return { ...r, msg, session: r.headers.get("mcp-session-id") ?? session };
}

/** initialize + notifications/initialized on `url`; the session and version. */
async function mcpOpen(url) {
  const init = await rpc(url, {
    jsonrpc: "2.0",
    id: 1,
    method: "initialize",
    params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "interop-driver", version: "1.0.0" } },
  });
  assert.equal(init.status, 200, `initialize: ${brief(init)}`);
  assert.ok(init.msg?.result, `initialize: no result: ${brief(init)}`);
  const version = init.msg.result.protocolVersion;
  const note = await rpc(url, { jsonrpc: "2.0", method: "notifications/initialized" }, init.session, version);
  assert.ok([200, 202].includes(note.status), `initialized: ${brief(note)}`);
  return { session: init.session, version };
}

function resultText(msg) {
  return (msg?.result?.content ?? []).map((c) => c.text).join("");
}

// ---------------------------------------------------------------------------------
// The browser.

const PINNED = readFileSync(path.join(HERE, "peers.lock"), "utf8")
  .split("\n")
  .filter((l) => l.trim() && !l.startsWith("#"));
let browser;
let browserVersion = "?";
before(async () => {
  browser = await chromium.launch({
    executablePath: need("INTEROP_CHROMIUM"),
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  browserVersion = browser.version();
});
after(async () => {
  await browser?.close();
  const text = writeMatrix();
  process.stdout.write(`\n${text}`);
  if (unexpected) process.stdout.write(`\n${unexpected} scenario(s) not as expected\n`);
});

/**
 * Consent in Chromium: opens the authorization URL, signs in and consents on
 * oidc-provider's devInteractions pages, and lands on Latchkey's callback; returns the
 * callback page's result JSON.
 */
async function consent(authorizationUrl, latchkeyBase, shotName) {
  const context = await browser.newContext();
  const page = await context.newPage();
  try {
    await page.goto(authorizationUrl, { timeout: 15000 });
    const deadline = Date.now() + 30000;
    for (;;) {
      if (page.url().startsWith(`${latchkeyBase}/v1/oauth/callback`)) break;
      if (Date.now() > deadline) throw new Error(`consent did not reach Latchkey's callback (at ${new URL(page.url()).pathname})`);
      const login = page.locator('input[name="login"]');
      const cont = page.getByRole("button", { name: "Continue" });
      if (await login.count()) {
        await login.fill("alice");
        await page.locator('input[name="password"]').fill("any-password");
        await Promise.all([page.waitForNavigation({ timeout: 15000 }), page.getByRole("button", { name: "Sign-in" }).click()]);
      } else if (await cont.count()) {
        await Promise.all([page.waitForNavigation({ timeout: 15000 }), cont.click()]);
      } else {
        await page.waitForLoadState("load", { timeout: 5000 });
        if (!page.url().startsWith(`${latchkeyBase}/v1/oauth/callback`)) {
          const text = (await page.locator("body").innerText())
            .replace(/\s+/g, " ")
            .replace(/state: \S+/g, "state: …")
            .slice(0, 300);
          await page.screenshot({ path: path.join(OUT, `${shotName}.png`), fullPage: true });
          throw new Error(`stuck at ${new URL(page.url()).pathname}: ${text}`);
        }
      }
    }
    await page.waitForLoadState("load", { timeout: 5000 }).catch(() => {});
    await page.screenshot({ path: path.join(OUT, `${shotName}.png`), fullPage: true }).catch(() => {});
    const raw = await page.locator("#latchkey-result").textContent({ timeout: 5000 }).catch(() => null);
    return raw ? JSON.parse(raw) : { page: (await page.content()).slice(0, 300) };
  } finally {
    await context.close();
  }
}

// ---------------------------------------------------------------------------------
// One peer: oidc-provider in one profile.

for (const profile of PROFILES) {
  const peer = peerName(profile);
  const tool = TOOLS[profile] ?? ECHO;
  const sdkDemo = profile === "ts-sdk-demo";
  describe(peer, () => {
    const env = {}; // what the scenarios share
    let as;
    let mcp;
    let lk;

    async function startLatchkey() {
      lk = await start("latchkey serve", LATCHKEY, ["serve", "--config", env.config], {
        env: { LATCHKEY_LOG: "info" },
        ready: /Latchkey is listening on (http:\/\/127\.0\.0\.1:[0-9]+)/,
        log: `${profile}-latchkey.log`,
      });
      return lk.match[1];
    }
    const asEvents = async () => (await http("GET", `${env.issuer}/_test/events`)).json;
    const mcpLog = async () => (await http("GET", `${env.mcpBase}/_test/log`)).json;
    const echo = (text) => http("POST", `${env.base}/v1/servers/${env.serverId}/tools/${tool.name}/call`, tool.args(text), {}, 30000);
    // The MCP requests the upstream received since `mark` (an index), as "METHOD rpc".
    // The SDK's example server has no /_test/log: its own console lines are read
    // instead (a POST on a session does not name its JSON-RPC method there).
    async function upstreamRequests(mark = 0) {
      if (!sdkDemo) return (await mcpLog()).requests.slice(mark).map((r) => `${r.http} ${r.rpc ?? ""}`.trim());
      await sleep(300);
      const lines = readFileSync(path.join(OUT, `${profile}-mcp.log`), "utf8").split("\n");
      const seen = [];
      for (const l of lines) {
        if (l.startsWith("Received MCP request for session")) seen.push("POST (on a session)");
        else if (l.startsWith("Request body:")) seen.push("POST (no session)");
        else if (l.startsWith("Establishing new SSE stream")) seen.push("GET");
        else if (l.startsWith("Received session termination")) seen.push("DELETE");
      }
      return seen.slice(mark);
    }

    async function startAs(port = 0) {
      const [name, cmd, argv] =
        profile === "authlib"
          ? ["the Authlib AS", need("INTEROP_PYTHON"), [path.join(HERE, "py_as.py")]]
          : ["oidc-provider", NODE, [path.join(HERE, "as.mjs"), "--profile", profile]];
      as = await start(name, cmd, [...argv, "--resource", env.resource, "--at-ttl", String(AT_TTL), "--port", String(port)], {
        ready: /^\{"issuer":"([^"]+)"/m,
        log: `${profile}-as.log`,
      });
      return as.match[1];
    }

    /** The SDK's example program, unmodified: its AS and its MCP server on two ports. */
    async function startSdkDemo() {
      const [mcpPort, authPort] = [await freePort(), await freePort()];
      const program = path.join(need("INTEROP_PEERS"), "node_modules/@modelcontextprotocol/sdk/dist/esm/examples/server/simpleStreamableHttp.js");
      as = mcp = await start("the SDK's simpleStreamableHttp", NODE, ["--import", path.join(HERE, "loopback.mjs"), program, "--oauth", "--oauth-strict"], {
        env: { MCP_PORT: String(mcpPort), MCP_AUTH_PORT: String(authPort) },
        ready: /MCP Streamable HTTP Server listening on port/,
        log: `${profile}-mcp.log`,
      });
      // The program names its URLs with `localhost`; its AS listens a moment later.
      env.issuer = `http://localhost:${authPort}`;
      env.mcpUrl = `http://localhost:${mcpPort}/mcp`;
      const deadline = Date.now() + 15000;
      for (;;) {
        const r = await http("GET", `${env.issuer}/.well-known/oauth-authorization-server`, undefined, {}, 2000).catch(() => undefined);
        if (r?.status === 200) break;
        if (Date.now() > deadline) throw new Error("the SDK's demo AS did not answer within 15 s");
        await sleep(200);
      }
    }

    before(async () => {
      if (sdkDemo) {
        await startSdkDemo();
      } else {
        await startOidc();
      }
      const dir = path.join(TMP, profile);
      mkdirSync(path.join(dir, "data"), { recursive: true });
      env.config = path.join(dir, "latchkey.toml");
      writeFileSync(env.config, `listen = "127.0.0.1:0"\ndata_dir = "${dir}/data"\nallow_insecure_loopback = true\n`);
      env.base = await startLatchkey();
      // Restarts keep the port: the registered redirect URI names it.
      writeFileSync(env.config, `listen = "${env.base.slice("http://".length)}"\ndata_dir = "${dir}/data"\nallow_insecure_loopback = true\n`);
    });

    async function startOidc() {
      const mcpPort = await freePort();
      env.resource = `http://127.0.0.1:${mcpPort}/mcp`;
      env.issuer = await startAs();
      mcp = await start("MCP server", NODE, [path.join(HERE, "mcp-server.mjs"), "--port", String(mcpPort), "--issuer", env.issuer], {
        ready: /^\{"url":"([^"]+)"/m,
        log: `${profile}-mcp.log`,
      });
      env.mcpUrl = mcp.match[1];
      env.mcpBase = `http://127.0.0.1:${mcpPort}`;
    }
    after(async () => {
      // What the AS and the MCP server saw, kept with the logs.
      for (const [file, url] of sdkDemo ? [] : [["as-events", `${env.issuer}/_test/events`], ["mcp-seen", `${env.mcpBase}/_test/log`]]) {
        if (!url.startsWith("undefined")) {
          const r = await http("GET", url).catch(() => undefined);
          if (r) writeFileSync(path.join(OUT, `${profile}-${file}.json`), r.text);
        }
      }
      await stop(lk?.child);
      await stop(mcp?.child);
      await stop(as?.child);
    });

    // doctor runs first; whether it was right is judged once connect has been tried:
    // its verdict must match what connect then does.
    test("doctor (run)", { timeout: 40000 }, async () => {
      const r = await run(LATCHKEY, ["doctor", env.mcpUrl, "--allow-insecure-loopback", "--json"], 30000);
      env.doctor = { code: r.code, json: (() => { try { return JSON.parse(r.stdout); } catch { return undefined; } })(), stderr: r.stderr };
    });

    scenario(peer, "add", async () => {
      const r = await http("POST", `${env.base}/v1/servers`, { name: sdkDemo ? "sdk demo" : profile === "authlib" ? "authlib" : `oidc ${profile}`, url: env.mcpUrl });
      assert.equal(r.status, 201, `POST /v1/servers: ${brief(r)}`);
      assert.equal(r.json.auth_type, "oauth", `probed auth type ${r.json.auth_type}`);
      env.serverId = r.json.id;
    });

    scenario(peer, "connect", async () => {
      assert.ok(env.serverId, "no server (add failed)");
      const r = await http("POST", `${env.base}/v1/oauth/start`, { server_id: env.serverId }, {}, 30000);
      assert.equal(r.status, 200, `POST /v1/oauth/start: ${brief(r)}`);
      assert.equal(r.json.status, "redirect", `POST /v1/oauth/start: ${brief(r)}`);
      const result = await consent(r.json.authorization_url, env.base, `${profile}-consent`);
      const status = await http("GET", `${env.base}/v1/oauth/status/${env.serverId}`);
      assert.equal(status.json?.has_token, true, `after the callback (${JSON.stringify(result).slice(0, 200)}), status: ${brief(status)}`);
      env.connected = status.json;
      if (sdkDemo) {
        // Issue 16, bullet 2: the demo AS never issues a refresh token; the status
        // must say so plainly, with the time the connection lasts until.
        assert.equal(status.json.refreshable, false, `the demo AS issues no refresh token, yet: ${brief(status)}`);
        assert.ok(status.json.expires_at && status.json.expired === false, `no expiry in the status: ${brief(status)}`);
        return;
      }
      // Issue 16, bullet 2: every profile can issue a refresh token when asked
      // properly (offline-access: only with offline_access and prompt=consent).
      assert.equal(status.json.refreshable, true, `connected without a refresh token: ${brief(status)}`);
    });

    scenario(peer, "doctor", async () => {
      const d = env.doctor;
      assert.ok(d?.json, `doctor printed no JSON (exit ${d?.code}): ${d?.stderr?.slice(0, 200)}`);
      const predicted = d.json.ok === true && d.code === 0;
      const connected = Boolean(env.connected);
      assert.equal(
        predicted,
        connected,
        predicted
          ? `doctor said OK (exit 0) but connect failed`
          : `doctor said not OK (exit ${d.code}: ${JSON.stringify(d.json.problems).slice(0, 300)}) but connect worked`,
      );
    });

    scenario(peer, "rest", async () => {
      const r = await echo("hello over REST");
      assert.equal(r.status, 200, `POST …/tools/echo/call: ${brief(r)}`);
      assert.match(r.text, /hello over REST/);
    });

    scenario(peer, "proxy", async () => {
      const url = `${env.base}/mcp/${env.serverId}`;
      const { session, version } = await mcpOpen(url);
      const call = await rpc(url, { jsonrpc: "2.0", id: 2, method: "tools/call", params: { name: tool.name, arguments: tool.args("through the proxy") } }, session, version);
      assert.equal(call.status, 200, `tools/call: ${brief(call)}`);
      assert.equal(resultText(call.msg), tool.answer("through the proxy"), `tools/call: ${brief(call)}`);
    });

    scenario(peer, "federated", async () => {
      const url = `${env.base}/mcp`;
      const { session, version } = await mcpOpen(url);
      const list = await rpc(url, { jsonrpc: "2.0", id: 2, method: "tools/list", params: {} }, session, version);
      assert.equal(list.status, 200, `tools/list: ${brief(list)}`);
      const name = (list.msg?.result?.tools ?? []).map((t) => t.name).find((n) => n.endsWith(`__${tool.name}`));
      assert.ok(name, `no <slug>__${tool.name} in tools/list: ${brief(list)}`);
      const call = await rpc(url, { jsonrpc: "2.0", id: 3, method: "tools/call", params: { name, arguments: tool.args("federated") } }, session, version);
      assert.equal(call.status, 200, `tools/call ${name}: ${brief(call)}`);
      assert.equal(resultText(call.msg), tool.answer("federated"), `tools/call ${name}: ${brief(call)}`);
      env.federated = { url, session, version, name };
    });

    // Issue 16, bullet 6: in steady state a federated tools/call is one upstream
    // request (the upstream session kept), as through /mcp/{server}.
    scenario(peer, "steady", async () => {
      const f = env.federated;
      assert.ok(f, "no federated session (/mcp failed)");
      const mark = (await upstreamRequests()).length;
      for (let i = 0; i < 3; i++) {
        const call = await rpc(f.url, { jsonrpc: "2.0", id: 10 + i, method: "tools/call", params: { name: f.name, arguments: tool.args(`steady ${i}`) } }, f.session, f.version);
        assert.equal(resultText(call.msg), tool.answer(`steady ${i}`), `tools/call ${f.name}: ${brief(call)}`);
      }
      const upstream = await upstreamRequests(mark);
      assert.deepEqual(upstream, Array(3).fill(sdkDemo ? "POST (on a session)" : "POST tools/call"), `3 federated calls made ${upstream.length} upstream requests: ${upstream.join(", ")}`);
    });

    /**
     * Waits until the newest token the MCP server accepted has expired, then makes
     * `callers` concurrent REST calls: all must succeed with a new token, through
     * exactly one refresh grant at the AS and none refused.
     */
    async function refreshAtExpiry(callers) {
      const seen = await mcpLog();
      assert.ok(seen.accepted.length, "the MCP server never accepted a token (not connected)");
      const exp = Math.max(...seen.accepted.map((a) => a.exp));
      const wait = exp * 1000 + 1000 - Date.now();
      assert.ok(wait < (AT_TTL + 5) * 1000, `the token expires in ${wait} ms`);
      if (wait > 0) await sleep(wait);
      const before = (await asEvents()).length;
      const accepted = seen.accepted.length;
      const answers = await Promise.all(Array.from({ length: callers }, (_, i) => echo(`caller ${i}`)));
      await sleep(300);
      const events = (await asEvents()).slice(before);
      const grants = events.filter((e) => e.name === "grant.success" && e.grant_type === "refresh_token");
      const refused = events.filter((e) => e.name === "grant.error");
      const bad = answers.filter((r) => r.status !== 200);
      // What the connection started with: the authorization request as sent and
      // whether the code grant gave a refresh token.
      const all = await asEvents();
      const asked = all.filter((e) => e.name === "authorization.request").map((e) => `scope=${e.scope} prompt=${e.prompt}`);
      const code = all.filter((e) => e.name === "grant.success" && e.grant_type === "authorization_code").map((e) => `refresh token ${e.refresh_token_issued ? "issued" : "NOT issued"}`);
      const hint = `authorization request ${asked.join(", ")}; code grant: ${code.join(", ")}; AS events since the expiry: ${JSON.stringify(events.map((e) => [e.name, e.grant_type, e.error].filter(Boolean))).slice(0, 300)}`;
      // Every problem is reported (one per " | "-separated part), so a known failure
      // cannot hide another one.
      const problems = [];
      const lost = bad.filter((r) => /lost the session/.test(r.text));
      const other = bad.filter((r) => !/lost the session/.test(r.text));
      if (lost.length) problems.push(`${lost.length}/${callers} calls failed: ${brief(lost[0])}`);
      if (other.length) problems.push(`${other.length}/${callers} calls failed: ${brief(other[0])}`);
      if (grants.length !== 1) problems.push(`${grants.length} refresh grants for one expiry`);
      if (refused.length) problems.push(`${refused.length} refused grants`);
      if (events.some((e) => e.name === "grant.revoked")) problems.push("the AS revoked the grant");
      const fresh = new Set((await mcpLog()).accepted.slice(accepted).map((a) => a.hash));
      if (fresh.size !== 1) problems.push(`${fresh.size} distinct tokens reached the MCP server after the expiry`);
      assert.ok(problems.length === 0, `${problems.join(" | ")} (${hint})`);
    }

    scenario(peer, "refresh", () => refreshAtExpiry(50), (AT_TTL + 60) * 1000);

    scenario(peer, "restart", async () => {
      await stop(lk.child);
      const base = await startLatchkey();
      assert.equal(base, env.base, "the same listening address");
      const r = await echo("after a restart");
      assert.equal(r.status, 200, `POST …/tools/echo/call after the restart: ${brief(r)}`);
      assert.match(r.text, /after a restart/);
    });

    // The refresh token written back by the first refresh (a rotated one under the
    // rotation profile) is the one read after the restart.
    scenario(peer, "refresh2", () => refreshAtExpiry(5), (AT_TTL + 60) * 1000);

    scenario(peer, "disconnect", async () => {
      if (sdkDemo) {
        // No revocation endpoint to see it at: the credential is gone from Latchkey.
        const r = await http("DELETE", `${env.base}/v1/credentials/${env.serverId}`);
        assert.equal(r.status, 204, `DELETE /v1/credentials/{id}: ${brief(r)}`);
        const after = await echo("after disconnect");
        assert.equal(after.status, 409, `a call after disconnect: ${brief(after)}`);
        return;
      }
      const before = (await asEvents()).length;
      const r = await http("DELETE", `${env.base}/v1/credentials/${env.serverId}`);
      assert.equal(r.status, 204, `DELETE /v1/credentials/{id}: ${brief(r)}`);
      let events = [];
      const deadline = Date.now() + 5000;
      const revoked = () => events.some((e) => e.name === "grant.revoked" || e.name === "refresh_token.destroyed");
      while (!revoked() && Date.now() < deadline) {
        await sleep(200);
        events = (await asEvents()).slice(before);
      }
      assert.ok(revoked(), `no revocation at the AS; AS events: ${JSON.stringify(events.map((e) => [e.name, e.error].filter(Boolean)))}`);
      const after = await echo("after disconnect");
      assert.equal(after.status, 409, `a call after disconnect: ${brief(after)}`);
    });

    // Issue 16, bullet 5: the AS restarts with its in-memory storage and forgets the
    // client Latchkey registered. After the expiry the refresh fails (the client is
    // unknown); the next connect must register again and work.
    if (ONLY_FOR.forgotten.includes(profile)) {
      scenario(peer, "forgotten", async () => {
        const start1 = await http("POST", `${env.base}/v1/oauth/start`, { server_id: env.serverId }, {}, 30000);
        assert.equal(start1.json?.status, "redirect", `reconnect: POST /v1/oauth/start: ${brief(start1)}`);
        await consent(start1.json.authorization_url, env.base, `${profile}-reconnect`);
        const first = await echo("reconnected");
        assert.equal(first.status, 200, `a call after reconnecting: ${brief(first)}`);
        await stop(as.child);
        assert.equal(await startAs(new URL(env.issuer).port), env.issuer, "the AS restarted as the same issuer");
        const seen = await mcpLog();
        const wait = Math.max(...seen.accepted.map((a) => a.exp)) * 1000 + 1000 - Date.now();
        if (wait > 0) await sleep(wait);
        const problems = [];
        const dead = await echo("after the AS forgot");
        if (!(dead.status === 409 && dead.json?.code === "needs_oauth_reauth")) problems.push(`a call once the AS forgot the client: ${brief(dead)}`);
        const start2 = await http("POST", `${env.base}/v1/oauth/start`, { server_id: env.serverId }, {}, 30000);
        if (start2.json?.status !== "redirect") {
          problems.push(`POST /v1/oauth/start without force: ${brief(start2)}`);
        } else {
          const registered = (await asEvents()).filter((e) => e.name === "registration_create.success").map((e) => e.client_id);
          const used = new URL(start2.json.authorization_url).searchParams.get("client_id");
          if (!registered.includes(used)) problems.push(`the new flow uses a client the AS does not know (registrations since its restart: ${registered.length})`);
          try {
            await consent(start2.json.authorization_url, env.base, `${profile}-forgotten`);
            const r = await echo("registered again");
            if (r.status !== 200) problems.push(`a call after connecting again: ${brief(r)}`);
          } catch (e) {
            problems.push(`consent: ${e.message}`);
          }
        }
        assert.ok(problems.length === 0, problems.join(" | "));
      }, (AT_TTL + 90) * 1000);
    }

    // Issue 16, bullet 4: after the AS revoked the grant, the refresh token is dead:
    // at most one refused grant (plus the re-read retry), every call a 409
    // needs_oauth_reauth, and /v1/oauth/start without force starts a new flow.
    if (ONLY_FOR.dead.includes(profile)) {
      scenario(peer, "dead", async () => {
        // Connected again, unless the slot already works (after "AS forgot its clients"
        // it does: the call just below shows it).
        const start = await http("POST", `${env.base}/v1/oauth/start`, { server_id: env.serverId }, {}, 30000);
        if (start.json?.status !== "already_authorized") {
          assert.equal(start.json?.status, "redirect", `reconnect: POST /v1/oauth/start: ${brief(start)}`);
          await consent(start.json.authorization_url, env.base, `${profile}-reconnect-dead`);
        }
        const first = await echo("reconnected");
        assert.equal(first.status, 200, `a call after reconnecting: ${brief(first)}`);
        const revoked = await http("POST", `${env.issuer}/_test/revoke-grants`);
        assert.equal(revoked.status, 200, `revoking at the AS: ${brief(revoked)}`);
        const seen = await mcpLog();
        const wait = Math.max(...seen.accepted.map((a) => a.exp)) * 1000 + 1000 - Date.now();
        if (wait > 0) await sleep(wait);
        const mark = (await asEvents()).length;
        const answers = [];
        for (let i = 0; i < 7; i++) answers.push(await echo(`dead ${i}`));
        const refused = (await asEvents()).slice(mark).filter((e) => e.name === "grant.error");
        const codes = answers.map((r) => `${r.status} ${r.json?.code ?? ""}`.trim());
        const again = await http("POST", `${env.base}/v1/oauth/start`, { server_id: env.serverId }, {}, 30000);
        const problems = [];
        if (!codes.every((c) => c === "409 needs_oauth_reauth")) problems.push(`7 calls answered: ${codes.join(", ")}`);
        if (refused.length > 2) problems.push(`7 calls made ${refused.length} refused grants at the AS (${[...new Set(refused.map((e) => e.error))]})`);
        if (again.json?.status !== "redirect") problems.push(`POST /v1/oauth/start without force on the dead slot: ${brief(again)}`);
        assert.ok(problems.length === 0, problems.join("; "));
      }, (AT_TTL + 60) * 1000);
    }
  });
}
