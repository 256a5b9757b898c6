//! `Host` and `Origin` allow-lists (R-RS-15): blocks DNS rebinding against the hosted
//! endpoint and bounds the Host-derived `resource` of R-RS-14. Pure functions.
//!
//! * `Host` must match an allowed entry: `name` (any port) or `name:port`, compared
//!   case-insensitively. A missing or malformed `Host` is refused.
//! * A missing `Origin` is allowed (non-browser clients).
//! * With an origin allow-list, `Origin` must equal an entry (case-insensitively).
//! * Without one, only loopback origins (`localhost`, `127.0.0.1`, `[::1]`) and origins
//!   whose host equals the request's host are allowed. `Origin: null` is refused unless
//!   listed.
//!
//! Latchkey itself always configures a list: its own origins ([`url_origin`] of its
//! public URL and [`listen_origins`] of its listen address), so no other page, not even
//! one on another loopback port, can drive its API from a browser (issue 15).

use std::net::SocketAddr;

use http::uri::{Authority, Uri};

use crate::error::GuardError;

/// Loopback host names accepted by [`HostOriginPolicy::loopback`] and as origins when no
/// origin allow-list is configured.
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// Which `Host` and `Origin` values are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostOriginPolicy {
    /// Allowed `Host` values: `name` (any port) or `name:port`.
    pub allowed_hosts: Vec<String>,
    /// Allowed `Origin` values (`scheme://host[:port]`); `None` means loopback origins
    /// and same-host origins only.
    pub allowed_origins: Option<Vec<String>>,
}

impl HostOriginPolicy {
    /// Loopback names on any port, no origin list.
    pub fn loopback() -> Self {
        Self {
            allowed_hosts: LOOPBACK_HOSTS.iter().map(|h| (*h).to_owned()).collect(),
            allowed_origins: None,
        }
    }

    /// Loopback names on any port, and only `origins` as `Origin`: the local
    /// single-user mode, trusting its own pages and no other.
    pub fn loopback_for(origins: Vec<String>) -> Self {
        Self {
            allowed_origins: Some(origins),
            ..Self::loopback()
        }
    }

    /// Whether `host` (a `Host` header value) is allowed.
    pub fn host_allowed(&self, host: &str) -> bool {
        let Some(got) = parse_host(host) else {
            return false;
        };
        // The request's `Host` is parsed (and so validated) by `http`; the entries are
        // the operator's, split in place: parsing each of them again on every request
        // was a measurable part of the proxy's cost (issue 18).
        self.allowed_hosts.iter().any(|entry| {
            entry_parts(entry).is_some_and(|(name, port)| {
                name.eq_ignore_ascii_case(got.host())
                    && port.is_none_or(|p| got.port_u16() == Some(p))
            })
        })
    }

    /// Whether `origin` is allowed for a request whose (already allowed) `Host` is `host`.
    pub fn origin_allowed(&self, origin: &str, host: &str) -> bool {
        if let Some(list) = &self.allowed_origins {
            return list.iter().any(|o| o.eq_ignore_ascii_case(origin.trim()));
        }
        let Some(origin_host) = origin_authority(origin) else {
            return false;
        };
        let origin_host = origin_host.host();
        LOOPBACK_HOSTS
            .iter()
            .any(|l| l.eq_ignore_ascii_case(origin_host))
            || parse_host(host).is_some_and(|h| h.host().eq_ignore_ascii_case(origin_host))
    }
}

/// The serialized origin of an `http(s)` URL as a browser sends it: scheme and host in
/// lower case, the port only when it is not the scheme's default. `None` for anything
/// else.
pub fn url_origin(url: &str) -> Option<String> {
    let uri: Uri = url.trim().parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = uri.authority()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host().to_ascii_lowercase();
    Some(match authority.port_u16() {
        Some(p) if p != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// The origins of a plain-HTTP listener on `addr` as browsers name it: the address
/// itself, and `localhost` too for a loopback address. None for an unspecified address
/// (`0.0.0.0`, `[::]`): browsers reach such a listener by its public URL.
pub fn listen_origins(addr: SocketAddr) -> Vec<String> {
    let ip = addr.ip();
    if ip.is_unspecified() {
        return Vec::new();
    }
    let port = match addr.port() {
        80 => String::new(),
        p => format!(":{p}"),
    };
    let host = match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let mut out = vec![format!("http://{host}{port}")];
    if ip.is_loopback() {
        out.push(format!("http://localhost{port}"));
    }
    out
}

/// `Host` as an authority without userinfo.
fn parse_host(host: &str) -> Option<Authority> {
    let host = host.trim();
    if host.is_empty() || host.contains('@') {
        return None;
    }
    host.parse::<Authority>().ok()
}

/// An allow-list entry's name and port (`name`, `name:port`, `[v6]`, `[v6]:port`),
/// without allocating; `None` for an entry no valid `Host` can match (user info, a port
/// that is not a number up to 65535).
fn entry_parts(entry: &str) -> Option<(&str, Option<u16>)> {
    let entry = entry.trim();
    if entry.is_empty() || entry.contains('@') {
        return None;
    }
    match entry.rsplit_once(':') {
        // `[::1]` alone: the colons are the address's.
        Some(_) if entry.ends_with(']') => Some((entry, None)),
        Some((name, port)) => Some((name, Some(port.parse::<u16>().ok()?))),
        None => Some((entry, None)),
    }
}

/// The authority of a serialized origin (`scheme://host[:port]`, nothing after).
fn origin_authority(origin: &str) -> Option<Authority> {
    let uri: Uri = origin.trim().parse().ok()?;
    uri.scheme()?;
    let authority = uri.authority()?.clone();
    if authority.as_str().contains('@') || !matches!(uri.path(), "" | "/") || uri.query().is_some()
    {
        return None;
    }
    Some(authority)
}

/// Checks `Host` and `Origin` against `policy` (R-RS-15).
pub fn check_host_origin(
    policy: &HostOriginPolicy,
    host: Option<&str>,
    origin: Option<&str>,
) -> Result<(), GuardError> {
    let host = host.ok_or(GuardError::BadHostOrOrigin)?;
    if !policy.host_allowed(host) {
        return Err(GuardError::BadHostOrOrigin);
    }
    match origin {
        None => Ok(()),
        Some(o) if policy.origin_allowed(o, host) => Ok(()),
        Some(_) => Err(GuardError::BadHostOrOrigin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosted() -> HostOriginPolicy {
        HostOriginPolicy {
            allowed_hosts: vec!["lk.example.com".into(), "10.0.0.5:8443".into()],
            allowed_origins: None,
        }
    }

    #[test]
    fn hosts() {
        let p = hosted();
        assert!(p.host_allowed("lk.example.com"));
        assert!(p.host_allowed("LK.Example.com:443"));
        assert!(p.host_allowed("10.0.0.5:8443"));
        assert!(!p.host_allowed("10.0.0.5:8444"));
        assert!(!p.host_allowed("10.0.0.5"));
        assert!(!p.host_allowed("evil.example"));
        assert!(!p.host_allowed("lk.example.com.evil.example"));
        assert!(!p.host_allowed("user@lk.example.com"));
        assert!(!p.host_allowed(""));
        let l = HostOriginPolicy::loopback();
        assert!(l.host_allowed("localhost:3000"));
        assert!(l.host_allowed("[::1]:8080"));
        assert!(l.host_allowed("127.0.0.1"));
        assert!(!l.host_allowed("127.0.0.2"));
        // Entries are split in place: a bracketed address with a port, and an entry no
        // `Host` can match (a port that is no port).
        let v6 = HostOriginPolicy {
            allowed_hosts: vec!["[::1]:8443".into(), "x.example:99999".into()],
            allowed_origins: None,
        };
        assert!(v6.host_allowed("[::1]:8443"));
        assert!(!v6.host_allowed("[::1]:8444") && !v6.host_allowed("[::1]"));
        assert!(!v6.host_allowed("x.example:99") && !v6.host_allowed("x.example"));
    }

    #[test]
    fn origins_without_a_list() {
        let p = hosted();
        assert!(check_host_origin(&p, Some("lk.example.com"), None).is_ok());
        assert!(
            check_host_origin(&p, Some("lk.example.com"), Some("https://lk.example.com")).is_ok()
        );
        assert!(
            check_host_origin(&p, Some("lk.example.com"), Some("http://localhost:5173")).is_ok()
        );
        assert_eq!(
            check_host_origin(&p, Some("lk.example.com"), Some("https://evil.example")),
            Err(GuardError::BadHostOrOrigin)
        );
        assert!(check_host_origin(&p, Some("lk.example.com"), Some("null")).is_err());
        assert!(check_host_origin(&p, None, None).is_err());
        assert!(check_host_origin(&p, Some("evil.example"), None).is_err());
    }

    #[test]
    fn own_origins() {
        assert_eq!(
            url_origin("http://127.0.0.1:7878").as_deref(),
            Some("http://127.0.0.1:7878")
        );
        assert_eq!(
            url_origin("HTTPS://LK.Example.com:443/base/").as_deref(),
            Some("https://lk.example.com")
        );
        assert_eq!(
            url_origin("https://lk.example.com:8443").as_deref(),
            Some("https://lk.example.com:8443")
        );
        assert_eq!(
            url_origin("http://[::1]:80/").as_deref(),
            Some("http://[::1]")
        );
        assert_eq!(url_origin("ftp://x"), None);
        assert_eq!(url_origin("http://u@x"), None);
        assert_eq!(
            listen_origins("127.0.0.1:7878".parse().unwrap()),
            vec!["http://127.0.0.1:7878", "http://localhost:7878"]
        );
        assert_eq!(
            listen_origins("[::1]:80".parse().unwrap()),
            vec!["http://[::1]", "http://localhost"]
        );
        assert_eq!(
            listen_origins("10.0.0.5:7878".parse().unwrap()),
            vec!["http://10.0.0.5:7878"]
        );
        assert!(listen_origins("0.0.0.0:7878".parse().unwrap()).is_empty());
        let p = HostOriginPolicy::loopback_for(listen_origins("127.0.0.1:7878".parse().unwrap()));
        for ok in [
            None,
            Some("http://127.0.0.1:7878"),
            Some("http://LOCALHOST:7878"),
        ] {
            assert!(
                check_host_origin(&p, Some("localhost:7878"), ok).is_ok(),
                "{ok:?}"
            );
        }
        for bad in [
            "http://localhost:9",
            "http://127.0.0.1:9",
            "http://localhost",
            "https://localhost:7878",
            "http://[::1]:7878",
            "null",
        ] {
            assert_eq!(
                check_host_origin(&p, Some("localhost:7878"), Some(bad)),
                Err(GuardError::BadHostOrOrigin),
                "{bad}"
            );
        }
    }

    #[test]
    fn origins_with_a_list() {
        let p = HostOriginPolicy {
            allowed_origins: Some(vec!["https://app.example.com".into()]),
            ..hosted()
        };
        assert!(
            check_host_origin(&p, Some("lk.example.com"), Some("https://APP.example.com")).is_ok()
        );
        assert!(
            check_host_origin(&p, Some("lk.example.com"), Some("https://lk.example.com")).is_err()
        );
        assert!(check_host_origin(&p, Some("lk.example.com"), Some("http://localhost")).is_err());
    }
}
