//! Operations: `warm`, metrics and health, `stats`, systemd readiness, SIGHUP refresh,
//! stale-mount recovery and the `mount -t fuse.s3cachefs` / fstab helper.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use s3cachefs_testserver::{FaultKind, FaultPlan, FaultRule, Op};

fn seed(s: &TestServer) -> Vec<(String, Vec<u8>)> {
    let mut v = vec![];
    for i in 0..6 {
        let key = format!("jars/lib{i}.jar");
        let body = data(200_000 + i * 700_000, 300 + i as u64);
        s.put(BUCKET, &key, body.clone());
        v.push((key, body));
    }
    s.put(BUCKET, "jars/notes.txt", b"not a jar".to_vec());
    s.put(BUCKET, "other/big.bin", data(3 << 20, 9));
    v
}

fn warm(s: &TestServer, source: &str, cache: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut c = command();
    c.arg("warm")
        .arg(source)
        .arg("--cache")
        .arg(cache)
        .args(endpoint_args(s))
        .args(extra);
    let out = run_with_timeout(c, Duration::from_secs(120));
    (
        exit_code(&out.status),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn blocks(objects: &[(String, Vec<u8>)]) -> u64 {
    objects.iter().map(|(_, b)| b.len().div_ceil(1 << 20) as u64).sum()
}

#[test]
fn warm_then_mount_reads_without_gets_and_warm_is_idempotent() {
    let s = server();
    let objects = seed(&s);
    let cache = tempfile::tempdir().unwrap();
    let (code, out, err) = warm(&s, "s3://test-bucket/jars/", cache.path(), &["--include", "*.jar"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("warmed 6 objects"), "{out}");
    assert_eq!(s.counts().get, blocks(&objects));
    // Nothing left to fetch on a second run.
    s.reset_counts();
    let (code, out, _) = warm(&s, "test-bucket/jars", cache.path(), &["--include", "*.jar"]);
    assert_eq!(code, 0);
    assert_eq!(s.counts().get, 0, "{out}");
    assert!(out.contains(&format!("{} already cached", blocks(&objects))), "{out}");
    // A mount on the same cache reads everything without a GET, and without reading it itself:
    // `warm` wrote every block and stamped each file as verified, so each first open passes
    // through to the kernel.
    let (m, port) = Mount::with_cache_and_metrics(&s, BUCKET, cache.path(), &[]);
    s.reset_counts();
    for (key, body) in &objects {
        assert!(fs::read(m.join(key)).unwrap() == *body);
    }
    assert_eq!(s.counts().get, 0);
    assert_eq!(
        metric(port, "s3cachefs_passthrough_opens_total"),
        objects.len() as f64,
        "{}",
        m.log()
    );
    assert_eq!(metric(port, "s3cachefs_fuse_operations_total{operation=\"read\"}"), 0.0);
    // notes.txt was not included.
    fs::read(m.join("jars/notes.txt")).unwrap();
    assert_eq!(s.counts().get, 1);
}

#[test]
fn warm_while_a_mount_runs_and_with_a_manifest() {
    let s = server();
    let objects = seed(&s);
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(&s, BUCKET, &["--cache", cache.path().to_str().unwrap()]);
    let manifest = cache.path().with_extension("manifest");
    fs::write(
        &manifest,
        "# the two jars the job needs\njars/lib1.jar\n\njars/lib4.jar\n",
    )
    .unwrap();
    let (code, out, err) = warm(&s, BUCKET, cache.path(), &["--manifest", manifest.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("warmed 2 objects"), "{out}");
    s.reset_counts();
    for i in [1, 4] {
        assert!(fs::read(m.join(&objects[i].0)).unwrap() == objects[i].1);
    }
    assert_eq!(s.counts().get, 0, "the running mount sees the warmed blocks at once");
    fs::remove_file(manifest).unwrap();
}

#[test]
fn warm_names_the_objects_that_failed() {
    let s = server();
    seed(&s);
    s.set_faults(FaultPlan::new(1).rule(FaultRule::new(FaultKind::Status500).ops([Op::Get]).key_contains("lib2")));
    let cache = tempfile::tempdir().unwrap();
    let (code, out, err) = warm(
        &s,
        "test-bucket/jars/",
        cache.path(),
        &["--max-attempts", "2", "--exclude", "*.txt"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("jars/lib2.jar"), "{err}");
    assert!(!err.contains("lib3"), "{err}");
    assert!(out.contains("warmed 5 objects"), "{out}");
    // Bad input is refused before any work.
    let (code, _, err) = warm(&s, "test-bucket", cache.path(), &["--include", "a[b"]);
    assert_ne!(code, 0);
    assert!(err.contains("--include"), "{err}");
}

#[test]
fn metrics_and_health_follow_known_reads() {
    let s = server();
    let objects = seed(&s);
    let cache = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let c = cache.path().to_str().unwrap();
    let m = Mount::new(&s, BUCKET, &["--cache", c, "--metrics-addr", &addr, "--no-passthrough"]);
    assert_eq!(http_status_body(port, "/healthz"), (200, "ok\n".into()));
    assert_eq!(http_status_body(port, "/nope").0, 404);
    let (key, body) = &objects[3];
    assert!(fs::read(m.join(key)).unwrap() == *body);
    let (_, text) = http_status_body(port, "/metrics");
    let nblocks = body.len().div_ceil(1 << 20) as f64;
    assert_eq!(metric_sum(&text, "s3cachefs_cache_misses_total"), nblocks);
    assert_eq!(metric_sum(&text, "s3cachefs_cache_hits_total"), 0.0);
    assert_eq!(
        metric_sum(
            &text,
            "s3cachefs_s3_requests_total{operation=\"GetObject\",status=\"206\"}"
        ),
        nblocks
    );
    assert_eq!(metric_sum(&text, "s3cachefs_s3_bytes_total"), body.len() as f64);
    assert_eq!(metric_sum(&text, "s3cachefs_read_bytes_total"), body.len() as f64);
    assert!(metric_sum(&text, "s3cachefs_cache_size_bytes") >= body.len() as f64);
    assert!(metric_sum(&text, "s3cachefs_fuse_operations_total{operation=\"read\"}") >= 1.0);
    drop(m);
    // A second mount on the warm cache: hits, no S3 bytes.
    let m = Mount::new(&s, BUCKET, &["--cache", c, "--metrics-addr", &addr, "--no-passthrough"]);
    assert!(fs::read(m.join(key)).unwrap() == *body);
    let (_, text) = http_status_body(port, "/metrics");
    assert_eq!(metric_sum(&text, "s3cachefs_cache_hits_total"), nblocks);
    assert_eq!(metric_sum(&text, "s3cachefs_cache_hit_bytes_total"), body.len() as f64);
    assert_eq!(metric_sum(&text, "s3cachefs_s3_bytes_total"), 0.0);
    let out = command().args(["stats", "--metrics-addr", &addr]).output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{summary}");
    assert!(
        summary.contains(&format!("{nblocks:.0} hits, 0 misses (100.0% hit ratio)")),
        "{summary}"
    );
    // A port already taken is a clear error.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = busy.local_addr().unwrap().to_string();
    let e = Mount::try_new(&s, BUCKET, &["--metrics-addr", &taken]).err().unwrap();
    assert!(e.contains("--metrics-addr"), "{e}");
}

/// `/healthz` answers 503 when the mountpoint no longer answers, while the daemon itself is
/// alive: here the mount was lazily detached (a file held open keeps its FUSE session serving),
/// first with its empty directory left behind, then with the directory removed as when a pod's
/// volume directory is torn down under it.
#[test]
fn healthz_answers_503_when_the_mountpoint_no_longer_answers() {
    let s = server();
    let objects = seed(&s);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut m = Mount::new(&s, BUCKET, &["--metrics-addr", &addr]);
    assert_eq!(http_status_body(port, "/healthz"), (200, "ok\n".into()));
    let (key, body) = &objects[2];
    let f = fs::File::open(m.join(key)).unwrap();
    let ok = Command::new("umount").arg("-l").arg(m.path()).status().unwrap();
    assert!(ok.success());
    let (status, text) = http_status_body(port, "/healthz");
    assert_eq!(
        status, 503,
        "a detached mount's empty directory is not a healthy mount: {text}"
    );
    fs::remove_dir(m.path()).unwrap();
    let (status, text) = http_status_body(port, "/healthz");
    assert_eq!(status, 503, "{text}");
    // The daemon is alive: it serves metrics and the file still open on the detached mount.
    assert_eq!(http_status_body(port, "/metrics").0, 200);
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut &f, &mut got).unwrap();
    assert!(got == *body);
    // Once the last file is closed, the detached mount goes away and the daemon exits.
    drop(f);
    let status = m.wait_exit();
    assert!(status.success(), "{status}\n{}", m.log());
}

#[test]
fn systemd_notify_ready_and_stopping() {
    let s = server();
    let d = tempfile::tempdir().unwrap();
    let sock_path = d.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mnt = d.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _cleanup = UnmountOnDrop(mnt.clone());
    let mut child = command()
        .args(["mount", BUCKET])
        .arg(&mnt)
        .args(endpoint_args(&s))
        .arg("--foreground")
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    assert!(is_mounted(&mnt), "READY=1 only once mounted");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(wait_timeout(&mut child, Duration::from_secs(20)).unwrap().success());
}

#[test]
fn sighup_makes_changes_visible_with_indefinite_ttl() {
    let s = server();
    s.put(BUCKET, "conf/app.conf", b"v1".to_vec());
    let m = Mount::new(&s, BUCKET, &["--metadata-ttl", "indefinite"]);
    assert_eq!(fs::read(m.join("conf/app.conf")).unwrap(), b"v1");
    assert_eq!(fs::read_dir(m.join("conf")).unwrap().count(), 1);
    s.put(BUCKET, "conf/app.conf", b"version2".to_vec());
    s.put(BUCKET, "conf/new.conf", b"n".to_vec());
    assert_eq!(
        fs::metadata(m.join("conf/app.conf")).unwrap().len(),
        2,
        "cached indefinitely"
    );
    unsafe { libc::kill(m.pid() as i32, libc::SIGHUP) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !m.log().contains("SIGHUP") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fs::read(m.join("conf/app.conf")).unwrap(), b"version2");
    assert_eq!(fs::read(m.join("conf/new.conf")).unwrap(), b"n");
    assert_eq!(fs::read_dir(m.join("conf")).unwrap().count(), 2);
}

#[test]
fn stale_mount_of_a_killed_daemon_is_cleared_on_the_next_mount() {
    let s = server();
    s.put(BUCKET, "f", b"x".to_vec());
    let mut m = Mount::new(&s, BUCKET, &[]);
    let path = m.path().to_path_buf();
    let _cleanup = UnmountOnDrop(path.clone());
    m.signal_and_wait(libc::SIGKILL);
    let err = fs::metadata(&path).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "a stale mount is left behind");
    let mut c = command();
    c.args(["mount", BUCKET]).arg(&path).args(endpoint_args(&s));
    let out = run_with_timeout(c, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("cleared a stale mount"), "{stderr}");
    assert_eq!(fs::read(path.join("f")).unwrap(), b"x");
    assert!(Command::new("umount").arg(&path).status().unwrap().success());
    drop(m);
}

/// A user other than root cannot `umount2` even their own FUSE mount: the next mount clears the
/// stale one through `fusermount3 -uz` instead. Run as uid 65534 (nobody); CI runs as root.
#[test]
fn stale_mount_of_a_user_s_killed_daemon_is_cleared_through_fusermount() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    const NOBODY: u32 = 65534;
    // Users reach /dev/fuse where distributions make it 0666; some images keep it 0600. The
    // guard puts the mode back.
    struct DevFuseMode(u32);
    impl Drop for DevFuseMode {
        fn drop(&mut self) {
            let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(self.0));
        }
    }
    let mode = fs::metadata("/dev/fuse").unwrap().permissions().mode() & 0o7777;
    let _restore = DevFuseMode(mode);
    fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
    let s = server();
    s.put(BUCKET, "f", b"x".to_vec());
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("mnt");
    fs::create_dir(&path).unwrap();
    std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
    let _cleanup = UnmountOnDrop(path.clone());
    // A copy of the binary nobody can run, wherever the checkout lives.
    let exe = dir.path().join("s3cachefs");
    fs::copy(bin(), &exe).unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    // As nobody (std drops root's supplementary groups when it sets the uid).
    let nobody = |program: &Path| {
        let mut c = Command::new(program);
        hermetic(&mut c).uid(NOBODY).gid(NOBODY);
        c
    };
    let mut first = nobody(&exe);
    first
        .args(["mount", BUCKET])
        .arg(&path)
        .args(endpoint_args(&s))
        .arg("--foreground");
    let log = dir.path().join("first.log");
    first.stderr(fs::File::create(&log).unwrap());
    let mut child = first.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !is_mounted(&path) {
        assert!(
            std::time::Instant::now() < deadline,
            "the first mount did not come up: {}",
            fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Only its owner may look into the mount, stale or not (root gets EACCES).
    let mut stat = nobody(Path::new("stat"));
    let stat = stat.arg(&path).output().unwrap();
    assert!(
        String::from_utf8_lossy(&stat.stderr).contains("not connected"),
        "a stale mount is left behind: {stat:?}"
    );
    let mut again = nobody(&exe);
    again.args(["mount", BUCKET]).arg(&path).args(endpoint_args(&s));
    let out = run_with_timeout(again, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("cleared a stale mount"), "{stderr}");
    let mut cat = nobody(Path::new("cat"));
    cat.arg(path.join("f"));
    assert_eq!(cat.output().unwrap().stdout, b"x");
    assert!(Command::new("umount").arg(&path).status().unwrap().success());
}

/// Lazily unmounts a path on drop, for tests that start a daemon without `Mount`.
struct UnmountOnDrop(PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// /sbin/mount.fuse.s3cachefs → the binary under test, removed on drop.
struct Helper(PathBuf);

impl Helper {
    fn install() -> Helper {
        let p = PathBuf::from("/sbin/mount.fuse.s3cachefs");
        let _ = fs::remove_file(&p);
        std::os::unix::fs::symlink(bin(), &p).unwrap();
        Helper(p)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[test]
fn mount_dash_t_and_an_fstab_line_work() {
    let s = server();
    s.put(BUCKET, "jars/a.jar", b"jar".to_vec());
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache");
    let _helper = Helper::install();
    let opts = format!(
        "ro,_netdev,allow_other,cache={},metadata_ttl=indefinite,endpoint_url={},region=us-east-1,no_sign_request",
        cache.display(),
        s.endpoint()
    );
    // mount -t
    let mnt = d.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _cleanup = UnmountOnDrop(mnt.clone());
    let out = Command::new("mount")
        .args(["-t", "fuse.s3cachefs", BUCKET])
        .arg(&mnt)
        .args(["-o", &opts])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(mnt.join("jars/a.jar")).unwrap(), b"jar");
    assert!(cache.join("v1").is_dir(), "cache= was honoured");
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    // an fstab line
    let fstab = d.path().join("fstab");
    fs::write(
        &fstab,
        format!("{BUCKET} {} fuse.s3cachefs {opts} 0 0\n", mnt.display()),
    )
    .unwrap();
    let out = Command::new("mount").arg("-T").arg(&fstab).arg(&mnt).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(mnt.join("jars/a.jar")).unwrap(), b"jar");
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
}

/// `http_get` with a deadline on the whole exchange.
fn http_get_within(port: u16, path: &str, limit: Duration) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r)
        .unwrap_or_else(|e| panic!("GET {path}: {e} (within {limit:?})"));
    let status = r.split(' ').nth(1).unwrap().parse().unwrap();
    (status, r.split_once("\r\n\r\n").unwrap().1.to_string())
}

#[test]
fn metrics_answer_while_many_idle_connections_are_open() {
    let s = server();
    s.put(BUCKET, "f", b"x".to_vec());
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _m = Mount::new(&s, BUCKET, &["--metrics-addr", &addr]);
    // Twice the connection cap (64), none of which ever sends a byte.
    let idle: Vec<_> = (0..128)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // Idle connections are closed after the 5 s header timeout, so their slots come free: the
    // scrape is answered even though it arrives behind 128 of them.
    let (status, text) = http_get_within(port, "/metrics", Duration::from_secs(30));
    assert_eq!(status, 200);
    assert!(text.contains("# TYPE s3cachefs_cache_hits counter"), "{text}");
    // The server closed the idle connections it served (read returns end of file, not a timeout).
    let mut first = &idle[0];
    first.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 16];
    use std::io::Read;
    assert_eq!(
        first.read(&mut buf).unwrap(),
        0,
        "an idle connection is closed by the server"
    );
    drop(idle);
    assert_eq!(
        http_get_within(port, "/healthz", Duration::from_secs(10)),
        (200, "ok\n".into())
    );
}

#[test]
fn concurrent_health_probes_all_answer() {
    let s = server();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let m = Mount::new(&s, BUCKET, &["--metrics-addr", &addr]);
    let probes: Vec<_> = (0..32)
        .map(|_| std::thread::spawn(move || http_get_within(port, "/healthz", Duration::from_secs(10))))
        .collect();
    for p in probes {
        assert_eq!(p.join().unwrap(), (200, "ok\n".into()));
    }
    drop(m);
}

/// Runs `s3cachefs ARGS` in a private mount namespace whose `/run` (and `/dev/log`, where the
/// machine has one) is `dir`, so the daemon's syslog is the socket `dir/syslog` (the `syslog`
/// crate connects to `/dev/log`, else `/var/run/syslog`).
fn in_namespace_with_syslog(dir: &Path, args: &[String]) -> std::process::Output {
    let script = r#"set -e
d="$1"; shift
if [ -e /dev/log ]; then mount --bind "$d/syslog" /dev/log; fi
mount --bind "$d" /run
[ -L /var/run ] || mount --bind "$d" /var/run
exec "$@""#;
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(dir)
        .arg(common::bin())
        .args(args);
    hermetic(&mut c);
    run_with_timeout(c, Duration::from_secs(60))
}

/// Syslog records received on `sock` until one contains `until` (30 s at most).
fn records_until(sock: &std::os::unix::net::UnixDatagram, until: &str) -> Vec<String> {
    let mut out = vec![];
    let mut buf = vec![0u8; 65536];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let Ok(n) = sock.recv(&mut buf) else { continue };
        let r = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = r.contains(until);
        out.push(r);
        if done {
            return out;
        }
    }
    panic!("no syslog record with {until:?} within 30 s; got:\n{}", out.join("\n"));
}

#[test]
fn a_background_daemon_logs_to_syslog_with_each_events_severity() {
    let s = server();
    s.put(BUCKET, "f", b"x".to_vec());
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    fs::create_dir(&run).unwrap();
    let sock = std::os::unix::net::UnixDatagram::bind(run.join("syslog")).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mnt = d.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mut args = vec!["mount".to_string(), BUCKET.into(), mnt.to_string_lossy().into_owned()];
    args.extend(endpoint_args(&s));
    // Backgrounded: the parent exits 0 once the mount is live (only inside the namespace).
    let out = in_namespace_with_syslog(&run, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let records = records_until(&sock, "mounted");
    // <PRI> = facility daemon (3) * 8 + severity: err is 3, warning 4, info 6.
    let mounted = records.iter().find(|r| r.contains("mounted")).unwrap();
    assert!(mounted.starts_with("<30>"), "{mounted}");
    // The SDK warns that the AWS_CONFIG_FILE the harness names does not exist.
    assert!(
        records
            .iter()
            .any(|r| r.starts_with("<28>") && r.contains("config file")),
        "warnings are sent at LOG_WARNING:\n{}",
        records.join("\n")
    );
    assert!(!records.iter().any(|r| r.starts_with("<27>")), "{}", records.join("\n"));
    // Stop the daemon (its pid is in every record: "s3cachefs[PID]: ...").
    let pid: i32 = mounted
        .split("s3cachefs[")
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(std::time::Instant::now() < deadline, "the daemon did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A failure is logged at LOG_ERR (3) before the parent reports it.
    let mut args = vec![
        "mount".to_string(),
        "no-such-bucket".into(),
        mnt.to_string_lossy().into_owned(),
    ];
    args.extend(endpoint_args(&s));
    let out = in_namespace_with_syslog(&run, &args);
    assert!(!out.status.success());
    let records = records_until(&sock, "no-such-bucket");
    let failure = records.iter().find(|r| r.contains("no-such-bucket")).unwrap();
    assert!(failure.starts_with("<27>"), "{failure}");
}

#[test]
fn a_log_file_is_created_0640() {
    use std::os::unix::fs::PermissionsExt;
    let s = server();
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("s3cachefs.log");
    let m = Mount::new(&s, BUCKET, &["--log-file", log.to_str().unwrap()]);
    let mode = fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "{mode:o}");
    drop(m);
    assert!(fs::read_to_string(&log).unwrap().contains("mounted"));
}

/// Names a sample of each family in `/metrics` may carry, from its `# TYPE` line (prometheus-client
/// text format): a counter's samples end in `_total`, a histogram's in `_bucket`, `_sum` and
/// `_count`, a gauge's are the family name.
fn exported_sample_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        let mut t = line.split_whitespace();
        if (t.next(), t.next()) != (Some("#"), Some("TYPE")) {
            continue;
        }
        let (Some(family), Some(kind)) = (t.next(), t.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
    }
    names
}

#[test]
fn every_metric_the_grafana_dashboard_queries_is_exported() {
    // Every tier, so that every labelled family has a sample: the disk cache, a shared tier (its
    // own bucket), the origin; a failing GET (500) for the FUSE error family.
    let s = server();
    s.create_bucket("shared-bucket");
    s.put(BUCKET, "jars/a.jar", data(3 << 20, 5));
    s.put(BUCKET, "jars/bad.jar", data(1000, 6));
    let cache = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let m = Mount::new(
        &s,
        BUCKET,
        &[
            "--cache",
            cache.path().to_str().unwrap(),
            "--shared-cache",
            "s3://shared-bucket/",
            "--metrics-addr",
            &addr,
            "--max-attempts",
            "1",
        ],
    );
    fs::read(m.join("jars/a.jar")).unwrap();
    s.set_faults(FaultPlan::new(1).rule(FaultRule::new(FaultKind::Status500).ops([Op::Get]).key_contains("bad")));
    assert!(fs::read(m.join("jars/bad.jar")).is_err());
    let (status, text) = http_get_within(port, "/metrics", Duration::from_secs(10));
    assert_eq!(status, 200);
    let exported = exported_sample_names(&text);
    let dashboard =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/s3cachefs.json")).unwrap();
    // Every s3cachefs_* name in a query ("expr") or a variable's query.
    let mut used = std::collections::BTreeSet::new();
    for line in dashboard
        .lines()
        .filter(|l| l.contains("\"expr\"") || l.contains("\"query\""))
    {
        let mut rest = line;
        while let Some(i) = rest.find("s3cachefs_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            used.insert(name);
        }
    }
    assert!(
        used.len() >= 25,
        "only {} metric names found in the dashboard: {used:?}",
        used.len()
    );
    let missing: Vec<_> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the daemon does not export: {missing:?}\n{text}"
    );
}
