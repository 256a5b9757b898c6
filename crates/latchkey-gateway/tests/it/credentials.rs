//! Deposits over real HTTP: strict validation, the egress guard on the token endpoint,
//! the caller's slot, sealing, idempotent delete, the typed 503 without a key.

use latchkey_vault::keyring::StaticKeys;
use latchkey_vault::store::Slot;
use latchkey_vault::{KeySet, Keyring};
use serde_json::json;

// Raw text bodies here: the oversize case is not valid JSON.
use super::post_raw as post;

const KEY: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

async fn server(base: &str, token_scope: &str) -> String {
    let (status, v) = post(
        &format!("{base}/v1/servers"),
        &json!({"name": format!("s-{token_scope}"), "url": "http://127.0.0.1:9/mcp", "auth_type": "oauth", "token_scope": token_scope})
            .to_string(),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_is_validated_sealed_and_replaces_the_slot() {
    let cfg = super::loopback_config();
    let keys = StaticKeys(Some(KeySet::parse(KEY).unwrap()));
    let (base, dir, store) = super::start_with_store(&cfg, keys.clone()).await;
    let id = server(&base, "per_user").await;
    let url = format!("{base}/v1/credentials");

    let (status, v) = post(
        &url,
        &json!({"server_id": id, "refresh_token": "rt", "userId": "someone-else", "expires_in": 5})
            .to_string(),
    )
    .await;
    assert_eq!(status, 400);
    let fields: Vec<&str> = v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, vec!["userId", "token_endpoint", "expires_in"]);

    // The egress guard judges the token endpoint: a metadata address is never allowed.
    let (status, v) = post(
        &url,
        &json!({"server_id": id, "refresh_token": "rt", "token_endpoint": "http://169.254.169.254/token"})
            .to_string(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(v["fields"][0]["field"], "token_endpoint");

    let (status, v) = post(
        &url,
        &json!({"server_id": "nope", "refresh_token": "rt", "token_endpoint": "https://as.example/token"})
            .to_string(),
    )
    .await;
    assert_eq!((status, v["code"].as_str()), (404, Some("not_found")));

    let deposit = json!({
        "server_id": id, "refresh_token": "rt-DEPOSITED-1", "token_endpoint": "https://as.example/token",
        "client_id": "c1", "client_secret": "cs-1", "scopes": "mcp", "access_token": "at-1", "expires_in": 3600,
    });
    let (status, v) = post(&url, &deposit.to_string()).await;
    assert_eq!((status, v), (200, json!({"stored": true})));
    let slot = Slot {
        tenant: "default".into(),
        server: id.clone(),
        subject: Some("local".into()),
    };
    let row = store.get_credential(&slot).await.unwrap().unwrap();
    let keyring = Keyring::new(keys);
    let rt = keyring
        .open(
            row.refresh_token.as_deref().unwrap(),
            row.aad("refresh_token"),
        )
        .unwrap();
    assert_eq!(rt.expose(), "rt-DEPOSITED-1");
    assert_eq!(row.auth_method.as_deref(), Some("client_secret_basic"));
    assert_eq!(row.initiated_by.as_deref(), Some("local"));
    assert!(row.access_expires_at.is_some());
    // Status timestamps are RFC 3339 (R-API-7).
    let st: serde_json::Value = reqwest::get(format!("{base}/v1/oauth/status/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let want =
        latchkey_core::UnixTime::from_secs(u64::try_from(row.access_expires_at.unwrap()).unwrap())
            .to_rfc3339();
    assert_eq!(st["expires_at"], want.as_str(), "{st}");
    let at = st["expires_at"].as_str().unwrap();
    assert!(
        at.len() == 20 && at.ends_with('Z') && &at[10..11] == "T",
        "{at}"
    );
    assert!(st["updated_at"].as_str().unwrap().ends_with('Z'), "{st}");
    // Deposited without a revocation endpoint (nor an issuer to find one at): a
    // disconnect can only forget these tokens.
    assert_eq!(st["revocable"], false, "{st}");

    // A second deposit replaces the slot under a new id.
    let (status, _) = post(&url, &deposit.to_string()).await;
    assert_eq!(status, 200);
    let again = store.get_credential(&slot).await.unwrap().unwrap();
    assert_ne!(again.id, row.id);

    // Delete is idempotent and answers 204 with no body.
    for _ in 0..2 {
        let r = reqwest::Client::new()
            .delete(format!("{url}/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204);
        assert!(r.bytes().await.unwrap().is_empty());
    }
    assert!(store.get_credential(&slot).await.unwrap().is_none());

    // A shared server's slot has no subject (the local principal is an admin).
    let shared = server(&base, "shared").await;
    let (status, _) = post(
        &url,
        &json!({"server_id": shared, "refresh_token": "rt", "token_endpoint": "https://as.example/token"})
            .to_string(),
    )
    .await;
    assert_eq!(status, 200);
    let shared_slot = Slot {
        tenant: "default".into(),
        server: shared,
        subject: None,
    };
    assert!(store.get_credential(&shared_slot).await.unwrap().is_some());

    // Oversized bodies are refused before parsing.
    let (status, _) = post(&url, &format!("\"{}\"", "x".repeat(70 * 1024))).await;
    assert_eq!(status, 413);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_deposit_without_a_key_is_the_typed_503() {
    let cfg = super::loopback_config();
    let (base, dir) = super::start(&cfg, StaticKeys(None)).await;
    let id = server(&base, "per_user").await;
    let (status, v) = post(
        &format!("{base}/v1/credentials"),
        &json!({"server_id": id, "refresh_token": "rt", "token_endpoint": "https://as.example/token"})
            .to_string(),
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (503, Some("encryption_key_missing"))
    );
    let _ = std::fs::remove_dir_all(dir);
}
