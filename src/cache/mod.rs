//! The disk block cache: object data kept on local disk (NVMe) across daemon restarts and
//! shared by every s3cachefs process that names the same directory.
//!
//! - One file per block, `v1/blocks/<shard>/<object hash>.<index>`, holding a checksummed,
//!   self-describing header and the bytes (`format`). The object hash covers the store
//!   (endpoint and bucket), key, ETag and block size, so a changed object never matches old
//!   blocks. 4,096 shards keep every directory small (a few hundred entries per TiB cached).
//! - Writes go to `v1/tmp/` and are renamed into place: a crashed writer never leaves a file
//!   that validates. Every read verifies the header and both checksums; anything that does
//!   not validate is counted, removed and fetched again from S3.
//! - A cold block is fetched under a cross-process stripe lock (`shared::StripeLocks`), then
//!   the cache is checked again: N processes missing the same block issue one GET.
//! - Bytes on disk (files, directories, temp files) are counted in a shared counter
//!   (`shared::Usage`) and reserved before each write, so the bound holds across processes.
//!   When a write does not fit, the writer evicts least-recently-used blocks (access time is
//!   the file's mtime, refreshed on every hit) down to a low watermark, under an exclusive
//!   `evict.lock`. The scan that eviction needs also re-synchronizes the counter.
//! - A failing cache never fails a read: errors are counted, logged (rate-limited) and the
//!   bytes come from S3.

use crate::blockfmt as format;
mod full;
mod shared;

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tracing::{debug, info, warn};

pub use format::{FORMAT_VERSION, FormatError};
use shared::{StripeLocks, Usage};

use crate::metrics::{CacheMetrics, Metrics};
use crate::object::{BlockId, BlockRef, ObjectMeta, SourceId};

/// Settings of the disk cache.
#[derive(Clone, Debug)]
pub struct DiskCacheSettings {
    pub dir: PathBuf,
    /// Bound on bytes on disk; `None`: bounded by free space only.
    pub max_size: Option<u64>,
    /// Keep at least this share (0-100) of the cache's filesystem free.
    pub min_free_percent: f64,
    pub block_size: u64,
    /// The source (endpoint and bucket) of the objects whose assembled files this cache
    /// serves; blocks carry their own source in their [`BlockId`].
    pub source: SourceId,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cache directory {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("cache directory {path} is owned by uid {owner}, not by this user (uid {me}); refusing to use it")]
    WrongOwner { path: PathBuf, owner: u32, me: u32 },
}

/// Temp files older than this belong to a writer that died.
const STALE_TMP: Duration = Duration::from_secs(600);
/// Space a directory takes (one filesystem block).
const DIR_BYTES: u64 = 4096;
/// Number of shard directories.
const SHARDS: u64 = 4096;
/// At most one warning of each kind per this period.
const WARN_EVERY: Duration = Duration::from_secs(10);

pub struct DiskCache {
    root: PathBuf,
    cfg: DiskCacheSettings,
    locks: StripeLocks,
    usage: Usage,
    stats: CacheMetrics,
    tmp_seq: AtomicU64,
    last_warn: Mutex<Option<Instant>>,
    /// Full files (by device, inode and inode generation) whose every block this process has
    /// verified.
    verified_full: Mutex<std::collections::HashSet<(u64, u64, u64)>>,
}

/// Where one block lives and what it must say about itself.
struct Location {
    path: PathBuf,
    /// The object hash (see `object_hash`).
    object: String,
    stripe: u64,
    id: BlockId,
    len: u64,
}

use crate::object::alloc_size;

impl crate::object::DiskSpace for DiskCache {
    fn reserve(&self, bytes: u64) -> Option<Box<dyn std::any::Any + Send>> {
        DiskCache::reserve(self, bytes).map(|guard| Box::new(guard) as Box<dyn std::any::Any + Send>)
    }

    fn release(&self, bytes: u64) {
        self.usage.sub(bytes);
    }
}

/// Bytes on disk of everything under `path` (not following symlinks).
fn tree_size(path: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(path) else { return 0 };
    let mut total = m.blocks() * 512;
    if m.is_dir()
        && let Ok(entries) = fs::read_dir(path)
    {
        total += entries.flatten().map(|e| tree_size(&e.path())).sum::<u64>();
    }
    total
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl DiskCache {
    /// Opens (creating) the cache directory. Cheap: nothing is scanned here, so mount time does
    /// not depend on the size of the cache.
    pub fn open(cfg: DiskCacheSettings, metrics: &Metrics) -> Result<Arc<DiskCache>, CacheError> {
        let dir = &cfg.dir;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let meta = fs::metadata(dir).map_err(io_err(dir))?;
        if !meta.is_dir() {
            return Err(CacheError::NotADirectory(dir.clone()));
        }
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return Err(CacheError::WrongOwner {
                path: dir.clone(),
                owner: meta.uid(),
                me,
            });
        }
        if meta.mode() & 0o077 != 0 {
            info!(dir = %dir.display(), "restricting cache directory permissions to 0700");
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
        }
        let root = dir.join(format!("v{FORMAT_VERSION}"));
        for d in [root.clone(), root.join("blocks"), root.join("full"), root.join("tmp")] {
            match fs::DirBuilder::new().mode(0o700).create(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(&d)(e)),
            }
            let m = fs::symlink_metadata(&d).map_err(io_err(&d))?;
            if !m.is_dir() {
                return Err(CacheError::NotADirectory(d));
            }
        }
        let usage = Usage::open(&root.join("usage")).map_err(io_err(&root))?;
        if usage.fresh {
            // The fixed part: the directories and this counter's own file.
            let fixed: u64 = [
                dir.clone(),
                root.clone(),
                root.join("blocks"),
                root.join("full"),
                root.join("tmp"),
                root.join("usage"),
            ]
            .iter()
            .filter_map(|p| fs::symlink_metadata(p).ok())
            .map(|m| m.blocks() * 512)
            .sum();
            usage.add(fixed);
        }
        let locks = StripeLocks::new(root.join("locks")).map_err(io_err(&root))?;
        shared::open_private(&root.join("evict.lock")).map_err(io_err(&root))?;
        Ok(Arc::new(DiskCache {
            root,
            cfg,
            locks,
            usage,
            stats: metrics.cache.clone(),
            tmp_seq: AtomicU64::new(0),
            last_warn: Mutex::new(None),
            verified_full: Mutex::new(Default::default()),
        }))
    }

    /// Starts the background reconciliation: one process at a time scans the cache to make the
    /// shared byte counter exact, remove temp files of dead writers and foreign files, and
    /// evict if the cache is over its bound (e.g. after `--max-cache-size` was lowered).
    pub fn start_background(self: &Arc<Self>) {
        let cache = self.clone();
        std::thread::Builder::new()
            .name("s3cachefs-cache-scan".into())
            .spawn(move || match shared::try_exclusive(&cache.root.join("evict.lock")) {
                Ok(Some(_guard)) => {
                    let limit = cache.limit();
                    let t = Instant::now();
                    let (bytes, files) = cache.scan_and_evict(limit);
                    info!(bytes, files, elapsed = ?t.elapsed(), "disk cache scanned");
                }
                Ok(None) => debug!("another process is maintaining the disk cache"),
                Err(e) => cache.warn(format_args!("cannot lock the disk cache for maintenance: {e}")),
            })
            .ok();
    }

    pub fn stats(&self) -> &CacheMetrics {
        &self.stats
    }

    /// Bytes on disk according to the shared counter.
    pub fn usage(&self) -> u64 {
        self.usage.get()
    }

    pub fn block_size(&self) -> u64 {
        self.cfg.block_size
    }

    fn object_hash(source: &SourceId, key: &str, etag: &str, block_size: u64) -> (String, u64) {
        format::object_hash(source, key, etag, block_size)
    }

    /// The hash of an object of this cache's source (for assembled files).
    fn assembled_hash(&self, obj: &ObjectMeta) -> (String, u64) {
        Self::object_hash(&self.cfg.source, &obj.key, &obj.etag, self.cfg.block_size)
    }

    fn locate(&self, block: &BlockRef) -> Location {
        let id = &block.id;
        let (hex, num) = Self::object_hash(&id.source, &id.key, &id.etag, id.block_size);
        let index = id.index;
        let mix = num ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let shard = (mix >> 7) % SHARDS;
        Location {
            path: self
                .root
                .join("blocks")
                .join(format!("{shard:03x}"))
                .join(format!("{hex}.{index}")),
            object: hex,
            stripe: mix,
            id: id.clone(),
            len: block.len(),
        }
    }

    /// The block if it is on disk (verified), without fetching it.
    pub async fn peek(self: &Arc<Self>, block: &BlockRef) -> Option<Bytes> {
        let loc = Arc::new(self.locate(block));
        self.blocking(&loc, |c, l| c.read_block(l)).await.flatten()
    }

    /// Stores a block that came from elsewhere (best effort, like every write).
    pub async fn put(self: &Arc<Self>, block: &BlockRef, data: Bytes) {
        let loc = Arc::new(self.locate(block));
        self.blocking(&loc, move |c, l| c.write_block(l, &data)).await;
    }

    /// Returns the block from disk, or runs `fetch` (once across every process sharing the
    /// cache) and stores its result.
    pub async fn get_or_fetch<F, E>(self: &Arc<Self>, block: &BlockRef, fetch: F) -> Result<Bytes, E>
    where
        F: Future<Output = Result<Bytes, E>>,
    {
        let loc = Arc::new(self.locate(block));
        if let Some(b) = self.blocking(&loc, |c, l| c.read_block(l)).await.flatten() {
            return Ok(b);
        }
        let guard = {
            let cache = self.clone();
            let stripe = loc.stripe;
            match tokio::task::spawn_blocking(move || cache.locks.lock(stripe)).await {
                Ok(Ok(g)) => Some(g),
                Ok(Err(e)) => {
                    self.warn(format_args!("cannot take a disk cache lock: {e}"));
                    None
                }
                Err(_) => None,
            }
        };
        // Another process may have fetched it while we waited for the lock.
        if guard.is_some()
            && let Some(b) = self.blocking(&loc, |c, l| c.read_block(l)).await.flatten()
        {
            return Ok(b);
        }
        self.stats.misses.inc();
        let bytes = fetch.await?;
        let data = bytes.clone();
        self.blocking(&loc, move |c, l| c.write_block(l, &data)).await;
        drop(guard);
        Ok(bytes)
    }

    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        loc: &Arc<Location>,
        f: impl FnOnce(&DiskCache, &Location) -> T + Send + 'static,
    ) -> Option<T> {
        let (cache, loc) = (self.clone(), loc.clone());
        tokio::task::spawn_blocking(move || f(&cache, &loc)).await.ok()
    }

    /// Reads and verifies one block for a reader (counted as a hit); `None` when absent or
    /// invalid (an invalid file is removed).
    fn read_block(&self, loc: &Location) -> Option<Bytes> {
        let data = self.load_block(loc)?;
        self.stats.hits.inc();
        self.stats.hit_bytes.inc_by(data.len() as u64);
        Some(data)
    }

    /// Reads and verifies one block, without counting it as a hit.
    fn load_block(&self, loc: &Location) -> Option<Bytes> {
        let id = &loc.id;
        let expected = format::file_len(id, loc.len);
        if !self.real_parents(&loc.path) {
            // No shard directory: the block is absent, or in the object's assembled file.
            return self.read_from_full(loc);
        }
        let mut file = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&loc.path)
        {
            Ok(f) => f,
            // Blocks of an assembled object live in its full file.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return self.read_from_full(loc),
            Err(e) => {
                // ELOOP (a symlink planted in the cache), EACCES, ...: never trusted.
                self.reject(&loc.path, None, &format!("cannot open: {e}"));
                return None;
            }
        };
        let meta = file.metadata().ok()?;
        if !meta.is_file() || meta.uid() != unsafe { libc::geteuid() } {
            self.reject(&loc.path, Some(&meta), "not a regular file owned by this user");
            return None;
        }
        let mut buf = Vec::with_capacity(expected as usize);
        if let Err(e) = (&mut file).take(expected + 1).read_to_end(&mut buf) {
            self.warn(format_args!("cannot read cached block {}: {e}", loc.path.display()));
            return None;
        }
        match format::decode(Bytes::from(buf), id, loc.len) {
            Ok(data) => {
                // The file's mtime is its last access, for LRU eviction.
                // SAFETY: valid descriptor; a null times pointer means "now".
                unsafe { libc::futimens(file.as_raw_fd(), std::ptr::null()) };
                Some(data)
            }
            Err(e) => {
                self.reject(&loc.path, Some(&meta), &e.to_string());
                None
            }
        }
    }

    /// Counts, logs and removes a file that must not be trusted.
    fn reject(&self, path: &Path, meta: Option<&fs::Metadata>, why: &str) {
        self.stats.corrupt.inc();
        warn!(path = %path.display(), reason = why, "discarding invalid disk cache block; fetching it from S3");
        if fs::remove_file(path).is_ok()
            && let Some(m) = meta
        {
            self.usage.sub(m.blocks() * 512);
        }
    }

    /// Whether every directory between the cache root and `path` is a real directory. The cache
    /// never goes through a symlink planted in its tree (it could lead outside the cache): one
    /// found in place of a directory is removed with a warning. Absent directories are not real
    /// either (a writer creates them).
    fn real_parents(&self, path: &Path) -> bool {
        let Some(rel) = path.parent().and_then(|p| p.strip_prefix(&self.root).ok()) else {
            return false;
        };
        let mut dir = self.root.clone();
        for part in rel.components() {
            dir.push(part);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(m) => {
                    self.reject(&dir, Some(&m), "not a directory (a symlink?) in the cache tree");
                    return false;
                }
                Err(_) => return false,
            }
        }
        true
    }

    /// Stores one block (best effort: failures are counted and logged, never returned).
    fn write_block(&self, loc: &Location, data: &Bytes) {
        let header = match format::encode_header(&loc.id, data) {
            Ok(h) => h,
            Err(e) => {
                debug!(key = %loc.id.key, "not caching block: {e}");
                return;
            }
        };
        let shard = loc.path.parent().expect("block path has a shard");
        // A new shard directory takes space too: reserve it with the block. (A symlink in its
        // place is removed here: the shard is then created as a real directory.)
        let new_shard = !self.real_parents(&loc.path);
        let size = alloc_size((header.len() + data.len()) as u64) + if new_shard { DIR_BYTES } else { 0 };
        let Some(_reservation) = self.reserve(size) else {
            self.stats.skipped_full.inc();
            self.warn(format_args!(
                "disk cache is full (bound or free space); serving without caching"
            ));
            return;
        };
        let tmp = self.root.join("tmp").join(format!(
            "{}.{}.tmp",
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| -> io::Result<()> {
            if !self.real_parents(&tmp) {
                return Err(io::Error::other(
                    "the cache's tmp directory is missing or not a directory",
                ));
            }
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)?;
            f.write_all(&header)?;
            f.write_all(data)?;
            drop(f);
            match fs::DirBuilder::new().mode(0o700).create(shard) {
                Ok(()) if !new_shard => self.usage.add(DIR_BYTES), // removed since we looked
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && new_shard => self.usage.sub(DIR_BYTES),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            if !self.real_parents(&loc.path) {
                return Err(io::Error::other("a block directory is not a directory"));
            }
            let replaced = fs::symlink_metadata(&loc.path).ok().map(|m| m.blocks() * 512);
            fs::rename(&tmp, &loc.path)?;
            if let Some(old) = replaced {
                self.usage.sub(old);
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.stats.written_bytes.inc_by(data.len() as u64);
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                self.usage.sub(size);
                self.stats.write_failures.inc();
                self.warn(format_args!(
                    "cannot write to the disk cache ({e}); serving from S3 without caching"
                ));
            }
        }
    }

    /// The most bytes the cache may hold now: the smaller of
    /// `--max-cache-size` and what keeps `--cache-min-free` of the filesystem free.
    fn limit(&self) -> u64 {
        let used = self.usage.get();
        let mut limit = self.cfg.max_size.unwrap_or(u64::MAX);
        if let Some((avail, total)) = statvfs(&self.root) {
            let min_free = (total as f64 * self.cfg.min_free_percent / 100.0) as u64;
            limit = limit.min((used + avail).saturating_sub(min_free));
        }
        limit
    }

    /// Reserves `n` bytes, evicting if needed. Returns the shared `evict.lock` to hold until
    /// the block is in place (or the reservation released), `None` if the bound cannot be met.
    fn reserve(&self, n: u64) -> Option<fs::File> {
        let lock = self.root.join("evict.lock");
        for attempt in 0..2 {
            let guard = match shared::shared(&lock) {
                Ok(g) => g,
                Err(e) => {
                    self.warn(format_args!("cannot lock the disk cache: {e}"));
                    return None;
                }
            };
            let limit = self.limit();
            if self.usage.try_reserve(n, limit) {
                return Some(guard);
            }
            drop(guard);
            if attempt == 1 || n > limit {
                return None;
            }
            // Evict to a low watermark so that eviction is not needed again at once.
            let target = limit.saturating_sub(n).min(limit / 10 * 9);
            match shared::exclusive(&lock) {
                Ok(_guard) => {
                    if self.usage.get().saturating_add(n) > self.limit() {
                        self.scan_and_evict(target);
                    }
                }
                Err(e) => {
                    self.warn(format_args!("cannot lock the disk cache for eviction: {e}"));
                    return None;
                }
            }
        }
        None
    }

    /// Scans the cache (caller holds `evict.lock`), deletes least-recently-used blocks until
    /// at most `target` bytes remain, and corrects the shared counter. Returns (bytes, files).
    fn scan_and_evict(&self, target: u64) -> (u64, u64) {
        let mut total = 0u64;
        // Eviction candidates: (last access, bytes, file, companion file removed with it).
        let mut blocks: Vec<(SystemTime, u64, PathBuf, Option<PathBuf>)> = Vec::new();
        for p in [
            &self.cfg.dir,
            &self.root,
            &self.root.join("blocks"),
            &self.root.join("full"),
            &self.root.join("tmp"),
        ] {
            total += fs::symlink_metadata(p).map(|m| m.blocks() * 512).unwrap_or(0);
        }
        for f in ["usage", "locks", "evict.lock"] {
            total += fs::symlink_metadata(self.root.join(f))
                .map(|m| m.blocks() * 512)
                .unwrap_or(0);
        }
        let now = SystemTime::now();
        if let Ok(entries) = fs::read_dir(self.root.join("tmp")) {
            for e in entries.flatten() {
                let Ok(m) = e.metadata() else { continue };
                let age = now.duration_since(m.modified().unwrap_or(now)).unwrap_or_default();
                if age > STALE_TMP || !m.is_file() {
                    let _ = fs::remove_file(e.path());
                } else {
                    total += m.blocks() * 512;
                }
            }
        }
        let mut shard_dirs: Vec<(PathBuf, u64)> = Vec::new();
        total += self.scan_shards(&self.root.join("blocks"), &mut shard_dirs, |f, m| {
            if !m.is_file() || !is_block_name(&f.file_name()) {
                self.reject(&f.path(), Some(m), "foreign file in the cache");
                return 0;
            }
            let size = m.blocks() * 512;
            blocks.push((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), size, f.path(), None));
            size
        });
        total += self.scan_full(&mut blocks, &mut shard_dirs, now);
        // Persisted metadata (v1/meta) counts toward the bound but is not evicted here.
        total += tree_size(&self.root.join("meta"));
        let files = blocks.len() as u64;
        if total > target {
            blocks.sort_unstable_by_key(|b| b.0);
            for (_, size, path, companion) in blocks {
                if total <= target {
                    break;
                }
                if fs::remove_file(&path).is_ok() {
                    // An assembled object goes with its index.
                    if let Some(c) = companion {
                        let _ = fs::remove_file(c);
                    }
                    total -= size;
                    self.stats.evictions.inc();
                    self.stats.evicted_bytes.inc_by(size);
                }
            }
            // Empty shard directories go too (a writer recreates one when it needs it).
            for (dir, size) in shard_dirs {
                if fs::remove_dir(&dir).is_ok() {
                    total -= size;
                }
            }
        }
        // No reservation is outstanding while we hold evict.lock exclusively: this is exact.
        self.usage.set(total);
        (total, files)
    }

    fn warn(&self, msg: std::fmt::Arguments) {
        let mut last = self.last_warn.lock().unwrap();
        if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            warn!("{msg}");
        }
    }
}

impl DiskCache {
    /// Walks the shard directories under `dir`: removes foreign entries, records each shard
    /// (for removal when emptied), and hands every file to `file`, which returns the bytes it
    /// counts. Returns the bytes of the shards and of what `file` counted.
    fn scan_shards(
        &self,
        dir: &Path,
        shard_dirs: &mut Vec<(PathBuf, u64)>,
        mut file: impl FnMut(&fs::DirEntry, &fs::Metadata) -> u64,
    ) -> u64 {
        let mut total = 0;
        let Ok(shards) = fs::read_dir(dir) else { return 0 };
        for shard in shards.flatten() {
            let Ok(sm) = shard.metadata() else { continue };
            if !sm.is_dir() || !is_shard_name(&shard.file_name()) {
                self.reject(&shard.path(), Some(&sm), "foreign entry in the cache");
                let _ = fs::remove_dir_all(shard.path());
                continue;
            }
            total += sm.blocks() * 512;
            shard_dirs.push((shard.path(), sm.blocks() * 512));
            let Ok(files) = fs::read_dir(shard.path()) else {
                continue;
            };
            for f in files.flatten() {
                if let Ok(m) = f.metadata() {
                    total += file(&f, &m);
                }
            }
        }
        total
    }
}

fn is_shard_name(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|n| n.len() == 3 && n.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_block_name(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| {
        n.split_once('.').is_some_and(|(h, i)| {
            h.len() == 32
                && h.bytes().all(|b| b.is_ascii_hexdigit())
                && !i.is_empty()
                && i.bytes().all(|b| b.is_ascii_digit())
        })
    })
}

/// (available bytes, total bytes) of the filesystem holding `path`.
fn statvfs(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs into a zeroed struct with a valid path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((
        st.f_bavail as u64 * st.f_frsize as u64,
        st.f_blocks as u64 * st.f_frsize as u64,
    ))
}

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;
