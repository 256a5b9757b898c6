//! Local JWT verification: algorithms, claims, and the attacks on both.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use latchkey_core::Secret;
use latchkey_guard::{AuthSource, GuardError, InvalidReason, JwtConfig, JwtVerifier, Role};
use latchkey_testkit::idp::{KeyAlg, ScriptedIdp, mint_hs256, unsigned_token};
use serde_json::json;

use crate::{RESOURCE, claims, clock, jwks_cache, jwt_verifier, now};

fn invalid(r: InvalidReason) -> Result<latchkey_guard::Principal, GuardError> {
    Err(GuardError::Invalid(r))
}

#[tokio::test]
async fn valid_rs256_es256_and_eddsa_tokens() {
    let idp = ScriptedIdp::start().await.unwrap();
    let clock = clock();
    let v = jwt_verifier(&idp, &clock);
    for alg in KeyAlg::ALL {
        let t = idp.mint(alg, &claims(&idp, json!({"roles": ["latchkey:admin"]})));
        let p = v
            .verify(&t, now())
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(p.subject.as_str(), "user-1");
        assert_eq!(p.tenant.as_str(), "acme");
        assert_eq!(p.scopes, vec!["mcp", "tools:read"]);
        assert_eq!(p.role, Role::Admin);
        assert_eq!(p.source, AuthSource::Jwt);
    }
    // One JWKS fetch served all three algorithms.
    assert_eq!(idp.jwks_fetches(), 1);
}

#[tokio::test]
async fn scp_array_no_tenant_and_member_role() {
    let idp = ScriptedIdp::start().await.unwrap();
    let v = jwt_verifier(&idp, &clock());
    let t = idp.mint(
        KeyAlg::Es256,
        &claims(
            &idp,
            json!({"scope": null, "scp": ["a", "b"], "tenant": null, "aud": ["other", RESOURCE]}),
        ),
    );
    // No tenant claim: refused, never a default tenant.
    assert_eq!(v.verify(&t, now()).await, invalid(InvalidReason::Tenant));
    let t = idp.mint(
        KeyAlg::Es256,
        &claims(
            &idp,
            json!({"scope": null, "scp": ["a", "b"], "aud": ["other", RESOURCE]}),
        ),
    );
    let p = v.verify(&t, now()).await.unwrap();
    assert_eq!(p.scopes, vec!["a", "b"]);
    assert_eq!(p.tenant.as_str(), "acme");
    assert_eq!(p.role, Role::Member);
}

#[tokio::test]
async fn expiry_and_not_before_with_leeway() {
    let idp = ScriptedIdp::start().await.unwrap();
    let v = jwt_verifier(&idp, &clock());
    let n = crate::NOW;
    let expired = idp.mint(KeyAlg::Rs256, &claims(&idp, json!({"exp": n - 31})));
    assert_eq!(
        v.verify(&expired, now()).await,
        invalid(InvalidReason::Expired)
    );
    let in_leeway = idp.mint(KeyAlg::Rs256, &claims(&idp, json!({"exp": n - 10})));
    assert!(v.verify(&in_leeway, now()).await.is_ok());
    let no_exp = idp.mint(KeyAlg::Rs256, &claims(&idp, json!({"exp": null})));
    assert_eq!(
        v.verify(&no_exp, now()).await,
        invalid(InvalidReason::Expired)
    );
    let string_exp = idp.mint(KeyAlg::Rs256, &claims(&idp, json!({"exp": "9999999999"})));
    assert_eq!(
        v.verify(&string_exp, now()).await,
        invalid(InvalidReason::Expired)
    );
    let future = idp.mint(KeyAlg::Rs256, &claims(&idp, json!({"nbf": n + 120})));
    assert_eq!(
        v.verify(&future, now()).await,
        invalid(InvalidReason::NotYetValid)
    );
    let skewed = idp.mint(KeyAlg::Rs256, &claims(&idp, json!({"nbf": n + 20})));
    assert!(v.verify(&skewed, now()).await.is_ok());
    // Time is a parameter: the same token is expired later.
    let t = idp.mint(KeyAlg::Rs256, &claims(&idp, json!({})));
    let later = now().plus(Duration::from_secs(331));
    assert_eq!(v.verify(&t, later).await, invalid(InvalidReason::Expired));
}

#[tokio::test]
async fn audience_and_issuer_are_exact_strings() {
    let idp = ScriptedIdp::start().await.unwrap();
    let v = jwt_verifier(&idp, &clock());
    for aud in [
        json!("http://localhost:8080/other"),
        json!([]),
        json!(null),
        json!(["x"]),
    ] {
        let t = idp.mint(KeyAlg::Rs256, &claims(&idp, json!({"aud": aud})));
        assert_eq!(v.verify(&t, now()).await, invalid(InvalidReason::Audience));
    }
    let slash = idp.mint(
        KeyAlg::Rs256,
        &claims(&idp, json!({"aud": format!("{RESOURCE}/")})),
    );
    assert_eq!(
        v.verify(&slash, now()).await,
        invalid(InvalidReason::Audience)
    );
    for iss in [
        json!(format!("{}/", idp.issuer())),
        json!(idp.issuer().to_uppercase()),
        json!("https://evil.example"),
        json!([idp.issuer()]),
        json!(null),
    ] {
        let t = idp.mint(KeyAlg::EdDsa, &claims(&idp, json!({"iss": iss})));
        assert_eq!(
            v.verify(&t, now()).await,
            invalid(InvalidReason::Issuer),
            "{iss}"
        );
    }
    // A configured issuer with a trailing slash is not "normalised" either.
    let mut cfg = crate::jwt_config(&idp);
    cfg.issuer = format!("{}/", idp.issuer());
    let slash_cfg = JwtVerifier::new(cfg, jwks_cache(&clock())).unwrap();
    let t = idp.mint(KeyAlg::Rs256, &claims(&idp, json!({})));
    assert_eq!(
        slash_cfg.verify(&t, now()).await,
        invalid(InvalidReason::Issuer)
    );
}

#[tokio::test]
async fn subject_and_tenant_are_required() {
    let idp = ScriptedIdp::start().await.unwrap();
    let v = jwt_verifier(&idp, &clock());
    let t = idp.mint(KeyAlg::Rs256, &claims(&idp, json!({"sub": null})));
    assert_eq!(v.verify(&t, now()).await, invalid(InvalidReason::Subject));
    let t = idp.mint(KeyAlg::Rs256, &claims(&idp, json!({"sub": ""})));
    assert_eq!(v.verify(&t, now()).await, invalid(InvalidReason::Subject));

    let mut cfg = crate::jwt_config(&idp);
    cfg.claims.tenant_claims = vec!["urn:example:account_id".into(), "account_id".into()];
    let strict = JwtVerifier::new(cfg, jwks_cache(&clock())).unwrap();
    let t = idp.mint(KeyAlg::Rs256, &claims(&idp, json!({})));
    assert_eq!(
        strict.verify(&t, now()).await,
        invalid(InvalidReason::Tenant)
    );
    let t = idp.mint(KeyAlg::Rs256, &claims(&idp, json!({"account_id": 77})));
    assert_eq!(
        strict.verify(&t, now()).await.unwrap().tenant.as_str(),
        "77"
    );
}

#[tokio::test]
async fn alg_none_is_refused() {
    let idp = ScriptedIdp::start().await.unwrap();
    let v = jwt_verifier(&idp, &clock());
    let c = claims(&idp, json!({}));
    for alg in ["none", "None", "NONE", ""] {
        let t = unsigned_token(&json!({"alg": alg, "kid": idp.kid(KeyAlg::Rs256)}), &c);
        assert_eq!(
            v.verify(&t, now()).await,
            invalid(InvalidReason::Algorithm),
            "{alg}"
        );
        // With a fake signature segment too.
        let t = format!("{t}c2ln");
        assert_eq!(
            v.verify(&t, now()).await,
            invalid(InvalidReason::Algorithm),
            "{alg}"
        );
    }
    let no_alg = unsigned_token(&json!({"kid": idp.kid(KeyAlg::Rs256)}), &c);
    assert_eq!(
        v.verify(&no_alg, now()).await,
        invalid(InvalidReason::Algorithm)
    );
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let idp = ScriptedIdp::start().await.unwrap();
    let v = jwt_verifier(&idp, &clock());
    let c = claims(&idp, json!({}));
    let kid = idp.kid(KeyAlg::Rs256);
    // The classic confusion: the public key (PEM, or the JWK's modulus) as HMAC secret.
    let pem = mint_hs256(idp.rsa_public_key_pem().as_bytes(), &c, Some(&kid));
    assert_eq!(
        v.verify(&pem, now()).await,
        invalid(InvalidReason::Algorithm)
    );
    let jwks: serde_json::Value = reqwest_free_get_jwks(&idp).await;
    let n = jwks["keys"][0]["n"].as_str().unwrap().to_owned();
    let by_n = mint_hs256(&URL_SAFE_NO_PAD.decode(n).unwrap(), &c, Some(&kid));
    assert_eq!(
        v.verify(&by_n, now()).await,
        invalid(InvalidReason::Algorithm)
    );
    // HS384/HS512 and PS256 are refused in JWKS mode as well.
    for alg in ["HS384", "HS512", "PS256", "ES384", "RS512"] {
        let t = unsigned_token(&json!({"alg": alg, "kid": kid}), &c);
        assert_eq!(
            v.verify(&format!("{t}c2ln"), now()).await,
            invalid(InvalidReason::Algorithm)
        );
    }
}

/// The JWKS as JSON, fetched through the guard's own egress.
async fn reqwest_free_get_jwks(idp: &ScriptedIdp) -> serde_json::Value {
    let resp = crate::egress()
        .send(latchkey_egress::EgressRequest::get(
            idp.jwks_url(),
            latchkey_egress::UrlSource::Operator,
            1 << 20,
        ))
        .await
        .unwrap();
    resp.json().unwrap()
}

#[tokio::test]
async fn shared_secret_mode_accepts_hs256_only() {
    let idp = ScriptedIdp::start().await.unwrap();
    let secret = "a-shared-secret-of-at-least-32-bytes!!";
    let cfg = JwtConfig::shared_secret(idp.issuer(), RESOURCE, Secret::new(secret));
    let v = JwtVerifier::new(cfg, jwks_cache(&clock())).unwrap();
    let c = claims(&idp, json!({}));
    let good = mint_hs256(secret.as_bytes(), &c, None);
    assert_eq!(
        v.verify(&good, now()).await.unwrap().subject.as_str(),
        "user-1"
    );
    let wrong = mint_hs256(b"another-secret-of-at-least-32-bytes!!!", &c, None);
    assert_eq!(
        v.verify(&wrong, now()).await,
        invalid(InvalidReason::Signature)
    );
    for alg in KeyAlg::ALL {
        let t = idp.mint(alg, &c);
        assert_eq!(
            v.verify(&t, now()).await,
            invalid(InvalidReason::Algorithm),
            "{alg:?}"
        );
    }
    let none = unsigned_token(&json!({"alg": "none"}), &c);
    assert_eq!(
        v.verify(&none, now()).await,
        invalid(InvalidReason::Algorithm)
    );
    // Shared-secret mode never touches the JWKS.
    assert_eq!(idp.jwks_fetches(), 0);
}

#[tokio::test]
async fn kid_is_required_and_must_fit_the_key() {
    let idp = ScriptedIdp::start().await.unwrap();
    let v = jwt_verifier(&idp, &clock());
    let c = claims(&idp, json!({}));
    let t = idp.mint_with_kid(KeyAlg::Rs256, &c, None);
    assert_eq!(
        v.verify(&t, now()).await,
        invalid(InvalidReason::MissingKid)
    );
    let t = idp.mint_with_kid(KeyAlg::Rs256, &c, Some(""));
    assert_eq!(
        v.verify(&t, now()).await,
        invalid(InvalidReason::MissingKid)
    );
    assert_eq!(idp.jwks_fetches(), 0, "no fetch for a token without kid");
    // An ES256 token naming the RSA key's kid.
    let t = idp.mint_with_kid(KeyAlg::Es256, &c, Some(&idp.kid(KeyAlg::Rs256)));
    assert_eq!(
        v.verify(&t, now()).await,
        invalid(InvalidReason::KeyMismatch)
    );
    // An RS256 token naming the EC key's kid.
    let t = idp.mint_with_kid(KeyAlg::Rs256, &c, Some(&idp.kid(KeyAlg::Es256)));
    assert_eq!(
        v.verify(&t, now()).await,
        invalid(InvalidReason::KeyMismatch)
    );
}

#[tokio::test]
async fn tampering_and_garbage_are_invalid() {
    let idp = ScriptedIdp::start().await.unwrap();
    let v = jwt_verifier(&idp, &clock());
    let t = idp.mint(KeyAlg::Rs256, &claims(&idp, json!({})));
    let other = idp.mint(KeyAlg::Rs256, &claims(&idp, json!({"sub": "admin"})));
    let parts: Vec<&str> = t.split('.').collect();
    let other_parts: Vec<&str> = other.split('.').collect();
    let swapped = format!("{}.{}.{}", parts[0], other_parts[1], parts[2]);
    assert_eq!(
        v.verify(&swapped, now()).await,
        invalid(InvalidReason::Signature)
    );
    let crit = unsigned_token(
        &json!({"alg": "RS256", "kid": idp.kid(KeyAlg::Rs256), "crit": ["exp"], "exp": 1}),
        &claims(&idp, json!({})),
    );
    assert_eq!(
        v.verify(&format!("{crit}c2ln"), now()).await,
        invalid(InvalidReason::CriticalHeader)
    );
    for junk in ["a.b.c", "!!.??.**", ""] {
        assert_eq!(
            v.verify(junk, now()).await,
            invalid(InvalidReason::Malformed),
            "{junk}"
        );
    }
    // A JSON array as payload.
    let arr = unsigned_token(
        &json!({"alg": "RS256", "kid": idp.kid(KeyAlg::Rs256)}),
        &json!([1]),
    );
    assert!(v.verify(&format!("{arr}c2ln"), now()).await.is_err());
}
