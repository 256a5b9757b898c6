//! `latchkey`: the command line.
#![forbid(unsafe_code)]

mod conformance;
mod doctor;
mod keys;
mod serve;
mod state;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Latchkey: an OAuth 2.1 credential broker and gateway for MCP servers.
#[derive(Debug, Parser)]
#[command(name = "latchkey", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker (loopback, embedded SQLite and a generated key file by default).
    Serve(serve::Args),
    /// Walk OAuth discovery for an MCP server URL and report what it advertises.
    Doctor(doctor::Args),
    /// Headless MCP OAuth client driven by the official MCP conformance suite
    /// (reads MCP_CONFORMANCE_SCENARIO, MCP_CONFORMANCE_CONTEXT, MCP_CONFORMANCE_PROTOCOL_VERSION).
    ConformanceClient(conformance::Args),
    /// Manage the encryption keys: add a new current key, re-encrypt under it.
    #[command(subcommand)]
    Keys(keys::Command),
}

/// Exit codes scripts can rely on (sysexits.h values).
mod exit {
    use std::process::ExitCode;

    /// Configuration is missing or invalid (e.g. no encryption key).
    pub(crate) const CONFIG: u8 = 78;
    /// A service Latchkey needs (the database) is unavailable; retrying may help.
    pub(crate) const UNAVAILABLE: u8 = 69;
    /// Either code as an [`ExitCode`].
    pub(crate) fn code(c: u8) -> ExitCode {
        ExitCode::from(c)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("LATCHKEY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // rmcp logs whole JSON-RPC messages at debug (tool arguments and results, and the
    // authorization URLs of consent elicitations): capped at info whatever the setting.
    if let Ok(cap) = "rmcp=info".parse() {
        filter = filter.add_directive(cap);
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("latchkey: cannot start the async runtime: {e}");
            return ExitCode::from(70);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve(a) => serve::run(a).await,
            Command::Doctor(a) => doctor::run(a).await,
            Command::ConformanceClient(a) => conformance::run(a).await,
            Command::Keys(c) => keys::run(c).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("latchkey: {e:#}");
            ExitCode::FAILURE
        }
    }
}
