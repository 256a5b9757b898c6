//! `latchkey servers add|list|show|edit|rm|set-headers|clear-headers`: the MCP servers
//! Latchkey knows, through `/v1/servers`; and [`resolve`], which turns the SERVER
//! argument of every command (an id, or a name that only one server has) into a server.
//! Static-header values ([`crate::headers`]) go in request bodies only and are never
//! printed: answers say `set` or `not set`.

use std::io::BufRead as _;
use std::process::ExitCode;

use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::api::{Api, Connection, Failure, segment};
use crate::output::{self, Table, text};

/// `latchkey servers …`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Register an MCP server (its auth type is probed unless given).
    Add(AddArgs),
    /// List the servers.
    #[command(visible_alias = "ls")]
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one server and, for an OAuth server, your connection to it.
    Show {
        /// Server id or unique name.
        server: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Change a server's settings. A new URL or OAuth setting disconnects every user.
    Edit(EditArgs),
    /// Set your values of a static-header server's headers (an API key): `--header
    /// 'Name: value'`, or `--header Name` to read the value from standard input (without
    /// echo on a terminal); without `--header`, every header is read that way.
    SetHeaders {
        /// Server id or unique name.
        server: String,
        /// `Name: value`, or a name alone (repeatable).
        #[arg(long = "header", value_name = "NAME[: VALUE]", value_parser = crate::headers::parse)]
        headers: Vec<crate::headers::HeaderArg>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Clear your values of a static-header server's headers.
    ClearHeaders {
        /// Server id or unique name.
        server: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete a server and every credential stored for it (revoked first).
    #[command(visible_alias = "remove")]
    Rm {
        /// Server id or unique name.
        server: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Settings both `add` and `edit` take.
#[derive(Debug, clap::Args)]
pub(crate) struct Settings {
    /// How the server authenticates callers [default: probed].
    #[arg(long, value_parser = ["oauth", "none", "headers"])]
    auth_type: Option<String>,
    /// One token per user, or one shared by the tenant (connected by an admin).
    #[arg(long, value_parser = ["per_user", "shared"])]
    token_scope: Option<String>,
    /// The OAuth grant Latchkey uses.
    #[arg(long, value_parser = ["authorization_code", "client_credentials"])]
    grant_type: Option<String>,
    /// A client id registered at the server's authorization server (skips dynamic
    /// client registration).
    #[arg(long, value_name = "ID")]
    client_id: Option<String>,
    /// Read the client secret from the first line of standard input (secrets never go
    /// on the command line).
    #[arg(long)]
    client_secret_stdin: bool,
    /// The issuer of the authorization server the client is registered at (required
    /// with a client secret): the id and secret are sent to that server only.
    #[arg(long, value_name = "ISSUER")]
    issuer: Option<String>,
    /// Scopes to ask for, space-separated.
    #[arg(long, value_name = "SCOPES")]
    scopes: Option<String>,
    /// On `/mcp`, name the server's tools, prompts and resource URIs as the server does,
    /// without the `<server>__` and `latchkey://<server>/` prefixes. A name another
    /// server also has is then left out and refused, naming both servers.
    #[arg(long, conflicts_with = "prefixed")]
    unprefixed: bool,
    /// On `/mcp`, prefix the server's names again (the default).
    #[arg(long)]
    prefixed: bool,
}

/// `latchkey servers add`.
#[derive(Debug, clap::Args)]
pub(crate) struct AddArgs {
    /// A name for the server (unique names can be used instead of ids).
    name: String,
    /// The MCP endpoint URL.
    url: String,
    /// A static header the server takes (an API key): `Name: value`, or a name alone
    /// (set its value later with `latchkey servers set-headers`). Repeatable; implies
    /// auth type headers. The value is checked by the add-time probe.
    #[arg(long = "header", value_name = "NAME[: VALUE]", value_parser = crate::headers::parse)]
    headers: Vec<crate::headers::HeaderArg>,
    #[command(flatten)]
    settings: Settings,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `latchkey servers edit`.
#[derive(Debug, clap::Args)]
pub(crate) struct EditArgs {
    /// Server id or unique name.
    server: String,
    /// A new name.
    #[arg(long)]
    name: Option<String>,
    /// A new MCP endpoint URL (the auth type is probed again unless given).
    #[arg(long, value_name = "URL")]
    new_url: Option<String>,
    #[command(flatten)]
    settings: Settings,
    /// Remove the pre-registered client id.
    #[arg(long, conflicts_with = "client_id")]
    clear_client_id: bool,
    /// Remove the client secret.
    #[arg(long, conflicts_with = "client_secret_stdin")]
    clear_client_secret: bool,
    /// Remove the configured scopes.
    #[arg(long, conflicts_with = "scopes")]
    clear_scopes: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(cmd: Command, conn: &Connection) -> anyhow::Result<ExitCode> {
    let api = Api::new(conn)?;
    match cmd {
        Command::Add(a) => add(&api, a).await,
        Command::List { json } => list(&api, json).await,
        Command::Show { server, json } => show(&api, &server, json).await,
        Command::Edit(a) => edit(&api, a).await,
        Command::Rm { server, json } => rm(&api, &server, json).await,
        Command::SetHeaders {
            server,
            headers,
            json,
        } => set_headers(&api, &server, &headers, json).await,
        Command::ClearHeaders { server, json } => clear_headers(&api, &server, json).await,
    }
}

/// The server `wanted` names: the one with that id, else the only one with that name.
pub(crate) async fn resolve(api: &Api, wanted: &str) -> Result<Value, Failure> {
    let list = api.get("/v1/servers").await?;
    let servers = list.as_array().cloned().unwrap_or_default();
    if let Some(s) = servers.iter().find(|s| s["id"] == wanted) {
        return Ok(s.clone());
    }
    let named: Vec<&Value> = servers.iter().filter(|s| s["name"] == wanted).collect();
    match named.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Failure::not_found(format!(
            "no server has the id or name {wanted:?} (see `latchkey servers list`)"
        ))),
        many => Err(Failure::data(format!(
            "{} servers are named {wanted:?}; use an id: {}",
            many.len(),
            many.iter()
                .map(|s| text(s, "id"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The id of a server object.
pub(crate) fn id_of(server: &Value) -> String {
    text(server, "id")
}

fn read_secret_line() -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::data(format!("cannot read the client secret: {e}")))?;
    let secret = line.trim_end_matches(['\r', '\n']).to_owned();
    if secret.is_empty() {
        return Err(Failure::data(
            "--client-secret-stdin: standard input had no secret on its first line",
        ));
    }
    Ok(secret)
}

impl Settings {
    fn into_body(self, body: &mut Map<String, Value>) -> Result<(), Failure> {
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                body.insert(k.into(), Value::String(v));
            }
        };
        put("auth_type", self.auth_type);
        put("token_scope", self.token_scope);
        put("grant_type", self.grant_type);
        put("client_id", self.client_id);
        put("issuer", self.issuer);
        put("scopes", self.scopes);
        if self.unprefixed || self.prefixed {
            body.insert("unprefixed".into(), Value::Bool(self.unprefixed));
        }
        if self.client_secret_stdin {
            // Sent once in the request body; never printed (answers only say
            // `has_client_secret`).
            body.insert("client_secret".into(), Value::String(read_secret_line()?));
        }
        Ok(())
    }
}

async fn add(api: &Api, a: AddArgs) -> anyhow::Result<ExitCode> {
    let mut body = Map::new();
    body.insert("name".into(), Value::String(a.name));
    body.insert("url".into(), Value::String(a.url));
    crate::headers::into_server_body(&a.headers, &mut body);
    a.settings.into_body(&mut body)?;
    let server = api
        .call(Method::POST, "/v1/servers", Some(&Value::Object(body)))
        .await?;
    if a.json {
        output::json(&server);
    } else {
        output::line(format!(
            "Added server {} ({}), auth type {}.",
            text(&server, "name"),
            text(&server, "id"),
            text(&server, "auth_type")
        ));
        if server["auth_type"] == "oauth" {
            output::line(format!(
                "Connect to it with `latchkey connect {}`.",
                latchkey_gateway::error::shell_word(&text(&server, "name"))
            ));
        }
        if server["auth_type"] == "headers" {
            output::line(format!(
                "Headers: {}.",
                crate::headers::describe(&server["headers"])
            ));
            let unset = server["headers"]
                .as_object()
                .is_some_and(|h| h.values().any(|v| v != "set"));
            if unset {
                output::line(format!(
                    "Set their values with `latchkey servers set-headers {}`.",
                    text(&server, "name")
                ));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn set_headers(
    api: &Api,
    wanted: &str,
    headers: &[crate::headers::HeaderArg],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let server = resolve(api, wanted).await?;
    if server["auth_type"] != "headers" {
        return Err(Failure::data(format!(
            "{} does not take static headers (its auth type is {})",
            text(&server, "name"),
            text(&server, "auth_type")
        ))
        .into());
    }
    let configured: Vec<String> = server["header_names"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let values = crate::headers::values_body(headers, &configured)?;
    let id = id_of(&server);
    let answer = api
        .call(
            Method::PUT,
            &format!("/v1/servers/{}/headers", segment(&id)),
            Some(&json!({"values": values})),
        )
        .await?;
    if json {
        output::json(&answer);
    } else {
        output::line(format!(
            "Set the headers of {} ({}): {}.",
            text(&server, "name"),
            id,
            crate::headers::describe(&answer["headers"])
        ));
    }
    Ok(ExitCode::SUCCESS)
}

async fn clear_headers(api: &Api, wanted: &str, json: bool) -> anyhow::Result<ExitCode> {
    let server = resolve(api, wanted).await?;
    let id = id_of(&server);
    let answer = api
        .call(
            Method::DELETE,
            &format!("/v1/servers/{}/headers", segment(&id)),
            None,
        )
        .await?;
    if json {
        output::json(&answer);
    } else {
        output::line(format!(
            "Cleared your header values of {} ({id}).",
            text(&server, "name")
        ));
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(api: &Api, json: bool) -> anyhow::Result<ExitCode> {
    let servers = api.get("/v1/servers").await?;
    if json {
        output::json(&servers);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(&["ID", "NAME", "AUTH", "TOKEN SCOPE", "URL"]);
    for s in servers.as_array().map(Vec::as_slice).unwrap_or_default() {
        t.row(vec![
            text(s, "id"),
            text(s, "name"),
            text(s, "auth_type"),
            text(s, "token_scope"),
            text(s, "url"),
        ]);
    }
    t.print();
    Ok(ExitCode::SUCCESS)
}

async fn show(api: &Api, wanted: &str, json: bool) -> anyhow::Result<ExitCode> {
    let server = resolve(api, wanted).await?;
    let id = id_of(&server);
    // The caller's slot, for OAuth servers; best-effort (a member may not see a
    // shared slot).
    let connection = if server["auth_type"] == "oauth" {
        api.get(&format!("/v1/oauth/status/{}", segment(&id)))
            .await
            .ok()
    } else {
        None
    };
    if json {
        let mut v = server;
        if let Some(c) = connection {
            v["connection"] = c;
        }
        output::json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let mut pairs = vec![
        ("id", id),
        ("name", text(&server, "name")),
        ("url", text(&server, "url")),
        ("auth type", text(&server, "auth_type")),
        ("token scope", text(&server, "token_scope")),
        ("grant type", text(&server, "grant_type")),
        ("client id", text(&server, "client_id")),
        (
            "client secret",
            if server["has_client_secret"] == true {
                "set".into()
            } else {
                "-".into()
            },
        ),
        ("scopes", text(&server, "scopes")),
        (
            "names on /mcp",
            if server["unprefixed"] == true {
                "unprefixed (the server's own)".into()
            } else {
                "prefixed".into()
            },
        ),
    ];
    if server["auth_type"] == "headers" {
        pairs.push(("headers", crate::headers::describe(&server["headers"])));
    }
    if let Some(c) = connection {
        pairs.push(("connection", describe_connection(&c)));
    }
    output::fields(&pairs);
    Ok(ExitCode::SUCCESS)
}

fn describe_connection(c: &Value) -> String {
    if c["has_token"] != true {
        return "not connected (run `latchkey connect`)".into();
    }
    let mut s = String::from("connected");
    if c["expired"] == true {
        s.push_str(", access token expired");
    }
    if c["refreshable"] == true {
        s.push_str(", refreshable");
    }
    if let Some(issuer) = c.get("issuer").and_then(Value::as_str) {
        s.push_str(&format!(" (issuer {issuer})"));
    }
    s
}

async fn edit(api: &Api, a: EditArgs) -> anyhow::Result<ExitCode> {
    let mut body = Map::new();
    if let Some(n) = a.name {
        body.insert("name".into(), Value::String(n));
    }
    if let Some(u) = a.new_url {
        body.insert("url".into(), Value::String(u));
    }
    for (flag, key) in [
        (a.clear_client_id, "client_id"),
        (a.clear_client_secret, "client_secret"),
        (a.clear_scopes, "scopes"),
    ] {
        if flag {
            body.insert(key.into(), Value::Null);
        }
    }
    let server = a.server;
    let json = a.json;
    a.settings.into_body(&mut body)?;
    if body.is_empty() {
        return Err(Failure::new(
            crate::exit::USAGE,
            "nothing to change: give at least one setting (see `latchkey servers edit --help`)",
        )
        .into());
    }
    let id = id_of(&resolve(api, &server).await?);
    let updated = api
        .call(
            Method::PATCH,
            &format!("/v1/servers/{}", segment(&id)),
            Some(&Value::Object(body)),
        )
        .await?;
    if json {
        output::json(&updated);
    } else {
        output::line(format!(
            "Updated server {} ({}).",
            text(&updated, "name"),
            text(&updated, "id")
        ));
    }
    Ok(ExitCode::SUCCESS)
}

async fn rm(api: &Api, wanted: &str, json: bool) -> anyhow::Result<ExitCode> {
    let server = resolve(api, wanted).await?;
    let id = id_of(&server);
    api.call(
        Method::DELETE,
        &format!("/v1/servers/{}", segment(&id)),
        None,
    )
    .await?;
    if json {
        output::json(&json!({"id": id, "deleted": true}));
    } else {
        output::line(format!("Deleted server {} ({id}).", text(&server, "name")));
    }
    Ok(ExitCode::SUCCESS)
}
