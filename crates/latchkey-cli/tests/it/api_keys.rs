//! `latchkey api-keys create|list|revoke` and `mcp-config --create-key` (issue 19),
//! against a real `latchkey serve` in jwt mode with a minted JWT: the key is printed
//! once and alone (so `KEY=$(…)` captures it), works as `--token`, is listed by its
//! prefix only, and is refused (exit 77) once revoked; a lifetime past the maximum is
//! the server's 400 in the flag's words.

use serde_json::{Value, json};

use super::commands::{Env, assert_fails, json_of, run_with, stderr, stdout};
use latchkey_testkit::AsConfig;

const SECRET: &str = "a-shared-secret-of-at-least-32-bytes";
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "https://latchkey.example/mcp";

/// A Latchkey in jwt mode and a JWT of `sub` in tenant `t1` (a tenant admin or a
/// member).
async fn jwt_env(sub: &str, admin: bool) -> (Env, String) {
    let env = Env::start_with(
        AsConfig::default(),
        &[
            ("LATCHKEY_AUTH_MODE", "jwt"),
            ("LATCHKEY_JWT_ISSUER", ISSUER),
            ("LATCHKEY_JWT_AUDIENCE", AUDIENCE),
            ("LATCHKEY_JWT_SECRET", SECRET),
        ],
    )
    .await;
    let now = std::time::UNIX_EPOCH.elapsed().unwrap().as_secs();
    let mut claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "tenant": "t1",
        "iat": now, "exp": now + 600,
    });
    if admin {
        claims["roles"] = json!(["latchkey:admin"]);
    }
    let jwt = latchkey_testkit::idp::mint_hs256(SECRET.as_bytes(), &claims, None);
    (env, jwt)
}

/// `latchkey --token TOKEN ARGS…` against `env`.
async fn with_token(env: &Env, token: &str, args: &[&str]) -> std::process::Output {
    run_with(&env.base(), args, None, &[("LATCHKEY_TOKEN", token)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_create_list_revoke() {
    let (env, jwt) = jwt_env("ann", false).await;

    // Not a terminal: the key alone on standard output, nothing else said.
    let out = with_token(
        &env,
        &jwt,
        &["api-keys", "create", "--name", "ci", "--expires", "1d"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    let key = printed.trim_end_matches('\n');
    assert!(
        key.starts_with("lk_") && !key.contains(char::is_whitespace),
        "{printed:?}"
    );
    assert_eq!(
        printed,
        format!("{key}\n"),
        "the key and a newline, nothing else"
    );
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));

    // The key works as --token.
    let out = with_token(&env, key, &["servers", "list", "--json"]).await;
    assert_eq!(json_of(&out), json!([]));

    // --json: the whole answer, the key included.
    let out = with_token(
        &env,
        &jwt,
        &["api-keys", "create", "--name", "agent", "--json"],
    )
    .await;
    let created = json_of(&out);
    let second = created["key"].as_str().unwrap().to_owned();
    assert!(second.starts_with("lk_"));
    assert_eq!(created["name"], "agent");
    let agent_id = created["id"].as_str().unwrap().to_owned();

    // Listed, never with the key: the table and JSON.
    let out = with_token(&env, &jwt, &["api-keys", "list"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.starts_with("ID "), "{table}");
    for column in [
        "NAME",
        "PREFIX",
        "CREATED",
        "LAST USED",
        "EXPIRES",
        "SERVERS",
    ] {
        assert!(table.contains(column), "{column}: {table}");
    }
    assert!(
        table.contains(" ci ") && table.contains(" agent "),
        "{table}"
    );
    assert!(!table.contains(key) && !table.contains(&second), "{table}");
    let list = json_of(&with_token(&env, &jwt, &["api-keys", "list", "--json"]).await);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ci", "agent"]);
    let ci = &list[0];
    let day = ci["expires_at"].as_i64().unwrap() - ci["created_at"].as_i64().unwrap();
    assert_eq!(day, 86_400, "--expires 1d");
    assert!(ci["last_used_at"].is_i64(), "used once above: {ci}");
    assert!(!list.to_string().contains(key));

    // A key cannot mint another: the refusal says what to use instead.
    let out = with_token(&env, key, &["api-keys", "create", "--name", "nested"]).await;
    assert_fails(&out, 77, "an API key cannot create another key");

    // Past the maximum: the server's 400 in the flag's words, nothing created.
    let out = with_token(
        &env,
        &jwt,
        &["api-keys", "create", "--name", "long", "--expires", "400d"],
    )
    .await;
    assert_fails(
        &out,
        65,
        "--expires: at most 90d (7776000 seconds) for a member key",
    );
    assert!(stdout(&out).is_empty());
    let out = with_token(
        &env,
        &jwt,
        &["api-keys", "create", "--name", "x", "--expires", "30"],
    )
    .await;
    assert_fails(&out, 2, "give a unit");

    // Revoked by name: refused at once (77), and gone from the list.
    let out = with_token(&env, &jwt, &["api-keys", "revoke", "ci"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Revoked API key ci"),
        "{}",
        stdout(&out)
    );
    let out = with_token(&env, key, &["servers", "list"]).await;
    assert_fails(&out, 77, "refused the credential");
    assert!(!stderr(&out).contains(key));

    // By id, as JSON; then neither id nor name is known.
    let out = with_token(&env, &jwt, &["api-keys", "revoke", &agent_id, "--json"]).await;
    assert_eq!(
        json_of(&out),
        json!({"id": agent_id, "name": "agent", "revoked": true})
    );
    assert_fails(
        &with_token(&env, &second, &["servers", "list"]).await,
        77,
        "HTTP 401",
    );
    let out = with_token(&env, &jwt, &["api-keys", "revoke", "agent"]).await;
    assert_fails(&out, 66, "no API key has the id or name \"agent\"");

    // Two keys of one name: revoking by that name asks for an id.
    for _ in 0..2 {
        let out = with_token(&env, &jwt, &["api-keys", "create", "--name", "twin"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = with_token(&env, &jwt, &["api-keys", "revoke", "twin"]).await;
    assert_fails(&out, 65, "2 API keys are named \"twin\"; use an id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_config_create_key_writes_a_working_key() {
    let (env, jwt) = jwt_env("bob", true).await;
    let out = with_token(
        &env,
        &jwt,
        &["servers", "add", "docs", &env.upstream.mcp_url(), "--json"],
    )
    .await;
    let id = json_of(&out)["id"].as_str().unwrap().to_owned();

    let out = with_token(
        &env,
        &jwt,
        &["mcp-config", "--client", "vscode", "--create-key"],
    )
    .await;
    let config = json_of(&out);
    let auth = config["servers"]["docs"]["headers"]["Authorization"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = auth.strip_prefix("Token lk_").map(|k| format!("lk_{k}"));
    let key = key.unwrap_or_else(|| panic!("not a key: {auth}"));
    assert_eq!(
        config["servers"]["latchkey"]["headers"]["Authorization"], auth,
        "one key for the whole configuration"
    );
    assert_eq!(
        config["servers"]["docs"]["url"],
        format!("{}/mcp/{id}", env.base())
    );
    assert!(
        stderr(&out).contains("Created API key mcp-config: vscode"),
        "{}",
        stderr(&out)
    );

    // The key works, and is listed under the client's name.
    let out = with_token(&env, &key, &["servers", "show", "docs", "--json"]).await;
    assert_eq!(json_of(&out)["id"], id);
    let list = json_of(&with_token(&env, &jwt, &["api-keys", "list", "--json"]).await);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "mcp-config: vscode");

    // The Claude (stdio) entries get it in their environment.
    let out = with_token(
        &env,
        &jwt,
        &["mcp-config", "--client", "claude", "--create-key"],
    )
    .await;
    let v: Value = json_of(&out);
    let env_key = v["mcpServers"]["docs"]["env"]["LATCHKEY_TOKEN"]
        .as_str()
        .unwrap();
    assert!(env_key.starts_with("lk_") && env_key != key);

    // Without the flag and without a terminal: nothing asked, nothing created.
    let out = with_token(&env, &jwt, &["mcp-config", "--client", "cursor"]).await;
    let v = json_of(&out);
    assert_eq!(
        v["mcpServers"]["docs"]["headers"]["Authorization"],
        "Token <your Latchkey API key>"
    );
    let list = json_of(&with_token(&env, &jwt, &["api-keys", "list", "--json"]).await);
    assert_eq!(list.as_array().unwrap().len(), 2);
}

/// `--servers` (names or ids) restricts a key: it sees only those servers; the list
/// names them; an unknown one is the server's 400 naming `--servers`. `mcp-config
/// SERVER --create-key` makes a key for that server only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_restricted_to_servers() {
    let (env, jwt) = jwt_env("cy", true).await;
    let mut ids = Vec::new();
    for name in ["docs", "other"] {
        let out = with_token(
            &env,
            &jwt,
            &["servers", "add", name, &env.upstream.mcp_url(), "--json"],
        )
        .await;
        ids.push(json_of(&out)["id"].as_str().unwrap().to_owned());
    }

    let out = with_token(
        &env,
        &jwt,
        &[
            "api-keys",
            "create",
            "--name",
            "docs only",
            "--servers",
            "docs",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let key = stdout(&out).trim_end().to_owned();
    let seen = json_of(&with_token(&env, &key, &["servers", "list", "--json"]).await);
    let names: Vec<&str> = seen
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["docs"]);
    let out = with_token(&env, &key, &["servers", "show", "other"]).await;
    assert_fails(&out, 66, "no server has the id or name \"other\"");

    // Listed by name in the table, by id in JSON, with the key's prefix.
    let out = with_token(&env, &jwt, &["api-keys", "list"]).await;
    let table = stdout(&out);
    let row = table.lines().find(|l| l.contains("docs only")).unwrap();
    assert!(row.trim_end().ends_with(" docs"), "{table}");
    let list = json_of(&with_token(&env, &jwt, &["api-keys", "list", "--json"]).await);
    assert_eq!(list[0]["servers"], json!([ids[0]]));
    let prefix = list[0]["prefix"].as_str().unwrap();
    assert!(
        key.starts_with(prefix) && prefix.len() < key.len(),
        "{prefix}"
    );
    assert!(row.contains(prefix), "{table}");

    // Both, by id and by name; an unknown one is refused and nothing is created.
    let both = format!("{},other", ids[0]);
    let out = with_token(
        &env,
        &jwt,
        &[
            "api-keys",
            "create",
            "--name",
            "both",
            "--servers",
            &both,
            "--json",
        ],
    )
    .await;
    assert_eq!(json_of(&out)["servers"], json!(ids));
    let out = with_token(
        &env,
        &jwt,
        &[
            "api-keys",
            "create",
            "--name",
            "x",
            "--servers",
            "docs,nope",
        ],
    )
    .await;
    assert_fails(
        &out,
        65,
        "--servers: no server of yours has the id or name \"nope\"",
    );
    assert!(stdout(&out).is_empty());

    // mcp-config for one server: a key for that server only.
    let out = with_token(
        &env,
        &jwt,
        &["mcp-config", "other", "--client", "cursor", "--create-key"],
    )
    .await;
    let v = json_of(&out);
    let auth = v["mcpServers"]["other"]["headers"]["Authorization"]
        .as_str()
        .unwrap();
    let key = auth.strip_prefix("Token ").unwrap();
    let seen = json_of(&with_token(&env, key, &["servers", "list", "--json"]).await);
    assert_eq!(seen.as_array().unwrap().len(), 1);
    assert_eq!(seen[0]["name"], "other");
    let list = json_of(&with_token(&env, &jwt, &["api-keys", "list", "--json"]).await);
    let made = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "mcp-config: cursor (other)")
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(made["servers"], json!([ids[1]]));
}

/// `latchkey ARGS…` at a terminal (a pseudo-terminal from util-linux's `script`),
/// typing `answer`: everything the terminal showed. `None` where there is no `script`.
async fn at_terminal(env: &Env, token: Option<&str>, args: &str, answer: &str) -> Option<String> {
    let script = std::path::Path::new("/usr/bin/script");
    if !script.exists() {
        return None;
    }
    let mut c = std::process::Command::new(script);
    let cmd = format!("{} {args}", env!("CARGO_BIN_EXE_latchkey"));
    c.args(["-qec", &cmd, "/dev/null"])
        .env("LATCHKEY_URL", env.base())
        .env_remove("LATCHKEY_TOKEN")
        .env("CI", "true")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    if let Some(t) = token {
        c.env("LATCHKEY_TOKEN", t);
    }
    let answer = answer.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut child = c.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // Typed once the question is up: what is typed earlier would be echoed before
        // it, and a closed input ends `script` at once.
        std::thread::sleep(std::time::Duration::from_secs(2));
        // Refused when the command asked nothing and is done already (local mode).
        let _ = stdin.write_all(answer.as_bytes());
        std::thread::sleep(std::time::Duration::from_secs(2));
        drop(stdin);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// At a terminal without `--create-key`: asked in jwt mode (yes: a key in the
/// configuration; no or nothing: the placeholder), never in local mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_config_asks_at_a_terminal_in_jwt_mode_only() {
    let (env, jwt) = jwt_env("dee", true).await;
    let Some(shown) = at_terminal(&env, Some(&jwt), "mcp-config --client vscode", "y\n").await
    else {
        return;
    };
    assert!(
        shown.contains("Create an API key for this client? [y/N]"),
        "{shown}"
    );
    assert!(shown.contains("\"Authorization\": \"Token lk_"), "{shown}");
    assert!(
        shown.contains("Created API key mcp-config: vscode"),
        "{shown}"
    );
    let shown = at_terminal(&env, Some(&jwt), "mcp-config --client vscode", "\n")
        .await
        .unwrap();
    assert!(shown.contains("[y/N]"), "{shown}");
    assert!(shown.contains("Token <your Latchkey API key>"), "{shown}");
    let list = json_of(&with_token(&env, &jwt, &["api-keys", "list", "--json"]).await);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    let local = Env::start().await;
    let shown = at_terminal(&local, None, "mcp-config --client vscode", "y\n")
        .await
        .unwrap();
    assert!(!shown.contains("[y/N]"), "{shown}");
    assert!(shown.contains("\"url\""), "{shown}");
    assert!(!shown.contains("Token"), "{shown}");
}
