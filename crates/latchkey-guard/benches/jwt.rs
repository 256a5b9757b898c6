//! Criterion benchmark: JWT validation with a warm JWKS, per algorithm (issue 8's
//! "at least 15,000 RS256 validations per second per core"). The scripted identity
//! provider serves the JWKS over loopback HTTP; it is fetched once before measuring.
//! Run with `cargo bench -p latchkey-guard --bench jwt`; figures in BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // bench code

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use latchkey_core::UnixTime;
use latchkey_core::time::ManualClock;
use latchkey_egress::{Egress, EgressConfig, LoopbackPolicy};
use latchkey_guard::{ClaimMapping, JwksCache, JwksOptions, JwtConfig, JwtVerifier};
use latchkey_testkit::idp::{KeyAlg, ScriptedIdp};
use serde_json::json;

const NOW: u64 = 1_900_000_000;
const RESOURCE: &str = "http://localhost:8080/mcp";

fn validation(c: &mut Criterion) {
    // A current-thread runtime: the figure is per core.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let idp = rt.block_on(ScriptedIdp::start()).unwrap();
    let egress = Egress::new(EgressConfig {
        loopback: LoopbackPolicy::AllowInsecureLoopback,
        ..EgressConfig::default()
    })
    .unwrap();
    let clock = Arc::new(ManualClock::at(UnixTime::from_secs(NOW)));
    let jwks = Arc::new(JwksCache::new(egress, clock, JwksOptions::default()));
    let mut cfg = JwtConfig::jwks(idp.issuer(), RESOURCE, idp.jwks_url());
    cfg.claims = ClaimMapping::default();
    let verifier = JwtVerifier::new(cfg, jwks).unwrap();
    let now = UnixTime::from_secs(NOW);
    let claims = json!({
        "iss": idp.issuer(), "aud": RESOURCE, "sub": "user-1", "tenant": "acme",
        "iat": NOW, "exp": NOW + 300, "scope": "mcp tools:read",
    });
    let mut g = c.benchmark_group("jwt_verify_warm_jwks");
    for (name, alg) in [
        ("rs256", KeyAlg::Rs256),
        ("es256", KeyAlg::Es256),
        ("eddsa", KeyAlg::EdDsa),
    ] {
        let token = idp.mint(alg, &claims);
        // Warm: the JWKS is fetched here, once.
        rt.block_on(verifier.verify(&token, now)).unwrap();
        let fetches = idp.jwks_fetches();
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(verifier.verify(black_box(&token), now))
                    .unwrap()
            })
        });
        assert_eq!(
            idp.jwks_fetches(),
            fetches,
            "measured with a warm JWKS only"
        );
    }
    g.finish();
}

criterion_group!(benches, validation);
criterion_main!(benches);
