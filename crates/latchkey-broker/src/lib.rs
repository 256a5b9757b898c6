//! Latchkey's broker services: the pieces that combine the OAuth client library with the
//! vault. The first is the [`token_service`]: per-slot access tokens from memory, from
//! the store, or from a refresh grant, with single-flight, eviction epochs and recovery
//! from a peer's refresh-token rotation (R-REFRESH-1..17).
//!
//! Invariants: no token, refresh token or client secret is ever logged or put into an
//! error; the store is only written through compare-and-swap write-backs that never
//! insert; time is read only through the injected clock.
#![forbid(unsafe_code)]

pub mod token_service;
