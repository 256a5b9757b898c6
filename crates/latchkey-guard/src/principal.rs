//! Who is calling: the authenticated principal every handler receives (A25, R-API-11).
//!
//! Tenant and subject are opaque non-empty strings; identity-provider adapters validate
//! their own formats before building them.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

/// Why a tenant or subject id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("identifier must be a non-empty string")]
pub struct EmptyId;

macro_rules! opaque_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps `value`; refuses the empty string.
            pub fn new(value: impl Into<String>) -> Result<Self, EmptyId> {
                let value = value.into();
                if value.is_empty() {
                    Err(EmptyId)
                } else {
                    Ok(Self(value))
                }
            }

            /// The id as received.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = EmptyId;

            fn try_from(value: String) -> Result<Self, EmptyId> {
                Self::new(value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = EmptyId;

            fn try_from(value: &str) -> Result<Self, EmptyId> {
                Self::new(value)
            }
        }
    };
}

opaque_id!(
    /// The tenant (account, workspace) a principal acts in. Opaque, non-empty.
    TenantId
);
opaque_id!(
    /// The acting user within a tenant. Opaque, non-empty.
    SubjectId
);

/// A principal's role inside its tenant (R-API-9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// An ordinary member: manages its own slots only.
    Member,
    /// A tenant administrator: may manage shared slots and other users' slots.
    Admin,
}

impl Role {
    /// The stored and displayed name: `admin` or `member`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
}

/// How the principal was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthSource {
    /// A JWT verified locally (JWKS or shared secret).
    Jwt,
    /// An opaque token verified by RFC 7662 introspection.
    Introspection,
    /// A Latchkey API key on the `Token` scheme.
    ApiKey,
    /// Local single-user mode: no credential was required.
    Local,
    /// A browser session started by signing in through the OpenID provider.
    Session,
}

/// The authenticated caller. Handlers take identity from here only, never from a body
/// or query (R-API-11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// The tenant the caller acts in.
    pub tenant: TenantId,
    /// The caller.
    pub subject: SubjectId,
    /// The caller's role in `tenant`.
    pub role: Role,
    /// Granted scopes, in the order received, without duplicates.
    pub scopes: Vec<String>,
    /// How the caller was authenticated.
    pub source: AuthSource,
    /// The ids of the only servers the caller may use: set for an API key restricted
    /// to named servers (issue 19); `None` for every other principal (every server of
    /// the tenant its role allows). Shared, so cloning a principal copies no list.
    #[serde(serialize_with = "serialize_servers")]
    pub servers: Option<Arc<[String]>>,
}

fn serialize_servers<S: serde::Serializer>(
    servers: &Option<Arc<[String]>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&servers.as_deref(), s)
}

impl Principal {
    /// A member principal with no scopes.
    pub fn new(tenant: TenantId, subject: SubjectId, source: AuthSource) -> Self {
        Self {
            tenant,
            subject,
            role: Role::Member,
            scopes: Vec::new(),
            source,
            servers: None,
        }
    }

    /// Restricts the principal to the servers with these ids.
    pub fn with_servers<I, S>(mut self, ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.servers = Some(ids.into_iter().map(Into::into).collect());
        self
    }

    /// Whether the principal may use the server with id `server_id` at all (its
    /// tenant's servers are checked apart): false only outside a key's server list.
    pub fn may_use_server(&self, server_id: &str) -> bool {
        self.servers
            .as_deref()
            .is_none_or(|ids| ids.iter().any(|id| id == server_id))
    }

    /// Sets the role.
    pub fn with_role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    /// Sets the scopes (duplicates and empty strings dropped, order kept).
    pub fn with_scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut out: Vec<String> = Vec::new();
        for s in scopes {
            let s = s.into();
            if !s.is_empty() && !out.contains(&s) {
                out.push(s);
            }
        }
        self.scopes = out;
        self
    }

    /// Whether the principal is a tenant administrator.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether `scope` was granted.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// The scopes of `required` that were not granted, in `required`'s order.
    pub fn missing_scopes<'a>(&self, required: &'a [String]) -> Vec<&'a str> {
        required
            .iter()
            .filter(|r| !self.has_scope(r))
            .map(String::as_str)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_refuse_the_empty_string() {
        assert_eq!(TenantId::new(""), Err(EmptyId));
        assert_eq!(SubjectId::try_from("u-1").unwrap().as_str(), "u-1");
    }

    #[test]
    fn scopes_are_deduplicated_and_checked() {
        let p = Principal::new(
            TenantId::new("t").unwrap(),
            SubjectId::new("s").unwrap(),
            AuthSource::Jwt,
        )
        .with_scopes(["mcp", "", "read", "mcp"]);
        assert_eq!(p.scopes, vec!["mcp", "read"]);
        assert!(p.has_scope("read"));
        let required = vec!["mcp".to_owned(), "write".to_owned()];
        assert_eq!(p.missing_scopes(&required), vec!["write"]);
        assert!(!p.is_admin());
        assert!(p.may_use_server("any"), "unrestricted");
        let k = p.with_servers(["s1", "s2"]);
        assert!(k.may_use_server("s2") && !k.may_use_server("s3"));
    }
}
