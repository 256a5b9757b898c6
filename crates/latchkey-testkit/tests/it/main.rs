//! The scripted servers exercised over real loopback sockets: token-endpoint faults,
//! counters, refresh-token reuse detection and the MCP resource with its faults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use latchkey_testkit::{AsConfig, ScriptedServer, TokenFault};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

mod mcp;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

async fn start(cfg: AsConfig) -> ScriptedServer {
    ScriptedServer::start(cfg).await.unwrap()
}

/// POSTs a form (already encoded) to `/token`.
async fn token(server: &ScriptedServer, form: &str) -> reqwest::Response {
    client()
        .post(format!("{}/token", server.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_owned())
        .send()
        .await
        .unwrap()
}

async fn token_json(server: &ScriptedServer, form: &str) -> (u16, Value) {
    let r = token(server, form).await;
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

const CC: &str = "grant_type=client_credentials&scope=mcp%3Aread";

#[tokio::test]
async fn normal_grant_is_counted() {
    let server = start(AsConfig::default()).await;
    let (status, body) = token_json(&server, CC).await;
    assert_eq!(status, 200);
    assert!(body["access_token"].as_str().unwrap().starts_with("at-"));
    assert_eq!(body["scope"], "mcp:read");
    assert_eq!(server.token_requests(), 1);
    assert_eq!(server.grants_served_for("client_credentials"), 1);
    assert_eq!(server.grants_served().get("client_credentials"), Some(&1));
    assert_eq!(server.grants_served_for("refresh_token"), 0);
    assert_eq!(
        server.issued_access_tokens(),
        vec![body["access_token"].as_str().unwrap().to_owned()]
    );
}

#[tokio::test]
async fn slow_token_endpoint_delays_then_answers() {
    let server = start(AsConfig::default()).await;
    server.set_token_fault(TokenFault::Slow(Duration::from_millis(300)));
    let t = Instant::now();
    let (status, body) = token_json(&server, CC).await;
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(status, 200);
    assert!(body["access_token"].is_string());
    assert_eq!(server.grants_served_for("client_credentials"), 1);
}

#[tokio::test]
async fn server_error_and_recovery() {
    let server = start(AsConfig::default()).await;
    server.set_token_fault(TokenFault::ServerError(503));
    for _ in 0..2 {
        let r = token(&server, CC).await;
        assert_eq!(r.status(), 503);
        assert!(r.bytes().await.unwrap().len() < 100, "a small body");
    }
    server.set_token_fault(TokenFault::None);
    assert_eq!(token_json(&server, CC).await.0, 200);
    assert_eq!(server.token_requests(), 3);
    assert_eq!(server.grants_served_for("client_credentials"), 1);
}

#[tokio::test]
async fn fault_for_n_requests_then_normal() {
    let server = start(AsConfig::default()).await;
    server.set_token_fault_for(TokenFault::ServerError(500), 2);
    assert_eq!(token(&server, CC).await.status(), 500);
    assert_eq!(token(&server, CC).await.status(), 500);
    assert_eq!(token(&server, CC).await.status(), 200);
    server.set_token_fault_for(TokenFault::Garbage, 0);
    assert_eq!(token_json(&server, CC).await.0, 200, "zero times: disarmed");
}

#[tokio::test]
async fn oauth_errors_are_rfc6749_shaped() {
    let server = start(AsConfig::default()).await;
    server.set_token_fault(TokenFault::OAuthError {
        status: 400,
        error: "invalid_grant".into(),
    });
    let (status, body) = token_json(&server, CC).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");

    server.set_token_fault(TokenFault::OAuthError {
        status: 401,
        error: "invalid_client".into(),
    });
    let r = token(&server, CC).await;
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"], "invalid_client");
    assert!(server.grants_served().is_empty());
}

#[tokio::test]
async fn null_body_and_garbage() {
    let server = start(AsConfig::default()).await;
    server.set_token_fault(TokenFault::NullBody);
    let r = token(&server, CC).await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], b"null");

    server.set_token_fault(TokenFault::Garbage);
    let r = token(&server, CC).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body = r.bytes().await.unwrap();
    assert!(serde_json::from_slice::<Value>(&body).is_err());
    assert!(server.grants_served().is_empty());
}

#[tokio::test]
async fn huge_body_is_streamed_to_the_byte() {
    let server = start(AsConfig::default()).await;
    let n = 10 * 1024 * 1024;
    server.set_token_fault(TokenFault::Huge(n));
    let mut r = token(&server, CC).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-length").is_none(), "chunked");
    let mut total = 0;
    let mut first = None;
    while let Some(chunk) = r.chunk().await.unwrap() {
        if first.is_none() {
            first = Some(chunk.clone());
        }
        total += chunk.len();
    }
    assert_eq!(total, n);
    assert!(first.unwrap().starts_with(br#"{"access_token":"xxx"#));

    server.set_token_fault(TokenFault::Huge(5));
    let r = token(&server, CC).await;
    assert_eq!(&r.bytes().await.unwrap()[..], br#"{"acc"#);
}

#[tokio::test]
async fn redirect_fault_and_config_redirect() {
    let server = start(AsConfig::default()).await;
    server.set_token_fault(TokenFault::RedirectTo("http://127.0.0.1:1/steal".into()));
    let r = token(&server, CC).await;
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "http://127.0.0.1:1/steal");

    let server = start(AsConfig {
        token_redirect_to: Some("http://127.0.0.1:1/elsewhere".into()),
        ..AsConfig::default()
    })
    .await;
    let r = token(&server, CC).await;
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "http://127.0.0.1:1/elsewhere");
}

fn rt_form(rt: &str) -> String {
    format!("grant_type=refresh_token&refresh_token={rt}")
}

#[tokio::test]
async fn refresh_token_reuse_is_detected_and_revokes_the_family() {
    let server = start(AsConfig::default()).await;
    let rt0 = server.mint_refresh_token();
    let (status, body) = token_json(&server, &rt_form(&rt0)).await;
    assert_eq!(status, 200);
    let rt1 = body["refresh_token"].as_str().unwrap().to_owned();
    let at1 = body["access_token"].as_str().unwrap().to_owned();
    assert_ne!(rt0, rt1);
    assert_eq!(server.reuse_detections(), 0);
    assert_eq!(mcp::ping(&server, &at1).await.status(), 200);

    let (status, body) = token_json(&server, &rt_form(&rt0)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(server.reuse_detections(), 1);
    // The whole family is gone: the current refresh token and its access token.
    let (status, _) = token_json(&server, &rt_form(&rt1)).await;
    assert_eq!(status, 400);
    assert_eq!(
        server.reuse_detections(),
        1,
        "a revoked family is not a reuse"
    );
    assert_eq!(mcp::ping(&server, &at1).await.status(), 401);
    assert_eq!(server.grants_served_for("refresh_token"), 1);
    assert_eq!(server.token_requests(), 3);
}

#[tokio::test]
async fn code_flow_then_refresh_keeps_the_granted_scope() {
    let server = start(AsConfig {
        required_scope: Some("mcp:read".into()),
        ..AsConfig::default()
    })
    .await;
    let verifier = "v".repeat(43);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let r = client()
        .get(format!(
            "{}/authorize?response_type=code&client_id=c&redirect_uri=http%3A%2F%2Flocalhost%3A9%2Fcb&state=st&scope=mcp%3Aread&code_challenge={challenge}&code_challenge_method=S256",
            server.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let loc = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let code = loc
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let (status, body) = token_json(
        &server,
        &format!("grant_type=authorization_code&code={code}&code_verifier={verifier}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let rt = body["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(
        mcp::ping(&server, body["access_token"].as_str().unwrap())
            .await
            .status(),
        200
    );

    // Refresh without `scope`: the response does not echo one, but the token keeps it.
    let (status, body) = token_json(&server, &rt_form(&rt)).await;
    assert_eq!(status, 200);
    assert!(body.get("scope").is_none());
    assert_eq!(
        mcp::ping(&server, body["access_token"].as_str().unwrap())
            .await
            .status(),
        200
    );
    let mut grants = server.grants_served();
    grants.retain(|_, n| *n > 0);
    assert_eq!(grants.len(), 2);
    assert_eq!(server.grants_served_for("authorization_code"), 1);
    assert_eq!(server.grants_served_for("refresh_token"), 1);
}

#[tokio::test]
async fn non_rotating_refresh_still_answers_as_before() {
    let server = start(AsConfig {
        rotate_refresh_tokens: false,
        ..AsConfig::default()
    })
    .await;
    let rt = server.mint_refresh_token();
    for _ in 0..2 {
        let (status, body) = token_json(&server, &rt_form(&rt)).await;
        assert_eq!(status, 200);
        assert!(body.get("refresh_token").is_none());
        assert_eq!(
            mcp::ping(&server, body["access_token"].as_str().unwrap())
                .await
                .status(),
            200
        );
    }
    assert_eq!(server.reuse_detections(), 0);
    assert_eq!(server.grants_served_for("refresh_token"), 2);
    assert_eq!(json!(server.issued_access_tokens().len()), json!(2));
}

#[tokio::test]
async fn the_authorization_endpoint_can_refuse_with_an_error() {
    let server = start(AsConfig::default()).await;
    server.set_authorize_error(Some(latchkey_testkit::AuthorizeError {
        error: "access_denied".into(),
        description: Some("no <b>way</b>".into()),
    }));
    let url = format!(
        "{}/authorize?response_type=code&client_id=c&redirect_uri=http%3A%2F%2Flocalhost%3A9%2Fcb%3Fx%3D1&state=st&code_challenge=abc&code_challenge_method=S256",
        server.base
    );
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let loc = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let q: std::collections::HashMap<String, String> = loc.query_pairs().into_owned().collect();
    assert_eq!(loc.path(), "/cb");
    assert_eq!(q["x"], "1", "the redirect URI's own query is kept");
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["error_description"], "no <b>way</b>");
    assert_eq!(q["state"], "st");
    assert_eq!(q["iss"], server.base);
    assert!(!q.contains_key("code"), "no code is issued");
    // Approving again once the refusal is lifted.
    server.set_authorize_error(None);
    let r = client().get(&url).send().await.unwrap();
    let loc = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    assert!(loc.query_pairs().any(|(k, _)| k == "code"));
}
