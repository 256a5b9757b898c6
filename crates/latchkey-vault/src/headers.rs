//! Sealing and opening a slot's static-header values: one JSON object name → value,
//! sealed as one envelope bound to the row id, the slot (tenant, server, subject) and
//! the server URL the values were set for, so a row edited, moved to another slot or
//! server, or kept across a URL change does not open.

use std::collections::BTreeMap;

use latchkey_core::Secret;
use zeroize::Zeroizing;

use crate::keyring::{Keyring, KeyringError};
use crate::store::{HeaderValuesRow, Slot, values_aad};

/// Seals `values` for the row `row_id` (chosen before the row is written, e.g.
/// [`crate::store::new_id`]) of `slot`, set for the server URL `url`: the envelope for
/// [`HeaderValuesRow::values`].
pub fn seal_values(
    keyring: &Keyring,
    row_id: &str,
    slot: &Slot,
    url: &str,
    values: &BTreeMap<String, Secret>,
) -> Result<Vec<u8>, KeyringError> {
    let plain: BTreeMap<&str, &str> = values
        .iter()
        .map(|(name, value)| (name.as_str(), value.expose()))
        .collect();
    // Room for the worst case (every character escaped as `\u00XX`), so the buffer
    // holding the plaintext never reallocates and leaves a copy behind.
    let room = 2 + values
        .iter()
        .map(|(n, v)| 6 * (n.len() + v.expose().len()) + 6)
        .sum::<usize>();
    let mut json = Zeroizing::new(Vec::with_capacity(room));
    // Writing string pairs into memory does not fail; the error is mapped, not assumed.
    serde_json::to_writer(&mut *json, &plain)
        .map_err(|e| KeyringError::InvalidKeyConfig(format!("cannot encode header values: {e}")))?;
    keyring.encrypt(&json, values_aad(row_id, slot, url))
}

/// Opens a row's values. A row whose binding changed (another slot, server or URL
/// than it was sealed for) or that no configured key opens is
/// [`KeyringError::Undecryptable`] (and logged as suspected tampering, ids only).
pub fn open_values(
    keyring: &Keyring,
    row: &HeaderValuesRow,
) -> Result<BTreeMap<String, Secret>, KeyringError> {
    let plain = keyring.decrypt(&row.values, row.aad())?;
    serde_json::from_slice(&plain).map_err(|_| KeyringError::Undecryptable)
}
