//! Latchkey API keys, presented only on the `Token` scheme (R-RS-2, A22).
//!
//! A key is `lk_` followed by 32 random bytes in base64url. Only its SHA-256 is stored;
//! the plaintext is shown once, when minted. Lookups compare hashes in constant time.

use std::fmt;
use std::sync::RwLock;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use latchkey_core::Secret;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{GuardError, InvalidReason, UnavailableReason};
use crate::principal::{AuthSource, Principal};

/// Every Latchkey API key starts with this.
pub const API_KEY_PREFIX: &str = "lk_";

/// Random bytes in a key.
const KEY_BYTES: usize = 32;

/// The SHA-256 of an API key: what the store keeps.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApiKeyHash([u8; 32]);

impl ApiKeyHash {
    /// The hash of `key`.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// From raw bytes (as stored).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// From 64 hex digits (as stored).
    pub fn from_hex(hex_digits: &str) -> Result<Self, hex::FromHexError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut out)?;
        Ok(Self(out))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, for storage.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &[u8; 32]) -> bool {
        self.0.ct_eq(other).into()
    }
}

impl fmt::Debug for ApiKeyHash {
    /// A short prefix only: enough to correlate, useless for anything else.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeyHash({}…)", &self.to_hex()[..8])
    }
}

/// A freshly minted key: show `key` to its owner once, store `hash`.
#[derive(Debug, Clone)]
pub struct MintedApiKey {
    /// The plaintext key (`lk_…`).
    pub key: Secret,
    /// Its hash.
    pub hash: ApiKeyHash,
}

/// Mints a new key from the operating system's random source.
pub fn mint_api_key() -> MintedApiKey {
    let mut bytes = [0u8; KEY_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let key = Secret::new(format!("{API_KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)));
    zeroize::Zeroize::zeroize(&mut bytes);
    let hash = ApiKeyHash::of(key.expose());
    MintedApiKey { key, hash }
}

/// Whether `key` has the shape of a Latchkey API key (no store lookup).
pub fn looks_like_api_key(key: &str) -> bool {
    key.strip_prefix(API_KEY_PREFIX).is_some_and(|rest| {
        rest.len() >= 16
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// The store could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("API key store failed: {0}")]
pub struct ApiKeyStoreError(pub String);

/// Where API key hashes and their principals live.
#[async_trait]
pub trait ApiKeyStore: Send + Sync + fmt::Debug {
    /// The principal of the key whose SHA-256 is `hash`, if any. Implementations must
    /// compare hashes in constant time.
    async fn lookup(&self, hash: &[u8; 32]) -> Result<Option<Principal>, ApiKeyStoreError>;
}

/// An in-memory store (tests, single-process deployments).
#[derive(Debug, Default)]
pub struct InMemoryApiKeyStore {
    entries: RwLock<Vec<(ApiKeyHash, Principal)>>,
}

impl InMemoryApiKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the key with `hash`.
    pub fn insert(&self, hash: ApiKeyHash, principal: Principal) {
        let mut e = self.entries.write().unwrap_or_else(|p| p.into_inner());
        e.retain(|(h, _)| *h != hash);
        e.push((hash, principal));
    }

    /// Removes the key with `hash`; true if it was present.
    pub fn revoke(&self, hash: &ApiKeyHash) -> bool {
        let mut e = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let before = e.len();
        e.retain(|(h, _)| h != hash);
        e.len() != before
    }
}

#[async_trait]
impl ApiKeyStore for InMemoryApiKeyStore {
    async fn lookup(&self, hash: &[u8; 32]) -> Result<Option<Principal>, ApiKeyStoreError> {
        let e = self.entries.read().unwrap_or_else(|p| p.into_inner());
        // Every entry is compared, so the time taken does not depend on where (or
        // whether) the key is found.
        let mut found = None;
        for (h, p) in e.iter() {
            if h.ct_eq(hash) {
                found = Some(p.clone());
            }
        }
        Ok(found)
    }
}

/// Authenticates an API key against `store`.
pub async fn authenticate(store: &dyn ApiKeyStore, key: &str) -> Result<Principal, GuardError> {
    if !looks_like_api_key(key) {
        return Err(InvalidReason::UnknownApiKey.into());
    }
    let hash = ApiKeyHash::of(key);
    match store.lookup(hash.as_bytes()).await {
        Ok(Some(mut p)) => {
            p.source = AuthSource::ApiKey;
            Ok(p)
        }
        Ok(None) => Err(InvalidReason::UnknownApiKey.into()),
        Err(e) => {
            tracing::error!(event = "guard.api_key.store_failed", error = %e);
            Err(UnavailableReason::ApiKeyStore.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::{SubjectId, TenantId};

    #[test]
    fn minted_keys_are_unique_prefixed_and_hashed() {
        let a = mint_api_key();
        let b = mint_api_key();
        assert!(a.key.expose().starts_with("lk_"));
        assert_eq!(a.key.expose().len(), 3 + 43);
        assert!(looks_like_api_key(a.key.expose()));
        assert_ne!(a.key, b.key);
        assert_eq!(a.hash, ApiKeyHash::of(a.key.expose()));
        assert_eq!(ApiKeyHash::from_hex(&a.hash.to_hex()).unwrap(), a.hash);
        assert!(!format!("{a:?}").contains(a.key.expose()));
        assert!(!format!("{:?}", a.hash).contains(&a.hash.to_hex()));
    }

    #[tokio::test]
    async fn store_round_trip() {
        let store = InMemoryApiKeyStore::new();
        let k = mint_api_key();
        let p = Principal::new(
            TenantId::new("t").unwrap(),
            SubjectId::new("s").unwrap(),
            AuthSource::Local,
        );
        store.insert(k.hash, p);
        let got = authenticate(&store, k.key.expose()).await.unwrap();
        assert_eq!(got.source, AuthSource::ApiKey);
        assert_eq!(
            authenticate(&store, "lk_not-a-known-key-at-all").await,
            Err(GuardError::Invalid(InvalidReason::UnknownApiKey))
        );
        assert_eq!(
            authenticate(&store, "opaque").await,
            Err(GuardError::Invalid(InvalidReason::UnknownApiKey))
        );
        assert!(store.revoke(&k.hash));
        assert!(authenticate(&store, k.key.expose()).await.is_err());
    }
}
