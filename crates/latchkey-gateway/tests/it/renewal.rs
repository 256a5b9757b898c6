//! Relays on the federated endpoint `/mcp` outlive a lost upstream session: when an
//! upstream restarts (forgets its sessions and ends its streams), the hub opens a new
//! upstream session, sends the subscriptions its client sessions still want again and
//! reads the new session's stream, so resource updates keep reaching a client that
//! makes no request meanwhile.

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

/// Registers `upstream` with Latchkey as `name` and deposits a refresh token of its
/// authorization server into the caller's slot; the server's id.
async fn connected_server(base: &str, name: &str, upstream: &ScriptedServer) -> String {
    let (status, v) = post(
        &format!("{base}/v1/servers"),
        json!({"name": name, "url": upstream.mcp_url()}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let (status, v) = post(
        &format!("{base}/v1/credentials"),
        json!({
            "server_id": id, "refresh_token": upstream.mint_refresh_token(),
            "token_endpoint": format!("{}/token", upstream.base), "client_id": "deposit-client",
        }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    id
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

/// The requests `upstream` received with JSON-RPC `method`, as recorded.
fn upstream_requests(upstream: &ScriptedServer, method: &str) -> Vec<HashMap<String, String>> {
    upstream
        .requests("/mcp")
        .into_iter()
        .map(|r| r.body)
        .filter(|b| b.get("method").is_some_and(|m| m == method))
        .collect()
}

/// The next URI relayed to an [`Updates`] client, within `bound`.
async fn updated(rx: &mut mpsc::UnboundedReceiver<String>, bound: Duration) -> String {
    tokio::time::timeout(bound, rx.recv())
        .await
        .expect("a relayed notifications/resources/updated in time")
        .unwrap()
}

/// Waits (up to 10 s) until `f` holds.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not within 10 s: {what}");
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
    let beta = ScriptedServer::start(AsConfig::default()).await.unwrap();
    beta.offer_primitives(Some("beta"));
    let cfg = super::loopback_config();
    let (base, dir, _store, schema) = super::start_on(backend, &cfg, keys()).await;
    connected_server(&base, "Beta", &beta).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("{base}/mcp"))
            .auth_header(CALLER_TOKEN),
    );
    let c = Updates(tx).serve(transport).await.unwrap();
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
    let initializes = upstream_requests(&beta, "initialize").len();
    assert_eq!(upstream_requests(&beta, "resources/subscribe").len(), 1);
    let old_sessions = beta.mcp_sessions();
    assert_eq!(old_sessions.len(), 1, "{old_sessions:?}");

    // The restart: every session forgotten, the stream ended.
    let restarted = tokio::time::Instant::now();
    beta.expire_mcp_sessions();
    assert_eq!(beta.close_streams(), 1);

    // The hub renews on its own: a new session, the subscription again, a new stream.
    eventually("a new session's stream and subscription", || {
        beta.open_streams() == 1 && upstream_requests(&beta, "resources/subscribe").len() == 2
    })
    .await;
    assert_eq!(
        upstream_requests(&beta, "initialize").len(),
        initializes + 1,
        "one new upstream session"
    );
    let subscribes = upstream_requests(&beta, "resources/subscribe");
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
    // Soon: the first attempt comes 1 s after the stream ended and renews at once (a few
    // local requests); the bound leaves room for a loaded machine.
    let took = restarted.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(rx.try_recv().is_err());

    c.cancel().await.unwrap();
    eventually("the stream closed with the session", || {
        beta.open_streams() == 0
    })
    .await;
    super::cleanup(dir, schema).await;
}
