//! Which server a federated name or URI belongs to, once some servers keep their own
//! names (the per-server `unprefixed` setting, issue 20).
//!
//! * A prefixed name (`<slug>__<name>`, `latchkey://<slug>/…`) belongs to the one server
//!   with that slug among the *prefixed* servers ([`names::owner`], [`names::uri_owner`]).
//! * An unprefixed server owns the names in its last listing (its per-slot table) and,
//!   for URIs, the resources it listed and whatever its URI templates can expand to
//!   ([`names::template_matches`]). A server that has no table yet is listed first.
//! * A name or URI that **more than one usable server** claims this way is a clash,
//!   never resolved by guessing or by order: the listings leave every clashing item out
//!   and log it ([`drop_clashes`]), and a `tools/call`, `prompts/get`, `resources/read`
//!   or `completion/complete` of it is refused with an error naming all the servers
//!   ([`clash`]). `latchkey_connect` is Latchkey's own: an upstream tool of that name is
//!   left out. A server whose slot is not usable (no token, no header values) is
//!   hidden, so it neither owns nor clashes.
//! * When no prefixed server owns a name or URI by its prefix and exactly one server is
//!   unprefixed (or exactly one of them is usable), it goes to that server without
//!   looking at any table: the server answers it as it would directly (its own error
//!   for a name it does not have, a URI it does not list but can read), so `/mcp` in
//!   front of one server is transparent and needs no listing first; one that is not
//!   connected answers with the consent elicitation, as a prefixed server does.
//!
//! Without unprefixed servers nothing here costs anything: the prefix decides, as before.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, MutexGuard};

use latchkey_guard::Principal;
use rmcp::ErrorData;
use serde_json::{Value, json};

use super::primitives::Listing;
use super::{Federation, Member, SlotKey, Table, Unavailable, names, slot_key};

/// Upstream resource URIs and URI templates per slot, from the last listings (what an
/// unprefixed server claims).
#[derive(Debug, Default)]
pub(super) struct UriTables {
    resources: std::collections::HashMap<SlotKey, Arc<HashSet<String>>>,
    templates: std::collections::HashMap<SlotKey, Arc<Vec<String>>>,
}

impl UriTables {
    /// Forgets a slot's URIs and templates (its server's resource list changed): the
    /// next lookup lists them again.
    pub(super) fn forget(&mut self, key: &SlotKey) {
        self.resources.remove(key);
        self.templates.remove(key);
    }
}

/// A tool name or a prompt name.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Tool,
    Prompt,
}

/// Where a federated name or URI goes.
pub(super) enum Route<'m, T> {
    /// The one server that has it (with the original URI, for a URI).
    To(T),
    /// No server has it.
    Unknown,
    /// More than one usable server has it: refused ([`clash`]).
    Clash(Vec<&'m Member>),
}

/// The prefixed servers' slugs (an unprefixed server's names carry no prefix, so a
/// `<its slug>__…` name is not its).
fn prefixed_slugs(members: &[Member]) -> BTreeMap<String, String> {
    members
        .iter()
        .filter(|m| !m.server.unprefixed)
        .map(|m| (m.server.id.clone(), m.slug.clone()))
        .collect()
}

fn find<'m>(members: &'m [Member], id: &str) -> Option<&'m Member> {
    members.iter().find(|m| m.server.id == id)
}

/// The refusal of a name or URI that several servers have: it names every one of them
/// (name and id) and what to change; `data.servers` lists their ids.
pub(super) fn clash(what: &str, name: &str, servers: &[&Member]) -> ErrorData {
    let named: Vec<String> = servers
        .iter()
        .map(|m| format!("{} ({})", m.server.name, m.server.id))
        .collect();
    let ids: Vec<&str> = servers.iter().map(|m| m.server.id.as_str()).collect();
    ErrorData::invalid_params(
        format!(
            "{what} {name:?} is ambiguous: servers {} all have it. Latchkey does not choose \
             between them; turn off the unprefixed setting of all but one of them.",
            named.join(" and ")
        ),
        Some(json!({"code": "name_clash", "servers": ids})),
    )
}

/// The items of a listing whose federated name (or URI) one server alone has. Every
/// name more than one server has is left out for all of them and logged with the
/// servers' ids; so is an item named like one of Latchkey's own (`reserved`).
pub(super) fn drop_clashes<T>(
    what: &'static str,
    items: Vec<(&Member, T)>,
    key: impl Fn(&T) -> &str,
    reserved: &[&str],
) -> Vec<T> {
    let mut owners: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for (m, item) in &items {
        owners
            .entry(key(item).to_owned())
            .or_default()
            .insert(m.server.id.as_str());
    }
    let mut clashing = HashSet::new();
    for (name, servers) in &owners {
        if servers.len() > 1 || reserved.contains(&name.as_str()) {
            let ids: Vec<&str> = servers.iter().copied().collect();
            tracing::warn!(
                event = "mcp.federated.name_clash",
                what,
                name = %name,
                servers = %ids.join(","),
                reserved = servers.len() == 1,
            );
            clashing.insert(name.clone());
        }
    }
    items
        .into_iter()
        .filter(|(_, item)| !clashing.contains(key(item)))
        .map(|(_, item)| item)
        .collect()
}

impl Federation {
    pub(super) fn uri_tables(&self) -> MutexGuard<'_, UriTables> {
        self.uris.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the upstream URIs (or templates) of one listing of `m` for the caller's
    /// slot, from the listing's raw items.
    pub(super) fn record_uris(&self, p: &Principal, m: &Member, what: Listing, items: &[Value]) {
        let field = match what {
            Listing::Resources => "uri",
            Listing::Templates => "uriTemplate",
            Listing::Prompts => return,
        };
        let found = items
            .iter()
            .filter_map(|i| i.get(field).and_then(Value::as_str).map(str::to_owned));
        let key = slot_key(p, &m.server);
        let mut tables = self.uri_tables();
        match what {
            Listing::Templates => {
                tables.templates.insert(key, Arc::new(found.collect()));
            }
            _ => {
                tables.resources.insert(key, Arc::new(found.collect()));
            }
        }
    }

    fn names_table(&self, kind: Kind, key: &SlotKey) -> Option<Arc<Table>> {
        match kind {
            Kind::Tool => self.lock().get(key).cloned(),
            Kind::Prompt => self.prompt_tables().get(key).cloned(),
        }
    }

    async fn relist(&self, kind: Kind, p: &Principal, m: &Member) -> Result<(), Unavailable> {
        match kind {
            Kind::Tool => self.server_tools(p, m).await.map(drop),
            Kind::Prompt => self.server_prompts(p, m).await.map(drop),
        }
    }

    /// Whether `m`'s table has `name`; listed first when it has no table yet (or,
    /// `fresh`, in any case).
    async fn has_name(
        &self,
        kind: Kind,
        p: &Principal,
        m: &Member,
        name: &str,
        fresh: bool,
    ) -> bool {
        let key = slot_key(p, &m.server);
        let table = match self.names_table(kind, &key) {
            Some(t) if !fresh => Some(t),
            _ => match self.relist(kind, p, m).await {
                Ok(()) => self.names_table(kind, &key),
                Err(_) => None,
            },
        };
        // An unprefixed server's names are its upstream names, whatever its setting was
        // when the table was made (a table from before the setting changed still says
        // which names it has).
        table.is_some_and(|t| {
            t.contains_key(name) && !m.server.unprefixed
                || m.server.unprefixed && t.values().any(|upstream| upstream == name)
        })
    }

    /// The servers among `candidates` whose slot is usable now.
    async fn usable<'m>(&self, p: &Principal, candidates: Vec<&'m Member>) -> Vec<&'m Member> {
        futures_util::future::join_all(
            candidates
                .into_iter()
                .map(|m| async move { self.check_slot(p, &m.server).await.is_ok().then_some(m) }),
        )
        .await
        .into_iter()
        .flatten()
        .collect()
    }

    /// The server of a federated tool or prompt name. A prefixed owner that is not
    /// usable is still where the name goes (its answer is the consent elicitation).
    pub(super) async fn route_name<'m>(
        &self,
        kind: Kind,
        p: &Principal,
        members: &'m [Member],
        name: &str,
    ) -> Route<'m, &'m Member> {
        let owner = names::owner(name, &prefixed_slugs(members)).and_then(|id| find(members, id));
        let unprefixed: Vec<&Member> = members.iter().filter(|m| m.server.unprefixed).collect();
        match (owner, unprefixed.as_slice()) {
            (_, []) => return owner.map_or(Route::Unknown, Route::To),
            // Usable or not: one that is not answers how to connect it.
            (None, [only]) => return Route::To(*only),
            _ => {}
        }
        let usable = self
            .usable(p, owner.into_iter().chain(unprefixed).collect())
            .await;
        if let (None, [only]) = (owner, usable.as_slice()) {
            return Route::To(*only);
        }
        // From the kept tables first; when none has the name, from new listings (a name
        // added upstream since), once.
        for fresh in [false, true] {
            let claims: Vec<&Member> =
                futures_util::future::join_all(usable.iter().map(|m| async move {
                    self.has_name(kind, p, m, name, fresh).await.then_some(*m)
                }))
                .await
                .into_iter()
                .flatten()
                .collect();
            match claims.as_slice() {
                [] => {}
                [one] => return Route::To(*one),
                _ => return Route::Clash(claims),
            }
        }
        owner.map_or(Route::Unknown, Route::To)
    }

    /// Whether the unprefixed server `m` claims `uri` (a URI, or a template in a
    /// completion reference): listed by it, or an expansion of one of its templates.
    async fn claims_uri(&self, p: &Principal, m: &Member, uri: &str) -> bool {
        let key = slot_key(p, &m.server);
        for what in [Listing::Resources, Listing::Templates] {
            let kept = |t: &UriTables| match what {
                Listing::Templates => t.templates.get(&key).map(|ts| {
                    ts.iter()
                        .any(|t| t == uri || names::template_matches(t, uri))
                }),
                _ => t.resources.get(&key).map(|r| r.contains(uri)),
            };
            let known = kept(&self.uri_tables());
            let found = match known {
                Some(found) => found,
                None => match self.upstream_items(p, m, what).await {
                    Ok(items) => {
                        self.record_uris(p, m, what, &items);
                        kept(&self.uri_tables()).unwrap_or(false)
                    }
                    Err(_) => false,
                },
            };
            if found {
                return true;
            }
        }
        false
    }

    /// The server of a federated URI (or template) and the original URI to send it.
    pub(super) async fn route_uri<'m, 'u>(
        &self,
        p: &Principal,
        members: &'m [Member],
        uri: &'u str,
    ) -> Route<'m, (&'m Member, &'u str)> {
        let owner = names::uri_owner(uri, &prefixed_slugs(members))
            .and_then(|(id, original)| find(members, id).map(|m| (m, original)));
        let unprefixed: Vec<&Member> = members.iter().filter(|m| m.server.unprefixed).collect();
        match (owner, unprefixed.as_slice()) {
            (_, []) => return owner.map_or(Route::Unknown, Route::To),
            (None, [only]) => return Route::To((*only, uri)),
            _ => {}
        }
        let usable = self.usable(p, unprefixed).await;
        if let (None, [only]) = (owner, usable.as_slice()) {
            return Route::To((*only, uri));
        }
        let claims: Vec<&Member> = futures_util::future::join_all(
            usable
                .iter()
                .map(|m| async move { self.claims_uri(p, m, uri).await.then_some(*m) }),
        )
        .await
        .into_iter()
        .flatten()
        .collect();
        // A prefixed owner that is hidden (not usable) does not clash: the unprefixed
        // server that claims the URI has it, as with names.
        let owner = match owner {
            Some((o, _)) if !claims.is_empty() && self.check_slot(p, &o.server).await.is_err() => {
                None
            }
            other => other,
        };
        match (owner, claims.as_slice()) {
            (Some(o), []) => Route::To(o),
            (None, [one]) => Route::To((*one, uri)),
            (Some((o, _)), _) => Route::Clash(std::iter::once(o).chain(claims).collect()),
            (None, []) => Route::Unknown,
            (None, _) => Route::Clash(claims),
        }
    }
}
