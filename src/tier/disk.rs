//! The disk tier: the node's disk cache (`cache::DiskCache`) as a tier of the chain. Blocks are
//! verified on every read; a block missing on disk is fetched from below once across every
//! process sharing the cache directory (the cache's stripe lock), then stored. Whatever a tier
//! below finds on a `peek` is stored here too, so the next reader on this node reads it
//! locally.
//!
//! Pages of random reads are kept in page files (`cache::pages`), merged on a blocking thread
//! the read does not wait for; a page is served from the block file, the assembled file or the
//! page file.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Below, PageHit, PageRef, Tier};
use crate::cache::{DiskCache, FoundPage};
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

    fn keeps_on_disk(&self) -> bool {
        true
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

    async fn page(&self, page: &PageRef) -> Option<PageHit> {
        Some(
            match self.0.page(&page.block, page.block_len, page.index, page.len()).await? {
                FoundPage::Block(b) => PageHit::Block(b),
                FoundPage::Page(p) => PageHit::Page(p),
            },
        )
    }

    /// Hands the pages to a blocking thread, one merge per block; the read does not wait.
    async fn keep_pages(&self, pages: &[(PageRef, Bytes)]) {
        let mut i = 0;
        while i < pages.len() {
            let first = &pages[i].0;
            let mut group = Vec::new();
            while i < pages.len() && pages[i].0.block == first.block {
                group.push((pages[i].0.index, pages[i].1.clone()));
                i += 1;
            }
            self.0.keep_pages(&first.block, first.block_len, group);
        }
    }
}
