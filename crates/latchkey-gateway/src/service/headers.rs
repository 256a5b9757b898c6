//! Static-header servers (auth type `headers`, issue 17): the rules: MCP servers that take an API
//! key or another fixed header instead of OAuth.
//!
//! A server names its headers (`header_names`: 1 to [`MAX_NAMES`] RFC 9110 tokens,
//! unique case-insensitively, never a transport or hop-by-hop header). Each slot (the
//! caller's own, or the shared one set by an admin, as `token_scope` says) holds one
//! value per name, sealed by the vault and bound to the slot and to the URL they were set
//! for. Values are never returned by any endpoint: the API says `set` or `not set` per
//! name.
//!
//! The rules here:
//! * the names and values a request may carry ([`read_names`], [`read_values`]);
//! * the values a call sends ([`for_call`]): only to the URL they were set for (else
//!   [`ApiError::HeadersForOtherUrl`], nothing sent), every configured name required
//!   ([`ApiError::HeadersNotSet`]), opened once and kept in memory per slot
//!   ([`crate::header_cache::HeaderCache`]), dropped on this instance's changes and announced to the others
//!   ([`crate::cluster`]);
//! * setting and clearing a slot's values ([`deposit`], [`clear`]; the handlers are
//!   [`crate::headers`]), audited as
//!   `headers.set` and `headers.cleared` (ids and names only).
//!
//! An upstream 401 or 403 to a headers server is [`ApiError::HeadersRefused`]: no
//! refresh exists, the user sets new values.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderValue;
use latchkey_core::Secret;
use latchkey_guard::Principal;
use latchkey_vault::store::{AuditEvent, HeaderValuesRow, ServerRow, Slot, new_id};
use serde_json::Value;

use crate::cluster::Change;
use crate::error::ApiError;
use crate::fields::Fields;
use crate::header_cache::{Opened, not_set};
use crate::state::AppState;

/// At most this many header names per server.
pub const MAX_NAMES: usize = 8;
/// The longest header name and value taken.
const MAX_NAME_LEN: usize = 128;
const MAX_VALUE_LEN: usize = 8192;

/// Names a server may not take: the transport's own headers (the proxy relays or sets
/// them) and hop-by-hop headers. `Authorization` and `Cookie` are allowed.
const REFUSED_NAMES: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "last-event-id",
];

/// Whether `name` is an RFC 9110 token (`tchar`s only).
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Why `name` cannot be a configured header, if it cannot.
fn name_problem(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    if !is_token(name) || name.len() > MAX_NAME_LEN {
        Some(format!(
            "{name:?} is not a header name (letters, digits and !#$%&'*+-.^_`|~, at most {MAX_NAME_LEN})"
        ))
    } else if REFUSED_NAMES.contains(&lower.as_str()) || lower.starts_with("mcp-param-") {
        Some(format!(
            "{name} is a transport header Latchkey sets itself; it cannot be configured"
        ))
    } else {
        None
    }
}

/// `header_names` of a server body: `None` when absent or invalid (reported).
pub fn read_names(f: &mut Fields, field: &str) -> Option<Vec<String>> {
    let raw = f.value(field)?.clone();
    let Value::Array(items) = raw else {
        f.invalid(field, "must be an array of header names");
        return None;
    };
    if items.is_empty() || items.len() > MAX_NAMES {
        f.invalid(field, format!("give 1 to {MAX_NAMES} header names"));
        return None;
    }
    let mut names: Vec<String> = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let path = format!("{field}[{i}]");
        let Some(name) = item.as_str().map(str::trim) else {
            f.invalid(&path, "must be a string");
            ok = false;
            continue;
        };
        if let Some(why) = name_problem(name) {
            f.invalid(&path, why);
            ok = false;
        } else if names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            f.invalid(
                &path,
                format!("{name} is named twice (names are case-insensitive)"),
            );
            ok = false;
        } else {
            names.push(name.to_owned());
        }
    }
    ok.then_some(names)
}

/// The configured spelling of `given` among `names`, compared case-insensitively.
fn configured<'a>(names: &'a [String], given: &str) -> Option<&'a str> {
    names
        .iter()
        .find(|n| n.eq_ignore_ascii_case(given))
        .map(String::as_str)
}

/// The values object at `field` (`{"X-Api-Key": "…"}`) for a server with `names`:
/// keyed by the configured spelling; an unknown name, a bad value or (when `all`) a
/// missing name is reported under `field.Name`. `None` when absent or invalid.
pub fn read_values(
    f: &mut Fields,
    field: &str,
    names: &[String],
    all: bool,
) -> Option<BTreeMap<String, Secret>> {
    let raw = f.value(field)?.clone();
    let Value::Object(given) = raw else {
        f.invalid(field, "must be an object of header names and values");
        return None;
    };
    let mut values = BTreeMap::new();
    let mut seen: Vec<String> = Vec::new();
    let mut ok = true;
    for (name, value) in given {
        let path = format!("{field}.{name}");
        let Some(known) = configured(names, &name) else {
            f.invalid(
                &path,
                format!(
                    "not a header of this server (its headers: {})",
                    names.join(", ")
                ),
            );
            ok = false;
            continue;
        };
        seen.push(known.to_owned());
        match value {
            Value::String(v)
                if !v.trim().is_empty()
                    && v.len() <= MAX_VALUE_LEN
                    && HeaderValue::from_str(&v).is_ok() =>
            {
                if values.insert(known.to_owned(), Secret::new(v)).is_some() {
                    f.invalid(&path, "given twice (names are case-insensitive)");
                    ok = false;
                }
            }
            Value::String(_) => {
                f.invalid(
                    &path,
                    format!("must be 1 to {MAX_VALUE_LEN} visible characters, without line breaks"),
                );
                ok = false;
            }
            _ => {
                f.invalid(&path, "must be a string");
                ok = false;
            }
        }
    }
    if all {
        for n in names {
            if !seen.contains(n) {
                f.invalid(
                    &format!("{field}.{n}"),
                    "required: every header of the server",
                );
                ok = false;
            }
        }
    }
    ok.then_some(values)
}

/// The typed error of an upstream refusing the values it was sent.
pub fn refused(server: &ServerRow, status: u16) -> ApiError {
    tracing::info!(event = "headers.refused", server_id = %server.id, status);
    ApiError::HeadersRefused {
        server_id: server.id.clone(),
        server_name: server.name.clone(),
        status,
    }
}

/// The values `slot` sends to `server`: from memory, else read and opened once. Only
/// for the URL they were set for; every configured name must have one.
pub async fn for_call(
    s: &AppState,
    server: &ServerRow,
    slot: &Slot,
) -> Result<Arc<Opened>, ApiError> {
    let opened = match s.header_values.get(slot) {
        Some(o) => o,
        None => {
            let epoch = s.header_values.epoch();
            let Some(row) = s.store.get_header_values(slot).await? else {
                let first = server.header_names.first().map_or("its headers", |n| n);
                return Err(not_set(server, first));
            };
            let values = latchkey_vault::headers::open_values(&s.keyring, &row).map_err(|e| {
                tracing::warn!(event = "headers.unreadable", server_id = %server.id, error = %e);
                match e {
                    latchkey_vault::KeyringError::Undecryptable => not_set(
                        server,
                        server.header_names.first().map_or("its headers", |n| n),
                    ),
                    other => ApiError::from(other),
                }
            })?;
            let opened = Arc::new(Opened::new(row.url.clone(), values));
            s.header_values.put(slot, opened.clone(), epoch);
            opened
        }
    };
    if opened.url != server.url {
        // Set for another URL (a change the purge has not reached yet): sent nowhere.
        tracing::warn!(
            event = "headers.url_mismatch",
            server_id = %server.id,
            "header values were set for another URL than the server's; not sent"
        );
        s.header_values.forget(slot);
        return Err(ApiError::HeadersForOtherUrl {
            server_id: server.id.clone(),
            server_name: server.name.clone(),
        });
    }
    if let Some(missing) = server
        .header_names
        .iter()
        .find(|n| !opened.values.contains_key(*n))
    {
        return Err(not_set(server, missing));
    }
    Ok(opened)
}

/// `{"Name": "set" | "not set"}` for the caller's slot of a headers server (what is
/// stored, never a value); `None` for other servers.
pub async fn status(
    s: &AppState,
    p: &Principal,
    server: &ServerRow,
) -> Result<Option<BTreeMap<String, &'static str>>, ApiError> {
    if server.auth_type != "headers" {
        return Ok(None);
    }
    let slot = super::call_slot(p, server);
    let row = s.store.get_header_values(&slot).await?;
    let set: Vec<String> = match row {
        Some(r) if r.url == server.url => r.names,
        _ => Vec::new(),
    };
    Ok(Some(
        server
            .header_names
            .iter()
            .map(|n| {
                let state = if set.iter().any(|k| k == n) {
                    "set"
                } else {
                    "not set"
                };
                (n.clone(), state)
            })
            .collect(),
    ))
}

/// The slot the caller writes for `server`: their own, or the shared one (admins only).
pub fn writable_slot(p: &Principal, server: &ServerRow) -> Result<Slot, ApiError> {
    if server.token_scope == "shared" && !p.is_admin() {
        return Err(ApiError::Forbidden);
    }
    Ok(super::call_slot(p, server))
}

pub async fn audit(s: &AppState, p: &Principal, action: &str, slot: &Slot, names: &[String]) {
    let e = AuditEvent {
        tenant: slot.tenant.clone(),
        actor: p.subject.as_str().to_owned(),
        action: action.into(),
        server: Some(slot.server.clone()),
        subject: slot.subject.clone(),
        detail: (!names.is_empty()).then(|| names.join(", ")),
        at: s.now(),
    };
    if let Err(err) = s.store.audit(&e).await {
        tracing::warn!(event = "audit.failed", action, error = %err);
    }
}

/// Seals `values` into the caller's slot of `server` (replacing what it held), then
/// forgets the slot's cached values here and on every instance.
pub async fn deposit(
    s: &AppState,
    p: &Principal,
    server: &ServerRow,
    values: &BTreeMap<String, Secret>,
) -> Result<(), ApiError> {
    let slot = writable_slot(p, server)?;
    let id = new_id();
    let sealed = latchkey_vault::headers::seal_values(&s.keyring, &id, &slot, &server.url, values)?;
    let now = s.now();
    let names: Vec<String> = values.keys().cloned().collect();
    let row = HeaderValuesRow {
        id,
        slot: slot.clone(),
        url: server.url.clone(),
        names: names.clone(),
        values: sealed,
        created_at: now,
        updated_at: now,
    };
    let stored = s.store.put_header_values(&row).await;
    s.announce(Change::slot(&slot)).await;
    stored?;
    tracing::info!(event = "headers.set", server_id = %server.id, names = %names.join(", "));
    audit(s, p, "headers.set", &slot, &names).await;
    Ok(())
}

/// The server `id` of the caller's tenant, which must take static headers.
pub async fn headers_server(s: &AppState, p: &Principal, id: &str) -> Result<ServerRow, ApiError> {
    let server = s.server(p, id).await?;
    if server.auth_type != "headers" {
        return Err(ApiError::BadRequest(vec![crate::error::FieldError {
            field: String::new(),
            message: format!(
                "{} does not take static headers (its auth type is {})",
                server.name, server.auth_type
            ),
        }]));
    }
    Ok(server)
}

/// Clears the caller's slot of `server` (the shared one: admins only), here and on
/// every instance, and audits it.
pub async fn clear(s: &AppState, p: &Principal, server: &ServerRow) -> Result<(), ApiError> {
    let slot = writable_slot(p, server)?;
    let deleted = s.store.delete_header_values(&slot).await;
    s.announce(Change::slot(&slot)).await;
    deleted?;
    audit(s, p, "headers.cleared", &slot, &server.header_names).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(body: &str) -> (Option<Vec<String>>, Vec<String>) {
        let mut f = Fields::parse(body.as_bytes(), &["header_names"]).unwrap();
        let n = read_names(&mut f, "header_names");
        let errors = match f.finish() {
            Ok(()) => Vec::new(),
            Err(ApiError::BadRequest(e)) => e.into_iter().map(|e| e.field).collect(),
            Err(e) => panic!("{e}"),
        };
        (n, errors)
    }

    #[test]
    fn names_are_tokens_unique_and_not_transport_headers() {
        assert_eq!(
            names(r#"{"header_names": ["X-Api-Key", "Authorization", "Cookie"]}"#).0,
            Some(vec![
                "X-Api-Key".into(),
                "Authorization".into(),
                "Cookie".into()
            ])
        );
        for bad in [
            r#"{"header_names": []}"#,
            r#"{"header_names": "X-Api-Key"}"#,
            r#"{"header_names": ["a","b","c","d","e","f","g","h","i"]}"#,
        ] {
            assert_eq!(names(bad), (None, vec!["header_names".to_owned()]), "{bad}");
        }
        let (n, errors) = names(
            r#"{"header_names": ["X-Key", "x-key", "Host", "X Key", "Mcp-Session-Id", 3, "Content-Type", "mcp-param-a"]}"#,
        );
        assert_eq!(n, None);
        assert_eq!(
            errors,
            [1, 2, 3, 4, 5, 6, 7].map(|i| format!("header_names[{i}]"))
        );
    }

    #[test]
    fn values_need_every_name_and_no_other() {
        let configured = vec!["X-Api-Key".to_owned(), "X-Org".to_owned()];
        let mut f = Fields::parse(
            br#"{"values": {"x-api-key": "k1", "X-Other": "v", "X-Org": "a\nb"}}"#,
            &["values"],
        )
        .unwrap();
        assert!(read_values(&mut f, "values", &configured, true).is_none());
        let Err(ApiError::BadRequest(e)) = f.finish() else {
            panic!("expected a 400")
        };
        let mut fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        fields.sort_unstable();
        assert_eq!(fields, vec!["values.X-Org", "values.X-Other"]);
        assert!(!format!("{e:?}").contains("k1"), "no value is quoted back");

        let mut f = Fields::parse(
            br#"{"values": {"x-api-key": "k1", "X-Org": "o"}}"#,
            &["values"],
        )
        .unwrap();
        let v = read_values(&mut f, "values", &configured, true).unwrap();
        assert_eq!(v.keys().collect::<Vec<_>>(), ["X-Api-Key", "X-Org"]);
        assert_eq!(v["X-Api-Key"].expose(), "k1");
    }

    #[test]
    fn opened_values_print_no_value() {
        let o = Opened::new(
            "http://h/mcp".into(),
            BTreeMap::from([("X-Api-Key".to_owned(), Secret::new("hunter2"))]),
        );
        assert!(!format!("{o:?}").contains("hunter2"));
    }
}
