//! Latchkey's HTTP face: configuration, the axum application, and the one place errors
//! become HTTP ([`error`]). The broker's API, the OAuth callback and the MCP endpoints
//! are added here as they are built.
#![forbid(unsafe_code)]

pub mod api_keys;
pub mod app;
pub mod cluster;
pub mod config;
pub mod credentials;
mod downstream;
pub mod error;
pub mod events;
pub mod federated;
pub mod fields;
pub mod flows;
pub mod header_cache;
pub mod headers;
pub mod key_cache;
pub mod limits;
pub mod listener;
pub mod oidc;
pub mod ops;
pub mod proxy;
pub mod revoke;
pub mod rules;
pub mod server_cache;
pub mod servers;
pub mod service;
pub mod setting;
pub mod signin;
pub mod state;
pub mod telemetry;
pub mod tools;
pub mod ui;
mod upstream_answer;
pub mod upstream_sessions;

use std::sync::Arc;

use latchkey_core::Clock;
use latchkey_egress::{Egress, EgressConfig, LoopbackPolicy};
use latchkey_guard::{
    Authenticator, ClaimMapping, Guard, GuardConfig, HostOriginPolicy, JwksCache, JwksOptions,
    JwtConfig, JwtVerifier, PrmConfig, ResourceResolver, SubjectId, TenantId, TokenAuthenticator,
};

pub use app::router;
pub use listener::serve;
pub use state::AppState;

/// Everything the application shares, built from the configuration.
pub fn state(
    cfg: &Config,
    store: Arc<dyn latchkey_vault::Store>,
    keyring: Arc<latchkey_vault::Keyring>,
    clock: Arc<dyn Clock>,
) -> Result<AppState, ConfigError> {
    let egress = egress(cfg)?;
    let api_key_cache = Arc::new(key_cache::ApiKeyCache::default());
    let guard = guard(
        cfg,
        egress.clone(),
        clock.clone(),
        store.clone(),
        api_key_cache.clone(),
    )?;
    let signin = match (&cfg.login, &cfg.auth) {
        (
            Some(l),
            AuthConfig::Jwt {
                audience,
                tenant,
                required_scopes,
                ..
            },
        ) => Some(Arc::new(oidc::SignIn::new(
            l.clone(),
            &cfg.public_url,
            audience.clone(),
            claim_mapping(tenant)?,
            required_scopes.clone(),
            egress.clone(),
            clock.clone(),
            store.clone(),
        ))),
        _ => None,
    };
    let instance: Arc<str> = latchkey_vault::store::new_id().into();
    let tokens = Arc::new(latchkey_broker::token_service::TokenService::new(
        store.clone(),
        keyring.clone(),
        egress.clone(),
        clock.clone(),
        latchkey_broker::token_service::TokenServiceOptions {
            // One refresh grant per expiry across every instance on the database.
            lease: Some(latchkey_broker::token_service::LeaseOptions::new(
                instance.to_string(),
            )),
            // A sent grant is awaited this long, whatever the callers do (issue 16).
            refresh_deadline: cfg.refresh_deadline,
            ..latchkey_broker::token_service::TokenServiceOptions::default()
        },
    ));
    Ok(AppState::from(state::Shared {
        tokens,
        store,
        keyring,
        guard,
        discoverer: Arc::new(latchkey_oauth::discovery::Discoverer::new(
            egress.clone(),
            clock.clone(),
        )),
        egress,
        clock,
        public_url: cfg.public_url.clone(),
        key_use: Arc::default(),
        events: events::Events::default(),
        servers: Arc::default(),
        metrics: telemetry::install(),
        instance,
        upstream: Arc::default(),
        header_values: Arc::default(),
        streams: Arc::new(limits::StreamSlots::new(
            cfg.limits.max_streams_per_principal,
        )),
        api_key_cache,
        api_key_ttls: cfg.api_keys,
        ops_access: ops::OpsAccess::from_config(cfg),
        signin,
    }))
}
pub use config::{AuthConfig, Config, ConfigError, JwtKeySource, JwtTenant};
pub use error::{ApiError, FieldError};

/// Where a verified token's tenant, subject and role come from: the same for access
/// tokens and for the ID tokens of people signing in.
fn claim_mapping(tenant: &JwtTenant) -> Result<ClaimMapping, ConfigError> {
    // The tenant is a required claim, or fixed by configuration: never a silent
    // default.
    Ok(match tenant {
        JwtTenant::Claim(c) => ClaimMapping {
            tenant_claims: vec![c.clone()],
            fixed_tenant: None,
            ..ClaimMapping::default()
        },
        JwtTenant::Fixed(t) => {
            TenantId::new(t.clone()).map_err(|e| ConfigError {
                setting: "auth.tenant".into(),
                message: e.to_string(),
            })?;
            ClaimMapping {
                fixed_tenant: Some(t.clone()),
                ..ClaimMapping::default()
            }
        }
    })
}

/// Checks `[auth.login]` against the provider before serving (see
/// [`oidc::SignIn::check_at_start`]); nothing to check without it.
pub async fn check_signin(state: &AppState) -> Result<(), ConfigError> {
    match &state.signin {
        Some(si) => si.check_at_start().await,
        None => Ok(()),
    }
}

/// The outbound HTTP client the configuration asks for.
pub fn egress(cfg: &Config) -> Result<Egress, ConfigError> {
    Egress::new(EgressConfig {
        loopback: if cfg.allow_insecure_loopback {
            LoopbackPolicy::AllowInsecureLoopback
        } else {
            LoopbackPolicy::Deny
        },
        ..EgressConfig::default()
    })
    .map_err(|e| ConfigError {
        setting: "egress".into(),
        message: e.to_string(),
    })
}

/// The only `Origin`s Latchkey trusts (issue 15): its public URL's and its listen
/// address's. A page on any other origin, another loopback port included, is refused.
pub fn own_origins(cfg: &Config) -> Vec<String> {
    let mut out: Vec<String> = latchkey_guard::origin::url_origin(&cfg.public_url)
        .into_iter()
        .collect();
    for o in latchkey_guard::origin::listen_origins(cfg.listen) {
        if !out.contains(&o) {
            out.push(o);
        }
    }
    out
}

/// The inbound guard the configuration asks for. In JWT mode the `Token` scheme takes
/// the API keys in `store` (`Bearer` never does), remembered in `key_cache`.
pub fn guard(
    cfg: &Config,
    egress: Egress,
    clock: Arc<dyn Clock>,
    store: Arc<dyn latchkey_vault::Store>,
    key_cache: Arc<key_cache::ApiKeyCache>,
) -> Result<Guard, ConfigError> {
    let bad = |setting: &str, message: String| ConfigError {
        setting: setting.into(),
        message,
    };
    let resource = format!("{}/mcp", cfg.public_url);
    let origins = own_origins(cfg);
    let (auth, hosts, prm) = match &cfg.auth {
        AuthConfig::Local { tenant, subject } => {
            let t = TenantId::new(tenant.clone()).map_err(|e| bad("auth.tenant", e.to_string()))?;
            let s =
                SubjectId::new(subject.clone()).map_err(|e| bad("auth.subject", e.to_string()))?;
            (
                Authenticator::local(t, s),
                HostOriginPolicy::loopback_for(origins),
                PrmConfig::default(),
            )
        }
        AuthConfig::Jwt {
            issuer,
            audience,
            keys,
            tenant,
            required_scopes,
        } => {
            let jwks = Arc::new(JwksCache::new(
                egress,
                clock.clone(),
                JwksOptions::default(),
            ));
            let mut jc = match keys {
                JwtKeySource::Jwks(url) => {
                    JwtConfig::jwks(issuer.clone(), audience.clone(), url.clone())
                }
                JwtKeySource::SharedSecret(secret) => {
                    JwtConfig::shared_secret(issuer.clone(), audience.clone(), secret.clone())
                }
            };
            // The tenant is a required claim, or fixed by configuration: never a
            // silent default.
            jc.claims = claim_mapping(tenant)?;
            let verifier = JwtVerifier::new(jc, jwks).map_err(|e| bad("auth", e.to_string()))?;
            let mut t = TokenAuthenticator::new(clock.clone());
            t.jwt = Some(verifier);
            // Browser sessions exist only where people can sign in (issue 19).
            if let Some(l) = &cfg.login {
                t.sessions = Some(Arc::new(oidc::StoreSessions::new(
                    store.clone(),
                    clock.clone(),
                    l.session_idle,
                    required_scopes.clone(),
                )));
            }
            t.api_keys = Some(Arc::new(api_keys::StoreApiKeys::new(
                store,
                clock,
                required_scopes.clone(),
                key_cache,
            )));
            t.required_scopes = required_scopes.clone();
            let host = cfg
                .public_url
                .split_once("://")
                .map(|(_, r)| r.split('/').next().unwrap_or("").to_owned())
                .unwrap_or_default();
            (
                Authenticator::tokens(t),
                HostOriginPolicy {
                    allowed_hosts: vec![host],
                    allowed_origins: Some(origins),
                },
                PrmConfig {
                    authorization_servers: vec![issuer.clone()],
                    scopes_supported: (!required_scopes.is_empty())
                        .then(|| required_scopes.clone()),
                    resource_name: Some("Latchkey".into()),
                },
            )
        }
    };
    Ok(Guard::new(
        auth,
        GuardConfig {
            hosts,
            resolver: ResourceResolver::fixed(resource),
            challenge_scope: None,
            prm,
        },
    ))
}
