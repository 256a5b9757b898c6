//! Federated tool names: `<server-slug>__<tool>`, stable, collision-free, at most 64
//! characters of `[A-Za-z0-9_-]` (what the common LLM tool-calling APIs accept).
//!
//! * A server's **slug** is its name lowercased, every run of other characters turned
//!   into one `-` (an `_` run into `_`), trimmed of separators, cut to
//!   [`SLUG_MAX`] characters (`server` if nothing is left). Slugs never contain two
//!   separators in a row and never end in one.
//! * When several servers of a tenant share a slug, each of them gets
//!   `-<hash of its id>` appended (lengthened until unique), so the names depend only on
//!   the set of `(id, name)` pairs: not on list order, not on restarts, not on which
//!   servers are connected.
//! * A tool keeps its name when it is already made of `[A-Za-z0-9_-]` and the whole name
//!   fits; otherwise the name is cut and `_<hash of server id and tool>` appended.
//!
//! Going back from a federated name is a table lookup ([`owner`] over the tenant's
//! slugs, then the server's own listing), never a split on `__`, which may occur in
//! upstream tool names. [`owner`] is unambiguous because a slug contains no `__` and does
//! not end in a separator: at most one slug `s` has `s + "__"` as a prefix of a name.
//!
//! Prompts are named exactly like tools. Resource URIs and URI templates become
//! `latchkey://<server-slug>/<original>`, the original kept **verbatim** after the
//! prefix ([`resource_uri`]); [`uri_owner`] goes back by finding the one slug whose
//! prefix the URI starts with (a slug has no `/`, so at most one matches). Verbatim,
//! not percent-encoded, because templates must map back: a client expanding
//! `latchkey://fs/file:///docs/{name}` writes the prefix and then exactly what expanding
//! the upstream's `file:///docs/{name}` would have written, so what follows the prefix
//! is the URI the upstream expects. With the original percent-encoded, `%2F` in an
//! expansion could be the client's encoding of a value or ours of a `/`, and could not
//! be told apart. The result is still one URI (the original's scheme, `//`, query and
//! fragment are legal in a path, query and fragment), distinct per server whatever the
//! servers' own URIs are.
//!
//! A server with the **unprefixed** setting keeps its own names and URIs ([`item_name`],
//! [`item_uri`]): nothing above makes them distinct, so they are owned through each
//! server's listing instead, and a name two servers have is refused, never guessed
//! (`federated::naming`). [`template_matches`] says whether a URI may come from such a
//! server's template.

use std::collections::{BTreeMap, HashSet};

use sha2::{Digest, Sha256};

/// The longest federated tool name.
pub const MAX_NAME: usize = 64;
/// The longest slug taken from a server name (before any disambiguating suffix).
pub const SLUG_MAX: usize = 24;
/// Hex digits of the hash that disambiguates slugs (at first).
const SLUG_HASH: usize = 6;
/// Hex digits of the hash that ends a cut or rewritten tool name.
const TOOL_HASH: usize = 8;

/// Hex digits of SHA-256 over `parts` (each followed by a NUL, so parts cannot run
/// into each other).
fn hash(parts: &[&str], digits: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .chars()
        .take(digits)
        .collect()
}

/// The slug of a server name, before disambiguation.
pub fn base_slug(name: &str) -> String {
    let mut out = String::new();
    let mut pending: Option<char> = None;
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if let Some(sep) = pending.take()
                && !out.is_empty()
            {
                out.push(sep);
            }
            out.push(c);
        } else if pending.is_none() {
            // The first separator of a run decides; leading ones are dropped above.
            pending = Some(if c == '_' { '_' } else { '-' });
        }
    }
    let cut: String = out.chars().take(SLUG_MAX).collect();
    let cut = cut.trim_end_matches(['-', '_']).to_owned();
    if cut.is_empty() { "server".into() } else { cut }
}

/// The slug of every server, by id, from the tenant's `(id, name)` pairs.
pub fn slugs<'a>(
    servers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> BTreeMap<String, String> {
    let mut by_base: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (id, name) in servers {
        by_base.entry(base_slug(name)).or_default().push(id);
    }
    let mut out = BTreeMap::new();
    for (base, ids) in &by_base {
        if let [id] = ids.as_slice() {
            out.insert((*id).to_owned(), base.clone());
        }
    }
    let mut taken: HashSet<String> = out.values().cloned().collect();
    for (base, ids) in &mut by_base {
        if ids.len() < 2 {
            continue;
        }
        ids.sort_unstable();
        ids.dedup();
        for id in ids.iter() {
            let mut digits = SLUG_HASH;
            let slug = loop {
                let candidate = format!("{base}-{}", hash(&[id], digits));
                if digits >= 64 || !taken.contains(&candidate) {
                    break candidate;
                }
                digits += 2;
            };
            taken.insert(slug.clone());
            out.insert((*id).to_owned(), slug);
        }
    }
    out
}

/// The federated name of `tool` of the server `server_id` whose slug is `slug`.
pub fn tool_name(slug: &str, server_id: &str, tool: &str) -> String {
    let clean: String = tool
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let full = format!("{slug}__{clean}");
    if clean == tool && !tool.is_empty() && full.len() <= MAX_NAME {
        return full;
    }
    // Cut (ASCII only, so characters are bytes) and make unique again with a hash of
    // what the name stands for.
    let keep = MAX_NAME - 1 - TOOL_HASH;
    let head: String = full.chars().take(keep).collect();
    format!("{head}_{}", hash(&[server_id, tool], TOOL_HASH))
}

/// The federated name of tool or prompt `name`: [`tool_name`], or `name` itself for a
/// server with the unprefixed setting.
pub fn item_name(slug: &str, server_id: &str, name: &str, unprefixed: bool) -> String {
    if unprefixed {
        name.to_owned()
    } else {
        tool_name(slug, server_id, name)
    }
}

/// The federated URI (or template) of `original`: [`resource_uri`], or `original`
/// itself for a server with the unprefixed setting.
pub fn item_uri(slug: &str, original: &str, unprefixed: bool) -> String {
    if unprefixed {
        original.to_owned()
    } else {
        resource_uri(slug, original)
    }
}

/// Whether `uri` can be an expansion of the RFC 6570 URI template `template`: its
/// literal parts in order, each `{…}` expression standing for any text (the empty text
/// too). Loose on purpose: it only decides which unprefixed server may own a URI, and a
/// URI that more than one server could own is refused as a clash, not guessed.
pub fn template_matches(template: &str, uri: &str) -> bool {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        pieces.push(&rest[..open]);
        rest = &rest[open + close + 1..];
    }
    pieces.push(rest);
    let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else {
        return false;
    };
    if pieces.len() == 1 {
        return template == uri;
    }
    if uri.len() < first.len() + last.len() || !uri.starts_with(first) || !uri.ends_with(last) {
        return false;
    }
    // Between the first and the last literal, each middle one leftmost: a glob of `*`s.
    let Some(mut middle) = uri.get(first.len()..uri.len() - last.len()) else {
        return false;
    };
    for piece in &pieces[1..pieces.len() - 1] {
        match middle.find(piece) {
            Some(at) => middle = &middle[at + piece.len()..],
            None => return false,
        }
    }
    true
}

/// The server (id) whose slug prefixes `name` (`<slug>__…`), if any.
pub fn owner<'a>(name: &str, slugs: &'a BTreeMap<String, String>) -> Option<&'a str> {
    slugs.iter().find_map(|(id, slug)| {
        name.strip_prefix(slug.as_str())
            .is_some_and(|rest| rest.starts_with("__"))
            .then_some(id.as_str())
    })
}

/// The scheme of federated resource URIs.
pub const URI_SCHEME: &str = "latchkey";

/// The federated URI (or URI template) of `original`, a resource URI (or template) of
/// the server whose slug is `slug`.
pub fn resource_uri(slug: &str, original: &str) -> String {
    format!("{URI_SCHEME}://{slug}/{original}")
}

/// The server (id) whose prefix starts `uri` (`latchkey://<slug>/…`), and the original
/// URI (or template) that follows it, if any.
pub fn uri_owner<'a, 'u>(
    uri: &'u str,
    slugs: &'a BTreeMap<String, String>,
) -> Option<(&'a str, &'u str)> {
    let rest = uri
        .strip_prefix(URI_SCHEME)
        .and_then(|r| r.strip_prefix("://"))?;
    slugs.iter().find_map(|(id, slug)| {
        rest.strip_prefix(slug.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .map(|original| (id.as_str(), original))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_lowercase_safe_and_short() {
        assert_eq!(base_slug("GitHub"), "github");
        assert_eq!(base_slug("  Linear (prod) "), "linear-prod");
        assert_eq!(base_slug("my__tools"), "my_tools");
        assert_eq!(base_slug("a_-_b"), "a_b");
        assert_eq!(base_slug("Ünïcode ✓ name"), "n-code-name");
        assert_eq!(base_slug("!!!"), "server");
        assert_eq!(base_slug(""), "server");
        let long = base_slug("a very long server name that goes on and on");
        assert!(long.len() <= SLUG_MAX, "{long}");
        assert!(!long.ends_with('-') && !long.contains("__"));
    }

    #[test]
    fn shared_slugs_are_disambiguated_whatever_the_order() {
        let a = slugs([
            ("id-1", "Scripted"),
            ("id-2", "scripted"),
            ("id-3", "Other"),
        ]);
        let b = slugs([
            ("id-3", "Other"),
            ("id-2", "scripted"),
            ("id-1", "Scripted"),
        ]);
        assert_eq!(a, b);
        assert_eq!(a["id-3"], "other");
        assert_ne!(a["id-1"], a["id-2"]);
        assert!(a["id-1"].starts_with("scripted-") && a["id-2"].starts_with("scripted-"));
        // A server literally named like a disambiguated slug does not collide.
        let taken = a["id-1"].clone();
        let c = slugs([
            ("id-1", "Scripted"),
            ("id-2", "scripted"),
            ("id-9", taken.as_str()),
        ]);
        let values: HashSet<&String> = c.values().collect();
        assert_eq!(values.len(), 3, "{c:?}");
    }

    #[test]
    fn tool_names_fit_and_stay_unique() {
        assert_eq!(
            tool_name("github", "s1", "create_issue"),
            "github__create_issue"
        );
        let odd = tool_name("github", "s1", "create issue");
        let plain = tool_name("github", "s1", "create_issue");
        assert_ne!(odd, plain);
        assert!(odd.starts_with("github__create_issue_"));
        let long_tool = "x".repeat(100);
        let long = tool_name("github", "s1", &long_tool);
        assert_eq!(long.len(), MAX_NAME);
        assert_ne!(long, tool_name("github", "s1", &"x".repeat(101)));
        for n in [&odd, &long] {
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            );
        }
        // A tool name with `__` in it is fine: nothing splits on it.
        assert_eq!(tool_name("a", "s", "b__c"), "a__b__c");
    }

    #[test]
    fn resource_uris_map_back_whole_even_from_a_template_expansion() {
        let s = slugs([("id-a", "a"), ("id-ab", "a b"), ("id-c", "c")]);
        for (id, slug) in &s {
            for original in [
                "file:///notes.txt",
                "https://x.example/a/b?q=1&r=%2F#frag",
                "latchkey://a/nested",
                "",
            ] {
                let uri = resource_uri(slug, original);
                assert_eq!(uri_owner(&uri, &s), Some((id.as_str(), original)), "{uri}");
            }
        }
        // A client expanding the federated template writes the prefix, then what the
        // upstream's template would have expanded to.
        let template = resource_uri(&s["id-a"], "file:///docs/{name}");
        let expanded = template.replace("{name}", "a%2Fb");
        assert_eq!(
            uri_owner(&expanded, &s),
            Some(("id-a", "file:///docs/a%2Fb"))
        );
        assert_eq!(uri_owner("latchkey://a-b/x", &s), Some(("id-ab", "x")));
        for foreign in [
            "file:///notes.txt",
            "latchkey://d/x",
            "latchkey://a",
            "LATCHKEY://a/x",
        ] {
            assert_eq!(uri_owner(foreign, &s), None, "{foreign}");
        }
    }

    #[test]
    fn unprefixed_names_are_kept_and_templates_match_their_expansions() {
        assert_eq!(item_name("gh", "s1", "create issue", true), "create issue");
        assert_eq!(item_name("gh", "s1", "x", false), "gh__x");
        assert_eq!(item_uri("gh", "file:///a", true), "file:///a");
        assert_eq!(
            item_uri("gh", "file:///a", false),
            "latchkey://gh/file:///a"
        );
        let t = "test://template/{id}/data";
        for yes in [
            "test://template/42/data",
            "test://template//data",
            "test://template/a/b/data",
            t,
        ] {
            assert!(template_matches(t, yes), "{yes}");
        }
        for no in [
            "test://template/42/dat",
            "test://templat/42/data",
            "test://template/42/data/x",
            "test://template/data",
        ] {
            assert!(!template_matches(t, no), "{no}");
        }
        assert!(template_matches("a{x}b{y}c", "a1b2c"));
        assert!(template_matches("a{x}b{y}c", "abc"));
        assert!(!template_matches("a{x}b{y}c", "ac"));
        assert!(template_matches("file:///{+path}", "file:///x/y"));
        assert!(template_matches("no-vars", "no-vars"));
        assert!(!template_matches("no-vars", "no-vars2"));
        assert!(!template_matches("broken{", "broken"));
        assert!(template_matches("broken{", "broken{"));
    }

    #[test]
    fn the_owner_is_found_by_prefix_table_not_by_splitting() {
        let s = slugs([("id-a", "a"), ("id-ab", "a b"), ("id-c", "c")]);
        assert_eq!(s["id-ab"], "a-b");
        assert_eq!(owner("a__b__c", &s), Some("id-a"));
        assert_eq!(owner("a-b__x", &s), Some("id-ab"));
        assert_eq!(owner("c__", &s), Some("id-c"));
        assert_eq!(owner("latchkey_connect", &s), None);
        assert_eq!(owner("d__x", &s), None);
        for (id, slug) in &s {
            let name = tool_name(slug, id, &"t".repeat(80));
            assert_eq!(owner(&name, &s), Some(id.as_str()));
        }
    }
}
