//! RFC 8414 authorization server metadata and OpenID Connect Discovery.

use crate::json;
use crate::urls;

/// The fields of AS metadata an MCP client uses. `issuer` is kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthorizationServerMetadata {
    /// The issuer identifier, verbatim.
    pub issuer: String,
    /// Where the browser goes for consent (absent for client-credentials-only servers).
    pub authorization_endpoint: Option<String>,
    /// Where grants are redeemed.
    pub token_endpoint: String,
    /// RFC 7591 registration endpoint.
    pub registration_endpoint: Option<String>,
    /// RFC 7009 revocation endpoint.
    pub revocation_endpoint: Option<String>,
    /// RFC 7662 introspection endpoint.
    pub introspection_endpoint: Option<String>,
    /// `scopes_supported`.
    pub scopes_supported: Option<Vec<String>>,
    /// `grant_types_supported`.
    pub grant_types_supported: Option<Vec<String>>,
    /// `code_challenge_methods_supported`; absent means PKCE support is unknown.
    pub code_challenge_methods_supported: Option<Vec<String>>,
    /// `token_endpoint_auth_methods_supported`; absent means `client_secret_basic` (RFC 8414 §2).
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
    /// `client_id_metadata_document_supported` (Client ID Metadata Documents).
    pub client_id_metadata_document_supported: bool,
    /// RFC 9207 `authorization_response_iss_parameter_supported`.
    pub authorization_response_iss_parameter_supported: bool,
    /// RFC 9449 `dpop_signing_alg_values_supported`.
    pub dpop_signing_alg_values_supported: Option<Vec<String>>,
}

impl AuthorizationServerMetadata {
    /// Parses a metadata document defensively. It must be a JSON object with a string
    /// `token_endpoint` (R-DISC-3); `issuer` may be absent only for the caller to reject.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        if !json::is_object(body) {
            return Err("authorization server metadata is not a JSON object".into());
        }
        let m = json::object(body);
        let token_endpoint =
            json::string(&m, "token_endpoint").ok_or("metadata has no token_endpoint")?;
        Ok(Self {
            issuer: json::string(&m, "issuer").unwrap_or_default(),
            authorization_endpoint: json::string(&m, "authorization_endpoint"),
            token_endpoint,
            registration_endpoint: json::string(&m, "registration_endpoint"),
            revocation_endpoint: json::string(&m, "revocation_endpoint"),
            introspection_endpoint: json::string(&m, "introspection_endpoint"),
            scopes_supported: json::strings(&m, "scopes_supported"),
            grant_types_supported: json::strings(&m, "grant_types_supported"),
            code_challenge_methods_supported: json::strings(&m, "code_challenge_methods_supported"),
            token_endpoint_auth_methods_supported: json::strings(
                &m,
                "token_endpoint_auth_methods_supported",
            ),
            client_id_metadata_document_supported: json::boolean(
                &m,
                "client_id_metadata_document_supported",
            )
            .unwrap_or(false),
            authorization_response_iss_parameter_supported: json::boolean(
                &m,
                "authorization_response_iss_parameter_supported",
            )
            .unwrap_or(false),
            dpop_signing_alg_values_supported: json::strings(
                &m,
                "dpop_signing_alg_values_supported",
            ),
        })
    }

    /// Whether PKCE S256 is advertised.
    pub fn supports_s256(&self) -> bool {
        self.code_challenge_methods_supported
            .as_ref()
            .is_some_and(|m| m.iter().any(|x| x == "S256"))
    }

    /// Whether a token endpoint auth method is supported (absent list: only basic).
    pub fn supports_auth_method(&self, method: &str) -> bool {
        match &self.token_endpoint_auth_methods_supported {
            Some(list) => list.iter().any(|m| m == method),
            None => method == "client_secret_basic",
        }
    }

    /// Whether `scopes_supported` lists `scope`.
    pub fn lists_scope(&self, scope: &str) -> bool {
        self.scopes_supported
            .as_ref()
            .is_some_and(|s| s.iter().any(|x| x == scope))
    }

    /// Whether DPoP with ES256 is advertised.
    pub fn supports_dpop_es256(&self) -> bool {
        self.dpop_signing_alg_values_supported
            .as_ref()
            .is_some_and(|a| a.iter().any(|x| x == "ES256"))
    }
}

/// The metadata URLs for an issuer, in the order the MCP spec gives (RFC 8414 §3.1 and
/// OIDC Discovery §4): with a path, the RFC 8414 path-inserted, the OIDC path-inserted,
/// then the OIDC path-appended form; without a path, RFC 8414 then OIDC.
pub fn candidates(issuer: &str) -> Vec<String> {
    let has_path = urls::path_without_trailing_slash(issuer).is_some_and(|p| !p.is_empty());
    let mut out = Vec::new();
    if let Some(u) = urls::well_known_inserted(issuer, "oauth-authorization-server") {
        out.push(u);
    }
    if let Some(u) = urls::well_known_inserted(issuer, "openid-configuration") {
        out.push(u);
    }
    if has_path && let Some(u) = urls::well_known_appended(issuer, "openid-configuration") {
        out.push(u);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_with_and_without_path() {
        assert_eq!(
            candidates("http://localhost:2/tenant1"),
            vec![
                "http://localhost:2/.well-known/oauth-authorization-server/tenant1",
                "http://localhost:2/.well-known/openid-configuration/tenant1",
                "http://localhost:2/tenant1/.well-known/openid-configuration",
            ]
        );
        assert_eq!(
            candidates("http://localhost:2"),
            vec![
                "http://localhost:2/.well-known/oauth-authorization-server",
                "http://localhost:2/.well-known/openid-configuration",
            ]
        );
    }

    #[test]
    fn parse_requires_token_endpoint_and_reads_flags() {
        assert!(AuthorizationServerMetadata::parse(br#"{"issuer":"x"}"#).is_err());
        assert!(AuthorizationServerMetadata::parse(b"[]").is_err());
        let m = AuthorizationServerMetadata::parse(
            br#"{"issuer":"http://a","token_endpoint":"http://a/token","code_challenge_methods_supported":["plain","S256"],"authorization_response_iss_parameter_supported":true}"#,
        )
        .unwrap();
        assert!(m.supports_s256());
        assert!(m.authorization_response_iss_parameter_supported);
        assert!(m.supports_auth_method("client_secret_basic"));
        assert!(!m.supports_auth_method("none"));
    }
}
