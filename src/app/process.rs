//! Backgrounding: fork before any thread exists, and a readiness pipe through which the child
//! reports "mounted" or the reason it failed, so the parent's exit status tells whether the
//! mount is live. Then the daemon detaches its standard streams.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::bail;

/// Forks; the parent waits for the child's report and exits. Returns the write end of the
/// report pipe in the child.
pub(super) fn daemonize() -> anyhow::Result<OwnedFd> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("cannot create pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors that we now own.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other thread exists yet (no runtime, no logging threads), so fork is sound.
    match unsafe { libc::fork() } {
        -1 => bail!("cannot fork: {}", std::io::Error::last_os_error()),
        0 => {
            drop(r);
            // SAFETY: setsid and chdir have no memory-safety preconditions. Leaving the
            // starting directory keeps the daemon from holding it busy.
            unsafe {
                libc::setsid();
                libc::chdir(c"/".as_ptr());
            }
            Ok(w)
        }
        _ => {
            drop(w);
            let mut msg = String::new();
            let _ = std::fs::File::from(r).read_to_string(&mut msg);
            match msg.strip_prefix("ok") {
                Some(_) => std::process::exit(0),
                None if msg.is_empty() => {
                    eprintln!("s3cachefs: error: the daemon exited before the mount was ready (see its log)");
                    std::process::exit(1)
                }
                None => {
                    eprintln!("s3cachefs: error: {msg}");
                    std::process::exit(1)
                }
            }
        }
    }
}

/// Tells the waiting parent how the start went: `ok`, or the reason it failed.
pub(super) fn report(ready: OwnedFd, msg: &str) {
    let _ = std::fs::File::from(ready).write_all(msg.as_bytes());
}

/// Detaches the daemon's standard streams from the terminal of whoever started it.
pub(super) fn detach_stdio() {
    // SAFETY: plain syscalls on descriptors we own; /dev/null always exists on Linux.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
}
