//! Criterion benchmarks: `WWW-Authenticate` parsing and discovery-cache hits.
//! Run with `cargo bench -p latchkey-oauth --bench oauth`; figures in BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // bench code

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use latchkey_core::SystemClock;
use latchkey_egress::{Egress, EgressConfig, LoopbackPolicy};
use latchkey_oauth::challenge;
use latchkey_oauth::discovery::{Discoverer, DiscoveryOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const MCP_CHALLENGE: &str = r#"Bearer error="invalid_token", error_description="Missing Authorization header", resource_metadata="http://localhost:41234/.well-known/oauth-protected-resource/mcp", scope="mcp:basic mcp:read mcp:write""#;
const MULTI: &str = r#"Basic realm="legacy", DPoP algs="ES256 RS256", error="use_dpop_nonce", Bearer realm="api", scope="files:read files:write", error="insufficient_scope", error_description="The request requires higher privileges than provided by the access token""#;

fn parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("challenge");
    g.bench_function("mcp_bearer_401", |b| {
        b.iter(|| challenge::bearer_challenge([black_box(MCP_CHALLENGE.as_bytes())]))
    });
    g.bench_function("three_schemes_403", |b| {
        b.iter(|| challenge::parse(black_box(MULTI.as_bytes())))
    });
    g.finish();
}

/// Serves PRM and AS metadata for one MCP server on loopback.
async fn metadata_server() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://localhost:{}", l.local_addr().unwrap().port());
    let b = base.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let base = b.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let body = if req.starts_with("GET /.well-known/oauth-protected-resource/mcp ") {
                    format!(r#"{{"resource":"{base}/mcp","authorization_servers":["{base}"]}}"#)
                } else if req.starts_with("GET /.well-known/oauth-authorization-server ") {
                    format!(
                        r#"{{"issuer":"{base}","authorization_endpoint":"{base}/authorize","token_endpoint":"{base}/token","code_challenge_methods_supported":["S256"]}}"#
                    )
                } else {
                    String::new()
                };
                let status = if body.is_empty() {
                    "404 Not Found"
                } else {
                    "200 OK"
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    base
}

fn discovery_cache(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let base = rt.block_on(metadata_server());
    let egress = Egress::new(EgressConfig {
        loopback: LoopbackPolicy::AllowInsecureLoopback,
        ..EgressConfig::default()
    })
    .unwrap();
    let d = Arc::new(Discoverer::new(egress, Arc::new(SystemClock)));
    let server = format!("{base}/mcp");
    let rm = format!("{base}/.well-known/oauth-protected-resource/mcp");
    // Warm the cache with one real discovery over loopback HTTP.
    let first = rt
        .block_on(d.discover(&server, Some(&rm), DiscoveryOptions::default()))
        .unwrap();
    assert_eq!(first.issuer, base);
    let mut g = c.benchmark_group("discovery");
    g.bench_function("cache_hit", |b| {
        b.to_async(&rt).iter(|| async {
            d.discover(black_box(&server), Some(&rm), DiscoveryOptions::default())
                .await
                .unwrap()
        })
    });
    g.bench_function("cold_over_loopback_http", |b| {
        b.to_async(&rt).iter(|| async {
            d.invalidate(&server);
            d.discover(black_box(&server), Some(&rm), DiscoveryOptions::default())
                .await
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, parsing, discovery_cache);
criterion_main!(benches);
