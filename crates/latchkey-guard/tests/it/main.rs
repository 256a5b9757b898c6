//! The inbound guard against a scripted identity provider over real loopback HTTP:
//! JWT verification (RS256, ES256, EdDSA, HS256 mode, algorithm confusion), the JWKS
//! cache (rotation, rate-limited refetches, outages), introspection, API keys, the
//! axum middleware (challenges, Host/Origin, PRM) and the absence of token material
//! in every error, body, `Debug` output and log line. One integration-test binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod api_key;
mod http_layer;
mod introspection;
mod jwks;
mod jwt;
mod leaks;

use std::sync::Arc;
use std::time::Duration;

use latchkey_core::time::ManualClock;
use latchkey_core::{Secret, UnixTime};
use latchkey_egress::{Egress, EgressConfig, LoopbackPolicy};
use latchkey_guard::{
    ApiKeyStore, Authenticator, ClaimMapping, InMemoryApiKeyStore, IntrospectionAuth,
    IntrospectionConfig, Introspector, JwksCache, JwksOptions, JwtConfig, JwtVerifier,
    TokenAuthenticator,
};
use latchkey_testkit::idp::ScriptedIdp;
use serde_json::{Value, json};

/// The fixed "now" of every test clock.
pub(crate) const NOW: u64 = 1_800_000_000;
/// The resource identifier (and JWT audience).
pub(crate) const RESOURCE: &str = "http://localhost:8080/mcp";
/// Latchkey's credentials at the scripted introspection endpoint.
pub(crate) const INTROSPECTION_SECRET: &str = "introspection-client-secret-xyz";

pub(crate) fn egress() -> Egress {
    Egress::new(EgressConfig {
        loopback: LoopbackPolicy::AllowInsecureLoopback,
        ..EgressConfig::default()
    })
    .unwrap()
}

pub(crate) fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::at(UnixTime::from_secs(NOW)))
}

pub(crate) fn now() -> UnixTime {
    UnixTime::from_secs(NOW)
}

/// Valid claims for `idp`, with `extra` merged over them (`null` removes a claim).
pub(crate) fn claims(idp: &ScriptedIdp, extra: Value) -> Value {
    let mut c = json!({
        "iss": idp.issuer(),
        "aud": RESOURCE,
        "sub": "user-1",
        "tenant": "acme",
        "iat": NOW,
        "exp": NOW + 300,
        "scope": "mcp tools:read",
    });
    if let (Some(m), Value::Object(e)) = (c.as_object_mut(), extra) {
        for (k, v) in e {
            if v.is_null() {
                m.remove(&k);
            } else {
                m.insert(k, v);
            }
        }
    }
    c
}

pub(crate) fn jwks_cache(clock: &Arc<ManualClock>) -> Arc<JwksCache> {
    Arc::new(JwksCache::new(
        egress(),
        clock.clone(),
        JwksOptions::default(),
    ))
}

pub(crate) fn jwt_config(idp: &ScriptedIdp) -> JwtConfig {
    let mut cfg = JwtConfig::jwks(idp.issuer(), RESOURCE, idp.jwks_url());
    cfg.claims = ClaimMapping::default();
    cfg
}

pub(crate) fn jwt_verifier(idp: &ScriptedIdp, clock: &Arc<ManualClock>) -> JwtVerifier {
    JwtVerifier::new(jwt_config(idp), jwks_cache(clock)).unwrap()
}

pub(crate) fn introspection_config(idp: &ScriptedIdp) -> IntrospectionConfig {
    let mut cfg = IntrospectionConfig::new(
        idp.introspection_url(),
        IntrospectionAuth::Basic {
            client_id: "latchkey".into(),
            client_secret: Secret::new(INTROSPECTION_SECRET),
        },
    );
    cfg.issuer = Some(idp.issuer());
    cfg.audience = Some(RESOURCE.into());
    cfg
}

pub(crate) fn introspector(idp: &ScriptedIdp) -> Introspector {
    Introspector::new(introspection_config(idp), egress()).unwrap()
}

/// An authenticator with every verifier: JWKS, introspection and API keys.
pub(crate) struct Fixture {
    pub(crate) idp: ScriptedIdp,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) store: Arc<InMemoryApiKeyStore>,
    pub(crate) auth: Authenticator,
}

pub(crate) struct Options {
    pub(crate) jwt: bool,
    pub(crate) introspection: bool,
    pub(crate) api_keys: bool,
    pub(crate) required_scopes: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            jwt: true,
            introspection: true,
            api_keys: true,
            required_scopes: Vec::new(),
        }
    }
}

pub(crate) async fn fixture(opts: Options) -> Fixture {
    let idp = ScriptedIdp::start().await.unwrap();
    let clock = clock();
    let store = Arc::new(InMemoryApiKeyStore::new());
    let mut t = TokenAuthenticator::new(clock.clone());
    if opts.jwt {
        t.jwt = Some(jwt_verifier(&idp, &clock));
    }
    if opts.introspection {
        t.introspection = Some(introspector(&idp));
    }
    if opts.api_keys {
        t.api_keys = Some(store.clone() as Arc<dyn ApiKeyStore>);
    }
    t.required_scopes = opts.required_scopes;
    Fixture {
        idp,
        clock,
        store,
        auth: Authenticator::tokens(t),
    }
}

/// `Authorization: <value>` as a header map.
pub(crate) fn auth_headers(value: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
    h
}

/// Advances a test clock past the forced-refetch interval.
pub(crate) fn past_refetch_interval(clock: &ManualClock) {
    clock.advance(Duration::from_secs(11));
}
