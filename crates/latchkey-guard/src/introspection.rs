//! RFC 7662 token introspection for opaque bearer tokens (R-RS-8, R-RS-9, R-RS-14).
//!
//! One POST of `token=…` to the operator-configured endpoint, authenticated as
//! Latchkey (HTTP Basic or a bearer secret), bounded by a 2-second timeout.
//!
//! * 2xx with `active: true` (and matching `iss`/`aud`/`exp` when present) → principal.
//! * 2xx with `active: false` → invalid (401).
//! * Anything else (network, timeout, 5xx, 429, redirect, malformed JSON) → unavailable
//!   (503). A 401/403 means the endpoint refused *Latchkey's* credentials, which says
//!   nothing about the caller's token: unavailable too, classified as configuration.
//!
//! Positive answers are cached briefly (default 30 s, never past `exp`), keyed by the
//! SHA-256 of the token: the raw token is never kept.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderValue;
use latchkey_core::{Secret, UnixTime};
use latchkey_egress::{Egress, EgressRequest, UrlSource};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::claims::{self, ClaimMapping};
use crate::error::{ConfigError, GuardError, InvalidReason, UnavailableReason};
use crate::principal::{AuthSource, Principal};

/// Largest introspection answer read.
pub const INTROSPECTION_BODY_LIMIT: usize = 64 * 1024;

/// How Latchkey authenticates to the introspection endpoint.
#[derive(Debug, Clone)]
pub enum IntrospectionAuth {
    /// HTTP Basic with the form-encoded client id and secret (RFC 6749 §2.3.1).
    Basic {
        /// Client id.
        client_id: String,
        /// Client secret.
        client_secret: Secret,
    },
    /// `Authorization: Bearer <secret>` (an internal shared secret).
    Bearer(Secret),
}

impl IntrospectionAuth {
    fn header_value(&self) -> Option<HeaderValue> {
        let raw = match self {
            IntrospectionAuth::Basic {
                client_id,
                client_secret,
            } => {
                let enc = |s: &str| -> String {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
                };
                let pair = Secret::new(format!(
                    "{}:{}",
                    enc(client_id),
                    enc(client_secret.expose())
                ));
                Secret::new(format!("Basic {}", STANDARD.encode(pair.expose())))
            }
            IntrospectionAuth::Bearer(s) => Secret::new(format!("Bearer {}", s.expose())),
        };
        let mut v = HeaderValue::from_str(raw.expose()).ok()?;
        v.set_sensitive(true);
        Some(v)
    }
}

/// Settings of remote verification.
#[derive(Debug, Clone)]
pub struct IntrospectionConfig {
    /// The introspection endpoint (operator-configured).
    pub url: String,
    /// Latchkey's credentials at that endpoint.
    pub auth: IntrospectionAuth,
    /// Request timeout (default 2 s).
    pub timeout: Duration,
    /// Expected `iss`, checked (exactly) when the answer carries one.
    pub issuer: Option<String>,
    /// Expected audience (this resource), checked when the answer carries `aud`.
    pub audience: Option<String>,
    /// Clock-skew allowance for `exp`/`nbf` in the answer (default 30 s).
    pub leeway: Duration,
    /// Which fields carry subject, tenant and role.
    pub claims: ClaimMapping,
    /// How long a positive answer is reused (default 30 s; never past `exp`).
    pub cache_ttl: Duration,
    /// Most cached answers (default 10 000).
    pub cache_capacity: usize,
}

impl IntrospectionConfig {
    /// The defaults for `url` and `auth`.
    pub fn new(url: impl Into<String>, auth: IntrospectionAuth) -> Self {
        Self {
            url: url.into(),
            auth,
            timeout: Duration::from_secs(2),
            issuer: None,
            audience: None,
            leeway: crate::jwt::DEFAULT_LEEWAY,
            claims: ClaimMapping::default(),
            cache_ttl: Duration::from_secs(30),
            cache_capacity: 10_000,
        }
    }
}

/// Verifies opaque tokens by introspection, with a short positive cache.
pub struct Introspector {
    cfg: IntrospectionConfig,
    egress: Egress,
    cache: Mutex<HashMap<[u8; 32], (Principal, UnixTime)>>,
}

impl fmt::Debug for Introspector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Introspector")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Introspector {
    /// An introspector; refuses an empty URL.
    pub fn new(cfg: IntrospectionConfig, egress: Egress) -> Result<Self, ConfigError> {
        if cfg.url.is_empty() {
            return Err(ConfigError::Empty("introspection URL"));
        }
        Ok(Self {
            cfg,
            egress,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The settings.
    pub fn config(&self) -> &IntrospectionConfig {
        &self.cfg
    }

    /// Verifies `token` at time `now`.
    pub async fn verify(&self, token: &str, now: UnixTime) -> Result<Principal, GuardError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(p) = self.cached(&key, now) {
            return Ok(p);
        }
        let answer = self.introspect(token).await?;
        let principal = self.judge(&answer, now)?;
        self.remember(key, &principal, &answer, now);
        Ok(principal)
    }

    async fn introspect(&self, token: &str) -> Result<Map<String, Value>, GuardError> {
        let mut req = EgressRequest::post_form(
            &self.cfg.url,
            UrlSource::Operator,
            &[("token", token), ("token_type_hint", "access_token")],
            INTROSPECTION_BODY_LIMIT,
        )
        .header(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        )
        .with_timeout(self.cfg.timeout);
        if let Some(v) = self.cfg.auth.header_value() {
            req = req.header(http::header::AUTHORIZATION, v);
        }
        let resp = self.egress.send(req).await.map_err(|e| {
            tracing::warn!(event = "guard.introspection.unavailable", error = %e);
            UnavailableReason::Introspection
        })?;
        let status = resp.status.as_u16();
        if status == 401 || status == 403 {
            tracing::error!(
                event = "guard.introspection.client_refused",
                status,
                "the introspection endpoint refused Latchkey's credentials"
            );
            return Err(UnavailableReason::IntrospectionAuth.into());
        }
        if !resp.status.is_success() {
            tracing::warn!(event = "guard.introspection.unavailable", status);
            return Err(UnavailableReason::Introspection.into());
        }
        match resp.json::<Value>() {
            Ok(Value::Object(m)) => Ok(m),
            _ => {
                tracing::warn!(event = "guard.introspection.malformed");
                Err(UnavailableReason::Introspection.into())
            }
        }
    }

    fn judge(&self, answer: &Map<String, Value>, now: UnixTime) -> Result<Principal, GuardError> {
        match answer.get("active") {
            Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => return Err(InvalidReason::Inactive.into()),
            _ => return Err(UnavailableReason::Introspection.into()),
        }
        claims::check_times(answer, now, self.cfg.leeway, false)?;
        if let (Some(expected), Some(_)) = (&self.cfg.issuer, answer.get("iss")) {
            claims::check_issuer(answer, expected)?;
        }
        if let Some(expected) = &self.cfg.audience {
            claims::check_audience(answer, expected, false)?;
        }
        Ok(claims::principal_from_claims(
            answer,
            &self.cfg.claims,
            AuthSource::Introspection,
        )?)
    }

    fn cached(&self, key: &[u8; 32], now: UnixTime) -> Option<Principal> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(key)
            .filter(|(_, until)| now < *until)
            .map(|(p, _)| p.clone())
    }

    fn remember(
        &self,
        key: [u8; 32],
        principal: &Principal,
        answer: &Map<String, Value>,
        now: UnixTime,
    ) {
        if self.cfg.cache_ttl.is_zero() || self.cfg.cache_capacity == 0 {
            return;
        }
        let mut until = now.plus(self.cfg.cache_ttl);
        if let Some(exp) = answer.get("exp").and_then(Value::as_u64) {
            until = until.min(UnixTime::from_secs(exp));
        }
        if until <= now {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.cfg.cache_capacity && !cache.contains_key(&key) {
            cache.retain(|_, (_, u)| now < *u);
            if cache.len() >= self.cfg.cache_capacity
                && let Some(oldest) = cache.iter().min_by_key(|(_, (_, u))| *u).map(|(k, _)| *k)
            {
                cache.remove(&oldest);
            }
        }
        cache.insert(key, (principal.clone(), until));
    }

    /// Number of cached positive answers (tests, metrics).
    pub fn cached_len(&self) -> usize {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_form_encodes_then_base64() {
        let a = IntrospectionAuth::Basic {
            client_id: "lk client".into(),
            client_secret: Secret::new("s:cret"),
        };
        let v = a.header_value().unwrap();
        assert!(v.is_sensitive());
        let b64 = v.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let raw = String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap();
        assert_eq!(raw, "lk+client:s%3Acret");
        let b = IntrospectionAuth::Bearer(Secret::new("internal"));
        assert_eq!(
            b.header_value().unwrap().to_str().unwrap(),
            "Bearer internal"
        );
    }

    #[test]
    fn debug_hides_credentials() {
        let cfg = IntrospectionConfig::new(
            "https://idp.example/introspect",
            IntrospectionAuth::Basic {
                client_id: "lk".into(),
                client_secret: Secret::new("client-secret-value"),
            },
        );
        assert!(!format!("{cfg:?}").contains("client-secret-value"));
    }
}
