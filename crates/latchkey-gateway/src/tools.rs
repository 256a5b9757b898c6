//! Tool calls (R-EXEC-*, R-API-3): `GET /v1/servers/{id}/tools` and
//! `POST /v1/servers/{id}/tools/{name}/call`, through an MCP client with the slot's
//! Bearer injected. An upstream 401 forces one refresh and one retry; a second 401 means
//! the user must reconnect; a 403 never refreshes (a scope upgrade is needed). A failure
//! is an error, never an empty list.

use axum::Json;
use axum::extract::{Path, State};
use http::{HeaderMap, HeaderValue};
use latchkey_broker::token_service::TokenError;
use latchkey_core::Secret;
use latchkey_egress::UrlSource;
use latchkey_guard::Principal;
use latchkey_mcp::{McpClient, McpError};
use latchkey_oauth::challenge;
use latchkey_vault::store::{ServerRow, Slot};
use rmcp::model::ProtocolVersion;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::ApiError;
use crate::fields::Body;

/// Why one upstream attempt failed.
enum Upstream {
    /// 401: the token was not accepted.
    Unauthorized,
    /// 403 with `insufficient_scope`: these scopes are needed.
    Scope(Vec<String>),
    /// Anything else.
    Failed(ApiError),
}

/// The caller's slot of `server`.
pub(crate) fn slot_for(p: &Principal, server: &ServerRow) -> Slot {
    Slot {
        tenant: p.tenant.as_str().to_owned(),
        server: server.id.clone(),
        subject: (server.token_scope != "shared").then(|| p.subject.as_str().to_owned()),
    }
}

/// A token-service failure as the API's typed error.
pub(crate) fn token_failure(server: &ServerRow, e: TokenError) -> ApiError {
    tracing::info!(event = "tools.token_failed", server_id = %server.id, kind = ?e.kind());
    match e {
        TokenError::NotConnected | TokenError::ReauthRequired(_) => ApiError::NeedsReauth {
            server_id: server.id.clone(),
        },
        TokenError::EncryptionKeyMissing => ApiError::EncryptionKeyMissing,
        TokenError::Store(_) => ApiError::Unavailable,
        TokenError::Upstream { .. } | TokenError::Misconfigured(_) => ApiError::Upstream,
    }
}

/// One MCP session with `token`: initialize, then `method`; the result or why not.
async fn exchange(
    s: &AppState,
    server: &ServerRow,
    token: Option<&Secret>,
    method: &str,
    params: Option<Value>,
) -> Result<Value, Upstream> {
    let mut headers = HeaderMap::new();
    if let Some(t) = token {
        let mut v = HeaderValue::from_str(&format!("Bearer {}", t.expose()))
            .map_err(|_| Upstream::Failed(ApiError::Upstream))?;
        v.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, v);
    }
    let mut mcp = McpClient::new(
        s.egress.clone(),
        server.url.clone(),
        UrlSource::Operator,
        ProtocolVersion::V_2025_11_25,
    );
    let init = mcp.initialize_request();
    let ex = send(&mcp, &init, &headers).await?;
    mcp.accept_initialize(&ex);
    let note = mcp.initialized_notification();
    send(&mcp, &note, &headers).await?;
    let req = mcp.request(method, params);
    let result = send(&mcp, &req, &headers).await;
    release(s, &mcp, headers);
    result?.into_result().map_err(|e| {
        tracing::info!(event = "tools.protocol_error", server_id = %server.id, error = %e);
        Upstream::Failed(ApiError::Upstream)
    })
}

/// Ends the upstream session in the background (best-effort `DELETE`): one session
/// per call until connections are pooled.
fn release(s: &AppState, mcp: &McpClient, mut headers: HeaderMap) {
    let Some(id) = mcp
        .session_id()
        .and_then(|id| HeaderValue::from_str(id).ok())
    else {
        return;
    };
    headers.insert(http::HeaderName::from_static("mcp-session-id"), id);
    let mut req = latchkey_egress::EgressRequest::delete(mcp.url(), UrlSource::Operator);
    for (name, value) in &headers {
        req = req.header(name.clone(), value.clone());
    }
    let egress = s.egress.clone();
    tokio::spawn(async move {
        let _ = egress.send(req).await;
    });
}

async fn send(
    mcp: &McpClient,
    message: &Value,
    headers: &HeaderMap,
) -> Result<latchkey_mcp::Exchange, Upstream> {
    let ex = mcp.send(message, headers).await.map_err(|e| {
        tracing::info!(event = "tools.upstream_unreachable", error = %e);
        Upstream::Failed(match e {
            McpError::Egress(_) | McpError::Protocol(_) => ApiError::Upstream,
        })
    })?;
    match ex.status.as_u16() {
        s if (200..300).contains(&s) => Ok(ex),
        401 => Err(Upstream::Unauthorized),
        403 => match challenge::bearer_challenge(ex.www_authenticate()) {
            Some(c) if c.is_insufficient_scope() => Err(Upstream::Scope(c.scopes())),
            _ => Err(Upstream::Failed(ApiError::Forbidden)),
        },
        s if s >= 500 => Err(Upstream::Failed(ApiError::Unavailable)),
        _ => Err(Upstream::Failed(ApiError::Upstream)),
    }
}

/// Runs `method` for the caller's slot of `server`, with the refresh-and-retry rule.
pub(crate) async fn call(
    s: &AppState,
    p: &Principal,
    server: &ServerRow,
    method: &str,
    params: Option<Value>,
) -> Result<Value, ApiError> {
    let fail = |u: Upstream| match u {
        Upstream::Unauthorized => ApiError::NeedsReauth {
            server_id: server.id.clone(),
        },
        Upstream::Scope(scopes) => ApiError::NeedsScopeUpgrade {
            server_id: server.id.clone(),
            scopes,
        },
        Upstream::Failed(e) => e,
    };
    match server.auth_type.as_str() {
        "none" => {
            return exchange(s, server, None, method, params)
                .await
                .map_err(fail);
        }
        "oauth" => {}
        other => {
            return Err(ApiError::BadRequest(vec![crate::error::FieldError {
                field: "server_id".into(),
                message: format!("calls to servers with auth type {other} are not supported yet"),
            }]));
        }
    }
    let slot = slot_for(p, server);
    let token = s
        .tokens
        .access_token(&slot, false)
        .await
        .map_err(|e| token_failure(server, e))?;
    match exchange(s, server, Some(&*token.token), method, params.clone()).await {
        Ok(v) => Ok(v),
        Err(Upstream::Unauthorized) => {
            // R-EXEC-3/4: one forced refresh, one retry.
            tracing::info!(event = "tools.retry_after_401", server_id = %server.id);
            let fresh = s
                .tokens
                .access_token(&slot, true)
                .await
                .map_err(|e| token_failure(server, e))?;
            let retried = exchange(s, server, Some(&*fresh.token), method, params)
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
    let result = call(
        &s,
        &p,
        &server,
        "tools/call",
        Some(json!({"name": name, "arguments": arguments})),
    )
    .await?;
    Ok(Json(result))
}
