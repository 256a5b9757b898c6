//! The JWKS cache: TTL, rotation through unknown-kid refetch, the refetch rate limit,
//! single flight, and outages reported as "unavailable", never "invalid".

use std::sync::Arc;
use std::time::Duration;

use latchkey_core::time::ManualClock;
use latchkey_guard::{GuardError, InvalidReason, JwtVerifier, UnavailableReason};
use latchkey_testkit::idp::{JwksMode, KeyAlg, ScriptedIdp};
use serde_json::json;

use crate::{claims, clock, jwt_verifier, past_refetch_interval};

fn unavailable() -> GuardError {
    GuardError::Unavailable(UnavailableReason::Jwks)
}

/// A full verification every time (`verify_claims`: the JWKS cache is what these tests
/// are about, not the remembered verified tokens that `verify` adds).
async fn verify(v: &JwtVerifier, clock: &ManualClock, t: &str) -> Result<(), GuardError> {
    use latchkey_core::Clock;
    v.verify_claims(t, clock.now(), latchkey_guard::AuthSource::Jwt)
        .await
        .map(|_| ())
}

/// A verified token is remembered by `verify` for at most 30 s and never past its
/// `exp`; a key gone from the JWKS stops it within those 30 s; a refused token is
/// not remembered.
#[tokio::test]
async fn verified_tokens_are_remembered_briefly() {
    use latchkey_core::Clock;
    let idp = ScriptedIdp::start().await.unwrap();
    let clock = clock();
    let v = jwt_verifier(&idp, &clock);
    let exp = json!({"exp": crate::NOW + 3600});
    let old = idp.mint(KeyAlg::Rs256, &claims(&idp, exp.clone()));
    v.verify(&old, clock.now()).await.unwrap();
    assert_eq!(v.remembered_len(), 1);
    // The key goes away: the remembered token is still accepted for a while...
    idp.rotate();
    past_refetch_interval(&clock);
    let new = idp.mint(KeyAlg::Rs256, &claims(&idp, exp.clone()));
    v.verify(&new, clock.now()).await.unwrap();
    assert!(v.verify(&old, clock.now()).await.is_ok(), "remembered");
    // ... and refused once 30 s have passed since it was verified.
    clock.advance(Duration::from_secs(20));
    assert_eq!(
        v.verify(&old, clock.now()).await,
        Err(GuardError::Invalid(InvalidReason::UnknownKid))
    );
    // Never past `exp`: a token expiring in 10 s is judged afresh after 11 (still
    // within the 30 s leeway), and refused once past its leeway.
    let short = idp.mint(
        KeyAlg::Rs256,
        &claims(&idp, json!({"exp": clock.now().as_secs() + 10})),
    );
    v.verify(&short, clock.now()).await.unwrap();
    clock.advance(Duration::from_secs(11));
    v.verify(&short, clock.now()).await.unwrap();
    clock.advance(Duration::from_secs(30));
    assert_eq!(
        v.verify(&short, clock.now()).await,
        Err(GuardError::Invalid(InvalidReason::Expired))
    );
    // A refused token is not remembered.
    let before = v.remembered_len();
    let forged = format!("{}x", &new[..new.len() - 1]);
    assert!(v.verify(&forged, clock.now()).await.is_err());
    assert_eq!(v.remembered_len(), before);
}

#[tokio::test]
async fn documents_are_cached_for_ten_minutes() {
    let idp = ScriptedIdp::start().await.unwrap();
    let clock = clock();
    let v = jwt_verifier(&idp, &clock);
    let t = idp.mint(
        KeyAlg::Rs256,
        &claims(&idp, json!({"exp": crate::NOW + 3600})),
    );
    for _ in 0..5 {
        verify(&v, &clock, &t).await.unwrap();
    }
    assert_eq!(idp.jwks_fetches(), 1);
    clock.advance(Duration::from_secs(599));
    verify(&v, &clock, &t).await.unwrap();
    assert_eq!(idp.jwks_fetches(), 1);
    clock.advance(Duration::from_secs(2));
    verify(&v, &clock, &t).await.unwrap();
    assert_eq!(idp.jwks_fetches(), 2, "refetched after the TTL");
}

#[tokio::test]
async fn key_rotation_is_picked_up_by_an_unknown_kid_refetch() {
    let idp = ScriptedIdp::start().await.unwrap();
    let clock = clock();
    let v = jwt_verifier(&idp, &clock);
    let exp = json!({"exp": crate::NOW + 3600});
    let old = idp.mint(KeyAlg::Rs256, &claims(&idp, exp.clone()));
    verify(&v, &clock, &old).await.unwrap();
    assert_eq!(idp.jwks_fetches(), 1);

    idp.rotate();
    let new = idp.mint(KeyAlg::Rs256, &claims(&idp, exp.clone()));
    assert_ne!(idp.kid(KeyAlg::Rs256), "rsa-1");
    past_refetch_interval(&clock);
    verify(&v, &clock, &new).await.unwrap();
    assert_eq!(idp.jwks_fetches(), 2, "one forced refetch");
    // The new document replaced the old one: the old kid is now unknown, and asking
    // for it again right away does not refetch.
    assert_eq!(
        verify(&v, &clock, &old).await,
        Err(GuardError::Invalid(InvalidReason::UnknownKid))
    );
    assert_eq!(idp.jwks_fetches(), 2);
    for alg in [KeyAlg::Es256, KeyAlg::EdDsa] {
        let t = idp.mint(alg, &claims(&idp, exp.clone()));
        verify(&v, &clock, &t).await.unwrap();
    }
    assert_eq!(idp.jwks_fetches(), 2);
}

#[tokio::test]
async fn forced_refetches_are_rate_limited() {
    let idp = ScriptedIdp::start().await.unwrap();
    let clock = clock();
    let v = jwt_verifier(&idp, &clock);
    let exp = json!({"exp": crate::NOW + 3600});
    verify(
        &v,
        &clock,
        &idp.mint(KeyAlg::Rs256, &claims(&idp, exp.clone())),
    )
    .await
    .unwrap();
    idp.rotate();
    let new = idp.mint(KeyAlg::Rs256, &claims(&idp, exp.clone()));
    // Within the interval since the last fetch: no refetch, the kid is unknown.
    assert_eq!(
        verify(&v, &clock, &new).await,
        Err(GuardError::Invalid(InvalidReason::UnknownKid))
    );
    assert_eq!(idp.jwks_fetches(), 1);
    past_refetch_interval(&clock);
    verify(&v, &clock, &new).await.unwrap();
    assert_eq!(idp.jwks_fetches(), 2);
}

#[tokio::test]
async fn an_unknown_kid_storm_causes_at_most_two_fetches() {
    let idp = ScriptedIdp::start().await.unwrap();
    let clock = clock();
    let v = Arc::new(jwt_verifier(&idp, &clock));
    let c = claims(&idp, json!({"exp": crate::NOW + 3600}));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        if i == 100 {
            // Let the first wave finish, then move past the rate-limit interval once.
            while let Some(r) = tasks.join_next().await {
                assert_eq!(
                    r.unwrap(),
                    Err(GuardError::Invalid(InvalidReason::UnknownKid))
                );
            }
            past_refetch_interval(&clock);
        }
        let kid = format!("random-{i}-{}", rand_suffix(i));
        let t = idp.mint_with_kid(KeyAlg::Rs256, &c, Some(&kid));
        let (v, clock) = (v.clone(), clock.clone());
        tasks.spawn(async move { verify(&v, &clock, &t).await });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(
            r.unwrap(),
            Err(GuardError::Invalid(InvalidReason::UnknownKid))
        );
    }
    assert!(idp.jwks_fetches() <= 2, "{} fetches", idp.jwks_fetches());
    assert_eq!(idp.jwks_fetches(), 2);
    // A real token still verifies from the cache.
    verify(&v, &clock, &idp.mint(KeyAlg::EdDsa, &c))
        .await
        .unwrap();
    assert_eq!(idp.jwks_fetches(), 2);
}

fn rand_suffix(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17)
}

#[tokio::test]
async fn concurrent_first_requests_share_one_fetch() {
    let idp = ScriptedIdp::start().await.unwrap();
    let clock = clock();
    let v = Arc::new(jwt_verifier(&idp, &clock));
    let t = idp.mint(KeyAlg::Es256, &claims(&idp, json!({})));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (v, clock, t) = (v.clone(), clock.clone(), t.clone());
        tasks.spawn(async move { verify(&v, &clock, &t).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(idp.jwks_fetches(), 1);
}

#[tokio::test]
async fn jwks_down_or_garbage_is_unavailable_not_invalid() {
    for mode in [JwksMode::Down, JwksMode::Garbage] {
        let idp = ScriptedIdp::start().await.unwrap();
        let clock = clock();
        let v = jwt_verifier(&idp, &clock);
        let t = idp.mint(
            KeyAlg::Rs256,
            &claims(&idp, json!({"exp": crate::NOW + 3600})),
        );
        idp.set_jwks_mode(mode);
        assert_eq!(verify(&v, &clock, &t).await, Err(unavailable()), "{mode:?}");
        // The failure is remembered: an outage is not retried on every request.
        for _ in 0..20 {
            assert_eq!(verify(&v, &clock, &t).await, Err(unavailable()));
        }
        assert_eq!(idp.jwks_fetches(), 1, "{mode:?}");
        // Recovery after the interval.
        idp.set_jwks_mode(JwksMode::Serve);
        past_refetch_interval(&clock);
        verify(&v, &clock, &t).await.unwrap();
        assert_eq!(idp.jwks_fetches(), 2);
    }
}

#[tokio::test]
async fn a_failed_refresh_after_the_ttl_is_unavailable() {
    let idp = ScriptedIdp::start().await.unwrap();
    let clock = clock();
    let v = jwt_verifier(&idp, &clock);
    let t = idp.mint(
        KeyAlg::Rs256,
        &claims(&idp, json!({"exp": crate::NOW + 3600})),
    );
    verify(&v, &clock, &t).await.unwrap();
    idp.set_jwks_mode(JwksMode::Down);
    clock.advance(Duration::from_secs(601));
    assert_eq!(verify(&v, &clock, &t).await, Err(unavailable()));
    // Unknown kid with a fresh cache but a failing refetch: unavailable as well.
    idp.set_jwks_mode(JwksMode::Serve);
    past_refetch_interval(&clock);
    verify(&v, &clock, &t).await.unwrap();
    idp.set_jwks_mode(JwksMode::Down);
    past_refetch_interval(&clock);
    let unknown = idp.mint_with_kid(
        KeyAlg::Rs256,
        &claims(&idp, json!({"exp": crate::NOW + 3600})),
        Some("rotated-away"),
    );
    assert_eq!(verify(&v, &clock, &unknown).await, Err(unavailable()));
    // Known kids keep working from the fresh cache meanwhile.
    verify(&v, &clock, &t).await.unwrap();
}

#[tokio::test]
async fn unreachable_jwks_is_unavailable() {
    let idp = ScriptedIdp::start().await.unwrap();
    let clock = clock();
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let cfg = latchkey_guard::JwtConfig::jwks(
        idp.issuer(),
        crate::RESOURCE,
        format!("http://127.0.0.1:{port}/jwks"),
    );
    let v = JwtVerifier::new(cfg, crate::jwks_cache(&clock)).unwrap();
    let t = idp.mint(KeyAlg::Rs256, &claims(&idp, json!({})));
    assert_eq!(verify(&v, &clock, &t).await, Err(unavailable()));
}
