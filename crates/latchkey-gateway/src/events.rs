//! `GET /v1/events`: server-sent events for the UI (R-UI-7). An event reaches the user
//! it concerns and the admins of that tenant, never anyone else (fail closed). The bus
//! also carries [`CredentialChange`]s for the federated MCP endpoint's list changes
//! (`notifications/tools/list_changed`, `…/prompts/…`, `…/resources/…`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use latchkey_guard::Principal;
use serde::Serialize;
use tokio::sync::broadcast;

/// One event. `tenant` routes it and is not sent.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// The tenant it belongs to.
    #[serde(skip)]
    pub tenant: String,
    /// `mcp.oauth_complete`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The server.
    pub server_id: String,
    /// The slot's user (`None`: the shared slot).
    pub user_id: Option<String>,
    /// Who started the flow.
    pub initiating_user_id: String,
    /// `success` or `error`.
    pub status: &'static str,
    /// The reason, on error.
    pub error: Option<String>,
}

/// Whether `p` may see `e`: same tenant, a server `p` may use (a restricted API key sees
/// only its servers' events), and the initiating user, the slot's user, or
/// a tenant admin.
pub fn visible_to(e: &Event, p: &Principal) -> bool {
    e.tenant == p.tenant.as_str()
        && p.may_use_server(&e.server_id)
        && (p.is_admin()
            || e.initiating_user_id == p.subject.as_str()
            || e.user_id.as_deref() == Some(p.subject.as_str()))
}

/// Which slots of a server a [`CredentialChange`] concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeScope {
    /// One user's slot.
    User(String),
    /// The shared slot (every member of the tenant calls with it).
    Shared,
    /// Every slot of the server (it was created, edited or deleted).
    Server,
    /// Every slot of every server in every tenant: this instance emptied its caches
    /// (its change channel came back, the key set changed), so anything may differ.
    Everything,
}

/// What a slot can call changed: it gained or lost its credential (a deposit, a delete,
/// a completed flow), or its server was created, edited (renamed, purged) or deleted.
/// In-process only (not sent on `/v1/events`); the federated MCP endpoint turns it into
/// `notifications/tools/list_changed` for the sessions that may see the slot
/// ([`change_visible_to`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialChange {
    /// The tenant.
    pub tenant: String,
    /// The server.
    pub server_id: String,
    /// Which of its slots.
    pub scope: ChangeScope,
}

impl CredentialChange {
    /// A change of one slot.
    pub fn slot(slot: &latchkey_vault::store::Slot) -> Self {
        Self {
            tenant: slot.tenant.clone(),
            server_id: slot.server.clone(),
            scope: match &slot.subject {
                Some(u) => ChangeScope::User(u.clone()),
                None => ChangeScope::Shared,
            },
        }
    }

    /// A change of every slot of a server.
    pub fn server(tenant: &str, server_id: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            server_id: server_id.to_owned(),
            scope: ChangeScope::Server,
        }
    }

    /// Anything may have changed, for every principal ([`ChangeScope::Everything`]).
    pub fn everything() -> Self {
        Self {
            tenant: String::new(),
            server_id: String::new(),
            scope: ChangeScope::Everything,
        }
    }
}

/// Whether `p` may see the slots `c` concerns, by the rules of [`visible_to`]: same
/// tenant, and the slot's user or a tenant admin; a shared slot, or every slot of a
/// server, concerns every member of the tenant; "everything changed" concerns everyone.
pub fn change_visible_to(c: &CredentialChange, p: &Principal) -> bool {
    match &c.scope {
        ChangeScope::Everything => true,
        ChangeScope::User(u) => {
            c.tenant == p.tenant.as_str() && (p.is_admin() || u == p.subject.as_str())
        }
        ChangeScope::Shared | ChangeScope::Server => c.tenant == p.tenant.as_str(),
    }
}

/// The in-process event bus. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<Arc<Event>>,
    changes: broadcast::Sender<Arc<CredentialChange>>,
}

impl Default for Events {
    fn default() -> Self {
        // Slow subscribers lose the oldest events rather than holding memory.
        Self {
            tx: broadcast::channel(256).0,
            changes: broadcast::channel(256).0,
        }
    }
}

impl Events {
    /// Publishes `e` to whoever may see it (no subscriber: dropped).
    pub fn publish(&self, e: Event) {
        let _ = self.tx.send(Arc::new(e));
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Publishes a credential change (no subscriber: dropped).
    pub fn publish_change(&self, c: CredentialChange) {
        let _ = self.changes.send(Arc::new(c));
    }

    /// Every credential change from now on; the receiver filters with
    /// [`change_visible_to`]. A slow receiver loses the oldest ones (`Lagged`).
    pub fn subscribe_changes(&self) -> broadcast::Receiver<Arc<CredentialChange>> {
        self.changes.subscribe()
    }
}

/// `GET /v1/events`.
pub async fn stream(
    State(events): State<Events>,
    axum::Extension(p): axum::Extension<Principal>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = events.subscribe();
    let events = futures_util::stream::unfold((rx, p), |(mut rx, p)| async move {
        loop {
            match rx.recv().await {
                Ok(e) if visible_to(&e, &p) => {
                    let ev = SseEvent::default()
                        .event(e.kind)
                        .json_data(e.as_ref())
                        .unwrap_or_else(|_| SseEvent::default().comment("unencodable"));
                    return Some((Ok(ev), (rx, p)));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let ev = SseEvent::default().comment(format!("{n} events dropped"));
                    return Some((Ok(ev), (rx, p)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_guard::{AuthSource, Role, SubjectId, TenantId};

    fn principal(tenant: &str, subject: &str, admin: bool) -> Principal {
        let p = Principal::new(
            TenantId::new(tenant).unwrap(),
            SubjectId::new(subject).unwrap(),
            AuthSource::Jwt,
        );
        if admin { p.with_role(Role::Admin) } else { p }
    }

    #[test]
    fn events_reach_the_user_and_tenant_admins_only() {
        let e = Event {
            tenant: "t1".into(),
            kind: "mcp.oauth_complete",
            server_id: "s".into(),
            user_id: Some("alice".into()),
            initiating_user_id: "alice".into(),
            status: "success",
            error: None,
        };
        assert!(visible_to(&e, &principal("t1", "alice", false)));
        assert!(visible_to(&e, &principal("t1", "root", true)));
        assert!(!visible_to(&e, &principal("t1", "bob", false)));
        assert!(
            !visible_to(&e, &principal("t2", "alice", false)),
            "other tenant"
        );
        assert!(
            !visible_to(&e, &principal("t2", "root", true)),
            "other tenant's admin"
        );
        let admin = principal("t1", "root", true);
        assert!(visible_to(&e, &admin.clone().with_servers(["s"])));
        assert!(
            !visible_to(&e, &admin.with_servers(["other"])),
            "a key restricted to other servers"
        );
        let json = serde_json::to_value(&e).unwrap();
        assert!(json.get("tenant").is_none());
        assert_eq!(json["type"], "mcp.oauth_complete");
    }

    #[test]
    fn credential_changes_reach_who_may_see_the_slot() {
        let slot = |subject: Option<&str>| latchkey_vault::store::Slot {
            tenant: "t1".into(),
            server: "s".into(),
            subject: subject.map(str::to_owned),
        };
        let own = CredentialChange::slot(&slot(Some("alice")));
        assert!(change_visible_to(&own, &principal("t1", "alice", false)));
        assert!(change_visible_to(&own, &principal("t1", "root", true)));
        assert!(!change_visible_to(&own, &principal("t1", "bob", false)));
        assert!(!change_visible_to(&own, &principal("t2", "alice", false)));
        for c in [
            CredentialChange::slot(&slot(None)),
            CredentialChange::server("t1", "s"),
        ] {
            assert!(change_visible_to(&c, &principal("t1", "bob", false)));
            assert!(!change_visible_to(&c, &principal("t2", "bob", true)));
        }
        let all = CredentialChange::everything();
        assert!(change_visible_to(&all, &principal("t1", "bob", false)));
        assert!(change_visible_to(&all, &principal("t2", "root", true)));
    }
}
