//! The in-memory access-token cache (R-REFRESH-1, R-REFRESH-15).
//!
//! A three-level map `tenant → server → subject`, so a lookup borrows the slot's
//! strings (no allocation), and evicting a server removes one inner map instead of
//! scanning key prefixes. Reads take a shared lock that is never held across an await.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use latchkey_core::{Secret, UnixTime};
use latchkey_vault::Slot;

use super::AccessToken;

/// One cached token and the version of the row it was persisted in.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) token: Arc<Secret>,
    /// When the token expires (always known: A4 supplies a default).
    pub(crate) expires_at: UnixTime,
    /// How long before `expires_at` it stops being served (the service's skew, at most
    /// half the token's lifetime).
    pub(crate) skew: Duration,
    pub(crate) scopes: Option<Arc<str>>,
    /// The resource the token was issued for.
    pub(crate) resource: Option<Arc<str>>,
    /// `(row id, generation)` of the credential row holding this token.
    pub(crate) row_id: String,
    pub(crate) generation: i64,
}

impl Entry {
    fn fresh(&self, now: UnixTime) -> bool {
        now < self.expires_at.minus(self.skew)
    }

    fn to_token(&self) -> AccessToken {
        AccessToken {
            token: self.token.clone(),
            expires_at: Some(self.expires_at),
            scopes: self.scopes.clone(),
            resource: self.resource.clone(),
        }
    }
}

type Subjects = HashMap<Option<String>, Entry>;
type Servers = HashMap<String, Subjects>;

/// What a lookup found.
#[derive(Debug)]
pub(crate) enum Lookup {
    Hit(AccessToken),
    Miss,
}

#[derive(Debug, Default)]
pub(crate) struct TokenCache {
    map: RwLock<HashMap<String, Servers>>,
}

impl TokenCache {
    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Servers>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, Servers>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot's token while `now < expires_at - skew`; an entry past that point is
    /// removed (R-REFRESH-15).
    pub(crate) fn get(&self, slot: &Slot, now: UnixTime) -> Lookup {
        {
            let map = self.read();
            match entry(&map, slot) {
                None => return Lookup::Miss,
                Some(e) if e.fresh(now) => return Lookup::Hit(e.to_token()),
                Some(_) => {}
            }
        }
        // Stale: remove it, unless a fresher one replaced it meanwhile.
        let mut map = self.write();
        if let Some(e) = entry(&map, slot)
            && e.fresh(now)
        {
            return Lookup::Hit(e.to_token());
        }
        remove_from(&mut map, slot);
        Lookup::Miss
    }

    /// The `(row id, generation)` behind the cached token, fresh or not: what a caller
    /// forcing a refresh has seen.
    pub(crate) fn version(&self, slot: &Slot) -> Option<(String, i64)> {
        entry(&self.read(), slot).map(|e| (e.row_id.clone(), e.generation))
    }

    /// Whether the slot has an entry (fresh or not).
    pub(crate) fn contains(&self, slot: &Slot) -> bool {
        entry(&self.read(), slot).is_some()
    }

    /// Stores `e` if `allowed()` still holds under the write lock. Evictions bump their
    /// epoch before taking this lock, so a check made here cannot miss one.
    pub(crate) fn insert_if(&self, slot: &Slot, e: Entry, allowed: impl FnOnce() -> bool) -> bool {
        let mut map = self.write();
        if !allowed() {
            return false;
        }
        map.entry(slot.tenant.clone())
            .or_default()
            .entry(slot.server.clone())
            .or_default()
            .insert(slot.subject.clone(), e);
        true
    }

    pub(crate) fn remove(&self, slot: &Slot) {
        remove_from(&mut self.write(), slot);
    }

    pub(crate) fn remove_server(&self, tenant: &str, server: &str) {
        let mut map = self.write();
        if let Some(servers) = map.get_mut(tenant) {
            servers.remove(server);
            if servers.is_empty() {
                map.remove(tenant);
            }
        }
    }

    pub(crate) fn clear(&self) {
        self.write().clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.read()
            .values()
            .flat_map(|s| s.values())
            .map(HashMap::len)
            .sum()
    }
}

fn entry<'m>(map: &'m HashMap<String, Servers>, slot: &Slot) -> Option<&'m Entry> {
    map.get(slot.tenant.as_str())?
        .get(slot.server.as_str())?
        .get(&slot.subject)
}

fn remove_from(map: &mut HashMap<String, Servers>, slot: &Slot) {
    let Some(servers) = map.get_mut(slot.tenant.as_str()) else {
        return;
    };
    if let Some(subjects) = servers.get_mut(slot.server.as_str()) {
        subjects.remove(&slot.subject);
        if subjects.is_empty() {
            servers.remove(slot.server.as_str());
        }
    }
    if servers.is_empty() {
        map.remove(slot.tenant.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(sub: Option<&str>) -> Slot {
        Slot {
            tenant: "t".into(),
            server: "s".into(),
            subject: sub.map(str::to_owned),
        }
    }

    fn e(exp: u64) -> Entry {
        Entry {
            token: Arc::new(Secret::new("tok")),
            expires_at: UnixTime::from_secs(exp),
            skew: Duration::from_secs(60),
            scopes: None,
            resource: None,
            row_id: "r".into(),
            generation: 1,
        }
    }

    #[test]
    fn served_until_skew_then_removed_on_read() {
        let c = TokenCache::default();
        assert!(c.insert_if(&slot(Some("u")), e(1000), || true));
        assert!(matches!(
            c.get(&slot(Some("u")), UnixTime::from_secs(939)),
            Lookup::Hit(_)
        ));
        assert!(matches!(
            c.get(&slot(Some("u")), UnixTime::from_secs(940)),
            Lookup::Miss
        ));
        assert_eq!(c.len(), 0, "the stale entry was removed when read");
    }

    #[test]
    fn server_eviction_takes_shared_and_per_user_slots() {
        let c = TokenCache::default();
        c.insert_if(&slot(None), e(1000), || true);
        c.insert_if(&slot(Some("a")), e(1000), || true);
        let other = Slot {
            server: "other".into(),
            ..slot(None)
        };
        c.insert_if(&other, e(1000), || true);
        c.remove_server("t", "s");
        assert_eq!(c.len(), 1);
        assert!(c.contains(&other));
        assert!(!c.insert_if(&slot(None), e(1000), || false));
        assert!(!c.contains(&slot(None)));
    }
}
