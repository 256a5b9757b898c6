//! The auth-type probe (R-DISC-9, R-DISC-10): one unauthenticated MCP `initialize`
//! tells whether a server wants OAuth, nothing, or some other credential.

use std::time::Duration;

use latchkey_egress::{Egress, EgressRequest, UrlSource};

use crate::challenge::{self, BearerChallenge};

/// How a server authenticates callers, as far as a probe can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthType {
    /// A 401 whose challenge points at OAuth (`resource_metadata` or `scope`).
    Oauth,
    /// The server answered without asking for anything.
    None,
    /// Anything else (a bare `invalid_token`, another status, a failure): static
    /// headers such as an API key.
    Headers,
}

impl AuthType {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::Oauth => "oauth",
            AuthType::None => "none",
            AuthType::Headers => "headers",
        }
    }
}

impl std::str::FromStr for AuthType {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "oauth" => Ok(AuthType::Oauth),
            "none" => Ok(AuthType::None),
            "headers" => Ok(AuthType::Headers),
            _ => Err(()),
        }
    }
}

/// What the probe saw.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The classification.
    pub auth_type: AuthType,
    /// The HTTP status, when the server answered.
    pub status: Option<u16>,
    /// The Bearer challenge, when there was one.
    pub challenge: Option<BearerChallenge>,
    /// Why the probe could not classify from an answer (transport failure, refused URL).
    pub failure: Option<String>,
    /// Why the answer is not an MCP endpoint's (issue 17): no answer at all, a status
    /// that is neither success nor a credential demand, or a success that is not an MCP
    /// message. `None` when it is one.
    pub problem: Option<String>,
}

/// The probe's timeout (R-DISC-9).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Probes `url` with an unauthenticated `initialize` (5 s, no redirects). A session
/// the server opened is released by a best-effort `DELETE` in the background, which
/// never delays the answer (R-DISC-10).
pub async fn probe(egress: &Egress, url: &str, source: UrlSource) -> Probe {
    probe_with(egress, url, source, &http::HeaderMap::new()).await
}

/// [`probe`] sending `headers` as well (a static-header server's values, marked
/// sensitive by the caller): its verdict on them is the answer's status.
pub async fn probe_with(
    egress: &Egress,
    url: &str,
    source: UrlSource,
    headers: &http::HeaderMap,
) -> Probe {
    let body = serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "latchkey-probe", "version": env!("CARGO_PKG_VERSION")}}
    });
    let mut req = EgressRequest::post_json(url, source, &body, 64 * 1024)
        .header(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json, text/event-stream"),
        )
        .with_timeout(PROBE_TIMEOUT);
    for (name, value) in headers {
        req.headers.insert(name.clone(), value.clone());
    }
    let resp = match egress.send(req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(event = "probe.failed", error = %e);
            return Probe {
                auth_type: AuthType::Headers,
                status: None,
                challenge: None,
                problem: Some(format!("no answer from {}: {e}", host_of(url))),
                failure: Some(e.to_string()),
            };
        }
    };
    if let Some(session) = resp.header_str("mcp-session-id").map(str::to_owned) {
        let egress = egress.clone();
        let url = url.to_owned();
        let sent = headers.clone();
        tokio::spawn(async move {
            if let Ok(v) = http::HeaderValue::from_str(&session) {
                let mut del = EgressRequest::delete(&url, source)
                    .header(http::HeaderName::from_static("mcp-session-id"), v)
                    .with_timeout(PROBE_TIMEOUT);
                for (name, value) in &sent {
                    del.headers.insert(name.clone(), value.clone());
                }
                let _ = egress.send(del).await;
            }
        });
    }
    let values: Vec<&[u8]> = resp
        .headers
        .get_all(http::header::WWW_AUTHENTICATE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let ch = challenge::bearer_challenge(values);
    let auth_type = if resp.status == http::StatusCode::UNAUTHORIZED
        && ch
            .as_ref()
            .is_some_and(|c| c.resource_metadata.is_some() || c.scope.is_some())
    {
        AuthType::Oauth
    } else if resp.status.is_success() {
        AuthType::None
    } else {
        AuthType::Headers
    };
    Probe {
        auth_type,
        status: Some(resp.status.as_u16()),
        challenge: ch,
        failure: None,
        problem: not_mcp(url, &resp),
    }
}

/// Why an answer to `initialize` is not an MCP endpoint's, if it is not. A credential
/// demand (401, 403) is an MCP server that wants one; a success must be JSON-RPC
/// (JSON with `jsonrpc`, or an event stream).
fn not_mcp(url: &str, resp: &latchkey_egress::EgressResponse) -> Option<String> {
    let status = resp.status.as_u16();
    let path = path_of(url);
    match status {
        401 | 403 => None,
        200..=299 => {
            let ct = resp
                .header_str("content-type")
                .and_then(|v| v.split(';').next())
                .map(|v| v.trim().to_ascii_lowercase())
                .unwrap_or_default();
            let jsonrpc = ct == "application/json"
                && serde_json::from_slice::<serde_json::Value>(&resp.body)
                    .is_ok_and(|v| v.get("jsonrpc").is_some());
            (!(jsonrpc || ct == "text/event-stream")).then(|| {
                format!(
                    "HTTP {status} from {path}, but not an MCP answer ({}): not an MCP endpoint",
                    if ct.is_empty() {
                        "no content type"
                    } else {
                        &ct
                    }
                )
            })
        }
        500..=599 => Some(format!("HTTP {status} from {path}: the server failed")),
        _ => Some(format!("HTTP {status} from {path}: not an MCP endpoint")),
    }
}

/// `host[:port]` of a URL, for messages.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?', '#']).next().unwrap_or(rest)
}

/// The path of a URL (`/` when it has none), for messages.
fn path_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = &rest[host_of(url).len()..];
    let path = path.split(['?', '#']).next().unwrap_or(path);
    if path.is_empty() { "/" } else { path }
}
