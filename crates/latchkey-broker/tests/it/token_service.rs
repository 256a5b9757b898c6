//! R-REFRESH-1..17 against the scripted AS, on both store backends.

use std::sync::Arc;
use std::time::Duration;

use latchkey_broker::token_service::{
    AccessToken, LeaseOptions, ReauthReason, TokenError, TokenService, TokenServiceOptions,
};
use latchkey_core::time::ManualClock;
use latchkey_core::{Remedy, Secret, UnixTime};
use latchkey_egress::{Egress, EgressConfig, LoopbackPolicy};
use latchkey_testkit::{AsConfig, ScriptedServer};
use latchkey_vault::keyring::StaticKeys;
use latchkey_vault::store::new_id;
use latchkey_vault::{CredentialRow, KeySet, Keyring, ServerRow, Slot, Store};

use crate::front::Front;

/// `access_token` in the background (so a test can act while the grant is held).
fn spawn_access(
    svc: &Arc<TokenService>,
    slot: &Slot,
    force: bool,
) -> tokio::task::JoinHandle<Result<AccessToken, TokenError>> {
    let (svc, slot) = (svc.clone(), slot.clone());
    tokio::spawn(async move { svc.access_token(&slot, force).await })
}
use crate::on_both_backends;

const NOW: u64 = 1_800_000_000;
const CLIENT_SECRET: &str = "cs-do-not-log-0f3a9c";

struct Fx {
    server: ScriptedServer,
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    clock: Arc<ManualClock>,
    slot: Slot,
    token_endpoint: String,
}

fn keyring() -> Arc<Keyring> {
    Arc::new(Keyring::new(StaticKeys(Some(KeySet::generate().unwrap()))))
}

fn egress() -> Egress {
    Egress::new(EgressConfig {
        loopback: LoopbackPolicy::AllowInsecureLoopback,
        ..EgressConfig::default()
    })
    .unwrap()
}

impl Fx {
    /// A fixture whose token endpoint is the test proxy in front of the scripted AS.
    async fn with_front(store: Arc<dyn Store>, answer_reuse: bool) -> (Self, Front) {
        let mut fx = Fx::new(store).await;
        let front = Front::start(&fx.server.base, answer_reuse).await;
        fx.token_endpoint = front.token_endpoint.clone();
        (fx, front)
    }

    async fn new(store: Arc<dyn Store>) -> Self {
        Self::with_as(store, AsConfig::default()).await
    }

    async fn with_as(store: Arc<dyn Store>, cfg: AsConfig) -> Self {
        let server = ScriptedServer::start(cfg).await.unwrap();
        let tenant = format!("t-{}", new_id());
        store
            .create_server(
                &ServerRow::new("srv", &tenant, "srv", server.mcp_url()),
                NOW as i64,
            )
            .await
            .unwrap();
        let token_endpoint = format!("{}/token", server.base);
        Self {
            server,
            store,
            keyring: keyring(),
            clock: Arc::new(ManualClock::at(UnixTime::from_secs(NOW))),
            slot: Slot {
                tenant,
                server: "srv".into(),
                subject: Some("alice".into()),
            },
            token_endpoint,
        }
    }

    fn service(&self) -> TokenService {
        self.service_with(self.keyring.clone())
    }

    fn service_with(&self, keyring: Arc<Keyring>) -> TokenService {
        TokenService::new(
            self.store.clone(),
            keyring,
            egress(),
            self.clock.clone(),
            TokenServiceOptions::default(),
        )
    }

    fn now(&self) -> i64 {
        self.clock.now_secs()
    }

    /// Replaces the slot's credential (a new row id); values sealed to that id.
    async fn deposit(
        &self,
        access: Option<(&str, i64)>,
        refresh: Option<&str>,
        scopes: &str,
    ) -> CredentialRow {
        let id = new_id();
        let mut row = CredentialRow::new(
            id.clone(),
            self.slot.clone(),
            self.token_endpoint.clone(),
            0,
        );
        row.issuer = Some(self.server.base.clone());
        row.resource = Some(self.server.mcp_url());
        let seal =
            |col: &'static str, v: &str| self.keyring.seal(&Secret::new(v), row.aad(col)).unwrap();
        let row = CredentialRow {
            id: id.clone(),
            slot: self.slot.clone(),
            issuer: Some(self.server.base.clone()),
            resource: Some(self.server.mcp_url()),
            token_endpoint: self.token_endpoint.clone(),
            revocation_endpoint: None,
            client_id: Some("client-1".into()),
            client_secret: Some(seal("client_secret", CLIENT_SECRET)),
            auth_method: Some("client_secret_basic".into()),
            scopes: Some(scopes.into()),
            access_token: access.map(|(t, _)| seal("access_token", t)),
            access_expires_at: access.map(|(_, e)| e),
            refresh_token: refresh.map(|r| seal("refresh_token", r)),
            generation: 0,
            initiated_by: Some("alice".into()),
            created_at: self.now(),
            updated_at: self.now(),
            grant_type: None,
            needs_consent: None,
        };
        self.store.upsert_credential(&row).await.unwrap();
        row
    }

    /// A deposit whose access token has expired and whose refresh token is live.
    async fn deposit_expired(&self) -> (CredentialRow, String) {
        let rt = self.server.mint_refresh_token();
        let row = self
            .deposit(
                Some(("at-deposited", self.now() - 10)),
                Some(&rt),
                "mcp:read",
            )
            .await;
        (row, rt)
    }

    async fn row(&self) -> Option<CredentialRow> {
        self.store.get_credential(&self.slot).await.unwrap()
    }

    fn open(&self, row: &CredentialRow, col: &'static str) -> String {
        let env = match col {
            "access_token" => row.access_token.as_deref(),
            "refresh_token" => row.refresh_token.as_deref(),
            _ => row.client_secret.as_deref(),
        }
        .unwrap();
        self.keyring
            .open(env, row.aad(col))
            .unwrap()
            .expose()
            .to_owned()
    }

    fn grants(&self) -> usize {
        self.server.requests("/token").len()
    }
}

trait NowSecs {
    fn now_secs(&self) -> i64;
}

impl NowSecs for ManualClock {
    fn now_secs(&self) -> i64 {
        use latchkey_core::Clock;
        self.now().as_secs() as i64
    }
}

fn tok(t: &AccessToken) -> String {
    t.token.expose().to_owned()
}

on_both_backends!(
    cached_hit_makes_no_grant,
    thousand_callers_one_grant,
    rotation_persisted_and_reused_by_a_cold_instance,
    peer_rotation_is_recovered_by_a_retry,
    peer_rotation_with_reuse_detection_needs_reauth,
    redeposit_during_refresh_write_back_targets_reread_row,
    eviction_during_refresh_leaves_cache_empty,
    delete_during_refresh_resurrects_nothing,
    key_missing_and_wrong_key,
    not_connected,
    forced_refresh_waiter_reuses_the_fresh_token,
    queued_callers_share_an_authorization_server_failure,
    short_lived_tokens_are_served_for_half_their_lifetime,
    a_stalled_grant_is_awaited_and_loses_no_consent,
    client_credentials_are_renewed_with_their_grant,
);

/// Test 1 (R-REFRESH-1): the second call is served from memory.
async fn cached_hit_makes_no_grant(store: Arc<dyn Store>) {
    let fx = Fx::new(store).await;
    let (_, rt) = fx.deposit_expired().await;
    let svc = fx.service();
    let a = svc.access_token(&fx.slot, false).await.unwrap();
    assert_eq!(fx.grants(), 1);
    let req = &fx.server.requests("/token")[0];
    assert_eq!(req.body["grant_type"], "refresh_token");
    assert_eq!(req.body["refresh_token"], rt);
    assert_eq!(req.body["scope"], "mcp:read");
    assert_eq!(req.body["resource"], fx.server.mcp_url());
    assert_eq!(
        latchkey_testkit::basic_credentials(req).unwrap(),
        ("client-1".to_owned(), CLIENT_SECRET.to_owned())
    );
    assert_eq!(
        a.expires_at,
        Some(UnixTime::from_secs(NOW + 3600)),
        "the AS's expires_in"
    );
    let b = svc.access_token(&fx.slot, false).await.unwrap();
    assert_eq!(tok(&a), tok(&b));
    assert_eq!(fx.grants(), 1, "a cached hit makes no grant");
    assert_eq!(svc.stats().cache_hits, 1);
    // Within the skew the token is no longer served: a refresh follows.
    fx.clock.advance(Duration::from_secs(3600 - 60));
    let c = svc.access_token(&fx.slot, false).await.unwrap();
    assert_ne!(tok(&a), tok(&c));
    assert_eq!(fx.grants(), 2);
}

/// Test 2 (R-REFRESH-3): 1,000 concurrent callers on one expired slot, one grant.
async fn thousand_callers_one_grant(store: Arc<dyn Store>) {
    let fx = Fx::new(store).await;
    fx.deposit_expired().await;
    let svc = Arc::new(fx.service());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let svc = svc.clone();
        let slot = fx.slot.clone();
        set.spawn(async move { svc.access_token(&slot, false).await.map(|t| tok(&t)) });
    }
    let mut tokens = std::collections::HashSet::new();
    while let Some(r) = set.join_next().await {
        tokens.insert(r.unwrap().unwrap());
    }
    assert_eq!(fx.grants(), 1, "exactly one refresh grant");
    assert_eq!(tokens.len(), 1, "every caller got the same token");
    let s = svc.stats();
    assert_eq!(s.grants_started, 1);
    assert_eq!(s.cache_hits, 999);
}

/// Test 3 (R-REFRESH-10/11, R-MULTI-4): a cold instance reuses the persisted token, then
/// refreshes with the rotated refresh token without tripping reuse detection.
async fn rotation_persisted_and_reused_by_a_cold_instance(store: Arc<dyn Store>) {
    let fx = Fx::new(store).await;
    let (before, rt0) = fx.deposit_expired().await;
    let first = fx.service().access_token(&fx.slot, false).await.unwrap();
    let row = fx.row().await.unwrap();
    assert_eq!(row.id, before.id);
    assert_eq!(row.generation, 1);
    assert_eq!(row.access_expires_at, Some(NOW as i64 + 3600));
    assert_eq!(fx.open(&row, "access_token"), tok(&first));
    let rt1 = fx.open(&row, "refresh_token");
    assert_ne!(rt1, rt0, "the rotated refresh token was persisted");
    assert_eq!(row.scopes.as_deref(), Some("mcp:read"));

    let cold = fx.service();
    let again = cold.access_token(&fx.slot, false).await.unwrap();
    assert_eq!(tok(&again), tok(&first));
    assert_eq!(fx.grants(), 1, "the persisted token was reused");
    assert_eq!(cold.stats().store_hits, 1);

    fx.clock.advance(Duration::from_secs(3600));
    let next = cold.access_token(&fx.slot, false).await.unwrap();
    assert_ne!(tok(&next), tok(&first));
    let reqs = fx.server.requests("/token");
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[1].body["refresh_token"], rt1,
        "the rotated token was used"
    );
    let row = fx.row().await.unwrap();
    assert_eq!(row.generation, 2);
    assert_eq!(fx.open(&row, "access_token"), tok(&next));
}

/// Test 4 (R-REFRESH-5/6): instance B holds a stale refresh token that instance A has
/// already rotated; the AS refuses it, B re-reads, retries once with A's rotated token
/// and writes back against the re-read row. The front answers `invalid_grant` for the
/// rotated-out token itself (the scripted AS would revoke the whole family, see the
/// next case).
async fn peer_rotation_is_recovered_by_a_retry(store: Arc<dyn Store>) {
    let (fx, front) = Fx::with_front(store, true).await;
    let (_, rt0) = fx.deposit_expired().await;
    let a = fx.service();
    let b = fx.service();

    // B reads the row (rt0) and its grant is held at the front.
    let hold = front.hold_next().await;
    let b_task = {
        let slot = fx.slot.clone();
        let b = Arc::new(b);
        let b2 = b.clone();
        (
            b,
            tokio::spawn(async move { b2.access_token(&slot, true).await }),
        )
    };
    front.arrived().await;
    // A refreshes meanwhile: rt0 → rt1, persisted at generation 1.
    let from_a = a.access_token(&fx.slot, false).await.unwrap();
    let after_a = fx.row().await.unwrap();
    assert_eq!(after_a.generation, 1);
    let rt1 = fx.open(&after_a, "refresh_token");
    // A's access token has expired by the time B re-reads, so B must grant again.
    fx.clock.advance(Duration::from_secs(3600));
    drop(hold);
    let (b, task) = b_task;
    let from_b = task.await.unwrap().expect("recovered without reauth");
    assert_ne!(tok(&from_b), tok(&from_a));
    let upstream = fx.server.requests("/token");
    assert_eq!(upstream.len(), 2, "A's grant and B's retry reached the AS");
    assert_eq!(upstream[0].body["refresh_token"], rt0);
    assert_eq!(upstream[1].body["refresh_token"], rt1);
    let row = fx.row().await.unwrap();
    assert_eq!(row.id, after_a.id);
    assert_eq!(
        row.generation, 2,
        "written back against the re-read generation"
    );
    assert_eq!(fx.open(&row, "access_token"), tok(&from_b));
    assert_ne!(fx.open(&row, "refresh_token"), rt1);
    assert_eq!(b.stats().rotation_retries, 1);
    assert!(b.is_cached(&fx.slot));
}

/// With the scripted AS's reuse detection, presenting the rotated-out token revokes
/// the family: the single retry fails too and the outcome is reauth, after exactly one
/// retry with the re-read token.
async fn peer_rotation_with_reuse_detection_needs_reauth(store: Arc<dyn Store>) {
    let (fx, front) = Fx::with_front(store, false).await;
    let (_, rt0) = fx.deposit_expired().await;
    let a = fx.service();
    let b = Arc::new(fx.service());
    let hold = front.hold_next().await;
    let task = spawn_access(&b, &fx.slot, true);
    front.arrived().await;
    a.access_token(&fx.slot, false).await.unwrap();
    let rt1 = fx.open(&fx.row().await.unwrap(), "refresh_token");
    fx.clock.advance(Duration::from_secs(3600));
    drop(hold);
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err, TokenError::ReauthRequired(ReauthReason::InvalidGrant));
    assert_eq!(err.remedy(), Remedy::Reconsent);
    let reqs = fx.server.requests("/token");
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[1].body["refresh_token"], rt0);
    assert_eq!(
        reqs[2].body["refresh_token"], rt1,
        "one retry, re-read token"
    );
    assert_eq!(b.stats().rotation_retries, 1);
}

/// R-REFRESH-6: a re-deposit (new row id, new scopes) lands while a refresh with a dead
/// token is in flight; the retry uses the new row and its write-back keeps the new
/// row's fields.
async fn redeposit_during_refresh_write_back_targets_reread_row(store: Arc<dyn Store>) {
    let (fx, front) = Fx::with_front(store, false).await;
    fx.deposit(Some(("at-old", fx.now() - 1)), Some("rt-dead"), "mcp:read")
        .await;
    let svc = Arc::new(fx.service());
    let hold = front.hold_next().await;
    let task = spawn_access(&svc, &fx.slot, false);
    front.arrived().await;
    let fresh_rt = fx.server.mint_refresh_token();
    let redeposit = fx.deposit(None, Some(&fresh_rt), "mcp:write").await;
    drop(hold);
    let t = task.await.unwrap().unwrap();
    let reqs = fx.server.requests("/token");
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].body["refresh_token"], fresh_rt);
    assert_eq!(reqs[1].body["scope"], "mcp:write");
    let row = fx.row().await.unwrap();
    assert_eq!(row.id, redeposit.id);
    assert_eq!(row.generation, 1);
    assert_eq!(row.scopes.as_deref(), Some("mcp:write"));
    assert_eq!(fx.open(&row, "access_token"), tok(&t));
}

/// Test 5 (R-REFRESH-14): an eviction during an in-flight refresh keeps its result out of
/// the cache; the caller still gets the token and the next call goes to the store.
async fn eviction_during_refresh_leaves_cache_empty(store: Arc<dyn Store>) {
    let (fx, front) = Fx::with_front(store, false).await;
    fx.deposit_expired().await;
    let svc = Arc::new(fx.service());
    let hold = front.hold_next().await;
    let task = spawn_access(&svc, &fx.slot, false);
    front.arrived().await;
    svc.evict(&fx.slot);
    drop(hold);
    let t = task.await.unwrap().unwrap();
    assert!(
        !svc.is_cached(&fx.slot),
        "the evicted refresh did not fill the cache"
    );
    let before = svc.stats();
    let next = svc.access_token(&fx.slot, false).await.unwrap();
    let after = svc.stats();
    assert_eq!(tok(&next), tok(&t), "the persisted token");
    assert_eq!(after.cache_hits, before.cache_hits, "not from the cache");
    assert_eq!(after.store_hits, before.store_hits + 1, "from the store");
    assert_eq!(fx.grants(), 1);
    // evict_server drops every slot of the server.
    assert!(svc.is_cached(&fx.slot));
    svc.evict_server(&fx.slot.tenant, &fx.slot.server);
    assert!(!svc.is_cached(&fx.slot));
}

/// Test 6 (R-STORE-9): the credential is deleted while its refresh is in flight; the
/// write-back matches nothing and nothing is resurrected.
async fn delete_during_refresh_resurrects_nothing(store: Arc<dyn Store>) {
    let (fx, front) = Fx::with_front(store, false).await;
    fx.deposit_expired().await;
    let svc = Arc::new(fx.service());
    let hold = front.hold_next().await;
    let task = spawn_access(&svc, &fx.slot, false);
    front.arrived().await;
    assert!(fx.store.delete_credential(&fx.slot).await.unwrap());
    svc.evict(&fx.slot);
    drop(hold);
    let t = task.await.unwrap().unwrap();
    assert!(!t.token.is_empty(), "the caller still gets its token");
    assert!(fx.row().await.is_none(), "no row resurrected");
    assert!(!svc.is_cached(&fx.slot));
    assert_eq!(svc.stats().write_backs_lost, 1);
    assert_eq!(
        svc.access_token(&fx.slot, false).await.unwrap_err(),
        TokenError::NotConnected
    );
}

/// Test 7 (R-STORE-5/6): no key is terminal; a wrong key is reauth and the row stays.
async fn key_missing_and_wrong_key(store: Arc<dyn Store>) {
    let fx = Fx::new(store).await;
    fx.deposit_expired().await;
    let before = fx.row().await.unwrap();

    let no_key = fx.service_with(Arc::new(Keyring::new(StaticKeys(None))));
    let err = no_key.access_token(&fx.slot, false).await.unwrap_err();
    assert_eq!(err, TokenError::EncryptionKeyMissing);
    assert_eq!(err.remedy(), Remedy::Reconfigure);
    assert_eq!(no_key.stats().encryption_key_missing, 1);

    let wrong = fx.service_with(keyring());
    let err = wrong.access_token(&fx.slot, false).await.unwrap_err();
    assert_eq!(err, TokenError::ReauthRequired(ReauthReason::Undecryptable));
    assert_eq!(err.remedy(), Remedy::Reconsent);

    // A still-valid persisted access token under the wrong key: the same answer.
    fx.deposit(Some(("at-valid", fx.now() + 3600)), None, "mcp:read")
        .await;
    let valid_row = fx.row().await.unwrap();
    let err = wrong.access_token(&fx.slot, false).await.unwrap_err();
    assert_eq!(err, TokenError::ReauthRequired(ReauthReason::Undecryptable));
    assert_eq!(fx.row().await.unwrap(), valid_row, "row untouched");
    assert_eq!(fx.grants(), 0, "no grant was attempted");
    assert_ne!(before.id, valid_row.id);
}

/// Test 8 (R-REFRESH-12): no credential, or expired without a refresh token.
async fn not_connected(store: Arc<dyn Store>) {
    let fx = Fx::new(store).await;
    let svc = fx.service();
    let err = svc.access_token(&fx.slot, false).await.unwrap_err();
    assert_eq!(err, TokenError::NotConnected);
    assert_eq!(err.remedy(), Remedy::Reconsent);
    fx.deposit(Some(("at-expired", fx.now() - 1)), None, "mcp:read")
        .await;
    assert_eq!(
        svc.access_token(&fx.slot, false).await.unwrap_err(),
        TokenError::NotConnected
    );
    assert_eq!(
        svc.access_token(&fx.slot, true).await.unwrap_err(),
        TokenError::NotConnected
    );
    assert_eq!(fx.grants(), 0);
    assert_eq!(svc.stats().not_connected, 3);
}

/// R-REFRESH-16: forced refreshes bypass the cache but queue on the slot lock; a forced
/// caller that waited behind another's refresh reuses that fresh token.
async fn forced_refresh_waiter_reuses_the_fresh_token(store: Arc<dyn Store>) {
    let (fx, front) = Fx::with_front(store, false).await;
    fx.deposit_expired().await;
    let svc = Arc::new(fx.service());
    let first = svc.access_token(&fx.slot, false).await.unwrap();
    // Both callers saw `first` rejected upstream and force a refresh at once.
    let hold = front.hold_next().await;
    let spawn = || {
        let (svc, slot) = (svc.clone(), fx.slot.clone());
        tokio::spawn(async move { svc.access_token(&slot, true).await })
    };
    let one = spawn();
    front.arrived().await;
    let two = spawn();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(hold);
    let one = one.await.unwrap().unwrap();
    let two = two.await.unwrap().unwrap();
    assert_ne!(
        tok(&one),
        tok(&first),
        "forced: the cached token was bypassed"
    );
    assert_eq!(tok(&one), tok(&two), "the waiter reused the fresh token");
    assert_eq!(fx.grants(), 2, "one grant for both forced callers");
    // A later forced call (its view is the current token) refreshes again.
    let three = svc.access_token(&fx.slot, true).await.unwrap();
    assert_ne!(tok(&three), tok(&two));
    assert_eq!(fx.grants(), 3);
}

/// Test 9: trace-level logs of refreshes, rotation recovery, failures and eviction
/// contain no access token, refresh token or client secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_hold_no_secret() {
    let cap = crate::capture();
    let (store, _dir) = crate::sqlite().await;
    let (fx, front) = Fx::with_front(store, true).await;
    let (_, rt0) = fx.deposit_expired().await;
    let mut secrets = vec![rt0, CLIENT_SECRET.to_owned(), "at-deposited".to_owned()];

    let a = fx.service();
    let b = Arc::new(fx.service());
    let hold = front.hold_next().await;
    let task = spawn_access(&b, &fx.slot, true);
    front.arrived().await;
    secrets.push(tok(&a.access_token(&fx.slot, false).await.unwrap()));
    fx.clock.advance(Duration::from_secs(3600));
    drop(hold);
    secrets.push(tok(&task.await.unwrap().unwrap()));
    secrets.push(tok(&b.access_token(&fx.slot, true).await.unwrap()));
    let row = fx.row().await.unwrap();
    secrets.push(fx.open(&row, "refresh_token"));
    b.evict_all();
    let _ = fx
        .service_with(keyring())
        .access_token(&fx.slot, false)
        .await;
    for r in fx.server.requests("/token") {
        secrets.push(r.body["refresh_token"].clone());
    }

    let logs = cap.text();
    assert!(
        logs.contains("token.refresh"),
        "the capture works: {}",
        logs.len()
    );
    for s in &secrets {
        assert!(!s.is_empty());
        assert!(
            !logs.contains(s.as_str()),
            "a secret appeared in the trace logs"
        );
    }
    // Errors and Debug output carry no secret either.
    let t = b.access_token(&fx.slot, false).await.unwrap();
    assert!(!format!("{t:?}").contains(t.token.expose()));
    assert!(!format!("{b:?}").contains(t.token.expose()));
}

/// An authorization server slower than the callers' timeout and the refresh deadline:
/// the callers get the typed "still in flight" answer after one timeout (one token
/// request for all of them); once the grant has timed out in the background the
/// callers queued behind it get its failure at once, and a caller arriving afterwards
/// tries again and succeeds once the AS is back.
async fn queued_callers_share_an_authorization_server_failure(store: Arc<dyn Store>) {
    let fx = Fx::new(store).await;
    fx.deposit_expired().await;
    let timeout = Duration::from_millis(600);
    let svc = Arc::new(TokenService::new(
        fx.store.clone(),
        fx.keyring.clone(),
        Egress::new(EgressConfig {
            loopback: LoopbackPolicy::AllowInsecureLoopback,
            request_timeout: timeout,
            ..EgressConfig::default()
        })
        .unwrap(),
        fx.clock.clone(),
        TokenServiceOptions {
            refresh_deadline: Duration::from_millis(1500),
            ..TokenServiceOptions::default()
        },
    ));
    fx.server
        .set_token_fault(latchkey_testkit::TokenFault::Slow(Duration::from_secs(5)));
    let started = std::time::Instant::now();
    let callers: Vec<_> = (0..4)
        .map(|_| spawn_access(&svc, &fx.slot, false))
        .collect();
    for c in callers {
        match c.await.unwrap() {
            Err(e @ TokenError::RefreshPending) => assert_eq!(e.remedy(), Remedy::Retry),
            other => panic!("expected a refresh still in flight, got {other:?}"),
        }
    }
    let waited = started.elapsed();
    assert!(
        waited < timeout * 2 + Duration::from_millis(400),
        "the callers waited one timeout, not four: {waited:?}"
    );
    // Queued behind the grant until it times out at the refresh deadline: they share
    // its failure.
    let queued: Vec<_> = (0..3)
        .map(|_| spawn_access(&svc, &fx.slot, false))
        .collect();
    // One more caller queued well before the grant's deadline (1.5 s from the start)
    // and whose own wait (0.6 s) ends well after it: it gets the failure when the grant
    // gives up. Timed from the start, not from the callers above, so a loaded machine
    // does not move it across either edge.
    tokio::time::sleep_until(tokio::time::Instant::from_std(
        started + Duration::from_millis(1150),
    ))
    .await;
    let late = spawn_access(&svc, &fx.slot, false);
    for c in queued {
        match c.await.unwrap() {
            Err(TokenError::RefreshPending) => {}
            other => panic!("expected a refresh still in flight, got {other:?}"),
        }
    }
    match late.await.unwrap() {
        Err(e @ TokenError::Upstream { .. }) => assert_eq!(e.remedy(), Remedy::Retry),
        other => panic!("expected the grant's failure, got {other:?}"),
    }
    assert_eq!(
        fx.server.token_requests(),
        1,
        "one attempt for the whole queue"
    );
    fx.server
        .set_token_fault(latchkey_testkit::TokenFault::None);
    let t = svc.access_token(&fx.slot, false).await.unwrap();
    assert!(!tok(&t).is_empty());
    assert_eq!(fx.grants(), 2, "the stored refresh token still worked");
}

/// R-REFRESH-1 with tokens that live no longer than the skew: a 30 s token is served
/// (from memory, and by a cold instance from the store) until half its lifetime is
/// left, instead of never, which made every call a grant.
async fn short_lived_tokens_are_served_for_half_their_lifetime(store: Arc<dyn Store>) {
    let fx = Fx::with_as(
        store,
        AsConfig {
            access_ttl: 30,
            ..AsConfig::default()
        },
    )
    .await;
    fx.deposit_expired().await;
    let svc = fx.service();
    let a = svc.access_token(&fx.slot, false).await.unwrap();
    assert_eq!(fx.grants(), 1);
    fx.clock.advance(Duration::from_secs(14));
    let b = svc.access_token(&fx.slot, false).await.unwrap();
    assert_eq!(tok(&a), tok(&b), "served from memory");
    let cold = fx.service();
    let c = cold.access_token(&fx.slot, false).await.unwrap();
    assert_eq!(
        tok(&a),
        tok(&c),
        "a cold instance reuses the persisted token"
    );
    assert_eq!(fx.grants(), 1);
    fx.clock.advance(Duration::from_secs(1));
    let d = svc.access_token(&fx.slot, false).await.unwrap();
    assert_ne!(tok(&a), tok(&d), "refreshed with half the lifetime left");
    assert_eq!(fx.grants(), 2);
}

/// How long the scripted AS stalls after granting in
/// [`a_stalled_grant_is_awaited_and_loses_no_consent`]: 20 s, or
/// `LATCHKEY_STALL_SECS` (the long run uses 60).
fn stall() -> Duration {
    let secs = std::env::var("LATCHKEY_STALL_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    Duration::from_secs(secs)
}

/// Issue 16, item 3: an authorization server that receives the refresh, rotates the
/// token and answers only after a long stall (with reuse detection). Two instances
/// with the lease: the first callers get the typed "still in flight" answer after the
/// caller timeout, the grant is awaited in the background and its rotated token
/// written back; the other instance waits on the lease instead of sending the old
/// token; later callers get the new token. One grant, no reuse, no consent lost.
async fn a_stalled_grant_is_awaited_and_loses_no_consent(store: Arc<dyn Store>) {
    let fx = Fx::new(store).await;
    let (_, rt0) = fx.deposit_expired().await;
    let stall = stall();
    let caller_timeout = Duration::from_secs(2);
    let instance = |name: &str| {
        Arc::new(TokenService::new(
            fx.store.clone(),
            fx.keyring.clone(),
            Egress::new(EgressConfig {
                loopback: LoopbackPolicy::AllowInsecureLoopback,
                request_timeout: caller_timeout,
                ..EgressConfig::default()
            })
            .unwrap(),
            fx.clock.clone(),
            TokenServiceOptions {
                lease: Some(LeaseOptions::new(name)),
                ..TokenServiceOptions::default()
            },
        ))
    };
    let (a, b) = (instance("a"), instance("b"));
    fx.server
        .set_token_fault_for(latchkey_testkit::TokenFault::SlowAnswer(stall), 1);
    let started = std::time::Instant::now();
    let first: Vec<_> = (0..3).map(|_| spawn_access(&a, &fx.slot, false)).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let peer: Vec<_> = (0..3).map(|_| spawn_access(&b, &fx.slot, false)).collect();
    for c in first.into_iter().chain(peer) {
        assert_eq!(c.await.unwrap().unwrap_err(), TokenError::RefreshPending);
    }
    assert!(
        started.elapsed() < caller_timeout * 2,
        "the callers were answered after their timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(a.stats().refresh_pending, 3);
    // Callers arriving during the stall, on both instances: the same answer.
    assert_eq!(
        a.access_token(&fx.slot, false).await.unwrap_err(),
        TokenError::RefreshPending
    );
    assert_eq!(
        b.access_token(&fx.slot, false).await.unwrap_err(),
        TokenError::RefreshPending
    );
    // After the stall the rotated token is written back; everyone gets the new token.
    tokio::time::sleep(stall.saturating_sub(started.elapsed()) + Duration::from_secs(1)).await;
    let from_a = a.access_token(&fx.slot, false).await.unwrap();
    let from_b = b.access_token(&fx.slot, false).await.unwrap();
    assert_eq!(tok(&from_a), tok(&from_b));
    assert_eq!(fx.grants(), 1, "one refresh grant in total");
    assert_eq!(fx.server.reuse_detections(), 0);
    let row = fx.row().await.unwrap();
    let rt1 = fx.open(&row, "refresh_token");
    assert_ne!(rt1, rt0, "the rotated refresh token was written back");
    assert_eq!(fx.open(&row, "access_token"), tok(&from_a));
    // No consent lost: the next expiry refreshes with the rotated token.
    fx.clock.advance(Duration::from_secs(3600));
    let next = b.access_token(&fx.slot, false).await.unwrap();
    assert_ne!(tok(&next), tok(&from_a));
    let reqs = fx.server.requests("/token");
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].body["refresh_token"], rt1);
    assert_eq!(fx.server.reuse_detections(), 0);
}

/// Issue 16, item 6: a credential minted with the client credentials grant has no
/// refresh token; at expiry the token service mints a new one with the same grant and
/// the client stored in the row (exactly one grant per expiry), while a credential from
/// a user's consent without a refresh token still needs consent.
async fn client_credentials_are_renewed_with_their_grant(store: Arc<dyn Store>) {
    let fx = Fx::with_as(
        store,
        AsConfig {
            access_ttl: 30,
            ..AsConfig::default()
        },
    )
    .await;
    // A user's consent without a refresh token: expired means reconnect, no grant.
    fx.deposit(Some(("at-consent", fx.now() - 1)), None, "mcp:read")
        .await;
    let svc = fx.service();
    assert_eq!(
        svc.access_token(&fx.slot, false).await.unwrap_err(),
        TokenError::NotConnected
    );
    assert_eq!(fx.grants(), 0);

    let minted = CredentialRow {
        grant_type: Some("client_credentials".into()),
        ..fx.deposit(Some(("at-minted", fx.now() - 1)), None, "mcp:read")
            .await
    };
    fx.store.upsert_credential(&minted).await.unwrap();
    svc.evict(&fx.slot);
    let a = svc.access_token(&fx.slot, false).await.unwrap();
    assert_eq!(fx.server.grants_served_for("client_credentials"), 1);
    assert_eq!(fx.grants(), 1);
    let req = &fx.server.requests("/token")[0];
    assert_eq!(req.body["grant_type"], "client_credentials");
    assert_eq!(req.body["resource"], fx.server.mcp_url());
    assert!(!req.body.contains_key("refresh_token"));
    assert_eq!(
        latchkey_testkit::basic_credentials(req).unwrap(),
        ("client-1".to_owned(), CLIENT_SECRET.to_owned())
    );
    let row = fx.row().await.unwrap();
    assert_eq!(row.id, minted.id);
    assert_eq!(fx.open(&row, "access_token"), tok(&a));
    assert!(row.refresh_token.is_none());
    assert_eq!(row.grant_type.as_deref(), Some("client_credentials"));
    // Served until half its 30 s lifetime is left, then minted again, once.
    let b = svc.access_token(&fx.slot, false).await.unwrap();
    assert_eq!(tok(&a), tok(&b));
    fx.clock.advance(Duration::from_secs(16));
    let callers: Vec<_> = {
        let svc = Arc::new(svc);
        (0..10)
            .map(|_| spawn_access(&svc, &fx.slot, false))
            .collect()
    };
    let mut tokens = std::collections::HashSet::new();
    for c in callers {
        tokens.insert(tok(&c.await.unwrap().unwrap()));
    }
    assert_eq!(tokens.len(), 1);
    assert!(!tokens.contains(&tok(&a)));
    assert_eq!(fx.server.grants_served_for("client_credentials"), 2);
    assert_eq!(fx.grants(), 2);
}
