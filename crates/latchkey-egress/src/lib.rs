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
//! * Nothing here logs or prints a query string, a header value or a body.
#![forbid(unsafe_code)]

mod hop;
mod message;
mod policy;
mod resolve;

use std::collections::HashMap;
use std::error::Error as _;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;

pub use hop::{HopBody, hop_body, hop_stream};
pub use message::{EgressRequest, EgressResponse};
pub use policy::{CheckedUrl, DenyReason, LoopbackPolicy, UrlSource, classify_ip, is_loopback_url};
pub use resolve::{NameResolver, SystemResolver};

/// Cap for discovery documents (R-DISC-5).
pub const METADATA_BODY_LIMIT: usize = 64 * 1024;
/// Cap for registration responses (R-REG-2).
pub const REGISTRATION_BODY_LIMIT: usize = 32 * 1024;
/// Cap for token responses (R-FLOW-10).
pub const TOKEN_BODY_LIMIT: usize = 64 * 1024;

/// Egress settings.
#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// The dev relaxation for http and loopback (default: deny).
    pub loopback: LoopbackPolicy,
    /// Private ranges allowed even for URLs learned from remote documents. Matched
    /// against the effective address, so an IPv4 range also covers its IPv4-mapped,
    /// NAT64 and 6to4 spellings. It never opens loopback, link-local or other ranges.
    pub private_allow_list: Vec<ipnet::IpNet>,
    /// Connection timeout (default 5 s).
    pub connect_timeout: Duration,
    /// Whole-request timeout, body included, unless a request sets its own (default 15 s).
    pub request_timeout: Duration,
    /// `User-Agent` (default `latchkey/<version>`).
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

/// Why a request did not produce a response. Messages never contain the URL's query,
/// header values or bodies.
#[derive(thiserror::Error)]
pub enum EgressError {
    /// Not an absolute URL, no host, or credentials in the URL.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// Not https (or http without the loopback relaxation).
    #[error("scheme {0:?} is not allowed")]
    SchemeNotAllowed(String),
    /// Plain http to a host that is not loopback: the loopback relaxation allows http
    /// to loopback hosts only (R-SEC-10).
    #[error(
        "plain http is allowed only to loopback hosts (localhost, 127.0.0.0/8, [::1]), not {host}: use https"
    )]
    InsecureHttp {
        /// The host, as the parser spells it.
        host: String,
    },
    /// The host is, or resolves to, a refused address.
    #[error("refused {host}: {reason}")]
    AddressDenied {
        /// The host name or address.
        host: String,
        /// Which rule refused it.
        reason: DenyReason,
    },
    /// A 3xx answer. It is never followed and its body is not read.
    #[error("refused to follow a redirect (HTTP {status})")]
    Redirect {
        /// The status.
        status: u16,
        /// The `Location` header, for callers that read authorization responses. It may
        /// carry a code: `Debug` shows it without query and fragment, `Display` not at all.
        location: Option<String>,
    },
    /// The response body is larger than the cap.
    #[error("response body larger than {limit} bytes")]
    BodyTooLarge {
        /// The cap.
        limit: usize,
    },
    /// No response (or no complete body) in time.
    #[error("timed out")]
    Timeout,
    /// DNS failure, refused or reset connection, TLS handshake failure.
    #[error("could not connect: {0}")]
    Connect(String),
    /// Any other transport error.
    #[error("HTTP transport error: {0}")]
    Http(String),
}

impl fmt::Debug for EgressError {
    // Hand-written only to keep a redirect's query (an authorization code) out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidUrl(m) => f.debug_tuple("InvalidUrl").field(m).finish(),
            Self::SchemeNotAllowed(s) => f.debug_tuple("SchemeNotAllowed").field(s).finish(),
            Self::InsecureHttp { host } => {
                f.debug_struct("InsecureHttp").field("host", host).finish()
            }
            Self::AddressDenied { host, reason } => f
                .debug_struct("AddressDenied")
                .field("host", host)
                .field("reason", reason)
                .finish(),
            Self::Redirect { status, location } => f
                .debug_struct("Redirect")
                .field("status", status)
                .field("location", &location.as_deref().map(message::loggable_url))
                .finish(),
            Self::BodyTooLarge { limit } => f
                .debug_struct("BodyTooLarge")
                .field("limit", limit)
                .finish(),
            Self::Timeout => f.write_str("Timeout"),
            Self::Connect(m) => f.debug_tuple("Connect").field(m).finish(),
            Self::Http(m) => f.debug_tuple("Http").field(m).finish(),
        }
    }
}

impl EgressError {
    /// Whether the same request may succeed later: transport failures yes, policy
    /// refusals, redirects and oversized bodies no.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            EgressError::Timeout | EgressError::Connect(_) | EgressError::Http(_)
        )
    }
}

/// The guarded client. Cheap to clone (the connection pools are shared).
#[derive(Clone)]
pub struct Egress {
    cfg: Arc<EgressConfig>,
    operator: reqwest::Client,
    remote: reqwest::Client,
    /// URLs that passed [`Egress::check_url`], by source: the proxy sends every request
    /// to the same few server URLs, and parsing each again was 3 % of its CPU.
    checked: Arc<Mutex<CheckedUrls>>,
    /// The proxy's hop ([`hop`]), built at its first use.
    hop: Arc<std::sync::OnceLock<Result<hop::HopClients, String>>>,
    resolver: Arc<dyn NameResolver>,
}

/// Checked URLs by source and text; bounded (it starts over when full).
#[derive(Debug, Default)]
struct CheckedUrls {
    operator: HashMap<String, CheckedUrl>,
    remote: HashMap<String, CheckedUrl>,
}

impl CheckedUrls {
    fn by_source(&mut self, source: UrlSource) -> &mut HashMap<String, CheckedUrl> {
        match source {
            UrlSource::Operator => &mut self.operator,
            UrlSource::Remote => &mut self.remote,
        }
    }
}

/// Entries kept per source at most.
const CHECKED_URLS: usize = 1024;

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

    /// A client using `resolver` for every host name (tests: DNS rebinding).
    pub fn with_resolver(
        cfg: EgressConfig,
        resolver: Arc<dyn NameResolver>,
    ) -> Result<Self, EgressError> {
        let cfg = Arc::new(cfg);
        // One reqwest client per URL source: reqwest's resolver hook sees only the host
        // name, and the source decides the private-range rule. Separate clients also
        // mean separate pools, so a Remote request never reuses a connection that was
        // admitted under the Operator rule.
        let build = |source| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .https_only(cfg.loopback == LoopbackPolicy::Deny) // a second wall behind check_url
                .connect_timeout(cfg.connect_timeout)
                .timeout(cfg.request_timeout)
                .user_agent(cfg.user_agent.clone())
                .dns_resolver(Arc::new(resolve::GuardedResolve {
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
            checked: Arc::default(),
            hop: Arc::default(),
            resolver,
        })
    }

    /// The hop's clients, built once.
    fn hop_clients(&self) -> Result<&hop::HopClients, EgressError> {
        self.hop
            .get_or_init(|| hop::HopClients::new(&self.cfg, &self.resolver))
            .as_ref()
            .map_err(|e| EgressError::Http(e.clone()))
    }

    /// The settings.
    pub fn config(&self) -> &EgressConfig {
        &self.cfg
    }

    /// Static checks only (no DNS): WHATWG parse, scheme, no userinfo, IP literals and
    /// `localhost` names. Also the check for URLs handed to a browser (R-SEC-9).
    pub fn check_url(&self, raw: &str, source: UrlSource) -> Result<CheckedUrl, EgressError> {
        {
            let mut m = self.checked.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = m.by_source(source).get(raw) {
                return Ok(c.clone());
            }
        }
        // The verdict depends only on the text, the source and this client's fixed
        // settings, so a URL that passed once passes again (names are still resolved,
        // and their addresses checked, on every connection).
        let checked = policy::check_url(raw, source, &self.cfg)?;
        let mut m = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        let urls = m.by_source(source);
        if urls.len() >= CHECKED_URLS {
            urls.clear();
        }
        urls.insert(raw.to_owned(), checked.clone());
        Ok(checked)
    }

    /// Sends one request: [`Egress::check_url`], then a connection only to addresses the
    /// guarded resolver admitted, no redirect followed (3xx → [`EgressError::Redirect`],
    /// body unread), at most `req.body_limit` body bytes, within the timeouts.
    pub async fn send(&self, req: EgressRequest) -> Result<EgressResponse, EgressError> {
        let checked = self.check_url(&req.url, req.source)?;
        let method = req.method.clone();
        let host = checked.url().host_str().unwrap_or_default().to_owned();
        let result = self.exchange(checked, req).await;
        // Method, host and outcome only: never the query, header values or bodies.
        match &result {
            Ok(r) => tracing::debug!(event = "egress.response", %method, %host, status = %r.status),
            Err(e) => tracing::debug!(event = "egress.error", %method, %host, error = %e),
        }
        result
    }

    async fn exchange(
        &self,
        checked: CheckedUrl,
        req: EgressRequest,
    ) -> Result<EgressResponse, EgressError> {
        let client = match req.source {
            UrlSource::Operator => &self.operator,
            UrlSource::Remote => &self.remote,
        };
        let mut rb = client
            .request(req.method, checked.url().clone())
            .headers(req.headers);
        if let Some(t) = req.timeout {
            rb = rb.timeout(t);
        }
        if let Some(b) = req.body {
            rb = rb.body(b);
        }
        let mut resp = rb.send().await.map_err(map_err)?;
        let status = resp.status();
        if status.is_redirection() {
            // Dropping the response without reading it closes or recycles the connection;
            // nothing is re-sent anywhere.
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
        let too_large = EgressError::BodyTooLarge { limit };
        let declared = resp.content_length();
        if declared.is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX)) {
            return Err(too_large); // refused before reading a byte
        }
        let headers = std::mem::take(resp.headers_mut());
        let capacity = declared.map_or(0, |n| usize::try_from(n).unwrap_or(limit).min(limit));
        let mut body = BytesMut::with_capacity(capacity);
        // Streamed so a lying or absent Content-Length cannot make us buffer more than
        // the cap: the read stops at the first chunk that would cross it.
        while let Some(chunk) = resp.chunk().await.map_err(map_err)? {
            if chunk.len() > limit - body.len() {
                return Err(too_large);
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

/// A response whose body has not been read: for proxying, where the body is streamed
/// to the caller as it arrives (an MCP SSE stream may last for minutes).
pub struct EgressStream {
    /// Status (never 3xx: those are [`EgressError::Redirect`]).
    pub status: http::StatusCode,
    /// Headers.
    pub headers: http::HeaderMap,
    body: StreamBody,
}

/// Where a streamed body comes from: reqwest ([`Egress::open`]) or the proxy's hop
/// ([`Egress::hop`]).
enum StreamBody {
    Reqwest(reqwest::Response),
    Hop(hyper::body::Incoming),
}

impl fmt::Debug for EgressStream {
    /// Status and header names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressStream")
            .field("status", &self.status)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl EgressStream {
    /// The body as a stream of chunks, in the order they arrive.
    pub fn into_body(
        self,
    ) -> impl futures_util::Stream<Item = Result<bytes::Bytes, EgressError>> + Send + 'static {
        use futures_util::StreamExt as _;
        match self.body {
            StreamBody::Reqwest(r) => r.bytes_stream().map(|r| r.map_err(map_err)).left_stream(),
            StreamBody::Hop(b) => http_body_util::BodyDataStream::new(b)
                .map(|r| r.map_err(|e| EgressError::Http(format!("the answer broke off: {e}"))))
                .right_stream(),
        }
    }

    /// Reads at most `limit` body bytes (for small error answers).
    pub async fn read_capped(self, limit: usize) -> Result<bytes::Bytes, EgressError> {
        use futures_util::StreamExt as _;
        let mut body = BytesMut::new();
        let mut chunks = std::pin::pin!(self.into_body());
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            if chunk.len() > limit - body.len() {
                return Err(EgressError::BodyTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}

impl Egress {
    /// Opens one request like [`Egress::send`] (same URL check, guarded resolver, no
    /// redirect followed) but returns as soon as the response head arrives, within
    /// `head_timeout`; the body is the caller's to stream, with no overall deadline.
    /// `body`, when given, replaces `req.body` and may itself be a stream.
    pub async fn open(
        &self,
        req: EgressRequest,
        body: Option<reqwest::Body>,
        head_timeout: Duration,
    ) -> Result<EgressStream, EgressError> {
        let checked = self.check_url(&req.url, req.source)?;
        let method = req.method.clone();
        let client = match req.source {
            UrlSource::Operator => &self.operator,
            UrlSource::Remote => &self.remote,
        };
        // reqwest's timeout covers the whole body; a streamed answer has none, so the
        // client-wide one is pushed out of the way and the head gets its own deadline.
        let mut rb = client
            .request(req.method, checked.url().clone())
            .headers(req.headers)
            .timeout(STREAM_DEADLINE);
        match (body, req.body) {
            (Some(b), _) => rb = rb.body(b),
            (None, Some(b)) => rb = rb.body(b),
            (None, None) => {}
        }
        let result = match tokio::time::timeout(head_timeout, rb.send()).await {
            Err(_) => Err(EgressError::Timeout),
            Ok(Err(e)) => Err(map_err(e)),
            Ok(Ok(mut resp)) => {
                let status = resp.status();
                if status.is_redirection() {
                    Err(EgressError::Redirect {
                        status: status.as_u16(),
                        location: resp
                            .headers()
                            .get(http::header::LOCATION)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned),
                    })
                } else {
                    let headers = std::mem::take(resp.headers_mut());
                    Ok(EgressStream {
                        status,
                        headers,
                        body: StreamBody::Reqwest(resp),
                    })
                }
            }
        };
        // Formatted only when debug logging is on.
        let host = checked.url().host_str().unwrap_or_default();
        match &result {
            Ok(r) => tracing::debug!(event = "egress.response", %method, %host, status = %r.status),
            Err(e) => tracing::debug!(event = "egress.error", %method, %host, error = %e),
        }
        result
    }
}

/// The overall deadline of a streamed exchange: a day, i.e. none in practice (the
/// caller going away ends it).
const STREAM_DEADLINE: Duration = Duration::from_secs(24 * 60 * 60);

/// Maps a reqwest error, finding a guard refusal anywhere in its cause chain.
fn map_err(e: reqwest::Error) -> EgressError {
    if let Some(denied) = resolve::find_denied(&e) {
        return denied;
    }
    if e.is_timeout() {
        EgressError::Timeout
    } else if e.is_builder() {
        EgressError::InvalidUrl(describe(e))
    } else if e.is_connect() {
        EgressError::Connect(describe(e))
    } else {
        EgressError::Http(describe(e))
    }
}

/// The error and its causes on one line ("error sending request" alone says nothing),
/// without the URL: its query may hold a code or a token.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cause = c.source();
    }
    msg
}
