//! End-to-end benchmark: the real `s3cachefs` binary mounted through /dev/fuse over the
//! in-process S3 test server (loopback, with a per-request latency like S3's first byte),
//! on a Spark-like workload. Prints one row per scenario and a Markdown table at the end.
//!
//!     cargo bench --bench e2e                      # full run (scale 1.0: ~0.5 GB of JARs, 1 GiB file)
//!     cargo bench --bench e2e -- --quick           # smoke test: scale 0.05
//!     cargo bench --bench e2e -- --latency-ms 20 --scale 1.0 --only warm
//!     cargo bench --bench e2e -- --quick --only shared   # the shared tier: 1, 8 and a 9th node
//!
//! Needs /dev/fuse and root (mounting, and `drop_caches` for the cold rows). See
//! docs/BENCHMARKS.md for what each row measures and the latest results.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use s3cachefs::metrics as m;
use s3cachefs_testserver::{Counts, Op, TestServer};

use support::daemon::{Daemon, Extra, Target};
use support::report::{MB, Row, markdown_table, median, percentile};
use support::sys::{self, CpuSnapshot, CpuUse};
use support::workload::{self, BUCKET, Object, Offsets, Workload};

/// Every scenario, in the order they run.
const SCENARIOS: [(&str, &str); 15] = [
    (
        "local",
        "read the JARs from a local directory (page cache dropped, then warm)",
    ),
    (
        "direct",
        "download the JARs one after another with aws-sdk-s3 directly (the reference of cold)",
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
    (
        "random",
        "random 64 KiB preads of the large file through a fresh mount, then the same again",
    ),
    (
        "columnar",
        "a Parquet-like read of 3 of 24 columns of a 256 MiB file through a fresh mount, twice",
    ),
    (
        "nodes1",
        "shared tier: 1 node (own empty --cache) reads the JARs, empty shared bucket",
    ),
    (
        "nodes8",
        "8 nodes (own empty --cache each) read the JARs at once: without, then with a shared bucket",
    ),
    (
        "node9",
        "after nodes8: a 9th node with an empty --cache reads the JARs through the filled shared bucket",
    ),
];

/// The shared bucket of the `nodes1` row, and of the `nodes8` and `node9` rows (empty before
/// `nodes8`). Both are mounted as `s3://BUCKET/cache/`.
const SHARED_BUCKET_1: &str = "bench-shared-1";
const SHARED_BUCKET_8: &str = "bench-shared-8";

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
    /// Run only these scenarios (comma-separated): local, direct, cold, warm, remount, readers4, mounts4,
    /// ls, ceiling, seq, random, columnar, nodes1, nodes8, node9, or `jars` (= local,direct,cold,warm,remount)
    /// or `shared` (= nodes1,nodes8,node9). warm/remount also run cold and local; cold also runs direct
    /// and seq also runs ceiling (their references); node9 also runs nodes8, nodes8 runs nodes1, and
    /// nodes1 runs cold.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Delay before every response head of the shared-tier buckets, in ms [default: --latency-ms].
    /// S3 Express One Zone answers faster than S3 Standard: try e.g. 5 against 20.
    #[arg(long)]
    shared_latency_ms: Option<u64>,
    /// Simulated nodes of the nodes8 rows (node9 is one more)
    #[arg(long, default_value_t = 8)]
    nodes: usize,
    /// Extra flag for the mounts of the shared-tier rows only (repeatable), e.g.
    /// --shared-arg=--shared-cache-lease-wait=5
    #[arg(long = "shared-arg", allow_hyphen_values = true)]
    shared_args: Vec<String>,
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
    /// Concurrent GETs of the ceiling client (and of the direct client, per large JAR)
    #[arg(long, default_value_t = 16)]
    ceiling_concurrency: usize,
    /// Bytes per ranged GET of the ceiling client, in MiB; the direct client fetches a JAR of at
    /// most this size with one GET, a larger one in ranged GETs of this size
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
    ensure!(args.nodes >= 1, "--nodes must be at least 1");
    let selected = select(&args.only)?;
    let on = |s: &str| selected.iter().any(|x| x == s);

    let t = Instant::now();
    let w = workload::build(
        scale,
        [
            "local", "direct", "cold", "warm", "remount", "readers4", "mounts4", "nodes1", "nodes8", "node9",
        ]
        .iter()
        .any(|s| on(s)),
        ["ceiling", "seq", "random"].iter().any(|s| on(s)),
        on("ls"),
        on("columnar"),
    );
    let server = TestServer::start();
    server.create_bucket(BUCKET);
    workload::seed(&server, &w);
    server.set_latency(latency);
    let shared_latency = args.shared_latency_ms.map_or(latency, Duration::from_millis);
    for bucket in [SHARED_BUCKET_1, SHARED_BUCKET_8] {
        server.create_bucket(bucket);
        server.set_bucket_latency(bucket, Some(shared_latency));
    }
    println!(
        "s3cachefs e2e benchmark: scale {scale}, {} ms per S3 request ({} ms for the shared-tier buckets), scenarios: {}",
        latency.as_millis(),
        shared_latency.as_millis(),
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
        shared_latency,
        args,
    };
    println!("temp dir: {}\n", b.root.display());

    let result = b.run(&on);
    // Report what was measured even if a later scenario failed.
    b.report(scale, latency, on("nodes1"))?;
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
            "jars" => want.extend(["local", "direct", "cold", "warm", "remount"].map(String::from)),
            "shared" => want.extend(["nodes1", "nodes8", "node9"].map(String::from)),
            n if SCENARIOS.iter().any(|s| s.0 == n) => want.push(n.to_string()),
            n => bail!(
                "unknown scenario {n:?}; known: {}, jars, shared, all",
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
    // In this order, so that each pulls in the next: node9 needs nodes8's filled bucket, nodes8
    // compares with nodes1, and nodes1 (and node9) with jars cold.
    if has(&want, "node9") {
        want.push("nodes8".into());
    }
    if has(&want, "nodes8") {
        want.push("nodes1".into());
    }
    if has(&want, "nodes1") {
        want.push("cold".into());
    }
    if has(&want, "cold") {
        want.push("direct".into());
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
    /// Latency of the shared-tier buckets.
    shared_latency: Duration,
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
        if on("direct") {
            self.direct()?;
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
        if on("columnar") {
            self.columnar()?;
        }
        if on("nodes1") {
            self.nodes1()?;
        }
        if on("nodes8") {
            self.nodes8()?;
        }
        if on("node9") {
            self.node9()?;
        }
        Ok(())
    }

    fn fresh_dir(&mut self, what: &str) -> PathBuf {
        self.seq += 1;
        self.root.join(format!("{what}-{}", self.seq))
    }

    fn spawn(&mut self, name: &str, cache: &Path) -> anyhow::Result<Daemon> {
        self.spawn_with(name, cache, &Extra::default())
    }

    fn spawn_with(&mut self, name: &str, cache: &Path, extra: &Extra) -> anyhow::Result<Daemon> {
        let mnt = self.fresh_dir(&format!("mnt-{name}"));
        let logs = self.root.join("logs");
        let id = format!("{name}-{}", self.seq);
        self.daemons_started += 1;
        Daemon::spawn(&self.target, &id, &mnt, cache, &logs, extra)
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
            // Of the source bucket: the shared-tier rows list their shared bucket's answers apart.
            for r in self
                .server
                .requests()
                .iter()
                .filter(|r| r.status >= 400 && r.bucket == BUCKET)
            {
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

    /// `jars direct`: the reference of `jars cold`. aws-sdk-s3 in the bench process lists the
    /// JARs' prefix and downloads the keys one after another, the way `aws s3 cp` fetches one
    /// key: one GET of the whole object up to --ceiling-part-mib, else ranged GETs of that size,
    /// --ceiling-concurrency at a time. Bytes are checked, as the cold read through a mount does.
    fn direct(&mut self) -> anyhow::Result<()> {
        let jars: Vec<(String, bytes::Bytes)> = self.w.jars.iter().map(|o| (o.key.clone(), o.data.clone())).collect();
        let total = self.w.jar_bytes();
        let part = self.args.ceiling_part_mib << 20;
        let concurrency = self.args.ceiling_concurrency.max(1);
        let endpoint = self.target.endpoint.clone();
        ensure!(
            jars.iter().all(|(k, _)| k.starts_with("jars/")),
            "every JAR is under jars/"
        );
        self.reset();
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let m = Measure::start(&[]);
        let split = rt.block_on(async move {
            let client = direct_client(&endpoint);
            // The sizes from a listing, as `aws s3 cp --recursive` learns them.
            let mut sizes = HashMap::new();
            let mut token = None;
            loop {
                let out = client
                    .list_objects_v2()
                    .bucket(BUCKET)
                    .prefix("jars/")
                    .set_continuation_token(token)
                    .send()
                    .await?;
                for o in out.contents() {
                    sizes.insert(o.key().unwrap_or_default().to_string(), o.size().unwrap_or(0) as u64);
                }
                match out.next_continuation_token() {
                    Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_string()),
                    _ => break,
                }
            }
            let mut split = Split::default();
            for (key, data) in &jars {
                ensure!(
                    sizes.get(key) == Some(&(data.len() as u64)),
                    "direct: {key} listed with another size"
                );
                let t = Instant::now();
                download(&client, key, data, part, concurrency).await?;
                split.add(data.len() as u64, t.elapsed(), part);
            }
            anyhow::Ok(split)
        })?;
        let (elapsed, cpu) = m.stop();
        self.refs.insert("jars direct", elapsed);
        let row = Row {
            name: "jars direct (aws-sdk-s3)".into(),
            page_cache: "n/a (no filesystem)".into(),
            elapsed,
            app_bytes: Some(total),
            needed_bytes: Some(total),
            counts: self.counts(),
            rss_kib: vec![],
            vs: None,
            cpu: Some(cpu),
            notes: format!(
                "aws-sdk-s3 in the bench process: LIST, then one key after another, one GET per key up to {} MiB, \
                 else {concurrency} concurrent ranged GETs of that size; {}; bytes verified",
                self.args.ceiling_part_mib,
                split.describe(part)
            ),
        };
        self.push(row);
        Ok(())
    }

    /// `jars cold`, `jars warm` (same mount) and `jars remount` (same cache, new daemon).
    fn jars(&mut self, warm: bool, remount: bool) -> anyhow::Result<()> {
        let total = self.w.jar_bytes();
        let cache = self.fresh_dir("cache");
        let d = self.mount("jars", &cache)?;
        let mnt = d.mnt().to_path_buf();
        let page_cache = self.cold_start();
        self.reset();
        let part = self.args.ceiling_part_mib << 20;
        let mut split = Split::default();
        let mut buf = vec![0u8; READ_BUF];
        let m = Measure::start(&[&d]);
        for o in &self.w.jars {
            let t = Instant::now();
            let first = read_file_timed(&mnt.join(&o.key), &o.data, true, &mut buf)?;
            split.add(o.data.len() as u64, t.elapsed(), part);
            if o.data.len() as u64 > part {
                split.first_read += first;
                println!(
                    "  {}: {:.1} MB, first byte after {:.1} ms, whole file {:.1} ms",
                    o.key,
                    o.data.len() as f64 / MB,
                    first.as_secs_f64() * 1e3,
                    t.elapsed().as_secs_f64() * 1e3
                );
            }
        }
        let (elapsed, cpu) = m.stop();
        self.refs.insert("jars cold", elapsed);
        let vs = [
            self.vs(elapsed, "local cold", "jars local"),
            self.time_vs(elapsed, "jars direct", "jars direct"),
        ];
        let vs: Vec<String> = vs.into_iter().flatten().collect();
        let row = Row {
            name: "jars cold".into(),
            page_cache,
            elapsed,
            app_bytes: Some(total),
            needed_bytes: Some(total),
            counts: self.counts(),
            rss_kib: d.peak_rss_kib().into_iter().collect(),
            vs: (!vs.is_empty()).then(|| vs.join(", ")),
            cpu: Some(cpu),
            notes: format!(
                "empty --cache dir; mount time excluded; {}; open to first byte of the larger files: {:.2} s in all; bytes verified",
                split.describe(part),
                split.first_read.as_secs_f64()
            ),
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
            let client = direct_client(&endpoint);
            download(&client, &key, &data, part, concurrency).await
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
            notes: format!(
                "fresh mount, empty --cache dir, 1 MiB read()s; daemon {:.2} CPU-s/GiB; bytes verified",
                cpu.daemons / (len as f64 / (1u64 << 30) as f64)
            ),
        };
        self.push(row);
        // The same file again right after its cold read (same mount: assembly and its
        // verification may still be running), then after a daemon restart on the same cache
        // (its first open reads through the daemon while the file is verified in the background).
        let mut d = Some(d);
        for (suffix, how) in [
            ("right after cold", "same mount, right after the cold read"),
            (
                "after restart",
                "new daemon, same --cache dir, first open since the restart",
            ),
        ] {
            if d.is_none() {
                d = Some(self.mount("seq", &cache)?);
            }
            let dm = d.as_ref().expect("mounted");
            let path = dm.mnt().join(&key);
            let page_cache = self.cold_start();
            self.reset();
            let m = Measure::start(&[dm]);
            read_file(&path, &self.big().data, true, &mut buf)?;
            let (elapsed, cpu) = m.stop();
            let row = Row {
                name: format!("{} sequential {suffix}", human(len)),
                page_cache,
                elapsed,
                app_bytes: Some(len),
                needed_bytes: Some(len),
                counts: self.counts(),
                rss_kib: dm.peak_rss_kib().into_iter().collect(),
                vs: None,
                cpu: Some(cpu),
                notes: format!("{how}; 1 MiB read()s; bytes verified"),
            };
            self.push(row);
            self.finish(d.take().expect("mounted"))?;
        }
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
        // The same reads twice on the same mount, the page cache dropped before each: the second
        // pass shows what the first one left in the daemon's tiers.
        for (suffix, how) in [
            ("", "fresh mount, empty cache"),
            (" again", "the same offsets again, same mount"),
        ] {
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
                name: format!("random {}KiB x{n}{suffix}", self.args.random_kib),
                page_cache,
                elapsed,
                app_bytes: Some(n as u64 * len),
                needed_bytes: Some(n as u64 * len),
                counts: self.counts(),
                rss_kib: d.peak_rss_kib().into_iter().collect(),
                vs: None,
                cpu: Some(cpu),
                notes: format!(
                    "per read: p50 {:.2} ms, p99 {:.2} ms, mean {:.2} ms, max {:.2} ms; uniform offsets in the {}; {how}; S3 bytes ÷ needed = fetched ÷ read",
                    ms(percentile(&lat, 0.5)),
                    ms(percentile(&lat, 0.99)),
                    ms(mean),
                    ms(lat[n - 1]),
                    human(data.len() as u64)
                ),
            };
            self.push(row);
        }
        self.finish(d)?;
        let _ = std::fs::remove_dir_all(&cache);
        Ok(())
    }

    /// A Spark-like query of 3 of 24 columns (`workload::columnar_reads`): one `pread` per range,
    /// in file order, through a fresh mount with an empty `--cache` dir; then the same reads
    /// again on the same mount, page cache dropped before each pass.
    fn columnar(&mut self) -> anyhow::Result<()> {
        let o = self.w.columnar.as_ref().expect("columnar file is part of the workload");
        let (key, data) = (o.key.clone(), o.data.clone());
        let reads = workload::columnar_reads(data.len() as u64);
        let needed: u64 = reads.iter().map(|r| r.1).sum();
        let cache = self.fresh_dir("cache");
        let d = self.mount("columnar", &cache)?;
        let mut buf = Vec::new();
        for pass in ["cold", "second pass"] {
            let page_cache = self.cold_start();
            let f = File::open(d.mnt().join(&key))?;
            self.reset();
            let m = Measure::start(&[&d]);
            for &(off, len) in &reads {
                buf.resize(len as usize, 0);
                f.read_exact_at(&mut buf, off)?;
                ensure!(
                    buf[..] == data[off as usize..(off + len) as usize],
                    "columnar read at {off}: bytes differ"
                );
            }
            let (elapsed, cpu) = m.stop();
            drop(f);
            let counts = self.counts();
            let row = Row {
                name: format!("columnar 3 of 24, {pass}"),
                page_cache,
                elapsed,
                app_bytes: Some(needed),
                needed_bytes: Some(needed),
                rss_kib: d.peak_rss_kib().into_iter().collect(),
                vs: None,
                cpu: Some(cpu),
                notes: format!(
                    "{} preads ({}, {:.3}× the file) of a {} file: footer, then 3 column chunks of 320 KiB per row group (8), \
                     gaps of 256 KiB and 700 KiB between them; S3 bytes ÷ file = {:.3}×; {}; bytes verified",
                    reads.len(),
                    human(needed),
                    needed as f64 / data.len() as f64,
                    human(data.len() as u64),
                    counts.get_bytes as f64 / data.len() as f64,
                    if pass == "cold" {
                        "fresh mount, empty --cache dir"
                    } else {
                        "same mount, same reads"
                    }
                ),
                counts,
            };
            self.push(row);
        }
        self.finish(d)?;
        let _ = std::fs::remove_dir_all(&cache);
        Ok(())
    }

    /// Mount flags of a node using `bucket` as its shared tier.
    fn shared_extra(&self, bucket: &str) -> Extra {
        let mut args = vec!["--shared-cache".to_string(), format!("s3://{bucket}/cache/")];
        args.extend(self.args.shared_args.iter().cloned());
        Extra { args, metrics: true }
    }

    /// Starts `n` simulated nodes: daemons with their own fresh `--cache` dir each, all started
    /// before any is waited for. Dropping the returned daemons unmounts them (also on error).
    fn start_nodes(&mut self, label: &str, n: usize, extra: &Extra) -> anyhow::Result<Vec<(Daemon, PathBuf)>> {
        let t = Instant::now();
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let cache = self.fresh_dir("cache");
            nodes.push((self.spawn_with(&format!("{label}-{i}"), &cache, extra)?, cache));
        }
        for (d, _) in &mut nodes {
            d.wait_mounted()?;
        }
        println!(
            "  {n} node(s) mounted in {:.0} ms (logs in {})",
            t.elapsed().as_secs_f64() * 1e3,
            self.root.join("logs").display()
        );
        Ok(nodes)
    }

    /// Unmounts the nodes and removes their caches.
    fn finish_nodes(&mut self, nodes: Vec<(Daemon, PathBuf)>) -> anyhow::Result<()> {
        let mut result = Ok(());
        for (d, cache) in nodes {
            let r = self.finish(d);
            let _ = std::fs::remove_dir_all(&cache);
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    /// One reader thread per node reads every JAR (bytes verified), all started at one barrier.
    /// Returns the row with the source bucket's counts; the caller adds the shared tier's notes.
    fn read_on_nodes(&mut self, name: String, nodes: &[(Daemon, PathBuf)]) -> anyhow::Result<Row> {
        let total = self.w.jar_bytes();
        let daemons: Vec<&Daemon> = nodes.iter().map(|(d, _)| d).collect();
        let roots: Vec<PathBuf> = daemons.iter().map(|d| d.mnt().to_path_buf()).collect();
        let page_cache = self.cold_start();
        self.reset();
        let (elapsed, cpu) = self.concurrent_jars(&roots, &daemons)?;
        let n = nodes.len();
        Ok(Row {
            name,
            page_cache,
            elapsed,
            app_bytes: Some(n as u64 * total),
            needed_bytes: Some(total),
            counts: self.server.counts_for(BUCKET),
            rss_kib: daemons.iter().filter_map(|d| d.peak_rss_kib()).collect(),
            vs: None,
            cpu: Some(cpu),
            notes: if n == 1 {
                "empty --cache dir; bytes verified".into()
            } else {
                format!(
                    "{n} daemons, each with its own empty --cache dir, one reader each, started at once; bytes verified; MB/s is the aggregate"
                )
            },
        })
    }

    /// E.g. "time 1.85× jars cold": the wall time of a row against a reference row's.
    fn time_vs(&self, elapsed: Duration, reference: &'static str, label: &str) -> Option<String> {
        self.refs
            .get(reference)
            .map(|r| format!("time {:.2}× {label}", elapsed.as_secs_f64() / r.as_secs_f64()))
    }

    /// Waits for the shared tier's background writes: until `bucket` holds a block object for
    /// every distinct block the source served since the last reset and no request reached it for
    /// 0.5 s (the leases' releases follow the writes), or no request reached it for 2 s (at most
    /// 120 s). Returns (block objects created, distinct source blocks).
    fn settle_shared(&self, bucket: &str) -> (usize, usize) {
        let t = Instant::now();
        let mut last = (self.server.counts_for(bucket).total(), Instant::now());
        loop {
            let log = self.server.requests();
            let source: HashSet<(&str, &str)> = log
                .iter()
                .filter(|r| r.bucket == BUCKET && r.op == Op::Get && (r.status == 200 || r.status == 206))
                .map(|r| (r.key.as_deref().unwrap_or(""), r.range.as_deref().unwrap_or("")))
                .collect();
            let blocks: HashSet<&str> = log
                .iter()
                .filter(|r| r.bucket == bucket && r.op == Op::Put && r.status == 200)
                .filter_map(|r| r.key.as_deref())
                .filter(|k| k.contains("/s3cachefs/v1/blocks/"))
                .collect();
            let total = self.server.counts_for(bucket).total();
            if total != last.0 {
                last = (total, Instant::now());
            }
            let quiet = last.1.elapsed();
            let covered = blocks.len() >= source.len();
            if (covered && quiet >= Duration::from_millis(500))
                || quiet >= Duration::from_secs(2)
                || t.elapsed() >= Duration::from_secs(120)
            {
                println!(
                    "  shared bucket {bucket}: {} block objects created for {} distinct source blocks (waited {:.1} s for the writes{})",
                    blocks.len(),
                    source.len(),
                    t.elapsed().as_secs_f64(),
                    if covered { "" } else { "; stopped: no more requests" }
                );
                return (blocks.len(), source.len());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Notes on the shared tier for a row: the requests `bucket` received since the last reset
    /// (by operation, split into block and lease objects, with their non-2xx answers), and the
    /// change of the daemons' shared-tier counters since `before`.
    fn shared_notes(&self, bucket: &str, daemons: &[&Daemon], before: &[Vec<(String, f64)>]) -> anyhow::Result<String> {
        // Requests by (operation, object kind), and their non-2xx answers by (operation, kind, status).
        let mut tally: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        let mut non_2xx: BTreeMap<(&str, &str, u16), u64> = BTreeMap::new();
        let log = self.server.requests();
        for r in log.iter().filter(|r| r.bucket == bucket) {
            let op = match r.op {
                Op::Get => "GET",
                Op::Put => "PUT",
                Op::Head => "HEAD",
                Op::Delete => "DELETE",
                Op::List => "LIST",
                Op::HeadBucket => "HEAD bucket",
                Op::Other => "other",
            };
            let key = r.key.as_deref().unwrap_or("");
            let kind = if key.contains("/s3cachefs/v1/blocks/") {
                "blocks"
            } else if key.contains("/s3cachefs/v1/leases/") {
                "leases"
            } else {
                "other"
            };
            *tally.entry((op, kind)).or_default() += 1;
            if !(200..300).contains(&r.status) {
                *non_2xx.entry((op, kind, r.status)).or_default() += 1;
            }
        }
        let c = self.server.counts_for(bucket);
        let mut parts = Vec::new();
        for (&(op, kind), n) in &tally {
            let answers: Vec<String> = non_2xx
                .range((op, kind, 0)..=(op, kind, u16::MAX))
                .map(|((_, _, s), k)| match s {
                    0 => format!("no answer ×{k}"),
                    s => format!("{s} ×{k}"),
                })
                .collect();
            let answers = if answers.is_empty() {
                String::new()
            } else {
                format!(" ({})", answers.join(", "))
            };
            parts.push(format!("{op} {kind} {n}{answers}"));
        }
        let requests = if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join(", ")
        };
        let mut deltas = Vec::new();
        for (label, metric) in [
            ("hits", m::SHARED_HITS),
            ("misses", m::SHARED_MISSES),
            ("lease waits", m::SHARED_LEASE_WAITS),
            ("lease timeouts", m::SHARED_LEASE_TIMEOUTS),
            ("writes", m::SHARED_WRITES),
            ("write drops", m::SHARED_WRITE_DROPS),
            ("invalid", m::SHARED_INVALID),
            ("errors", m::SHARED_ERRORS),
        ] {
            let name = m::counter_name(metric);
            let mut delta = 0.0;
            for (d, b) in daemons.iter().zip(before) {
                delta += m::sum(&d.metrics()?, &name, &[]) - m::sum(b, &name, &[]);
            }
            deltas.push(format!("{label} {delta:.0}"));
        }
        Ok(format!(
            "shared bucket: {} requests, {:.1} MB of GET bodies: {requests}; daemons' shared tier: {}",
            c.total(),
            c.get_bytes as f64 / MB,
            deltas.join(", ")
        ))
    }

    fn metrics_of(daemons: &[&Daemon]) -> anyhow::Result<Vec<Vec<(String, f64)>>> {
        daemons.iter().map(|d| d.metrics()).collect()
    }

    /// `nodes1`: one node with the shared tier over an empty shared bucket: what the tier adds to a
    /// cold read (a lease, a miss and a write per block), and the reference for the 8-node rows.
    fn nodes1(&mut self) -> anyhow::Result<()> {
        let extra = self.shared_extra(SHARED_BUCKET_1);
        let nodes = self.start_nodes("nodes1", 1, &extra)?;
        let daemons: Vec<&Daemon> = nodes.iter().map(|(d, _)| d).collect();
        let before = Self::metrics_of(&daemons)?;
        let mut row = self.read_on_nodes("1 node, shared tier (empty)".into(), &nodes)?;
        self.refs.insert("nodes1", row.elapsed);
        row.vs = self.vs(row.elapsed, "jars cold", "jars cold");
        let (written, blocks) = self.settle_shared(SHARED_BUCKET_1);
        let shared = self.shared_notes(SHARED_BUCKET_1, &daemons, &before)?;
        row.notes = format!(
            "{}; {written} of {blocks} blocks written to the shared bucket; {shared}",
            row.notes
        );
        self.push(row);
        self.finish_nodes(nodes)
    }

    /// `nodes8`: `--nodes` simulated nodes cold-read the JARs at once, first without a shared
    /// tier (the baseline: every node fetches everything), then with one shared bucket. The
    /// bucket is left filled for `node9`.
    fn nodes8(&mut self) -> anyhow::Result<()> {
        let n = self.args.nodes;
        let nodes = self.start_nodes("nodes8-local", n, &Extra::default())?;
        let mut row = self.read_on_nodes(format!("{n} nodes, no shared tier"), &nodes)?;
        row.vs = self.time_vs(row.elapsed, "jars cold", "jars cold");
        row.notes = format!("{}; baseline: every node reads from the source", row.notes);
        self.push(row);
        self.finish_nodes(nodes)?;

        let extra = self.shared_extra(SHARED_BUCKET_8);
        let nodes = self.start_nodes("nodes8", n, &extra)?;
        let daemons: Vec<&Daemon> = nodes.iter().map(|(d, _)| d).collect();
        let before = Self::metrics_of(&daemons)?;
        let mut row = self.read_on_nodes(format!("{n} nodes, shared tier"), &nodes)?;
        row.vs = self.time_vs(row.elapsed, "nodes1", "1 node, shared tier");
        let (written, blocks) = self.settle_shared(SHARED_BUCKET_8);
        let shared = self.shared_notes(SHARED_BUCKET_8, &daemons, &before)?;
        row.notes = format!(
            "{}; one shared bucket, empty before; {written} of {blocks} blocks written to it; {shared}",
            row.notes
        );
        self.push(row);
        self.finish_nodes(nodes)
    }

    /// `node9`: after `nodes8` (its writes landed), one more node with an empty `--cache` reads
    /// the JARs: every block should come from the shared bucket, none from the source.
    fn node9(&mut self) -> anyhow::Result<()> {
        let extra = self.shared_extra(SHARED_BUCKET_8);
        let nodes = self.start_nodes("node9", 1, &extra)?;
        let daemons: Vec<&Daemon> = nodes.iter().map(|(d, _)| d).collect();
        let before = Self::metrics_of(&daemons)?;
        let mut row = self.read_on_nodes(format!("node {}, shared tier filled", self.args.nodes + 1), &nodes)?;
        row.vs = self.vs(row.elapsed, "jars cold", "jars cold");
        let one_node = self.vs(row.elapsed, "nodes1", "1 node (empty shared tier)");
        let (written, blocks) = self.settle_shared(SHARED_BUCKET_8);
        let shared = self.shared_notes(SHARED_BUCKET_8, &daemons, &before)?;
        row.notes = format!(
            "{}; the shared bucket as the {} nodes left it{}; {written} of {blocks} blocks read from the source written to it; {shared}",
            row.notes,
            self.args.nodes,
            one_node.map_or(String::new(), |v| format!("; {v}")),
        );
        self.push(row);
        self.finish_nodes(nodes)
    }

    fn report(&self, scale: f64, latency: Duration, shared: bool) -> anyhow::Result<()> {
        let mut s = String::new();
        use std::fmt::Write as _;
        let shared_latency = if shared {
            format!(", {} ms per shared-bucket request", self.shared_latency.as_millis())
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "\n## Results (scale {scale}, {} ms per S3 request{shared_latency})\n",
            latency.as_millis()
        );
        s.push_str(&markdown_table(&self.rows));
        let _ = writeln!(
            s,
            "\nMB = 10^6 bytes. Times exclude mounting. \"S3 bytes ÷ needed\" = GetObject body bytes ÷ distinct bytes the scenario needs. \
             Peak RSS is VmHWM of the daemon(s) read just before unmounting (since daemon start)."
        );
        if shared {
            let _ = writeln!(
                s,
                "\nShared-tier rows: LIST/HEAD/GET, S3 GET (MB) and \"S3 bytes ÷ needed\" count the source bucket only; \
                 the notes give the shared bucket's requests (blocks and leases, with the non-2xx answers, including the \
                 writes that finished after the read) and the daemons' shared_cache_* counters."
            );
        }
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

/// Time spent on the JARs fetched with one GET by the direct client (at most `part` bytes) and
/// on the larger ones, per reader.
#[derive(Default)]
struct Split {
    small: (usize, Duration),
    large: (usize, Duration),
    /// From `open` to the first byte of each larger file, summed (cold reads through a mount).
    first_read: Duration,
}

impl Split {
    fn add(&mut self, size: u64, took: Duration, part: u64) {
        let class = if size <= part { &mut self.small } else { &mut self.large };
        class.0 += 1;
        class.1 += took;
    }

    fn describe(&self, part: u64) -> String {
        format!(
            "{} files ≤ {} MiB: {:.2} s, {} larger: {:.2} s",
            self.small.0,
            part >> 20,
            self.small.1.as_secs_f64(),
            self.large.0,
            self.large.1.as_secs_f64()
        )
    }
}

/// An aws-sdk-s3 client of the test server for the direct rows (`ceiling`, `jars direct`).
fn direct_client(endpoint: &str) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("AKIDTESTKEY", "test-secret-key", None, None, "bench"))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Downloads `key` the way `aws s3 cp` does: one GET of the whole object when it is at most
/// `part` bytes, else ranged GETs of `part` bytes, `concurrency` at a time. Checks the bytes
/// against `data`.
async fn download(
    client: &aws_sdk_s3::Client,
    key: &str,
    data: &bytes::Bytes,
    part: u64,
    concurrency: usize,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let size = data.len() as u64;
    if size <= part {
        let resp = client.get_object().bucket(BUCKET).key(key).send().await?;
        let body = resp.body.collect().await?.into_bytes();
        ensure!(body == *data, "direct: bytes of {key} differ");
        return Ok(());
    }
    let results: Vec<anyhow::Result<()>> = futures::stream::iter((0..size.div_ceil(part)).map(|i| async move {
        let start = i * part;
        let end = (start + part).min(size);
        let resp = client
            .get_object()
            .bucket(BUCKET)
            .key(key)
            .range(format!("bytes={start}-{}", end - 1))
            .send()
            .await?;
        let body = resp.body.collect().await?.into_bytes();
        ensure!(
            body[..] == data[start as usize..end as usize],
            "{key}: bytes differ at {start}"
        );
        Ok(())
    }))
    .buffer_unordered(concurrency)
    .collect()
    .await;
    results.into_iter().collect()
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
    read_file_timed(path, expect, verify, buf).map(|_| expect.len() as u64)
}

/// [`read_file`], returning the time from before `open` to the end of the first read().
fn read_file_timed(path: &Path, expect: &[u8], verify: bool, buf: &mut [u8]) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut first = None;
    let mut f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut off = 0usize;
    loop {
        let n = f
            .read(buf)
            .with_context(|| format!("read {} at {off}", path.display()))?;
        first.get_or_insert_with(|| t.elapsed());
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
    Ok(first.unwrap_or_default())
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
