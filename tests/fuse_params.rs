//! The FUSE connection parameters (docs/BENCHMARKS.md, "FUSE parameters"): the kernel
//! read-ahead a mount gets by default and through the hidden sweep flags, the largest read
//! request, and bad values refused before mounting.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::*;

const MIB: usize = 1 << 20;

/// The mount's read-ahead as the kernel reports it (its backing device's `read_ahead_kb`).
fn read_ahead_kib(mnt: &Path) -> u64 {
    let dev = std::fs::metadata(mnt).unwrap().dev();
    let path = format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(dev), libc::minor(dev));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

/// FUSE read requests the daemon at `port` has answered.
fn fuse_reads(port: u16) -> f64 {
    metric(port, "s3cachefs_fuse_operations_total{operation=\"read\"}")
}

#[test]
fn read_ahead_is_the_block_size_by_default() {
    let s = server();
    s.put(BUCKET, "f", data(MIB, 1));
    let m = Mount::new(&s, BUCKET, &[]);
    assert_eq!(read_ahead_kib(m.path()), 1024, "default: 1 MiB blocks");
    assert_eq!(std::fs::read(m.join("f")).unwrap(), data(MIB, 1));
    drop(m);
    // Smaller blocks, smaller read-ahead.
    let m = Mount::new(&s, BUCKET, &["--block-size", "256KiB"]);
    assert_eq!(read_ahead_kib(m.path()), 256);
}

#[test]
fn sweep_flags_and_environment_set_the_parameters() {
    let s = server();
    let body = data(8 * MIB, 2);
    s.put(BUCKET, "f", body.clone());
    let m = Mount::new(&s, BUCKET, &["--fuse-read-ahead", "4MiB"]);
    assert_eq!(read_ahead_kib(m.path()), 4096);
    drop(m);
    let m = Mount::new_with_env(&s, BUCKET, &[], &[("S3CACHEFS_FUSE_READ_AHEAD", "512KiB")]);
    assert_eq!(read_ahead_kib(m.path()), 512);
    drop(m);

    // The largest read request: 8 MiB read with 1 MiB read()s takes 8 requests of 1 MiB, or at
    // least 64 of at most 128 KiB with max_read=128KiB.
    let requests = |extra: &[&str]| {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut args = vec!["--metrics-addr", &addr, "--no-passthrough", "--fuse-clone-fd=false"];
        args.extend_from_slice(extra);
        let m = Mount::new(&s, BUCKET, &args);
        let before = fuse_reads(port);
        assert_eq!(std::fs::read(m.join("f")).unwrap(), body);
        fuse_reads(port) - before
    };
    let big = requests(&[]);
    let small = requests(&["--fuse-max-read", "128KiB", "--fuse-max-background", "16"]);
    assert!(big <= 16.0, "1 MiB requests: {big} for 8 MiB");
    assert!(small >= 64.0, "128 KiB requests: {small} for 8 MiB");
}

#[test]
fn bad_values_are_refused_before_mounting() {
    let s = server();
    for (flag, value, says) in [
        ("--fuse-read-ahead", "3000", "multiple of 4KiB"),
        ("--fuse-read-ahead", "1GiB", "between 4KiB and 64MiB"),
        ("--fuse-max-read", "lots", "invalid size"),
        ("--fuse-max-background", "0", "0"),
        ("--fuse-clone-fd", "maybe", "maybe"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = command();
        c.arg("mount")
            .arg(BUCKET)
            .arg(dir.path())
            .args(endpoint_args(&s))
            .args(["--foreground", flag, value]);
        let out = run_with_timeout(c, Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(exit_code(&out.status), 0, "{flag} {value} accepted");
        assert!(
            stderr.contains(flag.trim_start_matches('-')) && stderr.contains(says),
            "{flag} {value}: {stderr}"
        );
        assert!(!is_mounted(dir.path()));
    }
}
