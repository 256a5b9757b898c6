//! An OAuth client session for one MCP server: reacts to 401 and 403 challenges by
//! discovering, registering, obtaining consent through an [`AuthorizationDriver`] and
//! redeeming tokens, and produces the credentials headers for each request.
//!
//! This is the in-process flow used by the CLI (`connect`, `conformance-client`); the
//! broker splits the same steps across its start and callback endpoints.

use std::collections::HashMap;
use std::sync::Arc;

use latchkey_core::{Clock, Secret};
use latchkey_egress::{Egress, UrlSource};

use crate::authorize::{self, AuthorizationRequest, CallbackParams};
use crate::challenge::BearerChallenge;
use crate::client_auth::{AuthMethod, ClientCredentials};
use crate::discovery::{Discoverer, Discovery, DiscoveryOptions};
use crate::dpop::{DPOP_HEADER, DpopKey};
use crate::error::OAuthError;
use crate::grants::{self, Grant, TokenRequest, TokenResponse};
use crate::registration::{
    self, ApplicationType, DcrRequest, RegisteredClient, RegistrationKind, RegistrationPlan,
};
use crate::scope::{self, ScopeInputs};

/// The most authorization attempts for one operation before giving up (step-up loops).
/// The count resets when a request succeeds ([`OAuthSession::note_success`]).
pub const MAX_AUTHORIZATIONS: u32 = 3;

/// Opens an authorization URL and returns the authorization response.
#[async_trait::async_trait]
pub trait AuthorizationDriver: Send + Sync {
    /// Takes the user (or a headless agent) through consent at `url`.
    async fn authorize(&self, url: &str) -> Result<CallbackParams, OAuthError>;
}

/// Consent without a browser, for authorization servers that approve at once (test
/// harnesses, pre-approved automation): GET the authorization URL through the egress
/// client, which never follows redirects, and read the authorization response from the
/// `Location` of the 302.
#[derive(Debug, Clone)]
pub struct RedirectReadingDriver {
    egress: Egress,
}

impl RedirectReadingDriver {
    /// A driver sending through `egress`.
    pub fn new(egress: Egress) -> Self {
        Self { egress }
    }
}

#[async_trait::async_trait]
impl AuthorizationDriver for RedirectReadingDriver {
    async fn authorize(&self, url: &str) -> Result<CallbackParams, OAuthError> {
        let req = latchkey_egress::EgressRequest::get(url, UrlSource::Remote, 64 * 1024);
        match self.egress.send(req).await {
            Err(latchkey_egress::EgressError::Redirect {
                location: Some(loc),
                ..
            }) => {
                let query = loc.split_once('?').map(|(_, q)| q).unwrap_or_default();
                Ok(CallbackParams::from_query(
                    query.split('#').next().unwrap_or_default(),
                ))
            }
            Ok(r) => Err(OAuthError::Consent(format!(
                "authorization endpoint answered HTTP {} without a redirect",
                r.status.as_u16()
            ))),
            Err(e) => Err(OAuthError::Consent(e.to_string())),
        }
    }
}

/// How tokens are obtained.
#[derive(Debug, Clone)]
pub enum GrantStrategy {
    /// Authorization code with PKCE through the driver.
    AuthorizationCode,
    /// Client credentials (no user).
    ClientCredentials,
    /// RFC 8693 exchange of an identity assertion at an IdP for an ID-JAG, then the
    /// RFC 7523 jwt-bearer grant at the AS (SEP-990 cross-app access).
    IdentityAssertion {
        /// The IdP's token endpoint.
        idp_token_endpoint: String,
        /// The IdP issuer (assertion audience for IdP client auth).
        idp_issuer: String,
        /// The client at the IdP.
        idp_client: ClientCredentials,
        /// The subject token (an ID token).
        subject_token: Secret,
        /// Its type URN.
        subject_token_type: String,
    },
    /// RFC 7523 jwt-bearer with an assertion the caller already holds (workload identity).
    JwtBearer {
        /// The assertion.
        assertion: Secret,
    },
}

/// Session configuration.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The redirect URI (for DCR, authorize and exchange).
    pub redirect_uri: String,
    /// `client_name` for registration.
    pub client_name: String,
    /// Operator-supplied client credentials, if any.
    pub preregistered: Option<ClientCredentials>,
    /// The issuer the pre-registered credentials belong to; when set they are never
    /// presented to another AS.
    pub preregistered_issuer: Option<String>,
    /// A Client ID Metadata Document URL to use as `client_id` where supported.
    pub cimd_url: Option<String>,
    /// `application_type` for DCR (required by 2026-07-28).
    pub application_type: Option<ApplicationType>,
    /// Operator-configured scope (wins over everything).
    pub scope: Option<String>,
    /// Ask for `offline_access` when the AS lists it.
    pub want_offline_access: bool,
    /// The grant.
    pub strategy: GrantStrategy,
    /// Use DPoP when the AS advertises ES256 or the resource requires it.
    pub dpop: bool,
    /// Discovery options.
    pub discovery: DiscoveryOptions,
}

#[derive(Debug, Clone)]
struct ActiveToken {
    tokens: TokenResponse,
}

/// An OAuth session for one MCP server URL.
#[derive(Debug)]
pub struct OAuthSession {
    egress: Egress,
    clock: Arc<dyn Clock>,
    discoverer: Arc<Discoverer>,
    cfg: SessionConfig,
    server_url: String,
    clients: HashMap<String, RegisteredClient>,
    token: Option<ActiveToken>,
    requested_scope: Option<String>,
    authorizations: u32,
    dpop_key: Option<DpopKey>,
    as_nonce: Option<String>,
    rs_nonce: Option<String>,
    last_discovery: Option<Arc<Discovery>>,
}

impl OAuthSession {
    /// A session for `server_url`.
    pub fn new(
        egress: Egress,
        clock: Arc<dyn Clock>,
        discoverer: Arc<Discoverer>,
        server_url: impl Into<String>,
        cfg: SessionConfig,
    ) -> Self {
        Self {
            egress,
            clock,
            discoverer,
            cfg,
            server_url: server_url.into(),
            clients: HashMap::new(),
            token: None,
            requested_scope: None,
            authorizations: 0,
            dpop_key: None,
            as_nonce: None,
            rs_nonce: None,
            last_discovery: None,
        }
    }

    /// Whether a token is held.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// How many authorizations the current operation has needed so far.
    pub fn authorizations(&self) -> u32 {
        self.authorizations
    }

    /// Records that a request went through with the current token, so the next 401 or
    /// 403 starts a fresh attempt budget (attempts are tracked per operation).
    pub fn note_success(&mut self) {
        self.authorizations = 0;
    }

    /// The last discovery result.
    pub fn discovery(&self) -> Option<&Discovery> {
        self.last_discovery.as_deref()
    }

    /// Records a DPoP nonce the resource server demanded.
    pub fn set_resource_nonce(&mut self, nonce: String) {
        self.rs_nonce = Some(nonce);
    }

    /// Credentials headers for one request to the MCP server: `Authorization: Bearer`,
    /// or `Authorization: DPoP` plus a fresh proof bound to the token.
    pub fn auth_headers(&self, method: &str, url: &str) -> Result<http::HeaderMap, OAuthError> {
        let mut h = http::HeaderMap::new();
        let Some(t) = &self.token else { return Ok(h) };
        let token = &t.tokens.access_token;
        let dpop = t
            .tokens
            .is_dpop()
            .then_some(self.dpop_key.as_ref())
            .flatten();
        let scheme = if dpop.is_some() { "DPoP" } else { "Bearer" };
        let mut v =
            http::HeaderValue::from_str(&format!("{scheme} {}", token.expose())).map_err(|_| {
                OAuthError::InvalidTokenResponse("access token is not header text".into())
            })?;
        v.set_sensitive(true);
        h.insert(http::header::AUTHORIZATION, v);
        if let Some(k) = dpop {
            let proof = k.proof(
                method,
                url,
                self.rs_nonce.as_deref(),
                Some(token),
                self.clock.now(),
            )?;
            if let Ok(v) = http::HeaderValue::from_str(&proof) {
                h.insert(DPOP_HEADER, v);
            }
        }
        Ok(h)
    }

    /// Handles a 401: (re)discovers — dropping cached discovery when the token we held
    /// was rejected, since the resource may have moved to another AS — and obtains a
    /// new token.
    pub async fn on_unauthorized(
        &mut self,
        challenge: Option<&BearerChallenge>,
        driver: &dyn AuthorizationDriver,
    ) -> Result<(), OAuthError> {
        if self.token.take().is_some() {
            self.discoverer.invalidate(&self.server_url);
        }
        let challenged = challenge.and_then(|c| c.scope.clone());
        self.authorize(challenge, challenged, driver).await
    }

    /// Handles a 403 `insufficient_scope`: step-up with the union of the scopes asked
    /// before and the challenged ones, within [`MAX_AUTHORIZATIONS`].
    pub async fn on_insufficient_scope(
        &mut self,
        challenge: &BearerChallenge,
        driver: &dyn AuthorizationDriver,
    ) -> Result<(), OAuthError> {
        let wanted = challenge
            .scope
            .as_deref()
            .map(|s| scope::union(self.requested_scope.as_deref(), s));
        self.authorize(Some(challenge), wanted, driver).await
    }

    async fn authorize(
        &mut self,
        challenge: Option<&BearerChallenge>,
        challenged_scope: Option<String>,
        driver: &dyn AuthorizationDriver,
    ) -> Result<(), OAuthError> {
        if self.authorizations >= MAX_AUTHORIZATIONS {
            return Err(OAuthError::StepUpExhausted(self.authorizations));
        }
        self.authorizations += 1;
        let rm = challenge.and_then(|c| c.resource_metadata.as_deref());
        let d = self
            .discoverer
            .discover(&self.server_url, rm, self.cfg.discovery)
            .await?;
        self.last_discovery = Some(d.clone());
        let scope = scope::select(ScopeInputs {
            configured: self.cfg.scope.as_deref(),
            challenge: challenged_scope.as_deref(),
            prm_scopes_supported: d.prm.as_ref().and_then(|p| p.scopes_supported.as_deref()),
            as_scopes_supported: d.metadata.scopes_supported.as_deref(),
            want_offline_access: self.cfg.want_offline_access,
        });
        self.requested_scope = scope.clone();
        if self.cfg.dpop && self.dpop_key.is_none() {
            let wants = d.metadata.supports_dpop_es256()
                || d.prm
                    .as_ref()
                    .is_some_and(|p| p.dpop_bound_access_tokens_required);
            if wants {
                self.dpop_key = Some(DpopKey::generate()?);
            }
        }
        let tokens = match self.cfg.strategy.clone() {
            GrantStrategy::AuthorizationCode => {
                self.code_flow(&d, scope.as_deref(), driver).await?
            }
            GrantStrategy::ClientCredentials => {
                let client = self.client_for(&d).await?;
                self.token_request(
                    &d,
                    Grant::ClientCredentials,
                    Some(&client.credentials),
                    scope.as_deref(),
                )
                .await?
            }
            GrantStrategy::JwtBearer { assertion } => {
                let client = self.client_for(&d).await.ok();
                self.token_request(
                    &d,
                    Grant::JwtBearer { assertion },
                    client.as_ref().map(|c| &c.credentials),
                    scope.as_deref(),
                )
                .await?
            }
            GrantStrategy::IdentityAssertion {
                idp_token_endpoint,
                idp_issuer,
                idp_client,
                subject_token,
                subject_token_type,
            } => {
                let jag = grants::request_token(
                    &self.egress,
                    TokenRequest {
                        token_endpoint: &idp_token_endpoint,
                        source: UrlSource::Operator,
                        issuer: &idp_issuer,
                        grant: Grant::TokenExchange {
                            subject_token,
                            subject_token_type,
                            requested_token_type: Some(
                                "urn:ietf:params:oauth:token-type:id-jag".into(),
                            ),
                            audience: Some(d.issuer.clone()),
                        },
                        client: Some(&idp_client),
                        resource: Some(&d.resource),
                        scope: scope.as_deref(),
                        dpop: None,
                        dpop_nonce: None,
                        now: self.clock.now(),
                    },
                )
                .await?;
                let client = self.client_for(&d).await?;
                self.token_request(
                    &d,
                    Grant::JwtBearer {
                        assertion: jag.access_token,
                    },
                    Some(&client.credentials),
                    scope.as_deref(),
                )
                .await?
            }
        };
        self.token = Some(ActiveToken { tokens });
        Ok(())
    }

    async fn code_flow(
        &mut self,
        d: &Discovery,
        scope: Option<&str>,
        driver: &dyn AuthorizationDriver,
    ) -> Result<TokenResponse, OAuthError> {
        if !d.metadata.supports_s256() {
            return Err(OAuthError::PkceNotSupported);
        }
        let endpoint = d
            .metadata
            .authorization_endpoint
            .clone()
            .ok_or(OAuthError::MissingEndpoint("authorization_endpoint"))?;
        let client = self.client_for(d).await?;
        let pending = authorize::start(
            &self.egress,
            &AuthorizationRequest {
                authorization_endpoint: &endpoint,
                issuer: &d.issuer,
                iss_supported: d.metadata.authorization_response_iss_parameter_supported,
                client_id: &client.credentials.client_id,
                redirect_uri: &self.cfg.redirect_uri,
                scope,
                resource: &d.resource,
                extra: &[],
            },
        )?;
        let params = driver.authorize(&pending.url).await?;
        let code = authorize::check_callback(
            &pending.state,
            &pending.issuer,
            pending.iss_required,
            params,
        )?;
        self.token_request(
            d,
            Grant::AuthorizationCode {
                code,
                redirect_uri: pending.redirect_uri.clone(),
                code_verifier: pending.verifier.clone(),
            },
            Some(&client.credentials),
            None,
        )
        .await
    }

    async fn token_request(
        &mut self,
        d: &Discovery,
        grant: Grant,
        client: Option<&ClientCredentials>,
        scope: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        let r = grants::request_token(
            &self.egress,
            TokenRequest {
                token_endpoint: &d.metadata.token_endpoint,
                source: UrlSource::Remote,
                issuer: &d.issuer,
                grant,
                client,
                resource: Some(&d.resource),
                scope,
                dpop: self.dpop_key.as_ref(),
                dpop_nonce: self.as_nonce.clone(),
                now: self.clock.now(),
            },
        )
        .await?;
        self.as_nonce = r.dpop_nonce.clone();
        Ok(r)
    }

    /// The client to use at the discovered AS: pre-registered (when it belongs to this
    /// issuer), CIMD, a stored registration for this issuer, or a new DCR.
    async fn client_for(&mut self, d: &Discovery) -> Result<RegisteredClient, OAuthError> {
        let pre_ok = self.cfg.preregistered.is_some()
            && self
                .cfg
                .preregistered_issuer
                .as_deref()
                .is_none_or(|i| i == d.issuer);
        if let Some(c) = self.clients.get(&d.issuer) {
            return Ok(c.clone());
        }
        let plan = registration::plan(&d.metadata, pre_ok, self.cfg.cimd_url.as_deref())?;
        let client = match plan {
            RegistrationPlan::PreRegistered => {
                let mut credentials = self.cfg.preregistered.clone().ok_or(OAuthError::NoClient)?;
                // A secret can go in a header or in the body: use what this AS accepts
                // (Ambiguity A6: basic unless the AS lists only post).
                if credentials.secret.is_some()
                    && matches!(
                        credentials.method,
                        AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost
                    )
                    && !d.metadata.supports_auth_method(credentials.method.as_str())
                {
                    if d.metadata.supports_auth_method("client_secret_basic") {
                        credentials.method = AuthMethod::ClientSecretBasic;
                    } else if d.metadata.supports_auth_method("client_secret_post") {
                        credentials.method = AuthMethod::ClientSecretPost;
                    }
                }
                RegisteredClient {
                    issuer: d.issuer.clone(),
                    credentials,
                    client_secret_expires_at: None,
                    kind: RegistrationKind::PreRegistered,
                }
            }
            RegistrationPlan::Cimd(url) => RegisteredClient {
                issuer: d.issuer.clone(),
                credentials: ClientCredentials::public(url),
                client_secret_expires_at: None,
                kind: RegistrationKind::Cimd,
            },
            RegistrationPlan::Dcr(endpoint) => {
                let grant_types = match self.cfg.strategy {
                    GrantStrategy::ClientCredentials => vec!["client_credentials".into()],
                    _ => vec!["authorization_code".into(), "refresh_token".into()],
                };
                let req = DcrRequest {
                    redirect_uris: vec![self.cfg.redirect_uri.clone()],
                    client_name: self.cfg.client_name.clone(),
                    grant_types,
                    auth_method: registration::preferred_auth_method(&d.metadata),
                    application_type: self.cfg.application_type,
                    scope: None,
                };
                registration::register(&self.egress, &endpoint, &d.issuer, &req).await?
            }
        };
        self.clients.insert(d.issuer.clone(), client.clone());
        Ok(client)
    }
}
