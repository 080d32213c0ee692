//! Mounting and unmounting: builds the fuser session with our options.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use tracing::warn;

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
}

pub struct Mounted {
    session: Session<FuseAdapter>,
    mountpoint: PathBuf,
}

/// Mounts `adapter` at `mountpoint`. When this returns the mount is live (the kernel's INIT
/// has been answered).
pub fn mount(adapter: FuseAdapter, mountpoint: &Path, opts: &MountOptions) -> io::Result<Mounted> {
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
    config.acl = match (opts.allow_other, opts.allow_root) {
        (true, _) => SessionACL::All,
        (false, true) => SessionACL::RootAndOwner,
        (false, false) => SessionACL::Owner,
    };
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    let notifier = adapter.notifier_slot();
    let session = Session::new(adapter, mountpoint, &config)?;
    let _ = notifier.set(session.notifier());
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

/// `umount -l`: detach now, clean up when no longer busy.
pub fn lazy_unmount(path: &Path) -> io::Result<()> {
    rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH).map_err(io::Error::from)
}
