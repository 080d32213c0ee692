//! Backgrounding: fork before any thread exists, and a readiness pipe through which the child
//! reports "mounted" or the reason it failed, so the parent's exit status tells whether the
//! mount is live. Then the daemon detaches its standard streams.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use anyhow::bail;

/// Forks; the parent waits for the child's report and exits. Returns the write end of the
/// report pipe in the child.
pub(super) fn daemonize() -> anyhow::Result<OwnedFd> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| anyhow::anyhow!("cannot create pipe: {}", std::io::Error::from(e)))?;
    // SAFETY: no other thread exists yet (no runtime, no logging threads), so fork is sound.
    match unsafe { libc::fork() } {
        -1 => bail!("cannot fork: {}", std::io::Error::last_os_error()),
        0 => {
            drop(r);
            // A session of its own; leaving the starting directory keeps the daemon from
            // holding it busy. Neither can fail here (a fresh child is no group leader).
            let _ = rustix::process::setsid();
            let _ = std::env::set_current_dir("/");
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
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        let _ = rustix::stdio::dup2_stdin(&null);
        let _ = rustix::stdio::dup2_stdout(&null);
        let _ = rustix::stdio::dup2_stderr(&null);
    }
}
