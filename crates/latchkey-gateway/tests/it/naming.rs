//! The per-server `unprefixed` naming setting of `/mcp` (issue 20), against two
//! scripted upstream servers that offer the same tool, prompt and resource names:
//! prefixes by default; one server unprefixed keeps its own names and URIs (templates
//! included) while the other stays prefixed; both unprefixed, every clashing item is
//! left out of the listings and each use is refused with an error naming both servers;
//! the setting off again brings the prefixes back. On SQLite and PostgreSQL.

use rmcp::model::{
    ArgumentInfo, CallToolRequestParams, CompleteRequestParams, ErrorData, GetPromptRequestParams,
    ReadResourceRequestParams, Reference, ResourceContents,
};
use rmcp::service::{RunningService, ServiceError};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};

use latchkey_testkit::{AsConfig, ScriptedServer};
use latchkey_vault::KeySet;
use latchkey_vault::keyring::StaticKeys;

use super::{client, post};

const KEY: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

type Client = RunningService<RoleClient, ()>;

async fn add_server(base: &str, name: &str, upstream: &ScriptedServer, extra: Value) -> Value {
    let mut body = json!({"name": name, "url": upstream.mcp_url()});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, v) = post(&format!("{base}/v1/servers"), body).await;
    assert_eq!(status, 201, "{v}");
    let (status, d) = post(
        &format!("{base}/v1/credentials"),
        json!({
            "server_id": v["id"], "refresh_token": upstream.mint_refresh_token(),
            "token_endpoint": format!("{}/token", upstream.base), "client_id": "deposit-client",
        }),
    )
    .await;
    assert_eq!(status, 200, "{d}");
    v
}

async fn set_unprefixed(base: &str, id: &str, on: bool) {
    let r = client()
        .patch(format!("{base}/v1/servers/{id}"))
        .header("content-type", "application/json")
        .body(json!({"unprefixed": on}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["unprefixed"], on, "{v}");
}

async fn session(base: &str) -> Client {
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("{base}/mcp")).auth_header("x"),
    );
    ().serve(transport).await.unwrap()
}

fn rpc_error<T: std::fmt::Debug>(r: Result<T, ServiceError>) -> ErrorData {
    match r {
        Err(ServiceError::McpError(e)) => e,
        other => panic!("expected a JSON-RPC error, got {other:?}"),
    }
}

/// Every name of every listing, sorted: tools, prompts, resources, templates.
async fn listings(c: &Client) -> [Vec<String>; 4] {
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    [
        sorted(
            c.list_all_tools()
                .await
                .unwrap()
                .into_iter()
                .map(|t| t.name.to_string())
                .collect(),
        ),
        sorted(
            c.list_all_prompts()
                .await
                .unwrap()
                .into_iter()
                .map(|p| p.name)
                .collect(),
        ),
        sorted(
            c.list_all_resources()
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.uri)
                .collect(),
        ),
        sorted(
            c.list_all_resource_templates()
                .await
                .unwrap()
                .into_iter()
                .map(|t| t.uri_template)
                .collect(),
        ),
    ]
}

async fn echo(c: &Client, name: &str) -> Result<String, ErrorData> {
    let Value::Object(args) = json!({"text": "hi"}) else {
        unreachable!()
    };
    match c
        .call_tool(CallToolRequestParams::new(name.to_owned()).with_arguments(args))
        .await
    {
        Ok(r) => Ok(serde_json::to_value(&r).unwrap()["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned()),
        Err(ServiceError::McpError(e)) => Err(e),
        Err(other) => panic!("{other}"),
    }
}

async fn read(c: &Client, uri: &str) -> Result<(String, String), ErrorData> {
    match c.read_resource(ReadResourceRequestParams::new(uri)).await {
        Ok(r) => match &r.contents[0] {
            ResourceContents::TextResourceContents { uri, text, .. } => {
                Ok((uri.clone(), text.clone()))
            }
            other => panic!("{other:?}"),
        },
        Err(ServiceError::McpError(e)) => Err(e),
        Err(other) => panic!("{other}"),
    }
}

fn greet(name: &str) -> GetPromptRequestParams {
    let mut args = serde_json::Map::new();
    args.insert("name".into(), json!("Ann"));
    GetPromptRequestParams::new(name).with_arguments(args)
}

/// The refusal of a clashing name: invalid params naming both servers.
fn assert_clash(e: &ErrorData, a: &Value, b: &Value) {
    assert_eq!(e.code.0, -32602, "{e:?}");
    for s in [a, b] {
        let name = s["name"].as_str().unwrap();
        let id = s["id"].as_str().unwrap();
        assert!(e.message.contains(name) && e.message.contains(id), "{e:?}");
    }
    let data = e.data.clone().unwrap();
    assert_eq!(data["code"], "name_clash", "{data}");
    assert_eq!(data["servers"].as_array().unwrap().len(), 2, "{data}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprefixed_naming_on_sqlite() {
    unprefixed_naming(super::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprefixed_naming_on_postgres() {
    unprefixed_naming(super::Backend::Postgres).await;
}

async fn unprefixed_naming(backend: super::Backend) {
    let logs = latchkey_testkit::logs::capture();
    let alpha = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let beta = ScriptedServer::start(AsConfig::default()).await.unwrap();
    alpha.offer_primitives(Some("alpha"));
    beta.offer_primitives(Some("beta"));
    let cfg = super::loopback_config();
    let keys = StaticKeys(Some(KeySet::parse(KEY).unwrap()));
    let (base, dir, _store, schema) = super::start_on(backend, &cfg, keys).await;
    let a = add_server(&base, "Alpha", &alpha, json!({"unprefixed": true})).await;
    assert_eq!(a["unprefixed"], true, "{a}");
    let b = add_server(&base, "Beta", &beta, json!({})).await;
    assert_eq!(b["unprefixed"], false, "prefixes are the default: {b}");
    let c = session(&base).await;

    // Alpha under its own names, Beta prefixed.
    let [tools, prompts, resources, templates] = listings(&c).await;
    assert_eq!(
        tools,
        ["add", "beta__add", "beta__echo", "echo", "latchkey_connect"]
    );
    assert_eq!(prompts, ["beta__greet", "greet"]);
    assert_eq!(
        resources,
        ["file:///notes.txt", "latchkey://beta/file:///notes.txt"]
    );
    assert_eq!(
        templates,
        ["file:///docs/{name}", "latchkey://beta/file:///docs/{name}"]
    );
    let before = alpha.requests("/mcp").len();
    assert_eq!(echo(&c, "echo").await.unwrap(), "hi");
    let sent = &alpha.requests("/mcp")[before..];
    assert_eq!(sent.len(), 1, "one upstream request in steady state");
    assert_eq!(sent[0].body["name"], "echo");
    assert_eq!(echo(&c, "beta__echo").await.unwrap(), "hi");
    let r = c.get_prompt(greet("greet")).await.unwrap();
    let message = serde_json::to_value(&r.messages[0]).unwrap();
    assert_eq!(message["content"]["text"], "Hello, Ann, from alpha");
    // The URI as the server has it, listed or expanded from its template.
    let (uri, text) = read(&c, "file:///notes.txt").await.unwrap();
    assert_eq!(
        (uri.as_str(), text.as_str()),
        ("file:///notes.txt", "notes of alpha")
    );
    let (uri, text) = read(&c, "file:///docs/read%20me").await.unwrap();
    assert_eq!(
        (uri.as_str(), text.as_str()),
        ("file:///docs/read%20me", "doc read%20me of alpha")
    );
    let (_, text) = read(&c, "latchkey://beta/file:///notes.txt").await.unwrap();
    assert_eq!(text, "notes of beta");
    let values = c
        .complete(CompleteRequestParams::new(
            Reference::for_prompt("greet"),
            ArgumentInfo::new("name", "al"),
        ))
        .await
        .unwrap()
        .completion
        .values;
    assert_eq!(values, ["alice@alpha", "albert@alpha"]);
    // With one unprefixed server, a name no prefixed server owns goes to it as it is,
    // listed or not: it answers as it would directly (transparent).
    let before = alpha.requests("/mcp").len();
    let answer = echo(&c, "alpha__nope").await;
    let sent = &alpha.requests("/mcp")[before..];
    assert_eq!(sent.len(), 1, "{answer:?}");
    assert_eq!(sent[0].body["name"], "alpha__nope");
    c.cancel().await.unwrap();

    // Both unprefixed: every name they share is left out, and refused naming both. A
    // new session that did not list first gets the same answers.
    set_unprefixed(&base, b["id"].as_str().unwrap(), true).await;
    let c = session(&base).await;
    let e = echo(&c, "echo").await.unwrap_err();
    assert_clash(&e, &a, &b);
    let [tools, prompts, resources, templates] = listings(&c).await;
    assert_eq!(tools, ["latchkey_connect"]);
    assert!(prompts.is_empty() && resources.is_empty() && templates.is_empty());
    assert_clash(&echo(&c, "add").await.unwrap_err(), &a, &b);
    assert_clash(&rpc_error(c.get_prompt(greet("greet")).await), &a, &b);
    assert_clash(&read(&c, "file:///notes.txt").await.unwrap_err(), &a, &b);
    assert_clash(&read(&c, "file:///docs/x").await.unwrap_err(), &a, &b);
    assert_clash(
        &rpc_error(
            c.complete(CompleteRequestParams::new(
                Reference::for_prompt("greet"),
                ArgumentInfo::new("name", "al"),
            ))
            .await,
        ),
        &a,
        &b,
    );
    let e = echo(&c, "nope").await.unwrap_err();
    assert_eq!(e.code.0, -32602, "{e:?}");
    c.cancel().await.unwrap();
    let text = logs.text();
    assert!(
        text.contains("mcp.federated.name_clash"),
        "clashes are logged"
    );

    // The setting off again: prefixes for both.
    for s in [&a, &b] {
        set_unprefixed(&base, s["id"].as_str().unwrap(), false).await;
    }
    let c = session(&base).await;
    let [tools, prompts, ..] = listings(&c).await;
    assert_eq!(
        tools,
        [
            "alpha__add",
            "alpha__echo",
            "beta__add",
            "beta__echo",
            "latchkey_connect"
        ]
    );
    assert_eq!(prompts, ["alpha__greet", "beta__greet"]);
    assert_eq!(echo(&c, "alpha__echo").await.unwrap(), "hi");
    assert_eq!(echo(&c, "echo").await.unwrap_err().code.0, -32602);
    c.cancel().await.unwrap();
    super::cleanup(dir, schema).await;
}

/// One unprefixed server that is not connected: its tools are not listed, and a call
/// of one of its names (none of Latchkey's tables knows it) still reaches the consent
/// elicitation of that server, as a prefixed name would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_unprefixed_server_not_connected_asks_for_consent() {
    let alpha = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let cfg = super::loopback_config();
    let keys = StaticKeys(Some(KeySet::parse(KEY).unwrap()));
    let (base, dir, _store, schema) = super::start_on(super::Backend::Sqlite, &cfg, keys).await;
    let (status, v) = post(
        &format!("{base}/v1/servers"),
        json!({"name": "Alpha", "url": alpha.mcp_url(), "unprefixed": true}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let c = session(&base).await;
    let [tools, ..] = listings(&c).await;
    assert_eq!(tools, ["latchkey_connect"]);
    let e = echo(&c, "echo").await.unwrap_err();
    assert_eq!(e.code.0, -32042, "{e:?}");
    let url = e.data.unwrap()["elicitations"][0]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        url.starts_with(&format!("{}/authorize?", alpha.base)),
        "{url}"
    );
    let e = read(&c, "file:///notes.txt").await.unwrap_err();
    assert_eq!(e.code.0, -32042, "{e:?}");
    c.cancel().await.unwrap();
    super::cleanup(dir, schema).await;
}
