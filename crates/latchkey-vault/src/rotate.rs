//! Key rotation: re-encrypt every stored secret under the keyring's current key.
//!
//! The procedure an operator follows: configure the new key as current on every
//! instance (older keys stay configured for reading), then run the rotation, then drop
//! the old key once the report shows nothing left under it.
//!
//! Properties:
//! * **Resumable.** Rows are visited in the store's scan order in batches; each batch's
//!   updates and the checkpoint (`key_rotation` table) commit in one transaction, so an
//!   interrupted run resumes after the last committed row and never repeats work.
//! * **Safe while serving.** A rewrap is a compare-and-swap on the old envelope bytes of
//!   every sealed column of the row; it leaves `generation` alone, so a token service's
//!   write-back (CAS on `(id, generation)`) is never broken by a rotation, and a row that
//!   changed since it was read is re-read and retried rather than overwritten.
//! * **Re-seals to the binding.** Until the store records AAD version 2, every value is
//!   opened (under its binding, else under its row id alone, as values were sealed
//!   before the binding existed) and those opened the old way are sealed again with
//!   their binding ([`crate::sealed`]); at the end the version is recorded and the
//!   keyring stops opening row-id-only values. `latchkey serve` runs this at start-up.
//! * **Never destructive.** A value that cannot be decrypted with any configured key is
//!   left exactly as it is and counted (R-STORE-6: that is "re-consent needed", never a
//!   reason to delete).

use crate::keyring::{AadVersion, Keyring, KeyringError};
pub use crate::sealed::{Checkpoint, Rewrap, SealedRow, SealedTable};
use crate::store::{Store, StoreError};

/// Rotation settings.
#[derive(Debug, Clone, Copy)]
pub struct RotateOptions {
    /// Rows per batch (one transaction each).
    pub batch_size: u32,
    /// Unix seconds, for the checkpoint rows.
    pub now: i64,
}

impl RotateOptions {
    /// Default batch size: large enough to amortise a transaction, small enough to
    /// keep each one short while Latchkey serves.
    pub const DEFAULT_BATCH: u32 = 2_000;
}

/// What a rotation did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RotationReport {
    /// The key everything was re-encrypted to.
    pub target_key: u8,
    /// Whether an interrupted rotation was resumed.
    pub resumed: bool,
    /// Rows visited.
    pub rows_scanned: u64,
    /// Rows written (at least one value re-encrypted).
    pub rows_rewrapped: u64,
    /// Values re-encrypted.
    pub values_rewrapped: u64,
    /// Rows that changed between read and write and were re-read.
    pub concurrent_changes: u64,
    /// Values that no configured key opens, left untouched (their slots need
    /// re-consent).
    pub undecryptable: u64,
}

/// Rotation failures. Nothing is lost on either: committed batches stay committed and
/// the checkpoint says where to resume.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// No key, or invalid key configuration.
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Receives progress, e.g. to draw a progress bar.
pub trait RotationProgress: Send + Sync {
    /// A table starts: `total` rows, of which `done` were handled by an earlier run.
    fn table_started(&self, table: SealedTable, total: u64, done: u64);
    /// `rows` more rows handled.
    fn advanced(&self, rows: u64);
    /// The table is finished.
    fn table_finished(&self, table: SealedTable);
}

/// Progress that goes nowhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl RotationProgress for NoProgress {
    fn table_started(&self, _: SealedTable, _: u64, _: u64) {}
    fn advanced(&self, _: u64) {}
    fn table_finished(&self, _: SealedTable) {}
}

/// How many times a row that keeps changing under us is re-read before the rotation
/// leaves it to a later run (it was then written by a serving instance, which writes
/// under its own current key).
const CONFLICT_ROUNDS: usize = 3;

/// Re-encrypts every sealed value not under the current key. See the module docs.
pub async fn rotate(
    store: &dyn Store,
    keyring: &Keyring,
    opts: RotateOptions,
    progress: &dyn RotationProgress,
) -> Result<RotationReport, RotateError> {
    let target = keyring.current_key_id()?;
    // Values sealed before the binding existed are opened under their row id alone and
    // re-sealed with their binding, whatever their key: every value is opened once.
    let reseal = store.aad_version().await? < 2;
    let mut report = RotationReport {
        target_key: target,
        ..RotationReport::default()
    };
    let batch = opts.batch_size.max(1);
    for table in SealedTable::ALL {
        let mut cp = match store.rotation_checkpoint(table).await? {
            Some(cp) if cp.target_key == target => {
                report.resumed = true;
                cp
            }
            _ => Checkpoint {
                target_key: target,
                last_row: None,
                done: false,
                updated_at: opts.now,
            },
        };
        if cp.done {
            continue;
        }
        let total = store.count_rows(table, None).await?;
        let done = match &cp.last_row {
            Some(k) => store.count_rows(table, Some(k)).await?,
            None => 0,
        };
        progress.table_started(table, total, done);
        loop {
            let page = store
                .sealed_page(table, cp.last_row.as_deref(), batch)
                .await?;
            let Some(last) = page.last().map(|r| r.position.clone()) else {
                break;
            };
            let n = page.len() as u64;
            let mut rewraps = Vec::new();
            for row in &page {
                let (w, undecryptable) = rewrap_row(keyring, table, row, reseal)?;
                report.undecryptable += undecryptable;
                rewraps.extend(w);
            }
            cp.last_row = Some(last);
            cp.updated_at = opts.now;
            let conflicts = store.rewrap(table, &rewraps, &cp).await?;
            report.rows_scanned += n;
            count_written(&rewraps, &conflicts, &mut report);
            retry_conflicts(store, keyring, table, conflicts, reseal, &mut report).await?;
            progress.advanced(n);
            if n < u64::from(batch) {
                break;
            }
        }
        cp.done = true;
        store.rewrap(table, &[], &cp).await?;
        progress.table_finished(table);
    }
    store.clear_rotation_checkpoints().await?;
    if reseal {
        // Every value that opens is now sealed with its binding: from here on a value
        // sealed to its row id alone (an old copy moved into a row) is refused.
        store.set_aad_version(2).await?;
        keyring.refuse_legacy_aad();
    }
    Ok(report)
}

/// Whether the key `id` opens any of a sample of stored values sealed under it (the
/// first rows of each sealed table); `None` when the sample holds no value under `id`.
/// A configured key that opens none of them is not the key they were sealed with.
pub async fn key_opens_sample(
    store: &dyn Store,
    keyring: &Keyring,
    id: u8,
) -> Result<Option<bool>, RotateError> {
    const SAMPLE: u32 = 64;
    let mut tried = false;
    for table in SealedTable::ALL {
        for row in store.sealed_page(table, None, SAMPLE).await? {
            for (column, value) in table.columns().iter().zip(&row.values) {
                let Some(envelope) = value.as_deref().filter(|e| e.first() == Some(&id)) else {
                    continue;
                };
                tried = true;
                if keyring.opens(envelope, row.aad(table, column))? {
                    return Ok(Some(true));
                }
            }
        }
    }
    Ok(tried.then_some(false))
}

/// Re-reads rows whose CAS failed and tries again, a bounded number of times.
async fn retry_conflicts(
    store: &dyn Store,
    keyring: &Keyring,
    table: SealedTable,
    mut keys: Vec<String>,
    reseal: bool,
    report: &mut RotationReport,
) -> Result<(), RotateError> {
    for _ in 0..CONFLICT_ROUNDS {
        if keys.is_empty() {
            return Ok(());
        }
        report.concurrent_changes += keys.len() as u64;
        let mut rewraps = Vec::new();
        for key in &keys {
            // A row that is gone (deleted, or replaced under a new id) needs nothing.
            // Undecryptable values were counted when the row was first read.
            if let Some(row) = store.sealed_row(table, key).await? {
                rewraps.extend(rewrap_row(keyring, table, &row, reseal)?.0);
            }
        }
        let Some(cp) = store.rotation_checkpoint(table).await? else {
            return Ok(());
        };
        keys = store.rewrap(table, &rewraps, &cp).await?;
        count_written(&rewraps, &keys, report);
    }
    Ok(())
}

/// Adds the rewraps that were applied (all but `conflicts`) to the report.
fn count_written(rewraps: &[Rewrap], conflicts: &[String], report: &mut RotationReport) {
    for w in rewraps.iter().filter(|w| !conflicts.contains(&w.key)) {
        report.rows_rewrapped += 1;
        report.values_rewrapped += w.old.iter().zip(&w.new).filter(|(o, n)| o != n).count() as u64;
    }
}

/// The rewrap for one row, or `None` when every value is already under the current
/// key (and, with `reseal`, under its binding) or cannot be opened (left alone); with
/// the number of values that cannot be.
fn rewrap_row(
    keyring: &Keyring,
    table: SealedTable,
    row: &SealedRow,
    reseal: bool,
) -> Result<(Option<Rewrap>, u64), RotateError> {
    let mut undecryptable = 0;
    let mut new = row.values.clone();
    let mut changed = false;
    for (slot, (column, value)) in new.iter_mut().zip(table.columns().iter().zip(&row.values)) {
        let Some(envelope) = value else { continue };
        let rekey = keyring.needs_rewrap(envelope)?;
        if !rekey && !reseal {
            continue;
        }
        let aad = row.aad(table, column);
        match keyring.decrypt_versioned(envelope, aad) {
            Ok((plain, version)) => {
                if rekey || version == AadVersion::V1 {
                    *slot = Some(keyring.encrypt(&plain, aad)?);
                    changed = true;
                }
            }
            Err(KeyringError::Undecryptable) => undecryptable += 1,
            Err(e) => return Err(e.into()),
        }
    }
    if !changed {
        return Ok((None, undecryptable));
    }
    let w = Rewrap {
        key: row.key.clone(),
        position: row.position.clone(),
        old: row.values.clone(),
        new,
    };
    Ok((Some(w), undecryptable))
}
