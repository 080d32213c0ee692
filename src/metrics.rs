//! Every metric the daemon exports, named in one place, and their Prometheus text encoding.
//!
//! One `Metrics` per daemon is created by `app` and handed to the layers that count (store,
//! cache, read, FUSE adapter). The exporter (`app/http.rs`) serves `encode()` at `/metrics`.
//!
//! Each metric family's name is a constant below: `Metrics::new` registers it, and `stats`
//! reads it back with [`counter_name`] or [`gauge_name`], so the two cannot drift apart. The
//! names are an interface (dashboards, alerts, docs/CONFIGURATION.md): never rename one.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The prefix of every exported name.
pub const PREFIX: &str = "s3cachefs";

// Metric families, by the name they are registered under. The exported name adds the prefix,
// and `_total` for a counter: `CACHE_HITS` is exported as `s3cachefs_cache_hits_total`.

/// Counter, labels `operation` and `status`: S3 request attempts, every retry included.
pub const S3_REQUESTS: &str = "s3_requests";
/// Histogram, label `operation`: the duration of each S3 attempt, body included.
pub const S3_REQUEST_DURATION_SECONDS: &str = "s3_request_duration_seconds";
/// Counter: object bytes received from S3.
pub const S3_BYTES: &str = "s3_bytes";
/// Counter: opens answered with a backing file (passthrough).
pub const PASSTHROUGH_OPENS: &str = "passthrough_opens";
/// Counter: passthrough opens that reused a backing file already registered for the inode
/// (no file open, index read or registration).
pub const PASSTHROUGH_BACKING_REUSES: &str = "passthrough_backing_reuses";
/// Counter: bytes returned to readers through the daemon.
pub const READ_BYTES: &str = "read_bytes";
/// Counter, label `operation`: FUSE requests handled.
pub const FUSE_OPERATIONS: &str = "fuse_operations";
/// Counter, labels `operation` and `errno`: FUSE requests answered with an error.
pub const FUSE_ERRORS: &str = "fuse_errors";
/// Counter: blocks served from the disk cache.
pub const CACHE_HITS: &str = "cache_hits";
/// Counter: blocks not in the disk cache.
pub const CACHE_MISSES: &str = "cache_misses";
/// Counter: bytes served from the disk cache.
pub const CACHE_HIT_BYTES: &str = "cache_hit_bytes";
/// Counter: block bytes written to the disk cache.
pub const CACHE_WRITTEN_BYTES: &str = "cache_written_bytes";
/// Counter: files evicted from the disk cache by this process.
pub const CACHE_EVICTIONS: &str = "cache_evictions";
/// Counter: bytes freed by those evictions.
pub const CACHE_EVICTED_BYTES: &str = "cache_evicted_bytes";
/// Counter: invalid files found in the disk cache and removed.
pub const CACHE_CORRUPT_BLOCKS: &str = "cache_corrupt_blocks";
/// Counter: blocks that could not be written to the disk cache.
pub const CACHE_WRITE_FAILURES: &str = "cache_write_failures";
/// Counter: blocks not cached because the cache bound could not be met.
pub const CACHE_SKIPPED_FULL: &str = "cache_skipped_full";
/// Counter: waits for a disk cache lock another thread or process held (a block being
/// fetched, a shard directory, the ledger) that reached their deadline; the read went on
/// without the lock (fetching the block itself, or not caching it).
pub const CACHE_LOCK_WAIT_TIMEOUTS: &str = "cache_lock_wait_timeouts";
/// Gauge: bytes the disk cache occupies, for every process sharing it.
pub const CACHE_SIZE_BYTES: &str = "cache_size_bytes";
/// Counter, labels `operation` and `status`: requests to the shared tier's bucket.
pub const SHARED_REQUESTS: &str = "shared_cache_requests";
/// Counter: blocks served from the shared tier.
pub const SHARED_HITS: &str = "shared_cache_hits";
/// Counter: blocks not in the shared tier.
pub const SHARED_MISSES: &str = "shared_cache_misses";
/// Counter: bytes served from the shared tier.
pub const SHARED_HIT_BYTES: &str = "shared_cache_hit_bytes";
/// Counter: shared-tier objects that did not validate (corrupt, forged, foreign) and were not served.
pub const SHARED_INVALID: &str = "shared_cache_invalid_blocks";
/// Counter: failed requests to the shared tier (each opens the breaker).
pub const SHARED_ERRORS: &str = "shared_cache_errors";
/// Counter: misses that waited for another node's fetch (a lease held elsewhere).
pub const SHARED_LEASE_WAITS: &str = "shared_cache_lease_waits";
/// Counter: of those, waits that ran out their bound and fetched from the origin.
pub const SHARED_LEASE_TIMEOUTS: &str = "shared_cache_lease_timeouts";
/// Counter: blocks written to the shared tier (or found already there).
pub const SHARED_WRITES: &str = "shared_cache_writes";
/// Counter: bytes of those blocks.
pub const SHARED_WRITTEN_BYTES: &str = "shared_cache_written_bytes";
/// Counter: block writes dropped because the write queue was full.
pub const SHARED_WRITE_DROPS: &str = "shared_cache_write_drops";
/// Gauge: 1 while the shared tier is skipped after a failure (circuit breaker open), else 0.
pub const SHARED_BREAKER_OPEN: &str = "shared_cache_breaker_open";
/// Gauge: the mounts of the process serving from their cache because S3 did not answer at start
/// (offline restart), each counted out once S3 answers: 1 or 0 for `mount`.
pub const ORIGIN_DEGRADED: &str = "origin_degraded";

/// Histogram, label `operation`: time from a FUSE request's arrival to its reply, for the
/// requests answered on the runtime (lookup, getattr, open, read, opendir, ...).
pub const FUSE_DURATION: &str = "fuse_operation_duration_seconds";

/// Counter: blocks served from the memory tier (a coalesced wait for another reader's fetch
/// counts as a hit: it sent nothing below).
pub const MEMORY_HITS: &str = "memory_cache_hits";
/// Counter: blocks the memory tier asked the tiers below for.
pub const MEMORY_MISSES: &str = "memory_cache_misses";
/// Counter: bytes served from the memory tier.
pub const MEMORY_HIT_BYTES: &str = "memory_cache_hit_bytes";
/// Gauge: bytes of blocks the memory tier holds (part of `--max-prefetch-memory`).
pub const MEMORY_BYTES: &str = "memory_cache_bytes";
/// Gauge: blocks being fetched from below the memory tier right now (demand reads, prefetch and
/// random ranges), each holding one in-flight slot of `--max-prefetch-memory`.
pub const MEMORY_IN_FLIGHT: &str = "memory_in_flight_blocks";
/// Gauge: inodes the daemon holds because the kernel knows them (the root included); drops
/// as the kernel forgets names.
pub const INODES: &str = "inodes";

/// The exported name of the counter registered as `name`: `s3cachefs_<name>_total`.
pub fn counter_name(name: &str) -> String {
    format!("{PREFIX}_{name}_total")
}

/// The exported name of the gauge registered as `name`: `s3cachefs_<name>`. A histogram's
/// series add `_bucket`, `_sum` and `_count` to it.
pub fn gauge_name(name: &str) -> String {
    format!("{PREFIX}_{name}")
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct S3Labels {
    /// ListObjectsV2, HeadObject, GetObject; PutObject, DeleteObject from a writable store.
    pub operation: &'static str,
    /// HTTP status, or `error` when no response arrived (timeout, connection failure).
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub operation: &'static str,
    pub errno: i32,
}

type HistogramFamily = Family<OpLabels, Histogram, fn() -> Histogram>;

/// Counters of the disk cache.
#[derive(Debug, Default, Clone)]
pub struct CacheMetrics {
    pub hits: Counter,
    pub misses: Counter,
    pub hit_bytes: Counter,
    pub written_bytes: Counter,
    pub evictions: Counter,
    pub evicted_bytes: Counter,
    pub corrupt: Counter,
    pub write_failures: Counter,
    pub skipped_full: Counter,
    pub lock_timeouts: Counter,
}

/// The shared tier's counters (cheap clones share the same values).
#[derive(Clone, Debug, Default)]
pub struct SharedTierMetrics {
    pub hits: Counter,
    pub misses: Counter,
    pub hit_bytes: Counter,
    pub invalid: Counter,
    pub errors: Counter,
    pub lease_waits: Counter,
    pub lease_timeouts: Counter,
    pub writes: Counter,
    pub written_bytes: Counter,
    pub write_drops: Counter,
    pub breaker_open: Gauge,
}

/// The memory tier's counters and gauges (cheap clones share the same values).
#[derive(Clone, Debug, Default)]
pub struct MemoryTierMetrics {
    pub hits: Counter,
    pub misses: Counter,
    pub hit_bytes: Counter,
    pub bytes: Gauge,
    pub in_flight: Gauge,
}

/// Which bucket a store talks to, for counting its requests apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreRole {
    /// The mounted source (`s3_requests`).
    Origin,
    /// The shared tier's bucket (`shared_cache_requests`).
    SharedTier,
}

pub struct Metrics {
    registry: Registry,
    pub shared: SharedTierMetrics,
    pub memory: MemoryTierMetrics,
    pub shared_requests: Family<S3Labels, Counter>,
    pub s3_requests: Family<S3Labels, Counter>,
    pub s3_duration: HistogramFamily,
    pub s3_bytes: Counter,
    pub read_bytes: Counter,
    pub passthrough_opens: Counter,
    pub passthrough_backing_reuses: Counter,
    pub fuse_ops: Family<OpLabels, Counter>,
    pub fuse_errors: Family<ErrorLabels, Counter>,
    pub fuse_duration: HistogramFamily,
    pub cache: CacheMetrics,
    cache_bytes: Gauge<u64, AtomicU64>,
    cache_bytes_source: Mutex<Option<Box<dyn Fn() -> u64 + Send + Sync>>>,
    /// See [`ORIGIN_DEGRADED`].
    pub origin_degraded: Gauge,
    inodes: Gauge<u64, AtomicU64>,
    inodes_source: Mutex<Option<Box<dyn Fn() -> u64 + Send + Sync>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn fuse_histogram() -> Histogram {
    // 100 µs to ~13 s in powers of two: a cache hit answers in well under a millisecond, a
    // request that waits on S3 in tens of milliseconds, one that retries in seconds.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~33 s in powers of two: S3 first bytes land around 10-50 ms, retries go higher.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let s3_requests = Family::<S3Labels, Counter>::default();
        let s3_duration: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let s3_bytes = Counter::default();
        let read_bytes = Counter::default();
        let passthrough_opens = Counter::default();
        let passthrough_backing_reuses = Counter::default();
        let fuse_ops = Family::<OpLabels, Counter>::default();
        let fuse_errors = Family::<ErrorLabels, Counter>::default();
        let fuse_duration: HistogramFamily = Family::new_with_constructor(fuse_histogram);
        let cache = CacheMetrics::default();
        let cache_bytes = Gauge::<u64, AtomicU64>::default();
        let shared = SharedTierMetrics::default();
        let memory = MemoryTierMetrics::default();
        for (name, help, c) in [
            (MEMORY_HITS, "Blocks served from the memory tier", &memory.hits),
            (
                MEMORY_MISSES,
                "Blocks the memory tier fetched from the tiers below",
                &memory.misses,
            ),
            (MEMORY_HIT_BYTES, "Bytes served from the memory tier", &memory.hit_bytes),
        ] {
            registry.register(name, help, c.clone());
        }
        registry.register(
            MEMORY_BYTES,
            "Bytes of blocks held by the memory tier",
            memory.bytes.clone(),
        );
        registry.register(
            MEMORY_IN_FLIGHT,
            "Blocks being fetched from below the memory tier, each holding an in-flight slot",
            memory.in_flight.clone(),
        );
        let shared_requests = Family::<S3Labels, Counter>::default();
        registry.register(
            SHARED_REQUESTS,
            "Requests to the shared tier's bucket by operation and HTTP status",
            shared_requests.clone(),
        );
        for (name, help, c) in [
            (SHARED_HITS, "Blocks served from the shared tier", &shared.hits),
            (SHARED_MISSES, "Blocks not in the shared tier", &shared.misses),
            (SHARED_HIT_BYTES, "Bytes served from the shared tier", &shared.hit_bytes),
            (
                SHARED_INVALID,
                "Shared-tier objects that did not validate and were not served",
                &shared.invalid,
            ),
            (SHARED_ERRORS, "Failed requests to the shared tier", &shared.errors),
            (
                SHARED_LEASE_WAITS,
                "Misses that waited for another node's fetch of the block",
                &shared.lease_waits,
            ),
            (
                SHARED_LEASE_TIMEOUTS,
                "Lease waits that ran out their bound and fetched from the origin",
                &shared.lease_timeouts,
            ),
            (SHARED_WRITES, "Blocks written to the shared tier", &shared.writes),
            (
                SHARED_WRITTEN_BYTES,
                "Bytes written to the shared tier",
                &shared.written_bytes,
            ),
            (
                SHARED_WRITE_DROPS,
                "Shared-tier writes dropped because the write queue was full",
                &shared.write_drops,
            ),
        ] {
            registry.register(name, help, c.clone());
        }
        let origin_degraded = Gauge::default();
        registry.register(
            ORIGIN_DEGRADED,
            "1 while the mount serves from its cache because S3 did not answer at start, else 0",
            origin_degraded.clone(),
        );
        registry.register(
            SHARED_BREAKER_OPEN,
            "1 while the shared tier is skipped after a failure, else 0",
            shared.breaker_open.clone(),
        );
        registry.register(
            S3_REQUESTS,
            "S3 requests by operation and HTTP status (every attempt)",
            s3_requests.clone(),
        );
        registry.register(
            S3_REQUEST_DURATION_SECONDS,
            "Duration of S3 requests, body included",
            s3_duration.clone(),
        );
        registry.register(S3_BYTES, "Object bytes received from S3", s3_bytes.clone());
        registry.register(
            PASSTHROUGH_OPENS,
            "Opens served by handing the kernel the cached file (its reads bypass the daemon)",
            passthrough_opens.clone(),
        );
        registry.register(
            PASSTHROUGH_BACKING_REUSES,
            "Passthrough opens that reused the backing file held for the inode",
            passthrough_backing_reuses.clone(),
        );
        registry.register(
            READ_BYTES,
            "Bytes returned to readers through the mount",
            read_bytes.clone(),
        );
        registry.register(FUSE_OPERATIONS, "FUSE requests handled, by operation", fuse_ops.clone());
        registry.register(
            FUSE_DURATION,
            "Time from a FUSE request's arrival to its reply, by operation (requests answered on the runtime)",
            fuse_duration.clone(),
        );
        registry.register(
            FUSE_ERRORS,
            "FUSE requests answered with an error, by operation and errno",
            fuse_errors.clone(),
        );
        registry.register(CACHE_HITS, "Blocks served from the disk cache", cache.hits.clone());
        registry.register(
            CACHE_MISSES,
            "Blocks not in the disk cache (fetched from S3)",
            cache.misses.clone(),
        );
        registry.register(
            CACHE_HIT_BYTES,
            "Bytes served from the disk cache",
            cache.hit_bytes.clone(),
        );
        registry.register(
            CACHE_WRITTEN_BYTES,
            "Bytes written to the disk cache",
            cache.written_bytes.clone(),
        );
        registry.register(
            CACHE_EVICTIONS,
            "Blocks evicted from the disk cache",
            cache.evictions.clone(),
        );
        registry.register(
            CACHE_EVICTED_BYTES,
            "Bytes evicted from the disk cache",
            cache.evicted_bytes.clone(),
        );
        registry.register(
            CACHE_CORRUPT_BLOCKS,
            "Invalid files found in the disk cache and removed",
            cache.corrupt.clone(),
        );
        registry.register(
            CACHE_WRITE_FAILURES,
            "Blocks that could not be written to the disk cache",
            cache.write_failures.clone(),
        );
        registry.register(
            CACHE_SKIPPED_FULL,
            "Blocks not cached because the cache bound could not be met",
            cache.skipped_full.clone(),
        );
        registry.register(
            CACHE_LOCK_WAIT_TIMEOUTS,
            "Disk cache lock waits that reached their deadline (the read went on without the lock)",
            cache.lock_timeouts.clone(),
        );
        registry.register(
            CACHE_SIZE_BYTES,
            "Bytes the disk cache occupies (all processes sharing it)",
            cache_bytes.clone(),
        );
        let inodes = Gauge::<u64, AtomicU64>::default();
        registry.register(INODES, "Inodes held because the kernel knows them", inodes.clone());
        Metrics {
            registry,
            shared,
            memory,
            shared_requests,
            s3_requests,
            s3_duration,
            s3_bytes,
            read_bytes,
            passthrough_opens,
            passthrough_backing_reuses,
            fuse_ops,
            fuse_errors,
            fuse_duration,
            cache,
            cache_bytes,
            cache_bytes_source: Mutex::new(None),
            origin_degraded,
            inodes,
            inodes_source: Mutex::new(None),
        }
    }

    /// Where the `cache_size_bytes` gauge reads its value at each scrape.
    pub fn set_cache_size_source(&self, f: impl Fn() -> u64 + Send + Sync + 'static) {
        *self.cache_bytes_source.lock().unwrap() = Some(Box::new(f));
    }

    /// Where the `inodes` gauge reads its value at each scrape.
    pub fn set_inodes_source(&self, f: impl Fn() -> u64 + Send + Sync + 'static) {
        *self.inodes_source.lock().unwrap() = Some(Box::new(f));
    }

    /// Records one request attempt of a store in `role`.
    pub fn store_request(&self, role: StoreRole, operation: &'static str, status: Option<u16>, seconds: f64) {
        let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        match role {
            StoreRole::Origin => {
                self.s3_requests.get_or_create(&S3Labels { operation, status }).inc();
                self.s3_duration.get_or_create(&OpLabels { operation }).observe(seconds);
            }
            StoreRole::SharedTier => {
                self.shared_requests
                    .get_or_create(&S3Labels { operation, status })
                    .inc();
            }
        }
    }

    pub fn fuse_op(&self, operation: &'static str) {
        self.fuse_ops.get_or_create(&OpLabels { operation }).inc();
    }

    pub fn fuse_error(&self, operation: &'static str, errno: i32) {
        self.fuse_errors.get_or_create(&ErrorLabels { operation, errno }).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        if let Some(f) = &*self.cache_bytes_source.lock().unwrap() {
            self.cache_bytes.set(f());
        }
        if let Some(f) = &*self.inodes_source.lock().unwrap() {
            self.inodes.set(f());
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Parses Prometheus text into (series, value) pairs, e.g. `("s3cachefs_cache_hits_total", 3.0)`.
pub fn parse_text(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Sum of every series of metric `name` whose labels contain all of `labels` (`k="v"` pairs).
pub fn sum(parsed: &[(String, f64)], name: &str, labels: &[&str]) -> f64 {
    parsed
        .iter()
        .filter(|(s, _)| {
            let (n, l) = s.split_once('{').unwrap_or((s, ""));
            n == name && labels.iter().all(|want| l.contains(want))
        })
        .map(|(_, v)| v)
        .fold(0.0, |a, b| a + b) // not `sum`: an empty f64 sum is -0.0, printed "-0"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_parses_back() {
        let m = Metrics::new();
        m.store_request(StoreRole::Origin, "GetObject", Some(206), 0.02);
        m.store_request(StoreRole::Origin, "GetObject", Some(206), 0.03);
        m.store_request(StoreRole::Origin, "HeadObject", None, 5.0);
        m.cache.hits.inc_by(3);
        m.set_cache_size_source(|| 4096);
        let text = m.encode();
        let p = parse_text(&text);
        assert_eq!(
            sum(&p, "s3cachefs_s3_requests_total", &["operation=\"GetObject\""]),
            2.0
        );
        assert_eq!(sum(&p, "s3cachefs_s3_requests_total", &["status=\"error\""]), 1.0);
        assert_eq!(sum(&p, "s3cachefs_cache_hits_total", &[]), 3.0);
        assert_eq!(sum(&p, "s3cachefs_cache_size_bytes", &[]), 4096.0);
        assert!(text.contains("s3cachefs_s3_request_duration_seconds_bucket"));
    }

    /// The exported names are an interface (docs/CONFIGURATION.md lists them): the constants,
    /// as registered and as `counter_name`/`gauge_name` spell them, give exactly these.
    #[test]
    fn exported_names_are_stable() {
        let m = Metrics::new();
        // Families with labels have no series until something is counted.
        m.store_request(StoreRole::Origin, "GetObject", Some(200), 0.01);
        m.fuse_op("read");
        m.fuse_error("read", 5);
        m.fuse_duration
            .get_or_create(&OpLabels { operation: "read" })
            .observe(0.001);
        m.store_request(StoreRole::SharedTier, "GetObject", Some(404), 0.01);
        let text = m.encode();
        let mut families: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
        families.sort_unstable();
        let want = [
            "s3cachefs_cache_corrupt_blocks counter",
            "s3cachefs_cache_evicted_bytes counter",
            "s3cachefs_cache_evictions counter",
            "s3cachefs_cache_hit_bytes counter",
            "s3cachefs_cache_hits counter",
            "s3cachefs_cache_lock_wait_timeouts counter",
            "s3cachefs_cache_misses counter",
            "s3cachefs_cache_size_bytes gauge",
            "s3cachefs_cache_skipped_full counter",
            "s3cachefs_cache_write_failures counter",
            "s3cachefs_cache_written_bytes counter",
            "s3cachefs_fuse_errors counter",
            "s3cachefs_fuse_operation_duration_seconds histogram",
            "s3cachefs_fuse_operations counter",
            "s3cachefs_inodes gauge",
            "s3cachefs_memory_cache_bytes gauge",
            "s3cachefs_memory_cache_hit_bytes counter",
            "s3cachefs_memory_cache_hits counter",
            "s3cachefs_memory_cache_misses counter",
            "s3cachefs_memory_in_flight_blocks gauge",
            "s3cachefs_origin_degraded gauge",
            "s3cachefs_passthrough_backing_reuses counter",
            "s3cachefs_passthrough_opens counter",
            "s3cachefs_read_bytes counter",
            "s3cachefs_s3_bytes counter",
            "s3cachefs_s3_request_duration_seconds histogram",
            "s3cachefs_s3_requests counter",
            "s3cachefs_shared_cache_breaker_open gauge",
            "s3cachefs_shared_cache_errors counter",
            "s3cachefs_shared_cache_hit_bytes counter",
            "s3cachefs_shared_cache_hits counter",
            "s3cachefs_shared_cache_invalid_blocks counter",
            "s3cachefs_shared_cache_lease_timeouts counter",
            "s3cachefs_shared_cache_lease_waits counter",
            "s3cachefs_shared_cache_misses counter",
            "s3cachefs_shared_cache_requests counter",
            "s3cachefs_shared_cache_write_drops counter",
            "s3cachefs_shared_cache_writes counter",
            "s3cachefs_shared_cache_written_bytes counter",
        ];
        assert_eq!(families, want);

        let counters = [
            (S3_REQUESTS, "s3cachefs_s3_requests_total"),
            (S3_BYTES, "s3cachefs_s3_bytes_total"),
            (PASSTHROUGH_OPENS, "s3cachefs_passthrough_opens_total"),
            (PASSTHROUGH_BACKING_REUSES, "s3cachefs_passthrough_backing_reuses_total"),
            (READ_BYTES, "s3cachefs_read_bytes_total"),
            (FUSE_OPERATIONS, "s3cachefs_fuse_operations_total"),
            (FUSE_ERRORS, "s3cachefs_fuse_errors_total"),
            (CACHE_HITS, "s3cachefs_cache_hits_total"),
            (CACHE_MISSES, "s3cachefs_cache_misses_total"),
            (CACHE_HIT_BYTES, "s3cachefs_cache_hit_bytes_total"),
            (CACHE_WRITTEN_BYTES, "s3cachefs_cache_written_bytes_total"),
            (CACHE_EVICTIONS, "s3cachefs_cache_evictions_total"),
            (CACHE_EVICTED_BYTES, "s3cachefs_cache_evicted_bytes_total"),
            (CACHE_CORRUPT_BLOCKS, "s3cachefs_cache_corrupt_blocks_total"),
            (CACHE_WRITE_FAILURES, "s3cachefs_cache_write_failures_total"),
            (CACHE_SKIPPED_FULL, "s3cachefs_cache_skipped_full_total"),
            (CACHE_LOCK_WAIT_TIMEOUTS, "s3cachefs_cache_lock_wait_timeouts_total"),
            (SHARED_REQUESTS, "s3cachefs_shared_cache_requests_total"),
            (SHARED_HITS, "s3cachefs_shared_cache_hits_total"),
            (SHARED_MISSES, "s3cachefs_shared_cache_misses_total"),
            (SHARED_HIT_BYTES, "s3cachefs_shared_cache_hit_bytes_total"),
            (SHARED_INVALID, "s3cachefs_shared_cache_invalid_blocks_total"),
            (SHARED_ERRORS, "s3cachefs_shared_cache_errors_total"),
            (SHARED_LEASE_WAITS, "s3cachefs_shared_cache_lease_waits_total"),
            (SHARED_LEASE_TIMEOUTS, "s3cachefs_shared_cache_lease_timeouts_total"),
            (SHARED_WRITES, "s3cachefs_shared_cache_writes_total"),
            (SHARED_WRITTEN_BYTES, "s3cachefs_shared_cache_written_bytes_total"),
            (SHARED_WRITE_DROPS, "s3cachefs_shared_cache_write_drops_total"),
            (MEMORY_HITS, "s3cachefs_memory_cache_hits_total"),
            (MEMORY_MISSES, "s3cachefs_memory_cache_misses_total"),
            (MEMORY_HIT_BYTES, "s3cachefs_memory_cache_hit_bytes_total"),
        ];
        let series: Vec<String> = parse_text(&text)
            .into_iter()
            .map(|(s, _)| s.split('{').next().unwrap().to_string())
            .collect();
        for (name, exported) in counters {
            assert_eq!(counter_name(name), exported);
            assert!(series.contains(&counter_name(name)), "{exported} is not exported");
        }
        assert_eq!(gauge_name(CACHE_SIZE_BYTES), "s3cachefs_cache_size_bytes");
        assert!(series.contains(&gauge_name(CACHE_SIZE_BYTES)));
        assert_eq!(gauge_name(INODES), "s3cachefs_inodes");
        assert!(series.contains(&gauge_name(INODES)));
        assert_eq!(gauge_name(SHARED_BREAKER_OPEN), "s3cachefs_shared_cache_breaker_open");
        assert!(series.contains(&gauge_name(SHARED_BREAKER_OPEN)));
        let histogram = gauge_name(S3_REQUEST_DURATION_SECONDS);
        assert!(series.contains(&format!("{histogram}_bucket")));
    }
}
