//! Where the store lives ([`DatabaseUrl`]) and opening an SQLite file.

use super::wal::{WAL_AUTOCHECKPOINT_PAGES, WalKeeper};
use super::{PgStore, SqliteStore, Store, StoreError, WalBound, WalCheckpoint};

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// An SQLite file (created if missing).
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL connection URL.
    Postgres(String),
}

impl DatabaseUrl {
    /// `postgres://…` or `postgresql://…`; `sqlite://PATH`, `sqlite:PATH` or a plain
    /// file path.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let url = url.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        if path.is_empty() || path.contains("://") {
            return Err(StoreError::Unavailable(
                "the database URL must be postgres://…, sqlite://PATH or a file path".into(),
            ));
        }
        Ok(Self::Sqlite(path.into()))
    }

    /// Opens the store and applies migrations.
    pub async fn open(&self) -> Result<std::sync::Arc<dyn Store>, StoreError> {
        Ok(match self {
            Self::Sqlite(path) => std::sync::Arc::new(SqliteStore::open(path).await?),
            Self::Postgres(url) => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(std::time::Duration::from_secs(5))
                    .connect(url)
                    .await?;
                std::sync::Arc::new(PgStore::new(pool).await?)
            }
        })
    }
}

impl std::fmt::Display for DatabaseUrl {
    /// The location without credentials (a PostgreSQL password is never printed).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            Self::Postgres(u) => match url::Url::parse(u) {
                Ok(mut u) => {
                    if u.password().is_some() {
                        let _ = u.set_password(Some("redacted"));
                    }
                    write!(f, "{u}")
                }
                Err(_) => f.write_str("postgres://(unparsable)"),
            },
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) an SQLite database file with foreign keys on and WAL.
    ///
    /// A database file it creates is the owner's alone (0600), and so are its `-wal`
    /// and `-shm` files, which SQLite creates with the database file's mode.
    ///
    /// Its write-ahead log is kept bounded as [`WalBound::default`] says.
    pub async fn open(path: &std::path::Path) -> Result<Self, StoreError> {
        Self::open_with(path, WalBound::default()).await
    }

    /// [`SqliteStore::open`] with the WAL kept within `bound`.
    pub async fn open_with(path: &std::path::Path, bound: WalBound) -> Result<Self, StoreError> {
        create_private_file(path).map_err(|e| {
            StoreError::Unavailable(format!("cannot create the database file: {e}"))
        })?;
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .foreign_keys(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(5))
            // FULL: a committed rotated refresh token survives a power cut; the AS has
            // already invalidated the old one.
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
            // 64 MiB of page cache per connection (the default is 2 MiB): slot lookups
            // on a million rows stay in memory.
            .pragma("cache_size", "-65536")
            // The WAL stays bounded (see `wal`): truncated to the limit when a
            // checkpoint resets it, and checkpointed passively every 1,000 pages.
            .pragma("journal_size_limit", bound.limit.to_string())
            .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES.to_string());
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.clone())
            .await?;
        let mut store = Self::new(pool).await?;
        store.wal = Some(WalKeeper::start(&opts, path, bound).await?);
        Ok(store)
    }

    /// Checkpoints the whole write-ahead log now and truncates it (what the WAL keeper
    /// of a store opened from a file does every [`WalBound::every`], or as soon as the
    /// WAL is over [`WalBound::limit`]), waiting up to [`WalBound::wait`] for readers.
    pub async fn checkpoint(&self) -> Result<WalCheckpoint, StoreError> {
        match &self.wal {
            Some(keeper) => keeper.checkpoint().await,
            None => super::wal::checkpoint(&self.pool).await,
        }
    }
}

/// Creates `path` empty with mode 0600 unless it exists (an existing file is left as it
/// is). SQLite treats an empty file as a new database.
fn create_private_file(path: &std::path::Path) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}
