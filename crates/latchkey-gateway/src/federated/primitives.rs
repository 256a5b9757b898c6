//! Prompts, resources and completions on `/mcp`, federated like tools.
//!
//! * Prompts are named like tools (`<server-slug>__<prompt>`, [`names::tool_name`]) and
//!   found again through the slot's prompt table from the last listing.
//! * Resource URIs and URI templates become `latchkey://<server-slug>/<original>`
//!   ([`names::resource_uri`]; why verbatim there); `resources/read` and
//!   `completion/complete` find the server from the prefix ([`names::uri_owner`]) and
//!   send the original on. The URIs in a read's contents are given the same prefix, so
//!   they match the URI the client asked for.
//! * A server hidden from `tools/list` (no usable token, no header values) is hidden
//!   from these listings too, and a `prompts/get` or `resources/read` aimed at it
//!   answers as a tool call does (the URL-mode elicitation of a managed flow, or why not).
//!   A `completion/complete` aimed at it answers no values: a completion is asked for at
//!   every keystroke, and must not start a sign-in.
//! * A server that does not offer a primitive (its `initialize` did not declare it, or
//!   it answers `-32601`) contributes nothing; it is not an error. Other JSON-RPC errors
//!   of `prompts/get`, `resources/read` and `completion/complete` are passed on with the
//!   upstream's code; failures below JSON-RPC are typed like a tool call's (the server,
//!   the stable code).

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};

use latchkey_guard::Principal;
use latchkey_vault::store::ServerRow;
use rmcp::ErrorData;
use rmcp::RoleServer;
use rmcp::model::{
    CallToolResponse, CompleteRequestParams, CompleteResult, ErrorCode, GetPromptRequestParams,
    GetPromptResponse, GetPromptResult, InputRequiredResult, Prompt, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Reference, Resource, ResourceTemplate, ResultType,
};
use rmcp::service::RequestContext;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::naming::{self, Kind, Route};
use super::{
    Elicit, Federation, MAX_PAGES, Member, Outgoing, Retry, SlotKey, Table, Unavailable, names,
    slot_key,
};
use crate::downstream::{Downstream, Outcome, request_key};
use crate::error::ApiError;
use crate::tools::{Answer, Relaying, RpcError};

/// A listing federated besides tools.
#[derive(Debug, Clone, Copy)]
pub(super) enum Listing {
    Prompts,
    Resources,
    Templates,
}

impl Listing {
    fn method(self) -> &'static str {
        match self {
            Self::Prompts => "prompts/list",
            Self::Resources => "resources/list",
            Self::Templates => "resources/templates/list",
        }
    }

    /// The key of the items in a page.
    fn key(self) -> &'static str {
        match self {
            Self::Prompts => "prompts",
            Self::Resources => "resources",
            Self::Templates => "resourceTemplates",
        }
    }

    /// The server capability the method belongs to.
    fn capability(self) -> &'static str {
        match self {
            Self::Prompts => "prompts",
            Self::Resources | Self::Templates => "resources",
        }
    }
}

/// A failed upstream call as what keeps the server out of a listing.
fn unavailable_of(e: ApiError) -> Unavailable {
    match e {
        ApiError::NeedsReauth { .. } => Unavailable::NotConnected { force: true },
        other => Unavailable::Failed(other),
    }
}

/// An upstream's JSON-RPC error to a listing, as the typed 502 naming the server.
fn listing_failed(server: &ServerRow, method: &str, e: &RpcError) -> ApiError {
    crate::tools::upstream_failed(
        server,
        format!(
            "it answered {method} with JSON-RPC error {}: {}",
            e.code, e.message
        ),
    )
}

/// An upstream's JSON-RPC error passed on: its code and data, its message made
/// printable and capped (it is the upstream's own text, as a tool's error result is).
fn passed_on(e: RpcError) -> ErrorData {
    const MAX: usize = 300;
    let message: String = e
        .message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX)
        .collect();
    let code = i32::try_from(e.code).unwrap_or(ErrorCode::INTERNAL_ERROR.0);
    ErrorData::new(ErrorCode(code), message, e.data)
}

/// A failure below JSON-RPC, typed like a tool call's: the server and the stable code.
fn failure_error(server: &ServerRow, e: &ApiError) -> ErrorData {
    let (_, code) = e.status_and_code();
    ErrorData::internal_error(
        format!("{} ({}): {code}: {e}", server.name, server.id),
        Some(json!({"code": code, "server_id": server.id})),
    )
}

/// The text of a tool result (the answers built for tool calls have one text block).
fn result_text(r: &rmcp::model::CallToolResult) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| {
            v.pointer("/content/0/text")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

fn unknown_prompt(name: &str) -> ErrorData {
    ErrorData::invalid_params(format!("Unknown prompt: {name}"), None)
}

fn unknown_resource(uri: &str) -> ErrorData {
    ErrorData::resource_not_found("Resource not found", Some(json!({"uri": uri})))
}

/// Logs why a server's items are missing from a listing (as `tools/list` does).
fn log_skipped(m: &Member, why: &Unavailable) {
    match why {
        Unavailable::NotConnected { .. } | Unavailable::NoHeaders(_) => {}
        Unavailable::Failed(e @ ApiError::NeedsScopeUpgrade { .. }) => tracing::info!(
            event = "mcp.federated.server_skipped",
            server_id = %m.server.id,
            server = %m.server.name,
            code = e.status_and_code().1,
        ),
        Unavailable::Failed(e) => tracing::warn!(
            event = "mcp.federated.server_skipped",
            server_id = %m.server.id,
            server = %m.server.name,
            code = e.status_and_code().1,
        ),
    }
}

impl Federation {
    pub(super) fn prompt_tables(&self) -> MutexGuard<'_, HashMap<SlotKey, Arc<Table>>> {
        self.prompts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every item of one upstream listing (following its pages); none when the server
    /// does not offer the primitive.
    pub(super) async fn upstream_items(
        &self,
        p: &Principal,
        m: &Member,
        what: Listing,
    ) -> Result<Vec<Value>, Unavailable> {
        match m.server.auth_type.as_str() {
            "oauth" | "headers" => self.check_slot(p, &m.server).await?,
            "none" => {}
            _ => return Ok(Vec::new()),
        }
        let mut items = Vec::new();
        let mut cursor: Option<Value> = None;
        for _ in 0..MAX_PAGES {
            let params = cursor.take().map(|c| json!({"cursor": c}));
            let answer = crate::tools::call_answer(
                &self.s,
                p,
                &m.server,
                what.method(),
                params,
                Some(what.capability()),
            )
            .await
            .map_err(unavailable_of)?;
            let page = match answer {
                Answer::Result(v) => v,
                Answer::Error(e) if e.code == RpcError::METHOD_NOT_FOUND => return Ok(items),
                Answer::Error(e) => {
                    return Err(Unavailable::Failed(listing_failed(
                        &m.server,
                        what.method(),
                        &e,
                    )));
                }
            };
            items.extend(
                page.get(what.key())
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
            match page.get("nextCursor") {
                Some(c @ Value::String(_)) => cursor = Some(c.clone()),
                _ => break,
            }
        }
        Ok(items)
    }

    /// The server's prompts for the caller's slot, renamed, and the slot's prompt table
    /// refreshed.
    pub(super) async fn server_prompts(
        &self,
        p: &Principal,
        m: &Member,
    ) -> Result<Vec<Prompt>, Unavailable> {
        let items = self.upstream_items(p, m, Listing::Prompts).await?;
        let mut table = Table::new();
        let mut prompts = Vec::with_capacity(items.len());
        for item in items {
            let mut prompt = match serde_json::from_value::<Prompt>(item) {
                Ok(prompt) => prompt,
                Err(e) => {
                    tracing::info!(
                        event = "mcp.federated.prompt_skipped",
                        server_id = %m.server.id,
                        error = %e
                    );
                    continue;
                }
            };
            let federated =
                names::item_name(&m.slug, &m.server.id, &prompt.name, m.server.unprefixed);
            if table.contains_key(&federated) {
                tracing::info!(event = "mcp.federated.prompt_name_clash", server_id = %m.server.id);
                continue;
            }
            table.insert(federated.clone(), prompt.name.clone());
            prompt.name = federated;
            prompts.push(prompt);
        }
        self.prompt_tables()
            .insert(slot_key(p, &m.server), Arc::new(table));
        Ok(prompts)
    }

    /// The upstream name of a federated prompt of `m`: from the slot's table, else from
    /// a new listing (not listed through this instance yet); `None` if it has none.
    async fn upstream_prompt(
        &self,
        p: &Principal,
        m: &Member,
        name: &str,
    ) -> Result<Option<String>, Unavailable> {
        if m.server.unprefixed {
            // Its own name: no table to consult.
            return Ok(Some(name.to_owned()));
        }
        let cached = self
            .prompt_tables()
            .get(&slot_key(p, &m.server))
            .and_then(|t| t.get(name).cloned());
        if cached.is_some() {
            return Ok(cached);
        }
        self.server_prompts(p, m).await?;
        Ok(self
            .prompt_tables()
            .get(&slot_key(p, &m.server))
            .and_then(|t| t.get(name).cloned()))
    }

    /// `prompts/list`: the prompts of every usable server.
    pub(super) async fn list_prompts(&self, p: &Principal) -> Result<Vec<Prompt>, ErrorData> {
        let members = self.members(p).await?;
        let listings = futures_util::future::join_all(
            members
                .iter()
                .map(|m| async move { (m, self.server_prompts(p, m).await) }),
        )
        .await;
        let mut prompts = Vec::new();
        for (m, listing) in listings {
            match listing {
                Ok(found) => prompts.extend(found.into_iter().map(|p| (m, p))),
                Err(why) => log_skipped(m, &why),
            }
        }
        Ok(naming::drop_clashes("prompt", prompts, |p| &p.name, &[]))
    }

    /// The items of `what` of every usable server, each with its server.
    async fn gather<'m>(
        &self,
        p: &Principal,
        members: &'m [Member],
        what: Listing,
    ) -> Vec<(&'m Member, Vec<Value>)> {
        let listings = futures_util::future::join_all(
            members
                .iter()
                .map(|m| async move { (m, self.upstream_items(p, m, what).await) }),
        )
        .await;
        let mut out = Vec::new();
        for (m, listing) in listings {
            match listing {
                Ok(items) => {
                    self.record_uris(p, m, what, &items);
                    out.push((m, items));
                }
                Err(why) => log_skipped(m, &why),
            }
        }
        out
    }

    /// `resources/list`: every usable server's resources, URIs prefixed.
    pub(super) async fn list_resources(&self, p: &Principal) -> Result<Vec<Resource>, ErrorData> {
        let members = self.members(p).await?;
        let mut out = Vec::new();
        for (m, items) in self.gather(p, &members, Listing::Resources).await {
            for item in items {
                match serde_json::from_value::<Resource>(item) {
                    Ok(mut r) => {
                        r.uri = names::item_uri(&m.slug, &r.uri, m.server.unprefixed);
                        out.push((m, r));
                    }
                    Err(e) => tracing::info!(
                        event = "mcp.federated.resource_skipped",
                        server_id = %m.server.id,
                        error = %e
                    ),
                }
            }
        }
        Ok(naming::drop_clashes("resource", out, |r| &r.uri, &[]))
    }

    /// `resources/templates/list`: every usable server's URI templates, prefixed.
    pub(super) async fn list_resource_templates(
        &self,
        p: &Principal,
    ) -> Result<Vec<ResourceTemplate>, ErrorData> {
        let members = self.members(p).await?;
        let mut out = Vec::new();
        for (m, items) in self.gather(p, &members, Listing::Templates).await {
            for item in items {
                match serde_json::from_value::<ResourceTemplate>(item) {
                    Ok(mut t) => {
                        t.uri_template =
                            names::item_uri(&m.slug, &t.uri_template, m.server.unprefixed);
                        out.push((m, t));
                    }
                    Err(e) => tracing::info!(
                        event = "mcp.federated.resource_skipped",
                        server_id = %m.server.id,
                        error = %e
                    ),
                }
            }
        }
        Ok(naming::drop_clashes(
            "resource template",
            out,
            |t| &t.uri_template,
            &[],
        ))
    }

    /// The answer to a `prompts/get` or `resources/read` that cannot reach `server`:
    /// what a tool call gets ([`Federation::unavailable`]), as an `input_required`
    /// result or an error (these results have no `isError`).
    async fn refused(
        &self,
        p: &Principal,
        server: &ServerRow,
        why: Unavailable,
        how: Elicit,
    ) -> Result<InputRequiredResult, ErrorData> {
        if let Unavailable::Failed(e) = &why
            && !matches!(e, ApiError::NeedsScopeUpgrade { .. })
        {
            return Err(failure_error(server, e));
        }
        match self.unavailable(p, server, why, how).await? {
            CallToolResponse::InputRequired(ask) => Ok(ask),
            CallToolResponse::Complete(r) => Err(ErrorData::internal_error(
                result_text(&r),
                Some(json!({"server_id": server.id})),
            )),
            // Nothing here answers with a task (or anything newer).
            _ => Err(super::unavailable()),
        }
    }

    /// `prompts/get` of a federated prompt; what the upstream sends before its answer
    /// goes to the client of `context` as for a tool call (on the stateless wire as
    /// `input_required` rounds, [`Federation::in_rounds`]).
    pub(super) async fn get_prompt(
        &self,
        p: &Principal,
        request: GetPromptRequestParams,
        how: Elicit,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let name = request.name.as_str();
        let what = request_key("prompts/get", name, request.arguments.as_ref());
        let start = self.start_prompt(p, name, request.arguments.clone(), how);
        let retry = Retry::of(
            request.request_state.as_deref(),
            request.input_responses.as_ref(),
        );
        match self.in_rounds(p, &what, context, retry, start).await? {
            Ok(outcome) => {
                self.answered::<GetPromptResult, _>(p, outcome, how, || unknown_prompt(name))
                    .await
            }
            Err(answer) => Ok(answer),
        }
    }

    /// The answer to a `prompts/get` or `resources/read` whose upstream exchange ended
    /// with `outcome`: the upstream's result as `C` (stamped `complete`), its JSON-RPC
    /// error passed on (`-32601` as `unknown`: the server has no such item), or what a
    /// request gets that cannot reach the server ([`Federation::refused`]).
    async fn answered<C, R>(
        &self,
        p: &Principal,
        (server, answer): Outcome,
        how: Elicit,
        unknown: impl FnOnce() -> ErrorData,
    ) -> Result<R, ErrorData>
    where
        C: DeserializeOwned,
        R: From<C> + From<InputRequiredResult>,
    {
        match answer {
            Ok(Answer::Result(mut v)) => {
                // As for tool results: every 2026-07-28 result carries `resultType` (rmcp
                // strips it again for older peers).
                if let Some(o) = v.as_object_mut() {
                    o.insert("resultType".into(), json!(ResultType::COMPLETE.as_str()));
                }
                match serde_json::from_value::<C>(v) {
                    Ok(r) => Ok(R::from(r)),
                    Err(e) => Err(bad_result(&server, &e)),
                }
            }
            Ok(Answer::Error(e)) if e.code == RpcError::METHOD_NOT_FOUND => Err(unknown()),
            Ok(Answer::Error(e)) => Err(passed_on(e)),
            Err(e) => self
                .refused(p, &server, unavailable_of(e), how)
                .await
                .map(R::from),
        }
    }

    /// Routes `prompts/get name`: the upstream request, or the answer when it cannot be
    /// made.
    async fn start_prompt(
        &self,
        p: &Principal,
        name: &str,
        arguments: Option<serde_json::Map<String, Value>>,
        how: Elicit,
    ) -> Result<Result<Outgoing, GetPromptResponse>, ErrorData> {
        let members = self.members(p).await?;
        let m = match self.route_name(Kind::Prompt, p, &members, name).await {
            Route::To(m) => m,
            Route::Unknown => return Err(unknown_prompt(name)),
            Route::Clash(servers) => return Err(naming::clash("prompt", name, &servers)),
        };
        if let Err(why) = self.check_slot(p, &m.server).await {
            return self
                .refused(p, &m.server, why, how)
                .await
                .map(|ask| Err(GetPromptResponse::InputRequired(ask)));
        }
        let upstream = match self.upstream_prompt(p, m, name).await {
            Ok(Some(u)) => u,
            Ok(None) => return Err(unknown_prompt(name)),
            Err(why) => {
                return self
                    .refused(p, &m.server, why, how)
                    .await
                    .map(|ask| Err(GetPromptResponse::InputRequired(ask)));
            }
        };
        Ok(Ok(Outgoing {
            server: m.server.clone(),
            method: "prompts/get",
            params: json!({"name": upstream, "arguments": arguments.unwrap_or_default()}),
            needs: Some("prompts"),
            shape: Box::new(|v| v),
        }))
    }

    /// `resources/read` of a federated URI, relayed like [`Federation::get_prompt`] (its
    /// `requestState` bound to the URI: a read has no arguments).
    pub(super) async fn read_resource(
        &self,
        p: &Principal,
        request: ReadResourceRequestParams,
        how: Elicit,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri.as_str();
        let what = request_key("resources/read", uri, None);
        let start = self.start_read(p, uri, how);
        let retry = Retry::of(
            request.request_state.as_deref(),
            request.input_responses.as_ref(),
        );
        match self.in_rounds(p, &what, context, retry, start).await? {
            Ok(outcome) => {
                self.answered::<ReadResourceResult, _>(p, outcome, how, || unknown_resource(uri))
                    .await
            }
            Err(answer) => Ok(answer),
        }
    }

    /// Routes `resources/read uri`: the upstream request (whose result's contents are
    /// given the URIs the client knows), or the answer when it cannot be made.
    async fn start_read(
        &self,
        p: &Principal,
        uri: &str,
        how: Elicit,
    ) -> Result<Result<Outgoing, ReadResourceResponse>, ErrorData> {
        let members = self.members(p).await?;
        let (m, original) = match self.route_uri(p, &members, uri).await {
            Route::To(found) => found,
            Route::Unknown => return Err(unknown_resource(uri)),
            Route::Clash(servers) => return Err(naming::clash("resource", uri, &servers)),
        };
        if let Err(why) = self.check_slot(p, &m.server).await {
            return self
                .refused(p, &m.server, why, how)
                .await
                .map(|ask| Err(ReadResourceResponse::InputRequired(ask)));
        }
        let (slug, unprefixed) = (m.slug.clone(), m.server.unprefixed);
        Ok(Ok(Outgoing {
            server: m.server.clone(),
            method: "resources/read",
            params: json!({"uri": original}),
            needs: Some("resources"),
            shape: Box::new(move |mut v| {
                // The contents name the URI the client knows.
                for c in v
                    .get_mut("contents")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    if let Some(Value::String(u)) = c.get_mut("uri") {
                        *u = names::item_uri(&slug, u, unprefixed);
                    }
                }
                v
            }),
        }))
    }

    /// `completion/complete` for a federated prompt or resource template, asked of its
    /// server with the original name or template.
    pub(super) async fn complete(
        &self,
        p: &Principal,
        request: CompleteRequestParams,
        client: &Downstream,
    ) -> Result<CompleteResult, ErrorData> {
        let members = self.members(p).await?;
        let (m, reference) = match &request.r#ref {
            Reference::Prompt(r) => {
                let m = match self.route_name(Kind::Prompt, p, &members, &r.name).await {
                    Route::To(m) => m,
                    Route::Unknown => return Err(unknown_prompt(&r.name)),
                    Route::Clash(servers) => {
                        return Err(naming::clash("prompt", &r.name, &servers));
                    }
                };
                match self.upstream_prompt(p, m, &r.name).await {
                    Ok(Some(upstream)) => (m, json!({"type": "ref/prompt", "name": upstream})),
                    Ok(None) => return Err(unknown_prompt(&r.name)),
                    // Not usable now: no values (never a sign-in for a completion).
                    Err(_) => return Ok(CompleteResult::default()),
                }
            }
            Reference::Resource(r) => {
                let (m, original) = match self.route_uri(p, &members, &r.uri).await {
                    Route::To(found) => found,
                    Route::Unknown => return Err(unknown_resource(&r.uri)),
                    Route::Clash(servers) => {
                        return Err(naming::clash("resource template", &r.uri, &servers));
                    }
                };
                (m, json!({"type": "ref/resource", "uri": original}))
            }
            _ => {
                return Err(ErrorData::invalid_params(
                    "unsupported completion reference",
                    None,
                ));
            }
        };
        if self.check_slot(p, &m.server).await.is_err() {
            return Ok(CompleteResult::default());
        }
        let mut params = json!({"ref": reference, "argument": request.argument});
        if let Some(context) = &request.context
            && let Ok(c) = serde_json::to_value(context)
        {
            params["context"] = c;
        }
        let answer = crate::tools::call_via(
            &self.s,
            p,
            &m.server,
            "completion/complete",
            Some(params),
            Some("completions"),
            Relaying::To(client),
        )
        .await;
        match answer {
            Ok(Answer::Result(v)) => match serde_json::from_value::<CompleteResult>(v) {
                Ok(mut r) => {
                    r.result_type = Some(ResultType::COMPLETE);
                    Ok(r)
                }
                Err(e) => Err(bad_result(&m.server, &e)),
            },
            Ok(Answer::Error(e)) if e.code == RpcError::METHOD_NOT_FOUND => {
                Ok(CompleteResult::default())
            }
            Ok(Answer::Error(e)) => Err(passed_on(e)),
            Err(e) => Err(failure_error(&m.server, &e)),
        }
    }
}

/// An upstream result that does not parse as what the method returns.
pub(super) fn bad_result(server: &ServerRow, e: &serde_json::Error) -> ErrorData {
    tracing::info!(event = "mcp.federated.bad_result", server_id = %server.id, error = %e);
    ErrorData::internal_error("the upstream server answered an unusable result", None)
}

/// The server a request went to, for the relays ([`super::relay`]).
pub(super) struct Routed {
    pub(super) server: ServerRow,
    pub(super) slug: String,
    /// The original URI (subscriptions).
    pub(super) original: String,
}

impl Routed {
    fn of(m: &Member, original: String) -> Self {
        Self {
            server: m.server.clone(),
            slug: m.slug.clone(),
            original,
        }
    }
}

/// Which of the resource subscription requests.
#[derive(Debug, Clone, Copy)]
pub(super) enum Subscription {
    Subscribe,
    Unsubscribe,
}

impl Subscription {
    fn method(self) -> &'static str {
        match self {
            Self::Subscribe => "resources/subscribe",
            Self::Unsubscribe => "resources/unsubscribe",
        }
    }
}

impl Federation {
    /// Whether the caller can reach `m` now (as the listings decide it).
    async fn reachable(&self, p: &Principal, m: &Member) -> bool {
        match m.server.auth_type.as_str() {
            "oauth" | "headers" => self.check_slot(p, &m.server).await.is_ok(),
            "none" => true,
            _ => false,
        }
    }

    /// `logging/setLevel`: sent to every usable server whose `initialize` declared
    /// `logging` (the others are not asked: nothing is sent for them), each in the
    /// slot's kept upstream session. The client asked for one level of one endpoint, so
    /// a server that refuses it, or cannot be reached, is logged and not an error.
    pub(super) async fn set_level(
        &self,
        p: &Principal,
        level: Value,
    ) -> Result<Vec<Routed>, ErrorData> {
        let members = self.members(p).await?;
        let params = json!({"level": level});
        let set = futures_util::future::join_all(members.iter().map(|m| {
            let params = params.clone();
            async move {
                if !self.reachable(p, m).await {
                    return None;
                }
                let answer = crate::tools::call_answer(
                    &self.s,
                    p,
                    &m.server,
                    "logging/setLevel",
                    Some(params),
                    Some("logging"),
                )
                .await;
                match answer {
                    Ok(Answer::Result(_)) => return Some(Routed::of(m, String::new())),
                    Ok(Answer::Error(e)) if e.code == RpcError::METHOD_NOT_FOUND => {}
                    Ok(Answer::Error(e)) => tracing::info!(
                        event = "mcp.federated.set_level_refused",
                        server_id = %m.server.id,
                        rpc_code = e.code,
                    ),
                    Err(e) => log_skipped(m, &unavailable_of(e)),
                }
                None
            }
        }))
        .await;
        Ok(set.into_iter().flatten().collect())
    }

    /// `resources/subscribe` or `resources/unsubscribe` of a federated URI: routed to
    /// its owner as `resources/read` is, with the original URI, in the slot's kept
    /// upstream session. The upstream's JSON-RPC error is passed on (a server that does
    /// not support subscriptions answers `-32601` itself).
    pub(super) async fn subscription(
        &self,
        p: &Principal,
        uri: &str,
        what: Subscription,
        how: Elicit,
    ) -> Result<Routed, ErrorData> {
        let members = self.members(p).await?;
        let (m, original) = match self.route_uri(p, &members, uri).await {
            Route::To(found) => found,
            Route::Unknown => return Err(unknown_resource(uri)),
            Route::Clash(servers) => return Err(naming::clash("resource", uri, &servers)),
        };
        if let Err(why) = self.check_slot(p, &m.server).await {
            return Err(self.not_subscribable(p, &m.server, why, how).await);
        }
        let answer = crate::tools::call_answer(
            &self.s,
            p,
            &m.server,
            what.method(),
            Some(json!({"uri": original})),
            Some("resources"),
        )
        .await;
        match answer {
            Ok(Answer::Result(_)) => Ok(Routed::of(m, original.to_owned())),
            Ok(Answer::Error(e)) => Err(passed_on(e)),
            Err(e) => Err(self
                .not_subscribable(p, &m.server, unavailable_of(e), how)
                .await),
        }
    }

    /// A subscription request that cannot reach `server`: the error a `resources/read`
    /// would get (these requests have no result to carry an `input_required`).
    async fn not_subscribable(
        &self,
        p: &Principal,
        server: &ServerRow,
        why: Unavailable,
        how: Elicit,
    ) -> ErrorData {
        match self.refused(p, server, why, how).await {
            Err(e) => e,
            Ok(_) => ErrorData::invalid_request(
                format!(
                    "{} is not connected: call latchkey_connect, then try again.",
                    server.name
                ),
                Some(json!({"server_id": server.id})),
            ),
        }
    }
}
