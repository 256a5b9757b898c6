//! The one place where failures become HTTP answers (kanidm style: the domain
//! classifies, the transport renders). Bodies carry a stable `code` and a message that
//! never contains a secret.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A field that failed validation, by its JSON path (`credentials.token_endpoint`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// JSON path of the field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// An API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed; lists every bad field.
    #[error("invalid request")]
    BadRequest(Vec<FieldError>),
    /// 403: the caller may not do this.
    #[error("forbidden")]
    Forbidden,
    /// 404: no such resource (for this tenant).
    #[error("not found")]
    NotFound,
    /// 405: the route exists, not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 413: the request body is larger than the endpoint reads.
    #[error("the request body is too large")]
    PayloadTooLarge,
    /// 408: the request body did not arrive whole within `limits.body_timeout`.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// 429: the caller has as many event or MCP GET streams open as it may.
    #[error("too many open streams: at most {limit} per caller; close one first")]
    TooManyStreams {
        /// `limits.max_streams_per_principal`.
        limit: usize,
    },
    /// 409: the slot has no usable credential: the user must connect (never connected)
    /// or reconnect (the credential was refused). One code for both (R-API-3, R-EXEC-9:
    /// clients show "connect" for either); `reason` and the message tell them apart.
    #[error("{}", reauth_message(server_name, *reason))]
    NeedsReauth {
        /// The server.
        server_id: String,
        /// The name the user gave it (hints use it, not the id).
        server_name: String,
        /// Why there is no usable credential.
        reason: Reauth,
    },
    /// 409: the slot's token lacks scopes the server demands (step-up needed).
    #[error(
        "{server_name} needs more scopes: grant them with `latchkey connect {} --force` or reconnect it in Latchkey's web UI",
        shell_word(server_name)
    )]
    NeedsScopeUpgrade {
        /// The server.
        server_id: String,
        /// The name the user gave it.
        server_name: String,
        /// The scopes the server asked for.
        scopes: Vec<String>,
    },
    /// 409: the caller's slot of a static-header server has no value for a header yet.
    #[error(
        "{server_name} has no value for {header} yet: set it with `latchkey servers set-headers {word} --header '{header}: …'` or in Latchkey's web UI",
        word = shell_word(.server_name)
    )]
    HeadersNotSet {
        /// The server.
        server_id: String,
        /// The name the user gave it.
        server_name: String,
        /// The first configured header without a value.
        header: String,
    },
    /// 409: the slot's header values were set for another URL than the server's (a
    /// change not purged yet): nothing was sent.
    #[error(
        "{server_name}'s header values were set for another URL; nothing was sent. Set them again with `latchkey servers set-headers {word}` or in Latchkey's web UI",
        word = shell_word(.server_name)
    )]
    HeadersForOtherUrl {
        /// The server.
        server_id: String,
        /// The name the user gave it.
        server_name: String,
    },
    /// 409: the static-header server refused the values it was sent (a 401 or 403); no
    /// refresh exists for them.
    #[error(
        "{server_name} refused its header values (HTTP {status}); set new ones with `latchkey servers set-headers {word}` or in Latchkey's web UI",
        word = shell_word(.server_name)
    )]
    HeadersRefused {
        /// The server.
        server_id: String,
        /// The name the user gave it.
        server_name: String,
        /// The upstream's status.
        status: u16,
    },
    /// 422: the URL does not answer as an MCP server (the probe's reason); `auth_type`
    /// adds it anyway.
    #[error("{0}")]
    ProbeFailed(String),
    /// 409: another server of the tenant has this name.
    #[error("a server with this name exists already: {existing_id}")]
    NameTaken {
        /// The server that has it.
        existing_id: String,
    },
    /// 409: a competing operation is in progress, or the state changed.
    #[error("{0}")]
    Conflict(&'static str),
    /// 422: the server's pre-registered client is bound to one authorization server and
    /// discovery names another (or it is bound to none): nothing was sent. Issuers are
    /// compared as strings.
    #[error(
        "the server's pre-registered client belongs to the authorization server {}, but its metadata names {discovered}; nothing was sent. Fix the server's issuer or its client",
        configured.as_deref().unwrap_or("(none: set the server's issuer)")
    )]
    IssuerMismatch {
        /// The issuer the client is bound to (`None`: a secret bound to no issuer).
        configured: Option<String>,
        /// The issuer discovery names.
        discovered: String,
    },
    /// 503: no encryption key is configured (an operator must act, a retry will not help).
    #[error("no encryption key is configured")]
    EncryptionKeyMissing,
    /// 503 with `Retry-After`: the slot's token is being refreshed and the authorization
    /// server is slow; the grant goes on in the background, so a retry soon gets the new
    /// token.
    #[error(
        "the server's token is being refreshed and its authorization server is slow; retry shortly"
    )]
    RefreshPending {
        /// The server.
        server_id: String,
    },
    /// 503: a dependency (the database) is unavailable; retrying may help.
    #[error("temporarily unavailable")]
    Unavailable,
    /// 502: an upstream server failed.
    #[error("upstream failure")]
    Upstream,
    /// 502 (or the upstream's own 4xx, with this body in place of its own): an upstream
    /// MCP server answered something Latchkey will not relay; names the server and the
    /// cause, never the upstream's body.
    #[error("{server_name}: {cause}")]
    UpstreamRefused {
        /// The server.
        server_id: String,
        /// The name the user gave it.
        server_name: String,
        /// What was wrong with the answer (Latchkey's words).
        cause: String,
        /// The status to answer with: 502, or the upstream's 4xx.
        status: StatusCode,
    },
    /// 415: a state-changing request must be sent as `application/json`.
    #[error("state-changing requests must be sent with Content-Type: application/json")]
    UnsupportedMediaType,
    /// 406: the request asks for a media type this endpoint does not serve.
    #[error("{0}")]
    NotAcceptable(&'static str),
}

/// Why a slot has no usable credential ([`ApiError::NeedsReauth`]'s `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reauth {
    /// Never connected (or disconnected): nothing is stored for the slot.
    NotConnected,
    /// The authorization server refused the stored credential (`invalid_grant` and the
    /// like): it was marked as needing consent.
    Refused,
    /// The MCP server refused the token even after a forced refresh.
    Rejected,
    /// The stored token was issued for another resource than the server's URL.
    OtherResource,
    /// The stored credential does not open under the configured keys.
    Unreadable,
}

impl Reauth {
    /// The stable `reason` of the answer body.
    pub fn as_str(self) -> &'static str {
        match self {
            Reauth::NotConnected => "not_connected",
            Reauth::Refused => "consent_refused",
            Reauth::Rejected => "token_rejected",
            Reauth::OtherResource => "other_resource",
            Reauth::Unreadable => "unreadable",
        }
    }
}

/// `name` as one shell word: as it is when it is plain, else single-quoted.
pub fn shell_word(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':' | '@'));
    if plain {
        name.to_owned()
    } else {
        format!("'{}'", name.replace('\'', r"'\''"))
    }
}

/// `refusal` (the egress policy's words for `url`), with the setting that allows it
/// named when that is all it takes: a loopback URL (`http://localhost…`,
/// `http://127.0.0.1…`, `[::1]`) while the loopback relaxation is off.
pub fn loopback_hint(
    egress: &latchkey_egress::Egress,
    url: &str,
    refusal: impl std::fmt::Display,
) -> String {
    if egress.config().loopback == latchkey_egress::LoopbackPolicy::Deny
        && latchkey_egress::is_loopback_url(url)
    {
        format!(
            "{refusal}: servers on this machine (loopback, plain http) are refused unless allowed for local development: set allow_insecure_loopback = true in the configuration file or LATCHKEY_ALLOW_INSECURE_LOOPBACK=true and restart `latchkey serve`"
        )
    } else {
        refusal.to_string()
    }
}

/// A call to a stored server whose URL the egress policy refuses now (a loopback server
/// kept from a run with `allow_insecure_loopback`, after a restart without it): the 400
/// the flow start gives too, naming the setting when that is all it takes, before
/// anything is sent. `field` names the server in the request. Passing URLs cost one
/// lookup in the egress client's memo of checked URLs.
pub fn check_server_url(
    egress: &latchkey_egress::Egress,
    url: &str,
    field: &str,
) -> Result<(), ApiError> {
    match egress.check_url(url, latchkey_egress::UrlSource::Operator) {
        Ok(_) => Ok(()),
        Err(e) => Err(ApiError::BadRequest(vec![FieldError {
            field: field.into(),
            message: format!(
                "the server's URL cannot be reached: {}",
                loopback_hint(egress, url, e)
            ),
        }])),
    }
}

/// What [`ApiError::NeedsReauth`] says: what is wrong and how to connect, by the
/// server's name.
fn reauth_message(name: &str, reason: Reauth) -> String {
    let word = shell_word(name);
    match reason {
        Reauth::NotConnected => format!(
            "{name} is not connected yet: connect it with `latchkey connect {word}` or in Latchkey's web UI"
        ),
        other => format!(
            "{name} needs to be reconnected: {}; reconnect it with `latchkey connect {word} --force` or in Latchkey's web UI",
            match other {
                Reauth::Refused =>
                    "its authorization server no longer accepts the stored authorization",
                Reauth::Rejected => "the server refused its token even after a refresh",
                Reauth::Unreadable =>
                    "the stored authorization cannot be decrypted with the configured keys",
                _ => "the stored authorization was issued for another URL of the server",
            }
        ),
    }
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_id: Option<&'a str>,
    /// The server's name, for hints (never the id).
    #[serde(skip_serializing_if = "Option::is_none")]
    server_name: Option<&'a str>,
    /// Why a slot needs consent (`needs_oauth_reauth`): `not_connected`,
    /// `consent_refused`, `token_rejected`, `other_resource` or `unreadable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<&'a [FieldError]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scopes: Option<&'a [String]>,
}

impl ApiError {
    /// Status and stable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::TooManyStreams { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_streams"),
            ApiError::NeedsReauth { .. } => (StatusCode::CONFLICT, "needs_oauth_reauth"),
            ApiError::NeedsScopeUpgrade { .. } => (StatusCode::CONFLICT, "needs_scope_upgrade"),
            ApiError::HeadersNotSet { .. } => (StatusCode::CONFLICT, "headers_not_set"),
            ApiError::HeadersForOtherUrl { .. } => (StatusCode::CONFLICT, "headers_not_set"),
            ApiError::HeadersRefused { .. } => (StatusCode::CONFLICT, "headers_refused"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::NameTaken { .. } => (StatusCode::CONFLICT, "name_taken"),
            ApiError::ProbeFailed(_) => (StatusCode::UNPROCESSABLE_ENTITY, "probe_failed"),
            ApiError::IssuerMismatch { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "issuer_mismatch")
            }
            ApiError::EncryptionKeyMissing => {
                (StatusCode::SERVICE_UNAVAILABLE, "encryption_key_missing")
            }
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::RefreshPending { .. } => (StatusCode::SERVICE_UNAVAILABLE, "refresh_pending"),
            ApiError::Upstream => (StatusCode::BAD_GATEWAY, "upstream_error"),
            ApiError::UpstreamRefused { status, .. } => (*status, "upstream_error"),
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::NotAcceptable(_) => (StatusCode::NOT_ACCEPTABLE, "not_acceptable"),
        }
    }
}

impl ApiError {
    /// The JSON body every rendering shares.
    fn body(&self) -> Body<'_> {
        Body {
            code: self.status_and_code().1,
            message: self.to_string(),
            server_name: match self {
                ApiError::NeedsReauth { server_name, .. }
                | ApiError::NeedsScopeUpgrade { server_name, .. }
                | ApiError::UpstreamRefused { server_name, .. } => Some(server_name),
                _ => None,
            },
            reason: match self {
                ApiError::NeedsReauth { reason, .. } => Some(reason.as_str()),
                _ => None,
            },
            server_id: match self {
                ApiError::NeedsReauth { server_id, .. }
                | ApiError::RefreshPending { server_id }
                | ApiError::NeedsScopeUpgrade { server_id, .. }
                | ApiError::UpstreamRefused { server_id, .. }
                | ApiError::HeadersNotSet { server_id, .. }
                | ApiError::HeadersForOtherUrl { server_id, .. }
                | ApiError::HeadersRefused { server_id, .. }
                | ApiError::NameTaken {
                    existing_id: server_id,
                } => Some(server_id),
                _ => None,
            },
            scopes: match self {
                ApiError::NeedsScopeUpgrade { scopes, .. } => Some(scopes),
                _ => None,
            },
            fields: match self {
                ApiError::BadRequest(f) => Some(f),
                _ => None,
            },
        }
    }

    /// The JSON-RPC code for this error on an MCP endpoint: the slot-level outcomes get
    /// codes of their own (in the implementation-defined server range) so a client can
    /// tell "connect this server" from a failure; the rest are internal errors.
    pub fn jsonrpc_code(&self) -> i64 {
        match self {
            ApiError::NeedsReauth { .. } => JSONRPC_NEEDS_REAUTH,
            ApiError::NeedsScopeUpgrade { .. } => JSONRPC_NEEDS_SCOPE_UPGRADE,
            ApiError::HeadersNotSet { .. }
            | ApiError::HeadersForOtherUrl { .. }
            | ApiError::HeadersRefused { .. } => JSONRPC_NEEDS_HEADERS,
            ApiError::BadRequest(_) => -32602,
            ApiError::NotFound => -32601,
            _ => -32603,
        }
    }

    /// This error as the JSON-RPC answer to the request `id` on an MCP endpoint: HTTP
    /// 200 (the transport worked), the typed outcome in `error.data` with the same
    /// stable `code` as the REST API. Never a 401: that would tell the client its own
    /// credential for Latchkey is bad, and it would drop a good token.
    pub fn into_jsonrpc(self, id: serde_json::Value) -> Response {
        let body = serde_json::json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {
                "code": self.jsonrpc_code(),
                "message": self.to_string(),
                "data": self.body(),
            },
        });
        (StatusCode::OK, Json(body)).into_response()
    }
}

/// JSON-RPC code: the slot needs (re)consent; `data.server_id` names the server.
pub const JSONRPC_NEEDS_REAUTH: i64 = -32001;
/// JSON-RPC code: the slot's token lacks scopes; `data.scopes` lists them.
pub const JSONRPC_NEEDS_SCOPE_UPGRADE: i64 = -32003;
/// JSON-RPC code: a static-header server's values are missing or refused (set them
/// again); `data.server_id` names the server.
pub const JSONRPC_NEEDS_HEADERS: i64 = -32004;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut resp = (status, Json(&self.body())).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE
            && (code == "unavailable" || code == "refresh_pending")
        {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
        }
        resp
    }
}

impl From<latchkey_vault::StoreError> for ApiError {
    fn from(e: latchkey_vault::StoreError) -> Self {
        tracing::warn!(event = "store.error", error = %e);
        match e {
            latchkey_vault::StoreError::Conflict(_) => ApiError::Conflict("conflicting change"),
            _ => ApiError::Unavailable,
        }
    }
}

impl From<latchkey_vault::KeyringError> for ApiError {
    fn from(e: latchkey_vault::KeyringError) -> Self {
        match e {
            latchkey_vault::KeyringError::EncryptionKeyMissing
            | latchkey_vault::KeyringError::InvalidKeyConfig(_) => ApiError::EncryptionKeyMissing,
            // Key present, value unreadable: the user must reconnect (R-STORE-6); the
            // caller knows which server and maps it to `NeedsReauth`.
            latchkey_vault::KeyringError::Undecryptable => {
                ApiError::Conflict("stored credential unreadable")
            }
        }
    }
}
