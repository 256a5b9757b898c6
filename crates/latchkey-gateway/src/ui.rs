//! The web UI (issue 6): a page at `/` and its files under `/ui/`, embedded in the
//! binary (plain HTML, CSS and JavaScript modules, no build step, nothing fetched from
//! elsewhere). Unauthenticated like any static file: the page holds no data of its own
//! and reads everything through the API, which the guard protects.
//!
//! Every answer carries a strict Content-Security-Policy (scripts, styles and
//! connections from this origin only, no inline script, no framing), `nosniff` and no
//! referrer. The page never receives a secret: the API shows a client secret only as
//! `has_client_secret`, and the page clears a typed secret once it is sent.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::ApiError;

/// The Content-Security-Policy of the page and its files.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// One embedded file.
#[derive(Debug)]
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

/// The files under `/ui/`, by name.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../ui/app.css"),
    },
    Asset {
        name: "app.js",
        content_type: JS,
        body: include_bytes!("../ui/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: JS,
        body: include_bytes!("../ui/api.js"),
    },
    Asset {
        name: "dom.js",
        content_type: JS,
        body: include_bytes!("../ui/dom.js"),
    },
    Asset {
        name: "session.js",
        content_type: JS,
        body: include_bytes!("../ui/session.js"),
    },
    Asset {
        name: "messages.js",
        content_type: JS,
        body: include_bytes!("../ui/messages.js"),
    },
    Asset {
        name: "keys.js",
        content_type: JS,
        body: include_bytes!("../ui/keys.js"),
    },
    Asset {
        name: "oauth.js",
        content_type: JS,
        body: include_bytes!("../ui/oauth.js"),
    },
    Asset {
        name: "notices.js",
        content_type: JS,
        body: include_bytes!("../ui/notices.js"),
    },
    Asset {
        name: "toolform.js",
        content_type: JS,
        body: include_bytes!("../ui/toolform.js"),
    },
    Asset {
        name: "headers.js",
        content_type: JS,
        body: include_bytes!("../ui/headers.js"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../ui/icon.svg"),
    },
];

const INDEX: &[u8] = include_bytes!("../ui/index.html");

/// The UI's routes: `/` and `/ui/{file}`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/ui/{file}", get(asset))
}

fn respond(content_type: &'static str, body: &'static [u8]) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The popup keeps its opener (the result comes back by postMessage), but a page
    // opened elsewhere cannot reach this one.
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin-allow-popups"),
    );
    // Revalidated on every load, so an upgraded binary's files are picked up.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// `GET /`: the page.
async fn index() -> Response {
    respond("text/html; charset=utf-8", INDEX)
}

/// `GET /ui/{file}`: an embedded file, or 404.
async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => respond(a.content_type, a.body),
        None => ApiError::NotFound.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_inline_script_and_only_local_files() {
        let index = std::str::from_utf8(INDEX).unwrap();
        // Every <script> names a file of ours; none carries code.
        for part in index.split("<script").skip(1) {
            let (tag, rest) = part.split_once('>').unwrap();
            assert!(tag.contains("src=\"/ui/"), "{tag}");
            assert!(rest.starts_with("</script>"), "inline script: {rest}");
        }
        for a in ASSETS {
            let text = String::from_utf8_lossy(a.body);
            for banned in ["http://", "https://", "innerHTML", "outerHTML", "eval("] {
                // The SVG's XML namespace is a name, not a fetch.
                if a.name == "icon.svg" && banned == "http://" {
                    continue;
                }
                assert!(!text.contains(banned), "{} contains {banned}", a.name);
            }
            // Modules import each other by relative path; every import is embedded.
            for part in text.split("from \"./").skip(1) {
                let name = part.split_once('"').unwrap().0;
                assert!(
                    ASSETS.iter().any(|b| b.name == name),
                    "{} imports {name}",
                    a.name
                );
            }
        }
        // Everything the page loads is a file of ours.
        // (The one link elsewhere is Latchkey's own sign-in, a navigation, not a load.)
        for attr in ["src=\"", "href=\""] {
            for part in index.split(attr).skip(1) {
                if attr == "href=\"" && part.starts_with("/v1/auth/login\"") {
                    continue;
                }
                assert!(part.starts_with("/ui/"), "{attr}{part}");
            }
        }
    }
}
