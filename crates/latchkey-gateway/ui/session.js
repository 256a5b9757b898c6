// Who is using the page (issue 19). In local mode nobody signs in: the page is the one
// local user's. In jwt mode a person signs in through the organisation's OpenID
// provider (`/v1/auth/login`); the session is an HttpOnly cookie the page never sees,
// and every state-changing call carries the session's CSRF token (api.js).

import { api, onSignedOut, setCsrf } from "./api.js";
import { fill } from "./dom.js";

const $ = (id) => document.getElementById(id);

/** Shows the sign-in panel (and nothing else of the app). */
function showSignIn(config, why) {
  document.body.dataset.signedIn = "false";
  $("sign-in").hidden = false;
  $("sign-out").hidden = true;
  // No live updates to speak of before signing in.
  $("live").hidden = true;
  fill($("whoami"), "");
  const link = $("sign-in-link");
  link.hidden = !config.sign_in;
  link.href = `/v1/auth/login?return_to=${encodeURIComponent(location.pathname + location.hash)}`;
  fill(
    $("sign-in-text"),
    why ||
      (config.sign_in
        ? "Sign in with your organisation's account to manage your MCP servers."
        : "This Latchkey accepts API tokens only: no sign-in provider is configured ([auth.login])."),
  );
}

/**
 * Finds out who is using the page. Returns the caller (`{subject, tenant, admin}`)
 * once signed in, or null after showing the sign-in panel.
 */
export async function start() {
  let config;
  try {
    config = await api.authConfig();
  } catch {
    config = { mode: "local", sign_in: false };
  }
  if (config.mode === "local") {
    const me = await api.whoami();
    document.body.dataset.signedIn = "true";
    fill($("whoami"), `Signed in as ${me.subject} (tenant ${me.tenant}${me.admin ? ", admin" : ""})`);
    return me;
  }
  let me;
  try {
    me = await api.session();
  } catch (err) {
    if (err.status === 401) {
      showSignIn(config);
      return null;
    }
    throw err;
  }
  setCsrf(me.csrf_token);
  document.body.dataset.signedIn = "true";
  $("sign-in").hidden = true;
  $("live").hidden = false;
  fill($("whoami"), `Signed in as ${me.subject} (tenant ${me.tenant}${me.admin ? ", admin" : ""})`);
  const out = $("sign-out");
  out.hidden = me.source !== "session";
  out.onclick = async () => {
    out.disabled = true;
    try {
      await api.logout();
    } finally {
      location.assign("/");
    }
  };
  // A session that ends while the page is open (signed out elsewhere, timed out):
  // back to the sign-in panel, never a page of errors.
  onSignedOut(() => showSignIn(config, "Your session has ended. Sign in again to go on."));
  return me;
}
