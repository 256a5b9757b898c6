//! String-level URL helpers.
//!
//! Identifiers such as `issuer` and PRM `resource` are compared as strings, so they are
//! never rebuilt through `url::Url` (which adds a `/` to a pathless URL). The parser is
//! used only to find the origin and path; the pieces are joined as text.

use url::Url;

/// `scheme://host[:port]` of an absolute http(s) URL, as text, without a trailing `/`.
pub(crate) fn origin(raw: &str) -> Option<String> {
    let u = Url::parse(raw).ok()?;
    if !matches!(u.scheme(), "http" | "https") {
        return None;
    }
    match u.origin() {
        url::Origin::Tuple(..) => Some(u.origin().ascii_serialization()),
        url::Origin::Opaque(_) => None,
    }
}

/// The path of an absolute URL with any trailing `/` removed (`""` for the root).
pub(crate) fn path_without_trailing_slash(raw: &str) -> Option<String> {
    let u = Url::parse(raw).ok()?;
    Some(u.path().trim_end_matches('/').to_owned())
}

/// Inserts a well-known suffix between origin and path (RFC 8414 §3.1, RFC 9728 §3.1):
/// `https://h/p` + `oauth-authorization-server` → `https://h/.well-known/oauth-authorization-server/p`.
pub(crate) fn well_known_inserted(raw: &str, suffix: &str) -> Option<String> {
    let origin = origin(raw)?;
    let path = path_without_trailing_slash(raw)?;
    Some(format!("{origin}/.well-known/{suffix}{path}"))
}

/// Appends a well-known suffix after the path (OpenID Connect Discovery §4):
/// `https://h/p` → `https://h/p/.well-known/openid-configuration`.
pub(crate) fn well_known_appended(raw: &str, suffix: &str) -> Option<String> {
    let origin = origin(raw)?;
    let path = path_without_trailing_slash(raw)?;
    Some(format!("{origin}{path}/.well-known/{suffix}"))
}

/// The URL without query and fragment, as DPoP `htu` wants it (RFC 9449 §4.2).
pub(crate) fn without_query_and_fragment(raw: &str) -> String {
    let cut = raw.find(['?', '#']).unwrap_or(raw.len());
    raw[..cut].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserted_and_appended() {
        assert_eq!(
            well_known_inserted("http://localhost:9/tenant1", "oauth-authorization-server")
                .unwrap(),
            "http://localhost:9/.well-known/oauth-authorization-server/tenant1"
        );
        assert_eq!(
            well_known_inserted("http://localhost:9", "oauth-authorization-server").unwrap(),
            "http://localhost:9/.well-known/oauth-authorization-server"
        );
        assert_eq!(
            well_known_inserted("https://a.example/", "oauth-protected-resource").unwrap(),
            "https://a.example/.well-known/oauth-protected-resource"
        );
        assert_eq!(
            well_known_appended("http://localhost:9/tenant1/", "openid-configuration").unwrap(),
            "http://localhost:9/tenant1/.well-known/openid-configuration"
        );
        assert_eq!(
            origin("https://A.example:443/x").unwrap(),
            "https://a.example"
        );
        assert_eq!(origin("file:///etc/passwd"), None);
        assert_eq!(
            without_query_and_fragment("https://a/b?c=1#d"),
            "https://a/b"
        );
    }
}
