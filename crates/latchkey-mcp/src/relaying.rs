//! A request whose answer is read as a stream, with what the server sends before the
//! answer handed on as it arrives ([`McpClient::send_relaying`]).
//!
//! On the streamable HTTP transport a server may answer a POSTed request with an SSE
//! stream carrying, before the response, notifications (`notifications/progress` …) and
//! requests of its own (`elicitation/create`, `sampling/createMessage`, `roots/list`,
//! `ping`) related to that request. [`McpClient::send`] reads the whole body and keeps
//! the response only; a gateway that relays those messages to its own client needs
//! them as they come, and must answer the server's requests (POSTing a JSON-RPC
//! response in the same session) while the stream is still being read.
//!
//! Written here rather than taken from rmcp: rmcp's client transport owns the
//! connection and bypasses the SSRF-guarded egress client (see the crate docs). The SSE
//! framing is [`SseFramer`], hand-written because sse-stream has no per-event cap.
//!
//! Limits: one event may be at most [`MCP_BODY_LIMIT`] bytes; the overall time is the
//! egress client's request timeout, counted from the request and again from each
//! answer of the caller's client, but not while a relayed request waits for one (a
//! person may be answering an elicitation).
//!
//! An answer may be POSTed long after the request (a client on the stateless wire may
//! take minutes), when the credential in `extra` has expired: a server refusing it with
//! 401 would otherwise never get its answer, and the request would hang until the
//! timeout. The answer is then POSTed once more with the headers [`Renew::renewed`]
//! gives (the caller knows how to get a fresh credential; this crate does not), which
//! also go with whatever is sent later in the request. Refused again, or with no renewed
//! headers to be had, the request ends at once with [`McpError::Unauthorized`].

use std::future::Future;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use http::HeaderMap;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::{Exchange, MCP_BODY_LIMIT, McpClient, McpError, envelope};

/// JSON-RPC "Method not found".
pub const METHOD_NOT_FOUND: i64 = -32601;

/// How long the relayed requests still open when the answer arrives get to wind down
/// (cancel toward the caller's client).
const WIND_DOWN: std::time::Duration = std::time::Duration::from_secs(2);

/// What the caller does with what a server sends on a request's stream before its
/// answer.
pub trait Relay: Sync {
    /// A notification of the server's (progress, a log message …), in order.
    fn notification(&self, message: Value) -> impl Future<Output = ()> + Send;

    /// A request of the server's (`ping` is answered here and never reaches this): its
    /// `result`, or its `error` object. `stop` resolves (with either outcome) when the
    /// server cancelled the request or the exchange is over: the request should then be
    /// cancelled wherever it went and the future end; its answer is not sent.
    fn request(
        &self,
        method: String,
        params: Value,
        stop: oneshot::Receiver<()>,
    ) -> impl Future<Output = Result<Value, Value>> + Send;

    /// Resolves when the caller's own request was cancelled: the server is told
    /// (`notifications/cancelled` with the request's id) and the stream dropped.
    fn cancelled(&self) -> impl Future<Output = ()> + Send;
}

/// Where fresh headers come from when the server refuses an answer POSTed back during a
/// request with 401 (see the module docs): OAuth stays the caller's business.
pub trait Renew: Sync {
    /// The headers to send in place of the request's `extra` from now on (a new
    /// `Authorization`), or `None` when none can be had. Asked at most once a request.
    fn renewed(&self) -> impl Future<Output = Option<HeaderMap>> + Send;
}

/// No renewal: an answer refused with 401 ends the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRenew;

impl Renew for NoRenew {
    async fn renewed(&self) -> Option<HeaderMap> {
        None
    }
}

/// A relay with nobody behind it: notifications are dropped and requests answered
/// with `Method not found` (there is no client to ask).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRelay;

impl Relay for NoRelay {
    async fn notification(&self, _message: Value) {}

    async fn request(
        &self,
        method: String,
        _params: Value,
        _stop: oneshot::Receiver<()>,
    ) -> Result<Value, Value> {
        Err(method_not_found(&format!(
            "{method}: there is no client to relay this request to"
        )))
    }

    async fn cancelled(&self) {
        std::future::pending::<()>().await;
    }
}

/// A JSON-RPC `Method not found` error object with `message`.
pub fn method_not_found(message: &str) -> Value {
    json!({"code": METHOD_NOT_FOUND, "message": format!("Method not found: {message}")})
}

/// SSE framing fed chunk by chunk: the JSON messages of complete events.
#[derive(Debug)]
pub struct SseFramer {
    buf: Vec<u8>,
    cap: usize,
}

impl SseFramer {
    /// A framer refusing events longer than `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            buf: Vec::new(),
            cap,
        }
    }

    /// The messages completed by `chunk`; `None` when an event grows past the cap.
    /// Events whose data is not JSON (comments, priming events) are skipped.
    pub fn push(&mut self, chunk: &[u8]) -> Option<Vec<Value>> {
        // CR LF and LF end lines alike here (a lone CR is not used by MCP servers).
        self.buf.extend(chunk.iter().filter(|b| **b != b'\r'));
        let mut out = Vec::new();
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if data.is_empty() {
                continue;
            }
            if let Ok(v) = serde_json::from_str::<Value>(&data.join("\n")) {
                out.push(v);
            }
        }
        (self.buf.len() <= self.cap).then_some(out)
    }
}

/// Asks `relay` one request of the server's; the server's id comes back with the
/// answer, `None` when it was stopped.
async fn ask<R: Relay>(
    relay: &R,
    id: Value,
    method: String,
    params: Value,
    stop: oneshot::Receiver<()>,
    stopped: oneshot::Receiver<()>,
) -> (Value, Option<Result<Value, Value>>) {
    let answer = relay.request(method, params, stop).await;
    // Stopped meanwhile (the sender fired or is gone): the answer is not sent.
    let stopped = !matches!(
        { stopped }.try_recv(),
        Err(oneshot::error::TryRecvError::Empty)
    );
    (id, (!stopped).then_some(answer))
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

/// One request relayed to the caller: the senders that stop it.
struct Open {
    id: Value,
    /// Fired when the server cancels it or the exchange ends.
    stop: oneshot::Sender<()>,
    /// Dropped with `stop`; tells [`ask`] not to send the answer.
    stopped: oneshot::Sender<()>,
}

impl McpClient {
    /// [`McpClient::send`], with the answer read as it arrives: on an SSE answer, each
    /// message before the response goes to `relay` ([`Relay`]); the server's requests
    /// are asked concurrently while the stream is read, and each answer is POSTed back
    /// in the same session with the same `extra` headers (a `ping` is answered here). An
    /// answer refused with 401 is POSTed once more with `renew`'s headers; refused again
    /// (or with none to be had) the answer is [`McpError::Unauthorized`], at once. A
    /// server's `notifications/cancelled` naming one of them stops it. When
    /// [`Relay::cancelled`] resolves, the server is sent `notifications/cancelled` for
    /// `message` and the answer is [`McpError::Cancelled`]. A plain JSON answer, or any
    /// status but 2xx, is read whole as [`McpClient::send`] reads it.
    pub async fn send_relaying<R: Relay, C: Renew>(
        &self,
        message: &Value,
        extra: &HeaderMap,
        relay: &R,
        renew: &C,
    ) -> Result<Exchange, McpError> {
        // `renew`'s headers once an answer was refused with 401, for the rest of it.
        let mut renewed: Option<HeaderMap> = None;
        let timeout = self.egress.config().request_timeout;
        // One clock for the head and the body, as `send`'s whole-request timeout.
        let deadline_at = tokio::time::Instant::now() + timeout;
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        let cancelled = relay.cancelled();
        let mut cancelled = std::pin::pin!(cancelled);
        let opened = tokio::select! {
            r = self.egress.open(self.post(message, extra), None, timeout) => r?,
            () = &mut cancelled => return Err(self.cancel(&id, extra).await),
        };
        if !opened.status.is_success() || !is_event_stream(&opened.headers) {
            let (status, headers) = (opened.status, opened.headers.clone());
            let body = tokio::select! {
                r = tokio::time::timeout_at(deadline_at, opened.read_capped(MCP_BODY_LIMIT)) => {
                    r.map_err(|_| latchkey_egress::EgressError::Timeout)??
                }
                () = &mut cancelled => return Err(self.cancel(&id, extra).await),
            };
            let response = if status.is_success() || status.is_client_error() {
                crate::find_response(&headers, &body, &id).await
            } else {
                None
            };
            return Ok(Exchange {
                status,
                headers,
                response,
            });
        }
        let (status, headers) = (opened.status, opened.headers.clone());
        let mut body = std::pin::pin!(opened.into_body());
        let mut framer = SseFramer::new(MCP_BODY_LIMIT);
        let mut asking = FuturesUnordered::new();
        let mut open: Vec<Open> = Vec::new();
        let deadline = tokio::time::sleep_until(deadline_at);
        let mut deadline = std::pin::pin!(deadline);
        let mut response = None;
        'read: loop {
            tokio::select! {
                () = &mut cancelled => {
                    return Err(self.cancel(&id, renewed.as_ref().unwrap_or(extra)).await);
                }
                () = &mut deadline, if asking.is_empty() => {
                    return Err(McpError::Egress(latchkey_egress::EgressError::Timeout));
                }
                Some((rid, answer)) = asking.next(), if !asking.is_empty() => {
                    open.retain(|o: &Open| o.id != rid);
                    if let Some(answer) = answer {
                        self.answer(&rid, answer, extra, renew, &mut renewed).await?;
                    }
                    if asking.is_empty() {
                        // The clock runs again from the client's last answer.
                        deadline.as_mut().reset(tokio::time::Instant::now() + timeout);
                    }
                }
                chunk = body.next() => {
                    let bytes = match chunk {
                        None => break 'read,
                        Some(chunk) => chunk?,
                    };
                    let Some(messages) = framer.push(&bytes) else {
                        return Err(McpError::Protocol(format!(
                            "an event of the answer is larger than {MCP_BODY_LIMIT} bytes"
                        )));
                    };
                    for m in messages {
                        if let Some(r) = envelope::response_with_id(m.clone(), &id) {
                            response = Some(r);
                            break 'read;
                        }
                        let method = m.get("method").and_then(Value::as_str).map(str::to_owned);
                        let params = m.get("params").cloned().unwrap_or_else(|| json!({}));
                        match (method, m.get("id").filter(|i| !i.is_null()).cloned()) {
                            (Some(method), Some(rid)) if method == "ping" => {
                                self.answer(&rid, Ok(json!({})), extra, renew, &mut renewed)
                                    .await?;
                            }
                            (Some(method), Some(rid)) => {
                                let (stop_tx, stop_rx) = oneshot::channel();
                                let (stopped_tx, stopped_rx) = oneshot::channel();
                                open.push(Open {
                                    id: rid.clone(),
                                    stop: stop_tx,
                                    stopped: stopped_tx,
                                });
                                asking.push(ask(relay, rid, method, params, stop_rx, stopped_rx));
                            }
                            (Some(method), None) if method == "notifications/cancelled" => {
                                let target = params.get("requestId");
                                if let Some(i) = open.iter().position(|o| Some(&o.id) == target) {
                                    let o = open.swap_remove(i);
                                    let _ = o.stop.send(());
                                    drop(o.stopped);
                                }
                            }
                            (Some(_), None) => relay.notification(m).await,
                            // A response to something else: not ours to handle.
                            (None, _) => {}
                        }
                    }
                }
            }
        }
        // Answered (or the stream ended): what is still being asked is moot.
        for o in open.drain(..) {
            let _ = o.stop.send(());
            drop(o.stopped);
        }
        let _ =
            tokio::time::timeout(WIND_DOWN, async { while asking.next().await.is_some() {} }).await;
        Ok(Exchange {
            status,
            headers,
            response,
        })
    }

    /// Tells the server its request `id` is cancelled; the error to return.
    async fn cancel(&self, id: &Value, extra: &HeaderMap) -> McpError {
        let note = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": id, "reason": "cancelled by the client"}});
        if let Err(e) = self.send(&note, extra).await {
            tracing::info!(event = "mcp.cancel_not_sent", error = %e);
        }
        McpError::Cancelled
    }

    /// POSTs the answer to the server's request `id` with `renewed` headers, else
    /// `extra`; after a 401, once more with `renew`'s (kept in `renewed`) if none were
    /// asked for yet. `Err` when a 401 stands: the server will not take the answer, so
    /// the request cannot end well. Any other failure is logged only (the request's own
    /// answer, or timeout, tells the rest).
    async fn answer<C: Renew>(
        &self,
        id: &Value,
        answer: Result<Value, Value>,
        extra: &HeaderMap,
        renew: &C,
        renewed: &mut Option<HeaderMap>,
    ) -> Result<(), McpError> {
        let message = match answer {
            Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err(error) => json!({"jsonrpc": "2.0", "id": id, "error": error}),
        };
        let first = renewed.is_none();
        let sent = self.send(&message, renewed.as_ref().unwrap_or(extra)).await;
        if !Self::refused_401(sent) {
            return Ok(());
        }
        // Renewed headers refused already: a second renewal would not be fresher.
        if !first {
            return Err(McpError::Unauthorized);
        }
        let Some(fresh) = renew.renewed().await else {
            tracing::info!(event = "mcp.answer_unauthorized", renewed = false);
            return Err(McpError::Unauthorized);
        };
        let sent = self.send(&message, renewed.insert(fresh)).await;
        if Self::refused_401(sent) {
            tracing::info!(event = "mcp.answer_unauthorized", renewed = true);
            return Err(McpError::Unauthorized);
        }
        tracing::info!(event = "mcp.answer_sent_renewed");
        Ok(())
    }

    /// Whether an answer's POST was refused with 401; other failures are logged here.
    fn refused_401(sent: Result<Exchange, McpError>) -> bool {
        match sent {
            Ok(ex) if ex.status.is_success() => false,
            Ok(ex) if ex.status == http::StatusCode::UNAUTHORIZED => true,
            Ok(ex) => {
                tracing::info!(event = "mcp.answer_refused", status = ex.status.as_u16());
                false
            }
            Err(e) => {
                tracing::info!(event = "mcp.answer_not_sent", error = %e);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_framed_across_chunks_and_capped() {
        let mut e = SseFramer::new(64);
        assert!(
            e.push(b"event: message\r\ndata: {\"a\"")
                .unwrap()
                .is_empty()
        );
        let got = e
            .push(b": 1}\r\n\r\n: comment\n\nid: 3\ndata: {\"b\":2}\n\n")
            .unwrap();
        assert_eq!(got, vec![json!({"a": 1}), json!({"b": 2})]);
        assert!(e.push(&[b'x'; 65]).is_none());
    }

    #[tokio::test]
    async fn no_relay_refuses_requests_with_method_not_found() {
        let (_tx, rx) = oneshot::channel();
        let e = NoRelay
            .request("elicitation/create".into(), json!({}), rx)
            .await
            .unwrap_err();
        assert_eq!(e["code"], METHOD_NOT_FOUND);
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("no client to relay")
        );
    }
}
