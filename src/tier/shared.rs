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
//!   counts as success, nothing is overwritten. They go through a bounded queue drained in the
//!   background, so a reader never waits for them; a full queue drops the write (counted).
//! - **Cross-node coalescing.** A node that misses a block takes a lease first: a small object
//!   next to the block, created with a conditional PUT and holding its expiry. The holder fetches
//!   from the origin and writes the block; the others poll for the block for at most
//!   `lease_wait`, then fetch from the origin themselves. A holder writes the block before it
//!   releases the lease, so a node that finds the lease free (taking it, or while waiting) looks
//!   for the block once more before it goes to the origin. A crashed holder delays the others by
//!   at most that bound; its lease expires after `2 × lease_wait` and is then taken over.
//! - **Failures never fail a read.** Any error of the shared bucket (unreachable, slow, throttled,
//!   denied) passes the request to the origin, and opens a circuit breaker: for
//!   `breaker_interval` the tier is skipped, then one request probes it again. A dead tier costs
//!   one timeout per interval, not one per block.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{Below, Tier};
use crate::blockfmt;
use crate::metrics::SharedTierMetrics;
use crate::object::BlockRef;
use crate::store::{PutOutcome, StoreError, WritableStore};

/// The tag that ends a signed block object: this magic, then HMAC-SHA256 over everything before it.
const MAC_MAGIC: &[u8; 8] = b"S3CFSMAC";
const MAC_LEN: usize = 32;
const TRAILER_LEN: usize = MAC_MAGIC.len() + MAC_LEN;

/// At most one warning of a kind per this period.
const WARN_EVERY: Duration = Duration::from_secs(10);

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
    last_warn: Mutex<Option<Instant>>,
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
            last_warn: Mutex::new(None),
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
        };
        self.enqueue(write).await;
        Some(data)
    }

    async fn get(&self, block: &BlockRef, below: Below<'_>) -> Result<Bytes, StoreError> {
        let inner = &self.inner;
        if let Some(b) = inner.lookup(block).await {
            return Ok(b);
        }
        if self.writes.is_none() || !inner.breaker.allows() {
            return below.get(block).await;
        }
        // Missed: take the lease, or wait for the node that holds it.
        let lease = inner.lease_key(block);
        let held = match inner.take_lease(&lease).await {
            Lease::Taken => {
                // The lease may be free because its last holder just wrote the block and
                // released it, after our lookup: look once more before going to the origin.
                if let Some(b) = inner.lookup(block).await {
                    inner.release(&lease).await;
                    return Ok(b);
                }
                Some(lease)
            }
            Lease::HeldElsewhere => {
                if let Some(b) = inner.wait_for(block, &lease).await {
                    return Ok(b);
                }
                None
            }
            Lease::Unavailable => None,
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
        };
        self.enqueue(write).await;
        Ok(data)
    }
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
        let id = &block.id;
        let (hash, _) = blockfmt::object_hash(&id.source, &id.key, &id.etag, id.block_size);
        format!("{}s3cachefs/v1/blocks/{hash}/{}", self.settings.prefix, id.index)
    }

    fn lease_key(&self, block: &BlockRef) -> String {
        let id = &block.id;
        let (hash, _) = blockfmt::object_hash(&id.source, &id.key, &id.etag, id.block_size);
        format!("{}s3cachefs/v1/leases/{hash}/{}", self.settings.prefix, id.index)
    }

    /// The block from the shared bucket if it is there and valid; `None` on a miss, an invalid
    /// object or any error (which opens the breaker).
    async fn lookup(&self, block: &BlockRef) -> Option<Bytes> {
        if !self.breaker.allows() {
            return None;
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
                        Some(data)
                    }
                    Err(why) => {
                        self.metrics.invalid.inc();
                        self.warn(format_args!(
                            "shared cache object {key} is not valid ({why}); not serving it"
                        ));
                        None
                    }
                }
            }
            Err(StoreError::NotFound) => {
                self.breaker.success();
                self.metrics.misses.inc();
                None
            }
            Err(e) => {
                self.failed("read", &e);
                None
            }
        }
    }

    /// Checks a shared object against the block it must be; returns the data.
    fn verify(&self, body: Bytes, block: &BlockRef) -> Result<Bytes, String> {
        let file_len = blockfmt::file_len(&block.id, block.len()) as usize;
        let file = match &self.settings.key {
            Some(key) => {
                if body.len() != file_len + TRAILER_LEN || &body[file_len..file_len + MAC_MAGIC.len()] != MAC_MAGIC {
                    return Err("no authentication tag".into());
                }
                let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
                mac.update(&body[..file_len]);
                mac.verify_slice(&body[file_len + MAC_MAGIC.len()..])
                    .map_err(|_| "authentication tag does not match".to_string())?;
                body.slice(..file_len)
            }
            // Unsigned readers accept signed objects too (the tag is just not checked).
            None if body.len() == file_len + TRAILER_LEN => body.slice(..file_len),
            None => body,
        };
        blockfmt::decode(file, &block.id, block.len()).map_err(|e| e.to_string())
    }

    /// The object to store for a block: block file, then the tag when signing.
    fn encode(&self, block: &BlockRef, data: &Bytes) -> Option<Bytes> {
        let header = blockfmt::encode_header(&block.id, data).ok()?;
        let mut out = BytesMut::with_capacity(header.len() + data.len() + TRAILER_LEN);
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        if let Some(key) = &self.settings.key {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(&out);
            let tag = mac.finalize().into_bytes();
            out.extend_from_slice(MAC_MAGIC);
            out.extend_from_slice(&tag);
        }
        Some(out.freeze())
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
                        Err(e) => {
                            self.failed("lease", &e);
                            Lease::Unavailable
                        }
                    };
                }
                Lease::HeldElsewhere
            }
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
            if let Some(b) = self.lookup(block).await {
                return Some(b);
            }
            match self.store.head(lease).await {
                Ok(_) => {}
                // Released: the holder writes the block before it releases the lease, so the
                // block may have appeared since the lookup above; else the holder's fetch or
                // write failed. Either way, stop waiting.
                Err(StoreError::NotFound) => return self.lookup(block).await,
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
        if let Some(body) = self.encode(&w.block, &w.data) {
            match self.store.put_if_absent(&key, body).await {
                Ok(_) => {
                    self.breaker.success();
                    self.metrics.writes.inc();
                    self.metrics.written_bytes.inc_by(w.data.len() as u64);
                }
                Err(e) => self.failed("write", &e),
            }
        }
        if let Some(lease) = &w.lease {
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
        let mut last = self.last_warn.lock().unwrap();
        if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            warn!("{msg}");
        }
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

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// Skips the tier for an interval after a failure, then lets one request probe it.
struct Breaker {
    interval: Duration,
    open_until: Mutex<Option<Instant>>,
    metrics: SharedTierMetrics,
}

impl Breaker {
    fn new(interval: Duration, metrics: SharedTierMetrics) -> Breaker {
        Breaker {
            interval,
            open_until: Mutex::new(None),
            metrics,
        }
    }

    /// Whether a request may go to the shared bucket now. After the interval, the first caller
    /// is let through as a probe and the breaker stays open for the others.
    fn allows(&self) -> bool {
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

    fn success(&self) {
        let mut open = self.open_until.lock().unwrap();
        if open.take().is_some() {
            self.metrics.breaker_open.set(0);
        }
    }

    /// Opens the breaker; returns whether it was closed before (worth a warning).
    fn failure(&self) -> bool {
        let mut open = self.open_until.lock().unwrap();
        let was_closed = open.is_none();
        *open = Some(Instant::now() + self.interval);
        self.metrics.breaker_open.set(1);
        was_closed
    }
}

#[cfg(test)]
mod tests {
    //! Races between nodes in the lease protocol, made deterministic: node A's view of the
    //! shared bucket runs node B's whole fetch (lease, origin GET, block write, release) at one
    //! chosen moment of A's miss.

    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::object::{ByteRange, ObjectMeta, SourceId};
    use crate::store::fault::FaultStore;
    use crate::store::memory::MemoryStore;
    use crate::store::{ListPage, ListRequest, ObjectStore};
    use crate::tier::TierChain;

    const BS: u64 = 4096;

    type Hook = Pin<Box<dyn Future<Output = ()> + Send>>;

    /// The shared bucket as node A sees it: before A's first `op` ("put" or "head") on a lease
    /// object, `hook` runs to completion.
    struct Interleaved {
        bucket: Arc<MemoryStore>,
        op: &'static str,
        hook: Mutex<Option<Hook>>,
    }

    impl Interleaved {
        async fn before(&self, op: &str, key: &str) {
            if op == self.op && key.contains("/s3cachefs/v1/leases/") {
                let hook = self.hook.lock().unwrap().take();
                if let Some(h) = hook {
                    h.await;
                }
            }
        }
    }

    #[async_trait]
    impl ObjectStore for Interleaved {
        async fn list(&self, req: ListRequest<'_>) -> Result<ListPage, StoreError> {
            self.bucket.list(req).await
        }

        async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
            self.before("head", key).await;
            self.bucket.head(key).await
        }

        async fn get_range(&self, key: &str, range: ByteRange, etag: &str) -> Result<Bytes, StoreError> {
            self.bucket.get_range(key, range, etag).await
        }

        fn describe(&self) -> String {
            "interleaved".into()
        }
    }

    #[async_trait]
    impl WritableStore for Interleaved {
        async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<PutOutcome, StoreError> {
            self.before("put", key).await;
            self.bucket.put_if_absent(key, body).await
        }

        async fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.bucket.delete(key).await
        }

        async fn get_object(&self, key: &str, max_len: u64) -> Result<Bytes, StoreError> {
            self.bucket.get_object(key, max_len).await
        }
    }

    struct Nodes {
        origin: Arc<FaultStore<MemoryStore>>,
        bucket: Arc<MemoryStore>,
        a: Arc<SharedTier>,
        a_chain: TierChain,
        /// Node A's view of the bucket, to install node B's fetch as its hook.
        a_view: Arc<Interleaved>,
        b: Arc<SharedTier>,
        b_chain: Arc<TierChain>,
        meta: ObjectMeta,
        body: Vec<u8>,
    }

    /// Two nodes over one bucket and one origin holding a one-block object; A's bucket runs a
    /// hook before its first `op` on a lease.
    fn nodes(op: &'static str) -> Nodes {
        let body: Vec<u8> = (0..BS as usize).map(|i| (i * 7) as u8).collect();
        let origin = Arc::new(FaultStore::new(MemoryStore::new()));
        let etag = origin.inner().put("k", body.clone());
        let meta = ObjectMeta {
            key: "k".into(),
            size: BS,
            etag: etag.into(),
            last_modified: SystemTime::UNIX_EPOCH,
        };
        let source = SourceId::new(Some("http://127.0.0.1:1"), "bucket");
        let bucket = Arc::new(MemoryStore::new());
        let settings = SharedTierSettings {
            lease_wait: Duration::from_secs(30),
            ..SharedTierSettings::new("cache/".into())
        };
        let a_view = Arc::new(Interleaved {
            bucket: bucket.clone(),
            op,
            hook: Mutex::new(None),
        });
        let a = Arc::new(SharedTier::new(
            a_view.clone(),
            settings.clone(),
            SharedTierMetrics::default(),
        ));
        let b = Arc::new(SharedTier::new(bucket.clone(), settings, SharedTierMetrics::default()));
        Nodes {
            a_chain: TierChain::new(source.clone(), BS, origin.clone()).with(a.clone()),
            b_chain: Arc::new(TierChain::new(source, BS, origin.clone()).with(b.clone())),
            origin,
            bucket,
            a,
            a_view,
            b,
            meta,
            body,
        }
    }

    impl Nodes {
        /// Node B's whole fetch of block 0: lease, origin GET, block written, lease released.
        fn b_fetches(&self) -> Hook {
            let (b, chain) = (self.b.clone(), self.b_chain.clone());
            let block = chain.block(&self.meta, 0);
            Box::pin(async move {
                chain.get(&block).await.unwrap();
                b.flush().await;
            })
        }

        fn origin_gets(&self) -> u64 {
            self.origin.inner().gets.load(Ordering::SeqCst)
        }
    }

    /// A misses; before its lease PUT, B fetches, writes the block and releases its lease. A
    /// then takes the free lease, and must find B's block instead of fetching it again.
    #[tokio::test]
    async fn a_lease_taken_after_another_node_wrote_the_block_finds_it() {
        let n = nodes("put");
        *n.a_view.hook.lock().unwrap() = Some(n.b_fetches());
        let block = n.a_chain.block(&n.meta, 0);
        assert_eq!(n.a_chain.get(&block).await.unwrap().to_vec(), n.body);
        n.a.flush().await;
        assert_eq!(n.origin_gets(), 1, "one origin GET for the block across both nodes");
        let lease = n.a.inner.lease_key(&block);
        assert_eq!(
            n.bucket.head(&lease).await.err(),
            Some(StoreError::NotFound),
            "A released its lease"
        );
    }

    /// B holds the lease while A misses and waits; just before A checks the lease, B writes the
    /// block and releases the lease. A must find B's block instead of fetching it again.
    #[tokio::test]
    async fn a_waiter_whose_lease_was_released_finds_the_written_block() {
        let n = nodes("head");
        let block = n.a_chain.block(&n.meta, 0);
        let lease = n.a.inner.lease_key(&block);
        // B's lease, taken before A's miss.
        let held = format!("{} node-b", unix_ms(SystemTime::now() + Duration::from_secs(60)));
        n.bucket.put_if_absent(&lease, Bytes::from(held)).await.unwrap();
        let (bucket, lease_key, fetch) = (n.bucket.clone(), lease.clone(), n.b_fetches());
        *n.a_view.hook.lock().unwrap() = Some(Box::pin(async move {
            bucket.delete(&lease_key).await.unwrap();
            fetch.await;
        }));
        assert_eq!(n.a_chain.get(&block).await.unwrap().to_vec(), n.body);
        assert_eq!(n.origin_gets(), 1, "one origin GET for the block across both nodes");
        assert_eq!(n.a.inner.metrics.lease_waits.get(), 1, "A waited for B");
        assert_eq!(n.a.inner.metrics.lease_timeouts.get(), 0);
    }
}
