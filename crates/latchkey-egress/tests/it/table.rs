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
    /// Plain http to a host that is not loopback, under the relaxation.
    Insecure,
    Invalid,
}

use V::*;

fn verdict(e: &Egress, url: &str, source: UrlSource) -> V {
    match e.check_url(url, source) {
        Ok(_) => Pass,
        Err(EgressError::AddressDenied { reason, .. }) => D(reason),
        Err(EgressError::SchemeNotAllowed(_)) => Scheme,
        Err(EgressError::InsecureHttp { .. }) => Insecure,
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
        ("https://[fd00:ec2::254]/", Op, D(Metadata), D(Metadata)),
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
        ("http://example.com/", Op, Scheme, Insecure),
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

/// Issue 15, items 10 and 11: what a hostile reviewer got through. Cloud metadata
/// addresses and names, refused in every configuration and for every source; userinfo
/// in every spelling; plain http only to loopback hosts under the relaxation.
#[rustfmt::skip]
fn hostile_rows() -> Vec<(&'static str, UrlSource, V, V)> {
    vec![
        // Alibaba Cloud: inside CGNAT 100.64/10, which operators may reach
        ("https://100.100.100.200/latest/meta-data/", Op, D(Metadata), D(Metadata)),
        ("https://100.100.100.200/", Rem, D(Metadata), D(Metadata)),
        ("http://100.100.100.200/", Op, Scheme, D(Metadata)),
        ("https://1684301000/", Op, D(Metadata), D(Metadata)),           // 100.100.100.200
        ("https://0x64646464c8/", Op, Invalid, Invalid),                 // not an address
        ("https://0x646464c8/", Op, D(Metadata), D(Metadata)),
        ("https://[::ffff:100.100.100.200]/", Op, D(Metadata), D(Metadata)),
        ("https://[64:ff9b::6464:64c8]/", Op, D(Metadata), D(Metadata)),
        ("https://[2002:6464:64c8::1]/", Op, D(Metadata), D(Metadata)),
        ("https://100.100.100.201/", Op, Pass, Pass),                    // the rest of CGNAT: operator
        // Azure wireserver: public address space
        ("https://168.63.129.16/machine?comp=goalstate", Op, D(Metadata), D(Metadata)),
        ("https://168.63.129.16/", Rem, D(Metadata), D(Metadata)),
        ("https://[::ffff:a83f:8110]/", Op, D(Metadata), D(Metadata)),
        ("https://168.63.129.17/", Rem, Pass, Pass),
        // Oracle Cloud legacy
        ("https://192.0.0.192/opc/v1/instance/", Op, D(Metadata), D(Metadata)),
        // the link-local ones: AWS IMDS, ECS, EKS Pod Identity, Time Sync, DNS; Tencent; Scaleway
        ("https://169.254.169.254/", Op, D(LinkLocal), D(LinkLocal)),
        ("https://169.254.170.2/", Op, D(LinkLocal), D(LinkLocal)),
        ("https://169.254.170.23/", Op, D(LinkLocal), D(LinkLocal)),
        ("https://169.254.169.123/", Op, D(LinkLocal), D(LinkLocal)),
        ("https://169.254.169.253/", Op, D(LinkLocal), D(LinkLocal)),
        ("https://169.254.0.23/", Op, D(LinkLocal), D(LinkLocal)),
        ("https://169.254.42.42/", Op, D(LinkLocal), D(LinkLocal)),
        // IPv6 metadata addresses, inside fc00::/7 (operators may reach the rest of it)
        ("https://[fd00:ec2::254]/latest/meta-data/", Op, D(Metadata), D(Metadata)),
        ("https://[fd00:ec2:0:0:0:0:0:254]/", Rem, D(Metadata), D(Metadata)),
        ("https://[fd00:ec2::23]/", Op, D(Metadata), D(Metadata)),
        ("https://[fd00:ec2::123]/", Op, D(Metadata), D(Metadata)),
        ("https://[fd20:ce::254]/", Op, D(Metadata), D(Metadata)),
        ("https://[fd00:a9fe:a9fe::1]/", Op, D(Metadata), D(Metadata)),
        ("https://[fd00:42::42]/", Op, D(Metadata), D(Metadata)),
        ("https://[fe80::a9fe:a9fe]/", Op, D(LinkLocal), D(LinkLocal)),  // OpenStack
        ("https://[fd00:ec2::253]/", Op, Pass, Pass),                    // AWS DNS: not metadata, private
        // metadata host names, whatever they resolve to
        ("https://metadata.google.internal/computeMetadata/v1/", Op, D(Metadata), D(Metadata)),
        ("https://METADATA.google.internal./", Rem, D(Metadata), D(Metadata)),
        ("http://metadata.google.internal/", Op, Scheme, D(Metadata)),
        ("https://metadata.goog/", Op, D(Metadata), D(Metadata)),
        ("https://metadata/", Op, D(Metadata), D(Metadata)),
        ("https://instance-data/", Op, D(Metadata), D(Metadata)),
        ("https://instance-data.ec2.internal/", Op, D(Metadata), D(Metadata)),
        ("https://metadata.tencentyun.com/", Op, D(Metadata), D(Metadata)),
        ("https://metadata.platformequinix.com/", Op, D(Metadata), D(Metadata)),
        ("https://metadata.packet.net/", Op, D(Metadata), D(Metadata)),
        ("https://metadata.example.com/", Op, Pass, Pass),
        // userinfo: refused under both policies, loopback or not
        ("http://a@127.0.0.1/", Op, Scheme, Invalid),
        ("http://a@localhost:8080/", Op, Scheme, Invalid),
        ("http://u:p@127.0.0.1:8080/mcp", Op, Scheme, Invalid),
        ("http://u:p@example.com/", Op, Scheme, Invalid),
        ("https://a@example.com/", Op, Invalid, Invalid),
        ("https://u:p@127.0.0.1/", Op, Invalid, Invalid),
        ("https://:p@example.com/", Op, Invalid, Invalid),               // password, no user
        ("https://u:@example.com/", Op, Invalid, Invalid),               // user, empty password
        ("https://%40@example.com/", Op, Invalid, Invalid),              // an encoded @ in the user
        ("https://a@b@example.com/", Op, Invalid, Invalid),              // WHATWG: user "a%40b"
        ("https://ext@127.0.0.1/", Rem, Invalid, Invalid),
        // WHATWG: `/` ends the authority, so `ext` is the host and `/@127.0.0.1` the path
        ("https://ext/@127.0.0.1", Op, Pass, Pass),
        ("http://ext/@127.0.0.1", Op, Scheme, Insecure),
        ("http://localhost/@10.1.2.3", Op, Scheme, Pass),
        // plain http: loopback hosts only, under the relaxation (R-SEC-10)
        ("http://10.1.2.3/mcp", Op, Scheme, Insecure),
        ("http://example.test/mcp", Op, Scheme, Insecure),
        ("http://192.168.1.1/", Op, Scheme, Insecure),
        ("http://[fd12:3456::1]/", Op, Scheme, Insecure),
        ("http://93.184.216.34/", Rem, Scheme, Insecure),
        ("http://localhost.example.com/", Op, Scheme, Insecure),
        ("http://notlocalhost/", Op, Scheme, Insecure),
        ("http://127.0.0.1/", Op, Scheme, Pass),
        ("http://127.9.8.7:9/", Rem, Scheme, Pass),
        ("http://[::1]/", Op, Scheme, Pass),
        ("http://[::ffff:127.0.0.1]/", Op, Scheme, Pass),
        ("http://localhost/", Op, Scheme, Pass),
        ("http://LOCALHOST.:8080/", Op, Scheme, Pass),
        ("http://mcp.localhost/", Op, Scheme, Pass),                     // RFC 6761 §6.3
        ("http://127.0.0.1../", Op, Scheme, Pass),
        // https to a non-loopback host is unaffected by the relaxation
        ("https://10.1.2.3/mcp", Op, Pass, Pass),
        ("https://example.test/mcp", Op, Pass, Pass),
    ]
}

#[test]
fn hostile_metadata_userinfo_and_loopback_http_table() {
    let strict = super::strict();
    let relaxed = super::relaxed();
    let mut failures = Vec::new();
    for (url, source, want_strict, want_relaxed) in hostile_rows() {
        for (policy, e, want) in [
            ("strict", &strict, want_strict),
            ("relaxed", &relaxed, want_relaxed.clone()),
        ] {
            let got = verdict(e, url, source);
            if got != want {
                failures.push(format!(
                    "{policy} {url:?} {source:?}: want {want:?}, got {got:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    // The allow list never opens a metadata address, not even one inside a range it names.
    let e = Egress::new(EgressConfig {
        private_allow_list: vec![
            "100.64.0.0/10".parse().unwrap(),
            "fc00::/7".parse().unwrap(),
        ],
        ..EgressConfig::default()
    })
    .unwrap();
    assert_eq!(verdict(&e, "https://100.100.100.200/", Rem), D(Metadata));
    assert_eq!(verdict(&e, "https://[fd00:ec2::254]/", Rem), D(Metadata));
    assert_eq!(verdict(&e, "https://100.100.100.199/", Rem), Pass);
    // The refusal of plain http names the host and says what would do.
    let err = relaxed.check_url("http://10.1.2.3/mcp", Op).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("10.1.2.3") && text.contains("loopback") && text.contains("https"),
        "{text}"
    );
    assert!(!err.is_retryable());
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
    assert_eq!(verdict(&e, "https://[fd00:ec2::254]/", Rem), D(Metadata));
    assert_eq!(verdict(&e, "https://127.0.0.1/", Rem), D(Loopback));
    assert_eq!(verdict(&e, "https://0.0.0.0/", Rem), D(Unspecified));
    assert_eq!(verdict(&e, "https://224.0.0.1/", Rem), D(Multicast));
}

/// Names are checked by their addresses when a request is sent: a name that resolves to
/// a metadata address is refused, and a `localhost` name (which plain http may reach
/// under the relaxation) must resolve to loopback addresses only.
#[tokio::test]
async fn hostile_names_are_judged_by_their_resolved_addresses() {
    use latchkey_egress::EgressRequest;

    use super::{Scripted, assert_denied, ip, relaxed_cfg};

    let srv = super::Server::start(super::server::ok("ok")).await;
    let port = srv.addr.port();
    let cases = [
        // (url, answer, policy relaxed?, refusal)
        (
            "https://alibaba.test/",
            vec!["100.100.100.200"],
            false,
            Metadata,
        ),
        ("https://wire.test/", vec!["168.63.129.16"], false, Metadata),
        ("https://v6.test/", vec!["fd00:ec2::254"], false, Metadata),
        (
            "https://gcp.test/",
            vec!["169.254.169.254"],
            true,
            LinkLocal,
        ),
        (
            "http://evil.localhost:{port}/",
            vec!["10.1.2.3"],
            true,
            NotLoopback,
        ),
        (
            "http://localhost:{port}/",
            vec!["127.0.0.1", "192.168.1.1"],
            true,
            NotLoopback,
        ),
        (
            "https://a.localhost:{port}/",
            vec!["93.184.216.34"],
            true,
            NotLoopback,
        ),
        (
            "http://mixed.localhost:{port}/",
            vec!["::1", "fd00:ec2::254"],
            true,
            Metadata,
        ),
    ];
    for (url, answer, relax, want) in cases {
        let url = url.replace("{port}", &port.to_string());
        let dns = Scripted::new(vec![answer.iter().map(|a| ip(a)).collect()]);
        let cfg = if relax {
            relaxed_cfg()
        } else {
            EgressConfig::default()
        };
        let e = Egress::with_resolver(cfg, dns.clone()).unwrap();
        assert!(
            e.check_url(&url, Op).is_ok(),
            "{url}: the static check passes"
        );
        let err = e
            .send(EgressRequest::get(&url, Op, 1024))
            .await
            .expect_err(&url);
        assert_denied(&err, want);
        assert_eq!(dns.calls(), 1, "{url}");
    }
    // A localhost name answering loopback only is reached.
    let dns = Scripted::new(vec![vec![ip("127.0.0.1"), ip("::1")]]);
    let e = Egress::with_resolver(relaxed_cfg(), dns).unwrap();
    let r = e
        .send(EgressRequest::get(
            format!("http://mcp.localhost:{port}/"),
            Op,
            1024,
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    srv.settle().await;
    assert_eq!(srv.hits(), 1, "only the loopback-only name connected");
}
