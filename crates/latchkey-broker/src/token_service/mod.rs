//! The token service: an access token for a slot, from memory, from the store, or from
//! a refresh grant (R-REFRESH-1..17).
//!
//! The path of [`TokenService::access_token`]:
//! 1. **Cache** (R-REFRESH-1, R-REFRESH-15): a hit while `now < expires_at − skew`
//!    (the skew at most half the token's lifetime, so short-lived tokens are served),
//!    under a shared lock that is never held across an await; stale entries go on read.
//! 2. **Slot lock** (R-REFRESH-3): one FIFO async mutex per slot; the cache is checked
//!    again once it is held, so waiters reuse their predecessor's token.
//! 3. **Row** (R-REFRESH-4): loaded inside the lock; a still-valid persisted access
//!    token is reused before any grant (R-REFRESH-11, R-MULTI-4).
//! 4. **Refresh** (R-REFRESH-2, R-REFRESH-17): the refresh token and client secret are
//!    decrypted from the row just before the request and dropped (zeroized) after it.
//!    A credential minted with the client credentials grant (`grant_type`) is renewed
//!    with that grant instead; a credential the authorization server refused
//!    (`invalid_grant` after the re-read, `invalid_client`, `unauthorized_client`) is
//!    marked as needing consent and never sent again.
//!    `invalid_grant` re-reads the row and retries once if a peer changed it
//!    (R-REFRESH-5), writing back against the re-read row (R-REFRESH-6).
//! 5. **Write-back** (R-REFRESH-10, R-STORE-9): new tokens sealed to the row id, then a
//!    compare-and-swap on `(id, generation)` that never inserts. Best-effort: a failure
//!    is logged and the caller still gets its token.
//! 6. **Cache fill** guarded by the slot's eviction epoch (R-REFRESH-14): a refresh that
//!    started before an eviction does not repopulate the cache.
//!
//! 4a. **Lease** (R-MULTI-1, when configured): before a grant, the slot's lease row in
//!    the database, so several instances make one grant per expiry ([`lease`]); a
//!    waiter takes the token its peer persisted.
//!
//! Steps 4a to 6 (the *flight*) run in a task of their own that owns the slot lock: a
//! refresh grant once sent is never abandoned (a rotating authorization server that
//! completes it after the client gave up would see the old refresh token again and
//! revoke the family). The grant is awaited up to
//! [`TokenServiceOptions::refresh_deadline`] (120 s), its tokens written back whenever
//! they arrive, and the lease kept by its watchdog meanwhile so peers wait for it. A
//! caller waits at most [`TokenServiceOptions::caller_timeout`] (its egress request
//! timeout, 15 s) and then gets [`TokenError::RefreshPending`]; callers arriving
//! meanwhile queue on the slot lock the task holds, within the same timeout, and take
//! its token from the cache once it is done.
//!
//! `force_refresh` (R-REFRESH-16, after an upstream 401) skips the cache and the
//! persisted token but still queues on the slot lock; if the row changed since the
//! caller's view (a predecessor or a peer refreshed meanwhile) the fresh token is
//! reused instead of refreshing twice.
//!
//! A4: a token response without `expires_in` is treated as living
//! [`TokenServiceOptions::default_token_ttl`] (300 s by default; zero means it is never
//! served from cache or store). That expiry is what is cached and persisted. A persisted
//! access token without an expiry is likewise taken to expire `default_token_ttl` after
//! the row's `updated_at`.

mod cache;
mod error;
mod flight;
mod lease;
mod stats;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use latchkey_core::{Clock, Secret, UnixTime};
use latchkey_egress::{Egress, UrlSource};
use latchkey_oauth::client_auth::{AuthMethod, ClientCredentials};
use latchkey_oauth::grants::{Grant, Refreshed, TokenRequest, refresh, request_token};
use latchkey_vault::{CredentialRow, Keyring, Slot, Store, WriteBack};

pub use error::{ReauthReason, TokenError};
pub use lease::LeaseOptions;
pub use stats::TokenStats;

use cache::{Entry, Lookup, TokenCache};
use flight::{Flights, Ticket};
use stats::{Counters, bump};

/// The default skew (R-REFRESH-1).
pub const DEFAULT_SKEW: Duration = Duration::from_secs(60);
/// The default lifetime of a token whose response had no `expires_in` (A4).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);
/// How long a refresh grant once sent is awaited by default.
pub const DEFAULT_REFRESH_DEADLINE: Duration = Duration::from_secs(120);

/// Token service settings.
#[derive(Debug, Clone)]
pub struct TokenServiceOptions {
    /// A token is served while `now < expires_at − skew` (default 60 s).
    pub skew: Duration,
    /// Lifetime assumed for a token without `expires_in` (A4; default 300 s).
    pub default_token_ttl: Duration,
    /// Egress policy for stored token endpoints (default [`UrlSource::Remote`]: they
    /// were learned from AS metadata).
    pub token_endpoint_source: UrlSource,
    /// The cross-instance refresh lease (R-MULTI-1); `None` (the default) for a store
    /// only one instance uses.
    pub lease: Option<LeaseOptions>,
    /// How long a refresh grant, once sent, is awaited in the background (default
    /// 120 s): the token endpoint's request timeout for refreshes. A rotated token that
    /// arrives within it is written back although every caller has given up.
    pub refresh_deadline: Duration,
    /// How long a caller waits for its slot's refresh before it gets
    /// [`TokenError::RefreshPending`]; `None` (the default): the egress client's request
    /// timeout.
    pub caller_timeout: Option<Duration>,
}

impl Default for TokenServiceOptions {
    fn default() -> Self {
        Self {
            skew: DEFAULT_SKEW,
            default_token_ttl: DEFAULT_TOKEN_TTL,
            token_endpoint_source: UrlSource::Remote,
            lease: None,
            refresh_deadline: DEFAULT_REFRESH_DEADLINE,
            caller_timeout: None,
        }
    }
}

/// An access token for a slot. `Debug` shows no token.
#[derive(Debug, Clone)]
pub struct AccessToken {
    /// The bearer token (shared with the cache: a cache hit copies no token).
    pub token: Arc<Secret>,
    /// When it expires (for a token without `expires_in`, the A4 default).
    pub expires_at: Option<UnixTime>,
    /// Its scopes: as granted, else as stored.
    pub scopes: Option<Arc<str>>,
    /// The resource (RFC 8707) it was issued for, as stored with the credential: a
    /// caller injects it only into that resource ([`AccessToken::issued_for`]).
    pub resource: Option<Arc<str>>,
}

impl AccessToken {
    /// Whether this token may be sent to the MCP server at `server_url`: it was issued
    /// for that server's resource (the URL itself, or the protected resource it lies
    /// under: same origin, whole path segments). A token with no recorded resource is
    /// sent nowhere.
    pub fn issued_for(&self, server_url: &str) -> bool {
        self.resource.as_deref().is_some_and(|r| {
            r == server_url || latchkey_oauth::prm::resource_matches(r, server_url)
        })
    }
}

/// Per-slot access tokens with caching, single-flight refresh and eviction.
pub struct TokenService {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    /// For refresh grants: the caller's egress with [`TokenServiceOptions::refresh_deadline`]
    /// as its request timeout.
    egress: Egress,
    clock: Arc<dyn Clock>,
    opts: Arc<TokenServiceOptions>,
    /// [`TokenServiceOptions::caller_timeout`], resolved.
    caller_timeout: Duration,
    cache: Arc<TokenCache>,
    flights: Arc<Flights>,
    counters: Arc<Counters>,
    /// Slots whose credential was just marked as needing consent (see
    /// [`TokenService::consent_lost`]).
    consent_lost: tokio::sync::broadcast::Sender<Slot>,
}

impl fmt::Debug for TokenService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenService")
            .field("store", &self.store)
            .field("opts", &self.opts)
            .field("cached", &self.cache.len())
            .field("in_flight", &self.flights.len())
            .finish_non_exhaustive()
    }
}

/// The column names of the credential table's sealed values (AAD convention).
const ACCESS_TOKEN: &str = "access_token";
const REFRESH_TOKEN: &str = "refresh_token";
const CLIENT_SECRET: &str = "client_secret";
/// [`CredentialRow::grant_type`] of a credential renewed with the client credentials
/// grant.
const CLIENT_CREDENTIALS: &str = "client_credentials";

impl TokenService {
    /// A token service over `store`, sealing with `keyring`, granting through `egress`
    /// and reading time from `clock`.
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        egress: Egress,
        clock: Arc<dyn Clock>,
        opts: TokenServiceOptions,
    ) -> Self {
        let caller_timeout = opts
            .caller_timeout
            .unwrap_or(egress.config().request_timeout);
        let egress = Egress::new(latchkey_egress::EgressConfig {
            request_timeout: opts.refresh_deadline,
            ..egress.config().clone()
        })
        .unwrap_or_else(|e| {
            // Grants then time out with the caller; the lease and re-read still hold.
            tracing::error!(event = "token.grant_client_failed", error = %e);
            egress
        });
        Self {
            store,
            keyring,
            egress,
            clock,
            opts: Arc::new(opts),
            caller_timeout,
            cache: Arc::default(),
            flights: Arc::default(),
            counters: Arc::default(),
            consent_lost: tokio::sync::broadcast::channel(64).0,
        }
    }

    /// The same service (shared caches, flights and counters), for a task of its own.
    fn share(&self) -> Self {
        Self {
            store: self.store.clone(),
            keyring: self.keyring.clone(),
            egress: self.egress.clone(),
            clock: self.clock.clone(),
            opts: self.opts.clone(),
            caller_timeout: self.caller_timeout,
            cache: self.cache.clone(),
            flights: self.flights.clone(),
            counters: self.counters.clone(),
            consent_lost: self.consent_lost.clone(),
        }
    }

    /// The slots whose credential this instance has just marked as needing consent (the
    /// authorization server refused it): the gateway announces them, so every instance
    /// drops what it cached. A lagging receiver misses some; each instance still reads
    /// the mark from the row once its cached token expires.
    pub fn consent_lost(&self) -> tokio::sync::broadcast::Receiver<Slot> {
        self.consent_lost.subscribe()
    }

    /// An access token for `slot`. With `force_refresh` (after an upstream 401) the
    /// cached and persisted tokens are skipped unless the row changed since the token
    /// this caller last saw.
    pub async fn access_token(
        &self,
        slot: &Slot,
        force_refresh: bool,
    ) -> Result<AccessToken, TokenError> {
        if !force_refresh && let Some(t) = self.cached(slot) {
            return Ok(t);
        }
        // The refresh path's future is several kilobytes; boxed, it is allocated on a
        // miss only, and every caller's own future stays small.
        let r = Box::pin(self.resolve(slot, force_refresh)).await;
        if let Err(e) = &r {
            self.counters.failure(e);
            tracing::debug!(
                event = "token.failure",
                tenant = %slot.tenant,
                server = %slot.server,
                kind = e.kind(),
                error = %e,
            );
        }
        r
    }

    /// Drops the slot's cached token and bumps its eviction epoch, synchronously
    /// (R-REFRESH-13, R-REFRESH-14): deposit, re-authorization, delete, revoke.
    pub fn evict(&self, slot: &Slot) {
        self.flights.bump(slot);
        self.cache.remove(slot);
    }

    /// [`TokenService::evict`] for every slot of a server: shared and per user.
    pub fn evict_server(&self, tenant: &str, server: &str) {
        self.flights.bump_server(tenant, server);
        self.cache.remove_server(tenant, server);
    }

    /// [`TokenService::evict`] for every slot.
    pub fn evict_all(&self) {
        self.flights.bump_all();
        self.cache.clear();
    }

    /// Whether the slot has a cached token (fresh or not); for diagnostics and tests.
    pub fn is_cached(&self, slot: &Slot) -> bool {
        self.cache.contains(slot)
    }

    /// The counters so far.
    pub fn stats(&self) -> TokenStats {
        self.counters.snapshot()
    }

    /// The slot's cached token while it is fresh (counted as a hit).
    fn cached(&self, slot: &Slot) -> Option<AccessToken> {
        match self.cache.get(slot, self.clock.now()) {
            Lookup::Hit(t) => {
                bump(&self.counters.cache_hits);
                Some(t)
            }
            Lookup::Miss => None,
        }
    }

    async fn resolve(&self, slot: &Slot, force: bool) -> Result<AccessToken, TokenError> {
        let deadline = tokio::time::Instant::now() + self.caller_timeout;
        // The version of the token a forcing caller was given (the one that got a 401).
        let view = if force {
            self.cache.version(slot)
        } else {
            None
        };

        let ticket = self.flights.join(slot);
        let refreshes_before = ticket.flight.refreshes();
        let failures_before = ticket.flight.failures();
        // Behind a flight still running (a slow grant) a caller waits only so long.
        let held = tokio::time::timeout_at(deadline, ticket.flight.lock.clone().lock_owned())
            .await
            .map_err(|_| self.pending(slot))?;
        let epoch = ticket.flight.epoch();
        let predecessor_refreshed = ticket.flight.refreshes() != refreshes_before;
        if !predecessor_refreshed
            && ticket.flight.failures() != failures_before
            && let Some(e) = ticket.flight.last_failure()
        {
            return Err(e);
        }

        if (!force || predecessor_refreshed)
            && let Some(t) = self.cached(slot)
        {
            return Ok(t);
        }

        let row = self
            .store
            .get_credential(slot)
            .await?
            .ok_or(TokenError::NotConnected)?;
        // Refused by the authorization server: nothing is sent with it until consent.
        if let Some(reason) = refused(&row) {
            return Err(TokenError::ReauthRequired(reason));
        }

        let row_moved = view
            .as_ref()
            .is_some_and(|(id, generation)| *id != row.id || *generation != row.generation);
        if (!force || predecessor_refreshed || row_moved)
            && let Some(t) = self.persisted(slot, &row, &ticket, epoch)?
        {
            return Ok(t);
        }
        // The flight runs on its own, holding the slot lock, so a grant once sent is
        // awaited (and its rotated token written back) even when this caller goes.
        let flight = tokio::spawn(
            self.share()
                .fly(slot.clone(), row, ticket.share(), held, epoch),
        );
        match tokio::time::timeout_at(deadline, flight).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(TokenError::Upstream {
                retryable: true,
                detail: format!("the refresh task failed: {e}"),
            }),
            Err(_) => Err(self.pending(slot)),
        }
    }

    /// The flight: lease, refresh grant with rotation recovery, write-back and cache
    /// fill, holding the slot lock (`_held`) and a ticket until it is done.
    async fn fly(
        self,
        slot: Slot,
        row: CredentialRow,
        ticket: Ticket,
        _held: tokio::sync::OwnedMutexGuard<()>,
        epoch: u64,
    ) -> Result<AccessToken, TokenError> {
        let r = match self.lease(&slot, &row, &ticket, epoch).await? {
            Leased::Peer(t) => Ok(t),
            Leased::NotHeld => self.refresh(&slot, row, &ticket, epoch).await,
            Leased::Held(held) => {
                let r = self.refresh_leased(&slot, row, &ticket, epoch).await;
                held.release().await;
                r
            }
        };
        if let Err(e @ TokenError::Upstream { .. }) = &r {
            ticket.flight.failed(e);
        }
        r
    }

    /// A caller's wait for its slot's flight ran out.
    fn pending(&self, slot: &Slot) -> TokenError {
        tracing::info!(event = "token.refresh_pending", tenant = %slot.tenant, server = %slot.server);
        TokenError::RefreshPending
    }

    /// Waits for the slot's lease (R-MULTI-1). A peer's token persisted meanwhile is
    /// taken instead; no lease is configured, or the wait ran out: refresh without one.
    async fn lease(
        &self,
        slot: &Slot,
        row: &CredentialRow,
        ticket: &Ticket,
        epoch: u64,
    ) -> Result<Leased, TokenError> {
        let Some(lo) = &self.opts.lease else {
            return Ok(Leased::NotHeld);
        };
        let holder = format!("{}:{}", lo.instance, latchkey_vault::store::new_id());
        // A holder keeps its lease while its grant is awaited, up to the refresh
        // deadline: wait that long before failing open, or a slow grant's old refresh
        // token would be presented again.
        let wait = lo.wait.max(self.opts.refresh_deadline + lo.ttl);
        let started = tokio::time::Instant::now();
        loop {
            let now = self.clock.now();
            if self
                .store
                .try_lease(
                    slot,
                    &holder,
                    lease::secs(now),
                    lease::secs(now.plus(lo.ttl)),
                )
                .await?
            {
                return Ok(Leased::Held(lease::Held::start(
                    self.store.clone(),
                    self.clock.clone(),
                    slot.clone(),
                    holder,
                    lo.ttl,
                )));
            }
            if started.elapsed() >= wait {
                bump(&self.counters.lease_timeouts);
                tracing::warn!(event = "token.lease_wait_exceeded", tenant = %slot.tenant, server = %slot.server);
                return Ok(Leased::NotHeld);
            }
            tokio::time::sleep(lo.poll).await;
            if let (_, Some(t)) = self.peer_refreshed(slot, row, ticket, epoch).await? {
                return Ok(Leased::Peer(t));
            }
        }
    }

    /// The slot's row read again, and the token a peer persisted since `row` was read
    /// (the row moved and holds a valid access token), if any.
    async fn peer_refreshed(
        &self,
        slot: &Slot,
        row: &CredentialRow,
        ticket: &Ticket,
        epoch: u64,
    ) -> Result<(CredentialRow, Option<AccessToken>), TokenError> {
        let now_row = self
            .store
            .get_credential(slot)
            .await?
            .ok_or(TokenError::NotConnected)?;
        let moved = now_row.id != row.id || now_row.generation != row.generation;
        let t = if moved {
            self.persisted(slot, &now_row, ticket, epoch)?
        } else {
            None
        };
        if t.is_some() {
            tracing::debug!(event = "token.peer_refreshed", tenant = %slot.tenant, server = %slot.server);
        }
        Ok((now_row, t))
    }

    /// The refresh under a lease: the row is read again first, since a peer may have
    /// refreshed between our read and our lease.
    async fn refresh_leased(
        &self,
        slot: &Slot,
        row: CredentialRow,
        ticket: &Ticket,
        epoch: u64,
    ) -> Result<AccessToken, TokenError> {
        match self.peer_refreshed(slot, &row, ticket, epoch).await? {
            (_, Some(t)) => Ok(t),
            (now_row, None) => self.refresh(slot, now_row, ticket, epoch).await,
        }
    }

    /// The row's access token if it is still valid (R-REFRESH-11), cached on the way.
    fn persisted(
        &self,
        slot: &Slot,
        row: &CredentialRow,
        ticket: &Ticket,
        epoch: u64,
    ) -> Result<Option<AccessToken>, TokenError> {
        let Some(envelope) = row.access_token.as_deref() else {
            return Ok(None);
        };
        // The row was written when its access token was obtained.
        let obtained = UnixTime::from_secs(u64::try_from(row.updated_at).unwrap_or(0));
        let expires_at = match row.access_expires_at {
            Some(e) => UnixTime::from_secs(u64::try_from(e).unwrap_or(0)),
            None => obtained.plus(self.opts.default_token_ttl),
        };
        let skew = self.skew_for(obtained, expires_at);
        if self.clock.now() >= expires_at.minus(skew) {
            return Ok(None);
        }
        let token = self.open(envelope, ACCESS_TOKEN, row)?;
        let t = AccessToken {
            token: Arc::new(token),
            expires_at: Some(expires_at),
            scopes: row.scopes.as_deref().map(Arc::from),
            resource: row.resource.as_deref().map(Arc::from),
        };
        self.fill(slot, &t, skew, (&row.id, row.generation), ticket, epoch);
        bump(&self.counters.store_hits);
        tracing::debug!(event = "token.store_hit", tenant = %slot.tenant, server = %slot.server, row = %row.id);
        Ok(Some(t))
    }

    /// How long before `expires_at` a token obtained at `obtained` stops being served:
    /// the configured skew (R-REFRESH-1), but at most half the token's lifetime. A token
    /// that lives no longer than the skew (an authorization server issuing 30 s tokens)
    /// would otherwise never be served at all, and every call would make a grant.
    fn skew_for(&self, obtained: UnixTime, expires_at: UnixTime) -> Duration {
        self.opts.skew.min(expires_at.since(obtained) / 2)
    }

    /// Caches `t` (served until `skew` before it expires) under the credential row
    /// `(id, generation)`, unless the slot was evicted since `epoch` was read.
    fn fill(
        &self,
        slot: &Slot,
        t: &AccessToken,
        skew: Duration,
        (row_id, generation): (&str, i64),
        ticket: &Ticket,
        epoch: u64,
    ) -> bool {
        let Some(expires_at) = t.expires_at else {
            return false;
        };
        let entry = Entry {
            token: t.token.clone(),
            expires_at,
            skew,
            scopes: t.scopes.clone(),
            resource: t.resource.clone(),
            row_id: row_id.to_owned(),
            generation,
        };
        let filled = self
            .cache
            .insert_if(slot, entry, || ticket.flight.epoch() == epoch);
        if !filled {
            tracing::debug!(event = "token.cache_skipped_after_eviction", tenant = %slot.tenant, server = %slot.server);
        }
        filled
    }

    /// The refresh grant with rotation recovery, then the write-back.
    async fn refresh(
        &self,
        slot: &Slot,
        row: CredentialRow,
        ticket: &Ticket,
        epoch: u64,
    ) -> Result<AccessToken, TokenError> {
        if let Some(reason) = refused(&row) {
            return Err(TokenError::ReauthRequired(reason));
        }
        if row.grant_type.as_deref() == Some(CLIENT_CREDENTIALS) {
            return match self.mint(&row).await {
                Ok(r) => Ok(self.finish(slot, &row, r, ticket, epoch).await),
                Err(TokenError::ReauthRequired(reason))
                    if reason != ReauthReason::Undecryptable =>
                {
                    Err(self.refused_by_as(slot, &row, reason).await)
                }
                Err(e) => Err(e),
            };
        }
        if row.refresh_token.is_none() {
            // Expired (or absent) access token and nothing to refresh with (R-REFRESH-12).
            return Err(TokenError::NotConnected);
        }
        match self.grant(&row).await {
            Ok(r) => Ok(self.finish(slot, &row, r, ticket, epoch).await),
            Err(TokenError::ReauthRequired(ReauthReason::InvalidGrant)) => {
                // R-REFRESH-5: did a peer rotate (or replace) the credential meanwhile?
                let reread = self
                    .store
                    .get_credential(slot)
                    .await?
                    .ok_or(TokenError::NotConnected)?;
                let changed = reread.id != row.id
                    || reread.generation != row.generation
                    || reread.refresh_token != row.refresh_token;
                if !changed {
                    tracing::info!(event = "token.reauth_required", tenant = %slot.tenant, server = %slot.server, row = %row.id, reason = "invalid_grant");
                    return Err(self
                        .refused_by_as(slot, &row, ReauthReason::InvalidGrant)
                        .await);
                }
                if let Some(reason) = refused(&reread) {
                    // A peer found it dead meanwhile.
                    return Err(TokenError::ReauthRequired(reason));
                }
                // A peer that refreshed has persisted a token we can use as it is.
                if let Some(t) = self.persisted(slot, &reread, ticket, epoch)? {
                    return Ok(t);
                }
                if reread.refresh_token.is_none() {
                    return Err(TokenError::NotConnected);
                }
                bump(&self.counters.rotation_retries);
                tracing::info!(event = "token.rotation_retry", tenant = %slot.tenant, server = %slot.server, row = %reread.id, generation = reread.generation);
                let r = match self.grant(&reread).await {
                    Ok(r) => r,
                    Err(TokenError::ReauthRequired(reason))
                        if reason != ReauthReason::Undecryptable =>
                    {
                        return Err(self.refused_by_as(slot, &reread, reason).await);
                    }
                    Err(e) => return Err(e),
                };
                // R-REFRESH-6: write back against the re-read row, not the snapshot.
                Ok(self.finish(slot, &reread, r, ticket, epoch).await)
            }
            Err(TokenError::ReauthRequired(reason)) if reason != ReauthReason::Undecryptable => {
                // `invalid_client`, `unauthorized_client`: the client itself is refused.
                tracing::info!(event = "token.reauth_required", tenant = %slot.tenant, server = %slot.server, row = %row.id, reason = reason.as_str());
                Err(self.refused_by_as(slot, &row, reason).await)
            }
            Err(e) => Err(e),
        }
    }

    /// The authorization server refused `row` for good: it is marked as needing consent
    /// in the store (tokens cleared, compare-and-swap on `(id, generation)`, so a
    /// credential deposited meanwhile is left alone), dropped from this instance's cache
    /// and reported through [`TokenService::consent_lost`] for the other instances. No
    /// grant is sent with it again, here or on a peer, until a new consent replaces it.
    async fn refused_by_as(
        &self,
        slot: &Slot,
        row: &CredentialRow,
        reason: ReauthReason,
    ) -> TokenError {
        if reason == ReauthReason::InvalidClient {
            self.forget_client(slot, row).await;
        }
        let now = secs(self.clock.now());
        match self
            .store
            .mark_needs_consent(&slot.tenant, &row.id, row.generation, reason.as_str(), now)
            .await
        {
            Ok(true) => {
                bump(&self.counters.consent_lost);
                tracing::info!(event = "token.consent_lost", tenant = %slot.tenant, server = %slot.server, row = %row.id, reason = reason.as_str());
                self.evict(slot);
                // No receiver (a store only this instance uses) is fine.
                let _ = self.consent_lost.send(slot.clone());
            }
            Ok(false) => {
                tracing::debug!(event = "token.consent_lost_row_moved", tenant = %slot.tenant, server = %slot.server, row = %row.id);
            }
            Err(e) => {
                // The next caller's grant is refused again and marks it then.
                tracing::warn!(event = "token.consent_lost_unrecorded", tenant = %slot.tenant, server = %slot.server, row = %row.id, error = %e);
            }
        }
        TokenError::ReauthRequired(reason)
    }

    /// The authorization server no longer knows the row's client (`invalid_client`): if
    /// Latchkey registered it dynamically, that registration is dropped, so the next
    /// connect registers afresh instead of reusing a dead client id (R-REG-3, A10).
    /// Pre-registered and CIMD clients, and deposited ones, are left alone.
    async fn forget_client(&self, slot: &Slot, row: &CredentialRow) {
        let (Some(issuer), Some(client_id)) = (row.issuer.as_deref(), row.client_id.as_deref())
        else {
            return;
        };
        match self
            .store
            .forget_registered_client(&slot.tenant, &slot.server, issuer, client_id)
            .await
        {
            Ok(true) => {
                tracing::info!(event = "token.client_forgotten", tenant = %slot.tenant, server = %slot.server, issuer = %issuer, client_id = %client_id);
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(event = "token.client_forget_failed", tenant = %slot.tenant, server = %slot.server, error = %e);
            }
        }
    }

    /// One refresh grant from the stored row (R-REFRESH-2, R-REFRESH-17). The decrypted
    /// refresh token and client secret are dropped (zeroized) when this returns.
    async fn grant(&self, row: &CredentialRow) -> Result<Refreshed, TokenError> {
        let envelope = row
            .refresh_token
            .as_deref()
            .ok_or(TokenError::NotConnected)?;
        let refresh_token = self.open(envelope, REFRESH_TOKEN, row)?;
        let client = self.client(row)?;
        bump(&self.counters.grants_started);
        tracing::debug!(event = "token.refresh", tenant = %row.slot.tenant, server = %row.slot.server, row = %row.id, generation = row.generation);
        let req = TokenRequest {
            token_endpoint: &row.token_endpoint,
            source: self.opts.token_endpoint_source,
            issuer: row.issuer.as_deref().unwrap_or(&row.token_endpoint),
            grant: Grant::RefreshToken { refresh_token },
            client: client.as_ref(),
            resource: row.resource.as_deref(),
            scope: row.scopes.as_deref(),
            dpop: None,
            dpop_nonce: None,
            now: self.clock.now(),
        };
        let r = refresh(&self.egress, req).await?;
        bump(&self.counters.grants_succeeded);
        Ok(r)
    }

    /// A new access token for a credential minted with the client credentials grant
    /// (it has no refresh token): the same grant again, with the client stored in the
    /// row (its secret sealed to the row, so bound to its issuer and token endpoint).
    /// Only rows that [`CredentialRow::grant_type`] marks so; never a user's consent.
    async fn mint(&self, row: &CredentialRow) -> Result<Refreshed, TokenError> {
        let client = self
            .client(row)?
            .filter(|c| c.secret.is_some())
            .ok_or_else(|| {
                TokenError::Misconfigured(
                    "a client-credentials credential without a client secret".into(),
                )
            })?;
        bump(&self.counters.grants_started);
        tracing::debug!(event = "token.client_credentials", tenant = %row.slot.tenant, server = %row.slot.server, row = %row.id, generation = row.generation);
        let req = TokenRequest {
            token_endpoint: &row.token_endpoint,
            source: self.opts.token_endpoint_source,
            issuer: row.issuer.as_deref().unwrap_or(&row.token_endpoint),
            grant: Grant::ClientCredentials,
            client: Some(&client),
            resource: row.resource.as_deref(),
            scope: row.scopes.as_deref(),
            dpop: None,
            dpop_nonce: None,
            now: self.clock.now(),
        };
        let tokens = request_token(&self.egress, req).await?;
        bump(&self.counters.grants_succeeded);
        // Nothing to rotate: a refresh token in the answer is not kept.
        Ok(Refreshed {
            tokens,
            rotated: false,
        })
    }

    /// Client authentication from the row: id, decrypted secret, method.
    fn client(&self, row: &CredentialRow) -> Result<Option<ClientCredentials>, TokenError> {
        let Some(client_id) = row.client_id.as_deref() else {
            return Ok(None);
        };
        let secret = row
            .client_secret
            .as_deref()
            .map(|e| self.open(e, CLIENT_SECRET, row))
            .transpose()?;
        let method = match row.auth_method.as_deref() {
            Some(m) => m.parse::<AuthMethod>().map_err(TokenError::Misconfigured)?,
            None if secret.is_some() => AuthMethod::ClientSecretBasic,
            None => AuthMethod::None,
        };
        if method == AuthMethod::PrivateKeyJwt {
            return Err(TokenError::Misconfigured(
                "private_key_jwt credentials cannot be refreshed without a signing key".into(),
            ));
        }
        Ok(Some(ClientCredentials {
            client_id: client_id.to_owned(),
            secret,
            method,
            assertion_key: None,
        }))
    }

    /// Computes the expiry, writes back (best-effort, R-REFRESH-10) and fills the cache.
    async fn finish(
        &self,
        slot: &Slot,
        row: &CredentialRow,
        refreshed: Refreshed,
        ticket: &Ticket,
        epoch: u64,
    ) -> AccessToken {
        let now = self.clock.now();
        let tokens = refreshed.tokens;
        let lifetime = tokens
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(self.opts.default_token_ttl);
        let expires_at = now.plus(lifetime);
        let skew = self.skew_for(now, expires_at);
        let new_refresh = if refreshed.rotated {
            tokens.refresh_token
        } else {
            None
        };
        let t = AccessToken {
            token: Arc::new(tokens.access_token),
            expires_at: Some(expires_at),
            scopes: tokens.scope.or_else(|| row.scopes.clone()).map(Arc::from),
            resource: row.resource.as_deref().map(Arc::from),
        };
        ticket.flight.refreshed();
        match self
            .write_back(row, &t.token, new_refresh.as_ref(), expires_at, now)
            .await
        {
            Ok(true) => {
                tracing::debug!(event = "token.write_back", tenant = %slot.tenant, server = %slot.server, row = %row.id, rotated = refreshed.rotated);
                self.fill(slot, &t, skew, (&row.id, row.generation + 1), ticket, epoch);
            }
            Ok(false) => {
                // Deleted or replaced meanwhile: nothing is resurrected, nothing cached.
                bump(&self.counters.write_backs_lost);
                tracing::warn!(event = "token.write_back_lost", tenant = %slot.tenant, server = %slot.server, row = %row.id, generation = row.generation);
            }
            Err(e) => {
                bump(&self.counters.write_backs_failed);
                tracing::error!(event = "token.write_back_failed", tenant = %slot.tenant, server = %slot.server, row = %row.id, error = %e);
                self.fill(slot, &t, skew, (&row.id, row.generation), ticket, epoch);
            }
        }
        t
    }

    /// Seals the new tokens to `row` and compare-and-swaps them in.
    async fn write_back(
        &self,
        row: &CredentialRow,
        access: &Secret,
        refresh: Option<&Secret>,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<bool, TokenError> {
        // Sealed to the row as read: its id, slot, issuer and endpoints (the write-back
        // changes none of them).
        let access_token = self.keyring.seal(access, row.aad(ACCESS_TOKEN))?;
        let refresh_token = refresh
            .map(|r| self.keyring.seal(r, row.aad(REFRESH_TOKEN)))
            .transpose()?;
        let w = WriteBack {
            tenant: row.slot.tenant.clone(),
            id: row.id.clone(),
            generation: row.generation,
            access_token,
            access_expires_at: Some(secs(expires_at)),
            refresh_token,
            now: secs(now),
        };
        Ok(self.store.write_back(&w).await?)
    }

    /// Opens a sealed value of `row` under the row's binding. A value that does not
    /// open (a row edited or moved in the database) is refused: nothing is served or
    /// sent, and the slot needs consent again.
    fn open(
        &self,
        envelope: &[u8],
        column: &'static str,
        row: &CredentialRow,
    ) -> Result<Secret, TokenError> {
        self.keyring.open(envelope, row.aad(column)).map_err(|e| {
            tracing::warn!(event = "token.unsealable", tenant = %row.slot.tenant, server = %row.slot.server, row = %row.id, column = column, error = %e);
            TokenError::from(e)
        })
    }
}

/// What waiting for the lease gave.
enum Leased {
    /// This instance holds it.
    Held(lease::Held),
    /// A peer refreshed meanwhile: its token.
    Peer(AccessToken),
    /// No lease (none configured, or the wait ran out).
    NotHeld,
}

/// Why the authorization server refused `row`, if it is marked so (R-REFRESH-7).
fn refused(row: &CredentialRow) -> Option<ReauthReason> {
    row.needs_consent.as_deref().map(ReauthReason::parse)
}

fn secs(t: UnixTime) -> i64 {
    i64::try_from(t.as_secs()).unwrap_or(i64::MAX)
}
