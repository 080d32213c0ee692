//! One rate-limited warning, used by every layer that may hit the same failure many times a second
//! (the disk cache, persisted metadata, the shared tier): at most one warning per period, the rest
//! logged at debug and counted in the next warning.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

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

    pub fn warn(&self, msg: fmt::Arguments) {
        let mut s = self.state.lock().unwrap();
        if s.0.is_none_or(|t| t.elapsed() >= self.period) {
            let suppressed = std::mem::take(&mut s.1);
            s.0 = Some(Instant::now());
            if suppressed > 0 {
                warn!(suppressed, "{msg}");
            } else {
                warn!("{msg}");
            }
        } else {
            s.1 += 1;
            debug!("{msg}");
        }
    }

    /// Warnings not logged since the last one that was.
    pub fn suppressed(&self) -> u64 {
        self.state.lock().unwrap().1
    }
}

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
        w.warn(format_args!("first"));
        assert_eq!(w.suppressed(), 0);
        w.warn(format_args!("second"));
        w.warn(format_args!("third"));
        assert_eq!(w.suppressed(), 2);
        let every_time = Warnings::new(Duration::ZERO);
        every_time.warn(format_args!("a"));
        every_time.warn(format_args!("b"));
        assert_eq!(every_time.suppressed(), 0);
    }
}
