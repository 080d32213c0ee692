//! Reliability under faults, through the real binary, real FUSE and the fault-injecting S3
//! test server: bounded retries and timeouts (reads, lookups, listings), bodies cut short never
//! returned or cached, a soak with 10% of requests failing, kill -9 crash rounds, a cache under
//! pressure (full, removed, read-only, symlinks, other users' files), objects changing in S3,
//! and the memory bound with 64 readers.
//!
//! Every test prints one `RELIABILITY ...` line with its figures; docs/RELIABILITY.md holds the
//! figures of the last run (`cargo test --test reliability -- --nocapture`).

mod common;

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use s3cachefs::cachedir::{Area, EVICT_LOCK, LOCKS, SHARDS, USAGE, area_path, shard_name, version_path};
use s3cachefs_testserver::{FaultKind, FaultPlan, FaultRule, Op};

const MIB: usize = 1 << 20;
/// Upper bound of one backoff pause (`RetryPolicy::max_backoff`).
const MAX_PAUSE_S: u64 = 2;

/// The documented bound on one S3 call: every attempt times out, with the longest pauses
/// between them: `max-attempts × request-timeout + (max-attempts − 1) × 2 s`.
fn call_bound(attempts: u64, timeout_s: u64) -> Duration {
    Duration::from_secs(attempts * timeout_s + (attempts - 1) * MAX_PAUSE_S)
}

/// S3 calls one operation may wait for in sequence, at most (docs/RELIABILITY.md). A read(2)
/// is two FUSE requests when the first fails (the kernel's read-ahead, then the page it needs);
/// a lookup of an uncached name in a directory of one listing page waits for that one LIST (a
/// failed listing fails the lookup at once; only a directory larger than one page adds a HEAD
/// and LIST, and the directories here are small); a listing waits for each of its pages in turn
/// (one page here).
const READ_CALLS: u32 = 2;
const LOOKUP_CALLS: u32 = 1;
const LIST_CALLS: u32 = 1;

/// How many S3 calls of `op` ("GetObject", "HeadObject", "ListObjectsV2", or "" for any) the
/// daemon logged as failed after all their attempts, and whether each of them says
/// `attempts={attempts}`.
fn failed_calls(log: &str, op: &str, attempts: u32) -> (u64, bool) {
    // (tracing prints string fields quoted: `op="GetObject"`.)
    let lines: Vec<String> = log
        .lines()
        .map(|l| l.replace('"', ""))
        .filter(|l| l.contains("S3 request failed after retries") && l.contains(&format!("op={op}")))
        .collect();
    let all_exact = lines.iter().all(|l| l.contains(&format!("attempts={attempts}")));
    (lines.len() as u64, all_exact)
}

/// Waits (bounded) until `sample` gives the same value for 2.5 s: background work (a
/// prefetch still retrying) has finished. Pauses between attempts are far below 2.5 s here.
fn settled<T: PartialEq + Copy + std::fmt::Debug>(limit: Duration, mut sample: impl FnMut() -> T) -> T {
    let deadline = Instant::now() + limit;
    let mut last = sample();
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = sample();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= Duration::from_millis(2500) {
            return now;
        }
        assert!(Instant::now() < deadline, "still changing after {limit:?}: {now:?}");
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// An error a faulted read may end with: EIO, or ETIMEDOUT when the last attempt timed out.
fn is_fault_errno(e: &io::Error) -> bool {
    matches!(errno(e), libc::EIO | libc::ETIMEDOUT)
}

/// Reads up to `len` bytes at `off` (several reads if the kernel returns fewer).
fn pread(f: &fs::File, off: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// Bytes of `got` that differ from `want` (a length difference counts as wrong bytes).
fn wrong_bytes(got: &[u8], want: &[u8]) -> u64 {
    if got == want {
        return 0; // memcmp: the common case stays fast in a debug build
    }
    got.iter().zip(want).filter(|(a, b)| a != b).count() as u64 + got.len().abs_diff(want.len()) as u64
}

fn slice(body: &[u8], off: u64, len: usize) -> &[u8] {
    let start = (off as usize).min(body.len());
    &body[start..(start + len).min(body.len())]
}

/// Peak and current resident memory of a process, in bytes.
fn vm(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// xorshift64*: deterministic choices for workloads.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn put_all(s: &TestServer, objects: &[(String, Vec<u8>)]) {
    for (k, b) in objects {
        s.put(BUCKET, k, b.clone());
    }
}

/// Every file under `dir`, recursively (not following symlinks).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let m = fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// 1. Retries and timeouts: reads, lookups and listings are correct or fail within the bound.
// ---------------------------------------------------------------------------------------------

#[test]
fn slowdowns_and_500s_then_success_are_retried_for_reads_lookups_and_listings() {
    let s = server();
    let a = data(3 * MIB + 5, 1);
    s.put(BUCKET, "dir/a.bin", a.clone());
    s.put(BUCKET, "dir/b.txt", b"bee".to_vec());
    s.put(BUCKET, "other/c.bin", data(1000, 2));
    let m = Mount::new(&s, BUCKET, &[]);
    // Two throttling answers for every kind of request, then two 500s: all retried.
    s.set_faults(
        FaultPlan::new(7)
            .rule(FaultRule::new(FaultKind::SlowDown).ops([Op::List]).max_count(2))
            .rule(FaultRule::new(FaultKind::SlowDown).ops([Op::Head]).max_count(2))
            .rule(FaultRule::new(FaultKind::SlowDown).ops([Op::Get]).max_count(2))
            .rule(FaultRule::new(FaultKind::Status500).ops([Op::Get]).max_count(2)),
    );
    let t = Instant::now();
    let mut names: Vec<String> = fs::read_dir(m.join("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a.bin", "b.txt"]);
    // A name in a directory never listed: HEAD and LIST, both throttled.
    assert_eq!(fs::metadata(m.join("other/c.bin")).unwrap().len(), 1000);
    assert!(fs::read(m.join("dir/a.bin")).unwrap() == a);
    assert_eq!(fs::read(m.join("dir/b.txt")).unwrap(), b"bee");
    let elapsed = t.elapsed();
    let c = s.counts();
    assert!(c.faults >= 6, "faults were injected: {c:?}");
    assert!(m.log().contains("retrying S3 request"), "{}", m.log());
    assert!(!m.log().contains("failed after retries"), "{}", m.log());
    // Throttled pauses are at most 0.4 + 0.8 s per request (200 ms base, doubled).
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    eprintln!(
        "RELIABILITY retried: faults={} requests={} elapsed={elapsed:?}",
        c.faults,
        c.total()
    );
}

#[test]
fn persistent_errors_fail_with_eio_within_the_bound_and_are_not_cached() {
    let s = server();
    let body = data(2 * MIB + 100, 3);
    s.put(BUCKET, "bad/y.bin", body.clone());
    s.put(BUCKET, "ok/x.bin", body.clone());
    let (attempts, timeout) = (3, 1);
    let m = Mount::new(&s, BUCKET, &["--max-attempts", "3", "--request-timeout", "1"]);
    let bound = call_bound(attempts, timeout);
    s.set_faults(FaultPlan::new(1).rule(FaultRule::new(FaultKind::Status500)));
    // Lookup: the root is small, so looking up `bad` lists it; the failed listing fails the
    // lookup at once, after exactly 3 LISTs (no HEAD follows it).
    s.reset_counts();
    let t = Instant::now();
    let e = fs::metadata(m.join("bad/y.bin")).unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "{e}");
    let stat_time = t.elapsed();
    let c = s.counts();
    assert_eq!(
        (c.list, c.head, c.get),
        (3, 0, 0),
        "a failed lookup: exactly 3 attempts: {c:?}"
    );
    // Listing: exactly 3 LISTs (the lookup of `ok` in the root is the listing that fails).
    s.reset_counts();
    let t = Instant::now();
    let e = fs::read_dir(m.join("ok")).map(|d| d.count()).unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "{e}");
    let ls_time = t.elapsed();
    let c = s.counts();
    assert_eq!(
        (c.list, c.head, c.get),
        (3, 0, 0),
        "a failed listing: exactly 3 attempts: {c:?}"
    );
    assert!(
        stat_time <= LOOKUP_CALLS * bound,
        "{stat_time:?} > {LOOKUP_CALLS} × {bound:?}"
    );
    assert!(ls_time <= LIST_CALLS * bound, "{ls_time:?} > {LIST_CALLS} × {bound:?}");
    // Errors are not remembered: the same names work once S3 answers again.
    s.clear_faults();
    assert_eq!(fs::metadata(m.join("bad/y.bin")).unwrap().len(), body.len() as u64);
    assert_eq!(fs::read_dir(m.join("ok")).unwrap().count(), 1);
    // Reads: every GET fails; the read ends with EIO after exactly --max-attempts attempts.
    s.set_faults(FaultPlan::new(1).rule(FaultRule::new(FaultKind::Status500).ops([Op::Get])));
    s.reset_counts();
    let f = fs::File::open(m.join("bad/y.bin")).unwrap();
    let t = Instant::now();
    let e = pread(&f, 0, 4096).unwrap_err();
    let read_time = t.elapsed();
    assert_eq!(errno(&e), libc::EIO, "{e}");
    assert!(
        read_time <= READ_CALLS * bound,
        "{read_time:?} > {READ_CALLS} × {bound:?}"
    );
    // Every GET call that failed was tried exactly 3 times: once the daemon is quiet (a
    // prefetch of the next block may still be retrying), the server saw 3 GETs per call the
    // daemon logged as failed, and each of those lines says attempts=3.
    let (gets, calls) = settled(Duration::from_secs(30), || {
        (s.counts().get, failed_calls(&m.log(), "GetObject", 3).0)
    });
    assert!(failed_calls(&m.log(), "GetObject", 3).1, "{}", m.log());
    assert!(calls >= 1, "{}", m.log());
    assert_eq!(gets, 3 * calls, "each failed GET call was tried exactly 3 times");
    s.clear_faults();
    // A failed block is not cached: the same handle reads it now.
    assert!(pread(&f, 0, body.len()).unwrap() == body);
    eprintln!(
        "RELIABILITY persistent-500: bound={bound:?} stat={stat_time:?} ls={ls_time:?} read={read_time:?} gets={gets}"
    );
}

#[test]
fn stalled_attempts_are_cut_at_the_request_timeout_and_retried() {
    let s = server();
    let once = data(MIB + 7, 4);
    let always = data(MIB + 7, 5);
    s.put(BUCKET, "stall-once.bin", once.clone());
    s.put(BUCKET, "stall-always.bin", always.clone());
    s.put(BUCKET, "meta/stalled.txt", b"m".to_vec());
    let (attempts, timeout) = (3, 1);
    let m = Mount::new(&s, BUCKET, &["--max-attempts", "3", "--request-timeout", "1"]);
    let bound = call_bound(attempts, timeout);
    fs::metadata(m.join("stall-once.bin")).unwrap();
    fs::metadata(m.join("stall-always.bin")).unwrap();
    // One GET of the first file hangs for a minute: cut after 1 s, retried, correct.
    s.set_faults(
        FaultPlan::new(2)
            .rule(
                FaultRule::new(FaultKind::Stall(Duration::from_secs(60)))
                    .ops([Op::Get])
                    .key_contains("stall-once")
                    .max_count(1),
            )
            .rule(FaultRule::new(FaultKind::Stall(Duration::from_secs(60))).key_contains("stall-always"))
            .rule(FaultRule::new(FaultKind::Stall(Duration::from_secs(60))).ops([Op::List, Op::Head])),
    );
    let t = Instant::now();
    assert!(fs::read(m.join("stall-once.bin")).unwrap() == once);
    let once_time = t.elapsed();
    assert!(
        once_time >= Duration::from_secs(timeout) && once_time < bound,
        "{once_time:?}"
    );
    // Every attempt hangs: ETIMEDOUT within the bound.
    let f = fs::File::open(m.join("stall-always.bin")).unwrap();
    let t = Instant::now();
    let e = pread(&f, 0, 4096).unwrap_err();
    let always_time = t.elapsed();
    assert!(is_fault_errno(&e), "{e}");
    // The kernel sends two requests for this read(2): its read-ahead, then, once that failed,
    // the page the caller needs. Each waits at most one bound.
    assert!(
        always_time <= READ_CALLS * bound,
        "{always_time:?} > {READ_CALLS} × {bound:?}"
    );
    let read_errno = errno(&e);
    // A lookup whose LISTs and HEAD hang.
    let t = Instant::now();
    let e = fs::metadata(m.join("meta/stalled.txt")).unwrap_err();
    let stat_time = t.elapsed();
    assert!(is_fault_errno(&e), "{e}");
    assert!(
        stat_time <= LOOKUP_CALLS * bound,
        "{stat_time:?} > {LOOKUP_CALLS} × {bound:?}"
    );
    // A listing whose LIST hangs.
    let t = Instant::now();
    let e = fs::read_dir(m.join("meta")).map(|d| d.count()).unwrap_err();
    let ls_time = t.elapsed();
    assert!(is_fault_errno(&e), "{e}");
    assert!(ls_time <= LIST_CALLS * bound, "{ls_time:?} > {LIST_CALLS} × {bound:?}");
    eprintln!(
        "RELIABILITY stall: bound={bound:?} stall-once={once_time:?} stall-always={always_time:?} \
         (errno {read_errno}) stat={stat_time:?} ls={ls_time:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Bodies cut short, reset or trickling past the timeout are never returned nor cached.
// ---------------------------------------------------------------------------------------------

fn varied_objects(prefix: &str, n: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    const SIZES: [usize; 9] = [
        1,
        4096,
        100_000,
        MIB - 1,
        MIB,
        MIB + 1,
        5 * MIB / 2,
        4 * MIB + 3,
        6 * MIB + 17,
    ];
    (0..n)
        .map(|i| {
            let size = SIZES[i % SIZES.len()];
            (format!("{prefix}/f{i:02}.bin"), data(size, seed + i as u64))
        })
        .collect()
}

/// Reads `path` in 256 KiB chunks, checking each chunk; returns (chunks read, errors).
fn read_checked(path: &Path, body: &[u8], wrong: &AtomicU64) -> (u64, u64) {
    let f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            assert!(is_fault_errno(&e), "open {}: {e}", path.display());
            return (0, 1);
        }
    };
    let (mut ok, mut errors) = (0, 0);
    let mut off = 0u64;
    while off < body.len() as u64 {
        match pread(&f, off, 256 << 10) {
            Ok(got) => {
                wrong.fetch_add(wrong_bytes(&got, slice(body, off, 256 << 10)), Ordering::Relaxed);
                ok += 1;
            }
            Err(e) => {
                assert!(is_fault_errno(&e), "read {}: {e}", path.display());
                errors += 1;
            }
        }
        off += 256 << 10;
    }
    (ok, errors)
}

#[test]
fn cut_reset_and_trickled_bodies_are_never_returned_or_cached() {
    let s = server();
    let objects = varied_objects("cut", 27, 200);
    put_all(&s, &objects);
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path().to_str().unwrap();
    let flags = ["--cache", c, "--max-attempts", "1", "--request-timeout", "1"];
    let wrong = AtomicU64::new(0);
    let (mut ok, mut errors) = (0, 0);
    {
        let m = Mount::new(&s, BUCKET, &flags);
        for (k, _) in &objects {
            fs::metadata(m.join(k)).unwrap();
        }
        // More than half of the GETs are cut; with one attempt per request many reads fail.
        s.set_faults(
            FaultPlan::new(11)
                .rule(FaultRule::new(FaultKind::ResetMidBody).ops([Op::Get]).probability(0.25))
                .rule(FaultRule::new(FaultKind::ShortBody).ops([Op::Get]).probability(0.25))
                .rule(
                    FaultRule::new(FaultKind::Trickle { bytes_per_sec: 50_000 })
                        .ops([Op::Get])
                        .probability(0.2),
                ),
        );
        for pass in 0..2 {
            for (k, b) in &objects {
                let (o, e) = read_checked(&m.join(k), b, &wrong);
                ok += o;
                errors += e;
                // Random ranges too: exact ranged GETs, not cached as blocks.
                if let Ok(f) = fs::File::open(m.join(k)) {
                    let mut rng = Rng::new(pass * 100 + b.len() as u64);
                    for _ in 0..3 {
                        let off = rng.below(b.len() as u64);
                        match pread(&f, off, 1 + rng.below(300_000) as usize) {
                            Ok(got) => {
                                wrong.fetch_add(wrong_bytes(&got, slice(b, off, got.len())), Ordering::Relaxed);
                                ok += 1;
                            }
                            Err(e) => {
                                assert!(is_fault_errno(&e), "{e}");
                                errors += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    let faults = s.counts().faults;
    s.clear_faults();
    assert_eq!(wrong.load(Ordering::Relaxed), 0, "no wrong byte was ever returned");
    assert!(
        faults > 20 && errors > 0 && ok > errors,
        "faults {faults}, ok {ok}, errors {errors}"
    );
    // Healthy again: everything reads back correctly, nothing cached was found bad.
    {
        let m = Mount::new(&s, BUCKET, &flags);
        for (k, b) in &objects {
            assert!(fs::read(m.join(k)).unwrap() == *b, "{k}");
        }
        assert!(!m.log().contains("discarding"), "a bad block was cached:\n{}", m.log());
    }
    // Now every GET fails: all bytes come from the disk cache, and they are right.
    s.set_faults(FaultPlan::new(1).rule(FaultRule::new(FaultKind::Status500).ops([Op::Get])));
    s.reset_counts();
    let m = Mount::new(&s, BUCKET, &flags);
    for (k, b) in &objects {
        assert!(fs::read(m.join(k)).unwrap() == *b, "{k}");
    }
    assert_eq!(s.counts().get, 0, "served from the disk cache: {:?}", s.counts());
    eprintln!("RELIABILITY cut-bodies: faults={faults} reads_ok={ok} errors={errors} wrong_bytes=0");
}

// ---------------------------------------------------------------------------------------------
// 3. Soak: 16 readers, a mixed workload, ~10% of all S3 requests failing.
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    ops: AtomicU64,
    reads: AtomicU64,
    bytes: AtomicU64,
    wrong_bytes: AtomicU64,
    wrong_meta: AtomicU64,
    eio: AtomicU64,
    etimedout: AtomicU64,
    unexpected: AtomicU64,
}

impl Tally {
    fn error(&self, what: &str, e: &io::Error) {
        match errno(e) {
            libc::EIO => self.eio.fetch_add(1, Ordering::Relaxed),
            libc::ETIMEDOUT => self.etimedout.fetch_add(1, Ordering::Relaxed),
            _ => {
                eprintln!("unexpected error from {what}: {e}");
                self.unexpected.fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    fn check(&self, got: &[u8], want: &[u8]) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(got.len() as u64, Ordering::Relaxed);
        self.wrong_bytes.fetch_add(wrong_bytes(got, want), Ordering::Relaxed);
    }

    fn errors(&self) -> u64 {
        self.eio.load(Ordering::Relaxed)
            + self.etimedout.load(Ordering::Relaxed)
            + self.unexpected.load(Ordering::Relaxed)
    }
}

/// A file whose pages are dropped from the kernel's page cache when closed, so that the next
/// read reaches the daemon (and S3, once the disk cache has evicted it) again.
struct Uncached(fs::File);

impl std::ops::Deref for Uncached {
    type Target = fs::File;
    fn deref(&self) -> &fs::File {
        &self.0
    }
}

impl std::ops::DerefMut for Uncached {
    fn deref_mut(&mut self) -> &mut fs::File {
        &mut self.0
    }
}

impl Drop for Uncached {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: fadvise on a valid descriptor.
        unsafe { libc::posix_fadvise(self.0.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}

/// One operation of the soak workload on `objects[i]`.
fn soak_op(m: &Mount, objects: &[(String, Vec<u8>)], dirs: &[(String, Vec<String>)], rng: &mut Rng, t: &Tally) {
    t.ops.fetch_add(1, Ordering::Relaxed);
    let (key, body) = &objects[rng.below(objects.len() as u64) as usize];
    let path = m.join(key);
    let open = |t: &Tally| {
        fs::File::open(&path)
            .map_err(|e| t.error("open", &e))
            .ok()
            .map(Uncached)
    };
    match rng.below(100) {
        // Whole file, sequentially.
        0..35 => {
            let Some(mut f) = open(t) else { return };
            let mut off = 0usize;
            let mut buf = vec![0u8; 128 << 10];
            loop {
                match f.read(&mut buf) {
                    Ok(0) => {
                        if off != body.len() {
                            t.wrong_bytes
                                .fetch_add(body.len().abs_diff(off) as u64, Ordering::Relaxed);
                        }
                        break;
                    }
                    Ok(n) => {
                        t.check(&buf[..n], slice(body, off as u64, n));
                        off += n;
                    }
                    Err(e) => return t.error("read", &e),
                }
            }
        }
        // Random ranges.
        35..65 => {
            let Some(f) = open(t) else { return };
            for _ in 0..1 + rng.below(6) {
                let off = rng.below(body.len() as u64 + 10);
                let len = 1 + rng.below(512 << 10) as usize;
                match pread(&f, off, len) {
                    Ok(got) => t.check(&got, slice(body, off, len)),
                    Err(e) => return t.error("pread", &e),
                }
            }
        }
        // Re-open: first half, close, second half through a new handle.
        65..80 => {
            let half = body.len() / 2;
            for (off, len) in [(0, half), (half, body.len() - half)] {
                let Some(f) = open(t) else { return };
                match pread(&f, off as u64, len) {
                    Ok(got) => t.check(&got, &body[off..off + len]),
                    Err(e) => return t.error("pread", &e),
                }
            }
        }
        // Lookup.
        80..90 => match fs::metadata(&path) {
            Ok(md) if md.len() == body.len() as u64 => {}
            Ok(md) => {
                eprintln!("{key}: size {} instead of {}", md.len(), body.len());
                t.wrong_meta.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => t.error("stat", &e),
        },
        // Listing.
        _ => {
            let (dir, want) = &dirs[rng.below(dirs.len() as u64) as usize];
            match fs::read_dir(m.join(dir))
                .and_then(|d| d.map(|e| e.map(|e| e.file_name())).collect::<Result<Vec<_>, _>>())
            {
                Ok(names) => {
                    let mut names: Vec<String> = names.into_iter().map(|n| n.into_string().unwrap()).collect();
                    names.sort();
                    if names != *want {
                        eprintln!("{dir}: {names:?} instead of {want:?}");
                        t.wrong_meta.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => t.error("readdir", &e),
            }
        }
    }
}

#[test]
fn soak_sixteen_readers_with_ten_percent_of_requests_failing() {
    let secs: u64 = std::env::var("RELIABILITY_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let s = server();
    let mut objects = Vec::new();
    for d in 0..4 {
        objects.extend(varied_objects(&format!("soak/d{d}"), 9, 1000 + d * 100));
    }
    put_all(&s, &objects);
    let dirs: Vec<(String, Vec<String>)> = (0..4)
        .map(|d| {
            let dir = format!("soak/d{d}");
            let mut names: Vec<String> = objects
                .iter()
                .filter_map(|(k, _)| k.strip_prefix(&format!("{dir}/")).map(str::to_string))
                .collect();
            names.sort();
            (dir, names)
        })
        .collect();
    let total: usize = objects.iter().map(|(_, b)| b.len()).sum();
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path().to_str().unwrap();
    let flags = [
        "--cache",
        c,
        // Smaller than the data set: eviction runs during the soak.
        "--max-cache-size",
        "16MiB",
        "--max-prefetch-memory",
        "16MiB",
        "--block-size",
        "256KiB",
        "--metadata-ttl",
        "1",
        "--max-attempts",
        "4",
        "--request-timeout",
        "1",
    ];
    let m = Mount::new(&s, BUCKET, &flags);
    let rss_start = vm_hwm(m.pid());
    // ~10% of every kind of request fails, in every way the server knows (seeded).
    s.set_faults(
        FaultPlan::new(2024)
            .rule(FaultRule::new(FaultKind::Status500).probability(0.025))
            .rule(FaultRule::new(FaultKind::SlowDown).probability(0.025))
            .rule(FaultRule::new(FaultKind::ResetMidBody).probability(0.02))
            .rule(FaultRule::new(FaultKind::ShortBody).probability(0.02))
            .rule(FaultRule::new(FaultKind::Stall(Duration::from_millis(1500))).probability(0.005))
            .rule(FaultRule::new(FaultKind::Trickle { bytes_per_sec: 100_000 }).probability(0.005)),
    );
    s.reset_counts();
    let tally = Tally::default();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..16 {
            let (m, objects, dirs, tally) = (&m, &objects, &dirs, &tally);
            scope.spawn(move || {
                let mut rng = Rng::new(t + 1);
                while Instant::now() < deadline {
                    soak_op(m, objects, dirs, &mut rng, tally);
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let counts = s.counts();
    let rss_end = vm_hwm(m.pid());
    let rss_now = vm(m.pid(), "VmRSS:");
    s.clear_faults();
    // Healthy again: every object reads back whole and right (nothing bad was cached).
    for (k, b) in &objects {
        assert!(fs::read(m.join(k)).unwrap() == *b, "{k}");
    }
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let requests = counts.total();
    eprintln!(
        "RELIABILITY soak: threads=16 secs={:.0} objects={} data_mib={:.1} ops={} reads={} bytes_mib={:.0} \
         s3_requests={requests} faults={} ({:.1}%) eio={} etimedout={} unexpected={} wrong_bytes={} wrong_meta={} \
         exhausted_calls={} rss_start_mib={} rss_peak_mib={} rss_end_mib={}",
        elapsed.as_secs_f64(),
        objects.len(),
        total as f64 / MIB as f64,
        g(&tally.ops),
        g(&tally.reads),
        g(&tally.bytes) as f64 / MIB as f64,
        counts.faults,
        100.0 * counts.faults as f64 / requests.max(1) as f64,
        g(&tally.eio),
        g(&tally.etimedout),
        g(&tally.unexpected),
        g(&tally.wrong_bytes),
        g(&tally.wrong_meta),
        failed_calls(&m.log(), "", 4).0,
        rss_start >> 20,
        rss_end >> 20,
        rss_now >> 20,
    );
    assert_eq!(g(&tally.wrong_bytes), 0, "wrong bytes returned");
    assert_eq!(g(&tally.wrong_meta), 0, "wrong sizes or listings");
    assert_eq!(g(&tally.unexpected), 0, "errors other than EIO/ETIMEDOUT");
    assert!(counts.faults >= 50, "faults were injected: {counts:?}");
    // Retries absorb every fault unless one call meets a fault on each of its 4 attempts
    // (about 10^-4 per call at this rate). So an operation may fail only because such a call
    // failed, and each call that failed waited for exactly 4 attempts: every error is matched
    // by a call the daemon logged as failed after 4 attempts, which at most the 16 readers
    // were waiting for.
    let log = m.log();
    let (exhausted, all_four) = failed_calls(&log, "", 4);
    assert!(all_four, "a call gave up before its 4th attempt:\n{log}");
    assert!(
        tally.errors() <= 16 * exhausted,
        "{} operations failed, but only {exhausted} S3 calls failed all 4 attempts",
        tally.errors()
    );
    // The documented memory bound: --max-prefetch-memory + 64 MiB.
    assert!(
        rss_end <= (16 + 64) << 20,
        "peak RSS {} MiB exceeds --max-prefetch-memory + 64 MiB",
        rss_end >> 20
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Crash safety: kill -9 while the cache fills, many rounds, same --cache each time.
// ---------------------------------------------------------------------------------------------

/// Sets a file's modification time `age` in the past.
fn age_file(path: &Path, age: Duration) {
    let t = SystemTime::now() - age;
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    let ts = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid path and two initialized timespecs; no symlink following.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [ts, ts].as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(r, 0, "utimensat {}: {}", path.display(), io::Error::last_os_error());
}

fn tmp_files(cache: &Path) -> Vec<PathBuf> {
    fs::read_dir(area_path(cache, Area::Tmp))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn kill_dash_nine_at_random_points_never_leaves_bad_data_or_blocks_progress() {
    let rounds: u64 = std::env::var("RELIABILITY_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let s = server();
    let objects = varied_objects("crash", 18, 3000);
    put_all(&s, &objects);
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path().to_str().unwrap();
    // Smaller than the data: eviction (and its scan) runs while daemons die.
    let flags = ["--cache", c, "--max-cache-size", "24MiB", "--block-size", "256KiB"];
    let max = 24 * MIB as u64;
    let mut rng = Rng::new(99);
    let started = Instant::now();
    let (mut verified, mut killed_reads) = (0u64, 0u64);
    let mut mount_times = Vec::new();
    for round in 0..rounds {
        let t = Instant::now();
        let mut m = Mount::new(&s, BUCKET, &flags);
        mount_times.push(t.elapsed());
        // After the restart: whatever the previous daemon left, reads are right.
        for _ in 0..3 {
            let (k, b) = &objects[rng.below(objects.len() as u64) as usize];
            assert!(fs::read(m.join(k)).unwrap() == *b, "round {round}: {k}");
            verified += 1;
        }
        // Fill: four readers over random objects; slow GETs widen the window for the kill.
        s.set_latency(Duration::from_millis(5));
        let stop = AtomicBool::new(false);
        // Set before the kill is sent: an error seen while it is false is the daemon's, not
        // the kill's, and fails the test.
        let killing = AtomicBool::new(false);
        let kill_after = Duration::from_millis(20 + rng.below(400));
        let pid = m.pid() as i32;
        std::thread::scope(|scope| {
            for r in 0..4 {
                let (m, objects, stop, killing) = (&m, &objects, &stop, &killing);
                scope.spawn(move || {
                    let mut rng = Rng::new(round * 10 + r);
                    while !stop.load(Ordering::SeqCst) {
                        let (k, b) = &objects[rng.below(objects.len() as u64) as usize];
                        match fs::read(m.join(k)) {
                            Ok(got) => assert!(got == *b, "round {round}: {k} read wrong while filling"),
                            Err(e) => {
                                assert!(
                                    killing.load(Ordering::SeqCst),
                                    "round {round}: {k} failed before the kill: {e}"
                                );
                                break; // the daemon is gone
                            }
                        }
                    }
                });
            }
            std::thread::sleep(kill_after);
            killing.store(true, Ordering::SeqCst);
            // SAFETY: kill(2) on the pid of our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            stop.store(true, Ordering::SeqCst);
        });
        let status = m.signal_and_wait(libc::SIGKILL);
        assert_eq!(status.code(), None, "killed by SIGKILL");
        killed_reads += 1;
        s.set_latency(Duration::ZERO);
        drop(m); // clears the dead mount
    }
    let crash_time = started.elapsed();
    // Temp files of killed writers stay until they are stale (10 minutes: a live writer may still
    // own a young one); age them, add one stale and one fresh file, and mount: the scan removes
    // the stale ones and keeps the fresh one.
    let leftovers = tmp_files(cache.path());
    for f in &leftovers {
        age_file(f, Duration::from_secs(3600));
    }
    let stale = area_path(cache.path(), Area::Tmp).join("999999.1.tmp");
    let fresh = area_path(cache.path(), Area::Tmp).join("999999.2.tmp");
    fs::write(&stale, b"left by a dead writer").unwrap();
    age_file(&stale, Duration::from_secs(11 * 60));
    fs::write(&fresh, b"a live writer's").unwrap();
    let m = Mount::new(&s, BUCKET, &flags);
    wait_for("the scan to remove stale temp files", Duration::from_secs(20), || {
        !stale.exists() && leftovers.iter().all(|f| !f.exists())
    });
    assert!(fresh.exists(), "a young temp file may belong to a live writer");
    fs::remove_file(&fresh).unwrap();
    // Everything reads right, twice (the second time from the cache).
    for _ in 0..2 {
        for (k, b) in &objects {
            assert!(fs::read(m.join(k)).unwrap() == *b, "after {rounds} crashes: {k}");
        }
    }
    assert!(!m.log().contains("panicked"), "{}", m.log());
    drop(m);
    let on_disk = du(cache.path());
    // The bound (persisted metadata included) holds after all those crashes.
    assert!(on_disk <= max, "cache holds {on_disk} bytes, bound {max}");
    mount_times.sort();
    eprintln!(
        "RELIABILITY crash: rounds={rounds} kills={killed_reads} verified_reads={verified} leftover_tmp={} \
         mount_median={:?} mount_max={:?} elapsed={crash_time:?} cache_bytes={on_disk}",
        leftovers.len(),
        mount_times[mount_times.len() / 2],
        mount_times.last().unwrap(),
    );
}

// ---------------------------------------------------------------------------------------------
// 5. The cache under pressure: full, removed, read-only, symlinks and other users' files.
// ---------------------------------------------------------------------------------------------

/// `dir` bind-mounted read-only over itself; unmounted on drop.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn new(dir: &Path) -> ReadOnly {
        let run = |args: &[&str]| {
            let ok = Command::new("mount").args(args).arg(dir).arg(dir).status().unwrap();
            assert!(ok.success(), "mount {args:?} needs root");
        };
        run(&["--bind"]);
        let guard = ReadOnly(dir.to_path_buf());
        let ok = Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(ok.success());
        guard
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Whether the daemon logged a warning about its disk cache.
fn cache_warned(log: &str) -> bool {
    log.lines()
        .any(|l| l.contains("WARN") && l.contains("s3cachefs::cache"))
}

fn read_all_ok(m: &Mount, objects: &[(String, Vec<u8>)]) -> u64 {
    for (k, b) in objects {
        let got = fs::read(m.join(k)).unwrap_or_else(|e| panic!("{k}: {e}\n{}", m.log()));
        assert!(got == *b, "{k}");
    }
    objects.len() as u64
}

#[test]
fn full_cache_filesystem_serves_every_read_from_s3_with_a_warning() {
    let s = server();
    let objects = varied_objects("full", 9, 4000); // ~16 MiB
    put_all(&s, &objects);
    let tmpfs = Tmpfs::new("4m");
    let c = tmpfs.path().join("cache");
    // Another tenant leaves less than one block free (eviction alone would otherwise make room,
    // and the warning would depend on timing): every block is refused, or its write fails.
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
            "--max-prefetch-memory",
            "2MiB",
            "--no-passthrough",
        ],
    );
    let mut reads = 0;
    for _ in 0..3 {
        reads += read_all_ok(&m, &objects);
    }
    // Random ranges too.
    let mut rng = Rng::new(5);
    for (k, b) in &objects {
        let f = fs::File::open(m.join(k)).unwrap();
        for _ in 0..4 {
            let off = rng.below(b.len() as u64);
            assert!(pread(&f, off, 200_000).unwrap() == slice(b, off, 200_000));
            reads += 1;
        }
    }
    let log = m.log();
    // Less than one block is free and the cache holds nothing to evict: every block is refused
    // (or its write fails), with a clear warning.
    assert!(
        log.contains("disk cache is full") || log.contains("cannot write to the disk cache"),
        "a clear warning:\n{log}"
    );
    assert!(!log.contains("discarding"), "{log}");
    assert!(du(tmpfs.path()) <= 4 * MIB as u64);
    assert_eq!(
        fs::metadata(&filler).unwrap().len(),
        free - 512 * 1024,
        "the other file is untouched"
    );
    eprintln!(
        "RELIABILITY disk-full: reads={reads} wrong_bytes=0 cache_bytes={}",
        du(tmpfs.path())
    );
}

#[test]
fn cache_directory_removed_or_read_only_while_mounted_still_serves_reads() {
    let s = server();
    let objects = varied_objects("gone", 6, 5000);
    let more_ro = varied_objects("gone-ro", 4, 5100);
    let more_rm = varied_objects("gone-rm", 4, 5200);
    for o in [&objects, &more_ro, &more_rm] {
        put_all(&s, o);
    }
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("cache");
    let c = dir.to_str().unwrap();
    // A read-only cache at mount time is a configuration error: refused, clearly.
    {
        let m = Mount::new(&s, BUCKET, &["--cache", c, "--no-passthrough"]);
        read_all_ok(&m, &objects[..3]);
        drop(m);
        let _ro = ReadOnly::new(&dir);
        let e = Mount::try_new(&s, BUCKET, &["--cache", c]).err().unwrap();
        assert!(
            e.contains("cache directory") && e.contains("Read-only file system"),
            "{e}"
        );
    }
    // Made read-only under a running daemon: cached blocks are still read from it, the
    // others come from S3 and are not cached.
    {
        let m = Mount::new(&s, BUCKET, &["--cache", c, "--no-passthrough"]);
        let ro = ReadOnly::new(&dir);
        s.reset_counts();
        read_all_ok(&m, &objects[..3]);
        assert_eq!(s.counts().get, 0, "cached blocks still read from a read-only cache");
        read_all_ok(&m, &more_ro);
        read_all_ok(&m, &objects);
        assert!(cache_warned(&m.log()), "{}", m.log());
        drop(m);
        drop(ro);
    }
    // Removed under a running daemon.
    let m = Mount::new(&s, BUCKET, &["--cache", c]);
    read_all_ok(&m, &objects[..2]);
    // The daemon may be writing into it (metadata, background scan): retry until it is gone.
    let mut tries = 0;
    while let Err(e) = fs::remove_dir_all(&dir) {
        tries += 1;
        assert!(tries < 50, "cannot remove the cache directory: {e}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    read_all_ok(&m, &more_rm);
    read_all_ok(&m, &objects);
    assert!(cache_warned(&m.log()), "{}", m.log());
    // Nothing appeared next to the removed directory.
    let siblings: Vec<_> = fs::read_dir(parent.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(siblings.iter().all(|n| n == "cache"), "{siblings:?}");
    eprintln!(
        "RELIABILITY cache-removed: ok; cache dir afterwards: {:?}",
        files_under(&dir)
    );
}

/// (name, bytes, mtime, uid, mode) of every entry under `dir`: to prove nothing changed there.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, i64, u32, u32)> {
    files_under(dir)
        .into_iter()
        .map(|p| {
            let m = fs::symlink_metadata(&p).unwrap();
            let bytes = if m.is_file() { fs::read(&p).unwrap() } else { vec![] };
            (p, bytes, m.mtime(), m.uid(), m.mode())
        })
        .collect()
}

fn full_file_count(cache: &Path) -> usize {
    files_under(&area_path(cache, Area::Full)).len()
}

#[test]
fn symlinks_and_other_users_files_in_the_cache_are_never_followed_or_written() {
    let s = server();
    // Up to 4 MiB + 3 bytes: more than a quarter of the first mount's bound, so that object is
    // kept as block files (the others go into object files).
    let as_blocks = varied_objects("sym/blocks", 8, 6000);
    let assembled = varied_objects("sym/full", 4, 6100);
    let fresh = varied_objects("sym/new", 9, 6200);
    let fresh2 = varied_objects("sym/new2", 9, 6300);
    for o in [&as_blocks, &assembled, &fresh, &fresh2] {
        put_all(&s, o);
    }
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path().to_str().unwrap();
    {
        let m = Mount::new(
            &s,
            BUCKET,
            &["--cache", c, "--no-passthrough", "--max-cache-size", "16MiB"],
        );
        read_all_ok(&m, &as_blocks);
    }
    assert!(!files_under(&area_path(cache.path(), Area::Blocks)).is_empty());
    {
        let m = Mount::new(&s, BUCKET, &["--cache", c]);
        read_all_ok(&m, &assembled);
        wait_for("object files", Duration::from_secs(20), || {
            full_file_count(cache.path()) == 2 * (as_blocks.len() - 1 + assembled.len())
        });
    }
    // Outside the cache: copies of every cache file (valid blocks, if anyone followed a link
    // to them), and an empty directory.
    let outside = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let mut planted = Vec::new();
    let files: Vec<PathBuf> = files_under(&area_path(cache.path(), Area::Blocks))
        .into_iter()
        .chain(files_under(&area_path(cache.path(), Area::Full)))
        .chain(
            files_under(&area_path(cache.path(), Area::Meta))
                .into_iter()
                .filter(|p| !p.ends_with("generation")),
        )
        .collect();
    assert!(files.len() >= 15, "{files:?}");
    for (i, f) in files.iter().enumerate() {
        if i % 2 == 0 {
            // Replaced by a symlink to a valid copy outside.
            let copy = outside.path().join(format!("copy-{i}"));
            fs::copy(f, &copy).unwrap();
            fs::remove_file(f).unwrap();
            std::os::unix::fs::symlink(&copy, f).unwrap();
        } else {
            // Valid content, but another user's file.
            std::os::unix::fs::chown(f, Some(65534), Some(65534)).unwrap();
        }
        planted.push(f.clone());
    }
    let before = snapshot(outside.path());
    // A damaged ledger makes the mount reconcile the cache (a walk of every shard directory).
    fs::write(version_path(cache.path()).join(USAGE), b"damaged").unwrap();
    let m = Mount::new(&s, BUCKET, &["--cache", c]);
    // Once the mount's reconciliation is done (it removes foreign entries), every shard
    // directory not in use becomes a symlink to a directory outside: a block or an assembled
    // file written there would land outside the cache.
    wait_for("the cache's reconciliation", Duration::from_secs(20), || {
        m.log().contains("disk cache reconciled")
    });
    for area in [Area::Blocks, Area::Full] {
        for n in 0..SHARDS {
            let shard = area_path(cache.path(), area).join(shard_name(n));
            if !shard.exists() {
                std::os::unix::fs::symlink(empty.path(), &shard).unwrap();
            }
        }
    }
    let mut reads = 0;
    for _ in 0..2 {
        for o in [&as_blocks, &assembled, &fresh] {
            reads += read_all_ok(&m, o);
        }
    }
    std::thread::sleep(Duration::from_millis(500)); // background assembly
    // The temp directory, then the block and assembled-object directories, replaced by
    // symlinks to the outside directory under the running daemon.
    for area in [Area::Tmp, Area::Blocks, Area::Full] {
        let d = area_path(cache.path(), area);
        fs::rename(&d, d.with_extension("moved")).unwrap();
        std::os::unix::fs::symlink(empty.path(), &d).unwrap();
        reads += read_all_ok(&m, &fresh2[..3]);
    }
    reads += read_all_ok(&m, &fresh2);
    std::thread::sleep(Duration::from_millis(500)); // background assembly
    let log = m.log();
    drop(m);
    assert!(log.contains("discarding invalid disk cache block"), "{log}");
    assert_eq!(snapshot(outside.path()), before, "files outside the cache were changed");
    assert_eq!(
        files_under(empty.path()),
        Vec::<PathBuf>::new(),
        "written outside the cache"
    );
    for f in &planted {
        if let Ok(m) = fs::symlink_metadata(f) {
            assert!(!m.is_symlink(), "{} was left a symlink", f.display());
        }
    }
    eprintln!(
        "RELIABILITY symlinks: planted={} shard_links=~8192 reads={reads} written_outside=0",
        planted.len()
    );
}

/// What a mount of the bucket shows in the symlink rounds: files read whole, listings, names
/// looked up one at a time in a directory larger than a listing page (persisted as lookup
/// records, `k/`), and names that do not exist.
struct Expected {
    files: Vec<(String, Vec<u8>)>,
    dirs: Vec<(String, Vec<String>)>,
    empty_files: Vec<String>,
    missing: Vec<String>,
}

impl Expected {
    /// Lists, stats and reads everything; panics on any wrong answer. Returns the reads done.
    fn check(&self, m: &Mount) -> u64 {
        for (dir, want) in &self.dirs {
            let mut got: Vec<String> = fs::read_dir(m.join(dir))
                .unwrap_or_else(|e| panic!("ls {dir}: {e}\n{}", m.log()))
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            got.sort();
            assert_eq!(&got, want, "ls {dir}");
        }
        for k in &self.empty_files {
            let meta = fs::metadata(m.join(k)).unwrap_or_else(|e| panic!("stat {k}: {e}\n{}", m.log()));
            assert!(meta.is_file() && meta.len() == 0, "stat {k}");
        }
        for k in &self.missing {
            let e = fs::metadata(m.join(k)).err();
            assert_eq!(e.map(|e| e.kind()), Some(io::ErrorKind::NotFound), "stat {k}");
        }
        read_all_ok(m, &self.files)
    }
}

/// Every entry under `root` (relative paths, not following symlinks): the layout a real mount
/// made, so that areas and files added later are covered without being named here.
fn cache_entries(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(root).unwrap().to_path_buf());
        }
    }
    out.sort();
    out
}

/// (path, bytes or link target, mode, uid, mtime, atime of a file) of `dir` itself and of
/// everything under it, not following symlinks: any file created, removed, written, renamed,
/// chmod'ed or touched there changes it, and so does reading a file whose atime was set before
/// its mtime ([`make_reads_visible`]). Files are read with `O_NOATIME`.
type TreeState = Vec<(PathBuf, Vec<u8>, u32, u32, (i64, i64), (i64, i64))>;

fn tree_state(dir: &Path) -> TreeState {
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        let mut bytes = vec![];
        let mut atime = (0, 0);
        if m.is_file() {
            let mut f = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOATIME)
                .open(&p)
                .unwrap();
            f.read_to_end(&mut bytes).unwrap();
            atime = (m.atime(), m.atime_nsec());
        } else if m.is_symlink() {
            bytes = fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes();
        } else if m.is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
        out.push((p, bytes, m.mode(), m.uid(), (m.mtime(), m.mtime_nsec()), atime));
    }
    out.sort();
    out
}

/// The paths whose state differs between two [`tree_state`]s (added, removed or changed).
fn tree_changes(before: &TreeState, after: &TreeState) -> Vec<String> {
    let index = |t: &TreeState| {
        t.iter()
            .map(|e| (e.0.clone(), e.clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (b, a) = (index(before), index(after));
    let mut out = vec![];
    for (p, e) in &b {
        match a.get(p) {
            None => out.push(format!("removed {}", p.display())),
            Some(x) if x != e => out.push(format!(
                "changed {} (bytes {}, mode {:o}->{:o}, mtime {:?}->{:?}, atime {:?}->{:?})",
                p.display(),
                if x.1 == e.1 { "same" } else { "differ" },
                e.2,
                x.2,
                e.4,
                x.4,
                e.5,
                x.5
            )),
            Some(_) => {}
        }
    }
    out.extend(
        a.keys()
            .filter(|p| !b.contains_key(*p))
            .map(|p| format!("created {}", p.display())),
    );
    out
}

/// Sets the atime of every file under `dir` to 1970 (mtime unchanged), so that the first read
/// of one updates it (`relatime`, the default): a read through a followed symlink shows.
/// Asserts that this filesystem does record reads, so that the check cannot pass vacuously.
fn make_reads_visible(dir: &Path) {
    let set_old_atime = |p: &Path| {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        let omit = libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        };
        let times = [libc::timespec { tv_sec: 1, tv_nsec: 0 }, omit];
        // SAFETY: a valid C string and two timespecs, as utimensat(2) takes.
        let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
        assert_eq!(r, 0, "utimensat {}: {}", p.display(), io::Error::last_os_error());
    };
    let canary = dir.join("canary");
    fs::write(&canary, b"read me").unwrap();
    set_old_atime(&canary);
    fs::read(&canary).unwrap();
    assert!(
        fs::metadata(&canary).unwrap().atime() > 1,
        "the filesystem of {} does not record reads (noatime): reads outside the cache would go unseen",
        dir.display()
    );
    fs::remove_file(&canary).unwrap();
    for p in files_under(dir) {
        if fs::symlink_metadata(&p).unwrap().is_file() {
            set_old_atime(&p);
        }
    }
}

/// `cp -a`: a copy with the same modes, owners and times.
fn copy_tree(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg("-T")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cp -a {}: {}",
        from.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Entries of the layout that make a mount (and `warm`) refuse to start when they are symlinks
/// (docs/RELIABILITY.md): the version directory, the data cache's areas and the control files
/// every process maps or locks. Anything else is removed, replaced or left unused, with a
/// warning, and what it held is fetched again.
fn refuses_the_mount(entry: &Path) -> bool {
    let v = Path::new(s3cachefs::cachedir::VERSION_DIR);
    let areas = [Area::Blocks, Area::Full, Area::Tmp].map(Area::name);
    entry == v
        || [USAGE, LOCKS, EVICT_LOCK]
            .iter()
            .chain(&areas)
            .any(|f| entry == v.join(f))
}

/// One round: a copy of the `pristine` cache with every entry of `plant` replaced by a symlink
/// to a copy of it outside the cache directory; then a mount (`--metadata-ttl indefinite`)
/// that reads everything, `warm` into the same cache, SIGHUP, everything again, a remount that
/// reads everything again. Or, when `refused`, the mount and `warm` must refuse with a clear
/// error. Asserts that nothing outside the cache directory changed. Returns the reads done.
fn symlink_round(s: &TestServer, pristine: &Path, plant: &[PathBuf], want: &Expected, refused: bool) -> u64 {
    let base = tempfile::tempdir().unwrap();
    let cache = base.path().join("cache");
    let outside = base.path().join("outside");
    copy_tree(pristine, &cache);
    fs::create_dir(&outside).unwrap();
    for (i, rel) in plant.iter().enumerate() {
        let (entry, target) = (cache.join(rel), outside.join(format!("{i}")));
        copy_tree(&entry, &target);
        if fs::symlink_metadata(&entry).unwrap().is_dir() {
            fs::remove_dir_all(&entry).unwrap();
        } else {
            fs::remove_file(&entry).unwrap();
        }
        std::os::unix::fs::symlink(&target, &entry).unwrap();
    }
    make_reads_visible(&outside);
    let before = tree_state(&outside);
    let c = cache.to_str().unwrap();
    let args = ["--cache", c, "--metadata-ttl", "indefinite"];
    let warm = || {
        let mut cmd = command();
        cmd.args(["warm", &format!("{BUCKET}/lv/"), "--cache", c])
            .args(endpoint_args(s));
        let out = run_with_timeout(cmd, Duration::from_secs(60));
        (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let mut reads = 0;
    if refused {
        let e = Mount::try_new(s, BUCKET, &args)
            .err()
            .unwrap_or_else(|| panic!("{plant:?}: mounted"));
        let clear = |e: &str| {
            let not_dir = format!("cache directory {} is not a directory", cache.join(&plant[0]).display());
            e.contains(&not_dir) || (e.contains("cache directory") && e.contains("symbolic links"))
        };
        assert!(clear(&e), "{plant:?}: {e}");
        let (status, err) = warm();
        assert!(!status.success() && clear(&err), "{plant:?}: warm: {err}");
    } else {
        let mut m = Mount::new(s, BUCKET, &args);
        reads += want.check(&m);
        let (status, err) = warm();
        assert!(status.success(), "{plant:?}: warm: {err}");
        // SAFETY: kill(2) on the pid of our own child.
        unsafe { libc::kill(m.pid() as i32, libc::SIGHUP) };
        wait_for("SIGHUP", Duration::from_secs(20), || {
            m.log().contains("SIGHUP: cached metadata dropped")
        });
        reads += want.check(&m);
        assert_eq!(
            exit_code(&m.signal_and_wait(libc::SIGTERM)),
            0,
            "{plant:?}:\n{}",
            m.log()
        );
        let m = Mount::new(s, BUCKET, &args);
        reads += want.check(&m);
    }
    let changes = tree_changes(&before, &tree_state(&outside));
    assert!(
        changes.is_empty(),
        "{plant:?}: read or changed outside the cache: {changes:#?}"
    );
    let beside: Vec<_> = fs::read_dir(base.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside.len(), 2, "{plant:?}: created beside the cache: {beside:?}");
    reads
}

#[test]
fn symlinks_planted_at_every_level_of_the_cache_never_lead_outside_it() {
    let s = server();
    // Up to 4 MiB + 3 bytes: kept as block files under the first mount's bound (see below).
    let blocks = varied_objects("lv/a", 8, 6400);
    let assembled = varied_objects("lv/b", 3, 6500);
    put_all(&s, &blocks);
    put_all(&s, &assembled);
    // A directory larger than one listing page: its names are looked up (and persisted) one
    // at a time.
    for i in 0..1001 {
        s.put(BUCKET, &format!("big/k{i:04}"), Vec::new());
    }
    let names = |o: &[(String, Vec<u8>)]| {
        o.iter()
            .map(|(k, _)| k.rsplit('/').next().unwrap().to_string())
            .collect()
    };
    let want = Expected {
        files: blocks.iter().chain(&assembled).cloned().collect(),
        dirs: vec![
            (String::new(), vec!["big".into(), "lv".into()]),
            ("lv".into(), vec!["a".into(), "b".into()]),
            ("lv/a".into(), names(&blocks)),
            ("lv/b".into(), names(&assembled)),
        ],
        empty_files: vec!["big/k0000".into(), "big/k0999".into(), "big/k1000".into()],
        missing: vec!["big/nope".into(), "lv/a/nope".into()],
    };
    // A cache made by real mounts: blocks, assembled files, listings, lookups, the salt and
    // the remembered identity.
    let pristine_dir = tempfile::tempdir().unwrap();
    let pristine = pristine_dir.path().join("cache");
    let p = pristine.to_str().unwrap();
    {
        let m = Mount::new(
            &s,
            BUCKET,
            &[
                "--cache",
                p,
                "--metadata-ttl",
                "indefinite",
                "--no-passthrough",
                // A quarter of it is less than the largest object: that one takes block files.
                "--max-cache-size",
                "16MiB",
            ],
        );
        want.check(&m);
    }
    {
        let m = Mount::new(&s, BUCKET, &["--cache", p, "--metadata-ttl", "indefinite"]);
        read_all_ok(&m, &assembled);
        wait_for("object files", Duration::from_secs(20), || {
            full_file_count(&pristine) == 2 * (blocks.len() - 1 + assembled.len())
        });
    }
    let entries = cache_entries(&pristine);
    // Every kind of entry is there to be replaced (else the rounds below would prove little).
    let has = |what: &str, depth: usize, f: &dyn Fn(&str) -> bool| {
        let found = entries
            .iter()
            .any(|e| e.components().count() == depth && f(e.to_str().unwrap()));
        assert!(found, "no {what} in the cache: {entries:#?}");
    };
    for name in [USAGE, LOCKS, EVICT_LOCK, "salt", "identities", "meta", "tmp"] {
        has(name, 2, &|e| e == format!("v1/{name}"));
    }
    has("block file", 4, &|e| e.starts_with("v1/blocks/"));
    has("object file", 4, &|e| e.starts_with("v1/full/") && !e.ends_with(".idx"));
    has("object file index", 4, &|e| {
        e.starts_with("v1/full/") && e.ends_with(".idx")
    });
    has("remembered identity", 3, &|e| e.starts_with("v1/identities/"));
    has("generation file", 3, &|e| e == "v1/meta/generation");
    has("persisted listing", 6, &|e| {
        e.starts_with("v1/meta/g") && e.contains("/l/")
    });
    has("persisted lookup", 6, &|e| {
        e.starts_with("v1/meta/g") && e.contains("/k/")
    });
    // One round per depth (entries of one depth are never inside one another), plus one per
    // entry that refuses the mount.
    let depth = |e: &PathBuf| e.components().count();
    let deepest = entries.iter().map(depth).max().unwrap();
    let (mut rounds, mut planted, mut reads) = (0, 0, 0);
    for d in 1..=deepest {
        let (refusing, level): (Vec<PathBuf>, Vec<PathBuf>) = entries
            .iter()
            .filter(|e| depth(e) == d)
            .cloned()
            .partition(|e| refuses_the_mount(e));
        for e in &refusing {
            reads += symlink_round(&s, &pristine, std::slice::from_ref(e), &want, true);
            rounds += 1;
        }
        if !level.is_empty() {
            reads += symlink_round(&s, &pristine, &level, &want, false);
            rounds += 1;
        }
        planted += refusing.len() + level.len();
    }
    eprintln!(
        "RELIABILITY symlinks-every-level: entries={} depths={deepest} rounds={rounds} planted={planted} reads={reads} changed_outside=0",
        entries.len()
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Objects that change in S3 (see docs/SEMANTICS.md, "Changes in S3").
// ---------------------------------------------------------------------------------------------

/// Reads the whole of `f` in 64 KiB chunks: each chunk must be the old version's bytes or fail
/// with EIO. Returns (chunks of old bytes, errors).
fn old_or_eio(f: &fs::File, old: &[u8], new: &[u8]) -> (u64, u64) {
    let (mut same, mut errors) = (0, 0);
    let mut off = 0;
    while off < old.len() {
        match pread(f, off as u64, 64 << 10) {
            Ok(got) => {
                assert!(
                    got == slice(old, off as u64, 64 << 10),
                    "chunk at {off} is not the old version's"
                );
                assert!(got != slice(new, off as u64, 64 << 10));
                same += 1;
            }
            Err(e) => {
                assert_eq!(errno(&e), libc::EIO, "{e}");
                errors += 1;
            }
        }
        off += 64 << 10;
    }
    (same, errors)
}

#[test]
fn overwritten_while_open_with_the_disk_cache_reads_old_bytes_or_eio_never_a_mix() {
    let s = server();
    let v1 = data(4 * MIB, 20);
    let v2 = data(4 * MIB, 21);
    s.put(BUCKET, "f.bin", v1.clone());
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path().to_str().unwrap();
    {
        let m = Mount::new(&s, BUCKET, &["--cache", c, "--no-passthrough"]);
        let f = fs::File::open(m.join("f.bin")).unwrap();
        // Block 0 cached (memory and disk), the others not.
        assert!(pread(&f, 0, 100_000).unwrap() == v1[..100_000]);
        s.put(BUCKET, "f.bin", v2.clone());
        let (same, errors) = old_or_eio(&f, &v1, &v2);
        assert!(
            same > 0 && errors > 0,
            "old bytes from the cache, EIO for the rest: {same} {errors}"
        );
        drop(f);
        // The failed read made the daemon forget the name: a new open reads the new version.
        assert!(fs::read(m.join("f.bin")).unwrap() == v2);
    }
    // A remount on the same cache never serves the old version's blocks for the new one.
    let m = Mount::new(&s, BUCKET, &["--cache", c, "--no-passthrough"]);
    assert!(fs::read(m.join("f.bin")).unwrap() == v2);
}

#[test]
fn overwritten_while_open_through_passthrough_reads_one_version_whole() {
    let s = server();
    let v1 = data(3 * MIB + 11, 30);
    let v2 = data(5 * MIB + 7, 31);
    s.put(BUCKET, "p.bin", v1.clone());
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path().to_str().unwrap();
    let m = Mount::new(&s, BUCKET, &["--cache", c, "--metadata-ttl", "0"]);
    assert!(fs::read(m.join("p.bin")).unwrap() == v1);
    wait_for("the assembled file", Duration::from_secs(20), || {
        full_file_count(cache.path()) == 2
    });
    let f = fs::File::open(m.join("p.bin")).unwrap();
    assert!(pread(&f, 0, 1000).unwrap() == v1[..1000]);
    s.put(BUCKET, "p.bin", v2.clone());
    // The handle opened before the change reads the old version, whole.
    assert!(pread(&f, 0, v2.len()).unwrap() == v1);
    // A handle opened while it is still open: the kernel shares one backing file per inode,
    // so it reads one version whole (today the old one), never a mix.
    let g = fs::File::open(m.join("p.bin")).unwrap();
    let got = pread(&g, 0, v2.len() + 10).unwrap();
    assert!(got == v1 || got == v2, "a mix of versions ({} bytes)", got.len());
    let second_open = if got == v1 { "old" } else { "new" };
    drop((f, g));
    // Once every handle of the old version is closed, a new open reads the new version.
    assert!(fs::read(m.join("p.bin")).unwrap() == v2);
    eprintln!("RELIABILITY overwrite-passthrough: open handle=old, open while old open={second_open}, after close=new");
}

#[test]
fn deleted_while_cached_stays_readable_until_the_metadata_is_refreshed() {
    let s = server();
    let body = data(2 * MIB + 3, 40);
    let partial = data(3 * MIB, 41);
    s.put(BUCKET, "d/whole.bin", body.clone());
    s.put(BUCKET, "d/partial.bin", partial.clone());
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path().to_str().unwrap();
    let m = Mount::new(&s, BUCKET, &["--cache", c, "--metadata-ttl", "indefinite"]);
    assert!(fs::read(m.join("d/whole.bin")).unwrap() == body);
    wait_for("the assembled file", Duration::from_secs(20), || {
        full_file_count(cache.path()) == 2
    });
    let f = fs::File::open(m.join("d/whole.bin")).unwrap();
    let p = fs::File::open(m.join("d/partial.bin")).unwrap();
    assert!(pread(&p, 0, 1000).unwrap() == partial[..1000]);
    s.delete(BUCKET, "d/whole.bin");
    s.delete(BUCKET, "d/partial.bin");
    s.reset_counts();
    // Open handles: cached bytes are served; a block that must be fetched fails with EIO.
    assert!(pread(&f, 0, body.len()).unwrap() == body);
    let (same, errors) = old_or_eio(&p, &partial, &[]);
    assert!(same > 0 && errors > 0, "{same} {errors}");
    // New opens within the metadata TTL: the cached object is still there, read from disk.
    assert!(fs::read(m.join("d/whole.bin")).unwrap() == body);
    let gets: Vec<_> = s.requests().into_iter().filter(|r| r.op == Op::Get).collect();
    assert!(
        gets.iter()
            .all(|r| r.key.as_deref() == Some("d/partial.bin") && r.status == 404),
        "whole.bin came from the cache; only partial.bin's missing blocks were asked: {gets:?}"
    );
    // After the refresh (SIGHUP, or the TTL), the name is gone.
    // SAFETY: kill(2) on the pid of our own child.
    unsafe { libc::kill(m.pid() as i32, libc::SIGHUP) };
    wait_for("the refresh", Duration::from_secs(10), || m.log().contains("SIGHUP"));
    assert_eq!(errno(&fs::metadata(m.join("d/whole.bin")).unwrap_err()), libc::ENOENT);
    assert_eq!(
        errno(&fs::File::open(m.join("d/partial.bin")).unwrap_err()),
        libc::ENOENT
    );
    drop((f, p));
}

// ---------------------------------------------------------------------------------------------
// 10. Memory: 64 concurrent readers of different large files stay within the configured bound.
// ---------------------------------------------------------------------------------------------

#[test]
fn memory_stays_bounded_under_64_concurrent_readers() {
    const READERS: usize = 64;
    let s = server();
    // Different bytes per file, cheaply: windows of one random buffer at different offsets.
    let base = data(8 * MIB + READERS * 4099, 7000);
    let bodies: Vec<Vec<u8>> = (0..READERS)
        .map(|i| base[i * 4099..i * 4099 + 8 * MIB].to_vec())
        .collect();
    for (i, b) in bodies.iter().enumerate() {
        s.put(BUCKET, &format!("big/part-{i:02}"), b.clone());
    }
    s.set_latency(Duration::from_millis(10));
    let m = Mount::new(&s, BUCKET, &["--max-prefetch-memory", "64MiB"]);
    let idle = vm_hwm(m.pid());
    let t = Instant::now();
    std::thread::scope(|scope| {
        for (i, body) in bodies.iter().enumerate() {
            let m = &m;
            scope.spawn(move || {
                let got = fs::read(m.join(&format!("big/part-{i:02}"))).unwrap();
                assert!(got == *body, "part-{i:02}");
            });
        }
    });
    let elapsed = t.elapsed();
    let peak = vm_hwm(m.pid());
    let c = s.counts();
    eprintln!(
        "RELIABILITY memory: readers={READERS} data_mib={} elapsed={elapsed:?} gets={} rss_idle_mib={} rss_peak_mib={} limit_mib=64+64",
        READERS * 8,
        c.get,
        idle >> 20,
        peak >> 20
    );
    // Each handle reads ahead at least one block: 64 readers can hold more than the memory
    // cache, so a prefetched block is now and then evicted before it is read and fetched again.
    assert!(
        c.get <= READERS as u64 * 8 * 11 / 10,
        "more than 10% of the blocks fetched twice: {c:?}"
    );
    assert!(
        peak <= (64 + 64) << 20,
        "peak RSS {} MiB exceeds --max-prefetch-memory + 64 MiB",
        peak >> 20
    );
}
