//! RFC 7636 PKCE with S256 only (R-FLOW-1). `plain` is never produced.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use latchkey_core::Secret;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A fresh verifier: 32 CSPRNG bytes, base64url without padding (43 characters).
pub fn new_verifier() -> Secret {
    Secret::new(random_b64url(32))
}

/// `BASE64URL(SHA-256(verifier))`.
pub fn challenge(verifier: &Secret) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.expose().as_bytes()))
}

/// A fresh `state`: 32 CSPRNG bytes (256 bits, R-FLOW-2), base64url.
pub fn new_state() -> Secret {
    Secret::new(random_b64url(32))
}

/// Hex SHA-256 of a state value, the only form that is ever stored (R-FLOW-2).
pub fn state_hash(state: &str) -> String {
    let d = Sha256::digest(state.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn random_b64url(n: usize) -> String {
    let mut buf = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b_vector() {
        let v = Secret::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(challenge(&v), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn verifier_and_state_shape() {
        let v = new_verifier();
        assert_eq!(v.len(), 43);
        assert!(
            v.expose()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(new_state().expose(), new_state().expose());
        assert_eq!(state_hash("abc").len(), 64);
    }
}
