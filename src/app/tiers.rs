//! The block path, built once for `mount` and `warm`: the tier chain, nearest first, ending at
//! the origin store. A new tier is one more `with` here.

use std::sync::Arc;

use anyhow::Context;

use crate::cache::{DiskCache, DiskCacheSettings};
use crate::config::{CacheConfig, SharedCacheConfig};
use crate::metrics::{Metrics, StoreRole};
use crate::object::SourceId;
use crate::store::ObjectStore;
use crate::store::s3::S3Store;
use crate::tier::TierChain;
use crate::tier::disk::DiskTier;
use crate::tier::memory::MemoryTier;
use crate::tier::shared::{SharedTier, SharedTierSettings};

/// What the chain is made of.
pub struct TierPlan<'a> {
    pub source: SourceId,
    pub block_size: u64,
    /// Memory for the memory tier (`None`: no memory tier, e.g. for `warm`, which reads each
    /// block once).
    pub memory_bytes: Option<u64>,
    /// The disk cache, with `--cache`.
    pub cache: Option<&'a CacheConfig>,
    /// The shared tier, with `--shared-cache`.
    pub shared: Option<&'a SharedCacheConfig>,
    /// The shared tier waits for room in its write queue instead of dropping writes (`warm`).
    pub shared_writes_wait: bool,
}

/// The built chain, and the tiers the rest of the wiring needs by name.
pub struct Tiers {
    pub chain: Arc<TierChain>,
    pub memory: Option<Arc<MemoryTier>>,
    /// The disk cache also serves assembled files for passthrough, persisted metadata's space
    /// accounting and the cache-size metric.
    pub disk: Option<Arc<DiskCache>>,
    pub shared: Option<Arc<SharedTier>>,
}

/// memory → disk → shared → origin, each tier only when configured. Checks that the shared
/// bucket can be written (or, read-only, read) before anything is mounted.
pub async fn build(plan: TierPlan<'_>, origin: Arc<dyn ObjectStore>, metrics: &Arc<Metrics>) -> anyhow::Result<Tiers> {
    let common = build_common(&plan, metrics).await?;
    build_chain(&plan, &common, origin, metrics)
}

/// The tiers that every source of one process shares (`serve`): the memory tier, whose budget
/// is the process's, and the shared tier (its blocks name their source).
pub struct Common {
    memory: Option<Arc<MemoryTier>>,
    shared: Option<Arc<SharedTier>>,
}

/// Builds the shared tiers of `plan` (its source is not used).
pub async fn build_common(plan: &TierPlan<'_>, metrics: &Arc<Metrics>) -> anyhow::Result<Common> {
    let memory = plan
        .memory_bytes
        .map(|bytes| Arc::new(MemoryTier::new(bytes, plan.block_size).with_metrics(metrics.memory.clone())));
    let shared = match plan.shared {
        Some(cfg) => Some(Arc::new(shared_tier(cfg, plan.shared_writes_wait, metrics).await?)),
        None => None,
    };
    Ok(Common { memory, shared })
}

/// The chain of `plan.source`: the common tiers, and its own disk tier (a disk cache on the
/// one directory, serving this source's assembled files).
pub fn build_chain(
    plan: &TierPlan<'_>,
    common: &Common,
    origin: Arc<dyn ObjectStore>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Tiers> {
    let mut chain = TierChain::new(plan.source.clone(), plan.block_size, origin);
    if let Some(m) = &common.memory {
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
                lock_wait: crate::cache::LOCK_WAIT,
                object_files: true,
            },
            metrics,
        )?),
        None => None,
    };
    if let Some(d) = &disk {
        chain = chain.with(Arc::new(DiskTier::new(d.clone())));
    }
    if let Some(s) = &common.shared {
        chain = chain.with(s.clone());
    }
    tracing::info!(source = %plan.source, tiers = %chain.describe(), "block path");
    Ok(Tiers {
        chain: Arc::new(chain),
        memory: common.memory.clone(),
        disk,
        shared: common.shared.clone(),
    })
}

async fn shared_tier(cfg: &SharedCacheConfig, writes_wait: bool, metrics: &Arc<Metrics>) -> anyhow::Result<SharedTier> {
    let location = &cfg.location;
    let mut settings = super::s3_settings(&cfg.s3, &location.bucket);
    settings.role = StoreRole::SharedTier;
    let store = Arc::new(S3Store::new(&settings, metrics.clone()).await);
    let tier = SharedTier::new(
        store,
        SharedTierSettings {
            read_only: cfg.read_only,
            key: cfg.key.clone(),
            lease_wait: cfg.lease_wait,
            wait_for_queue: writes_wait,
            ..SharedTierSettings::new(location.prefix.clone())
        },
        metrics.shared.clone(),
    );
    let url = format!("s3://{}/{}", location.bucket, location.prefix);
    tier.probe().await.with_context(|| {
        if cfg.read_only {
            format!(
                "the shared cache {url} cannot be read (s3:GetObject is needed, and s3:ListBucket on a \
                 general purpose bucket, which otherwise answers 403 for missing keys)"
            )
        } else {
            format!(
                "the shared cache {url} cannot be written (s3:PutObject, s3:GetObject and s3:DeleteObject \
                 are needed, and s3:ListBucket on a general purpose bucket)"
            )
        }
    })?;
    Ok(tier)
}
