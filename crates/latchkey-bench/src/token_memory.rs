//! `latchkey-bench token-memory` (issue 8): resident memory of the token service with
//! `--slots` (100,000) access tokens in its cache, in this process and nothing else.
//!
//! The token service is built as `latchkey serve` builds it (SQLite store, keyring,
//! guarded egress, the system clock, the refresh lease), over a store whose SQLite page
//! cache is SQLite's default 2 MiB per connection instead of serve's 64 MiB, so the
//! database's own cache does not blur the figure. The slots (`--servers` servers, per-user
//! slots of one tenant) are deposited the way `POST /v1/credentials` does it: a row with
//! the access and refresh tokens sealed to it, `upsert_credential`, then `evict`. Every
//! row is then read twice straight from the store (so SQLite's caches and the allocator
//! are warm), resident memory is read, every slot is asked for its token through
//! `TokenService::access_token` (the call `/mcp/{server}` makes; each answers from the
//! persisted row and fills the cache), memory is read again, and a second round of
//! `access_token` (all cache hits) checks that it stays put.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use latchkey_broker::token_service::{LeaseOptions, TokenService, TokenServiceOptions};
use latchkey_core::{Secret, SystemClock};
use latchkey_egress::{Egress, EgressConfig, LoopbackPolicy};
use latchkey_vault::keyring::StaticKeys;
use latchkey_vault::store::{ServerRow, new_id};
use latchkey_vault::{CredentialRow, KeySet, Keyring, Slot, SqliteStore, Store};

/// Arguments of `latchkey-bench token-memory`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TokenMemoryArgs {
    /// Slots with a cached access token.
    #[arg(long, default_value_t = 100_000)]
    slots: usize,
    /// Servers the slots are spread over (per-user slots of one tenant).
    #[arg(long, default_value_t = 100)]
    servers: usize,
    /// Length of each access token in bytes (a signed JWT of a typical size).
    #[arg(long, default_value_t = 800)]
    token_bytes: usize,
    /// Concurrent tasks for the deposits and the lookups.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

/// The scopes of every slot.
const SCOPES: &str = "mcp:read mcp:write offline_access";
const TENANT: &str = "acme";

/// What every task shares.
struct Ctx {
    args: TokenMemoryArgs,
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    tokens: TokenService,
    servers: Vec<String>,
    now: i64,
}

impl Ctx {
    fn slot(&self, i: usize) -> Slot {
        Slot {
            tenant: TENANT.into(),
            server: self
                .servers
                .get(i % self.servers.len().max(1))
                .cloned()
                .unwrap_or_default(),
            subject: Some(format!("user-{i:06}")),
        }
    }

    /// The deposit of `POST /v1/credentials` for slot `i`: an access token valid for an
    /// hour and a refresh token, sealed to a new row, then the slot's cache evicted.
    async fn deposit(&self, i: usize) -> anyhow::Result<()> {
        let slot = self.slot(i);
        let id = new_id();
        let base = format!("https://as-{}.example.com", i % self.servers.len().max(1));
        let mut bound = CredentialRow::new(id.clone(), slot.clone(), format!("{base}/token"), 0);
        bound.issuer = Some(base.clone());
        bound.resource = Some(format!(
            "https://mcp-{}.example.com/mcp",
            i % self.servers.len().max(1)
        ));
        let seal =
            |column: &'static str, v: String| self.keyring.seal(&Secret::new(v), bound.aad(column));
        let row = CredentialRow {
            id: id.clone(),
            slot: slot.clone(),
            issuer: Some(base.clone()),
            resource: Some(format!(
                "https://mcp-{}.example.com/mcp",
                i % self.servers.len().max(1)
            )),
            token_endpoint: format!("{base}/token"),
            revocation_endpoint: None,
            client_id: Some("latchkey".into()),
            client_secret: None,
            auth_method: Some("none".into()),
            scopes: Some(SCOPES.into()),
            access_token: Some(seal(
                "access_token",
                token(i as u64, self.args.token_bytes),
            )?),
            access_expires_at: Some(self.now + 3600),
            refresh_token: Some(seal("refresh_token", token(!(i as u64), 64))?),
            generation: 0,
            initiated_by: slot.subject.clone(),
            created_at: self.now,
            updated_at: self.now,
            grant_type: None,
            needs_consent: None,
        };
        self.store.upsert_credential(&row).await?;
        self.tokens.evict(&slot);
        Ok(())
    }

    /// The slot's token through the token service, checked without showing it.
    async fn lookup(&self, i: usize) -> anyhow::Result<()> {
        let t = self
            .tokens
            .access_token(&self.slot(i), false)
            .await
            .with_context(|| format!("access_token for slot {i}"))?;
        if t.token.len() != self.args.token_bytes {
            bail!("slot {i}: a token of {} bytes", t.token.len());
        }
        Ok(())
    }
}

/// A distinct token-like string of `len` bytes (base64url characters, dots where a JWT
/// has them), from a counter: reproducible, never printed.
fn token(seed: u64, len: usize) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut next = move || {
        // splitmix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    // A JWT of this size: a 36-byte header, the claims, a 342-byte RS256 signature.
    let dots = if len >= 400 {
        [36, len - 343]
    } else {
        [len, len]
    };
    (0..len)
        .map(|i| {
            if dots.contains(&i) {
                '.'
            } else {
                char::from(ALPHABET[(next() % 64) as usize])
            }
        })
        .collect()
}

/// Runs `f` for every slot index on `concurrency` tasks.
async fn for_each_slot<F, Fut>(ctx: &Arc<Ctx>, f: F) -> anyhow::Result<Duration>
where
    F: Fn(Arc<Ctx>, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let started = Instant::now();
    let n = ctx.args.concurrency.max(1);
    let mut set = tokio::task::JoinSet::new();
    for w in 0..n {
        let (ctx, f) = (ctx.clone(), f.clone());
        set.spawn(async move {
            let mut i = w;
            while i < ctx.args.slots {
                f(ctx.clone(), i).await?;
                i += n;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(started.elapsed())
}

fn rss() -> anyhow::Result<u64> {
    crate::rss_kib(std::process::id()).context("cannot read VmRSS from /proc/self/status")
}

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A store on its own SQLite pool: serve's settings except the page cache (SQLite's
/// default) and `synchronous = NORMAL` (the deposits are not what is measured).
async fn open_store(path: &std::path::Path) -> anyhow::Result<SqliteStore> {
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .foreign_keys(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5))
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await?;
    Ok(SqliteStore::new(pool).await?)
}

pub(crate) async fn run(a: TokenMemoryArgs) -> anyhow::Result<()> {
    if a.slots == 0 || a.servers == 0 {
        bail!("--slots and --servers must be positive");
    }
    let dir = std::env::temp_dir().join(format!("latchkey-bench-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let r = measure(a, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    r
}

async fn measure(a: TokenMemoryArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    let rss_empty = rss()?;
    let store: Arc<dyn Store> = Arc::new(open_store(&dir.join("latchkey.db")).await?);
    let keyring = Arc::new(Keyring::new(StaticKeys(Some(KeySet::generate()?))));
    let egress = Egress::new(EgressConfig {
        loopback: LoopbackPolicy::AllowInsecureLoopback,
        ..EgressConfig::default()
    })?;
    let clock = Arc::new(SystemClock);
    let tokens = TokenService::new(
        store.clone(),
        keyring.clone(),
        egress,
        clock,
        TokenServiceOptions {
            lease: Some(LeaseOptions::new(new_id())),
            ..TokenServiceOptions::default()
        },
    );
    let now = i64::try_from(latchkey_core::Clock::now(&SystemClock).as_secs())?;
    let mut servers = Vec::with_capacity(a.servers);
    for s in 0..a.servers {
        let id = new_id();
        let mut row = ServerRow::new(
            id.clone(),
            TENANT,
            format!("server-{s}"),
            format!("https://mcp-{s}.example.com/mcp"),
        );
        row.auth_type = "oauth".into();
        store.create_server(&row, now).await?;
        servers.push(id);
    }
    let ctx = Arc::new(Ctx {
        args: a.clone(),
        store,
        keyring,
        tokens,
        servers,
        now,
    });

    let seeding = for_each_slot(&ctx, |c, i| async move { c.deposit(i).await }).await?;
    // Two reads of every row from the store alone: what the lookups below read again.
    for _ in 0..2 {
        for_each_slot(&ctx, |c, i| async move {
            c.store
                .get_credential(&c.slot(i))
                .await?
                .context("a deposited row is missing")?;
            Ok(())
        })
        .await?;
    }
    let rss_before = rss()?;
    let fill = for_each_slot(&ctx, |c, i| async move { c.lookup(i).await }).await?;
    let rss_filled = rss()?;
    let hits = for_each_slot(&ctx, |c, i| async move { c.lookup(i).await }).await?;
    let rss_after_hits = rss()?;

    let stats = ctx.tokens.stats();
    let n = a.slots as u64;
    if stats.store_hits != n || stats.cache_hits != n || stats.grants_started != 0 {
        bail!(
            "unexpected token service counters: {} store hits, {} cache hits, {} grants \
             (expected {n}, {n}, 0)",
            stats.store_hits,
            stats.cache_hits,
            stats.grants_started
        );
    }
    let size = |name: &str| {
        std::fs::metadata(dir.join(name))
            .map(|m| m.len() as f64 / 1e6)
            .unwrap_or(0.0)
    };
    let (db_mb, wal_mb) = (size("latchkey.db"), size("latchkey.db-wal"));
    let cached = rss_filled.saturating_sub(rss_before);
    let per_token = cached as f64 * 1024.0 / a.slots as f64;
    let payload = a.token_bytes + SCOPES.len();
    println!(
        "token service: {} slots ({} servers x {} users, one tenant), access tokens of {} bytes, \
         scopes {:?}",
        a.slots,
        a.servers,
        a.slots / a.servers,
        a.token_bytes,
        SCOPES
    );
    println!("| step | RSS MB | time |");
    println!("|---|---|---|");
    println!("| process start (runtime only) | {:.1} | |", mb(rss_empty));
    println!(
        "| {} deposits, then every row read twice from the store | {:.1} | deposits {:.1} s |",
        a.slots,
        mb(rss_before),
        seeding.as_secs_f64()
    );
    println!(
        "| `access_token` for every slot (persisted token, cache filled) | {:.1} | {:.2} s ({:.0} /s) |",
        mb(rss_filled),
        fill.as_secs_f64(),
        a.slots as f64 / fill.as_secs_f64()
    );
    println!(
        "| `access_token` for every slot again (cache hits) | {:.1} | {:.3} s ({:.0} /s) |",
        mb(rss_after_hits),
        hits.as_secs_f64(),
        a.slots as f64 / hits.as_secs_f64()
    );
    println!();
    println!(
        "| cached tokens | RSS added by the cache | bytes per cached token | of which token + scopes |"
    );
    println!("|---|---|---|---|");
    println!(
        "| {} | {:.1} MB | {per_token:.0} | {payload} |",
        a.slots,
        mb(cached)
    );
    println!(
        "token service: {} store hits, {} cache hits, 0 grants ({} tasks); database file \
         {db_mb:.0} MB, WAL {wal_mb:.0} MB; RSS change over the cache-hit round {:+.1} MB",
        stats.store_hits,
        stats.cache_hits,
        a.concurrency,
        (rss_after_hits as f64 - rss_filled as f64) / 1024.0
    );
    Ok(())
}
