//! `/v1/servers` over real HTTP, with the probe against the scripted MCP server.

use latchkey_testkit::{AsConfig, ScriptedServer};
use latchkey_vault::KeySet;
use latchkey_vault::keyring::StaticKeys;
use latchkey_vault::store::{CredentialRow, Slot, new_id};
use serde_json::{Value, json};

const KEY: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

async fn send(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value, String) {
    super::request(method, url, None, body).await
}

fn credential(server: &str) -> CredentialRow {
    let slot = Slot {
        tenant: "default".into(),
        server: server.into(),
        subject: Some("local".into()),
    };
    let mut row = CredentialRow::new(new_id(), slot, "https://as.example/token", 0);
    row.refresh_token = Some(b"envelope".to_vec());
    row
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_are_probed_validated_purged_and_never_show_secrets() {
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let cfg = super::loopback_config();
    let keys = StaticKeys(Some(KeySet::parse(KEY).unwrap()));
    let (base, dir, store) = super::start_with_store(&cfg, keys).await;
    let servers = format!("{base}/v1/servers");

    // Every problem at once, with its field.
    let (status, v, _) = send(
        reqwest::Method::POST,
        &servers,
        Some(json!({"name": "", "url": "ftp://x", "userId": "7", "token_scope": "everyone"})),
    )
    .await;
    assert_eq!(status, 400);
    let mut fields: Vec<&str> = v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, vec!["name", "token_scope", "url", "userId"]);

    // Created with no auth type: the probe finds OAuth.
    let (status, created, _) = send(
        reqwest::Method::POST,
        &servers,
        Some(
            json!({"name": "scripted", "url": upstream.mcp_url(), "client_secret": "s3cret-value", "issuer": upstream.base}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["auth_type"], "oauth");
    assert_eq!(created["has_client_secret"], true);
    let id = created["id"].as_str().unwrap().to_owned();
    let one = format!("{servers}/{id}");
    let (status, _, text) = send(reqwest::Method::GET, &one, None).await;
    assert_eq!(status, 200);
    assert!(!text.contains("s3cret-value"), "secrets are never returned");
    let (_, listed, text) = send(reqwest::Method::GET, &servers, None).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(!text.contains("s3cret-value"));

    // Unrelated edits purge nothing; the same secret again is no change.
    store.upsert_credential(&credential(&id)).await.unwrap();
    let slot = credential(&id).slot;
    let (status, v, _) = send(
        reqwest::Method::PATCH,
        &one,
        Some(json!({"name": "renamed", "client_secret": "s3cret-value"})),
    )
    .await;
    assert_eq!((status, v["name"].as_str()), (200, Some("renamed")));
    assert!(store.get_credential(&slot).await.unwrap().is_some());

    // A new secret changes the OAuth fingerprint: the server's tokens are purged.
    let (status, _, _) = send(
        reqwest::Method::PATCH,
        &one,
        Some(json!({"client_secret": "another"})),
    )
    .await;
    assert_eq!(status, 200);
    assert!(store.get_credential(&slot).await.unwrap().is_none());

    // A URL change re-probes (unless the type is explicit) and purges.
    store.upsert_credential(&credential(&id)).await.unwrap();
    let (status, v, _) = send(
        reqwest::Method::PATCH,
        &one,
        Some(
            json!({"url": format!("{}/elsewhere", upstream.base), "auth_type": "headers",
                    "header_names": ["X-Api-Key"]}),
        ),
    )
    .await;
    assert_eq!((status, v["auth_type"].as_str()), (200, Some("headers")));
    assert!(store.get_credential(&slot).await.unwrap().is_none());

    // Delete, then it is gone.
    let (status, _, text) = send(reqwest::Method::DELETE, &one, None).await;
    assert_eq!((status, text.as_str()), (204, ""));
    let (status, v, _) = send(reqwest::Method::GET, &one, None).await;
    assert_eq!((status, v["code"].as_str()), (404, Some("not_found")));
    let (status, _, _) = send(reqwest::Method::DELETE, &one, None).await;
    assert_eq!(status, 404);
    let actions: Vec<(String, Option<String>)> = store
        .audit_log("default")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.detail))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("server.create".into(), None),
            ("server.update".into(), None),
            // Deposited without a revocation endpoint: forgotten locally, and said.
            ("token.not_revoked".into(), Some(NOT_REVOKED.into())),
            ("server.update".into(), Some("purged 1 credentials".into())),
            ("token.not_revoked".into(), Some(NOT_REVOKED.into())),
            ("server.update".into(), Some("purged 1 credentials".into())),
            ("server.delete".into(), None),
        ]
    );
    let _ = std::fs::remove_dir_all(dir);
}

const NOT_REVOKED: &str = latchkey_gateway::revoke::NOT_REVOKED;

#[tokio::test]
async fn a_secret_without_a_key_is_the_typed_503() {
    let cfg = super::loopback_config();
    let (base, dir) = super::start(&cfg, StaticKeys(None)).await;
    let (status, v, _) = send(
        reqwest::Method::POST,
        &format!("{base}/v1/servers"),
        Some(json!({"name": "n", "url": "http://127.0.0.1:9/mcp", "auth_type": "oauth", "client_secret": "x", "issuer": "http://127.0.0.1:9"})),
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (503, Some("encryption_key_missing"))
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 17: server names are unique in a tenant; a duplicate, on create or rename, is a
/// 409 naming the server that has the name.
#[tokio::test]
async fn server_names_are_unique_in_a_tenant() {
    let (base, dir) = super::start(
        &super::loopback_config(),
        StaticKeys(Some(KeySet::parse(KEY).unwrap())),
    )
    .await;
    let servers = format!("{base}/v1/servers");
    let body = |name: &str, port: u16| json!({"name": name, "url": format!("http://127.0.0.1:{port}/mcp"), "auth_type": "none"});
    let (status, first, _) = send(reqwest::Method::POST, &servers, Some(body("linear", 9))).await;
    assert_eq!(status, 201, "{first}");
    let (status, dup, _) = send(reqwest::Method::POST, &servers, Some(body("linear", 10))).await;
    assert_eq!(
        (status, dup["code"].as_str()),
        (409, Some("name_taken")),
        "{dup}"
    );
    assert_eq!(dup["server_id"], first["id"]);
    let (status, other, _) = send(reqwest::Method::POST, &servers, Some(body("github", 11))).await;
    assert_eq!(status, 201, "{other}");
    let other_id = other["id"].as_str().unwrap();
    let (status, v, _) = send(
        reqwest::Method::PATCH,
        &format!("{servers}/{other_id}"),
        Some(json!({"name": "linear"})),
    )
    .await;
    assert_eq!(
        (status, v["server_id"].as_str()),
        (409, first["id"].as_str()),
        "{v}"
    );
    // Renaming a server to its own name is no conflict.
    let (status, v, _) = send(
        reqwest::Method::PATCH,
        &format!("{servers}/{other_id}"),
        Some(json!({"name": "github"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let _ = std::fs::remove_dir_all(dir);
}
