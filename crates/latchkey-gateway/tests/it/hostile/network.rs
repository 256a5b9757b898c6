//! Items 9, 10 and 11: connections that never end (slow headers, idle keep-alive,
//! trickled bodies, floods, piles of streams) and server URLs that reach where they
//! must not (cloud metadata, userinfo, plain http beyond loopback). Real sockets on
//! 127.0.0.1, with short deadlines so the group stays fast.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use latchkey_gateway::Config;
use latchkey_gateway::limits::Limits;
use latchkey_vault::keyring::StaticKeys;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Latchkey (local mode, loopback upstreams allowed) with `limits`; its base URL and
/// address.
async fn start(limits: Limits) -> (String, std::net::SocketAddr, std::path::PathBuf) {
    let mut cfg = crate::loopback_config();
    cfg.limits = limits;
    let (base, dir) = crate::start(&cfg, StaticKeys(None)).await;
    let addr = base.trim_start_matches("http://").parse().unwrap();
    (base, addr, dir)
}

fn short() -> Limits {
    Limits {
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(2),
        body_timeout: Duration::from_secs(1),
        ..Limits::default()
    }
}

/// Resolves when the server closes `sock` (a read gives 0 bytes or an error); how long
/// that took from `since`, or `None` if it stayed open until `limit`.
async fn closed_within(sock: &mut TcpStream, since: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = [0u8; 4096];
    let left = limit.saturating_sub(since.elapsed());
    tokio::time::timeout(left, async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(_) => {} // an answer (hyper's 408) before the close
            }
        }
    })
    .await
    .ok()
}

/// Whether `sock` is still open: nothing to read, and no end of stream.
fn still_open(sock: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(sock.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// One request on a kept-alive connection, its response read whole (a JSON answer with
/// a `content-length`); the status line.
async fn exchange(sock: &mut TcpStream, addr: std::net::SocketAddr, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = sock.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the answer");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return text.lines().next().unwrap_or_default().to_owned();
            }
        }
    }
}

#[tokio::test]
async fn hostile_slow_header_and_idle_floods_are_closed_and_a_caller_is_answered() {
    let limits = short();
    let (base, addr, dir) = start(limits).await;

    // 300 slow headers (a partial request line, then nothing), a few silent sockets
    // (not a byte), and 300 kept-alive sockets left idle after one request.
    let flood_started = Instant::now();
    let mut slow = Vec::new();
    for i in 0..320 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if i < 300 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0")
                .await
                .unwrap();
        }
        slow.push((s, Instant::now()));
    }
    let mut idle = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert!(exchange(&mut s, addr, "/healthz").await.contains(" 200 "));
        idle.push((s, Instant::now()));
    }
    // During the flood a legitimate caller is answered promptly.
    let asked = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        crate::client().get(format!("{base}/v1/whoami")).send(),
    )
    .await
    .expect("answered during the flood")
    .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );

    // The idle sockets outlive the header deadline (they owe no head yet): every one
    // idle for longer than that, and not yet for its own deadline, is still open.
    let (_, last_idle) = idle.last().unwrap();
    tokio::time::sleep_until(
        (*last_idle + limits.header_read_timeout + Duration::from_millis(300)).into(),
    )
    .await;
    let window = limits.header_read_timeout + Duration::from_millis(200)
        ..limits.idle_timeout - Duration::from_millis(300);
    let checked: Vec<bool> = idle
        .iter()
        .filter(|(_, since)| window.contains(&since.elapsed()))
        .map(|(s, _)| still_open(s))
        .collect();
    assert!(!checked.is_empty());
    let closed = checked.iter().filter(|open| !**open).count();
    assert_eq!(
        closed, 0,
        "{closed} idle sockets closed at the header deadline instead of the idle one"
    );

    // ...and every socket is closed by the server within its deadline (+ margin).
    let margin = Duration::from_millis(1500);
    let slow_closed = join_all(
        slow.iter_mut()
            .map(|(s, since)| closed_within(s, *since, limits.header_read_timeout + margin)),
    )
    .await;
    let idle_closed = join_all(
        idle.iter_mut()
            .map(|(s, since)| closed_within(s, *since, limits.idle_timeout + margin)),
    )
    .await;
    let slow_open = slow_closed.iter().filter(|c| c.is_none()).count();
    let idle_open = idle_closed.iter().filter(|c| c.is_none()).count();
    assert_eq!(
        slow_open, 0,
        "slow-header sockets still open after the header deadline"
    );
    assert_eq!(
        idle_open, 0,
        "idle sockets still open after the idle deadline"
    );
    // Not before their deadlines either (the idle ones were given the longer one).
    let earliest_idle = idle_closed.iter().flatten().min().unwrap();
    assert!(
        *earliest_idle >= limits.idle_timeout - Duration::from_millis(300),
        "an idle socket closed after {earliest_idle:?}"
    );
    assert!(flood_started.elapsed() < Duration::from_secs(15));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn hostile_a_trickled_body_is_cut_off_with_the_typed_408() {
    // The API's bodies, and the proxy's, which it reads itself.
    trickled("/v1/servers").await;
    trickled("/mcp/any-server").await;
}

async fn trickled(path: &str) {
    let (_, addr, dir) = start(Limits {
        header_read_timeout: Duration::from_secs(5),
        ..short()
    })
    .await;
    let mut sock = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = sock.into_split();
    // One byte every 300 ms: 200 bytes would take a minute.
    let trickle = tokio::spawn(async move {
        for b in "{\"name\": \"slow\", \"url\": \"https://example.com/mcp\""
            .bytes()
            .cycle()
        {
            if wr.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    trickle.abort();
    let text = String::from_utf8_lossy(&got);
    assert!(
        closed.is_ok(),
        "{path}: the connection stayed open; got {text:?}"
    );
    assert!(text.starts_with("HTTP/1.1 408 "), "{path}: {text}");
    assert!(text.contains("\"code\":\"request_timeout\""), "{text}");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(3500),
        "{elapsed:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn hostile_the_connection_cap_refuses_the_excess_at_once() {
    let (base, addr, dir) = start(Limits {
        max_connections: 8,
        idle_timeout: Duration::from_secs(30),
        header_read_timeout: Duration::from_secs(30),
        ..short()
    })
    .await;
    // Eight kept-alive connections, each answered once (so each was accepted).
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert!(exchange(&mut s, addr, "/healthz").await.contains(" 200 "));
        held.push(s);
    }
    // The ninth is closed at once: not queued until one of them goes.
    for _ in 0..3 {
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let _ = extra
            .write_all(format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
            .await;
        let since = Instant::now();
        let closed = closed_within(&mut extra, since, Duration::from_secs(1)).await;
        assert!(
            closed.is_some(),
            "the connection over the cap was not refused at once"
        );
    }
    assert!(
        held.iter().all(still_open),
        "the held connections are untouched"
    );
    // One closes: its place is free again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match crate::client().get(format!("{base}/healthz")).send().await {
            Ok(r) if r.status() == 200 => break,
            other => assert!(Instant::now() < deadline, "no slot freed: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn hostile_streams_are_capped_per_principal() {
    let (base, _, dir) = start(Limits {
        max_streams_per_principal: 2,
        ..Limits::default()
    })
    .await;
    let open = || async {
        crate::client()
            .get(format!("{base}/v1/events"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap()
    };
    let first = open().await;
    let second = open().await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    // The third stream of the same principal, on any stream endpoint, is the typed 429.
    for path in ["/v1/events", "/mcp/some-server", "/mcp"] {
        let r = crate::client()
            .get(format!("{base}{path}"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 429, "{path}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["code"], "too_many_streams", "{path}: {v}");
    }
    // Other requests are not streams and are not counted.
    let r = crate::client()
        .get(format!("{base}/v1/whoami"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Closing one frees its slot.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(3);
    let third = loop {
        let r = open().await;
        if r.status() == 200 {
            break r;
        }
        assert_eq!(r.status().as_u16(), 429);
        assert!(
            Instant::now() < deadline,
            "the closed stream's slot was not freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop((second, third));
    let _ = std::fs::remove_dir_all(dir);
}

/// Items 10 and 11 at the API: a server URL is refused, with the field and a clear
/// reason, when it names a cloud metadata service, carries userinfo, or asks for plain
/// http beyond loopback under `allow_insecure_loopback`.
#[tokio::test]
async fn hostile_server_urls_beyond_the_policy_are_refused_at_add_time() {
    let (base, _, dir) = start(Limits::default()).await;
    let cases = [
        ("http://10.1.2.3/mcp", "loopback"),
        ("http://example.test/mcp", "loopback"),
        ("http://192.168.1.20:8080/mcp", "loopback"),
        ("https://100.100.100.200/latest/meta-data/", "metadata"),
        ("https://168.63.129.16/", "metadata"),
        ("https://[fd00:ec2::254]/", "metadata"),
        (
            "https://metadata.google.internal/computeMetadata/v1/",
            "metadata",
        ),
        ("http://a@127.0.0.1:9/mcp", "credentials"),
        ("http://u:p@127.0.0.1:9/mcp", "credentials"),
        ("https://u:p@example.com/mcp", "credentials"),
    ];
    for (url, why) in cases {
        let (status, v) = crate::post(
            &format!("{base}/v1/servers"),
            serde_json::json!({"name": "x", "url": url, "auth_type": "none"}),
        )
        .await;
        assert_eq!(status, 400, "{url}: {v}");
        assert_eq!(v["code"], "invalid_request", "{url}");
        assert_eq!(v["fields"][0]["field"], "url", "{url}: {v}");
        let message = v["fields"][0]["message"].as_str().unwrap();
        assert!(message.contains(why), "{url}: {message}");
        assert!(
            !message.contains(":p@"),
            "{url}: the URL's password echoed: {message}"
        );
    }
    // Plain http to loopback stays allowed under the relaxation.
    let (status, v) = crate::post(
        &format!("{base}/v1/servers"),
        serde_json::json!({"name": "local", "url": "http://127.0.0.1:9/mcp", "auth_type": "none"}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Item 11 for Latchkey's own public URL (the OAuth callback lives under it): plain
/// http only for a loopback host, whatever the listen address.
#[test]
fn hostile_an_http_public_url_must_be_loopback() {
    let env = std::collections::HashMap::new();
    for bad in [
        "http://10.1.2.3:7878",
        "http://latchkey.example",
        "http://127.0.0.1.example.com",
    ] {
        let e = Config::parse(&format!("public_url = \"{bad}\""), &env).unwrap_err();
        assert_eq!(e.setting, "public_url", "{bad}");
        assert!(e.message.contains("loopback"), "{e}");
    }
    for good in [
        "http://127.0.0.1:7878",
        "http://localhost:7878",
        "http://[::1]:7878",
        "http://latchkey.localhost:7878",
        "https://latchkey.example",
    ] {
        assert!(
            Config::parse(&format!("public_url = \"{good}\""), &env).is_ok(),
            "{good}"
        );
    }
}

/// The stream cap counts per principal: one user's streams do not use up another's,
/// in the same tenant or another.
#[tokio::test]
async fn hostile_the_stream_cap_is_per_principal() {
    use latchkey_testkit::idp::{KeyAlg, ScriptedIdp};

    let idp = ScriptedIdp::start().await.unwrap();
    let (issuer, jwks) = (idp.issuer(), idp.jwks_url());
    let (base, dir, _, _) = crate::start_configured(
        crate::Backend::Sqlite,
        move |base| {
            let toml = format!(
                "public_url = \"{base}\"\nallow_insecure_loopback = true\n\
                 [limits]\nmax_streams_per_principal = 1\n\
                 [auth]\nmode = \"jwt\"\nissuer = \"{issuer}\"\naudience = \"{base}/mcp\"\njwks_url = \"{jwks}\"\n"
            );
            Config::parse(&toml, &std::collections::HashMap::new()).unwrap()
        },
        StaticKeys(None),
    )
    .await;
    let now = std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .unwrap()
        .as_secs();
    let bearer = |tenant: &str, sub: &str| {
        let claims = serde_json::json!({
            "iss": idp.issuer(), "aud": format!("{base}/mcp"), "sub": sub,
            "tenant": tenant, "iat": now, "exp": now + 600,
        });
        format!("Bearer {}", idp.mint(KeyAlg::Rs256, &claims))
    };
    let open = |auth: String| {
        let url = format!("{base}/v1/events");
        async move {
            crate::client()
                .get(url)
                .header("authorization", auth)
                .send()
                .await
                .unwrap()
        }
    };
    let alice = open(bearer("t1", "alice")).await;
    assert_eq!(alice.status().as_u16(), 200);
    assert_eq!(open(bearer("t1", "alice")).await.status().as_u16(), 429);
    // Bob in the same tenant, and an "alice" in another tenant, have slots of their own.
    let bob = open(bearer("t1", "bob")).await;
    assert_eq!(bob.status().as_u16(), 200);
    let other = open(bearer("t2", "alice")).await;
    assert_eq!(other.status().as_u16(), 200);
    // A refused caller never counts: an unauthenticated GET is the guard's 401.
    let r = crate::client()
        .get(format!("{base}/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    drop((alice, bob, other));
    let _ = std::fs::remove_dir_all(dir);
}
