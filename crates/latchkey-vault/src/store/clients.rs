//! `registered_clients`: the client registered at (or configured for) each
//! authorization server of a server, keyed by `(tenant, server, issuer)`.

use sqlx::Row;

use crate::keyring::{Aad, Binding};
use crate::sealed::SealedTable;

/// A client registered at (or configured for) one authorization server, keyed by
/// `(tenant, server, issuer)`: credentials are never presented to another AS.
#[derive(Clone, PartialEq, Eq)]
pub struct RegisteredClientRow {
    /// Row id (AAD for the secret envelope).
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Server id.
    pub server: String,
    /// The AS issuer, verbatim.
    pub issuer: String,
    /// Client id.
    pub client_id: String,
    /// Client secret envelope.
    pub client_secret: Option<Vec<u8>>,
    /// Token endpoint auth method.
    pub auth_method: String,
    /// `client_secret_expires_at`, Unix seconds.
    pub client_secret_expires_at: Option<i64>,
    /// `dcr`, `cimd` or `preregistered`.
    pub obtained_by: String,
    /// Unix seconds.
    pub created_at: i64,
}

impl RegisteredClientRow {
    /// The associated data of the client secret: bound to the tenant, the server and
    /// the issuer it was registered at.
    pub fn secret_aad(&self) -> Aad<'_> {
        SealedTable::RegisteredClients.aad(
            "client_secret",
            &self.id,
            Binding {
                tenant: Some(&self.tenant),
                server: Some(&self.server),
                issuer: Some(&self.issuer),
                ..Binding::default()
            },
        )
    }
}

impl std::fmt::Debug for RegisteredClientRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredClientRow")
            .field("server", &self.server)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("has_secret", &self.client_secret.is_some())
            .finish_non_exhaustive()
    }
}

pub(super) fn client_from<R>(r: &R) -> Result<RegisteredClientRow, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<Vec<u8>>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(RegisteredClientRow {
        id: r.try_get("id")?,
        tenant: r.try_get("tenant_id")?,
        server: r.try_get("server_id")?,
        issuer: r.try_get("issuer")?,
        client_id: r.try_get("client_id")?,
        client_secret: r.try_get("client_secret")?,
        auth_method: r.try_get("auth_method")?,
        client_secret_expires_at: r.try_get("client_secret_expires_at")?,
        obtained_by: r.try_get("obtained_by")?,
        created_at: r.try_get("created_at")?,
    })
}

/// The registered-client methods.
/// Part of each backend's one `impl Store`, assembled by `sql_store!` (the bodies
/// expand in `store`, which imports the names they use).
macro_rules! methods {
    ($name:ident $tables:tt { $($methods:tt)* }) => {
        $crate::store::sql_store! { @impl $name $tables { $($methods)*
            async fn put_registered_client(&self, c: &RegisteredClientRow) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO registered_clients (id, tenant_id, server_id, issuer, client_id, client_secret, \
                     auth_method, client_secret_expires_at, obtained_by, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     ON CONFLICT (tenant_id, server_id, issuer) DO UPDATE SET id = excluded.id, \
                     client_id = excluded.client_id, client_secret = excluded.client_secret, \
                     auth_method = excluded.auth_method, client_secret_expires_at = excluded.client_secret_expires_at, \
                     obtained_by = excluded.obtained_by, created_at = excluded.created_at",
                )
                .bind(&c.id)
                .bind(&c.tenant)
                .bind(&c.server)
                .bind(&c.issuer)
                .bind(&c.client_id)
                .bind(&c.client_secret)
                .bind(&c.auth_method)
                .bind(c.client_secret_expires_at)
                .bind(&c.obtained_by)
                .bind(c.created_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn get_registered_client(
                &self,
                tenant: &str,
                server: &str,
                issuer: &str,
            ) -> Result<Option<RegisteredClientRow>, StoreError> {
                let row = sqlx::query(
                    "SELECT id, tenant_id, server_id, issuer, client_id, client_secret, auth_method, \
                     client_secret_expires_at, obtained_by, created_at FROM registered_clients \
                     WHERE tenant_id = $1 AND server_id = $2 AND issuer = $3",
                )
                .bind(tenant)
                .bind(server)
                .bind(issuer)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.as_ref().map(client_from).transpose()?)
            }

            async fn forget_registered_client(
                &self,
                tenant: &str,
                server: &str,
                issuer: &str,
                client_id: &str,
            ) -> Result<bool, StoreError> {
                let r = sqlx::query(
                    "DELETE FROM registered_clients WHERE tenant_id = $1 AND server_id = $2 \
                     AND issuer = $3 AND client_id = $4 AND obtained_by = 'dcr'",
                )
                .bind(tenant)
                .bind(server)
                .bind(issuer)
                .bind(client_id)
                .execute(&self.pool)
                .await?;
                Ok(r.rows_affected() > 0)
            }

            async fn delete_registered_clients(&self, tenant: &str, server: &str) -> Result<u64, StoreError> {
                let r = sqlx::query("DELETE FROM registered_clients WHERE tenant_id = $1 AND server_id = $2")
                    .bind(tenant)
                    .bind(server)
                    .execute(&self.pool)
                    .await?;
                Ok(r.rows_affected())
            }
        } }
    };
}
pub(super) use methods;
