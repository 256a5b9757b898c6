//! `/mcp/{server}`: a transparent streamable-HTTP proxy to one upstream MCP server for
//! the caller's slot (R-EXEC-1, R-EXEC-3).
//!
//! Written by hand rather than with rmcp's server and client: a transparent proxy must
//! not parse, re-frame or reorder what it carries, and must pass SSE events through the
//! moment they arrive. What it does:
//! * the request body is streamed upstream; a body that ends within
//!   [`REPLAY_LIMIT`] (every ordinary JSON-RPC message) is kept so it can be sent again;
//! * the caller's own `Authorization` is never forwarded (no token passthrough); the
//!   slot's Bearer is injected instead (for a static-header server, its configured
//!   headers with the slot's values, never retried on a 401 or 403);
//! * an upstream 401 on a replayable request forces one refresh and retries once; a second
//!   401, or no usable token, is a typed error (a JSON-RPC error for a JSON-RPC request);
//! * only the headers the MCP transport needs cross in either direction;
//! * a request body over [`BODY_LIMIT`] is the typed 413;
//! * an SSE response is streamed back unbuffered; other answers up to 256 KiB are read
//!   whole first, so an upstream failing mid-answer is a typed 502, not a cut-off 200;
//! * only the transport's media types come back (`application/json`,
//!   `text/event-stream`, or no body): anything else, an HTML page above all, would be
//!   served on Latchkey's origin, so it is Latchkey's typed error instead, and a GET
//!   must ask for an event stream (a browser navigation does not).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use latchkey_core::Secret;
use latchkey_egress::{EgressError, EgressStream, HopBody, UrlSource};
use latchkey_guard::Principal;
use latchkey_oauth::challenge;
use latchkey_vault::store::ServerRow;

use crate::error::{ApiError, Reauth};
use crate::state::AppState;

/// A request body that ends within this many bytes is kept for a retry.
pub const REPLAY_LIMIT: usize = 256 * 1024;

/// How long to wait for the upstream's response head (a tool call answered as plain
/// JSON arrives only when the tool is done).
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Request headers passed upstream (besides the injected `Authorization`).
const REQUEST_HEADERS: [HeaderName; 7] = [
    header::CONTENT_TYPE,
    header::ACCEPT,
    HeaderName::from_static("mcp-session-id"),
    HeaderName::from_static("mcp-protocol-version"),
    HeaderName::from_static("last-event-id"),
    HeaderName::from_static("mcp-method"),
    HeaderName::from_static("mcp-name"),
];

/// Response headers passed back. Never `WWW-Authenticate`: the upstream's challenge
/// names the upstream's authorization server, which the caller must not be sent to.
const RESPONSE_HEADERS: [HeaderName; 5] = [
    header::CONTENT_TYPE,
    header::CACHE_CONTROL,
    HeaderName::from_static("mcp-session-id"),
    HeaderName::from_static("mcp-protocol-version"),
    header::RETRY_AFTER,
];

/// The largest request body passed upstream (as `/mcp` takes); a larger one is the typed
/// 413, refused from its `Content-Length` or cut off where it crosses the limit.
pub const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// How much of a body declared over [`BODY_LIMIT`] is read and dropped before the 413.
const DRAIN_LIMIT: usize = 4 * BODY_LIMIT;

/// The caller's body: whole (replayable) or a stream that has already started, with the
/// flag its byte count sets when it crosses [`BODY_LIMIT`].
enum Payload {
    Whole(Bytes),
    Streaming(Body, Arc<AtomicBool>),
}

/// Reads up to [`REPLAY_LIMIT`] bytes; if the body ends there it is kept whole,
/// otherwise what was read is put back in front of the rest, unbuffered and counted.
async fn take_payload(headers: &HeaderMap, body: Body) -> Result<Payload, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut stream = body.into_data_stream();
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        // Read (and drop) what the client is sending, up to a bound, so it is still
        // reading when the refusal comes rather than failing to write.
        let mut drained = 0usize;
        while drained <= DRAIN_LIMIT {
            match stream.next().await {
                Some(Ok(chunk)) => drained += chunk.len(),
                _ => break,
            }
        }
        return Err(ApiError::PayloadTooLarge);
    }
    let mut prefix = bytes::BytesMut::new();
    loop {
        match stream.next().await {
            None => return Ok(Payload::Whole(prefix.freeze())),
            Some(Err(e)) if crate::limits::is_body_timeout(&e) => {
                return Err(ApiError::RequestTimeout);
            }
            Some(Err(_)) => {
                return Err(ApiError::BadRequest(vec![crate::error::FieldError {
                    field: String::new(),
                    message: "the request body could not be read".into(),
                }]));
            }
            Some(Ok(chunk)) => {
                prefix.extend_from_slice(&chunk);
                if prefix.len() > REPLAY_LIMIT {
                    let head =
                        futures_util::stream::once(
                            async move { Ok::<_, axum::Error>(prefix.freeze()) },
                        );
                    let tripped = Arc::new(AtomicBool::new(false));
                    let flag = tripped.clone();
                    // Counts what passes; past the limit the upload ends with an error,
                    // which aborts the upstream request.
                    let counted = head.chain(stream).scan(0usize, move |seen, item| {
                        let next = match item {
                            // The error that ends the upload was sent: nothing follows.
                            _ if *seen > BODY_LIMIT => None,
                            Ok(c) => {
                                *seen += c.len();
                                if *seen > BODY_LIMIT {
                                    flag.store(true, Ordering::Relaxed);
                                    Some(Err(axum::Error::new("request body over the limit")))
                                } else {
                                    Some(Ok(c))
                                }
                            }
                            Err(e) => Some(Err(e)),
                        };
                        std::future::ready(next)
                    });
                    return Ok(Payload::Streaming(Body::from_stream(counted), tripped));
                }
            }
        }
    }
}

/// One attempt upstream.
async fn attempt(
    s: &AppState,
    server: &ServerRow,
    method: &Method,
    headers: &HeaderMap,
    credential: Credential<'_>,
    body: HopBody,
) -> Result<EgressStream, ApiError> {
    let mut sent = HeaderMap::with_capacity(REQUEST_HEADERS.len() + 1);
    for name in &REQUEST_HEADERS {
        for value in headers.get_all(name) {
            sent.append(name.clone(), value.clone());
        }
    }
    match credential {
        Credential::None => {}
        Credential::Bearer(t) => {
            // Built in one buffer rather than with `format!` (the hot path, issue 18).
            let token = t.expose().as_bytes();
            let mut b = bytes::BytesMut::with_capacity(7 + token.len());
            b.extend_from_slice(b"Bearer ");
            b.extend_from_slice(token);
            let mut v =
                HeaderValue::from_maybe_shared(b.freeze()).map_err(|_| ApiError::Upstream)?;
            v.set_sensitive(true);
            sent.insert(header::AUTHORIZATION, v);
        }
        // The configured names with the slot's values, replacing anything of the same
        // name (none of the caller's own headers crosses but the transport's).
        Credential::Headers(opened) => opened.inject(server, &mut sent)?,
    }
    let started = std::time::Instant::now();
    // The hop's own client, not reqwest: this is the hot path (latchkey_egress::hop
    // says what it keeps of the guard and why).
    let result = s
        .egress
        .hop(
            &server.url,
            UrlSource::Operator,
            method.clone(),
            sent,
            body,
            HEAD_TIMEOUT,
        )
        .await;
    head_seconds().record(started.elapsed().as_secs_f64());
    result.map_err(|e| {
        tracing::info!(event = "proxy.upstream_unreachable", server_id = %server.id, error = %e);
        match e {
            EgressError::Timeout | EgressError::Connect(_) => ApiError::Unavailable,
            // A stored URL the policy refuses now: the hop sent nothing.
            EgressError::SchemeNotAllowed(_)
            | EgressError::InsecureHttp { .. }
            | EgressError::InvalidUrl(_)
            | EgressError::AddressDenied { .. } => {
                refused_url(s, server).unwrap_or(ApiError::Upstream)
            }
            _ => ApiError::Upstream,
        }
    })
}

/// The proxy's `latchkey_upstream_head_seconds` histogram, looked up once: building its
/// key and finding it in the registry on every request was a measurable part of the
/// hot path (issue 18). `latchkey serve` installs the recorder before it serves.
fn head_seconds() -> &'static metrics::Histogram {
    static HANDLE: std::sync::OnceLock<metrics::Histogram> = std::sync::OnceLock::new();
    HANDLE.get_or_init(|| metrics::histogram!("latchkey_upstream_head_seconds", "via" => "proxy"))
}

/// The typed 400 naming the setting when the egress policy refuses the server's stored
/// URL now (a loopback server after a restart without the relaxation); `None` when the
/// URL is allowed. Asked only once a call has failed (a refresh, or the hop itself), not
/// before every call: this is the hot path (issue 18), and nothing is sent to a refused
/// URL either way.
fn refused_url(s: &AppState, server: &ServerRow) -> Option<ApiError> {
    crate::error::check_server_url(&s.egress, &server.url, "server").err()
}

/// What one attempt sends to authenticate.
#[derive(Clone, Copy)]
enum Credential<'a> {
    None,
    Bearer(&'a Secret),
    Headers(&'a crate::header_cache::Opened),
}

/// Whether an upstream answer is a 403 `insufficient_scope`; its scopes if so.
fn insufficient_scope(r: &EgressStream) -> Option<Vec<String>> {
    if r.status != StatusCode::FORBIDDEN {
        return None;
    }
    let values = r
        .headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .map(HeaderValue::as_bytes);
    challenge::bearer_challenge(values)
        .filter(challenge::BearerChallenge::is_insufficient_scope)
        .map(|c| c.scopes())
}

/// `POST | GET | DELETE /mcp/{server}` for `p`, once [`Route`] has admitted it.
async fn forward(
    s: &AppState,
    p: &Principal,
    id: &str,
    parts: &http::request::Parts,
    body: Body,
) -> Response {
    if !matches!(parts.method, Method::POST | Method::GET | Method::DELETE) {
        let mut r = ApiError::MethodNotAllowed.into_response();
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
        return r;
    }
    if parts.method == Method::GET && !accepts_event_stream(&parts.headers) {
        return ApiError::NotAcceptable("a GET on an MCP endpoint must accept text/event-stream")
            .into_response();
    }
    let payload = match take_payload(&parts.headers, body).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    // Kept (a reference count, not a copy) to find the JSON-RPC id if an error must be
    // answered; parsed only then.
    let whole = match &payload {
        Payload::Whole(b) => Some(b.clone()),
        Payload::Streaming(..) => None,
    };
    match run(s, p, id, &parts.method, &parts.headers, payload).await {
        Ok(r) => r,
        // The slot-level outcomes answer a JSON-RPC request in JSON-RPC, so an MCP
        // client shows them; transport-level failures keep their HTTP status.
        Err(
            e @ (ApiError::NeedsReauth { .. }
            | ApiError::NeedsScopeUpgrade { .. }
            | ApiError::HeadersNotSet { .. }
            | ApiError::HeadersForOtherUrl { .. }
            | ApiError::HeadersRefused { .. }),
        ) => match whole
            .as_deref()
            .and_then(latchkey_mcp::envelope::request_id)
        {
            Some(id) => e.into_jsonrpc(id),
            None => e.into_response(),
        },
        Err(e) => e.into_response(),
    }
}

async fn run(
    s: &AppState,
    p: &Principal,
    id: &str,
    method: &Method,
    headers: &HeaderMap,
    payload: Payload,
) -> Result<Response, ApiError> {
    let server = s.server_for_call(p, id).await?;
    let mut opened = None;
    let slot = match server.auth_type.as_str() {
        "none" => None,
        "oauth" => Some(crate::tools::slot_for(p, &server)),
        "headers" => {
            let slot = crate::tools::slot_for(p, &server);
            opened = Some(crate::service::headers::for_call(s, &server, &slot).await?);
            None
        }
        other => {
            return Err(ApiError::BadRequest(vec![crate::error::FieldError {
                field: "server".into(),
                message: format!("proxying servers with auth type {other} is not supported"),
            }]));
        }
    };
    let token = match &slot {
        None => None,
        Some(slot) => Some(
            crate::tools::bearer(s, &server, slot, false)
                .await
                .map_err(|e| refused_url(s, &server).unwrap_or(e))?,
        ),
    };
    let credential = match (&token, &opened) {
        (Some(t), _) => Credential::Bearer(&t.token),
        (None, Some(o)) => Credential::Headers(o),
        (None, None) => Credential::None,
    };
    let (first, replay) = match payload {
        Payload::Whole(b) => (
            attempt(
                s,
                &server,
                method,
                headers,
                credential,
                latchkey_egress::hop_body(b.clone()),
            )
            .await?,
            Some(b),
        ),
        Payload::Streaming(body, over_limit) => {
            let stream = latchkey_egress::hop_stream(body);
            let answer = attempt(s, &server, method, headers, credential, stream)
                .await
                .map_err(|e| {
                    if over_limit.load(Ordering::Relaxed) {
                        ApiError::PayloadTooLarge
                    } else {
                        e
                    }
                })?;
            (answer, None)
        }
    };
    let answer = match (first.status, slot, replay) {
        (StatusCode::UNAUTHORIZED, Some(slot), Some(b)) => {
            // R-EXEC-3/4: one forced refresh, one retry; only a 401 counts.
            drop(first);
            tracing::info!(event = "proxy.retry_after_401", server_id = %server.id);
            let fresh = crate::tools::bearer(s, &server, &slot, true).await?;
            let second = attempt(
                s,
                &server,
                method,
                headers,
                Credential::Bearer(&fresh.token),
                latchkey_egress::hop_body(b),
            )
            .await?;
            if second.status == StatusCode::UNAUTHORIZED {
                tracing::info!(event = "token.reauth_required", server_id = %server.id, via = "proxy");
                return Err(crate::tools::needs_reauth(&server, Reauth::Rejected));
            }
            tracing::info!(
                event = "proxy.recovered_after_refresh",
                server_id = %server.id,
                "MCP request succeeded after refreshing the credential"
            );
            second
        }
        (StatusCode::UNAUTHORIZED, Some(_), None) => {
            // Not replayable: the caller's client retries, and the next request
            // refreshes (the 401 is not cached as a good token).
            return Err(crate::tools::needs_reauth(&server, Reauth::Rejected));
        }
        // A static-header server refused the slot's values: no refresh exists.
        (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, None, _) if opened.is_some() => {
            return Err(crate::service::headers::refused(
                &server,
                first.status.as_u16(),
            ));
        }
        (StatusCode::UNAUTHORIZED, None, _) => return Err(ApiError::Upstream),
        (_, _, _) => first,
    };
    if let Some(scopes) = insufficient_scope(&answer) {
        return Err(ApiError::NeedsScopeUpgrade {
            server_id: server.id.clone(),
            server_name: server.name.clone(),
            scopes,
        });
    }
    respond(&server, answer).await
}

/// Whether `Accept` names `text/event-stream` itself (`*/*`, which every browser
/// navigation sends, does not count).
fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|item| item.split(';').next())
        .any(|essence| essence.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// What an upstream answer is, by its `Content-Type`'s essence.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Json,
    EventStream,
    /// No `Content-Type` at all (a 202 to a notification, a 204, an empty 4xx).
    Untyped,
    /// Anything else: never relayed.
    Other,
}

fn kind(headers: &HeaderMap) -> Kind {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Kind::Untyped;
    };
    let essence = v
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    if essence.eq_ignore_ascii_case("application/json") {
        Kind::Json
    } else if essence.eq_ignore_ascii_case("text/event-stream") {
        Kind::EventStream
    } else {
        Kind::Other
    }
}

/// The typed refusal of an answer Latchkey will not relay: a 4xx keeps its status (an
/// MCP client acts on 404 and 405) with Latchkey's body in place of the upstream's;
/// anything else is a 502.
fn refused(server: &ServerRow, status: StatusCode, cause: String) -> ApiError {
    tracing::info!(event = "proxy.answer_refused", server_id = %server.id, status = status.as_u16());
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        // The upstream's limit is lower than ours: the same answer to the caller.
        return ApiError::PayloadTooLarge;
    }
    ApiError::UpstreamRefused {
        server_id: server.id.clone(),
        server_name: server.name.clone(),
        cause,
        status: if status.is_client_error() {
            status
        } else {
            StatusCode::BAD_GATEWAY
        },
    }
}

/// Answers with a declared length up to this size that are not event streams are read
/// whole and sent with their length: one write instead of a chunked stream, for the
/// common case of a small JSON-RPC response. Anything else streams.
const SIZED_LIMIT: u64 = 256 * 1024;

/// The upstream answer with the allowed headers: SSE streamed as it arrives; other
/// answers up to [`SIZED_LIMIT`] read whole (a break in them is the typed 502), larger
/// ones streamed.
async fn respond(server: &ServerRow, answer: EgressStream) -> Result<Response, ApiError> {
    let kind = kind(&answer.headers);
    let declared = answer
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let status = answer.status;
    match kind {
        Kind::Json | Kind::EventStream => {}
        // Only an answer with nothing in it may come back without a type.
        Kind::Untyped if declared == Some(0) || status == StatusCode::NO_CONTENT => {}
        Kind::Untyped => {
            let headers = relayed_headers(&answer.headers);
            return match answer.read_capped(0).await {
                Ok(_) => Ok(finish(status, headers, Body::empty())),
                Err(_) => Err(refused(
                    server,
                    status,
                    format!(
                        "HTTP {} with a body of no declared type (withheld)",
                        status.as_u16()
                    ),
                )),
            };
        }
        Kind::Other => {
            let shown = answer
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .map(|v| {
                    v.trim()
                        .chars()
                        .filter(|c| c.is_ascii_graphic())
                        .take(64)
                        .collect()
                })
                .unwrap_or_else(|| String::from("an unreadable type"));
            return Err(refused(
                server,
                status,
                format!(
                    "HTTP {} answered with {shown}, which is not an MCP answer (withheld)",
                    status.as_u16()
                ),
            ));
        }
    }
    let headers = relayed_headers(&answer.headers);
    let is_stream = kind == Kind::EventStream;
    let failed = |e: EgressError| {
        tracing::info!(event = "proxy.upstream_body_failed", error = %e);
        ApiError::Upstream
    };
    let body = match declared {
        _ if is_stream => Body::from_stream(answer.into_body()),
        Some(n) if n <= SIZED_LIMIT => {
            let limit = usize::try_from(n).unwrap_or(0);
            Body::from(answer.read_capped(limit).await.map_err(failed)?)
        }
        Some(_) => Body::from_stream(answer.into_body()),
        // No declared length: read up to the same size before answering, so an upstream
        // that breaks off early is the typed 502 rather than a truncated 200.
        None => {
            let mut stream = Box::pin(answer.into_body());
            let mut prefix = bytes::BytesMut::new();
            loop {
                match stream.next().await {
                    None => break Body::from(prefix.freeze()),
                    Some(Err(e)) => return Err(failed(e)),
                    Some(Ok(chunk)) => {
                        prefix.extend_from_slice(&chunk);
                        if prefix.len() as u64 > SIZED_LIMIT {
                            let head = futures_util::stream::once(async move {
                                Ok::<_, EgressError>(prefix.freeze())
                            });
                            break Body::from_stream(head.chain(stream));
                        }
                    }
                }
            }
        }
    };
    Ok(finish(status, headers, body))
}

/// The response headers that cross (see [`RESPONSE_HEADERS`]).
fn relayed_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(RESPONSE_HEADERS.len());
    for name in &RESPONSE_HEADERS {
        for value in upstream.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// The relayed answer. Its `nosniff` and sandboxing CSP come from the application's
/// outer layer (`app::harden`), as for every answer (no upstream CSP crosses:
/// [`RESPONSE_HEADERS`]).
fn finish(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// `/mcp/{server}` as one service in front of the router's layers (issue 18).
///
/// Why this route differs from every other: it is the one hot path, and its answer is
/// mostly someone else's work, so what Latchkey adds per request is what it costs. Each
/// of the router's layers (`axum::middleware::from_fn`) boxes a future and clones the
/// service under it, and the handler's extractors copy the path and the state. This
/// service does the same checks, in the same order, inline:
/// * the request's metrics and log line (`telemetry::count`);
/// * `nosniff` and the sandbox CSP on every answer (`app::harden`);
/// * `Host`/`Origin`, authentication and the session's CSRF token (the guard's
///   `require_principal`, through the same [`latchkey_guard::Guard`] calls);
/// * a JSON body for a state-changing request (`app::require_json`);
/// * one stream per principal for a GET (`limits::one_stream`);
/// * then [`forward`]; every failure is an [`ApiError`] rendered by `crate::error`.
///
/// `app::router` mounts it with `route_service`, outside the layers the other routes
/// get. The gateway's tests hold it to the rest of the API: the hardened headers on a
/// relayed answer (`hostile::relay`), the request log line (`operations`), the guard's
/// refusals and the typed 415 (`proxy`).
#[derive(Debug, Clone)]
pub struct Route {
    s: AppState,
}

impl Route {
    /// The service over `s`.
    pub fn new(s: AppState) -> Self {
        Self { s }
    }
}

/// The route template, as the request metrics name it.
const ROUTE: &str = "/mcp/{server}";

impl tower::Service<Request> for Route {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, std::convert::Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let s = self.s.clone();
        Box::pin(async move { Ok(serve(s, req).await) })
    }
}

/// One request through [`Route`].
async fn serve(s: AppState, req: Request) -> Response {
    let started = std::time::Instant::now();
    let (mut parts, body) = req.into_parts();
    let (mut resp, principal, id) = guarded(&s, &mut parts, body).await;
    crate::rules::harden_headers(resp.headers_mut());
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    let (counter, histogram) = crate::telemetry::request_handles(ROUTE, status);
    counter.increment(1);
    histogram.record(elapsed.as_secs_f64());
    tracing::info!(
        event = "http.request",
        method = %parts.method,
        route = ROUTE,
        status,
        duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        principal = principal.as_ref().map_or("-", |p| p.subject.as_str()),
        server_id = id.as_deref(),
        request_id = Option::<&str>::None,
    );
    resp
}

/// The guard's checks, then [`forward`]; the answer, the principal if one was found and
/// the server id if the path had a readable one.
async fn guarded(
    s: &AppState,
    parts: &mut http::request::Parts,
    body: Body,
) -> (Response, Option<Principal>, Option<String>) {
    let id = match server_param(parts).await {
        Ok(id) => id,
        Err(r) => return (r, None, None),
    };
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()));
    let p = match s.guard.admit(host, &parts.method, &parts.headers).await {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(event = "guard.refused", reason = %e, class = ?e.class());
            return (s.guard.refusal(&e, host), None, Some(id));
        }
    };
    if let Err(e) = crate::rules::json_required(&parts.method, &parts.headers) {
        return (e.into_response(), Some(p), Some(id));
    }
    let slot = if parts.method == Method::GET {
        match crate::limits::stream_slot(&s.streams, &p) {
            Ok(slot) => Some(slot),
            Err(e) => return (e.into_response(), Some(p), Some(id)),
        }
    } else {
        None
    };
    let resp = forward(s, &p, &id, parts, body).await;
    let resp = match slot {
        Some(slot) => resp.map(|body| Body::new(crate::limits::Holding { body, _held: slot })),
        None => resp,
    };
    (resp, Some(p), Some(id))
}

/// The `{server}` segment, percent-decoded (as axum's `Path` would: it is used for the
/// rare path with a `%` in it).
async fn server_param(parts: &mut http::request::Parts) -> Result<String, Response> {
    let raw = parts.uri.path().strip_prefix("/mcp/").unwrap_or_default();
    if !raw.contains('%') {
        return Ok(raw.to_owned());
    }
    use axum::extract::FromRequestParts as _;
    Path::<String>::from_request_parts(parts, &())
        .await
        .map(|Path(id)| id)
        .map_err(IntoResponse::into_response)
}
