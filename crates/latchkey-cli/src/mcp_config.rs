//! `latchkey mcp-config [SERVER]`: ready-to-paste configuration for MCP clients.
//!
//! Claude (Desktop's `claude_desktop_config.json`, Claude Code's `.mcp.json`):
//! `mcpServers` entries that run `latchkey stdio <id>`, and for Claude Code, which
//! speaks HTTP, entries of `"type": "http"`. VS Code (`.vscode/mcp.json`): `servers`
//! entries of `"type": "http"`. Cursor (`~/.cursor/mcp.json`): `mcpServers` entries
//! with a `url`. The HTTP entries are `{url}/mcp/{id}` per server and `{url}/mcp`, the
//! federated server with every connected server's tools. A configured token is never
//! printed: a placeholder marks where the client must supply one.
//!
//! Where Latchkey wants a credential (`jwt` mode), the client needs an API key of its
//! own (issue 19): `--create-key` creates one named after the client (`mcp-config:
//! claude`; for one SERVER, restricted to it) and writes it into the configuration,
//! where it is shown this once. A person at a terminal who did not pass the flag is
//! asked. Local mode needs no key, and nothing is asked there.

use std::collections::BTreeSet;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::process::ExitCode;

use latchkey_core::Secret;
use serde_json::{Map, Value, json};

use crate::api::{Api, Connection, Failure};
use crate::api_keys::{self, NewKey};
use crate::output::{self, text};
use crate::servers;

/// Arguments of `latchkey mcp-config`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Only this server (id or unique name) [default: every server].
    server: Option<String>,
    /// Which client's configuration to print.
    #[arg(long, value_enum, default_value_t = Client::All)]
    client: Client,
    /// Print one JSON object keyed by client instead of annotated blocks.
    #[arg(long)]
    json: bool,
    /// Create an API key for this client (named `mcp-config: CLIENT`; with SERVER, for
    /// that server only) and write it into the configuration, where it is shown this
    /// once. Without it, a terminal asks when Latchkey wants a credential.
    #[arg(long)]
    create_key: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Client {
    /// Claude Desktop and Claude Code, through `latchkey stdio`.
    Claude,
    /// Claude Code over HTTP.
    ClaudeCode,
    /// Visual Studio Code.
    Vscode,
    /// Cursor.
    Cursor,
    /// All of them.
    All,
}

/// Placeholder for the credential in configurations (the real one is never printed).
const TOKEN_PLACEHOLDER: &str = "<your Latchkey API key>";
/// The key of the federated entry.
const FEDERATED: &str = "latchkey";

/// What every configuration is made of.
struct Entries {
    /// `(key, server id)`, keys unique.
    servers: Vec<(String, String)>,
    base: String,
    command: String,
    /// The credential the client sends: a key created for it, or the placeholder
    /// (when a token is configured here: this command's own is never printed).
    token: Option<Secret>,
}

pub(crate) async fn run(a: Args, conn: &Connection) -> anyhow::Result<ExitCode> {
    let api = Api::new(conn)?;
    let chosen = match &a.server {
        Some(s) => vec![servers::resolve(&api, s).await?],
        None => api
            .get("/v1/servers")
            .await?
            .as_array()
            .cloned()
            .unwrap_or_default(),
    };
    let mut used = BTreeSet::from([FEDERATED.to_owned()]);
    let servers = chosen
        .iter()
        .map(|s| {
            let base = slug(&text(s, "name"));
            let mut key = base.clone();
            let mut n = 2;
            while !used.insert(key.clone()) {
                key = format!("{base}-{n}");
                n += 1;
            }
            (key, servers::id_of(s))
        })
        .collect();
    let command = std::env::current_exe()
        .ok()
        .and_then(|p| p.to_str().map(str::to_owned))
        .unwrap_or_else(|| "latchkey".into());
    let created = if a.create_key || offer_key(&api).await? {
        // A configuration for one server gets a key for that server only.
        let (name, only) = match (&a.server, chosen.as_slice()) {
            (Some(_), [one]) => (
                format!("mcp-config: {} ({})", a.client.label(), text(one, "name")),
                vec![servers::id_of(one)],
            ),
            _ => (format!("mcp-config: {}", a.client.label()), Vec::new()),
        };
        let created = api_keys::create(
            &api,
            &NewKey {
                name,
                servers: only,
                ..NewKey::default()
            },
        )
        .await?;
        Some(created)
    } else {
        None
    };
    let token = match &created {
        Some(c) => Some(c.key.clone()),
        None => api.has_token().then(|| Secret::new(TOKEN_PLACEHOLDER)),
    };
    let e = Entries {
        servers,
        base: api.base().to_owned(),
        command,
        token,
    };
    let wanted: &[Client] = match a.client {
        Client::All => &[
            Client::Claude,
            Client::ClaudeCode,
            Client::Vscode,
            Client::Cursor,
        ],
        Client::Claude => &[Client::Claude],
        Client::ClaudeCode => &[Client::ClaudeCode],
        Client::Vscode => &[Client::Vscode],
        Client::Cursor => &[Client::Cursor],
    };
    let blocks: Vec<(&str, &str, Value)> = wanted
        .iter()
        .filter_map(|c| match c {
            Client::Claude => Some((
                "claude",
                "Claude Desktop (claude_desktop_config.json) and Claude Code (.mcp.json), through `latchkey stdio`",
                claude_stdio(&e),
            )),
            Client::ClaudeCode => Some((
                "claude_code",
                "Claude Code (.mcp.json), over HTTP",
                http_entries(&e, "mcpServers", Some("http")),
            )),
            Client::Vscode => Some((
                "vscode",
                "VS Code (.vscode/mcp.json)",
                http_entries(&e, "servers", Some("http")),
            )),
            Client::Cursor => Some((
                "cursor",
                "Cursor (~/.cursor/mcp.json or .cursor/mcp.json)",
                http_entries(&e, "mcpServers", None),
            )),
            Client::All => None,
        })
        .collect();
    if a.json {
        let all: Map<String, Value> = blocks
            .into_iter()
            .map(|(k, _, v)| (k.to_owned(), v))
            .collect();
        output::json(&Value::Object(all));
    } else if let [(_, _, only)] = blocks.as_slice() {
        output::json(only);
    } else {
        for (i, (_, title, v)) in blocks.iter().enumerate() {
            if i > 0 {
                output::line("");
            }
            output::line(format!("// {title}"));
            output::json(v);
        }
    }
    if let Some(c) = created {
        eprintln!(
            "Created API key {} ({}) for this configuration; it is shown only here. Revoke it with `latchkey api-keys revoke {}`.",
            text(&c.view, "name"),
            text(&c.view, "id"),
            text(&c.view, "id"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether to create a key without `--create-key`: only for a person at a terminal,
/// only where Latchkey wants a credential, and only if they say yes.
async fn offer_key(api: &Api) -> Result<bool, Failure> {
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return Ok(false);
    }
    if is_local(api).await? {
        return Ok(false);
    }
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "Create an API key for this client? [y/N] ");
    let _ = err.flush();
    drop(err);
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Failure::data(format!("cannot read the answer: {e}")))?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// Whether Latchkey runs in local mode (no credential wanted): `GET /v1/auth/config`'s
/// `mode`; from a Latchkey without that endpoint, `/v1/whoami`'s auth source when it
/// names one, else local when it answered without a credential being configured.
async fn is_local(api: &Api) -> Result<bool, Failure> {
    match api.get("/v1/auth/config").await {
        Ok(v) => return Ok(v["mode"] == "local"),
        Err(f) if f.code == crate::exit::NOINPUT => {}
        Err(f) => return Err(f),
    }
    let me = match api.get("/v1/whoami").await {
        Ok(me) => me,
        // Refused: a credential is wanted.
        Err(f) if f.code == crate::exit::NOPERM => return Ok(false),
        Err(f) => return Err(f),
    };
    match me.get("source").or_else(|| me.get("auth_source")) {
        Some(s) => Ok(s == "local"),
        None => Ok(!api.has_token()),
    }
}

impl Client {
    /// The name a key created for this client carries (`mcp-config: claude`).
    fn label(self) -> &'static str {
        match self {
            Client::Claude => "claude",
            Client::ClaudeCode => "claude-code",
            Client::Vscode => "vscode",
            Client::Cursor => "cursor",
            Client::All => "all clients",
        }
    }
}

/// A configuration key from a server name: lower-case letters, digits and `-`.
fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-').to_owned();
    if out.is_empty() { "server".into() } else { out }
}

/// `mcpServers` entries running `latchkey stdio <id>`.
fn claude_stdio(e: &Entries) -> Value {
    let mut m = Map::new();
    for (key, id) in &e.servers {
        let mut entry = json!({
            "command": e.command,
            "args": ["stdio", id, "--url", e.base],
        });
        if let Some(t) = &e.token {
            entry["env"] = json!({"LATCHKEY_TOKEN": t.expose()});
        }
        m.insert(key.clone(), entry);
    }
    json!({"mcpServers": m})
}

/// `{root: {...}}` of HTTP entries: the federated `/mcp` and `/mcp/{id}` per server.
fn http_entries(e: &Entries, root: &str, kind: Option<&str>) -> Value {
    let entry = |url: String| {
        let mut v = json!({});
        if let Some(k) = kind {
            v["type"] = json!(k);
        }
        v["url"] = json!(url);
        if let Some(t) = &e.token {
            v["headers"] = json!({"Authorization": format!("Token {}", t.expose())});
        }
        v
    };
    let mut m = Map::new();
    m.insert(FEDERATED.into(), entry(format!("{}/mcp", e.base)));
    for (key, id) in &e.servers {
        m.insert(
            key.clone(),
            entry(format!("{}/mcp/{}", e.base, crate::api::segment(id))),
        );
    }
    json!({root: m})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(slug("My Server (prod)"), "my-server-prod");
        assert_eq!(slug("!!!"), "server");
    }
}
