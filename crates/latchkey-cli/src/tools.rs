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
    /// List a server's tools with their parameters.
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
    /// All arguments as one JSON object, e.g. '{"text": "hi"}' (instead of --arg).
    #[arg(long = "args-json", value_name = "OBJECT", conflicts_with = "args")]
    args_json: Option<String>,
    /// Print the whole MCP tool result as JSON instead of its text content.
    #[arg(long, alias = "raw")]
    json: bool,
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
    let mut t = Table::new(&["NAME", "PARAMETERS (* required)", "DESCRIPTION"]);
    for tool in answer["tools"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let description = text(tool, "description");
        let first = description.lines().next().unwrap_or_default();
        t.row(vec![
            text(tool, "name"),
            parameters(tool.get("inputSchema").unwrap_or(&Value::Null)),
            shorten(first, 80),
        ]);
    }
    t.print();
    Ok(ExitCode::SUCCESS)
}

/// A tool's parameters from its input schema, for a person: `name*: type` (`*` marks a
/// required one), comma-separated, the required ones first (in the schema's `required`
/// order), then the others by name; `-` when it takes none.
fn parameters(schema: &Value) -> String {
    let Some(props) = schema["properties"].as_object().filter(|p| !p.is_empty()) else {
        return "-".into();
    };
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out: Vec<String> = required
        .iter()
        .filter_map(|name| Some(format!("{name}*: {}", type_of(props.get(*name)?))))
        .collect();
    let mut optional: Vec<(&String, &Value)> = props
        .iter()
        .filter(|(name, _)| !required.contains(&name.as_str()))
        .collect();
    optional.sort_by(|a, b| a.0.cmp(b.0));
    out.extend(
        optional
            .into_iter()
            .map(|(name, p)| format!("{name}: {}", type_of(p))),
    );
    out.join(", ")
}

/// A property's type in a few characters: `string`, `number|null`, `string[]`, a short
/// enum as its values (`"c"|"f"`), else `any`.
fn type_of(p: &Value) -> String {
    if let Some(values) = p["enum"].as_array()
        && !values.is_empty()
        && values.len() <= 4
    {
        return values
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("|");
    }
    match &p["type"] {
        Value::String(t) if t == "array" => match p["items"]["type"].as_str() {
            Some(item) => format!("{item}[]"),
            None => "array".into(),
        },
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("|"),
        _ if p.get("enum").is_some() => "enum".into(),
        _ => "any".into(),
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The arguments object from `--arg k=v …` or `--args-json '{…}'`.
fn arguments(args: &[String], json: Option<&str>) -> Result<Value, Failure> {
    if let Some(j) = json {
        return match serde_json::from_str::<Value>(j) {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(_) => Err(Failure::data(
                "--args-json: the arguments must be a JSON object",
            )),
            Err(e) => Err(Failure::data(format!("--args-json: not valid JSON: {e}"))),
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
    let body = arguments(&a.args, a.args_json.as_deref())?;
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
    if a.json {
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
    fn parameters_from_the_schema() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": ["integer", "null"]},
                "unit": {"enum": ["c", "f"]},
                "tags": {"type": "array", "items": {"type": "string"}},
                "extra": {"anyOf": [{"type": "string"}, {"type": "object"}]},
            },
            "required": ["city", "unit"],
        });
        assert_eq!(
            parameters(&schema),
            r#"city*: string, unit*: "c"|"f", days: integer|null, extra: any, tags: string[]"#
        );
        assert_eq!(parameters(&serde_json::json!({"type": "object"})), "-");
        assert_eq!(parameters(&Value::Null), "-");
    }

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
