//! The only road out of Latchkey: an HTTP client that refuses to be turned against the
//! network it runs in (R-SEC-1..R-SEC-9).
//!
//! * URLs are parsed the WHATWG way (`url`), so `2130706433`, `0x7f000001`, `0177.0.0.1`
//!   and `127.1` are all `127.0.0.1` before they are classified.
//! * Host names are resolved by a guarded resolver that classifies **every** address and
//!   hands exactly those to the connector: nothing is resolved twice, so a DNS answer
//!   cannot change between the check and the connection.
//! * Redirects are never followed; response bodies are capped; every request times out;
//!   environment proxies are ignored (they would bypass the guard).
#![forbid(unsafe_code)]

mod policy;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

pub use policy::{CheckedUrl, DenyReason, LoopbackPolicy, UrlSource, classify_ip};

/// Cap for discovery documents (R-DISC-5).
pub const METADATA_BODY_LIMIT: usize = 64 * 1024;
/// Cap for registration responses (R-REG-2).
pub const REGISTRATION_BODY_LIMIT: usize = 32 * 1024;
/// Cap for token responses (R-FLOW-10).
pub const TOKEN_BODY_LIMIT: usize = 64 * 1024;

/// Egress settings.
#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// The dev relaxation for http and loopback.
    pub loopback: LoopbackPolicy,
    /// Private ranges allowed even for URLs learned from remote documents.
    pub private_allow_list: Vec<ipnet::IpNet>,
    /// Connection timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout (unless a request sets its own).
    pub request_timeout: Duration,
    /// `User-Agent`.
    pub user_agent: String,
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self {
            loopback: LoopbackPolicy::Deny,
            private_allow_list: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            user_agent: format!("latchkey/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// Why a request did not produce a response.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// Not an absolute URL, no host, or credentials in the URL.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// Not https (or http under the loopback relaxation).
    #[error("scheme {0:?} is not allowed")]
    SchemeNotAllowed(String),
    /// The host is, or resolves to, a refused address.
    #[error("{host} is a {reason}: refused")]
    AddressDenied {
        /// The host or address.
        host: String,
        /// Which rule refused it.
        reason: DenyReason,
    },
    /// A 3xx answer. It is never followed and its body is not read.
    #[error("refused to follow a redirect (HTTP {status})")]
    Redirect {
        /// The status.
        status: u16,
        /// The `Location` header, for callers that read authorization responses.
        location: Option<String>,
    },
    /// The response body is larger than the cap.
    #[error("response body larger than {limit} bytes")]
    BodyTooLarge {
        /// The cap.
        limit: usize,
    },
    /// No response in time.
    #[error("timed out")]
    Timeout,
    /// DNS failure, refused or reset connection.
    #[error("could not connect: {0}")]
    Connect(String),
    /// Any other transport error.
    #[error("HTTP transport error: {0}")]
    Http(String),
}

impl EgressError {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            EgressError::Timeout | EgressError::Connect(_) | EgressError::Http(_)
        )
    }
}

/// Resolves host names. Injected so tests can play a rebinding DNS server.
#[async_trait::async_trait]
pub trait NameResolver: Send + Sync + fmt::Debug {
    /// All addresses of `host`.
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// The system resolver.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

#[async_trait::async_trait]
impl NameResolver for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// The refusal a guarded resolution returns, found again in reqwest's error chain.
#[derive(Debug)]
struct Denied {
    host: String,
    reason: DenyReason,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} resolves to a {}", self.host, self.reason)
    }
}

impl std::error::Error for Denied {}

/// reqwest's resolver hook: resolve once, classify every address, return exactly the
/// checked addresses, so the connection goes to an address that passed the policy.
#[derive(Debug)]
struct GuardedResolve {
    resolver: Arc<dyn NameResolver>,
    source: UrlSource,
    cfg: Arc<EgressConfig>,
}

impl reqwest::dns::Resolve for GuardedResolve {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let resolver = self.resolver.clone();
        let cfg = self.cfg.clone();
        let source = self.source;
        Box::pin(async move {
            let addrs = resolver.resolve(&host, 0).await?;
            if addrs.is_empty() {
                return Err(format!("{host}: no addresses").into());
            }
            for a in &addrs {
                if let Err(reason) = classify_ip(a.ip(), source, &cfg) {
                    tracing::warn!(event = "egress.address_denied", host = %host, reason = %reason);
                    return Err(Box::new(Denied { host, reason })
                        as Box<dyn std::error::Error + Send + Sync>);
                }
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The guarded client. Cheap to clone.
#[derive(Clone)]
pub struct Egress {
    cfg: Arc<EgressConfig>,
    operator: reqwest::Client,
    remote: reqwest::Client,
}

impl fmt::Debug for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Egress")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Egress {
    /// A client using the system resolver.
    pub fn new(cfg: EgressConfig) -> Result<Self, EgressError> {
        Self::with_resolver(cfg, Arc::new(SystemResolver))
    }

    /// A client using `resolver` for every host name.
    pub fn with_resolver(
        cfg: EgressConfig,
        resolver: Arc<dyn NameResolver>,
    ) -> Result<Self, EgressError> {
        let cfg = Arc::new(cfg);
        // One reqwest client per URL source: the source decides the private-range rule
        // inside the resolver, and reqwest's resolver hook sees only the host name.
        let build = |source| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .connect_timeout(cfg.connect_timeout)
                .timeout(cfg.request_timeout)
                .user_agent(cfg.user_agent.clone())
                .dns_resolver(Arc::new(GuardedResolve {
                    resolver: resolver.clone(),
                    source,
                    cfg: cfg.clone(),
                }))
                .build()
                .map_err(|e| EgressError::Http(format!("cannot build the HTTP client: {e}")))
        };
        Ok(Self {
            operator: build(UrlSource::Operator)?,
            remote: build(UrlSource::Remote)?,
            cfg,
        })
    }

    /// The settings.
    pub fn config(&self) -> &EgressConfig {
        &self.cfg
    }

    /// Static checks only (no DNS): scheme, userinfo, literal addresses, `localhost` names.
    pub fn check_url(&self, raw: &str, source: UrlSource) -> Result<CheckedUrl, EgressError> {
        policy::check_url(raw, source, &self.cfg)
    }

    /// Sends one request under the policy and reads at most `req.body_limit` bytes.
    pub async fn send(&self, req: EgressRequest) -> Result<EgressResponse, EgressError> {
        let checked = self.check_url(&req.url, req.source)?;
        let client = match req.source {
            UrlSource::Operator => &self.operator,
            UrlSource::Remote => &self.remote,
        };
        let host = checked.url().host_str().unwrap_or_default().to_owned();
        let mut rb = client
            .request(req.method.clone(), checked.url().clone())
            .headers(req.headers);
        if let Some(t) = req.timeout {
            rb = rb.timeout(t);
        }
        if let Some(b) = req.body {
            rb = rb.body(b);
        }
        let resp = rb.send().await.map_err(map_err)?;
        let status = resp.status();
        tracing::debug!(event = "egress.response", method = %req.method, host = %host, status = status.as_u16());
        if status.is_redirection() {
            let location = resp
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            return Err(EgressError::Redirect {
                status: status.as_u16(),
                location,
            });
        }
        let limit = req.body_limit;
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(EgressError::BodyTooLarge { limit });
        }
        let headers = resp.headers().clone();
        let mut resp = resp;
        let mut body = BytesMut::new();
        while let Some(chunk) = resp.chunk().await.map_err(map_err)? {
            if body.len() + chunk.len() > limit {
                return Err(EgressError::BodyTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(EgressResponse {
            status,
            headers,
            body: body.freeze(),
        })
    }
}

fn map_err(e: reqwest::Error) -> EgressError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = src {
        if let Some(d) = s.downcast_ref::<Denied>() {
            return EgressError::AddressDenied {
                host: d.host.clone(),
                reason: d.reason,
            };
        }
        src = s.source();
    }
    if e.is_timeout() {
        EgressError::Timeout
    } else if e.is_connect() {
        EgressError::Connect(e.without_url().to_string())
    } else {
        EgressError::Http(e.without_url().to_string())
    }
}

/// One outbound request.
pub struct EgressRequest {
    /// Method.
    pub method: Method,
    /// Absolute URL.
    pub url: String,
    /// Where the URL came from.
    pub source: UrlSource,
    /// Headers (credentials included: never printed).
    pub headers: HeaderMap,
    /// Body.
    pub body: Option<Bytes>,
    /// The most response-body bytes to read.
    pub body_limit: usize,
    /// Overrides the configured request timeout.
    pub timeout: Option<Duration>,
}

impl fmt::Debug for EgressRequest {
    /// Method, URL without query, and header names only: values and bodies may be secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = self.url.split(['?', '#']).next().unwrap_or_default();
        f.debug_struct("EgressRequest")
            .field("method", &self.method)
            .field("url", &url)
            .field("source", &self.source)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("body_len", &self.body.as_ref().map(Bytes::len))
            .finish_non_exhaustive()
    }
}

impl EgressRequest {
    fn new(method: Method, url: impl Into<String>, source: UrlSource, body_limit: usize) -> Self {
        Self {
            method,
            url: url.into(),
            source,
            headers: HeaderMap::new(),
            body: None,
            body_limit,
            timeout: None,
        }
    }

    /// A GET.
    pub fn get(url: impl Into<String>, source: UrlSource, body_limit: usize) -> Self {
        Self::new(Method::GET, url, source, body_limit)
    }

    /// A POST of `application/x-www-form-urlencoded` pairs.
    pub fn post_form(
        url: impl Into<String>,
        source: UrlSource,
        pairs: &[(&str, &str)],
        body_limit: usize,
    ) -> Self {
        let mut r = Self::new(Method::POST, url, source, body_limit);
        r.body = Some(Bytes::from(
            serde_urlencoded::to_string(pairs).unwrap_or_default(),
        ));
        r.headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        r
    }

    /// A POST of JSON.
    pub fn post_json(
        url: impl Into<String>,
        source: UrlSource,
        json: &serde_json::Value,
        body_limit: usize,
    ) -> Self {
        let mut r = Self::new(Method::POST, url, source, body_limit);
        r.body = Some(Bytes::from(json.to_string()));
        r.headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }

    /// Adds a header (replacing one of the same name).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }
}

/// A response whose body was read within the cap.
#[derive(Debug)]
pub struct EgressResponse {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl EgressResponse {
    /// The body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// A header value as text.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}
