//! Mounting and unmounting: builds the fuser session with our options, and the FUSE connection
//! parameters (`Tuning`) chosen by `benches/fuse_sweep.rs` (docs/BENCHMARKS.md, "FUSE parameters").

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use tracing::{info, warn};

use super::FuseAdapter;

/// How the mount is presented to the system.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Shown as the source in /proc/mounts (e.g. the bucket).
    pub fsname: String,
    pub allow_other: bool,
    pub allow_root: bool,
    /// Threads reading requests from /dev/fuse (each with its own cloned fd).
    pub threads: usize,
    pub tuning: Tuning,
}

/// FUSE connection parameters; `None` is the default chosen by measurement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuning {
    /// The kernel's read-ahead on the mount, in bytes [default: the block size, at most 1 MiB].
    /// The kernel starts a FUSE mount's backing device at its own default (`read_ahead_kb` 128)
    /// and INIT can only lower it, so the value is written to
    /// `/sys/class/bdi/MAJOR:MINOR/read_ahead_kb` once the mount is live.
    pub read_ahead: Option<u32>,
    /// Largest read request, in bytes (mount option `max_read=`); the kernel's own bound is
    /// `fs.fuse.max_pages_limit` pages (256: 1 MiB).
    pub max_read: Option<u32>,
    /// Background requests (read-ahead, async reads) the kernel keeps in flight.
    pub max_background: Option<u16>,
    /// Each session thread reads from its own cloned /dev/fuse descriptor.
    pub clone_fd: Option<bool>,
}

/// Background requests in flight at once by default.
pub const DEFAULT_MAX_BACKGROUND: u16 = 64;
/// Session threads clone the /dev/fuse descriptor by default.
pub const DEFAULT_CLONE_FD: bool = true;

pub struct Mounted {
    session: Session<FuseAdapter>,
    mountpoint: PathBuf,
}

/// Mounts `adapter` at `mountpoint`. When this returns the mount is live (the kernel's INIT
/// has been answered).
pub fn mount(mut adapter: FuseAdapter, mountpoint: &Path, opts: &MountOptions) -> io::Result<Mounted> {
    adapter.tuning = opts.tuning;
    let read_ahead = opts.tuning.read_ahead.unwrap_or(adapter.max_read);
    // Before the mount: once it exists, a stat of it waits for the session to serve it.
    let canonical = mountpoint.canonicalize()?;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(opts.fsname.clone()),
        // Shown as the type `fuse.s3cachefs` in /proc/mounts (the kernel reads it from the data).
        MountOption::CUSTOM("subtype=s3cachefs".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
        // The kernel enforces the modes we report (--file-mode/--dir-mode, --uid/--gid).
        MountOption::DefaultPermissions,
    ];
    if let Some(n) = opts.tuning.max_read {
        config.mount_options.push(MountOption::CUSTOM(format!("max_read={n}")));
    }
    config.acl = match (opts.allow_other, opts.allow_root) {
        (true, _) => SessionACL::All,
        (false, true) => SessionACL::RootAndOwner,
        (false, false) => SessionACL::Owner,
    };
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = opts.tuning.clone_fd.unwrap_or(DEFAULT_CLONE_FD);
    let notifier = adapter.notifier_slot();
    let session = Session::new(adapter, mountpoint, &config)?;
    let _ = notifier.set(session.notifier());
    // The kernel's read-ahead, raised from its 128 KiB (measured with 1 MiB: 8× fewer FUSE read
    // requests, less daemon CPU, a columnar reader's GETs 26 instead of 97; docs/BENCHMARKS.md,
    // "FUSE parameters"). Only root may; others keep the kernel's.
    match set_read_ahead(&canonical, read_ahead) {
        Ok(kib) => info!(mountpoint = %mountpoint.display(), "kernel read-ahead {kib} KiB"),
        Err(e) if opts.tuning.read_ahead.is_some() => {
            warn!(mountpoint = %mountpoint.display(), "cannot set the kernel read-ahead: {e}")
        }
        Err(e) => info!(mountpoint = %mountpoint.display(), "kernel read-ahead left at the kernel's: {e}"),
    }
    Ok(Mounted {
        session,
        mountpoint: mountpoint.to_path_buf(),
    })
}

impl Mounted {
    /// A handle that unmounts from another thread (signal handling).
    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter {
            inner: Arc::new(Mutex::new(self.session.unmount_callable())),
            mountpoint: self.mountpoint.clone(),
        }
    }

    /// Serves requests until the filesystem is unmounted. The kernel ends a session with
    /// `ENODEV`, or with `ECONNABORTED` when its teardown of the connection (the unmount of a
    /// lazily detached mount, or an abort through `/sys/fs/fuse/connections`) races a request
    /// being read: both end the session, neither is a failure of the daemon.
    pub fn run(self) -> io::Result<()> {
        match self.session.run() {
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
                tracing::info!(mountpoint = %self.mountpoint.display(), "the kernel closed the FUSE connection");
                Ok(())
            }
            r => r,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmounted {
    Clean,
    /// Lazily detached while busy: files still open on it keep the connection alive.
    Detached,
}

#[derive(Clone)]
pub struct Unmounter {
    inner: Arc<Mutex<SessionUnmounter>>,
    mountpoint: PathBuf,
}

impl Unmounter {
    /// Unmounts; if the mount is busy (a process has it as its working directory or holds a
    /// file open), detaches it lazily instead and returns `Unmounted::Detached`: the session
    /// then only ends when the daemon closes /dev/fuse, i.e. exits.
    pub fn unmount(&self) -> io::Result<Unmounted> {
        match self.inner.lock().unwrap().unmount() {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                warn!(mountpoint = %self.mountpoint.display(), "mount is busy; detaching it lazily");
                lazy_unmount(&self.mountpoint).map(|()| Unmounted::Detached)
            }
            r => r.map(|()| Unmounted::Clean),
        }
    }
}

/// Sets the read-ahead of the live FUSE mount at `mountpoint` (canonical) to `bytes`: its
/// backing device is named by the mount's device number, which /proc/self/mountinfo gives (a
/// `stat` of the mount point would wait for the session, which is not serving yet). Returns
/// the value the kernel reports back, in KiB.
fn set_read_ahead(mountpoint: &Path, bytes: u32) -> io::Result<u64> {
    let want = escape_mountinfo(&mountpoint.to_string_lossy());
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    // The last line for the path is the newest mount on it: ours.
    let dev = info
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .filter_map(|l| l.split(' ').nth(2))
        .next_back()
        .ok_or_else(|| io::Error::other(format!("{} is not in /proc/self/mountinfo", mountpoint.display())))?;
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    std::fs::write(&path, format!("{}\n", bytes / 1024))
        .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    let back = std::fs::read_to_string(&path)?;
    back.trim()
        .parse()
        .map_err(|_| io::Error::other(format!("{path}: unexpected content {back:?}")))
}

/// A path as /proc/self/mountinfo writes it: space, tab, newline and backslash as `\ooo`.
fn escape_mountinfo(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// `umount -l`: detach now, clean up when no longer busy.
pub fn lazy_unmount(path: &Path) -> io::Result<()> {
    rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(escape_mountinfo("/mnt/a b\\c\td"), r"/mnt/a\040b\134c\011d");
        assert_eq!(escape_mountinfo("/plain"), "/plain");
    }
}
