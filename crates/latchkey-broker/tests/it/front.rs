//! A token-endpoint front for the scripted AS: forwards `/token` to it, and can
//! * hold the next request until the test releases it (a slow AS, deterministic), and
//! * answer `invalid_grant` itself for a refresh token it already forwarded once
//!   (an AS that refuses a rotated-out token without revoking its family, so a peer's
//!   rotation can be recovered; the scripted AS revokes the family on reuse).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

#[derive(Clone)]
struct Shared {
    upstream: String,
    lenient: bool,
    hold_next: Arc<AtomicBool>,
    gate: Arc<tokio::sync::Mutex<()>>,
    arrived: Arc<tokio::sync::Notify>,
    used: Arc<Mutex<HashSet<String>>>,
    http: reqwest::Client,
}

pub(crate) struct Front {
    pub(crate) token_endpoint: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Releases the held request when dropped.
pub(crate) struct Hold(#[allow(dead_code)] tokio::sync::OwnedMutexGuard<()>);

impl Front {
    pub(crate) async fn start(upstream_base: &str, lenient: bool) -> Self {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Shared {
            upstream: format!("{upstream_base}/token"),
            lenient,
            hold_next: Arc::new(AtomicBool::new(false)),
            gate: Arc::new(tokio::sync::Mutex::new(())),
            arrived: Arc::new(tokio::sync::Notify::new()),
            used: Arc::new(Mutex::new(HashSet::new())),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        let app = Router::new()
            .route("/token", post(token))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            token_endpoint: format!("http://localhost:{port}/token"),
            shared,
            task,
        }
    }

    /// Holds the next token request until the returned guard is dropped.
    pub(crate) async fn hold_next(&self) -> Hold {
        let g = self.shared.gate.clone().lock_owned().await;
        self.shared.hold_next.store(true, Ordering::SeqCst);
        Hold(g)
    }

    /// Waits until the held request has arrived.
    pub(crate) async fn arrived(&self) {
        self.shared.arrived.notified().await;
    }
}

async fn token(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if s.hold_next.swap(false, Ordering::SeqCst) {
        s.arrived.notify_one();
        let _g = s.gate.lock().await;
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    if s.lenient
        && let Some(rt) = form.get("refresh_token")
        && !s.used.lock().unwrap().insert(rt.clone())
    {
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error":"invalid_grant","error_description":"rotated out"}"#,
        )
            .into_response();
    }
    let mut req = s.http.post(&s.upstream).body(body.clone());
    for name in [header::CONTENT_TYPE, header::AUTHORIZATION, header::ACCEPT] {
        if let Some(v) = headers.get(&name) {
            req = req.header(name.as_str(), v.as_bytes());
        }
    }
    let resp = req.send().await.unwrap();
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
    let bytes = resp.bytes().await.unwrap();
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        bytes.to_vec(),
    )
        .into_response()
}
