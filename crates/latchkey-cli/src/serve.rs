//! `latchkey serve`: the broker. With no configuration it listens on loopback, keeps its
//! data in an SQLite file and generates its encryption key on first start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use latchkey_core::{Clock, SystemClock};
use latchkey_gateway::Config;

use crate::exit;
use crate::state::StateArgs;

/// Arguments of `latchkey serve`; its long help lists every setting
/// (`latchkey_gateway::config::SETTINGS`).
#[derive(Debug, clap::Args)]
#[command(after_long_help = latchkey_gateway::config::settings_help())]
pub(crate) struct Args {
    /// A TOML configuration file; `LATCHKEY_*` environment variables override it.
    #[arg(long, env = "LATCHKEY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    state: StateArgs,
}

#[allow(clippy::print_stdout)] // the start-up announcement is this command's output
pub(crate) async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let env: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("LATCHKEY_"))
        .collect();
    let mut cfg = match Config::load(a.config.as_deref(), &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("latchkey: {e}");
            return Ok(exit::code(exit::CONFIG));
        }
    };
    let state = a
        .state
        .with_defaults(
            cfg.data_dir.clone(),
            cfg.database_url.clone(),
            cfg.key_file.clone(),
        )
        .resolve()?;
    let store = match state.open_store().await {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    // One process per SQLite database, taken before anything is written (the re-seal
    // below writes); held until this function returns.
    let _lock = match &state.database {
        latchkey_vault::store::DatabaseUrl::Sqlite(path) => match crate::lock::take(path) {
            Ok(l) => Some(l),
            Err(crate::lock::Held(why)) => {
                eprintln!("latchkey: {why}");
                return Ok(exit::code(exit::UNAVAILABLE));
            }
        },
        latchkey_vault::store::DatabaseUrl::Postgres(_) => None,
    };
    // The keys against the database (a lost or wrong key stops here, exit 78), then
    // the re-seal of values written before they were bound to their rows.
    let keyring = Arc::new(state.keyring());
    if let Err(code) = state.check_keys(store.as_ref(), &keyring).await {
        return Ok(code);
    }
    if let Err(code) = state.reseal(store.as_ref(), &keyring).await {
        return Ok(code);
    }
    let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("latchkey: cannot listen on {}: {e}", cfg.listen);
            return Ok(exit::code(exit::UNAVAILABLE));
        }
    };
    let local = listener.local_addr()?;
    if cfg.listen.port() == 0 && cfg.public_url == format!("http://{}", cfg.listen) {
        cfg.public_url = format!("http://{local}");
    }
    // The address actually bound: its origins are the ones the guard trusts.
    cfg.listen = local;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    if let Err(e) = keyring.check() {
        eprintln!("latchkey: {e} ({})", state.key_location());
        return Ok(exit::code(exit::CONFIG));
    }
    let app_state = match latchkey_gateway::state(&cfg, store, keyring, clock) {
        Ok(st) => st,
        Err(e) => {
            eprintln!("latchkey: {e}");
            return Ok(exit::code(exit::CONFIG));
        }
    };
    // A sign-in provider that is not what `[auth.login]` says stops start-up (issue 19).
    if let Err(e) = latchkey_gateway::check_signin(&app_state).await {
        eprintln!("latchkey: {e}");
        return Ok(exit::code(exit::CONFIG));
    }
    // Other instances' changes (PostgreSQL only; nothing to do on SQLite).
    if let Err(e) = latchkey_gateway::cluster::start(app_state.clone()).await {
        eprintln!("latchkey: cannot listen for other instances' changes: {e}");
        return Ok(exit::code(exit::UNAVAILABLE));
    }
    // The router, with `/mcp/{server}` routed ahead of it in the accept loop (issue 18).
    let app = latchkey_gateway::listener::app(app_state);
    // Signal handlers before the announcement: a SIGTERM sent as soon as it is read
    // stops the server gracefully instead of killing it.
    let stop = shutdown();
    println!(
        "Latchkey is listening on http://{local} (database {}, public URL {})",
        state.database, cfg.public_url
    );
    tracing::info!(event = "serve.started", listen = %local);
    // TCP_NODELAY, the connection cap and the header, idle and body deadlines of
    // `[limits]`; graceful shutdown on SIGTERM or Ctrl-C.
    // Stopping is said, like starting: when the signal comes and when the last request
    // is done.
    let stop = async move {
        stop.await;
        say("Latchkey is stopping: finishing the requests under way");
        tracing::info!(event = "serve.stopping");
    };
    latchkey_gateway::serve(listener, app, cfg.limits, stop).await?;
    say("Latchkey stopped.");
    tracing::info!(event = "serve.stopped");
    Ok(ExitCode::SUCCESS)
}

/// A line on standard output that may be closed by now (a supervisor that read the
/// start-up line and went away): never a panic for that.
fn say(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Resolves on Ctrl-C or SIGTERM. The SIGTERM handler is installed when this is
/// called, not when the future is first polled.
fn shutdown() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let term = async move {
            match term {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => {}
            () = term => {}
        }
    }
}

#[cfg(test)]
mod tests {
    /// The settings table says what the log filter defaults to.
    #[test]
    fn the_log_default_in_the_settings_table_is_true() {
        let log = latchkey_gateway::config::SETTINGS
            .iter()
            .find(|s| s.env == Some("LATCHKEY_LOG"))
            .map(|s| s.default);
        assert_eq!(
            log,
            Some(
                crate::logging::DEFAULT_LEVEL
                    .to_string()
                    .to_lowercase()
                    .as_str()
            )
        );
    }
}
