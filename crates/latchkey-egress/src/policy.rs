//! Address and URL policy (R-SEC-2..R-SEC-8). Pure functions: no DNS, no I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use url::{Host, Url};

use crate::{EgressConfig, EgressError};

/// The typed dev relaxation (R-SEC-6). It fails closed: the default denies, and only
/// the exact spelling `allow-insecure-loopback` relaxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoopbackPolicy {
    /// https only, no loopback.
    #[default]
    Deny,
    /// Plain http and loopback addresses are allowed (tests, local development).
    AllowInsecureLoopback,
}

impl FromStr for LoopbackPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "deny" => Ok(LoopbackPolicy::Deny),
            "allow-insecure-loopback" => Ok(LoopbackPolicy::AllowInsecureLoopback),
            other => Err(format!(
                "unknown loopback policy {other:?} (expected \"deny\" or \"allow-insecure-loopback\")"
            )),
        }
    }
}

/// Where a URL came from (R-SEC-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlSource {
    /// Configured by an operator or deposited by an authenticated caller.
    Operator,
    /// Learned from a remote document (challenge, PRM, AS metadata, registration).
    Remote,
}

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// 169.254.0.0/16, fe80::/10 and cloud metadata addresses: refused always.
    LinkLocal,
    /// 0.0.0.0/8 and `::`: refused always (0.0.0.0 reaches loopback on Linux).
    Unspecified,
    /// 127.0.0.0/8, `::1`, `localhost`: only under the loopback relaxation.
    Loopback,
    /// RFC 1918, CGNAT, unique-local: only for operator URLs or allow-listed ranges.
    Private,
    /// Multicast.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// Reserved, documentation and benchmarking ranges.
    Reserved,
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DenyReason::LinkLocal => "link-local or metadata address",
            DenyReason::Unspecified => "unspecified address",
            DenyReason::Loopback => "loopback address",
            DenyReason::Private => "private address",
            DenyReason::Multicast => "multicast address",
            DenyReason::Broadcast => "broadcast address",
            DenyReason::Reserved => "reserved address",
        })
    }
}

/// A URL that passed the static checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedUrl {
    url: Url,
}

impl CheckedUrl {
    /// The WHATWG-normalised URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The URL as text.
    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }
}

/// The IPv4 address embedded in an IPv6 one: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`, not `::` or `::1`) and NAT64 (`64:ff9b::/96`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let v4 = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..5] == [0; 5] && s[5] == 0xffff {
        return Some(v4());
    }
    if s[..6] == [0; 6] && (s[6] != 0 || s[7] > 1) {
        return Some(v4());
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return Some(v4());
    }
    None
}

fn classify_v4(ip: Ipv4Addr) -> Option<DenyReason> {
    let o = ip.octets();
    if o[0] == 0 {
        return Some(DenyReason::Unspecified);
    }
    if ip.is_link_local() {
        return Some(DenyReason::LinkLocal);
    }
    if ip.is_loopback() {
        return Some(DenyReason::Loopback);
    }
    if ip.is_broadcast() {
        return Some(DenyReason::Broadcast);
    }
    if ip.is_multicast() {
        return Some(DenyReason::Multicast);
    }
    if ip.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        return Some(DenyReason::Private);
    }
    // 240/4 reserved, 192.0.0/24 protocol assignments, documentation, benchmarking (198.18/15)
    if o[0] >= 240
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || ip.is_documentation()
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
    {
        return Some(DenyReason::Reserved);
    }
    None
}

fn classify_v6(ip: Ipv6Addr) -> Option<DenyReason> {
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some(DenyReason::Unspecified);
    }
    if ip.is_loopback() {
        return Some(DenyReason::Loopback);
    }
    // fe80::/10 link-local; fd00:ec2::254 is the AWS instance metadata service.
    if (s[0] & 0xffc0) == 0xfe80 || ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return Some(DenyReason::LinkLocal);
    }
    if ip.is_multicast() {
        return Some(DenyReason::Multicast);
    }
    if (s[0] & 0xfe00) == 0xfc00 {
        return Some(DenyReason::Private);
    }
    if s[0] == 0x2001 && s[1] == 0x0db8 {
        return Some(DenyReason::Reserved);
    }
    None
}

/// Classifies an address under a policy: `Ok` when a connection may be made.
pub fn classify_ip(ip: IpAddr, source: UrlSource, cfg: &EgressConfig) -> Result<(), DenyReason> {
    let verdict = match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    };
    match verdict {
        None => Ok(()),
        Some(DenyReason::Loopback) if cfg.loopback == LoopbackPolicy::AllowInsecureLoopback => {
            Ok(())
        }
        Some(DenyReason::Private) if source == UrlSource::Operator => Ok(()),
        Some(DenyReason::Private) if cfg.private_allow_list.iter().any(|n| n.contains(&ip)) => {
            Ok(())
        }
        Some(r) => Err(r),
    }
}

/// `localhost`, `localhost.` and any name whose last label is `localhost` (RFC 6761).
pub(crate) fn is_localhost_name(host: &str) -> bool {
    let h = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    h == "localhost" || h.ends_with(".localhost")
}

/// The static checks: WHATWG parse, scheme, no userinfo, host classification.
pub(crate) fn check_url(
    raw: &str,
    source: UrlSource,
    cfg: &EgressConfig,
) -> Result<CheckedUrl, EgressError> {
    let url = Url::parse(raw.trim())
        .map_err(|e| EgressError::InvalidUrl(format!("not an absolute URL: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if cfg.loopback == LoopbackPolicy::AllowInsecureLoopback => {}
        other => return Err(EgressError::SchemeNotAllowed(other.to_owned())),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(EgressError::InvalidUrl(
            "credentials in the URL are not allowed".into(),
        ));
    }
    let deny = |host: String, reason| Err(EgressError::AddressDenied { host, reason });
    match url.host() {
        None => return Err(EgressError::InvalidUrl("no host".into())),
        Some(Host::Domain(d)) => {
            if is_localhost_name(d) && cfg.loopback != LoopbackPolicy::AllowInsecureLoopback {
                return deny(d.to_owned(), DenyReason::Loopback);
            }
            // A trailing-dot IP literal (`127.0.0.1.`) is a domain to the URL parser;
            // classify it as the address it names.
            if let Ok(ip) = d.trim_end_matches('.').parse::<IpAddr>()
                && let Err(r) = classify_ip(ip, source, cfg)
            {
                return deny(d.to_owned(), r);
            }
        }
        Some(Host::Ipv4(ip)) => {
            if let Err(r) = classify_ip(IpAddr::V4(ip), source, cfg) {
                return deny(ip.to_string(), r);
            }
        }
        Some(Host::Ipv6(ip)) => {
            if let Err(r) = classify_ip(IpAddr::V6(ip), source, cfg) {
                return deny(ip.to_string(), r);
            }
        }
    }
    Ok(CheckedUrl { url })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_forms() {
        assert_eq!(
            embedded_v4("::ffff:7f00:1".parse().unwrap()),
            Some(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(
            embedded_v4("::127.0.0.1".parse().unwrap()),
            Some(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(
            embedded_v4("64:ff9b::a9fe:a9fe".parse().unwrap()),
            Some(Ipv4Addr::new(169, 254, 169, 254))
        );
        assert_eq!(embedded_v4("::1".parse().unwrap()), None);
        assert_eq!(embedded_v4("::".parse().unwrap()), None);
        assert_eq!(embedded_v4("2606:4700::1".parse().unwrap()), None);
    }

    #[test]
    fn policy_spelling_fails_closed() {
        assert_eq!(
            "allow-insecure-loopback".parse::<LoopbackPolicy>(),
            Ok(LoopbackPolicy::AllowInsecureLoopback)
        );
        assert!("allow".parse::<LoopbackPolicy>().is_err());
        assert!("ALLOW-INSECURE-LOOPBACK".parse::<LoopbackPolicy>().is_err());
        assert_eq!(LoopbackPolicy::default(), LoopbackPolicy::Deny);
    }
}
