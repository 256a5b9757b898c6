// Connecting a server (R-UI-1..5, R-UI-10): a named popup opened synchronously in the
// click handler, pointed at the authorization URL once /v1/oauth/start answers; the
// result comes back from the callback page by BroadcastChannel and by postMessage to
// this origin. The "connecting" state is kept per server, each with its own
// popup-closed watcher.

import { api } from "./api.js";

/** The BroadcastChannel the callback page posts on. */
export const CHANNEL = "mcp-oauth";
/** How often a popup is checked for having been closed. */
const POLL_MS = 500;
const FEATURES = "popup,width=560,height=720";

/** serverId -> { popup, timer } for every flow under way. */
const connecting = new Map();
/**
 * serverId -> when its popup was seen closed without a result. An authorization server
 * whose page sets Cross-Origin-Opener-Policy makes the popup look closed to us while
 * the user is still signing in; its result, when it comes by BroadcastChannel, is
 * still reported as the outcome of that attempt.
 */
const closedEarly = new Map();
const CLOSED_EARLY_MS = 10 * 60 * 1000;

let hooks = {
  /** The connecting state of `serverId` changed. */
  changed: (_serverId) => {},
  /**
   * A connection attempt ended: `{ok, serverId, reason?, error?, apiError?, popupBlocked?,
   * popupClosed?, wasConnecting, cleared?}`.
   */
  finished: (_result) => {},
};

/** Sets the callbacks. */
export function configure(h) {
  hooks = { ...hooks, ...h };
}

/** Whether a flow for `serverId` is under way. */
export function isConnecting(serverId) {
  return connecting.has(serverId);
}

/** The servers with a flow under way. */
export function connectingIds() {
  return [...connecting.keys()];
}

/** Forgets the flow of `serverId` and its watcher; whether there was one. */
function stop(serverId, closePopup = false) {
  const c = connecting.get(serverId);
  if (!c) return false;
  clearInterval(c.timer);
  connecting.delete(serverId);
  if (closePopup && c.popup && !c.popup.closed) {
    try {
      c.popup.close();
    } catch {
      // Already gone.
    }
  }
  hooks.changed(serverId);
  return true;
}

/** Abandons the flow of `serverId`, closing its popup. */
export function cancel(serverId) {
  stop(serverId, true);
}

/** The authorization URL if it is https, or http on a loopback host (development). */
export function safeAuthorizationUrl(raw) {
  let u;
  try {
    u = new URL(raw);
  } catch {
    return null;
  }
  if (u.protocol === "https:") return u;
  const loopback = ["localhost", "127.0.0.1", "[::1]"];
  if (u.protocol === "http:" && loopback.includes(u.hostname)) return u;
  return null;
}

/**
 * Connects `server`. Must be called synchronously from a click handler (the popup is
 * opened before anything is awaited, or a blocker would stop it). `reconnect` starts
 * a new flow even though a connection is stored (one the server no longer accepts, or
 * one that needs more scopes); the stored one keeps serving until the new one lands.
 */
export async function connect(server, { reconnect = false } = {}) {
  const id = server.id;
  // R-UI-3: a restarted flow clears the old watcher first (the named popup is reused).
  stop(id);
  closedEarly.delete(id);
  // R-UI-10: client credentials need no browser.
  const popup =
    server.grant_type === "client_credentials"
      ? null
      : window.open("", `mcp-oauth-${id}`, FEATURES);
  if (server.grant_type !== "client_credentials" && (!popup || popup.closed)) {
    hooks.finished({ ok: false, serverId: id, popupBlocked: true, wasConnecting: false });
    return;
  }
  const entry = { popup, timer: 0 };
  if (popup) {
    entry.timer = setInterval(() => {
      if (popup.closed && connecting.get(id) === entry && stop(id)) {
        closedEarly.set(id, Date.now());
        hooks.finished({ ok: false, serverId: id, popupClosed: true, wasConnecting: true });
      }
    }, POLL_MS);
  }
  connecting.set(id, entry);
  hooks.changed(id);
  const current = () => connecting.get(id) === entry;
  try {
    const started = await api.start(id, reconnect);
    if (!current()) return; // closed or restarted meanwhile
    if (started && started.status === "redirect") {
      const url = safeAuthorizationUrl(started.authorization_url);
      if (!url) {
        stop(id, true);
        hooks.finished({ ok: false, serverId: id, reason: "insecure_url", wasConnecting: true });
        return;
      }
      popup.location.href = url.href;
      return;
    }
    const status = started && started.status;
    const ok = status === "already_authorized" || status === "completed";
    stop(id, true);
    hooks.finished({ ok, serverId: id, reason: ok ? status : "unknown", wasConnecting: true });
  } catch (err) {
    if (!current()) return;
    stop(id, true);
    hooks.finished({ ok: false, serverId: id, apiError: err, wasConnecting: true });
  }
}

/** A result posted by the callback page: `{type:"mcp-oauth", ok, serverId?, reason, error?}`. */
export function handleResult(data) {
  if (!data || typeof data !== "object" || data.type !== "mcp-oauth") return;
  if (typeof data.ok !== "boolean") return;
  const reason = typeof data.reason === "string" ? data.reason : "unknown";
  const error = typeof data.error === "string" ? data.error : null;
  const serverId = typeof data.serverId === "string" && data.serverId ? data.serverId : null;
  if (serverId) {
    const closedAt = closedEarly.get(serverId);
    closedEarly.delete(serverId);
    const late = closedAt !== undefined && Date.now() - closedAt < CLOSED_EARLY_MS;
    const wasConnecting = stop(serverId) || late;
    hooks.finished({ ok: data.ok, serverId, reason, error, wasConnecting });
    return;
  }
  if (!data.ok) {
    // R-UI-4: an early failure names no server; nothing may stay "Connecting…".
    const cleared = connectingIds();
    for (const id of cleared) stop(id);
    hooks.finished({ ok: false, serverId: null, reason, error, cleared, wasConnecting: cleared.length > 0 });
  }
}

/** Listens for results: postMessage from this origin only, and the BroadcastChannel. */
export function listen() {
  window.addEventListener("message", (ev) => {
    if (ev.origin !== window.location.origin) return;
    handleResult(ev.data);
  });
  if (typeof BroadcastChannel === "function") {
    const bc = new BroadcastChannel(CHANNEL);
    bc.addEventListener("message", (ev) => {
      if (ev.origin && ev.origin !== window.location.origin) return;
      handleResult(ev.data);
    });
  }
}
