//! The auth-type probe against real servers on loopback.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{delete, post};
use latchkey_egress::UrlSource;
use latchkey_oauth::probe::{AuthType, probe};
use latchkey_testkit::{AsConfig, ScriptedServer};

/// A one-route server answering the probe's POST with `answer`, counting DELETEs.
async fn serve(
    answer: fn() -> axum::response::Response,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let deletes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let d = deletes.clone();
    let app = axum::Router::new()
        .route("/mcp", post(move || async move { answer() }))
        .route(
            "/mcp",
            delete(move || async move {
                d.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                StatusCode::NO_CONTENT
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, deletes)
}

#[tokio::test]
async fn a_challenge_naming_metadata_is_oauth() {
    let s = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let p = probe(&super::egress(), &s.mcp_url(), UrlSource::Operator).await;
    assert_eq!(p.auth_type, AuthType::Oauth);
    assert_eq!(p.status, Some(401));
    assert!(p.challenge.unwrap().resource_metadata.is_some());
}

#[tokio::test]
async fn an_open_server_is_none_and_its_session_is_released() {
    let (url, deletes) = serve(|| {
        let mut r = axum::Json(serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {}}))
            .into_response();
        r.headers_mut()
            .insert("mcp-session-id", HeaderValue::from_static("sess-1"));
        r
    })
    .await;
    let p = probe(&super::egress(), &url, UrlSource::Operator).await;
    assert_eq!(p.auth_type, AuthType::None);
    for _ in 0..50 {
        if deletes.load(std::sync::atomic::Ordering::SeqCst) == 1 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the probe's session was not released");
}

#[tokio::test]
async fn a_bare_invalid_token_is_headers_not_oauth() {
    let (url, _) = serve(|| {
        let mut r = StatusCode::UNAUTHORIZED.into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        r
    })
    .await;
    let p = probe(&super::egress(), &url, UrlSource::Operator).await;
    assert_eq!(p.auth_type, AuthType::Headers);
    let (url, _) = serve(|| StatusCode::FORBIDDEN.into_response()).await;
    assert_eq!(
        probe(&super::egress(), &url, UrlSource::Operator)
            .await
            .auth_type,
        AuthType::Headers
    );
}

#[tokio::test]
async fn an_unreachable_or_refused_url_is_headers_with_the_reason() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/mcp", l.local_addr().unwrap());
    drop(l);
    let p = probe(&super::egress(), &url, UrlSource::Operator).await;
    assert_eq!(p.auth_type, AuthType::Headers);
    assert!(p.failure.is_some());
    // The strict policy refuses plain http to loopback before any connection.
    let strict = latchkey_egress::Egress::new(latchkey_egress::EgressConfig::default()).unwrap();
    let p = probe(&strict, "http://127.0.0.1:9/mcp", UrlSource::Remote).await;
    assert_eq!(p.auth_type, AuthType::Headers);
    assert!(p.failure.is_some());
}
