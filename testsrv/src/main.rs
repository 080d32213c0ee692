//! The `s3-testserver` binary: runs a [`TestServer`] standalone (argument parsing, seeding a bucket from a
//! directory, printing `endpoint=...`, and serving until SIGTERM/SIGINT).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::exit;
use std::time::Duration;

use s3cachefs_testserver::TestServer;

const USAGE: &str = "usage: s3-testserver [--addr 127.0.0.1:0] [--bucket NAME]... \
[--seed-dir DIR --seed-bucket NAME] [--latency-ms N]";

struct Args {
    addr: SocketAddr,
    buckets: Vec<String>,
    seed_dir: Option<PathBuf>,
    seed_bucket: Option<String>,
    latency_ms: u64,
}

fn usage_error(msg: &str) -> ! {
    eprintln!("s3-testserver: {msg}\n{USAGE}");
    exit(2)
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Args {
    let mut args = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        buckets: Vec::new(),
        seed_dir: None,
        seed_bucket: None,
        latency_ms: 0,
    };
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            println!("{USAGE}");
            exit(0);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .unwrap_or_else(|| usage_error(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--addr" => {
                let v = value();
                args.addr = v.parse().unwrap_or_else(|_| usage_error(&format!("bad --addr {v:?}")));
            }
            "--bucket" => args.buckets.push(value()),
            "--seed-dir" => args.seed_dir = Some(PathBuf::from(value())),
            "--seed-bucket" => args.seed_bucket = Some(value()),
            "--latency-ms" => {
                let v = value();
                args.latency_ms = v
                    .parse()
                    .unwrap_or_else(|_| usage_error(&format!("bad --latency-ms {v:?}")));
            }
            _ => usage_error(&format!("unknown argument {arg:?}")),
        }
    }
    if args.seed_dir.is_some() != args.seed_bucket.is_some() {
        usage_error("--seed-dir and --seed-bucket must be given together");
    }
    args
}

/// Every regular file under `dir` (recursively, following symlinks) with its `/`-separated relative path.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if meta.is_file() {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let key = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            out.push((key, path));
        }
    }
    Ok(())
}

fn seed(server: &TestServer, dir: &Path, bucket: &str) -> std::io::Result<usize> {
    server.create_bucket(bucket);
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    for (key, path) in &files {
        let data = std::fs::read(path)?;
        let mtime = std::fs::metadata(path)?.modified()?;
        server.put_with_mtime(bucket, key, data, mtime);
    }
    Ok(files.len())
}

fn main() {
    let args = parse_args(std::env::args().skip(1));
    let server = TestServer::start_on(args.addr).unwrap_or_else(|e| {
        eprintln!("s3-testserver: cannot listen on {}: {e}", args.addr);
        exit(1)
    });
    for b in &args.buckets {
        server.create_bucket(b);
    }
    if let (Some(dir), Some(bucket)) = (&args.seed_dir, &args.seed_bucket) {
        match seed(&server, dir, bucket) {
            Ok(n) => eprintln!("s3-testserver: seeded {n} objects into bucket {bucket:?}"),
            Err(e) => {
                eprintln!("s3-testserver: cannot seed from {}: {e}", dir.display());
                exit(1)
            }
        }
    }
    server.set_latency(Duration::from_millis(args.latency_ms));

    // The signal handlers exist before `endpoint=` is printed: a caller may send SIGTERM as soon
    // as it reads that line.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("signal runtime");
    let (mut term, mut int) = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).expect("SIGTERM handler"),
            signal(SignalKind::interrupt()).expect("SIGINT handler"),
        )
    });

    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "endpoint={}", server.endpoint());
    let _ = stdout.flush();
    drop(stdout);

    rt.block_on(async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    });
    drop(server);
}
