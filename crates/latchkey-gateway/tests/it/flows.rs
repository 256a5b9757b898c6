//! The managed popup flow end to end over real HTTP against the scripted authorization
//! server: start → authorization URL → callback → credential stored; replay refused;
//! status; already authorized; a provider error; another user's shared-slot flow.

use latchkey_testkit::{AsConfig, ScriptedServer};
use latchkey_vault::keyring::StaticKeys;
use latchkey_vault::store::Slot;
use latchkey_vault::{KeySet, Keyring};
use serde_json::{Value, json};

use super::{client, post};

const KEY: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// Follows the authorization URL to the AS and returns the callback URL it redirects to.
pub(super) async fn authorize(url: &str) -> String {
    let r = client().get(url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 302);
    r.headers()["location"].to_str().unwrap().to_owned()
}

async fn get_text(url: &str) -> (u16, String, String) {
    let r = client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    (status, ct, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_popup_flow_end_to_end_on_sqlite() {
    popup_flow(super::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_popup_flow_end_to_end_on_postgres() {
    popup_flow(super::Backend::Postgres).await;
}

/// The whole flow with trace logging captured; no token, code, state or client secret
/// may appear in any log line, page or response.
async fn popup_flow(backend: super::Backend) {
    let logs = latchkey_testkit::logs::capture();
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let cfg = super::loopback_config();
    let keys = StaticKeys(Some(KeySet::parse(KEY).unwrap()));
    let (base, dir, store, schema) = super::start_on(backend, &cfg, keys.clone()).await;
    let (status, server) = post(
        &format!("{base}/v1/servers"),
        json!({"name": "scripted", "url": upstream.mcp_url()}),
    )
    .await;
    assert_eq!((status, server["auth_type"].as_str()), (201, Some("oauth")));
    let id = server["id"].as_str().unwrap().to_owned();

    let (status, started) = post(&format!("{base}/v1/oauth/start"), json!({"server_id": id})).await;
    assert_eq!(
        (status, started["status"].as_str()),
        (200, Some("redirect")),
        "{started}"
    );
    assert_eq!(started["issuer"], upstream.base);
    let auth_url = started["authorization_url"].as_str().unwrap();
    assert!(auth_url.contains("code_challenge_method=S256"));
    assert!(auth_url.contains(&format!(
        "redirect_uri={}",
        url_encode(&format!("{base}/v1/oauth/callback"))
    )));
    // DCR happened once, with our redirect URI.
    assert_eq!(upstream.requests("/register").len(), 1);

    let callback = authorize(auth_url).await;
    assert!(callback.starts_with(&format!("{base}/v1/oauth/callback?")));
    // The UI listens for the completion event.
    let mut events = client()
        .get(format!("{base}/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        events.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let (status, ct, html) = get_text(&callback).await;
    assert_eq!(status, 200, "{html}");
    assert_eq!(ct, "text/html; charset=utf-8");
    assert!(html.contains("\"ok\":true"), "{html}");
    assert!(
        html.contains("window.location.origin"),
        "posts to its own origin only"
    );
    assert!(!html.contains("postMessage(m,'*')") && !html.contains("\"*\""));

    let (name, data) = super::next_event(&mut events).await;
    assert_eq!(name, "mcp.oauth_complete", "{data}");
    assert_eq!(data["status"], "success");
    assert_eq!(data["server_id"], id.as_str());
    assert_eq!(data["initiating_user_id"], "local");

    let slot = Slot {
        tenant: "default".into(),
        server: id.clone(),
        subject: Some("local".into()),
    };
    let row = store.get_credential(&slot).await.unwrap().unwrap();
    assert_eq!(row.issuer.as_deref(), Some(upstream.base.as_str()));
    let rt = Keyring::new(keys.clone())
        .open(
            row.refresh_token.as_deref().unwrap(),
            row.aad("refresh_token"),
        )
        .unwrap();
    assert!(!rt.expose().is_empty());
    assert!(!html.contains(rt.expose()), "no token in the page");
    assert_eq!(upstream.requests("/token").len(), 1);

    // The state is burned: a replay is refused without a second exchange.
    let (status, _, html) = get_text(&callback).await;
    assert_eq!(status, 400);
    assert!(html.contains("\"reason\":\"invalid_state\""));
    assert_eq!(upstream.requests("/token").len(), 1);

    let r = client()
        .get(format!("{base}/v1/oauth/status/{id}"))
        .send()
        .await
        .unwrap();
    let st: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(st["has_token"], true);
    assert_eq!(st["refreshable"], true);
    // The scripted AS advertises a revocation endpoint, recorded with the tokens.
    assert_eq!(st["revocable"], true);
    assert!(!st.to_string().contains(rt.expose()));

    let (status, again) = post(&format!("{base}/v1/oauth/start"), json!({"server_id": id})).await;
    assert_eq!(
        (status, again["status"].as_str()),
        (200, Some("already_authorized"))
    );
    // Reconnect: `force` starts a new flow anyway; the stored credential stays usable
    // until the new one lands (and, here, until the abandoned flow expires).
    let (status, forced) = post(
        &format!("{base}/v1/oauth/start"),
        json!({"server_id": id, "force": true}),
    )
    .await;
    assert_eq!(
        (status, forced["status"].as_str()),
        (200, Some("redirect")),
        "{forced}"
    );
    assert!(store.get_credential(&slot).await.unwrap().is_some());
    let (status, bad) = post(
        &format!("{base}/v1/oauth/start"),
        json!({"server_id": id, "force": "yes"}),
    )
    .await;
    assert_eq!(status, 400, "{bad}");

    // Disconnect revokes at the AS (refresh token, then access token), then deletes.
    let at = Keyring::new(StaticKeys(Some(KeySet::parse(KEY).unwrap())))
        .open(
            row.access_token.as_deref().unwrap(),
            row.aad("access_token"),
        )
        .unwrap();
    let r = client()
        .delete(format!("{base}/v1/credentials/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        upstream.revocations(),
        vec![rt.expose().to_owned(), at.expose().to_owned()]
    );
    let revoke = &upstream.requests("/revoke")[0];
    assert_eq!(revoke.body["token_type_hint"], "refresh_token");
    assert!(store.get_credential(&slot).await.unwrap().is_none());

    // Malformed callbacks.
    let (status, _, html) = get_text(&format!("{base}/v1/oauth/callback")).await;
    assert_eq!(status, 200);
    assert!(html.contains("missing_code_or_state"));
    let (status, _, _) = get_text(&format!("{base}/v1/oauth/callback?code=x")).await;
    assert_eq!(status, 400);
    let (status, _, html) = get_text(&format!(
        "{base}/v1/oauth/callback?state=nope&error=%3Cscript%3Ealert(1)%3C/script%3E"
    ))
    .await;
    assert_eq!(status, 400);
    assert!(
        !html.contains("<script>alert"),
        "untrusted text never in markup"
    );
    // Nothing secret in the logs (the capture is process-wide, which only widens it).
    let state = callback
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("state="))
        .unwrap()
        .to_owned();
    let code = callback
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("code="))
        .unwrap()
        .to_owned();
    let dcr = store
        .get_registered_client("default", &id, &upstream.base)
        .await
        .unwrap()
        .unwrap();
    let dcr_secret = Keyring::new(keys.clone())
        .open(dcr.client_secret.as_deref().unwrap(), dcr.secret_aad())
        .unwrap();
    let text = logs.text();
    assert!(text.contains("oauth.callback"), "the capture works");
    for (what, secret) in [
        ("refresh token", rt.expose()),
        ("access token", at.expose()),
        ("state", state.as_str()),
        ("code", code.as_str()),
        ("client secret", dcr_secret.expose()),
    ] {
        assert!(!text.contains(secret), "{what} in the logs");
    }
    super::cleanup(dir, schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_error_burns_the_state_and_shows_only_its_code() {
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let cfg = super::loopback_config();
    let keys = StaticKeys(Some(KeySet::parse(KEY).unwrap()));
    let (base, dir, _store) = super::start_with_store(&cfg, keys).await;
    let (_, server) = post(
        &format!("{base}/v1/servers"),
        json!({"name": "s", "url": upstream.mcp_url(), "token_scope": "shared"}),
    )
    .await;
    let id = server["id"].as_str().unwrap().to_owned();
    let (_, started) = post(&format!("{base}/v1/oauth/start"), json!({"server_id": id})).await;
    let callback = authorize(started["authorization_url"].as_str().unwrap()).await;
    // Replace the code with a provider error carrying hostile text.
    let state = callback
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("state="))
        .unwrap()
        .to_owned();
    let iss = url_encode(&upstream.base);
    let err_url = format!(
        "{base}/v1/oauth/callback?state={state}&iss={iss}&error=access_denied&error_description=%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E"
    );
    let (status, _, html) = get_text(&err_url).await;
    assert_eq!(status, 200);
    assert!(html.contains("\"reason\":\"provider_error\""));
    assert!(html.contains("\"error\":\"access_denied\""));
    assert!(!html.contains("onerror"), "the description is never shown");
    let (status, _, html) = get_text(&err_url).await;
    assert_eq!(status, 400);
    assert!(
        html.contains("invalid_state"),
        "burned on the error path too"
    );
    assert!(upstream.requests("/token").is_empty());
    let _ = std::fs::remove_dir_all(dir);
}

fn url_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
