//! Configuration: a TOML file, then `LATCHKEY_*` environment overrides, validated as a
//! whole before anything starts. Every error names the setting it is about.
//!
//! Loading is pure: the environment is passed in, so tests need no process state.

pub use crate::setting::ConfigError;
use crate::setting::{DAY, err, parse_duration};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use latchkey_core::Secret;
use serde::Deserialize;

/// The shortest HS256 secret accepted, in bytes (RFC 7518 §3.2: a key as long as the
/// hash output).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// The default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";

/// One setting of `latchkey serve`, for its help and the README: where it is set and
/// what it means. [`SETTINGS`] lists them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The key in the TOML configuration file (`None`: environment only).
    pub toml: Option<&'static str>,
    /// The environment variable that overrides it (`None`: file only).
    pub env: Option<&'static str>,
    /// What it does, in one line.
    pub meaning: &'static str,
    /// The default.
    pub default: &'static str,
}

const fn setting(
    toml: Option<&'static str>,
    env: Option<&'static str>,
    meaning: &'static str,
    default: &'static str,
) -> Setting {
    Setting {
        toml,
        env,
        meaning,
        default,
    }
}

/// Every setting of `latchkey serve`: the TOML key (file given by `--config` /
/// `LATCHKEY_CONFIG`), the environment variable (which wins over the file), a one-line
/// meaning and the default. A unit test checks that every `LATCHKEY_*` variable the
/// loader reads is here.
pub const SETTINGS: &[Setting] = &[
    setting(
        None,
        Some("LATCHKEY_CONFIG"),
        "the TOML configuration file (also --config)",
        "none",
    ),
    setting(
        Some("listen"),
        Some("LATCHKEY_LISTEN"),
        "address and port to listen on (an IP address or localhost)",
        DEFAULT_LISTEN,
    ),
    setting(
        Some("public_url"),
        Some("LATCHKEY_PUBLIC_URL"),
        "the URL browsers and authorization servers reach Latchkey at (OAuth callbacks); https unless on loopback",
        "http://LISTEN",
    ),
    setting(
        Some("data_dir"),
        Some("LATCHKEY_DATA_DIR"),
        "directory of the SQLite database and the key file (also --data-dir)",
        "$XDG_DATA_HOME/latchkey or ~/.local/share/latchkey",
    ),
    setting(
        Some("database_url"),
        Some("LATCHKEY_DATABASE_URL"),
        "postgres://… for PostgreSQL (several instances), or an SQLite file (also --database-url)",
        "DATA_DIR/latchkey.db",
    ),
    setting(
        Some("key_file"),
        Some("LATCHKEY_KEY_FILE"),
        "the encryption key file, generated on the first start (also --key-file)",
        "DATA_DIR/keys",
    ),
    setting(
        None,
        Some("LATCHKEY_ENCRYPTION_KEYS"),
        "the encryption keys inline (id:hex[,id:hex…], current first), instead of the key file",
        "none",
    ),
    setting(
        Some("allow_insecure_loopback"),
        Some("LATCHKEY_ALLOW_INSECURE_LOOPBACK"),
        "allow MCP servers and authorization servers on loopback (http://localhost…): local development only",
        "false",
    ),
    setting(
        Some("auth.mode"),
        Some("LATCHKEY_AUTH_MODE"),
        "who is calling: local (one user, loopback only) or jwt (access tokens of your identity provider)",
        "local",
    ),
    setting(
        Some("auth.tenant"),
        None,
        "local: the tenant; jwt: one fixed tenant for every token (instead of auth.tenant_claim)",
        "default (local mode)",
    ),
    setting(
        Some("auth.subject"),
        None,
        "local: the user every request acts as",
        "local",
    ),
    setting(
        Some("auth.issuer"),
        Some("LATCHKEY_JWT_ISSUER"),
        "jwt: the tokens' expected iss",
        "required in jwt mode",
    ),
    setting(
        Some("auth.audience"),
        Some("LATCHKEY_JWT_AUDIENCE"),
        "jwt: the tokens' expected aud (PUBLIC_URL/mcp)",
        "required in jwt mode",
    ),
    setting(
        Some("auth.jwks_url"),
        Some("LATCHKEY_JWKS_URL"),
        "jwt: where the verification keys are (RS256, ES256, EdDSA)",
        "none; jwt mode needs it or auth.jwt_secret",
    ),
    setting(
        Some("auth.jwt_secret"),
        Some("LATCHKEY_JWT_SECRET"),
        "jwt: an HS256 secret shared with the issuer, at least 32 bytes",
        "none; jwt mode needs it or auth.jwks_url",
    ),
    setting(
        Some("auth.tenant_claim"),
        None,
        "jwt: the claim naming a token's tenant (a token without it is refused)",
        DEFAULT_TENANT_CLAIM,
    ),
    setting(
        Some("auth.required_scopes"),
        None,
        "jwt: scopes every request needs (a list)",
        "none",
    ),
    setting(
        Some("auth.login.issuer"),
        Some("LATCHKEY_LOGIN_ISSUER"),
        "jwt: the OpenID provider people sign in to the web UI and CLI with (turns sign-in on)",
        "none: no sign-in",
    ),
    setting(
        Some("auth.login.client_id"),
        Some("LATCHKEY_LOGIN_CLIENT_ID"),
        "jwt: Latchkey's client id at that provider (redirect URI PUBLIC_URL/v1/auth/callback)",
        "required with auth.login.issuer",
    ),
    setting(
        Some("auth.login.client_secret"),
        Some("LATCHKEY_LOGIN_CLIENT_SECRET"),
        "jwt: its client secret (a confidential client); without one, a public client with PKCE",
        "none",
    ),
    setting(
        Some("auth.login.cli_client_id"),
        Some("LATCHKEY_LOGIN_CLI_CLIENT_ID"),
        "jwt: the public client `latchkey login` uses (loopback redirect, device grant)",
        "auth.login.client_id when it has no secret",
    ),
    setting(
        Some("auth.login.scopes"),
        None,
        "jwt: the scopes asked at sign-in (a list; openid is always asked)",
        "[\"openid\", \"profile\", \"email\"]",
    ),
    setting(
        Some("auth.login.session_lifetime"),
        Some("LATCHKEY_SESSION_LIFETIME"),
        "jwt: a web session ends this long after sign-in",
        "12h",
    ),
    setting(
        Some("auth.login.session_idle"),
        Some("LATCHKEY_SESSION_IDLE"),
        "jwt: a web session ends after this long unused",
        "2h",
    ),
    setting(
        Some("limits.header_read_timeout"),
        Some("LATCHKEY_HEADER_READ_TIMEOUT"),
        "a request head must arrive within this",
        "10s",
    ),
    setting(
        Some("limits.idle_timeout"),
        Some("LATCHKEY_IDLE_TIMEOUT"),
        "an idle kept-alive connection is closed after this",
        "60s",
    ),
    setting(
        Some("limits.body_timeout"),
        Some("LATCHKEY_BODY_TIMEOUT"),
        "a request body must arrive whole within this",
        "30s",
    ),
    setting(
        Some("limits.max_connections"),
        Some("LATCHKEY_MAX_CONNECTIONS"),
        "open connections at most",
        "1024",
    ),
    setting(
        Some("limits.max_streams_per_principal"),
        Some("LATCHKEY_MAX_STREAMS_PER_PRINCIPAL"),
        "open event and MCP GET streams per caller at most",
        "8",
    ),
    setting(
        Some("api_keys.default_ttl"),
        Some("LATCHKEY_API_KEY_DEFAULT_TTL"),
        "lifetime of an API key created without one",
        "30d",
    ),
    setting(
        Some("api_keys.max_ttl"),
        Some("LATCHKEY_API_KEY_MAX_TTL"),
        "longest lifetime of a member's API key",
        "90d",
    ),
    setting(
        Some("api_keys.admin_max_ttl"),
        Some("LATCHKEY_API_KEY_ADMIN_MAX_TTL"),
        "longest lifetime of an admin's API key",
        "7d",
    ),
    setting(
        Some("metrics.token"),
        Some("LATCHKEY_METRICS_TOKEN"),
        "jwt: the token that opens /metrics and /v1/openapi.json (at least 16 bytes)",
        "none: 404 in jwt mode",
    ),
    setting(
        Some("oauth.refresh_deadline"),
        Some("LATCHKEY_REFRESH_DEADLINE"),
        "how long a refresh grant once sent is awaited (1s to 1h)",
        "120s",
    ),
    setting(
        None,
        Some("LATCHKEY_LOG"),
        "log filter: error, warn, info, debug, trace, or target=level,…",
        "warn",
    ),
];

/// [`SETTINGS`] as text for `latchkey serve --help`: each setting's TOML key and
/// environment variable with its default, its meaning indented below.
pub fn settings_help() -> String {
    let mut out = String::from(
        "Settings (TOML key in the --config file, and the environment variable, which wins):\n",
    );
    for s in SETTINGS {
        let names: Vec<&str> = [s.toml, s.env].into_iter().flatten().collect();
        out.push_str(&format!(
            "  {}  [default: {}]\n      {}\n",
            names.join(" | "),
            s.default,
            s.meaning
        ));
    }
    out
}

/// The file's shape. Unknown keys are errors (a typo must not be silently ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    public_url: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    key_file: Option<PathBuf>,
    allow_insecure_loopback: Option<bool>,
    auth: Option<FileAuth>,
    limits: Option<crate::limits::FileLimits>,
    api_keys: Option<FileApiKeys>,
    metrics: Option<FileMetrics>,
    oauth: Option<FileOAuth>,
}

/// `[oauth]`: the credential lifecycle.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOAuth {
    refresh_deadline: Option<FileDuration>,
}

/// `[api_keys]`: lifetimes, as seconds or `"<n>s|m|h|d"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApiKeys {
    default_ttl: Option<FileDuration>,
    max_ttl: Option<FileDuration>,
    admin_max_ttl: Option<FileDuration>,
}

/// `[metrics]`: who may read `/metrics` and the OpenAPI document in jwt mode.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMetrics {
    token: Option<Secret>,
}

/// A duration in the file: seconds, or a string with a unit.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileDuration {
    Secs(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    mode: Option<String>,
    tenant: Option<String>,
    subject: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
    jwks_url: Option<String>,
    jwt_secret: Option<Secret>,
    tenant_claim: Option<String>,
    required_scopes: Option<Vec<String>>,
    login: Option<FileLogin>,
}

/// `[auth.login]`: sign-in through the organisation's OpenID provider (issue 19).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLogin {
    issuer: Option<String>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    cli_client_id: Option<String>,
    scopes: Option<Vec<String>>,
    session_lifetime: Option<FileDuration>,
    session_idle: Option<FileDuration>,
}

/// Sign-in for people (`[auth.login]`, jwt mode only): Latchkey is a relying party of
/// the organisation's OpenID provider for the web UI, and tells `latchkey login` which
/// public client to use there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginConfig {
    /// The provider's issuer, verbatim (compared as a string with discovery and `iss`).
    pub issuer: String,
    /// Latchkey's client id for the web sign-in.
    pub client_id: String,
    /// Its secret; `None` for a public client (PKCE alone).
    pub client_secret: Option<Secret>,
    /// The public client the CLI uses; `None` when there is none.
    pub cli_client_id: Option<String>,
    /// The scopes asked at sign-in, `openid` first.
    pub scopes: Vec<String>,
    /// How long a session lasts after sign-in, seconds.
    pub session_lifetime: u64,
    /// How long a session lasts unused, seconds.
    pub session_idle: u64,
}

/// The default `auth.login.session_lifetime`, seconds.
pub const DEFAULT_SESSION_LIFETIME: u64 = 12 * 3600;
/// The default `auth.login.session_idle`, seconds.
pub const DEFAULT_SESSION_IDLE: u64 = 2 * 3600;

/// How callers authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthConfig {
    /// Loopback single-user mode: every request acts as this tenant and subject.
    Local {
        /// Tenant.
        tenant: String,
        /// Subject.
        subject: String,
    },
    /// JWT access tokens verified locally, against a JWKS or with a shared secret.
    Jwt {
        /// Expected `iss`, verbatim.
        issuer: String,
        /// Expected `aud` (Latchkey's resource identifier), verbatim.
        audience: String,
        /// Where the verification keys come from.
        keys: JwtKeySource,
        /// Where every token's tenant comes from.
        tenant: JwtTenant,
        /// Scopes every request needs.
        required_scopes: Vec<String>,
    },
}

/// Where a token's tenant comes from in jwt mode: a required claim, or (a deployment
/// that says it is single-tenant) one fixed tenant. Never a silent default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtTenant {
    /// `auth.tenant_claim` (default `"tenant"`): a token without it is refused.
    Claim(String),
    /// `auth.tenant`: every token's tenant, whatever its claims say.
    Fixed(String),
}

/// The default `auth.tenant_claim`.
pub const DEFAULT_TENANT_CLAIM: &str = "tenant";

/// Where JWT verification keys come from: exactly one of `auth.jwks_url` and
/// `auth.jwt_secret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtKeySource {
    /// Public keys (RS256, ES256, EdDSA) from this JWKS URL.
    Jwks(String),
    /// One HS256 secret shared with the token issuer, at least
    /// [`MIN_JWT_SECRET_BYTES`] long. `Debug` prints nothing of it.
    SharedSecret(Secret),
}

/// The validated configuration of `latchkey serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The public base URL (callbacks, resource identifier), without a trailing `/`.
    pub public_url: String,
    /// Data directory (file settings; flags and environment are applied by the caller).
    pub data_dir: Option<PathBuf>,
    /// Database URL from the file.
    pub database_url: Option<String>,
    /// Key file from the file.
    pub key_file: Option<PathBuf>,
    /// Allow outbound `http://` and loopback addresses (local development only).
    pub allow_insecure_loopback: bool,
    /// Inbound authentication.
    pub auth: AuthConfig,
    /// Connection and stream limits (`[limits]`).
    pub limits: crate::limits::Limits,
    /// API key lifetimes.
    pub api_keys: ApiKeyTtls,
    /// The token that opens `/metrics` and `/v1/openapi.json` in jwt mode
    /// (`[metrics] token`, `LATCHKEY_METRICS_TOKEN`); without one they are 404 there.
    /// Local mode serves them to anyone on loopback.
    pub metrics_token: Option<Secret>,
    /// How long a refresh grant, once sent, is awaited in the background
    /// (`[oauth] refresh_deadline`, `LATCHKEY_REFRESH_DEADLINE`; default 120 s, at most
    /// an hour): its rotated token is kept although the callers stopped waiting.
    pub refresh_deadline: std::time::Duration,
    /// Sign-in for people (`[auth.login]`), jwt mode only.
    pub login: Option<LoginConfig>,
}

/// How long API keys live, in seconds (`[api_keys]`). A key's lifetime is chosen at
/// creation (`expires_in`) up to its role's maximum, `default` when not chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiKeyTtls {
    /// Lifetime when the creator names none (`default_ttl`, 30 days); capped by the
    /// key's maximum.
    pub default: u64,
    /// Longest lifetime of a member key (`max_ttl`, 90 days).
    pub max: u64,
    /// Longest lifetime of an admin key (`admin_max_ttl`, 7 days, at most `max_ttl`):
    /// a demoted admin keeps admin through a key for at most this long.
    pub admin_max: u64,
}

impl Default for ApiKeyTtls {
    fn default() -> Self {
        Self {
            default: 30 * DAY,
            max: 90 * DAY,
            admin_max: 7 * DAY,
        }
    }
}

impl ApiKeyTtls {
    /// The longest lifetime of a key acting with `admin` rights or not.
    pub fn max_for(&self, admin: bool) -> u64 {
        if admin { self.admin_max } else { self.max }
    }

    /// The lifetime of a key whose creator named none.
    pub fn default_for(&self, admin: bool) -> u64 {
        self.default.min(self.max_for(admin))
    }
}

/// The shortest metrics token accepted, in bytes.
pub const MIN_METRICS_TOKEN_BYTES: usize = 16;

/// A lifetime setting in whole seconds, more than zero.
fn parse_seconds(text: &str) -> Option<u64> {
    parse_duration(text).map(|d| d.as_secs()).filter(|s| *s > 0)
}

/// `listen`: an IP address and port, or `localhost:PORT` (which binds 127.0.0.1; no
/// name is looked up).
fn parse_listen(raw: &str) -> Option<SocketAddr> {
    if let Ok(a) = raw.parse() {
        return Some(a);
    }
    let (host, port) = raw.rsplit_once(':')?;
    host.eq_ignore_ascii_case("localhost")
        .then(|| port.parse::<u16>().ok())
        .flatten()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
}

/// A TOML error with where it is, as a person counts (line and column, not bytes).
fn toml_error(setting: String, text: &str, e: &toml::de::Error) -> ConfigError {
    let place = e
        .span()
        .map(|s| {
            let (line, column) = line_and_column(text, s.start);
            format!(" (line {line}, column {column})")
        })
        .unwrap_or_default();
    err(setting, format!("{}{place}", e.message()))
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

impl Config {
    /// Reads `file` (if given), applies overrides from `env`, validates.
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let parsed = match file {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| err("--config", format!("cannot read {}: {e}", path.display())))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| toml_error(path.display().to_string(), &text, &e))?
            }
        };
        Self::from_parts(parsed, env)
    }

    /// Validates a TOML document's text (for tests and `--check`).
    pub fn parse(toml_text: &str, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let parsed = toml::from_str::<FileConfig>(toml_text)
            .map_err(|e| toml_error("config".into(), toml_text, &e))?;
        Self::from_parts(parsed, env)
    }

    fn from_parts(f: FileConfig, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let var = |k: &str| {
            env.get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        // Each value: environment first, then file, with the name to blame.
        let pick = |env_key: &'static str, file_key: &'static str, file_val: Option<String>| {
            var(env_key)
                .map(|v| (env_key, v))
                .or(file_val.map(|v| (file_key, v)))
        };

        let (listen_key, listen_raw) = pick("LATCHKEY_LISTEN", "listen", f.listen)
            .unwrap_or(("listen", DEFAULT_LISTEN.to_owned()));
        let listen = parse_listen(&listen_raw).ok_or_else(|| {
            err(
                listen_key,
                format!(
                    "{listen_raw:?} is not an IP address (or localhost) and port, e.g. {DEFAULT_LISTEN}"
                ),
            )
        })?;

        let public_url = match pick("LATCHKEY_PUBLIC_URL", "public_url", f.public_url) {
            Some((key, u)) => {
                let parsed =
                    url_like(&u).ok_or_else(|| err(key, format!("{u:?} is not an http(s) URL")))?;
                // The OAuth callback is under this URL: plain http only to a loopback
                // host (R-SEC-10), whatever the listen address.
                if parsed != "https" && !latchkey_egress::is_loopback_url(&u) {
                    return Err(err(
                        key,
                        format!(
                            "{u:?}: plain http is allowed only for a loopback host (localhost, 127.0.0.0/8, [::1]); use https"
                        ),
                    ));
                }
                u.trim_end_matches('/').to_owned()
            }
            None => format!("http://{listen}"),
        };

        let allow_insecure_loopback = match var("LATCHKEY_ALLOW_INSECURE_LOOPBACK") {
            Some(v) => parse_bool(&v)
                .ok_or_else(|| err("LATCHKEY_ALLOW_INSECURE_LOOPBACK", "expected true or false"))?,
            None => f.allow_insecure_loopback.unwrap_or(false),
        };

        let mut a = f.auth.unwrap_or_default();
        let file_login = a.login.take();
        let (mode_key, mode) = pick("LATCHKEY_AUTH_MODE", "auth.mode", a.mode)
            .unwrap_or(("auth.mode", "local".into()));
        let auth = match mode.as_str() {
            "local" => AuthConfig::Local {
                tenant: a.tenant.unwrap_or_else(|| "default".into()),
                subject: a.subject.unwrap_or_else(|| "local".into()),
            },
            "jwt" => {
                let need = |env_key: &'static str, file_key: &'static str, v: Option<String>| {
                    pick(env_key, file_key, v).map(|(_, v)| v).ok_or_else(|| {
                        err(
                            file_key,
                            format!("required when auth.mode = \"jwt\" (or set {env_key})"),
                        )
                    })
                };
                let jwks_url = pick("LATCHKEY_JWKS_URL", "auth.jwks_url", a.jwks_url);
                // The secret is never trimmed, echoed or put in a message.
                let jwt_secret = match env.get("LATCHKEY_JWT_SECRET") {
                    Some(v) if !v.is_empty() => {
                        Some(("LATCHKEY_JWT_SECRET", Secret::new(v.as_str())))
                    }
                    _ => a.jwt_secret.map(|s| ("auth.jwt_secret", s)),
                };
                let keys = match (jwks_url, jwt_secret) {
                    (Some(_), Some((key, _))) => {
                        return Err(err(
                            key,
                            "set either auth.jwks_url or auth.jwt_secret, not both",
                        ));
                    }
                    (None, None) => {
                        return Err(err(
                            "auth.jwks_url",
                            "auth.mode = \"jwt\" needs auth.jwks_url (or LATCHKEY_JWKS_URL) or auth.jwt_secret (or LATCHKEY_JWT_SECRET)",
                        ));
                    }
                    (Some((key, url)), None) => {
                        if url_like(&url).is_none() {
                            return Err(err(key, format!("{url:?} is not an http(s) URL")));
                        }
                        JwtKeySource::Jwks(url)
                    }
                    (None, Some((key, secret))) => {
                        if secret.len() < MIN_JWT_SECRET_BYTES {
                            // Named `auth.jwt_secret` wherever it came from; the length
                            // is told, the value never.
                            let from = if key == "auth.jwt_secret" {
                                String::new()
                            } else {
                                format!(" (set by {key})")
                            };
                            return Err(err(
                                "auth.jwt_secret",
                                format!(
                                    "must be at least {MIN_JWT_SECRET_BYTES} bytes, is {}{from}",
                                    secret.len()
                                ),
                            ));
                        }
                        JwtKeySource::SharedSecret(secret)
                    }
                };
                let tenant = match (a.tenant_claim, a.tenant) {
                    (Some(_), Some(_)) => {
                        return Err(err(
                            "auth.tenant",
                            "set either auth.tenant (one fixed tenant) or auth.tenant_claim, not both",
                        ));
                    }
                    (_, Some(t)) if t.trim().is_empty() => {
                        return Err(err("auth.tenant", "must not be empty"));
                    }
                    (Some(c), None) if c.trim().is_empty() => {
                        return Err(err("auth.tenant_claim", "must not be empty"));
                    }
                    (None, Some(t)) => JwtTenant::Fixed(t),
                    (Some(c), None) => JwtTenant::Claim(c),
                    (None, None) => JwtTenant::Claim(DEFAULT_TENANT_CLAIM.into()),
                };
                AuthConfig::Jwt {
                    issuer: need("LATCHKEY_JWT_ISSUER", "auth.issuer", a.issuer)?,
                    audience: need("LATCHKEY_JWT_AUDIENCE", "auth.audience", a.audience)?,
                    keys,
                    tenant,
                    required_scopes: a.required_scopes.unwrap_or_default(),
                }
            }
            other => {
                return Err(err(
                    mode_key,
                    format!("{other:?} is not one of \"local\", \"jwt\""),
                ));
            }
        };
        // Fail closed: anything that can be reached from another machine must know who
        // is calling.
        if !listen.ip().is_loopback() && matches!(auth, AuthConfig::Local { .. }) {
            return Err(err(
                listen_key,
                format!(
                    "{listen} is reachable beyond this machine; configure inbound authentication (auth.mode = \"jwt\") or listen on 127.0.0.1"
                ),
            ));
        }
        let login = login_config(file_login, &var, matches!(auth, AuthConfig::Jwt { .. }))?;
        let api_keys = {
            let k = f.api_keys.unwrap_or_default();
            let mut ttls = ApiKeyTtls::default();
            for (env_key, file_key, file_val, slot) in [
                (
                    "LATCHKEY_API_KEY_DEFAULT_TTL",
                    "api_keys.default_ttl",
                    k.default_ttl,
                    &mut ttls.default,
                ),
                (
                    "LATCHKEY_API_KEY_MAX_TTL",
                    "api_keys.max_ttl",
                    k.max_ttl,
                    &mut ttls.max,
                ),
                (
                    "LATCHKEY_API_KEY_ADMIN_MAX_TTL",
                    "api_keys.admin_max_ttl",
                    k.admin_max_ttl,
                    &mut ttls.admin_max,
                ),
            ] {
                let given = match (var(env_key), file_val) {
                    (Some(v), _) => Some((env_key, parse_seconds(&v))),
                    (None, Some(FileDuration::Secs(n))) => {
                        Some((file_key, Some(n).filter(|n| *n > 0)))
                    }
                    (None, Some(FileDuration::Text(t))) => Some((file_key, parse_seconds(&t))),
                    (None, None) => None,
                };
                if let Some((key, secs)) = given {
                    *slot = secs.ok_or_else(|| {
                        err(key, "expected a duration: seconds, or a number with s, m, h or d (e.g. \"30d\")")
                    })?;
                }
            }
            if ttls.admin_max > ttls.max {
                return Err(err(
                    "api_keys.admin_max_ttl",
                    "must not exceed api_keys.max_ttl",
                ));
            }
            if ttls.default > ttls.max {
                return Err(err(
                    "api_keys.default_ttl",
                    "must not exceed api_keys.max_ttl",
                ));
            }
            ttls
        };
        // Never trimmed, echoed or put in a message.
        let metrics_token = match env.get("LATCHKEY_METRICS_TOKEN") {
            Some(v) if !v.is_empty() => Some(("LATCHKEY_METRICS_TOKEN", Secret::new(v.as_str()))),
            _ => f
                .metrics
                .and_then(|m| m.token)
                .map(|t| ("metrics.token", t)),
        };
        let metrics_token = match metrics_token {
            Some((key, t)) if t.len() < MIN_METRICS_TOKEN_BYTES => {
                return Err(err(
                    key,
                    format!(
                        "must be at least {MIN_METRICS_TOKEN_BYTES} bytes, is {}",
                        t.len()
                    ),
                ));
            }
            other => other.map(|(_, t)| t),
        };
        let refresh_deadline = {
            let given = match (
                var("LATCHKEY_REFRESH_DEADLINE"),
                f.oauth.and_then(|o| o.refresh_deadline),
            ) {
                (Some(v), _) => Some(("LATCHKEY_REFRESH_DEADLINE", parse_duration(&v))),
                (None, Some(FileDuration::Secs(n))) => Some((
                    "oauth.refresh_deadline",
                    Some(std::time::Duration::from_secs(n)),
                )),
                (None, Some(FileDuration::Text(t))) => {
                    Some(("oauth.refresh_deadline", parse_duration(&t)))
                }
                (None, None) => None,
            };
            match given {
                None => latchkey_broker::token_service::DEFAULT_REFRESH_DEADLINE,
                Some((key, d)) => d
                    .filter(|d| {
                        (std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(3600))
                            .contains(d)
                    })
                    .ok_or_else(|| {
                        err(
                            key,
                            "expected a duration from 1s to 1h: seconds, or a number with ms, s, m or h (e.g. \"120s\")",
                        )
                    })?,
            }
        };
        Ok(Self {
            refresh_deadline,
            listen,
            public_url,
            data_dir: f.data_dir,
            database_url: f.database_url,
            key_file: f.key_file,
            allow_insecure_loopback,
            auth,
            limits: crate::limits::Limits::from_config(f.limits, env)?,
            api_keys,
            metrics_token,
            login,
        })
    }
}

/// `[auth.login]` with its environment overrides. Given at all (an issuer from either
/// place), it needs jwt mode and a client id.
fn login_config(
    f: Option<FileLogin>,
    var: &dyn Fn(&str) -> Option<String>,
    jwt: bool,
) -> Result<Option<LoginConfig>, ConfigError> {
    let f = f.unwrap_or_default();
    let pick = |env_key: &'static str, file_key: &'static str, file_val: Option<String>| {
        var(env_key)
            .map(|v| (env_key, v))
            .or(file_val.map(|v| (file_key, v)))
    };
    let Some((issuer_key, issuer)) = pick("LATCHKEY_LOGIN_ISSUER", "auth.login.issuer", f.issuer)
    else {
        if f.client_id.is_some() || var("LATCHKEY_LOGIN_CLIENT_ID").is_some() {
            return Err(err(
                "auth.login.issuer",
                "required with auth.login.client_id: the OpenID provider people sign in with",
            ));
        }
        return Ok(None);
    };
    if !jwt {
        return Err(err(
            issuer_key,
            "sign-in needs auth.mode = \"jwt\" (local mode has no sign-in: it serves one user on loopback)",
        ));
    }
    if url_like(&issuer).is_none() {
        return Err(err(issuer_key, format!("{issuer:?} is not an http(s) URL")));
    }
    let (_, client_id) = pick(
        "LATCHKEY_LOGIN_CLIENT_ID",
        "auth.login.client_id",
        f.client_id,
    )
    .ok_or_else(|| {
        err(
            "auth.login.client_id",
            "required with auth.login.issuer: Latchkey's client id at the provider",
        )
    })?;
    let client_secret = match var("LATCHKEY_LOGIN_CLIENT_SECRET") {
        Some(v) => Some(Secret::new(v)),
        None => f.client_secret.filter(|s| !s.is_empty()),
    };
    let cli_client_id = pick(
        "LATCHKEY_LOGIN_CLI_CLIENT_ID",
        "auth.login.cli_client_id",
        f.cli_client_id,
    )
    .map(|(_, v)| v)
    .or_else(|| client_secret.is_none().then(|| client_id.clone()));
    let mut scopes = vec!["openid".to_owned()];
    for s in f
        .scopes
        .unwrap_or_else(|| vec!["profile".into(), "email".into()])
    {
        if s.is_empty() || s.contains(char::is_whitespace) {
            return Err(err(
                "auth.login.scopes",
                format!("{s:?} is not a scope (no spaces, not empty)"),
            ));
        }
        if !scopes.contains(&s) {
            scopes.push(s);
        }
    }
    let duration = |env_key: &'static str,
                    file_key: &'static str,
                    file_val: Option<FileDuration>,
                    default: u64|
     -> Result<u64, ConfigError> {
        let given = match (var(env_key), file_val) {
            (Some(v), _) => Some((env_key, parse_seconds(&v))),
            (None, Some(FileDuration::Secs(n))) => Some((file_key, Some(n).filter(|n| *n > 0))),
            (None, Some(FileDuration::Text(t))) => Some((file_key, parse_seconds(&t))),
            (None, None) => None,
        };
        match given {
            None => Ok(default),
            Some((key, secs)) => secs.filter(|s| *s >= 60).ok_or_else(|| {
                err(
                    key,
                    "expected a duration of at least a minute: seconds, or a number with s, m, h or d (e.g. \"12h\")",
                )
            }),
        }
    };
    let session_lifetime = duration(
        "LATCHKEY_SESSION_LIFETIME",
        "auth.login.session_lifetime",
        f.session_lifetime,
        DEFAULT_SESSION_LIFETIME,
    )?;
    let session_idle = duration(
        "LATCHKEY_SESSION_IDLE",
        "auth.login.session_idle",
        f.session_idle,
        DEFAULT_SESSION_IDLE,
    )?;
    Ok(Some(LoginConfig {
        issuer,
        client_id,
        client_secret,
        cli_client_id,
        scopes,
        session_lifetime,
        session_idle: session_idle.min(session_lifetime),
    }))
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// The scheme of an `http(s)://host…` string, if it is one.
fn url_like(u: &str) -> Option<&'static str> {
    let (scheme, rest) = u.split_once("://")?;
    let host_present = rest.split('/').next().is_some_and(|h| !h.is_empty());
    match (scheme.to_ascii_lowercase().as_str(), host_present) {
        ("https", true) => Some("https"),
        ("http", true) => Some("http"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Every `LATCHKEY_*` variable the loader reads (here and in `[limits]`) is in
    /// [`SETTINGS`], once; so is every TOML key of the file's shape.
    #[test]
    fn every_setting_is_in_the_table() {
        // The loaders' code: `Config`'s impl (not the table above it) and `limits.rs`,
        // each up to its tests.
        let config = include_str!("config.rs");
        let config = &config[config.find("impl Config {").unwrap()..];
        let sources = [config, include_str!("limits.rs")];
        let mut read = std::collections::BTreeSet::new();
        for src in sources {
            let code = src.split("#[cfg(test)]").next().unwrap_or(src);
            for (i, _) in code.match_indices("\"LATCHKEY_") {
                let name: String = code[i + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                    .collect();
                read.insert(name);
            }
        }
        // `LATCHKEY_` alone is no variable (a prefix in a comment or message).
        read.remove("LATCHKEY_");
        assert!(
            read.len() >= 15
                && read.contains("LATCHKEY_LISTEN")
                && read.contains("LATCHKEY_MAX_CONNECTIONS"),
            "the scan found the loader's variables: {read:?}"
        );
        let table: Vec<&str> = SETTINGS.iter().filter_map(|s| s.env).collect();
        for name in &read {
            assert!(table.contains(&name.as_str()), "{name} is not in SETTINGS");
        }
        let mut unique = table.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), table.len(), "a variable is listed twice");
        // The file's keys: an unknown key is an error, so each listed key must parse.
        for s in SETTINGS {
            let Some(key) = s.toml else { continue };
            let (section, name) = key.split_once('.').map_or(("", key), |(a, b)| (a, b));
            let value = match name {
                "required_scopes" => "[]",
                "max_connections" | "max_streams_per_principal" => "1",
                "allow_insecure_loopback" => "false",
                _ => "\"x\"",
            };
            let doc = if section.is_empty() {
                format!("{name} = {value}")
            } else {
                format!("[{section}]\n{name} = {value}")
            };
            let known = toml::from_str::<FileConfig>(&doc);
            assert!(
                known.as_ref().is_ok() || !format!("{known:?}").contains("unknown field"),
                "{key} is not a key of the configuration file: {known:?}"
            );
        }
        let help = settings_help();
        assert!(help.contains("allow_insecure_loopback | LATCHKEY_ALLOW_INSECURE_LOOPBACK"));
        assert!(help.contains(&format!("[default: {DEFAULT_LISTEN}]")));
    }

    #[test]
    fn no_configuration_is_loopback_local_mode() {
        let c = Config::parse("", &env(&[])).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.public_url, "http://127.0.0.1:7878");
        assert!(matches!(c.auth, AuthConfig::Local { .. }));
        assert!(!c.allow_insecure_loopback);
    }

    #[test]
    fn errors_name_the_setting() {
        let c = Config::parse("listen = \"localhost:7999\"", &env(&[])).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7999");
        assert_eq!(line_and_column("a = 1\nbb = x", 11), (2, 6));
        assert_eq!(line_and_column("x", 0), (1, 1));
        let e = Config::parse(
            "listen = \"127.0.0.1:1\"\nallow_insecure_loopback = maybe",
            &env(&[]),
        )
        .unwrap_err();
        assert!(e.message.contains("(line 2, column 27)"), "{}", e.message);
        let e = Config::parse("listen = \"nowhere\"", &env(&[])).unwrap_err();
        assert_eq!(e.setting, "listen");
        let e = Config::parse("", &env(&[("LATCHKEY_LISTEN", "x")])).unwrap_err();
        assert_eq!(e.setting, "LATCHKEY_LISTEN");
        let e = Config::parse("lisen = \"127.0.0.1:1\"", &env(&[])).unwrap_err();
        assert!(e.message.contains("lisen"), "{e}");
        let e = Config::parse("[auth]\nmode = \"jwt\"", &env(&[])).unwrap_err();
        assert_eq!(e.setting, "auth.jwks_url");
        let e = Config::parse("[auth]\nmode = \"magic\"", &env(&[])).unwrap_err();
        assert_eq!(e.setting, "auth.mode");
        let e =
            Config::parse("", &env(&[("LATCHKEY_ALLOW_INSECURE_LOOPBACK", "maybe")])).unwrap_err();
        assert_eq!(e.setting, "LATCHKEY_ALLOW_INSECURE_LOOPBACK");
    }

    #[test]
    fn beyond_loopback_needs_inbound_authentication() {
        let e = Config::parse("listen = \"0.0.0.0:7878\"", &env(&[])).unwrap_err();
        assert_eq!(e.setting, "listen");
        let jwt = "listen = \"0.0.0.0:7878\"\npublic_url = \"https://latchkey.example\"\n[auth]\nmode = \"jwt\"\nissuer = \"https://idp.example\"\naudience = \"https://latchkey.example/mcp\"\njwks_url = \"https://idp.example/jwks\"";
        let c = Config::parse(jwt, &env(&[])).unwrap();
        assert!(matches!(c.auth, AuthConfig::Jwt { .. }));
        let e = Config::parse(
            &jwt.replace("https://latchkey.example\"", "http://latchkey.example\""),
            &env(&[]),
        )
        .unwrap_err();
        assert_eq!(e.setting, "public_url");
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let c = Config::parse(
            "listen = \"127.0.0.1:1\"",
            &env(&[
                ("LATCHKEY_LISTEN", "127.0.0.1:2"),
                ("LATCHKEY_PUBLIC_URL", "http://localhost:2/"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.public_url, "http://localhost:2");
    }

    const JWT: &str = "[auth]\nmode = \"jwt\"\nissuer = \"https://idp.example\"\naudience = \"http://127.0.0.1:7878/mcp\"\n";
    const SECRET: &str = "0123456789abcdef0123456789abcdef-hs256";

    #[test]
    fn a_shared_secret_replaces_the_jwks_url() {
        let c = Config::parse(&format!("{JWT}jwt_secret = \"{SECRET}\""), &env(&[])).unwrap();
        let AuthConfig::Jwt { keys, .. } = &c.auth else {
            panic!("jwt mode")
        };
        assert_eq!(keys, &JwtKeySource::SharedSecret(Secret::new(SECRET)));
        // From the environment, not trimmed.
        let padded = format!(" {SECRET} ");
        let c = Config::parse(JWT, &env(&[("LATCHKEY_JWT_SECRET", &padded)])).unwrap();
        assert!(matches!(
            &c.auth,
            AuthConfig::Jwt { keys: JwtKeySource::SharedSecret(s), .. } if s.expose() == padded
        ));
        let c = Config::parse(
            &format!("{JWT}jwks_url = \"https://idp.example/jwks\""),
            &env(&[]),
        )
        .unwrap();
        assert!(matches!(
            &c.auth,
            AuthConfig::Jwt { keys: JwtKeySource::Jwks(u), .. } if u == "https://idp.example/jwks"
        ));
    }

    #[test]
    fn exactly_one_key_source_and_a_long_enough_secret() {
        let e = Config::parse(JWT, &env(&[])).unwrap_err();
        assert_eq!(e.setting, "auth.jwks_url");
        assert!(e.message.contains("auth.jwt_secret"), "{e}");
        let both =
            format!("{JWT}jwks_url = \"https://idp.example/jwks\"\njwt_secret = \"{SECRET}\"");
        let e = Config::parse(&both, &env(&[])).unwrap_err();
        assert_eq!(e.setting, "auth.jwt_secret");
        assert!(!e.to_string().contains(SECRET));
        let e = Config::parse(
            &format!("{JWT}jwks_url = \"https://idp.example/jwks\""),
            &env(&[("LATCHKEY_JWT_SECRET", SECRET)]),
        )
        .unwrap_err();
        assert_eq!(e.setting, "LATCHKEY_JWT_SECRET");
        let short = "31-bytes-is-one-byte-too-short!";
        assert_eq!(short.len(), 31);
        let e = Config::parse(&format!("{JWT}jwt_secret = \"{short}\""), &env(&[])).unwrap_err();
        assert_eq!(e.setting, "auth.jwt_secret");
        assert!(!e.to_string().contains(short), "{e}");
        let e = Config::parse(JWT, &env(&[("LATCHKEY_JWT_SECRET", short)])).unwrap_err();
        assert_eq!(e.setting, "auth.jwt_secret");
        assert!(e.message.contains("LATCHKEY_JWT_SECRET"), "{e}");
        assert!(!e.to_string().contains(short), "{e}");
        let exactly = &SECRET[..MIN_JWT_SECRET_BYTES];
        assert!(Config::parse(&format!("{JWT}jwt_secret = \"{exactly}\""), &env(&[])).is_ok());
    }

    #[test]
    fn the_tenant_is_a_required_claim_or_explicitly_fixed() {
        let base = format!("{JWT}jwt_secret = \"{SECRET}\"\n");
        let tenant = |toml: &str| match Config::parse(toml, &env(&[])).map(|c| c.auth) {
            Ok(AuthConfig::Jwt { tenant, .. }) => Ok(tenant),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(
            tenant(&base).unwrap(),
            JwtTenant::Claim(DEFAULT_TENANT_CLAIM.into())
        );
        assert_eq!(
            tenant(&format!("{base}tenant_claim = \"org_id\"")).unwrap(),
            JwtTenant::Claim("org_id".into())
        );
        assert_eq!(
            tenant(&format!("{base}tenant = \"solo\"")).unwrap(),
            JwtTenant::Fixed("solo".into())
        );
        let e = tenant(&format!(
            "{base}tenant = \"solo\"\ntenant_claim = \"org_id\""
        ))
        .unwrap_err();
        assert_eq!(e.setting, "auth.tenant");
        assert!(e.message.contains("auth.tenant_claim"), "{e}");
        assert_eq!(
            tenant(&format!("{base}tenant = \"\"")).unwrap_err().setting,
            "auth.tenant"
        );
        assert_eq!(
            tenant(&format!("{base}tenant_claim = \" \""))
                .unwrap_err()
                .setting,
            "auth.tenant_claim"
        );
    }

    #[test]
    fn the_refresh_deadline() {
        use std::time::Duration;
        let c = Config::parse("", &env(&[])).unwrap();
        assert_eq!(c.refresh_deadline, Duration::from_secs(120));
        let c = Config::parse("[oauth]\nrefresh_deadline = \"5m\"", &env(&[])).unwrap();
        assert_eq!(c.refresh_deadline, Duration::from_secs(300));
        let c = Config::parse(
            "[oauth]\nrefresh_deadline = 200",
            &env(&[("LATCHKEY_REFRESH_DEADLINE", "90s")]),
        )
        .unwrap();
        assert_eq!(c.refresh_deadline, Duration::from_secs(90));
        for (toml, e, setting) in [
            (
                "[oauth]\nrefresh_deadline = 0",
                vec![],
                "oauth.refresh_deadline",
            ),
            (
                "[oauth]\nrefresh_deadline = \"2h\"",
                vec![],
                "oauth.refresh_deadline",
            ),
            (
                "",
                vec![("LATCHKEY_REFRESH_DEADLINE", "soon")],
                "LATCHKEY_REFRESH_DEADLINE",
            ),
        ] {
            assert_eq!(
                Config::parse(toml, &env(&e)).unwrap_err().setting,
                setting,
                "{toml}"
            );
        }
    }

    #[test]
    fn api_key_lifetimes() {
        let c = Config::parse("", &env(&[])).unwrap();
        assert_eq!(c.api_keys, ApiKeyTtls::default());
        assert_eq!(c.api_keys.default_for(true), 7 * DAY);
        assert_eq!(c.api_keys.default_for(false), 30 * DAY);
        let c = Config::parse(
            "[api_keys]\ndefault_ttl = \"12h\"\nmax_ttl = 864000\nadmin_max_ttl = \"90m\"",
            &env(&[("LATCHKEY_API_KEY_MAX_TTL", "20d")]),
        )
        .unwrap();
        assert_eq!(
            c.api_keys,
            ApiKeyTtls {
                default: 12 * 3600,
                max: 20 * DAY,
                admin_max: 90 * 60
            }
        );
        for (toml, e, setting) in [
            (
                "[api_keys]\ndefault_ttl = \"soon\"",
                vec![],
                "api_keys.default_ttl",
            ),
            ("[api_keys]\nmax_ttl = 0", vec![], "api_keys.max_ttl"),
            (
                "",
                vec![("LATCHKEY_API_KEY_ADMIN_MAX_TTL", "1w")],
                "LATCHKEY_API_KEY_ADMIN_MAX_TTL",
            ),
            (
                "[api_keys]\nadmin_max_ttl = \"100d\"",
                vec![],
                "api_keys.admin_max_ttl",
            ),
            (
                "[api_keys]\ndefault_ttl = \"1d\"\nmax_ttl = \"1h\"\nadmin_max_ttl = \"1m\"",
                vec![],
                "api_keys.default_ttl",
            ),
        ] {
            let got = Config::parse(toml, &env(&e)).unwrap_err();
            assert_eq!(got.setting, setting, "{toml}");
        }
    }

    #[test]
    fn a_metrics_token_is_a_long_enough_secret() {
        let token = "metrics-token-0123456789";
        let c = Config::parse(&format!("[metrics]\ntoken = \"{token}\""), &env(&[])).unwrap();
        assert_eq!(c.metrics_token, Some(Secret::new(token)));
        assert!(!format!("{c:?}").contains(token));
        let c = Config::parse("", &env(&[("LATCHKEY_METRICS_TOKEN", token)])).unwrap();
        assert_eq!(c.metrics_token, Some(Secret::new(token)));
        let e = Config::parse("[metrics]\ntoken = \"short\"", &env(&[])).unwrap_err();
        assert_eq!(e.setting, "metrics.token");
        assert!(!e.to_string().contains("short"), "{e}");
        assert_eq!(Config::parse("", &env(&[])).unwrap().metrics_token, None);
    }

    #[test]
    fn the_secret_never_shows_in_debug() {
        let c = Config::parse(&format!("{JWT}jwt_secret = \"{SECRET}\""), &env(&[])).unwrap();
        let shown = format!("{c:?} {:?} {c:#?}", c.clone());
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert_eq!(c, c.clone());
    }
}
