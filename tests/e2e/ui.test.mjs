// The web UI in a real headless Chromium (Playwright's library, no test runner of its
// own: node:test and node:assert), against a real `latchkey serve` and the scripted
// MCP servers with their own authorization servers (scripts/e2e.sh starts them and
// passes their URLs in the environment).
//
// E2E_LATCHKEY_URL     Latchkey's base URL (http://127.0.0.1:PORT)
// E2E_SCRIPTED         the JSON line printed by `scripted-servers`
// E2E_OUT              where screenshots go
// E2E_PLAYWRIGHT_CORE  the playwright-core package directory
// E2E_CHROMIUM         the Chromium binary (default /usr/bin/chromium)

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";
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
 * A fresh browser context and page on Latchkey: dialogs accepted, uncaught errors and
 * CSP violations collected, and every window.open call recorded (name, features,
 * whether it returned a window).
 */
async function open(viewport = DESKTOP) {
  const context = await browser.newContext({ viewport });
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
  page.on("dialog", (d) => d.accept());
  await page.goto(`${BASE}/`);
  await until(async () => (await page.locator("#whoami").textContent()).includes("Signed in"), "whoami");
  return { context, page, problems };
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
  const { context, page, problems } = await open();
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
  const c = card(page, "Scripted");
  assert.equal(await c.locator('[data-role="tool-count"]').textContent(), "2 tools");
  const details = await c.locator(".details").textContent();
  assert.match(details, /Token expires in/);
  assert.match(details, /Last refreshed/);
  assert.match(details, /Refreshes automatically/);
  await shot(page, "connected");

  // Tools with their input schemas, and a call.
  await c.getByText("Tools (2)").click();
  const echo = c.locator('section.tool[data-tool="echo"]');
  await echo.getByText("Input schema").click();
  assert.match(await echo.locator("pre").first().textContent(), /"text"/);
  await echo.getByLabel("Arguments (JSON)").fill('{"text": "hello from the browser"}');
  await echo.getByRole("button", { name: "Call echo" }).click();
  await until(async () => (await echo.locator('[data-role="result-text"]').textContent()).includes("hello from the browser"), "the echo result");
  const add = c.locator('section.tool[data-tool="add"]');
  await add.getByLabel("Arguments (JSON)").fill("not json");
  await add.getByRole("button", { name: "Call add" }).click();
  await until(async () => (await add.locator(".tool-output").textContent()).includes("not valid JSON"), "the JSON error");
  await add.getByLabel("Arguments (JSON)").fill('{"a": 2, "b": 40}');
  await add.getByRole("button", { name: "Call add" }).click();
  await until(async () => (await add.locator('[data-role="result-text"]').textContent()).includes("42"), "the add result");
  await shot(page, "tool-call");
  await assertNoSecrets(page);

  // Disconnect revokes and deletes; the server needs consent again.
  await c.getByRole("button", { name: "Disconnect Scripted" }).click();
  await waitStatus(page, "Scripted", "needs-consent");
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
  // Closing the popup clears the state within the 500 ms poll.
  const closedAt = Date.now();
  await win.close();
  await waitStatus(page, "Pending A", "needs-consent", 3000);
  assert.ok(Date.now() - closedAt < 3000);
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

  // Editing: the client ID is filled in, the advanced section open, the secret only
  // "set" (R-UI-8).
  await c.getByRole("button", { name: "Edit Machine" }).click();
  assert.equal(await page.locator("#advanced").evaluate((d) => d.open), true);
  assert.equal(await page.getByLabel("Pre-registered client ID").inputValue(), "machine-client");
  assert.equal(await page.getByLabel("Client secret", { exact: true }).inputValue(), "");
  assert.match(await page.locator("#f-secret-state").textContent(), /A secret is set/);
  await shot(page, "edit-client-credentials");
  await assertNoSecrets(page, [new RegExp(secret)]);
  await page.getByRole("button", { name: "Cancel editing" }).click();
  assert.equal(await page.getByRole("heading", { name: "Add a server" }).count(), 1);
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
  await echo.getByLabel("Arguments (JSON)").fill(`{"text": "${"a-long-word-without-spaces-".repeat(8)}"}`);
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
