//! The disk cache at scale: a cache directory holding 1,000,000 valid block files.
//!
//!     cargo bench --bench cache_scale                        # 1,000,000 files (~4.3 GB on disk)
//!     cargo bench --bench cache_scale -- --files 100000 --churn-secs 10
//!
//! Measures mount time (from spawning the real `s3cachefs mount --foreground` until
//! /proc/self/mountinfo lists it) with an empty cache, with a 1,000,000-file cache whose ledger
//! is new (the background reconciliation then counts it, and how long that takes is reported),
//! and with the ledger valid; daemon RSS; the time from mounting with a bound below what the
//! cache holds to the first eviction; p50/p99 of cache-hit reads (4 KiB `O_DIRECT` reads, so
//! each reaches the daemon, of blocks on disk) while eviction runs and when idle; and bytes on
//! disk against the bound during sustained churn (working set 3× the bound, 4 reader processes
//! `dd iflag=direct`).
//!
//! The filler files are written straight into the cache directory in the cache's own format
//! (`s3cachefs::blockfmt`): one block of 3,000 bytes each, so each takes one 4 KiB filesystem
//! block, for objects that do not exist in the test server. Needs /dev/fuse and root, and
//! 20 GB free besides the cache; everything is deleted at the end.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use s3cachefs::blockfmt::{encode_header, object_hash};
use s3cachefs::object::{BlockRef, ObjectMeta, SourceId};
use s3cachefs_testserver::TestServer;

const BUCKET: &str = "bench-bucket";
const MIB: u64 = 1 << 20;
const BLOCK: u64 = MIB;
const HOT_OBJECTS: usize = 16;
const HOT_SIZE: usize = 4 << 20;

#[derive(Parser, Debug)]
#[command(name = "cache_scale", about = "The disk cache with a million block files")]
struct Args {
    /// Block files written into the cache before mounting
    #[arg(long, default_value_t = 1_000_000)]
    files: u64,
    /// Seconds of churn (working set 3x the bound, 4 readers)
    #[arg(long, default_value_t = 30)]
    churn_secs: u64,
    /// The bound during churn, in MiB
    #[arg(long, default_value_t = 128)]
    churn_bound_mib: u64,
    /// Directory for the caches and mount points [default: the system temp dir]
    #[arg(long)]
    tmpdir: Option<PathBuf>,
    /// Only the churn part (no million-file cache)
    #[arg(long)]
    churn_only: bool,
    /// Ignored (cargo bench passes it)
    #[arg(long, hide = true)]
    bench: bool,
}

fn is_mounted(path: &Path) -> bool {
    let want = path.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// One daemon; unmounts (SIGTERM, then `umount -l`) on drop.
struct Mount {
    child: Option<Child>,
    path: PathBuf,
    log: PathBuf,
    port: u16,
}

impl Mount {
    /// Spawns the daemon and returns once the mount is live, with how long that took.
    fn start(
        server: &TestServer,
        path: &Path,
        cache: &Path,
        log: &Path,
        extra: &[&str],
    ) -> anyhow::Result<(Mount, Duration)> {
        std::fs::create_dir_all(path)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_s3cachefs"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AWS_ACCESS_KEY_ID", "AKIDTESTKEY")
            .env("AWS_SECRET_ACCESS_KEY", "test-secret-key")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
            .arg("mount")
            .arg(BUCKET)
            .arg(path)
            .args(["--endpoint-url", &server.endpoint(), "--region", "us-east-1"])
            .args(["--foreground", "--metadata-ttl", "indefinite", "--no-passthrough"])
            .args(["--max-prefetch-memory", "16MiB", "--log-level", "info"])
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--cache")
            .arg(cache)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let t = Instant::now();
        let child = cmd.spawn().context("cannot start s3cachefs")?;
        let mut m = Mount {
            child: Some(child),
            path: path.to_path_buf(),
            log: log.to_path_buf(),
            port,
        };
        loop {
            if is_mounted(path) {
                return Ok((m, t.elapsed()));
            }
            if let Some(status) = m.child.as_mut().unwrap().try_wait()? {
                m.child = None;
                bail!("daemon exited with {status}:\n{}", std::fs::read_to_string(log)?);
            }
            ensure!(t.elapsed() < Duration::from_secs(60), "mount not live after 60 s");
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The sum of the series starting with `series` in `/metrics`.
    fn metric(&self, series: &str) -> f64 {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return f64::NAN;
        };
        let _ = write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut r = String::new();
        let _ = s.read_to_string(&mut r);
        r.lines()
            .filter(|l| l.starts_with(series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn rss_mib(&self) -> f64 {
        let pid = self.child.as_ref().map_or(0, |c| c.id());
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if is_mounted(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Writes `n` valid one-block files into `cache` (two threads).
fn fill(cache: &Path, n: u64) -> anyhow::Result<()> {
    let blocks = cache.join("v1").join("blocks");
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true).mode(0o700);
    b.create(&blocks)?;
    std::fs::set_permissions(cache, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    for shard in 0..4096u64 {
        b.create(blocks.join(format!("{shard:03x}")))?;
    }
    // Filler blocks of another source: valid files the mounts never read, only count and evict.
    let source = SourceId::new(Some("http://filler.invalid"), BUCKET, "filler");
    let done = AtomicU64::new(0);
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..2u64)
            .map(|t| {
                let (blocks, source, done) = (&blocks, &source, &done);
                s.spawn(move || -> anyhow::Result<()> {
                    let data = vec![0x5au8; 3000];
                    for i in (t..n).step_by(2) {
                        let obj = ObjectMeta {
                            key: format!("filler/{i:08}").into(),
                            size: data.len() as u64,
                            etag: "\"filler\"".into(),
                            last_modified: SystemTime::UNIX_EPOCH,
                        };
                        let block = BlockRef::new(source, &obj, BLOCK, 0);
                        let (hex, num) = object_hash(source, &obj.key, &obj.etag, BLOCK);
                        let mut bytes = encode_header(&block.id, &data)?;
                        bytes.extend_from_slice(&data);
                        let path = blocks
                            .join(format!("{:03x}", (num >> 7) % 4096))
                            .join(format!("{hex}.0"));
                        std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o600)
                            .open(path)?
                            .write_all(&bytes)?;
                        let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if d % 100_000 == 0 {
                            eprintln!("  {d} files written");
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap()?;
        }
        Ok(())
    })
}

#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// `n` random 4 KiB `O_DIRECT` reads of the hot objects: (p50, p99) in microseconds.
fn hit_latency(m: &Mount, n: usize, seed: u64) -> anyhow::Result<(f64, f64)> {
    let files: Vec<std::fs::File> = (0..HOT_OBJECTS)
        .map(|i| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(m.path.join(format!("hot/obj-{i:02}")))
        })
        .collect::<Result<_, _>>()?;
    let mut buf = Box::new(Page([0; 4096]));
    let mut x = seed | 1;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let f = &files[(x % HOT_OBJECTS as u64) as usize];
        let off = ((x >> 8) % (HOT_SIZE as u64 / 4096)) * 4096;
        let t = Instant::now();
        let got = f.read_at(&mut buf.0, off)?;
        times.push(t.elapsed());
        ensure!(got == 4096, "short read");
    }
    times.sort();
    let p = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    Ok((p(0.5), p(0.99)))
}

/// Bytes on disk under `p`, each file counted once as du(1) does: a walk that meets a block in
/// `tmp/` and again in `blocks/` after its rename would otherwise count it twice.
fn du(p: &Path) -> u64 {
    fn walk(p: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
        let Ok(m) = std::fs::symlink_metadata(p) else { return 0 };
        let mut total = if seen.insert((m.dev(), m.ino())) {
            m.blocks() * 512
        } else {
            0
        };
        if m.is_dir()
            && let Ok(rd) = std::fs::read_dir(p)
        {
            total += rd.flatten().map(|e| walk(&e.path(), seen)).sum::<u64>();
        }
        total
    }
    walk(p, &mut Default::default())
}

fn free_bytes(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string and a zeroed statvfs to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    st.f_bavail * st.f_frsize
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = tempfile::Builder::new()
        .prefix("s3cachefs-cache-scale")
        .tempdir_in(args.tmpdir.clone().unwrap_or_else(std::env::temp_dir))?;
    let need = args.files * 4096 + (2 << 30) + (20u64 << 30);
    ensure!(
        free_bytes(base.path()) > need,
        "needs {} GB free in {} (the cache plus 20 GB)",
        need >> 30,
        base.path().display()
    );
    let server = TestServer::start();
    server.create_bucket(BUCKET);
    let hot: Vec<Vec<u8>> = (0..HOT_OBJECTS)
        .map(|i| (0..HOT_SIZE).map(|j| (j as u64 * 31 + i as u64 * 7) as u8).collect())
        .collect();
    for (i, body) in hot.iter().enumerate() {
        server.put(BUCKET, &format!("hot/obj-{i:02}"), body.clone());
    }
    let churn_objects = (args.churn_bound_mib * 3 / 4) as usize;
    for i in 0..churn_objects {
        server.put(BUCKET, &format!("churn/obj-{i:04}"), vec![i as u8; 4 << 20]);
    }
    let mut row = |k: &str, v: String| println!("| {k} | {v} |");
    println!("| measurement | value |\n|---|---|");

    if !args.churn_only {
        scale(&args, &server, base.path(), &hot, &mut row)?;
    }
    churn(&args, &server, base.path(), churn_objects, &mut row)
}

fn scale(
    args: &Args,
    server: &TestServer,
    base: &Path,
    hot: &[Vec<u8>],
    row: &mut dyn FnMut(&str, String),
) -> anyhow::Result<()> {
    // Mount time with an empty cache (median of 5).
    let empty = base.join("empty");
    let mut times = Vec::new();
    for i in 0..5 {
        let (m, t) = Mount::start(
            server,
            &base.join("mnt"),
            &empty,
            &base.join(format!("empty{i}.log")),
            &[],
        )?;
        times.push(t);
        drop(m);
    }
    times.sort();
    row(
        "mount, empty cache (median of 5)",
        format!("{:.1} ms", times[2].as_secs_f64() * 1e3),
    );

    let cache = base.join("cache");
    let t = Instant::now();
    fill(&cache, args.files)?;
    eprintln!("filled {} files in {:.1?}", args.files, t.elapsed());
    let files = args.files;

    // First mount: the ledger is new, so a paced reconciliation counts the cache in the background.
    let mnt = base.join("mnt");
    let (m, t_first) = Mount::start(server, &mnt, &cache, &base.join("first.log"), &[])?;
    row(
        &format!("mount, {files} files, new ledger"),
        format!("{:.1} ms", t_first.as_secs_f64() * 1e3),
    );
    let rss_mount = m.rss_mib();
    let t = Instant::now();
    for (i, body) in hot.iter().enumerate() {
        ensure!(
            std::fs::read(mnt.join(format!("hot/obj-{i:02}")))? == *body,
            "wrong bytes"
        );
    }
    row(
        "reading 64 MiB cold right after that mount",
        format!("{:.2} s", t.elapsed().as_secs_f64()),
    );
    while !m.log_text().contains("disk cache reconciled") {
        ensure!(
            t.elapsed() < Duration::from_secs(1800),
            "no reconciliation after 30 min"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    row(
        "background reconciliation of the new ledger",
        format!("{:.1} s after the mount", t.elapsed().as_secs_f64()),
    );
    let (p50, p99) = hit_latency(&m, 3000, 1)?;
    row(
        "cache-hit read 4 KiB, idle: p50 / p99",
        format!("{p50:.0} / {p99:.0} µs"),
    );
    let usage = m.metric("s3cachefs_cache_size_bytes") as u64;
    row(
        "ledger after reconciliation / du",
        format!("{} / {} MiB", usage / MIB, du(&cache) / MIB),
    );
    row(
        "daemon RSS after mount / after reconciliation",
        format!("{rss_mount:.1} / {:.1} MiB", m.rss_mib()),
    );
    drop(m);

    // Mounts with the ledger valid (median of 5).
    let mut times = Vec::new();
    for i in 0..5 {
        let (m, t) = Mount::start(server, &mnt, &cache, &base.join(format!("again{i}.log")), &[])?;
        times.push(t);
        if i == 4 {
            row(
                &format!("daemon RSS, {files}-file cache, after mount"),
                format!("{:.1} MiB", m.rss_mib()),
            );
        }
        drop(m);
    }
    times.sort();
    row(
        &format!("mount, {files} files (median of 5)"),
        format!("{:.1} ms", times[2].as_secs_f64() * 1e3),
    );

    // A bound of half of what the cache holds: eviction runs right after the mount.
    let bound = usage / 2;
    let bound_arg = bound.to_string();
    let (m, t_mount) = Mount::start(
        server,
        &mnt,
        &cache,
        &base.join("evict.log"),
        &["--max-cache-size", &bound_arg],
    )?;
    let t0 = Instant::now();
    while m.metric("s3cachefs_cache_evictions_total") < 1.0 {
        ensure!(t0.elapsed() < Duration::from_secs(60), "no eviction after 60 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    row(
        "first eviction, after the mount is live",
        format!(
            "{:.1} ms (mount {:.1} ms)",
            t0.elapsed().as_secs_f64() * 1e3,
            t_mount.as_secs_f64() * 1e3
        ),
    );
    let before = m.metric("s3cachefs_cache_evictions_total");
    let (e50, e99) = hit_latency(&m, 3000, 2)?;
    let during = m.metric("s3cachefs_cache_evictions_total") - before;
    row(
        "cache-hit read 4 KiB, during eviction: p50 / p99",
        format!("{e50:.0} / {e99:.0} µs ({during:.0} files evicted meanwhile)"),
    );
    while m.metric("s3cachefs_cache_size_bytes") as u64 > bound {
        ensure!(
            t0.elapsed() < Duration::from_secs(1800),
            "still above the bound after 30 min"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    row(
        "eviction down to the bound",
        format!(
            "{:.1} s, {:.0} files",
            t0.elapsed().as_secs_f64(),
            m.metric("s3cachefs_cache_evictions_total")
        ),
    );
    std::thread::sleep(Duration::from_secs(2));
    let (i50, i99) = hit_latency(&m, 3000, 3)?;
    row(
        "cache-hit read 4 KiB, idle after eviction: p50 / p99",
        format!("{i50:.0} / {i99:.0} µs"),
    );
    row(
        "ledger / du / bound after eviction",
        format!(
            "{} / {} / {} MiB",
            m.metric("s3cachefs_cache_size_bytes") as u64 / MIB,
            du(&cache) / MIB,
            bound / MIB
        ),
    );
    row("daemon RSS after eviction", format!("{:.1} MiB", m.rss_mib()));
    drop(m);
    std::fs::remove_dir_all(&cache)?;

    Ok(())
}

fn churn(
    args: &Args,
    server: &TestServer,
    base: &Path,
    churn_objects: usize,
    row: &mut dyn FnMut(&str, String),
) -> anyhow::Result<()> {
    let mnt = base.join("mnt");
    // Churn: working set 3x the bound, 4 readers with O_DIRECT (every read reaches the daemon).
    let churn = base.join("churn");
    let bound = args.churn_bound_mib * MIB;
    let bound_arg = bound.to_string();
    let (m, _) = Mount::start(
        server,
        &mnt,
        &churn,
        &base.join("churn.log"),
        &["--max-cache-size", &bound_arg],
    )?;
    let stop = AtomicBool::new(false);
    let peak = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(du(&churn));
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        });
        let readers: Vec<_> = (0..4u64)
            .map(|r| {
                let (mnt, stop) = (&mnt, &stop);
                s.spawn(move || {
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ r;
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let f = mnt.join(format!("churn/obj-{:04}", x % churn_objects as u64));
                        let ok = Command::new("dd")
                            .arg(format!("if={}", f.display()))
                            .args(["of=/dev/null", "bs=1M", "iflag=direct", "status=none"])
                            .status()
                            .is_ok_and(|s| s.success());
                        assert!(ok, "dd failed on {}", f.display());
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(args.churn_secs));
        stop.store(true, Ordering::Relaxed);
        let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        (sampler.join().unwrap(), reads)
    });
    row(
        &format!(
            "churn {} s, working set {} MiB, 4 readers",
            args.churn_secs,
            churn_objects * 4
        ),
        format!(
            "{} objects read, {:.0} evictions, skipped {:.0}",
            peak.1,
            m.metric("s3cachefs_cache_evictions_total"),
            m.metric("s3cachefs_cache_skipped_full_total")
        ),
    );
    row(
        "churn: peak du (sampled every 100 ms) / bound",
        format!("{:.1} / {} MiB", peak.0 as f64 / MIB as f64, bound / MIB),
    );
    drop(m);
    Ok(())
}
