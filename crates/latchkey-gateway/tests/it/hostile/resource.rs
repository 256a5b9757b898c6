//! Item 5: a server URL change races the calls in flight. 300 callers call a server
//! (through `/mcp/{server}` and the REST tool call) while an admin points it at another
//! MCP server with its own authorization server; not one request may carry a token of
//! the old authorization server to the new URL. On SQLite with one instance, and on
//! PostgreSQL with two instances sharing the database (callers on both, the change made
//! on the first).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use latchkey_core::SystemClock;
use latchkey_testkit::{AsConfig, ScriptedServer};
use latchkey_vault::KeySet;
use latchkey_vault::keyring::StaticKeys;
use serde_json::json;

use crate::tools::KEY;

const CALLERS: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_url_change_under_load_on_sqlite() {
    url_change_under_load(crate::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_url_change_under_load_on_postgres_with_two_instances() {
    url_change_under_load(crate::Backend::Postgres).await;
}

async fn url_change_under_load(backend: crate::Backend) {
    let old = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let new = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let keys = StaticKeys(Some(KeySet::parse(KEY).unwrap()));
    let cfg = crate::loopback_config();
    let (first, dir, store, schema) = crate::start_on(backend, &cfg, keys.clone()).await;
    // A second instance on the same database (PostgreSQL only: SQLite is one process's).
    let mut bases = vec![first.clone()];
    if let Some(schema) = &schema {
        let store2 = latchkey_vault::store::DatabaseUrl::parse(&schema.url)
            .unwrap()
            .open()
            .await
            .unwrap();
        let cfg2 = cfg.clone();
        bases.push(
            crate::serve(
                move |b| {
                    let mut c = cfg2;
                    c.public_url = b.to_owned();
                    c
                },
                store2,
                keys,
                Arc::new(SystemClock),
            )
            .await,
        );
    }
    let _ = store;

    let (status, server) = crate::post(
        &format!("{first}/v1/servers"),
        json!({"name": "moving", "url": old.mcp_url()}),
    )
    .await;
    assert_eq!(status, 201, "{server}");
    let id = server["id"].as_str().unwrap().to_owned();
    let (status, v) = crate::post(
        &format!("{first}/v1/credentials"),
        json!({"server_id": id, "refresh_token": old.mint_refresh_token(),
               "token_endpoint": format!("{}/token", old.base), "issuer": old.base,
               "client_id": "deposit-client"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");

    // Every instance has the old row and the old token in memory.
    let http = crate::client();
    for base in &bases {
        let (status, _, v) = crate::proxy::rpc(
            &http,
            &format!("{base}/mcp/{id}"),
            None,
            crate::proxy::call(1, "echo", json!({"text": "warm"})),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert!(v["result"].is_object(), "{v}");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for n in 0..CALLERS {
        let base = bases[n % bases.len()].clone();
        let id = id.clone();
        let http = http.clone();
        let stop = stop.clone();
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            // Keeps calling until told to stop, then a few more (after the change).
            let mut after = 0;
            while after < 3 {
                if stop.load(Ordering::Relaxed) {
                    after += 1;
                }
                if n % 2 == 0 {
                    let _ = crate::proxy::rpc(
                        &http,
                        &format!("{base}/mcp/{id}"),
                        None,
                        crate::proxy::call(1, "echo", json!({"text": "x"})),
                    )
                    .await;
                } else {
                    let _ = http
                        .post(format!("{base}/v1/servers/{id}/tools/echo/call"))
                        .header("content-type", "application/json")
                        .body(json!({"text": "x"}).to_string())
                        .send()
                        .await
                        .map(|r| r.status());
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Let the load build up, then change the URL on the first instance.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = http
        .patch(format!("{first}/v1/servers/{id}"))
        .header("content-type", "application/json")
        .body(json!({"url": new.mcp_url()}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // Calls keep going for a while on the new row.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert!(calls.load(Ordering::Relaxed) >= CALLERS * 3);

    // Not one request at the new URL carried a token the old authorization server
    // issued (nor any token at all: nothing was ever granted for the new server).
    let old_tokens = old.issued_access_tokens();
    assert!(!old_tokens.is_empty());
    let leaked: Vec<_> = new
        .requests("/mcp")
        .into_iter()
        .filter_map(|r| r.headers.get("authorization").cloned())
        .filter(|a| old_tokens.iter().any(|t| a.ends_with(t.as_str())))
        .collect();
    assert_eq!(leaked.len(), 0, "old tokens reached the new URL");
    assert!(
        new.requests("/mcp")
            .iter()
            .all(|r| !r.headers.contains_key("authorization")),
        "no token at all reached the new URL"
    );
    // The old server's refresh token was revoked where it came from.
    assert!(!old.revocations().is_empty(), "revoked at the old AS");
    assert!(new.revocations().is_empty(), "nothing sent to the new AS");
    // After the change, the slot needs consent for the new server.
    let (status, v) = crate::post(
        &format!("{first}/v1/servers/{id}/tools/echo/call"),
        json!({"text": "after"}),
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("needs_oauth_reauth")),
        "{v}"
    );
    crate::cleanup(dir, schema).await;
}

/// The second wall alone: the server's URL is changed behind Latchkey's back (in the
/// database, so no purge ran and the token is still stored and cached). The token was
/// issued for the old resource: it is never sent to the new URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_a_token_goes_only_to_its_resource() {
    let old = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let new = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let keys = StaticKeys(Some(KeySet::parse(KEY).unwrap()));
    let (base, dir, store, schema) =
        crate::start_on(crate::Backend::Sqlite, &crate::loopback_config(), keys).await;
    let (status, server) = crate::post(
        &format!("{base}/v1/servers"),
        json!({"name": "moved", "url": old.mcp_url()}),
    )
    .await;
    assert_eq!(status, 201, "{server}");
    let id = server["id"].as_str().unwrap().to_owned();
    // Deposited without a resource: bound to the server's URL of the time.
    let (status, v) = crate::post(
        &format!("{base}/v1/credentials"),
        json!({"server_id": id, "refresh_token": old.mint_refresh_token(),
               "token_endpoint": format!("{}/token", old.base), "issuer": old.base,
               "client_id": "deposit-client"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let call = format!("{base}/v1/servers/{id}/tools/echo/call");
    let (status, v) = crate::post(&call, json!({"text": "before"})).await;
    assert_eq!(status, 200, "{v}");

    let mut row = store.get_server("default", &id).await.unwrap().unwrap();
    row.url = new.mcp_url();
    assert!(store.update_server(&row, 0).await.unwrap());
    // Past the server rows' short cache: the call paths read the new URL.
    tokio::time::sleep(latchkey_gateway::server_cache::TTL + Duration::from_millis(100)).await;
    let (status, v) = crate::post(&call, json!({"text": "after"})).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("needs_oauth_reauth")),
        "{v}"
    );
    let (status, _, v) = crate::proxy::rpc(
        &crate::client(),
        &format!("{base}/mcp/{id}"),
        None,
        crate::proxy::call(1, "echo", json!({"text": "after"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v["error"]["data"]["code"], "needs_oauth_reauth", "{v}");
    assert!(
        new.requests("/mcp").is_empty(),
        "nothing was sent to the new URL"
    );
    crate::cleanup(dir, schema).await;
}
