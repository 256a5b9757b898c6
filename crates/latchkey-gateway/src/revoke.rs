//! Best-effort revocation before a credential is deleted or purged (R-STORE-16,
//! R-API-8): the refresh token, then the access token, each with its
//! `token_type_hint`, at the discovered `revocation_endpoint`, with the credential's own
//! client or else the server's pre-registered one. Callers run this only after the
//! tenant check (the server was loaded for the caller's tenant). It never fails the
//! operation it precedes and never takes longer than [`BUDGET`].

use std::time::Duration;

use latchkey_oauth::client_auth::{AuthMethod, ClientCredentials};
use latchkey_oauth::discovery::DiscoveryOptions;
use latchkey_oauth::revocation::{self, TokenTypeHint};
use latchkey_vault::store::{CredentialRow, ServerRow};

use crate::app::AppState;

/// The most time revocation may add to a delete or purge.
pub const BUDGET: Duration = Duration::from_secs(10);

/// Revokes `creds` of `server`; logs and swallows every failure.
pub async fn revoke_all(s: &AppState, server: &ServerRow, creds: &[CredentialRow]) {
    if creds.is_empty() {
        return;
    }
    let work = async {
        let endpoint = match s
            .discoverer
            .discover(&server.url, None, DiscoveryOptions::default())
            .await
        {
            Ok(d) => match d.metadata.revocation_endpoint.clone() {
                Some(e) => (e, d.issuer.clone()),
                None => {
                    tracing::info!(
                        event = "revocation.skipped",
                        reason = "no revocation_endpoint"
                    );
                    return;
                }
            },
            Err(e) => {
                tracing::info!(event = "revocation.skipped", reason = "discovery failed", error = %e);
                return;
            }
        };
        for c in creds {
            revoke_one(s, server, c, &endpoint.0, &endpoint.1).await;
        }
    };
    if tokio::time::timeout(BUDGET, work).await.is_err() {
        tracing::info!(event = "revocation.timeout", server_id = %server.id);
    }
}

fn client_of(s: &AppState, server: &ServerRow, c: &CredentialRow) -> Option<ClientCredentials> {
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
    // The server's pre-registered client (the early return that skipped these was a
    // known bug in a source implementation).
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
    let Some(client) = client_of(s, server, c) else {
        tracing::info!(event = "revocation.skipped", reason = "no client");
        return;
    };
    let issuer = c.issuer.as_deref().unwrap_or(issuer);
    for (column, hint) in [
        ("refresh_token", TokenTypeHint::RefreshToken),
        ("access_token", TokenTypeHint::AccessToken),
    ] {
        let env = match column {
            "refresh_token" => c.refresh_token.as_deref(),
            _ => c.access_token.as_deref(),
        };
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
