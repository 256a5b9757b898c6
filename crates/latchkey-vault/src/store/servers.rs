//! `servers`: a tenant's MCP servers, their settings and a pre-registered client's
//! sealed secret and the names of its static headers; purging a server's slots.

use sqlx::Row;

use crate::keyring::{Aad, Binding};
use crate::sealed::SealedTable;

/// A server row. `client_secret` is a keyring envelope.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerRow {
    /// Id.
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Display name.
    pub name: String,
    /// MCP URL.
    pub url: String,
    /// `oauth`, `none` or `headers` (probed, or set explicitly).
    pub auth_type: String,
    /// `per_user` or `shared`: whose slot a call uses.
    pub token_scope: String,
    /// `authorization_code` or `client_credentials`.
    pub grant_type: String,
    /// A pre-registered client id.
    pub client_id: Option<String>,
    /// Its secret (envelope).
    pub client_secret: Option<Vec<u8>>,
    /// Scopes to request.
    pub scopes: Option<String>,
    /// The issuer the pre-registered client belongs to: its id and secret go to this
    /// authorization server only (compared as a string).
    pub issuer: Option<String>,
    /// The header names a `headers` server needs, as the user typed them (their values
    /// are per slot, in [`HeaderValuesRow`](super::HeaderValuesRow)); empty for others.
    pub header_names: Vec<String>,
    /// `/mcp` federates the server's tools, prompts and resource URIs under their own
    /// names (no `<server-slug>__` or `latchkey://<server-slug>/` prefix).
    pub unprefixed: bool,
}

impl ServerRow {
    /// The associated data of the pre-registered client secret: bound to the tenant,
    /// the server and the issuer.
    pub fn secret_aad(&self) -> Aad<'_> {
        SealedTable::Servers.aad(
            "client_secret",
            &self.id,
            Binding {
                tenant: Some(&self.tenant),
                server: Some(&self.id),
                issuer: self.issuer.as_deref(),
                ..Binding::default()
            },
        )
    }

    /// A server with the defaults: `headers` until probed, per-user slots, the
    /// authorization-code grant, no pre-registered client.
    pub fn new(
        id: impl Into<String>,
        tenant: impl Into<String>,
        name: impl Into<String>,
        url: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            tenant: tenant.into(),
            name: name.into(),
            url: url.into(),
            auth_type: "headers".into(),
            token_scope: "per_user".into(),
            grant_type: "authorization_code".into(),
            client_id: None,
            client_secret: None,
            scopes: None,
            issuer: None,
            header_names: Vec::new(),
            unprefixed: false,
        }
    }
}

impl std::fmt::Debug for ServerRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerRow")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("url", &self.url)
            .field("auth_type", &self.auth_type)
            .field("token_scope", &self.token_scope)
            .field("issuer", &self.issuer)
            .field("has_client_secret", &self.client_secret.is_some())
            .field("header_names", &self.header_names)
            .field("unprefixed", &self.unprefixed)
            .finish_non_exhaustive()
    }
}

pub(super) const SERVER_COLS: &str = "id, tenant_id, name, url, auth_type, token_scope, grant_type, client_id, client_secret, scopes, issuer, header_names, unprefixed";

pub(super) fn server_from<R>(r: &R) -> Result<ServerRow, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<Vec<u8>>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> bool: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ServerRow {
        id: r.try_get("id")?,
        tenant: r.try_get("tenant_id")?,
        name: r.try_get("name")?,
        url: r.try_get("url")?,
        auth_type: r.try_get("auth_type")?,
        token_scope: r.try_get("token_scope")?,
        grant_type: r.try_get("grant_type")?,
        client_id: r.try_get("client_id")?,
        client_secret: r.try_get("client_secret")?,
        scopes: r.try_get("scopes")?,
        issuer: r.try_get("issuer")?,
        header_names: super::json_list(r, "header_names")?,
        unprefixed: r.try_get("unprefixed")?,
    })
}

/// The server methods.
/// Part of each backend's one `impl Store`, assembled by `sql_store!` (the bodies
/// expand in `store`, which imports the names they use).
macro_rules! methods {
    ($name:ident $tables:tt { $($methods:tt)* }) => {
        $crate::store::sql_store! { @impl $name $tables { $($methods)*
            async fn create_server(&self, s: &ServerRow, now: i64) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO servers (id, tenant_id, name, url, auth_type, token_scope, grant_type, client_id, \
                     client_secret, scopes, created_at, updated_at, issuer, header_names, unprefixed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13, $14)",
                )
                .bind(&s.id)
                .bind(&s.tenant)
                .bind(&s.name)
                .bind(&s.url)
                .bind(&s.auth_type)
                .bind(&s.token_scope)
                .bind(&s.grant_type)
                .bind(&s.client_id)
                .bind(&s.client_secret)
                .bind(&s.scopes)
                .bind(now)
                .bind(&s.issuer)
                .bind($crate::store::json_text(&s.header_names)?)
                .bind(s.unprefixed)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn purge_server(&self, tenant: &str, server: &str) -> Result<u64, StoreError> {
                let mut tx = self.pool.begin().await?;
                let creds = sqlx::query("DELETE FROM credentials WHERE tenant_id = $1 AND server_id = $2")
                    .bind(tenant)
                    .bind(server)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let headers = sqlx::query("DELETE FROM header_values WHERE tenant_id = $1 AND server_id = $2")
                    .bind(tenant)
                    .bind(server)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                for table in ["oauth_flows", "registered_clients"] {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DELETE FROM {table} WHERE tenant_id = $1 AND server_id = $2"
                    )))
                    .bind(tenant)
                    .bind(server)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(creds + headers)
            }

            async fn get_server(&self, tenant: &str, id: &str) -> Result<Option<ServerRow>, StoreError> {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {SERVER_COLS} FROM servers WHERE tenant_id = $1 AND id = $2"
                )))
                .bind(tenant)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.as_ref().map(server_from).transpose()?)
            }

            async fn list_servers(&self, tenant: &str) -> Result<Vec<ServerRow>, StoreError> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {SERVER_COLS} FROM servers WHERE tenant_id = $1 ORDER BY name, id"
                )))
                .bind(tenant)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.iter().map(server_from).collect::<Result<_, _>>()?)
            }

            async fn update_server(&self, s: &ServerRow, now: i64) -> Result<bool, StoreError> {
                let r = sqlx::query(
                    "UPDATE servers SET name = $1, url = $2, auth_type = $3, token_scope = $4, grant_type = $5, \
                     client_id = $6, client_secret = $7, scopes = $8, updated_at = $9, issuer = $12, header_names = $13, unprefixed = $14 WHERE tenant_id = $10 AND id = $11",
                )
                .bind(&s.name)
                .bind(&s.url)
                .bind(&s.auth_type)
                .bind(&s.token_scope)
                .bind(&s.grant_type)
                .bind(&s.client_id)
                .bind(&s.client_secret)
                .bind(&s.scopes)
                .bind(now)
                .bind(&s.tenant)
                .bind(&s.id)
                .bind(&s.issuer)
                .bind($crate::store::json_text(&s.header_names)?)
                .bind(s.unprefixed)
                .execute(&self.pool)
                .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn delete_server(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
                let r = sqlx::query("DELETE FROM servers WHERE tenant_id = $1 AND id = $2")
                    .bind(tenant)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(r.rows_affected() == 1)
            }
        } }
    };
}
pub(super) use methods;
