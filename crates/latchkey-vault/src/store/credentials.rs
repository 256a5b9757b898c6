//! `credentials`: one row per slot (new id on every upsert), its sealed tokens, the
//! compare-and-swap write-back.

use sqlx::Row;

use super::Slot;
use crate::keyring::{Aad, Binding};
use crate::sealed::SealedTable;

/// A credential as stored. Secret columns are keyring envelopes.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialRow {
    /// Row id (new on every upsert).
    pub id: String,
    /// The slot.
    pub slot: Slot,
    /// AS issuer.
    pub issuer: Option<String>,
    /// RFC 8707 resource.
    pub resource: Option<String>,
    /// Token endpoint (required).
    pub token_endpoint: String,
    /// The issuer's revocation endpoint, when it was known as the token was issued or
    /// deposited: the only place the token is ever revoked.
    pub revocation_endpoint: Option<String>,
    /// Client id.
    pub client_id: Option<String>,
    /// Client secret envelope.
    pub client_secret: Option<Vec<u8>>,
    /// Token endpoint auth method.
    pub auth_method: Option<String>,
    /// Granted scopes.
    pub scopes: Option<String>,
    /// Access token envelope.
    pub access_token: Option<Vec<u8>>,
    /// Access token expiry, Unix seconds.
    pub access_expires_at: Option<i64>,
    /// Refresh token envelope.
    pub refresh_token: Option<Vec<u8>>,
    /// Compare-and-swap counter, bumped on every write-back.
    pub generation: i64,
    /// Who connected it.
    pub initiated_by: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// How its tokens are obtained again: `client_credentials` for a credential minted
    /// with the client credentials grant (renewed with it); `None` for one that came
    /// from a user's consent or a deposit (renewed only with its refresh token).
    pub grant_type: Option<String>,
    /// Why the authorization server refused this credential (`invalid_grant`,
    /// `invalid_client`, `unauthorized_client`); set with its tokens cleared, so nothing
    /// is sent with it again. `None`: not known dead. Only a new credential (consent or
    /// deposit) clears it.
    pub needs_consent: Option<String>,
}

impl CredentialRow {
    /// A row for `slot` with nothing but its token endpoint (required) set; callers fill
    /// in the sealed values and the rest.
    pub fn new(
        id: impl Into<String>,
        slot: Slot,
        token_endpoint: impl Into<String>,
        now: i64,
    ) -> Self {
        Self {
            id: id.into(),
            slot,
            issuer: None,
            resource: None,
            token_endpoint: token_endpoint.into(),
            revocation_endpoint: None,
            client_id: None,
            client_secret: None,
            auth_method: None,
            scopes: None,
            access_token: None,
            access_expires_at: None,
            refresh_token: None,
            generation: 0,
            initiated_by: None,
            created_at: now,
            updated_at: now,
            grant_type: None,
            needs_consent: None,
        }
    }
}

impl CredentialRow {
    /// The associated data of `column` (`client_secret`, `access_token`,
    /// `refresh_token`) in this row: bound to the row id, the slot (tenant, server,
    /// subject), the issuer, the resource and the endpoints the values are sent to.
    pub fn aad(&self, column: &'static str) -> Aad<'_> {
        SealedTable::Credentials.aad(
            column,
            &self.id,
            Binding {
                tenant: Some(&self.slot.tenant),
                server: Some(&self.slot.server),
                subject: self.slot.subject.as_deref(),
                issuer: self.issuer.as_deref(),
                resource: self.resource.as_deref(),
                token_endpoint: Some(&self.token_endpoint),
                revocation_endpoint: self.revocation_endpoint.as_deref(),
            },
        )
    }
}

impl std::fmt::Debug for CredentialRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialRow")
            .field("id", &self.id)
            .field("slot", &self.slot)
            .field("issuer", &self.issuer)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// A rotated-token write-back: update-only, keyed by the row id and generation read
/// before the grant (R-STORE-9, R-MULTI-5).
#[derive(Clone)]
pub struct WriteBack {
    /// Tenant (scoping).
    pub tenant: String,
    /// The row the grant's refresh token came from.
    pub id: String,
    /// Its generation when read.
    pub generation: i64,
    /// New access token envelope.
    pub access_token: Vec<u8>,
    /// Its expiry.
    pub access_expires_at: Option<i64>,
    /// New refresh token envelope; `None` keeps the stored one (R-REFRESH-10).
    pub refresh_token: Option<Vec<u8>>,
    /// Unix seconds.
    pub now: i64,
}

impl std::fmt::Debug for WriteBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBack")
            .field("id", &self.id)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

pub(super) const CRED_COLS: &str = "id, tenant_id, server_id, subject, issuer, resource, token_endpoint, revocation_endpoint, client_id, client_secret, auth_method, scopes, access_token, access_expires_at, refresh_token, generation, initiated_by, created_at, updated_at, grant_type, needs_consent";

pub(super) const UPSERT_SET: &str = " DO UPDATE SET id = excluded.id, issuer = excluded.issuer, resource = excluded.resource, \
     token_endpoint = excluded.token_endpoint, revocation_endpoint = excluded.revocation_endpoint, client_id = excluded.client_id, client_secret = excluded.client_secret, \
     auth_method = excluded.auth_method, scopes = excluded.scopes, access_token = excluded.access_token, \
     access_expires_at = excluded.access_expires_at, refresh_token = excluded.refresh_token, generation = 0, \
     initiated_by = excluded.initiated_by, created_at = excluded.created_at, updated_at = excluded.updated_at, \
     grant_type = excluded.grant_type, needs_consent = excluded.needs_consent";

pub(super) const INSERT_CRED: &str = "INSERT INTO credentials (id, tenant_id, server_id, subject, issuer, resource, token_endpoint, client_id, client_secret, auth_method, scopes, access_token, access_expires_at, refresh_token, generation, initiated_by, created_at, updated_at, revocation_endpoint, grant_type, needs_consent) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 0, $15, $16, $17, $18, $19, $20)";

pub(super) fn cred_from<R>(r: &R) -> Result<CredentialRow, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<Vec<u8>>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(CredentialRow {
        id: r.try_get("id")?,
        slot: Slot {
            tenant: r.try_get("tenant_id")?,
            server: r.try_get("server_id")?,
            subject: r.try_get("subject")?,
        },
        issuer: r.try_get("issuer")?,
        resource: r.try_get("resource")?,
        token_endpoint: r.try_get("token_endpoint")?,
        revocation_endpoint: r.try_get("revocation_endpoint")?,
        client_id: r.try_get("client_id")?,
        client_secret: r.try_get("client_secret")?,
        auth_method: r.try_get("auth_method")?,
        scopes: r.try_get("scopes")?,
        access_token: r.try_get("access_token")?,
        access_expires_at: r.try_get("access_expires_at")?,
        refresh_token: r.try_get("refresh_token")?,
        generation: r.try_get("generation")?,
        initiated_by: r.try_get("initiated_by")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        grant_type: r.try_get("grant_type")?,
        needs_consent: r.try_get("needs_consent")?,
    })
}

/// The credential methods.
/// Part of each backend's one `impl Store`, assembled by `sql_store!` (the bodies
/// expand in `store`, which imports the names they use).
macro_rules! methods {
    ($name:ident $tables:tt { $($methods:tt)* }) => {
        $crate::store::sql_store! { @impl $name $tables { $($methods)*
            async fn upsert_credential(&self, c: &CredentialRow) -> Result<(), StoreError> {
                let sql = match c.slot.subject {
                    Some(_) => sqlx::AssertSqlSafe(format!(
                        "{INSERT_CRED} ON CONFLICT (tenant_id, server_id, subject) WHERE subject IS NOT NULL{UPSERT_SET}"
                    )),
                    None => sqlx::AssertSqlSafe(format!(
                        "{INSERT_CRED} ON CONFLICT (tenant_id, server_id) WHERE subject IS NULL{UPSERT_SET}"
                    )),
                };
                sqlx::query(sql)
                    .bind(&c.id)
                    .bind(&c.slot.tenant)
                    .bind(&c.slot.server)
                    .bind(&c.slot.subject)
                    .bind(&c.issuer)
                    .bind(&c.resource)
                    .bind(&c.token_endpoint)
                    .bind(&c.client_id)
                    .bind(&c.client_secret)
                    .bind(&c.auth_method)
                    .bind(&c.scopes)
                    .bind(&c.access_token)
                    .bind(c.access_expires_at)
                    .bind(&c.refresh_token)
                    .bind(&c.initiated_by)
                    .bind(c.created_at)
                    .bind(c.updated_at)
                    .bind(&c.revocation_endpoint)
                    .bind(&c.grant_type)
                    .bind(&c.needs_consent)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn get_credential(&self, slot: &Slot) -> Result<Option<CredentialRow>, StoreError> {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {CRED_COLS} FROM credentials WHERE {}",
                    slot_clause(slot)
                )))
                .bind(&slot.tenant)
                .bind(&slot.server);
                if let Some(sub) = &slot.subject {
                    q = q.bind(sub);
                }
                let row = q.fetch_optional(&self.pool).await?;
                Ok(row.as_ref().map(cred_from).transpose()?)
            }

            async fn server_credentials(&self, tenant: &str, server: &str) -> Result<Vec<CredentialRow>, StoreError> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {CRED_COLS} FROM credentials WHERE tenant_id = $1 AND server_id = $2"
                )))
                .bind(tenant)
                .bind(server)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.iter().map(cred_from).collect::<Result<_, _>>()?)
            }

            async fn delete_credential(&self, slot: &Slot) -> Result<bool, StoreError> {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM credentials WHERE {}",
                    slot_clause(slot)
                )))
                .bind(&slot.tenant)
                .bind(&slot.server);
                if let Some(sub) = &slot.subject {
                    q = q.bind(sub);
                }
                Ok(q.execute(&self.pool).await?.rows_affected() > 0)
            }

            async fn write_back(&self, w: &WriteBack) -> Result<bool, StoreError> {
                let r = sqlx::query(
                    "UPDATE credentials SET access_token = $1, access_expires_at = $2, \
                     refresh_token = COALESCE($3, refresh_token), generation = generation + 1, updated_at = $4 \
                     WHERE id = $5 AND generation = $6 AND tenant_id = $7",
                )
                .bind(&w.access_token)
                .bind(w.access_expires_at)
                .bind(&w.refresh_token)
                .bind(w.now)
                .bind(&w.id)
                .bind(w.generation)
                .bind(&w.tenant)
                .execute(&self.pool)
                .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn mark_needs_consent(
                &self,
                tenant: &str,
                id: &str,
                generation: i64,
                reason: &str,
                now: i64,
            ) -> Result<bool, StoreError> {
                // Clearing sealed values is safe: nothing bound into their AAD changes.
                let r = sqlx::query(
                    "UPDATE credentials SET needs_consent = $1, access_token = NULL, access_expires_at = NULL, \
                     refresh_token = NULL, generation = generation + 1, updated_at = $2 \
                     WHERE id = $3 AND generation = $4 AND tenant_id = $5",
                )
                .bind(reason)
                .bind(now)
                .bind(id)
                .bind(generation)
                .bind(tenant)
                .execute(&self.pool)
                .await?;
                Ok(r.rows_affected() == 1)
            }
        } }
    };
}
pub(super) use methods;
