//! `/v1/servers`: the tenant's MCP servers. The body is read strictly here; the rules
//! (probe, auth type, purge on a change, sealing) are [`crate::service::servers`].
//! Secrets are never returned; a static-header server shows its `header_names` and,
//! for the caller's slot, each as `set` or `not set` ([`crate::headers`]).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use latchkey_egress::UrlSource;
use latchkey_guard::Principal;
use latchkey_vault::store::ServerRow;
use serde::Serialize;

use crate::error::ApiError;
use crate::fields::{Body, Fields, Patch};
use crate::service::servers::ServerInput;
use crate::state::AppState;

const FIELDS: &[&str] = &[
    "name",
    "url",
    "auth_type",
    "token_scope",
    "grant_type",
    "client_id",
    "client_secret",
    "issuer",
    "scopes",
    "header_names",
    "header_values",
    "unprefixed",
];
const AUTH_TYPES: &[&str] = &["oauth", "none", "headers"];
const TOKEN_SCOPES: &[&str] = &["per_user", "shared"];
const GRANT_TYPES: &[&str] = &["authorization_code", "client_credentials"];

/// A server as the API shows it: never a secret, only whether one is set.
#[derive(Debug, Serialize)]
pub struct ServerView {
    id: String,
    name: String,
    url: String,
    auth_type: String,
    token_scope: String,
    grant_type: String,
    client_id: Option<String>,
    has_client_secret: bool,
    issuer: Option<String>,
    scopes: Option<String>,
    /// The headers a `headers` server takes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    header_names: Vec<String>,
    /// Each header as `set` or `not set` in the caller's slot (`headers` servers).
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<std::collections::BTreeMap<String, &'static str>>,
    /// `/mcp` federates the server's tools, prompts and resource URIs under their own
    /// names rather than prefixed with its slug.
    unprefixed: bool,
}

impl ServerView {
    /// The view of `row` for `p`, with its header state for `p`'s slot.
    async fn of(s: &AppState, p: &Principal, row: &ServerRow) -> Result<Self, ApiError> {
        let mut v = Self::from(row);
        v.headers = crate::service::headers::status(s, p, row).await?;
        Ok(v)
    }
}

impl From<&ServerRow> for ServerView {
    fn from(s: &ServerRow) -> Self {
        Self {
            id: s.id.clone(),
            name: s.name.clone(),
            url: s.url.clone(),
            auth_type: s.auth_type.clone(),
            token_scope: s.token_scope.clone(),
            grant_type: s.grant_type.clone(),
            client_id: s.client_id.clone(),
            has_client_secret: s.client_secret.is_some(),
            issuer: s.issuer.clone(),
            scopes: s.scopes.clone(),
            header_names: s.header_names.clone(),
            headers: None,
            unprefixed: s.unprefixed,
        }
    }
}

fn read_input(s: &AppState, body: &[u8], creating: bool) -> Result<ServerInput, ApiError> {
    let mut f = Fields::parse(body, FIELDS)?;
    let name = f.string("name", creating, 255);
    let url = f.string("url", creating, 2048).map(|u| u.trim().to_owned());
    if let Some(u) = &url
        && let Err(e) = s.egress.check_url(u, UrlSource::Operator)
    {
        // A loopback URL refused only because the relaxation is off names the setting.
        f.invalid("url", crate::error::loopback_hint(&s.egress, u, e));
    }
    let input = ServerInput {
        name,
        url,
        auth_type: f.choice("auth_type", AUTH_TYPES),
        token_scope: f.choice("token_scope", TOKEN_SCOPES),
        grant_type: f.choice("grant_type", GRANT_TYPES),
        client_id: f.patch_string("client_id", 255),
        client_secret: f.patch_string("client_secret", 4096),
        // The authorization server the pre-registered client belongs to (its `issuer`,
        // compared as a string): its id and secret are sent there and nowhere else.
        issuer: f.patch_string("issuer", 2048),
        scopes: f.patch_string("scopes", 2048),
        header_names: crate::service::headers::read_names(&mut f, "header_names"),
        header_values: None,
        unprefixed: f.boolean("unprefixed"),
    };
    if creating
        && matches!(input.client_secret, Patch::Set(_))
        && !matches!(input.issuer, Patch::Set(_))
    {
        f.invalid("issuer", crate::service::servers::ISSUER_REQUIRED);
    }
    let mut input = input;
    if f.value("header_values").is_some() {
        if !creating {
            f.invalid(
                "header_values",
                "set values with PUT /v1/servers/{id}/headers (each user their own)",
            );
        } else if let Some(names) = &input.header_names {
            input.header_values =
                crate::service::headers::read_values(&mut f, "header_values", names, true);
        } else if f.value("header_names").is_none() {
            f.invalid("header_values", "give header_names with the values");
        }
    }
    f.finish()?;
    Ok(input)
}

/// `POST /v1/servers` (tenant admins).
pub async fn create(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Body(body): Body,
) -> Result<(StatusCode, Json<ServerView>), ApiError> {
    crate::service::require_admin(&p)?;
    let input = read_input(&s, &body, true)?;
    let row = crate::service::servers::create(&s, &p, input).await?;
    Ok((
        StatusCode::CREATED,
        Json(ServerView::of(&s, &p, &row).await?),
    ))
}

/// `GET /v1/servers`.
pub async fn list(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
) -> Result<Json<Vec<ServerView>>, ApiError> {
    let rows = s.servers_of(&p).await?;
    let mut views = Vec::with_capacity(rows.len());
    for row in &rows {
        views.push(ServerView::of(&s, &p, row).await?);
    }
    Ok(Json(views))
}

/// `GET /v1/servers/{id}`.
pub async fn get(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<ServerView>, ApiError> {
    let row = s.server(&p, &id).await?;
    Ok(Json(ServerView::of(&s, &p, &row).await?))
}

/// `PATCH /v1/servers/{id}` (tenant admins).
pub async fn update(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<Json<ServerView>, ApiError> {
    crate::service::require_admin(&p)?;
    let input = read_input(&s, &body, false)?;
    let row = crate::service::servers::update(&s, &p, &id, input).await?;
    Ok(Json(ServerView::of(&s, &p, &row).await?))
}

/// `DELETE /v1/servers/{id}` (tenant admins): the server and, by cascade, its
/// credentials, flows and clients.
pub async fn delete(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    crate::service::servers::delete(&s, &p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
