//! Upstream MCP sessions kept between calls (issue 16): the REST tool path and the
//! federated endpoint call an upstream server through one session per slot (per
//! caller for servers without authorization), opened once with `initialize` and reused,
//! so a call in steady state is one upstream request and the upstream's session state
//! survives between calls.
//!
//! Only what a session is needs keeping: its id, negotiated version and the server's
//! capabilities (so a primitive it does not offer is not asked for). Each call
//! builds its own client around them, numbering its requests from a counter shared by
//! every client, so concurrent calls in one session never reuse a JSON-RPC id. A
//! session is opened again when the upstream says it is gone (404), when it has been
//! idle for [`IDLE`], when the server's URL changed, and when the credential changed
//! (a refreshed or new token: the session may be bound to the old one).
//!
//! A session replaced while its standalone GET stream stays open (a refreshed token, a
//! POST that got 404) leaves that stream reading a session no new subscription goes
//! to. So whoever reads a key's stream (the relay hub of `/mcp`) can
//! [`watch`](UpstreamSessions::watch) the key and hears of each session opened for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use latchkey_core::{Secret, UnixTime};

/// A session unused this long is not reused (servers expire idle sessions; a 404 would
/// tell us anyway, at the cost of a request).
pub const IDLE: Duration = Duration::from_secs(5 * 60);

/// At most this many sessions are remembered; past it, idle ones are dropped first,
/// then all (they are only an optimisation: a dropped one is opened again).
pub const MAX_SESSIONS: usize = 10_000;

/// Whose session: a slot (tenant, server, subject or `None` for a shared slot); for a
/// server without authorization, the caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// Tenant.
    pub tenant: String,
    /// Server id.
    pub server: String,
    /// The slot's subject, or the caller's for a server without authorization.
    pub subject: Option<String>,
}

/// The fingerprint of the credential a session was opened with (a hash: no token is
/// kept here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialMark([u8; 16]);

impl CredentialMark {
    /// The mark of `token` (none for a server without authorization).
    pub fn of(token: Option<&Secret>) -> Self {
        use sha2::Digest;
        let mut out = [0u8; 16];
        if let Some(t) = token {
            let d = sha2::Sha256::digest(t.expose().as_bytes());
            out.copy_from_slice(&d[..16]);
        }
        Self(out)
    }
}

/// A remembered session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The `Mcp-Session-Id` the upstream gave (none: it keeps no session).
    pub id: Option<String>,
    /// The protocol version `initialize` negotiated.
    pub negotiated: Option<String>,
    /// The `capabilities` object of the upstream's `initialize` result (`None`: it sent
    /// none, so nothing is assumed missing).
    pub capabilities: Option<serde_json::Value>,
}

impl Session {
    /// Whether the upstream may offer `capability` (`prompts`, `resources`,
    /// `completions` …): it declared it, or declared no capabilities at all.
    pub fn offers(&self, capability: &str) -> bool {
        // `completions` was declared from 2025-03-26 on; an older server may answer
        // `completion/complete` without saying so.
        if capability == "completions"
            && self.negotiated.as_deref().is_some_and(|v| v < "2025-03-26")
        {
            return true;
        }
        self.capabilities
            .as_ref()
            .is_none_or(|c| c.get(capability).is_some_and(|v| !v.is_null()))
    }
}

#[derive(Debug)]
struct Entry {
    url: String,
    credential: CredentialMark,
    session: Session,
    last_used: UnixTime,
}

/// What the sessions' lock guards: the sessions, and who watches which key. One lock,
/// so a watcher hears of the sessions opened for its key in the order they were kept.
#[derive(Debug, Default)]
struct Kept {
    entries: HashMap<SessionKey, Entry>,
    /// Per watched key, the id of the last session kept for it (`None`: none yet, or
    /// one without id). Only keys someone watches now: a request path without a watcher
    /// pays an emptiness check.
    watched: HashMap<SessionKey, tokio::sync::watch::Sender<Option<String>>>,
}

impl Kept {
    /// Tells the watchers of `key` (if any) that session `id` is kept for it now; they
    /// wake only when it is another id than the last one they were told.
    fn tell(&mut self, key: &SessionKey, id: Option<&str>) {
        if self.watched.is_empty() {
            return;
        }
        let Some(tx) = self.watched.get(key) else {
            return;
        };
        if tx.receiver_count() == 0 {
            self.watched.remove(key);
            return;
        }
        tx.send_if_modified(|last| {
            if last.as_deref() == id {
                return false;
            }
            *last = id.map(str::to_owned);
            true
        });
    }
}

/// The sessions, shared by every request of this instance.
#[derive(Debug, Default)]
pub struct UpstreamSessions {
    map: Mutex<Kept>,
    /// One gate per key, held while its session is being opened.
    gates: Mutex<HashMap<SessionKey, Arc<tokio::sync::Mutex<()>>>>,
    ids: AtomicI64,
}

impl UpstreamSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session to reuse for `key` at `url` with `credential`, if one is live.
    pub fn get(
        &self,
        key: &SessionKey,
        url: &str,
        credential: CredentialMark,
        now: UnixTime,
    ) -> Option<Session> {
        let mut kept = self.lock();
        let e = kept.entries.get_mut(key)?;
        let idle = now.as_secs().saturating_sub(e.last_used.as_secs());
        if e.url != url || e.credential != credential || idle >= IDLE.as_secs() {
            return None;
        }
        e.last_used = now;
        Some(e.session.clone())
    }

    /// The gate a caller holds while opening `key`'s session, so callers arriving
    /// meanwhile wait and reuse it instead of opening their own.
    pub fn opening(&self, key: &SessionKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        if gates.len() >= MAX_SESSIONS && !gates.contains_key(key) {
            // Only a gate no one holds may go: a held one is in `Arc` use elsewhere.
            gates.retain(|_, g| Arc::strong_count(g) > 1);
        }
        gates.entry(key.clone()).or_default().clone()
    }

    /// Remembers the session just opened for `key`; the one it replaces, if it had an
    /// id (it is not ended: a call may still be using it). A watcher of `key`
    /// ([`Self::watch`]) is told.
    pub fn put(
        &self,
        key: SessionKey,
        url: &str,
        credential: CredentialMark,
        session: Session,
        now: UnixTime,
    ) -> Option<String> {
        let mut kept = self.lock();
        kept.tell(&key, session.id.as_deref());
        let map = &mut kept.entries;
        if map.len() >= MAX_SESSIONS && !map.contains_key(&key) {
            map.retain(|_, e| now.as_secs().saturating_sub(e.last_used.as_secs()) < IDLE.as_secs());
            if map.len() >= MAX_SESSIONS {
                map.clear();
            }
        }
        let old = map.insert(
            key,
            Entry {
                url: url.to_owned(),
                credential,
                session: session.clone(),
                last_used: now,
            },
        );
        old.and_then(|e| e.session.id)
            .filter(|id| Some(id) != session.id.as_ref())
    }

    /// Forgets `key`'s session if it is still the one with id `id` (the upstream said
    /// it is gone; a caller may already have opened the next one).
    pub fn forget_session(&self, key: &SessionKey, id: Option<&str>) {
        let mut kept = self.lock();
        let map = &mut kept.entries;
        if map.get(key).is_some_and(|e| e.session.id.as_deref() == id) {
            map.remove(key);
        }
    }

    /// Forgets every session of a server (its settings changed or it was deleted).
    pub fn forget_server(&self, tenant: &str, server: &str) {
        self.lock()
            .entries
            .retain(|k, _| !(k.tenant == tenant && k.server == server));
    }

    /// Forgets everything (the change channel was lost).
    pub fn clear(&self) {
        self.lock().entries.clear();
        self.gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, g| Arc::strong_count(g) > 1);
    }

    /// The first of `n` request ids reserved for one client.
    pub fn reserve_ids(&self, n: i64) -> i64 {
        self.ids.fetch_add(n, Ordering::Relaxed) + 1
    }

    /// How many sessions are remembered.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Watches which session is kept for `key`: the receiver holds the id of the one
    /// last kept (`None`: none was while watched, and none is now) and changes each
    /// time a session with another id is kept (opened for a refreshed credential, after
    /// a 404, …); a forgotten session is not a change (there is nothing new to use until
    /// the next one is opened). The watch lasts as long as a receiver of it does.
    pub fn watch(&self, key: &SessionKey) -> tokio::sync::watch::Receiver<Option<String>> {
        let mut kept = self.lock();
        kept.watched.retain(|_, tx| tx.receiver_count() > 0);
        if let Some(tx) = kept.watched.get(key) {
            return tx.subscribe();
        }
        let id = kept.entries.get(key).and_then(|e| e.session.id.clone());
        let (tx, rx) = tokio::sync::watch::channel(id);
        kept.watched.insert(key.clone(), tx);
        rx
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> SessionKey {
        SessionKey {
            tenant: "t".into(),
            server: s.into(),
            subject: Some("u".into()),
        }
    }

    fn session(id: &str) -> Session {
        Session {
            id: Some(id.into()),
            negotiated: Some("2025-11-25".into()),
            capabilities: None,
        }
    }

    #[test]
    fn reused_until_the_url_credential_or_idle_time_changes() {
        let s = UpstreamSessions::default();
        let a = CredentialMark::of(Some(&Secret::new("a")));
        let b = CredentialMark::of(Some(&Secret::new("b")));
        let t0 = UnixTime::from_secs(1000);
        assert_eq!(s.put(key("x"), "http://u/mcp", a, session("s1"), t0), None);
        assert_eq!(s.get(&key("x"), "http://u/mcp", a, t0), Some(session("s1")));
        assert_eq!(s.get(&key("x"), "http://other/mcp", a, t0), None);
        assert_eq!(s.get(&key("x"), "http://u/mcp", b, t0), None);
        assert_eq!(s.get(&key("y"), "http://u/mcp", a, t0), None);
        let later = t0.plus(IDLE);
        assert_eq!(s.get(&key("x"), "http://u/mcp", a, later), None);
        // Use keeps it alive.
        let t1 = t0.plus(IDLE / 2);
        assert!(s.get(&key("x"), "http://u/mcp", a, t1).is_some());
        assert!(
            s.get(&key("x"), "http://u/mcp", a, t1.plus(IDLE / 2))
                .is_some()
        );
        // Replacing names the old session, once.
        assert_eq!(
            s.put(key("x"), "http://u/mcp", b, session("s2"), t1),
            Some("s1".into())
        );
        s.forget_session(&key("x"), Some("s1"));
        assert_eq!(
            s.len(),
            1,
            "a newer session is not forgotten for an old one"
        );
        s.forget_session(&key("x"), Some("s2"));
        assert!(s.is_empty());
        s.put(key("x"), "http://u/mcp", b, session("s3"), t1);
        s.forget_server("t", "x");
        assert!(s.is_empty());
    }

    #[test]
    fn offers_what_initialize_declared() {
        let mut s = session("s");
        assert!(
            s.offers("prompts"),
            "nothing declared: nothing assumed missing"
        );
        s.capabilities = Some(serde_json::json!({"tools": {}, "prompts": {"listChanged": true}}));
        assert!(s.offers("prompts") && s.offers("tools"));
        assert!(!s.offers("resources") && !s.offers("completions"));
        s.negotiated = Some("2024-11-05".into());
        assert!(s.offers("completions"), "declared only from 2025-03-26 on");
        assert!(!s.offers("resources"));
    }

    #[test]
    fn ids_never_repeat_across_clients() {
        let s = UpstreamSessions::default();
        let a = s.reserve_ids(4);
        let b = s.reserve_ids(4);
        assert_eq!(b - a, 4);
    }

    #[test]
    fn a_watcher_hears_of_each_other_session_kept_for_its_key() {
        let s = UpstreamSessions::default();
        let m = CredentialMark::of(None);
        let t = UnixTime::from_secs(1);
        s.put(key("x"), "u", m, session("s1"), t);
        let mut w = s.watch(&key("x"));
        assert_eq!(w.borrow().as_deref(), Some("s1"), "the one kept now");
        assert!(!w.has_changed().unwrap());
        // The same id again, another key, a forgotten session: no change.
        s.put(key("x"), "u", m, session("s1"), t);
        s.put(key("y"), "u", m, session("s9"), t);
        s.forget_session(&key("x"), Some("s1"));
        assert!(!w.has_changed().unwrap());
        s.put(key("x"), "u", m, session("s2"), t);
        assert!(w.has_changed().unwrap());
        assert_eq!(w.borrow_and_update().as_deref(), Some("s2"));
        // A second watcher shares the watch; none left: it goes with the next put.
        let w2 = s.watch(&key("x"));
        assert_eq!(w2.borrow().as_deref(), Some("s2"));
        drop((w, w2));
        s.put(key("x"), "u", m, session("s3"), t);
        assert!(s.lock().watched.is_empty());
        // Watching a key with no session yet.
        let w = s.watch(&key("z"));
        assert_eq!(*w.borrow(), None);
    }

    #[test]
    fn bounded() {
        let s = UpstreamSessions::default();
        let t = UnixTime::from_secs(1);
        let m = CredentialMark::of(None);
        for i in 0..MAX_SESSIONS + 5 {
            s.put(key(&i.to_string()), "u", m, session("s"), t);
        }
        assert!(s.len() <= MAX_SESSIONS);
    }
}
