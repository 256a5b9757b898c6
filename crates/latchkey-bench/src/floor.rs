//! The practical floor for a proxy hop: a minimal pass-through written with hyper (a
//! pooled keep-alive client, the Bearer replaced by a fixed one, bodies streamed both
//! ways, no routing, no authentication, no policy). What Latchkey adds over this is what
//! Latchkey itself costs.
//!
//! [`Client::Reqwest`] swaps the outbound hyper client for reqwest (Latchkey's egress
//! client today), everything else equal, to show what that choice costs on its own.

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, Uri, header};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// The outbound client of the floor proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Client {
    /// hyper-util's pooled client.
    Hyper,
    /// reqwest (bodies read whole: the requests and answers here are small).
    Reqwest,
}

type Out = http_body_util::Either<Incoming, http_body_util::Full<bytes::Bytes>>;

/// Forwards with reqwest.
async fn via_reqwest(
    rc: &reqwest::Client,
    parts: hyper::http::request::Parts,
    body: Incoming,
) -> Option<Response<Out>> {
    let body = body.collect().await.ok()?.to_bytes();
    let r = rc
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .ok()?;
    let mut out = Response::builder().status(r.status());
    if let Some(h) = out.headers_mut() {
        *h = r.headers().clone();
    }
    let bytes = r.bytes().await.ok()?;
    out.body(http_body_util::Either::Right(http_body_util::Full::new(
        bytes,
    )))
    .ok()
}

/// Starts the floor proxy on `listen` in front of `upstream` (path kept); its address.
pub(crate) async fn start(
    listen: SocketAddr,
    upstream: SocketAddr,
    outbound: Client,
) -> anyhow::Result<SocketAddr> {
    let rc = reqwest::Client::builder().no_proxy().build()?;
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HyperClient<HttpConnector, Incoming> =
        HyperClient::builder(TokioExecutor::new()).build(connector);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (client, rc) = (client.clone(), rc.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (client, rc) = (client.clone(), rc.clone());
                    async move {
                        let (mut parts, body) = req.into_parts();
                        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                        parts.uri =
                            Uri::try_from(format!("http://{upstream}{path}")).unwrap_or_default();
                        parts.headers.insert(
                            header::AUTHORIZATION,
                            header::HeaderValue::from_static("Bearer floor-token"),
                        );
                        parts.headers.remove(header::HOST);
                        let resp = match outbound {
                            Client::Hyper => client
                                .request(Request::from_parts(parts, body))
                                .await
                                .ok()
                                .map(|r| r.map(http_body_util::Either::Left)),
                            Client::Reqwest => via_reqwest(&rc, parts, body).await,
                        };
                        let resp = resp.unwrap_or_else(|| {
                            let mut r = Response::new(http_body_util::Either::Right(
                                http_body_util::Full::default(),
                            ));
                            *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
                            r
                        });
                        Ok::<Response<Out>, Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}
