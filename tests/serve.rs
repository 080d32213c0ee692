//! `serve` (several sources in one process), `--record-access` and `warm --manifest` with the
//! recorded format: real FUSE mounts of the real binary against the test server.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Keys no plain one-per-line manifest can carry, and a few ordinary ones.
const ODD: [&str; 5] = [
    "odd name.jar",
    "tab\there.jar",
    "new\nline.jar",
    "#hash.jar",
    " lead and trail ",
];

fn read_all(root: &Path, keys: &[&str]) {
    for k in keys {
        fs::read(root.join(k)).unwrap_or_else(|e| panic!("read {k:?}: {e}"));
    }
}

fn warm(s: &TestServer, source: &str, cache: &Path, manifest: &Path) -> (i32, String, String) {
    let mut c = command();
    c.arg("warm")
        .arg(source)
        .arg("--cache")
        .arg(cache)
        .arg("--manifest")
        .arg(manifest)
        .args(endpoint_args(s));
    let out = run_with_timeout(c, Duration::from_secs(120));
    (
        exit_code(&out.status),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_recorded_manifest_warms_a_new_cache_so_a_second_mount_makes_no_gets() {
    let s = server();
    let mut objects = vec![("a.jar".to_string(), data(2_500_000, 1))];
    for (i, k) in ODD.iter().enumerate() {
        objects.push((k.to_string(), data(300_000 + i * 100_000, 10 + i as u64)));
    }
    for (k, body) in &objects {
        s.put(BUCKET, &format!("jars/{k}"), body.clone());
    }
    s.put(BUCKET, "jars/unread.jar", data(1000, 99));
    let d = tempfile::tempdir().unwrap();
    let manifest = d.path().join("jobs.manifest");
    let m = Mount::new(
        &s,
        "test-bucket/jars/",
        &["--record-access", manifest.to_str().unwrap()],
    );
    for (k, body) in &objects {
        assert!(fs::read(m.join(k)).unwrap() == *body, "{k:?}");
        // A second open and read of the same version is not recorded again.
        fs::read(m.join(k)).unwrap();
    }
    drop(m); // SIGTERM: the record is written out at unmount
    let text = fs::read_to_string(&manifest).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(text.starts_with("# s3cachefs manifest v1\n"), "{text}");
    assert_eq!(
        lines.len(),
        objects.len(),
        "each object once, in first-read order:\n{text}"
    );
    assert!(lines[0].starts_with("a.jar\t\""), "{text}");
    for want in [
        "odd name.jar\t",
        "tab%09here.jar\t",
        "new%0Aline.jar\t",
        "%23hash.jar\t",
        "%20lead and trail%20\t",
    ] {
        assert!(lines.iter().any(|l| l.starts_with(want)), "{want:?} in\n{text}");
    }
    assert!(!text.contains("unread"), "{text}");

    // An empty cache warmed from the record...
    let cache = d.path().join("cache");
    s.reset_counts();
    let (code, out, err) = warm(&s, "test-bucket/jars/", &cache, &manifest);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("warmed {} objects", objects.len())), "{out}");
    assert!(out.contains("0 changed since recorded, 0 no longer exist"), "{out}");
    assert_eq!(s.counts().head, objects.len() as u64, "one HEAD per key");
    assert!(
        err.contains(&format!("warm: {n}/{n} objects", n = objects.len())),
        "progress lines off a TTY: {err}"
    );
    // ...serves a second mount's reads of the same files without a GET.
    // (Assembled by warm, the files are handed to the kernel at open where passthrough works: that
    // open is recorded, as the daemon sees no read.)
    let again = d.path().join("again.manifest");
    let m = Mount::new(
        &s,
        "test-bucket/jars/",
        &[
            "--cache",
            cache.to_str().unwrap(),
            "--record-access",
            again.to_str().unwrap(),
        ],
    );
    s.reset_counts();
    for (k, body) in &objects {
        assert!(fs::read(m.join(k)).unwrap() == *body, "{k:?}");
    }
    assert_eq!(s.counts().get, 0);
    drop(m);
    let keys = |p: &Path| -> Vec<String> {
        let t = fs::read_to_string(p).unwrap();
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect()
    };
    assert_eq!(keys(&again), keys(&manifest));
}

#[test]
fn changed_objects_are_recorded_again_and_warm_refetches_and_reports_them() {
    let s = server();
    for k in ["a", "b", "c"] {
        s.put(BUCKET, &format!("d/{k}"), format!("{k} version 1").into_bytes());
    }
    let d = tempfile::tempdir().unwrap();
    let manifest = d.path().join("m");
    // TTL 0: every open asks S3, so a replaced object is read in its new version.
    let m = Mount::new(
        &s,
        BUCKET,
        &["--record-access", manifest.to_str().unwrap(), "--metadata-ttl", "0"],
    );
    read_all(m.path(), &["d/a", "d/b", "d/c"]);
    s.put(BUCKET, "d/a", b"a version 2".to_vec());
    assert_eq!(fs::read(m.join("d/a")).unwrap(), b"a version 2");
    drop(m);
    let text = fs::read_to_string(&manifest).unwrap();
    assert_eq!(text.lines().filter(|l| l.starts_with("d/a\t")).count(), 2, "{text}");
    // After the run: b replaced, c deleted.
    let b2 = b"b version 2, longer".to_vec();
    s.put(BUCKET, "d/b", b2.clone());
    s.delete(BUCKET, "d/c");
    let cache = d.path().join("cache");
    let (code, out, err) = warm(&s, BUCKET, &cache, &manifest);
    assert_eq!(
        code, 0,
        "a key that no longer exists is reported, not fatal: {out}{err}"
    );
    assert!(out.contains("warmed 2 objects"), "{out}");
    assert!(
        out.contains("3 keys, 1 changed since recorded, 1 no longer exist"),
        "{out}"
    );
    assert!(err.contains("changed: d/b"), "{err}");
    assert!(err.contains("gone: d/c"), "{err}");
    let m = Mount::new(&s, BUCKET, &["--cache", cache.to_str().unwrap()]);
    s.reset_counts();
    assert_eq!(fs::read(m.join("d/b")).unwrap(), b2, "the current version was warmed");
    assert_eq!(fs::read(m.join("d/a")).unwrap(), b"a version 2");
    assert_eq!(s.counts().get, 0);
    drop(m);
    // Only when every key is gone does warm fail.
    let gone = d.path().join("gone");
    fs::write(&gone, "# s3cachefs manifest v1\nd/c\t\"x\"\nd/zz\n").unwrap();
    let (code, _, err) = warm(&s, BUCKET, &cache, &gone);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("none of the manifest's 2 key(s) exists any more"), "{err}");
}

/// A `serve` daemon in the foreground; SIGTERM and a lazy unmount of what is left on drop.
struct Serve {
    child: Option<Child>,
    mountpoints: Vec<PathBuf>,
    log: PathBuf,
}

impl Serve {
    fn start(s: &TestServer, root: &Path, sources: &[&str], extra: &[&str], log: PathBuf) -> Serve {
        let mut c = command();
        c.arg("serve").arg(root);
        let mut mountpoints = Vec::new();
        for src in sources {
            c.args(["--source", src]);
            mountpoints.push(root.join(src.split_once('=').unwrap().0));
        }
        let child = c
            .args(endpoint_args(s))
            .arg("--foreground")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut srv = Serve {
            child: Some(child),
            mountpoints,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !srv.mountpoints.iter().all(|p| is_mounted(p)) {
            if let Some(st) = srv.child.as_mut().unwrap().try_wait().unwrap() {
                srv.child = None;
                panic!("serve exited with {st}:\n{}", srv.log());
            }
            assert!(Instant::now() < deadline, "not mounted after 30 s:\n{}", srv.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        srv
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        wait_timeout(&mut child, Duration::from_secs(20)).expect("serve exits after SIGTERM")
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.terminate();
        }
        for p in &self.mountpoints {
            if is_mounted(p) {
                let _ = Command::new("umount").arg("-l").arg(p).status();
            }
        }
        if std::thread::panicking() {
            eprintln!("--- serve log ---\n{}", self.log());
        }
    }
}

#[test]
fn serve_mounts_two_buckets_with_one_cache_one_metrics_endpoint_and_unmounts_both_on_sigterm() {
    let s = TestServer::start();
    s.create_bucket("jars-bucket");
    s.create_bucket("data-bucket");
    let jar = data(1_500_000, 1);
    let hot = data(700_000, 2);
    s.put("jars-bucket", "jars/app.jar", jar.clone());
    s.put("jars-bucket", "other/x", b"outside the prefix".to_vec());
    s.put("data-bucket", "hot/part-0.bin", hot.clone());
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("mnt/s3"); // created by serve
    let cache = d.path().join("cache");
    let records = d.path().join("records");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut srv = Serve::start(
        &s,
        &root,
        &["jars=s3://jars-bucket/jars/", "data=data-bucket/hot"],
        &[
            "--cache",
            cache.to_str().unwrap(),
            "--metrics-addr",
            &addr,
            "--record-access",
            records.to_str().unwrap(),
            "--no-passthrough",
        ],
        d.path().join("serve.log"),
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&root).unwrap().permissions().mode() & 0o777, 0o755);
    assert!(fs::read(root.join("jars/app.jar")).unwrap() == jar);
    assert!(fs::read(root.join("data/part-0.bin")).unwrap() == hot);
    assert!(!root.join("jars/x").exists() && !root.join("jars/other").exists());
    assert_eq!(s.counts_for("jars-bucket").get, 2);
    assert_eq!(s.counts_for("data-bucket").get, 1);
    // One endpoint for both: one registry counts the reads of both sources.
    assert_eq!(http_status_body(port, "/healthz"), (200, "ok\n".into()));
    let (_, text) = http_status_body(port, "/metrics");
    assert_eq!(metric_sum(&text, "s3cachefs_cache_misses_total"), 3.0);
    assert_eq!(
        metric_sum(&text, "s3cachefs_read_bytes_total"),
        (jar.len() + hot.len()) as f64
    );
    // One cache directory holds the blocks of both.
    let v1: Vec<_> = fs::read_dir(&cache).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(v1, ["v1"]);
    assert!(du(&cache.join("v1")) >= (jar.len() + hot.len()) as u64);
    // SIGHUP reaches both mounts; they keep serving.
    unsafe { libc::kill(srv.child.as_ref().unwrap().id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !srv.log().contains("SIGHUP") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(fs::read(root.join("data/part-0.bin")).unwrap() == hot);
    // SIGTERM unmounts both and writes out each source's record.
    assert!(srv.terminate().success(), "{}", srv.log());
    assert!(!is_mounted(&root.join("jars")) && !is_mounted(&root.join("data")));
    let jars = fs::read_to_string(records.join("jars.manifest")).unwrap();
    let data_m = fs::read_to_string(records.join("data.manifest")).unwrap();
    assert!(jars.contains("\napp.jar\t\""), "{jars}");
    assert!(
        data_m.contains("\npart-0.bin\t\"") && !data_m.contains("app.jar"),
        "{data_m}"
    );
}

#[test]
fn serve_in_the_background_returns_once_every_source_is_mounted() {
    let s = TestServer::start();
    s.create_bucket("jars-bucket");
    s.create_bucket("data-bucket");
    s.put("jars-bucket", "a.jar", b"jar".to_vec());
    s.put("data-bucket", "b.bin", b"bin".to_vec());
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("s3");
    let (jars, dat) = (root.join("jars"), root.join("data"));
    let _guard = [UnmountOnDrop(jars.clone()), UnmountOnDrop(dat.clone())];
    let mut c = command();
    c.arg("serve")
        .arg(&root)
        .args(["--source", "jars=jars-bucket", "--source", "data=data-bucket"])
        .args(endpoint_args(&s))
        .args(["--log-file", d.path().join("log").to_str().unwrap()]);
    let out = run_with_timeout(c, Duration::from_secs(60));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(is_mounted(&jars) && is_mounted(&dat), "both live when the parent exits");
    assert_eq!(fs::read(jars.join("a.jar")).unwrap(), b"jar");
    // An external unmount of one leaves the other serving.
    assert!(Command::new("umount").arg(&jars).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(fs::read(dat.join("b.bin")).unwrap(), b"bin");
    assert!(Command::new("umount").arg(&dat).status().unwrap().success());
}

#[test]
fn bad_sources_fail_with_a_clear_error_and_leave_nothing_mounted() {
    let s = TestServer::start();
    s.create_bucket("jars-bucket");
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("s3");
    let cases: [(&[&str], &str); 5] = [
        (&["a=jars-bucket", "a=jars-bucket/x"], "the name \"a\" is given twice"),
        (&["a/b=jars-bucket"], "invalid name \"a/b\""),
        (&["jars="], "no bucket after jars="),
        (&["jars"], "expected NAME=BUCKET"),
        // The first source is fine; the second's bucket does not exist: nothing is mounted.
        (
            &["jars=jars-bucket", "data=no-such-bucket"],
            "source data (s3://no-such-bucket/): bucket \"no-such-bucket\" does not exist",
        ),
    ];
    for (sources, want) in cases {
        for background in [false, true] {
            let mut c = command();
            c.arg("serve").arg(&root);
            for src in sources {
                c.args(["--source", src]);
            }
            c.args(endpoint_args(&s)).args(["--max-attempts", "1"]);
            if !background {
                c.arg("--foreground");
            }
            let out = run_with_timeout(c, Duration::from_secs(60));
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(exit_code(&out.status), 1, "{sources:?}: {err}");
            assert!(err.contains(want), "{sources:?}: {err}");
            let mounted: Vec<_> = fs::read_dir(&root)
                .map(|r| r.map(|e| e.unwrap().path()).filter(|p| is_mounted(p)).collect())
                .unwrap_or_default();
            assert!(mounted.is_empty(), "{sources:?} left {mounted:?} mounted");
        }
    }
}

/// Lazily unmounts a path on drop.
struct UnmountOnDrop(PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}
