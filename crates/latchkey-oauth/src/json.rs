//! Defensive reading of JSON documents from the network (R-REFRESH-8): a body that is
//! not an object reads as an empty object, and fields of the wrong type read as absent.

use serde_json::{Map, Value};

/// The body as a JSON object; anything else (not JSON, `null`, a number, an array) is `{}`.
pub(crate) fn object(body: &[u8]) -> Map<String, Value> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// Whether the body is a JSON object at all.
pub(crate) fn is_object(body: &[u8]) -> bool {
    matches!(serde_json::from_slice::<Value>(body), Ok(Value::Object(_)))
}

/// A string field; non-strings and empty strings are absent.
pub(crate) fn string(m: &Map<String, Value>, key: &str) -> Option<String> {
    match m.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// A list of strings; non-string entries are dropped; a non-array is absent.
pub(crate) fn strings(m: &Map<String, Value>, key: &str) -> Option<Vec<String>> {
    match m.get(key) {
        Some(Value::Array(a)) => Some(
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => None,
    }
}

/// Untrusted text from a peer (an `error_description`) made safe to show: control
/// characters become spaces, and at most `max` characters are kept (an ellipsis marks
/// the cut).
pub(crate) fn printable(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out.trim().to_owned()
}

/// A boolean field; anything but `true`/`false` is absent.
pub(crate) fn boolean(m: &Map<String, Value>, key: &str) -> Option<bool> {
    m.get(key).and_then(Value::as_bool)
}

/// A non-negative integer given as a JSON number or a string of ASCII digits
/// (R-REFRESH-9: `/^\d+$/`); anything else is absent.
pub(crate) fn seconds(m: &Map<String, Value>, key: &str) -> Option<u64> {
    match m.get(key) {
        Some(Value::Number(n)) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0 && f.is_finite())
                .map(|f| f as u64)
        }),
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_objects_read_as_empty() {
        for b in [&b"null"[..], b"1", b"[]", b"\"x\"", b"not json", b""] {
            assert!(object(b).is_empty());
            assert!(!is_object(b));
        }
    }

    #[test]
    fn seconds_accepts_numbers_and_digit_strings_only() {
        let m = object(br#"{"a":3600,"b":"3600","c":"36x","d":-5,"e":true,"f":"","g":12.7}"#);
        assert_eq!(seconds(&m, "a"), Some(3600));
        assert_eq!(seconds(&m, "b"), Some(3600));
        assert_eq!(seconds(&m, "c"), None);
        assert_eq!(seconds(&m, "d"), None);
        assert_eq!(seconds(&m, "e"), None);
        assert_eq!(seconds(&m, "f"), None);
        assert_eq!(seconds(&m, "g"), Some(12));
    }

    #[test]
    fn wrong_types_are_absent() {
        let m = object(br#"{"s":5,"l":"x","b":"true","e":""}"#);
        assert_eq!(string(&m, "s"), None);
        assert_eq!(string(&m, "e"), None);
        assert_eq!(strings(&m, "l"), None);
        assert_eq!(boolean(&m, "b"), None);
    }
}
