//! `latchkey serve` as a user starts it: no configuration, then with settings.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
    announced: Vec<String>,
    /// The rest of standard output, after the listening line.
    out: Option<BufReader<std::process::ChildStdout>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn command(data_dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_latchkey"));
    c.arg("serve")
        .env("LATCHKEY_DATA_DIR", data_dir)
        .env("LATCHKEY_LISTEN", "127.0.0.1:0")
        .env_remove("LATCHKEY_ENCRYPTION_KEYS")
        .env_remove("LATCHKEY_KEY_FILE")
        .env_remove("LATCHKEY_DATABASE_URL")
        .env_remove("LATCHKEY_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Starts the server and reads its announcement up to the listening line.
pub(crate) fn start(mut c: Command) -> Server {
    let mut child = c.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut announced = Vec::new();
    let mut base = None;
    for line in std::io::Read::by_ref(&mut out).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("Latchkey is listening on ") {
            base = rest.split_whitespace().next().map(str::to_owned);
            announced.push(line);
            break;
        }
        announced.push(line);
    }
    let base = base.unwrap_or_else(|| panic!("no listening line; got {announced:?}"));
    Server {
        child,
        base,
        announced,
        out: Some(out),
    }
}

async fn get(url: &str) -> (u16, serde_json::Value) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_no_configuration_is_usable_at_once() {
    let dir = super::keys::TempDir::new();
    let data = dir.0.join("data");
    let s = tokio::task::spawn_blocking({
        let data = data.clone();
        move || start(command(&data))
    })
    .await
    .unwrap();
    assert!(
        s.announced
            .iter()
            .any(|l| l.contains("Generated a new encryption key")),
        "{:?}",
        s.announced
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data.join("keys")), 0o600);
        assert_eq!(mode(&data), 0o700);
    }
    assert!(data.join("latchkey.db").exists());
    let (status, health) = get(&format!("{}/healthz", s.base)).await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, ready) = get(&format!("{}/readyz", s.base)).await;
    assert_eq!(status, 200);
    assert_eq!(ready["checks"]["database"], "ok");
    assert_eq!(ready["checks"]["encryption_key"], "ok");
    let (status, me) = get(&format!("{}/v1/whoami", s.base)).await;
    assert_eq!(status, 200);
    assert_eq!(me["tenant"], "default");
    let (status, nf) = get(&format!("{}/v1/nothing-here", s.base)).await;
    assert_eq!((status, nf["code"].as_str()), (404, Some("not_found")));
    // DNS rebinding: a foreign Host is refused.
    let r = reqwest::Client::new()
        .get(format!("{}/v1/whoami", s.base))
        .header("host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    drop(s);

    // A second start reuses the key.
    let key = std::fs::read_to_string(data.join("keys")).unwrap();
    let s = tokio::task::spawn_blocking({
        let data = data.clone();
        move || start(command(&data))
    })
    .await
    .unwrap();
    assert!(!s.announced.iter().any(|l| l.contains("Generated")));
    assert_eq!(std::fs::read_to_string(data.join("keys")).unwrap(), key);
    #[cfg(unix)]
    {
        // SIGTERM stops it cleanly.
        let pid = s.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let mut s = s;
        let (status, said) = tokio::task::spawn_blocking(move || {
            let st = s.child.wait().unwrap();
            let said: Vec<String> = s
                .out
                .take()
                .unwrap()
                .lines()
                .map_while(Result::ok)
                .collect();
            std::mem::forget(s);
            (st, said)
        })
        .await
        .unwrap();
        assert!(status.success(), "{status:?}");
        // Stopping is said, like starting.
        assert_eq!(
            said,
            [
                "Latchkey is stopping: finishing the requests under way",
                "Latchkey stopped."
            ]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_postgres_is_ready() {
    let pg = super::PgSchema::new("lk_serve").await.unwrap();
    let dir = super::keys::TempDir::new();
    let mut c = command(&dir.0);
    c.env("LATCHKEY_DATABASE_URL", &pg.url);
    let s = tokio::task::spawn_blocking(move || start(c)).await.unwrap();
    assert!(
        s.announced
            .iter()
            .any(|l| l.contains("database postgres://")),
        "{:?}",
        s.announced
    );
    assert!(
        !dir.0.join("latchkey.db").exists(),
        "no SQLite file when PostgreSQL is set"
    );
    let (status, ready) = get(&format!("{}/readyz", s.base)).await;
    assert_eq!(
        (status, ready["checks"]["database"].as_str()),
        (200, Some("ok"))
    );
    drop(s);
    pg.drop_schema().await.unwrap();
}

#[test]
fn invalid_configuration_stops_start_up_naming_the_setting() {
    let dir = super::keys::TempDir::new();
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[("LATCHKEY_LISTEN", "not-an-address")], "LATCHKEY_LISTEN"),
        (&[("LATCHKEY_LISTEN", "0.0.0.0:0")], "beyond this machine"),
        (&[("LATCHKEY_AUTH_MODE", "jwt")], "auth.jwks_url"),
    ];
    for (env, needle) in cases {
        let mut c = command(&dir.0);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(78), "{env:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{env:?}: {err}");
    }
    let file = dir.0.join("latchkey.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:0\"\nlisten_port = 3\n").unwrap();
    let mut c = command(&dir.0);
    c.arg("--config").arg(&file);
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen_port"));
}

/// Issue 15, item 13, as a user starts it: the data directory Latchkey creates is
/// 0700 and the SQLite database with its `-wal` and `-shm` files 0600, whatever the
/// umask; and the API trusts only Latchkey's own origins (its public URL and the
/// address it listens on, `localhost` included), never another loopback port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_its_files_private_and_trusts_only_its_own_origins() {
    let dir = super::keys::TempDir::new();
    let data = dir.0.join("nested").join("data");
    // The same command under a umask that takes nothing away.
    let c = command(&data);
    let mut c0 = Command::new("sh");
    c0.arg("-c")
        .arg("umask 000 && exec \"$0\" serve")
        .arg(c.get_program())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => c0.env(k, v),
            None => c0.env_remove(k),
        };
    }
    let s = tokio::task::spawn_blocking(move || start(c0))
        .await
        .unwrap();
    let port = s.base.rsplit(':').next().unwrap().to_owned();
    let client = reqwest::Client::new();
    let post = |origin: Option<String>| {
        let mut r = client
            .post(format!("{}/v1/api-keys", s.base))
            .header("content-type", "application/json")
            .body(r#"{"name": "k"}"#);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    for own in [
        None,
        Some(format!("http://127.0.0.1:{port}")),
        Some(format!("http://localhost:{port}")),
    ] {
        let r = post(own.clone()).await.unwrap();
        assert_eq!(r.status().as_u16(), 201, "{own:?}");
    }
    for foreign in [
        "http://localhost:9".to_owned(),
        format!("http://127.0.0.1:{}", port.parse::<u16>().unwrap() + 1),
        "http://localhost".to_owned(),
        format!("https://localhost:{port}"),
        "null".to_owned(),
    ] {
        let r = post(Some(foreign.clone())).await.unwrap();
        assert_eq!(r.status().as_u16(), 403, "{foreign}");
        let body = r.text().await.unwrap();
        assert!(
            body.contains("Invalid Host/Origin header"),
            "{foreign}: {body}"
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("latchkey.db")), 0o600);
        for side in ["latchkey.db-wal", "latchkey.db-shm"] {
            if data.join(side).exists() {
                assert_eq!(mode(&data.join(side)), 0o600, "{side}");
            }
        }
        assert!(
            data.join("latchkey.db-wal").exists(),
            "the write-ahead log exists"
        );
    }
    drop(s);
}

/// Issue 17: one `serve` per SQLite data directory. A second one stops at once with
/// exit 69, naming the PID that holds it and PostgreSQL for several instances; commands
/// that open the database directly keep working; once the first stops, a new one
/// starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_one_data_directory_is_refused() {
    let dir = super::keys::TempDir::new();
    let data = dir.0.join("data");
    let first = tokio::task::spawn_blocking({
        let data = data.clone();
        move || start(command(&data))
    })
    .await
    .unwrap();
    let pid = first.child.id();
    let out = tokio::task::spawn_blocking({
        let data = data.clone();
        move || command(&data).output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("(PID {pid})")), "{err}");
    assert!(err.contains("PostgreSQL"), "{err}");
    // The first still answers; a command on the database itself still works.
    let (status, _) = get(&format!("{}/healthz", first.base)).await;
    assert_eq!(status, 200);
    let keys = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["keys", "add", "--json"])
        .env("LATCHKEY_DATA_DIR", &data)
        .env_remove("LATCHKEY_ENCRYPTION_KEYS")
        .env_remove("LATCHKEY_KEY_FILE")
        .env_remove("LATCHKEY_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        keys.status.success(),
        "{}",
        String::from_utf8_lossy(&keys.stderr)
    );
    // Stopped (even killed), the lock goes with the process.
    drop(first);
    let again = tokio::task::spawn_blocking(move || start(command(&data)))
        .await
        .unwrap();
    let (status, _) = get(&format!("{}/healthz", again.base)).await;
    assert_eq!(status, 200);
}
