//! Where Latchkey keeps its state: the data directory, the database and the keys.
//! Every command that opens the vault (`keys …`, and `serve` next) resolves them here,
//! so they always agree.

use std::path::PathBuf;

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

    /// A keyring over the configured key source (read lazily, fails closed).
    pub(crate) fn keyring(&self) -> latchkey_vault::Keyring {
        match &self.keys {
            Keys::Env => latchkey_vault::Keyring::new(EnvKeys(KEYS_ENV.into())),
            Keys::File(f) => latchkey_vault::Keyring::new(f.clone()),
        }
    }
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
