//! The shared tier's circuit breaker: after a failure of the shared bucket, the tier is skipped
//! for an interval, then one request probes it; a dead bucket costs one failure per interval.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics::SharedTierMetrics;

/// Skips the tier for an interval after a failure, then lets one request probe it.
pub(super) struct Breaker {
    interval: Duration,
    open_until: Mutex<Option<Instant>>,
    metrics: SharedTierMetrics,
}

impl Breaker {
    pub(super) fn new(interval: Duration, metrics: SharedTierMetrics) -> Breaker {
        Breaker {
            interval,
            open_until: Mutex::new(None),
            metrics,
        }
    }

    /// Whether a request may go to the shared bucket now. After the interval, the first caller
    /// is let through as a probe and the breaker stays open for the others.
    pub(super) fn allows(&self) -> bool {
        let mut open = self.open_until.lock().unwrap();
        match *open {
            None => true,
            Some(until) if Instant::now() < until => false,
            Some(_) => {
                *open = Some(Instant::now() + self.interval);
                true
            }
        }
    }

    pub(super) fn success(&self) {
        let mut open = self.open_until.lock().unwrap();
        if open.take().is_some() {
            self.metrics.breaker_open.set(0);
        }
    }

    /// Opens the breaker; returns whether it was closed before (worth a warning).
    pub(super) fn failure(&self) -> bool {
        let mut open = self.open_until.lock().unwrap();
        let was_closed = open.is_none();
        *open = Some(Instant::now() + self.interval);
        self.metrics.breaker_open.set(1);
        was_closed
    }
}
