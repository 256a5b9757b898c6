// Latchkey's API, same origin. Responses never carry a secret (a client secret is
// only `has_client_secret`); the one secret the page ever sends, a typed client
// secret, goes in a request body and is not kept.

/** A failed API call: HTTP status (0: unreachable) and the error body's fields. */
export class ApiError extends Error {
  constructor(status, body) {
    super((body && typeof body.message === "string" && body.message) || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.code = body && typeof body.code === "string" ? body.code : null;
    this.fields = body && Array.isArray(body.fields) ? body.fields : [];
    this.scopes = body && Array.isArray(body.scopes) ? body.scopes : [];
    // `needs_oauth_reauth`: why (`not_connected`, `consent_refused`, …) and the name
    // the user gave the server.
    this.reason = body && typeof body.reason === "string" ? body.reason : null;
    this.serverName = body && typeof body.server_name === "string" ? body.server_name : null;
  }
}

/** The session's CSRF token (jwt mode, signed in through the browser); null otherwise. */
let csrf = null;
/** Called when a signed-in session's call is refused with 401 (the session ended). */
let signedOut = null;

/** Sets the CSRF token every state-changing call carries. */
export function setCsrf(token) {
  csrf = typeof token === "string" && token ? token : null;
}

/** Registers what to do when the session ends while the page is open. */
export function onSignedOut(fn) {
  signedOut = fn;
}

async function request(method, path, body) {
  const init = { method, headers: { accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (csrf && method !== "GET") init.headers["x-csrf-token"] = csrf;
  let r;
  try {
    r = await fetch(path, init);
  } catch {
    throw new ApiError(0, { code: "unreachable", message: "Latchkey cannot be reached." });
  }
  const text = await r.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (r.status === 401 && csrf && signedOut) signedOut();
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

const e = encodeURIComponent;

export const api = {
  whoami: () => request("GET", "/v1/whoami"),
  authConfig: () => request("GET", "/v1/auth/config"),
  session: () => request("GET", "/v1/auth/session"),
  logout: () => request("POST", "/v1/auth/logout", {}),
  servers: () => request("GET", "/v1/servers"),
  createServer: (body) => request("POST", "/v1/servers", body),
  updateServer: (id, body) => request("PATCH", `/v1/servers/${e(id)}`, body),
  deleteServer: (id) => request("DELETE", `/v1/servers/${e(id)}`),
  status: (id) => request("GET", `/v1/oauth/status/${e(id)}`),
  tools: (id) => request("GET", `/v1/servers/${e(id)}/tools`),
  callTool: (id, name, args) =>
    request("POST", `/v1/servers/${e(id)}/tools/${e(name)}/call`, args),
  start: (id, force = false) =>
    request("POST", "/v1/oauth/start", force ? { server_id: id, force: true } : { server_id: id }),
  disconnect: (id) => request("DELETE", `/v1/credentials/${e(id)}`),
  apiKeys: () => request("GET", "/v1/api-keys"),
  createApiKey: (body) => request("POST", "/v1/api-keys", body),
  deleteApiKey: (id) => request("DELETE", `/v1/api-keys/${e(id)}`),
};
