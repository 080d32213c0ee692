//! Large directories through real FUSE: one paginated LIST pass with nothing per entry,
//! READDIRPLUS attributes (no lookup per entry), every name exactly once, inodes dropped when
//! the kernel forgets them, and extended-attribute requests stopped after the first.

mod common;

use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    r.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// The value of one series of the daemon's /metrics (0 when absent).
fn metric(port: u16, series: &str) -> f64 {
    http_get(port, "/metrics")
        .lines()
        .find(|l| l.rsplit_once(' ').is_some_and(|(s, _)| s == series))
        .map_or(0.0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

fn fuse_ops(port: u16, op: &str) -> f64 {
    metric(port, &format!("s3cachefs_fuse_operations_total{{operation=\"{op}\"}}"))
}

fn mount_with_metrics(s: &TestServer, extra: &[&str]) -> (Mount, u16) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec!["--metrics-addr", &addr];
    args.extend_from_slice(extra);
    (Mount::new(s, BUCKET, &args), port)
}

const N: usize = 20_000;

fn size_of(i: usize) -> usize {
    i % 13
}

#[test]
fn large_directory_lists_once_with_attributes_and_forgets() {
    let s = server();
    for i in 0..N {
        s.put(BUCKET, &format!("big/f{i:05}"), vec![b'a' + (i % 26) as u8; size_of(i)]);
    }
    let (m, port) = mount_with_metrics(&s, &["--metadata-ttl", "indefinite"]);
    let dir = m.join("big");
    assert!(fs::metadata(&dir).unwrap().is_dir());
    s.reset_counts();
    let lookups = fuse_ops(port, "lookup");
    let getattrs = fuse_ops(port, "getattr");

    // Every name exactly once, with its size, from one paginated pass and nothing per entry.
    let mut seen = HashSet::new();
    for e in fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let i: usize = name.strip_prefix('f').unwrap().parse().unwrap();
        assert_eq!(e.metadata().unwrap().len(), size_of(i) as u64, "{name}");
        assert!(seen.insert(name.clone()), "{name} listed twice");
    }
    assert_eq!(seen.len(), N);
    let c = s.counts();
    assert_eq!(c.list, N.div_ceil(1000) as u64, "one LIST per page of 1,000: {c:?}");
    assert_eq!((c.head, c.get), (0, 0), "{c:?}");
    // The attributes came with the listing: no lookup or getattr per entry reached the daemon.
    assert_eq!(
        fuse_ops(port, "lookup"),
        lookups,
        "READDIRPLUS gives the kernel each entry"
    );
    assert_eq!(fuse_ops(port, "getattr"), getattrs);
    assert!(fuse_ops(port, "readdirplus") > 0.0);
    let held = metric(port, "s3cachefs_inodes");
    assert!(held >= (N + 2) as f64, "root, big/ and every entry: {held}");

    // The kernel forgets the names (SIGHUP invalidates every entry it holds): the daemon drops
    // their inodes.
    unsafe { libc::kill(m.pid() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut held = f64::MAX;
    while Instant::now() < deadline {
        held = metric(port, "s3cachefs_inodes");
        if held <= 2.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(held <= 2.0, "inodes still held after the kernel forgot them: {held}");
    assert!(fuse_ops(port, "forget") >= N as f64);

    // The names still resolve, with the same content.
    for i in [0, 1, 4_999, N - 1] {
        let p = dir.join(format!("f{i:05}"));
        assert_eq!(
            fs::read(&p).unwrap(),
            vec![b'a' + (i % 26) as u8; size_of(i)],
            "{}",
            p.display()
        );
    }
    let again = fs::read_dir(&dir).unwrap().count();
    assert_eq!(again, N);
}

fn xattr_errno(path: &Path, list: bool) -> i32 {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new("user.s3.etag").unwrap();
    let mut buf = [0u8; 256];
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe {
        if list {
            libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        } else {
            libc::lgetxattr(c.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        }
    };
    assert_eq!(r, -1);
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

#[test]
fn xattr_requests_stop_after_the_first() {
    let s = server();
    s.put(BUCKET, "d/a", b"1".to_vec());
    s.put(BUCKET, "d/b", b"2".to_vec());
    let (m, port) = mount_with_metrics(&s, &[]);
    for p in [m.join("d/a"), m.join("d/b"), m.join("d"), m.join("d/a")] {
        assert_eq!(xattr_errno(&p, false), libc::EOPNOTSUPP, "{}", p.display());
        assert_eq!(xattr_errno(&p, true), libc::EOPNOTSUPP, "{}", p.display());
    }
    // The kernel asked once, heard ENOSYS, and answered the rest itself.
    assert_eq!(fuse_ops(port, "getxattr"), 1.0);
    assert_eq!(fuse_ops(port, "listxattr"), 1.0);
}
