//! RFC 9728 protected resource metadata: where to find it and what to believe of it.

use crate::json;
use crate::urls;

/// The parts of a PRM document an MCP client uses. `resource` and the
/// `authorization_servers` entries are kept verbatim (they are compared as strings and
/// `resource` is sent back byte for byte as the RFC 8707 indicator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedResourceMetadata {
    /// The protected resource identifier, verbatim.
    pub resource: String,
    /// Authorization server issuer identifiers, verbatim, in the order given.
    pub authorization_servers: Vec<String>,
    /// `scopes_supported`, if present.
    pub scopes_supported: Option<Vec<String>>,
    /// `dpop_bound_access_tokens_required` (RFC 9449 §5.2).
    pub dpop_bound_access_tokens_required: bool,
    /// `dpop_signing_alg_values_supported`.
    pub dpop_signing_alg_values_supported: Option<Vec<String>>,
}

impl ProtectedResourceMetadata {
    /// Parses a PRM document defensively: it must be a JSON object with a string
    /// `resource`; non-string entries of the lists are ignored.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        if !json::is_object(body) {
            return Err("protected resource metadata is not a JSON object".into());
        }
        let m = json::object(body);
        let resource =
            json::string(&m, "resource").ok_or("protected resource metadata has no resource")?;
        Ok(Self {
            resource,
            authorization_servers: json::strings(&m, "authorization_servers")
                .unwrap_or_default()
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect(),
            scopes_supported: json::strings(&m, "scopes_supported"),
            dpop_bound_access_tokens_required: json::boolean(
                &m,
                "dpop_bound_access_tokens_required",
            )
            .unwrap_or(false),
            dpop_signing_alg_values_supported: json::strings(
                &m,
                "dpop_signing_alg_values_supported",
            ),
        })
    }
}

/// Where to look for PRM, in the order the MCP authorization spec requires:
/// the challenge's `resource_metadata`, then the path-inserted well-known URI, then
/// the root well-known URI (R-DISC-1). Duplicates are removed.
pub fn candidates(server_url: &str, challenge_resource_metadata: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(u) = challenge_resource_metadata.filter(|u| !u.is_empty()) {
        out.push(u.to_owned());
    }
    if let Some(u) = urls::well_known_inserted(server_url, "oauth-protected-resource") {
        out.push(u);
    }
    if let Some(o) = urls::origin(server_url) {
        out.push(format!("{o}/.well-known/oauth-protected-resource"));
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|u| seen.insert(u.clone()));
    out
}

/// Whether PRM `resource` identifies the MCP server at `server_url`: the same origin,
/// and a path that is the server's path or a whole-segment prefix of it.
pub fn resource_matches(resource: &str, server_url: &str) -> bool {
    let (Some(ro), Some(so)) = (urls::origin(resource), urls::origin(server_url)) else {
        return false;
    };
    if ro != so {
        return false;
    }
    let (Some(rp), Some(sp)) = (
        urls::path_without_trailing_slash(resource),
        urls::path_without_trailing_slash(server_url),
    ) else {
        return false;
    };
    rp.is_empty() || sp == rp || sp.starts_with(&format!("{rp}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_order_follows_the_spec() {
        assert_eq!(
            candidates(
                "http://localhost:1/mcp",
                Some("http://localhost:1/custom/x.json")
            ),
            vec![
                "http://localhost:1/custom/x.json",
                "http://localhost:1/.well-known/oauth-protected-resource/mcp",
                "http://localhost:1/.well-known/oauth-protected-resource",
            ]
        );
        assert_eq!(
            candidates("https://h.example", None),
            vec!["https://h.example/.well-known/oauth-protected-resource"]
        );
    }

    #[test]
    fn resource_match_rules() {
        assert!(resource_matches(
            "http://localhost:1/mcp",
            "http://localhost:1/mcp"
        ));
        assert!(resource_matches(
            "http://localhost:1",
            "http://localhost:1/mcp"
        ));
        assert!(resource_matches(
            "http://localhost:1/",
            "http://localhost:1/mcp"
        ));
        assert!(resource_matches(
            "https://a.example/api",
            "https://a.example/api/mcp"
        ));
        assert!(!resource_matches(
            "https://a.example/ap",
            "https://a.example/api"
        ));
        assert!(!resource_matches(
            "https://evil.example.com/mcp",
            "http://localhost:1/mcp"
        ));
        assert!(!resource_matches(
            "http://localhost:2/mcp",
            "http://localhost:1/mcp"
        ));
        assert!(!resource_matches(
            "https://localhost:1/mcp",
            "http://localhost:1/mcp"
        ));
        assert!(!resource_matches(
            "http://localhost:1/mcp/deeper",
            "http://localhost:1/mcp"
        ));
        assert!(!resource_matches("not a url", "http://localhost:1/mcp"));
    }

    #[test]
    fn parse_is_defensive_and_verbatim() {
        let p = ProtectedResourceMetadata::parse(
            br#"{"resource":"http://localhost:1","authorization_servers":["http://as",5,""],"scopes_supported":"x"}"#,
        )
        .unwrap();
        assert_eq!(p.resource, "http://localhost:1");
        assert_eq!(p.authorization_servers, vec!["http://as"]);
        assert_eq!(p.scopes_supported, None);
        assert!(ProtectedResourceMetadata::parse(b"null").is_err());
        assert!(ProtectedResourceMetadata::parse(br#"{"resource":7}"#).is_err());
    }
}
