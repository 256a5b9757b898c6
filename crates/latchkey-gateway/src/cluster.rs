//! Several instances on one database, behaving as one (R-MULTI-2).
//!
//! Every change that makes something an instance keeps in memory stale (a slot's
//! credential, a server's settings, the encryption keys) is *announced*: applied to
//! this instance's caches at once, then sent to the others through the store
//! ([`latchkey_vault::Store::notify`]: PostgreSQL `NOTIFY` on a channel named after the
//! schema; nothing on SQLite, where one instance owns the file). Each instance runs
//! [`start`]'s listener, which applies what the others send.
//!
//! A broken channel is treated as "everything may have changed" once it is listening
//! again: every cache is emptied, so nothing missed while it was away is served. While it
//! is away, cached tokens keep serving until they expire; if the database is down for
//! everyone (the usual case) no other instance can change anything meanwhile. The
//! remaining window (this instance cut off from the database while others reach it) is
//! bounded by the cached tokens' lifetimes and is documented in ARCHITECTURE.md.
//!
//! Flow completions for `/v1/events` travel the same way, so a client waiting on one
//! instance hears about a callback that landed on another.

use serde::{Deserialize, Serialize};

use crate::events::{CredentialChange, Event};
use crate::state::AppState;
use latchkey_vault::{Notice, Slot};

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A slot gained, lost or replaced its credential (deposit, delete, completed flow).
    Slot {
        /// Tenant.
        tenant: String,
        /// Server id.
        server: String,
        /// User (`None`: the shared slot).
        subject: Option<String>,
    },
    /// A server was created, edited or deleted: its row, every slot of it, and the
    /// discovery results for `url` (its URL before the change).
    Server {
        /// Tenant.
        tenant: String,
        /// Server id.
        server: String,
        /// The URL whose discovery results are stale.
        url: Option<String>,
    },
    /// Anything may have changed (keys rotated, a broken channel).
    Everything,
    /// A flow completed: for `/v1/events` subscribers on every instance.
    FlowCompleted {
        /// Tenant.
        tenant: String,
        /// Server id.
        server: String,
        /// The slot's user.
        user: Option<String>,
        /// Who started the flow.
        initiated_by: String,
        /// The failure reason; `None` on success.
        error: Option<String>,
    },
}

impl Change {
    /// A slot's change.
    pub fn slot(slot: &Slot) -> Self {
        Self::Slot {
            tenant: slot.tenant.clone(),
            server: slot.server.clone(),
            subject: slot.subject.clone(),
        }
    }
}

/// What travels between instances: the change and who sent it.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    from: String,
    change: Change,
}

impl AppState {
    /// Applies `c` here and tells the other instances ([`crate::cluster::announce`]).
    pub async fn announce(&self, c: crate::cluster::Change) {
        crate::cluster::announce(self, c).await;
    }
}

/// Applies `c` to this instance's caches and tells the other instances.
pub async fn announce(s: &AppState, c: Change) {
    apply(s, &c);
    let payload = match serde_json::to_string(&Envelope {
        from: s.instance.to_string(),
        change: c,
    }) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(event = "cluster.unencodable", error = %e);
            return;
        }
    };
    if let Err(e) = s.store.notify(&payload).await {
        // The others' caches stay until their entries expire or their channel breaks.
        tracing::error!(event = "cluster.notify_failed", error = %e);
    }
}

/// Applies a change to this instance's caches.
pub fn apply(s: &AppState, c: &Change) {
    match c {
        Change::Slot {
            tenant,
            server,
            subject,
        } => {
            let slot = Slot {
                tenant: tenant.clone(),
                server: server.clone(),
                subject: subject.clone(),
            };
            s.tokens.evict(&slot);
            s.events.publish_change(CredentialChange::slot(&slot));
        }
        Change::Server {
            tenant,
            server,
            url,
        } => {
            s.server_changed(tenant, server);
            s.tokens.evict_server(tenant, server);
            s.upstream.forget_server(tenant, server);
            if let Some(url) = url {
                s.discoverer.invalidate(url);
            }
            s.events
                .publish_change(CredentialChange::server(tenant, server));
        }
        Change::Everything => {
            s.servers.clear();
            s.tokens.evict_all();
            s.upstream.clear();
            s.discoverer.clear();
        }
        Change::FlowCompleted {
            tenant,
            server,
            user,
            initiated_by,
            error,
        } => s.events.publish(Event {
            tenant: tenant.clone(),
            kind: "mcp.oauth_complete",
            server_id: server.clone(),
            user_id: user.clone(),
            initiating_user_id: initiated_by.clone(),
            status: if error.is_some() { "error" } else { "success" },
            error: error.clone(),
        }),
    }
}

/// Starts applying the other instances' changes, for as long as the runtime runs.
/// Nothing to do on a store only one instance uses.
pub async fn start(s: AppState) -> Result<(), latchkey_vault::StoreError> {
    announce_consent_lost(s.clone());
    let Some(mut rx) = s.store.listen().await? else {
        return Ok(());
    };
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Notice::Message(p) => match serde_json::from_str::<Envelope>(&p) {
                    Ok(e) if *e.from == *s.instance => {}
                    Ok(e) => {
                        tracing::debug!(event = "cluster.applied", from = %e.from);
                        apply(&s, &e.change);
                    }
                    Err(e) => tracing::warn!(event = "cluster.unreadable", error = %e),
                },
                Notice::Lost => {
                    tracing::warn!(
                        event = "cluster.channel_lost",
                        "notifications from other instances are interrupted; reconnecting"
                    );
                }
                Notice::Resumed => {
                    tracing::info!(event = "cluster.channel_listening");
                    apply(&s, &Change::Everything);
                }
            }
        }
    });
    Ok(())
}

/// Announces every slot whose credential the token service found refused by its
/// authorization server (marked as needing consent in the store), so no instance keeps
/// serving or refreshing it from memory.
fn announce_consent_lost(s: AppState) {
    let mut lost = s.tokens.consent_lost();
    tokio::spawn(async move {
        loop {
            match lost.recv().await {
                Ok(slot) => announce(&s, Change::slot(&slot)).await,
                // Missed some: every instance reads the mark from the row anyway once
                // its cached token expires; emptying the caches now is quicker.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    announce(&s, Change::Everything).await;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}
