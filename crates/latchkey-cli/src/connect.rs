//! `latchkey connect SERVER` and `latchkey disconnect SERVER`.
//!
//! Connect subscribes to `GET /v1/events` first (so the completion cannot slip by),
//! then starts the managed flow with `POST /v1/oauth/start`. `already_authorized` and
//! `completed` (client credentials) finish at once; `redirect` prints the authorization
//! URL, opens a browser where one is available, and waits, with a spinner on a
//! terminal, for the `mcp.oauth_complete` event of this server started by this caller.
//! The URL is printed on standard error for the person at the terminal; it is never
//! logged.

use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use serde_json::{Value, json};

use crate::api::{Api, Connection, Failure, error_chain, segment};
use crate::exit;
use crate::output::{self, text};
use crate::servers;

/// The event a finished flow publishes (see `latchkey_gateway::events`).
pub(crate) const OAUTH_COMPLETE: &str = "mcp.oauth_complete";

/// Arguments of `latchkey connect`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConnectArgs {
    /// Server id or unique name.
    server: String,
    /// Do not try to open a browser; only print the authorization URL.
    #[arg(long)]
    no_browser: bool,
    /// Start a new consent even if the slot is connected (after `needs_oauth_reauth`,
    /// or to grant more scopes); the stored connection serves until the new one lands.
    #[arg(long)]
    force: bool,
    /// How long to wait for the consent to complete.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    timeout: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Arguments of `latchkey disconnect`.
#[derive(Debug, clap::Args)]
pub(crate) struct DisconnectArgs {
    /// Server id or unique name.
    server: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn connect(a: ConnectArgs, conn: &Connection) -> anyhow::Result<ExitCode> {
    let api = Api::new(conn)?;
    let server = servers::resolve(&api, &a.server).await?;
    let id = servers::id_of(&server);
    let name = text(&server, "name");
    let me = api.get("/v1/whoami").await?;
    let subject = text(&me, "subject");

    // Subscribed before the flow starts: the handler subscribes before it answers.
    let events = api
        .send(
            api.request(Method::GET, "/v1/events")
                .header(reqwest::header::ACCEPT, "text/event-stream"),
        )
        .await?;
    let started = api
        .call(
            Method::POST,
            "/v1/oauth/start",
            Some(&if a.force {
                json!({"server_id": id, "force": true})
            } else {
                json!({"server_id": id})
            }),
        )
        .await?;
    let status = started.get("status").and_then(Value::as_str).unwrap_or("");
    match status {
        "already_authorized" | "completed" => {
            let outcome = if status == "completed" {
                "connected"
            } else {
                "already_connected"
            };
            report(a.json, &id, &name, outcome, &started);
            warn_if_not_renewable(&api, &id, &name).await;
            return Ok(ExitCode::SUCCESS);
        }
        "redirect" => {}
        other => {
            return Err(Failure::new(
                exit::FAILURE,
                format!("unexpected answer from /v1/oauth/start: status {other:?}"),
            )
            .into());
        }
    }
    let Some(url) = started.get("authorization_url").and_then(Value::as_str) else {
        return Err(Failure::new(exit::FAILURE, "no authorization_url in the answer").into());
    };
    eprintln!("To connect {name}, open this URL in a browser and approve the access:");
    eprintln!("  {url}");
    if !a.no_browser && open_browser(url) {
        eprintln!("(opening your browser)");
    }
    let spinner = spinner(a.json, &name);
    let outcome = tokio::time::timeout(
        Duration::from_secs(a.timeout),
        wait_for_completion(events, &id, &subject),
    )
    .await;
    spinner.finish_and_clear();
    match outcome {
        Err(_) => Err(Failure::new(
            exit::TEMPFAIL,
            format!(
                "no consent within {} s; run `latchkey connect {}` again",
                a.timeout, a.server
            ),
        )
        .into()),
        Ok(Err(f)) => Err(f.into()),
        Ok(Ok(event)) if event["status"] == "success" => {
            report(a.json, &id, &name, "connected", &started);
            warn_if_not_renewable(&api, &id, &name).await;
            Ok(ExitCode::SUCCESS)
        }
        Ok(Ok(event)) => Err(Failure::new(
            exit::FAILURE,
            format!(
                "connecting {name} failed: {}",
                event
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("the authorization server refused")
            ),
        )
        .into()),
    }
}

/// Says so plainly (on standard error) when the authorization server gave no refresh
/// token: the connection then ends when the access token does, and only a new consent
/// renews it (issue 16).
async fn warn_if_not_renewable(api: &Api, id: &str, name: &str) {
    let Ok(st) = api.get(&format!("/v1/oauth/status/{}", segment(id))).await else {
        return;
    };
    if st["has_token"] != true || st["refreshable"] != false {
        return;
    }
    let until = st["expires_at"]
        .as_str()
        .map(|at| format!(" (at {at})"))
        .unwrap_or_default();
    eprintln!(
        "Note: the authorization server of {name} issued no refresh token, so this \
         connection cannot be renewed without your consent: it ends when its access \
         token expires{until}. Run `latchkey connect {name} --force` then."
    );
}

fn report(json: bool, id: &str, name: &str, outcome: &str, started: &Value) {
    if json {
        output::json(&json!({
            "server_id": id,
            "status": outcome,
            "issuer": started.get("issuer"),
        }));
    } else if outcome == "already_connected" {
        output::line(format!("{name} is already connected."));
    } else {
        output::line(format!("Connected {name}."));
    }
}

/// Reads the event stream until this server's flow, started by `subject`, completes.
async fn wait_for_completion(
    events: reqwest::Response,
    server_id: &str,
    subject: &str,
) -> Result<Value, Failure> {
    let mut sse = sse_stream::SseByteStream::new(events.bytes_stream());
    while let Some(item) = sse.next().await {
        let ev = item.map_err(|e| {
            Failure::unavailable(format!(
                "the event stream from Latchkey broke: {}",
                error_chain(&e)
            ))
        })?;
        if ev.event.as_deref() != Some(OAUTH_COMPLETE) {
            continue;
        }
        let Some(data) = ev
            .data
            .as_deref()
            .and_then(|d| serde_json::from_str::<Value>(d).ok())
        else {
            continue;
        };
        if data["server_id"] == server_id && data["initiating_user_id"] == subject {
            return Ok(data);
        }
    }
    Err(Failure::unavailable(
        "the event stream from Latchkey closed before the connection completed",
    ))
}

/// A spinner on standard error; drawn only on a terminal, and not with `--json`.
fn spinner(quiet: bool, name: &str) -> ProgressBar {
    let target = if quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(None, target);
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.set_message(format!("waiting for consent to connect {name}"));
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Opens `url` in the desktop's browser when there is one: not in CI, not over SSH
/// without a display. Returns whether a browser was started.
pub(crate) fn open_browser(url: &str) -> bool {
    if std::env::var_os("CI").is_some() {
        return false;
    }
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else if cfg!(windows) {
        "explorer"
    } else {
        let display = ["DISPLAY", "WAYLAND_DISPLAY"]
            .iter()
            .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
        if !display {
            return false;
        }
        "xdg-open"
    };
    let spawned = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    match spawned {
        Ok(mut child) => {
            // Reaped in the background; the opener's outcome does not matter.
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            true
        }
        Err(_) => false,
    }
}

pub(crate) async fn disconnect(a: DisconnectArgs, conn: &Connection) -> anyhow::Result<ExitCode> {
    let api = Api::new(conn)?;
    let server = servers::resolve(&api, &a.server).await?;
    let id = servers::id_of(&server);
    api.call(
        Method::DELETE,
        &format!("/v1/credentials/{}", segment(&id)),
        None,
    )
    .await?;
    if a.json {
        output::json(&json!({"server_id": id, "disconnected": true}));
    } else {
        output::line(format!(
            "Disconnected {} (its tokens were revoked where the server allows it).",
            text(&server, "name")
        ));
    }
    Ok(ExitCode::SUCCESS)
}
