//! `/metrics` in the Prometheus text format (the `metrics` facade with its Prometheus
//! recorder), and the request counter every route shares. Metric names are stable:
//! `latchkey_http_requests_total{route,status}`, `latchkey_http_request_seconds{route}`,
//! `latchkey_oauth_callbacks_total{outcome}`, `latchkey_oauth_flows_started_total{kind}`,
//! `latchkey_deposits_total`.
//!
//! The request log: one `http.request` line at info per API and MCP request (`/v1/…`,
//! `/mcp`, `/mcp/{server}`), written by [`count`] when the response head is ready:
//! method, route template (never the raw path or its query), status, duration in
//! milliseconds (to the response head: a stream's life is not counted), the principal's
//! subject (put in the response's extensions by [`note_principal`], a layer inside the
//! guard's; `-` when the guard refused), the server id when the route names one, and
//! the MCP endpoint's request id when it gave one. No body, header or credential.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::state::AppState;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle (`None`
/// if another recorder was installed first).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new().install_recorder().ok()?;
            // The recorder keeps every histogram sample until upkeep drains it; without a
            // scrape that is memory growing with every request (the proxy soak showed
            // ~35 bytes a request). A thread of its own, so it runs whatever runtime
            // (or none) the caller has.
            let h = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("latchkey-metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        h.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(event = "metrics.upkeep_unavailable", error = %e);
            }
            Some(handle)
        })
        .clone()
}

/// How often histogram samples are folded into their summaries.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// `GET /metrics`.
pub async fn render(State(s): State<AppState>) -> Response {
    match &s.metrics {
        Some(h) => {
            let mut r = (StatusCode::OK, h.render()).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}

/// Middleware: counts and times every request by its route template (never the raw
/// path, which could carry ids), and writes the request log line of an API or MCP
/// request (see the module's documentation).
pub async fn count(req: Request, next: Next) -> Response {
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let logged = is_api_or_mcp(matched.as_ref().map_or(req.uri().path(), |m| m.as_str()));
    let method = logged.then(|| req.method().clone());
    let (req, server) = if logged && names_a_server(route) {
        let (mut parts, body) = req.into_parts();
        let server = RawPathParams::from_request_parts(&mut parts, &())
            .await
            .ok()
            .and_then(|params| {
                params
                    .iter()
                    .find(|(k, _)| matches!(*k, "id" | "server" | "server_id"))
                    .map(|(_, v)| v.to_owned())
            });
        (Request::from_parts(parts, body), server)
    } else {
        (req, None)
    };
    let started = Instant::now();
    let resp = next.run(req).await;
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    let (counter, histogram) = request_handles(route, status);
    counter.increment(1);
    histogram.record(elapsed.as_secs_f64());
    if let Some(method) = method {
        let principal = resp.extensions().get::<Caller>().map(|c| c.0.as_str());
        let request_id = resp
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok());
        tracing::info!(
            event = "http.request",
            method = %method,
            route,
            status,
            duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            principal = principal.unwrap_or("-"),
            server_id = server.as_deref(),
            request_id,
        );
    }
    resp
}

/// Whether a route template (or, unmatched, a path) is the API's or an MCP endpoint's.
fn is_api_or_mcp(path: &str) -> bool {
    path.starts_with("/v1/") || path == "/mcp" || path.starts_with("/mcp/")
}

/// Whether a route template has a server id among its parameters.
fn names_a_server(route: &str) -> bool {
    route.starts_with("/v1/servers/{id}")
        || route.contains("{server}")
        || route.contains("{server_id}")
}

/// The subject of the principal a request was answered for, carried in the response's
/// extensions from inside the guard's layer to [`count`] outside it.
#[derive(Debug, Clone)]
pub struct Caller(String);

/// Middleware placed inside the guard's (as a route layer added before it): notes the
/// principal's subject in the response for the request log.
pub async fn note_principal(req: Request, next: Next) -> Response {
    let subject = req
        .extensions()
        .get::<latchkey_guard::Principal>()
        .map(|p| p.subject.as_str().to_owned());
    let mut resp = next.run(req).await;
    if let Some(subject) = subject {
        resp.extensions_mut().insert(Caller(subject));
    }
    resp
}

/// The handles of one route's request metrics.
#[derive(Default)]
struct RouteHandles {
    by_status: HashMap<u16, metrics::Counter>,
    seconds: Option<metrics::Histogram>,
}

/// Handles by route template, registered once each: building a metric's key with its
/// labels on every request (two `String`s, a label vector, a registry lookup) was a
/// measurable part of the proxy's cost. Bounded by routes × statuses seen.
static ROUTES: OnceLock<RwLock<HashMap<String, RouteHandles>>> = OnceLock::new();

pub(crate) fn request_handles(route: &str, status: u16) -> (metrics::Counter, metrics::Histogram) {
    let routes = ROUTES.get_or_init(RwLock::default);
    {
        let map = routes.read().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = map.get(route)
            && let (Some(c), Some(s)) = (h.by_status.get(&status), &h.seconds)
        {
            return (c.clone(), s.clone());
        }
    }
    let mut map = routes.write().unwrap_or_else(|p| p.into_inner());
    let h = map.entry(route.to_owned()).or_default();
    let owned = route.to_owned();
    let counter = h
        .by_status
        .entry(status)
        .or_insert_with(|| {
            metrics::counter!("latchkey_http_requests_total", "route" => owned.clone(), "status" => status.to_string())
        })
        .clone();
    let seconds = h
        .seconds
        .get_or_insert_with(
            || metrics::histogram!("latchkey_http_request_seconds", "route" => owned),
        )
        .clone();
    (counter, seconds)
}
