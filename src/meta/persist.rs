//! Persisted metadata: the listings and lookup answers the namespace learned from S3, kept in
//! the cache directory so that a restarted daemon (or another daemon on the same directory)
//! can answer without S3. Owns `<cache>/v1/meta/` and nothing else of the cache directory.
//! Every file operation goes through `cachedir::CacheDir`, so nothing in it is followed.
//!
//! Layout:
//! - `generation`: the current generation (`format::encode_generation`). Every record carries
//!   the generation it was written under and lives in that generation's directory; replacing
//!   this one small file (`new_generation`, on SIGHUP refresh) invalidates every record of
//!   every process at once. Old generation directories are then deleted in the background.
//! - `g<generation>/l/<shard>/<hash>`: the listing of one directory prefix.
//! - `g<generation>/k/<shard>/<hash>`: the lookup answer of one full key (file, directory or
//!   "no such key"), for names resolved without a listing.
//! - `tmp/`: files being written.
//!
//! `<hash>` is 128 bits of SHA-256 over the store (endpoint and bucket) and the key, so mounts
//! of different buckets, endpoints or prefixes share one directory safely: records are keyed by
//! full key, and each record names its store and key, which the reader checks.
//! `<shard>` is the first three hex digits of the hash: 4,096 shards keep directories small
//! (about 250 entries each with a million records).
//!
//! Invariants:
//! - Nothing is read at open: a record is read only when the in-memory cache misses, so mount
//!   time does not depend on how much is persisted.
//! - Every write goes to `tmp/` and is renamed into place: a reader sees a whole old record,
//!   a whole new one, or none. A killed writer leaves at most a temp file, removed by age.
//! - Every read verifies the whole record (`format`); a record that does not validate is
//!   logged (rate-limited), deleted and treated as missing, so it is fetched again from S3.
//! - Failures never fail an operation: the namespace falls back to S3.
//!
//! Expiry is the caller's business: records keep their wall-clock fetch time and are kept
//! until replaced, invalidated or garbage-collected with their generation.

use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use super::format::{self, FormatError, RecordId};
use super::{Entries, Entry, Lookup};
use crate::cachedir::{Area, CacheDir, DIR_BYTES, STALE_TMP, hex_shard};
use crate::object::{DiskSpace, alloc_size};
use crate::warnings::Warnings;

/// Largest record read (a listing of ~10 million names); anything bigger is not ours.
const MAX_RECORD: u64 = 1 << 30;

const GENERATION: &str = "generation";
const TMP: &str = "tmp";
const LISTINGS: &str = "l";
const LOOKUPS: &str = "k";

/// The persisted metadata of one store in one cache directory.
pub struct MetaStore {
    /// `<cache>/v1/meta`.
    root: PathBuf,
    dir: CacheDir,
    store_id: String,
    /// The cache directory's shared space bound, when there is one.
    space: Option<Arc<dyn DiskSpace>>,
    warnings: Warnings,
}

/// A fresh, unpredictable generation: the process's random hash keys over the time, the pid
/// and a counter.
fn random_generation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

fn generation_dir_name(generation: u64) -> String {
    format!("g{generation:016x}")
}

fn parse_generation_dir(name: &std::ffi::OsStr) -> Option<u64> {
    let n = name.to_str()?.strip_prefix('g')?;
    if n.len() != 16 {
        return None;
    }
    u64::from_str_radix(n, 16).ok()
}

impl MetaStore {
    /// Opens (creating) `<cache_dir>/v1/meta`. Cheap: nothing is read or scanned. The cache
    /// directory's owner is checked (`CacheDir::open`).
    pub fn open(cache_dir: &Path, store_id: &str) -> io::Result<MetaStore> {
        let dir = CacheDir::open(cache_dir)?;
        let root = dir.area(Area::Meta);
        dir.create_dir(&root)?;
        dir.create_dir(&root.join(TMP))?;
        Ok(MetaStore {
            root,
            dir,
            store_id: store_id.to_string(),
            space: None,
            warnings: Warnings::default(),
        })
    }

    /// Counts records against the cache directory's space bound.
    pub fn with_space(mut self, space: Arc<dyn DiskSpace>) -> MetaStore {
        self.space = Some(space);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    /// Runs `collect_garbage` once on a background thread.
    pub fn start_background(self: &Arc<Self>) {
        let this = self.clone();
        std::thread::Builder::new()
            .name("s3cachefs-meta-gc".into())
            .spawn(move || this.collect_garbage())
            .ok();
    }

    /// The current generation, creating the generation file if there is none. A generation
    /// file that does not validate is replaced (which invalidates every record: safe).
    pub fn generation(&self) -> io::Result<u64> {
        let path = self.root.join(GENERATION);
        for _ in 0..3 {
            match self.read_file(&path, format::GEN_LEN as u64 + 1) {
                Ok(bytes) => match format::decode_generation(&bytes) {
                    Ok(g) => return Ok(g),
                    Err(e) => {
                        self.warn(format_args!(
                            "invalid metadata generation file {} ({e}); invalidating persisted metadata",
                            path.display()
                        ));
                        return self.new_generation();
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // First use: create it without replacing one another process just made.
                    let g = random_generation();
                    // Without hard links on this filesystem, this renames: that can replace the
                    // generation another process just created, which only invalidates its few
                    // records.
                    let linked = self.write_tmp(&format::encode_generation(g))?.place_new(&path);
                    match linked {
                        Ok(()) => return Ok(g),
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(e),
                    }
                }
                // A symlink, a directory, an oversized file...: replace it like a corrupt one.
                Err(e) => {
                    self.warn(format_args!(
                        "unusable metadata generation file {} ({e}); invalidating persisted metadata",
                        path.display()
                    ));
                    return self.new_generation();
                }
            }
        }
        Err(io::Error::other("the metadata generation file keeps changing"))
    }

    /// The current generation, or `None` (logged, rate-limited) if it cannot be read: then
    /// nothing is read or written for the operation at hand.
    pub fn current_generation(&self) -> Option<u64> {
        match self.generation() {
            Ok(g) => Some(g),
            Err(e) => {
                self.warn(format_args!("cannot read the persisted metadata generation: {e}"));
                None
            }
        }
    }

    /// Invalidates every record of every process: a new generation, or if that cannot be
    /// written, no generation file at all (the next reader creates a new one). False if
    /// neither worked, so the old records may still be read by others.
    pub fn invalidate_all(&self) -> bool {
        match self.new_generation() {
            Ok(_) => true,
            Err(e) => {
                let path = self.root.join(GENERATION);
                let removed = self.dir.remove_file(&path).or_else(|e| match e.kind() {
                    io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                });
                warn!(
                    "cannot write a new metadata generation ({e}); {}",
                    match &removed {
                        Ok(()) => "removed the generation file instead".to_string(),
                        Err(e2) => format!(
                            "cannot remove {} either ({e2}); not using persisted metadata",
                            path.display()
                        ),
                    }
                );
                removed.is_ok()
            }
        }
    }

    /// Starts a new generation: every record persisted so far, by any process, is no longer
    /// used. Returns the new generation; old ones are deleted by `collect_garbage`.
    pub fn new_generation(&self) -> io::Result<u64> {
        let g = random_generation();
        self.write_tmp(&format::encode_generation(g))?
            .place(&self.root.join(GENERATION), None)?;
        Ok(g)
    }

    /// Deletes the directories of old generations and temp files of dead writers.
    pub fn collect_garbage(&self) {
        let t = Instant::now();
        let mut removed = 0u64;
        let now = SystemTime::now();
        for e in self.dir.read_dir(&self.root.join(TMP)).unwrap_or_default() {
            let m = e.metadata();
            let age = now.duration_since(m.modified().unwrap_or(now)).unwrap_or_default();
            if (age > STALE_TMP || !m.is_file()) && self.dir.remove_file(&e.path()).is_ok() {
                removed += 1;
            }
        }
        let Ok(entries) = self.dir.read_dir(&self.root) else {
            return;
        };
        for e in entries {
            let Some(g) = parse_generation_dir(&e.file_name()) else {
                continue;
            };
            // Read it again for every directory: another process may have started a new one.
            if self.generation().is_ok_and(|current| current != g) && self.dir.remove_tree(&e.path()).is_ok() {
                removed += 1;
            }
        }
        debug!(removed, elapsed = ?t.elapsed(), "persisted metadata garbage collected");
    }

    fn id<'a>(&'a self, generation: u64, key: &'a str) -> RecordId<'a> {
        RecordId {
            store: &self.store_id,
            generation,
            key,
        }
    }

    fn path(&self, generation: u64, kind: &str, key: &str) -> PathBuf {
        let mut h = Sha256::new();
        for part in [self.store_id.as_bytes(), key.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        let hex: String = h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.root
            .join(generation_dir_name(generation))
            .join(kind)
            .join(hex_shard(&hex))
            .join(&hex)
    }

    /// Where the listing of `dir` is stored under `generation` (for tests and tools).
    pub fn listing_path(&self, generation: u64, dir: &str) -> PathBuf {
        self.path(generation, LISTINGS, dir)
    }

    /// Where the lookup answer of `key` is stored under `generation` (for tests and tools).
    pub fn lookup_path(&self, generation: u64, key: &str) -> PathBuf {
        self.path(generation, LOOKUPS, key)
    }

    /// The persisted listing of `dir`: when it was fetched and its sorted entries.
    pub fn load_listing(&self, generation: u64, dir: &str) -> Option<(SystemTime, Entries)> {
        let path = self.listing_path(generation, dir);
        let bytes = self.read_record(&path)?;
        self.accept(&path, format::decode_listing(&bytes, &self.id(generation, dir)))
    }

    pub fn save_listing(&self, generation: u64, dir: &str, fetched: SystemTime, entries: &[(Arc<str>, Entry)]) {
        let path = self.listing_path(generation, dir);
        match format::encode_listing(&self.id(generation, dir), fetched, entries) {
            Ok(bytes) => self.write_record(&path, &bytes),
            Err(e) => debug!(dir, "not persisting listing: {e}"),
        }
    }

    /// The persisted lookup answer of `key`: when it was fetched and what it is.
    pub fn load_lookup(&self, generation: u64, key: &str) -> Option<(SystemTime, Lookup)> {
        let path = self.lookup_path(generation, key);
        let bytes = self.read_record(&path)?;
        self.accept(&path, format::decode_lookup(&bytes, &self.id(generation, key)))
    }

    pub fn save_lookup(&self, generation: u64, key: &str, fetched: SystemTime, entry: &Lookup) {
        let path = self.lookup_path(generation, key);
        match format::encode_lookup(&self.id(generation, key), fetched, entry) {
            Ok(bytes) => self.write_record(&path, &bytes),
            Err(e) => debug!(key, "not persisting lookup: {e}"),
        }
    }

    /// Deletes what is persisted about `key` and the listing of its directory `dir`.
    pub fn forget(&self, dir: &str, key: &str) {
        let Some(generation) = self.current_generation() else {
            return;
        };
        for path in [self.listing_path(generation, dir), self.lookup_path(generation, key)] {
            let size = self.dir.metadata(&path).map(|m| m.blocks() * 512).unwrap_or(0);
            match self.dir.remove_file(&path) {
                Ok(()) => self.released(size),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => self.warn(format_args!("cannot delete persisted metadata {}: {e}", path.display())),
            }
        }
    }

    fn accept<T>(&self, path: &Path, decoded: Result<(SystemTime, T), FormatError>) -> Option<(SystemTime, T)> {
        match decoded {
            Ok(v) => Some(v),
            // Written by another version sharing the directory: not ours to judge or delete; a
            // fresh answer will replace it.
            Err(FormatError::Version(v)) => {
                debug!(path = %path.display(), version = v, "persisted metadata of another format version");
                None
            }
            Err(e) => {
                self.reject(path, &e.to_string());
                None
            }
        }
    }

    /// Reads a whole record file; `None` when absent or untrustworthy (then it is deleted).
    fn read_record(&self, path: &Path) -> Option<Vec<u8>> {
        match self.read_file(path, MAX_RECORD) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                self.reject(path, &format!("cannot read: {e}"));
                None
            }
        }
    }

    fn reject(&self, path: &Path, why: &str) {
        self.warn(format_args!(
            "discarding invalid persisted metadata {} ({why}); fetching it from S3",
            path.display()
        ));
        let size = self.dir.metadata(path).map(|m| m.blocks() * 512).unwrap_or(0);
        if self.dir.remove_file(path).is_ok() {
            self.released(size);
        } else {
            let _ = self.dir.remove_tree(path); // over-counted until the cache's next scan
        }
    }

    fn released(&self, bytes: u64) {
        if let Some(space) = &self.space {
            space.release(bytes);
        }
    }

    /// A temp file in `tmp/` holding `bytes`, to be placed. The metadata directory is created
    /// again if someone deleted it.
    fn write_tmp(&self, bytes: &[u8]) -> io::Result<crate::cachedir::TempFile<'_>> {
        let mut tmp = self.dir.temp(&self.root.join(TMP), "tmp", Some(self.dir.path()))?;
        tmp.file().write_all(bytes)?;
        Ok(tmp)
    }

    /// Writes a record atomically (best effort: failures are logged, never returned).
    fn write_record(&self, path: &Path, bytes: &[u8]) {
        // Reserve the record and any directory it needs within the cache's bound.
        let parent = path.parent().expect("record path has a parent");
        let size = alloc_size(bytes.len() as u64) + self.dir.missing_dirs(parent) * DIR_BYTES;
        let _reservation = match &self.space {
            Some(space) => match space.reserve(size) {
                Some(guard) => Some(guard),
                None => return, // the cache is full: keep this answer in memory only
            },
            None => None,
        };
        // Missing directories (generation, kind, shard) are created, never through a symlink.
        let result = self
            .write_tmp(bytes)
            .and_then(|tmp| tmp.place(path, Some(self.dir.path())));
        if let Some(space) = &self.space {
            match &result {
                Ok(placed) => {
                    if let Some(old) = placed.replaced {
                        space.release(old);
                    }
                }
                Err(_) => space.release(size),
            }
        }
        if let Err(e) = result {
            self.warn(format_args!(
                "cannot persist metadata to {} ({e}); continuing without",
                path.display()
            ));
        }
    }

    fn warn(&self, msg: std::fmt::Arguments) {
        crate::warnings::warn_limited!(self.warnings, "{msg}");
    }

    /// Reads a regular file owned by this user, refusing symlinks and files over `limit` bytes.
    fn read_file(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
        let mut file = self.dir.open_read(path, true)?;
        let meta = file.metadata()?;
        if !crate::cachedir::is_own_file(&meta) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a regular file owned by this user",
            ));
        }
        if meta.len() > limit {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "file too large"));
        }
        let mut buf = Vec::with_capacity(meta.len() as usize);
        (&mut file).take(limit).read_to_end(&mut buf)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::ObjectMeta;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    fn file(key: &str, size: u64) -> Entry {
        Entry::File(ObjectMeta {
            key: key.into(),
            size,
            etag: "\"e\"".into(),
            last_modified: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        })
    }

    fn listing() -> Vec<(Arc<str>, Entry)> {
        vec![("a".into(), file("d/a", 1)), ("b".into(), Entry::Dir)]
    }

    fn open(d: &tempfile::TempDir) -> MetaStore {
        MetaStore::open(d.path(), "http://127.0.0.1:1|bucket").unwrap()
    }

    #[test]
    fn records_round_trip_and_are_private() {
        let d = tempfile::tempdir().unwrap();
        let m = open(&d);
        let g = m.generation().unwrap();
        assert_eq!(m.generation().unwrap(), g, "stable");
        let t = SystemTime::now();
        assert_eq!(m.load_listing(g, "d/"), None);
        m.save_listing(g, "d/", t, &listing());
        m.save_lookup(g, "d/x", t, &None);
        m.save_lookup(g, "d/a", t, &Some(file("d/a", 1)));
        assert_eq!(m.load_listing(g, "d/"), Some((t, listing())));
        assert_eq!(m.load_lookup(g, "d/x"), Some((t, None)));
        assert_eq!(m.load_lookup(g, "d/a"), Some((t, Some(file("d/a", 1)))));
        let p = m.listing_path(g, "d/");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(p.starts_with(crate::cachedir::area_path(d.path(), Area::Meta).join(generation_dir_name(g))));
        // Another store in the same directory never sees these.
        let other = MetaStore::open(d.path(), "http://127.0.0.1:1|other").unwrap();
        assert_eq!(other.generation().unwrap(), g, "one generation per cache directory");
        assert_eq!(other.load_listing(g, "d/"), None);
        assert!(
            fs::read_dir(m.root().join(TMP)).unwrap().next().is_none(),
            "no temp files left"
        );
    }

    #[test]
    fn a_new_generation_hides_everything_and_old_ones_are_collected() {
        let d = tempfile::tempdir().unwrap();
        let a = open(&d);
        let b = open(&d);
        let g = a.generation().unwrap();
        a.save_listing(g, "d/", SystemTime::now(), &listing());
        assert!(b.invalidate_all());
        let g2 = a.generation().unwrap();
        assert_ne!(g, g2);
        assert_eq!(a.load_listing(g2, "d/"), None);
        assert!(a.root().join(generation_dir_name(g)).exists());
        a.collect_garbage();
        assert!(!a.root().join(generation_dir_name(g)).exists());
        // A missing generation file is the same as a new generation.
        fs::remove_file(a.root().join(GENERATION)).unwrap();
        assert_ne!(a.generation().unwrap(), g2);
    }

    #[test]
    fn forget_deletes_the_key_and_its_directory_listing() {
        let d = tempfile::tempdir().unwrap();
        let m = open(&d);
        let g = m.generation().unwrap();
        let t = SystemTime::now();
        m.save_listing(g, "d/", t, &listing());
        m.save_lookup(g, "d/a", t, &Some(file("d/a", 1)));
        m.save_lookup(g, "d/b", t, &None);
        m.forget("d/", "d/a");
        assert_eq!(m.load_listing(g, "d/"), None);
        assert_eq!(m.load_lookup(g, "d/a"), None);
        assert_eq!(m.load_lookup(g, "d/b"), Some((t, None)), "other keys stay");
    }

    #[test]
    fn invalid_records_are_discarded() {
        let d = tempfile::tempdir().unwrap();
        let m = open(&d);
        let g = m.generation().unwrap();
        let t = SystemTime::now();
        let p = m.listing_path(g, "d/");
        type Corruption = (&'static str, Box<dyn Fn(&Path)>);
        let mut corruptions: Vec<Corruption> = vec![
            (
                "truncated",
                Box::new(|p| {
                    let b = fs::read(p).unwrap();
                    fs::write(p, &b[..b.len() / 2]).unwrap()
                }),
            ),
            (
                "flipped",
                Box::new(|p| {
                    let mut b = fs::read(p).unwrap();
                    b[40] ^= 0x10;
                    fs::write(p, b).unwrap()
                }),
            ),
            ("foreign", Box::new(|p| fs::write(p, b"S3CFSBLK not metadata").unwrap())),
            ("empty", Box::new(|p| fs::write(p, b"").unwrap())),
            (
                "symlink",
                Box::new(|p| {
                    fs::remove_file(p).unwrap();
                    std::os::unix::fs::symlink("/etc/passwd", p).unwrap()
                }),
            ),
            (
                "directory",
                Box::new(|p| {
                    fs::remove_file(p).unwrap();
                    fs::create_dir(p).unwrap()
                }),
            ),
        ];
        // Another key's valid record moved to this path.
        corruptions.push((
            "misplaced",
            Box::new(|p| {
                let m = open_at(p);
                let g = m.generation().unwrap();
                m.save_listing(g, "e/", SystemTime::now(), &[]);
                fs::rename(m.listing_path(g, "e/"), p).unwrap()
            }),
        ));
        for (what, corrupt) in corruptions {
            m.save_listing(g, "d/", t, &listing());
            corrupt(&p);
            assert_eq!(m.load_listing(g, "d/"), None, "{what}");
            assert!(fs::symlink_metadata(&p).is_err(), "{what}: removed");
            m.save_listing(g, "d/", t, &listing());
            assert_eq!(m.load_listing(g, "d/"), Some((t, listing())), "{what}: rewritten");
        }
    }

    /// The store whose record lives at `p` (`<cache>/v1/meta/g…/l/<shard>/<hash>`).
    fn open_at(p: &Path) -> MetaStore {
        MetaStore::open(p.ancestors().nth(6).unwrap(), "http://127.0.0.1:1|bucket").unwrap()
    }

    #[test]
    fn a_deleted_metadata_directory_is_recreated() {
        let d = tempfile::tempdir().unwrap();
        let m = open(&d);
        let g = m.generation().unwrap();
        m.save_lookup(g, "k", SystemTime::now(), &None);
        fs::remove_dir_all(m.root()).unwrap();
        let g2 = m.generation().unwrap();
        assert_eq!(m.load_lookup(g2, "k"), None);
        let t = SystemTime::now();
        m.save_lookup(g2, "k", t, &None);
        assert_eq!(m.load_lookup(g2, "k"), Some((t, None)));
    }

    #[test]
    fn a_corrupt_generation_file_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let m = open(&d);
        let g = m.generation().unwrap();
        m.save_lookup(g, "k", SystemTime::now(), &None);
        fs::write(m.root().join(GENERATION), b"garbage").unwrap();
        let g2 = m.generation().unwrap();
        assert_ne!(g, g2);
        assert_eq!(m.generation().unwrap(), g2);
        assert_eq!(m.load_lookup(g2, "k"), None);
    }

    #[test]
    fn stale_temp_files_are_removed_fresh_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        let m = open(&d);
        let old = m.root().join(TMP).join("123.0.tmp");
        let new = m.root().join(TMP).join("123.1.tmp");
        fs::write(&old, b"partial").unwrap();
        fs::write(&new, b"partial").unwrap();
        let f = fs::File::options().write(true).open(&old).unwrap();
        f.set_modified(SystemTime::now() - STALE_TMP - Duration::from_secs(1))
            .unwrap();
        m.collect_garbage();
        assert!(!old.exists());
        assert!(new.exists(), "may belong to a live writer");
    }

    /// A symlink in place of a directory of the metadata tree (a generation directory, a kind
    /// directory, a shard, the temp directory) is never followed: nothing is written outside
    /// the cache directory, and the record is simply not persisted.
    #[test]
    fn symlinked_metadata_directories_are_never_followed() {
        for depth in 0..4 {
            let d = tempfile::tempdir().unwrap();
            let outside = tempfile::tempdir().unwrap();
            let cache = d.path().join("c");
            let m = MetaStore::open(&cache, "http://127.0.0.1:1|bucket").unwrap();
            let g = m.generation().unwrap();
            let p = m.listing_path(g, "d/");
            // <root>/g…/l/<shard>/<hash>: plant the link at g…, l, <shard>, or tmp.
            let link = match depth {
                3 => m.root().join(TMP),
                n => p.ancestors().nth(3 - n).unwrap().to_path_buf(),
            };
            let _ = fs::remove_dir_all(&link);
            fs::create_dir_all(link.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(outside.path(), &link).unwrap();
            m.save_listing(g, "d/", SystemTime::now(), &listing());
            m.save_lookup(g, "d/a", SystemTime::now(), &None);
            assert_eq!(m.load_listing(g, "d/"), None, "{}", link.display());
            m.forget("d/", "d/a");
            m.collect_garbage();
            assert_eq!(
                fs::read_dir(outside.path()).unwrap().count(),
                0,
                "written outside through {}",
                link.display()
            );
            assert!(fs::symlink_metadata(&link).is_ok_and(|m| m.is_symlink()));
        }
    }

    /// Writers racing on one record never produce a file a reader rejects.
    #[test]
    fn concurrent_writers_and_readers_never_see_a_torn_record() {
        let d = tempfile::tempdir().unwrap();
        let m = Arc::new(open(&d));
        let g = m.generation().unwrap();
        let big: Vec<(Arc<str>, Entry)> = (0..2000)
            .map(|i| (format!("f{i:05}").into(), file(&format!("d/f{i:05}"), i)))
            .collect();
        m.save_listing(g, "d/", SystemTime::now(), &big);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (m, big) = (m.clone(), &big);
                s.spawn(move || {
                    for _ in 0..50 {
                        m.save_listing(g, "d/", SystemTime::now(), big);
                    }
                });
            }
            for _ in 0..2 {
                let (m, big) = (m.clone(), &big);
                s.spawn(move || {
                    for _ in 0..200 {
                        let (_, l) = m.load_listing(g, "d/").expect("always a whole record");
                        assert_eq!(l.len(), big.len());
                    }
                });
            }
        });
    }
}
