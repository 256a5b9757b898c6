//! `header_values`: the static-header values of a `headers` server, one row per slot
//! (new id on every write), sealed as one JSON object bound to the slot and the URL
//! they were set for ([`crate::headers`] seals and opens them).

use sqlx::Row;

use super::Slot;
use crate::keyring::{Aad, Binding};
use crate::sealed::SealedTable;

/// A slot's static-header values as stored. `values` is a keyring envelope of the JSON
/// object name → value; `names` says in plaintext which names have a value (for "set"
/// and "not set"), never what it is.
#[derive(Clone, PartialEq, Eq)]
pub struct HeaderValuesRow {
    /// Row id (new on every write).
    pub id: String,
    /// The slot.
    pub slot: Slot,
    /// The server URL the values were set for (they go nowhere else).
    pub url: String,
    /// The names that have a value, as the user typed them.
    pub names: Vec<String>,
    /// Envelope of the JSON object name → value.
    pub values: Vec<u8>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

impl HeaderValuesRow {
    /// The associated data of the sealed values: bound to the row id, the slot
    /// (tenant, server, subject) and the URL they were set for.
    pub fn aad(&self) -> Aad<'_> {
        values_aad(&self.id, &self.slot, &self.url)
    }
}

/// The associated data of the values of row `id` of `slot`, set for `url` (the same
/// binding [`SealedTable::HeaderValues`] reads from the row's columns; the URL takes
/// the binding's resource place).
pub(crate) fn values_aad<'a>(id: &'a str, slot: &'a Slot, url: &'a str) -> Aad<'a> {
    SealedTable::HeaderValues.aad(
        "sealed_values",
        id,
        Binding {
            tenant: Some(&slot.tenant),
            server: Some(&slot.server),
            subject: slot.subject.as_deref(),
            resource: Some(url),
            ..Binding::default()
        },
    )
}

impl std::fmt::Debug for HeaderValuesRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderValuesRow")
            .field("id", &self.id)
            .field("slot", &self.slot)
            .field("url", &self.url)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

pub(super) const HEADER_COLS: &str =
    "id, tenant_id, server_id, subject, url, names, sealed_values, created_at, updated_at";

pub(super) const INSERT_HEADERS: &str = "INSERT INTO header_values (id, tenant_id, server_id, subject, url, names, sealed_values, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

pub(super) const HEADERS_UPSERT_SET: &str = " DO UPDATE SET id = excluded.id, url = excluded.url, names = excluded.names, \
     sealed_values = excluded.sealed_values, created_at = excluded.created_at, updated_at = excluded.updated_at";

pub(super) fn header_values_from<R>(r: &R) -> Result<HeaderValuesRow, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Vec<u8>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(HeaderValuesRow {
        id: r.try_get("id")?,
        slot: Slot {
            tenant: r.try_get("tenant_id")?,
            server: r.try_get("server_id")?,
            subject: r.try_get("subject")?,
        },
        url: r.try_get("url")?,
        names: super::json_list(r, "names")?,
        values: r.try_get("sealed_values")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// The static-header methods.
/// Part of each backend's one `impl Store`, assembled by `sql_store!` (the bodies
/// expand in `store`, which imports the names they use).
macro_rules! methods {
    ($name:ident $tables:tt { $($methods:tt)* }) => {
        $crate::store::sql_store! { @impl $name $tables { $($methods)*
            async fn put_header_values(&self, h: &HeaderValuesRow) -> Result<(), StoreError> {
                let sql = match h.slot.subject {
                    Some(_) => sqlx::AssertSqlSafe(format!(
                        "{INSERT_HEADERS} ON CONFLICT (tenant_id, server_id, subject) WHERE subject IS NOT NULL{HEADERS_UPSERT_SET}"
                    )),
                    None => sqlx::AssertSqlSafe(format!(
                        "{INSERT_HEADERS} ON CONFLICT (tenant_id, server_id) WHERE subject IS NULL{HEADERS_UPSERT_SET}"
                    )),
                };
                sqlx::query(sql)
                    .bind(&h.id)
                    .bind(&h.slot.tenant)
                    .bind(&h.slot.server)
                    .bind(&h.slot.subject)
                    .bind(&h.url)
                    .bind($crate::store::json_text(&h.names)?)
                    .bind(&h.values)
                    .bind(h.created_at)
                    .bind(h.updated_at)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn get_header_values(&self, slot: &Slot) -> Result<Option<HeaderValuesRow>, StoreError> {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {HEADER_COLS} FROM header_values WHERE {}",
                    slot_clause(slot)
                )))
                .bind(&slot.tenant)
                .bind(&slot.server);
                if let Some(sub) = &slot.subject {
                    q = q.bind(sub);
                }
                let row = q.fetch_optional(&self.pool).await?;
                Ok(row.as_ref().map(header_values_from).transpose()?)
            }

            async fn delete_header_values(&self, slot: &Slot) -> Result<bool, StoreError> {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM header_values WHERE {}",
                    slot_clause(slot)
                )))
                .bind(&slot.tenant)
                .bind(&slot.server);
                if let Some(sub) = &slot.subject {
                    q = q.bind(sub);
                }
                Ok(q.execute(&self.pool).await?.rows_affected() > 0)
            }

            async fn server_header_values(&self, tenant: &str, server: &str) -> Result<Vec<HeaderValuesRow>, StoreError> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {HEADER_COLS} FROM header_values WHERE tenant_id = $1 AND server_id = $2 ORDER BY subject IS NOT NULL, subject, id"
                )))
                .bind(tenant)
                .bind(server)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.iter().map(header_values_from).collect::<Result<_, _>>()?)
            }
        } }
    };
}
pub(super) use methods;
