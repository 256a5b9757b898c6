//! JWKS documents, cached per URL (R-RS-6, R-RS-7).
//!
//! * A document is reused for [`JwksOptions::ttl`] (10 minutes).
//! * A `kid` missing from a fresh document triggers one refetch that bypasses the cache,
//!   to pick up key rotation; such forced refetches happen at most once per
//!   [`JwksOptions::min_refetch_interval`] per URL, so a storm of random `kid`s cannot
//!   hammer the identity provider.
//! * Fetches for one URL are single-flighted: concurrent callers wait for the fetch in
//!   progress instead of starting their own.
//! * Any fetch failure (DNS, connect, timeout, redirect, non-2xx, oversized or malformed
//!   body) means "key unavailable", never "token invalid". Failures are remembered for
//!   the same interval so an outage is not retried on every request.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderValue;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use latchkey_core::{Clock, UnixTime};
use latchkey_egress::{Egress, EgressRequest, UrlSource};

use crate::error::UnavailableReason;

/// Largest JWKS document read.
pub const JWKS_BODY_LIMIT: usize = 256 * 1024;

/// Cache settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksOptions {
    /// How long a fetched document is used (default 10 minutes).
    pub ttl: Duration,
    /// Least time between two fetches of one URL once a document or a failure is cached
    /// (default 10 s). Bounds unknown-`kid` refetches and retries during an outage.
    pub min_refetch_interval: Duration,
    /// Timeout of one fetch (default 5 s).
    pub fetch_timeout: Duration,
}

impl Default for JwksOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(600),
            min_refetch_interval: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Default)]
struct Slot {
    keys: Option<Arc<Vec<Jwk>>>,
    fetched_at: Option<UnixTime>,
    last_attempt: Option<UnixTime>,
    last_failed: bool,
}

impl Slot {
    fn find(&self, kid: &str) -> Option<Jwk> {
        self.keys
            .as_ref()?
            .iter()
            .find(|k| k.common.key_id.as_deref() == Some(kid))
            .cloned()
    }
}

/// JWKS documents by URL. Shared by every verifier of the process (cheap to share
/// behind an `Arc`).
pub struct JwksCache {
    egress: Egress,
    clock: Arc<dyn Clock>,
    opts: JwksOptions,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

impl fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksCache")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl JwksCache {
    /// A cache fetching through `egress` (operator URLs) and reading time from `clock`.
    pub fn new(egress: Egress, clock: Arc<dyn Clock>, opts: JwksOptions) -> Self {
        Self {
            egress,
            clock,
            opts,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, url: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(url.to_owned()).or_default().clone()
    }

    /// The key with `kid` from the JWKS at `url`: `Ok(None)` when the document (fresh,
    /// or refetched within the rate limit) has no such key, `Err` when no document could
    /// be obtained.
    pub async fn key(&self, url: &str, kid: &str) -> Result<Option<Jwk>, UnavailableReason> {
        let slot = self.slot(url);
        // Held across the fetch: this is the single flight.
        let mut slot = slot.lock().await;
        let now = self.clock.now();
        let fresh = slot.keys.is_some()
            && slot
                .fetched_at
                .is_some_and(|t| now.since(t) < self.opts.ttl);
        if fresh && let Some(k) = slot.find(kid) {
            return Ok(Some(k));
        }
        let rate_limited = slot
            .last_attempt
            .is_some_and(|t| now.since(t) < self.opts.min_refetch_interval);
        if rate_limited {
            return if slot.last_failed {
                Err(UnavailableReason::Jwks)
            } else {
                Ok(slot.find(kid))
            };
        }
        slot.last_attempt = Some(now);
        match self.fetch(url).await {
            Ok(keys) => {
                tracing::debug!(event = "guard.jwks.fetched", keys = keys.len());
                slot.keys = Some(Arc::new(keys));
                slot.fetched_at = Some(now);
                slot.last_failed = false;
                Ok(slot.find(kid))
            }
            Err(why) => {
                tracing::warn!(event = "guard.jwks.unavailable", reason = %why);
                slot.last_failed = true;
                Err(UnavailableReason::Jwks)
            }
        }
    }

    /// Drops every cached document (tests, configuration reload).
    pub fn clear(&self) {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    async fn fetch(&self, url: &str) -> Result<Vec<Jwk>, String> {
        let req = EgressRequest::get(url, UrlSource::Operator, JWKS_BODY_LIMIT)
            .header(
                http::header::ACCEPT,
                HeaderValue::from_static("application/jwk-set+json, application/json"),
            )
            .with_timeout(self.opts.fetch_timeout);
        let resp = self.egress.send(req).await.map_err(|e| e.to_string())?;
        if !resp.status.is_success() {
            return Err(format!("HTTP {}", resp.status.as_u16()));
        }
        parse_jwks(&resp.body)
    }
}

/// The signing keys of a JWKS document: entries that do not parse as a JWK, have no
/// `kid` or are marked for encryption are skipped; a body that is not a JSON object
/// with a `keys` array is an error.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<Jwk>, String> {
    #[derive(serde::Deserialize)]
    struct Raw {
        keys: Vec<serde_json::Value>,
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|e| format!("malformed JWKS: {e}"))?;
    Ok(raw
        .keys
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
        .filter(|k| k.common.key_id.as_deref().is_some_and(|id| !id.is_empty()))
        .filter(|k| {
            !matches!(
                k.common.public_key_use,
                Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_skips_unusable_entries() {
        let body = br#"{"keys":[
            {"kty":"RSA","kid":"a","n":"AQAB","e":"AQAB"},
            {"kty":"RSA","n":"AQAB","e":"AQAB"},
            {"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"},
            {"kty":"OKP","kid":"ed","crv":"Ed25519","x":"AQAB","use":"sig"},
            "garbage"
        ]}"#;
        let keys = parse_jwks(body).unwrap();
        let kids: Vec<_> = keys
            .iter()
            .filter_map(|k| k.common.key_id.as_deref())
            .collect();
        assert_eq!(kids, vec!["a", "ed"]);
        assert!(parse_jwks(b"<html>").is_err());
        assert!(parse_jwks(br#"{"nokeys":[]}"#).is_err());
    }
}
