//! Issue 17, static-header servers: their values are sent to the URL they were set for
//! and to no other host, whatever the server row says meanwhile.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::headers::{API_KEY, api_key_server, fed_call, keys, received_values};
use crate::proxy::{call, rpc};

/// The server row moves to another host behind Latchkey's back (a change no purge has
/// reached: written straight into the store, announced to nobody). Values cached in
/// memory and values read from the database are both refused on every call path, and
/// the other host receives no request at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_header_values_never_reach_another_host() {
    let home = api_key_server(&[API_KEY]).await;
    // The other host accepts anything it is sent: it would answer, so only Latchkey
    // stands between it and the value.
    let other = latchkey_testkit::ScriptedServer::start(latchkey_testkit::AsConfig::default())
        .await
        .unwrap();
    other.require_header(Some(("X-Api-Key", &[API_KEY])));
    let (base, dir, store) = crate::start_with_store(&crate::loopback_config(), keys()).await;
    let (status, v) = crate::post(
        &format!("{base}/v1/servers"),
        json!({"name": "api", "url": home.mcp_url(), "header_names": ["X-Api-Key"],
               "header_values": {"X-Api-Key": API_KEY}}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let tools = format!("{base}/v1/servers/{id}/tools");
    // Called once: the opened values are in memory.
    let (status, _, _) = crate::request(Method::GET, &tools, None, None).await;
    assert_eq!(status, 200);

    let mut row = store.get_server("default", &id).await.unwrap().unwrap();
    row.url = other.mcp_url();
    assert!(store.update_server(&row, 0).await.unwrap());
    // Past the server cache's lifetime: the call paths read the moved row.
    tokio::time::sleep(latchkey_gateway::server_cache::TTL + Duration::from_millis(200)).await;

    // From memory, then (forgotten after the first refusal) from the database.
    for _ in 0..2 {
        let (status, v, _) = crate::request(Method::GET, &tools, None, None).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (409, Some("headers_not_set")),
            "{v}"
        );
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("set for another URL"),
            "{v}"
        );
    }
    let (status, _, v) = rpc(
        &crate::client(),
        &format!("{base}/mcp/{id}"),
        None,
        call(1, "echo", json!({"text": "x"})),
    )
    .await;
    assert_eq!(
        (status, v["error"]["data"]["code"].as_str()),
        (200, Some("headers_not_set"))
    );
    let v = fed_call(
        &format!("{base}/mcp"),
        "tools/call",
        json!({"name": "api__echo", "arguments": {"text": "x"}}),
    )
    .await;
    assert!(v.to_string().contains("set for another URL"), "{v}");

    assert_eq!(other.mcp_requests(), 0, "the other host was sent a request");
    assert!(!received_values(&other).iter().any(|v| v.contains(API_KEY)));
    let _ = std::fs::remove_dir_all(dir);
}
