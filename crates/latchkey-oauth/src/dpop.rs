//! RFC 9449 DPoP proofs with an ES256 key.
//!
//! The proof JWS is assembled here rather than through a JWT library because its header
//! must carry the public key as a bare `jwk` (and nothing private), and the signature is
//! the fixed-size `r || s` form; p256 (RustCrypto) does the cryptography.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use latchkey_core::{Secret, UnixTime};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use sha2::{Digest, Sha256};

use crate::error::OAuthError;
use crate::urls;

/// The `DPoP` header name.
pub const DPOP_HEADER: &str = "dpop";
/// The `DPoP-Nonce` header name.
pub const DPOP_NONCE_HEADER: &str = "dpop-nonce";

/// A DPoP key pair. The private half never prints.
#[derive(Clone)]
pub struct DpopKey {
    signing: SigningKey,
    x: String,
    y: String,
}

impl fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopKey")
            .field("jkt", &self.thumbprint())
            .finish_non_exhaustive()
    }
}

impl DpopKey {
    /// A fresh P-256 key.
    pub fn generate() -> Result<Self, OAuthError> {
        let signing = SigningKey::random(&mut rand::rngs::OsRng);
        let point = signing.verifying_key().to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err(OAuthError::Key(
                "P-256 public key has no coordinates".into(),
            ));
        };
        Ok(Self {
            x: URL_SAFE_NO_PAD.encode(x),
            y: URL_SAFE_NO_PAD.encode(y),
            signing,
        })
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> serde_json::Value {
        serde_json::json!({"kty": "EC", "crv": "P-256", "x": self.x, "y": self.y})
    }

    /// RFC 7638 JWK thumbprint (the `jkt` a DPoP-bound token carries in `cnf`).
    pub fn thumbprint(&self) -> String {
        // Members in lexicographic order, no whitespace (RFC 7638 §3.2).
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            self.x, self.y
        );
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }

    /// A proof for one request. `htu` is the URL without query and fragment; `ath` is
    /// included when an access token is presented (RFC 9449 §4.2).
    pub fn proof(
        &self,
        method: &str,
        url: &str,
        nonce: Option<&str>,
        access_token: Option<&Secret>,
        now: UnixTime,
    ) -> Result<String, OAuthError> {
        let header =
            serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.public_jwk()});
        let mut claims = serde_json::json!({
            "jti": uuid::Uuid::new_v4().to_string(),
            "htm": method,
            "htu": urls::without_query_and_fragment(url),
            "iat": now.as_secs(),
        });
        if let Some(n) = nonce {
            claims["nonce"] = n.into();
        }
        if let Some(t) = access_token {
            claims["ath"] = URL_SAFE_NO_PAD
                .encode(Sha256::digest(t.expose().as_bytes()))
                .into();
        }
        let enc = |v: &serde_json::Value| -> Result<String, OAuthError> {
            serde_json::to_vec(v)
                .map(|b| URL_SAFE_NO_PAD.encode(b))
                .map_err(|e| OAuthError::Key(format!("DPoP proof: {e}")))
        };
        let signing_input = format!("{}.{}", enc(&header)?, enc(&claims)?);
        let sig: Signature = self.signing.sign(signing_input.as_bytes());
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig.to_bytes())
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::VerifyingKey;
    use p256::ecdsa::signature::Verifier;

    #[test]
    fn proof_verifies_and_carries_the_claims() {
        let k = DpopKey::generate().unwrap();
        let tok = Secret::new("at-123");
        let p = k
            .proof(
                "POST",
                "https://rs.example/mcp?x=1#f",
                Some("n1"),
                Some(&tok),
                UnixTime::from_secs(1700000000),
            )
            .unwrap();
        let parts: Vec<&str> = p.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], "ES256");
        assert!(header["jwk"].get("d").is_none());
        assert_eq!(claims["htm"], "POST");
        assert_eq!(claims["htu"], "https://rs.example/mcp");
        assert_eq!(claims["nonce"], "n1");
        assert_eq!(claims["iat"], 1700000000);
        assert_eq!(
            claims["ath"],
            URL_SAFE_NO_PAD.encode(Sha256::digest(b"at-123"))
        );
        let sig = Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
        let vk = VerifyingKey::from(&k.signing);
        vk.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
        assert!(!format!("{k:?}").contains(&k.x));
        assert_eq!(k.thumbprint().len(), 43);
    }
}
