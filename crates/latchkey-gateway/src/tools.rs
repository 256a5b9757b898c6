//! Tool calls (R-EXEC-*, R-API-3): `GET /v1/servers/{id}/tools` and
//! `POST /v1/servers/{id}/tools/{name}/call`, through an MCP client with the slot's
//! Bearer injected (or, for a static-header server, the slot's header values: see
//! [`crate::headers`]). An upstream 401 forces one refresh and one retry; a second 401
//! means the user must reconnect; a 403 never refreshes (a scope upgrade is needed). A
//! headers server's 401 or 403 is never retried: its values were refused. A failure is
//! an error, never an empty list.
//!
//! The same rule holds for the answers a request relays back upstream (an elicitation
//! answered by the client, perhaps minutes later on the stateless wire, when the access
//! token may have expired): an answer refused with 401 is POSTed once more with the
//! Bearer of one forced refresh ([`Renewal`], through [`latchkey_mcp::Renew`]); refused
//! again, or with no fresh token to be had (the slot needs consent), the call ends at
//! once with the reauth error a refused request gets, instead of waiting out the
//! request timeout for an answer the upstream will never give.

use axum::Json;
use axum::extract::{Path, State};
use http::{HeaderMap, HeaderValue};
use latchkey_broker::token_service::{ReauthReason, TokenError};
use latchkey_core::Secret;
use latchkey_egress::UrlSource;
use latchkey_guard::Principal;
use latchkey_mcp::{McpClient, McpError};
use latchkey_oauth::challenge;
use latchkey_vault::store::ServerRow;
use rmcp::model::ProtocolVersion;
use serde_json::{Value, json};

use crate::error::{ApiError, Reauth};
use crate::fields::Body;
use crate::state::AppState;
use crate::upstream_sessions::{CredentialMark, Session, SessionKey};

/// Why one upstream attempt failed.
enum Upstream {
    /// 401: the token was not accepted.
    Unauthorized,
    /// 403 with `insufficient_scope`: these scopes are needed.
    Scope(Vec<String>),
    /// 404 to a request in a session: the upstream no longer knows the session.
    SessionGone,
    /// The client cancelled its request; the upstream was told.
    Cancelled,
    /// Anything else.
    Failed(ApiError),
}

pub(crate) use crate::upstream_answer::{Answer, RpcError};

/// What a call sends to authenticate: the headers (a Bearer, a static-header server's
/// values, or nothing) and their mark for the upstream session cache.
struct Auth {
    headers: HeaderMap,
    mark: CredentialMark,
}

impl Auth {
    fn none() -> Self {
        Self {
            headers: HeaderMap::new(),
            mark: CredentialMark::of(None),
        }
    }

    fn bearer(token: &Secret) -> Result<Self, ApiError> {
        let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| ApiError::Upstream)?;
        v.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, v);
        Ok(Self {
            headers,
            mark: CredentialMark::of(Some(token)),
        })
    }
}

/// Fresh headers for an answer the upstream refused with 401 during a request
/// ([`latchkey_mcp::Renew`]): the slot's Bearer after one forced refresh, as a refused
/// request gets in [`run`]. None without a slot to refresh (a server without
/// authorization, or with static header values, which cannot be renewed here).
struct Renewal<'a> {
    s: &'a AppState,
    server: &'a ServerRow,
    slot: Option<&'a latchkey_vault::Slot>,
    /// Why no fresh token could be had, for the call's error ([`send`]).
    failed: std::sync::Mutex<Option<ApiError>>,
}

impl latchkey_mcp::Renew for Renewal<'_> {
    async fn renewed(&self) -> Option<HeaderMap> {
        let slot = self.slot?;
        tracing::info!(event = "tools.answer_retry_after_401", server_id = %self.server.id);
        let fresh = bearer(self.s, self.server, slot, true)
            .await
            .and_then(|t| Auth::bearer(&t.token));
        match fresh {
            Ok(auth) => Some(auth.headers),
            Err(e) => {
                *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                None
            }
        }
    }
}

/// The caller's slot of `server`.
pub(crate) use crate::service::call_slot as slot_for;

/// How a request's answer is read, and who hears what the upstream sends on its stream
/// before the answer ([`crate::downstream`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Relaying<'a> {
    /// Not relayed (listings, subscriptions, `initialize` …): read as it comes like
    /// [`Relaying::Nobody`], so a request the upstream sends before its answer gets
    /// `Method not found` at once rather than waiting for an answer until it times out
    /// (Latchkey's upstream `initialize` declares elicitation, sampling and roots, so an
    /// upstream may ask during any request); notifications are dropped.
    No,
    /// Read as it comes with no client behind it (REST calls): the upstream's requests
    /// get `Method not found`, its progress is dropped.
    Nobody,
    /// Relayed to the client session of a federated request.
    To(&'a crate::downstream::Downstream),
}

impl Relaying<'_> {
    /// Whether something already reached the client (the request is then never re-sent
    /// behind its back).
    fn relayed(self) -> bool {
        matches!(self, Relaying::To(d) if d.relayed())
    }

    /// `request` with the progress token the upstream should use, if the client asked
    /// for progress.
    fn stamp(self, mut request: Value) -> Value {
        if let Relaying::To(d) = self
            && let Some(token) = d.upstream_progress_token()
            && let Some(params) = request.get_mut("params").and_then(Value::as_object_mut)
        {
            let meta = params.entry("_meta").or_insert_with(|| json!({}));
            if let Some(meta) = meta.as_object_mut() {
                meta.insert("progressToken".into(), json!(token));
            }
        }
        request
    }
}

/// What [`exchange`] does in the upstream session kept for a slot.
#[derive(Debug, Clone, Copy)]
enum Op<'a> {
    /// Sends `method` with `params`, unless the session's `initialize` did not declare
    /// `needs`; `via`: who hears what the upstream sends before its answer.
    Request {
        method: &'a str,
        params: &'a Option<Value>,
        needs: Option<&'a str>,
        via: Relaying<'a>,
    },
    /// Nothing more than having the session: it is opened if none is kept
    /// ([`open_session`]).
    Open,
}

impl Op<'_> {
    /// Whether something already reached the client ([`Relaying::relayed`]).
    fn relayed(self) -> bool {
        matches!(self, Op::Request { via, .. } if via.relayed())
    }
}

/// The user must connect `server` (again), for `reason`.
pub(crate) fn needs_reauth(server: &ServerRow, reason: Reauth) -> ApiError {
    ApiError::NeedsReauth {
        server_id: server.id.clone(),
        server_name: server.name.clone(),
        reason,
    }
}

/// A token-service failure as the API's typed error.
pub(crate) fn token_failure(server: &ServerRow, e: TokenError) -> ApiError {
    tracing::info!(event = "tools.token_failed", server_id = %server.id, kind = ?e.kind());
    match e {
        TokenError::NotConnected => needs_reauth(server, Reauth::NotConnected),
        TokenError::ReauthRequired(ReauthReason::Undecryptable) => {
            needs_reauth(server, Reauth::Unreadable)
        }
        TokenError::ReauthRequired(_) => needs_reauth(server, Reauth::Refused),
        TokenError::EncryptionKeyMissing => ApiError::EncryptionKeyMissing,
        TokenError::Store(_) => ApiError::Unavailable,
        TokenError::RefreshPending => ApiError::RefreshPending {
            server_id: server.id.clone(),
        },
        TokenError::Upstream { .. } | TokenError::Misconfigured(_) => ApiError::Upstream,
    }
}

/// `op` on `server` with `auth`, in the upstream session kept for `key`
/// ([`crate::upstream_sessions`]): opened with `initialize` when there is none (or it
/// is stale), and for a request opened again once if the upstream says it is gone.
/// When the request `needs` a capability the session's `initialize` did not declare,
/// nothing is sent: the answer is `Method not found`. The answer (for [`Op::Open`] an
/// empty result: nothing was asked), or why there is none.
/// `slot`: whose credential a refused answer may renew ([`Renewal`]).
async fn exchange(
    s: &AppState,
    server: &ServerRow,
    key: &SessionKey,
    auth: &Auth,
    slot: Option<&latchkey_vault::Slot>,
    op: Op<'_>,
) -> Result<Answer, Upstream> {
    let Auth { headers, mark } = auth;
    let (headers, mark) = (headers, *mark);
    let renew = &Renewal {
        s,
        server,
        slot,
        failed: std::sync::Mutex::new(None),
    };
    let mut mcp = McpClient::new(
        s.egress.clone(),
        server.url.clone(),
        UrlSource::Operator,
        ProtocolVersion::V_2025_11_25,
    );
    mcp.declare(crate::downstream::upstream_capabilities());
    // initialize, a request, and the same two again after a lost session.
    mcp.number_from(s.upstream.reserve_ids(4));
    let session = match s.upstream.get(key, &server.url, mark, s.clock.now()) {
        Some(session) => session,
        None => {
            // One caller opens the session; those arriving meanwhile wait for it and use
            // it (fifty calls after a refresh open one session, not fifty that replace
            // each other).
            let gate = s.upstream.opening(key);
            let _open = gate.lock().await;
            match s.upstream.get(key, &server.url, mark, s.clock.now()) {
                Some(session) => session,
                None => open(s, server, key, mark, &mut mcp, headers, renew).await?,
            }
        }
    };
    let Op::Request {
        method,
        params,
        needs,
        via,
    } = op
    else {
        // The session is open: nothing else was asked.
        return Ok(Answer::Result(Value::Null));
    };
    if needs.is_some_and(|c| !session.offers(c)) {
        return Ok(Answer::Error(RpcError::not_offered()));
    }
    mcp.resume(session.id.clone(), session.negotiated.clone());
    let req = via.stamp(mcp.request(method, params.clone()));
    let ex = match send(server, &mcp, &req, headers, via, renew).await {
        Err(Upstream::SessionGone) => {
            // The upstream forgot it (restarted, expired it): once more, in a new one.
            tracing::info!(event = "tools.upstream_session_reopened", server_id = %server.id);
            s.upstream.forget_session(key, session.id.as_deref());
            mcp.reset_session();
            open(s, server, key, mark, &mut mcp, headers, renew).await?;
            let req = via.stamp(mcp.request(method, params.clone()));
            match send(server, &mcp, &req, headers, via, renew).await {
                Err(Upstream::SessionGone) => Err(Upstream::Failed(upstream_failed(
                    server,
                    "the MCP server lost the session it had just opened (HTTP 404)".into(),
                ))),
                other => other,
            }
        }
        other => other,
    }?;
    if let Some(error) = ex.response.as_ref().and_then(|r| r.get("error")) {
        return Ok(Answer::Error(RpcError::of(error)));
    }
    ex.into_result().map(Answer::Result).map_err(|e| {
        tracing::info!(event = "tools.protocol_error", server_id = %server.id, error = %e);
        Upstream::Failed(upstream_failed(
            server,
            format!("its answer was not usable: {e}"),
        ))
    })
}

/// Opens a session (`initialize`, `notifications/initialized`) and remembers it. A
/// session it replaces (opened with an older token or URL) is left to expire upstream:
/// ending it here could cut off a call still using it.
async fn open(
    s: &AppState,
    server: &ServerRow,
    key: &SessionKey,
    mark: CredentialMark,
    mcp: &mut McpClient,
    headers: &HeaderMap,
    renew: &Renewal<'_>,
) -> Result<Session, Upstream> {
    let init = mcp.initialize_request();
    let ex = send(server, mcp, &init, headers, Relaying::No, renew).await?;
    mcp.accept_initialize(&ex);
    let capabilities = ex
        .response
        .as_ref()
        .and_then(|r| r.pointer("/result/capabilities"))
        .filter(|c| c.is_object())
        .cloned();
    let note = mcp.initialized_notification();
    send(server, mcp, &note, headers, Relaying::No, renew).await?;
    let session = Session {
        id: mcp.session_id().map(str::to_owned),
        negotiated: mcp.negotiated().map(str::to_owned),
        capabilities,
    };
    s.upstream.put(
        key.clone(),
        &server.url,
        mark,
        session.clone(),
        s.clock.now(),
    );
    Ok(session)
}

/// The typed 502 naming `server` and what went wrong with it (never the upstream's
/// own text).
/// The cause is made printable and capped: it may quote the upstream's own error.
pub(crate) fn upstream_failed(server: &ServerRow, cause: String) -> ApiError {
    const MAX: usize = 300;
    let mut cause: String = cause
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX)
        .collect();
    if cause.chars().count() == MAX {
        cause.push('…');
    }
    ApiError::UpstreamRefused {
        server_id: server.id.clone(),
        server_name: server.name.clone(),
        cause,
        status: http::StatusCode::BAD_GATEWAY,
    }
}

/// `message` to `server`; an answer relayed back and refused with 401 is renewed by
/// `renew`, and if that fails the call is [`Upstream::Unauthorized`] (or why no fresh
/// token could be had).
async fn send(
    server: &ServerRow,
    mcp: &McpClient,
    message: &Value,
    headers: &HeaderMap,
    via: Relaying<'_>,
    renew: &Renewal<'_>,
) -> Result<latchkey_mcp::Exchange, Upstream> {
    let sent = match via {
        Relaying::No | Relaying::Nobody => {
            mcp.send_relaying(message, headers, &latchkey_mcp::NoRelay, renew)
                .await
        }
        Relaying::To(client) => mcp.send_relaying(message, headers, client, renew).await,
    };
    let ex = sent.map_err(|e| {
        if matches!(e, McpError::Cancelled) {
            tracing::info!(event = "tools.cancelled", server_id = %server.id);
            return Upstream::Cancelled;
        }
        if matches!(e, McpError::Unauthorized) {
            tracing::info!(event = "tools.answer_unauthorized", server_id = %server.id);
            let failed = renew
                .failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            return failed.map_or(Upstream::Unauthorized, Upstream::Failed);
        }
        tracing::info!(event = "tools.upstream_unreachable", server_id = %server.id, error = %e);
        Upstream::Failed(match e {
            McpError::Egress(e) => upstream_failed(server, format!("cannot be reached: {e}")),
            McpError::Protocol(e) => {
                upstream_failed(server, format!("its answer was not usable: {e}"))
            }
            McpError::Cancelled => upstream_failed(server, "the request was cancelled".into()),
            McpError::Unauthorized => needs_reauth(server, Reauth::Rejected),
        })
    })?;
    match ex.status.as_u16() {
        s if (200..300).contains(&s) => Ok(ex),
        401 => Err(Upstream::Unauthorized),
        403 => match challenge::bearer_challenge(ex.www_authenticate()) {
            Some(c) if c.is_insufficient_scope() => Err(Upstream::Scope(c.scopes())),
            _ => Err(Upstream::Failed(ApiError::Forbidden)),
        },
        // Streamable HTTP: a 404 to a request in a session means the session is gone.
        404 if mcp.session_id().is_some() => Err(Upstream::SessionGone),
        s => {
            tracing::info!(event = "tools.upstream_status", server_id = %server.id, status = s);
            Err(Upstream::Failed(upstream_failed(
                server,
                format!("the MCP server answered HTTP {s}"),
            )))
        }
    }
}

/// The slot's Bearer for a call to `server` (forcing a refresh when `force`), never one
/// issued for another resource: after a server's URL changes, a token for the old one
/// may still be cached on some instance, or deposited or granted by a flow that began
/// before the change, until the purge reaches it. Such a token is dropped from this
/// instance's cache and the slot answers as needing consent; the token is not sent.
pub(crate) async fn bearer(
    s: &AppState,
    server: &ServerRow,
    slot: &latchkey_vault::Slot,
    force: bool,
) -> Result<latchkey_broker::token_service::AccessToken, ApiError> {
    let token = s
        .tokens
        .access_token(slot, force)
        .await
        .map_err(|e| token_failure(server, e))?;
    if token.issued_for(&server.url) {
        return Ok(token);
    }
    tracing::warn!(
        event = "token.resource_mismatch",
        server_id = %server.id,
        "a stored token was issued for another resource than the server's URL; not sent"
    );
    s.tokens.evict(slot);
    Err(needs_reauth(server, Reauth::OtherResource))
}

/// Runs `method` for the caller's slot of `server`, with the refresh-and-retry rule; an
/// upstream's JSON-RPC error is the typed 502 naming the server.
pub(crate) async fn call(
    s: &AppState,
    p: &Principal,
    server: &ServerRow,
    method: &str,
    params: Option<Value>,
) -> Result<Value, ApiError> {
    call_with(s, p, server, method, params, Relaying::No).await
}

/// [`call`], relaying what the upstream sends before its answer as `via` says.
pub(crate) async fn call_with(
    s: &AppState,
    p: &Principal,
    server: &ServerRow,
    method: &str,
    params: Option<Value>,
    via: Relaying<'_>,
) -> Result<Value, ApiError> {
    answer_value(
        server,
        call_via(s, p, server, method, params, None, via).await?,
    )
}

/// The result of `answer`, its JSON-RPC error as the typed failure of [`call`].
pub(crate) fn answer_value(server: &ServerRow, answer: Answer) -> Result<Value, ApiError> {
    match answer {
        Answer::Result(v) => Ok(v),
        Answer::Error(e) => {
            // The same text as before JSON-RPC errors were told apart.
            let e = McpError::Protocol(format!("JSON-RPC error {}", e.raw));
            tracing::info!(event = "tools.protocol_error", server_id = %server.id, error = %e);
            Err(upstream_failed(
                server,
                format!("its answer was not usable: {e}"),
            ))
        }
    }
}

/// [`call`], but the upstream's JSON-RPC error is handed back as it came (the federated
/// endpoint passes some on and skips servers answering `Method not found`). `needs`: the
/// capability the method belongs to; an upstream whose `initialize` did not declare it
/// is not asked.
pub(crate) async fn call_answer(
    s: &AppState,
    p: &Principal,
    server: &ServerRow,
    method: &str,
    params: Option<Value>,
    needs: Option<&str>,
) -> Result<Answer, ApiError> {
    call_via(s, p, server, method, params, needs, Relaying::No).await
}

/// [`call_answer`], relaying what the upstream sends before its answer as `via` says.
/// A request that already relayed something to the client is not retried after a 401
/// (it cannot have: a 401 comes before any stream, but the rule is kept here, not
/// left to that).
pub(crate) async fn call_via(
    s: &AppState,
    p: &Principal,
    server: &ServerRow,
    method: &str,
    params: Option<Value>,
    needs: Option<&str>,
    via: Relaying<'_>,
) -> Result<Answer, ApiError> {
    let op = Op::Request {
        method,
        params: &params,
        needs,
        via,
    };
    run(s, p, server, op).await
}

/// Opens the upstream session of the caller's slot of `server` (for a server without
/// authorization, the caller's own) if none is kept, as a request through
/// [`call_answer`] would (`initialize`, the refresh-and-retry rule), without sending a
/// request in it: the relay's hub needs a session for its stream after the upstream
/// lost the one it had ([`crate::federated`]'s relays). `Err` as [`call_answer`]'s.
pub(crate) async fn open_session(
    s: &AppState,
    p: &Principal,
    server: &ServerRow,
) -> Result<(), ApiError> {
    run(s, p, server, Op::Open).await.map(|_| ())
}

/// `op` for the caller's slot of `server`, with its credential and the
/// refresh-and-retry rule ([`call_via`], [`open_session`]).
async fn run(
    s: &AppState,
    p: &Principal,
    server: &ServerRow,
    op: Op<'_>,
) -> Result<Answer, ApiError> {
    let fail = |u: Upstream| match u {
        Upstream::Unauthorized => needs_reauth(server, Reauth::Rejected),
        Upstream::Scope(scopes) => ApiError::NeedsScopeUpgrade {
            server_id: server.id.clone(),
            server_name: server.name.clone(),
            scopes,
        },
        Upstream::SessionGone => {
            upstream_failed(server, "the MCP server lost the session (HTTP 404)".into())
        }
        Upstream::Cancelled => upstream_failed(server, "the request was cancelled".into()),
        Upstream::Failed(e) => e,
    };
    // A stored URL the egress policy refuses now is the typed 400 naming the setting
    // that allows it, before any credential is looked at or anything is sent.
    crate::error::check_server_url(&s.egress, &server.url, "server_id")?;
    let slot = slot_for(p, server);
    let key = SessionKey {
        tenant: slot.tenant.clone(),
        server: slot.server.clone(),
        subject: slot.subject.clone(),
    };
    match server.auth_type.as_str() {
        "none" => {
            // No slot: the caller's own session.
            let key = SessionKey {
                tenant: p.tenant.as_str().to_owned(),
                server: server.id.clone(),
                subject: Some(p.subject.as_str().to_owned()),
            };
            return exchange(s, server, &key, &Auth::none(), None, op)
                .await
                .map_err(fail);
        }
        "headers" => {
            // The slot's static values; a refusal is the user's to fix (no refresh).
            let opened = crate::service::headers::for_call(s, server, &slot).await?;
            let auth = Auth {
                headers: opened.headers(server)?,
                mark: opened.mark(),
            };
            return exchange(s, server, &key, &auth, None, op)
                .await
                .map_err(|u| match u {
                    Upstream::Unauthorized => crate::service::headers::refused(server, 401),
                    Upstream::Scope(_) | Upstream::Failed(ApiError::Forbidden) => {
                        crate::service::headers::refused(server, 403)
                    }
                    other => fail(other),
                });
        }
        "oauth" => {}
        other => {
            return Err(ApiError::BadRequest(vec![crate::error::FieldError {
                field: "server_id".into(),
                message: format!("calls to servers with auth type {other} are not supported"),
            }]));
        }
    }
    let token = bearer(s, server, &slot, false).await?;
    let auth = Auth::bearer(&token.token)?;
    match exchange(s, server, &key, &auth, Some(&slot), op).await {
        Ok(v) => Ok(v),
        Err(Upstream::Unauthorized) if op.relayed() => Err(fail(Upstream::Unauthorized)),
        Err(Upstream::Unauthorized) => {
            // R-EXEC-3/4: one forced refresh, one retry.
            tracing::info!(event = "tools.retry_after_401", server_id = %server.id);
            let fresh = bearer(s, server, &slot, true).await?;
            let auth = Auth::bearer(&fresh.token)?;
            let retried = exchange(s, server, &key, &auth, Some(&slot), op)
                .await
                .map_err(fail);
            if retried.is_ok() {
                // R-OBS-2: without this line the default level shows the failure only.
                tracing::info!(
                    event = "tools.recovered_after_refresh",
                    server_id = %server.id,
                    "MCP tools loaded after refreshing the credential"
                );
            }
            retried
        }
        Err(other) => Err(fail(other)),
    }
}

/// `GET /v1/servers/{id}/tools`.
pub async fn list(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let server = s.server_for_call(&p, &id).await?;
    let result = call(&s, &p, &server, "tools/list", None).await?;
    let tools = result
        .get("tools")
        .and_then(Value::as_array)
        .cloned()
        .ok_or(ApiError::Upstream)?;
    Ok(Json(json!({"tools": tools})))
}

/// `POST /v1/servers/{id}/tools/{name}/call` with the arguments object as the body.
pub async fn invoke(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Path((id, name)): Path<(String, String)>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let arguments = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                return Err(ApiError::BadRequest(vec![crate::error::FieldError {
                    field: String::new(),
                    message: "the body must be a JSON object of tool arguments".into(),
                }]));
            }
        }
    };
    let server = s.server_for_call(&p, &id).await?;
    // No client to relay to: the upstream's requests during the call get `Method not
    // found`, its progress is dropped.
    let result = call_with(
        &s,
        &p,
        &server,
        "tools/call",
        Some(json!({"name": name, "arguments": arguments})),
        Relaying::Nobody,
    )
    .await?;
    Ok(Json(result))
}

/// The upstream session kept for the caller's slot of `server` (for a server without
/// authorization, the caller's own), as [`call_answer`] finds it.
pub(crate) fn session_key(p: &Principal, server: &ServerRow) -> SessionKey {
    if server.auth_type == "none" {
        return SessionKey {
            tenant: p.tenant.as_str().to_owned(),
            server: server.id.clone(),
            subject: Some(p.subject.as_str().to_owned()),
        };
    }
    let slot = slot_for(p, server);
    SessionKey {
        tenant: slot.tenant,
        server: slot.server,
        subject: slot.subject,
    }
}

/// How long the head of a standalone GET stream may take.
const STREAM_HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What [`listen_stream`] found.
pub(crate) enum Listen {
    /// The stream, open, and the id of the upstream session it belongs to (a new id
    /// is a new session: subscriptions made in another one do not hold in it).
    Open(Box<latchkey_egress::EgressStream>, String),
    /// The upstream offers no such stream (405), keeps no session, or is not a kind of
    /// server that has one: asking again will not help.
    Never,
    /// Not now (no session kept for the slot's current credential, the request failed,
    /// another refusal): a later attempt may succeed.
    NotNow,
    /// The upstream answered 404: it no longer knows the session (it restarted or
    /// expired it), which is forgotten here so that it is not reused; a new session
    /// ([`open_session`]) may have a stream.
    Lost,
    /// The upstream's `initialize` declared none of the capabilities asked for: not
    /// opened (no request made).
    Undeclared,
}

/// The standalone GET stream of the upstream session kept for the caller's slot of
/// `server` (one a request through [`call_answer`] opened): the messages the upstream
/// sends on its own (resource updates, list changes, log messages). Nothing is retried
/// here: the caller (the relay's hub) decides whether and when to ask again, by
/// [`Listen`]. With `declared` (JSON pointers into the upstream's `capabilities`, such
/// as `/tools/listChanged`), the stream is opened only if one of them is `true`. `Err`
/// when the slot's credential is not usable.
pub(crate) async fn listen_stream(
    s: &AppState,
    p: &Principal,
    server: &ServerRow,
    declared: &[&str],
) -> Result<Listen, ApiError> {
    crate::error::check_server_url(&s.egress, &server.url, "server_id")?;
    let key = session_key(p, server);
    let auth = match server.auth_type.as_str() {
        "none" => Auth::none(),
        "headers" => {
            let slot = slot_for(p, server);
            let opened = crate::service::headers::for_call(s, server, &slot).await?;
            Auth {
                headers: opened.headers(server)?,
                mark: opened.mark(),
            }
        }
        "oauth" => {
            let slot = slot_for(p, server);
            let token = bearer(s, server, &slot, false).await?;
            Auth::bearer(&token.token)?
        }
        _ => return Ok(Listen::Never),
    };
    let Some(session) = s.upstream.get(&key, &server.url, auth.mark, s.clock.now()) else {
        return Ok(Listen::NotNow);
    };
    let Some(id) = session.id.as_deref() else {
        // A server that keeps no session has no stream of its own messages for it.
        return Ok(Listen::Never);
    };
    let caps = session.capabilities.as_ref();
    if !declared.is_empty()
        && !declared.iter().any(|d| {
            caps.and_then(|c| c.pointer(d))
                .is_some_and(|v| v.as_bool() == Some(true))
        })
    {
        return Ok(Listen::Undeclared);
    }
    let mut headers = auth.headers;
    headers.insert(
        http::header::ACCEPT,
        HeaderValue::from_static("text/event-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(id) {
        headers.insert("mcp-session-id", v);
    }
    if let Some(v) = session
        .negotiated
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        headers.insert("mcp-protocol-version", v);
    }
    let mut req = latchkey_egress::EgressRequest::get(server.url.clone(), UrlSource::Operator, 0);
    req.headers = headers;
    let opened = match s.egress.open(req, None, STREAM_HEAD_TIMEOUT).await {
        Ok(o) => o,
        Err(e) => {
            tracing::info!(event = "mcp.federated.stream_failed", server_id = %server.id, error = %e);
            return Ok(Listen::NotNow);
        }
    };
    let event_stream = opened
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !opened.status.is_success() || !event_stream {
        tracing::info!(
            event = "mcp.federated.stream_refused",
            server_id = %server.id,
            status = opened.status.as_u16()
        );
        return Ok(match opened.status {
            http::StatusCode::METHOD_NOT_ALLOWED => Listen::Never,
            // Streamable HTTP: a 404 with a session id means the session is gone, for
            // the requests of the slot too (as [`exchange`] forgets it on a POST).
            http::StatusCode::NOT_FOUND => {
                s.upstream.forget_session(&key, Some(id));
                Listen::Lost
            }
            _ => Listen::NotNow,
        });
    }
    Ok(Listen::Open(Box::new(opened), id.to_owned()))
}
