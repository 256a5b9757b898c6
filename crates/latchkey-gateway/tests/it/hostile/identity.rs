//! Hostile cases: see mod.rs.
