//! A schema of its own on the machine's PostgreSQL for each test, so runs never
//! collide: `LATCHKEY_TEST_DATABASE_URL` (default the local server, database `test`).

/// The base URL of the test database.
pub fn database_url() -> String {
    std::env::var("LATCHKEY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema; [`PgSchema::drop_schema`] removes it.
#[derive(Debug)]
pub struct PgSchema {
    admin: sqlx::PgPool,
    name: String,
    /// A database URL whose connections use the schema (`search_path`).
    pub url: String,
}

impl PgSchema {
    /// Creates `<prefix>_<random>`.
    pub async fn new(prefix: &str) -> Result<Self, sqlx::Error> {
        let base = database_url();
        let name = format!("{prefix}_{:016x}{:016x}", rand_u64(), rand_u64());
        let admin = sqlx::PgPool::connect(&base).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&admin)
            .await?;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-csearch_path%3D{name}");
        Ok(Self { admin, name, url })
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A [`crate::netcut::NetCut`] in front of the database server, and the schema's URL
    /// through it: a test cuts the cut to take the database away and restores it.
    pub async fn behind_netcut(&self) -> std::io::Result<(crate::netcut::NetCut, String)> {
        // `postgres://user@host:port/db?…`: the pass-through goes in place of host:port.
        let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidInput, "database URL");
        let after_at = self.url.split_once('@').ok_or_else(invalid)?.1;
        let hostport = after_at.split('/').next().ok_or_else(invalid)?.to_owned();
        let target = tokio::net::lookup_host(&hostport)
            .await?
            .next()
            .ok_or_else(invalid)?;
        let cut = crate::netcut::NetCut::start(target).await?;
        let url = self.url.replacen(&hostport, &cut.addr.to_string(), 1);
        Ok((cut, url))
    }

    /// Drops the schema and everything in it.
    pub async fn drop_schema(self) -> Result<(), sqlx::Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            self.name
        )))
        .execute(&self.admin)
        .await?;
        Ok(())
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    // SipHash with the process's random keys over a counter: unique names without an
    // extra dependency.
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    h.finish()
}
