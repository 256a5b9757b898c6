// Latchkey's web UI: the tenant's MCP servers with their connection status, adding and
// editing servers, connecting them (popup OAuth), their tools, and live updates.
//
// What the page keeps: the API's server views (never a secret: a client secret is only
// `has_client_secret`), slot status, tool lists. A typed client secret goes into one
// request body and the field is cleared at once.

import { api, ApiError } from "./api.js";
import { fill, h, relative, when } from "./dom.js";
import {
  AUTH_TYPES,
  CONNECT_TIMED_OUT,
  POPUP_BLOCKED,
  POPUP_CLOSED,
  callbackMessage,
  describeError,
} from "./messages.js";
import { alertUser, clearAlerts, notify } from "./notices.js";
import * as headers from "./headers.js";
import { installKeys } from "./keys.js";
import * as oauth from "./oauth.js";
import * as session from "./session.js";
import { toolForm } from "./toolform.js";

const $ = (id) => document.getElementById(id);

/**
 * serverId -> { server, status, statusError, tools, toolsError, card, body, toolsSig,
 * failure } (`failure`: why the last connection attempt started here failed).
 */
const entries = new Map();
let order = [];
/** The server being edited, or null when the form adds one. */
let editing = null;
/** Where the add / edit form lives when it is not open in a server's card. */
let formHome = null;

// Alerts are keyed by what they are about: a server's id, "form" (adding or editing),
// "load" (reading the list), "connect" (a connection attempt naming no server).

// ---------------------------------------------------------------------------------
// Loading

/** Loads in progress: the list is `aria-busy` while any runs (it starts busy in the page). */
let loading = 0;

async function loadAll() {
  loading += 1;
  $("servers").setAttribute("aria-busy", "true");
  try {
    await loadAllNow();
  } finally {
    loading -= 1;
    if (loading === 0) $("servers").setAttribute("aria-busy", "false");
  }
}

async function loadAllNow() {
  let servers;
  try {
    servers = await api.servers();
  } catch (err) {
    alertUser(`The servers could not be loaded. ${describeError(err)}`, "load");
    return;
  }
  clearAlerts("load");
  const seen = new Set();
  order = servers.map((s) => s.id);
  for (const s of servers) {
    seen.add(s.id);
    const e = entries.get(s.id) || { status: null, tools: null };
    e.server = s;
    entries.set(s.id, e);
  }
  for (const [id, e] of entries) {
    if (!seen.has(id)) {
      if (editing === id) resetForm();
      e.card?.remove();
      entries.delete(id);
      oauth.cancel(id);
    }
  }
  renderList();
  await Promise.all(order.map((id) => refreshServer(id)));
}

/** Re-reads one server's slot status and tools, then redraws its card. */
async function refreshServer(id) {
  const e = entries.get(id);
  if (!e) return;
  const s = e.server;
  e.loading = true;
  renderCard(id);
  let status = null;
  let statusError = null;
  if (s.auth_type === "oauth") {
    try {
      status = await api.status(id);
    } catch (err) {
      statusError = err;
    }
  }
  const usable =
    s.auth_type === "none" ||
    (s.auth_type === "headers" && headers.allSet(s)) ||
    (s.auth_type === "oauth" &&
      ((status && status.has_token) || (statusError && statusError.code === "forbidden")));
  let tools = null;
  let toolsError = null;
  if (usable) {
    try {
      const r = await api.tools(id);
      tools = Array.isArray(r && r.tools) ? r.tools : [];
    } catch (err) {
      toolsError = err;
    }
  }
  if (entries.get(id) !== e) return;
  // Connected since (here or elsewhere): an earlier failed attempt is history.
  if (status && status.has_token) e.failure = null;
  Object.assign(e, { status, statusError, tools, toolsError, loading: false });
  renderCard(id);
}

async function refreshOne(id) {
  // A server may have been added or removed meanwhile (another tab, the CLI).
  if (!entries.has(id)) {
    await loadAll();
    return;
  }
  try {
    const s = await api.servers();
    const row = s.find((x) => x.id === id);
    if (!row) {
      await loadAll();
      return;
    }
    entries.get(id).server = row;
  } catch {
    // Keep the row we have; the status call below reports the problem.
  }
  await refreshServer(id);
}

// ---------------------------------------------------------------------------------
// What a card shows

/** The connection state of a server: `{kind, text}`. */
function view(e) {
  const s = e.server;
  if (oauth.isConnecting(s.id)) {
    return {
      kind: "connecting",
      text:
        s.grant_type === "client_credentials"
          ? "Connecting…"
          : "Connecting… finish signing in in the popup window.",
    };
  }
  if (s.auth_type === "headers" && !headers.allSet(s)) {
    return { kind: "needs-headers", text: headers.missingText(s) };
  }
  if (s.auth_type === "oauth") {
    if (e.statusError) {
      if (e.statusError.code === "forbidden" && s.token_scope === "shared") {
        if (e.toolsError) return toolsView(e);
        if (e.tools) return { kind: "connected", text: "Connected (shared, managed by tenant admins)." };
        return { kind: "loading", text: "Checking…" };
      }
      return { kind: "error", text: `Error: ${describeError(e.statusError)}` };
    }
    if (!e.status) return { kind: "loading", text: "Checking…" };
    if (!e.status.has_token) {
      if (e.failure) return { kind: "needs-consent", text: `Not connected: ${e.failure}`, failed: true };
      return { kind: "needs-consent", text: "Not connected: needs your consent." };
    }
  }
  if (e.toolsError) return toolsView(e);
  if (!e.tools) return { kind: "loading", text: "Loading tools…" };
  return {
    kind: "connected",
    text: s.auth_type === "none" ? "Ready (no authentication needed)." : "Connected.",
  };
}

function toolsView(e) {
  const err = e.toolsError;
  if (err.code === "needs_oauth_reauth") {
    // Never connected (or disconnected): "not connected yet" with Connect; a refused
    // credential: reconnect (issue 17).
    const notConnected = err.reason === "not_connected";
    const adminsOnly = !!(e.statusError && e.statusError.code === "forbidden");
    const text =
      notConnected && adminsOnly
        ? "Not connected yet: a tenant admin connects this shared server."
        : describeError(err);
    return { kind: "needs-consent", notConnected, text };
  }
  if (err.code === "needs_scope_upgrade") {
    return { kind: "needs-scope", text: `Needs a scope upgrade. ${describeError(err)}` };
  }
  if (err.code === "headers_not_set" || err.code === "headers_refused") {
    return { kind: "needs-headers", text: describeError(err) };
  }
  return { kind: "error", text: `Error: ${describeError(err)}` };
}

function renderList() {
  const list = $("servers");
  let at = 0;
  for (const id of order) {
    const e = entries.get(id);
    if (!e.card) {
      // The card's own content is redrawn in `body`; the edit form, when open here,
      // sits after it untouched (what is typed and the focus stay).
      e.body = h("div", { class: "card-body" });
      e.card = h("li", { class: "card", dataset: { serverId: id } }, e.body);
    }
    // The API's order; a card already in place is not moved (moving it would take
    // the focus from the edit form open in it).
    if (list.children[at] !== e.card) list.insertBefore(e.card, list.children[at] || null);
    at += 1;
    renderCard(id);
  }
  $("empty").hidden = order.length > 0;
}

function renderCard(id) {
  const e = entries.get(id);
  if (!e || !e.card) return;
  const s = e.server;
  const v = view(e);
  const card = e.card;
  card.dataset.status = v.kind;
  card.setAttribute("aria-busy", e.loading ? "true" : "false");
  const titleId = `server-${id}-name`;
  card.setAttribute("aria-labelledby", titleId);

  const slot = s.token_scope === "shared" ? "Shared connection" : "Your connection";
  const meta = h(
    "p",
    { class: "meta" },
    h("span", { class: "badge" }, AUTH_TYPES[s.auth_type] || s.auth_type),
    s.auth_type === "oauth" ? h("span", { class: "badge" }, slot) : null,
    s.auth_type === "oauth" && s.grant_type === "client_credentials"
      ? h("span", { class: "badge" }, "Client credentials")
      : null,
    s.unprefixed
      ? h("span", { class: "badge", dataset: { role: "unprefixed" }, title: "Its tools, prompts and resources keep their own names on /mcp" }, "Own names on /mcp")
      : null,
    e.tools ? h("span", { class: "badge", dataset: { role: "tool-count" } }, countTools(e.tools.length)) : null,
  );

  const details = [];
  const st = e.status && { ...e.status, expires_at: seconds(e.status.expires_at), updated_at: seconds(e.status.updated_at) };
  if (st && st.has_token) {
    if (typeof st.expires_at === "number") {
      details.push(
        h(
          "span",
          { title: when(st.expires_at) },
          st.expired ? `Token expired ${relative(st.expires_at)}` : `Token expires ${relative(st.expires_at)}`,
        ),
      );
    }
    if (typeof st.updated_at === "number") {
      details.push(h("span", { title: when(st.updated_at) }, `Last refreshed ${relative(st.updated_at)}`));
    }
    details.push(
      st.refreshable
        ? h("span", {}, "Refreshes automatically")
        : h(
            "span",
            { class: "warn", dataset: { role: "not-renewable" } },
            typeof st.expires_at === "number"
              ? `Cannot be renewed without your consent: the server issued no refresh token, so this connection ends ${relative(st.expires_at)}`
              : "Cannot be renewed without your consent: the server issued no refresh token",
          ),
    );
    if (st.scopes) details.push(h("span", {}, `Scopes: ${st.scopes}`));
  }

  fill(
    e.body,
    h(
      "div",
      { class: "card-head" },
      h("h3", { id: titleId }, s.name),
      h("p", { class: "url" }, s.url),
    ),
    meta,
    h("p", { class: `status status-${v.kind}`, dataset: { role: "status" } }, v.text),
    details.length ? h("p", { class: "details" }, details) : null,
    actions(e, v),
    s.auth_type === "headers"
      ? headers.cardSection(s, {
          describe: describeError,
          done: (text, isError) => {
            if (isError) alertUser(text, id);
            else {
              clearAlerts(id);
              notify(text, id);
            }
            refreshOne(id);
          },
        })
      : null,
    toolsPanel(e),
  );
}

function countTools(n) {
  return n === 1 ? "1 tool" : `${n} tools`;
}

function actions(e, v) {
  const s = e.server;
  const name = s.name;
  const buttons = [];
  if (s.auth_type === "oauth") {
    const canManage = !(s.token_scope === "shared" && e.statusError && e.statusError.code === "forbidden");
    if (v.kind === "connecting") {
      buttons.push(
        h("button", { type: "button", class: "secondary", "aria-label": `Cancel connecting ${name}`, onclick: () => oauth.cancel(s.id) }, "Cancel"),
      );
    } else if (canManage && v.kind === "needs-consent" && (v.notConnected || !(e.status && e.status.has_token))) {
      // After a failed attempt the button says what it does again (issue 17).
      const again = !!v.failed;
      buttons.push(
        h(
          "button",
          { type: "button", "aria-label": `${again ? "Reconnect" : "Connect"} ${name}`, onclick: () => startConnect(s.id, false) },
          again ? "Reconnect" : "Connect",
        ),
      );
    } else if (canManage && (v.kind === "needs-consent" || v.kind === "needs-scope")) {
      buttons.push(
        h("button", { type: "button", "aria-label": `Reconnect ${name}`, onclick: () => startConnect(s.id, true) }, "Reconnect"),
      );
    } else if (canManage && v.kind === "error" && !(e.status && e.status.has_token)) {
      buttons.push(
        h("button", { type: "button", "aria-label": `Connect ${name}`, onclick: () => startConnect(s.id, false) }, "Connect"),
      );
    }
    if (canManage && e.status && e.status.has_token && v.kind !== "connecting") {
      buttons.push(
        h("button", { type: "button", class: "secondary", "aria-label": `Disconnect ${name}`, onclick: () => disconnect(s.id) }, "Disconnect"),
      );
    }
  }
  buttons.push(
    h("button", { type: "button", class: "secondary", "aria-label": `Edit ${name}`, dataset: { action: "edit" }, onclick: () => startEdit(s.id) }, "Edit"),
    h("button", { type: "button", class: "danger", "aria-label": `Delete ${name}`, onclick: () => remove(s.id) }, "Delete"),
  );
  return h("div", { class: "actions" }, buttons);
}

// ---------------------------------------------------------------------------------
// Tools

function toolsPanel(e) {
  if (!e.tools) {
    e.toolsPanel = null;
    e.toolsSig = null;
    return null;
  }
  const sig = JSON.stringify(e.tools);
  if (e.toolsPanel && e.toolsSig === sig) return e.toolsPanel; // keeps what was typed
  const wasOpen = e.toolsPanel ? e.toolsPanel.open : false;
  const s = e.server;
  const panel = h(
    "details",
    { class: "tools", open: wasOpen },
    h("summary", {}, `Tools (${e.tools.length})`),
    e.tools.length === 0 ? h("p", { class: "muted" }, "This server offers no tools.") : null,
    e.tools.map((t, i) => toolView(s, t, i)),
  );
  e.toolsPanel = panel;
  e.toolsSig = sig;
  return panel;
}

function toolView(server, tool, i) {
  const name = typeof tool.name === "string" ? tool.name : "";
  const base = `tool-${server.id}-${i}`;
  const form = toolForm(base, tool, {
    call: (args) => api.callTool(server.id, name, args),
    describe: describeError,
    failed: (err) => {
      const slotLevel = ["needs_oauth_reauth", "needs_scope_upgrade", "headers_not_set", "headers_refused"];
      if (err instanceof ApiError && slotLevel.includes(err.code)) {
        // The card is redrawn with what to do, and without the tools (this form and
        // what it showed go with them): an OAuth reason stays as the server's alert
        // until it is connected again (a headers server's card says which values to
        // set by itself).
        if (err.code === "needs_oauth_reauth" || err.code === "needs_scope_upgrade") {
          alertUser(`${server.name}: ${describeError(err)}`, server.id);
        }
        refreshServer(server.id);
      }
    },
  });
  return h(
    "section",
    { class: "tool", "aria-labelledby": `${base}-name`, dataset: { tool: name } },
    h("h4", { id: `${base}-name`, class: "mono" }, name),
    typeof tool.description === "string" ? h("p", {}, tool.description) : null,
    h(
      "details",
      { class: "schema" },
      h("summary", {}, "Input schema"),
      h("pre", { class: "mono" }, JSON.stringify(tool.inputSchema ?? {}, null, 2)),
    ),
    form,
  );
}

// ---------------------------------------------------------------------------------
// Connecting

/** Click handler of Connect / Reconnect: opens the popup before anything is awaited. */
function startConnect(id, reconnect) {
  const e = entries.get(id);
  if (!e) return;
  clearAlerts(id);
  clearAlerts("connect");
  e.failure = null;
  oauth.connect(e.server, { reconnect });
}

/** Records why an attempt failed on the servers it concerned (shown on their cards). */
function failed(ids, text) {
  for (const id of ids) {
    const e = entries.get(id);
    if (!e) continue;
    e.failure = text;
    renderCard(id);
  }
}

oauth.configure({
  changed: (id) => renderCard(id),
  finished: (r) => {
    const key = r.serverId || "connect";
    if (r.popupBlocked) {
      alertUser(POPUP_BLOCKED, key);
      return;
    }
    // The name the attempt was started with: the list may not have it yet (a server
    // just added connects before the list is read again).
    const name = r.name || (r.serverId && entries.get(r.serverId) ? entries.get(r.serverId).server.name : null);
    const prefix = name ? `${name}: ` : "";
    if (!r.wasConnecting) {
      // Another tab's flow, or the second copy of a result (postMessage and
      // BroadcastChannel both deliver): just show the fresh state.
      if (r.serverId) refreshOne(r.serverId);
      return;
    }
    const ids = r.serverId ? [r.serverId] : r.cleared || [];
    if (r.popupClosed) {
      notify(`${prefix}${POPUP_CLOSED}`, key);
    } else if (r.ok) {
      clearAlerts(key);
      failed(ids, null);
      notify(`${prefix}${callbackMessage(r.reason, r.error)}`, key);
    } else {
      const why = r.timedOut
        ? CONNECT_TIMED_OUT
        : r.apiError
          ? describeError(r.apiError)
          : callbackMessage(r.reason, r.error);
      failed(ids, why);
      alertUser(`${prefix}${why}`, key);
    }
    // R-UI-5: fresh server, status and tools on every outcome, success included.
    if (r.serverId) refreshOne(r.serverId);
    else loadAll();
  },
});

async function disconnect(id) {
  const e = entries.get(id);
  if (!e) return;
  // Revoked only where the authorization server offers revocation (recorded with the
  // credential); otherwise the tokens are only forgotten here (issue 17).
  const revocable = !!(e.status && e.status.revocable === true);
  const what = revocable
    ? "Its tokens are revoked at the authorization server and deleted here."
    : "Its tokens are deleted here, but its authorization server offers no revocation: they stay valid there until they expire.";
  if (!window.confirm(`Disconnect ${e.server.name}? ${what}`)) return;
  try {
    await api.disconnect(id);
    notify(`${e.server.name}: disconnected.`, id);
  } catch (err) {
    alertUser(`${e.server.name}: ${describeError(err)}`, id);
  }
  await refreshServer(id);
}

async function remove(id) {
  const e = entries.get(id);
  if (!e) return;
  if (!window.confirm(`Delete ${e.server.name}? Its connections are revoked and deleted.`)) return;
  try {
    await api.deleteServer(id);
    clearAlerts(id);
    notify(`${e.server.name}: deleted.`, id);
    if (editing === id) resetForm();
  } catch (err) {
    alertUser(`${e.server.name}: ${describeError(err)}`, id);
  }
  await loadAll();
}

// ---------------------------------------------------------------------------------
// The add / edit form

function field(name) {
  return $("server-form").elements.namedItem(name);
}

function setSecretState(hasSecret) {
  fill($("f-secret-state"), hasSecret ? "A secret is set. Type a new one to replace it." : "Not set.");
  $("f-clear-secret-row").hidden = !hasSecret;
  $("f-clear-secret").checked = false;
}

/** The form's panel (its title and the form). */
function formPanel() {
  return $("server-form").closest("section");
}

/** Puts the form back where it lives when it adds a server. */
function formGoesHome() {
  const panel = formPanel();
  if (!formHome) formHome = { parent: panel.parentNode, next: panel.nextSibling };
  if (panel.parentNode !== formHome.parent) formHome.parent.insertBefore(panel, formHome.next);
  panel.classList.remove("editing");
}

function resetForm() {
  const was = editing;
  editing = null;
  formGoesHome();
  if (was) clearAlerts("form");
  $("server-form").reset();
  setSecretState(false);
  fill($("form-title"), "Add a server");
  fill($("f-submit"), "Add server");
  $("f-cancel").hidden = true;
  $("advanced").open = false;
}

function startEdit(id) {
  const e = entries.get(id);
  if (!e) return;
  const s = e.server;
  if (editing && editing !== id) clearAlerts("form");
  editing = id;
  // The form opens in place, in the server's card (issue 17).
  formGoesHome();
  const panel = formPanel();
  panel.classList.add("editing");
  e.card.append(panel);
  const form = $("server-form");
  form.reset();
  field("name").value = s.name;
  field("url").value = s.url;
  field("auth_type").value = s.auth_type;
  field("client_id").value = s.client_id || "";
  field("client_secret").value = "";
  field("issuer").value = s.issuer || "";
  field("scopes").value = s.scopes || "";
  field("grant_type").value = s.grant_type;
  for (const r of form.querySelectorAll('input[name="token_scope"]')) r.checked = r.value === s.token_scope;
  field("unprefixed").checked = !!s.unprefixed;
  setSecretState(!!s.has_client_secret);
  headers.editNames(s);
  headersForm.sync();
  // R-UI-8: the advanced section opens by itself when a client ID exists.
  $("advanced").open = !!s.client_id || !!s.has_client_secret || !!s.scopes;
  fill($("form-title"), `Edit ${s.name}`);
  fill($("f-submit"), "Save changes");
  $("f-cancel").hidden = false;
  field("name").focus();
  panel.scrollIntoView({ block: "nearest" });
}

/** The request body from the form, for a create or (against `old`) an edit. */
function formBody(old) {
  const text = (n) => field(n).value.trim();
  const body = { name: text("name"), url: text("url") };
  const auth = field("auth_type").value;
  if (auth) body.auth_type = auth;
  const scope = $("server-form").querySelector('input[name="token_scope"]:checked');
  body.token_scope = scope ? scope.value : "per_user";
  body.grant_type = field("grant_type").value;
  // Sent when it is set or changes (a create without it keeps the default, prefixed).
  const unprefixed = field("unprefixed").checked;
  if (old ? unprefixed !== !!old.unprefixed : unprefixed) body.unprefixed = unprefixed;
  const clientId = text("client_id");
  if (clientId) body.client_id = clientId;
  else if (old && old.client_id) body.client_id = null;
  const issuer = text("issuer");
  if (issuer) body.issuer = issuer;
  else if (old && old.issuer) body.issuer = null;
  const scopes = text("scopes");
  if (scopes) body.scopes = scopes;
  else if (old && old.scopes) body.scopes = null;
  const secret = field("client_secret").value;
  if (secret) body.client_secret = secret;
  else if (old && $("f-clear-secret").checked) body.client_secret = null;
  headers.addToBody(body, old);
  return body;
}

async function submitForm(ev) {
  ev.preventDefault();
  clearAlerts("form");
  const form = $("server-form");
  const name = field("name");
  const url = field("url");
  if (!name.value.trim() || !url.value.trim()) {
    alertUser("A name and a URL are required.", "form");
    (name.value.trim() ? url : name).focus();
    return;
  }
  const old = editing ? entries.get(editing)?.server : null;
  const body = formBody(old);
  // R-UI-8: the secret leaves the page in this request and is kept nowhere.
  field("client_secret").value = "";
  const submit = $("f-submit");
  submit.disabled = true;
  form.setAttribute("aria-busy", "true");
  let saved;
  try {
    saved = old ? await api.updateServer(old.id, body) : await api.createServer(body);
  } catch (err) {
    alertUser(describeError(err), "form");
    return;
  } finally {
    delete body.client_secret;
    delete body.header_values;
    submit.disabled = false;
    form.setAttribute("aria-busy", "false");
  }
  const auth = AUTH_TYPES[saved.auth_type] || saved.auth_type;
  const how = body.auth_type || old ? "Authentication" : "Detected authentication";
  notify(`${old ? "Saved" : "Added"} ${saved.name}. ${how}: ${auth}.`);
  resetForm();
  // Known at once, so the connection below has a card to report on.
  if (!old && !entries.has(saved.id)) {
    entries.set(saved.id, { server: saved, status: null, tools: null });
    order.push(saved.id);
    renderList();
  }
  // R-UI-9: an OAuth server is connected right away (unless it already is). Started
  // before anything else is awaited, while the click still allows a popup.
  if (saved.auth_type === "oauth") {
    let connected = false;
    if (old) {
      try {
        connected = !!(await api.status(saved.id)).has_token;
      } catch {
        connected = true; // not ours to connect (a shared slot): leave it
      }
    }
    if (!connected) oauth.connect(saved);
  }
  await loadAll();
}

// ---------------------------------------------------------------------------------
// Live updates

/** How long to wait before opening the event stream again, by attempt (seconds). */
const LIVE_RETRY_S = [1, 2, 5, 10, 30];

/**
 * `/v1/events`: "Live updates" says on only while the stream is open (issue 17). When
 * it drops the browser reconnects by itself, unless Latchkey answered with an error
 * (too many streams, unavailable): then this page tries again, a little later each
 * time. Once open again, everything is read afresh (events may have been missed).
 */
function liveUpdates() {
  const live = $("live");
  const set = (state, text) => {
    live.dataset.state = state;
    fill(live, text);
  };
  if (typeof EventSource !== "function") {
    set("off", "Live updates: not supported by this browser.");
    return;
  }
  let es = null;
  let attempt = 0;
  let timer = 0;
  let dropped = false;
  const open = () => {
    clearTimeout(timer);
    timer = 0;
    const mine = new EventSource("/v1/events");
    es = mine;
    mine.addEventListener("open", () => {
      if (es !== mine) return;
      attempt = 0;
      set("on", "Live updates: on");
      if (dropped) {
        dropped = false;
        loadAll();
      }
    });
    mine.addEventListener("error", () => {
      if (es !== mine) return;
      dropped = true;
      if (mine.readyState === EventSource.CLOSED) {
        const wait = LIVE_RETRY_S[Math.min(attempt, LIVE_RETRY_S.length - 1)];
        attempt += 1;
        set("off", `Live updates: off (the connection to Latchkey dropped; trying again in ${wait} s)`);
        timer = setTimeout(open, wait * 1000);
      } else {
        set("off", "Live updates: off (the connection to Latchkey dropped; reconnecting…)");
      }
    });
    mine.addEventListener("mcp.oauth_complete", (ev) => {
      let d;
      try {
        d = JSON.parse(ev.data);
      } catch {
        return;
      }
      // The popup's own result clears the connecting state; this keeps other tabs
      // (and a flow finished elsewhere) current.
      if (d && typeof d.server_id === "string" && !oauth.isConnecting(d.server_id)) {
        refreshOne(d.server_id);
      }
    });
  };
  // Back online: no need to wait for the next attempt.
  window.addEventListener("online", () => {
    if (es && es.readyState === EventSource.CLOSED) {
      es.close();
      open();
    }
  });
  open();
}

/** Who is using the page (session.js); false when the sign-in panel is shown instead. */
async function signedIn() {
  try {
    return (await session.start()) !== null;
  } catch (err) {
    alertUser(describeError(err), "load");
    return true;
  }
}

/** The static-header rows of the add form ([`headers.installForm`]). */
let headersForm = { sync: () => {} };

async function main() {
  if (!(await signedIn())) return;
  oauth.listen();
  headersForm = headers.installForm($("server-form"), field("auth_type"));
  $("server-form").addEventListener("submit", submitForm);
  $("f-cancel").addEventListener("click", () => {
    // Back to where editing began: the server's Edit button.
    const card = editing && entries.get(editing) ? entries.get(editing).card : null;
    resetForm();
    const edit = card && card.querySelector(".actions button[data-action='edit']");
    if (edit) edit.focus();
  });
  $("reload").addEventListener("click", () => {
    clearAlerts("load");
    loadAll();
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") loadAll();
  });
  resetForm();
  liveUpdates();
  loadAll();
  installKeys($("api-keys"));
}

main();

/** Unix seconds of an RFC 3339 timestamp from the API (R-API-7); null if absent. */
function seconds(rfc3339) {
  if (typeof rfc3339 !== "string") return null;
  const ms = Date.parse(rfc3339);
  return Number.isNaN(ms) ? null : ms / 1000;
}
