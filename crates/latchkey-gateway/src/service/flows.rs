//! Managed OAuth flows (R-FLOW-1..15): the rules of starting one (discovery, the
//! client, PKCE, the stored flow; client credentials minted at once) and of completing
//! one from its callback (the state burnt first, mix-up checks, the code exchange, the
//! tokens sealed into the slot). Flows live in the database (state hash only, verifier
//! sealed), so any instance can finish a flow another started. The HTTP side (the
//! start and status answers, the callback page) is [`crate::flows`].

use http::StatusCode;
use latchkey_egress::UrlSource;
use latchkey_guard::Principal;
use latchkey_oauth::authorize::{self, AuthorizationRequest, CallbackParams};
use latchkey_oauth::client_auth::{AuthMethod, ClientCredentials};
use latchkey_oauth::discovery::{Discovery, DiscoveryOptions};
use latchkey_oauth::grants::{self, Grant, TokenRequest, TokenResponse};
use latchkey_oauth::registration::{self, ApplicationType, DcrRequest, RegistrationPlan};
use latchkey_oauth::{OAuthError, pkce, scope};
use latchkey_vault::store::{
    CredentialRow, FlowRow, RegisteredClientRow, ServerRow, Slot, flow_is_live, new_id,
};

use crate::error::ApiError;
use crate::state::AppState;

/// The callback path, under the public URL (R-FLOW-12).
pub const CALLBACK_PATH: &str = "/v1/oauth/callback";

/// The redirect URI for a flow with the authorization server `issuer`.
///
/// Mix-up defence (RFC 9700 §4.4) that does not depend on the server: one that sends
/// `iss` in its answer (RFC 9207) shares [`CALLBACK_PATH`], where `iss` is checked;
/// every other one gets a path of its own, keyed by its issuer
/// ([`CALLBACK_PATH`]`/{key}`), and a callback completes a flow only on the exact
/// redirect URI that flow was started with, so a code sent for one authorization server
/// can never complete a flow started with another.
pub fn redirect_uri(public_url: &str, issuer: &str, iss_supported: bool) -> String {
    if iss_supported {
        format!("{public_url}{CALLBACK_PATH}")
    } else {
        format!("{public_url}{CALLBACK_PATH}/{}", issuer_key(issuer))
    }
}

/// Whether a callback that `arrived` on one redirect URI is for a flow started with
/// `expected`: the same callback path (the shared one, or the same issuer's). Only the
/// part after [`CALLBACK_PATH`] is compared, so instances behind one public name that
/// each know their own base URL still take each other's callbacks.
fn same_callback(expected: &str, arrived: &str) -> bool {
    let tail = |u: &str| u.rsplit_once(CALLBACK_PATH).map(|(_, t)| t.to_owned());
    matches!((tail(expected), tail(arrived)), (Some(a), Some(b)) if a == b)
}

/// The issuer's path segment: the first 128 bits of the SHA-256 of the issuer string
/// (verbatim, no normalisation), in hex.
pub fn issuer_key(issuer: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(issuer.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn oauth_failure(e: &OAuthError) -> ApiError {
    tracing::info!(event = "oauth.start_failed", error = %e);
    match e {
        OAuthError::Egress(_) | OAuthError::TokenEndpoint { .. } => ApiError::Upstream,
        // The authorization server failing now (metadata or registration unusable, a
        // 5xx): the request is fine and a retry may help.
        _ if e.remedy().is_retryable() => ApiError::Upstream,
        _ => ApiError::BadRequest(vec![crate::error::FieldError {
            field: "server_id".into(),
            message: format!("the server's OAuth setup cannot be used: {e}"),
        }]),
    }
}

/// The client to use at this AS: pre-registered, previously registered, or registered
/// now by DCR (and remembered, keyed by issuer).
async fn client_for(
    s: &AppState,
    server: &ServerRow,
    d: &Discovery,
    redirect: &str,
    scope: Option<&str>,
) -> Result<ClientCredentials, ApiError> {
    if let Some(id) = &server.client_id {
        // A pre-registered client belongs to one authorization server: its id and
        // secret go to that issuer only (compared as strings), else nothing is sent.
        let bound = server.issuer.as_deref();
        if bound.is_some_and(|i| i != d.issuer)
            || (bound.is_none() && server.client_secret.is_some())
        {
            tracing::warn!(event = "mcpoauth.issuer_mismatch", server_id = %server.id, configured = bound.unwrap_or(""), discovered = %d.issuer);
            return Err(ApiError::IssuerMismatch {
                configured: bound.map(str::to_owned),
                discovered: d.issuer.clone(),
            });
        }
        let secret = match &server.client_secret {
            Some(env) => Some(s.keyring.open(env, server.secret_aad())?),
            None => None,
        };
        return Ok(match secret {
            Some(sec) => ClientCredentials::with_secret(
                id.clone(),
                sec,
                registration::preferred_auth_method(&d.metadata),
            ),
            None => ClientCredentials::public(id.clone()),
        });
    }
    if let Some(c) = s
        .store
        .get_registered_client(&server.tenant, &server.id, &d.issuer)
        .await?
    {
        let method: AuthMethod = c.auth_method.parse().unwrap_or(AuthMethod::None);
        return Ok(match &c.client_secret {
            Some(env) => ClientCredentials::with_secret(
                c.client_id.clone(),
                s.keyring.open(env, c.secret_aad())?,
                method,
            ),
            None => ClientCredentials::public(c.client_id.clone()),
        });
    }
    let endpoint = match registration::plan(&d.metadata, false, None) {
        Ok(RegistrationPlan::Dcr(e)) => e,
        Ok(_) | Err(_) => return Err(oauth_failure(&OAuthError::NoClient)),
    };
    let req = DcrRequest {
        redirect_uris: vec![redirect.to_owned()],
        client_name: "Latchkey".into(),
        grant_types: vec!["authorization_code".into(), "refresh_token".into()],
        auth_method: registration::preferred_auth_method(&d.metadata),
        application_type: Some(ApplicationType::for_redirect(redirect)),
        scope: scope.map(str::to_owned),
    };
    let reg = registration::register_adapted(
        &s.egress,
        &endpoint,
        &d.issuer,
        &req,
        d.metadata.scopes_supported.as_deref(),
    )
    .await
        .map_err(|e| {
            tracing::warn!(event = "mcpoauth.dcr_failed", server_id = %server.id, issuer = %d.issuer, error = %e);
            oauth_failure(&e)
        })?;
    let mut row = RegisteredClientRow {
        client_secret: None,
        id: new_id(),
        tenant: server.tenant.clone(),
        server: server.id.clone(),
        issuer: d.issuer.clone(),
        client_id: reg.credentials.client_id.clone(),
        auth_method: reg.credentials.method.as_str().into(),
        client_secret_expires_at: reg
            .client_secret_expires_at
            .and_then(|v| i64::try_from(v).ok()),
        obtained_by: reg.kind.as_str().into(),
        created_at: s.now(),
    };
    row.client_secret = reg
        .credentials
        .secret
        .as_ref()
        .map(|sec| s.keyring.seal(sec, row.secret_aad()))
        .transpose()?;
    s.store.put_registered_client(&row).await?;
    Ok(reg.credentials)
}

/// Seals `tokens` into a new row for `slot` and replaces the slot (R-FLOW-13 step 1).
/// `grant_type` is `Some("client_credentials")` for tokens minted with that grant: the
/// token service renews them with it (they come with no refresh token); `None` for a
/// user's consent, which only its refresh token renews.
#[allow(clippy::too_many_arguments)]
async fn store_tokens(
    s: &AppState,
    grant_type: Option<&'static str>,
    slot: &Slot,
    initiated_by: &str,
    d_issuer: &str,
    resource: &str,
    token_endpoint: &str,
    revocation_endpoint: Option<&str>,
    client: &ClientCredentials,
    tokens: TokenResponse,
) -> Result<(), ApiError> {
    let now = s.now();
    let mut row = CredentialRow::new(new_id(), slot.clone(), token_endpoint, now);
    row.issuer = Some(d_issuer.to_owned());
    row.resource = Some(resource.to_owned());
    // The issuer's own revocation endpoint, recorded now: a disconnect revokes there or
    // nowhere, whatever the server's metadata names by then.
    row.revocation_endpoint = revocation_endpoint.map(str::to_owned);
    row.client_id = Some(client.client_id.clone());
    row.auth_method = Some(client.method.as_str().into());
    row.scopes = tokens.scope.clone();
    row.access_expires_at = tokens
        .expires_in
        .map(|e| now.saturating_add(i64::try_from(e).unwrap_or(i64::MAX)));
    row.initiated_by = Some(initiated_by.to_owned());
    row.grant_type = grant_type.map(str::to_owned);
    // Sealed last: the values are bound to the row's slot, issuer and endpoints.
    row.client_secret = client
        .secret
        .as_ref()
        .map(|sec| s.keyring.seal(sec, row.aad("client_secret")))
        .transpose()?;
    row.access_token = Some(
        s.keyring
            .seal(&tokens.access_token, row.aad("access_token"))?,
    );
    row.refresh_token = tokens
        .refresh_token
        .as_ref()
        .map(|rt| s.keyring.seal(rt, row.aad("refresh_token")))
        .transpose()?;
    s.store.upsert_credential(&row).await?;
    // R-OBS-1: ids and names only.
    tracing::info!(
        event = "mcpoauth.save_token",
        tenant = %slot.tenant,
        server_id = %slot.server,
        credential_id = %row.id,
        has_refresh_token = row.refresh_token.is_some(),
    );
    s.announce(crate::cluster::Change::slot(slot)).await;
    Ok(())
}

/// What [`begin`] did.
#[derive(Debug)]
pub(crate) enum Started {
    /// The slot has a usable credential; nothing was started (R-FLOW-15).
    AlreadyAuthorized,
    /// `client_credentials`: the token was minted and stored, no browser needed.
    Completed {
        /// The client used.
        client_id: String,
        /// The authorization server.
        issuer: String,
    },
    /// A flow is pending: the user opens `authorization_url` to consent.
    Redirect {
        /// The authorization request URL.
        authorization_url: String,
        /// The client used.
        client_id: String,
        /// The authorization server.
        issuer: String,
    },
}

/// Starts a managed flow for `slot` of `server` (an OAuth server of `p`'s tenant; the
/// caller has checked that `p` may act on the slot), initiated by `p`. `force` skips
/// the R-FLOW-15 "already authorized" check: the token service found the stored
/// credential unusable (a refused refresh), so the user must consent again although a
/// refresh token is stored.
pub(crate) async fn begin(
    s: &AppState,
    p: &Principal,
    server: &ServerRow,
    slot: Slot,
    force: bool,
) -> Result<Started, ApiError> {
    let now_s = s.now();
    // R-FLOW-15: a slot that can serve now means nothing to do; one that cannot (no
    // credential, or one refused by its authorization server) gets a new flow.
    if !force
        && let Some(c) = s.store.get_credential(&slot).await?
        && can_serve(&c, now_s)
    {
        return Ok(Started::AlreadyAuthorized);
    }
    // R-API-5: a URL the egress policy refuses (e.g. a loopback server while the
    // loopback relaxation is off) is a 400 saying what allows it; nothing is sent.
    if let Err(e) = s.egress.check_url(&server.url, UrlSource::Operator) {
        return Err(ApiError::BadRequest(vec![crate::error::FieldError {
            field: "server_id".into(),
            message: format!(
                "the server's URL cannot be reached: {}",
                crate::error::loopback_hint(&s.egress, &server.url, e)
            ),
        }]));
    }
    // R-FLOW-8: another user's live flow on the shared slot wins; the same user's
    // earlier flows are replaced.
    for other in s.store.flows_for_slot(&slot).await? {
        if !flow_is_live(other.state_created_at, now_s) {
            let _ = s.store.consume_flow(&other.state_hash).await;
        } else if other.initiated_by != p.subject.as_str() {
            return Err(ApiError::Conflict(
                "OAuth authorization already in progress",
            ));
        } else {
            let _ = s.store.consume_flow(&other.state_hash).await;
        }
    }
    let d = s
        .discoverer
        .discover(&server.url, None, DiscoveryOptions::default())
        .await
        .map_err(|e| {
            tracing::warn!(event = "mcpoauth.discover_failed", server_id = %server.id, error = %e);
            oauth_failure(&e)
        })?;
    let redirect = redirect_uri(
        &s.public_url,
        &d.issuer,
        d.metadata.authorization_response_iss_parameter_supported,
    );
    let scope = scope::select(scope::ScopeInputs {
        configured: server.scopes.as_deref(),
        challenge: None,
        prm_scopes_supported: d.prm.as_ref().and_then(|p| p.scopes_supported.as_deref()),
        as_scopes_supported: d.metadata.scopes_supported.as_deref(),
        want_offline_access: true,
    });

    if server.grant_type == "client_credentials" {
        // R-FLOW-11: minted server-side, no redirect, no PKCE.
        let client = client_for(s, server, &d, &redirect, scope.as_deref()).await?;
        if client.secret.is_none() {
            return Err(ApiError::BadRequest(vec![crate::error::FieldError {
                field: "server_id".into(),
                message: "client_credentials needs a client secret".into(),
            }]));
        }
        let tokens = grants::request_token(
            &s.egress,
            TokenRequest {
                token_endpoint: &d.metadata.token_endpoint,
                source: UrlSource::Remote,
                issuer: &d.issuer,
                grant: Grant::ClientCredentials,
                client: Some(&client),
                resource: Some(&d.resource),
                scope: scope.as_deref(),
                dpop: None,
                dpop_nonce: None,
                now: s.clock.now(),
            },
        )
        .await
        .map_err(|e| {
            tracing::warn!(event = "mcpoauth.client_credentials_failed", server_id = %server.id, error = %e);
            ApiError::Upstream
        })?;
        store_tokens(
            s,
            Some("client_credentials"),
            &slot,
            p.subject.as_str(),
            &d.issuer,
            &d.resource,
            &d.metadata.token_endpoint,
            d.metadata.revocation_endpoint.as_deref(),
            &client,
            tokens,
        )
        .await?;
        metrics::counter!("latchkey_oauth_flows_started_total", "kind" => "client_credentials")
            .increment(1);
        return Ok(Started::Completed {
            client_id: client.client_id,
            issuer: d.issuer.clone(),
        });
    }

    if !d.metadata.supports_s256() {
        return Err(oauth_failure(&OAuthError::PkceNotSupported));
    }
    let auth_endpoint = d
        .metadata
        .authorization_endpoint
        .clone()
        .ok_or_else(|| oauth_failure(&OAuthError::MissingEndpoint("authorization_endpoint")))?;
    let client = client_for(s, server, &d, &redirect, scope.as_deref()).await?;
    let pending = authorize::start(
        &s.egress,
        &AuthorizationRequest {
            authorization_endpoint: &auth_endpoint,
            issuer: &d.issuer,
            iss_supported: d.metadata.authorization_response_iss_parameter_supported,
            client_id: &client.client_id,
            redirect_uri: &redirect,
            scope: scope.as_deref(),
            resource: &d.resource,
            extra: &[],
        },
    )
    .map_err(|e| oauth_failure(&e))?;
    let state_hash = pkce::state_hash(pending.state.expose());
    let mut flow = FlowRow {
        verifier: Vec::new(),
        state_hash,
        slot,
        initiated_by: p.subject.as_str().to_owned(),
        state_created_at: now_s,
        issuer: pending.issuer.clone(),
        resource: pending.resource.clone(),
        redirect_uri: pending.redirect_uri.clone(),
        client_id: pending.client_id.clone(),
        scopes: pending.scope.clone(),
        iss_required: pending.iss_required,
    };
    flow.verifier = s.keyring.seal(&pending.verifier, flow.verifier_aad())?;
    s.store.insert_flow(&flow).await?;
    metrics::counter!("latchkey_oauth_flows_started_total", "kind" => "authorization_code")
        .increment(1);
    Ok(Started::Redirect {
        authorization_url: pending.url,
        client_id: pending.client_id,
        issuer: pending.issuer,
    })
}

/// The authorization server no longer knows `client_id` (`invalid_client` at the code
/// exchange): if Latchkey registered it dynamically, the registration is dropped so the
/// next connect registers afresh (R-REG-3). Other clients are left alone.
async fn forget_client(s: &AppState, slot: &Slot, issuer: &str, client_id: &str) {
    match s
        .store
        .forget_registered_client(&slot.tenant, &slot.server, issuer, client_id)
        .await
    {
        Ok(true) => {
            tracing::info!(event = "mcpoauth.client_forgotten", server_id = %slot.server, issuer = %issuer, client_id = %client_id);
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(event = "mcpoauth.client_forget_failed", server_id = %slot.server, error = %e);
        }
    }
}

/// Whether the credential `c` can serve a call now: not refused by its authorization
/// server, and an access token still valid or a way to get one (a refresh token, or the
/// client credentials grant it was minted with).
fn can_serve(c: &CredentialRow, now_s: i64) -> bool {
    c.needs_consent.is_none()
        && (c.refresh_token.is_some()
            || c.grant_type.as_deref() == Some("client_credentials")
            || (c.access_token.is_some() && c.access_expires_at.is_some_and(|e| e > now_s)))
}

/// How a callback ended, for the page and its message.
#[derive(Debug)]
pub struct Outcome {
    /// The page status.
    pub status: StatusCode,
    /// Whether the slot is connected now.
    pub ok: bool,
    /// A fixed reason code (`connected`, `invalid_state`, `provider_error` ...).
    pub reason: &'static str,
    /// The server of the flow, once the flow was found.
    pub server_id: Option<String>,
    /// The error code of the provider, for `provider_error`.
    pub detail: Option<String>,
    /// The flow, once it was found: who is told (R-UI-7).
    pub flow: Option<(Slot, String)>,
}

impl Outcome {
    pub(crate) fn fail(
        status: StatusCode,
        reason: &'static str,
        server_id: Option<String>,
    ) -> Self {
        Self {
            status,
            ok: false,
            reason,
            server_id,
            detail: None,
            flow: None,
        }
    }
}

/// Completes the flow that a callback arriving on `arrived` (the public URL and path it
/// came to) belongs to, from its query `q`: the outcome, announced to every instance
/// once the flow is known (R-UI-7, R-FLOW-13), counted and logged.
pub async fn complete(s: &AppState, q: Option<&str>, arrived: &str) -> Outcome {
    let mut found = None;
    let mut outcome = finish(
        s,
        CallbackParams::from_query(q.unwrap_or("")),
        arrived,
        &mut found,
    )
    .await;
    outcome.flow = found;
    metrics::counter!("latchkey_oauth_callbacks_total", "outcome" => outcome.reason).increment(1);
    // Told on success and on failure, once the flow is known (R-UI-7, R-FLOW-13).
    if let (Some((slot, initiated_by)), Some(server_id)) = (&outcome.flow, &outcome.server_id) {
        // On every instance: the client waiting for it may be connected to another.
        s.announce(crate::cluster::Change::FlowCompleted {
            tenant: slot.tenant.clone(),
            server: server_id.clone(),
            user: slot.subject.clone(),
            initiated_by: initiated_by.clone(),
            error: (!outcome.ok).then(|| outcome.reason.to_owned()),
        })
        .await;
    }
    tracing::info!(
        event = "oauth.callback",
        ok = outcome.ok,
        reason = outcome.reason,
        server_id = outcome.server_id.as_deref().unwrap_or("")
    );
    outcome
}

async fn finish(
    s: &AppState,
    params: CallbackParams,
    arrived: &str,
    found: &mut Option<(Slot, String)>,
) -> Outcome {
    let Some(state) = params.state.clone() else {
        return if params.code.is_some() {
            Outcome::fail(StatusCode::BAD_REQUEST, "missing_state", None)
        } else {
            Outcome::fail(StatusCode::OK, "missing_code_or_state", None)
        };
    };
    // Burn the state first: whatever follows, it cannot be used again (R-FLOW-4).
    let flow = match s
        .store
        .consume_flow(&pkce::state_hash(state.expose()))
        .await
    {
        Ok(Some(f)) => f,
        Ok(None) => return Outcome::fail(StatusCode::BAD_REQUEST, "invalid_state", None),
        Err(_) => return Outcome::fail(StatusCode::SERVICE_UNAVAILABLE, "unknown", None),
    };
    let sid = Some(flow.slot.server.clone());
    *found = Some((flow.slot.clone(), flow.initiated_by.clone()));
    if !flow_is_live(flow.state_created_at, s.now()) {
        return Outcome::fail(StatusCode::BAD_REQUEST, "invalid_state", sid);
    }
    // Mix-up: the answer must come back where this flow's authorization server was
    // told to send it (the state is burnt either way).
    if !same_callback(&flow.redirect_uri, arrived) {
        tracing::warn!(event = "oauth.callback_wrong_redirect", server_id = %flow.slot.server);
        return Outcome::fail(StatusCode::BAD_REQUEST, "issuer_mismatch", sid);
    }
    let server = match s
        .store
        .get_server(&flow.slot.tenant, &flow.slot.server)
        .await
    {
        Ok(Some(sv)) => sv,
        Ok(None) => return Outcome::fail(StatusCode::GONE, "server_gone", sid),
        Err(_) => return Outcome::fail(StatusCode::SERVICE_UNAVAILABLE, "unknown", sid),
    };
    if s.egress
        .check_url(&server.url, UrlSource::Operator)
        .is_err()
    {
        return Outcome::fail(StatusCode::BAD_REQUEST, "insecure_url", sid);
    }
    let code = match authorize::check_callback(&state, &flow.issuer, flow.iss_required, params) {
        Ok(c) => c,
        Err(latchkey_oauth::error::CallbackError::Provider { error, .. }) => {
            let mut o = Outcome::fail(StatusCode::OK, "provider_error", sid);
            // The provider's `error` code only (a token of [A-Za-z_]); its description
            // is untrusted text and is not shown.
            o.detail = Some(
                error
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .take(64)
                    .collect(),
            );
            return o;
        }
        Err(latchkey_oauth::error::CallbackError::IssuerMismatch)
        | Err(latchkey_oauth::error::CallbackError::IssuerMissing) => {
            return Outcome::fail(StatusCode::BAD_REQUEST, "issuer_mismatch", sid);
        }
        Err(_) => return Outcome::fail(StatusCode::BAD_REQUEST, "invalid_callback", sid),
    };
    let verifier = match s.keyring.open(&flow.verifier, flow.verifier_aad()) {
        Ok(v) => v,
        Err(latchkey_vault::KeyringError::Undecryptable) => {
            return Outcome::fail(StatusCode::BAD_REQUEST, "invalid_state", sid);
        }
        Err(_) => {
            return Outcome::fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "encryption_key_missing",
                sid,
            );
        }
    };
    let d = match s
        .discoverer
        .discover(&server.url, None, DiscoveryOptions::default())
        .await
    {
        Ok(d) if d.issuer == flow.issuer => d,
        Ok(_) => return Outcome::fail(StatusCode::BAD_REQUEST, "issuer_mismatch", sid),
        Err(_) => return Outcome::fail(StatusCode::BAD_GATEWAY, "discovery_failed", sid),
    };
    let client = match client_for(s, &server, &d, &flow.redirect_uri, flow.scopes.as_deref()).await
    {
        Ok(c) if c.client_id == flow.client_id => c,
        Ok(_) => return Outcome::fail(StatusCode::CONFLICT, "client_changed", sid),
        Err(ApiError::IssuerMismatch { .. }) => {
            return Outcome::fail(StatusCode::BAD_REQUEST, "issuer_mismatch", sid);
        }
        Err(_) => return Outcome::fail(StatusCode::SERVICE_UNAVAILABLE, "unknown", sid),
    };
    let tokens = match grants::request_token(
        &s.egress,
        TokenRequest {
            token_endpoint: &d.metadata.token_endpoint,
            source: UrlSource::Remote,
            issuer: &d.issuer,
            grant: Grant::AuthorizationCode {
                code,
                redirect_uri: flow.redirect_uri.clone(),
                code_verifier: verifier,
            },
            client: Some(&client),
            resource: Some(&flow.resource),
            scope: None,
            dpop: None,
            dpop_nonce: None,
            now: s.clock.now(),
        },
    )
    .await
    {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(event = "mcpoauth.exchange_failed", error = %e);
            if e.oauth_error_code() == Some("invalid_client") {
                forget_client(s, &flow.slot, &d.issuer, &client.client_id).await;
                return Outcome::fail(StatusCode::BAD_GATEWAY, "client_unknown", sid);
            }
            return Outcome::fail(StatusCode::BAD_GATEWAY, "exchange_failed", sid);
        }
    };
    if let Err(e) = store_tokens(
        s,
        None,
        &flow.slot,
        &flow.initiated_by,
        &d.issuer,
        &flow.resource,
        &d.metadata.token_endpoint,
        d.metadata.revocation_endpoint.as_deref(),
        &client,
        tokens,
    )
    .await
    {
        let (status, code) = e.status_and_code();
        let reason = if code == "encryption_key_missing" {
            "encryption_key_missing"
        } else {
            "unknown"
        };
        return Outcome::fail(status, reason, sid);
    }
    Outcome {
        status: StatusCode::OK,
        ok: true,
        reason: "connected",
        server_id: sid,
        detail: None,
        flow: None,
    }
}
