//! One `latchkey serve` per SQLite database (issue 17). Two processes on one file
//! would each keep their own caches and never hear of the other's changes (a
//! disconnect on one, a cached token still served by the other): several instances
//! need PostgreSQL, whose change channel keeps them in step.
//!
//! An exclusive advisory lock (`flock`, through `std::fs::File::try_lock`) on
//! `<database>.lock`, held for the life of the process and released by the system if
//! the process dies, so a crash leaves nothing to clean up. The file holds the
//! holder's PID, for the message a second `serve` prints. Commands that open the
//! database directly (`keys`, …) do not take it.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub(crate) struct ServeLock {
    _file: File,
}

/// Why the lock could not be taken, in words for the person at the terminal.
#[derive(Debug)]
pub(crate) struct Held(pub(crate) String);

/// The lock file of the SQLite database at `db`.
pub(crate) fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    db.with_file_name(name)
}

/// Takes the lock of the SQLite database at `db`, or says who holds it.
pub(crate) fn take(db: &Path) -> Result<ServeLock, Held> {
    let path = lock_path(db);
    let mut open = OpenOptions::new();
    open.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    let mut file = open
        .open(&path)
        .map_err(|e| Held(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {
            // Ours now: record who we are (best effort; the lock is what counts).
            let _ = file
                .set_len(0)
                .and_then(|()| file.seek(SeekFrom::Start(0)))
                .and_then(|_| writeln!(file, "{}", std::process::id()))
                .and_then(|()| file.flush());
            Ok(ServeLock { _file: file })
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let holder = match pid.trim() {
                "" => "another `latchkey serve`".to_owned(),
                p => format!("another `latchkey serve` (PID {p})"),
            };
            Err(Held(format!(
                "{holder} is already serving the database {}; one process per SQLite database (stop it first). To run several instances together, use PostgreSQL (LATCHKEY_DATABASE_URL=postgres://…)",
                db.display()
            )))
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Held(format!("cannot lock {}: {e}", path.display())))
        }
    }
}
