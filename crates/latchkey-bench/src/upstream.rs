//! A minimal upstream MCP server and token endpoint, as cheap as we can make them so the
//! measurement is of the hop in front of it: `POST /mcp` answers `tools/call` with the
//! `text` argument, anything else with an empty result (under `/sse/…` the same answer
//! as one server-sent event); without a Bearer it answers 401
//! with a challenge. `POST /token` hands out a day-long access token.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Counters the harness reads.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Token grants served.
    pub(crate) grants: AtomicU64,
    /// MCP requests served.
    pub(crate) mcp: AtomicU64,
}

/// Starts the server on a free loopback port; its address and counters.
pub(crate) async fn start() -> anyhow::Result<(SocketAddr, Arc<Counters>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let c = c.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(req, c.clone()));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((addr, counters))
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(
    req: Request<Incoming>,
    counters: Arc<Counters>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer "));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if path == "/token" {
        let n = counters.grants.fetch_add(1, Ordering::Relaxed);
        return Ok(json_response(
            StatusCode::OK,
            &json!({"access_token": format!("bench-at-{n}"), "token_type": "Bearer",
                    "expires_in": 86_400, "refresh_token": format!("bench-rt-{n}")}),
        ));
    }
    counters.mcp.fetch_add(1, Ordering::Relaxed);
    if !bearer {
        let mut r = json_response(StatusCode::UNAUTHORIZED, &json!({"error": "unauthorized"}));
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        return Ok(r);
    }
    let msg: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(id) = msg.get("id").cloned() else {
        return Ok(Response::builder()
            .status(StatusCode::ACCEPTED)
            .body(Full::new(Bytes::new()))
            .unwrap_or_default());
    };
    let result = match msg.get("method").and_then(Value::as_str) {
        Some("tools/call") => {
            let text = msg
                .pointer("/params/arguments/text")
                .cloned()
                .unwrap_or(Value::Null);
            json!({"content": [{"type": "text", "text": text}], "isError": false})
        }
        Some("initialize") => {
            json!({"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                                     "serverInfo": {"name": "bench-upstream", "version": "1"}})
        }
        _ => json!({}),
    };
    let answer = json!({"jsonrpc": "2.0", "id": id, "result": result});
    if path.starts_with("/sse/") {
        // One event, as the TypeScript SDK's servers answer by default.
        let mut r = Response::new(Full::new(Bytes::from(format!(
            "event: message\ndata: {answer}\n\n"
        ))));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/event-stream"),
        );
        return Ok(r);
    }
    Ok(json_response(StatusCode::OK, &answer))
}
