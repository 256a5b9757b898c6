//! JWT access tokens as the guard reads them: the compact form, the JOSE header, the
//! claims (issuer, audience, times, scopes, principal mapping) and JWKS documents.
//!
//! The first byte picks the mode. Even: the rest is the token as received. Odd: the
//! rest is split at the first 0xFF into a header and a claims text, which are encoded
//! and signed with the verifier's HS256 key, so the claim checks behind the signature
//! are reached too.
#![no_main]
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use latchkey_core::{Secret, SystemClock, UnixTime};
use latchkey_guard::{GuardError, JwksCache, JwksOptions, JwtConfig, JwtVerifier};
use libfuzzer_sys::fuzz_target;

const KEY: &str = "fuzzing-key-of-at-least-32-bytes-long";

fn verifier() -> &'static JwtVerifier {
    static V: OnceLock<JwtVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let egress = latchkey_egress::Egress::new(Default::default()).unwrap();
        let jwks = Arc::new(JwksCache::new(
            egress,
            Arc::new(SystemClock),
            JwksOptions::default(),
        ));
        let cfg = JwtConfig::shared_secret(
            "https://as.example",
            "https://latchkey.example/mcp",
            Secret::new(KEY),
        );
        JwtVerifier::new(cfg, jwks).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // Keys as a JWKS serves them, turned into verification keys as the guard does.
    if let Ok(keys) = latchkey_guard::jwks::parse_jwks(rest) {
        for jwk in &keys {
            let _ = DecodingKey::from_jwk(jwk);
        }
    }
    let token = if mode & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let cut = rest.iter().position(|&b| b == 0xff).unwrap_or(rest.len());
        let (header, claims) = (&rest[..cut], rest.get(cut + 1..).unwrap_or_default());
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let key = EncodingKey::from_secret(KEY.as_bytes());
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{input}.{sig}")
    };
    let now = UnixTime::from_secs(1_800_000_000);
    match futures_executor::block_on(verifier().verify(&token, now)) {
        Ok(p) => {
            // Accepted only with the configured issuer and audience.
            let claims: serde_json::Value = token
                .split('.')
                .nth(1)
                .and_then(|c| URL_SAFE_NO_PAD.decode(c).ok())
                .and_then(|c| serde_json::from_slice(&c).ok())
                .unwrap();
            assert_eq!(claims["iss"], "https://as.example");
            let _ = format!("{p:?}");
        }
        Err(GuardError::Invalid(_)) => {}
        Err(e) => panic!("a shared-secret verifier answered {e:?}"),
    }
});
