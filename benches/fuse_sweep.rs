//! FUSE parameters by measurement: the real `s3cachefs` binary over the in-process S3 test server
//! (loopback, a per-request latency like S3's first byte), one fresh mount per setting, each
//! setting varying one FUSE connection parameter around the default (through the hidden
//! `--fuse-*` flags, docs/BENCHMARKS.md "FUSE parameters"), plus any combinations given.
//!
//!     cargo bench --bench fuse_sweep                       # 1 GiB file, every setting
//!     cargo bench --bench fuse_sweep -- --quick            # 256 MiB
//!     cargo bench --bench fuse_sweep -- --quick --only default,ra-4m --rounds 2
//!     cargo bench --bench fuse_sweep -- --quick --only default --combo "best=--fuse-read-ahead=4MiB --fuse-threads=2"
//!
//! Every mount has `--no-passthrough`, so warm reads go through the daemon and the FUSE
//! parameters matter. Per setting, the page cache dropped before each part:
//!   cold     the file read once with 1 MiB read()s through a fresh mount (empty `--cache`);
//!   warm     the same again (the daemon serves it from its caches);
//!   4 readers  four threads each read a quarter of the file at once, warm;
//!   random   `--random-reads` reads of 64 KiB at uniform offsets, warm: p50 latency.
//! Every byte read is compared with the object. Daemon CPU comes from /proc/PID/stat; FUSE
//! read requests and their mean size from the daemon's `/metrics`. `--rounds N` runs the whole
//! list N times, interleaved, so a difference can be told from run-to-run noise.
//!
//! Needs /dev/fuse and root (mounting, `drop_caches`, the mount's `read_ahead_kb`).

#[allow(dead_code)]
mod support;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use clap::Parser;
use s3cachefs::metrics as m;
use s3cachefs_testserver::TestServer;

use support::daemon::{Daemon, Extra, Target};
use support::report::{MB, percentile};
use support::sys::{self, CpuSnapshot};
use support::workload::{self, BUCKET, Offsets};

/// One knob at a time around the default. Names are what `--only` takes.
const SETTINGS: [(&str, &str); 15] = [
    ("default", ""),
    ("ra-128k", "--fuse-read-ahead=128KiB"),
    ("ra-256k", "--fuse-read-ahead=256KiB"),
    ("ra-512k", "--fuse-read-ahead=512KiB"),
    ("ra-1m", "--fuse-read-ahead=1MiB"),
    ("ra-4m", "--fuse-read-ahead=4MiB"),
    ("ra-16m", "--fuse-read-ahead=16MiB"),
    ("maxread-128k", "--fuse-max-read=128KiB"),
    ("maxread-256k", "--fuse-max-read=256KiB"),
    ("bg-16", "--fuse-max-background=16"),
    ("bg-256", "--fuse-max-background=256"),
    ("threads-1", "--fuse-threads=1"),
    ("threads-2", "--fuse-threads=2"),
    ("threads-8", "--fuse-threads=8"),
    ("clonefd-off", "--fuse-clone-fd=false"),
];

#[derive(Parser, Debug)]
#[command(
    name = "fuse_sweep",
    about = "FUSE connection parameters swept over a local S3 test server"
)]
struct Args {
    /// Size of the file read, in MiB [default: 1024; 256 with --quick]
    #[arg(long)]
    size_mib: Option<u64>,
    /// Smoke-test preset: a 256 MiB file
    #[arg(long)]
    quick: bool,
    /// Delay before every S3 response head, in ms
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// Run only these settings (comma-separated names; see SETTINGS in benches/fuse_sweep.rs)
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// A further setting, NAME=FLAGS (flags separated by spaces), e.g. "best=--fuse-read-ahead=4MiB --fuse-threads=2"; repeatable
    #[arg(long)]
    combo: Vec<String>,
    /// Passes over the whole list of settings, interleaved
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Number of random reads per setting
    #[arg(long, default_value_t = 200)]
    random_reads: usize,
    /// Extra flag for every `s3cachefs mount` (repeatable)
    #[arg(long = "mount-arg", allow_hyphen_values = true)]
    mount_args: Vec<String>,
    /// Directory for the mounts and caches [default: the system temp dir]
    #[arg(long)]
    tmpdir: Option<PathBuf>,
    /// Also write the report (Markdown) to this file
    #[arg(long)]
    out: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    bench: bool,
}

const KEY: &str = "data/sweep.bin";
const READ_BUF: usize = 1 << 20;
const RANDOM_LEN: usize = 64 << 10;
const READERS: usize = 4;

struct Result_ {
    setting: String,
    flags: String,
    /// The mount's `read_ahead_kb` as the kernel reports it.
    read_ahead_kib: String,
    cold_mbs: f64,
    cold_cpu_per_gib: f64,
    /// Mean bytes per FUSE read request during the cold read, in KiB.
    cold_req_kib: f64,
    warm_mbs: f64,
    warm_cpu_per_gib: f64,
    warm_req_kib: f64,
    readers_mbs: f64,
    random_p50_ms: f64,
    /// CPU seconds of everything else on the machine during the setting's timed parts.
    other_cpu: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let size = args.size_mib.unwrap_or(if args.quick { 256 } else { 1024 }) << 20;
    ensure!(size >= (READERS * READ_BUF) as u64, "--size-mib must be at least 4");
    ensure!(args.rounds >= 1, "--rounds must be at least 1");
    ensure!(args.random_reads >= 1, "--random-reads must be at least 1");
    let mut settings: Vec<(String, String)> = Vec::new();
    for (name, flags) in SETTINGS {
        if args.only.is_empty() || args.only.iter().any(|o| o == name) {
            settings.push((name.into(), flags.into()));
        }
    }
    for o in &args.only {
        ensure!(
            SETTINGS.iter().any(|(n, _)| n == o),
            "--only: unknown setting {o:?} (known: {})",
            SETTINGS.map(|(n, _)| n).join(", ")
        );
    }
    for c in &args.combo {
        let Some((name, flags)) = c.split_once('=') else {
            bail!("--combo {c:?}: expected NAME=FLAGS")
        };
        settings.push((name.trim().into(), flags.trim().into()));
    }
    ensure!(!settings.is_empty(), "no settings selected");

    let w = workload::build(size as f64 / workload::BIG_BYTES as f64, false, true, false, false);
    let data: Bytes = w.big.expect("the large file").data;
    ensure!(data.len() as u64 == size, "workload size {} != {size}", data.len());
    let server = TestServer::start();
    server.create_bucket(BUCKET);
    server.put(BUCKET, KEY, data.clone());
    server.set_latency(Duration::from_millis(args.latency_ms));
    let tmp_parent = args.tmpdir.clone().unwrap_or_else(std::env::temp_dir);
    let root = tempfile::Builder::new()
        .prefix("s3cachefs-sweep")
        .tempdir_in(&tmp_parent)
        .with_context(|| format!("cannot create a temp dir in {}", tmp_parent.display()))?;
    let target = Target {
        endpoint: server.endpoint(),
        bucket: BUCKET.into(),
        extra: args.mount_args.clone(),
    };
    let load_start = sys::loadavg();
    println!(
        "s3cachefs FUSE sweep: {} MiB file, {} ms per S3 request, {} settings × {} rounds; temp dir {}",
        size >> 20,
        args.latency_ms,
        settings.len(),
        args.rounds,
        root.path().display()
    );

    let mut results = Vec::new();
    let mut n = 0;
    for round in 0..args.rounds {
        for (name, flags) in &settings {
            n += 1;
            let dir = root.path().join(format!("{n}-{name}"));
            let r = run_setting(&target, &dir, name, flags, &data, args.random_reads)
                .with_context(|| format!("setting {name} (round {})", round + 1))?;
            println!(
                "{:<14} ra {:>6} KiB  cold {:>7.1} MB/s {:>5.2} CPU-s/GiB {:>5.0} KiB/req  warm {:>7.1} MB/s {:>5.2} CPU-s/GiB {:>5.0} KiB/req  4 readers {:>7.1} MB/s  random p50 {:>6.2} ms  other CPU {:>5.1} s",
                r.setting,
                r.read_ahead_kib,
                r.cold_mbs,
                r.cold_cpu_per_gib,
                r.cold_req_kib,
                r.warm_mbs,
                r.warm_cpu_per_gib,
                r.warm_req_kib,
                r.readers_mbs,
                r.random_p50_ms,
                r.other_cpu
            );
            results.push(r);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let report = report(&results, &args, size, &load_start);
    println!("\n{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| format!("cannot write {}", out.display()))?;
    }
    Ok(())
}

/// FUSE read requests the daemon has answered so far.
fn fuse_reads(d: &Daemon) -> anyhow::Result<f64> {
    let name = m::counter_name(m::FUSE_OPERATIONS);
    Ok(d.metrics()?
        .iter()
        .filter(|(s, _)| s.starts_with(&name) && s.contains("operation=\"read\""))
        .map(|(_, v)| v)
        .sum())
}

fn drop_caches() -> anyhow::Result<()> {
    ensure!(sys::drop_caches(), "cannot drop the page cache (needs root)");
    Ok(())
}

/// The mount's read-ahead as the kernel reports it (its backing device's `read_ahead_kb`).
fn read_ahead_kib(mnt: &Path) -> String {
    let Ok(meta) = std::fs::metadata(mnt) else {
        return "?".into();
    };
    let dev = meta.dev();
    let path = format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(dev), libc::minor(dev));
    std::fs::read_to_string(path).map_or("?".into(), |s| s.trim().to_string())
}

fn run_setting(
    target: &Target,
    dir: &Path,
    name: &str,
    flags: &str,
    data: &Bytes,
    random_reads: usize,
) -> anyhow::Result<Result_> {
    let mut args: Vec<String> = vec!["--no-passthrough".into()];
    args.extend(flags.split_whitespace().map(str::to_string));
    let extra = Extra { args, metrics: true };
    let mut d = Daemon::spawn(
        target,
        name,
        &dir.join("mnt"),
        &dir.join("cache"),
        &dir.join("logs"),
        &extra,
    )?;
    d.wait_mounted()?;
    let result = measure(&d, name, flags, data, random_reads);
    if let Err(e) = &result {
        bail!("{e:#}\ndaemon log:\n{}", d.log_text());
    }
    // The hermetic AWS settings point at config files that do not exist, on purpose.
    let problems: Vec<String> = d
        .problems()
        .into_iter()
        .filter(|l| !l.contains("aws_runtime::env_config"))
        .collect();
    d.unmount()?;
    ensure!(
        problems.is_empty(),
        "daemon {name} logged problems:\n{}",
        problems.join("\n")
    );
    result
}

fn measure(d: &Daemon, name: &str, flags: &str, data: &Bytes, random_reads: usize) -> anyhow::Result<Result_> {
    let pid = d.pid().context("daemon pid")?;
    let path = d.mnt().join(KEY);
    let gib = data.len() as f64 / (1u64 << 30) as f64;
    let mut other_cpu = 0.0;

    // Cold, then warm: one sequential pass each.
    let mut seq = |label: &str| -> anyhow::Result<(f64, f64, f64)> {
        drop_caches()?;
        let reads = fuse_reads(d)?;
        let cpu = CpuSnapshot::take(&[pid]);
        let t = Instant::now();
        read_whole(&path, data).with_context(|| format!("{label} read"))?;
        let elapsed = t.elapsed();
        let used = cpu.until(&CpuSnapshot::take(&[pid]));
        other_cpu += used.other;
        let requests = fuse_reads(d)? - reads;
        Ok((
            data.len() as f64 / MB / elapsed.as_secs_f64(),
            used.daemons / gib,
            data.len() as f64 / 1024.0 / requests.max(1.0),
        ))
    };
    let (cold_mbs, cold_cpu_per_gib, cold_req_kib) = seq("cold")?;
    let (warm_mbs, warm_cpu_per_gib, warm_req_kib) = seq("warm")?;

    // Four readers, a quarter each, at once.
    drop_caches()?;
    let cpu = CpuSnapshot::take(&[pid]);
    let quarter = data.len().div_ceil(READERS);
    let t = Instant::now();
    let readers = std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..READERS)
            .map(|i| {
                let (path, data) = (&path, data);
                s.spawn(move || read_range(path, data, i * quarter, ((i + 1) * quarter).min(data.len())))
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
        }
        Ok(())
    });
    readers.context("4 readers")?;
    let readers_mbs = data.len() as f64 / MB / t.elapsed().as_secs_f64();
    other_cpu += cpu.until(&CpuSnapshot::take(&[pid])).other;

    // Random 64 KiB reads, warm.
    drop_caches()?;
    let f = File::open(&path).context("open for random reads")?;
    let mut offsets = Offsets::new(0xBEEF);
    let mut buf = vec![0u8; RANDOM_LEN];
    let mut lat = Vec::with_capacity(random_reads);
    let cpu = CpuSnapshot::take(&[pid]);
    for _ in 0..random_reads {
        let off = offsets.below((data.len() - RANDOM_LEN + 1) as u64) as usize;
        let t = Instant::now();
        f.read_exact_at(&mut buf, off as u64)
            .with_context(|| format!("random read at {off}"))?;
        lat.push(t.elapsed());
        ensure!(
            buf[..] == data[off..off + RANDOM_LEN],
            "random read at {off}: bytes differ"
        );
    }
    other_cpu += cpu.until(&CpuSnapshot::take(&[pid])).other;
    drop(f);
    lat.sort();

    Ok(Result_ {
        setting: name.into(),
        flags: if flags.is_empty() { "–".into() } else { flags.into() },
        read_ahead_kib: read_ahead_kib(d.mnt()),
        cold_mbs,
        cold_cpu_per_gib,
        cold_req_kib,
        warm_mbs,
        warm_cpu_per_gib,
        warm_req_kib,
        readers_mbs,
        random_p50_ms: percentile(&lat, 0.5).as_secs_f64() * 1e3,
        other_cpu,
    })
}

/// Reads the whole file with 1 MiB read()s and compares every byte.
fn read_whole(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    read_range(path, data, 0, data.len())
}

/// Reads [start, end) of the file with 1 MiB reads and compares every byte.
fn read_range(path: &Path, data: &[u8], start: usize, end: usize) -> anyhow::Result<()> {
    let mut f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    if start > 0 {
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(start as u64))?;
    }
    let mut buf = vec![0u8; READ_BUF];
    let mut off = start;
    while off < end {
        let want = (end - off).min(READ_BUF);
        let n = f.read(&mut buf[..want]).with_context(|| format!("read at {off}"))?;
        ensure!(n > 0, "{}: unexpected end at {off}, expected {end}", path.display());
        if buf[..n] != data[off..off + n] {
            bail!("{}: bytes differ in [{off}, {})", path.display(), off + n);
        }
        off += n;
    }
    Ok(())
}

fn report(results: &[Result_], args: &Args, size: u64, load_start: &str) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or("unknown".into(), |c| c.trim().to_string());
    let _ = writeln!(
        s,
        "FUSE sweep: {} MiB file, {} ms per S3 request, {} random reads, {} round(s); commit {commit}; load average {load_start} at start, {} at end",
        size >> 20,
        args.latency_ms,
        args.random_reads,
        args.rounds,
        sys::loadavg()
    );
    for (k, v) in sys::machine_description(&args.tmpdir.clone().unwrap_or_else(std::env::temp_dir)) {
        let _ = writeln!(s, "- {k}: {v}");
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| setting | flags | read_ahead_kb | cold MB/s | cold daemon CPU-s/GiB | cold KiB/read req | warm MB/s | warm daemon CPU-s/GiB | warm KiB/read req | 4 readers warm MB/s | random 64 KiB warm p50 (ms) | other CPU (s) |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let _ = writeln!(
            s,
            "| {} | `{}` | {} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} | {:.1} |",
            r.setting,
            as_env(&r.flags),
            r.read_ahead_kib,
            r.cold_mbs,
            r.cold_cpu_per_gib,
            r.cold_req_kib,
            r.warm_mbs,
            r.warm_cpu_per_gib,
            r.warm_req_kib,
            r.readers_mbs,
            r.random_p50_ms,
            r.other_cpu
        );
    }
    s
}

/// The hidden `--fuse-*` flags of a setting as the environment variables that set them too
/// (`S3CACHEFS_FUSE_READ_AHEAD=4MiB`), the form docs/BENCHMARKS.md names them in.
fn as_env(flags: &str) -> String {
    flags
        .split_whitespace()
        .map(|f| match f.strip_prefix("--fuse-").and_then(|r| r.split_once('=')) {
            Some((name, value)) if name != "threads" => {
                format!("S3CACHEFS_FUSE_{}={value}", name.to_ascii_uppercase().replace('-', "_"))
            }
            _ => f.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}
