//! `api_keys`: Latchkey's own API keys, stored as their SHA-256.

use sqlx::Row;

/// A Latchkey API key as stored: its SHA-256, never the key. The key acts as the
/// principal that minted it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyRow {
    /// Id ([`new_ordered_id`](super::new_ordered_id)).
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// The subject the key acts as.
    pub subject: String,
    /// `admin` or `member`: the role the key acts with.
    pub role: String,
    /// The owner's label for the key.
    pub name: String,
    /// SHA-256 of the key (unique).
    pub hash: [u8; 32],
    /// Unix seconds.
    pub created_at: i64,
    /// When the key last authenticated a request (at most a minute stale), Unix seconds.
    pub last_used_at: Option<i64>,
    /// When the key stops working, Unix seconds (refused from this second on).
    pub expires_at: i64,
    /// The scopes the key acts with (at most its creator's); `None` for a key made
    /// before expiry existed (migration 0008), which acts with the scopes the guard
    /// requires of every request.
    pub scopes: Option<Vec<String>>,
    /// The role its creator had when minting it (`admin` or `member`); `None` only for
    /// rows that predate migration 0008 and had none recorded.
    pub creator_role: Option<String>,
    /// The ids of the only servers the key may use (stored as a JSON array); `None`:
    /// every server its owner can use (migration 0033).
    pub servers: Option<Vec<String>>,
    /// The key's first [`API_KEY_PREFIX_LEN`] characters, shown so its owner can tell
    /// keys apart; `None` for keys made before migration 0033.
    pub prefix: Option<String>,
}

impl std::fmt::Debug for ApiKeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyRow")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("subject", &self.subject)
            .field("role", &self.role)
            .field("name", &self.name)
            .field("expires_at", &self.expires_at)
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

/// How stale an API key's `last_used_at` may get: a key is touched at most once per
/// this many seconds, so authentication is not a write per request.
pub const API_KEY_TOUCH_SECS: i64 = 60;

/// How many leading characters of a key are stored and shown (`lk_` and 9 more): enough
/// to tell keys apart, far too few to help guess one.
pub const API_KEY_PREFIX_LEN: usize = 12;

pub(super) const API_KEY_COLS: &str = "id, tenant_id, subject, role, name, hash, created_at, last_used_at, \
     expires_at, scopes, creator_role, servers, prefix";

pub(super) fn api_key_from<R>(r: &R) -> Result<ApiKeyRow, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Vec<u8>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let hash: Vec<u8> = r.try_get("hash")?;
    let scopes: Option<String> = r.try_get("scopes")?;
    let servers: Option<String> = r.try_get("servers")?;
    let servers = servers
        .map(|s| serde_json::from_str::<Vec<String>>(&s))
        .transpose()
        .map_err(|e| sqlx::Error::ColumnDecode {
            index: "servers".into(),
            source: Box::new(e),
        })?;
    Ok(ApiKeyRow {
        id: r.try_get("id")?,
        tenant: r.try_get("tenant_id")?,
        subject: r.try_get("subject")?,
        role: r.try_get("role")?,
        name: r.try_get("name")?,
        hash: hash.try_into().map_err(|_| sqlx::Error::ColumnDecode {
            index: "hash".into(),
            source: "api_keys.hash is not 32 bytes".into(),
        })?,
        created_at: r.try_get("created_at")?,
        last_used_at: r.try_get("last_used_at")?,
        expires_at: r.try_get("expires_at")?,
        scopes: scopes.map(|s| s.split_whitespace().map(str::to_owned).collect()),
        creator_role: r.try_get("creator_role")?,
        servers,
        prefix: r.try_get("prefix")?,
    })
}

/// The API key methods.
/// Part of each backend's one `impl Store`, assembled by `sql_store!` (the bodies
/// expand in `store`, which imports the names they use).
macro_rules! methods {
    ($name:ident $tables:tt { $($methods:tt)* }) => {
        $crate::store::sql_store! { @impl $name $tables { $($methods)*
            async fn insert_api_key(&self, k: &ApiKeyRow) -> Result<(), StoreError> {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO api_keys ({API_KEY_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
                )))
                .bind(&k.id)
                .bind(&k.tenant)
                .bind(&k.subject)
                .bind(&k.role)
                .bind(&k.name)
                .bind(&k.hash[..])
                .bind(k.created_at)
                .bind(k.last_used_at)
                .bind(k.expires_at)
                .bind(k.scopes.as_ref().map(|s| s.join(" ")))
                .bind(&k.creator_role)
                .bind(k.servers.as_ref().map(|s| serde_json::Value::from(s.clone()).to_string()))
                .bind(k.prefix.as_ref().map(|p| p.chars().take(API_KEY_PREFIX_LEN).collect::<String>()))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn api_key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKeyRow>, StoreError> {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {API_KEY_COLS} FROM api_keys WHERE hash = $1"
                )))
                .bind(&hash[..])
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.as_ref().map(api_key_from).transpose()?)
            }

            async fn list_api_keys(&self, tenant: &str, subject: Option<&str>) -> Result<Vec<ApiKeyRow>, StoreError> {
                let rows = match subject {
                    Some(sub) => sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT {API_KEY_COLS} FROM api_keys WHERE tenant_id = $1 AND subject = $2 ORDER BY created_at, id"
                    )))
                    .bind(tenant)
                    .bind(sub)
                    .fetch_all(&self.pool)
                    .await?,
                    None => sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT {API_KEY_COLS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id"
                    )))
                    .bind(tenant)
                    .fetch_all(&self.pool)
                    .await?,
                };
                Ok(rows.iter().map(api_key_from).collect::<Result<_, _>>()?)
            }

            async fn delete_api_key(
                &self,
                tenant: &str,
                id: &str,
                subject: Option<&str>,
            ) -> Result<Option<ApiKeyRow>, StoreError> {
                let row = match subject {
                    Some(sub) => sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DELETE FROM api_keys WHERE tenant_id = $1 AND id = $2 AND subject = $3 RETURNING {API_KEY_COLS}"
                    )))
                    .bind(tenant)
                    .bind(id)
                    .bind(sub)
                    .fetch_optional(&self.pool)
                    .await?,
                    None => sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DELETE FROM api_keys WHERE tenant_id = $1 AND id = $2 RETURNING {API_KEY_COLS}"
                    )))
                    .bind(tenant)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?,
                };
                Ok(row.as_ref().map(api_key_from).transpose()?)
            }

            async fn touch_api_key(&self, id: &str, now: i64) -> Result<bool, StoreError> {
                let r = sqlx::query(
                    "UPDATE api_keys SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at <= $3)",
                )
                .bind(now)
                .bind(id)
                .bind(now.saturating_sub(API_KEY_TOUCH_SECS))
                .execute(&self.pool)
                .await?;
                Ok(r.rows_affected() == 1)
            }
        } }
    };
}
pub(super) use methods;
