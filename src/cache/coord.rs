//! Coordination between every process using one cache directory, through the kernel only
//! (nothing to clean up when a process dies):
//! - `StripeLocks`: per-block fetch locks as OFD byte-range locks on one empty file; the
//!   kernel drops them when the holder's descriptor closes, including on `kill -9`.
//! - `Usage`: the shared byte counter of the cache, an atomic in a `MAP_SHARED` mapping, so
//!   the size bound holds across processes without a scan.
//! - `evict.lock`: writers hold it shared from reserving space until their block is in place;
//!   a scan (eviction, counter re-synchronization) holds it exclusive, so it never runs while a
//!   reservation is outstanding and the counter it computes is exact.
//!
//! The files are opened through `CacheDir::open_private`: created 0600, never through a symlink.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cachedir::CacheDir;

/// Distinct lock stripes; two blocks share one with probability 1/65536, which only makes one
/// wait for the other's fetch.
pub const STRIPES: u64 = 1 << 16;

pub struct StripeLocks {
    dir: CacheDir,
    path: PathBuf,
}

/// A held stripe lock; released on drop (the descriptor closes).
pub struct StripeGuard {
    _file: File,
}

impl StripeLocks {
    pub fn new(dir: CacheDir, path: PathBuf) -> io::Result<StripeLocks> {
        dir.open_private(&path)?;
        Ok(StripeLocks { dir, path })
    }

    /// Blocks until stripe `n` is ours. Each call opens its own descriptor (its own open file
    /// description), so threads of one process exclude each other as processes do.
    pub fn lock(&self, n: u64) -> io::Result<StripeGuard> {
        let file = self.dir.open_private(&self.path)?;
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as _;
        fl.l_whence = libc::SEEK_SET as _;
        fl.l_start = (n % STRIPES) as _;
        fl.l_len = 1;
        loop {
            // SAFETY: valid descriptor and a fully initialized flock struct.
            if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLKW, &fl) } == 0 {
                return Ok(StripeGuard { _file: file });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Takes an exclusive `flock` without waiting; `None` if another process holds it.
pub fn try_exclusive(dir: &CacheDir, path: &Path) -> io::Result<Option<File>> {
    let file = dir.open_private(path)?;
    // SAFETY: valid descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        Ok(Some(file))
    } else {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(e)
        }
    }
}

/// Takes an exclusive `flock`, waiting for it.
pub fn exclusive(dir: &CacheDir, path: &Path) -> io::Result<File> {
    flock(dir, path, libc::LOCK_EX)
}

/// Takes a shared `flock`, waiting for it (on its own descriptor, so threads are independent).
pub fn shared(dir: &CacheDir, path: &Path) -> io::Result<File> {
    flock(dir, path, libc::LOCK_SH)
}

fn flock(dir: &CacheDir, path: &Path, op: i32) -> io::Result<File> {
    let file = dir.open_private(path)?;
    loop {
        // SAFETY: valid descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(file);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

const USAGE_MAGIC: u64 = u64::from_le_bytes(*b"S3CFSUSE");
/// The mapping: magic at 0, bytes in use at 8. One page.
const USAGE_LEN: usize = 4096;

/// Bytes the cache occupies on disk, shared by every process through a shared mapping.
pub struct Usage {
    ptr: *mut u8,
    /// True when the counter was (re)initialized and needs a scan to become exact.
    pub fresh: bool,
}

// SAFETY: the mapping is only accessed through atomics.
unsafe impl Send for Usage {}
unsafe impl Sync for Usage {}

impl Usage {
    pub fn open(dir: &CacheDir, path: &Path) -> io::Result<Usage> {
        let file = dir.open_private(path)?;
        let len = file.metadata()?.len();
        let fresh = len != USAGE_LEN as u64;
        if fresh {
            file.set_len(USAGE_LEN as u64)?;
        }
        // SAFETY: mapping a file we opened read-write, of the length we just ensured.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                USAGE_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut usage = Usage {
            ptr: ptr as *mut u8,
            fresh,
        };
        let magic = usage.atomic(0);
        if magic.load(Ordering::Acquire) != USAGE_MAGIC {
            usage.atomic(8).store(0, Ordering::Release);
            magic.store(USAGE_MAGIC, Ordering::Release);
            usage.fresh = true;
        }
        Ok(usage)
    }

    fn atomic(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: offset is 0 or 8 within a page-aligned mapping of USAGE_LEN bytes that lives
        // as long as self; AtomicU64 has the alignment (8) the offset keeps.
        unsafe { &*(self.ptr.add(offset) as *const AtomicU64) }
    }

    pub fn get(&self) -> u64 {
        self.atomic(8).load(Ordering::Acquire)
    }

    /// Adds `n` only if the total stays within `limit`.
    pub fn try_reserve(&self, n: u64, limit: u64) -> bool {
        let a = self.atomic(8);
        let mut cur = a.load(Ordering::Acquire);
        loop {
            let Some(next) = cur.checked_add(n).filter(|&v| v <= limit) else {
                return false;
            };
            match a.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(v) => cur = v,
            }
        }
    }

    pub fn add(&self, n: u64) {
        self.atomic(8).fetch_add(n, Ordering::AcqRel);
    }

    pub fn sub(&self, n: u64) {
        let a = self.atomic(8);
        let _ = a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_sub(n)));
    }

    pub fn set(&self, n: u64) {
        self.atomic(8).store(n, Ordering::Release);
    }
}

impl Drop for Usage {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping created in `open`.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, USAGE_LEN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn usage_is_shared_between_mappings_and_bounded() {
        let d = tempfile::tempdir().unwrap();
        let dir = CacheDir::open(d.path()).unwrap();
        let a = Usage::open(&dir, &d.path().join("usage")).unwrap();
        assert!(a.fresh);
        let b = Usage::open(&dir, &d.path().join("usage")).unwrap();
        assert!(!b.fresh);
        assert!(a.try_reserve(60, 100));
        assert!(!b.try_reserve(50, 100), "the bound holds across mappings");
        assert!(b.try_reserve(40, 100));
        assert_eq!(a.get(), 100);
        b.sub(30);
        assert_eq!(a.get(), 70);
    }

    #[test]
    fn stripe_locks_exclude_threads_and_release_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let dir = CacheDir::open(d.path()).unwrap();
        let locks = Arc::new(StripeLocks::new(dir, d.path().join("locks")).unwrap());
        let g = locks.lock(7).unwrap();
        let other = locks.lock(8).unwrap(); // another stripe is free
        drop(other);
        let l2 = locks.clone();
        let t = Instant::now();
        let waiter = std::thread::spawn(move || {
            let _g = l2.lock(7 + STRIPES).unwrap(); // same stripe
            Instant::now()
        });
        std::thread::sleep(Duration::from_millis(100));
        drop(g);
        let acquired = waiter.join().unwrap();
        assert!(acquired.duration_since(t) >= Duration::from_millis(100));
    }

    #[test]
    fn flock_election() {
        let d = tempfile::tempdir().unwrap();
        let dir = CacheDir::open(d.path()).unwrap();
        let p = d.path().join("evict.lock");
        let first = try_exclusive(&dir, &p).unwrap();
        assert!(first.is_some());
        assert!(try_exclusive(&dir, &p).unwrap().is_none());
        drop(first);
        assert!(try_exclusive(&dir, &p).unwrap().is_some());
    }
}
