//! The web UI's files over real HTTP: the page at `/` with its strict CSP, each file
//! with its content type, unknown files 404, no credential needed for the files (the
//! page reads everything through the guarded API), and the callback page's message.

use std::collections::HashMap;

use latchkey_gateway::Config;
use latchkey_vault::keyring::StaticKeys;

async fn get(url: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let r = super::client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("no {name}"))
        .to_str()
        .unwrap()
}

/// The headers every UI answer carries.
fn assert_hardened(h: &reqwest::header::HeaderMap, what: &str) {
    let csp = header(h, "content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(directive), "{what}: {csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
    assert!(!csp.contains("http:") && !csp.contains("https:") && !csp.contains('*'));
    assert_eq!(header(h, "x-content-type-options"), "nosniff", "{what}");
    assert_eq!(header(h, "referrer-policy"), "no-referrer", "{what}");
}

#[tokio::test]
async fn the_page_and_its_files_are_served_with_a_strict_csp() {
    let (base, dir) = super::start(&super::loopback_config(), StaticKeys(None)).await;

    let (status, h, html) = get(&format!("{base}/")).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-type"), "text/html; charset=utf-8");
    assert_hardened(&h, "/");
    assert!(html.contains(r#"<script type="module" src="/ui/app.js"></script>"#));
    assert!(html.contains(r#"<link rel="stylesheet" href="/ui/app.css">"#));
    assert!(html.contains(r#"name="viewport""#), "usable at phone width");
    // Accessible form: every input, select and textarea has a label.
    for id in [
        "f-name",
        "f-url",
        "f-auth",
        "f-client-id",
        "f-client-secret",
        "f-scopes",
        "f-grant",
    ] {
        assert!(
            html.contains(&format!(r#"for="{id}""#)),
            "{id} has no label"
        );
    }
    assert!(html.contains(r#"aria-live="polite""#));

    for (file, ct) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("api.js", "text/javascript; charset=utf-8"),
        ("dom.js", "text/javascript; charset=utf-8"),
        ("messages.js", "text/javascript; charset=utf-8"),
        ("oauth.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let (status, h, body) = get(&format!("{base}/ui/{file}")).await;
        assert_eq!(status, 200, "{file}");
        assert_eq!(header(&h, "content-type"), ct, "{file}");
        assert_hardened(&h, file);
        assert!(!body.is_empty(), "{file}");
    }
    // The callback message is read from this origin only and never posted to `*`.
    let (_, _, oauth) = get(&format!("{base}/ui/oauth.js")).await;
    assert!(oauth.contains("ev.origin !== window.location.origin"));
    assert!(oauth.contains(r#"`mcp-oauth-${id}`"#));
    assert!(!oauth.contains("'*'") && !oauth.contains("\"*\""));

    for missing in [
        "/ui/nope.js",
        "/ui/app.js.map",
        "/ui/index.html",
        "/ui/..%2FCargo.toml",
        "/ui/",
        "/ui",
    ] {
        let (status, _, _) = get(&format!("{base}{missing}")).await;
        assert_eq!(status, 404, "{missing}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The files are public (they hold no data); the API behind them is not.
#[tokio::test]
async fn the_files_need_no_credential_but_the_api_does() {
    let toml = "public_url = \"http://127.0.0.1:9\"\n[auth]\nmode = \"jwt\"\nissuer = \"https://idp.example\"\naudience = \"http://127.0.0.1:9/mcp\"\njwks_url = \"https://idp.example/jwks\"";
    let cfg = Config::parse(toml, &HashMap::new()).unwrap();
    let (base, dir) = super::start(&cfg, StaticKeys(None)).await;
    for path in ["/", "/ui/app.js"] {
        let r = super::client()
            .get(format!("{base}{path}"))
            .header("host", "127.0.0.1:9")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
    let r = super::client()
        .get(format!("{base}/v1/servers"))
        .header("host", "127.0.0.1:9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let _ = std::fs::remove_dir_all(dir);
}

/// R-UI-2 and R-SEC-11: the callback page's result has the UI's shape, goes to the
/// `mcp-oauth` channel and to this origin only, and its one script is allowed by hash.
#[tokio::test]
async fn the_callback_page_posts_the_result_the_ui_listens_for() {
    let (base, dir) = super::start(&super::loopback_config(), StaticKeys(None)).await;
    let (status, h, html) = get(&format!(
        "{base}/v1/oauth/callback?state=unknown&error=%3Cb%3Ex%3C%2Fb%3E"
    ))
    .await;
    assert_eq!(status, 400);
    assert_eq!(header(&h, "content-type"), "text/html; charset=utf-8");
    assert!(html.contains(r#""type":"mcp-oauth""#), "{html}");
    assert!(html.contains(r#""serverId":null"#), "{html}");
    assert!(html.contains(r#""reason":"invalid_state""#), "{html}");
    assert!(html.contains("Authorization expired. Please try again."));
    assert!(html.contains("new BroadcastChannel('mcp-oauth')"));
    assert!(html.contains("postMessage(m,window.location.origin)"));
    assert!(!html.contains("<b>x"), "untrusted text never in markup");
    let csp = header(&h, "content-security-policy");
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(header(&h, "referrer-policy"), "no-referrer");
    // Styled like the app (issue 17): its stylesheet and icon, from this origin only.
    assert!(
        html.contains(r#"<link rel="stylesheet" href="/ui/app.css">"#),
        "{html}"
    );
    assert!(html.contains(r#"<img src="/ui/icon.svg""#), "{html}");
    assert!(
        csp.contains("style-src 'self'") && csp.contains("img-src 'self'"),
        "{csp}"
    );
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert!(!csp.contains("http:") && !csp.contains("https:") && !csp.contains('*'));
    let _ = std::fs::remove_dir_all(dir);
}
