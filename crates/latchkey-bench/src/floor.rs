//! The practical floor for a proxy hop: a minimal pass-through written with hyper (a
//! pooled keep-alive client, the Bearer replaced by a fixed one, bodies streamed both
//! ways, no routing, no authentication, no policy). What Latchkey adds over this is what
//! Latchkey itself costs.

use std::convert::Infallible;
use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Starts the floor proxy in front of `upstream` (path kept); its address.
pub(crate) async fn start(upstream: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let client = client.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let client = client.clone();
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
                        let resp = match client.request(Request::from_parts(parts, body)).await {
                            Ok(r) => r.map(http_body_util::Either::Left),
                            Err(_) => {
                                let mut r = Response::new(http_body_util::Either::Right(
                                    http_body_util::Empty::new(),
                                ));
                                *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
                                r
                            }
                        };
                        Ok::<_, Infallible>(resp)
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
