//! What every handler shares ([`AppState`]): the store, the keyring, the egress client,
//! the token service, the caches and the settings the handlers read. It sits under the
//! handlers: this module imports only the building blocks below it (configuration,
//! errors, the caches, the event bus), never a handler, so the crate has no import
//! circle. Operations that announce changes to other instances live with
//! [`crate::cluster`], which adds them to [`AppState`].

use std::sync::Arc;

use latchkey_guard::Guard;
use latchkey_vault::{Keyring, Store};

use crate::error::ApiError;

/// What every handler shares: one reference-counted [`Shared`], so the clone each
/// extractor and middleware makes per request is one counter increment (it was a
/// copy of every field, the public URL's `String` included: 3 % of the proxy's CPU).
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl From<Shared> for AppState {
    fn from(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl AppState {
    /// The fields, to replace some before serving (tests swap clients and services);
    /// copies them first if the state is already shared.
    pub fn shared_mut(&mut self) -> &mut Shared {
        Arc::make_mut(&mut self.0)
    }
}

impl axum::extract::FromRef<AppState> for crate::events::Events {
    fn from_ref(s: &AppState) -> Self {
        s.events.clone()
    }
}

/// The fields of [`AppState`].
#[derive(Debug, Clone)]
pub struct Shared {
    /// The credential store.
    pub store: Arc<dyn Store>,
    /// The keyring.
    pub keyring: Arc<Keyring>,
    /// Inbound authentication.
    pub guard: Guard,
    /// The only road out (probes, discovery, token requests).
    pub egress: latchkey_egress::Egress,
    /// The clock.
    pub clock: Arc<dyn latchkey_core::Clock>,
    /// OAuth discovery with its 5-minute cache, shared by every request.
    pub discoverer: Arc<latchkey_oauth::discovery::Discoverer>,
    /// The public base URL (callbacks), without a trailing `/`.
    pub public_url: String,
    /// What `/readyz` remembers of the key ids the stored values need.
    pub key_use: Arc<KeyUse>,
    /// Events for `/v1/events`.
    pub events: crate::events::Events,
    /// Access tokens: cache, single-flight refresh, eviction.
    pub tokens: Arc<latchkey_broker::token_service::TokenService>,
    /// Server rows for the call paths, briefly.
    pub servers: Arc<crate::server_cache::ServerCache>,
    /// The Prometheus recorder's handle, for `/metrics`.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// This instance's name among several on one database ([`crate::cluster`]).
    pub instance: Arc<str>,
    /// Static-header servers' opened values per slot ([`crate::headers`]).
    pub header_values: Arc<crate::header_cache::HeaderCache>,
    /// Upstream MCP sessions kept between tool calls ([`crate::upstream_sessions`]).
    pub upstream: Arc<crate::upstream_sessions::UpstreamSessions>,
    /// Open event and MCP GET streams per principal ([`crate::limits`]).
    pub streams: Arc<crate::limits::StreamSlots>,
    /// API keys found in the store, briefly ([`crate::key_cache::ApiKeyCache`]); the
    /// guard reads it, deletions empty it.
    pub api_key_cache: Arc<crate::key_cache::ApiKeyCache>,
    /// API key lifetimes.
    pub api_key_ttls: crate::config::ApiKeyTtls,
    /// Who may read `/metrics` and the OpenAPI document ([`crate::ops`]).
    pub ops_access: crate::ops::OpsAccess,
    /// Sign-in for people, when `[auth.login]` is configured ([`crate::oidc`]).
    pub signin: Option<Arc<crate::oidc::SignIn>>,
}

impl AppState {
    /// The caller's tenant's server `id`, or 404: the tenant check every handler makes
    /// before reading, writing or revoking anything of a server (R-API-11). These
    /// methods ([`Self::server`], [`Self::server_for_call`], [`Self::servers_of`]) are
    /// where every server is found for a caller, so they also apply a restricted API
    /// key's server list (issue 19): a server outside it is not found, like another
    /// tenant's.
    pub async fn server(
        &self,
        p: &latchkey_guard::Principal,
        id: &str,
    ) -> Result<latchkey_vault::store::ServerRow, ApiError> {
        self.store
            .get_server(p.tenant.as_str(), id)
            .await?
            .filter(|row| p.may_use_server(&row.id))
            .ok_or(ApiError::NotFound)
    }

    /// The caller's tenant's servers, by name, but only those a restricted API key may
    /// use ([`Self::server`]).
    pub async fn servers_of(
        &self,
        p: &latchkey_guard::Principal,
    ) -> Result<Vec<latchkey_vault::store::ServerRow>, ApiError> {
        let mut rows = self.store.list_servers(p.tenant.as_str()).await?;
        rows.retain(|row| p.may_use_server(&row.id));
        Ok(rows)
    }

    /// [`AppState::server`] for the call paths (proxy, federated endpoint, tool calls):
    /// served from memory for up to [`crate::server_cache::TTL`]. Never for a
    /// read-modify-write: those read the row itself.
    pub async fn server_for_call(
        &self,
        p: &latchkey_guard::Principal,
        id: &str,
    ) -> Result<Arc<latchkey_vault::store::ServerRow>, ApiError> {
        let row = self.server_row_for_call(p, id).await?;
        if p.may_use_server(&row.id) {
            Ok(row)
        } else {
            Err(ApiError::NotFound)
        }
    }

    /// [`Self::server_for_call`] before a restricted key's server list is applied.
    async fn server_row_for_call(
        &self,
        p: &latchkey_guard::Principal,
        id: &str,
    ) -> Result<Arc<latchkey_vault::store::ServerRow>, ApiError> {
        let now = self.clock.now();
        if let Some(row) = self.servers.get(p.tenant.as_str(), id, now) {
            return Ok(row);
        }
        // Stale-if-unavailable: while the database is away, the last row read keeps the
        // call paths (and so the cached tokens) working. Changes made meanwhile by others
        // could not have been committed either if the database is down for everyone,
        // and every row is dropped as soon as the change channel listens again.
        let stale = || {
            self.servers.get_stale(
                p.tenant.as_str(),
                id,
                now,
                crate::server_cache::STALE_IF_UNAVAILABLE,
            )
        };
        if self.servers.recently_unavailable(now)
            && let Some(row) = stale()
        {
            return Ok(row);
        }
        let epoch = self.servers.epoch();
        let row = match self.server(p, id).await {
            Ok(row) => Arc::new(row),
            Err(ApiError::Unavailable) => {
                self.servers.mark_unavailable(now);
                tracing::warn!(event = "store.unavailable", server_id = %id, "serving the last known server row");
                return stale().ok_or(ApiError::Unavailable);
            }
            Err(e) => return Err(e),
        };
        self.servers.put(row.clone(), epoch, now);
        Ok(row)
    }

    /// Forgets the cached row of a server this instance changed or deleted.
    pub fn server_changed(&self, tenant: &str, id: &str) {
        self.servers.invalidate(tenant, id);
    }

    /// The current time, Unix seconds.
    pub fn now(&self) -> i64 {
        i64::try_from(self.clock.now().as_secs()).unwrap_or(i64::MAX)
    }
}

/// The key ids the stored envelopes carry that no configured key has, for `/readyz`:
/// one scan of the sealed columns, remembered for [`KeyUse::TTL_SECS`].
#[derive(Debug, Default)]
pub struct KeyUse(std::sync::Mutex<Option<(u64, Vec<u8>)>>);

impl KeyUse {
    /// How long a scan's answer is reused.
    pub const TTL_SECS: u64 = 30;

    pub(crate) async fn unopenable(&self, s: &Shared) -> Vec<u8> {
        let now = s.clock.now().as_secs();
        if let Ok(g) = self.0.lock()
            && let Some((at, ids)) = g.as_ref()
            && now.saturating_sub(*at) < Self::TTL_SECS
        {
            return ids.clone();
        }
        let Ok(in_use) = s.store.key_ids_in_use().await else {
            return Vec::new();
        };
        let configured = s.keyring.key_ids().unwrap_or_default();
        let missing: Vec<u8> = in_use
            .into_iter()
            .filter(|id| !configured.contains(id))
            .collect();
        if let Ok(mut g) = self.0.lock() {
            *g = Some((now, missing.clone()));
        }
        missing
    }
}
