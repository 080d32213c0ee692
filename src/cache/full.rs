//! Object files: the blocks of an object are written straight into one file per object version,
//! `v1/full/<shard>/<object hash>`, each block at its own offset (the file is sparse until every
//! block is there). Once every block is present, the file is the whole object: the kernel can
//! read it directly (FUSE passthrough), and every process opening the object shares it, page
//! cache included. Each byte is written to disk once: there is no assembly copy.
//!
//! Next to it, `<object hash>.idx` says what the file holds (store, key, ETag, size, block
//! size), which blocks are present and the crc32c of each, and how many of the file's bytes the
//! ledger counts, with its own checksums. A block is written into the data file first and marked
//! present in the index second (its entry written in place, under the file's shard lock), so a
//! crash between the two leaves the block absent, never trusted. When the file is created, the
//! index is placed before the data file, so a data file without a valid index is never trusted.
//! Reads through the daemon verify the crc of each block they take from the file; a file handed
//! to the kernel is verified whole once per process (`verify_assembled`, which the filesystem
//! runs in the background while the first opens read through the daemon), or was filled by this
//! process itself or has read every block of (`checked_here`).
//!
//! Blocks of objects larger than a quarter of the cache's bound stay as block files (evicting an
//! object file frees the whole object), as do blocks a reader finds without the object's size.
//! Block files of an object that has an object file (left by an older version of s3cachefs, or
//! written while the bound was smaller) are moved into it when a handle on the object is
//! released (`assemble`).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use tracing::debug;

use super::coord::Cell;
use super::{DIR_BYTES, DiskCache, Location, STALE_TMP, alloc_size};
use crate::cachedir::{Area, hex_shard, is_own_file};
use crate::object::{Assembled, AssembledFiles, BlockRef, ObjectMeta, block_range};

const MAGIC: &[u8; 8] = b"S3CFSFUL";
/// The extended attribute of an object file's index that says its data file was verified whole
/// (`DiskCache::write_stamp`).
const STAMP_XATTR: &std::ffi::CStr = c"user.s3cachefs.ok";
/// Hashed first into every stamp (`DiskCache::stamp_of`): a new meaning gets a new domain.
const STAMP_DOMAIN: &[u8] = b"s3cachefs verified object file v1";
/// A file's (device, inode), and what tells it from a later file given that inode number
/// (`file_identity`).
pub(super) type FileKey = (u64, u64);
pub(super) type FileTag = (u64, u64, u64);

/// Bytes of an object file allocated together, at the first write into each aligned group of
/// them (`DiskCache::extent_to_allocate`). Blocks written one by one by several threads at once
/// (a read-ahead window) each got an extent of their own, interleaved with the others': 248
/// extents for a 300 MB file, which the kernel then read back at 2.4 GB/s, against 3.5 GB/s for
/// the same bytes in a few extents (docs/BENCHMARKS.md, "Memory given back to the host, and
/// object files in one piece"). Only a group that continues what the file holds is allocated
/// whole, so at most a group less one block is allocated and not written when a scan stops
/// early; the ledger counts it until the file is evicted.
pub(super) const ALLOC_GROUP: u64 = 8 << 20;

/// The most object files whose blocks this process tracks as checked (`checked_here`).
const CHECKED_MAX: usize = 4096;
/// Version 2: a fixed header, then the bytes accounted and one entry per block, each written in
/// place and checked on its own. A version 1 index (every block present, written whole by the
/// assembly of earlier versions) is still read.
const VERSION: u32 = 2;
/// Mixed into each entry's check, so that no short pattern (zeros) is a present block.
const ENTRY_SALT: u32 = 0x5346_4c31;

/// What an index says.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Index {
    /// 1 (read only) or [`VERSION`].
    version: u32,
    store: String,
    key: String,
    etag: String,
    size: u64,
    block_size: u64,
    /// Bytes of the data file (allocated) that the ledger counts: a writer adds what the file
    /// grew by since.
    accounted: u64,
    /// Per block: its crc32c if present.
    crcs: Vec<Option<u32>>,
}

/// Layout of version 2 (little-endian):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | magic `S3CFSFUL` |
/// | 8 | 4 | version (2) |
/// | 12 | 8 | object size |
/// | 20 | 8 | block size |
/// | 28 | 2+n ×3 | store, key, ETag, each length-prefixed |
/// | .. | 8 | number of blocks N |
/// | H-4 | 4 | crc32c of the header (bytes 0..H-4) |
/// | H | 8+4+4 | bytes accounted, crc32c of those 8 bytes, zero |
/// | H+16+8i | 4+4 | block i: crc32c of its bytes, and crc32c(i, crc) ^ `ENTRY_SALT`; all zero when absent |
///
/// The header never changes after the file is created. A writer updates one entry and the
/// accounted bytes in place, with `pwrite`, under the file's shard lock; an entry that does not
/// check (torn by a crash) is an absent block, and accounted bytes that do not check are taken as
/// the file's size on disk (reconciliation corrects the ledger).
impl Index {
    #[cfg(test)]
    fn complete(&self) -> bool {
        self.crcs.iter().all(Option::is_some)
    }

    fn header(&self) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&self.size.to_le_bytes());
        h.extend_from_slice(&self.block_size.to_le_bytes());
        for s in [&self.store, &self.key, &self.etag] {
            h.extend_from_slice(&(s.len() as u16).to_le_bytes());
            h.extend_from_slice(s.as_bytes());
        }
        h.extend_from_slice(&(self.crcs.len() as u64).to_le_bytes());
        let crc = crc32c::crc32c(&h);
        h.extend_from_slice(&crc.to_le_bytes());
        h
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = self.header();
        b.extend_from_slice(&accounted_record(self.accounted));
        for (i, c) in self.crcs.iter().enumerate() {
            b.extend_from_slice(&entry(i as u64, *c));
        }
        b
    }

    /// Where the accounted bytes are (the header's length).
    #[cfg(test)]
    fn accounted_at(&self) -> u64 {
        self.header().len() as u64
    }

    #[cfg(test)]
    fn entry_at(&self, i: u64) -> u64 {
        self.accounted_at() + 16 + 8 * i
    }

    #[cfg(test)]
    fn decode(b: &[u8]) -> Option<Index> {
        if b.get(8..12)? == 1u32.to_le_bytes() {
            return Index::decode_v1(b);
        }
        let (mut index, header_len, n) = Index::decode_header(b)?;
        let mut pos = header_len;
        // The exact length: a file cut short (or grown) is not an index.
        if (b.len() - pos) as u64 != 16 + n.checked_mul(8)? {
            return None;
        }
        index.accounted = accounted_from(take_at(b, &mut pos, 16)?);
        index.crcs = (0..n)
            .map(|i| Some(entry_from(i, take_at(b, &mut pos, 8)?)))
            .collect::<Option<Vec<_>>>()?;
        Some(index)
    }

    /// The length a version 2 header has, from its first bytes (at least 28 + 3 × 2 + the
    /// strings' lengths), without checking it.
    fn header_len_from(b: &[u8]) -> Option<usize> {
        let mut pos = 28usize;
        for _ in 0..3 {
            let n = u16::from_le_bytes(take_at(b, &mut pos, 2)?.try_into().ok()?) as usize;
            pos += n;
        }
        Some(pos + 12)
    }

    /// A version 2 header (`b` may go on past it): the index with no entries, the header's
    /// length and the number of blocks.
    fn decode_header(b: &[u8]) -> Option<(Index, usize, u64)> {
        let mut pos = 0usize;
        if take_at(b, &mut pos, 8)? != MAGIC {
            return None;
        }
        let version = u32::from_le_bytes(take_at(b, &mut pos, 4)?.try_into().ok()?);
        if version != VERSION {
            return None;
        }
        let (fields, n) = read_fields(b, &mut pos)?;
        let header_end = pos;
        let crc = u32::from_le_bytes(take_at(b, &mut pos, 4)?.try_into().ok()?);
        if crc32c::crc32c(&b[..header_end]) != crc {
            return None;
        }
        Some((Index::read(version, fields, Vec::new()), pos, n))
    }

    /// Version 1: the same fields up to N, then N crcs, then a crc32c of everything before it.
    fn decode_v1(b: &[u8]) -> Option<Index> {
        let (body, crc) = b.split_at_checked(b.len().checked_sub(4)?)?;
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?) {
            return None;
        }
        let mut pos = 12usize;
        let (fields, n) = read_fields(body, &mut pos)?;
        let crcs = (0..n)
            .map(|_| Some(Some(u32::from_le_bytes(take_at(body, &mut pos, 4)?.try_into().ok()?))))
            .collect::<Option<Vec<_>>>()?;
        if pos != body.len() {
            return None;
        }
        Some(Index::read(1, fields, crcs))
    }

    /// An index read from a file: its accounted bytes unknown until their record is read.
    fn read(version: u32, (size, block_size, [store, key, etag]): Fields, crcs: Vec<Option<u32>>) -> Index {
        Index {
            version,
            store,
            key,
            etag,
            size,
            block_size,
            accounted: u64::MAX,
            crcs,
        }
    }
}

/// Size, block size, and store, key and ETag.
type Fields = (u64, u64, [String; 3]);

/// The fields both versions share, after magic and version: size, block size, store, key, ETag
/// (each length-prefixed) and the number of blocks, which must be the size in blocks.
fn read_fields(b: &[u8], pos: &mut usize) -> Option<(Fields, u64)> {
    let size = u64::from_le_bytes(take_at(b, pos, 8)?.try_into().ok()?);
    let block_size = u64::from_le_bytes(take_at(b, pos, 8)?.try_into().ok()?);
    let mut string = || -> Option<String> {
        let n = u16::from_le_bytes(take_at(b, pos, 2)?.try_into().ok()?) as usize;
        String::from_utf8(take_at(b, pos, n)?.to_vec()).ok()
    };
    let strings = [string()?, string()?, string()?];
    let n = u64::from_le_bytes(take_at(b, pos, 8)?.try_into().ok()?);
    (block_size != 0 && n == size.div_ceil(block_size)).then_some(((size, block_size, strings), n))
}

/// The `n` bytes at `*pos`, moving `pos` past them.
fn take_at<'a>(b: &'a [u8], pos: &mut usize, n: usize) -> Option<&'a [u8]> {
    let s = b.get(*pos..pos.checked_add(n)?)?;
    *pos += n;
    Some(s)
}

/// What a write of a block did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stored {
    Written,
    /// Another writer had stored it already: nothing written.
    AlreadyThere,
    No,
}

/// The accounted bytes a record says; `u64::MAX` (not known, see `write_to_object`) when it
/// does not check.
fn accounted_from(rec: &[u8]) -> u64 {
    let Some(v) = rec.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes) else {
        return u64::MAX;
    };
    if *rec == accounted_record(v)[..] { v } else { u64::MAX }
}

/// Block `i`'s crc from its entry, if the entry says present and checks.
fn entry_from(i: u64, e: &[u8]) -> Option<u32> {
    let crc = u32::from_le_bytes(e.get(..4)?.try_into().ok()?);
    (*e == entry(i, Some(crc))[..]).then_some(crc)
}

/// An index file, open: its header read and checked, its entries read when asked for, a few
/// bytes each (`pread`), so reading or writing one block costs the same whatever the object's
/// size. A version 1 index is read whole.
struct IndexFile {
    file: File,
    /// The header's fields; for version 1, every entry too.
    head: Index,
    header_len: u64,
    n: u64,
}

impl IndexFile {
    fn open(file: File) -> Option<IndexFile> {
        let len = file.metadata().ok()?.len();
        let mut b = vec![0u8; len.min(4096) as usize];
        file.read_exact_at(&mut b, 0).ok()?;
        if b.get(8..12)? == 1u32.to_le_bytes() {
            let mut all = Vec::new();
            (&file).take(16 << 20).read_to_end(&mut all).ok()?;
            let head = Index::decode_v1(&all)?;
            let n = head.crcs.len() as u64;
            return Some(IndexFile {
                file,
                head,
                header_len: 0,
                n,
            });
        }
        // A header longer than the first read (long keys): read up to the longest a header
        // can be (three strings of at most 65,535 bytes).
        let hl = match Index::header_len_from(&b) {
            Some(hl) if hl <= b.len() => hl,
            _ if len > b.len() as u64 => {
                b = vec![0u8; len.min(40 + 3 * (2 + u16::MAX as u64)) as usize];
                file.read_exact_at(&mut b, 0).ok()?;
                Index::header_len_from(&b)?
            }
            _ => return None,
        };
        let b = b.get(..hl)?;
        let (head, header_len, n) = Index::decode_header(b)?;
        // The exact length: a file cut short (or grown) is not an index.
        if len != header_len as u64 + 16 + n.checked_mul(8)? {
            return None;
        }
        Some(IndexFile {
            file,
            head,
            header_len: header_len as u64,
            n,
        })
    }

    /// Block `i`'s crc32c, if the index says it is present.
    fn entry(&self, i: u64) -> Option<u32> {
        if i >= self.n {
            return None;
        }
        if self.head.version == 1 {
            return *self.head.crcs.get(i as usize)?;
        }
        let mut e = [0u8; 8];
        self.file.read_exact_at(&mut e, self.header_len + 16 + 8 * i).ok()?;
        entry_from(i, &e)
    }

    /// Every block's crc32c, if present (`None`: the file cannot be read).
    fn entries(&self) -> Option<Vec<Option<u32>>> {
        if self.head.version == 1 {
            return Some(self.head.crcs.clone());
        }
        let mut b = vec![0u8; 8 * self.n as usize];
        self.file.read_exact_at(&mut b, self.header_len + 16).ok()?;
        Some(b.chunks(8).enumerate().map(|(i, e)| entry_from(i as u64, e)).collect())
    }

    fn complete(&self) -> bool {
        self.entries().is_some_and(|e| e.iter().all(Option::is_some))
    }

    /// Whether each block of `blocks` is present (one read of their entries); `None` when they
    /// cannot be read. Blocks past the end are absent.
    fn presence(&self, blocks: std::ops::Range<u64>) -> Option<Vec<bool>> {
        let within = blocks.start.min(self.n)..blocks.end.min(self.n);
        let mut out = if self.head.version == 1 {
            within.clone().map(|i| self.head.crcs[i as usize].is_some()).collect()
        } else {
            let mut b = vec![0u8; 8 * (within.end - within.start) as usize];
            self.file
                .read_exact_at(&mut b, self.header_len + 16 + 8 * within.start)
                .ok()?;
            b.chunks(8)
                .zip(within.clone())
                .map(|(e, i)| entry_from(i, e).is_some())
                .collect::<Vec<_>>()
        };
        out.resize((blocks.end - blocks.start) as usize, false);
        Some(out)
    }

    /// The bytes of the data file the ledger counts (`u64::MAX`: not known).
    fn accounted(&self) -> u64 {
        let mut rec = [0u8; 16];
        if self.head.version == 1 || self.file.read_exact_at(&mut rec, self.header_len).is_err() {
            return u64::MAX;
        }
        accounted_from(&rec)
    }
}

/// The accounted-bytes record: the value and its crc32c.
fn accounted_record(accounted: u64) -> [u8; 16] {
    let mut r = [0u8; 16];
    r[..8].copy_from_slice(&accounted.to_le_bytes());
    let crc = crc32c::crc32c(&accounted.to_le_bytes());
    r[8..12].copy_from_slice(&crc.to_le_bytes());
    r
}

/// Block `i`'s entry: zeros when absent, else its crc and a check of (i, crc).
fn entry(i: u64, crc: Option<u32>) -> [u8; 8] {
    let mut e = [0u8; 8];
    if let Some(crc) = crc {
        let mut x = [0u8; 12];
        x[..8].copy_from_slice(&i.to_le_bytes());
        x[8..].copy_from_slice(&crc.to_le_bytes());
        e[..4].copy_from_slice(&crc.to_le_bytes());
        e[4..].copy_from_slice(&(crc32c::crc32c(&x) ^ ENTRY_SALT).to_le_bytes());
    }
    e
}

impl DiskCache {
    pub(super) fn full_path(&self, object: &str) -> PathBuf {
        self.dir.area(Area::Full).join(hex_shard(object)).join(object)
    }

    /// Removes a rejected object file (counted as invalid) and its index.
    fn reject_full(&self, path: &Path, why: &str) {
        if let Ok(m) = self.dir.metadata(path) {
            self.forget_verified(&m);
        }
        self.reject(path, why);
        self.remove_accounted(&path.with_extension("idx"));
    }

    /// Forgets that the object file `meta` describes was verified (it is being removed).
    pub(super) fn forget_verified(&self, meta: &fs::Metadata) {
        self.verified_full.invalidate(&(meta.dev(), meta.ino()));
        self.checked_here.lock().unwrap().remove(&(meta.dev(), meta.ino()));
    }

    /// Whether an entry of a `full/` shard directory belongs there (reconciliation): an
    /// object file or its index, named by an object hash. An index without its data file,
    /// older than any writer takes, is left by a writer that died and is removed here.
    pub(super) fn full_entry_ok(&self, path: &Path, m: &fs::Metadata, now: SystemTime) -> bool {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return false;
        };
        let (hex, is_idx) = match name.strip_suffix(".idx") {
            Some(h) => (h, true),
            None => (name, false),
        };
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return false;
        }
        if is_idx {
            let age = now.duration_since(m.modified().unwrap_or(now)).unwrap_or_default();
            if self.dir.metadata(&path.with_extension("")).is_err() && age > STALE_TMP {
                let _ = self.dir.remove_file(path);
                return false;
            }
        }
        true
    }

    /// Opens the index at `idx_path` (its header checked); `None` if absent or not valid.
    fn read_index(&self, idx_path: &Path) -> Option<IndexFile> {
        let f = self.dir.open_read(idx_path, true).ok()?;
        if !f.metadata().is_ok_and(|m| is_own_file(&m)) {
            return None;
        }
        IndexFile::open(f)
    }

    /// Whether `i` describes the object (`key`, `etag`, `size`) in this cache.
    fn index_matches(&self, i: &Index, store: &str, key: &str, etag: &str, size: u64) -> bool {
        i.store == store && i.key == key && i.etag == etag && i.size == size && i.block_size == self.cfg.block_size
    }

    /// Opens an object's data file and its index, checking that both describe `want` (key,
    /// ETag, size). `None` when absent or not valid (an invalid one is removed).
    fn open_full(&self, object: &str, store: &str, key: &str, etag: &str, size: u64) -> Option<(File, IndexFile)> {
        let path = self.full_path(object);
        let file = match self.dir.open_read(&path, true) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            // A symlink in place of a directory is removed here.
            Err(_) if !self.real_parents(&path) => return None,
            Err(e) => {
                self.reject(&path, &format!("cannot open: {e}"));
                return None;
            }
        };
        let meta = file.metadata().ok()?;
        let index = self.read_index(&path.with_extension("idx"));
        let valid = index.as_ref().is_some_and(|i| {
            self.index_matches(&i.head, store, key, etag, size) && meta.len() == size && is_own_file(&meta)
        });
        if !valid {
            self.reject_full(&path, "object file does not match its index");
            return None;
        }
        Some((file, index?))
    }

    /// One block out of its object file (its crc checked), for reads through the daemon. `None`
    /// when the file does not hold it.
    pub(super) fn read_from_full(&self, loc: &Location) -> Option<Bytes> {
        let size = match loc.object_size {
            Some(s) => s,
            // The file's length, which `open_full` then checks against the index.
            None => self.dir.metadata(&self.full_path(&loc.object)).ok()?.len(),
        };
        let id = &loc.id;
        let (file, index) = self.open_full(&loc.object, id.source.as_str(), &id.key, &id.etag, size)?;
        let r = block_range(id.index, self.cfg.block_size, index.head.size);
        if r.len() != loc.len {
            return None;
        }
        let want = index.entry(id.index)?;
        let mut buf = crate::bufpool::BlockBuf::zeroed(r.len() as usize);
        file.read_exact_at(buf.as_mut_slice(), r.start).ok()?;
        if crc32c::crc32c(buf.as_slice()) != want {
            self.reject_full(&self.full_path(&loc.object), "block checksum mismatch");
            return None;
        }
        self.checked_here(&file, &index, id.index);
        // Last access, for LRU eviction.
        self.touch_full(&file, &index.file);
        Some(buf.freeze())
    }

    /// Whether the object file of `loc` says it holds that block (its bytes are not read).
    pub(super) fn object_file_holds(&self, loc: &Location) -> bool {
        let id = &loc.id;
        self.read_index(&self.full_path(&loc.object).with_extension("idx"))
            .is_some_and(|i| {
                i.head.store == id.source.as_str()
                    && *i.head.key == *id.key
                    && *i.head.etag == *id.etag
                    && i.head.block_size == id.block_size
                    && i.entry(id.index).is_some()
            })
    }

    /// Whether block `loc` goes into its object's file rather than a block file: the object's
    /// size is known and the file exists, or the object is at most a quarter of the bound.
    pub(super) fn writes_to_object(&self, loc: &Location) -> Option<u64> {
        let size = loc.object_size?;
        if !self.cfg.object_files || loc.id.block_size != self.cfg.block_size || loc.id.source != self.cfg.source {
            return None;
        }
        let small = alloc_size(size) <= self.limit() / 4;
        (small || self.dir.metadata(&self.full_path(&loc.object)).is_ok()).then_some(size)
    }

    /// Writes block `loc` into its object's file (created if missing). `Stored::No` when it was
    /// not stored (no room, a lock not taken in time, the file evicted meanwhile: the block is
    /// then served without being cached, as for a block file).
    pub(super) fn write_to_object(&self, loc: &Location, size: u64, data: &[u8]) -> io::Result<Stored> {
        let path = self.full_path(&loc.object);
        let idx_path = path.with_extension("idx");
        let id = &loc.id;
        let Some((cell, _)) = self.cell_of(&path) else {
            return Ok(Stored::No);
        };
        if self.dir.metadata(&path).is_err() && !self.create_object_file(&path, cell, loc, size)? {
            return Ok(Stored::No);
        }
        let file = match self.dir.open_write(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Stored::No),
            Err(e) => return Err(e),
        };
        let before = file.metadata()?;
        if !is_own_file(&before) || before.len() != size {
            self.reject_full(&path, "object file is not a file of this user of the object's size");
            return Ok(Stored::No);
        }
        let extent = match self.writable_index(&idx_path, loc, size)? {
            Some(index) if index.entry(id.index).is_none() => self.extent_to_allocate(&index, id.index, size),
            Some(_) => return Ok(Stored::AlreadyThere),
            None => {
                self.reject_full(&path, "object file does not match its index");
                return Ok(Stored::No);
            }
        };
        let Some(reservation) = self.reserve_to_store(alloc_size(extent.end - extent.start)) else {
            return Ok(Stored::No);
        };
        let crc = crc32c::crc32c(data);
        let at = id.index * self.cfg.block_size;
        // The extent first, in one call: ext4 then maps the write to blocks it already has
        // instead of reserving delayed allocation 4 KiB at a time, which was half the write's
        // CPU (docs/BENCHMARKS.md, "Cold reads: buffers and request concurrency"), and lays the
        // group out in one piece (`extent_to_allocate`). Until the write lands the range reads
        // as zeros, and the index does not name the block yet. Best effort: where it fails (no
        // space, a filesystem without it) the write says so or allocates as before.
        let _ = rustix::fs::fallocate(
            &file,
            rustix::fs::FallocateFlags::KEEP_SIZE,
            extent.start,
            extent.end - extent.start,
        );
        file.write_all_at(data, at)?;
        let Some(guard) = self.lock_shard_to_store(cell, "a block")? else {
            return Ok(Stored::No);
        };
        // Still the file at that path (not evicted or rejected while this block was written)?
        // Files are removed and created under this lock, so its index is then the one found now.
        match self.dir.metadata(&path) {
            Ok(m) if (m.dev(), m.ino()) == (before.dev(), before.ino()) => {}
            Ok(_) => return Ok(Stored::No),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Stored::No),
            Err(e) => return Err(e),
        }
        let Some(index) = self.writable_index(&idx_path, loc, size)? else {
            // Removing takes this lock itself.
            drop(guard);
            self.reject_full(&path, "object file does not match its index");
            return Ok(Stored::No);
        };
        let allocated = file.metadata()?.blocks() * 512;
        // Unknown (a record torn by a crash): count no growth; reconciliation sets the shard's
        // cell to what its files take.
        let grown = match index.accounted() {
            u64::MAX => 0,
            accounted => allocated as i64 - accounted as i64,
        };
        // The block's entry, then the accounted bytes: each in place, each checked on its own.
        let at = index.header_len;
        index
            .file
            .write_all_at(&entry(id.index, Some(crc)), at + 16 + 8 * id.index)?;
        index.file.write_all_at(&accounted_record(allocated), at)?;
        reservation.commit(Cell::Shard(cell), grown);
        drop(guard);
        self.checked_here(&file, &index, id.index);
        Ok(Stored::Written)
    }

    /// The bytes of the object file (of `size` bytes) to allocate before block `i` is written
    /// into it: the whole aligned group of [`ALLOC_GROUP`] bytes around it when none of the
    /// group's blocks is there yet and the group continues what is there (it is the object's
    /// first group, or the group before it holds a block: a scan), else the block alone (already
    /// allocated, unless a crash or a failed allocation left it a hole). Blocks written far
    /// from any other (a reader jumping through a large object) so never allocate a group each.
    fn extent_to_allocate(&self, index: &IndexFile, i: u64, size: u64) -> std::ops::Range<u64> {
        let bs = self.cfg.block_size;
        let per_group = (ALLOC_GROUP / bs).max(1);
        let group = i / per_group * per_group..((i / per_group + 1) * per_group).min(size.div_ceil(bs));
        let before = group.start.saturating_sub(per_group);
        let whole = index.presence(before..group.end).is_some_and(|present| {
            let (prev, this) = present.split_at((group.start - before) as usize);
            !this.iter().any(|&p| p) && (group.start == 0 || prev.iter().any(|&p| p))
        });
        if whole {
            group.start * bs..(group.end * bs).min(size)
        } else {
            i * bs..((i + 1) * bs).min(size)
        }
    }

    /// Notes that this process checked block `i` (of `n`) of the object file `file`: wrote it
    /// from bytes whose crc it computed itself, or read it and found its crc right. Once every
    /// block of that file is checked, the file counts as verified (as if `verify_assembled` had
    /// read it whole): the first open after a cold read, or after the daemon read the whole file
    /// for a reader, does not read it again. A block written by another process and not read
    /// here keeps the file unverified. A file verified so is stamped (`write_stamp`).
    fn checked_here(&self, file: &File, index: &IndexFile, i: u64) {
        let n = index.n as usize;
        let Ok(meta) = file.metadata() else { return };
        let (key, tag) = file_identity(file, &meta);
        if self.verified_full.get(&key) == Some(tag) {
            return; // nothing left to check
        }
        let mut checked = self.checked_here.lock().unwrap();
        if checked.len() >= CHECKED_MAX && !checked.contains_key(&key) {
            checked.clear(); // those files are verified whole instead
        }
        let (t, blocks) = checked.entry(key).or_insert_with(|| (tag, vec![false; n]));
        if *t != tag || blocks.len() != n {
            *t = tag;
            *blocks = vec![false; n];
        }
        if let Some(b) = blocks.get_mut(i as usize) {
            *b = true;
        }
        if blocks.iter().all(|&b| b) {
            checked.remove(&key);
            drop(checked);
            if let Some(stamp) = self.stamp_of(file) {
                self.write_stamp(&index.file, &stamp);
            }
            self.verified_full.insert(key, tag);
        }
    }

    /// What a verification stamp of the object file `data` says now: 16 bytes of SHA-256 over
    /// this boot of the machine, the file's identity (`file_identity`: inode number,
    /// generation, birth time, size) and its change time, which every write to the file and
    /// every change of its times moves. Small, so that ext4 keeps it inside the inode (no block
    /// of its own for the ledger to miss). `None` when the boot is unknown.
    fn stamp_of(&self, data: &File) -> Option<[u8; 16]> {
        use sha2::Digest;
        let boot = self.boot_id.as_deref()?;
        let meta = data.metadata().ok()?;
        let ((_, ino), (generation, born, size)) = file_identity(data, &meta);
        let mut h = sha2::Sha256::new();
        h.update(STAMP_DOMAIN);
        h.update((boot.len() as u64).to_le_bytes());
        h.update(boot.as_bytes());
        for v in [
            ino,
            generation,
            born,
            size,
            meta.ctime() as u64,
            meta.ctime_nsec() as u64,
        ] {
            h.update(v.to_le_bytes());
        }
        Some(h.finalize()[..16].try_into().expect("16 of 32 bytes"))
    }

    /// Records on an object file's index (extended attribute [`STAMP_XATTR`]) that its data
    /// file, as `stamp` describes it, was verified whole. Any process of this cache may then
    /// hand the file to the kernel without reading it again, until the machine reboots (a
    /// crash may have lost writes the index counts) or the file is changed. Not recorded where
    /// the filesystem has no user extended attributes: then each process verifies the file.
    fn write_stamp(&self, index: &File, stamp: &[u8]) {
        if let Err(e) = rustix::fs::fsetxattr(index, STAMP_XATTR, stamp, rustix::fs::XattrFlags::empty()) {
            debug!("cannot stamp an object file's index as verified: {e}");
        }
    }

    /// Whether `index` carries a stamp of `data` as it is now: verified whole since the machine
    /// booted, and not written or given other times since (`write_stamp`).
    fn stamped(&self, index: &File, data: &File) -> bool {
        self.stamp_of(data).is_some_and(|want| read_stamp(index) == Some(want))
    }

    /// Records the last access of a verified object file ([`super::touch`]) and renews its
    /// stamp, whose change time that moves. A stamp that no longer matches (the file was
    /// written since) is not renewed.
    fn touch_full(&self, data: &File, index: &File) {
        if !super::touch_due(data) {
            return;
        }
        let renew = self.stamped(index, data);
        super::record_access(data);
        if renew && let Some(stamp) = self.stamp_of(data) {
            self.write_stamp(index, &stamp);
        }
    }

    /// The index of `loc`'s object file, opened for writing, if it is a valid version 2 index
    /// of the object (`Some` with every block present for a version 1 index, never written).
    /// `None` when it is not valid or absent.
    fn writable_index(&self, idx_path: &Path, loc: &Location, size: u64) -> io::Result<Option<IndexFile>> {
        let f = match self.dir.open_write(idx_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let m = f.metadata()?;
        let id = &loc.id;
        Ok(IndexFile::open(f).filter(|i| {
            is_own_file(&m)
                && self.index_matches(&i.head, id.source.as_str(), &id.key, &id.etag, size)
                && id.index < i.n
                && (i.head.version == VERSION || i.complete())
        }))
    }

    /// Creates the object file of `loc` (sparse, `size` bytes, no block present) and its index,
    /// under the shard lock. Returns whether the file exists afterwards.
    fn create_object_file(&self, path: &Path, cell: usize, loc: &Location, size: u64) -> io::Result<bool> {
        let id = &loc.id;
        let index = Index {
            version: VERSION,
            store: id.source.to_string(),
            key: id.key.to_string(),
            etag: id.etag.to_string(),
            size,
            block_size: self.cfg.block_size,
            accounted: 0,
            crcs: vec![None; size.div_ceil(self.cfg.block_size) as usize],
        };
        let encoded = index.encode();
        let new_shard = !self.real_parents(path);
        let reserve = alloc_size(encoded.len() as u64) + if new_shard { DIR_BYTES } else { 0 };
        let Some(reservation) = self.reserve_to_store(reserve) else {
            return Ok(false);
        };
        let tmp_dir = self.dir.area(Area::Tmp);
        let mut data = self.dir.temp(&tmp_dir, "full", None)?;
        data.file().set_len(size)?;
        let mut idx = self.dir.temp(&tmp_dir, "idx", None)?;
        idx.file().write_all(&encoded)?;
        let bytes = (data.file().metadata()?.blocks() + idx.file().metadata()?.blocks()) * 512;
        let Some(_g) = self.lock_shard_to_store(cell, "a block")? else {
            return Ok(false);
        };
        if self.dir.metadata(path).is_ok() {
            return Ok(true); // another writer made it
        }
        // The index first: a data file is only ever seen with its index in place. Placing it
        // creates the shard directory if it is missing, never through a symlink.
        let placed = idx.place(&path.with_extension("idx"), Some(&self.dir.area(Area::Full)))?;
        let placed_data = match data.place(path, None) {
            Ok(p) => p,
            Err(e) => {
                let _ = self.dir.remove_file(&path.with_extension("idx"));
                return Err(e);
            }
        };
        let delta = (bytes + placed.dirs_created as u64 * DIR_BYTES) as i64
            - placed.replaced.unwrap_or(0) as i64
            - placed_data.replaced.unwrap_or(0) as i64;
        reservation.commit(Cell::Shard(cell), delta);
        Ok(true)
    }

    /// The object file of `obj`, complete and verified, to hand to the kernel (FUSE
    /// passthrough). Blocking: the first open in this process reads the whole file to check it.
    pub fn open_assembled(&self, obj: &ObjectMeta) -> Option<File> {
        match self.open_if_verified(obj) {
            Assembled::Verified(f) => Some(f),
            Assembled::Unverified if self.verify_assembled(obj) => match self.open_if_verified(obj) {
                Assembled::Verified(f) => Some(f),
                _ => None,
            },
            _ => None,
        }
    }

    /// The object file of `obj`, complete, if this process has verified it whole (its last access
    /// recorded, counted as a hit); `Unverified` when it is there but not verified yet. Reads
    /// no data: opens the file and its index and checks they describe `obj`.
    pub fn open_if_verified(&self, obj: &ObjectMeta) -> Assembled {
        let (object, _) = self.assembled_hash(obj);
        let Some((file, index)) = self.open_full(&object, self.cfg.source.as_str(), &obj.key, &obj.etag, obj.size)
        else {
            return Assembled::Absent;
        };
        // Not every block there yet: not a whole object.
        if !index.complete() {
            return Assembled::Absent;
        }
        let Ok(meta) = file.metadata() else {
            return Assembled::Absent;
        };
        let (key, tag) = file_identity(&file, &meta);
        if self.verified_full.get(&key) != Some(tag) {
            // Verified by an earlier process since the machine booted, and unchanged since.
            if !self.stamped(&index.file, &file) {
                return Assembled::Unverified;
            }
            self.verified_full.insert(key, tag);
        }
        // Last access, for LRU eviction.
        self.touch_full(&file, &index.file);
        self.stats.hits.inc();
        Assembled::Verified(file)
    }

    /// Reads the complete object file of `obj` whole and checks each block against its index
    /// (blocking). A file that fails is removed. True when verified: this process then hands
    /// it out (`open_if_verified`) until it is removed or replaced.
    pub fn verify_assembled(&self, obj: &ObjectMeta) -> bool {
        let (object, _) = self.assembled_hash(obj);
        let Some((file, index)) = self.open_full(&object, self.cfg.source.as_str(), &obj.key, &obj.etag, obj.size)
        else {
            return false;
        };
        let Ok(meta) = file.metadata() else {
            return false;
        };
        let (key, tag) = file_identity(&file, &meta);
        if self.verified_full.get(&key) == Some(tag) {
            return true;
        }
        // What the stamp will record: taken before the bytes are read, and written only if the
        // file did not change while they were.
        let stamp = self.stamp_of(&file);
        if stamp.is_some() && read_stamp(&index.file) == stamp {
            self.verified_full.insert(key, tag);
            return true;
        }
        // Only a whole object is verified (an absent block is no damage).
        let Some(crcs) = index.entries().filter(|c| c.iter().all(Option::is_some)) else {
            return false;
        };
        // Blocks this process already checked (written here, or read for a reader since) are
        // not read again.
        let checked = match self.checked_here.lock().unwrap().get(&key) {
            Some((t, blocks)) if *t == tag && blocks.len() == crcs.len() => blocks.clone(),
            _ => vec![false; crcs.len()],
        };
        let mut buf = vec![0u8; self.cfg.block_size as usize];
        for (i, want) in crcs.iter().enumerate().filter(|(i, _)| !checked[*i]) {
            let r = block_range(i as u64, self.cfg.block_size, obj.size);
            let b = &mut buf[..r.len() as usize];
            if file.read_exact_at(b, r.start).is_err() || Some(crc32c::crc32c(b)) != *want {
                self.reject_full(&self.full_path(&object), "block checksum mismatch");
                return false;
            }
        }
        self.checked_here.lock().unwrap().remove(&key);
        if let Some(stamp) = stamp
            && self.stamp_of(&file) == Some(stamp)
        {
            self.write_stamp(&index.file, &stamp);
        }
        self.verified_full.insert(key, tag);
        true
    }

    /// Moves the block files of `obj` into its object file, if it is eligible (see
    /// `writes_to_object`) and every block is cached (blocking). Returns whether the object
    /// file is complete afterwards.
    pub fn assemble(&self, obj: &ObjectMeta) -> io::Result<bool> {
        let n = obj.size.div_ceil(self.cfg.block_size);
        if n == 0 {
            return Ok(false);
        }
        let (object, _) = self.assembled_hash(obj);
        let path = self.full_path(&object);
        let idx_path = path.with_extension("idx");
        let present = self.read_index(&idx_path).and_then(|x| x.entries()).unwrap_or_default();
        if present.len() as u64 == n && present.iter().all(Option::is_some) {
            return Ok(true); // the usual case: written whole as it was read
        }
        let present = |i: u64| present.get(i as usize).is_some_and(Option::is_some);
        let mut moves = Vec::new();
        for i in 0..n {
            let block = BlockRef::new(&self.cfg.source, obj, self.cfg.block_size, i);
            let loc = self.locate(&block);
            if self.dir.metadata(&loc.path).is_ok() {
                moves.push(loc);
            } else if !present(i) {
                return Ok(false); // not every block is cached
            }
        }
        for loc in &moves {
            if self.writes_to_object(loc).is_none() {
                return Ok(false);
            }
            let Some(data) = self.load_block_file(loc) else {
                return Ok(false);
            };
            if self.write_to_object(loc, obj.size, &data)? == Stored::No {
                return Ok(false);
            }
            self.remove_accounted(&loc.path);
        }
        if !moves.is_empty() {
            debug!(key = %obj.key, blocks = moves.len(), "block files moved into the object file");
        }
        Ok(self.read_index(&idx_path).is_some_and(|i| i.complete()))
    }
}

/// The verification stamp an object file's index carries (`DiskCache::write_stamp`), if any.
fn read_stamp(index: &File) -> Option<[u8; 16]> {
    let mut got = [0u8; 16];
    matches!(rustix::fs::fgetxattr(index, STAMP_XATTR, &mut got[..]), Ok(16)).then_some(got)
}

/// What tells a file from a later one that is given its inode number once it is deleted (an
/// object assembled again after eviction, or another object): the key (device, inode), and the
/// inode's generation (`FS_IOC_GETVERSION`: ext4, xfs, btrfs; 0 where there is none), birth
/// time (statx; ext4, xfs, btrfs, tmpfs) and size. Where the filesystem has neither a
/// generation nor a birth time, the change time stands in: then a file is verified again
/// after every open (its access time is set on open, which changes it), never trusted wrongly.
fn file_identity(file: &File, meta: &fs::Metadata) -> (FileKey, FileTag) {
    let mut generation: libc::c_long = 0;
    // SAFETY: a valid descriptor, and room for the long the ioctl writes.
    let generation = if unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETVERSION, &mut generation) } == 0 {
        generation as u64
    } else {
        0
    };
    let born = meta
        .created()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as u64);
    let born = match born {
        Some(b) => b,
        None if generation != 0 => 0,
        None => (meta.ctime() as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(meta.ctime_nsec() as u64),
    };
    ((meta.dev(), meta.ino()), (generation, born, meta.size()))
}

impl AssembledFiles for DiskCache {
    fn open_assembled(&self, obj: &ObjectMeta) -> Assembled {
        self.open_if_verified(obj)
    }

    fn verify_assembled(&self, obj: &ObjectMeta) -> bool {
        DiskCache::verify_assembled(self, obj)
    }

    fn reused(&self, file: &File, obj: &ObjectMeta, touch: bool) {
        if touch {
            let (object, _) = self.assembled_hash(obj);
            match self.read_index(&self.full_path(&object).with_extension("idx")) {
                Some(index) => self.touch_full(file, &index.file),
                None => super::touch(file),
            }
        }
        self.stats.hits.inc();
    }

    fn assemble_if_complete(&self, obj: &ObjectMeta) -> bool {
        if obj.size == 0 {
            return false;
        }
        match self.assemble(obj) {
            Ok(done) => done,
            Err(e) => {
                self.warn(format_args!("cannot assemble {} in the disk cache: {e}", obj.key));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Index {
        Index {
            version: VERSION,
            store: "s|b".into(),
            key: "k".into(),
            etag: "\"e\"".into(),
            size: 10,
            block_size: 4,
            accounted: 8192,
            crcs: vec![Some(1), None, Some(3)],
        }
    }

    /// What damage to the bytes of `i` may decode to: nothing, or `i` with some blocks absent and
    /// the accounted bytes unknown; never another crc, key or size.
    fn damaged_ok(i: &Index, got: &Option<Index>) -> bool {
        let Some(g) = got else { return true };
        g.version == i.version
            && (g.store.as_str(), g.key.as_str(), g.etag.as_str(), g.size, g.block_size)
                == (i.store.as_str(), i.key.as_str(), i.etag.as_str(), i.size, i.block_size)
            && (g.accounted == i.accounted || g.accounted == u64::MAX)
            && g.crcs.len() == i.crcs.len()
            && g.crcs.iter().zip(&i.crcs).all(|(g, i)| g.is_none() || g == i)
    }

    #[test]
    fn index_round_trip_and_damage() {
        let i = sample();
        let b = i.encode();
        assert_eq!(Index::decode(&b), Some(i.clone()));
        let header = i.accounted_at() as usize;
        for pos in 0..b.len() {
            let mut c = b.clone();
            c[pos] ^= 0x10;
            let got = Index::decode(&c);
            if pos < header {
                assert_eq!(got, None, "flipped header byte {pos}");
            } else {
                // A damaged entry is an absent block; damaged accounted bytes are unknown.
                assert!(damaged_ok(&i, &got), "flipped byte {pos}: {got:?}");
            }
        }
        assert_eq!(Index::decode(&b[..b.len() - 1]), None);
        assert_eq!(Index::decode(b""), None);
    }

    #[test]
    fn entries_and_accounted_bytes_are_written_in_place() {
        let mut i = sample();
        let mut b = i.encode();
        let at = i.entry_at(1) as usize;
        b[at..at + 8].copy_from_slice(&entry(1, Some(7)));
        let at = i.accounted_at() as usize;
        b[at..at + 16].copy_from_slice(&accounted_record(12288));
        i.crcs[1] = Some(7);
        i.accounted = 12288;
        assert!(i.complete());
        assert_eq!(Index::decode(&b), Some(i.clone()));
        assert_eq!(b, i.encode());
        // An entry of another block, copied here, does not check.
        let (e0, e1) = (i.entry_at(0) as usize, i.entry_at(1) as usize);
        let other = b[e0..e0 + 8].to_vec();
        b[e1..e1 + 8].copy_from_slice(&other);
        assert_eq!(Index::decode(&b).unwrap().crcs[1], None);
    }

    /// An open index reads what a whole decode reads, a few bytes per entry, also when its
    /// header is longer than the first read; a file of the wrong length is not an index.
    #[test]
    fn index_file_reads_entries_in_place() {
        for key in ["k".to_string(), "k".repeat(5000)] {
            let mut i = sample();
            i.key = key;
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("x.idx");
            fs::write(&p, i.encode()).unwrap();
            let f = IndexFile::open(File::open(&p).unwrap()).unwrap();
            assert_eq!((f.head.key.as_str(), f.n), (i.key.as_str(), 3));
            assert_eq!(f.entries().unwrap(), i.crcs);
            assert_eq!(
                (0..4).map(|b| f.entry(b)).collect::<Vec<_>>(),
                vec![Some(1), None, Some(3), None]
            );
            assert_eq!(f.accounted(), 8192);
            assert!(!f.complete());
            assert_eq!(f.presence(0..5), Some(vec![true, false, true, false, false]));
            assert_eq!(f.presence(1..2), Some(vec![false]));
            let mut longer = i.encode();
            longer.push(0);
            fs::write(&p, &longer).unwrap();
            assert!(IndexFile::open(File::open(&p).unwrap()).is_none());
        }
    }

    #[test]
    fn version_1_is_read_as_complete() {
        let mut h = Vec::new();
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&10u64.to_le_bytes());
        h.extend_from_slice(&4u64.to_le_bytes());
        for s in ["s|b", "k", "\"e\""] {
            h.extend_from_slice(&(s.len() as u16).to_le_bytes());
            h.extend_from_slice(s.as_bytes());
        }
        h.extend_from_slice(&3u64.to_le_bytes());
        for c in [1u32, 2, 3] {
            h.extend_from_slice(&c.to_le_bytes());
        }
        let crc = crc32c::crc32c(&h);
        h.extend_from_slice(&crc.to_le_bytes());
        let i = Index::decode(&h).unwrap();
        assert_eq!(
            (i.version, i.accounted, i.crcs),
            (1, u64::MAX, vec![Some(1), Some(2), Some(3)])
        );
        h[20] ^= 1;
        assert_eq!(Index::decode(&h), None);
    }

    mod hostile {
        use super::*;
        use proptest::prelude::*;

        fn index() -> impl Strategy<Value = Index> {
            (
                any::<String>(),
                any::<String>(),
                any::<String>(),
                0u64..1 << 40,
                1u64..1 << 30,
                any::<u64>(),
            )
                .prop_flat_map(|(store, key, etag, size, block_size, accounted)| {
                    let n = size.div_ceil(block_size).min(64);
                    let size = size.min(n * block_size);
                    proptest::collection::vec(proptest::option::of(any::<u32>()), n as usize).prop_map(move |crcs| {
                        Index {
                            version: VERSION,
                            store: store.chars().take(100).collect(),
                            key: key.chars().take(300).collect(),
                            etag: etag.chars().take(100).collect(),
                            size,
                            block_size,
                            accounted: accounted.min(u64::MAX - 1),
                            crcs,
                        }
                    })
                })
        }

        proptest! {
            /// Arbitrary bytes never panic and never validate.
            #[test]
            fn arbitrary_bytes_never_validate(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
                prop_assert_eq!(Index::decode(&bytes), None);
            }

            /// Bytes that get past the header's checksum (garbage inside) never panic, and what
            /// they decode to encodes to an index that decodes the same.
            #[test]
            fn checksummed_garbage_never_panics(
                magic in prop_oneof![Just(MAGIC.to_vec()), proptest::collection::vec(any::<u8>(), 8)],
                version in prop_oneof![Just(1u32), Just(VERSION)],
                head in proptest::collection::vec(any::<u8>(), 0..128),
                tail in proptest::collection::vec(any::<u8>(), 0..512),
            ) {
                let mut body = magic;
                body.extend_from_slice(&version.to_le_bytes());
                body.extend_from_slice(&head);
                let crc = crc32c::crc32c(&body);
                body.extend_from_slice(&crc.to_le_bytes());
                body.extend_from_slice(&tail);
                if let Some(i) = Index::decode(&body) {
                    prop_assert_eq!(Index::decode(&i.encode()).map(|j| j.crcs), Some(i.crcs));
                }
            }

            /// Every valid index round-trips; a flipped bit never yields another crc or key, and
            /// a truncation is rejected.
            #[test]
            fn round_trip_and_any_damage_is_caught(i in index(), pos in any::<usize>(), bit in 0u8..8, cut in any::<usize>()) {
                let b = i.encode();
                prop_assert!(Index::decode(&b) == Some(i.clone()));
                let mut flipped = b.clone();
                let pos = pos % b.len();
                flipped[pos] ^= 1 << bit;
                let got = Index::decode(&flipped);
                prop_assert!(damaged_ok(&i, &got));
                prop_assert_eq!(Index::decode(&b[..cut % b.len()]), None);
            }
        }
    }
}
