// Building the page without markup strings: every text is set as text, never parsed,
// so nothing from the API or an upstream server can become markup.

/** An element with attributes (or properties, event listeners) and children. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") {
      el.addEventListener(k.slice(2), v);
    } else if (k === "class") {
      el.className = v;
    } else if (k === "dataset") {
      Object.assign(el.dataset, v);
    } else if (typeof v === "boolean") {
      el.toggleAttribute(k, v);
    } else {
      el.setAttribute(k, String(v));
    }
  }
  add(el, children);
  return el;
}

/** Appends children (nodes or texts; null and false are skipped). */
export function add(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  return add(el, children);
}

/** A short relative time ("in 59 min", "3 h ago") for Unix seconds. */
export function relative(seconds, now = Date.now() / 1000) {
  const d = Math.round(seconds - now);
  const a = Math.abs(d);
  let text;
  if (a < 60) text = `${a} s`;
  else if (a < 3600) text = `${Math.round(a / 60)} min`;
  else if (a < 86400) text = `${Math.round(a / 3600)} h`;
  else text = `${Math.round(a / 86400)} d`;
  return d >= 0 ? `in ${text}` : `${text} ago`;
}

/** A date and time for Unix seconds, in the reader's locale. */
export function when(seconds) {
  return new Date(seconds * 1000).toLocaleString();
}
