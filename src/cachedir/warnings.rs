//! One rate-limited warning: at most one per period, the rest counted and reported with the next.

use super::*;

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
