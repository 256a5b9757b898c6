//! API keys on the `Token` scheme, over real HTTP in jwt mode: the positive cache of
//! found keys (issue 18) never outlives a deletion (on this instance or, through the
//! change channel, on another) nor an expiry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use latchkey_core::time::ManualClock;
use latchkey_core::{Clock, SystemClock, UnixTime};
use latchkey_gateway::Config;
use latchkey_testkit::idp::{KeyAlg, ScriptedIdp};
use latchkey_vault::KeySet;
use latchkey_vault::keyring::StaticKeys;
use reqwest::Method;
use serde_json::{Value, json};

use super::Backend;

const KEY: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const TENANT_CLAIM: &str = "org_id";

fn keys() -> StaticKeys {
    StaticKeys(Some(KeySet::parse(KEY).unwrap()))
}

/// jwt mode for the instance at `base`: tokens from `idp`'s JWKS, the tenant from
/// [`TENANT_CLAIM`].
fn jwt_config(base: &str, idp: &ScriptedIdp) -> Config {
    let toml = format!(
        "public_url = \"{base}\"\nallow_insecure_loopback = true\n[auth]\nmode = \"jwt\"\n\
         issuer = \"{}\"\naudience = \"{base}/mcp\"\njwks_url = \"{}\"\n\
         tenant_claim = \"{TENANT_CLAIM}\"\n",
        idp.issuer(),
        idp.jwks_url()
    );
    Config::parse(&toml, &HashMap::new()).unwrap()
}

/// `Authorization: Bearer <JWT>` for `subject` of `tenant` at the instance `base`.
fn bearer(idp: &ScriptedIdp, base: &str, tenant: &str, subject: &str, admin: bool) -> String {
    let now = SystemClock.now().as_secs();
    let mut c = json!({
        "iss": idp.issuer(), "aud": format!("{base}/mcp"), "sub": subject,
        TENANT_CLAIM: tenant, "iat": now, "exp": now + 3600,
    });
    if admin {
        c["roles"] = json!(["latchkey:admin"]);
    }
    format!("Bearer {}", idp.mint(KeyAlg::Rs256, &c))
}

async fn send(method: Method, url: &str, auth: &str, body: Option<Value>) -> (u16, Value, String) {
    super::request(method, url, Some(auth), body).await
}

/// The store for `backend` (SQLite in `dir`, or a fresh PostgreSQL schema).
async fn open_store(
    backend: Backend,
    dir: &std::path::Path,
) -> (
    Arc<dyn latchkey_vault::Store>,
    Option<latchkey_testkit::pg::PgSchema>,
) {
    match backend {
        Backend::Sqlite => (
            Arc::new(
                latchkey_vault::SqliteStore::open(&dir.join("db"))
                    .await
                    .unwrap(),
            ),
            None,
        ),
        Backend::Postgres => {
            let schema = latchkey_testkit::pg::PgSchema::new("lk_keys")
                .await
                .unwrap();
            let store = latchkey_vault::store::DatabaseUrl::parse(&schema.url)
                .unwrap()
                .open()
                .await
                .unwrap();
            (store, Some(schema))
        }
    }
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lk-keys-{}", latchkey_vault::store::new_id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Mints a key as `auth` on `base` with `body`; the key as a `Token` header and its id.
async fn mint(base: &str, auth: &str, body: Value) -> (String, String) {
    let (status, v, text) = send(
        Method::POST,
        &format!("{base}/v1/api-keys"),
        auth,
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    (
        format!("Token {}", v["key"].as_str().unwrap()),
        v["id"].as_str().unwrap().to_owned(),
    )
}

async fn whoami(base: &str, token: &str) -> u16 {
    send(Method::GET, &format!("{base}/v1/whoami"), token, None)
        .await
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_is_refused_at_once_on_sqlite() {
    a_deleted_key_is_refused_at_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_is_refused_at_once_on_postgres() {
    a_deleted_key_is_refused_at_once(Backend::Postgres).await;
}

/// A key used (so remembered) and then deleted is refused by the very next request on
/// the same instance; an unknown key is refused every time and never remembered.
async fn a_deleted_key_is_refused_at_once(backend: Backend) {
    let idp = ScriptedIdp::start().await.unwrap();
    let dir = temp_dir();
    let (store, schema) = open_store(backend, &dir).await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (base, state) = super::serve_state(|b| jwt_config(b, &idp), store, keys(), clock).await;
    let amy = bearer(&idp, &base, "tenant-a", "amy", false);
    let (token, id) = mint(&base, &amy, json!({"name": "ci"})).await;
    for _ in 0..3 {
        assert_eq!(whoami(&base, &token).await, 200);
    }
    assert_eq!(state.api_key_cache.len(), 1, "a found key is remembered");
    for _ in 0..3 {
        let unknown = "Token lk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert_eq!(whoami(&base, unknown).await, 401);
    }
    assert_eq!(state.api_key_cache.len(), 1, "a miss is never remembered");

    let (status, _, _) = send(
        Method::DELETE,
        &format!("{base}/v1/api-keys/{id}"),
        &amy,
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(whoami(&base, &token).await, 401, "refused at once");
    assert!(state.api_key_cache.is_empty());
    super::cleanup(dir, schema).await;
}

/// Two instances on one PostgreSQL database: a key both have used (so both remember it)
/// and deleted on one is refused by the other within the announcement's delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_deleted_on_one_instance_is_refused_on_the_other() {
    let idp = ScriptedIdp::start().await.unwrap();
    let dir = temp_dir();
    let (first_store, schema) = open_store(Backend::Postgres, &dir).await;
    let url = schema.as_ref().unwrap().url.clone();
    let second_store = latchkey_vault::store::DatabaseUrl::parse(&url)
        .unwrap()
        .open()
        .await
        .unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (one, _) =
        super::serve_state(|b| jwt_config(b, &idp), first_store, keys(), clock.clone()).await;
    let (two, two_state) =
        super::serve_state(|b| jwt_config(b, &idp), second_store, keys(), clock).await;
    let amy = bearer(&idp, &one, "tenant-a", "amy", false);
    let (token, id) = mint(&one, &amy, json!({"name": "ci"})).await;
    assert_eq!(whoami(&one, &token).await, 200);
    assert_eq!(whoami(&two, &token).await, 200);
    assert_eq!(two_state.api_key_cache.len(), 1);

    let (status, _, _) = send(
        Method::DELETE,
        &format!("{one}/v1/api-keys/{id}"),
        &amy,
        None,
    )
    .await;
    assert_eq!(status, 204);
    let deleted = Instant::now();
    assert_eq!(whoami(&one, &token).await, 401);
    while whoami(&two, &token).await != 401 {
        assert!(
            deleted.elapsed() < Duration::from_secs(1),
            "the other instance still accepted the deleted key after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(two_state.api_key_cache.is_empty());
    super::cleanup(dir, schema).await;
}

/// A key that expires while remembered is refused from its expiry on, though its entry
/// is younger than the cache's lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_is_refused_though_cached() {
    let idp = ScriptedIdp::start().await.unwrap();
    let dir = temp_dir();
    let (store, schema) = open_store(Backend::Sqlite, &dir).await;
    let clock = Arc::new(ManualClock::at(UnixTime::from_secs(
        SystemClock.now().as_secs(),
    )));
    let (base, state) =
        super::serve_state(|b| jwt_config(b, &idp), store, keys(), clock.clone()).await;
    let amy = bearer(&idp, &base, "tenant-a", "amy", false);
    let (token, _) = mint(&base, &amy, json!({"name": "short", "expires_in": 60})).await;
    // 50 s on, the key is read and remembered (10 s before it expires) ...
    clock.advance(Duration::from_secs(50));
    assert_eq!(whoami(&base, &token).await, 200);
    assert_eq!(state.api_key_cache.len(), 1);
    // ... 9 s on, still served from memory ...
    clock.advance(Duration::from_secs(9));
    assert_eq!(whoami(&base, &token).await, 200);
    // ... and at its expiry, 10 s after it was remembered, refused.
    clock.advance(Duration::from_secs(1));
    assert_eq!(whoami(&base, &token).await, 401);
    assert!(
        state.api_key_cache.is_empty(),
        "the expired entry is dropped"
    );
    assert_eq!(whoami(&base, &token).await, 401);
    super::cleanup(dir, schema).await;
}
