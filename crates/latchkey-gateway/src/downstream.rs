//! The client a federated request came from, as the relay of what its upstream sends
//! during that request ([`latchkey_mcp::Relay`], read by
//! [`latchkey_mcp::McpClient::send_relaying`]).
//!
//! * `notifications/progress`: the upstream is given a token of Latchkey's own (unique
//!   within the upstream session, which several client sessions of one slot share),
//!   and each progress notification carrying it reaches the client with the client's
//!   own `progressToken`; none is asked for when the client gave none.
//! * `elicitation/create`, `sampling/createMessage`, `roots/list`: sent to the client
//!   session that made the request (on its request's stream) through rmcp's `Peer`, and
//!   the client's result or error handed back for the upstream. A client that did not
//!   declare the capability is not asked: the upstream gets `-32601` saying so.
//! * On the stateless 2026-07-28 wire there is no session to send a request on: during
//!   a `tools/call`, `prompts/get` or `resources/read`, a server-to-client request
//!   becomes a multi-round-trip request (SEP-2322, [`Rounds`]). `completion/complete`
//!   does not take this path: rmcp's completion params carry no `requestState` or
//!   `inputResponses` (completions are asked for at every keystroke), so its upstream
//!   gets `-32601` there.
//!   The upstream exchange keeps running in a spawned task (its SSE stream open, the
//!   upstream waiting for its answer); the client is answered `input_required` with the
//!   upstream's request under a key (`r1` …) and a fresh random `requestState`, and its
//!   retry carrying that `requestState` and `inputResponses` hands the response to the
//!   waiting exchange (POSTed upstream as on the session wire), then waits for the final
//!   answer or the next `input_required`. A `requestState` is single use, bound to the
//!   principal (tenant and subject) and the request ([`request_key`]: method, name and
//!   arguments, since SEP-2322's retry is the same request with `inputResponses` added);
//!   an unknown, used, expired or foreign one, or one retried with other arguments, is
//!   `-32602`. A pending exchange is kept at most
//!   [`PARKED_FOR`] and cancelled upstream (`notifications/cancelled`) when it expires;
//!   beyond [`MAX_PARKED`] of them, or for a client that did not declare the
//!   capability, the upstream gets `-32601` as on the session wire. Progress goes to
//!   the client on whichever of its requests is waiting at the time.
//!
//!   Pending exchanges live in this instance's memory: the exchange is a live upstream
//!   HTTP stream and a task reading it, which cannot be written to a database or handed
//!   to another process. With several instances, the client's retry must reach the
//!   instance that answered `input_required` (sticky routing); elsewhere its
//!   `requestState` is unknown and refused.
//! * An upstream's `notifications/cancelled` for one of them cancels it at the client
//!   (rmcp's `RequestHandle::cancel`); the client's cancellation of its own request
//!   (rmcp cancels the handler's token) makes the upstream get `notifications/cancelled`
//!   with the upstream request's id.
//!
//! Everything else an upstream sends on a request's stream is dropped here (log
//! messages and resource updates come back through [`crate::federated`]'s relays).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use latchkey_guard::Principal;
use rmcp::model::{
    ClientCapabilities, InputRequest, InputRequests, InputRequiredResult, InputResponses,
    ProtocolVersion, ServerNotification, ServerRequest,
};
use rmcp::service::{PeerRequestOptions, RequestContext, ServiceError};
use rmcp::{ErrorData, RoleServer};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};

/// How long a pending exchange waits for the client's retry before it is cancelled
/// upstream (a person may be answering an elicitation; an abandoned one must not hold
/// an upstream stream for long).
pub(crate) const PARKED_FOR: Duration = Duration::from_secs(5 * 60);
/// Pending exchanges one instance keeps at most (each holds an upstream stream and a
/// task); beyond it the upstream's request gets `-32601`.
pub(crate) const MAX_PARKED: usize = 1_000;

/// The client behind one federated request.
#[derive(Debug)]
pub(crate) struct Downstream {
    to: To,
    /// The token the upstream is given, when the client asked for progress.
    upstream_token: Option<String>,
    /// Something reached the client: the request must not be re-sent silently.
    relayed: AtomicBool,
}

/// Where what the upstream sends goes.
#[derive(Debug)]
enum To {
    /// The client session of the request, through rmcp's `Peer` (the 2025-11-25 wire;
    /// on the stateless wire, a client that declared nothing to relay).
    Session(Box<RequestContext<RoleServer>>),
    /// The request's rounds on the stateless wire ([`Rounds`]): progress and requests go
    /// to whichever of the client's requests is waiting.
    Rounds {
        capabilities: Option<ClientCapabilities>,
        events: mpsc::Sender<Event>,
        /// Its sender is dropped when the exchange is abandoned (expired, or the
        /// client's request gone while it was waiting).
        abandoned: watch::Receiver<()>,
    },
}

/// What the exchange's task hands to the client's waiting request.
#[derive(Debug)]
enum Event {
    /// `notifications/progress` params, with the upstream's token.
    Progress(Value),
    /// A server-to-client request and where its answer goes.
    Ask {
        method: String,
        params: Value,
        answer: oneshot::Sender<Result<Value, Value>>,
    },
}

/// What the upstream exchange of a request (a `tools/call` …) ends with: the server and
/// its answer (a JSON-RPC error kept apart: `prompts/get` and `resources/read` pass some
/// on).
pub(crate) type Outcome = (
    latchkey_vault::store::ServerRow,
    Result<crate::upstream_answer::Answer, crate::error::ApiError>,
);

/// The answer to one of the client's requests on the rounds path.
#[derive(Debug)]
pub(crate) enum Round {
    /// The upstream answered (boxed: a server row is large).
    Done(Box<Outcome>),
    /// The upstream asks the client something: answer `input_required`.
    Input(InputRequiredResult),
}

/// An exchange running in its task.
#[derive(Debug)]
pub(crate) struct Running {
    events: mpsc::Receiver<Event>,
    done: tokio::task::JoinHandle<Outcome>,
    /// Dropped with the exchange: the task's relay tells the upstream it is cancelled.
    _abandon: watch::Sender<()>,
}

/// Where the answers to a round's questions go, by their key in `inputRequests`.
type Answers = Vec<(String, oneshot::Sender<Result<Value, Value>>)>;

/// An exchange waiting for the client's retry.
#[derive(Debug)]
struct Parked {
    // Dropped first (fields drop in order): the upstream is told the request is
    // cancelled before its open questions get their "no answer".
    running: Running,
    tenant: String,
    subject: String,
    /// The request it belongs to ([`request_key`]).
    what: String,
    /// The open questions by their key in `inputRequests`.
    answers: Answers,
}

/// The stateless wire's pending exchanges (SEP-2322), by `requestState`; one instance's
/// memory (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Rounds {
    parked: Arc<Mutex<HashMap<String, Parked>>>,
    /// [`PARKED_FOR`] (shorter in the unit tests).
    ttl: Duration,
}

impl Default for Rounds {
    fn default() -> Self {
        Self {
            parked: Arc::default(),
            ttl: PARKED_FOR,
        }
    }
}

/// What a parked exchange is bound to besides its principal: `method`, `name` (a tool
/// or prompt name, a resource URI) and a SHA-256 of the JSON of `arguments` (none is
/// the empty object, as the upstream is sent). A retry must be the same request
/// (SEP-2322): with other arguments it would get the answer to the first one's. The
/// JSON is canonical as it is: serde_json's `Map` keeps its keys sorted at every depth
/// (the workspace does not enable its `preserve_order`; the unit test
/// `the_request_key_ignores_key_order_but_not_values` fails if something does), so a
/// client that reorders keys makes the same request. Hashed, so the key stays small
/// however large the arguments.
pub(crate) fn request_key(
    method: &str,
    name: &str,
    arguments: Option<&serde_json::Map<String, Value>>,
) -> String {
    use sha2::{Digest, Sha256};
    let empty = serde_json::Map::new();
    // A map of JSON values always serializes; `Value`'s `Display` is that.
    let form = Value::Object(arguments.unwrap_or(&empty).clone()).to_string();
    format!("{method} {name} {:x}", Sha256::digest(form.as_bytes()))
}

/// What `principal` has asked to connect to a request: its tenant and subject.
fn owner(p: &Principal) -> (String, String) {
    (p.tenant.as_str().to_owned(), p.subject.as_str().to_owned())
}

/// Whether the request of `context` came on the stateless 2026-07-28 wire.
fn stateless(context: &RequestContext<RoleServer>) -> bool {
    context
        .protocol_version()
        .is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str())
}

impl Rounds {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Parked>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `work` with the relay for the request of `context` and answers the request:
    /// the outcome, or `input_required` when the upstream asks something on the
    /// stateless wire. `what` names the request ([`request_key`]): a `requestState` is
    /// bound to it.
    ///
    /// On a session, or for a stateless client that declared nothing that could be
    /// relayed, `work` runs here (rmcp's `Peer` needs the request's own task); otherwise
    /// in a spawned task that outlives the request while the client is asked.
    pub(crate) async fn run<F, Fut>(
        &self,
        p: &Principal,
        what: &str,
        context: RequestContext<RoleServer>,
        work: F,
    ) -> Result<Round, ErrorData>
    where
        F: FnOnce(Downstream) -> Fut,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        if !stateless(&context) || !Downstream::declares_any(&context) {
            return Ok(Round::Done(Box::new(work(Downstream::of(context)).await)));
        }
        let (events_tx, events) = mpsc::channel(16);
        let (abandon, abandoned) = watch::channel(());
        let client = Downstream::rounds(&context, events_tx, abandoned);
        let running = Running {
            events,
            done: tokio::spawn(work(client)),
            _abandon: abandon,
        };
        self.wait(p, what, &context, running).await
    }

    /// The retry of a stateless request carrying `state` (its `requestState`) and
    /// `responses` (its `inputResponses`): the answers go to the parked exchange, which
    /// is waited on again as [`Rounds::run`] waits.
    pub(crate) async fn retry(
        &self,
        p: &Principal,
        what: &str,
        context: &RequestContext<RoleServer>,
        state: &str,
        responses: InputResponses,
    ) -> Result<Round, ErrorData> {
        let running = self.resume(p, what, state, responses)?;
        self.wait(p, what, context, running).await
    }

    /// The parked exchange of `state`, its questions answered with `responses`.
    fn resume(
        &self,
        p: &Principal,
        what: &str,
        state: &str,
        responses: InputResponses,
    ) -> Result<Running, ErrorData> {
        let parked = {
            let mut all = self.lock();
            let Some(parked) = all.remove(state) else {
                return Err(ErrorData::invalid_params(
                    "unknown requestState: it was used already, has expired (after 5 \
                     minutes) or was issued by another instance; send the request again \
                     without it",
                    None,
                ));
            };
            let (tenant, subject) = owner(p);
            if parked.tenant != tenant || parked.subject != subject || parked.what != what {
                // Kept for its owner: a foreign retry must not end someone's exchange.
                all.insert(state.to_owned(), parked);
                return Err(ErrorData::invalid_params(
                    "this requestState belongs to another principal or another request \
                     (a retry repeats the request: the same name and arguments, with \
                     inputResponses added)",
                    None,
                ));
            }
            parked
        };
        let Parked {
            running, answers, ..
        } = parked;
        for (key, answer) in answers {
            let response = match responses.get(&key) {
                Some(v) => Ok(v.clone()),
                None => Err(error(
                    INVALID_PARAMS,
                    "the client sent no response to this request",
                )),
            };
            // The upstream may have cancelled it meanwhile.
            let _ = answer.send(response);
        }
        Ok(running)
    }

    /// Waits on `running` for the request of `context`: its outcome, or the next
    /// questions parked under a fresh `requestState`. The client's progress token of
    /// this request gets the upstream's progress meanwhile.
    async fn wait(
        &self,
        p: &Principal,
        what: &str,
        context: &RequestContext<RoleServer>,
        mut running: Running,
    ) -> Result<Round, ErrorData> {
        let theirs = context.meta.get_progress_token();
        loop {
            let event = tokio::select! {
                done = &mut running.done => {
                    return match done {
                        Ok(outcome) => Ok(Round::Done(Box::new(outcome))),
                        Err(_) => {
                            tracing::warn!(event = "mcp.rounds.task_failed");
                            Err(ErrorData::internal_error("the upstream exchange failed", None))
                        }
                    };
                }
                Some(event) = running.events.recv() => event,
            };
            let mut asks = Vec::new();
            let mut next = Some(event);
            // Questions sent together go to the client together.
            while let Some(event) = next.take() {
                match event {
                    Event::Progress(mut params) => {
                        if let Some(theirs) = &theirs {
                            params["progressToken"] = json!(theirs);
                            if let Ok(n) = serde_json::from_value::<ServerNotification>(
                                json!({"method": "notifications/progress", "params": params}),
                            ) {
                                let _ = context.peer.send_notification(n).await;
                            }
                        }
                    }
                    Event::Ask {
                        method,
                        params,
                        answer,
                    } => asks.push((method, params, answer)),
                }
                next = running.events.try_recv().ok();
            }
            if asks.is_empty() {
                continue;
            }
            let mut requests = InputRequests::new();
            let mut answers = Vec::new();
            for (method, params, answer) in asks {
                let request = json!({"method": method, "params": params});
                match serde_json::from_value::<InputRequest>(request) {
                    Ok(r) => {
                        let key = format!("r{}", answers.len() + 1);
                        requests.insert(key.clone(), r);
                        answers.push((key, answer));
                    }
                    Err(_) => {
                        let _ = answer.send(Err(error(
                            INVALID_PARAMS,
                            &format!("{method}: the parameters are not valid"),
                        )));
                    }
                }
            }
            if answers.is_empty() {
                continue;
            }
            let state = match self.park(p, what, running, answers) {
                Ok(state) => state,
                Err(back) => {
                    running = back;
                    continue;
                }
            };
            return Ok(Round::Input(InputRequiredResult::new(
                Some(requests),
                Some(state),
            )));
        }
    }
}

impl Rounds {
    /// Parks `running` with its open questions under a fresh `requestState` (256 random
    /// bits), dropped after [`PARKED_FOR`] (`ttl`); when [`MAX_PARKED`] are parked already, the
    /// questions get `-32601` and `running` comes back.
    fn park(
        &self,
        p: &Principal,
        what: &str,
        running: Running,
        answers: Answers,
    ) -> Result<String, Running> {
        let state = latchkey_oauth::pkce::new_state().expose().to_owned();
        let (tenant, subject) = owner(p);
        {
            let mut all = self.lock();
            if all.len() >= MAX_PARKED {
                drop(all);
                tracing::warn!(event = "mcp.rounds.full", max = MAX_PARKED);
                for (_, answer) in answers {
                    let _ = answer.send(Err(latchkey_mcp::method_not_found(
                        "too many requests are waiting for their clients' input",
                    )));
                }
                return Err(running);
            }
            let parked = Parked {
                running,
                tenant,
                subject,
                what: what.to_owned(),
                answers,
            };
            all.insert(state.clone(), parked);
        }
        let rounds = self.clone();
        let expiring = state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(rounds.ttl).await;
            // Dropping it drops its `Running`: the task's relay cancels upstream.
            let gone = rounds.lock().remove(&expiring);
            if gone.is_some() {
                tracing::info!(event = "mcp.rounds.expired");
            }
        });
        Ok(state)
    }
}

/// What Latchkey declares in its upstream sessions' `initialize`: everything it can
/// relay (servers check it before asking). An upstream session is shared by the slot's
/// client sessions, so whether one request reaches its client is decided per request,
/// by that client's own capabilities ([`Downstream`]), not here.
pub(crate) fn upstream_capabilities() -> ClientCapabilities {
    serde_json::from_value(json!({
        "elicitation": {"form": {}, "url": {}}, "sampling": {}, "roots": {}
    }))
    .unwrap_or_default()
}

/// JSON-RPC "Invalid params".
const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC "Internal error".
const INTERNAL_ERROR: i64 = -32603;

impl Downstream {
    /// The relay for the request of `context` to its session (taken, not cloned: its
    /// extensions hold the whole HTTP request head).
    pub(crate) fn of(context: RequestContext<RoleServer>) -> Self {
        let upstream_token = Self::token_for(&context);
        Self {
            to: To::Session(Box::new(context)),
            upstream_token,
            relayed: AtomicBool::new(false),
        }
    }

    fn token_for(context: &RequestContext<RoleServer>) -> Option<String> {
        context
            .meta
            .get_progress_token()
            .map(|_| format!("latchkey-{}", latchkey_vault::store::new_id()))
    }

    /// The relay of a stateless request's rounds: events go to `events` (a few may
    /// wait while no request of the client's is waiting for them; the upstream's
    /// questions block until then, its progress is dropped).
    fn rounds(
        context: &RequestContext<RoleServer>,
        events: mpsc::Sender<Event>,
        abandoned: watch::Receiver<()>,
    ) -> Self {
        Self {
            to: To::Rounds {
                capabilities: context.client_capabilities(),
                events,
                abandoned,
            },
            upstream_token: Self::token_for(context),
            relayed: AtomicBool::new(false),
        }
    }

    /// Whether the client of `context` declared anything a relayed request needs.
    #[allow(deprecated)]
    fn declares_any(context: &RequestContext<RoleServer>) -> bool {
        context
            .client_capabilities()
            .is_some_and(|c| c.elicitation.is_some() || c.sampling.is_some() || c.roots.is_some())
    }

    /// The `progressToken` to put into the upstream request's `_meta`, if any.
    pub(crate) fn upstream_progress_token(&self) -> Option<&str> {
        self.upstream_token.as_deref()
    }

    /// Whether anything was relayed to the client.
    pub(crate) fn relayed(&self) -> bool {
        self.relayed.load(Ordering::Relaxed)
    }

    fn capabilities(&self) -> Option<ClientCapabilities> {
        match &self.to {
            To::Session(context) => context.client_capabilities(),
            To::Rounds { capabilities, .. } => capabilities.clone(),
        }
    }

    /// Whether the client declared what `method` (with `params`) needs; `None` for a
    /// method that is not a server-to-client request relayed here. A URL-mode
    /// elicitation needs `elicitation.url`; a form one `elicitation.form`, or an empty
    /// `elicitation` (which means form, as before modes existed).
    // Sampling and roots are deprecated in rmcp (SEP-2577) but part of 2025-11-25.
    #[allow(deprecated)]
    fn declared(&self, method: &str, params: &Value) -> Option<bool> {
        let caps = self.capabilities();
        let caps = caps.as_ref();
        let url_mode = params.get("mode").and_then(Value::as_str) == Some("url");
        Some(match method {
            "elicitation/create" => caps.and_then(|c| c.elicitation.as_ref()).is_some_and(|e| {
                if url_mode {
                    e.url.is_some()
                } else {
                    e.form.is_some() || e.url.is_none()
                }
            }),
            "sampling/createMessage" => caps.is_some_and(|c| c.sampling.is_some()),
            "roots/list" => caps.is_some_and(|c| c.roots.is_some()),
            _ => return None,
        })
    }

    /// [`latchkey_mcp::Relay::request`] on the rounds path: handed to the client's
    /// waiting request, answered by its retry.
    async fn ask_in_rounds(
        &self,
        events: &mpsc::Sender<Event>,
        method: String,
        params: Value,
        stop: oneshot::Receiver<()>,
    ) -> Result<Value, Value> {
        let (answer, answered) = oneshot::channel();
        self.relayed.store(true, Ordering::Relaxed);
        if events
            .send(Event::Ask {
                method,
                params,
                answer,
            })
            .await
            .is_err()
        {
            return Err(error(INTERNAL_ERROR, "the client's request is gone"));
        }
        tokio::select! {
            a = answered => a.unwrap_or_else(|_| Err(error(INTERNAL_ERROR, "the client did not answer"))),
            _ = stop => Err(error(INTERNAL_ERROR, "cancelled")),
        }
    }
}

fn error(code: i64, message: &str) -> Value {
    json!({"code": code, "message": message})
}

impl latchkey_mcp::Relay for Downstream {
    async fn notification(&self, message: Value) {
        if message.get("method").and_then(Value::as_str) != Some("notifications/progress") {
            return;
        }
        let Some(ours) = self.upstream_token.as_deref() else {
            return;
        };
        let mut params = message.get("params").cloned().unwrap_or_else(|| json!({}));
        if params.get("progressToken").and_then(Value::as_str) != Some(ours) {
            return;
        }
        let context = match &self.to {
            To::Session(context) => context,
            To::Rounds { events, .. } => {
                self.relayed.store(true, Ordering::Relaxed);
                // Dropped when nobody is waiting and the buffer is full.
                let _ = events.try_send(Event::Progress(params));
                return;
            }
        };
        let Some(theirs) = context.meta.get_progress_token() else {
            return;
        };
        params["progressToken"] = json!(theirs);
        let Ok(notification) = serde_json::from_value::<ServerNotification>(
            json!({"method": "notifications/progress", "params": params}),
        ) else {
            return;
        };
        self.relayed.store(true, Ordering::Relaxed);
        // A client gone meanwhile is not the upstream's problem.
        let _ = context.peer.send_notification(notification).await;
    }

    async fn request(
        &self,
        method: String,
        params: Value,
        stop: oneshot::Receiver<()>,
    ) -> Result<Value, Value> {
        let Some(declared) = self.declared(&method, &params) else {
            return Err(latchkey_mcp::method_not_found(&method));
        };
        if !declared {
            return Err(latchkey_mcp::method_not_found(&format!(
                "{method}: the client does not support it (it did not declare the capability)"
            )));
        }
        let context = match &self.to {
            To::Session(context) => context,
            To::Rounds { events, .. } => {
                return self.ask_in_rounds(events, method, params, stop).await;
            }
        };
        if stateless(context) {
            // `completion/complete`, which has no rounds (a `tools/call`, `prompts/get`
            // or `resources/read` of a client that declared something runs through
            // [`Rounds`]).
            return Err(latchkey_mcp::method_not_found(&format!(
                "{method}: the client's request came on the stateless 2026-07-28 wire, \
                 which has no server-to-client requests"
            )));
        }
        let request = match serde_json::from_value::<ServerRequest>(
            json!({"method": method, "params": params}),
        ) {
            Ok(ServerRequest::CustomRequest(_)) | Err(_) => {
                return Err(error(
                    INVALID_PARAMS,
                    &format!("{method}: the parameters are not valid"),
                ));
            }
            Ok(r) => r,
        };
        self.relayed.store(true, Ordering::Relaxed);
        let mut handle = match context
            .peer
            .send_cancellable_request(request, PeerRequestOptions::no_options())
            .await
        {
            Ok(h) => h,
            Err(_) => return Err(error(INTERNAL_ERROR, "the client session is gone")),
        };
        tokio::select! {
            answer = &mut handle.rx => match answer {
                Ok(Ok(result)) => serde_json::to_value(result)
                    .map_err(|_| error(INTERNAL_ERROR, "the client's answer was not usable")),
                Ok(Err(ServiceError::McpError(e))) => Err(serde_json::to_value(e)
                    .unwrap_or_else(|_| error(INTERNAL_ERROR, "the client answered an error"))),
                _ => Err(error(INTERNAL_ERROR, "the client did not answer")),
            },
            _ = stop => {
                let _ = handle.cancel(Some("cancelled by the upstream server".into())).await;
                Err(error(INTERNAL_ERROR, "cancelled"))
            }
        }
    }

    async fn cancelled(&self) {
        match &self.to {
            To::Session(context) => context.ct.cancelled().await,
            To::Rounds { abandoned, .. } => {
                // Resolves once the sender is dropped (nothing is ever sent on it).
                let mut abandoned = abandoned.clone();
                while abandoned.changed().await.is_ok() {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_guard::{AuthSource, SubjectId, TenantId};

    fn principal(subject: &str) -> Principal {
        Principal::new(
            TenantId::new("t").unwrap(),
            SubjectId::new(subject).unwrap(),
            AuthSource::Local,
        )
    }

    /// An exchange whose task reports when it is abandoned, and one open question.
    fn exchange() -> (
        Running,
        oneshot::Receiver<()>,
        Answers,
        oneshot::Receiver<Result<Value, Value>>,
    ) {
        let (_events_tx, events) = mpsc::channel(1);
        let (abandon, mut abandoned) = watch::channel(());
        let (seen_tx, seen) = oneshot::channel();
        let done = tokio::spawn(async move {
            while abandoned.changed().await.is_ok() {}
            let _ = seen_tx.send(());
            (
                latchkey_vault::store::ServerRow::new("s", "t", "S", "http://127.0.0.1:1/mcp"),
                Err(crate::error::ApiError::Upstream),
            )
        });
        let (answer, answered) = oneshot::channel();
        let running = Running {
            events,
            done,
            _abandon: abandon,
        };
        (running, seen, vec![("r1".to_owned(), answer)], answered)
    }

    fn args(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn the_request_key_ignores_key_order_but_not_values() {
        let key = |v: Value| request_key("tools/call", "ask", Some(&args(v)));
        let first = key(json!({"a": 1, "b": {"x": [1, {"p": "q", "o": null}], "y": "z"}}));
        assert_eq!(
            first,
            key(json!({"b": {"y": "z", "x": [1, {"o": null, "p": "q"}]}, "a": 1})),
            "the same arguments, keys reordered at every depth"
        );
        assert!(first.starts_with("tools/call ask "), "{first}");
        for other in [
            json!({"a": 2, "b": {"x": [1, {"p": "q", "o": null}], "y": "z"}}),
            json!({"a": 1, "b": {"x": [{"p": "q", "o": null}, 1], "y": "z"}}),
            json!({"a": 1, "b": {"x": [1, {"p": "q", "o": null}], "y": "z"}, "c": true}),
            json!({"a": "1", "b": {"x": [1, {"p": "q", "o": null}], "y": "z"}}),
            json!({"a": 1}),
        ] {
            assert_ne!(first, key(other.clone()), "{other}");
        }
        assert_ne!(
            first,
            request_key(
                "prompts/get",
                "ask",
                Some(&args(
                    json!({"a": 1, "b": {"x": [1, {"p": "q", "o": null}], "y": "z"}})
                ))
            )
        );
        // No arguments is the empty object, as the upstream is sent.
        assert_eq!(request_key("tools/call", "ask", None), key(json!({})));
        // A key that needs escaping cannot pass for a structure.
        assert_ne!(key(json!({"a\":1,\"b": 2})), key(json!({"a": 1, "b": 2})));
        // The form hashed is compact with its keys sorted, as serde_json writes a value
        // when its `preserve_order` is off.
        let form = json!({"b": [true, 1.5, "\n"], "a": {}}).to_string();
        assert_eq!(form, r#"{"a":{},"b":[true,1.5,"\n"]}"#);
    }

    #[tokio::test]
    async fn a_parked_exchange_expires_and_is_abandoned() {
        let rounds = Rounds {
            ttl: Duration::from_millis(100),
            ..Rounds::default()
        };
        let (running, abandoned, answers, _answered) = exchange();
        let p = principal("alice");
        let state = rounds.park(&p, "tools/call ask", running, answers).unwrap();
        assert!(state.len() >= 43, "256 bits in base64url: {state}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio::time::timeout(Duration::from_secs(5), abandoned)
            .await
            .expect("abandoned when it expired")
            .unwrap();
        let e = rounds
            .resume(&p, "tools/call ask", &state, InputResponses::new())
            .unwrap_err();
        assert_eq!(e.code.0, INVALID_PARAMS as i32);
        assert!(e.message.contains("unknown requestState"), "{e:?}");
    }

    #[tokio::test]
    async fn beyond_the_bound_the_upstream_gets_method_not_found() {
        let rounds = Rounds::default();
        let p = principal("alice");
        let mut kept = Vec::new();
        for _ in 0..MAX_PARKED {
            let (running, abandoned, answers, answered) = exchange();
            rounds.park(&p, "tools/call ask", running, answers).unwrap();
            kept.push((abandoned, answered));
        }
        let (running, _abandoned, answers, answered) = exchange();
        assert!(rounds.park(&p, "tools/call ask", running, answers).is_err());
        let e = answered.await.unwrap().unwrap_err();
        assert_eq!(e["code"], latchkey_mcp::METHOD_NOT_FOUND, "{e}");
    }

    #[tokio::test]
    async fn a_request_state_is_its_owners_and_single_use() {
        let rounds = Rounds::default();
        let (running, _abandoned, answers, answered) = exchange();
        let alice = principal("alice");
        let state = rounds
            .park(&alice, "tools/call ask", running, answers)
            .unwrap();
        let responses: InputResponses = [("r1".to_owned(), json!({"action": "decline"}))].into();
        for (who, what) in [
            (principal("bob"), "tools/call ask"),
            (alice.clone(), "tools/call other"),
        ] {
            let e = rounds
                .resume(&who, what, &state, responses.clone())
                .unwrap_err();
            assert!(e.message.contains("another principal"), "{e:?}");
        }
        let _running = rounds
            .resume(&alice, "tools/call ask", &state, responses.clone())
            .unwrap();
        assert_eq!(
            answered.await.unwrap().unwrap(),
            json!({"action": "decline"})
        );
        let e = rounds
            .resume(&alice, "tools/call ask", &state, responses)
            .unwrap_err();
        assert!(e.message.contains("unknown requestState"), "{e:?}");
    }
}
