//! `web_sessions` and `web_logins`: people signed in to the web UI (issue 19).
//!
//! Both are keyed by a SHA-256: the session id and the login id live only in the
//! browser's cookies, so a copy of the database signs nobody in.

use sqlx::Row;

/// A signed-in browser session as stored. The principal is fixed at sign-in.
#[derive(Clone, PartialEq, Eq)]
pub struct WebSessionRow {
    /// SHA-256 of the session id.
    pub id_hash: [u8; 32],
    /// Tenant.
    pub tenant: String,
    /// The subject it acts as.
    pub subject: String,
    /// `admin` or `member`.
    pub role: String,
    /// A name to show (the ID token's `name` or `email`), when one was given.
    pub display_name: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// When it last authenticated a request (at most [`SESSION_TOUCH_SECS`] stale).
    pub last_seen_at: i64,
    /// When it ends whatever its use, Unix seconds.
    pub expires_at: i64,
}

impl std::fmt::Debug for WebSessionRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSessionRow")
            .field("tenant", &self.tenant)
            .field("subject", &self.subject)
            .field("role", &self.role)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A sign-in under way: what its callback checks.
#[derive(Clone, PartialEq, Eq)]
pub struct WebLoginRow {
    /// SHA-256 of the login id (in the browser's login cookie).
    pub id_hash: [u8; 32],
    /// SHA-256 of the `state` sent to the provider.
    pub state_hash: [u8; 32],
    /// The OpenID `nonce` the ID token must carry.
    pub nonce: String,
    /// Where the browser goes once signed in (a path on Latchkey's origin).
    pub return_to: String,
    /// Unix seconds.
    pub created_at: i64,
}

impl std::fmt::Debug for WebLoginRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebLoginRow")
            .field("return_to", &self.return_to)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// How stale a session's `last_seen_at` may get: written at most once per this many
/// seconds, so a session is not a write per request.
pub const SESSION_TOUCH_SECS: i64 = 60;

pub(super) const SESSION_COLS: &str =
    "id_hash, tenant_id, subject, role, display_name, created_at, last_seen_at, expires_at";
pub(super) const LOGIN_COLS: &str = "id_hash, state_hash, nonce, return_to, created_at";

fn hash32<R>(r: &R, column: &str) -> Result<[u8; 32], sqlx::Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> Vec<u8>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let v: Vec<u8> = r.try_get(column)?;
    v.try_into().map_err(|_| sqlx::Error::ColumnDecode {
        index: column.into(),
        source: "not 32 bytes".into(),
    })
}

pub(super) fn session_from<R>(r: &R) -> Result<WebSessionRow, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Vec<u8>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(WebSessionRow {
        id_hash: hash32(r, "id_hash")?,
        tenant: r.try_get("tenant_id")?,
        subject: r.try_get("subject")?,
        role: r.try_get("role")?,
        display_name: r.try_get("display_name")?,
        created_at: r.try_get("created_at")?,
        last_seen_at: r.try_get("last_seen_at")?,
        expires_at: r.try_get("expires_at")?,
    })
}

pub(super) fn login_from<R>(r: &R) -> Result<WebLoginRow, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Vec<u8>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(WebLoginRow {
        id_hash: hash32(r, "id_hash")?,
        state_hash: hash32(r, "state_hash")?,
        nonce: r.try_get("nonce")?,
        return_to: r.try_get("return_to")?,
        created_at: r.try_get("created_at")?,
    })
}

/// The web session methods.
/// Part of each backend's one `impl Store`, assembled by `sql_store!` (the bodies
/// expand in `store`, which imports the names they use).
macro_rules! methods {
    ($name:ident $tables:tt { $($methods:tt)* }) => {
        $crate::store::sql_store! { @impl $name $tables { $($methods)*
            async fn insert_web_login(
                &self,
                l: &WebLoginRow,
                stale_before: i64,
                max_live: i64,
            ) -> Result<bool, StoreError> {
                // Abandoned sign-ins are swept as new ones start: the table stays small
                // with no timer.
                sqlx::query("DELETE FROM web_logins WHERE created_at < $1")
                    .bind(stale_before)
                    .execute(&self.pool)
                    .await?;
                // Anyone may start a sign-in, so their number is bounded: past it, none
                // is recorded until older ones are used or swept.
                let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM web_logins")
                    .fetch_one(&self.pool)
                    .await?;
                if live >= max_live {
                    return Ok(false);
                }
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO web_logins ({LOGIN_COLS}) VALUES ($1, $2, $3, $4, $5)"
                )))
                .bind(&l.id_hash[..])
                .bind(&l.state_hash[..])
                .bind(&l.nonce)
                .bind(&l.return_to)
                .bind(l.created_at)
                .execute(&self.pool)
                .await?;
                Ok(true)
            }

            async fn take_web_login(&self, id_hash: &[u8; 32]) -> Result<Option<WebLoginRow>, StoreError> {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM web_logins WHERE id_hash = $1 RETURNING {LOGIN_COLS}"
                )))
                .bind(&id_hash[..])
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.as_ref().map(login_from).transpose()?)
            }

            async fn insert_web_session(&self, s: &WebSessionRow) -> Result<(), StoreError> {
                // Ended sessions are swept as new ones start.
                sqlx::query("DELETE FROM web_sessions WHERE expires_at <= $1")
                    .bind(s.created_at)
                    .execute(&self.pool)
                    .await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO web_sessions ({SESSION_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                )))
                .bind(&s.id_hash[..])
                .bind(&s.tenant)
                .bind(&s.subject)
                .bind(&s.role)
                .bind(&s.display_name)
                .bind(s.created_at)
                .bind(s.last_seen_at)
                .bind(s.expires_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn web_session(&self, id_hash: &[u8; 32]) -> Result<Option<WebSessionRow>, StoreError> {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {SESSION_COLS} FROM web_sessions WHERE id_hash = $1"
                )))
                .bind(&id_hash[..])
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.as_ref().map(session_from).transpose()?)
            }

            async fn touch_web_session(&self, id_hash: &[u8; 32], now: i64) -> Result<bool, StoreError> {
                let r = sqlx::query(
                    "UPDATE web_sessions SET last_seen_at = $1 WHERE id_hash = $2 AND last_seen_at <= $3",
                )
                .bind(now)
                .bind(&id_hash[..])
                .bind(now.saturating_sub(SESSION_TOUCH_SECS))
                .execute(&self.pool)
                .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn delete_web_session(&self, id_hash: &[u8; 32]) -> Result<bool, StoreError> {
                let r = sqlx::query("DELETE FROM web_sessions WHERE id_hash = $1")
                    .bind(&id_hash[..])
                    .execute(&self.pool)
                    .await?;
                Ok(r.rows_affected() == 1)
            }
        } }
    };
}
pub(super) use methods;
