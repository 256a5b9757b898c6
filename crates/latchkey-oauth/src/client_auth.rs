//! Client authentication at the token, revocation and introspection endpoints:
//! RFC 6749 §2.3.1 (`client_secret_basic`, `client_secret_post`), public clients
//! (`none`) and RFC 7523 §2.2 `private_key_jwt`.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use latchkey_core::{Secret, UnixTime};
use serde::Serialize;

use crate::error::OAuthError;

/// `client_assertion_type` for JWT client authentication (RFC 7523 §2.2).
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A token endpoint authentication method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// Public client: `client_id` in the body, no secret.
    None,
    /// HTTP Basic with form-encoded id and secret.
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the body.
    ClientSecretPost,
    /// A signed JWT assertion (RFC 7523).
    PrivateKeyJwt,
}

impl AuthMethod {
    /// The registered name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::None => "none",
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
        }
    }
}

impl FromStr for AuthMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(AuthMethod::None),
            "client_secret_basic" => Ok(AuthMethod::ClientSecretBasic),
            "client_secret_post" => Ok(AuthMethod::ClientSecretPost),
            "private_key_jwt" => Ok(AuthMethod::PrivateKeyJwt),
            other => Err(format!("unsupported token endpoint auth method {other:?}")),
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A private key for `private_key_jwt`: PEM (PKCS#8) and the JWS algorithm.
#[derive(Clone)]
pub struct AssertionKey {
    pem: Secret,
    alg: jsonwebtoken::Algorithm,
    kid: Option<String>,
}

impl fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl AssertionKey {
    /// A key from PEM and an algorithm name (`ES256`, `RS256`, `EdDSA`, …). The key is
    /// parsed now so a bad key is a configuration error, not a failure at grant time.
    pub fn from_pem(pem: Secret, alg: &str, kid: Option<String>) -> Result<Self, OAuthError> {
        let alg = jsonwebtoken::Algorithm::from_str(alg)
            .map_err(|_| OAuthError::Key(format!("unsupported signing algorithm {alg:?}")))?;
        let key = Self { pem, alg, kid };
        key.encoding_key()?;
        Ok(key)
    }

    fn encoding_key(&self) -> Result<jsonwebtoken::EncodingKey, OAuthError> {
        use jsonwebtoken::Algorithm::*;
        let pem = self.pem.expose().as_bytes();
        let r = match self.alg {
            ES256 | ES384 => jsonwebtoken::EncodingKey::from_ec_pem(pem),
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => {
                jsonwebtoken::EncodingKey::from_rsa_pem(pem)
            }
            EdDSA => jsonwebtoken::EncodingKey::from_ed_pem(pem),
            _ => {
                return Err(OAuthError::Key(
                    "private_key_jwt needs an asymmetric algorithm".into(),
                ));
            }
        };
        r.map_err(|e| OAuthError::Key(format!("cannot read the {:?} private key: {e}", self.alg)))
    }

    /// Signs a client assertion: `iss` = `sub` = client id, `aud` = the AS issuer,
    /// five minutes of validity and a fresh `jti` (RFC 7523 §3).
    pub fn client_assertion(
        &self,
        client_id: &str,
        audience: &str,
        now: UnixTime,
    ) -> Result<Secret, OAuthError> {
        #[derive(Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            sub: &'a str,
            aud: &'a str,
            iat: u64,
            exp: u64,
            jti: String,
        }
        let mut header = jsonwebtoken::Header::new(self.alg);
        header.kid = self.kid.clone();
        let claims = Claims {
            iss: client_id,
            sub: client_id,
            aud: audience,
            iat: now.as_secs(),
            exp: now.as_secs() + 300,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        jsonwebtoken::encode(&header, &claims, &self.encoding_key()?)
            .map(Secret::new)
            .map_err(|e| OAuthError::Key(format!("cannot sign the client assertion: {e}")))
    }
}

/// A client's credentials at one authorization server.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    /// The client id.
    pub client_id: String,
    /// The client secret, for the secret-based methods.
    pub secret: Option<Secret>,
    /// How to authenticate.
    pub method: AuthMethod,
    /// The key, for `private_key_jwt`.
    pub assertion_key: Option<AssertionKey>,
}

impl ClientCredentials {
    /// A public client.
    pub fn public(client_id: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            secret: None,
            method: AuthMethod::None,
            assertion_key: None,
        }
    }

    /// A confidential client using a secret with `method`.
    pub fn with_secret(client_id: impl Into<String>, secret: Secret, method: AuthMethod) -> Self {
        Self {
            client_id: client_id.into(),
            secret: Some(secret),
            method,
            assertion_key: None,
        }
    }

    /// Adds client authentication to a form and its headers. `audience` is the AS
    /// issuer (the `aud` of a `private_key_jwt` assertion).
    pub fn apply(
        &self,
        form: &mut Vec<(&'static str, Secret)>,
        headers: &mut http::HeaderMap,
        audience: &str,
        now: UnixTime,
    ) -> Result<(), OAuthError> {
        match self.method {
            AuthMethod::None => form.push(("client_id", Secret::new(self.client_id.clone()))),
            AuthMethod::ClientSecretBasic => {
                let secret = self.secret()?;
                // RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                let raw = Secret::new(format!("{}:{}", enc(&self.client_id), enc(secret.expose())));
                let value = Secret::new(format!("Basic {}", STANDARD.encode(raw.expose())));
                let mut hv = http::HeaderValue::from_str(value.expose()).map_err(|_| {
                    OAuthError::Key("client credentials are not valid header text".into())
                })?;
                hv.set_sensitive(true);
                headers.insert(http::header::AUTHORIZATION, hv);
            }
            AuthMethod::ClientSecretPost => {
                let secret = self.secret()?;
                form.push(("client_id", Secret::new(self.client_id.clone())));
                form.push(("client_secret", secret.clone()));
            }
            AuthMethod::PrivateKeyJwt => {
                let key = self
                    .assertion_key
                    .as_ref()
                    .ok_or_else(|| OAuthError::Key("private_key_jwt without a key".into()))?;
                form.push(("client_id", Secret::new(self.client_id.clone())));
                form.push((
                    "client_assertion_type",
                    Secret::new(JWT_BEARER_ASSERTION_TYPE),
                ));
                form.push((
                    "client_assertion",
                    key.client_assertion(&self.client_id, audience, now)?,
                ));
            }
        }
        Ok(())
    }

    fn secret(&self) -> Result<&Secret, OAuthError> {
        self.secret
            .as_ref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| OAuthError::Key(format!("{} needs a client secret", self.method)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_form_encodes_before_base64() {
        let c = ClientCredentials::with_secret(
            "my client",
            Secret::new("p@ss word"),
            AuthMethod::ClientSecretBasic,
        );
        let mut form = Vec::new();
        let mut h = http::HeaderMap::new();
        c.apply(&mut form, &mut h, "https://as", UnixTime::from_secs(0))
            .unwrap();
        assert!(form.is_empty());
        let v = h
            .get(http::header::AUTHORIZATION)
            .unwrap()
            .to_str()
            .unwrap();
        let decoded = STANDARD.decode(v.strip_prefix("Basic ").unwrap()).unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), "my+client:p%40ss+word");
        assert!(h.get(http::header::AUTHORIZATION).unwrap().is_sensitive());
    }

    #[test]
    fn post_and_none() {
        let mut form = Vec::new();
        let mut h = http::HeaderMap::new();
        ClientCredentials::with_secret("id", Secret::new("s"), AuthMethod::ClientSecretPost)
            .apply(&mut form, &mut h, "a", UnixTime::from_secs(0))
            .unwrap();
        let names: Vec<_> = form.iter().map(|(k, _)| *k).collect();
        assert_eq!(names, vec!["client_id", "client_secret"]);
        form.clear();
        ClientCredentials::public("id")
            .apply(&mut form, &mut h, "a", UnixTime::from_secs(0))
            .unwrap();
        assert_eq!(form.len(), 1);
        assert!(h.is_empty());
    }

    #[test]
    fn secret_methods_refuse_an_empty_secret() {
        let c = ClientCredentials::with_secret("id", Secret::new(""), AuthMethod::ClientSecretPost);
        let err = c.apply(
            &mut Vec::new(),
            &mut http::HeaderMap::new(),
            "a",
            UnixTime::from_secs(0),
        );
        assert!(matches!(err, Err(OAuthError::Key(_))));
    }

    #[test]
    fn method_names_round_trip() {
        for m in [
            AuthMethod::None,
            AuthMethod::ClientSecretBasic,
            AuthMethod::ClientSecretPost,
            AuthMethod::PrivateKeyJwt,
        ] {
            assert_eq!(m.as_str().parse::<AuthMethod>().unwrap(), m);
        }
        assert!("client_secret_jwt".parse::<AuthMethod>().is_err());
    }
}
