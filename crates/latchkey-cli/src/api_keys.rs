//! `latchkey api-keys create|list|revoke`: Latchkey API keys for agents and MCP clients,
//! through `/v1/api-keys` (issue 19).
//!
//! A key acts as the person who created it, in their tenant, with never more than they
//! had (see `latchkey_gateway::api_keys`); it may be restricted to some servers
//! (`--servers`). The key itself is printed once, by `create`, and never again: `list`
//! shows its prefix only. On a terminal the key goes to standard output and a note that
//! it will not be shown again to standard error; otherwise standard output carries the
//! key alone, so `KEY=$(latchkey api-keys create --name ci)` captures exactly the key.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use latchkey_core::{Clock as _, Secret, SystemClock, UnixTime};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::api::{Api, Connection, Failure, segment};
use crate::output::{self, Table, text};

/// `latchkey api-keys …`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Create an API key that acts as you (for an agent, a script or an MCP client). The
    /// key is printed this once: store it where the client reads it.
    Create(CreateArgs),
    /// List your API keys (a tenant admin: every key of the tenant); never the keys
    /// themselves, only their first characters.
    #[command(visible_alias = "ls")]
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API key: it stops working at once.
    #[command(visible_alias = "rm")]
    Revoke {
        /// The key's id, or its name if only one key has it.
        key: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `latchkey api-keys create`.
#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    /// A name saying what the key is for (e.g. the agent or machine using it).
    #[arg(long)]
    name: String,
    /// How long the key works: a number and a unit, s, m, h, d or w (e.g. 30d, 12h)
    /// [default: Latchkey's `api_keys.default_ttl`, 30 days].
    #[arg(long, value_name = "DURATION", value_parser = parse_lifetime)]
    expires: Option<u64>,
    /// Restrict the key to these servers (ids or names, comma-separated) [default:
    /// every server you can use].
    #[arg(long, value_name = "SERVERS", value_delimiter = ',')]
    servers: Vec<String>,
    /// Print JSON (the key included) instead of the key alone.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(cmd: Command, conn: &Connection) -> anyhow::Result<ExitCode> {
    let api = Api::new(conn)?;
    match cmd {
        Command::Create(a) => create_command(&api, a).await,
        Command::List { json } => list(&api, json).await,
        Command::Revoke { key, json } => revoke(&api, &key, json).await,
    }
}

/// What to ask `POST /v1/api-keys` for.
#[derive(Debug, Default)]
pub(crate) struct NewKey {
    /// The key's name.
    pub(crate) name: String,
    /// Its lifetime in seconds (`None`: Latchkey's default).
    pub(crate) expires_in: Option<u64>,
    /// The servers it is restricted to (empty: none named, every server).
    pub(crate) servers: Vec<String>,
}

/// A key just created: its id, name and expiry, and the key (shown once).
pub(crate) struct Created {
    /// The whole answer without the key.
    pub(crate) view: Value,
    /// The key (`lk_…`).
    pub(crate) key: Secret,
}

/// Creates a key; the one place the CLI asks for one (`api-keys create`, `mcp-config
/// --create-key`). The server's refusals stay its own words, with the flag the user
/// typed named where the server names its field.
pub(crate) async fn create(api: &Api, k: &NewKey) -> Result<Created, Failure> {
    let mut body = Map::new();
    body.insert("name".into(), json!(k.name));
    if let Some(s) = k.expires_in {
        body.insert("expires_in".into(), json!(s));
    }
    // Sent only when asked for: a Latchkey without server restrictions refuses the
    // field, and a key without it is not restricted.
    if !k.servers.is_empty() {
        body.insert("servers".into(), json!(k.servers));
    }
    let mut answer = api
        .call(Method::POST, "/v1/api-keys", Some(&Value::Object(body)))
        .await
        .map_err(explain_refusal)?;
    let key = match answer.get("key").and_then(Value::as_str) {
        Some(k) if !k.is_empty() => Secret::new(k),
        _ => {
            return Err(Failure::new(
                crate::exit::FAILURE,
                "Latchkey created a key but its answer did not include it; revoke it with `latchkey api-keys revoke` and try again",
            ));
        }
    };
    if let Some(o) = answer.as_object_mut() {
        o.remove("key");
    }
    Ok(Created { view: answer, key })
}

/// The flag names and readable lifetimes in a refused create: Latchkey speaks of
/// `expires_in` in seconds, the user typed `--expires 400d`.
fn explain_refusal(mut f: Failure) -> Failure {
    if f.code == crate::exit::NOPERM && f.message.contains("HTTP 403") {
        f.message.push_str(
            "; an API key cannot create another key: use your own sign-in (`latchkey login`) or an access token",
        );
        return f;
    }
    let mut out = Vec::new();
    for line in f.message.lines() {
        out.push(
            if let Some((lead, why)) = line.split_once("  - expires_in: ") {
                format!("{lead}  - --expires: {}", readable_seconds(why))
            } else if let Some((lead, why)) = line.split_once("  - servers: ") {
                format!("{lead}  - --servers: {why}")
            } else {
                line.to_owned()
            },
        );
    }
    f.message = out.join("\n");
    f
}

/// `at most 7776000 seconds for a member key` → `at most 90d (7776000 seconds) for a
/// member key`: the first number of seconds, as the user would write it.
fn readable_seconds(text: &str) -> String {
    let words: Vec<&str> = text.split(' ').collect();
    for (i, w) in words.iter().enumerate() {
        if words.get(i + 1) == Some(&"seconds")
            && let Ok(n) = w.parse::<u64>()
        {
            let mut out: Vec<String> = words.iter().map(|s| (*s).to_owned()).collect();
            out[i] = format!("{} ({n}", lifetime(n));
            out[i + 1] = "seconds)".into();
            return out.join(" ");
        }
    }
    text.to_owned()
}

/// A lifetime in the largest unit that divides it (`90d`, `36h`, `61s`).
fn lifetime(secs: u64) -> String {
    // Days, not weeks: limits are configured and documented in days.
    for (unit, n) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= n && secs.is_multiple_of(n) {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

/// `--expires`: `30d`, `12h`, `90m`, `3600s`, `2w`.
fn parse_lifetime(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let factor: u64 = match unit.trim() {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        "" => return Err("give a unit: s, m, h, d or w (e.g. 30d)".into()),
        other => {
            return Err(format!(
                "unknown unit {other:?}: use s, m, h, d or w (e.g. 30d)"
            ));
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| "a number and a unit, e.g. 30d or 12h".to_owned())?;
    if n == 0 {
        return Err("must be more than zero".into());
    }
    n.checked_mul(factor).ok_or_else(|| "too long".to_owned())
}

async fn create_command(api: &Api, a: CreateArgs) -> anyhow::Result<ExitCode> {
    let servers: Vec<String> = a
        .servers
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if !a.servers.is_empty() && servers.is_empty() {
        return Err(Failure::data(
            "--servers: name at least one server (ids or names, comma-separated)",
        )
        .into());
    }
    let created = create(
        api,
        &NewKey {
            name: a.name,
            expires_in: a.expires,
            servers,
        },
    )
    .await?;
    if a.json {
        let mut v = created.view.clone();
        v["key"] = json!(created.key.expose());
        output::json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    output::line(created.key.expose());
    if std::io::stdout().is_terminal() {
        let v = &created.view;
        let only = restriction(v, &server_names(api).await);
        eprintln!(
            "Created API key {} ({}), {}{}.",
            text(v, "name"),
            text(v, "id"),
            match v.get("expires_at").and_then(Value::as_u64) {
                Some(t) => format!("expires {}", date(t)),
                None => "no expiry given".into(),
            },
            match only {
                Some(s) => format!(", for {s} only"),
                None => String::new(),
            }
        );
        eprintln!(
            "This is the only time the key is shown: copy it now. Use it as `--token` / LATCHKEY_TOKEN, or as `Authorization: Token <key>`."
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The servers a key is restricted to, as text (ids shown as the names in `names`,
/// `{id: name}`, where known); `None` when it is not restricted.
fn restriction(key: &Value, names: &Map<String, Value>) -> Option<String> {
    let list = key.get("servers")?.as_array()?;
    let names: Vec<String> = list
        .iter()
        .map(|s| match s {
            Value::String(s) => names
                .get(s)
                .and_then(Value::as_str)
                .map_or_else(|| s.clone(), str::to_owned),
            // `{id, name}` objects: the name the user knows.
            other => other
                .get("name")
                .or_else(|| other.get("id"))
                .and_then(Value::as_str)
                .map_or_else(|| other.to_string(), str::to_owned),
        })
        .collect();
    (!names.is_empty()).then(|| names.join(","))
}

/// Unix seconds as `2026-12-03 06:22Z` (UTC to the minute: enough for a table).
fn date(secs: u64) -> String {
    let full = UnixTime::from_secs(secs).to_rfc3339();
    match full.get(..16) {
        Some(head) => format!("{}Z", head.replacen('T', " ", 1)),
        None => full,
    }
}

fn time_cell(key: &Value, field: &str, absent: &str) -> String {
    key.get(field)
        .and_then(Value::as_u64)
        .map_or_else(|| absent.to_owned(), date)
}

/// `{id: name}` of the servers the caller sees, to show restrictions by name; empty
/// when they cannot be read (the ids are shown then).
async fn server_names(api: &Api) -> Map<String, Value> {
    let servers = api.get("/v1/servers").await.unwrap_or(Value::Null);
    servers
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| Some((s.get("id")?.as_str()?.to_owned(), s.get("name")?.clone())))
        .collect()
}

async fn list(api: &Api, json: bool) -> anyhow::Result<ExitCode> {
    let keys = api.get("/v1/api-keys").await?;
    if json {
        output::json(&keys);
        return Ok(ExitCode::SUCCESS);
    }
    let names = server_names(api).await;
    let now = SystemClock.now().as_secs();
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "PREFIX",
        "CREATED",
        "LAST USED",
        "EXPIRES",
        "SERVERS",
    ]);
    for k in keys.as_array().map(Vec::as_slice).unwrap_or_default() {
        let mut expires = time_cell(k, "expires_at", "-");
        if k.get("expires_at")
            .and_then(Value::as_u64)
            .is_some_and(|e| e <= now)
        {
            expires.push_str(" (expired)");
        }
        t.row(vec![
            text(k, "id"),
            text(k, "name"),
            text(k, "prefix"),
            time_cell(k, "created_at", "-"),
            time_cell(k, "last_used_at", "never"),
            expires,
            restriction(k, &names).unwrap_or_else(|| "all".into()),
        ]);
    }
    t.print();
    Ok(ExitCode::SUCCESS)
}

/// The key `wanted` names: the one with that id, else the only one with that name.
async fn resolve(api: &Api, wanted: &str) -> Result<Value, Failure> {
    let list = api.get("/v1/api-keys").await?;
    let keys = list.as_array().cloned().unwrap_or_default();
    if let Some(k) = keys.iter().find(|k| k["id"] == wanted) {
        return Ok(k.clone());
    }
    let named: Vec<&Value> = keys.iter().filter(|k| k["name"] == wanted).collect();
    match named.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Failure::not_found(format!(
            "no API key has the id or name {wanted:?} (see `latchkey api-keys list`)"
        ))),
        many => Err(Failure::data(format!(
            "{} API keys are named {wanted:?}; use an id: {}",
            many.len(),
            many.iter()
                .map(|k| text(k, "id"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

async fn revoke(api: &Api, wanted: &str, json: bool) -> anyhow::Result<ExitCode> {
    let key = resolve(api, wanted).await?;
    let id = text(&key, "id");
    api.call(
        Method::DELETE,
        &format!("/v1/api-keys/{}", segment(&id)),
        None,
    )
    .await?;
    if json {
        output::json(&json!({"id": id, "name": key["name"], "revoked": true}));
    } else {
        output::line(format!(
            "Revoked API key {} ({id}): it no longer works.",
            text(&key, "name")
        ));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_parse() {
        assert_eq!(parse_lifetime("30d"), Ok(30 * 86_400));
        assert_eq!(parse_lifetime("12h"), Ok(12 * 3_600));
        assert_eq!(parse_lifetime("90m"), Ok(5_400));
        assert_eq!(parse_lifetime("3600s"), Ok(3_600));
        assert_eq!(parse_lifetime("2w"), Ok(14 * 86_400));
        assert!(parse_lifetime("30").unwrap_err().contains("unit"));
        assert!(parse_lifetime("0d").is_err());
        assert!(parse_lifetime("d").is_err());
        assert!(parse_lifetime("3y").unwrap_err().contains("\"y\""));
        assert!(parse_lifetime("99999999999999999999w").is_err());
    }

    #[test]
    fn refusals_name_the_flag() {
        let f = Failure::from_answer(
            400,
            br#"{"code":"invalid_request","message":"invalid request","fields":[{"field":"expires_in","message":"at most 7776000 seconds for a member key"}]}"#,
        );
        let f = explain_refusal(f);
        assert_eq!(f.code, crate::exit::DATAERR);
        assert!(
            f.message
                .ends_with("  - --expires: at most 90d (7776000 seconds) for a member key"),
            "{}",
            f.message
        );
        assert_eq!(lifetime(61), "61s");
        assert_eq!(lifetime(7_200), "2h");
    }

    #[test]
    fn dates_and_restrictions() {
        assert_eq!(date(0), "1970-01-01 00:00Z");
        let names = Map::from_iter([("s1".to_owned(), json!("docs"))]);
        assert_eq!(restriction(&json!({"servers": null}), &names), None);
        assert_eq!(restriction(&json!({"servers": []}), &names), None);
        assert_eq!(
            restriction(
                &json!({"servers": ["s1", "s2", {"id": "x", "name": "b"}]}),
                &names
            )
            .as_deref(),
            Some("docs,s2,b")
        );
    }
}
