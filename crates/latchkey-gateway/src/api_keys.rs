//! `/v1/api-keys`: Latchkey API keys for the `Token` scheme (R-RS-2), and the adapter
//! that lets the guard find them in the store.
//!
//! A key acts as the principal that minted it: same tenant, subject and role. The
//! plaintext is returned once, by the create call; the store keeps its SHA-256 only
//! and no response, log line or audit record ever carries a key or a hash. Members see
//! and delete their own keys; tenant admins, every key of their tenant. Another
//! tenant's key is a 404, like anything else of another tenant (R-API-11).

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
use latchkey_vault::store::{API_KEY_TOUCH_SECS, ApiKeyRow, AuditEvent, new_ordered_id};
use latchkey_vault::{Store, StoreError};
use serde::Serialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::ApiError;
use crate::fields::{Body, Fields};

/// Longest key name accepted.
const NAME_MAX: usize = 100;

/// The guard's view of the store's API keys ([`ApiKeyStore`] over [`Store`]): finds a
/// key by hash, builds the principal it acts as and records its use (at most once a
/// minute per key, best effort).
#[derive(Debug)]
pub struct StoreApiKeys {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    scopes: Vec<String>,
    /// When each key was last touched by this process, Unix seconds: spares the
    /// database a write per request.
    touched: Mutex<HashMap<String, i64>>,
}

/// Forget touch times beyond this many keys (old entries are pruned then).
const TOUCHED_MAX: usize = 10_000;

impl StoreApiKeys {
    /// An adapter over `store`. Principals from keys are granted `scopes`: the scopes
    /// the guard requires of every request, which the minting caller therefore held.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, scopes: Vec<String>) -> Self {
        Self {
            store,
            clock,
            scopes,
            touched: Mutex::new(HashMap::new()),
        }
    }

    fn now(&self) -> i64 {
        i64::try_from(self.clock.now().as_secs()).unwrap_or(i64::MAX)
    }

    /// Records the key's use unless this process did so within the last minute; the
    /// store's own condition covers other instances. A failure is logged, not fatal.
    async fn touch(&self, id: &str) {
        let now = self.now();
        {
            let mut t = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            if t.get(id)
                .is_some_and(|last| now.saturating_sub(*last) < API_KEY_TOUCH_SECS)
            {
                return;
            }
            if t.len() >= TOUCHED_MAX {
                t.retain(|_, last| now.saturating_sub(*last) < API_KEY_TOUCH_SECS);
            }
            t.insert(id.to_owned(), now);
        }
        if let Err(e) = self.store.touch_api_key(id, now).await {
            tracing::warn!(event = "api_key.touch_failed", key_id = id, error = %e);
        }
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Admin => "admin",
        Role::Member => "member",
    }
}

/// The principal a stored key acts as; `None` for a row that names no valid one.
fn principal_of(row: &ApiKeyRow, scopes: &[String]) -> Option<Principal> {
    let role = match row.role.as_str() {
        "admin" => Role::Admin,
        "member" => Role::Member,
        _ => return None,
    };
    let tenant = TenantId::new(row.tenant.clone()).ok()?;
    let subject = SubjectId::new(row.subject.clone()).ok()?;
    Some(
        Principal::new(tenant, subject, AuthSource::ApiKey)
            .with_role(role)
            .with_scopes(scopes.iter().cloned()),
    )
}

#[async_trait]
impl ApiKeyStore for StoreApiKeys {
    async fn lookup(&self, hash: &[u8; 32]) -> Result<Option<Principal>, ApiKeyStoreError> {
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
        let Some(p) = principal_of(&row, &self.scopes) else {
            tracing::warn!(event = "api_key.unusable_row", key_id = %row.id);
            return Ok(None);
        };
        self.touch(&row.id).await;
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
    created_at: i64,
    last_used_at: Option<i64>,
}

impl From<&ApiKeyRow> for ApiKeyView {
    fn from(r: &ApiKeyRow) -> Self {
        Self {
            id: r.id.clone(),
            name: r.name.clone(),
            subject: r.subject.clone(),
            role: r.role.clone(),
            created_at: r.created_at,
            last_used_at: r.last_used_at,
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

/// `POST /v1/api-keys` `{"name"}`: a new key acting as the caller, shown this once.
/// A key cannot mint another key (a leaked key must not be able to outlive its
/// deletion).
pub async fn create(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Body(body): Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut f = Fields::parse(&body, &["name"])?;
    let name = f.string("name", true, NAME_MAX);
    f.finish()?;
    let Some(name) = name else {
        return Err(ApiError::BadRequest(Vec::new()));
    };
    if p.source == AuthSource::ApiKey {
        return Err(ApiError::Forbidden);
    }
    let minted = mint_api_key();
    let row = ApiKeyRow {
        id: new_ordered_id(),
        tenant: p.tenant.as_str().to_owned(),
        subject: p.subject.as_str().to_owned(),
        role: role_name(p.role).to_owned(),
        name: name.trim().to_owned(),
        hash: *minted.hash.as_bytes(),
        created_at: s.now(),
        last_used_at: None,
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
            "created_at": row.created_at,
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
/// 404 otherwise. The key stops working at once (lookups are not cached).
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
    audit(&s, &p, "api_key.delete", &row).await;
    Ok(StatusCode::NO_CONTENT)
}
