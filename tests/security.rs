//! Security: access control tested with a second uid, a private cache directory, credentials
//! and signatures kept out of the logs at every level, and hostile key names (property tests)
//! that never make a bad file name nor lead outside the mounted prefix.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use proptest::prelude::*;
use s3cachefs::cachedir::{Area, area_path, version_path};
use s3cachefs_testserver::{FaultKind, FaultPlan, FaultRule, Op};

/// The unprivileged "nobody" user and group.
const NOBODY: u32 = 65534;

/// Runs `cmd args` as `uid`:`uid` (no supplementary groups).
fn as_user(uid: u32, cmd: &str, args: &[&OsStr]) -> Output {
    Command::new(cmd)
        .args(args)
        .uid(uid)
        .gid(uid)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn denied(out: &Output) -> bool {
    !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied")
}

/// Lets every user reach the mountpoint (the harness's temporary directory is 0700).
fn open_parent(m: &Mount) {
    fs::set_permissions(m.path().parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
}

// ---------------------------------------------------------------------------------------------
// 7. Access control with a second uid.
// ---------------------------------------------------------------------------------------------

#[test]
fn other_users_get_eacces_without_allow_other() {
    let s = server();
    s.put(BUCKET, "dir/f.txt", b"secret".to_vec());
    let m = Mount::new(&s, BUCKET, &[]);
    open_parent(&m);
    assert_eq!(
        fs::read(m.join("dir/f.txt")).unwrap(),
        b"secret",
        "the mounting user reads"
    );
    let f = m.join("dir/f.txt");
    for (cmd, arg) in [("cat", &f), ("stat", &f), ("ls", &m.path().to_path_buf())] {
        let out = as_user(NOBODY, cmd, &[arg.as_os_str()]);
        assert!(denied(&out), "{cmd} as nobody: {out:?}");
    }
}

#[test]
fn allow_other_honours_uid_gid_and_modes() {
    let s = server();
    s.put(BUCKET, "dir/f.txt", b"shared".to_vec());
    let cases: [(&[&str], bool, bool, &str); 3] = [
        // (flags, nobody may read the file, nobody may list the directory, stat -c '%u %g %a')
        (
            &["--uid", "0", "--gid", "0", "--file-mode", "0600", "--dir-mode", "0755"],
            false,
            true,
            "0 0 600",
        ),
        (
            &["--uid", "0", "--gid", "0", "--file-mode", "0644", "--dir-mode", "0711"],
            true,
            false,
            "0 0 644",
        ),
        (
            &[
                "--uid",
                "65534",
                "--gid",
                "65534",
                "--file-mode",
                "0400",
                "--dir-mode",
                "0500",
            ],
            true,
            true,
            "65534 65534 400",
        ),
    ];
    for (flags, read_ok, list_ok, owner) in cases {
        let mut args = vec!["--allow-other"];
        args.extend_from_slice(flags);
        let m = Mount::new(&s, BUCKET, &args);
        open_parent(&m);
        let f = m.join("dir/f.txt");
        let out = as_user(NOBODY, "cat", &[f.as_os_str()]);
        if read_ok {
            assert!(out.status.success(), "{flags:?}: {out:?}");
            assert_eq!(out.stdout, b"shared");
        } else {
            assert!(denied(&out), "{flags:?}: {out:?}");
        }
        let out = as_user(NOBODY, "ls", &[m.join("dir").as_os_str()]);
        assert_eq!(out.status.success(), list_ok, "{flags:?}: {out:?}");
        if !list_ok {
            assert!(denied(&out), "{flags:?}: {out:?}");
        }
        let out = as_user(
            NOBODY,
            "stat",
            &[OsStr::new("-c"), OsStr::new("%u %g %a"), f.as_os_str()],
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), owner, "{flags:?}: {out:?}");
        // Another user without the owner's rights: the "other" bits apply.
        if flags.contains(&"0400") {
            assert!(denied(&as_user(NOBODY - 1, "cat", &[f.as_os_str()])), "{flags:?}");
        }
    }
}

/// Every file and directory under `dir`, with its metadata (not following symlinks).
fn tree(dir: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let m = fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            out.push((e.path(), m));
        }
    }
    out
}

#[test]
fn cache_directory_and_files_are_private_to_the_daemon_user() {
    let s = server();
    let body = data(3 << 20, 1);
    s.put(BUCKET, "jars/a.jar", body.clone());
    s.put(BUCKET, "jars/b.jar", b"b".to_vec());
    let parent = tempfile::tempdir().unwrap();
    fs::set_permissions(parent.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let cache = parent.path().join("cache");
    // Created by an administrator with the usual umask: left as it is (it may be a
    // filesystem's root); the daemon's own version directory below it is private.
    fs::create_dir(&cache).unwrap();
    fs::set_permissions(&cache, fs::Permissions::from_mode(0o755)).unwrap();
    let m = Mount::new(&s, BUCKET, &["--cache", cache.to_str().unwrap()]);
    assert!(fs::read(m.join("jars/a.jar")).unwrap() == body);
    assert_eq!(fs::read(m.join("jars/b.jar")).unwrap(), b"b");
    let deadline = Instant::now() + Duration::from_secs(20);
    while tree(&area_path(&cache, Area::Full))
        .iter()
        .filter(|(_, m)| m.is_file())
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "no assembled file");
        std::thread::sleep(Duration::from_millis(20));
    }
    let entries = tree(&cache);
    for area in Area::ALL {
        assert!(area_path(&cache, area).is_dir(), "{area:?}");
    }
    assert!(
        entries
            .iter()
            .any(|(p, m)| m.is_file() && p.starts_with(area_path(&cache, Area::Meta)))
    );
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    assert_eq!(
        fs::metadata(&cache).unwrap().mode() & 0o7777,
        0o755,
        "an existing directory keeps its mode"
    );
    assert_eq!(fs::metadata(version_path(&cache)).unwrap().mode() & 0o777, 0o700);
    for (p, md) in entries.iter().filter(|(p, _)| p != &cache) {
        assert_eq!(md.uid(), me, "{}", p.display());
        assert_eq!(md.mode() & 0o077, 0, "{} is {:o}", p.display(), md.mode() & 0o777);
    }
    let some_file = entries.iter().find(|(_, m)| m.is_file()).unwrap().0.clone();
    for p in [&version_path(&cache), &some_file] {
        let cmd = if p.is_dir() { "ls" } else { "cat" };
        assert!(denied(&as_user(NOBODY, cmd, &[p.as_os_str()])), "{}", p.display());
    }
    eprintln!(
        "SECURITY cache-private: {} entries, all 0700/0600 and owned by uid {me}",
        entries.len()
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Credentials and signed requests never reach the logs, at any level.
// ---------------------------------------------------------------------------------------------

const MARKERS: [&str; 3] = ["AKIDMARKERSECRET1", "marker-secret-value-xyz", "marker-session-token"];

/// A `s3cachefs` command with the marker credentials.
fn marked(s: &TestServer, rust_log: Option<&str>) -> Command {
    let mut c = command();
    c.env("AWS_ACCESS_KEY_ID", MARKERS[0])
        .env("AWS_SECRET_ACCESS_KEY", MARKERS[1])
        .env("AWS_SESSION_TOKEN", MARKERS[2]);
    if let Some(l) = rust_log {
        c.env("RUST_LOG", l);
    }
    let _ = s;
    c
}

/// A foreground mount started with our own environment; unmounted on drop.
struct Daemon {
    child: Option<Child>,
    mnt: PathBuf,
}

impl Daemon {
    fn start(mut cmd: Command, mnt: &Path) -> Daemon {
        let child = cmd.spawn().unwrap();
        let mut d = Daemon {
            child: Some(child),
            mnt: mnt.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(mnt) {
            assert!(d.child.as_mut().unwrap().try_wait().unwrap().is_none(), "daemon exited");
            assert!(Instant::now() < deadline, "not mounted after 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            if wait_timeout(&mut child, Duration::from_secs(10)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Mounts with the marker credentials, exercises reads, listings, misses, retries and
/// failures, unmounts; returns everything logged.
fn logged_session(s: &TestServer, rust_log: Option<&str>, to_file: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let log = dir.path().join("log");
    let cache = dir.path().join("cache");
    let mut cmd = marked(s, rust_log);
    cmd.arg("mount")
        .arg(BUCKET)
        .arg(&mnt)
        .args(endpoint_args(s))
        .args(["--foreground", "--log-level", "trace", "--max-attempts", "2"])
        .arg("--cache")
        .arg(&cache)
        .stdout(Stdio::null());
    if to_file {
        cmd.arg("--log-file").arg(&log).stderr(Stdio::null());
    } else {
        cmd.stderr(fs::File::create(&log).unwrap());
    }
    let mut d = Daemon::start(cmd, &mnt);
    s.set_faults(
        FaultPlan::new(3)
            .rule(FaultRule::new(FaultKind::SlowDown).ops([Op::Get]).max_count(1))
            .rule(FaultRule::new(FaultKind::Status500).key_contains("broken")),
    );
    assert!(fs::read(mnt.join("jars/a.jar")).unwrap() == s.get_object(BUCKET, "jars/a.jar").unwrap());
    assert_eq!(fs::read_dir(mnt.join("jars")).unwrap().count(), 3);
    assert!(fs::metadata(mnt.join("jars/missing")).is_err());
    assert!(fs::read(mnt.join("jars/broken.jar")).is_err());
    s.clear_faults();
    d.stop();
    // Warm, at trace level too.
    // (Output to a file: a verbose log must not fill a pipe nobody reads yet.)
    let warm_log = dir.path().join("warm.log");
    let mut warm = marked(s, rust_log);
    warm.arg("warm")
        .arg(BUCKET)
        .arg("--cache")
        .arg(dir.path().join("cache2"))
        .args(endpoint_args(s))
        .args(["--log-level", "trace"])
        .stdout(fs::File::create(dir.path().join("warm.out")).unwrap())
        .stderr(fs::File::create(&warm_log).unwrap());
    let mut child = warm.spawn().unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(60)).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("warm did not finish within 60 s")
    });
    assert!(status.success(), "{}", fs::read_to_string(&warm_log).unwrap());
    format!(
        "{}{}{}",
        fs::read_to_string(&log).unwrap(),
        fs::read_to_string(dir.path().join("warm.out")).unwrap(),
        fs::read_to_string(&warm_log).unwrap(),
    )
}

#[test]
fn credentials_and_signatures_never_reach_the_logs_at_any_level() {
    let s = server();
    s.put(BUCKET, "jars/a.jar", data(2 << 20, 5));
    s.put(BUCKET, "jars/b.jar", b"b".to_vec());
    s.put(BUCKET, "jars/broken.jar", b"x".to_vec());
    let mut lines = 0;
    for (rust_log, to_file) in [
        (Some("trace"), false),
        (Some("trace,aws_sigv4=trace,aws_smithy_runtime=trace,hyper=trace"), true),
        (None, false),
    ] {
        let log = logged_session(&s, rust_log, to_file);
        assert!(
            log.contains("TRACE") || log.contains("DEBUG"),
            "the log is verbose:\n{log}"
        );
        for (n, line) in log.lines().enumerate() {
            for bad in MARKERS
                .iter()
                .chain(&["X-Amz-Signature", "Signature=", "Credential=", "x-amz-security-token"])
            {
                assert!(
                    !line.to_ascii_lowercase().contains(&bad.to_ascii_lowercase()),
                    "RUST_LOG={rust_log:?}: line {n} shows {bad:?}: {line}"
                );
            }
        }
        lines += log.lines().count();
    }
    eprintln!("SECURITY secrets: {lines} log lines at trace level searched, no credential or signature");
}

// ---------------------------------------------------------------------------------------------
// 9. Hostile key names: every name shown is a valid file name, nothing leads outside the prefix.
// ---------------------------------------------------------------------------------------------

mod hostile {
    use super::*;
    use async_trait::async_trait;
    use bytes::Bytes;
    use s3cachefs::config::Ttl;
    use s3cachefs::fs::{FileKind, Fs, FsSettings, Looked, ROOT_INO};
    use s3cachefs::meta::Namespace;
    use s3cachefs::object::{ByteRange, ObjectMeta};
    use s3cachefs::read::BlockReader;
    use s3cachefs::store::memory::MemoryStore;
    use s3cachefs::store::{ListPage, ListRequest, ObjectStore, StoreError};

    /// A store that records every key and prefix asked for.
    pub struct Recording {
        pub inner: MemoryStore,
        pub asked: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl ObjectStore for Recording {
        async fn list(&self, req: ListRequest<'_>) -> Result<ListPage, StoreError> {
            self.asked.lock().unwrap().push(req.prefix.to_string());
            self.inner.list(req).await
        }
        async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
            self.asked.lock().unwrap().push(key.to_string());
            self.inner.head(key).await
        }
        async fn get_range(&self, key: &str, range: ByteRange, etag: &str) -> Result<Bytes, StoreError> {
            self.asked.lock().unwrap().push(key.to_string());
            self.inner.get_range(key, range, etag).await
        }
        fn describe(&self) -> String {
            "recording".into()
        }
    }

    pub const PREFIX: &str = "pre/";

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("a".to_string()),
            Just("b.jar".to_string()),
            Just("x\0y".to_string()),
            Just(" ".to_string()),
            Just("é".to_string()),
            Just("𝄞".to_string()),
            Just("z".repeat(256)),
            "[a-c./\\\\%]{1,4}",
        ]
    }

    pub fn key() -> impl Strategy<Value = String> {
        let lead = prop_oneof![
            4 => Just(PREFIX.to_string()),
            1 => Just(String::new()),
            1 => Just("pre".to_string()),
            1 => Just("pre//".to_string()),
            1 => Just("pre/../".to_string()),
            1 => Just("pr/".to_string()),
        ];
        (lead, proptest::collection::vec(segment(), 1..4)).prop_map(|(l, segs)| format!("{l}{}", segs.join("/")))
    }

    pub fn hostile_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("../..".to_string()),
            Just("a/b".to_string()),
            Just("/".to_string()),
            Just("x\0y".to_string()),
            Just("z".repeat(256)),
        ]
    }

    /// Walks the whole tree of a mount of `PREFIX` over `keys`; checks every name shown and that
    /// no request asks outside the prefix. Returns the paths seen.
    pub async fn walk(keys: &BTreeSet<String>, hostile: &[String]) -> Vec<String> {
        let store = Arc::new(Recording {
            inner: MemoryStore::new(),
            asked: Mutex::default(),
        });
        for k in keys {
            store.inner.put(k, Bytes::from_static(b"data"));
        }
        let ns = Arc::new(Namespace::new(store.clone(), Ttl::Indefinite, Ttl::Indefinite));
        let reader = Arc::new(BlockReader::memory_only(store.clone(), 64 << 10, 1 << 20));
        let settings = FsSettings {
            passthrough: false,
            uid: 0,
            gid: 0,
            file_mode: 0o644,
            dir_mode: 0o755,
        };
        let fs = Fs::new(ns, reader, PREFIX, settings);
        let mut seen = Vec::new();
        let mut paths: HashMap<u64, String> = HashMap::from([(ROOT_INO, String::new())]);
        let mut stack = vec![ROOT_INO];
        while let Some(dir) = stack.pop() {
            let base = paths[&dir].clone();
            // Hostile names never resolve (the kernel never sends most of them; we check anyway).
            for name in hostile {
                if let Ok(Looked::Found(a)) = fs.lookup(dir, OsStr::new(name)).await {
                    panic!("{name:?} in {base:?} resolved to {a:?}");
                }
            }
            let fh = fs.opendir(dir).await.unwrap();
            // READDIRPLUS entries carry inodes the kernel (here, this walk) may use.
            let entries: Vec<_> = fs.readdirplus(fh, 2).unwrap().collect();
            fs.releasedir(fh);
            for e in entries {
                let name = &*e.name;
                assert!(
                    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']) && name.len() <= 255,
                    "bad name {name:?} in {base:?}"
                );
                let path = format!("{base}{name}");
                match e.attr.kind {
                    FileKind::Dir => {
                        let dir_key = format!("{PREFIX}{path}/");
                        assert!(
                            keys.iter().any(|k| k.starts_with(&dir_key)),
                            "directory {path:?} of nothing"
                        );
                        paths.insert(e.attr.ino, format!("{path}/"));
                        stack.push(e.attr.ino);
                    }
                    FileKind::File => {
                        assert!(keys.contains(&format!("{PREFIX}{path}")), "file {path:?} is no key");
                        // Lookups agree with the listing, and the file reads.
                        assert!(matches!(
                            fs.lookup(dir, OsStr::new(name)).await.unwrap(),
                            Looked::Found(_)
                        ));
                        let o = fs.open(e.attr.ino, false).await.unwrap();
                        assert_eq!(&fs.read(o.fh, 0, 100).await.unwrap()[..], b"data");
                        fs.release(o.fh);
                    }
                }
                seen.push(path);
            }
        }
        for asked in store.asked.lock().unwrap().iter() {
            assert!(asked.starts_with(PREFIX), "asked S3 for {asked:?}, outside {PREFIX:?}");
        }
        seen
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    /// Arbitrary keys (empty, ".", ".." and over-long segments, NUL, "//", keys outside the
    /// prefix): every name the mount shows is a valid file name of a key under the prefix, and
    /// no request ever leaves the prefix.
    #[test]
    fn hostile_keys_never_make_bad_names_or_escape_the_prefix(
        keys in proptest::collection::btree_set(hostile::key(), 1..24),
        names in proptest::collection::vec(hostile::hostile_name(), 1..4),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let seen = rt.block_on(hostile::walk(&keys, &names));
        // Every well-formed key under the prefix is reachable.
        for k in &keys {
            if let Some(rel) = k.strip_prefix(hostile::PREFIX)
                && rel.split('/').all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains('\0') && s.len() <= 255)
                && !keys.iter().any(|o| o.starts_with(&format!("{k}/")))
            {
                prop_assert!(seen.contains(&rel.to_string()), "{rel:?} not shown; seen {seen:?}");
            }
        }
    }
}
