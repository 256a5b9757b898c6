//! `latchkey doctor URL` step by step: a healthy chain, and broken ones (an
//! authorization server that does not advertise PKCE S256, metadata that 404s, a
//! server that cannot be reached).

use std::process::Output;

use latchkey_testkit::{AsConfig, ScriptedServer};
use serde_json::Value;

use super::commands::{assert_fails, stderr, stdout};

async fn doctor(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_latchkey"))
            .arg("doctor")
            .arg("--allow-insecure-loopback")
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn findings(v: &Value, kind: &str) -> Vec<(String, String)> {
    v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == kind)
        .flat_map(|s| s["findings"].as_array().unwrap().iter())
        .map(|f| {
            (
                f["level"].as_str().unwrap().to_owned(),
                f["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_chain_step_by_step() {
    let server = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let url = server.mcp_url();
    let base = &server.base;
    let out = doctor(&[&url]).await;
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    for needle in [
        format!("POST {url}"),
        "401 with a Bearer challenge naming the protected resource metadata".into(),
        format!("GET {base}/.well-known/oauth-protected-resource/mcp"),
        // The root well-known URI is walked too, and shown as absent.
        format!("GET {base}/.well-known/oauth-protected-resource\n   -> HTTP 404"),
        format!("GET {base}/.well-known/oauth-authorization-server"),
        format!("GET {base}/.well-known/openid-configuration"),
        "[ok  ] S256 advertised".into(),
        format!("Latchkey registers itself by DCR (RFC 7591) at {base}/register"),
        "Result: OK".into(),
    ] {
        assert!(text.contains(&needle), "{needle:?} not in:\n{text}");
    }

    let out = doctor(&["--json", &url]).await;
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["problems"], serde_json::json!([]));
    let kinds: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "probe",
            "prm",
            "prm",
            "as_metadata",
            "as_metadata",
            "endpoints",
            "pkce",
            "registration",
            "verdict"
        ]
    );
    assert!(
        findings(&v, "registration")
            .iter()
            .any(|(l, m)| l == "ok" && m.contains("DCR"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pkce_s256_breaks_the_chain() {
    let server = ScriptedServer::start(AsConfig {
        advertise_pkce: false,
        ..AsConfig::default()
    })
    .await
    .unwrap();
    let url = server.mcp_url();
    let out = doctor(&[&url]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains("[FAIL] code_challenge_methods_supported is absent: the authorization server does not advertise PKCE S256"),
        "{text}"
    );
    assert!(text.contains("Result: BROKEN, 1 problem:"), "{text}");

    let out = doctor(&["--json", &url]).await;
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["discovery"]["pkce_s256"], false);
    let pkce = findings(&v, "pkce");
    assert_eq!(pkce.len(), 1);
    assert_eq!(pkce[0].0, "error");
    assert!(pkce[0].1.contains("PKCE S256"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_that_404s_breaks_the_chain() {
    let server = ScriptedServer::start(AsConfig::default()).await.unwrap();
    server.set_as_metadata_status(Some(404));
    let url = server.mcp_url();
    let base = &server.base;
    let out = doctor(&[&url]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    for needle in [
        format!("GET {base}/.well-known/oauth-authorization-server\n   -> HTTP 404"),
        format!(
            "[FAIL] no usable authorization server metadata for {base}: every RFC 8414 and OpenID Connect candidate failed"
        ),
        "[FAIL] Latchkey's discovery fails: OAuth discovery failed: no usable authorization server metadata".into(),
        "Result: BROKEN, 2 problems:".into(),
    ] {
        assert!(text.contains(&needle), "{needle:?} not in:\n{text}");
    }
    let out = doctor(&["--json", &url]).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(
        v["discovery"]["error"]
            .as_str()
            .unwrap()
            .contains("no usable authorization server metadata")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_69() {
    let out = doctor(&["http://127.0.0.1:1/mcp"]).await;
    assert_fails(&out, 69, "probe of http://127.0.0.1:1/mcp failed");
    assert!(out.stdout.is_empty());
}

/// Issue 16: doctor predicts `connect`. An authorization server with no way for
/// Latchkey to get a client is a failure, with the exit code saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_registration_endpoint_is_a_failure_like_connect() {
    let server = ScriptedServer::start(AsConfig {
        registration: false,
        ..AsConfig::default()
    })
    .await
    .unwrap();
    let out = doctor(&[&server.mcp_url()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains("[FAIL] no registration_endpoint: `latchkey connect` fails"),
        "{text}"
    );
    assert!(text.contains("Result: BROKEN"), "{text}");
}
