//! JSON-RPC envelopes read from the network: which request a body is, and which message
//! of a body (or batch) answers a given id.
//!
//! Written by hand because only the envelope matters here: the proxy forwards bodies it
//! does not otherwise understand (future methods, vendor extensions), so a typed
//! rmcp message would refuse what must pass through untouched.

use serde_json::Value;

/// The `id` of a body that is one JSON-RPC request (an object with a `method` and a
/// non-null `id`); `None` for notifications, responses, batches and anything that is
/// not JSON. Errors are answered in JSON-RPC only to a request with an id to answer.
pub fn request_id(body: &[u8]) -> Option<Value> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object()?;
    obj.get("method")?;
    obj.get("id").filter(|id| !id.is_null()).cloned()
}

/// The response to `id` in a message or a batch: an object with that `id` and a
/// `result` or an `error`.
pub fn response_with_id(v: Value, id: &Value) -> Option<Value> {
    match v {
        Value::Array(items) => items.into_iter().find_map(|m| response_with_id(m, id)),
        Value::Object(ref m)
            if m.get("id") == Some(id) && (m.contains_key("result") || m.contains_key("error")) =>
        {
            Some(v)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_ids() {
        assert_eq!(
            request_id(br#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#),
            Some(json!(7))
        );
        assert_eq!(
            request_id(br#"{"jsonrpc":"2.0","id":"a","method":"x"}"#),
            Some(json!("a"))
        );
        assert_eq!(
            request_id(br#"{"jsonrpc":"2.0","method":"notifications/x"}"#),
            None
        );
        assert_eq!(
            request_id(br#"{"jsonrpc":"2.0","id":null,"method":"x"}"#),
            None
        );
        assert_eq!(request_id(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#), None);
        assert_eq!(
            request_id(br#"[{"jsonrpc":"2.0","id":1,"method":"x"}]"#),
            None
        );
        assert_eq!(request_id(b"\xff not json"), None);
    }

    #[test]
    fn responses_in_messages_and_batches() {
        let id = json!(3);
        let answer = json!({"jsonrpc":"2.0","id":3,"result":{"ok":true}});
        assert_eq!(response_with_id(answer.clone(), &id), Some(answer.clone()));
        let batch = json!([
            {"jsonrpc":"2.0","id":3,"method":"ping"},
            {"jsonrpc":"2.0","id":"3","result":{}},
            answer.clone()
        ]);
        assert_eq!(response_with_id(batch, &id), Some(answer));
        let error = json!({"jsonrpc":"2.0","id":3,"error":{"code":-1,"message":"x"}});
        assert_eq!(response_with_id(error.clone(), &id), Some(error));
        assert_eq!(response_with_id(json!({"id":3}), &id), None);
        assert_eq!(response_with_id(json!(3), &id), None);
    }
}
