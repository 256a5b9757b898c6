//! Time as a parameter. Domain functions take `now: UnixTime`; services hold a
//! [`Clock`] so tests move time instead of sleeping.

use std::time::Duration;

/// Seconds and nanoseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime(Duration);

impl UnixTime {
    /// From whole seconds since the epoch.
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    /// Whole seconds since the epoch.
    pub const fn as_secs(self) -> u64 {
        self.0.as_secs()
    }

    /// `self + d`, saturating.
    pub fn plus(self, d: Duration) -> Self {
        Self(self.0.saturating_add(d))
    }

    /// `self - d`, saturating at the epoch.
    pub fn minus(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(d))
    }

    /// Time elapsed from `earlier` to `self` (zero if `earlier` is later).
    pub fn since(self, earlier: UnixTime) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// RFC 3339 in UTC to the second, e.g. `2026-12-02T23:59:00Z`. By hand (Howard
    /// Hinnant's days-to-civil algorithm): one pure function is all the API needs,
    /// not a calendar crate.
    pub fn to_rfc3339(self) -> String {
        let secs = self.0.as_secs();
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
        // Shifted to an era starting on 0000-03-01 (unsigned: the epoch is past it).
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z % 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    }
}

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> UnixTime;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one sanctioned read of the wall clock
    fn now(&self) -> UnixTime {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        UnixTime(d)
    }
}

/// A clock that tests move by hand.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::Mutex<Duration>);

impl ManualClock {
    /// A clock set to `start`.
    pub fn at(start: UnixTime) -> Self {
        Self(std::sync::Mutex::new(start.0))
    }

    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        if let Ok(mut g) = self.0.lock() {
            *g = g.saturating_add(d);
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixTime {
        self.0
            .lock()
            .map(|g| UnixTime(*g))
            .unwrap_or(UnixTime(Duration::ZERO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::at(UnixTime::from_secs(1000));
        assert_eq!(c.now().as_secs(), 1000);
        c.advance(Duration::from_secs(90));
        assert_eq!(c.now().as_secs(), 1090);
        assert_eq!(
            c.now().since(UnixTime::from_secs(1000)),
            Duration::from_secs(90)
        );
        assert_eq!(
            UnixTime::from_secs(5)
                .minus(Duration::from_secs(10))
                .as_secs(),
            0
        );
    }
}

#[cfg(test)]
mod rfc3339_tests {
    use super::UnixTime;

    #[test]
    fn known_instants() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_709_251_199, "2024-02-29T23:59:59Z"),
            (1_764_719_999, "2025-12-02T23:59:59Z"),
            (4_102_444_800, "2100-01-01T00:00:00Z"),
        ] {
            assert_eq!(UnixTime::from_secs(secs).to_rfc3339(), want, "{secs}");
        }
    }
}
