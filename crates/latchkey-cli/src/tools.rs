//! `latchkey tools list SERVER` and `latchkey tools call SERVER TOOL`, through
//! `GET /v1/servers/{id}/tools` and `POST /v1/servers/{id}/tools/{name}/call` (Latchkey
//! injects the caller's token for that server).

use std::process::ExitCode;

use reqwest::Method;
use serde_json::{Map, Value};

use crate::api::{Api, Connection, Failure, segment};
use crate::exit;
use crate::output::{self, Table, text};
use crate::servers;

/// `latchkey tools …`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// List a server's tools.
    #[command(visible_alias = "ls")]
    List {
        /// Server id or unique name.
        server: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Call a tool and print its result (exit status 1 when the tool reports an
    /// error).
    Call(CallArgs),
}

/// `latchkey tools call`.
#[derive(Debug, clap::Args)]
pub(crate) struct CallArgs {
    /// Server id or unique name.
    server: String,
    /// The tool's name.
    tool: String,
    /// An argument; VALUE is taken as JSON when it parses (`n=3`, `ok=true`,
    /// `list=[1,2]`), else as a string. Repeatable.
    #[arg(long = "arg", value_name = "KEY=VALUE")]
    args: Vec<String>,
    /// All arguments as one JSON object (instead of --arg).
    #[arg(long = "json", value_name = "OBJECT", conflicts_with = "args")]
    json_args: Option<String>,
    /// Print the whole MCP tool result as JSON instead of its text content.
    #[arg(long)]
    raw: bool,
}

pub(crate) async fn run(cmd: Command, conn: &Connection) -> anyhow::Result<ExitCode> {
    let api = Api::new(conn)?;
    match cmd {
        Command::List { server, json } => list(&api, &server, json).await,
        Command::Call(a) => call(&api, a).await,
    }
}

async fn list(api: &Api, server: &str, json: bool) -> anyhow::Result<ExitCode> {
    let id = servers::id_of(&servers::resolve(api, server).await?);
    let answer = api
        .call_with_timeout(
            Method::GET,
            &format!("/v1/servers/{}/tools", segment(&id)),
            None,
            None,
        )
        .await?;
    if json {
        output::json(&answer);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(&["NAME", "DESCRIPTION"]);
    for tool in answer["tools"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let description = text(tool, "description");
        let first = description.lines().next().unwrap_or_default();
        t.row(vec![text(tool, "name"), shorten(first, 100)]);
    }
    t.print();
    Ok(ExitCode::SUCCESS)
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The arguments object from `--arg k=v …` or `--json '{…}'`.
fn arguments(args: &[String], json: Option<&str>) -> Result<Value, Failure> {
    if let Some(j) = json {
        return match serde_json::from_str::<Value>(j) {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(_) => Err(Failure::data("--json: the arguments must be a JSON object")),
            Err(e) => Err(Failure::data(format!("--json: not valid JSON: {e}"))),
        };
    }
    let mut m = Map::new();
    for a in args {
        let Some((k, v)) = a.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(Failure::data(format!("--arg {a:?}: expected KEY=VALUE")));
        };
        if m.contains_key(k) {
            return Err(Failure::data(format!("--arg: {k:?} given twice")));
        }
        let value = serde_json::from_str::<Value>(v).unwrap_or_else(|_| Value::String(v.into()));
        m.insert(k.to_owned(), value);
    }
    Ok(Value::Object(m))
}

async fn call(api: &Api, a: CallArgs) -> anyhow::Result<ExitCode> {
    let body = arguments(&a.args, a.json_args.as_deref())?;
    let id = servers::id_of(&servers::resolve(api, &a.server).await?);
    let result = api
        .call_with_timeout(
            Method::POST,
            &format!(
                "/v1/servers/{}/tools/{}/call",
                segment(&id),
                segment(&a.tool)
            ),
            Some(&body),
            None,
        )
        .await?;
    if a.raw {
        output::json(&result);
    } else {
        print_content(&result);
    }
    if result.get("isError") == Some(&Value::Bool(true)) {
        return Err(Failure::new(
            exit::FAILURE,
            format!("the tool {} reported an error", a.tool),
        )
        .into());
    }
    Ok(ExitCode::SUCCESS)
}

/// A tool result for a person: text blocks as they are, other blocks described,
/// structured content as JSON when there is no text.
fn print_content(result: &Value) {
    let blocks = result["content"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut printed = false;
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => output::line(text(b, "text")),
            Some("resource_link") => output::line(format!("[resource {}]", text(b, "uri"))),
            Some("resource") => output::line(format!(
                "[resource {}]",
                b.pointer("/resource/uri")
                    .and_then(Value::as_str)
                    .unwrap_or("-")
            )),
            Some(kind) => output::line(format!("[{kind} {}]", text(b, "mimeType"))),
            None => output::json(b),
        }
        printed = true;
    }
    if !printed && let Some(s) = result.get("structuredContent") {
        output::json(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_are_json_when_they_parse() {
        let v = arguments(
            &[
                "a=3".into(),
                "b=x y".into(),
                "c=true".into(),
                "d=[1]".into(),
                "e=".into(),
                "f=a=b".into(),
            ],
            None,
        )
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": 3, "b": "x y", "c": true, "d": [1], "e": "", "f": "a=b"})
        );
        assert_eq!(
            arguments(&["=1".into()], None).unwrap_err().code,
            exit::DATAERR
        );
        assert_eq!(
            arguments(&["x".into()], None).unwrap_err().code,
            exit::DATAERR
        );
        assert_eq!(
            arguments(&["a=1".into(), "a=2".into()], None)
                .unwrap_err()
                .code,
            exit::DATAERR
        );
        assert_eq!(arguments(&[], Some("[1]")).unwrap_err().code, exit::DATAERR);
        assert_eq!(
            arguments(&[], Some(r#"{"k":1}"#)).unwrap(),
            serde_json::json!({"k": 1})
        );
    }
}
