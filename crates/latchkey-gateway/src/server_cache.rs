//! Server rows for the call paths (`/mcp/{server}`, `/mcp`, tool calls), kept in memory
//! for a second so a busy proxy does not read the same row from the database on every
//! request. Every change made through this instance invalidates the row at once; a
//! change made by another instance is seen within [`TTL`] (and, with scale-out, by its
//! notification). Mutations never read through this cache: they read the row itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use latchkey_core::UnixTime;
use latchkey_vault::store::ServerRow;

/// How long a row is served from memory.
pub const TTL: Duration = Duration::from_secs(1);
/// How long a cached row keeps serving the call paths while the database is
/// unavailable (so cached tokens keep working through a database restart).
pub const STALE_IF_UNAVAILABLE: Duration = Duration::from_secs(300);
/// While the database is unavailable, how often a request asks it again.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);
/// Entries kept at most; past that the cache starts over (a bound, not an LRU: the rows
/// are cheap to read again).
const CAPACITY: usize = 10_000;

/// Rows by tenant, then by id: a lookup borrows the caller's strings.
#[derive(Debug, Default)]
struct Rows {
    by_tenant: HashMap<String, HashMap<String, (Arc<ServerRow>, UnixTime)>>,
    len: usize,
}

impl Rows {
    fn get(&self, tenant: &str, id: &str) -> Option<&(Arc<ServerRow>, UnixTime)> {
        self.by_tenant.get(tenant)?.get(id)
    }

    fn remove(&mut self, tenant: &str, id: &str) {
        if let Some(ids) = self.by_tenant.get_mut(tenant)
            && ids.remove(id).is_some()
        {
            self.len -= 1;
            if ids.is_empty() {
                self.by_tenant.remove(tenant);
            }
        }
    }
}

/// The cache. An epoch counter makes an invalidation win over a read that was already
/// under way when it happened: such a read's result is not stored. Rows are shared
/// (`Arc`), so a hit copies nothing.
#[derive(Debug, Default)]
pub struct ServerCache {
    rows: Mutex<Rows>,
    epoch: AtomicU64,
    /// When a read last found the database unavailable (Unix seconds; 0: never).
    unavailable_at: AtomicU64,
}

impl ServerCache {
    fn rows(&self) -> std::sync::MutexGuard<'_, Rows> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The row of `(tenant, id)` if cached and younger than [`TTL`] at `now`.
    pub fn get(&self, tenant: &str, id: &str, now: UnixTime) -> Option<Arc<ServerRow>> {
        self.get_stale(tenant, id, now, TTL)
    }

    /// The row of `(tenant, id)` if cached less than `max_age` before `now`, however
    /// stale (beyond [`TTL`], served only while the database is unavailable).
    pub fn get_stale(
        &self,
        tenant: &str,
        id: &str,
        now: UnixTime,
        max_age: Duration,
    ) -> Option<Arc<ServerRow>> {
        let rows = self.rows();
        let (row, at) = rows.get(tenant, id)?;
        (now.since(*at) < max_age && *at <= now).then(|| row.clone())
    }

    /// Notes that the database was unavailable at `now`.
    pub fn mark_unavailable(&self, now: UnixTime) {
        self.unavailable_at.store(now.as_secs(), Ordering::Release);
    }

    /// Whether the database was found unavailable within [`PROBE_EVERY`] before `now`:
    /// then a stale row is served without asking it again (one request per interval
    /// waits for the database; the others do not).
    pub fn recently_unavailable(&self, now: UnixTime) -> bool {
        let at = self.unavailable_at.load(Ordering::Acquire);
        at != 0 && now.as_secs().saturating_sub(at) < PROBE_EVERY.as_secs()
    }

    /// The epoch to hand back to [`ServerCache::put`] after reading a row.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Stores `row`, read at `now`, unless something was invalidated since `epoch`.
    pub fn put(&self, row: Arc<ServerRow>, epoch: u64, now: UnixTime) {
        let mut rows = self.rows();
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if rows.len >= CAPACITY {
            *rows = Rows::default();
        }
        let previous = rows
            .by_tenant
            .entry(row.tenant.clone())
            .or_default()
            .insert(row.id.clone(), (row, now));
        if previous.is_none() {
            rows.len += 1;
        }
    }

    /// Forgets `(tenant, id)`.
    pub fn invalidate(&self, tenant: &str, id: &str) {
        let mut rows = self.rows();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        rows.remove(tenant, id);
    }

    /// Forgets everything.
    pub fn clear(&self) {
        let mut rows = self.rows();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        *rows = Rows::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, url: &str) -> Arc<ServerRow> {
        Arc::new(ServerRow::new(id, "t", "n", url))
    }

    #[test]
    fn rows_expire_and_invalidation_wins_over_a_read_under_way() {
        let c = ServerCache::default();
        let t0 = UnixTime::from_secs(100);
        let e = c.epoch();
        c.put(row("a", "https://one.example/mcp"), e, t0);
        assert!(c.get("t", "a", t0).is_some());
        assert!(c.get("other", "a", t0).is_none(), "keyed by tenant");
        assert!(c.get("t", "a", t0.plus(TTL)).is_none(), "expired");

        // A read began (epoch taken), then the row changed: the stale read is dropped.
        let e = c.epoch();
        c.invalidate("t", "a");
        c.put(row("a", "https://stale.example/mcp"), e, t0);
        assert!(c.get("t", "a", t0).is_none());
        let e = c.epoch();
        c.put(row("a", "https://two.example/mcp"), e, t0);
        assert_eq!(
            c.get("t", "a", t0).map(|r| r.url.clone()).as_deref(),
            Some("https://two.example/mcp")
        );
        c.clear();
        assert!(c.get("t", "a", t0).is_none());
    }
}
