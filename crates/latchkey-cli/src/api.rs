//! The HTTP client for a running `latchkey serve`, and the one place where a failure
//! (Latchkey unreachable, an error answer of its API, bad input) becomes a message and
//! an exit code ([`Failure`]).
//!
//! The credential: `--token` / `LATCHKEY_TOKEN`. A Latchkey API key (`lk_…`) is sent as
//! `Authorization: Token <key>`; anything else (a JWT, or an opaque OAuth access token
//! that Latchkey introspects) as `Authorization: Bearer <token>`; a value that already
//! starts with `Bearer ` or `Token ` is sent as it is. Without one, the sign-in
//! `latchkey login` stored for the URL (see [`crate::login`]), renewed silently when it
//! is expired or about to be, and once more when Latchkey refuses a token that looked
//! valid. In local mode (the default of `latchkey serve`) no token is needed. Tokens are
//! [`Secret`]s: never printed, the header is marked sensitive.
//!
//! Requests never follow redirects (a credential must not travel to another origin) and
//! ignore the environment's HTTP proxies (Latchkey is normally on loopback).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use latchkey_core::Secret;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::Value;

use crate::exit;
use crate::login::{self, Login, Store};

/// Where `latchkey serve` listens by default.
pub(crate) fn default_url() -> String {
    format!("http://{}", latchkey_gateway::config::DEFAULT_LISTEN)
}

/// A failure with its exit code, printed by `main` as `latchkey: <message>`.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The process exit code (see [`crate::exit`]).
    pub(crate) code: u8,
    /// What went wrong, for a person.
    pub(crate) message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Bad input on the command line (an argument that is not what it must be).
    pub(crate) fn data(message: impl Into<String>) -> Self {
        Self::new(exit::DATAERR, message)
    }

    /// The thing named does not exist.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(exit::NOINPUT, message)
    }

    /// Latchkey (or the server probed) cannot be reached.
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(exit::UNAVAILABLE, message)
    }

    /// The mapping of an error answer of Latchkey's API (JSON `{code, message,
    /// server_id?, scopes?, fields?}`, see `latchkey_gateway::error`) to a message and
    /// an exit code.
    pub(crate) fn from_answer(status: u16, body: &[u8]) -> Self {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let api_code = v.get("code").and_then(Value::as_str).unwrap_or_default();
        let text = v
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("HTTP {status}"));
        // Hints name the server as the user knows it: its name, else its id.
        let server = v
            .get("server_name")
            .or_else(|| v.get("server_id"))
            .and_then(Value::as_str)
            .unwrap_or("SERVER");
        // Latchkey's own words say how to connect when they carry a `reason` (or a
        // `server_name`); older answers get the hint here.
        let explained = v.get("reason").is_some() || v.get("server_name").is_some();
        let mut message = match (status, api_code) {
            (409, "needs_oauth_reauth") if explained => text,
            (409, "needs_oauth_reauth") => {
                format!("{text}: the server needs your consent; run `latchkey connect {server}`")
            }
            (409, "needs_scope_upgrade") => {
                let scopes = strings(v.get("scopes")).join(" ");
                if explained {
                    format!("{text} (missing: {scopes})")
                } else {
                    format!(
                        "{text} ({scopes}): run `latchkey connect {server} --force` to grant them"
                    )
                }
            }
            // Only a probe that found no MCP answer can be overridden; refused header
            // values are wrong values, not a wrong guess of the auth type.
            (422, "probe_failed") => match text.strip_suffix("; set auth_type to add it anyway") {
                Some(why) => format!("{why}: add --auth-type oauth|headers|none to add it anyway"),
                None => format!("{text} (--header)"),
            },
            (409, "name_taken") => format!(
                "another server is named so already ({server}): choose another name, or edit that one with `latchkey servers edit {server}`"
            ),
            (401, _) => format!(
                "Latchkey refused the credential (HTTP 401{}): run `latchkey login`, or set --token or LATCHKEY_TOKEN to an API key or a valid access token",
                if api_code.is_empty() {
                    String::new()
                } else {
                    format!(", {api_code}")
                }
            ),
            (403, _) => format!("{text} (HTTP 403): the credential may not do this"),
            (503, "encryption_key_missing") => format!(
                "{text}: configure an encryption key for `latchkey serve` (see `latchkey keys add`)"
            ),
            _ if api_code.is_empty() => text,
            _ => format!("{text} ({api_code})"),
        };
        if let Some(fields) = v.get("fields").and_then(Value::as_array) {
            for f in fields {
                let field = f.get("field").and_then(Value::as_str).unwrap_or_default();
                let why = f.get("message").and_then(Value::as_str).unwrap_or_default();
                if field.is_empty() {
                    message.push_str(&format!("\n  - {why}"));
                } else {
                    message.push_str(&format!("\n  - {field}: {why}"));
                }
            }
        }
        let code = match (status, api_code) {
            (400 | 413 | 415 | 422, _) => exit::DATAERR,
            (401 | 403, _) => exit::NOPERM,
            (404, _) => exit::NOINPUT,
            (409, "name_taken") => exit::DATAERR,
            (409, _) => exit::TEMPFAIL,
            (503, "encryption_key_missing") => exit::CONFIG,
            (502..=504, _) => exit::UNAVAILABLE,
            _ => exit::FAILURE,
        };
        Self::new(code, message)
    }

    /// A request that produced no answer.
    pub(crate) fn transport(base: &str, e: &reqwest::Error) -> Self {
        Self::unavailable(format!(
            "cannot reach Latchkey at {base}: {}",
            error_chain(e)
        ))
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// An error and its sources on one line (reqwest's own message is terse).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        src = s.source();
    }
    out
}

/// Options that locate Latchkey's API (global: every command that talks to a running
/// `latchkey serve` takes them).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Connection {
    /// The URL of a running `latchkey serve`.
    #[arg(
        id = "latchkey_url",
        long = "url",
        env = "LATCHKEY_URL",
        global = true,
        value_name = "URL",
        default_value_t = default_url(),
        help_heading = "Latchkey API"
    )]
    pub(crate) url: String,
    /// Credential for Latchkey: an API key (`lk_…`, sent as `Token`) or an access token
    /// (sent as `Bearer`). Without it, the sign-in `latchkey login` stored for --url is
    /// used. Not needed in local mode.
    #[arg(
        id = "latchkey_token",
        long = "token",
        env = "LATCHKEY_TOKEN",
        global = true,
        value_name = "TOKEN",
        hide_env_values = true,
        value_parser = parse_secret,
        help_heading = "Latchkey API"
    )]
    pub(crate) token: Option<Secret>,
}

/// The Latchkey URL of `c` (the default when empty).
pub(crate) fn url_of(c: &Connection) -> String {
    match c.url.trim() {
        "" => default_url(),
        u => u.to_owned(),
    }
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(Secret::new(s.trim()))
}

/// The `Authorization` value for `token` (see the module documentation).
fn authorization(token: &Secret) -> Result<HeaderValue, Failure> {
    let t = token.expose();
    let explicit = t.split_once(' ').is_some_and(|(scheme, _)| {
        scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token")
    });
    let value = if explicit {
        Secret::new(t)
    } else if t.starts_with(latchkey_guard::api_key::API_KEY_PREFIX) {
        Secret::new(format!("Token {t}"))
    } else {
        Secret::new(format!("Bearer {t}"))
    };
    let mut hv = HeaderValue::from_str(value.expose()).map_err(|_| {
        Failure::new(
            exit::CONFIG,
            "--token / LATCHKEY_TOKEN is not a valid header value",
        )
    })?;
    hv.set_sensitive(true);
    Ok(hv)
}

/// `Authorization: Bearer <token>` for a stored sign-in's access token.
fn bearer(token: &Secret) -> Result<HeaderValue, Failure> {
    let mut hv = HeaderValue::from_str(Secret::new(format!("Bearer {}", token.expose())).expose())
        .map_err(|_| {
            Failure::new(
                exit::CONFIG,
                "the stored sign-in's token is not a valid header value: run `latchkey login`",
            )
        })?;
    hv.set_sensitive(true);
    Ok(hv)
}

/// The credential an [`Api`] sends.
#[derive(Debug, Clone)]
enum Auth {
    /// None (local mode, or Latchkey will say 401).
    None,
    /// `--token` / `LATCHKEY_TOKEN`.
    Fixed(HeaderValue),
    /// The sign-in stored by `latchkey login` for this URL.
    Stored(Arc<StoredAuth>),
}

/// A stored sign-in in use, renewed when due (one renewal at a time in this process;
/// the store's lock serializes processes).
#[derive(Debug)]
struct StoredAuth {
    store: Store,
    current: Mutex<Login>,
    renewing: tokio::sync::Mutex<()>,
    provider: reqwest::Client,
}

/// The token to send, and whether it was renewed for this request.
struct Ready {
    header: HeaderValue,
    token: Secret,
    renewed: bool,
}

impl StoredAuth {
    fn snapshot(&self) -> Option<Login> {
        self.current.lock().ok().map(|l| l.clone())
    }

    /// The token to use: renewed first when it is due, or, with `refused`, when that
    /// token is still the current one (Latchkey refused it although it looked valid).
    async fn ready(&self, refused: Option<&Secret>) -> Result<Ready, Failure> {
        let _one = self.renewing.lock().await;
        let mine = self
            .snapshot()
            .ok_or_else(|| Failure::new(exit::SOFTWARE, "the sign-in state is poisoned"))?;
        let due = match refused {
            Some(t) => t.expose() == mine.access_token.expose() && mine.refresh_token.is_some(),
            None => mine.needs_refresh(login::now()),
        };
        if !due {
            return Ok(Ready {
                header: bearer(&mine.access_token)?,
                renewed: refused.is_some_and(|t| t.expose() != mine.access_token.expose()),
                token: mine.access_token,
            });
        }
        let lock = self.store.lock()?;
        // Another process may have renewed it (or signed out) meanwhile.
        let stored = self.store.get(&mine.url)?;
        let Some(stored) = stored else {
            return Err(login::login_again(&mine.url));
        };
        let renewed_elsewhere = stored.access_token.expose() != mine.access_token.expose()
            && !stored.needs_refresh(login::now());
        let fresh = if renewed_elsewhere {
            stored
        } else {
            match login::refresh(&self.provider, &stored).await {
                Ok(Some(fresh)) => {
                    self.store.put(&lock, &fresh)?;
                    fresh
                }
                Ok(None) => {
                    self.store.remove(&lock, &stored.url)?;
                    return Err(login::login_again(&stored.url));
                }
                // A provider that is down does not stop a token that still works for
                // its last seconds (renewed early, not yet expired): it is used as is.
                Err(f)
                    if refused.is_none()
                        && stored.expires_at.is_some_and(|at| at > login::now()) =>
                {
                    tracing::warn!(event = "login.renew_failed", error = %f.message);
                    return Ok(Ready {
                        header: bearer(&stored.access_token)?,
                        token: stored.access_token,
                        renewed: false,
                    });
                }
                Err(f) => return Err(f),
            }
        };
        drop(lock);
        tracing::debug!(event = "login.renewed", url = %fresh.url);
        let ready = Ready {
            header: bearer(&fresh.access_token)?,
            token: fresh.access_token.clone(),
            renewed: true,
        };
        if let Ok(mut c) = self.current.lock() {
            *c = fresh;
        }
        Ok(ready)
    }
}

/// The sign-in stored for `base`, if any. A login file that cannot be read is reported
/// and ignored here (local mode needs none; `latchkey login` names the problem).
fn stored_auth(base: &str, store: Option<Store>) -> Result<Option<StoredAuth>, Failure> {
    let Ok(key) = login::normalize_url(base) else {
        return Ok(None);
    };
    let Some(store) = store else {
        return Ok(None);
    };
    let found = match store.get(&key) {
        Ok(f) => f,
        Err(f) => {
            eprintln!("latchkey: ignoring the stored sign-in: {}", f.message);
            None
        }
    };
    let Some(current) = found else {
        return Ok(None);
    };
    Ok(Some(StoredAuth {
        store,
        current: Mutex::new(current),
        renewing: tokio::sync::Mutex::new(()),
        provider: login::http_client()?,
    }))
}

/// A client for one Latchkey.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    base: String,
    http: reqwest::Client,
    auth: Auth,
}

/// How long an ordinary API call may take (adding a server probes it, up to 5 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

impl Api {
    /// A client for the Latchkey at `c.url`; a URL that is not `http(s)://…` is a
    /// configuration error.
    pub(crate) fn new(c: &Connection) -> Result<Self, Failure> {
        Self::with_store(c, Store::open().ok())
    }

    /// [`Self::new`] with the sign-ins of `store` (none: no stored sign-in).
    fn with_store(c: &Connection, store: Option<Store>) -> Result<Self, Failure> {
        let url = url_of(c);
        let base = url.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base).map_err(|e| {
            Failure::new(exit::CONFIG, format!("--url / LATCHKEY_URL {base:?}: {e}"))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(Failure::new(
                exit::CONFIG,
                format!("--url / LATCHKEY_URL {base:?}: not an http(s) URL"),
            ));
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("latchkey-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::new(exit::FAILURE, format!("HTTP client: {e}")))?;
        let auth = match &c.token {
            Some(t) => Auth::Fixed(authorization(t)?),
            None => match stored_auth(&base, store)? {
                Some(s) => Auth::Stored(Arc::new(s)),
                None => Auth::None,
            },
        };
        Ok(Self { base, http, auth })
    }

    /// The base URL, without a trailing slash.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// Whether a token is configured with --token / LATCHKEY_TOKEN (for `mcp-config`,
    /// which never prints it; a stored sign-in is found again by `latchkey stdio`).
    pub(crate) fn has_token(&self) -> bool {
        matches!(self.auth, Auth::Fixed(_))
    }

    /// A request to `path` (starting with `/`) carrying the credential; send it with
    /// [`Self::send`] or [`Self::execute`], which renew a stored sign-in when due.
    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        match &self.auth {
            Auth::None => {}
            Auth::Fixed(a) => r = r.header(AUTHORIZATION, a.clone()),
            Auth::Stored(s) => {
                if let Some(h) = s.snapshot().and_then(|l| bearer(&l.access_token).ok()) {
                    r = r.header(AUTHORIZATION, h);
                }
            }
        }
        r
    }

    /// Sends `r` and returns whatever Latchkey answered; only a transport failure (or a
    /// stored sign-in that is over) is a [`Failure`]. With a stored sign-in, the token
    /// is renewed first when due, and a 401 to a token that looked valid is followed by
    /// one renewal and one retry (when the request can be sent again).
    pub(crate) async fn execute(
        &self,
        r: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Failure> {
        let transport = |e: reqwest::Error| Failure::transport(&self.base, &e);
        let Auth::Stored(s) = &self.auth else {
            return r.send().await.map_err(transport);
        };
        let mut req = r.build().map_err(transport)?;
        let again = req.try_clone();
        let ready = s.ready(None).await?;
        req.headers_mut().insert(AUTHORIZATION, ready.header);
        let resp = self.http.execute(req).await.map_err(transport)?;
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED || ready.renewed {
            return Ok(resp);
        }
        let Some(mut again) = again else {
            return Ok(resp);
        };
        let retry = s.ready(Some(&ready.token)).await?;
        if !retry.renewed {
            return Ok(resp);
        }
        again.headers_mut().insert(AUTHORIZATION, retry.header);
        self.http.execute(again).await.map_err(transport)
    }

    /// Sends `r`; a transport failure or a non-2xx answer becomes a [`Failure`].
    pub(crate) async fn send(
        &self,
        r: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Failure> {
        let resp = self.execute(r).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status.is_redirection() {
            return Err(Failure::new(
                exit::FAILURE,
                format!(
                    "Latchkey answered with a redirect (HTTP {}); check --url",
                    status.as_u16()
                ),
            ));
        }
        let body = resp.bytes().await.unwrap_or_default();
        Err(Failure::from_answer(status.as_u16(), &body))
    }

    /// One JSON call: `body` sent as JSON when given; the answer's JSON (`Null` for an
    /// empty answer such as a 204).
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        self.call_with_timeout(method, path, body, Some(CALL_TIMEOUT))
            .await
    }

    /// [`Self::call`] with an explicit whole-request timeout (`None`: none; a tool call
    /// may take as long as the tool does).
    pub(crate) async fn call_with_timeout(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<Value, Failure> {
        let mut r = self
            .request(method, path)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(t) = timeout {
            r = r.timeout(t);
        }
        if let Some(b) = body {
            r = r
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.to_string());
        }
        let resp = self.send(r).await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Failure::transport(&self.base, &e))?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            Failure::new(
                exit::FAILURE,
                format!("Latchkey answered {path} with something that is not JSON: {e}"),
            )
        })
    }

    /// `GET path`.
    pub(crate) async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call(reqwest::Method::GET, path, None).await
    }
}

/// `s` percent-encoded as one path segment (everything but RFC 3986 unreserved
/// characters), so ids and tool names cannot change the path.
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_follows_the_token() {
        let h = |t: &str| {
            authorization(&Secret::new(t))
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(h("lk_abc"), "Token lk_abc");
        assert_eq!(h("eyJa.eyJb.sig"), "Bearer eyJa.eyJb.sig");
        assert_eq!(h("opaque-token"), "Bearer opaque-token");
        assert_eq!(h("Token lk_x"), "Token lk_x");
        assert_eq!(h("bearer abc"), "bearer abc");
        assert!(authorization(&Secret::new("a\nb")).is_err());
        assert!(authorization(&Secret::new("lk_x")).unwrap().is_sensitive());
    }

    #[test]
    fn api_errors_map_to_exit_codes() {
        let f = |status, body: &str| Failure::from_answer(status, body.as_bytes());
        let bad = f(
            400,
            r#"{"code":"invalid_request","message":"invalid request","fields":[{"field":"url","message":"scheme \"ftp\" is not allowed"}]}"#,
        );
        assert_eq!(bad.code, exit::DATAERR);
        assert!(bad.message.contains("url: scheme"), "{}", bad.message);
        assert_eq!(
            f(404, r#"{"code":"not_found","message":"not found"}"#).code,
            exit::NOINPUT
        );
        assert_eq!(f(401, "").code, exit::NOPERM);
        assert_eq!(
            f(403, r#"{"code":"forbidden","message":"forbidden"}"#).code,
            exit::NOPERM
        );
        let reauth = f(
            409,
            r#"{"code":"needs_oauth_reauth","message":"the server needs to be reconnected","server_id":"s1"}"#,
        );
        assert_eq!(reauth.code, exit::TEMPFAIL);
        assert!(reauth.message.contains("latchkey connect s1"));
        // Latchkey's own words, when it explains, are not repeated or overridden.
        let said = "docs is not connected yet: connect it with `latchkey connect docs` or in Latchkey's web UI";
        let not_connected = f(
            409,
            &serde_json::json!({"code": "needs_oauth_reauth", "message": said, "server_id": "s1",
                "server_name": "docs", "reason": "not_connected"})
            .to_string(),
        );
        assert_eq!(not_connected.code, exit::TEMPFAIL);
        assert_eq!(not_connected.message, said);
        assert_eq!(
            f(
                503,
                r#"{"code":"encryption_key_missing","message":"no key"}"#
            )
            .code,
            exit::CONFIG
        );
        assert_eq!(f(503, r#"{"code":"unavailable"}"#).code, exit::UNAVAILABLE);
        assert_eq!(
            f(502, r#"{"code":"upstream_error"}"#).code,
            exit::UNAVAILABLE
        );
        assert_eq!(f(500, "oops").code, exit::FAILURE);
    }

    /// A provider's token endpoint and a Latchkey API in one mock: `/token` answers a
    /// refresh with `at-N`/`rt-N` (or `invalid_grant` for `rt-dead`); `/v1/servers`
    /// accepts only the newest access token. Counts what it was asked.
    mod renewal {
        use super::*;
        use std::sync::atomic::{AtomicUsize, Ordering};

        #[derive(Default)]
        struct Mock {
            issued: AtomicUsize,
            api_calls: AtomicUsize,
        }

        async fn mock() -> (String, Arc<Mock>) {
            let m = Arc::new(Mock::default());
            let token = {
                let m = m.clone();
                move |body: String| {
                    let m = m.clone();
                    async move {
                        if body.contains("refresh_token=rt-dead") {
                            return (
                                http::StatusCode::BAD_REQUEST,
                                r#"{"error":"invalid_grant"}"#.to_owned(),
                            );
                        }
                        assert!(body.contains("grant_type=refresh_token"), "{body}");
                        assert!(body.contains("resource=http"), "{body}");
                        let n = m.issued.fetch_add(1, Ordering::SeqCst) + 2;
                        (
                            http::StatusCode::OK,
                            format!(
                                r#"{{"access_token":"at-{n}","refresh_token":"rt-{n}","token_type":"Bearer","expires_in":3600}}"#
                            ),
                        )
                    }
                }
            };
            let servers = {
                let m = m.clone();
                move |headers: http::HeaderMap| {
                    let m = m.clone();
                    async move {
                        m.api_calls.fetch_add(1, Ordering::SeqCst);
                        let want = format!("Bearer at-{}", m.issued.load(Ordering::SeqCst) + 1);
                        match headers.get("authorization").and_then(|v| v.to_str().ok()) {
                            Some(h) if h == want => (http::StatusCode::OK, "[]".to_owned()),
                            _ => (
                                http::StatusCode::UNAUTHORIZED,
                                r#"{"code":"invalid_token","message":"refused"}"#.to_owned(),
                            ),
                        }
                    }
                }
            };
            let app = axum::Router::new()
                .route("/token", axum::routing::post(token))
                .route("/v1/servers", axum::routing::get(servers));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await });
            (base, m)
        }

        fn setup(base: &str, name: &str, at: &str, rt: &str, expires_at: u64) -> (Api, Store) {
            let dir = std::env::temp_dir().join(format!(
                "latchkey-api-{name}-{}-{}",
                std::process::id(),
                login::now()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            let store = Store::at(&dir);
            let lock = store.lock().unwrap();
            store
                .put(
                    &lock,
                    &Login {
                        url: base.to_owned(),
                        issuer: base.to_owned(),
                        token_endpoint: format!("{base}/token"),
                        revocation_endpoint: None,
                        client_id: "cli".into(),
                        resource: Some(format!("{base}/mcp")),
                        access_token: Secret::new(at),
                        refresh_token: Some(Secret::new(rt)),
                        expires_at: Some(expires_at),
                    },
                )
                .unwrap();
            drop(lock);
            let conn = Connection {
                url: base.to_owned(),
                token: None,
            };
            (Api::with_store(&conn, Some(store.clone())).unwrap(), store)
        }

        /// Removes the store's directory.
        fn cleanup(store: &Store) {
            if let Some(dir) = store.path().parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }

        #[tokio::test]
        async fn a_token_due_is_renewed_before_use_and_written_back() {
            let (base, m) = mock().await;
            let (api, store) = setup(&base, "due", "at-1", "rt-1", login::now() + 10);
            assert_eq!(api.get("/v1/servers").await.unwrap(), serde_json::json!([]));
            assert_eq!(m.api_calls.load(Ordering::SeqCst), 1, "no 401 first");
            let kept = store.get(&base).unwrap().unwrap();
            assert_eq!(kept.access_token.expose(), "at-2");
            assert_eq!(kept.refresh_token.unwrap().expose(), "rt-2");
            assert!(kept.expires_at.unwrap() > login::now() + 3000);
            // Fresh now: used as it is.
            api.get("/v1/servers").await.unwrap();
            assert_eq!(m.issued.load(Ordering::SeqCst), 1);
            cleanup(&store);
        }

        #[tokio::test]
        async fn a_refused_token_that_looked_valid_is_renewed_once_and_retried() {
            let (base, m) = mock().await;
            // at-0 is not the newest (at-1 would be): refused although not expired.
            let (api, store) = setup(&base, "refused", "at-0", "rt-1", login::now() + 3600);
            assert_eq!(api.get("/v1/servers").await.unwrap(), serde_json::json!([]));
            assert_eq!(m.api_calls.load(Ordering::SeqCst), 2, "one 401, one retry");
            assert_eq!(m.issued.load(Ordering::SeqCst), 1, "one renewal");
            assert_eq!(
                store.get(&base).unwrap().unwrap().access_token.expose(),
                "at-2"
            );
            cleanup(&store);
        }

        #[tokio::test]
        async fn a_renewal_done_by_another_process_is_adopted_not_repeated() {
            let (base, m) = mock().await;
            let (first, store) = setup(&base, "shared", "at-1", "rt-1", login::now() + 10);
            // A second command that read the same (due) sign-in before the first renewed.
            let conn = Connection {
                url: base.clone(),
                token: None,
            };
            let second = Api::with_store(&conn, Some(store.clone())).unwrap();
            first.get("/v1/servers").await.unwrap();
            second.get("/v1/servers").await.unwrap();
            // One renewal: the second took the rotated tokens from the file instead of
            // spending the old refresh token (which a rotating provider refuses).
            assert_eq!(m.issued.load(Ordering::SeqCst), 1);
            assert_eq!(m.api_calls.load(Ordering::SeqCst), 2);
            assert_eq!(
                store
                    .get(&base)
                    .unwrap()
                    .unwrap()
                    .refresh_token
                    .unwrap()
                    .expose(),
                "rt-2"
            );
            cleanup(&store);
        }

        #[tokio::test]
        async fn a_provider_down_does_not_stop_a_token_not_yet_expired() {
            let (base, _m) = mock().await;
            let (_, store) = setup(&base, "down", "at-1", "rt-1", login::now() + 20);
            // The token endpoint now points at nothing that listens.
            let lock = store.lock().unwrap();
            let mut l = store.get(&base).unwrap().unwrap();
            l.token_endpoint = "http://127.0.0.1:9/token".into();
            store.put(&lock, &l).unwrap();
            drop(lock);
            let api = Api::with_store(
                &Connection {
                    url: base.clone(),
                    token: None,
                },
                Some(store.clone()),
            )
            .unwrap();
            // at-1 is what the mock API takes before any renewal.
            assert_eq!(api.get("/v1/servers").await.unwrap(), serde_json::json!([]));
            // Expired: the failure is reported.
            let lock = store.lock().unwrap();
            l.expires_at = Some(1);
            store.put(&lock, &l).unwrap();
            drop(lock);
            let expired = Api::with_store(
                &Connection {
                    url: base.clone(),
                    token: None,
                },
                Some(store.clone()),
            )
            .unwrap();
            let f = expired.get("/v1/servers").await.unwrap_err();
            assert_eq!(f.code, exit::UNAVAILABLE, "{}", f.message);
            assert!(f.message.contains("cannot renew"), "{}", f.message);
            assert!(
                store.get(&base).unwrap().is_some(),
                "kept for when it is back"
            );
            cleanup(&store);
        }

        #[tokio::test]
        async fn a_renewal_refused_with_invalid_grant_forgets_the_sign_in() {
            let (base, _m) = mock().await;
            let (api, store) = setup(&base, "dead", "at-1", "rt-dead", 1);
            let f = api.get("/v1/servers").await.unwrap_err();
            assert_eq!(f.code, exit::NOPERM);
            assert!(f.message.contains("run `latchkey login`"), "{}", f.message);
            assert!(store.get(&base).unwrap().is_none());
            cleanup(&store);
        }
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(segment("echo_1-x.y~"), "echo_1-x.y~");
    }
}
