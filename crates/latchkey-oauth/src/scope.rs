//! Scope selection (MCP authorization, "Scope Selection Strategy") and step-up.

/// Inputs to scope selection, strongest first.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScopeInputs<'a> {
    /// Operator-configured scope (R-DISC-8 #1): always wins.
    pub configured: Option<&'a str>,
    /// The `scope` of the `WWW-Authenticate` challenge: authoritative when present.
    pub challenge: Option<&'a str>,
    /// PRM `scopes_supported`.
    pub prm_scopes_supported: Option<&'a [String]>,
    /// AS `scopes_supported`, consulted only for `offline_access`.
    pub as_scopes_supported: Option<&'a [String]>,
    /// Whether to ask for `offline_access` when (and only when) the AS lists it.
    pub want_offline_access: bool,
}

/// The `scope` to request, or `None` to omit the parameter.
///
/// Order: configured, then the challenge, then all of PRM `scopes_supported`, else
/// omitted. `offline_access` is added only when the AS lists it and something else is
/// requested, so "omit when undefined" stays omitted.
pub fn select(inputs: ScopeInputs<'_>) -> Option<String> {
    let base: Vec<String> = if let Some(c) = inputs.configured.filter(|s| !s.trim().is_empty()) {
        split(c)
    } else if let Some(c) = inputs.challenge.filter(|s| !s.trim().is_empty()) {
        split(c)
    } else if let Some(p) = inputs.prm_scopes_supported.filter(|p| !p.is_empty()) {
        p.iter()
            .filter(|s| !s.is_empty() && s.as_str() != "offline_access")
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    if base.is_empty() {
        return None;
    }
    let mut out = base;
    let as_lists_offline = inputs
        .as_scopes_supported
        .is_some_and(|s| s.iter().any(|x| x == "offline_access"));
    if inputs.want_offline_access && as_lists_offline && !out.iter().any(|s| s == "offline_access")
    {
        out.push("offline_access".into());
    }
    Some(join(&out))
}

/// The step-up scope: the union of what was requested before and what the 403 challenge
/// asks for, order kept, no duplicates (MCP 2026-07-28 "Step-Up Authorization Flow").
pub fn union(previous: Option<&str>, challenged: &str) -> String {
    let mut out: Vec<String> = previous.map(split).unwrap_or_default();
    for s in split(challenged) {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    join(&out)
}

/// Splits a space-separated scope string, dropping duplicates.
pub fn split(s: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in s.split_ascii_whitespace() {
        if !out.iter().any(|x| x == t) {
            out.push(t.to_owned());
        }
    }
    out
}

fn join(v: &[String]) -> String {
    v.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn precedence() {
        let prm = v(&["mcp:basic", "mcp:read", "mcp:write"]);
        assert_eq!(
            select(ScopeInputs {
                challenge: Some("mcp:basic"),
                prm_scopes_supported: Some(&prm),
                ..Default::default()
            }),
            Some("mcp:basic".into())
        );
        assert_eq!(
            select(ScopeInputs {
                prm_scopes_supported: Some(&prm),
                ..Default::default()
            }),
            Some("mcp:basic mcp:read mcp:write".into())
        );
        assert_eq!(select(ScopeInputs::default()), None);
        assert_eq!(
            select(ScopeInputs {
                configured: Some("a b"),
                challenge: Some("c"),
                ..Default::default()
            }),
            Some("a b".into())
        );
    }

    #[test]
    fn offline_access_only_when_the_as_lists_it() {
        let as_yes = v(&["mcp:basic", "offline_access"]);
        let as_no = v(&["mcp:basic"]);
        let prm = v(&["mcp:basic"]);
        let with = |as_s: &[String]| {
            select(ScopeInputs {
                prm_scopes_supported: Some(&prm),
                as_scopes_supported: Some(as_s),
                want_offline_access: true,
                ..Default::default()
            })
        };
        assert_eq!(with(&as_yes), Some("mcp:basic offline_access".into()));
        assert_eq!(with(&as_no), Some("mcp:basic".into()));
        // nothing else requested: stay omitted
        assert_eq!(
            select(ScopeInputs {
                as_scopes_supported: Some(&as_yes),
                want_offline_access: true,
                ..Default::default()
            }),
            None
        );
    }

    #[test]
    fn step_up_is_a_union() {
        assert_eq!(
            union(Some("mcp:basic"), "mcp:basic mcp:write"),
            "mcp:basic mcp:write"
        );
        assert_eq!(union(None, "a"), "a");
        assert_eq!(union(Some("x y"), "z x"), "x y z");
    }
}
