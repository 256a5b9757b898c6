//! Three instances on one PostgreSQL database behave as one (R-MULTI-1, R-MULTI-2,
//! R-MULTI-3): one refresh grant per expiry across all of them against an
//! authorization server that rotates refresh tokens and revokes the family on reuse; a
//! disconnect on one instance stops the others from serving the token within a second;
//! a flow started on one instance completes on another, and a client waiting on a third
//! hears about it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use latchkey_core::UnixTime;
use latchkey_core::time::ManualClock;
use latchkey_testkit::{AsConfig, ScriptedServer};
use latchkey_vault::KeySet;
use latchkey_vault::keyring::StaticKeys;
use serde_json::json;

use super::proxy::{call, rpc};
use super::{client, post};

const KEY: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const INSTANCES: usize = 3;
const CALLS_PER_INSTANCE: usize = 300;
const EXPIRIES: usize = 20;

/// `INSTANCES` instances on the schema at `url`, sharing `clock` (so a token expires
/// for all of them at once).
async fn instances(url: &str, clock: &Arc<ManualClock>) -> Vec<String> {
    let mut bases = Vec::new();
    for _ in 0..INSTANCES {
        let store = latchkey_vault::store::DatabaseUrl::parse(url)
            .unwrap()
            .open()
            .await
            .unwrap();
        let keys = StaticKeys(Some(KeySet::parse(KEY).unwrap()));
        let base = super::serve(
            |base| {
                let mut cfg = super::loopback_config();
                cfg.public_url = base.to_owned();
                cfg
            },
            store,
            keys,
            clock.clone(),
        )
        .await;
        bases.push(base);
    }
    bases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_postgres_behave_as_one() {
    let schema = latchkey_testkit::pg::PgSchema::new("lk_cluster")
        .await
        .unwrap();
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let clock = Arc::new(ManualClock::at(UnixTime::from_secs(1_900_000_000)));
    let bases = instances(&schema.url, &clock).await;

    // A server and a deposited refresh token (no access token yet), on instance 1.
    let id = super::connected_server(&bases[0], "scripted", &upstream).await;

    // 20 expiries; after each, 3 × 300 concurrent tool calls through `/mcp/{id}`.
    let http = client();
    let mut failures = Vec::new();
    for round in 0..EXPIRIES {
        if round > 0 {
            // Past the token's lifetime (3600 s) for every instance, and the upstream
            // no longer accepts it either.
            clock.advance(Duration::from_secs(3_601));
            upstream.expire_access_tokens();
        }
        let calls: Vec<_> = (0..INSTANCES * CALLS_PER_INSTANCE)
            .map(|i| {
                let url = format!("{}/mcp/{id}", bases[i % INSTANCES]);
                let http = http.clone();
                tokio::spawn(async move {
                    let text = format!("r{round}-{i}");
                    let (status, _, v) = rpc(
                        &http,
                        &url,
                        None,
                        call(i as u64, "echo", json!({"text": text})),
                    )
                    .await;
                    (status, v, text)
                })
            })
            .collect();
        for c in calls {
            let (status, v, text) = c.await.unwrap();
            if status != 200 || v["result"]["content"][0]["text"] != text.as_str() {
                failures.push(format!("round {round}: {status} {v}"));
            }
        }
        assert_eq!(
            upstream.grants_served_for("refresh_token"),
            round + 1,
            "exactly one refresh grant per expiry, after round {round}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} failed calls (no needs_oauth_reauth allowed), first: {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(upstream.reuse_detections(), 0);

    // A disconnect on instance 1: instances 2 and 3 stop serving the token within 1 s,
    // without sending it upstream again.
    let r = client()
        .delete(format!("{}/v1/credentials/{id}", bases[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let disconnected = Instant::now();
    for base in &bases[1..] {
        let url = format!("{base}/mcp/{id}");
        loop {
            let before = upstream.mcp_requests();
            let (status, _, v) =
                rpc(&http, &url, None, call(1, "echo", json!({"text": "x"}))).await;
            let sent_upstream = upstream.mcp_requests() != before;
            if status == 200 && v["error"]["data"]["code"] == "needs_oauth_reauth" && !sent_upstream
            {
                break;
            }
            assert!(
                disconnected.elapsed() < Duration::from_secs(1),
                "{base} still served the disconnected slot after 1 s: {status} {v}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let within = disconnected.elapsed();
    assert!(within < Duration::from_secs(1), "{within:?}");

    // A flow started on instance 1 completes on instance 3 (the callback reaches any
    // instance behind a load balancer); a client waiting on instance 2 hears about it.
    let (status, second) = post(
        &format!("{}/v1/servers", bases[0]),
        json!({"name": "second", "url": upstream.mcp_url()}),
    )
    .await;
    assert_eq!(status, 201, "{second}");
    let second_id = second["id"].as_str().unwrap().to_owned();
    let (status, started) = post(
        &format!("{}/v1/oauth/start", bases[0]),
        json!({"server_id": second_id}),
    )
    .await;
    assert_eq!(
        (status, started["status"].as_str()),
        (200, Some("redirect")),
        "{started}"
    );
    let callback = super::flows::authorize(started["authorization_url"].as_str().unwrap())
        .await
        .replacen(&bases[0], &bases[2], 1);
    assert!(callback.starts_with(&bases[2]));
    let mut events = client()
        .get(format!("{}/v1/events", bases[1]))
        .send()
        .await
        .unwrap();
    let r = client().get(&callback).send().await.unwrap();
    let html = r.text().await.unwrap();
    assert!(html.contains("\"ok\":true"), "{html}");
    let (name, data) = super::next_event(&mut events).await;
    assert_eq!(name, "mcp.oauth_complete", "{data}");
    assert_eq!(
        (data["status"].as_str(), data["server_id"].as_str()),
        (Some("success"), Some(second_id.as_str()))
    );
    let (status, _, v) = rpc(
        &http,
        &format!("{}/mcp/{second_id}", bases[1]),
        None,
        call(2, "echo", json!({"text": "after the flow"})),
    )
    .await;
    assert_eq!(
        (status, v["result"]["content"][0]["text"].as_str()),
        (200, Some("after the flow")),
        "{v}"
    );
    schema.drop_schema().await.unwrap();
}

/// PostgreSQL goes away under load and comes back (a pass-through the test cuts stands
/// for it): the slot's cached token keeps serving, requests that need the database are a
/// typed 503, nothing panics, and everything recovers on its own with the credential
/// intact (a later forced refresh still works: the refresh token survived).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_a_typed_503_and_recovers_with_nothing_lost() {
    static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        default_hook(info);
    }));

    let schema = latchkey_testkit::pg::PgSchema::new("lk_outage")
        .await
        .unwrap();
    let (cut, url) = schema.behind_netcut().await.unwrap();
    let store = latchkey_vault::store::DatabaseUrl::parse(&url)
        .unwrap()
        .open()
        .await
        .unwrap();
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let base = super::serve(
        |base| {
            let mut cfg = super::loopback_config();
            cfg.public_url = base.to_owned();
            cfg
        },
        store.clone(),
        StaticKeys(Some(KeySet::parse(KEY).unwrap())),
        Arc::new(latchkey_core::SystemClock),
    )
    .await;
    let id = super::connected_server(&base, "scripted", &upstream).await;
    let http = client();
    let mcp = format!("{base}/mcp/{id}");
    let echo = |n: u64| call(n, "echo", json!({"text": format!("m{n}")}));
    let (status, _, v) = rpc(&http, &mcp, None, echo(0)).await;
    assert_eq!(
        (status, v["result"]["content"][0]["text"].as_str()),
        (200, Some("m0"))
    );
    assert_eq!(upstream.grants_served_for("refresh_token"), 1);

    // Load while the database is away: tool calls on the cached token keep working.
    cut.cut();
    let outage = Instant::now();
    let mut n = 1;
    while outage.elapsed() < Duration::from_secs(4) {
        let (status, _, v) = rpc(&http, &mcp, None, echo(n)).await;
        assert_eq!(
            (status, v["result"]["content"][0]["text"].as_str()),
            (200, Some(format!("m{n}").as_str())),
            "a cached token keeps serving during the outage"
        );
        n += 1;
    }
    assert!(n > 5, "calls made during the outage: {n}");
    // What needs the database is a typed 503, not a hang and not a 500.
    let (status, v, _) = super::request(
        reqwest::Method::GET,
        &format!("{base}/v1/servers"),
        None,
        None,
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (503, Some("unavailable")),
        "{v}"
    );
    let (status, v) = post(
        &format!("{base}/v1/credentials"),
        json!({"server_id": id, "refresh_token": "x", "token_endpoint": format!("{}/token", upstream.base)}),
    )
    .await;
    assert_eq!(status, 503, "{v}");

    // Back: recovery on its own, within a few seconds.
    cut.restore();
    let back = Instant::now();
    loop {
        let (status, _, _) = super::request(
            reqwest::Method::GET,
            &format!("{base}/v1/servers"),
            None,
            None,
        )
        .await;
        if status == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "not recovered: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing lost or corrupted: the upstream stops accepting the access token, and the
    // stored refresh token (read from the database again) gets a new one.
    upstream.expire_access_tokens();
    let (status, _, v) = rpc(&http, &mcp, None, echo(1000)).await;
    assert_eq!(
        (status, v["result"]["content"][0]["text"].as_str()),
        (200, Some("m1000")),
        "{v}"
    );
    assert_eq!(upstream.grants_served_for("refresh_token"), 2);
    assert_eq!(upstream.reuse_detections(), 0);
    assert_eq!(
        PANICS.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no panic"
    );
    drop(cut);
    schema.drop_schema().await.unwrap();
}
