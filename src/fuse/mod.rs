//! The FUSE adapter: the only user of `fuser`. Each kernel request is handed to the async core
//! (`fs::Fs`) on the tokio runtime and answered when it completes, so a slow S3 request never
//! blocks the session threads or other files. Errors become errnos through `FsError::errno`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, Notifier, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use tracing::{debug, info, warn};

use crate::fs::{Attr, FileKind, Fs, FsError, Looked};
use crate::metrics::Metrics;

mod session;
pub use session::{MountOptions, Mounted, Tuning, Unmounted, Unmounter, lazy_unmount, mount};

/// The kernel's stand-in for "indefinite": ten years. Far larger values overflow the
/// kernel's signed time conversion.
pub const KERNEL_INDEFINITE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

pub struct FuseAdapter {
    fs: Arc<Fs>,
    rt: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
    /// FUSE passthrough: wanted by the configuration, then confirmed by the kernel at init and
    /// switched off for good if registering a backing file fails (no CAP_SYS_ADMIN).
    passthrough: Arc<AtomicBool>,
    opens: Arc<Mutex<Opens>>,
    /// Kernel notifications (cache invalidation); set once the session exists.
    notifier: Arc<OnceLock<Notifier>>,
    /// Largest read the kernel may send, and its read-ahead, in bytes.
    max_read: u32,
    /// FUSE connection parameters (set by `session::mount` before the session starts).
    tuning: Tuning,
}

impl FuseAdapter {
    /// `hold`: how long a backing file stays registered after its last close (`Opens`).
    pub fn new(
        fs: Arc<Fs>,
        rt: tokio::runtime::Handle,
        metrics: Arc<Metrics>,
        passthrough: bool,
        hold: Duration,
    ) -> FuseAdapter {
        // Reads as large as a block let one request cover one cached block.
        let max_read = fs.block_size().min(1 << 20) as u32;
        let inodes = fs.clone();
        metrics.set_inodes_source(move || inodes.inode_count());
        let opens = Arc::new(Mutex::new(Opens::new(hold)));
        // Idle held backing files go even when no open comes to sweep them.
        let weak = Arc::downgrade(&opens);
        let every = sweep_every(hold);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(opens) = weak.upgrade() else { break };
                opens.lock().unwrap().sweep();
            }
        });
        FuseAdapter {
            fs,
            rt,
            metrics,
            passthrough: Arc::new(AtomicBool::new(passthrough)),
            opens,
            notifier: Arc::new(OnceLock::new()),
            max_read,
            tuning: Tuning::default(),
        }
    }

    /// Counts the request and runs `f` on the runtime, timing it until it has replied.
    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, op: &'static str, f: F) {
        self.metrics.fuse_op(op);
        let (metrics, start) = (self.metrics.clone(), std::time::Instant::now());
        let mut f = Box::pin(async move {
            f.await;
            metrics
                .fuse_duration
                .get_or_create(&crate::metrics::OpLabels { operation: op })
                .observe(start.elapsed().as_secs_f64());
        });
        // The first poll runs here, on the session thread that read the request: a request that
        // needs nothing it has to wait for (an open of a file whose backing file is held, a read
        // of blocks in memory) is answered without waking a runtime thread, which was a third
        // of a warm open's time (docs/BENCHMARKS.md, "Warm opens answered on the session
        // thread"). A request that has to wait goes to the runtime, which polls it again with a
        // waker of its own (futures re-register their waker on every poll). A panic fails that
        // request alone, as it does inside a runtime task; it never ends the session thread.
        let _rt = self.rt.enter();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.as_mut().poll(&mut cx)));
        match first {
            Ok(std::task::Poll::Ready(())) => {}
            Ok(std::task::Poll::Pending) => {
                self.rt.spawn(f);
            }
            Err(_) => tracing::error!(operation = op, "a FUSE request handler panicked; the request failed"),
        }
    }

    /// What a spawned request needs besides the filesystem.
    fn handle(&self) -> Ctx {
        Ctx {
            metrics: self.metrics.clone(),
            notifier: self.notifier.clone(),
            passthrough: self.passthrough.clone(),
            opens: self.opens.clone(),
        }
    }

    pub fn refresher(&self) -> Refresher {
        Refresher {
            fs: self.fs.clone(),
            notifier: self.notifier.clone(),
        }
    }

    /// Gives the allocator's free memory back to the system, on a blocking thread, one at a
    /// time. After the kernel forgets most names (memory pressure, drop_caches), what the
    /// inodes and listings used is free but scattered among live allocations, and glibc only
    /// returns the top of its heaps by itself.
    fn trim_memory(&self) {
        // Asked for while a trim runs: that trim runs once more when done, so the memory freed
        // by the last forgets is returned too.
        static WANTED: AtomicBool = AtomicBool::new(false);
        static RUNNING: AtomicBool = AtomicBool::new(false);
        WANTED.store(true, Ordering::Release);
        if RUNNING.swap(true, Ordering::AcqRel) {
            return;
        }
        self.rt.spawn_blocking(|| {
            loop {
                WANTED.store(false, Ordering::Release);
                // SAFETY: malloc_trim only releases free memory of the allocator's arenas.
                unsafe { libc::malloc_trim(0) };
                RUNNING.store(false, Ordering::Release);
                if !WANTED.load(Ordering::Acquire) || RUNNING.swap(true, Ordering::AcqRel) {
                    break;
                }
            }
        });
    }

    /// Where the session stores its notifier once mounted.
    pub(crate) fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        self.notifier.clone()
    }
}

/// Makes changes in S3 visible at once, whatever the TTL: drops the daemon's metadata caches
/// and the kernel's cached entries (SIGHUP).
#[derive(Clone)]
pub struct Refresher {
    fs: Arc<Fs>,
    notifier: Arc<OnceLock<Notifier>>,
}

impl Refresher {
    /// Returns how many names the kernel was told to forget.
    pub async fn refresh_all(&self) -> usize {
        self.fs.forget_metadata();
        let names = self.fs.known_names();
        let notifier = self.notifier.clone();
        tokio::task::spawn_blocking(move || {
            let Some(n) = notifier.get() else { return 0 };
            // Names the kernel no longer caches answer ENOENT: nothing to forget there.
            names
                .iter()
                .filter(|(parent, name)| n.inval_entry(INodeNo(*parent), OsStr::new(&**name)).is_ok())
                .count()
        })
        .await
        .unwrap_or(0)
    }
}

#[derive(Clone)]
struct Ctx {
    metrics: Arc<Metrics>,
    notifier: Arc<OnceLock<Notifier>>,
    passthrough: Arc<AtomicBool>,
    opens: Arc<Mutex<Opens>>,
}

/// Open handles per inode. The kernel gives an inode one I/O mode at a time: all its open
/// handles go through the page cache and the daemon, or all pass through to the same backing
/// file. So a backing file is shared by every handle of its inode and only offered when no
/// handle of that inode is open the other way.
///
/// Backing files stay registered after their last handle closes (`held`), so that the next
/// open of the same version costs no file open, index read or registration. At most
/// `held_max` are held (least recently used go first; each holds one descriptor), one is
/// dropped when the kernel forgets its inode, when the inode is opened at another version,
/// and once it has gone `hold` (`--passthrough-hold`, 5 minutes by default) without an open (an
/// evicted file's space is given back to the filesystem then at the latest).
struct Opens {
    by_ino: HashMap<u64, InodeOpens>,
    /// fh → (inode, passes through)
    handles: HashMap<u64, (u64, bool)>,
    held: HashMap<u64, Held>,
    held_max: usize,
    /// How long a held file with no open lasts.
    hold: Duration,
    swept: Instant,
}

#[derive(Default)]
struct InodeOpens {
    cached: usize,
    passthrough: usize,
}

/// A registered backing file of one version of an inode's object.
struct Held {
    etag: Arc<str>,
    size: u64,
    id: Arc<BackingId>,
    file: Arc<std::fs::File>,
    used: Instant,
    touched: Instant,
}

/// How often idle held backing files are looked for (at an open, and by a timer): every 30
/// seconds, or a tenth of the hold when that is shorter.
fn sweep_every(hold: Duration) -> Duration {
    (hold / 10).clamp(Duration::from_millis(100), Duration::from_secs(30))
}
/// The most backing files held, whatever the descriptor limit.
const HELD_MAX: usize = 4096;
/// How often a reused backing file's last access is recorded (the cache's own interval).
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// How many backing files may be held: [`HELD_MAX`], or a quarter of the descriptor limit.
fn held_max() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    };
    (soft / 4).clamp(1, HELD_MAX as u64) as usize
}

impl Opens {
    fn new(hold: Duration) -> Opens {
        Opens {
            by_ino: HashMap::new(),
            handles: HashMap::new(),
            held: HashMap::new(),
            held_max: held_max(),
            hold,
            swept: Instant::now(),
        }
    }

    fn release(&mut self, fh: u64) {
        let Some((ino, through)) = self.handles.remove(&fh) else {
            return;
        };
        let e = self.by_ino.entry(ino).or_default();
        if through {
            e.passthrough -= 1;
        } else {
            e.cached -= 1;
        }
        if e.cached == 0 && e.passthrough == 0 {
            self.by_ino.remove(&ino);
        }
        if let Some(h) = self.held.get_mut(&ino) {
            h.used = Instant::now();
        }
    }

    /// Whether `reuse` would find a backing file.
    fn reusable(&self, ino: u64, etag: &Arc<str>, size: u64) -> bool {
        let active = self.by_ino.get(&ino).is_some_and(|e| e.passthrough > 0);
        self.held
            .get(&ino)
            .is_some_and(|h| active || (h.etag == *etag && h.size == size))
    }

    /// The held backing file of `ino` for this version, if any, with whether its last access
    /// is due an update. Another version's is dropped, unless handles of the inode pass
    /// through to it: the kernel takes one backing file per inode, so the open shares it and
    /// reads that version (docs/SEMANTICS.md).
    fn reuse(&mut self, ino: u64, etag: &Arc<str>, size: u64) -> Option<(Arc<BackingId>, Arc<std::fs::File>, bool)> {
        let active = self.by_ino.get(&ino).is_some_and(|e| e.passthrough > 0);
        let h = self.held.get_mut(&ino)?;
        if !active && (h.etag != *etag || h.size != size) {
            self.held.remove(&ino);
            return None;
        }
        let now = Instant::now();
        h.used = now;
        let touch = now.duration_since(h.touched) >= TOUCH_EVERY;
        if touch {
            h.touched = now;
        }
        Some((h.id.clone(), h.file.clone(), touch))
    }

    /// Holds a newly registered backing file, making room if needed.
    fn hold(&mut self, ino: u64, etag: Arc<str>, size: u64, id: Arc<BackingId>, file: std::fs::File) {
        // Past the bound only while every held file has handles passing through to it.
        while self.held.len() >= self.held_max && !self.held.contains_key(&ino) {
            // Never one that open handles pass through to: a new open of that inode must find
            // the same backing file (the kernel refuses another one while the inode has it).
            let by_ino = &self.by_ino;
            let Some(oldest) = (self.held.iter())
                .filter(|(i, _)| by_ino.get(i).is_none_or(|e| e.passthrough == 0))
                .min_by_key(|(_, h)| h.used)
                .map(|(i, _)| *i)
            else {
                break;
            };
            self.held.remove(&oldest);
        }
        let now = Instant::now();
        self.held.insert(
            ino,
            Held {
                etag,
                size,
                id,
                file: Arc::new(file),
                used: now,
                touched: now,
            },
        );
    }

    /// Drops held backing files that have gone `hold` without an open and have no open handle
    /// (checked every [`sweep_every`]).
    fn sweep(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.swept) < sweep_every(self.hold) {
            return;
        }
        self.swept = now;
        let (by_ino, hold) = (&self.by_ino, self.hold);
        self.held
            .retain(|ino, h| by_ino.get(ino).is_some_and(|e| e.passthrough > 0) || now.duration_since(h.used) < hold);
    }
}

impl Ctx {
    /// Registers `file` as the backing file of `ino` (this version) and holds it; `None` when
    /// the kernel refuses it, which switches passthrough off for the mount.
    fn register(
        &self,
        opens: &mut Opens,
        ino: u64,
        file: std::fs::File,
        etag: Arc<str>,
        size: u64,
        reply: &ReplyOpen,
    ) -> Option<Arc<BackingId>> {
        if !self.passthrough.load(Ordering::Relaxed) {
            return None;
        }
        match reply.open_backing(&file) {
            Ok(id) => {
                let id = Arc::new(id);
                opens.hold(ino, etag, size, id.clone(), file);
                Some(id)
            }
            Err(e) => {
                // EPERM without CAP_SYS_ADMIN, for example: stop trying.
                self.passthrough.store(false, Ordering::Relaxed);
                warn!("FUSE passthrough unavailable ({e}); cached files are read through the daemon");
                None
            }
        }
    }

    fn errno(&self, op: &'static str, e: &FsError) -> Errno {
        let code = e.errno();
        self.metrics.fuse_error(op, code);
        if code == libc::EIO || code == libc::ETIMEDOUT || code == libc::EACCES {
            warn!(op, error = %e, "request failed");
        } else {
            debug!(op, error = %e, "request failed");
        }
        Errno::from_i32(code)
    }
}

/// The kernel's stand-in for "indefinitely".
fn kernel_ttl(valid_for: Option<Duration>) -> Duration {
    valid_for.map_or(KERNEL_INDEFINITE, |d| d.min(KERNEL_INDEFINITE))
}

/// Drops the kernel's cached attributes (and pages, with `pages`) of `ino`. The kernel may
/// wait for page locks held by reads in flight, whose replies come from the runtime: so this
/// runs on a blocking thread, never on a runtime worker.
async fn invalidate(notifier: Arc<OnceLock<Notifier>>, ino: u64, pages: bool) {
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(n) = notifier.get() {
            let offset = if pages { 0 } else { -1 };
            if let Err(e) = n.inval_inode(INodeNo(ino), offset, 0) {
                debug!(ino, "kernel cache invalidation failed: {e}");
            }
        }
    })
    .await;
}

fn to_fuse(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: a.blksize,
        flags: 0,
    }
}

fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
    }
}

/// Attributes of a negative entry (inode 0): only the inode number and timeout matter.
fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Read-ahead as large as one block (at most 1 MiB, the largest FUSE request): the kernel
        // asks for whole blocks when streaming. INIT can only lower the kernel's own (128 KiB);
        // `session::mount` raises it once the mount is live.
        let read_ahead = self.tuning.read_ahead.unwrap_or(self.max_read);
        if let Err(nearest) = config.set_max_readahead(read_ahead) {
            let _ = config.set_max_readahead(nearest);
        }
        // Independent lookups and readdirs of one directory may run in parallel.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_PARALLEL_DIROPS);
        // Listings carry each entry's attributes (READDIRPLUS), so `ls -l` costs no lookup per
        // entry. AUTO: the kernel asks for them on the first call of a stream and while the
        // entries are being stat'ed; a plain `ls -f` gets the smaller plain entries after the
        // first call (measured: warm `ls -f` of 100,000 names 0.05 s instead of 0.15 s, `ls -l`
        // no slower; docs/BENCHMARKS.md).
        let plus = fuser::InitFlags::FUSE_DO_READDIRPLUS | fuser::InitFlags::FUSE_READDIRPLUS_AUTO;
        if config.add_capabilities(plus).is_err() {
            info!("the kernel does not offer READDIRPLUS; `ls -l` looks each entry up");
        }
        // Up to this many background requests (read-ahead, async reads) in flight at once.
        let _ = config.set_max_background(self.tuning.max_background.unwrap_or(session::DEFAULT_MAX_BACKGROUND));
        if self.passthrough.load(Ordering::Relaxed) {
            // Backing files live on a plain local filesystem: one level of stacking.
            let ok = config.add_capabilities(fuser::InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            if !ok {
                info!("the kernel does not offer FUSE passthrough; cached files are read through the daemon");
            }
            self.passthrough.store(ok, Ordering::Relaxed);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (fs, name) = (self.fs.clone(), name.to_owned());
        let this = self.handle();
        self.spawn("lookup", async move {
            match fs.lookup(parent.0, &name).await {
                Ok(Looked::Found(attr)) => reply.entry(&kernel_ttl(attr.valid_for), &to_fuse(&attr), Generation(0)),
                // Inode 0 with a timeout is a negative entry the kernel may cache.
                Ok(Looked::Missing { valid_for }) if valid_for != Some(Duration::ZERO) => {
                    reply.entry(&kernel_ttl(valid_for), &negative_attr(), Generation(0))
                }
                Ok(Looked::Missing { .. }) => reply.error(Errno::ENOENT),
                Err(e) => reply.error(this.errno("lookup", &e)),
            }
        });
    }

    // BATCH_FORGET arrives here too, one call per inode (fuser's default `batch_forget`; its
    // element type is not public).
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.metrics.fuse_op("forget");
        let gone = self.fs.forget(ino.0, nlookup);
        if !self.fs.knows(ino.0) {
            self.opens.lock().unwrap().held.remove(&ino.0);
        }
        if gone {
            self.trim_memory();
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let fs = self.fs.clone();
        let this = self.handle();
        self.spawn("getattr", async move {
            match fs.getattr(ino.0).await {
                Ok(attr) => reply.attr(&kernel_ttl(attr.valid_for), &to_fuse(&attr)),
                Err(e) => reply.error(this.errno("getattr", &e)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.fs.clone();
        let this = self.handle();
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        self.spawn("open", async move {
            match fs.open(ino.0, write).await {
                Ok(o) => {
                    if o.changed {
                        // The size the kernel cached belongs to the previous version.
                        invalidate(this.notifier.clone(), ino.0, false).await;
                    }
                    let flags = if o.keep_cache {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    };
                    let wanted = o.version.clone().filter(|_| this.passthrough.load(Ordering::Relaxed));
                    // A backing file held for this version: nothing to open or register.
                    let mut file = None;
                    if let Some((etag, size)) = &wanted {
                        let held = {
                            let mut opens = this.opens.lock().unwrap();
                            opens.sweep();
                            opens.reusable(ino.0, etag, *size)
                        };
                        if !held {
                            file = fs.backing_file(o.fh).await;
                        }
                    }
                    let mut opens = this.opens.lock().unwrap();
                    let cached = opens.by_ino.get(&ino.0).is_some_and(|e| e.cached > 0);
                    let mut reused = None;
                    let backing = match wanted {
                        // Passthrough only while no handle of the inode reads through the daemon.
                        Some(_) if cached => None,
                        Some((etag, size)) => match opens.reuse(ino.0, &etag, size) {
                            Some((id, f, touch)) => {
                                this.metrics.passthrough_backing_reuses.inc();
                                reused = Some((f, touch));
                                Some(id)
                            }
                            None => file.and_then(|f| this.register(&mut opens, ino.0, f, etag, size, &reply)),
                        },
                        None => None,
                    };
                    let entry = opens.by_ino.entry(ino.0).or_default();
                    match backing {
                        Some(id) => {
                            entry.passthrough += 1;
                            opens.handles.insert(o.fh, (ino.0, true));
                            drop(opens);
                            this.metrics.passthrough_opens.inc();
                            fs.passed_through(o.fh, reused);
                            // The kernel refuses page-cache flags (keep_cache) on passthrough
                            // opens: the backing file has its own page cache.
                            reply.opened_passthrough(FileHandle(o.fh), FopenFlags::empty(), &id)
                        }
                        None => {
                            entry.cached += 1;
                            opens.handles.insert(o.fh, (ino.0, false));
                            reply.opened(FileHandle(o.fh), flags)
                        }
                    }
                }
                Err(e) => reply.error(this.errno("open", &e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        let this = self.handle();
        self.spawn("read", async move {
            match fs.read(fh.0, offset, size).await {
                Ok(data) => {
                    this.metrics.read_bytes.inc_by(data.len() as u64);
                    reply.data(&data)
                }
                Err(e) => {
                    reply.error(this.errno("read", &e));
                    if e.object_changed() {
                        tokio::spawn(invalidate(this.notifier.clone(), ino.0, true));
                    }
                }
            }
        });
    }

    /// Nothing to flush on a read-only filesystem: ENOSYS, which the kernel takes as success
    /// and remembers, so no later `close` costs a FLUSH round trip.
    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        self.metrics.fuse_op("flush");
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _rt = self.rt.enter(); // release may start background work
        self.fs.release(fh.0);
        self.opens.lock().unwrap().release(fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.fs.clone();
        let this = self.handle();
        self.spawn("opendir", async move {
            match fs.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(this.errno("opendir", &e)),
            }
        });
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        self.metrics.fuse_op("readdir");
        match self.fs.readdir(fh.0, offset) {
            Ok(entries) => {
                for e in entries {
                    if reply.add(INodeNo(e.ino), e.next_offset, kind(e.kind), &*e.name) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(self.handle().errno("readdir", &e)),
        }
    }

    fn readdirplus(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        self.metrics.fuse_op("readdirplus");
        match self.fs.readdirplus(fh.0, offset) {
            Ok(entries) => {
                for e in entries {
                    let ttl = kernel_ttl(e.attr.valid_for);
                    if reply.add(
                        INodeNo(e.attr.ino),
                        e.next_offset,
                        &*e.name,
                        &ttl,
                        &to_fuse(&e.attr),
                        Generation(0),
                    ) {
                        // Did not fit: the kernel never sees it, so it was no lookup.
                        if e.counted {
                            self.fs.forget(e.attr.ino, 1);
                        }
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(self.handle().errno("readdirplus", &e)),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // A read-only view of a bucket: no capacity and nothing free to write into; the inode
        // count is the names seen so far. 255 is the longest name we show.
        let bsize = self.fs.block_size() as u32;
        reply.statfs(0, 0, 0, self.fs.inode_count(), 0, bsize, 255, bsize);
    }

    // No extended attributes. ENOSYS tells the kernel so for the whole mount: it stops
    // sending these requests (two per `ls -l` entry otherwise) and answers EOPNOTSUPP itself.
    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        self.metrics.fuse_op("getxattr");
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        self.metrics.fuse_op("listxattr");
        reply.error(Errno::ENOSYS);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Permission bits are enforced by the kernel (default_permissions); only refuse writes.
        if mask.contains(fuser::AccessFlags::W_OK) {
            reply.error(Errno::EROFS)
        } else {
            reply.ok()
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    // Every modification is refused: the mount is read-only.
    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _mode: u32, _umask: u32, _rdev: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _target: &std::path::Path, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _np: INodeNo,
        _nn: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _np: INodeNo, _nn: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _n: &OsStr,
        _v: &[u8],
        _flags: i32,
        _pos: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _off: u64,
        _len: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }
}
