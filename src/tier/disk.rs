//! The disk tier: the node's disk cache (`cache::DiskCache`) as a tier of the chain. Blocks are
//! verified on every read; a block missing on disk is fetched from below once across every
//! process sharing the cache directory (the cache's stripe lock), then stored. Whatever a tier
//! below finds on a `peek` is stored here too, so the next reader on this node reads it
//! locally.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Below, Tier};
use crate::cache::DiskCache;
use crate::object::BlockRef;
use crate::store::StoreError;

pub struct DiskTier(Arc<DiskCache>);

impl DiskTier {
    pub fn new(cache: Arc<DiskCache>) -> DiskTier {
        DiskTier(cache)
    }
}

#[async_trait]
impl Tier for DiskTier {
    fn name(&self) -> &'static str {
        "disk"
    }

    async fn peek(&self, block: &BlockRef, below: Below<'_>) -> Option<Bytes> {
        if let Some(b) = self.0.peek(block).await {
            return Some(b);
        }
        let b = below.peek(block).await?;
        self.0.put(block, b.clone()).await;
        Some(b)
    }

    async fn get(&self, block: &BlockRef, below: Below<'_>) -> Result<Bytes, StoreError> {
        self.0.get_or_fetch(block, below.get(block)).await
    }
}
