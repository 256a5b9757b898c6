//! `audit_events`: who did what to which slot, ids and names only.

use sqlx::Row;

/// One audit record: who did what to which slot. Ids and field names only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Tenant.
    pub tenant: String,
    /// Acting principal.
    pub actor: String,
    /// Stable action name (`server.create`, `credential.deposit`, `token.revoke` …).
    pub action: String,
    /// Server, when the action concerns one.
    pub server: Option<String>,
    /// Slot subject, when the action concerns one.
    pub subject: Option<String>,
    /// Non-secret detail (e.g. the names of updated fields).
    pub detail: Option<String>,
    /// Unix seconds.
    pub at: i64,
}

pub(super) fn audit_from<R>(r: &R) -> Result<AuditEvent, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(AuditEvent {
        tenant: r.try_get("tenant_id")?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        server: r.try_get("server_id")?,
        subject: r.try_get("subject")?,
        detail: r.try_get("detail")?,
        at: r.try_get("at")?,
    })
}

/// The audit methods.
/// Part of each backend's one `impl Store`, assembled by `sql_store!` (the bodies
/// expand in `store`, which imports the names they use).
macro_rules! methods {
    ($name:ident $tables:tt { $($methods:tt)* }) => {
        $crate::store::sql_store! { @impl $name $tables { $($methods)*
            async fn audit(&self, e: &AuditEvent) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO audit_events (id, tenant_id, actor, action, server_id, subject, detail, at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                // A time-ordered id (UUID v7, monotonic within the process): records
                // of the same second keep their order.
                .bind(uuid::Uuid::now_v7().to_string())
                .bind(&e.tenant)
                .bind(&e.actor)
                .bind(&e.action)
                .bind(&e.server)
                .bind(&e.subject)
                .bind(&e.detail)
                .bind(e.at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn audit_log(&self, tenant: &str) -> Result<Vec<AuditEvent>, StoreError> {
                let rows = sqlx::query(
                    "SELECT tenant_id, actor, action, server_id, subject, detail, at FROM audit_events \
                     WHERE tenant_id = $1 ORDER BY at, id",
                )
                .bind(tenant)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.iter().map(audit_from).collect::<Result<_, _>>()?)
            }
        } }
    };
}
pub(super) use methods;
