//! Keeping an SQLite database's write-ahead log bounded (issue 17: one load run left a
//! 1.7 GB WAL). SQLite's own checkpoints are passive: while readers keep using the WAL
//! none completes, the WAL is never restarted and only grows. So every connection sets
//! `journal_size_limit` (a WAL a checkpoint reset is truncated to it) and
//! `wal_autocheckpoint`, and a keeper task the store owns runs
//! `PRAGMA wal_checkpoint(TRUNCATE)` every [`WalBound::every`], and at once when the
//! `-wal` file grows over [`WalBound::limit`]: that checkpoint waits (up to
//! [`WalBound::wait`]) for the readers still using the WAL, then truncates it to zero.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::ConnectOptions as _;

use super::StoreError;

/// How an SQLite store keeps its WAL bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalBound {
    /// The WAL's bound, bytes: every connection's `journal_size_limit`, and the size
    /// over which the keeper checkpoints and truncates it without waiting for
    /// [`WalBound::every`].
    pub limit: u64,
    /// A truncating checkpoint at least this often, whatever the WAL's size.
    pub every: Duration,
    /// How often the keeper looks at the `-wal` file's size.
    pub poll: Duration,
    /// How long a checkpoint waits for readers still using the WAL. Writers wait
    /// meanwhile, so this stays well under their busy timeout (5 s); a checkpoint that
    /// could not finish is tried again at the next tick.
    pub wait: Duration,
}

impl Default for WalBound {
    /// 64 MiB, a checkpoint every 30 s, the size looked at every second, readers
    /// waited for up to 1 s.
    fn default() -> Self {
        Self {
            limit: 64 * 1024 * 1024,
            every: Duration::from_secs(30),
            poll: Duration::from_secs(1),
            wait: Duration::from_secs(1),
        }
    }
}

/// The pages after which a connection checkpoints passively on commit (SQLite's
/// default, about 4 MiB of 4 KiB pages, set explicitly).
pub(super) const WAL_AUTOCHECKPOINT_PAGES: u32 = 1000;

/// What a checkpoint did: the answer of `PRAGMA wal_checkpoint(TRUNCATE)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalCheckpoint {
    /// Readers or a writer kept it from finishing within [`WalBound::wait`]: the WAL
    /// was not truncated.
    pub busy: bool,
    /// Frames in the WAL before it was truncated (-1 when not in WAL mode).
    pub log_frames: i64,
    /// Frames copied into the database file.
    pub checkpointed_frames: i64,
}

/// The WAL keeper of one SQLite store: a connection of its own (with the short busy
/// timeout) and a task holding only a weak reference, so the task ends once the last
/// clone of the store is dropped.
pub(super) struct WalKeeper {
    conn: tokio::sync::Mutex<sqlx::SqliteConnection>,
    wal: PathBuf,
    bound: WalBound,
}

impl std::fmt::Debug for WalKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalKeeper")
            .field("wal", &self.wal)
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

impl WalKeeper {
    /// Connects to the database at `path` (opened with `opts`) and starts the task.
    pub(super) async fn start(
        opts: &sqlx::sqlite::SqliteConnectOptions,
        path: &Path,
        bound: WalBound,
    ) -> Result<Arc<Self>, StoreError> {
        let conn = opts.clone().busy_timeout(bound.wait).connect().await?;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let keeper = Arc::new(Self {
            conn: tokio::sync::Mutex::new(conn),
            wal: wal.into(),
            bound,
        });
        tokio::spawn(keep(Arc::downgrade(&keeper), bound));
        Ok(keeper)
    }

    /// Checkpoints the whole WAL and truncates it, waiting up to [`WalBound::wait`]
    /// for readers still using it.
    pub(super) async fn checkpoint(&self) -> Result<WalCheckpoint, StoreError> {
        let mut conn = self.conn.lock().await;
        checkpoint(&mut *conn).await
    }

    /// The `-wal` file's size (0 when there is none).
    fn wal_size(&self) -> u64 {
        std::fs::metadata(&self.wal).map_or(0, |m| m.len())
    }
}

/// `PRAGMA wal_checkpoint(TRUNCATE)` on `conn`.
pub(super) async fn checkpoint<'c, E>(conn: E) -> Result<WalCheckpoint, StoreError>
where
    E: sqlx::Executor<'c, Database = sqlx::Sqlite>,
{
    let (busy, log, done): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
        .fetch_one(conn)
        .await?;
    Ok(WalCheckpoint {
        busy: busy != 0,
        log_frames: log,
        checkpointed_frames: done,
    })
}

/// The keeper's loop: a look at the size every `poll`, a checkpoint when it is over
/// the limit or `every` has passed since the last one.
async fn keep(keeper: Weak<WalKeeper>, bound: WalBound) {
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(bound.poll).await;
        let Some(k) = keeper.upgrade() else { return };
        if last.elapsed() < bound.every && k.wal_size() <= bound.limit {
            continue;
        }
        match k.checkpoint().await {
            Ok(c) if c.busy => tracing::debug!(
                event = "vault.wal_checkpoint_busy",
                log_frames = c.log_frames,
                checkpointed_frames = c.checkpointed_frames,
                "readers kept the WAL checkpoint from finishing; tried again at the next tick"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(event = "vault.wal_checkpoint_failed", error = %e),
        }
        last = tokio::time::Instant::now();
    }
}
