//! Issue 17 (Operations): an SQLite store keeps its write-ahead log bounded even while
//! concurrent readers keep SQLite's own (passive) checkpoints from completing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use latchkey_vault::store::{AuditEvent, WalBound};
use latchkey_vault::{SqliteStore, Store};

use super::{NOW, tempdir};

/// 1 MiB: the load below writes several times as much.
const LIMIT: u64 = 1024 * 1024;

fn wal_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    p.into()
}

fn wal_size(db: &Path) -> u64 {
    std::fs::metadata(wal_path(db)).map_or(0, |m| m.len())
}

/// Readers that each hold a read transaction (a WAL snapshot) for 100 ms, over and
/// over, overlapping, until `stop`; returned once the first one holds its snapshot.
async fn readers(store: &SqliteStore, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<u64>> {
    let holding = Arc::new(AtomicBool::new(false));
    let handles = (0..2)
        .map(|i| {
            let pool = store.pool().clone();
            let stop = stop.clone();
            let holding = holding.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50 * i)).await;
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) {
                    let mut tx = pool.begin().await.unwrap();
                    let _: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_events")
                        .fetch_one(&mut *tx)
                        .await
                        .unwrap();
                    holding.store(true, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    tx.commit().await.unwrap();
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    while !holding.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handles
}

/// Two writers appending 64 KiB audit records, `bytes` in all, while the largest WAL
/// seen is recorded in `max_wal`.
async fn write_load(store: &SqliteStore, db: &Path, bytes: u64, max_wal: &AtomicU64) {
    const RECORD: usize = 64 * 1024;
    let records = bytes / RECORD as u64;
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..records / 2 {
                    store
                        .audit(&AuditEvent {
                            tenant: "t1".into(),
                            actor: format!("writer-{w}"),
                            action: "load.write".into(),
                            server: None,
                            subject: None,
                            // Distinct bytes per record (nothing compresses them away).
                            detail: Some(format!("{w}-{i}-").repeat(RECORD / 8)),
                            at: NOW,
                        })
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut done = false;
    while !done {
        max_wal.fetch_max(wal_size(db), Ordering::Relaxed);
        done = writers.iter().all(|w| w.is_finished());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for w in writers {
        w.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkpoint_truncates_the_wal_under_concurrent_readers() {
    let dir = tempdir::Dir::new();
    let db = dir.path().join("latchkey.db");
    // The keeper's own ticks far away: only the explicit checkpoint below runs.
    let bound = WalBound {
        limit: LIMIT,
        every: Duration::from_secs(3600),
        poll: Duration::from_secs(3600),
        wait: Duration::from_secs(2),
    };
    let store = SqliteStore::open_with(&db, bound).await.unwrap();
    let limit: i64 = sqlx::query_scalar("PRAGMA journal_size_limit")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(limit, LIMIT as i64);
    let pages: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(pages, 1000);

    let stop = Arc::new(AtomicBool::new(false));
    let reading = readers(&store, &stop).await;
    let max_wal = AtomicU64::new(0);
    write_load(&store, &db, 8 * LIMIT, &max_wal).await;
    let grown = max_wal.load(Ordering::Relaxed).max(wal_size(&db));
    assert!(
        grown > LIMIT,
        "the readers kept the passive checkpoints from resetting the WAL: {grown} bytes"
    );

    // The readers go on; the checkpoint waits for their snapshots and truncates. On a
    // loaded machine a reader can outlast one wait (the keeper then tries again at its
    // next tick): a few attempts.
    let mut c = store.checkpoint().await.unwrap();
    for _ in 0..5 {
        if !c.busy {
            break;
        }
        c = store.checkpoint().await.unwrap();
    }
    assert!(!c.busy, "{c:?}");
    assert_eq!(c.log_frames, c.checkpointed_frames, "{c:?}");
    let after = wal_size(&db);
    assert!(after <= LIMIT, "WAL of {after} bytes after the checkpoint");
    stop.store(true, Ordering::Relaxed);
    for r in reading {
        assert!(r.await.unwrap() > 0, "the readers read throughout");
    }
    // Nothing was lost on the way.
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_events")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(n as u64, 8 * LIMIT / (64 * 1024));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_keeper_brings_the_wal_back_within_its_bound() {
    let dir = tempdir::Dir::new();
    let db = dir.path().join("latchkey.db");
    // The load through a store whose keeper does not tick, so the WAL grows...
    let idle = WalBound {
        limit: LIMIT,
        every: Duration::from_secs(3600),
        poll: Duration::from_secs(3600),
        wait: Duration::from_secs(1),
    };
    let loaded = SqliteStore::open_with(&db, idle).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reading = readers(&loaded, &stop).await;
    let max_wal = AtomicU64::new(0);
    write_load(&loaded, &db, 8 * LIMIT, &max_wal).await;
    let grown = wal_size(&db);
    assert!(
        grown > LIMIT,
        "the WAL grew under the readers: {grown} bytes"
    );

    // ...then a store on the same file whose keeper ticks: with the readers still
    // going, within a few ticks it has truncated the WAL, nobody calling `checkpoint`.
    let ticking = WalBound {
        limit: LIMIT,
        every: Duration::from_millis(300),
        poll: Duration::from_millis(50),
        wait: Duration::from_secs(1),
    };
    let kept = SqliteStore::open_with(&db, ticking).await.unwrap();
    let mut after = wal_size(&db);
    // Up to 30 s: a loaded machine stretches the readers' snapshots and the ticks.
    for _ in 0..600 {
        if after <= LIMIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = wal_size(&db);
    }
    assert!(
        after <= LIMIT,
        "WAL of {after} bytes after the keeper's ticks"
    );
    stop.store(true, Ordering::Relaxed);
    for r in reading {
        assert!(r.await.unwrap() > 0, "the readers read throughout");
    }

    // Dropping the stores ends their keepers (each holds only a weak reference); the
    // file opens again and is complete.
    drop(kept);
    drop(loaded);
    let again = SqliteStore::open(&db).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_events")
        .fetch_one(again.pool())
        .await
        .unwrap();
    assert_eq!(n as u64, 8 * LIMIT / (64 * 1024));
}
