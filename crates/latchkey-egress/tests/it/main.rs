//! Egress guard: hostile URL table, property tests, DNS rebinding and pinning,
//! redirects, body caps, timeouts and redaction. One integration-test binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod server;
mod table;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use latchkey_egress::{
    DenyReason, Egress, EgressConfig, EgressError, EgressRequest, LoopbackPolicy, NameResolver,
    UrlSource, classify_ip,
};

use server::Server;

/// Strict policy, shared: only for tests that never open a connection (a reqwest client
/// must not outlive the runtime its pooled connections belong to).
fn strict() -> Egress {
    static E: std::sync::OnceLock<Egress> = std::sync::OnceLock::new();
    E.get_or_init(|| Egress::new(EgressConfig::default()).unwrap())
        .clone()
}

fn relaxed_cfg() -> EgressConfig {
    EgressConfig {
        loopback: LoopbackPolicy::AllowInsecureLoopback,
        ..EgressConfig::default()
    }
}

/// A fresh relaxed client (http and loopback allowed) for the local test servers.
fn relaxed() -> Egress {
    Egress::new(relaxed_cfg()).unwrap()
}

fn http_url(addr: SocketAddr, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", addr.port())
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn relaxed_shared() -> Egress {
        static E: std::sync::OnceLock<Egress> = std::sync::OnceLock::new();
        E.get_or_init(relaxed).clone()
    }

    proptest! {
        #[test]
        fn loopback_and_link_local_denied_in_every_encoding(
            link_local in any::<bool>(), b in any::<u8>(), c in any::<u8>(), d in any::<u8>(),
        ) {
            let (a, b, want) = if link_local {
                (169u8, 254u8, DenyReason::LinkLocal)
            } else {
                (127, b, DenyReason::Loopback)
            };
            let ip = u32::from_be_bytes([a, b, c, d]);
            let forms = [
                format!("https://{a}.{b}.{c}.{d}/"),
                format!("https://{a}.{b}.{c}.{d}./"),
                format!("https://{ip}/"),
                format!("https://{ip:#x}/"),
                format!("https://{ip:#X}/"),
                format!("https://0{a:o}.0{b:o}.0{c:o}.0{d:o}/"),
                format!("https://{a}.{}/", ip & 0x00ff_ffff),
                format!("https://{a}.{b}.{}/", ip & 0xffff),
                format!("https://[::ffff:{a}.{b}.{c}.{d}]/"),
                format!("https://[::ffff:{:x}:{:x}]/", ip >> 16, ip & 0xffff),
                format!("https://[::{a}.{b}.{c}.{d}]/"),
                format!("https://[64:ff9b::{:x}:{:x}]/", ip >> 16, ip & 0xffff),
            ];
            for f in forms {
                let got = strict().check_url(&f, UrlSource::Operator);
                prop_assert!(
                    matches!(&got, Err(EgressError::AddressDenied { reason, .. }) if *reason == want),
                    "{} -> {:?}", f, got
                );
            }
            // The allow list and the operator source never open these ranges.
            let cfg = EgressConfig {
                private_allow_list: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
                ..EgressConfig::default()
            };
            prop_assert_eq!(classify_ip(IpAddr::from(ip.to_be_bytes()), UrlSource::Operator, &cfg), Err(want));
        }

        #[test]
        fn check_url_never_panics(s in "\\PC{0,80}") {
            let _ = strict().check_url(&s, UrlSource::Remote);
            let _ = relaxed_shared().check_url(&format!("https://{s}/"), UrlSource::Remote);
            let _ = relaxed_shared().check_url(&format!("http://[{s}]/"), UrlSource::Operator);
        }

        #[test]
        fn link_local_v6_is_denied_even_when_relaxed(x in 0u16..0x40, rest in any::<u64>()) {
            let ip = std::net::Ipv6Addr::new(
                0xfe80 | x, 0, 0, 0,
                (rest >> 48) as u16, (rest >> 32) as u16, (rest >> 16) as u16, rest as u16,
            );
            prop_assert_eq!(
                classify_ip(ip.into(), UrlSource::Operator, &relaxed_cfg()),
                Err(DenyReason::LinkLocal)
            );
        }

        #[test]
        fn verdicts_agree_between_classify_and_check_url(ip in any::<std::net::Ipv4Addr>()) {
            let want = classify_ip(ip.into(), UrlSource::Remote, &EgressConfig::default());
            let got = match strict().check_url(&format!("https://{ip}/"), UrlSource::Remote) {
                Ok(_) => Ok(()),
                Err(EgressError::AddressDenied { reason, .. }) => Err(reason),
                Err(e) => panic!("{ip}: {e:?}"),
            };
            prop_assert_eq!(got, want);
        }
    }
}

/// Answers from a script: call `n` gets `answers[min(n, last)]`. Counts calls.
#[derive(Debug)]
struct Scripted {
    calls: AtomicUsize,
    answers: Vec<Vec<IpAddr>>,
}

impl Scripted {
    fn new(answers: Vec<Vec<IpAddr>>) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            answers,
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl NameResolver for Scripted {
    async fn resolve(&self, _host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let ips = &self.answers[n.min(self.answers.len() - 1)];
        Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn assert_denied(err: &EgressError, want: DenyReason) {
    assert!(
        matches!(err, EgressError::AddressDenied { reason, .. } if *reason == want),
        "expected AddressDenied({want:?}), got {err:?}"
    );
}

#[tokio::test]
async fn dns_rebinding_to_loopback_is_refused_at_connect_time() {
    let srv = Server::start(server::ok("ok")).await;
    // The attacker's DNS: a public address first, then the loopback server.
    let dns = Scripted::new(vec![vec![ip("93.184.216.34")], vec![ip("127.0.0.1")]]);
    let e = Egress::with_resolver(EgressConfig::default(), dns.clone()).unwrap();

    // A naive guard resolves, checks, and lets the HTTP client resolve again. Its check
    // sees the public answer and passes...
    let url = format!("https://rebind.test:{}/token", srv.addr.port());
    assert!(e.check_url(&url, UrlSource::Remote).is_ok());
    let first = dns.resolve("rebind.test", 443).await.unwrap();
    assert!(
        first
            .iter()
            .all(|a| classify_ip(a.ip(), UrlSource::Remote, e.config()).is_ok())
    );

    // ...but the guard checks the answer it connects with: the second one, loopback.
    let err = e
        .send(EgressRequest::get(&url, UrlSource::Remote, 1024))
        .await
        .unwrap_err();
    assert_denied(&err, DenyReason::Loopback);
    assert!(!err.is_retryable());
    assert_eq!(dns.calls(), 2, "send resolved exactly once");
    srv.settle().await;
    assert_eq!(srv.hits(), 0, "the loopback server must see no connection");
}

#[tokio::test]
async fn one_denied_address_in_an_answer_fails_the_request() {
    let srv = Server::start(server::ok("ok")).await;
    let dns = Scripted::new(vec![vec![ip("127.0.0.1"), ip("169.254.169.254")]]);
    // Loopback is allowed here, so only the metadata address makes this fail.
    let e = Egress::with_resolver(relaxed_cfg(), dns).unwrap();
    let err = e
        .send(EgressRequest::get(
            format!("http://mixed.localhost:{}/", srv.addr.port()),
            UrlSource::Operator,
            1024,
        ))
        .await
        .unwrap_err();
    assert_denied(&err, DenyReason::LinkLocal);
    srv.settle().await;
    assert_eq!(srv.hits(), 0);
}

#[tokio::test]
async fn names_resolving_to_private_ranges_follow_the_source_rule() {
    let dns = Scripted::new(vec![vec![ip("10.1.2.3")]]);
    let e = Egress::with_resolver(EgressConfig::default(), dns).unwrap();
    let err = e
        .send(EgressRequest::get(
            "https://internal.test/",
            UrlSource::Remote,
            1024,
        ))
        .await
        .unwrap_err();
    assert_denied(&err, DenyReason::Private);
    match err {
        EgressError::AddressDenied { host, .. } => assert_eq!(host, "internal.test"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_empty_answer_is_a_connect_error() {
    let e = Egress::with_resolver(EgressConfig::default(), Scripted::new(vec![vec![]])).unwrap();
    let err = e
        .send(EgressRequest::get(
            "https://nothing.test/",
            UrlSource::Operator,
            1024,
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, EgressError::Connect(_)), "{err:?}");
}

#[tokio::test]
async fn the_connection_goes_to_the_resolvers_checked_address() {
    let srv = Server::start(server::ok("hello")).await;
    let dns = Scripted::new(vec![vec![srv.addr.ip()]]);
    let e = Egress::with_resolver(relaxed_cfg(), dns.clone()).unwrap();
    let r = e
        .send(EgressRequest::get(
            format!("http://upstream.localhost:{}/x", srv.addr.port()),
            UrlSource::Operator,
            1024,
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"hello");
    assert_eq!(r.header_str("content-length"), Some("5"));
    assert_eq!(srv.hits(), 1);
    assert_eq!(dns.calls(), 1);
    let head = srv.last_request();
    assert!(head.starts_with("GET /x HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("host: upstream.localhost:"), "{head}");
    assert!(head.contains("user-agent: latchkey/"), "{head}");
}

#[tokio::test]
async fn a_redirecting_token_endpoint_gets_no_second_request() {
    let target = Server::start(server::ok("{}")).await;
    let location = format!("http://127.0.0.1:{}/steal?code=stolen", target.addr.port());
    let token = Server::start(format!(
        "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 4\r\n\r\nbody"
    ))
    .await;
    let err = relaxed()
        .send(EgressRequest::post_form(
            http_url(token.addr, "/token"),
            UrlSource::Remote,
            &[
                ("grant_type", "refresh_token"),
                ("client_secret", "s3cret-value"),
            ],
            latchkey_egress::TOKEN_BODY_LIMIT,
        ))
        .await
        .unwrap_err();
    match &err {
        EgressError::Redirect { status, location } => {
            assert_eq!(*status, 302);
            assert!(location.as_deref().unwrap().ends_with("/steal?code=stolen"));
        }
        other => panic!("expected a redirect error, got {other:?}"),
    }
    assert!(!err.is_retryable());
    // The error prints neither the Location query nor anything of the request.
    for shown in [format!("{err}"), format!("{err:?}")] {
        assert!(
            !shown.contains("stolen") && !shown.contains("s3cret"),
            "{shown}"
        );
    }
    target.settle().await;
    assert_eq!(token.hits(), 1);
    assert!(token.last_request().starts_with("POST /token HTTP/1.1"));
    assert_eq!(target.hits(), 0, "the redirect target must see nothing");
}

#[tokio::test]
async fn every_3xx_is_a_redirect_error() {
    for status in [300, 301, 303, 304, 307, 308] {
        let srv = Server::start(format!(
            "HTTP/1.1 {status} X\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n"
        ))
        .await;
        let err = relaxed()
            .send(EgressRequest::get(
                http_url(srv.addr, "/"),
                UrlSource::Operator,
                1024,
            ))
            .await
            .unwrap_err();
        assert!(
            matches!(err, EgressError::Redirect { status: s, .. } if s == status),
            "{status}: {err:?}"
        );
    }
}

mod body_caps {
    use super::*;

    const LIMIT: usize = latchkey_egress::METADATA_BODY_LIMIT;

    async fn get(response: String) -> Result<usize, EgressError> {
        let srv = Server::start(response).await;
        relaxed()
            .send(EgressRequest::get(
                http_url(srv.addr, "/"),
                UrlSource::Operator,
                LIMIT,
            ))
            .await
            .map(|r| r.body.len())
    }

    fn with_length(n: usize) -> String {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n{}",
            "a".repeat(n)
        )
    }

    fn chunked(n: usize) -> String {
        // Two chunks, so the cap is crossed mid-stream rather than by one chunk.
        let (x, y) = (n / 2, n - n / 2);
        format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{x:x}\r\n{}\r\n{y:x}\r\n{}\r\n0\r\n\r\n",
            "b".repeat(x),
            "c".repeat(y)
        )
    }

    fn close_delimited(n: usize) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{}",
            "d".repeat(n)
        )
    }

    fn too_large(r: Result<usize, EgressError>) {
        assert!(
            matches!(r, Err(EgressError::BodyTooLarge { limit: LIMIT })),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn exactly_the_limit_is_accepted() {
        assert_eq!(get(with_length(LIMIT)).await.unwrap(), LIMIT);
        assert_eq!(get(chunked(LIMIT)).await.unwrap(), LIMIT);
        assert_eq!(get(close_delimited(LIMIT)).await.unwrap(), LIMIT);
    }

    #[tokio::test]
    async fn one_byte_over_is_refused() {
        too_large(get(with_length(LIMIT + 1)).await);
        too_large(get(chunked(LIMIT + 1)).await);
        too_large(get(close_delimited(LIMIT + 1)).await);
    }

    #[tokio::test]
    async fn a_declared_length_over_the_cap_is_refused_before_reading() {
        // Announces 10 MB and sends 3 bytes, then holds the connection open: reading the
        // body would hang until the timeout, so a quick BodyTooLarge proves it was not read.
        let srv =
            Server::start_holding("HTTP/1.1 200 OK\r\ncontent-length: 10000000\r\n\r\nabc".into())
                .await;
        let started = std::time::Instant::now();
        let r = relaxed()
            .send(EgressRequest::get(
                http_url(srv.addr, "/"),
                UrlSource::Operator,
                LIMIT,
            ))
            .await
            .map(|r| r.body.len());
        too_large(r);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let srv = Server::start_silent().await;
    let req = EgressRequest::get(http_url(srv.addr, "/"), UrlSource::Operator, 1024)
        .with_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), relaxed().send(req))
        .await
        .expect("send must return on its own")
        .unwrap_err();
    assert!(matches!(err, EgressError::Timeout), "{err:?}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_body_that_stalls_times_out() {
    let srv =
        Server::start_holding("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial".into()).await;
    let req = EgressRequest::get(http_url(srv.addr, "/"), UrlSource::Operator, 1024)
        .with_timeout(Duration::from_millis(300));
    let err = tokio::time::timeout(Duration::from_secs(10), relaxed().send(req))
        .await
        .expect("send must return on its own")
        .unwrap_err();
    assert!(matches!(err, EgressError::Timeout), "{err:?}");
}

#[tokio::test]
async fn a_closed_port_is_a_retryable_connect_error() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let err = relaxed()
        .send(EgressRequest::get(
            http_url(addr, "/?code=abc"),
            UrlSource::Operator,
            1024,
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, EgressError::Connect(_)), "{err:?}");
    assert!(err.is_retryable());
    assert!(!err.to_string().contains("code=abc"), "{err}");
}

#[tokio::test]
async fn post_json_sends_the_body_and_content_type() {
    let srv = Server::start(server::ok(r#"{"client_id":"c1"}"#)).await;
    let r = relaxed()
        .send(EgressRequest::post_json(
            http_url(srv.addr, "/register"),
            UrlSource::Remote,
            &serde_json::json!({"client_name": "latchkey"}),
            latchkey_egress::REGISTRATION_BODY_LIMIT,
        ))
        .await
        .unwrap();
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["client_id"], "c1");
    let head = srv.last_request();
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.ends_with(r#"{"client_name":"latchkey"}"#), "{head}");
}

#[tokio::test]
async fn policy_errors_happen_before_any_io() {
    let srv = Server::start(server::ok("ok")).await;
    let url = http_url(srv.addr, "/");
    let err = strict()
        .check_url(&url, UrlSource::Operator)
        .expect_err("http is refused under the strict policy");
    assert!(matches!(err, EgressError::SchemeNotAllowed(ref s) if s == "http"));
    let err = Egress::new(EgressConfig::default())
        .unwrap()
        .send(EgressRequest::get(url, UrlSource::Operator, 1024))
        .await
        .unwrap_err();
    assert!(matches!(err, EgressError::SchemeNotAllowed(_)), "{err:?}");
    srv.settle().await;
    assert_eq!(srv.hits(), 0);
}

/// Captures everything logged (every level, every target) while the test runs.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test] // current-thread runtime: the thread-local subscriber sees every task
async fn logs_carry_method_host_and_status_but_no_secret() {
    let logs = Captured::default();
    let writer = logs.clone();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    );
    let srv = Server::start(server::ok(r#"{"access_token":"at-secret"}"#)).await;
    let r = relaxed()
        .send(
            EgressRequest::post_form(
                http_url(srv.addr, "/token?code=code-secret"),
                UrlSource::Operator,
                &[("client_secret", "cs-secret")],
                1024,
            )
            .header(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_static("Bearer hdr-secret"),
            ),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let _ = strict()
        .send(EgressRequest::get(
            "https://127.0.0.1/?code=x",
            UrlSource::Remote,
            1,
        ))
        .await;
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("egress.response") && text.contains("POST"),
        "{text}"
    );
    assert!(text.contains("127.0.0.1") && text.contains("200"), "{text}");
    for secret in ["code-secret", "cs-secret", "hdr-secret", "at-secret"] {
        assert!(!text.contains(secret), "{secret} logged:\n{text}");
    }
}

#[test]
fn request_debug_shows_no_secret() {
    let r = EgressRequest::post_form(
        "https://as.example/token?code=abc123",
        UrlSource::Remote,
        &[("client_secret", "hunter2"), ("refresh_token", "rt-secret")],
        1024,
    )
    .header(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_static("Basic c2VjcmV0"),
    );
    let d = format!("{r:?}");
    for s in ["hunter2", "rt-secret", "c2VjcmV0", "abc123"] {
        assert!(!d.contains(s), "{s} leaked in {d}");
    }
    assert!(d.contains("authorization") && d.contains("https://as.example/token"));
    let r = EgressRequest::get("https://u:pw-secret@as.example/", UrlSource::Remote, 1);
    assert!(!format!("{r:?}").contains("pw-secret"));
}

#[test]
fn config_defaults_fail_closed() {
    let c = EgressConfig::default();
    assert_eq!(c.loopback, LoopbackPolicy::Deny);
    assert!(c.private_allow_list.is_empty());
    assert_eq!(c.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.request_timeout, Duration::from_secs(15));
    assert!(c.user_agent.starts_with("latchkey/"));
}

/// The proxy's hop (`Egress::hop`): the same guard as `send`, on hyper's pooled client.
mod hop {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, Method};
    use latchkey_egress::hop_body;

    async fn hop(
        e: &Egress,
        url: &str,
        headers: HeaderMap,
        head: Duration,
    ) -> Result<latchkey_egress::EgressStream, EgressError> {
        e.hop(
            url,
            UrlSource::Operator,
            Method::POST,
            headers,
            hop_body(Bytes::from_static(b"{\"jsonrpc\":\"2.0\"}")),
            head,
        )
        .await
    }

    #[tokio::test]
    async fn it_relays_the_request_and_hands_back_the_body() {
        let srv = Server::start(server::ok("relayed")).await;
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, "Bearer t".parse().unwrap());
        let resp = hop(
            &relaxed(),
            &http_url(srv.addr, "/mcp?x=1"),
            headers,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(resp.status, 200);
        let body = resp.read_capped(1024).await.unwrap();
        assert_eq!(&body[..], b"relayed");
        let seen = srv.last_request().to_ascii_lowercase();
        assert!(seen.starts_with("post /mcp?x=1 http/1.1"), "{seen}");
        assert!(seen.contains("authorization: bearer t"), "{seen}");
        assert!(seen.contains("user-agent: latchkey"), "{seen}");
        assert!(seen.ends_with("{\"jsonrpc\":\"2.0\"}"), "{seen}");
    }

    #[tokio::test]
    async fn it_checks_the_addresses_it_connects_to() {
        // Rebinding: the static check sees a name, the connection would reach loopback.
        let srv = Server::start(server::ok("ok")).await;
        let dns = Scripted::new(vec![vec![ip("127.0.0.1")]]);
        let e = Egress::with_resolver(EgressConfig::default(), dns.clone()).unwrap();
        let url = format!("https://rebind.test:{}/mcp", srv.addr.port());
        let err = hop(&e, &url, HeaderMap::new(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_denied(&err, DenyReason::Loopback);
        assert_eq!(dns.calls(), 1, "resolved exactly once");
        // One metadata address among good ones fails the whole name, relaxed or not.
        let dns = Scripted::new(vec![vec![ip("127.0.0.1"), ip("169.254.169.254")]]);
        let e = Egress::with_resolver(relaxed_cfg(), dns).unwrap();
        let url = format!("http://localhost:{}/mcp", srv.addr.port());
        let err = hop(&e, &url, HeaderMap::new(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(err, EgressError::AddressDenied { .. }),
            "expected a refusal, got {err:?}"
        );
        srv.settle().await;
        assert_eq!(srv.hits(), 0, "the server must see no connection");
    }

    #[tokio::test]
    async fn it_never_follows_a_redirect() {
        let srv = Server::start(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:1/x\r\ncontent-length: 0\r\n\r\n"
                .into(),
        )
        .await;
        let err = hop(
            &relaxed(),
            &http_url(srv.addr, "/mcp"),
            HeaderMap::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, EgressError::Redirect { status: 307, .. }),
            "{err:?}"
        );
        assert_eq!(srv.hits(), 1);
    }

    #[tokio::test]
    async fn a_silent_server_times_out_at_the_head_deadline() {
        let srv = Server::start_silent().await;
        let started = std::time::Instant::now();
        let err = hop(
            &relaxed(),
            &http_url(srv.addr, "/mcp"),
            HeaderMap::new(),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, EgressError::Timeout), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn plain_http_stays_behind_the_relaxation_and_closed_ports_are_connect_errors() {
        let srv = Server::start(server::ok("ok")).await;
        let e = Egress::new(EgressConfig::default()).unwrap();
        let err = hop(
            &e,
            &http_url(srv.addr, "/"),
            HeaderMap::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, EgressError::SchemeNotAllowed(_)), "{err:?}");
        srv.settle().await;
        assert_eq!(srv.hits(), 0);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = hop(
            &relaxed(),
            &format!("http://127.0.0.1:{port}/"),
            HeaderMap::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, EgressError::Connect(_)), "{err:?}");
        assert!(err.is_retryable());
    }
}
