//! Outbound requests and capped responses. Their `Debug` output never shows header
//! values, bodies, query strings or userinfo: those carry codes, tokens and secrets.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::policy::UrlSource;

/// A URL reduced to what is safe to log: everything before `?` or `#`, or a marker when
/// that part still holds an `@` (userinfo, which may carry a password).
pub(crate) fn loggable_url(raw: &str) -> &str {
    let base = raw.split(['?', '#']).next().unwrap_or_default();
    if base.contains('@') {
        "[redacted]"
    } else {
        base
    }
}

/// One outbound request.
pub struct EgressRequest {
    /// Method.
    pub method: Method,
    /// Absolute URL (checked by [`crate::Egress::send`]).
    pub url: String,
    /// Where the URL came from; decides the private-range rule.
    pub source: UrlSource,
    /// Headers (credentials included: never printed).
    pub headers: HeaderMap,
    /// Body (never printed).
    pub body: Option<Bytes>,
    /// The most response-body bytes to read.
    pub body_limit: usize,
    /// Overrides [`crate::EgressConfig::request_timeout`].
    pub timeout: Option<Duration>,
}

impl fmt::Debug for EgressRequest {
    /// Method, URL without query, and header names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressRequest")
            .field("method", &self.method)
            .field("url", &loggable_url(&self.url))
            .field("source", &self.source)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("body_len", &self.body.as_ref().map(Bytes::len))
            .field("body_limit", &self.body_limit)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl EgressRequest {
    fn new(method: Method, url: impl Into<String>, source: UrlSource, body_limit: usize) -> Self {
        Self {
            method,
            url: url.into(),
            source,
            headers: HeaderMap::new(),
            body: None,
            body_limit,
            timeout: None,
        }
    }

    /// A GET.
    pub fn get(url: impl Into<String>, source: UrlSource, body_limit: usize) -> Self {
        Self::new(Method::GET, url, source, body_limit)
    }

    /// A DELETE without a body (e.g. releasing an MCP session); the answer's body is
    /// not wanted, so it is capped small.
    pub fn delete(url: impl Into<String>, source: UrlSource) -> Self {
        Self::new(Method::DELETE, url, source, 4 * 1024)
    }

    /// A POST of `application/x-www-form-urlencoded` pairs.
    pub fn post_form(
        url: impl Into<String>,
        source: UrlSource,
        pairs: &[(&str, &str)],
        body_limit: usize,
    ) -> Self {
        // Encoding string pairs cannot fail (serde_urlencoded only refuses non-pair
        // shapes), so the default is unreachable; it keeps this constructor infallible.
        let body = serde_urlencoded::to_string(pairs).unwrap_or_default();
        Self::new(Method::POST, url, source, body_limit)
            .header(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            )
            .with_body(body)
    }

    /// A POST of JSON.
    pub fn post_json(
        url: impl Into<String>,
        source: UrlSource,
        json: &serde_json::Value,
        body_limit: usize,
    ) -> Self {
        Self::new(Method::POST, url, source, body_limit)
            .header(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .with_body(json.to_string())
    }

    /// Adds a header (replacing one of the same name).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Sets a per-request timeout (overrides the configured one).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// A non-redirect response whose body was read within the cap.
pub struct EgressResponse {
    /// Status (never 3xx: those are [`crate::EgressError::Redirect`]).
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body, at most the request's `body_limit` bytes.
    pub body: Bytes,
}

impl fmt::Debug for EgressResponse {
    /// Status, header names and body length: token responses carry tokens.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressResponse")
            .field("status", &self.status)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl EgressResponse {
    /// The body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// A header value as text (`None` when absent or not visible ASCII).
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loggable_url_drops_query_fragment_and_userinfo() {
        assert_eq!(
            loggable_url("https://as.example/cb?code=x#y"),
            "https://as.example/cb"
        );
        assert_eq!(loggable_url("/cb#code=x"), "/cb");
        assert_eq!(loggable_url("https://u:pw@as.example/"), "[redacted]");
    }

    #[test]
    fn response_debug_hides_the_body() {
        let r = EgressResponse {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(br#"{"access_token":"at-secret"}"#),
        };
        let d = format!("{r:?}");
        assert!(!d.contains("at-secret"), "{d}");
        assert!(d.contains("body_len"));
    }
}
