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
