//! The cache directory: its layout, and every file operation on it. The data cache (`cache`)
//! and persisted metadata (`meta::persist`) share one directory; this module is the only place
//! that spells its layout, checks its owner, writes files into it or removes them.
//!
//! Layout (`<dir>` is `--cache`):
//! - `<dir>/v1/`: the format version directory ([`VERSION_DIR`]). Everything below is ours.
//! - `v1/blocks/<shard>/…`, `v1/full/<shard>/…`: block files and assembled objects
//!   ([`Area::Blocks`], [`Area::Full`]); `<shard>` is three hex digits ([`shard_name`],
//!   [`SHARDS`] of them).
//! - `v1/meta/…`: persisted metadata ([`Area::Meta`]; its inner layout belongs to
//!   `meta::persist`).
//! - `v1/tmp/`: files being written ([`Area::Tmp`]).
//! - `v1/usage`, `v1/locks`, `v1/evict.lock`: cross-process coordination ([`USAGE`], [`LOCKS`],
//!   [`EVICT_LOCK`]).
//! - `v1/salt`, `v1/identities/…`: the key of credential fingerprints and the partition last
//!   learned for each ([`SALT`], [`IDENTITIES`]; their use belongs to `app::identity`).
//!
//! Invariants:
//! - **Nothing is followed.** Every operation resolves the cache directory's configured path
//!   (normally: the administrator chose it) and checks that it still leads to the directory
//!   whose owner was checked at [`CacheDir::open`] (same device and inode). Through the same
//!   mount, it then starts from the descriptor of that directory held since `open` (one `statx`
//!   per operation); otherwise (a bind mount over it, `statx` without mount ids) it opens the
//!   path again and starts from there. From that descriptor it walks down to the directory it
//!   needs with one `openat2` that refuses every symlink
//!   (`RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH`), or, where `openat2` is missing or a directory
//!   is to be created, one component at a time with `openat(O_NOFOLLOW | O_DIRECTORY)`. It acts on the
//!   last component with `*at` calls that do not follow it either (`O_NOFOLLOW`, `renameat`,
//!   `unlinkat`, `linkat` without `AT_SYMLINK_FOLLOW`). A symlink planted anywhere below the
//!   cache directory, in place of a directory or of a file, makes the operation fail: nothing
//!   outside the cache directory is ever read, written, created or removed through it.
//! - **Paths stay inside.** Operations take paths under [`CacheDir::path`]; any other path, or
//!   one with `..`, is refused.
//! - **One owner, and the configured directory left as it is.** The configured directory must
//!   belong to the effective user or to root, and must not be writable by other users unless it
//!   is sticky; its mode and owner are never changed (it may be a filesystem's root). The
//!   version directory `v1/` below it is the daemon's own: it must belong to the effective user
//!   and is made 0700, and every directory and file created in it is 0700 or 0600.
//! - **Atomic writes.** [`CacheDir::temp`] creates a temp file (0600, `O_EXCL`), and
//!   [`TempFile::place`] renames it into place, so a reader sees a whole old file, a whole new
//!   one, or none. A temp file that is not placed is removed when dropped; one left by a
//!   process that died is removed by age ([`STALE_TMP`]) by its owner's scan.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rustix::fs::{AtFlags, Dir, Mode, OFlags, ResolveFlags, StatxFlags};
use rustix::io::Errno;
use tracing::info;

/// The layout version: the name of the version directory is `v` and this number.
pub const LAYOUT_VERSION: u32 = 1;
/// The version directory under the cache directory.
pub const VERSION_DIR: &str = "v1";
/// The shared byte counter (a mapped file).
pub const USAGE: &str = "usage";
/// The file whose byte ranges are the per-block fetch locks.
pub const LOCKS: &str = "locks";
/// The file whose `flock` separates writers (shared) from scans (exclusive).
pub const EVICT_LOCK: &str = "evict.lock";
/// 32 random bytes made once per cache directory: the key of credential fingerprints
/// (`app::identity`), so that nothing derived from credentials can be compared across machines.
pub const SALT: &str = "salt";
/// `identities/<fingerprint>`: the partition last learned from STS for one set of credentials.
pub const IDENTITIES: &str = "identities";
/// Shard directories per area: a few hundred entries each per TiB of blocks.
pub const SHARDS: u64 = 4096;
/// Space a directory takes (one filesystem block).
pub const DIR_BYTES: u64 = 4096;
/// Temp files older than this belong to a writer that died.
pub const STALE_TMP: Duration = Duration::from_secs(600);

/// The areas of the version directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    /// One file per block: `blocks/<shard>/<object hash>.<index>`.
    Blocks,
    /// Assembled objects: `full/<shard>/<object hash>` and its `.idx`.
    Full,
    /// Persisted metadata.
    Meta,
    /// Files being written by the data cache.
    Tmp,
}

impl Area {
    pub const ALL: [Area; 4] = [Area::Blocks, Area::Full, Area::Meta, Area::Tmp];

    pub const fn name(self) -> &'static str {
        match self {
            Area::Blocks => "blocks",
            Area::Full => "full",
            Area::Meta => "meta",
            Area::Tmp => "tmp",
        }
    }
}

/// `<cache_dir>/v1`.
pub fn version_path(cache_dir: &Path) -> PathBuf {
    cache_dir.join(VERSION_DIR)
}

/// `<cache_dir>/v1/<area>`.
pub fn area_path(cache_dir: &Path, area: Area) -> PathBuf {
    version_path(cache_dir).join(area.name())
}

/// The name of shard `n` (taken modulo [`SHARDS`]): three hex digits.
pub fn shard_name(n: u64) -> String {
    format!("{:03x}", n % SHARDS)
}

/// The shard of a name that starts with hex digits (a hash): its first three.
pub fn hex_shard(hex: &str) -> &str {
    &hex[..3]
}

/// Whether `name` is a shard directory's name.
pub fn is_shard_name(name: &OsStr) -> bool {
    name.to_str()
        .is_some_and(|n| n.len() == 3 && n.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Why the cache directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cache directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cache directory {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("cache directory {path} is owned by uid {owner}, not by this user (uid {me}) or root; refusing to use it")]
    WrongOwner { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "cache directory {path} (mode {mode:04o}) is writable by other users and not sticky, so they could replace \
         the cache's files; refusing to use it (remove group/other write permission, or name a private subdirectory)"
    )]
    Unsafe { path: PathBuf, mode: u32 },
}

impl From<OpenError> for io::Error {
    fn from(e: OpenError) -> io::Error {
        match e {
            OpenError::Io { source, .. } => source,
            other => io::Error::other(other.to_string()),
        }
    }
}

/// The cache directory for one operation (`CacheDir::base`).
enum Base<'a> {
    Held(BorrowedFd<'a>),
    Fresh(OwnedFd),
}

impl AsFd for Base<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Base::Held(fd) => *fd,
            Base::Fresh(fd) => fd.as_fd(),
        }
    }
}

/// The id of the mount `fd` was opened through, if `statx` tells.
fn mount_id(fd: &OwnedFd) -> Option<u64> {
    let st = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID).ok()?;
    StatxFlags::from_bits_retain(st.stx_mask)
        .contains(StatxFlags::MNT_ID)
        .then_some(st.stx_mnt_id)
}

/// Whether `openat2` may be tried (false once the kernel or a seccomp filter refused it).
static OPENAT2: AtomicBool = AtomicBool::new(true);

/// Flags of every directory opened on the way: never through a symlink.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

const PRIVATE_DIR: Mode = Mode::RWXU;
const PRIVATE_FILE: Mode = Mode::RUSR.union(Mode::WUSR);

/// The effective user.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Whether a file found in the cache may be trusted at all: a regular file of this user (the
/// owner check of every file read; the directory's own is in [`CacheDir::open`]).
pub fn is_own_file(meta: &fs::Metadata) -> bool {
    meta.is_file() && meta.uid() == euid()
}

/// An opened, owner-checked cache directory. See the module docs.
#[derive(Clone, Debug)]
pub struct CacheDir {
    path: PathBuf,
    /// The directory's identity (device, inode) when it was checked.
    id: (u64, u64),
    /// The directory as opened when it was checked, and the mount it was reached through
    /// (`None` where `statx` does not tell: every operation then opens the path again).
    held: Arc<(OwnedFd, Option<u64>)>,
}

/// One entry of a directory, as `lstat` sees it.
pub struct DirEntry {
    name: OsString,
    path: PathBuf,
    meta: fs::Metadata,
}

impl DirEntry {
    pub fn file_name(&self) -> OsString {
        self.name.clone()
    }

    pub fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// What it is, not following it.
    pub fn metadata(&self) -> &fs::Metadata {
        &self.meta
    }
}

/// Whether a directory can be used.
#[derive(Debug)]
pub enum DirState {
    /// Every component is a real directory.
    Real,
    /// A component does not exist.
    Missing,
    /// A component is something else (a symlink, a file): its path and what it is.
    NotADirectory(PathBuf, Option<fs::Metadata>),
}

impl CacheDir {
    /// Opens the cache directory `dir` (created 0700 with its parents if missing) and its
    /// version directory. An existing `dir` is never changed (mode, owner): it may be any
    /// directory, such as a filesystem's root, as long as nobody else can replace what is in it.
    /// It must belong to this user or to root, and must not be writable by group or others
    /// unless it is sticky (as `/tmp`). The version directory is ours: created 0700, refused if
    /// another user owns it, and restricted to 0700 if it is open to others.
    pub fn open(dir: &Path) -> Result<CacheDir, OpenError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source: io::Error| OpenError::Io { path, source }
        };
        {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err(dir))?;
        }
        // The configured path is resolved normally: the administrator chose it.
        let fd = match rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOTDIR) => return Err(OpenError::NotADirectory(dir.to_path_buf())),
            Err(e) => return Err(io_err(dir)(e.into())),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err(dir)(e.into()))?;
        let me = euid();
        if st.st_uid != me && st.st_uid != 0 {
            return Err(OpenError::WrongOwner {
                path: dir.to_path_buf(),
                owner: st.st_uid,
                me,
            });
        }
        if st.st_mode & 0o022 != 0 && st.st_mode & 0o1000 == 0 {
            return Err(OpenError::Unsafe {
                path: dir.to_path_buf(),
                mode: st.st_mode & 0o7777,
            });
        }
        let mnt_id = mount_id(&fd);
        let cache = CacheDir {
            path: dir.to_path_buf(),
            id: (st.st_dev, st.st_ino),
            held: Arc::new((fd, mnt_id)),
        };
        let version = cache.version_path();
        cache.create_dir(&version)?;
        let (vfd, _) = cache.open_dir(&version, None).map_err(io_err(&version))?;
        let vst = rustix::fs::fstat(&vfd).map_err(|e| io_err(&version)(e.into()))?;
        if vst.st_uid != me {
            return Err(OpenError::WrongOwner {
                path: version,
                owner: vst.st_uid,
                me,
            });
        }
        if vst.st_mode & 0o077 != 0 {
            info!(dir = %version.display(), "restricting the cache's version directory to 0700");
            rustix::fs::fchmod(&vfd, PRIVATE_DIR).map_err(|e| io_err(&version)(e.into()))?;
        }
        Ok(cache)
    }

    /// Creates (0700) directory `path` if it is missing; its parent must exist. Fails with
    /// `NotADirectory` when something else (a symlink, a file) is in its place.
    pub fn create_dir(&self, path: &Path) -> Result<(), OpenError> {
        match self.open_dir(path, Some(path.parent().unwrap_or(path))) {
            Ok(_) => Ok(()),
            Err(e) if matches!(Errno::from_io_error(&e), Some(Errno::NOTDIR | Errno::LOOP)) => {
                Err(OpenError::NotADirectory(path.to_path_buf()))
            }
            Err(source) => Err(OpenError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// The cache directory for one operation: the directory the configured path leads to now
    /// (so a read-only bind mount or a removal of the directory under a running daemon takes
    /// effect), which must be the one checked at `open`. One `statx` of the path when it still
    /// leads to that directory through the same mount: then the descriptor opened at `open`,
    /// which is that very directory (same device and inode, and held open, so never another
    /// one under a reused number). Otherwise the path is opened again ([`CacheDir::reopen`]).
    fn base(&self) -> io::Result<Base<'_>> {
        let (fd, mnt_id) = &*self.held;
        if let Some(mnt_id) = mnt_id {
            let want = StatxFlags::TYPE | StatxFlags::INO | StatxFlags::MNT_ID;
            if let Ok(st) = rustix::fs::statx(rustix::fs::CWD, &self.path, AtFlags::empty(), want)
                && StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::MNT_ID)
                && (rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor), st.stx_ino) == self.id
                && st.stx_mnt_id == *mnt_id
            {
                return Ok(Base::Held(fd.as_fd()));
            }
        }
        self.reopen().map(Base::Fresh)
    }

    /// The cache directory, opened again by its configured path, which must lead to the
    /// directory checked at `open`.
    fn reopen(&self) -> io::Result<OwnedFd> {
        let fd = rustix::fs::open(
            &self.path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        if (st.st_dev, st.st_ino) != self.id {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} is no longer the cache directory checked at start",
                    self.path.display()
                ),
            ));
        }
        Ok(fd)
    }

    /// The cache directory, as configured.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<dir>/v1`.
    pub fn version_path(&self) -> PathBuf {
        version_path(&self.path)
    }

    /// `<dir>/v1/<area>`.
    pub fn area(&self, area: Area) -> PathBuf {
        area_path(&self.path, area)
    }

    /// `path` relative to the cache directory, if it is below it and has only normal
    /// components.
    fn relative<'a>(&self, path: &'a Path) -> io::Result<&'a Path> {
        let rel = path.strip_prefix(&self.path).map_err(|_| outside(path))?;
        if rel.components().all(|c| matches!(c, Component::Normal(_))) {
            Ok(rel)
        } else {
            Err(outside(path))
        }
    }

    /// Opens directory `path`, walking from the cache directory without following anything.
    /// Missing directories below `create_below` (itself an ancestor of `path` or `path`) are
    /// created (0700). Returns the directory and how many directories were created.
    fn open_dir(&self, path: &Path, create_below: Option<&Path>) -> io::Result<(OwnedFd, u32)> {
        let rel = self.relative(path)?;
        let keep = match create_below {
            Some(base) => self.relative(base)?.components().count(),
            None => usize::MAX,
        };
        let base = self.base()?;
        // One call for the whole walk where the kernel has `openat2`: it refuses a symlink in
        // any component (`RESOLVE_NO_SYMLINKS`) and any way out of the base, so it opens what
        // the walk below would, with no descriptor per level. A missing directory that may be
        // created, and a kernel or sandbox without `openat2`, take the walk.
        if !rel.as_os_str().is_empty() && OPENAT2.load(Ordering::Relaxed) {
            let resolve = ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS | ResolveFlags::BENEATH;
            match rustix::fs::openat2(&base, rel, DIR_FLAGS, Mode::empty(), resolve) {
                Ok(fd) => return Ok((fd, 0)),
                Err(Errno::NOENT) if keep != usize::MAX => {}
                Err(Errno::NOSYS | Errno::PERM | Errno::INVAL) => {
                    OPENAT2.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut dir = match base {
            Base::Fresh(fd) => fd,
            // The walk needs a descriptor it owns; it starts from the held one.
            Base::Held(fd) => rustix::io::fcntl_dupfd_cloexec(fd, 0)?,
        };
        let mut created = 0;
        for (i, c) in rel.components().enumerate() {
            let name = c.as_os_str();
            let next = match rustix::fs::openat(&dir, name, DIR_FLAGS, Mode::empty()) {
                Err(Errno::NOENT) if i >= keep => {
                    match rustix::fs::mkdirat(&dir, name, PRIVATE_DIR) {
                        Ok(()) => created += 1,
                        Err(Errno::EXIST) => {} // another writer made it
                        Err(e) => return Err(e.into()),
                    }
                    rustix::fs::openat(&dir, name, DIR_FLAGS, Mode::empty())?
                }
                r => r?,
            };
            dir = next;
        }
        Ok((dir, created))
    }

    /// The directory holding `path` (walked as `open_dir`) and `path`'s last component.
    fn parent_of<'a>(&self, path: &'a Path, create_below: Option<&Path>) -> io::Result<(OwnedFd, &'a OsStr, u32)> {
        self.relative(path)?;
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(outside(path));
        };
        let (dir, created) = self.open_dir(parent, create_below)?;
        Ok((dir, name, created))
    }

    /// Whether every directory from the cache directory down to `dir` is a real directory.
    pub fn dir_state(&self, dir: &Path) -> DirState {
        let Ok(rel) = self.relative(dir) else {
            return DirState::Missing;
        };
        let mut fd = match self.reopen() {
            Ok(fd) => fd,
            Err(_) => return DirState::Missing,
        };
        let mut at = self.path.clone();
        for c in rel.components() {
            at.push(c);
            match rustix::fs::openat(&fd, c.as_os_str(), DIR_FLAGS, Mode::empty()) {
                Ok(next) => fd = next,
                Err(Errno::NOTDIR | Errno::LOOP) => {
                    let meta = stat_at(&fd, c.as_os_str()).ok();
                    return DirState::NotADirectory(at, meta);
                }
                Err(_) => return DirState::Missing,
            }
        }
        DirState::Real
    }

    /// How many directories of `dir` (a path under the cache directory) do not exist.
    pub fn missing_dirs(&self, dir: &Path) -> u64 {
        let Ok(rel) = self.relative(dir) else { return 0 };
        let Ok(mut fd) = self.reopen() else { return 0 };
        let total = rel.components().count();
        for (i, c) in rel.components().enumerate() {
            match rustix::fs::openat(&fd, c.as_os_str(), DIR_FLAGS, Mode::empty()) {
                Ok(next) => fd = next,
                Err(_) => return (total - i) as u64,
            }
        }
        0
    }

    /// Opens file `path` for reading (`O_NOFOLLOW`), with `O_NONBLOCK` if `nonblock` (then a
    /// FIFO planted in the cache never blocks the open).
    pub fn open_read(&self, path: &Path, nonblock: bool) -> io::Result<File> {
        let (dir, name, _) = self.parent_of(path, None)?;
        let mut flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if nonblock {
            flags |= OFlags::NONBLOCK;
        }
        Ok(File::from(rustix::fs::openat(&dir, name, flags, Mode::empty())?))
    }

    /// Opens existing file `path` for reading and writing (`O_NOFOLLOW`, `O_NONBLOCK`).
    pub fn open_write(&self, path: &Path) -> io::Result<File> {
        let (dir, name, _) = self.parent_of(path, None)?;
        let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        Ok(File::from(rustix::fs::openat(&dir, name, flags, Mode::empty())?))
    }

    /// Opens (creating, 0600) a file for reading and writing, such as a control file.
    pub fn open_private(&self, path: &Path) -> io::Result<File> {
        let (dir, name, _) = self.parent_of(path, None)?;
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Ok(File::from(rustix::fs::openat(&dir, name, flags, PRIVATE_FILE)?))
    }

    /// What `path` is, without following it (`lstat`).
    pub fn metadata(&self, path: &Path) -> io::Result<fs::Metadata> {
        if self.relative(path)?.as_os_str().is_empty() {
            return File::from(self.reopen()?).metadata();
        }
        let (dir, name, _) = self.parent_of(path, None)?;
        stat_at(&dir, name)
    }

    /// Removes file `path` (or symlink: never its target).
    pub fn remove_file(&self, path: &Path) -> io::Result<()> {
        let (dir, name, _) = self.parent_of(path, None)?;
        Ok(rustix::fs::unlinkat(&dir, name, AtFlags::empty())?)
    }

    /// Removes the empty directory `path`.
    pub fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let (dir, name, _) = self.parent_of(path, None)?;
        Ok(rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR)?)
    }

    /// Removes `path` and, if it is a directory, everything below it (no symlink followed).
    pub fn remove_tree(&self, path: &Path) -> io::Result<()> {
        let (dir, name, _) = self.parent_of(path, None)?;
        remove_tree_at(&dir, name)
    }

    /// The entries of directory `path`, with what each is (`lstat`).
    pub fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let (dir, _) = self.open_dir(path, None)?;
        let mut out = Vec::new();
        for name in names(&dir)? {
            if let Ok(meta) = stat_at(&dir, &name) {
                out.push(DirEntry {
                    path: path.join(&name),
                    name,
                    meta,
                });
            }
        }
        Ok(out)
    }

    /// The names in directory `path`, without looking at what each is (cheaper than
    /// [`CacheDir::read_dir`] for large directories).
    pub fn list_names(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let (dir, _) = self.open_dir(path, None)?;
        names(&dir)
    }

    /// Bytes on disk of `path` and everything below it (0 when absent).
    pub fn tree_size(&self, path: &Path) -> u64 {
        let Ok(meta) = self.metadata(path) else { return 0 };
        let mut total = meta.blocks() * 512;
        if meta.is_dir()
            && let Ok((dir, _)) = self.open_dir(path, None)
        {
            total += tree_size_below(&dir);
        }
        total
    }

    /// A new temp file in directory `tmp_dir` (created below `create_below` if missing), named
    /// `<pid>.<sequence>.<suffix>`: names never collide between processes or threads.
    pub fn temp(&self, tmp_dir: &Path, suffix: &str, create_below: Option<&Path>) -> io::Result<TempFile<'_>> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let (dir, _) = self.open_dir(tmp_dir, create_below)?;
        let name = OsString::from(format!(
            "{}.{}.{suffix}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let file = File::from(rustix::fs::openat(&dir, &name, flags, PRIVATE_FILE)?);
        Ok(TempFile {
            cache: self,
            path: tmp_dir.join(&name),
            dir,
            name,
            file,
            placed: false,
        })
    }

    /// (available bytes, total bytes) of the filesystem holding the cache.
    pub fn space(&self) -> Option<(u64, u64)> {
        let st = rustix::fs::fstatvfs(self.base().ok()?).ok()?;
        Some((st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize))
    }
}

/// `lstat` of `name` in `dir`, as std metadata.
fn stat_at(dir: &OwnedFd, name: &OsStr) -> io::Result<fs::Metadata> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    File::from(fd).metadata()
}

/// The names in `dir` (without `.` and `..`).
fn names(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    let mut out = Vec::new();
    for e in Dir::read_from(dir.as_fd())? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(out)
}

fn remove_tree_at(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Err(Errno::ISDIR | Errno::PERM) => {
            let sub = rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())?;
            for n in names(&sub)? {
                remove_tree_at(&sub, &n)?;
            }
            Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
        }
        r => Ok(r?),
    }
}

fn tree_size_below(dir: &OwnedFd) -> u64 {
    let Ok(names) = names(dir) else { return 0 };
    let mut total = 0;
    for n in names {
        let Ok(m) = stat_at(dir, &n) else { continue };
        total += m.blocks() * 512;
        if m.is_dir()
            && let Ok(sub) = rustix::fs::openat(dir, &n, DIR_FLAGS, Mode::empty())
        {
            total += tree_size_below(&sub);
        }
    }
    total
}

fn outside(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{} is not a path inside the cache directory", path.display()),
    )
}

mod temp;

pub use temp::{Placed, TempFile};

#[cfg(test)]
mod tests;
