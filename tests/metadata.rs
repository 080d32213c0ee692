//! Persisted metadata through real mounts and the real S3 test server: a restarted daemon
//! answers listings, stats and reads with zero S3 requests; TTLs (positive and negative) count
//! from the original fetch across restarts; daemons share what they persisted; crashes,
//! corrupt files, SIGHUP refreshes and changed objects are handled.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use s3cachefs::cachedir::{Area, area_path};

const MIB: usize = 1 << 20;

/// A small tree: files at several depths, an implicit directory, a marker directory, and one
/// object spanning two blocks.
fn seed(s: &TestServer) -> Vec<(String, Vec<u8>)> {
    let objects: Vec<(String, Vec<u8>)> = [
        ("top.txt", 10),
        ("jars/a.jar", 5_000),
        ("jars/b.jar", MIB + 1_000),
        ("jars/lib/c.jar", 300),
        ("data/2024/01/part-0.parquet", 2_000),
        ("data/2024/01/part-1.parquet", 0),
        ("data/2024/02/part-0.parquet", 700),
        ("conf/app.conf", 3),
    ]
    .iter()
    .enumerate()
    .map(|(i, (k, n))| (k.to_string(), data(*n, i as u64 + 1)))
    .collect();
    for (k, b) in &objects {
        s.put(BUCKET, k, b.clone());
    }
    s.put(BUCKET, "empty/", Vec::new());
    objects
}

/// What a walk saw: every path with its kind, size and mtime (directories' times are the
/// mount's, so not compared), and the bytes of every file.
type Seen = Vec<(String, bool, u64, i64, Option<Vec<u8>>)>;

/// `ls -lR` (readdir + stat of everything) and a read of every file.
fn walk_and_read(m: &Mount) -> Seen {
    walk(m.path())
        .into_iter()
        .map(|(rel, meta)| {
            let dir = meta.is_dir();
            let bytes = (!dir).then(|| fs::read(m.join(&rel)).unwrap());
            (rel, dir, meta.len(), if dir { 0 } else { meta.mtime() }, bytes)
        })
        .collect()
}

/// The real `ls -lR` of the mount.
fn ls_lr(m: &Mount) {
    let out = Command::new("ls").arg("-lR").arg(m.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn cache_args(cache: &Path, ttl: &str) -> Vec<String> {
    vec![
        "--cache".into(),
        cache.to_str().unwrap().into(),
        "--metadata-ttl".into(),
        ttl.into(),
    ]
}

fn mount(s: &TestServer, args: &[String]) -> Mount {
    mount_source(s, BUCKET, args)
}

fn mount_source(s: &TestServer, source: &str, args: &[String]) -> Mount {
    let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
    Mount::new(s, source, &args)
}

fn meta_dir(cache: &Path) -> PathBuf {
    area_path(cache, Area::Meta)
}

/// Every persisted record file (listings and lookups of every generation).
fn record_files(cache: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![meta_dir(cache)];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ft = e.file_type().unwrap();
            if ft.is_dir() && name != "tmp" {
                stack.push(e.path());
            } else if ft.is_file() && d != meta_dir(cache) {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn generation_dirs(cache: &Path) -> Vec<String> {
    fs::read_dir(meta_dir(cache))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('g') && n.len() == 17)
        .collect()
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn not_found(p: &Path) -> bool {
    fs::metadata(p).err().map(|e| e.kind()) == Some(std::io::ErrorKind::NotFound)
}

#[test]
fn remount_serves_ls_stat_and_reads_with_zero_s3_requests() {
    let s = server();
    seed(&s);
    let cache = tempfile::tempdir().unwrap();
    let args = cache_args(cache.path(), "indefinite");
    let first = {
        let m = mount(&s, &args);
        assert!(m.log().contains("persisting metadata"), "{}", m.log());
        let seen = walk_and_read(&m);
        // Names looked up without a listing of their directory, and a negative entry.
        assert!(not_found(&m.join("jars/missing.jar")));
        assert!(not_found(&m.join("nothing/here")));
        seen
    };
    assert!(first.iter().any(|(p, ..)| p == "data/2024/01/part-0.parquet"));
    assert!(first.iter().any(|(p, d, ..)| p == "empty/" && *d));
    assert!(!record_files(cache.path()).is_empty());

    let m = mount(&s, &args);
    s.reset_counts();
    ls_lr(&m);
    let second = walk_and_read(&m);
    assert!(not_found(&m.join("jars/missing.jar")));
    assert!(not_found(&m.join("nothing/here")));
    assert_eq!(second, first);
    assert_eq!(
        s.counts(),
        Counts::default(),
        "ls -lR, every stat and every read of a remount make no S3 request"
    );
    // A fresh mount in a new path resolves paths from the root without listings too.
    drop(m);
    let m = mount(&s, &args);
    s.reset_counts();
    for (rel, dir, len, ..) in &first {
        let meta = fs::metadata(m.join(rel)).unwrap();
        assert_eq!((meta.is_dir(), meta.len()), (*dir, *len), "{rel}");
    }
    assert_eq!(s.counts(), Counts::default());
}

#[test]
fn lookups_without_listings_are_persisted_too() {
    let s = server();
    let objects = seed(&s);
    let cache = tempfile::tempdir().unwrap();
    let args = cache_args(cache.path(), "indefinite");
    {
        let m = mount(&s, &args);
        // Paths opened directly (a JVM classpath): lookups of every component, no readdir.
        for (key, body) in &objects {
            assert!(fs::read(m.join(key)).unwrap() == *body);
        }
    }
    let m = mount(&s, &args);
    s.reset_counts();
    for (key, body) in &objects {
        assert!(fs::read(m.join(key)).unwrap() == *body);
    }
    assert_eq!(s.counts(), Counts::default());
}

/// Fails (never skips) when `fetched` is no longer comfortably inside `ttl`: the zero-request
/// assertion that follows would then test nothing. The TTLs below leave the passes many
/// seconds, against well under one here.
fn assert_still_fresh(fetched: Instant, ttl: Duration) {
    let age = fetched.elapsed();
    assert!(
        age < ttl - Duration::from_millis(500),
        "the passes took {age:?}, too close to the {ttl:?} TTL for the within-TTL check"
    );
}

#[test]
fn ttl_counts_from_the_original_fetch_across_restarts() {
    // Long enough that the first passes always finish well inside it; the test waits it out.
    const TTL: Duration = Duration::from_secs(10);
    let s = server();
    seed(&s);
    let cache = tempfile::tempdir().unwrap();
    let args = cache_args(cache.path(), "10");
    let fetched = Instant::now();
    let first = {
        let m = mount(&s, &args);
        walk_and_read(&m)
    };
    {
        let m = mount(&s, &args);
        s.reset_counts();
        let again = walk_and_read(&m);
        assert_still_fresh(fetched, TTL);
        assert_eq!(again, first);
        assert_eq!(s.counts().list + s.counts().head, 0, "{:?}", s.counts());
    }
    s.put(BUCKET, "jars/a.jar", b"changed".to_vec());
    s.put(BUCKET, "jars/new.jar", b"new".to_vec());
    std::thread::sleep((fetched + TTL + Duration::from_millis(200)).saturating_duration_since(Instant::now()));
    let m = mount(&s, &args);
    s.reset_counts();
    assert_eq!(fs::metadata(m.join("jars/a.jar")).unwrap().len(), 7, "refetched");
    assert_eq!(fs::read(m.join("jars/new.jar")).unwrap(), b"new");
    assert!(
        fs::read_dir(m.join("jars"))
            .unwrap()
            .any(|e| e.unwrap().file_name() == "new.jar")
    );
    assert!(s.counts().list > 0);
    drop(m);
    // Rewritten with the new fetch time: a restart right away needs nothing from S3.
    let refetched = Instant::now();
    let m = mount(&s, &args);
    s.reset_counts();
    assert_eq!(fs::metadata(m.join("jars/a.jar")).unwrap().len(), 7);
    assert_still_fresh(refetched, TTL);
    assert_eq!(s.counts().list + s.counts().head, 0, "{:?}", s.counts());
}

#[test]
fn minimal_ttl_never_serves_stale_persisted_data() {
    let s = server();
    seed(&s);
    let cache = tempfile::tempdir().unwrap();
    let args = cache_args(cache.path(), "minimal");
    {
        let m = mount(&s, &args);
        walk_and_read(&m);
    }
    s.put(BUCKET, "top.txt", b"a longer top".to_vec());
    s.put(BUCKET, "conf/other.conf", b"o".to_vec());
    s.delete(BUCKET, "conf/app.conf");
    std::thread::sleep(Duration::from_millis(1100));
    let m = mount(&s, &args);
    assert_eq!(fs::metadata(m.join("top.txt")).unwrap().len(), 12);
    assert_eq!(fs::read(m.join("top.txt")).unwrap(), b"a longer top");
    let names: Vec<_> = fs::read_dir(m.join("conf"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["other.conf"]);
    assert!(not_found(&m.join("conf/app.conf")));
}

#[test]
fn negative_entries_persist_and_expire_with_the_negative_ttl() {
    const NEG: Duration = Duration::from_secs(10);
    let s = server();
    seed(&s);
    let cache = tempfile::tempdir().unwrap();
    let mut args = cache_args(cache.path(), "indefinite");
    args.extend(["--negative-metadata-ttl".into(), "10".into()]);
    let fetched = Instant::now();
    {
        let m = mount(&s, &args);
        assert!(not_found(&m.join("later.txt")));
        assert!(not_found(&m.join("nodir/x")));
        assert!(not_found(&m.join("jars/later.jar")));
    }
    {
        let m = mount(&s, &args);
        s.reset_counts();
        assert!(not_found(&m.join("later.txt")));
        assert!(not_found(&m.join("nodir/x")));
        assert!(not_found(&m.join("jars/later.jar")));
        assert_still_fresh(fetched, NEG);
        assert_eq!(s.counts(), Counts::default());
    }
    s.put(BUCKET, "later.txt", b"here".to_vec());
    s.put(BUCKET, "nodir/x", b"x".to_vec());
    s.put(BUCKET, "jars/later.jar", b"j".to_vec());
    std::thread::sleep((fetched + NEG + Duration::from_millis(200)).saturating_duration_since(Instant::now()));
    let m = mount(&s, &args);
    assert_eq!(fs::read(m.join("later.txt")).unwrap(), b"here");
    assert_eq!(fs::read(m.join("nodir/x")).unwrap(), b"x");
    assert_eq!(fs::read(m.join("jars/later.jar")).unwrap(), b"j");
    // Positive entries persisted at the same time are still used (indefinite TTL).
    s.reset_counts();
    assert!(fs::metadata(m.join("jars")).unwrap().is_dir());
    assert_eq!(s.counts(), Counts::default());
}

#[test]
fn two_daemons_on_one_cache_share_persisted_metadata() {
    let s = server();
    let objects = seed(&s);
    let cache = tempfile::tempdir().unwrap();
    let args = cache_args(cache.path(), "indefinite");
    let a = mount(&s, &args);
    let b = mount(&s, &args);
    let seen_a = walk_and_read(&a);
    s.reset_counts();
    let seen_b = walk_and_read(&b);
    assert_eq!(seen_b, seen_a);
    assert_eq!(
        s.counts(),
        Counts::default(),
        "b uses what a persisted (metadata and blocks)"
    );
    // And the other way round, for lookups without listings, concurrently.
    let c = mount(&s, &args);
    let d = mount(&s, &args);
    let before = s.counts();
    std::thread::scope(|scope| {
        for m in [&c, &d] {
            let objects = &objects;
            scope.spawn(move || {
                for (key, body) in objects {
                    assert!(fs::read(m.join(key)).unwrap() == *body);
                }
            });
        }
    });
    assert_eq!(s.counts(), before);
}

/// Walks without panicking (the daemon may die under it); returns how many entries it saw.
fn walk_lossy(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { return n };
        for e in entries.flatten() {
            n += 1;
            match fs::metadata(e.path()) {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(_) => {}
                Err(_) => return n,
            }
        }
    }
    n
}

#[test]
fn kill_9_during_metadata_writes_leaves_the_cache_usable() {
    let s = server();
    for d in 0..60 {
        for f in 0..8 {
            s.put(BUCKET, &format!("d{d:02}/sub/f{f}"), format!("{d}-{f}").into_bytes());
        }
    }
    let cache = tempfile::tempdir().unwrap();
    let args = cache_args(cache.path(), "indefinite");
    s.set_latency(Duration::from_millis(5));
    {
        let mut m = mount(&s, &args);
        let root = m.path().to_path_buf();
        let walker = std::thread::spawn(move || walk_lossy(&root));
        std::thread::sleep(Duration::from_millis(300));
        m.signal_and_wait(libc::SIGKILL);
        walker.join().unwrap();
    }
    s.set_latency(Duration::ZERO);
    let records = record_files(cache.path());
    assert!(!records.is_empty(), "some metadata was persisted before the kill");
    // What a writer killed mid-write could leave: a torn temp file (old) and, on a filesystem
    // without ordered renames after a power loss, a torn record.
    let tmp = meta_dir(cache.path()).join("tmp/99999.0.tmp");
    fs::write(&tmp, b"S3CFSMET torn").unwrap();
    fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let torn = &records[0];
    let len = fs::metadata(torn).unwrap().len();
    fs::File::options()
        .write(true)
        .open(torn)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    let m = mount(&s, &args);
    let entries = walk(m.path());
    assert_eq!(entries.iter().filter(|(_, meta)| meta.is_file()).count(), 480);
    for d in [0, 31, 59] {
        assert_eq!(
            fs::read_to_string(m.join(&format!("d{d:02}/sub/f7"))).unwrap(),
            format!("{d}-7")
        );
    }
    wait_for("the stale temp file to be removed", Duration::from_secs(10), || {
        !tmp.exists()
    });
    drop(m);
    let m = mount(&s, &args);
    s.reset_counts();
    assert_eq!(walk(m.path()).len(), entries.len());
    assert_eq!(s.counts(), Counts::default());
}

#[test]
fn corrupt_truncated_and_foreign_metadata_files_are_refetched() {
    let s = server();
    seed(&s);
    let cache = tempfile::tempdir().unwrap();
    let args = cache_args(cache.path(), "indefinite");
    let first = {
        let m = mount(&s, &args);
        let seen = walk_and_read(&m);
        assert!(not_found(&m.join("jars/missing.jar")));
        seen
    };
    let cold = s.counts();
    let records = record_files(cache.path());
    assert!(records.len() >= 8, "{records:?}");
    for (i, p) in records.iter().enumerate() {
        let mut bytes = fs::read(p).unwrap();
        match i % 3 {
            0 => {
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x40;
            }
            1 => bytes.truncate(bytes.len() / 2),
            _ => bytes = b"S3CFSBLK\x01\x00\x00\x00 a block, not metadata".to_vec(),
        }
        fs::write(p, bytes).unwrap();
    }
    s.reset_counts();
    {
        let m = mount(&s, &args);
        let seen = walk_and_read(&m);
        assert!(not_found(&m.join("jars/missing.jar")));
        assert_eq!(seen, first);
        assert!(
            m.log().contains("discarding invalid persisted metadata"),
            "a warning is logged:\n{}",
            m.log()
        );
        let c = s.counts();
        assert_eq!(c.get, 0, "data blocks are still cached");
        assert!(
            c.list > 0 && c.list <= cold.list + 1,
            "refetched: {c:?} (cold: {cold:?})"
        );
    }
    // Rewritten: the next restart needs nothing from S3.
    let m = mount(&s, &args);
    s.reset_counts();
    assert_eq!(walk_and_read(&m), first);
    assert_eq!(s.counts(), Counts::default());
}

#[test]
fn a_corrupt_generation_file_invalidates_everything() {
    let s = server();
    seed(&s);
    let cache = tempfile::tempdir().unwrap();
    let args = cache_args(cache.path(), "indefinite");
    let first = walk_and_read(&mount(&s, &args));
    fs::write(meta_dir(cache.path()).join("generation"), b"garbage").unwrap();
    let m = mount(&s, &args);
    s.reset_counts();
    assert_eq!(walk_and_read(&m), first);
    assert!(s.counts().list > 0, "nothing of the unknown generation was trusted");
    assert!(m.log().contains("invalid metadata generation file"), "{}", m.log());
}

fn sighup(m: &Mount) {
    // SAFETY: kill(2) on the pid of a daemon this test started.
    unsafe { libc::kill(m.pid() as i32, libc::SIGHUP) };
    wait_for("the SIGHUP to be handled", Duration::from_secs(10), || {
        m.log().contains("SIGHUP")
    });
}

#[test]
fn sighup_invalidates_persisted_metadata_for_every_daemon() {
    let s = server();
    s.put(BUCKET, "conf/app.conf", b"v1".to_vec());
    let cache = tempfile::tempdir().unwrap();
    let args = cache_args(cache.path(), "indefinite");
    let a = mount(&s, &args);
    assert_eq!(fs::read(a.join("conf/app.conf")).unwrap(), b"v1");
    assert_eq!(fs::read_dir(a.join("conf")).unwrap().count(), 1);
    s.put(BUCKET, "conf/app.conf", b"version2".to_vec());
    s.put(BUCKET, "conf/new.conf", b"n".to_vec());
    {
        // Before the refresh, a restarted daemon trusts what was persisted (indefinite TTL).
        let b = mount(&s, &args);
        assert_eq!(fs::metadata(b.join("conf/app.conf")).unwrap().len(), 2);
        assert_eq!(fs::read_dir(b.join("conf")).unwrap().count(), 1);
    }
    let old_generation = generation_dirs(cache.path());
    assert_eq!(old_generation.len(), 1);
    sighup(&a);
    assert_eq!(fs::read(a.join("conf/app.conf")).unwrap(), b"version2");
    assert_eq!(fs::read_dir(a.join("conf")).unwrap().count(), 2);
    drop(a);
    let c = mount(&s, &args);
    assert_eq!(fs::read(c.join("conf/app.conf")).unwrap(), b"version2");
    assert_eq!(fs::read(c.join("conf/new.conf")).unwrap(), b"n");
    assert_eq!(fs::read_dir(c.join("conf")).unwrap().count(), 2);
    wait_for("the old generation to be deleted", Duration::from_secs(10), || {
        !generation_dirs(cache.path()).contains(&old_generation[0])
    });
}

#[test]
fn a_read_that_finds_a_changed_object_forgets_it_on_disk() {
    let s = server();
    s.put(BUCKET, "d/f", b"small".to_vec());
    s.put(BUCKET, "d/g", b"other".to_vec());
    let cache = tempfile::tempdir().unwrap();
    let args = cache_args(cache.path(), "indefinite");
    {
        let m = mount(&s, &args);
        assert_eq!(fs::read_dir(m.join("d")).unwrap().count(), 2);
        assert_eq!(fs::metadata(m.join("d/f")).unwrap().len(), 5);
        s.put(BUCKET, "d/f", b"much larger".to_vec());
        // Pinned to the old ETag, the GET fails: the daemon forgets what it knew about d/f.
        assert!(fs::read(m.join("d/f")).is_err());
    }
    let m = mount(&s, &args);
    assert_eq!(fs::metadata(m.join("d/f")).unwrap().len(), 11);
    assert_eq!(fs::read(m.join("d/f")).unwrap(), b"much larger");
    assert_eq!(fs::read(m.join("d/g")).unwrap(), b"other");
}

#[test]
fn mounts_of_different_prefixes_share_one_cache_safely() {
    let s = server();
    seed(&s);
    let cache = tempfile::tempdir().unwrap();
    let args = cache_args(cache.path(), "indefinite");
    let whole = walk_and_read(&mount(&s, &args));
    let jars = mount_source(&s, &format!("{BUCKET}/jars/"), &args);
    s.reset_counts();
    let mut names: Vec<String> = walk(jars.path()).into_iter().map(|(p, _)| p).collect();
    names.sort();
    assert_eq!(names, ["a.jar", "b.jar", "lib/", "lib/c.jar"]);
    assert_eq!(
        fs::metadata(jars.join("b.jar")).unwrap().len(),
        whole.iter().find(|e| e.0 == "jars/b.jar").unwrap().2
    );
    assert_eq!(
        s.counts(),
        Counts::default(),
        "the prefix mount reuses the bucket mount's records"
    );
    // A file written by hand in the cache's meta directory is never shown.
    let mut f = fs::File::create(meta_dir(cache.path()).join("stray")).unwrap();
    f.write_all(b"junk").unwrap();
    assert!(not_found(&jars.join("stray")));
}
