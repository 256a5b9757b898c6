// Notices and alerts (issue 17): stacked, never overwritten before they are read.
//
// A notice (`#notice`, announced politely) goes away by itself once it has been on
// screen for NOTICE_MS while the page was visible, or when dismissed. An alert
// (`#alert`, announced at once) stays until it is dismissed or its subject is dealt
// with (`clear(key)`: the user retries the thing it was about). A new message with
// the key of one already shown replaces it (it is the newer word on the same thing);
// otherwise it is added below the others. At most MAX of each are kept: the oldest
// goes first.

import { h } from "./dom.js";

/** How long a notice stays once visible. */
export const NOTICE_MS = 8000;
const MAX = 5;
/** How often the visible time of notices is counted. */
const TICK_MS = 250;

/** Every message on screen: { el, kind, key, shownMs } */
const shown = [];
let ticker = 0;
let lastTick = 0;

function box(kind) {
  return document.getElementById(kind === "alert" ? "alert" : "notice");
}

function sync(kind) {
  const b = box(kind);
  if (b) b.hidden = !shown.some((m) => m.kind === kind);
}

function drop(m) {
  const i = shown.indexOf(m);
  if (i < 0) return;
  shown.splice(i, 1);
  m.el.remove();
  sync(m.kind);
  if (!shown.some((x) => x.kind === "notice")) {
    clearInterval(ticker);
    ticker = 0;
  }
}

/** Counts the time notices were on a visible page; drops those seen long enough. */
function tick() {
  const now = Date.now();
  const elapsed = Math.max(0, now - lastTick);
  lastTick = now;
  if (document.visibilityState !== "visible") return;
  for (const m of shown.filter((x) => x.kind === "notice")) {
    m.shownMs += elapsed;
    if (m.shownMs >= NOTICE_MS) drop(m);
  }
}

function show(kind, text, key) {
  const b = box(kind);
  if (!b) return;
  const same = key ? shown.find((m) => m.kind === kind && m.key === key) : null;
  const m = { kind, key: key || null, shownMs: 0, el: null };
  m.el = h(
    "div",
    { class: `${kind}-item`, dataset: key ? { key } : {} },
    h("span", { class: `${kind}-text` }, text),
    h("button", { type: "button", class: "link", onclick: () => drop(m) }, "Dismiss"),
  );
  if (same) {
    same.el.replaceWith(m.el);
    shown[shown.indexOf(same)] = m;
  } else {
    b.append(m.el);
    shown.push(m);
    const mine = shown.filter((x) => x.kind === kind);
    if (mine.length > MAX) drop(mine[0]);
  }
  sync(kind);
  if (kind === "notice" && !ticker) {
    lastTick = Date.now();
    ticker = setInterval(tick, TICK_MS);
  }
}

/** A passing message; `key` names its subject (a server id, "form"…). */
export function notify(text, key) {
  show("notice", text, key);
}

/** A problem; stays until dismissed or cleared. */
export function alertUser(text, key) {
  show("alert", text, key);
}

/** Removes the alerts about `key` (every alert when `key` is not given). */
export function clearAlerts(key) {
  for (const m of shown.filter((x) => x.kind === "alert" && (key === undefined || x.key === key))) {
    drop(m);
  }
}
