//! The main job on an embedded default: an S3-compatible server on loopback seeded with
//! JAR-like files (with 20 ms of first-byte latency, like S3), s3cachefs mounted on a temporary
//! directory with `--metadata-ttl indefinite`, and everything listed, stat'ed and read twice.
//! Prints S3 request counts and times of the cold and the warm pass, then unmounts.
//!
//!     cargo run --release --example local_demo
//!
//! Needs /dev/fuse and either root or `fusermount3` (package fuse3).

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;
use s3cachefs::app::Daemon;
use s3cachefs::cli::{Cli, Command};
use s3cachefs_testserver::{Counts, TestServer};

const BUCKET: &str = "demo-bucket";

fn main() -> anyhow::Result<()> {
    let server = TestServer::start();
    server.create_bucket(BUCKET);
    let seeded = seed(&server);
    server.set_latency(Duration::from_millis(20));
    println!(
        "embedded S3 server at {} (20 ms first-byte latency), bucket {BUCKET}: {} objects, {:.1} MiB",
        server.endpoint(),
        seeded.0,
        seeded.1 as f64 / (1 << 20) as f64
    );

    let dir = tempfile::tempdir()?;
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt)?;
    let cli = Cli::try_parse_from([
        "s3cachefs",
        "mount",
        BUCKET,
        mnt.to_str().unwrap(),
        "--endpoint-url",
        &server.endpoint(),
        "--region",
        "us-east-1",
        "--no-sign-request",
        "--metadata-ttl",
        "indefinite",
        "--foreground",
    ])?;
    let Command::Mount(args) = cli.command;
    let cfg = args.resolve().map_err(anyhow::Error::msg)?;
    let mount = Daemon::start(&cfg)?.spawn();
    println!("mounted s3://{BUCKET} at {}\n", mnt.display());

    println!(
        "{:<6} {:>8} {:>10} {:>6} {:>6} {:>6} {:>10} {:>9}",
        "pass", "files", "MiB", "LIST", "HEAD", "GET", "S3 MiB", "time"
    );
    for pass in ["cold", "warm"] {
        server.reset_counts();
        let t = Instant::now();
        let (files, bytes) = read_tree(&mnt, &server)?;
        let elapsed = t.elapsed();
        let c: Counts = server.counts();
        println!(
            "{pass:<6} {files:>8} {:>10.1} {:>6} {:>6} {:>6} {:>10.1} {:>8.2}s",
            bytes as f64 / (1 << 20) as f64,
            c.list,
            c.head,
            c.get,
            c.get_bytes as f64 / (1 << 20) as f64,
            elapsed.as_secs_f64()
        );
        if pass == "warm" {
            println!(
                "\nwarm pass: {} S3 requests{}",
                c.total(),
                if c.total() == 0 {
                    " (metadata and data served from cache)"
                } else {
                    ""
                }
            );
        }
    }
    mount.unmount()?;
    println!("unmounted");
    Ok(())
}

/// Spark-like dependency tree: a few large JARs, many small ones, some config files.
fn seed(server: &TestServer) -> (usize, usize) {
    let mut objects = vec![
        ("jars/spark-app-assembly.jar".to_string(), 8 << 20),
        ("jars/deps/hadoop-aws.jar".to_string(), 3 << 20),
        ("jars/deps/aws-java-sdk-bundle.jar".to_string(), 4 << 20),
        ("conf/spark-defaults.conf".to_string(), 900),
        ("conf/log4j2.properties".to_string(), 2_100),
    ];
    for i in 0..30 {
        objects.push((format!("jars/deps/lib-{i:02}.jar"), 50_000 + i * 60_000));
    }
    let mut total = 0;
    for (i, (key, size)) in objects.iter().enumerate() {
        let body: Vec<u8> = (0..*size)
            .map(|j| (j as u64).wrapping_mul(31).wrapping_add(i as u64 * 7) as u8)
            .collect();
        server.put(BUCKET, key, body);
        total += size;
    }
    (objects.len(), total)
}

/// Walks the mount, stats every entry and reads every file, checking each byte.
fn read_tree(root: &Path, server: &TestServer) -> anyhow::Result<(usize, u64)> {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let meta = std::fs::metadata(&path)?;
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            let data = std::fs::read(&path)?;
            let key = path.strip_prefix(root)?.to_string_lossy().into_owned();
            let want = server.get_object(BUCKET, &key).expect("object exists");
            anyhow::ensure!(data == want, "bytes of {key} differ from S3");
            files += 1;
            bytes += data.len() as u64;
        }
    }
    Ok((files, bytes))
}
