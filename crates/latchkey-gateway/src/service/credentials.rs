//! Deposits (R-API-1, R-API-2) and disconnects: credentials obtained elsewhere, stored
//! in the caller's slot, and a slot emptied (revoked where its token came from). The
//! slot comes from the principal and the server's `token_scope`, never from the request
//! (R-API-11): a per-user server takes the caller's own slot; a shared server's one slot
//! is for tenant admins only (R-API-9).

use latchkey_core::Secret;
use latchkey_guard::Principal;
use latchkey_vault::store::{CredentialRow, ServerRow, new_id};

use crate::error::ApiError;
use crate::state::AppState;

/// A deposit, its fields validated (the handler's [`crate::fields`] checks).
#[derive(Debug)]
pub struct Deposit {
    /// The server.
    pub server_id: String,
    /// The refresh token.
    pub refresh_token: Secret,
    /// Where it is redeemed.
    pub token_endpoint: String,
    /// The client it was issued to.
    pub client_id: Option<String>,
    /// That client's secret.
    pub client_secret: Option<Secret>,
    /// `token_endpoint_auth_method`.
    pub auth_method: Option<String>,
    /// Space-separated scopes.
    pub scopes: Option<String>,
    /// The authorization server (compared as a string).
    pub issuer: Option<String>,
    /// Where it may be revoked.
    pub revocation_endpoint: Option<String>,
    /// The resource it is for.
    pub resource: Option<String>,
    /// An access token that comes with it.
    pub access_token: Option<Secret>,
    /// That access token's lifetime, seconds.
    pub expires_in: Option<u64>,
}

/// Seals `d` into a new row and replaces the caller's slot atomically; every instance
/// drops what it cached of the slot before this returns (R-REFRESH-13).
pub async fn deposit(s: &AppState, p: &Principal, d: Deposit) -> Result<(), ApiError> {
    let server = s.server(p, &d.server_id).await?;
    let slot = super::own_slot(p, &server)?;
    let now = s.now();
    let mut row = CredentialRow::new(new_id(), slot.clone(), d.token_endpoint, now);
    row.issuer = d.issuer;
    row.revocation_endpoint = match (d.revocation_endpoint, &row.issuer) {
        (Some(r), _) => Some(r),
        (None, Some(issuer)) => discovered_revocation_endpoint(s, &server, issuer).await,
        (None, None) => None,
    };
    // Bound to the resource it is for: the caller's word, else the server's URL now (a
    // token is only ever sent to the resource it was stored for).
    row.resource = d.resource.or_else(|| Some(server.url.clone()));
    let client_secret = d.client_secret;
    row.auth_method = d.auth_method.or_else(|| {
        d.client_id.as_ref().map(|_| {
            if client_secret.is_some() {
                "client_secret_basic".into()
            } else {
                "none".into()
            }
        })
    });
    row.client_id = d.client_id;
    row.scopes = d.scopes;
    row.access_expires_at = d
        .access_token
        .as_ref()
        .map(|_| now.saturating_add(i64::try_from(d.expires_in.unwrap_or(0)).unwrap_or(0)));
    row.initiated_by = Some(p.subject.as_str().to_owned());
    // Sealed last: the values are bound to the row's slot, issuer and endpoints.
    let seal =
        |row: &CredentialRow, column: &'static str, v: &Secret| s.keyring.seal(v, row.aad(column));
    row.client_secret = client_secret
        .map(|v| seal(&row, "client_secret", &v))
        .transpose()?;
    row.access_token = d
        .access_token
        .map(|v| seal(&row, "access_token", &v))
        .transpose()?;
    row.refresh_token = Some(seal(&row, "refresh_token", &d.refresh_token)?);
    s.store.upsert_credential(&row).await?;
    // Synchronously, before answering (R-REFRESH-13).
    s.announce(crate::cluster::Change::slot(&slot)).await;
    metrics::counter!("latchkey_deposits_total").increment(1);
    super::audit(s, p, "credential.deposit", &slot).await;
    Ok(())
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

/// Empties the caller's slot of `server_id`: the token revoked where it came from
/// (best effort, within its budget), the row deleted, every instance told before this
/// returns (R-MULTI-2). Whether the slot held anything.
pub async fn disconnect(s: &AppState, p: &Principal, server_id: &str) -> Result<bool, ApiError> {
    let server = s.server(p, server_id).await?;
    let slot = super::own_slot(p, &server)?;
    if let Some(c) = s.store.get_credential(&slot).await? {
        crate::revoke::revoke_all(s, &server, std::slice::from_ref(&c)).await;
    }
    let deleted = s.store.delete_credential(&slot).await?;
    s.announce(crate::cluster::Change::slot(&slot)).await;
    if deleted {
        super::audit(s, p, "credential.delete", &slot).await;
    }
    Ok(deleted)
}
