//! The cross-instance refresh lease (R-MULTI-1).
//!
//! The in-process slot lock makes one refresh per slot per instance; several instances
//! on one database also need to agree, or each spends the refresh token and a rotating
//! authorization server revokes the family on the second use. Before a grant an
//! instance takes the slot's lease row (one `INSERT … ON CONFLICT … WHERE expired`);
//! no database lock is held across the grant's HTTP call. The holder's watchdog pushes
//! the expiry while the grant runs, so the TTL can be short: if the holder dies, the
//! lease is free again within [`LeaseOptions::ttl`]. A waiter polls the row and uses
//! the peer's persisted token as soon as it appears; after [`LeaseOptions::wait`] it
//! refreshes anyway (failing open), and the `invalid_grant` re-read (R-REFRESH-5)
//! remains the last safety net.

use std::sync::Arc;
use std::time::Duration;

use latchkey_core::Clock;
use latchkey_vault::{Slot, Store};
use tokio::task::JoinHandle;

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    /// How long a lease lasts unless its holder's watchdog extends it (default 5 s).
    pub ttl: Duration,
    /// How long a waiter waits for another instance's refresh before refreshing
    /// itself (default 30 s).
    pub wait: Duration,
    /// How often a waiter looks again (default 50 ms).
    pub poll: Duration,
    /// This instance's name, written into the lease rows it holds (diagnostics).
    pub instance: String,
}

impl LeaseOptions {
    /// The defaults, for the instance named `instance`.
    pub fn new(instance: impl Into<String>) -> Self {
        Self {
            ttl: Duration::from_secs(5),
            wait: Duration::from_secs(30),
            poll: Duration::from_millis(50),
            instance: instance.into(),
        }
    }
}

/// A lease this instance holds, with its watchdog. Dropping it stops the watchdog (the
/// row then expires on its own); [`Held::release`] also deletes the row.
pub(crate) struct Held {
    store: Arc<dyn Store>,
    slot: Slot,
    holder: String,
    watchdog: JoinHandle<()>,
}

impl Held {
    /// Starts the watchdog for a lease just taken.
    pub(crate) fn start(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        slot: Slot,
        holder: String,
        ttl: Duration,
    ) -> Self {
        let (s, sl, h) = (store.clone(), slot.clone(), holder.clone());
        let watchdog = tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                let until = secs(clock.now().plus(ttl));
                match s.extend_lease(&sl, &h, until).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(event = "token.lease_lost", tenant = %sl.tenant, server = %sl.server);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(event = "token.lease_extend_failed", tenant = %sl.tenant, server = %sl.server, error = %e);
                    }
                }
            }
        });
        Self {
            store,
            slot,
            holder,
            watchdog,
        }
    }

    /// Gives the lease up.
    pub(crate) async fn release(self) {
        self.watchdog.abort();
        if let Err(e) = self.store.release_lease(&self.slot, &self.holder).await {
            // It expires by itself within the TTL.
            tracing::warn!(event = "token.lease_release_failed", tenant = %self.slot.tenant, server = %self.slot.server, error = %e);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.watchdog.abort();
    }
}

pub(crate) fn secs(t: latchkey_core::UnixTime) -> i64 {
    i64::try_from(t.as_secs()).unwrap_or(i64::MAX)
}
