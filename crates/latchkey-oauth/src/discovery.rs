//! Discovery in the MCP order: protected resource metadata (RFC 9728), then the
//! authorization server's metadata (RFC 8414 / OIDC), with the 2025-03-26 fallback for
//! servers that publish no PRM. Successful results are cached for five minutes per
//! server URL and challenge (R-DISC-5); failures are never cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use latchkey_core::{Clock, UnixTime};
use latchkey_egress::{Egress, EgressError, EgressRequest, METADATA_BODY_LIMIT, UrlSource};

use crate::as_metadata::{self, AuthorizationServerMetadata};
use crate::error::OAuthError;
use crate::prm::{self, ProtectedResourceMetadata};
use crate::urls;

/// How strictly AS metadata `issuer` must match the identifier it was looked up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IssuerMatch {
    /// Byte-for-byte equality (RFC 8414 §3.3; MCP 2026-07-28). The default.
    #[default]
    Exact,
    /// Same origin only, for known deviants such as tenant-path issuers (Ambiguity A12).
    Origin,
}

/// Options for one discovery.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiscoveryOptions {
    /// Issuer check strictness.
    pub issuer_match: IssuerMatch,
}

/// One request made during discovery and what came of it (for `latchkey doctor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryStep {
    /// The URL requested.
    pub url: String,
    /// What happened, in words.
    pub outcome: String,
}

/// The result of discovery for one MCP server.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// The MCP server URL discovery ran for.
    pub server_url: String,
    /// The RFC 8707 resource indicator: PRM `resource` verbatim, or the server URL in the
    /// 2025-03-26 fallback.
    pub resource: String,
    /// The protected resource metadata, when the server publishes it.
    pub prm: Option<ProtectedResourceMetadata>,
    /// The issuer the metadata was validated against (verbatim).
    pub issuer: String,
    /// The authorization server metadata.
    pub metadata: AuthorizationServerMetadata,
    /// True when no PRM was found and the 2025-03-26 rules were used.
    pub legacy: bool,
    /// True when the endpoints are the 2025-03-26 defaults because no metadata exists.
    pub defaulted_endpoints: bool,
    /// Every request made, in order.
    pub steps: Vec<DiscoveryStep>,
}

/// The cache TTL of R-DISC-5.
pub const DISCOVERY_TTL: Duration = Duration::from_secs(300);

type CacheKey = (String, Option<String>);

/// Discovery with an in-memory cache. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Discoverer {
    egress: Egress,
    clock: Arc<dyn Clock>,
    ttl: Duration,
    cache: Mutex<HashMap<CacheKey, (UnixTime, Arc<Discovery>)>>,
}

impl Discoverer {
    /// A discoverer using `egress` for every request and `clock` for cache expiry.
    pub fn new(egress: Egress, clock: Arc<dyn Clock>) -> Self {
        Self {
            egress,
            clock,
            ttl: DISCOVERY_TTL,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Drops every cached result for `server_url` (on URL or configuration change, or
    /// when a token the discovery produced is rejected).
    pub fn invalidate(&self, server_url: &str) {
        if let Ok(mut c) = self.cache.lock() {
            c.retain(|(url, _), _| url != server_url);
        }
    }

    /// Drops every cached result (another instance's change may have been missed).
    pub fn clear(&self) {
        if let Ok(mut c) = self.cache.lock() {
            c.clear();
        }
    }

    /// A cached result, if fresh. Expired entries are removed when read.
    pub fn cached(
        &self,
        server_url: &str,
        resource_metadata: Option<&str>,
    ) -> Option<Arc<Discovery>> {
        let key = (server_url.to_owned(), resource_metadata.map(str::to_owned));
        let now = self.clock.now();
        let mut c = self.cache.lock().ok()?;
        match c.get(&key) {
            Some((at, d)) if now.since(*at) < self.ttl => Some(d.clone()),
            Some(_) => {
                c.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Discovers the authorization server for `server_url`, using the `resource_metadata`
    /// of a challenge when one was seen.
    pub async fn discover(
        &self,
        server_url: &str,
        resource_metadata: Option<&str>,
        opts: DiscoveryOptions,
    ) -> Result<Arc<Discovery>, OAuthError> {
        if let Some(d) = self.cached(server_url, resource_metadata) {
            return Ok(d);
        }
        let d =
            Arc::new(discover_uncached(&self.egress, server_url, resource_metadata, opts).await?);
        let key = (server_url.to_owned(), resource_metadata.map(str::to_owned));
        if let Ok(mut c) = self.cache.lock() {
            c.insert(key, (self.clock.now(), d.clone()));
        }
        Ok(d)
    }
}

enum Fetched {
    /// A 200 response body.
    Body(Vec<u8>),
    /// Why this candidate is skipped.
    Skip(String),
}

/// GET a metadata document. Non-200 answers and policy refusals are "skip to the next
/// candidate"; transport failures that a retry could fix end discovery (so an outage
/// is never mistaken for "no metadata" and cached as the legacy fallback).
async fn fetch(egress: &Egress, url: &str, source: UrlSource) -> Result<Fetched, OAuthError> {
    let req = EgressRequest::get(url, source, METADATA_BODY_LIMIT).header(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    );
    match egress.send(req).await {
        Ok(r) if r.status == http::StatusCode::OK => Ok(Fetched::Body(r.body.to_vec())),
        Ok(r) => Ok(Fetched::Skip(format!("HTTP {}", r.status.as_u16()))),
        Err(e) if e.is_retryable() => Err(OAuthError::Egress(e)),
        Err(e @ (EgressError::BodyTooLarge { .. } | EgressError::Redirect { .. })) => {
            Ok(Fetched::Skip(e.to_string()))
        }
        Err(e) => Ok(Fetched::Skip(format!("refused: {e}"))),
    }
}

fn issuer_ok(expected: &str, actual: &str, mode: IssuerMatch) -> bool {
    match mode {
        IssuerMatch::Exact => expected == actual,
        IssuerMatch::Origin => {
            !actual.is_empty()
                && urls::origin(expected).is_some()
                && urls::origin(expected) == urls::origin(actual)
        }
    }
}

async fn discover_uncached(
    egress: &Egress,
    server_url: &str,
    resource_metadata: Option<&str>,
    opts: DiscoveryOptions,
) -> Result<Discovery, OAuthError> {
    let mut steps = Vec::new();

    // 1. Protected resource metadata, in spec order.
    let mut prm_doc = None;
    for url in prm::candidates(server_url, resource_metadata) {
        // A URL taken from a challenge is remote content (R-SEC-15); the well-known URIs
        // are built from the operator-configured server URL.
        let source = if Some(url.as_str()) == resource_metadata {
            UrlSource::Remote
        } else {
            UrlSource::Operator
        };
        match fetch(egress, &url, source).await? {
            Fetched::Skip(why) => steps.push(DiscoveryStep { url, outcome: why }),
            Fetched::Body(body) => match ProtectedResourceMetadata::parse(&body) {
                Err(why) => steps.push(DiscoveryStep { url, outcome: why }),
                Ok(p) => {
                    if !prm::resource_matches(&p.resource, server_url) {
                        tracing::warn!(event = "mcpoauth.resource_mismatch", server_url, resource = %p.resource);
                        return Err(OAuthError::ResourceMismatch {
                            resource: p.resource,
                            server_url: server_url.to_owned(),
                        });
                    }
                    steps.push(DiscoveryStep {
                        url,
                        outcome: format!("protected resource metadata for {}", p.resource),
                    });
                    prm_doc = Some(p);
                    break;
                }
            },
        }
    }

    // 2a. PRM found: its authorization servers are authoritative.
    if let Some(prm_doc) = prm_doc {
        if prm_doc.authorization_servers.is_empty() {
            return Err(OAuthError::Discovery(
                "protected resource metadata lists no authorization_servers".into(),
            ));
        }
        for issuer in &prm_doc.authorization_servers {
            for url in as_metadata::candidates(issuer) {
                match fetch(egress, &url, UrlSource::Remote).await? {
                    Fetched::Skip(why) => steps.push(DiscoveryStep { url, outcome: why }),
                    Fetched::Body(body) => match AuthorizationServerMetadata::parse(&body) {
                        Err(why) => steps.push(DiscoveryStep { url, outcome: why }),
                        Ok(m) if !issuer_ok(issuer, &m.issuer, opts.issuer_match) => {
                            tracing::warn!(event = "mcpoauth.issuer_mismatch", expected = %issuer, actual = %m.issuer);
                            steps.push(DiscoveryStep {
                                url,
                                outcome: format!(
                                    "issuer {:?} does not match {:?}: not used",
                                    m.issuer, issuer
                                ),
                            });
                        }
                        Ok(m) => {
                            steps.push(DiscoveryStep {
                                url,
                                outcome: format!("authorization server metadata for {}", m.issuer),
                            });
                            return Ok(Discovery {
                                server_url: server_url.to_owned(),
                                resource: prm_doc.resource.clone(),
                                issuer: issuer.clone(),
                                prm: Some(prm_doc),
                                metadata: m,
                                legacy: false,
                                defaulted_endpoints: false,
                                steps,
                            });
                        }
                    },
                }
            }
        }
        return Err(OAuthError::Discovery(format!(
            "no usable authorization server metadata for {}",
            prm_doc.authorization_servers.join(", ")
        )));
    }

    // 2b. No PRM: the 2025-03-26 rules. The authorization base URL is the server's origin.
    let origin = urls::origin(server_url)
        .ok_or_else(|| OAuthError::Discovery(format!("{server_url:?} is not an http(s) URL")))?;
    let url = format!("{origin}/.well-known/oauth-authorization-server");
    match fetch(egress, &url, UrlSource::Operator).await? {
        Fetched::Body(body) => match AuthorizationServerMetadata::parse(&body) {
            // The 2025-03-26 servers publish an issuer that need not equal the origin
            // (the reference server uses `<origin>/oauth`), so only the origin is checked.
            Ok(m) if issuer_ok(&origin, &m.issuer, IssuerMatch::Origin) => {
                steps.push(DiscoveryStep {
                    url,
                    outcome: format!(
                        "authorization server metadata for {} (2025-03-26)",
                        m.issuer
                    ),
                });
                return Ok(Discovery {
                    server_url: server_url.to_owned(),
                    resource: server_url.to_owned(),
                    issuer: m.issuer.clone(),
                    prm: None,
                    metadata: m,
                    legacy: true,
                    defaulted_endpoints: false,
                    steps,
                });
            }
            Ok(m) => steps.push(DiscoveryStep {
                url,
                outcome: format!("issuer {:?} is not on {origin}: not used", m.issuer),
            }),
            Err(why) => steps.push(DiscoveryStep { url, outcome: why }),
        },
        Fetched::Skip(why) => steps.push(DiscoveryStep { url, outcome: why }),
    }
    steps.push(DiscoveryStep {
        url: origin.clone(),
        outcome: "no metadata: using the 2025-03-26 default endpoints".into(),
    });
    Ok(Discovery {
        server_url: server_url.to_owned(),
        resource: server_url.to_owned(),
        issuer: origin.clone(),
        prm: None,
        metadata: AuthorizationServerMetadata {
            issuer: origin.clone(),
            authorization_endpoint: Some(format!("{origin}/authorize")),
            token_endpoint: format!("{origin}/token"),
            registration_endpoint: Some(format!("{origin}/register")),
            // The 2025-03-26 revision made PKCE S256 mandatory for every server, so a
            // server without metadata is taken to support it.
            code_challenge_methods_supported: Some(vec!["S256".into()]),
            ..AuthorizationServerMetadata::default()
        },
        legacy: true,
        defaulted_endpoints: true,
        steps,
    })
}
