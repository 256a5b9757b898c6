//! Egress guard: hostile URL table, property tests, DNS rebinding, redirects, caps,
//! timeouts and redaction. One integration-test binary for the crate.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use latchkey_egress::{
    DenyReason, Egress, EgressConfig, EgressError, EgressRequest, LoopbackPolicy, NameResolver,
    UrlSource, classify_ip,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn strict() -> Egress {
    static E: std::sync::OnceLock<Egress> = std::sync::OnceLock::new();
    E.get_or_init(|| Egress::new(EgressConfig::default()).unwrap())
        .clone()
}

fn relaxed() -> Egress {
    static E: std::sync::OnceLock<Egress> = std::sync::OnceLock::new();
    E.get_or_init(|| {
        Egress::new(EgressConfig {
            loopback: LoopbackPolicy::AllowInsecureLoopback,
            ..EgressConfig::default()
        })
        .unwrap()
    })
    .clone()
}

#[derive(Debug, PartialEq)]
enum V {
    Ok,
    Deny(DenyReason),
    Scheme,
    Invalid,
}

fn verdict(e: &Egress, url: &str, source: UrlSource) -> V {
    match e.check_url(url, source) {
        Ok(_) => V::Ok,
        Err(EgressError::AddressDenied { reason, .. }) => V::Deny(reason),
        Err(EgressError::SchemeNotAllowed(_)) => V::Scheme,
        Err(EgressError::InvalidUrl(_)) => V::Invalid,
        Err(other) => panic!("unexpected {other:?} for {url}"),
    }
}

use DenyReason::*;
use UrlSource::{Operator as Op, Remote as Rem};

/// (url, source, strict verdict, verdict under the loopback relaxation)
fn table() -> Vec<(&'static str, UrlSource, V, V)> {
    vec![
        // IPv4 encodings of loopback (WHATWG normalisation)
        ("https://127.0.0.1/", Op, V::Deny(Loopback), V::Ok),
        ("https://2130706433/", Op, V::Deny(Loopback), V::Ok),
        ("https://0x7f000001/", Op, V::Deny(Loopback), V::Ok),
        ("https://0177.0.0.1/", Op, V::Deny(Loopback), V::Ok),
        ("https://127.1/", Op, V::Deny(Loopback), V::Ok),
        ("https://127.0.1/", Op, V::Deny(Loopback), V::Ok),
        ("https://0x7f.1/", Op, V::Deny(Loopback), V::Ok),
        ("https://127.255.255.254/", Op, V::Deny(Loopback), V::Ok),
        ("https://127.0.0.1./", Op, V::Deny(Loopback), V::Ok),
        // metadata / link-local: refused always
        (
            "https://169.254.169.254/latest/meta-data/",
            Op,
            V::Deny(LinkLocal),
            V::Deny(LinkLocal),
        ),
        (
            "https://2852039166/",
            Op,
            V::Deny(LinkLocal),
            V::Deny(LinkLocal),
        ),
        (
            "https://0xa9fea9fe/",
            Op,
            V::Deny(LinkLocal),
            V::Deny(LinkLocal),
        ),
        (
            "https://0251.0376.0251.0376/",
            Op,
            V::Deny(LinkLocal),
            V::Deny(LinkLocal),
        ),
        (
            "https://169.254.169.254./",
            Op,
            V::Deny(LinkLocal),
            V::Deny(LinkLocal),
        ),
        (
            "https://169.254.170.2/v2/credentials",
            Op,
            V::Deny(LinkLocal),
            V::Deny(LinkLocal),
        ),
        (
            "https://[fe80::1]/",
            Op,
            V::Deny(LinkLocal),
            V::Deny(LinkLocal),
        ),
        (
            "https://[febf::1]/",
            Op,
            V::Deny(LinkLocal),
            V::Deny(LinkLocal),
        ),
        (
            "https://[fd00:ec2::254]/",
            Op,
            V::Deny(LinkLocal),
            V::Deny(LinkLocal),
        ),
        (
            "https://[::ffff:169.254.169.254]/",
            Op,
            V::Deny(LinkLocal),
            V::Deny(LinkLocal),
        ),
        (
            "https://[::ffff:a9fe:a9fe]/",
            Op,
            V::Deny(LinkLocal),
            V::Deny(LinkLocal),
        ),
        (
            "https://[64:ff9b::a9fe:a9fe]/",
            Op,
            V::Deny(LinkLocal),
            V::Deny(LinkLocal),
        ),
        // unspecified: refused always
        (
            "https://0.0.0.0/",
            Op,
            V::Deny(Unspecified),
            V::Deny(Unspecified),
        ),
        ("https://0/", Op, V::Deny(Unspecified), V::Deny(Unspecified)),
        (
            "https://0.1.2.3/",
            Op,
            V::Deny(Unspecified),
            V::Deny(Unspecified),
        ),
        (
            "https://[::]/",
            Op,
            V::Deny(Unspecified),
            V::Deny(Unspecified),
        ),
        (
            "https://[::ffff:0.0.0.0]/",
            Op,
            V::Deny(Unspecified),
            V::Deny(Unspecified),
        ),
        // IPv6 loopback and embedded IPv4 loopback
        ("https://[::1]/", Op, V::Deny(Loopback), V::Ok),
        ("https://[::ffff:127.0.0.1]/", Op, V::Deny(Loopback), V::Ok),
        ("https://[::ffff:7f00:1]/", Op, V::Deny(Loopback), V::Ok),
        ("https://[::127.0.0.1]/", Op, V::Deny(Loopback), V::Ok),
        ("https://[64:ff9b::7f00:1]/", Op, V::Deny(Loopback), V::Ok),
        // localhost names (RFC 6761)
        ("https://localhost/", Op, V::Deny(Loopback), V::Ok),
        ("https://localhost./", Op, V::Deny(Loopback), V::Ok),
        ("https://LOCALHOST/", Op, V::Deny(Loopback), V::Ok),
        ("https://a.localhost/", Op, V::Deny(Loopback), V::Ok),
        ("https://A.B.LOCALHOST./", Op, V::Deny(Loopback), V::Ok),
        ("https://auth.localhost.example.com/", Op, V::Ok, V::Ok),
        ("https://localhostexample.com/", Op, V::Ok, V::Ok),
        // private ranges: operator yes, remote no
        ("https://10.0.0.5/token", Op, V::Ok, V::Ok),
        (
            "https://10.0.0.5/token",
            Rem,
            V::Deny(Private),
            V::Deny(Private),
        ),
        (
            "https://172.16.0.1/",
            Rem,
            V::Deny(Private),
            V::Deny(Private),
        ),
        (
            "https://172.31.255.255/",
            Rem,
            V::Deny(Private),
            V::Deny(Private),
        ),
        ("https://172.32.0.1/", Rem, V::Ok, V::Ok),
        (
            "https://192.168.1.1/",
            Rem,
            V::Deny(Private),
            V::Deny(Private),
        ),
        ("https://192.168.1.1/", Op, V::Ok, V::Ok),
        (
            "https://100.64.0.1/",
            Rem,
            V::Deny(Private),
            V::Deny(Private),
        ),
        (
            "https://[fd12:3456::1]/",
            Rem,
            V::Deny(Private),
            V::Deny(Private),
        ),
        (
            "https://[::ffff:10.0.0.1]/",
            Rem,
            V::Deny(Private),
            V::Deny(Private),
        ),
        (
            "https://3232235777/",
            Rem,
            V::Deny(Private),
            V::Deny(Private),
        ),
        // other special ranges
        (
            "https://224.0.0.1/",
            Op,
            V::Deny(Multicast),
            V::Deny(Multicast),
        ),
        (
            "https://[ff02::1]/",
            Op,
            V::Deny(Multicast),
            V::Deny(Multicast),
        ),
        (
            "https://255.255.255.255/",
            Op,
            V::Deny(Broadcast),
            V::Deny(Broadcast),
        ),
        (
            "https://240.0.0.1/",
            Op,
            V::Deny(Reserved),
            V::Deny(Reserved),
        ),
        (
            "https://192.0.2.1/",
            Op,
            V::Deny(Reserved),
            V::Deny(Reserved),
        ),
        (
            "https://[2001:db8::1]/",
            Op,
            V::Deny(Reserved),
            V::Deny(Reserved),
        ),
        // userinfo tricks
        ("https://evil.com@127.0.0.1/", Op, V::Invalid, V::Invalid),
        ("https://user:pass@example.com/", Op, V::Invalid, V::Invalid),
        ("https://127.0.0.1#@evil.com/", Op, V::Deny(Loopback), V::Ok),
        ("https://evil.com#@127.0.0.1/", Op, V::Ok, V::Ok),
        // WHATWG reads `\\` as `/` in special schemes: the host is example.com (as in browsers)
        ("https://example.com\\@127.0.0.1/", Op, V::Ok, V::Ok),
        // schemes
        ("http://example.com/", Op, V::Scheme, V::Ok),
        ("http://127.0.0.1:8080/", Op, V::Scheme, V::Ok),
        ("file:///etc/passwd", Op, V::Scheme, V::Scheme),
        ("ftp://example.com/", Op, V::Scheme, V::Scheme),
        ("gopher://127.0.0.1:70/", Op, V::Scheme, V::Scheme),
        ("javascript:alert(1)", Op, V::Scheme, V::Scheme),
        ("data:text/plain,hi", Op, V::Scheme, V::Scheme),
        ("ws://example.com/", Op, V::Scheme, V::Scheme),
        // garbage
        ("", Op, V::Invalid, V::Invalid),
        ("/relative/path", Op, V::Invalid, V::Invalid),
        ("example.com", Op, V::Invalid, V::Invalid),
        ("https://", Op, V::Invalid, V::Invalid),
        ("https://[::1/", Op, V::Invalid, V::Invalid),
        ("https://999.999.999.999/", Op, V::Invalid, V::Invalid),
        // public
        ("https://example.com/", Op, V::Ok, V::Ok),
        ("https://example.com/", Rem, V::Ok, V::Ok),
        ("https://93.184.216.34/", Rem, V::Ok, V::Ok),
        ("https://[2606:4700:4700::1111]/", Rem, V::Ok, V::Ok),
        ("https://example.com:8443/a?b=c", Rem, V::Ok, V::Ok),
    ]
}

#[test]
fn hostile_url_table() {
    let rows = table();
    assert!(rows.len() >= 60, "table has {} rows", rows.len());
    let (s, r) = (strict(), relaxed());
    let mut failures = Vec::new();
    for (url, source, want_strict, want_relaxed) in rows {
        let got = verdict(&s, url, source);
        if got != want_strict {
            failures.push(format!(
                "strict {url} {source:?}: want {want_strict:?}, got {got:?}"
            ));
        }
        let got = verdict(&r, url, source);
        if got != want_relaxed {
            failures.push(format!(
                "relaxed {url} {source:?}: want {want_relaxed:?}, got {got:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn private_allow_list_admits_remote_urls() {
    let e = Egress::new(EgressConfig {
        private_allow_list: vec!["10.1.0.0/16".parse().unwrap()],
        ..EgressConfig::default()
    })
    .unwrap();
    assert_eq!(verdict(&e, "https://10.1.2.3/", Rem), V::Ok);
    assert_eq!(verdict(&e, "https://10.2.2.3/", Rem), V::Deny(Private));
    // the allow list never opens link-local or loopback
    let e = Egress::new(EgressConfig {
        private_allow_list: vec!["0.0.0.0/0".parse().unwrap()],
        ..EgressConfig::default()
    })
    .unwrap();
    assert_eq!(
        verdict(&e, "https://169.254.169.254/", Rem),
        V::Deny(LinkLocal)
    );
    assert_eq!(verdict(&e, "https://127.0.0.1/", Rem), V::Deny(Loopback));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn loopback_and_link_local_denied_in_every_encoding(net in prop::sample::select(vec![127u8, 169]), b in 0u8..=255, c in 0u8..=255, d in 0u8..=255) {
            let b = if net == 169 { 254 } else { b };
            let ip = u32::from_be_bytes([net, b, c, d]);
            let e = strict();
            let forms = [
                format!("https://{net}.{b}.{c}.{d}/"),
                format!("https://{ip}/"),
                format!("https://{ip:#x}/"),
                format!("https://0{:o}.{}.{}.{}/", net, b, c, d),
                format!("https://[::ffff:{net}.{b}.{c}.{d}]/"),
                format!("https://[64:ff9b::{:x}:{:x}]/", ip >> 16, ip & 0xffff),
                format!("https://{net}.{b}.{c}.{d}./"),
            ];
            for f in forms {
                prop_assert!(matches!(e.check_url(&f, UrlSource::Operator), Err(EgressError::AddressDenied { .. })), "{}", f);
            }
        }

        #[test]
        fn check_url_never_panics(s in ".{0,80}") {
            let _ = strict().check_url(&s, UrlSource::Remote);
            let _ = relaxed().check_url(&format!("https://{s}/"), UrlSource::Remote);
        }

        #[test]
        fn classify_never_admits_link_local_v6(x in 0u16..0x40, rest in any::<u64>()) {
            let ip: IpAddr = std::net::Ipv6Addr::new(0xfe80 | x, 0, 0, 0, (rest >> 48) as u16, (rest >> 32) as u16, (rest >> 16) as u16, rest as u16).into();
            let cfg = EgressConfig { loopback: LoopbackPolicy::AllowInsecureLoopback, ..EgressConfig::default() };
            prop_assert_eq!(classify_ip(ip, UrlSource::Operator, &cfg), Err(DenyReason::LinkLocal));
        }
    }
}

/// A tiny HTTP/1.1 server: counts connections and answers each with `response`.
async fn server(response: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            h.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (addr, hits)
}

/// Answers a public address first, then the loopback test server (a rebinding DNS).
#[derive(Debug)]
struct Rebinding {
    calls: AtomicUsize,
    loopback: SocketAddr,
}

#[async_trait::async_trait]
impl NameResolver for Rebinding {
    async fn resolve(&self, _host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(vec![if n == 0 {
            SocketAddr::new("93.184.216.34".parse().unwrap(), port)
        } else {
            SocketAddr::new(self.loopback.ip(), self.loopback.port())
        }])
    }
}

#[tokio::test]
async fn dns_rebinding_to_loopback_is_refused_at_connect_time() {
    let (addr, hits) = server("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let resolver = Arc::new(Rebinding {
        calls: AtomicUsize::new(1),
        loopback: addr,
    });
    let e = Egress::with_resolver(EgressConfig::default(), resolver.clone()).unwrap();
    // The static check sees only a name; the resolution at connect time yields loopback.
    assert!(
        e.check_url("https://rebind.test/", UrlSource::Remote)
            .is_ok()
    );
    let err = e
        .send(EgressRequest::get(
            "https://rebind.test/",
            UrlSource::Remote,
            1024,
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EgressError::AddressDenied {
                reason: DenyReason::Loopback,
                ..
            }
        ),
        "{err:?}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the loopback server must see no connection"
    );
    assert_eq!(
        resolver.calls.load(Ordering::SeqCst),
        2,
        "resolved exactly once for the request"
    );
}

#[derive(Debug)]
struct Fixed(SocketAddr);

#[async_trait::async_trait]
impl NameResolver for Fixed {
    async fn resolve(&self, _host: &str, _port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(vec![self.0])
    }
}

#[tokio::test]
async fn connection_goes_to_the_checked_address() {
    let (addr, hits) = server("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").await;
    let cfg = EgressConfig {
        loopback: LoopbackPolicy::AllowInsecureLoopback,
        ..EgressConfig::default()
    };
    let e = Egress::with_resolver(cfg, Arc::new(Fixed(addr))).unwrap();
    let url = format!("http://upstream.test:{}/x", addr.port());
    let r = e
        .send(EgressRequest::get(url, UrlSource::Operator, 1024))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"hello");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_redirecting_token_endpoint_gets_no_second_request() {
    let (target, target_hits) = server("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").await;
    let resp: &'static str = Box::leak(
        format!(
            "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{}/steal\r\ncontent-length: 4\r\n\r\nbody",
            target.port()
        )
        .into_boxed_str(),
    );
    let (token, token_hits) = server(resp).await;
    let e = relaxed();
    let err = e
        .send(EgressRequest::post_form(
            format!("http://127.0.0.1:{}/token", token.port()),
            UrlSource::Remote,
            &[("grant_type", "refresh_token"), ("client_secret", "s3cret")],
            64 * 1024,
        ))
        .await
        .unwrap_err();
    match err {
        EgressError::Redirect { status, location } => {
            assert_eq!(status, 302);
            assert!(location.unwrap().ends_with("/steal"));
        }
        other => panic!("expected a redirect error, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(token_hits.load(Ordering::SeqCst), 1);
    assert_eq!(target_hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn body_caps_with_and_without_content_length() {
    let big: &'static str = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: 65537\r\n\r\n{}",
            "a".repeat(65537)
        )
        .into_boxed_str(),
    );
    let exact: &'static str = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: 65536\r\n\r\n{}",
            "a".repeat(65536)
        )
        .into_boxed_str(),
    );
    let chunk = format!("{:x}\r\n{}\r\n", 65537, "b".repeat(65537));
    let chunked: &'static str = Box::leak(
        format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{chunk}0\r\n\r\n")
            .into_boxed_str(),
    );
    let e = relaxed();
    for (resp, ok) in [(big, false), (exact, true), (chunked, false)] {
        let (addr, _) = server(resp).await;
        let r = e
            .send(EgressRequest::get(
                format!("http://127.0.0.1:{}/", addr.port()),
                UrlSource::Operator,
                64 * 1024,
            ))
            .await;
        if ok {
            assert_eq!(r.unwrap().body.len(), 65536);
        } else {
            assert!(
                matches!(r, Err(EgressError::BodyTooLarge { limit: 65536 })),
                "{r:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s); // accept, never answer
        }
    });
    let mut req = EgressRequest::get(
        format!("http://127.0.0.1:{}/", addr.port()),
        UrlSource::Operator,
        1024,
    );
    req.timeout = Some(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = relaxed().send(req).await.unwrap_err();
    assert!(matches!(err, EgressError::Timeout), "{err:?}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_closed_port_is_a_retryable_connect_error() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let err = relaxed()
        .send(EgressRequest::get(
            format!("http://127.0.0.1:{port}/"),
            UrlSource::Operator,
            1024,
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, EgressError::Connect(_)), "{err:?}");
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
    assert!(d.contains("authorization"));
}
