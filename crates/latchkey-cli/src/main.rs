//! `latchkey`: the command line.
#![forbid(unsafe_code)]

mod api;
mod api_keys;
mod conformance;
mod connect;
mod doctor;
mod headers;
mod keys;
mod lock;
mod logging;
mod login;
mod mcp_config;
mod output;
mod serve;
mod servers;
mod state;
mod stdio;
mod tools;

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};

/// The exit status table, shown by `--help` (and in README.md).
const EXIT_STATUS: &str = "\
Exit status:
  0   success
  1   failure: a tool reported an error, a connection attempt failed, doctor found a
      broken OAuth chain, anything not listed below
  2   usage error (bad command line)
  65  invalid input: a bad --arg/--args-json, an ambiguous server name, Latchkey answered
      400 invalid_request
  66  not found: no server with that id or name (Latchkey answered 404)
  69  unavailable: Latchkey (or the server doctor probes) cannot be reached, or it
      answered 502/503 (an upstream or its database is down)
  70  internal error
  75  try again later: the server needs your consent first (run `latchkey connect`),
      a conflicting operation (409), or no consent before --timeout
  77  permission denied: Latchkey refused the credential (401) or the action (403);
      run `latchkey login`, or see --token / LATCHKEY_TOKEN
  78  configuration missing or invalid: a bad --url or --token, no encryption key";

/// How to begin, shown by `--help` after the one-line description.
const GETTING_STARTED: &str = "\
Latchkey: an OAuth 2.1 credential broker and gateway for MCP servers

It signs in to MCP servers for you (OAuth consent in the browser, or an API key), keeps
the tokens encrypted and refreshed, and adds them to every call your MCP clients make
through it.

Getting started:
  latchkey serve                       start it (then open http://127.0.0.1:7878)
  latchkey servers add NAME URL        register an MCP server
  latchkey connect NAME                sign in to it in your browser
  latchkey tools list NAME             see its tools
  latchkey mcp-config                  configuration to paste into your MCP client

For a team's Latchkey (jwt mode), sign in first: latchkey login --url URL";

/// Latchkey: an OAuth 2.1 credential broker and gateway for MCP servers.
#[derive(Debug, Parser)]
#[command(
    name = "latchkey",
    version,
    long_about = GETTING_STARTED,
    after_long_help = EXIT_STATUS
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    connection: api::Connection,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start Latchkey: the web UI, the API and the MCP endpoints (by default on
    /// 127.0.0.1:7878, with an SQLite database and a generated key file).
    Serve(serve::Args),
    /// Manage the MCP servers Latchkey knows (needs a running `latchkey serve`).
    #[command(subcommand)]
    Servers(servers::Command),
    /// Sign in to a server that uses OAuth: approve the access in your browser, and
    /// Latchkey keeps the tokens.
    Connect(connect::ConnectArgs),
    /// Sign out of a server: your tokens for it are revoked and forgotten.
    Disconnect(connect::DisconnectArgs),
    /// List a server's tools and call them (Latchkey adds your credentials).
    #[command(subcommand)]
    Tools(tools::Command),
    /// Relay one server to an MCP client that only runs local (stdio) servers: use
    /// `latchkey stdio SERVER` as the command in the client's configuration.
    Stdio(stdio::Args),
    /// Print ready-to-paste configuration for MCP clients (Claude, VS Code, Cursor).
    McpConfig(mcp_config::Args),
    /// Manage API keys for agents and MCP clients: create one (shown once), list them,
    /// revoke one.
    #[command(subcommand)]
    ApiKeys(api_keys::Command),
    /// Check an MCP server's OAuth setup: walk its discovery and report what it
    /// advertises, what is missing or wrong, and why.
    Doctor(doctor::Args),
    /// For the MCP conformance suite's harness, not for people: a headless MCP OAuth
    /// client (reads MCP_CONFORMANCE_SCENARIO, MCP_CONFORMANCE_CONTEXT,
    /// MCP_CONFORMANCE_PROTOCOL_VERSION).
    #[command(hide = true)]
    ConformanceClient(conformance::Args),
    /// Sign in to a Latchkey that runs for a team (jwt mode) through its OpenID
    /// provider, in your browser or with a code (--device); the other commands then
    /// use that sign-in when no --token is given.
    Login(login::LoginArgs),
    /// Forget the sign-in `latchkey login` stored for --url (and revoke it at the
    /// provider when it can).
    Logout(login::LogoutArgs),
    /// Manage the keys that encrypt stored secrets: add a new current key, re-encrypt
    /// under it.
    #[command(subcommand)]
    Keys(keys::Command),
    /// Print a shell completion script (e.g. `latchkey completions bash > /etc/bash_completion.d/latchkey`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Exit codes scripts can rely on (sysexits.h values); the table is [`EXIT_STATUS`].
/// API answers are mapped to them in one place, `api::Failure::from_answer`.
mod exit {
    use std::process::ExitCode;

    /// Anything else that failed.
    pub(crate) const FAILURE: u8 = 1;
    /// A bad command line (clap's own code).
    pub(crate) const USAGE: u8 = 2;
    /// Bad input data (an argument's value, a 400 from Latchkey).
    pub(crate) const DATAERR: u8 = 65;
    /// The thing named does not exist (404).
    pub(crate) const NOINPUT: u8 = 66;
    /// A service needed (Latchkey, its database, an upstream) is unavailable; retrying
    /// may help.
    pub(crate) const UNAVAILABLE: u8 = 69;
    /// An internal error.
    pub(crate) const SOFTWARE: u8 = 70;
    /// Try again later: consent needed first, a conflict, a timeout.
    pub(crate) const TEMPFAIL: u8 = 75;
    /// The credential was refused or may not do this (401/403).
    pub(crate) const NOPERM: u8 = 77;
    /// Configuration is missing or invalid (e.g. no encryption key).
    pub(crate) const CONFIG: u8 = 78;
    /// A code as an [`ExitCode`].
    pub(crate) fn code(c: u8) -> ExitCode {
        ExitCode::from(c)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let spec = std::env::var("LATCHKEY_LOG").ok();
    let filter = match logging::filter(spec.as_deref()) {
        Ok(f) => f,
        Err(logging::BadFilter(e)) => {
            eprintln!("latchkey: {e}");
            return exit::code(exit::CONFIG);
        }
    };
    // Colours only for a person at a terminal, and never when NO_COLOR is set.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("latchkey: cannot start the async runtime: {e}");
            return exit::code(exit::SOFTWARE);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve(a) => serve::run(a).await,
            Command::Doctor(a) => doctor::run(a).await,
            Command::ConformanceClient(a) => conformance::run(a).await,
            Command::Keys(c) => keys::run(c).await,
            Command::Servers(c) => servers::run(c, &cli.connection).await,
            Command::Connect(a) => connect::connect(a, &cli.connection).await,
            Command::Disconnect(a) => connect::disconnect(a, &cli.connection).await,
            Command::Tools(c) => tools::run(c, &cli.connection).await,
            Command::Login(a) => login::login(a, &cli.connection).await,
            Command::Logout(a) => login::logout(a, &cli.connection).await,
            Command::Stdio(a) => stdio::run(a, &cli.connection).await,
            Command::McpConfig(a) => mcp_config::run(a, &cli.connection).await,
            Command::ApiKeys(c) => api_keys::run(c, &cli.connection).await,
            Command::Completions { shell } => {
                let mut out = std::io::stdout();
                clap_complete::generate(shell, &mut Cli::command(), "latchkey", &mut out);
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<api::Failure>() {
            Some(f) => {
                eprintln!("latchkey: {}", f.message);
                exit::code(f.code)
            }
            None => {
                eprintln!("latchkey: {e:#}");
                exit::code(exit::FAILURE)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
