//! The state shared between the [`crate::TestServer`] handle and the request handlers: object store, stats and
//! request log, latency/bandwidth settings and the active fault plans (server-wide and per bucket).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use crate::faults::{FaultKind, FaultState};
use crate::stats::{Op, Stats};
use crate::store::Store;

#[derive(Default)]
pub(crate) struct Shared {
    store: RwLock<Store>,
    stats: Mutex<Stats>,
    settings: Mutex<Settings>,
    /// Latency for requests to one bucket, instead of `Settings::latency`.
    bucket_latency: Mutex<HashMap<String, Duration>>,
    faults: Mutex<Option<FaultState>>,
    /// Plans that apply only to requests to one bucket, each with its own counters and dice.
    bucket_faults: Mutex<HashMap<String, FaultState>>,
    next_seq: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Settings {
    pub(crate) latency: Duration,
    pub(crate) bandwidth: Option<u64>,
}

/// Locks ignoring poisoning: a panicking test thread must not wedge the server.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn store(&self) -> RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn store_mut(&self) -> RwLockWriteGuard<'_, Store> {
        self.store.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn stats(&self) -> MutexGuard<'_, Stats> {
        lock(&self.stats)
    }

    pub(crate) fn settings(&self) -> Settings {
        *lock(&self.settings)
    }

    pub(crate) fn update_settings(&self, f: impl FnOnce(&mut Settings)) {
        f(&mut lock(&self.settings));
    }

    pub(crate) fn bucket_latency(&self, bucket: &str) -> Option<Duration> {
        lock(&self.bucket_latency).get(bucket).copied()
    }

    pub(crate) fn set_bucket_latency(&self, bucket: &str, latency: Option<Duration>) {
        let mut all = lock(&self.bucket_latency);
        match latency {
            Some(d) => all.insert(bucket.to_owned(), d),
            None => all.remove(bucket),
        };
    }

    pub(crate) fn set_faults(&self, faults: Option<FaultState>) {
        *lock(&self.faults) = faults;
    }

    pub(crate) fn set_bucket_faults(&self, bucket: &str, faults: Option<FaultState>) {
        let mut plans = lock(&self.bucket_faults);
        match faults {
            Some(f) => plans.insert(bucket.to_owned(), f),
            None => plans.remove(bucket),
        };
    }

    pub(crate) fn clear_all_faults(&self) {
        *lock(&self.faults) = None;
        lock(&self.bucket_faults).clear();
    }

    /// The bucket's own plan decides first; when it injects nothing, the server-wide plan rolls.
    pub(crate) fn roll_fault(&self, op: Op, bucket: &str, key: Option<&str>) -> Option<FaultKind> {
        let own = lock(&self.bucket_faults)
            .get_mut(bucket)
            .and_then(|f| f.roll(op, bucket, key));
        own.or_else(|| lock(&self.faults).as_mut()?.roll(op, bucket, key))
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed) + 1
    }
}
