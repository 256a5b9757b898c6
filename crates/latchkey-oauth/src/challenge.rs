//! `WWW-Authenticate` parsing (RFC 9110 §11.6.1, RFC 6750 §3, RFC 9728 §5.1, RFC 9449 §7.1).
//!
//! Written by hand because the header grammar is ambiguous in a way no general
//! parser resolves for us: a comma separates both auth-params and challenges, and a
//! token68 may end in `=`. The parser accepts any byte sequence, never panics and
//! always makes progress (it is a fuzz target).

/// One challenge: a scheme and its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Challenge {
    /// The auth scheme as sent (`Bearer`, `DPoP`, `Basic` …).
    pub scheme: String,
    /// Parameters in order; names lower-cased; the first occurrence of a name wins.
    pub params: Vec<(String, String)>,
    /// A token68 credential, if the challenge carried one instead of parameters.
    pub token68: Option<String>,
}

impl Challenge {
    /// The value of a parameter, by case-insensitive name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether this challenge uses `scheme` (case-insensitive).
    pub fn is(&self, scheme: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme)
    }
}

/// The parameters of a `Bearer` (or `DPoP`) challenge that MCP clients act on.
/// Nothing else in a challenge is acted upon (R-SEC-15).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BearerChallenge {
    /// The scheme the parameters came from.
    pub scheme: String,
    /// `resource_metadata`: where the protected resource metadata lives (RFC 9728 §5.1).
    pub resource_metadata: Option<String>,
    /// `scope`: space-separated scopes the resource requires.
    pub scope: Option<String>,
    /// `error`: `invalid_token`, `insufficient_scope`, `use_dpop_nonce` …
    pub error: Option<String>,
    /// `error_description`: untrusted text, for logs and messages only.
    pub error_description: Option<String>,
}

impl BearerChallenge {
    /// True for `error="insufficient_scope"`.
    pub fn is_insufficient_scope(&self) -> bool {
        self.error.as_deref() == Some("insufficient_scope")
    }

    /// The challenged scopes as a list (empty when there is no `scope`).
    pub fn scopes(&self) -> Vec<String> {
        self.scope
            .as_deref()
            .map(|s| s.split_ascii_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

/// Parses every challenge in one or more `WWW-Authenticate` field values.
pub fn parse_all<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Vec<Challenge> {
    let mut out = Vec::new();
    for v in values {
        out.extend(parse(v));
    }
    out
}

/// Finds the first `Bearer` challenge, else the first `DPoP` challenge, in the field values.
pub fn bearer_challenge<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<BearerChallenge> {
    let all = parse_all(values);
    let pick = all
        .iter()
        .find(|c| c.is("Bearer"))
        .or_else(|| all.iter().find(|c| c.is("DPoP")))?;
    Some(BearerChallenge {
        scheme: pick.scheme.clone(),
        resource_metadata: pick.param("resource_metadata").map(str::to_owned),
        scope: pick.param("scope").map(str::to_owned),
        error: pick.param("error").map(str::to_owned),
        error_description: pick.param("error_description").map(str::to_owned),
    })
}

/// Finds a challenge of the given scheme with `error` set, e.g. `DPoP error="use_dpop_nonce"`.
pub fn challenge_error<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<String> {
    parse_all(values)
        .into_iter()
        .find_map(|c| c.param("error").map(str::to_owned))
}

/// Parses one `WWW-Authenticate` field value.
pub fn parse(input: &[u8]) -> Vec<Challenge> {
    let text = String::from_utf8_lossy(input);
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let mut out: Vec<Challenge> = Vec::new();
    loop {
        p.skip_ws_and_commas();
        if p.at_end() {
            break;
        }
        let scheme = p.token();
        if scheme.is_empty() {
            p.i += 1; // not a token character: skip it, always make progress
            continue;
        }
        let mut ch = Challenge {
            scheme,
            ..Challenge::default()
        };
        p.skip_ws();
        // token68 directly after the scheme?
        if let Some(t68) = p.try_token68() {
            ch.token68 = Some(t68);
            out.push(ch);
            continue;
        }
        // auth-params, comma separated, until the next token that is not followed by '='.
        loop {
            p.skip_ws();
            let save = p.i;
            let name = p.token();
            if name.is_empty() {
                if p.peek() == Some(b',') {
                    p.i += 1;
                    continue;
                }
                if p.at_end() {
                    break;
                }
                // garbage: skip one byte so the loop always ends
                p.i += 1;
                continue;
            }
            p.skip_ws();
            if p.peek() != Some(b'=') {
                // a new challenge starts here
                p.i = save;
                break;
            }
            p.i += 1;
            p.skip_ws();
            let value = if p.peek() == Some(b'"') {
                p.quoted()
            } else {
                p.token()
            };
            let name = name.to_ascii_lowercase();
            if !ch.params.iter().any(|(k, _)| *k == name) {
                ch.params.push((name, value));
            }
            p.skip_ws();
            match p.peek() {
                Some(b',') => p.i += 1,
                None => break,
                Some(_) => {}
            }
        }
        out.push(ch);
    }
    out
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token68_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn skip_ws_and_commas(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }

    fn token(&mut self) -> String {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    /// A token68 is token68 characters, then `=` padding, then end or a comma.
    /// Anything else (notably `name=value`) is not a token68 and leaves the position alone.
    fn try_token68(&mut self) -> Option<String> {
        let start = self.i;
        let mut j = self.i;
        while self.s.get(j).copied().is_some_and(is_token68_char) {
            j += 1;
        }
        if j == start {
            return None;
        }
        while self.s.get(j) == Some(&b'=') {
            j += 1;
        }
        let mut k = j;
        while matches!(self.s.get(k), Some(b' ' | b'\t')) {
            k += 1;
        }
        if k < self.s.len() && self.s[k] != b',' {
            return None;
        }
        // Note: `Bearer a=` (end) reads as the token68 `a=`; RFC 9110 allows either
        // reading and no MCP parameter is ever empty, so nothing acts on the difference.
        let text = String::from_utf8_lossy(&self.s[start..j]).into_owned();
        self.i = j;
        Some(text)
    }

    /// A quoted-string; backslash escapes any byte. An unterminated string runs to the end.
    fn quoted(&mut self) -> String {
        self.i += 1; // opening quote
        let mut out = Vec::new();
        while let Some(b) = self.peek() {
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    if let Some(n) = self.peek() {
                        out.push(n);
                        self.i += 1;
                    }
                }
                _ => out.push(b),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Vec<Challenge> {
        parse(s.as_bytes())
    }

    #[test]
    fn mcp_bearer_challenge() {
        let v = r#"Bearer error="invalid_token", error_description="Missing Authorization header", resource_metadata="http://localhost:3000/.well-known/oauth-protected-resource/mcp""#;
        let c = bearer_challenge([v.as_bytes()]).unwrap();
        assert_eq!(c.error.as_deref(), Some("invalid_token"));
        assert_eq!(
            c.resource_metadata.as_deref(),
            Some("http://localhost:3000/.well-known/oauth-protected-resource/mcp")
        );
        assert_eq!(c.scope, None);
    }

    #[test]
    fn insufficient_scope_with_scopes() {
        let c = bearer_challenge([
            br#"Bearer error="insufficient_scope", scope="mcp:basic mcp:write""#.as_slice(),
        ])
        .unwrap();
        assert!(c.is_insufficient_scope());
        assert_eq!(c.scopes(), vec!["mcp:basic", "mcp:write"]);
    }

    #[test]
    fn several_challenges_in_one_value() {
        let cs = one(r#"Basic realm="x", Bearer realm="api", scope=read, DPoP algs="ES256""#);
        assert_eq!(cs.len(), 3);
        assert_eq!(cs[0].scheme, "Basic");
        assert_eq!(cs[0].param("realm"), Some("x"));
        assert_eq!(cs[1].param("scope"), Some("read"));
        assert!(cs[2].is("dpop"));
        assert_eq!(cs[2].param("ALGS"), Some("ES256"));
    }

    #[test]
    fn token68_and_bare_scheme() {
        let cs = one("Negotiate abc+/def==, Bearer");
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0].token68.as_deref(), Some("abc+/def=="));
        assert_eq!(cs[1].scheme, "Bearer");
        assert!(cs[1].params.is_empty());
    }

    #[test]
    fn escapes_and_case_and_first_wins() {
        let cs = one(r#"bearer Scope="a \"b\" c", scope="second""#);
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].param("scope"), Some(r#"a "b" c"#));
    }

    #[test]
    fn whitespace_around_equals_and_empty_items() {
        let cs = one(" ,, Bearer   realm = \"r\" ,  , error=invalid_token ,");
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].param("realm"), Some("r"));
        assert_eq!(cs[0].param("error"), Some("invalid_token"));
    }

    #[test]
    fn multiple_header_values() {
        let c = bearer_challenge([
            b"Basic realm=\"a\"".as_slice(),
            b"Bearer scope=\"x y\"".as_slice(),
        ])
        .unwrap();
        assert_eq!(c.scope.as_deref(), Some("x y"));
    }

    #[test]
    fn dpop_only_challenge() {
        let c = bearer_challenge([br#"DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof""#.as_slice()]).unwrap();
        assert_eq!(c.scheme, "DPoP");
        assert_eq!(c.error.as_deref(), Some("use_dpop_nonce"));
    }

    #[test]
    fn garbage_never_panics() {
        for s in [
            "",
            "=",
            "\"",
            "Bearer \"",
            "Bearer a=\"\\",
            "Bearer ,=,=,",
            "\u{0}\u{ff}",
            "Bearer a=b=c",
            "  =x",
            "Bearer realm=\"unterminated",
            ",,,,",
            "B\te\tr",
            "Bearer a=,b=",
        ] {
            let _ = parse(s.as_bytes());
        }
        let _ = parse(&[0xff, 0xfe, b'=', b'"', 0x80]);
    }

    #[test]
    fn unterminated_quote_runs_to_end() {
        let cs = one("Bearer realm=\"abc");
        assert_eq!(cs[0].param("realm"), Some("abc"));
    }
}
