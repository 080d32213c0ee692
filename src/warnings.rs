//! One rate-limited warning, used by every layer that may hit the same failure many times a second
//! (the disk cache, persisted metadata, the shared tier): at most one warning per period, the rest
//! logged at debug and counted in the next warning. Log with [`warn_limited!`], which logs under
//! the caller's module, so a warning still says which layer it comes from.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one warning of a kind per this period.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Rate-limited warnings of one kind: at most one per period is logged as a warning; the
/// others go to the debug log and are counted in the next warning.
pub struct Warnings {
    period: Duration,
    /// Last warning and how many were suppressed since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Warnings {
    pub const fn new(period: Duration) -> Warnings {
        Warnings {
            period,
            state: Mutex::new((None, 0)),
        }
    }

    /// Whether a warning may be logged now: `Some(n)` with the number suppressed since the last
    /// one, or `None` (this one is counted as suppressed; log it at debug).
    pub fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap();
        if s.0.is_none_or(|t| t.elapsed() >= self.period) {
            s.0 = Some(Instant::now());
            Some(std::mem::take(&mut s.1))
        } else {
            s.1 += 1;
            None
        }
    }

    /// Warnings not logged since the last one that was.
    pub fn suppressed(&self) -> u64 {
        self.state.lock().unwrap().1
    }
}

/// `warn_limited!(warnings, "format", args...)`: a warning through `warnings` (a [`Warnings`]),
/// logged under the calling module: a warning when allowed (with `suppressed = n` when some were
/// held back), else at debug.
macro_rules! warn_limited {
    ($warnings:expr, $($arg:tt)+) => {
        match $warnings.allow() {
            Some(0) => ::tracing::warn!($($arg)+),
            Some(suppressed) => ::tracing::warn!(suppressed, $($arg)+),
            None => ::tracing::debug!($($arg)+),
        }
    };
}
pub(crate) use warn_limited;

impl Default for Warnings {
    fn default() -> Warnings {
        Warnings::new(WARN_EVERY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_rate_limited_and_counted() {
        let w = Warnings::new(Duration::from_secs(3600));
        assert_eq!(w.allow(), Some(0));
        warn_limited!(w, "second");
        warn_limited!(w, "third {}", 3);
        assert_eq!(w.suppressed(), 2);
        let every_time = Warnings::new(Duration::ZERO);
        every_time.allow();
        assert_eq!(every_time.allow(), Some(0));
        assert_eq!(every_time.suppressed(), 0);
        let held = Warnings::new(Duration::from_millis(300));
        held.allow();
        assert_eq!(held.allow(), None);
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(
            held.allow(),
            Some(1),
            "the next allowed warning reports the suppressed one"
        );
    }
}
