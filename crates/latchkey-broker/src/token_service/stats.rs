//! Counters the gateway exports as metrics: plain atomics, no metrics facade here.

use std::sync::atomic::{AtomicU64, Ordering};

use super::TokenError;

/// A snapshot of the token service's counters (monotonic since start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenStats {
    /// Calls answered from the in-memory cache.
    pub cache_hits: u64,
    /// Calls answered with a still-valid access token persisted in the store
    /// (R-REFRESH-11, R-MULTI-4), without a grant.
    pub store_hits: u64,
    /// Refresh grants sent (retries included), and client credentials grants renewing a
    /// credential minted with that grant.
    pub grants_started: u64,
    /// Those grants that returned tokens.
    pub grants_succeeded: u64,
    /// Second grants after an `invalid_grant` when a peer had changed the row (R-REFRESH-5).
    pub rotation_retries: u64,
    /// Write-backs that matched no row (deleted or replaced meanwhile; R-STORE-9).
    pub write_backs_lost: u64,
    /// Write-backs that failed (sealing or database); the token was still returned.
    pub write_backs_failed: u64,
    /// Refreshes made without the cross-instance lease because the wait ran out.
    pub lease_timeouts: u64,
    /// Credentials marked as needing consent after the authorization server refused
    /// them (no grant is sent with them again).
    pub consent_lost: u64,
    /// Failures: [`TokenError::NotConnected`].
    pub not_connected: u64,
    /// Failures: [`TokenError::ReauthRequired`].
    pub reauth_required: u64,
    /// Failures: [`TokenError::EncryptionKeyMissing`].
    pub encryption_key_missing: u64,
    /// Failures: [`TokenError::Upstream`].
    pub upstream_failures: u64,
    /// Failures: [`TokenError::Misconfigured`].
    pub misconfigured: u64,
    /// Failures: [`TokenError::Store`].
    pub store_failures: u64,
    /// Failures: [`TokenError::RefreshPending`] (a caller's wait for a slow grant ran
    /// out; the grant went on in the background).
    pub refresh_pending: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) cache_hits: AtomicU64,
    pub(crate) store_hits: AtomicU64,
    pub(crate) grants_started: AtomicU64,
    pub(crate) grants_succeeded: AtomicU64,
    pub(crate) rotation_retries: AtomicU64,
    pub(crate) write_backs_lost: AtomicU64,
    pub(crate) write_backs_failed: AtomicU64,
    pub(crate) lease_timeouts: AtomicU64,
    pub(crate) consent_lost: AtomicU64,
    not_connected: AtomicU64,
    reauth_required: AtomicU64,
    encryption_key_missing: AtomicU64,
    upstream_failures: AtomicU64,
    misconfigured: AtomicU64,
    store_failures: AtomicU64,
    refresh_pending: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn failure(&self, e: &TokenError) {
        bump(match e {
            TokenError::NotConnected => &self.not_connected,
            TokenError::ReauthRequired(_) => &self.reauth_required,
            TokenError::EncryptionKeyMissing => &self.encryption_key_missing,
            TokenError::Upstream { .. } => &self.upstream_failures,
            TokenError::Misconfigured(_) => &self.misconfigured,
            TokenError::Store(_) => &self.store_failures,
            TokenError::RefreshPending => &self.refresh_pending,
        });
    }

    pub(crate) fn snapshot(&self) -> TokenStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TokenStats {
            cache_hits: g(&self.cache_hits),
            store_hits: g(&self.store_hits),
            grants_started: g(&self.grants_started),
            grants_succeeded: g(&self.grants_succeeded),
            rotation_retries: g(&self.rotation_retries),
            write_backs_lost: g(&self.write_backs_lost),
            lease_timeouts: g(&self.lease_timeouts),
            consent_lost: g(&self.consent_lost),
            write_backs_failed: g(&self.write_backs_failed),
            not_connected: g(&self.not_connected),
            reauth_required: g(&self.reauth_required),
            encryption_key_missing: g(&self.encryption_key_missing),
            upstream_failures: g(&self.upstream_failures),
            misconfigured: g(&self.misconfigured),
            store_failures: g(&self.store_failures),
            refresh_pending: g(&self.refresh_pending),
        }
    }
}
