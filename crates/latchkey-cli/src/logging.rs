//! The log filter: `LATCHKEY_LOG` read as `tracing_subscriber`'s directives, with two
//! rules of our own on top (issue 15):
//!
//! * **Dependencies are capped at the configured level.** The configured level is the
//!   directive without a target (`warn` when none is given). A directive naming another
//!   crate (`hyper=trace`, a bare `reqwest`, which means trace) is lowered to it: only
//!   Latchkey's own crates (`latchkey*`) can be made more verbose than the rest. Third
//!   parties log what they carry (URLs with their query, message bodies) and we cannot
//!   vouch for every line they write.
//! * **Some crates are capped whatever the setting** ([`HARD_CAPS`]), because we know
//!   what they log below the cap.
//!
//! Written by hand because `EnvFilter` neither exposes its directives nor offers a
//! ceiling; the syntax handled is its own, passed through once rewritten.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// The level when `LATCHKEY_LOG` names none.
pub(crate) const DEFAULT_LEVEL: LevelFilter = LevelFilter::WARN;

/// Crates (or modules) held at or below a level whatever `LATCHKEY_LOG` says, and why.
/// * rmcp logs whole JSON-RPC messages at debug (tool arguments and results) and every
///   error answer whole at warn ("response error"), `data` included: that is where the
///   federated endpoint's consent elicitation carries its authorization URL, `state`
///   and all. Its error lines name transport failures only.
/// * `rmcp::service` (the session loop) logs at ERROR when it cannot write an answer to
///   its peer ("failed to send pending response during drain", "fail to response
///   message", "fail to close sink"): on an HTTP endpoint, a client that went away
///   before its answer, which is not Latchkey's failure nor the operator's. Its lines
///   are all of that kind (or a task's join error, which the panic itself reports), and
///   below ERROR it logs only message bodies; so none of it is shown. The request's own
///   `mcp.request.*` and `http.request` lines still say how it ended.
pub(crate) const HARD_CAPS: [(&str, LevelFilter); 2] = [
    ("rmcp", LevelFilter::ERROR),
    ("rmcp::service", LevelFilter::OFF),
];

/// A bad `LATCHKEY_LOG`, in words.
#[derive(Debug)]
pub(crate) struct BadFilter(pub(crate) String);

/// The filter for `spec` (the value of `LATCHKEY_LOG`, if set).
pub(crate) fn filter(spec: Option<&str>) -> Result<EnvFilter, BadFilter> {
    let text = rewrite(spec.unwrap_or(""))?;
    EnvFilter::builder()
        .with_default_directive(DEFAULT_LEVEL.into())
        .parse(&text)
        .map_err(|e| BadFilter(format!("LATCHKEY_LOG: {e}")))
}

/// One directive: its target (None for the bare level) and level.
fn split(directive: &str) -> Result<(Option<&str>, LevelFilter), BadFilter> {
    let bad = || {
        BadFilter(format!(
            "LATCHKEY_LOG: cannot read the directive {directive:?}"
        ))
    };
    match directive.rsplit_once('=') {
        Some((target, level)) => Ok((Some(target), level.trim().parse().map_err(|_| bad())?)),
        // A bare word is a level, or a target meaning "everything" (trace).
        None => match directive.parse::<LevelFilter>() {
            Ok(level) => Ok((None, level)),
            Err(_) => Ok((Some(directive), LevelFilter::TRACE)),
        },
    }
}

/// The crate a directive's target names (`hyper_util::client[span]` → `hyper_util`).
fn crate_of(target: &str) -> &str {
    let end = target.find([':', '[', '{']).unwrap_or(target.len());
    target[..end].trim()
}

/// Whether directive `d`'s target is `name` or a module under it (`rmcp::service::x`
/// is under `rmcp` and `rmcp::service`; `rmcp_macros` is under neither).
fn within(d: &str, name: &str) -> bool {
    let target = d.split('=').next().unwrap_or("");
    let end = target.find(['[', '{']).unwrap_or(target.len());
    let target = target[..end].trim();
    target == name
        || target
            .strip_prefix(name)
            .is_some_and(|rest| rest.starts_with("::"))
}

/// `spec` with every dependency's directive capped, and the hard caps added.
fn rewrite(spec: &str) -> Result<String, BadFilter> {
    let directives: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    let mut configured = DEFAULT_LEVEL;
    for d in &directives {
        if let (None, level) = split(d)? {
            configured = level;
        }
    }
    let mut out = vec![configured.to_string().to_lowercase()];
    for d in &directives {
        let (Some(target), level) = split(d)? else {
            continue;
        };
        let name = crate_of(target);
        if name.starts_with("latchkey") {
            out.push((*d).to_owned());
        } else {
            out.push(format!("{target}={}", level.min(configured)).to_lowercase());
        }
    }
    for (name, cap) in HARD_CAPS {
        // Appended last, so it is the most specific directive for the crate itself;
        // one naming a module under it was already capped at the configured level and
        // is capped here too.
        let level = configured.min(cap);
        out.retain(|d| !within(d, name) || !more_verbose(d, level));
        out.push(format!("{name}={}", level.to_string().to_lowercase()));
    }
    Ok(out.join(","))
}

/// Whether directive `d` (`target=level`) lets through more than `level`.
fn more_verbose(d: &str, level: LevelFilter) -> bool {
    d.rsplit_once('=')
        .and_then(|(_, l)| l.parse::<LevelFilter>().ok())
        .is_some_and(|l| l > level)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_warn_with_rmcp_capped() {
        assert_eq!(rewrite("").unwrap(), "warn,rmcp=error,rmcp::service=off");
    }

    #[test]
    fn dependencies_never_exceed_the_configured_level() {
        assert_eq!(
            rewrite("info,hyper=trace").unwrap(),
            "info,hyper=info,rmcp=error,rmcp::service=off"
        );
        assert_eq!(
            rewrite("reqwest").unwrap(),
            "warn,reqwest=warn,rmcp=error,rmcp::service=off"
        );
        assert_eq!(
            rewrite("hyper_util::client::legacy=debug").unwrap(),
            "warn,hyper_util::client::legacy=warn,rmcp=error,rmcp::service=off"
        );
        // Quieter than the configured level is kept.
        assert_eq!(
            rewrite("debug,sqlx=error").unwrap(),
            "debug,sqlx=error,rmcp=error,rmcp::service=off"
        );
    }

    #[test]
    fn latchkey_crates_may_be_raised() {
        assert_eq!(
            rewrite("latchkey_gateway=trace,latchkey_broker::token_service=debug").unwrap(),
            "warn,latchkey_gateway=trace,latchkey_broker::token_service=debug,rmcp=error,rmcp::service=off"
        );
    }

    #[test]
    fn rmcp_is_capped_at_error_whatever_is_asked() {
        assert_eq!(
            rewrite("trace").unwrap(),
            "trace,rmcp=error,rmcp::service=off"
        );
        assert_eq!(
            rewrite("trace,rmcp=trace").unwrap(),
            "trace,rmcp=error,rmcp::service=off"
        );
        assert_eq!(
            rewrite("trace,rmcp::transport=trace").unwrap(),
            "trace,rmcp=error,rmcp::service=off"
        );
        assert_eq!(
            rewrite("error").unwrap(),
            "error,rmcp=error,rmcp::service=off"
        );
        // Nothing of the session loop, whatever is asked.
        assert_eq!(
            rewrite("trace,rmcp::service=error,rmcp::service::x=warn").unwrap(),
            "trace,rmcp=error,rmcp::service=off"
        );
        assert_eq!(
            rewrite("info,rmcp_macros=info").unwrap(),
            "info,rmcp_macros=info,rmcp=error,rmcp::service=off"
        );
        assert_eq!(rewrite("off").unwrap(), "off,rmcp=off,rmcp::service=off");
    }

    #[test]
    fn the_filter_is_built_and_bad_text_named() {
        assert!(filter(None).is_ok());
        assert!(filter(Some("debug,hyper=trace")).is_ok());
        let e = filter(Some("hyper=loud")).unwrap_err();
        assert!(
            e.0.contains("LATCHKEY_LOG") && e.0.contains("hyper=loud"),
            "{}",
            e.0
        );
    }
}
