//! The practical floor for a proxy hop: a minimal pass-through written with hyper (a
//! pooled keep-alive client, the Bearer replaced by a fixed one, bodies streamed both
//! ways, no routing, no authentication, no policy). What Latchkey adds over this is what
//! Latchkey itself costs.
//!
//! [`Client::Reqwest`] swaps the outbound hyper client for reqwest (Latchkey's egress
//! client today), everything else equal, to show what that choice costs on its own.
//!
//! [`Variant`] builds the same pass-through in cheaper shapes (issue 18): a
//! current-thread runtime in place of the multi-thread one, an upstream connection per
//! downstream connection driven inside the downstream connection's own task (no pool,
//! no spawned client task), and hyper's `http1::Builder` options. Their instruction
//! counts (`latchkey-bench proxy --callgrind N`) tell what a hyper-based hop can cost at
//! best, and so whether Latchkey can reach 1.5 × nginx on hyper at all.

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

/// The shape of the floor proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Variant {
    /// The reference: a multi-thread runtime, hyper-util's pooled client (a spawned task
    /// per upstream connection), a task per downstream connection.
    Pooled,
    /// The same on a current-thread runtime: no wake-ups across worker threads.
    PooledCt,
    /// Multi-thread runtime; each downstream connection opens its own upstream
    /// connection and drives it in its own task (`hyper::client::conn::http1`, no pool,
    /// no spawned connection task).
    Conn,
    /// [`Variant::Conn`] on a current-thread runtime.
    ConnCt,
    /// [`Variant::ConnCt`] with hyper's `http1::Builder` options set for this workload:
    /// no `Date` header, flattened writes (one buffer, one `write`), a small buffer cap.
    ConnCtTuned,
}

impl Variant {
    /// Whether this variant runs on a current-thread runtime.
    pub(crate) fn current_thread(self) -> bool {
        matches!(self, Self::PooledCt | Self::ConnCt | Self::ConnCtTuned)
    }

    /// Its name on the command line.
    pub(crate) fn arg(self) -> &'static str {
        match self {
            Self::Pooled => "pooled",
            Self::PooledCt => "pooled-ct",
            Self::Conn => "conn",
            Self::ConnCt => "conn-ct",
            Self::ConnCtTuned => "conn-ct-tuned",
        }
    }

    /// Every variant, the reference first.
    pub(crate) const ALL: [Variant; 5] = [
        Self::Pooled,
        Self::PooledCt,
        Self::Conn,
        Self::ConnCt,
        Self::ConnCtTuned,
    ];
}

/// Starts the floor proxy of shape `variant` (see [`Variant`]; the runtime is the
/// caller's) on `listen` in front of `upstream` (path kept); its address.
pub(crate) async fn start(
    listen: SocketAddr,
    upstream: SocketAddr,
    outbound: Client,
    variant: Variant,
) -> anyhow::Result<SocketAddr> {
    if matches!(
        variant,
        Variant::Conn | Variant::ConnCt | Variant::ConnCtTuned
    ) {
        return start_per_connection(listen, upstream, variant == Variant::ConnCtTuned).await;
    }
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

/// The per-connection shape: every downstream connection gets one upstream connection,
/// and one task drives both (the server connection and the client connection raced in a
/// `select!`), so a request crosses no task boundary and no pool.
async fn start_per_connection(
    listen: SocketAddr,
    upstream: SocketAddr,
    tuned: bool,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let host = header::HeaderValue::from_str(&upstream.to_string())?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let host = host.clone();
            tokio::spawn(async move {
                let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = up.set_nodelay(true);
                let mut cb = hyper::client::conn::http1::Builder::new();
                if tuned {
                    cb.writev(false);
                }
                let Ok((send, conn)) = cb.handshake::<_, Incoming>(TokioIo::new(up)).await else {
                    return;
                };
                // http1 serves one request at a time, so the lock is never contended; it
                // is only what lets the `Fn` service reach the one `SendRequest`.
                let send = std::sync::Arc::new(std::sync::Mutex::new(send));
                let svc = service_fn(move |req: Request<Incoming>| {
                    let send = send.clone();
                    let host = host.clone();
                    async move {
                        let (mut parts, body) = req.into_parts();
                        parts.headers.insert(
                            header::AUTHORIZATION,
                            header::HeaderValue::from_static("Bearer floor-token"),
                        );
                        parts.headers.insert(header::HOST, host);
                        let ready = std::future::poll_fn(|cx| match send.lock() {
                            Ok(mut s) => s.poll_ready(cx),
                            Err(_) => std::task::Poll::Ready(Ok(())),
                        })
                        .await;
                        let sent = match (ready, send.lock()) {
                            (Ok(()), Ok(mut s)) => {
                                Some(s.send_request(Request::from_parts(parts, body)))
                            }
                            _ => None,
                        };
                        let resp = match sent {
                            Some(f) => f.await.ok(),
                            None => None,
                        };
                        let resp = match resp {
                            Some(r) => r.map(http_body_util::Either::Left),
                            None => {
                                let mut r = Response::new(http_body_util::Either::Right(
                                    http_body_util::Full::default(),
                                ));
                                *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
                                r
                            }
                        };
                        Ok::<Response<Out>, Infallible>(resp)
                    }
                });
                let mut sb = http1::Builder::new();
                if tuned {
                    sb.auto_date_header(false)
                        .writev(false)
                        .max_buf_size(16 * 1024);
                }
                let server = sb.serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = server => {}
                    _ = conn => {}
                }
            });
        }
    });
    Ok(addr)
}
