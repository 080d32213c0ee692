//! End-to-end behaviour of a mount: real FUSE, real HTTP to an S3-compatible server on
//! loopback, exact S3 request counts.

mod common;

use std::fs;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::time::Duration;

use common::*;

const MIB: usize = 1 << 20;

#[test]
fn reads_are_byte_exact() {
    let s = server();
    let big = data(3 * MIB + 12_345, 1);
    let small = data(1000, 2);
    s.put(BUCKET, "big.bin", big.clone());
    s.put(BUCKET, "small.txt", small.clone());
    s.put(BUCKET, "empty", Vec::new());
    s.put(BUCKET, "exact.bin", data(MIB, 3));
    let m = Mount::new(&s, BUCKET, &[]);

    assert_eq!(fs::read(m.join("small.txt")).unwrap(), small);
    assert_eq!(fs::read(m.join("empty")).unwrap(), Vec::<u8>::new());
    assert_eq!(fs::read(m.join("exact.bin")).unwrap(), data(MIB, 3));
    assert_eq!(fs::read(m.join("big.bin")).unwrap(), big);

    // Random offsets and lengths, across block boundaries and past EOF.
    let f = fs::File::open(m.join("big.bin")).unwrap();
    let mut seed = 7u64;
    for _ in 0..200 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let off = (seed >> 20) as usize % (big.len() + 100);
        let len = 1 + (seed >> 40) as usize % (300_000);
        let mut buf = vec![0u8; len];
        let n = read_full_at(&f, &mut buf, off as u64);
        let want = &big[off.min(big.len())..(off + len).min(big.len())];
        assert_eq!(&buf[..n], want, "offset {off} len {len}");
    }
    let mut buf = [0u8; 10];
    assert_eq!(
        f.read_at(&mut buf, big.len() as u64).unwrap(),
        0,
        "read at EOF returns 0"
    );
    assert_eq!(fs::metadata(m.join("big.bin")).unwrap().len(), big.len() as u64);
}

fn read_full_at(f: &fs::File, buf: &mut [u8], mut off: u64) -> usize {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off).unwrap() {
            0 => break,
            n => {
                done += n;
                off += n as u64;
            }
        }
    }
    done
}

#[test]
fn cold_read_costs_one_get_per_block() {
    let s = server();
    s.put(BUCKET, "f.bin", data(3 * MIB + 1, 4));
    let m = Mount::new(&s, BUCKET, &[]);
    fs::metadata(m.join("f.bin")).unwrap();
    s.reset_counts();
    let mut f = fs::File::open(m.join("f.bin")).unwrap();
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).unwrap();
    assert_eq!(buf, data(3 * MIB + 1, 4));
    let c = s.counts();
    assert_eq!(c.get, 4, "3 full blocks and one 1-byte block: {c:?}");
    assert_eq!(c.get_bytes, (3 * MIB + 1) as u64);
    assert_eq!(c.total(), c.get, "no metadata requests after the stat: {c:?}");
}

#[test]
fn tree_with_nested_implicit_and_marker_dirs() {
    let s = server();
    for k in [
        "a.jar",
        "lib/x.jar",
        "lib/deep/er/y.jar",
        "markers/",
        "markers/inside",
        "empty-dir/",
        "z",
    ] {
        s.put(BUCKET, k, k.as_bytes().to_vec());
    }
    let m = Mount::new(&s, BUCKET, &[]);
    let names: Vec<String> = walk(m.path()).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "a.jar",
            "empty-dir/",
            "lib/",
            "lib/deep/",
            "lib/deep/er/",
            "lib/deep/er/y.jar",
            "lib/x.jar",
            "markers/",
            "markers/inside",
            "z"
        ]
    );
    assert_eq!(fs::read(m.join("lib/deep/er/y.jar")).unwrap(), b"lib/deep/er/y.jar");
    let meta = fs::metadata(m.join("lib")).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    let meta = fs::metadata(m.join("a.jar")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
    assert_eq!(meta.len(), 5);
    // Inode numbers are stable while the kernel keeps the name.
    let ino = meta.ino();
    for _ in 0..3 {
        assert_eq!(fs::metadata(m.join("a.jar")).unwrap().ino(), ino);
    }
    assert_eq!(fs::metadata(m.join("nope")).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(
        fs::metadata(m.join("lib/nope/x")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn directory_shadows_file_and_bad_keys_are_hidden() {
    let s = server();
    s.put(BUCKET, "dup", b"file".to_vec());
    s.put(BUCKET, "dup/child", b"c".to_vec());
    s.put(BUCKET, "ok/a//b", b"empty segment".to_vec());
    s.put(BUCKET, "ok/./dot", b"dot".to_vec());
    s.put(BUCKET, "ok/../escape", b"dotdot".to_vec());
    s.put(BUCKET, &format!("ok/{}", "n".repeat(256)), b"long".to_vec());
    s.put(BUCKET, "ok/fine", b"fine".to_vec());
    let m = Mount::new(&s, BUCKET, &[]);
    assert!(fs::metadata(m.join("dup")).unwrap().is_dir());
    assert_eq!(fs::read(m.join("dup/child")).unwrap(), b"c");
    let mut ok: Vec<String> = fs::read_dir(m.join("ok"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    ok.sort();
    // "a" appears (it holds "a//b" whose empty segment is hidden), nothing named "." or "..".
    assert_eq!(ok, ["a", "fine"]);
    assert_eq!(fs::read_dir(m.join("ok/a")).unwrap().count(), 0);
    assert!(m.log().contains("not shown"), "hidden keys are logged:\n{}", m.log());
}

#[test]
fn prefix_mounts_show_only_the_prefix() {
    let s = server();
    s.put(BUCKET, "jars/app.jar", b"app".to_vec());
    s.put(BUCKET, "jars/lib/dep.jar", b"dep".to_vec());
    s.put(BUCKET, "data/secret", b"no".to_vec());
    s.put(BUCKET, "jarsfoo", b"not under jars/".to_vec());
    for (source, extra) in [
        ("s3://test-bucket/jars/", vec![]),
        ("test-bucket", vec!["--prefix", "jars"]),
    ] {
        let m = Mount::new(&s, source, &extra);
        let names: Vec<String> = walk(m.path()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["app.jar", "lib/", "lib/dep.jar"], "{source} {extra:?}");
        assert_eq!(fs::read(m.join("lib/dep.jar")).unwrap(), b"dep");
    }
}

#[test]
fn large_directory_lists_completely() {
    let s = server();
    for i in 0..2500 {
        s.put(BUCKET, &format!("many/f{i:05}"), vec![b'x'; i % 7]);
    }
    let m = Mount::new(&s, BUCKET, &[]);
    s.reset_counts();
    let mut names: Vec<String> = fs::read_dir(m.join("many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let want: Vec<String> = (0..2500).map(|i| format!("f{i:05}")).collect();
    assert_eq!(names, want);
    assert_eq!(
        s.counts().list,
        1 + 3,
        "one lookup of many/ plus three pages of 1,000: {:?}",
        s.counts()
    );
    // Sizes come from the listing: stat of every entry makes no further requests.
    s.reset_counts();
    for (i, n) in want.iter().enumerate() {
        assert_eq!(fs::metadata(m.join("many").join(n)).unwrap().len(), (i % 7) as u64);
    }
    assert_eq!(s.counts().total(), 0, "{:?}", s.counts());
}

#[test]
fn indefinite_ttl_makes_warm_passes_free() {
    let s = server();
    for i in 0..20 {
        s.put(
            BUCKET,
            &format!("jars/d{}/lib{i}.jar", i % 4),
            data(10_000 + i * 5000, i as u64),
        );
    }
    let m = Mount::new(&s, BUCKET, &["--metadata-ttl", "indefinite"]);
    let read_all = || {
        for (name, meta) in walk(m.path()) {
            if meta.is_file() {
                let i: usize = name
                    .rsplit("lib")
                    .next()
                    .unwrap()
                    .trim_end_matches(".jar")
                    .parse()
                    .unwrap();
                assert_eq!(fs::read(m.join(&name)).unwrap(), data(10_000 + i * 5000, i as u64));
            }
        }
    };
    read_all();
    assert!(s.counts().total() > 0);
    s.reset_counts();
    read_all();
    assert_eq!(
        s.counts(),
        Counts::default(),
        "warm pass with indefinite TTL must make no S3 requests"
    );
}

#[test]
fn metadata_ttl_expiry_shows_changes() {
    let s = server();
    s.put(BUCKET, "f", b"one".to_vec());
    let m = Mount::new(&s, BUCKET, &["--metadata-ttl", "1"]);
    assert_eq!(fs::metadata(m.join("f")).unwrap().len(), 3);
    s.put(BUCKET, "f", b"three".to_vec());
    s.reset_counts();
    // Within the TTL the cached size is served without asking S3.
    assert_eq!(fs::metadata(m.join("f")).unwrap().len(), 3);
    assert_eq!(s.counts().total(), 0);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(fs::metadata(m.join("f")).unwrap().len(), 5);
    assert_eq!(fs::read(m.join("f")).unwrap(), b"three");
    assert!(
        s.counts().list + s.counts().head >= 1,
        "the expired entry was fetched again"
    );
}

#[test]
fn negative_entries_are_cached_for_their_ttl() {
    let s = server();
    s.put(BUCKET, "present", b"x".to_vec());
    let m = Mount::new(
        &s,
        BUCKET,
        &["--metadata-ttl", "indefinite", "--negative-metadata-ttl", "2"],
    );
    assert_eq!(fs::metadata(m.join("later")).unwrap_err().kind(), ErrorKind::NotFound);
    s.reset_counts();
    for _ in 0..5 {
        assert_eq!(fs::metadata(m.join("later")).unwrap_err().kind(), ErrorKind::NotFound);
    }
    assert_eq!(s.counts().total(), 0, "negative answers are cached");
    s.put(BUCKET, "later", b"now".to_vec());
    assert_eq!(fs::metadata(m.join("later")).unwrap_err().kind(), ErrorKind::NotFound);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(fs::read(m.join("later")).unwrap(), b"now");
}

#[test]
fn every_modification_is_refused_with_erofs() {
    let s = server();
    s.put(BUCKET, "f", b"x".to_vec());
    s.put(BUCKET, "d/g", b"y".to_vec());
    let m = Mount::new(&s, BUCKET, &[]);
    let erofs = |r: std::io::Result<()>| assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));
    erofs(fs::write(m.join("new"), b"n"));
    erofs(fs::OpenOptions::new().write(true).open(m.join("f")).map(|_| ()));
    erofs(fs::OpenOptions::new().append(true).open(m.join("f")).map(|_| ()));
    erofs(fs::create_dir(m.join("newdir")));
    erofs(fs::remove_file(m.join("f")));
    erofs(fs::remove_dir(m.join("d")));
    erofs(fs::rename(m.join("f"), m.join("f2")));
    erofs(fs::set_permissions(m.join("f"), fs::Permissions::from_mode(0o777)));
    erofs(std::os::unix::fs::symlink("f", m.join("link")));
    erofs(fs::hard_link(m.join("f"), m.join("hard")));
    assert_eq!(fs::read(m.join("f")).unwrap(), b"x", "nothing changed");
}

#[test]
fn statfs_answers() {
    let s = server();
    let m = Mount::new(&s, BUCKET, &[]);
    let path = std::ffi::CString::new(m.path().to_str().unwrap()).unwrap();
    // SAFETY: statvfs into a zeroed struct with a valid path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
    assert_eq!(st.f_namemax, 255);
    assert_ne!(st.f_flag & libc::ST_RDONLY, 0, "mounted read-only");
    assert_eq!(st.f_bavail, 0);
}

#[test]
fn object_overwritten_during_read_fails_instead_of_mixing() {
    let s = server();
    let v1 = data(3 * MIB, 10);
    s.put(BUCKET, "f", v1.clone());
    let m = Mount::new(&s, BUCKET, &[]);
    let f = fs::File::open(m.join("f")).unwrap();
    let mut buf = vec![0u8; 4096];
    assert_eq!(f.read_at(&mut buf, 0).unwrap(), 4096);
    assert_eq!(buf, v1[..4096]);
    s.put(BUCKET, "f", data(3 * MIB, 11));
    let err = f.read_at(&mut buf, 2 * MIB as u64 + 10).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert!(m.log().contains("changed"), "a clear log line:\n{}", m.log());
    drop(f);
    // A new open sees the new version.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(fs::read(m.join("f")).unwrap(), data(3 * MIB, 11));
}

#[test]
fn sigterm_unmounts_and_exits_zero() {
    let s = server();
    s.put(BUCKET, "f", b"x".to_vec());
    let mut m = Mount::new(&s, BUCKET, &[]);
    assert_eq!(fs::read(m.join("f")).unwrap(), b"x");
    let status = m.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "{status}");
    assert!(!is_mounted(m.path()));
}

#[test]
fn sigint_with_a_busy_mount_still_exits_zero() {
    let s = server();
    s.put(BUCKET, "f", b"x".to_vec());
    let mut m = Mount::new(&s, BUCKET, &[]);
    let held = fs::File::open(m.join("f")).unwrap();
    let status = m.signal_and_wait(libc::SIGINT);
    assert!(status.success(), "{status}");
    assert!(!is_mounted(m.path()));
    drop(held);
}

#[test]
fn external_umount_ends_the_daemon() {
    let s = server();
    let mut m = Mount::new(&s, BUCKET, &[]);
    let st = std::process::Command::new("umount").arg(m.path()).status().unwrap();
    assert!(st.success());
    let status = m.wait_exit();
    assert!(status.success(), "{status}");
}

#[test]
fn slow_reads_do_not_block_other_operations() {
    let s = server();
    s.put(BUCKET, "slow", data(MIB, 5));
    s.put(BUCKET, "other", b"o".to_vec());
    let m = Mount::new(&s, BUCKET, &["--metadata-ttl", "indefinite"]);
    fs::metadata(m.join("slow")).unwrap();
    fs::metadata(m.join("other")).unwrap();
    s.set_latency(Duration::from_millis(1500));
    let path = m.join("slow");
    let reader = std::thread::spawn(move || fs::read(path).unwrap());
    std::thread::sleep(Duration::from_millis(200));
    let t = std::time::Instant::now();
    assert_eq!(fs::metadata(m.join("other")).unwrap().len(), 1);
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "stat waited on a GET: {:?}",
        t.elapsed()
    );
    assert_eq!(reader.join().unwrap(), data(MIB, 5));
}

#[test]
fn changed_object_of_another_size_is_read_whole_after_reopen() {
    let s = server();
    s.put(BUCKET, "f", data(3 * MIB, 20));
    let m = Mount::new(&s, BUCKET, &["--metadata-ttl", "indefinite"]);
    let f = fs::File::open(m.join("f")).unwrap();
    let mut buf = vec![0u8; 10];
    f.read_at(&mut buf, 0).unwrap();
    let v2 = data(4 * MIB + 7, 21);
    s.put(BUCKET, "f", v2.clone());
    assert_eq!(
        f.read_at(&mut buf, 2 * MIB as u64).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    drop(f);
    // The kernel's cached size (3 MiB) must not cut the new version short.
    assert_eq!(fs::read(m.join("f")).unwrap(), v2);
    assert_eq!(fs::metadata(m.join("f")).unwrap().len(), v2.len() as u64);
}

#[test]
fn a_listing_proves_absence_only_for_the_negative_ttl() {
    let s = server();
    s.put(BUCKET, "d/a", b"a".to_vec());
    let m = Mount::new(
        &s,
        BUCKET,
        &["--metadata-ttl", "indefinite", "--negative-metadata-ttl", "1"],
    );
    assert_eq!(fs::read_dir(m.join("d")).unwrap().count(), 1);
    assert!(fs::metadata(m.join("d/new")).is_err());
    s.put(BUCKET, "d/new", b"n".to_vec());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(fs::read(m.join("d/new")).unwrap(), b"n");
}

#[test]
fn mount_shows_as_fuse_s3cachefs_with_the_bucket_as_source() {
    let s = server();
    let m = Mount::new(&s, "test-bucket/some/prefix", &[]);
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(m.path().to_str().unwrap()))
        .unwrap();
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields[0], "test-bucket/some/prefix");
    assert_eq!(fields[2], "fuse.s3cachefs");
    assert!(fields[3].split(',').any(|o| o == "ro"), "{line}");
}

/// `close` costs no FLUSH round trip: the daemon answers the first FLUSH with ENOSYS, which the
/// kernel takes as success and remembers for the rest of the mount.
#[test]
fn close_sends_one_flush_per_mount() {
    let s = server();
    s.put(BUCKET, "f.txt", b"hello".to_vec());
    let port = free_port();
    let m = Mount::new(&s, BUCKET, &["--metrics-addr", &format!("127.0.0.1:{port}")]);
    for _ in 0..10 {
        assert_eq!(fs::read(m.join("f.txt")).unwrap(), b"hello");
    }
    assert_eq!(
        metric(port, "s3cachefs_fuse_operations_total{operation=\"flush\"}"),
        1.0
    );
}
