//! A closed-loop load generator: `clients` workers, each on its own keep-alive HTTP/1
//! connection, sending the next request as soon as the previous answer is read. Latency
//! is measured per request from the first byte written to the last byte read.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1;
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What one request looks like.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Where to connect.
    pub(crate) addr: SocketAddr,
    /// The request path.
    pub(crate) path: String,
    /// `Authorization` value, if any.
    pub(crate) authorization: Option<String>,
    /// The JSON-RPC body.
    pub(crate) body: Bytes,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// Latencies in microseconds, sorted.
    pub(crate) micros: Vec<u32>,
    /// Requests that failed (transport error or a status other than 200).
    pub(crate) errors: u64,
    /// The measured duration.
    pub(crate) elapsed: Duration,
}

impl Outcome {
    /// The `q` quantile (0..=1) in microseconds.
    pub(crate) fn quantile(&self, q: f64) -> f64 {
        if self.micros.is_empty() {
            return f64::NAN;
        }
        let last = self.micros.len() - 1;
        // Nearest rank: the index is within bounds by construction.
        let i = ((last as f64) * q).round() as usize;
        f64::from(self.micros.get(i.min(last)).copied().unwrap_or(0))
    }

    /// Completed requests per second.
    pub(crate) fn throughput(&self) -> f64 {
        self.micros.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// Merges runs (latencies pooled, durations added).
    pub(crate) fn merge(runs: &[Outcome]) -> Outcome {
        let mut micros: Vec<u32> = runs.iter().flat_map(|r| r.micros.iter().copied()).collect();
        micros.sort_unstable();
        Outcome {
            micros,
            errors: runs.iter().map(|r| r.errors).sum(),
            elapsed: runs.iter().map(|r| r.elapsed).sum(),
        }
    }
}

async fn worker(target: Target, until: Instant) -> anyhow::Result<(Vec<u32>, u64)> {
    let stream = TcpStream::connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let (mut send, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let host = target.addr.to_string();
    let mut micros = Vec::with_capacity(100_000);
    let mut errors = 0;
    while Instant::now() < until {
        let mut rb = Request::builder()
            .method(Method::POST)
            .uri(&target.path)
            .header(header::HOST, &host)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream");
        if let Some(a) = &target.authorization {
            rb = rb.header(header::AUTHORIZATION, a);
        }
        let req = rb.body(Full::new(target.body.clone()))?;
        send.ready().await?;
        let started = Instant::now();
        match send.send_request(req).await {
            Ok(resp) => {
                let ok = resp.status() == 200;
                let body = resp.into_body().collect().await;
                if ok && body.is_ok() {
                    let us = started.elapsed().as_micros();
                    micros.push(u32::try_from(us).unwrap_or(u32::MAX));
                } else {
                    errors += 1;
                }
            }
            Err(_) => {
                errors += 1;
                break; // the connection is gone
            }
        }
    }
    Ok((micros, errors))
}

/// Runs `clients` workers against `target` for `duration`.
pub(crate) async fn run(
    target: &Target,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let until = started + duration;
    let workers: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(worker(target.clone(), until)))
        .collect();
    let mut micros = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (m, e) = w.await??;
        micros.extend(m);
        errors += e;
    }
    let elapsed = started.elapsed();
    micros.sort_unstable();
    Ok(Outcome {
        micros,
        errors,
        elapsed,
    })
}
