//! Fast reads through a real mount: prefetch under every access pattern (byte-exact), random
//! reads cached by pages from the first pass, FUSE passthrough of fully cached objects (reads
//! that never reach the daemon) and its fallback, and the memory bound under many concurrent
//! readers.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use s3cachefs::cachedir::{Area, area_path};

const MIB: usize = 1 << 20;

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens `rel` until an open passes through (the assembled file verified in the background).
fn wait_passthrough(m: &Mount, port: u16, rel: &str) {
    let before = metric(port, "s3cachefs_passthrough_opens_total");
    wait_for("a passthrough open", || {
        drop(fs::File::open(m.join(rel)).unwrap());
        metric(port, "s3cachefs_passthrough_opens_total") > before
    });
}

fn full_files(cache: &Path) -> usize {
    fs::read_dir(area_path(cache, Area::Full))
        .map(|shards| {
            shards
                .flatten()
                .map(|s| fs::read_dir(s.path()).map(|f| f.count()).unwrap_or(0))
                .sum::<usize>()
        })
        .unwrap_or(0)
        / 2 // data file + index
}

#[test]
fn prefetch_is_byte_exact_for_every_access_pattern() {
    let s = server();
    let body = data(9 * MIB + 4321, 77);
    s.put(BUCKET, "big.bin", body.clone());
    s.set_latency(Duration::from_millis(5));
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(&s, BUCKET, &["--cache", cache.path().to_str().unwrap()]);
    let check = |f: &fs::File, off: usize, len: usize| {
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = f.read_at(&mut buf[done..], (off + done) as u64).unwrap();
            if n == 0 {
                break;
            }
            done += n;
        }
        assert!(
            buf[..done] == body[off.min(body.len())..(off + len).min(body.len())],
            "at {off}+{len}"
        );
    };
    // Sequential.
    assert!(fs::read(m.join("big.bin")).unwrap() == body);
    let f = fs::File::open(m.join("big.bin")).unwrap();
    // Backwards, in 100 KiB steps.
    let mut off = body.len();
    while off > 0 {
        off = off.saturating_sub(100_000);
        check(&f, off, 100_000);
    }
    // Strided and random.
    for i in (0..body.len()).step_by(1_234_567) {
        check(&f, i, 70_000);
    }
    let mut x = 99u64;
    for _ in 0..100 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        check(&f, (x >> 20) as usize % body.len(), 1 + (x >> 50) as usize % 300_000);
    }
    // Several handles at once on one file.
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (m, body) = (&m, &body);
            scope.spawn(move || {
                let mut f = fs::File::open(m.join("big.bin")).unwrap();
                let mut skip = vec![0u8; t * 333_333];
                f.read_exact(&mut skip).unwrap();
                let mut rest = Vec::new();
                f.read_to_end(&mut rest).unwrap();
                assert!(rest == body[t * 333_333..]);
            });
        }
    });
}

#[test]
fn cold_sequential_read_with_prefetch_fetches_each_block_once() {
    let s = server();
    let body = data(24 * MIB, 5);
    s.put(BUCKET, "seq.bin", body.clone());
    let m = Mount::new(&s, BUCKET, &[]);
    fs::metadata(m.join("seq.bin")).unwrap();
    s.set_latency(Duration::from_millis(50));
    s.reset_counts();
    assert!(fs::read(m.join("seq.bin")).unwrap() == body);
    assert_eq!(s.counts().get, 24, "every block once, prefetch included");
    assert_eq!(s.counts().get_bytes, 24 * MIB as u64);
    // Each GET is one whole, aligned block (how fast they overlap is measured in benches/).
    for r in s.requests() {
        let range = r.range.unwrap();
        let (a, b) = range.trim_start_matches("bytes=").split_once('-').unwrap();
        let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
        assert_eq!((a % MIB as u64, b - a + 1), (0, MIB as u64), "{range}");
    }
}

/// Four readers of one file through one mount, started together: the kernel's page cache sends
/// each handle only what the others have not read, and the daemon still sees scans. Every block
/// is fetched once, whole (before, the jumps looked like skips: prefetch stopped and page GETs
/// fetched parts of blocks again).
#[test]
fn four_readers_of_one_file_fetch_each_block_once() {
    let s = server();
    let body = std::sync::Arc::new(data(32 * MIB, 26));
    s.put(BUCKET, "shared.bin", body.to_vec());
    let m = Mount::new(&s, BUCKET, &[]);
    fs::metadata(m.join("shared.bin")).unwrap();
    s.set_latency(Duration::from_millis(20));
    s.reset_counts();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (path, body, barrier) = (m.join("shared.bin"), body.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                assert!(fs::read(path).unwrap() == *body);
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(s.counts().get, 32, "every block once: {:?}", s.counts());
    assert_eq!(s.counts().get_bytes, 32 * MIB as u64);
}

#[test]
fn random_reads_are_cached_from_the_first_pass() {
    let s = server();
    let body = data(64 * MIB, 6);
    s.put(BUCKET, "table.parquet", body.clone());
    let m = Mount::new(&s, BUCKET, &[]);
    let f = fs::File::open(m.join("table.parquet")).unwrap();
    let offsets = random_offsets(11, body.len() - (64 << 10));
    let pass = || random_pass(&f, &body, &offsets);
    s.reset_counts();
    pass();
    let first = s.counts();
    let read = 200 * (64 << 10) as u64;
    assert!(
        2 * first.get_bytes <= 3 * read,
        "first pass fetched {} for {read} read",
        first.get_bytes
    );
    s.reset_counts();
    pass();
    assert_eq!(
        s.counts().get,
        0,
        "the second pass is served from memory: {:?}",
        s.counts()
    );
}

/// 200 pseudo-random offsets below `below`, the same for the same `seed`.
fn random_offsets(seed: u64, below: usize) -> Vec<usize> {
    let mut x = seed;
    (0..200)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 17) as usize % below
        })
        .collect()
}

/// Random reads of `f` at `offsets` (64 KiB each), checked against `body`, then the kernel's
/// page cache of `f` dropped so that the next pass reads through FUSE again.
fn random_pass(f: &fs::File, body: &[u8], offsets: &[usize]) {
    use std::os::fd::AsRawFd;
    // No kernel read-ahead: each pread reaches the daemon as it is.
    // SAFETY: fadvise on a valid descriptor.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    let mut buf = vec![0u8; 64 << 10];
    for &off in offsets {
        f.read_exact_at(&mut buf, off as u64).unwrap();
        assert!(buf[..] == body[off..off + (64 << 10)], "at {off}");
    }
    // SAFETY: fadvise on a valid descriptor.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

#[test]
fn random_reads_are_kept_on_disk_across_a_remount() {
    let s = server();
    let body = data(64 * MIB, 7);
    s.put(BUCKET, "table.parquet", body.clone());
    let cache = tempfile::tempdir().unwrap();
    let offsets = random_offsets(13, body.len() - (64 << 10));
    let mount = || cached_mount(&s, cache.path());
    {
        let (m, port) = mount();
        s.reset_counts();
        random_pass(&fs::File::open(m.join("table.parquet")).unwrap(), &body, &offsets);
        let fetched = s.counts().get_bytes;
        assert!(fetched > 0);
        // Every fetched page is written to its page file, in the background.
        wait_for("the pages on disk", || {
            metric(port, "s3cachefs_cache_written_bytes_total") == fetched as f64
        });
    }
    let (m, _port) = mount();
    s.reset_counts();
    random_pass(&fs::File::open(m.join("table.parquet")).unwrap(), &body, &offsets);
    assert_eq!(
        s.counts().get,
        0,
        "after a remount, the pages come from the disk cache: {:?}\n{}",
        s.counts(),
        m.log()
    );
}

#[test]
fn fully_cached_files_pass_through_to_the_kernel() {
    let s = server();
    let body = data(5 * MIB + 17, 8);
    let cache = tempfile::tempdir().unwrap();
    let (m, port) = passing_through(&s, cache.path(), "jars/app.jar", &body, &[]);
    let reads_before = metric(port, "s3cachefs_fuse_operations_total{operation=\"read\"}");
    let opens = metric(port, "s3cachefs_passthrough_opens_total");
    let mut a = fs::File::open(m.join("jars/app.jar")).unwrap();
    let b = fs::File::open(m.join("jars/app.jar")).unwrap();
    assert_eq!(
        metric(port, "s3cachefs_passthrough_opens_total") - opens,
        2.0,
        "{}",
        m.log()
    );
    let mut got = Vec::new();
    a.read_to_end(&mut got).unwrap();
    assert!(got == body);
    let mut tail = vec![0u8; 1000];
    b.read_exact_at(&mut tail, body.len() as u64 - 1000).unwrap();
    assert!(tail == body[body.len() - 1000..]);
    assert_eq!(
        metric(port, "s3cachefs_fuse_operations_total{operation=\"read\"}"),
        reads_before,
        "reads went to the backing file, not the daemon"
    );
    assert_eq!(s.counts().total(), 0);
    // The block files were folded into the assembled file.
    assert_eq!(
        fs::read_dir(area_path(cache.path(), Area::Blocks))
            .unwrap()
            .flatten()
            .map(|d| fs::read_dir(d.path()).unwrap().count())
            .sum::<usize>(),
        0
    );
}

/// The kernel refuses a backing file whose filesystem is already as deep in its stacking as
/// the mount allows (s3cachefs asks for depth 1; an overlay filesystem is depth 1): open then
/// falls back to reads through the daemon, with one warning, and the bytes are right.
#[test]
fn a_backing_file_the_kernel_refuses_falls_back_to_reads_through_the_daemon() {
    let s = server();
    let body = data(3 * MIB + 9, 10);
    s.put(BUCKET, "f.bin", body.clone());
    let overlay = Overlay::new();
    let cache = overlay.path().join("cache");
    let c = cache.to_str().unwrap();
    let port = free_port();
    let m = Mount::new(
        &s,
        BUCKET,
        &["--cache", c, "--metrics-addr", &format!("127.0.0.1:{port}")],
    );
    assert!(fs::read(m.join("f.bin")).unwrap() == body);
    wait_for("the assembled file", || full_files(&cache) == 1);
    s.reset_counts();
    let reads_before = metric(port, "s3cachefs_fuse_operations_total{operation=\"read\"}");
    for _ in 0..2 {
        let f = fs::File::open(m.join("f.bin")).unwrap();
        let mut got = vec![0u8; body.len()];
        f.read_exact_at(&mut got, 0).unwrap();
        assert!(got == body);
        // Drop the page cache so that the second open reads through FUSE again.
        use std::os::fd::AsRawFd;
        // SAFETY: fadvise on a valid descriptor.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    assert_eq!(metric(port, "s3cachefs_passthrough_opens_total"), 0.0, "{}", m.log());
    assert!(
        metric(port, "s3cachefs_fuse_operations_total{operation=\"read\"}") > reads_before,
        "the reads went through the daemon"
    );
    assert_eq!(s.counts().get, 0, "served from the assembled file: {:?}", s.counts());
    let log = m.log();
    assert_eq!(
        log.matches("FUSE passthrough unavailable").count(),
        1,
        "one warning, then no more attempts:\n{log}"
    );
}

#[test]
fn without_passthrough_assembled_files_are_read_through_the_daemon() {
    let s = server();
    let body = data(3 * MIB + 5, 9);
    s.put(BUCKET, "f.bin", body.clone());
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path().to_str().unwrap();
    {
        let m = Mount::new(&s, BUCKET, &["--cache", c]);
        assert!(fs::read(m.join("f.bin")).unwrap() == body);
        wait_for("the assembled file", || full_files(cache.path()) == 1);
    }
    let port = free_port();
    let m = Mount::new(
        &s,
        BUCKET,
        &[
            "--cache",
            c,
            "--no-passthrough",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ],
    );
    s.reset_counts();
    assert!(fs::read(m.join("f.bin")).unwrap() == body);
    assert_eq!(s.counts().get, 0, "served from the assembled file");
    assert_eq!(metric(port, "s3cachefs_passthrough_opens_total"), 0.0);
    assert!(metric(port, "s3cachefs_fuse_operations_total{operation=\"read\"}") > 0.0);
    assert_eq!(
        metric(port, "s3cachefs_cache_hits_total"),
        4.0,
        "four blocks from the assembled file"
    );
    // A corrupted assembled file is detected, dropped and refetched: never served.
    drop(m);
    let shard = fs::read_dir(area_path(cache.path(), Area::Full))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let data_file = fs::read_dir(&shard)
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_none())
        .unwrap()
        .path();
    let mut bytes = fs::read(&data_file).unwrap();
    bytes[MIB + 10] ^= 1;
    fs::write(&data_file, bytes).unwrap();
    for flags in [vec!["--no-passthrough"], vec![]] {
        let mut args = vec!["--cache", c];
        args.extend(flags);
        let m = Mount::new(&s, BUCKET, &args);
        assert!(fs::read(m.join("f.bin")).unwrap() == body);
    }
}

#[test]
fn memory_stays_bounded_under_32_concurrent_readers() {
    let s = server();
    let bodies: Vec<Vec<u8>> = (0..32).map(|i| data(8 * MIB, 1000 + i)).collect();
    for (i, b) in bodies.iter().enumerate() {
        s.put(BUCKET, &format!("data/part-{i:02}"), b.clone());
    }
    s.set_latency(Duration::from_millis(10));
    let m = Mount::new(&s, BUCKET, &["--max-prefetch-memory", "64MiB"]);
    let idle = vm_hwm(m.pid());
    std::thread::scope(|scope| {
        for (i, body) in bodies.iter().enumerate() {
            let m = &m;
            scope.spawn(move || {
                let got = fs::read(m.join(&format!("data/part-{i:02}"))).unwrap();
                assert!(got == *body);
            });
        }
    });
    assert_eq!(
        s.counts().get,
        32 * 8,
        "no block fetched twice: prefetch never outran the memory"
    );
    let peak = vm_hwm(m.pid());
    eprintln!(
        "daemon peak RSS: {} MiB idle, {} MiB with 32 readers, 64 MiB prefetch memory",
        idle >> 20,
        peak >> 20
    );
    assert!(
        peak <= (64 + 64) << 20,
        "peak RSS {} MiB exceeds --max-prefetch-memory + 64 MiB",
        peak >> 20
    );
}

/// A mount with a disk cache at `cache` and metrics on a port of its own.
fn cached_mount(s: &TestServer, cache: &Path) -> (Mount, u16) {
    Mount::with_cache_and_metrics(s, BUCKET, cache, &[])
}

/// `key` put in the source with `body`, read whole once through a mount with `--cache` and
/// `extra` (closing the file assembles it in the cache, and it is verified in the background),
/// until the daemon hands it to the kernel; the request counts reset.
fn passing_through(s: &TestServer, cache: &Path, key: &str, body: &[u8], extra: &[&str]) -> (Mount, u16) {
    s.put(BUCKET, key, body.to_vec());
    let (m, port) = Mount::with_cache_and_metrics(s, BUCKET, cache, extra);
    assert!(fs::read(m.join(key)).unwrap() == body);
    wait_for("the assembled file", || full_files(cache) == 1);
    wait_passthrough(&m, port, key);
    s.reset_counts();
    (m, port)
}

/// The data file of the one assembled object in `cache`.
fn the_full_file(cache: &Path) -> std::path::PathBuf {
    let shard = fs::read_dir(area_path(cache, Area::Full))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    fs::read_dir(&shard)
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_none())
        .unwrap()
        .path()
}

/// Warm opens of a cached file reuse the backing file registered at the first passthrough
/// open: no registration for any later open, each still counted as a passthrough open and a
/// cache hit.
#[test]
fn warm_opens_reuse_one_backing_file() {
    let s = server();
    let body = data(3 * MIB + 11, 21);
    let cache = tempfile::tempdir().unwrap();
    let (m, port) = passing_through(&s, cache.path(), "jars/lib.jar", &body, &[]);
    let hits = metric(port, "s3cachefs_cache_hits_total");
    let (opens, reuses) = (
        metric(port, "s3cachefs_passthrough_opens_total"),
        metric(port, "s3cachefs_passthrough_backing_reuses_total"),
    );
    for i in 0..10u64 {
        let f = fs::File::open(m.join("jars/lib.jar")).unwrap();
        let mut got = vec![0u8; 1000];
        f.read_exact_at(&mut got, i * 1000).unwrap();
        assert!(got == body[i as usize * 1000..(i as usize + 1) * 1000]);
    }
    // Two open at once share the held backing file too.
    let (a, b) = (
        fs::File::open(m.join("jars/lib.jar")).unwrap(),
        fs::File::open(m.join("jars/lib.jar")).unwrap(),
    );
    let mut tail = vec![0u8; 100];
    b.read_exact_at(&mut tail, body.len() as u64 - 100).unwrap();
    assert!(tail == body[body.len() - 100..]);
    drop((a, b));
    assert_eq!(
        metric(port, "s3cachefs_passthrough_opens_total") - opens,
        12.0,
        "{}",
        m.log()
    );
    assert_eq!(
        metric(port, "s3cachefs_passthrough_backing_reuses_total") - reuses,
        12.0,
        "one registration, then reuses: {}",
        m.log()
    );
    assert_eq!(
        metric(port, "s3cachefs_cache_hits_total") - hits,
        12.0,
        "every open is a hit"
    );
    assert_eq!(s.counts().total(), 0);
    // With no handle open the daemon still holds the file (one descriptor); once the kernel
    // forgets the inode (SIGHUP invalidates every name it holds), it lets go.
    let full = the_full_file(cache.path());
    let held = || descriptors_of(&m, &full);
    assert_eq!(held(), 1, "held between opens");
    // SAFETY: a signal to the daemon this test started.
    unsafe { libc::kill(m.pid() as i32, libc::SIGHUP) };
    wait_for("the held file closed after the kernel forgot its inode", || held() == 0);
}

/// How many descriptors of the daemon of `m` name `file`.
fn descriptors_of(m: &Mount, file: &Path) -> usize {
    fs::read_dir(format!("/proc/{}/fd", m.pid()))
        .unwrap()
        .flatten()
        .filter(|e| fs::read_link(e.path()).is_ok_and(|t| t == file))
        .count()
}

/// A held backing file is let go once it has gone `--passthrough-hold` without an open (its
/// descriptor closed, so that an evicted file's space is given back), and the next open
/// registers the file again.
#[test]
fn a_held_backing_file_is_let_go_after_the_hold() {
    let s = server();
    let body = data(2 * MIB + 5, 25);
    let cache = tempfile::tempdir().unwrap();
    let (m, port) = passing_through(&s, cache.path(), "held.bin", &body, &["--passthrough-hold", "1"]);
    let full = the_full_file(cache.path());
    // The default hold is 5 minutes: only the flag lets it go within the wait.
    wait_for("the held file closed after the hold", || descriptors_of(&m, &full) == 0);
    let (opens, reuses) = (
        metric(port, "s3cachefs_passthrough_opens_total"),
        metric(port, "s3cachefs_passthrough_backing_reuses_total"),
    );
    assert!(fs::read(m.join("held.bin")).unwrap() == body);
    assert_eq!(metric(port, "s3cachefs_passthrough_opens_total") - opens, 1.0);
    assert_eq!(
        metric(port, "s3cachefs_passthrough_backing_reuses_total"),
        reuses,
        "registered anew, not reused"
    );
    assert_eq!(descriptors_of(&m, &full), 1, "held again after the close");
    assert_eq!(s.counts().total(), 0);
}

/// A file verified whole (here: written whole by the first daemon) is stamped on its index, so
/// after a restart on the same boot its first open passes through: nothing read by the daemon,
/// nothing fetched.
#[test]
fn after_a_restart_a_stamped_file_passes_through_at_its_first_open() {
    let s = server();
    let body = data(6 * MIB + 3, 24);
    s.put(BUCKET, "big.bin", body.clone());
    let cache = tempfile::tempdir().unwrap();
    {
        let (m, _) = cached_mount(&s, cache.path());
        assert!(fs::read(m.join("big.bin")).unwrap() == body);
        wait_for("the assembled file", || full_files(cache.path()) == 1);
    }
    let idx = the_full_file(cache.path()).with_extension("idx");
    assert_eq!(
        rustix::fs::getxattr(&idx, STAMP, &mut [0u8; 64][..]).ok(),
        Some(16),
        "stamped by the daemon that wrote it"
    );
    let (m, port) = cached_mount(&s, cache.path());
    s.reset_counts();
    let f = fs::File::open(m.join("big.bin")).unwrap();
    assert_eq!(
        metric(port, "s3cachefs_passthrough_opens_total"),
        1.0,
        "the first open passes through: {}",
        m.log()
    );
    let mut got = vec![0u8; body.len()];
    f.read_exact_at(&mut got, 0).unwrap();
    assert!(got == body);
    assert_eq!(
        metric(port, "s3cachefs_fuse_operations_total{operation=\"read\"}"),
        0.0,
        "read by the kernel from the backing file"
    );
    assert_eq!(s.counts().total(), 0);
}

/// The extended attribute of an object file's index that records its verification.
const STAMP: &std::ffi::CStr = c"user.s3cachefs.ok";

/// After a restart an assembled file without a stamp (verified on another boot, or on a
/// filesystem without extended attributes) is not trusted until verified, and it is read once for
/// that, in the background: the first open reads through the daemon (each block checked), a
/// later open passes through once the file is verified.
#[test]
fn after_a_restart_an_unstamped_file_is_read_through_the_daemon_then_passes_through() {
    let s = server();
    let body = data(6 * MIB + 3, 22);
    s.put(BUCKET, "big.bin", body.clone());
    let cache = tempfile::tempdir().unwrap();
    {
        let (m, _) = cached_mount(&s, cache.path());
        assert!(fs::read(m.join("big.bin")).unwrap() == body);
        wait_for("the assembled file", || full_files(cache.path()) == 1);
    }
    rustix::fs::removexattr(the_full_file(cache.path()).with_extension("idx"), STAMP).unwrap();
    let (m, port) = cached_mount(&s, cache.path());
    s.reset_counts();
    let mut f = fs::File::open(m.join("big.bin")).unwrap();
    assert_eq!(
        metric(port, "s3cachefs_passthrough_opens_total"),
        0.0,
        "an unverified file is not handed to the kernel: {}",
        m.log()
    );
    let mut got = Vec::new();
    f.read_to_end(&mut got).unwrap();
    assert!(got == body);
    assert!(metric(port, "s3cachefs_fuse_operations_total{operation=\"read\"}") > 0.0);
    drop(f);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let f = fs::File::open(m.join("big.bin")).unwrap();
        if metric(port, "s3cachefs_passthrough_opens_total") == 1.0 {
            let reads = metric(port, "s3cachefs_fuse_operations_total{operation=\"read\"}");
            let mut got = vec![0u8; body.len()];
            f.read_exact_at(&mut got, 0).unwrap();
            assert!(got == body);
            assert_eq!(
                metric(port, "s3cachefs_fuse_operations_total{operation=\"read\"}"),
                reads,
                "read by the kernel from the backing file"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never passed through: {}", m.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(s.counts().get, 0, "all from the disk cache: {:?}", s.counts());
}

/// An assembled file damaged while no daemon ran is caught by the background verification
/// (the open that starts it reads nothing), removed, and never handed to the kernel: the
/// bytes are fetched again.
#[test]
fn a_file_damaged_before_a_restart_is_caught_by_the_background_verification() {
    let s = server();
    let body = data(5 * MIB + 7, 23);
    s.put(BUCKET, "f.bin", body.clone());
    let cache = tempfile::tempdir().unwrap();
    {
        let (m, _) = cached_mount(&s, cache.path());
        assert!(fs::read(m.join("f.bin")).unwrap() == body);
        wait_for("the assembled file", || full_files(cache.path()) == 1);
    }
    let path = the_full_file(cache.path());
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&[body[3 * MIB + 5] ^ 0x40], 3 * MIB as u64 + 5)
        .unwrap();
    drop(file);
    let (m, port) = cached_mount(&s, cache.path());
    // Opens that read nothing: the first starts the verification.
    wait_for("the damaged file removed", || {
        drop(fs::File::open(m.join("f.bin")).unwrap());
        !path.exists()
    });
    assert_eq!(metric(port, "s3cachefs_passthrough_opens_total"), 0.0, "{}", m.log());
    s.reset_counts();
    assert!(fs::read(m.join("f.bin")).unwrap() == body);
    assert!(s.counts().get > 0, "fetched again");
}
