//! `latchkey-bench proxy --callgrind N`: instructions per proxied request, counted by
//! valgrind's callgrind in the hop's process, for nginx, the minimal hyper proxy and
//! Latchkey, one after the other on the same upstream and the same requests.
//!
//! Why instructions: on a 2-core machine shared by the load generator, the upstream and
//! the hop, latency and throughput say as much about the sharing as about the hop. The
//! instruction count of the hop's own process repeats for the same binary and inputs
//! whatever else the machine does.
//!
//! How: each hop runs under `valgrind --tool=callgrind`; the harness sends warm-up
//! requests (caches filled, upstream connections and sessions open), zeroes the
//! counters (`callgrind_control -z`), sends `N` requests one after another on one
//! keep-alive connection, dumps (`callgrind_control -d`), then zeroes, stays idle as
//! long as the requests took, and dumps again: the idle baseline (timers, background
//! tasks) is subtracted. Figures are per request.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1;
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::floor;
use crate::load::Target;

/// Requests sent before the counters are zeroed.
const WARM_UP: usize = 200;

/// One hop under callgrind, killed on drop.
struct Hop {
    child: tokio::process::Child,
    pid: u32,
    /// Where its dumps land (`<dir>/<name>.out*`).
    dir: PathBuf,
    name: String,
}

impl Drop for Hop {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// One row of the report.
#[derive(Debug)]
struct Row {
    hop: String,
    case: String,
    per_request: f64,
    idle_per_request: f64,
}

/// Starts `program args` under callgrind with `env`.
fn spawn(
    dir: &Path,
    name: &str,
    program: &Path,
    args: &[String],
    env: &[(&str, String)],
) -> anyhow::Result<Hop> {
    let mut cmd = tokio::process::Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!(
            "--callgrind-out-file={}",
            dir.join(format!("{name}.out")).display()
        ))
        // Whole-program totals are all that is read: no per-instruction detail.
        .arg("--dump-instr=no")
        .arg("--compress-strings=no")
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .context("cannot run valgrind (install it: apt-get install valgrind)")?;
    let pid = child.id().context("the hop exited at once")?;
    Ok(Hop {
        child,
        pid,
        dir: dir.to_owned(),
        name: name.to_owned(),
    })
}

/// `callgrind_control <flag> <pid>`.
async fn control(flag: &str, pid: u32) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("callgrind_control")
        .arg(flag)
        .arg(pid.to_string())
        .output()
        .await
        .context("cannot run callgrind_control")?;
    if !out.status.success() {
        bail!(
            "callgrind_control {flag} {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The instruction total of the newest dump of `hop` (its `summary:` line).
fn newest_total(hop: &Hop) -> anyhow::Result<u64> {
    let prefix = format!("{}.out", hop.name);
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for e in std::fs::read_dir(&hop.dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&prefix) {
            continue;
        }
        let modified = e.metadata()?.modified()?;
        if newest.as_ref().is_none_or(|(t, _)| modified >= *t) {
            newest = Some((modified, e.path()));
        }
    }
    let (_, path) = newest.context("no callgrind dump")?;
    let text = std::fs::read_to_string(&path)?;
    text.lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .or_else(|| text.lines().find_map(|l| l.strip_prefix("totals:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no total in {}", path.display()))
}

/// Sends `n` requests to `target` one after another on one connection; the time taken.
async fn sequential(target: &Target, n: usize) -> anyhow::Result<Duration> {
    let stream = TcpStream::connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let (mut send, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let host = target.addr.to_string();
    let started = Instant::now();
    for i in 0..n {
        let mut rb = Request::builder()
            .method(Method::POST)
            .uri(&target.path)
            .header(header::HOST, &host)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream");
        if let Some(a) = &target.authorization {
            rb = rb.header(header::AUTHORIZATION, a);
        }
        send.ready().await?;
        let resp = send
            .send_request(rb.body(Full::new(target.body.clone()))?)
            .await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if status != 200 || !body.windows(5).any(|w| w == b"hello") {
            bail!(
                "request {i} to {}{}: HTTP {status}: {}",
                target.addr,
                target.path,
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
        }
    }
    Ok(started.elapsed())
}

/// Instructions per request through `hop` for `target`, and the idle baseline's share.
async fn measure(hop: &Hop, target: &Target, n: usize) -> anyhow::Result<(f64, f64)> {
    sequential(target, WARM_UP).await?;
    control("-z", hop.pid).await?;
    let took = sequential(target, n).await?;
    control("-d", hop.pid).await?;
    let busy = newest_total(hop)?;
    control("-z", hop.pid).await?;
    tokio::time::sleep(took).await;
    control("-d", hop.pid).await?;
    let idle = newest_total(hop)?;
    let n = n as f64;
    Ok(((busy.saturating_sub(idle)) as f64 / n, idle as f64 / n))
}

/// nginx's configuration: one process, keep-alive to the upstream, the Bearer set, and
/// no limit on requests per connection (its default of 1,000 closes the load
/// generator's connections mid-run).
pub(crate) fn nginx_conf(dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
error_log stderr warn;\nevents {{ worker_connections 1024; }}\n\
http {{\n  access_log off;\n  keepalive_requests 100000000;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
  upstream up {{ server {upstream}; keepalive 64; keepalive_requests 100000000; }}\n\
  server {{\n    listen {listen};\n    location / {{\n      proxy_pass http://up;\n\
      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
      proxy_set_header Authorization \"Bearer nginx-token\";\n      proxy_buffering off;\n    }}\n  }}\n}}\n"
    )
}

/// An HS256 JWT for Latchkey's jwt mode in this run.
fn jwt(secret: &str, issuer: &str, audience: &str) -> anyhow::Result<String> {
    let now = latchkey_core::Clock::now(&latchkey_core::SystemClock).as_secs();
    let claims = json!({"iss": issuer, "aud": audience, "sub": "bench", "tenant": "bench",
                        "roles": ["latchkey:admin"], "iat": now, "exp": now + 3600});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// One JSON call with an optional `Authorization`, for set-up.
async fn setup_call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    authorization: Option<&str>,
    body: Value,
) -> anyhow::Result<Value> {
    let stream = TcpStream::connect(addr).await?;
    let (mut send, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut rb = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(a) = authorization {
        rb = rb.header(header::AUTHORIZATION, a);
    }
    let resp = send
        .send_request(rb.body(Full::new(Bytes::from(body.to_string())))?)
        .await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("{path}: HTTP {status}: {}", String::from_utf8_lossy(&bytes));
    }
    Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Registers the upstream's JSON and SSE endpoints in a Latchkey and deposits a token
/// for each; their server ids.
async fn register(
    lk: SocketAddr,
    up: SocketAddr,
    auth: Option<&str>,
) -> anyhow::Result<(String, String)> {
    let mut ids = Vec::new();
    for (name, path) in [("bench-json", "/mcp"), ("bench-sse", "/sse/mcp")] {
        let server = setup_call(
            lk,
            Method::POST,
            "/v1/servers",
            auth,
            json!({"name": name, "url": format!("http://{up}{path}"), "auth_type": "oauth"}),
        )
        .await?;
        let id = server["id"].as_str().context("no server id")?.to_owned();
        setup_call(
            lk,
            Method::POST,
            "/v1/credentials",
            auth,
            json!({"server_id": id, "refresh_token": "bench-rt",
                   "token_endpoint": format!("http://{up}/token"), "client_id": "bench"}),
        )
        .await?;
        ids.push(id);
    }
    match (ids.pop(), ids.pop()) {
        (Some(sse), Some(json)) => Ok((json, sse)),
        _ => bail!("registration incomplete"),
    }
}

/// Waits for `/healthz` (valgrind makes the start slow).
async fn healthy(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok((200, _)) = crate::call_json(addr, hyper::Method::GET, "/healthz", None).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("latchkey under callgrind did not answer /healthz within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// nginx as a floor for the load rounds: one process (so its CPU time is one
/// `/proc/<pid>/stat`), started without valgrind; `None` when it is not installed.
pub(crate) async fn start_nginx(
    nginx: &Path,
    upstream: SocketAddr,
) -> anyhow::Result<Option<(tokio::process::Child, SocketAddr, PathBuf)>> {
    let installed = std::process::Command::new(nginx)
        .arg("-v")
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        return Ok(None);
    }
    let dir = std::env::temp_dir().join(format!("latchkey-nginx-{}", std::process::id()));
    for sub in ["body", "proxy", "fcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let listen: SocketAddr = ([127, 0, 0, 1], crate::free_port()?).into();
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(&dir, listen, upstream))?;
    let child = tokio::process::Command::new(nginx)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg("stderr")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start nginx")?;
    crate::wait_for_port(listen).await?;
    Ok(Some((child, listen, dir)))
}

/// Which hops a run measures (`--hops`; all by default).
#[derive(Debug, Clone)]
pub(crate) struct Hops {
    pub(crate) nginx: bool,
    /// The floor's shapes to measure.
    pub(crate) floors: Vec<floor::Variant>,
    pub(crate) local: bool,
    pub(crate) jwt: bool,
}

impl Hops {
    /// From a comma-separated list of `nginx`, `floor` (every shape) or
    /// `floor-<shape>` (one: `floor-conn-ct`), `local`, `jwt`.
    pub(crate) fn parse(list: &str) -> anyhow::Result<Self> {
        let mut h = Self {
            nginx: false,
            floors: Vec::new(),
            local: false,
            jwt: false,
        };
        for item in list.split(',').map(str::trim) {
            match item {
                "nginx" => h.nginx = true,
                "floor" => h.floors = floor::Variant::ALL.to_vec(),
                "local" => h.local = true,
                "jwt" => h.jwt = true,
                other => match other
                    .strip_prefix("floor-")
                    .and_then(|v| floor::Variant::ALL.into_iter().find(|f| f.arg() == v))
                {
                    Some(v) => h.floors.push(v),
                    None => {
                        bail!("unknown hop {other:?} (nginx, floor, floor-<shape>, local, jwt)")
                    }
                },
            }
        }
        Ok(h)
    }
}

/// Runs the comparison and prints the table.
pub(crate) async fn run(
    latchkey: &Path,
    nginx: &Path,
    n: usize,
    hops: Hops,
    keep_dumps: bool,
) -> anyhow::Result<()> {
    let (up, _counters) = crate::upstream::start().await?;
    let dir = std::env::temp_dir().join(format!("latchkey-callgrind-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for sub in ["body", "proxy", "fcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let body = Bytes::from(
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
               "params": {"name": "echo", "arguments": {"text": "hello"}}})
        .to_string(),
    );
    let target = |addr: SocketAddr, path: &str, authorization: Option<String>| Target {
        addr,
        path: path.to_owned(),
        authorization,
        body: body.clone(),
    };
    let mut rows = Vec::new();
    let mut push = |hop: &str, case: &str, (per, idle): (f64, f64)| {
        println!("  {hop} / {case}: {per:.0} instructions per request (idle {idle:.0})");
        rows.push(Row {
            hop: hop.into(),
            case: case.into(),
            per_request: per,
            idle_per_request: idle,
        });
    };

    // nginx, when installed.
    if !hops.nginx {
    } else if std::process::Command::new(nginx)
        .arg("-v")
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        let listen: SocketAddr = ([127, 0, 0, 1], crate::free_port()?).into();
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&dir, listen, up))?;
        let hop = spawn(
            &dir,
            "nginx",
            nginx,
            &[
                "-p".into(),
                dir.display().to_string(),
                "-c".into(),
                conf.display().to_string(),
                "-e".into(),
                "stderr".into(),
            ],
            &[],
        )?;
        crate::wait_for_port(listen).await?;
        push(
            "nginx",
            "json",
            measure(&hop, &target(listen, "/mcp", None), n).await?,
        );
        push(
            "nginx",
            "sse",
            measure(&hop, &target(listen, "/sse/mcp", None), n).await?,
        );
    } else {
        println!(
            "  nginx not found at {}: its rows are left out",
            nginx.display()
        );
    }

    // The minimal hyper pass-through, in each of its shapes (the reference first).
    for &variant in &hops.floors {
        let listen: SocketAddr = ([127, 0, 0, 1], crate::free_port()?).into();
        let name = format!("floor-{}", variant.arg());
        let hop = spawn(
            &dir,
            &name,
            &std::env::current_exe()?,
            &[
                "floor".into(),
                "--listen".into(),
                listen.to_string(),
                "--upstream".into(),
                up.to_string(),
                "--client".into(),
                "hyper".into(),
                "--variant".into(),
                variant.arg().into(),
            ],
            &[],
        )?;
        crate::wait_for_port(listen).await?;
        let label = format!("hyper floor, {}", variant.arg());
        push(
            &label,
            "json",
            measure(&hop, &target(listen, "/mcp", None), n).await?,
        );
        push(
            &label,
            "sse",
            measure(&hop, &target(listen, "/sse/mcp", None), n).await?,
        );
    }

    // Latchkey, local mode.
    if hops.local {
        let port = crate::free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let data = dir.join("local");
        std::fs::create_dir_all(&data)?;
        let hop = spawn(
            &dir,
            "latchkey-local",
            latchkey,
            &["serve".into()],
            &[
                ("LATCHKEY_DATA_DIR", data.display().to_string()),
                ("LATCHKEY_LISTEN", addr.to_string()),
                ("LATCHKEY_PUBLIC_URL", format!("http://{addr}")),
                ("LATCHKEY_ALLOW_INSECURE_LOOPBACK", "true".into()),
                ("LATCHKEY_LOG", "warn".into()),
            ],
        )?;
        healthy(addr).await?;
        let (json_id, sse_id) = register(addr, up, None).await?;
        let json_path = format!("/mcp/{json_id}");
        let sse_path = format!("/mcp/{sse_id}");
        push(
            "Latchkey",
            "json, local",
            measure(&hop, &target(addr, &json_path, None), n).await?,
        );
        push(
            "Latchkey",
            "sse, local",
            measure(&hop, &target(addr, &sse_path, None), n).await?,
        );
    }

    // Latchkey, jwt mode: an API-key caller and a JWT caller.
    if hops.jwt {
        let port = crate::free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let data = dir.join("jwt");
        std::fs::create_dir_all(&data)?;
        let secret = "latchkey-bench-hs256-secret-0123456789abcdef";
        let (issuer, audience) = ("https://issuer.bench.test", format!("http://{addr}"));
        let hop = spawn(
            &dir,
            "latchkey-jwt",
            latchkey,
            &["serve".into()],
            &[
                ("LATCHKEY_DATA_DIR", data.display().to_string()),
                ("LATCHKEY_LISTEN", addr.to_string()),
                ("LATCHKEY_PUBLIC_URL", format!("http://{addr}")),
                ("LATCHKEY_ALLOW_INSECURE_LOOPBACK", "true".into()),
                ("LATCHKEY_LOG", "warn".into()),
                ("LATCHKEY_AUTH_MODE", "jwt".into()),
                ("LATCHKEY_JWT_SECRET", secret.into()),
                ("LATCHKEY_JWT_ISSUER", issuer.into()),
                ("LATCHKEY_JWT_AUDIENCE", audience.clone()),
            ],
        )?;
        healthy(addr).await?;
        let bearer = format!("Bearer {}", jwt(secret, issuer, &audience)?);
        let (json_id, _) = register(addr, up, Some(&bearer)).await?;
        let key = setup_call(
            addr,
            Method::POST,
            "/v1/api-keys",
            Some(&bearer),
            json!({"name": "bench"}),
        )
        .await?;
        let key = key["key"].as_str().context("no API key")?.to_owned();
        let path = format!("/mcp/{json_id}");
        push(
            "Latchkey",
            "json, API key",
            measure(&hop, &target(addr, &path, Some(format!("Token {key}"))), n).await?,
        );
        push(
            "Latchkey",
            "json, JWT",
            measure(&hop, &target(addr, &path, Some(bearer.clone())), n).await?,
        );
    }

    let nginx_of = |case: &str| {
        let kind = if case.starts_with("sse") {
            "sse"
        } else {
            "json"
        };
        rows.iter()
            .find(|r| r.hop == "nginx" && r.case == kind)
            .map(|r| r.per_request)
    };
    println!();
    println!(
        "{n} sequential requests per case after {WARM_UP} warm-up, tools/call, one keep-alive connection; the idle baseline of the same length subtracted"
    );
    println!("| hop | case | instructions per request | × nginx | idle baseline per request |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        let ratio = nginx_of(&r.case)
            .map(|b| format!("{:.2}", r.per_request / b))
            .unwrap_or_else(|| "—".into());
        println!(
            "| {} | {} | {:.0} | {ratio} | {:.0} |",
            r.hop, r.case, r.per_request, r.idle_per_request
        );
    }
    if keep_dumps {
        println!(
            "callgrind dumps kept in {} (<hop>.out.<n>: the odd ones are the measured requests)",
            dir.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
