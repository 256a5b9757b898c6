//! Address and URL policy (R-SEC-2..R-SEC-8). Pure functions: no DNS, no I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{Ipv4Net, Ipv6Net};
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

    /// Accepts exactly `deny` and `allow-insecure-loopback`; anything else is an error,
    /// so a misspelled setting can never relax the guard.
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
    /// 169.254.0.0/16 and fe80::/10 (where most cloud metadata services live): refused
    /// always.
    LinkLocal,
    /// A cloud metadata service outside the link-local ranges (Alibaba Cloud, Azure's
    /// wireserver, the IPv6 metadata addresses of AWS, GCP and others, Oracle's legacy
    /// address) or a metadata host name: refused always.
    Metadata,
    /// 0.0.0.0/8 and `::`: refused always (0.0.0.0 reaches loopback on Linux).
    Unspecified,
    /// 127.0.0.0/8, `::1`, `localhost`: only under the loopback relaxation.
    Loopback,
    /// RFC 1918, CGNAT 100.64/10, unique-local fc00::/7, site-local fec0::/10 and the
    /// local-use NAT64 prefix: only for operator URLs or allow-listed ranges.
    Private,
    /// 224.0.0.0/4 and ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 240.0.0.0/4, IETF protocol assignments, documentation, benchmarking, discard-only
    /// and Teredo ranges: never a legitimate OAuth endpoint.
    Reserved,
    /// A `localhost` name that resolved to an address that is not loopback.
    NotLoopback,
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DenyReason::LinkLocal => "link-local or metadata address",
            DenyReason::Metadata => "cloud metadata address",
            DenyReason::Unspecified => "unspecified address",
            DenyReason::Loopback => "loopback address",
            DenyReason::Private => "private address",
            DenyReason::Multicast => "multicast address",
            DenyReason::Broadcast => "broadcast address",
            DenyReason::Reserved => "reserved address",
            DenyReason::NotLoopback => "non-loopback address for a localhost name",
        })
    }
}

/// A URL that passed the static checks (scheme, no userinfo, host literal or name).
/// Host names still go through the guarded resolver when a request is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedUrl {
    url: Url,
    /// The same URL as a request URI, derived once (the proxy's hop sends it as is).
    uri: http::Uri,
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

    /// The URL as a request URI.
    pub fn uri(&self) -> &http::Uri {
        &self.uri
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

const fn v6(s: [u16; 8], len: u8) -> Ipv6Net {
    Ipv6Net::new_assert(
        Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
        len,
    )
}

/// Refused IPv4 ranges, first match wins. Written out as a table (rather than
/// `Ipv4Addr::is_*`, several of which are unstable or narrower than needed) so the whole
/// policy reads in one place.
///
/// Cloud metadata services: most answer on 169.254.169.254 (AWS, GCP, Azure, Oracle,
/// IBM, DigitalOcean, OpenStack, Hetzner, Linode, Vultr…), and the rest of AWS's (ECS
/// 169.254.170.2, EKS Pod Identity 169.254.170.23, Time Sync 169.254.169.123, DNS
/// 169.254.169.253), Tencent's 169.254.0.23 and Scaleway's 169.254.42.42 are link-local
/// too: the whole /16 is refused. The ones outside it are listed first, before the
/// private and reserved ranges that hold them (so no allow list can open them).
#[rustfmt::skip]
const V4_RULES: [(Ipv4Net, DenyReason); 18] = [
    (v4(100, 100, 100, 200, 32), DenyReason::Metadata), // Alibaba Cloud (inside CGNAT 100.64/10)
    (v4(168, 63, 129, 16, 32), DenyReason::Metadata),   // Azure wireserver (public space)
    (v4(192, 0, 0, 192, 32), DenyReason::Metadata),     // Oracle Cloud legacy metadata
    (v4(0, 0, 0, 0, 8), DenyReason::Unspecified),
    (v4(127, 0, 0, 0, 8), DenyReason::Loopback),
    (v4(169, 254, 0, 0, 16), DenyReason::LinkLocal),   // metadata 169.254.169.254, ECS 169.254.170.2…
    (v4(10, 0, 0, 0, 8), DenyReason::Private),
    (v4(172, 16, 0, 0, 12), DenyReason::Private),
    (v4(192, 168, 0, 0, 16), DenyReason::Private),
    (v4(100, 64, 0, 0, 10), DenyReason::Private),      // CGNAT: internal in practice
    (v4(192, 0, 0, 0, 24), DenyReason::Reserved),      // IETF protocol assignments
    (v4(192, 0, 2, 0, 24), DenyReason::Reserved),      // TEST-NET-1
    (v4(198, 18, 0, 0, 15), DenyReason::Reserved),     // benchmarking
    (v4(198, 51, 100, 0, 24), DenyReason::Reserved),   // TEST-NET-2
    (v4(203, 0, 113, 0, 24), DenyReason::Reserved),    // TEST-NET-3
    (v4(224, 0, 0, 0, 4), DenyReason::Multicast),
    (v4(255, 255, 255, 255, 32), DenyReason::Broadcast), // before 240/4, which holds it
    (v4(240, 0, 0, 0, 4), DenyReason::Reserved),
];

/// Refused IPv6 ranges, first match wins, applied after the embedded-IPv4 forms have
/// been unwrapped.
#[rustfmt::skip]
const V6_RULES: [(Ipv6Net, DenyReason); 16] = [
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), DenyReason::Unspecified),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), DenyReason::Loopback),
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), DenyReason::LinkLocal),
    // Metadata services inside fc00::/7, before it (so no allow list can open them).
    (v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128), DenyReason::Metadata), // AWS IMDS
    (v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23], 128), DenyReason::Metadata),  // AWS EKS Pod Identity
    (v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x123], 128), DenyReason::Metadata), // AWS Time Sync
    (v6([0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254], 128), DenyReason::Metadata),  // GCP
    (v6([0xfd00, 0xa9fe, 0xa9fe, 0, 0, 0, 0, 1], 128), DenyReason::Metadata), // Linode
    (v6([0xfd00, 0x42, 0, 0, 0, 0, 0, 0x42], 128), DenyReason::Metadata),   // Scaleway
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), DenyReason::Multicast),
    (v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), DenyReason::Private),   // unique-local
    (v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), DenyReason::Private),  // deprecated site-local
    (v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), DenyReason::Private), // RFC 8215 local-use NAT64
    (v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), DenyReason::Reserved), // documentation
    (v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32), DenyReason::Reserved), // Teredo: IPv4 peer is opaque
    (v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), DenyReason::Reserved),  // discard-only
];

/// The IPv4 address an IPv6 address stands for, when the stack or a translator would
/// deliver the packet to that IPv4 address (R-SEC-5 plus hardening).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let v4 = |hi: u16, lo: u16| Some(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    match ip.segments() {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => v4(hi, lo), // mapped ::ffff:a.b.c.d
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => v4(hi, lo), // SIIT-translated ::ffff:0:a.b.c.d
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,          // `::` and `::1` are themselves
        [0, 0, 0, 0, 0, 0, hi, lo] => v4(hi, lo),      // compatible ::a.b.c.d
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => v4(hi, lo), // NAT64 well-known prefix
        [0x2002, hi, lo, ..] => v4(hi, lo),            // 6to4
        _ => None,
    }
}

/// The address a packet to `ip` really goes to: the embedded IPv4 address when there is
/// one, else `ip` itself. Both the rules and the allow list apply to this address.
fn effective(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn classify_raw(ip: IpAddr) -> Option<DenyReason> {
    match effective(ip) {
        IpAddr::V4(ip) => V4_RULES.iter().find(|(n, _)| n.contains(&ip)).map(|r| r.1),
        IpAddr::V6(ip) => V6_RULES.iter().find(|(n, _)| n.contains(&ip)).map(|r| r.1),
    }
}

/// Classifies an address under a policy: `Ok` when a connection may be made.
///
/// Link-local, metadata, unspecified, multicast, broadcast and reserved addresses are
/// refused whatever the configuration; loopback only passes under
/// [`LoopbackPolicy::AllowInsecureLoopback`]; private ranges pass for
/// [`UrlSource::Operator`] or when inside [`EgressConfig::private_allow_list`].
pub fn classify_ip(ip: IpAddr, source: UrlSource, cfg: &EgressConfig) -> Result<(), DenyReason> {
    let ip = effective(ip);
    let allow_listed = || cfg.private_allow_list.iter().any(|n| n.contains(&ip));
    match classify_raw(ip) {
        None => Ok(()),
        Some(DenyReason::Loopback) if cfg.loopback == LoopbackPolicy::AllowInsecureLoopback => {
            Ok(())
        }
        Some(DenyReason::Private) if source == UrlSource::Operator || allow_listed() => Ok(()),
        Some(r) => Err(r),
    }
}

/// `localhost`, `localhost.` and any name whose last label is `localhost` (RFC 6761).
/// `url` has already lower-cased and IDNA-mapped the name; the case folding here is for
/// direct callers.
fn is_localhost_name(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost" || h.ends_with(".localhost")
}

/// Host names of cloud metadata services. Every one of them resolves to an address the
/// tables refuse, where it resolves at all; they are refused by name too so that the
/// refusal does not depend on the resolver (a search domain, `/etc/hosts`, or a
/// provider whose metadata name points at public addresses, as Equinix Metal's does).
const METADATA_NAMES: &[&str] = &[
    "metadata",                     // GCP's short name
    "metadata.google.internal",     // GCP
    "metadata.goog",                // GCP
    "instance-data",                // AWS
    "instance-data.ec2.internal",   // AWS
    "metadata.tencentyun.com",      // Tencent Cloud
    "metadata.platformequinix.com", // Equinix Metal
    "metadata.packet.net",          // Equinix Metal (Packet)
];

fn is_metadata_name(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    METADATA_NAMES.contains(&h.as_str())
}

/// Whether `host` names this machine by itself: an address in 127.0.0.0/8 or `::1` (or
/// an IPv6 spelling of a 127/8 address), `localhost`, or a name under `localhost.`.
///
/// RFC 6761 §6.3 reserves the whole `localhost.` domain for loopback (and browsers treat
/// `*.localhost` as potentially trustworthy), so `a.localhost` counts; because a system
/// resolver may still send such a name to DNS, the guarded resolver refuses a
/// `localhost` name whose answer holds any address that is not loopback.
fn is_loopback_host(host: &Host<&str>) -> bool {
    match host {
        Host::Ipv4(ip) => is_loopback_ip((*ip).into()),
        Host::Ipv6(ip) => is_loopback_ip((*ip).into()),
        Host::Domain(d) => {
            is_localhost_name(d)
                || d.trim_end_matches('.')
                    .parse::<IpAddr>()
                    .is_ok_and(is_loopback_ip)
        }
    }
}

/// Whether `raw` is an http(s) URL whose host is loopback (see the egress policy: the
/// only hosts plain `http://` may reach). For other components' URL checks (Latchkey's
/// own public URL, whose callback an authorization server redirects the browser to).
pub fn is_loopback_url(raw: &str) -> bool {
    Url::parse(raw).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.username().is_empty()
            && u.password().is_none()
            && u.host().is_some_and(|h| is_loopback_host(&h))
    })
}

/// Whether `ip` is loopback (127.0.0.0/8, `::1`, or an IPv6 spelling of 127/8).
pub(crate) fn is_loopback_ip(ip: IpAddr) -> bool {
    classify_raw(ip) == Some(DenyReason::Loopback)
}

/// Whether `host` (as given to the resolver) is a `localhost` name, whose addresses
/// must all be loopback.
pub(crate) fn must_resolve_to_loopback(host: &str) -> bool {
    is_localhost_name(host)
}

/// The static checks: WHATWG parse, scheme, no userinfo, host classification.
///
/// Plain `http://` passes only under the loopback relaxation and only to a loopback
/// host (R-SEC-10): `localhost` and names under it, 127.0.0.0/8, `[::1]`.
pub(crate) fn check_url(
    raw: &str,
    source: UrlSource,
    cfg: &EgressConfig,
) -> Result<CheckedUrl, EgressError> {
    let relaxed = cfg.loopback == LoopbackPolicy::AllowInsecureLoopback;
    // The parser error says what is wrong without echoing the input (it may be a secret).
    let url = Url::parse(raw)
        .map_err(|e| EgressError::InvalidUrl(format!("not an absolute URL: {e}")))?;
    let plain_http = match url.scheme() {
        "https" => false,
        "http" if relaxed => true,
        other => return Err(EgressError::SchemeNotAllowed(other.to_owned())),
    };
    // `https://evil.com@127.0.0.1/` reads differently to people and parsers: refuse any
    // userinfo, even an empty user with a password (`https://:p@h/`).
    if !url.username().is_empty() || url.password().is_some() {
        return Err(EgressError::InvalidUrl(
            "credentials (user:password@) in the URL are not allowed".into(),
        ));
    }
    let verdict = match url.host() {
        None => return Err(EgressError::InvalidUrl("no host".into())),
        // IPv6 zone ids (`[fe80::1%25eth0]`) do not parse, so they never get this far.
        Some(Host::Ipv4(ip)) => classify_ip(ip.into(), source, cfg),
        Some(Host::Ipv6(ip)) => classify_ip(ip.into(), source, cfg),
        Some(Host::Domain(d)) if is_metadata_name(d) => Err(DenyReason::Metadata),
        Some(Host::Domain(d)) if is_localhost_name(d) => {
            if relaxed {
                Ok(())
            } else {
                Err(DenyReason::Loopback)
            }
        }
        // WHATWG already turns every IPv4 spelling, trailing dot included, into
        // Host::Ipv4; this catches whatever a future parser might leave as a name.
        Some(Host::Domain(d)) => match d.trim_end_matches('.').parse::<IpAddr>() {
            Ok(ip) => classify_ip(ip, source, cfg),
            Err(_) => Ok(()), // a name: the guarded resolver checks its addresses
        },
    };
    // As the parser spells it: IPv6 without brackets, names as normalised.
    let host_text = || match url.host() {
        Some(Host::Ipv6(ip)) => ip.to_string(),
        Some(h) => h.to_string(),
        None => String::new(),
    };
    if let Err(reason) = verdict {
        return Err(EgressError::AddressDenied {
            host: host_text(),
            reason,
        });
    }
    if plain_http && !url.host().is_some_and(|h| is_loopback_host(&h)) {
        return Err(EgressError::InsecureHttp { host: host_text() });
    }
    // The serialised WHATWG URL is always a valid URI; checked anyway, not assumed.
    let uri = http::Uri::try_from(url.as_str())
        .map_err(|e| EgressError::InvalidUrl(format!("not a request URI: {e}")))?;
    Ok(CheckedUrl { url, uri })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn embedded_forms() {
        let lo = Some(Ipv4Addr::LOCALHOST);
        for s in [
            "::ffff:7f00:1",
            "::ffff:0:7f00:1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::5",
        ] {
            let IpAddr::V6(v6) = ip(s) else { panic!() };
            assert_eq!(embedded_v4(v6), lo, "{s}");
        }
        for s in ["::1", "::", "2606:4700::1", "64:ff9b:1::7f00:1"] {
            let IpAddr::V6(v6) = ip(s) else { panic!() };
            assert_eq!(embedded_v4(v6), None, "{s}");
        }
    }

    #[test]
    fn raw_classification() {
        use DenyReason::*;
        let cases = [
            ("0.0.0.0", Some(Unspecified)),
            ("127.3.2.1", Some(Loopback)),
            ("169.254.170.2", Some(LinkLocal)),
            ("100.127.255.255", Some(Private)),
            ("100.128.0.0", None),
            ("172.15.255.255", None),
            ("198.19.0.1", Some(Reserved)),
            ("239.255.255.250", Some(Multicast)),
            ("255.255.255.255", Some(Broadcast)),
            ("255.255.255.254", Some(Reserved)),
            ("8.8.8.8", None),
            ("::", Some(Unspecified)),
            ("::1", Some(Loopback)),
            ("::2", Some(Unspecified)), // compatible form of 0.0.0.2
            ("fe80::1", Some(LinkLocal)),
            ("fd00:ec2::254", Some(Metadata)),
            ("100.100.100.200", Some(Metadata)),
            ("100.100.100.201", Some(Private)),
            ("168.63.129.16", Some(Metadata)),
            ("192.0.0.192", Some(Metadata)),
            ("fd20:ce::254", Some(Metadata)),
            ("fd00:ec2::253", Some(Private)),
            ("fec0::1", Some(Private)),
            ("64:ff9b:1::a00:1", Some(Private)),
            ("2002:a9fe:a9fe::", Some(LinkLocal)),
            ("2002:808:808::", None),
            ("2001::1", Some(Reserved)),
            ("100::1", Some(Reserved)),
            ("ff02::1", Some(Multicast)),
            ("2606:4700:4700::1111", None),
        ];
        for (s, want) in cases {
            assert_eq!(classify_raw(ip(s)), want, "{s}");
        }
    }

    #[test]
    fn localhost_names() {
        for h in [
            "localhost",
            "localhost.",
            "LocalHost",
            "a.b.localhost..",
            "x.localhost",
        ] {
            assert!(is_localhost_name(h), "{h}");
        }
        for h in [
            "localhost.example.com",
            "notlocalhost",
            "localhost-x",
            "example.com",
        ] {
            assert!(!is_localhost_name(h), "{h}");
        }
    }

    #[test]
    fn policy_spelling_fails_closed() {
        assert_eq!(
            "allow-insecure-loopback".parse::<LoopbackPolicy>(),
            Ok(LoopbackPolicy::AllowInsecureLoopback)
        );
        assert_eq!("deny".parse::<LoopbackPolicy>(), Ok(LoopbackPolicy::Deny));
        for bad in ["allow", "ALLOW-INSECURE-LOOPBACK", "true", "", " deny"] {
            assert!(bad.parse::<LoopbackPolicy>().is_err(), "{bad:?}");
        }
        assert_eq!(LoopbackPolicy::default(), LoopbackPolicy::Deny);
    }
}
