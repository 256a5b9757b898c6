//! Single-flight per slot (R-REFRESH-3) and eviction epochs (R-REFRESH-14).
//!
//! Each slot with a caller past the cache has a [`Flight`]: a FIFO async mutex (tokio's
//! is fair), an eviction epoch and a count of refreshes completed under it. The entry
//! lives exactly as long as some caller (or a refresh running in the background) holds a
//! [`Ticket`]; the last one to leave removes it (also when its future is dropped), so
//! memory stays bounded by the slots in use.
//!
//! Epochs only matter to refreshes in flight, so they live on the flight: an eviction
//! bumps the epoch of the slot's flight (if any); a refresh snapshots the epoch when it
//! starts and writes into the cache only if it is unchanged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use latchkey_vault::Slot;

use super::TokenError;

/// One slot's in-flight state.
#[derive(Debug, Default)]
pub(crate) struct Flight {
    /// Held for the whole load → refresh → write-back of the slot; shared, so a refresh
    /// running in a task of its own can own its guard.
    pub(crate) lock: Arc<tokio::sync::Mutex<()>>,
    epoch: AtomicU64,
    refreshes: AtomicU64,
    failures: AtomicU64,
    /// The last refresh failure the authorization server caused (see [`Flight::failed`]).
    last_failure: Mutex<Option<TokenError>>,
}

impl Flight {
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Refreshes completed by holders of this flight so far.
    pub(crate) fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::SeqCst)
    }

    pub(crate) fn refreshed(&self) {
        self.refreshes.fetch_add(1, Ordering::SeqCst);
    }

    /// Refresh failures recorded by holders of this flight so far.
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::SeqCst)
    }

    /// Records a refresh that the authorization server failed (down, slow, garbage), so
    /// the callers already queued behind it get the same answer at once instead of each
    /// trying again and waiting out its own timeout. Callers arriving later try afresh.
    pub(crate) fn failed(&self, e: &TokenError) {
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
        self.failures.fetch_add(1, Ordering::SeqCst);
    }

    /// The failure recorded last.
    pub(crate) fn last_failure(&self) -> Option<TokenError> {
        self.last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The slots with callers past the cache.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<Slot, Arc<Flight>>>,
}

impl Flights {
    fn lock(&self) -> MutexGuard<'_, HashMap<Slot, Arc<Flight>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins (or starts) the slot's flight.
    pub(crate) fn join(self: &Arc<Self>, slot: &Slot) -> Ticket {
        let mut map = self.lock();
        let flight = match map.get(slot) {
            Some(f) => f.clone(),
            None => {
                let f = Arc::new(Flight::default());
                map.insert(slot.clone(), f.clone());
                f
            }
        };
        Ticket {
            flights: self.clone(),
            slot: slot.clone(),
            flight,
        }
    }

    /// Bumps the epoch of the slot's flight.
    pub(crate) fn bump(&self, slot: &Slot) {
        if let Some(f) = self.lock().get(slot) {
            f.bump();
        }
    }

    /// Bumps the epoch of every flight of a server (shared and per-user slots).
    pub(crate) fn bump_server(&self, tenant: &str, server: &str) {
        for (slot, f) in self.lock().iter() {
            if slot.tenant == tenant && slot.server == server {
                f.bump();
            }
        }
    }

    /// Bumps every epoch.
    pub(crate) fn bump_all(&self) {
        for f in self.lock().values() {
            f.bump();
        }
    }

    /// Slots with a flight (tests and diagnostics).
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A caller's membership in a slot's flight; leaving removes the flight when it was
/// the last member.
#[derive(Debug)]
pub(crate) struct Ticket {
    flights: Arc<Flights>,
    slot: Slot,
    pub(crate) flight: Arc<Flight>,
}

impl Ticket {
    /// Another membership in the same flight (for a refresh that outlives its caller).
    pub(crate) fn share(&self) -> Ticket {
        Ticket {
            flights: self.flights.clone(),
            slot: self.slot.clone(),
            flight: self.flight.clone(),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut map = self.flights.lock();
        // The map's reference and ours: nobody else is queued or holding the lock.
        // Joins clone under the same map lock, so this count cannot race.
        if Arc::strong_count(&self.flight) == 2
            && map
                .get(&self.slot)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            map.remove(&self.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_ticket_removes_the_flight() {
        let flights = Arc::new(Flights::default());
        let slot = Slot {
            tenant: "t".into(),
            server: "s".into(),
            subject: None,
        };
        let a = flights.join(&slot);
        let b = flights.join(&slot);
        assert!(Arc::ptr_eq(&a.flight, &b.flight));
        flights.bump_server("t", "s");
        assert_eq!(a.flight.epoch(), 1);
        drop(a);
        assert_eq!(flights.len(), 1);
        drop(b);
        assert_eq!(flights.len(), 0);
    }
}
