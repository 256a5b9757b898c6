//! The authorization request (RFC 6749 §4.1.1 with PKCE, RFC 8707 `resource`) and the
//! checks on the authorization response (state, RFC 9207 `iss`).

use latchkey_core::Secret;
use latchkey_egress::{Egress, UrlSource};

use crate::error::{CallbackError, OAuthError};
use crate::pkce;

/// Parameters a provider may not override through "extra" parameters (R-FLOW-9).
const RESERVED: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "state",
    "code_challenge",
    "code_challenge_method",
    "scope",
    "resource",
];

/// What goes into an authorization request.
#[derive(Debug, Clone)]
pub struct AuthorizationRequest<'a> {
    /// The AS `authorization_endpoint`.
    pub authorization_endpoint: &'a str,
    /// The AS issuer, recorded with the flow for the RFC 9207 check.
    pub issuer: &'a str,
    /// Whether the AS advertises `authorization_response_iss_parameter_supported`.
    pub iss_supported: bool,
    /// Our client id at this AS.
    pub client_id: &'a str,
    /// The redirect URI (the same value goes to registration and the code exchange).
    pub redirect_uri: &'a str,
    /// The scope, or `None` to omit it.
    pub scope: Option<&'a str>,
    /// The RFC 8707 resource, verbatim from PRM.
    pub resource: &'a str,
    /// Provider-specific extras (e.g. `token_access_type=offline`); reserved names are ignored.
    pub extra: &'a [(String, String)],
}

/// A started authorization: the URL for the browser and what the callback needs.
#[derive(Debug, Clone)]
pub struct PendingAuthorization {
    /// The URL to open.
    pub url: String,
    /// The raw `state` (only its hash is ever stored).
    pub state: Secret,
    /// The PKCE verifier.
    pub verifier: Secret,
    /// The issuer the code must come from.
    pub issuer: String,
    /// Whether `iss` is required on the response.
    pub iss_required: bool,
    /// The redirect URI used.
    pub redirect_uri: String,
    /// The resource indicator used.
    pub resource: String,
    /// The scope requested, if any.
    pub scope: Option<String>,
    /// The client id used.
    pub client_id: String,
}

/// Builds the authorization URL with fresh state and PKCE verifier. The endpoint goes
/// to a browser, so it passes the egress guard's static checks (no pinning is possible).
pub fn start(
    egress: &Egress,
    req: &AuthorizationRequest<'_>,
) -> Result<PendingAuthorization, OAuthError> {
    let checked = egress.check_url(req.authorization_endpoint, UrlSource::Remote)?;
    let mut url = checked.url().clone();
    let state = pkce::new_state();
    let verifier = pkce::new_verifier();
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", req.client_id)
            .append_pair("redirect_uri", req.redirect_uri)
            .append_pair("state", state.expose())
            .append_pair("code_challenge", &pkce::challenge(&verifier))
            .append_pair("code_challenge_method", "S256");
        if let Some(s) = req.scope {
            q.append_pair("scope", s);
        }
        q.append_pair("resource", req.resource);
        for (k, v) in req.extra {
            if !RESERVED.contains(&k.as_str()) {
                q.append_pair(k, v);
            }
        }
        // OIDC Core §11: an OpenID provider grants `offline_access` (the refresh token)
        // only when the request also asks for consent; without it the user "connects"
        // and the connection dies at the first expiry. Other servers ignore `prompt`.
        let offline = req
            .scope
            .is_some_and(|s| s.split_whitespace().any(|x| x == "offline_access"));
        if offline && !req.extra.iter().any(|(k, _)| k == "prompt") {
            q.append_pair("prompt", "consent");
        }
    }
    Ok(PendingAuthorization {
        url: url.into(),
        state,
        verifier,
        issuer: req.issuer.to_owned(),
        iss_required: req.iss_supported,
        redirect_uri: req.redirect_uri.to_owned(),
        resource: req.resource.to_owned(),
        scope: req.scope.map(str::to_owned),
        client_id: req.client_id.to_owned(),
    })
}

/// The query of an authorization response.
#[derive(Debug, Clone, Default)]
pub struct CallbackParams {
    /// `code`.
    pub code: Option<Secret>,
    /// `state` (raw; a secret until burned).
    pub state: Option<Secret>,
    /// RFC 9207 `iss`.
    pub iss: Option<String>,
    /// `error`.
    pub error: Option<String>,
    /// `error_description` (untrusted).
    pub error_description: Option<String>,
}

impl CallbackParams {
    /// Reads the parameters from a query string (first occurrence of each wins).
    pub fn from_query(query: &str) -> Self {
        let mut p = CallbackParams::default();
        for (k, v) in url::form_urlencoded::parse(query.trim_start_matches('?').as_bytes()) {
            let v = v.into_owned();
            match k.as_ref() {
                "code" if p.code.is_none() => p.code = Some(Secret::new(v)),
                "state" if p.state.is_none() => p.state = Some(Secret::new(v)),
                "iss" if p.iss.is_none() => p.iss = Some(v),
                "error" if p.error.is_none() => p.error = Some(v),
                "error_description" if p.error_description.is_none() => {
                    p.error_description = Some(v)
                }
                _ => {}
            }
        }
        p
    }
}

/// Checks an authorization response and yields the code.
///
/// Order: `state` (CSRF), then RFC 9207 §2.4 (`iss` compared as a plain string, no
/// normalisation; absent but advertised is a rejection), and only then the provider's
/// `error`, which is not acted on or shown when the issuer check fails.
pub fn check_callback(
    expected_state: &Secret,
    issuer: &str,
    iss_required: bool,
    p: CallbackParams,
) -> Result<Secret, CallbackError> {
    match &p.state {
        Some(s) if pkce::state_hash(s.expose()) == pkce::state_hash(expected_state.expose()) => {}
        _ => return Err(CallbackError::InvalidState),
    }
    match p.iss.as_deref() {
        Some(iss) if iss != issuer => return Err(CallbackError::IssuerMismatch),
        None if iss_required => return Err(CallbackError::IssuerMissing),
        _ => {}
    }
    if let Some(error) = p.error {
        return Err(CallbackError::Provider {
            error,
            description: p.error_description,
        });
    }
    p.code
        .filter(|c| !c.is_empty())
        .ok_or(CallbackError::MissingCode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &str) -> CallbackParams {
        CallbackParams::from_query(q)
    }

    #[test]
    fn offline_access_asks_for_consent() {
        let egress = Egress::new(latchkey_egress::EgressConfig::default()).unwrap();
        let req = |scope| AuthorizationRequest {
            authorization_endpoint: "https://as.example/authorize",
            issuer: "https://as.example",
            iss_supported: true,
            client_id: "c",
            redirect_uri: "https://lk.example/cb",
            scope,
            resource: "https://mcp.example/mcp",
            extra: &[],
        };
        let with = start(&egress, &req(Some("mcp offline_access"))).unwrap();
        assert!(with.url.contains("&prompt=consent"), "{}", with.url);
        let without = start(&egress, &req(Some("mcp"))).unwrap();
        assert!(!without.url.contains("prompt="), "{}", without.url);
        let none = start(&egress, &req(None)).unwrap();
        assert!(!none.url.contains("prompt="));
    }

    #[test]
    fn rfc9207_rules() {
        let st = Secret::new("s1");
        let iss = "http://localhost:9";
        assert_eq!(
            check_callback(
                &st,
                iss,
                true,
                params("code=c&state=s1&iss=http%3A%2F%2Flocalhost%3A9")
            )
            .unwrap()
            .expose(),
            "c"
        );
        assert_eq!(
            check_callback(&st, iss, false, params("code=c&state=s1"))
                .unwrap()
                .expose(),
            "c"
        );
        assert_eq!(
            check_callback(&st, iss, true, params("code=c&state=s1")),
            Err(CallbackError::IssuerMissing)
        );
        assert_eq!(
            check_callback(
                &st,
                iss,
                false,
                params("code=c&state=s1&iss=http%3A%2F%2Fevil")
            ),
            Err(CallbackError::IssuerMismatch)
        );
        // no normalisation: a trailing slash is a different issuer
        assert_eq!(
            check_callback(
                &st,
                iss,
                true,
                params("code=c&state=s1&iss=http%3A%2F%2Flocalhost%3A9%2F")
            ),
            Err(CallbackError::IssuerMismatch)
        );
        // a mismatched iss hides the provider error
        assert_eq!(
            check_callback(
                &st,
                iss,
                false,
                params("error=access_denied&state=s1&iss=x")
            ),
            Err(CallbackError::IssuerMismatch)
        );
    }

    #[test]
    fn state_and_errors() {
        let st = Secret::new("s1");
        assert_eq!(
            check_callback(&st, "i", false, params("code=c")),
            Err(CallbackError::InvalidState)
        );
        assert_eq!(
            check_callback(&st, "i", false, params("code=c&state=s2")),
            Err(CallbackError::InvalidState)
        );
        assert_eq!(
            check_callback(&st, "i", false, params("state=s1")),
            Err(CallbackError::MissingCode)
        );
        assert_eq!(
            check_callback(
                &st,
                "i",
                false,
                params("state=s1&error=access_denied&error_description=%3Cb%3E")
            ),
            Err(CallbackError::Provider {
                error: "access_denied".into(),
                description: Some("<b>".into())
            })
        );
    }
}
