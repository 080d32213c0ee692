//! Assembled objects: once every block of an object is in the cache, its bytes are copied into
//! one plain file, `v1/full/<shard>/<object hash>`, which the kernel can read directly (FUSE
//! passthrough) and which every process opening the object shares, page cache included. Its
//! block files are then removed, so nothing is stored twice.
//!
//! Next to it, `<object hash>.idx` says what the file holds (store, key, ETag, size, block
//! size) and the crc32c of every block, with its own checksum. The index is written before the
//! data file appears (both by temp file and rename), so a data file without a valid index is
//! never trusted. Reads through the daemon verify the crc of each block they take from the
//! file; a file handed to the kernel is verified whole once per process.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use bytes::Bytes;
use tracing::debug;

use super::{DIR_BYTES, DiskCache, Location, STALE_TMP, alloc_size};
use crate::object::{AssembledFiles, BlockRef, ObjectMeta, block_range};

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
        self.root.join("full").join(&object[..3]).join(object)
    }

    /// Removes the index of a rejected assembled object and gives its bytes back to the counter.
    fn remove_index(&self, path: &Path) {
        if let Ok(m) = fs::symlink_metadata(path)
            && fs::remove_file(path).is_ok()
        {
            self.usage.sub(m.blocks() * 512);
        }
    }

    /// Opens an assembled object's data file and its index, checking that both describe
    /// `want` (key, ETag, size). `None` when absent or not valid (an invalid one is removed).
    fn open_full(&self, object: &str, key: &str, etag: &str, size: u64) -> Option<(File, Index)> {
        let path = self.full_path(object);
        if !self.real_parents(&path) {
            return None;
        }
        let file = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                self.reject(&path, None, &format!("cannot open: {e}"));
                return None;
            }
        };
        let meta = file.metadata().ok()?;
        let idx_path = path.with_extension("idx");
        let index = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&idx_path)
            .ok()
            .and_then(|f| {
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
                && meta.is_file()
                && meta.uid() == unsafe { libc::geteuid() }
        });
        if !valid {
            self.reject(&path, Some(&meta), "assembled object does not match its index");
            self.remove_index(&idx_path);
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
            self.reject(
                &self.full_path(&loc.object),
                file.metadata().ok().as_ref(),
                "block checksum mismatch",
            );
            self.remove_index(&self.full_path(&loc.object).with_extension("idx"));
            return None;
        }
        // SAFETY: valid descriptor; null times means "now" (last access, for LRU eviction).
        unsafe { libc::futimens(file.as_raw_fd(), std::ptr::null()) };
        Some(Bytes::from(buf))
    }

    /// The size a block's location does not carry: the data file's length, which `open_full`
    /// then checks against the index.
    fn full_size_hint(&self, loc: &Location) -> Option<u64> {
        fs::symlink_metadata(self.full_path(&loc.object)).ok().map(|m| m.len())
    }

    /// The assembled file of `obj`, verified, to hand to the kernel (FUSE passthrough).
    /// Blocking: the first open in this process reads the whole file to check it.
    pub fn open_assembled(&self, obj: &ObjectMeta) -> Option<File> {
        let (object, _) = self.assembled_hash(obj);
        let (file, index) = self.open_full(&object, &obj.key, &obj.etag, obj.size)?;
        let meta = file.metadata().ok()?;
        let id = file_identity(&file, &meta);
        if !self.verified_full.lock().unwrap().contains(&id) {
            let mut buf = vec![0u8; self.cfg.block_size as usize];
            for (i, want) in index.crcs.iter().enumerate() {
                let r = block_range(i as u64, self.cfg.block_size, obj.size);
                let b = &mut buf[..r.len() as usize];
                if file.read_exact_at(b, r.start).is_err() || crc32c::crc32c(b) != *want {
                    self.reject(&self.full_path(&object), Some(&meta), "block checksum mismatch");
                    self.remove_index(&self.full_path(&object).with_extension("idx"));
                    return None;
                }
            }
            self.verified_full.lock().unwrap().insert(id);
        }
        // SAFETY: valid descriptor; null times means "now" (last access).
        unsafe { libc::futimens(file.as_raw_fd(), std::ptr::null()) };
        self.stats.hits.inc();
        Some(file)
    }

    /// Assembles `obj` now (blocking). Returns whether the full file exists afterwards.
    pub fn assemble(&self, obj: &ObjectMeta) -> io::Result<bool> {
        let (object, num) = self.assembled_hash(obj);
        let path = self.full_path(&object);
        if path.exists() {
            return Ok(true);
        }
        let n = obj.size.div_ceil(self.cfg.block_size);
        let locs: Vec<Location> = (0..n)
            .map(|i| self.locate(&BlockRef::new(&self.cfg.source, obj, self.cfg.block_size, i)))
            .collect();
        // Assembling needs room for a second copy until the blocks are removed: leave objects
        // larger than a quarter of the cache as blocks rather than evict half of it.
        if n == 0 || alloc_size(obj.size) > self.limit() / 4 || !locs.iter().all(|l| l.path.exists()) {
            return Ok(false);
        }
        // One assembler per object across processes.
        let _lock = self.locks.lock(num ^ 0xA55E_4B1E)?;
        if path.exists() {
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
        let shard = path.parent().expect("full path has a shard");
        let new_shard = !self.real_parents(&path);
        let size = alloc_size(obj.size) + alloc_size(idx_len) + if new_shard { DIR_BYTES } else { 0 };
        let Some(_reservation) = self.reserve(size) else {
            return Ok(false);
        };
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join("tmp").join(format!("{}.{seq}.full", std::process::id()));
        let tmp_idx = tmp.with_extension("idx");
        let result = (|| -> io::Result<bool> {
            if !self.real_parents(&tmp) {
                return Err(io::Error::other(
                    "the cache's tmp directory is missing or not a directory",
                ));
            }
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)?;
            for loc in &locs {
                let Some(data) = self.load_block(loc) else {
                    return Ok(false);
                };
                index.crcs.push(crc32c::crc32c(&data));
                out.write_all(&data)?;
            }
            drop(out);
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp_idx)?;
            f.write_all(&index.encode())?;
            drop(f);
            match fs::DirBuilder::new().mode(0o700).create(shard) {
                Ok(()) if !new_shard => self.usage.add(DIR_BYTES),
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && new_shard => self.usage.sub(DIR_BYTES),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            if !self.real_parents(&path) {
                return Err(io::Error::other("an assembled-object directory is not a directory"));
            }
            // The index first: a data file is only ever seen with its index in place.
            fs::rename(&tmp_idx, path.with_extension("idx"))?;
            fs::rename(&tmp, &path)?;
            Ok(true)
        })();
        match result {
            Ok(true) => {
                // The block files are now redundant.
                for loc in &locs {
                    if let Ok(m) = fs::symlink_metadata(&loc.path)
                        && fs::remove_file(&loc.path).is_ok()
                    {
                        self.usage.sub(m.blocks() * 512);
                    }
                }
                debug!(key = %obj.key, bytes = obj.size, "assembled in the disk cache");
                Ok(true)
            }
            other => {
                let _ = fs::remove_file(&tmp);
                let _ = fs::remove_file(&tmp_idx);
                self.usage.sub(size);
                debug!(key = %obj.key, "assembly abandoned");
                other
            }
        }
    }

    /// Adds the assembled objects to an eviction scan: returns their bytes on disk; pushes
    /// (last access, bytes, data file, index) candidates and shard directories.
    pub(super) fn scan_full(
        &self,
        candidates: &mut Vec<(SystemTime, u64, PathBuf, Option<PathBuf>)>,
        shard_dirs: &mut Vec<(PathBuf, u64)>,
        now: SystemTime,
    ) -> u64 {
        self.scan_shards(&self.root.join("full"), shard_dirs, |f, m| {
            let name = f.file_name().to_string_lossy().into_owned();
            let (hex, is_idx) = match name.strip_suffix(".idx") {
                Some(h) => (h.to_string(), true),
                None => (name.clone(), false),
            };
            if !m.is_file() || hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                self.reject(&f.path(), Some(m), "foreign file in the cache");
                return 0;
            }
            if is_idx {
                let age = now.duration_since(m.modified().unwrap_or(now)).unwrap_or_default();
                if !f.path().with_extension("").exists() && age > STALE_TMP {
                    let _ = fs::remove_file(f.path()); // left by an assembler that died
                    return 0;
                }
                return m.blocks() * 512;
            }
            let idx = f.path().with_extension("idx");
            let idx_size = fs::symlink_metadata(&idx).map(|m| m.blocks() * 512).unwrap_or(0);
            candidates.push((
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                m.blocks() * 512 + idx_size,
                f.path(),
                Some(idx),
            ));
            m.blocks() * 512
        })
    }
}

/// What tells a file from a later one that is given its inode number once it is deleted (an
/// object assembled again after eviction, or another object): device, inode, and the inode's
/// generation (`FS_IOC_GETVERSION`: ext4, xfs, btrfs), else its birth time.
fn file_identity(file: &File, meta: &fs::Metadata) -> (u64, u64, u64) {
    let mut generation: libc::c_long = 0;
    // SAFETY: a valid descriptor, and room for the long the ioctl writes.
    let tag = if unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETVERSION, &mut generation) } == 0 {
        generation as u64
    } else {
        meta.created()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64)
    };
    (meta.dev(), meta.ino(), tag)
}

impl AssembledFiles for DiskCache {
    fn open_assembled(&self, obj: &ObjectMeta) -> Option<File> {
        DiskCache::open_assembled(self, obj)
    }

    fn assemble_if_complete(&self, obj: &ObjectMeta) {
        if obj.size == 0 {
            return;
        }
        if let Err(e) = self.assemble(obj) {
            self.warn(format_args!("cannot assemble {} in the disk cache: {e}", obj.key));
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
