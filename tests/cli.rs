//! Bad input gets a clear one-line error and a non-zero exit; the background mode returns
//! only once the mount is live.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Runs `s3cachefs mount SOURCE MOUNTPOINT ARGS...` against `server` (background mode unless
/// the args say otherwise) and returns (exit code, stderr).
fn mount_cmd(server: &TestServer, source: &str, mountpoint: &Path, args: &[&str]) -> (i32, String) {
    let mut c = command();
    c.arg("mount")
        .arg(source)
        .arg(mountpoint)
        .args(endpoint_args(server))
        .args(args);
    let out = run_with_timeout(c, Duration::from_secs(60));
    let code = exit_code(&out.status);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if code == 0 && is_mounted(mountpoint) {
        let _ = Command::new("umount").arg("-l").arg(mountpoint).status();
    }
    (code, stderr)
}

fn empty_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("mnt");
    std::fs::create_dir(&p).unwrap();
    (d, p)
}

fn assert_fails(result: (i32, String), needle: &str) {
    let (code, stderr) = result;
    assert_ne!(code, 0, "expected failure mentioning {needle:?}; stderr: {stderr}");
    assert!(
        stderr.contains(needle),
        "stderr should mention {needle:?}, got: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn malformed_bucket_names() {
    let s = server();
    let (_d, mnt) = empty_dir();
    for bad in ["Bad_Bucket", "ab", "s3://-x-", "a..b"] {
        assert_fails(mount_cmd(&s, bad, &mnt, &[]), "invalid bucket name");
    }
}

#[test]
fn missing_and_denied_buckets_are_refused_before_mounting() {
    let s = server();
    s.create_bucket("denied-bucket");
    s.deny_bucket("denied-bucket", true);
    let (_d, mnt) = empty_dir();
    assert_fails(mount_cmd(&s, "no-such-bucket", &mnt, &[]), "does not exist");
    assert_fails(mount_cmd(&s, "denied-bucket", &mnt, &[]), "access denied");
    assert_fails(
        mount_cmd(&s, "no-such-bucket", &mnt, &["--foreground"]),
        "does not exist",
    );
    assert!(!is_mounted(&mnt));
}

#[test]
fn unreachable_endpoint_fails_in_bounded_time() {
    // A port nobody listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_d, mnt) = empty_dir();
    let t = Instant::now();
    let mut c = command();
    c.args(["mount", BUCKET])
        .arg(&mnt)
        .args(["--endpoint-url", &format!("http://127.0.0.1:{port}")]);
    c.args(["--region", "us-east-1", "--max-attempts", "2"]);
    let out = run_with_timeout(c, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(exit_code(&out.status), 0);
    assert!(stderr.contains("cannot reach"), "{stderr}");
    assert!(t.elapsed() < Duration::from_secs(30), "took {:?}", t.elapsed());
}

#[test]
fn bad_mountpoints() {
    let s = server();
    let d = tempfile::tempdir().unwrap();
    assert_fails(mount_cmd(&s, BUCKET, &d.path().join("missing"), &[]), "does not exist");
    let file = d.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert_fails(mount_cmd(&s, BUCKET, &file, &[]), "not a directory");
    let full = d.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), b"x").unwrap();
    assert_fails(mount_cmd(&s, BUCKET, &full, &[]), "not empty");
    let m = Mount::new(&s, BUCKET, &[]);
    assert_fails(mount_cmd(&s, BUCKET, m.path(), &[]), "already a mount point");
}

#[test]
fn malformed_flags() {
    let s = server();
    let (_d, mnt) = empty_dir();
    assert_fails(
        mount_cmd(&s, BUCKET, &mnt, &["--metadata-ttl", "forever"]),
        "--metadata-ttl",
    );
    assert_fails(
        mount_cmd(&s, BUCKET, &mnt, &["--negative-metadata-ttl=-3"]),
        "--negative-metadata-ttl",
    );
    assert_fails(mount_cmd(&s, BUCKET, &mnt, &["--file-mode", "0999"]), "--file-mode");
    assert_fails(mount_cmd(&s, BUCKET, &mnt, &["--dir-mode", "rwx"]), "--dir-mode");
    assert_fails(mount_cmd(&s, BUCKET, &mnt, &["--uid", "root"]), "--uid");
    assert_fails(mount_cmd(&s, BUCKET, &mnt, &["--gid=-1"]), "--gid");
    assert_fails(mount_cmd(&s, BUCKET, &mnt, &["--block-size", "3MiB"]), "--block-size");
    assert_fails(mount_cmd(&s, BUCKET, &mnt, &["--no-such-flag"]), "--no-such-flag");
    assert_fails(
        mount_cmd(&s, BUCKET, &mnt, &["--allow-other", "--allow-root"]),
        "mutually exclusive",
    );
    assert_fails(
        mount_cmd(&s, BUCKET, &mnt, &["--endpoint-url", "ftp://x"]),
        "--endpoint-url",
    );
    assert!(!is_mounted(&mnt));
}

#[test]
fn background_mode_returns_once_mounted() {
    let s = server();
    s.put(BUCKET, "hello.txt", b"hi".to_vec());
    let (_d, mnt) = empty_dir();
    let mut c = command();
    c.arg("mount").arg(BUCKET).arg(&mnt).args(endpoint_args(&s));
    let out = run_with_timeout(c, Duration::from_secs(60));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Live the moment the command returns: no polling.
    assert!(is_mounted(&mnt));
    assert_eq!(std::fs::read(mnt.join("hello.txt")).unwrap(), b"hi");
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    // The daemon ends with its mount; a second mount at the same place works.
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_mounted(&mnt) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!is_mounted(&mnt));
}

#[test]
fn version_and_help() {
    let out = command().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = command().args(["mount", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--metadata-ttl",
        "--allow-other",
        "--endpoint-url",
        "--region",
        "--prefix",
        "--foreground",
    ] {
        assert!(help.contains(flag), "help lacks {flag}");
    }
}
