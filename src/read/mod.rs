//! Reading object bytes: aligned blocks, each fetched with one ranged GET pinned to the ETag
//! seen at open (`If-Match`), kept in a bounded in-memory cache so the kernel's many small
//! reads of one block cost one GET. Concurrent misses for one block are coalesced
//! (single-flight), so N readers of a cold block issue one GET.
//!
//! Invariant: a returned buffer holds exactly the requested bytes of the object version named
//! by the `ObjectMeta`, or the read fails. A block of unexpected length is an error, never data.

mod handle;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use moka::future::Cache;
use moka::policy::EvictionPolicy;
use tokio::sync::Semaphore;

pub use handle::ReadHandle;

use crate::cache::DiskCache;
use crate::object::{ObjectId, ObjectMeta, block_range};
use crate::store::{ObjectStore, StoreError};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    #[error("object changed in S3 since it was opened")]
    Changed,
    #[error("object no longer exists in S3")]
    Gone,
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ReadError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::PreconditionFailed => ReadError::Changed,
            StoreError::NotFound => ReadError::Gone,
            e => ReadError::Store(e),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct BlockKey {
    id: ObjectId,
    index: u64,
}

pub struct BlockReader {
    store: Arc<dyn ObjectStore>,
    block_size: u64,
    blocks: Cache<BlockKey, Bytes>,
    disk: Option<Arc<DiskCache>>,
    /// Bounds prefetch GETs in flight (and so the memory they hold) across every handle.
    prefetch_slots: Arc<Semaphore>,
    /// Bounds every block being fetched or read from disk at once (demand and prefetch), so
    /// that blocks in flight plus the memory cache stay within the configured memory.
    fetch_slots: Semaphore,
    /// 64 KiB regions a random read touched once (and fetched only in part).
    touched: moka::sync::Cache<(BlockKey, u64), ()>,
    /// Largest read-ahead window of one handle, in blocks; shared out between the handles
    /// reading sequentially at the same time (`sequential_handles`).
    max_window: u64,
    sequential_handles: Arc<std::sync::atomic::AtomicU64>,
}

/// Random reads of one 64 KiB region twice make it hot; random reads elsewhere in a large
/// file rarely share a region, so they stay exact.
const TOUCH_REGION_BITS: u32 = 16;

/// Default prefetch GETs in flight: enough to hide ~20 ms of S3 latency per 1 MiB block at
/// several hundred MB/s, few enough to be polite to the bucket and bound memory.
pub const DEFAULT_PREFETCH_CONCURRENCY: usize = 16;

impl BlockReader {
    /// `memory_bytes` bounds the in-memory block cache (weighted by block length); `disk`, when
    /// given, is consulted after memory and before S3 (its block size must be `block_size`).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        block_size: u64,
        memory_bytes: u64,
        disk: Option<Arc<DiskCache>>,
    ) -> BlockReader {
        assert!(
            disk.as_ref().is_none_or(|d| d.block_size() == block_size),
            "disk cache block size differs"
        );
        // A quarter of the memory for blocks in flight (4 to 64 of them), the rest for the cache.
        let in_flight = (memory_bytes / 4 / block_size).clamp(4, 64);
        let blocks = Cache::builder()
            .max_capacity(memory_bytes.saturating_sub(in_flight * block_size).max(block_size))
            .weigher(|_: &BlockKey, b: &Bytes| b.len().try_into().unwrap_or(u32::MAX))
            // Plain LRU: a prefetched block, seen once, must not be refused admission in
            // favour of older, more often read blocks (TinyLFU's default).
            .eviction_policy(EvictionPolicy::lru())
            .build();
        // All windows together may fill at most half the memory, so that prefetched blocks are
        // still there when their readers arrive, and one window never more than 64 MiB.
        let max_window = (memory_bytes / 2).min(64 << 20) / block_size;
        BlockReader {
            store,
            block_size,
            blocks,
            disk,
            prefetch_slots: Arc::new(Semaphore::new(DEFAULT_PREFETCH_CONCURRENCY)),
            fetch_slots: Semaphore::new(in_flight as usize),
            // Remembering 64k blocks costs a few MiB at most.
            touched: moka::sync::Cache::new(1 << 16),
            max_window,
            sequential_handles: Arc::default(),
        }
    }

    /// Sets how many prefetch GETs may be in flight at once (across all handles).
    pub fn with_prefetch_concurrency(mut self, n: usize) -> Self {
        self.prefetch_slots = Arc::new(Semaphore::new(n.max(1)));
        self
    }

    /// Per-handle reader with sequential detection and prefetch.
    pub fn handle(self: &Arc<Self>, meta: ObjectMeta) -> ReadHandle {
        ReadHandle::new(self.clone(), meta)
    }

    /// Starts fetching block `index` in the background (unless cached or already coming).
    fn prefetch(self: &Arc<Self>, obj: &ObjectMeta, index: u64) {
        if self.blocks.contains_key(&BlockKey { id: obj.id(), index }) {
            return;
        }
        let (this, obj) = (self.clone(), obj.clone());
        tokio::spawn(async move {
            let Ok(_permit) = this.prefetch_slots.clone().acquire_owned().await else {
                return;
            };
            if let Err(e) = this.block(&obj, index).await {
                tracing::debug!(key = %obj.key, index, "prefetch failed: {e}");
            }
        });
    }

    /// The object as one verified local file, if the disk cache has assembled it.
    pub async fn full_file(&self, obj: &ObjectMeta) -> Option<std::fs::File> {
        self.disk.as_ref()?.full_file(obj).await
    }

    /// Assembles the object in the disk cache, in the background, if all its blocks are there.
    pub fn assemble_in_background(&self, obj: &ObjectMeta) {
        if let Some(d) = &self.disk {
            d.assemble_in_background(obj);
        }
    }

    /// A block if it is in memory or on disk, without fetching it.
    async fn peek(&self, obj: &ObjectMeta, index: u64) -> Option<Bytes> {
        let key = BlockKey { id: obj.id(), index };
        if let Some(b) = self.blocks.get(&key).await {
            return Some(b);
        }
        let disk = self.disk.as_ref()?;
        let b = disk
            .peek(obj, index, block_range(index, self.block_size, obj.size))
            .await?;
        self.blocks.insert(key, b.clone()).await;
        Some(b)
    }

    /// Reads exactly `[offset, offset+len)` for a random access: from cached blocks when they
    /// are all there, otherwise with one ranged GET of just those bytes (not cached as blocks,
    /// so a random 64 KiB read does not cost a 1 MiB GET).
    pub async fn read_exact(&self, obj: &ObjectMeta, offset: u64, len: u32) -> Result<Bytes, ReadError> {
        if offset >= obj.size || len == 0 {
            return Ok(Bytes::new());
        }
        let end = (offset + u64::from(len)).min(obj.size);
        let (first, last) = (offset / self.block_size, (end - 1) / self.block_size);
        let mut cached = Vec::new();
        for i in first..=last {
            match self.peek(obj, i).await {
                Some(b) => cached.push(b),
                None => break,
            }
        }
        if cached.len() as u64 == last - first + 1 {
            return Ok(self.assemble(obj, offset, end, first, &cached));
        }
        // The same region read at random a second time is hot (a Parquet footer every
        // executor reads, say): fetch and cache its blocks whole, in memory and on disk.
        let region = (
            BlockKey {
                id: obj.id(),
                index: first,
            },
            offset >> TOUCH_REGION_BITS,
        );
        if self.touched.contains_key(&region) {
            return self.read(obj, offset, len).await;
        }
        self.touched.insert(region, ());
        let range = crate::object::ByteRange::new(offset, end);
        let _slot = self.fetch_slots.acquire().await.expect("semaphore is never closed");
        let bytes = self.store.get_range(&obj.key, range, &obj.etag).await?;
        if bytes.len() as u64 != range.len() {
            return Err(ReadError::Store(StoreError::BadResponse(format!(
                "{}: expected {} bytes at {offset}, got {}",
                obj.key,
                range.len(),
                bytes.len()
            ))));
        }
        Ok(bytes)
    }

    /// The bytes `[offset, end)` out of consecutive blocks starting at block `first`.
    fn assemble(&self, obj: &ObjectMeta, offset: u64, end: u64, first: u64, blocks: &[Bytes]) -> Bytes {
        let slice = |index: u64, block: &Bytes| {
            let start = block_range(index, self.block_size, obj.size).start;
            let from = offset.max(start) - start;
            let to = end.min(start + block.len() as u64) - start;
            block.slice(from as usize..to as usize)
        };
        if blocks.len() == 1 {
            return slice(first, &blocks[0]);
        }
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for (i, block) in (first..).zip(blocks) {
            out.extend_from_slice(&slice(i, block));
        }
        out.freeze()
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Reads up to `len` bytes at `offset` of `obj` through whole cached blocks; shorter only
    /// at end of file.
    pub async fn read(&self, obj: &ObjectMeta, offset: u64, len: u32) -> Result<Bytes, ReadError> {
        if offset >= obj.size || len == 0 {
            return Ok(Bytes::new());
        }
        let end = (offset + u64::from(len)).min(obj.size);
        let first = offset / self.block_size;
        let last = (end - 1) / self.block_size;
        if first == last {
            // The common case (a read within one block): a slice of it, no allocation.
            let block = self.block(obj, first).await?;
            return Ok(self.assemble(obj, offset, end, first, std::slice::from_ref(&block)));
        }
        let blocks = futures::future::try_join_all((first..=last).map(|i| self.block(obj, i))).await?;
        Ok(self.assemble(obj, offset, end, first, &blocks))
    }

    async fn block(&self, obj: &ObjectMeta, index: u64) -> Result<Bytes, ReadError> {
        let key = BlockKey { id: obj.id(), index };
        let range = block_range(index, self.block_size, obj.size);
        self.blocks
            .try_get_with(key, async {
                let _slot = self.fetch_slots.acquire().await.expect("semaphore is never closed");
                let fetch = async {
                    let bytes = self.store.get_range(&obj.key, range, &obj.etag).await?;
                    if bytes.len() as u64 != range.len() {
                        return Err(ReadError::Store(StoreError::BadResponse(format!(
                            "block {index} of {}: expected {} bytes, got {}",
                            obj.key,
                            range.len(),
                            bytes.len()
                        ))));
                    }
                    Ok(bytes)
                };
                match &self.disk {
                    Some(disk) => disk.get_or_fetch(obj, index, range, fetch).await,
                    None => fetch.await,
                }
            })
            .await
            .map_err(|e| (*e).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fault::FaultStore;
    use crate::store::memory::MemoryStore;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    async fn setup(size: usize) -> (Arc<FaultStore<MemoryStore>>, ObjectMeta, Vec<u8>) {
        let s = Arc::new(FaultStore::new(MemoryStore::new()));
        let d = data(size);
        s.inner().put("obj", d.clone());
        let meta = s.inner().head("obj").await.unwrap();
        (s, meta, d)
    }

    #[tokio::test]
    async fn reads_are_byte_exact_at_every_boundary() {
        let (s, meta, d) = setup(10_000).await;
        let r = BlockReader::new(s.clone(), 1024, 1 << 20, None);
        for (off, len) in [
            (0, 1),
            (0, 1024),
            (1000, 100),
            (1023, 2),
            (0, 10_000),
            (5000, 9999),
            (9999, 5),
            (10_000, 5),
        ] {
            let got = r.read(&meta, off, len).await.unwrap();
            let end = (off as usize + len as usize).min(d.len());
            assert_eq!(&got[..], &d[(off as usize).min(end)..end], "off {off} len {len}");
        }
        // Every block fetched once, however often it was read.
        assert_eq!(s.inner().gets.load(Ordering::Relaxed), 10);
    }

    #[tokio::test]
    async fn concurrent_reads_of_one_block_make_one_get() {
        let (s, meta, _) = setup(4096).await;
        s.set_latency(Duration::from_millis(30));
        let r = Arc::new(BlockReader::new(s.clone(), 4096, 1 << 20, None));
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let (r, meta) = (r.clone(), meta.clone());
                tokio::spawn(async move { r.read(&meta, i * 100, 100).await.unwrap() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(s.inner().gets.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn changed_object_fails_instead_of_mixing() {
        let (s, meta, _) = setup(4096).await;
        let r = BlockReader::new(s.clone(), 1024, 1 << 20, None);
        r.read(&meta, 0, 10).await.unwrap();
        s.inner().put("obj", vec![0u8; 4096]);
        assert_eq!(r.read(&meta, 2048, 10).await, Err(ReadError::Changed));
        s.inner().remove("obj");
        assert_eq!(r.read(&meta, 3000, 10).await, Err(ReadError::Gone));
    }

    #[tokio::test]
    async fn failed_fetches_are_not_cached() {
        let (s, meta, d) = setup(100).await;
        let r = BlockReader::new(s.clone(), 1024, 1 << 20, None);
        s.fail_next(1, StoreError::Timeout);
        assert!(r.read(&meta, 0, 10).await.is_err());
        assert_eq!(&r.read(&meta, 0, 10).await.unwrap()[..], &d[..10]);
    }
}
