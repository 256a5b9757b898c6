//! People sign in (issue 19) over real HTTP: Latchkey in jwt mode with `[auth.login]`
//! against a scripted OpenID provider (its ID tokens signed by the scripted IdP's keys)
//! that can also misbehave on demand: a wrong nonce, a wrong audience, a refused
//! client, another issuer in its metadata. oidc-provider, unmodified, drives the same
//! flow in a browser in `scripts/signin.sh`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing;
use latchkey_core::{Clock, SystemClock};
use latchkey_gateway::Config;
use latchkey_testkit::idp::{KeyAlg, ScriptedIdp};
use latchkey_vault::KeySet;
use latchkey_vault::keyring::StaticKeys;
use serde_json::{Value, json};

use super::Backend;

const KEY: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const CLIENT_ID: &str = "latchkey-web";
const CLIENT_SECRET: &str = "web-secret-0123456789";

/// How the scripted provider misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    WrongNonce,
    WrongAudience,
    /// Its token endpoint refuses Latchkey's client.
    RefuseClient,
    /// Its metadata names another issuer.
    OtherIssuer,
}

#[derive(Debug)]
struct OpState {
    issuer: String,
    fault: Fault,
    /// The next account to sign in: (subject, tenant, admin).
    account: (String, String, bool),
    /// code -> (nonce, code_challenge)
    codes: HashMap<String, (String, String)>,
    token_requests: usize,
}

#[derive(Clone)]
struct Op {
    idp: Arc<ScriptedIdp>,
    state: Arc<Mutex<OpState>>,
}

impl Op {
    /// Its issuer, and the JWKS its ID tokens are signed with.
    fn endpoints(&self) -> (String, String) {
        (
            self.state.lock().unwrap().issuer.clone(),
            self.idp.jwks_url(),
        )
    }

    fn set(&self, f: impl FnOnce(&mut OpState)) {
        f(&mut self.state.lock().unwrap());
    }
}

async fn metadata(State(op): State<Op>) -> Response {
    let s = op.state.lock().unwrap();
    let issuer = if s.fault == Fault::OtherIssuer {
        format!("{}/other", s.issuer)
    } else {
        s.issuer.clone()
    };
    axum::Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{}/authorize", s.issuer),
        "token_endpoint": format!("{}/token", s.issuer),
        "jwks_uri": op.idp.jwks_url(),
        "code_challenge_methods_supported": ["S256"],
    }))
    .into_response()
}

async fn authorize(State(op): State<Op>, Query(q): Query<HashMap<String, String>>) -> Response {
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["scope"].split(' ').any(|s| s == "openid"));
    let code = format!("code-{}", latchkey_vault::store::new_id());
    op.state.lock().unwrap().codes.insert(
        code.clone(),
        (q["nonce"].clone(), q["code_challenge"].clone()),
    );
    let to = format!(
        "{}?code={code}&state={}",
        q["redirect_uri"],
        url::form_urlencoded::byte_serialize(q["state"].as_bytes()).collect::<String>()
    );
    (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
}

async fn token(
    State(op): State<Op>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    use base64::Engine;
    let mut s = op.state.lock().unwrap();
    s.token_requests += 1;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    if s.fault == Fault::RefuseClient
        || headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some(&basic)
    {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let Some((nonce, challenge)) = s
        .codes
        .remove(f.get("code").map(String::as_str).unwrap_or(""))
    else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant"})),
        )
            .into_response();
    };
    let verifier = f.get("code_verifier").cloned().unwrap_or_default();
    assert_eq!(
        latchkey_oauth::pkce::challenge(&latchkey_core::Secret::new(verifier)),
        challenge
    );
    let now = SystemClock.now().as_secs();
    let (sub, tenant, admin) = s.account.clone();
    let mut claims = json!({
        "iss": s.issuer,
        "aud": if s.fault == Fault::WrongAudience { "someone-else" } else { CLIENT_ID },
        "sub": sub,
        "tenant": tenant,
        "name": format!("{sub} Example"),
        "nonce": if s.fault == Fault::WrongNonce { "not-the-nonce".to_owned() } else { nonce },
        "iat": now,
        "exp": now + 300,
    });
    if admin {
        claims["roles"] = json!(["latchkey:admin"]);
    }
    let id_token = op.idp.mint(KeyAlg::Rs256, &claims);
    axum::Json(json!({"access_token": "opaque", "token_type": "Bearer", "expires_in": 300, "id_token": id_token}))
        .into_response()
}

/// The scripted provider on loopback.
async fn provider() -> Op {
    let idp = Arc::new(ScriptedIdp::start().await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let op = Op {
        idp,
        state: Arc::new(Mutex::new(OpState {
            issuer,
            fault: Fault::None,
            account: ("alice".into(), "t1".into(), true),
            codes: HashMap::new(),
            token_requests: 0,
        })),
    };
    let app = Router::new()
        .route("/.well-known/openid-configuration", routing::get(metadata))
        .route("/authorize", routing::get(authorize))
        .route("/token", routing::post(token))
        .with_state(op.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    op
}

fn config(base: &str, op_issuer: &str, jwks: &str) -> Config {
    let toml = format!(
        "public_url = \"{base}\"\nallow_insecure_loopback = true\n[auth]\nmode = \"jwt\"\n\
         issuer = \"{op_issuer}\"\naudience = \"{base}/mcp\"\njwks_url = \"{jwks}\"\n\
         [auth.login]\nissuer = \"{op_issuer}\"\nclient_id = \"{CLIENT_ID}\"\n\
         client_secret = \"{CLIENT_SECRET}\"\n"
    );
    Config::parse(&toml, &HashMap::new()).unwrap()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `name=value` of a `Set-Cookie` for `name`, and the whole header.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<(String, String)> {
    r.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            let pair = v.split(';').next().unwrap_or("").to_owned();
            (pair, v.to_owned())
        })
}

/// Signs in through the scripted provider; the callback's answer and the session
/// cookie (`latchkey_session=…`) when one was set.
async fn sign_in(base: &str) -> (reqwest::Response, Option<String>) {
    let c = no_redirects();
    let r = c.get(format!("{base}/v1/auth/login")).send().await.unwrap();
    assert_eq!(r.status(), 302, "{:?}", r.text().await);
    let (login, whole) = set_cookie(&r, "latchkey_login").expect("a login cookie");
    assert!(
        whole.contains("HttpOnly") && whole.contains("SameSite=Lax"),
        "{whole}"
    );
    assert!(whole.contains("Path=/v1/auth/callback"), "{whole}");
    let to_provider = r.headers()[header::LOCATION].to_str().unwrap().to_owned();
    assert!(to_provider.contains("nonce=") && to_provider.contains("code_challenge="));
    let r = c.get(&to_provider).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let back = r.headers()[header::LOCATION].to_str().unwrap().to_owned();
    assert!(
        back.starts_with(&format!("{base}/v1/auth/callback?")),
        "{back}"
    );
    let r = c
        .get(&back)
        .header(header::COOKIE, &login)
        .send()
        .await
        .unwrap();
    let session = set_cookie(&r, "latchkey_session")
        .filter(|(p, _)| p != "latchkey_session=")
        .map(|(pair, whole)| {
            assert!(
                whole.contains("HttpOnly") && whole.contains("SameSite=Strict"),
                "{whole}"
            );
            pair
        });
    // The same callback again: the sign-in it belonged to is spent.
    let again = c
        .get(&back)
        .header(header::COOKIE, &login)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 400);
    assert!(set_cookie(&again, "latchkey_session").is_none());
    (r, session)
}

async fn call(
    method: reqwest::Method,
    url: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = no_redirects()
        .request(method, url)
        .header(header::COOKIE, cookie);
    if let Some(t) = csrf {
        req = req.header("x-csrf-token", t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(base: &str, path: &str, cookie: &str) -> (u16, Value) {
    call(
        reqwest::Method::GET,
        &format!("{base}{path}"),
        cookie,
        None,
        None,
    )
    .await
}

async fn post(
    base: &str,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    call(
        reqwest::Method::POST,
        &format!("{base}{path}"),
        cookie,
        csrf,
        body,
    )
    .await
}

async fn a_person_signs_in_and_out(backend: Backend) {
    let op = provider().await;
    let (issuer, jwks) = op.endpoints();
    let (base, dir, _store, schema) = super::start_configured(
        backend,
        |base| config(base, &issuer, &jwks),
        StaticKeys(Some(KeySet::parse(KEY).unwrap())),
    )
    .await;

    let (cfg_status, cfg) = get(&base, "/v1/auth/config", "").await;
    assert_eq!(cfg_status, 200);
    assert_eq!(cfg["mode"], "jwt");
    assert_eq!(cfg["sign_in"], true);
    // A confidential web client and no CLI client named: the CLI has none to use.
    assert!(cfg["cli"].is_null(), "{cfg}");

    let (page, session) = sign_in(&base).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("http-equiv=\"refresh\""), "{html}");
    let cookie = session.expect("a session cookie");

    let (s, me) = get(&base, "/v1/auth/session", &cookie).await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(
        (
            me["subject"].as_str(),
            me["tenant"].as_str(),
            me["admin"].as_bool()
        ),
        (Some("alice"), Some("t1"), Some(true))
    );
    assert_eq!(me["source"], "session");
    let csrf = me["csrf_token"].as_str().unwrap().to_owned();
    assert!(!cookie.contains(&csrf));

    // Reading needs only the cookie; changing needs the CSRF token too.
    let (s, _) = get(&base, "/v1/servers", &cookie).await;
    assert_eq!(s, 200);
    let key_body = json!({"name": "from the browser"});
    let (s, body) = post(&base, "/v1/api-keys", &cookie, None, Some(key_body.clone())).await;
    assert_eq!(s, 403, "{body}");
    let (s, body) = post(
        &base,
        "/v1/api-keys",
        &cookie,
        Some("wrong"),
        Some(key_body.clone()),
    )
    .await;
    assert_eq!(s, 403, "{body}");
    let (s, created) = post(&base, "/v1/api-keys", &cookie, Some(&csrf), Some(key_body)).await;
    assert_eq!(s, 201, "{created}");

    // Another person in another tenant sees none of it.
    op.set(|s| s.account = ("bob".into(), "t2".into(), false));
    let (_, bob) = sign_in(&base).await;
    let bob = bob.unwrap();
    let (s, bob_me) = get(&base, "/v1/auth/session", &bob).await;
    assert_eq!(s, 200);
    assert_eq!(
        (bob_me["tenant"].as_str(), bob_me["admin"].as_bool()),
        (Some("t2"), Some(false))
    );
    let (s, keys) = get(&base, "/v1/api-keys", &bob).await;
    assert_eq!(s, 200);
    assert_eq!(keys.as_array().map(Vec::len), Some(0), "{keys}");

    // Sign-out ends alice's session (a CSRF token is needed for that too) and not bob's.
    let (s, _) = post(&base, "/v1/auth/logout", &cookie, None, Some(json!({}))).await;
    assert_eq!(s, 403);
    let (s, _) = post(
        &base,
        "/v1/auth/logout",
        &cookie,
        Some(&csrf),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 204);
    let (s, body) = get(&base, "/v1/servers", &cookie).await;
    assert_eq!(s, 401, "{body}");
    let (s, _) = get(&base, "/v1/servers", &bob).await;
    assert_eq!(s, 200);

    // A made-up session is refused like any bad credential.
    let (s, _) = get(&base, "/v1/servers", "latchkey_session=made-up").await;
    assert_eq!(s, 401);

    // The provider's faults: no session, and the page says why.
    for (fault, words) in [
        (Fault::WrongNonce, "nonce"),
        (Fault::WrongAudience, "audience"),
    ] {
        op.set(|s| s.fault = fault);
        let (page, session) = sign_in(&base).await;
        assert_eq!(page.status(), 400, "{fault:?}");
        assert!(session.is_none(), "{fault:?}: no session");
        let html = page.text().await.unwrap();
        assert!(html.contains(words), "{fault:?}: {html}");
    }
    op.set(|s| s.fault = Fault::None);
    super::cleanup(dir, schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_and_out_on_sqlite() {
    a_person_signs_in_and_out(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_and_out_on_postgres() {
    a_person_signs_in_and_out(Backend::Postgres).await;
}

/// A provider that is down: start-up goes on, the sign-in page says so (503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_is_down_is_said_on_the_sign_in_page() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let (base, dir, _store, schema) = super::start_configured(
        Backend::Sqlite,
        |base| config(base, &closed, &format!("{closed}/jwks")),
        StaticKeys(Some(KeySet::parse(KEY).unwrap())),
    )
    .await;
    let r = no_redirects()
        .get(format!("{base}/v1/auth/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    let html = r.text().await.unwrap();
    assert!(html.contains("cannot be reached"), "{html}");
    super::cleanup(dir, schema).await;
}

/// Start-up refuses a provider whose metadata names another issuer, and a client the
/// provider refuses, naming the setting; it accepts the right one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_checks_the_issuer_and_the_client() {
    let op = provider().await;
    let (issuer, jwks) = op.endpoints();
    let store: Arc<dyn latchkey_vault::Store> = {
        let dir = std::env::temp_dir().join(format!("lk-gw-{}", latchkey_vault::store::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        Arc::new(
            latchkey_vault::SqliteStore::open(&dir.join("db"))
                .await
                .unwrap(),
        )
    };
    let check = |fault: Fault| {
        let (op, store, issuer, jwks) = (op.clone(), store.clone(), issuer.clone(), jwks.clone());
        async move {
            op.set(|s| s.fault = fault);
            let cfg = config("http://127.0.0.1:1", &issuer, &jwks);
            let state = latchkey_gateway::state(
                &cfg,
                store,
                Arc::new(latchkey_vault::Keyring::new(StaticKeys(Some(
                    KeySet::parse(KEY).unwrap(),
                )))),
                Arc::new(SystemClock),
            )
            .unwrap();
            latchkey_gateway::check_signin(&state).await
        }
    };
    assert!(check(Fault::None).await.is_ok());
    let e = check(Fault::OtherIssuer).await.unwrap_err();
    assert_eq!(e.setting, "auth.login.issuer", "{e}");
    assert!(e.message.contains("/other"), "{e}");
    let e = check(Fault::RefuseClient).await.unwrap_err();
    assert_eq!(e.setting, "auth.login.client_secret", "{e}");
    assert!(e.message.contains("invalid_client"), "{e}");
}

/// A session ends after `session_idle` unused and after `session_lifetime` however
/// much it is used (the instance's clock moved by hand).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_when_idle_and_at_its_lifetime() {
    let op = provider().await;
    let (issuer, jwks) = op.endpoints();
    let minute = std::time::Duration::from_secs(60);
    for (label, steps, live) in [
        // Used every 9 minutes: alive at 54 minutes, ended past the hour.
        (
            "lifetime",
            vec![9u64, 9, 9, 9, 9, 9, 9],
            vec![true, true, true, true, true, true, false],
        ),
        // Unused for 11 minutes: ended.
        ("idle", vec![9, 11], vec![true, false]),
    ] {
        let dir = std::env::temp_dir().join(format!("lk-gw-{}", latchkey_vault::store::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store: Arc<dyn latchkey_vault::Store> = Arc::new(
            latchkey_vault::SqliteStore::open(&dir.join("db"))
                .await
                .unwrap(),
        );
        let clock = Arc::new(latchkey_core::time::ManualClock::at(SystemClock.now()));
        let base = super::serve(
            |base| {
                let mut cfg = config(base, &issuer, &jwks);
                let login = cfg.login.as_mut().unwrap();
                login.session_idle = 600;
                login.session_lifetime = 3600;
                cfg
            },
            store,
            StaticKeys(Some(KeySet::parse(KEY).unwrap())),
            clock.clone(),
        )
        .await;
        let (_, cookie) = sign_in(&base).await;
        let cookie = cookie.unwrap();
        for (step, want) in steps.iter().zip(live) {
            clock.advance(minute * u32::try_from(*step).unwrap());
            let (s, _) = get(&base, "/v1/servers", &cookie).await;
            assert_eq!(s == 200, want, "{label}: after {step} more minutes: {s}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
