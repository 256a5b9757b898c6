//! No token, key or secret in any error, response, `Debug` output or log line.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use axum::routing::post;
use latchkey_core::Secret;
use latchkey_guard::credential::parse_authorization;
use latchkey_guard::origin::HostOriginPolicy;
use latchkey_guard::{
    Guard, GuardConfig, JwtConfig, PrmConfig, ResourceResolver, mint_api_key, require_principal,
};
use latchkey_testkit::idp::{IntrospectionMode, JwksMode, KeyAlg, mint_hs256, unsigned_token};
use serde_json::json;
use tower::ServiceExt;

use crate::{INTROSPECTION_SECRET, Options, claims, fixture};

async fn ok() -> &'static str {
    "ok"
}

/// Sends every `Authorization` value through the middleware (allowed and refused
/// hosts) and the authenticator, appending everything observable to `seen`.
async fn exercise(
    app: &Router,
    guard: &Guard,
    authorizations: &[String],
    mode: &str,
    seen: &mut String,
) {
    for a in authorizations {
        for host in ["localhost:8080", "evil.example"] {
            let req = Request::builder()
                .method("POST")
                .uri("/mcp")
                .header(header::HOST, host)
                .header(header::AUTHORIZATION, a)
                .body(Body::empty())
                .unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            seen.push_str(&format!(
                "{mode} {:?} {:?}\n",
                resp.status(),
                resp.headers()
            ));
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            seen.push_str(&String::from_utf8_lossy(&body));
        }
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(header::AUTHORIZATION, a.parse().unwrap());
        let r = guard.authenticator().authenticate(&headers).await;
        seen.push_str(&format!("{r:?}\n"));
        if let Err(e) = &r {
            seen.push_str(&format!("{e}\n{:?}\n", guard.refusal(e, None)));
        }
        seen.push_str(&format!("{:?}\n", parse_authorization(a)));
    }
}

#[tokio::test]
async fn no_token_in_errors_bodies_debug_or_logs() {
    let cap = latchkey_testkit::logs::capture();
    let f = fixture(Options {
        required_scopes: vec!["mcp".into()],
        ..Options::default()
    })
    .await;
    let idp = &f.idp;
    let key = mint_api_key();
    f.store.insert(key.hash, crate::api_key::principal("robot"));
    let wrong_key = mint_api_key();

    let valid = idp.mint(KeyAlg::Rs256, &claims(idp, json!({})));
    let expired = idp.mint(
        KeyAlg::Es256,
        &claims(idp, json!({"exp": crate::NOW - 3600})),
    );
    let no_scope = idp.mint(KeyAlg::EdDsa, &claims(idp, json!({"scope": "other"})));
    let none = format!(
        "{}sig-of-none-token",
        unsigned_token(
            &json!({"alg": "none", "kid": "rsa-1"}),
            &claims(idp, json!({}))
        )
    );
    let confused = mint_hs256(
        idp.rsa_public_key_pem().as_bytes(),
        &claims(idp, json!({})),
        Some("rsa-1"),
    );
    let opaque_active = "opaque-active-token-6b1f0c";
    let opaque_dead = "opaque-inactive-token-93ad2e";
    idp.set_introspection(
        opaque_active,
        json!({"active": true, "sub": "u", "tenant": "t", "scope": "mcp"}),
    );

    let mut secrets: Vec<String> = vec![
        valid.clone(),
        expired.clone(),
        no_scope.clone(),
        none.clone(),
        confused.clone(),
        opaque_active.into(),
        opaque_dead.into(),
        key.key.expose().into(),
        wrong_key.key.expose().into(),
        INTROSPECTION_SECRET.into(),
    ];
    // The signature segments alone must not appear either.
    for t in [&valid, &expired, &no_scope, &confused] {
        secrets.push(t.rsplit('.').next().unwrap().to_owned());
    }

    let hosts = HostOriginPolicy::loopback();
    let guard = Guard::new(
        f.auth,
        GuardConfig {
            resolver: ResourceResolver::fixed(crate::RESOURCE),
            hosts,
            challenge_scope: Some("mcp".into()),
            prm: PrmConfig::default(),
        },
    );
    let app: Router =
        Router::new()
            .route("/mcp", post(ok))
            .layer(axum::middleware::from_fn_with_state(
                guard.clone(),
                require_principal,
            ));

    let mut seen = String::new();
    let authorizations = [
        format!("Bearer {valid}"),
        format!("Bearer {expired}"),
        format!("Bearer {no_scope}"),
        format!("Bearer {none}"),
        format!("Bearer {confused}"),
        format!("Bearer {opaque_active}"),
        format!("Bearer {opaque_dead}"),
        format!("Token {}", key.key.expose()),
        format!("Token {}", wrong_key.key.expose()),
        format!("Bearer {}", key.key.expose()),
        format!("Token {valid}"),
        format!("Bearer {valid} trailing"),
    ];
    exercise(&app, &guard, &authorizations, "normal", &mut seen).await;
    idp.set_jwks_mode(JwksMode::Garbage);
    idp.set_introspection_mode(IntrospectionMode::Down);
    f.clock.advance(std::time::Duration::from_secs(3600));
    exercise(&app, &guard, &authorizations, "outage", &mut seen).await;
    idp.set_introspection_mode(IntrospectionMode::RefuseClient);
    exercise(&app, &guard, &authorizations, "refused", &mut seen).await;

    // Debug of every configuration object that holds a secret.
    seen.push_str(&format!("{guard:?}\n{key:?}\n{wrong_key:?}\n"));
    let shared = JwtConfig::shared_secret(
        "iss",
        "aud",
        Secret::new("shared-secret-0123456789abcdef-xyz"),
    );
    seen.push_str(&format!("{shared:?}\n"));
    secrets.push("shared-secret-0123456789abcdef-xyz".into());

    let logs = cap.text();
    assert!(logs.contains("guard."), "the guard did log something");
    for s in &secrets {
        assert!(
            !seen.contains(s.as_str()),
            "secret {s:.12}… in output:\n{seen}"
        );
        assert!(!logs.contains(s.as_str()), "secret {s:.12}… in logs");
    }
}
