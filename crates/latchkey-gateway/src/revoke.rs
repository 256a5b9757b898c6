//! Best-effort revocation before a credential is deleted or purged (R-STORE-16,
//! R-API-8): the refresh token, then the access token, each with its
//! `token_type_hint`, at the revocation endpoint recorded with the credential when it
//! was issued or deposited, never at one discovered now (a server's metadata may name
//! another authorization server by then). The client is the credential's own, or the
//! server's pre-registered one only when that is bound to the credential's issuer.
//! A credential with no recorded endpoint is forgotten locally, and that is said (log
//! and audit record). Callers run this only after the tenant check (the server was
//! loaded for the caller's tenant). It never fails the operation it precedes and never
//! takes longer than [`BUDGET`].

use std::time::Duration;

use latchkey_oauth::client_auth::{AuthMethod, ClientCredentials};
use latchkey_oauth::revocation::{self, TokenTypeHint};
use latchkey_vault::store::{AuditEvent, CredentialRow, ServerRow};

use crate::state::AppState;

/// The most time revocation may add to a delete or purge.
pub const BUDGET: Duration = Duration::from_secs(10);

/// What is said when a token is only forgotten locally.
pub const NOT_REVOKED: &str =
    "not revoked at the authorization server: no revocation endpoint recorded";

/// Revokes `creds` of `server`; logs and swallows every failure.
pub async fn revoke_all(s: &AppState, server: &ServerRow, creds: &[CredentialRow]) {
    if creds.is_empty() {
        return;
    }
    let work = async {
        for c in creds {
            match (c.revocation_endpoint.as_deref(), c.issuer.as_deref()) {
                (Some(endpoint), Some(issuer)) => {
                    revoke_one(s, server, c, endpoint, issuer).await;
                }
                _ => not_revoked(s, c).await,
            }
        }
    };
    if tokio::time::timeout(BUDGET, work).await.is_err() {
        tracing::info!(event = "revocation.timeout", server_id = %server.id);
    }
}

/// The credential is forgotten without telling its authorization server: said in the
/// log and the tenant's audit log (ids only).
async fn not_revoked(s: &AppState, c: &CredentialRow) {
    tracing::info!(
        event = "revocation.skipped",
        tenant = %c.slot.tenant,
        server_id = %c.slot.server,
        credential_id = %c.id,
        reason = NOT_REVOKED,
    );
    let e = AuditEvent {
        tenant: c.slot.tenant.clone(),
        actor: "latchkey".into(),
        action: "token.not_revoked".into(),
        server: Some(c.slot.server.clone()),
        subject: c.slot.subject.clone(),
        detail: Some(NOT_REVOKED.into()),
        at: s.now(),
    };
    if let Err(err) = s.store.audit(&e).await {
        tracing::warn!(event = "audit.failed", action = "token.not_revoked", error = %err);
    }
}

/// The client to authenticate with at `issuer`: the credential's own (sealed with it,
/// so bound to its issuer), else the server's pre-registered client if that is bound
/// to the same issuer (compared as strings). Never a client of another issuer.
fn client_of(
    s: &AppState,
    server: &ServerRow,
    c: &CredentialRow,
    issuer: &str,
) -> Option<ClientCredentials> {
    let method = |m: Option<&str>| m.and_then(|m| m.parse().ok()).unwrap_or(AuthMethod::None);
    if let Some(id) = &c.client_id {
        let secret = c
            .client_secret
            .as_deref()
            .and_then(|env| s.keyring.open(env, c.aad("client_secret")).ok());
        return Some(match secret {
            Some(sec) => {
                ClientCredentials::with_secret(id.clone(), sec, method(c.auth_method.as_deref()))
            }
            None => ClientCredentials::public(id.clone()),
        });
    }
    if server.issuer.as_deref() != Some(issuer) {
        return None;
    }
    let id = server.client_id.clone()?;
    let secret = server
        .client_secret
        .as_deref()
        .and_then(|env| s.keyring.open(env, server.secret_aad()).ok());
    Some(match secret {
        Some(sec) => ClientCredentials::with_secret(id, sec, AuthMethod::ClientSecretBasic),
        None => ClientCredentials::public(id),
    })
}

async fn revoke_one(
    s: &AppState,
    server: &ServerRow,
    c: &CredentialRow,
    endpoint: &str,
    issuer: &str,
) {
    let Some(client) = client_of(s, server, c, issuer) else {
        tracing::info!(
            event = "revocation.skipped",
            reason = "no client for the credential's issuer"
        );
        return;
    };
    for (column, hint) in [
        ("refresh_token", TokenTypeHint::RefreshToken),
        ("access_token", TokenTypeHint::AccessToken),
    ] {
        let env = match column {
            "refresh_token" => c.refresh_token.as_deref(),
            _ => c.access_token.as_deref(),
        };
        // A value that does not open under its binding (an edited row) is not sent.
        let Some(token) = env.and_then(|e| s.keyring.open(e, c.aad(column)).ok()) else {
            continue;
        };
        match revocation::revoke(
            &s.egress,
            endpoint,
            issuer,
            &token,
            hint,
            &client,
            s.clock.now(),
        )
        .await
        {
            Ok(()) => tracing::info!(event = "revocation.done", hint = column),
            Err(e) => tracing::info!(event = "revocation.failed", hint = column, error = %e),
        }
    }
}
