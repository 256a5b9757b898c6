//! Item 14: the mix-up defence does not depend on the authorization server. One that
//! does not send `iss` (RFC 9207) gets a redirect URI of its own, and a callback
//! completes a flow only on the redirect URI that flow was started with.

use latchkey_testkit::{AsConfig, ScriptedServer};
use latchkey_vault::KeySet;
use latchkey_vault::keyring::StaticKeys;
use serde_json::{Value, json};

use crate::tools::KEY;

fn param(url: &str, name: &str) -> String {
    url.split_once('?')
        .unwrap()
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap()
        .to_owned()
}

fn decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .unwrap()
        .1
        .into_owned()
}

/// Adds a server on `up` and starts a flow; the authorization URL.
async fn start(base: &str, name: &str, up: &ScriptedServer) -> (String, String) {
    let (status, v) = crate::post(
        &format!("{base}/v1/servers"),
        json!({"name": name, "url": up.mcp_url()}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let (status, v) =
        crate::post(&format!("{base}/v1/oauth/start"), json!({"server_id": id})).await;
    assert_eq!(status, 200, "{v}");
    (id, v["authorization_url"].as_str().unwrap().to_owned())
}

/// Consent at the AS; the callback URL it redirects to.
async fn consent(url: &str) -> String {
    let r = crate::client().get(url).send().await.unwrap();
    assert_eq!(r.status(), 302);
    r.headers()["location"].to_str().unwrap().to_owned()
}

async fn get(url: &str) -> (u16, String) {
    let r = crate::client().get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn status_of(base: &str, id: &str) -> Value {
    crate::request(
        reqwest::Method::GET,
        &format!("{base}/v1/oauth/status/{id}"),
        None,
        None,
    )
    .await
    .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_each_as_without_iss_has_its_own_redirect_uri() {
    let no_iss = || AsConfig {
        iss_supported: false,
        ..AsConfig::default()
    };
    let honest = ScriptedServer::start(no_iss()).await.unwrap();
    let attacker = ScriptedServer::start(no_iss()).await.unwrap();
    let with_iss = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let keys = StaticKeys(Some(KeySet::parse(KEY).unwrap()));
    let (base, dir) = crate::start(&crate::loopback_config(), keys).await;

    let (h_id, h_url) = start(&base, "honest", &honest).await;
    let (a_id, a_url) = start(&base, "attacker", &attacker).await;
    let (i_id, i_url) = start(&base, "with-iss", &with_iss).await;
    let h_redirect = decode(&param(&h_url, "redirect_uri"));
    let a_redirect = decode(&param(&a_url, "redirect_uri"));
    let i_redirect = decode(&param(&i_url, "redirect_uri"));
    // An AS that sends `iss` shares the callback; the others get one each.
    assert_eq!(i_redirect, format!("{base}/v1/oauth/callback"));
    assert!(
        h_redirect.starts_with(&format!("{base}/v1/oauth/callback/")),
        "{h_redirect}"
    );
    assert!(
        a_redirect.starts_with(&format!("{base}/v1/oauth/callback/")),
        "{a_redirect}"
    );
    assert_ne!(h_redirect, a_redirect);
    assert_eq!(
        h_redirect,
        format!(
            "{base}/v1/oauth/callback/{}",
            latchkey_gateway::flows::issuer_key(&honest.base)
        )
    );

    // The honest AS's answer (its code and the flow's state) delivered on the attacker
    // AS's redirect URI, or on the shared one, completes nothing; the state is burnt.
    let h_callback = consent(&h_url).await;
    let query = h_callback.split_once('?').unwrap().1.to_owned();
    let (status, page) = get(&format!("{a_redirect}?{query}")).await;
    assert_eq!(status, 400, "{page}");
    assert!(
        honest.requests("/token").is_empty(),
        "no code was exchanged"
    );
    assert!(
        attacker.requests("/token").is_empty(),
        "no code was exchanged"
    );
    assert_eq!(status_of(&base, &h_id).await["has_token"], false);
    // Burnt: even the right path no longer completes it.
    let (status, _) = get(&h_callback).await;
    assert_eq!(status, 400);

    // The same flow again, answered on the shared path: refused too.
    let (status, v) = crate::post(
        &format!("{base}/v1/oauth/start"),
        json!({"server_id": h_id, "force": true}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let h_url = v["authorization_url"].as_str().unwrap().to_owned();
    let h_callback = consent(&h_url).await;
    let query = h_callback.split_once('?').unwrap().1.to_owned();
    let (status, _) = get(&format!("{base}/v1/oauth/callback?{query}")).await;
    assert_eq!(status, 400);
    assert!(honest.requests("/token").is_empty());

    // Each flow completes on its own redirect URI.
    for (id, up) in [(&h_id, &honest), (&a_id, &attacker)] {
        let (status, v) = crate::post(
            &format!("{base}/v1/oauth/start"),
            json!({"server_id": id, "force": true}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let cb = consent(v["authorization_url"].as_str().unwrap()).await;
        let (status, page) = get(&cb).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(up.requests("/token").len(), 1);
        assert_eq!(status_of(&base, id).await["has_token"], true);
    }
    let cb = consent(&i_url).await;
    assert_eq!(get(&cb).await.0, 200);
    assert_eq!(status_of(&base, &i_id).await["has_token"], true);
    let _ = std::fs::remove_dir_all(dir);
}
