//! Server-to-client relays on `/mcp` (2025-11-25 sessions): an upstream's
//! `notifications/resources/updated` and `notifications/message` reach the client
//! session that subscribed to the resource or set the logging level, and no other.
//!
//! * An upstream sends them on the standalone GET stream of its session. The session
//!   is kept per slot ([`crate::upstream_sessions`]) and shared by the slot's client
//!   sessions, and an upstream sends each message on one stream only, so one stream per
//!   upstream session is opened ([`Hub`], when a client session first needs it) and
//!   its messages fanned out in process; it is closed when its last client session
//!   ends.
//! * Each client session keeps what it asked for ([`Wanted`]): the original URIs it
//!   subscribed to per server, and the servers it set a level on. Only those messages
//!   are relayed to it, a resource's URI given the federated form the client knows.
//!   Log messages of a shared slot's session are never relayed: they may concern
//!   another user of the slot.
//! * A stream that ends (the upstream closed it, lost the session, a credential
//!   change) is not reopened; the client session's next subscribe or setLevel opens a
//!   new one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

use futures_util::StreamExt as _;
use latchkey_guard::Principal;
use latchkey_vault::store::ServerRow;
use rmcp::RoleServer;
use rmcp::model::ServerNotification;
use rmcp::service::Peer;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use crate::upstream_sessions::SessionKey;

/// The most bytes one event of an upstream stream may have; past it the stream is
/// dropped (the stream has no overall cap, it lives as long as the session).
const MAX_EVENT: usize = 1024 * 1024;
/// Messages kept for a slow client session before it skips some.
const BACKLOG: usize = 64;

/// One upstream session's standalone stream, fanned out.
#[derive(Debug)]
pub(super) struct Hub {
    tx: broadcast::Sender<Arc<Value>>,
    /// Dropped with the last client session using the hub: stops its reader.
    _stop: watch::Sender<()>,
}

/// The open hubs by upstream session; an entry whose hub is gone is pruned on the next
/// insertion.
#[derive(Debug, Default)]
pub(super) struct Hubs(Mutex<HashMap<SessionKey, Weak<Hub>>>);

impl Hubs {
    fn live(&self, key: &SessionKey) -> Option<Arc<Hub>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .and_then(Weak::upgrade)
    }

    /// The hub of `p`'s upstream session of `server`, its stream opened if none is.
    pub(super) async fn hub(
        &self,
        s: &crate::state::AppState,
        p: &Principal,
        server: &ServerRow,
    ) -> Option<Arc<Hub>> {
        let key = crate::tools::session_key(p, server);
        if let Some(hub) = self.live(&key) {
            return Some(hub);
        }
        let stream = match crate::tools::listen_stream(s, p, server).await {
            Ok(Some(stream)) => stream,
            Ok(None) => return None,
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
        let (stop_tx, mut stop) = watch::channel(());
        let hub = Arc::new(Hub {
            tx: tx.clone(),
            _stop: stop_tx,
        });
        {
            let mut hubs = self.0.lock().unwrap_or_else(|p| p.into_inner());
            // Opened meanwhile by another client session: that one serves (ours is
            // dropped, which closes it).
            if let Some(other) = hubs.get(&key).and_then(Weak::upgrade) {
                return Some(other);
            }
            hubs.retain(|_, w| w.strong_count() > 0);
            hubs.insert(key, Arc::downgrade(&hub));
        }
        let server_id = server.id.clone();
        tokio::spawn(async move {
            let mut body = std::pin::pin!(stream.into_body());
            let mut events = Events::default();
            loop {
                tokio::select! {
                    // Resolves only when the hub (its last user) is gone.
                    _ = stop.changed() => break,
                    chunk = body.next() => match chunk {
                        Some(Ok(bytes)) => match events.push(&bytes) {
                            Some(messages) => {
                                for m in messages {
                                    // No receiver now is not an error.
                                    let _ = tx.send(Arc::new(m));
                                }
                            }
                            None => {
                                tracing::info!(
                                    event = "mcp.federated.stream_event_too_large",
                                    server_id = %server_id
                                );
                                break;
                            }
                        },
                        _ => break,
                    },
                }
            }
            tracing::debug!(event = "mcp.federated.stream_closed", server_id = %server_id);
        });
        Some(hub)
    }
}

/// SSE framing, fed chunk by chunk: the JSON messages of complete events.
#[derive(Debug, Default)]
struct Events {
    buf: Vec<u8>,
}

impl Events {
    /// The messages completed by `chunk`; `None` when an event grows past [`MAX_EVENT`].
    fn push(&mut self, chunk: &[u8]) -> Option<Vec<Value>> {
        // CR LF and LF end lines alike here (a lone CR is not used by MCP servers).
        self.buf.extend(chunk.iter().filter(|b| **b != b'\r'));
        let mut out = Vec::new();
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if data.is_empty() {
                continue;
            }
            if let Ok(v) = serde_json::from_str::<Value>(&data.join("\n")) {
                out.push(v);
            }
        }
        (self.buf.len() <= MAX_EVENT).then_some(out)
    }
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

impl Relays {
    /// Records what the session asked of `server` (`change` edits it), starting the
    /// relay from the hub if there is none yet. `hub` is asked for only then.
    pub(super) async fn want<F, H>(
        relays: &Arc<Mutex<Relays>>,
        server_id: &str,
        naming: Naming,
        peer: Peer<RoleServer>,
        alive: watch::Receiver<()>,
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
        tokio::spawn(relay(
            hub, rx, wanted, naming, peer, alive, relays, server_id,
        ));
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

/// Relays the hub's messages that the session wants until the session or the stream
/// ends.
#[allow(clippy::too_many_arguments)]
async fn relay(
    hub: Arc<Hub>,
    mut rx: broadcast::Receiver<Arc<Value>>,
    wanted: Arc<Mutex<Wanted>>,
    naming: Naming,
    peer: Peer<RoleServer>,
    mut alive: watch::Receiver<()>,
    relays: Weak<Mutex<Relays>>,
    server_id: String,
) {
    loop {
        let message = tokio::select! {
            _ = alive.changed() => break,
            r = rx.recv() => match r {
                Ok(m) => m,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::info!(event = "mcp.federated.relay_lagged", server_id = %server_id, skipped = n);
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        };
        let Some(notification) = relayed(&message, &wanted, &naming) else {
            continue;
        };
        if peer.send_notification(notification).await.is_err() {
            break;
        }
    }
    // The stream ended: the next subscribe or setLevel starts a new relay.
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
        _ => return None,
    }
    serde_json::from_value(json!({"method": method, "params": params})).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_framed_across_chunks() {
        let mut e = Events::default();
        assert!(
            e.push(b"event: message\r\ndata: {\"a\"")
                .unwrap()
                .is_empty()
        );
        let got = e
            .push(b": 1}\r\n\r\n: comment\n\ndata: {\"b\":2}\n\n")
            .unwrap();
        assert_eq!(got, vec![json!({"a": 1}), json!({"b": 2})]);
        assert!(e.push(&vec![b'x'; MAX_EVENT + 1]).is_none());
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
}
