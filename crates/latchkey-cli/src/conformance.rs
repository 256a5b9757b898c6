//! `latchkey conformance-client URL`: a headless MCP client for the official
//! conformance suite. The harness appends the server URL as the last argument and
//! describes the scenario in `MCP_CONFORMANCE_SCENARIO`, `MCP_CONFORMANCE_CONTEXT` and
//! (0.2.x) `MCP_CONFORMANCE_PROTOCOL_VERSION`.
//!
//! The client connects, lists tools and calls the first one, answering every 401 and
//! 403 on any request with discovery, registration, consent and step-up. Consent is
//! headless: the authorization URL is fetched without following redirects and the
//! `Location` of the 302 is read as the authorization response. The harness runs on
//! `http://localhost`, so this command (and only this command) enables the egress
//! guard's loopback relaxation.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use latchkey_core::{Secret, SystemClock};
use latchkey_egress::{Egress, EgressConfig, LoopbackPolicy, UrlSource};
use latchkey_mcp::{Exchange, McpClient};
use latchkey_oauth::challenge;
use latchkey_oauth::client_auth::{AssertionKey, AuthMethod, ClientCredentials};
use latchkey_oauth::discovery::{Discoverer, DiscoveryOptions};
use latchkey_oauth::dpop::DPOP_NONCE_HEADER;
use latchkey_oauth::registration::ApplicationType;
use latchkey_oauth::session::{GrantStrategy, OAuthSession, RedirectReadingDriver, SessionConfig};
use rmcp::model::ProtocolVersion;
use serde_json::{Value, json};

/// The Client ID Metadata Document URL the suite expects (`auth/basic-cimd`).
const CONFORMANCE_CIMD_URL: &str = "https://conformance-test.local/client-metadata.json";
/// A loopback redirect URI; the mock AS redirects to it and nothing listens there.
const REDIRECT_URI: &str = "http://localhost:3000/callback";
/// The most HTTP attempts for one JSON-RPC request (401/403/nonce handling).
const MAX_ATTEMPTS: usize = 8;

/// Arguments of `latchkey conformance-client`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Arguments before the URL (ignored), then the MCP server URL.
    #[arg(required = true, num_args = 1..)]
    args: Vec<String>,
}

fn context() -> Value {
    std::env::var("MCP_CONFORMANCE_CONTEXT")
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_else(|| json!({}))
}

fn ctx_str<'a>(ctx: &'a Value, key: &str) -> Option<&'a str> {
    ctx.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Chooses the grant and the client from the scenario and its context.
fn session_config(scenario: &str, ctx: &Value) -> anyhow::Result<SessionConfig> {
    let client_id = ctx_str(ctx, "client_id");
    let secret = ctx_str(ctx, "client_secret").map(Secret::new);
    let mut preregistered = client_id.map(|id| match &secret {
        Some(s) => ClientCredentials::with_secret(id, s.clone(), AuthMethod::ClientSecretBasic),
        None => ClientCredentials::public(id),
    });
    let mut strategy = GrantStrategy::AuthorizationCode;
    if let Some(pem) = ctx_str(ctx, "private_key_pem") {
        let alg = ctx_str(ctx, "signing_algorithm").unwrap_or("ES256");
        let id = client_id.context("context has a private key but no client_id")?;
        preregistered = Some(ClientCredentials {
            client_id: id.to_owned(),
            secret: None,
            method: AuthMethod::PrivateKeyJwt,
            assertion_key: Some(AssertionKey::from_pem(Secret::new(pem), alg, None)?),
        });
        strategy = GrantStrategy::ClientCredentials;
    } else if let Some(id_token) = ctx_str(ctx, "idp_id_token") {
        let idp_client_id = ctx_str(ctx, "idp_client_id").unwrap_or_default();
        let idp_client = match ctx_str(ctx, "idp_client_secret") {
            Some(s) => ClientCredentials::with_secret(
                idp_client_id,
                Secret::new(s),
                AuthMethod::ClientSecretBasic,
            ),
            None => ClientCredentials::public(idp_client_id),
        };
        strategy = GrantStrategy::IdentityAssertion {
            idp_token_endpoint: ctx_str(ctx, "idp_token_endpoint")
                .context("context has no idp_token_endpoint")?
                .to_owned(),
            idp_issuer: ctx_str(ctx, "idp_issuer").unwrap_or_default().to_owned(),
            idp_client,
            subject_token: Secret::new(id_token),
            subject_token_type: "urn:ietf:params:oauth:token-type:id_token".into(),
        };
    } else if let Some(jwt) = ctx_str(ctx, "valid_jwt") {
        // Workload identity (SEP-1933): the workload's own JWT is the RFC 7523 grant.
        strategy = GrantStrategy::JwtBearer {
            assertion: Secret::new(jwt),
        };
    } else if scenario.contains("client-credentials") {
        strategy = GrantStrategy::ClientCredentials;
    }
    Ok(SessionConfig {
        redirect_uri: REDIRECT_URI.into(),
        client_name: "Latchkey conformance client".into(),
        preregistered,
        preregistered_issuer: None,
        cimd_url: Some(CONFORMANCE_CIMD_URL.into()),
        application_type: Some(ApplicationType::for_redirect(REDIRECT_URI)),
        scope: None,
        want_offline_access: true,
        strategy,
        dpop: true,
        discovery: DiscoveryOptions::default(),
    })
}

/// Sends one JSON-RPC message, handling authentication challenges, and returns the
/// successful exchange.
async fn call(
    mcp: &mut McpClient,
    session: &mut OAuthSession,
    driver: &RedirectReadingDriver,
    message: &Value,
) -> anyhow::Result<Exchange> {
    let method = message
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned();
    let mut message = message.clone();
    let mut renegotiated = false;
    for _ in 0..MAX_ATTEMPTS {
        let headers = session.auth_headers("POST", mcp.url())?;
        let ex = mcp.send(&message, &headers).await?;
        let status = ex.status.as_u16();
        if ex.status.is_success() {
            session.note_success();
            return Ok(ex);
        }
        let ch = challenge::bearer_challenge(ex.www_authenticate());
        match status {
            401 => {
                if ch.as_ref().and_then(|c| c.error.as_deref()) == Some("use_dpop_nonce")
                    && let Some(n) = ex
                        .headers
                        .get(DPOP_NONCE_HEADER)
                        .and_then(|v| v.to_str().ok())
                {
                    session.set_resource_nonce(n.to_owned());
                    continue;
                }
                session.on_unauthorized(ch.as_ref(), driver).await?;
            }
            403 => match ch {
                Some(c) if c.is_insufficient_scope() => {
                    session.on_insufficient_scope(&c, driver).await?
                }
                _ => bail!("{method}: HTTP 403 without an insufficient_scope challenge"),
            },
            400 if !renegotiated && mcp.renegotiate(&ex, &mut message) => renegotiated = true,
            400 if ch.as_ref().and_then(|c| c.error.as_deref()) == Some("use_dpop_nonce") => {
                match ex
                    .headers
                    .get(DPOP_NONCE_HEADER)
                    .and_then(|v| v.to_str().ok())
                {
                    Some(n) => session.set_resource_nonce(n.to_owned()),
                    None => bail!("{method}: use_dpop_nonce without a DPoP-Nonce"),
                }
            }
            _ => bail!("{method}: HTTP {status}"),
        }
    }
    Err(anyhow!("{method}: gave up after {MAX_ATTEMPTS} attempts"))
}

pub(crate) async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let url = a.args.last().cloned().context("no server URL")?;
    let scenario = std::env::var("MCP_CONFORMANCE_SCENARIO").unwrap_or_default();
    let version: ProtocolVersion = std::env::var("MCP_CONFORMANCE_PROTOCOL_VERSION")
        .ok()
        .and_then(|v| serde_json::from_value(Value::String(v)).ok())
        .unwrap_or(ProtocolVersion::V_2025_11_25);
    let ctx = context();
    let egress = Egress::new(EgressConfig {
        loopback: LoopbackPolicy::AllowInsecureLoopback,
        ..EgressConfig::default()
    })?;
    let clock = Arc::new(SystemClock);
    let discoverer = Arc::new(Discoverer::new(egress.clone(), clock.clone()));
    let mut session = OAuthSession::new(
        egress.clone(),
        clock,
        discoverer,
        url.clone(),
        session_config(&scenario, &ctx)?,
    );
    let driver = RedirectReadingDriver::new(egress.clone());
    let mut mcp = McpClient::new(egress, url, UrlSource::Operator, version);

    if !mcp.is_stateless() {
        let init = mcp.initialize_request();
        let ex = call(&mut mcp, &mut session, &driver, &init).await?;
        mcp.accept_initialize(&ex);
        let note = mcp.initialized_notification();
        call(&mut mcp, &mut session, &driver, &note).await?;
    }
    let list = mcp.request("tools/list", None);
    let tools = call(&mut mcp, &mut session, &driver, &list)
        .await?
        .into_result()?;
    mcp.remember_tools(&tools);
    // The scenario may name the calls to make (`toolCalls` in its context); the
    // multi-round-trip scenario exercises every tool it lists; otherwise call the first
    // tool listed, without arguments.
    let call_all = scenario == "sep-2322-client-request-state";
    let planned: Vec<(String, Value)> = match ctx.get("toolCalls").and_then(Value::as_array) {
        Some(calls) => calls
            .iter()
            .filter_map(|c| {
                let name = c.get("name")?.as_str()?.to_owned();
                Some((
                    name,
                    c.get("arguments").cloned().unwrap_or_else(|| json!({})),
                ))
            })
            .collect(),
        None => tools
            .get("tools")
            .and_then(Value::as_array)
            .map(|t| {
                t.iter()
                    .take(if call_all { t.len() } else { 1 })
                    .filter_map(|t| t.get("name").and_then(Value::as_str))
                    .map(|n| (n.to_owned(), json!({})))
                    .collect()
            })
            .unwrap_or_default(),
    };
    for (name, arguments) in planned {
        let mut req = mcp.request(
            "tools/call",
            Some(json!({"name": name, "arguments": arguments})),
        );
        for _ in 0..MAX_ATTEMPTS {
            let result = call(&mut mcp, &mut session, &driver, &req)
                .await?
                .into_result()?;
            // A headless client cannot answer a person's questions: it declines them.
            match mcp.input_required_retry(&req, &result, |_, _| json!({"action": "decline"})) {
                Some(next) => req = next,
                None => break,
            }
        }
    }
    tracing::info!(
        event = "conformance.done",
        scenario,
        authorizations = session.authorizations()
    );
    Ok(ExitCode::SUCCESS)
}
