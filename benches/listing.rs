//! Large directories: `ls -f` and `ls -l` of one directory of 100,000 and one of 1,000,000 keys,
//! cold and warm, through the mount and on a local directory of empty files; the S3 requests of
//! the cold listing; the daemon's RSS after the walk and after the kernel forgets the names
//! (`echo 2 > /proc/sys/vm/drop_caches`); and a warm `ls -lR` of 5,000 entries.
//!
//!     cargo bench --bench listing                                  # 100,000 and 1,000,000
//!     cargo bench --bench listing -- --sizes 20000 --tree 5000      # quick
//!
//! The test server answers every request after `--latency-ms` (S3's first byte), LIST pages
//! hold 1,000 keys. Each daemon mounts with `--metadata-ttl indefinite` and its own empty
//! `--cache`, so "cold" is a fresh daemon and "warm" the same command again on it (the kernel
//! keeps entries and attributes for the TTL). The local directory is on `--tmpdir` (the
//! system temp dir by default), cold after `echo 3 > drop_caches`. Needs /dev/fuse and root.

#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use s3cachefs_testserver::{Counts, TestServer};

use support::daemon::{Daemon, Extra, Target};
use support::report::median;
use support::sys;

const BUCKET: &str = "bench-bucket";

#[derive(Parser, Debug)]
#[command(name = "listing", about = "ls -f / ls -l of large directories, cold and warm")]
struct Args {
    /// Keys in the one large directory, one run per size
    #[arg(long, value_delimiter = ',', default_values_t = [100_000, 1_000_000])]
    sizes: Vec<usize>,
    /// Entries of the tree walked with `ls -lR` (0: skip)
    #[arg(long, default_value_t = 5_000)]
    tree: usize,
    /// First-byte latency of every S3 request, in milliseconds
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// Warm runs of each command (the median is reported)
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where the local directories, mount points and caches go [default: the system temp dir]
    #[arg(long)]
    tmpdir: Option<PathBuf>,
    /// Ignored (cargo bench passes it)
    #[arg(long, hide = true)]
    bench: bool,
}

/// Runs `ls ARGS DIR` with its output discarded; returns the wall time.
fn ls(args: &str, dir: &Path) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let status = Command::new("ls")
        .args(args.split(' '))
        .arg(dir)
        .env("LC_ALL", "C")
        .stdout(Stdio::null())
        .status()
        .context("running ls")?;
    let took = start.elapsed();
    ensure!(status.success(), "ls {args} {} failed: {status}", dir.display());
    Ok(took)
}

fn warm(args: &str, dir: &Path, runs: usize) -> anyhow::Result<Duration> {
    Ok(median(
        (0..runs.max(1)).map(|_| ls(args, dir)).collect::<anyhow::Result<_>>()?,
    ))
}

/// `VmRSS` of a live process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// The daemon's `inodes` gauge, as statfs reports it (`f_files`).
fn inodes(mnt: &Path) -> u64 {
    let c = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string and a zeroed statvfs to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    st.f_files
}

/// Drops dentries and inodes only (the kernel forgets FUSE inodes), after a sync.
fn drop_dentries() -> bool {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "2").is_ok()
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

struct Bench {
    args: Args,
    root: PathBuf,
    n: usize,
}

impl Bench {
    fn daemon(&self, server: &TestServer, name: &str) -> anyhow::Result<Daemon> {
        let target = Target {
            endpoint: server.endpoint(),
            bucket: BUCKET.into(),
            extra: vec![],
        };
        let mut d = Daemon::spawn(
            &target,
            name,
            &self.root.join(format!("mnt-{name}-{}", self.n)),
            &self.root.join(format!("cache-{name}-{}", self.n)),
            &self.root.join("logs"),
            &Extra::default(),
        )?;
        d.wait_mounted()?;
        Ok(d)
    }

    /// A local directory with the same names, empty files.
    fn local_dir(&self, names: &[String]) -> anyhow::Result<PathBuf> {
        let dir = self.root.join(format!("local-{}", self.n));
        for n in names {
            let p = dir.join(n);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::File::create(&p)?;
        }
        Ok(dir)
    }
}

fn count_line(c: &Counts) -> String {
    format!("{} LIST, {} HEAD, {} GET", c.list, c.head, c.get)
}

fn large_dir(b: &Bench) -> anyhow::Result<Vec<String>> {
    let n = b.n;
    let names: Vec<String> = (0..n).map(|i| format!("f{i:07}")).collect();
    eprintln!("== one directory of {n} keys");
    let server = TestServer::start();
    server.create_bucket(BUCKET);
    for name in &names {
        server.put(BUCKET, &format!("big/{name}"), Vec::new());
    }
    server.set_latency(Duration::from_millis(b.args.latency_ms));
    let local = b.local_dir(&names.iter().map(|s| format!("big/{s}")).collect::<Vec<_>>())?;
    let local = local.join("big");
    let runs = b.args.runs;
    let mut rows = Vec::new();
    for cmd in ["-f", "-l"] {
        ensure!(sys::drop_caches(), "cannot drop caches (needs root)");
        let local_cold = ls(cmd, &local)?;
        let local_warm = warm(cmd, &local, runs)?;
        // A fresh daemon per command: the cold listing is its first.
        let d = b.daemon(&server, &format!("ls{}", cmd.trim_start_matches('-')))?;
        let pid = d.pid().context("daemon pid")?;
        ensure!(sys::drop_caches(), "cannot drop caches");
        server.reset_counts();
        let cold = ls(cmd, &d.mnt().join("big"))?;
        let counts = server.counts();
        let warm_t = warm(cmd, &d.mnt().join("big"), runs)?;
        let warm_counts = server.counts();
        let rss_walk = rss_mib(pid);
        let ino_walk = inodes(d.mnt());
        ensure!(drop_dentries(), "cannot drop dentries");
        // The kernel sends its FORGETs right away; the daemon then gives the memory back on a
        // blocking thread. Wait until RSS has not moved for 2 s (at most 30 s).
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = (rss_mib(pid), Instant::now());
        while Instant::now() < deadline && last.1.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(250));
            let now = rss_mib(pid);
            if (now - last.0).abs() >= 1.0 {
                last = (now, Instant::now());
            }
        }
        let rss_forgot = rss_mib(pid);
        let ino_forgot = inodes(d.mnt());
        eprintln!(
            "ls {cmd}: local cold {} warm {} | mount cold {} ({}) warm {} (+{} requests) | \
             RSS {rss_walk:.0} MiB with {ino_walk} inodes, {rss_forgot:.0} MiB with {ino_forgot} after forget",
            secs(local_cold),
            secs(local_warm),
            secs(cold),
            count_line(&counts),
            secs(warm_t),
            warm_counts.total() - counts.total(),
        );
        rows.push(format!(
            "| {n} | `ls {cmd}` | {} | {} | {} | {} | {:.2}× | {} | {rss_walk:.0} MiB ({ino_walk} inodes) | {rss_forgot:.0} MiB ({ino_forgot}) |",
            secs(local_cold),
            secs(local_warm),
            secs(cold),
            secs(warm_t),
            warm_t.as_secs_f64() / local_warm.as_secs_f64(),
            count_line(&counts),
        ));
        d.unmount()?;
    }
    std::fs::remove_dir_all(local.parent().unwrap())?;
    Ok(rows)
}

fn tree(b: &Bench) -> anyhow::Result<String> {
    let entries = b.args.tree;
    // 50 directories holding the rest as files: `entries` names in all.
    let dirs = 50.min(entries);
    let files = entries - dirs;
    let names: Vec<String> = (0..files).map(|i| format!("tree/d{:02}/f{i:05}", i % dirs)).collect();
    eprintln!("== ls -lR of {entries} entries ({dirs} directories)");
    let server = TestServer::start();
    server.create_bucket(BUCKET);
    for name in &names {
        server.put(BUCKET, name, Vec::new());
    }
    server.set_latency(Duration::from_millis(b.args.latency_ms));
    let local = b.local_dir(&names)?.join("tree");
    let local_warm = {
        ls("-lR", &local)?;
        warm("-lR", &local, b.args.runs)?
    };
    let d = b.daemon(&server, "lsR")?;
    let cold = ls("-lR", &d.mnt().join("tree"))?;
    server.reset_counts();
    let warm_t = warm("-lR", &d.mnt().join("tree"), b.args.runs)?;
    let warm_requests = server.counts().total();
    d.unmount()?;
    std::fs::remove_dir_all(local.parent().unwrap())?;
    eprintln!(
        "ls -lR: local warm {} | mount cold {} warm {} ({warm_requests} requests)",
        secs(local_warm),
        secs(cold),
        secs(warm_t)
    );
    Ok(format!(
        "| {entries} | `ls -lR` | – | {} | {} | {} | {:.2}× | {warm_requests} requests warm | | |",
        secs(local_warm),
        secs(cold),
        secs(warm_t),
        warm_t.as_secs_f64() / local_warm.as_secs_f64(),
    ))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (mounting, drop_caches)");
    }
    let tmp = tempfile::Builder::new()
        .prefix("s3cachefs-listing")
        .tempdir_in(args.tmpdir.clone().unwrap_or_else(std::env::temp_dir))?;
    let sizes = args.sizes.clone();
    let mut b = Bench {
        args,
        root: tmp.path().to_path_buf(),
        n: 0,
    };
    for (k, v) in sys::machine_description(&b.root) {
        eprintln!("{k}: {v}");
    }
    eprintln!("load: {}", sys::loadavg());
    let mut rows = Vec::new();
    for n in sizes {
        b.n = n;
        rows.extend(large_dir(&b)?);
    }
    if b.args.tree > 0 {
        rows.push(tree(&b)?);
    }
    println!(
        "\n| entries | command | local cold (s) | local warm (s) | mount cold (s) | mount warm (s) | warm vs local | cold requests | daemon RSS after the walk | after forget |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
