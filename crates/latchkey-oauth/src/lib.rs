//! OAuth 2.1 for MCP, client side.
//!
//! Modules are named after the documents they implement: [`challenge`] (RFC 6750 /
//! RFC 9728 `WWW-Authenticate`), [`prm`] (RFC 9728), [`as_metadata`] (RFC 8414 and
//! OpenID Connect Discovery), [`discovery`] (both, in the MCP order, with a cache),
//! [`scope`] (MCP scope selection and step-up), [`registration`] (pre-registered,
//! Client ID Metadata Documents, RFC 7591), [`pkce`] (RFC 7636), [`authorize`]
//! (the authorization request and RFC 9207 callback checks), [`client_auth`]
//! (RFC 6749 §2.3, RFC 7523 `private_key_jwt`), [`grants`] (authorization code,
//! refresh, client credentials, RFC 8693 token exchange, RFC 7523 jwt-bearer),
//! [`dpop`] (RFC 9449) and [`revocation`] (RFC 7009).
//!
//! Invariants: no storage happens here; every request leaves through
//! `latchkey_egress` (no redirect is ever followed); protocol identifiers that are
//! compared as strings (`resource`, `issuer`, `iss`) are kept as the strings received.
#![forbid(unsafe_code)]

pub mod as_metadata;
pub mod authorize;
pub mod challenge;
pub mod client_auth;
pub mod discovery;
pub mod dpop;
pub mod error;
pub mod grants;
mod json;
pub mod pkce;
pub mod prm;
pub mod probe;
pub mod registration;
pub mod revocation;
pub mod scope;
pub mod session;
mod urls;

pub use error::OAuthError;
