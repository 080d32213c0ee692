//! The tier chain: every block a reader needs goes through one ordered list of cache tiers,
//! nearest first (memory, then the local disk cache, then any further tier), and ends at the
//! origin store (S3).
//!
//! A tier answers two questions for a [`BlockRef`]: "do you hold it?" ([`Tier::peek`]) and
//! "give it to me, else get it from the tiers below and keep it" ([`Tier::get`]). A tier never
//! knows which tier comes after it: it is handed a [`Below`], the rest of the chain. The chain
//! is built once in the wiring (`app`) and used by `mount` and `warm` alike.
//!
//! Invariants:
//! - A tier returns exactly `block.len()` bytes of the block's object version, or nothing. A
//!   tier that holds something it cannot verify treats it as absent (and drops it).
//! - A tier's own failures are never a reader's failures: a tier that cannot answer passes the
//!   request below. Only the origin's errors reach the caller, and they are never cached.
//! - Coalescing lives in the tier that can see the contention: the memory tier lets one task
//!   per block go below (single-flight within the process), the disk tier one process per
//!   block (a cross-process stripe lock).
//!
//! Adding a tier: implement [`Tier`] in a module of its own, add it to the chain in
//! `app::tiers`, and run the tier conformance suite (`tests.rs`) against it.

pub mod disk;
pub mod memory;
pub mod shared;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;

use crate::object::{BlockId, BlockRef, ByteRange, ObjectMeta, SourceId};
use crate::store::{ObjectStore, StoreError};

/// One cache tier of the chain.
#[async_trait]
pub trait Tier: Send + Sync + 'static {
    /// A short name for logs and metrics (`memory`, `disk`, ...).
    fn name(&self) -> &'static str;

    /// The block, if this tier holds it; otherwise what `below.peek` finds, which this tier then
    /// keeps. Never reaches the origin, so it costs no origin request.
    async fn peek(&self, block: &BlockRef, below: Below<'_>) -> Option<Bytes>;

    /// The block from this tier, else from `below.get` (kept here for the next reader).
    async fn get(&self, block: &BlockRef, below: Below<'_>) -> Result<Bytes, StoreError>;

    /// Whether this tier holds the block, answered without I/O and without waiting; may say
    /// `false` when it cannot tell cheaply. Used to skip needless prefetches.
    fn holds(&self, _block: &BlockRef) -> bool {
        false
    }

    /// Whether this tier is fetching the block from below right now (a `get` of it is under
    /// way), answered without waiting: a reader of part of the block then waits for that fetch
    /// (its `get` joins it) rather than fetching the part again.
    fn fetching(&self, _block: &BlockRef) -> bool {
        false
    }

    /// The page, if this tier keeps it: the page (exactly `page.len()` bytes), or the whole
    /// block holding it (exactly `page.block_len` bytes), which the tiers above then keep whole,
    /// so the block's other pages are read from them. Never reaches below. Tiers that keep no
    /// pages say `None`.
    async fn page(&self, _page: &PageRef) -> Option<PageHit> {
        None
    }

    /// Keeps pages the chain fetched from the origin for a random read (each exactly
    /// `page.len()` bytes). Tiers that keep no pages ignore them.
    async fn keep_pages(&self, _pages: &[(PageRef, Bytes)]) {}

    /// Keeps a whole block a tier below found for a page (exactly the block's bytes). Tiers that
    /// keep no pages ignore it.
    async fn keep_block(&self, _block: &BlockId, _bytes: Bytes) {}

    /// Whether this tier keeps the blocks it stores on local disk, across restarts: a tier
    /// above may then let go of a block a scan is done with ([`Tier::release`]).
    fn keeps_on_disk(&self) -> bool {
        false
    }

    /// A sequential reader is done with this block, and a tier below keeps blocks on disk (it
    /// stored this one as it came, unless it had no room or no lock in time): a tier that holds
    /// blocks only to serve them again soon may drop it now. The others ignore it.
    async fn release(&self, _block: &BlockId) {}
}

pub use crate::object::PAGE_SIZE;

/// What a tier found for a page (`Tier::page`).
pub enum PageHit {
    /// The page's bytes.
    Page(Bytes),
    /// The whole block holding the page.
    Block(Bytes),
}

/// Page `index` of a block (bytes `[index * PAGE_SIZE, ...)` of the block, shorter only at the
/// end of the object), named by the block's id, so a page never outlives its object version,
/// source or block size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRef {
    pub block: BlockId,
    pub index: u64,
    /// The bytes of the object this page covers.
    pub range: ByteRange,
    /// The length of the page's block (shorter than the block size only at the object's end).
    pub block_len: u64,
}

impl PageRef {
    pub fn len(&self) -> u64 {
        self.range.len()
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }
}

/// The rest of the chain below one tier.
#[derive(Clone, Copy)]
pub struct Below<'a> {
    chain: &'a TierChain,
    next: usize,
}

impl<'a> Below<'a> {
    pub async fn get(self, block: &BlockRef) -> Result<Bytes, StoreError> {
        self.chain.get_from(self.next, block).await
    }

    pub async fn peek(self, block: &BlockRef) -> Option<Bytes> {
        self.chain.peek_from(self.next, block).await
    }
}

/// The tiers, nearest first, and the origin they end at.
pub struct TierChain {
    source: SourceId,
    block_size: u64,
    tiers: Vec<Arc<dyn Tier>>,
    origin: Arc<dyn ObjectStore>,
    /// Blocks and bytes this chain fetched from the origin.
    origin_blocks: AtomicU64,
    origin_bytes: AtomicU64,
}

impl TierChain {
    /// A chain with no cache tier: every block comes from `origin` (objects of `source`).
    pub fn new(source: SourceId, block_size: u64, origin: Arc<dyn ObjectStore>) -> TierChain {
        assert!(block_size > 0, "block size must be positive");
        TierChain {
            source,
            block_size,
            tiers: Vec::new(),
            origin,
            origin_blocks: AtomicU64::new(0),
            origin_bytes: AtomicU64::new(0),
        }
    }

    /// Appends `tier` below the tiers already in the chain (and above the origin).
    pub fn with(mut self, tier: Arc<dyn Tier>) -> TierChain {
        self.tiers.push(tier);
        self
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// The tiers' names, nearest first (for logs).
    pub fn describe(&self) -> String {
        let mut names: Vec<&str> = self.tiers.iter().map(|t| t.name()).collect();
        names.push("origin");
        names.join(" -> ")
    }

    /// Block `index` of `obj`.
    pub fn block(&self, obj: &ObjectMeta, index: u64) -> BlockRef {
        BlockRef::new(&self.source, obj, self.block_size, index)
    }

    /// The block from the nearest tier that has it, else from the origin; every tier passed on
    /// the way keeps it.
    pub async fn get(&self, block: &BlockRef) -> Result<Bytes, StoreError> {
        self.get_from(0, block).await
    }

    /// The block if some tier holds it, without asking the origin.
    pub async fn peek(&self, block: &BlockRef) -> Option<Bytes> {
        self.peek_from(0, block).await
    }

    /// A sequential reader is done with `block`: each tier with a tier below it that keeps
    /// blocks on disk may let go of it (the memory tier does, so that a scan does not fill the
    /// memory with blocks read once, and their buffers are reused at once).
    pub async fn release(&self, block: &BlockRef) {
        for (i, tier) in self.tiers.iter().enumerate() {
            if self.tiers[i + 1..].iter().any(|t| t.keeps_on_disk()) {
                tier.release(&block.id).await;
            }
        }
    }

    /// Whether some tier says, without I/O, that it holds the block.
    pub fn holds(&self, block: &BlockRef) -> bool {
        self.tiers.iter().any(|t| t.holds(block))
    }

    /// Whether some tier is fetching the block right now ([`Tier::fetching`]).
    pub fn fetching(&self, block: &BlockRef) -> bool {
        self.tiers.iter().any(|t| t.fetching(block))
    }

    /// (blocks, bytes) this chain fetched from the origin so far.
    pub fn from_origin(&self) -> (u64, u64) {
        (
            self.origin_blocks.load(Ordering::Relaxed),
            self.origin_bytes.load(Ordering::Relaxed),
        )
    }

    /// The pages of `obj` that cover `range`, in order.
    pub fn pages(&self, obj: &ObjectMeta, range: ByteRange) -> Vec<PageRef> {
        if range.is_empty() {
            return Vec::new();
        }
        let end = range.end.min(obj.size);
        let mut pages = Vec::new();
        let mut at = range.start - range.start % PAGE_SIZE;
        while at < end {
            let block = self.block(obj, at / self.block_size);
            let index = (at - block.range.start) / PAGE_SIZE;
            let page_end = (at + PAGE_SIZE).min(block.range.end);
            let block_len = block.len();
            pages.push(PageRef {
                block: block.id,
                index,
                range: ByteRange::new(at, page_end),
                block_len,
            });
            at = page_end;
        }
        pages
    }

    /// A page from the nearest tier that has it (checked for length), without I/O below; the
    /// tiers above the one that had it keep it.
    async fn cached_page(&self, page: &PageRef) -> Option<Bytes> {
        for (i, tier) in self.tiers.iter().enumerate() {
            let (b, block) = match tier.page(page).await {
                Some(PageHit::Page(b)) => (b, None),
                Some(PageHit::Block(block)) if block.len() as u64 == page.block_len => {
                    let from = (page.index * PAGE_SIZE).min(page.block_len) as usize;
                    let to = (from as u64 + page.len()).min(page.block_len) as usize;
                    (block.slice(from..to), Some(block))
                }
                _ => continue,
            };
            if b.len() as u64 != page.len() {
                continue;
            }
            if i > 0 {
                let keep = [(page.clone(), b.clone())];
                for above in &self.tiers[..i] {
                    match &block {
                        Some(block) => above.keep_block(&page.block, block.clone()).await,
                        None => above.keep_pages(&keep).await,
                    }
                }
            }
            return Some(b);
        }
        None
    }

    /// Exactly `range` of `obj` if the tiers hold every page of it (as pages or whole blocks),
    /// without any request.
    pub async fn cached_range(&self, obj: &ObjectMeta, range: ByteRange) -> Option<Bytes> {
        let pages = self.pages(obj, range);
        let mut got = Vec::with_capacity(pages.len());
        for p in &pages {
            got.push(self.cached_page(p).await?);
        }
        Some(join_pages(range, &pages, &got))
    }

    /// Exactly `range` of `obj` for a random read: the pages the tiers hold, and the missing
    /// ones fetched from the origin (one ranged GET, pinned to the ETag, per contiguous run of
    /// missing pages, all at once) and kept by the tiers that keep pages. A page costs at most
    /// `PAGE_SIZE` bytes more than asked for at each end of the range.
    pub async fn get_range(&self, obj: &ObjectMeta, range: ByteRange) -> Result<Bytes, StoreError> {
        let pages = self.pages(obj, range);
        let mut got: Vec<Option<Bytes>> = Vec::with_capacity(pages.len());
        for p in &pages {
            got.push(self.cached_page(p).await);
        }
        // Runs of missing pages that are contiguous in the object: (first page, last page).
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (i, g) in got.iter().enumerate() {
            if g.is_some() {
                continue;
            }
            match runs.last_mut() {
                Some((_, last)) if *last + 1 == i => *last = i,
                _ => runs.push((i, i)),
            }
        }
        let fetched = futures::future::try_join_all(runs.iter().map(|&(a, b)| {
            let span = ByteRange::new(pages[a].range.start, pages[b].range.end);
            async move {
                let bytes = get_exact(self.origin.as_ref(), &obj.key, span, &obj.etag).await?;
                self.origin_blocks.fetch_add(1, Ordering::Relaxed);
                self.origin_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok::<_, StoreError>(bytes)
            }
        }))
        .await?;
        let mut keep = Vec::new();
        for (&(a, b), bytes) in runs.iter().zip(fetched) {
            let base = pages[a].range.start;
            for i in a..=b {
                let r = pages[i].range;
                let page = bytes.slice((r.start - base) as usize..(r.end - base) as usize);
                keep.push((pages[i].clone(), page.clone()));
                got[i] = Some(page);
            }
        }
        for tier in &self.tiers {
            tier.keep_pages(&keep).await;
        }
        let got: Vec<Bytes> = got.into_iter().map(|g| g.expect("every page was fetched")).collect();
        Ok(join_pages(range, &pages, &got))
    }

    fn get_from<'a>(&'a self, i: usize, block: &'a BlockRef) -> BoxFuture<'a, Result<Bytes, StoreError>> {
        Box::pin(async move {
            match self.tiers.get(i) {
                Some(tier) => {
                    tier.get(
                        block,
                        Below {
                            chain: self,
                            next: i + 1,
                        },
                    )
                    .await
                }
                None => {
                    let b = get_exact(self.origin.as_ref(), &block.id.key, block.range, &block.id.etag).await?;
                    self.origin_blocks.fetch_add(1, Ordering::Relaxed);
                    self.origin_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                    Ok(b)
                }
            }
        })
    }

    fn peek_from<'a>(&'a self, i: usize, block: &'a BlockRef) -> BoxFuture<'a, Option<Bytes>> {
        Box::pin(async move {
            let tier = self.tiers.get(i)?;
            tier.peek(
                block,
                Below {
                    chain: self,
                    next: i + 1,
                },
            )
            .await
        })
    }
}

/// The bytes `range` (clipped to the pages' end, the object's end) out of its `pages`.
fn join_pages(range: ByteRange, pages: &[PageRef], got: &[Bytes]) -> Bytes {
    let Some(last) = pages.last() else {
        return Bytes::new();
    };
    let end = range.end.min(last.range.end);
    let slice = |p: &PageRef, b: &Bytes| {
        let from = range.start.max(p.range.start) - p.range.start;
        let to = end.min(p.range.end) - p.range.start;
        b.slice(from as usize..to as usize)
    };
    if pages.len() == 1 {
        return slice(&pages[0], &got[0]);
    }
    let mut out = bytes::BytesMut::with_capacity((end - range.start) as usize);
    for (p, b) in pages.iter().zip(got) {
        out.extend_from_slice(&slice(p, b));
    }
    out.freeze()
}

/// A ranged GET from the origin, pinned to `etag`, that returns exactly `range.len()` bytes or
/// an error (a short or long body is never data).
async fn get_exact(store: &dyn ObjectStore, key: &str, range: ByteRange, etag: &str) -> Result<Bytes, StoreError> {
    if range.is_empty() {
        return Ok(Bytes::new());
    }
    let bytes = store.get_range(key, range, etag).await?;
    if bytes.len() as u64 != range.len() {
        return Err(StoreError::BadResponse(format!(
            "{key}: expected {} bytes at {}, got {}",
            range.len(),
            range.start,
            bytes.len()
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests;
