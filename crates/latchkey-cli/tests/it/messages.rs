//! Issue 17: what a newcomer reads when something is not right. Each message is
//! asserted as printed, with its exit code.

use latchkey_testkit::{AsConfig, TokenFault};
use serde_json::Value;

use super::commands::{Env, assert_fails, connect_via_api, stderr};

/// The setting that lets servers on this machine be used, as every refusal names it.
const LOOPBACK_HINT: &str = "set allow_insecure_loopback = true in the configuration file or LATCHKEY_ALLOW_INSECURE_LOOPBACK=true";

/// `http://localhost…` (or any loopback URL) while the loopback relaxation is off: the
/// API's field error and the CLI's message name the setting (exit 65), on add and on
/// edit; a URL the relaxation would not help gets no such hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_url_names_the_setting_that_allows_it() {
    let env = Env::start_with(
        AsConfig::default(),
        &[("LATCHKEY_ALLOW_INSECURE_LOOPBACK", "false")],
    )
    .await;
    let local = env.upstream.mcp_url();
    assert!(local.starts_with("http://localhost:"), "{local}");
    let out = env.run(&["servers", "add", "local", &local]).await;
    assert_fails(&out, 65, "url: scheme \"http\" is not allowed: ");
    assert_fails(&out, 65, LOOPBACK_HINT);
    for url in ["http://127.0.0.1:9/mcp", "https://[::1]:9/mcp"] {
        let out = env.run(&["servers", "add", "local", url]).await;
        assert_fails(&out, 65, LOOPBACK_HINT);
    }

    // The API's own words (what the web UI shows).
    let r = reqwest::Client::new()
        .post(format!("{}/v1/servers", env.base()))
        .header("content-type", "application/json")
        .body(serde_json::json!({"name": "local", "url": local}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v["fields"][0]["field"], "url", "{v}");
    let said = v["fields"][0]["message"].as_str().unwrap();
    assert!(
        said.contains(LOOPBACK_HINT) && said.contains("restart `latchkey serve`"),
        "{said}"
    );

    // On edit too; a server elsewhere is added as the user insists.
    let out = env
        .run(&[
            "servers",
            "add",
            "remote",
            "https://mcp.example/mcp",
            "--auth-type",
            "none",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env
        .run(&["servers", "edit", "remote", "--new-url", &local])
        .await;
    assert_fails(&out, 65, LOOPBACK_HINT);
    // Plain http to another host: the setting would not help, so it is not named.
    let out = env
        .run(&["servers", "add", "plain", "http://mcp.example/mcp"])
        .await;
    assert_fails(&out, 65, "url: ");
    assert!(
        !stderr(&out).contains("allow_insecure_loopback"),
        "{}",
        stderr(&out)
    );
}

/// A server whose credential the authorization server refused says it needs to be
/// reconnected (not "not connected yet"), by its name, with the command that does it
/// (exit 75); a never-connected one says "not connected yet".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_connected_yet_and_needs_reconnecting_are_told_apart() {
    let env = Env::start().await;
    // Adding an OAuth server says how to connect it, by its name (shell-quoted).
    let out = env
        .run(&["servers", "add", "My Docs", &env.upstream.mcp_url()])
        .await;
    assert!(
        super::commands::stdout(&out)
            .ends_with("Connect to it with `latchkey connect 'My Docs'`.\n"),
        "{}",
        super::commands::stdout(&out)
    );
    let id = env.add_server("docs").await;
    let out = env.run(&["tools", "list", "docs"]).await;
    assert_fails(
        &out,
        75,
        "latchkey: docs is not connected yet: connect it with `latchkey connect docs` or in Latchkey's web UI",
    );
    assert!(!stderr(&out).contains(&id), "the name, not the id");

    connect_via_api(&env.base(), &id).await;
    let out = env.run(&["tools", "list", "docs"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    // The authorization server forgets the grant: the refresh is refused.
    env.upstream.expire_access_tokens();
    env.upstream.set_token_fault(TokenFault::OAuthError {
        status: 400,
        error: "invalid_grant".into(),
    });
    let out = env.run(&["tools", "list", "docs"]).await;
    assert_fails(
        &out,
        75,
        "latchkey: docs needs to be reconnected: its authorization server no longer accepts the stored authorization; reconnect it with `latchkey connect docs --force` or in Latchkey's web UI",
    );
    assert!(
        !stderr(&out).contains("not connected yet"),
        "{}",
        stderr(&out)
    );
    // And so it stays (the credential is marked, never sent again).
    let out = env
        .run(&["tools", "call", "docs", "echo", "--arg", "text=x"])
        .await;
    assert_fails(&out, 75, "docs needs to be reconnected");
}

/// `serve --help` lists every setting with its TOML key, environment variable and
/// default.
#[test]
fn serve_help_lists_the_settings() {
    let out = super::latchkey(&["serve", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for s in latchkey_gateway::config::SETTINGS {
        if let Some(env) = s.env {
            assert!(help.contains(env), "{env} missing: {help}");
        }
        if let Some(key) = s.toml {
            assert!(help.contains(key), "{key} missing: {help}");
        }
        assert!(help.contains(s.meaning), "{}: {help}", s.meaning);
    }
    assert!(
        help.contains(
            "allow_insecure_loopback | LATCHKEY_ALLOW_INSECURE_LOOPBACK  [default: false]"
        ),
        "{help}"
    );
    // The short help stays short.
    let out = super::latchkey(&["serve", "-h"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("LATCHKEY_JWT_ISSUER"));
}

/// Every command's help starts with what it does, in a sentence a newcomer can read.
#[test]
fn every_command_says_what_it_does() {
    for cmd in [
        vec!["serve"],
        vec!["servers"],
        vec!["servers", "add"],
        vec!["servers", "list"],
        vec!["servers", "show"],
        vec!["servers", "edit"],
        vec!["servers", "rm"],
        vec!["connect"],
        vec!["disconnect"],
        vec!["tools"],
        vec!["tools", "list"],
        vec!["tools", "call"],
        vec!["stdio"],
        vec!["mcp-config"],
        vec!["doctor"],
        vec!["keys"],
        vec!["keys", "add"],
        vec!["keys", "rotate"],
        vec!["completions"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let out = super::latchkey(&args);
        assert!(out.status.success(), "{cmd:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        let first = help.lines().next().unwrap_or_default();
        assert!(
            first.split_whitespace().count() >= 3
                && first.chars().next().is_some_and(char::is_uppercase),
            "{cmd:?}: {first:?}"
        );
        assert!(!help.contains("binary"), "{cmd:?}: {help}");
    }
}

/// A loopback server added while the relaxation was on, used after a restart without
/// it: `connect`, `tools list` and `tools call` are refused before anything is sent
/// (exit 65), naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_a_loopback_server_names_the_setting_after_a_restart() {
    use super::commands::{json_of, run_with};
    use super::serve;
    let upstream = latchkey_testkit::ScriptedServer::start(AsConfig::default())
        .await
        .unwrap();
    let dir = super::keys::TempDir::new();
    let start = |relaxed: &'static str| {
        let mut c = serve::command(&dir.0);
        c.env("LATCHKEY_ALLOW_INSECURE_LOOPBACK", relaxed)
            .stderr(std::process::Stdio::null());
        tokio::task::spawn_blocking(move || serve::start(c))
    };
    let first = start("true").await.unwrap();
    let added = json_of(
        &run_with(
            &first.base,
            &["servers", "add", "local", &upstream.mcp_url(), "--json"],
            None,
            &[],
        )
        .await,
    );
    assert_eq!(added["auth_type"], "oauth");
    drop(first);
    let second = start("false").await.unwrap();
    let out = run_with(
        &second.base,
        &["connect", "local", "--no-browser"],
        None,
        &[],
    )
    .await;
    assert_fails(&out, 65, "the server's URL cannot be reached: ");
    assert_fails(&out, 65, LOOPBACK_HINT);
    // Its tools likewise (not "not connected yet": connecting would not help), and a
    // tool call.
    for args in [
        &["tools", "list", "local"][..],
        &["tools", "call", "local", "echo", "--arg", "text=hi"][..],
    ] {
        let out = run_with(&second.base, args, None, &[]).await;
        assert_fails(&out, 65, "server_id: the server's URL cannot be reached: ");
        assert_fails(&out, 65, LOOPBACK_HINT);
        assert_fails(&out, 65, "restart `latchkey serve`");
    }
    assert!(
        upstream.requests("/mcp").len() == 1
            && upstream
                .requests("/.well-known/oauth-protected-resource/mcp")
                .is_empty(),
        "only the probe at add time reached the server"
    );
}
