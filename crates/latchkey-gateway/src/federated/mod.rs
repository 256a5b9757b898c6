//! `/mcp`: the federated MCP endpoint. One MCP server that shows the caller's connected
//! servers as one: the tools of every server of the caller's tenant whose slot (the
//! caller's own, or the shared one) has a usable token, under stable names
//! ([`names`]: `<server-slug>__<tool>`), each call routed to its server with that slot's
//! Bearer (the caller's own credential never goes upstream).
//!
//! * The MCP protocol and the streamable HTTP transport are rmcp's (`ServerHandler`,
//!   `StreamableHttpService`). Written here: the federation (listing, name table,
//!   routing), the URL-mode elicitation error, the session binding and lifecycle log
//!   ([`sessions`]).
//! * Both wires: 2025-11-25 (`initialize`, `Mcp-Session-Id` sessions, the GET stream)
//!   and 2026-07-28 (stateless requests with `params._meta` carrying
//!   `io.modelcontextprotocol/protocolVersion` and `…/clientCapabilities`, the
//!   `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers, `server/discover`,
//!   `subscriptions/listen`): rmcp 3.11 routes each request to the right lifecycle.
//! * Calls reuse the REST tool path (`crate::tools::call`): one forced refresh and one
//!   retry on an upstream 401, never a refresh on a 403.
//! * Prompts, resources and completions ([`primitives`]) too: prompts named like tools,
//!   resource URIs and templates as `latchkey://<server-slug>/<original>`
//!   ([`names::resource_uri`]), each request routed to the owning server through the
//!   same path and upstream session; a server that does not offer one is left out.
//! * A server with the `unprefixed` setting keeps its own tool and prompt names and
//!   resource URIs; a name or URI more than one usable server has is left out of the
//!   listings and refused on use with an error naming the servers ([`naming`]).
//! * A static-header server ([`crate::headers`]) is called with the slot's values; a slot
//!   without them is hidden like an unconnected one, and a call to it (or
//!   `latchkey_connect`) answers how to set them.
//! * A server whose slot has no usable token is left out of `tools/list` (R-EXEC-11). A
//!   call to one of its tools (or `latchkey_connect`) starts a managed flow
//!   (`crate::flows::begin`) and sends the user to its authorization URL: on 2025-11-25
//!   with the URL-mode elicitation error `-32042`; on 2026-07-28, which retired `-32042`,
//!   with an `input_required` result carrying a URL-mode `elicitation/create` (SEP-2322),
//!   or `-32021` when the request did not declare URL elicitation.
//! * `notifications/tools/list_changed`, `…/prompts/list_changed` and
//!   `…/resources/list_changed` (all three advertised) go to the caller's live sessions
//!   (2025-11-25: the session's GET stream; 2026-07-28: a `subscriptions/listen`
//!   stream) whenever a slot they may see gains or loses its credential, or a server is
//!   added, edited or deleted ([`crate::events::CredentialChange`]). An upstream's own
//!   list changes are relayed to the clients that listed from it ([`relay`]).
//! * `logging/setLevel` goes to every usable server that declared `logging`, and
//!   `resources/subscribe` / `resources/unsubscribe` to the URI's owner; the upstream's
//!   resource updates and log messages come back to the client session that asked for
//!   them and to no other ([`relay`]). On 2026-07-28 resource subscriptions come in the
//!   `subscriptions/listen` filter, each subscribed to at its server, their updates
//!   sent on that listen stream.
//! * What an upstream sends during a request (`tools/call`, `prompts/get`,
//!   `resources/read`, `completion/complete`) on that request's SSE answer reaches the
//!   client session that made it (`crate::downstream`, through
//!   `latchkey_mcp::McpClient::send_relaying`, which reads the answer as it arrives):
//!   `notifications/progress` with the client's own `progressToken` (the upstream is
//!   given one of Latchkey's); `elicitation/create`, `sampling/createMessage` and
//!   `roots/list` sent to the client on its request's stream (rmcp's `Peer`, the
//!   request's task-local origin kept: nothing is spawned) and its result or error
//!   POSTed back in the upstream session with the same credentials; a client that did
//!   not declare the capability is not asked (the upstream gets `-32601` saying so).
//!   Cancellation goes both ways: the client's `notifications/cancelled` becomes one
//!   with the upstream request's id, the upstream's cancels the request at the client.
//!   Latchkey declares elicitation (form and URL), sampling and roots in its upstream
//!   `initialize`, since the session is shared by the slot's clients. On the stateless
//!   2026-07-28 wire there is no session to send a request on: during a `tools/call`,
//!   `prompts/get` or `resources/read` (one path, `Federation::in_rounds`) the
//!   upstream's request becomes an `input_required` result with a `requestState`
//!   (SEP-2322) while the upstream exchange waits in this instance's memory, and the
//!   client's retry with `inputResponses` resumes it (`crate::downstream::Rounds`);
//!   `completion/complete` still gives the upstream `-32601` there (rmcp's params of a
//!   completion carry no `requestState` to resume with). Progress reaches the client on the request's stream.
//!
//! Invariants: no token appears in a log line, a tool result or an error; an upstream
//! result (content, `isError`, `structuredContent`) is passed through unchanged.

pub mod names;
mod naming;
mod primitives;
mod relay;
mod sessions;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::response::{IntoResponse, Response};
use latchkey_broker::token_service::TokenError;
use latchkey_guard::Principal;
use latchkey_vault::store::ServerRow;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams, CompleteResult,
    ContentBlock, ElicitRequest, ElicitRequestParams, ErrorCode, Extensions,
    GetPromptRequestParams, GetPromptResponse, Implementation, InitializeRequestParams,
    InitializeResult, InputRequest, InputRequests, InputRequiredResult, InputResponses,
    ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult,
    PaginatedRequestParams, ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse,
    ServerCapabilities, ServerConfig, SubscribeRequestParams, SubscriptionFilter, Tool,
    UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use crate::downstream::{Downstream, Outcome, Round};
use crate::error::ApiError;
use crate::events::{CredentialChange, change_visible_to};
use crate::service::flows::Started;
use crate::state::AppState;

/// Where the endpoint is mounted.
pub const PATH: &str = "/mcp";
/// The tool that asks for a server's connection link.
pub const CONNECT_TOOL: &str = "latchkey_connect";
/// `URLElicitationRequiredError` (MCP 2025-11-25). rmcp 3.11 has no constant for it.
pub const URL_ELICITATION_REQUIRED: ErrorCode = ErrorCode(-32042);
/// Pages of an upstream `tools/list` followed at most.
const MAX_PAGES: usize = 10;
/// Resource URIs one `subscriptions/listen` may ask updates of (each is one upstream
/// `resources/subscribe`).
const MAX_LISTEN_URIS: usize = 64;

/// The routes of `/mcp`, behind the same guard as `/v1` (merged into the app's router).
pub fn routes(state: &AppState) -> Router<AppState> {
    let manager = Arc::new(LocalSessionManager::default());
    let sessions = Arc::new(sessions::Sessions::new(manager.clone()));
    let federation = Federation {
        s: state.clone(),
        tables: Arc::default(),
        prompts: Arc::default(),
        uris: Arc::default(),
        hubs: Arc::default(),
        rounds: crate::downstream::Rounds::default(),
    };
    let config = StreamableHttpServerConfig::default()
        // Host and Origin are checked by the guard (R-RS-15) against Latchkey's own
        // configuration before rmcp sees the request.
        .disable_allowed_hosts()
        // Plain JSON for a stateless request whose answer is one message.
        .with_json_response(true);
    let service = StreamableHttpService::new(
        move || Ok(Handler::new(federation.clone())),
        manager,
        config,
    );
    Router::new()
        .route_service(PATH, service)
        // Innermost, so the guard (added below, hence outside) has found the principal.
        .route_layer(axum::middleware::from_fn(crate::telemetry::note_principal))
        .route_layer(axum::middleware::from_fn_with_state(
            state.streams.clone(),
            crate::limits::one_stream,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            sessions,
            sessions::bind,
        ))
        .route_layer(axum::middleware::from_fn(typed_refusals))
        .route_layer(axum::middleware::from_fn_with_state(
            state.guard.clone(),
            latchkey_guard::require_principal,
        ))
        .route_layer(axum::middleware::from_fn(sessions::lifecycle))
}

/// rmcp refuses what it cannot take (a body that is not one JSON-RPC message, wrong
/// media types, a body over its limit, an unknown session) with a plain-text 4xx. This
/// gives those answers the API's typed JSON body (`code`, `message`; fixed texts, never
/// the request's content), keeping their status, headers and extensions; JSON and
/// event-stream answers pass untouched.
async fn typed_refusals(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let typed = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/event-stream"));
    if typed || !status.is_client_error() {
        return resp;
    }
    let message = match status {
        http::StatusCode::NOT_ACCEPTABLE => {
            "Accept must list application/json and text/event-stream"
        }
        http::StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            "the body must be one JSON-RPC message sent as application/json"
        }
        http::StatusCode::METHOD_NOT_ALLOWED => "method not allowed",
        _ => "not a valid MCP request",
    };
    let error = match status {
        http::StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        http::StatusCode::NOT_FOUND => ApiError::NotFound,
        _ => ApiError::BadRequest(vec![crate::error::FieldError {
            field: String::new(),
            message: message.into(),
        }]),
    };
    let (mut parts, _) = resp.into_parts();
    let (typed_parts, body) = error.into_response().into_parts();
    parts.headers.remove(http::header::CONTENT_LENGTH);
    if let Some(ct) = typed_parts.headers.get(http::header::CONTENT_TYPE) {
        parts.headers.insert(http::header::CONTENT_TYPE, ct.clone());
    }
    Response::from_parts(parts, body)
}

/// Upstream tool names by federated name, per slot, from the last listing.
type Table = HashMap<String, String>;
/// `(tenant, server, subject)`: a slot, or `None` subject for the shared one.
type SlotKey = (String, String, Option<String>);

/// What every session and request shares.
#[derive(Debug, Clone)]
struct Federation {
    s: AppState,
    tables: Arc<Mutex<HashMap<SlotKey, Arc<Table>>>>,
    /// Upstream prompt names by federated name, per slot, from the last listing.
    prompts: Arc<Mutex<HashMap<SlotKey, Arc<Table>>>>,
    /// Upstream resource URIs and templates, per slot, from the last listings.
    uris: Arc<Mutex<naming::UriTables>>,
    /// The upstream sessions' standalone streams open for relays.
    hubs: Arc<relay::Hubs>,
    /// Stateless requests waiting for their client's input (SEP-2322).
    rounds: crate::downstream::Rounds,
}

/// One of the caller's servers as the federation sees it.
struct Member {
    server: ServerRow,
    slug: String,
}

/// Why a server's tools could not be had.
enum Unavailable {
    /// The slot has no usable credential; `force` when one is stored but refused.
    NotConnected { force: bool },
    /// A static-header slot without (usable) values: hidden like an unconnected slot; a
    /// call answers how to set them.
    NoHeaders(ApiError),
    /// Anything else (logged, named by its stable code to the caller).
    Failed(ApiError),
}

fn slot_key(p: &Principal, server: &ServerRow) -> SlotKey {
    let slot = crate::tools::slot_for(p, server);
    (slot.tenant, slot.server, slot.subject)
}

fn text_result(text: String, is_error: bool) -> CallToolResponse {
    CallToolResponse::Complete(if is_error {
        CallToolResult::error(vec![ContentBlock::text(text)])
    } else {
        CallToolResult::success(vec![ContentBlock::text(text)])
    })
}

/// A failure the caller should read, by its stable code (never a secret: the messages
/// of [`ApiError`] are fixed texts).
fn failure_result(server: &ServerRow, e: &ApiError) -> CallToolResponse {
    let (_, code) = e.status_and_code();
    text_result(
        format!("{} ({}): {code}: {e}", server.name, server.id),
        true,
    )
}

fn unknown_tool(name: &str) -> ErrorData {
    ErrorData::invalid_params(format!("Unknown tool: {name}"), None)
}

fn unavailable() -> ErrorData {
    ErrorData::internal_error("temporarily unavailable", None)
}

/// The principal the guard put into the HTTP request rmcp hands over.
fn principal(extensions: &Extensions) -> Result<Principal, ErrorData> {
    extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Principal>())
        .cloned()
        .ok_or_else(|| ErrorData::internal_error("no principal", None))
}

impl Federation {
    fn lock(&self) -> MutexGuard<'_, HashMap<SlotKey, Arc<Table>>> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the caller's cached table of a listing whose upstream list changed.
    fn forget(&self, slot: &SlotKey, what: relay::Changed) {
        match what {
            relay::Changed::Tools => {
                self.lock().remove(slot);
            }
            relay::Changed::Prompts => {
                self.prompt_tables().remove(slot);
            }
            relay::Changed::Resources => self.uri_tables().forget(slot),
        }
    }

    /// Relays `server`'s messages that `change` makes the client want to `out`, from
    /// the hub of the caller's upstream session (opened if need be, only if the
    /// upstream declared one of `declared`, when that is not empty).
    #[allow(clippy::too_many_arguments)]
    async fn relay(
        &self,
        relays: &Arc<Mutex<relay::Relays>>,
        p: &Principal,
        server: &ServerRow,
        slug: &str,
        out: &relay::Out,
        alive: &watch::Receiver<()>,
        declared: &[&str],
        change: impl FnOnce(&mut relay::Wanted),
    ) {
        let start = || {
            let fed = self.clone();
            let slot = slot_key(p, server);
            relay::Start {
                naming: relay::Naming {
                    own_session: crate::tools::session_key(p, server).subject.is_some(),
                    slug: slug.to_owned(),
                    unprefixed: server.unprefixed,
                },
                out: out.clone(),
                alive: alive.clone(),
                forget: Arc::new(move |what| fed.forget(&slot, what)),
            }
        };
        relay::Relays::want(
            relays,
            &server.id,
            start,
            || self.hubs.hub(&self.s, p, server, declared),
            change,
        )
        .await;
    }

    /// Relays the list changes of every usable server of the caller that declared
    /// `listChanged` (and is not relayed to this client yet): a client that lists from
    /// a server hears when that server's lists change.
    async fn watch_lists(
        &self,
        relays: &Arc<Mutex<relay::Relays>>,
        p: &Principal,
        out: &relay::Out,
        alive: &watch::Receiver<()>,
    ) {
        let Ok(members) = self.members(p).await else {
            return;
        };
        for m in &members {
            if relays
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .has(&m.server.id)
            {
                continue;
            }
            let usable = match m.server.auth_type.as_str() {
                "oauth" | "headers" => self.check_slot(p, &m.server).await.is_ok(),
                "none" => true,
                _ => false,
            };
            if usable {
                self.relay(
                    relays,
                    p,
                    &m.server,
                    &m.slug,
                    out,
                    alive,
                    relay::LIST_CHANGES,
                    |_| {},
                )
                .await;
            }
        }
    }

    /// The caller's tenant's servers with their slugs (computed over all of them, so
    /// names do not change as servers connect or disconnect). A restricted API key's
    /// list holds only its servers ([`crate::state::AppState::servers_of`]): the others' tools are
    /// neither listed nor callable, and their names do not shape the slugs it sees.
    async fn members(&self, p: &Principal) -> Result<Vec<Member>, ErrorData> {
        let servers = self.s.servers_of(p).await.map_err(|e| {
            tracing::warn!(event = "mcp.federated.store_failed", error = %e);
            unavailable()
        })?;
        let mut slugs = names::slugs(servers.iter().map(|s| (s.id.as_str(), s.name.as_str())));
        Ok(servers
            .into_iter()
            .map(|server| Member {
                slug: slugs.remove(&server.id).unwrap_or_default(),
                server,
            })
            .collect())
    }

    /// Whether the caller's slot of an OAuth server has a usable token (refreshing it if
    /// need be); `Err` says why not.
    async fn check_slot(&self, p: &Principal, server: &ServerRow) -> Result<(), Unavailable> {
        if server.auth_type == "headers" {
            let slot = crate::tools::slot_for(p, server);
            return match crate::service::headers::for_call(&self.s, server, &slot).await {
                Ok(_) => Ok(()),
                Err(e @ (ApiError::HeadersNotSet { .. } | ApiError::HeadersForOtherUrl { .. })) => {
                    Err(Unavailable::NoHeaders(e))
                }
                Err(e) => Err(Unavailable::Failed(e)),
            };
        }
        if server.auth_type != "oauth" {
            return Ok(());
        }
        let slot = crate::tools::slot_for(p, server);
        match self.s.tokens.access_token(&slot, false).await {
            Ok(_) => Ok(()),
            Err(TokenError::NotConnected) => Err(Unavailable::NotConnected { force: false }),
            Err(TokenError::ReauthRequired(_)) => Err(Unavailable::NotConnected { force: true }),
            Err(e) => Err(Unavailable::Failed(crate::tools::token_failure(server, e))),
        }
    }

    /// The server's tools for the caller's slot, renamed, and the slot's name table
    /// refreshed.
    async fn server_tools(&self, p: &Principal, m: &Member) -> Result<Vec<Tool>, Unavailable> {
        match m.server.auth_type.as_str() {
            "oauth" | "headers" => self.check_slot(p, &m.server).await?,
            "none" => {}
            _ => return Ok(Vec::new()),
        }
        let mut upstream = Vec::new();
        let mut cursor: Option<Value> = None;
        for _ in 0..MAX_PAGES {
            let params = cursor.take().map(|c| json!({"cursor": c}));
            let page = crate::tools::call(&self.s, p, &m.server, "tools/list", params)
                .await
                .map_err(|e| match e {
                    ApiError::NeedsReauth { .. } => Unavailable::NotConnected { force: true },
                    other => Unavailable::Failed(other),
                })?;
            for t in page
                .get("tools")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                match serde_json::from_value::<Tool>(t.clone()) {
                    Ok(tool) => upstream.push(tool),
                    Err(e) => tracing::info!(
                        event = "mcp.federated.tool_skipped",
                        server_id = %m.server.id,
                        error = %e
                    ),
                }
            }
            match page.get("nextCursor") {
                Some(c @ Value::String(_)) => cursor = Some(c.clone()),
                _ => break,
            }
        }
        let mut table = Table::new();
        let mut tools = Vec::with_capacity(upstream.len());
        for mut tool in upstream {
            let federated =
                names::item_name(&m.slug, &m.server.id, &tool.name, m.server.unprefixed);
            if table.contains_key(&federated) {
                tracing::info!(event = "mcp.federated.tool_name_clash", server_id = %m.server.id);
                continue;
            }
            table.insert(federated.clone(), tool.name.to_string());
            tool.name = federated.into();
            tools.push(tool);
        }
        self.lock().insert(slot_key(p, &m.server), Arc::new(table));
        Ok(tools)
    }

    /// `tools/list`: `latchkey_connect` and the tools of every usable server.
    async fn list(&self, p: &Principal) -> Result<Vec<Tool>, ErrorData> {
        let members = self.members(p).await?;
        let listings = futures_util::future::join_all(
            members
                .iter()
                .map(|m| async move { (m, self.server_tools(p, m).await) }),
        )
        .await;
        let mut found = Vec::new();
        for (m, listing) in listings {
            match listing {
                Ok(t) => found.extend(t.into_iter().map(|t| (m, t))),
                // R-EXEC-11: hidden until the slot is authorised (or has its values).
                Err(Unavailable::NotConnected { .. } | Unavailable::NoHeaders(_)) => {}
                // A slot that needs the user (more scopes) is a prompt, not a fault.
                Err(Unavailable::Failed(e @ ApiError::NeedsScopeUpgrade { .. })) => {
                    tracing::info!(
                        event = "mcp.federated.server_skipped",
                        server_id = %m.server.id,
                        server = %m.server.name,
                        code = e.status_and_code().1,
                    );
                }
                Err(Unavailable::Failed(e)) => tracing::warn!(
                    event = "mcp.federated.server_skipped",
                    server_id = %m.server.id,
                    server = %m.server.name,
                    code = e.status_and_code().1,
                ),
            }
        }
        let mut tools = vec![connect_tool()];
        tools.extend(naming::drop_clashes(
            "tool",
            found,
            |t| &t.name,
            &[CONNECT_TOOL],
        ));
        Ok(tools)
    }

    /// `tools/call` of a federated tool; what the upstream sends before its answer goes
    /// to the client of `context` ([`crate::downstream`]): on the stateless wire as
    /// `input_required` rounds, whose retry (`request.request_state`) resumes the
    /// exchange it parked.
    async fn call(
        &self,
        p: &Principal,
        request: CallToolRequestParams,
        how: Elicit,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.as_ref();
        let what = crate::downstream::request_key("tools/call", name, request.arguments.as_ref());
        let start = self.start_call(p, name, request.arguments.clone(), how);
        let retry = Retry::of(
            request.request_state.as_deref(),
            request.input_responses.as_ref(),
        );
        let (server, answer) = match self.in_rounds(p, &what, context, retry, start).await? {
            Ok(outcome) => outcome,
            Err(answer) => return Ok(answer),
        };
        let result = answer.and_then(|a| crate::tools::answer_value(&server, a));
        match result {
            Ok(result) => match serde_json::from_value::<CallToolResult>(result) {
                Ok(mut r) => {
                    // An upstream on an older revision sends no `resultType`; on the
                    // 2026-07-28 wire every result must carry it (rmcp strips it again
                    // for older peers).
                    r.result_type = Some(rmcp::model::ResultType::COMPLETE);
                    Ok(CallToolResponse::Complete(r))
                }
                Err(e) => Err(primitives::bad_result(&server, &e)),
            },
            Err(ApiError::NeedsReauth { .. }) => {
                self.unavailable(p, &server, Unavailable::NotConnected { force: true }, how)
                    .await
            }
            Err(e) => {
                self.unavailable(p, &server, Unavailable::Failed(e), how)
                    .await
            }
        }
    }

    /// Sends the upstream request `start` routes (unless it answers by itself) with the
    /// relay of the client request of `context`, as [`crate::downstream::Rounds::run`]
    /// does: on the stateless wire the upstream's questions become `input_required`
    /// rounds (`Err`, the answer `R` to give). A retry carrying its `requestState`
    /// (`retry`) resumes the exchange parked under it instead, `start` not run. The one
    /// path of `tools/call`, `prompts/get` and `resources/read` (rmcp's
    /// `completion/complete` params carry no `requestState`, so a completion has no
    /// rounds). `what` names the request ([`crate::downstream::request_key`]): a
    /// `requestState` is bound to it.
    async fn in_rounds<R: From<InputRequiredResult>>(
        &self,
        p: &Principal,
        what: &str,
        context: RequestContext<RoleServer>,
        retry: Option<Retry<'_>>,
        start: impl Future<Output = Result<Result<Outgoing, R>, ErrorData>>,
    ) -> Result<Result<Outcome, R>, ErrorData> {
        let round = match retry {
            Some(Retry { state, responses }) => {
                self.rounds
                    .retry(p, what, &context, state, responses)
                    .await?
            }
            None => {
                let out = match start.await? {
                    Ok(out) => out,
                    Err(answer) => return Ok(Err(answer)),
                };
                let (s, caller) = (self.s.clone(), p.clone());
                self.rounds
                    .run(p, what, context, move |client| send(s, caller, out, client))
                    .await?
            }
        };
        Ok(match round {
            Round::Done(outcome) => Ok(*outcome),
            Round::Input(input) => Err(R::from(input)),
        })
    }

    /// Routes `tools/call name`: the upstream request, or the answer when it cannot be
    /// made.
    async fn start_call(
        &self,
        p: &Principal,
        name: &str,
        arguments: Option<serde_json::Map<String, Value>>,
        how: Elicit,
    ) -> Result<Result<Outgoing, CallToolResponse>, ErrorData> {
        let members = self.members(p).await?;
        let m = match self.route_name(naming::Kind::Tool, p, &members, name).await {
            naming::Route::To(m) => m,
            naming::Route::Unknown => return Err(unknown_tool(name)),
            naming::Route::Clash(servers) => return Err(naming::clash("tool", name, &servers)),
        };
        if let Err(u) = self.check_slot(p, &m.server).await {
            return self.unavailable(p, &m.server, u, how).await.map(Err);
        }
        // An unprefixed server's names are its own: no table to consult.
        let cached = if m.server.unprefixed {
            Some(name.to_owned())
        } else {
            self.lock()
                .get(&slot_key(p, &m.server))
                .and_then(|t| t.get(name).cloned())
        };
        let upstream = match cached {
            Some(u) => u,
            None => {
                // Not listed through this instance yet (or renamed): list the server.
                if let Err(u) = self.server_tools(p, m).await {
                    return self.unavailable(p, &m.server, u, how).await.map(Err);
                }
                let found = self
                    .lock()
                    .get(&slot_key(p, &m.server))
                    .and_then(|t| t.get(name).cloned());
                found.ok_or_else(|| unknown_tool(name))?
            }
        };
        let params = json!({"name": upstream, "arguments": arguments.unwrap_or_default()});
        Ok(Ok(Outgoing {
            server: m.server.clone(),
            method: "tools/call",
            params,
            needs: None,
            shape: Box::new(|v| v),
        }))
    }

    /// The answer to a call that cannot reach `server`: the URL elicitation for a slot
    /// that needs consent, a tool error naming the scopes for a scope upgrade, a tool
    /// error with the stable code otherwise.
    async fn unavailable(
        &self,
        p: &Principal,
        server: &ServerRow,
        why: Unavailable,
        how: Elicit,
    ) -> Result<CallToolResponse, ErrorData> {
        match why {
            Unavailable::NotConnected { force } => match self.consent(p, server, force, how).await?
            {
                Some(result) => Ok(result),
                None => Ok(text_result(
                    format!("{} is connected now; try again.", server.name),
                    true,
                )),
            },
            Unavailable::Failed(ApiError::NeedsScopeUpgrade { scopes, .. }) => Ok(text_result(
                format!(
                    "{} needs more scopes than this connection has: {}. Reconnect it with them.",
                    server.name,
                    scopes.join(" ")
                ),
                true,
            )),
            Unavailable::NoHeaders(e) => Ok(text_result(e.to_string(), true)),
            Unavailable::Failed(e) => Ok(failure_result(server, &e)),
        }
    }

    /// Starts a managed flow for the caller's slot and sends the user to its URL the way
    /// the request's wire allows ([`Elicit`]); a tool result when no flow can be started,
    /// `None` when the slot is (now) usable.
    async fn consent(
        &self,
        p: &Principal,
        server: &ServerRow,
        force: bool,
        how: Elicit,
    ) -> Result<Option<CallToolResponse>, ErrorData> {
        if server.token_scope == "shared" && !p.is_admin() {
            // R-API-9: only a tenant admin connects the shared slot.
            return Ok(Some(text_result(
                format!(
                    "{} is connected once for the whole tenant; ask a tenant admin to connect it.",
                    server.name
                ),
                true,
            )));
        }
        match how {
            Elicit::Error | Elicit::InputRequired => {}
            Elicit::Retried => {
                // The client answered our input request, but the flow has not completed:
                // no second flow (and no loop of rounds), the user finishes the first.
                return Ok(Some(text_result(
                    format!(
                        "{} is not connected yet: finish signing in at the link, then try again.",
                        server.name
                    ),
                    true,
                )));
            }
            Elicit::Unsupported => {
                let required =
                    serde_json::from_value(json!({"elicitation": {"url": {}}})).unwrap_or_default();
                return Err(ErrorData::missing_required_client_capability(required));
            }
        }
        let slot = crate::tools::slot_for(p, server);
        match crate::service::flows::begin(&self.s, p, server, slot, force).await {
            Ok(Started::Redirect {
                authorization_url, ..
            }) => {
                tracing::info!(event = "mcp.federated.consent_required", server_id = %server.id);
                match how {
                    Elicit::InputRequired => Ok(Some(CallToolResponse::InputRequired(
                        input_required(server, authorization_url),
                    ))),
                    _ => Err(url_elicitation_required(server, authorization_url)),
                }
            }
            Ok(Started::AlreadyAuthorized | Started::Completed { .. }) => Ok(None),
            Err(ApiError::Conflict(_)) => Ok(Some(text_result(
                format!(
                    "Another user is connecting {} right now; try again later.",
                    server.name
                ),
                true,
            ))),
            Err(e) => Ok(Some(failure_result(server, &e))),
        }
    }

    /// `latchkey_connect {server}`: by id, slug or (unique, case-insensitive) name.
    async fn connect(
        &self,
        p: &Principal,
        arguments: Option<serde_json::Map<String, Value>>,
        how: Elicit,
    ) -> Result<CallToolResponse, ErrorData> {
        let Some(wanted) = arguments
            .as_ref()
            .and_then(|a| a.get("server"))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|w| !w.is_empty())
        else {
            return Err(ErrorData::invalid_params(
                "`server` (a string) is required",
                None,
            ));
        };
        let members = self.members(p).await?;
        let by_name: Vec<&Member> = members
            .iter()
            .filter(|m| m.server.name.eq_ignore_ascii_case(wanted))
            .collect();
        let found = members
            .iter()
            .find(|m| m.server.id == wanted)
            .or_else(|| {
                members
                    .iter()
                    .find(|m| m.slug == wanted.to_ascii_lowercase())
            })
            .or(match by_name.as_slice() {
                [one] => Some(*one),
                _ => None,
            });
        let Some(m) = found else {
            let known: Vec<String> = members
                .iter()
                .map(|m| format!("{} ({})", m.slug, m.server.name))
                .collect();
            return Ok(text_result(
                format!(
                    "No single server matches {wanted:?}. Servers: {}.",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
                true,
            ));
        };
        match m.server.auth_type.as_str() {
            "oauth" => {}
            "none" => {
                return Ok(text_result(
                    format!("{} needs no connection.", m.server.name),
                    false,
                ));
            }
            "headers" => {
                // No sign-in: the values are set through the API, the CLI or the UI.
                return Ok(match self.check_slot(p, &m.server).await {
                    Ok(()) => text_result(
                        format!(
                            "{}'s header values are set; its tools are listed.",
                            m.server.name
                        ),
                        false,
                    ),
                    Err(Unavailable::NoHeaders(e)) => text_result(e.to_string(), true),
                    Err(Unavailable::Failed(e)) => failure_result(&m.server, &e),
                    Err(Unavailable::NotConnected { .. }) => {
                        text_result(format!("{} is not usable yet.", m.server.name), true)
                    }
                });
            }
            other => {
                return Ok(text_result(
                    format!(
                        "{} uses {other} authentication, which is set up by an operator.",
                        m.server.name
                    ),
                    true,
                ));
            }
        }
        match self.check_slot(p, &m.server).await.err() {
            None => Ok(text_result(
                format!("{} is already connected.", m.server.name),
                false,
            )),
            Some(Unavailable::NotConnected { force }) => {
                match self.consent(p, &m.server, force, how).await? {
                    Some(result) => Ok(result),
                    None => Ok(text_result(
                        format!("{} is already connected.", m.server.name),
                        false,
                    )),
                }
            }
            Some(Unavailable::Failed(e) | Unavailable::NoHeaders(e)) => {
                Ok(failure_result(&m.server, &e))
            }
        }
    }
}

/// How a request can send its user to a URL, by its wire.
#[derive(Debug, Clone, Copy)]
enum Elicit {
    /// 2025-11-25: the `-32042` URL-elicitation-required error.
    Error,
    /// 2026-07-28 (which drops `-32042`): an `input_required` result carrying a URL-mode
    /// `elicitation/create` (SEP-2322), for a client that declared URL elicitation.
    InputRequired,
    /// 2026-07-28, the client's retry with its answer to the connect link (input
    /// responses and no `requestState`: the link's round parks nothing).
    Retried,
    /// 2026-07-28 without URL elicitation declared: `-32021` naming it.
    Unsupported,
}

impl Elicit {
    /// How a `tools/call`, `prompts/get` or `resources/read` with these params sends its
    /// user to a URL. A retry carrying a `requestState` answers the upstream's questions,
    /// not a connect link: if its slot needs consent now (the upstream refused the
    /// credential meanwhile), it gets what a fresh request gets.
    fn of_request(
        context: &RequestContext<RoleServer>,
        state: &Option<String>,
        responses: &Option<InputResponses>,
    ) -> Self {
        Self::of(context, responses.is_some() && state.is_none())
    }

    fn of(context: &RequestContext<RoleServer>, retry: bool) -> Self {
        let modern = context
            .protocol_version()
            .is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str());
        if !modern {
            Elicit::Error
        } else if retry {
            Elicit::Retried
        } else if context
            .client_capabilities()
            .and_then(|c| c.elicitation)
            .is_some_and(|e| e.url.is_some())
        {
            Elicit::InputRequired
        } else {
            Elicit::Unsupported
        }
    }
}

/// The URL-mode elicitation that sends the user to `url`. (`elicitationId` is kept on
/// both wires: 2026-07-28 dropped the field, and rmcp's type always writes it.)
fn url_elicitation(server: &ServerRow, url: String) -> ElicitRequestParams {
    ElicitRequestParams::UrlElicitationParams {
        meta: None,
        message: format!(
            "Connect {} to Latchkey: open the link, sign in and consent, then try again.",
            server.name
        ),
        url,
        elicitation_id: latchkey_vault::store::new_id(),
    }
}

/// The 2026-07-28 `input_required` result asking the client to open `url`.
fn input_required(server: &ServerRow, url: String) -> InputRequiredResult {
    let mut requests = InputRequests::new();
    requests.insert(
        "connect".into(),
        InputRequest::Elicitation(ElicitRequest::new(url_elicitation(server, url))),
    );
    InputRequiredResult::from_input_requests(requests)
}

/// The 2025-11-25 `-32042` error whose one URL-mode elicitation sends the user to `url`.
fn url_elicitation_required(server: &ServerRow, url: String) -> ErrorData {
    let elicitation = url_elicitation(server, url);
    ErrorData::new(
        URL_ELICITATION_REQUIRED,
        "This request requires more information.",
        Some(json!({"elicitations": [elicitation], "server_id": server.id})),
    )
}

/// The `latchkey_connect` tool.
fn connect_tool() -> Tool {
    let definition = json!({
        "name": CONNECT_TOOL,
        "title": "Connect a server",
        "description": "Get the link that connects one of your MCP servers to Latchkey (sign-in and consent in the browser). Servers that are not connected have no tools in this list.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "server": {"type": "string", "description": "The server's name, slug (the part before `__` in its tool names) or id."}
            },
            "required": ["server"]
        }
    });
    serde_json::from_value(definition).unwrap_or_default()
}

/// One MCP session (2025-11-25) or one stateless request (2026-07-28).
#[derive(Debug)]
struct Handler {
    fed: Federation,
    /// The session's owner and its change feed, from `initialize` until the
    /// notification task takes them.
    pending: Mutex<Option<(Principal, broadcast::Receiver<Arc<CredentialChange>>)>>,
    /// Dropped with the handler (the session's end), which stops its notification task
    /// and its relays.
    alive: watch::Sender<()>,
    /// What the session subscribed to or set a level on, per server, and the relays.
    relays: Arc<Mutex<relay::Relays>>,
}

/// Sends `out` for `caller` with `client` as the relay of what the upstream sends
/// before its answer ([`Federation::in_rounds`]; owned: it may run in a task of its own
/// while the client is asked).
async fn send(s: AppState, caller: Principal, out: Outgoing, client: Downstream) -> Outcome {
    let Outgoing {
        server,
        method,
        params,
        needs,
        shape,
    } = out;
    let via = crate::tools::Relaying::To(&client);
    let answer = crate::tools::call_via(&s, &caller, &server, method, Some(params), needs, via)
        .await
        .map(|a| match a {
            crate::tools::Answer::Result(v) => crate::tools::Answer::Result(shape(v)),
            error => error,
        });
    (server, answer)
}

/// The retry of a stateless request ([`Federation::in_rounds`]): its `requestState` and
/// `inputResponses`.
#[derive(Debug)]
struct Retry<'a> {
    state: &'a str,
    responses: InputResponses,
}

impl<'a> Retry<'a> {
    /// The retry a request's params make, if they carry a `requestState`.
    fn of(state: Option<&'a str>, responses: Option<&InputResponses>) -> Option<Self> {
        Some(Self {
            state: state?,
            responses: responses.cloned().unwrap_or_default(),
        })
    }
}

/// The upstream request a client's `tools/call`, `prompts/get` or `resources/read` is
/// sent as ([`Federation::in_rounds`]).
pub(super) struct Outgoing {
    pub(super) server: ServerRow,
    pub(super) method: &'static str,
    pub(super) params: Value,
    /// The capability the method belongs to (an upstream that did not declare it is not
    /// asked; `crate::tools::call_via`).
    pub(super) needs: Option<&'static str>,
    /// Applied to the upstream's result in the exchange's task (a read's content URIs
    /// given their federated form), so that finishing the answer after a retry needs
    /// nothing of the routing.
    pub(super) shape: Box<dyn FnOnce(Value) -> Value + Send>,
}

impl Handler {
    fn new(fed: Federation) -> Self {
        Self {
            fed,
            pending: Mutex::new(None),
            alive: watch::channel(()).0,
            relays: Arc::default(),
        }
    }

    /// Relays `routed`'s server's messages that `change` makes the session want, on a
    /// 2025-11-25 session (a stateless request has no session to relay to; the
    /// 2026-07-28 wire asks through `subscriptions/listen`).
    async fn want(
        &self,
        p: &Principal,
        context: &RequestContext<RoleServer>,
        routed: primitives::Routed,
        change: impl FnOnce(&mut relay::Wanted),
    ) {
        if !matches!(Elicit::of(context, false), Elicit::Error) {
            return;
        }
        let out = relay::Out::Session(context.peer.clone());
        self.fed
            .relay(
                &self.relays,
                p,
                &routed.server,
                &routed.slug,
                &out,
                &self.alive.subscribe(),
                &[],
                change,
            )
            .await;
    }

    /// After a listing on a 2025-11-25 session: relays the list changes of the servers
    /// it listed from (in the background, so the listing is not delayed by opening
    /// upstream streams; a server already relayed costs nothing upstream).
    fn watch_lists(&self, p: &Principal, context: &RequestContext<RoleServer>) {
        if !matches!(Elicit::of(context, false), Elicit::Error) {
            return;
        }
        let fed = self.fed.clone();
        let relays = self.relays.clone();
        let out = relay::Out::Session(context.peer.clone());
        let alive = self.alive.subscribe();
        let p = p.clone();
        tokio::spawn(async move { fed.watch_lists(&relays, &p, &out, &alive).await });
    }
}

/// Whether a change from the feed concerns `owner` (a lagging feed may have lost one
/// that did: say yes).
fn concerns(
    r: &Result<Arc<CredentialChange>, broadcast::error::RecvError>,
    owner: &Principal,
) -> Option<bool> {
    match r {
        Ok(c) => Some(change_visible_to(c, owner)),
        Err(broadcast::error::RecvError::Lagged(_)) => Some(true),
        Err(broadcast::error::RecvError::Closed) => None,
    }
}

impl ServerHandler for Handler {
    // `logging` is deprecated in rmcp (SEP-2577) but still part of 2025-11-25.
    #[allow(deprecated)]
    fn get_info(&self) -> ServerConfig {
        InitializeResult::new(
            // Advertised statically, whichever servers are connected now: the
            // capabilities are fixed at `initialize` (2025-11-25) or `server/discover`,
            // while the servers behind `/mcp` connect and disconnect during a session.
            // What a server connected later offers appears through the list changes;
            // a list no connected server offers is empty. Each capability is backed:
            // * `listChanged` (tools, prompts, resources): sent when a server becomes
            //   usable or unusable for the caller, and relayed when an upstream sends
            //   its own (2025-11-25 sessions that listed from it; 2026-07-28
            //   `subscriptions/listen` with these filters).
            // * `logging` and `resources.subscribe`: forwarded to the servers that
            //   offer them, their messages relayed to the client that asked
            //   (2025-11-25; on 2026-07-28, which retired both requests, resource
            //   subscriptions come in the listen filter).
            ServerCapabilities::builder()
                .enable_logging()
                .enable_completions()
                .enable_prompts()
                .enable_prompts_list_changed()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_resources_list_changed()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("latchkey", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "The tools and prompts of your connected MCP servers, named <server>__<name>, \
             and their resources, as latchkey://<server>/<the server's own URI> (servers \
             set up as unprefixed keep their own names and URIs). \
             Call latchkey_connect to connect a server that has no tools here yet. \
             A server that takes an API key (static headers) shows its tools once its values \
             are set: `latchkey servers set-headers <server> --header 'Name: value'` or \
             Latchkey's web UI.",
        )
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        let owner = principal(&context.extensions)?;
        // Subscribed now, so a change between this answer and the task's start is kept.
        let feed = self.fed.s.events.subscribe_changes();
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some((owner, feed));
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let Some((owner, mut feed)) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let out = relay::Out::Session(context.peer);
        let mut alive = self.alive.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    // Only ever resolves when the handler (the session) is gone.
                    _ = alive.changed() => break,
                    r = feed.recv() => match concerns(&r, &owner) {
                        None => break,
                        Some(false) => {}
                        Some(true) => {
                            if !out.lists_changed().await {
                                break;
                            }
                        }
                    },
                }
            }
        });
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let p = principal(&context.extensions)?;
        let tools = self.fed.list(&p).await?;
        self.watch_lists(&p, &context);
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let p = principal(&context.extensions)?;
        let how = Elicit::of_request(&context, &request.request_state, &request.input_responses);
        if request.name == CONNECT_TOOL {
            self.fed.connect(&p, request.arguments, how).await
        } else {
            self.fed.call(&p, request, how, context).await
        }
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let p = principal(&context.extensions)?;
        let prompts = self.fed.list_prompts(&p).await?;
        self.watch_lists(&p, &context);
        Ok(ListPromptsResult::with_all_items(prompts))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let p = principal(&context.extensions)?;
        let how = Elicit::of_request(&context, &request.request_state, &request.input_responses);
        self.fed.get_prompt(&p, request, how, context).await
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let p = principal(&context.extensions)?;
        let resources = self.fed.list_resources(&p).await?;
        self.watch_lists(&p, &context);
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let p = principal(&context.extensions)?;
        let templates = self.fed.list_resource_templates(&p).await?;
        self.watch_lists(&p, &context);
        Ok(ListResourceTemplatesResult::with_all_items(templates))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let p = principal(&context.extensions)?;
        let how = Elicit::of_request(&context, &request.request_state, &request.input_responses);
        self.fed.read_resource(&p, request, how, context).await
    }

    // Logging is deprecated in rmcp (SEP-2577) but still part of 2025-11-25.
    #[allow(deprecated)]
    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let p = principal(&context.extensions)?;
        let level = request.level;
        for routed in self.fed.set_level(&p, json!(level)).await? {
            // Kept, not only noted: a new upstream session is given it again.
            self.want(&p, &context, routed, |w| w.level = Some(level))
                .await;
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let p = principal(&context.extensions)?;
        let how = Elicit::of(&context, false);
        let routed = self
            .fed
            .subscription(&p, &request.uri, primitives::Subscription::Subscribe, how)
            .await?;
        let uri = routed.original.clone();
        self.want(&p, &context, routed, |w| {
            w.uris.insert(uri);
        })
        .await;
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let p = principal(&context.extensions)?;
        let how = Elicit::of(&context, false);
        let routed = self
            .fed
            .subscription(&p, &request.uri, primitives::Subscription::Unsubscribe, how)
            .await?;
        self.relays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwant(&routed.server.id, &routed.original);
        Ok(())
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let p = principal(&context.extensions)?;
        let client = Downstream::of(context);
        self.fed.complete(&p, request, &client).await
    }

    /// 2026-07-28: the list changes of all three lists, and updates of up to
    /// [`MAX_LISTEN_URIS`] resources (rmcp keeps only what was also requested and
    /// advertised). A URI whose server cannot be subscribed to now (unknown, not
    /// connected) is acknowledged but gets no updates.
    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let builder = SubscriptionFilter::builder()
            .tools_list_changed()
            .prompts_list_changed()
            .resources_list_changed();
        Some(match &requested.resource_subscriptions {
            Some(uris) => builder
                .resource_subscriptions(uris.iter().take(MAX_LISTEN_URIS).cloned())
                .build(),
            None => builder.build(),
        })
    }

    /// 2026-07-28: on the listen stream, the list changes (a server becoming usable or
    /// unusable for the caller; an upstream's own, from the servers the caller can use
    /// that declared them) and the updates of the resources in the filter (each
    /// subscribed to at its server first), until the client ends the request.
    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let owner = principal(&context.request_context().extensions)?;
        let mut feed = self.fed.s.events.subscribe_changes();
        let accepted = context.accepted().clone();
        let lists = [
            accepted.tools_list_changed,
            accepted.prompts_list_changed,
            accepted.resources_list_changed,
        ]
        .contains(&Some(true));
        let out = relay::Out::Listen(context.sink().clone());
        // The relays end with this request: `_alive` is dropped on return.
        let (_alive, alive) = watch::channel(());
        let relays: Arc<Mutex<relay::Relays>> = Arc::default();
        // Never a sign-in from here (one per URI, unasked for, with nobody to send the
        // link to): a server that is not connected answers "not connected yet", and
        // its URI gets no updates.
        let how = Elicit::Retried;
        for uri in accepted.resource_subscriptions.iter().flatten() {
            match self
                .fed
                .subscription(&owner, uri, primitives::Subscription::Subscribe, how)
                .await
            {
                Ok(routed) => {
                    let original = routed.original.clone();
                    self.fed
                        .relay(
                            &relays,
                            &owner,
                            &routed.server,
                            &routed.slug,
                            &out,
                            &alive,
                            &[],
                            |w| {
                                w.uris.insert(original);
                            },
                        )
                        .await;
                }
                Err(e) => tracing::info!(
                    event = "mcp.federated.listen_subscribe_failed",
                    code = e.code.0
                ),
            }
        }
        if lists {
            self.fed.watch_lists(&relays, &owner, &out, &alive).await;
        }
        loop {
            tokio::select! {
                _ = context.cancelled() => return Ok(()),
                r = feed.recv() => match concerns(&r, &owner) {
                    None => return Ok(()),
                    Some(false) => {}
                    Some(true) => {
                        if !out.lists_changed().await {
                            return Ok(());
                        }
                        // A server that became usable is relayed from now on.
                        if lists {
                            self.fed.watch_lists(&relays, &owner, &out, &alive).await;
                        }
                    }
                },
            }
        }
    }
}
