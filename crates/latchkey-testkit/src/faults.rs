//! Runtime-switchable faults of the scripted authorization server's token endpoint and
//! of its MCP resource, and the odd responses they produce (streamed huge bodies,
//! garbage bytes, connections dropped mid-response).
//!
//! A fault is armed with [`ScriptedServer::set_token_fault`](crate::ScriptedServer::set_token_fault)
//! or [`ScriptedServer::set_mcp_fault`](crate::ScriptedServer::set_mcp_fault) and applies
//! to every *subsequent* request until replaced (the `…_for` variants arm it for a fixed
//! number of requests, after which the endpoint behaves normally again).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// How the token endpoint misbehaves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TokenFault {
    /// Normal behaviour.
    #[default]
    None,
    /// Wait this long, then answer normally (nothing is granted before the wait: a
    /// client that goes away meanwhile leaves no trace).
    Slow(Duration),
    /// Grant normally (rotating the refresh token), then wait this long before sending
    /// the answer.
    SlowAnswer(Duration),
    /// Answer with this status (meant for 5xx; an invalid code becomes 500) and a small
    /// JSON body `{"error":"server_error"}`.
    ServerError(u16),
    /// Answer with an RFC 6749 §5.2 error: this status and `{"error": error, …}`
    /// (a 401 also carries `WWW-Authenticate: Basic realm="scripted"`).
    OAuthError {
        /// HTTP status (400 `invalid_grant`, 401 `invalid_client`, …).
        status: u16,
        /// The `error` code.
        error: String,
    },
    /// 200 with the JSON body `null`.
    NullBody,
    /// 200 with a streamed (chunked, no `Content-Length`) `application/json` body of
    /// exactly this many bytes: `{"access_token":"` followed by `x` padding, never closed.
    Huge(usize),
    /// 302 with this `Location`.
    RedirectTo(String),
    /// 200 labelled `application/json` whose body is not JSON (binary and HTML bytes).
    Garbage,
}

/// How the MCP resource misbehaves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum McpFault {
    /// Normal behaviour.
    #[default]
    None,
    /// The next N requests get a 401 `invalid_token` challenge even with a valid token;
    /// afterwards the resource behaves normally again.
    Unauthorized(usize),
    /// 403 with an `insufficient_scope` challenge (naming the required scope if one is
    /// configured), whatever the token.
    Forbidden,
    /// Answer with this status (an invalid code becomes 500) and a small text body.
    ServerError(u16),
    /// Wait this long, then answer normally.
    Slow(Duration),
    /// Send a 200 header and the start of a JSON body, then drop the connection without
    /// finishing the (chunked) body.
    ResetConnection,
}

/// A fault and how many more requests it applies to (`None`: until replaced).
#[derive(Debug, Clone, Default)]
pub(crate) struct Armed<F> {
    fault: F,
    remaining: Option<usize>,
}

impl<F: Clone + Default> Armed<F> {
    pub(crate) fn new(fault: F, remaining: Option<usize>) -> Self {
        if remaining == Some(0) {
            return Self::default();
        }
        Self { fault, remaining }
    }

    /// The fault for the current request, counting it down.
    pub(crate) fn take(&mut self) -> F {
        let fault = self.fault.clone();
        if let Some(n) = self.remaining.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                *self = Self::default();
            }
        }
        fault
    }
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

const JSON: &str = "application/json";

/// The response of a token fault, or `None` when the request is to be served normally
/// (after any delay, which the caller has already slept).
pub(crate) fn token_fault_response(fault: &TokenFault) -> Option<Response> {
    let r = match fault {
        TokenFault::None | TokenFault::Slow(_) | TokenFault::SlowAnswer(_) => return None,
        TokenFault::ServerError(code) => (
            status(*code),
            [(header::CONTENT_TYPE, JSON)],
            r#"{"error":"server_error"}"#,
        )
            .into_response(),
        TokenFault::OAuthError {
            status: code,
            error,
        } => {
            let mut r = (
                status(*code),
                axum::Json(
                    json!({"error": error, "error_description": format!("scripted {error}")}),
                ),
            )
                .into_response();
            if *code == 401 {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Basic realm="scripted""#),
                );
            }
            r
        }
        TokenFault::NullBody => {
            (StatusCode::OK, [(header::CONTENT_TYPE, JSON)], "null").into_response()
        }
        TokenFault::Huge(n) => huge(*n),
        TokenFault::RedirectTo(to) => {
            (StatusCode::FOUND, [(header::LOCATION, to.clone())]).into_response()
        }
        TokenFault::Garbage => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, JSON)],
            Bytes::from_static(b"\x00\xff\xfe<html>not json at all</html>\x1b{{\"acc"),
        )
            .into_response(),
    };
    Some(r)
}

const CHUNK: usize = 64 * 1024;

/// 200, `application/json`, a chunked body of exactly `n` bytes.
fn huge(n: usize) -> Response {
    let prefix: &[u8] = br#"{"access_token":""#;
    let stream = futures_util::stream::unfold(0usize, move |sent| async move {
        if sent >= n {
            return None;
        }
        let len = CHUNK.min(n - sent);
        let mut chunk = vec![b'x'; len];
        // The prefix only lands in the first chunk (whose offset is 0).
        if sent == 0 {
            let p = prefix.len().min(len);
            chunk[..p].copy_from_slice(&prefix[..p]);
        }
        Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), sent + len))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, JSON)],
        Body::from_stream(stream),
    )
        .into_response()
}

/// 200 with the start of a JSON-RPC response, then a body error, which makes the
/// server abort the connection with the chunked body unfinished.
pub(crate) fn reset_connection() -> Response {
    let stream = futures_util::stream::unfold(0u8, |step| async move {
        match step {
            0 => Some((Ok(Bytes::from_static(br#"{"jsonrpc":"2.0","#)), 1)),
            1 => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "scripted reset",
                    )),
                    2,
                ))
            }
            _ => None,
        }
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, JSON)],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A small non-JSON-RPC error body with this status.
pub(crate) fn server_error(code: u16) -> Response {
    (status(code), "scripted server error").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn armed_counts_down_then_disarms() {
        let mut a = Armed::new(McpFault::Forbidden, Some(2));
        assert_eq!(a.take(), McpFault::Forbidden);
        assert_eq!(a.take(), McpFault::Forbidden);
        assert_eq!(a.take(), McpFault::None);
        let mut a = Armed::new(TokenFault::NullBody, None);
        for _ in 0..5 {
            assert_eq!(a.take(), TokenFault::NullBody);
        }
        let mut a = Armed::new(TokenFault::Garbage, Some(0));
        assert_eq!(a.take(), TokenFault::None);
    }

    #[test]
    fn invalid_status_codes_become_500() {
        assert_eq!(status(42), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(status(503), StatusCode::SERVICE_UNAVAILABLE);
        assert!(token_fault_response(&TokenFault::None).is_none());
        assert!(token_fault_response(&TokenFault::Slow(Duration::ZERO)).is_none());
    }
}
