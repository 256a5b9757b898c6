//! `PUT` and `DELETE /v1/servers/{id}/headers`: a static-header server's values in the
//! caller's slot. The rules are [`crate::service::headers`].

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use latchkey_guard::Principal;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::fields::{Body, Fields};
use crate::service::headers::{deposit, headers_server, read_values, writable_slot};
use crate::state::AppState;

/// `PUT /v1/servers/{id}/headers` `{"values": {"X-Api-Key": "…"}}`: every configured
/// name, into the caller's slot (the shared one: admins only).
pub async fn put(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let server = headers_server(&s, &p, &id).await?;
    writable_slot(&p, &server)?;
    let mut f = Fields::parse(&body, &["values"])?;
    let values = read_values(&mut f, "values", &server.header_names, true);
    if f.value("values").is_none() {
        f.invalid("values", "required");
    }
    f.finish()?;
    let values = values.unwrap_or_default();
    deposit(&s, &p, &server, &values).await?;
    let shown: BTreeMap<&str, &str> = server
        .header_names
        .iter()
        .map(|n| (n.as_str(), "set"))
        .collect();
    Ok(Json(json!({"headers": shown})))
}

/// `DELETE /v1/servers/{id}/headers`: clears the caller's slot.
pub async fn clear(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let server = headers_server(&s, &p, &id).await?;
    crate::service::headers::clear(&s, &p, &server).await?;
    let shown: BTreeMap<&str, &str> = server
        .header_names
        .iter()
        .map(|n| (n.as_str(), "not set"))
        .collect();
    Ok(Json(json!({"headers": shown})))
}
