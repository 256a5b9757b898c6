//! The hostile URL table: every row is checked under the strict policy and under the
//! loopback relaxation, and each verdict is asserted exactly (variant and reason).

use latchkey_egress::{DenyReason, Egress, EgressConfig, EgressError, UrlSource};

use DenyReason::*;
use UrlSource::{Operator as Op, Remote as Rem};

#[derive(Debug, Clone, PartialEq)]
enum V {
    Pass,
    D(DenyReason),
    Scheme,
    Invalid,
}

use V::*;

fn verdict(e: &Egress, url: &str, source: UrlSource) -> V {
    match e.check_url(url, source) {
        Ok(_) => Pass,
        Err(EgressError::AddressDenied { reason, .. }) => D(reason),
        Err(EgressError::SchemeNotAllowed(_)) => Scheme,
        Err(EgressError::InvalidUrl(_)) => Invalid,
        Err(other) => panic!("unexpected {other:?} for {url}"),
    }
}

/// (url, source, verdict under the strict default, verdict under the loopback relaxation)
#[rustfmt::skip]
fn rows() -> Vec<(&'static str, UrlSource, V, V)> {
    vec![
        // IPv4 spellings of loopback: WHATWG normalises them all to 127.0.0.1
        ("https://127.0.0.1/", Op, D(Loopback), Pass),
        ("https://2130706433/", Op, D(Loopback), Pass),
        ("https://0x7f000001/", Op, D(Loopback), Pass),
        ("https://0X7F000001/", Op, D(Loopback), Pass),
        ("https://0177.0.0.1/", Op, D(Loopback), Pass),
        ("https://127.1/", Op, D(Loopback), Pass),
        ("https://127.0.1/", Op, D(Loopback), Pass),
        ("https://0x7f.1/", Op, D(Loopback), Pass),
        ("https://0x7f.0x0.0x0.0x1/", Op, D(Loopback), Pass),
        ("https://127.255.255.254/", Op, D(Loopback), Pass),
        ("https://127.0.0.1./", Op, D(Loopback), Pass),
        ("https://127.0.0.1.:443/", Op, D(Loopback), Pass),
        ("https://127.0.0.1%2e/", Op, D(Loopback), Pass),
        ("https://%31%32%37.0.0.1/", Op, D(Loopback), Pass),
        ("https://\u{ff11}\u{ff12}\u{ff17}.0.0.1/", Op, D(Loopback), Pass), // fullwidth digits
        // a name to the parser, an address to `getaddrinfo`: classified as the address
        ("https://127.0.0.1../", Op, D(Loopback), Pass),
        // the same with plain http: refused for the scheme first, unless relaxed
        ("http://2130706433/", Op, Scheme, Pass),
        ("http://0x7f000001/", Op, Scheme, Pass),
        ("http://0177.0.0.1/", Op, Scheme, Pass),
        ("http://127.1/", Op, Scheme, Pass),
        ("http://127.0.0.1:8080/", Op, Scheme, Pass),
        ("http://[::1]:8080/", Op, Scheme, Pass),
        ("http://2852039166/", Op, Scheme, D(LinkLocal)),
        // metadata and link-local: refused always
        ("https://169.254.169.254/latest/meta-data/", Op, D(LinkLocal), D(LinkLocal)),
        ("https://2852039166/", Op, D(LinkLocal), D(LinkLocal)),
        ("https://0xa9fea9fe/", Op, D(LinkLocal), D(LinkLocal)),
        ("https://0251.0376.0251.0376/", Op, D(LinkLocal), D(LinkLocal)),
        ("https://169.254.43518/", Op, D(LinkLocal), D(LinkLocal)),
        ("https://169.254.169.254./", Op, D(LinkLocal), D(LinkLocal)),
        ("https://169.254.170.2/v2/credentials", Op, D(LinkLocal), D(LinkLocal)),
        ("https://[fe80::1]/", Op, D(LinkLocal), D(LinkLocal)),
        ("https://[febf::1]/", Op, D(LinkLocal), D(LinkLocal)),
        ("https://[fd00:ec2::254]/", Op, D(LinkLocal), D(LinkLocal)),
        ("https://[::ffff:169.254.169.254]/", Op, D(LinkLocal), D(LinkLocal)),
        ("https://[::ffff:a9fe:a9fe]/", Op, D(LinkLocal), D(LinkLocal)),
        ("https://[64:ff9b::a9fe:a9fe]/", Op, D(LinkLocal), D(LinkLocal)),
        ("https://[2002:a9fe:a9fe::1]/", Op, D(LinkLocal), D(LinkLocal)), // 6to4
        // zone ids do not parse: fail closed
        ("https://[fe80::1%25eth0]/", Op, Invalid, Invalid),
        // unspecified: refused always (0.0.0.0 reaches loopback on Linux)
        ("https://0.0.0.0/", Op, D(Unspecified), D(Unspecified)),
        ("https://0.0.0.0./", Op, D(Unspecified), D(Unspecified)),
        ("https://0/", Op, D(Unspecified), D(Unspecified)),
        ("https://0.1.2.3/", Op, D(Unspecified), D(Unspecified)),
        ("https://[::]/", Op, D(Unspecified), D(Unspecified)),
        ("https://[::ffff:0.0.0.0]/", Op, D(Unspecified), D(Unspecified)),
        // IPv6 loopback and embedded IPv4 loopback
        ("https://[::1]/", Op, D(Loopback), Pass),
        ("https://[0:0:0:0:0:0:0:1]/", Op, D(Loopback), Pass),
        ("https://[::ffff:127.0.0.1]/", Op, D(Loopback), Pass),
        ("https://[::ffff:7f00:1]/", Op, D(Loopback), Pass),
        ("https://[::ffff:0:127.0.0.1]/", Op, D(Loopback), Pass),
        ("https://[::127.0.0.1]/", Op, D(Loopback), Pass),
        ("https://[64:ff9b::7f00:1]/", Op, D(Loopback), Pass),
        ("https://[64:ff9b::127.0.0.1]/", Op, D(Loopback), Pass),
        ("https://[2002:7f00:1::]/", Op, D(Loopback), Pass),
        // localhost names (RFC 6761)
        ("https://localhost/", Op, D(Loopback), Pass),
        ("https://localhost./", Op, D(Loopback), Pass),
        ("https://LOCALHOST/", Op, D(Loopback), Pass),
        ("https://localhost:8443/", Rem, D(Loopback), Pass),
        ("https://local%68ost/", Op, D(Loopback), Pass),
        ("https://localhost%2e/", Op, D(Loopback), Pass),
        ("https://\u{24db}ocalhost/", Op, D(Loopback), Pass), // circled l, IDNA-mapped
        ("https://a.localhost/", Op, D(Loopback), Pass),
        ("https://A.LOCALHOST./", Op, D(Loopback), Pass),
        ("https://a.b.localhost/", Rem, D(Loopback), Pass),
        ("https://auth.localhost.example.com/", Op, Pass, Pass),
        ("https://localhost.example.com/", Rem, Pass, Pass),
        ("https://localhostexample.com/", Op, Pass, Pass),
        ("https://mylocalhost/", Op, Pass, Pass),
        // private ranges: operator yes, remote no
        ("https://10.0.0.5/token", Op, Pass, Pass),
        ("https://10.0.0.5/token", Rem, D(Private), D(Private)),
        ("https://172.16.0.1/", Rem, D(Private), D(Private)),
        ("https://172.31.255.255/", Rem, D(Private), D(Private)),
        ("https://172.32.0.1/", Rem, Pass, Pass),
        ("https://192.168.1.1/", Op, Pass, Pass),
        ("https://192.168.1.1/", Rem, D(Private), D(Private)),
        ("https://3232235777/", Rem, D(Private), D(Private)), // 192.168.1.1
        ("https://100.64.0.1/", Op, Pass, Pass),
        ("https://100.64.0.1/", Rem, D(Private), D(Private)),
        ("https://[fd12:3456::1]/", Op, Pass, Pass),
        ("https://[fd12:3456::1]/", Rem, D(Private), D(Private)),
        ("https://[fec0::1]/", Rem, D(Private), D(Private)),
        ("https://[::ffff:10.0.0.1]/", Rem, D(Private), D(Private)),
        ("https://[64:ff9b:1::a00:1]/", Rem, D(Private), D(Private)),
        // other special ranges
        ("https://224.0.0.1/", Op, D(Multicast), D(Multicast)),
        ("https://[ff02::1]/", Op, D(Multicast), D(Multicast)),
        ("https://255.255.255.255/", Op, D(Broadcast), D(Broadcast)),
        ("https://4294967295/", Op, D(Broadcast), D(Broadcast)),
        ("https://240.0.0.1/", Op, D(Reserved), D(Reserved)),
        ("https://192.0.2.1/", Op, D(Reserved), D(Reserved)),
        ("https://198.18.0.1/", Op, D(Reserved), D(Reserved)),
        ("https://[2001:db8::1]/", Op, D(Reserved), D(Reserved)),
        ("https://[2001:0:4136:e378::1]/", Op, D(Reserved), D(Reserved)), // Teredo
        // userinfo tricks
        ("https://evil.com@127.0.0.1/", Op, Invalid, Invalid),
        ("https://127.0.0.1:443@evil.com/", Op, Invalid, Invalid),
        ("https://user:pass@example.com/", Op, Invalid, Invalid),
        ("https://:@example.com/", Op, Pass, Pass), // empty userinfo is dropped by the parser
        ("https://127.0.0.1#@evil.com/", Op, D(Loopback), Pass),
        ("https://evil.com#@127.0.0.1/", Op, Pass, Pass),
        ("https://evil.com?@127.0.0.1/", Op, Pass, Pass),
        // WHATWG reads `\` as `/` in special schemes: the host is example.com, as in browsers
        ("https://example.com\\@127.0.0.1/", Op, Pass, Pass),
        // schemes
        ("http://example.com/", Op, Scheme, Pass),
        ("file:///etc/passwd", Op, Scheme, Scheme),
        ("ftp://example.com/", Op, Scheme, Scheme),
        ("gopher://127.0.0.1:70/", Op, Scheme, Scheme),
        ("javascript:alert(1)", Op, Scheme, Scheme),
        ("data:text/plain,hi", Op, Scheme, Scheme),
        ("ws://example.com/", Op, Scheme, Scheme),
        ("dict://127.0.0.1:11211/", Op, Scheme, Scheme),
        // garbage and relative references
        ("", Op, Invalid, Invalid),
        ("/relative/path", Op, Invalid, Invalid),
        ("//127.0.0.1/", Op, Invalid, Invalid),
        ("example.com", Op, Invalid, Invalid),
        ("https://", Op, Invalid, Invalid),
        ("https://:443/", Op, Invalid, Invalid),
        ("https:///path", Op, Pass, Pass), // WHATWG skips the extra slash: host is "path"
        ("https://[::1/", Op, Invalid, Invalid),
        ("https://999.999.999.999/", Op, Invalid, Invalid),
        ("https://0x100000000/", Op, Invalid, Invalid),
        ("https://exa mple.com/", Op, Invalid, Invalid),
        // public
        ("https://example.com/", Op, Pass, Pass),
        ("https://example.com/", Rem, Pass, Pass),
        ("  https://example.com/  ", Rem, Pass, Pass), // WHATWG trims spaces
        ("HTTPS://EXAMPLE.COM/", Rem, Pass, Pass),
        ("https://93.184.216.34/", Rem, Pass, Pass),
        ("https://1572395042/", Rem, Pass, Pass), // 93.184.216.34
        ("https://[2606:4700:4700::1111]/", Rem, Pass, Pass),
        ("https://[2002:808:808::1]/", Rem, Pass, Pass), // 6to4 of a public address
        ("https://example.com:8443/a?b=c#d", Rem, Pass, Pass),
    ]
}

#[test]
fn hostile_url_table() {
    let rows = rows();
    assert!(rows.len() >= 60, "table has {} rows", rows.len());
    let strict = super::strict();
    let relaxed = super::relaxed();
    let mut failures = Vec::new();
    // Twice: the second pass is answered from the client's memo of checked URLs, and
    // must agree (an Operator pass never admits a URL for Remote, and so on).
    for pass in ["first", "memo"] {
        for (url, source, want_strict, want_relaxed) in rows.iter().cloned() {
            for (policy, e, want) in [
                ("strict", &strict, want_strict),
                ("relaxed", &relaxed, want_relaxed),
            ] {
                let got = verdict(e, url, source);
                if got != want {
                    failures.push(format!(
                        "{pass}: {policy} {url:?} {source:?}: want {want:?}, got {got:?}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn a_checked_url_is_the_normalised_form() {
    let c = super::strict()
        .check_url("HTTPS://Example.COM:443/a/../b?x=1", Op)
        .unwrap();
    assert_eq!(c.as_str(), "https://example.com/b?x=1");
    assert_eq!(c.url().host_str(), Some("example.com"));
    let c = super::relaxed()
        .check_url("http://2130706433:8080/", Op)
        .unwrap();
    assert_eq!(c.as_str(), "http://127.0.0.1:8080/");
}

#[test]
fn denials_name_the_host() {
    match super::strict().check_url("https://0x7f000001/", Op) {
        Err(EgressError::AddressDenied { host, reason }) => {
            assert_eq!((host.as_str(), reason), ("127.0.0.1", Loopback));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn private_allow_list_admits_remote_urls() {
    let e = Egress::new(EgressConfig {
        private_allow_list: vec![
            "10.1.0.0/16".parse().unwrap(),
            "fd00:1::/32".parse().unwrap(),
        ],
        ..EgressConfig::default()
    })
    .unwrap();
    assert_eq!(verdict(&e, "https://10.1.2.3/", Rem), Pass);
    assert_eq!(verdict(&e, "https://[::ffff:10.1.2.3]/", Rem), Pass);
    assert_eq!(verdict(&e, "https://[fd00:1::5]/", Rem), Pass);
    assert_eq!(verdict(&e, "https://10.2.2.3/", Rem), D(Private));
    assert_eq!(verdict(&e, "https://[fd00:2::5]/", Rem), D(Private));
    // The allow list only ever opens private ranges.
    let e = Egress::new(EgressConfig {
        private_allow_list: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
        ..EgressConfig::default()
    })
    .unwrap();
    assert_eq!(verdict(&e, "https://169.254.169.254/", Rem), D(LinkLocal));
    assert_eq!(verdict(&e, "https://[fd00:ec2::254]/", Rem), D(LinkLocal));
    assert_eq!(verdict(&e, "https://127.0.0.1/", Rem), D(Loopback));
    assert_eq!(verdict(&e, "https://0.0.0.0/", Rem), D(Unspecified));
    assert_eq!(verdict(&e, "https://224.0.0.1/", Rem), D(Multicast));
}
