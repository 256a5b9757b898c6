//! The `latchkey` binary, run as a user would, against the scripted servers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::process::Command;

use latchkey_testkit::pg::PgSchema;
use latchkey_testkit::{AsConfig, ScriptedServer};

mod api_keys;
mod cluster;
mod commands;
mod doctor;
mod headers;
mod hostile;
mod keys;
mod messages;
mod operations;
mod serve;
mod stdio;

fn latchkey(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_walks_discovery_and_reports_json() {
    let server = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let url = server.mcp_url();
    let out = tokio::task::spawn_blocking(move || {
        latchkey(&["doctor", "--allow-insecure-loopback", "--json", &url])
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], 401);
    assert_eq!(
        v["challenge"]["resource_metadata"],
        format!("{}/.well-known/oauth-protected-resource/mcp", server.base)
    );
    assert_eq!(v["discovery"]["issuer"], server.base);
    assert_eq!(v["discovery"]["resource"], server.mcp_url());
    assert_eq!(v["discovery"]["pkce_s256"], true);
    assert_eq!(v["discovery"]["steps"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_refuses_loopback_without_the_relaxation() {
    let server = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let url = server.mcp_url();
    let out = tokio::task::spawn_blocking(move || latchkey(&["doctor", &url]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(65), "a refused URL is bad input");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("scheme \"http\" is not allowed"), "{err}");
    assert!(err.contains("--allow-insecure-loopback"), "{err}");
    assert!(server.requests("/mcp").is_empty(), "nothing was sent");
}

#[test]
fn conformance_client_needs_a_url() {
    let out = latchkey(&["conformance-client"]);
    assert_eq!(out.status.code(), Some(2), "clap usage error");
}

#[test]
fn the_top_level_help_says_what_latchkey_is() {
    let out = latchkey(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("Latchkey: an OAuth 2.1 credential broker and gateway for MCP servers"),
        "{text}"
    );
    assert!(!text.contains("binary"), "{text}");
}
