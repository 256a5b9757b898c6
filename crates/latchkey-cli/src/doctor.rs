//! `latchkey doctor URL`: an auth debugger. It probes an MCP server without
//! credentials, then walks OAuth discovery step by step, fetching every candidate
//! document in the order the MCP authorization spec gives: the protected resource
//! metadata (RFC 9728: the challenge's `resource_metadata`, the path-inserted and the
//! root well-known URIs), the authorization server metadata (RFC 8414 and OpenID
//! Connect Discovery), then checks PKCE S256 and the ways to get a client (CIMD, DCR,
//! pre-registered). For each step it prints what was fetched, what it advertises, and
//! what is missing or wrong, and why. Finally it runs Latchkey's own discovery
//! (`latchkey_oauth::discovery`) for the verdict Latchkey itself would reach.
//!
//! Documents are parsed by `latchkey-oauth` (the same code Latchkey uses); only the
//! walk over every candidate, for the report, is here. Exit status: 0 when the chain
//! is usable (or the server needs no OAuth), 1 when it is broken, 69 when the server
//! cannot be reached, 65 when the URL is refused.

use std::process::ExitCode;
use std::sync::Arc;

use latchkey_core::SystemClock;
use latchkey_egress::{
    Egress, EgressConfig, EgressRequest, LoopbackPolicy, METADATA_BODY_LIMIT, UrlSource,
};
use latchkey_oauth::as_metadata::{self, AuthorizationServerMetadata};
use latchkey_oauth::challenge::BearerChallenge;
use latchkey_oauth::discovery::{Discoverer, DiscoveryOptions};
use latchkey_oauth::prm::{self, ProtectedResourceMetadata};
use latchkey_oauth::{probe, registration};
use serde::Serialize;
use serde_json::{Value, json};

use crate::api::Failure;
use crate::exit;
use crate::output;

/// Arguments of `latchkey doctor`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The MCP server URL.
    url: String,
    /// Allow http and loopback addresses (local development only).
    #[arg(long)]
    allow_insecure_loopback: bool,
    /// A static header to try (an API key): `Name: value`, repeatable. The probe is
    /// sent again with them, and the server's verdict on them reported (values never
    /// printed).
    #[arg(long = "header", value_name = "NAME: VALUE", value_parser = crate::headers::parse)]
    headers: Vec<crate::headers::HeaderArg>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Level {
    /// As it should be.
    Ok,
    /// Worth knowing.
    Info,
    /// Works, but not as the spec wants, or only with extra configuration.
    Warning,
    /// Breaks the chain: Latchkey cannot connect.
    Error,
}

impl Level {
    fn mark(self) -> &'static str {
        match self {
            Level::Ok => "ok  ",
            Level::Info => "info",
            Level::Warning => "WARN",
            Level::Error => "FAIL",
        }
    }
}

#[derive(Debug, Serialize)]
struct Finding {
    level: Level,
    message: String,
}

/// One step of the walk: usually one request and what it showed.
#[derive(Debug, Serialize)]
struct Step {
    /// `probe`, `prm`, `as_metadata`, `endpoints`, `pkce`, `registration`, `verdict`.
    kind: &'static str,
    /// What this step is, for a person.
    title: String,
    /// `GET <url>` / `POST <url>`, when a request was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<String>,
    /// The HTTP status, when an answer came.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    /// What came back, in a few words.
    outcome: String,
    findings: Vec<Finding>,
}

impl Step {
    fn new(kind: &'static str, title: impl Into<String>) -> Self {
        Self {
            kind,
            title: title.into(),
            request: None,
            status: None,
            outcome: String::new(),
            findings: Vec::new(),
        }
    }

    /// A candidate that gave no answer: a warning, unless an earlier candidate already
    /// answered (then only for information).
    fn unreachable(&mut self, candidate: &str, why: &str, already_found: bool) {
        self.outcome = format!("no answer: {why}");
        self.add(
            if already_found {
                Level::Info
            } else {
                Level::Warning
            },
            format!("{candidate} could not be fetched: {why}"),
        );
    }

    fn add(&mut self, level: Level, message: impl Into<String>) {
        self.findings.push(Finding {
            level,
            message: message.into(),
        });
    }
}

/// What one metadata request gave.
enum Fetched {
    /// A 200 answer's body.
    Body(Vec<u8>),
    /// Another status.
    Status(u16),
    /// No answer, or refused by the egress guard.
    Failed(String),
}

async fn fetch(egress: &Egress, url: &str, source: UrlSource) -> Fetched {
    let req = EgressRequest::get(url, source, METADATA_BODY_LIMIT).header(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    );
    match egress.send(req).await {
        Ok(r) if r.status == http::StatusCode::OK => Fetched::Body(r.body.to_vec()),
        Ok(r) => Fetched::Status(r.status.as_u16()),
        Err(e) => Fetched::Failed(e.to_string()),
    }
}

fn list(v: &Option<Vec<String>>) -> String {
    match v {
        Some(items) if !items.is_empty() => items.join(" "),
        Some(_) => "(empty)".into(),
        None => "(not advertised)".into(),
    }
}

fn origin(url: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .ok()
        .map(|u| u.origin().ascii_serialization())
        .filter(|o| o != "null")
}

/// The walk, collected.
struct Walk {
    steps: Vec<Step>,
}

impl Walk {
    fn push(&mut self, s: Step) {
        self.steps.push(s);
    }

    fn problems(&self) -> Vec<String> {
        self.steps
            .iter()
            .flat_map(|s| &s.findings)
            .filter(|f| f.level == Level::Error)
            .map(|f| f.message.clone())
            .collect()
    }

    /// The protected resource metadata candidates; the first that parses is the one
    /// used (as Latchkey does); every candidate is fetched for the report.
    async fn prm(
        &mut self,
        egress: &Egress,
        url: &str,
        rm: Option<&str>,
    ) -> Option<ProtectedResourceMetadata> {
        let root = origin(url).map(|o| format!("{o}/.well-known/oauth-protected-resource"));
        let mut chosen: Option<ProtectedResourceMetadata> = None;
        for candidate in prm::candidates(url, rm) {
            let from_challenge = Some(candidate.as_str()) == rm;
            let well_known = if Some(&candidate) == root.as_ref() {
                Some("root well-known URI (RFC 9728 §3.1)")
            } else if prm::candidates(url, None).contains(&candidate) {
                Some("path-inserted well-known URI (RFC 9728 §3.1)")
            } else {
                None
            };
            let where_ = match (from_challenge, well_known) {
                (true, Some(w)) => format!("named by the challenge's resource_metadata, the {w}"),
                (true, None) => "named by the challenge's resource_metadata".into(),
                (false, Some(w)) => w.into(),
                (false, None) => "candidate".into(),
            };
            let mut s = Step::new("prm", format!("Protected resource metadata, {where_}"));
            s.request = Some(format!("GET {candidate}"));
            let source = if from_challenge {
                UrlSource::Remote
            } else {
                UrlSource::Operator
            };
            let already = chosen.is_some();
            match fetch(egress, &candidate, source).await {
                Fetched::Failed(why) => s.unreachable(&candidate, &why, already),
                Fetched::Status(st) => {
                    s.status = Some(st);
                    s.outcome = format!("HTTP {st}: no document here");
                    if from_challenge {
                        s.add(
                            Level::Warning,
                            format!(
                                "the challenge points at {candidate}, which answers HTTP {st}; clients fall back to the well-known URIs"
                            ),
                        );
                    }
                }
                Fetched::Body(body) => {
                    s.status = Some(200);
                    match ProtectedResourceMetadata::parse(&body) {
                        Err(why) => {
                            s.outcome = format!("not usable: {why}");
                            s.add(
                                if already { Level::Info } else { Level::Warning },
                                format!("{candidate}: {why}"),
                            );
                        }
                        Ok(p) => {
                            s.outcome = format!(
                                "resource {}, authorization_servers {}, scopes_supported {}",
                                p.resource,
                                list(&Some(p.authorization_servers.clone())),
                                list(&p.scopes_supported)
                            );
                            if already {
                                s.add(Level::Info, "not needed: an earlier candidate was used");
                            } else {
                                judge_prm(&mut s, &p, url);
                                chosen = Some(p);
                            }
                        }
                    }
                }
            }
            self.push(s);
        }
        chosen
    }
}

/// What the protected resource metadata used says about itself.
fn judge_prm(s: &mut Step, p: &ProtectedResourceMetadata, url: &str) {
    s.add(Level::Ok, "used: the first candidate with a document");
    if prm::resource_matches(&p.resource, url) {
        s.add(
            Level::Ok,
            format!("resource {} identifies {url}", p.resource),
        );
    } else {
        s.add(
                Level::Error,
                format!(
                    "resource {:?} does not identify {url:?} (same origin and a path prefix needed, RFC 9728 §3.3): Latchkey refuses this metadata",
                    p.resource
                ),
            );
    }
    if p.authorization_servers.is_empty() {
        s.add(
            Level::Error,
            "authorization_servers is missing or empty: there is no authorization server to ask",
        );
    }
    if p.dpop_bound_access_tokens_required {
        s.add(
            Level::Info,
            "dpop_bound_access_tokens_required: tokens must be DPoP-bound (RFC 9449)",
        );
    }
}

impl Walk {
    /// The authorization server metadata of `issuer`: every candidate fetched; the
    /// first whose `issuer` is exactly `issuer` is used.
    async fn as_metadata(
        &mut self,
        egress: &Egress,
        issuer: &str,
    ) -> Option<AuthorizationServerMetadata> {
        let mut chosen = None;
        for candidate in as_metadata::candidates(issuer) {
            let kind = if candidate.contains("/.well-known/oauth-authorization-server") {
                "RFC 8414"
            } else if candidate.ends_with("/.well-known/openid-configuration")
                && origin(issuer)
                    .is_some_and(|o| !candidate.starts_with(&format!("{o}/.well-known/")))
            {
                "OpenID Connect Discovery, path appended"
            } else {
                "OpenID Connect Discovery"
            };
            let mut s = Step::new(
                "as_metadata",
                format!("Authorization server metadata of {issuer} ({kind})"),
            );
            s.request = Some(format!("GET {candidate}"));
            let already = chosen.is_some();
            match fetch(egress, &candidate, UrlSource::Remote).await {
                Fetched::Failed(why) => s.unreachable(&candidate, &why, already),
                Fetched::Status(st) => {
                    s.status = Some(st);
                    s.outcome = format!("HTTP {st}: no document here");
                }
                Fetched::Body(body) => {
                    s.status = Some(200);
                    match AuthorizationServerMetadata::parse(&body) {
                        Err(why) => {
                            s.outcome = format!("not usable: {why}");
                            s.add(
                                if already { Level::Info } else { Level::Warning },
                                format!("{candidate}: {why}"),
                            );
                        }
                        Ok(m) if m.issuer != issuer => {
                            s.outcome = format!("issuer {:?}", m.issuer);
                            s.add(
                                if already { Level::Info } else { Level::Warning },
                                format!(
                                    "issuer {:?} is not {issuer:?} (RFC 8414 §3.3 wants them identical): not used",
                                    m.issuer
                                ),
                            );
                        }
                        Ok(m) => {
                            s.outcome =
                                format!("issuer {}, token_endpoint {}", m.issuer, m.token_endpoint);
                            if already {
                                s.add(Level::Info, "not needed: an earlier candidate was used");
                            } else {
                                s.add(Level::Ok, "used: issuer matches");
                                chosen = Some(m);
                            }
                        }
                    }
                }
            }
            self.push(s);
        }
        chosen
    }

    /// The 2025-03-26 rules, for a server without protected resource metadata.
    async fn legacy(&mut self, egress: &Egress, url: &str) -> Option<AuthorizationServerMetadata> {
        let Some(o) = origin(url) else {
            let mut s = Step::new("as_metadata", "Authorization server metadata (2025-03-26)");
            s.add(Level::Error, format!("{url:?} is not an http(s) URL"));
            self.push(s);
            return None;
        };
        let candidate = format!("{o}/.well-known/oauth-authorization-server");
        let mut s = Step::new(
            "as_metadata",
            "Authorization server metadata at the server's origin (2025-03-26 fallback)",
        );
        s.request = Some(format!("GET {candidate}"));
        let found = match fetch(egress, &candidate, UrlSource::Operator).await {
            Fetched::Failed(why) => {
                s.outcome = format!("no answer: {why}");
                None
            }
            Fetched::Status(st) => {
                s.status = Some(st);
                s.outcome = format!("HTTP {st}: no document here");
                None
            }
            Fetched::Body(body) => {
                s.status = Some(200);
                match AuthorizationServerMetadata::parse(&body) {
                    Err(why) => {
                        s.outcome = format!("not usable: {why}");
                        None
                    }
                    Ok(m) if origin(&m.issuer).as_deref() != Some(o.as_str()) => {
                        s.outcome = format!("issuer {:?} is not on {o}: not used", m.issuer);
                        None
                    }
                    Ok(m) => {
                        s.outcome =
                            format!("issuer {}, token_endpoint {}", m.issuer, m.token_endpoint);
                        s.add(Level::Ok, "used");
                        Some(m)
                    }
                }
            }
        };
        if found.is_none() {
            s.add(
                Level::Warning,
                format!(
                    "no metadata anywhere: Latchkey assumes the 2025-03-26 default endpoints {o}/authorize, {o}/token and {o}/register, which few servers have"
                ),
            );
        }
        self.push(s);
        found
    }

    /// What the chosen metadata offers: endpoints, PKCE, registration.
    fn judge_metadata(
        &mut self,
        m: &AuthorizationServerMetadata,
        prm: Option<&ProtectedResourceMetadata>,
    ) {
        let mut s = Step::new("endpoints", format!("Endpoints of {}", m.issuer));
        s.outcome = format!(
            "authorization {}, token {}",
            m.authorization_endpoint.as_deref().unwrap_or("(none)"),
            m.token_endpoint
        );
        match &m.authorization_endpoint {
            Some(_) => s.add(Level::Ok, "authorization_endpoint and token_endpoint present"),
            // Predicts `connect`: a finding that makes it fail is a failure here too.
            None => s.add(
                Level::Error,
                "no authorization_endpoint: users cannot consent, so `latchkey connect` fails; only a server set to the client_credentials grant can work",
            ),
        }
        s.add(
            Level::Info,
            format!("grant_types_supported: {}", list(&m.grant_types_supported)),
        );
        s.add(
            Level::Info,
            format!("scopes_supported: {}", list(&m.scopes_supported)),
        );
        if let Some(p) = prm
            && let Some(wanted) = &p.scopes_supported
            && let Some(offered) = &m.scopes_supported
        {
            let missing: Vec<&String> = wanted.iter().filter(|w| !offered.contains(w)).collect();
            if !missing.is_empty() {
                s.add(
                    Level::Warning,
                    format!(
                        "the resource's scopes {} are not in the authorization server's scopes_supported",
                        missing.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(" ")
                    ),
                );
            }
        }
        s.add(
            Level::Info,
            match &m.revocation_endpoint {
                Some(r) => format!("revocation_endpoint {r}: disconnecting revokes tokens"),
                None => "no revocation_endpoint: disconnecting only forgets tokens".into(),
            },
        );
        s.add(
            if m.authorization_response_iss_parameter_supported {
                Level::Ok
            } else {
                Level::Info
            },
            if m.authorization_response_iss_parameter_supported {
                "authorization_response_iss_parameter_supported: the callback's iss is checked (RFC 9207)"
            } else {
                "RFC 9207 iss not advertised: mix-up protection rests on the per-issuer redirect state"
            },
        );
        self.push(s);

        let mut s = Step::new("pkce", "PKCE");
        s.outcome = format!(
            "code_challenge_methods_supported: {}",
            list(&m.code_challenge_methods_supported)
        );
        if m.supports_s256() {
            s.add(Level::Ok, "S256 advertised");
        } else {
            s.add(
                Level::Error,
                match &m.code_challenge_methods_supported {
                    None => "code_challenge_methods_supported is absent: the authorization server does not advertise PKCE S256, which OAuth 2.1 and MCP require; Latchkey refuses to run the authorization code flow without it",
                    Some(_) => "code_challenge_methods_supported does not list S256: the authorization server does not advertise PKCE S256, which OAuth 2.1 and MCP require; Latchkey refuses to run the authorization code flow without it",
                },
            );
        }
        self.push(s);

        let mut s = Step::new("registration", "Client registration");
        let dcr = m.registration_endpoint.is_some();
        s.outcome = format!(
            "CIMD {}, DCR {}, pre-registered client: possible",
            if m.client_id_metadata_document_supported {
                "advertised"
            } else {
                "not advertised"
            },
            m.registration_endpoint
                .as_deref()
                .unwrap_or("not advertised")
        );
        if m.client_id_metadata_document_supported {
            s.add(
                Level::Info,
                "client_id_metadata_document_supported: Client ID Metadata Documents are accepted",
            );
        }
        match registration::plan(m, false, None) {
            Ok(registration::RegistrationPlan::Dcr(e)) => s.add(
                Level::Ok,
                format!("Latchkey registers itself by DCR (RFC 7591) at {e} on the first connect"),
            ),
            _ => s.add(
                if dcr { Level::Info } else { Level::Error },
                "no registration_endpoint: `latchkey connect` fails until the server is given a pre-registered client (`latchkey servers edit SERVER --client-id ID --client-secret-stdin`)",
            ),
        }
        let lists =
            |v: &Option<Vec<String>>, x: &str| v.as_ref().is_some_and(|l| l.iter().any(|s| s == x));
        if lists(&m.scopes_supported, "offline_access") {
            s.add(
                Level::Info,
                "scopes_supported lists offline_access: Latchkey asks for it with prompt=consent (OIDC Core §11), so the connection gets a refresh token",
            );
        } else if m.grant_types_supported.is_some()
            && !lists(&m.grant_types_supported, "refresh_token")
        {
            s.add(
                Level::Warning,
                "grant_types_supported does not list refresh_token: a connection may last only as long as its first access token",
            );
        }
        s.add(
            Level::Info,
            format!(
                "token_endpoint_auth_methods_supported: {}; Latchkey would use {}",
                list(&m.token_endpoint_auth_methods_supported),
                registration::preferred_auth_method(m).as_str()
            ),
        );
        self.push(s);
    }
}

fn challenge_json(c: &BearerChallenge) -> Value {
    json!({"scheme": c.scheme, "resource_metadata": c.resource_metadata, "scope": c.scope, "error": c.error})
}

pub(crate) async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let egress = Egress::new(EgressConfig {
        loopback: if a.allow_insecure_loopback {
            LoopbackPolicy::AllowInsecureLoopback
        } else {
            LoopbackPolicy::Deny
        },
        ..EgressConfig::default()
    })?;
    if let Err(e) = egress.check_url(&a.url, UrlSource::Operator) {
        let hint = if a.allow_insecure_loopback {
            ""
        } else {
            " (--allow-insecure-loopback allows http and loopback addresses for local development)"
        };
        return Err(Failure::data(format!("{}: {e}{hint}", a.url)).into());
    }
    let header_map = crate::headers::header_map(&a.headers)?;
    let mut walk = Walk { steps: Vec::new() };

    // 1. The unauthenticated probe.
    let p = probe::probe(&egress, &a.url, UrlSource::Operator).await;
    if let Some(why) = &p.failure {
        return Err(Failure::unavailable(format!("probe of {} failed: {why}", a.url)).into());
    }
    let status = p.status.unwrap_or(0);
    let ch = p.challenge.clone();
    let mut s = Step::new("probe", "Probe: an MCP initialize without credentials");
    s.request = Some(format!("POST {}", a.url));
    s.status = p.status;
    s.outcome = match &ch {
        Some(c) => format!(
            "HTTP {status}, {} challenge: resource_metadata={} scope={} error={}",
            c.scheme,
            c.resource_metadata.as_deref().unwrap_or("-"),
            c.scope.as_deref().unwrap_or("-"),
            c.error.as_deref().unwrap_or("-"),
        ),
        None => format!("HTTP {status}, no Bearer challenge"),
    };
    let walk_on = match status {
        200..=299 => {
            s.add(
                Level::Ok,
                "the server answered without credentials: auth type none, no OAuth needed",
            );
            false
        }
        401 => {
            match &ch {
                Some(c) if c.resource_metadata.is_some() => s.add(
                    Level::Ok,
                    "401 with a Bearer challenge naming the protected resource metadata",
                ),
                Some(_) => s.add(
                    Level::Warning,
                    "the Bearer challenge has no resource_metadata (RFC 9728 §5.1): clients must guess the well-known URIs",
                ),
                None => s.add(
                    Level::Warning,
                    "401 without a Bearer challenge: Latchkey's probe takes this server for one with static credentials (auth type headers) unless --auth-type oauth is given",
                ),
            }
            if let Some(sc) = ch.as_ref().and_then(|c| c.scope.as_deref()) {
                s.add(Level::Info, format!("the challenge asks for scope {sc:?}"));
            }
            true
        }
        other => {
            s.add(
                Level::Error,
                format!(
                    "HTTP {other} to an unauthenticated initialize: an MCP server that wants OAuth answers 401 with a Bearer challenge"
                ),
            );
            false
        }
    };
    s.add(
        Level::Info,
        format!(
            "Latchkey's probe classifies it as auth type {}",
            p.auth_type.as_str()
        ),
    );
    walk.push(s);

    // 1b. With the given static headers: does the server take them?
    let mut headers_work = false;
    if !header_map.is_empty() {
        let names: Vec<&str> = a.headers.iter().map(|h| h.name.as_str()).collect();
        let hp = probe::probe_with(&egress, &a.url, UrlSource::Operator, &header_map).await;
        let mut s = Step::new(
            "headers",
            format!("Probe with the given headers ({})", names.join(", ")),
        );
        s.request = Some(format!("POST {}", a.url));
        s.status = hp.status;
        match (hp.status, &hp.problem) {
            (Some(code @ 200..=299), None) => {
                s.outcome = format!("HTTP {code}, an MCP answer");
                s.add(
                    Level::Ok,
                    "the server accepted the headers: add it with `latchkey servers add NAME URL --header 'Name: value'`",
                );
                headers_work = true;
            }
            (Some(code @ (401 | 403)), _) => {
                s.outcome = format!("HTTP {code}");
                s.add(
                    Level::Error,
                    format!("the server refused the headers (HTTP {code}): check the values"),
                );
            }
            (_, Some(why)) => {
                s.outcome = why.clone();
                s.add(
                    Level::Error,
                    format!("no MCP answer with the headers: {why}"),
                );
            }
            (status, None) => {
                s.outcome = format!("HTTP {}", status.unwrap_or(0));
                s.add(Level::Error, "no MCP answer with the headers");
            }
        }
        walk.push(s);
    }

    // 2. The walk, and 3. Latchkey's own verdict.
    // A server that takes the given headers and names no OAuth metadata is a
    // static-header server: there is no OAuth chain to walk.
    let walk_on = walk_on
        && !(headers_work
            && ch
                .as_ref()
                .is_none_or(|c| c.resource_metadata.is_none() && c.scope.is_none()));
    let rm = ch.as_ref().and_then(|c| c.resource_metadata.clone());
    let mut discovery = Value::Null;
    if walk_on {
        let prm_doc = walk.prm(&egress, &a.url, rm.as_deref()).await;
        let metadata = match &prm_doc {
            Some(p) => {
                let mut found = None;
                for issuer in &p.authorization_servers {
                    if let Some(m) = walk.as_metadata(&egress, issuer).await {
                        found = Some(m);
                        break;
                    }
                }
                if found.is_none() && !p.authorization_servers.is_empty() {
                    let mut s = Step::new("as_metadata", "Authorization server metadata");
                    s.outcome = "none usable".into();
                    s.add(
                        Level::Error,
                        format!(
                            "no usable authorization server metadata for {}: every RFC 8414 and OpenID Connect candidate failed",
                            p.authorization_servers.join(", ")
                        ),
                    );
                    walk.push(s);
                }
                found
            }
            None => {
                let mut s = Step::new("prm", "Protected resource metadata");
                s.outcome = "none found".into();
                s.add(
                    Level::Warning,
                    "no protected resource metadata (RFC 9728), which MCP 2025-06-18 and later require: falling back to the 2025-03-26 rules",
                );
                walk.push(s);
                walk.legacy(&egress, &a.url).await
            }
        };
        if let Some(m) = &metadata {
            walk.judge_metadata(m, prm_doc.as_ref());
        }

        let discoverer = Discoverer::new(egress.clone(), Arc::new(SystemClock));
        let mut s = Step::new("verdict", "Latchkey's discovery");
        match discoverer
            .discover(&a.url, rm.as_deref(), DiscoveryOptions::default())
            .await
        {
            Ok(d) => {
                s.outcome = format!(
                    "resource {}, issuer {}{}",
                    d.resource,
                    d.issuer,
                    if d.defaulted_endpoints {
                        " (2025-03-26 default endpoints)"
                    } else if d.legacy {
                        " (2025-03-26 fallback)"
                    } else {
                        ""
                    }
                );
                s.add(Level::Ok, "discovery succeeds");
                discovery = json!({
                    "resource": d.resource, "issuer": d.issuer, "legacy": d.legacy,
                    "defaulted_endpoints": d.defaulted_endpoints,
                    "authorization_endpoint": d.metadata.authorization_endpoint,
                    "token_endpoint": d.metadata.token_endpoint,
                    "registration_endpoint": d.metadata.registration_endpoint,
                    "pkce_s256": d.metadata.supports_s256(),
                    "client_id_metadata_document_supported": d.metadata.client_id_metadata_document_supported,
                    "steps": d.steps.iter().map(|s| json!({"url": s.url, "outcome": s.outcome})).collect::<Vec<_>>(),
                });
            }
            Err(e) => {
                s.outcome = "discovery fails".into();
                s.add(Level::Error, format!("Latchkey's discovery fails: {e}"));
                discovery = json!({"error": e.to_string()});
            }
        }
        walk.push(s);
    }

    let problems = walk.problems();
    let ok = problems.is_empty();
    if a.json {
        output::json(&json!({
            "url": a.url,
            "ok": ok,
            "status": status,
            "auth_type": p.auth_type,
            "challenge": ch.as_ref().map(challenge_json),
            "steps": walk.steps,
            "discovery": discovery,
            "problems": problems,
        }));
    } else {
        print_human(&a.url, &walk, &problems);
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        exit::code(exit::FAILURE)
    })
}

fn print_human(url: &str, walk: &Walk, problems: &[String]) {
    output::line(format!("Checking {url}"));
    for (i, s) in walk.steps.iter().enumerate() {
        output::line("");
        output::line(format!("{}. {}", i + 1, s.title));
        if let Some(r) = &s.request {
            output::line(format!("   {r}"));
        }
        if !s.outcome.is_empty() {
            output::line(format!("   -> {}", s.outcome));
        }
        for f in &s.findings {
            output::line(format!("   [{}] {}", f.level.mark(), f.message));
        }
    }
    output::line("");
    if problems.is_empty() {
        output::line("Result: OK, Latchkey can use this server.");
    } else {
        output::line(format!(
            "Result: BROKEN, {} problem{}:",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        ));
        for p in problems {
            output::line(format!("  - {p}"));
        }
    }
}
