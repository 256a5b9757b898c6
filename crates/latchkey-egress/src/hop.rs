//! The proxy's hop: one request relayed as it is, on a pooled hyper client, with the
//! same guard as every other road out.
//!
//! Why not reqwest here, as everywhere else: a request through `/mcp/{server}` is the
//! one hot path, and reqwest spent about a third of the proxy's instructions on work
//! this hop never needs (its redirect layer, which Latchkey turns off; parsing the URL
//! again into its own types per request; copying the header map; issue 18). The hop
//! keeps what the guard demands and nothing else:
//!
//! * the URL passes [`crate::Egress::check_url`] (memoised), and the request URI is the
//!   one derived once from that checked URL;
//! * names are resolved by the same guarded resolution as reqwest's hook
//!   ([`crate::resolve::guarded_addrs`]): every address classified, exactly those
//!   connected to, so there is no rebinding gap;
//! * a redirect is never followed ([`EgressError::Redirect`], body unread);
//! * a connect timeout, a deadline for the response head; the body is the caller's to
//!   stream (an MCP SSE stream may last minutes);
//! * no environment proxy; TLS with the platform's verifier (as reqwest), plain http
//!   only where the loopback relaxation allows it (a second wall behind `check_url`);
//! * one client per URL source, so pools never mix connections admitted under
//!   different rules.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;

use crate::resolve::{NameResolver, guarded_addrs};
use crate::{EgressConfig, EgressError, LoopbackPolicy, UrlSource};

/// A request body for the hop: whole bytes or a stream, boxed once.
pub type HopBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A whole body for [`crate::Egress::hop`].
pub fn hop_body(bytes: Bytes) -> HopBody {
    use http_body_util::BodyExt as _;
    http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A streamed body for [`crate::Egress::hop`] (the caller's upload, relayed as it
/// arrives).
pub fn hop_stream<B>(body: B) -> HopBody
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt as _;
    body.map_err(Into::into).boxed_unsync()
}

/// The pooled clients, one per URL source.
#[derive(Clone)]
pub(crate) struct HopClients {
    operator: Client<HttpsConnector<HttpConnector<HopResolve>>, HopBody>,
    remote: Client<HttpsConnector<HttpConnector<HopResolve>>, HopBody>,
    /// The configured `User-Agent`, as a header value once rather than per request.
    user_agent: Option<http::HeaderValue>,
}

impl HopClients {
    /// Builds both clients; TLS roots from the platform, as reqwest's.
    pub(crate) fn new(
        cfg: &Arc<EgressConfig>,
        resolver: &Arc<dyn NameResolver>,
    ) -> Result<Self, String> {
        use rustls_platform_verifier::BuilderVerifierExt as _;
        // The provider named, not the process default: nothing here depends on which
        // other crates enabled which rustls backend.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_platform_verifier())
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .with_no_client_auth();
        let build = |source| {
            let mut http = HttpConnector::new_with_resolver(HopResolve {
                resolver: resolver.clone(),
                source,
                cfg: cfg.clone(),
            });
            http.set_connect_timeout(Some(cfg.connect_timeout));
            http.set_nodelay(true);
            // The scheme is the builder's to check (below), not the TCP connector's.
            http.enforce_http(false);
            let tls = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls.clone());
            let https = if cfg.loopback == LoopbackPolicy::Deny {
                tls.https_only()
            } else {
                tls.https_or_http()
            }
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
            Client::builder(TokioExecutor::new()).build(https)
        };
        Ok(Self {
            operator: build(UrlSource::Operator),
            remote: build(UrlSource::Remote),
            user_agent: http::HeaderValue::from_str(&cfg.user_agent).ok(),
        })
    }

    fn for_source(
        &self,
        source: UrlSource,
    ) -> &Client<HttpsConnector<HttpConnector<HopResolve>>, HopBody> {
        match source {
            UrlSource::Operator => &self.operator,
            UrlSource::Remote => &self.remote,
        }
    }
}

/// hyper's resolver hook: [`guarded_addrs`], as for reqwest.
#[derive(Clone)]
pub(crate) struct HopResolve {
    resolver: Arc<dyn NameResolver>,
    source: UrlSource,
    cfg: Arc<EgressConfig>,
}

impl tower_service::Service<Name> for HopResolve {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let (resolver, source, cfg) = (self.resolver.clone(), self.source, self.cfg.clone());
        Box::pin(async move {
            let addrs = guarded_addrs(&*resolver, name.as_str(), source, &cfg).await?;
            Ok(addrs.into_iter())
        })
    }
}

impl crate::Egress {
    /// Relays one request to `url` (checked as [`crate::Egress::check_url`] does, from
    /// `source`) with `parts`' method and headers and `body`, on the hop's pooled
    /// client; the response as soon as its head arrives, within `head_timeout`. A 3xx is
    /// [`EgressError::Redirect`], never followed.
    pub async fn hop(
        &self,
        url: &str,
        source: UrlSource,
        method: http::Method,
        headers: http::HeaderMap,
        body: HopBody,
        head_timeout: Duration,
    ) -> Result<crate::EgressStream, EgressError> {
        let checked = self.check_url(url, source)?;
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = checked.uri().clone();
        *req.headers_mut() = headers;
        let clients = self.hop_clients()?;
        if !req.headers().contains_key(http::header::USER_AGENT)
            && let Some(v) = &clients.user_agent
        {
            req.headers_mut()
                .insert(http::header::USER_AGENT, v.clone());
        }
        let sent = clients.for_source(source).request(req);
        let result = match tokio::time::timeout(head_timeout, sent).await {
            Err(_) => Err(EgressError::Timeout),
            Ok(Err(e)) => Err(map_hop_err(&e)),
            Ok(Ok(resp)) if resp.status().is_redirection() => Err(EgressError::Redirect {
                status: resp.status().as_u16(),
                location: resp
                    .headers()
                    .get(http::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            }),
            Ok(Ok(resp)) => {
                let (parts, body) = resp.into_parts();
                Ok(crate::EgressStream {
                    status: parts.status,
                    headers: parts.headers,
                    body: crate::StreamBody::Hop(body),
                })
            }
        };
        if tracing::enabled!(tracing::Level::DEBUG) {
            let host = checked.url().host_str().unwrap_or_default();
            match &result {
                Ok(r) => tracing::debug!(event = "egress.hop", %host, status = %r.status),
                Err(e) => tracing::debug!(event = "egress.hop_error", %host, error = %e),
            }
        }
        result
    }
}

/// A hyper client error as the egress error: a guard refusal anywhere in its causes is
/// [`EgressError::AddressDenied`].
fn map_hop_err(e: &hyper_util::client::legacy::Error) -> EgressError {
    if let Some(denied) = crate::resolve::find_denied(e) {
        return denied;
    }
    let mut msg = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cause = c.source();
    }
    if e.is_connect() {
        EgressError::Connect(msg)
    } else {
        EgressError::Http(msg)
    }
}
