//! Deposits (R-API-1, R-API-2): credentials obtained elsewhere, stored in the caller's
//! slot. The slot comes from the principal and the server's `token_scope`, never from
//! the body (R-API-11): a per-user server takes the caller's own slot; a shared server's
//! one slot is for tenant admins only (R-API-9).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use latchkey_core::Secret;
use latchkey_egress::UrlSource;
use latchkey_guard::Principal;
use latchkey_vault::store::{AuditEvent, CredentialRow, ServerRow, Slot, new_id};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::fields::{Body, Fields};
use crate::state::AppState;

const FIELDS: &[&str] = &[
    "server_id",
    "refresh_token",
    "token_endpoint",
    "client_id",
    "client_secret",
    "token_endpoint_auth_method",
    "scopes",
    "issuer",
    "revocation_endpoint",
    "resource",
    "access_token",
    "expires_in",
];
const AUTH_METHODS: &[&str] = &["none", "client_secret_basic", "client_secret_post"];

/// The slot the caller acts on for `server`, or 403 for a shared slot without admin.
fn slot_for(p: &Principal, server: &ServerRow) -> Result<Slot, ApiError> {
    let subject = if server.token_scope == "shared" {
        if !p.is_admin() {
            return Err(ApiError::Forbidden);
        }
        None
    } else {
        Some(p.subject.as_str().to_owned())
    };
    Ok(Slot {
        tenant: p.tenant.as_str().to_owned(),
        server: server.id.clone(),
        subject,
    })
}

async fn audit(s: &AppState, p: &Principal, action: &str, slot: &Slot) {
    let e = AuditEvent {
        tenant: slot.tenant.clone(),
        actor: p.subject.as_str().to_owned(),
        action: action.into(),
        server: Some(slot.server.clone()),
        subject: slot.subject.clone(),
        detail: None,
        at: s.now(),
    };
    if let Err(err) = s.store.audit(&e).await {
        tracing::warn!(event = "audit.failed", action, error = %err);
    }
}

/// `POST /v1/credentials`: validate strictly, seal, replace the slot atomically.
pub async fn deposit(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let mut f = Fields::parse(&body, FIELDS)?;
    let server_id = f.string("server_id", true, 255);
    let refresh_token = f.string("refresh_token", true, 16 * 1024);
    let token_endpoint = f.string("token_endpoint", true, 2048);
    if let Some(t) = &token_endpoint
        && let Err(e) = s.egress.check_url(t, UrlSource::Remote)
    {
        f.invalid("token_endpoint", e.to_string());
    }
    let client_id = f.string("client_id", false, 255);
    let client_secret = f.string("client_secret", false, 4096);
    let auth_method = f.choice("token_endpoint_auth_method", AUTH_METHODS);
    let scopes = f.string("scopes", false, 2048);
    let issuer = f.string("issuer", false, 2048);
    // Where the token may be revoked: recorded with it, the only place a disconnect
    // sends it (without one, a disconnect forgets it locally and says so).
    let revocation_endpoint = f.string("revocation_endpoint", false, 2048);
    if let Some(r) = &revocation_endpoint {
        if let Err(e) = s.egress.check_url(r, UrlSource::Remote) {
            f.invalid("revocation_endpoint", e.to_string());
        }
        if issuer.is_none() {
            f.invalid(
                "revocation_endpoint",
                "only with issuer (the authorization server it belongs to)",
            );
        }
    }
    let resource = f.string("resource", false, 2048);
    let access_token = f.string("access_token", false, 16 * 1024);
    let expires_in = f.unsigned("expires_in");
    if expires_in.is_some() && access_token.is_none() {
        f.invalid("expires_in", "only with access_token");
    }
    if client_secret.is_some() && client_id.is_none() {
        f.invalid("client_secret", "only with client_id");
    }
    f.finish()?;
    let (Some(server_id), Some(refresh_token), Some(token_endpoint)) =
        (server_id, refresh_token, token_endpoint)
    else {
        return Err(ApiError::BadRequest(Vec::new()));
    };
    let server = s.server(&p, &server_id).await?;
    let slot = slot_for(&p, &server)?;
    let now = s.now();
    let mut row = CredentialRow::new(new_id(), slot.clone(), token_endpoint, now);
    row.issuer = issuer;
    row.revocation_endpoint = match (revocation_endpoint, &row.issuer) {
        (Some(r), _) => Some(r),
        (None, Some(issuer)) => discovered_revocation_endpoint(&s, &server, issuer).await,
        (None, None) => None,
    };
    // Bound to the resource it is for: the caller's word, else the server's URL now (a
    // token is only ever sent to the resource it was stored for).
    row.resource = resource.or_else(|| Some(server.url.clone()));
    row.auth_method = auth_method.or_else(|| {
        client_id.as_ref().map(|_| {
            if client_secret.is_some() {
                "client_secret_basic".into()
            } else {
                "none".into()
            }
        })
    });
    row.client_id = client_id;
    row.scopes = scopes;
    row.access_expires_at = access_token
        .as_ref()
        .map(|_| now.saturating_add(i64::try_from(expires_in.unwrap_or(0)).unwrap_or(0)));
    row.initiated_by = Some(p.subject.as_str().to_owned());
    // Sealed last: the values are bound to the row's slot, issuer and endpoints.
    let seal = |row: &CredentialRow, column: &'static str, v: String| {
        s.keyring.seal(&Secret::new(v), row.aad(column))
    };
    row.client_secret = client_secret
        .map(|v| seal(&row, "client_secret", v))
        .transpose()?;
    row.access_token = access_token
        .map(|v| seal(&row, "access_token", v))
        .transpose()?;
    row.refresh_token = Some(seal(&row, "refresh_token", refresh_token)?);
    s.store.upsert_credential(&row).await?;
    // Synchronously, before answering (R-REFRESH-13).
    s.announce(crate::cluster::Change::slot(&slot)).await;
    metrics::counter!("latchkey_deposits_total").increment(1);
    audit(&s, &p, "credential.deposit", &slot).await;
    Ok(Json(json!({"stored": true})))
}

/// The revocation endpoint of the deposit's issuer, when the server's discovered
/// authorization server is that issuer (compared as strings); `None` otherwise, and
/// the token will only be forgotten locally on disconnect.
async fn discovered_revocation_endpoint(
    s: &AppState,
    server: &ServerRow,
    issuer: &str,
) -> Option<String> {
    let d = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        s.discoverer.discover(
            &server.url,
            None,
            latchkey_oauth::discovery::DiscoveryOptions::default(),
        ),
    )
    .await
    .ok()?
    .ok()?;
    (d.issuer == issuer)
        .then(|| d.metadata.revocation_endpoint.clone())
        .flatten()
}

/// `DELETE /v1/credentials/{server_id}`: the caller's slot; 204 whether or not it held
/// anything.
pub async fn delete(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(server_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let server = s.server(&p, &server_id).await?;
    let slot = slot_for(&p, &server)?;
    if let Some(c) = s.store.get_credential(&slot).await? {
        crate::revoke::revoke_all(&s, &server, std::slice::from_ref(&c)).await;
    }
    let deleted = s.store.delete_credential(&slot).await?;
    // Every instance stops serving the slot's token before this answers (R-MULTI-2).
    s.announce(crate::cluster::Change::slot(&slot)).await;
    if deleted {
        audit(&s, &p, "credential.delete", &slot).await;
    }
    Ok(StatusCode::NO_CONTENT)
}
