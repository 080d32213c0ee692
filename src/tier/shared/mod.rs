//! The shared tier: blocks kept in an S3 bucket (an S3 Express One Zone directory bucket in
//! production) that every node of a cluster reads and writes, so a cluster fetches a block from
//! the origin about once, whatever the number of nodes.
//!
//! - **Objects.** Block `i` of an object version lives at
//!   `<prefix>s3cachefs/v1/blocks/<hash>/<i>`, where `<hash>` covers the source, key, ETag and block
//!   size (`blockfmt::object_hash`): a changed object never matches old blocks. Each object is a
//!   self-describing block file (`blockfmt`: format version, source, key, ETag, block size, index,
//!   length, crc32c of header and data), optionally followed by an HMAC-SHA256 tag over all of it
//!   (`--shared-cache-key-file`). Everything is checked on every read; a mismatch is a miss
//!   (counted, logged), never data.
//! - **Writes** are conditional (`If-None-Match: *`): the first writer wins, an existing object
//!   counts as success, no valid block is overwritten (an invalid object, met by a writer, is
//!   deleted and written anew). They go through a bounded queue drained in the
//!   background, so a reader never waits for them; a full queue drops the write (counted).
//! - **Cross-node coalescing.** A node that misses a block takes a lease first: a small object
//!   next to the block, created with a conditional PUT and holding its expiry. The holder
//!   fetches from the origin and writes the block, and keeps the lease once the block is stored
//!   (the lifecycle rule expires both), so a node that missed the block just before finds the
//!   lease taken and waits instead of fetching again; a created lease thus means the block is
//!   still to be fetched. The others poll for the block for at most `lease_wait` (and look once
//!   more if the lease is released, which happens when the holder could not store the block),
//!   then fetch from the origin themselves. A crashed holder delays the others by at most that
//!   bound; its lease expires after `2 × lease_wait` and is then taken over.
//! - **Failures never fail a read.** Any error of the shared bucket (unreachable, slow, throttled,
//!   denied) passes the request to the origin, and opens a circuit breaker: for
//!   `breaker_interval` the tier is skipped, then one request probes it again. A dead tier costs
//!   one timeout per interval, not one per block.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::debug;

mod breaker;
mod object;

use self::breaker::Breaker;
use self::object::TRAILER_LEN;
use super::{Below, Tier};
use crate::blockfmt;
use crate::metrics::SharedTierMetrics;
use crate::object::BlockRef;
use crate::store::{PutOutcome, StoreError, WritableStore};
use crate::warnings::Warnings;

/// How the shared tier behaves.
#[derive(Clone, Debug)]
pub struct SharedTierSettings {
    /// Key prefix inside the shared bucket (empty or ending in `/`).
    pub prefix: String,
    /// Read blocks, never write blocks or leases.
    pub read_only: bool,
    /// HMAC-SHA256 key: blocks are signed with it, and blocks without a valid tag are not served.
    pub key: Option<Vec<u8>>,
    /// How long a node waits for another node's fetch of a block before fetching it itself.
    pub lease_wait: Duration,
    /// How long the tier is skipped after a failure.
    pub breaker_interval: Duration,
    /// Blocks waiting to be written; more are dropped.
    pub write_queue: usize,
    /// Block writes in flight at once: enough to keep up with a node reading from the origin at
    /// full speed, since a dropped write sends the nodes waiting for the block to the origin
    /// (docs/BENCHMARKS.md: 4 writers dropped 77 of 508 writes in the 8-node rows, 16 none).
    pub write_concurrency: usize,
    /// Wait for room in the write queue instead of dropping the write (`warm`, whose purpose is
    /// to fill the tier; never a mount, whose readers must not wait).
    pub wait_for_queue: bool,
}

impl SharedTierSettings {
    pub fn new(prefix: String) -> SharedTierSettings {
        SharedTierSettings {
            prefix,
            read_only: false,
            key: None,
            lease_wait: Duration::from_secs(2),
            breaker_interval: Duration::from_secs(30),
            write_queue: 64,
            write_concurrency: 16,
            wait_for_queue: false,
        }
    }
}

pub struct SharedTier {
    inner: Arc<Inner>,
    writes: Option<mpsc::Sender<Write>>,
}

struct Inner {
    store: Arc<dyn WritableStore>,
    settings: SharedTierSettings,
    metrics: SharedTierMetrics,
    breaker: Breaker,
    warnings: Warnings,
    /// Identifies this process in the leases it takes (for logs and debugging).
    node: String,
    /// Writes queued or in flight, and a wake-up for `flush` when it drops to zero.
    pending: std::sync::atomic::AtomicUsize,
    drained: tokio::sync::Notify,
}

struct Write {
    block: BlockRef,
    data: Bytes,
    /// The lease this node holds for the block, released once the block is written.
    lease: Option<String>,
    /// An invalid object is in the block's place: delete it first (a conditional write never
    /// overwrites, so it would otherwise stay until the lifecycle rule expires it).
    replace: bool,
}

impl SharedTier {
    /// A tier over `store` (the shared bucket). Starts the background writers on the current
    /// tokio runtime unless read-only.
    pub fn new(store: Arc<dyn WritableStore>, settings: SharedTierSettings, metrics: SharedTierMetrics) -> SharedTier {
        let read_only = settings.read_only;
        let (queue, concurrency) = (settings.write_queue.max(1), settings.write_concurrency.max(1));
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let inner = Arc::new(Inner {
            breaker: Breaker::new(settings.breaker_interval, metrics.clone()),
            store,
            settings,
            metrics,
            warnings: Warnings::default(),
            node: format!("{}:{}", host.trim(), std::process::id()),
            pending: Default::default(),
            drained: tokio::sync::Notify::new(),
        });
        let writes = (!read_only).then(|| {
            let (tx, rx) = mpsc::channel::<Write>(queue);
            tokio::spawn(write_loop(inner.clone(), rx, concurrency));
            tx
        });
        SharedTier { inner, writes }
    }

    /// Checks at start that the shared bucket can be used: written (a probe object is created and
    /// deleted) or, read-only, read. The error says what failed.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let key = format!(
            "{}s3cachefs/v1/probe/{}-{}",
            inner.settings.prefix,
            inner.node.replace(['/', ':'], "-"),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        );
        if inner.settings.read_only {
            return match inner.store.head(&key).await {
                Ok(_) | Err(StoreError::NotFound) => Ok(()),
                Err(e) => Err(e),
            };
        }
        inner.store.put_if_absent(&key, Bytes::from_static(b"probe")).await?;
        inner.store.delete(&key).await
    }

    /// Waits until every queued write has been sent (for `warm`, which must not exit first).
    pub async fn flush(&self) {
        use std::sync::atomic::Ordering;
        loop {
            let drained = self.inner.drained.notified();
            if self.inner.pending.load(Ordering::SeqCst) == 0 {
                return;
            }
            drained.await;
        }
    }

    /// Queues a block for writing; never waits unless `wait_for_queue`. A dropped write
    /// releases its lease at once, so the nodes waiting for it stop waiting.
    async fn enqueue(&self, write: Write) {
        use std::sync::atomic::Ordering;
        let Some(tx) = &self.writes else { return };
        self.inner.pending.fetch_add(1, Ordering::SeqCst);
        let refused = if self.inner.settings.wait_for_queue {
            tx.send(write).await.err().map(|e| e.0)
        } else {
            tx.try_send(write).err().map(|e| match e {
                mpsc::error::TrySendError::Full(w) | mpsc::error::TrySendError::Closed(w) => w,
            })
        };
        if let Some(w) = refused {
            self.inner.metrics.write_drops.inc();
            self.inner.done();
            if let Some(lease) = w.lease {
                let inner = self.inner.clone();
                tokio::spawn(async move { inner.release(&lease).await });
            }
        }
    }
}

#[async_trait]
impl Tier for SharedTier {
    fn name(&self) -> &'static str {
        "shared"
    }

    async fn peek(&self, block: &BlockRef, below: Below<'_>) -> Option<Bytes> {
        if let Some(b) = self.inner.lookup(block).await {
            return Some(b);
        }
        let data = below.peek(block).await?;
        let write = Write {
            block: block.clone(),
            data: data.clone(),
            lease: None,
            replace: false,
        };
        self.enqueue(write).await;
        Some(data)
    }

    async fn get(&self, block: &BlockRef, below: Below<'_>) -> Result<Bytes, StoreError> {
        let inner = &self.inner;
        let first = inner.find(block, true).await;
        if let Found::Block(b) = first {
            return Ok(b);
        }
        if self.writes.is_none() || !inner.breaker.allows() {
            return below.get(block).await;
        }
        let held = if matches!(first, Found::Invalid) {
            // The block is there but invalid: no node is fetching it, nothing to wait for. Fetch
            // it and replace the object (several nodes may do so at once; it is rare).
            None
        } else {
            // Missed: take the lease, or wait for the node that holds it. A created lease means
            // no node stored the block since our look: a node that stores a block keeps its
            // lease (see `store`).
            let lease = inner.lease_key(block);
            match inner.take_lease(&lease).await {
                Lease::Taken => Some(lease),
                Lease::HeldElsewhere => {
                    if let Some(b) = inner.wait_for(block, &lease).await {
                        return Ok(b);
                    }
                    None
                }
                Lease::Unavailable => None,
            }
        };
        let data = match below.get(block).await {
            Ok(d) => d,
            Err(e) => {
                if let Some(lease) = held {
                    inner.release(&lease).await;
                }
                return Err(e);
            }
        };
        let write = Write {
            block: block.clone(),
            data: data.clone(),
            lease: held,
            replace: matches!(first, Found::Invalid),
        };
        self.enqueue(write).await;
        Ok(data)
    }
}

/// What a look for a block in the shared bucket found.
enum Found {
    Block(Bytes),
    /// No object.
    Absent,
    /// An object that does not validate (corrupt, forged, unsigned): a writer replaces it.
    Invalid,
    /// A failed request, or the breaker is open.
    Unusable,
}

/// The outcome of trying to take a block's lease.
enum Lease {
    Taken,
    HeldElsewhere,
    /// The bucket failed (the breaker now skips the tier); fetch without a lease.
    Unavailable,
}

impl Inner {
    fn object_key(&self, block: &BlockRef) -> String {
        object::block_key(&self.settings.prefix, block)
    }

    fn lease_key(&self, block: &BlockRef) -> String {
        object::lease_key(&self.settings.prefix, block)
    }

    /// The block from the shared bucket if it is there and valid; `None` on a miss, an invalid
    /// object or any error (which opens the breaker).
    async fn lookup(&self, block: &BlockRef) -> Option<Bytes> {
        match self.find(block, true).await {
            Found::Block(b) => Some(b),
            Found::Absent | Found::Invalid | Found::Unusable => None,
        }
    }

    /// Like `lookup`, telling an absent object from an unusable one; `count_miss: false` for a
    /// second look at a block already counted as a miss.
    async fn find(&self, block: &BlockRef, count_miss: bool) -> Found {
        if !self.breaker.allows() {
            return Found::Unusable;
        }
        let key = self.object_key(block);
        // A block object is at most the block file and a tag; anything longer is not one.
        let max = blockfmt::file_len(&block.id, block.len()) + TRAILER_LEN as u64;
        match self.store.get_object(&key, max).await {
            Ok(body) => {
                self.breaker.success();
                match self.verify(body, block) {
                    Ok(data) => {
                        self.metrics.hits.inc();
                        self.metrics.hit_bytes.inc_by(data.len() as u64);
                        Found::Block(data)
                    }
                    Err(why) => {
                        self.metrics.invalid.inc();
                        self.warn(format_args!(
                            "shared cache object {key} is not valid ({why}); not serving it"
                        ));
                        Found::Invalid
                    }
                }
            }
            Err(StoreError::NotFound) => {
                self.breaker.success();
                if count_miss {
                    self.metrics.misses.inc();
                }
                Found::Absent
            }
            // Longer than `max`: not a block object (planted or foreign), and no failure of the
            // bucket, which answered; the breaker stays closed for every other block.
            Err(StoreError::InvalidRange) => {
                self.breaker.success();
                self.metrics.invalid.inc();
                self.warn(format_args!(
                    "shared cache object {key} is longer than a block object; not serving it"
                ));
                Found::Invalid
            }
            Err(e) => {
                self.failed("read", &e);
                Found::Unusable
            }
        }
    }

    /// Checks a shared object against the block it must be; returns the data.
    fn verify(&self, body: Bytes, block: &BlockRef) -> Result<Bytes, String> {
        object::verify(self.settings.key.as_deref(), body, block)
    }

    /// The object to store for a block.
    fn encode(&self, block: &BlockRef, data: &Bytes) -> Option<Bytes> {
        object::encode(self.settings.key.as_deref(), block, data)
    }

    async fn take_lease(&self, lease: &str) -> Lease {
        let body = format!(
            "{} {}",
            unix_ms(SystemTime::now() + 2 * self.settings.lease_wait),
            self.node
        );
        match self.store.put_if_absent(lease, Bytes::from(body)).await {
            Ok(PutOutcome::Created) => Lease::Taken,
            Ok(PutOutcome::AlreadyExists) => {
                if self.lease_expired(lease).await {
                    // The holder died: take the lease over (whoever creates it first wins).
                    let _ = self.store.delete(lease).await;
                    let body = format!(
                        "{} {}",
                        unix_ms(SystemTime::now() + 2 * self.settings.lease_wait),
                        self.node
                    );
                    return match self.store.put_if_absent(lease, Bytes::from(body)).await {
                        Ok(PutOutcome::Created) => Lease::Taken,
                        Ok(PutOutcome::AlreadyExists) => Lease::HeldElsewhere,
                        Err(e) if raced(&e) => Lease::HeldElsewhere,
                        Err(e) => {
                            self.failed("lease", &e);
                            Lease::Unavailable
                        }
                    };
                }
                Lease::HeldElsewhere
            }
            // Another node is creating the lease this very moment: it holds it.
            Err(e) if raced(&e) => Lease::HeldElsewhere,
            Err(e) => {
                self.failed("lease", &e);
                Lease::Unavailable
            }
        }
    }

    /// Whether the lease object says it expired (an unreadable lease counts as expired).
    async fn lease_expired(&self, lease: &str) -> bool {
        match self.store.get_object(lease, 256).await {
            Ok(body) => {
                let expiry = std::str::from_utf8(&body)
                    .ok()
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|t| t.parse::<u64>().ok());
                expiry.is_none_or(|t| t <= unix_ms(SystemTime::now()))
            }
            Err(StoreError::NotFound) => false,
            Err(_) => true,
        }
    }

    /// Polls for the block another node is fetching, for at most `lease_wait`. `None` when it
    /// did not appear in time, or the lease was released without it.
    async fn wait_for(&self, block: &BlockRef, lease: &str) -> Option<Bytes> {
        self.metrics.lease_waits.inc();
        let deadline = Instant::now() + self.settings.lease_wait;
        let mut pause = Duration::from_millis(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.metrics.lease_timeouts.inc();
                debug!(
                    lease,
                    "waited the full bound for another node's fetch; fetching from the origin"
                );
                return None;
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(200));
            if let Found::Block(b) = self.find(block, false).await {
                return Some(b);
            }
            match self.store.head(lease).await {
                Ok(_) => {}
                // Released: the holder could not store the block (its fetch or write failed,
                // or its write was dropped). Look once more, in case another node stored it.
                Err(StoreError::NotFound) => {
                    return match self.find(block, false).await {
                        Found::Block(b) => Some(b),
                        Found::Absent | Found::Invalid | Found::Unusable => None,
                    };
                }
                // The tier is failing: stop waiting.
                Err(_) => return None,
            }
        }
    }

    async fn release(&self, lease: &str) {
        if let Err(e) = self.store.delete(lease).await {
            debug!(lease, "cannot release a shared cache lease: {e}");
        }
    }

    async fn store(&self, w: &Write) {
        let key = self.object_key(&w.block);
        if w.replace
            && let Err(e) = self.store.delete(&key).await
        {
            debug!(key, "cannot remove an invalid shared cache object: {e}");
        }
        let stored = match self.encode(&w.block, &w.data) {
            Some(body) => match self.store.put_if_absent(&key, body).await {
                Ok(_) => {
                    self.breaker.success();
                    self.metrics.writes.inc();
                    self.metrics.written_bytes.inc_by(w.data.len() as u64);
                    true
                }
                // Another node is writing the same block this very moment.
                Err(e) if raced(&e) => {
                    self.breaker.success();
                    true
                }
                Err(e) => {
                    self.failed("write", &e);
                    false
                }
            },
            None => false,
        };
        // A lease stays once its block is stored (until the lifecycle rule expires both): a node
        // that missed the block just before finds the lease taken and waits for the block,
        // instead of taking a free lease and fetching the block from the origin again. It is
        // released when the block could not be stored, so that waiting nodes stop waiting.
        if let Some(lease) = &w.lease
            && !stored
        {
            self.release(lease).await;
        }
        self.done();
    }

    /// One queued write is finished (stored, failed or dropped).
    fn done(&self) {
        if self.pending.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            self.drained.notify_waiters();
        }
    }

    fn failed(&self, what: &str, e: &StoreError) {
        self.metrics.errors.inc();
        if self.breaker.failure() {
            self.warn(format_args!(
                "shared cache {what} failed ({e}); skipping the shared cache for {:?}",
                self.settings.breaker_interval
            ));
        }
    }

    fn warn(&self, msg: std::fmt::Arguments) {
        crate::warnings::warn_limited!(self.warnings, "{msg}");
    }
}

async fn write_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<Write>, concurrency: usize) {
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    while let Some(w) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            inner.store(&w).await;
            drop(permit);
        });
    }
}

/// A conditional PUT that raced another write of the same key (S3's 409
/// `ConditionalRequestConflict`, which the shared bucket's single attempt does not retry): the
/// bucket works, and someone else is creating the object.
fn raced(e: &StoreError) -> bool {
    matches!(e, StoreError::Service { status: 409, code, .. } if code == crate::store::CONDITIONAL_REQUEST_CONFLICT)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

#[cfg(test)]
mod race_tests;
#[cfg(test)]
mod tests;
