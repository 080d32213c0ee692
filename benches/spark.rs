//! A real Spark query through the mount: PySpark (`local[2]`, Java 17) reads 3 of the 24 columns
//! of a generated wide Parquet dataset from `file:///<mount>/...` (issue 12).
//!
//!     cargo bench --bench spark                        # ~100 MB dataset (scale 1)
//!     cargo bench --bench spark -- --scale 2.86        # the 286 MB dataset
//!     cargo bench --profile dev --bench spark -- --no-restart --keep
//!
//! `benches/spark/spark_bench.py` generates the dataset (pyarrow: row groups of 40,000 rows,
//! column chunks of 150-320 KB) and runs the query, one new JVM per run, so no Spark cache
//! survives between runs. This bench seeds the in-process S3 test server with the files, runs
//! the query on the local copy (page cache dropped), then through a fresh mount with an empty
//! cache (cold), again on the same mount (page cache dropped), and after a daemon restart on the
//! same cache. Per run: S3 requests, GET bytes ÷ dataset and ÷ the 3 columns' chunks (from the
//! Parquet footers), wall time, daemon CPU.
//!
//! Needs root and /dev/fuse (like benches/e2e.rs), python3 with pyspark and pyarrow, and java;
//! when one is missing it exits non-zero with the install command. Not run by `cargo test`.

#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use s3cachefs::metrics as m;
use s3cachefs_testserver::{Counts, Op, TestServer};

use support::daemon::{Daemon, Extra, Target};
use support::report::MB;
use support::sys::{self, CpuSnapshot};

const BUCKET: &str = "spark-bucket";
/// Where the dataset lives in the bucket (and under the mount).
const PREFIX: &str = "warehouse/wide";
/// The dataset's size at scale 1.
const SCALE_1_BYTES: f64 = 100e6;
const INSTALL: &str = "pip install pyspark pyarrow   (and Java 17: apt-get install openjdk-17-jre-headless)";

#[derive(Parser, Debug)]
#[command(
    name = "spark",
    about = "A PySpark query reading 3 of 24 Parquet columns through s3cachefs"
)]
struct Args {
    /// Dataset size factor: 1.0 is about 100 MB, 2.86 the 286 MB
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Delay before every S3 response head, in ms
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// Skip the third run (after a daemon restart on the same cache)
    #[arg(long)]
    no_restart: bool,
    /// Set the kernel read-ahead of each mount to this many KiB (its bdi's read_ahead_kb) after
    /// mounting [default: the kernel's choice, printed at each mount]
    #[arg(long)]
    read_ahead_kb: Option<u64>,
    /// Python interpreter with pyspark and pyarrow
    #[arg(long, default_value = "python3")]
    python: String,
    /// Extra flag for every `s3cachefs mount` (repeatable), e.g. --mount-arg=--max-prefetch-memory=4MiB
    #[arg(long = "mount-arg", allow_hyphen_values = true)]
    mount_args: Vec<String>,
    /// Directory for the dataset, mounts and caches [default: the system temp dir]
    #[arg(long)]
    tmpdir: Option<PathBuf>,
    /// Never drop the page cache (rows then say "not dropped")
    #[arg(long)]
    no_drop_caches: bool,
    /// Also write the report (Markdown) to this file
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the temporary directory (dataset, caches, daemon logs, S3 request logs) and print its path
    #[arg(long)]
    keep: bool,
    /// Passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    bench: bool,
}

/// `name value` lines printed by spark_bench.py.
struct Fields(BTreeMap<String, String>);

impl Fields {
    fn parse(out: &str) -> Fields {
        Fields(
            out.lines()
                .filter_map(|l| l.split_once(' '))
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
                .collect(),
        )
    }

    fn get(&self, k: &str) -> anyhow::Result<&str> {
        self.0
            .get(k)
            .map(String::as_str)
            .with_context(|| format!("spark_bench.py printed no {k:?}"))
    }

    fn num<T: std::str::FromStr>(&self, k: &str) -> anyhow::Result<T> {
        let v = self.get(k)?;
        v.parse()
            .map_err(|_| anyhow::anyhow!("spark_bench.py: {k} = {v:?} is not a number"))
    }
}

struct Dataset {
    dir: PathBuf,
    files: Vec<(String, u64)>,
    bytes: u64,
    query_chunk_bytes: u64,
    footer_bytes: u64,
    desc: String,
}

/// One query run.
struct Run {
    name: String,
    page_cache: String,
    /// Wall time of the whole `query` process (JVM start, session, query, stop).
    process: Duration,
    /// Wall time of the query alone (spark.read.parquet(...)...collect()), measured in the JVM.
    query: Duration,
    counts: Option<Counts>,
    /// GET sizes: (smallest, median, largest) in bytes.
    get_sizes: Option<(u64, u64, u64)>,
    daemon_cpu: Option<f64>,
    notes: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/spark/spark_bench.py")
}

/// Runs spark_bench.py with `args`; fails with its stderr (and the install command) if it fails.
fn python(args: &Args, sub: &[&str]) -> anyhow::Result<Fields> {
    let out = Command::new(&args.python)
        .arg(script())
        .args(sub)
        .output()
        .with_context(|| format!("cannot run {} (install Python 3, then: {INSTALL})", args.python))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "spark_bench.py {} exited with {}:\n{}",
            sub.join(" "),
            out.status,
            tail.join("\n")
        );
    }
    Ok(Fields::parse(&String::from_utf8_lossy(&out.stdout)))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.scale > 0.0 && args.scale.is_finite(), "--scale must be positive");
    let versions = python(&args, &["check"]).context("pyspark, pyarrow or java is missing")?;
    println!(
        "s3cachefs Spark benchmark: pyspark {}, {}, scale {} (~{:.0} MB), {} ms per S3 request",
        versions.get("pyspark")?,
        versions.get("java")?,
        args.scale,
        args.scale * SCALE_1_BYTES / MB,
        args.latency_ms
    );

    let tmp_parent = args.tmpdir.clone().unwrap_or_else(std::env::temp_dir);
    let root = tempfile::Builder::new()
        .prefix("s3cachefs-spark")
        .tempdir_in(&tmp_parent)
        .with_context(|| format!("cannot create a temp dir in {}", tmp_parent.display()))?;
    println!("temp dir: {}", root.path().display());
    let result = run(&args, root.path());
    if args.keep {
        println!("kept {}", root.keep().display());
    }
    result
}

fn run(args: &Args, root: &Path) -> anyhow::Result<()> {
    let load_start = sys::loadavg();
    let t = Instant::now();
    let ds = generate(args, root)?;
    println!("dataset: {} (generated in {:.1} s)", ds.desc, t.elapsed().as_secs_f64());

    let server = TestServer::start();
    server.create_bucket(BUCKET);
    for (name, _) in &ds.files {
        let data = std::fs::read(ds.dir.join(name))?;
        server.put(BUCKET, &format!("{PREFIX}/{name}"), data);
    }
    server.set_latency(Duration::from_millis(args.latency_ms));
    let target = Target {
        endpoint: server.endpoint(),
        bucket: BUCKET.into(),
        extra: args.mount_args.clone(),
    };

    let mut runs = Vec::new();
    let mut problems = Vec::new();
    // Local disk: the reference answer and time.
    let page_cache = cold_start(args);
    let (local, answer) = query(args, &ds.dir)?;
    runs.push(Run {
        name: "local disk".into(),
        page_cache,
        counts: None,
        get_sizes: None,
        daemon_cpu: None,
        notes: format!("answer: {answer}"),
        ..local
    });
    println!("{}", line(runs.last().expect("pushed"), &ds));

    let cache = root.join("cache");
    let logs = root.join("logs");
    let passes: &[(&str, bool)] = if args.no_restart {
        &[
            ("first run (fresh mount, empty cache)", false),
            ("second run (same mount)", false),
        ]
    } else {
        &[
            ("first run (fresh mount, empty cache)", false),
            ("second run (same mount)", false),
            ("third run (daemon restarted, same cache)", true),
        ]
    };
    let mut daemon: Option<Daemon> = None;
    let mut ra = 0;
    for (i, &(name, restart)) in passes.iter().enumerate() {
        if restart && let Some(d) = daemon.take() {
            problems.extend(d.problems());
            d.unmount()?;
        }
        if daemon.is_none() {
            let extra = Extra {
                args: Vec::new(),
                metrics: true,
            };
            let mut d = Daemon::spawn(
                &target,
                &format!("spark-{i}"),
                &root.join(format!("mnt-{i}")),
                &cache,
                &logs,
                &extra,
            )?;
            d.wait_mounted()?;
            ra = read_ahead(d.mnt(), args.read_ahead_kb)?;
            println!(
                "  mounted {} (log {}); kernel read-ahead {ra} KiB",
                d.name,
                d.log_path().display()
            );
            daemon = Some(d);
        }
        let d = daemon.as_ref().expect("mounted");
        let page_cache = cold_start(args);
        let before = d.metrics()?;
        let cpu = CpuSnapshot::take(&d.pid().into_iter().collect::<Vec<_>>());
        server.reset_counts();
        let (mut r, got) = query(args, &d.mnt().join(PREFIX))?;
        let daemon_cpu = cpu
            .until(&CpuSnapshot::take(&d.pid().into_iter().collect::<Vec<_>>()))
            .daemons;
        let counts = server.counts();
        let requests = server.requests();
        ensure!(
            got == answer,
            "{name}: the query through the mount answered {got:?}, on local disk {answer:?}"
        );
        let after = d.metrics()?;
        let gets: Vec<u64> = requests
            .iter()
            .filter(|q| q.op == Op::Get && q.bucket == BUCKET)
            .filter_map(|q| q.range.as_deref().and_then(range_len))
            .collect();
        if args.keep {
            let log: String = requests
                .iter()
                .map(|q| {
                    format!(
                        "{} {:?} {} {} {}\n",
                        q.seq,
                        q.op,
                        q.key.as_deref().unwrap_or("-"),
                        q.range.as_deref().unwrap_or("-"),
                        q.status
                    )
                })
                .collect();
            std::fs::write(root.join(format!("requests-{i}.txt")), log)?;
        }
        let delta = |family: &str, labels: &[&str]| {
            let name = counter(family);
            m::sum(&after, &name, labels) - m::sum(&before, &name, labels)
        };
        let read_bytes = delta(m::READ_BYTES, &[]);
        let fuse_reads = delta(m::FUSE_OPERATIONS, &["operation=\"read\""]);
        r.name = name.into();
        r.page_cache = page_cache;
        r.counts = Some(counts);
        r.get_sizes = sizes(gets);
        r.daemon_cpu = Some(daemon_cpu);
        r.notes = format!(
            "answer matches local; kernel read-ahead {ra} KiB; the kernel asked the daemon for {:.1} MB in {fuse_reads:.0} reads ({:.2}× the 3 columns' chunks)",
            read_bytes / MB,
            read_bytes / ds.query_chunk_bytes as f64
        );
        println!("{}", line(&r, &ds));
        runs.push(r);
    }
    if let Some(d) = daemon.take() {
        problems.extend(d.problems());
        d.unmount()?;
    }
    report(args, &ds, &runs, &problems, &load_start, root)
}

/// The kernel read-ahead of the mount at `mnt`, in KiB (set first to `set`, if given): the
/// `read_ahead_kb` of the FUSE connection's backing device, /sys/class/bdi/MAJOR:MINOR.
fn read_ahead(mnt: &Path, set: Option<u64>) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(mnt)?.dev();
    let path = PathBuf::from(format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    ));
    if let Some(kb) = set {
        std::fs::write(&path, kb.to_string()).with_context(|| format!("cannot set {}", path.display()))?;
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{}: {text:?} is not a number", path.display()))
}

fn cold_start(args: &Args) -> String {
    if args.no_drop_caches {
        "not dropped (--no-drop-caches)".into()
    } else if sys::drop_caches() {
        "dropped".into()
    } else {
        "not dropped (no permission)".into()
    }
}

/// Runs the query on `dir`; returns the run's times and the query's answer.
fn query(args: &Args, dir: &Path) -> anyhow::Result<(Run, String)> {
    let t = Instant::now();
    let f = python(args, &["query", &dir.to_string_lossy()])?;
    let process = t.elapsed();
    let answer = format!(
        "rows {}, sum_b {}, sum_c {}",
        f.get("rows")?,
        f.get("sum_b")?,
        f.get("sum_c")?
    );
    let run = Run {
        name: String::new(),
        page_cache: String::new(),
        process,
        query: Duration::from_secs_f64(f.num::<f64>("query_s")?),
        counts: None,
        get_sizes: None,
        daemon_cpu: None,
        notes: String::new(),
    };
    Ok((run, answer))
}

fn generate(args: &Args, root: &Path) -> anyhow::Result<Dataset> {
    let dir = root.join("dataset");
    let target = (args.scale * SCALE_1_BYTES).round() as u64;
    let f = python(args, &["generate", &dir.to_string_lossy(), &target.to_string()])?;
    // The files as they are on disk (checked against the description below).
    let mut files = Vec::new();
    for e in std::fs::read_dir(&dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".parquet") {
            files.push((name, e.metadata()?.len()));
        }
    }
    files.sort();
    let bytes: u64 = f.num("bytes")?;
    ensure!(
        files.iter().map(|f| f.1).sum::<u64>() == bytes && files.len() == f.num::<usize>("files")?,
        "spark_bench.py generate: its description does not match the files in {}",
        dir.display()
    );
    let query_chunk_bytes: u64 = f.num("query_chunk_bytes")?;
    let desc = format!(
        "{} files, {:.1} MB, {} rows in {} row groups, {} columns; column chunks {:.0}/{:.0}/{:.0} KB (min/median/max); \
         query columns {} = {:.1} MB of chunks ({:.3}× the dataset); footers {:.1} KB",
        files.len(),
        bytes as f64 / MB,
        f.get("rows")?,
        f.get("row_groups")?,
        f.get("columns")?,
        f.num::<f64>("chunk_min")? / 1e3,
        f.num::<f64>("chunk_median")? / 1e3,
        f.num::<f64>("chunk_max")? / 1e3,
        f.get("query_columns")?,
        query_chunk_bytes as f64 / MB,
        query_chunk_bytes as f64 / bytes as f64,
        f.num::<f64>("footer_bytes")? / 1e3,
    );
    Ok(Dataset {
        dir,
        files,
        bytes,
        query_chunk_bytes,
        footer_bytes: f.num("footer_bytes")?,
        desc,
    })
}

/// `bytes=A-B` → B - A + 1.
fn range_len(r: &str) -> Option<u64> {
    let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
    Some(b.parse::<u64>().ok()? + 1 - a.parse::<u64>().ok()?)
}

fn sizes(mut v: Vec<u64>) -> Option<(u64, u64, u64)> {
    v.sort_unstable();
    Some((*v.first()?, v[v.len() / 2], *v.last()?))
}

/// The exported name of a counter family.
fn counter(family: &str) -> String {
    format!("{}_{family}_total", m::PREFIX)
}

fn cells(r: &Run, ds: &Dataset) -> Vec<String> {
    let dash = || "–".to_string();
    let c = r.counts;
    vec![
        r.name.clone(),
        r.page_cache.clone(),
        format!("{:.2}", r.query.as_secs_f64()),
        format!("{:.1}", r.process.as_secs_f64()),
        c.map_or_else(dash, |c| c.list.to_string()),
        c.map_or_else(dash, |c| c.head.to_string()),
        c.map_or_else(dash, |c| c.get.to_string()),
        c.map_or_else(dash, |c| format!("{:.1}", c.get_bytes as f64 / MB)),
        c.map_or_else(dash, |c| format!("{:.3}×", c.get_bytes as f64 / ds.bytes as f64)),
        c.map_or_else(dash, |c| {
            format!("{:.2}×", c.get_bytes as f64 / ds.query_chunk_bytes as f64)
        }),
        r.get_sizes.map_or_else(dash, |(a, b, c)| {
            format!(
                "{:.0} / {:.0} / {:.0}",
                a as f64 / 1024.0,
                b as f64 / 1024.0,
                c as f64 / 1024.0
            )
        }),
        r.daemon_cpu.map_or_else(dash, |s| format!("{s:.2}")),
        r.notes.clone(),
    ]
}

const HEADER: [&str; 13] = [
    "run",
    "page cache before",
    "query (s)",
    "process (s)",
    "LIST",
    "HEAD",
    "GET",
    "S3 GET (MB)",
    "GET bytes ÷ dataset",
    "GET bytes ÷ 3 columns' chunks",
    "GET size KiB (min / median / max)",
    "daemon CPU (s)",
    "notes",
];

fn line(r: &Run, ds: &Dataset) -> String {
    let c = cells(r, ds);
    format!(
        "{:<42} query {:>6}s  process {:>6}s  LIST {:>3} HEAD {:>3} GET {:>5}  S3 {:>7} MB  ÷dataset {:>7}  ÷chunks {:>6}  GET KiB {}  CPU {}  {}",
        c[0], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11], c[12]
    )
}

fn report(
    args: &Args,
    ds: &Dataset,
    runs: &[Run],
    problems: &[String],
    load_start: &str,
    root: &Path,
) -> anyhow::Result<()> {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## Spark: 3 of 24 columns (scale {}, {} ms per S3 request)\n\ndataset: {}\n",
        args.scale, args.latency_ms, ds.desc
    );
    let _ = writeln!(s, "| {} |", HEADER.join(" | "));
    let align: Vec<&str> = (0..HEADER.len())
        .map(|i| if i <= 1 || i == HEADER.len() - 1 { "---" } else { "---:" })
        .collect();
    let _ = writeln!(s, "|{}|", align.join("|"));
    for r in runs {
        let cells: Vec<String> = cells(r, ds).into_iter().map(|c| c.replace('|', "\\|")).collect();
        let _ = writeln!(s, "| {} |", cells.join(" | "));
    }
    let first = runs.iter().find(|r| r.name.starts_with("first")).and_then(|r| r.counts);
    let second = runs
        .iter()
        .find(|r| r.name.starts_with("second"))
        .and_then(|r| r.counts);
    if let (Some(a), Some(b)) = (first, second) {
        let ratio = a.get_bytes as f64 / ds.bytes as f64;
        let _ = writeln!(
            s,
            "\nIssue 12's targets: first run ≤ 0.4× the dataset: {ratio:.3}× ({}); second run 0 requests: {} ({}).",
            if ratio <= 0.4 { "met" } else { "NOT met" },
            b.total(),
            if b.total() == 0 { "met" } else { "NOT met" }
        );
    }
    let _ = writeln!(
        s,
        "\nMB = 10^6 bytes. \"query\" is spark.read.parquet(...).where(...).agg(...).collect() timed in the JVM; \
         \"process\" adds JVM start and SparkSession setup (a new one per run). The 3 columns' chunks are {:.1} MB \
         and the footers {:.1} KB (from the Parquet metadata). Requests are counted by the test server; mount-time \
         requests are excluded.",
        ds.query_chunk_bytes as f64 / MB,
        ds.footer_bytes as f64 / 1e3
    );
    let _ = writeln!(s, "\n### Machine\n");
    for (k, v) in sys::machine_description(root) {
        let _ = writeln!(s, "- {k}: {v}");
    }
    let _ = writeln!(
        s,
        "- load average (1/5/15 min): {load_start} at start, {} at end",
        sys::loadavg()
    );
    let _ = writeln!(s, "\n### Daemon log warnings and errors\n");
    if problems.is_empty() {
        let _ = writeln!(s, "none");
    }
    for p in problems {
        let expected = if p.contains("/nonexistent/aws-") {
            " — expected: the bench sets AWS_CONFIG_FILE/AWS_SHARED_CREDENTIALS_FILE=/nonexistent for hermetic runs"
        } else {
            ""
        };
        let _ = writeln!(s, "- `{p}`{expected}");
    }
    println!("{s}");
    if let Some(out) = &args.out {
        std::fs::write(out, &s).with_context(|| format!("cannot write {}", out.display()))?;
        println!("report written to {}", out.display());
    }
    Ok(())
}
