//! Server changes (R-DISC-9..11, R-API-10, R-STORE-15): create and edit probe the
//! server's auth type when none is given; an edit keeps the stored auth type unless the
//! URL changes; a pre-registered client id means OAuth; an explicit auth type always
//! wins. A change of URL or of the OAuth fingerprint purges every credential, pending
//! flow and registered client of the server, on every instance, before the new row is
//! written, and revokes the old tokens after. Secrets are sealed on the way in.
//!
//! Static-header servers ([`crate::headers`]): `header_names` mean auth type `headers`
//! (and are required for it); values given at create are sent by the probe, so a
//! wrong key is the 422 naming the status the server gave, and deposited into the
//! creator's slot once the row is written. Without values the probe's 401 is the
//! expected verdict. A change of URL or of the names purges every slot's values.

use std::collections::BTreeMap;

use latchkey_core::Secret;
use latchkey_egress::UrlSource;
use latchkey_guard::Principal;
use latchkey_oauth::probe::{self, AuthType};
use latchkey_vault::store::{ServerRow, new_id};

use crate::cluster::Change;
use crate::error::ApiError;
use crate::fields::Patch;
use crate::state::AppState;

/// The validated body of a create or an edit.
#[derive(Debug)]
pub struct ServerInput {
    pub name: Option<String>,
    pub url: Option<String>,
    pub auth_type: Option<String>,
    pub token_scope: Option<String>,
    pub grant_type: Option<String>,
    pub client_id: Patch<String>,
    pub client_secret: Patch<String>,
    pub issuer: Patch<String>,
    pub scopes: Patch<String>,
    /// The headers of a static-header server (replacing the stored ones).
    pub header_names: Option<Vec<String>>,
    /// Values for the creator's slot (create only), checked by the probe.
    pub header_values: Option<BTreeMap<String, Secret>>,
    /// `/mcp` names the server's tools, prompts and resource URIs as the server does
    /// (no slug prefix); a name another server also has is then refused, never guessed.
    pub unprefixed: Option<bool>,
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

/// Probes a static-header server at `url`, with `values` when given: a URL that gives
/// no MCP answer is refused as by [`probed`]; with values, a 401 or 403 means the server
/// refused them (the 422 naming its status). Without values a 401 is what is expected.
async fn probe_headers(
    s: &AppState,
    row: &ServerRow,
    values: Option<&BTreeMap<String, Secret>>,
) -> Result<(), ApiError> {
    let mut headers = http::HeaderMap::new();
    for (name, value) in values.into_iter().flatten() {
        let (Ok(n), Ok(mut v)) = (
            http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()),
            http::HeaderValue::from_str(value.expose()),
        ) else {
            return Err(field_error("header_values", "not a valid header"));
        };
        v.set_sensitive(true);
        headers.insert(n, v);
    }
    let p = probe::probe_with(&s.egress, &row.url, UrlSource::Operator, &headers).await;
    match (p.status, p.problem) {
        (Some(status @ (401 | 403)), _) if values.is_some() => Err(ApiError::ProbeFailed(format!(
            "the server refused the given header values (HTTP {status}); check them"
        ))),
        (_, Some(why)) => Err(ApiError::ProbeFailed(format!(
            "{why}; set auth_type to add it anyway"
        ))),
        (_, None) => Ok(()),
    }
}

/// The header rules of a server about to be written: names exactly for `headers`.
/// `probed`: the auth type is the probe's verdict (a 401 without an OAuth challenge).
fn check_header_names(row: &ServerRow, probed: bool) -> Result<(), ApiError> {
    match (row.auth_type == "headers", row.header_names.is_empty()) {
        (true, true) if probed => Err(field_error(
            "header_names",
            "the server asks for a credential without an OAuth challenge: it takes static headers (an API key); give their names (e.g. [\"X-Api-Key\"]) and, if you have them, header_values",
        )),
        (true, true) => Err(field_error(
            "header_names",
            "required for auth type headers: the names of the headers the server takes (e.g. [\"X-Api-Key\"])",
        )),
        (false, false) => Err(field_error("header_names", "only for auth type headers")),
        _ => Ok(()),
    }
}

pub(crate) const ISSUER_REQUIRED: &str = "required with a client secret: the issuer of the authorization server the client is registered at (its secret is sent there and nowhere else)";

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

/// Creates a server in `p`'s tenant (tenant admins; not through an API key restricted
/// to some servers, which acts on those alone: 403).
pub async fn create(
    s: &AppState,
    p: &Principal,
    input: ServerInput,
) -> Result<ServerRow, ApiError> {
    super::require_admin(p)?;
    if p.servers.is_some() {
        return Err(ApiError::Forbidden);
    }
    let (Some(name), Some(url)) = (input.name, input.url) else {
        // `read_input` requires both when creating.
        return Err(ApiError::BadRequest(Vec::new()));
    };
    name_is_free(s, p, &name, None).await?;
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
    if let Some(names) = input.header_names {
        row.header_names = names;
    }
    if let Some(u) = input.unprefixed {
        row.unprefixed = u;
    }
    let explicit = input.auth_type.is_some();
    row.auth_type = match (input.auth_type, &row.client_id, row.header_names.is_empty()) {
        (Some(explicit), _, _) => explicit,
        (None, Some(_), _) => AuthType::Oauth.as_str().into(),
        // Header names say what the server takes; the probe below checks the URL.
        (None, None, false) => AuthType::Headers.as_str().into(),
        (None, None, true) => probed(s, &row.url).await?,
    };
    check_header_names(&row, !explicit && row.client_id.is_none())?;
    let values = input.header_values;
    if row.auth_type == "headers" && (values.is_some() || !explicit) {
        probe_headers(s, &row, values.as_ref()).await?;
    }
    s.store.create_server(&row, s.now()).await?;
    // A server without auth has tools at once; a same-named one renames the other's.
    s.announce(Change::Server {
        tenant: p.tenant.as_str().to_owned(),
        server: id.to_owned(),
        url: None,
    })
    .await;
    super::audit_event(s, p, "server.create", &id, None, None).await;
    if let Some(values) = values {
        // Into the creator's slot, now that the row exists.
        crate::service::headers::deposit(s, p, &row, &values).await?;
    }
    Ok(row)
}

/// Edits server `id` of `p`'s tenant (tenant admins), purging what the old settings
/// issued when the URL or the OAuth fingerprint changes.
pub async fn update(
    s: &AppState,
    p: &Principal,
    id: &str,
    input: ServerInput,
) -> Result<ServerRow, ApiError> {
    super::require_admin(p)?;
    let old = s.server(p, id).await?;
    let mut row = old.clone();
    if let Some(n) = input.name {
        name_is_free(s, p, &n, Some(id)).await?;
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
    // Naming only: nothing is purged (the announcement below renames on every instance).
    if let Some(u) = input.unprefixed {
        row.unprefixed = u;
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
    let names_given = input.header_names.is_some();
    if let Some(names) = input.header_names {
        row.header_names = names;
    }
    let explicit = input.auth_type.is_some();
    row.auth_type = match (input.auth_type, &row.client_id, url_changed) {
        (Some(explicit), _, _) => explicit,
        (None, Some(_), _) => AuthType::Oauth.as_str().into(),
        // A static-header server stays one at its new URL (the probe checks it answers).
        (None, None, true) if !row.header_names.is_empty() => AuthType::Headers.as_str().into(),
        (None, None, true) => probed(s, &row.url).await?,
        (None, None, false) => old.auth_type.clone(),
    };
    if row.auth_type != "headers" && !names_given {
        // No longer a static-header server: its names go with its values.
        row.header_names.clear();
    }
    // A server stored before header names existed keeps working for unrelated edits.
    if names_given || url_changed || row.auth_type != old.auth_type {
        check_header_names(&row, !explicit && url_changed && row.client_id.is_none())?;
    }
    if row.auth_type == "headers" && url_changed && !explicit {
        probe_headers(s, &row, None).await?;
    }
    let headers_changed = row.header_names != old.header_names;
    let oauth_changed = secret_changed
        || row.auth_type != old.auth_type
        || row.client_id != old.client_id
        || row.grant_type != old.grant_type
        || row.scopes != old.scopes
        || issuer_changed;
    // The values were set for the old URL and names: purged with the rest.
    let fingerprint_changed = url_changed || oauth_changed || headers_changed;
    let mut detail = None;
    let mut to_revoke = Vec::new();
    if fingerprint_changed {
        // The old settings' credentials go *before* the new settings take effect, on
        // every instance: a call that reads the new row finds no token issued under the
        // old one (and the token path refuses any it might still meet: a token goes only
        // to the resource it was issued for). Unrelated edits (name, slot kind) purge
        // nothing. A purge that fails changes nothing.
        to_revoke = s.store.server_credentials(p.tenant.as_str(), id).await?;
        let purged = s.store.purge_server(p.tenant.as_str(), id).await;
        s.announce(Change::Server {
            tenant: p.tenant.as_str().to_owned(),
            server: id.to_owned(),
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
        server: id.to_owned(),
        url: Some(old.url.clone()),
    })
    .await;
    if !updated? {
        return Err(ApiError::NotFound);
    }
    // Revoked at the authorization server last (network calls, up to its budget), with
    // the old settings, which issued the tokens.
    if !to_revoke.is_empty() {
        crate::revoke::revoke_all(s, &old, &to_revoke).await;
    }
    super::audit_event(s, p, "server.update", id, None, detail).await;
    Ok(row)
}

/// Deletes server `id` of `p`'s tenant (tenant admins): its tokens revoked first (after
/// the tenant check), then the row and, by cascade, its credentials, flows and clients.
pub async fn delete(s: &AppState, p: &Principal, id: &str) -> Result<(), ApiError> {
    super::require_admin(p)?;
    // The tenant check comes first: only a server of the caller's tenant is revoked.
    let server = s.server(p, id).await?;
    let creds = s.store.server_credentials(p.tenant.as_str(), id).await?;
    crate::revoke::revoke_all(s, &server, &creds).await;
    let deleted = s.store.delete_server(p.tenant.as_str(), id).await;
    s.announce(Change::Server {
        tenant: p.tenant.as_str().to_owned(),
        server: id.to_owned(),
        url: Some(server.url.clone()),
    })
    .await;
    if !deleted? {
        return Err(ApiError::NotFound);
    }
    super::audit_event(s, p, "server.delete", id, None, None).await;
    Ok(())
}
