//! Client registration, in the MCP priority order: pre-registered credentials, then a
//! Client ID Metadata Document (when the AS supports it), then RFC 7591 dynamic client
//! registration (deprecated by the 2026-07-28 revision, still widely deployed).

use latchkey_core::Secret;
use latchkey_egress::{Egress, EgressRequest, REGISTRATION_BODY_LIMIT, UrlSource};

use crate::as_metadata::AuthorizationServerMetadata;
use crate::client_auth::{AuthMethod, ClientCredentials};
use crate::error::OAuthError;
use crate::json;

/// How a client id was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationKind {
    /// Configured by an operator.
    PreRegistered,
    /// A Client ID Metadata Document URL.
    Cimd,
    /// RFC 7591.
    Dcr,
}

impl RegistrationKind {
    /// Its stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RegistrationKind::PreRegistered => "preregistered",
            RegistrationKind::Cimd => "cimd",
            RegistrationKind::Dcr => "dcr",
        }
    }
}

/// RFC 7591 / OIDC `application_type`, required by the MCP 2026-07-28 revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplicationType {
    /// A client on the user's machine (CLI, loopback redirect).
    Native,
    /// A server-side client with an https redirect.
    Web,
}

impl ApplicationType {
    /// Chooses from the redirect URI: loopback redirects are native clients.
    pub fn for_redirect(redirect_uri: &str) -> Self {
        let host = url::Url::parse(redirect_uri)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
            .unwrap_or_default();
        if host == "localhost"
            || host == "127.0.0.1"
            || host == "[::1]"
            || host.ends_with(".localhost")
        {
            ApplicationType::Native
        } else {
            ApplicationType::Web
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ApplicationType::Native => "native",
            ApplicationType::Web => "web",
        }
    }
}

/// A client usable at one authorization server. Credentials are keyed by issuer and are
/// never presented to another AS (MCP 2026-07-28).
#[derive(Debug, Clone)]
pub struct RegisteredClient {
    /// The AS issuer these credentials belong to.
    pub issuer: String,
    /// The credentials.
    pub credentials: ClientCredentials,
    /// `client_secret_expires_at` (0 or absent: never).
    pub client_secret_expires_at: Option<u64>,
    /// How it was obtained.
    pub kind: RegistrationKind,
}

/// What to do to get a client at an AS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationPlan {
    /// Use the operator's credentials.
    PreRegistered,
    /// Use the configured Client ID Metadata Document URL as `client_id`.
    Cimd(String),
    /// Register dynamically at this endpoint.
    Dcr(String),
}

/// Chooses the registration path (MCP "Client Registration Approaches", in priority order).
pub fn plan(
    metadata: &AuthorizationServerMetadata,
    has_preregistered: bool,
    cimd_url: Option<&str>,
) -> Result<RegistrationPlan, OAuthError> {
    if has_preregistered {
        return Ok(RegistrationPlan::PreRegistered);
    }
    if let Some(u) = cimd_url.filter(|_| metadata.client_id_metadata_document_supported) {
        return Ok(RegistrationPlan::Cimd(u.to_owned()));
    }
    if let Some(e) = &metadata.registration_endpoint {
        return Ok(RegistrationPlan::Dcr(e.clone()));
    }
    Err(OAuthError::NoClient)
}

/// The auth method to ask for at registration: the strongest secret-based method the AS
/// lists, else `none` (RFC 8414: an absent list means `client_secret_basic`).
pub fn preferred_auth_method(metadata: &AuthorizationServerMetadata) -> AuthMethod {
    [
        AuthMethod::ClientSecretBasic,
        AuthMethod::ClientSecretPost,
        AuthMethod::None,
    ]
    .into_iter()
    .find(|m| metadata.supports_auth_method(m.as_str()))
    .unwrap_or(AuthMethod::None)
}

/// An RFC 7591 registration request.
#[derive(Debug, Clone)]
pub struct DcrRequest {
    /// `redirect_uris`.
    pub redirect_uris: Vec<String>,
    /// `client_name`.
    pub client_name: String,
    /// `grant_types` (always includes `refresh_token` next to the main grant).
    pub grant_types: Vec<String>,
    /// `token_endpoint_auth_method` to ask for.
    pub auth_method: AuthMethod,
    /// `application_type`, sent when set (required by 2026-07-28; Ambiguity A11).
    pub application_type: Option<ApplicationType>,
    /// `scope`, when known.
    pub scope: Option<String>,
}

impl DcrRequest {
    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let mut b = serde_json::json!({
            "client_name": self.client_name,
            "redirect_uris": self.redirect_uris,
            "grant_types": self.grant_types,
            "response_types": ["code"],
            "token_endpoint_auth_method": self.auth_method.as_str(),
        });
        if let Some(t) = self.application_type {
            b["application_type"] = t.as_str().into();
        }
        if let Some(s) = &self.scope {
            b["scope"] = s.clone().into();
        }
        b
    }
}

/// Registers at `endpoint` (RFC 7591 §3). Only 200/201 with a string `client_id` is a
/// success; the response is read up to 32 KiB (R-REG-2). The method used afterwards is
/// the one the AS returned, falling back to ours; no secret means a public client.
pub async fn register(
    egress: &Egress,
    endpoint: &str,
    issuer: &str,
    req: &DcrRequest,
) -> Result<RegisteredClient, OAuthError> {
    let r = EgressRequest::post_json(
        endpoint,
        UrlSource::Remote,
        &req.body(),
        REGISTRATION_BODY_LIMIT,
    )
    .header(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    );
    let resp = egress.send(r).await?;
    let status = resp.status.as_u16();
    if !matches!(status, 200 | 201) {
        let m = json::object(&resp.body);
        let error = json::string(&m, "error").map(|e| json::printable(&e, 64));
        // A 4xx is the server's judgement of the request: configuration. A 5xx (or an
        // answer without an OAuth error) is the server failing: a retry may help.
        return Err(match error {
            Some(error) if (400..500).contains(&status) => OAuthError::RegistrationRefused {
                error,
                description: json::string(&m, "error_description")
                    .map(|d| json::printable(&d, DESCRIPTION_MAX)),
            },
            Some(error) => OAuthError::Registration(error),
            None if (400..500).contains(&status) => OAuthError::RegistrationRefused {
                error: format!("HTTP {status}"),
                description: None,
            },
            None => OAuthError::Registration(format!("HTTP {status}")),
        });
    }
    parse_registration(issuer, &resp.body, req.auth_method)
}

/// The most of an authorization server's `error_description` shown to anyone.
pub const DESCRIPTION_MAX: usize = 200;

/// The scope to ask for at registration: only values the authorization server lists in
/// `scopes_supported`, where it lists them (an AS may refuse a registration naming
/// others, as oidc-provider does); none when nothing is left.
pub fn registration_scope(scope: Option<&str>, supported: Option<&[String]>) -> Option<String> {
    let scope = scope?;
    let Some(supported) = supported else {
        return Some(scope.to_owned());
    };
    let kept: Vec<&str> = scope
        .split_whitespace()
        .filter(|s| supported.iter().any(|x| x == s))
        .collect();
    (!kept.is_empty()).then(|| kept.join(" "))
}

/// [`register`] with the rules that make it work with more servers: the scope is cut
/// to what the server lists ([`registration_scope`]), and a registration refused as
/// `invalid_client_metadata` or `invalid_redirect_uri` is tried once more with a
/// minimal document (redirect URIs, name, grant and response types, auth method: no
/// scope, no application type), since servers differ in what else they accept.
pub async fn register_adapted(
    egress: &Egress,
    endpoint: &str,
    issuer: &str,
    req: &DcrRequest,
    scopes_supported: Option<&[String]>,
) -> Result<RegisteredClient, OAuthError> {
    let mut req = req.clone();
    req.scope = registration_scope(req.scope.as_deref(), scopes_supported);
    match register(egress, endpoint, issuer, &req).await {
        Err(OAuthError::RegistrationRefused { error, .. })
            if error == "invalid_client_metadata" || error == "invalid_redirect_uri" =>
        {
            tracing::info!(event = "mcpoauth.dcr_retry_minimal", issuer, error = %error);
            let minimal = DcrRequest {
                scope: None,
                application_type: None,
                ..req
            };
            register(egress, endpoint, issuer, &minimal).await
        }
        other => other,
    }
}

/// Parses a registration response.
pub fn parse_registration(
    issuer: &str,
    body: &[u8],
    asked: AuthMethod,
) -> Result<RegisteredClient, OAuthError> {
    if !json::is_object(body) {
        return Err(OAuthError::Registration(
            "the response is not a JSON object".into(),
        ));
    }
    let m = json::object(body);
    let client_id = json::string(&m, "client_id")
        .ok_or_else(|| OAuthError::Registration("no client_id".into()))?;
    let secret = json::string(&m, "client_secret").map(Secret::new);
    let method = json::string(&m, "token_endpoint_auth_method")
        .and_then(|s| s.parse::<AuthMethod>().ok())
        .unwrap_or(if secret.is_some() {
            asked
        } else {
            AuthMethod::None
        });
    let method = if secret.is_none()
        && matches!(
            method,
            AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost
        ) {
        AuthMethod::None
    } else {
        method
    };
    Ok(RegisteredClient {
        issuer: issuer.to_owned(),
        credentials: ClientCredentials {
            client_id,
            secret,
            method,
            assertion_key: None,
        },
        client_secret_expires_at: json::seconds(&m, "client_secret_expires_at").filter(|t| *t > 0),
        kind: RegistrationKind::Dcr,
    })
}

/// The Client ID Metadata Document to serve at `client_id_url`.
pub fn client_metadata_document(
    client_id_url: &str,
    client_name: &str,
    redirect_uris: &[String],
) -> serde_json::Value {
    serde_json::json!({
        "client_id": client_id_url,
        "client_name": client_name,
        "redirect_uris": redirect_uris,
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_asks_only_for_listed_scopes() {
        let listed = vec!["openid".to_owned(), "offline_access".to_owned()];
        assert_eq!(
            registration_scope(Some("openid mcp:tools offline_access"), Some(&listed)),
            Some("openid offline_access".into())
        );
        assert_eq!(registration_scope(Some("mcp:tools"), Some(&listed)), None);
        assert_eq!(
            registration_scope(Some("mcp:tools"), None),
            Some("mcp:tools".into())
        );
        assert_eq!(registration_scope(None, Some(&listed)), None);
    }

    fn md(json: &str) -> AuthorizationServerMetadata {
        AuthorizationServerMetadata::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn plan_priority() {
        let m = md(
            r#"{"issuer":"i","token_endpoint":"t","registration_endpoint":"r","client_id_metadata_document_supported":true}"#,
        );
        assert_eq!(
            plan(&m, true, Some("https://c/m.json")).unwrap(),
            RegistrationPlan::PreRegistered
        );
        assert_eq!(
            plan(&m, false, Some("https://c/m.json")).unwrap(),
            RegistrationPlan::Cimd("https://c/m.json".into())
        );
        assert_eq!(
            plan(&m, false, None).unwrap(),
            RegistrationPlan::Dcr("r".into())
        );
        let m = md(r#"{"issuer":"i","token_endpoint":"t"}"#);
        assert!(matches!(
            plan(&m, false, Some("https://c/m.json")),
            Err(OAuthError::NoClient)
        ));
    }

    #[test]
    fn auth_method_preference() {
        assert_eq!(
            preferred_auth_method(&md(
                r#"{"token_endpoint":"t","token_endpoint_auth_methods_supported":["none"]}"#
            )),
            AuthMethod::None
        );
        assert_eq!(
            preferred_auth_method(&md(
                r#"{"token_endpoint":"t","token_endpoint_auth_methods_supported":["client_secret_post","none"]}"#
            )),
            AuthMethod::ClientSecretPost
        );
        assert_eq!(
            preferred_auth_method(&md(r#"{"token_endpoint":"t"}"#)),
            AuthMethod::ClientSecretBasic
        );
    }

    #[test]
    fn registration_response_parsing() {
        let r = parse_registration("i", br#"{"client_id":"c","client_secret":"s","token_endpoint_auth_method":"client_secret_post","client_secret_expires_at":0}"#, AuthMethod::ClientSecretBasic).unwrap();
        assert_eq!(r.credentials.method, AuthMethod::ClientSecretPost);
        assert_eq!(r.client_secret_expires_at, None);
        let r = parse_registration("i", br#"{"client_id":"c"}"#, AuthMethod::ClientSecretBasic)
            .unwrap();
        assert_eq!(r.credentials.method, AuthMethod::None);
        assert!(parse_registration("i", br#"{"client_secret":"s"}"#, AuthMethod::None).is_err());
        assert!(parse_registration("i", b"null", AuthMethod::None).is_err());
    }

    #[test]
    fn application_type_from_redirect() {
        assert_eq!(
            ApplicationType::for_redirect("http://127.0.0.1:8/cb"),
            ApplicationType::Native
        );
        assert_eq!(
            ApplicationType::for_redirect("http://localhost:8/cb"),
            ApplicationType::Native
        );
        assert_eq!(
            ApplicationType::for_redirect("https://latchkey.example/cb"),
            ApplicationType::Web
        );
        let body = DcrRequest {
            redirect_uris: vec!["http://localhost/cb".into()],
            client_name: "n".into(),
            grant_types: vec!["authorization_code".into(), "refresh_token".into()],
            auth_method: AuthMethod::None,
            application_type: Some(ApplicationType::Native),
            scope: None,
        }
        .body();
        assert_eq!(body["application_type"], "native");
        assert_eq!(body["grant_types"][1], "refresh_token");
    }
}
