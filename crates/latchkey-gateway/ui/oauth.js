// Connecting a server (R-UI-1..5, R-UI-10): a named popup opened synchronously in the
// click handler, pointed at the authorization URL once /v1/oauth/start answers; the
// result comes back from the callback page by BroadcastChannel and by postMessage to
// this origin. The "connecting" state is kept per server, each with its own
// popup-closed watcher and a deadline (issue 17): an authorization server that shows
// an error of its own in the popup (one that forgot Latchkey's registration, say) never
// sends the user back, so after CONNECT_TIMEOUT_MS the attempt ends with a message;
// a result that still arrives while the flow could complete is reported as its outcome.

import { api } from "./api.js";

/** The BroadcastChannel the callback page posts on. */
export const CHANNEL = "mcp-oauth";
/** How often a popup is checked for having been closed. */
const POLL_MS = 500;
const FEATURES = "popup,width=560,height=720";

/** How long a sign-in may take before the attempt is given up. */
export const CONNECT_TIMEOUT_MS = 3 * 60 * 1000;
/**
 * How long a popup seen closed is given for its result to arrive before the attempt is
 * reported as closed: the callback page posts the result, then closes itself.
 */
const CLOSE_GRACE_MS = 1500;

/** serverId -> { popup, timer, deadline, name, closedAt } for every flow under way. */
const connecting = new Map();
/**
 * serverId -> { at, name }: an attempt that ended without a result (its popup seen
 * closed, or its deadline passed). An authorization server whose page sets
 * Cross-Origin-Opener-Policy makes the popup look closed to us while the user is still
 * signing in; its result, when it comes by BroadcastChannel while the flow is still
 * valid, is reported as the outcome of that attempt.
 */
const endedEarly = new Map();
/** A flow's state is valid this long at the gateway (FLOW_TTL_SECS). */
const FLOW_LIFETIME_MS = 10 * 60 * 1000;

let hooks = {
  /** The connecting state of `serverId` changed. */
  changed: (_serverId) => {},
  /**
   * A connection attempt ended: `{ok, serverId, name?, reason?, error?, apiError?,
   * popupBlocked?, popupClosed?, timedOut?, wasConnecting, cleared?}` (`name`: the
   * server's name when the attempt was started here).
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
  clearTimeout(c.deadline);
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
  endedEarly.delete(id);
  const name = typeof server.name === "string" ? server.name : null;
  // R-UI-10: client credentials need no browser.
  const popup =
    server.grant_type === "client_credentials"
      ? null
      : window.open("", `mcp-oauth-${id}`, FEATURES);
  if (server.grant_type !== "client_credentials" && (!popup || popup.closed)) {
    hooks.finished({ ok: false, serverId: id, name, popupBlocked: true, wasConnecting: false });
    return;
  }
  const entry = { popup, timer: 0, deadline: 0, name, closedAt: 0 };
  const current = () => connecting.get(id) === entry;
  /** Ends the attempt without a result; a late one still counts (`endedEarly`). */
  const endEarly = (result) => {
    if (!current() || !stop(id)) return;
    endedEarly.set(id, { at: Date.now(), name });
    hooks.finished({ ok: false, serverId: id, name, wasConnecting: true, ...result });
  };
  if (popup) {
    entry.timer = setInterval(() => {
      if (!popup.closed || !current()) return;
      // The callback page posts its result before it closes itself: give it a moment.
      if (!entry.closedAt) entry.closedAt = Date.now();
      else if (Date.now() - entry.closedAt >= CLOSE_GRACE_MS) endEarly({ popupClosed: true });
    }, POLL_MS);
  }
  entry.deadline = setTimeout(() => endEarly({ timedOut: true }), CONNECT_TIMEOUT_MS);
  connecting.set(id, entry);
  hooks.changed(id);
  try {
    const started = await api.start(id, reconnect);
    if (!current()) return; // closed or restarted meanwhile
    if (started && started.status === "redirect") {
      const url = safeAuthorizationUrl(started.authorization_url);
      if (!url) {
        stop(id, true);
        hooks.finished({ ok: false, serverId: id, name, reason: "insecure_url", wasConnecting: true });
        return;
      }
      popup.location.href = url.href;
      return;
    }
    const status = started && started.status;
    const ok = status === "already_authorized" || status === "completed";
    stop(id, true);
    hooks.finished({ ok, serverId: id, name, reason: ok ? status : "unknown", wasConnecting: true });
  } catch (err) {
    if (!current()) return;
    stop(id, true);
    hooks.finished({ ok: false, serverId: id, name, apiError: err, wasConnecting: true });
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
    const c = connecting.get(serverId);
    const ended = endedEarly.get(serverId);
    endedEarly.delete(serverId);
    const late = ended !== undefined && Date.now() - ended.at < FLOW_LIFETIME_MS;
    const name = c ? c.name : late ? ended.name : null;
    const wasConnecting = stop(serverId) || late;
    hooks.finished({ ok: data.ok, serverId, name, reason, error, wasConnecting });
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
