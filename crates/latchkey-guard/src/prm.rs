//! OAuth 2.0 Protected Resource Metadata (RFC 9728) for Latchkey's own endpoints
//! (R-RS-13, R-RS-14).
//!
//! The PRM `resource` and the `resource_metadata` URL of every challenge come from one
//! [`ResourceResolver`]: (1) the configured resource, (2) the request's `Host`, bounded
//! by the host allow-list, (3) the default. The resource is a string kept verbatim: no
//! URL parser round-trip touches it; the metadata URL is built by inserting the
//! well-known segment between its authority and its path.

use serde::Serialize;

use crate::origin::HostOriginPolicy;

/// The RFC 9728 well-known path segment.
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// `resource` split into origin (`scheme://authority`), path and query (fragment
/// dropped). `None` when there is no `://`.
fn split_resource(resource: &str) -> Option<(&str, &str, &str)> {
    let no_fragment = resource.split('#').next().unwrap_or_default();
    let start = no_fragment.find("://")? + 3;
    let rest_at = no_fragment[start..]
        .find(['/', '?'])
        .map_or(no_fragment.len(), |i| start + i);
    let (origin, rest) = no_fragment.split_at(rest_at);
    let (path, query) = match rest.find('?') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    Some((origin, path, query))
}

/// The path (and query) at which the PRM of `resource` is served: the well-known
/// segment followed by the resource's path, a lone `/` path omitted (RFC 9728 §3.1).
pub fn well_known_path(resource: &str) -> String {
    match split_resource(resource) {
        Some((_, path, query)) => {
            let path = if path == "/" { "" } else { path };
            format!("{WELL_KNOWN}{path}{query}")
        }
        None => WELL_KNOWN.to_owned(),
    }
}

/// The URL of the PRM document of `resource` (path-inserted form).
pub fn metadata_url(resource: &str) -> String {
    match split_resource(resource) {
        Some((origin, _, _)) => format!("{origin}{}", well_known_path(resource)),
        None => format!("{resource}{WELL_KNOWN}"),
    }
}

/// Both paths that serve the PRM of `resource`: the path-inserted one and the root
/// one (identical when the resource has no path).
pub fn well_known_paths(resource: &str) -> Vec<String> {
    let inserted = well_known_path(resource);
    let mut out = vec![inserted];
    if out[0] != WELL_KNOWN {
        out.push(WELL_KNOWN.to_owned());
    }
    out
}

/// Step 2 of the resolver: `{scheme}://{Host}{path}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDerived {
    /// Public scheme (`https` behind a TLS terminator, `http` on loopback).
    pub scheme: String,
    /// Path of the protected endpoint, e.g. `/mcp`.
    pub path: String,
}

/// How the resource identifier is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceConfig {
    /// (1) The configured resource identifier, used verbatim.
    pub resource: Option<String>,
    /// (2) Derive it from an allowed `Host`.
    pub from_host: Option<HostDerived>,
    /// (3) The default.
    pub default_resource: String,
}

/// The resource identifier and its PRM URL for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedResource {
    /// The `resource` value, verbatim.
    pub resource: String,
    /// Where its PRM document lives (the challenge's `resource_metadata`).
    pub metadata_url: String,
}

/// The one resolver behind PRM `resource` and challenge `resource_metadata` (R-RS-14).
#[derive(Debug, Clone)]
pub struct ResourceResolver {
    cfg: ResourceConfig,
    hosts: HostOriginPolicy,
}

impl ResourceResolver {
    /// A resolver bounding Host-derived resources by `hosts`.
    pub fn new(cfg: ResourceConfig, hosts: HostOriginPolicy) -> Self {
        Self { cfg, hosts }
    }

    /// A resolver that always answers `resource`.
    pub fn fixed(resource: impl Into<String>) -> Self {
        Self::new(
            ResourceConfig {
                resource: Some(resource.into()),
                from_host: None,
                default_resource: String::new(),
            },
            HostOriginPolicy::loopback(),
        )
    }

    /// The settings.
    pub fn config(&self) -> &ResourceConfig {
        &self.cfg
    }

    /// The resource for a request whose `Host` header is `host`.
    pub fn resolve(&self, host: Option<&str>) -> ResolvedResource {
        let resource = if let Some(r) = &self.cfg.resource {
            r.clone()
        } else if let (Some(d), Some(h)) = (&self.cfg.from_host, host)
            && self.hosts.host_allowed(h)
        {
            format!("{}://{}{}", d.scheme, h.trim(), d.path)
        } else {
            self.cfg.default_resource.clone()
        };
        ResolvedResource {
            metadata_url: metadata_url(&resource),
            resource,
        }
    }

    /// Every path the PRM must be served at: for the configured, Host-derived and
    /// default resources, the path-inserted and the root paths.
    pub fn served_paths(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut add = |r: &str| {
            for p in well_known_paths(r) {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        };
        if let Some(r) = &self.cfg.resource {
            add(r);
        }
        if let Some(d) = &self.cfg.from_host {
            add(&format!("{}://host{}", d.scheme, d.path));
        }
        add(&self.cfg.default_resource);
        out
    }
}

/// Static parts of the PRM document.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PrmConfig {
    /// Issuer identifiers of the authorization servers, verbatim.
    pub authorization_servers: Vec<String>,
    /// `scopes_supported`, when configured.
    pub scopes_supported: Option<Vec<String>>,
    /// `resource_name`, when configured.
    pub resource_name: Option<String>,
}

/// The RFC 9728 document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProtectedResourceMetadata {
    /// The resource identifier.
    pub resource: String,
    /// Authorization server issuers.
    pub authorization_servers: Vec<String>,
    /// Always `["header"]`.
    pub bearer_methods_supported: Vec<String>,
    /// Scopes, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes_supported: Option<Vec<String>>,
    /// Human-readable name, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_name: Option<String>,
}

/// The PRM cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrmError {
    /// No authorization server is configured.
    #[error("no authorization server is configured for this resource")]
    NoAuthorizationServer,
}

/// The PRM document for `resolved`.
pub fn document(
    resolved: &ResolvedResource,
    cfg: &PrmConfig,
) -> Result<ProtectedResourceMetadata, PrmError> {
    if cfg.authorization_servers.iter().all(String::is_empty) {
        return Err(PrmError::NoAuthorizationServer);
    }
    Ok(ProtectedResourceMetadata {
        resource: resolved.resource.clone(),
        authorization_servers: cfg
            .authorization_servers
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect(),
        bearer_methods_supported: vec!["header".to_owned()],
        scopes_supported: cfg.scopes_supported.clone(),
        resource_name: cfg.resource_name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_urls_insert_the_well_known_segment() {
        assert_eq!(
            metadata_url("https://lk.example/mcp"),
            "https://lk.example/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            metadata_url("https://lk.example/"),
            "https://lk.example/.well-known/oauth-protected-resource"
        );
        assert_eq!(
            metadata_url("https://lk.example"),
            "https://lk.example/.well-known/oauth-protected-resource"
        );
        assert_eq!(
            metadata_url("http://127.0.0.1:8080/a/b?x=1#frag"),
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource/a/b?x=1"
        );
        assert_eq!(
            well_known_paths("https://lk.example/mcp"),
            vec![
                "/.well-known/oauth-protected-resource/mcp",
                "/.well-known/oauth-protected-resource"
            ]
        );
        assert_eq!(
            well_known_paths("https://lk.example"),
            vec!["/.well-known/oauth-protected-resource"]
        );
    }

    #[test]
    fn resolver_order_and_verbatim_resource() {
        let hosts = HostOriginPolicy {
            allowed_hosts: vec!["lk.example.com".into()],
            allowed_origins: None,
        };
        let derived = Some(HostDerived {
            scheme: "https".into(),
            path: "/mcp".into(),
        });
        let configured = ResourceResolver::new(
            ResourceConfig {
                resource: Some("HTTPS://LK.example.com:443/mcp/".into()),
                from_host: derived.clone(),
                default_resource: "http://localhost:8080/mcp".into(),
            },
            hosts.clone(),
        );
        let r = configured.resolve(Some("lk.example.com"));
        assert_eq!(r.resource, "HTTPS://LK.example.com:443/mcp/");
        assert_eq!(
            r.metadata_url,
            "HTTPS://LK.example.com:443/.well-known/oauth-protected-resource/mcp/"
        );
        let by_host = ResourceResolver::new(
            ResourceConfig {
                resource: None,
                from_host: derived,
                default_resource: "http://localhost:8080/mcp".into(),
            },
            hosts,
        );
        assert_eq!(
            by_host.resolve(Some("lk.example.com")).resource,
            "https://lk.example.com/mcp"
        );
        assert_eq!(
            by_host.resolve(Some("evil.example")).resource,
            "http://localhost:8080/mcp"
        );
        assert_eq!(by_host.resolve(None).resource, "http://localhost:8080/mcp");
        assert_eq!(
            by_host.served_paths(),
            vec![
                "/.well-known/oauth-protected-resource/mcp",
                "/.well-known/oauth-protected-resource"
            ]
        );
    }

    #[test]
    fn document_shape() {
        let resolved = ResourceResolver::fixed("https://lk.example/mcp").resolve(None);
        let cfg = PrmConfig {
            authorization_servers: vec!["https://idp.example/".into()],
            scopes_supported: Some(vec!["mcp".into()]),
            resource_name: None,
        };
        let doc = serde_json::to_value(document(&resolved, &cfg).unwrap()).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({
                "resource": "https://lk.example/mcp",
                "authorization_servers": ["https://idp.example/"],
                "bearer_methods_supported": ["header"],
                "scopes_supported": ["mcp"],
            })
        );
        assert_eq!(
            document(&resolved, &PrmConfig::default()),
            Err(PrmError::NoAuthorizationServer)
        );
    }
}
