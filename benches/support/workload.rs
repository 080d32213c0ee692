//! The Spark-like workload: JAR-like files, one large data file and many small objects, with
//! cheap, deterministic, per-object distinct bytes.
//!
//! Bytes are a 1 MiB xorshift pattern read cyclically from a per-object offset, with the
//! object number and the 4 KiB chunk index stamped into the first 8 bytes of every 4 KiB, so
//! a read at a wrong offset or of the wrong object never compares equal.

use bytes::Bytes;
use s3cachefs_testserver::TestServer;

pub const BUCKET: &str = "bench-bucket";
const PATTERN_LEN: usize = 1 << 20;
const STAMP_EVERY: usize = 4096;
/// The large data file at scale 1.0.
pub const BIG_BYTES: u64 = 1 << 30;
/// Small objects at scale 1.0, and the fewest at any scale (so `ls -lR` stays meaningful).
const SMALL_COUNT: usize = 5000;
const SMALL_MIN_COUNT: usize = 1000;
pub const SMALL_DIRS: usize = 50;

pub struct Object {
    pub key: String,
    pub data: Bytes,
}

#[derive(Default)]
pub struct Workload {
    pub jars: Vec<Object>,
    pub big: Option<Object>,
    pub small: Vec<Object>,
    /// A wide "Parquet" file read by columns (`columnar_reads`).
    pub columnar: Option<Object>,
}

impl Workload {
    pub fn jar_bytes(&self) -> u64 {
        self.jars.iter().map(|o| o.data.len() as u64).sum()
    }

    pub fn all(&self) -> impl Iterator<Item = &Object> {
        self.jars
            .iter()
            .chain(self.big.iter())
            .chain(self.small.iter())
            .chain(self.columnar.iter())
    }
}

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A deterministic random offset generator for the random-read scenario.
pub struct Offsets(Rng);

impl Offsets {
    pub fn new(seed: u64) -> Offsets {
        Offsets(Rng::new(seed))
    }

    /// Uniform in [0, bound).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0.next() % bound.max(1)
    }
}

fn pattern() -> Vec<u8> {
    let mut r = Rng::new(0x5EED);
    let mut p = Vec::with_capacity(PATTERN_LEN);
    while p.len() < PATTERN_LEN {
        p.extend_from_slice(&r.next().to_le_bytes());
    }
    p
}

fn object_bytes(pattern: &[u8], seed: u64, len: usize) -> Bytes {
    let mut v = Vec::with_capacity(len);
    let mut pos = (seed as usize).wrapping_mul(7919 * 64) % PATTERN_LEN;
    while v.len() < len {
        let take = (len - v.len()).min(PATTERN_LEN - pos);
        v.extend_from_slice(&pattern[pos..pos + take]);
        pos = 0;
    }
    for (i, chunk) in v.chunks_mut(STAMP_EVERY).enumerate() {
        let stamp = ((seed << 40) | i as u64).to_le_bytes();
        let n = chunk.len().min(8);
        chunk[..n].copy_from_slice(&stamp[..n]);
    }
    Bytes::from(v)
}

/// Key and size of the 60 JAR-like files at scale 1.0 (about 500 MB): one ~300 MB assembly,
/// four of 20-60 MB, and 55 between 50 KB and 2 MB (log-uniform).
fn jar_layout() -> Vec<(String, u64)> {
    let mut v = vec![
        ("jars/app-assembly-1.0.jar".to_string(), 300_000_000),
        ("jars/deps/aws-java-sdk-bundle-1.12.jar".to_string(), 60_000_000),
        ("jars/deps/spark-core_2.12-3.5.jar".to_string(), 47_000_000),
        ("jars/deps/hadoop-client-runtime-3.3.jar".to_string(), 33_000_000),
        ("jars/deps/scala-library-2.12.jar".to_string(), 20_000_000),
    ];
    let mut r = Rng::new(42);
    let (lo, hi) = (50_000f64.ln(), 2_000_000f64.ln());
    for i in 0..55 {
        let size = (lo + (hi - lo) * r.unit()).exp() as u64;
        v.push((format!("jars/deps/lib-{i:02}-1.{}.jar", i % 7), size));
    }
    v
}

fn scaled(size: u64, scale: f64) -> usize {
    ((size as f64 * scale).round() as usize).max(1024)
}

/// Builds the parts of the workload that the selected scenarios need.
pub fn build(scale: f64, jars: bool, big: bool, small: bool, columnar: bool) -> Workload {
    let pattern = pattern();
    let mut w = Workload::default();
    let mut seed = 1u64;
    if jars {
        for (key, size) in jar_layout() {
            w.jars.push(Object {
                data: object_bytes(&pattern, seed, scaled(size, scale)),
                key,
            });
            seed += 1;
        }
    }
    if big {
        w.big = Some(Object {
            key: "data/events-1gib.parquet".into(),
            data: object_bytes(&pattern, 999, scaled(BIG_BYTES, scale)),
        });
    }
    if columnar {
        // Not scaled: the layout needs room for 8 row groups of 24 column chunks.
        w.columnar = Some(Object {
            key: "data/wide-256mib.parquet".into(),
            data: object_bytes(&pattern, 998, COLUMNAR_BYTES as usize),
        });
    }
    if small {
        let count = ((SMALL_COUNT as f64 * scale).round() as usize).max(SMALL_MIN_COUNT);
        let mut r = Rng::new(7);
        for i in 0..count {
            let len = 200 + (r.next() % 3800) as usize;
            w.small.push(Object {
                key: format!("small/part-{:02}/file-{i:05}.json", i % SMALL_DIRS),
                data: object_bytes(&pattern, 10_000 + i as u64, len),
            });
        }
    }
    w
}

/// Stores every object (two threads: the server computes an MD5 ETag per object).
pub fn seed(server: &TestServer, w: &Workload) {
    let objects: Vec<&Object> = w.all().collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(o) = objects.get(i) else { break };
                    server.put(BUCKET, &o.key, o.data.clone());
                }
            });
        }
    });
}

/// The columnar file's size (any scale).
pub const COLUMNAR_BYTES: u64 = 256 << 20;

/// The reads of a query that needs 3 of 24 columns of a Parquet-like file of `size` bytes, in
/// order, as (offset, length): the footer's length, the footer (64 KiB), then for each of 8 row
/// groups its column chunks 5, 7 and 9 (320 KiB each, separated by column 6 of 256 KiB and column
/// 8 of 700 KiB); the other 19 columns share the rest of the row group evenly.
pub fn columnar_reads(size: u64) -> Vec<(u64, u64)> {
    const FOOTER: u64 = 64 << 10;
    const ROW_GROUPS: u64 = 8;
    const COLUMNS: u64 = 24;
    let mut reads = vec![(size - 8, 8), (size - 8 - FOOTER, FOOTER)];
    let group = (size - 8 - FOOTER - 4) / ROW_GROUPS;
    let fixed: [(u64, u64, bool); 5] = [
        (5, 320 << 10, true),
        (6, 256 << 10, false),
        (7, 320 << 10, true),
        (8, 700 << 10, false),
        (9, 320 << 10, true),
    ];
    let rest = (group - fixed.iter().map(|c| c.1).sum::<u64>()) / (COLUMNS - fixed.len() as u64);
    for g in 0..ROW_GROUPS {
        // After the 4-byte magic at offset 0.
        let mut off = 4 + g * group;
        for c in 0..COLUMNS {
            let (len, wanted) = fixed.iter().find(|f| f.0 == c).map_or((rest, false), |f| (f.1, f.2));
            if wanted {
                reads.push((off, len));
            }
            off += len;
        }
    }
    reads
}
