//! The accept loop: the router served over HTTP/1.1 with the connection-level
//! [`Limits`] (issue 15, item 9), for `latchkey serve` and the tests alike.
//!
//! * At most `max_connections` open connections: one more is closed as soon as it is
//!   accepted (never queued), so a flood costs no more descriptors than the cap.
//! * A request head must be complete within `header_read_timeout` of its first byte (of
//!   the accept, for a new connection); slow-header connections are dropped.
//! * A kept-alive connection with no request for `idle_timeout` is closed: hyper's own
//!   header-read timer, which starts whenever hyper waits for a request head.
//! * A request body must arrive whole within `body_timeout` of its head
//!   ([`crate::limits::Deadline`]); the handler answers the typed 408 and hyper closes
//!   the connection, whose body was not read to its end.
//! * `TCP_NODELAY` on every connection; graceful shutdown: no new connections, the open
//!   ones finish their requests (hyper-util's `GracefulShutdown`).
//!
//! `/mcp/{server}` is routed here, ahead of axum's router, when [`serve`] is given an
//! [`App`] from [`app`] (as `latchkey serve` is): it is the one hot path, and matching
//! the path in the router cost about 5,700 instructions a request (issue 18); the
//! router still serves it, the same service, where an [`App`] is built from a bare
//! `Router` (`axum::serve` in some tests).
//!
//! axum's `serve` has none of these knobs, so the loop is hyper's and hyper-util's
//! building blocks. hyper has one timer for "waiting for a request head", so telling a
//! slow head (short deadline) from an idle kept-alive connection (longer one) needs to
//! know when a head's first byte arrived: the small [`Watched`] reader records it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tower::ServiceExt as _;

use crate::limits::{Deadline, Limits};

/// What [`serve`] serves: the router, and the `/mcp/{server}` service to route to
/// ahead of it ([`app`]).
#[derive(Debug, Clone)]
pub struct App {
    router: Router,
    hot: Option<crate::proxy::Route>,
}

impl From<Router> for App {
    /// Everything through the router (which mounts `/mcp/{server}` too).
    fn from(router: Router) -> Self {
        Self { router, hot: None }
    }
}

/// The application for [`serve`]: [`crate::app::router`], with `/mcp/{server}`
/// routed to [`crate::proxy::Route`] before the router is asked.
pub fn app(state: crate::AppState) -> App {
    App {
        router: crate::app::router(state.clone()),
        hot: Some(crate::proxy::Route::new(state)),
    }
}

/// Whether `path` is `/mcp/{server}`: one non-empty segment after `/mcp/`, as the
/// router's own match (a `%2F` in it is still one segment).
fn is_hot(path: &str) -> bool {
    path.strip_prefix("/mcp/")
        .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits for the open
/// connections to finish.
pub async fn serve<F>(
    listener: TcpListener,
    app: impl Into<App>,
    limits: Limits,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let app = app.into();
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            // Over the cap: closed at once, before reading a byte.
            tracing::debug!(
                event = "serve.connection_refused",
                max_connections = limits.max_connections
            );
            drop(tcp);
            continue;
        };
        // Small writes (an SSE event, a short JSON answer) leave at once instead of
        // waiting for the previous segment's acknowledgement (Nagle's algorithm).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(event = "serve.nodelay_failed", error = %e);
        }
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            connection(tcp, app, limits, watcher).await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Accept errors: a connection that went away before it was accepted is nothing; a
/// full descriptor table or the like gets a short pause (as axum's loop does) so the
/// loop does not spin.
async fn accept_failed(e: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(event = "serve.accept_failed", error = %e);
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// One connection: hyper's HTTP/1.1 server with the idle timer, raced against the
/// request-head deadline.
async fn connection(
    tcp: TcpStream,
    app: App,
    limits: Limits,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let state = Arc::new(ConnState::new());
    let io = TokioIo::new(Watched {
        inner: tcp,
        state: state.clone(),
    });
    let requests = state.clone();
    let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let done = InRequest::start(requests.clone());
        let req = req.map(|body| Deadline::new(body, limits.body_timeout));
        let target = match &app.hot {
            Some(hot) if is_hot(req.uri().path()) => Target::Hot(hot.clone()),
            _ => Target::Router(app.router.clone()),
        };
        async move {
            let Ok(resp) = match target {
                Target::Hot(hot) => hot.oneshot(req.map(axum::body::Body::new)).await,
                Target::Router(router) => router.oneshot(req).await,
            };
            Ok::<_, Infallible>(resp.map(|body| crate::limits::Holding { body, _held: done }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // hyper starts this timer whenever it waits for a request head: after a
        // response on a kept-alive connection, that is the idle timeout.
        .header_read_timeout(limits.idle_timeout)
        .serve_connection(io, service);
    tokio::select! {
        result = watcher.watch(conn) => {
            if let Err(e) = result {
                tracing::debug!(event = "serve.connection_error", error = %e);
            }
        }
        () = state.head_overdue(limits.header_read_timeout) => {
            tracing::debug!(event = "serve.header_timeout");
        }
    }
}

/// Where one request goes.
enum Target {
    Hot(crate::proxy::Route),
    Router(Router),
}

/// What the connection is doing, shared by its reader, its service and its watchdog.
#[derive(Debug)]
struct ConnState {
    /// When the connection was accepted; the other instants count from here.
    accepted: tokio::time::Instant,
    /// Requests whose response body is still alive.
    in_request: AtomicUsize,
    /// When the first byte of the pending request head arrived, as milliseconds after
    /// `accepted` plus one; 0 when no head is pending.
    head_started: AtomicU64,
    /// Woken when a head starts.
    head_began: Notify,
}

impl ConnState {
    fn new() -> Self {
        Self {
            accepted: tokio::time::Instant::now(),
            in_request: AtomicUsize::new(0),
            // A new connection owes its first head from the accept.
            head_started: AtomicU64::new(1),
            head_began: Notify::new(),
        }
    }

    fn now_mark(&self) -> u64 {
        u64::try_from(self.accepted.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// Bytes arrived: outside a request, they begin a head.
    fn bytes_read(&self) {
        if self.in_request.load(Ordering::Acquire) == 0
            && self
                .head_started
                .compare_exchange(0, self.now_mark(), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.head_began.notify_one();
        }
    }

    /// Resolves when a request head has been pending for longer than `timeout`.
    async fn head_overdue(&self, timeout: Duration) {
        loop {
            match self.head_started.load(Ordering::Acquire) {
                0 => self.head_began.notified().await,
                mark => {
                    let started = self.accepted + Duration::from_millis(mark - 1);
                    tokio::time::sleep_until(started + timeout).await;
                    if self.head_started.load(Ordering::Acquire) == mark {
                        return;
                    }
                }
            }
        }
    }
}

/// A request in progress, from its complete head until its response body is dropped.
#[derive(Debug)]
struct InRequest(Arc<ConnState>);

impl InRequest {
    fn start(state: Arc<ConnState>) -> Self {
        state.in_request.fetch_add(1, Ordering::AcqRel);
        state.head_started.store(0, Ordering::Release);
        Self(state)
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.in_request.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The socket, telling [`ConnState`] when bytes arrive.
struct Watched {
    inner: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.state.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
