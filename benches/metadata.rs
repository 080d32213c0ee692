//! Persisted metadata at scale: mount time with a million persisted entries (versus an empty
//! cache), and the cost of the first accesses that load records from disk.
//!
//!     cargo bench --bench metadata                          # 1,000,000 entries, 1,000 per directory
//!     cargo bench --bench metadata -- --entries 100000 --full-walk
//!
//! The entries are written straight into the cache directory with the daemon's own persistence
//! code (`s3cachefs::meta::MetaStore`), for objects that do not exist in the S3 test server: so
//! every name the mount shows, and every S3 request it makes, is visible. Mount time is measured
//! from spawning the real `s3cachefs mount --foreground` until /proc/self/mountinfo lists the
//! mount. Needs /dev/fuse and root.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::Parser;
use s3cachefs::config::{S3Config, Source};
use s3cachefs::meta::{Entry, MetaStore};
use s3cachefs::object::ObjectMeta;
use s3cachefs_testserver::{Counts, TestServer};

const BUCKET: &str = "bench-bucket";

#[derive(Parser, Debug)]
#[command(
    name = "metadata",
    about = "Mount time and first-access cost with persisted metadata"
)]
struct Args {
    /// Persisted file entries in total
    #[arg(long, default_value_t = 1_000_000)]
    entries: usize,
    /// Files per directory (the directories hang off the root)
    #[arg(long, default_value_t = 1_000)]
    per_dir: usize,
    /// Mounts measured per configuration (the median is reported)
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Also walk and stat every persisted entry through the mount
    #[arg(long)]
    full_walk: bool,
    /// Directory for the cache and mount points [default: the system temp dir]
    #[arg(long)]
    tmpdir: Option<PathBuf>,
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
}

impl Mount {
    /// Spawns the daemon and returns once the mount is live, with how long that took.
    fn start(server: &TestServer, path: &Path, cache: &Path, log: &Path) -> anyhow::Result<(Mount, Duration)> {
        std::fs::create_dir_all(path)?;
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
            .args(["--foreground", "--metadata-ttl", "indefinite", "--cache"])
            .arg(cache)
            .args(["--log-level", "info"])
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
        };
        loop {
            if is_mounted(path) {
                return Ok((m, t.elapsed()));
            }
            if let Some(status) = m.child.as_mut().unwrap().try_wait()? {
                m.child = None;
                bail!("daemon exited with {status}:\n{}", std::fs::read_to_string(log)?);
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("mount not live after 60 s");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
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
        if std::thread::panicking() {
            eprintln!(
                "--- daemon log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn du(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::symlink_metadata(p) else { return 0 };
    let mut total = m.blocks() * 512;
    if m.is_dir() {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            total += du(&e.path());
        }
    }
    total
}

/// Writes `entries` file entries in directories of `per_dir`, plus the root listing naming
/// the directories, as the daemon would have persisted them after an `ls -R`.
fn populate(store: &MetaStore, entries: usize, per_dir: usize) -> anyhow::Result<usize> {
    let generation = store.generation()?;
    let dirs = entries.div_ceil(per_dir);
    let fetched = SystemTime::now();
    let root: Vec<(Arc<str>, Entry)> = (0..dirs).map(|d| (format!("dir{d:06}").into(), Entry::Dir)).collect();
    store.save_listing(generation, "", fetched, &root);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for d in (t..dirs).step_by(threads) {
                    let dir = format!("dir{d:06}/");
                    let n = per_dir.min(entries - d * per_dir);
                    let listing: Vec<(Arc<str>, Entry)> = (0..n)
                        .map(|f| {
                            let name = format!("part-{f:05}.parquet");
                            let meta = ObjectMeta {
                                key: format!("{dir}{name}").into(),
                                size: 1_000 + f as u64,
                                etag: format!("\"{:032x}\"", d * per_dir + f).into(),
                                last_modified: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                            };
                            (name.into(), Entry::File(meta))
                        })
                        .collect();
                    store.save_listing(generation, &dir, fetched, &listing);
                }
            });
        }
    });
    Ok(dirs)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.per_dir > 0 && args.entries > 0 && args.runs > 0,
        "nothing to measure"
    );
    let base = tempfile::Builder::new()
        .prefix("s3cachefs-bench-meta")
        .tempdir_in(args.tmpdir.clone().unwrap_or_else(std::env::temp_dir))?;
    let server = TestServer::start();
    server.create_bucket(BUCKET);
    let store_id = s3cachefs::app::store_id(
        &S3Config {
            endpoint_url: Some(server.endpoint()),
            ..S3Config::default()
        },
        &Source {
            bucket: BUCKET.into(),
            prefix: String::new(),
        },
        // The partition the test server's STS names for the mount's access key.
        &s3cachefs::app::identity::principal_partition(&s3cachefs_testserver::default_arn("AKIDTESTKEY")),
    );
    let full = base.path().join("cache-full");
    let empty = base.path().join("cache-empty");
    std::fs::create_dir(&full)?;
    std::fs::create_dir(&empty)?;
    // The block cache creates and checks the cache directory in a real mount; do as it does.
    for d in [&full, &empty] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
    }

    let t = Instant::now();
    let store = MetaStore::open(&full, &store_id)?;
    let dirs = populate(&store, args.entries, args.per_dir)?;
    let written = t.elapsed();
    println!(
        "persisted {} entries in {} directories ({:.1} MiB on disk) in {:.2?}",
        args.entries,
        dirs,
        du(&full) as f64 / (1 << 20) as f64,
        written
    );

    let mount_times = |cache: &Path, label: &str| -> anyhow::Result<Duration> {
        let mut times = vec![];
        for i in 0..args.runs {
            let path = base.path().join(format!("mnt-{label}-{i}"));
            let log = base.path().join(format!("{label}-{i}.log"));
            let (m, took) = Mount::start(&server, &path, cache, &log)?;
            times.push(took);
            drop(m);
        }
        let med = median(times.clone());
        println!(
            "mount time, {label:>34}: median {:>8.1?} (runs: {})",
            med,
            times.iter().map(|t| format!("{t:.1?}")).collect::<Vec<_>>().join(", ")
        );
        Ok(med)
    };
    let base_time = mount_times(&empty, "empty cache")?;
    let full_time = mount_times(&full, &format!("{} persisted entries", args.entries))?;
    println!(
        "mount time ratio (persisted / empty): {:.2}",
        full_time.as_secs_f64() / base_time.as_secs_f64()
    );

    // First accesses after the mount: every answer comes from a persisted record.
    let path = base.path().join("mnt-access");
    let (m, _) = Mount::start(&server, &path, &full, &base.path().join("access.log"))?;
    server.reset_counts();
    let t = Instant::now();
    let n = std::fs::read_dir(&path)?.count();
    let root_ls = t.elapsed();
    anyhow::ensure!(n == dirs, "root lists {n} directories, expected {dirs}");
    let sample = |d: usize| path.join(format!("dir{d:06}"));
    let t = Instant::now();
    let meta = std::fs::metadata(sample(dirs / 2).join("part-00000.parquet"))?;
    let first_stat = t.elapsed();
    anyhow::ensure!(meta.len() == 1_000);
    let t = Instant::now();
    let mut listed = 0;
    for e in std::fs::read_dir(sample(dirs - 1))? {
        std::fs::symlink_metadata(e?.path())?;
        listed += 1;
    }
    let dir_ls = t.elapsed();
    println!("first ls of the root ({dirs} directories): {root_ls:.1?}");
    println!("first stat of a file in an unlisted directory: {first_stat:.1?}");
    println!("first ls -l of one directory ({listed} files): {dir_ls:.1?}");
    if args.full_walk {
        let t = Instant::now();
        let mut total = 0usize;
        for d in 0..dirs {
            for e in std::fs::read_dir(sample(d))? {
                std::fs::symlink_metadata(e?.path())?;
                total += 1;
            }
        }
        println!(
            "ls -l of every directory ({total} entries): {:.2?} ({:.0} entries/s)",
            t.elapsed(),
            total as f64 / t.elapsed().as_secs_f64()
        );
    }
    let counts = server.counts();
    println!("S3 requests after the mount: {counts:?}");
    anyhow::ensure!(counts == Counts::default(), "persisted metadata must answer everything");
    drop(m);
    Ok(())
}
