//! OAuth client against the scripted authorization server over real loopback HTTP:
//! the whole consent flow, refresh rotation and reuse detection, DPoP nonces,
//! revocation, redirect refusal, the discovery cache, and the absence of secrets in
//! trace-level logs. One integration-test binary for the crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod probe;
mod registration;

use std::sync::Arc;
use std::time::Duration;

use latchkey_core::time::ManualClock;
use latchkey_core::{Remedy, Secret, SystemClock, UnixTime};
use latchkey_egress::{Egress, EgressConfig, EgressError, LoopbackPolicy, UrlSource};
use latchkey_oauth::OAuthError;
use latchkey_oauth::challenge::BearerChallenge;
use latchkey_oauth::client_auth::{AuthMethod, ClientCredentials};
use latchkey_oauth::discovery::{Discoverer, DiscoveryOptions};
use latchkey_oauth::dpop::DpopKey;
use latchkey_oauth::grants::{self, Grant, TokenRequest};
use latchkey_oauth::registration::ApplicationType;
use latchkey_oauth::revocation::{self, TokenTypeHint};
use latchkey_oauth::session::{GrantStrategy, OAuthSession, RedirectReadingDriver, SessionConfig};
use latchkey_testkit::{AsConfig, ScriptedServer, basic_credentials};

fn egress() -> Egress {
    Egress::new(EgressConfig {
        loopback: LoopbackPolicy::AllowInsecureLoopback,
        ..EgressConfig::default()
    })
    .unwrap()
}

fn session_config() -> SessionConfig {
    SessionConfig {
        redirect_uri: "http://localhost:9/callback".into(),
        client_name: "latchkey-test".into(),
        preregistered: None,
        preregistered_issuer: None,
        cimd_url: None,
        application_type: Some(ApplicationType::Native),
        scope: None,
        want_offline_access: true,
        strategy: GrantStrategy::AuthorizationCode,
        dpop: false,
        discovery: DiscoveryOptions::default(),
    }
}

/// A session for the server's MCP endpoint, with the headless consent driver.
fn session(server: &ScriptedServer) -> (OAuthSession, RedirectReadingDriver) {
    let e = egress();
    let disc = Arc::new(Discoverer::new(e.clone(), Arc::new(SystemClock)));
    let s = OAuthSession::new(
        e.clone(),
        Arc::new(SystemClock),
        disc,
        server.mcp_url(),
        session_config(),
    );
    (s, RedirectReadingDriver::new(e))
}

fn challenge(server: &ScriptedServer) -> BearerChallenge {
    BearerChallenge {
        scheme: "Bearer".into(),
        resource_metadata: Some(format!(
            "{}/.well-known/oauth-protected-resource/mcp",
            server.base
        )),
        scope: Some("mcp:read".into()),
        error: Some("invalid_token".into()),
        error_description: None,
    }
}

fn token_request<'a>(
    server_base: &'a str,
    grant: Grant,
    client: &'a ClientCredentials,
) -> TokenRequest<'a> {
    TokenRequest {
        token_endpoint: Box::leak(format!("{server_base}/token").into_boxed_str()),
        source: UrlSource::Operator,
        issuer: server_base,
        grant,
        client: Some(client),
        resource: Some(Box::leak(format!("{server_base}/mcp").into_boxed_str())),
        scope: None,
        dpop: None,
        dpop_nonce: None,
        now: UnixTime::from_secs(1_800_000_000),
    }
}

#[tokio::test]
async fn consent_flow_end_to_end_sends_what_the_specs_require() {
    let server = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let (mut s, driver) = session(&server);
    s.on_unauthorized(Some(&challenge(&server)), &driver)
        .await
        .unwrap();
    assert!(s.has_token());

    let reg = server.requests("/register");
    assert_eq!(reg.len(), 1);
    assert_eq!(reg[0].body["application_type"], "\"native\"");
    assert!(reg[0].body["grant_types"].contains("refresh_token"));
    let auth = server.requests("/authorize");
    assert_eq!(auth.len(), 1);
    let q = &auth[0].body;
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(
        q["resource"],
        server.mcp_url(),
        "RFC 8707 resource verbatim from PRM"
    );
    assert_eq!(
        q["scope"], "mcp:read offline_access",
        "challenge scope plus offline_access the AS lists"
    );
    assert!(q["state"].len() >= 43);
    let tok = server.requests("/token");
    assert_eq!(tok.len(), 1);
    assert_eq!(tok[0].body["grant_type"], "authorization_code");
    assert_eq!(tok[0].body["resource"], server.mcp_url());
    assert_eq!(tok[0].body["redirect_uri"], "http://localhost:9/callback");
    assert_eq!(
        basic_credentials(&tok[0]),
        Some(("dcr-client".into(), "dcr-secret".into()))
    );

    let h = s.auth_headers("POST", &server.mcp_url()).unwrap();
    let v = h
        .get(http::header::AUTHORIZATION)
        .unwrap()
        .to_str()
        .unwrap();
    assert!(v.starts_with("Bearer at-"));
}

#[tokio::test]
async fn an_as_without_pkce_s256_is_refused_before_any_consent() {
    let server = ScriptedServer::start(AsConfig {
        advertise_pkce: false,
        ..AsConfig::default()
    })
    .await
    .unwrap();
    let (mut s, driver) = session(&server);
    let err = s
        .on_unauthorized(Some(&challenge(&server)), &driver)
        .await
        .unwrap_err();
    assert!(matches!(err, OAuthError::PkceNotSupported), "{err:?}");
    assert_eq!(err.remedy(), Remedy::Reconfigure);
    assert!(server.requests("/authorize").is_empty());
    assert!(server.requests("/register").is_empty());
}

#[tokio::test]
async fn step_up_gives_up_after_three_authorizations_until_a_request_succeeds() {
    let server = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let (mut s, driver) = session(&server);
    let mut ch = challenge(&server);
    s.on_unauthorized(Some(&ch), &driver).await.unwrap();
    ch.error = Some("insufficient_scope".into());
    ch.scope = Some("mcp:write".into());
    s.on_insufficient_scope(&ch, &driver).await.unwrap();
    let q = &server.requests("/authorize")[1].body;
    assert_eq!(
        q["scope"], "mcp:read offline_access mcp:write",
        "union of previous and challenged scopes"
    );
    s.on_insufficient_scope(&ch, &driver).await.unwrap();
    let err = s.on_insufficient_scope(&ch, &driver).await.unwrap_err();
    assert!(matches!(err, OAuthError::StepUpExhausted(3)), "{err:?}");
    assert_eq!(server.requests("/authorize").len(), 3);
    s.note_success();
    s.on_insufficient_scope(&ch, &driver).await.unwrap();
}

#[tokio::test]
async fn refresh_rotates_and_reuse_is_reported_as_reconsent() {
    let server = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let e = egress();
    let client =
        ClientCredentials::with_secret("c", Secret::new("s"), AuthMethod::ClientSecretPost);
    let rt1 = Secret::new(server.mint_refresh_token());
    let r = grants::refresh(
        &e,
        token_request(
            &server.base,
            Grant::RefreshToken {
                refresh_token: rt1.clone(),
            },
            &client,
        ),
    )
    .await
    .unwrap();
    assert!(r.rotated);
    let rt2 = r.tokens.refresh_token.clone().unwrap();
    assert_ne!(rt2.expose(), rt1.expose());
    assert_eq!(r.tokens.expires_in, Some(3600));

    // Replaying the rotated-out token: invalid_grant, which means re-consent…
    let err = grants::refresh(
        &e,
        token_request(
            &server.base,
            Grant::RefreshToken { refresh_token: rt1 },
            &client,
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(err.oauth_error_code(), Some("invalid_grant"));
    assert_eq!(err.remedy(), Remedy::Reconsent);
    // …and the AS revoked the family, so the newest token is dead too.
    let err = grants::refresh(
        &e,
        token_request(
            &server.base,
            Grant::RefreshToken { refresh_token: rt2 },
            &client,
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(err.oauth_error_code(), Some("invalid_grant"));
    let body = &server.requests("/token")[0].body;
    assert_eq!(body["client_secret"], "s");
    assert_eq!(body["resource"], format!("{}/mcp", server.base));
}

#[tokio::test]
async fn refresh_without_rotation_keeps_the_old_token() {
    let server = ScriptedServer::start(AsConfig {
        rotate_refresh_tokens: false,
        ..AsConfig::default()
    })
    .await
    .unwrap();
    let client = ClientCredentials::public("c");
    let rt = Secret::new(server.mint_refresh_token());
    let r = grants::refresh(
        &egress(),
        token_request(
            &server.base,
            Grant::RefreshToken { refresh_token: rt },
            &client,
        ),
    )
    .await
    .unwrap();
    assert!(!r.rotated);
    assert!(
        r.tokens.refresh_token.is_none(),
        "caller keeps the old refresh token"
    );
}

#[tokio::test]
async fn dpop_nonce_is_retried_once_with_a_fresh_proof() {
    let server = ScriptedServer::start(AsConfig {
        dpop_nonce: Some("n-42".into()),
        ..AsConfig::default()
    })
    .await
    .unwrap();
    let key = DpopKey::generate().unwrap();
    let client = ClientCredentials::public("c");
    let mut req = token_request(&server.base, Grant::ClientCredentials, &client);
    req.dpop = Some(&key);
    let t = grants::request_token(&egress(), req).await.unwrap();
    assert!(t.is_dpop());
    assert_eq!(t.dpop_nonce.as_deref(), Some("n-42"));
    let reqs = server.requests("/token");
    assert_eq!(reqs.len(), 2, "one refusal, one retry");
    assert_ne!(
        reqs[0].headers["dpop"], reqs[1].headers["dpop"],
        "a new proof (new jti) for the retry"
    );
}

#[tokio::test]
async fn revocation_sends_the_token_with_client_auth() {
    let server = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let rt = Secret::new(server.mint_refresh_token());
    let client =
        ClientCredentials::with_secret("c", Secret::new("s"), AuthMethod::ClientSecretBasic);
    revocation::revoke(
        &egress(),
        &format!("{}/revoke", server.base),
        &server.base,
        &rt,
        TokenTypeHint::RefreshToken,
        &client,
        UnixTime::from_secs(1),
    )
    .await
    .unwrap();
    assert_eq!(server.revocations(), vec![rt.expose().to_owned()]);
    let r = &server.requests("/revoke")[0];
    assert_eq!(r.body["token_type_hint"], "refresh_token");
    assert_eq!(basic_credentials(r), Some(("c".into(), "s".into())));
}

#[tokio::test]
async fn a_redirecting_token_endpoint_is_a_configuration_error() {
    let server = ScriptedServer::start(AsConfig {
        token_redirect_to: Some("http://127.0.0.1:1/steal".into()),
        ..AsConfig::default()
    })
    .await
    .unwrap();
    let client =
        ClientCredentials::with_secret("c", Secret::new("s3cret"), AuthMethod::ClientSecretPost);
    let err = grants::request_token(
        &egress(),
        token_request(&server.base, Grant::ClientCredentials, &client),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            OAuthError::Egress(EgressError::Redirect { status: 302, .. })
        ),
        "{err:?}"
    );
    assert_eq!(err.remedy(), Remedy::Reconfigure);
    assert!(!err.to_string().contains("s3cret"));
    assert_eq!(server.requests("/token").len(), 1);
}

#[tokio::test]
async fn discovery_is_cached_for_five_minutes_and_invalidated_on_demand() {
    let server = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let clock = Arc::new(ManualClock::at(UnixTime::from_secs(1_000_000)));
    let d = Discoverer::new(egress(), clock.clone());
    let rm = format!("{}/.well-known/oauth-protected-resource/mcp", server.base);
    let prm_hits = || {
        server
            .requests("/.well-known/oauth-protected-resource/mcp")
            .len()
    };
    let first = d
        .discover(&server.mcp_url(), Some(&rm), DiscoveryOptions::default())
        .await
        .unwrap();
    assert_eq!(first.issuer, server.base);
    assert_eq!(first.resource, server.mcp_url());
    d.discover(&server.mcp_url(), Some(&rm), DiscoveryOptions::default())
        .await
        .unwrap();
    assert_eq!(prm_hits(), 1, "second call served from cache");
    clock.advance(Duration::from_secs(299));
    d.discover(&server.mcp_url(), Some(&rm), DiscoveryOptions::default())
        .await
        .unwrap();
    assert_eq!(prm_hits(), 1);
    clock.advance(Duration::from_secs(2));
    d.discover(&server.mcp_url(), Some(&rm), DiscoveryOptions::default())
        .await
        .unwrap();
    assert_eq!(prm_hits(), 2, "expired after 5 minutes");
    d.invalidate(&server.mcp_url());
    d.discover(&server.mcp_url(), Some(&rm), DiscoveryOptions::default())
        .await
        .unwrap();
    assert_eq!(prm_hits(), 3);
}

#[tokio::test]
async fn failed_discovery_is_not_cached() {
    let d = Discoverer::new(egress(), Arc::new(SystemClock));
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let url = format!("http://localhost:{port}/mcp");
    let err = d
        .discover(&url, None, DiscoveryOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.remedy(), Remedy::Retry, "{err}");
    assert!(d.cached(&url, None).is_none());
}

#[tokio::test]
async fn trace_logs_of_a_whole_flow_hold_no_secret() {
    let cap = latchkey_testkit::logs::capture();

    let server = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let (mut s, driver) = session(&server);
    s.on_unauthorized(Some(&challenge(&server)), &driver)
        .await
        .unwrap();
    let e = egress();
    let client = ClientCredentials::with_secret(
        "c",
        Secret::new("client-s3cret"),
        AuthMethod::ClientSecretPost,
    );
    let rt = Secret::new(server.mint_refresh_token());
    let r = grants::refresh(
        &e,
        token_request(
            &server.base,
            Grant::RefreshToken {
                refresh_token: rt.clone(),
            },
            &client,
        ),
    )
    .await
    .unwrap();

    let logs = cap.text();
    assert!(logs.contains("egress"), "the capture saw the flow: {logs}");
    let auth = &server.requests("/authorize")[0].body;
    let tok = &server.requests("/token")[0].body;
    let mut secrets = vec![
        auth["state"].clone(),
        tok["code"].clone(),
        tok["code_verifier"].clone(),
        "dcr-secret".into(),
        "client-s3cret".into(),
        rt.expose().to_owned(),
        r.tokens.access_token.expose().to_owned(),
        r.tokens.refresh_token.unwrap().expose().to_owned(),
    ];
    let h = s.auth_headers("POST", &server.mcp_url()).unwrap();
    secrets.push(
        h[http::header::AUTHORIZATION]
            .to_str()
            .unwrap()
            .trim_start_matches("Bearer ")
            .to_owned(),
    );
    for secret in secrets {
        assert!(!secret.is_empty());
        assert!(
            !logs.contains(&secret),
            "secret {secret:?} found in trace logs"
        );
    }
}
