// The web UI in jwt mode (issue 19): people sign in through oidc-provider (unmodified,
// consent on its own pages) in headless Chromium, use Latchkey, make an API key an
// agent uses, and sign out; a cross-site form changes nothing; two people in two
// tenants see only their own servers and events. scripts/signin.sh runs it.

import { after, test } from "node:test";
import assert from "node:assert/strict";
import { chromium, cliStart, OUT, signInAs, startTeam, stopAll, tempDir } from "./harness.mjs";
import { readFileSync } from "node:fs";
import path from "node:path";

const SCRIPTED = JSON.parse(process.env.SIGNIN_SCRIPTED || "null");
let team;

/** The team, started by the first test that runs: node still runs a file's `before`
 * when a name pattern leaves none of its tests, but not its `after`. */
async function ensureTeam() {
  team ??= await startTeam({ name: "web" });
  return team;
}

after(stopAll);

/** Polls `fn` until it returns a truthy value; fails with `what` after `timeout` ms. */
async function until(fn, what, timeout = 20000) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

let shots = 0;
async function shot(page, name) {
  shots += 1;
  await page.screenshot({ path: path.join(OUT, `ui-${String(shots).padStart(2, "0")}-${name}.png`), fullPage: true });
}

/** A fresh browser context on Latchkey's page, signed in as `who`. */
async function signedIn(who) {
  await ensureTeam();
  const b = await chromium();
  const context = await b.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`uncaught: ${e.message}`));
  page.on("dialog", (d) => d.accept());
  await page.goto(`${team.base}/`);
  // Signed out: the sign-in panel alone.
  await page.locator("#sign-in").waitFor({ state: "visible" });
  assert.equal(await page.locator("#servers-title").isVisible(), false, "nothing of the app before sign-in");
  assert.equal(await page.locator("#live").isVisible(), false, "no live updates before sign-in");
  const link = await page.locator("#sign-in-link").getAttribute("href");
  assert.match(link, /^\/v1\/auth\/login\?return_to=/);
  await signInAs(`${team.base}${link}`, who, { page, shot: `web-${who}` });
  await until(async () => (await page.locator("#whoami").textContent()).includes(`Signed in as ${who}`), `${who} signed in`);
  return { context, page, problems };
}

/** The page's own API call (with the session's CSRF token, as the page sends it). */
function pageFetch(page, method, url, body) {
  return page.evaluate(
    async ([method, url, body]) => {
      const s = await (await fetch("/v1/auth/session")).json();
      const r = await fetch(url, {
        method,
        headers: { "content-type": "application/json", "x-csrf-token": s.csrf_token },
        body: body === null ? undefined : JSON.stringify(body),
      });
      return { status: r.status, body: await r.text() };
    },
    [method, url, body],
  );
}

function card(page, name) {
  return page.locator("li.card", { has: page.getByRole("heading", { name, exact: true }) });
}

test("sign in, add and connect a server, call a tool, make a key an agent uses, sign out", { timeout: 120000 }, async (t) => {
  if (!SCRIPTED) {
    t.skip("SIGNIN_SCRIPTED is not set");
    return;
  }
  const { context, page, problems } = await signedIn("alice");
  await shot(page, "signed-in");

  // The session cookie: HttpOnly, SameSite=Strict, never visible to the page.
  const cookies = await context.cookies(team.base);
  const session = cookies.find((c) => c.name === "latchkey_session");
  assert.ok(session, `${cookies.map((c) => c.name)}`);
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, "Strict");
  assert.ok(!cookies.some((c) => c.name === "latchkey_login" && c.value), "the login cookie is spent");
  assert.equal(await page.evaluate(() => document.cookie), "");

  // Add an OAuth server: the consent popup approves at once.
  const popup = page.waitForEvent("popup");
  await page.getByLabel("Name", { exact: true }).fill("Scripted");
  await page.getByLabel("MCP server URL").fill(SCRIPTED.ok.mcp_url);
  await page.getByRole("button", { name: "Add server" }).click();
  await popup;
  await until(async () => (await card(page, "Scripted").getAttribute("data-status")) === "connected", "Scripted connected");

  // Call a tool from its form.
  const c = card(page, "Scripted");
  await c.getByText(/^Tools \(/).click();
  const echo = c.locator('section.tool[data-tool="echo"]');
  await echo.locator('[data-arg="text"]').locator("input, textarea").fill("hello from a session");
  await echo.getByRole("button", { name: "Call echo" }).click();
  await until(async () => (await echo.locator('[data-role="result-text"]').textContent()).includes("hello from a session"), "the echo result");
  await shot(page, "tool-called");

  // An API key from the page, used by `latchkey stdio` (no sign-in there at all).
  const keys = page.locator("#api-keys");
  await keys.getByLabel("Key name").fill("agent from the web");
  await keys.getByRole("button", { name: "Create key" }).click();
  const field = keys.getByLabel("API key", { exact: true });
  await field.waitFor();
  const key = await field.inputValue();
  assert.match(key, /^lk_/);
  const child = cliStart(["stdio", "Scripted", "--url", team.base], {
    configDir: tempDir("web-agent"),
    env: { LATCHKEY_TOKEN: key },
  });
  const answers = new Map();
  let buf = "";
  child.proc.stdout.on("data", (chunk) => {
    buf += chunk;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (line) {
        const m = JSON.parse(line);
        if (m.id !== undefined) answers.set(m.id, m);
      }
    }
  });
  const send = (m) => child.proc.stdin.write(`${JSON.stringify(m)}\n`);
  send({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "web-agent", version: "1" } } });
  await until(() => answers.get(1), "the initialize answer");
  send({ jsonrpc: "2.0", method: "notifications/initialized" });
  send({ jsonrpc: "2.0", id: 2, method: "tools/call", params: { name: "echo", arguments: { text: "from the agent" } } });
  const called = await until(() => answers.get(2), "the tools/call answer");
  assert.match(JSON.stringify(called.result), /from the agent/, JSON.stringify(called));
  child.proc.stdin.end();
  await child.done;

  // A page on another origin posts a cross-site form (text/plain, the JSON trick) with
  // the browser's cookie: refused, nothing created.
  const before = JSON.parse((await pageFetch(page, "GET", "/v1/servers", null)).body).map((s) => s.name);
  const attacker = await context.newPage();
  await attacker.goto(`${SCRIPTED.hostile.base}/attack?target=${team.base}`);
  await attacker.waitForLoadState("load");
  await attacker.waitForTimeout(500);
  await attacker.close();
  const after = JSON.parse((await pageFetch(page, "GET", "/v1/servers", null)).body).map((s) => s.name);
  assert.deepEqual(after, before, "the cross-site form created nothing");
  // And the session's own page without its CSRF token is refused too.
  const noCsrf = await page.evaluate(async () => {
    const r = await fetch("/v1/api-keys", { method: "POST", headers: { "content-type": "application/json" }, body: '{"name":"no csrf"}' });
    return r.status;
  });
  assert.equal(noCsrf, 403);

  // Sign out: the page shows the sign-in panel, and the old cookie is refused.
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.locator("#sign-in").waitFor({ state: "visible" });
  assert.equal(await page.locator("#live").isVisible(), false);
  await shot(page, "signed-out");
  const old = await fetch(`${team.base}/v1/auth/session`, { headers: { cookie: `latchkey_session=${session.value}` } });
  assert.equal(old.status, 401);
  assert.deepEqual(problems, []);
  await context.close();
});

test("two people in two tenants see only their own servers and events", { timeout: 120000 }, async () => {
  const alice = await signedIn("alice");
  const bob = await signedIn("bob");
  // Each page listens to /v1/events with its cookie.
  const listen = (page) =>
    page.evaluate(() => {
      window.__events = [];
      const es = new EventSource("/v1/events");
      es.addEventListener("mcp.oauth_complete", (e) => window.__events.push(e.data));
      return new Promise((resolve) => es.addEventListener("open", () => resolve(true)));
    });
  assert.equal(await listen(alice.page), true);
  assert.equal(await listen(bob.page), true);

  // Alice adds and connects a server from her page.
  const popup = alice.page.waitForEvent("popup");
  await alice.page.getByLabel("Name", { exact: true }).fill("Alice only");
  await alice.page.getByLabel("MCP server URL").fill(SCRIPTED.ok.mcp_url);
  await alice.page.getByRole("button", { name: "Add server" }).click();
  await popup;
  await until(async () => (await card(alice.page, "Alice only").getAttribute("data-status")) === "connected", "Alice's server connected");
  const id = await card(alice.page, "Alice only").getAttribute("data-server-id");
  await until(async () => (await alice.page.evaluate(() => window.__events)).some((e) => e.includes(id)), "Alice's own event");

  // Bob's page and API never show it, and his event stream carried nothing of it.
  await bob.page.getByRole("button", { name: "Refresh" }).click();
  await bob.page.waitForTimeout(1000);
  assert.equal(await card(bob.page, "Alice only").count(), 0);
  const bobSees = await pageFetch(bob.page, "GET", `/v1/servers/${id}`, null);
  assert.equal(bobSees.status, 404);
  const bobEvents = await bob.page.evaluate(() => window.__events);
  assert.deepEqual(bobEvents, [], "Bob's stream carried nothing of Alice's");
  await shot(bob.page, "bob-sees-nothing-of-alice");
  assert.deepEqual([...alice.problems, ...bob.problems], []);
  await alice.context.close();
  await bob.context.close();
});

test("a client the provider does not know stops start-up, naming the setting", { timeout: 60000 }, async () => {
  const err = await startTeam({ name: "wrong-client", login: { client_id: JSON.stringify("no-such-client") } }).then(
    () => null,
    (e) => e,
  );
  assert.ok(err, "a Latchkey with an unknown client must not start");
  assert.match(String(err.message), /exited \(78\)/);
  const log = readFileSync(path.join(OUT, "wrong-client.log"), "utf8");
  assert.match(log, /auth\.login\.client_(id|secret)/);
  assert.match(log, /invalid_client/);
});
