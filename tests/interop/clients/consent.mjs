// Consent by plain HTTP on oidc-provider's devInteractions pages, as a user would give
// it in a browser: follows the authorization URL's redirects with a cookie jar, signs
// in (any name, any password) and presses Continue on the consent page, and stops at
// the first redirect that leaves the authorization server: the client's redirect URI
// with `code`, `state` and `iss`. Nothing on those pages needs script.
//
// As a module: `await consent(authorizationUrl, { login })` answers that URL.
// As a command (the Python client uses it): `node consent.mjs URL [LOGIN]` prints it.
import { fileURLToPath } from "node:url";

const formFields = (html) => {
  const form = html.match(/<form[^>]*action="([^"]+)"[^>]*>([\s\S]*?)<\/form>/i);
  if (!form) return undefined;
  const fields = {};
  for (const input of form[2].matchAll(/<input[^>]*>/gi)) {
    const name = input[0].match(/name="([^"]+)"/)?.[1];
    if (name) fields[name] = input[0].match(/value="([^"]*)"/)?.[1] ?? "";
  }
  return { action: form[1].replace(/&amp;/g, "&"), fields };
};

export async function consent(authorizationUrl, { login = "alice", timeoutMs = 20000 } = {}) {
  const origin = new URL(authorizationUrl).origin;
  const jar = new Map();
  const deadline = Date.now() + timeoutMs;
  let url = authorizationUrl;
  let method = "GET";
  let body;
  for (let step = 0; step < 20; step++) {
    if (Date.now() > deadline) throw new Error(`consent took over ${timeoutMs} ms (at ${new URL(url).pathname})`);
    const headers = { cookie: [...jar].map(([k, v]) => `${k}=${v}`).join("; ") };
    if (body) headers["content-type"] = "application/x-www-form-urlencoded";
    const r = await fetch(url, { method, headers, body, redirect: "manual", signal: AbortSignal.timeout(10000) });
    for (const c of r.headers.getSetCookie()) {
      const [pair] = c.split(";");
      const i = pair.indexOf("=");
      jar.set(pair.slice(0, i).trim(), pair.slice(i + 1));
    }
    const text = await r.text();
    const location = r.headers.get("location");
    if (r.status >= 300 && r.status < 400 && location) {
      const next = new URL(location, url).href;
      if (new URL(next).origin !== origin) return next;
      [url, method, body] = [next, "GET", undefined];
      continue;
    }
    const form = r.status === 200 ? formFields(text) : undefined;
    if (!form) throw new Error(`consent stuck at ${new URL(url).pathname}: ${r.status} ${text.replace(/<[^>]+>/g, " ").replace(/\s+/g, " ").slice(0, 300)}`);
    if ("login" in form.fields) form.fields.login = login;
    if ("password" in form.fields) form.fields.password = "any-password";
    [url, method, body] = [new URL(form.action, url).href, "POST", new URLSearchParams(form.fields).toString()];
  }
  throw new Error("consent: too many steps");
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  consent(process.argv[2], { login: process.argv[3] }).then(
    (u) => process.stdout.write(`${u}\n`),
    (e) => {
      process.stderr.write(`${e.message}\n`);
      process.exit(1);
    },
  );
}
