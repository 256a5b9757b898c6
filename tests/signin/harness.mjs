// Helpers of the sign-in stage (scripts/signin.sh): start the OpenID provider
// (provider.mjs) and a `latchkey serve` in jwt mode with `[auth.login]` pointing at it,
// run the `latchkey` command, and sign in as an account in headless Chromium on the
// provider's own pages (devInteractions). Every process started here is stopped by
// `stopAll()` (call it in `after`).
//
// Environment (set by scripts/signin.sh):
// SIGNIN_PEERS     the directory with the pinned npm packages (node_modules/)
// SIGNIN_LATCHKEY  the `latchkey` binary (debug build)
// SIGNIN_OUT       where logs and screenshots go
// SIGNIN_CHROMIUM  the Chromium binary (default /usr/bin/chromium)
// SIGNIN_SCRIPTED  the JSON line printed by `scripted-servers` (optional)

import { spawn } from "node:child_process";
import { createWriteStream, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { resolver } from "./peers.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const need = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run scripts/signin.sh)`);
  return v;
};
export const LATCHKEY = need("SIGNIN_LATCHKEY");
export const OUT = need("SIGNIN_OUT");
export const NODE = process.execPath;
mkdirSync(OUT, { recursive: true });

const children = [];
let browser;
// A run stopped from outside (scripts/signin.sh's timeout) or ending without `after`
// (a --test-name-pattern that filters out every test of a file still runs its
// `before`) leaves no server behind.
const killAll = () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGTERM");
};
process.on("exit", killAll);
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.once(sig, () => {
    killAll();
    process.exit(128 + (sig === "SIGTERM" ? 15 : 2));
  });
}

/** A TCP port free on 127.0.0.1 right now. */
export async function freePort() {
  const s = net.createServer();
  await new Promise((resolve) => s.listen(0, "127.0.0.1", resolve));
  const { port } = s.address();
  await new Promise((resolve) => s.close(resolve));
  return port;
}

/** A fresh temporary directory. */
export function tempDir(prefix) {
  return mkdtempSync(path.join(os.tmpdir(), `signin-${prefix}-`));
}

/**
 * Starts `cmd args` in the background, its output appended to OUT/`log`; resolves
 * with `{ proc, match }` once `ready` (a RegExp) matches stdout or stderr.
 */
export function start(name, cmd, args, { env = {}, ready, log, timeout = 60000 } = {}) {
  const out = createWriteStream(path.join(OUT, log ?? `${name.replace(/\W+/g, "-")}.log`), { flags: "a" });
  const proc = spawn(cmd, args, { env: { ...cleanEnv(), ...env }, stdio: ["ignore", "pipe", "pipe"] });
  children.push(proc);
  let seen = "";
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} was not ready within ${timeout} ms`)), timeout);
    const onData = (chunk) => {
      out.write(chunk);
      if (!ready) return;
      seen += chunk;
      const m = seen.match(ready);
      if (m) {
        clearTimeout(timer);
        ready = undefined;
        resolve({ proc, match: m });
      }
    };
    proc.stdout.on("data", onData);
    proc.stderr.on("data", onData);
    proc.on("exit", (code) => {
      clearTimeout(timer);
      if (ready) reject(new Error(`${name} exited (${code}) before it was ready; see ${OUT}/${log}`));
    });
  });
}

/** The environment without anything that would redirect Latchkey or the CLI. */
function cleanEnv() {
  const env = { ...process.env };
  for (const k of Object.keys(env)) {
    if (k.startsWith("LATCHKEY_") || k === "BROWSER") delete env[k];
  }
  return env;
}

/** Stops everything started here, and the browser. */
export async function stopAll() {
  await browser?.close().catch(() => {});
  browser = undefined;
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) c.kill("SIGTERM");
  }
  await Promise.all(
    children.map((c) => (c.exitCode === null && c.signalCode === null ? new Promise((r) => c.on("exit", r)) : null)),
  );
}

/**
 * oidc-provider as the organisation's provider for the Latchkey at `latchkey` whose
 * API accepts tokens for `audience`: `{ issuer, web_client_id, web_client_secret,
 * cli_client_id, scope, events() }`.
 */
export async function startProvider({ latchkey, audience, atTtl = 600, log = "provider.log" }) {
  const { match } = await start(
    "oidc-provider",
    NODE,
    [path.join(HERE, "provider.mjs"), "--latchkey", latchkey, "--audience", audience, "--at-ttl", String(atTtl)],
    { ready: /^(\{"issuer".*\})$/m, log },
  );
  const info = JSON.parse(match[1]);
  info.events = async () => (await fetch(`${info.issuer}/_test/events`)).json();
  info.metadata = await (await fetch(`${info.issuer}/.well-known/openid-configuration`)).json();
  return info;
}

/**
 * A provider and a `latchkey serve` in jwt mode signing people in through it (the
 * loopback relaxation on, a temporary data directory): `{ base, audience, provider,
 * dir }`. `login` adds or overrides `[auth.login]` keys (TOML values as strings;
 * `undefined` leaves a key out).
 */
export async function startTeam({ atTtl = 600, name = "latchkey", login = {} } = {}) {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const audience = `${base}/mcp`;
  const provider = await startProvider({ latchkey: base, audience, atTtl, log: `provider-${name}.log` });
  const dir = tempDir(name);
  mkdirSync(path.join(dir, "data"), { recursive: true });
  const loginKeys = {
    issuer: JSON.stringify(provider.issuer),
    client_id: JSON.stringify(provider.web_client_id),
    client_secret: JSON.stringify(provider.web_client_secret),
    cli_client_id: JSON.stringify(provider.cli_client_id),
    scopes: JSON.stringify(["openid", "profile", "email", provider.scope]),
    ...login,
  };
  const config = path.join(dir, "latchkey.toml");
  writeFileSync(
    config,
    [
      `listen = "127.0.0.1:${port}"`,
      `public_url = "${base}"`,
      `data_dir = "${dir}/data"`,
      "allow_insecure_loopback = true",
      "[auth]",
      'mode = "jwt"',
      `issuer = "${provider.issuer}"`,
      `audience = "${audience}"`,
      `jwks_url = "${provider.metadata.jwks_uri}"`,
      "[auth.login]",
      ...Object.entries(loginKeys)
        .filter(([, v]) => v !== undefined)
        .map(([k, v]) => `${k} = ${v}`),
      "",
    ].join("\n"),
  );
  await start(`${name} serve`, LATCHKEY, ["serve", "--config", config], {
    env: { LATCHKEY_LOG: "info" },
    ready: /Latchkey is listening on (http:\/\/127\.0\.0\.1:[0-9]+)/,
    log: `${name}.log`,
  });
  return { base, audience, provider, dir };
}

/**
 * Runs `latchkey args` to completion: `{ code, stdout, stderr }`. `configDir` is the
 * CLI's LATCHKEY_CONFIG_DIR; `input` goes to its standard input.
 */
export function cli(args, { configDir, env = {}, input, timeout = 60000 } = {}) {
  return new Promise((resolve, reject) => {
    const proc = spawn(LATCHKEY, args, {
      env: { ...cleanEnv(), ...(configDir ? { LATCHKEY_CONFIG_DIR: configDir } : {}), ...env },
      stdio: ["pipe", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    proc.stdout.on("data", (c) => (stdout += c));
    proc.stderr.on("data", (c) => (stderr += c));
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`latchkey ${args.join(" ")}: no exit within ${timeout} ms; stderr: ${stderr}`));
    }, timeout);
    proc.on("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    proc.stdin.end(input ?? "");
  });
}

/**
 * Starts `latchkey args` and lets the test read its standard error as it comes:
 * `{ proc, waitFor(regexp), done }` where `done` resolves with `{ code, stdout, stderr }`.
 */
export function cliStart(args, { configDir, env = {}, timeout = 120000 } = {}) {
  const proc = spawn(LATCHKEY, args, {
    env: { ...cleanEnv(), ...(configDir ? { LATCHKEY_CONFIG_DIR: configDir } : {}), ...env },
    stdio: ["pipe", "pipe", "pipe"],
  });
  children.push(proc);
  let stdout = "";
  let stderr = "";
  const waiters = [];
  proc.stdout.on("data", (c) => (stdout += c));
  proc.stderr.on("data", (c) => {
    stderr += c;
    for (const w of waiters.splice(0)) if (!w(stderr)) waiters.push(w);
  });
  const done = new Promise((resolve) => proc.on("exit", (code) => resolve({ code, stdout, stderr })));
  const timer = setTimeout(() => proc.kill("SIGKILL"), timeout);
  done.then(() => clearTimeout(timer));
  const waitFor = (re, ms = 30000) =>
    new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no ${re} on stderr within ${ms} ms; stderr: ${stderr}`)), ms);
      const check = (text) => {
        const m = text.match(re);
        if (m) {
          clearTimeout(t);
          resolve(m);
        }
        return !!m;
      };
      if (!check(stderr)) waiters.push(check);
      done.then(() => {
        clearTimeout(t);
        if (!stderr.match(re)) reject(new Error(`latchkey exited without ${re}; stderr: ${stderr}`));
      });
    });
  return { proc, waitFor, done };
}

/** The shared headless Chromium (launched on first use). */
export async function chromium() {
  if (!browser) {
    const { chromium: launcher } = resolver("playwright-core");
    browser = await launcher.launch({
      executablePath: process.env.SIGNIN_CHROMIUM || "/usr/bin/chromium",
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    });
  }
  return browser;
}

let shots = 0;

/**
 * Opens `url` in a fresh browser context and signs in as `login` on the provider's
 * pages: fills its login form, presses Continue on consent (and on the device flow's
 * code confirmation), until the page leaves the provider or shows no form. Resolves
 * with `{ url, text }` of the last page. `page` may be given to keep a context (the
 * web UI's cookies).
 */
export async function signInAs(url, login, { page, timeout = 30000, shot = "signin" } = {}) {
  const b = await chromium();
  const own = !page;
  const p = page ?? (await (await b.newContext()).newPage());
  const providerOrigin = (u) => new URL(u).origin;
  const deadline = Date.now() + timeout;
  try {
    await p.goto(url, { waitUntil: "load", timeout });
    const start = providerOrigin(p.url());
    for (let step = 0; step < 10; step++) {
      if (Date.now() > deadline) throw new Error(`signing in as ${login} took over ${timeout} ms (at ${p.url()})`);
      if (providerOrigin(p.url()) !== start) break;
      if ((await p.locator("form").count()) === 0) break;
      if ((await p.locator('input[name="login"]').count()) > 0) {
        await p.fill('input[name="login"]', login);
        await p.fill('input[name="password"]', "any-password");
      }
      // The device pages put their buttons outside the form (form="…"); never Abort.
      const submit = p.locator('button[type="submit"]:not([name="abort"]):not([name="logout"]), input[type="submit"]').first();
      await Promise.all([p.waitForNavigation({ waitUntil: "load", timeout }).catch(() => {}), submit.click()]);
    }
    const text = await p.locator("body").innerText({ timeout: 5000 }).catch(() => "");
    await p.screenshot({ path: path.join(OUT, `${String(++shots).padStart(2, "0")}-${shot}.png`) }).catch(() => {});
    return { url: p.url(), text };
  } finally {
    if (own) await p.context().close();
  }
}
