//! The shared tier (`--shared-cache`) through real mounts and real HTTP. One test server holds
//! the source bucket and the shared bucket; each simulated node is one `s3cachefs mount` daemon
//! with its own `--cache` directory, or none. Requests are counted per bucket
//! (`TestServer::counts_for`), and background writes to the shared bucket are awaited by
//! polling its objects with a deadline, never by sleeping.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use hmac::{Hmac, Mac};
use s3cachefs::blockfmt;
use s3cachefs::metrics::{
    SHARED_BREAKER_OPEN, SHARED_ERRORS, SHARED_HITS, SHARED_INVALID, SHARED_LEASE_TIMEOUTS, SHARED_LEASE_WAITS,
    counter_name, gauge_name,
};
use s3cachefs::object::{BlockId, SourceId};
use s3cachefs_testserver::{FaultKind, FaultPlan, FaultRule, Op};
use sha2::Sha256;

const MIB: usize = 1 << 20;
const SHARED: &str = "shared-bucket";
const SHARED_URL: &str = "s3://shared-bucket/cache/";
const BLOCKS: &str = "cache/s3cachefs/v1/blocks/";
const LEASES: &str = "cache/s3cachefs/v1/leases/";

/// An object of the source bucket, as seeded.
struct Obj {
    key: String,
    body: Vec<u8>,
    etag: String,
}

impl Obj {
    fn blocks(&self) -> usize {
        self.body.len().div_ceil(MIB)
    }
}

/// A server with the source bucket and the (empty) shared bucket.
fn setup() -> TestServer {
    let s = server();
    s.create_bucket(SHARED);
    s
}

/// Objects `<dir>/f<i>` of the given sizes in the source bucket.
fn seed(s: &TestServer, dir: &str, sizes: &[usize], seed: u64) -> Vec<Obj> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let key = format!("{dir}/f{i}");
            let body = data(len, seed * 100 + i as u64);
            let etag = s.put(BUCKET, &key, body.clone());
            Obj { key, body, etag }
        })
        .collect()
}

fn blocks(objects: &[Obj]) -> usize {
    objects.iter().map(Obj::blocks).sum()
}

fn bytes(objects: &[Obj]) -> u64 {
    objects.iter().map(|o| o.body.len() as u64).sum()
}

/// A node: the source bucket mounted with the shared cache, plus `extra` arguments.
fn node(s: &TestServer, extra: &[&str]) -> Mount {
    let mut args = vec!["--shared-cache", SHARED_URL];
    args.extend_from_slice(extra);
    Mount::new(s, BUCKET, &args)
}

/// A node with `--metrics-addr`; returns the mount and the metrics port.
fn node_with_metrics(s: &TestServer, extra: &[&str]) -> (Mount, u16) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec!["--metrics-addr", addr.as_str()];
    args.extend_from_slice(extra);
    (node(s, &args), port)
}

fn read_all(m: &Mount, objects: &[Obj]) {
    for o in objects {
        assert!(fs::read(m.join(&o.key)).unwrap() == o.body, "bytes of {} differ", o.key);
    }
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the background writes have landed: `n` block objects in the shared bucket (a
/// block's write is the last thing its node does for it; the lease it took stays with it). Then
/// checks there are exactly `n`, and no more leases than blocks.
fn wait_for_shared_blocks(s: &TestServer, n: usize) {
    wait_until(
        &format!("{n} blocks in the shared bucket"),
        Duration::from_secs(30),
        || s.keys(SHARED, BLOCKS).len() >= n,
    );
    assert_eq!(s.keys(SHARED, BLOCKS).len(), n, "{:?}", s.keys(SHARED, BLOCKS));
    assert!(s.keys(SHARED, LEASES).len() <= n, "{:?}", s.keys(SHARED, LEASES));
}

/// The identity a mount gives block `index` of `o` (1 MiB blocks).
fn block_id(s: &TestServer, o: &Obj, index: u64) -> BlockId {
    BlockId {
        source: SourceId::new(Some(&s.endpoint()), BUCKET, &common::partition()),
        key: o.key.as_str().into(),
        etag: o.etag.as_str().into(),
        block_size: MIB as u64,
        index,
    }
}

/// Where the shared tier keeps a block, as documented in `tier/shared.rs`.
fn block_key(s: &TestServer, o: &Obj, index: u64) -> String {
    let id = block_id(s, o, index);
    let (hash, _) = blockfmt::object_hash(&id.source, &id.key, &id.etag, id.block_size);
    format!("{BLOCKS}{hash}/{index}")
}

/// A block object holding `data`, well-formed for `id`: header and data, then with `key` an
/// HMAC-SHA256 tag (`S3CFSMAC` and 32 bytes) over both.
fn block_object(id: &BlockId, data: &[u8], key: Option<&[u8]>) -> Vec<u8> {
    let mut out = blockfmt::encode_header(id, data).unwrap();
    out.extend_from_slice(data);
    if let Some(key) = key {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(&out);
        let tag = mac.finalize().into_bytes();
        out.extend_from_slice(b"S3CFSMAC");
        out.extend_from_slice(&tag);
    }
    out
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    r.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// The sum of a metric's series (all label sets) in the daemon's `/metrics`.
fn metric(port: u16, name: &str) -> f64 {
    http_get(port, "/metrics")
        .lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

fn counter(port: u16, name: &str) -> f64 {
    metric(port, &counter_name(name))
}

/// Lazily unmounts a path on drop, for mounts started without `Mount`.
struct UnmountOnDrop(PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Runs `s3cachefs mount SOURCE` (in the background, as a user would), expecting it to fail;
/// returns its exit code and stderr.
fn mount_fails(s: &TestServer, source: &str, extra: &[&str]) -> (i32, String) {
    let d = tempfile::tempdir().unwrap();
    let mnt = d.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _cleanup = UnmountOnDrop(mnt.clone());
    let mut c = command();
    c.arg("mount").arg(source).arg(&mnt).args(endpoint_args(s)).args(extra);
    let out = run_with_timeout(c, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!is_mounted(&mnt), "mounted although it should have failed: {stderr}");
    (exit_code(&out.status), stderr)
}

#[test]
fn a_second_node_reads_everything_from_the_shared_bucket() {
    let s = setup();
    let objects = seed(&s, "data", &[300_000, 2 * MIB + 500_000, 0, 10], 1);
    let n = blocks(&objects);
    assert_eq!(n, 5);
    // Node A, no local cache: every block from the source once, then written to the shared bucket.
    let a = node(&s, &[]);
    s.reset_counts();
    read_all(&a, &objects);
    assert_eq!(s.counts_for(BUCKET).get, n as u64, "{:?}", s.counts_for(BUCKET));
    wait_for_shared_blocks(&s, n);
    let mut want: Vec<String> = objects
        .iter()
        .flat_map(|o| (0..o.blocks() as u64).map(|i| block_key(&s, o, i)))
        .collect();
    want.sort();
    assert_eq!(
        s.keys(SHARED, BLOCKS),
        want,
        "one object per block, named by the object hash"
    );
    drop(a);

    // Node B, empty local cache: everything from the shared bucket, nothing from the source.
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path().to_str().unwrap();
    // No free-space headroom: this test is about what the disk cache keeps, not how full the
    // machine's disk is.
    let local = ["--cache", c, "--cache-min-free", "0", "--no-passthrough"];
    let b = node(&s, &local);
    s.reset_counts();
    read_all(&b, &objects);
    let source = s.counts_for(BUCKET);
    assert_eq!((source.get, source.get_bytes), (0, 0), "{source:?}");
    let shared = s.counts_for(SHARED);
    assert_eq!(
        (shared.get, shared.put, shared.delete),
        (n as u64, 0, 0),
        "one shared GET per block, no lease and no write: {shared:?}"
    );
    drop(b);

    // The shared hits filled B's disk cache: B without the shared tier needs neither bucket's data.
    s.reset_counts();
    let b = Mount::new(&s, BUCKET, &local);
    read_all(&b, &objects);
    assert_eq!(s.counts_for(BUCKET).get, 0, "{:?}", s.counts_for(BUCKET));
    assert_eq!(s.counts_for(SHARED).total(), 0);
}

#[test]
fn four_nodes_reading_at_once_fetch_each_block_from_the_source_about_once() {
    let s = setup();
    let objects = seed(&s, "jars", &[3 * MIB + 1000, 2 * MIB, 5 * MIB - 7], 2);
    let caches: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<Mount> = caches
        .iter()
        .map(|d| node(&s, &["--cache", d.path().to_str().unwrap(), "--cache-min-free", "0"]))
        .collect();
    // Metadata first (each node has its own), so the race below is on data only.
    for m in &nodes {
        for o in &objects {
            fs::metadata(m.join(&o.key)).unwrap();
        }
    }
    // S3-like first-byte latency on every request, to both buckets.
    s.set_latency(Duration::from_millis(20));
    s.reset_counts();
    let barrier = Arc::new(Barrier::new(nodes.len()));
    std::thread::scope(|scope| {
        for m in &nodes {
            let (barrier, objects) = (barrier.clone(), &objects);
            scope.spawn(move || {
                barrier.wait();
                read_all(m, objects);
            });
        }
    });
    s.set_latency(Duration::ZERO);
    let source = s.counts_for(BUCKET);
    let data = bytes(&objects);
    assert!(
        source.get_bytes as f64 <= 1.1 * data as f64,
        "4 nodes fetched {} bytes from the source for {data} bytes of data: {source:?}",
        source.get_bytes
    );
    wait_for_shared_blocks(&s, blocks(&objects));
}

#[test]
fn a_corrupt_shared_block_is_not_served_and_comes_from_the_source() {
    let s = setup();
    let objects = seed(&s, "data", &[3 * MIB], 3);
    let o = &objects[0];
    let a = node(&s, &[]);
    read_all(&a, &objects);
    wait_for_shared_blocks(&s, 3);
    drop(a);
    // A flipped data byte in block 1, a flipped header byte (the block index) in block 2.
    let flip = |index: u64, pos: &dyn Fn(usize) -> usize| {
        let key = block_key(&s, o, index);
        let mut obj = s.get_object(SHARED, &key).unwrap().to_vec();
        let at = pos(obj.len());
        obj[at] ^= 0x55;
        s.put(SHARED, &key, obj);
    };
    flip(1, &|len| len - MIB / 2);
    flip(2, &|_| 16);
    let (b, port) = node_with_metrics(&s, &[]);
    s.reset_counts();
    read_all(&b, &objects);
    let source = s.counts_for(BUCKET);
    assert_eq!(
        (source.get, source.get_bytes),
        (2, 2 * MIB as u64),
        "exactly the two bad blocks came from the source: {source:?}"
    );
    let mut ranges: Vec<Option<String>> = s
        .requests()
        .into_iter()
        .filter(|r| r.bucket == BUCKET && r.op == Op::Get)
        .map(|r| r.range)
        .collect();
    ranges.sort();
    assert_eq!(
        ranges,
        [
            Some(format!("bytes={}-{}", MIB, 2 * MIB - 1)),
            Some(format!("bytes={}-{}", 2 * MIB, 3 * MIB - 1))
        ]
    );
    assert!(counter(port, SHARED_INVALID) >= 2.0, "{}", http_get(port, "/metrics"));
    assert_eq!(counter(port, SHARED_HITS), 1.0);
    assert!(b.log().contains("is not valid"), "the bad objects are logged");
}

#[test]
fn with_a_key_file_unsigned_or_foreign_signed_blocks_are_never_served() {
    let s = setup();
    let d = tempfile::tempdir().unwrap();
    let key = b"0123456789abcdef0123456789abcdef";
    let key_file = d.path().join("key");
    fs::write(&key_file, key).unwrap();
    let k = ["--shared-cache-key-file", key_file.to_str().unwrap()];
    let objects = seed(&s, "data", &[2 * MIB + 100], 4);
    let secret = seed(&s, "secret", &[MIB + 5000], 5);

    // Signing nodes: what one writes, another serves.
    let a = node(&s, &k);
    read_all(&a, &objects);
    wait_for_shared_blocks(&s, 3);
    drop(a);
    for name in s.keys(SHARED, BLOCKS) {
        let obj = s.get_object(SHARED, &name).unwrap();
        assert_eq!(&obj[obj.len() - 40..obj.len() - 32], b"S3CFSMAC", "{name} is signed");
    }

    // Plant blocks for a file nobody read: well-formed, with an attacker's data, block 0 unsigned
    // and block 1 signed with another key.
    let o = &secret[0];
    let forged = [vec![b'X'; MIB], vec![b'Y'; 5000]];
    s.put(
        SHARED,
        &block_key(&s, o, 0),
        block_object(&block_id(&s, o, 0), &forged[0], None),
    );
    s.put(
        SHARED,
        &block_key(&s, o, 1),
        block_object(
            &block_id(&s, o, 1),
            &forged[1],
            Some(b"another key, 32 bytes long......"),
        ),
    );
    // The forgeries are well-formed: a node without a key serves them (the threat the key is for).
    {
        let u = node(&s, &[]);
        s.reset_counts();
        assert!(fs::read(u.join(&o.key)).unwrap() == forged.concat());
        assert_eq!(s.counts_for(BUCKET).get, 0);
    }

    let (b, port) = node_with_metrics(&s, &k);
    s.reset_counts();
    read_all(&b, &objects);
    assert_eq!(s.counts_for(BUCKET).get, 0, "signed blocks are served");
    assert_eq!(counter(port, SHARED_HITS), 3.0);
    read_all(&b, &secret);
    assert_eq!(
        s.counts_for(BUCKET).get,
        2,
        "both planted blocks came from the source: {:?}",
        s.counts_for(BUCKET)
    );
    assert_eq!(counter(port, SHARED_INVALID), 2.0, "{}", http_get(port, "/metrics"));
    assert_eq!(counter(port, SHARED_HITS), 3.0);
}

#[test]
fn a_dead_shared_bucket_costs_a_few_requests_and_fails_no_read() {
    let s = setup();
    let objects = seed(&s, "data", &[20 * MIB], 6);
    assert_eq!(blocks(&objects), 20);
    let faults = [
        FaultRule::new(FaultKind::Status500),
        FaultRule::new(FaultKind::Stall(Duration::from_secs(3))),
    ];
    for rule in faults {
        let what = format!("{:?}", rule.kind);
        let (m, port) = node_with_metrics(&s, &["--shared-cache-timeout", "0.5"]);
        s.set_bucket_faults(SHARED, FaultPlan::new(1).rule(rule));
        s.reset_counts();
        read_all(&m, &objects);
        assert_eq!(s.counts_for(BUCKET).get, 20, "{what}: {:?}", s.counts_for(BUCKET));
        let shared = s.counts_for(SHARED);
        assert!(
            (1..=4).contains(&shared.total()),
            "{what}: the breaker keeps a dead shared bucket out of the way: {shared:?}"
        );
        assert!(counter(port, SHARED_ERRORS) >= 1.0, "{what}");
        assert_eq!(metric(port, &gauge_name(SHARED_BREAKER_OPEN)), 1.0, "{what}");
        drop(m);
        s.clear_bucket_faults(SHARED);
    }

    // At mount, a shared bucket that cannot be used is a clear error, before anything is mounted.
    s.deny_bucket(SHARED, true);
    let (code, err) = mount_fails(&s, BUCKET, &["--shared-cache", SHARED_URL]);
    assert_ne!(code, 0);
    assert!(err.contains("s3://shared-bucket/cache/ cannot be written"), "{err}");
    let (code, err) = mount_fails(&s, BUCKET, &["--shared-cache", SHARED_URL, "--shared-cache-read-only"]);
    assert_ne!(code, 0);
    assert!(err.contains("s3://shared-bucket/cache/ cannot be read"), "{err}");
    s.deny_bucket(SHARED, false);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (code, err) = mount_fails(
        &s,
        BUCKET,
        &["--shared-cache", SHARED_URL, "--shared-cache-endpoint-url", &dead],
    );
    assert_ne!(code, 0);
    assert!(err.contains("s3://shared-bucket/cache/ cannot be written"), "{err}");
}

#[test]
fn a_lease_holder_killed_mid_fetch_delays_another_node_by_a_bounded_wait() {
    let s = setup();
    let objects = seed(&s, "data", &[700_000], 7);
    let o = &objects[0];
    // The lease expires 2 x 5 s after A takes it: long enough that B, however slow this machine,
    // finds it still held and waits (at most 5 s) rather than taking it over.
    let mut a = node(&s, &["--shared-cache-lease-wait", "5"]);
    let (b, port) = node_with_metrics(&s, &["--shared-cache-lease-wait", "5"]);
    for m in [&a, &b] {
        fs::metadata(m.join(&o.key)).unwrap();
    }
    // A slow source: every GET of it waits 3 s before its answer.
    s.set_bucket_faults(
        BUCKET,
        FaultPlan::new(1).rule(FaultRule::new(FaultKind::Stall(Duration::from_secs(3))).ops([Op::Get])),
    );
    s.reset_counts();
    let path = a.join(&o.key);
    let reader = std::thread::spawn(move || fs::read(path));
    wait_until(
        "node A to take the lease and ask the source",
        Duration::from_secs(20),
        || s.keys(SHARED, LEASES).len() == 1 && s.counts_for(BUCKET).get == 1,
    );
    a.signal_and_wait(libc::SIGKILL);
    assert!(reader.join().unwrap().is_err(), "A died before its read was answered");
    drop(a);
    assert_eq!(
        s.keys(SHARED, LEASES).len(),
        1,
        "the dead holder's lease is left behind"
    );

    // B waits for the lease (at most 5 s), then reads from the source itself.
    let path = b.join(&o.key);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(fs::read(path)));
    let got = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("node B's read hangs behind a dead lease holder");
    assert!(got.unwrap() == o.body);
    assert!(
        counter(port, SHARED_LEASE_WAITS) >= 1.0,
        "{}",
        http_get(port, "/metrics")
    );
    assert!(counter(port, SHARED_LEASE_TIMEOUTS) >= 1.0);
    s.clear_bucket_faults(BUCKET);
    wait_until("B's write of the block", Duration::from_secs(30), || {
        s.get_object(SHARED, &block_key(&s, o, 0)).is_some()
    });
}

#[test]
fn a_read_only_node_reads_shared_blocks_and_never_writes() {
    let s = setup();
    let objects = seed(&s, "data", &[2 * MIB + 1, 100], 8);
    let others = seed(&s, "more", &[MIB + 1], 9);
    let w = node(&s, &[]);
    read_all(&w, &objects);
    wait_for_shared_blocks(&s, 4);
    drop(w);
    s.reset_counts();
    let r = node(&s, &["--shared-cache-read-only"]);
    read_all(&r, &objects);
    assert_eq!(s.counts_for(BUCKET).get, 0, "{:?}", s.counts_for(BUCKET));
    read_all(&r, &others);
    assert_eq!(s.counts_for(BUCKET).get, 2, "{:?}", s.counts_for(BUCKET));
    drop(r);
    let shared = s.counts_for(SHARED);
    assert_eq!((shared.put, shared.delete), (0, 0), "{shared:?}");
    // The writer's 4 blocks and their 4 leases; nothing from the read-only node.
    assert_eq!(s.keys(SHARED, BLOCKS).len(), 4, "{:?}", s.keys(SHARED, ""));
    assert_eq!(s.keys(SHARED, "").len(), 8, "{:?}", s.keys(SHARED, ""));
}

#[test]
fn warm_without_a_local_cache_fills_the_shared_bucket() {
    let s = setup();
    let objects = seed(&s, "jars", &[MIB, 2 * MIB + 3, 0, 4000], 10);
    let n = blocks(&objects);
    let mut c = command();
    c.args(["warm", "s3://test-bucket/jars/", "--shared-cache", SHARED_URL])
        .args(endpoint_args(&s));
    let out = run_with_timeout(c, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        exit_code(&out.status),
        0,
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("{n} written to the shared cache")), "{stdout}");
    // warm exits only once its writes have landed.
    assert_eq!(s.keys(SHARED, BLOCKS).len(), n);
    assert_eq!(s.counts_for(BUCKET).get, n as u64);
    s.reset_counts();
    let m = node(&s, &[]);
    read_all(&m, &objects);
    assert_eq!(s.counts_for(BUCKET).get, 0, "{:?}", s.counts_for(BUCKET));
}

#[test]
fn a_shared_cache_overlapping_the_mounted_prefix_is_refused() {
    let s = setup();
    for (source, shared) in [
        ("test-bucket/data/", "s3://test-bucket/data/cache/"),
        ("test-bucket", "s3://test-bucket/cache/"),
    ] {
        let (code, err) = mount_fails(&s, source, &["--shared-cache", shared]);
        assert_ne!(code, 0);
        assert!(err.contains("--shared-cache") && err.contains("overlaps"), "{err}");
        assert_eq!(s.counts().total(), 0, "refused before any request");
        // `warm` refuses the same overlap: it would write block objects into the source.
        let mut c = command();
        c.args(["warm", source, "--shared-cache", shared])
            .args(endpoint_args(&s));
        let out = run_with_timeout(c, Duration::from_secs(60));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(exit_code(&out.status), 0, "{err}");
        assert!(err.contains("overlaps"), "{err}");
        assert_eq!(s.counts().total(), 0, "refused before any request");
    }
    // The same bucket under a prefix outside the mounted one is fine.
    let objects = seed(&s, "data", &[1000], 11);
    let m = Mount::new(&s, "test-bucket/data/", &["--shared-cache", "s3://test-bucket/shared/"]);
    assert!(fs::read(m.join("f0")).unwrap() == objects[0].body);
    wait_until(
        "the block in the source bucket's shared prefix",
        Duration::from_secs(30),
        || s.keys(BUCKET, "shared/s3cachefs/v1/blocks/").len() == 1,
    );
}
