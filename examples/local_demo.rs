//! The main job on an embedded default: an S3-compatible server on loopback seeded with
//! JAR-like files (with 20 ms of first-byte latency, like S3), s3cachefs mounted on a temporary
//! directory with `--metadata-ttl indefinite` and a disk cache, and everything listed, stat'ed
//! and read: cold, warm, and again after unmounting and mounting anew on the same cache (as
//! after a daemon restart). Prints S3 request counts and times of each pass, then unmounts.
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
    let cache = dir.path().join("cache");
    std::fs::create_dir(&mnt)?;
    let mount = || -> anyhow::Result<_> {
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
            "--cache",
            cache.to_str().unwrap(),
            "--foreground",
        ])?;
        let Command::Mount(args) = cli.command else {
            unreachable!("parsed a mount command")
        };
        let cfg = args.resolve().map_err(anyhow::Error::msg)?;
        Ok(Daemon::start(&cfg)?.spawn())
    };
    let mut mounted = Some(mount()?);
    println!(
        "mounted s3://{BUCKET} at {} (disk cache in {})\n",
        mnt.display(),
        cache.display()
    );

    println!(
        "{:<8} {:>6} {:>8} {:>6} {:>6} {:>6} {:>8} {:>8}",
        "pass", "files", "MiB", "LIST", "HEAD", "GET", "S3 MiB", "time"
    );
    for pass in ["cold", "warm", "remount"] {
        if pass == "remount" {
            mounted.take().unwrap().unmount()?;
            mounted = Some(mount()?);
        }
        server.reset_counts();
        let t = Instant::now();
        let (files, bytes) = read_tree(&mnt, &server)?;
        let elapsed = t.elapsed();
        let c: Counts = server.counts();
        println!(
            "{pass:<8} {files:>6} {:>8.1} {:>6} {:>6} {:>6} {:>8.1} {:>7.2}s",
            bytes as f64 / (1 << 20) as f64,
            c.list,
            c.head,
            c.get,
            c.get_bytes as f64 / (1 << 20) as f64,
            elapsed.as_secs_f64()
        );
        match pass {
            "warm" => println!(
                "         warm pass: {} S3 requests (metadata and data from cache)",
                c.total()
            ),
            "remount" => println!("         after remount: {} GETs (data from the disk cache)", c.get),
            _ => {}
        }
    }
    mounted.take().unwrap().unmount()?;
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
