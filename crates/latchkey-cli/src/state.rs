//! Where Latchkey keeps its state: the data directory, the database and the keys.
//! Every command that opens the vault (`keys …`, and `serve` next) resolves them here,
//! so they always agree.

use std::path::PathBuf;

use latchkey_vault::KeySource as _;
use latchkey_vault::keyring::{EnvKeys, FileKeys};
use latchkey_vault::store::DatabaseUrl;

/// The environment variable holding keys inline (`id:hex[,id:hex…]`, current first).
pub(crate) const KEYS_ENV: &str = "LATCHKEY_ENCRYPTION_KEYS";

/// Options that locate the state.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StateArgs {
    /// Directory for the SQLite database and the key file.
    /// [default: $XDG_DATA_HOME/latchkey or ~/.local/share/latchkey]
    #[arg(long, env = "LATCHKEY_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// `postgres://…` for PostgreSQL, or an SQLite file. [default: DATA_DIR/latchkey.db]
    #[arg(
        long,
        env = "LATCHKEY_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// The key file (`id:hex[,id:hex…]`, current key first), used unless
    /// LATCHKEY_ENCRYPTION_KEYS is set. [default: DATA_DIR/keys]
    #[arg(long, env = "LATCHKEY_KEY_FILE", value_name = "FILE")]
    key_file: Option<PathBuf>,
}

/// Where the keys come from.
#[derive(Debug, Clone)]
pub(crate) enum Keys {
    /// Inline in [`KEYS_ENV`].
    Env,
    /// A file.
    File(FileKeys),
}

/// The resolved locations.
#[derive(Debug, Clone)]
pub(crate) struct State {
    pub(crate) database: DatabaseUrl,
    pub(crate) keys: Keys,
}

impl StateArgs {
    /// Fills settings not given by flag or environment from a configuration file.
    pub(crate) fn with_defaults(
        mut self,
        data_dir: Option<PathBuf>,
        database_url: Option<String>,
        key_file: Option<PathBuf>,
    ) -> Self {
        self.data_dir = self.data_dir.or(data_dir);
        self.database_url = self.database_url.or(database_url);
        self.key_file = self.key_file.or(key_file);
        self
    }

    pub(crate) fn resolve(&self) -> anyhow::Result<State> {
        let data_dir = self.data_dir.clone().unwrap_or_else(default_data_dir);
        let database = match &self.database_url {
            Some(u) => DatabaseUrl::parse(u)
                .map_err(|e| anyhow::anyhow!("LATCHKEY_DATABASE_URL / --database-url: {e}"))?,
            None => DatabaseUrl::Sqlite(data_dir.join("latchkey.db")),
        };
        let keys = if std::env::var_os(KEYS_ENV).is_some_and(|v| !v.is_empty()) {
            Keys::Env
        } else {
            Keys::File(FileKeys(
                self.key_file
                    .clone()
                    .unwrap_or_else(|| data_dir.join("keys")),
            ))
        };
        if let DatabaseUrl::Sqlite(path) = &database
            && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        {
            create_private_dir(dir)?;
        }
        Ok(State { database, keys })
    }
}

impl State {
    /// Opens the store (applying migrations); on failure prints why and returns the
    /// exit code for an unavailable service.
    pub(crate) async fn open_store(
        &self,
    ) -> Result<std::sync::Arc<dyn latchkey_vault::Store>, std::process::ExitCode> {
        self.database.open().await.map_err(|e| {
            eprintln!("latchkey: {}: {e}", self.database);
            crate::exit::code(crate::exit::UNAVAILABLE)
        })
    }

    /// Where keys were looked for, for messages.
    pub(crate) fn key_location(&self) -> String {
        match &self.keys {
            Keys::Env => format!("the environment variable {KEYS_ENV}"),
            Keys::File(f) => format!(
                "the key file {} (set {KEYS_ENV} or --key-file to look elsewhere)",
                f.0.display()
            ),
        }
    }

    /// Start-up checks of the keys against the database (issue 15, item 8), then the
    /// re-seal of values written before they were bound to their rows. On failure,
    /// prints why and returns the configuration exit code:
    /// * invalid key configuration (garbage in the variable or the file) stops here;
    /// * a key file is created only while the database holds no sealed value: a lost
    ///   key is never silently replaced by a fresh one that opens nothing;
    /// * configured keys that include none of the key ids the database's envelopes
    ///   carry, or that open none of a sample of the values under their own id (a
    ///   wrong key with the right id), stop here, naming the ids needed;
    /// * a key file readable by group or others is warned about (path only).
    pub(crate) async fn check_keys(
        &self,
        store: &dyn latchkey_vault::Store,
        keyring: &latchkey_vault::Keyring,
    ) -> Result<(), std::process::ExitCode> {
        let fail = |msg: String| {
            eprintln!("latchkey: {msg}");
            crate::exit::code(crate::exit::CONFIG)
        };
        let loaded = match &self.keys {
            Keys::Env => EnvKeys(KEYS_ENV.into()).load(),
            Keys::File(f) => f.load(),
        };
        let loaded = loaded.map_err(|e| {
            fail(format!(
                "{e} (keys read from {}); Latchkey does not start with unusable keys",
                self.key_location()
            ))
        })?;
        let in_use = store.key_ids_in_use().await.map_err(|e| {
            eprintln!("latchkey: {}: {e}", self.database);
            crate::exit::code(crate::exit::UNAVAILABLE)
        })?;
        let ids = |set: &std::collections::BTreeSet<u8>| {
            set.iter().map(u8::to_string).collect::<Vec<_>>().join(", ")
        };
        let Some(set) = loaded else {
            if !in_use.is_empty() {
                return Err(fail(format!(
                    "no encryption key found, but the database ({}) holds values sealed under key id(s) {}. \
                     Looked in {}. Restore that key (e.g. from a backup) and start again; \
                     Latchkey does not generate a new key while the database holds values only the old one opens.",
                    self.database,
                    ids(&in_use),
                    self.key_location()
                )));
            }
            let Keys::File(file) = &self.keys else {
                return Err(fail(format!("{KEYS_ENV} holds no key")));
            };
            match file.create_if_missing() {
                Ok(true) => {
                    #[allow(clippy::print_stdout)] // the start-up announcement
                    {
                        println!(
                            "Generated a new encryption key in {} (mode 0600). Back it up: without it the stored tokens cannot be read.",
                            file.0.display()
                        );
                    }
                }
                Ok(false) => {}
                Err(e) => return Err(fail(e.to_string())),
            }
            return Ok(());
        };
        if let Keys::File(f) = &self.keys {
            warn_if_shared(&f.0);
        }
        let configured: std::collections::BTreeSet<u8> = set.ids().into_iter().collect();
        let missing: std::collections::BTreeSet<u8> =
            in_use.difference(&configured).copied().collect();
        if !in_use.is_empty() && missing.len() == in_use.len() {
            return Err(fail(format!(
                "the database ({}) holds values sealed under key id(s) {}, but the keys in {} have id(s) {}. \
                 Configure the key(s) the database needs (older keys stay configured after a rotation).",
                self.database,
                ids(&in_use),
                self.key_location(),
                ids(&configured)
            )));
        }
        if !missing.is_empty() {
            tracing::warn!(
                event = "keys.missing_ids",
                missing = %ids(&missing),
                "stored values are sealed under key ids no configured key has: their slots need consent again, and /readyz reports not ready"
            );
        }
        for id in in_use.intersection(&configured) {
            if let Some(false) = latchkey_vault::rotate::key_opens_sample(store, keyring, *id)
                .await
                .map_err(|e| fail(e.to_string()))?
            {
                return Err(fail(format!(
                    "the configured key id {id} in {} opens none of the stored values sealed under key id {id}: \
                     it is not the key they were sealed with. Restore the right key.",
                    self.key_location()
                )));
            }
        }
        Ok(())
    }

    /// Re-seals, with the rotation machinery, every value written before values were
    /// bound to their rows (issue 15, item 7), unless the database says that is done;
    /// then the keyring stops opening row-id-only values. Resumable and safe beside
    /// other instances; runs once, on the first start after the upgrade.
    pub(crate) async fn reseal(
        &self,
        store: &dyn latchkey_vault::Store,
        keyring: &latchkey_vault::Keyring,
    ) -> Result<(), std::process::ExitCode> {
        let unavailable = |e: &dyn std::fmt::Display| {
            eprintln!("latchkey: {}: {e}", self.database);
            crate::exit::code(crate::exit::UNAVAILABLE)
        };
        if store.aad_version().await.map_err(|e| unavailable(&e))? >= 2 {
            keyring.refuse_legacy_aad();
            return Ok(());
        }
        use latchkey_core::Clock as _;
        let opts = latchkey_vault::rotate::RotateOptions {
            batch_size: latchkey_vault::rotate::RotateOptions::DEFAULT_BATCH,
            now: i64::try_from(latchkey_core::SystemClock.now().as_secs()).unwrap_or(i64::MAX),
        };
        match latchkey_vault::rotate::rotate(
            store,
            keyring,
            opts,
            &latchkey_vault::rotate::NoProgress,
        )
        .await
        {
            Ok(r) => {
                tracing::info!(
                    event = "keys.resealed",
                    rows = r.rows_rewrapped,
                    values = r.values_rewrapped,
                    undecryptable = r.undecryptable,
                );
                Ok(())
            }
            Err(latchkey_vault::rotate::RotateError::Store(e)) => Err(unavailable(&e)),
            Err(e) => {
                eprintln!("latchkey: re-sealing stored values failed: {e}");
                Err(crate::exit::code(crate::exit::CONFIG))
            }
        }
    }

    /// A keyring over the configured key source (read lazily, fails closed).
    pub(crate) fn keyring(&self) -> latchkey_vault::Keyring {
        match &self.keys {
            Keys::Env => latchkey_vault::Keyring::new(EnvKeys(KEYS_ENV.into())),
            Keys::File(f) => latchkey_vault::Keyring::new(f.clone()),
        }
    }
}

/// Warns (path only, never contents) when the key file is readable or writable by
/// group or others.
fn warn_if_shared(path: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    event = "keys.file_permissions",
                    path = %path.display(),
                    mode = format!("{mode:o}"),
                    "the key file is accessible to group or others; make it the owner's alone (chmod 600)"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

fn default_data_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("XDG_DATA_HOME")
        .map(|d| d.join("latchkey"))
        .or_else(|| env("HOME").map(|h| h.join(".local/share/latchkey")))
        .unwrap_or_else(|| PathBuf::from(".latchkey"))
}

/// Creates `dir` (and parents); a directory it creates is the owner's alone (0700), as
/// it holds the database and the key file.
fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(0o700);
    }
    b.create(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))
}
