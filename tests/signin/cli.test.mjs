// `latchkey login`, `logout` and the commands that use the stored sign-in, against a
// real `latchkey serve` in jwt mode and oidc-provider (issue 19), with the consent
// given in headless Chromium. scripts/signin.sh runs it.
//
// One Latchkey whose provider issues access tokens that live AT_TTL seconds: long
// enough for a command right after signing in to use the token as it is (the CLI
// renews 30 s before expiry), short enough to wait for a real expiry.

import { after, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { OUT, cli, cliStart, signInAs, startTeam, stopAll, tempDir } from "./harness.mjs";

const AT_TTL = 40;
let team;
let home;
const loginFile = () => path.join(home, "login.json");
const stored = () => JSON.parse(readFileSync(loginFile(), "utf8")).logins[team.base];
const run = (args, opts = {}) => cli([...args, "--url", team.base], { configDir: home, ...opts });
const events = async (name) => (await team.provider.events()).filter((e) => e.name === name);

// Started by the first test that runs, not in `before`: a --test-name-pattern that
// leaves none of this file's tests starts nothing (and nothing keeps node waiting).
let starting;
async function ready() {
  starting ??= startTeam({ atTtl: AT_TTL });
  team = await starting;
  home ??= tempDir("cli-config");
}

after(stopAll);

/** `latchkey login` with `flags`, the URL it prints opened in the browser as `who`. */
async function login(who, flags = ["--no-browser"]) {
  const child = cliStart(["login", ...flags, "--url", team.base], { configDir: home });
  const [, url] = await child.waitFor(/^ {2}(http:\/\/127\.0\.0\.1:\d+\/auth\?\S+)$/m);
  const page = await signInAs(url, who, { shot: `login-${who}` });
  assert.match(page.text, /You can close this tab/, `the loopback page: ${page.url}`);
  const done = await child.done;
  assert.equal(done.code, 0, done.stderr);
  return done;
}

test("the config names the CLI's client", async () => {
  await ready();
  const c = await (await fetch(`${team.base}/v1/auth/config`)).json();
  assert.equal(c.mode, "jwt");
  assert.equal(c.cli?.client_id, team.provider.cli_client_id);
  assert.equal(c.cli?.issuer, team.provider.issuer);
});

test("without a sign-in, jwt mode refuses and names `latchkey login`", async () => {
  await ready();
  const r = await run(["servers", "list"]);
  assert.equal(r.code, 77, r.stderr);
  assert.match(r.stderr, /latchkey login/);
});

test("login in the browser, then commands work without --token", async () => {
  await ready();
  const done = await login("alice");
  assert.match(done.stderr, /Signed in to Latchkey at .* as alice \(tenant t1\)/);
  // Nothing secret on the terminal but the URL the person opens.
  const s = stored();
  assert.ok(!done.stderr.includes(s.access_token) && !done.stderr.includes(s.refresh_token));
  assert.equal(statSync(loginFile()).mode & 0o777, 0o600);
  assert.equal(statSync(home).mode & 0o777, 0o700);
  assert.equal(s.client_id, team.provider.cli_client_id);
  assert.ok(s.refresh_token, "offline_access gave a refresh token");
  const refreshes = (await events("grant.success")).filter((e) => e.grant_type === "refresh_token").length;
  const r = await run(["servers", "list", "--json"]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), []);
  assert.equal(stored().access_token, s.access_token, "a fresh token is used as it is");
  assert.equal((await events("grant.success")).filter((e) => e.grant_type === "refresh_token").length, refreshes);
});

test("logout forgets the sign-in and revokes it; the next command is refused", async () => {
  await ready();
  const rt = stored().refresh_token;
  const out = await run(["logout"]);
  assert.equal(out.code, 0, out.stderr);
  assert.match(out.stderr, /Signed out/);
  assert.equal(stored(), undefined);
  const r = await run(["servers", "list"]);
  assert.equal(r.code, 77, r.stderr);
  assert.match(r.stderr, /latchkey login/);
  assert.ok(!out.stderr.includes(rt));
  // The provider no longer honours the refresh token.
  const t = await fetch(team.provider.metadata.token_endpoint, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ grant_type: "refresh_token", refresh_token: rt, client_id: team.provider.cli_client_id }),
  });
  assert.equal((await t.json()).error, "invalid_grant");
});

test("login --device, completed in the browser", async () => {
  await ready();
  const child = cliStart(["login", "--device", "--url", team.base], { configDir: home });
  const [, complete] = await child.waitFor(/\(or open (http:\/\/\S+)\)/);
  await child.waitFor(/enter the code \S+/);
  const page = await signInAs(complete, "bob", { shot: "device-bob" });
  assert.doesNotMatch(page.text, /error/i, page.text);
  const done = await child.done;
  assert.equal(done.code, 0, done.stderr);
  assert.match(done.stderr, /as bob \(tenant t2\)/);
  const r = await run(["servers", "list", "--json"]);
  assert.equal(r.code, 0, r.stderr);
});

test("an expired token is renewed silently, and the rotated tokens are kept", async () => {
  await ready();
  await login("alice");
  const before = stored();
  // Wait for the provider's token to expire for real.
  const wait = before.expires_at * 1000 - Date.now() + 1500;
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  const r = await run(["servers", "list", "--json"]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, "", "renewal is silent");
  const after = stored();
  assert.notEqual(after.access_token, before.access_token);
  assert.notEqual(after.refresh_token, before.refresh_token, "the public client's refresh token rotated");
  assert.ok(after.expires_at > before.expires_at);
  assert.equal(statSync(loginFile()).mode & 0o777, 0o600);
  // A token Latchkey refuses although it looked valid: renewed once, the call retried.
  const file = JSON.parse(readFileSync(loginFile(), "utf8"));
  file.logins[team.base].access_token = "not-a-token";
  file.logins[team.base].expires_at = Math.floor(Date.now() / 1000) + 3600;
  writeFileSync(loginFile(), JSON.stringify(file));
  const again = await run(["servers", "list", "--json"]);
  assert.equal(again.code, 0, again.stderr);
  assert.notEqual(stored().access_token, "not-a-token");
  // A refresh token the provider no longer knows: the sign-in is forgotten.
  const broken = JSON.parse(readFileSync(loginFile(), "utf8"));
  broken.logins[team.base].expires_at = 1;
  broken.logins[team.base].refresh_token = "unknown-refresh-token";
  writeFileSync(loginFile(), JSON.stringify(broken));
  const refused = await run(["servers", "list"]);
  assert.equal(refused.code, 77, refused.stderr);
  assert.match(refused.stderr, /run `latchkey login`/);
  assert.equal(stored(), undefined);
});

test("login opens $BROWSER with the URL", async () => {
  await ready();
  const dir = tempDir("browser");
  const opened = path.join(dir, "opened");
  const browser = path.join(dir, "browser.sh");
  writeFileSync(browser, `#!/bin/sh\nprintf '%s' "$1" > '${opened}.tmp' && mv '${opened}.tmp' '${opened}'\n`, { mode: 0o755 });
  const child = cliStart(["login", "--url", team.base], { configDir: home, env: { BROWSER: browser } });
  await child.waitFor(/opening your browser/);
  let url;
  for (let i = 0; i < 100 && !url; i++) {
    try {
      url = readFileSync(opened, "utf8");
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  assert.match(url ?? "", /^http:\/\/127\.0\.0\.1:\d+\/auth\?/);
  const page = await signInAs(url, "alice", { shot: "browser-alice" });
  assert.match(page.text, /You can close this tab/);
  const done = await child.done;
  assert.equal(done.code, 0, done.stderr);
});

test("a Latchkey without a CLI client says which setting is missing", async () => {
  await ready();
  const other = await startTeam({ name: "no-cli", login: { cli_client_id: undefined } });
  const r = await cli(["login", "--no-browser", "--url", other.base], { configDir: tempDir("no-cli") });
  assert.equal(r.code, 78, r.stderr);
  assert.match(r.stderr, /auth\.login\.cli_client_id/);
});

test("--token wins over the stored sign-in", async () => {
  await ready();
  await login("alice");
  const r = await run(["servers", "list"], { env: { LATCHKEY_TOKEN: "lk_not_a_real_key" } });
  assert.equal(r.code, 77, r.stderr);
});

test("api-keys create gives a key `latchkey stdio` can use", async (t) => {
  await ready();
  const help = await cli(["--help"]);
  if (!/api-keys/.test(help.stdout)) {
    t.skip("no `latchkey api-keys` in this build");
    return;
  }
  const scripted = process.env.SIGNIN_SCRIPTED ? JSON.parse(process.env.SIGNIN_SCRIPTED) : null;
  if (!scripted) {
    t.skip("SIGNIN_SCRIPTED is not set");
    return;
  }
  const added = await run([
    "servers",
    "add",
    "keyed",
    scripted.apikey.mcp_url,
    "--header",
    `${scripted.apikey.header}: ${scripted.apikey.value}`,
  ]);
  assert.equal(added.code, 0, added.stderr);
  const created = await run(["api-keys", "create", "--name", "signin-test", "--expires", "1d"]);
  assert.equal(created.code, 0, created.stderr);
  const key = created.stdout.trim();
  assert.match(key, /^lk_/);
  // stdio with the key alone: a configuration directory with no sign-in.
  const msgs = [
    { jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "signin-test", version: "1" } } },
    { jsonrpc: "2.0", method: "notifications/initialized" },
    { jsonrpc: "2.0", id: 2, method: "tools/list" },
  ];
  const child = cliStart(["stdio", "keyed", "--url", team.base], {
    configDir: tempDir("no-login"),
    env: { LATCHKEY_TOKEN: key },
  });
  const lines = [];
  let buf = "";
  const listed = new Promise((resolve) => {
    child.proc.stdout.on("data", (c) => {
      buf += c;
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (!line.trim()) continue;
        const m = JSON.parse(line);
        lines.push(m);
        if (m.id === 2) resolve(m);
      }
    });
  });
  child.proc.stdin.write(`${JSON.stringify(msgs[0])}\n`);
  await new Promise((r) => {
    const check = () => (lines.some((m) => m.id === 1) ? r() : setTimeout(check, 50));
    check();
  });
  child.proc.stdin.write(`${JSON.stringify(msgs[1])}\n${JSON.stringify(msgs[2])}\n`);
  const answer = await Promise.race([listed, new Promise((_, rej) => setTimeout(() => rej(new Error(`no tools/list answer: ${JSON.stringify(lines)}`)), 20000))]);
  child.proc.stdin.end();
  assert.ok(Array.isArray(answer.result?.tools) && answer.result.tools.length > 0, JSON.stringify(answer));
  assert.ok(!readFileSync(path.join(OUT, "latchkey.log"), "utf8").includes(key), "the key is not in Latchkey's log");
});
