//! Latchkey's domain vocabulary: secrets that never print, the error classes every
//! layer maps into, and time as a parameter.
//!
//! Invariant: this crate performs no I/O and never reads the wall clock itself
//! except through [`time::SystemClock`], which callers inject.
#![forbid(unsafe_code)]

pub mod error;
pub mod secret;
pub mod time;

pub use error::{ErrorClass, Remedy};
pub use secret::Secret;
pub use time::{Clock, SystemClock, UnixTime};
