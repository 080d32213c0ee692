//! The tier conformance suite: the same cases run against every tier (`tier_suite!` at the
//! bottom instantiates them per tier). A new tier adds one line there.
//!
//! Each case builds a chain `[tier under test] -> origin`, where the origin is an in-memory
//! store that counts GETs and can fail or delay them, and checks what a tier promises: exact
//! bytes, one trip below per block however many readers ask at once, nothing kept from a failed
//! fetch, identities that never match another version, source or block size, and `peek` that
//! never reaches the origin.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::disk::DiskTier;
use super::memory::MemoryTier;
use super::shared::{SharedTier, SharedTierSettings};
use super::*;
use crate::cache::{DiskCache, DiskCacheSettings};
use crate::metrics::Metrics;
use crate::store::fault::FaultStore;
use crate::store::memory::MemoryStore;

const BS: u64 = 4096;

type Origin = Arc<FaultStore<MemoryStore>>;

/// A fresh tier of one kind, with whatever must live as long as it (a temp directory), and
/// what to wait for before its writes can be seen (the shared tier writes in the background).
struct Made {
    tier: Arc<dyn Tier>,
    _keep: Box<dyn std::any::Any>,
    shared: Option<Arc<SharedTier>>,
}

impl Made {
    fn new(tier: Arc<dyn Tier>, keep: impl std::any::Any) -> Made {
        Made {
            tier,
            _keep: Box::new(keep),
            shared: None,
        }
    }

    /// Waits until what the tier was given to keep is kept.
    async fn settle(&self) {
        if let Some(s) = &self.shared {
            s.flush().await;
        }
    }
}

fn memory_tier() -> Made {
    Made::new(Arc::new(MemoryTier::new(1 << 20, BS)), ())
}

/// The shared tier over an in-memory bucket (its own store, apart from the origin).
fn shared_tier() -> Made {
    let bucket = Arc::new(MemoryStore::new());
    let tier = Arc::new(SharedTier::new(
        bucket.clone(),
        SharedTierSettings::new("cache/".into()),
        crate::metrics::SharedTierMetrics::default(),
    ));
    Made {
        tier: tier.clone(),
        _keep: Box::new(bucket),
        shared: Some(tier),
    }
}

fn disk_tier() -> Made {
    let dir = tempfile::tempdir().unwrap();
    let cache = disk_cache(dir.path(), BS);
    Made::new(Arc::new(DiskTier::new(cache)), dir)
}

fn disk_cache(dir: &std::path::Path, block_size: u64) -> Arc<DiskCache> {
    DiskCache::open(
        DiskCacheSettings {
            dir: dir.to_path_buf(),
            max_size: None,
            min_free_percent: 0.0,
            block_size,
            source: source(),
            lock_wait: crate::cache::LOCK_WAIT,
            object_files: true,
        },
        &Metrics::new(),
    )
    .unwrap()
}

fn source() -> SourceId {
    SourceId::new(Some("http://127.0.0.1:1"), "bucket", "")
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| ((i * 131 + i / 4093) as u8) ^ seed).collect()
}

fn origin_with(key: &str, body: &[u8]) -> (Origin, ObjectMeta) {
    let s = Arc::new(FaultStore::new(MemoryStore::new()));
    let etag = s.inner().put(key, body.to_vec());
    let meta = ObjectMeta {
        key: key.into(),
        size: body.len() as u64,
        etag: etag.into(),
        last_modified: SystemTime::UNIX_EPOCH,
    };
    (s, meta)
}

fn chain(origin: &Origin, tier: &Arc<dyn Tier>) -> TierChain {
    TierChain::new(source(), BS, origin.clone()).with(tier.clone())
}

fn gets(origin: &Origin) -> u64 {
    origin.inner().gets.load(Ordering::SeqCst)
}

fn expected(body: &[u8], block: &BlockRef) -> Vec<u8> {
    body[block.range.start as usize..block.range.end as usize].to_vec()
}

/// A miss goes below once; the same block again is served by the tier, byte for byte.
async fn miss_then_hit(make: fn() -> Made) {
    let made = make();
    let tier = made.tier.clone();
    let body = data(3 * BS as usize + 100, 1);
    let (origin, meta) = origin_with("a/b.jar", &body);
    let c = chain(&origin, &tier);
    for index in 0..4 {
        let b = c.block(&meta, index);
        assert_eq!(c.get(&b).await.unwrap().to_vec(), expected(&body, &b), "block {index}");
    }
    made.settle().await;
    assert_eq!(gets(&origin), 4);
    for index in (0..4).rev() {
        let b = c.block(&meta, index);
        assert_eq!(
            c.get(&b).await.unwrap().to_vec(),
            expected(&body, &b),
            "block {index} again"
        );
        assert_eq!(c.peek(&b).await.unwrap().to_vec(), expected(&body, &b), "peek {index}");
    }
    assert_eq!(gets(&origin), 4, "hits never go below");
    // The last block is short, and exactly as long as the object's tail.
    assert_eq!(c.get(&c.block(&meta, 3)).await.unwrap().len(), 100);
}

/// `peek` of a block nobody fetched answers `None` and sends nothing to the origin.
async fn peek_never_reaches_the_origin(make: fn() -> Made) {
    let made = make();
    let tier = made.tier.clone();
    let (origin, meta) = origin_with("k", &data(BS as usize, 2));
    let c = chain(&origin, &tier);
    assert!(c.peek(&c.block(&meta, 0)).await.is_none());
    assert_eq!(gets(&origin), 0);
}

/// Many readers missing one block at once send one request below.
async fn concurrent_misses_coalesce(make: fn() -> Made) {
    let made = make();
    let tier = made.tier.clone();
    let body = data(2 * BS as usize, 3);
    let (origin, meta) = origin_with("hot", &body);
    origin.set_latency(Duration::from_millis(50));
    let c = Arc::new(chain(&origin, &tier));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (c, meta) = (c.clone(), meta.clone());
            tokio::spawn(async move {
                let b = c.block(&meta, 1);
                c.get(&b).await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(&t.await.unwrap()[..], &body[BS as usize..]);
    }
    assert_eq!(gets(&origin), 1);
}

/// A failed fetch is the caller's error and leaves nothing behind: the next read fetches again.
async fn failures_are_not_kept(make: fn() -> Made) {
    let made = make();
    let tier = made.tier.clone();
    let body = data(BS as usize, 4);
    let (origin, meta) = origin_with("k", &body);
    let c = chain(&origin, &tier);
    let b = c.block(&meta, 0);
    origin.fail_next(1, StoreError::Timeout);
    assert_eq!(c.get(&b).await, Err(StoreError::Timeout));
    made.settle().await;
    assert!(c.peek(&b).await.is_none());
    assert_eq!(&c.get(&b).await.unwrap()[..], &body[..]);
}

/// A block is another block under another ETag, source (or partition) or block size: none of them is ever
/// answered with bytes kept for the other.
async fn identity_covers_version_source_and_block_size(make: fn() -> Made) {
    let made = make();
    let tier = made.tier.clone();
    let old = data(BS as usize, 5);
    let (origin, meta) = origin_with("k", &old);
    let c = chain(&origin, &tier);
    let b = c.block(&meta, 0);
    assert_eq!(&c.get(&b).await.unwrap()[..], &old[..]);
    made.settle().await;

    // The object changes: the new version's block is fetched anew, never the old bytes.
    let new = data(BS as usize, 6);
    let new_meta = ObjectMeta {
        etag: origin.inner().put("k", new.clone()).into(),
        ..meta.clone()
    };
    let nb = c.block(&new_meta, 0);
    assert!(c.peek(&nb).await.is_none());
    assert_eq!(&c.get(&nb).await.unwrap()[..], &new[..]);
    made.settle().await;
    assert_eq!(gets(&origin), 2);

    // The same key and ETag from another source is another block.
    let other = TierChain::new(
        SourceId::new(Some("http://127.0.0.1:2"), "bucket", ""),
        BS,
        origin.clone(),
    )
    .with(tier.clone());
    assert!(other.peek(&other.block(&new_meta, 0)).await.is_none());
    // ... and so is the same source read by another identity (another partition of the caches).
    let stranger = TierChain::new(
        SourceId::new(Some("http://127.0.0.1:1"), "bucket", "principal-x"),
        BS,
        origin.clone(),
    )
    .with(tier.clone());
    assert!(stranger.peek(&stranger.block(&new_meta, 0)).await.is_none());

    // ... and so is the same object cut into blocks of another size.
    let halves = TierChain::new(source(), BS / 2, origin.clone()).with(tier.clone());
    let half = halves.block(&new_meta, 0);
    assert!(halves.peek(&half).await.is_none());
    assert_eq!(&halves.get(&half).await.unwrap()[..], &new[..BS as usize / 2]);
    assert_eq!(gets(&origin), 3);

    // A block of a version the origin no longer has fails; it is never served as data.
    let stale = c.block(&meta, 0);
    let fresh = TierChain::new(source(), BS, origin.clone());
    assert_eq!(fresh.get(&stale).await, Err(StoreError::PreconditionFailed));
}

/// What a tier below finds on `peek` is kept by the tier above it.
async fn peek_keeps_what_below_found(make: fn() -> Made) {
    let made = make();
    let tier = made.tier.clone();
    let body = data(BS as usize, 7);
    let (origin, meta) = origin_with("k", &body);
    let below: Arc<dyn Tier> = Arc::new(MemoryTier::new(1 << 20, BS));
    let lower = TierChain::new(source(), BS, origin.clone()).with(below.clone());
    let b = lower.block(&meta, 0);
    lower.get(&b).await.unwrap();
    let both = TierChain::new(source(), BS, origin.clone())
        .with(tier.clone())
        .with(below);
    assert_eq!(&both.peek(&b).await.unwrap()[..], &body[..]);
    made.settle().await;
    let alone = chain(&origin, &tier);
    assert_eq!(&alone.peek(&b).await.unwrap()[..], &body[..]);
    assert_eq!(gets(&origin), 1);
}

/// An origin that answers every ranged GET one byte short, as a store with a bug (or a cut
/// body that slipped through) would.
struct ShortBodies(Arc<MemoryStore>);

#[async_trait::async_trait]
impl ObjectStore for ShortBodies {
    async fn list(&self, req: crate::store::ListRequest<'_>) -> Result<crate::store::ListPage, StoreError> {
        self.0.list(req).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.0.head(key).await
    }
    async fn get_range(&self, key: &str, range: ByteRange, etag: &str) -> Result<Bytes, StoreError> {
        let b = self.0.get_range(key, range, etag).await?;
        Ok(b.slice(..b.len() - 1))
    }
    fn describe(&self) -> String {
        "short bodies".into()
    }
}

/// A body of the wrong length from the origin is an error, never a block, and nothing is kept.
async fn wrong_length_from_the_origin_is_an_error(make: fn() -> Made) {
    let made = make();
    let body = data(2 * BS as usize, 8);
    let store = Arc::new(MemoryStore::new());
    let etag = store.put("k", body.clone());
    let meta = ObjectMeta {
        key: "k".into(),
        size: body.len() as u64,
        etag: etag.into(),
        last_modified: SystemTime::UNIX_EPOCH,
    };
    let c = TierChain::new(source(), BS, Arc::new(ShortBodies(store.clone()))).with(made.tier.clone());
    let b = c.block(&meta, 1);
    assert!(matches!(c.get(&b).await, Err(StoreError::BadResponse(_))));
    made.settle().await;
    assert!(c.peek(&b).await.is_none(), "nothing kept");
    // The same tier over a correct origin fetches the block anew and serves it whole.
    let good = TierChain::new(source(), BS, store).with(made.tier.clone());
    assert_eq!(&good.get(&b).await.unwrap()[..], &body[BS as usize..]);
}

macro_rules! tier_suite {
    ($($tier:ident),*) => {
        $(
            mod $tier {
                #[tokio::test]
                async fn miss_then_hit() {
                    super::miss_then_hit(super::$tier).await;
                }
                #[tokio::test]
                async fn peek_never_reaches_the_origin() {
                    super::peek_never_reaches_the_origin(super::$tier).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn concurrent_misses_coalesce() {
                    super::concurrent_misses_coalesce(super::$tier).await;
                }
                #[tokio::test]
                async fn failures_are_not_kept() {
                    super::failures_are_not_kept(super::$tier).await;
                }
                #[tokio::test]
                async fn identity_covers_version_source_and_block_size() {
                    super::identity_covers_version_source_and_block_size(super::$tier).await;
                }
                #[tokio::test]
                async fn peek_keeps_what_below_found() {
                    super::peek_keeps_what_below_found(super::$tier).await;
                }
                #[tokio::test]
                async fn wrong_length_from_the_origin_is_an_error() {
                    super::wrong_length_from_the_origin_is_an_error(super::$tier).await;
                }
            }
        )*
    };
}

tier_suite!(memory_tier, disk_tier, shared_tier);

/// The memory tier's metrics: a miss, then hits (coalesced waiters included) with their bytes,
/// the bytes it holds, and nothing left counted in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_tier_counts_hits_misses_and_bytes() {
    let m = crate::metrics::MemoryTierMetrics::default();
    let tier: Arc<dyn Tier> = Arc::new(MemoryTier::new(1 << 20, BS).with_metrics(m.clone()));
    let body = data(2 * BS as usize, 3);
    let (origin, meta) = origin_with("k", &body);
    origin.set_latency(Duration::from_millis(50));
    let c = Arc::new(chain(&origin, &tier));
    let b = c.block(&meta, 0);
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (c, b) = (c.clone(), b.clone());
            tokio::spawn(async move { c.get(&b).await.unwrap() })
        })
        .collect();
    for r in readers {
        assert_eq!(r.await.unwrap().len(), BS as usize);
    }
    assert_eq!(gets(&origin), 1);
    assert_eq!(m.misses.get(), 1);
    assert_eq!(m.hits.get(), 7, "coalesced readers sent nothing below");
    assert_eq!(m.hit_bytes.get(), 7 * BS);
    assert_eq!(m.in_flight.get(), 0);
    c.get(&c.block(&meta, 1)).await.unwrap();
    assert_eq!(m.misses.get(), 2);
    assert_eq!(m.bytes.get(), 2 * BS as i64);
}

/// A page found inside a whole block on disk makes the memory tier keep that block: the block's
/// other pages are then read from memory, not each from disk (which reads and checks the whole
/// block every time).
#[tokio::test]
async fn a_block_found_on_disk_for_a_page_is_kept_whole_in_memory() {
    const BIG: u64 = 4 * PAGE_SIZE;
    let dir = tempfile::tempdir().unwrap();
    let cache = disk_cache(dir.path(), BIG);
    let disk: Arc<dyn Tier> = Arc::new(DiskTier::new(cache.clone()));
    let body = data(2 * BIG as usize, 9);
    let (origin, meta) = origin_with("t.parquet", &body);
    let on_disk = TierChain::new(source(), BIG, origin.clone()).with(disk.clone());
    on_disk.get(&on_disk.block(&meta, 0)).await.unwrap();
    assert_eq!(gets(&origin), 1);
    let hits = cache.stats().hits.get();
    let memory: Arc<dyn Tier> = Arc::new(MemoryTier::new(1 << 20, BIG));
    let c = TierChain::new(source(), BIG, origin.clone()).with(memory).with(disk);
    for p in 0..4 {
        let r = ByteRange::new(p * PAGE_SIZE + 100, (p + 1) * PAGE_SIZE - 100);
        let got = c.cached_range(&meta, r).await.unwrap();
        assert!(got[..] == body[r.start as usize..r.end as usize], "page {p}");
    }
    assert_eq!(cache.stats().hits.get() - hits, 1, "one read of the block from disk");
    assert_eq!(gets(&origin), 1);
}
