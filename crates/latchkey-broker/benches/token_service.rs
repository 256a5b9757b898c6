//! Criterion benchmarks of the token service (issue 8): a cached lookup on one core, and
//! 10,000 concurrent callers on a slot whose access token expired (one refresh grant
//! against the scripted authorization server over loopback HTTP, every caller served).
//! Run with `cargo bench -p latchkey-broker --bench token_service`; figures in
//! BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // bench code

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use latchkey_broker::token_service::{TokenService, TokenServiceOptions};
use latchkey_core::time::ManualClock;
use latchkey_core::{Clock, Secret, UnixTime};
use latchkey_egress::{Egress, EgressConfig, LoopbackPolicy};
use latchkey_testkit::{AsConfig, ScriptedServer};
use latchkey_vault::keyring::StaticKeys;
use latchkey_vault::store::{ServerRow, new_id};
use latchkey_vault::{CredentialRow, KeySet, Keyring, Slot, SqliteStore, Store};

const NOW: u64 = 1_900_000_000;
const WAITERS: usize = 10_000;

struct Fixture {
    server: ScriptedServer,
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    clock: Arc<ManualClock>,
    dir: std::path::PathBuf,
}

impl Fixture {
    async fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("lk-bench-ts-{}", new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("db")).await.unwrap());
        let server = ScriptedServer::start(AsConfig::default()).await.unwrap();
        store
            .create_server(
                &ServerRow::new("srv", "t", "srv", server.mcp_url()),
                NOW as i64,
            )
            .await
            .unwrap();
        Self {
            server,
            store,
            keyring: Arc::new(Keyring::new(StaticKeys(Some(KeySet::generate().unwrap())))),
            clock: Arc::new(ManualClock::at(UnixTime::from_secs(NOW))),
            dir,
        }
    }

    fn service(&self) -> TokenService {
        TokenService::new(
            self.store.clone(),
            self.keyring.clone(),
            Egress::new(EgressConfig {
                loopback: LoopbackPolicy::AllowInsecureLoopback,
                ..EgressConfig::default()
            })
            .unwrap(),
            self.clock.clone(),
            TokenServiceOptions::default(),
        )
    }

    /// Deposits into `slot`: an access token valid until `access_until`, and a live
    /// refresh token.
    async fn deposit(&self, slot: &Slot, access_until: i64) {
        let id = new_id();
        let mut bound = CredentialRow::new(
            id.clone(),
            slot.clone(),
            format!("{}/token", self.server.base),
            0,
        );
        bound.issuer = Some(self.server.base.clone());
        bound.resource = Some(self.server.mcp_url());
        let seal = |col: &'static str, v: &str| {
            self.keyring.seal(&Secret::new(v), bound.aad(col)).unwrap()
        };
        let now = i64::try_from(self.clock.now().as_secs()).unwrap();
        let row = CredentialRow {
            id: id.clone(),
            slot: slot.clone(),
            issuer: Some(self.server.base.clone()),
            resource: Some(self.server.mcp_url()),
            token_endpoint: format!("{}/token", self.server.base),
            revocation_endpoint: None,
            client_id: Some("client-1".into()),
            client_secret: None,
            auth_method: Some("none".into()),
            scopes: Some("mcp".into()),
            access_token: Some(seal("access_token", "at-deposited")),
            access_expires_at: Some(access_until),
            refresh_token: Some(seal("refresh_token", &self.server.mint_refresh_token())),
            generation: 0,
            initiated_by: None,
            created_at: now,
            updated_at: now,
            grant_type: None,
            needs_consent: None,
        };
        self.store.upsert_credential(&row).await.unwrap();
    }
}

fn slot(subject: &str) -> Slot {
    Slot {
        tenant: "t".into(),
        server: "srv".into(),
        subject: Some(subject.into()),
    }
}

fn cached(c: &mut Criterion) {
    // One core: a current-thread runtime, the lookup awaited in place.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fx = rt.block_on(Fixture::new());
    let svc = fx.service();
    let s = slot("alice");
    rt.block_on(fx.deposit(&s, (NOW + 3600) as i64));
    rt.block_on(svc.access_token(&s, false)).unwrap(); // now cached
    let mut g = c.benchmark_group("token_service");
    // Lookups awaited back to back inside one task, as a request handler makes them:
    // the time per lookup is the time of the loop over the number of lookups.
    g.bench_function("cached_lookup", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    black_box(svc.access_token(black_box(&s), false).await.unwrap());
                }
                start.elapsed()
            })
        })
    });
    g.finish();
    assert_eq!(
        fx.server.requests("/token").len(),
        0,
        "no grant while measuring"
    );
    let _ = std::fs::remove_dir_all(&fx.dir);
}

fn single_flight(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let fx = rt.block_on(Fixture::new());
    let svc = Arc::new(fx.service());
    let mut g = c.benchmark_group("token_service");
    g.sample_size(10);
    let mut round = 0u64;
    g.bench_function("expired_slot_10000_concurrent_callers", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                let s = slot(&format!("user-{round}"));
                rt.block_on(fx.deposit(&s, NOW as i64 - 10));
                let grants_before = fx.server.requests("/token").len();
                let started = Instant::now();
                rt.block_on(async {
                    let mut set = tokio::task::JoinSet::new();
                    for _ in 0..WAITERS {
                        let (svc, s) = (svc.clone(), s.clone());
                        set.spawn(async move { svc.access_token(&s, false).await.is_ok() });
                    }
                    while let Some(ok) = set.join_next().await {
                        assert!(ok.unwrap(), "every caller is served");
                    }
                });
                total += started.elapsed();
                assert_eq!(
                    fx.server.requests("/token").len(),
                    grants_before + 1,
                    "one refresh grant for {WAITERS} callers"
                );
            }
            total
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&fx.dir);
}

criterion_group!(benches, cached, single_flight);
criterion_main!(benches);
