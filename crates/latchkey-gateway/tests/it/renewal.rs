//! Relays on the federated endpoint `/mcp` outlive a lost upstream session: when an
//! upstream restarts (forgets its sessions and ends its streams), the hub opens a new
//! upstream session, sends the subscriptions its client sessions still want (and the
//! most verbose level they set) again and reads the new session's stream, so resource
//! updates keep reaching a client that makes no request meanwhile. Likewise when the
//! slot's session is replaced while the old stream stays open: the hub follows the new
//! session.

use std::collections::HashMap;
use std::time::Duration;

use latchkey_testkit::{AsConfig, ScriptedServer};
use latchkey_vault::KeySet;
use latchkey_vault::keyring::StaticKeys;
use rmcp::service::NotificationContext;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::json;
use tokio::sync::mpsc;

use super::post;

const KEY: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// What the test client presents to Latchkey (local mode ignores it).
const CALLER_TOKEN: &str = "callers-own-credential";

fn keys() -> StaticKeys {
    StaticKeys(Some(KeySet::parse(KEY).unwrap()))
}

/// An MCP client that reports the resource updates relayed to it.
#[derive(Debug, Clone)]
struct Updates(mpsc::UnboundedSender<String>);

impl ClientHandler for Updates {
    async fn on_resource_updated(
        &self,
        params: rmcp::model::ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self.0.send(params.uri);
    }
}

/// Latchkey in local mode on `backend` with the scripted server "Beta" (offering
/// primitives) connected: the server, Latchkey's base URL and what
/// [`super::cleanup`] takes.
async fn beta_on(
    backend: super::Backend,
) -> (
    ScriptedServer,
    String,
    std::path::PathBuf,
    Option<latchkey_testkit::pg::PgSchema>,
) {
    let beta = ScriptedServer::start(AsConfig::default()).await.unwrap();
    beta.offer_primitives(Some("beta"));
    let cfg = super::loopback_config();
    let (base, dir, _store, schema) = super::start_on(backend, &cfg, keys()).await;
    super::connected_server(&base, "Beta", &beta).await;
    (beta, base, dir, schema)
}

/// A 2025-11-25 [`Updates`] session on `{base}/mcp`, and what it reports.
async fn updates_client(
    base: &str,
) -> (
    rmcp::service::RunningService<RoleClient, Updates>,
    mpsc::UnboundedReceiver<String>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("{base}/mcp"))
            .auth_header(CALLER_TOKEN),
    );
    (Updates(tx).serve(transport).await.unwrap(), rx)
}

/// The next URI relayed to an [`Updates`] client, within `bound`.
async fn updated(rx: &mut mpsc::UnboundedReceiver<String>, bound: Duration) -> String {
    tokio::time::timeout(bound, rx.recv())
        .await
        .expect("a relayed notifications/resources/updated in time")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_survive_an_upstream_restart_on_sqlite() {
    subscriptions_survive_an_upstream_restart(super::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_survive_an_upstream_restart_on_postgres() {
    subscriptions_survive_an_upstream_restart(super::Backend::Postgres).await;
}

/// A 2025-11-25 client session subscribes to a resource; the upstream restarts (its
/// sessions forgotten, its GET stream ended). Without the client making any request,
/// the hub's next attempt (after the backoff's first second) gets 404 for the old
/// session, opens a new one with `initialize`, subscribes to the original URI again
/// and reads the new session's stream: the next update reaches the client with the
/// federated URI it knows.
// The client's subscription request is deprecated in rmcp (2026-07-28 retired it).
#[allow(deprecated)]
async fn subscriptions_survive_an_upstream_restart(backend: super::Backend) {
    use rmcp::model::SubscribeRequestParams;
    let (beta, base, dir, schema) = beta_on(backend).await;
    let (c, mut rx) = updates_client(&base).await;
    c.subscribe(SubscribeRequestParams::new(
        "latchkey://beta/file:///notes.txt",
    ))
    .await
    .unwrap();
    assert_eq!(beta.open_streams(), 1);
    let update = json!({"jsonrpc": "2.0", "method": "notifications/resources/updated",
                        "params": {"uri": "file:///notes.txt"}});
    assert_eq!(beta.push(update.clone()), 1);
    let federated = "latchkey://beta/file:///notes.txt";
    assert_eq!(updated(&mut rx, Duration::from_secs(10)).await, federated);
    let initializes = super::upstream_requests(&beta, "initialize").len();
    assert_eq!(
        super::upstream_requests(&beta, "resources/subscribe").len(),
        1
    );
    let old_sessions = beta.mcp_sessions();
    assert_eq!(old_sessions.len(), 1, "{old_sessions:?}");

    // The restart: every session forgotten, the stream ended.
    beta.expire_mcp_sessions();
    assert_eq!(beta.close_streams(), 1);

    // The hub renews on its own: a new session, the subscription again, a new stream.
    super::eventually("a new session's stream and subscription", || {
        beta.open_streams() == 1
            && super::upstream_requests(&beta, "resources/subscribe").len() == 2
    })
    .await;
    assert_eq!(
        super::upstream_requests(&beta, "initialize").len(),
        initializes + 1,
        "one new upstream session"
    );
    let subscribes = super::upstream_requests(&beta, "resources/subscribe");
    assert_eq!(subscribes[1]["uri"], "file:///notes.txt", "{subscribes:?}");
    let new_sessions = beta.mcp_sessions();
    assert_eq!(new_sessions.len(), 1, "{new_sessions:?}");
    assert_ne!(new_sessions, old_sessions);
    // The old session's GET got its 404 and the new one's was opened, with the new id.
    let gets = beta.requests("/mcp/stream");
    let get_sessions: Vec<&str> = gets
        .iter()
        .map(|r| r.headers["mcp-session-id"].as_str())
        .collect();
    assert_eq!(
        get_sessions,
        vec![
            old_sessions[0].as_str(),
            old_sessions[0].as_str(),
            new_sessions[0].as_str()
        ]
    );

    assert_eq!(beta.push(update), 1);
    assert_eq!(updated(&mut rx, Duration::from_secs(10)).await, federated);
    assert!(rx.try_recv().is_err());

    c.cancel().await.unwrap();
    super::eventually("the stream closed with the session", || {
        beta.open_streams() == 0
    })
    .await;
    super::cleanup(dir, schema).await;
}

/// What [`PerSession`] keeps: sessions, subscriptions and streams, each per session.
#[derive(Debug, Default)]
struct PerSessionState {
    next: u64,
    /// The sessions POSTs are answered in (one forgotten for POSTs gets 404 there, its
    /// stream stays open).
    live: std::collections::HashSet<String>,
    /// Per session, the URIs subscribed to in it.
    subscribed: HashMap<String, std::collections::BTreeSet<String>>,
    /// Per session, its open standalone stream.
    streams: HashMap<String, mpsc::UnboundedSender<String>>,
    /// The session of each GET, in order.
    gets: Vec<String>,
}

/// An upstream MCP server (no authorization) that keeps subscriptions and standalone
/// streams per session, as servers do: an update goes on the stream of each session
/// subscribed to its URI, and only there. (The scripted server sends every update on
/// every stream, which cannot tell which session's stream a hub reads.)
#[derive(Debug, Clone, Default)]
struct PerSession(std::sync::Arc<std::sync::Mutex<PerSessionState>>);

impl PerSession {
    /// Serves on a loopback port; the URL of its MCP endpoint.
    async fn start(&self) -> String {
        use axum::routing::post;
        let app = axum::Router::new()
            .route("/mcp", post(Self::handle).get(Self::stream))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PerSessionState> {
        self.0.lock().unwrap()
    }

    fn session(headers: &axum::http::HeaderMap) -> Option<String> {
        headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    async fn handle(
        axum::extract::State(up): axum::extract::State<Self>,
        headers: axum::http::HeaderMap,
        axum::Json(msg): axum::Json<serde_json::Value>,
    ) -> axum::response::Response {
        use axum::http::StatusCode;
        use axum::response::IntoResponse;
        let method = msg["method"].as_str().unwrap_or_default();
        let id = msg.get("id").cloned();
        if method == "initialize" {
            let sid = {
                let mut st = up.lock();
                st.next += 1;
                let sid = format!("ps-{}", st.next);
                st.live.insert(sid.clone());
                sid
            };
            let result = json!({
                "protocolVersion": msg["params"]["protocolVersion"],
                "capabilities": {"resources": {"subscribe": true}},
                "serverInfo": {"name": "per-session", "version": "1"},
            });
            return (
                [("mcp-session-id", sid)],
                axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})),
            )
                .into_response();
        }
        let Some(sid) = Self::session(&headers).filter(|s| up.lock().live.contains(s)) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let Some(id) = id else {
            return StatusCode::ACCEPTED.into_response();
        };
        let answer = match method {
            "resources/subscribe" => {
                let uri = msg["params"]["uri"].as_str().unwrap_or_default().to_owned();
                up.lock().subscribed.entry(sid).or_default().insert(uri);
                json!({"jsonrpc": "2.0", "id": id, "result": {}})
            }
            _ => json!({"jsonrpc": "2.0", "id": id,
                        "error": {"code": -32601, "message": "Method not found"}}),
        };
        axum::Json(answer).into_response()
    }

    async fn stream(
        axum::extract::State(up): axum::extract::State<Self>,
        headers: axum::http::HeaderMap,
    ) -> axum::response::Response {
        use axum::http::StatusCode;
        use axum::response::IntoResponse;
        let Some(sid) = Self::session(&headers) else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        let (tx, rx) = mpsc::unbounded_channel::<String>();
        {
            let mut st = up.lock();
            st.gets.push(sid.clone());
            if !st.live.contains(&sid) {
                return StatusCode::NOT_FOUND.into_response();
            }
            st.streams.insert(sid, tx);
        }
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            let event = rx.recv().await?;
            Some((Ok::<_, std::convert::Infallible>(event), rx))
        });
        (
            [("content-type", "text/event-stream")],
            axum::body::Body::from_stream(body),
        )
            .into_response()
    }

    /// Sends `notifications/resources/updated` for `uri` on the open stream of each
    /// session subscribed to it; the sessions it went to.
    fn update(&self, uri: &str) -> Vec<String> {
        let st = self.lock();
        let event = format!(
            "event: message\ndata: {}\n\n",
            json!({"jsonrpc": "2.0", "method": "notifications/resources/updated",
                   "params": {"uri": uri}})
        );
        st.subscribed
            .iter()
            .filter(|(_, uris)| uris.contains(uri))
            .filter(|(sid, _)| {
                st.streams
                    .get(*sid)
                    .is_some_and(|tx| tx.send(event.clone()).is_ok())
            })
            .map(|(sid, _)| sid.clone())
            .collect()
    }

    /// Answers 404 to every POST in the sessions opened so far, as an upstream that
    /// expired them does; their streams stay open.
    fn forget_posts(&self) {
        self.lock().live.clear();
    }

    /// The URIs subscribed to in session `sid`.
    fn subscribed(&self, sid: &str) -> Vec<String> {
        self.lock()
            .subscribed
            .get(sid)
            .map(|u| u.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The session of each GET so far.
    fn gets(&self) -> Vec<String> {
        self.lock().gets.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_follows_a_replaced_upstream_session_on_sqlite() {
    the_hub_follows_a_replaced_upstream_session(super::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_follows_a_replaced_upstream_session_on_postgres() {
    the_hub_follows_a_replaced_upstream_session(super::Backend::Postgres).await;
}

/// A client session subscribes to a resource (the hub reads session 1's stream). The
/// upstream then answers 404 to POSTs in session 1 but leaves its stream open, so the
/// client's next subscription, to a second URI, is made in a new session 2 opened for
/// the slot. The hub follows: it opens session 2's stream, subscribes there to the
/// first URI again, and the upstream's update of the second URI, sent on session 2's
/// stream only, reaches the client. Without the hub following, nobody reads session
/// 2's stream and the update is lost.
#[allow(deprecated)] // rmcp's subscribe request (2026-07-28 retired it).
async fn the_hub_follows_a_replaced_upstream_session(backend: super::Backend) {
    use rmcp::model::SubscribeRequestParams;
    let up = PerSession::default();
    let url = up.start().await;
    let cfg = super::loopback_config();
    let (base, dir, _store, schema) = super::start_on(backend, &cfg, keys()).await;
    let (status, v) = post(
        &format!("{base}/v1/servers"),
        json!({"name": "Beta", "url": url, "auth_type": "none"}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let (c, mut rx) = updates_client(&base).await;
    c.subscribe(SubscribeRequestParams::new("latchkey://beta/file:///a.txt"))
        .await
        .unwrap();
    super::eventually("session 1's stream", || up.gets() == ["ps-1"]).await;
    assert_eq!(up.update("file:///a.txt"), ["ps-1"]);
    let a = "latchkey://beta/file:///a.txt";
    assert_eq!(updated(&mut rx, Duration::from_secs(10)).await, a);

    // Session 1 gone for requests, its stream still open: the next subscription opens
    // session 2 and is made there.
    up.forget_posts();
    c.subscribe(SubscribeRequestParams::new("latchkey://beta/file:///b.txt"))
        .await
        .unwrap();
    assert_eq!(up.subscribed("ps-2"), ["file:///b.txt"]);

    // The hub reads session 2's stream and has the first URI subscribed there too.
    super::eventually("session 2's stream, the first URI subscribed again", || {
        up.gets().last().is_some_and(|s| s == "ps-2") && up.subscribed("ps-2").len() == 2
    })
    .await;
    assert_eq!(up.gets(), ["ps-1", "ps-2"], "no other stream opened");
    assert_eq!(up.subscribed("ps-2"), ["file:///a.txt", "file:///b.txt"]);
    assert_eq!(up.update("file:///b.txt"), ["ps-2"]);
    let b = "latchkey://beta/file:///b.txt";
    assert_eq!(updated(&mut rx, Duration::from_secs(10)).await, b);
    // The first URI's updates now come on session 2's stream (session 1's is dropped).
    super::eventually("session 1's stream dropped", || {
        up.update("file:///a.txt") == ["ps-2"]
    })
    .await;
    assert_eq!(updated(&mut rx, Duration::from_secs(10)).await, a);

    c.cancel().await.unwrap();
    super::cleanup(dir, schema).await;
}

/// The slot's session replaced for a refreshed credential: the upstream expired the
/// access token, so the client's next request is refused (401), the token refreshed,
/// and a new upstream session opened for it while the old session's stream stays open.
/// The hub opens the new session's stream and subscribes there again. (The scripted
/// server sends updates on every stream, so only the requests show which one the hub
/// reads; the per-session server above shows the update that would be lost.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(deprecated)] // rmcp's subscribe request (2026-07-28 retired it).
async fn the_hub_follows_a_session_opened_for_a_refreshed_token() {
    use rmcp::model::{ReadResourceRequestParams, SubscribeRequestParams};
    let (beta, base, dir, schema) = beta_on(super::Backend::Sqlite).await;
    let (c, mut rx) = updates_client(&base).await;
    let federated = "latchkey://beta/file:///notes.txt";
    c.subscribe(SubscribeRequestParams::new(federated))
        .await
        .unwrap();
    assert_eq!(beta.open_streams(), 1);
    let old = beta.mcp_sessions();
    assert_eq!(old.len(), 1, "{old:?}");
    let refreshes = beta.grants_served_for("refresh_token");

    beta.expire_access_tokens();
    c.read_resource(ReadResourceRequestParams::new(federated))
        .await
        .unwrap();
    assert_eq!(beta.grants_served_for("refresh_token"), refreshes + 1);
    let sessions = beta.mcp_sessions();
    assert_eq!(
        sessions.len(),
        2,
        "a new session, the old one kept: {sessions:?}"
    );
    let new = sessions.iter().find(|s| !old.contains(s)).unwrap().clone();
    let in_new = |method: &str| {
        beta.requests("/mcp")
            .iter()
            .filter(|r| r.body.get("method").is_some_and(|m| m == method))
            .filter(|r| r.headers.get("mcp-session-id") == Some(&new))
            .count()
    };
    let get_sessions = || -> Vec<String> {
        beta.requests("/mcp/stream")
            .iter()
            .map(|r| r.headers["mcp-session-id"].clone())
            .collect()
    };
    super::eventually("the new session's stream and subscription", || {
        get_sessions().last() == Some(&new)
            && in_new("resources/subscribe") == 1
            && beta.open_streams() == 1
    })
    .await;
    assert_eq!(get_sessions(), [old[0].clone(), new.clone()]);
    assert_eq!(
        beta.push(
            json!({"jsonrpc": "2.0", "method": "notifications/resources/updated",
                                "params": {"uri": "file:///notes.txt"}})
        ),
        1
    );
    assert_eq!(updated(&mut rx, Duration::from_secs(10)).await, federated);

    c.cancel().await.unwrap();
    super::cleanup(dir, schema).await;
}

/// Two client sessions of the slot set a level, `warning` then `error` (the upstream's
/// level is `error` now); the upstream restarts. Without any client request, the hub's
/// new session is given `logging/setLevel` once, with `warning`: the most verbose level
/// a client asked for, not the last one set, since the session's log level serves both
/// clients. Without it the new session logs at the upstream's default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(deprecated)] // rmcp's logging types (SEP-2577), still part of 2025-11-25.
async fn the_level_clients_set_survives_an_upstream_restart() {
    use rmcp::model::{LoggingLevel, SetLevelRequestParams};
    let (beta, base, dir, schema) = beta_on(super::Backend::Sqlite).await;
    let ((a, _), (b, _)) = (updates_client(&base).await, updates_client(&base).await);
    a.set_level(SetLevelRequestParams::new(LoggingLevel::Warning))
        .await
        .unwrap();
    b.set_level(SetLevelRequestParams::new(LoggingLevel::Error))
        .await
        .unwrap();
    assert_eq!(beta.open_streams(), 1, "one hub for the slot");
    let levels = |session: &str| -> Vec<String> {
        beta.requests("/mcp")
            .iter()
            .filter(|r| {
                r.body
                    .get("method")
                    .is_some_and(|m| m == "logging/setLevel")
            })
            .filter(|r| {
                r.headers
                    .get("mcp-session-id")
                    .is_some_and(|s| s == session)
            })
            .map(|r| r.body["level"].clone())
            .collect()
    };
    let old = beta.mcp_sessions();
    assert_eq!(old.len(), 1, "{old:?}");
    assert_eq!(levels(&old[0]), ["warning", "error"]);
    let posts = beta.requests("/mcp").len();

    // The restart: every session forgotten, the stream ended.
    beta.expire_mcp_sessions();
    assert_eq!(beta.close_streams(), 1);

    super::eventually("the level set in a new session", || {
        beta.mcp_sessions()
            .first()
            .is_some_and(|new| !levels(new).is_empty())
    })
    .await;
    let new = beta.mcp_sessions();
    assert_eq!(new.len(), 1, "{new:?}");
    assert_ne!(new, old);
    assert_eq!(levels(&new[0]), ["warning"], "once, the most verbose");
    // Only the hub's own requests: the new session's initialize and the level (its
    // GETs are recorded apart).
    let methods: Vec<String> = beta.requests("/mcp")[posts..]
        .iter()
        .filter_map(|r| r.body.get("method").cloned())
        .collect();
    assert_eq!(
        methods,
        [
            "initialize",
            "notifications/initialized",
            "logging/setLevel"
        ],
        "no client request in between"
    );

    a.cancel().await.unwrap();
    b.cancel().await.unwrap();
    super::eventually("the stream closed with the sessions", || {
        beta.open_streams() == 0
    })
    .await;
    super::cleanup(dir, schema).await;
}
