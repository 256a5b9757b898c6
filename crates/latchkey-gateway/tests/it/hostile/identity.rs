//! Hostile cases, issue 15 items 1, 12 and 13: who a caller is and what Latchkey
//! trusts.
//!
//! * Item 1: a validly signed token without the tenant claim is refused (401
//!   `invalid_token` with its challenge), never put in a default tenant; a token
//!   without the admin role is a member. A single-tenant deployment names its tenant.
//! * Item 12: API keys expire, never carry more than their creator had, are listed and
//!   revoked by the tenant's admins, and record their last use.
//! * Item 13: only Latchkey's own origins are trusted; `/metrics` and the OpenAPI
//!   document in jwt mode only with a configured token.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use latchkey_core::time::ManualClock;
use latchkey_core::{Clock, SystemClock};
use latchkey_gateway::Config;
use latchkey_testkit::idp::{KeyAlg, ScriptedIdp};
use latchkey_vault::KeySet;
use latchkey_vault::keyring::StaticKeys;
use reqwest::Method;
use serde_json::{Value, json};

use crate::Backend;

const KEY: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn keys() -> StaticKeys {
    StaticKeys(Some(KeySet::parse(KEY).unwrap()))
}

fn now() -> u64 {
    SystemClock.now().as_secs()
}

/// Latchkey in jwt mode against `idp`'s JWKS, with `extra` TOML lines in `[auth]`.
async fn start_jwt(backend: Backend, idp: &ScriptedIdp, auth_extra: &str) -> crate::Started {
    let (issuer, jwks) = (idp.issuer(), idp.jwks_url());
    let auth_extra = auth_extra.to_owned();
    crate::start_configured(
        backend,
        move |base| {
            let toml = format!(
                "public_url = \"{base}\"\nallow_insecure_loopback = true\n[auth]\nmode = \"jwt\"\n\
                 issuer = \"{issuer}\"\naudience = \"{base}/mcp\"\njwks_url = \"{jwks}\"\n{auth_extra}\n"
            );
            Config::parse(&toml, &HashMap::new()).unwrap()
        },
        keys(),
    )
    .await
}

/// A signed token for `subject` with `extra` claims merged in (`null` removes one).
fn token(idp: &ScriptedIdp, base: &str, subject: &str, extra: Value) -> String {
    let mut c = json!({
        "iss": idp.issuer(), "aud": format!("{base}/mcp"), "sub": subject,
        "iat": now(), "exp": now() + 3600,
    });
    if let (Some(m), Value::Object(e)) = (c.as_object_mut(), extra) {
        for (k, v) in e {
            if v.is_null() {
                m.remove(&k);
            } else {
                m.insert(k, v);
            }
        }
    }
    format!("Bearer {}", idp.mint(KeyAlg::Rs256, &c))
}

async fn send(method: Method, url: &str, auth: &str, body: Option<Value>) -> (u16, Value, String) {
    crate::request(method, url, Some(auth), body).await
}

/// Role claims: which make an admin.
fn roles() -> Vec<(Value, bool)> {
    vec![
        (json!(["latchkey:admin"]), true),
        (json!("reader latchkey:admin"), true),
        (Value::Null, false),
        (json!("member"), false),
        (json!(["admin", "owner"]), false),
        (json!(["latchkey:admin-not"]), false),
        (json!({"latchkey:admin": true}), false),
    ]
}

/// Item 1, every combination of tenant claim (present, integer, absent, empty, wrong
/// type) and role claim (admin, absent, other values): without a tenant the answer is
/// 401 `invalid_token` with the challenge, on every protected route; with one, only
/// the admin value makes an admin, and a member cannot do an admin's work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_the_tenant_claim_is_refused_and_no_role_is_a_member() {
    let idp = ScriptedIdp::start().await.unwrap();
    let (base, dir, _store, _) = start_jwt(Backend::Sqlite, &idp, "").await;
    let whoami = format!("{base}/v1/whoami");
    let tenants = [
        (json!("acme"), Some("acme")),
        (json!(42), Some("42")),
        (Value::Null, None),
        (json!(""), None),
        (json!(["acme"]), None),
        (json!({"id": "acme"}), None),
    ];
    for (tenant, want_tenant) in &tenants {
        for (role, want_admin) in roles() {
            let t = token(
                &idp,
                &base,
                "user-1",
                json!({"tenant": tenant, "roles": role}),
            );
            let case = format!("tenant {tenant} roles {role}");
            let (status, me, _) = send(Method::GET, &whoami, &t, None).await;
            match want_tenant {
                None => {
                    assert_eq!(status, 401, "{case}: {me}");
                    assert_eq!(me["error"], "invalid_token", "{case}");
                    // The original attack: reading the "default" tenant's servers.
                    let r = crate::client()
                        .get(format!("{base}/v1/servers"))
                        .header("authorization", &t)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status().as_u16(), 401, "{case}");
                    let challenge = r.headers()["www-authenticate"].to_str().unwrap();
                    assert!(
                        challenge.starts_with("Bearer ")
                            && challenge.contains("error=\"invalid_token\"")
                            && challenge.contains("resource_metadata=\""),
                        "{case}: {challenge}"
                    );
                }
                Some(want) => {
                    assert_eq!(status, 200, "{case}: {me}");
                    assert_eq!(me["tenant"], *want, "{case}");
                    assert_eq!(me["admin"], want_admin, "{case}");
                    // Registering a server is an admin's: a member is refused before
                    // anything is probed.
                    let (status, v, _) = send(
                        Method::POST,
                        &format!("{base}/v1/servers"),
                        &t,
                        Some(json!({"name": "s", "url": "http://127.0.0.1:9/mcp"})),
                    )
                    .await;
                    if !want_admin {
                        assert_eq!(status, 403, "{case}: {v}");
                    } else {
                        assert_ne!(status, 403, "{case}: {v}");
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Item 1: with `auth.tenant_claim` configured, that claim is the one required; a
/// `tenant` claim does not stand in for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_tenant_claim_is_required() {
    let idp = ScriptedIdp::start().await.unwrap();
    let (base, dir, _store, _) =
        start_jwt(Backend::Sqlite, &idp, "tenant_claim = \"org_id\"").await;
    let whoami = format!("{base}/v1/whoami");
    for (role, want_admin) in roles() {
        let t = token(
            &idp,
            &base,
            "u",
            json!({"tenant": "acme", "roles": role.clone()}),
        );
        let (status, me, _) = send(Method::GET, &whoami, &t, None).await;
        assert_eq!(
            (status, &me["error"]),
            (401, &json!("invalid_token")),
            "{role}"
        );
        let t = token(&idp, &base, "u", json!({"org_id": "org-1", "roles": role}));
        let (status, me, _) = send(Method::GET, &whoami, &t, None).await;
        assert_eq!(status, 200, "{me}");
        assert_eq!(
            (&me["tenant"], &me["admin"]),
            (&json!("org-1"), &json!(want_admin))
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Item 1: a single-tenant deployment says so (`auth.tenant`): every token is that
/// tenant's, whatever its claims say, and roles still decide who is an admin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_tenant_is_explicit_and_roles_still_count() {
    let idp = ScriptedIdp::start().await.unwrap();
    let (base, dir, _store, _) = start_jwt(Backend::Sqlite, &idp, "tenant = \"solo\"").await;
    let whoami = format!("{base}/v1/whoami");
    for tenant in [Value::Null, json!("other"), json!("")] {
        for (role, want_admin) in roles() {
            let t = token(&idp, &base, "u", json!({"tenant": tenant, "roles": role}));
            let (status, me, _) = send(Method::GET, &whoami, &t, None).await;
            assert_eq!(status, 200, "{me}");
            assert_eq!(
                (&me["tenant"], &me["admin"]),
                (&json!("solo"), &json!(want_admin)),
                "tenant {tenant} roles {role}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

const DAY: u64 = 86_400;

/// Latchkey in jwt mode on `backend` with time from `clock`, `top` TOML before
/// `[auth]` and `auth` lines in it. Base URL, data directory, store, schema.
async fn start_jwt_at(
    backend: Backend,
    idp: &ScriptedIdp,
    top: &str,
    auth: &str,
    clock: Arc<ManualClock>,
) -> crate::Started {
    let dir = std::env::temp_dir().join(format!("lk-gw-{}", latchkey_vault::store::new_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (store, schema): (Arc<dyn latchkey_vault::Store>, _) = match backend {
        Backend::Sqlite => (
            Arc::new(
                latchkey_vault::SqliteStore::open(&dir.join("db"))
                    .await
                    .unwrap(),
            ),
            None,
        ),
        Backend::Postgres => {
            let schema = latchkey_testkit::pg::PgSchema::new("lk_hostile")
                .await
                .unwrap();
            let store = latchkey_vault::store::DatabaseUrl::parse(&schema.url)
                .unwrap()
                .open()
                .await
                .unwrap();
            (store, Some(schema))
        }
    };
    let (issuer, jwks) = (idp.issuer(), idp.jwks_url());
    let (top, auth) = (top.to_owned(), auth.to_owned());
    let base = crate::serve(
        move |base| {
            let toml = format!(
                "public_url = \"{base}\"\nallow_insecure_loopback = true\n{top}\n[auth]\nmode = \"jwt\"\n\
                 issuer = \"{issuer}\"\naudience = \"{base}/mcp\"\njwks_url = \"{jwks}\"\n{auth}\n"
            );
            Config::parse(&toml, &HashMap::new()).unwrap()
        },
        store.clone(),
        keys(),
        clock,
    )
    .await;
    (base, dir, store, schema)
}

/// A JWT valid for 200 days from `at` (the clock moves on in these tests).
fn long_token(
    idp: &ScriptedIdp,
    base: &str,
    at: u64,
    tenant: &str,
    subject: &str,
    admin: bool,
) -> String {
    let mut c = json!({
        "iss": idp.issuer(), "aud": format!("{base}/mcp"), "sub": subject, "tenant": tenant,
        "scope": "mcp tools:read", "iat": at, "exp": at + 200 * DAY,
    });
    if admin {
        c["roles"] = json!(["latchkey:admin"]);
    }
    format!("Bearer {}", idp.mint(KeyAlg::Es256, &c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_expire_and_never_exceed_their_creator_on_sqlite() {
    api_keys_expire_and_never_exceed_their_creator(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_expire_and_never_exceed_their_creator_on_postgres() {
    api_keys_expire_and_never_exceed_their_creator(Backend::Postgres).await;
}

/// Item 12: a key minted from an admin's token is an admin key for at most 7 days (the
/// default `admin_max_ttl`), a member key for 30 days by default and at most 90; a
/// longer lifetime, a role above the creator's or a scope the creator lacks is a 400
/// naming the field; the key carries the creator's scopes (or fewer); an expired key
/// is a 401 `invalid_token`; admins list and delete every key of their tenant and
/// nothing of another's; the last use is recorded, at most once a minute.
async fn api_keys_expire_and_never_exceed_their_creator(backend: Backend) {
    let idp = ScriptedIdp::start().await.unwrap();
    let t0 = now();
    let clock = Arc::new(ManualClock::at(latchkey_core::UnixTime::from_secs(t0)));
    let (base, dir, _store, schema) = start_jwt_at(backend, &idp, "", "", clock.clone()).await;
    let keys_url = format!("{base}/v1/api-keys");
    let whoami = format!("{base}/v1/whoami");
    let alice = long_token(&idp, &base, t0, "tenant-a", "alice", true);
    let amy = long_token(&idp, &base, t0, "tenant-a", "amy", false);
    let bob = long_token(&idp, &base, t0, "tenant-b", "bob", true);
    let mint = |auth: &str, body: Value| {
        let (url, auth) = (keys_url.clone(), auth.to_owned());
        async move { send(Method::POST, &url, &auth, Some(body)).await }
    };

    // Refused: beyond the role's maximum, too short, a role or scope the creator lacks.
    for (auth, body, field) in [
        (
            &alice,
            json!({"name": "k", "expires_in": 7 * DAY + 1}),
            "expires_in",
        ),
        (
            &amy,
            json!({"name": "k", "expires_in": 90 * DAY + 1}),
            "expires_in",
        ),
        (&amy, json!({"name": "k", "expires_in": 59}), "expires_in"),
        (&amy, json!({"name": "k", "expires_in": "1d"}), "expires_in"),
        (&amy, json!({"name": "k", "role": "admin"}), "role"),
        (&amy, json!({"name": "k", "role": "owner"}), "role"),
        (
            &amy,
            json!({"name": "k", "scopes": "mcp admin:all"}),
            "scopes",
        ),
        (
            &alice,
            json!({"name": "k", "expires_at": t0 + 60}),
            "expires_at",
        ),
    ] {
        let (status, v, _) = mint(auth, body.clone()).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["fields"][0]["field"], field, "{body}: {v}");
    }

    // An admin key by default: 7 days, admin, the creator's scopes.
    let (status, admin_key, _) = mint(&alice, json!({"name": "ops"})).await;
    assert_eq!(status, 201, "{admin_key}");
    assert_eq!(admin_key["expires_at"], json!(t0 + 7 * DAY));
    assert_eq!(admin_key["role"], "admin");
    assert_eq!(admin_key["scopes"], json!(["mcp", "tools:read"]));
    let admin_tok = format!("Token {}", admin_key["key"].as_str().unwrap());
    // An admin may mint a member key, with fewer scopes, for longer.
    let (status, narrowed, _) = mint(
        &alice,
        json!({"name": "ci", "role": "member", "scopes": "mcp", "expires_in": 60 * DAY}),
    )
    .await;
    assert_eq!(status, 201, "{narrowed}");
    let narrowed_tok = format!("Token {}", narrowed["key"].as_str().unwrap());
    // A member key by default: 30 days.
    let (status, member_key, _) = mint(&amy, json!({"name": "laptop"})).await;
    assert_eq!(status, 201, "{member_key}");
    assert_eq!(member_key["expires_at"], json!(t0 + 30 * DAY));
    assert_eq!(member_key["role"], "member");
    let member_tok = format!("Token {}", member_key["key"].as_str().unwrap());
    let (status, short, _) = mint(&amy, json!({"name": "short", "expires_in": 120})).await;
    assert_eq!(status, 201);
    let short_tok = format!("Token {}", short["key"].as_str().unwrap());

    let (_, me, _) = send(Method::GET, &whoami, &admin_tok, None).await;
    assert_eq!(
        (&me["admin"], &me["subject"]),
        (&json!(true), &json!("alice"))
    );
    let (_, me, _) = send(Method::GET, &whoami, &narrowed_tok, None).await;
    assert_eq!(
        (&me["admin"], &me["scopes"]),
        (&json!(false), &json!(["mcp"])),
        "at most what was asked"
    );
    let (_, me, _) = send(Method::GET, &whoami, &member_tok, None).await;
    assert_eq!(
        (&me["admin"], &me["scopes"]),
        (&json!(false), &json!(["mcp", "tools:read"]))
    );

    // Listed with expiry, creator's role and last use; admins see the tenant's keys,
    // members their own, another tenant nothing.
    let list = |auth: &str| {
        let (url, auth) = (keys_url.clone(), auth.to_owned());
        async move {
            let (status, v, _) = send(Method::GET, &url, &auth, None).await;
            assert_eq!(status, 200, "{v}");
            v.as_array().unwrap().clone()
        }
    };
    let all = list(&alice).await;
    assert_eq!(all.len(), 4);
    let narrowed_row = all.iter().find(|k| k["id"] == narrowed["id"]).unwrap();
    assert_eq!(
        (
            &narrowed_row["role"],
            &narrowed_row["creator_role"],
            &narrowed_row["expires_at"]
        ),
        (&json!("member"), &json!("admin"), &json!(t0 + 60 * DAY))
    );
    assert_eq!(list(&amy).await.len(), 2);
    assert!(list(&bob).await.is_empty());
    let (status, _, _) = send(
        Method::DELETE,
        &format!("{keys_url}/{}", member_key["id"].as_str().unwrap()),
        &bob,
        None,
    )
    .await;
    assert_eq!(status, 404, "another tenant's admin");

    // Last use: recorded, then not rewritten within the minute.
    let last_used = |rows: &[Value], id: &Value| {
        rows.iter().find(|k| &k["id"] == id).unwrap()["last_used_at"].clone()
    };
    assert_eq!(last_used(&list(&amy).await, &member_key["id"]), json!(t0));
    clock.advance(Duration::from_secs(30));
    send(Method::GET, &whoami, &member_tok, None).await;
    assert_eq!(last_used(&list(&amy).await, &member_key["id"]), json!(t0));
    clock.advance(Duration::from_secs(31));
    send(Method::GET, &whoami, &member_tok, None).await;
    assert_eq!(
        last_used(&list(&amy).await, &member_key["id"]),
        json!(t0 + 61)
    );

    // Expiry: the short key after two minutes, the admin key after 7 days, the member
    // key after 30; each then a 401 invalid_token, the others still working.
    let status_of = |tok: &str| {
        let (url, tok) = (whoami.clone(), tok.to_owned());
        async move {
            let (status, v, _) = send(Method::GET, &url, &tok, None).await;
            if status == 401 {
                assert_eq!(v["error"], "invalid_token", "{v}");
            }
            status
        }
    };
    clock.advance(Duration::from_secs(60));
    assert_eq!(status_of(&short_tok).await, 401, "expired at t0 + 120");
    assert_eq!(status_of(&admin_tok).await, 200);
    clock.advance(Duration::from_secs(7 * DAY - 122));
    assert_eq!(status_of(&admin_tok).await, 200, "one second left");
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        status_of(&admin_tok).await,
        401,
        "an admin key lives 7 days"
    );
    assert_eq!(status_of(&member_tok).await, 200);
    clock.advance(Duration::from_secs(23 * DAY));
    assert_eq!(
        status_of(&member_tok).await,
        401,
        "a member key 30 by default"
    );
    assert_eq!(status_of(&narrowed_tok).await, 200);
    clock.advance(Duration::from_secs(30 * DAY));
    assert_eq!(status_of(&narrowed_tok).await, 401);

    // Expired keys are still listed, and an admin deletes any of the tenant's.
    let all = list(&alice).await;
    assert_eq!(all.len(), 4);
    for k in &all {
        let (status, _, _) = send(
            Method::DELETE,
            &format!("{keys_url}/{}", k["id"].as_str().unwrap()),
            &alice,
            None,
        )
        .await;
        assert_eq!(status, 204);
    }
    assert!(list(&alice).await.is_empty());
    crate::cleanup(dir, schema).await;
}

/// Item 12: the lifetimes are configuration (`[api_keys]`), and a configured maximum
/// is enforced like the default one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_lifetimes_follow_the_configuration() {
    let idp = ScriptedIdp::start().await.unwrap();
    let t0 = now();
    let clock = Arc::new(ManualClock::at(latchkey_core::UnixTime::from_secs(t0)));
    let (base, dir, _store, schema) = start_jwt_at(
        Backend::Sqlite,
        &idp,
        "[api_keys]\ndefault_ttl = \"2h\"\nmax_ttl = \"1d\"\nadmin_max_ttl = \"1h\"",
        "",
        clock,
    )
    .await;
    let keys_url = format!("{base}/v1/api-keys");
    let alice = long_token(&idp, &base, t0, "tenant-a", "alice", true);
    let amy = long_token(&idp, &base, t0, "tenant-a", "amy", false);
    for (auth, body, want) in [
        (&alice, json!({"name": "a"}), Some(t0 + 3600)),
        (&amy, json!({"name": "m"}), Some(t0 + 7200)),
        (
            &amy,
            json!({"name": "m", "expires_in": DAY}),
            Some(t0 + DAY),
        ),
        (&amy, json!({"name": "m", "expires_in": DAY + 1}), None),
        (&alice, json!({"name": "a", "expires_in": 3601}), None),
    ] {
        let (status, v, _) = send(Method::POST, &keys_url, auth, Some(body.clone())).await;
        match want {
            Some(at) => assert_eq!((status, &v["expires_at"]), (201, &json!(at)), "{body}"),
            None => assert_eq!(
                (status, &v["fields"][0]["field"]),
                (400, &json!("expires_in")),
                "{body}"
            ),
        }
    }
    crate::cleanup(dir, schema).await;
}

/// Item 13: in local mode only Latchkey's own origin is trusted. A page on another
/// loopback port (or scheme, or `null`) is refused with the typed 403 on every route,
/// whatever its content type; a request without `Origin` (CLI, curl) still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_trusts_only_its_own_origin() {
    let cfg = crate::loopback_config();
    let (base, dir, store, _) = crate::start_on(Backend::Sqlite, &cfg, StaticKeys(None)).await;
    let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
    let call = |method: Method, path: &str, origin: Option<String>, ct: &str| {
        let mut r = crate::client()
            .request(method.clone(), format!("{base}{path}"))
            .header("content-type", ct.to_owned());
        if method == Method::POST {
            r = r.body(r#"{"name": "k"}"#);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    for foreign in [
        "http://localhost:9".to_owned(),
        format!("http://127.0.0.1:{}", port.wrapping_add(1)),
        format!("http://localhost:{}", port.wrapping_add(1)),
        "http://localhost".to_owned(),
        format!("https://127.0.0.1:{port}"),
        "http://[::1]:9".to_owned(),
        "null".to_owned(),
        "https://evil.example".to_owned(),
    ] {
        for (method, path, ct) in [
            (Method::POST, "/v1/api-keys", "text/plain"),
            (Method::POST, "/v1/api-keys", "application/json"),
            (Method::GET, "/v1/servers", "application/json"),
            (Method::POST, "/mcp", "application/json"),
        ] {
            let r = call(method.clone(), path, Some(foreign.clone()), ct)
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 403, "{foreign} {method} {path} {ct}");
            let text = r.text().await.unwrap();
            assert!(
                text.contains("Invalid Host/Origin header"),
                "{foreign}: {text}"
            );
        }
    }
    let r = call(
        Method::POST,
        "/v1/api-keys",
        Some(format!("http://127.0.0.1:{port}")),
        "application/json",
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 201, "its own origin");
    let r = call(Method::POST, "/v1/api-keys", None, "application/json")
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "no Origin: a CLI or curl");
    let r = call(Method::GET, "/v1/servers", None, "application/json")
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(store.list_api_keys("default", None).await.unwrap().len(), 2);
    let _ = std::fs::remove_dir_all(dir);
}

/// Item 13: in jwt mode a valid token does not let a foreign page in either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_mode_trusts_only_its_own_origin() {
    let idp = ScriptedIdp::start().await.unwrap();
    let (base, dir, _store, _) = start_jwt(Backend::Sqlite, &idp, "").await;
    let t = token(&idp, &base, "u", json!({"tenant": "acme"}));
    for (origin, want) in [
        (None, 200),
        (Some(base.clone()), 200),
        (Some("http://localhost:9".to_owned()), 403),
        (Some("http://127.0.0.1:9".to_owned()), 403),
    ] {
        let mut r = crate::client()
            .get(format!("{base}/v1/whoami"))
            .header("authorization", &t);
        if let Some(o) = &origin {
            r = r.header("origin", o);
        }
        assert_eq!(
            r.send().await.unwrap().status().as_u16(),
            want,
            "{origin:?}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Item 13: in jwt mode `/metrics` and the OpenAPI document exist only when a metrics
/// token is configured, and then only for `Authorization: Bearer <token>`; anyone else
/// (an IdP token included) gets a 404. Local mode keeps serving them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_openapi_need_the_metrics_token_in_jwt_mode() {
    const TOKEN: &str = "metrics-token-for-hostile-tests";
    let idp = ScriptedIdp::start().await.unwrap();
    let get = |url: String, auth: Option<String>| async move {
        let mut r = crate::client().get(url);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    };
    let paths = ["/metrics", "/v1/openapi.json"];

    let (base, dir, _s, _) = start_jwt(Backend::Sqlite, &idp, "").await;
    let jwt = token(
        &idp,
        &base,
        "u",
        json!({"tenant": "acme", "roles": ["latchkey:admin"]}),
    );
    for path in paths {
        for auth in [None, Some(jwt.clone()), Some(format!("Bearer {TOKEN}"))] {
            let (status, body) = get(format!("{base}{path}"), auth.clone()).await;
            assert_eq!(status, 404, "unconfigured {path} {}", auth.is_some());
            assert!(!body.contains("latchkey_"), "{body}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);

    let clock = Arc::new(ManualClock::at(latchkey_core::UnixTime::from_secs(now())));
    let (base, dir, _s, _) = start_jwt_at(
        Backend::Sqlite,
        &idp,
        &format!("[metrics]\ntoken = \"{TOKEN}\""),
        "",
        clock,
    )
    .await;
    let jwt = token(
        &idp,
        &base,
        "u",
        json!({"tenant": "acme", "roles": ["latchkey:admin"]}),
    );
    for path in paths {
        for auth in [
            None,
            Some(jwt.clone()),
            Some(format!("Bearer {TOKEN}x")),
            Some(format!("Token {TOKEN}")),
            Some(TOKEN.to_owned()),
        ] {
            let (status, _) = get(format!("{base}{path}"), auth.clone()).await;
            assert_eq!(status, 404, "{path} {auth:?}");
        }
        let (status, body) = get(format!("{base}{path}"), Some(format!("Bearer {TOKEN}"))).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let _ = std::fs::remove_dir_all(dir);

    let (base, dir, _s, _) =
        crate::start_on(Backend::Sqlite, &crate::loopback_config(), StaticKeys(None)).await;
    for path in paths {
        let (status, _) = get(format!("{base}{path}"), None).await;
        assert_eq!(status, 200, "local mode {path}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
