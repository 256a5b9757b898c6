// What the user reads: one message per callback reason (R-UI-6), per provider error
// code and per API error code. Texts only: callers put them in the page as text.

export const POPUP_BLOCKED = "Popup blocked. Please allow popups for this site and retry.";
export const POPUP_CLOSED = "The sign-in window was closed before the connection completed.";
export const CONNECT_TIMED_OUT =
  "The sign-in did not come back within 3 minutes. If the authorization server showed an error in the sign-in window (it may no longer know Latchkey's registration), reconnect to start afresh.";

/** Callback reasons (the `reason` of the popup's result), as sentences. */
const REASONS = {
  connected: "Connected.",
  authorized: "Connected.",
  already_authorized: "Already connected.",
  completed: "Connected (client credentials, no sign-in needed).",
  provider_error: "The authorization server refused the connection.",
  missing_code_or_state: "The authorization server's answer had no code or state. Please try again.",
  missing_params: "The authorization server's answer had no code or state. Please try again.",
  missing_state:
    "The authorization server's answer had a code but no state, so it was refused. Please try again.",
  unauthenticated: "You are not signed in to Latchkey. Sign in and try again.",
  invalid_state: "Authorization expired. Please try again.",
  user_mismatch: "You must complete authorization as the same user who started it.",
  server_gone: "The server was removed while you were authorizing it.",
  insecure_url: "MCP OAuth requires https.",
  issuer_mismatch:
    "The answer did not come from the expected authorization server (issuer mismatch). Please try again.",
  invalid_callback: "The authorization server's answer was malformed. Please try again.",
  encryption_key_missing:
    "Latchkey has no encryption key configured, so it cannot store the connection. Contact your administrator.",
  discovery_failed: "The server's OAuth metadata could not be read. Please try again later.",
  client_changed:
    "The server's OAuth client changed while you were authorizing. Please try again.",
  exchange_failed: "The authorization code could not be exchanged for a token. Please try again.",
  client_unknown:
    "The authorization server no longer knows Latchkey's registration; connect again and Latchkey registers afresh.",
  token_exchange_failed:
    "The authorization code could not be exchanged for a token. Please try again.",
  unknown: "Something went wrong while connecting. Please try again.",
};

/** RFC 6749 §4.1.2.1 error codes an authorization server may send back. */
const PROVIDER_ERRORS = {
  access_denied: "access was denied",
  invalid_request: "the request was malformed",
  unauthorized_client: "this client is not allowed to ask",
  unsupported_response_type: "it does not support this kind of request",
  invalid_scope: "the requested scopes are not valid",
  server_error: "it had an internal error",
  temporarily_unavailable: "it is temporarily unavailable",
  login_required: "you need to sign in there first",
  consent_required: "consent is required",
  interaction_required: "it needs you to interact with it",
};

/** The sentence for a popup result. */
export function callbackMessage(reason, error) {
  if (reason === "provider_error") {
    const code = typeof error === "string" && error ? error : null;
    if (!code) return REASONS.provider_error;
    const why = PROVIDER_ERRORS[code];
    return why
      ? `The authorization server refused the connection: ${why} (${code}).`
      : `The authorization server refused the connection (${code}).`;
  }
  return REASONS[reason] || REASONS.unknown;
}

/** Stable API error codes, as sentences. */
const CODES = {
  needs_scope_upgrade: "The server asks for more permissions: reconnect to grant them.",
  encryption_key_missing:
    "Latchkey has no encryption key configured. Contact your administrator.",
  unavailable: "Latchkey is temporarily unavailable. Please try again.",
  upstream_error: "The MCP server or its authorization server failed to answer properly.",
  forbidden: "You are not allowed to do this (tenant admins only).",
  not_found: "Not found: it may have been deleted.",
};

/** Why a connection must be made again (`needs_oauth_reauth`'s `reason`), as clauses. */
const REAUTH_REASONS = {
  consent_refused: "its authorization server no longer accepts the stored authorization",
  token_rejected: "the server refused its token even after a refresh",
  other_resource: "the stored authorization was issued for another URL of the server",
  unreadable: "the stored authorization cannot be decrypted with Latchkey's keys",
};

/**
 * The sentence for `needs_oauth_reauth`: a server never connected (or disconnected)
 * is "not connected yet", not one to reconnect (issue 17). Callers show it beside the
 * server's name.
 */
function reauthMessage(err) {
  if (err.reason === "not_connected") return "Not connected yet: connect it to use its tools.";
  const why = REAUTH_REASONS[err.reason] || "the stored authorization is no longer accepted";
  return `Needs to be reconnected: ${why}. Reconnect to continue.`;
}

/** The sentence for a failed API call (an `ApiError` or anything thrown). */
export function describeError(err) {
  if (!err || typeof err !== "object") return REASONS.unknown;
  if (err.status === 401) {
    return "Latchkey asks for sign-in: this page works when Latchkey runs in local mode.";
  }
  if (err.code === "invalid_request" && err.fields && err.fields.length) {
    return err.fields.map((f) => (f.field ? `${f.field}: ${f.message}` : f.message)).join("; ");
  }
  if (err.code === "needs_oauth_reauth") return reauthMessage(err);
  if (err.code === "needs_scope_upgrade" && err.scopes && err.scopes.length) {
    return `${CODES.needs_scope_upgrade} Needed: ${err.scopes.join(" ")}.`;
  }
  // An upstream failure names the server and the cause (issue 17); the bare code is
  // the fallback for an answer that does not.
  if (err.code === "upstream_error" && err.message && err.message !== "upstream failure") {
    return `${err.message}.`;
  }
  if (err.code === "probe_failed" && err.message) {
    return `${err.message}. To add it anyway, choose its authentication.`;
  }
  if (err.code && CODES[err.code]) return CODES[err.code];
  if (typeof err.message === "string" && err.message) return err.message;
  return REASONS.unknown;
}

/** Auth types as the page names them. */
export const AUTH_TYPES = {
  oauth: "OAuth 2.1",
  none: "No authentication",
  headers: "Static headers",
};
