//! JSON-RPC envelopes: what the per-server proxy reads of a client's body, how an MCP
//! response is picked out of a message or batch, and the rmcp message types the
//! federated `/mcp` endpoint and the MCP client decode. A message rmcp accepts must
//! survive its own encoding.
#![no_main]
use latchkey_mcp::envelope::{request_id, response_with_id};
use libfuzzer_sys::fuzz_target;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    if let Some(id) = request_id(data) {
        assert!(!id.is_null());
    }
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        for id in [serde_json::json!(1), serde_json::json!("1")] {
            if let Some(r) = response_with_id(v.clone(), &id) {
                assert_eq!(r["id"], id);
                let exchange = latchkey_mcp::Exchange {
                    status: http::StatusCode::OK,
                    headers: http::HeaderMap::new(),
                    response: Some(r),
                };
                let _ = exchange.into_result();
            }
        }
    }
    if let Ok(m) = serde_json::from_slice::<ClientJsonRpcMessage>(data) {
        let text = serde_json::to_vec(&m).unwrap();
        serde_json::from_slice::<ClientJsonRpcMessage>(&text).unwrap();
    }
    if let Ok(m) = serde_json::from_slice::<ServerJsonRpcMessage>(data) {
        let text = serde_json::to_vec(&m).unwrap();
        serde_json::from_slice::<ServerJsonRpcMessage>(&text).unwrap();
    }
});
