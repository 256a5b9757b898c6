//! `vault_state.key_set_version`: a counter bumped whenever the key set changes
//! (`latchkey keys add` or `keys rotate`), so every serving instance notices and reloads
//! its keys without a restart: through the change channel on PostgreSQL, and by reading
//! the counter on a timer on both backends (on SQLite the commands run beside the one
//! serving process, with no channel between them).

/// The key-set version methods.
/// Part of each backend's one `impl Store`, assembled by `sql_store!` (the bodies
/// expand in `store`, which imports the names they use).
macro_rules! methods {
    ($name:ident $tables:tt { $($methods:tt)* }) => {
        $crate::store::sql_store! { @impl $name $tables { $($methods)*
            async fn key_set_version(&self) -> Result<i64, StoreError> {
                let v: Option<i64> = sqlx::query_scalar(
                    "SELECT value FROM vault_state WHERE name = 'key_set_version'",
                )
                .fetch_optional(&self.pool)
                .await?;
                Ok(v.unwrap_or(0))
            }

            async fn bump_key_set_version(&self) -> Result<i64, StoreError> {
                let v: i64 = sqlx::query_scalar(
                    "INSERT INTO vault_state (name, value) VALUES ('key_set_version', 1) \
                     ON CONFLICT (name) DO UPDATE SET value = vault_state.value + 1 \
                     RETURNING value",
                )
                .fetch_one(&self.pool)
                .await?;
                Ok(v)
            }
        } }
    };
}
pub(super) use methods;
