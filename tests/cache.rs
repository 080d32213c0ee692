//! The disk cache through real mounts: persistence across remounts, sharing and coalescing
//! across processes, the size bound, corruption, crashes and a full disk.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;
use s3cachefs::cachedir::{Area, area_path};

const MIB: usize = 1 << 20;

/// The files in the shard directories of `area`.
fn files(cache: &Path, area: Area) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for shard in fs::read_dir(area_path(cache, area)).unwrap() {
        for f in fs::read_dir(shard.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort();
    out
}

/// The object files (their data, not their indexes).
fn object_files(cache: &Path) -> Vec<std::path::PathBuf> {
    let mut out = files(cache, Area::Full);
    out.retain(|p| p.extension().is_none());
    out
}

fn seed_jars(s: &TestServer, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let key = format!("jars/lib{i}.jar");
            let body = data(100_000 + i * 350_000, i as u64 + 100);
            s.put(BUCKET, &key, body.clone());
            (key, body)
        })
        .collect()
}

/// Bytes on disk under `dir`, counting each file once, as du(1) does. Sampled while the daemon
/// writes, a walk that reads `tmp/` before `blocks/` would otherwise count a block renamed from
/// one to the other in between twice (one block over the bound, though the cache never was).
fn du_once(dir: &Path) -> u64 {
    fn walk(p: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
        let Ok(m) = fs::symlink_metadata(p) else { return 0 };
        let mut total = if seen.insert((m.dev(), m.ino())) {
            m.blocks() * 512
        } else {
            0
        };
        if m.is_dir()
            && let Ok(entries) = fs::read_dir(p)
        {
            total += entries.flatten().map(|e| walk(&e.path(), seen)).sum::<u64>();
        }
        total
    }
    walk(dir, &mut Default::default())
}

fn read_all(m: &Mount, objects: &[(String, Vec<u8>)]) {
    for (key, body) in objects {
        assert!(fs::read(m.join(key)).unwrap() == *body, "bytes of {key} differ");
    }
}

fn cache_arg(dir: &Path) -> String {
    dir.to_str().unwrap().to_string()
}

/// Block files stay block files here: without passthrough nothing is assembled.
#[test]
fn remount_with_the_same_cache_makes_no_gets() {
    let s = server();
    let objects = seed_jars(&s, 8);
    let cache = tempfile::tempdir().unwrap();
    let c = cache_arg(cache.path());
    {
        let m = Mount::new(&s, BUCKET, &["--cache", &c, "--no-passthrough"]);
        read_all(&m, &objects);
    }
    let first = s.counts();
    let blocks: u64 = objects.iter().map(|(_, b)| b.len().div_ceil(MIB) as u64).sum();
    assert_eq!(first.get, blocks, "cold pass: one GET per block");
    s.reset_counts();
    let m = Mount::new(&s, BUCKET, &["--cache", &c, "--no-passthrough"]);
    read_all(&m, &objects);
    assert_eq!(
        s.counts().get,
        0,
        "after remount every block comes from disk: {:?}",
        s.counts()
    );
    // Every block went into its object's file: one file per object, no block file.
    assert_eq!(object_files(cache.path()).len(), objects.len());
    assert!(files(cache.path(), Area::Blocks).is_empty());
    // Private to the daemon's user: its own version directory (the given directory is left as
    // it was made).
    assert_eq!(
        fs::metadata(s3cachefs::cachedir::version_path(cache.path()))
            .unwrap()
            .mode()
            & 0o777,
        0o700
    );
    for f in files(cache.path(), Area::Full) {
        assert_eq!(fs::metadata(f).unwrap().mode() & 0o777, 0o600);
    }
}

#[test]
fn four_processes_share_one_cache_and_coalesce_cold_reads() {
    let s = server();
    let objects = seed_jars(&s, 6);
    let cache = tempfile::tempdir().unwrap();
    let c = cache_arg(cache.path());
    let mounts: Vec<Mount> = (0..4).map(|_| Mount::new(&s, BUCKET, &["--cache", &c])).collect();
    // Metadata first (each daemon has its own), so the race below is on data only.
    for m in &mounts {
        for (key, _) in &objects {
            fs::metadata(m.join(key)).unwrap();
        }
    }
    s.set_latency(Duration::from_millis(20));
    s.reset_counts();
    let barrier = Arc::new(Barrier::new(4));
    std::thread::scope(|scope| {
        for m in &mounts {
            let (barrier, objects) = (barrier.clone(), &objects);
            scope.spawn(move || {
                barrier.wait();
                read_all(m, objects);
            });
        }
    });
    let blocks: u64 = objects.iter().map(|(_, b)| b.len().div_ceil(MIB) as u64).sum();
    assert_eq!(
        s.counts().get,
        blocks,
        "one GET per distinct block across 4 processes: {:?}",
        s.counts()
    );
    assert_eq!(
        s.counts().get_bytes,
        objects.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
    );
}

#[test]
fn sixteen_threads_in_one_process_coalesce() {
    let s = server();
    let objects = seed_jars(&s, 4);
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(&s, BUCKET, &["--cache", &cache_arg(cache.path())]);
    for (key, _) in &objects {
        fs::metadata(m.join(key)).unwrap();
    }
    s.set_latency(Duration::from_millis(20));
    s.reset_counts();
    let barrier = Arc::new(Barrier::new(16));
    std::thread::scope(|scope| {
        for _ in 0..16 {
            let (barrier, objects, m) = (barrier.clone(), &objects, &m);
            scope.spawn(move || {
                barrier.wait();
                read_all(m, objects);
            });
        }
    });
    let blocks: u64 = objects.iter().map(|(_, b)| b.len().div_ceil(MIB) as u64).sum();
    assert_eq!(s.counts().get, blocks, "{:?}", s.counts());
}

#[test]
fn size_bound_holds_under_a_workload_three_times_larger() {
    let s = server();
    let max = 12 * MIB as u64;
    let objects: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| {
            let key = format!("data/part-{i:03}");
            let body = data(3 * MIB, 500 + i);
            s.put(BUCKET, &key, body.clone());
            (key, body)
        })
        .collect();
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(
        &s,
        BUCKET,
        &[
            "--cache",
            &cache_arg(cache.path()),
            "--max-cache-size",
            "12MiB",
            "--memory-cache-size",
            "1MiB",
        ],
    );
    let done = std::sync::atomic::AtomicBool::new(false);
    let peak = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(du_once(cache.path()));
                std::thread::sleep(Duration::from_millis(2));
            }
            peak.max(du_once(cache.path()))
        });
        for _ in 0..2 {
            read_all(&m, &objects);
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        sampler.join().unwrap()
    });
    assert!(peak <= max, "cache used {peak} bytes on disk, bound {max}");
    assert!(peak > max / 2, "the cache was used ({peak} bytes)");
    assert!(!m.log().contains("discarding"), "nothing was corrupt");
}

/// Corrupts block files (kept as such: without passthrough nothing is assembled; assembled
/// files are checked in tests/fast_reads.rs).
#[test]
fn corrupt_truncated_and_junk_files_are_detected_and_refetched() {
    let s = server();
    let objects = seed_jars(&s, 3);
    let cache = tempfile::tempdir().unwrap();
    let c = cache_arg(cache.path());
    {
        let m = Mount::new(&s, BUCKET, &["--cache", &c, "--no-passthrough"]);
        read_all(&m, &objects);
    }
    let files = object_files(cache.path());
    assert_eq!(files.len(), 3);
    // Flip a byte in one object file, truncate another, put junk in place of a third.
    let mut b = fs::read(&files[0]).unwrap();
    let n = b.len();
    b[n / 2] ^= 0xff;
    fs::write(&files[0], b).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&files[1])
        .unwrap()
        .set_len(100)
        .unwrap();
    fs::write(&files[2], b"this is not a block").unwrap();
    fs::write(files[2].parent().unwrap().join("junk"), b"junk").unwrap();
    s.reset_counts();
    let m = Mount::new(&s, BUCKET, &["--cache", &c, "--no-passthrough"]);
    read_all(&m, &objects);
    assert_eq!(s.counts().get, 3, "exactly the three bad blocks were fetched again");
    let log = m.log();
    // The three blocks, found by the reads. (The junk file is left to the next reconciliation
    // pass: mounts do not scan.)
    assert_eq!(log.matches("discarding invalid disk cache block").count(), 3, "{log}");
    // Replaced with good blocks: the next mount reads everything from disk.
    drop(m);
    s.reset_counts();
    let m = Mount::new(&s, BUCKET, &["--cache", &c, "--no-passthrough"]);
    read_all(&m, &objects);
    assert_eq!(s.counts().get, 0);
}

#[test]
fn kill_dash_nine_while_filling_then_remount_reads_correctly() {
    let s = server();
    let objects = seed_jars(&s, 6);
    let cache = tempfile::tempdir().unwrap();
    let c = cache_arg(cache.path());
    for round in 0..3 {
        let mut m = Mount::new(&s, BUCKET, &["--cache", &c]);
        s.set_latency(Duration::from_millis(15));
        let path = m.join(&objects[5].0);
        let reader = std::thread::spawn(move || fs::read(path));
        std::thread::sleep(Duration::from_millis(60 + round * 40));
        let status = m.signal_and_wait(libc::SIGKILL);
        assert_eq!(status.code(), None, "killed by a signal");
        let _ = reader.join();
        s.set_latency(Duration::ZERO);
        drop(m); // clears the dead mount
    }
    s.reset_counts();
    let m = Mount::new(&s, BUCKET, &["--cache", &c]);
    read_all(&m, &objects);
    read_all(&m, &objects);
}

#[test]
fn full_cache_disk_never_fails_a_read() {
    let s = server();
    let objects = seed_jars(&s, 8); // ~10 MiB
    let tmpfs = Tmpfs::new("3m");
    let c = tmpfs.path().join("cache");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let metric = |series: &str| metric_sum(&http_status_body(port, "/metrics").1, series);
    // Another tenant fills the filesystem, leaving less than one block free: with no
    // --cache-min-free headroom the cache may use only what is free, so every block is refused
    // (counted, one warning) and served from S3; the other tenant's file is never touched.
    let filler = tmpfs.path().join("filler");
    let (free, _) = fs_space(tmpfs.path());
    fs::write(&filler, vec![7u8; free as usize - 512 * 1024]).unwrap();
    let m = Mount::new(
        &s,
        BUCKET,
        &[
            "--cache",
            c.to_str().unwrap(),
            "--cache-min-free",
            "0",
            "--memory-cache-size",
            "1MiB",
            "--metrics-addr",
            &addr,
        ],
    );
    for _ in 0..2 {
        read_all(&m, &objects);
    }
    assert!(metric("s3cachefs_cache_skipped_full_total") >= 1.0, "{}", m.log());
    assert!(m.log().contains("disk cache is full"), "a warning:\n{}", m.log());
    drop(m);
    assert_eq!(fs::metadata(&filler).unwrap().len(), free - 512 * 1024);
    fs::remove_file(&filler).unwrap();
    // With the default 5% headroom the cache evicts least recently used blocks to make room
    // for the ~10 MiB read through its 3 MiB, and leaves 5% of the filesystem free.
    let m = Mount::new(
        &s,
        BUCKET,
        &[
            "--cache",
            c.to_str().unwrap(),
            "--memory-cache-size",
            "1MiB",
            "--metrics-addr",
            &addr,
        ],
    );
    read_all(&m, &objects);
    assert!(metric("s3cachefs_cache_evictions_total") >= 1.0, "{}", m.log());
    assert!(metric("s3cachefs_cache_written_bytes_total") >= 1.0, "{}", m.log());
    drop(m);
    let (free, total) = fs_space(tmpfs.path());
    assert!(free * 100 >= total * 5, "{free} of {total} bytes free, under 5%");
}

#[test]
fn cache_directory_problems_are_clear_errors() {
    let s = server();
    let d = tempfile::tempdir().unwrap();
    let foreign = d.path().join("foreign");
    fs::create_dir(&foreign).unwrap();
    std::os::unix::fs::chown(&foreign, Some(4242), Some(4242)).unwrap();
    let e = Mount::try_new(&s, BUCKET, &["--cache", foreign.to_str().unwrap()])
        .err()
        .unwrap();
    assert!(e.contains("owned by uid 4242"), "{e}");
    let file = d.path().join("file");
    fs::write(&file, b"x").unwrap();
    let e = Mount::try_new(&s, BUCKET, &["--cache", file.to_str().unwrap()])
        .err()
        .unwrap();
    assert!(e.contains("cache directory"), "{e}");
    let (_m, mnt) = (tempfile::tempdir().unwrap(), d.path().join("mnt"));
    fs::create_dir(&mnt).unwrap();
    let mut cmd = command();
    cmd.args(["mount", BUCKET])
        .arg(&mnt)
        .args(endpoint_args(&s))
        .args(["--max-cache-size", "1GiB"]);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_ne!(exit_code(&out.status), 0);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--cache"),
        "--max-cache-size needs --cache"
    );
}

/// Another process holding every lock of the cache directory (the fetch stripes, the shard
/// and ledger locks, and `evict.lock`) and never letting go, as a stopped or stuck daemon
/// would: a cold read through the mount waits at most the documented deadline (5 s) per
/// lock, fetches the block itself and returns the right bytes, and the timeout is counted.
#[test]
fn a_stalled_lock_holder_never_holds_up_a_read() {
    use std::os::fd::AsRawFd;
    let s = server();
    let body = data(300_000, 77);
    s.put(BUCKET, "data/stalled", body.clone());
    let cache = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let m = Mount::new(
        &s,
        BUCKET,
        &[
            "--cache",
            &cache_arg(cache.path()),
            "--metrics-addr",
            &addr,
            "--no-passthrough",
        ],
    );
    let v1 = cache.path().join("v1");
    // This test process is the other process: it holds the locks on its own descriptors.
    let locks = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(v1.join("locks"))
        .unwrap();
    // SAFETY: an all-zero flock is a valid value of this plain C struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = 0;
    // Stripes (65,536), shard locks (8,192) and the ledger lock; the slots after them belong
    // to live daemons.
    fl.l_len = 65_536 + 8_192 + 1;
    // The daemon's maintainer holds evict.lock, and a shard's or the ledger's lock for moments,
    // while it reconciles the new cache right after the mount: try until they are ours.
    let evict = fs::File::open(v1.join("evict.lock")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // SAFETY: valid descriptor and flock struct.
    while unsafe { libc::fcntl(locks.as_raw_fd(), libc::F_OFD_SETLK, &fl) } != 0 {
        assert!(std::time::Instant::now() < deadline, "cannot take the locks");
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: valid descriptor.
    while unsafe { libc::flock(evict.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        assert!(std::time::Instant::now() < deadline, "cannot take evict.lock");
        std::thread::sleep(Duration::from_millis(1));
    }
    let t = std::time::Instant::now();
    assert!(fs::read(m.join("data/stalled")).unwrap() == body);
    let took = t.elapsed();
    // One stripe wait (5 s); the block is not written (its lock holder would), so no ledger
    // or shard wait follows. Generous slack for a loaded machine.
    assert!(took < Duration::from_secs(12), "the read took {took:?}");
    assert!(metric(port, "s3cachefs_cache_lock_wait_timeouts_total") >= 1.0);
    drop(locks);
    drop(evict);
}

/// The shared ledger (`v1/usage`) cut short or removed under a running daemon: it is rebuilt
/// and reconciled, and reads never fail (a mapping would have died of SIGBUS).
#[test]
fn a_truncated_ledger_under_a_running_daemon_keeps_reads_working() {
    let s = server();
    let objects = seed_jars(&s, 4);
    let cache = tempfile::tempdir().unwrap();
    let mut m = Mount::new(
        &s,
        BUCKET,
        &[
            "--cache",
            &cache_arg(cache.path()),
            "--no-passthrough",
            "--memory-cache-size",
            "1MiB",
        ],
    );
    read_all(&m, &objects[..2]);
    let usage = cache.path().join("v1").join("usage");
    fs::OpenOptions::new()
        .write(true)
        .open(&usage)
        .unwrap()
        .set_len(0)
        .unwrap();
    read_all(&m, &objects);
    fs::remove_file(&usage).unwrap();
    read_all(&m, &objects);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while m.log().matches("disk cache reconciled").count() < 2 {
        assert!(std::time::Instant::now() < deadline, "not reconciled:\n{}", m.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(fs::metadata(&usage).unwrap().len() > 0, "rebuilt");
    read_all(&m, &objects);
    let status = m.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "the daemon exits cleanly: {status}");
}
