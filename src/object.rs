//! Shared vocabulary of every layer: what an S3 object is to us.
//!
//! An object is identified for caching purposes by its key *and* its ETag: bytes fetched under
//! one ETag are never served for another, so an overwritten object can never mix old and new
//! data. Nothing here does I/O.

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

impl ObjectMeta {
    /// The identity under which this object's bytes may be cached.
    pub fn id(&self) -> ObjectId {
        ObjectId {
            key: self.key.clone(),
            etag: self.etag.clone(),
        }
    }
}

/// (key, ETag): the identity of one immutable version of an object.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectId {
    pub key: Arc<str>,
    pub etag: Arc<str>,
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
