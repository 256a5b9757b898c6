// A tool's call form, built from its input schema (issue 17): a text input per string,
// a number input per number or integer, a checkbox per boolean, a select per enum, a
// marker on each required argument, and a JSON textarea for anything else (objects,
// arrays, unions). "Edit as JSON" switches the whole form to one raw JSON textarea
// (also the only form of a schema that is not an object with properties) and back.
//
// Every text from the schema (names, titles, descriptions, enum values) is set as
// text, never parsed as markup.

import { fill, h } from "./dom.js";

const SCALARS = new Set(["string", "number", "integer", "boolean"]);

/** The single type of a property schema, or null (a union or no type). */
function typeOf(p) {
  if (!p || typeof p !== "object") return null;
  if (typeof p.type === "string") return p.type;
  // ["string", "null"] and the like: the one non-null type, when there is one.
  if (Array.isArray(p.type)) {
    const t = p.type.filter((x) => x !== "null");
    return t.length === 1 && typeof t[0] === "string" ? t[0] : null;
  }
  if (Array.isArray(p.enum) && p.enum.length) {
    const kinds = new Set(p.enum.map((v) => typeof v));
    return kinds.size === 1 ? [...kinds][0] : null;
  }
  return null;
}

/** How a property is edited: "text", "number", "integer", "boolean", "enum" or "json". */
function widgetOf(p) {
  const t = typeOf(p);
  if (p && typeof p === "object" && (p.anyOf || p.oneOf || p.allOf)) return "json";
  if (p && Array.isArray(p.enum) && p.enum.length && p.enum.every((v) => v !== null && typeof v !== "object")) {
    return "enum";
  }
  if (!SCALARS.has(t)) return "json";
  return t === "string" ? "text" : t;
}

/** The properties of an object schema, or null when the schema is not one. */
function propertiesOf(schema) {
  if (!schema || typeof schema !== "object" || Array.isArray(schema)) return null;
  if (schema.type !== undefined && schema.type !== "object") return null;
  if (schema.anyOf || schema.oneOf || schema.allOf) return null;
  const props = schema.properties;
  if (props === undefined) return [];
  if (!props || typeof props !== "object" || Array.isArray(props)) return null;
  return Object.entries(props);
}

/** One argument's input: `{row, read(): {ok, value?, omit?, error?}, write(value)}`. */
function argumentField(base, j, name, p, required) {
  const id = `${base}-arg-${j}`;
  const kind = widgetOf(p);
  const title = p && typeof p.title === "string" && p.title ? p.title : null;
  const help = p && typeof p.description === "string" && p.description ? p.description : null;
  const helpId = help ? `${id}-help` : null;
  const describedBy = helpId ? { "aria-describedby": helpId } : {};
  let input;
  let read;
  let write;
  if (kind === "boolean") {
    input = h("input", { id, type: "checkbox", name, ...describedBy });
    const dflt = p && p.default === true;
    input.checked = dflt;
    read = () => {
      // An optional flag left at false is sent only when the server's default is true.
      if (!input.checked && !required && !dflt) return { ok: true, omit: true };
      return { ok: true, value: input.checked };
    };
    write = (v) => (input.checked = v === true);
  } else if (kind === "enum") {
    const values = p.enum;
    const options = [];
    if (!required) options.push(h("option", { value: "" }, "(not set)"));
    values.forEach((v, k) => options.push(h("option", { value: String(k) }, String(v))));
    input = h("select", { id, name, required, ...describedBy }, options);
    const dflt = values.findIndex((v) => v === p.default);
    if (dflt >= 0) input.value = String(dflt);
    read = () => {
      if (input.value === "") return { ok: true, omit: true };
      return { ok: true, value: values[Number(input.value)] };
    };
    write = (v) => {
      const k = values.findIndex((x) => x === v);
      input.value = k >= 0 ? String(k) : required ? "0" : "";
    };
  } else if (kind === "number" || kind === "integer") {
    input = h("input", {
      id,
      name,
      type: "number",
      step: kind === "integer" ? "1" : "any",
      min: typeof p.minimum === "number" ? p.minimum : null,
      max: typeof p.maximum === "number" ? p.maximum : null,
      required,
      inputmode: kind === "integer" ? "numeric" : "decimal",
      ...describedBy,
    });
    if (typeof p.default === "number") input.value = String(p.default);
    read = () => {
      const raw = input.value.trim();
      if (raw === "") {
        if (input.validity && input.validity.badInput) return { ok: false, error: "not a number" };
        return required ? { ok: false, error: "a number is required" } : { ok: true, omit: true };
      }
      const n = Number(raw);
      if (!Number.isFinite(n)) return { ok: false, error: "not a number" };
      if (kind === "integer" && !Number.isInteger(n)) return { ok: false, error: "must be a whole number" };
      return { ok: true, value: n };
    };
    write = (v) => (input.value = typeof v === "number" ? String(v) : "");
  } else if (kind === "text") {
    input = h("input", {
      id,
      name,
      type: "text",
      required,
      autocomplete: "off",
      spellcheck: "false",
      maxlength: typeof p.maxLength === "number" ? p.maxLength : null,
      ...describedBy,
    });
    if (typeof p.default === "string") input.value = p.default;
    read = () => {
      // A required string may be empty; an optional one left empty is not sent.
      if (input.value === "" && !required) return { ok: true, omit: true };
      return { ok: true, value: input.value };
    };
    write = (v) => (input.value = typeof v === "string" ? v : v === undefined ? "" : String(v));
  } else {
    input = h("textarea", { id, name, rows: 3, spellcheck: "false", class: "mono", required, ...describedBy });
    if (p && p.default !== undefined) input.value = JSON.stringify(p.default);
    read = () => {
      const raw = input.value.trim();
      if (raw === "") {
        return required ? { ok: false, error: "a JSON value is required" } : { ok: true, omit: true };
      }
      try {
        return { ok: true, value: JSON.parse(raw) };
      } catch (err) {
        return { ok: false, error: `not valid JSON (${err.message})` };
      }
    };
    write = (v) => (input.value = v === undefined ? "" : JSON.stringify(v));
  }
  const label = h(
    "label",
    { for: id, class: kind === "boolean" ? "check" : null },
    kind === "boolean" ? input : null,
    h("span", { class: "mono" }, name),
    title && title !== name ? ` (${title})` : null,
    kind === "json" ? h("span", { class: "muted" }, " (JSON)") : null,
    required ? h("span", { class: "required", title: "required" }, " *", h("span", { class: "sr" }, " (required)")) : null,
  );
  const row = h(
    "div",
    { class: "field", dataset: { arg: name, widget: kind } },
    label,
    kind === "boolean" ? null : input,
    help ? h("p", { class: "help", id: helpId }, help) : null,
  );
  return { name, row, read, write };
}

/**
 * The form of `tool` of `server`: `call(args)` sends it (resolves with the result,
 * rejects with an error shown by `describe(err)`); `failed(err)` is told of every
 * failure after it is shown.
 */
export function toolForm(base, tool, { call, describe, failed }) {
  const name = typeof tool.name === "string" ? tool.name : "";
  const schema = tool.inputSchema;
  const props = propertiesOf(schema);
  const required = new Set(
    schema && Array.isArray(schema.required) ? schema.required.filter((r) => typeof r === "string") : [],
  );
  // Required arguments first, in the order `required` lists them (property order may
  // not survive the trip through JSON maps), then the others as given.
  const rank = [...required];
  const ordered = props
    ? [...props].sort(([a], [b]) => {
        const ra = rank.indexOf(a);
        const rb = rank.indexOf(b);
        return (ra < 0 ? Infinity : ra) - (rb < 0 ? Infinity : rb);
      })
    : null;
  const fields = ordered ? ordered.map(([k, p], j) => argumentField(base, j, k, p, required.has(k))) : [];
  const formOnly = props !== null;

  const raw = h("textarea", { id: `${base}-args`, rows: 5, spellcheck: "false", class: "mono" });
  const rawRow = h("div", { class: "field raw-args", id: `${base}-raw` }, h("label", { for: raw.id }, "Arguments (JSON)"), raw);
  const fieldsBox = h(
    "div",
    { class: "args" },
    fields.length ? fields.map((f) => f.row) : h("p", { class: "muted" }, "This tool takes no arguments."),
  );
  const output = h("div", { class: "tool-output", role: "status", "aria-live": "polite", id: `${base}-out` });
  const problem = (text) => fill(output, h("p", { class: "status-error" }, text));

  /** The arguments from the fields: `{ok, value}`, or `{ok: false, error, value}` with what could be read. */
  const fromFields = () => {
    const out = {};
    const errors = [];
    for (const f of fields) {
      const r = f.read();
      if (!r.ok) errors.push(`${f.name}: ${r.error}`);
      else if (!r.omit) out[f.name] = r.value;
    }
    return errors.length ? { ok: false, error: errors.join("; "), value: out } : { ok: true, value: out };
  };
  const fromRaw = () => {
    let parsed;
    try {
      parsed = JSON.parse(raw.value.trim() || "{}");
    } catch (err) {
      return { ok: false, error: `The arguments are not valid JSON: ${err.message}` };
    }
    if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) {
      return { ok: false, error: "The arguments must be a JSON object." };
    }
    return { ok: true, value: parsed };
  };

  let rawMode = !formOnly;
  // Its label says what it switches to.
  const toggle = h("button", { type: "button", class: "link toggle-json", "aria-controls": rawRow.id });
  const setMode = (toRaw) => {
    rawMode = toRaw;
    fieldsBox.hidden = rawMode;
    rawRow.hidden = !rawMode;
    fill(toggle, rawMode ? "Edit as a form" : "Edit as JSON");
  };
  toggle.addEventListener("click", () => {
    if (!rawMode) {
      const r = fromFields();
      // Unfinished fields still carry over: what could be read, as JSON.
      raw.value = JSON.stringify(r.value, null, 2);
      if (!r.ok) problem(`Not carried over: ${r.error}`);
      else fill(output);
      setMode(true);
      raw.focus();
      return;
    }
    const r = fromRaw();
    if (!r.ok) {
      problem(r.error);
      return;
    }
    const unknown = Object.keys(r.value).filter((k) => !fields.some((f) => f.name === k));
    if (unknown.length) {
      problem(`These arguments have no field of their own; keep editing as JSON: ${unknown.join(", ")}`);
      return;
    }
    for (const f of fields) f.write(r.value[f.name]);
    fill(output);
    setMode(false);
  });
  if (formOnly) {
    raw.value = JSON.stringify(fromFields().value, null, 2);
  } else {
    raw.value = "{}";
  }
  setMode(rawMode);

  const button = h("button", { type: "submit" }, `Call ${name}`);
  return h(
    "form",
    {
      class: "tool-call",
      novalidate: true,
      "aria-label": `Call ${name}`,
      onsubmit: async (ev) => {
        ev.preventDefault();
        const r = rawMode ? fromRaw() : fromFields();
        if (!r.ok) {
          problem(rawMode ? r.error : `Please check the arguments: ${r.error}.`);
          return;
        }
        button.disabled = true;
        fill(output, h("p", { class: "muted" }, "Calling…"));
        try {
          fill(output, resultView(await call(r.value)));
        } catch (err) {
          problem(describe(err));
          failed(err);
        } finally {
          button.disabled = false;
        }
      },
    },
    fieldsBox,
    rawRow,
    h("div", { class: "actions" }, button, formOnly ? toggle : null),
    output,
  );
}

/** A tool's result: its text content, and the whole result as JSON. */
export function resultView(result) {
  const isError = !!(result && result.isError);
  const texts = Array.isArray(result && result.content)
    ? result.content.filter((c) => c && c.type === "text" && typeof c.text === "string").map((c) => c.text)
    : [];
  return [
    h(
      "p",
      { class: isError ? "status-error" : "status-ok", dataset: { role: "result-text" } },
      isError ? "The tool reported an error: " : "Result: ",
      texts.length ? texts.join("\n") : "(no text content)",
    ),
    h("details", {}, h("summary", {}, "Full result"), h("pre", { class: "mono" }, JSON.stringify(result, null, 2))),
  ];
}
