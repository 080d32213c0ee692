//! The disk block cache: object data kept on local disk (NVMe) across daemon restarts and
//! shared by every s3cachefs process that names the same directory.
//!
//! - One file per object, `v1/full/<shard>/<object hash>`: each block is written at its offset
//!   as it is fetched, and recorded (present, crc32c) in the object's index after (`full`); once
//!   every block is in, the file is the whole object, for FUSE passthrough. Objects larger than a
//!   quarter of the bound keep one file per block, `v1/blocks/<shard>/<object hash>.<index>`,
//!   with a checksummed, self-describing header (`format`). The object hash covers the store
//!   (endpoint, bucket, partition), key, ETag and block size, so a changed object never matches
//!   old blocks. 4,096 shards keep every directory small.
//! - New files are written in `v1/tmp/` and renamed into place: a crashed writer never leaves a
//!   file that validates. Every read verifies what it reads (checksums, header fields);
//!   anything that does not validate is counted, removed and fetched again from S3.
//! - A cold block is fetched under a cross-process stripe lock (`coord::Locks`), then the
//!   cache is checked again: N processes missing the same block issue one GET. A waiter gives
//!   up at a deadline (`DiskCacheSettings::lock_wait`) and fetches the block itself.
//! - Bytes on disk (files, directories, temp files) are counted in a shared ledger
//!   (`coord::Ledger`) and reserved before each write, so the bound holds across processes.
//!   Eviction removes least-recently-used files (access time is the file's mtime, refreshed
//!   on every hit) in small sampled steps, and a paced background reconciliation keeps the
//!   ledger exact (`evict`). No lock a reader or writer takes is held across a scan.
//! - A failing cache never fails a read: errors are counted, logged (rate-limited) and the
//!   bytes come from S3.

mod coord;
mod evict;
use crate::blockfmt as format;
pub use coord::LockError;

/// What [`DiskCache::page`] found: the whole block holding the page, or the page alone.
pub enum FoundPage {
    Block(Bytes),
    Page(Bytes),
}

/// What [`DiskCache::open_own`] found.
enum Opened {
    File(std::fs::File),
    Absent,
    /// Not to be trusted; already counted and removed.
    Rejected,
}

/// What [`DiskCache::look_then_lock`] found before a fetch.
enum Before {
    /// The block, from disk.
    Found(Bytes),
    /// Not on disk, and its stripe lock is held through this descriptor.
    Locked(std::fs::File),
    /// Not on disk, and its stripe lock is someone else's: wait for it through this descriptor.
    Held(std::fs::File),
    /// Not on disk, and the lock cannot be taken at all (an error, logged): fetch without it.
    NoLock,
}

/// Sets a cache file's access and modification times to now: its last access, which eviction
/// orders by. Best effort: a file that cannot be touched is only evicted a little early.
/// A file touched less than [`TOUCH_INTERVAL`] ago is left as it is: a hit costs one `fstat`,
/// not a metadata write, and eviction's order is that much coarser.
pub(crate) fn touch(file: &std::fs::File) {
    if touch_due(file) {
        record_access(file);
    }
}

/// Sets `file`'s last access to now (its access and modification times).
pub(crate) fn record_access(file: &std::fs::File) {
    let now = std::time::SystemTime::now();
    let _ = file.set_times(std::fs::FileTimes::new().set_accessed(now).set_modified(now));
}

/// Whether `file`'s recorded last access is older than [`TOUCH_INTERVAL`] (what [`touch`] would
/// update).
pub(crate) fn touch_due(file: &std::fs::File) -> bool {
    !file.metadata().and_then(|m| m.modified()).is_ok_and(|t| {
        std::time::SystemTime::now()
            .duration_since(t)
            .is_ok_and(|age| age < TOUCH_INTERVAL)
    })
}

/// How stale a cache file's last access may be (see [`touch`]).
pub(crate) const TOUCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

#[cfg(test)]
use evict::is_block_name;
mod full;
mod pages;

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tracing::{debug, info, warn};

use coord::{Cell, Ledger, Locks};
pub use format::{FORMAT_VERSION, FormatError};

use crate::cachedir::{
    self, Area, CacheDir, DIR_BYTES, DirState, EVICT_LOCK, LOCKS, SHARDS, STALE_TMP, USAGE, is_shard_name, shard_name,
};
use crate::metrics::{CacheMetrics, Metrics};
use crate::object::{BlockId, BlockRef, ObjectMeta, SourceId};
use crate::warnings::Warnings;

/// Settings of the disk cache.
#[derive(Clone, Debug)]
pub struct DiskCacheSettings {
    pub dir: PathBuf,
    /// Bound on bytes on disk; `None`: bounded by free space only.
    pub max_size: Option<u64>,
    /// Keep at least this share (0-100) of the cache's filesystem free.
    pub min_free_percent: f64,
    pub block_size: u64,
    /// The source (endpoint and bucket) of the objects whose whole files this cache
    /// serves; blocks carry their own source in their [`BlockId`].
    pub source: SourceId,
    /// The longest wait for a lock another thread or process holds (a block being fetched, a
    /// shard directory, the ledger); past it the read goes on without it ([`LOCK_WAIT`]).
    pub lock_wait: Duration,
    /// Write blocks into their object's file (`full`), as the daemon does. `false`: every
    /// block in a block file, the path objects larger than a quarter of the bound take (tests
    /// of that path use it).
    pub object_files: bool,
}

/// The default for [`DiskCacheSettings::lock_wait`]: long enough for another process to fetch
/// a block in the usual case, short enough that a stuck one costs a reader little.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// The longest wait for the ledger's lock or a shard directory's lock (at most `lock_wait`):
/// their holders keep them for one update, or one shard directory's listing (milliseconds).
pub const SHORT_WAIT: Duration = Duration::from_millis(500);

/// The most object files remembered as verified per process (about 100 bytes each).
const VERIFIED_MAX: u64 = 65_536;

/// Why the disk cache cannot be opened: see `cachedir::OpenError`.
pub use crate::cachedir::OpenError as CacheError;

pub struct DiskCache {
    /// `<dir>/v1`.
    root: PathBuf,
    dir: CacheDir,
    cfg: DiskCacheSettings,
    locks: Locks,
    ledger: Ledger,
    /// This process's slot in the ledger (its lock held by the descriptor).
    slot: Option<(u64, fs::File)>,
    stats: CacheMetrics,
    warnings: Warnings,
    /// Assembled files whose every block this process has verified: (device, inode) to what
    /// tells that inode's file from a later one given the same number (see
    /// `full::file_identity`). Bounded; evicted files leave it.
    verified_full: moka::sync::Cache<full::FileKey, full::FileTag>,
    /// Object files not verified whole yet: which of their blocks this process wrote or read
    /// and checked (`full::checked_here`), by (device, inode) with the file's identity as for
    /// `verified_full`.
    checked_here: Mutex<std::collections::HashMap<full::FileKey, (full::FileTag, Vec<bool>)>>,
    /// This boot of the machine (`/proc/sys/kernel/random/boot_id`), which a verification
    /// stamp names: `None` (no stamps written or trusted) when it cannot be read.
    boot_id: Option<Box<str>>,
    wake: Arc<evict::Wake>,
    /// The shard directories eviction samples from, and when they were listed.
    shard_list: Mutex<Option<(Instant, evict::ShardList)>>,
    rng: Mutex<u64>,
    /// A reconciliation is due (the ledger was rebuilt).
    reconcile_needed: AtomicBool,
    /// Pages waiting for their merge, in KiB ([`PAGE_QUEUE_KIB`]), and merges running
    /// ([`PAGE_MERGES`]): their memory is outside the memory tier's budget, so both are bounded.
    page_queue: Arc<tokio::sync::Semaphore>,
    page_merges: Arc<tokio::sync::Semaphore>,
}

/// The most page bytes (KiB) waiting for their merge; past it, pages are not written to disk
/// (they stay in memory).
const PAGE_QUEUE_KIB: u32 = 8 << 10;
/// The most merges running at once; each reads one page file (at most about one block).
const PAGE_MERGES: usize = 2;

/// Where one block lives and what it must say about itself.
struct Location {
    path: PathBuf,
    /// The object hash (`blockfmt::object_hash`).
    object: String,
    stripe: u64,
    id: BlockId,
    len: u64,
    /// The whole object's size, when the reader knows it: a block is then written into the
    /// object's file (`full`).
    object_size: Option<u64>,
}

use crate::object::alloc_size;

impl crate::object::DiskSpace for DiskCache {
    fn reserve(&self, bytes: u64) -> Option<Box<dyn std::any::Any + Send>> {
        // Metadata keeps what it reserves until it releases it: counted as metadata at once.
        DiskCache::reserve(self, bytes)?.commit(Cell::Meta, bytes as i64);
        Some(Box::new(()))
    }

    fn release(&self, bytes: u64) {
        if let Err(e) = self
            .ledger
            .adjust(&self.locks, self.short_wait(), Cell::Meta, -(bytes as i64))
        {
            self.lock_failed("account for removed metadata", e);
        }
    }
}

/// Reads into `buf` at `at` until it is full or the file ends: the bytes read.
pub(super) fn read_full_at(file: &fs::File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match std::os::unix::fs::FileExt::read_at(file, &mut buf[got..], at + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
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
        // The version directory is named after the block format.
        const { assert!(FORMAT_VERSION == cachedir::LAYOUT_VERSION) };
        let dir = CacheDir::open(&cfg.dir)?;
        let root = dir.version_path();
        for area in [Area::Blocks, Area::Full, Area::Tmp] {
            dir.create_dir(&dir.area(area))?;
        }
        let ledger = Ledger::open(&dir, &root.join(USAGE)).map_err(io_err(&root))?;
        let locks = Locks::new(dir.clone(), root.join(LOCKS)).map_err(io_err(&root))?;
        dir.open_private(&root.join(EVICT_LOCK)).map_err(io_err(&root))?;
        let slot = locks.claim_slot().map_err(io_err(&root))?;
        // The slot's previous owner is gone: what it had reserved was never written. (This
        // also checks the ledger, rebuilding an invalid one: a reconciliation is then due.)
        let checked = match &slot {
            Some((s, _)) => ledger.repair_slot(&locks, cfg.lock_wait.min(SHORT_WAIT), *s),
            None => ledger.adjust(&locks, cfg.lock_wait.min(SHORT_WAIT), Cell::Fixed, 0),
        };
        if let Err(e) = checked {
            warn!("cannot check the disk cache ledger: {e}");
        }
        let rebuilt = ledger.take_rebuilt();
        if rebuilt {
            // A new ledger: count the fixed part now; reconciliation counts the rest.
            let fixed: u64 = [
                dir.path().to_path_buf(),
                root.clone(),
                dir.area(Area::Blocks),
                dir.area(Area::Full),
                dir.area(Area::Tmp),
                root.join(USAGE),
                root.join(LOCKS),
                root.join(EVICT_LOCK),
            ]
            .iter()
            .filter_map(|p| dir.metadata(p).ok())
            .map(|m| m.blocks() * 512)
            .sum();
            if let Err(e) = ledger.set(&locks, cfg.lock_wait.min(SHORT_WAIT), Cell::Fixed, fixed) {
                warn!("cannot set up the disk cache ledger: {e}");
            }
        }
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ ((std::process::id() as u64) << 32)
            | 1;
        Ok(Arc::new(DiskCache {
            root,
            dir,
            locks,
            ledger,
            slot,
            stats: metrics.cache.clone(),
            warnings: Warnings::default(),
            verified_full: moka::sync::Cache::new(VERIFIED_MAX),
            checked_here: Mutex::new(Default::default()),
            boot_id: fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|b| b.trim().to_owned())
                .filter(|b| !b.is_empty())
                .map(String::into_boxed_str),
            wake: Default::default(),
            shard_list: Mutex::new(None),
            rng: Mutex::new(seed),
            reconcile_needed: AtomicBool::new(rebuilt),
            page_queue: Arc::new(tokio::sync::Semaphore::new(PAGE_QUEUE_KIB as usize)),
            page_merges: Arc::new(tokio::sync::Semaphore::new(PAGE_MERGES)),
            cfg,
        }))
    }

    pub fn stats(&self) -> &CacheMetrics {
        &self.stats
    }

    /// The deadline of a wait for the ledger's or a shard directory's lock.
    fn short_wait(&self) -> Duration {
        self.cfg.lock_wait.min(SHORT_WAIT)
    }

    /// Bytes on disk according to the shared ledger.
    pub fn usage(&self) -> u64 {
        self.ledger.total()
    }

    pub fn block_size(&self) -> u64 {
        self.cfg.block_size
    }

    /// The hash of an object of this cache's source (for its object file).
    fn assembled_hash(&self, obj: &ObjectMeta) -> (String, u64) {
        format::object_hash(&self.cfg.source, &obj.key, &obj.etag, self.cfg.block_size)
    }

    fn locate(&self, block: &BlockRef) -> Location {
        Location {
            object_size: Some(block.object_size),
            ..self.locate_id(&block.id, block.len())
        }
    }

    fn locate_id(&self, id: &BlockId, len: u64) -> Location {
        let (hex, num) = format::object_hash(&id.source, &id.key, &id.etag, id.block_size);
        let index = id.index;
        let mix = num ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let shard = (mix >> 7) % SHARDS;
        Location {
            path: self
                .dir
                .area(Area::Blocks)
                .join(shard_name(shard))
                .join(format!("{hex}.{index}")),
            object: hex,
            stripe: mix,
            id: id.clone(),
            len,
            object_size: None,
        }
    }

    /// Page `index` (`len` bytes) of block `id` (`block_len` bytes), if the disk holds it:
    /// the whole block when it is cached whole (its object file or block file, verified), else
    /// the page from the block's page file.
    pub async fn page(self: &Arc<Self>, id: &BlockId, block_len: u64, index: u64, len: u64) -> Option<FoundPage> {
        let loc = Arc::new(self.locate_id(id, block_len));
        self.blocking(&loc, move |c, l| {
            if let Some(b) = c.read_block(l) {
                return Some(FoundPage::Block(b));
            }
            c.read_page(l, index, len).map(FoundPage::Page)
        })
        .await
        .flatten()
    }

    /// Keeps pages of block `id` (`block_len` bytes), each `(index, bytes)`, in its page file,
    /// in the background: the caller does not wait for the write. Best effort: while
    /// [`PAGE_QUEUE_KIB`] of pages wait for their merge, more are not written (they stay in
    /// memory).
    pub fn keep_pages(self: &Arc<Self>, id: &BlockId, block_len: u64, pages: Vec<(u64, Bytes)>) {
        let kib = pages.iter().map(|(_, b)| b.len()).sum::<usize>().div_ceil(1024);
        let kib = kib.clamp(1, PAGE_QUEUE_KIB as usize) as u32;
        let Ok(queued) = self.page_queue.clone().try_acquire_many_owned(kib) else {
            debug!(key = %id.key, index = id.index, "page merges behind; pages kept in memory only");
            return;
        };
        let loc = self.locate_id(id, block_len);
        let cache = self.clone();
        tokio::spawn(async move {
            let Ok(_running) = cache.page_merges.clone().acquire_owned().await else {
                return;
            };
            let _ = tokio::task::spawn_blocking(move || {
                cache.merge_pages(&loc, &pages);
                drop(queued);
            })
            .await;
        });
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
        // One trip to a blocking thread in the common cases (a hit; a miss whose stripe is free).
        let guard = match self.blocking(&loc, |c, l| c.look_then_lock(l)).await {
            Some(Before::Found(b)) => return Ok(b),
            Some(Before::Locked(file)) => Some(file),
            Some(Before::Held(file)) => {
                let guard = self.stripe_lock(file, loc.stripe).await;
                // Another process may have fetched it while we waited for the lock.
                if guard.is_some()
                    && let Some(b) = self.blocking(&loc, |c, l| c.read_block(l)).await.flatten()
                {
                    return Ok(b);
                }
                guard
            }
            Some(Before::NoLock) | None => None,
        };
        self.stats.misses.inc();
        let bytes = fetch.await?;
        // Without the lock, its holder is still at work on this block (it writes it): this
        // read only takes its bytes.
        if guard.is_some() {
            let data = bytes.clone();
            self.blocking(&loc, move |c, l| c.write_block(l, &data)).await;
        }
        drop(guard);
        Ok(bytes)
    }

    /// The block from disk; else its stripe lock, tried once, and if taken a second look
    /// (another process may have stored the block between the two).
    fn look_then_lock(&self, loc: &Location) -> Before {
        if let Some(b) = self.read_block(loc) {
            return Before::Found(b);
        }
        let file = match self.locks.open() {
            Ok(f) => f,
            Err(e) => {
                self.warn(format_args!("cannot take a disk cache lock: {e}"));
                return Before::NoLock;
            }
        };
        match coord::try_range(&file, Locks::stripe_byte(loc.stripe), 1) {
            Ok(true) => match self.read_block(loc) {
                Some(b) => Before::Found(b),
                None => Before::Locked(file),
            },
            Ok(false) => Before::Held(file),
            Err(e) => {
                self.warn(format_args!("cannot take a disk cache lock: {e}"));
                Before::NoLock
            }
        }
    }

    /// Takes a block's stripe lock through `file`, polling without holding a thread, for at
    /// most `lock_wait`. `None` when it could not be taken (a timeout is counted): the caller
    /// then fetches without it.
    async fn stripe_lock(self: &Arc<Self>, file: fs::File, stripe: u64) -> Option<fs::File> {
        let deadline = tokio::time::Instant::now() + self.cfg.lock_wait;
        let mut pause = Duration::from_millis(1);
        loop {
            match coord::try_range(&file, Locks::stripe_byte(stripe), 1) {
                Ok(true) => return Some(file),
                Ok(false) => {}
                Err(e) => {
                    self.warn(format_args!("cannot take a disk cache lock: {e}"));
                    return None;
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                self.lock_failed("wait for another fetch of a block", LockError::Timeout);
                return None;
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = coord::next_pause(pause);
        }
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

    /// Reads and verifies one block, without counting it as a hit: from its object's file,
    /// else from its block file.
    fn load_block(&self, loc: &Location) -> Option<Bytes> {
        self.read_from_full(loc).or_else(|| self.load_block_file(loc))
    }

    /// Reads and verifies one block file.
    fn load_block_file(&self, loc: &Location) -> Option<Bytes> {
        let id = &loc.id;
        let expected = format::file_len(id, loc.len);
        let file = match self.open_own(&loc.path, true) {
            Opened::File(f) => f,
            Opened::Absent | Opened::Rejected => return None,
        };
        // Up to one byte more than the file should hold: `decode` then sees a longer file too.
        let mut buf = crate::bufpool::BlockBuf::zeroed(expected as usize + 1);
        let got = match read_full_at(&file, buf.as_mut_slice(), 0) {
            Ok(got) => got,
            Err(e) => {
                self.warn(format_args!("cannot read cached block {}: {e}", loc.path.display()));
                return None;
            }
        };
        match format::decode(buf.freeze().slice(..got), id, loc.len) {
            Ok(data) => {
                // The file's mtime is its last access, for LRU eviction.
                touch(&file);
                Some(data)
            }
            Err(e) => {
                self.reject(&loc.path, &e.to_string());
                None
            }
        }
    }

    /// Opens cache file `path` (`O_NOFOLLOW`, `O_NONBLOCK` if `nonblock`) and checks it is a
    /// regular file of this user. Anything else is never trusted: counted, logged and removed.
    fn open_own(&self, path: &Path, nonblock: bool) -> Opened {
        let file = match self.dir.open_read(path, nonblock) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Opened::Absent,
            // No shard directory (a symlink in its place is removed here): absent.
            Err(_) if !self.real_parents(path) => return Opened::Absent,
            Err(e) => {
                // ELOOP (a symlink planted in the cache), EACCES, ...: never trusted.
                self.reject(path, &format!("cannot open: {e}"));
                return Opened::Rejected;
            }
        };
        match file.metadata() {
            Ok(meta) if cachedir::is_own_file(&meta) => Opened::File(file),
            Ok(_) => {
                self.reject(path, "not a regular file owned by this user");
                Opened::Rejected
            }
            Err(_) => Opened::Rejected,
        }
    }

    /// Counts, logs and removes a file that must not be trusted, taking it off the ledger.
    fn reject(&self, path: &Path, why: &str) {
        self.stats.corrupt.inc();
        warn!(path = %path.display(), reason = why, "discarding invalid disk cache block; fetching it from S3");
        self.remove_accounted(path);
    }

    /// As `reject`, for a caller that holds the lock of the file's shard directory and sets
    /// the ledger itself (reconciliation).
    fn discard(&self, path: &Path, why: &str) {
        self.stats.corrupt.inc();
        warn!(path = %path.display(), reason = why, "discarding invalid disk cache block; fetching it from S3");
        let _ = self.dir.remove_file(path);
    }

    /// Whether every directory between the cache root and `path` is a real directory. The cache
    /// never goes through a symlink planted in its tree (it could lead outside the cache): one
    /// found in place of a directory is removed with a warning. Absent directories are not real
    /// either (a writer creates them).
    fn real_parents(&self, path: &Path) -> bool {
        let Some(parent) = path.parent().filter(|p| p.starts_with(&self.root)) else {
            return false;
        };
        match self.dir.dir_state(parent) {
            DirState::Real => true,
            DirState::Missing => false,
            DirState::NotADirectory(dir, meta) => {
                let _ = meta;
                self.reject(&dir, "not a directory (a symlink?) in the cache tree");
                false
            }
        }
    }

    /// Stores one block (best effort: failures are counted and logged, never returned): in
    /// its object's file, or in a block file (`full::writes_to_object` says which).
    fn write_block(&self, loc: &Location, data: &Bytes) {
        let result = match self.writes_to_object(loc) {
            Some(size) => self.write_to_object(loc, size, data),
            None => self
                .write_block_file(loc, data)
                .map(|w| if w { full::Stored::Written } else { full::Stored::No }),
        };
        match result {
            Ok(stored @ (full::Stored::Written | full::Stored::AlreadyThere)) => {
                if stored == full::Stored::Written {
                    self.stats.written_bytes.inc_by(data.len() as u64);
                }
                // The block is cached whole: its page file is superseded.
                self.remove_pages(loc);
            }
            Ok(full::Stored::No) => {}
            Err(e) => {
                self.stats.write_failures.inc();
                self.warn(format_args!(
                    "cannot write to the disk cache ({e}); serving from S3 without caching"
                ));
            }
        }
    }

    /// Stores one block in its own block file. Whether it was stored.
    fn write_block_file(&self, loc: &Location, data: &Bytes) -> io::Result<bool> {
        let header = match format::encode_header(&loc.id, data) {
            Ok(h) => h,
            Err(e) => {
                debug!(key = %loc.id.key, "not caching block: {e}");
                return Ok(false);
            }
        };
        // A new shard directory takes space too: reserve it with the block. (A symlink in its
        // place is removed here: the shard is then created as a real directory.)
        let new_shard = !self.real_parents(&loc.path);
        let size = alloc_size((header.len() + data.len()) as u64) + if new_shard { DIR_BYTES } else { 0 };
        let Some(reservation) = self.reserve_to_store(size) else {
            return Ok(false);
        };
        let Some((cell, _)) = self.cell_of(&loc.path) else {
            return Ok(false);
        };
        let mut tmp = self.dir.temp(&self.dir.area(Area::Tmp), "tmp", None)?;
        tmp.file().write_all(&header)?;
        tmp.file().write_all(data)?;
        let bytes = tmp.file().metadata()?.blocks() * 512;
        // The shard directory's lock only while the file is renamed into place and accounted
        // for (it keeps a reconciliation of that shard exact).
        let Some(_g) = self.lock_shard_to_store(cell, "a block")? else {
            return Ok(false);
        };
        // Creates the shard directory if it is missing, never through a symlink.
        let placed = tmp.place(&loc.path, Some(&self.dir.area(Area::Blocks)))?;
        let delta = (bytes + placed.dirs_created as u64 * DIR_BYTES) as i64 - placed.replaced.unwrap_or(0) as i64;
        reservation.commit(Cell::Shard(cell), delta);
        Ok(true)
    }

    /// Takes the lock of shard directory `cell` to place or record a file there; `None` when
    /// it was not free in time (counted and logged: the write is given up).
    fn lock_shard_to_store(&self, cell: usize, what: &str) -> io::Result<Option<coord::LockGuard>> {
        match self.locks.shard(cell, self.short_wait()) {
            Ok(g) => Ok(Some(g)),
            Err(LockError::Timeout) => {
                self.lock_failed(&format!("lock a disk cache shard to store {what}"), LockError::Timeout);
                Ok(None)
            }
            Err(LockError::Io(e)) => Err(e),
        }
    }

    /// Reserves `size` bytes for a write; `None` (counted, logged) when the cache is full.
    fn reserve_to_store(&self, size: u64) -> Option<evict::Reservation<'_>> {
        let r = self.reserve(size);
        if r.is_none() {
            self.stats.skipped_full.inc();
            self.warn(format_args!(
                "disk cache is full (bound or free space); serving without caching"
            ));
        }
        r
    }

    fn warn(&self, msg: std::fmt::Arguments) {
        crate::warnings::warn_limited!(self.warnings, "{msg}");
    }
}

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;
