//! The sealed columns of every table, read and rewritten by key rotation
//! ([`crate::rotate`] drives it through the [`Store`](super::Store) trait): scan
//! order, compare-and-swap rewraps, checkpoints and the AAD version. Which tables and
//! columns are sealed comes from [`crate::sealed`]; this module never uses `rotate`.

use sqlx::Row;

use super::{PgStore, SqliteStore, StoreError};
use crate::sealed::{Rewrap, SealedRow, SealedTable};

/// The sealed-column (key rotation) methods.
/// Part of each backend's one `impl Store`, assembled by `sql_store!` (the bodies
/// expand in `store`, which imports the names they use).
macro_rules! methods {
    ($name:ident $tables:tt { $($methods:tt)* }) => {
        $crate::store::sql_store! { @impl $name $tables { $($methods)*
            async fn count_rows(&self, table: SealedTable, up_to: Option<&str>) -> Result<u64, StoreError> {
                let (t, pos) = (table.name(), Self::position(table));
                let n: i64 = match up_to {
                    None => sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {t}")))
                        .fetch_one(&self.pool)
                        .await?,
                    Some(p) => sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                        "SELECT COUNT(*) FROM {t} WHERE {} <= {}",
                        pos.column, pos.param
                    )))
                    .bind(p)
                    .fetch_one(&self.pool)
                    .await?,
                };
                Ok(u64::try_from(n).unwrap_or(0))
            }

            async fn sealed_page(
                &self,
                table: SealedTable,
                after: Option<&str>,
                limit: u32,
            ) -> Result<Vec<SealedRow>, StoreError> {
                let pos = Self::position(table);
                let sql = format!(
                    "SELECT {}, {} FROM {} WHERE {} > {} ORDER BY {} LIMIT $2",
                    sealed_select(table),
                    pos.select,
                    table.name(),
                    pos.column,
                    pos.param,
                    pos.column
                );
                // "" is before every position (rowids start at 1; keys are non-empty).
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(after.unwrap_or(""))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| sealed_from(table, r))
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(Into::into)
            }

            async fn sealed_row(&self, table: SealedTable, key: &str) -> Result<Option<SealedRow>, StoreError> {
                let sql = format!(
                    "SELECT {}, {} FROM {} WHERE {} = $1",
                    sealed_select(table),
                    Self::position(table).select,
                    table.name(),
                    table.key_column()
                );
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|r| sealed_from(table, &r))
                    .transpose()
                    .map_err(Into::into)
            }

            async fn rewrap(
                &self,
                table: SealedTable,
                rows: &[Rewrap],
                checkpoint: &Checkpoint,
            ) -> Result<Vec<String>, StoreError> {
                let mut tx = self.pool.begin().await?;
                let conflicts = Self::rewrap_in(&mut tx, table, rows).await?;
                sqlx::query(
                    "INSERT INTO key_rotation (table_name, target_key, last_row, done, updated_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (table_name) DO UPDATE SET \
                     target_key = excluded.target_key, last_row = excluded.last_row, done = excluded.done, \
                     updated_at = excluded.updated_at",
                )
                .bind(table.name())
                .bind(i32::from(checkpoint.target_key))
                .bind(&checkpoint.last_row)
                .bind(checkpoint.done)
                .bind(checkpoint.updated_at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(conflicts)
            }

            async fn rotation_checkpoint(&self, table: SealedTable) -> Result<Option<Checkpoint>, StoreError> {
                let row = sqlx::query(
                    "SELECT target_key, last_row, done, updated_at FROM key_rotation WHERE table_name = $1",
                )
                .bind(table.name())
                .fetch_optional(&self.pool)
                .await?;
                let Some(r) = row else { return Ok(None) };
                let target: i32 = r.try_get("target_key")?;
                Ok(Some(Checkpoint {
                    target_key: u8::try_from(target).map_err(|_| {
                        StoreError::Conflict(format!("key_rotation.target_key {target} is not a key id"))
                    })?,
                    last_row: r.try_get("last_row")?,
                    done: r.try_get("done")?,
                    updated_at: r.try_get("updated_at")?,
                }))
            }

            async fn clear_rotation_checkpoints(&self) -> Result<(), StoreError> {
                sqlx::query("DELETE FROM key_rotation").execute(&self.pool).await?;
                Ok(())
            }

            async fn aad_version(&self) -> Result<u8, StoreError> {
                let v: Option<i64> = sqlx::query_scalar("SELECT value FROM vault_state WHERE name = 'aad_version'")
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(v.and_then(|v| u8::try_from(v).ok()).unwrap_or(1))
            }

            async fn set_aad_version(&self, version: u8) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO vault_state (name, value) VALUES ('aad_version', $1) \
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                )
                .bind(i64::from(version))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn key_ids_in_use(&self) -> Result<std::collections::BTreeSet<u8>, StoreError> {
                let parts: Vec<String> = SealedTable::ALL
                    .iter()
                    .flat_map(|t| {
                        t.columns().iter().map(move |c| {
                            format!("SELECT DISTINCT substr({c}, 1, 1) AS k FROM {} WHERE {c} IS NOT NULL", t.name())
                        })
                    })
                    .collect();
                let sql = format!("SELECT DISTINCT k FROM ({}) AS u", parts.join(" UNION "));
                let ids: Vec<Vec<u8>> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&self.pool)
                    .await?;
                Ok(ids.into_iter().filter_map(|k| k.first().copied()).collect())
            }
        } }
    };
}
pub(super) use methods;

/// How a backend orders a rotation scan: the expression selected as the position, the
/// column compared, and the placeholder (bound as text) it is compared with.
pub(super) struct Position {
    pub(super) select: String,
    pub(super) column: String,
    pub(super) param: &'static str,
}

/// `key, col1, col2 …, bind1, bind2 …` for a sealed table: the key, the sealed
/// columns and the columns the values are bound to.
pub(super) fn sealed_select(table: SealedTable) -> String {
    std::iter::once(table.key_column())
        .chain(table.columns().iter().copied())
        .chain(table.binding_columns().iter().copied())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A [`SealedRow`] from a row selected with [`sealed_select`] and the position last.
pub(super) fn sealed_from<R>(table: SealedTable, r: &R) -> Result<SealedRow, sqlx::Error>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<Vec<u8>>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let width = table.columns().len();
    let bound = table.binding_columns().len();
    Ok(SealedRow {
        key: r.try_get(0usize)?,
        values: (1..=width)
            .map(|i| r.try_get(i))
            .collect::<Result<_, _>>()?,
        binding: (width + 1..=width + bound)
            .map(|i| r.try_get(i))
            .collect::<Result<_, _>>()?,
        position: r.try_get(width + bound + 1)?,
    })
}

/// `col1 IS NOT DISTINCT FROM <old1> AND …`: the CAS on every sealed column (a NULL
/// equals a NULL). `old(i)` renders the placeholder of column `i`'s old value.
fn sealed_cas(table: SealedTable, old: impl Fn(usize) -> String) -> String {
    table
        .columns()
        .iter()
        .enumerate()
        .map(|(i, c)| format!("t.{c} IS NOT DISTINCT FROM {}", old(i)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

impl SqliteStore {
    /// The rowid: scanning and updating in rowid order walks the table's pages in
    /// order instead of hopping through them in (random, UUID) key order.
    pub(super) fn position(_: SealedTable) -> Position {
        Position {
            select: "CAST(rowid AS TEXT)".into(),
            column: "rowid".into(),
            param: "CAST($1 AS INTEGER)",
        }
    }

    /// One prepared `UPDATE … WHERE rowid = ? AND key = ? AND <CAS>` per row, inside
    /// the batch's transaction. Measured against one `WITH v AS (VALUES …) UPDATE …
    /// FROM v` per 1,000 rows, this is as fast or faster (SQLite materialises the
    /// joined blobs), and simpler. Anonymous `?` placeholders: SQLite finds a named
    /// one by walking a list.
    pub(super) async fn rewrap_in(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        table: SealedTable,
        rows: &[Rewrap],
    ) -> Result<Vec<String>, StoreError> {
        let set = table
            .columns()
            .iter()
            .map(|c| format!("{c} = ?"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "UPDATE {name} AS t SET {set} WHERE t.rowid = ? AND t.{key} = ? AND {cas}",
            name = table.name(),
            key = table.key_column(),
            cas = sealed_cas(table, |_| "?".into()),
        );
        let mut conflicts = Vec::new();
        for w in rows {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            for v in &w.new {
                q = q.bind(v.as_deref());
            }
            // An unparsable position matches no row: the rewrap counts as a conflict.
            q = q.bind(w.position.parse::<i64>().unwrap_or(0)).bind(&w.key);
            for v in &w.old {
                q = q.bind(v.as_deref());
            }
            if q.execute(&mut **tx).await?.rows_affected() != 1 {
                conflicts.push(w.key.clone());
            }
        }
        Ok(conflicts)
    }
}

impl PgStore {
    /// The primary key (a heap tuple's address changes when it is updated).
    pub(super) fn position(table: SealedTable) -> Position {
        Position {
            select: table.key_column().into(),
            column: table.key_column().into(),
            param: "$1",
        }
    }

    /// PostgreSQL is a network hop away: one `UPDATE … FROM UNNEST(…)` per batch
    /// instead of a round trip per row.
    pub(super) async fn rewrap_in(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        table: SealedTable,
        rows: &[Rewrap],
    ) -> Result<Vec<String>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let cols = table.columns();
        let n = cols.len();
        let set = cols
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = v.n{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let arrays = (0..2 * n)
            .map(|i| format!("${}::bytea[]", i + 2))
            .collect::<Vec<_>>()
            .join(", ");
        let names = (0..n)
            .map(|i| format!("o{i}, n{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "UPDATE {name} AS t SET {set} FROM UNNEST($1::text[], {arrays}) AS v(k, {names}) \
             WHERE t.{key} = v.k AND {cas} RETURNING t.{key}",
            name = table.name(),
            key = table.key_column(),
            cas = sealed_cas(table, |i| format!("v.o{i}")),
        );
        let keys: Vec<&str> = rows.iter().map(|w| w.key.as_str()).collect();
        let column = |i: usize, old: bool| -> Vec<Option<&[u8]>> {
            rows.iter()
                .map(|w| {
                    let v = if old { &w.old } else { &w.new };
                    v.get(i).and_then(|x| x.as_deref())
                })
                .collect()
        };
        let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)).bind(keys);
        for i in 0..n {
            q = q.bind(column(i, true)).bind(column(i, false));
        }
        let updated: std::collections::HashSet<String> =
            q.fetch_all(&mut **tx).await?.into_iter().collect();
        Ok(rows
            .iter()
            .filter(|w| !updated.contains(&w.key))
            .map(|w| w.key.clone())
            .collect())
    }
}
