// Static-header servers (auth type "headers", issue 17): servers that take an API key
// or another fixed header instead of OAuth.
//
// * In the add form: when "Static headers" is chosen, rows of a header name and
//   (optionally) its value, in a password input. The values go in the create request's
//   body once and the inputs are emptied; the page keeps none.
// * On a headers server's card: each name as "set" or "not set" for your slot (the API
//   never returns a value), a "Set headers" form with one password input per name,
//   and "Clear headers", which asks first.

import { h, fill } from "./dom.js";

/** At most this many names (the API's limit). */
const MAX_NAMES = 8;

const e = encodeURIComponent;

async function send(method, path, body) {
  const init = { method, headers: { accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  return { ok: r.ok, status: r.status, data };
}

// ---------------------------------------------------------------------------------
// The add form

let rows = null;

function row(i) {
  const nameId = `f-header-name-${i}`;
  const valueId = `f-header-value-${i}`;
  return h(
    "div",
    { class: "header-row", dataset: { row: String(i) } },
    h(
      "div",
      {},
      h("label", { for: nameId }, `Header name ${i + 1}`),
      h("input", { id: nameId, class: "header-name", maxlength: "128", autocomplete: "off", placeholder: "X-Api-Key" }),
    ),
    h(
      "div",
      {},
      h("label", { for: valueId }, `Value ${i + 1}`),
      h("input", { id: valueId, class: "header-value", type: "password", maxlength: "8192", autocomplete: "new-password" }),
    ),
  );
}

/**
 * Adds the header rows to the form, after the authentication choice, shown only while
 * "Static headers" is chosen.
 */
export function installForm(form, authSelect) {
  rows = h("div", { class: "header-rows" }, row(0));
  const more = h(
    "button",
    {
      type: "button",
      class: "secondary",
      id: "f-header-more",
      onclick: () => {
        const n = rows.children.length;
        if (n < MAX_NAMES) rows.append(row(n));
        more.hidden = rows.children.length >= MAX_NAMES;
      },
    },
    "Add another header",
  );
  const box = h(
    "fieldset",
    { class: "field headers", id: "f-headers", hidden: true },
    h("legend", {}, "Static headers"),
    h(
      "p",
      { class: "help" },
      "The headers the server takes (an API key, for instance). Values are optional here: each user can set their own later. They are stored encrypted and never shown again.",
    ),
    rows,
    more,
  );
  authSelect.closest(".field").after(box);
  const sync = () => {
    box.hidden = authSelect.value !== "headers";
  };
  authSelect.addEventListener("change", sync);
  form.addEventListener("reset", () => {
    // After the browser resets the inputs: back to one empty row.
    setTimeout(() => {
      fill(rows, row(0));
      more.hidden = false;
      sync();
    });
  });
  return { sync };
}

/** Shows the rows for an edit: the server's names, no values. */
export function editNames(server) {
  if (!rows) return;
  const names = Array.isArray(server.header_names) ? server.header_names : [];
  fill(rows, (names.length ? names : [""]).map((_, i) => row(i)));
  names.forEach((n, i) => {
    rows.children[i].querySelector(".header-name").value = n;
  });
}

/**
 * Adds `header_names` (and, when creating, the `header_values` typed) to a server
 * body when "Static headers" is chosen; empties the value inputs.
 */
export function addToBody(body, old) {
  if (!rows || body.auth_type !== "headers") return;
  const names = [];
  const values = {};
  for (const r of rows.children) {
    const name = r.querySelector(".header-name").value.trim();
    const input = r.querySelector(".header-value");
    const value = input.value;
    input.value = "";
    if (!name) continue;
    names.push(name);
    if (value && !old) values[name] = value;
  }
  const same =
    old && Array.isArray(old.header_names) && JSON.stringify(old.header_names) === JSON.stringify(names);
  if (!same && names.length) body.header_names = names;
  if (Object.keys(values).length) body.header_values = values;
}

// ---------------------------------------------------------------------------------
// A server's card

/** Whether every header of a headers server has a value in your slot. */
export function allSet(server) {
  const hs = server.headers;
  return !!hs && Object.keys(hs).length > 0 && Object.values(hs).every((v) => v === "set");
}

/** The card's status line for a headers server whose values are missing. */
export function missingText(server) {
  const hs = server.headers || {};
  const missing = Object.keys(hs).filter((k) => hs[k] !== "set");
  return `Needs header values: ${missing.join(", ") || "none configured"} not set.`;
}

/**
 * The headers section of a card: names with set / not set, the "Set headers" form
 * and "Clear headers". `done(message, isError)` reports and refreshes the card.
 */
export function cardSection(server, { done, describe }) {
  const hs = server.headers || {};
  const names = Object.keys(hs);
  const base = `headers-${server.id}`;
  const list = h(
    "ul",
    { class: "header-states", dataset: { role: "headers" } },
    names.map((n) =>
      h("li", { dataset: { header: n, state: hs[n] } }, h("span", { class: "mono" }, n), `: ${hs[n]}`),
    ),
  );
  const inputs = names.map((n, i) => {
    const id = `${base}-v${i}`;
    return {
      name: n,
      el: h("input", { id, type: "password", maxlength: "8192", autocomplete: "new-password", required: true }),
      label: h("label", { for: id }, `${n}`),
    };
  });
  const form = h(
    "form",
    {
      class: "set-headers",
      novalidate: true,
      onsubmit: async (ev) => {
        ev.preventDefault();
        const values = {};
        for (const i of inputs) values[i.name] = i.el.value;
        // The values leave the page in this request and are kept nowhere.
        for (const i of inputs) i.el.value = "";
        if (Object.values(values).some((v) => !v.trim())) {
          done(`${server.name}: give a value for every header.`, true);
          return;
        }
        const r = await send("PUT", `/v1/servers/${e(server.id)}/headers`, { values }).catch(() => null);
        if (r && r.ok) done(`${server.name}: headers set.`, false);
        else done(`${server.name}: ${r ? describe(errorOf(r)) : "Latchkey cannot be reached."}`, true);
      },
    },
    inputs.map((i) => h("div", { class: "field" }, i.label, i.el)),
    h("div", { class: "actions" }, h("button", { type: "submit", "aria-label": `Save headers of ${server.name}` }, "Save headers")),
  );
  const panel = h(
    "details",
    { class: "headers-form" },
    h("summary", {}, "Set headers"),
    h("p", { class: "help" }, "Your values are stored encrypted and sent only to this server's URL; they are never shown again."),
    form,
  );
  const clear = h(
    "button",
    {
      type: "button",
      class: "danger",
      "aria-label": `Clear headers of ${server.name}`,
      onclick: async () => {
        if (!window.confirm(`Clear your header values of ${server.name}? Calls to it fail until they are set again.`)) return;
        const r = await send("DELETE", `/v1/servers/${e(server.id)}/headers`).catch(() => null);
        if (r && r.ok) done(`${server.name}: header values cleared.`, false);
        else done(`${server.name}: ${r ? describe(errorOf(r)) : "Latchkey cannot be reached."}`, true);
      },
    },
    "Clear headers",
  );
  return h(
    "div",
    { class: "headers-section" },
    list,
    panel,
    names.some((n) => hs[n] === "set") ? h("div", { class: "actions" }, clear) : null,
  );
}

/** An ApiError-like object from an answer, for `describeError`. */
function errorOf(r) {
  const d = r.data || {};
  return {
    status: r.status,
    code: typeof d.code === "string" ? d.code : null,
    message: typeof d.message === "string" ? d.message : `HTTP ${r.status}`,
    fields: Array.isArray(d.fields) ? d.fields : [],
    scopes: [],
  };
}
