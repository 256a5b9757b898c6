//! `/v1/servers`: the tenant's MCP servers (R-DISC-9..11, R-API-10, R-STORE-15).
//!
//! Create and edit probe the server's auth type when none is given; an edit keeps the
//! stored auth type unless the URL changes; a pre-registered client id means OAuth; an
//! explicit auth type always wins. A change of URL or of the OAuth fingerprint purges
//! every credential, pending flow and registered client of the server. Secrets are
//! sealed on the way in and never returned.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use latchkey_core::Secret;
use latchkey_egress::UrlSource;
use latchkey_guard::Principal;
use latchkey_oauth::probe::{self, AuthType};
use latchkey_vault::store::{AuditEvent, ServerRow, new_id};
use serde::Serialize;

use crate::cluster::Change;
use crate::error::ApiError;
use crate::fields::{Body, Fields, Patch};
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
        }
    }
}

fn require_admin(p: &Principal) -> Result<(), ApiError> {
    if p.is_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

async fn audit(s: &AppState, p: &Principal, action: &str, server: &str, detail: Option<String>) {
    let e = AuditEvent {
        tenant: p.tenant.as_str().to_owned(),
        actor: p.subject.as_str().to_owned(),
        action: action.into(),
        server: Some(server.into()),
        subject: None,
        detail,
        at: s.now(),
    };
    if let Err(err) = s.store.audit(&e).await {
        tracing::warn!(event = "audit.failed", action, error = %err);
    }
}

/// The validated body of a create or an edit.
struct Input {
    name: Option<String>,
    url: Option<String>,
    auth_type: Option<String>,
    token_scope: Option<String>,
    grant_type: Option<String>,
    client_id: Patch<String>,
    client_secret: Patch<String>,
    issuer: Patch<String>,
    scopes: Patch<String>,
}

fn read_input(s: &AppState, body: &[u8], creating: bool) -> Result<Input, ApiError> {
    let mut f = Fields::parse(body, FIELDS)?;
    let name = f.string("name", creating, 255);
    let url = f.string("url", creating, 2048).map(|u| u.trim().to_owned());
    if let Some(u) = &url
        && let Err(e) = s.egress.check_url(u, UrlSource::Operator)
    {
        f.invalid("url", e.to_string());
    }
    let input = Input {
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
    };
    if creating
        && matches!(input.client_secret, Patch::Set(_))
        && !matches!(input.issuer, Patch::Set(_))
    {
        f.invalid("issuer", ISSUER_REQUIRED);
    }
    f.finish()?;
    Ok(input)
}

/// The auth type the probe finds at `url`; a URL that gives no MCP answer (a wrong
/// path, port or host, a server that is down) is refused with the probe's reason rather
/// than saved as a server that cannot work. An explicit `auth_type` skips this.
async fn probed(s: &AppState, url: &str) -> Result<String, ApiError> {
    let p = probe::probe(&s.egress, url, UrlSource::Operator).await;
    match p.problem {
        Some(why) => Err(ApiError::ProbeFailed(format!(
            "{why}; set auth_type to add it anyway"
        ))),
        None => Ok(p.auth_type.as_str().into()),
    }
}

/// Server names are unique in a tenant (people and the CLI call servers by name): a
/// name another server of the tenant has is the typed 409 naming that server.
async fn name_is_free(
    s: &AppState,
    p: &Principal,
    name: &str,
    this: Option<&str>,
) -> Result<(), ApiError> {
    let taken = s
        .store
        .list_servers(p.tenant.as_str())
        .await?
        .into_iter()
        .find(|other| other.name == name && Some(other.id.as_str()) != this);
    match taken {
        Some(other) => Err(ApiError::NameTaken {
            existing_id: other.id,
        }),
        None => Ok(()),
    }
}

const ISSUER_REQUIRED: &str = "required with a client secret: the issuer of the authorization server the client is registered at (its secret is sent there and nowhere else)";

fn field_error(field: &str, message: &str) -> ApiError {
    ApiError::BadRequest(vec![crate::error::FieldError {
        field: field.into(),
        message: message.into(),
    }])
}

fn apply<T>(slot: &mut Option<T>, p: Patch<T>) {
    match p {
        Patch::Keep => {}
        Patch::Clear => *slot = None,
        Patch::Set(v) => *slot = Some(v),
    }
}

/// `POST /v1/servers` (tenant admins).
pub async fn create(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Body(body): Body,
) -> Result<(StatusCode, Json<ServerView>), ApiError> {
    require_admin(&p)?;
    let input = read_input(&s, &body, true)?;
    let (Some(name), Some(url)) = (input.name, input.url) else {
        // `read_input` requires both when creating.
        return Err(ApiError::BadRequest(Vec::new()));
    };
    name_is_free(&s, &p, &name, None).await?;
    let id = new_id();
    let mut row = ServerRow::new(id.clone(), p.tenant.as_str(), name, url);
    apply(&mut row.client_id, input.client_id);
    apply(&mut row.scopes, input.scopes);
    apply(&mut row.issuer, input.issuer);
    if let Some(t) = input.token_scope {
        row.token_scope = t;
    }
    if let Some(g) = input.grant_type {
        row.grant_type = g;
    }
    if let Patch::Set(secret) = input.client_secret {
        row.client_secret = Some(s.keyring.seal(&Secret::new(secret), row.secret_aad())?);
    }
    row.auth_type = match (input.auth_type, &row.client_id) {
        (Some(explicit), _) => explicit,
        (None, Some(_)) => AuthType::Oauth.as_str().into(),
        (None, None) => probed(&s, &row.url).await?,
    };
    s.store.create_server(&row, s.now()).await?;
    // A server without auth has tools at once; a same-named one renames the other's.
    s.announce(Change::Server {
        tenant: p.tenant.as_str().to_owned(),
        server: id.clone(),
        url: None,
    })
    .await;
    audit(&s, &p, "server.create", &id, None).await;
    Ok((StatusCode::CREATED, Json(ServerView::from(&row))))
}

/// `GET /v1/servers`.
pub async fn list(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
) -> Result<Json<Vec<ServerView>>, ApiError> {
    let rows = s.store.list_servers(p.tenant.as_str()).await?;
    Ok(Json(rows.iter().map(ServerView::from).collect()))
}

/// `GET /v1/servers/{id}`.
pub async fn get(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<ServerView>, ApiError> {
    let row = s.server(&p, &id).await?;
    Ok(Json(ServerView::from(&row)))
}

/// `PATCH /v1/servers/{id}` (tenant admins).
pub async fn update(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<Json<ServerView>, ApiError> {
    require_admin(&p)?;
    let input = read_input(&s, &body, false)?;
    let old = s.server(&p, &id).await?;
    let mut row = old.clone();
    if let Some(n) = input.name {
        name_is_free(&s, &p, &n, Some(&id)).await?;
        row.name = n;
    }
    let url_changed = input
        .url
        .as_ref()
        .is_some_and(|u| u.trim() != old.url.trim());
    if let Some(u) = input.url {
        row.url = u;
    }
    if let Some(t) = input.token_scope {
        row.token_scope = t;
    }
    if let Some(g) = input.grant_type {
        row.grant_type = g;
    }
    apply(&mut row.client_id, input.client_id);
    apply(&mut row.scopes, input.scopes);
    apply(&mut row.issuer, input.issuer);
    let issuer_changed = row.issuer != old.issuer;
    let secret_given = matches!(input.client_secret, Patch::Set(_));
    if secret_given && row.issuer.is_none() {
        return Err(field_error("issuer", ISSUER_REQUIRED));
    }
    if issuer_changed && old.client_secret.is_some() && matches!(input.client_secret, Patch::Keep) {
        // The stored secret belongs to the old issuer: it is never carried over.
        return Err(field_error(
            "client_secret",
            "give the client secret again (or null) when the issuer changes: a secret belongs to one authorization server",
        ));
    }
    let mut secret_changed = false;
    match input.client_secret {
        Patch::Keep => {}
        Patch::Clear => {
            secret_changed = old.client_secret.is_some();
            row.client_secret = None;
        }
        Patch::Set(secret) => {
            // Compared by decrypting the stored one; a value that does not decrypt
            // counts as changed (R-STORE-15).
            secret_changed = match old
                .client_secret
                .as_deref()
                .map(|e| s.keyring.open(e, old.secret_aad()))
            {
                Some(Ok(stored)) => stored.expose() != secret,
                _ => true,
            };
            row.client_secret = Some(s.keyring.seal(&Secret::new(secret), row.secret_aad())?);
        }
    }
    row.auth_type = match (input.auth_type, &row.client_id, url_changed) {
        (Some(explicit), _, _) => explicit,
        (None, Some(_), _) => AuthType::Oauth.as_str().into(),
        (None, None, true) => probed(&s, &row.url).await?,
        (None, None, false) => old.auth_type.clone(),
    };
    let oauth_changed = secret_changed
        || row.auth_type != old.auth_type
        || row.client_id != old.client_id
        || row.grant_type != old.grant_type
        || row.scopes != old.scopes
        || issuer_changed;
    let fingerprint_changed = url_changed || oauth_changed;
    let mut detail = None;
    let mut to_revoke = Vec::new();
    if fingerprint_changed {
        // The old settings' credentials go *before* the new settings take effect, on
        // every instance: a call that reads the new row finds no token issued under the
        // old one (and the token path refuses any it might still meet: a token goes only
        // to the resource it was issued for). Unrelated edits (name, slot kind) purge
        // nothing. A purge that fails changes nothing.
        to_revoke = s.store.server_credentials(p.tenant.as_str(), &id).await?;
        let purged = s.store.purge_server(p.tenant.as_str(), &id).await;
        s.announce(Change::Server {
            tenant: p.tenant.as_str().to_owned(),
            server: id.clone(),
            url: Some(old.url.clone()),
        })
        .await;
        match purged {
            Ok(n) => {
                tracing::info!(
                    event = "mcp.oauth_tokens_purged_on_config_change",
                    server_id = %id,
                    url_changed,
                    oauth_changed,
                    purged = n,
                );
                detail = Some(format!("purged {n} credentials"));
            }
            Err(e) => {
                tracing::warn!(
                    event = "mcp.oauth_purge_on_config_change_failed",
                    server_id = %id,
                    error = %e
                );
                return Err(e.into());
            }
        }
    }
    let updated = s.store.update_server(&row, s.now()).await;
    // Told to every instance before answering, whatever happens next (R-MULTI-2).
    s.announce(Change::Server {
        tenant: p.tenant.as_str().to_owned(),
        server: id.clone(),
        url: Some(old.url.clone()),
    })
    .await;
    if !updated? {
        return Err(ApiError::NotFound);
    }
    // Revoked at the authorization server last (network calls, up to its budget), with
    // the old settings, which issued the tokens.
    if !to_revoke.is_empty() {
        crate::revoke::revoke_all(&s, &old, &to_revoke).await;
    }
    audit(&s, &p, "server.update", &id, detail).await;
    Ok(Json(ServerView::from(&row)))
}

/// `DELETE /v1/servers/{id}` (tenant admins): the server and, by cascade, its
/// credentials, flows and clients.
pub async fn delete(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_admin(&p)?;
    // The tenant check comes first: only a server of the caller's tenant is revoked.
    let server = s.server(&p, &id).await?;
    let creds = s.store.server_credentials(p.tenant.as_str(), &id).await?;
    crate::revoke::revoke_all(&s, &server, &creds).await;
    let deleted = s.store.delete_server(p.tenant.as_str(), &id).await;
    s.announce(Change::Server {
        tenant: p.tenant.as_str().to_owned(),
        server: id.clone(),
        url: Some(server.url.clone()),
    })
    .await;
    if !deleted? {
        return Err(ApiError::NotFound);
    }
    audit(&s, &p, "server.delete", &id, None).await;
    Ok(StatusCode::NO_CONTENT)
}
