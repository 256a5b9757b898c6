//! Log capture for the "no secret in any log line" tests: one process-wide subscriber
//! at TRACE writing into memory.
//!
//! A global subscriber rather than a thread-scoped one: callsite interest is cached
//! process-wide, so with tests running in parallel a scoped subscriber can miss events.
//! Other tests' events land in the same buffer, which only widens what the check reads.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

/// Everything logged since the capture was installed.
#[derive(Debug, Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// The captured text so far.
    pub fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Installs the capture (once per process) and returns it. If another global
/// subscriber was installed first, the capture stays empty; tests assert it is not.
pub fn capture() -> Captured {
    static CAP: OnceLock<Captured> = OnceLock::new();
    CAP.get_or_init(|| {
        let cap = Captured::default();
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(cap.clone())
            .with_ansi(false)
            .finish();
        let _ = tracing::subscriber::set_global_default(sub);
        cap
    })
    .clone()
}
