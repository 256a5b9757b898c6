//! Several instances on one database, behaving as one (R-MULTI-2).
//!
//! Every change that makes something an instance keeps in memory stale (a slot's
//! credential or header values, a server's settings, the encryption keys) is *announced*: applied to
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
//!
//! Key-set changes (`latchkey keys add`, `keys rotate`: [`key_set_changed`]) bump
//! `vault_state.key_set_version` and are announced as [`Change::Keys`]. Each instance
//! also reads that version every [`KEY_SET_CHECK_EVERY`] ([`start`]), so a change made
//! beside it on SQLite (no channel) or while its channel was broken is seen too. Either
//! way the instance reloads its keys (new values are sealed under the new current key,
//! values sealed by others under it open) and empties its caches.
//!
//! API key deletions travel the same way ([`Change::ApiKeyDeleted`]): each instance
//! keeps found keys in memory briefly (issue 18), and a deleted key must stop working on
//! all of them at once.
//!
//! Every "everything changed" (a key-set change, a channel that came back) also tells
//! the federated endpoint's open sessions that their tool lists may differ
//! ([`CredentialChange::everything`]).

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
    /// An API key was deleted: every instance drops it from its key cache at once
    /// ([`crate::key_cache::ApiKeyCache`]), so a deleted key stops working everywhere,
    /// not only once the cached entry ages out. Its row id, never the key or its hash.
    ApiKeyDeleted {
        /// The key's row id.
        id: String,
    },
    /// Anything may have changed (a broken channel, a missed change).
    Everything,
    /// The key set changed (`latchkey keys add` or `keys rotate`): reload the keys,
    /// then as [`Change::Everything`]. `version` is the store's key-set version after
    /// the change.
    Keys {
        /// `vault_state.key_set_version` after the change.
        version: i64,
    },
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
            s.header_values.forget(&slot);
            s.events.publish_change(CredentialChange::slot(&slot));
        }
        Change::Server {
            tenant,
            server,
            url,
        } => {
            s.server_changed(tenant, server);
            s.tokens.evict_server(tenant, server);
            s.header_values.forget_server(tenant, server);
            s.upstream.forget_server(tenant, server);
            if let Some(url) = url {
                s.discoverer.invalidate(url);
            }
            s.events
                .publish_change(CredentialChange::server(tenant, server));
        }
        Change::Everything | Change::Keys { .. } => {
            reload_keys(s);
            s.servers.clear();
            s.tokens.evict_all();
            s.header_values.clear();
            s.upstream.clear();
            s.discoverer.clear();
            s.api_key_cache.clear();
            s.events.publish_change(CredentialChange::everything());
        }
        Change::ApiKeyDeleted { id } => s.api_key_cache.forget(id),
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

/// Reads the keys again (any change may have been a key-set change). A deployment
/// without keys stays without them; a key source that became unreadable leaves the
/// keys in use as they were.
fn reload_keys(s: &AppState) {
    match s.keyring.reload() {
        Ok(true) => tracing::info!(
            event = "vault.keys_reloaded",
            current_key = s.keyring.current_key_id().unwrap_or(0)
        ),
        Ok(false) => {}
        Err(latchkey_vault::KeyringError::EncryptionKeyMissing) => {
            tracing::debug!(
                event = "vault.keys_reload_skipped",
                reason = "no key configured"
            );
        }
        Err(e) => tracing::warn!(
            event = "vault.keys_reload_failed",
            error = %e,
            "the keys in use are kept"
        ),
    }
}

/// How often each instance reads the store's key-set version.
pub const KEY_SET_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Records a key-set change in the store and announces it to the serving instances
/// (`latchkey keys add` and `keys rotate` call this; they do not serve). Instances that
/// miss the announcement (SQLite, a broken channel) see the version within
/// [`KEY_SET_CHECK_EVERY`].
pub async fn key_set_changed(
    store: &dyn latchkey_vault::Store,
) -> Result<i64, latchkey_vault::StoreError> {
    let version = store.bump_key_set_version().await?;
    let payload = serde_json::to_string(&Envelope {
        from: "latchkey-keys".to_owned(),
        change: Change::Keys { version },
    })
    .map_err(|e| latchkey_vault::StoreError::Conflict(e.to_string()))?;
    store.notify(&payload).await?;
    Ok(version)
}

/// Starts applying the other instances' changes and watching the key-set version, for
/// as long as the runtime runs. No listener on a store only one instance uses.
pub async fn start(s: AppState) -> Result<(), latchkey_vault::StoreError> {
    announce_consent_lost(s.clone());
    // The key-set version this instance's keys correspond to (unknown: `MIN`, so the
    // first reading reloads them).
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(
        s.store.key_set_version().await.unwrap_or(i64::MIN),
    ));
    watch_key_set(s.clone(), seen.clone());
    let Some(mut rx) = s.store.listen().await? else {
        return Ok(());
    };
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Notice::Message(p) => match serde_json::from_str::<Envelope>(&p) {
                    Ok(e) if *e.from == *s.instance => {}
                    Ok(Envelope {
                        change: Change::Keys { version },
                        ..
                    }) => {
                        // Applied once: the timer sees the version as known.
                        let before = seen.fetch_max(version, std::sync::atomic::Ordering::SeqCst);
                        if before < version {
                            tracing::info!(event = "cluster.key_set_changed", version);
                            apply(&s, &Change::Keys { version });
                        }
                    }
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

/// Reads the store's key-set version every [`KEY_SET_CHECK_EVERY`]; a version this
/// instance has not applied yet reloads the keys and empties the caches. A failed read
/// is retried at the next tick (the store's own errors say the database is away).
fn watch_key_set(s: AppState, seen: std::sync::Arc<std::sync::atomic::AtomicI64>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(KEY_SET_CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Ok(version) = s.store.key_set_version().await else {
                continue;
            };
            let before = seen.fetch_max(version, std::sync::atomic::Ordering::SeqCst);
            if before < version {
                tracing::info!(event = "cluster.key_set_changed", version);
                apply(&s, &Change::Keys { version });
            }
        }
    });
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
