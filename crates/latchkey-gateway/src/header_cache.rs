//! Static-header values opened for calls ([`Opened`]) and kept in memory per slot
//! ([`HeaderCache`]), so a call in steady state neither reads nor decrypts a row. A
//! building block under the shared state: the rules that fill and use it are
//! [`crate::service::headers`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use http::{HeaderMap, HeaderName, HeaderValue};
use latchkey_core::Secret;
use latchkey_vault::store::{ServerRow, Slot};

use crate::error::ApiError;
use crate::upstream_sessions::CredentialMark;

/// The values a call sends, opened: for the URL they were set for.
pub struct Opened {
    /// The server URL the values were set for.
    pub(crate) url: String,
    /// Value per configured name.
    pub(crate) values: BTreeMap<String, Secret>,
    /// What identifies these values for the upstream session cache.
    mark: CredentialMark,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("names", &self.values.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Opened {
    pub(crate) fn new(url: String, values: BTreeMap<String, Secret>) -> Self {
        let mut all = String::new();
        for (k, v) in &values {
            all.push_str(k);
            all.push('\0');
            all.push_str(v.expose());
            all.push('\0');
        }
        let mark = CredentialMark::of(Some(&Secret::new(all)));
        Self { url, values, mark }
    }

    /// The upstream-session mark of these values.
    pub fn mark(&self) -> CredentialMark {
        self.mark
    }

    /// Sets the server's configured headers on `headers` (replacing whatever is there
    /// under those names), marked sensitive.
    pub fn inject(&self, server: &ServerRow, headers: &mut HeaderMap) -> Result<(), ApiError> {
        for name in &server.header_names {
            let Some(value) = self.values.get(name) else {
                return Err(not_set(server, name));
            };
            let (Ok(n), Ok(mut v)) = (
                HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()),
                HeaderValue::from_str(value.expose()),
            ) else {
                return Err(not_set(server, name));
            };
            v.set_sensitive(true);
            headers.insert(n, v);
        }
        Ok(())
    }

    /// The configured headers alone.
    pub fn headers(&self, server: &ServerRow) -> Result<HeaderMap, ApiError> {
        let mut h = HeaderMap::new();
        self.inject(server, &mut h)?;
        Ok(h)
    }
}

pub(crate) fn not_set(server: &ServerRow, name: &str) -> ApiError {
    ApiError::HeadersNotSet {
        server_id: server.id.clone(),
        server_name: server.name.clone(),
        header: name.to_owned(),
    }
}

/// `(tenant, server, subject)`.
type SlotKey = (String, String, Option<String>);

fn key_of(slot: &Slot) -> SlotKey {
    (
        slot.tenant.clone(),
        slot.server.clone(),
        slot.subject.clone(),
    )
}

/// Opened values per slot, so a call in steady state neither reads nor decrypts a row.
/// Every invalidation bumps an epoch: a read that began before it does not put back
/// what it read.
#[derive(Debug, Default)]
pub struct HeaderCache(Mutex<CacheInner>);

#[derive(Debug, Default)]
struct CacheInner {
    epoch: u64,
    map: HashMap<SlotKey, Arc<Opened>>,
}

/// Entries kept at most (the cache is emptied when it is full).
const CACHE_MAX: usize = 10_000;

impl HeaderCache {
    fn lock(&self) -> MutexGuard<'_, CacheInner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, slot: &Slot) -> Option<Arc<Opened>> {
        self.lock().map.get(&key_of(slot)).cloned()
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    pub(crate) fn put(&self, slot: &Slot, opened: Arc<Opened>, epoch: u64) {
        let mut g = self.lock();
        if g.epoch != epoch {
            return;
        }
        if g.map.len() >= CACHE_MAX {
            g.map.clear();
        }
        g.map.insert(key_of(slot), opened);
    }

    /// Forgets one slot's values.
    pub fn forget(&self, slot: &Slot) {
        let mut g = self.lock();
        g.epoch += 1;
        g.map.remove(&key_of(slot));
    }

    /// Forgets every slot of a server.
    pub fn forget_server(&self, tenant: &str, server: &str) {
        let mut g = self.lock();
        g.epoch += 1;
        g.map.retain(|(t, s, _), _| !(t == tenant && s == server));
    }

    /// Forgets everything.
    pub fn clear(&self) {
        let mut g = self.lock();
        g.epoch += 1;
        g.map.clear();
    }

    /// How many slots are held (for tests).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
