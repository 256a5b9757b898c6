//! `/metrics` in the Prometheus text format (the `metrics` facade with its Prometheus
//! recorder), and the request counter every route shares. Metric names are stable:
//! `latchkey_http_requests_total{route,status}`, `latchkey_http_request_seconds{route}`,
//! `latchkey_oauth_callbacks_total{outcome}`, `latchkey_oauth_flows_started_total{kind}`,
//! `latchkey_deposits_total`.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
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
/// path, which could carry ids).
pub async fn count(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let started = Instant::now();
    let resp = next.run(req).await;
    let (counter, histogram) = request_handles(route, resp.status().as_u16());
    counter.increment(1);
    histogram.record(started.elapsed().as_secs_f64());
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

fn request_handles(route: &str, status: u16) -> (metrics::Counter, metrics::Histogram) {
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
