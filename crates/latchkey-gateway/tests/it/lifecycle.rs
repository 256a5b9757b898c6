//! The credential lifecycle (issue 16): a credential the authorization server refused
//! stays refused until the user consents again, on every instance, and makes no further
//! grant.

use std::sync::Arc;

use latchkey_core::SystemClock;
use latchkey_testkit::{AsConfig, ScriptedServer};
use latchkey_vault::keyring::StaticKeys;
use latchkey_vault::store::Slot;
use latchkey_vault::{KeySet, Keyring, Store};
use serde_json::{Value, json};

use super::{client, post};

const KEY: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn keys() -> StaticKeys {
    StaticKeys(Some(KeySet::parse(KEY).unwrap()))
}

/// The local user's slot of `server`.
fn slot(server: &str) -> Slot {
    Slot {
        tenant: "default".into(),
        server: server.into(),
        subject: Some("local".into()),
    }
}

/// `POST /v1/oauth/start` (with `force` or not), the consent at the scripted AS and
/// the callback: the slot connected through a user's consent.
async fn consent_with(base: &str, id: &str, force: bool) {
    let (status, started) = post(
        &format!("{base}/v1/oauth/start"),
        json!({"server_id": id, "force": force}),
    )
    .await;
    assert_eq!(
        (status, started["status"].as_str()),
        (200, Some("redirect")),
        "{started}"
    );
    let callback = super::flows::authorize(started["authorization_url"].as_str().unwrap()).await;
    let r = client().get(&callback).send().await.unwrap();
    let status = r.status().as_u16();
    let html = r.text().await.unwrap();
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("\"ok\":true"), "{html}");
}

/// [`consent_with`] without `force`.
async fn consent(base: &str, id: &str) {
    consent_with(base, id, false).await;
}

/// A tool call; status and body.
async fn call(base: &str, id: &str) -> (u16, Value) {
    post(
        &format!("{base}/v1/servers/{id}/tools/echo/call"),
        json!({"text": "hi"}),
    )
    .await
}

/// Refresh grants the AS received so far.
fn refresh_grants(upstream: &ScriptedServer) -> usize {
    upstream
        .requests("/token")
        .iter()
        .filter(|r| r.body.get("grant_type").map(String::as_str) == Some("refresh_token"))
        .count()
}

/// The AS revokes the slot's refresh-token family (RFC 7009 at its own endpoint).
async fn revoke_at_the_as(upstream: &ScriptedServer, store: &Arc<dyn Store>, slot: &Slot) {
    let row = store.get_credential(slot).await.unwrap().unwrap();
    let rt = Keyring::new(keys())
        .open(
            row.refresh_token.as_deref().unwrap(),
            row.aad("refresh_token"),
        )
        .unwrap();
    let r = client()
        .post(format!("{}/revoke", upstream.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", rt.expose()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_credential_stays_dead_until_consent_on_sqlite() {
    dead_until_consent(super::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_credential_stays_dead_until_consent_on_postgres() {
    dead_until_consent(super::Backend::Postgres).await;
}

/// Connected through consent; the AS revokes the refresh-token family and its access
/// tokens stop working. Seven calls make exactly one (refused) grant and each answers
/// the typed 409; on PostgreSQL a second instance on the same schema makes none either.
/// `/v1/oauth/start` without `force` then starts a new flow (not `already_authorized`),
/// and once the user consents the calls work again.
async fn dead_until_consent(backend: super::Backend) {
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let (base, dir, store, schema) =
        super::start_on(backend, &super::loopback_config(), keys()).await;
    let (status, server) = post(
        &format!("{base}/v1/servers"),
        json!({"name": "scripted", "url": upstream.mcp_url()}),
    )
    .await;
    assert_eq!(status, 201, "{server}");
    let id = server["id"].as_str().unwrap().to_owned();
    consent(&base, &id).await;
    let (status, v) = call(&base, &id).await;
    assert_eq!(status, 200, "{v}");

    // A second instance on the same PostgreSQL schema, its cache warm.
    let peer = match &schema {
        Some(schema) => {
            let store = latchkey_vault::store::DatabaseUrl::parse(&schema.url)
                .unwrap()
                .open()
                .await
                .unwrap();
            let peer = super::serve(
                |b| {
                    let mut cfg = super::loopback_config();
                    cfg.public_url = b.to_owned();
                    cfg
                },
                store,
                keys(),
                Arc::new(SystemClock),
            )
            .await;
            let (status, v) = call(&peer, &id).await;
            assert_eq!(status, 200, "{v}");
            Some(peer)
        }
        None => None,
    };

    revoke_at_the_as(&upstream, &store, &slot(&id)).await;
    upstream.expire_access_tokens();
    let before = refresh_grants(&upstream);
    for i in 0..7 {
        let (status, v) = call(&base, &id).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (409, Some("needs_oauth_reauth")),
            "call {i}: {v}"
        );
    }
    assert_eq!(
        refresh_grants(&upstream) - before,
        1,
        "one refused grant, then none"
    );
    let row = store.get_credential(&slot(&id)).await.unwrap().unwrap();
    assert_eq!(row.needs_consent.as_deref(), Some("invalid_grant"));
    assert!(row.refresh_token.is_none() && row.access_token.is_none());
    if let Some(peer) = &peer {
        for _ in 0..3 {
            let (status, v) = call(peer, &id).await;
            assert_eq!(
                (status, v["code"].as_str()),
                (409, Some("needs_oauth_reauth")),
                "{v}"
            );
        }
        assert_eq!(
            refresh_grants(&upstream) - before,
            1,
            "the peer made no grant"
        );
    }
    let r = client()
        .get(format!("{base}/v1/oauth/status/{id}"))
        .send()
        .await
        .unwrap();
    let st: Value = r.json().await.unwrap();
    assert_eq!(st["needs_consent"], "invalid_grant", "{st}");

    // Connect again without `force`: a new flow, then everything works.
    consent(&base, &id).await;
    let (status, v) = call(&base, &id).await;
    assert_eq!(status, 200, "{v}");
    if let Some(peer) = &peer {
        let (status, v) = call(peer, &id).await;
        assert_eq!(status, 200, "{v}");
    }
    assert_eq!(upstream.reuse_detections(), 0);
    super::cleanup(dir, schema).await;
}

/// Issue 16, item 6: a server connected with the client credentials grant keeps
/// working past its first expiry: the token service mints a new token with the same
/// grant (exactly one), where before the slot needed a consent it cannot have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_credentials_connection_outlives_its_first_token() {
    let upstream = ScriptedServer::start(AsConfig {
        access_ttl: 2,
        ..AsConfig::default()
    })
    .await
    .unwrap();
    let (base, dir, store, schema) =
        super::start_on(super::Backend::Sqlite, &super::loopback_config(), keys()).await;
    let (status, server) = post(
        &format!("{base}/v1/servers"),
        json!({
            "name": "machine", "url": upstream.mcp_url(), "grant_type": "client_credentials",
            "client_id": "pre", "client_secret": "pre-SECRET", "issuer": upstream.base,
            "token_scope": "shared",
        }),
    )
    .await;
    assert_eq!(status, 201, "{server}");
    let id = server["id"].as_str().unwrap().to_owned();
    let (status, v) = post(&format!("{base}/v1/oauth/start"), json!({"server_id": id})).await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("completed")),
        "{v}"
    );
    let shared = Slot {
        tenant: "default".into(),
        server: id.clone(),
        subject: None,
    };
    let row = store.get_credential(&shared).await.unwrap().unwrap();
    assert_eq!(row.grant_type.as_deref(), Some("client_credentials"));
    assert!(row.refresh_token.is_none());
    let (status, v) = call(&base, &id).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(upstream.grants_served_for("client_credentials"), 1);

    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (status, v) = call(&base, &id).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = call(&base, &id).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        upstream.grants_served_for("client_credentials"),
        2,
        "one new grant at expiry"
    );
    // It can serve: a start without force has nothing to do.
    let (status, v) = post(&format!("{base}/v1/oauth/start"), json!({"server_id": id})).await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("already_authorized")),
        "{v}"
    );
    super::cleanup(dir, schema).await;
}

/// Issue 16, item 5: an authorization server that forgot Latchkey's registered client
/// (restarted with in-memory storage). A refresh refused with `invalid_client` marks
/// the slot as needing consent and drops the registration, so the next connect
/// registers afresh and works; a code exchange refused so shows Latchkey's page with
/// the reason `client_unknown` (never the AS's JSON) and drops the registration too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_client_is_registered_again() {
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let (base, dir, store, schema) =
        super::start_on(super::Backend::Sqlite, &super::loopback_config(), keys()).await;
    let (status, server) = post(
        &format!("{base}/v1/servers"),
        json!({"name": "scripted", "url": upstream.mcp_url()}),
    )
    .await;
    assert_eq!(status, 201, "{server}");
    let id = server["id"].as_str().unwrap().to_owned();
    let registered = || async {
        store
            .get_registered_client("default", &id, &upstream.base)
            .await
            .unwrap()
            .map(|c| c.client_id)
    };
    consent(&base, &id).await;
    assert_eq!(upstream.requests("/register").len(), 1);
    assert_eq!(registered().await.as_deref(), Some("dcr-client"));
    let (status, v) = call(&base, &id).await;
    assert_eq!(status, 200, "{v}");

    // The refresh: invalid_client → needs consent, registration dropped.
    upstream.forget_clients();
    upstream.expire_access_tokens();
    for _ in 0..3 {
        let (status, v) = call(&base, &id).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (409, Some("needs_oauth_reauth")),
            "{v}"
        );
    }
    assert_eq!(refresh_grants(&upstream), 1, "one refused grant");
    let row = store.get_credential(&slot(&id)).await.unwrap().unwrap();
    assert_eq!(row.needs_consent.as_deref(), Some("invalid_client"));
    assert_eq!(
        registered().await,
        None,
        "the dead registration was dropped"
    );
    consent(&base, &id).await;
    assert_eq!(upstream.requests("/register").len(), 2, "registered afresh");
    assert_eq!(registered().await.as_deref(), Some("dcr-client-1"));
    let (status, v) = call(&base, &id).await;
    assert_eq!(status, 200, "{v}");

    // The code exchange: the AS forgets the client between start and callback.
    let (status, started) = post(
        &format!("{base}/v1/oauth/start"),
        json!({"server_id": id, "force": true}),
    )
    .await;
    assert_eq!(status, 200, "{started}");
    upstream.forget_clients();
    let callback = super::flows::authorize(started["authorization_url"].as_str().unwrap()).await;
    let r = client().get(&callback).send().await.unwrap();
    let status = r.status().as_u16();
    let html = r.text().await.unwrap();
    assert_eq!(status, 502, "{html}");
    assert!(html.contains("\"reason\":\"client_unknown\""), "{html}");
    assert!(html.contains("no longer knows"), "{html}");
    assert!(
        !html.contains("invalid_client"),
        "not the AS's answer: {html}"
    );
    assert_eq!(registered().await, None);
    // The credential from before still serves; a reconnect registers afresh.
    consent_with(&base, &id, true).await;
    assert_eq!(upstream.requests("/register").len(), 3);
    assert_eq!(registered().await.as_deref(), Some("dcr-client-2"));
    let (status, v) = call(&base, &id).await;
    assert_eq!(status, 200, "{v}");
    super::cleanup(dir, schema).await;
}
