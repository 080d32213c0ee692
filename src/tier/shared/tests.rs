//! The shared tier's own promises, beyond the tier suite (`tests.rs`): object layout, signed
//! and forged objects, the breaker, leases, read-only mode, dropped writes and the start probe.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::object::MAC_MAGIC;
use super::*;
use crate::metrics::SharedTierMetrics;
use crate::object::{ObjectMeta, SourceId};
use crate::store::fault::FaultStore;
use crate::store::memory::MemoryStore;
use crate::store::{ListRequest, ObjectStore};
use crate::tier::TierChain;

const BS: u64 = 4096;

type Bucket = Arc<FaultStore<MemoryStore>>;

struct Node {
    chain: TierChain,
    tier: Arc<SharedTier>,
    metrics: SharedTierMetrics,
}

fn source() -> SourceId {
    SourceId::new(Some("http://127.0.0.1:1"), "src", "")
}

fn origin(body: &[u8]) -> (Arc<MemoryStore>, ObjectMeta) {
    let s = Arc::new(MemoryStore::new());
    let etag = s.put("data/file", body.to_vec());
    let meta = ObjectMeta {
        key: "data/file".into(),
        size: body.len() as u64,
        etag: etag.into(),
        last_modified: SystemTime::UNIX_EPOCH,
    };
    (s, meta)
}

fn node(origin: &Arc<MemoryStore>, bucket: &Bucket, settings: SharedTierSettings) -> Node {
    let metrics = SharedTierMetrics::default();
    let tier = Arc::new(SharedTier::new(bucket.clone(), settings, metrics.clone()));
    let chain = TierChain::new(source(), BS, origin.clone()).with(tier.clone());
    Node { chain, tier, metrics }
}

fn settings() -> SharedTierSettings {
    SharedTierSettings::new("cache/".into())
}

/// Settings with this bound on waiting for another node's lease.
fn lease_wait(wait: Duration) -> SharedTierSettings {
    SharedTierSettings {
        lease_wait: wait,
        ..settings()
    }
}

/// Plants the lease of `block` as another node (`holder`) would hold it, valid for a minute.
fn plant_lease(b: &Bucket, n: &Node, block: &BlockRef, holder: &str) {
    let expiry = unix_ms(SystemTime::now() + Duration::from_secs(60));
    b.inner()
        .put(&n.tier.inner.lease_key(block), format!("{expiry} {holder}"));
}

fn body(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 4096) as u8).collect()
}

async fn keys(bucket: &Bucket, prefix: &str) -> Vec<String> {
    let page = bucket
        .inner()
        .list(ListRequest {
            prefix,
            delimited: false,
            continuation: None,
            max_keys: None,
        })
        .await
        .unwrap();
    page.objects.iter().map(|o| o.key.to_string()).collect()
}

fn bucket() -> Bucket {
    Arc::new(FaultStore::new(MemoryStore::new()))
}

#[tokio::test]
async fn blocks_are_self_describing_objects_under_the_prefix_and_their_leases_kept() {
    let data = body(2 * BS as usize + 10);
    let (src, meta) = origin(&data);
    let b = bucket();
    let n = node(&src, &b, settings());
    for i in 0..3 {
        n.chain.get(&n.chain.block(&meta, i)).await.unwrap();
    }
    n.tier.flush().await;
    let blocks = keys(&b, "cache/s3cachefs/v1/blocks/").await;
    assert_eq!(blocks.len(), 3, "{blocks:?}");
    assert_eq!(
        keys(&b, "cache/s3cachefs/v1/leases/").await.len(),
        3,
        "leases kept with their blocks"
    );
    assert_eq!(keys(&b, "").await.len(), 6, "nothing else written");
    let block = n.chain.block(&meta, 2);
    let obj = b
        .inner()
        .get_object(&n.tier.inner.object_key(&block), 1 << 20)
        .await
        .unwrap();
    let got = blockfmt::decode(obj, &block.id, block.len()).unwrap();
    assert_eq!(&got[..], &data[2 * BS as usize..]);
    assert_eq!(n.metrics.writes.get(), 3);
}

#[tokio::test]
async fn a_second_node_reads_from_the_shared_bucket_not_the_origin() {
    let data = body(3 * BS as usize);
    let (src, meta) = origin(&data);
    let b = bucket();
    let first = node(&src, &b, settings());
    for i in 0..3 {
        first.chain.get(&first.chain.block(&meta, i)).await.unwrap();
    }
    first.tier.flush().await;
    let before = src.gets.load(Ordering::SeqCst);
    let second = node(&src, &b, settings());
    for i in 0..3 {
        let block = second.chain.block(&meta, i);
        assert_eq!(
            second.chain.get(&block).await.unwrap(),
            &data[block.range.start as usize..block.range.end as usize]
        );
    }
    assert_eq!(src.gets.load(Ordering::SeqCst), before, "0 origin GETs");
    assert_eq!(second.metrics.hits.get(), 3);
}

/// Corrupt, misplaced and foreign objects are misses: counted, never served.
#[tokio::test]
async fn invalid_objects_are_never_served() {
    let data = body(2 * BS as usize);
    let (src, meta) = origin(&data);
    let b = bucket();
    let writer = node(&src, &b, settings());
    for i in 0..2 {
        writer.chain.get(&writer.chain.block(&meta, i)).await.unwrap();
    }
    writer.tier.flush().await;
    let (b0, b1) = (writer.chain.block(&meta, 0), writer.chain.block(&meta, 1));
    let (k0, k1) = (writer.tier.inner.object_key(&b0), writer.tier.inner.object_key(&b1));
    // Block 0: one flipped data byte. Block 1: block 0's (valid) object in its place.
    let mut flipped = b.inner().get_object(&k0, 1 << 20).await.unwrap().to_vec();
    *flipped.last_mut().unwrap() ^= 1;
    let good0 = b.inner().get_object(&k0, 1 << 20).await.unwrap();
    b.inner().put(&k0, flipped);
    b.inner().put(&k1, good0);
    let reader = node(&src, &b, settings());
    for block in [&b0, &b1] {
        let got = reader.chain.get(block).await.unwrap();
        assert_eq!(&got[..], &data[block.range.start as usize..block.range.end as usize]);
    }
    assert_eq!(reader.metrics.invalid.get(), 2);
    assert_eq!(reader.metrics.hits.get(), 0);
    // The reader replaced both with valid blocks: the next node is served from the bucket.
    reader.tier.flush().await;
    let next = node(&src, &b, settings());
    let before = src.gets.load(Ordering::SeqCst);
    for block in [&b0, &b1] {
        let got = next.chain.get(block).await.unwrap();
        assert_eq!(&got[..], &data[block.range.start as usize..block.range.end as usize]);
    }
    assert_eq!(next.metrics.hits.get(), 2);
    assert_eq!(src.gets.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn signed_blocks_are_served_only_with_a_valid_tag() {
    let data = body(BS as usize);
    let (src, meta) = origin(&data);
    let key = |k: &[u8]| SharedTierSettings {
        key: Some(k.to_vec()),
        ..settings()
    };
    let b = bucket();
    let signer = node(&src, &b, key(b"0123456789abcdef-key-one"));
    let block = signer.chain.block(&meta, 0);
    signer.chain.get(&block).await.unwrap();
    signer.tier.flush().await;
    let object_key = signer.tier.inner.object_key(&block);
    let signed = b.inner().get_object(&object_key, 1 << 20).await.unwrap();
    assert_eq!(&signed[signed.len() - TRAILER_LEN..][..8], MAC_MAGIC);

    // The same key: served. Another key: refused. No key at all: served (tag not checked).
    let same = node(&src, &b, key(b"0123456789abcdef-key-one"));
    assert_eq!(&same.chain.peek(&block).await.unwrap()[..], &data[..]);
    let other = node(&src, &b, key(b"0123456789abcdef-key-two"));
    assert!(other.chain.peek(&block).await.is_none());
    assert_eq!(other.metrics.invalid.get(), 1);
    let unsigned = node(&src, &b, settings());
    assert_eq!(&unsigned.chain.peek(&block).await.unwrap()[..], &data[..]);

    // A forged object: valid block format and checksums, no tag (anyone who can write the
    // bucket could plant it). A signing node never serves it.
    let forged_data = vec![0xEEu8; BS as usize];
    let mut forged = blockfmt::encode_header(&block.id, &forged_data).unwrap();
    forged.extend_from_slice(&forged_data);
    b.inner().put(&object_key, forged);
    assert!(same.chain.peek(&block).await.is_none());
    assert_eq!(&same.chain.get(&block).await.unwrap()[..], &data[..], "from the origin");
    // (A node without a key would accept it: that is what the key file is for.)
}

/// A failing bucket costs one failed request per breaker interval, and every read succeeds.
#[tokio::test]
async fn a_dead_bucket_is_skipped_after_one_failure() {
    let data = body(8 * BS as usize);
    let (src, meta) = origin(&data);
    let b = bucket();
    let n = node(&src, &b, settings());
    b.fail_next(1000, StoreError::Timeout);
    for i in 0..8 {
        let block = n.chain.block(&meta, i);
        assert_eq!(
            &n.chain.get(&block).await.unwrap()[..],
            &data[block.range.start as usize..block.range.end as usize]
        );
    }
    assert_eq!(n.metrics.errors.get(), 1, "one failure, then skipped");
    assert_eq!(n.metrics.breaker_open.get(), 1);
    assert_eq!(b.inner().requests(), 0);
}

#[tokio::test]
async fn a_block_leased_elsewhere_is_waited_for_at_most_the_bound() {
    let data = body(BS as usize);
    let (src, meta) = origin(&data);
    let b = bucket();
    let n = node(&src, &b, lease_wait(Duration::from_millis(300)));
    let block = n.chain.block(&meta, 0);
    // Another node holds the lease (not expired) and never writes the block.
    plant_lease(&b, &n, &block, "other:1");
    let started = std::time::Instant::now();
    assert_eq!(&n.chain.get(&block).await.unwrap()[..], &data[..]);
    assert!(started.elapsed() >= Duration::from_millis(300), "waited for the holder");
    assert_eq!(n.metrics.lease_waits.get(), 1);
    assert_eq!(n.metrics.lease_timeouts.get(), 1);
}

#[tokio::test]
async fn a_block_written_by_the_lease_holder_ends_the_wait() {
    let data = body(BS as usize);
    let (src, meta) = origin(&data);
    let b = bucket();
    let waiter = node(&src, &b, lease_wait(Duration::from_secs(20)));
    let holder = node(&src, &b, settings());
    let block = waiter.chain.block(&meta, 0);
    plant_lease(&b, &waiter, &block, "holder:1");
    let waiting = {
        let block = block.clone();
        async move { waiter.chain.get(&block).await.map(|d| (d, waiter)) }
    };
    let writing = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let data = holder.chain.get(&block).await.unwrap();
        holder.tier.flush().await;
        data
    };
    let (got, _) = tokio::join!(waiting, writing);
    let (got, waiter) = got.unwrap();
    assert_eq!(&got[..], &data[..]);
    assert_eq!(waiter.metrics.lease_waits.get(), 1);
    assert_eq!(waiter.metrics.lease_timeouts.get(), 0);
    assert_eq!(src.gets.load(Ordering::SeqCst), 1, "one origin GET for two nodes");
}

/// A block written by another node between a node's miss and its lease is not fetched from the
/// origin again: the writer kept its lease, so the node waits and finds the block.
#[tokio::test]
async fn a_block_that_lands_before_the_lease_is_taken_is_not_fetched_again() {
    let data = body(BS as usize);
    let (src, meta) = origin(&data);
    let b = bucket();
    let first = node(&src, &b, settings());
    let block = first.chain.block(&meta, 0);
    first.chain.get(&block).await.unwrap();
    first.tier.flush().await;
    assert_eq!(src.gets.load(Ordering::SeqCst), 1);
    // The second node's first look misses (as if just before the first node's write landed).
    let second = node(&src, &b, settings());
    b.fail_next(1, StoreError::NotFound);
    assert_eq!(&second.chain.get(&block).await.unwrap()[..], &data[..]);
    assert_eq!(src.gets.load(Ordering::SeqCst), 1, "no second origin GET");
    assert_eq!((second.metrics.misses.get(), second.metrics.hits.get()), (1, 1));
    assert_eq!(
        second.metrics.lease_waits.get(),
        1,
        "it found the writer's lease and waited"
    );
    assert_eq!(
        keys(&b, "cache/s3cachefs/v1/leases/").await.len(),
        1,
        "the writer's lease stays"
    );
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_without_waiting() {
    let data = body(BS as usize);
    let (src, meta) = origin(&data);
    let b = bucket();
    let n = node(&src, &b, settings());
    let block = n.chain.block(&meta, 0);
    let lease = n.tier.inner.lease_key(&block);
    b.inner()
        .put(&lease, format!("{} crashed:1", unix_ms(SystemTime::now()) - 1000));
    assert_eq!(&n.chain.get(&block).await.unwrap()[..], &data[..]);
    n.tier.flush().await;
    assert_eq!(n.metrics.lease_waits.get(), 0);
    let leases = keys(&b, "cache/s3cachefs/v1/leases/").await;
    assert_eq!(
        leases,
        std::slice::from_ref(&lease),
        "one lease: this node's, kept with its block"
    );
    let body = b.inner().get_object(&lease, 256).await.unwrap();
    assert!(!String::from_utf8_lossy(&body).contains("crashed"), "taken over");
    assert_eq!(keys(&b, "cache/s3cachefs/v1/blocks/").await.len(), 1);
}

#[tokio::test]
async fn a_read_only_node_reads_but_never_writes() {
    let data = body(2 * BS as usize);
    let (src, meta) = origin(&data);
    let b = bucket();
    let writer = node(&src, &b, settings());
    writer.chain.get(&writer.chain.block(&meta, 0)).await.unwrap();
    writer.tier.flush().await;
    let puts = b.inner().puts.load(Ordering::SeqCst);
    let reader = node(
        &src,
        &b,
        SharedTierSettings {
            read_only: true,
            ..settings()
        },
    );
    for i in 0..2 {
        let block = reader.chain.block(&meta, i);
        assert_eq!(
            &reader.chain.get(&block).await.unwrap()[..],
            &data[block.range.start as usize..block.range.end as usize]
        );
    }
    reader.tier.flush().await;
    assert_eq!(
        b.inner().puts.load(Ordering::SeqCst),
        puts,
        "no block and no lease written"
    );
    assert_eq!(reader.metrics.hits.get(), 1);
    reader.tier.probe().await.unwrap();
    assert_eq!(
        b.inner().puts.load(Ordering::SeqCst),
        puts,
        "the read-only probe writes nothing"
    );
}

#[tokio::test]
async fn a_full_write_queue_drops_writes_and_counts_them() {
    let data = body(16 * BS as usize);
    let (src, meta) = origin(&data);
    let b = bucket();
    let n = node(
        &src,
        &b,
        SharedTierSettings {
            write_queue: 1,
            write_concurrency: 1,
            ..settings()
        },
    );
    b.set_latency(Duration::from_millis(50));
    for i in 0..16 {
        n.tier
            .enqueue(Write {
                block: n.chain.block(&meta, i),
                data: Bytes::from(vec![0u8; BS as usize]),
                lease: None,
                replace: false,
            })
            .await;
    }
    n.tier.flush().await;
    let (drops, writes) = (n.metrics.write_drops.get(), n.metrics.writes.get());
    assert!(drops > 0, "a queue of 1 cannot take 16 writes at once");
    assert_eq!(drops + writes, 16);
}

#[tokio::test]
async fn the_probe_writes_and_removes_one_object_and_reports_failures() {
    let b = bucket();
    let (src, _) = origin(b"x");
    let n = node(&src, &b, settings());
    n.tier.probe().await.unwrap();
    assert_eq!(b.inner().puts.load(Ordering::SeqCst), 1);
    assert!(keys(&b, "").await.is_empty(), "the probe object is removed");
    b.fail_next(1, StoreError::AccessDenied("no".into()));
    assert!(matches!(n.tier.probe().await, Err(StoreError::AccessDenied(_))));
}

/// An object too long to be a block object (planted, or foreign) is an invalid block, not a
/// failure of the bucket: it is not served, and the breaker stays closed for the other blocks.
#[tokio::test]
async fn an_oversized_object_is_invalid_and_does_not_open_the_breaker() {
    let data = body(2 * BS as usize);
    let (src, meta) = origin(&data);
    let b = bucket();
    let writer = node(&src, &b, settings());
    writer.chain.get(&writer.chain.block(&meta, 1)).await.unwrap();
    writer.tier.flush().await;
    let b0 = writer.chain.block(&meta, 0);
    b.inner()
        .put(&writer.tier.inner.object_key(&b0), vec![7u8; 4 * BS as usize]);
    let reader = node(&src, &b, settings());
    for i in 0..2 {
        let block = reader.chain.block(&meta, i);
        assert_eq!(
            &reader.chain.get(&block).await.unwrap()[..],
            &data[block.range.start as usize..block.range.end as usize]
        );
    }
    assert_eq!(reader.metrics.invalid.get(), 1);
    assert_eq!(reader.metrics.errors.get(), 0);
    assert_eq!(reader.metrics.breaker_open.get(), 0);
    assert_eq!(
        reader.metrics.hits.get(),
        1,
        "block 1 still came from the shared bucket"
    );
}

/// A node that waits for another node's fetch missed the block once: the polls of its wait are
/// not counted as misses (they would sink the hit ratio `stats` shows).
#[tokio::test]
async fn the_polls_of_a_lease_wait_are_not_misses() {
    let data = body(BS as usize);
    let (src, meta) = origin(&data);
    let b = bucket();
    let n = node(&src, &b, lease_wait(Duration::from_millis(500)));
    let block = n.chain.block(&meta, 0);
    plant_lease(&b, &n, &block, "other:1");
    let gets = b.inner().gets.load(Ordering::SeqCst);
    assert_eq!(&n.chain.get(&block).await.unwrap()[..], &data[..]);
    assert!(
        b.inner().gets.load(Ordering::SeqCst) - gets > 3,
        "the wait polled the bucket several times"
    );
    assert_eq!(n.metrics.lease_waits.get(), 1);
    assert_eq!(n.metrics.misses.get(), 1);
}

/// S3 answers a conditional PUT that races another write of the same key with 409
/// `ConditionalRequestConflict`. For a block or a lease, that is another node creating the same
/// object: not a failure of the bucket, so the breaker stays closed.
#[tokio::test]
async fn a_conditional_put_that_races_another_node_does_not_open_the_breaker() {
    let data = body(BS as usize);
    let (src, meta) = origin(&data);
    let b = bucket();
    let n = node(&src, &b, settings());
    let block = n.chain.block(&meta, 0);
    let conflict = || StoreError::Service {
        status: 409,
        code: crate::store::CONDITIONAL_REQUEST_CONFLICT.into(),
        message: "A conflicting operation occurred".into(),
    };
    b.fail_next(1, conflict());
    assert!(matches!(
        n.tier.inner.take_lease(&n.tier.inner.lease_key(&block)).await,
        Lease::HeldElsewhere
    ));
    b.fail_next(1, conflict());
    n.tier.inner.pending.fetch_add(1, Ordering::SeqCst); // as `enqueue` does
    n.tier
        .inner
        .store(&Write {
            block: block.clone(),
            data: Bytes::from(data.clone()),
            lease: None,
            replace: false,
        })
        .await;
    assert_eq!(n.metrics.errors.get(), 0);
    assert_eq!(n.metrics.breaker_open.get(), 0);
    // Any other error still opens it.
    b.fail_next(1, StoreError::Timeout);
    assert!(matches!(
        n.tier.inner.take_lease(&n.tier.inner.lease_key(&block)).await,
        Lease::Unavailable
    ));
    assert_eq!(n.metrics.errors.get(), 1);
    assert_eq!(n.metrics.breaker_open.get(), 1);
}
