//! The memory tier: recently read blocks in a bounded in-memory LRU, so the kernel's many small
//! reads of one block cost one trip below. Concurrent misses of one block are coalesced
//! (single-flight): N readers of a cold block send one request below.
//!
//! Memory bound: the cache's capacity plus the blocks in flight (being fetched from below, at
//! most `in_flight` of them, 4 to 64) fit in the configured memory, apart from the minimum of
//! 4 blocks in flight and one cached block.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use moka::future::Cache;
use moka::policy::EvictionPolicy;
use tokio::sync::Semaphore;

use super::{Below, Tier};
use crate::object::{BlockId, BlockRef};
use crate::store::StoreError;

pub struct MemoryTier {
    blocks: Cache<BlockId, Bytes>,
    /// Bounds blocks being fetched from below at once (demand and prefetch), and the exact
    /// ranges of random reads, which the read layer takes from here too.
    in_flight: Arc<Semaphore>,
}

impl MemoryTier {
    /// A memory tier using about `memory_bytes` for blocks of `block_size` bytes: a quarter
    /// for blocks in flight (4 to 64 of them), the rest for the cache.
    pub fn new(memory_bytes: u64, block_size: u64) -> MemoryTier {
        let in_flight = (memory_bytes / 4 / block_size).clamp(4, 64);
        let blocks = Cache::builder()
            .max_capacity(memory_bytes.saturating_sub(in_flight * block_size).max(block_size))
            .weigher(|_: &BlockId, b: &Bytes| b.len().try_into().unwrap_or(u32::MAX))
            // Plain LRU: a prefetched block, seen once, must not be refused admission in
            // favour of older, more often read blocks (TinyLFU's default).
            .eviction_policy(EvictionPolicy::lru())
            .build();
        MemoryTier {
            blocks,
            in_flight: Arc::new(Semaphore::new(in_flight as usize)),
        }
    }

    /// The slots that bound bytes in flight; a reader fetching anything outside the chain
    /// (an exact range) holds one too.
    pub fn in_flight(&self) -> Arc<Semaphore> {
        self.in_flight.clone()
    }
}

#[async_trait]
impl Tier for MemoryTier {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn peek(&self, block: &BlockRef, below: Below<'_>) -> Option<Bytes> {
        if let Some(b) = self.blocks.get(&block.id).await {
            return Some(b);
        }
        let b = below.peek(block).await?;
        self.blocks.insert(block.id.clone(), b.clone()).await;
        Some(b)
    }

    async fn get(&self, block: &BlockRef, below: Below<'_>) -> Result<Bytes, StoreError> {
        self.blocks
            .try_get_with(block.id.clone(), async {
                let _slot = self.in_flight.acquire().await.expect("semaphore is never closed");
                below.get(block).await
            })
            .await
            .map_err(|e| (*e).clone())
    }

    fn holds(&self, block: &BlockRef) -> bool {
        self.blocks.contains_key(&block.id)
    }
}
