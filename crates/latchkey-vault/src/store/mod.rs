//! The credential store: one trait, an SQLite and a PostgreSQL implementation with the
//! same behaviour and the same SQL (portable `$n` placeholders, `ON CONFLICT` on the
//! partial unique indexes, `DELETE … RETURNING`), migrations per backend.
//!
//! The store persists envelopes; it never sees plaintext. Callers seal values with the
//! keyring using the row id the store will use ([`new_id`]) before writing.
//! Every query on a slot is scoped by tenant (R-STORE-17).
//!
//! One module per table or concern, each with its row type, its SQL and its part of
//! the [`Store`] implementation (a `methods!` macro): `servers`, `credentials`,
//! `flows`, `headers` (static-header values), `clients` (registered clients), `audit`, `api_keys`, `sessions` (web sign-in), `leases` (refresh
//! leases), `sealed_columns` (what key rotation reads and rewrites), `key_set` (the
//! key-set version serving instances watch), `notify`
//! (PostgreSQL `NOTIFY`/`LISTEN`), `open` (the database URL, SQLite files) and `wal`
//! (SQLite's write-ahead log kept bounded).
//! `sql_store!` here assembles each backend's one `impl Store` from them. The store
//! uses [`crate::sealed`] for the AAD convention and never [`crate::rotate`], which
//! uses the store through the trait.

mod api_keys;
mod audit;
mod clients;
mod credentials;
mod flows;
mod headers;
mod key_set;
mod leases;
mod notify;
mod open;
mod sealed_columns;
mod servers;
mod sessions;
mod wal;

pub use api_keys::{API_KEY_PREFIX_LEN, API_KEY_TOUCH_SECS, ApiKeyRow};
pub use audit::AuditEvent;
pub use clients::RegisteredClientRow;
pub use credentials::{CredentialRow, WriteBack};
pub use flows::{FLOW_TTL_SECS, FlowRow, flow_is_live};
pub use headers::HeaderValuesRow;
pub(crate) use headers::values_aad;
pub use notify::{Notice, Notifications};
pub use open::DatabaseUrl;
pub use servers::ServerRow;
pub use sessions::{SESSION_TOUCH_SECS, WebLoginRow, WebSessionRow};
pub use wal::{WalBound, WalCheckpoint};

use crate::sealed::{Checkpoint, Rewrap, SealedRow, SealedTable};

// The names the tables' `methods!` bodies use: they expand in this module.
use api_keys::{API_KEY_COLS, api_key_from};
use audit::audit_from;
use clients::client_from;
use credentials::{CRED_COLS, INSERT_CRED, UPSERT_SET, cred_from};
use flows::{FLOW_COLS, flow_from};
use headers::{HEADER_COLS, HEADERS_UPSERT_SET, INSERT_HEADERS, header_values_from};
use notify::PgNotifications;
use sealed_columns::{sealed_from, sealed_select};
use servers::{SERVER_COLS, server_from};
use sessions::{LOGIN_COLS, SESSION_COLS, login_from, session_from};
use sqlx::Row;

/// A fresh row id (UUID v4), known before the row is written so values can be sealed
/// to it.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A fresh time-ordered row id (UUID v7, monotonic within the process), for rows
/// listed in creation order (API keys).
pub fn new_ordered_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or failed; a retry may help.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A constraint refused the write (unknown server, duplicate id …).
    #[error("rejected by the database: {0}")]
    Conflict(String),
    /// Migrations could not be applied.
    #[error("migration failed: {0}")]
    Migration(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() || d.is_foreign_key_violation() => {
                StoreError::Conflict(d.message().to_owned())
            }
            _ => StoreError::Unavailable(e.to_string()),
        }
    }
}

/// A credential slot: `(tenant, server, subject)`; no subject is the shared slot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Slot {
    /// Tenant.
    pub tenant: String,
    /// Server id.
    pub server: String,
    /// User, or `None` for the server's shared slot.
    pub subject: Option<String>,
}

/// Persistence for servers, credentials and flows.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// A round trip to the database (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
    /// Adds a server.
    async fn create_server(&self, s: &ServerRow, now: i64) -> Result<(), StoreError>;
    /// The tenant's server with this id.
    async fn get_server(&self, tenant: &str, id: &str) -> Result<Option<ServerRow>, StoreError>;
    /// The tenant's servers, by name.
    async fn list_servers(&self, tenant: &str) -> Result<Vec<ServerRow>, StoreError>;
    /// Replaces the settings of the tenant's server `s.id`. False if absent.
    async fn update_server(&self, s: &ServerRow, now: i64) -> Result<bool, StoreError>;
    /// Deletes every credential and static-header value (shared and per user), pending
    /// flow and registered client of the tenant's server, in one transaction
    /// (R-STORE-15). Returns how many credentials and header-value rows went.
    async fn purge_server(&self, tenant: &str, server: &str) -> Result<u64, StoreError>;
    /// Deletes a server and, by cascade, its credentials and flows. False if absent.
    async fn delete_server(&self, tenant: &str, id: &str) -> Result<bool, StoreError>;
    /// Replaces the slot's credential atomically with `c` (its id is new).
    async fn upsert_credential(&self, c: &CredentialRow) -> Result<(), StoreError>;
    /// The slot's credential.
    async fn get_credential(&self, slot: &Slot) -> Result<Option<CredentialRow>, StoreError>;
    /// Every credential of the tenant's server (shared and per user), e.g. to revoke
    /// them before a purge.
    async fn server_credentials(
        &self,
        tenant: &str,
        server: &str,
    ) -> Result<Vec<CredentialRow>, StoreError>;
    /// Deletes the slot's credential. False if there was none.
    async fn delete_credential(&self, slot: &Slot) -> Result<bool, StoreError>;
    /// Compare-and-swap write-back; false when the row is gone or newer (never inserts).
    async fn write_back(&self, w: &WriteBack) -> Result<bool, StoreError>;
    /// Marks the credential `(id, generation)` of `tenant` as refused by its
    /// authorization server: `reason` recorded, access and refresh tokens cleared,
    /// generation bumped (a compare-and-swap like [`Store::write_back`]; `false` when
    /// the row changed or went meanwhile, which then stays as it is).
    async fn mark_needs_consent(
        &self,
        tenant: &str,
        id: &str,
        generation: i64,
        reason: &str,
        now: i64,
    ) -> Result<bool, StoreError>;
    /// Replaces the slot's static-header values atomically with `h` (its id is new).
    async fn put_header_values(&self, h: &HeaderValuesRow) -> Result<(), StoreError>;
    /// The slot's static-header values.
    async fn get_header_values(&self, slot: &Slot) -> Result<Option<HeaderValuesRow>, StoreError>;
    /// Deletes the slot's static-header values. False if there were none.
    async fn delete_header_values(&self, slot: &Slot) -> Result<bool, StoreError>;
    /// Every static-header value row of the tenant's server (the shared slot first,
    /// then per user by subject).
    async fn server_header_values(
        &self,
        tenant: &str,
        server: &str,
    ) -> Result<Vec<HeaderValuesRow>, StoreError>;
    /// Stores a pending flow.
    async fn insert_flow(&self, f: &FlowRow) -> Result<(), StoreError>;
    /// Removes and returns the flow with this state hash: exactly one caller gets it.
    async fn consume_flow(&self, state_hash: &str) -> Result<Option<FlowRow>, StoreError>;
    /// The pending flows of a slot (R-FLOW-8: who is connecting it, since when).
    async fn flows_for_slot(&self, slot: &Slot) -> Result<Vec<FlowRow>, StoreError>;
    /// Stores the client for `(tenant, server, issuer)`, replacing an earlier one.
    async fn put_registered_client(&self, c: &RegisteredClientRow) -> Result<(), StoreError>;
    /// The client for `(tenant, server, issuer)`.
    async fn get_registered_client(
        &self,
        tenant: &str,
        server: &str,
        issuer: &str,
    ) -> Result<Option<RegisteredClientRow>, StoreError>;
    /// Forgets the client `client_id` registered dynamically (`obtained_by` = `dcr`) for
    /// `(tenant, server, issuer)`, so the next flow registers afresh (the authorization
    /// server no longer knows it). A pre-registered or CIMD client, or another id, is
    /// left alone. Whether a row went.
    async fn forget_registered_client(
        &self,
        tenant: &str,
        server: &str,
        issuer: &str,
        client_id: &str,
    ) -> Result<bool, StoreError>;
    /// Forgets every registered client of a server (URL or configuration change,
    /// `invalid_client`). Returns how many were removed.
    async fn delete_registered_clients(
        &self,
        tenant: &str,
        server: &str,
    ) -> Result<u64, StoreError>;
    /// Appends an audit record.
    async fn audit(&self, e: &AuditEvent) -> Result<(), StoreError>;
    /// The tenant's audit records, oldest first.
    async fn audit_log(&self, tenant: &str) -> Result<Vec<AuditEvent>, StoreError>;

    /// Stores an API key (its hash; a duplicate hash or id is a `Conflict`).
    async fn insert_api_key(&self, k: &ApiKeyRow) -> Result<(), StoreError>;
    /// The API key whose SHA-256 is `hash`, through the unique index. Across tenants:
    /// the hash is the credential, and the row names the tenant.
    async fn api_key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKeyRow>, StoreError>;
    /// The tenant's API keys, oldest first: those of `subject`, or all of them (for a
    /// tenant admin) when `subject` is `None`.
    async fn list_api_keys(
        &self,
        tenant: &str,
        subject: Option<&str>,
    ) -> Result<Vec<ApiKeyRow>, StoreError>;
    /// Deletes and returns the tenant's API key `id`, only if it belongs to `subject`
    /// when one is given. `None` if there was no such key.
    async fn delete_api_key(
        &self,
        tenant: &str,
        id: &str,
        subject: Option<&str>,
    ) -> Result<Option<ApiKeyRow>, StoreError>;
    /// Records that key `id` was used at `now`, unless it already was within the last
    /// [`API_KEY_TOUCH_SECS`] (then nothing is written). True if the row was updated.
    async fn touch_api_key(&self, id: &str, now: i64) -> Result<bool, StoreError>;

    // People signed in to the web UI (issue 19).

    /// Records a sign-in under way, first deleting those started before `stale_before`
    /// (Unix seconds); false (nothing recorded) when `max_live` are already under way.
    async fn insert_web_login(
        &self,
        l: &WebLoginRow,
        stale_before: i64,
        max_live: i64,
    ) -> Result<bool, StoreError>;
    /// Deletes and returns the sign-in whose login id hashes to `id_hash`: a callback
    /// completes it at most once.
    async fn take_web_login(&self, id_hash: &[u8; 32]) -> Result<Option<WebLoginRow>, StoreError>;
    /// Stores a new session, first deleting sessions that ended by its `created_at`.
    async fn insert_web_session(&self, s: &WebSessionRow) -> Result<(), StoreError>;
    /// The session whose id hashes to `id_hash`, ended or not (the caller judges).
    async fn web_session(&self, id_hash: &[u8; 32]) -> Result<Option<WebSessionRow>, StoreError>;
    /// Records the session's use at `now`, unless it already was within the last
    /// [`SESSION_TOUCH_SECS`]. True if the row was updated.
    async fn touch_web_session(&self, id_hash: &[u8; 32], now: i64) -> Result<bool, StoreError>;
    /// Ends a session (sign-out): true if there was one.
    async fn delete_web_session(&self, id_hash: &[u8; 32]) -> Result<bool, StoreError>;

    // Several instances on one database (R-MULTI-1, R-MULTI-2).

    /// Takes the slot's refresh lease for `holder` until `expires_at`, unless another
    /// holder has one that has not expired at `now`. True if `holder` now holds it.
    async fn try_lease(
        &self,
        slot: &Slot,
        holder: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<bool, StoreError>;
    /// Pushes the expiry of a lease `holder` holds. False if it no longer holds it.
    async fn extend_lease(
        &self,
        slot: &Slot,
        holder: &str,
        expires_at: i64,
    ) -> Result<bool, StoreError>;
    /// Gives up a lease `holder` holds (nothing happens if it no longer does).
    async fn release_lease(&self, slot: &Slot, holder: &str) -> Result<(), StoreError>;
    /// Sends `payload` to every instance listening on this database. Nothing to do where
    /// only one instance can use the database (SQLite).
    async fn notify(&self, _payload: &str) -> Result<(), StoreError> {
        Ok(())
    }
    /// The notifications other instances send; `None` where there are none (SQLite).
    async fn listen(&self) -> Result<Option<Box<dyn Notifications>>, StoreError> {
        Ok(None)
    }

    // Key rotation (see `crate::rotate`). These read and write envelopes by row key
    // across tenants: they are for the operator's rotation, never for a request path.

    /// Rows in `table`, or only those up to and including position `up_to`.
    async fn count_rows(&self, table: SealedTable, up_to: Option<&str>) -> Result<u64, StoreError>;
    /// Up to `limit` rows after position `after`, in scan order.
    async fn sealed_page(
        &self,
        table: SealedTable,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SealedRow>, StoreError>;
    /// One row's envelopes.
    async fn sealed_row(
        &self,
        table: SealedTable,
        key: &str,
    ) -> Result<Option<SealedRow>, StoreError>;
    /// Applies each rewrap whose row still holds its `old` envelopes, and saves the
    /// checkpoint, in one transaction. Returns the keys of rows that had changed (or
    /// gone) and were left alone.
    async fn rewrap(
        &self,
        table: SealedTable,
        rows: &[Rewrap],
        checkpoint: &Checkpoint,
    ) -> Result<Vec<String>, StoreError>;
    /// The saved rotation progress for `table`.
    async fn rotation_checkpoint(
        &self,
        table: SealedTable,
    ) -> Result<Option<Checkpoint>, StoreError>;
    /// Forgets all rotation progress (the rotation finished).
    async fn clear_rotation_checkpoints(&self) -> Result<(), StoreError>;
    /// The associated-data version every stored value is known to be sealed under:
    /// 1 until a rotation has re-sealed every value with its binding, then 2.
    async fn aad_version(&self) -> Result<u8, StoreError>;
    /// Records that every stored value is sealed under AAD `version`.
    async fn set_aad_version(&self, version: u8) -> Result<(), StoreError>;
    /// The key ids the stored envelopes were sealed under (each envelope's first
    /// byte), across every sealed column; empty when the database holds no sealed
    /// value. One scan per column, for start-up and readiness checks.
    async fn key_ids_in_use(&self) -> Result<std::collections::BTreeSet<u8>, StoreError>;
    /// How many times the key set was changed (`key_set` module): 0 until the first
    /// change. Serving instances compare it with the value they last saw.
    async fn key_set_version(&self) -> Result<i64, StoreError>;
    /// Records a key-set change; the new version.
    async fn bump_key_set_version(&self) -> Result<i64, StoreError>;
}

/// The `WHERE` clause selecting a slot: `$1` tenant, `$2` server, and `$3` subject for a
/// per-user slot. Two texts rather than `IS NOT DISTINCT FROM`, so each can use its
/// partial unique index.
fn slot_clause(slot: &Slot) -> &'static str {
    match slot.subject {
        Some(_) => "tenant_id = $1 AND server_id = $2 AND subject = $3",
        None => "tenant_id = $1 AND server_id = $2 AND subject IS NULL",
    }
}

/// A list of names as the JSON array text stored in a column.
fn json_text(names: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(names).map_err(|e| StoreError::Conflict(e.to_string()))
}

/// The list of names in the JSON array text column `column`.
fn json_list<R>(r: &R, column: &str) -> Result<Vec<String>, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let text: String = r.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| sqlx::Error::ColumnDecode {
        index: column.into(),
        source: Box::new(e),
    })
}

/// Implements [`Store`] for a pool type, with the methods of the listed table modules
/// (each module's `methods!` adds its methods and hands the collection back to
/// `@impl`; the last one emits the `impl Store`). Both backends run the same SQL text;
/// the macro exists only because sqlx's executor bounds differ per database type.
macro_rules! sql_store {
    ($name:ident, $pool:ty, $migrator:expr, [$($table:ident),* $(,)?] $(, $field:ident: $fty:ty)*) => {
        /// A store on this backend.
        #[derive(Debug, Clone)]
        pub struct $name {
            pool: $pool,
            $($field: $fty,)*
        }

        impl $name {
            /// Wraps a pool and applies the migrations (idempotent, one transaction each).
            pub async fn new(pool: $pool) -> Result<Self, StoreError> {
                $migrator
                    .run(&pool)
                    .await
                    .map_err(|e| StoreError::Migration(e.to_string()))?;
                Ok(Self {
                    pool,
                    $($field: Default::default(),)*
                })
            }

            /// The pool.
            pub fn pool(&self) -> &$pool {
                &self.pool
            }
        }
        $crate::store::sql_store! { @impl $name [$($table),*] {
            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }
        } }
    };
    // Every table's methods collected: the one `impl Store`.
    (@impl $name:ident [] { $($methods:tt)* }) => {
        #[async_trait::async_trait]
        impl Store for $name {
            $($methods)*
        }
    };
    // The next table adds its methods and hands the collection back.
    (@impl $name:ident [$table:ident $(, $rest:ident)*] { $($methods:tt)* }) => {
        $table::methods! { $name [$($rest),*] { $($methods)* } }
    };
}
pub(crate) use sql_store;

sql_store!(
    SqliteStore,
    sqlx::SqlitePool,
    sqlx::migrate!("migrations/sqlite"),
    [
        servers,
        credentials,
        flows,
        headers,
        clients,
        audit,
        api_keys,
        sessions,
        leases,
        sealed_columns,
        key_set
    ],
    wal: Option<std::sync::Arc<wal::WalKeeper>>
);
sql_store!(
    PgStore,
    sqlx::PgPool,
    sqlx::migrate!("migrations/postgres"),
    [
        servers,
        credentials,
        flows,
        headers,
        clients,
        audit,
        api_keys,
        sessions,
        leases,
        sealed_columns,
        key_set,
        notify
    ]
);
