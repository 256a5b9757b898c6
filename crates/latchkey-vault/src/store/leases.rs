//! `refresh_leases`: the cross-instance refresh lease of a slot (R-MULTI-1).

/// The lease methods.
/// Part of each backend's one `impl Store`, assembled by `sql_store!` (the bodies
/// expand in `store`, which imports the names they use).
macro_rules! methods {
    ($name:ident $tables:tt { $($methods:tt)* }) => {
        $crate::store::sql_store! { @impl $name $tables { $($methods)*
            async fn try_lease(
                &self,
                slot: &Slot,
                holder: &str,
                now: i64,
                expires_at: i64,
            ) -> Result<bool, StoreError> {
                // One statement: a new lease, or the takeover of an expired one; a live
                // lease of another holder leaves the row alone and returns nothing.
                let taken = sqlx::query(
                    "INSERT INTO refresh_leases (tenant_id, server_id, subject, holder, expires_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, server_id, subject) \
                     DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
                     WHERE refresh_leases.expires_at <= $6 OR refresh_leases.holder = $4 \
                     RETURNING holder",
                )
                .bind(&slot.tenant)
                .bind(&slot.server)
                .bind(slot.subject.as_deref().unwrap_or(""))
                .bind(holder)
                .bind(expires_at)
                .bind(now)
                .fetch_optional(&self.pool)
                .await?;
                Ok(taken.is_some())
            }

            async fn extend_lease(
                &self,
                slot: &Slot,
                holder: &str,
                expires_at: i64,
            ) -> Result<bool, StoreError> {
                let r = sqlx::query(
                    "UPDATE refresh_leases SET expires_at = $1 \
                     WHERE tenant_id = $2 AND server_id = $3 AND subject = $4 AND holder = $5",
                )
                .bind(expires_at)
                .bind(&slot.tenant)
                .bind(&slot.server)
                .bind(slot.subject.as_deref().unwrap_or(""))
                .bind(holder)
                .execute(&self.pool)
                .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn release_lease(&self, slot: &Slot, holder: &str) -> Result<(), StoreError> {
                sqlx::query(
                    "DELETE FROM refresh_leases \
                     WHERE tenant_id = $1 AND server_id = $2 AND subject = $3 AND holder = $4",
                )
                .bind(&slot.tenant)
                .bind(&slot.server)
                .bind(slot.subject.as_deref().unwrap_or(""))
                .bind(holder)
                .execute(&self.pool)
                .await?;
                Ok(())
            }
        } }
    };
}
pub(super) use methods;
