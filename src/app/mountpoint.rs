//! Checks a mountpoint before anything is started, so a bad one fails fast with a clear
//! message: it must exist, be a directory, be empty and not be mounted on already.

use std::io;
use std::path::Path;

use anyhow::bail;

pub fn check(path: &Path) -> anyhow::Result<()> {
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!("mountpoint {shown} does not exist"),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            // A FUSE mount whose daemon died ("Transport endpoint is not connected"): clear it.
            if let Err(e) = clear_stale(path) {
                bail!(
                    "mountpoint {shown} is a stale FUSE mount (transport endpoint is not connected) \
                     and clearing it failed: {e}; run `fusermount3 -uz {shown}` (or, as root, \
                     `umount -l {shown}`) and mount again"
                );
            }
            eprintln!("s3cachefs: cleared a stale mount at {shown} left by a daemon that exited");
            std::fs::metadata(path).map_err(|e| anyhow::anyhow!("cannot access mountpoint {shown}: {e}"))?
        }
        Err(e) => bail!("cannot access mountpoint {shown}: {e}"),
    };
    if !meta.is_dir() {
        bail!("mountpoint {shown} is not a directory");
    }
    let canonical = path.canonicalize()?;
    if is_mount_point(&canonical)? {
        bail!("mountpoint {shown} is already a mount point (unmount it first)");
    }
    match std::fs::read_dir(path) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!("mountpoint {shown} is not empty");
            }
        }
        Err(e) => bail!("cannot read mountpoint {shown}: {e}"),
    }
    Ok(())
}

/// Detaches a stale FUSE mount: `umount2(MNT_DETACH)` as root; otherwise (EPERM) through
/// `fusermount3 -uz`, the setuid helper that lets a user unmount a FUSE mount of their own.
fn clear_stale(path: &Path) -> anyhow::Result<()> {
    match crate::fuse::lazy_unmount(path) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let out = std::process::Command::new("fusermount3")
                .arg("-uz")
                .arg(path)
                .output()
                .map_err(|f| anyhow::anyhow!("{e}, and fusermount3 could not run: {f}"))?;
            if out.status.success() {
                Ok(())
            } else {
                bail!(
                    "{e}, and fusermount3 -uz failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether `path` (canonical) is the mount point of some mount, per /proc/self/mountinfo.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let want = path.to_string_lossy();
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape(m) == want))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert!(is_mount_point(Path::new("/")).unwrap());
    }
}
