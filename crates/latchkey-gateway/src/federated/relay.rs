//! Server-to-client relays on `/mcp`: an upstream's `notifications/resources/updated`,
//! `notifications/message` and `notifications/{tools,prompts,resources}/list_changed`
//! reach the client sessions that asked for them, and no other.
//!
//! * An upstream sends them on the standalone GET stream of its session. The session
//!   is kept per slot ([`crate::upstream_sessions`]) and shared by the slot's client
//!   sessions, and an upstream sends each message on one stream only, so one stream per
//!   upstream session is opened ([`Hub`], when a client first needs it) and its
//!   messages fanned out in process; it is closed when its last client ends.
//! * Each client keeps what it asked for ([`Wanted`]): the original URIs it subscribed
//!   to per server, and the servers it set a level on. Only those messages are relayed
//!   to it, a resource's URI given the federated form the client knows. Log messages
//!   of a shared slot's session are never relayed: they may concern another user of
//!   the slot.
//! * List changes go to every client relaying the server. A 2025-11-25 session gets a
//!   relay of every usable server it lists from whose `initialize` declared
//!   `listChanged` (besides the servers it subscribed to or set a level on); a
//!   2026-07-28 `subscriptions/listen` with a list-change filter, of every usable
//!   server that declared it ([`Out`]: the listen stream's sink passes only what the
//!   accepted filter names). Before the client hears of it, the caller's cached
//!   federated table of that list is dropped ([`Forget`]), so the next call or
//!   listing uses the upstream's new list.
//! * A stream that ends (the upstream closed it, the network failed) is reopened by
//!   its hub while a client wants it, after 1 s, then 2 s, 4 s … up to 30 s between
//!   attempts, on the upstream session kept for the slot then. It is given up for good
//!   when the upstream answers 405 (it offers no stream; remembered for 10 minutes),
//!   the slot's credential is not usable, or an event is too large; its relays end,
//!   and the client's next request that needs the server's messages starts anew.
//!   Upstream subscriptions are not renewed on a new upstream session.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt as _;
use latchkey_guard::Principal;
use latchkey_vault::store::ServerRow;
use rmcp::RoleServer;
use rmcp::model::ServerNotification;
use rmcp::service::{Peer, SubscriptionSendError, SubscriptionSink};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use crate::tools::Listen;
use crate::upstream_sessions::SessionKey;

/// The most bytes one event of an upstream stream may have; past it the stream is
/// dropped (the stream has no overall cap, it lives as long as the session).
const MAX_EVENT: usize = 1024 * 1024;
/// Messages kept for a slow client session before it skips some.
const BACKLOG: usize = 64;
/// The first wait before reopening a stream that ended; doubled on each failed
/// attempt up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two attempts to reopen a stream.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long an upstream session that offers no stream (405) is not asked again.
const NEVER_TTL: Duration = Duration::from_secs(600);
/// The upstream capabilities that make a stream worth opening for list changes alone.
pub(super) const LIST_CHANGES: &[&str] = &[
    "/tools/listChanged",
    "/prompts/listChanged",
    "/resources/listChanged",
];

/// One upstream session's standalone stream, fanned out; reopened when it ends
/// ([`read`]) until it is not wanted any more or reopening cannot succeed.
#[derive(Debug)]
pub(super) struct Hub {
    tx: broadcast::Sender<Arc<Value>>,
    /// `true` once the reader has given up for good: the hub's relays end with it.
    ended: watch::Receiver<bool>,
    /// Dropped with the last client session using the hub: stops its reader.
    _stop: watch::Sender<()>,
}

impl Hub {
    fn has_ended(&self) -> bool {
        *self.ended.borrow()
    }
}

/// The open hubs by upstream session; an entry whose hub is gone is pruned on the next
/// insertion. Upstream sessions that answered 405 are remembered for a while, so
/// listing does not ask again each time.
#[derive(Debug, Default)]
pub(super) struct Hubs {
    open: Mutex<HashMap<SessionKey, Weak<Hub>>>,
    never: Mutex<HashMap<SessionKey, tokio::time::Instant>>,
}

impl Hubs {
    fn live(&self, key: &SessionKey) -> Option<Arc<Hub>> {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .and_then(Weak::upgrade)
            .filter(|h| !h.has_ended())
    }

    fn is_never(&self, key: &SessionKey) -> bool {
        let mut never = self.never.lock().unwrap_or_else(|p| p.into_inner());
        let now = tokio::time::Instant::now();
        never.retain(|_, at| now.duration_since(*at) < NEVER_TTL);
        never.contains_key(key)
    }

    /// The hub of `p`'s upstream session of `server`, its stream opened if none is.
    /// `declared`: open a new stream only if the upstream declared one of these
    /// capabilities ([`LIST_CHANGES`] for a session that only lists).
    pub(super) async fn hub(
        &self,
        s: &crate::state::AppState,
        p: &Principal,
        server: &ServerRow,
        declared: &[&str],
    ) -> Option<Arc<Hub>> {
        let key = crate::tools::session_key(p, server);
        if let Some(hub) = self.live(&key) {
            return Some(hub);
        }
        if self.is_never(&key) {
            return None;
        }
        let stream = match crate::tools::listen_stream(s, p, server, declared).await {
            Ok(Listen::Open(stream)) => stream,
            Ok(Listen::Never) => {
                self.never
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, tokio::time::Instant::now());
                return None;
            }
            Ok(Listen::NotNow | Listen::Undeclared) => return None,
            Err(e) => {
                tracing::info!(
                    event = "mcp.federated.stream_failed",
                    server_id = %server.id,
                    code = e.status_and_code().1
                );
                return None;
            }
        };
        let (tx, _) = broadcast::channel(BACKLOG);
        let (stop_tx, stop) = watch::channel(());
        let (ended_tx, ended) = watch::channel(false);
        let hub = Arc::new(Hub {
            tx: tx.clone(),
            ended,
            _stop: stop_tx,
        });
        {
            let mut hubs = self.open.lock().unwrap_or_else(|p| p.into_inner());
            // Opened meanwhile by another client session: that one serves (ours is
            // dropped, which closes it).
            if let Some(other) = hubs
                .get(&key)
                .and_then(Weak::upgrade)
                .filter(|h| !h.has_ended())
            {
                return Some(other);
            }
            hubs.retain(|_, w| w.strong_count() > 0);
            hubs.insert(key, Arc::downgrade(&hub));
        }
        tokio::spawn(read(
            s.clone(),
            p.clone(),
            server.clone(),
            stream,
            tx,
            stop,
            ended_tx,
        ));
        Some(hub)
    }
}

/// How one stream ended.
enum Ended {
    /// The hub is gone (no client session wants the stream).
    Unwanted,
    /// An event grew past [`MAX_EVENT`]: the upstream is not sending MCP messages.
    TooLarge,
    /// The upstream closed it, or the connection failed.
    Closed,
}

/// Fans one stream's messages out until it ends.
async fn pump(
    stream: Box<latchkey_egress::EgressStream>,
    tx: &broadcast::Sender<Arc<Value>>,
    stop: &mut watch::Receiver<()>,
) -> Ended {
    let mut body = std::pin::pin!(stream.into_body());
    let mut events = framer();
    loop {
        tokio::select! {
            // Resolves only when the hub (its last user) is gone.
            _ = stop.changed() => return Ended::Unwanted,
            chunk = body.next() => match chunk {
                Some(Ok(bytes)) => match events.push(&bytes) {
                    Some(messages) => {
                        for m in messages {
                            // No receiver now is not an error.
                            let _ = tx.send(Arc::new(m));
                        }
                    }
                    None => return Ended::TooLarge,
                },
                _ => return Ended::Closed,
            },
        }
    }
}

/// The hub's reader: fans the stream out, and when the upstream ends it, reopens it
/// (for the same slot, on the upstream session kept then) after [`BACKOFF_FIRST`],
/// doubling the wait on each failure up to [`BACKOFF_MAX`]. It stops when the hub is
/// dropped (no client session wants the stream), and gives up for good (`ended`) when
/// the upstream offers no stream (405), the slot's credential is not usable, or an
/// event is too large.
async fn read(
    s: crate::state::AppState,
    p: Principal,
    server: ServerRow,
    mut stream: Box<latchkey_egress::EgressStream>,
    tx: broadcast::Sender<Arc<Value>>,
    mut stop: watch::Receiver<()>,
    ended: watch::Sender<bool>,
) {
    let server_id = server.id.clone();
    let mut delay = BACKOFF_FIRST;
    'streams: loop {
        let opened = tokio::time::Instant::now();
        match pump(stream, &tx, &mut stop).await {
            Ended::Unwanted => break,
            Ended::TooLarge => {
                tracing::info!(event = "mcp.federated.stream_event_too_large", server_id = %server_id);
                let _ = ended.send(true);
                break;
            }
            Ended::Closed => {
                tracing::info!(event = "mcp.federated.stream_ended", server_id = %server_id);
            }
        }
        // A stream that lived a while starts the backoff afresh.
        if opened.elapsed() >= BACKOFF_MAX {
            delay = BACKOFF_FIRST;
        }
        loop {
            tokio::select! {
                _ = stop.changed() => break 'streams,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(BACKOFF_MAX);
            let attempt = tokio::select! {
                _ = stop.changed() => break 'streams,
                r = crate::tools::listen_stream(&s, &p, &server, &[]) => r,
            };
            match attempt {
                Ok(Listen::Open(next)) => {
                    tracing::info!(event = "mcp.federated.stream_reopened", server_id = %server_id);
                    stream = next;
                    continue 'streams;
                }
                Ok(Listen::NotNow | Listen::Undeclared) => {}
                Err(e) if e.status_and_code().0.is_server_error() => {}
                Ok(Listen::Never) | Err(_) => {
                    tracing::info!(event = "mcp.federated.stream_given_up", server_id = %server_id);
                    let _ = ended.send(true);
                    break 'streams;
                }
            }
        }
    }
    tracing::debug!(event = "mcp.federated.stream_closed", server_id = %server_id);
}

/// The framer of an upstream stream: the MCP crate's (shared with `send_relaying`),
/// each event at most [`MAX_EVENT`] bytes.
fn framer() -> latchkey_mcp::SseFramer {
    latchkey_mcp::SseFramer::new(MAX_EVENT)
}

/// What one client session asked one server for.
#[derive(Debug, Default)]
pub(super) struct Wanted {
    /// Original URIs subscribed to.
    pub(super) uris: HashSet<String>,
    /// Whether the session set a logging level (and may get this server's log messages).
    pub(super) logging: bool,
}

/// The relays of one client session: per server id, what it wants and its relay task
/// (which holds the hub).
#[derive(Debug, Default)]
pub(super) struct Relays {
    by_server: HashMap<String, Arc<Mutex<Wanted>>>,
}

/// How a relay names a server's URIs to its client.
pub(super) struct Naming {
    pub(super) slug: String,
    pub(super) unprefixed: bool,
    /// Log messages may be relayed (not a shared slot's session).
    pub(super) own_session: bool,
}

/// A federated listing an upstream's `…/list_changed` made stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Changed {
    Tools,
    Prompts,
    Resources,
}

impl Changed {
    fn method(self) -> &'static str {
        match self {
            Self::Tools => "notifications/tools/list_changed",
            Self::Prompts => "notifications/prompts/list_changed",
            Self::Resources => "notifications/resources/list_changed",
        }
    }

    /// The notification that says this list changed.
    fn notification(self) -> Option<ServerNotification> {
        serde_json::from_value(json!({"method": self.method()})).ok()
    }

    fn of(method: &str) -> Option<Self> {
        match method {
            "notifications/tools/list_changed" => Some(Self::Tools),
            "notifications/prompts/list_changed" => Some(Self::Prompts),
            "notifications/resources/list_changed" => Some(Self::Resources),
            _ => None,
        }
    }
}

/// Forgets the caller's cached table of a listing (called on the upstream's own
/// `…/list_changed`, before the client hears of it and lists again).
pub(super) type Forget = Arc<dyn Fn(Changed) + Send + Sync>;

/// Where a relay sends: a 2025-11-25 session's peer (its GET stream), or a 2026-07-28
/// `subscriptions/listen` stream, whose sink lets through only what the accepted
/// filter names.
#[derive(Debug, Clone)]
pub(super) enum Out {
    Session(Peer<RoleServer>),
    Listen(SubscriptionSink),
}

impl Out {
    /// Sends `n`; `false` once the client is gone.
    async fn send(&self, n: ServerNotification) -> bool {
        match self {
            Out::Session(peer) => peer.send_notification(n).await.is_ok(),
            Out::Listen(sink) => match sink.send(n).await {
                Ok(())
                | Err(
                    SubscriptionSendError::NotificationNotAccepted(_)
                    | SubscriptionSendError::UnsupportedNotification(_),
                ) => true,
                Err(_) => false,
            },
        }
    }

    /// Sends `notifications/tools/list_changed`, `…/prompts/…` and `…/resources/…`
    /// (a server became usable or unusable for the client: any of its lists may have
    /// appeared or gone); `false` once the client is gone.
    pub(super) async fn lists_changed(&self) -> bool {
        for changed in [Changed::Tools, Changed::Prompts, Changed::Resources] {
            let Some(n) = changed.notification() else {
                continue;
            };
            if !self.send(n).await {
                return false;
            }
        }
        true
    }
}

/// What starts a relay of one server to one client.
pub(super) struct Start {
    pub(super) naming: Naming,
    pub(super) out: Out,
    pub(super) alive: watch::Receiver<()>,
    pub(super) forget: Forget,
}

impl Relays {
    /// Whether the session relays `server_id`'s messages now.
    pub(super) fn has(&self, server_id: &str) -> bool {
        self.by_server.contains_key(server_id)
    }

    /// Records what the session asked of `server` (`change` edits it), starting the
    /// relay from the hub if there is none yet. `hub` is asked for only then.
    pub(super) async fn want<F, H>(
        relays: &Arc<Mutex<Relays>>,
        server_id: &str,
        start: impl FnOnce() -> Start,
        hub: H,
        change: impl FnOnce(&mut Wanted),
    ) where
        F: std::future::Future<Output = Option<Arc<Hub>>>,
        H: FnOnce() -> F,
    {
        let existing = relays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_server
            .get(server_id)
            .cloned();
        if let Some(wanted) = existing {
            change(&mut wanted.lock().unwrap_or_else(|p| p.into_inner()));
            return;
        }
        let Some(hub) = hub().await else {
            return;
        };
        let mut wanted = Wanted::default();
        change(&mut wanted);
        let wanted = Arc::new(Mutex::new(wanted));
        {
            let mut r = relays.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(other) = r.by_server.get(server_id) {
                // Started meanwhile by a concurrent request of this session.
                change_into(other, &wanted);
                return;
            }
            r.by_server.insert(server_id.to_owned(), wanted.clone());
        }
        let rx = hub.tx.subscribe();
        let relays = Arc::downgrade(relays);
        let server_id = server_id.to_owned();
        tokio::spawn(relay(hub, rx, wanted, start(), relays, server_id));
    }

    /// Forgets a subscription of the session to `server`'s `uri`.
    pub(super) fn unwant(&self, server_id: &str, uri: &str) {
        if let Some(w) = self.by_server.get(server_id) {
            w.lock().unwrap_or_else(|p| p.into_inner()).uris.remove(uri);
        }
    }
}

/// Copies what `from` wants into `into`.
fn change_into(into: &Arc<Mutex<Wanted>>, from: &Arc<Mutex<Wanted>>) {
    let from = from.lock().unwrap_or_else(|p| p.into_inner());
    let mut into = into.lock().unwrap_or_else(|p| p.into_inner());
    into.uris.extend(from.uris.iter().cloned());
    into.logging |= from.logging;
}

/// Relays the hub's messages that the session wants until the session ends or the
/// hub gives up.
async fn relay(
    hub: Arc<Hub>,
    mut rx: broadcast::Receiver<Arc<Value>>,
    wanted: Arc<Mutex<Wanted>>,
    start: Start,
    relays: Weak<Mutex<Relays>>,
    server_id: String,
) {
    let Start {
        naming,
        out,
        mut alive,
        forget,
    } = start;
    let mut ended = hub.ended.clone();
    loop {
        let message = tokio::select! {
            _ = alive.changed() => break,
            Ok(_) = ended.wait_for(|e| *e) => break,
            r = rx.recv() => match r {
                Ok(m) => m,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::info!(event = "mcp.federated.relay_lagged", server_id = %server_id, skipped = n);
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        };
        if let Some(changed) = message
            .get("method")
            .and_then(Value::as_str)
            .and_then(Changed::of)
        {
            forget(changed);
        }
        let Some(notification) = relayed(&message, &wanted, &naming) else {
            continue;
        };
        if !out.send(notification).await {
            break;
        }
    }
    // The session ended or the hub gave up: the next request that needs the server's
    // messages starts a new relay.
    if let Some(r) = relays.upgrade() {
        r.lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_server
            .remove(&server_id);
    }
    drop(hub);
}

/// The notification to send the client for an upstream message, if it wants it.
fn relayed(message: &Value, wanted: &Mutex<Wanted>, naming: &Naming) -> Option<ServerNotification> {
    let method = message.get("method").and_then(Value::as_str)?;
    let mut params = message.get("params").cloned().unwrap_or_else(|| json!({}));
    match method {
        "notifications/resources/updated" => {
            let uri = params.get("uri").and_then(Value::as_str)?.to_owned();
            let wanted = wanted.lock().unwrap_or_else(|p| p.into_inner());
            if !wanted.uris.contains(&uri) {
                return None;
            }
            params["uri"] = json!(super::names::item_uri(
                &naming.slug,
                &uri,
                naming.unprefixed
            ));
        }
        "notifications/message" => {
            let wanted = wanted.lock().unwrap_or_else(|p| p.into_inner());
            if !wanted.logging || !naming.own_session {
                return None;
            }
        }
        // Every session relaying this server has used it (listed, subscribed, set a
        // level) and sees the same slot's lists: the federated list changed for it.
        m => {
            // No params (the upstream's `_meta` is its own).
            return Changed::of(m)?.notification();
        }
    }
    serde_json::from_value(json!({"method": method, "params": params})).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_framed_across_chunks_up_to_the_cap() {
        let mut e = framer();
        assert!(
            e.push(b"event: message\r\ndata: {\"a\"")
                .unwrap()
                .is_empty()
        );
        let got = e
            .push(b": 1}\r\n\r\n: comment\n\ndata: {\"b\":2}\n\n")
            .unwrap();
        assert_eq!(got, vec![json!({"a": 1}), json!({"b": 2})]);
        assert_eq!(e.push(&vec![b'x'; MAX_EVENT]).unwrap(), Vec::<Value>::new());
        assert!(e.push(b"x").is_none());
    }

    #[test]
    fn only_wanted_messages_are_relayed_with_the_federated_uri() {
        let wanted = Mutex::new(Wanted::default());
        wanted.lock().unwrap().uris.insert("file:///a".into());
        let naming = Naming {
            slug: "beta".into(),
            unprefixed: false,
            own_session: true,
        };
        let update = |uri: &str| json!({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": uri}});
        let n = relayed(&update("file:///a"), &wanted, &naming).unwrap();
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(v["params"]["uri"], "latchkey://beta/file:///a", "{v}");
        assert!(relayed(&update("file:///b"), &wanted, &naming).is_none());
        let log = json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "x"}});
        assert!(relayed(&log, &wanted, &naming).is_none());
        wanted.lock().unwrap().logging = true;
        assert!(relayed(&log, &wanted, &naming).is_some());
        let shared = Naming {
            own_session: false,
            ..naming
        };
        assert!(relayed(&log, &wanted, &shared).is_none());
    }

    #[test]
    fn list_changes_are_relayed_without_the_upstreams_params() {
        let wanted = Mutex::new(Wanted::default());
        let naming = Naming {
            slug: "beta".into(),
            unprefixed: false,
            own_session: false,
        };
        for method in [
            "notifications/tools/list_changed",
            "notifications/prompts/list_changed",
            "notifications/resources/list_changed",
        ] {
            let m = json!({"jsonrpc": "2.0", "method": method, "params": {"_meta": {"x": 1}}});
            let v = serde_json::to_value(relayed(&m, &wanted, &naming).unwrap()).unwrap();
            assert_eq!(v["method"], method, "{v}");
            assert!(
                v.get("params").is_none_or(|p| p.get("_meta").is_none()),
                "{v}"
            );
        }
        let other = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {}});
        assert!(relayed(&other, &wanted, &naming).is_none());
    }
}
