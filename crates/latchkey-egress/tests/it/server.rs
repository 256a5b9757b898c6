//! A tiny HTTP/1.1 test server on 127.0.0.1: counts accepted connections, keeps the last
//! request, answers each connection with one canned response.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy)]
enum Mode {
    /// Answer, then close.
    Answer,
    /// Answer, then keep the connection open without sending more.
    AnswerAndHold,
    /// Accept and never answer.
    Silent,
}

pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    last: Arc<Mutex<String>>,
}

pub(crate) fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

impl Server {
    pub(crate) async fn start(response: String) -> Self {
        Self::spawn(response, Mode::Answer).await
    }

    pub(crate) async fn start_holding(response: String) -> Self {
        Self::spawn(response, Mode::AnswerAndHold).await
    }

    pub(crate) async fn start_silent() -> Self {
        Self::spawn(String::new(), Mode::Silent).await
    }

    async fn spawn(response: String, mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(Mutex::new(String::new()));
        let response: Arc<str> = response.into();
        let (h, l) = (hits.clone(), last.clone());
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                h.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(sock, response.clone(), l.clone(), mode));
            }
        });
        Self { addr, hits, last }
    }

    /// Connections accepted so far.
    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The last request read (head and body), lower-cased header names as sent.
    pub(crate) fn last_request(&self) -> String {
        self.last.lock().unwrap().clone()
    }

    /// Gives a connection that might still be in flight time to be accepted, so a zero
    /// count means "none came" rather than "none yet".
    pub(crate) async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn serve(mut sock: TcpStream, response: Arc<str>, last: Arc<Mutex<String>>, mode: Mode) {
    if let Mode::Silent = mode {
        let mut sink = [0u8; 1024];
        while matches!(sock.read(&mut sink).await, Ok(n) if n > 0) {}
        return;
    }
    *last.lock().unwrap() = read_request(&mut sock).await;
    let _ = sock.write_all(response.as_bytes()).await;
    match mode {
        Mode::AnswerAndHold => tokio::time::sleep(Duration::from_secs(30)).await,
        _ => {
            let _ = sock.shutdown().await;
        }
    }
}

/// Reads the head and a `content-length` body (enough for the requests sent here).
async fn read_request(sock: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text;
            }
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&buf).into_owned(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
