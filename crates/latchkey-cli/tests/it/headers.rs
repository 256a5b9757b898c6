//! Static-header servers from the command line (issue 17): `servers add --header`,
//! `servers set-headers` (a value given, or read from standard input), `servers show`
//! with set / not set, `servers clear-headers`, the two typed errors a user reads with
//! their exit codes, and `doctor --header`. No value is ever printed.

use std::process::Output;

use super::commands::{Env, assert_fails, json_of, run_with, stderr, stdout};

const KEY: &str = "cli-key-5e1d0c";
const OTHER_KEY: &str = "cli-key-second-77aa";

/// Neither value appears in what the command printed.
fn prints_no_value(out: &Output) {
    for text in [stdout(out), stderr(out)] {
        assert!(!text.contains(KEY) && !text.contains(OTHER_KEY), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_servers_from_add_to_clear() {
    let env = Env::start().await;
    env.upstream
        .require_header(Some(("X-Api-Key", &[KEY, OTHER_KEY])));
    let url = env.upstream.mcp_url();

    // A wrong key is caught at add time, with the status the server gave.
    let out = env
        .run(&[
            "servers",
            "add",
            "api",
            &url,
            "--header",
            "X-Api-Key: wrong-one",
        ])
        .await;
    assert_fails(
        &out,
        65,
        "the server refused the given header values (HTTP 401)",
    );
    assert!(
        !stderr(&out).contains("anyway"),
        "wrong values are not a wrong auth type: {}",
        stderr(&out)
    );

    // A name alone: added, its value not set yet, and the next step said.
    let out = env
        .run(&["servers", "add", "api", &url, "--header", "X-Api-Key"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("auth type headers"), "{text}");
    assert!(text.contains("Headers: X-Api-Key: not set."), "{text}");
    assert!(
        text.contains("Set their values with `latchkey servers set-headers api`."),
        "{text}"
    );

    // Calls before a value: the typed error, what to do, exit 75.
    let out = env.run(&["tools", "list", "api"]).await;
    assert_fails(
        &out,
        75,
        "api has no value for X-Api-Key yet: set it with `latchkey servers set-headers api --header 'X-Api-Key: …'` or in Latchkey's web UI",
    );

    // The value from standard input (a name alone, stdin not a terminal).
    let out = run_with(
        &env.base(),
        &["servers", "set-headers", "api", "--header", "X-Api-Key"],
        Some(&format!("{KEY}\n")),
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("X-Api-Key: set."), "{}", stdout(&out));
    prints_no_value(&out);

    let out = env.run(&["servers", "show", "api"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("X-Api-Key: set"), "{}", stdout(&out));
    let v = json_of(&env.run(&["servers", "show", "api", "--json"]).await);
    assert_eq!(v["headers"]["X-Api-Key"], "set");
    assert_eq!(v["header_names"][0], "X-Api-Key");

    let out = env.run(&["tools", "list", "api"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("echo"), "{}", stdout(&out));
    let out = env
        .run(&[
            "tools",
            "call",
            "api",
            "echo",
            "--arg",
            "text=through-the-key",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("through-the-key"));
    let last = env.upstream.requests("/mcp").pop().unwrap();
    assert_eq!(last.headers["x-api-key"], KEY);

    // A value the server refuses: the other typed error, exit 75, never "reconnect".
    let out = env
        .run(&[
            "servers",
            "set-headers",
            "api",
            "--header",
            "X-Api-Key: revoked-value",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.run(&["tools", "list", "api"]).await;
    assert_fails(
        &out,
        75,
        "api refused its header values (HTTP 401); set new ones with `latchkey servers set-headers api` or in Latchkey's web UI",
    );
    assert!(!stderr(&out).contains("connect"), "{}", stderr(&out));

    // A second key given inline works again; then cleared.
    let header = format!("X-Api-Key: {OTHER_KEY}");
    let out = env
        .run(&["servers", "set-headers", "api", "--header", &header])
        .await;
    prints_no_value(&out);
    assert!(env.run(&["tools", "list", "api"]).await.status.success());
    let out = env.run(&["servers", "clear-headers", "api"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json_of(&env.run(&["servers", "show", "api", "--json"]).await);
    assert_eq!(v["headers"]["X-Api-Key"], "not set");
    let out = env
        .run(&["servers", "set-headers", "api", "--header", "X-Other: v"])
        .await;
    assert_fails(&out, 65, "values.X-Other");

    // Added with its value in one go.
    let out = env
        .run(&[
            "servers",
            "add",
            "api2",
            &url,
            "--header",
            &format!("X-Api-Key: {KEY}"),
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Headers: X-Api-Key: set."),
        "{}",
        stdout(&out)
    );
    prints_no_value(&out);
    assert!(env.run(&["tools", "list", "api2"]).await.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_tries_the_given_headers() {
    let env = Env::start().await;
    env.upstream.require_header(Some(("X-Api-Key", &[KEY])));
    let url = env.upstream.mcp_url();
    let good = format!("X-Api-Key: {KEY}");
    let out = run_with(
        &env.base(),
        &[
            "doctor",
            "--allow-insecure-loopback",
            "--header",
            &good,
            &url,
        ],
        None,
        &[],
    )
    .await;
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("the server accepted the headers"),
        "{}",
        stdout(&out)
    );
    prints_no_value(&out);
    assert!(
        env.upstream.requests("/mcp").iter().any(|r| r
            .headers
            .get("x-api-key")
            .map(String::as_str)
            == Some(KEY)),
        "doctor sent the header"
    );
    let out = run_with(
        &env.base(),
        &[
            "doctor",
            "--allow-insecure-loopback",
            "--header",
            "X-Api-Key: not-it",
            &url,
        ],
        None,
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("the server refused the headers (HTTP 401)"),
        "{}",
        stdout(&out)
    );
}
