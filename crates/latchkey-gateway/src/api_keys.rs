//! `/v1/api-keys`: Latchkey API keys for the `Token` scheme (R-RS-2), and the adapter
//! that lets the guard find them in the store.
//!
//! A key acts as the principal that minted it (same tenant and subject) with never more
//! than its creator had: its role is at most the creator's role at creation, its
//! scopes at most the creator's scopes, and it expires (issue 15): by default after
//! `[api_keys] default_ttl` (30 days), at most `max_ttl` (90 days), and an admin key at
//! most `admin_max_ttl` (7 days) — a demoted or removed admin keeps
//! admin rights through a key they minted for at most that long, unless a tenant admin
//! deletes it sooner. An expired key is refused like an unknown one (401
//! `invalid_token`). The plaintext is returned once, by the create call; the store
//! keeps its SHA-256 only and no response, log line or audit record ever carries a key
//! or a hash. Members see and delete their own keys; tenant admins, every key of their
//! tenant. Another tenant's key is a 404, like anything else of another tenant
//! (R-API-11). Each key records its last use, at most once a minute.
//!
//! A key may be restricted to named servers (issue 19): its principal carries their
//! ids, and it then sees and uses only those ([`AppState::server`] applies the list
//! where servers are found; the others are not found). Its first characters (the
//! `prefix`) are kept to tell keys apart in listings; never more of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use latchkey_core::Clock;
use latchkey_guard::{
    ApiKeyHash, ApiKeyStore, ApiKeyStoreError, AuthSource, Principal, Role, SubjectId, TenantId,
    mint_api_key,
};
use latchkey_vault::store::{
    API_KEY_PREFIX_LEN, API_KEY_TOUCH_SECS, ApiKeyRow, AuditEvent, new_ordered_id,
};
use latchkey_vault::{Store, StoreError};
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::ApiKeyTtls;
use crate::error::ApiError;
use crate::fields::{Body, Fields};
use crate::key_cache::{ApiKeyCache, Cached, CachedKey};
use crate::state::AppState;

/// Longest key name accepted.
const NAME_MAX: usize = 100;

/// The shortest lifetime a key may be given, in seconds.
pub const MIN_TTL_SECS: u64 = 60;

/// The guard's view of the store's API keys ([`ApiKeyStore`] over [`Store`]): finds a
/// key by hash (through [`ApiKeyCache`]), builds the principal it acts as and records
/// its use (at most once a minute per key, best effort).
#[derive(Debug)]
pub struct StoreApiKeys {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    scopes: Vec<String>,
    cache: Arc<ApiKeyCache>,
    /// When each key was last touched by this process, Unix seconds: spares the
    /// database a write per request.
    touched: Mutex<HashMap<String, i64>>,
}

/// Forget touch times beyond this many keys (old entries are pruned then).
const TOUCHED_MAX: usize = 10_000;

impl StoreApiKeys {
    /// An adapter over `store`, remembering found keys in `cache` (shared with
    /// [`AppState`], which drops deleted keys from it). A key carries the scopes its
    /// creator held; one made before keys recorded them (migration 0008) is granted
    /// `scopes`: the scopes the guard requires of every request, which the minting
    /// caller therefore held.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        scopes: Vec<String>,
        cache: Arc<ApiKeyCache>,
    ) -> Self {
        Self {
            store,
            clock,
            scopes,
            cache,
            touched: Mutex::new(HashMap::new()),
        }
    }

    fn now(&self) -> i64 {
        i64::try_from(self.clock.now().as_secs()).unwrap_or(i64::MAX)
    }

    /// Whether the key's use should be recorded at `now` (not done by this process
    /// within the last minute); if so, notes it as done. Allocates only then.
    fn touch_due(&self, id: &str, now: i64) -> bool {
        let mut t = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        if t.get(id)
            .is_some_and(|last| now.saturating_sub(*last) < API_KEY_TOUCH_SECS)
        {
            return false;
        }
        if t.len() >= TOUCHED_MAX {
            t.retain(|_, last| now.saturating_sub(*last) < API_KEY_TOUCH_SECS);
        }
        t.insert(id.to_owned(), now);
        true
    }

    /// Records the key's use; the store's own condition covers other instances. A
    /// failure is logged, not fatal.
    async fn record_use(&self, id: &str, now: i64) {
        if let Err(e) = self.store.touch_api_key(id, now).await {
            tracing::warn!(event = "api_key.touch_failed", key_id = id, error = %e);
        }
    }
}

/// The principal a stored key acts as; `None` for a row that names no valid one.
/// `legacy_scopes` are those of a key that recorded none.
fn principal_of(row: &ApiKeyRow, legacy_scopes: &[String]) -> Option<Principal> {
    let role = match row.role.as_str() {
        "admin" => Role::Admin,
        "member" => Role::Member,
        _ => return None,
    };
    let tenant = TenantId::new(row.tenant.clone()).ok()?;
    let subject = SubjectId::new(row.subject.clone()).ok()?;
    let scopes = row.scopes.as_deref().unwrap_or(legacy_scopes);
    let p = Principal::new(tenant, subject, AuthSource::ApiKey)
        .with_role(role)
        .with_scopes(scopes.iter().cloned());
    Some(match &row.servers {
        Some(ids) => p.with_servers(ids.iter().cloned()),
        None => p,
    })
}

#[async_trait]
impl ApiKeyStore for StoreApiKeys {
    async fn lookup(&self, hash: &[u8; 32]) -> Result<Option<Principal>, ApiKeyStoreError> {
        let now = self.now();
        match self.cache.get(hash, now, |id| self.touch_due(id, now)) {
            Cached::Hit(p, touch) => {
                if let Some(id) = touch {
                    self.record_use(&id, now).await;
                }
                return Ok(Some(p));
            }
            Cached::Expired => {
                tracing::debug!(event = "api_key.expired");
                return Ok(None);
            }
            Cached::Miss => {}
        }
        let epoch = self.cache.epoch();
        // The database finds the row through the unique index on `hash`. That
        // comparison is not constant-time, but what its timing could leak is how much
        // of the SHA-256 of the presented key matches a stored hash: choosing inputs
        // that hit a wanted hash prefix needs preimages, so an attacker learns nothing
        // usable about a 256-bit random key. The row is still compared in constant time
        // here, so the decision itself never rests on a variable-time comparison (nor
        // on the database's collation or a driver's notion of equality).
        let row = self
            .store
            .api_key_by_hash(hash)
            .await
            .map_err(|e| ApiKeyStoreError(e.to_string()))?;
        let Some(row) = row else { return Ok(None) };
        if !ApiKeyHash::from_bytes(*hash).ct_eq(&row.hash) {
            return Ok(None);
        }
        if row.expires_at <= now {
            tracing::debug!(event = "api_key.expired", key_id = %row.id);
            return Ok(None);
        }
        let Some(p) = principal_of(&row, &self.scopes) else {
            tracing::warn!(event = "api_key.unusable_row", key_id = %row.id);
            return Ok(None);
        };
        self.cache.put(
            row.hash,
            CachedKey {
                id: row.id.clone(),
                principal: p.clone(),
                expires_at: row.expires_at,
                cached_at: now,
            },
            epoch,
        );
        if self.touch_due(&row.id, now) {
            self.record_use(&row.id, now).await;
        }
        Ok(Some(p))
    }
}

/// A key as listed: never the key, never its hash.
#[derive(Debug, Serialize)]
pub struct ApiKeyView {
    id: String,
    name: String,
    subject: String,
    role: String,
    /// The role its creator had when minting it.
    creator_role: Option<String>,
    /// `None`: a key from before scopes were recorded.
    scopes: Option<Vec<String>>,
    created_at: i64,
    expires_at: i64,
    last_used_at: Option<i64>,
    /// The key's first characters (`None`: a key from before they were kept).
    prefix: Option<String>,
    /// The ids of the only servers the key may use; `None`: every server its owner
    /// can use.
    servers: Option<Vec<String>>,
}

impl From<&ApiKeyRow> for ApiKeyView {
    fn from(r: &ApiKeyRow) -> Self {
        Self {
            id: r.id.clone(),
            name: r.name.clone(),
            subject: r.subject.clone(),
            role: r.role.clone(),
            creator_role: r.creator_role.clone(),
            scopes: r.scopes.clone(),
            created_at: r.created_at,
            expires_at: r.expires_at,
            last_used_at: r.last_used_at,
            prefix: r.prefix.clone(),
            servers: r.servers.clone(),
        }
    }
}

async fn audit(s: &AppState, p: &Principal, action: &str, key: &ApiKeyRow) {
    let e = AuditEvent {
        tenant: p.tenant.as_str().to_owned(),
        actor: p.subject.as_str().to_owned(),
        action: action.into(),
        server: None,
        subject: Some(key.subject.clone()),
        detail: Some(format!("api key {}", key.id)),
        at: s.now(),
    };
    if let Err(err) = s.store.audit(&e).await {
        tracing::warn!(event = "audit.failed", action, error = %err);
    }
}

/// What a create request asks for, checked against the caller's own rights.
struct Wanted {
    name: String,
    role: Role,
    scopes: Vec<String>,
    ttl: u64,
    /// The servers asked for, by id or name, as given (resolved by [`resolve_servers`]).
    servers: Option<Vec<String>>,
}

/// Most servers one key may name.
const SERVERS_MAX: usize = 100;

/// `servers` of a create body: a non-empty array of non-empty strings (server ids or
/// names), duplicates dropped. `None` when absent or invalid (reported).
fn read_servers(f: &mut Fields) -> Option<Vec<String>> {
    let raw = f.value("servers")?.clone();
    let Value::Array(items) = raw else {
        f.invalid("servers", "must be an array of server ids or names");
        return None;
    };
    if items.is_empty() || items.len() > SERVERS_MAX {
        f.invalid(
            "servers",
            format!("give 1 to {SERVERS_MAX} server ids or names (omit it for every server)"),
        );
        return None;
    }
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in &items {
        match item.as_str().map(str::trim) {
            Some(w) if !w.is_empty() => {
                if !out.iter().any(|o| o == w) {
                    out.push(w.to_owned());
                }
            }
            _ => {
                f.invalid("servers", "each entry must be a server id or name");
                return None;
            }
        }
    }
    Some(out)
}

/// The ids of the servers `wanted` names (each by id, or by name if exactly one server
/// of the caller's tenant has it), among those `p` can see; a 400 on `servers` naming
/// every one that matches none.
async fn resolve_servers(
    s: &AppState,
    p: &Principal,
    wanted: &[String],
) -> Result<Vec<String>, ApiError> {
    let rows = s.servers_of(p).await?;
    let mut ids: Vec<String> = Vec::with_capacity(wanted.len());
    let mut unknown: Vec<&str> = Vec::new();
    for w in wanted {
        let by_id = rows.iter().find(|r| r.id == *w);
        let by_name = || {
            let mut named = rows.iter().filter(|r| r.name.eq_ignore_ascii_case(w));
            match (named.next(), named.next()) {
                (Some(one), None) => Some(one),
                _ => None,
            }
        };
        match by_id.or_else(by_name) {
            Some(r) if !ids.contains(&r.id) => ids.push(r.id.clone()),
            Some(_) => {}
            None => unknown.push(w),
        }
    }
    if unknown.is_empty() {
        Ok(ids)
    } else {
        Err(ApiError::BadRequest(vec![crate::error::FieldError {
            field: "servers".into(),
            message: format!(
                "no server of yours has the id or name {}",
                unknown
                    .iter()
                    .map(|u| format!("{u:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }]))
    }
}

/// Reads `{"name", "expires_in"?, "role"?, "scopes"?, "servers"?}`: every problem reported at once,
/// with its field. A key never gets more than `p` has: a role above the caller's, a
/// scope the caller lacks, or a lifetime beyond the role's maximum is a 400.
fn wanted(body: &[u8], p: &Principal, ttls: &ApiKeyTtls) -> Result<Wanted, ApiError> {
    let mut f = Fields::parse(body, &["name", "expires_in", "role", "scopes", "servers"])?;
    let name = f.string("name", true, NAME_MAX);
    let servers = read_servers(&mut f);
    let expires_in = f.unsigned("expires_in");
    let role = match f.choice("role", &["admin", "member"]).as_deref() {
        None => p.role,
        Some("admin") if !p.is_admin() => {
            f.invalid("role", "cannot exceed your own role (member)");
            Role::Member
        }
        Some("admin") => Role::Admin,
        Some(_) => Role::Member,
    };
    let scopes = match f.string("scopes", false, 2048) {
        None => p.scopes.clone(),
        Some(list) => {
            let asked: Vec<String> = list.split_whitespace().map(str::to_owned).collect();
            let missing: Vec<&str> = asked
                .iter()
                .filter(|s| !p.scopes.contains(s))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                f.invalid(
                    "scopes",
                    format!("not among your own scopes: {}", missing.join(" ")),
                );
            }
            asked
        }
    };
    let admin = role == Role::Admin;
    let max = ttls.max_for(admin);
    let ttl = match expires_in {
        None => ttls.default_for(admin),
        Some(n) if n < MIN_TTL_SECS => {
            f.invalid("expires_in", format!("at least {MIN_TTL_SECS} seconds"));
            n
        }
        Some(n) if n > max => {
            let kind = if admin { "an admin" } else { "a member" };
            f.invalid(
                "expires_in",
                format!("at most {max} seconds for {kind} key"),
            );
            n
        }
        Some(n) => n,
    };
    f.finish()?;
    let name = name.ok_or_else(|| ApiError::BadRequest(Vec::new()))?;
    Ok(Wanted {
        name,
        role,
        scopes,
        ttl,
        servers,
    })
}

/// `POST /v1/api-keys` `{"name", "expires_in"?, "role"?, "scopes"?, "servers"?}`: a new
/// key acting as the caller, shown this once. `expires_in` is seconds (default and
/// maximum per [`ApiKeyTtls`]); `role` (`member` or `admin`) and `scopes` (space
/// separated) may only narrow the caller's own; `servers` (ids or names) restricts the
/// key to those servers (issue 19), which it alone then sees and uses. A key cannot mint another key (a leaked key must not
/// be able to outlive its deletion).
pub async fn create(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Body(body): Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let w = wanted(&body, &p, &s.api_key_ttls)?;
    if p.source == AuthSource::ApiKey {
        return Err(ApiError::Forbidden);
    }
    let servers = match &w.servers {
        Some(wanted) => Some(resolve_servers(&s, &p, wanted).await?),
        None => None,
    };
    let minted = mint_api_key();
    let prefix = minted
        .key
        .expose()
        .get(..API_KEY_PREFIX_LEN)
        .map(str::to_owned);
    let now = s.now();
    let row = ApiKeyRow {
        id: new_ordered_id(),
        tenant: p.tenant.as_str().to_owned(),
        subject: p.subject.as_str().to_owned(),
        role: w.role.as_str().to_owned(),
        name: w.name.trim().to_owned(),
        hash: *minted.hash.as_bytes(),
        created_at: now,
        last_used_at: None,
        expires_at: now.saturating_add(i64::try_from(w.ttl).unwrap_or(i64::MAX)),
        scopes: Some(w.scopes),
        creator_role: Some(p.role.as_str().to_owned()),
        servers,
        prefix,
    };
    match s.store.insert_api_key(&row).await {
        Ok(()) => {}
        // A duplicate hash of 256 random bits does not happen; a duplicate id neither.
        Err(StoreError::Conflict(_)) => return Err(ApiError::Unavailable),
        Err(e) => return Err(e.into()),
    }
    audit(&s, &p, "api_key.create", &row).await;
    metrics::counter!("latchkey_api_keys_created_total").increment(1);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": row.id,
            "name": row.name,
            "key": minted.key.expose(),
            "role": row.role,
            "scopes": row.scopes,
            "servers": row.servers,
            "prefix": row.prefix,
            "created_at": row.created_at,
            "expires_at": row.expires_at,
            "last_used_at": row.last_used_at,
        })),
    ))
}

/// The subject whose keys `p` may see and delete: their own, or (admins) anyone's in
/// the tenant.
fn owner_filter(p: &Principal) -> Option<&str> {
    if p.is_admin() {
        None
    } else {
        Some(p.subject.as_str())
    }
}

/// `GET /v1/api-keys`: the caller's keys (a tenant admin: the tenant's), oldest first.
pub async fn list(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
) -> Result<Json<Vec<ApiKeyView>>, ApiError> {
    let rows = s
        .store
        .list_api_keys(p.tenant.as_str(), owner_filter(&p))
        .await?;
    Ok(Json(rows.iter().map(ApiKeyView::from).collect()))
}

/// `DELETE /v1/api-keys/{id}`: the caller's own key, or (admins) any of the tenant;
/// 404 otherwise. The key stops working at once, on every instance: the deletion is
/// announced, and each drops the key from its [`ApiKeyCache`].
pub async fn delete(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let row = s
        .store
        .delete_api_key(p.tenant.as_str(), &id, owner_filter(&p))
        .await?
        .ok_or(ApiError::NotFound)?;
    s.announce(crate::cluster::Change::ApiKeyDeleted { id: row.id.clone() })
        .await;
    audit(&s, &p, "api_key.delete", &row).await;
    Ok(StatusCode::NO_CONTENT)
}
