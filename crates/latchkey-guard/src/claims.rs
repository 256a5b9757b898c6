//! Claims to principal: the checks and mappings shared by locally verified JWTs and
//! introspection answers (R-RS-4, R-RS-5). Pure functions; time is a parameter.

use std::time::Duration;

use latchkey_core::UnixTime;
use serde_json::{Map, Value};

use crate::error::InvalidReason;
use crate::principal::{AuthSource, Principal, Role, SubjectId, TenantId};

/// Which claims name the subject, the tenant and the admin role.
///
/// There is no fallback tenant: a token without a usable tenant claim is invalid
/// ([`InvalidReason::Tenant`]). A single-tenant deployment says so with
/// [`ClaimMapping::fixed_tenant`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMapping {
    /// Claims tried in order for the subject (default `["sub"]`).
    pub subject_claims: Vec<String>,
    /// Claims tried in order for the tenant (default `["tenant"]`); one of them must be
    /// a non-empty string or an integer. Ignored when `fixed_tenant` is set.
    pub tenant_claims: Vec<String>,
    /// Every token's tenant, whatever its claims say (default `None`: the tenant comes
    /// from `tenant_claims` and is required). Only for an explicitly single-tenant
    /// deployment.
    pub fixed_tenant: Option<String>,
    /// Claim holding roles: a string (space separated) or an array of strings
    /// (default `"roles"`).
    pub role_claim: String,
    /// The value in `role_claim` that makes the principal a tenant admin
    /// (default `"latchkey:admin"`).
    pub admin_value: String,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        Self {
            subject_claims: vec!["sub".into()],
            tenant_claims: vec!["tenant".into()],
            fixed_tenant: None,
            role_claim: "roles".into(),
            admin_value: "latchkey:admin".into(),
        }
    }
}

/// `iss` must be a string exactly equal to `expected` (no URL normalisation: a trailing
/// slash is a different issuer).
pub fn check_issuer(claims: &Map<String, Value>, expected: &str) -> Result<(), InvalidReason> {
    match claims.get("iss") {
        Some(Value::String(iss)) if iss == expected => Ok(()),
        _ => Err(InvalidReason::Issuer),
    }
}

/// `aud` must be `expected` or an array containing it. With `required == false` an
/// absent `aud` passes (introspection answers need not carry one).
pub fn check_audience(
    claims: &Map<String, Value>,
    expected: &str,
    required: bool,
) -> Result<(), InvalidReason> {
    match claims.get("aud") {
        None | Some(Value::Null) if !required => Ok(()),
        Some(Value::String(a)) if a == expected => Ok(()),
        Some(Value::Array(a)) if a.iter().any(|v| v.as_str() == Some(expected)) => Ok(()),
        _ => Err(InvalidReason::Audience),
    }
}

/// `exp` (required when `exp_required`) must be after `now - leeway`; `nbf`, when
/// present, must be at most `now + leeway`. Both must be numbers.
pub fn check_times(
    claims: &Map<String, Value>,
    now: UnixTime,
    leeway: Duration,
    exp_required: bool,
) -> Result<(), InvalidReason> {
    let now = now.as_secs() as f64;
    let leeway = leeway.as_secs() as f64;
    match claims.get("exp") {
        None | Some(Value::Null) if !exp_required => {}
        Some(Value::Number(n)) => match n.as_f64() {
            Some(exp) if now < exp + leeway => {}
            _ => return Err(InvalidReason::Expired),
        },
        _ => return Err(InvalidReason::Expired),
    }
    match claims.get("nbf") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(nbf) if nbf <= now + leeway => Ok(()),
            _ => Err(InvalidReason::NotYetValid),
        },
        _ => Err(InvalidReason::NotYetValid),
    }
}

/// Scopes from `scope` (space separated) or, failing that, `scp` (array or string).
pub fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    if let Some(Value::String(s)) = claims.get("scope") {
        return s.split_whitespace().map(str::to_owned).collect();
    }
    match claims.get("scp") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// A non-empty string or an integer, as text.
fn id_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

fn first_id(claims: &Map<String, Value>, names: &[String]) -> Option<String> {
    names
        .iter()
        .find_map(|name| claims.get(name).and_then(id_value))
}

fn has_role(claims: &Map<String, Value>, claim: &str, value: &str) -> bool {
    if value.is_empty() {
        return false;
    }
    match claims.get(claim) {
        Some(Value::String(s)) => s.split_whitespace().any(|r| r == value),
        Some(Value::Array(a)) => a.iter().any(|r| r.as_str() == Some(value)),
        _ => false,
    }
}

/// The principal named by already-verified claims (R-RS-5).
pub fn principal_from_claims(
    claims: &Map<String, Value>,
    mapping: &ClaimMapping,
    source: AuthSource,
) -> Result<Principal, InvalidReason> {
    let subject = first_id(claims, &mapping.subject_claims)
        .and_then(|s| SubjectId::new(s).ok())
        .ok_or(InvalidReason::Subject)?;
    let tenant = match &mapping.fixed_tenant {
        Some(fixed) => Some(fixed.clone()),
        None => first_id(claims, &mapping.tenant_claims),
    }
    .and_then(|t| TenantId::new(t).ok())
    .ok_or(InvalidReason::Tenant)?;
    // Admin only when the role claim names the admin value; anything else (absent,
    // another value, another type) is a member.
    let role = if has_role(claims, &mapping.role_claim, &mapping.admin_value) {
        Role::Admin
    } else {
        Role::Member
    };
    Ok(Principal::new(tenant, subject, source)
        .with_role(role)
        .with_scopes(scopes(claims)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn issuer_is_an_exact_string() {
        let c = map(json!({"iss": "https://idp.example/"}));
        assert!(check_issuer(&c, "https://idp.example/").is_ok());
        assert_eq!(
            check_issuer(&c, "https://idp.example"),
            Err(InvalidReason::Issuer)
        );
        assert!(check_issuer(&map(json!({"iss": 1})), "1").is_err());
    }

    #[test]
    fn audience_string_or_array() {
        let r = "https://lk.example/mcp";
        assert!(check_audience(&map(json!({"aud": r})), r, true).is_ok());
        assert!(check_audience(&map(json!({"aud": ["x", r]})), r, true).is_ok());
        assert!(check_audience(&map(json!({"aud": ["x"]})), r, true).is_err());
        assert!(check_audience(&map(json!({})), r, true).is_err());
        assert!(check_audience(&map(json!({})), r, false).is_ok());
    }

    #[test]
    fn times_with_leeway() {
        let now = UnixTime::from_secs(1000);
        let l = Duration::from_secs(30);
        assert!(check_times(&map(json!({"exp": 1001})), now, l, true).is_ok());
        assert!(check_times(&map(json!({"exp": 980})), now, l, true).is_ok());
        assert_eq!(
            check_times(&map(json!({"exp": 970})), now, l, true),
            Err(InvalidReason::Expired)
        );
        assert_eq!(
            check_times(&map(json!({})), now, l, true),
            Err(InvalidReason::Expired)
        );
        assert!(check_times(&map(json!({})), now, l, false).is_ok());
        assert_eq!(
            check_times(&map(json!({"exp": "2000"})), now, l, true),
            Err(InvalidReason::Expired)
        );
        assert!(check_times(&map(json!({"exp": 2000, "nbf": 1020})), now, l, true).is_ok());
        assert_eq!(
            check_times(&map(json!({"exp": 2000, "nbf": 1031})), now, l, true),
            Err(InvalidReason::NotYetValid)
        );
    }

    #[test]
    fn scopes_from_scope_or_scp() {
        assert_eq!(scopes(&map(json!({"scope": " a  b "}))), vec!["a", "b"]);
        assert_eq!(scopes(&map(json!({"scp": ["a", 1, "c"]}))), vec!["a", "c"]);
        assert!(scopes(&map(json!({}))).is_empty());
    }

    #[test]
    fn principal_mapping() {
        let m = ClaimMapping {
            subject_claims: vec!["sub".into(), "user_id".into()],
            tenant_claims: vec!["urn:x:account_id".into(), "account_id".into()],
            ..ClaimMapping::default()
        };
        let p = principal_from_claims(
            &map(json!({"user_id": 42, "account_id": "acc", "roles": ["latchkey:admin"]})),
            &m,
            AuthSource::Jwt,
        )
        .unwrap();
        assert_eq!(p.subject.as_str(), "42");
        assert_eq!(p.tenant.as_str(), "acc");
        assert!(p.is_admin());
        assert_eq!(
            principal_from_claims(&map(json!({"sub": "u"})), &m, AuthSource::Jwt),
            Err(InvalidReason::Tenant)
        );
        assert_eq!(
            principal_from_claims(&map(json!({"sub": ""})), &m, AuthSource::Jwt),
            Err(InvalidReason::Subject)
        );
        let d = principal_from_claims(
            &map(json!({"sub": "u", "tenant": "t", "roles": "member"})),
            &ClaimMapping::default(),
            AuthSource::Introspection,
        )
        .unwrap();
        assert_eq!(d.tenant.as_str(), "t");
        assert!(!d.is_admin());
    }

    /// Every combination of tenant claim (present, absent, empty, wrong type) and role
    /// claim (admin, absent, another value, wrong type): no tenant is never a
    /// principal, and only the admin value makes an admin.
    #[test]
    fn tenant_is_required_and_role_defaults_to_member() {
        let tenants: [(Option<Value>, Option<&str>); 6] = [
            (Some(json!("acme")), Some("acme")),
            (Some(json!(7)), Some("7")),
            (None, None),
            (Some(json!("")), None),
            (Some(json!(["acme"])), None),
            (Some(json!(null)), None),
        ];
        let roles: [(Option<Value>, bool); 6] = [
            (Some(json!(["latchkey:admin"])), true),
            (Some(json!("reader latchkey:admin")), true),
            (None, false),
            (Some(json!(["member", "admin"])), false),
            (Some(json!({"latchkey:admin": true})), false),
            (Some(json!(true)), false),
        ];
        let m = ClaimMapping::default();
        for (tenant, want_tenant) in &tenants {
            for (role, want_admin) in &roles {
                let mut c = map(json!({"sub": "u"}));
                if let Some(t) = tenant {
                    c.insert("tenant".into(), t.clone());
                }
                if let Some(r) = role {
                    c.insert("roles".into(), r.clone());
                }
                for source in [AuthSource::Jwt, AuthSource::Introspection] {
                    let got = principal_from_claims(&c, &m, source);
                    match want_tenant {
                        None => assert_eq!(got, Err(InvalidReason::Tenant), "{c:?}"),
                        Some(t) => {
                            let p = got.unwrap();
                            assert_eq!(p.tenant.as_str(), *t);
                            assert_eq!(p.is_admin(), *want_admin, "{c:?}");
                        }
                    }
                }
            }
        }
    }

    /// A fixed tenant is every token's, whatever (or whether) the claim says; roles
    /// are read as usual.
    #[test]
    fn a_fixed_tenant_ignores_the_claims() {
        let m = ClaimMapping {
            fixed_tenant: Some("solo".into()),
            ..ClaimMapping::default()
        };
        for c in [
            json!({"sub": "u"}),
            json!({"sub": "u", "tenant": "other"}),
            json!({"sub": "u", "tenant": ""}),
        ] {
            let p = principal_from_claims(&map(c), &m, AuthSource::Jwt).unwrap();
            assert_eq!(p.tenant.as_str(), "solo");
            assert!(!p.is_admin());
        }
        let p = principal_from_claims(
            &map(json!({"sub": "u", "roles": ["latchkey:admin"]})),
            &m,
            AuthSource::Jwt,
        )
        .unwrap();
        assert!(p.is_admin());
        let bad = ClaimMapping {
            fixed_tenant: Some(String::new()),
            ..ClaimMapping::default()
        };
        assert_eq!(
            principal_from_claims(
                &map(json!({"sub": "u", "tenant": "t"})),
                &bad,
                AuthSource::Jwt
            ),
            Err(InvalidReason::Tenant)
        );
    }
}
