//! Expiry arithmetic: every answer is trusted for its TTL counted from when it was fetched from
//! S3, not from when it entered a cache, so neither this daemon nor the kernel keeps it longer
//! than the TTL after the fetch, however it travelled (memory, a persisted record, another
//! process).
//!
//! Positive answers follow the metadata TTL, negative ones the negative TTL; `None` is
//! `indefinite` and never expires.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use moka::Expiry;

use super::{DirListing, Lookup, Resolved};

/// What is left of `ttl` for an answer fetched at `fetched`.
pub(super) fn remaining(ttl: Option<Duration>, fetched: Instant) -> Option<Duration> {
    ttl.map(|t| t.saturating_sub(fetched.elapsed()))
}

/// The two TTLs of the namespace (`None`: indefinite).
#[derive(Clone, Copy, Debug)]
pub(super) struct Ttls {
    pub positive: Option<Duration>,
    pub negative: Option<Duration>,
}

impl Ttls {
    /// The TTL an answer follows: the positive one for an entry, the negative one for "no such name".
    pub(super) fn of(&self, entry: &Lookup) -> Option<Duration> {
        if entry.is_some() { self.positive } else { self.negative }
    }

    /// How much longer `r` may be trusted.
    pub(super) fn left(&self, r: &Resolved) -> Option<Duration> {
        remaining(self.of(&r.entry), r.fetched)
    }
}

/// Expiry of the lookup cache: each answer after what is left of its own TTL.
impl Expiry<Arc<str>, Resolved> for Ttls {
    fn expire_after_create(&self, _key: &Arc<str>, value: &Resolved, _now: Instant) -> Option<Duration> {
        self.left(value)
    }
    fn expire_after_update(&self, _: &Arc<str>, value: &Resolved, _: Instant, _: Option<Duration>) -> Option<Duration> {
        self.left(value)
    }
}

/// Expiry of the listing cache: what is left of the positive TTL.
pub(super) struct ListingExpiry(pub Option<Duration>);

impl Expiry<Arc<str>, Arc<DirListing>> for ListingExpiry {
    fn expire_after_create(&self, _key: &Arc<str>, value: &Arc<DirListing>, _now: Instant) -> Option<Duration> {
        remaining(self.0, value.fetched)
    }
    fn expire_after_update(
        &self,
        _: &Arc<str>,
        value: &Arc<DirListing>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        remaining(self.0, value.fetched)
    }
}

/// When an answer was fetched from S3, on both clocks: the `Instant` for TTLs in this process,
/// the wall-clock time for persisted records (an `Instant` means nothing after a restart).
#[derive(Clone, Copy)]
pub(super) struct Stamp {
    pub instant: Instant,
    pub wall: SystemTime,
}

impl Stamp {
    pub(super) fn now() -> Stamp {
        Stamp {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// The `Instant` at which an answer fetched at wall-clock time `at` was fetched, if it is still
/// fresh under `ttl` (`None`: indefinite). A time in the future (the clock was set back) has no
/// known age: only an indefinite TTL trusts it.
pub(super) fn restore(at: SystemTime, ttl: Option<Duration>) -> Option<Instant> {
    let age = match SystemTime::now().duration_since(at) {
        Ok(age) => age,
        Err(_) if ttl.is_none() => Duration::ZERO,
        Err(_) => return None,
    };
    if ttl.is_some_and(|t| age >= t) {
        return None;
    }
    Instant::now().checked_sub(age)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn what_is_left_counts_down_from_the_fetch() {
        let fetched = Instant::now() - Duration::from_secs(20);
        let left = remaining(Some(MIN), fetched).unwrap();
        assert!(
            left <= Duration::from_secs(40) && left > Duration::from_secs(30),
            "{left:?}"
        );
        assert_eq!(remaining(Some(Duration::from_secs(10)), fetched), Some(Duration::ZERO));
        assert_eq!(remaining(None, fetched), None);
    }

    #[test]
    fn negative_answers_follow_the_negative_ttl() {
        let ttls = Ttls {
            positive: None,
            negative: Some(MIN),
        };
        assert_eq!(ttls.of(&Some(super::super::Entry::Dir)), None);
        assert_eq!(ttls.of(&None), Some(MIN));
        let r = Resolved {
            entry: None,
            fetched: Instant::now() - Duration::from_secs(90),
        };
        assert_eq!(ttls.left(&r), Some(Duration::ZERO));
    }

    #[test]
    fn a_persisted_fetch_time_becomes_an_instant_of_the_same_age() {
        let thirty_ago = SystemTime::now() - Duration::from_secs(30);
        let fetched = restore(thirty_ago, Some(MIN)).unwrap();
        let age = fetched.elapsed();
        assert!(age >= Duration::from_secs(30) && age < MIN, "{age:?}");
        assert!(restore(thirty_ago, None).is_some(), "indefinite");
        assert_eq!(restore(thirty_ago, Some(Duration::from_secs(30))), None, "stale");
        assert_eq!(restore(thirty_ago, Some(Duration::ZERO)), None);
    }

    #[test]
    fn a_fetch_time_in_the_future_is_trusted_only_indefinitely() {
        let future = SystemTime::now() + Duration::from_secs(3600);
        assert_eq!(restore(future, Some(Duration::from_secs(7200))), None);
        assert!(restore(future, None).unwrap().elapsed() < MIN, "counted as fetched now");
    }
}
