//! `latchkey keys add | rotate`: manage the keys secrets are sealed with.
//!
//! Rotation, step by step: `keys add` puts a fresh current key in the key file (older
//! keys stay for reading) and tells the serving instances, which reload their keys and
//! write under the new one within seconds (no restart); `keys rotate` re-encrypts
//! everything still under an older key, and may run while Latchkey serves; once its
//! report shows nothing left to rewrap, older keys can go.
//!
//! Both commands record the change in the database
//! ([`latchkey_gateway::cluster::key_set_changed`]): announced on PostgreSQL's change
//! channel, and read from `vault_state` by every instance on a short timer, so a
//! `latchkey serve` beside the command on SQLite notices too.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use latchkey_core::{Clock, SystemClock};
use latchkey_vault::KeySource;
use latchkey_vault::rotate::{self, RotateOptions, RotationProgress, SealedTable};

use crate::exit;
use crate::state::{KEYS_ENV, Keys, State, StateArgs};

/// `latchkey keys …`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Generate a fresh key and make it current in the key file (older keys are kept
    /// for reading). Creates the key file if there is none.
    Add {
        #[command(flatten)]
        state: StateArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Re-encrypt every stored secret under the current key. Resumable; safe to run
    /// while Latchkey serves.
    Rotate {
        #[command(flatten)]
        state: StateArgs,
        /// Rows per transaction.
        #[arg(long, default_value_t = RotateOptions::DEFAULT_BATCH, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        batch_size: u32,
        /// Print JSON instead of text (and no progress bar).
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Add { state, json } => add(state, json).await,
        Command::Rotate {
            state,
            batch_size,
            json,
        } => rotate(state, batch_size, json).await,
    }
}

/// Tells the serving instances that the key set changed; whether it could. A SQLite
/// database that does not exist yet has no instance serving it (nothing is created).
async fn announce(state: &State) -> bool {
    if let latchkey_vault::store::DatabaseUrl::Sqlite(path) = &state.database
        && !path.exists()
    {
        return true;
    }
    let Ok(store) = state.database.open().await else {
        return false;
    };
    match latchkey_gateway::cluster::key_set_changed(store.as_ref()).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(event = "keys.announce_failed", error = %e);
            false
        }
    }
}

#[allow(clippy::print_stdout)] // this command's output is its product
async fn add(state: StateArgs, json: bool) -> anyhow::Result<ExitCode> {
    let state = state.resolve()?;
    let Keys::File(file) = &state.keys else {
        eprintln!(
            "latchkey: keys come from {KEYS_ENV}; put a new entry first there \
             (`<id>:<64 hex>`, e.g. from `openssl rand -hex 32`) and keep the old ones after it"
        );
        return Ok(exit::code(exit::CONFIG));
    };
    let next = match file.load()? {
        Some(set) => set.with_new_current_key()?,
        None => latchkey_vault::KeySet::generate()?,
    };
    file.write(&next)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.0.display()))?;
    let ids = next.ids();
    let announced = announce(&state).await;
    if !announced {
        eprintln!(
            "latchkey: the database ({}) could not be told of the new key; restart each \
             running Latchkey so it writes under key {}",
            state.database,
            next.current()
        );
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"key_file": file.0, "current_key": next.current(), "keys": ids, "announced": announced})
        );
    } else {
        println!(
            "Key {} is now current in {} (keys: {}).\nRunning instances that read this key file write under it within seconds; then run `latchkey keys rotate`.",
            next.current(),
            file.0.display(),
            ids.iter().map(u8::to_string).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::print_stdout)] // this command's output is its product
async fn rotate(state: StateArgs, batch_size: u32, json: bool) -> anyhow::Result<ExitCode> {
    let state = state.resolve()?;
    let keyring = state.keyring();
    if let Err(e) = keyring.check() {
        eprintln!("latchkey: {e} ({})", key_hint(&state.keys));
        return Ok(exit::code(exit::CONFIG));
    }
    let store = match state.open_store().await {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    // Serving instances switch to this key file's current key before anything is
    // re-encrypted under it, so none keeps writing under a key being retired.
    if let Err(e) = latchkey_gateway::cluster::key_set_changed(store.as_ref()).await {
        eprintln!("latchkey: cannot record the key change in the database: {e}");
        return Ok(exit::code(exit::UNAVAILABLE));
    }
    let bar = Bar::new(json);
    let started = Instant::now();
    let opts = RotateOptions {
        batch_size,
        now: i64::try_from(SystemClock.now().as_secs()).unwrap_or(i64::MAX),
    };
    let report = match rotate::rotate(store.as_ref(), &keyring, opts, &bar).await {
        Ok(r) => r,
        Err(e) => {
            bar.0.abandon();
            eprintln!(
                "latchkey: key rotation stopped: {e}. Committed work is kept; run it again to resume."
            );
            return Ok(exit::code(match e {
                rotate::RotateError::Keyring(_) => exit::CONFIG,
                rotate::RotateError::Store(_) => exit::UNAVAILABLE,
            }));
        }
    };
    bar.0.finish_and_clear();
    let elapsed = started.elapsed();
    let rate = rows_per_sec(report.rows_scanned, elapsed);
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["elapsed_ms"] = serde_json::json!(elapsed.as_millis());
        v["rows_per_sec"] = serde_json::json!(rate);
        println!("{v}");
    } else {
        println!(
            "Re-encrypted {} values in {} rows under key {} ({} rows scanned{} in {:.1?}, {rate} rows/s).",
            report.values_rewrapped,
            report.rows_rewrapped,
            report.target_key,
            report.rows_scanned,
            if report.resumed { ", resumed" } else { "" },
            elapsed,
        );
        if report.concurrent_changes > 0 {
            println!(
                "{} rows changed while they were being rotated and were re-read.",
                report.concurrent_changes
            );
        }
        if report.undecryptable > 0 {
            println!(
                "{} values open with none of the configured keys; they were left as they are and their users must reconnect.",
                report.undecryptable
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn key_hint(keys: &Keys) -> String {
    match keys {
        Keys::Env => format!("keys from {KEYS_ENV}"),
        Keys::File(f) => format!("key file {}", f.0.display()),
    }
}

fn rows_per_sec(rows: u64, d: Duration) -> u64 {
    let ms = d.as_millis().max(1);
    u64::try_from(u128::from(rows) * 1000 / ms).unwrap_or(u64::MAX)
}

/// A progress bar on standard error; hidden when that is not a terminal or with
/// `--json`.
struct Bar(ProgressBar);

impl Bar {
    fn new(quiet: bool) -> Self {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:>18} [{bar:40}] {pos}/{len} rows ({per_sec}, {eta} left)",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Self(bar)
    }
}

impl RotationProgress for Bar {
    fn table_started(&self, table: SealedTable, total: u64, done: u64) {
        self.0.reset();
        self.0.set_message(table.name());
        self.0.set_length(total);
        self.0.set_position(done);
    }
    fn advanced(&self, rows: u64) {
        self.0.inc(rows);
    }
    fn table_finished(&self, _: SealedTable) {
        self.0.set_position(self.0.length().unwrap_or(0));
    }
}
