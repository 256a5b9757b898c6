//! People sign in (issue 19): Latchkey as an OpenID Connect relying party of the
//! organisation's provider (`[auth.login]`), and the browser sessions that follow.
//!
//! The flow is the authorization code grant with PKCE (S256), a `state` and a `nonce`,
//! as a confidential client (client secret) or a public one. What the browser holds:
//! a login cookie `<login id>.<PKCE verifier>` for the callback only (`SameSite=Lax`,
//! since the provider's redirect is a cross-site navigation), then the session cookie
//! (`SameSite=Strict`). What the database holds: the SHA-256 of the login id with the
//! state's SHA-256 and the nonce (single use, 10 minutes), then the SHA-256 of the
//! session id with the principal it acts as. The verifier never reaches the database,
//! the session id never reaches the provider or a log.
//!
//! The ID token is verified by the guard's JWT machinery (signature through the
//! provider's JWKS, exact `iss`, `aud` = the client id, times) and must carry the
//! nonce; the tenant and role come from the same claims the API reads
//! (`auth.tenant_claim`/`auth.tenant`, `role` = `admin`).
//!
//! Written by hand rather than with an OpenID client crate: the pieces that matter
//! (exact-string issuer comparison, the egress guard on every request, the JWKS cache,
//! claim mapping) are the ones the rest of Latchkey already uses for access tokens.
//!
//! A building block under the state (which holds one [`SignIn`]): it imports neither
//! the state nor a handler.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use latchkey_core::{Clock, Secret, UnixTime};
use latchkey_egress::{Egress, EgressRequest, UrlSource};
use latchkey_guard::session::{self, SessionStore, SessionStoreError};
use latchkey_guard::{
    AuthSource, ClaimMapping, JwksCache, JwksOptions, JwtConfig, JwtVerifier, Principal, Role,
    SubjectId, TenantId,
};
use latchkey_oauth::OAuthError;
use latchkey_oauth::client_auth::{AuthMethod, ClientCredentials};
use latchkey_oauth::pkce;
use latchkey_vault::Store;
use latchkey_vault::store::{SESSION_TOUCH_SECS, WebLoginRow, WebSessionRow};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::LoginConfig;

/// Where the provider sends the browser back.
pub const CALLBACK_PATH: &str = "/v1/auth/callback";
/// The login cookie's name (only sent to [`CALLBACK_PATH`]).
pub const LOGIN_COOKIE: &str = "latchkey_login";
/// How long a sign-in may take, seconds.
pub const LOGIN_TTL_SECS: i64 = 600;
/// Most sign-ins under way at once (anyone can start one; each is a row for up to
/// [`LOGIN_TTL_SECS`]).
pub const MAX_LIVE_LOGINS: i64 = 10_000;
/// How long the provider's metadata is reused.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// The largest discovery document or token response read.
const BODY_LIMIT: usize = 256 * 1024;

/// Why a sign-in did not complete. The texts are for the person at the browser; none
/// carries a code, state, nonce, verifier or token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignInError {
    /// The provider could not be reached or answered nonsense.
    #[error(
        "the sign-in provider at {issuer} cannot be reached right now ({reason}); try again in a moment"
    )]
    ProviderDown {
        /// `auth.login.issuer`.
        issuer: String,
        /// What failed.
        reason: String,
    },
    /// The provider refused (the person declined, or it refused Latchkey).
    #[error("the sign-in provider refused: {0}")]
    Refused(String),
    /// The callback does not belong to a sign-in this browser started, or came too late.
    #[error("this sign-in link is not valid any more ({0}); start again")]
    Stale(&'static str),
    /// The ID token was refused.
    #[error("the sign-in provider's ID token was refused ({0})")]
    IdToken(String),
    /// The account's claims name no tenant or subject Latchkey can use.
    #[error("your account cannot use Latchkey: {0}")]
    Account(String),
    /// Latchkey's own store failed.
    #[error("Latchkey could not record the sign-in; try again")]
    Store,
    /// Too many sign-ins are under way.
    #[error("too many sign-ins are under way right now; try again in a few minutes")]
    Busy,
}

/// The parts of the provider's OpenID configuration used here.
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderMetadata {
    /// `issuer`, verbatim.
    pub issuer: String,
    /// Where the browser signs in.
    pub authorization_endpoint: String,
    /// Where the code is redeemed.
    pub token_endpoint: String,
    /// The ID tokens' keys.
    pub jwks_uri: String,
    /// RFC 9207.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
    /// Client authentication methods at the token endpoint.
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

#[derive(Debug)]
struct Discovered {
    meta: ProviderMetadata,
    verifier: Arc<JwtVerifier>,
    at: UnixTime,
}

/// The relying party: configuration, the provider's metadata (fetched on first use and
/// hourly), the ID-token verifier.
#[derive(Debug)]
pub struct SignIn {
    cfg: LoginConfig,
    /// Latchkey's public URL, without a trailing `/`.
    public_url: String,
    /// Whether cookies may omit `Secure` (a plain-http loopback public URL).
    insecure_cookies: bool,
    /// The resource CLI tokens must be issued for (`auth.audience`).
    audience: String,
    claims: ClaimMapping,
    required_scopes: Vec<String>,
    egress: Egress,
    clock: Arc<dyn Clock>,
    jwks: Arc<JwksCache>,
    store: Arc<dyn Store>,
    discovered: Mutex<Option<Arc<Discovered>>>,
}

/// What the CLI learns from `GET /v1/auth/config`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CliLogin {
    /// The provider.
    pub issuer: String,
    /// The public client to use.
    pub client_id: String,
    /// The scopes to ask.
    pub scopes: Vec<String>,
    /// The RFC 8707 resource the access token must be for.
    pub resource: String,
}

/// A completed sign-in.
#[derive(Debug)]
pub struct SignedIn {
    /// The new session's id (the cookie's value).
    pub session_id: Secret,
    /// Where to send the browser.
    pub return_to: String,
    /// Who signed in.
    pub principal: Principal,
}

fn sha(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// A same-origin path to return to after sign-in: `/` unless `raw` is a plain path
/// (no scheme, no `//`, no backslash, no control character).
pub fn safe_return_to(raw: Option<&str>) -> String {
    match raw {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.contains('\\')
                && p.len() <= 512
                && !p.chars().any(char::is_control) =>
        {
            p.to_owned()
        }
        _ => "/".to_owned(),
    }
}

impl SignIn {
    /// A relying party for `cfg`. `audience` is `auth.audience`; `claims` and
    /// `required_scopes` are the API's.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: LoginConfig,
        public_url: &str,
        audience: String,
        claims: ClaimMapping,
        required_scopes: Vec<String>,
        egress: Egress,
        clock: Arc<dyn Clock>,
        store: Arc<dyn Store>,
    ) -> Self {
        let jwks = Arc::new(JwksCache::new(
            egress.clone(),
            clock.clone(),
            JwksOptions::default(),
        ));
        Self {
            cfg,
            insecure_cookies: public_url.starts_with("http://"),
            public_url: public_url.trim_end_matches('/').to_owned(),
            audience,
            claims,
            required_scopes,
            egress,
            clock,
            jwks,
            store,
            discovered: Mutex::new(None),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LoginConfig {
        &self.cfg
    }

    /// Whether cookies go without `Secure` (plain-http loopback only).
    pub fn insecure_cookies(&self) -> bool {
        self.insecure_cookies
    }

    /// The redirect URI registered at the provider.
    pub fn redirect_uri(&self) -> String {
        format!("{}{CALLBACK_PATH}", self.public_url)
    }

    /// What `latchkey login` needs, when a CLI client is configured.
    pub fn cli(&self) -> Option<CliLogin> {
        self.cfg.cli_client_id.as_ref().map(|c| CliLogin {
            issuer: self.cfg.issuer.clone(),
            client_id: c.clone(),
            scopes: self.cfg.scopes.clone(),
            resource: self.audience.clone(),
        })
    }

    fn now(&self) -> i64 {
        i64::try_from(self.clock.now().as_secs()).unwrap_or(i64::MAX)
    }

    fn down(&self, reason: impl Into<String>) -> SignInError {
        SignInError::ProviderDown {
            issuer: self.cfg.issuer.clone(),
            reason: reason.into(),
        }
    }

    /// The provider's metadata, fetched when missing or older than an hour. An issuer
    /// that differs from the configured one by a single character is refused.
    pub async fn discover(&self) -> Result<(ProviderMetadata, Arc<JwtVerifier>), SignInError> {
        let now = self.clock.now();
        if let Some(d) = self
            .discovered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|d| now.as_secs().saturating_sub(d.at.as_secs()) < METADATA_TTL.as_secs())
        {
            return Ok((d.meta.clone(), d.verifier.clone()));
        }
        let meta = self.fetch_metadata().await?;
        let mut jc = JwtConfig::jwks(
            self.cfg.issuer.clone(),
            self.cfg.client_id.clone(),
            meta.jwks_uri.clone(),
        );
        jc.claims = self.claims.clone();
        let verifier = Arc::new(
            JwtVerifier::new(jc, self.jwks.clone())
                .map_err(|e| self.down(format!("its metadata cannot be used: {e}")))?,
        );
        *self.discovered.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(Discovered {
            meta: meta.clone(),
            verifier: verifier.clone(),
            at: now,
        }));
        Ok((meta, verifier))
    }

    /// OpenID Connect Discovery (`/.well-known/openid-configuration` appended to the
    /// issuer), then RFC 8414's path-inserted form.
    async fn fetch_metadata(&self) -> Result<ProviderMetadata, SignInError> {
        let issuer = self.cfg.issuer.trim_end_matches('/');
        let mut candidates = vec![format!("{issuer}/.well-known/openid-configuration")];
        candidates.extend(latchkey_oauth::as_metadata::candidates(&self.cfg.issuer));
        candidates.dedup();
        let mut last = String::from("no metadata document");
        for url in candidates {
            let req = EgressRequest::get(url.as_str(), UrlSource::Operator, BODY_LIMIT).header(
                http::header::ACCEPT,
                http::HeaderValue::from_static("application/json"),
            );
            let resp = match self.egress.send(req).await {
                Ok(r) => r,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            if !resp.status.is_success() {
                last = format!("{url} answered HTTP {}", resp.status.as_u16());
                continue;
            }
            let meta: ProviderMetadata = match resp.json() {
                Ok(m) => m,
                Err(e) => {
                    last = format!("{url} is not OpenID provider metadata: {e}");
                    continue;
                }
            };
            if meta.issuer != self.cfg.issuer {
                return Err(SignInError::Refused(format!(
                    "its metadata names the issuer {:?}, not {:?} (auth.login.issuer must be exactly the provider's issuer)",
                    meta.issuer, self.cfg.issuer
                )));
            }
            return Ok(meta);
        }
        Err(self.down(last))
    }

    /// Checks the configuration against the provider at start-up: discovery must find
    /// exactly the configured issuer, and the token endpoint must know the client
    /// (a code exchange with a random code is refused with `invalid_grant` for a known
    /// client, `invalid_client` for an unknown one or a wrong secret). A provider that
    /// cannot be reached is not a configuration error: sign-in says so until it is back.
    pub async fn check_at_start(&self) -> Result<(), crate::config::ConfigError> {
        let bad = |setting: &str, message: String| crate::config::ConfigError {
            setting: setting.into(),
            message,
        };
        let meta = match self.discover().await {
            Ok((m, _)) => m,
            Err(SignInError::ProviderDown { reason, .. }) => {
                if reason.contains("answered HTTP 404")
                    || reason.contains("not OpenID provider metadata")
                {
                    return Err(bad(
                        "auth.login.issuer",
                        format!("{:?} is not an OpenID provider: {reason}", self.cfg.issuer),
                    ));
                }
                tracing::warn!(event = "signin.provider_unreachable", issuer = %self.cfg.issuer, reason = %reason);
                return Ok(());
            }
            Err(e) => return Err(bad("auth.login.issuer", e.to_string())),
        };
        let probe = Secret::new(session::new_session_id().expose());
        let verifier = pkce::new_verifier();
        match self.redeem(&meta, &probe, &verifier).await {
            Err(Redeem::Refused(code, _)) if code == "invalid_grant" => Ok(()),
            Err(Redeem::Refused(code, _))
                if code == "invalid_client" || code == "unauthorized_client" =>
            {
                let setting = if self.cfg.client_secret.is_some() {
                    "auth.login.client_secret"
                } else {
                    "auth.login.client_id"
                };
                Err(bad(
                    setting,
                    format!(
                        "the provider refused Latchkey's client {:?} ({code}): check auth.login.client_id and auth.login.client_secret",
                        self.cfg.client_id
                    ),
                ))
            }
            // Anything else says nothing certain about the client: sign-in will tell.
            _ => Ok(()),
        }
    }

    /// Starts a sign-in: records it and returns the provider URL for the browser and
    /// the login cookie's value.
    pub async fn begin(&self, return_to: &str) -> Result<(String, Secret), SignInError> {
        let (meta, _) = self.discover().await?;
        let login_id = session::new_session_id();
        let state = pkce::new_state();
        let nonce = pkce::new_state();
        let verifier = pkce::new_verifier();
        let now = self.now();
        let recorded = self
            .store
            .insert_web_login(
                &WebLoginRow {
                    id_hash: sha(login_id.expose()),
                    state_hash: sha(state.expose()),
                    nonce: nonce.expose().to_owned(),
                    return_to: return_to.to_owned(),
                    created_at: now,
                },
                now.saturating_sub(LOGIN_TTL_SECS),
                MAX_LIVE_LOGINS,
            )
            .await
            .map_err(|e| {
                tracing::error!(event = "signin.store_failed", error = %e);
                SignInError::Store
            })?;
        if !recorded {
            tracing::warn!(event = "signin.too_many_under_way", max = MAX_LIVE_LOGINS);
            return Err(SignInError::Busy);
        }
        // The browser goes there: it must pass the egress guard's static checks (https,
        // or http to loopback under the relaxation; no userinfo), like any URL Latchkey
        // sends a browser to.
        let mut url = self
            .egress
            .check_url(&meta.authorization_endpoint, UrlSource::Operator)
            .map_err(|e| self.down(format!("its authorization_endpoint is refused: {e}")))?
            .url()
            .clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.cfg.client_id)
            .append_pair("redirect_uri", &self.redirect_uri())
            .append_pair("scope", &self.cfg.scopes.join(" "))
            .append_pair("state", state.expose())
            .append_pair("nonce", nonce.expose())
            .append_pair("code_challenge", &pkce::challenge(&verifier))
            .append_pair("code_challenge_method", "S256");
        let cookie = Secret::new(format!("{}.{}", login_id.expose(), verifier.expose()));
        Ok((url.into(), cookie))
    }

    /// Completes a sign-in from the callback's query and the login cookie: exactly
    /// one sign-in started in this browser, within its time, with its state; the code
    /// redeemed with its verifier; the ID token verified with its nonce; a session
    /// started.
    pub async fn complete(
        &self,
        login_cookie: Option<&str>,
        query: &latchkey_oauth::authorize::CallbackParams,
    ) -> Result<SignedIn, SignInError> {
        let (login_id, verifier) =
            login_cookie
                .and_then(|c| c.split_once('.'))
                .ok_or(SignInError::Stale(
                    "this browser did not start it, or cookies are off",
                ))?;
        let row = self
            .store
            .take_web_login(&sha(login_id))
            .await
            .map_err(|e| {
                tracing::error!(event = "signin.store_failed", error = %e);
                SignInError::Store
            })?
            .ok_or(SignInError::Stale("it was used or abandoned"))?;
        if self.now().saturating_sub(row.created_at) > LOGIN_TTL_SECS {
            return Err(SignInError::Stale("it took more than 10 minutes"));
        }
        let state = query.state.as_ref().map(|s| s.expose()).unwrap_or_default();
        if !bool::from(sha(state).ct_eq(&row.state_hash)) {
            return Err(SignInError::Stale("its state does not match"));
        }
        let (meta, id_verifier) = self.discover().await?;
        // RFC 9207: where the provider sends `iss`, it must be exactly its issuer.
        match query.iss.as_deref() {
            Some(iss) if iss != meta.issuer => {
                return Err(SignInError::Refused(
                    "the answer names another issuer".into(),
                ));
            }
            None if meta.authorization_response_iss_parameter_supported => {
                return Err(SignInError::Refused("the answer names no issuer".into()));
            }
            _ => {}
        }
        // Only then the provider's error (RFC 9207 §2.4: not acted on from another issuer).
        if let Some(e) = &query.error {
            let error = printable(e, 64);
            let text = printable(query.error_description.as_deref().unwrap_or(""), 200);
            return Err(SignInError::Refused(if text.is_empty() {
                error
            } else {
                format!("{error} ({text})")
            }));
        }
        let code = query
            .code
            .clone()
            .ok_or_else(|| SignInError::Refused("the answer has no code".into()))?;
        let tokens = match self.redeem(&meta, &code, &Secret::new(verifier)).await {
            Ok(t) => t,
            Err(Redeem::Refused(code, text)) => {
                return Err(SignInError::Refused(
                    format!("{code} {text}").trim().to_owned(),
                ));
            }
            Err(Redeem::Down(reason)) => return Err(self.down(reason)),
        };
        let id_token = tokens
            .id_token
            .ok_or_else(|| SignInError::IdToken("the provider sent none".into()))?;
        let (claims, principal) = id_verifier
            .verify_claims(id_token.expose(), self.clock.now(), AuthSource::Session)
            .await
            .map_err(|e| match e {
                latchkey_guard::GuardError::Invalid(
                    latchkey_guard::InvalidReason::Tenant | latchkey_guard::InvalidReason::Subject,
                ) => SignInError::Account(format!(
                    "the sign-in names no {}",
                    match e {
                        latchkey_guard::GuardError::Invalid(
                            latchkey_guard::InvalidReason::Tenant,
                        ) => "tenant (auth.tenant_claim)",
                        _ => "subject",
                    }
                )),
                latchkey_guard::GuardError::Unavailable(_) => {
                    self.down("its keys (jwks_uri) cannot be fetched")
                }
                other => SignInError::IdToken(other.to_string()),
            })?;
        // OpenID Connect Core §3.1.3.7: with several audiences, `azp` must be us.
        if let Some(serde_json::Value::Array(auds)) = claims.get("aud")
            && auds.len() > 1
            && claims.get("azp").and_then(|v| v.as_str()) != Some(self.cfg.client_id.as_str())
        {
            return Err(SignInError::IdToken("azp is not Latchkey's client".into()));
        }
        let nonce = claims
            .get("nonce")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if !bool::from(nonce.as_bytes().ct_eq(row.nonce.as_bytes())) {
            return Err(SignInError::IdToken("nonce mismatch".into()));
        }
        let display_name = ["name", "email", "preferred_username"]
            .iter()
            .find_map(|k| claims.get(*k).and_then(|v| v.as_str()))
            .map(|s| printable(s, 100));
        let session_id = session::new_session_id();
        let now = self.now();
        let lifetime = i64::try_from(self.cfg.session_lifetime).unwrap_or(i64::MAX);
        self.store
            .insert_web_session(&WebSessionRow {
                id_hash: session::session_hash(session_id.expose()),
                tenant: principal.tenant.as_str().to_owned(),
                subject: principal.subject.as_str().to_owned(),
                role: principal.role.as_str().to_owned(),
                display_name,
                created_at: now,
                last_seen_at: now,
                expires_at: now.saturating_add(lifetime),
            })
            .await
            .map_err(|e| {
                tracing::error!(event = "signin.store_failed", error = %e);
                SignInError::Store
            })?;
        Ok(SignedIn {
            session_id,
            return_to: row.return_to,
            principal: principal.with_scopes(self.required_scopes.iter().cloned()),
        })
    }

    /// Ends the session `id` (sign-out): its row goes, so no instance accepts it.
    pub async fn end(&self, id: &str) -> Result<bool, latchkey_vault::StoreError> {
        self.store
            .delete_web_session(&session::session_hash(id))
            .await
    }

    /// The authorization code grant at the token endpoint.
    async fn redeem(
        &self,
        meta: &ProviderMetadata,
        code: &Secret,
        verifier: &Secret,
    ) -> Result<CodeTokens, Redeem> {
        let redirect = self.redirect_uri();
        let mut form: Vec<(&'static str, Secret)> = vec![
            ("grant_type", Secret::new("authorization_code")),
            ("code", code.clone()),
            ("redirect_uri", Secret::new(redirect)),
            ("code_verifier", verifier.clone()),
        ];
        // client_secret_basic unless the provider lists only client_secret_post; the
        // client authentication itself is the OAuth client's (`ClientCredentials`).
        let post = meta
            .token_endpoint_auth_methods_supported
            .as_ref()
            .is_some_and(|m| {
                m.iter().any(|x| x == "client_secret_post")
                    && !m.iter().any(|x| x == "client_secret_basic")
            });
        let client = match &self.cfg.client_secret {
            Some(secret) => ClientCredentials::with_secret(
                self.cfg.client_id.clone(),
                secret.clone(),
                if post {
                    AuthMethod::ClientSecretPost
                } else {
                    AuthMethod::ClientSecretBasic
                },
            ),
            None => ClientCredentials::public(self.cfg.client_id.clone()),
        };
        let mut headers = http::HeaderMap::new();
        client
            .apply(&mut form, &mut headers, &meta.issuer, self.clock.now())
            .map_err(|e| Redeem::Down(e.to_string()))?;
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.expose())).collect();
        // The token endpoint comes from the metadata of the issuer the operator
        // configured, so it is judged as the operator's (an organisation's provider is
        // often on a private network), like the JWKS the guard fetches.
        let mut req = EgressRequest::post_form(
            meta.token_endpoint.as_str(),
            UrlSource::Operator,
            &pairs,
            BODY_LIMIT,
        )
        .header(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        for (name, value) in headers.iter() {
            req = req.header(name.clone(), value.clone());
        }
        let resp = self
            .egress
            .send(req)
            .await
            .map_err(|e| Redeem::Down(e.to_string()))?;
        if resp.status.is_success() {
            return resp
                .json::<CodeTokens>()
                .map_err(|_| Redeem::Down("its token answer is not JSON".into()));
        }
        match latchkey_oauth::grants::parse_error(resp.status.as_u16(), &resp.body) {
            OAuthError::TokenEndpoint {
                error: Some(error),
                description,
                ..
            } if !error.is_empty() => Err(Redeem::Refused(
                printable(&error, 64),
                printable(description.as_deref().unwrap_or(""), 200),
            )),
            _ => Err(Redeem::Down(format!(
                "its token endpoint answered HTTP {}",
                resp.status.as_u16()
            ))),
        }
    }
}

/// `s` without control characters, at most `max` characters: provider text shown on
/// Latchkey's pages and in its logs.
fn printable(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

#[derive(Debug)]
enum Redeem {
    /// An OAuth error: code and description.
    Refused(String, String),
    /// No usable answer.
    Down(String),
}

#[derive(Deserialize)]
struct CodeTokens {
    id_token: Option<Secret>,
}

/// The guard's view of the stored sessions ([`SessionStore`] over [`Store`]): a session
/// is live until its lifetime ends or it goes unused for the idle timeout; its use is
/// recorded at most once a minute.
#[derive(Debug)]
pub struct StoreSessions {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    idle: i64,
    /// The scopes every API request needs: a person signed in holds them.
    scopes: Vec<String>,
}

impl StoreSessions {
    /// An adapter over `store` with `idle_secs` of idle timeout.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        idle_secs: u64,
        scopes: Vec<String>,
    ) -> Self {
        Self {
            store,
            clock,
            idle: i64::try_from(idle_secs).unwrap_or(i64::MAX),
            scopes,
        }
    }
}

#[async_trait]
impl SessionStore for StoreSessions {
    async fn lookup(&self, hash: &[u8; 32]) -> Result<Option<Principal>, SessionStoreError> {
        let Some(row) = self
            .store
            .web_session(hash)
            .await
            .map_err(|e| SessionStoreError(e.to_string()))?
        else {
            return Ok(None);
        };
        let now = i64::try_from(self.clock.now().as_secs()).unwrap_or(i64::MAX);
        if now >= row.expires_at || now.saturating_sub(row.last_seen_at) > self.idle {
            // Ended: gone for every instance. Best effort; it is refused either way.
            let _ = self.store.delete_web_session(hash).await;
            return Ok(None);
        }
        let role = match row.role.as_str() {
            "admin" => Role::Admin,
            _ => Role::Member,
        };
        let (Ok(tenant), Ok(subject)) = (TenantId::new(row.tenant), SubjectId::new(row.subject))
        else {
            return Ok(None);
        };
        if now.saturating_sub(row.last_seen_at) >= SESSION_TOUCH_SECS
            && let Err(e) = self.store.touch_web_session(hash, now).await
        {
            tracing::warn!(event = "session.touch_failed", error = %e);
        }
        Ok(Some(
            Principal::new(tenant, subject, AuthSource::Session)
                .with_role(role)
                .with_scopes(self.scopes.iter().cloned()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_stays_on_this_origin() {
        assert_eq!(safe_return_to(None), "/");
        assert_eq!(safe_return_to(Some("/#keys")), "/#keys");
        assert_eq!(safe_return_to(Some("//evil.example/")), "/");
        assert_eq!(safe_return_to(Some("https://evil.example/")), "/");
        assert_eq!(safe_return_to(Some("/\\evil.example")), "/");
        assert_eq!(safe_return_to(Some("/a\nb")), "/");
    }
}
