//! `latchkey doctor URL`: probe an MCP server without credentials and walk discovery,
//! printing every request and what it showed.

use std::process::ExitCode;
use std::sync::Arc;

use latchkey_core::SystemClock;
use latchkey_egress::{Egress, EgressConfig, LoopbackPolicy, UrlSource};
use latchkey_oauth::discovery::{Discoverer, DiscoveryOptions};
use latchkey_oauth::probe;

/// Arguments of `latchkey doctor`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The MCP server URL.
    url: String,
    /// Allow http and loopback addresses (local development only).
    #[arg(long)]
    allow_insecure_loopback: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[allow(clippy::print_stdout)] // this command's output is its product
pub(crate) async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let egress = Egress::new(EgressConfig {
        loopback: if a.allow_insecure_loopback {
            LoopbackPolicy::AllowInsecureLoopback
        } else {
            LoopbackPolicy::Deny
        },
        ..EgressConfig::default()
    })?;
    let p = probe::probe(&egress, &a.url, UrlSource::Operator).await;
    if let Some(why) = &p.failure {
        anyhow::bail!("probe of {} failed: {why}", a.url);
    }
    let ch = p.challenge.clone();
    let status = p.status.unwrap_or(0);
    let discoverer = Discoverer::new(egress, Arc::new(SystemClock));
    let rm = ch.as_ref().and_then(|c| c.resource_metadata.as_deref());
    let result = if status == 401 {
        Some(
            discoverer
                .discover(&a.url, rm, DiscoveryOptions::default())
                .await,
        )
    } else {
        None
    };
    if a.json {
        let disc = match &result {
            Some(Ok(d)) => serde_json::json!({
                "resource": d.resource, "issuer": d.issuer, "legacy": d.legacy,
                "authorization_endpoint": d.metadata.authorization_endpoint,
                "token_endpoint": d.metadata.token_endpoint,
                "registration_endpoint": d.metadata.registration_endpoint,
                "pkce_s256": d.metadata.supports_s256(),
                "steps": d.steps.iter().map(|s| serde_json::json!({"url": s.url, "outcome": s.outcome})).collect::<Vec<_>>(),
            }),
            Some(Err(e)) => serde_json::json!({"error": e.to_string()}),
            None => serde_json::Value::Null,
        };
        println!(
            "{}",
            serde_json::json!({"status": status, "auth_type": p.auth_type, "challenge": ch.as_ref().map(|c| serde_json::json!({"scheme": c.scheme, "resource_metadata": c.resource_metadata, "scope": c.scope, "error": c.error})), "discovery": disc})
        );
    } else {
        println!(
            "probe: HTTP {status} from {} (auth type: {})",
            a.url,
            p.auth_type.as_str()
        );
        match &ch {
            Some(c) => println!(
                "challenge: {} resource_metadata={:?} scope={:?} error={:?}",
                c.scheme, c.resource_metadata, c.scope, c.error
            ),
            None => println!("challenge: none"),
        }
        match &result {
            None => println!("the server did not ask for OAuth (no 401): nothing to discover"),
            Some(Err(e)) => println!("discovery failed: {e}"),
            Some(Ok(d)) => {
                for s in &d.steps {
                    println!("  GET {} -> {}", s.url, s.outcome);
                }
                println!("resource: {}", d.resource);
                println!(
                    "issuer: {}{}",
                    d.issuer,
                    if d.legacy {
                        " (2025-03-26 fallback)"
                    } else {
                        ""
                    }
                );
                println!("token endpoint: {}", d.metadata.token_endpoint);
                if !d.metadata.supports_s256() {
                    println!(
                        "problem: the AS does not advertise PKCE S256; Latchkey will refuse it"
                    );
                }
            }
        }
    }
    Ok(match result {
        Some(Err(_)) => ExitCode::from(2),
        _ => ExitCode::SUCCESS,
    })
}
