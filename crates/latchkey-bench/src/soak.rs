//! `latchkey-bench soak` (issue 8): minutes of `tools/call` at a fixed rate through
//! `/mcp/{server}` while the slot's access token runs out every `--expiry-seconds`.
//!
//! It starts the scripted authorization server and MCP resource of `latchkey-testkit`
//! (rotating refresh tokens with reuse detection; the resource accepts only access
//! tokens the server issued and still considers valid), then `latchkey serve` (the
//! release binary, embedded SQLite, a temporary data directory), registers the resource
//! as an OAuth server, deposits a refresh token through `/v1/credentials`, and sends
//! `tools/call` (`echo`) at `--rate` requests a second, spread over `--clients`
//! keep-alive connections, each request on its own schedule (open loop: a slow answer
//! does not lower the rate).
//!
//! The token service refreshes a token `skew` before it expires: [`DEFAULT_SKEW`] (60 s),
//! but at most half the token's lifetime. So the authorization server issues
//! `expires_in = min(expiry + 60, 2 × expiry)` by default (90 s tokens refreshed 60 s
//! early when the expiry is 90 s; 60 s tokens refreshed 30 s early when it is 30 s):
//! Latchkey then needs a new token every `--expiry-seconds`. (`--expires-in` sets the
//! issued lifetime directly; the expiries are then counted every `expires_in − skew`.)
//!
//! Reported: requests, errors (a status other than 200, a JSON-RPC error, a tool error
//! or a wrong answer: must be 0), refresh grants served by the authorization server
//! against expiries elapsed (one per expiry, ±1 for the boundary), and the resident
//! memory of the `latchkey serve` process after the warm-up and at the end: total RSS,
//! whose growth must be at most `--max-rss-growth` %, and its anonymous part (heap and
//! stacks), reported. Most of RSS is file-backed: the binary's code, paged in as paths
//! first run (shared, reclaimable, bounded by the binary's size). The exit status is non-zero when a check fails.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1;
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use latchkey_broker::token_service::DEFAULT_SKEW;
use latchkey_testkit::{AsConfig, ScriptedServer};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Arguments of `latchkey-bench soak`.
#[derive(Debug, clap::Args)]
pub(crate) struct SoakArgs {
    /// The `latchkey` binary to run (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/latchkey")]
    latchkey: PathBuf,
    /// How long to send requests, in seconds.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Requests per second (all clients together).
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Seconds between token expiries: how often Latchkey needs a new access token.
    #[arg(long, default_value_t = 30)]
    expiry_seconds: u64,
    /// The `expires_in` the authorization server issues (default: the lifetime the
    /// token service refreshes every expiry-seconds, min(expiry + 60, 2 × expiry)).
    #[arg(long)]
    expires_in: Option<u64>,
    /// Keep-alive connections the requests are spread over.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds of load before the reference memory reading.
    #[arg(long, default_value_t = 30)]
    warmup_seconds: u64,
    /// Seconds between memory readings (printed as they are taken).
    #[arg(long, default_value_t = 30)]
    sample_seconds: u64,
    /// Allowed growth of resident memory from the warm-up to the end, in percent.
    #[arg(long, default_value_t = 10.0)]
    max_rss_growth: f64,
}

/// What the workers count together.
#[derive(Debug, Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    /// The first few errors, described by status and JSON-RPC code and message only.
    samples: Mutex<Vec<String>>,
}

impl Tally {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() < 10 {
            s.push(what.chars().take(200).collect());
        }
    }
}

/// Where the requests go.
#[derive(Debug)]
struct Target {
    addr: SocketAddr,
    path: String,
}

/// One memory reading during the run.
#[derive(Debug, Clone, Copy)]
struct Sample {
    t: u64,
    rss_kib: u64,
    /// The anonymous part of RSS (heap, stacks): the process's own allocations. The rest
    /// is file-backed, mostly the binary's code paged in as paths are first run.
    anon_kib: u64,
    sent: u64,
    errors: u64,
    grants: usize,
}

/// Whether `body` is the answer to `tools/call` `echo` with `id` and `text`; if not,
/// why (never the body itself).
fn verdict(status: u16, sse: bool, body: &[u8], id: u64, text: &str) -> Result<(), String> {
    if status != 200 {
        let rpc = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| {
                v.get("error")
                    .map(|e| format!(" {} {}", e["code"], e["message"]))
            })
            .unwrap_or_default();
        return Err(format!("HTTP {status}{rpc}"));
    }
    let msg: Value = if sse {
        let s = std::str::from_utf8(body).map_err(|_| "SSE body is not UTF-8".to_owned())?;
        s.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|v| v.get("id").is_some())
            .ok_or_else(|| "no JSON-RPC response in the SSE stream".to_owned())?
    } else {
        serde_json::from_slice(body).map_err(|_| "the body is not JSON".to_owned())?
    };
    if let Some(e) = msg.get("error") {
        return Err(format!("JSON-RPC error {} {}", e["code"], e["message"]));
    }
    if msg.get("id").and_then(Value::as_u64) != Some(id) {
        return Err("an answer with another id".into());
    }
    if msg.pointer("/result/isError") == Some(&Value::Bool(true)) {
        return Err("the tool answered isError".into());
    }
    if msg
        .pointer("/result/content/0/text")
        .and_then(Value::as_str)
        != Some(text)
    {
        return Err("an unexpected result".into());
    }
    Ok(())
}

async fn connect(addr: SocketAddr) -> anyhow::Result<http1::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (send, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(send)
}

fn tools_call(id: u64, text: &str) -> Bytes {
    Bytes::from(
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": "echo", "arguments": {"text": text}}})
        .to_string(),
    )
}

/// One request on `send`: `Ok(verdict)` when an answer came, `Err` when the connection
/// failed (it is then dropped).
async fn exchange(
    send: &mut http1::SendRequest<Full<Bytes>>,
    target: &Target,
    id: u64,
    text: &str,
) -> anyhow::Result<Result<(), String>> {
    let req = Request::builder()
        .method(Method::POST)
        .uri(&target.path)
        .header(header::HOST, target.addr.to_string())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .body(Full::new(tools_call(id, text)))?;
    send.ready().await?;
    let resp = send.send_request(req).await?;
    let status = resp.status().as_u16();
    let sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(verdict(status, sse, &body, id, text))
}

/// One client: a request every `period` from `first` until `until`, on one keep-alive
/// connection (opened again after a failure). Returns the latencies in microseconds.
async fn worker(
    target: Arc<Target>,
    tally: Arc<Tally>,
    client: u64,
    first: Instant,
    period: Duration,
    until: Instant,
) -> Vec<u32> {
    let mut ticker = tokio::time::interval_at(first, period);
    let mut conn = None;
    let mut micros = Vec::new();
    let mut n = 0u64;
    loop {
        if ticker.tick().await >= until {
            break;
        }
        n += 1;
        let id = (client << 40) | n;
        let text = format!("soak-{client}-{n}");
        tally.sent.fetch_add(1, Ordering::Relaxed);
        let send = match conn.as_mut() {
            Some(s) => s,
            None => match connect(target.addr).await {
                Ok(s) => conn.insert(s),
                Err(e) => {
                    tally.error(format!("connect: {e}"));
                    continue;
                }
            },
        };
        let started = std::time::Instant::now();
        match exchange(send, &target, id, &text).await {
            Ok(Ok(())) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                micros.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            Ok(Err(why)) => tally.error(why),
            Err(e) => {
                tally.error(format!("connection: {e}"));
                conn = None;
            }
        }
    }
    micros
}

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Registers the scripted resource and deposits a refresh token; the server id.
async fn connect_slot(lk: SocketAddr, auth: &ScriptedServer) -> anyhow::Result<String> {
    let (status, server) = crate::call_json(
        lk,
        Method::POST,
        "/v1/servers",
        Some(json!({"name": "soak", "url": auth.mcp_url(), "auth_type": "oauth"})),
    )
    .await?;
    if status != 201 {
        bail!("registering the MCP server: HTTP {status} {server}");
    }
    let id = server["id"].as_str().context("no server id")?.to_owned();
    // The refresh token goes into the request body only; it is never printed.
    let (status, v) = crate::call_json(
        lk,
        Method::POST,
        "/v1/credentials",
        Some(
            json!({"server_id": id, "refresh_token": auth.mint_refresh_token(),
                    "token_endpoint": format!("{}/token", auth.base), "client_id": "soak"}),
        ),
    )
    .await?;
    if status != 200 {
        // Only the error code: the body of a refused deposit is not echoed.
        bail!("depositing the refresh token: HTTP {status} {}", v["code"]);
    }
    Ok(id)
}

pub(crate) async fn run(a: SoakArgs) -> anyhow::Result<()> {
    if a.rate == 0 || a.clients == 0 || a.expiry_seconds == 0 || a.sample_seconds == 0 {
        bail!("--rate, --clients, --expiry-seconds and --sample-seconds must be positive");
    }
    if a.seconds <= a.warmup_seconds {
        bail!("--seconds must be longer than --warmup-seconds");
    }
    let max_skew = DEFAULT_SKEW.as_secs();
    // The token service refreshes `min(max_skew, lifetime / 2)` before expiry, so a
    // token is renewed every `lifetime − that`: `expiry` for this lifetime.
    let expires_in = a.expires_in.unwrap_or_else(|| {
        a.expiry_seconds
            .saturating_add(max_skew)
            .min(a.expiry_seconds.saturating_mul(2))
    });
    if expires_in < 2 {
        bail!("--expires-in must be at least 2 s");
    }
    let skew = (max_skew as f64).min(expires_in as f64 / 2.0);
    // Seconds between refreshes as Latchkey sees them (`--expiry-seconds` by default).
    let interval = expires_in as f64 - skew;
    let auth = ScriptedServer::start(AsConfig {
        access_ttl: expires_in,
        rotate_refresh_tokens: true,
        ..AsConfig::default()
    })
    .await?;
    auth.set_recording(false); // counters only: the request log would grow all run
    let port = crate::free_port()?;
    let lk = crate::start_latchkey(&a.latchkey, port).await?;
    let pid = lk.child.id().context("latchkey exited")?;
    let lk_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let id = connect_slot(lk_addr, &auth).await?;
    let target = Arc::new(Target {
        addr: lk_addr,
        path: format!("/mcp/{id}"),
    });

    // The first call makes the first grant (the deposit holds no access token); the
    // expiries are counted from it.
    let mut send = connect(lk_addr).await?;
    if let Err(why) = exchange(&mut send, &target, 1, "prime").await? {
        bail!("the first call through /mcp/{{server}} failed: {why}");
    }
    drop(send);
    let primed = Instant::now();
    let first_grants = auth.grants_served_for("refresh_token");
    if first_grants != 1 {
        bail!("expected one refresh grant for the first call, the server served {first_grants}");
    }
    let cpu_before = crate::cpu_ticks(pid);

    let period = Duration::from_secs_f64(a.clients as f64 / a.rate as f64);
    let started = Instant::now() + Duration::from_millis(50);
    let until = started + Duration::from_secs(a.seconds);
    let tally = Arc::new(Tally::default());
    let workers: Vec<_> = (0..a.clients)
        .map(|i| {
            // Clients start a rate-th of a second apart, so the requests are evenly spread.
            let first = started + Duration::from_secs_f64(i as f64 / a.rate as f64);
            tokio::spawn(worker(
                target.clone(),
                tally.clone(),
                i as u64,
                first,
                period,
                until,
            ))
        })
        .collect();

    println!(
        "soak: {} s, {} req/s over {} keep-alive connections, tools/call through /mcp/{{server}}; \
         access tokens issued with expires_in {expires_in} s, refreshed {skew} s early \
         (the token service's skew, {max_skew} s at most, at most half the lifetime): \
         an expiry every {interval} s",
        a.seconds, a.rate, a.clients
    );
    println!("| t (s) | requests | errors | refresh grants | RSS MB | anonymous MB |");
    println!("|---|---|---|---|---|---|");
    let sample = |t: u64| Sample {
        t,
        rss_kib: crate::rss_kib(pid).unwrap_or(0),
        anon_kib: crate::status_kib(pid, "RssAnon:").unwrap_or(0),
        sent: tally.sent.load(Ordering::Relaxed),
        errors: tally.errors.load(Ordering::Relaxed),
        grants: auth.grants_served_for("refresh_token"),
    };
    let print = |s: &Sample| {
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.1} |",
            s.t,
            s.sent,
            s.errors,
            s.grants.saturating_sub(first_grants),
            mb(s.rss_kib),
            mb(s.anon_kib)
        );
    };
    let mut samples = Vec::new();
    let step = Duration::from_secs(a.sample_seconds);
    let mut next = started + step;
    let mut t = 0;
    while next < until {
        tokio::time::sleep_until(next).await;
        t += a.sample_seconds;
        let s = sample(t);
        print(&s);
        samples.push(s);
        next += step;
    }
    let mut micros = Vec::new();
    for w in workers {
        micros.extend(w.await?);
    }
    let ended = Instant::now();
    let last = sample(a.seconds);
    print(&last);
    let cpu = match (cpu_before, crate::cpu_ticks(pid)) {
        (Some(b), Some(e)) => e.saturating_sub(b) as f64 / crate::ticks_per_second(),
        _ => f64::NAN,
    };
    drop(lk);

    micros.sort_unstable();
    let q = |p: f64| {
        let last = micros.len().saturating_sub(1);
        let i = ((last as f64) * p).round() as usize;
        f64::from(micros.get(i.min(last)).copied().unwrap_or(0)) / 1000.0
    };
    let warm = samples
        .iter()
        .find(|s| s.t >= a.warmup_seconds)
        .copied()
        .unwrap_or(last);
    let pct = |a: u64, b: u64| 100.0 * (b as f64 - a as f64) / a.max(1) as f64;
    let growth = pct(warm.rss_kib, last.rss_kib);
    // The check is on total RSS (issue 8's "memory"); the anonymous part is reported to
    // tell the process's own allocations from the binary's code pages being paged in.
    let anon_growth = pct(warm.anon_kib, last.anon_kib);
    let refreshes = last.grants.saturating_sub(first_grants) as u64;
    // The last requests were scheduled before `until`; answers may end a little later.
    let window = until.min(ended).saturating_duration_since(primed);
    let expiries = (window.as_secs_f64() / interval).floor() as u64;
    let sent = last.sent;
    let errors = last.errors;
    let elapsed = ended.saturating_duration_since(started).as_secs_f64();

    println!();
    println!(
        "| requests | req/s | errors | refresh grants | expiries | RSS after {} s → end | growth | anonymous after {} s → end | growth | p50 ms | p99 ms | p99.9 ms |",
        warm.t, warm.t
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {sent} | {:.1} | {errors} | {refreshes} | {expiries} | {:.1} → {:.1} MB | {growth:+.1} % | {:.1} → {:.1} MB | {anon_growth:+.1} % | {:.2} | {:.2} | {:.2} |",
        sent as f64 / elapsed,
        mb(warm.rss_kib),
        mb(last.rss_kib),
        mb(warm.anon_kib),
        mb(last.anon_kib),
        q(0.5),
        q(0.99),
        q(0.999)
    );
    println!(
        "first grant at the first call (not counted above); reuse detections {}; \
         upstream MCP requests {} (sent + 1 when no call was retried after a 401); \
         latchkey serve CPU {cpu:.1} s ({:.0} µs per request)",
        auth.reuse_detections(),
        auth.mcp_requests(),
        1e6 * cpu / (sent.max(1) as f64)
    );
    let samples_of_errors = tally
        .samples
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for e in &samples_of_errors {
        println!("error: {e}");
    }

    let mut failed = Vec::new();
    if errors > 0 {
        failed.push(format!("{errors} errors"));
    }
    if refreshes.abs_diff(expiries) > 1 {
        failed.push(format!(
            "{refreshes} refresh grants for {expiries} expiries"
        ));
    }
    if auth.reuse_detections() > 0 {
        failed.push("a rotated-out refresh token was used again".into());
    }
    if warm.rss_kib == 0 || last.rss_kib == 0 {
        failed.push("resident memory could not be read".into());
    } else if growth > a.max_rss_growth {
        failed.push(format!(
            "resident memory grew {growth:.1} % (allowed {} %)",
            a.max_rss_growth
        ));
    }
    if failed.is_empty() {
        println!("soak passed");
        Ok(())
    } else {
        bail!("soak failed: {}", failed.join("; "))
    }
}
