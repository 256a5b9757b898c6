//! `latchkey-bench startup`: how long `latchkey serve` takes from being spawned until
//! `/healthz` answers, on a fresh data directory (key generated, SQLite created,
//! migrations applied) and on an existing one (a restart), and its resident memory
//! after some idle seconds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Arguments of `latchkey-bench startup`.
#[derive(Debug, clap::Args)]
pub(crate) struct StartupArgs {
    /// The `latchkey` binary to run (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/latchkey")]
    latchkey: PathBuf,
    /// Starts per kind (fresh data directory, restart).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Idle seconds before resident memory is read.
    #[arg(long, default_value_t = 3)]
    idle_seconds: u64,
}

/// One start: spawn, poll `/healthz` every millisecond, report the time to the first
/// 200 and (optionally after idling) the resident memory; then stop the process.
async fn start_once(
    bin: &Path,
    dir: &Path,
    idle: Option<Duration>,
) -> anyhow::Result<(Duration, Option<u64>)> {
    let port = crate::free_port()?;
    let began = Instant::now();
    let mut child = tokio::process::Command::new(bin)
        .arg("serve")
        .env("LATCHKEY_DATA_DIR", dir)
        .env("LATCHKEY_LISTEN", format!("127.0.0.1:{port}"))
        .env("LATCHKEY_LOG", "warn")
        .env_remove("LATCHKEY_DATABASE_URL")
        .env_remove("LATCHKEY_ENCRYPTION_KEYS")
        .env_remove("LATCHKEY_KEY_FILE")
        .env_remove("LATCHKEY_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let ready = loop {
        if let Ok((200, _)) = crate::call_json(addr, hyper::Method::GET, "/healthz", None).await {
            break began.elapsed();
        }
        if began.elapsed() > Duration::from_secs(30) {
            bail!("latchkey did not answer /healthz within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let rss = match idle {
        Some(d) => {
            tokio::time::sleep(d).await;
            child.id().and_then(crate::rss_kib)
        }
        None => None,
    };
    child.kill().await?;
    Ok((ready, rss))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(label: &str, mut v: Vec<Duration>) -> String {
    v.sort();
    let median = v.get(v.len() / 2).copied().unwrap_or_default();
    let max = v.last().copied().unwrap_or_default();
    let min = v.first().copied().unwrap_or_default();
    format!(
        "| {label} | {} | {:.1} | {:.1} | {:.1} |",
        v.len(),
        ms(min),
        ms(median),
        ms(max)
    )
}

pub(crate) async fn run(a: StartupArgs) -> anyhow::Result<()> {
    let root = std::env::temp_dir().join(format!("latchkey-bench-startup-{}", std::process::id()));
    let mut fresh = Vec::new();
    let mut restart = Vec::new();
    let mut rss = Vec::new();
    for i in 0..a.runs {
        let dir = root.join(format!("run-{i}"));
        std::fs::create_dir_all(&dir)?;
        fresh.push(start_once(&a.latchkey, &dir, None).await?.0);
        let idle = (i == 0).then(|| Duration::from_secs(a.idle_seconds));
        let (t, r) = start_once(&a.latchkey, &dir, idle).await?;
        restart.push(t);
        rss.extend(r);
    }
    let _ = std::fs::remove_dir_all(&root);
    println!("spawn until /healthz answers 200 (SQLite, local mode)");
    println!("| start | runs | min ms | median ms | max ms |");
    println!("|---|---|---|---|---|");
    println!("{}", summary("fresh data directory", fresh));
    println!("{}", summary("restart (existing data directory)", restart));
    if let Some(kib) = rss.first() {
        println!(
            "idle RSS {} s after a restart: {:.1} MB",
            a.idle_seconds,
            *kib as f64 / 1024.0
        );
    }
    Ok(())
}
