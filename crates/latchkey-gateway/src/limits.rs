//! Resource limits on inbound connections (issue 15, item 9): the `[limits]` settings,
//! the per-principal cap on long-lived streams, and the request-body deadline. The
//! listener that applies the connection-level ones is [`crate::listener`].

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use serde::Deserialize;

use crate::error::ApiError;
use crate::setting::ConfigError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The limits `latchkey serve` applies to its callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A request head must be complete this long after its first byte arrived (or after
    /// the connection was accepted): slow-header connections are closed (default 10 s).
    pub header_read_timeout: Duration,
    /// A kept-alive connection with no request for this long is closed (default 60 s).
    pub idle_timeout: Duration,
    /// A request body must have arrived whole this long after its head: a trickled
    /// body is cut off and its connection closed; the API answers the typed 408
    /// (default 30 s).
    pub body_timeout: Duration,
    /// Open connections at most; one more is closed as soon as it is accepted (default
    /// 1024).
    pub max_connections: usize,
    /// Open `/v1/events` and GET `/mcp`, `/mcp/{server}` streams per principal at most;
    /// one more is the typed 429 `too_many_streams` (default 8).
    pub max_streams_per_principal: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_streams_per_principal: 8,
        }
    }
}

/// `[limits]` in the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileLimits {
    header_read_timeout: Option<FileDuration>,
    idle_timeout: Option<FileDuration>,
    body_timeout: Option<FileDuration>,
    max_connections: Option<u64>,
    max_streams_per_principal: Option<u64>,
}

/// A duration in the file: seconds, or text with a unit (`"500ms"`, `"10s"`, `"2m"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileDuration {
    Secs(u64),
    Text(String),
}

/// The longest timeout accepted: a longer one is a mistake, not a protection.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

impl Limits {
    /// `[limits]` with its `LATCHKEY_*` overrides; errors name the setting.
    pub(crate) fn from_config(
        file: Option<FileLimits>,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let f = file.unwrap_or_default();
        let var = |k: &str| {
            env.get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let bad = |setting: &str, message: &str| ConfigError {
            setting: setting.into(),
            message: message.into(),
        };
        let mut l = Self::default();
        for (env_key, file_key, file_val, slot) in [
            (
                "LATCHKEY_HEADER_READ_TIMEOUT",
                "limits.header_read_timeout",
                f.header_read_timeout,
                &mut l.header_read_timeout,
            ),
            (
                "LATCHKEY_IDLE_TIMEOUT",
                "limits.idle_timeout",
                f.idle_timeout,
                &mut l.idle_timeout,
            ),
            (
                "LATCHKEY_BODY_TIMEOUT",
                "limits.body_timeout",
                f.body_timeout,
                &mut l.body_timeout,
            ),
        ] {
            let given = match (var(env_key), file_val) {
                (Some(v), _) => Some((env_key, crate::setting::parse_duration(&v))),
                (None, Some(FileDuration::Secs(n))) => {
                    Some((file_key, Some(Duration::from_secs(n))))
                }
                (None, Some(FileDuration::Text(t))) => {
                    Some((file_key, crate::setting::parse_duration(&t)))
                }
                (None, None) => None,
            };
            if let Some((key, d)) = given {
                *slot = d
                    .filter(|d| !d.is_zero() && *d <= MAX_TIMEOUT)
                    .ok_or_else(|| {
                        bad(
                            key,
                            "expected a duration from 1ms to 1h: seconds, or a number with ms, s or m (e.g. \"10s\")",
                        )
                    })?;
            }
        }
        for (env_key, file_key, file_val, slot) in [
            (
                "LATCHKEY_MAX_CONNECTIONS",
                "limits.max_connections",
                f.max_connections,
                &mut l.max_connections,
            ),
            (
                "LATCHKEY_MAX_STREAMS_PER_PRINCIPAL",
                "limits.max_streams_per_principal",
                f.max_streams_per_principal,
                &mut l.max_streams_per_principal,
            ),
        ] {
            let given = match (var(env_key), file_val) {
                (Some(v), _) => Some((env_key, v.parse::<u64>().ok())),
                (None, Some(n)) => Some((file_key, Some(n))),
                (None, None) => None,
            };
            if let Some((key, n)) = given {
                *slot = n
                    .filter(|n| (1..=1_000_000).contains(n))
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| bad(key, "expected a whole number from 1 to 1000000"))?;
            }
        }
        Ok(l)
    }
}

/// Open long-lived streams per principal (tenant and subject).
#[derive(Debug)]
pub struct StreamSlots {
    max: usize,
    open: Mutex<HashMap<(String, String), usize>>,
}

impl StreamSlots {
    /// At most `max` streams per principal.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: Mutex::default(),
        }
    }

    fn try_open(self: &Arc<Self>, p: &latchkey_guard::Principal) -> Option<StreamSlot> {
        let key = (p.tenant.as_str().to_owned(), p.subject.as_str().to_owned());
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            slots: self.clone(),
            key,
        })
    }
}

/// One open stream; the slot is freed when the response body is dropped (the stream
/// ended or its caller went away).
#[derive(Debug)]
pub(crate) struct StreamSlot {
    slots: Arc<StreamSlots>,
    key: (String, String),
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Middleware for the stream endpoints, inside the guard: a GET takes one of its
/// principal's stream slots for as long as its response body lives, or is the typed 429
/// `too_many_streams`. Other methods pass untouched.
pub async fn one_stream(
    State(slots): State<Arc<StreamSlots>>,
    req: Request,
    next: Next,
) -> Response {
    if req.method() != http::Method::GET {
        return next.run(req).await;
    }
    let Some(principal) = req.extensions().get::<latchkey_guard::Principal>() else {
        // Behind the guard there is always a principal; without one there is nothing
        // to count by, and the guard has answered already.
        return next.run(req).await;
    };
    let slot = match stream_slot(&slots, principal) {
        Ok(slot) => slot,
        Err(e) => return e.into_response(),
    };
    next.run(req)
        .await
        .map(|body| axum::body::Body::new(Holding { body, _held: slot }))
}

/// One of `p`'s stream slots, or the typed 429: [`one_stream`]'s rule, for the
/// `/mcp/{server}` service outside the layers ([`crate::proxy::Route`]).
pub(crate) fn stream_slot(
    slots: &Arc<StreamSlots>,
    p: &latchkey_guard::Principal,
) -> Result<StreamSlot, ApiError> {
    slots.try_open(p).ok_or_else(|| {
        tracing::info!(event = "limits.too_many_streams", max = slots.max);
        ApiError::TooManyStreams { limit: slots.max }
    })
}

/// A response body that holds something (a stream slot, the listener's in-request
/// mark) until the body is dropped: the answer is done when its body is.
pub(crate) struct Holding<T> {
    pub(crate) body: axum::body::Body,
    pub(crate) _held: T,
}

impl<T: Unpin> HttpBody for Holding<T> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The request body did not arrive whole within [`Limits::body_timeout`].
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within its deadline")]
pub struct BodyTimeout;

/// Whether `e`, or any error in its chain, is a [`BodyTimeout`].
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<BodyTimeout>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// A request body with a whole-body deadline. Written here because tower-http's
/// `RequestBodyTimeout` bounds the wait for each frame, which a body trickled a byte at
/// a time never exceeds; this one bounds the whole body. The timer is created on the
/// first poll that would wait, so a request whose body is never read costs nothing.
pub(crate) struct Deadline<B> {
    inner: B,
    deadline: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> Deadline<B> {
    pub(crate) fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            deadline: tokio::time::Instant::now() + timeout,
            sleep: None,
        }
    }
}

impl<B> HttpBody for Deadline<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn limits_have_safe_defaults_and_name_their_setting() {
        let c = crate::Config::parse("", &env(&[])).unwrap();
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.limits.header_read_timeout, Duration::from_secs(10));
        let c = crate::Config::parse(
            "[limits]\nheader_read_timeout = \"500ms\"\nidle_timeout = 5\nbody_timeout = \"1m\"\nmax_connections = 10\nmax_streams_per_principal = 2",
            &env(&[("LATCHKEY_MAX_CONNECTIONS", "20")]),
        )
        .unwrap();
        assert_eq!(
            c.limits,
            Limits {
                header_read_timeout: Duration::from_millis(500),
                idle_timeout: Duration::from_secs(5),
                body_timeout: Duration::from_secs(60),
                max_connections: 20,
                max_streams_per_principal: 2,
            }
        );
        for (toml, e, setting) in [
            (
                "[limits]\nheader_read_timeout = 0",
                vec![],
                "limits.header_read_timeout",
            ),
            (
                "[limits]\nidle_timeout = \"soon\"",
                vec![],
                "limits.idle_timeout",
            ),
            (
                "[limits]\nbody_timeout = \"2h\"",
                vec![],
                "limits.body_timeout",
            ),
            (
                "",
                vec![("LATCHKEY_BODY_TIMEOUT", "-1")],
                "LATCHKEY_BODY_TIMEOUT",
            ),
            (
                "[limits]\nmax_connections = 0",
                vec![],
                "limits.max_connections",
            ),
            (
                "",
                vec![("LATCHKEY_MAX_STREAMS_PER_PRINCIPAL", "x")],
                "LATCHKEY_MAX_STREAMS_PER_PRINCIPAL",
            ),
        ] {
            let got = crate::Config::parse(toml, &env(&e)).unwrap_err();
            assert_eq!(got.setting, setting, "{toml} {e:?}");
        }
        let e = crate::Config::parse("[limits]\nmax_conections = 1", &env(&[])).unwrap_err();
        assert!(e.message.contains("max_conections"), "{e}");
    }
}
