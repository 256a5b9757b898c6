//! What every settings reader shares: the error that names a setting, and the one
//! reader of duration values. Below both [`crate::config`] and [`crate::limits`] (which
//! reads the `[limits]` table), so neither imports the other's internals.

/// A configuration problem, naming the setting (`listen`, `auth.issuer`,
/// `LATCHKEY_LISTEN` …).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {setting}: {message}")]
pub struct ConfigError {
    /// The setting, as the user wrote it (TOML key path or environment variable).
    pub setting: String,
    /// What is wrong.
    pub message: String,
}

pub(crate) fn err(setting: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.into(),
        message: message.into(),
    }
}

/// Seconds in a day.
pub(crate) const DAY: u64 = 86_400;

/// A duration setting: `"90"` (seconds), `"500ms"`, `"90s"`, `"15m"`, `"12h"`, `"30d"`.
/// One reader for every such setting (`[limits]`, `[api_keys]`); each judges its range.
pub(crate) fn parse_duration(text: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits.parse().ok()?;
    let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs);
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(DAY),
        _ => None,
    }
}
