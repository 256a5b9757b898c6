// The "API keys" section (issue 19): the keys agents and MCP clients use to act as the
// person who created them. Lists them (name, prefix, created, last used, expiry,
// servers: never a key), creates one (a name, a lifetime, optionally the servers it is
// restricted to) and revokes one after a confirmation.
//
// A new key is the one secret this page ever receives: it is shown once, in a
// read-only field with a Copy button, and dropped when the user dismisses it, when
// another key is created, or with the page. It is never kept anywhere else (no web
// storage, no variable outside that field).

import { api } from "./api.js";
import { fill, h, relative, when } from "./dom.js";
import { describeError } from "./messages.js";
import { alertUser, clearAlerts, notify } from "./notices.js";

/** Lifetimes offered, in seconds ("" : Latchkey's default). */
const LIFETIMES = [
  ["", "Latchkey's default"],
  [String(3600), "1 hour"],
  [String(86400), "1 day"],
  [String(7 * 86400), "7 days"],
  [String(30 * 86400), "30 days"],
  [String(90 * 86400), "90 days"],
];

/** The section's parts, once installed. */
let ui = null;
/** id -> name of the user's servers, for the list and the create form. */
let serverNames = new Map();

/** Builds the section in `panel` (an empty `<section>`) and loads the keys. */
export function installKeys(panel) {
  if (!panel) return;
  const list = h("ul", { class: "keys", id: "keys-list", "aria-labelledby": "keys-title" });
  const empty = h("p", { class: "muted", id: "keys-empty", hidden: true }, "No API keys yet.");
  const once = h("div", { class: "key-once", id: "key-once", hidden: true });
  const name = h("input", { id: "k-name", name: "name", required: true, maxlength: 100, autocomplete: "off" });
  const lifetime = h(
    "select",
    { id: "k-lifetime", name: "lifetime", "aria-describedby": "k-lifetime-help" },
    LIFETIMES.map(([v, label]) => h("option", { value: v }, label)),
  );
  const servers = h("div", { class: "key-servers", id: "k-servers" });
  const submit = h("button", { type: "submit", id: "k-submit" }, "Create key");
  const form = h(
    "form",
    { id: "key-form", novalidate: true },
    h(
      "div",
      { class: "field" },
      h("label", { for: "k-name" }, "Key name"),
      name,
    ),
    h(
      "div",
      { class: "field" },
      h("label", { for: "k-lifetime" }, "Lifetime"),
      lifetime,
      h(
        "p",
        { class: "help", id: "k-lifetime-help" },
        "Latchkey's default is 30 days (7 for an admin's key); it refuses more than its maximum.",
      ),
    ),
    h(
      "fieldset",
      { class: "field" },
      h("legend", {}, "Restrict to servers (optional)"),
      h("p", { class: "help" }, "None chosen: the key works with every server you can use."),
      servers,
    ),
    h("div", { class: "actions" }, submit),
  );
  fill(
    panel,
    h(
      "div",
      { class: "panel-head" },
      h("h2", { id: "keys-title" }, "API keys"),
      // Not "Refresh": that names the servers' button.
      h(
        "button",
        { type: "button", class: "secondary", id: "keys-reload", "aria-label": "Reload the API keys", onclick: () => loadKeys() },
        "Reload",
      ),
    ),
    h(
      "p",
      { class: "help" },
      "An API key lets an agent or an MCP client use Latchkey as you (send it as ",
      h("span", { class: "mono" }, "Authorization: Token …"),
      "). It is shown once, when it is created.",
    ),
    empty,
    list,
    once,
    h("h3", {}, "Create a key"),
    form,
  );
  ui = { panel, list, empty, once, form, name, lifetime, servers, submit };
  form.addEventListener("submit", create);
  loadKeys();
}

/** The servers a key is restricted to, as names; empty when it is not restricted. */
function restrictedTo(key) {
  if (!Array.isArray(key.servers)) return [];
  return key.servers.map((s) => {
    if (s && typeof s === "object") return s.name || serverNames.get(s.id) || s.id;
    return serverNames.get(s) || s;
  });
}

/** Reads the servers (for names and the form) and the keys, then redraws the list. */
export async function loadKeys() {
  if (!ui) return;
  ui.panel.setAttribute("aria-busy", "true");
  try {
    const servers = await api.servers();
    serverNames = new Map(servers.map((s) => [s.id, s.name]));
    renderServerChoices(servers);
  } catch {
    // The servers section reports this; the keys may still load.
  }
  let keys;
  try {
    keys = await api.apiKeys();
  } catch (err) {
    ui.panel.setAttribute("aria-busy", "false");
    alertUser(`The API keys could not be loaded. ${describeError(err)}`, "keys-load");
    return;
  }
  clearAlerts("keys-load");
  ui.panel.setAttribute("aria-busy", "false");
  fill(ui.list, keys.map(keyItem));
  ui.empty.hidden = keys.length > 0;
}

/** The checkboxes of the create form, keeping what was ticked. */
function renderServerChoices(servers) {
  const ticked = new Set([...ui.servers.querySelectorAll("input:checked")].map((i) => i.value));
  if (servers.length === 0) {
    fill(ui.servers, h("p", { class: "muted" }, "No servers yet."));
    return;
  }
  fill(
    ui.servers,
    servers.map((s) =>
      h(
        "label",
        { class: "check" },
        h("input", { type: "checkbox", name: "servers", value: s.id, checked: ticked.has(s.id) }),
        ` ${s.name}`,
      ),
    ),
  );
}

/** "just now" within a minute (either side: the clocks of page and server differ). */
function since(seconds, now) {
  return Math.abs(seconds - now) < 60 ? "just now" : relative(seconds, now);
}

function keyItem(k) {
  const now = Date.now() / 1000;
  const expired = typeof k.expires_at === "number" && k.expires_at <= now;
  const only = restrictedTo(k);
  const titleId = `key-${k.id}-name`;
  return h(
    "li",
    { class: "card key", dataset: { keyId: k.id, status: expired ? "error" : "connected" }, "aria-labelledby": titleId },
    h("div", { class: "card-head" }, h("h3", { id: titleId }, k.name)),
    h(
      "p",
      { class: "details" },
      h("span", { dataset: { role: "prefix" } }, "Prefix: ", h("span", { class: "mono" }, k.prefix ? `${k.prefix}…` : "not shown")),
      h("span", { title: when(k.created_at), dataset: { role: "created" } }, `Created ${since(k.created_at, now)}`),
      h(
        "span",
        { dataset: { role: "last-used" }, title: typeof k.last_used_at === "number" ? when(k.last_used_at) : null },
        typeof k.last_used_at === "number" ? `Last used ${since(k.last_used_at, now)}` : "Never used",
      ),
      h(
        "span",
        { class: expired ? "warn" : null, title: when(k.expires_at), dataset: { role: "expires" } },
        expired ? `Expired ${relative(k.expires_at, now)}` : `Expires ${relative(k.expires_at, now)}`,
      ),
      h("span", { dataset: { role: "servers" } }, only.length ? `Servers: ${only.join(", ")}` : "Servers: all"),
    ),
    h(
      "div",
      { class: "actions" },
      h(
        "button",
        { type: "button", class: "danger", "aria-label": `Revoke ${k.name}`, onclick: () => revoke(k) },
        "Revoke",
      ),
    ),
  );
}

async function create(ev) {
  ev.preventDefault();
  clearAlerts("keys");
  const name = ui.name.value.trim();
  if (!name) {
    alertUser("A key needs a name (what or who will use it).", "keys");
    ui.name.focus();
    return;
  }
  const body = { name };
  if (ui.lifetime.value) body.expires_in = Number(ui.lifetime.value);
  const servers = [...ui.servers.querySelectorAll("input:checked")].map((i) => i.value);
  // Sent only when chosen: no restriction is the default.
  if (servers.length) body.servers = servers;
  hideKey();
  ui.submit.disabled = true;
  ui.form.setAttribute("aria-busy", "true");
  let created;
  try {
    created = await api.createApiKey(body);
  } catch (err) {
    alertUser(`The key could not be created. ${describeError(err)}`, "keys");
    return;
  } finally {
    ui.submit.disabled = false;
    ui.form.setAttribute("aria-busy", "false");
  }
  ui.form.reset();
  for (const i of ui.servers.querySelectorAll("input")) i.checked = false;
  showKey(created);
  await loadKeys();
}

/** The new key, once: a read-only field to copy it from, and what to do with it. */
function showKey(created) {
  const field = h("input", {
    id: "new-key",
    class: "mono",
    readonly: true,
    autocomplete: "off",
    spellcheck: "false",
    "aria-describedby": "new-key-note",
  });
  field.value = typeof created.key === "string" ? created.key : "";
  const copied = h("span", { class: "muted", role: "status", "aria-live": "polite" });
  const copy = async () => {
    field.select();
    try {
      await navigator.clipboard.writeText(field.value);
      fill(copied, "Copied.");
    } catch {
      // No clipboard access (an insecure origin, a refused permission): the text is
      // selected for the user to copy.
      fill(copied, "Selected: copy it with Ctrl+C or ⌘C.");
    }
  };
  fill(
    ui.once,
    h("h3", {}, `New key: ${created.name}`),
    h("label", { for: "new-key" }, "API key"),
    field,
    h(
      "p",
      { class: "warn", id: "new-key-note" },
      "This key is shown only now. Copy it and store it where the client reads it: Latchkey keeps only its hash and cannot show it again.",
    ),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "button", onclick: copy }, "Copy"),
      h("button", { type: "button", class: "secondary", onclick: hideKey }, "Done"),
      copied,
    ),
  );
  ui.once.hidden = false;
  ui.once.dataset.keyId = created.id;
  field.focus();
  field.select();
  notify(`Created the API key ${created.name}.`, "keys");
}

/** Drops the shown key from the page. */
function hideKey() {
  const field = ui.once.querySelector("input");
  if (field) field.value = "";
  fill(ui.once);
  ui.once.hidden = true;
  delete ui.once.dataset.keyId;
}

async function revoke(k) {
  if (!window.confirm(`Revoke the API key ${k.name}? Agents and clients using it stop working at once.`)) return;
  clearAlerts("keys");
  try {
    await api.deleteApiKey(k.id);
    // The key still shown, if it is this one, is of no use any more.
    if (ui.once.dataset.keyId === k.id) hideKey();
    notify(`Revoked the API key ${k.name}.`, "keys");
  } catch (err) {
    alertUser(`${k.name}: ${describeError(err)}`, "keys");
  }
  await loadKeys();
}
