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
//!   to per server, and the level it set on each server. Only those messages are
//!   relayed to it, a resource's URI given the federated form the client knows. Log
//!   messages of a shared slot's session are never relayed: they may concern another
//!   user of the slot.
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
//! * An upstream that lost the session (it restarted or expired it: the GET gets 404)
//!   does not bring the relays down. The session is forgotten for the slot, a new one
//!   opened at once as a request would open it (`initialize`), its stream opened, and
//!   in it `resources/subscribe` sent again for every original URI that a client
//!   session relaying through the hub still wants ([`Wants`], stateless
//!   `subscriptions/listen` streams included); likewise whenever the stream reopens in
//!   another session than before (a request opened a new one meanwhile, a refreshed
//!   credential). The stream is opened before the subscriptions are sent, so an update
//!   sent between the two is not lost. A subscription the upstream refuses again, or
//!   that fails, is logged and the others still go; a credential found unusable ends
//!   the hub as above. Then `logging/setLevel` is sent once if a client session
//!   relaying through the hub set a level, else the new session would log at the
//!   upstream's default: the most verbose level any of them set, since the upstream
//!   logs for the whole session and each client's relay only filters what arrives (a
//!   less verbose level would starve the client that asked for more). It goes the way
//!   a client's `logging/setLevel` goes (not sent when the upstream's `initialize` did
//!   not declare `logging`); a refusal or failure is logged and changes nothing else.
//! * The slot's kept session may also be replaced while its stream stays open: a
//!   refreshed credential opens a new one, as does a request that got 404 for it. A
//!   client's new subscription then goes to the new session, whose updates come on the
//!   new session's stream only. So the hub watches which session is kept for its slot
//!   ([`crate::upstream_sessions::UpstreamSessions::watch`], woken only when another
//!   session is kept: no polling) and, when it is another than its stream's, drops the
//!   old stream and opens the new session's, sending the subscriptions again as above.
//!   At once if the old stream lived at least [`BACKOFF_FIRST`]; otherwise (sessions
//!   replaced in quick succession, say an upstream that loses each one at once) after
//!   the backoff of a stream that ended.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt as _;
use latchkey_guard::Principal;
use latchkey_vault::store::ServerRow;
use rmcp::RoleServer;
#[allow(deprecated)] // rmcp's logging types (SEP-2577), still part of 2025-11-25.
use rmcp::model::{LoggingLevel, ServerNotification};
use rmcp::service::{Peer, SubscriptionSendError, SubscriptionSink};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use crate::tools::{Answer, Listen};
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
    /// What its client sessions want, for the subscriptions and level a new upstream
    /// session needs.
    wants: Arc<Wants>,
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

/// What each client session relaying from one hub wants of its server, to send its
/// subscriptions and level again in a new upstream session. An entry lives as long as
/// its relay (the relay task and the session's [`Relays`] hold the `Wanted`), so a
/// session that ended or unsubscribed is not renewed.
#[derive(Debug, Default)]
struct Wants(Mutex<Vec<Weak<Mutex<Wanted>>>>);

impl Wants {
    fn add(&self, wanted: &Arc<Mutex<Wanted>>) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(wanted));
    }

    /// What each live client session wants now (ended ones pruned), read by `each`.
    fn each<T>(&self, each: impl Fn(&Wanted) -> T) -> Vec<T> {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.iter()
            .filter_map(Weak::upgrade)
            .map(|w| each(&w.lock().unwrap_or_else(|p| p.into_inner())))
            .collect()
    }

    /// The original URIs any live client session is subscribed to now, each once.
    fn uris(&self) -> BTreeSet<String> {
        self.each(|w| w.uris.iter().cloned().collect::<Vec<_>>())
            .into_iter()
            .flatten()
            .collect()
    }

    /// The most verbose level a live client session set, if any set one.
    #[allow(deprecated)] // rmcp's logging types (SEP-2577), still part of 2025-11-25.
    fn level(&self) -> Option<LoggingLevel> {
        self.each(|w| w.level)
            .into_iter()
            .flatten()
            .min_by_key(|l| severity(*l))
    }
}

/// A level's place from the most verbose (`debug`, 0) to the least (`emergency`, 7),
/// as RFC 5424 orders them (the upstream sends messages of this level and above).
#[allow(deprecated)] // rmcp's logging types (SEP-2577), still part of 2025-11-25.
fn severity(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
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
        let (stream, session) = match crate::tools::listen_stream(s, p, server, declared).await {
            Ok(Listen::Open(stream, session)) => (stream, session),
            Ok(Listen::Never) => {
                self.never
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, tokio::time::Instant::now());
                return None;
            }
            // Lost: the request that led here used the session just before; the next
            // one opens a new session and asks again.
            Ok(Listen::NotNow | Listen::Undeclared | Listen::Lost) => return None,
            Err(e) => {
                tracing::info!(
                    event = "mcp.federated.stream_failed",
                    server_id = %server.id,
                    code = e.status_and_code().1
                );
                return None;
            }
        };
        // Watched once the stream is open: a session kept in between shows as another
        // than the stream's at once (`pump` looks before it reads).
        let kept = s.upstream.watch(&key);
        let (tx, _) = broadcast::channel(BACKLOG);
        let (stop_tx, stop) = watch::channel(());
        let (ended_tx, ended) = watch::channel(false);
        let wants = Arc::new(Wants::default());
        let hub = Arc::new(Hub {
            tx: tx.clone(),
            wants: wants.clone(),
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
        let reader = Reader {
            s: s.clone(),
            p: p.clone(),
            server: server.clone(),
            tx,
            wants,
        };
        let now = Stream {
            body: stream,
            session,
        };
        tokio::spawn(read(reader, stop, ended_tx, kept, now));
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
    /// Another session is kept for the slot now: new subscriptions go there.
    Replaced,
}

/// An open upstream stream and the id of the session it belongs to.
struct Stream {
    body: Box<latchkey_egress::EgressStream>,
    session: String,
}

/// Whether the session `kept` names now is another than `session` (none kept: not
/// another, there is nothing else to read); marks what it names as seen.
fn moved(kept: &mut watch::Receiver<Option<String>>, session: &str) -> bool {
    kept.borrow_and_update()
        .as_deref()
        .is_some_and(|id| id != session)
}

/// Fans one stream's messages out until it ends, or until `kept` (the session kept for
/// the slot) is another than the stream's.
async fn pump(
    stream: Stream,
    tx: &broadcast::Sender<Arc<Value>>,
    stop: &mut watch::Receiver<()>,
    kept: &mut watch::Receiver<Option<String>>,
) -> Ended {
    if moved(kept, &stream.session) {
        return Ended::Replaced;
    }
    // The sender lives in the sessions while a receiver does; should it be gone, the
    // branch is left out rather than woken without end.
    let mut watching = true;
    let mut body = std::pin::pin!(stream.body.into_body());
    let mut events = framer();
    loop {
        tokio::select! {
            // Resolves only when the hub (its last user) is gone.
            _ = stop.changed() => return Ended::Unwanted,
            changed = kept.changed(), if watching => match changed {
                Ok(()) if moved(kept, &stream.session) => return Ended::Replaced,
                Ok(()) => {}
                Err(_) => watching = false,
            },
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

/// What a hub's reader works with.
struct Reader {
    s: crate::state::AppState,
    p: Principal,
    server: ServerRow,
    tx: broadcast::Sender<Arc<Value>>,
    wants: Arc<Wants>,
}

/// The hub's reader: fans the stream out, and when the upstream ends it, reopens it
/// ([`reopen`]: for the same slot, in the upstream session kept then or a new one)
/// after [`BACKOFF_FIRST`], doubling the wait on each failure up to [`BACKOFF_MAX`].
/// When another session is kept for the slot (`kept`), the stream is dropped and the
/// kept session's opened the same way, at once if the old stream lived at least
/// [`BACKOFF_FIRST`] (else after the backoff, so sessions replaced one after the other
/// do not make it loop). It stops when the hub is dropped (no client session wants
/// the stream), and gives up for good (`ended`) when the upstream offers no stream
/// (405), the slot's credential is not usable, or an event is too large. `stop`
/// changes only when the hub is dropped.
async fn read(
    r: Reader,
    mut stop: watch::Receiver<()>,
    ended: watch::Sender<bool>,
    mut kept: watch::Receiver<Option<String>>,
    mut stream: Stream,
) {
    let server_id = r.server.id.clone();
    let mut delay = BACKOFF_FIRST;
    'streams: loop {
        let opened = tokio::time::Instant::now();
        let session = stream.session.clone();
        let replaced = match pump(stream, &r.tx, &mut stop, &mut kept).await {
            Ended::Unwanted => break,
            Ended::TooLarge => {
                tracing::info!(event = "mcp.federated.stream_event_too_large", server_id = %server_id);
                let _ = ended.send(true);
                break;
            }
            Ended::Closed => {
                tracing::info!(event = "mcp.federated.stream_ended", server_id = %server_id);
                false
            }
            Ended::Replaced => {
                tracing::info!(event = "mcp.federated.upstream_session_replaced", server_id = %server_id);
                true
            }
        };
        // A stream that lived a while starts the backoff afresh.
        if opened.elapsed() >= BACKOFF_MAX {
            delay = BACKOFF_FIRST;
        }
        let mut wait = if replaced && opened.elapsed() >= BACKOFF_FIRST {
            Duration::ZERO
        } else {
            delay
        };
        loop {
            if !wait.is_zero() {
                tokio::select! {
                    _ = stop.changed() => break 'streams,
                    () = tokio::time::sleep(wait) => {}
                }
                delay = (delay * 2).min(BACKOFF_MAX);
            }
            wait = delay;
            let attempt = tokio::select! {
                _ = stop.changed() => break 'streams,
                a = reopen(&r, &session) => a,
            };
            match attempt {
                Reopened::Open(body, session) => {
                    tracing::info!(event = "mcp.federated.stream_reopened", server_id = %server_id);
                    stream = Stream { body, session };
                    continue 'streams;
                }
                Reopened::Later => {}
                Reopened::GiveUp => {
                    tracing::info!(event = "mcp.federated.stream_given_up", server_id = %server_id);
                    let _ = ended.send(true);
                    break 'streams;
                }
            }
        }
    }
    tracing::debug!(event = "mcp.federated.stream_closed", server_id = %server_id);
}

/// What one attempt to reopen a hub's stream came to.
enum Reopened {
    /// The stream, and the id of its upstream session.
    Open(Box<latchkey_egress::EgressStream>, String),
    /// Not now: try again after the backoff.
    Later,
    /// Reopening cannot succeed (405, the credential is not usable).
    GiveUp,
}

/// One attempt to reopen the stream of a hub that read `session`'s: the stream of the
/// upstream session kept for the slot, which is opened first if none is kept
/// ([`crate::tools::open_session`], as a request would). When the upstream lost the
/// kept session (404, and it is forgotten) a new one is opened at once and its stream
/// asked for. In a session other than `session` the subscriptions the hub's client
/// sessions want are sent again ([`resubscribe`]), after the stream is open so that no
/// update sent in between is missed, and then the level they set ([`relevel`]).
async fn reopen(r: &Reader, session: &str) -> Reopened {
    // Lost on the first pass: a second one in a new session.
    for _ in 0..2 {
        if let Err(e) = crate::tools::open_session(&r.s, &r.p, &r.server).await {
            return later_or_give_up(&r.server, &e);
        }
        match crate::tools::listen_stream(&r.s, &r.p, &r.server, &[]).await {
            Ok(Listen::Open(stream, id)) => {
                if id != session {
                    tracing::info!(
                        event = "mcp.federated.upstream_session_renewed",
                        server_id = %r.server.id
                    );
                    if !resubscribe(r).await {
                        return Reopened::GiveUp;
                    }
                    relevel(r).await;
                }
                return Reopened::Open(stream, id);
            }
            Ok(Listen::Lost) => {}
            Ok(Listen::NotNow | Listen::Undeclared) => return Reopened::Later,
            Ok(Listen::Never) => return Reopened::GiveUp,
            Err(e) => return later_or_give_up(&r.server, &e),
        }
    }
    Reopened::Later
}

/// A failure that may pass (the upstream or the store failed: 5xx) is tried again
/// later; any other (the slot's credential is not usable) ends the hub.
fn later_or_give_up(server: &ServerRow, e: &crate::error::ApiError) -> Reopened {
    let (status, code) = e.status_and_code();
    tracing::info!(event = "mcp.federated.stream_failed", server_id = %server.id, code);
    if status.is_server_error() {
        Reopened::Later
    } else {
        Reopened::GiveUp
    }
}

/// Sends `resources/subscribe` again, in the upstream session kept for the slot, for
/// every original URI a client session relaying through the hub still wants. One the
/// upstream refuses, or that fails, is logged (never the URI: it may name the user's
/// data) and the others still go; `false` when the slot's credential turned out not
/// usable (the hub ends, as when reopening fails so).
async fn resubscribe(r: &Reader) -> bool {
    let uris = r.wants.uris();
    let (mut sent, mut failed) = (0usize, 0usize);
    for uri in &uris {
        let answer = crate::tools::call_answer(
            &r.s,
            &r.p,
            &r.server,
            "resources/subscribe",
            Some(json!({"uri": uri})),
            Some("resources"),
        )
        .await;
        match answer {
            Ok(Answer::Result(_)) => sent += 1,
            Ok(Answer::Error(e)) => {
                failed += 1;
                tracing::info!(
                    event = "mcp.federated.resubscribe_refused",
                    server_id = %r.server.id,
                    rpc_code = e.code
                );
            }
            Err(e) => {
                let (status, code) = e.status_and_code();
                tracing::info!(
                    event = "mcp.federated.resubscribe_failed",
                    server_id = %r.server.id,
                    code
                );
                if !status.is_server_error() {
                    return false;
                }
                failed += 1;
            }
        }
    }
    if !uris.is_empty() {
        tracing::info!(
            event = "mcp.federated.resubscribed",
            server_id = %r.server.id,
            sent,
            failed
        );
    }
    true
}

/// Sends `logging/setLevel` in the upstream session kept for the slot with the most
/// verbose level a client session relaying through the hub set ([`Wants::level`]), if
/// one did; as [`super::Federation::set_level`] sends a client's, so nothing is sent
/// when the upstream's `initialize` did not declare `logging`. A refusal or failure is
/// logged and nothing more: the relays and subscriptions go on, at the upstream's
/// default level.
async fn relevel(r: &Reader) {
    let Some(level) = r.wants.level() else {
        return;
    };
    let answer = crate::tools::call_answer(
        &r.s,
        &r.p,
        &r.server,
        "logging/setLevel",
        Some(json!({"level": level})),
        Some("logging"),
    )
    .await;
    match answer {
        Ok(Answer::Result(_)) => {
            tracing::info!(event = "mcp.federated.level_renewed", server_id = %r.server.id);
        }
        Ok(Answer::Error(e)) => tracing::info!(
            event = "mcp.federated.level_renew_refused",
            server_id = %r.server.id,
            rpc_code = e.code
        ),
        Err(e) => tracing::info!(
            event = "mcp.federated.level_renew_failed",
            server_id = %r.server.id,
            code = e.status_and_code().1
        ),
    }
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
    /// The logging level the session last set on this server, if it set one: it may
    /// get this server's log messages, and the level is set again in a new upstream
    /// session ([`relevel`]).
    #[allow(deprecated)] // rmcp's logging types (SEP-2577), still part of 2025-11-25.
    pub(super) level: Option<LoggingLevel>,
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
        hub.wants.add(&wanted);
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
    // `from` holds the request that came second: its level is the one set last.
    if from.level.is_some() {
        into.level = from.level;
    }
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
            if wanted.level.is_none() || !naming.own_session {
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
    #[allow(deprecated)] // rmcp's logging types (SEP-2577), still part of 2025-11-25.
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
        wanted.lock().unwrap().level = Some(LoggingLevel::Info);
        assert!(relayed(&log, &wanted, &naming).is_some());
        let shared = Naming {
            own_session: false,
            ..naming
        };
        assert!(relayed(&log, &wanted, &shared).is_none());
    }

    #[test]
    fn the_uris_to_renew_are_those_live_sessions_still_want() {
        let wants = Wants::default();
        let a = Arc::new(Mutex::new(Wanted::default()));
        let b = Arc::new(Mutex::new(Wanted::default()));
        a.lock()
            .unwrap()
            .uris
            .extend(["file:///a".into(), "file:///b".into()]);
        b.lock().unwrap().uris.insert("file:///b".into());
        wants.add(&a);
        wants.add(&b);
        let all = |w: &Wants| w.uris().into_iter().collect::<Vec<_>>();
        assert_eq!(all(&wants), ["file:///a", "file:///b"], "each once");
        // Unsubscribed: not renewed; an ended session's: neither.
        a.lock().unwrap().uris.remove("file:///a");
        assert_eq!(all(&wants), ["file:///b"]);
        drop(b);
        assert_eq!(all(&wants), ["file:///b"]);
        drop(a);
        assert!(wants.uris().is_empty());
        assert!(
            wants.0.lock().unwrap().is_empty(),
            "ended sessions are pruned"
        );
    }

    #[test]
    #[allow(deprecated)] // rmcp's logging types (SEP-2577), still part of 2025-11-25.
    fn the_level_to_renew_is_the_most_verbose_a_live_session_set() {
        let wants = Wants::default();
        let a = Arc::new(Mutex::new(Wanted::default()));
        let b = Arc::new(Mutex::new(Wanted::default()));
        let c = Arc::new(Mutex::new(Wanted::default()));
        for w in [&a, &b, &c] {
            wants.add(w);
        }
        assert_eq!(wants.level(), None, "nobody set one");
        a.lock().unwrap().level = Some(LoggingLevel::Error);
        b.lock().unwrap().level = Some(LoggingLevel::Notice);
        assert_eq!(wants.level(), Some(LoggingLevel::Notice));
        c.lock().unwrap().level = Some(LoggingLevel::Debug);
        assert_eq!(wants.level(), Some(LoggingLevel::Debug));
        // An ended session's level is not renewed.
        drop(c);
        assert_eq!(wants.level(), Some(LoggingLevel::Notice));
        // A session that set another level since: its latest counts.
        b.lock().unwrap().level = Some(LoggingLevel::Emergency);
        assert_eq!(wants.level(), Some(LoggingLevel::Error));
        // The order runs from debug to emergency.
        let all = [
            LoggingLevel::Debug,
            LoggingLevel::Info,
            LoggingLevel::Notice,
            LoggingLevel::Warning,
            LoggingLevel::Error,
            LoggingLevel::Critical,
            LoggingLevel::Alert,
            LoggingLevel::Emergency,
        ];
        assert!(all.windows(2).all(|p| severity(p[0]) < severity(p[1])));
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
