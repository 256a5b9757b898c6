//! Issue 15, items 3, 4, 6 and 7: credentials go only where they came from.
//! * A pre-registered client secret goes to its own issuer only; discovery naming
//!   another authorization server stops the flow with `issuer_mismatch`, nothing sent.
//! * A token is revoked at the revocation endpoint recorded with it, never at one
//!   discovered at disconnect time; without one it is forgotten locally, and that is
//!   said.
//! * A credential row edited (token endpoint) or moved (another user's slot, another
//!   tenant) in the database serves nothing and sends nothing.

use latchkey_core::Secret;
use latchkey_testkit::{AsConfig, ScriptedServer};
use latchkey_vault::keyring::StaticKeys;
use latchkey_vault::store::{CredentialRow, Slot, new_id};
use latchkey_vault::{KeySet, Keyring, Store};
use serde_json::json;

const KEY: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn keys() -> StaticKeys {
    StaticKeys(Some(KeySet::parse(KEY).unwrap()))
}

async fn scripted() -> ScriptedServer {
    ScriptedServer::start(AsConfig::default()).await.unwrap()
}

/// An OAuth server on `url` in the local tenant, with `extra` settings; its id.
async fn server(base: &str, url: &str, extra: serde_json::Value) -> (u16, serde_json::Value) {
    let mut body = json!({"name": format!("s-{}", new_id()), "url": url, "auth_type": "oauth"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    super::super::post(&format!("{base}/v1/servers"), body).await
}

async fn delete(url: &str) -> u16 {
    super::super::client()
        .delete(url)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn get(url: &str) -> (u16, serde_json::Value) {
    let r = super::super::client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(json!(null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_a_token_is_revoked_only_where_it_was_recorded() {
    let (x, y) = (scripted().await, scripted().await);
    let cfg = super::super::loopback_config();
    let (base, dir, store) = super::super::start_with_store(&cfg, keys()).await;
    // The server's metadata names Y; the token was issued by X.
    let (status, v) = server(&base, &y.mcp_url(), json!({})).await;
    assert_eq!(status, 201, "{v}");
    let sid = v["id"].as_str().unwrap().to_owned();
    let rt = x.mint_refresh_token();
    let (status, v) = super::super::post(
        &format!("{base}/v1/credentials"),
        json!({
            "server_id": sid, "refresh_token": rt, "token_endpoint": format!("{}/token", x.base),
            "client_id": "c1", "issuer": x.base, "revocation_endpoint": format!("{}/revoke", x.base),
        }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(delete(&format!("{base}/v1/credentials/{sid}")).await, 204);
    assert_eq!(
        x.revocations(),
        vec![rt.clone()],
        "revoked at its own issuer"
    );
    assert!(y.requests("/revoke").is_empty(), "Y received nothing");
    assert!(y.requests("/token").is_empty());

    // A revocation endpoint is only accepted with the issuer it belongs to.
    let (status, v) = super::super::post(
        &format!("{base}/v1/credentials"),
        json!({
            "server_id": sid, "refresh_token": "rt", "token_endpoint": format!("{}/token", x.base),
            "revocation_endpoint": format!("{}/revoke", x.base),
        }),
    )
    .await;
    assert_eq!(
        (status, v["fields"][0]["field"].as_str()),
        (400, Some("revocation_endpoint"))
    );

    // Without a recorded endpoint: forgotten locally, nothing sent anywhere, and said.
    let rt2 = x.mint_refresh_token();
    let (status, _) = super::super::post(
        &format!("{base}/v1/credentials"),
        json!({"server_id": sid, "refresh_token": rt2, "token_endpoint": format!("{}/token", x.base), "issuer": x.base}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(delete(&format!("{base}/v1/credentials/{sid}")).await, 204);
    assert_eq!(x.revocations().len(), 1, "X received nothing more");
    assert!(y.requests("/revoke").is_empty(), "Y received nothing");
    let audit = store.audit_log("default").await.unwrap();
    assert!(
        audit.iter().any(|e| e.action == "token.not_revoked"
            && e.detail.as_deref()
                == Some(
                    "not revoked at the authorization server: no revocation endpoint recorded"
                )),
        "{audit:?}"
    );

    // A purge after the server's URL moves to another authorization server: the old
    // token goes back to its own issuer only.
    let rt3 = x.mint_refresh_token();
    let (status, _) = super::super::post(
        &format!("{base}/v1/credentials"),
        json!({
            "server_id": sid, "refresh_token": rt3, "token_endpoint": format!("{}/token", x.base),
            "client_id": "c1", "issuer": x.base, "revocation_endpoint": format!("{}/revoke", x.base),
        }),
    )
    .await;
    assert_eq!(status, 200);
    let z = scripted().await;
    let r = super::super::client()
        .patch(format!("{base}/v1/servers/{sid}"))
        .json(&json!({"url": z.mcp_url()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(x.revocations(), vec![rt, rt3]);
    assert!(y.requests("/revoke").is_empty() && z.requests("/revoke").is_empty());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_a_preregistered_secret_goes_only_to_its_issuer() {
    let (x, y) = (scripted().await, scripted().await);
    let cfg = super::super::loopback_config();
    let (base, dir, _store) = super::super::start_with_store(&cfg, keys()).await;
    // A secret needs its issuer.
    let (status, v) = server(
        &base,
        &y.mcp_url(),
        json!({"client_id": "pre", "client_secret": "pre-SECRET"}),
    )
    .await;
    assert_eq!(
        (status, v["fields"][0]["field"].as_str()),
        (400, Some("issuer")),
        "{v}"
    );
    for grant in ["client_credentials", "authorization_code"] {
        // Bound to X, while the server's metadata names Y.
        let (status, v) = server(
            &base,
            &y.mcp_url(),
            json!({"client_id": "pre", "client_secret": "pre-SECRET", "issuer": x.base, "grant_type": grant, "token_scope": "shared"}),
        )
        .await;
        assert_eq!(status, 201, "{v}");
        let sid = v["id"].as_str().unwrap().to_owned();
        let (status, v) =
            super::super::post(&format!("{base}/v1/oauth/start"), json!({"server_id": sid})).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (422, Some("issuer_mismatch")),
            "{grant}: {v}"
        );
        let message = v["message"].as_str().unwrap();
        assert!(
            message.contains(&x.base) && message.contains(&y.base),
            "{message}"
        );
        assert!(!message.contains("pre-SECRET"));
        for path in ["/token", "/register", "/authorize"] {
            assert!(y.requests(path).is_empty(), "{grant}: Y received {path}");
        }
        assert!(x.requests("/token").is_empty());
    }
    // Bound to Y itself: the client credentials grant reaches Y.
    let (status, v) = server(
        &base,
        &y.mcp_url(),
        json!({"client_id": "pre", "client_secret": "pre-SECRET", "issuer": y.base, "grant_type": "client_credentials", "token_scope": "shared"}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let sid = v["id"].as_str().unwrap().to_owned();
    let _ = super::super::post(&format!("{base}/v1/oauth/start"), json!({"server_id": sid})).await;
    assert_eq!(y.requests("/token").len(), 1, "sent to its own issuer");
    // Changing the issuer never carries the stored secret over.
    let r = super::super::client()
        .patch(format!("{base}/v1/servers/{sid}"))
        .json(&json!({"issuer": x.base}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let _ = std::fs::remove_dir_all(dir);
}

/// A credential for `slot`, sealed correctly for it: `access` valid for an hour (or
/// expired), a refresh token, issued by `issuer` at `token_endpoint`.
fn sealed_row(
    keyring: &Keyring,
    slot: Slot,
    issuer: &ScriptedServer,
    access: Option<&str>,
    refresh: &str,
) -> CredentialRow {
    use latchkey_core::Clock as _;
    let now = i64::try_from(latchkey_core::SystemClock.now().as_secs()).unwrap();
    let mut row = CredentialRow::new(new_id(), slot, format!("{}/token", issuer.base), now);
    row.issuer = Some(issuer.base.clone());
    row.resource = Some(issuer.mcp_url());
    row.client_id = Some("c".into());
    row.auth_method = Some("none".into());
    row.scopes = Some("mcp".into());
    match access {
        Some(at) => {
            row.access_token = Some(
                keyring
                    .seal(&Secret::new(at), row.aad("access_token"))
                    .unwrap(),
            );
            row.access_expires_at = Some(now + 3600);
        }
        None => {
            row.access_token = Some(
                keyring
                    .seal(&Secret::new("at-old"), row.aad("access_token"))
                    .unwrap(),
            );
            row.access_expires_at = Some(now - 10);
        }
    }
    row.refresh_token = Some(
        keyring
            .seal(&Secret::new(refresh), row.aad("refresh_token"))
            .unwrap(),
    );
    row
}

/// The attacker's database edit: the same row (id and envelopes) put elsewhere.
async fn replace(store: &dyn Store, from: &Slot, moved: &CredentialRow) {
    store.delete_credential(from).await.unwrap();
    store.upsert_credential(moved).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_an_edited_or_moved_row_serves_nothing_and_sends_nothing() {
    let (as1, evil) = (scripted().await, scripted().await);
    let cfg = super::super::loopback_config();
    let (base, dir, store) = super::super::start_with_store(&cfg, keys()).await;
    let keyring = Keyring::new(keys());
    let (status, v) = server(&base, &as1.mcp_url(), json!({})).await;
    assert_eq!(status, 201, "{v}");
    let sid = v["id"].as_str().unwrap().to_owned();
    let tools = format!("{base}/v1/servers/{sid}/tools");
    let slot = |tenant: &str, subject: &str| Slot {
        tenant: tenant.into(),
        server: sid.clone(),
        subject: Some(subject.into()),
    };
    let mine = slot("default", "local");

    // Control, on a server of its own (the token service keeps a served token in
    // memory): a row sealed for the caller's own slot is served.
    let (_, v) = server(&base, &as1.mcp_url(), json!({})).await;
    let control = v["id"].as_str().unwrap().to_owned();
    let at = as1.mint_access_token("mcp");
    let mut own = mine.clone();
    own.server = control.clone();
    let row = sealed_row(&keyring, own, &as1, Some(&at), &as1.mint_refresh_token());
    store.upsert_credential(&row).await.unwrap();
    let (status, v) = get(&format!("{base}/v1/servers/{control}/tools")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(as1.last_mcp_authorization(), Some(format!("Bearer {at}")));

    // The token endpoint edited to the attacker's: the refresh token is not sent.
    let row = sealed_row(
        &keyring,
        mine.clone(),
        &as1,
        None,
        &as1.mint_refresh_token(),
    );
    store.upsert_credential(&row).await.unwrap();
    let mut edited = row.clone();
    edited.token_endpoint = format!("{}/token", evil.base);
    replace(store.as_ref(), &mine, &edited).await;
    let (status, v) = get(&tools).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("needs_oauth_reauth")),
        "{v}"
    );
    assert!(
        evil.requests("/token").is_empty(),
        "the attacker's endpoint received nothing"
    );
    assert!(as1.requests("/token").is_empty());
    store.delete_credential(&mine).await.unwrap();

    // Another user's credential moved into the caller's slot: not served.
    let before = as1.mcp_requests();
    for victim in [slot("default", "victim"), slot("other-tenant", "local")] {
        let victim_at = as1.mint_access_token("mcp");
        let row = sealed_row(
            &keyring,
            victim.clone(),
            &as1,
            Some(&victim_at),
            &as1.mint_refresh_token(),
        );
        store.upsert_credential(&row).await.unwrap();
        let mut moved = row.clone();
        moved.slot = mine.clone();
        replace(store.as_ref(), &victim, &moved).await;
        let (status, v) = get(&tools).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (409, Some("needs_oauth_reauth")),
            "{victim:?}: {v}"
        );
        assert_ne!(
            as1.last_mcp_authorization(),
            Some(format!("Bearer {victim_at}"))
        );
        store.delete_credential(&mine).await.unwrap();
    }
    assert_eq!(as1.mcp_requests(), before, "the upstream was never called");
    assert!(
        as1.requests("/token").is_empty(),
        "and no refresh was tried"
    );
    let _ = std::fs::remove_dir_all(dir);
}
