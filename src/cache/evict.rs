//! Space: reserving bytes against the bound before a write, eviction in small sampled steps,
//! and the background maintainer (eviction to a low watermark, and the paced reconciliation
//! that makes the ledger exact).
//!
//! - **No lock on the read path spans a scan.** Writers reserve in the ledger (a lock held for
//!   one read-modify-write), write a temp file, and take their shard directory's lock only
//!   to rename it into place and account for it. Eviction takes a shard's lock only to remove
//!   one file; reconciliation only while it lists one shard directory.
//! - **Sampled LRU.** An eviction step lists a few random shard directories (files spread
//!   evenly over them by hash) until it has seen [`SAMPLE_FILES`] files, and removes the least
//!   recently used eighth of the sample (last access = mtime, refreshed on every hit). When
//!   the sample covers every shard (a small cache) the step is exact LRU. A step's cost does
//!   not grow with the cache: a few directory listings.
//! - **Who evicts.** A writer whose reservation does not fit runs one step itself, then tries
//!   once more (else the block is served uncached). A background thread per process wakes
//!   every [`MAINTAIN_EVERY`] (or when a writer passes the high watermark); when the cache is
//!   above [`HIGH_PERCENT`] of its bound, the one process that wins `evict.lock` (without
//!   waiting) evicts down to [`LOW_PERCENT`].
//! - **Reconciliation.** When the ledger is new or was rebuilt, or its last pass is older than
//!   [`RECONCILE_EVERY`], the maintainer walks every shard directory, one at a time under its
//!   lock, pausing [`RECONCILE_PAUSE`] between two, sets each shard's cell to what it counted,
//!   drops the reservations of dead processes, removes temp files of dead writers and foreign
//!   files, and counts persisted metadata and the fixed files. It never runs on the mount path.

use std::sync::atomic::Ordering;
use std::sync::{Condvar, Weak};
use std::time::Duration;

use super::coord::{Cell, Ledger, LockError};
use super::*;

/// Files an eviction step looks at before choosing (unless it has looked everywhere).
pub const SAMPLE_FILES: usize = 256;
/// Shard directories an eviction step lists at least, and at most.
const SAMPLE_MIN_SHARDS: usize = 4;
const SAMPLE_MAX_SHARDS: usize = 64;
/// The background maintainer evicts above this share of the bound, down to the low one.
pub const HIGH_PERCENT: u64 = 95;
pub const LOW_PERCENT: u64 = 90;
/// How often the background maintainer looks at the ledger.
pub const MAINTAIN_EVERY: Duration = Duration::from_millis(200);
/// How often the ledger is reconciled with the disk, at most.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(3600);
/// The pause between two shard directories during reconciliation (8,192 of them: about 8 s
/// of pauses per pass), so that it never competes with reads for the disk.
pub const RECONCILE_PAUSE: Duration = Duration::from_millis(1);
/// Eviction steps a writer runs itself when its reservation does not fit.
const INLINE_STEPS: usize = 4;
/// The list of shard directories an eviction step samples from is refreshed this often.
const SHARD_LIST_TTL: Duration = Duration::from_secs(5);

/// The shard directories that exist: (area, shard number, path).
pub(super) type ShardList = Arc<Vec<(usize, u64, PathBuf)>>;

/// A space reservation in the ledger; given back when dropped uncommitted.
pub(super) struct Reservation<'a> {
    cache: &'a DiskCache,
    bytes: u64,
    done: bool,
}

impl Reservation<'_> {
    /// The reserved bytes became `delta` bytes of `cell`.
    pub(super) fn commit(mut self, cell: Cell, delta: i64) {
        self.done = true;
        let c = self.cache;
        if let Err(e) = c
            .ledger
            .commit(&c.locks, c.short_wait(), c.slot_id(), self.bytes, cell, delta)
        {
            c.lock_failed("account for a cache write", e);
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.done {
            let c = self.cache;
            if let Err(e) = c.ledger.release(&c.locks, c.short_wait(), c.slot_id(), self.bytes) {
                c.lock_failed("give back a cache reservation", e);
            }
        }
    }
}

/// A file eviction may remove.
struct Candidate {
    mtime: SystemTime,
    path: PathBuf,
    /// An object file's index, removed with it.
    companion: Option<PathBuf>,
    cell: usize,
    /// The only file its shard directory held when sampled (the directory is then removed
    /// with it, if empty).
    alone: bool,
}

/// Wakes the background maintainer.
#[derive(Default)]
pub(super) struct Wake {
    flag: Mutex<bool>,
    cv: Condvar,
}

impl Wake {
    pub(super) fn notify(&self) {
        *self.flag.lock().unwrap() = true;
        self.cv.notify_one();
    }

    fn wait(&self, timeout: Duration) {
        let g = self.flag.lock().unwrap();
        let (mut g, _) = self.cv.wait_timeout_while(g, timeout, |woken| !*woken).unwrap();
        *g = false;
    }
}

/// A small xorshift generator for sampling (no need for quality or secrecy).
fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl DiskCache {
    /// The most bytes the cache may hold now: the smaller of
    /// `--max-cache-size` and what keeps `--cache-min-free` of the filesystem free.
    pub(super) fn limit(&self) -> u64 {
        let used = self.ledger.total();
        let mut limit = self.cfg.max_size.unwrap_or(u64::MAX);
        if let Some((avail, total)) = self.dir.space() {
            let min_free = (total as f64 * self.cfg.min_free_percent / 100.0) as u64;
            limit = limit.min((used + avail).saturating_sub(min_free));
        }
        limit
    }

    pub(super) fn slot_id(&self) -> Option<u64> {
        self.slot.as_ref().map(|s| s.0)
    }

    /// Counts and logs a lock or ledger operation that failed or timed out.
    pub(super) fn lock_failed(&self, what: &str, e: LockError) {
        if matches!(e, LockError::Timeout) {
            self.stats.lock_timeouts.inc();
        }
        self.warn(format_args!("cannot {what}: {e}"));
    }

    /// Reserves `n` bytes, evicting a little if needed. `None` if the bound cannot be met (or
    /// the ledger cannot be updated in time).
    pub(super) fn reserve(&self, n: u64) -> Option<Reservation<'_>> {
        for attempt in 0..2 {
            let limit = self.limit();
            match self
                .ledger
                .try_reserve(&self.locks, self.short_wait(), self.slot_id(), n, limit)
            {
                Ok(true) => {
                    if self.ledger.total() > limit / 100 * HIGH_PERCENT {
                        self.wake.notify();
                    }
                    return Some(Reservation {
                        cache: self,
                        bytes: n,
                        done: false,
                    });
                }
                Ok(false) => {}
                Err(e) => {
                    self.lock_failed("reserve disk cache space", e);
                    return None;
                }
            }
            if attempt == 1 || n > limit {
                return None;
            }
            self.wake.notify();
            // A few small steps here, so that this write usually fits; the background
            // maintainer takes the cache down to the low watermark.
            for _ in 0..INLINE_STEPS {
                let need = self.ledger.total().saturating_add(n).saturating_sub(self.limit());
                if need == 0 || self.evict_step(need) == 0 {
                    break;
                }
            }
        }
        None
    }

    /// The ledger cell of a file or directory directly in a shard directory of `blocks/` or
    /// `full/`, and that shard directory.
    pub(super) fn cell_of(&self, path: &Path) -> Option<(usize, PathBuf)> {
        let rel = path.strip_prefix(&self.root).ok()?;
        let mut parts = rel.components();
        let area = match parts.next()?.as_os_str().to_str()? {
            "blocks" => 0,
            "full" => 1,
            _ => return None,
        };
        let shard = parts.next()?.as_os_str();
        parts.next()?;
        if parts.next().is_some() || !is_shard_name(shard) {
            return None;
        }
        let n = u64::from_str_radix(shard.to_str()?, 16).ok()?;
        Some((Ledger::shard_cell(area, n), path.parent()?.to_path_buf()))
    }

    /// Removes a file from a shard directory and takes its bytes off the ledger (under the
    /// shard's lock, so that a reconciliation of that shard stays exact). Returns its bytes.
    pub(super) fn remove_accounted(&self, path: &Path) -> Option<u64> {
        let Some((cell, _)) = self.cell_of(path) else {
            return self.dir.remove_file(path).ok().map(|_| 0);
        };
        let _g = match self.locks.shard(cell, self.short_wait()) {
            Ok(g) => g,
            Err(e) => {
                // Removed anyway: reconciliation corrects the ledger.
                self.lock_failed("lock a disk cache shard", e);
                return self.dir.remove_file(path).ok().map(|_| 0);
            }
        };
        let size = self.dir.metadata(path).map(|m| m.blocks() * 512).unwrap_or(0);
        self.dir.remove_file(path).ok()?;
        if let Err(e) = self
            .ledger
            .adjust(&self.locks, self.short_wait(), Cell::Shard(cell), -(size as i64))
        {
            self.lock_failed("account for a removal", e);
        }
        Some(size)
    }

    /// The shard directories of both areas that exist: (area, shard number, path). Cached for
    /// a few seconds.
    fn shard_dirs(&self) -> ShardList {
        let mut cached = self.shard_list.lock().unwrap();
        if let Some((at, list)) = &*cached
            && at.elapsed() < SHARD_LIST_TTL
        {
            return list.clone();
        }
        let mut list = Vec::new();
        for (i, area) in [Area::Blocks, Area::Full].into_iter().enumerate() {
            let base = self.dir.area(area);
            for name in self.dir.list_names(&base).unwrap_or_default() {
                if let Some(n) = name.to_str().filter(|_| is_shard_name(&name))
                    && let Ok(n) = u64::from_str_radix(n, 16)
                {
                    list.push((i, n, base.join(&name)));
                }
            }
        }
        let list = Arc::new(list);
        *cached = Some((Instant::now(), list.clone()));
        list
    }

    /// Lists random shard directories until enough files were seen. Returns the candidates
    /// and whether every shard directory was listed.
    fn sample(&self) -> (Vec<Candidate>, bool) {
        let dirs = self.shard_dirs();
        let mut order: Vec<usize> = (0..dirs.len()).collect();
        let mut rng = {
            let mut s = self.rng.lock().unwrap();
            next_random(&mut s)
        };
        let mut out = Vec::new();
        let mut visited = 0;
        while visited < order.len() {
            if (out.len() >= SAMPLE_FILES && visited >= SAMPLE_MIN_SHARDS) || visited >= SAMPLE_MAX_SHARDS {
                break;
            }
            // A partial Fisher-Yates shuffle: each shard directory at most once.
            let pick = visited + (next_random(&mut rng) % (order.len() - visited) as u64) as usize;
            order.swap(visited, pick);
            let (area, shard, path) = &dirs[order[visited]];
            visited += 1;
            let cell = Ledger::shard_cell(*area, *shard);
            let Ok(entries) = self.dir.read_dir(path) else { continue };
            let first = out.len();
            for e in &entries {
                let m = e.metadata();
                if !m.is_file() {
                    continue;
                }
                let name = e.file_name();
                let companion = if *area == 1 {
                    let Some(n) = name.to_str() else { continue };
                    if n.ends_with(".idx") {
                        continue; // goes with its data file
                    }
                    Some(e.path().with_extension("idx"))
                } else {
                    None
                };
                out.push(Candidate {
                    mtime: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    path: e.path(),
                    companion,
                    cell,
                    alone: false,
                });
            }
            if out.len() == first + 1 {
                out[first].alone = true;
            }
        }
        let complete = visited == order.len();
        if !complete {
            // Shard directories come and go: look again next time.
            *self.shard_list.lock().unwrap() = None;
        }
        (out, complete)
    }

    /// One eviction step: removes least-recently-used files of a sample until `goal` bytes
    /// are freed, taking at most an eighth of the sample unless the sample is the whole cache.
    /// Returns the bytes freed.
    pub(super) fn evict_step(&self, goal: u64) -> u64 {
        let mut freed = 0;
        for attempt in 0..2 {
            if freed >= goal {
                break;
            }
            if attempt == 1 {
                // The list of shard directories may be out of date (new ones since): list
                // them again.
                *self.shard_list.lock().unwrap() = None;
            }
            let (mut candidates, complete) = self.sample();
            candidates.sort_unstable_by_key(|c| c.mtime);
            let most = if complete {
                candidates.len()
            } else {
                (candidates.len() / 8).max(1)
            };
            for c in candidates.iter().take(most) {
                if freed >= goal {
                    break;
                }
                freed += self.evict_file(c);
            }
            if !complete {
                break;
            }
        }
        freed
    }

    /// Removes one candidate unless it was used since it was sampled. Returns its bytes.
    fn evict_file(&self, c: &Candidate) -> u64 {
        let _g = match self.locks.shard(c.cell, self.short_wait()) {
            Ok(g) => g,
            Err(e) => {
                self.lock_failed("lock a disk cache shard for eviction", e);
                return 0;
            }
        };
        let Ok(m) = self.dir.metadata(&c.path) else { return 0 };
        if m.modified().unwrap_or(SystemTime::UNIX_EPOCH) > c.mtime || self.dir.remove_file(&c.path).is_err() {
            return 0;
        }
        let mut size = m.blocks() * 512;
        if let Some(idx) = &c.companion {
            self.forget_verified(&m);
            if let Ok(im) = self.dir.metadata(idx)
                && self.dir.remove_file(idx).is_ok()
            {
                size += im.blocks() * 512;
            }
        }
        if c.alone
            && let Some(dir) = c.path.parent()
            && let Ok(dm) = self.dir.metadata(dir)
            && self.dir.remove_dir(dir).is_ok()
        {
            // Empty now: a writer creates it again when it needs it.
            size += dm.blocks() * 512;
        }
        if let Err(e) = self
            .ledger
            .adjust(&self.locks, self.short_wait(), Cell::Shard(c.cell), -(size as i64))
        {
            self.lock_failed("account for an eviction", e);
        }
        self.stats.evictions.inc();
        self.stats.evicted_bytes.inc_by(size);
        size
    }

    /// Evicts in steps until the ledger is at most `target`, or a step frees nothing.
    pub(super) fn evict_to(&self, target: u64) {
        loop {
            let total = self.ledger.total();
            if total <= target || self.evict_step(total - target) == 0 {
                return;
            }
        }
    }

    /// Whether a reconciliation pass is due.
    pub(super) fn reconcile_due(&self) -> bool {
        if self.ledger.take_rebuilt() {
            self.reconcile_needed.store(true, Ordering::Release);
        }
        self.reconcile_needed.load(Ordering::Acquire)
            || now_secs().saturating_sub(self.ledger.reconciled_at()) > RECONCILE_EVERY.as_secs()
    }

    /// Starts the background maintainer thread. It holds only a weak reference: it ends when
    /// the cache is dropped.
    pub fn start_background(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("s3cachefs-cache-maint".into())
            .spawn(move || maintain(weak))
            .ok();
    }

    /// One round of the maintainer: evict when above the high watermark, reconcile when due;
    /// both only as the one process holding `evict.lock`.
    fn maintain_once(&self, pause: Duration) {
        let limit = self.limit();
        let over = self.ledger.total() > limit / 100 * HIGH_PERCENT;
        let due = self.reconcile_due();
        if !over && !due {
            return;
        }
        let guard = match coord::try_exclusive(&self.dir, &self.root.join(EVICT_LOCK)) {
            Ok(Some(g)) => g,
            Ok(None) => return, // another process is maintaining the cache
            Err(e) => {
                self.warn(format_args!("cannot lock the disk cache for maintenance: {e}"));
                return;
            }
        };
        let low = |c: &DiskCache| c.limit() / 100 * LOW_PERCENT;
        if over {
            self.evict_to(low(self));
        }
        if due {
            let t = Instant::now();
            let (bytes, files) = self.reconcile(pause, &mut || {
                if self.ledger.total() > self.limit() / 100 * HIGH_PERCENT {
                    self.evict_to(low(self));
                }
            });
            info!(bytes, files, elapsed = ?t.elapsed(), "disk cache reconciled");
        }
        drop(guard);
    }

    /// A full reconciliation pass (see the module docs), calling `between` after every shard
    /// directory. Returns (bytes in the ledger afterwards, files counted).
    pub(super) fn reconcile(&self, pause: Duration, between: &mut dyn FnMut()) -> (u64, u64) {
        let wait = self.short_wait();
        self.reconcile_needed.store(false, Ordering::Release);
        let fixed: u64 = [
            self.cfg.dir.clone(),
            self.root.clone(),
            self.dir.area(Area::Blocks),
            self.dir.area(Area::Full),
            self.dir.area(Area::Tmp),
            self.root.join(USAGE),
            self.root.join(LOCKS),
            self.root.join(EVICT_LOCK),
        ]
        .iter()
        .map(|p| self.dir.metadata(p).map(|m| m.blocks() * 512).unwrap_or(0))
        .sum();
        let fail = |e| self.lock_failed("reconcile the disk cache ledger", e);
        self.ledger
            .set(&self.locks, wait, Cell::Fixed, fixed)
            .unwrap_or_else(fail);
        self.remove_dead_temps();
        self.ledger
            .repair_slots(&self.locks, wait, self.slot_id())
            .unwrap_or_else(fail);
        let mut files = 0;
        for (i, area) in [Area::Blocks, Area::Full].into_iter().enumerate() {
            let base = self.dir.area(area);
            let mut present = vec![false; SHARDS as usize];
            for e in self.dir.read_dir(&base).unwrap_or_default() {
                let name = e.file_name();
                let shard = name.to_str().filter(|_| is_shard_name(&name) && e.metadata().is_dir());
                let Some(n) = shard.and_then(|s| u64::from_str_radix(s, 16).ok()) else {
                    self.discard(&e.path(), "foreign entry in the cache");
                    let _ = self.dir.remove_tree(&e.path());
                    continue;
                };
                present[n as usize] = true;
                files += self.reconcile_shard(i, n, &e.path());
                between();
                std::thread::sleep(pause);
            }
            // Shards without a directory hold nothing.
            for (n, _) in present.iter().enumerate().filter(|(_, p)| !**p) {
                let cell = Ledger::shard_cell(i, n as u64);
                if self.ledger.cell_value(cell) != 0 {
                    let _g = self.locks.shard(cell, wait);
                    if self.dir.metadata(&base.join(shard_name(n as u64))).is_err() {
                        self.ledger
                            .set(&self.locks, wait, Cell::Shard(cell), 0)
                            .unwrap_or_else(fail);
                    }
                }
            }
        }
        // Persisted metadata counts toward the bound but is not evicted here.
        let meta = self.dir.tree_size(&self.dir.area(Area::Meta));
        self.ledger
            .set(&self.locks, wait, Cell::Meta, meta)
            .unwrap_or_else(fail);
        self.ledger
            .mark_reconciled(&self.locks, wait, now_secs())
            .unwrap_or_else(fail);
        *self.shard_list.lock().unwrap() = None;
        (self.ledger.total(), files)
    }

    /// Counts one shard directory under its lock and sets its cell; removes foreign files,
    /// and the directory itself when it is empty. Returns the files counted.
    fn reconcile_shard(&self, area: usize, n: u64, path: &Path) -> u64 {
        let cell = Ledger::shard_cell(area, n);
        let _g = match self.locks.shard(cell, self.short_wait()) {
            Ok(g) => g,
            Err(e) => {
                self.lock_failed("lock a disk cache shard for reconciliation", e);
                return 0;
            }
        };
        let Ok(dir_meta) = self.dir.metadata(path) else {
            return 0;
        };
        let Ok(entries) = self.dir.read_dir(path) else { return 0 };
        let now = SystemTime::now();
        let mut total = 0;
        let mut files = 0;
        for e in &entries {
            let m = e.metadata();
            let name = e.file_name();
            let ok = if area == 0 {
                // A page file whose block file exists is superseded (a writer removes it; a
                // race between two can leave it).
                m.is_file()
                    && (is_block_name(&name) || super::pages::is_page_name(&name) && !superseded(&entries, &name))
            } else {
                m.is_file() && self.full_entry_ok(&e.path(), m, now)
            };
            if ok {
                total += m.blocks() * 512;
                files += 1;
            } else if area == 0 && m.is_file() && super::pages::is_page_name(&name) {
                let _ = self.dir.remove_file(&e.path());
            } else if self.dir.metadata(&e.path()).is_ok() {
                self.discard(&e.path(), "foreign file in the cache");
            }
        }
        if files == 0 && self.dir.remove_dir(path).is_ok() {
            total = 0;
        } else {
            total += dir_meta.blocks() * 512;
        }
        if let Err(e) = self
            .ledger
            .set(&self.locks, self.short_wait(), Cell::Shard(cell), total)
        {
            self.lock_failed("reconcile the disk cache ledger", e);
        }
        files
    }

    /// Removes temp files older than any write takes ([`STALE_TMP`]): their writer is gone.
    /// (Process ids are not looked at: processes sharing the directory may live in other pid
    /// namespaces.) Younger ones may be a live writer's, covered by its reservation.
    pub(super) fn remove_dead_temps(&self) {
        let now = SystemTime::now();
        for e in self.dir.read_dir(&self.dir.area(Area::Tmp)).unwrap_or_default() {
            let m = e.metadata();
            let age = now.duration_since(m.modified().unwrap_or(now)).unwrap_or_default();
            if age > STALE_TMP || !m.is_file() {
                let _ = self.dir.remove_tree(&e.path());
            }
        }
    }

    /// Reconciles and then evicts down to `target`, without pauses (tests, and the model).
    #[cfg(test)]
    pub(super) fn scan_and_evict(&self, target: u64) -> (u64, u64) {
        let (_, files) = self.reconcile(Duration::ZERO, &mut || {});
        self.evict_to(target);
        (self.ledger.total(), files)
    }
}

/// The background maintainer's loop.
fn maintain(weak: Weak<DiskCache>) {
    let wake = match weak.upgrade() {
        Some(c) => c.wake.clone(),
        None => return,
    };
    // Temp files left by writers that died (one listing of `tmp/`, small).
    if let Some(cache) = weak.upgrade() {
        cache.remove_dead_temps();
    }
    loop {
        {
            let Some(cache) = weak.upgrade() else { return };
            cache.maintain_once(RECONCILE_PAUSE);
        }
        wake.wait(MAINTAIN_EVERY);
    }
}

/// Whether the page file `name` has its block file among `entries`.
fn superseded(entries: &[crate::cachedir::DirEntry], name: &std::ffi::OsStr) -> bool {
    let block = name.to_str().and_then(|n| n.strip_suffix(".p"));
    block.is_some_and(|b| entries.iter().any(|e| e.file_name() == b))
}

pub(super) fn is_block_name(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| {
        n.split_once('.').is_some_and(|(h, i)| {
            h.len() == 32
                && h.bytes().all(|b| b.is_ascii_hexdigit())
                && !i.is_empty()
                && i.bytes().all(|b| b.is_ascii_digit())
        })
    })
}
