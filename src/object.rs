//! Shared vocabulary of every layer: what an S3 object is to us.
//!
//! A cached block is identified by its source (endpoint and bucket), key, ETag, block size and
//! index ([`BlockId`], the same in every tier): bytes fetched under one ETag are never served
//! for another, so an overwritten object can never mix old and new data. Nothing here does
//! I/O; the two traits are implemented by the disk cache and used by layers that must not
//! know it.

use std::sync::Arc;
use std::time::SystemTime;

/// Metadata of one object, as listed or HEADed from S3.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Full S3 key (including any mount prefix).
    pub key: Arc<str>,
    /// Size in bytes.
    pub size: u64,
    /// The ETag exactly as S3 returned it (quotes included); compared byte for byte.
    pub etag: Arc<str>,
    /// S3 `Last-Modified`.
    pub last_modified: SystemTime,
}

/// Where objects come from, and for whom: the endpoint, the bucket and the caches' partition
/// (`"<endpoint>|<bucket>|<partition>"`, `aws` as the endpoint for AWS itself). Part of every
/// cached block's identity and of persisted metadata's, so blocks of two sources (two buckets,
/// or the same bucket name on two endpoints) never mix, and what one identity cached is never
/// served to another (the partition names the identity: see `app::identity`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SourceId(Arc<str>);

impl SourceId {
    /// `endpoint` is the configured endpoint URL (`None`: AWS); a trailing `/` is ignored.
    /// `partition` is the identity's partition token (empty only in tests: `"<endpoint>|<bucket>"`).
    pub fn new(endpoint: Option<&str>, bucket: &str, partition: &str) -> SourceId {
        let endpoint = endpoint.map_or("aws", |e| e.trim_end_matches('/'));
        if partition.is_empty() {
            SourceId(format!("{endpoint}|{bucket}").into())
        } else {
            SourceId(format!("{endpoint}|{bucket}|{partition}").into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The identity of one cached block, the same in every tier: block `index` (of `block_size`
/// bytes) of the object version (`key`, `etag`) from `source`. Two blocks with equal ids hold
/// the same bytes; any difference (another ETag, another block size) is another block.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BlockId {
    pub source: SourceId,
    pub key: Arc<str>,
    pub etag: Arc<str>,
    pub block_size: u64,
    pub index: u64,
}

/// A block to read: its identity and the byte range it covers in its object (the last block of
/// an object may be short). Tiers return exactly `range.len()` bytes or nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRef {
    pub id: BlockId,
    pub range: ByteRange,
    /// The size of the whole object (where the disk cache puts the block in the object's file).
    pub object_size: u64,
}

impl BlockRef {
    /// Block `index` of `obj` from `source`, in blocks of `block_size` bytes.
    pub fn new(source: &SourceId, obj: &ObjectMeta, block_size: u64, index: u64) -> BlockRef {
        BlockRef {
            id: BlockId {
                source: source.clone(),
                key: obj.key.clone(),
                etag: obj.etag.clone(),
                block_size,
                index,
            },
            range: block_range(index, block_size, obj.size),
            object_size: obj.size,
        }
    }

    /// Bytes in this block.
    pub fn len(&self) -> u64 {
        self.range.len()
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }
}

/// Whole objects kept as one verified local file each (the disk cache's complete object files,
/// "assembled": every block present), which `fs` hands to the kernel so that reads never enter
/// the daemon (FUSE passthrough). Implemented by the disk cache; `fs` sees only this trait.
/// The calls do blocking I/O.
pub trait AssembledFiles: Send + Sync {
    /// The object as one local file, when every block of it is in its file and this process
    /// has verified it whole (or written it whole itself); `Unverified` when it is complete but
    /// not verified yet (nothing is read then: see `verify_assembled`). Blocking (opens the file
    /// and reads its index).
    fn open_assembled(&self, obj: &ObjectMeta) -> Assembled;
    /// Reads the complete file of `obj` whole and checks every block's crc (blocking); true
    /// when it is verified, and from then on `open_assembled` hands it out. A file that fails
    /// is removed (its reads then go through the tiers).
    fn verify_assembled(&self, obj: &ObjectMeta) -> bool;
    /// A file `open_assembled` returned for `obj` was used again for an open without opening
    /// it anew: counted as a cache hit; with `touch`, its last access is recorded (for eviction).
    fn reused(&self, file: &std::fs::File, obj: &ObjectMeta, touch: bool);
    /// Makes the object's file complete if every block of it is cached (moving block files
    /// into it; usually there is nothing to do: blocks are written into it as they are
    /// fetched). Failures are the cache's to log: the object is then read block by block. True
    /// when the object's file is complete.
    fn assemble_if_complete(&self, obj: &ObjectMeta) -> bool;
}

/// What [`AssembledFiles::open_assembled`] found.
#[derive(Debug)]
pub enum Assembled {
    /// Complete and verified whole by this process: safe to hand to the kernel.
    Verified(std::fs::File),
    /// Complete, not verified yet by this process: its blocks may be read through the daemon
    /// (each checked), not handed to the kernel.
    Unverified,
    /// Not complete, absent, or rejected.
    Absent,
}

/// A half-open byte range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn new(start: u64, end: u64) -> Self {
        debug_assert!(start <= end);
        ByteRange { start, end }
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// The space of one cache directory, shared by everything stored in it (data blocks,
/// assembled objects, persisted metadata), so that one bound holds for all of it. A writer
/// reserves bytes before writing and holds the returned guard until its file is in place.
pub trait DiskSpace: Send + Sync {
    /// `None` when the bound cannot be met (after evicting what can be evicted).
    fn reserve(&self, bytes: u64) -> Option<Box<dyn std::any::Any + Send>>;
    /// Gives back bytes that were reserved, or that a removed file occupied.
    fn release(&self, bytes: u64);
}

/// Pages are the grain at which random reads are fetched and kept: an unaligned 64 KiB read
/// touches at most five of them (80 KiB). Every valid block size is a multiple of it.
pub const PAGE_SIZE: u64 = 16 << 10;

/// Bytes a file of `len` bytes occupies on a filesystem with 4 KiB blocks.
pub fn alloc_size(len: u64) -> u64 {
    len.div_ceil(4096) * 4096
}

/// Index of the block that holds `offset`, for a given block size.
pub fn block_index(offset: u64, block_size: u64) -> u64 {
    offset / block_size
}

/// The byte range of block `index` of an object of `size` bytes (the last block may be short).
pub fn block_range(index: u64, block_size: u64, size: u64) -> ByteRange {
    let start = index.saturating_mul(block_size).min(size);
    let end = start.saturating_add(block_size).min(size);
    ByteRange::new(start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ranges_cover_object_exactly() {
        let bs = 10;
        assert_eq!(block_range(0, bs, 25), ByteRange::new(0, 10));
        assert_eq!(block_range(2, bs, 25), ByteRange::new(20, 25));
        assert_eq!(block_range(3, bs, 25), ByteRange::new(25, 25));
        assert_eq!(block_range(0, bs, 0), ByteRange::new(0, 0));
        assert_eq!(block_index(19, bs), 1);
        assert_eq!(block_index(20, bs), 2);
    }
}
