//! Races between nodes in the lease protocol, made deterministic: node A's view of the
//! shared bucket runs node B's whole fetch (lease, origin GET, block write, release) at one
//! chosen moment of A's miss.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use super::*;
use crate::object::{ByteRange, ObjectMeta, SourceId};
use crate::store::fault::FaultStore;
use crate::store::memory::MemoryStore;
use crate::store::{ListPage, ListRequest, ObjectStore};
use crate::tier::TierChain;

const BS: u64 = 4096;

type Hook = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The shared bucket as node A sees it: before A's first `op` ("put" or "head") on a lease
/// object, `hook` runs to completion.
struct Interleaved {
    bucket: Arc<MemoryStore>,
    op: &'static str,
    hook: Mutex<Option<Hook>>,
}

impl Interleaved {
    async fn before(&self, op: &str, key: &str) {
        if op == self.op && key.contains("/s3cachefs/v1/leases/") {
            let hook = self.hook.lock().unwrap().take();
            if let Some(h) = hook {
                h.await;
            }
        }
    }
}

#[async_trait]
impl ObjectStore for Interleaved {
    async fn list(&self, req: ListRequest<'_>) -> Result<ListPage, StoreError> {
        self.bucket.list(req).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.before("head", key).await;
        self.bucket.head(key).await
    }

    async fn get_range(&self, key: &str, range: ByteRange, etag: &str) -> Result<Bytes, StoreError> {
        self.bucket.get_range(key, range, etag).await
    }

    fn describe(&self) -> String {
        "interleaved".into()
    }
}

#[async_trait]
impl WritableStore for Interleaved {
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<PutOutcome, StoreError> {
        self.before("put", key).await;
        self.bucket.put_if_absent(key, body).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.bucket.delete(key).await
    }

    async fn get_object(&self, key: &str, max_len: u64) -> Result<Bytes, StoreError> {
        self.bucket.get_object(key, max_len).await
    }
}

struct Nodes {
    origin: Arc<FaultStore<MemoryStore>>,
    bucket: Arc<MemoryStore>,
    a: Arc<SharedTier>,
    a_chain: TierChain,
    /// Node A's view of the bucket, to install node B's fetch as its hook.
    a_view: Arc<Interleaved>,
    b: Arc<SharedTier>,
    b_chain: Arc<TierChain>,
    meta: ObjectMeta,
    body: Vec<u8>,
}

/// Two nodes over one bucket and one origin holding a one-block object; A's bucket runs a
/// hook before its first `op` on a lease.
fn nodes(op: &'static str) -> Nodes {
    let body: Vec<u8> = (0..BS as usize).map(|i| (i * 7) as u8).collect();
    let origin = Arc::new(FaultStore::new(MemoryStore::new()));
    let etag = origin.inner().put("k", body.clone());
    let meta = ObjectMeta {
        key: "k".into(),
        size: BS,
        etag: etag.into(),
        last_modified: SystemTime::UNIX_EPOCH,
    };
    let source = SourceId::new(Some("http://127.0.0.1:1"), "bucket", "");
    let bucket = Arc::new(MemoryStore::new());
    let settings = SharedTierSettings {
        lease_wait: Duration::from_secs(30),
        ..SharedTierSettings::new("cache/".into())
    };
    let a_view = Arc::new(Interleaved {
        bucket: bucket.clone(),
        op,
        hook: Mutex::new(None),
    });
    let a = Arc::new(SharedTier::new(
        a_view.clone(),
        settings.clone(),
        SharedTierMetrics::default(),
    ));
    let b = Arc::new(SharedTier::new(bucket.clone(), settings, SharedTierMetrics::default()));
    Nodes {
        a_chain: TierChain::new(source.clone(), BS, origin.clone()).with(a.clone()),
        b_chain: Arc::new(TierChain::new(source, BS, origin.clone()).with(b.clone())),
        origin,
        bucket,
        a,
        a_view,
        b,
        meta,
        body,
    }
}

impl Nodes {
    /// Node B's whole fetch of block 0: lease, origin GET, block written (the lease kept).
    fn b_fetches(&self) -> Hook {
        let (b, chain) = (self.b.clone(), self.b_chain.clone());
        let block = chain.block(&self.meta, 0);
        Box::pin(async move {
            chain.get(&block).await.unwrap();
            b.flush().await;
        })
    }

    fn origin_gets(&self) -> u64 {
        self.origin.inner().gets.load(Ordering::SeqCst)
    }
}

/// A misses; before its lease PUT, B fetches and writes the block, keeping its lease. A then
/// finds the lease taken, waits, and finds B's block instead of fetching it again.
#[tokio::test]
async fn a_lease_taken_after_another_node_wrote_the_block_finds_it() {
    let n = nodes("put");
    *n.a_view.hook.lock().unwrap() = Some(n.b_fetches());
    let block = n.a_chain.block(&n.meta, 0);
    assert_eq!(n.a_chain.get(&block).await.unwrap().to_vec(), n.body);
    n.a.flush().await;
    assert_eq!(n.origin_gets(), 1, "one origin GET for the block across both nodes");
    assert_eq!(n.a.inner.metrics.lease_waits.get(), 1, "A waited on B's kept lease");
    assert_eq!(n.a.inner.metrics.lease_timeouts.get(), 0);
    let lease = n.a.inner.lease_key(&block);
    assert!(n.bucket.head(&lease).await.is_ok(), "B's lease stays with its block");
}

/// B holds the lease while A misses and waits; just before A checks the lease, B writes the
/// block and releases the lease. A must find B's block instead of fetching it again.
#[tokio::test]
async fn a_waiter_whose_lease_was_released_finds_the_written_block() {
    let n = nodes("head");
    let block = n.a_chain.block(&n.meta, 0);
    let lease = n.a.inner.lease_key(&block);
    // B's lease, taken before A's miss.
    let held = format!("{} node-b", unix_ms(SystemTime::now() + Duration::from_secs(60)));
    n.bucket.put_if_absent(&lease, Bytes::from(held)).await.unwrap();
    let (bucket, lease_key, fetch) = (n.bucket.clone(), lease.clone(), n.b_fetches());
    *n.a_view.hook.lock().unwrap() = Some(Box::pin(async move {
        bucket.delete(&lease_key).await.unwrap();
        fetch.await;
    }));
    assert_eq!(n.a_chain.get(&block).await.unwrap().to_vec(), n.body);
    assert_eq!(n.origin_gets(), 1, "one origin GET for the block across both nodes");
    assert_eq!(n.a.inner.metrics.lease_waits.get(), 1, "A waited for B");
    assert_eq!(n.a.inner.metrics.lease_timeouts.get(), 0);
}
