//! `POST /v1/credentials` and `DELETE /v1/credentials/{server_id}`: the body read
//! strictly, the rules in [`crate::service::credentials`].

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use latchkey_core::Secret;
use latchkey_egress::UrlSource;
use latchkey_guard::Principal;
use serde_json::{Value, json};

use crate::service::credentials::Deposit;

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
    crate::service::credentials::deposit(
        &s,
        &p,
        Deposit {
            server_id,
            refresh_token: Secret::new(refresh_token),
            token_endpoint,
            client_id,
            client_secret: client_secret.map(Secret::new),
            auth_method,
            scopes,
            issuer,
            revocation_endpoint,
            resource,
            access_token: access_token.map(Secret::new),
            expires_in,
        },
    )
    .await?;
    Ok(Json(json!({"stored": true})))
}

/// `DELETE /v1/credentials/{server_id}`: the caller's slot; 204 whether or not it held
/// anything.
pub async fn delete(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(server_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    crate::service::credentials::disconnect(&s, &p, &server_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
