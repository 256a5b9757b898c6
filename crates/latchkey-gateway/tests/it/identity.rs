//! Who the caller is, over real HTTP in jwt mode: JWTs from the scripted identity
//! provider (JWKS) with a tenant claim, tenant isolation of every server, slot and
//! event, API keys minted over the API and used on the `Token` scheme, and HS256
//! shared-secret mode.

use std::collections::HashMap;
use std::time::Duration;

use latchkey_core::{Clock, SystemClock};
use latchkey_gateway::Config;
use latchkey_testkit::idp::{KeyAlg, ScriptedIdp, mint_hs256, unsigned_token};
use latchkey_testkit::{AsConfig, ScriptedServer};
use latchkey_vault::KeySet;
use latchkey_vault::keyring::StaticKeys;
use latchkey_vault::store::Slot;
use reqwest::Method;
use serde_json::{Value, json};

use super::{Backend, client};

const KEY: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const TENANT_CLAIM: &str = "org_id";

fn keys() -> StaticKeys {
    StaticKeys(Some(KeySet::parse(KEY).unwrap()))
}

fn now() -> u64 {
    SystemClock.now().as_secs()
}

/// Latchkey in jwt mode: tokens from `idp`'s JWKS, the tenant from [`TENANT_CLAIM`].
async fn start_jwt(
    backend: Backend,
    idp: &ScriptedIdp,
) -> (
    String,
    std::path::PathBuf,
    std::sync::Arc<dyn latchkey_vault::Store>,
    Option<latchkey_testkit::pg::PgSchema>,
) {
    let (issuer, jwks) = (idp.issuer(), idp.jwks_url());
    super::start_configured(
        backend,
        |base| {
            let toml = format!(
                "public_url = \"{base}\"\nallow_insecure_loopback = true\n[auth]\nmode = \"jwt\"\n\
                 issuer = \"{issuer}\"\naudience = \"{base}/mcp\"\njwks_url = \"{jwks}\"\n\
                 tenant_claim = \"{TENANT_CLAIM}\"\n"
            );
            Config::parse(&toml, &HashMap::new()).unwrap()
        },
        keys(),
    )
    .await
}

fn claims(base: &str, issuer: &str, tenant: &str, subject: &str, admin: bool) -> Value {
    let mut c = json!({
        "iss": issuer, "aud": format!("{base}/mcp"), "sub": subject,
        TENANT_CLAIM: tenant, "iat": now(), "exp": now() + 3600,
    });
    if admin {
        c["roles"] = json!(["latchkey:admin"]);
    }
    c
}

/// `Authorization: Bearer <JWT>` for `subject` of `tenant`, signed by the IdP.
fn bearer(idp: &ScriptedIdp, base: &str, tenant: &str, subject: &str, admin: bool) -> String {
    let jwt = idp.mint(
        KeyAlg::Rs256,
        &claims(base, &idp.issuer(), tenant, subject, admin),
    );
    format!("Bearer {jwt}")
}

/// One request with `auth` as the `Authorization` header; status, JSON body (`Null`
/// if none) and the raw text.
async fn send(method: Method, url: &str, auth: &str, body: Option<Value>) -> (u16, Value, String) {
    super::request(method, url, Some(auth), body).await
}

/// What the scripted upstream has been asked, by endpoint.
fn upstream_counters(u: &ScriptedServer) -> [usize; 6] {
    [
        u.mcp_requests(),
        u.token_requests(),
        u.requests("/register").len(),
        u.requests("/authorize").len(),
        u.requests("/revoke").len(),
        u.revocations().len(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_on_sqlite() {
    tenants_are_isolated(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_on_postgres() {
    tenants_are_isolated(Backend::Postgres).await;
}

/// Tenant A (an admin and a member) can reach nothing of tenant B's: every attempt is
/// a 404 (or the 403 of an admin-only operation for the member), B's server and
/// credential are untouched, and no request reaches B's upstream.
async fn tenants_are_isolated(backend: Backend) {
    let idp = ScriptedIdp::start().await.unwrap();
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let (base, dir, store, schema) = start_jwt(backend, &idp).await;
    let a_admin = bearer(&idp, &base, "tenant-a", "alice", true);
    let a_member = bearer(&idp, &base, "tenant-a", "amy", false);
    let b_admin = bearer(&idp, &base, "tenant-b", "bob", true);

    let (status, me, _) = send(Method::GET, &format!("{base}/v1/whoami"), &a_member, None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        (&me["tenant"], &me["subject"], &me["admin"]),
        (&json!("tenant-a"), &json!("amy"), &json!(false))
    );
    let (_, me, _) = send(Method::GET, &format!("{base}/v1/whoami"), &b_admin, None).await;
    assert_eq!(
        (&me["tenant"], &me["admin"]),
        (&json!("tenant-b"), &json!(true))
    );

    // B's server, connected and used once; A's own server on the same upstream.
    let servers = format!("{base}/v1/servers");
    let (status, v, _) = send(
        Method::POST,
        &servers,
        &b_admin,
        Some(json!({"name": "b-server", "url": upstream.mcp_url()})),
    )
    .await;
    assert_eq!(
        (status, v["auth_type"].as_str()),
        (201, Some("oauth")),
        "{v}"
    );
    let b_id = v["id"].as_str().unwrap().to_owned();
    let (status, v, _) = send(
        Method::POST,
        &format!("{base}/v1/credentials"),
        &b_admin,
        Some(json!({
            "server_id": b_id, "refresh_token": upstream.mint_refresh_token(),
            "token_endpoint": format!("{}/token", upstream.base), "client_id": "deposit-client",
        })),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let b_tools = format!("{servers}/{b_id}/tools");
    let (status, v, _) = send(Method::GET, &b_tools, &b_admin, None).await;
    assert_eq!(status, 200, "{v}");
    let (status, v, _) = send(
        Method::POST,
        &servers,
        &a_admin,
        Some(json!({"name": "a-server", "url": upstream.mcp_url(), "auth_type": "oauth"})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let a_id = v["id"].as_str().unwrap().to_owned();

    let b_slot = Slot {
        tenant: "tenant-b".into(),
        server: b_id.clone(),
        subject: Some("bob".into()),
    };
    let b_credential = store.get_credential(&b_slot).await.unwrap().unwrap();
    let before = upstream_counters(&upstream);

    // A's list is A's.
    for who in [&a_admin, &a_member] {
        let (status, v, text) = send(Method::GET, &servers, who, None).await;
        assert_eq!(status, 200);
        let ids: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, vec![a_id.as_str()]);
        assert!(!text.contains("b-server"));
    }

    let one = format!("{servers}/{b_id}");
    let not_found = |who: &str, what: &str, status: u16, text: &str| {
        assert_eq!(status, 404, "{who}: {what}: {text}");
        assert!(
            text.contains("\"code\":\"not_found\""),
            "{who}: {what}: {text}"
        );
        assert!(!text.contains("b-server"), "{who}: {what}: {text}");
    };
    for (who, auth) in [("admin", &a_admin), ("member", &a_member)] {
        let (status, _, text) = send(Method::GET, &one, auth, None).await;
        not_found(who, "read", status, &text);
        // Admin-only operations: the member is refused before anything is looked up.
        let (status, _, text) = send(
            Method::PATCH,
            &one,
            auth,
            Some(json!({"name": "pwned", "url": "https://attacker.example/mcp"})),
        )
        .await;
        if who == "admin" {
            not_found(who, "patch", status, &text);
        } else {
            assert_eq!(status, 403, "{text}");
        }
        let (status, _, text) = send(Method::DELETE, &one, auth, None).await;
        if who == "admin" {
            not_found(who, "delete", status, &text);
        } else {
            assert_eq!(status, 403, "{text}");
        }
        for body in [
            json!({"server_id": b_id}),
            json!({"server_id": b_id, "user_id": "bob"}),
        ] {
            let (status, _, text) = send(
                Method::POST,
                &format!("{base}/v1/oauth/start"),
                auth,
                Some(body),
            )
            .await;
            not_found(who, "start a flow", status, &text);
        }
        let (status, _, text) = send(
            Method::GET,
            &format!("{base}/v1/oauth/status/{b_id}"),
            auth,
            None,
        )
        .await;
        not_found(who, "status", status, &text);
        let (status, _, text) = send(
            Method::POST,
            &format!("{base}/v1/credentials"),
            auth,
            Some(json!({
                "server_id": b_id, "refresh_token": "rt-planted-by-a",
                "token_endpoint": format!("{}/token", upstream.base),
            })),
        )
        .await;
        not_found(who, "deposit", status, &text);
        let (status, _, text) = send(
            Method::DELETE,
            &format!("{base}/v1/credentials/{b_id}"),
            auth,
            None,
        )
        .await;
        not_found(who, "delete credentials", status, &text);
        let (status, _, text) = send(Method::GET, &b_tools, auth, None).await;
        not_found(who, "list tools", status, &text);
        let (status, _, text) = send(
            Method::POST,
            &format!("{b_tools}/echo/call"),
            auth,
            Some(json!({"text": "hi"})),
        )
        .await;
        not_found(who, "call a tool", status, &text);
    }

    // Nothing reached B's upstream; B's server and credential are as they were.
    assert_eq!(upstream_counters(&upstream), before, "no upstream request");
    let after = store.get_credential(&b_slot).await.unwrap().unwrap();
    assert_eq!(after.id, b_credential.id);
    assert_eq!(after.generation, b_credential.generation);
    assert_eq!(after.refresh_token, b_credential.refresh_token);
    let (status, v, _) = send(Method::GET, &one, &b_admin, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (&v["name"], &v["url"]),
        (&json!("b-server"), &json!(upstream.mcp_url()))
    );
    let (status, v, _) = send(
        Method::GET,
        &format!("{base}/v1/oauth/status/{b_id}"),
        &b_admin,
        None,
    )
    .await;
    assert_eq!((status, &v["has_token"]), (200, &json!(true)));
    let (status, v, _) = send(Method::GET, &b_tools, &b_admin, None).await;
    assert_eq!(status, 200, "B's server still works: {v}");
    let (_, v, _) = send(Method::GET, &servers, &b_admin, None).await;
    assert_eq!(v.as_array().unwrap().len(), 1);

    // The audit logs are per tenant, and A's mentions nothing of B's.
    let a_log = store.audit_log("tenant-a").await.unwrap();
    assert!(a_log.iter().all(|e| e.server.as_deref() != Some(&b_id)));
    assert!(a_log.iter().all(|e| e.actor == "alice" || e.actor == "amy"));
    let b_log = store.audit_log("tenant-b").await.unwrap();
    assert!(b_log.iter().all(|e| e.actor == "bob"), "{b_log:?}");

    super::cleanup(dir, schema).await;
}

/// A `/v1/events` subscription, read one event at a time.
struct Events {
    resp: reqwest::Response,
    buf: String,
}

impl Events {
    async fn open(base: &str, auth: &str) -> Self {
        let resp = client()
            .get(format!("{base}/v1/events"))
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        Self {
            resp,
            buf: String::new(),
        }
    }

    /// The next event's `(type, data)`, or `None` if none comes within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let kind = block.lines().find_map(|l| l.strip_prefix("event: "));
                let data = block.lines().find_map(|l| l.strip_prefix("data: "));
                if let (Some(k), Some(d)) = (kind, data) {
                    return Some((k.to_owned(), serde_json::from_str(d).unwrap()));
                }
                continue; // a comment (keep-alive)
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .ok()?
                .unwrap()
                .unwrap();
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// Starts a flow on `server` as `auth`, consents at the scripted AS and lands the
/// callback (unauthenticated, as from the user's browser).
async fn connect(base: &str, auth: &str, server: &str) {
    let (status, started, _) = send(
        Method::POST,
        &format!("{base}/v1/oauth/start"),
        auth,
        Some(json!({"server_id": server})),
    )
    .await;
    assert_eq!(
        (status, started["status"].as_str()),
        (200, Some("redirect")),
        "{started}"
    );
    let r = client()
        .get(started["authorization_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 302);
    let callback = r.headers()["location"].to_str().unwrap().to_owned();
    let r = client().get(&callback).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
}

/// `oauth.complete` of tenant B reaches B and never tenant A, not even A's admin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_never_cross_tenants() {
    let idp = ScriptedIdp::start().await.unwrap();
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let (base, dir, _store, _) = start_jwt(Backend::Sqlite, &idp).await;
    let a_admin = bearer(&idp, &base, "tenant-a", "alice", true);
    let b_member = bearer(&idp, &base, "tenant-b", "bob", false);
    let b_admin = bearer(&idp, &base, "tenant-b", "root", true);
    let mut ids = Vec::new();
    for auth in [&a_admin, &b_admin] {
        let (status, v, _) = send(
            Method::POST,
            &format!("{base}/v1/servers"),
            auth,
            Some(json!({"name": "s", "url": upstream.mcp_url(), "auth_type": "oauth"})),
        )
        .await;
        assert_eq!(status, 201, "{v}");
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let (a_server, b_server) = (ids[0].clone(), ids[1].clone());

    let mut a_events = Events::open(&base, &a_admin).await;
    let mut b_events = Events::open(&base, &b_admin).await;

    // B's member connects B's server: B's admin is told, A's admin is not.
    connect(&base, &b_member, &b_server).await;
    let (kind, data) = b_events.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(kind, "mcp.oauth_complete");
    assert_eq!(
        (
            &data["server_id"],
            &data["initiating_user_id"],
            &data["status"]
        ),
        (&json!(b_server), &json!("bob"), &json!("success"))
    );
    // A's own flow next: the first event A sees is its own, so B's was never sent.
    connect(&base, &a_admin, &a_server).await;
    let (_, data) = a_events.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(data["server_id"], a_server.as_str(), "{data}");
    assert!(
        b_events.next(Duration::from_millis(300)).await.is_none(),
        "B sees nothing of A's"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// API keys over the API: minted by a JWT caller, shown once, acting as that caller
/// on the `Token` scheme only, listed without secrets, tenant and owner scoped,
/// stopped by delete, and absent from the database file and the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_minted_over_the_api_work_on_the_token_scheme_only() {
    let logs = latchkey_testkit::logs::capture();
    let idp = ScriptedIdp::start().await.unwrap();
    let (base, dir, store, _) = start_jwt(Backend::Sqlite, &idp).await;
    let a_admin = bearer(&idp, &base, "tenant-a", "alice", true);
    let a_member = bearer(&idp, &base, "tenant-a", "amy", false);
    let b_admin = bearer(&idp, &base, "tenant-b", "bob", true);
    let keys_url = format!("{base}/v1/api-keys");
    let whoami = format!("{base}/v1/whoami");

    // Strict bodies.
    for (body, field) in [
        (json!({}), "name"),
        (json!({"name": "  "}), "name"),
        (json!({"name": 7}), "name"),
        (json!({"name": "x".repeat(101)}), "name"),
        (json!({"name": "ci", "tenant": "tenant-b"}), "tenant"),
        (json!({"name": "ci", "subject": "alice"}), "subject"),
    ] {
        let (status, v, _) = send(Method::POST, &keys_url, &a_member, Some(body)).await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["fields"][0]["field"], field, "{v}");
    }
    assert!(
        store
            .list_api_keys("tenant-a", None)
            .await
            .unwrap()
            .is_empty()
    );

    // Minted: the key once, acting as the member.
    let (status, minted, text) = send(
        Method::POST,
        &keys_url,
        &a_member,
        Some(json!({"name": "ci-KEY-NAME-MARKER"})),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    let mut fields: Vec<&str> = minted
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        vec![
            "created_at",
            "expires_at",
            "id",
            "key",
            "last_used_at",
            "name",
            "prefix",
            "role",
            "scopes",
            "servers"
        ]
    );
    let key = minted["key"].as_str().unwrap().to_owned();
    let key_id = minted["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("lk_") && key.len() > 40, "{key}");
    let hash_hex = latchkey_guard::ApiKeyHash::of(&key).to_hex();
    let token = format!("Token {key}");

    let (status, me, _) = send(Method::GET, &whoami, &token, None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        (&me["tenant"], &me["subject"], &me["admin"]),
        (&json!("tenant-a"), &json!("amy"), &json!(false))
    );
    let (status, _, _) = send(Method::GET, &whoami, &format!("token   {key} "), None).await;
    assert_eq!(
        status, 200,
        "the scheme is case-insensitive, whitespace trimmed"
    );
    // Never on the Bearer scheme (that is OAuth's), never an unknown key.
    let (status, _, _) = send(Method::GET, &whoami, &format!("Bearer {key}"), None).await;
    assert_eq!(status, 401);
    let (status, _, _) = send(
        Method::GET,
        &whoami,
        "Token lk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        None,
    )
    .await;
    assert_eq!(status, 401);
    // A key cannot mint another key.
    let (status, _, _) = send(
        Method::POST,
        &keys_url,
        &token,
        Some(json!({"name": "child"})),
    )
    .await;
    assert_eq!(status, 403);

    // Listed without key or hash; the use was recorded.
    let (status, listed, text) = send(Method::GET, &keys_url, &token, None).await;
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], key_id.as_str());
    assert_eq!(listed[0]["subject"], "amy");
    assert_eq!(listed[0]["role"], "member");
    assert!(listed[0]["last_used_at"].is_i64(), "{listed}");
    assert!(listed[0].get("key").is_none() && listed[0].get("hash").is_none());
    assert!(!text.contains(&key) && !text.contains(&key[3..]) && !text.contains(&hash_hex));

    // The admin's key acts as an admin; the admin sees the tenant's keys, the member
    // only their own; another tenant sees and deletes nothing.
    let (status, admin_key, _) = send(
        Method::POST,
        &keys_url,
        &a_admin,
        Some(json!({"name": "ops"})),
    )
    .await;
    assert_eq!(status, 201);
    let admin_token = format!("Token {}", admin_key["key"].as_str().unwrap());
    let admin_key_id = admin_key["id"].as_str().unwrap().to_owned();
    let (_, me, _) = send(Method::GET, &whoami, &admin_token, None).await;
    assert_eq!(
        (&me["subject"], &me["admin"]),
        (&json!("alice"), &json!(true))
    );
    let (_, v, _) = send(Method::GET, &keys_url, &admin_token, None).await;
    let all: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(all, vec![key_id.as_str(), admin_key_id.as_str()]);
    let (_, v, _) = send(Method::GET, &keys_url, &a_member, None).await;
    assert_eq!(v.as_array().unwrap().len(), 1);
    let (_, v, _) = send(Method::GET, &keys_url, &b_admin, None).await;
    assert_eq!(v, json!([]));
    let (status, _, _) = send(
        Method::DELETE,
        &format!("{keys_url}/{admin_key_id}"),
        &a_member,
        None,
    )
    .await;
    assert_eq!(status, 404, "a member cannot delete another's key");
    let (status, _, _) = send(
        Method::DELETE,
        &format!("{keys_url}/{key_id}"),
        &b_admin,
        None,
    )
    .await;
    assert_eq!(status, 404, "another tenant's admin cannot delete it");
    let (status, _, _) = send(Method::GET, &whoami, &token, None).await;
    assert_eq!(status, 200, "still works");

    // Neither key is in the database file (nor its write-ahead log): only hashes.
    let mut bytes = std::fs::read(dir.join("db")).unwrap();
    if let Ok(wal) = std::fs::read(dir.join("db-wal")) {
        bytes.extend(wal);
    }
    assert!(
        bytes.windows(18).any(|w| w == b"ci-KEY-NAME-MARKER"),
        "the scan reads the data pages"
    );
    for k in [&key, admin_key["key"].as_str().unwrap()] {
        assert!(!bytes.windows(k.len()).any(|w| w == k.as_bytes()));
        assert!(!bytes.windows(k.len() - 3).any(|w| w == &k.as_bytes()[3..]));
    }

    // Deleted by its owner: it stops working at once.
    let (status, _, text) = send(
        Method::DELETE,
        &format!("{keys_url}/{key_id}"),
        &a_member,
        None,
    )
    .await;
    assert_eq!((status, text.as_str()), (204, ""));
    let (status, _, _) = send(Method::GET, &whoami, &token, None).await;
    assert_eq!(status, 401);
    let (status, _, _) = send(
        Method::DELETE,
        &format!("{keys_url}/{key_id}"),
        &a_member,
        None,
    )
    .await;
    assert_eq!(status, 404);
    // An admin deletes any key of the tenant.
    let (status, _, _) = send(
        Method::POST,
        &keys_url,
        &a_member,
        Some(json!({"name": "second"})),
    )
    .await;
    assert_eq!(status, 201);
    let second = store.list_api_keys("tenant-a", Some("amy")).await.unwrap();
    let (status, _, _) = send(
        Method::DELETE,
        &format!("{keys_url}/{}", second[0].id),
        &a_admin,
        None,
    )
    .await;
    assert_eq!(status, 204);

    let actions: Vec<(String, String, Option<String>)> = store
        .audit_log("tenant-a")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.actor, e.subject))
        .collect();
    let amy = Some("amy".to_owned());
    assert_eq!(
        actions,
        vec![
            ("api_key.create".into(), "amy".into(), amy.clone()),
            (
                "api_key.create".into(),
                "alice".into(),
                Some("alice".into())
            ),
            ("api_key.delete".into(), "amy".into(), amy.clone()),
            ("api_key.create".into(), "amy".into(), amy.clone()),
            ("api_key.delete".into(), "alice".into(), amy.clone()),
        ]
    );
    let text = logs.text();
    assert!(!text.is_empty(), "the capture works");
    assert!(!text.contains(&key[3..]), "an API key in the logs");
    assert!(!text.contains(&hash_hex), "an API key hash in the logs");
    let _ = std::fs::remove_dir_all(dir);
}

/// HS256 mode: a token signed with the configured secret works, one signed with any
/// other secret (or none) does not; API keys work there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_shared_secret_mode() {
    const SECRET: &[u8] = b"a-shared-secret-of-at-least-32-bytes";
    const ISSUER: &str = "https://issuer.example";
    let (base, dir, _store, _) = super::start_configured(
        Backend::Sqlite,
        |base| {
            let toml = format!(
                "public_url = \"{base}\"\n[auth]\nmode = \"jwt\"\nissuer = \"{ISSUER}\"\n\
                 audience = \"{base}/mcp\"\ntenant_claim = \"{TENANT_CLAIM}\"\n"
            );
            let env = HashMap::from([(
                "LATCHKEY_JWT_SECRET".to_owned(),
                String::from_utf8(SECRET.to_vec()).unwrap(),
            )]);
            Config::parse(&toml, &env).unwrap()
        },
        keys(),
    )
    .await;
    let whoami = format!("{base}/v1/whoami");
    let c = claims(&base, ISSUER, "tenant-h", "hana", false);
    let good = format!("Bearer {}", mint_hs256(SECRET, &c, None));
    let (status, me, _) = send(Method::GET, &whoami, &good, None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        (&me["tenant"], &me["subject"]),
        (&json!("tenant-h"), &json!("hana"))
    );

    let other = mint_hs256(b"another-secret-of-at-least-32-bytes!", &c, None);
    let (status, _, _) = send(Method::GET, &whoami, &format!("Bearer {other}"), None).await;
    assert_eq!(status, 401);
    let none = unsigned_token(&json!({"alg": "none", "typ": "JWT"}), &c);
    let (status, _, _) = send(Method::GET, &whoami, &format!("Bearer {none}"), None).await;
    assert_eq!(status, 401);
    let mut stale = c.clone();
    stale["exp"] = json!(now() - 3600);
    let expired = mint_hs256(SECRET, &stale, None);
    let (status, _, _) = send(Method::GET, &whoami, &format!("Bearer {expired}"), None).await;
    assert_eq!(status, 401);

    let (status, minted, _) = send(
        Method::POST,
        &format!("{base}/v1/api-keys"),
        &good,
        Some(json!({"name": "k"})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, me, _) = send(
        Method::GET,
        &whoami,
        &format!("Token {}", minted["key"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!((status, &me["subject"]), (200, &json!("hana")));
    let _ = std::fs::remove_dir_all(dir);
}

/// In local mode the endpoints work too (the keys matter once the same database
/// serves in jwt mode).
#[tokio::test]
async fn api_keys_in_local_mode() {
    let cfg = Config::parse("", &HashMap::new()).unwrap();
    let (base, dir, _store, _) = super::start_on(Backend::Sqlite, &cfg, StaticKeys(None)).await;
    let url = format!("{base}/v1/api-keys");
    let (status, minted) = super::post(&url, json!({"name": "laptop"})).await;
    assert_eq!(status, 201, "{minted}");
    let r = client().get(&url).send().await.unwrap();
    let listed: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(listed[0]["subject"], "local");
    assert_eq!(listed[0]["role"], "admin");
    let r = client()
        .delete(format!("{url}/{}", minted["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let _ = std::fs::remove_dir_all(dir);
}
