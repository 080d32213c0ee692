//! The state shared between the [`crate::TestServer`] handle and the request handlers: object store, stats and
//! request log, latency/bandwidth settings and the active fault plan.

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
    faults: Mutex<Option<FaultState>>,
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

    pub(crate) fn set_faults(&self, faults: Option<FaultState>) {
        *lock(&self.faults) = faults;
    }

    pub(crate) fn roll_fault(&self, op: Op, key: Option<&str>) -> Option<FaultKind> {
        lock(&self.faults).as_mut()?.roll(op, key)
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed) + 1
    }
}
