//! The keyring: AES-256-GCM envelopes under keys derived with HKDF-SHA-256 from
//! configured master secrets (R-STORE-1..R-STORE-6).
//!
//! Envelope (R-STORE-3): `key_id (1) | iv (12) | tag (16) | ciphertext`. The associated
//! data binds every ciphertext to its table, column and row, and to the envelope header,
//! so a value copied into another row or column does not decrypt. Several keys may be
//! configured: the current one encrypts, every configured one decrypts.
//!
//! The master keys are read lazily, on first use, and the keyring fails closed: without
//! a key there is `EncryptionKeyMissing`, never plaintext (R-STORE-4). A failed load is
//! not cached, so a key supplied later is picked up.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hkdf::Hkdf;
use latchkey_core::{Remedy, Secret};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The HKDF `info` label (R-STORE-2). Changing it makes every stored value unreadable.
pub const HKDF_INFO: &[u8] = b"latchkey:mcp-oauth-credentials:v1";
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes an envelope adds to its plaintext.
pub const ENVELOPE_OVERHEAD: usize = 1 + IV_LEN + TAG_LEN;

/// Keyring failures, classified per R-STORE-6.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// No master key is configured: terminal until an operator supplies one (HTTP 503).
    #[error("encryption key missing")]
    EncryptionKeyMissing,
    /// The configured keys are unusable (wrong length, not hex, duplicate ids …).
    #[error("invalid encryption key configuration: {0}")]
    InvalidKeyConfig(String),
    /// A key is present but the value does not decrypt (tampered, moved to another row or
    /// column, or written under a key no longer configured): the user must consent again.
    /// The stored row is left as it is.
    #[error("stored value cannot be decrypted")]
    Undecryptable,
}

impl KeyringError {
    /// What fixes it.
    pub fn remedy(&self) -> Remedy {
        match self {
            KeyringError::EncryptionKeyMissing | KeyringError::InvalidKeyConfig(_) => {
                Remedy::Reconfigure
            }
            KeyringError::Undecryptable => Remedy::Reconsent,
        }
    }
}

/// A 32-byte master secret. Its `Debug` prints nothing.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

impl MasterKey {
    /// Exactly 64 hexadecimal characters (32 bytes); surrounding whitespace is ignored.
    pub fn from_hex(hex: &str) -> Result<Self, KeyringError> {
        let hex = hex.trim();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KeyringError::InvalidKeyConfig(format!(
                "a master key is 64 hexadecimal characters (32 bytes); got {} characters",
                hex.len()
            )));
        }
        let mut out = Zeroizing::new([0u8; 32]);
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(pair)
                .map_err(|_| KeyringError::InvalidKeyConfig("not hex".into()))?;
            out[i] = u8::from_str_radix(s, 16)
                .map_err(|_| KeyringError::InvalidKeyConfig("not hex".into()))?;
        }
        Ok(Self(out))
    }

    /// From raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyringError> {
        let mut out = Zeroizing::new([0u8; 32]);
        getrandom(out.as_mut_slice())?;
        Ok(Self(out))
    }

    fn to_hex(&self) -> Zeroizing<String> {
        use fmt::Write as _;
        let mut out = Zeroizing::new(String::with_capacity(64));
        for b in self.0.iter() {
            let _ = write!(out, "{b:02x}");
        }
        out
    }
}

/// The configured keys: the current one (for writing) and older ones (for reading).
#[derive(Debug, Clone)]
pub struct KeySet {
    current: u8,
    keys: Vec<(u8, MasterKey)>,
}

impl KeySet {
    /// A set whose current key is `current`. Ids are 1..=255 and unique.
    pub fn new(current: u8, keys: Vec<(u8, MasterKey)>) -> Result<Self, KeyringError> {
        if keys.iter().any(|(id, _)| *id == 0) {
            return Err(KeyringError::InvalidKeyConfig(
                "key id 0 is reserved".into(),
            ));
        }
        for (i, (id, _)) in keys.iter().enumerate() {
            if keys[..i].iter().any(|(other, _)| other == id) {
                return Err(KeyringError::InvalidKeyConfig(format!(
                    "key id {id} is configured twice"
                )));
            }
        }
        if !keys.iter().any(|(id, _)| *id == current) {
            return Err(KeyringError::InvalidKeyConfig(format!(
                "the current key id {current} is not configured"
            )));
        }
        Ok(Self { current, keys })
    }

    /// Parses `id:hex[,id:hex…]`; the first entry is the current key, the others are
    /// older keys kept for reading (e.g. `2:<hex>,1:<hex>` after a rotation to key 2).
    pub fn parse(spec: &str) -> Result<Self, KeyringError> {
        let mut keys = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, hex) = part.split_once(':').ok_or_else(|| {
                KeyringError::InvalidKeyConfig("expected id:hex entries separated by commas".into())
            })?;
            // The offending text is not repeated: it may be key material.
            let id: u8 = id.trim().parse().map_err(|_| {
                KeyringError::InvalidKeyConfig("a key id is not a number from 1 to 255".into())
            })?;
            keys.push((id, MasterKey::from_hex(hex)?));
        }
        let current = keys
            .first()
            .map(|(id, _)| *id)
            .ok_or(KeyringError::EncryptionKeyMissing)?;
        Self::new(current, keys)
    }

    /// The id new values are written under.
    pub fn current(&self) -> u8 {
        self.current
    }

    /// The configured key ids, current first.
    pub fn ids(&self) -> Vec<u8> {
        let mut ids: Vec<u8> = self.keys.iter().map(|(id, _)| *id).collect();
        ids.sort_by_key(|id| (*id != self.current, std::cmp::Reverse(*id)));
        ids
    }

    /// A single fresh key with id 1 (first start).
    pub fn generate() -> Result<Self, KeyringError> {
        Self::new(1, vec![(1, MasterKey::generate()?)])
    }

    /// This set with a fresh random key as the current one (id one above the highest),
    /// every existing key kept for reading.
    pub fn with_new_current_key(&self) -> Result<Self, KeyringError> {
        let next = self
            .keys
            .iter()
            .map(|(id, _)| *id)
            .max()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| {
                KeyringError::InvalidKeyConfig(
                    "key id 255 is in use; remove retired keys and start again from 1".into(),
                )
            })?;
        let mut keys = vec![(next, MasterKey::generate()?)];
        keys.extend(self.keys.iter().cloned());
        Self::new(next, keys)
    }

    /// The [`KeySet::parse`] form, current key first. Zeroized when dropped.
    pub fn to_spec(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::new());
        for id in self.ids() {
            if let Some((_, key)) = self.keys.iter().find(|(k, _)| *k == id) {
                if !out.is_empty() {
                    out.push(',');
                }
                out.push_str(&id.to_string());
                out.push(':');
                out.push_str(&key.to_hex());
            }
        }
        out
    }
}

/// Where the keys come from. Read when the keyring is first used.
pub trait KeySource: Send + Sync + fmt::Debug {
    /// The keys, or `None` when none are configured.
    fn load(&self) -> Result<Option<KeySet>, KeyringError>;
}

/// Keys held in memory (tests, or configuration already parsed).
#[derive(Debug, Clone)]
pub struct StaticKeys(pub Option<KeySet>);

impl KeySource for StaticKeys {
    fn load(&self) -> Result<Option<KeySet>, KeyringError> {
        Ok(self.0.clone())
    }
}

/// Keys in an environment variable, in the [`KeySet::parse`] format.
#[derive(Debug, Clone)]
pub struct EnvKeys(pub String);

impl KeySource for EnvKeys {
    fn load(&self) -> Result<Option<KeySet>, KeyringError> {
        match std::env::var(&self.0) {
            Ok(v) if !v.trim().is_empty() => KeySet::parse(&v).map(Some),
            _ => Ok(None),
        }
    }
}

/// Keys in a file, in the [`KeySet::parse`] format. A missing file means no key.
#[derive(Debug, Clone)]
pub struct FileKeys(pub std::path::PathBuf);

impl FileKeys {
    /// Replaces the file with `set`, atomically (a sibling temporary file renamed over
    /// it) and readable by the owner only.
    pub fn write(&self, set: &KeySet) -> std::io::Result<()> {
        use std::io::Write as _;
        let dir = self.0.parent().unwrap_or(std::path::Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = self.0.with_extension(format!("tmp{}", std::process::id()));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        let spec = set.to_spec();
        f.write_all(spec.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.0)
    }

    /// Creates the file with one fresh key when it does not exist. True if it did not.
    pub fn create_if_missing(&self) -> Result<bool, KeyringError> {
        if self.0.exists() {
            return Ok(false);
        }
        self.write(&KeySet::generate()?).map_err(|e| {
            KeyringError::InvalidKeyConfig(format!("cannot write {}: {e}", self.0.display()))
        })?;
        Ok(true)
    }
}

impl KeySource for FileKeys {
    fn load(&self) -> Result<Option<KeySet>, KeyringError> {
        match std::fs::read_to_string(&self.0) {
            Ok(v) => KeySet::parse(&Zeroizing::new(v)).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(KeyringError::InvalidKeyConfig(format!(
                "cannot read {}: {e}",
                self.0.display()
            ))),
        }
    }
}

/// What a sealed value belongs to beyond its table, column and row (AAD version 2):
/// the tenant, server and slot subject, and for a credential the authorization server
/// it was issued by and the endpoints it may be sent to. A row edited to point any of
/// these elsewhere (another user's slot, another tenant, another token endpoint) no
/// longer opens. Absent fields are encoded as absent, so `None` never equals `Some("")`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Binding<'a> {
    /// Tenant.
    pub tenant: Option<&'a str>,
    /// Server id.
    pub server: Option<&'a str>,
    /// Slot subject (`None`: the shared slot).
    pub subject: Option<&'a str>,
    /// Authorization server issuer, verbatim.
    pub issuer: Option<&'a str>,
    /// RFC 8707 resource.
    pub resource: Option<&'a str>,
    /// Token endpoint.
    pub token_endpoint: Option<&'a str>,
    /// Revocation endpoint.
    pub revocation_endpoint: Option<&'a str>,
}

/// What a ciphertext belongs to: its table, column and row, and what the row is bound
/// to ([`Binding`]). Part of the AEAD's associated data, so a ciphertext only decrypts
/// where it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aad<'a> {
    /// Table name.
    pub table: &'static str,
    /// Column name.
    pub column: &'static str,
    /// The row's identity (primary key as text).
    pub row: &'a str,
    /// What the row belongs to.
    pub binding: Binding<'a>,
}

/// Which associated-data convention an envelope was sealed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AadVersion {
    /// Table, column and row id only (values written before the binding existed).
    /// Read while a re-seal is pending; never written.
    V1,
    /// Version 1 plus the [`Binding`]. Every new value.
    V2,
}

fn push_field(out: &mut Vec<u8>, f: &str) {
    out.extend_from_slice(&(f.len() as u32).to_be_bytes());
    out.extend_from_slice(f.as_bytes());
}

impl Aad<'_> {
    fn bytes(&self, header: u8, version: AadVersion) -> Vec<u8> {
        // Length-prefixed fields: no two distinct (table, column, row, binding) share
        // an encoding.
        let mut out =
            Vec::with_capacity(64 + self.table.len() + self.column.len() + self.row.len());
        out.extend_from_slice(match version {
            AadVersion::V1 => b"latchkey-aad-v1",
            AadVersion::V2 => b"latchkey-aad-v2",
        });
        out.push(header);
        for f in [self.table, self.column, self.row] {
            push_field(&mut out, f);
        }
        if version == AadVersion::V2 {
            let b = &self.binding;
            for f in [
                b.tenant,
                b.server,
                b.subject,
                b.issuer,
                b.resource,
                b.token_endpoint,
                b.revocation_endpoint,
            ] {
                match f {
                    Some(v) => {
                        out.push(1);
                        push_field(&mut out, v);
                    }
                    None => out.push(0),
                }
            }
        }
        out
    }
}

struct Derived {
    current: u8,
    ciphers: Vec<(u8, Aes256Gcm)>,
}

impl Derived {
    fn from(set: &KeySet) -> Result<Self, KeyringError> {
        let mut ciphers = Vec::with_capacity(set.keys.len());
        for (id, master) in &set.keys {
            let hk = Hkdf::<Sha256>::new(None, master.0.as_slice());
            let mut okm = Zeroizing::new([0u8; 32]);
            hk.expand(HKDF_INFO, okm.as_mut_slice())
                .map_err(|_| KeyringError::InvalidKeyConfig("HKDF expansion failed".into()))?;
            let cipher = Aes256Gcm::new_from_slice(okm.as_slice())
                .map_err(|_| KeyringError::InvalidKeyConfig("bad AES key length".into()))?;
            ciphers.push((*id, cipher));
        }
        Ok(Self {
            current: set.current,
            ciphers,
        })
    }

    fn cipher(&self, id: u8) -> Option<&Aes256Gcm> {
        self.ciphers.iter().find(|(k, _)| *k == id).map(|(_, c)| c)
    }
}

/// Encrypts and decrypts stored secrets. Cheap to share behind an `Arc`.
pub struct Keyring {
    source: Box<dyn KeySource>,
    derived: RwLock<Option<Arc<Derived>>>,
    /// Whether version-1 envelopes (row id only) are still opened: until the re-seal
    /// to version 2 has finished.
    legacy_aad: AtomicBool,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// A keyring reading its keys from `source` on first use.
    pub fn new(source: impl KeySource + 'static) -> Self {
        Self {
            source: Box::new(source),
            derived: RwLock::new(None),
            legacy_aad: AtomicBool::new(true),
        }
    }

    fn keys(&self) -> Result<Arc<Derived>, KeyringError> {
        if let Ok(g) = self.derived.read()
            && let Some(d) = g.as_ref()
        {
            return Ok(d.clone());
        }
        let set = self
            .source
            .load()?
            .ok_or(KeyringError::EncryptionKeyMissing)?;
        let d = Arc::new(Derived::from(&set)?);
        if let Ok(mut g) = self.derived.write() {
            *g = Some(d.clone());
        }
        Ok(d)
    }

    /// Whether keys are available (loading them if needed).
    pub fn check(&self) -> Result<(), KeyringError> {
        self.keys().map(|_| ())
    }

    /// Reads the key source again (the key set changed: `latchkey keys add`) and uses
    /// what it holds from now on; whether the current key or the key ids differ from
    /// before. On an error (no keys, invalid keys, an unreadable file) the keys in use
    /// are kept and the error returned.
    pub fn reload(&self) -> Result<bool, KeyringError> {
        let set = self
            .source
            .load()?
            .ok_or(KeyringError::EncryptionKeyMissing)?;
        let fresh = Arc::new(Derived::from(&set)?);
        let ids = |d: &Derived| {
            let mut v: Vec<u8> = d.ciphers.iter().map(|(id, _)| *id).collect();
            v.sort_unstable();
            (d.current, v)
        };
        let mut g = self.derived.write().unwrap_or_else(|p| p.into_inner());
        let changed = g.as_ref().is_none_or(|old| ids(old) != ids(&fresh));
        *g = Some(fresh);
        Ok(changed)
    }

    /// The id new values are written under.
    pub fn current_key_id(&self) -> Result<u8, KeyringError> {
        Ok(self.keys()?.current)
    }

    /// Seals `plaintext` for the place `aad` names, under the current key.
    pub fn encrypt(&self, plaintext: &[u8], aad: Aad<'_>) -> Result<Vec<u8>, KeyringError> {
        let keys = self.keys()?;
        let cipher = keys
            .cipher(keys.current)
            .ok_or(KeyringError::EncryptionKeyMissing)?;
        let mut iv = [0u8; IV_LEN];
        getrandom(&mut iv)?;
        let mut buf = plaintext.to_vec();
        let tag = cipher
            .encrypt_in_place_detached(
                &Nonce::from(iv),
                &aad.bytes(keys.current, AadVersion::V2),
                &mut buf,
            )
            .map_err(|_| KeyringError::InvalidKeyConfig("encryption failed".into()))?;
        let mut out = Vec::with_capacity(ENVELOPE_OVERHEAD + buf.len());
        out.push(keys.current);
        out.extend_from_slice(&iv);
        let tag: [u8; TAG_LEN] = tag.into();
        out.extend_from_slice(&tag);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Opens an envelope written for the place `aad` names. The plaintext is zeroized
    /// when dropped. A value that does not open is refused and logged (ids only).
    pub fn decrypt(
        &self,
        envelope: &[u8],
        aad: Aad<'_>,
    ) -> Result<Zeroizing<Vec<u8>>, KeyringError> {
        self.decrypt_versioned(envelope, aad)
            .map(|(plain, _)| plain)
    }

    /// [`Keyring::decrypt`], also saying which AAD convention opened the envelope: the
    /// current one ([`AadVersion::V2`]) or, while legacy values are still read, the
    /// row-id-only one.
    pub fn decrypt_versioned(
        &self,
        envelope: &[u8],
        aad: Aad<'_>,
    ) -> Result<(Zeroizing<Vec<u8>>, AadVersion), KeyringError> {
        let keys = self.keys()?;
        let opened = open_with(&keys, envelope, aad, AadVersion::V2)
            .map(|p| (p, AadVersion::V2))
            .or_else(|e| {
                if self.legacy_aad.load(Ordering::Relaxed) {
                    open_with(&keys, envelope, aad, AadVersion::V1).map(|p| (p, AadVersion::V1))
                } else {
                    Err(e)
                }
            });
        if opened.is_err() {
            let b = &aad.binding;
            tracing::warn!(
                event = "vault.tampering_suspected",
                table = aad.table,
                column = aad.column,
                row = aad.row,
                tenant = b.tenant.unwrap_or(""),
                server = b.server.unwrap_or(""),
                subject = b.subject.unwrap_or(""),
                key_id = envelope.first().copied().unwrap_or(0),
                "a stored value does not open under its binding (edited or moved row, or a key that is no longer configured); refused"
            );
        }
        opened
    }

    /// Whether the envelope opens for the place `aad` names, without logging a refusal
    /// (start-up's check that a configured key is the one the values were sealed with).
    pub fn opens(&self, envelope: &[u8], aad: Aad<'_>) -> Result<bool, KeyringError> {
        let keys = self.keys()?;
        Ok(open_with(&keys, envelope, aad, AadVersion::V2).is_ok()
            || (self.legacy_aad.load(Ordering::Relaxed)
                && open_with(&keys, envelope, aad, AadVersion::V1).is_ok()))
    }

    /// Stops opening version-1 (row-id-only) envelopes: called once every stored value
    /// has been re-sealed under version 2, so an old value moved to another row, slot
    /// or tenant is refused.
    pub fn refuse_legacy_aad(&self) {
        self.legacy_aad.store(false, Ordering::Relaxed);
    }

    /// The key ids configured, current first (loading them if needed).
    pub fn key_ids(&self) -> Result<Vec<u8>, KeyringError> {
        let keys = self.keys()?;
        let mut ids: Vec<u8> = keys.ciphers.iter().map(|(id, _)| *id).collect();
        ids.sort_by_key(|id| (*id != keys.current, std::cmp::Reverse(*id)));
        Ok(ids)
    }

    /// [`Keyring::encrypt`] for a [`Secret`].
    pub fn seal(&self, secret: &Secret, aad: Aad<'_>) -> Result<Vec<u8>, KeyringError> {
        self.encrypt(secret.expose().as_bytes(), aad)
    }

    /// [`Keyring::decrypt`] into a [`Secret`]; a non-UTF-8 plaintext is undecryptable.
    pub fn open(&self, envelope: &[u8], aad: Aad<'_>) -> Result<Secret, KeyringError> {
        let plain = self.decrypt(envelope, aad)?;
        let text = std::str::from_utf8(&plain).map_err(|_| KeyringError::Undecryptable)?;
        Ok(Secret::new(text))
    }

    /// Whether an envelope was written under a key other than the current one (key
    /// rotation re-encrypts exactly these).
    pub fn needs_rewrap(&self, envelope: &[u8]) -> Result<bool, KeyringError> {
        let current = self.keys()?.current;
        Ok(envelope.first().is_some_and(|id| *id != current))
    }
}

fn open_with(
    keys: &Derived,
    envelope: &[u8],
    aad: Aad<'_>,
    version: AadVersion,
) -> Result<Zeroizing<Vec<u8>>, KeyringError> {
    if envelope.len() < ENVELOPE_OVERHEAD {
        return Err(KeyringError::Undecryptable);
    }
    let id = envelope[0];
    let cipher = keys.cipher(id).ok_or(KeyringError::Undecryptable)?;
    let iv: [u8; IV_LEN] = envelope[1..1 + IV_LEN]
        .try_into()
        .map_err(|_| KeyringError::Undecryptable)?;
    let tag: [u8; TAG_LEN] = envelope[1 + IV_LEN..ENVELOPE_OVERHEAD]
        .try_into()
        .map_err(|_| KeyringError::Undecryptable)?;
    let mut buf = Zeroizing::new(envelope[ENVELOPE_OVERHEAD..].to_vec());
    cipher
        .decrypt_in_place_detached(
            &Nonce::from(iv),
            &aad.bytes(id, version),
            buf.as_mut(),
            &Tag::from(tag),
        )
        .map_err(|_| KeyringError::Undecryptable)?;
    Ok(buf)
}

fn getrandom(buf: &mut [u8]) -> Result<(), KeyringError> {
    use aes_gcm::aead::rand_core::RngCore;
    aes_gcm::aead::OsRng.try_fill_bytes(buf).map_err(|_| {
        KeyringError::InvalidKeyConfig("the operating system's random source failed".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f";

    fn ring(spec: &str) -> Keyring {
        Keyring::new(StaticKeys(Some(KeySet::parse(spec).unwrap())))
    }

    fn aad(row: &str) -> Aad<'_> {
        Aad {
            table: "credentials",
            column: "refresh_token",
            row,
            binding: Binding::default(),
        }
    }

    #[test]
    fn round_trip_and_envelope_layout() {
        let k = ring(&format!("1:{K1}"));
        let env = k.encrypt(b"rt-secret", aad("row-1")).unwrap();
        assert_eq!(env.len(), ENVELOPE_OVERHEAD + 9);
        assert_eq!(env[0], 1);
        assert!(!env.windows(9).any(|w| w == b"rt-secret"));
        assert_eq!(&k.decrypt(&env, aad("row-1")).unwrap()[..], b"rt-secret");
        // fresh nonce each time
        assert_ne!(env, k.encrypt(b"rt-secret", aad("row-1")).unwrap());
        let s = k.seal(&Secret::new("tok"), aad("r")).unwrap();
        assert_eq!(k.open(&s, aad("r")).unwrap().expose(), "tok");
    }

    #[test]
    fn reload_picks_up_a_changed_key_file_and_keeps_the_old_keys_on_error() {
        let path = std::env::temp_dir().join(format!("lk-reload-{}", uuid::Uuid::new_v4()));
        let file = FileKeys(path.clone());
        file.write(&KeySet::parse(&format!("1:{K1}")).unwrap())
            .unwrap();
        let k = Keyring::new(file.clone());
        let old = k.encrypt(b"v", aad("r")).unwrap();
        assert_eq!(old[0], 1);
        assert!(!k.reload().unwrap(), "nothing changed");
        file.write(&KeySet::parse(&format!("2:{K2},1:{K1}")).unwrap())
            .unwrap();
        assert_eq!(k.current_key_id().unwrap(), 1, "read once until reloaded");
        assert!(k.reload().unwrap());
        assert_eq!(k.current_key_id().unwrap(), 2);
        assert_eq!(k.encrypt(b"v", aad("r")).unwrap()[0], 2);
        assert_eq!(&k.decrypt(&old, aad("r")).unwrap()[..], b"v");
        std::fs::write(&path, "garbage").unwrap();
        assert!(k.reload().is_err());
        assert_eq!(k.current_key_id().unwrap(), 2, "the keys in use are kept");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn tampering_any_byte_fails() {
        let k = ring(&format!("1:{K1}"));
        let env = k
            .encrypt(b"some refresh token value", aad("row-1"))
            .unwrap();
        for i in 0..env.len() {
            for flip in [0x01u8, 0x80] {
                let mut t = env.clone();
                t[i] ^= flip;
                assert_eq!(
                    k.decrypt(&t, aad("row-1")),
                    Err(KeyringError::Undecryptable),
                    "byte {i}"
                );
            }
        }
        assert_eq!(
            k.decrypt(&env[..env.len() - 1], aad("row-1")),
            Err(KeyringError::Undecryptable)
        );
        assert_eq!(
            k.decrypt(&env[..10], aad("row-1")),
            Err(KeyringError::Undecryptable)
        );
        assert_eq!(
            k.decrypt(&[], aad("row-1")),
            Err(KeyringError::Undecryptable)
        );
    }

    #[test]
    fn wrong_key_and_moved_ciphertexts_fail() {
        let k1 = ring(&format!("1:{K1}"));
        let other = ring(&format!("1:{K2}"));
        let env = k1.encrypt(b"x", aad("row-1")).unwrap();
        assert_eq!(
            other.decrypt(&env, aad("row-1")),
            Err(KeyringError::Undecryptable)
        );
        assert_eq!(
            k1.decrypt(&env, aad("row-2")),
            Err(KeyringError::Undecryptable),
            "other row"
        );
        let col = Aad {
            table: "credentials",
            column: "access_token",
            row: "row-1",
            binding: Binding::default(),
        };
        assert_eq!(
            k1.decrypt(&env, col),
            Err(KeyringError::Undecryptable),
            "other column"
        );
        let table = Aad {
            table: "registered_clients",
            column: "refresh_token",
            row: "row-1",
            binding: Binding::default(),
        };
        assert_eq!(
            k1.decrypt(&env, table),
            Err(KeyringError::Undecryptable),
            "other table"
        );
        assert_eq!(KeyringError::Undecryptable.remedy(), Remedy::Reconsent);
    }

    #[test]
    fn old_keys_still_decrypt_after_rotation() {
        let before = ring(&format!("1:{K1}"));
        let env = before.encrypt(b"old", aad("r")).unwrap();
        let after = ring(&format!("2:{K2},1:{K1}"));
        assert_eq!(&after.decrypt(&env, aad("r")).unwrap()[..], b"old");
        assert!(after.needs_rewrap(&env).unwrap());
        let new = after.encrypt(b"new", aad("r")).unwrap();
        assert_eq!(new[0], 2);
        assert!(!after.needs_rewrap(&new).unwrap());
        // once key 1 is dropped, its rows need re-consent (the row itself is untouched)
        let dropped = ring(&format!("2:{K2}"));
        assert_eq!(
            dropped.decrypt(&env, aad("r")),
            Err(KeyringError::Undecryptable)
        );
    }

    #[test]
    fn missing_key_is_typed_and_a_later_key_is_picked_up() {
        let k = Keyring::new(StaticKeys(None));
        assert_eq!(
            k.encrypt(b"x", aad("r")),
            Err(KeyringError::EncryptionKeyMissing)
        );
        assert_eq!(
            k.decrypt(&[1; 40], aad("r")),
            Err(KeyringError::EncryptionKeyMissing)
        );
        assert_eq!(
            KeyringError::EncryptionKeyMissing.remedy(),
            Remedy::Reconfigure
        );
        let dir = std::env::temp_dir().join(format!("latchkey-keys-{}", std::process::id()));
        let k = Keyring::new(FileKeys(dir.clone()));
        assert_eq!(k.check(), Err(KeyringError::EncryptionKeyMissing));
        std::fs::write(&dir, format!("1:{K1}\n")).unwrap();
        assert!(k.check().is_ok(), "the failed load was not cached");
        std::fs::remove_file(&dir).unwrap();
    }

    proptest::proptest! {
        #[test]
        fn any_value_round_trips_only_in_its_own_row(plain in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512), a in "[a-z0-9-]{1,40}", b in "[a-z0-9-]{1,40}") {
            let k = ring(&format!("1:{K1}"));
            let env = k.encrypt(&plain, aad(&a)).unwrap();
            proptest::prop_assert_eq!(&k.decrypt(&env, aad(&a)).unwrap()[..], &plain[..]);
            if a != b {
                proptest::prop_assert_eq!(k.decrypt(&env, aad(&b)), Err(KeyringError::Undecryptable));
            }
        }
    }

    #[test]
    fn key_configuration_is_validated() {
        for bad in [
            "1:abc",
            "x:00",
            &format!("0:{K1}"),
            &format!("1:{K1},1:{K2}"),
            &format!("1:{}", &K1[..62]),
        ] {
            assert!(
                matches!(KeySet::parse(bad), Err(KeyringError::InvalidKeyConfig(_))),
                "{bad}"
            );
        }
        assert_eq!(
            KeySet::parse(" ").err(),
            Some(KeyringError::EncryptionKeyMissing)
        );
        assert!(MasterKey::from_hex(&"g".repeat(64)).is_err());
        let dbg = format!("{:?}", KeySet::parse(&format!("1:{K1}")).unwrap());
        assert!(!dbg.contains("0001020304"), "{dbg}");
    }

    #[test]
    fn a_new_current_key_keeps_the_old_ones_readable() {
        let old = ring(&format!("1:{K1}"));
        let env = old.encrypt(b"rt", aad("r")).unwrap();
        let set = KeySet::parse(&format!("3:{K2},1:{K1}"))
            .unwrap()
            .with_new_current_key()
            .unwrap();
        assert_eq!(set.current(), 4);
        assert_eq!(set.ids(), vec![4, 3, 1]);
        let spec = set.to_spec();
        assert!(spec.starts_with("4:"), "current first");
        assert!(spec.ends_with(&format!(",3:{K2},1:{K1}")));
        let next = Keyring::new(StaticKeys(Some(KeySet::parse(&spec).unwrap())));
        assert_eq!(&next.decrypt(&env, aad("r")).unwrap()[..], b"rt");
        assert_eq!(next.encrypt(b"x", aad("r")).unwrap()[0], 4);
        let full = KeySet::parse(&format!("255:{K1}")).unwrap();
        assert!(matches!(
            full.with_new_current_key(),
            Err(KeyringError::InvalidKeyConfig(_))
        ));
    }

    #[test]
    fn a_key_file_is_written_atomically_for_the_owner_only() {
        let dir = std::env::temp_dir().join(format!("lk-keys-{}", std::process::id()));
        let file = FileKeys(dir.join("keys"));
        assert!(file.create_if_missing().unwrap());
        assert!(!file.create_if_missing().unwrap(), "never replaced");
        let first = file.load().unwrap().unwrap();
        assert_eq!(first.ids(), vec![1]);
        file.write(&first.with_new_current_key().unwrap()).unwrap();
        assert_eq!(file.load().unwrap().unwrap().ids(), vec![2, 1]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&file.0).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
