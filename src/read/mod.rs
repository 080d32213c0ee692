//! Reading object bytes: aligned blocks, each fetched with one ranged GET pinned to the ETag
//! seen at open (`If-Match`), kept in a bounded in-memory cache so the kernel's many small
//! reads of one block cost one GET. Concurrent misses for one block are coalesced
//! (single-flight), so N readers of a cold block issue one GET.
//!
//! Invariant: a returned buffer holds exactly the requested bytes of the object version named
//! by the `ObjectMeta`, or the read fails. A block of unexpected length is an error, never data.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use moka::future::Cache;

use crate::cache::DiskCache;
use crate::object::{ObjectId, ObjectMeta, block_range};
use crate::store::{ObjectStore, StoreError};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    #[error("object changed in S3 since it was opened")]
    Changed,
    #[error("object no longer exists in S3")]
    Gone,
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ReadError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::PreconditionFailed => ReadError::Changed,
            StoreError::NotFound => ReadError::Gone,
            e => ReadError::Store(e),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct BlockKey {
    id: ObjectId,
    index: u64,
}

pub struct BlockReader {
    store: Arc<dyn ObjectStore>,
    block_size: u64,
    blocks: Cache<BlockKey, Bytes>,
    disk: Option<Arc<DiskCache>>,
}

impl BlockReader {
    /// `memory_bytes` bounds the in-memory block cache (weighted by block length); `disk`, when
    /// given, is consulted after memory and before S3 (its block size must be `block_size`).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        block_size: u64,
        memory_bytes: u64,
        disk: Option<Arc<DiskCache>>,
    ) -> BlockReader {
        assert!(
            disk.as_ref().is_none_or(|d| d.block_size() == block_size),
            "disk cache block size differs"
        );
        let blocks = Cache::builder()
            .max_capacity(memory_bytes)
            .weigher(|_: &BlockKey, b: &Bytes| b.len().try_into().unwrap_or(u32::MAX))
            .build();
        BlockReader {
            store,
            block_size,
            blocks,
            disk,
        }
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Reads up to `len` bytes at `offset` of `obj`; shorter only at end of file.
    pub async fn read(&self, obj: &ObjectMeta, offset: u64, len: u32) -> Result<Bytes, ReadError> {
        if offset >= obj.size || len == 0 {
            return Ok(Bytes::new());
        }
        let end = (offset + u64::from(len)).min(obj.size);
        let first = offset / self.block_size;
        let last = (end - 1) / self.block_size;
        let slice = |index: u64, block: &Bytes| {
            let start = block_range(index, self.block_size, obj.size).start;
            let from = offset.max(start) - start;
            let to = end.min(start + block.len() as u64) - start;
            block.slice(from as usize..to as usize)
        };
        if first == last {
            return Ok(slice(first, &self.block(obj, first).await?));
        }
        let blocks = futures::future::try_join_all((first..=last).map(|i| self.block(obj, i))).await?;
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for (i, block) in (first..=last).zip(&blocks) {
            out.extend_from_slice(&slice(i, block));
        }
        Ok(out.freeze())
    }

    async fn block(&self, obj: &ObjectMeta, index: u64) -> Result<Bytes, ReadError> {
        let key = BlockKey { id: obj.id(), index };
        let range = block_range(index, self.block_size, obj.size);
        self.blocks
            .try_get_with(key, async {
                let fetch = async {
                    let bytes = self.store.get_range(&obj.key, range, &obj.etag).await?;
                    if bytes.len() as u64 != range.len() {
                        return Err(ReadError::Store(StoreError::BadResponse(format!(
                            "block {index} of {}: expected {} bytes, got {}",
                            obj.key,
                            range.len(),
                            bytes.len()
                        ))));
                    }
                    Ok(bytes)
                };
                match &self.disk {
                    Some(disk) => disk.get_or_fetch(obj, index, range, fetch).await,
                    None => fetch.await,
                }
            })
            .await
            .map_err(|e| (*e).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fault::FaultStore;
    use crate::store::memory::MemoryStore;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    async fn setup(size: usize) -> (Arc<FaultStore<MemoryStore>>, ObjectMeta, Vec<u8>) {
        let s = Arc::new(FaultStore::new(MemoryStore::new()));
        let d = data(size);
        s.inner().put("obj", d.clone());
        let meta = s.inner().head("obj").await.unwrap();
        (s, meta, d)
    }

    #[tokio::test]
    async fn reads_are_byte_exact_at_every_boundary() {
        let (s, meta, d) = setup(10_000).await;
        let r = BlockReader::new(s.clone(), 1024, 1 << 20, None);
        for (off, len) in [
            (0, 1),
            (0, 1024),
            (1000, 100),
            (1023, 2),
            (0, 10_000),
            (5000, 9999),
            (9999, 5),
            (10_000, 5),
        ] {
            let got = r.read(&meta, off, len).await.unwrap();
            let end = (off as usize + len as usize).min(d.len());
            assert_eq!(&got[..], &d[(off as usize).min(end)..end], "off {off} len {len}");
        }
        // Every block fetched once, however often it was read.
        assert_eq!(s.inner().gets.load(Ordering::Relaxed), 10);
    }

    #[tokio::test]
    async fn concurrent_reads_of_one_block_make_one_get() {
        let (s, meta, _) = setup(4096).await;
        s.set_latency(Duration::from_millis(30));
        let r = Arc::new(BlockReader::new(s.clone(), 4096, 1 << 20, None));
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let (r, meta) = (r.clone(), meta.clone());
                tokio::spawn(async move { r.read(&meta, i * 100, 100).await.unwrap() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(s.inner().gets.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn changed_object_fails_instead_of_mixing() {
        let (s, meta, _) = setup(4096).await;
        let r = BlockReader::new(s.clone(), 1024, 1 << 20, None);
        r.read(&meta, 0, 10).await.unwrap();
        s.inner().put("obj", vec![0u8; 4096]);
        assert_eq!(r.read(&meta, 2048, 10).await, Err(ReadError::Changed));
        s.inner().remove("obj");
        assert_eq!(r.read(&meta, 3000, 10).await, Err(ReadError::Gone));
    }

    #[tokio::test]
    async fn failed_fetches_are_not_cached() {
        let (s, meta, d) = setup(100).await;
        let r = BlockReader::new(s.clone(), 1024, 1 << 20, None);
        s.fail_next(1, StoreError::Timeout);
        assert!(r.read(&meta, 0, 10).await.is_err());
        assert_eq!(&r.read(&meta, 0, 10).await.unwrap()[..], &d[..10]);
    }
}
