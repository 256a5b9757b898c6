//! Local verification of JWT access tokens (R-RS-3, R-RS-4, R-RS-5).
//!
//! Two explicit modes, never mixed, so no algorithm-confusion attack can work:
//!
//! * **JWKS**: `RS256`, `ES256` or `EdDSA` (Ed25519), `kid` required, the key taken
//!   from the cached JWKS only (never from `jku`, `x5u` or an embedded `jwk`), and its
//!   type must fit the algorithm. `HS*` and `none` are refused.
//! * **Shared secret**: `HS256` only; every asymmetric algorithm is refused.
//!
//! The signature is checked by `jsonwebtoken`; the claims are checked here with `now`
//! as a parameter: `iss` compared as an exact string, `aud` naming the configured
//! resource, `exp` required and `nbf` honoured with a small leeway.
//!
//! A verified access token is remembered briefly (issue 18): by its SHA-256, for at
//! most [`VERIFIED_TTL`] and never past its `exp`. The same bearer token arrives with
//! every request of a client, and verifying it again (base64, JSON, a signature) was
//! a third of what a JWT caller's proxied request cost. What that allows: a key
//! removed from the JWKS stops a token it signed within [`VERIFIED_TTL`], as the JWKS
//! cache's own lifetime already allowed for a longer time. A refused token is never
//! remembered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use latchkey_core::{Secret, UnixTime};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::claims::{self, ClaimMapping};
use crate::error::{ConfigError, GuardError, InvalidReason};
use crate::jwks::JwksCache;
use crate::principal::{AuthSource, Principal};

/// Where verification keys come from.
#[derive(Debug, Clone)]
pub enum JwtKeys {
    /// Public keys from the JWKS at this operator-configured URL.
    Jwks {
        /// The JWKS URL.
        url: String,
    },
    /// One HS256 secret shared with the token issuer (at least 32 bytes).
    SharedSecret(Secret),
}

/// Settings of local JWT verification.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// The expected `iss`, compared as an exact string.
    pub issuer: String,
    /// The expected `aud`: this resource's identifier, as a string.
    pub audience: String,
    /// Key source and mode.
    pub keys: JwtKeys,
    /// Algorithms accepted in JWKS mode, a subset of RS256, ES256, EdDSA (default: all
    /// three). Ignored in shared-secret mode, which accepts HS256 only.
    pub algorithms: Vec<Algorithm>,
    /// Clock-skew allowance for `exp` and `nbf` (default 30 s).
    pub leeway: Duration,
    /// Which claims carry subject, tenant and role.
    pub claims: ClaimMapping,
}

/// Default clock-skew allowance.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

const JWKS_ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

impl JwtConfig {
    /// JWKS mode with the defaults.
    pub fn jwks(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        jwks_url: impl Into<String>,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            keys: JwtKeys::Jwks {
                url: jwks_url.into(),
            },
            algorithms: JWKS_ALGORITHMS.to_vec(),
            leeway: DEFAULT_LEEWAY,
            claims: ClaimMapping::default(),
        }
    }

    /// Shared-secret (HS256) mode with the defaults.
    pub fn shared_secret(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        secret: Secret,
    ) -> Self {
        Self {
            keys: JwtKeys::SharedSecret(secret),
            algorithms: vec![Algorithm::HS256],
            ..Self::jwks(issuer, audience, String::new())
        }
    }
}

/// How long a verified access token is remembered (never past its `exp`).
pub const VERIFIED_TTL: Duration = Duration::from_secs(30);
/// Most verified tokens remembered.
const VERIFIED_MAX: usize = 10_000;

/// Verifies JWT access tokens locally.
#[derive(Debug)]
pub struct JwtVerifier {
    cfg: JwtConfig,
    jwks: Arc<JwksCache>,
    hmac: Option<DecodingKey>,
    /// Verified tokens by SHA-256: the principal and until when it may be reused.
    verified: Mutex<HashMap<[u8; 32], (Principal, UnixTime)>>,
}

#[derive(serde::Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
    crit: Option<Value>,
}

impl JwtVerifier {
    /// A verifier; refuses empty issuer, audience or JWKS URL, a secret shorter than 32
    /// bytes, and JWKS algorithms outside RS256, ES256, EdDSA.
    pub fn new(cfg: JwtConfig, jwks: Arc<JwksCache>) -> Result<Self, ConfigError> {
        if cfg.issuer.is_empty() {
            return Err(ConfigError::Empty("JWT issuer"));
        }
        if cfg.audience.is_empty() {
            return Err(ConfigError::Empty("JWT audience"));
        }
        let hmac = match &cfg.keys {
            JwtKeys::Jwks { url } => {
                if url.is_empty() {
                    return Err(ConfigError::Empty("JWKS URL"));
                }
                if cfg.algorithms.is_empty() {
                    return Err(ConfigError::Empty("JWT algorithms"));
                }
                if let Some(a) = cfg.algorithms.iter().find(|a| !JWKS_ALGORITHMS.contains(a)) {
                    return Err(ConfigError::Algorithm(format!("{a:?}")));
                }
                None
            }
            JwtKeys::SharedSecret(s) => {
                if s.len() < 32 {
                    return Err(ConfigError::WeakSecret);
                }
                Some(DecodingKey::from_secret(s.expose().as_bytes()))
            }
        };
        Ok(Self {
            cfg,
            jwks,
            hmac,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// The settings.
    pub fn config(&self) -> &JwtConfig {
        &self.cfg
    }

    /// Verifies `token` at time `now`. `Invalid` when the token is refused,
    /// `Unavailable` when the JWKS could not be obtained.
    pub async fn verify(&self, token: &str, now: UnixTime) -> Result<Principal, GuardError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(p) = self.remembered(&key, now) {
            return Ok(p);
        }
        let (claims, principal) = self.verify_claims(token, now, AuthSource::Jwt).await?;
        self.remember(key, &principal, &claims, now);
        Ok(principal)
    }

    fn remembered(&self, key: &[u8; 32], now: UnixTime) -> Option<Principal> {
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .filter(|(_, until)| now < *until)
            .map(|(p, _)| p.clone())
    }

    fn remember(
        &self,
        key: [u8; 32],
        principal: &Principal,
        claims: &Map<String, Value>,
        now: UnixTime,
    ) {
        // `exp` is required and was checked; without leeway here, so a remembered
        // token never outlives what a fresh check would grant.
        let Some(exp) = claims.get("exp").and_then(Value::as_u64) else {
            return;
        };
        let until = now.plus(VERIFIED_TTL).min(UnixTime::from_secs(exp));
        if until <= now {
            return;
        }
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= VERIFIED_MAX && !cache.contains_key(&key) {
            cache.retain(|_, (_, u)| now < *u);
            if cache.len() >= VERIFIED_MAX
                && let Some(oldest) = cache.iter().min_by_key(|(_, (_, u))| *u).map(|(k, _)| *k)
            {
                cache.remove(&oldest);
            }
        }
        cache.insert(key, (principal.clone(), until));
    }

    /// Number of remembered verified tokens (tests).
    pub fn remembered_len(&self) -> usize {
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Verifies `token` like [`Self::verify`] and also returns its claims, for checks
    /// beyond an access token's (an OpenID ID token's `nonce` and `azp`). The principal
    /// is marked as coming from `source`.
    pub async fn verify_claims(
        &self,
        token: &str,
        now: UnixTime,
        source: AuthSource,
    ) -> Result<(Map<String, Value>, Principal), GuardError> {
        let header = parse_header(token)?;
        if header.crit.is_some() {
            return Err(InvalidReason::CriticalHeader.into());
        }
        let alg_name = header.alg.as_deref().unwrap_or_default();
        let (alg, key) = match (&self.cfg.keys, &self.hmac) {
            (JwtKeys::SharedSecret(_), Some(key)) => {
                if alg_name != "HS256" {
                    return Err(InvalidReason::Algorithm.into());
                }
                (Algorithm::HS256, key.clone())
            }
            (JwtKeys::Jwks { url }, _) => {
                let alg = self
                    .cfg
                    .algorithms
                    .iter()
                    .copied()
                    .find(|a| alg_label(*a) == alg_name)
                    .ok_or(InvalidReason::Algorithm)?;
                let kid = header
                    .kid
                    .filter(|k| !k.is_empty())
                    .ok_or(InvalidReason::MissingKid)?;
                let jwk = self
                    .jwks
                    .key(url, &kid)
                    .await?
                    .ok_or(InvalidReason::UnknownKid)?;
                if !key_fits(&jwk, alg) {
                    return Err(InvalidReason::KeyMismatch.into());
                }
                let key = DecodingKey::from_jwk(&jwk).map_err(|_| InvalidReason::KeyMismatch)?;
                (alg, key)
            }
            (JwtKeys::SharedSecret(_), None) => return Err(InvalidReason::NoVerifier.into()),
        };
        let claims = verify_signature(token, &key, alg)?;
        claims::check_issuer(&claims, &self.cfg.issuer)?;
        claims::check_audience(&claims, &self.cfg.audience, true)?;
        claims::check_times(&claims, now, self.cfg.leeway, true)?;
        let principal = claims::principal_from_claims(&claims, &self.cfg.claims, source)?;
        Ok((claims, principal))
    }
}

fn parse_header(token: &str) -> Result<RawHeader, InvalidReason> {
    let first = token.split('.').next().unwrap_or_default();
    let bytes = URL_SAFE_NO_PAD
        .decode(first)
        .map_err(|_| InvalidReason::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| InvalidReason::Malformed)
}

/// The JOSE name of the three accepted asymmetric algorithms (and HS256).
fn alg_label(a: Algorithm) -> &'static str {
    match a {
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::HS256 => "HS256",
        _ => "",
    }
}

/// Whether a JWKS entry may verify `alg`: right key type and curve, and a declared
/// `alg`, if any, equal to it.
fn key_fits(jwk: &Jwk, alg: Algorithm) -> bool {
    if let Some(declared) = jwk.common.key_algorithm
        && declared != KeyAlgorithm::from(alg)
    {
        return false;
    }
    match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(_), Algorithm::RS256) => true,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) => {
            p.curve == EllipticCurve::Ed25519
        }
        _ => false,
    }
}

/// Signature and algorithm only: the time, issuer and audience checks are ours.
fn verify_signature(
    token: &str,
    key: &DecodingKey,
    alg: Algorithm,
) -> Result<Map<String, Value>, InvalidReason> {
    let mut v = Validation::new(alg);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.leeway = 0;
    jsonwebtoken::decode::<Map<String, Value>>(token, key, &v)
        .map(|d| d.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => InvalidReason::Signature,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::MissingAlgorithm
            | ErrorKind::UnsupportedAlgorithm => InvalidReason::Algorithm,
            ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat => InvalidReason::KeyMismatch,
            _ => InvalidReason::Malformed,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_is_checked() {
        let egress =
            latchkey_egress::Egress::new(latchkey_egress::EgressConfig::default()).unwrap();
        let cache = Arc::new(JwksCache::new(
            egress,
            Arc::new(latchkey_core::SystemClock),
            crate::jwks::JwksOptions::default(),
        ));
        let weak = JwtConfig::shared_secret("iss", "aud", Secret::new("short"));
        assert_eq!(
            JwtVerifier::new(weak, cache.clone()).unwrap_err(),
            ConfigError::WeakSecret
        );
        let mut hs_in_jwks = JwtConfig::jwks("iss", "aud", "https://idp.example/jwks");
        hs_in_jwks.algorithms.push(Algorithm::HS256);
        assert!(matches!(
            JwtVerifier::new(hs_in_jwks, cache.clone()),
            Err(ConfigError::Algorithm(_))
        ));
        assert_eq!(
            JwtVerifier::new(JwtConfig::jwks("", "aud", "u"), cache).unwrap_err(),
            ConfigError::Empty("JWT issuer")
        );
    }

    #[test]
    fn key_types_must_fit_the_algorithm() {
        let rsa: Jwk = serde_json::from_value(serde_json::json!(
            {"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}
        ))
        .unwrap();
        assert!(key_fits(&rsa, Algorithm::RS256));
        assert!(!key_fits(&rsa, Algorithm::ES256));
        let rsa_es: Jwk = serde_json::from_value(serde_json::json!(
            {"kty":"RSA","kid":"r","alg":"ES256","n":"AQAB","e":"AQAB"}
        ))
        .unwrap();
        assert!(!key_fits(&rsa_es, Algorithm::RS256));
        let oct: Jwk = serde_json::from_value(serde_json::json!(
            {"kty":"oct","kid":"o","k":"c2VjcmV0"}
        ))
        .unwrap();
        assert!(!key_fits(&oct, Algorithm::RS256));
        assert!(!key_fits(&oct, Algorithm::HS256));
    }
}
