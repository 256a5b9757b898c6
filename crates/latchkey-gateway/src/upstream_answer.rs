//! What an upstream answered one JSON-RPC request: its result, or its JSON-RPC error as
//! it sent it. A building block of its own because both the call path
//! ([`crate::tools`]) and the relay of a request's client ([`crate::downstream`], whose
//! parked exchanges end with one) name it, and `tools` already uses `downstream`.

use serde_json::{Value, json};

/// A JSON-RPC error an upstream answered, as it sent it.
#[derive(Debug, Clone)]
pub(crate) struct RpcError {
    /// Its `code`.
    pub code: i64,
    /// Its `message` (the upstream's own text).
    pub message: String,
    /// Its `data`, if any.
    pub data: Option<Value>,
    /// The whole `error` object, for the typed 502 of [`crate::tools::call`].
    pub(crate) raw: Value,
}

impl RpcError {
    /// `Method not found`.
    pub(crate) const METHOD_NOT_FOUND: i64 = -32601;

    pub(crate) fn of(raw: &Value) -> Self {
        Self {
            code: raw.get("code").and_then(Value::as_i64).unwrap_or(-32603),
            message: raw
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            data: raw.get("data").cloned(),
            raw: raw.clone(),
        }
    }

    /// What [`crate::tools::call_answer`] answers, without asking, for a primitive the upstream's
    /// `initialize` did not declare.
    pub(crate) fn not_offered() -> Self {
        let raw = json!({"code": Self::METHOD_NOT_FOUND, "message": "Method not found"});
        Self::of(&raw)
    }
}

/// What an upstream answered a request.
#[derive(Debug)]
pub(crate) enum Answer {
    /// Its `result`.
    Result(Value),
    /// Its JSON-RPC error.
    Error(RpcError),
}
