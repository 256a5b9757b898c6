//! The sealed-value convention: which tables and columns hold keyring envelopes, and
//! what each value is bound to (its associated data). The store reads and writes these
//! rows; the rotation ([`crate::rotate`]) re-seals them; callers seal with the row
//! helpers (`CredentialRow::aad` and friends in [`crate::store`]), which build the same
//! binding as [`SealedTable::binding`] does from the columns.

use crate::keyring::{Aad, Binding};

/// A table whose columns hold keyring envelopes, with the AAD convention for them:
/// table name, column name, the row's key column as the row identity, and the row's
/// [`Binding`] (its [`SealedTable::binding_columns`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SealedTable {
    /// `credentials`: client secret, access token, refresh token; keyed by `id`.
    Credentials,
    /// `registered_clients`: client secret; keyed by `id`.
    RegisteredClients,
    /// `oauth_flows`: PKCE verifier; keyed by `state_hash`.
    OAuthFlows,
    /// `servers`: a pre-registered client secret; keyed by `id`.
    Servers,
    /// `header_values`: a slot's static-header values (one JSON object); keyed by `id`.
    HeaderValues,
}

impl SealedTable {
    /// Every sealed table, in the order a rotation visits them.
    pub const ALL: [SealedTable; 5] = [
        SealedTable::Credentials,
        SealedTable::RegisteredClients,
        SealedTable::OAuthFlows,
        SealedTable::Servers,
        SealedTable::HeaderValues,
    ];

    /// The SQL table name.
    pub fn name(self) -> &'static str {
        match self {
            SealedTable::Credentials => "credentials",
            SealedTable::RegisteredClients => "registered_clients",
            SealedTable::OAuthFlows => "oauth_flows",
            SealedTable::Servers => "servers",
            SealedTable::HeaderValues => "header_values",
        }
    }

    /// The primary-key column, whose value is the AAD row identity.
    pub fn key_column(self) -> &'static str {
        match self {
            SealedTable::Credentials
            | SealedTable::RegisteredClients
            | SealedTable::Servers
            | SealedTable::HeaderValues => "id",
            SealedTable::OAuthFlows => "state_hash",
        }
    }

    /// The columns holding envelopes.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            SealedTable::Credentials => &["client_secret", "access_token", "refresh_token"],
            SealedTable::RegisteredClients | SealedTable::Servers => &["client_secret"],
            SealedTable::OAuthFlows => &["verifier"],
            SealedTable::HeaderValues => &["sealed_values"],
        }
    }

    /// The columns a row's sealed values are bound to, in the order
    /// [`SealedTable::binding`] reads them:
    /// * credentials: tenant, server, slot subject, issuer, resource, token endpoint,
    ///   revocation endpoint;
    /// * registered clients: tenant, server, issuer;
    /// * flows: tenant, server, slot subject, issuer;
    /// * servers: tenant, the server itself (its id), issuer;
    /// * header values: tenant, server, slot subject, the URL they were set for (in
    ///   the binding's `resource` place: the resource the values are sent to).
    pub fn binding_columns(self) -> &'static [&'static str] {
        match self {
            SealedTable::Credentials => &[
                "tenant_id",
                "server_id",
                "subject",
                "issuer",
                "resource",
                "token_endpoint",
                "revocation_endpoint",
            ],
            SealedTable::RegisteredClients => &["tenant_id", "server_id", "issuer"],
            SealedTable::OAuthFlows => &["tenant_id", "server_id", "subject", "issuer"],
            SealedTable::Servers => &["tenant_id", "id", "issuer"],
            SealedTable::HeaderValues => &["tenant_id", "server_id", "subject", "url"],
        }
    }

    /// The [`Binding`] of a row from its [`SealedTable::binding_columns`] values.
    pub fn binding<'a>(self, v: &'a [Option<String>]) -> Binding<'a> {
        let at = |i: usize| v.get(i).and_then(|x| x.as_deref());
        match self {
            SealedTable::Credentials => Binding {
                tenant: at(0),
                server: at(1),
                subject: at(2),
                issuer: at(3),
                resource: at(4),
                token_endpoint: at(5),
                revocation_endpoint: at(6),
            },
            SealedTable::RegisteredClients | SealedTable::Servers => Binding {
                tenant: at(0),
                server: at(1),
                issuer: at(2),
                ..Binding::default()
            },
            SealedTable::OAuthFlows => Binding {
                tenant: at(0),
                server: at(1),
                subject: at(2),
                issuer: at(3),
                ..Binding::default()
            },
            SealedTable::HeaderValues => Binding {
                tenant: at(0),
                server: at(1),
                subject: at(2),
                resource: at(3),
                ..Binding::default()
            },
        }
    }

    /// The associated data for `column` of the row keyed `row`, bound to `binding`.
    pub fn aad<'a>(self, column: &'static str, row: &'a str, binding: Binding<'a>) -> Aad<'a> {
        Aad {
            table: self.name(),
            column,
            row,
            binding,
        }
    }
}

/// The sealed columns of one row, in [`SealedTable::columns`] order.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedRow {
    /// The row's key.
    pub key: String,
    /// Where the row sits in the store's scan order (opaque; the rowid on SQLite, so a
    /// scan and its updates walk the table's pages in order).
    pub position: String,
    /// One envelope (or NULL) per sealed column.
    pub values: Vec<Option<Vec<u8>>>,
    /// The row's [`SealedTable::binding_columns`] values.
    pub binding: Vec<Option<String>>,
}

impl SealedRow {
    /// The associated data of `column` in this row of `table`.
    pub fn aad(&self, table: SealedTable, column: &'static str) -> Aad<'_> {
        table.aad(column, &self.key, table.binding(&self.binding))
    }
}

impl std::fmt::Debug for SealedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedRow")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// A compare-and-swap replacement of a row's envelopes: applied only if every sealed
/// column still holds `old`.
#[derive(Clone)]
pub struct Rewrap {
    /// The row's key.
    pub key: String,
    /// Its [`SealedRow::position`].
    pub position: String,
    /// The envelopes as read.
    pub old: Vec<Option<Vec<u8>>>,
    /// The envelopes to write (unchanged columns repeat `old`).
    pub new: Vec<Option<Vec<u8>>>,
}

impl std::fmt::Debug for Rewrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewrap")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Where a rotation stands in one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The key id the rotation re-encrypts to.
    pub target_key: u8,
    /// The position of the last row handled.
    pub last_row: Option<String>,
    /// The table is finished.
    pub done: bool,
    /// Unix seconds.
    pub updated_at: i64,
}
