//! The axum middleware and PRM route: challenge formats, statuses, Host/Origin checks,
//! local mode, and one resolver behind both PRM `resource` and `resource_metadata`.

use axum::Router;
use axum::body::Body;
use axum::extract::Extension;
use axum::http::{Request, Response, StatusCode, header};
use axum::routing::post;
use latchkey_guard::origin::HostOriginPolicy;
use latchkey_guard::prm::HostDerived;
use latchkey_guard::{
    Authenticator, Guard, GuardConfig, Principal, PrmConfig, ResourceConfig, ResourceResolver,
    SubjectId, TenantId, prm_router, require_principal,
};
use latchkey_testkit::idp::{JwksMode, KeyAlg, ScriptedIdp};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::{Options, RESOURCE, claims, fixture};

const PRM_URL: &str = "http://localhost:8080/.well-known/oauth-protected-resource/mcp";

async fn whoami(Extension(p): Extension<Principal>) -> String {
    format!("{}:{}:{:?}", p.tenant, p.subject, p.source)
}

fn config(idp: &ScriptedIdp, scope: Option<&str>) -> GuardConfig {
    let hosts = HostOriginPolicy::loopback();
    GuardConfig {
        resolver: ResourceResolver::new(
            ResourceConfig {
                resource: None,
                from_host: Some(HostDerived {
                    scheme: "http".into(),
                    path: "/mcp".into(),
                }),
                default_resource: RESOURCE.into(),
            },
            hosts.clone(),
        ),
        hosts,
        challenge_scope: scope.map(str::to_owned),
        prm: PrmConfig {
            authorization_servers: vec![idp.issuer()],
            scopes_supported: Some(vec!["mcp".into()]),
            resource_name: None,
        },
    }
}

fn app(guard: Guard) -> Router {
    Router::new()
        .route("/mcp", post(whoami))
        .layer(axum::middleware::from_fn_with_state(
            guard.clone(),
            require_principal,
        ))
        .merge(prm_router(guard))
}

struct Call<'a> {
    method: &'a str,
    path: &'a str,
    host: Option<&'a str>,
    origin: Option<&'a str>,
    authorization: Option<String>,
}

impl Default for Call<'_> {
    fn default() -> Self {
        Self {
            method: "POST",
            path: "/mcp",
            host: Some("localhost:8080"),
            origin: None,
            authorization: None,
        }
    }
}

pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) challenge: Option<String>,
    pub(crate) headers: axum::http::HeaderMap,
    pub(crate) body: String,
}

async fn call(app: &Router, c: Call<'_>) -> Answer {
    let mut b = Request::builder().method(c.method).uri(c.path);
    if let Some(h) = c.host {
        b = b.header(header::HOST, h);
    }
    if let Some(o) = c.origin {
        b = b.header(header::ORIGIN, o);
    }
    if let Some(a) = &c.authorization {
        b = b.header(header::AUTHORIZATION, a);
    }
    let resp: Response<Body> = app
        .clone()
        .oneshot(b.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let challenge = headers
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    Answer {
        status,
        challenge,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

fn bearer(t: &str) -> Option<String> {
    Some(format!("Bearer {t}"))
}

#[tokio::test]
async fn missing_credentials_get_a_challenge_without_error() {
    let f = fixture(Options::default()).await;
    let cfg = config(&f.idp, None);
    let app = app(Guard::new(f.auth, cfg));
    for authorization in [
        None,
        Some("Bearer".to_owned()),
        Some("Bearer   ".into()),
        Some("Basic dTpw".into()),
    ] {
        let a = call(
            &app,
            Call {
                authorization,
                ..Call::default()
            },
        )
        .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            a.challenge.as_deref(),
            Some(format!(r#"Bearer resource_metadata="{PRM_URL}""#).as_str())
        );
        let body: Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(body["error"], "unauthorized");
        assert_eq!(a.headers[header::CACHE_CONTROL], "no-store");
    }
}

#[tokio::test]
async fn challenge_formats() {
    let f = fixture(Options {
        required_scopes: vec!["mcp".into(), "admin".into()],
        ..Options::default()
    })
    .await;
    let cfg = config(&f.idp, Some("mcp"));
    let mcp_only = f
        .idp
        .mint(KeyAlg::Rs256, &claims(&f.idp, json!({"scope": "mcp"})));
    let both = f.idp.mint(
        KeyAlg::Rs256,
        &claims(&f.idp, json!({"scope": "admin mcp"})),
    );
    let (a, b): (Vec<&str>, Vec<&str>) = (mcp_only.split('.').collect(), both.split('.').collect());
    let tampered = format!("{}.{}.{}", a[0], b[1], a[2]);
    let app = app(Guard::new(f.auth, cfg));

    let a = call(&app, Call::default()).await;
    assert_eq!(
        a.challenge.unwrap(),
        format!(r#"Bearer scope="mcp", resource_metadata="{PRM_URL}""#)
    );

    f.idp
        .set_introspection("opaque-dead", json!({"active": false}));
    let a = call(
        &app,
        Call {
            authorization: bearer("opaque-dead"),
            ..Call::default()
        },
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        a.challenge.unwrap(),
        format!(r#"Bearer error="invalid_token", scope="mcp", resource_metadata="{PRM_URL}""#)
    );
    let body: Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(body["error_description"], "Invalid OAuth bearer token");

    // Payload swapped: bad signature → invalid_token.
    let a = call(
        &app,
        Call {
            authorization: bearer(&tampered),
            ..Call::default()
        },
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(
        a.challenge
            .unwrap()
            .starts_with(r#"Bearer error="invalid_token""#)
    );

    let a = call(
        &app,
        Call {
            authorization: bearer(&mcp_only),
            ..Call::default()
        },
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(
        a.challenge.unwrap(),
        format!(
            r#"Bearer error="insufficient_scope", scope="mcp admin", resource_metadata="{PRM_URL}""#
        )
    );

    let a = call(
        &app,
        Call {
            authorization: bearer(&both),
            ..Call::default()
        },
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body, "acme:user-1:Jwt");
}

#[tokio::test]
async fn verifier_outage_is_503_without_challenge() {
    let f = fixture(Options {
        introspection: false,
        ..Options::default()
    })
    .await;
    f.idp.set_jwks_mode(JwksMode::Down);
    let t = f.idp.mint(KeyAlg::EdDsa, &claims(&f.idp, json!({})));
    let cfg = config(&f.idp, Some("mcp"));
    let app = app(Guard::new(f.auth, cfg));
    let a = call(
        &app,
        Call {
            authorization: bearer(&t),
            ..Call::default()
        },
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.challenge, None);
    assert_eq!(a.headers[header::RETRY_AFTER], "5");
    let body: Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
}

#[tokio::test]
async fn host_and_origin_checks() {
    let f = fixture(Options::default()).await;
    let t = f.idp.mint(KeyAlg::Es256, &claims(&f.idp, json!({})));
    let cfg = config(&f.idp, None);
    let app = app(Guard::new(f.auth, cfg));
    let ok = |host, origin| Call {
        host,
        origin,
        authorization: bearer(&t),
        ..Call::default()
    };
    for (host, origin) in [
        (Some("localhost:8080"), None),
        (Some("127.0.0.1:3000"), Some("http://localhost:5173")),
        (Some("localhost:8080"), Some("http://localhost:8080")),
        (Some("[::1]:8080"), Some("http://[::1]:8080")),
    ] {
        let a = call(&app, ok(host, origin)).await;
        assert_eq!(a.status, StatusCode::OK, "{host:?} {origin:?}: {}", a.body);
    }
    for (host, origin) in [
        (Some("evil.example"), None),
        (Some("localhost.evil.example:8080"), None),
        (None, None),
        (Some("localhost:8080"), Some("https://evil.example")),
        (Some("localhost:8080"), Some("null")),
    ] {
        let a = call(&app, ok(host, origin)).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{host:?} {origin:?}");
        assert_eq!(a.challenge, None);
        assert!(a.body.contains("Invalid Host/Origin header"), "{}", a.body);
    }
    // The check runs before authentication: a bad host without a token is still 403.
    let a = call(
        &app,
        Call {
            host: Some("evil.example"),
            ..Call::default()
        },
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn challenge_and_prm_come_from_one_resolver() {
    let f = fixture(Options::default()).await;
    let cfg = config(&f.idp, None);
    let issuer = f.idp.issuer();
    let app = app(Guard::new(f.auth, cfg));
    for host in ["localhost:8080", "127.0.0.1:9999"] {
        let a = call(
            &app,
            Call {
                host: Some(host),
                ..Call::default()
            },
        )
        .await;
        let challenge = a.challenge.unwrap();
        let url = challenge
            .split("resource_metadata=\"")
            .nth(1)
            .unwrap()
            .trim_end_matches('"')
            .to_owned();
        assert_eq!(
            url,
            format!("http://{host}/.well-known/oauth-protected-resource/mcp")
        );
        let path = url.strip_prefix(&format!("http://{host}")).unwrap();
        let prm = call(
            &app,
            Call {
                method: "GET",
                path,
                host: Some(host),
                ..Call::default()
            },
        )
        .await;
        assert_eq!(prm.status, StatusCode::OK);
        let doc: Value = serde_json::from_str(&prm.body).unwrap();
        assert_eq!(
            doc,
            json!({
                "resource": format!("http://{host}/mcp"),
                "authorization_servers": [issuer],
                "bearer_methods_supported": ["header"],
                "scopes_supported": ["mcp"],
            })
        );
        assert_eq!(prm.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }
}

#[tokio::test]
async fn prm_endpoint_methods() {
    let idp = ScriptedIdp::start().await.unwrap();
    let guard = Guard::new(
        Authenticator::local(TenantId::new("t").unwrap(), SubjectId::new("s").unwrap()),
        config(&idp, None),
    );
    let app = app(guard);
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let get = call(
            &app,
            Call {
                method: "GET",
                path,
                ..Call::default()
            },
        )
        .await;
        assert_eq!(get.status, StatusCode::OK, "{path}");
        let doc: Value = serde_json::from_str(&get.body).unwrap();
        assert_eq!(doc["resource"], RESOURCE);
        let options = call(
            &app,
            Call {
                method: "OPTIONS",
                path,
                ..Call::default()
            },
        )
        .await;
        assert_eq!(options.status, StatusCode::OK);
        assert_eq!(options.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        for method in ["POST", "PUT", "DELETE"] {
            let a = call(
                &app,
                Call {
                    method,
                    path,
                    ..Call::default()
                },
            )
            .await;
            assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        }
    }
    // No authorization server configured: 500 with a clear message.
    let mut cfg = config(&idp, None);
    cfg.prm.authorization_servers.clear();
    let app = app_with(cfg);
    let a = call(
        &app,
        Call {
            method: "GET",
            path: "/.well-known/oauth-protected-resource/mcp",
            ..Call::default()
        },
    )
    .await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(a.body.contains("no authorization server"), "{}", a.body);
}

fn app_with(cfg: GuardConfig) -> Router {
    app(Guard::new(
        Authenticator::local(TenantId::new("t").unwrap(), SubjectId::new("s").unwrap()),
        cfg,
    ))
}

#[tokio::test]
async fn local_mode_needs_no_credentials_but_still_checks_the_host() {
    let idp = ScriptedIdp::start().await.unwrap();
    let app = app_with(config(&idp, None));
    let a = call(&app, Call::default()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, "t:s:Local");
    let a = call(
        &app,
        Call {
            authorization: bearer("whatever"),
            ..Call::default()
        },
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let a = call(
        &app,
        Call {
            host: Some("rebind.evil.example"),
            ..Call::default()
        },
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(idp.jwks_fetches(), 0);
}
