//! Dynamic client registration against servers that refuse what they do not like
//! (issue 16): a registration endpoint written here, strict the way oidc-provider is
//! (a scope it does not list is `invalid_client_metadata`), or refusing anything but a
//! minimal document, or failing.

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use latchkey_core::Remedy;
use latchkey_oauth::OAuthError;
use latchkey_oauth::client_auth::AuthMethod;
use latchkey_oauth::registration::{self, ApplicationType, DcrRequest};
use serde_json::{Value, json};

#[derive(Clone, Copy)]
enum Mode {
    /// Refuses a scope outside `openid offline_access`.
    StrictScopes,
    /// Refuses any document with a `scope` or `application_type`.
    MinimalOnly,
    /// Refuses everything, with a description full of control characters and markup.
    Refuse,
    /// Fails.
    Broken,
}

/// The endpoint; the bodies it received.
async fn endpoint(mode: Mode) -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |axum::Json(body): axum::Json<Value>| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push(body.clone());
            let refuse = |d: &str| {
                (
                    StatusCode::BAD_REQUEST,
                    axum::Json(json!({"error": "invalid_client_metadata", "error_description": d})),
                )
                    .into_response()
            };
            match mode {
                Mode::StrictScopes => {
                    let scope = body["scope"].as_str().unwrap_or("");
                    if scope
                        .split(' ')
                        .any(|s| !s.is_empty() && s != "openid" && s != "offline_access")
                    {
                        return refuse(
                            "scope must only contain Authorization Server supported scope values",
                        );
                    }
                }
                Mode::MinimalOnly => {
                    if body.get("scope").is_some() || body.get("application_type").is_some() {
                        return refuse("unrecognized metadata");
                    }
                }
                Mode::Refuse => {
                    let long = format!("no\n\u{1b}[31m<script>x</script>{}", "y".repeat(500));
                    return (
                        StatusCode::BAD_REQUEST,
                        axum::Json(
                            json!({"error": "invalid_redirect_uri", "error_description": long}),
                        ),
                    )
                        .into_response();
                }
                Mode::Broken => {
                    return (StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response();
                }
            }
            (
                StatusCode::CREATED,
                axum::Json(json!({"client_id": "c1", "token_endpoint_auth_method": "none"})),
            )
                .into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/register", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

fn request() -> DcrRequest {
    DcrRequest {
        redirect_uris: vec!["http://127.0.0.1:9/v1/oauth/callback".into()],
        client_name: "Latchkey".into(),
        grant_types: vec!["authorization_code".into(), "refresh_token".into()],
        auth_method: AuthMethod::None,
        application_type: Some(ApplicationType::Native),
        scope: Some("openid mcp:tools offline_access".into()),
    }
}

#[tokio::test]
async fn registration_asks_only_for_listed_scopes() {
    let (url, seen) = endpoint(Mode::StrictScopes).await;
    let listed = vec!["openid".to_owned(), "offline_access".to_owned()];
    let reg = registration::register_adapted(
        &super::egress(),
        &url,
        "http://as",
        &request(),
        Some(&listed),
    )
    .await
    .unwrap();
    assert_eq!(reg.credentials.client_id, "c1");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "accepted at once");
    assert_eq!(seen[0]["scope"], "openid offline_access");
}

#[tokio::test]
async fn a_refused_registration_is_tried_once_more_minimal() {
    let (url, seen) = endpoint(Mode::MinimalOnly).await;
    let reg = registration::register_adapted(&super::egress(), &url, "http://as", &request(), None)
        .await
        .unwrap();
    assert_eq!(reg.credentials.client_id, "c1");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].get("scope").is_none() && seen[1].get("application_type").is_none());
    assert_eq!(seen[1]["redirect_uris"], seen[0]["redirect_uris"]);
}

#[tokio::test]
async fn a_refusal_is_configuration_with_the_servers_words_made_safe() {
    let (url, seen) = endpoint(Mode::Refuse).await;
    let e = registration::register_adapted(&super::egress(), &url, "http://as", &request(), None)
        .await
        .unwrap_err();
    assert_eq!(seen.lock().unwrap().len(), 2, "one retry, no more");
    let OAuthError::RegistrationRefused { error, description } = &e else {
        panic!("{e:?}");
    };
    assert_eq!(error, "invalid_redirect_uri");
    let d = description.as_deref().unwrap();
    assert!(!d.chars().any(char::is_control), "{d:?}");
    assert!(
        d.chars().count() <= registration::DESCRIPTION_MAX + 1,
        "capped"
    );
    assert_eq!(e.remedy(), Remedy::Reconfigure, "never retryable");
    assert!(e.to_string().contains("invalid_redirect_uri"));

    let (url, _) = endpoint(Mode::Broken).await;
    let e = registration::register_adapted(&super::egress(), &url, "http://as", &request(), None)
        .await
        .unwrap_err();
    assert!(matches!(e, OAuthError::Registration(_)), "{e:?}");
    assert_eq!(e.remedy(), Remedy::Retry, "a failing server may recover");
}
