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

use crate::object::{BlockRef, ByteRange, ObjectMeta, SourceId};
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

    /// Whether some tier says, without I/O, that it holds the block.
    pub fn holds(&self, block: &BlockRef) -> bool {
        self.tiers.iter().any(|t| t.holds(block))
    }

    /// (blocks, bytes) this chain fetched from the origin so far.
    pub fn from_origin(&self) -> (u64, u64) {
        (
            self.origin_blocks.load(Ordering::Relaxed),
            self.origin_bytes.load(Ordering::Relaxed),
        )
    }

    /// Exactly `range` of `obj` from the origin, kept by no tier: for random reads, where a
    /// whole block would cost more than the bytes asked for.
    pub async fn get_uncached(&self, obj: &ObjectMeta, range: ByteRange) -> Result<Bytes, StoreError> {
        get_exact(self.origin.as_ref(), &obj.key, range, &obj.etag).await
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
