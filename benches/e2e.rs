//! End-to-end benchmark: the real `s3cachefs` binary mounted through /dev/fuse over the
//! in-process S3 test server (loopback, with a per-request latency like S3's first byte),
//! on a Spark-like workload. Prints one row per scenario and a Markdown table at the end.
//!
//!     cargo bench --bench e2e                      # full run (scale 1.0: ~0.5 GB of JARs, 1 GiB file)
//!     cargo bench --bench e2e -- --quick           # smoke test: scale 0.05
//!     cargo bench --bench e2e -- --latency-ms 20 --scale 1.0 --only warm
//!
//! Needs /dev/fuse and root (mounting, and `drop_caches` for the cold rows). See
//! docs/BENCHMARKS.md for what each row measures and the latest results.

mod support;

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use s3cachefs_testserver::{Counts, TestServer};

use support::daemon::{Daemon, Target};
use support::report::{MB, Row, markdown_table, median, percentile};
use support::sys::{self, CpuSnapshot, CpuUse};
use support::workload::{self, BUCKET, Object, Offsets, Workload};

/// Every scenario, in the order they run.
const SCENARIOS: [(&str, &str); 10] = [
    (
        "local",
        "read the JARs from a local directory (page cache dropped, then warm)",
    ),
    ("cold", "read the JARs through a fresh mount with an empty cache"),
    ("warm", "read the JARs again through the same mount"),
    ("remount", "unmount, mount again on the same cache, read the JARs"),
    ("readers4", "fresh cache: 4 threads read all JARs through one mount"),
    ("mounts4", "fresh cache: 4 daemons on one --cache dir, one reader each"),
    ("ls", "walk + lstat the small objects, cold then warm"),
    (
        "ceiling",
        "parallel ranged GETs of the large file with aws-sdk-s3 directly",
    ),
    (
        "seq",
        "read the large file sequentially through a fresh mount, empty cache",
    ),
    ("random", "random 64 KiB preads of the large file through a fresh mount"),
];

#[derive(Parser, Debug)]
#[command(
    name = "e2e",
    about = "End-to-end benchmark of s3cachefs over a local S3 test server"
)]
struct Args {
    /// Delay before every S3 response head, in ms [default: 20]
    #[arg(long)]
    latency_ms: Option<u64>,
    /// Size factor of the workload (JARs and the large file; small-object count has a floor of 1000) [default: 1.0]
    #[arg(long)]
    scale: Option<f64>,
    /// Smoke-test preset: scale 0.05, latency 20 ms (explicit --scale/--latency-ms win)
    #[arg(long)]
    quick: bool,
    /// Run only these scenarios (comma-separated): local, cold, warm, remount, readers4, mounts4, ls,
    /// ceiling, seq, random, or `jars` (= local,cold,warm,remount). warm/remount also run cold and local;
    /// seq also runs ceiling (its reference).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Directory for the mounts, caches and the local copy [default: the system temp dir]
    #[arg(long)]
    tmpdir: Option<PathBuf>,
    /// Never drop the page cache (rows then say "not dropped")
    #[arg(long)]
    no_drop_caches: bool,
    /// Passes of the warm rows (jars warm, jars local warm); the median is reported
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Number of random reads
    #[arg(long, default_value_t = 200)]
    random_reads: usize,
    /// Bytes per random read, in KiB
    #[arg(long, default_value_t = 64)]
    random_kib: u64,
    /// Concurrent GETs of the ceiling client
    #[arg(long, default_value_t = 16)]
    ceiling_concurrency: usize,
    /// Bytes per ranged GET of the ceiling client, in MiB
    #[arg(long, default_value_t = 8)]
    ceiling_part_mib: u64,
    /// Extra flag for every `s3cachefs mount` (repeatable), e.g. --mount-arg=--block-size=8MiB
    #[arg(long = "mount-arg", allow_hyphen_values = true)]
    mount_args: Vec<String>,
    /// Also write the report (Markdown) to this file
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the temporary directory (caches, daemon logs) and print its path
    #[arg(long)]
    keep: bool,
    /// Passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let scale = args.scale.unwrap_or(if args.quick { 0.05 } else { 1.0 });
    let latency = Duration::from_millis(args.latency_ms.unwrap_or(20));
    ensure!(scale > 0.0 && scale.is_finite(), "--scale must be positive");
    ensure!(args.repeat >= 1, "--repeat must be at least 1");
    let selected = select(&args.only)?;
    let on = |s: &str| selected.iter().any(|x| x == s);

    let t = Instant::now();
    let w = workload::build(
        scale,
        ["local", "cold", "warm", "remount", "readers4", "mounts4"]
            .iter()
            .any(|s| on(s)),
        ["ceiling", "seq", "random"].iter().any(|s| on(s)),
        on("ls"),
    );
    let server = TestServer::start();
    server.create_bucket(BUCKET);
    workload::seed(&server, &w);
    server.set_latency(latency);
    println!(
        "s3cachefs e2e benchmark: scale {scale}, {} ms per S3 request, scenarios: {}",
        latency.as_millis(),
        selected.join(", ")
    );
    println!(
        "workload: {} JARs ({:.1} MB), large file {:.1} MB, {} small objects; generated and seeded in {:.1} s",
        w.jars.len(),
        w.jar_bytes() as f64 / MB,
        w.big.as_ref().map_or(0.0, |b| b.data.len() as f64 / MB),
        w.small.len(),
        t.elapsed().as_secs_f64()
    );

    let tmp_parent = args.tmpdir.clone().unwrap_or_else(std::env::temp_dir);
    let root = tempfile::Builder::new()
        .prefix("s3cachefs-bench")
        .tempdir_in(&tmp_parent)
        .with_context(|| format!("cannot create a temp dir in {}", tmp_parent.display()))?;
    let mut b = Bench {
        target: Target {
            endpoint: server.endpoint(),
            bucket: BUCKET.into(),
            extra: args.mount_args.clone(),
        },
        server,
        root: root.path().to_path_buf(),
        w,
        rows: Vec::new(),
        refs: HashMap::new(),
        problems: Vec::new(),
        seq: 0,
        daemons_started: 0,
        load_start: sys::loadavg(),
        local_dir: None,
        args,
    };
    println!("temp dir: {}\n", b.root.display());

    let result = b.run(&on);
    // Report what was measured even if a later scenario failed.
    b.report(scale, latency)?;
    if b.args.keep {
        let kept = root.keep();
        println!("kept {}", kept.display());
    }
    result
}

/// Resolves `--only` (names, aliases, dependencies) into scenario names in run order.
fn select(only: &[String]) -> anyhow::Result<Vec<String>> {
    let mut want: Vec<String> = Vec::new();
    for name in only.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        match name {
            "all" => want.extend(SCENARIOS.iter().map(|s| s.0.to_string())),
            "jars" => want.extend(["local", "cold", "warm", "remount"].map(String::from)),
            n if SCENARIOS.iter().any(|s| s.0 == n) => want.push(n.to_string()),
            n => bail!(
                "unknown scenario {n:?}; known: {}, jars, all",
                SCENARIOS.map(|s| s.0).join(", ")
            ),
        }
    }
    if want.is_empty() {
        want.extend(SCENARIOS.iter().map(|s| s.0.to_string()));
    }
    let has = |w: &Vec<String>, s: &str| w.iter().any(|x| x == s);
    if has(&want, "warm") || has(&want, "remount") {
        want.extend(["cold", "local"].map(String::from));
    }
    if has(&want, "seq") {
        want.push("ceiling".into());
    }
    Ok(SCENARIOS
        .iter()
        .map(|s| s.0.to_string())
        .filter(|s| has(&want, s))
        .collect())
}

struct Bench {
    args: Args,
    server: TestServer,
    target: Target,
    root: PathBuf,
    w: Workload,
    rows: Vec<Row>,
    /// Reference throughputs (elapsed for the same bytes) by name.
    refs: HashMap<&'static str, Duration>,
    /// (daemon name, WARN/ERROR lines of its log).
    problems: Vec<(String, Vec<String>)>,
    seq: usize,
    daemons_started: usize,
    load_start: String,
    /// The local copy of the JARs, once written.
    local_dir: Option<PathBuf>,
}

/// Result of repeated warm passes over one root.
struct Warm {
    median: Duration,
    /// Per pass.
    cpu: CpuUse,
    /// Median time to only open and close every file.
    open_close: Duration,
}

/// Read buffer of every sequential reader (local and mounted alike).
const READ_BUF: usize = 1 << 20;

/// Wall time and CPU time of the timed part of a row.
struct Measure {
    t: Instant,
    cpu: CpuSnapshot,
    pids: Vec<u32>,
}

impl Measure {
    fn start(daemons: &[&Daemon]) -> Measure {
        let pids: Vec<u32> = daemons.iter().filter_map(|d| d.pid()).collect();
        let cpu = CpuSnapshot::take(&pids);
        Measure {
            t: Instant::now(),
            cpu,
            pids,
        }
    }

    fn stop(&self) -> (Duration, CpuUse) {
        let elapsed = self.t.elapsed();
        (elapsed, self.cpu.until(&CpuSnapshot::take(&self.pids)))
    }
}

/// CPU use per pass of a repeated row.
fn per_pass(c: CpuUse, passes: usize) -> CpuUse {
    let n = passes as f64;
    CpuUse {
        daemons: c.daemons / n,
        bench: c.bench / n,
        other: c.other / n,
    }
}

impl Bench {
    fn run(&mut self, on: &dyn Fn(&str) -> bool) -> anyhow::Result<()> {
        if on("local") {
            self.local(on("warm"))?;
        }
        if on("cold") {
            self.jars(on("warm"), on("remount"))?;
        }
        if on("readers4") {
            self.readers4()?;
        }
        if on("mounts4") {
            self.mounts4()?;
        }
        if on("ls") {
            self.ls()?;
        }
        if on("ceiling") {
            self.ceiling()?;
        }
        if on("seq") {
            self.seq()?;
        }
        if on("random") {
            self.random()?;
        }
        Ok(())
    }

    fn fresh_dir(&mut self, what: &str) -> PathBuf {
        self.seq += 1;
        self.root.join(format!("{what}-{}", self.seq))
    }

    fn spawn(&mut self, name: &str, cache: &Path) -> anyhow::Result<Daemon> {
        let mnt = self.fresh_dir(&format!("mnt-{name}"));
        let logs = self.root.join("logs");
        let id = format!("{name}-{}", self.seq);
        self.daemons_started += 1;
        Daemon::spawn(&self.target, &id, &mnt, cache, &logs)
    }

    /// Starts a daemon and waits for its mount.
    fn mount(&mut self, name: &str, cache: &Path) -> anyhow::Result<Daemon> {
        let t = Instant::now();
        let mut d = self.spawn(name, cache)?;
        d.wait_mounted()?;
        println!(
            "  mounted {} in {:.0} ms (log {})",
            d.name,
            t.elapsed().as_secs_f64() * 1e3,
            d.log_path().display()
        );
        Ok(d)
    }

    /// Records the daemon's log problems, then unmounts it.
    fn finish(&mut self, d: Daemon) -> anyhow::Result<()> {
        let problems = d.problems();
        let name = d.name.clone();
        let r = d.unmount();
        // The daemon may log while unmounting, too.
        let mut problems = problems;
        if let Err(e) = &r {
            problems.push(format!("bench: {e}"));
        }
        if !problems.is_empty() {
            self.problems.push((name, problems));
        }
        r
    }

    /// Drops the page cache (unless told not to); returns the "page cache before" cell.
    fn cold_start(&self) -> String {
        if self.args.no_drop_caches {
            "not dropped (--no-drop-caches)".into()
        } else if sys::drop_caches() {
            "dropped".into()
        } else {
            "not dropped (no permission)".into()
        }
    }

    fn reset(&self) {
        self.server.reset_counts();
    }

    fn counts(&self) -> Counts {
        self.server.counts()
    }

    fn vs(&self, elapsed: Duration, reference: &'static str, label: &str) -> Option<String> {
        self.refs
            .get(reference)
            .map(|r| format!("{:.2}× {label}", r.as_secs_f64() / elapsed.as_secs_f64()))
    }

    fn push(&mut self, mut row: Row) {
        if row.counts.errors > 0 {
            // Which requests failed, e.g. "S3 errors: HEAD 404 ×2" (HEADs of directory names).
            let mut groups: Vec<(String, usize)> = Vec::new();
            for r in self.server.requests().iter().filter(|r| r.status >= 400) {
                let g = format!("{:?} {}", r.op, r.status).to_uppercase();
                match groups.iter_mut().find(|(k, _)| *k == g) {
                    Some((_, n)) => *n += 1,
                    None => groups.push((g, 1)),
                }
            }
            let list: Vec<String> = groups.iter().map(|(g, n)| format!("{g} ×{n}")).collect();
            let sep = if row.notes.is_empty() { "" } else { "; " };
            row.notes = format!("{}{sep}S3 error responses: {}", row.notes, list.join(", "));
        }
        println!("{}", row.line());
        self.rows.push(row);
    }

    /// `jars local`: the JARs written to a local directory on the same disk as the caches,
    /// read with the page cache dropped, then warm (median of --repeat passes).
    fn local(&mut self, with_warm_mount: bool) -> anyhow::Result<()> {
        let dir = self.root.join("local");
        for o in &self.w.jars {
            let p = dir.join(&o.key);
            std::fs::create_dir_all(p.parent().unwrap())?;
            let mut f = File::create(&p)?;
            std::io::Write::write_all(&mut f, &o.data)?;
            f.sync_all()?;
        }
        let total = self.w.jar_bytes();
        let page_cache = self.cold_start();
        self.reset();
        let m = Measure::start(&[]);
        read_tree(&dir, &self.w.jars, false)?;
        let (cold, cpu) = m.stop();
        self.refs.insert("local cold", cold);
        self.push(Row {
            name: "jars local".into(),
            page_cache,
            elapsed: cold,
            app_bytes: Some(total),
            needed_bytes: None,
            counts: self.counts(),
            rss_kib: vec![],
            vs: None,
            cpu: Some(cpu),
            notes: "local directory, same disk as the caches".into(),
        });
        self.local_dir = Some(dir.clone());
        if !with_warm_mount {
            let r = self.warm_passes(&[(dir.as_path(), &[])])?;
            self.push_local_warm(&r[0], total, false);
        }
        Ok(())
    }

    fn push_local_warm(&mut self, r: &Warm, total: u64, interleaved: bool) {
        self.refs.insert("local warm", r.median);
        let how = if interleaved {
            ", interleaved with the jars warm passes"
        } else {
            ""
        };
        self.push(Row {
            name: "jars local (warm)".into(),
            page_cache: "warm".into(),
            elapsed: r.median,
            app_bytes: Some(total),
            needed_bytes: None,
            counts: Counts::default(),
            rss_kib: vec![],
            vs: None,
            cpu: Some(r.cpu),
            notes: format!(
                "median of {} passes{how}; open+close only: {:.1} ms",
                self.args.repeat,
                r.open_close.as_secs_f64() * 1e3
            ),
        });
    }

    /// `--repeat` warm passes over each root in turn (interleaved, so that a change in machine
    /// load affects all of them alike), then as many passes that only open and close each file.
    fn warm_passes(&self, roots: &[(&Path, &[&Daemon])]) -> anyhow::Result<Vec<Warm>> {
        let mut times = vec![Vec::new(); roots.len()];
        let mut cpu = vec![CpuUse::default(); roots.len()];
        let mut open_close = vec![Vec::new(); roots.len()];
        for _ in 0..self.args.repeat {
            for (i, (root, daemons)) in roots.iter().enumerate() {
                let m = Measure::start(daemons);
                read_tree(root, &self.w.jars, false)?;
                let (t, c) = m.stop();
                times[i].push(t);
                cpu[i] = cpu[i].plus(c);
            }
        }
        for _ in 0..self.args.repeat {
            for (i, (root, _)) in roots.iter().enumerate() {
                let t = Instant::now();
                for o in &self.w.jars {
                    drop(File::open(root.join(&o.key))?);
                }
                open_close[i].push(t.elapsed());
            }
        }
        Ok((0..roots.len())
            .map(|i| Warm {
                median: median(times[i].clone()),
                cpu: per_pass(cpu[i], self.args.repeat),
                open_close: median(open_close[i].clone()),
            })
            .collect())
    }

    /// `jars cold`, `jars warm` (same mount) and `jars remount` (same cache, new daemon).
    fn jars(&mut self, warm: bool, remount: bool) -> anyhow::Result<()> {
        let total = self.w.jar_bytes();
        let cache = self.fresh_dir("cache");
        let d = self.mount("jars", &cache)?;
        let mnt = d.mnt().to_path_buf();
        let page_cache = self.cold_start();
        self.reset();
        let m = Measure::start(&[&d]);
        read_tree(&mnt, &self.w.jars, true)?;
        let (elapsed, cpu) = m.stop();
        let row = Row {
            name: "jars cold".into(),
            page_cache,
            elapsed,
            app_bytes: Some(total),
            needed_bytes: Some(total),
            counts: self.counts(),
            rss_kib: d.peak_rss_kib().into_iter().collect(),
            vs: self.vs(elapsed, "local cold", "jars local"),
            cpu: Some(cpu),
            notes: "empty --cache dir; mount time excluded; bytes verified".into(),
        };
        self.push(row);

        if warm {
            self.reset();
            let local = self.local_dir.clone();
            let mut roots: Vec<(&Path, &[&Daemon])> = Vec::new();
            let with_d: [&Daemon; 1] = [&d];
            if let Some(l) = &local {
                roots.push((l.as_path(), &[]));
            }
            roots.push((mnt.as_path(), &with_d));
            let r = self.warm_passes(&roots)?;
            let counts = self.counts();
            if local.is_some() {
                self.push_local_warm(&r[0], total, true);
            }
            let w = r.last().expect("mount pass");
            let row = Row {
                name: "jars warm".into(),
                page_cache: "warm (same mount)".into(),
                elapsed: w.median,
                app_bytes: Some(total),
                needed_bytes: Some(total),
                counts,
                rss_kib: d.peak_rss_kib().into_iter().collect(),
                vs: self.vs(w.median, "local warm", "jars local (warm)"),
                cpu: Some(w.cpu),
                notes: format!(
                    "median of {} passes; S3 counts summed over all passes; open+close only: {:.1} ms",
                    self.args.repeat,
                    w.open_close.as_secs_f64() * 1e3
                ),
            };
            self.push(row);
        }
        self.finish(d)?;

        if remount {
            let d = self.mount("jars-remount", &cache)?;
            let mnt = d.mnt().to_path_buf();
            let page_cache = self.cold_start();
            self.reset();
            let m = Measure::start(&[&d]);
            read_tree(&mnt, &self.w.jars, false)?;
            let (elapsed, cpu) = m.stop();
            let counts = self.counts();
            // Verified after the timed pass, so the comparison with the local read is fair.
            read_tree(&mnt, &self.w.jars, true)?;
            let row = Row {
                name: "jars remount".into(),
                page_cache,
                elapsed,
                app_bytes: Some(total),
                needed_bytes: Some(total),
                counts,
                rss_kib: d.peak_rss_kib().into_iter().collect(),
                vs: self.vs(elapsed, "local cold", "jars local"),
                cpu: Some(cpu),
                notes: "new daemon, same --cache dir; mount time excluded; verified afterwards".into(),
            };
            self.push(row);
            self.finish(d)?;
        }
        let _ = std::fs::remove_dir_all(&cache);
        Ok(())
    }

    /// Runs `readers` threads, each reading all JARs under its root, started together.
    fn concurrent_jars(&self, roots: &[PathBuf], daemons: &[&Daemon]) -> anyhow::Result<(Duration, CpuUse)> {
        let barrier = Barrier::new(roots.len() + 1);
        let jars = &self.w.jars;
        std::thread::scope(|s| {
            let handles: Vec<_> = roots
                .iter()
                .map(|root| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        read_tree(root, jars, true)
                    })
                })
                .collect();
            let m = Measure::start(daemons);
            barrier.wait();
            for h in handles {
                h.join().expect("reader thread panicked")?;
            }
            Ok(m.stop())
        })
    }

    fn readers4(&mut self) -> anyhow::Result<()> {
        let total = self.w.jar_bytes();
        let cache = self.fresh_dir("cache");
        let d = self.mount("readers4", &cache)?;
        let roots = vec![d.mnt().to_path_buf(); 4];
        let page_cache = self.cold_start();
        self.reset();
        let (elapsed, cpu) = self.concurrent_jars(&roots, &[&d])?;
        let row = Row {
            name: "4 readers 1 mount".into(),
            page_cache,
            elapsed,
            app_bytes: Some(4 * total),
            needed_bytes: Some(total),
            counts: self.counts(),
            rss_kib: d.peak_rss_kib().into_iter().collect(),
            vs: None,
            cpu: Some(cpu),
            notes: "empty --cache dir; 4 threads, same file order; MB/s is the aggregate".into(),
        };
        self.push(row);
        self.finish(d)?;
        let _ = std::fs::remove_dir_all(&cache);
        Ok(())
    }

    fn mounts4(&mut self) -> anyhow::Result<()> {
        let total = self.w.jar_bytes();
        let cache = self.fresh_dir("cache");
        // Started together: spawn all four, then wait for each mount.
        let mut daemons = Vec::new();
        let t = Instant::now();
        for i in 0..4 {
            daemons.push(self.spawn(&format!("mounts4-{i}"), &cache)?);
        }
        for d in &mut daemons {
            d.wait_mounted()?;
        }
        println!("  4 daemons mounted in {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
        let roots: Vec<PathBuf> = daemons.iter().map(|d| d.mnt().to_path_buf()).collect();
        let page_cache = self.cold_start();
        self.reset();
        let (elapsed, cpu) = self.concurrent_jars(&roots, &daemons.iter().collect::<Vec<_>>())?;
        let row = Row {
            name: "4 mounts shared cache".into(),
            page_cache,
            elapsed,
            app_bytes: Some(4 * total),
            needed_bytes: Some(total),
            counts: self.counts(),
            rss_kib: daemons.iter().filter_map(|d| d.peak_rss_kib()).collect(),
            vs: None,
            cpu: Some(cpu),
            notes: "4 daemons, one empty --cache dir, one reader each; MB/s is the aggregate".into(),
        };
        self.push(row);
        for d in daemons {
            self.finish(d)?;
        }
        let _ = std::fs::remove_dir_all(&cache);
        Ok(())
    }

    fn ls(&mut self) -> anyhow::Result<()> {
        let cache = self.fresh_dir("cache");
        let d = self.mount("ls", &cache)?;
        let dir = d.mnt().join("small");
        for (i, name) in ["ls -lR cold", "ls -lR warm"].into_iter().enumerate() {
            let page_cache = if i == 0 {
                self.cold_start()
            } else {
                "warm (same mount)".into()
            };
            self.reset();
            let m = Measure::start(&[&d]);
            let (entries, files, bytes) = walk(&dir)?;
            let (elapsed, cpu) = m.stop();
            let want: u64 = self.w.small.iter().map(|o| o.data.len() as u64).sum();
            ensure!(
                files == self.w.small.len() && bytes == want,
                "{name}: saw {files} files / {bytes} bytes, expected {} / {want}",
                self.w.small.len()
            );
            let row = Row {
                name: name.into(),
                page_cache,
                elapsed,
                app_bytes: None,
                needed_bytes: None,
                counts: self.counts(),
                rss_kib: d.peak_rss_kib().into_iter().collect(),
                vs: None,
                cpu: Some(cpu),
                notes: format!(
                    "{entries} entries in {} dirs (readdir + lstat each), {:.0} entries/s",
                    workload::SMALL_DIRS,
                    entries as f64 / elapsed.as_secs_f64()
                ),
            };
            self.push(row);
        }
        self.finish(d)?;
        let _ = std::fs::remove_dir_all(&cache);
        Ok(())
    }

    fn big(&self) -> &Object {
        self.w.big.as_ref().expect("large file is part of the workload")
    }

    fn ceiling(&mut self) -> anyhow::Result<()> {
        let big = self.big();
        let (key, data) = (big.key.clone(), big.data.clone());
        let part = self.args.ceiling_part_mib << 20;
        let concurrency = self.args.ceiling_concurrency.max(1);
        let endpoint = self.target.endpoint.clone();
        self.reset();
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let m = Measure::start(&[]);
        rt.block_on(async move {
            use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
            use futures::StreamExt;
            let conf = aws_sdk_s3::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .endpoint_url(endpoint)
                .credentials_provider(Credentials::new("AKIDTESTKEY", "test-secret-key", None, None, "bench"))
                .force_path_style(true)
                .build();
            let client = aws_sdk_s3::Client::from_conf(conf);
            let size = data.len() as u64;
            let results: Vec<anyhow::Result<()>> = futures::stream::iter((0..size.div_ceil(part)).map(|i| {
                let (client, key, data) = (client.clone(), key.clone(), data.clone());
                async move {
                    let start = i * part;
                    let end = (start + part).min(size);
                    let resp = client
                        .get_object()
                        .bucket(BUCKET)
                        .key(&key)
                        .range(format!("bytes={start}-{}", end - 1))
                        .send()
                        .await?;
                    let body = resp.body.collect().await?.into_bytes();
                    ensure!(
                        body[..] == data[start as usize..end as usize],
                        "ceiling: bytes differ at {start}"
                    );
                    Ok(())
                }
            }))
            .buffer_unordered(concurrency)
            .collect()
            .await;
            for r in results {
                r?;
            }
            anyhow::Ok(())
        })?;
        let (elapsed, cpu) = m.stop();
        self.refs.insert("ceiling", elapsed);
        let bytes = self.big().data.len() as u64;
        let row = Row {
            name: "ceiling (parallel GETs)".into(),
            page_cache: "n/a (no filesystem)".into(),
            elapsed,
            app_bytes: Some(bytes),
            needed_bytes: Some(bytes),
            counts: self.counts(),
            rss_kib: vec![],
            vs: None,
            cpu: Some(cpu),
            notes: format!(
                "aws-sdk-s3 in the bench process, {concurrency} concurrent {} MiB ranged GETs; bytes verified",
                self.args.ceiling_part_mib
            ),
        };
        self.push(row);
        Ok(())
    }

    fn seq(&mut self) -> anyhow::Result<()> {
        let (key, len) = (self.big().key.clone(), self.big().data.len() as u64);
        let cache = self.fresh_dir("cache");
        let d = self.mount("seq", &cache)?;
        let path = d.mnt().join(&key);
        let page_cache = self.cold_start();
        self.reset();
        let mut buf = vec![0u8; READ_BUF];
        let m = Measure::start(&[&d]);
        read_file(&path, &self.big().data, true, &mut buf)?;
        let (elapsed, cpu) = m.stop();
        let row = Row {
            name: format!("{} sequential cold", human(len)),
            page_cache,
            elapsed,
            app_bytes: Some(len),
            needed_bytes: Some(len),
            counts: self.counts(),
            rss_kib: d.peak_rss_kib().into_iter().collect(),
            vs: self.vs(elapsed, "ceiling", "ceiling"),
            cpu: Some(cpu),
            notes: "fresh mount, empty --cache dir, 1 MiB read()s; bytes verified".into(),
        };
        self.push(row);
        self.finish(d)?;
        let _ = std::fs::remove_dir_all(&cache);
        Ok(())
    }

    fn random(&mut self) -> anyhow::Result<()> {
        let (key, data) = (self.big().key.clone(), self.big().data.clone());
        let len = self.args.random_kib << 10;
        ensure!(len > 0 && len <= data.len() as u64, "--random-kib out of range");
        let n = self.args.random_reads.max(1);
        let cache = self.fresh_dir("cache");
        let d = self.mount("random", &cache)?;
        let page_cache = self.cold_start();
        // Opened (lookup + open) before the timed part: the rows measure reads only.
        let f = File::open(d.mnt().join(&key))?;
        self.reset();
        let mut offsets = Offsets::new(0xBEEF);
        let mut buf = vec![0u8; len as usize];
        let mut lat = Vec::with_capacity(n);
        let m = Measure::start(&[&d]);
        for _ in 0..n {
            let off = offsets.below(data.len() as u64 - len + 1);
            let t = Instant::now();
            f.read_exact_at(&mut buf, off)?;
            lat.push(t.elapsed());
            ensure!(
                buf[..] == data[off as usize..(off + len) as usize],
                "random read at {off}: bytes differ"
            );
        }
        let (elapsed, cpu) = m.stop();
        drop(f);
        let mean = lat.iter().sum::<Duration>() / n as u32;
        lat.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let row = Row {
            name: format!("random {}KiB x{n}", self.args.random_kib),
            page_cache,
            elapsed,
            app_bytes: Some(n as u64 * len),
            needed_bytes: Some(n as u64 * len),
            counts: self.counts(),
            rss_kib: d.peak_rss_kib().into_iter().collect(),
            vs: None,
            cpu: Some(cpu),
            notes: format!(
                "per read: p50 {:.1} ms, p99 {:.1} ms, mean {:.1} ms, max {:.1} ms; uniform offsets in the {}; fresh mount, empty cache; S3 bytes ÷ needed = fetched ÷ read",
                ms(percentile(&lat, 0.5)),
                ms(percentile(&lat, 0.99)),
                ms(mean),
                ms(lat[n - 1]),
                human(data.len() as u64)
            ),
        };
        self.push(row);
        self.finish(d)?;
        let _ = std::fs::remove_dir_all(&cache);
        Ok(())
    }

    fn report(&self, scale: f64, latency: Duration) -> anyhow::Result<()> {
        let mut s = String::new();
        use std::fmt::Write as _;
        let _ = writeln!(
            s,
            "\n## Results (scale {scale}, {} ms per S3 request)\n",
            latency.as_millis()
        );
        s.push_str(&markdown_table(&self.rows));
        let _ = writeln!(
            s,
            "\nMB = 10^6 bytes. Times exclude mounting. \"S3 bytes ÷ needed\" = GetObject body bytes ÷ distinct bytes the scenario needs. \
             Peak RSS is VmHWM of the daemon(s) read just before unmounting (since daemon start)."
        );
        let _ = writeln!(s, "\n### Machine\n");
        for (k, v) in sys::machine_description(&self.root) {
            let _ = writeln!(s, "- {k}: {v}");
        }
        let _ = writeln!(
            s,
            "- load average (1/5/15 min): {} at start, {} at end",
            self.load_start,
            sys::loadavg()
        );
        let _ = writeln!(s, "\n### Daemon log warnings and errors\n");
        let daemons = self.daemons_started;
        // (message without timestamp, occurrences, daemons that logged it)
        let mut distinct: Vec<(String, usize, Vec<&str>)> = Vec::new();
        for (name, lines) in &self.problems {
            for l in lines {
                let msg = l
                    .split_once(' ')
                    .map_or(l.as_str(), |(_, rest)| rest.trim())
                    .to_string();
                match distinct.iter_mut().find(|(m, _, _)| *m == msg) {
                    Some((_, n, who)) => {
                        *n += 1;
                        if !who.contains(&name.as_str()) {
                            who.push(name);
                        }
                    }
                    None => distinct.push((msg, 1, vec![name])),
                }
            }
        }
        if distinct.is_empty() {
            let _ = writeln!(s, "none ({daemons} daemons)");
        }
        for (msg, n, who) in &distinct {
            let expected = if msg.contains("/nonexistent/aws-") {
                " — expected: the bench sets AWS_CONFIG_FILE/AWS_SHARED_CREDENTIALS_FILE=/nonexistent for hermetic runs"
            } else {
                ""
            };
            let _ = writeln!(s, "- `{msg}` ×{n}, in {} of {daemons} daemons{expected}", who.len());
        }
        println!("{s}");
        if let Some(out) = &self.args.out {
            std::fs::write(out, &s).with_context(|| format!("cannot write {}", out.display()))?;
            println!("report written to {}", out.display());
        }
        Ok(())
    }
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{}GiB", bytes >> 30)
    } else {
        format!("{:.0}MB", bytes as f64 / MB)
    }
}

/// Reads `path` to the end with `buf`-sized read()s; checks the length, and the bytes if `verify`.
fn read_file(path: &Path, expect: &[u8], verify: bool, buf: &mut [u8]) -> anyhow::Result<u64> {
    let mut f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut off = 0usize;
    loop {
        let n = f
            .read(buf)
            .with_context(|| format!("read {} at {off}", path.display()))?;
        if n == 0 {
            break;
        }
        ensure!(off + n <= expect.len(), "{} is longer than expected", path.display());
        if verify && buf[..n] != expect[off..off + n] {
            bail!("{}: bytes differ from S3 in [{off}, {})", path.display(), off + n);
        }
        off += n;
    }
    ensure!(
        off == expect.len(),
        "{}: read {off} bytes, expected {}",
        path.display(),
        expect.len()
    );
    Ok(off as u64)
}

/// Reads every object of `objects` under `root` once, in order.
fn read_tree(root: &Path, objects: &[Object], verify: bool) -> anyhow::Result<u64> {
    let mut buf = vec![0u8; READ_BUF];
    let mut total = 0;
    for o in objects {
        total += read_file(&root.join(&o.key), &o.data, verify, &mut buf)?;
    }
    Ok(total)
}

/// `ls -lR`: readdir every directory under `root` and lstat every entry.
/// Returns (entries, regular files, sum of file sizes).
fn walk(root: &Path) -> anyhow::Result<(usize, usize, u64)> {
    let (mut entries, mut files, mut bytes) = (0, 0, 0);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("readdir {}", dir.display()))? {
            let path = e?.path();
            let m = std::fs::symlink_metadata(&path).with_context(|| format!("lstat {}", path.display()))?;
            entries += 1;
            if m.is_dir() {
                stack.push(path);
            } else {
                files += 1;
                bytes += m.len();
            }
        }
    }
    Ok((entries, files, bytes))
}
