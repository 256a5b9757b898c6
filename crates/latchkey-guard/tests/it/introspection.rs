//! RFC 7662 introspection of opaque tokens, the positive cache, outages, and the
//! verification order (local JWT first, then introspection).

use std::time::{Duration, Instant};

use latchkey_core::Secret;
use latchkey_guard::{
    AuthSource, GuardError, IntrospectionAuth, Introspector, InvalidReason, Role, UnavailableReason,
};
use latchkey_testkit::basic_credentials;
use latchkey_testkit::idp::{IntrospectionMode, JwksMode, KeyAlg, ScriptedIdp};
use serde_json::{Value, json};

use crate::{
    INTROSPECTION_SECRET, Options, RESOURCE, auth_headers, claims, fixture, introspection_config,
    introspector, now,
};

fn active(idp: &ScriptedIdp, extra: Value) -> Value {
    let mut a = json!({
        "active": true,
        "iss": idp.issuer(),
        "aud": RESOURCE,
        "sub": "user-9",
        "tenant": "globex",
        "scope": "mcp",
        "exp": crate::NOW + 600,
        "roles": "latchkey:admin other",
    });
    if let (Some(m), Value::Object(e)) = (a.as_object_mut(), extra) {
        for (k, v) in e {
            if v.is_null() {
                m.remove(&k);
            } else {
                m.insert(k, v);
            }
        }
    }
    a
}

#[tokio::test]
async fn active_token_yields_a_principal_and_the_request_is_well_formed() {
    let idp = ScriptedIdp::start().await.unwrap();
    let i = introspector(&idp);
    idp.set_introspection("opaque-token-1", active(&idp, json!({})));
    let p = i.verify("opaque-token-1", now()).await.unwrap();
    assert_eq!(p.subject.as_str(), "user-9");
    assert_eq!(p.tenant.as_str(), "globex");
    assert_eq!(p.role, Role::Admin);
    assert_eq!(p.scopes, vec!["mcp"]);
    assert_eq!(p.source, AuthSource::Introspection);
    let reqs = idp.introspection_requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].body["token"], "opaque-token-1");
    assert_eq!(reqs[0].body["token_type_hint"], "access_token");
    assert_eq!(
        basic_credentials(&reqs[0]),
        Some(("latchkey".into(), INTROSPECTION_SECRET.into()))
    );
}

#[tokio::test]
async fn bearer_secret_client_auth() {
    let idp = ScriptedIdp::start().await.unwrap();
    let mut cfg = introspection_config(&idp);
    cfg.auth = IntrospectionAuth::Bearer(Secret::new("internal-bearer-secret"));
    let i = Introspector::new(cfg, crate::egress()).unwrap();
    idp.set_introspection("t", active(&idp, json!({})));
    i.verify("t", now()).await.unwrap();
    assert_eq!(
        idp.introspection_requests()[0].headers["authorization"],
        "Bearer internal-bearer-secret"
    );
}

#[tokio::test]
async fn positive_answers_are_cached_briefly() {
    let f = fixture(Options::default()).await;
    let idp = &f.idp;
    idp.set_introspection("opaque-a", active(idp, json!({})));
    let h = auth_headers("Bearer opaque-a");
    for _ in 0..5 {
        f.auth.authenticate(&h).await.unwrap();
    }
    assert_eq!(idp.introspection_calls(), 1);
    f.clock.advance(Duration::from_secs(29));
    f.auth.authenticate(&h).await.unwrap();
    assert_eq!(idp.introspection_calls(), 1);
    f.clock.advance(Duration::from_secs(2));
    f.auth.authenticate(&h).await.unwrap();
    assert_eq!(idp.introspection_calls(), 2, "re-introspected after 30 s");

    // Never cached past `exp`.
    idp.set_introspection("opaque-b", active(idp, json!({"exp": crate::NOW + 40})));
    let h = auth_headers("Bearer opaque-b");
    f.auth.authenticate(&h).await.unwrap();
    f.auth.authenticate(&h).await.unwrap();
    assert_eq!(idp.introspection_calls(), 3);
    f.clock.advance(Duration::from_secs(10));
    // Past exp (now NOW+41) but within leeway: asked again, still accepted.
    f.auth.authenticate(&h).await.unwrap();
    assert_eq!(idp.introspection_calls(), 4);
}

#[tokio::test]
async fn inactive_is_invalid_and_not_cached() {
    let f = fixture(Options::default()).await;
    let h = auth_headers("Bearer unknown-opaque");
    for n in 1..=2 {
        assert_eq!(
            f.auth.authenticate(&h).await,
            Err(GuardError::Invalid(InvalidReason::Inactive))
        );
        assert_eq!(f.idp.introspection_calls(), n);
    }
}

#[tokio::test]
async fn outages_are_unavailable() {
    let idp = ScriptedIdp::start().await.unwrap();
    let i = introspector(&idp);
    idp.set_introspection("t", active(&idp, json!({})));
    for (mode, want) in [
        (IntrospectionMode::Down, UnavailableReason::Introspection),
        (IntrospectionMode::Garbage, UnavailableReason::Introspection),
        (
            IntrospectionMode::RefuseClient,
            UnavailableReason::IntrospectionAuth,
        ),
    ] {
        idp.set_introspection_mode(mode);
        assert_eq!(
            i.verify("t", now()).await,
            Err(GuardError::Unavailable(want)),
            "{mode:?}"
        );
    }
    // An answer without a boolean `active` is malformed, not "inactive".
    idp.set_introspection_mode(IntrospectionMode::Serve);
    idp.set_introspection("weird", json!({"active": "yes", "sub": "x"}));
    assert_eq!(
        i.verify("weird", now()).await,
        Err(GuardError::Unavailable(UnavailableReason::Introspection))
    );
}

#[tokio::test]
async fn slow_introspection_times_out_after_two_seconds() {
    let idp = ScriptedIdp::start().await.unwrap();
    let i = introspector(&idp);
    idp.set_introspection("t", active(&idp, json!({})));
    idp.set_introspection_mode(IntrospectionMode::Slow(Duration::from_secs(5)));
    let started = Instant::now();
    assert_eq!(
        i.verify("t", now()).await,
        Err(GuardError::Unavailable(UnavailableReason::Introspection))
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

#[tokio::test]
async fn answer_claims_are_checked_when_present() {
    let idp = ScriptedIdp::start().await.unwrap();
    let i = introspector(&idp);
    let cases = [
        (
            json!({"iss": format!("{}/", idp.issuer())}),
            InvalidReason::Issuer,
        ),
        (
            json!({"aud": "http://localhost:8080/other"}),
            InvalidReason::Audience,
        ),
        (json!({"exp": crate::NOW - 60}), InvalidReason::Expired),
        (json!({"nbf": crate::NOW + 600}), InvalidReason::NotYetValid),
        (json!({"sub": null}), InvalidReason::Subject),
    ];
    for (n, (extra, want)) in cases.into_iter().enumerate() {
        let token = format!("tok-{n}");
        idp.set_introspection(&token, active(&idp, extra));
        assert_eq!(
            i.verify(&token, now()).await,
            Err(GuardError::Invalid(want)),
            "{want:?}"
        );
    }
    // Absent iss/aud/exp are fine.
    idp.set_introspection(
        "minimal",
        json!({"active": true, "sub": "u", "tenant": "t"}),
    );
    let p = i.verify("minimal", now()).await.unwrap();
    assert!(p.scopes.is_empty());
}

#[tokio::test]
async fn jwt_refused_locally_falls_through_to_introspection() {
    let f = fixture(Options::default()).await;
    let idp = &f.idp;
    // A JWT whose kid the JWKS does not know, but which the IdP says is active.
    let t = idp.mint_with_kid(KeyAlg::Rs256, &claims(idp, json!({})), Some("elsewhere"));
    idp.set_introspection(&t, active(idp, json!({})));
    let p = f
        .auth
        .authenticate(&auth_headers(&format!("Bearer {t}")))
        .await
        .unwrap();
    assert_eq!(p.source, AuthSource::Introspection);
    assert_eq!(idp.introspection_calls(), 1);
    // A valid JWT never reaches introspection.
    let good = idp.mint(KeyAlg::Es256, &claims(idp, json!({})));
    let p = f
        .auth
        .authenticate(&auth_headers(&format!("Bearer {good}")))
        .await
        .unwrap();
    assert_eq!(p.source, AuthSource::Jwt);
    assert_eq!(idp.introspection_calls(), 1);
}

#[tokio::test]
async fn jwks_down_with_introspection_down_is_unavailable() {
    let f = fixture(Options::default()).await;
    f.idp.set_jwks_mode(JwksMode::Down);
    f.idp.set_introspection_mode(IntrospectionMode::Down);
    let t = f.idp.mint(KeyAlg::Rs256, &claims(&f.idp, json!({})));
    assert!(matches!(
        f.auth
            .authenticate(&auth_headers(&format!("Bearer {t}")))
            .await,
        Err(GuardError::Unavailable(_))
    ));
    // Without introspection, the JWKS outage itself is reported.
    let f = fixture(Options {
        introspection: false,
        ..Options::default()
    })
    .await;
    f.idp.set_jwks_mode(JwksMode::Down);
    let t = f.idp.mint(KeyAlg::Rs256, &claims(&f.idp, json!({})));
    assert_eq!(
        f.auth
            .authenticate(&auth_headers(&format!("Bearer {t}")))
            .await,
        Err(GuardError::Unavailable(UnavailableReason::Jwks))
    );
}

#[tokio::test]
async fn opaque_bearer_is_never_treated_as_an_api_key() {
    let f = fixture(Options::default()).await;
    // A real API key, registered in the store, sent on the Bearer scheme.
    let key = latchkey_guard::mint_api_key();
    f.store
        .insert(key.hash, crate::api_key::principal("key-owner"));
    let h = auth_headers(&format!("Bearer {}", key.key.expose()));
    assert_eq!(
        f.auth.authenticate(&h).await,
        Err(GuardError::Invalid(InvalidReason::Inactive))
    );
    assert_eq!(f.idp.introspection_calls(), 1, "it went to introspection");

    // Without introspection an opaque bearer is simply invalid.
    let f = fixture(Options {
        introspection: false,
        ..Options::default()
    })
    .await;
    f.store
        .insert(key.hash, crate::api_key::principal("key-owner"));
    assert_eq!(
        f.auth.authenticate(&h).await,
        Err(GuardError::Invalid(InvalidReason::NoVerifier))
    );
}

/// Issue 15, item 1, on the introspection path: an active answer without a usable
/// tenant claim is invalid (never a default tenant), and only the admin value in the
/// role claim makes an admin.
#[tokio::test]
async fn an_answer_without_the_tenant_is_invalid_and_no_role_is_a_member() {
    let idp = ScriptedIdp::start().await.unwrap();
    let i = introspector(&idp);
    let tenants = [
        (json!("globex"), Some("globex")),
        (json!(9), Some("9")),
        (Value::Null, None),
        (json!(""), None),
        (json!(["globex"]), None),
    ];
    let roles = [
        (json!(["latchkey:admin"]), true),
        (Value::Null, false),
        (json!("member"), false),
        (json!(["admin"]), false),
    ];
    let mut n = 0;
    for (tenant, want_tenant) in &tenants {
        for (role, want_admin) in &roles {
            n += 1;
            let token = format!("tenantless-{n}");
            idp.set_introspection(
                &token,
                active(&idp, json!({"tenant": tenant, "roles": role})),
            );
            let got = i.verify(&token, now()).await;
            match want_tenant {
                None => assert_eq!(
                    got,
                    Err(GuardError::Invalid(InvalidReason::Tenant)),
                    "{tenant} {role}"
                ),
                Some(t) => {
                    let p = got.unwrap();
                    assert_eq!(p.tenant.as_str(), *t);
                    assert_eq!(p.role == Role::Admin, *want_admin, "{tenant} {role}");
                }
            }
        }
    }
}
