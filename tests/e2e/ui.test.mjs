// The web UI in a real headless Chromium (Playwright's library, no test runner of its
// own: node:test and node:assert), against a real `latchkey serve` and the scripted
// MCP servers with their own authorization servers (scripts/e2e.sh starts them and
// passes their URLs in the environment).
//
// E2E_LATCHKEY_URL     Latchkey's base URL (http://127.0.0.1:PORT)
// E2E_STRICT_URL       a second Latchkey without allow_insecure_loopback (optional)
// E2E_SCRIPTED         the JSON line printed by `scripted-servers`
// E2E_OUT              where screenshots go
// E2E_PLAYWRIGHT_CORE  the playwright-core package directory
// E2E_CHROMIUM         the Chromium binary (default /usr/bin/chromium)

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";
import http from "node:http";
import path from "node:path";

const require = createRequire(import.meta.url);
const need = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run scripts/e2e.sh)`);
  return v;
};
const { chromium } = require(need("E2E_PLAYWRIGHT_CORE"));
const BASE = need("E2E_LATCHKEY_URL");
const SCRIPTED = JSON.parse(need("E2E_SCRIPTED"));
const OUT = need("E2E_OUT");
const STRICT = process.env.E2E_STRICT_URL || null;
mkdirSync(OUT, { recursive: true });

const DESKTOP = { width: 1100, height: 900 };
let browser;
let shots = 0;

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.E2E_CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
});

after(async () => {
  await browser?.close();
});

/** Resolves when `win` has closed (attach it before anything else is awaited). */
function closed(win, timeout = 15000) {
  return win.isClosed() ? Promise.resolve() : win.waitForEvent("close", { timeout });
}

/** Polls `fn` until it returns a truthy value; fails with `what` after `timeout` ms. */
async function until(fn, what, timeout = 15000) {
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

async function shot(page, name) {
  shots += 1;
  const file = path.join(OUT, `${String(shots).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
}

/**
 * A fresh browser context and page on Latchkey: dialogs accepted (their messages
 * collected), uncaught errors and CSP violations collected, and every window.open call
 * recorded (name, features, whether it returned a window). `clock`: Playwright's
 * controllable clock is installed first (time still flows; a test may jump ahead).
 */
async function open(viewport = DESKTOP, { clock = false, base = BASE } = {}) {
  const context = await browser.newContext({ viewport });
  if (clock) await context.clock.install();
  await context.addInitScript(() => {
    window.__opens = [];
    const real = window.open.bind(window);
    window.open = (...args) => {
      const w = real(...args);
      window.__opens.push({ url: args[0], name: args[1], features: args[2], opened: !!w });
      return w;
    };
  });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`uncaught: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" && /Content Security Policy|Refused to/i.test(m.text())) {
      problems.push(`csp: ${m.text()}`);
    }
  });
  const dialogs = [];
  page.on("dialog", (d) => {
    dialogs.push(d.message());
    d.accept();
  });
  await page.goto(`${base}/`);
  await until(async () => (await page.locator("#whoami").textContent()).includes("Signed in"), "whoami");
  // The cards above the form are drawn by then: nothing moves under a click.
  await until(async () => (await page.locator("#servers").getAttribute("aria-busy")) === "false", "the list");
  return { context, page, problems, dialogs };
}

/** The input of argument `name` in a tool's section. */
function arg(section, name) {
  return section.locator(`[data-arg="${name}"]`).locator("input, select, textarea");
}

/** The texts of the stacked notices (`#notice`) or alerts (`#alert`). */
async function stacked(page, which) {
  return page.locator(`#${which} .${which}-item .${which}-text`).allTextContents();
}

function card(page, name) {
  return page.locator("li.card", { has: page.getByRole("heading", { name, exact: true }) });
}

async function status(page, name) {
  return card(page, name).getAttribute("data-status");
}

async function waitStatus(page, name, want, timeout) {
  await until(async () => (await status(page, name)) === want, `${name} to be ${want}`, timeout);
}

async function addServer(page, { name, url, auth, clientId, secret, issuer, grant, shared }) {
  await page.getByLabel("Name", { exact: true }).fill(name);
  await page.getByLabel("MCP server URL").fill(url);
  if (auth) await page.getByLabel("Authentication", { exact: true }).selectOption(auth);
  if (clientId || secret || grant || shared) {
    const adv = page.locator("#advanced");
    if (!(await adv.evaluate((d) => d.open))) await page.getByText("Advanced OAuth settings").click();
    if (clientId) await page.getByLabel("Pre-registered client ID").fill(clientId);
    if (secret) await page.getByLabel("Client secret", { exact: true }).fill(secret);
    if (issuer) await page.getByLabel("Client issuer").fill(issuer);
    if (grant) await page.getByLabel("Grant type").selectOption(grant);
    if (shared) await page.getByLabel("Shared by the whole tenant").check();
  }
  await page.getByRole("button", { name: "Add server" }).click();
}

/** Tokens, codes and secrets of the scripted servers never reach the page. */
async function assertNoSecrets(page, extra = []) {
  const html = await page.content();
  for (const re of [/\bat-\d+\b/, /\brt-\d+-\d+\b/, /\bcode-\d+\b/, /dcr-secret/, ...extra]) {
    assert.doesNotMatch(html, re);
  }
  const stored = await page.evaluate(() => localStorage.length + sessionStorage.length);
  assert.equal(stored, 0, "nothing kept in web storage");
}

test("add a server, connect through the popup, call a tool, disconnect, reconnect", { timeout: 90000 }, async () => {
  const { context, page, problems, dialogs } = await open();
  await shot(page, "empty");

  // Adding an OAuth server starts the flow at once (R-UI-9): a named popup (R-UI-1).
  const popup = page.waitForEvent("popup");
  await addServer(page, { name: "Scripted", url: SCRIPTED.ok.mcp_url });
  const win = await popup;
  const winClosed = closed(win);
  // The probe's finding is shown (the server was given no auth type).
  await until(async () => (await card(page, "Scripted").locator(".meta").textContent()).includes("OAuth 2.1"), "the detected auth type");
  const id = await card(page, "Scripted").getAttribute("data-server-id");
  const opens = await page.evaluate(() => window.__opens);
  assert.equal(opens.length, 1);
  assert.equal(opens[0].name, `mcp-oauth-${id}`);
  assert.match(opens[0].features, /width=560/);
  assert.match(opens[0].features, /height=720/);
  assert.equal(opens[0].url, "", "a blank popup first, pointed at the AS after /start");

  // The AS approves at once; the callback page posts the result and closes itself.
  await winClosed;
  await waitStatus(page, "Scripted", "connected");
  await until(async () => (await page.locator("#notice").textContent()).includes("Scripted: Connected."), "the success notice");
  // Notices stack: the connection's did not replace the one about adding (issue 17).
  const notices = await stacked(page, "notice");
  assert.ok(notices.some((t) => t.startsWith("Added Scripted. Detected authentication: OAuth 2.1.")), `${notices}`);
  assert.ok(notices.includes("Scripted: Connected."), `${notices}`);
  const c = card(page, "Scripted");
  assert.equal(await c.locator('[data-role="tool-count"]').textContent(), "2 tools");
  const details = await c.locator(".details").textContent();
  assert.match(details, /Token expires in/);
  assert.match(details, /Last refreshed/);
  assert.match(details, /Refreshes automatically/);
  await shot(page, "connected");

  // Tools with their input schemas, and a call from the form built from the schema.
  await c.getByText("Tools (2)").click();
  const echo = c.locator('section.tool[data-tool="echo"]');
  await echo.getByText("Input schema").click();
  assert.match(await echo.locator("pre").first().textContent(), /"text"/);
  await arg(echo, "text").fill("hello from the browser");
  await echo.getByRole("button", { name: "Call echo" }).click();
  await until(async () => (await echo.locator('[data-role="result-text"]').textContent()).includes("hello from the browser"), "the echo result");
  const add = c.locator('section.tool[data-tool="add"]');
  // Raw JSON on demand, checked before anything is sent.
  await add.getByRole("button", { name: "Edit as JSON" }).click();
  await add.getByLabel("Arguments (JSON)").fill("not json");
  await add.getByRole("button", { name: "Call add" }).click();
  await until(async () => (await add.locator(".tool-output").textContent()).includes("not valid JSON"), "the JSON error");
  await add.getByLabel("Arguments (JSON)").fill('{"a": 2, "b": 40}');
  await add.getByRole("button", { name: "Call add" }).click();
  await until(async () => (await add.locator('[data-role="result-text"]').textContent()).includes("42"), "the add result");
  await shot(page, "tool-call");
  await assertNoSecrets(page);

  // Disconnect revokes and deletes; the server needs consent again. This authorization
  // server has a revocation endpoint, so the dialog says the tokens are revoked.
  await c.getByRole("button", { name: "Disconnect Scripted" }).click();
  await waitStatus(page, "Scripted", "needs-consent");
  assert.equal(dialogs.length, 1);
  assert.match(dialogs[0], /^Disconnect Scripted\? Its tokens are revoked at the authorization server and deleted here\.$/);
  assert.equal(await c.locator("details.tools").count(), 0, "no tools without a connection");

  // Connect from the button: the same named popup, the same happy ending.
  const again = page.waitForEvent("popup");
  await c.getByRole("button", { name: "Connect Scripted" }).click();
  await closed(await again);
  await waitStatus(page, "Scripted", "connected");
  await shot(page, "reconnected");
  assert.deepEqual(problems, []);
  await context.close();
});

test("a closed or blocked popup and an early failure never leave a server connecting", { timeout: 90000 }, async () => {
  const { context, page, problems } = await open();
  // The authorization server never answers: the popup stays on its way there.
  await context.route(`${SCRIPTED.ok.base}/authorize**`, () => {});
  await waitStatus(page, "Scripted", "connected");

  const popup = page.waitForEvent("popup");
  await addServer(page, { name: "Pending A", url: SCRIPTED.ok.mcp_url, auth: "oauth" });
  const win = await popup;
  await waitStatus(page, "Pending A", "connecting");
  await shot(page, "connecting");
  // Per server: the other one is untouched and still usable (R-UI-3).
  assert.equal(await status(page, "Scripted"), "connected");
  assert.equal(await card(page, "Scripted").getByRole("button", { name: "Disconnect Scripted" }).isEnabled(), true);
  // Closing the popup clears the state within the 500 ms poll and the 1.5 s given to a
  // result the callback page posts just before it closes itself.
  const closedAt = Date.now();
  await win.close();
  await waitStatus(page, "Pending A", "needs-consent", 4000);
  assert.ok(Date.now() - closedAt < 4000);
  await until(async () => (await page.locator("#notice").textContent()).includes("closed before the connection completed"), "the closed notice");

  // A blocked popup says so and starts nothing.
  await page.evaluate(() => {
    window.open = () => null;
  });
  await card(page, "Pending A").getByRole("button", { name: "Connect Pending A" }).click();
  await until(async () => (await page.getByRole("alert").textContent()).includes("Popup blocked. Please allow popups for this site and retry."), "the blocked message");
  assert.equal(await status(page, "Pending A"), "needs-consent");
  await shot(page, "popup-blocked");

  // Two flows under way, then an early callback failure without a server id (an
  // expired state), delivered by BroadcastChannel from another window: every
  // connecting state is cleared (R-UI-4) and its message shown (R-UI-6).
  const created = await page.evaluate(async (url) => {
    const r = await fetch("/v1/servers", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ name: "Pending B", url, auth_type: "oauth" }),
    });
    return r.status;
  }, SCRIPTED.ok.mcp_url);
  assert.equal(created, 201);
  await page.reload();
  await waitStatus(page, "Pending B", "needs-consent");
  const popups = [];
  for (const name of ["Pending A", "Pending B"]) {
    const p = page.waitForEvent("popup");
    await card(page, name).getByRole("button", { name: `Connect ${name}` }).click();
    popups.push(await p);
    await waitStatus(page, name, "connecting");
  }
  const other = await context.newPage();
  await other.goto(`${BASE}/v1/oauth/callback?state=no-such-state`);
  await waitStatus(page, "Pending A", "needs-consent", 5000);
  await waitStatus(page, "Pending B", "needs-consent", 5000);
  await until(async () => (await page.getByRole("alert").textContent()).includes("Authorization expired. Please try again."), "the invalid_state message");
  // Each card says why and offers to try again.
  for (const name of ["Pending A", "Pending B"]) {
    assert.equal(
      await card(page, name).locator('[data-role="status"]').textContent(),
      "Not connected: Authorization expired. Please try again.",
    );
    assert.equal(await card(page, name).getByRole("button", { name: `Reconnect ${name}` }).count(), 1);
  }
  await shot(page, "early-failure-cleared");
  for (const p of popups) await p.close();
  await other.close();
  assert.deepEqual(problems, []);
  await context.close();
});

test("a provider error shows its message and nothing of its description", { timeout: 60000 }, async () => {
  const { context, page, problems } = await open();
  const popup = page.waitForEvent("popup");
  await addServer(page, { name: "Refusing", url: SCRIPTED.denied.mcp_url });
  await closed(await popup);
  await until(
    async () =>
      (await page.getByRole("alert").textContent()).includes(
        "Refusing: The authorization server refused the connection: access was denied (access_denied).",
      ),
    "the provider error",
  );
  await waitStatus(page, "Refusing", "needs-consent");
  // The card names what happened and offers Reconnect; nothing stays "Connecting…".
  const refusing = card(page, "Refusing");
  await until(
    async () =>
      (await refusing.locator('[data-role="status"]').textContent()) ===
      "Not connected: The authorization server refused the connection: access was denied (access_denied).",
    "the refusal on the card",
  );
  assert.equal(await refusing.getByRole("button", { name: "Reconnect Refusing" }).count(), 1);
  const html = await page.content();
  assert.ok(!html.includes("onerror") && !html.includes("The user said no"), "the description never shows");
  await shot(page, "provider-error");
  assert.deepEqual(problems, []);
  await context.close();
});

test("client credentials connect without a popup, and the secret is never shown", { timeout: 60000 }, async () => {
  const { context, page, problems } = await open();
  const secret = "machine-secret-VALUE-42";
  await addServer(page, {
    name: "Machine",
    url: SCRIPTED.ok.mcp_url,
    auth: "oauth",
    clientId: "machine-client",
    secret,
    // A secret is bound to the authorization server it belongs to.
    issuer: SCRIPTED.ok.base,
    grant: "client_credentials",
    shared: true,
  });
  await waitStatus(page, "Machine", "connected");
  assert.deepEqual(await page.evaluate(() => window.__opens), [], "no popup (R-UI-10)");
  const c = card(page, "Machine");
  assert.match(await c.locator(".meta").textContent(), /Shared connection/);
  assert.match(await c.locator(".meta").textContent(), /Client credentials/);
  assert.equal(await page.getByLabel("Client secret", { exact: true }).inputValue(), "", "cleared once sent");

  // Editing: the form opens in place, in the server's card (issue 17); the client ID is
  // filled in, the advanced section open, the secret only "set" (R-UI-8).
  await c.getByRole("button", { name: "Edit Machine" }).click();
  assert.equal(await c.locator("#server-form").count(), 1, "the form is in the card");
  assert.equal(await c.getByRole("heading", { name: "Edit Machine" }).count(), 1);
  assert.equal(await page.getByRole("heading", { name: "Add a server" }).count(), 0);
  const cardBox = await c.boundingBox();
  const formBox = await page.locator("#server-form").boundingBox();
  const headBox = await c.locator(".card-head").boundingBox();
  assert.ok(formBox.y > headBox.y && formBox.y + formBox.height <= cardBox.y + cardBox.height + 1, "inside the card, below its head");
  assert.equal(await page.evaluate(() => document.activeElement && document.activeElement.id), "f-name");
  // What is typed survives the card being redrawn (a refresh of the list).
  await page.getByLabel("Name", { exact: true }).fill("Machine renamed");
  const reread = page.waitForResponse((r) => r.url().includes("/v1/oauth/status/"));
  await page.getByRole("button", { name: "Refresh" }).click();
  await reread;
  await until(async () => (await c.getAttribute("aria-busy")) === "false", "the refresh");
  assert.equal(await page.getByLabel("Name", { exact: true }).inputValue(), "Machine renamed");
  assert.equal(await c.locator("#server-form").count(), 1);
  await page.getByLabel("Name", { exact: true }).fill("Machine");
  assert.equal(await page.locator("#advanced").evaluate((d) => d.open), true);
  assert.equal(await page.getByLabel("Pre-registered client ID").inputValue(), "machine-client");
  assert.equal(await page.getByLabel("Client secret", { exact: true }).inputValue(), "");
  assert.match(await page.locator("#f-secret-state").textContent(), /A secret is set/);
  await shot(page, "edit-client-credentials");
  await assertNoSecrets(page, [new RegExp(secret)]);
  await page.getByRole("button", { name: "Cancel editing" }).click();
  assert.equal(await page.getByRole("heading", { name: "Add a server" }).count(), 1);
  assert.equal(await page.locator("li.card #server-form").count(), 0, "the form is back in its own panel");
  assert.equal(await page.evaluate(() => document.activeElement.getAttribute("aria-label")), "Edit Machine", "the focus back where editing began");
  assert.deepEqual(problems, []);
  await context.close();
});

test("an upstream failure shows as an error with its reason; delete removes servers", { timeout: 45000 }, async () => {
  const { context, page, problems } = await open();
  // No MCP endpoint at this path: the tool listing fails upstream.
  await addServer(page, { name: "Broken", url: `${SCRIPTED.ok.base}/no-mcp-here`, auth: "none" });
  await waitStatus(page, "Broken", "error");
  assert.match(
    await card(page, "Broken").locator('[data-role="status"]').textContent(),
    /^Error: Broken: the MCP server answered HTTP 404\.$/,
  );
  await shot(page, "upstream-error");
  for (const name of ["Broken", "Refusing"]) {
    await card(page, name).getByRole("button", { name: `Delete ${name}` }).click();
    await until(async () => (await card(page, name).count()) === 0, `${name} to go`);
  }
  assert.deepEqual(problems, []);
  await context.close();
});

test("at phone width the page has no horizontal overflow", { timeout: 60000 }, async () => {
  const { context, page, problems } = await open({ width: 375, height: 740 });
  await waitStatus(page, "Scripted", "connected");
  const overflow = () =>
    page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.equal(await overflow(), 0);
  await shot(page, "phone");
  // Opened panels and a tool result stay inside too.
  const c = card(page, "Scripted");
  await c.getByText("Tools (2)").click();
  const echo = c.locator('section.tool[data-tool="echo"]');
  await echo.getByText("Input schema").click();
  await arg(echo, "text").fill("a-long-word-without-spaces-".repeat(8));
  await echo.getByRole("button", { name: "Call echo" }).click();
  await until(async () => (await echo.locator('[data-role="result-text"]').count()) === 1, "the echo result");
  await page.getByText("Advanced OAuth settings").click();
  assert.equal(await overflow(), 0);
  await shot(page, "phone-expanded");
  assert.deepEqual(problems, []);
  await context.close();
});

test("a hostile upstream's page runs no script on Latchkey's origin, and a cross-site form changes nothing", { timeout: 60000 }, async () => {
  // The hostile server is added through the API (it needs no authorization).
  const created = await fetch(`${BASE}/v1/servers`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name: "Hostile", url: SCRIPTED.hostile.mcp_url, auth_type: "none" }),
  });
  assert.equal(created.status, 201);
  const { id } = await created.json();
  const before = await (await fetch(`${BASE}/v1/servers`)).text();

  const context = await browser.newContext({ viewport: DESKTOP });
  const page = await context.newPage();
  const apiReads = [];
  page.on("request", (r) => {
    if (r.url().startsWith(`${BASE}/v1/`)) apiReads.push(`${r.method()} ${r.url()}`);
  });
  // A navigation to the proxy, as a link or a redirect would make it: Latchkey answers
  // itself (a GET must ask for an event stream); the upstream's page is never served.
  const resp = await page.goto(`${BASE}/mcp/${id}`);
  assert.equal(resp.status(), 406);
  const headers = resp.headers();
  assert.equal(headers["x-content-type-options"], "nosniff");
  assert.equal(headers["content-security-policy"], "sandbox; default-src 'none'");
  assert.match(headers["content-type"], /^application\/json/);
  await page.waitForTimeout(500);
  assert.doesNotMatch(await page.title(), /PWNED/);
  assert.doesNotMatch(await page.content(), /hostile upstream/);
  await shot(page, "hostile-navigation");

  // A page on another origin posts a cross-site form (text/plain, the JSON trick):
  // refused, nothing created.
  await page.goto(`${SCRIPTED.hostile.base}/attack?target=${BASE}`);
  await page.waitForLoadState("load");
  await page.waitForTimeout(500);
  await shot(page, "hostile-form-post");
  const after = await (await fetch(`${BASE}/v1/servers`)).text();
  assert.equal(after, before, "the form post created nothing");
  assert.ok(!apiReads.some((r) => r.startsWith("GET")), `no script read the API: ${apiReads}`);
  await context.close();
  await fetch(`${BASE}/v1/servers/${id}`, { method: "DELETE" });
});

test("a connection without a refresh token says it cannot be renewed, and until when", { timeout: 60000 }, async () => {
  const { context, page, problems } = await open();
  const popup = page.waitForEvent("popup");
  await addServer(page, { name: "Short-lived", url: SCRIPTED.norefresh.mcp_url });
  await closed(await popup);
  await waitStatus(page, "Short-lived", "connected");
  const note = card(page, "Short-lived").locator('[data-role="not-renewable"]');
  await until(async () => (await note.count()) === 1, "the not-renewable note");
  const text = await note.textContent();
  assert.match(text, /Cannot be renewed without your consent/);
  assert.match(text, /ends in/);
  await shot(page, "not-renewable");
  await card(page, "Short-lived").getByRole("button", { name: "Delete Short-lived" }).click();
  assert.deepEqual(problems, []);
  await context.close();
});

/**
 * An MCP server with no authorization (streamable HTTP, JSON answers) whose tools have
 * the input schemas the tool form must handle; `tools/call` answers with the
 * arguments it received, as JSON text. Resolves to its URL and a `close()`.
 */
async function formsUpstream() {
  const tools = [
    {
      name: "configure",
      description: "Every kind of argument.",
      inputSchema: {
        type: "object",
        properties: {
          title: { type: "string", description: "What to call it." },
          count: { type: "integer", minimum: 0 },
          ratio: { type: "number" },
          verbose: { type: "boolean" },
          mode: { type: "string", enum: ["fast", "safe"] },
          tags: { type: "array", items: { type: "string" } },
          extra: { anyOf: [{ type: "string" }, { type: "object" }] },
        },
        required: ["title", "mode"],
      },
    },
    { name: "union", description: "A schema that is not an object.", inputSchema: { anyOf: [{ type: "object" }, { type: "string" }] } },
    { name: "nothing", description: "No arguments.", inputSchema: { type: "object" } },
  ];
  const versions = ["2025-11-25", "2025-06-18", "2025-03-26"];
  const server = http.createServer((req, res) => {
    if (req.method !== "POST") {
      res.writeHead(405).end();
      return;
    }
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      let msg;
      try {
        msg = JSON.parse(body);
      } catch {
        res.writeHead(400).end();
        return;
      }
      if (msg.id === undefined || msg.id === null) {
        res.writeHead(202).end();
        return;
      }
      const p = msg.params || {};
      let answer;
      if (msg.method === "initialize") {
        const v = versions.includes(p.protocolVersion) ? p.protocolVersion : versions[0];
        answer = { result: { protocolVersion: v, capabilities: { tools: {} }, serverInfo: { name: "forms", version: "1" } } };
      } else if (msg.method === "ping") {
        answer = { result: {} };
      } else if (msg.method === "tools/list") {
        answer = { result: { tools } };
      } else if (msg.method === "tools/call") {
        answer = { result: { content: [{ type: "text", text: JSON.stringify(p.arguments ?? null) }], isError: false } };
      } else {
        answer = { error: { code: -32601, message: "Method not found" } };
      }
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ jsonrpc: "2.0", id: msg.id, ...answer }));
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${server.address().port}/mcp`,
    // Latchkey keeps its connections open: closed here, or close() would wait for them.
    close: () => {
      server.closeAllConnections();
      return new Promise((r) => server.close(r));
    },
  };
}

test("the tool form is built from the input schema, with raw JSON on demand and as the fallback", { timeout: 60000 }, async () => {
  const upstream = await formsUpstream();
  const { context, page, problems } = await open();
  await addServer(page, { name: "Forms", url: upstream.url, auth: "none" });
  await waitStatus(page, "Forms", "connected");
  const c = card(page, "Forms");
  assert.equal(await c.locator('[data-role="tool-count"]').textContent(), "3 tools");
  await c.getByText("Tools (3)").click();
  const t = c.locator('section.tool[data-tool="configure"]');

  // One input per argument, of the kind its schema says; required ones marked.
  const kind = async (name) =>
    arg(t, name).evaluate((el) => `${el.tagName.toLowerCase()}:${el.type || ""}:${el.getAttribute("step") || ""}`);
  assert.equal(await kind("title"), "input:text:");
  assert.equal(await kind("count"), "input:number:1");
  assert.equal(await kind("ratio"), "input:number:any");
  assert.equal(await kind("verbose"), "input:checkbox:");
  assert.equal(await kind("mode"), "select:select-one:");
  assert.equal(await kind("tags"), "textarea:textarea:");
  assert.equal(await kind("extra"), "textarea:textarea:");
  assert.deepEqual(await arg(t, "mode").locator("option").allTextContents(), ["fast", "safe"]);
  const shown = await t.locator("[data-arg]").evaluateAll((els) => els.map((el) => el.dataset.arg));
  assert.deepEqual(shown.slice(0, 2), ["title", "mode"], "required arguments first");
  assert.equal(await t.getByLabel("title", { exact: false }).count(), 1);
  for (const [name, required] of [["title", true], ["mode", true], ["count", false], ["verbose", false], ["tags", false]]) {
    const label = await t.locator(`[data-arg="${name}"] label`).textContent();
    assert.equal(/\(required\)/.test(label), required, `${name}: ${label}`);
  }
  assert.equal(await t.locator('[data-arg="title"] .help').textContent(), "What to call it.");
  assert.equal(await t.getByLabel("Arguments (JSON)").isVisible(), false, "the form first");

  // A whole number is checked before anything is sent.
  await arg(t, "title").fill("Hello <b>world</b>");
  await arg(t, "count").fill("2.5");
  await t.getByRole("button", { name: "Call configure" }).click();
  await until(async () => (await t.locator(".tool-output").textContent()).includes("count: must be a whole number"), "the integer check");

  // Typed values arrive typed: numbers, a boolean, the enum's value, parsed JSON; an
  // optional argument left empty is not sent.
  await arg(t, "count").fill("3");
  await arg(t, "ratio").fill("0.5");
  await arg(t, "verbose").check();
  await arg(t, "mode").selectOption({ label: "safe" });
  await arg(t, "tags").fill('["a", "b"]');
  await t.getByRole("button", { name: "Call configure" }).click();
  const result = t.locator('[data-role="result-text"]');
  await until(async () => (await result.count()) === 1, "the configure result");
  const sent = (await result.textContent()).replace(/^Result: /, "");
  assert.deepEqual(JSON.parse(sent), { title: "Hello <b>world</b>", count: 3, ratio: 0.5, verbose: true, mode: "safe", tags: ["a", "b"] });
  assert.equal(await t.locator(".tool-output b").count(), 0, "text stays text");
  await shot(page, "tool-form");

  // Edit as JSON: the form's values, editable; back to the form with the edits.
  await t.getByRole("button", { name: "Edit as JSON" }).click();
  const raw = t.getByLabel("Arguments (JSON)");
  assert.deepEqual(JSON.parse(await raw.inputValue()), { title: "Hello <b>world</b>", count: 3, ratio: 0.5, verbose: true, mode: "safe", tags: ["a", "b"] });
  await raw.fill('{"title": "from JSON", "count": 7, "mode": "fast", "extra": {"k": 1}}');
  await t.getByRole("button", { name: "Edit as a form" }).click();
  assert.equal(await arg(t, "title").inputValue(), "from JSON");
  assert.equal(await arg(t, "count").inputValue(), "7");
  assert.equal(await arg(t, "ratio").inputValue(), "");
  assert.equal(await arg(t, "verbose").isChecked(), false);
  assert.equal(await arg(t, "mode").locator("option:checked").textContent(), "fast");
  assert.equal(await arg(t, "extra").inputValue(), '{"k":1}');
  await t.getByRole("button", { name: "Call configure" }).click();
  await until(async () => JSON.parse((await result.textContent()).replace(/^Result: /, "")).title === "from JSON", "the second result");
  assert.deepEqual(JSON.parse((await result.textContent()).replace(/^Result: /, "")), { title: "from JSON", count: 7, mode: "fast", extra: { k: 1 } });

  // A schema that is not an object of properties: raw JSON only.
  const u = c.locator('section.tool[data-tool="union"]');
  assert.equal(await u.getByLabel("Arguments (JSON)").isVisible(), true);
  assert.equal(await u.getByRole("button", { name: "Edit as JSON" }).count(), 0);
  await u.getByLabel("Arguments (JSON)").fill('{"any": ["thing"]}');
  await u.getByRole("button", { name: "Call union" }).click();
  await until(async () => (await u.locator('[data-role="result-text"]').textContent()) === 'Result: {"any":["thing"]}', "the union result");
  // No arguments at all: said so, and the call sends an empty object.
  const n = c.locator('section.tool[data-tool="nothing"]');
  assert.match(await n.locator(".args").textContent(), /takes no arguments/);
  await n.getByRole("button", { name: "Call nothing" }).click();
  await until(async () => (await n.locator('[data-role="result-text"]').textContent()) === "Result: {}", "the empty call");

  await c.getByRole("button", { name: "Delete Forms" }).click();
  await until(async () => (await card(page, "Forms").count()) === 0, "Forms to go");
  assert.deepEqual(problems, []);
  await context.close();
  await upstream.close();
});

test("a sign-in that never comes back ends with a message and a Reconnect button; alerts stack", { timeout: 90000 }, async () => {
  const { context, page, problems } = await open(DESKTOP, { clock: true });
  // The authorization server shows an error page of its own and never sends the user
  // back (as one that forgot Latchkey's registration in a restart does).
  const authorize = `${SCRIPTED.ok.base}/authorize**`;
  const asError = (route) =>
    route.fulfill({ status: 400, contentType: "text/html", body: "<!doctype html><title>Error</title><h1>invalid_client</h1><p>Unknown client.</p>" });
  await context.route(authorize, asError);
  const popup = page.waitForEvent("popup");
  await addServer(page, { name: "Stuck", url: SCRIPTED.ok.mcp_url, auth: "oauth" });
  const win = await popup;
  await waitStatus(page, "Stuck", "connecting");
  await until(async () => win.url().includes("/authorize"), "the popup at the authorization server");
  assert.ok((await stacked(page, "notice")).some((t) => t.startsWith("Added Stuck.")));

  // Two minutes on the user may still be signing in; a notice seen that long is gone.
  await page.clock.fastForward("02:00");
  await until(async () => (await stacked(page, "notice")).length === 0, "the notice to time out");
  assert.equal(await status(page, "Stuck"), "connecting");
  // After three minutes the attempt ends, says why, and offers to start again.
  await page.clock.fastForward("01:05");
  await waitStatus(page, "Stuck", "needs-consent", 5000);
  const c = card(page, "Stuck");
  assert.match(await c.locator('[data-role="status"]').textContent(), /^Not connected: The sign-in did not come back within 3 minutes\./);
  await until(async () => (await stacked(page, "alert")).some((t) => t.startsWith("Stuck: The sign-in did not come back within 3 minutes.")), "the timeout alert");
  assert.equal(await c.getByRole("button", { name: "Reconnect Stuck" }).count(), 1);
  await shot(page, "sign-in-timed-out");

  // Alerts stack: a second problem does not replace the first; each is dismissed alone.
  await page.getByRole("button", { name: "Add server" }).click();
  await until(async () => (await stacked(page, "alert")).includes("A name and a URL are required."), "the form alert");
  assert.equal((await stacked(page, "alert")).length, 2);
  await page.locator("#alert .alert-item", { hasText: "A name and a URL" }).getByRole("button", { name: "Dismiss" }).click();
  const left = await stacked(page, "alert");
  assert.equal(left.length, 1);
  assert.match(left[0], /^Stuck: The sign-in did not come back/);

  // The authorization server works again: Reconnect reuses the named popup and lands.
  await context.unroute(authorize, asError);
  const winClosed = closed(win);
  await c.getByRole("button", { name: "Reconnect Stuck" }).click();
  await winClosed;
  await waitStatus(page, "Stuck", "connected");
  assert.equal((await stacked(page, "alert")).length, 0, "the timeout alert is cleared by the new attempt");
  await c.getByRole("button", { name: "Delete Stuck" }).click();
  await until(async () => (await card(page, "Stuck").count()) === 0, "Stuck to go");
  assert.deepEqual(problems, []);
  await context.close();
});

test("the OAuth callback page is styled like the app, under its strict CSP", { timeout: 30000 }, async () => {
  const context = await browser.newContext({ viewport: DESKTOP });
  const page = await context.newPage();
  const errors = [];
  page.on("console", (m) => {
    if (m.type() === "error" && /Content Security Policy|Refused to/i.test(m.text())) errors.push(m.text());
  });
  page.on("pageerror", (e) => errors.push(e.message));
  const files = [];
  page.on("response", (r) => {
    if (r.url().startsWith(`${BASE}/ui/`)) files.push(`${new URL(r.url()).pathname} ${r.status()}`);
  });
  const resp = await page.goto(`${BASE}/v1/oauth/callback?state=no-such-state`);
  assert.equal(resp.status(), 400);
  const csp = resp.headers()["content-security-policy"];
  assert.match(csp, /script-src 'sha256-[A-Za-z0-9+/]{43}='/);
  assert.match(csp, /style-src 'self'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  await page.waitForLoadState("load");
  assert.equal(await page.getByRole("status").textContent(), "Authorization expired. Please try again.");
  const look = (p) =>
    p.evaluate(() => {
      const body = getComputedStyle(document.body);
      const panel = document.querySelector(".panel");
      const img = document.querySelector("h1 img");
      return {
        background: body.backgroundColor,
        font: body.fontFamily,
        panel: panel ? getComputedStyle(panel).borderRadius : null,
        header: getComputedStyle(document.querySelector("header.top")).borderBottomStyle,
        icon: img ? img.naturalWidth : 0,
      };
    });
  const callback = await look(page);
  const app = await context.newPage();
  await app.goto(`${BASE}/`);
  assert.deepEqual(callback, await look(app));
  assert.ok(callback.icon > 0, "the icon loaded");
  assert.equal(callback.panel, "8px");
  assert.ok(files.includes("/ui/app.css 200") && files.includes("/ui/icon.svg 200"), `${files}`);
  await shot(page, "callback-page");
  assert.deepEqual(errors, []);
  await context.close();
});

/**
 * An HTTP pass-through in front of Latchkey (Host and Origin rewritten to Latchkey's
 * own) whose event streams a test can cut: `cut()` breaks every open `/v1/events`
 * connection and answers new ones 503 until `restore()`.
 */
async function cuttableLatchkey() {
  const target = new URL(BASE);
  const streams = new Set();
  let down = false;
  const proxy = http.createServer((req, res) => {
    const events = req.url.startsWith("/v1/events");
    if (events && down) {
      res.writeHead(503, { "content-type": "application/json" });
      res.end('{"code":"unavailable","message":"cut by the test"}');
      return;
    }
    const headers = { ...req.headers, host: target.host };
    if (headers.origin) headers.origin = target.origin;
    delete headers.referer;
    const up = http.request({ host: target.hostname, port: target.port, path: req.url, method: req.method, headers }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      // An event stream's head goes out at once, as Latchkey sends it.
      res.flushHeaders();
      r.pipe(res);
    });
    up.on("error", () => res.destroy());
    if (events) {
      streams.add(res);
      res.on("close", () => {
        streams.delete(res);
        up.destroy();
      });
    }
    req.pipe(up);
  });
  await new Promise((r) => proxy.listen(0, "127.0.0.1", r));
  return {
    base: `http://127.0.0.1:${proxy.address().port}`,
    open: () => streams.size,
    cut: () => {
      down = true;
      for (const s of streams) s.destroy();
    },
    restore: () => {
      down = false;
    },
    close: () => {
      proxy.closeAllConnections();
      return new Promise((r) => proxy.close(r));
    },
  };
}

test("live updates turn off when the event stream drops, and on again when it is back", { timeout: 90000 }, async () => {
  const net = await cuttableLatchkey();
  const { context, page, problems } = await open(DESKTOP, { base: net.base });
  const live = page.locator("#live");
  const state = () => live.getAttribute("data-state");
  await until(async () => (await state()) === "on", "live updates on");
  assert.equal(await live.textContent(), "Live updates: on");
  assert.equal(net.open(), 1);

  // The stream breaks and Latchkey cannot be reached for a while: off, and it says so
  // (the browser's own reconnection is refused, so the page keeps trying by itself).
  net.cut();
  await until(async () => (await state()) === "off", "live updates off");
  assert.match(await live.textContent(), /^Live updates: off \(the connection to Latchkey dropped/);
  await until(async () => /trying again in \d+ s\)$/.test(await live.textContent()), "the page's own retry");
  await shot(page, "live-off");
  assert.equal(await state(), "off");

  // Back: on again, with a fresh stream.
  net.restore();
  await until(async () => (await state()) === "on", "live updates on again", 45000);
  assert.equal(await live.textContent(), "Live updates: on");
  assert.equal(net.open(), 1);
  assert.deepEqual(problems, []);
  await context.close();
  await net.close();
});

test("the disconnect dialog says the tokens are revoked only where they can be", { timeout: 60000 }, async () => {
  // A credential deposited without a revocation endpoint: nothing to revoke it at.
  const created = await fetch(`${BASE}/v1/servers`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name: "Deposited", url: SCRIPTED.ok.mcp_url, auth_type: "oauth" }),
  });
  assert.equal(created.status, 201);
  const { id } = await created.json();
  const deposited = await fetch(`${BASE}/v1/credentials`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      server_id: id,
      refresh_token: "e2e-deposited-refresh",
      token_endpoint: `${SCRIPTED.ok.base}/token`,
      access_token: "e2e-deposited-access",
      expires_in: 3600,
    }),
  });
  assert.ok(deposited.ok, `deposit: HTTP ${deposited.status}`);
  const st = await (await fetch(`${BASE}/v1/oauth/status/${id}`)).json();
  assert.equal(st.has_token, true);
  assert.equal(st.revocable, false);

  const { context, page, problems, dialogs } = await open();
  const c = card(page, "Deposited");
  const disconnect = c.getByRole("button", { name: "Disconnect Deposited" });
  await until(async () => (await disconnect.count()) === 1, "the Disconnect button");
  await disconnect.click();
  await until(async () => (await c.locator('[data-role="status"]').textContent()) === "Not connected: needs your consent.", "disconnected");
  assert.equal(dialogs.length, 1);
  assert.equal(
    dialogs[0],
    "Disconnect Deposited? Its tokens are deleted here, but its authorization server offers no revocation: they stay valid there until they expire.",
  );
  await c.getByRole("button", { name: "Delete Deposited" }).click();
  await until(async () => (await card(page, "Deposited").count()) === 0, "Deposited to go");
  assert.deepEqual(problems, []);
  await context.close();
});

test("a tool called on a server disconnected elsewhere says it is not connected yet, with Connect", { timeout: 60000 }, async () => {
  // Added, never connected: the API says so, by the server's name (issue 17).
  const created = await fetch(`${BASE}/v1/servers`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name: "Elsewhere", url: SCRIPTED.ok.mcp_url, auth_type: "oauth" }),
  });
  assert.equal(created.status, 201);
  const { id } = await created.json();
  const tools = await fetch(`${BASE}/v1/servers/${id}/tools`);
  assert.equal(tools.status, 409);
  const refusal = await tools.json();
  assert.equal(refusal.code, "needs_oauth_reauth");
  assert.equal(refusal.reason, "not_connected");
  assert.equal(refusal.server_name, "Elsewhere");

  const { context, page, problems } = await open();
  const c = card(page, "Elsewhere");
  await waitStatus(page, "Elsewhere", "needs-consent");
  const popup = page.waitForEvent("popup");
  await c.getByRole("button", { name: "Connect Elsewhere" }).click();
  await closed(await popup);
  await waitStatus(page, "Elsewhere", "connected");
  await c.getByText("Tools (2)").click();

  // Disconnected elsewhere (the CLI, another tab): this page learns it from the call.
  const gone = await fetch(`${BASE}/v1/credentials/${id}`, { method: "DELETE" });
  assert.ok(gone.ok, `disconnect: HTTP ${gone.status}`);
  const echo = c.locator('section.tool[data-tool="echo"]');
  await arg(echo, "text").fill("after a disconnect");
  await echo.getByRole("button", { name: "Call echo" }).click();
  const said = "Elsewhere: Not connected yet: connect it to use its tools.";
  await until(async () => (await stacked(page, "alert")).includes(said), "the not-connected alert");
  await waitStatus(page, "Elsewhere", "needs-consent");
  assert.equal(await c.locator('[data-role="status"]').textContent(), "Not connected: needs your consent.");
  assert.equal(await c.getByRole("button", { name: "Connect Elsewhere" }).count(), 1);
  assert.equal(await c.getByRole("button", { name: "Reconnect Elsewhere" }).count(), 0);
  for (const text of [...(await stacked(page, "alert")), await c.textContent()]) {
    assert.doesNotMatch(text, /no longer accepted|reconnect|consent again/i);
  }
  await shot(page, "not-connected-yet");

  // Connecting again clears the alert.
  const again = page.waitForEvent("popup");
  await c.getByRole("button", { name: "Connect Elsewhere" }).click();
  await closed(await again);
  await waitStatus(page, "Elsewhere", "connected");
  assert.ok(!(await stacked(page, "alert")).includes(said), "the alert is cleared");
  await c.getByRole("button", { name: "Delete Elsewhere" }).click();
  await until(async () => (await card(page, "Elsewhere").count()) === 0, "Elsewhere to go");
  assert.deepEqual(problems, []);
  await context.close();
});

test("a refused http://localhost URL shows the API's message, which names the setting", { timeout: 45000, skip: STRICT ? false : "E2E_STRICT_URL is not set" }, async () => {
  const { context, page, problems } = await open(DESKTOP, { base: STRICT });
  await addServer(page, { name: "Local", url: "http://localhost:8931/mcp", auth: "none" });
  await until(async () => (await stacked(page, "alert")).length === 1, "the refusal");
  const [text] = await stacked(page, "alert");
  assert.match(text, /^url: /);
  assert.match(text, /allow_insecure_loopback/);
  assert.match(text, /LATCHKEY_ALLOW_INSECURE_LOOPBACK/);
  assert.equal(await page.locator("li.card").count(), 0, "nothing was added");
  await shot(page, "insecure-loopback-refused");
  assert.deepEqual(problems, []);
  await context.close();
});

test("a static-header server: names at add, values set from its card and never shown, tools called, cleared", { timeout: 60000 }, async () => {
  const { context, page, problems, dialogs } = await open();
  const keyed = SCRIPTED.apikey;
  const fillHeaders = async (name, value) => {
    await page.getByLabel("Name", { exact: true }).fill(name);
    await page.getByLabel("MCP server URL").fill(keyed.mcp_url);
    await page.getByLabel("Authentication", { exact: true }).selectOption("headers");
    await page.getByLabel("Header name 1").fill(keyed.header);
    if (value) await page.getByLabel("Value 1").fill(value);
    await page.getByRole("button", { name: "Add server" }).click();
  };

  // A wrong value is caught at add time, with the status the server gave.
  await fillHeaders("Keyed", "not-the-key");
  await until(async () => (await stacked(page, "alert")).some((t) => t.includes("refused the given header values (HTTP 401)")), "the probe's refusal");
  assert.equal(await page.getByLabel("Value 1").inputValue(), "", "the typed value is not kept");

  // The name alone: added, its value not set, no tools yet.
  await fillHeaders("Keyed", null);
  await waitStatus(page, "Keyed", "needs-headers");
  const c = card(page, "Keyed");
  assert.equal(await c.locator('[data-role="status"]').textContent(), `Needs header values: ${keyed.header} not set.`);
  assert.equal(await c.locator(`[data-header="${keyed.header}"]`).getAttribute("data-state"), "not set");
  assert.equal(await c.locator("details.tools").count(), 0);
  await shot(page, "headers-not-set");

  // Set from the card: a password input, emptied once sent; then the tools work.
  await c.getByText("Set headers").click();
  const input = c.getByLabel(keyed.header, { exact: true });
  assert.equal(await input.getAttribute("type"), "password");
  await input.fill(keyed.value);
  await c.getByRole("button", { name: "Save headers of Keyed" }).click();
  await waitStatus(page, "Keyed", "connected");
  assert.equal(await c.locator(`[data-header="${keyed.header}"]`).getAttribute("data-state"), "set");
  assert.equal(await c.locator('[data-role="tool-count"]').textContent(), "2 tools");
  await c.getByText("Tools (2)").click();
  const echo = c.locator('section.tool[data-tool="echo"]');
  await arg(echo, "text").fill("through a static header");
  await echo.getByRole("button", { name: "Call echo" }).click();
  await until(async () => (await echo.locator('[data-role="result-text"]').textContent()).includes("through a static header"), "the echo result");
  await shot(page, "headers-set-tool-called");
  assert.ok(!(await page.content()).includes(keyed.value), "the value is not in the page");
  await assertNoSecrets(page);

  // Cleared after a confirmation: back to not set.
  await c.getByRole("button", { name: "Clear headers of Keyed" }).click();
  await waitStatus(page, "Keyed", "needs-headers");
  assert.ok(dialogs.some((d) => d.startsWith("Clear your header values of Keyed?")), `${dialogs}`);

  // Added with its value in one go: usable at once.
  await fillHeaders("Keyed too", keyed.value);
  await waitStatus(page, "Keyed too", "connected");
  assert.ok(!(await page.content()).includes(keyed.value), "the value is not in the page");
  for (const name of ["Keyed", "Keyed too"]) {
    await card(page, name).getByRole("button", { name: `Delete ${name}` }).click();
    await until(async () => (await card(page, name).count()) === 0, `${name} to go`);
  }
  assert.deepEqual(problems, []);
  await context.close();
});

test("a server's own names on /mcp: set at add, shown on its card, turned off by editing", { timeout: 60000 }, async () => {
  const { context, page, problems } = await open();
  const server = async (name) => {
    const all = await (await fetch(`${BASE}/v1/servers`)).json();
    return all.find((s) => s.name === name);
  };
  await page.getByLabel("Name", { exact: true }).fill("Own names");
  await page.getByLabel("MCP server URL").fill(SCRIPTED.ok.mcp_url);
  await page.getByLabel("Authentication", { exact: true }).selectOption("none");
  await page.getByLabel("Keep its own names on /mcp").check();
  await page.getByRole("button", { name: "Add server" }).click();
  const c = card(page, "Own names");
  await until(async () => (await c.locator('[data-role="unprefixed"]').count()) === 1, "the card's badge");
  assert.equal(await c.locator('[data-role="unprefixed"]').textContent(), "Own names on /mcp");
  assert.equal((await server("Own names")).unprefixed, true);
  await shot(page, "unprefixed-badge");

  // Editing shows the setting; turning it off is saved and the badge goes.
  await c.getByRole("button", { name: "Edit Own names" }).click();
  const box = page.getByLabel("Keep its own names on /mcp");
  assert.equal(await box.isChecked(), true);
  await box.uncheck();
  await page.getByRole("button", { name: "Save changes" }).click();
  await until(async () => (await c.locator('[data-role="unprefixed"]').count()) === 0, "the badge to go");
  assert.equal((await server("Own names")).unprefixed, false);
  await c.getByRole("button", { name: "Edit Own names" }).click();
  assert.equal(await page.getByLabel("Keep its own names on /mcp").isChecked(), false);
  await page.getByRole("button", { name: "Cancel editing" }).click();
  // A new server's box starts unchecked (the default, prefixed).
  assert.equal(await page.getByLabel("Keep its own names on /mcp").isChecked(), false);

  await c.getByRole("button", { name: "Delete Own names" }).click();
  await until(async () => (await c.count()) === 0, "Own names to go");
  assert.deepEqual(problems, []);
  await context.close();
});

test("an API key: created and shown once, listed by its prefix, revoked after a confirmation", { timeout: 60000 }, async () => {
  const { context, page, problems, dialogs } = await open();
  const section = page.locator("#api-keys");
  await section.getByRole("heading", { name: "API keys" }).waitFor();
  const keyCard = (name) => section.locator("li.key", { has: page.getByRole("heading", { name, exact: true }) });

  // A name is required: said, nothing sent.
  await section.getByRole("button", { name: "Create key" }).click();
  await until(async () => (await stacked(page, "alert")).some((t) => t.includes("A key needs a name")), "the missing name");

  await section.getByLabel("Key name").fill("e2e agent");
  await section.getByLabel("Lifetime").selectOption({ label: "1 day" });
  await section.getByRole("button", { name: "Create key" }).click();

  // Shown once, in a read-only field, with what to do.
  const field = section.getByLabel("API key", { exact: true });
  await field.waitFor();
  const key = await field.inputValue();
  assert.match(key, /^lk_[A-Za-z0-9_-]{20,}$/);
  assert.equal(await field.getAttribute("readonly"), "");
  const note = await section.locator("#new-key-note").textContent();
  assert.match(note, /shown only now/);
  assert.match(note, /cannot show it again/);
  await section.getByRole("button", { name: "Copy" }).click();
  await until(async () => (await section.locator("#key-once [role=status]").textContent()).length > 0, "the copy outcome");
  assert.equal(await section.getByLabel("Key name").inputValue(), "", "the form is reset");

  // Listed: name, prefix, created, never used, expiry in a day, every server; never the key.
  const c = keyCard("e2e agent");
  await c.waitFor();
  assert.match(await c.locator('[data-role="created"]').textContent(), /^Created just now$/);
  assert.equal(await c.locator('[data-role="last-used"]').textContent(), "Never used");
  assert.match(await c.locator('[data-role="expires"]').textContent(), /^Expires in (24 h|1 d)$/);
  assert.equal(await c.locator('[data-role="servers"]').textContent(), "Servers: all");
  assert.match(await c.locator('[data-role="prefix"]').textContent(), /^Prefix: /);
  assert.ok(!(await section.locator("#keys-list").textContent()).includes(key), "the list never shows the key");
  await shot(page, "api-key-created");

  // Dismissed: gone from the page; a reload shows the list only.
  await section.getByRole("button", { name: "Done" }).click();
  assert.equal(await section.locator("#new-key").count(), 0);
  assert.ok(!(await page.content()).includes(key));
  await page.reload();
  await keyCard("e2e agent").waitFor();
  assert.equal(await section.locator("#new-key").count(), 0);
  await assertNoSecrets(page, [new RegExp(key)]);

  // Revoked after a confirmation that says what it does.
  await keyCard("e2e agent").getByRole("button", { name: "Revoke e2e agent" }).click();
  await until(async () => (await keyCard("e2e agent").count()) === 0, "the key to go");
  assert.ok(
    dialogs.some((d) => d.startsWith("Revoke the API key e2e agent?") && d.includes("stop working at once")),
    `${dialogs}`,
  );
  await until(async () => (await stacked(page, "notice")).some((t) => t.includes("Revoked the API key e2e agent.")), "the notice");
  assert.equal(await section.locator("#keys-empty").isVisible(), true);
  await shot(page, "api-key-revoked");

  // Restricted to a server chosen from the user's own: listed with its name.
  const added = await page.evaluate(async (url) => {
    const r = await fetch("/v1/servers", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ name: "Key scope", url, auth_type: "none" }),
    });
    return (await r.json()).id;
  }, SCRIPTED.ok.mcp_url);
  assert.ok(added);
  await section.getByRole("button", { name: "Reload the API keys" }).click();
  await section.getByLabel("Key name").fill("scoped");
  await section.getByLabel("Key scope").check();
  await section.getByRole("button", { name: "Create key" }).click();
  await section.getByLabel("API key", { exact: true }).waitFor();
  await keyCard("scoped").waitFor();
  assert.equal(await keyCard("scoped").locator('[data-role="servers"]').textContent(), "Servers: Key scope");
  await shot(page, "api-key-restricted");
  await keyCard("scoped").getByRole("button", { name: "Revoke scoped" }).click();
  await until(async () => (await keyCard("scoped").count()) === 0, "the scoped key to go");
  assert.equal(await section.locator("#new-key").count(), 0, "a revoke drops a shown key too");
  await page.evaluate((id) => fetch(`/v1/servers/${id}`, { method: "DELETE" }), added);
  assert.deepEqual(problems, []);
  await context.close();
});
