//! Reading object bytes for open files: aligned blocks through the tier chain (`tier`), each
//! block fetched at most once with one ranged GET pinned to the ETag seen at open (`If-Match`);
//! per handle, telling a scan (contiguous reads, even reordered) from a skip (forward jumps that
//! leave gaps) and prefetching only for scans (`handle`); every other read is not worth a whole
//! block and is fetched by 16 KiB pages (`tier::PAGE_SIZE`), which the memory tier keeps, so a
//! random read made again costs no request.
//!
//! Invariant: a returned buffer holds exactly the requested bytes of the object version named
//! by the `ObjectMeta`, or the read fails. A block of unexpected length is an error, never data.

mod handle;

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Semaphore;

pub use handle::ReadHandle;

use crate::object::{ByteRange, ObjectMeta, SourceId, block_range};
use crate::store::{ObjectStore, StoreError};
use crate::tier::TierChain;
use crate::tier::memory::MemoryTier;

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

pub struct BlockReader {
    chain: Arc<TierChain>,
    block_size: u64,
    /// Bounds prefetch GETs in flight (and so the memory they hold) across every handle.
    prefetch_slots: Arc<Semaphore>,
    /// Bounds bytes being fetched at once: the memory tier's in-flight slots, also taken by the
    /// page fetches of random reads, which do not go through `Tier::get`.
    in_flight: Arc<Semaphore>,
    /// Largest read-ahead window of one handle, in blocks; shared out between the handles
    /// scanning at the same time (`sequential_handles`).
    max_window: u64,
    sequential_handles: Arc<std::sync::atomic::AtomicU64>,
    /// The objects with handles open (key, ETag), and what those handles read: each handle
    /// holds its object's entry, so a read takes only that entry's lock.
    objects: std::sync::Mutex<std::collections::HashMap<ObjectKey, Arc<std::sync::Mutex<ObjectReads>>>>,
}

/// An object version: its key and ETag.
type ObjectKey = (Arc<str>, Arc<str>);

/// The handles open on one object. The kernel's page cache is shared by every handle of a file,
/// so when several read it at once, each handle asks the daemon only for what the others have not
/// read yet: its requests jump over what they did. Those jumps are no skips.
#[derive(Default)]
pub(super) struct ObjectReads {
    handles: u64,
    /// Handles scanning it.
    scans: u64,
    /// Byte ranges read through any of its handles while two or more were open: sorted,
    /// disjoint, merged, at most [`SERVED_MAX`] (the lowest dropped first).
    served: Vec<(u64, u64)>,
}

/// Ranges remembered per object read by several handles at once.
const SERVED_MAX: usize = 64;

impl ObjectReads {
    /// Whether other handles of the object are open (only then are reads remembered).
    pub(super) fn shared(&self) -> bool {
        self.handles >= 2
    }

    /// Whether a handle of the object is scanning it (it fetches every block whole anyway).
    pub(super) fn scanned(&self) -> bool {
        self.scans > 0
    }

    /// A handle started scanning the object, or stopped.
    pub(super) fn scanning(&mut self, started: bool) {
        self.scans = if started {
            self.scans + 1
        } else {
            self.scans.saturating_sub(1)
        };
    }

    /// Remembers that a handle read `[offset, end)`.
    pub(super) fn note(&mut self, offset: u64, end: u64) {
        // The ranges that touch `[offset, end]` lie next to each other in the sorted list: they
        // and the new one become one range, in place.
        let first = self.served.partition_point(|&(_, y)| y < offset);
        let last = self.served.partition_point(|&(x, _)| x <= end);
        let merged = if first < last {
            (offset.min(self.served[first].0), end.max(self.served[last - 1].1))
        } else {
            (offset, end)
        };
        self.served.splice(first..last, [merged]);
        if self.served.len() > SERVED_MAX {
            self.served.remove(0);
        }
    }

    /// Whether the handles have read all of `[offset, end)` while several were open.
    pub(super) fn covers(&self, offset: u64, end: u64) -> bool {
        self.served.iter().any(|&(x, y)| x <= offset && end <= y)
    }
}

/// Prefetch GETs in flight unless `with_prefetch_concurrency` says otherwise; also the default
/// of `--prefetch-concurrency` (`config::DEFAULT_PREFETCH_CONCURRENCY`, which says why 32).
pub const DEFAULT_PREFETCH_CONCURRENCY: usize = 32;

impl BlockReader {
    /// Reads blocks through `chain`. `memory_bytes` is the block memory of the chain's memory
    /// tier, whose in-flight slots are `in_flight`: read-ahead windows together fill at most
    /// half of it.
    pub fn new(chain: Arc<TierChain>, in_flight: Arc<Semaphore>, memory_bytes: u64) -> BlockReader {
        let block_size = chain.block_size();
        // All windows together may fill at most half the memory, so that prefetched blocks are
        // still there when their readers arrive, and one window never more than 64 MiB.
        let max_window = (memory_bytes / 2).min(64 << 20) / block_size;
        BlockReader {
            chain,
            block_size,
            prefetch_slots: Arc::new(Semaphore::new(DEFAULT_PREFETCH_CONCURRENCY)),
            in_flight,
            max_window,
            sequential_handles: Arc::default(),
            objects: Default::default(),
        }
    }

    /// A handle of `obj` was opened: its object's entry, shared with the other handles of it.
    fn open_object(&self, obj: &ObjectMeta) -> Arc<std::sync::Mutex<ObjectReads>> {
        let mut objects = self.objects.lock().unwrap();
        let entry = objects.entry((obj.key.clone(), obj.etag.clone())).or_default();
        entry.lock().unwrap().handles += 1;
        entry.clone()
    }

    /// A handle of `obj` holding `entry` (not scanning any more) was released; the entry goes
    /// with the last one.
    fn close_object(&self, obj: &ObjectMeta, entry: &std::sync::Mutex<ObjectReads>) {
        let mut objects = self.objects.lock().unwrap();
        let mut o = entry.lock().unwrap();
        o.handles = o.handles.saturating_sub(1);
        if o.handles < 2 {
            o.served.clear();
        }
        if o.handles == 0 {
            objects.remove(&(obj.key.clone(), obj.etag.clone()));
        }
    }

    /// A reader whose only cache is a memory tier of `memory_bytes` (unit tests, embedding).
    pub fn memory_only(store: Arc<dyn ObjectStore>, block_size: u64, memory_bytes: u64) -> BlockReader {
        let memory = Arc::new(MemoryTier::new(memory_bytes, block_size));
        let in_flight = memory.in_flight();
        let chain = TierChain::new(SourceId::new(None, "test", ""), block_size, store).with(memory);
        BlockReader::new(Arc::new(chain), in_flight, memory_bytes)
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

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Starts fetching block `index` in the background (unless cached or already coming).
    fn prefetch(self: &Arc<Self>, obj: &ObjectMeta, index: u64) {
        let block = self.chain.block(obj, index);
        if self.chain.holds(&block) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(_permit) = this.prefetch_slots.clone().acquire_owned().await else {
                return;
            };
            if let Err(e) = this.chain.get(&block).await {
                tracing::debug!(key = %block.id.key, index, "prefetch failed: {e}");
            }
        });
    }

    /// A scan is done with blocks `range` of `obj` (see `TierChain::release`).
    async fn release(&self, obj: &ObjectMeta, range: std::ops::Range<u64>) {
        for index in range {
            self.chain.release(&self.chain.block(obj, index)).await;
        }
    }

    /// Reads exactly `[offset, offset+len)` for a random access: from the tiers when every
    /// block it touches is cached, else from the pages the tiers hold (a page is served out of
    /// a whole block too), else the missing pages are fetched (one ranged GET per contiguous
    /// run of them, pinned to the ETag) and kept by the memory tier: a random 64 KiB read costs
    /// at most 80 KiB, once, and not a 1 MiB block.
    pub async fn read_random(&self, obj: &ObjectMeta, offset: u64, len: u32) -> Result<Bytes, ReadError> {
        self.read_random_of(obj, offset, len, false).await
    }

    /// [`BlockReader::read_random`], where `scanned` says that another handle is scanning
    /// `obj` (and so fetches each of its blocks whole anyway).
    pub(super) async fn read_random_of(
        &self,
        obj: &ObjectMeta,
        offset: u64,
        len: u32,
        scanned: bool,
    ) -> Result<Bytes, ReadError> {
        if offset >= obj.size || len == 0 {
            return Ok(Bytes::new());
        }
        let end = (offset + u64::from(len)).min(obj.size);
        let (first, last) = (offset / self.block_size, (end - 1) / self.block_size);
        let range = ByteRange::new(offset, end);
        // Pages first: in memory, no I/O (whole blocks in memory answer here too).
        if let Some(b) = self.chain.cached_range(obj, range).await {
            return Ok(b);
        }
        let mut cached = Vec::new();
        for i in first..=last {
            let block = self.chain.block(obj, i);
            match self.chain.peek(&block).await {
                Some(b) => cached.push(b),
                // Another reader's fetch of the whole block (a scan, its prefetch) is under
                // way, or another handle scans this object and will fetch the block whole:
                // take the block (joining that fetch) rather than fetch these bytes twice.
                None if scanned || self.chain.fetching(&block) => cached.push(self.chain.get(&block).await?),
                None => break,
            }
        }
        if cached.len() as u64 == last - first + 1 {
            return Ok(self.join_blocks(obj, offset, end, first, &cached));
        }
        let _slot = self.in_flight.acquire().await.expect("semaphore is never closed");
        Ok(self.chain.get_range(obj, range).await?)
    }

    /// The bytes `[offset, end)` out of consecutive blocks starting at block `first`.
    fn join_blocks(&self, obj: &ObjectMeta, offset: u64, end: u64, first: u64, blocks: &[Bytes]) -> Bytes {
        let slice = |index: u64, block: &Bytes| {
            let start = block_range(index, self.block_size, obj.size).start;
            let from = offset.max(start) - start;
            let to = end.min(start + block.len() as u64) - start;
            block.slice(from as usize..to as usize)
        };
        if blocks.len() == 1 {
            return slice(first, &blocks[0]);
        }
        let mut out = crate::bufpool::BlockBuf::with_capacity((end - offset) as usize);
        for (i, block) in (first..).zip(blocks) {
            out.extend_from_slice(&slice(i, block));
        }
        out.freeze()
    }

    /// Reads up to `len` bytes at `offset` of `obj` through whole blocks of the tier chain;
    /// shorter only at end of file.
    pub async fn read(&self, obj: &ObjectMeta, offset: u64, len: u32) -> Result<Bytes, ReadError> {
        if offset >= obj.size || len == 0 {
            return Ok(Bytes::new());
        }
        let end = (offset + u64::from(len)).min(obj.size);
        let first = offset / self.block_size;
        let last = (end - 1) / self.block_size;
        if first == last {
            // The common case (a read within one block): a slice of it, no allocation.
            let block = self.chain.get(&self.chain.block(obj, first)).await?;
            return Ok(self.join_blocks(obj, offset, end, first, std::slice::from_ref(&block)));
        }
        let blocks = futures::future::try_join_all((first..=last).map(|i| async move {
            let block = self.chain.block(obj, i);
            self.chain.get(&block).await
        }))
        .await?;
        Ok(self.join_blocks(obj, offset, end, first, &blocks))
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

    /// What several handles read is kept as sorted, disjoint ranges: a read that touches or
    /// overlaps some merges with them, and past `SERVED_MAX` the lowest range goes.
    #[test]
    fn reads_of_an_object_are_kept_as_merged_ranges() {
        let mut o = ObjectReads::default();
        for (a, b) in [(100, 200), (400, 500), (300, 350), (0, 10)] {
            o.note(a, b);
        }
        assert_eq!(o.served, [(0, 10), (100, 200), (300, 350), (400, 500)]);
        o.note(200, 300);
        assert_eq!(o.served, [(0, 10), (100, 350), (400, 500)], "touching both neighbours");
        o.note(50, 450);
        assert_eq!(o.served, [(0, 10), (50, 500)], "overlapping several");
        assert!(o.covers(60, 500) && !o.covers(5, 60) && !o.covers(10, 50));
        for i in 0..SERVED_MAX as u64 - 1 {
            o.note(1000 + 10 * i, 1005 + 10 * i);
        }
        assert_eq!(o.served.len(), SERVED_MAX);
        assert_eq!(o.served[0], (50, 500), "the lowest, (0, 10), went");
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
        let r = BlockReader::memory_only(s.clone(), 1024, 1 << 20);
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
        let r = Arc::new(BlockReader::memory_only(s.clone(), 4096, 1 << 20));
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
        let r = BlockReader::memory_only(s.clone(), 1024, 1 << 20);
        r.read(&meta, 0, 10).await.unwrap();
        s.inner().put("obj", vec![0u8; 4096]);
        assert_eq!(r.read(&meta, 2048, 10).await, Err(ReadError::Changed));
        s.inner().remove("obj");
        assert_eq!(r.read(&meta, 3000, 10).await, Err(ReadError::Gone));
    }

    #[tokio::test]
    async fn failed_fetches_are_not_cached() {
        let (s, meta, d) = setup(100).await;
        let r = BlockReader::memory_only(s.clone(), 1024, 1 << 20);
        s.fail_next(1, StoreError::Timeout);
        assert!(r.read(&meta, 0, 10).await.is_err());
        assert_eq!(&r.read(&meta, 0, 10).await.unwrap()[..], &d[..10]);
    }

    const MIB: u64 = 1 << 20;

    /// 200 random 64 KiB reads (unaligned) of a `size`-byte object.
    fn random_64k(size: u64) -> Vec<u64> {
        let mut x = 7u64;
        (0..200)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (x >> 17) % (size - (64 << 10))
            })
            .collect()
    }

    fn fetched(s: &FaultStore<MemoryStore>) -> (u64, u64) {
        (
            s.inner().gets.load(Ordering::Relaxed),
            s.inner().get_bytes.load(Ordering::Relaxed),
        )
    }

    #[tokio::test]
    async fn random_reads_are_cached_from_the_first_pass() {
        let (s, meta, d) = setup(64 * MIB as usize).await;
        let r = BlockReader::memory_only(s.clone(), MIB, 64 * MIB);
        let offsets = random_64k(meta.size);
        for &off in &offsets {
            let got = r.read_random(&meta, off, 64 << 10).await.unwrap();
            assert!(got[..] == d[off as usize..off as usize + (64 << 10)], "at {off}");
        }
        let (gets, bytes) = fetched(&s);
        let read = 200 * (64 << 10);
        assert!(2 * bytes <= 3 * read, "first pass fetched {bytes} for {read} read");
        assert!(gets <= 200, "{gets} GETs: at most one per read");
        for &off in &offsets {
            let got = r.read_random(&meta, off, 64 << 10).await.unwrap();
            assert!(got[..] == d[off as usize..off as usize + (64 << 10)], "again at {off}");
        }
        assert_eq!(fetched(&s), (gets, bytes), "the second pass makes no request");
        // A read inside pages fetched by two different reads, across a block boundary too.
        let got = r.read_random(&meta, offsets[0] + 1000, 60_000).await.unwrap();
        assert!(got[..] == d[offsets[0] as usize + 1000..offsets[0] as usize + 61_000]);
        assert_eq!(fetched(&s), (gets, bytes));
    }

    #[tokio::test]
    async fn pages_fetch_only_what_is_missing_and_the_tail_page_is_short() {
        let (s, meta, d) = setup(3 * MIB as usize + 5000).await;
        let r = BlockReader::memory_only(s.clone(), MIB, 64 * MIB);
        let page = crate::tier::PAGE_SIZE;
        // Pages 1 and 3 of block 0, then a read over pages 0..=4: pages 0, 2 and 4 are fetched,
        // in three GETs of one page each.
        r.read_random(&meta, page + 10, 100).await.unwrap();
        r.read_random(&meta, 3 * page + 10, 100).await.unwrap();
        assert_eq!(fetched(&s), (2, 2 * page));
        let got = r.read_random(&meta, 5, (5 * page - 10) as u32).await.unwrap();
        assert!(got[..] == d[5..5 * page as usize - 5]);
        assert_eq!(fetched(&s), (5, 5 * page));
        // The object's last page is short (5000 bytes), and reads past the end stop there.
        let got = r.read_random(&meta, meta.size - 100, 4096).await.unwrap();
        assert!(got[..] == d[d.len() - 100..]);
        assert_eq!(fetched(&s), (6, 5 * page + 5000));
        let got = r.read_random(&meta, meta.size - 4000, 4000).await.unwrap();
        assert!(got[..] == d[d.len() - 4000..]);
        assert_eq!(fetched(&s), (6, 5 * page + 5000));
    }

    #[tokio::test]
    async fn pages_come_out_of_whole_blocks_in_memory() {
        let (s, meta, d) = setup(4 * MIB as usize).await;
        let r = BlockReader::memory_only(s.clone(), MIB, 64 * MIB);
        r.read(&meta, MIB, 10).await.unwrap();
        assert_eq!(fetched(&s), (1, MIB));
        // The end of block 1 (held whole) and the start of block 2 (two pages fetched).
        let off = 2 * MIB - 30_000;
        let got = r.read_random(&meta, off, 60_000).await.unwrap();
        assert!(got[..] == d[off as usize..off as usize + 60_000]);
        assert_eq!(fetched(&s), (2, MIB + 2 * crate::tier::PAGE_SIZE));
        let got = r.read_random(&meta, off + 1, 60_000).await.unwrap();
        assert!(got[..] == d[off as usize + 1..off as usize + 60_001]);
        assert_eq!(fetched(&s), (2, MIB + 2 * crate::tier::PAGE_SIZE));
    }

    #[tokio::test]
    async fn a_page_is_never_served_for_another_version() {
        let (s, meta, d) = setup(4 * MIB as usize).await;
        let r = BlockReader::memory_only(s.clone(), MIB, 64 * MIB);
        let off = MIB + 12_345;
        assert!(r.read_random(&meta, off, 50_000).await.unwrap()[..] == d[off as usize..off as usize + 50_000]);
        let d2: Vec<u8> = d.iter().map(|b| b ^ 0x5a).collect();
        s.inner().put("obj", d2.clone());
        let meta2 = s.inner().head("obj").await.unwrap();
        assert_ne!(meta.etag, meta2.etag);
        let before = fetched(&s).0;
        let got = r.read_random(&meta2, off, 50_000).await.unwrap();
        assert!(
            got[..] == d2[off as usize..off as usize + 50_000],
            "new version's bytes"
        );
        assert!(fetched(&s).0 > before, "fetched for the new ETag");
        // The old version's pages still answer its handles; its missing pages fail.
        assert!(r.read_random(&meta, off, 50_000).await.unwrap()[..] == d[off as usize..off as usize + 50_000]);
        assert_eq!(r.read_random(&meta, 0, 100).await, Err(ReadError::Changed));
    }

    #[tokio::test]
    async fn pages_stay_within_the_memory_budget() {
        let (s, meta, d) = setup(64 * MIB as usize).await;
        let memory = Arc::new(MemoryTier::new(16 * MIB, MIB));
        let in_flight = memory.in_flight();
        let chain = TierChain::new(SourceId::new(None, "test", ""), MIB, s.clone()).with(memory.clone());
        let r = BlockReader::new(Arc::new(chain), in_flight, 16 * MIB);
        let mut x = 3u64;
        for _ in 0..600 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let off = (x >> 17) % (meta.size - (64 << 10));
            let got = r.read_random(&meta, off, 64 << 10).await.unwrap();
            assert!(got[..] == d[off as usize..off as usize + (64 << 10)], "at {off}");
        }
        // 600 reads fetched ~40 MiB of pages; the tier keeps at most its capacity (16 MiB less
        // the 4 blocks in flight), each page's overhead counted.
        let (_, bytes) = fetched(&s);
        assert!(bytes > 32 * MIB, "{bytes}");
        let held = memory.held_bytes().await;
        assert!(held <= 12 * MIB, "held {held}");
        assert!(held >= 6 * MIB, "held {held}: the budget is used");
    }
}
