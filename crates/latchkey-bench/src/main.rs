//! `latchkey-bench`: load runs that compare Latchkey against a direct connection, in one
//! process run on one machine, so the ratio means something.
//!
//! `latchkey-bench proxy` starts a minimal upstream MCP server, starts `latchkey serve`
//! (the release binary, embedded SQLite, a temporary data directory), registers the
//! upstream as an OAuth server with a deposited refresh token, then alternates rounds of
//! the same closed-loop load (`tools/call`) straight to the upstream and through
//! `/mcp/{server}` with the cached token, and prints medians, p99s, throughput and the
//! differences. `--soak-seconds` then keeps the proxied load running and samples
//! Latchkey's resident memory. `latchkey-bench startup` times `latchkey serve` from
//! spawn to its first `/healthz` answer and reads its idle memory. `latchkey-bench soak`
//! sends a fixed rate through `/mcp/{server}` for minutes while tokens expire, and checks
//! errors, refresh grants and memory. `latchkey-bench token-memory` measures the token
//! service's memory with 100,000 cached tokens.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)] // a report tool: its output is the point

mod callgrind;
mod floor;
mod load;
mod soak;
mod startup;
mod token_memory;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(name = "latchkey-bench", about = "Latchkey load runs")]
enum Cli {
    /// Direct vs through `/mcp/{server}`: latency, throughput, memory.
    Proxy(ProxyArgs),
    /// Start-up time of `latchkey serve` and its idle memory.
    Startup(startup::StartupArgs),
    /// Minutes at a fixed rate through `/mcp/{server}` with token expiries: errors,
    /// refresh grants, memory.
    Soak(soak::SoakArgs),
    /// The token service's memory with many cached tokens (in this process).
    TokenMemory(token_memory::TokenMemoryArgs),
    /// Runs the floor proxy alone (the `proxy` command starts it as a process of its
    /// own, like Latchkey, so neither shares the load generator's runtime).
    #[command(hide = true)]
    Floor {
        /// Where to listen.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The upstream.
        #[arg(long)]
        upstream: std::net::SocketAddr,
        /// The outbound client.
        #[arg(long, value_enum)]
        client: floor::Client,
        /// The proxy's shape (the current-thread ones run on a current-thread runtime).
        #[arg(long, value_enum, default_value = "pooled")]
        variant: floor::Variant,
    },
}

#[derive(Debug, clap::Args)]
struct ProxyArgs {
    /// The `latchkey` binary to run (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/latchkey")]
    latchkey: PathBuf,
    /// Concurrent clients, each on its own keep-alive connection.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds per measured round.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Rounds per path (direct and proxied rounds alternate).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Warm-up seconds per path before measuring.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// The floor proxy's outbound client.
    #[arg(long, value_enum, default_value = "hyper")]
    floor_client: floor::Client,
    /// The floor proxy's shape in the load rounds.
    #[arg(long, value_enum, default_value = "pooled")]
    floor_variant: floor::Variant,
    /// After the comparison, run the proxied load this long and sample memory.
    #[arg(long, default_value_t = 0)]
    soak_seconds: u64,
    /// Instead of the load rounds: instructions per request of each hop's process
    /// (nginx, the minimal hyper proxy, Latchkey in four cases) over this many sequential
    /// requests, counted by valgrind's callgrind.
    #[arg(long)]
    callgrind: Option<usize>,
    /// With `--callgrind`: the hops to measure, of `nginx`, `floor` (every shape of the
    /// minimal hyper proxy), `local` (Latchkey, local mode), `jwt` (API key and JWT).
    #[arg(long, default_value = "nginx,floor,local,jwt")]
    hops: String,
    /// With `--callgrind`: keep the dumps (for `callgrind_annotate`) and say where.
    #[arg(long)]
    keep_dumps: bool,
    /// The nginx binary: a second floor in the load rounds and in `--callgrind` (left
    /// out if it is missing).
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = match &cli {
        Cli::Floor { variant, .. } if variant.current_thread() => {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
        }
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    };
    match cli {
        Cli::Proxy(args) => rt.block_on(proxy(args)),
        Cli::Startup(args) => rt.block_on(startup::run(args)),
        Cli::Soak(args) => rt.block_on(soak::run(args)),
        Cli::TokenMemory(args) => rt.block_on(token_memory::run(args)),
        Cli::Floor {
            listen,
            upstream,
            client,
            variant,
        } => rt.block_on(async move {
            floor::start(listen, upstream, client, variant).await?;
            std::future::pending::<anyhow::Result<()>>().await
        }),
    }
}

/// A free loopback port (bound then released).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One JSON request over a fresh connection (setup calls only).
async fn call_json(
    addr: SocketAddr,
    method: hyper::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))?;
    let resp = send.send_request(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// Resident memory of `pid` in KiB (Linux).
fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS:`, `RssAnon:` …).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU time (user + system) `pid` has used so far, in clock ticks (Linux).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, in parentheses): state is
    // field 3, utime 14 and stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 if it cannot be asked).
fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A load run with the CPU time the process `pid` spent serving it.
async fn run_measured(
    target: &load::Target,
    clients: usize,
    secs: Duration,
    pid: Option<u32>,
) -> anyhow::Result<(load::Outcome, u64)> {
    let before = pid.and_then(cpu_ticks);
    let o = load::run(target, clients, secs).await?;
    let used = match (before, pid.and_then(cpu_ticks)) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => 0,
    };
    Ok((o, used))
}

/// `latchkey serve` on `port` with a fresh data directory, killed on drop.
struct Latchkey {
    child: tokio::process::Child,
    dir: PathBuf,
}

impl Drop for Latchkey {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_latchkey(bin: &PathBuf, port: u16) -> anyhow::Result<Latchkey> {
    let dir = std::env::temp_dir().join(format!("latchkey-bench-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let child = tokio::process::Command::new(bin)
        .arg("serve")
        .env("LATCHKEY_DATA_DIR", &dir)
        .env("LATCHKEY_LISTEN", format!("127.0.0.1:{port}"))
        .env("LATCHKEY_PUBLIC_URL", format!("http://127.0.0.1:{port}"))
        .env("LATCHKEY_ALLOW_INSECURE_LOOPBACK", "true")
        .env("LATCHKEY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let lk = Latchkey { child, dir };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _)) = call_json(addr, hyper::Method::GET, "/healthz", None).await {
            return Ok(lk);
        }
        if Instant::now() > deadline {
            bail!("latchkey did not answer /healthz within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn row(label: &str, o: &load::Outcome) -> String {
    format!(
        "| {label} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
        o.quantile(0.5),
        o.quantile(0.99),
        o.quantile(0.999),
        o.throughput(),
        o.errors
    )
}

async fn proxy(args: ProxyArgs) -> anyhow::Result<()> {
    if let Some(n) = args.callgrind {
        let hops = callgrind::Hops::parse(&args.hops)?;
        return callgrind::run(&args.latchkey, &args.nginx, n, hops, args.keep_dumps).await;
    }
    let (up, counters) = upstream::start().await?;
    let port = free_port()?;
    let lk = start_latchkey(&args.latchkey, port).await?;
    let pid = lk.child.id().context("latchkey exited")?;
    let lk_addr: SocketAddr = ([127, 0, 0, 1], port).into();

    let (status, server) = call_json(
        lk_addr,
        hyper::Method::POST,
        "/v1/servers",
        Some(json!({"name": "bench", "url": format!("http://{up}/mcp"), "auth_type": "oauth"})),
    )
    .await?;
    if status != 201 {
        bail!("registering the upstream: {status} {server}");
    }
    let id = server["id"].as_str().context("no server id")?.to_owned();
    let (status, v) = call_json(
        lk_addr,
        hyper::Method::POST,
        "/v1/credentials",
        Some(json!({"server_id": id, "refresh_token": "bench-rt",
                    "token_endpoint": format!("http://{up}/token"), "client_id": "bench"})),
    )
    .await?;
    if status != 200 {
        bail!("depositing the refresh token: {status} {v}");
    }

    let body = Bytes::from(
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
               "params": {"name": "echo", "arguments": {"text": "hello"}}})
        .to_string(),
    );
    let direct = load::Target {
        addr: up,
        path: "/mcp".into(),
        authorization: Some("Bearer direct-token".into()),
        body: body.clone(),
    };
    let proxied = load::Target {
        addr: lk_addr,
        path: format!("/mcp/{id}"),
        authorization: None,
        body,
    };
    let floor_port = free_port()?;
    let floor_addr: SocketAddr = ([127, 0, 0, 1], floor_port).into();
    let mut floor_proc = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "floor",
            "--listen",
            &floor_addr.to_string(),
            "--upstream",
            &up.to_string(),
        ])
        .arg("--client")
        .arg(match args.floor_client {
            floor::Client::Hyper => "hyper",
            floor::Client::Reqwest => "reqwest",
        })
        .args(["--variant", args.floor_variant.arg()])
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the floor proxy")?;
    wait_for_port(floor_addr).await?;
    let floor = load::Target {
        addr: floor_addr,
        path: "/mcp".into(),
        authorization: None,
        body: proxied.body.clone(),
    };
    // nginx, when installed: the second floor (issue 18's reference).
    let nginx = callgrind::start_nginx(&args.nginx, up).await?;
    let nginx_target = nginx.as_ref().map(|(_, addr, _)| load::Target {
        addr: *addr,
        path: "/mcp".into(),
        authorization: None,
        body: proxied.body.clone(),
    });
    let nginx_pid = nginx.as_ref().and_then(|(child, _, _)| child.id());
    let secs = Duration::from_secs(args.seconds);
    let warm = Duration::from_secs(args.warmup);
    load::run(&direct, args.clients, warm).await?;
    load::run(&floor, args.clients, warm).await?;
    if let Some(t) = &nginx_target {
        load::run(t, args.clients, warm).await?;
    }
    load::run(&proxied, args.clients, warm).await?;
    let rss_start = rss_kib(pid);
    let (mut d_runs, mut f_runs, mut p_runs, mut n_runs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // CPU ticks of the floors' and Latchkey's processes while they served their rounds.
    let (mut f_cpu, mut p_cpu, mut n_cpu) = (0u64, 0u64, 0u64);
    for _ in 0..args.rounds {
        d_runs.push(load::run(&direct, args.clients, secs).await?);
        let (o, t) = run_measured(&floor, args.clients, secs, floor_proc.id()).await?;
        f_runs.push(o);
        f_cpu += t;
        if let Some(target) = &nginx_target {
            let (o, t) = run_measured(target, args.clients, secs, nginx_pid).await?;
            n_runs.push(o);
            n_cpu += t;
        }
        let (o, t) = run_measured(&proxied, args.clients, secs, Some(pid)).await?;
        p_runs.push(o);
        p_cpu += t;
    }
    let d = load::Outcome::merge(&d_runs);
    let f = load::Outcome::merge(&f_runs);
    let p = load::Outcome::merge(&p_runs);
    println!(
        "{} clients, {} rounds x {} s per path, tools/call, keep-alive HTTP/1",
        args.clients, args.rounds, args.seconds
    );
    println!("| path | p50 µs | p99 µs | p99.9 µs | req/s | errors |");
    println!("|---|---|---|---|---|---|");
    println!("{}", row("direct", &d));
    println!(
        "{}",
        row(
            &format!("minimal proxy, {:?} client (floor)", args.floor_client),
            &f
        )
    );
    let n = (!n_runs.is_empty()).then(|| load::Outcome::merge(&n_runs));
    if let Some(n) = &n {
        println!("{}", row("nginx (floor)", n));
    }
    println!("{}", row("Latchkey /mcp/{server}", &p));
    for (label, o) in [("floor", &f), ("Latchkey", &p)] {
        println!(
            "{label}: added p50 {:.0} µs, added p99 {:.0} µs, throughput {:.1} % of direct",
            o.quantile(0.5) - d.quantile(0.5),
            o.quantile(0.99) - d.quantile(0.99),
            100.0 * o.throughput() / d.throughput()
        );
    }
    println!(
        "Latchkey's added p50 is {:.2} x the floor's",
        (p.quantile(0.5) - d.quantile(0.5)) / (f.quantile(0.5) - d.quantile(0.5))
    );
    // CPU per request does not depend on how the two cores were shared during the run
    // the way latency does: the figure to compare proxies by on a small machine.
    let tck = ticks_per_second();
    let per_request =
        |ticks: u64, o: &load::Outcome| 1e6 * ticks as f64 / tck / (o.micros.len().max(1) as f64);
    let (fc, pc) = (per_request(f_cpu, &f), per_request(p_cpu, &p));
    println!(
        "CPU per request: floor {fc:.1} µs, Latchkey {pc:.1} µs ({:.2} x the floor's)",
        pc / fc
    );
    if let Some(n) = &n {
        let nc = per_request(n_cpu, n);
        println!(
            "CPU per request: nginx {nc:.1} µs, Latchkey {pc:.1} µs ({:.2} x nginx's); added p50: nginx {:.0} µs, Latchkey {:.0} µs ({:.2} x nginx's)",
            pc / nc,
            n.quantile(0.5) - d.quantile(0.5),
            p.quantile(0.5) - d.quantile(0.5),
            (p.quantile(0.5) - d.quantile(0.5)) / (n.quantile(0.5) - d.quantile(0.5))
        );
    }
    println!(
        "refresh grants: {}; latchkey RSS after warm-up {} KiB, after the rounds {} KiB",
        counters.grants.load(Ordering::Relaxed),
        rss_start.unwrap_or(0),
        rss_kib(pid).unwrap_or(0)
    );

    if args.soak_seconds > 0 {
        println!("soak: {} s through /mcp/{{server}}", args.soak_seconds);
        println!("| t (s) | RSS KiB | req/s | errors |");
        println!("|---|---|---|---|");
        let step = Duration::from_secs(30.min(args.soak_seconds));
        let mut t = 0;
        while t < args.soak_seconds {
            let o = load::run(&proxied, args.clients, step).await?;
            t += step.as_secs();
            println!(
                "| {t} | {} | {:.0} | {} |",
                rss_kib(pid).unwrap_or(0),
                o.throughput(),
                o.errors
            );
        }
    }
    drop(lk);
    let _ = floor_proc.start_kill();
    if let Some((mut child, _, dir)) = nginx {
        let _ = child.start_kill();
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

/// Waits until something accepts connections on `addr` (at most 30 s).
async fn wait_for_port(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
