//! The memory tier: recently read blocks in a bounded in-memory LRU, so the kernel's many small
//! reads of one block cost one trip below. Concurrent misses of one block are coalesced
//! (single-flight): N readers of a cold block send one request below.
//!
//! It also keeps the pages (`PAGE_SIZE` pieces of a block) that random reads fetched, in the
//! same LRU under their own keys, so blocks and pages share one budget; a page weighs its bytes
//! plus `PAGE_OVERHEAD` for its entry. A page is also served out of a whole block held here.
//!
//! Memory bound: the cache's capacity (blocks and pages together) plus the blocks in flight
//! (being fetched from below, at most `in_flight` of them, 4 to 64) fit in the configured
//! memory, apart from the minimum of 4 blocks in flight and one cached block.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use moka::future::Cache;
use moka::policy::EvictionPolicy;
use tokio::sync::Semaphore;

use super::{Below, PageRef, Tier};
use crate::metrics::MemoryTierMetrics;
use crate::object::{BlockId, BlockRef};
use crate::store::StoreError;

/// What the LRU holds: whole blocks, and pages of blocks (random reads).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Block(BlockId),
    Page(BlockId, u64),
}

/// The weight of a page's entry beyond its bytes (key, moka's bookkeeping), so that many small
/// pages cannot hold much more memory than the bound says.
pub const PAGE_OVERHEAD: u32 = 256;

pub struct MemoryTier {
    blocks: Cache<Key, Bytes>,
    /// Bounds blocks being fetched from below at once (demand and prefetch), and the exact
    /// ranges of random reads, which the read layer takes from here too.
    in_flight: Arc<Semaphore>,
    /// The blocks a `get` is fetching from below now (see [`Tier::fetching`]).
    fetching: FetchingSet,
    metrics: MemoryTierMetrics,
}

type FetchingSet = Arc<std::sync::Mutex<std::collections::HashSet<BlockId>>>;

/// Marks a block as being fetched while it lives.
struct Fetching(FetchingSet, BlockId);

impl Fetching {
    fn start(set: &FetchingSet, id: &BlockId) -> Fetching {
        set.lock().unwrap().insert(id.clone());
        Fetching(set.clone(), id.clone())
    }
}

impl Drop for Fetching {
    fn drop(&mut self) {
        self.0.lock().unwrap().remove(&self.1);
    }
}

impl MemoryTier {
    /// A memory tier using about `memory_bytes` for blocks of `block_size` bytes: a quarter
    /// for blocks in flight (4 to 64 of them), the rest for the cache.
    pub fn new(memory_bytes: u64, block_size: u64) -> MemoryTier {
        let in_flight = (memory_bytes / 4 / block_size).clamp(4, 64);
        let blocks = Cache::builder()
            .max_capacity(memory_bytes.saturating_sub(in_flight * block_size).max(block_size))
            .weigher(|k: &Key, b: &Bytes| {
                let len: u32 = b.len().try_into().unwrap_or(u32::MAX);
                match k {
                    Key::Block(_) => len,
                    Key::Page(..) => len.saturating_add(PAGE_OVERHEAD),
                }
            })
            // Plain LRU: a prefetched block, seen once, must not be refused admission in
            // favour of older, more often read blocks (TinyLFU's default).
            .eviction_policy(EvictionPolicy::lru())
            .build();
        MemoryTier {
            blocks,
            in_flight: Arc::new(Semaphore::new(in_flight as usize)),
            fetching: Arc::default(),
            metrics: MemoryTierMetrics::default(),
        }
    }

    /// Counts hits, misses, held bytes and blocks in flight in `metrics`.
    pub fn with_metrics(mut self, metrics: MemoryTierMetrics) -> MemoryTier {
        self.metrics = metrics;
        self
    }

    /// Sets the held-bytes gauge after an insert (once per block brought in from below). moka
    /// applies inserts and evictions to its size lazily; this applies them first.
    async fn count_held(&self) {
        self.blocks.run_pending_tasks().await;
        self.metrics.bytes.set(self.blocks.weighted_size() as i64);
    }

    fn hit(&self, b: &Bytes) {
        self.metrics.hits.inc();
        self.metrics.hit_bytes.inc_by(b.len() as u64);
    }

    /// Bytes held (blocks and pages, with the pages' overhead), after pending inserts and
    /// evictions are applied.
    pub async fn held_bytes(&self) -> u64 {
        self.blocks.run_pending_tasks().await;
        self.blocks.weighted_size()
    }

    /// The slots that bound bytes in flight; a reader fetching anything outside the chain
    /// (an exact range) holds one too.
    pub fn in_flight(&self) -> Arc<Semaphore> {
        self.in_flight.clone()
    }
}

/// One block in flight in the gauge, for as long as the fetch lives (a cancelled fetch too).
struct InFlight<'a>(&'a MemoryTierMetrics);

impl<'a> InFlight<'a> {
    fn count(m: &'a MemoryTierMetrics) -> InFlight<'a> {
        m.in_flight.inc();
        InFlight(m)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

#[async_trait]
impl Tier for MemoryTier {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn peek(&self, block: &BlockRef, below: Below<'_>) -> Option<Bytes> {
        if let Some(b) = self.blocks.get(&Key::Block(block.id.clone())).await {
            self.hit(&b);
            return Some(b);
        }
        let b = below.peek(block).await?;
        self.blocks.insert(Key::Block(block.id.clone()), b.clone()).await;
        self.count_held().await;
        Some(b)
    }

    async fn get(&self, block: &BlockRef, below: Below<'_>) -> Result<Bytes, StoreError> {
        let entry = self
            .blocks
            .entry(Key::Block(block.id.clone()))
            .or_try_insert_with(async {
                let _fetching = Fetching::start(&self.fetching, &block.id);
                self.metrics.misses.inc();
                let _slot = self.in_flight.acquire().await.expect("semaphore is never closed");
                let _counted = InFlight::count(&self.metrics);
                below.get(block).await
            })
            .await
            .map_err(|e| (*e).clone())?;
        if entry.is_fresh() {
            self.count_held().await;
        } else {
            self.hit(entry.value());
        }
        Ok(entry.into_value())
    }

    fn holds(&self, block: &BlockRef) -> bool {
        self.blocks.contains_key(&Key::Block(block.id.clone()))
    }

    fn fetching(&self, block: &BlockRef) -> bool {
        self.fetching.lock().unwrap().contains(&block.id)
    }

    async fn page(&self, page: &PageRef) -> Option<super::PageHit> {
        let b = match self.blocks.get(&Key::Page(page.block.clone(), page.index)).await {
            Some(b) => b,
            None => {
                let block = self.blocks.get(&Key::Block(page.block.clone())).await?;
                let from = page.index * super::PAGE_SIZE;
                let to = from + page.len();
                if to > block.len() as u64 {
                    return None;
                }
                block.slice(from as usize..to as usize)
            }
        };
        self.hit(&b);
        Some(super::PageHit::Page(b))
    }

    /// Dropped at once: a tier below keeps it on disk, and the kernel's page cache holds what
    /// the reader read.
    async fn release(&self, block: &BlockId) {
        self.blocks.invalidate(&Key::Block(block.clone())).await;
    }

    /// Kept as a block: later reads of the block, and of its other pages, hit here.
    async fn keep_block(&self, block: &BlockId, bytes: Bytes) {
        self.blocks.insert(Key::Block(block.clone()), bytes).await;
        self.count_held().await;
    }

    async fn keep_pages(&self, pages: &[(PageRef, Bytes)]) {
        for (page, bytes) in pages {
            if bytes.len() as u64 == page.len() {
                let key = Key::Page(page.block.clone(), page.index);
                self.blocks.insert(key, bytes.clone()).await;
            }
        }
        self.count_held().await;
    }
}
