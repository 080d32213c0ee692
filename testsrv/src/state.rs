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
    /// Identity and permissions, by access key id.
    pub(crate) iam: Mutex<Iam>,
    /// Plans that apply only to requests to one bucket, each with its own counters and dice.
    bucket_faults: Mutex<HashMap<String, FaultState>>,
    next_seq: AtomicU64,
}

/// Who an access key is (STS `GetCallerIdentity`) and what it may read.
#[derive(Debug)]
pub(crate) struct Iam {
    /// `GetCallerIdentity` answers (else it answers 400 `InvalidAction`, like a store without STS).
    pub(crate) sts: bool,
    /// The ARN of an access key; a key without one has [`crate::default_arn`].
    pub(crate) arns: HashMap<String, String>,
    /// (access key, bucket) → the key prefixes it may read; a pair without a rule may do anything.
    pub(crate) prefixes: HashMap<(String, String), Vec<String>>,
}

impl Default for Iam {
    fn default() -> Self {
        Iam {
            sts: true,
            arns: HashMap::new(),
            prefixes: HashMap::new(),
        }
    }
}

impl Iam {
    pub(crate) fn arn(&self, access_key: &str) -> String {
        self.arns
            .get(access_key)
            .cloned()
            .unwrap_or_else(|| crate::default_arn(access_key))
    }

    /// Whether `access_key` may read `key` (object requests) or list under `list_prefix` in `bucket`.
    /// A listing is allowed when its prefix is inside an allowed prefix or leads to one (as an IAM
    /// policy that allows `s3:prefix` values "" and "team-a/").
    pub(crate) fn allows(&self, access_key: &str, bucket: &str, key: Option<&str>, list_prefix: Option<&str>) -> bool {
        let Some(allowed) = self.prefixes.get(&(access_key.to_owned(), bucket.to_owned())) else {
            return true;
        };
        match (key, list_prefix) {
            (Some(k), _) => allowed.iter().any(|a| k.starts_with(a.as_str())),
            (None, Some(p)) => allowed.iter().any(|a| p.starts_with(a.as_str()) || a.starts_with(p)),
            (None, None) => true,
        }
    }
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

    pub(crate) fn iam(&self) -> MutexGuard<'_, Iam> {
        lock(&self.iam)
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
