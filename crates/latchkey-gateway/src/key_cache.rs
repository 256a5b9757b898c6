//! API keys found in the store, kept in memory briefly ([`ApiKeyCache`], issue 18). A
//! building block under the state: the guard's adapter (`api_keys`) reads and fills it,
//! [`crate::cluster`] empties it on every instance when a key is deleted.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use latchkey_guard::Principal;

/// How long a key found in the store is served from memory, in seconds: a backstop.
/// Deletions are announced ([`crate::cluster::Change::ApiKeyDeleted`]) and drop the
/// entry on every instance at once; expiry is checked on every hit.
pub const KEY_CACHE_TTL_SECS: i64 = 30;

/// Keys kept in memory at most; past that, expired and stale entries go first, then
/// the oldest.
const KEY_CACHE_MAX: usize = 10_000;

/// A key the store knew, as remembered.
pub(crate) struct CachedKey {
    /// The row's id: what a deletion names.
    pub(crate) id: String,
    /// The principal the key acts as.
    pub(crate) principal: Principal,
    /// The row's `expires_at`, Unix seconds.
    pub(crate) expires_at: i64,
    /// When the row was read, Unix seconds.
    pub(crate) cached_at: i64,
}

/// What the cache says of a presented key.
pub(crate) enum Cached {
    /// Not in memory (or remembered too long ago): ask the store.
    Miss,
    /// Known and expired: refused without asking the store.
    Expired,
    /// Known and valid: the principal, and the key's id when its use is due to be
    /// recorded.
    Hit(Principal, Option<String>),
}

/// Issue 18: without it, every request made with `Authorization: Token lk_…` (the hot
/// path of `/mcp/{server}`) ran a database query. A short **positive** cache: keyed by
/// the key's SHA-256 (never the key), it holds the principal a found key acts as and
/// the row's expiry, for at most [`KEY_CACHE_TTL_SECS`]. A miss is never remembered, so
/// unknown keys cost a query each and no memory. A key deleted anywhere is announced to
/// every instance ([`crate::cluster`]), which drops it at once: without that, a deleted
/// key would keep working on other instances until its entry aged out. An epoch makes
/// an invalidation win over a store read already under way (its result is not kept).
#[derive(Default)]
pub struct ApiKeyCache {
    entries: Mutex<HashMap<[u8; 32], CachedKey>>,
    epoch: AtomicU64,
}

impl std::fmt::Debug for ApiKeyCache {
    /// The number of entries only: never a hash.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyCache")
            .field("entries", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl ApiKeyCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], CachedKey>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current epoch: read before asking the store, given back to [`Self::put`].
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Looks `hash` up at `now`. The map compares hashes with ordinary equality: as for
    /// the store's index (see [`crate::api_keys::StoreApiKeys`]), what its timing could tell is
    /// how much of a SHA-256 matches, which is of no use without preimages. `due` says
    /// whether the key's use should be recorded now (called on a valid hit only).
    pub(crate) fn get(&self, hash: &[u8; 32], now: i64, due: impl FnOnce(&str) -> bool) -> Cached {
        let mut entries = self.lock();
        let Some(e) = entries.get(hash) else {
            return Cached::Miss;
        };
        if e.expires_at <= now {
            entries.remove(hash);
            return Cached::Expired;
        }
        if now.saturating_sub(e.cached_at) >= KEY_CACHE_TTL_SECS || now < e.cached_at {
            entries.remove(hash);
            return Cached::Miss;
        }
        let touch = due(&e.id).then(|| e.id.clone());
        Cached::Hit(e.principal.clone(), touch)
    }

    /// Remembers a key read from the store, unless an invalidation happened since
    /// `epoch` was read.
    pub(crate) fn put(&self, hash: [u8; 32], entry: CachedKey, epoch: u64) {
        let mut entries = self.lock();
        if self.epoch() != epoch {
            return;
        }
        if entries.len() >= KEY_CACHE_MAX && !entries.contains_key(&hash) {
            let now = entry.cached_at;
            entries.retain(|_, e| {
                e.expires_at > now && now.saturating_sub(e.cached_at) < KEY_CACHE_TTL_SECS
            });
            if entries.len() >= KEY_CACHE_MAX
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, e)| e.cached_at)
                    .map(|(h, _)| *h)
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(hash, entry);
    }

    /// Forgets the key with row id `id` (deleted here or on another instance).
    pub fn forget(&self, id: &str) {
        let mut entries = self.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        entries.retain(|_, e| e.id != id);
    }

    /// Forgets every key (anything may have changed).
    pub fn clear(&self) {
        let mut entries = self.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        entries.clear();
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
