//! `latchkey login` / `latchkey logout`: sign in to a Latchkey that runs in `jwt` mode
//! through the organisation's OpenID provider, and keep the tokens for the other
//! commands.
//!
//! The flow: `GET {url}/v1/auth/config` names the provider (`cli.issuer`), the public
//! client the CLI uses and the `resource` that makes the provider's access token one
//! Latchkey's API accepts; OpenID discovery on the issuer; then the authorization code
//! grant with PKCE (S256) and a loopback redirect on `127.0.0.1` (an ephemeral port), or
//! the device authorization grant (RFC 8628) with `--device` or when no browser could
//! be opened.
//!
//! The tokens are kept in `login.json` in the CLI's configuration directory
//! (`$LATCHKEY_CONFIG_DIR`, else `$XDG_CONFIG_HOME/latchkey`, else
//! `~/.config/latchkey`), mode 0600 in a 0700 directory, keyed by the normalized
//! Latchkey URL. Every write is a rename of a complete temporary file, under an
//! advisory lock that also serializes refreshes between processes (a rotated refresh
//! token is used once: two processes refreshing with the same one would lose the
//! login).
//!
//! Requests to the provider are plain reqwest, not the egress guard: the provider is
//! the organisation's, named by the Latchkey the user chose, and is often on a private
//! network the guard (made for URLs learned from remote documents) refuses. Redirects
//! are never followed. Tokens, codes, verifiers and states are [`Secret`]s and are
//! never printed or logged.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use latchkey_core::{Clock as _, Secret, SystemClock};
use latchkey_oauth::as_metadata::{self, AuthorizationServerMetadata};
use latchkey_oauth::authorize::{CallbackParams, check_callback};
use latchkey_oauth::error::CallbackError;
use latchkey_oauth::{grants, pkce};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::api::{self, Connection, Failure};
use crate::exit;

/// How long `latchkey login` waits for the browser (or the device code) to come back.
pub(crate) const SIGN_IN_TIMEOUT: Duration = Duration::from_secs(300);
/// A token this close to its expiry is refreshed before it is used.
pub(crate) const REFRESH_MARGIN_SECS: u64 = 30;
/// The file in the configuration directory.
const FILE_NAME: &str = "login.json";
/// The grant type of RFC 8628 §3.4.
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// Largest answer read from the provider or from `/v1/auth/config`.
const BODY_LIMIT: usize = 256 * 1024;

/// `latchkey login`
#[derive(Debug, clap::Args)]
pub(crate) struct LoginArgs {
    /// Use the device authorization grant: sign in on any device with a code (for a
    /// machine without a browser).
    #[arg(long)]
    device: bool,
    /// Do not open a browser: only print the URL to open.
    #[arg(long)]
    no_browser: bool,
}

/// `latchkey logout`
#[derive(Debug, clap::Args)]
pub(crate) struct LogoutArgs {}

// ---------------------------------------------------------------------------------
// Storage

/// The configuration directory (see the module documentation).
pub(crate) fn config_dir() -> Result<PathBuf, Failure> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = var("LATCHKEY_CONFIG_DIR") {
        return Ok(d);
    }
    // The XDG spec says a relative value is to be ignored.
    if let Some(d) = var("XDG_CONFIG_HOME").filter(|d| d.is_absolute()) {
        return Ok(d.join("latchkey"));
    }
    match var("HOME") {
        Some(h) => Ok(h.join(".config").join("latchkey")),
        None => Err(Failure::new(
            exit::CONFIG,
            "no configuration directory: set LATCHKEY_CONFIG_DIR (or HOME)",
        )),
    }
}

/// The key of a Latchkey URL in the store: scheme and host lower-cased, the default
/// port dropped, no query, fragment or trailing slash.
pub(crate) fn normalize_url(url: &str) -> Result<String, Failure> {
    let bad =
        |why: String| Failure::new(exit::CONFIG, format!("--url / LATCHKEY_URL {url:?}: {why}"));
    let u = reqwest::Url::parse(url.trim()).map_err(|e| bad(e.to_string()))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(bad("not an http(s) URL".into()));
    }
    Ok(format!(
        "{}{}",
        u.origin().ascii_serialization(),
        u.path().trim_end_matches('/')
    ))
}

/// A stored sign-in to one Latchkey.
#[derive(Debug, Clone)]
pub(crate) struct Login {
    /// The normalized Latchkey URL (the key).
    pub(crate) url: String,
    /// The provider's issuer.
    pub(crate) issuer: String,
    /// Its token endpoint (for refreshes).
    pub(crate) token_endpoint: String,
    /// Its revocation endpoint, when advertised (for `logout`).
    pub(crate) revocation_endpoint: Option<String>,
    /// The public client the CLI signed in with.
    pub(crate) client_id: String,
    /// The RFC 8707 resource sent again on refresh (the provider may need it to issue
    /// an access token for Latchkey rather than for its userinfo endpoint).
    pub(crate) resource: Option<String>,
    /// The access token.
    pub(crate) access_token: Secret,
    /// The refresh token, when the provider issued one.
    pub(crate) refresh_token: Option<Secret>,
    /// Unix seconds; `None` when the provider did not say.
    pub(crate) expires_at: Option<u64>,
}

impl Login {
    /// Whether the access token should be refreshed before use at `now` (expired or
    /// within [`REFRESH_MARGIN_SECS`] of it) and can be.
    pub(crate) fn needs_refresh(&self, now: u64) -> bool {
        self.refresh_token.is_some()
            && self
                .expires_at
                .is_some_and(|at| now.saturating_add(REFRESH_MARGIN_SECS) >= at)
    }
}

/// The file's form. Not `Debug`: it holds the tokens in the clear.
#[derive(Serialize, Deserialize, Default)]
struct FileForm {
    #[serde(default)]
    logins: BTreeMap<String, Record>,
}

#[derive(Serialize, Deserialize, Clone)]
struct Record {
    url: String,
    issuer: String,
    token_endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revocation_endpoint: Option<String>,
    client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resource: Option<String>,
    access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
}

impl From<Record> for Login {
    fn from(r: Record) -> Self {
        Self {
            url: r.url,
            issuer: r.issuer,
            token_endpoint: r.token_endpoint,
            revocation_endpoint: r.revocation_endpoint,
            client_id: r.client_id,
            resource: r.resource,
            access_token: Secret::new(r.access_token),
            refresh_token: r.refresh_token.map(Secret::new),
            expires_at: r.expires_at,
        }
    }
}

impl From<&Login> for Record {
    fn from(l: &Login) -> Self {
        Self {
            url: l.url.clone(),
            issuer: l.issuer.clone(),
            token_endpoint: l.token_endpoint.clone(),
            revocation_endpoint: l.revocation_endpoint.clone(),
            client_id: l.client_id.clone(),
            resource: l.resource.clone(),
            access_token: l.access_token.expose().to_owned(),
            refresh_token: l.refresh_token.as_ref().map(|t| t.expose().to_owned()),
            expires_at: l.expires_at,
        }
    }
}

/// `login.json` in one directory.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    dir: PathBuf,
}

/// The store's advisory lock, released on drop.
#[derive(Debug)]
pub(crate) struct StoreLock {
    _file: File,
}

impl Store {
    /// The store in the configuration directory.
    pub(crate) fn open() -> Result<Self, Failure> {
        Ok(Self::at(config_dir()?))
    }

    /// The store in `dir`.
    pub(crate) fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The file's path.
    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    fn io_failure(&self, what: &str, e: &std::io::Error) -> Failure {
        Failure::new(
            exit::CONFIG,
            format!("cannot {what} {}: {e}", self.path().display()),
        )
    }

    /// Creates the directory (0700) if needed, tightening it if it is ours and wider.
    fn ensure_dir(&self) -> Result<(), Failure> {
        let mut b = fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(&self.dir)
            .map_err(|e| self.io_failure("create the directory of", &e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let meta = fs::metadata(&self.dir)
                .map_err(|e| self.io_failure("read the directory of", &e))?;
            if meta.permissions().mode() & 0o077 != 0 {
                fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
                    .map_err(|e| self.io_failure("restrict the directory of", &e))?;
            }
        }
        Ok(())
    }

    /// Takes the store's exclusive lock (a sibling `login.json.lock`), waiting for
    /// another process that holds it.
    pub(crate) fn lock(&self) -> Result<StoreLock, Failure> {
        self.ensure_dir()?;
        let mut o = OpenOptions::new();
        o.create(true).truncate(false).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let file = o
            .open(self.dir.join(format!("{FILE_NAME}.lock")))
            .map_err(|e| self.io_failure("lock", &e))?;
        file.lock().map_err(|e| self.io_failure("lock", &e))?;
        Ok(StoreLock { _file: file })
    }

    fn read(&self) -> Result<FileForm, Failure> {
        match fs::read(self.path()) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Failure::new(
                    exit::CONFIG,
                    format!(
                        "{} is not a login file ({e}): remove it and run `latchkey login`",
                        self.path().display()
                    ),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileForm::default()),
            Err(e) => Err(self.io_failure("read", &e)),
        }
    }

    /// Writes the whole file: a temporary file (0600) in the same directory, synced,
    /// then renamed over the old one, so a reader sees the old or the new file, never
    /// half of one.
    fn write(&self, form: &FileForm) -> Result<(), Failure> {
        self.ensure_dir()?;
        let body = serde_json::to_vec_pretty(form)
            .map_err(|e| Failure::new(exit::SOFTWARE, format!("login file: {e}")))?;
        let tmp = self
            .dir
            .join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
        let mut o = OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let written = (|| {
            let mut f = o.open(&tmp)?;
            // A file left by an earlier crash with other bits keeps them on open.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                f.set_permissions(fs::Permissions::from_mode(0o600))?;
            }
            f.write_all(&body)?;
            f.sync_all()?;
            fs::rename(&tmp, self.path())
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(self.io_failure("write", &e));
        }
        Ok(())
    }

    /// The stored sign-in for the normalized URL `url`.
    pub(crate) fn get(&self, url: &str) -> Result<Option<Login>, Failure> {
        Ok(self.read()?.logins.remove(url).map(Login::from))
    }

    /// Stores (or replaces) a sign-in. The caller holds [`Self::lock`].
    pub(crate) fn put(&self, _lock: &StoreLock, login: &Login) -> Result<(), Failure> {
        let mut form = self.read()?;
        form.logins.insert(login.url.clone(), Record::from(login));
        self.write(&form)
    }

    /// Forgets the sign-in for `url`; the one forgotten. The caller holds
    /// [`Self::lock`].
    pub(crate) fn remove(&self, _lock: &StoreLock, url: &str) -> Result<Option<Login>, Failure> {
        let mut form = self.read()?;
        let gone = form.logins.remove(url);
        if gone.is_some() {
            self.write(&form)?;
        }
        Ok(gone.map(Login::from))
    }
}

// ---------------------------------------------------------------------------------
// The provider

/// Seconds since the epoch.
pub(crate) fn now() -> u64 {
    SystemClock.now().as_secs()
}

/// The client for the provider and for `/v1/auth/config`.
pub(crate) fn http_client() -> Result<reqwest::Client, Failure> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("latchkey-cli/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Failure::new(exit::FAILURE, format!("HTTP client: {e}")))
}

/// Status and body (at most [`BODY_LIMIT`] bytes) of a request.
async fn fetch(r: reqwest::RequestBuilder, what: &str) -> Result<(u16, Vec<u8>), Failure> {
    let unreachable = |e: &reqwest::Error| {
        Failure::unavailable(format!("cannot reach {what}: {}", api::error_chain(e)))
    };
    let mut resp = r.send().await.map_err(|e| unreachable(&e))?;
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| unreachable(&e))? {
        if body.len() + chunk.len() > BODY_LIMIT {
            return Err(Failure::unavailable(format!(
                "{what} answered more than {BODY_LIMIT} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body))
}

/// An `application/x-www-form-urlencoded` body (reqwest's `form` is a feature the
/// workspace does not enable).
fn form_body(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        for (j, part) in [k, v].into_iter().enumerate() {
            if j > 0 {
                out.push('=');
            }
            for b in part.bytes() {
                match b {
                    b' ' => out.push('+'),
                    b'*' | b'-' | b'.' | b'_' => out.push(char::from(b)),
                    _ if b.is_ascii_alphanumeric() => out.push(char::from(b)),
                    _ => out.push_str(&format!("%{b:02X}")),
                }
            }
        }
    }
    out
}

/// What `GET /v1/auth/config` says about signing in from the CLI.
#[derive(Debug, Deserialize)]
struct AuthConfig {
    mode: String,
    #[serde(default)]
    cli: Option<CliClient>,
}

#[derive(Debug, Deserialize)]
struct CliClient {
    issuer: String,
    client_id: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    resource: Option<String>,
}

async fn auth_config(http: &reqwest::Client, base: &str) -> Result<AuthConfig, Failure> {
    let what = format!("Latchkey at {base}");
    let (status, body) = fetch(http.get(format!("{base}/v1/auth/config")), &what).await?;
    match status {
        200 => serde_json::from_slice(&body).map_err(|e| {
            Failure::new(
                exit::FAILURE,
                format!("{what} answered /v1/auth/config with something unexpected: {e}"),
            )
        }),
        404 => Err(Failure::new(
            exit::CONFIG,
            format!(
                "{what} offers no sign-in (no /v1/auth/config): it may be an older version; use --token"
            ),
        )),
        _ => Err(Failure::from_answer(status, &body)),
    }
}

/// The provider's metadata: the parsed document and the endpoint of RFC 8628, which
/// the shared parser does not read.
#[derive(Debug)]
struct Provider {
    metadata: AuthorizationServerMetadata,
    device_authorization_endpoint: Option<String>,
}

/// OpenID discovery on `issuer` (`{issuer}/.well-known/openid-configuration`), then
/// the RFC 8414 forms; the document's `issuer` must equal `issuer` exactly.
async fn discover(http: &reqwest::Client, issuer: &str) -> Result<Provider, Failure> {
    let mut urls = vec![format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )];
    for u in as_metadata::candidates(issuer) {
        if !urls.contains(&u) {
            urls.push(u);
        }
    }
    let mut tried = Vec::new();
    for url in urls {
        let what = format!("the OpenID provider {issuer}");
        let (status, body) =
            fetch(http.get(&url).header("accept", "application/json"), &what).await?;
        if status != 200 {
            tried.push(format!("{url}: HTTP {status}"));
            continue;
        }
        match AuthorizationServerMetadata::parse(&body) {
            Ok(m) if m.issuer == issuer => {
                let raw: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let device_authorization_endpoint = raw
                    .get("device_authorization_endpoint")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                return Ok(Provider {
                    metadata: m,
                    device_authorization_endpoint,
                });
            }
            Ok(m) => tried.push(format!("{url}: issuer {:?} is not {issuer:?}", m.issuer)),
            Err(why) => tried.push(format!("{url}: {why}")),
        }
    }
    Err(Failure::unavailable(format!(
        "no OpenID provider metadata for {issuer}:\n  - {}",
        tried.join("\n  - ")
    )))
}

/// A token endpoint answer, as a [`Failure`] when it is an error.
fn token_answer(status: u16, body: &[u8]) -> Result<grants::TokenResponse, TokenError> {
    if (200..300).contains(&status) {
        return grants::parse_token_response(body).map_err(|e| TokenError {
            code: None,
            message: printable(&format!("the provider's token answer is not usable: {e}")),
        });
    }
    let e = grants::parse_error(status, body);
    Err(TokenError {
        code: e.oauth_error_code().map(str::to_owned),
        message: printable(&format!("the provider refused the token request: {e}")),
    })
}

/// A refused token request: the OAuth `error` code and a message.
#[derive(Debug)]
struct TokenError {
    code: Option<String>,
    message: String,
}

async fn token_request(
    http: &reqwest::Client,
    endpoint: &str,
    form: &[(&str, &str)],
) -> Result<grants::TokenResponse, TokenError> {
    let (status, body) = fetch(
        http.post(endpoint)
            .header("accept", "application/json")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(form)),
        "the OpenID provider's token endpoint",
    )
    .await
    .map_err(|f| TokenError {
        code: None,
        message: f.message,
    })?;
    token_answer(status, &body)
}

fn expires_at(t: &grants::TokenResponse) -> Option<u64> {
    t.expires_in.map(|s| now().saturating_add(s))
}

/// The refresh grant for `login`: the login with the new tokens (the old refresh
/// token kept when none was issued). `invalid_grant` is `Ok(None)`: the sign-in is over.
pub(crate) async fn refresh(
    http: &reqwest::Client,
    login: &Login,
) -> Result<Option<Login>, Failure> {
    let Some(rt) = &login.refresh_token else {
        return Ok(None);
    };
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", rt.expose()),
        ("client_id", login.client_id.as_str()),
    ];
    if let Some(r) = &login.resource {
        form.push(("resource", r.as_str()));
    }
    match token_request(http, &login.token_endpoint, &form).await {
        Ok(t) => Ok(Some(Login {
            expires_at: expires_at(&t),
            access_token: t.access_token,
            refresh_token: t.refresh_token.or_else(|| login.refresh_token.clone()),
            ..login.clone()
        })),
        Err(e) if e.code.as_deref() == Some("invalid_grant") => Ok(None),
        Err(e) => Err(Failure::unavailable(format!(
            "cannot renew your sign-in to {}: {}",
            login.url, e.message
        ))),
    }
}

/// The message when a sign-in is over.
pub(crate) fn login_again(url: &str) -> Failure {
    Failure::new(
        exit::NOPERM,
        format!(
            "your sign-in to Latchkey at {url} has expired or was revoked: run `latchkey login`"
        ),
    )
}

// ---------------------------------------------------------------------------------
// The loopback redirect

/// What the callback page says.
const DONE_PAGE: &str = "<!doctype html><meta charset=utf-8><title>Latchkey</title>\
<p>Signed in to Latchkey. You can close this tab and return to the terminal.</p>";

/// A one-shot listener for the authorization response on `127.0.0.1`.
#[derive(Debug)]
pub(crate) struct Loopback {
    listener: tokio::net::TcpListener,
    redirect_uri: String,
}

/// What the listener hands back: the code, or why the sign-in failed.
type Outcome = Result<Secret, CallbackError>;

struct Waiting {
    state: Secret,
    issuer: String,
    iss_required: bool,
    done: Mutex<Option<oneshot::Sender<Outcome>>>,
}

impl Loopback {
    /// Binds `127.0.0.1:0`.
    pub(crate) async fn bind() -> Result<Self, Failure> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| Failure::new(exit::FAILURE, format!("cannot listen on 127.0.0.1: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| Failure::new(exit::FAILURE, format!("cannot listen on 127.0.0.1: {e}")))?
            .port();
        Ok(Self {
            listener,
            redirect_uri: format!("http://127.0.0.1:{port}/callback"),
        })
    }

    /// `http://127.0.0.1:<port>/callback`.
    pub(crate) fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// Serves until one `GET /callback` carries `state` (anything else is answered 400
    /// and waiting goes on), or `timeout`. `None`: timed out.
    pub(crate) async fn wait(
        self,
        state: Secret,
        issuer: &str,
        iss_required: bool,
        timeout: Duration,
    ) -> Result<Option<Outcome>, Failure> {
        let (tx, rx) = oneshot::channel();
        let waiting = Arc::new(Waiting {
            state,
            issuer: issuer.to_owned(),
            iss_required,
            done: Mutex::new(Some(tx)),
        });
        let app = axum::Router::new().fallback(callback).with_state(waiting);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = axum::serve(self.listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.await;
                })
                .await;
        });
        let got = tokio::time::timeout(timeout, rx).await;
        let _ = stop_tx.send(());
        // The answer page is delivered by the graceful shutdown; a browser keeping an
        // idle connection open does not hold the command up for long.
        let abort = server.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), server)
            .await
            .is_err()
        {
            abort.abort();
        }
        match got {
            Ok(Ok(outcome)) => Ok(Some(outcome)),
            Ok(Err(_)) => Err(Failure::new(exit::SOFTWARE, "the sign-in listener stopped")),
            Err(_) => Ok(None),
        }
    }
}

async fn callback(
    axum::extract::State(w): axum::extract::State<Arc<Waiting>>,
    method: http::Method,
    uri: http::Uri,
) -> (http::StatusCode, axum::response::Html<String>) {
    let refuse = |why: &str| {
        (
            http::StatusCode::BAD_REQUEST,
            axum::response::Html(format!(
                "<!doctype html><meta charset=utf-8><title>Latchkey</title><p>{why}</p>"
            )),
        )
    };
    if method != http::Method::GET || uri.path() != "/callback" {
        return refuse("Not found: this is the sign-in callback of `latchkey login`.");
    }
    let params = CallbackParams::from_query(uri.query().unwrap_or(""));
    let right_state = params
        .state
        .as_ref()
        .is_some_and(|s| pkce::state_hash(s.expose()) == pkce::state_hash(w.state.expose()));
    if !right_state {
        return refuse("This is not the sign-in `latchkey login` is waiting for (wrong state).");
    }
    let Some(done) = w.done.lock().ok().and_then(|mut d| d.take()) else {
        return refuse("This sign-in was already completed.");
    };
    let outcome = check_callback(&w.state, &w.issuer, w.iss_required, params);
    let page = match &outcome {
        Ok(_) => (
            http::StatusCode::OK,
            axum::response::Html(DONE_PAGE.to_owned()),
        ),
        Err(e) => refuse(&format!(
            "Sign-in failed: {}. Return to the terminal.",
            html_escape(&callback_error(e))
        )),
    };
    let _ = done.send(outcome);
    page
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A refused authorization response in words (the provider's own description is shown
/// only as data, never as markup).
fn callback_error(e: &CallbackError) -> String {
    let text = match e {
        CallbackError::Provider { error, description } => match description {
            Some(d) => format!("the provider answered {error}: {d}"),
            None => format!("the provider answered {error}"),
        },
        other => other.to_string(),
    };
    printable(&text)
}

/// Text from the provider made safe for a terminal: control characters (escape
/// sequences could rewrite what the person sees) become `?`, and it is cut short.
fn printable(s: &str) -> String {
    const MAX: usize = 400;
    let mut out: String = s
        .chars()
        .take(MAX)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > MAX {
        out.push('…');
    }
    out
}

// ---------------------------------------------------------------------------------
// The commands

/// Opens `url` in a browser: `$BROWSER` when set, else the desktop's opener.
fn open_browser(url: &str) -> bool {
    if let Some(b) = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.trim().is_empty())
    {
        return browser_commands(&b, url).into_iter().any(|argv| {
            let Some((program, args)) = argv.split_first() else {
                return false;
            };
            std::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map(|mut child| {
                    // Reaped in the background; the browser's outcome does not matter.
                    std::thread::spawn(move || {
                        let _ = child.wait();
                    });
                })
                .is_ok()
        });
    }
    crate::connect::open_browser(url)
}

/// The commands `$BROWSER` names, in order: `:`-separated, each split on whitespace,
/// with `%s` replaced by the URL or the URL appended (the convention xdg-open and
/// Python's `webbrowser` follow). The URL stays one argument; no shell is involved.
fn browser_commands(browser: &str, url: &str) -> Vec<Vec<String>> {
    browser
        .split(':')
        .map(|c| {
            let mut argv: Vec<String> = c.split_whitespace().map(str::to_owned).collect();
            if argv.iter().any(|a| a.contains("%s")) {
                for a in &mut argv {
                    *a = a.replace("%s", url);
                }
            } else if !argv.is_empty() {
                argv.push(url.to_owned());
            }
            argv
        })
        .filter(|argv| !argv.is_empty())
        .collect()
}

pub(crate) async fn login(a: LoginArgs, conn: &Connection) -> anyhow::Result<ExitCode> {
    let base = normalize_url(&api::url_of(conn))?;
    let http = http_client()?;
    let config = auth_config(&http, &base).await?;
    if config.mode != "jwt" {
        eprintln!(
            "Latchkey at {base} runs in {} mode: it needs no sign-in.",
            config.mode
        );
        return Ok(ExitCode::SUCCESS);
    }
    let Some(cli) = config.cli else {
        return Err(Failure::new(
            exit::CONFIG,
            format!(
                "Latchkey at {base} has no client for the CLI: its operator sets auth.login.cli_client_id (LATCHKEY_LOGIN_CLI_CLIENT_ID); meanwhile use --token"
            ),
        )
        .into());
    };
    let provider = discover(&http, &cli.issuer).await?;
    let mut scopes = cli.scopes.clone();
    if provider.metadata.lists_scope("offline_access")
        && !scopes.iter().any(|s| s == "offline_access")
    {
        scopes.push("offline_access".into());
    }
    let scope = scopes.join(" ");
    let tokens = if a.device {
        device_flow(&http, &provider, &cli, &scope).await?
    } else {
        match code_flow(&http, &provider, &cli, &scope, a.no_browser).await? {
            Some(t) => t,
            // No browser could be opened: the device grant, where there is one.
            None => device_flow(&http, &provider, &cli, &scope).await?,
        }
    };
    let login = Login {
        url: base.clone(),
        issuer: cli.issuer.clone(),
        token_endpoint: provider.metadata.token_endpoint.clone(),
        revocation_endpoint: provider.metadata.revocation_endpoint.clone(),
        client_id: cli.client_id.clone(),
        resource: cli.resource.clone(),
        expires_at: expires_at(&tokens),
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
    };
    // Latchkey must accept the token before it is kept.
    let whoami = http
        .get(format!("{base}/v1/whoami"))
        .header("accept", "application/json")
        .header(
            "authorization",
            format!("Bearer {}", login.access_token.expose()),
        );
    let (status, body) = fetch(whoami, &format!("Latchkey at {base}")).await?;
    if status != 200 {
        let f = Failure::from_answer(status, &body);
        return Err(Failure::new(
            f.code,
            format!(
                "signed in at {}, but Latchkey at {base} refused the token (HTTP {status}): its auth settings (audience, tenant claim) may not match the provider's tokens",
                cli.issuer
            ),
        )
        .into());
    }
    let me: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let store = Store::open()?;
    let lock = store.lock()?;
    store.put(&lock, &login)?;
    drop(lock);
    let who = me
        .get("subject")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let tenant = me.get("tenant").and_then(Value::as_str);
    match tenant {
        Some(t) => eprintln!("Signed in to Latchkey at {base} as {who} (tenant {t})."),
        None => eprintln!("Signed in to Latchkey at {base} as {who}."),
    }
    if login.refresh_token.is_none() {
        eprintln!(
            "The provider issued no refresh token: run `latchkey login` again when this sign-in expires."
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The authorization code grant through the loopback redirect. `None`: no browser
/// could be opened and the provider offers the device grant instead.
async fn code_flow(
    http: &reqwest::Client,
    p: &Provider,
    cli: &CliClient,
    scope: &str,
    no_browser: bool,
) -> Result<Option<grants::TokenResponse>, Failure> {
    let Some(authorization_endpoint) = &p.metadata.authorization_endpoint else {
        if p.device_authorization_endpoint.is_some() {
            return Ok(None);
        }
        return Err(Failure::unavailable(format!(
            "the OpenID provider {} advertises no authorization_endpoint",
            cli.issuer
        )));
    };
    let listener = Loopback::bind().await?;
    let redirect_uri = listener.redirect_uri().to_owned();
    let state = pkce::new_state();
    let verifier = pkce::new_verifier();
    let mut url = reqwest::Url::parse(authorization_endpoint)
        .map_err(|e| Failure::unavailable(format!("the provider's authorization_endpoint: {e}")))?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &cli.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", scope)
            .append_pair("state", state.expose())
            .append_pair("code_challenge", &pkce::challenge(&verifier))
            .append_pair("code_challenge_method", "S256");
        if let Some(r) = &cli.resource {
            q.append_pair("resource", r);
        }
        // OIDC Core §11: a refresh token (offline_access) is granted only with consent.
        if scope.split(' ').any(|s| s == "offline_access") {
            q.append_pair("prompt", "consent");
        }
    }
    // The URL carries the state: it is shown to the person signing in, never logged.
    eprintln!("To sign in to Latchkey, open this URL in a browser:");
    eprintln!("  {url}");
    if !no_browser {
        if open_browser(url.as_str()) {
            eprintln!("(opening your browser)");
        } else if p.device_authorization_endpoint.is_some() {
            eprintln!("No browser could be opened: signing in with a code instead.");
            return Ok(None);
        }
    }
    eprintln!(
        "Waiting for the sign-in (up to {} minutes)…",
        SIGN_IN_TIMEOUT.as_secs() / 60
    );
    let code = match listener
        .wait(
            state,
            &cli.issuer,
            p.metadata.authorization_response_iss_parameter_supported,
            SIGN_IN_TIMEOUT,
        )
        .await?
    {
        None => {
            return Err(Failure::new(
                exit::TEMPFAIL,
                format!(
                    "no sign-in within {} minutes: run `latchkey login` again (or `latchkey login --device` on a machine without a browser)",
                    SIGN_IN_TIMEOUT.as_secs() / 60
                ),
            ));
        }
        Some(Err(e)) => {
            let code = match e {
                CallbackError::Provider { .. } => exit::NOPERM,
                _ => exit::FAILURE,
            };
            return Err(Failure::new(
                code,
                format!("sign-in failed: {}", callback_error(&e)),
            ));
        }
        Some(Ok(code)) => code,
    };
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.expose()),
        ("redirect_uri", redirect_uri.as_str()),
        ("code_verifier", verifier.expose()),
        ("client_id", cli.client_id.as_str()),
    ];
    if let Some(r) = &cli.resource {
        form.push(("resource", r.as_str()));
    }
    token_request(http, &p.metadata.token_endpoint, &form)
        .await
        .map(Some)
        .map_err(|e| Failure::new(exit::NOPERM, e.message))
}

/// RFC 8628: the device authorization request, the code shown, the token endpoint
/// polled.
async fn device_flow(
    http: &reqwest::Client,
    p: &Provider,
    cli: &CliClient,
    scope: &str,
) -> Result<grants::TokenResponse, Failure> {
    let Some(endpoint) = &p.device_authorization_endpoint else {
        return Err(Failure::new(
            exit::CONFIG,
            format!(
                "the OpenID provider {} does not offer the device authorization grant: run `latchkey login` where a browser can be opened",
                cli.issuer
            ),
        ));
    };
    let mut form = vec![("client_id", cli.client_id.as_str()), ("scope", scope)];
    if let Some(r) = &cli.resource {
        form.push(("resource", r.as_str()));
    }
    let (status, body) = fetch(
        http.post(endpoint)
            .header("accept", "application/json")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(&form)),
        "the OpenID provider's device authorization endpoint",
    )
    .await?;
    if !(200..300).contains(&status) {
        let e = grants::parse_error(status, &body);
        return Err(Failure::new(
            exit::NOPERM,
            printable(&format!(
                "the provider refused the device authorization request: {e}"
            )),
        ));
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let (Some(device_code), Some(user_code), Some(verification_uri)) =
        (s("device_code"), s("user_code"), s("verification_uri"))
    else {
        return Err(Failure::unavailable(
            "the provider's device authorization answer lacks device_code, user_code or verification_uri",
        ));
    };
    let device_code = Secret::new(device_code);
    let lifetime = v
        .get("expires_in")
        .and_then(Value::as_u64)
        .map(Duration::from_secs)
        .unwrap_or(SIGN_IN_TIMEOUT)
        .min(SIGN_IN_TIMEOUT);
    let mut interval = v
        .get("interval")
        .and_then(Value::as_u64)
        .unwrap_or(5)
        .max(1);
    eprintln!("To sign in to Latchkey, open {verification_uri} and enter the code {user_code}");
    if let Some(complete) = s("verification_uri_complete") {
        eprintln!("  (or open {complete})");
    }
    eprintln!(
        "Waiting for the sign-in (up to {} minutes)…",
        lifetime.as_secs().div_ceil(60)
    );
    let deadline = tokio::time::Instant::now() + lifetime;
    let mut form = vec![
        ("grant_type", DEVICE_CODE_GRANT),
        ("device_code", device_code.expose()),
        ("client_id", cli.client_id.as_str()),
    ];
    if let Some(r) = &cli.resource {
        form.push(("resource", r.as_str()));
    }
    loop {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        if tokio::time::Instant::now() >= deadline {
            return Err(Failure::new(
                exit::TEMPFAIL,
                "the code expired before the sign-in was completed: run `latchkey login --device` again",
            ));
        }
        match token_request(http, &p.metadata.token_endpoint, &form).await {
            Ok(t) => return Ok(t),
            Err(e) => match e.code.as_deref() {
                Some("authorization_pending") => {}
                Some("slow_down") => interval += 5,
                Some("expired_token") => {
                    return Err(Failure::new(
                        exit::TEMPFAIL,
                        "the code expired before the sign-in was completed: run `latchkey login --device` again",
                    ));
                }
                Some("access_denied") => {
                    return Err(Failure::new(exit::NOPERM, "the sign-in was refused"));
                }
                _ => return Err(Failure::new(exit::NOPERM, e.message)),
            },
        }
    }
}

pub(crate) async fn logout(_a: LogoutArgs, conn: &Connection) -> anyhow::Result<ExitCode> {
    let base = normalize_url(&api::url_of(conn))?;
    let store = Store::open()?;
    let lock = store.lock()?;
    let gone = store.remove(&lock, &base)?;
    drop(lock);
    let Some(login) = gone else {
        eprintln!("Not signed in to Latchkey at {base}.");
        return Ok(ExitCode::SUCCESS);
    };
    // Best effort: the entry is gone whatever the provider says.
    if let (Some(endpoint), Some(rt)) = (&login.revocation_endpoint, &login.refresh_token) {
        let http = http_client()?;
        let form = [
            ("token", rt.expose()),
            ("token_type_hint", "refresh_token"),
            ("client_id", login.client_id.as_str()),
        ];
        match fetch(
            http.post(endpoint)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form_body(&form)),
            "the OpenID provider's revocation endpoint",
        )
        .await
        {
            Ok((s, _)) if (200..300).contains(&s) => {}
            Ok((s, _)) => tracing::warn!(event = "login.revoke_refused", status = s),
            Err(f) => tracing::warn!(event = "login.revoke_failed", error = %f),
        }
    }
    eprintln!("Signed out of Latchkey at {base}.");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(url: &str, token: &str) -> Login {
        Login {
            url: url.into(),
            issuer: "https://idp.example".into(),
            token_endpoint: "https://idp.example/token".into(),
            revocation_endpoint: None,
            client_id: "cli".into(),
            resource: Some("https://lk.example".into()),
            access_token: Secret::new(token),
            refresh_token: Some(Secret::new(format!("rt-{token}"))),
            expires_at: Some(1_000),
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "latchkey-login-{name}-{}-{}",
            std::process::id(),
            now()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn form_bodies_are_encoded() {
        assert_eq!(
            form_body(&[
                ("scope", "openid offline_access"),
                ("redirect_uri", "http://127.0.0.1:9/cb?a=b&c")
            ]),
            "scope=openid+offline_access&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb%3Fa%3Db%26c"
        );
    }

    #[test]
    fn provider_text_is_made_printable() {
        assert_eq!(printable("bad\u{1b}[2Jthing\n"), "bad?[2Jthing?");
        assert_eq!(printable(&"x".repeat(500)).chars().count(), 401);
    }

    #[test]
    fn browser_follows_the_convention() {
        let u = "http://idp.example/auth?a=1&b=2";
        assert_eq!(
            browser_commands("firefox", u),
            vec![vec!["firefox".to_owned(), u.to_owned()]]
        );
        assert_eq!(
            browser_commands("w3m -o x=1 %s:lynx", u),
            vec![
                vec!["w3m".to_owned(), "-o".into(), "x=1".into(), u.to_owned()],
                vec!["lynx".to_owned(), u.to_owned()],
            ]
        );
        assert!(browser_commands(" : ", u).is_empty());
    }

    #[test]
    fn urls_are_normalized() {
        assert_eq!(
            normalize_url("HTTP://LocalHost:80/").unwrap(),
            "http://localhost"
        );
        assert_eq!(
            normalize_url("https://lk.example:443/base/?q#f").unwrap(),
            "https://lk.example/base"
        );
        assert_eq!(
            normalize_url("http://127.0.0.1:7878").unwrap(),
            "http://127.0.0.1:7878"
        );
        assert!(normalize_url("ftp://x").is_err());
        assert!(normalize_url("nope").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn the_store_keeps_several_urls_privately() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = temp_dir("store").join("nested");
        let store = Store::at(&dir);
        assert!(store.get("http://a").unwrap().is_none());
        let lock = store.lock().unwrap();
        store.put(&lock, &login("http://a", "one")).unwrap();
        store.put(&lock, &login("http://b", "two")).unwrap();
        store.put(&lock, &login("http://a", "three")).unwrap();
        let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&store.path()), 0o600);
        let a = store.get("http://a").unwrap().unwrap();
        assert_eq!(a.access_token.expose(), "three");
        assert_eq!(a.refresh_token.unwrap().expose(), "rt-three");
        assert_eq!(a.resource.as_deref(), Some("https://lk.example"));
        assert_eq!(
            store
                .get("http://b")
                .unwrap()
                .unwrap()
                .access_token
                .expose(),
            "two"
        );
        // No temporary file is left beside it (the write is a rename).
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| n == FILE_NAME || n == "login.json.lock"),
            "{names:?}"
        );
        assert_eq!(
            store
                .remove(&lock, "http://a")
                .unwrap()
                .unwrap()
                .access_token
                .expose(),
            "three"
        );
        assert!(store.remove(&lock, "http://a").unwrap().is_none());
        assert!(store.get("http://a").unwrap().is_none());
        assert!(store.get("http://b").unwrap().is_some());
        assert_eq!(mode(&store.path()), 0o600);
        drop(lock);
        let _ = fs::remove_dir_all(dir.parent().unwrap());
    }

    #[cfg(unix)]
    #[test]
    fn a_wider_directory_is_tightened_and_a_broken_file_named() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = temp_dir("wide");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let store = Store::at(&dir);
        let lock = store.lock().unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::write(store.path(), "{not json").unwrap();
        let e = store.get("http://a").unwrap_err();
        assert_eq!(e.code, exit::CONFIG);
        assert!(e.message.contains("login.json"), "{}", e.message);
        assert!(store.put(&lock, &login("http://a", "x")).is_err());
        drop(lock);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn refresh_is_due_30_seconds_before_expiry() {
        let l = login("http://a", "t");
        assert!(!l.needs_refresh(900));
        assert!(!l.needs_refresh(969));
        assert!(l.needs_refresh(970));
        assert!(l.needs_refresh(5_000));
        let no_rt = Login {
            refresh_token: None,
            ..l.clone()
        };
        assert!(!no_rt.needs_refresh(5_000));
        let no_exp = Login {
            expires_at: None,
            ..l
        };
        assert!(!no_exp.needs_refresh(5_000));
    }

    async fn get(uri: &str) -> (u16, String) {
        let resp = reqwest::Client::new().get(uri).send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    #[tokio::test]
    async fn the_listener_takes_only_the_right_state() {
        let l = Loopback::bind().await.unwrap();
        let uri = l.redirect_uri().to_owned();
        assert!(uri.starts_with("http://127.0.0.1:") && uri.ends_with("/callback"));
        let waiting = tokio::spawn(l.wait(
            Secret::new("right-state"),
            "https://idp.example",
            false,
            Duration::from_secs(20),
        ));
        let base = uri.trim_end_matches("/callback").to_owned();
        // Wrong state, no state, another path, another method: 400, still waiting.
        assert_eq!(get(&format!("{uri}?code=c1&state=wrong")).await.0, 400);
        assert_eq!(get(&format!("{uri}?code=c1")).await.0, 400);
        assert_eq!(
            get(&format!("{base}/other?code=c1&state=right-state"))
                .await
                .0,
            400
        );
        let posted = reqwest::Client::new()
            .post(format!("{uri}?code=c1&state=right-state"))
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status().as_u16(), 400);
        assert!(!waiting.is_finished());
        // The right one is taken and answered with the page.
        let (status, page) = get(&format!("{uri}?code=the-code&state=right-state")).await;
        assert_eq!(status, 200);
        assert!(page.contains("You can close this tab"), "{page}");
        let outcome = waiting.await.unwrap().unwrap().unwrap();
        assert_eq!(outcome.unwrap().expose(), "the-code");
    }

    #[tokio::test]
    async fn the_listener_reports_a_refusal_and_a_timeout() {
        let l = Loopback::bind().await.unwrap();
        let uri = l.redirect_uri().to_owned();
        let waiting = tokio::spawn(l.wait(
            Secret::new("s"),
            "https://idp.example",
            false,
            Duration::from_secs(20),
        ));
        let (status, page) = get(&format!(
            "{uri}?error=access_denied&error_description=%3Cb%3Eno%3C%2Fb%3E&state=s"
        ))
        .await;
        assert_eq!(status, 400);
        assert!(
            page.contains("access_denied") && page.contains("&lt;b&gt;"),
            "{page}"
        );
        let outcome = waiting.await.unwrap().unwrap().unwrap();
        assert!(matches!(outcome, Err(CallbackError::Provider { .. })));

        let l = Loopback::bind().await.unwrap();
        let timed_out = l
            .wait(
                Secret::new("s"),
                "https://idp.example",
                false,
                Duration::from_millis(200),
            )
            .await
            .unwrap();
        assert!(timed_out.is_none());
    }
}
