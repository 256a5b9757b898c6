//! The domain service: the rules of managed flows, server changes (with their purge)
//! and deposits, as functions of the shared state, a principal and validated input.
//! No HTTP here: the handlers read requests and write answers around these, and the CLI
//! and tests can call them without a listener (kanidm's split). Errors are the API's
//! typed [`ApiError`], which becomes HTTP only in [`crate::error`].

pub mod credentials;
pub mod flows;
pub mod headers;
pub mod servers;

use latchkey_guard::Principal;
use latchkey_vault::store::{AuditEvent, ServerRow, Slot};

use crate::error::ApiError;
use crate::state::AppState;

/// The caller's slot of `server` for a call: their own, or the shared one (no admin
/// needed to use it).
pub fn call_slot(p: &Principal, server: &ServerRow) -> Slot {
    Slot {
        tenant: p.tenant.as_str().to_owned(),
        server: server.id.clone(),
        subject: (server.token_scope != "shared").then(|| p.subject.as_str().to_owned()),
    }
}

/// The slot `p` acts on for `server`: their own, or for a shared server its one slot
/// (tenant admins only, else 403; R-API-9, R-API-11).
pub fn own_slot(p: &Principal, server: &ServerRow) -> Result<Slot, ApiError> {
    acting_slot(p, server, None)
}

/// The slot `p` may act on for `server`: their own, or (tenant admins only) the shared
/// slot or another user's, `user` (R-API-9).
pub fn acting_slot(
    p: &Principal,
    server: &ServerRow,
    user: Option<String>,
) -> Result<Slot, ApiError> {
    let subject = if server.token_scope == "shared" {
        if !p.is_admin() {
            return Err(ApiError::Forbidden);
        }
        None
    } else {
        match user {
            Some(u) if u != p.subject.as_str() => {
                if !p.is_admin() {
                    return Err(ApiError::Forbidden);
                }
                Some(u)
            }
            _ => Some(p.subject.as_str().to_owned()),
        }
    };
    Ok(Slot {
        tenant: p.tenant.as_str().to_owned(),
        server: server.id.clone(),
        subject,
    })
}

/// 403 unless `p` is a tenant admin.
pub fn require_admin(p: &Principal) -> Result<(), ApiError> {
    if p.is_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// Records `action` by `p` on `slot` in the audit log (ids and names only); a failure
/// to record is logged, never the operation's failure.
pub async fn audit(s: &AppState, p: &Principal, action: &str, slot: &Slot) {
    audit_event(s, p, action, &slot.server, slot.subject.clone(), None).await;
}

/// [`audit`] with the parts given one by one.
pub async fn audit_event(
    s: &AppState,
    p: &Principal,
    action: &str,
    server: &str,
    subject: Option<String>,
    detail: Option<String>,
) {
    let e = AuditEvent {
        tenant: p.tenant.as_str().to_owned(),
        actor: p.subject.as_str().to_owned(),
        action: action.into(),
        server: Some(server.into()),
        subject,
        detail,
        at: s.now(),
    };
    if let Err(err) = s.store.audit(&e).await {
        tracing::warn!(event = "audit.failed", action, error = %err);
    }
}
