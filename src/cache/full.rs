//! Assembled objects: once every block of an object is in the cache, its bytes are copied into
//! one plain file, `v1/full/<shard>/<object hash>`, which the kernel can read directly (FUSE
//! passthrough) and which every process opening the object shares, page cache included. Its
//! block files are then removed, so nothing is stored twice.
//!
//! Next to it, `<object hash>.idx` says what the file holds (store, key, ETag, size, block
//! size) and the crc32c of every block, with its own checksum. The index is written before the
//! data file appears (both by temp file and rename), so a data file without a valid index is
//! never trusted. Reads through the daemon verify the crc of each block they take from the
//! file; a file handed to the kernel is verified whole once per process (`verify_assembled`,
//! which the filesystem runs in the background, after assembly or while the first opens read
//! through the daemon).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use tracing::debug;

use super::coord::{Cell, LockError};
use super::{DIR_BYTES, DiskCache, Location, STALE_TMP, alloc_size};
use crate::cachedir::{Area, hex_shard, is_own_file};
use crate::object::{Assembled, AssembledFiles, BlockRef, ObjectMeta, block_range};

const MAGIC: &[u8; 8] = b"S3CFSFUL";
const VERSION: u32 = 1;

/// What an index says.
#[derive(Debug, PartialEq, Eq)]
struct Index {
    store: String,
    key: String,
    etag: String,
    size: u64,
    block_size: u64,
    crcs: Vec<u32>,
}

impl Index {
    fn encode(&self) -> Vec<u8> {
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
        for c in &self.crcs {
            h.extend_from_slice(&c.to_le_bytes());
        }
        let crc = crc32c::crc32c(&h);
        h.extend_from_slice(&crc.to_le_bytes());
        h
    }

    fn decode(b: &[u8]) -> Option<Index> {
        let (body, crc) = b.split_at_checked(b.len().checked_sub(4)?)?;
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?) {
            return None;
        }
        let mut pos = 0usize;
        let mut take = |n: usize| -> Option<&[u8]> {
            let s = body.get(pos..pos.checked_add(n)?)?;
            pos += n;
            Some(s)
        };
        if take(8)? != MAGIC || u32::from_le_bytes(take(4)?.try_into().ok()?) != VERSION {
            return None;
        }
        let size = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let block_size = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let mut strings = Vec::new();
        for _ in 0..3 {
            let n = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
            strings.push(String::from_utf8(take(n)?.to_vec()).ok()?);
        }
        let n = u64::from_le_bytes(take(8)?.try_into().ok()?);
        if block_size == 0 || n != size.div_ceil(block_size) {
            return None;
        }
        let crcs = (0..n)
            .map(|_| Some(u32::from_le_bytes(take(4)?.try_into().ok()?)))
            .collect::<Option<Vec<_>>>()?;
        if pos != body.len() {
            return None;
        }
        let etag = strings.pop()?;
        let key = strings.pop()?;
        let store = strings.pop()?;
        Some(Index {
            store,
            key,
            etag,
            size,
            block_size,
            crcs,
        })
    }
}

impl DiskCache {
    pub(super) fn full_path(&self, object: &str) -> PathBuf {
        self.dir.area(Area::Full).join(hex_shard(object)).join(object)
    }

    /// Removes a rejected assembled object (counted as invalid) and its index.
    fn reject_full(&self, path: &Path, why: &str) {
        if let Ok(m) = self.dir.metadata(path) {
            self.forget_verified(&m);
        }
        self.reject(path, why);
        self.remove_accounted(&path.with_extension("idx"));
    }

    /// Forgets that the assembled file `meta` describes was verified (it is being removed).
    pub(super) fn forget_verified(&self, meta: &fs::Metadata) {
        self.verified_full.invalidate(&(meta.dev(), meta.ino()));
    }

    /// Whether an entry of a `full/` shard directory belongs there (reconciliation): an
    /// assembled file or its index, named by an object hash. An index without its data file,
    /// older than any assembly takes, is left by an assembler that died and is removed here.
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

    /// Opens an assembled object's data file and its index, checking that both describe
    /// `want` (key, ETag, size). `None` when absent or not valid (an invalid one is removed).
    fn open_full(&self, object: &str, key: &str, etag: &str, size: u64) -> Option<(File, Index)> {
        let path = self.full_path(object);
        let file = match self.dir.open_read(&path, false) {
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
        let idx_path = path.with_extension("idx");
        let index = self.dir.open_read(&idx_path, false).ok().and_then(|f| {
            let mut b = Vec::new();
            f.take(16 << 20).read_to_end(&mut b).ok()?;
            Index::decode(&b)
        });
        let valid = index.as_ref().is_some_and(|i| {
            i.store == self.cfg.source.as_str()
                && i.key == key
                && i.etag == etag
                && i.size == size
                && i.block_size == self.cfg.block_size
                && meta.len() == size
                && is_own_file(&meta)
        });
        if !valid {
            self.reject_full(&path, "assembled object does not match its index");
            return None;
        }
        Some((file, index?))
    }

    /// One block out of an assembled object (its crc checked), for reads through the daemon.
    pub(super) fn read_from_full(&self, loc: &Location) -> Option<Bytes> {
        let size = self.full_size_hint(loc)?;
        let (file, index) = self.open_full(&loc.object, &loc.id.key, &loc.id.etag, size)?;
        let r = block_range(loc.id.index, self.cfg.block_size, index.size);
        if r.len() != loc.len {
            return None;
        }
        let mut buf = vec![0u8; r.len() as usize];
        file.read_exact_at(&mut buf, r.start).ok()?;
        if crc32c::crc32c(&buf) != *index.crcs.get(loc.id.index as usize)? {
            self.reject_full(&self.full_path(&loc.object), "block checksum mismatch");
            return None;
        }
        // Last access, for LRU eviction.
        super::touch(&file);
        Some(Bytes::from(buf))
    }

    /// The size a block's location does not carry: the data file's length, which `open_full`
    /// then checks against the index.
    fn full_size_hint(&self, loc: &Location) -> Option<u64> {
        self.dir.metadata(&self.full_path(&loc.object)).ok().map(|m| m.len())
    }

    /// The assembled file of `obj`, verified, to hand to the kernel (FUSE passthrough).
    /// Blocking: the first open in this process reads the whole file to check it.
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

    /// The assembled file of `obj` if this process has verified it whole (its last access
    /// recorded, counted as a hit); `Unverified` when it is there but not verified yet. Reads
    /// no data: opens the file and its index and checks they describe `obj`.
    pub fn open_if_verified(&self, obj: &ObjectMeta) -> Assembled {
        let (object, _) = self.assembled_hash(obj);
        let Some((file, _)) = self.open_full(&object, &obj.key, &obj.etag, obj.size) else {
            return Assembled::Absent;
        };
        let Ok(meta) = file.metadata() else {
            return Assembled::Absent;
        };
        let (key, tag) = file_identity(&file, &meta);
        if self.verified_full.get(&key) != Some(tag) {
            return Assembled::Unverified;
        }
        // Last access, for LRU eviction.
        super::touch(&file);
        self.stats.hits.inc();
        Assembled::Verified(file)
    }

    /// Reads the assembled file of `obj` whole and checks each block against its index
    /// (blocking). A file that fails is removed. True when verified: this process then hands
    /// it out (`open_if_verified`) until it is removed or replaced.
    pub fn verify_assembled(&self, obj: &ObjectMeta) -> bool {
        let (object, _) = self.assembled_hash(obj);
        let Some((file, index)) = self.open_full(&object, &obj.key, &obj.etag, obj.size) else {
            return false;
        };
        let Ok(meta) = file.metadata() else {
            return false;
        };
        let (key, tag) = file_identity(&file, &meta);
        if self.verified_full.get(&key) == Some(tag) {
            return true;
        }
        let mut buf = vec![0u8; self.cfg.block_size as usize];
        for (i, want) in index.crcs.iter().enumerate() {
            let r = block_range(i as u64, self.cfg.block_size, obj.size);
            let b = &mut buf[..r.len() as usize];
            if file.read_exact_at(b, r.start).is_err() || crc32c::crc32c(b) != *want {
                self.reject_full(&self.full_path(&object), "block checksum mismatch");
                return false;
            }
        }
        self.verified_full.insert(key, tag);
        true
    }

    /// Assembles `obj` now (blocking). Returns whether the full file exists afterwards.
    pub fn assemble(&self, obj: &ObjectMeta) -> io::Result<bool> {
        let (object, num) = self.assembled_hash(obj);
        let path = self.full_path(&object);
        let exists = |p: &std::path::Path| self.dir.metadata(p).is_ok();
        if exists(&path) {
            return Ok(true);
        }
        let n = obj.size.div_ceil(self.cfg.block_size);
        let locs: Vec<Location> = (0..n)
            .map(|i| self.locate(&BlockRef::new(&self.cfg.source, obj, self.cfg.block_size, i)))
            .collect();
        // Assembling needs room for a second copy until the blocks are removed: leave objects
        // larger than a quarter of the cache as blocks rather than evict half of it.
        if n == 0 || alloc_size(obj.size) > self.limit() / 4 || !locs.iter().all(|l| exists(&l.path)) {
            return Ok(false);
        }
        // One assembler per object across processes; if another one is stuck, leave it.
        let _lock = match self.locks.stripe(num ^ 0xA55E_4B1E, self.cfg.lock_wait) {
            Ok(g) => g,
            Err(LockError::Timeout) => {
                self.lock_failed("wait for another assembly", LockError::Timeout);
                return Ok(false);
            }
            Err(LockError::Io(e)) => return Err(e),
        };
        if exists(&path) {
            return Ok(true);
        }
        let mut index = Index {
            store: self.cfg.source.to_string(),
            key: obj.key.to_string(),
            etag: obj.etag.to_string(),
            size: obj.size,
            block_size: self.cfg.block_size,
            crcs: Vec::with_capacity(n as usize),
        };
        let idx_len = index.encode().len() as u64 + 4 * n;
        let new_shard = !self.real_parents(&path);
        let size = alloc_size(obj.size) + alloc_size(idx_len) + if new_shard { DIR_BYTES } else { 0 };
        let Some(reservation) = self.reserve(size) else {
            return Ok(false);
        };
        let Some((cell, _)) = self.cell_of(&path) else {
            return Ok(false);
        };
        let tmp_dir = self.dir.area(Area::Tmp);
        let result = (|| -> io::Result<bool> {
            let mut out = self.dir.temp(&tmp_dir, "full", None)?;
            for loc in &locs {
                let Some(data) = self.load_block(loc) else {
                    return Ok(false);
                };
                index.crcs.push(crc32c::crc32c(&data));
                out.file().write_all(&data)?;
            }
            let mut idx = self.dir.temp(&tmp_dir, "idx", None)?;
            idx.file().write_all(&index.encode())?;
            let bytes = (out.file().metadata()?.blocks() + idx.file().metadata()?.blocks()) * 512;
            let _g = match self.locks.shard(cell, self.short_wait()) {
                Ok(g) => g,
                Err(LockError::Timeout) => {
                    self.lock_failed("lock a disk cache shard to assemble", LockError::Timeout);
                    return Ok(false);
                }
                Err(LockError::Io(e)) => return Err(e),
            };
            // The index first: a data file is only ever seen with its index in place. Placing
            // it creates the shard directory if it is missing, never through a symlink.
            let placed = idx.place(&path.with_extension("idx"), Some(&self.dir.area(Area::Full)))?;
            let placed_data = match out.place(&path, None) {
                Ok(p) => p,
                Err(e) => {
                    // The index alone: account for it, it goes with a later scan or assembly.
                    let _ = self.dir.remove_file(&path.with_extension("idx"));
                    return Err(e);
                }
            };
            let delta = (bytes + placed.dirs_created as u64 * DIR_BYTES) as i64
                - placed.replaced.unwrap_or(0) as i64
                - placed_data.replaced.unwrap_or(0) as i64;
            reservation.commit(Cell::Shard(cell), delta);
            Ok(true)
        })();
        match result {
            Ok(true) => {
                // The block files are now redundant.
                for loc in &locs {
                    self.remove_accounted(&loc.path);
                }
                debug!(key = %obj.key, bytes = obj.size, "assembled in the disk cache");
                Ok(true)
            }
            other => {
                debug!(key = %obj.key, "assembly abandoned");
                other
            }
        }
    }
}

/// What tells a file from a later one that is given its inode number once it is deleted (an
/// object assembled again after eviction, or another object): the key (device, inode), and the
/// inode's generation (`FS_IOC_GETVERSION`: ext4, xfs, btrfs; 0 where there is none), birth
/// time (statx; ext4, xfs, btrfs, tmpfs) and size. Where the filesystem has neither a
/// generation nor a birth time, the change time stands in: then a file is verified again
/// after every open (its access time is set on open, which changes it), never trusted wrongly.
fn file_identity(file: &File, meta: &fs::Metadata) -> ((u64, u64), (u64, u64, u64)) {
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

    fn reused(&self, file: &File, touch: bool) {
        if touch {
            super::touch(file);
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

    #[test]
    fn index_round_trip_and_rejects_garbage() {
        let i = Index {
            store: "s|b".into(),
            key: "k".into(),
            etag: "\"e\"".into(),
            size: 10,
            block_size: 4,
            crcs: vec![1, 2, 3],
        };
        let b = i.encode();
        assert_eq!(Index::decode(&b), Some(i));
        for pos in 0..b.len() {
            let mut c = b.clone();
            c[pos] ^= 0x10;
            assert_eq!(Index::decode(&c), None, "flipped byte {pos}");
        }
        assert_eq!(Index::decode(&b[..b.len() - 1]), None);
        assert_eq!(Index::decode(b""), None);
    }

    mod hostile {
        use super::*;
        use proptest::prelude::*;

        fn with_crc(mut body: Vec<u8>) -> Vec<u8> {
            let crc = crc32c::crc32c(&body);
            body.extend_from_slice(&crc.to_le_bytes());
            body
        }

        fn index() -> impl Strategy<Value = Index> {
            (
                any::<String>(),
                any::<String>(),
                any::<String>(),
                0u64..1 << 40,
                1u64..1 << 30,
            )
                .prop_flat_map(|(store, key, etag, size, block_size)| {
                    let n = size.div_ceil(block_size).min(64);
                    let size = size.min(n * block_size);
                    proptest::collection::vec(any::<u32>(), n as usize).prop_map(move |crcs| Index {
                        store: store.chars().take(100).collect(),
                        key: key.chars().take(300).collect(),
                        etag: etag.chars().take(100).collect(),
                        size,
                        block_size,
                        crcs,
                    })
                })
        }

        proptest! {
            /// Arbitrary bytes never panic and never validate.
            #[test]
            fn arbitrary_bytes_never_validate(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
                prop_assert_eq!(Index::decode(&bytes), None);
            }

            /// Bytes that get past the checksum (a file with a valid crc but garbage inside)
            /// never panic, and validate only as the one encoding of what they decode to.
            #[test]
            fn checksummed_garbage_never_panics(
                magic in prop_oneof![Just(MAGIC.to_vec()), proptest::collection::vec(any::<u8>(), 8)],
                rest in proptest::collection::vec(any::<u8>(), 0..512),
            ) {
                let mut body = magic;
                body.extend_from_slice(&VERSION.to_le_bytes());
                body.extend_from_slice(&rest);
                let file = with_crc(body);
                if let Some(i) = Index::decode(&file) {
                    prop_assert_eq!(i.encode(), file);
                }
            }

            /// Every valid index round-trips; any flipped bit or truncation is rejected.
            #[test]
            fn round_trip_and_any_damage_is_rejected(i in index(), pos in any::<usize>(), bit in 0u8..8, cut in any::<usize>()) {
                let b = i.encode();
                prop_assert!(Index::decode(&b) == Some(i));
                let mut flipped = b.clone();
                let pos = pos % b.len();
                flipped[pos] ^= 1 << bit;
                prop_assert_eq!(Index::decode(&flipped), None);
                prop_assert_eq!(Index::decode(&b[..cut % b.len()]), None);
            }
        }
    }
}
