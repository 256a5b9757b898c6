//! The client a federated request came from, as the relay of what its upstream sends
//! during that request ([`latchkey_mcp::Relay`], read by
//! [`latchkey_mcp::McpClient::send_relaying`]).
//!
//! * `notifications/progress`: the upstream is given a token of Latchkey's own (unique
//!   within the upstream session, which several client sessions of one slot share),
//!   and each progress notification carrying it reaches the client with the client's
//!   own `progressToken`; none is asked for when the client gave none.
//! * `elicitation/create`, `sampling/createMessage`, `roots/list`: sent to the client
//!   session that made the request (on its request's stream) through rmcp's `Peer`, and
//!   the client's result or error handed back for the upstream. A client that did not
//!   declare the capability is not asked: the upstream gets `-32601` saying so. On the
//!   stateless 2026-07-28 wire there is no session to send a request on (and
//!   `input_required` rounds are not relayed): the upstream gets `-32601` too.
//! * An upstream's `notifications/cancelled` for one of them cancels it at the client
//!   (rmcp's `RequestHandle::cancel`); the client's cancellation of its own request
//!   (rmcp cancels the handler's token) makes the upstream get `notifications/cancelled`
//!   with the upstream request's id.
//!
//! Everything else an upstream sends on a request's stream is dropped here (log
//! messages and resource updates come back through [`crate::federated`]'s relays).

use std::sync::atomic::{AtomicBool, Ordering};

use rmcp::RoleServer;
use rmcp::model::{ClientCapabilities, ProtocolVersion, ServerNotification, ServerRequest};
use rmcp::service::{PeerRequestOptions, RequestContext, ServiceError};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// The client session behind one federated request.
#[derive(Debug)]
pub(crate) struct Downstream {
    context: RequestContext<RoleServer>,
    /// The token the upstream is given, when the client asked for progress.
    upstream_token: Option<String>,
    /// Something reached the client: the request must not be re-sent silently.
    relayed: AtomicBool,
}

/// What Latchkey declares in its upstream sessions' `initialize`: everything it can
/// relay (servers check it before asking). An upstream session is shared by the slot's
/// client sessions, so whether one request reaches its client is decided per request,
/// by that client's own capabilities ([`Downstream`]), not here.
pub(crate) fn upstream_capabilities() -> ClientCapabilities {
    serde_json::from_value(json!({
        "elicitation": {"form": {}, "url": {}}, "sampling": {}, "roots": {}
    }))
    .unwrap_or_default()
}

/// JSON-RPC "Invalid params".
const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC "Internal error".
const INTERNAL_ERROR: i64 = -32603;

impl Downstream {
    /// The relay for the request of `context` (taken, not cloned: its extensions hold
    /// the whole HTTP request head).
    pub(crate) fn of(context: RequestContext<RoleServer>) -> Self {
        let upstream_token = context
            .meta
            .get_progress_token()
            .map(|_| format!("latchkey-{}", latchkey_vault::store::new_id()));
        Self {
            context,
            upstream_token,
            relayed: AtomicBool::new(false),
        }
    }

    /// The `progressToken` to put into the upstream request's `_meta`, if any.
    pub(crate) fn upstream_progress_token(&self) -> Option<&str> {
        self.upstream_token.as_deref()
    }

    /// Whether anything was relayed to the client.
    pub(crate) fn relayed(&self) -> bool {
        self.relayed.load(Ordering::Relaxed)
    }

    fn stateless(&self) -> bool {
        self.context
            .protocol_version()
            .is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str())
    }

    /// Whether the client declared what `method` (with `params`) needs; `None` for a
    /// method that is not a server-to-client request relayed here. A URL-mode
    /// elicitation needs `elicitation.url`; a form one `elicitation.form`, or an empty
    /// `elicitation` (which means form, as before modes existed).
    // Sampling and roots are deprecated in rmcp (SEP-2577) but part of 2025-11-25.
    #[allow(deprecated)]
    fn declared(&self, method: &str, params: &Value) -> Option<bool> {
        let caps = self.context.client_capabilities();
        let caps = caps.as_ref();
        let url_mode = params.get("mode").and_then(Value::as_str) == Some("url");
        Some(match method {
            "elicitation/create" => caps.and_then(|c| c.elicitation.as_ref()).is_some_and(|e| {
                if url_mode {
                    e.url.is_some()
                } else {
                    e.form.is_some() || e.url.is_none()
                }
            }),
            "sampling/createMessage" => caps.is_some_and(|c| c.sampling.is_some()),
            "roots/list" => caps.is_some_and(|c| c.roots.is_some()),
            _ => return None,
        })
    }
}

fn error(code: i64, message: &str) -> Value {
    json!({"code": code, "message": message})
}

impl latchkey_mcp::Relay for Downstream {
    async fn notification(&self, message: Value) {
        if message.get("method").and_then(Value::as_str) != Some("notifications/progress") {
            return;
        }
        let (Some(ours), Some(theirs)) = (
            self.upstream_token.as_deref(),
            self.context.meta.get_progress_token(),
        ) else {
            return;
        };
        let mut params = message.get("params").cloned().unwrap_or_else(|| json!({}));
        if params.get("progressToken").and_then(Value::as_str) != Some(ours) {
            return;
        }
        params["progressToken"] = json!(theirs);
        let Ok(notification) = serde_json::from_value::<ServerNotification>(
            json!({"method": "notifications/progress", "params": params}),
        ) else {
            return;
        };
        self.relayed.store(true, Ordering::Relaxed);
        // A client gone meanwhile is not the upstream's problem.
        let _ = self.context.peer.send_notification(notification).await;
    }

    async fn request(
        &self,
        method: String,
        params: Value,
        stop: oneshot::Receiver<()>,
    ) -> Result<Value, Value> {
        let Some(declared) = self.declared(&method, &params) else {
            return Err(latchkey_mcp::method_not_found(&method));
        };
        if self.stateless() {
            return Err(latchkey_mcp::method_not_found(&format!(
                "{method}: the client's request came on the stateless 2026-07-28 wire, \
                 which has no server-to-client requests"
            )));
        }
        if !declared {
            return Err(latchkey_mcp::method_not_found(&format!(
                "{method}: the client does not support it (it did not declare the capability)"
            )));
        }
        let request = match serde_json::from_value::<ServerRequest>(
            json!({"method": method, "params": params}),
        ) {
            Ok(ServerRequest::CustomRequest(_)) | Err(_) => {
                return Err(error(
                    INVALID_PARAMS,
                    &format!("{method}: the parameters are not valid"),
                ));
            }
            Ok(r) => r,
        };
        self.relayed.store(true, Ordering::Relaxed);
        let mut handle = match self
            .context
            .peer
            .send_cancellable_request(request, PeerRequestOptions::no_options())
            .await
        {
            Ok(h) => h,
            Err(_) => return Err(error(INTERNAL_ERROR, "the client session is gone")),
        };
        tokio::select! {
            answer = &mut handle.rx => match answer {
                Ok(Ok(result)) => serde_json::to_value(result)
                    .map_err(|_| error(INTERNAL_ERROR, "the client's answer was not usable")),
                Ok(Err(ServiceError::McpError(e))) => Err(serde_json::to_value(e)
                    .unwrap_or_else(|_| error(INTERNAL_ERROR, "the client answered an error"))),
                _ => Err(error(INTERNAL_ERROR, "the client did not answer")),
            },
            _ = stop => {
                let _ = handle.cancel(Some("cancelled by the upstream server".into())).await;
                Err(error(INTERNAL_ERROR, "cancelled"))
            }
        }
    }

    async fn cancelled(&self) {
        self.context.ct.cancelled().await;
    }
}
