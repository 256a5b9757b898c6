//! `--header 'Name: value'` (repeatable) for `servers add`, `servers set-headers` and
//! `doctor`: static-header servers (an API key and the like). A value is a [`Secret`]:
//! never printed, sent once in a request body (or, by `doctor`, to the server itself).
//! `--header Name` without a value only names the header; `servers set-headers` then
//! reads its value from standard input (without echo on a terminal).

use std::collections::BTreeMap;
use std::io::IsTerminal as _;

use latchkey_core::Secret;
use serde_json::{Map, Value};

use crate::api::Failure;

/// One `--header` argument: a name and, when given, its value.
#[derive(Clone)]
pub(crate) struct HeaderArg {
    pub(crate) name: String,
    pub(crate) value: Option<Secret>,
}

impl std::fmt::Debug for HeaderArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderArg")
            .field("name", &self.name)
            .field("value", &self.value.as_ref().map(|_| "…"))
            .finish()
    }
}

/// clap's parser of `--header`: `Name: value` or `Name`.
pub(crate) fn parse(arg: &str) -> Result<HeaderArg, String> {
    let (name, value) = match arg.split_once(':') {
        Some((n, v)) => (n.trim(), Some(v.trim())),
        None => (arg.trim(), None),
    };
    if name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(
            "expected 'Name: value' (or a Name alone), with a valid header name".to_owned(),
        );
    }
    Ok(HeaderArg {
        name: name.to_owned(),
        value: value
            .filter(|v| !v.is_empty())
            .map(|v| Secret::new(v.to_owned())),
    })
}

/// `header_names` (every `--header`) and, when any has a value, `header_values`, into a
/// server body.
pub(crate) fn into_server_body(headers: &[HeaderArg], body: &mut Map<String, Value>) {
    if headers.is_empty() {
        return;
    }
    body.insert(
        "header_names".into(),
        Value::Array(
            headers
                .iter()
                .map(|h| Value::String(h.name.clone()))
                .collect(),
        ),
    );
    let values = values_object(headers.iter().filter_map(|h| {
        h.value
            .as_ref()
            .map(|v| (h.name.clone(), v.expose().to_owned()))
    }));
    if !values.is_empty() {
        body.insert("header_values".into(), Value::Object(values));
    }
}

fn values_object(pairs: impl Iterator<Item = (String, String)>) -> Map<String, Value> {
    pairs.map(|(k, v)| (k, Value::String(v))).collect()
}

/// One value for `name` from standard input: read without echo when it is a terminal,
/// else its next line.
fn read_value(name: &str) -> Result<Secret, Failure> {
    let value = if std::io::stdin().is_terminal() {
        let term = console::Term::stderr();
        term.write_str(&format!("Value of {name} (not shown): "))
            .map_err(|e| Failure::data(format!("cannot prompt for {name}: {e}")))?;
        term.read_secure_line()
            .map_err(|e| Failure::data(format!("cannot read the value of {name}: {e}")))?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| Failure::data(format!("cannot read the value of {name}: {e}")))?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    let value = value.trim().to_owned();
    if value.is_empty() {
        return Err(Failure::data(format!(
            "no value for {name} on standard input (give --header '{name}: value', or the value on its own line)"
        )));
    }
    Ok(Secret::new(value))
}

/// The `values` object of `PUT /v1/servers/{id}/headers`: the given values, the ones
/// named without a value read from standard input in order; with no `--header` at
/// all, every one of `configured` from standard input.
pub(crate) fn values_body(
    headers: &[HeaderArg],
    configured: &[String],
) -> Result<Map<String, Value>, Failure> {
    let mut values: BTreeMap<String, Secret> = BTreeMap::new();
    if headers.is_empty() {
        for name in configured {
            values.insert(name.clone(), read_value(name)?);
        }
    } else {
        for h in headers {
            let v = match &h.value {
                Some(v) => v.clone(),
                None => read_value(&h.name)?,
            };
            values.insert(h.name.clone(), v);
        }
    }
    Ok(values_object(
        values.into_iter().map(|(k, v)| (k, v.expose().to_owned())),
    ))
}

/// `Name: set, Other: not set` from a server's `headers` object.
pub(crate) fn describe(headers: &Value) -> String {
    match headers.as_object() {
        Some(h) if !h.is_empty() => h
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or("?")))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "-".into(),
    }
}

/// The headers as an HTTP header map (for `doctor`), values marked sensitive.
pub(crate) fn header_map(headers: &[HeaderArg]) -> Result<http::HeaderMap, Failure> {
    let mut map = http::HeaderMap::new();
    for h in headers {
        let Some(v) = &h.value else {
            return Err(Failure::data(format!(
                "--header {}: give its value as '{}: value'",
                h.name, h.name
            )));
        };
        let name = http::HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| Failure::data(format!("{} is not a header name", h.name)))?;
        let mut value = http::HeaderValue::from_str(v.expose()).map_err(|_| {
            Failure::data(format!(
                "the value of {} is not a valid header value",
                h.name
            ))
        })?;
        value.set_sensitive(true);
        map.insert(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_argument_is_a_name_and_maybe_a_value() {
        let h = parse("X-Api-Key: abc:def ").unwrap();
        assert_eq!(h.name, "X-Api-Key");
        assert_eq!(h.value.unwrap().expose(), "abc:def");
        assert!(parse("X-Api-Key").unwrap().value.is_none());
        assert!(parse("X-Api-Key:").unwrap().value.is_none());
        assert!(parse("bad name: v").is_err());
        assert!(parse(": v").is_err());
        assert!(!format!("{:?}", parse("K: hunter2").unwrap()).contains("hunter2"));
    }
}
