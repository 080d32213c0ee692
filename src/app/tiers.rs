//! The block path, built once for `mount` and `warm`: the tier chain, nearest first, ending at
//! the origin store. A new tier is one more `with` here.

use std::sync::Arc;

use crate::cache::{DiskCache, DiskCacheSettings};
use crate::config::CacheConfig;
use crate::metrics::Metrics;
use crate::object::SourceId;
use crate::store::ObjectStore;
use crate::tier::TierChain;
use crate::tier::disk::DiskTier;
use crate::tier::memory::MemoryTier;

/// What the chain is made of.
pub struct TierPlan<'a> {
    pub source: SourceId,
    pub block_size: u64,
    /// Memory for the memory tier (`None`: no memory tier, e.g. for `warm`, which reads each
    /// block once).
    pub memory_bytes: Option<u64>,
    /// The disk cache, with `--cache`.
    pub cache: Option<&'a CacheConfig>,
}

/// The built chain, and the tiers the rest of the wiring needs by name.
pub struct Tiers {
    pub chain: Arc<TierChain>,
    pub memory: Option<Arc<MemoryTier>>,
    /// The disk cache also serves assembled files for passthrough, persisted metadata's space
    /// accounting and the cache-size metric.
    pub disk: Option<Arc<DiskCache>>,
}

/// memory → disk → origin, each tier only when configured.
pub fn build(plan: TierPlan, origin: Arc<dyn ObjectStore>, metrics: &Metrics) -> anyhow::Result<Tiers> {
    let mut chain = TierChain::new(plan.source.clone(), plan.block_size, origin);
    let memory = plan
        .memory_bytes
        .map(|bytes| Arc::new(MemoryTier::new(bytes, plan.block_size)));
    if let Some(m) = &memory {
        chain = chain.with(m.clone());
    }
    let disk = match plan.cache {
        Some(c) => Some(DiskCache::open(
            DiskCacheSettings {
                dir: c.dir.clone(),
                max_size: c.max_size,
                min_free_percent: c.min_free_percent,
                block_size: plan.block_size,
                source: plan.source.clone(),
            },
            metrics,
        )?),
        None => None,
    };
    if let Some(d) = &disk {
        chain = chain.with(Arc::new(DiskTier::new(d.clone())));
    }
    tracing::debug!(tiers = %chain.describe(), "block path");
    Ok(Tiers {
        chain: Arc::new(chain),
        memory,
        disk,
    })
}
