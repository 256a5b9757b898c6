//! `oauth_flows`: pending authorization flows, keyed by the state's hash, single use.

use sqlx::Row;

use super::Slot;
use crate::keyring::{Aad, Binding};
use crate::sealed::SealedTable;

/// A pending authorization flow. Only the state's SHA-256 is stored (R-FLOW-2).
#[derive(Clone, PartialEq, Eq)]
pub struct FlowRow {
    /// Hex SHA-256 of the state.
    pub state_hash: String,
    /// The slot being connected.
    pub slot: Slot,
    /// The user who started it.
    pub initiated_by: String,
    /// The TTL anchor (R-FLOW-3), Unix seconds.
    pub state_created_at: i64,
    /// PKCE verifier envelope.
    pub verifier: Vec<u8>,
    /// Issuer the code must come from.
    pub issuer: String,
    /// Resource indicator.
    pub resource: String,
    /// Redirect URI.
    pub redirect_uri: String,
    /// Client id.
    pub client_id: String,
    /// Requested scopes.
    pub scopes: Option<String>,
    /// Whether the callback must carry RFC 9207 `iss`.
    pub iss_required: bool,
}

impl FlowRow {
    /// The associated data of the PKCE verifier: bound to the state hash, the slot and
    /// the issuer.
    pub fn verifier_aad(&self) -> Aad<'_> {
        SealedTable::OAuthFlows.aad(
            "verifier",
            &self.state_hash,
            Binding {
                tenant: Some(&self.slot.tenant),
                server: Some(&self.slot.server),
                subject: self.slot.subject.as_deref(),
                issuer: Some(&self.issuer),
                ..Binding::default()
            },
        )
    }
}

impl std::fmt::Debug for FlowRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowRow")
            .field("slot", &self.slot)
            .field("initiated_by", &self.initiated_by)
            .field("state_created_at", &self.state_created_at)
            .finish_non_exhaustive()
    }
}

/// The flow lifetime (R-FLOW-3).
pub const FLOW_TTL_SECS: i64 = 600;

/// Whether a flow created at `state_created_at` is still usable at `now`. Only the
/// state's own timestamp counts; no other write extends it.
pub fn flow_is_live(state_created_at: i64, now: i64) -> bool {
    now >= state_created_at && now - state_created_at < FLOW_TTL_SECS
}

pub(super) const FLOW_COLS: &str = "state_hash, tenant_id, server_id, subject, initiated_by, state_created_at, \
     verifier, issuer, resource, redirect_uri, client_id, scopes, iss_required";

pub(super) fn flow_from<R>(r: &R) -> Result<FlowRow, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Vec<u8>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> bool: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(FlowRow {
        state_hash: r.try_get("state_hash")?,
        slot: Slot {
            tenant: r.try_get("tenant_id")?,
            server: r.try_get("server_id")?,
            subject: r.try_get("subject")?,
        },
        initiated_by: r.try_get("initiated_by")?,
        state_created_at: r.try_get("state_created_at")?,
        verifier: r.try_get("verifier")?,
        issuer: r.try_get("issuer")?,
        resource: r.try_get("resource")?,
        redirect_uri: r.try_get("redirect_uri")?,
        client_id: r.try_get("client_id")?,
        scopes: r.try_get("scopes")?,
        iss_required: r.try_get("iss_required")?,
    })
}

/// The flow methods.
/// Part of each backend's one `impl Store`, assembled by `sql_store!` (the bodies
/// expand in `store`, which imports the names they use).
macro_rules! methods {
    ($name:ident $tables:tt { $($methods:tt)* }) => {
        $crate::store::sql_store! { @impl $name $tables { $($methods)*
            async fn insert_flow(&self, f: &FlowRow) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO oauth_flows (state_hash, tenant_id, server_id, subject, initiated_by, state_created_at, \
                     verifier, issuer, resource, redirect_uri, client_id, scopes, iss_required) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(&f.state_hash)
                .bind(&f.slot.tenant)
                .bind(&f.slot.server)
                .bind(&f.slot.subject)
                .bind(&f.initiated_by)
                .bind(f.state_created_at)
                .bind(&f.verifier)
                .bind(&f.issuer)
                .bind(&f.resource)
                .bind(&f.redirect_uri)
                .bind(&f.client_id)
                .bind(&f.scopes)
                .bind(f.iss_required)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn consume_flow(&self, state_hash: &str) -> Result<Option<FlowRow>, StoreError> {
                // One statement deletes and returns: of any number of concurrent callbacks
                // with the same state, exactly one gets the row (R-FLOW-4).
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM oauth_flows WHERE state_hash = $1 RETURNING {FLOW_COLS}"
                )))
                .bind(state_hash)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.as_ref().map(flow_from).transpose()?)
            }

            async fn flows_for_slot(&self, slot: &Slot) -> Result<Vec<FlowRow>, StoreError> {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {FLOW_COLS} FROM oauth_flows WHERE {}",
                    slot_clause(slot)
                )))
                .bind(&slot.tenant)
                .bind(&slot.server);
                if let Some(sub) = &slot.subject {
                    q = q.bind(sub);
                }
                let rows = q.fetch_all(&self.pool).await?;
                Ok(rows.iter().map(flow_from).collect::<Result<_, _>>()?)
            }
        } }
    };
}
pub(super) use methods;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_ttl_is_anchored_to_state_created_at() {
        let created = 1_000_000;
        assert!(flow_is_live(created, created));
        assert!(flow_is_live(created, created + 9 * 60));
        assert!(!flow_is_live(created, created + 10 * 60));
        assert!(!flow_is_live(created, created + 11 * 60));
        assert!(
            !flow_is_live(created, created - 1),
            "a clock step back is not a live flow"
        );
    }
}
