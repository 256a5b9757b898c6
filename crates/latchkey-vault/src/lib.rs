//! Latchkey's vault: the keyring every stored secret is sealed with, the credential
//! store (SQLite and PostgreSQL behind one trait) and key rotation.
#![forbid(unsafe_code)]

pub mod headers;
pub mod keyring;

pub use keyring::{Aad, AadVersion, Binding, KeySet, KeySource, Keyring, KeyringError, MasterKey};
pub mod rotate;
pub mod sealed;
pub mod store;

pub use store::{
    ApiKeyRow, CredentialRow, FlowRow, HeaderValuesRow, Notice, Notifications, PgStore, ServerRow,
    Slot, SqliteStore, Store, StoreError, WriteBack,
};
