//! The fault-injection suite (issue 8): Latchkey in-process over real HTTP while what it
//! depends on misbehaves, and while its own endpoints get bodies they should refuse.
//!
//! * The authorization server down (port closed), slower than the timeout, answering
//!   garbage, `null`, 10 MB, a redirect to a loopback or metadata address, a 5xx or an
//!   OAuth error: during the refresh a call needs (REST tool call, `/mcp/{id}`, `/mcp`),
//!   during the callback's code exchange, and during the start's discovery.
//! * The JWKS unreachable, failing or garbage in jwt mode.
//! * The upstream MCP server resetting the connection in the middle of its answer.
//! * Oversize and malformed bodies on every endpoint that reads one.
//!
//! Every case is answered with a typed error (a stable `code`, never a 500), nothing
//! panics (a hook counts panics anywhere in the process), and nothing is lost: once the
//! fault clears, the stored credential works again with exactly the expected number of
//! grants, and a refused body changes nothing.
//!
//! `LATCHKEY_FAULT_ROUNDS=N` (default 1) repeats each test's matrix N times (the long
//! form, `scripts/bench/faults.sh`); every round also runs a burst of concurrent calls.
//! Outbound calls of the instances here give up after [`FAULT_TIMEOUT`] instead of the
//! production 15 s, so that "slower than the timeout" costs seconds.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use latchkey_core::time::ManualClock;
use latchkey_core::{Clock, SystemClock};
use latchkey_gateway::Config;
use latchkey_testkit::idp::{JwksMode, KeyAlg, ScriptedIdp};
use latchkey_testkit::{AsConfig, McpFault, ScriptedServer, TokenFault};
use latchkey_vault::keyring::StaticKeys;
use latchkey_vault::store::Slot;
use latchkey_vault::{KeySet, Keyring, SqliteStore, Store};
use serde_json::{Value, json};

const KEY: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// How long an instance here waits for an outbound answer (production: 15 s).
const FAULT_TIMEOUT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------
// Panics, rounds

/// Panics anywhere in the process since the first test of this module started.
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Installs (once) a panic hook that counts every panic, then reports it as before.
/// A failing assertion on a test's own thread (named after the test, `module::name`)
/// is a test failure, not a panic of Latchkey's, and is not counted; Latchkey's
/// handlers and tasks run on the runtime's worker threads.
fn count_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let test_thread = std::thread::current()
                .name()
                .is_some_and(|n| n.contains("::"));
            if !test_thread {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

fn assert_no_panic() {
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a panic happened");
}

/// `LATCHKEY_FAULT_ROUNDS`, at least 1.
fn rounds() -> usize {
    std::env::var("LATCHKEY_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n: &usize| *n > 0)
        .unwrap_or(1)
}

/// Records one mismatch; the test fails at its end with all of them.
fn check(failures: &mut Vec<String>, ok: bool, what: impl FnOnce() -> String) {
    if !ok {
        failures.push(what());
    }
}

fn finish(test: &str, started: Instant, failures: &[String]) {
    eprintln!(
        "faults: {test}: {} round(s) in {:.1} s, {} mismatch(es)",
        rounds(),
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} mismatch(es):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_no_panic();
}

// ---------------------------------------------------------------------------------
// A door in front of a TCP service

/// A TCP pass-through on a fixed loopback port. Open, it forwards to its target;
/// closed, nothing listens on the port (connections are refused) and every connection
/// it carried is cut, so no pooled connection outlives the outage.
struct Door {
    addr: SocketAddr,
    target: SocketAddr,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Door {
    async fn new(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (cut, _) = tokio::sync::watch::channel(0);
        let door = Self {
            addr: listener.local_addr().unwrap(),
            target,
            accept: Mutex::new(None),
            cut,
        };
        door.serve(listener);
        door
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (target, cut) = (self.target, self.cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut_rx = cut.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        *self.accept.lock().unwrap() = Some(task);
    }

    /// Closes the port and cuts every open connection.
    async fn close(&self) {
        let task = self.accept.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await; // the listener is dropped: the port is closed
        }
        self.cut.send_modify(|n| *n += 1);
    }

    /// Listens on the same port again.
    async fn open(&self) {
        if self.accept.lock().unwrap().is_some() {
            return;
        }
        for _ in 0..100 {
            if let Ok(listener) = tokio::net::TcpListener::bind(self.addr).await {
                self.serve(listener);
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("could not listen on {} again", self.addr);
    }
}

impl Drop for Door {
    fn drop(&mut self) {
        if let Some(task) = self.accept.lock().unwrap().take() {
            task.abort();
        }
        self.cut.send_modify(|n| *n += 1);
    }
}

/// The loopback address of a scripted server's `http://localhost:PORT` base.
fn addr_of(base: &str) -> SocketAddr {
    let port = base.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    SocketAddr::from(([127, 0, 0, 1], port))
}

// ---------------------------------------------------------------------------------
// A front for the callback path

/// How the front's authorization server metadata answers.
const FRONT_SERVE: u8 = 0;
const FRONT_503: u8 = 1;
const FRONT_GARBAGE: u8 = 2;

/// An MCP server's OAuth front whose token endpoint is behind a [`Door`]: its own
/// protected resource metadata and authorization server metadata (switchable to a 503
/// or garbage), naming the scripted server's authorization and registration endpoints
/// and the door's token endpoint. With it the code exchange of a managed flow meets a
/// closed port (the scripted server's own metadata names its own, always open, port).
struct Front {
    url: String,
    metadata: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Front {
    async fn start(upstream: &ScriptedServer, door: &Door) -> Self {
        use axum::routing::{get, post};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let prm = json!({"resource": format!("{base}/mcp"), "authorization_servers": [base]});
        let metadata_doc = json!({
            "issuer": base,
            "authorization_endpoint": format!("{}/authorize", upstream.base),
            "token_endpoint": format!("http://{}/token", door.addr),
            "registration_endpoint": format!("{}/register", upstream.base),
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "none"],
            "authorization_response_iss_parameter_supported": false,
            "scopes_supported": ["mcp:read", "offline_access"],
        });
        let metadata = Arc::new(AtomicU8::new(FRONT_SERVE));
        let mode = metadata.clone();
        let challenge =
            format!("Bearer resource_metadata=\"{base}/.well-known/oauth-protected-resource/mcp\"");
        let app = axum::Router::new()
            .route(
                "/.well-known/oauth-protected-resource/mcp",
                get(move || async move { axum::Json(prm) }),
            )
            .route(
                "/.well-known/oauth-authorization-server",
                get(move || {
                    let (mode, doc) = (mode.clone(), metadata_doc.clone());
                    async move {
                        match mode.load(Ordering::SeqCst) {
                            FRONT_SERVE => axum::Json(doc).into_response(),
                            FRONT_503 => {
                                (http::StatusCode::SERVICE_UNAVAILABLE, "down").into_response()
                            }
                            _ => (
                                [(http::header::CONTENT_TYPE, "application/json")],
                                "<html>\u{0}not metadata",
                            )
                                .into_response(),
                        }
                    }
                }),
            )
            .route(
                "/mcp",
                post(move || {
                    let challenge = challenge.clone();
                    async move {
                        (
                            http::StatusCode::UNAUTHORIZED,
                            [(http::header::WWW_AUTHENTICATE, challenge)],
                        )
                    }
                }),
            );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("{base}/mcp"),
            metadata,
            task,
        }
    }
}

// ---------------------------------------------------------------------------------
// Latchkey in-process

/// One Latchkey instance on SQLite with a manual clock.
struct Gateway {
    base: String,
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
    dir: std::path::PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Latchkey as `latchkey serve` wires it, except that its outbound calls time out after
/// [`FAULT_TIMEOUT`] and time is a manual clock (starting now) the test advances past
/// token lifetimes and cache intervals.
async fn gateway(cfg: impl FnOnce(&str) -> Config) -> Gateway {
    use latchkey_broker::token_service::{LeaseOptions, TokenService, TokenServiceOptions};
    let dir = std::env::temp_dir().join(format!("lk-faults-{}", latchkey_vault::store::new_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("db")).await.unwrap());
    let clock = Arc::new(ManualClock::at(SystemClock.now()));
    let keyring = Arc::new(Keyring::new(StaticKeys(Some(KeySet::parse(KEY).unwrap()))));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let cfg = cfg(&base);
    let mut state =
        latchkey_gateway::state(&cfg, store.clone(), keyring.clone(), clock.clone()).unwrap();
    let egress = latchkey_egress::Egress::new(latchkey_egress::EgressConfig {
        loopback: latchkey_egress::LoopbackPolicy::AllowInsecureLoopback,
        connect_timeout: FAULT_TIMEOUT,
        request_timeout: FAULT_TIMEOUT,
        ..latchkey_egress::EgressConfig::default()
    })
    .unwrap();
    state.shared_mut().discoverer = Arc::new(latchkey_oauth::discovery::Discoverer::new(
        egress.clone(),
        clock.clone(),
    ));
    state.shared_mut().tokens = Arc::new(TokenService::new(
        store.clone(),
        keyring,
        egress.clone(),
        clock.clone(),
        TokenServiceOptions {
            lease: Some(LeaseOptions::new(state.instance.to_string())),
            // A grant is awaited no longer than the fault timeout (an AS slower than
            // that is a failure here), and its callers wait for its outcome.
            refresh_deadline: FAULT_TIMEOUT,
            caller_timeout: Some(FAULT_TIMEOUT + Duration::from_secs(2)),
            ..TokenServiceOptions::default()
        },
    ));
    state.shared_mut().egress = egress;
    latchkey_gateway::cluster::start(state.clone())
        .await
        .unwrap();
    let app = latchkey_gateway::router(state);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Gateway {
        base,
        store,
        clock,
        dir,
    }
}

/// Local mode, outbound `http://` to loopback allowed, the public URL the bound one.
fn local(base: &str) -> Config {
    let mut cfg = super::loopback_config();
    cfg.public_url = base.to_owned();
    cfg
}

// ---------------------------------------------------------------------------------
// HTTP

/// An answer as the suite looks at it.
#[derive(Debug, Clone)]
struct Answer {
    /// 0 when no response head arrived.
    status: u16,
    content_type: String,
    retry_after: bool,
    www_authenticate: bool,
    text: String,
    /// The body as JSON, `Null` if it is not.
    json: Value,
    /// The body (or the whole exchange) broke off.
    broken: Option<String>,
}

async fn answer(req: reqwest::RequestBuilder) -> Answer {
    let r = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            return Answer {
                status: 0,
                content_type: String::new(),
                retry_after: false,
                www_authenticate: false,
                text: String::new(),
                json: Value::Null,
                broken: Some(format!("no answer: {e}")),
            };
        }
    };
    let status = r.status().as_u16();
    let header = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let content_type = header("content-type");
    let retry_after = r.headers().contains_key("retry-after");
    let www_authenticate = r.headers().contains_key("www-authenticate");
    let (text, broken) = match r.bytes().await {
        Ok(b) => (String::from_utf8_lossy(&b).into_owned(), None),
        Err(e) => (String::new(), Some(format!("body broke off: {e}"))),
    };
    // A JSON body, or the last `data:` line of an event stream.
    let json = serde_json::from_str(&text).unwrap_or_else(|_| {
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .next_back()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or(Value::Null)
    });
    Answer {
        status,
        content_type,
        retry_after,
        www_authenticate,
        text,
        json,
        broken,
    }
}

fn http() -> reqwest::Client {
    super::client()
}

async fn get(url: &str, auth: Option<&str>) -> Answer {
    let mut r = http().get(url);
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    answer(r).await
}

async fn send_json(method: reqwest::Method, url: &str, auth: Option<&str>, body: Value) -> Answer {
    let mut r = http()
        .request(method, url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    answer(r).await
}

async fn post(url: &str, body: Value) -> Answer {
    send_json(reqwest::Method::POST, url, None, body).await
}

/// A server registered with Latchkey; its id.
async fn add_server(base: &str, name: &str, url: &str, auth_type: Option<&str>) -> String {
    let mut body = json!({"name": name, "url": url});
    if let Some(t) = auth_type {
        body["auth_type"] = t.into();
    }
    let a = post(&format!("{base}/v1/servers"), body).await;
    assert_eq!(a.status, 201, "{}", a.text);
    a.json["id"].as_str().unwrap().to_owned()
}

/// Deposits `refresh_token` for `token_endpoint` into the caller's slot of `id`.
async fn deposit(base: &str, id: &str, refresh_token: &str, token_endpoint: &str) {
    let a = post(
        &format!("{base}/v1/credentials"),
        json!({"server_id": id, "refresh_token": refresh_token,
               "token_endpoint": token_endpoint, "client_id": "deposit-client"}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
}

/// The local principal's slot of `server`.
fn local_slot(server: &str) -> Slot {
    Slot {
        tenant: "default".into(),
        server: server.into(),
        subject: Some("local".into()),
    }
}

// ---------------------------------------------------------------------------------
// Calls through the three entry points

/// How a tool call reaches the upstream server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// `POST /v1/servers/{id}/tools/echo/call`.
    Rest,
    /// `POST /mcp/{id}` (the transparent proxy).
    Proxy,
    /// `POST /mcp` (the federated server, stateless 2026-07-28 wire).
    Federated,
}

const VIAS: [Via; 3] = [Via::Rest, Via::Proxy, Via::Federated];

/// A server as a call names it.
#[derive(Debug, Clone)]
struct Target {
    id: String,
    slug: String,
}

/// The 2026-07-28 `_meta` of a client that can follow URL elicitations.
fn meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"url": {}}},
        "io.modelcontextprotocol/clientInfo": {"name": "faults", "version": "1"},
    })
}

/// `echo {text}` on `t` through `via`.
async fn echo(base: &str, t: &Target, via: Via, text: &str) -> Answer {
    let req = match via {
        Via::Rest => http()
            .post(format!("{base}/v1/servers/{}/tools/echo/call", t.id))
            .header("content-type", "application/json")
            .body(json!({"text": text}).to_string()),
        Via::Proxy => http()
            .post(format!("{base}/mcp/{}", t.id))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .body(
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "echo", "arguments": {"text": text}}})
                .to_string(),
            ),
        Via::Federated => {
            let name = format!("{}__echo", t.slug);
            http()
                .post(format!("{base}/mcp"))
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2026-07-28")
                .header("mcp-method", "tools/call")
                .header("mcp-name", &name)
                .body(
                    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                           "params": {"_meta": meta(), "name": name,
                                      "arguments": {"text": text}}})
                    .to_string(),
                )
        }
    };
    answer(req).await
}

/// What a call came to: the echoed text, or the refusal as `(HTTP status, code)`. The
/// code is the API's `code`, a JSON-RPC error's `data.code` (or its number), the code a
/// federated tool error names, `input_required` for a federated consent request,
/// `broken` for an answer that broke off, or `untyped` when none of these is there.
fn outcome(via: Via, a: &Answer) -> Result<String, (u16, String)> {
    let status = a.status;
    if a.broken.is_some() {
        return Err((status, "broken".into()));
    }
    let j = &a.json;
    let code = |v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .or_else(|| v.as_i64().map(|n| n.to_string()))
    };
    let typed = |c: Option<String>| Err((status, c.unwrap_or_else(|| "untyped".into())));
    match via {
        Via::Rest if status == 200 => j["content"][0]["text"]
            .as_str()
            .map(str::to_owned)
            .ok_or((status, "untyped".into())),
        Via::Proxy | Via::Federated if status == 200 && j["error"].is_object() => {
            typed(code(&j["error"]["data"]["code"]).or_else(|| code(&j["error"]["code"])))
        }
        Via::Proxy if status == 200 => j["result"]["content"][0]["text"]
            .as_str()
            .map(str::to_owned)
            .ok_or((status, "untyped".into())),
        Via::Federated if status == 200 => {
            let r = &j["result"];
            if r["resultType"] == "input_required" {
                return typed(Some("input_required".into()));
            }
            let text = r["content"][0]["text"].as_str().unwrap_or_default();
            if r["isError"] == true {
                // "<name> (<id>): <code>: <message>"
                return typed(text.split(": ").nth(1).map(str::to_owned));
            }
            r["content"][0]["text"]
                .as_str()
                .map(str::to_owned)
                .ok_or((status, "untyped".into()))
        }
        _ => typed(code(&j["code"])),
    }
}

/// How a refused refresh looks through each entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The authorization server failed: a retry may help.
    Upstream,
    /// The authorization server refused the credential: the user must act.
    Reauth,
}

fn expected(r: Refusal, via: Via) -> (u16, &'static str) {
    match (r, via) {
        (Refusal::Upstream, Via::Rest | Via::Proxy) => (502, "upstream_error"),
        (Refusal::Upstream, Via::Federated) => (200, "upstream_error"),
        (Refusal::Reauth, Via::Rest) => (409, "needs_oauth_reauth"),
        (Refusal::Reauth, Via::Proxy) => (200, "needs_oauth_reauth"),
        (Refusal::Reauth, Via::Federated) => (200, "input_required"),
    }
}

// ---------------------------------------------------------------------------------
// The authorization server

/// A fault of the authorization server's token endpoint.
#[derive(Debug, Clone)]
enum AsFault {
    /// Nothing listens on its port.
    Down,
    /// It answers this way.
    Token(TokenFault),
}

/// Every token-endpoint fault, what it is called, and how a refused refresh looks.
fn as_faults(elsewhere: &ScriptedServer) -> Vec<(&'static str, AsFault, Refusal)> {
    let oauth = |status, error: &str| {
        AsFault::Token(TokenFault::OAuthError {
            status,
            error: error.into(),
        })
    };
    vec![
        ("down (port closed)", AsFault::Down, Refusal::Upstream),
        (
            "slower than the timeout",
            AsFault::Token(TokenFault::Slow(FAULT_TIMEOUT + Duration::from_secs(3))),
            Refusal::Upstream,
        ),
        (
            "garbage",
            AsFault::Token(TokenFault::Garbage),
            Refusal::Upstream,
        ),
        (
            "JSON null",
            AsFault::Token(TokenFault::NullBody),
            Refusal::Upstream,
        ),
        (
            "10 MB answer",
            AsFault::Token(TokenFault::Huge(10 * 1024 * 1024)),
            Refusal::Upstream,
        ),
        (
            "302 to a loopback address",
            AsFault::Token(TokenFault::RedirectTo(format!("{}/token", elsewhere.base))),
            Refusal::Upstream,
        ),
        (
            "302 to the metadata address",
            AsFault::Token(TokenFault::RedirectTo(
                "http://169.254.169.254/latest/meta-data/iam/security-credentials/".into(),
            )),
            Refusal::Upstream,
        ),
        (
            "503",
            AsFault::Token(TokenFault::ServerError(503)),
            Refusal::Upstream,
        ),
        (
            "OAuth temporarily_unavailable",
            oauth(503, "temporarily_unavailable"),
            Refusal::Upstream,
        ),
        (
            "OAuth invalid_scope",
            oauth(400, "invalid_scope"),
            Refusal::Upstream,
        ),
        (
            "OAuth invalid_grant",
            oauth(400, "invalid_grant"),
            Refusal::Reauth,
        ),
        (
            "OAuth invalid_client",
            oauth(401, "invalid_client"),
            Refusal::Reauth,
        ),
    ]
}

async fn arm(upstream: &ScriptedServer, door: &Door, fault: &AsFault) {
    match fault {
        AsFault::Down => door.close().await,
        AsFault::Token(f) => upstream.set_token_fault(f.clone()),
    }
}

async fn disarm(upstream: &ScriptedServer, door: &Door) {
    upstream.set_token_fault(TokenFault::None);
    door.open().await;
}

/// What the callback page reports: `(status, reason, ok)`.
async fn callback(url: &str) -> (u16, String, bool) {
    let a = get(url, None).await;
    assert!(a.content_type.starts_with("text/html"), "{a:?}");
    let payload = a
        .text
        .split("id=\"latchkey-result\">")
        .nth(1)
        .and_then(|rest| rest.split("</script>").next())
        .unwrap_or("null");
    let v: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
    (
        a.status,
        v["reason"].as_str().unwrap_or("?").to_owned(),
        v["ok"] == true,
    )
}

/// Starts a (forced) flow for the local user's slot of `id`; the authorization URL.
async fn start_flow(base: &str, id: &str) -> String {
    let a = post(
        &format!("{base}/v1/oauth/start"),
        json!({"server_id": id, "force": true}),
    )
    .await;
    assert_eq!(
        (a.status, a.json["status"].as_str()),
        (200, Some("redirect")),
        "{}",
        a.text
    );
    a.json["authorization_url"].as_str().unwrap().to_owned()
}

/// `(row id, generation, sealed refresh token)` of a slot's credential.
async fn credential(store: &Arc<dyn Store>, slot: &Slot) -> Option<(String, i64, Vec<u8>)> {
    store
        .get_credential(slot)
        .await
        .unwrap()
        .map(|c| (c.id, c.generation, c.refresh_token.unwrap_or_default()))
}

/// The authorization server misbehaving, during the refresh a call needs (three entry
/// points), during the callback's code exchange and during the start's discovery:
/// typed errors, no redirect followed, no secret echoed, and nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_server_faults_are_typed_and_lose_nothing() {
    count_panics();
    let started = Instant::now();
    let upstream = ScriptedServer::start(AsConfig {
        // The front's flows: no `iss` in the redirect (the front is the issuer).
        iss_supported: false,
        ..AsConfig::default()
    })
    .await
    .unwrap();
    let elsewhere = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let door = Door::new(addr_of(&upstream.base)).await;
    let front = Front::start(&upstream, &door).await;
    let gw = gateway(local).await;
    let base = gw.base.as_str();
    let token_endpoint = format!("http://{}/token", door.addr);

    // "scripted": the MCP resource directly, its refresh token granted through the door.
    let scripted = Target {
        id: add_server(base, "scripted", &upstream.mcp_url(), None).await,
        slug: "scripted".into(),
    };
    deposit(
        base,
        &scripted.id,
        &upstream.mint_refresh_token(),
        &token_endpoint,
    )
    .await;
    // "fronted": managed flows whose code exchange goes through the door; a deposited
    // credential that a failed flow must leave alone.
    let fronted = add_server(base, "fronted", &front.url, Some("oauth")).await;
    deposit(
        base,
        &fronted,
        &upstream.mint_refresh_token(),
        &token_endpoint,
    )
    .await;
    let fronted_slot = local_slot(&fronted);

    let refreshes = || upstream.grants_served_for("refresh_token");
    let codes = || upstream.grants_served_for("authorization_code");
    for via in VIAS {
        let a = echo(base, &scripted, via, "first").await;
        assert_eq!(outcome(via, &a), Ok("first".into()), "{via:?}: {a:?}");
    }
    assert_eq!(refreshes(), 1);

    let mut failures = Vec::new();
    let mut slow_calls = Vec::new();
    for round in 0..rounds() {
        // 1. The refresh a call needs: the access token expired for Latchkey (clock)
        //    and for the upstream.
        for (what, fault, refusal) in as_faults(&elsewhere) {
            for via in VIAS {
                gw.clock.advance(Duration::from_secs(3_601));
                upstream.expire_access_tokens();
                let grants = refreshes();
                arm(&upstream, &door, &fault).await;
                let t = Instant::now();
                let a = echo(base, &scripted, via, "during").await;
                if matches!(fault, AsFault::Token(TokenFault::Slow(_))) {
                    slow_calls.push(t.elapsed());
                }
                disarm(&upstream, &door).await;
                let want = expected(refusal, via);
                let got = outcome(via, &a);
                check(&mut failures, got == Err((want.0, want.1.into())), || {
                    format!(
                        "round {round}: refresh, {what}, {via:?}: want {want:?}, got {got:?}: {a:?}"
                    )
                });
                check(&mut failures, a.text.len() < 4096, || {
                    format!(
                        "round {round}: refresh, {what}, {via:?}: a {} byte answer",
                        a.text.len()
                    )
                });
                for secret in upstream.issued_refresh_tokens() {
                    check(&mut failures, !a.text.contains(&secret), || {
                        format!(
                            "round {round}: refresh, {what}, {via:?}: a refresh token in the answer"
                        )
                    });
                }
                check(&mut failures, refreshes() == grants, || {
                    format!(
                        "round {round}: refresh, {what}, {via:?}: a grant was served during the fault"
                    )
                });
                if matches!(refusal, Refusal::Reauth) {
                    // Refused for good (issue 16): the slot stays dead, with no grant
                    // tried, until the user connects again (here a deposit).
                    let tried = upstream.token_requests();
                    let a = echo(base, &scripted, via, "dead").await;
                    let got = outcome(via, &a);
                    check(
                        &mut failures,
                        got == Err((want.0, want.1.into())) && upstream.token_requests() == tried,
                        || format!("round {round}: refresh, {what}, {via:?}: not dead: {got:?}"),
                    );
                    deposit(
                        base,
                        &scripted.id,
                        &upstream.mint_refresh_token(),
                        &token_endpoint,
                    )
                    .await;
                }
                // The fault cleared: the same stored refresh token works, one grant.
                let a = echo(base, &scripted, via, "after").await;
                let got = outcome(via, &a);
                check(&mut failures, got == Ok("after".into()), || {
                    format!(
                        "round {round}: refresh, {what}, {via:?}: not recovered: {got:?}: {a:?}"
                    )
                });
                check(&mut failures, refreshes() == grants + 1, || {
                    format!(
                        "round {round}: refresh, {what}, {via:?}: {} grants after the fault, want 1",
                        refreshes() - grants
                    )
                });
            }
        }

        // 2. A burst: concurrent calls through every entry point on an expired slot
        //    while the token endpoint fails, then after it recovers: typed errors, then
        //    every call served by one grant.
        gw.clock.advance(Duration::from_secs(3_601));
        upstream.expire_access_tokens();
        let grants = refreshes();
        for (phase, fault) in [
            ("failing", TokenFault::ServerError(503)),
            ("recovered", TokenFault::None),
        ] {
            upstream.set_token_fault(fault);
            let calls: Vec<_> = (0..12)
                .map(|i| {
                    let (base, t, via) = (gw.base.clone(), scripted.clone(), VIAS[i % 3]);
                    tokio::spawn(async move {
                        let text = format!("burst-{i}");
                        let a = echo(&base, &t, via, &text).await;
                        (via, text, outcome(via, &a))
                    })
                })
                .collect();
            for c in calls {
                let (via, text, got) = c.await.unwrap();
                let want = if phase == "failing" {
                    let (s, c) = expected(Refusal::Upstream, via);
                    Err((s, c.to_owned()))
                } else {
                    Ok(text)
                };
                check(&mut failures, got == want, || {
                    format!("round {round}: burst {phase} {via:?}: want {want:?}, got {got:?}")
                });
            }
        }
        check(&mut failures, refreshes() == grants + 1, || {
            format!(
                "round {round}: burst: {} grants for 12 concurrent calls, want 1",
                refreshes() - grants
            )
        });

        // 3. The callback's code exchange: a failed exchange shows `exchange_failed`
        //    (`client_unknown` when the AS does not know the client), burns the state
        //    and leaves the slot's credential as it was.
        for (what, fault, _) in as_faults(&elsewhere) {
            let reason = if what.contains("invalid_client") {
                "client_unknown"
            } else {
                "exchange_failed"
            };
            let authorization_url = start_flow(base, &fronted).await;
            let callback_url = super::flows::authorize(&authorization_url).await;
            let before = credential(&gw.store, &fronted_slot).await;
            let exchanged = codes();
            arm(&upstream, &door, &fault).await;
            let got = callback(&callback_url).await;
            disarm(&upstream, &door).await;
            check(&mut failures, got == (502, reason.into(), false), || {
                format!("round {round}: callback, {what}: got {got:?}")
            });
            check(&mut failures, codes() == exchanged, || {
                format!("round {round}: callback, {what}: a code was exchanged during the fault")
            });
            let after = credential(&gw.store, &fronted_slot).await;
            check(&mut failures, before.is_some() && after == before, || {
                format!("round {round}: callback, {what}: the stored credential changed")
            });
            let replay = callback(&callback_url).await;
            check(
                &mut failures,
                replay == (400, "invalid_state".into(), false),
                || format!("round {round}: callback, {what}: replay got {replay:?}"),
            );
        }
        // Once the server behaves, a flow completes and replaces the credential.
        let authorization_url = start_flow(base, &fronted).await;
        let callback_url = super::flows::authorize(&authorization_url).await;
        let before = credential(&gw.store, &fronted_slot).await;
        let exchanged = codes();
        let got = callback(&callback_url).await;
        check(
            &mut failures,
            got == (200, "connected".into(), true),
            || format!("round {round}: callback after the faults: {got:?}"),
        );
        check(&mut failures, codes() == exchanged + 1, || {
            format!("round {round}: callback after the faults: no code exchanged")
        });
        let after = credential(&gw.store, &fronted_slot).await;
        check(
            &mut failures,
            after.is_some() && after.as_ref().map(|c| &c.0) != before.as_ref().map(|c| &c.0),
            || format!("round {round}: callback after the faults: the credential was not replaced"),
        );

        // 4. The start's discovery: the authorization server metadata failing.
        for (what, mode) in [
            ("metadata 503", FRONT_503),
            ("metadata garbage", FRONT_GARBAGE),
        ] {
            // Past the discovery cache (5 minutes).
            gw.clock.advance(Duration::from_secs(301));
            front.metadata.store(mode, Ordering::SeqCst);
            let a = post(
                &format!("{base}/v1/oauth/start"),
                json!({"server_id": fronted, "force": true}),
            )
            .await;
            front.metadata.store(FRONT_SERVE, Ordering::SeqCst);
            let got = (
                a.status,
                a.json["code"].as_str().unwrap_or("untyped").to_owned(),
            );
            check(&mut failures, got == (502, "upstream_error".into()), || {
                format!("round {round}: start, {what}: got {got:?}: {}", a.text)
            });
            let a = post(
                &format!("{base}/v1/oauth/start"),
                json!({"server_id": fronted, "force": true}),
            )
            .await;
            check(
                &mut failures,
                a.status == 200 && a.json["status"] == "redirect",
                || format!("round {round}: start, {what}: not recovered: {}", a.text),
            );
        }
    }
    check(
        &mut failures,
        elsewhere.requests("/token").is_empty(),
        || "a redirect of the token endpoint was followed".into(),
    );
    check(&mut failures, upstream.reuse_detections() == 0, || {
        format!(
            "{} refresh-token reuse detections: a rotated token was lost",
            upstream.reuse_detections()
        )
    });
    if let Some(longest) = slow_calls.iter().max() {
        check(&mut failures, *longest < FAULT_TIMEOUT * 3, || {
            format!("a slow token endpoint held a call for {longest:?}")
        });
    }
    finish("authorization server", started, &failures);
}

// ---------------------------------------------------------------------------------
// The JWKS

/// jwt mode while the JWKS is unreachable, failing or garbage: every protected endpoint
/// answers the guard's typed 503 (never a 401, which would make clients drop good
/// tokens), API keys keep working, and the JWKS coming back ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_outages_are_a_typed_503_and_recover() {
    count_panics();
    let started = Instant::now();
    let idp = ScriptedIdp::start().await.unwrap();
    let door = Door::new(addr_of(&idp.base)).await;
    let issuer = idp.issuer();
    let jwks = format!("http://{}/jwks", door.addr);
    let gw = gateway(|base| {
        let toml = format!(
            "public_url = \"{base}\"\nallow_insecure_loopback = true\n[auth]\nmode = \"jwt\"\n\
             issuer = \"{issuer}\"\naudience = \"{base}/mcp\"\njwks_url = \"{jwks}\"\n\
             tenant_claim = \"org_id\"\n"
        );
        Config::parse(&toml, &std::collections::HashMap::new()).unwrap()
    })
    .await;
    let base = gw.base.clone();
    // A JWT valid at the (manual) clock's time.
    let bearer = || {
        let now = gw.clock.now().as_secs();
        let claims = json!({
            "iss": issuer, "aud": format!("{base}/mcp"), "sub": "fay", "org_id": "tenant-f",
            "roles": ["latchkey:admin"], "iat": now, "exp": now + 3600,
        });
        format!("Bearer {}", idp.mint(KeyAlg::Rs256, &claims))
    };

    // Up: a JWT works; it mints an API key and registers a server.
    let a = get(&format!("{base}/v1/whoami"), Some(&bearer())).await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = send_json(
        reqwest::Method::POST,
        &format!("{base}/v1/api-keys"),
        Some(&bearer()),
        json!({"name": "ops"}),
    )
    .await;
    assert_eq!(a.status, 201, "{a:?}");
    let api_key = format!("Token {}", a.json["key"].as_str().unwrap());
    let a = send_json(
        reqwest::Method::POST,
        &format!("{base}/v1/servers"),
        Some(&bearer()),
        json!({"name": "s", "url": "http://127.0.0.1:9/mcp", "auth_type": "oauth"}),
    )
    .await;
    assert_eq!(a.status, 201, "{a:?}");
    let id = a.json["id"].as_str().unwrap().to_owned();
    let servers_before = get(&format!("{base}/v1/servers"), Some(&bearer()))
        .await
        .json;

    // Every protected endpoint, with `auth`.
    let endpoints = |auth: String| {
        let base = base.clone();
        let id = id.clone();
        async move {
            let rpc = |url: String, protocol: &'static str, body: Value| {
                http()
                    .post(url)
                    .header("authorization", &auth)
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .header("mcp-protocol-version", protocol)
                    .header("mcp-method", "tools/list")
                    .body(body.to_string())
            };
            vec![
                ("GET /v1/whoami", answer(http().get(format!("{base}/v1/whoami")).header("authorization", &auth)).await),
                ("GET /v1/servers", answer(http().get(format!("{base}/v1/servers")).header("authorization", &auth)).await),
                (
                    "POST /v1/servers",
                    answer(
                        http()
                            .post(format!("{base}/v1/servers"))
                            .header("authorization", &auth)
                            .header("content-type", "application/json")
                            .body(json!({"name": "during", "url": "http://127.0.0.1:9/x", "auth_type": "none"}).to_string()),
                    )
                    .await,
                ),
                (
                    "POST /mcp/{id}",
                    answer(rpc(
                        format!("{base}/mcp/{id}"),
                        "2025-11-25",
                        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
                    ))
                    .await,
                ),
                (
                    "POST /mcp",
                    answer(rpc(
                        format!("{base}/mcp"),
                        "2026-07-28",
                        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list",
                               "params": {"_meta": meta()}}),
                    ))
                    .await,
                ),
            ]
        }
    };

    let mut failures = Vec::new();
    for round in 0..rounds() {
        // Past the cached document's lifetime (10 minutes): the next request fetches.
        gw.clock.advance(Duration::from_secs(601));
        for what in ["port closed", "HTTP 500", "garbage"] {
            match what {
                "port closed" => door.close().await,
                "HTTP 500" => idp.set_jwks_mode(JwksMode::Down),
                _ => idp.set_jwks_mode(JwksMode::Garbage),
            }
            // Twice: the first fetches, the second meets the remembered failure.
            for attempt in 0..2 {
                for (endpoint, a) in endpoints(bearer()).await {
                    let got = (
                        a.status,
                        a.json["error"].as_str().unwrap_or("untyped").to_owned(),
                    );
                    check(
                        &mut failures,
                        got == (503, "temporarily_unavailable".into())
                            && a.retry_after
                            && !a.www_authenticate,
                        || format!("round {round}: JWKS {what} ({attempt}): {endpoint}: {a:?}"),
                    );
                }
            }
            // API keys do not depend on the JWKS.
            let a = get(&format!("{base}/v1/whoami"), Some(&api_key)).await;
            check(
                &mut failures,
                a.status == 200 && a.json["subject"] == "fay",
                || format!("round {round}: JWKS {what}: the API key was refused: {a:?}"),
            );
            door.open().await;
            idp.set_jwks_mode(JwksMode::Serve);
            // A failure is remembered for 10 s before the JWKS is asked again.
            gw.clock.advance(Duration::from_secs(11));
        }
        // Back: every endpoint answers as it would have.
        for (endpoint, a) in endpoints(bearer()).await {
            let ok = match endpoint {
                "POST /v1/servers" => a.status == 201,
                // The slot has no credential: the typed JSON-RPC error.
                "POST /mcp/{id}" => {
                    a.status == 200 && a.json["error"]["data"]["code"] == "needs_oauth_reauth"
                }
                "POST /mcp" => a.status == 200 && a.json["result"]["tools"].is_array(),
                _ => a.status == 200,
            };
            check(&mut failures, ok, || {
                format!("round {round}: JWKS back: {endpoint}: {a:?}")
            });
        }
        // What was created once the JWKS was back goes again; nothing came in during
        // the outage.
        let listed = get(&format!("{base}/v1/servers"), Some(&bearer()))
            .await
            .json;
        let during: Vec<String> = listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["name"] == "during")
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect();
        check(&mut failures, during.len() == 1, || {
            format!("round {round}: servers created during the outage: {listed}")
        });
        for d in during {
            let a = answer(
                http()
                    .delete(format!("{base}/v1/servers/{d}"))
                    .header("authorization", bearer()),
            )
            .await;
            assert_eq!(a.status, 204, "{a:?}");
        }
        let listed = get(&format!("{base}/v1/servers"), Some(&bearer()))
            .await
            .json;
        check(&mut failures, listed == servers_before, || {
            format!("round {round}: the servers changed: {listed}")
        });
    }
    finish("JWKS", started, &failures);
}

// ---------------------------------------------------------------------------------
// The upstream MCP server

/// The upstream MCP server sends a 200 and the start of its answer, then resets the
/// connection: every entry point answers a typed error (the proxy reads a JSON answer
/// whole before passing its head on); the next call succeeds, and no refresh was spent
/// on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_resets_mid_stream_are_typed_and_the_next_call_succeeds() {
    count_panics();
    let started = Instant::now();
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let gw = gateway(local).await;
    let base = gw.base.as_str();
    let t = Target {
        id: add_server(base, "scripted", &upstream.mcp_url(), None).await,
        slug: "scripted".into(),
    };
    deposit(
        base,
        &t.id,
        &upstream.mint_refresh_token(),
        &format!("{}/token", upstream.base),
    )
    .await;
    for via in VIAS {
        let a = echo(base, &t, via, "first").await;
        assert_eq!(outcome(via, &a), Ok("first".into()), "{via:?}: {a:?}");
    }
    // What a reset may come to, by entry point.
    let allowed = |via: Via, got: &Result<String, (u16, String)>| match (via, got) {
        (Via::Rest, Err((502, c))) | (Via::Federated, Err((200, c))) => c == "upstream_error",
        // A JSON answer is read whole before its head is passed on.
        (Via::Proxy, Err((502, c))) => c == "upstream_error",
        _ => false,
    };

    let mut failures = Vec::new();
    for round in 0..rounds() {
        for via in VIAS {
            upstream.set_mcp_fault(McpFault::ResetConnection);
            let a = echo(base, &t, via, "during").await;
            upstream.set_mcp_fault(McpFault::None);
            let got = outcome(via, &a);
            check(&mut failures, allowed(via, &got), || {
                format!("round {round}: reset, {via:?}: got {got:?}: {a:?}")
            });
            let a = echo(base, &t, via, "after").await;
            let got = outcome(via, &a);
            check(&mut failures, got == Ok("after".into()), || {
                format!("round {round}: reset, {via:?}: not recovered: {got:?}: {a:?}")
            });
        }
        // The tool list, which must never turn a failure into an empty list.
        upstream.set_mcp_fault(McpFault::ResetConnection);
        let a = get(&format!("{base}/v1/servers/{}/tools", t.id), None).await;
        upstream.set_mcp_fault(McpFault::None);
        check(
            &mut failures,
            a.status == 502 && a.json["code"] == "upstream_error",
            || format!("round {round}: reset, tool list: {a:?}"),
        );
        // A burst of concurrent calls while some upstream answers reset.
        upstream.set_mcp_fault_for(McpFault::ResetConnection, 6);
        let calls: Vec<_> = (0..18)
            .map(|i| {
                let (base, t, via) = (gw.base.clone(), t.clone(), VIAS[i % 3]);
                tokio::spawn(async move {
                    let text = format!("burst-{i}");
                    let a = echo(&base, &t, via, &text).await;
                    (via, text, outcome(via, &a))
                })
            })
            .collect();
        for c in calls {
            let (via, text, got) = c.await.unwrap();
            check(
                &mut failures,
                got.as_ref() == Ok(&text) || allowed(via, &got),
                || format!("round {round}: reset burst, {via:?}: got {got:?}"),
            );
        }
        upstream.set_mcp_fault(McpFault::None);
        for via in VIAS {
            let a = echo(base, &t, via, "settled").await;
            let got = outcome(via, &a);
            check(&mut failures, got == Ok("settled".into()), || {
                format!("round {round}: after the burst, {via:?}: {got:?}: {a:?}")
            });
        }
    }
    check(
        &mut failures,
        upstream.grants_served_for("refresh_token") == 1,
        || {
            format!(
                "{} refresh grants: a reset spent the credential",
                upstream.grants_served_for("refresh_token")
            )
        },
    );
    check(&mut failures, upstream.reuse_detections() == 0, || {
        "a refresh-token reuse detection".into()
    });
    finish("upstream resets", started, &failures);
}

// ---------------------------------------------------------------------------------
// Bodies

/// An endpoint that reads a body.
#[derive(Debug, Clone)]
struct Endpoint {
    method: reqwest::Method,
    path: String,
    kind: Kind,
}

/// Whose answer a refused body gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The `/v1` API: `ApiError`'s JSON, `code` and `fields`.
    Api,
    /// `/v1/servers/{id}/tools/{name}/call`: any JSON object is arguments.
    ToolCall,
    /// `/mcp`, the federated MCP server.
    Federated,
    /// `/mcp/{id}`: the transparent proxy, which passes the upstream's answer on.
    Proxy,
}

/// One body sent to one endpoint.
struct Case {
    endpoint: Endpoint,
    what: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    /// Over the endpoint's limit (else malformed).
    oversize: bool,
    /// Sent without a length, in chunks.
    chunked: bool,
}

/// A malformed body: what it is, its content type (if any) and its bytes.
type Malformed = (&'static str, Option<&'static str>, Vec<u8>);

fn malformed() -> Vec<Malformed> {
    const JSON: Option<&str> = Some("application/json");
    vec![
        ("not JSON", JSON, b"this is not json".to_vec()),
        ("empty", JSON, Vec::new()),
        ("an array", JSON, b"[1, 2, 3]".to_vec()),
        ("a string", JSON, b"\"text\"".to_vec()),
        ("a number", JSON, b"42".to_vec()),
        ("null", JSON, b"null".to_vec()),
        (
            "truncated",
            JSON,
            br#"{"name": "x", "server_id": "abc", "url": "htt"#.to_vec(),
        ),
        (
            "invalid UTF-8",
            JSON,
            b"{\"name\": \"\xff\xfe\xfd\", \"server_id\": \"\xc3\x28\"}".to_vec(),
        ),
        ("a byte-order mark", JSON, b"\xef\xbb\xbf{}".to_vec()),
        ("NUL bytes", JSON, b"\0\0\0\0".to_vec()),
        ("nested 50,000 deep", JSON, "[".repeat(50_000).into_bytes()),
        (
            "wrong JSON types",
            JSON,
            br#"{"name": 7, "url": [], "server_id": {}, "refresh_token": false,
                "token_endpoint": 1, "force": "yes", "user_id": 3.5, "auth_type": null,
                "expires_in": -1, "jsonrpc": 2, "method": 9}"#
                .to_vec(),
        ),
        (
            "form-encoded",
            Some("application/x-www-form-urlencoded"),
            b"name=x&url=http%3A%2F%2F127.0.0.1%3A9%2Fmcp&server_id=x".to_vec(),
        ),
        ("text/plain", Some("text/plain"), b"hello".to_vec()),
        ("no content type", None, b"{\"name\":".to_vec()),
    ]
}

/// A valid-looking JSON object of `len` bytes.
fn padded_object(len: usize) -> Vec<u8> {
    let mut b = br#"{"name": ""#.to_vec();
    b.resize(len.saturating_sub(2), b'x');
    b.extend_from_slice(b"\"}");
    b
}

/// Whether `a` is the refusal `kind` promises for a bad body: never a 5xx or a broken
/// answer; a 4xx with the project's typed JSON (`code` and `message`; for a
/// field-by-field refusal its `fields`). The transparent proxy does not judge bodies:
/// it passes the upstream's answer on, whatever it is, and must only never fail itself;
/// a body over its limit is its own typed 413.
fn refused(kind: Kind, a: &Answer, oversize: bool) -> Result<(), String> {
    // The proxy passes the upstream's own refusal on; a chunked upload may reach the
    // upstream's limit (its framework's 2 MB) before Latchkey's, and an upstream that
    // stops reading cuts the upload short: then the typed 502 is Latchkey's answer.
    let cut_short = oversize && a.status == 502 && a.json["code"] == "upstream_error";
    let passed_on = kind == Kind::Proxy && (!oversize || a.json["code"].is_null() || cut_short);
    if passed_on {
        if a.broken.is_some() || a.status == 0 || (a.status >= 500 && !cut_short) {
            return Err(format!("status {} {:?}: {}", a.status, a.broken, a.text));
        }
        return Ok(());
    }
    if a.broken.is_some() || a.status == 0 || a.status >= 500 {
        return Err(format!("status {} {:?}: {}", a.status, a.broken, a.text));
    }
    if !(400..500).contains(&a.status) {
        return Err(format!("status {}: {}", a.status, a.text));
    }
    if !a.content_type.starts_with("application/json") {
        return Err(format!("content type {:?}: {}", a.content_type, a.text));
    }
    match kind {
        Kind::Api | Kind::ToolCall | Kind::Proxy => {
            let code = a.json["code"].as_str().unwrap_or("untyped");
            let want = if oversize {
                (413, "payload_too_large")
            } else {
                (400, "invalid_request")
            };
            // A body not sent as JSON is refused for its type before it is read.
            let not_json = (a.status, code) == (415, "unsupported_media_type");
            if ((a.status, code) != want && !not_json) || !a.json["message"].is_string() {
                return Err(format!("want {want:?}: {}", a.text));
            }
            if !oversize && !not_json && kind != Kind::Proxy && !a.json["fields"].is_array() {
                return Err(format!("no fields: {}", a.text));
            }
        }
        // The API's shape (a JSON-RPC error, for what rmcp answers in JSON-RPC).
        Kind::Federated => {
            let code = a.json["code"].as_str();
            let typed = match code {
                Some(c) => a.json["message"].is_string() && (c == "payload_too_large") == oversize,
                None => a.json["error"]["code"].is_i64(),
            };
            if !typed {
                return Err(format!("untyped: {}", a.text));
            }
        }
    }
    Ok(())
}

/// What must not change when bodies are refused.
async fn snapshot(gw: &Gateway, upstream: &ScriptedServer, server: &str) -> Value {
    let base = &gw.base;
    json!({
        "servers": get(&format!("{base}/v1/servers"), None).await.json,
        "api_keys": get(&format!("{base}/v1/api-keys"), None).await.json,
        "status": get(&format!("{base}/v1/oauth/status/{server}"), None).await.json,
        "credential": credential(&gw.store, &local_slot(server)).await.map(|c| (c.0, c.1)),
        "audit": gw.store.audit_log("default").await.unwrap().len(),
        "grants": upstream.grants_served(),
    })
}

/// Oversize and malformed bodies on every endpoint that reads one: each a 4xx with the
/// typed JSON error (the transparent proxy: the upstream's refusal, never a 500 of its
/// own), nothing panics, nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_malformed_bodies_are_refused_typed_everywhere() {
    count_panics();
    let started = Instant::now();
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let gw = gateway(local).await;
    let base = gw.base.clone();
    let id = add_server(&base, "scripted", &upstream.mcp_url(), None).await;
    deposit(
        &base,
        &id,
        &upstream.mint_refresh_token(),
        &format!("{}/token", upstream.base),
    )
    .await;
    let t = Target {
        id: id.clone(),
        slug: "scripted".into(),
    };
    for via in VIAS {
        let a = echo(&base, &t, via, "first").await;
        assert_eq!(outcome(via, &a), Ok("first".into()), "{via:?}: {a:?}");
    }
    let a = post(&format!("{base}/v1/api-keys"), json!({"name": "k"})).await;
    assert_eq!(a.status, 201, "{a:?}");

    let endpoint = |method: reqwest::Method, path: String, kind| Endpoint { method, path, kind };
    let endpoints = vec![
        endpoint(reqwest::Method::POST, "/v1/servers".into(), Kind::Api),
        endpoint(
            reqwest::Method::PATCH,
            format!("/v1/servers/{id}"),
            Kind::Api,
        ),
        endpoint(reqwest::Method::POST, "/v1/credentials".into(), Kind::Api),
        endpoint(reqwest::Method::POST, "/v1/oauth/start".into(), Kind::Api),
        endpoint(reqwest::Method::POST, "/v1/api-keys".into(), Kind::Api),
        endpoint(
            reqwest::Method::POST,
            format!("/v1/servers/{id}/tools/echo/call"),
            Kind::ToolCall,
        ),
        endpoint(reqwest::Method::POST, "/mcp".into(), Kind::Federated),
        endpoint(reqwest::Method::POST, format!("/mcp/{id}"), Kind::Proxy),
    ];
    // Oversize: past the API's 64 KiB, rmcp's 4 MiB for `/mcp`, the proxy's 4 MiB.
    let oversize = |kind| match kind {
        Kind::Api | Kind::ToolCall => latchkey_gateway::fields::BODY_LIMIT + 1,
        Kind::Federated => 4 * 1024 * 1024 + 1,
        Kind::Proxy => latchkey_gateway::proxy::BODY_LIMIT + 1,
    };
    let before = snapshot(&gw, &upstream, &id).await;

    let mut failures = Vec::new();
    for round in 0..rounds() {
        let mut cases = Vec::new();
        for e in &endpoints {
            for (what, content_type, body) in malformed() {
                // Any JSON object is a tool call's arguments; an empty body is `{}`.
                let skip = e.kind == Kind::ToolCall && matches!(what, "empty" | "wrong JSON types");
                if !skip {
                    cases.push(Case {
                        endpoint: e.clone(),
                        what: what.into(),
                        content_type,
                        body,
                        oversize: false,
                        chunked: false,
                    });
                }
            }
            for chunked in [false, true] {
                cases.push(Case {
                    endpoint: e.clone(),
                    what: if chunked {
                        "oversize, chunked"
                    } else {
                        "oversize"
                    }
                    .into(),
                    content_type: Some("application/json"),
                    body: padded_object(oversize(e.kind)),
                    oversize: true,
                    chunked,
                });
            }
        }
        let run = |c: Case| {
            let base = base.clone();
            async move {
                let e = &c.endpoint;
                let mut req = http()
                    .request(e.method.clone(), format!("{base}{}", e.path))
                    .header("accept", "application/json, text/event-stream");
                if let Some(ct) = c.content_type {
                    req = req.header("content-type", ct);
                }
                if e.kind == Kind::Federated {
                    req = req.header("mcp-protocol-version", "2026-07-28");
                }
                req = if c.chunked {
                    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                        c.body.chunks(16 * 1024).map(|b| Ok(b.to_vec())).collect();
                    req.body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                        chunks,
                    )))
                } else {
                    req.body(c.body.clone())
                };
                let a = answer(req).await;
                (c.endpoint, c.what, c.oversize, a)
            }
        };
        let results = if round == 0 {
            // One at a time, so a failure is easy to read.
            let mut out = Vec::new();
            for c in cases {
                out.push(run(c).await);
            }
            out
        } else {
            // All at once.
            futures_util::future::join_all(cases.into_iter().map(run)).await
        };
        for (e, what, oversize, a) in results {
            if let Err(why) = refused(e.kind, &a, oversize) {
                failures.push(format!(
                    "round {round}: {} {} with {what}: {why}",
                    e.method, e.path
                ));
            }
        }
        // Methods nothing is routed for: the typed 405.
        for (method, path) in [
            (reqwest::Method::PUT, format!("/v1/servers/{id}")),
            (reqwest::Method::PUT, format!("/mcp/{id}")),
            (reqwest::Method::PUT, "/v1/credentials".to_owned()),
        ] {
            let a = answer(
                http()
                    .request(method.clone(), format!("{base}{path}"))
                    .header("content-type", "application/json")
                    .body("{}"),
            )
            .await;
            let typed = a.json["code"] == "method_not_allowed";
            check(&mut failures, a.status == 405 && typed, || {
                format!("round {round}: {method} {path}: {a:?}")
            });
        }
        // The callback reads a query, not a body: malformed ones get its page, a
        // refusal, nothing of the request echoed into markup.
        let long_state = format!("?state={}&code=x", "s".repeat(8_000));
        for query in [
            "",
            "?state=%ZZ&code=%",
            "?code=x",
            "?state=a&state=b&code=c",
            "?error=%3Cscript%3Ealert(1)%3C/script%3E&state=nope",
            "?state=%FF%FE&code=%00",
            long_state.as_str(),
        ] {
            let a = get(&format!("{base}/v1/oauth/callback{query}"), None).await;
            check(
                &mut failures,
                matches!(a.status, 200 | 400)
                    && a.content_type.starts_with("text/html")
                    && a.text.contains("\"ok\":false")
                    && !a.text.contains("alert(1)</script>"),
                || format!("round {round}: callback{query:.60}: {a:?}"),
            );
        }
        let after = snapshot(&gw, &upstream, &id).await;
        check(&mut failures, after == before, || {
            format!("round {round}: the state changed:\nbefore {before}\nafter  {after}")
        });
    }
    // Still in working order.
    for via in VIAS {
        let a = echo(&base, &t, via, "last").await;
        check(&mut failures, outcome(via, &a) == Ok("last".into()), || {
            format!("after the bodies, {via:?}: {a:?}")
        });
    }
    finish("bodies", started, &failures);
}
