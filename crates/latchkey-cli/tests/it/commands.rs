//! The commands that talk to a running `latchkey serve`, run as a user would: a real
//! `latchkey serve` (temporary data directory, loopback upstreams allowed) in front of
//! the scripted MCP server and authorization server.

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Command, Output, Stdio};

use latchkey_testkit::{AsConfig, ScriptedServer};
use serde_json::{Value, json};

use super::keys::TempDir;
use super::serve::{self, Server};

/// A `latchkey serve` and the scripted upstream it is meant to reach.
pub(crate) struct Env {
    pub(crate) latchkey: Server,
    pub(crate) upstream: ScriptedServer,
    _dir: TempDir,
}

impl Env {
    pub(crate) async fn start() -> Self {
        Self::start_with(AsConfig::default(), &[]).await
    }

    pub(crate) async fn start_with(cfg: AsConfig, env: &[(&str, &str)]) -> Self {
        let upstream = ScriptedServer::start(cfg).await.unwrap();
        let dir = TempDir::new();
        let mut c = serve::command(&dir.0);
        c.env("LATCHKEY_ALLOW_INSECURE_LOOPBACK", "true")
            .stderr(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        let latchkey = tokio::task::spawn_blocking(move || serve::start(c))
            .await
            .unwrap();
        Self {
            latchkey,
            upstream,
            _dir: dir,
        }
    }

    pub(crate) fn base(&self) -> String {
        self.latchkey.base.clone()
    }

    /// `latchkey --url <base> ARGS…`.
    pub(crate) async fn run(&self, args: &[&str]) -> Output {
        run_with(&self.base(), args, None, &[]).await
    }

    /// Adds the scripted server as `name`; its id.
    pub(crate) async fn add_server(&self, name: &str) -> String {
        let out = self
            .run(&["servers", "add", name, &self.upstream.mcp_url(), "--json"])
            .await;
        json_of(&out)["id"].as_str().unwrap().to_owned()
    }
}

/// The `latchkey` command with a clean environment: no token, no browser.
pub(crate) fn latchkey_command(base: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_latchkey"));
    c.env_remove("LATCHKEY_TOKEN")
        .env("LATCHKEY_URL", base)
        .env("CI", "true")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY");
    c
}

/// Runs `latchkey ARGS…` against `base` with `stdin` as standard input and `env` set.
pub(crate) async fn run_with(
    base: &str,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> Output {
    let mut c = latchkey_command(base);
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let stdin = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut child = c.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

pub(crate) fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The JSON a successful command printed.
pub(crate) fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(out),
        stderr(out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

/// Asserts the exit code and that standard error says `needle`.
#[track_caller]
pub(crate) fn assert_fails(out: &Output, code: i32, needle: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
    assert!(
        stderr(out).contains(needle),
        "{needle:?} not in: {}",
        stderr(out)
    );
}

/// A client that never follows redirects (each hop of the consent is looked at).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Plays the user's browser: opens the authorization URL at the scripted AS (which
/// approves at once with a 302 to Latchkey's callback) and follows it to the callback.
pub(crate) async fn consent(authorization_url: &str) {
    let r = client().get(authorization_url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 302, "the scripted AS approves");
    let callback = r.headers()["location"].to_str().unwrap().to_owned();
    let r = client().get(&callback).send().await.unwrap();
    let status = r.status().as_u16();
    let page = r.text().await.unwrap();
    assert_eq!(status, 200, "{page}");
}

/// Connects `id` through the API (no CLI involved), for tests of other commands.
pub(crate) async fn connect_via_api(base: &str, id: &str) {
    let r = client()
        .post(format!("{base}/v1/oauth/start"))
        .header("content-type", "application/json")
        .body(json!({"server_id": id}).to_string())
        .send()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v["status"], "redirect", "{v}");
    consent(v["authorization_url"].as_str().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_add_list_show_edit_rm() {
    let env = Env::start().await;
    let mcp = env.upstream.mcp_url();
    assert_eq!(
        json_of(&env.run(&["servers", "list", "--json"]).await),
        json!([])
    );

    // add: probed as OAuth; JSON and human output.
    let added = json_of(
        &env.run(&["servers", "add", "scripted", &mcp, "--json"])
            .await,
    );
    assert_eq!(added["auth_type"], "oauth");
    assert_eq!(added["url"], mcp.as_str());
    let id = added["id"].as_str().unwrap().to_owned();
    let out = env
        .run(&["servers", "add", "plain", &mcp, "--auth-type", "none"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("Added server plain ("),
        "{}",
        stdout(&out)
    );

    // list: an aligned table, and JSON.
    let out = env.run(&["servers", "list"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("ID "), "{text}");
    let name_col = lines[0].find("NAME").unwrap();
    let url_col = lines[0].find("URL").unwrap();
    for l in &lines[1..] {
        let name = &l[name_col..];
        assert!(
            name.starts_with("scripted") || name.starts_with("plain"),
            "{text}"
        );
        assert!(l[url_col..].starts_with(&mcp), "{text}");
    }
    let listed = json_of(&env.run(&["servers", "list", "--json"]).await);
    assert_eq!(listed.as_array().unwrap().len(), 2);

    // show, by name and by id.
    let out = env.run(&["servers", "show", "scripted"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("id:            {id}")), "{text}");
    assert!(text.contains("auth type:     oauth"), "{text}");
    assert!(text.contains("connection:    not connected"), "{text}");
    let shown = json_of(&env.run(&["servers", "show", &id, "--json"]).await);
    assert_eq!(shown["name"], "scripted");
    assert_eq!(shown["connection"]["has_token"], false);

    // edit: settings, a client secret read from standard input (never echoed), clears.
    let edited = json_of(
        &env.run(&[
            "servers", "edit", "scripted", "--name", "renamed", "--scopes", "mcp:read", "--json",
        ])
        .await,
    );
    assert_eq!(
        (&edited["name"], &edited["scopes"]),
        (&json!("renamed"), &json!("mcp:read"))
    );
    let out = run_with(
        &env.base(),
        &[
            "servers",
            "edit",
            "renamed",
            "--client-id",
            "cid",
            "--issuer",
            &env.upstream.base,
            "--client-secret-stdin",
        ],
        Some("s3cret-value\n"),
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("Updated server renamed"));
    let shown = json_of(&env.run(&["servers", "show", "renamed", "--json"]).await);
    assert_eq!(
        (&shown["client_id"], &shown["has_client_secret"]),
        (&json!("cid"), &json!(true))
    );
    assert!(!stdout(&out).contains("s3cret") && !shown.to_string().contains("s3cret"));
    let cleared = json_of(
        &env.run(&[
            "servers",
            "edit",
            &id,
            "--clear-client-id",
            "--clear-client-secret",
            "--clear-scopes",
            "--json",
        ])
        .await,
    );
    assert_eq!(cleared["client_id"], Value::Null);
    assert_eq!(cleared["has_client_secret"], false);
    // The naming setting of /mcp: on, shown, off again (the default).
    let on = json_of(
        &env.run(&["servers", "edit", &id, "--unprefixed", "--json"])
            .await,
    );
    assert_eq!(on["unprefixed"], true);
    let text = stdout(&env.run(&["servers", "show", &id]).await);
    assert!(text.contains("unprefixed (the server's own)"), "{text}");
    let off = json_of(
        &env.run(&["servers", "edit", &id, "--prefixed", "--json"])
            .await,
    );
    assert_eq!(off["unprefixed"], false);
    assert_fails(
        &env.run(&["servers", "edit", "renamed"]).await,
        2,
        "nothing to change",
    );

    // Exit codes: unknown (66), ambiguous name (65), invalid field (65), clap (2).
    assert_fails(
        &env.run(&["servers", "show", "nope"]).await,
        66,
        "no server has the id or name",
    );
    // Names are unique: a second "plain" is refused, naming the first (65).
    let first_plain = json_of(&env.run(&["servers", "show", "plain", "--json"]).await)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = env
        .run(&["servers", "add", "plain", &mcp, "--auth-type", "none"])
        .await;
    assert_fails(&out, 65, "another server is named so already");
    assert!(stderr(&out).contains(&first_plain), "{}", stderr(&out));
    assert_fails(
        &env.run(&["servers", "add", "bad", "ftp://example.com/mcp"])
            .await,
        65,
        "url: ",
    );
    assert_fails(
        &env.run(&["servers", "add", "x", &mcp, "--auth-type", "magic"])
            .await,
        2,
        "invalid value",
    );

    // rm, human and JSON.
    let out = env.run(&["servers", "rm", "renamed"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("Deleted server renamed ({id}).\n"));
    let plain = json_of(&env.run(&["servers", "list", "--json"]).await);
    let other = plain[0]["id"].as_str().unwrap().to_owned();
    let removed = json_of(&env.run(&["servers", "rm", &other, "--json"]).await);
    assert_eq!(removed, json!({"id": other, "deleted": true}));
    assert_eq!(
        json_of(&env.run(&["servers", "list", "--json"]).await)
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_fails(&env.run(&["servers", "rm", &other]).await, 66, "no server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_latchkey_and_a_bad_url() {
    // Nothing listens on port 1.
    let out = run_with("http://127.0.0.1:1", &["servers", "list"], None, &[]).await;
    assert_fails(&out, 69, "cannot reach Latchkey at http://127.0.0.1:1");
    let out = run_with(
        "http://127.0.0.1:1",
        &["tools", "list", "x", "--json"],
        None,
        &[],
    )
    .await;
    assert_fails(&out, 69, "cannot reach Latchkey");
    let out = run_with("not a url", &["servers", "list"], None, &[]).await;
    assert_fails(&out, 78, "LATCHKEY_URL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_then_tools_then_disconnect() {
    let env = Env::start().await;
    env.add_server("scripted").await;

    // Not connected yet: the tools say so, by the server's name, and how to connect
    // (75).
    let out = env.run(&["tools", "list", "scripted"]).await;
    assert_fails(
        &out,
        75,
        "scripted is not connected yet: connect it with `latchkey connect scripted` or in Latchkey's web UI",
    );
    assert!(!stderr(&out).contains("reconnect"), "{}", stderr(&out));

    // connect: the URL on standard error; the consent given in "the browser"; the
    // command ends when the completion event arrives.
    let mut c = latchkey_command(&env.base());
    c.args(["connect", "scripted", "--no-browser", "--timeout", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let err = child.stderr.take().unwrap();
    let (url, err_lines) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(err).lines();
        let mut seen = Vec::new();
        while let Some(Ok(l)) = lines.next() {
            let t = l.trim().to_owned();
            seen.push(l);
            if t.starts_with("http") {
                return (t, (seen, lines));
            }
        }
        panic!("no authorization URL on stderr: {seen:?}");
    })
    .await
    .unwrap();
    assert!(
        err_lines.0[0].contains("To connect scripted, open this URL"),
        "{:?}",
        err_lines.0
    );
    assert!(url.starts_with(&env.upstream.base), "{url}");
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    consent(&url).await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(stdout(&out), "Connected scripted.\n");
    assert_eq!(env.upstream.grants_served_for("authorization_code"), 1);

    // Connected already: finishes at once.
    let again = json_of(&env.run(&["connect", "scripted", "--json"]).await);
    assert_eq!(again["status"], "already_connected");
    let shown = json_of(&env.run(&["servers", "show", "scripted", "--json"]).await);
    assert_eq!(shown["connection"]["has_token"], true);
    // --force starts a new consent anyway (here left unanswered); the connection stays.
    let out = env
        .run(&[
            "connect",
            "scripted",
            "--force",
            "--no-browser",
            "--timeout",
            "1",
        ])
        .await;
    assert_fails(&out, 75, "no consent within 1 s");
    assert!(
        stderr(&out).contains("http"),
        "a new authorization URL was shown"
    );
    let shown = json_of(&env.run(&["servers", "show", "scripted", "--json"]).await);
    assert_eq!(shown["connection"]["has_token"], true);

    // tools list: a table with each tool's parameters (name, type, * when required),
    // and JSON.
    let out = env.run(&["tools", "list", "scripted"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("NAME  PARAMETERS (* required)  DESCRIPTION"),
        "{text}"
    );
    let params_col = lines[0].find("PARAMETERS").unwrap();
    let description_col = lines[0].find("DESCRIPTION").unwrap();
    let row = |name: &str| {
        let l = lines
            .iter()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} row: {text}"));
        (
            l[params_col..description_col].trim_end().to_owned(),
            l[description_col..].to_owned(),
        )
    };
    assert_eq!(
        row("echo"),
        (
            "text*: string".to_owned(),
            "Returns the text it is given.".to_owned()
        )
    );
    assert_eq!(
        row("add"),
        (
            "a*: number, b*: number".to_owned(),
            "Adds two numbers.".to_owned()
        )
    );
    let listed = json_of(&env.run(&["tools", "list", "scripted", "--json"]).await);
    let names: Vec<&str> = listed["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "add"]);

    // tools call: --arg values parsed as JSON when they parse, --args-json; --json
    // prints the whole result (as every command's --json does; --raw is its old name).
    let out = env
        .run(&[
            "tools", "call", "scripted", "add", "--arg", "a=2", "--arg", "b=3.5",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "5.5\n");
    let raw = json_of(
        &env.run(&[
            "tools", "call", "scripted", "add", "--arg", "a=2", "--arg", "b=3", "--json",
        ])
        .await,
    );
    assert_eq!(raw["structuredContent"]["sum"], 5);
    assert_eq!(raw["isError"], false);
    let old_name = json_of(
        &env.run(&[
            "tools", "call", "scripted", "add", "--arg", "a=1", "--arg", "b=1", "--raw",
        ])
        .await,
    );
    assert_eq!(old_name["structuredContent"]["sum"], 2);
    let out = env
        .run(&[
            "tools",
            "call",
            "scripted",
            "echo",
            "--args-json",
            r#"{"text":"hi there"}"#,
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hi there\n");
    let out = env
        .run(&[
            "tools",
            "call",
            "scripted",
            "echo",
            "--arg",
            "text=hello world",
        ])
        .await;
    assert_eq!(stdout(&out), "hello world\n");
    // `42` is JSON, so the echo tool gets a number and reports an error: exit 1.
    let out = env
        .run(&["tools", "call", "scripted", "echo", "--arg", "text=42"])
        .await;
    assert_fails(&out, 1, "the tool echo reported an error");
    assert!(
        stdout(&out).contains("`text` must be a string"),
        "{}",
        stdout(&out)
    );
    assert_fails(
        &env.run(&["tools", "call", "scripted", "echo", "--args-json", "[1]"])
            .await,
        65,
        "--args-json: the arguments must be a JSON object",
    );
    // --json takes no value any more: the old spelling is a usage error (2).
    assert_fails(
        &env.run(&[
            "tools",
            "call",
            "scripted",
            "echo",
            "--json",
            r#"{"text":"x"}"#,
        ])
        .await,
        2,
        "unexpected argument",
    );
    assert_fails(
        &env.run(&["tools", "call", "scripted", "echo", "--arg", "novalue"])
            .await,
        65,
        "expected KEY=VALUE",
    );

    // disconnect: the tokens are revoked and forgotten.
    let out = env.run(&["disconnect", "scripted"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("Disconnected scripted"));
    assert!(!env.upstream.revocations().is_empty());
    let shown = json_of(&env.run(&["servers", "show", "scripted", "--json"]).await);
    assert_eq!(shown["connection"]["has_token"], false);
    let out = json_of(&env.run(&["disconnect", "scripted", "--json"]).await);
    assert_eq!(out["disconnected"], true, "idempotent");
    assert_fails(
        &env.run(&["tools", "call", "scripted", "echo", "--arg", "text=x"])
            .await,
        75,
        "scripted is not connected yet",
    );
    assert_fails(&env.run(&["connect", "nope"]).await, 66, "no server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_times_out_without_consent() {
    let env = Env::start().await;
    env.add_server("scripted").await;
    let out = env
        .run(&["connect", "scripted", "--no-browser", "--timeout", "1"])
        .await;
    assert_fails(&out, 75, "no consent within 1 s");
    assert!(stderr(&out).contains("http"), "the URL was shown");
    assert!(stdout(&out).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_config_for_every_client() {
    let env = Env::start().await;
    let id = env.add_server("My Scripted").await;
    let base = env.base();

    // One client: the bare JSON, ready to paste.
    let out = env.run(&["mcp-config", "--client", "claude"]).await;
    let claude = json_of(&out);
    let entry = &claude["mcpServers"]["my-scripted"];
    assert_eq!(entry["args"], json!(["stdio", id, "--url", base]));
    assert!(entry["command"].as_str().unwrap().ends_with("latchkey"));
    assert!(entry.get("env").is_none(), "no token, no env");

    let all = json_of(&env.run(&["mcp-config", "--json"]).await);
    assert_eq!(
        all["claude_code"]["mcpServers"]["latchkey"],
        json!({"type": "http", "url": format!("{base}/mcp")})
    );
    assert_eq!(
        all["vscode"]["servers"]["my-scripted"],
        json!({"type": "http", "url": format!("{base}/mcp/{id}")})
    );
    assert_eq!(
        all["cursor"]["mcpServers"]["latchkey"],
        json!({"url": format!("{base}/mcp")})
    );

    // With a token configured: a placeholder, never the token.
    let out = run_with(
        &base,
        &["mcp-config", "My Scripted", "--client", "vscode"],
        None,
        &[("LATCHKEY_TOKEN", "lk_do-not-print-me")],
    )
    .await;
    let v = json_of(&out);
    assert!(!stdout(&out).contains("do-not-print-me"));
    assert_eq!(
        v["servers"]["my-scripted"]["headers"]["Authorization"],
        "Token <your Latchkey API key>"
    );

    // Human: every client, titled.
    let out = env.run(&["mcp-config"]).await;
    assert!(out.status.success());
    let text = stdout(&out);
    for title in [
        "// Claude Desktop",
        "// Claude Code",
        "// VS Code",
        "// Cursor",
    ] {
        assert!(text.contains(title), "{title}: {text}");
    }
}

#[test]
fn completions_for_bash() {
    let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = stdout(&out);
    assert!(script.contains("_latchkey()"), "{script}");
    for sub in [
        "servers",
        "connect",
        "tools",
        "stdio",
        "mcp-config",
        "doctor",
    ] {
        assert!(script.contains(sub), "{sub}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn help_documents_the_exit_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .arg("--help")
        .output()
        .unwrap();
    let help = stdout(&out);
    for code in ["65 ", "66 ", "69 ", "75 ", "77 ", "78 "] {
        assert!(help.contains(code), "{code}: {help}");
    }
}

/// jwt mode: no token is 77; a JWT goes as `Bearer`, an API key as `Token`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_permission_errors_in_jwt_mode() {
    const SECRET: &str = "a-shared-secret-of-at-least-32-bytes";
    const ISSUER: &str = "https://issuer.example";
    const AUDIENCE: &str = "https://latchkey.example/mcp";
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
    let base = env.base();
    assert_fails(&env.run(&["servers", "list"]).await, 77, "HTTP 401");

    let now = std::time::UNIX_EPOCH.elapsed().unwrap().as_secs();
    let claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "ann", "tenant": "t1",
        "iat": now, "exp": now + 600, "roles": ["latchkey:admin"],
    });
    let jwt = latchkey_testkit::idp::mint_hs256(SECRET.as_bytes(), &claims, None);
    let out = run_with(
        &base,
        &["servers", "list", "--json"],
        None,
        &[("LATCHKEY_TOKEN", &jwt)],
    )
    .await;
    assert_eq!(json_of(&out), json!([]));
    let out = run_with(
        &base,
        &[
            "--token",
            &jwt,
            "servers",
            "add",
            "s",
            &env.upstream.mcp_url(),
            "--json",
        ],
        None,
        &[],
    )
    .await;
    assert_eq!(json_of(&out)["auth_type"], "oauth");

    // An API key minted with the JWT works on the `Token` scheme.
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/api-keys"))
        .header("authorization", format!("Bearer {jwt}"))
        .header("content-type", "application/json")
        .body(r#"{"name":"cli"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let key: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let key = key["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("lk_"));
    let out = run_with(
        &base,
        &["servers", "show", "s", "--json"],
        None,
        &[("LATCHKEY_TOKEN", &key)],
    )
    .await;
    assert_eq!(json_of(&out)["name"], "s");

    // A bad token: 77, and the token is not printed.
    let out = run_with(
        &base,
        &["servers", "list"],
        None,
        &[("LATCHKEY_TOKEN", "lk_wrong-key-value")],
    )
    .await;
    assert_fails(&out, 77, "refused the credential");
    assert!(!stderr(&out).contains("wrong-key-value"));
}

/// Issue 16: an authorization server that issues no refresh token (an OpenID provider
/// without `offline_access`, for one): `connect` says plainly that the connection
/// cannot be renewed without consent, and when it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_says_when_a_connection_cannot_be_renewed() {
    let env = Env::start_with(
        AsConfig {
            issue_refresh_tokens: false,
            ..AsConfig::default()
        },
        &[],
    )
    .await;
    env.add_server("scripted").await;
    let mut c = latchkey_command(&env.base());
    c.args(["connect", "scripted", "--no-browser", "--timeout", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let err = child.stderr.take().unwrap();
    let (url, rest) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(err).lines();
        while let Some(Ok(l)) = lines.next() {
            if l.trim().starts_with("http") {
                return (l.trim().to_owned(), lines);
            }
        }
        panic!("no authorization URL on stderr");
    })
    .await
    .unwrap();
    consent(&url).await;
    let (out, tail) = tokio::task::spawn_blocking(move || {
        let tail: Vec<String> = rest.map_while(Result::ok).collect();
        (child.wait_with_output().unwrap(), tail.join("\n"))
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{tail}");
    assert!(stdout(&out).contains("Connected scripted."));
    assert!(
        tail.contains("issued no refresh token")
            && tail.contains("cannot be renewed without your consent")
            && tail.contains("expires (at 20"),
        "{tail}"
    );
}

/// Issue 17: a URL that gives no MCP answer is refused at add time with the probe's
/// reason (exit 65), not saved as a server that cannot work; `--auth-type` insists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_url_is_refused_at_add_time() {
    let env = Env::start().await;
    let wrong_path = format!("{}/wrong", env.upstream.base);
    let out = env.run(&["servers", "add", "wrong", &wrong_path]).await;
    assert_fails(&out, 65, "HTTP 404 from /wrong: not an MCP endpoint");
    assert!(stderr(&out).contains("--auth-type"), "{}", stderr(&out));
    // Nothing listens on port 1.
    let out = env
        .run(&["servers", "add", "down", "http://127.0.0.1:1/mcp"])
        .await;
    assert_fails(&out, 65, "no answer from 127.0.0.1:1");
    assert!(
        json_of(&env.run(&["servers", "list", "--json"]).await)
            .as_array()
            .unwrap()
            .is_empty(),
        "nothing was saved"
    );
    // The user may insist.
    let out = env
        .run(&[
            "servers",
            "add",
            "down",
            "http://127.0.0.1:1/mcp",
            "--auth-type",
            "none",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
}
