//! Validated, resolved configuration: the `*Config` types, what the user asked for. `app`
//! turns them into the `*Settings` each layer is built with. `cli.rs` only parses strings;
//! everything here has been checked, so the layers below never see a malformed bucket, TTL,
//! size or mode.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// A metadata time-to-live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ttl {
    /// Entries expire this long after they were fetched from S3 (zero: never cached).
    Finite(Duration),
    /// Entries never expire: the right choice for immutable prefixes such as JARs.
    Indefinite,
}

/// `--metadata-ttl minimal`: long enough to absorb the burst of lookups one `ls -l` or one
/// `open` makes, short enough that changes in S3 show up almost at once.
pub const MINIMAL_TTL: Duration = Duration::from_secs(1);

impl Ttl {
    /// The duration to hand to a cache or the kernel; `None` means "never expires".
    pub fn duration(self) -> Option<Duration> {
        match self {
            Ttl::Finite(d) => Some(d),
            Ttl::Indefinite => None,
        }
    }
}

impl std::str::FromStr for Ttl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "indefinite" => Ok(Ttl::Indefinite),
            "minimal" => Ok(Ttl::Finite(MINIMAL_TTL)),
            t => t
                .parse::<u64>()
                .map(|secs| Ttl::Finite(Duration::from_secs(secs)))
                .map_err(|_| format!("invalid TTL {s:?}: expected a number of seconds, \"indefinite\" or \"minimal\"")),
        }
    }
}

/// A bucket and the key prefix the mount shows as its root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub bucket: String,
    /// Empty, or a prefix ending in `/`.
    pub prefix: String,
}

impl Source {
    /// Parses `BUCKET`, `BUCKET/PREFIX`, `s3://BUCKET` or `s3://BUCKET/PREFIX`; `extra_prefix`
    /// (from `--prefix`) is appended to any prefix in the source.
    pub fn parse(source: &str, extra_prefix: Option<&str>) -> Result<Source, String> {
        let rest = source.strip_prefix("s3://").unwrap_or(source);
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        validate_bucket(bucket)?;
        let mut full = String::new();
        for part in [prefix, extra_prefix.unwrap_or("")] {
            let part = part.trim_matches('/');
            if !part.is_empty() {
                full.push_str(part);
                full.push('/');
            }
        }
        for segment in full.split('/').filter(|s| !s.is_empty()) {
            if segment == "." || segment == ".." || segment.contains('\0') {
                return Err(format!(
                    "invalid prefix {full:?}: segments may not be \".\", \"..\" or contain NUL"
                ));
            }
        }
        if full.contains("//") {
            return Err(format!("invalid prefix {full:?}: empty path segment"));
        }
        Ok(Source {
            bucket: bucket.to_string(),
            prefix: full,
        })
    }
}

/// S3 bucket naming rules (general purpose buckets): 3-63 characters of lowercase letters,
/// digits, dots and hyphens, starting and ending with a letter or digit, no `..`, not an IP.
pub fn validate_bucket(bucket: &str) -> Result<(), String> {
    let err = |why: &str| Err(format!("invalid bucket name {bucket:?}: {why}"));
    if bucket.is_empty() {
        return err("empty");
    }
    if !(3..=63).contains(&bucket.len()) {
        return err("must be 3 to 63 characters long");
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return err("only lowercase letters, digits, '.' and '-' are allowed");
    }
    let first_last_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !first_last_ok(bucket.as_bytes()[0]) || !first_last_ok(bucket.as_bytes()[bucket.len() - 1]) {
        return err("must start and end with a letter or digit");
    }
    if bucket.contains("..") {
        return err("must not contain \"..\"");
    }
    if bucket.parse::<std::net::Ipv4Addr>().is_ok() {
        return err("must not be formatted as an IP address");
    }
    Ok(())
}

/// Parses a size such as `1048576`, `8MiB`, `500MB`, `200GiB`, `1.5G` (K/M/G/T are binary).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "kb" => 1_000,
        "m" | "mib" => 1 << 20,
        "mb" => 1_000_000,
        "g" | "gib" => 1 << 30,
        "gb" => 1_000_000_000,
        "t" | "tib" => 1 << 40,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ));
        }
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number with an optional unit"))?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("invalid size {s:?}: out of range"));
    }
    Ok(bytes as u64)
}

/// Parses an octal permission mode such as `0644` or `755`.
pub fn parse_mode(s: &str) -> Result<u16, String> {
    let digits = s.trim().trim_start_matches("0o");
    match u16::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(m),
        _ => Err(format!(
            "invalid mode {s:?}: expected octal permission bits such as 0644"
        )),
    }
}

/// Configuration of one mount, validated.
#[derive(Clone, Debug)]
pub struct MountConfig {
    pub source: Source,
    pub mountpoint: PathBuf,
    /// The manifest to append the objects read to (`--record-access`).
    pub record_access: Option<PathBuf>,
    pub s3: S3Config,
    pub metadata_ttl: Ttl,
    pub negative_metadata_ttl: Ttl,
    pub allow_other: bool,
    pub allow_root: bool,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    /// Bytes fetched per ranged GET and unit of caching.
    pub block_size: u64,
    /// Bound of the in-memory block cache (prefetched and recently read blocks).
    pub memory_cache_bytes: u64,
    /// Prefetch GETs in flight at once.
    pub prefetch_concurrency: usize,
    pub fuse_threads: usize,
    /// FUSE connection parameters for the benchmark sweep (hidden flags); `Default` is the
    /// measured choice.
    pub fuse_tuning: FuseTuning,
    /// The disk cache, when `--cache` is given.
    pub cache: Option<CacheConfig>,
    /// The shared tier, when `--shared-cache` is given.
    pub shared_cache: Option<SharedCacheConfig>,
    /// Hand fully cached objects to the kernel as backing files (FUSE passthrough).
    pub passthrough: bool,
    /// How long a backing file stays registered after its last close (`--passthrough-hold`).
    pub passthrough_hold: std::time::Duration,
    /// Where to serve /metrics and /healthz.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub foreground: bool,
    pub log: LogConfig,
}

/// Configuration of `s3cachefs serve`: one mount per source, at `root/NAME`, all with the same
/// flags (so one cache directory, one shared tier, one metrics address, one log).
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub root: PathBuf,
    pub mounts: Vec<ServedSource>,
}

#[derive(Clone, Debug)]
pub struct ServedSource {
    /// The directory name under the root: one path component of `[A-Za-z0-9._-]`.
    pub name: String,
    pub mount: MountConfig,
}

/// Parses `NAME=BUCKET[/PREFIX/]` (or `NAME=s3://...`), the `--source` of `serve`.
pub fn parse_named_source(arg: &str) -> Result<(String, Source), String> {
    let Some((name, source)) = arg.split_once('=') else {
        return Err(format!("--source {arg:?}: expected NAME=BUCKET[/PREFIX/]"));
    };
    let name_ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !name_ok {
        return Err(format!(
            "--source {arg:?}: invalid name {name:?}: one directory name of letters, digits, '.', '_' and '-' \
             (not \".\" or \"..\")"
        ));
    }
    if source.is_empty() {
        return Err(format!("--source {arg:?}: no bucket after {name}="));
    }
    let source = Source::parse(source, None).map_err(|e| format!("--source {arg:?}: {e}"))?;
    Ok((name.to_string(), source))
}

/// Configuration of `s3cachefs warm`.
#[derive(Clone, Debug)]
pub struct WarmConfig {
    pub source: Source,
    pub s3: S3Config,
    /// The disk cache to fill (`--cache`).
    pub cache: Option<CacheConfig>,
    /// The shared tier to fill (`--shared-cache`); at least one of the two is set.
    pub shared_cache: Option<SharedCacheConfig>,
    pub block_size: u64,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub manifest: Option<PathBuf>,
    pub concurrency: usize,
    pub log: LogConfig,
}

/// The disk cache as configured (`--cache`, `--max-cache-size`, `--cache-min-free`).
#[derive(Clone, Debug)]
pub struct CacheConfig {
    pub dir: PathBuf,
    pub max_size: Option<u64>,
    /// Share (0-100) of the cache's filesystem to keep free.
    pub min_free_percent: f64,
}

/// The shared tier as configured (`--shared-cache` and its options).
#[derive(Clone, Debug)]
pub struct SharedCacheConfig {
    /// The shared bucket and the prefix its objects go under.
    pub location: Source,
    /// How to reach it: the source's settings unless `--shared-cache-region` /
    /// `--shared-cache-endpoint-url` say otherwise; one attempt per request, with its own timeout.
    pub s3: S3Config,
    pub read_only: bool,
    /// The HMAC key from `--shared-cache-key-file`.
    pub key: Option<Vec<u8>>,
    /// How long a node waits for another node's fetch of a block.
    pub lease_wait: Duration,
}

impl SharedCacheConfig {
    /// Refuses a shared-cache location whose objects would show up in the mounted tree, or
    /// that would lie over the mounted data: same endpoint and bucket, and one prefix inside the
    /// other.
    pub fn check_apart_from(&self, source: &Source, source_s3: &S3Config) -> Result<(), String> {
        let same_bucket = self.location.bucket == source.bucket && self.s3.endpoint_url == source_s3.endpoint_url;
        let (a, b) = (&self.location.prefix, &source.prefix);
        if same_bucket && (a.starts_with(b.as_str()) || b.starts_with(a.as_str())) {
            return Err(format!(
                "--shared-cache: s3://{}/{} overlaps the mounted s3://{}/{}; put the shared cache in another \
                 bucket or under a prefix outside the mounted one",
                self.location.bucket, a, source.bucket, b
            ));
        }
        Ok(())
    }
}

/// Reads an HMAC key file: at least 16 bytes once a trailing newline is removed.
pub fn read_key_file(path: &Path) -> Result<Vec<u8>, String> {
    let mut key = std::fs::read(path).map_err(|e| format!("--shared-cache-key-file {}: {e}", path.display()))?;
    while key.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        key.pop();
    }
    if key.len() < 16 {
        return Err(format!(
            "--shared-cache-key-file {}: the key must be at least 16 bytes (it has {})",
            path.display(),
            key.len()
        ));
    }
    Ok(key)
}

/// An endpoint URL given to `flag`: it must start with `http://` or `https://`.
pub fn check_endpoint_url(flag: &str, url: &str) -> Result<String, String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url.to_string())
    } else {
        Err(format!("{flag}: {url:?} must start with http:// or https://"))
    }
}

/// Parses a duration in seconds such as `2`, `0.5` or `2s`.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected seconds, e.g. 2 or 0.5"))?;
    if !v.is_finite() || !(0.0..=3600.0).contains(&v) {
        return Err(format!("invalid duration {s:?}: expected 0 to 3600 seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Parses a percentage such as `5`, `5%` or `2.5%`.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .trim()
        .parse()
        .map_err(|_| format!("invalid percentage {s:?}"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("invalid percentage {s:?}: must be between 0 and 100"));
    }
    Ok(v)
}

/// How to reach S3, without naming the SDK.
#[derive(Clone, Debug, Default)]
pub struct S3Config {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub force_path_style: bool,
    pub profile: Option<String>,
    pub no_sign_request: bool,
    pub max_attempts: u32,
    pub request_timeout: Duration,
    /// `--cache-partition`: the label of the identity whose partition of the caches is used,
    /// instead of the one learned from STS (see docs/SEMANTICS.md, "Trust model").
    pub cache_partition: Option<String>,
}

/// Checks a `--cache-partition` label: 1 to 256 printable ASCII characters.
pub fn check_partition_label(label: &str) -> Result<String, String> {
    if label.is_empty() || label.len() > 256 || !label.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "--cache-partition: {label:?} must be 1 to 256 printable ASCII characters without spaces"
        ));
    }
    Ok(label.to_string())
}

#[derive(Clone, Debug, Default)]
pub struct LogConfig {
    /// A tracing filter directive (e.g. `info`, `s3cachefs=debug`).
    pub filter: Option<String>,
    pub file: Option<PathBuf>,
}

/// Default block size: large enough that a GET's ~20 ms first-byte latency is amortized over
/// a meaningful transfer, small enough that a random 4 KiB read does not fetch much extra.
pub const DEFAULT_BLOCK_SIZE: u64 = 1 << 20;

/// Prefetch GETs in flight at once by default (`--prefetch-concurrency`): with 1 MiB blocks and
/// 20 ms to a first byte, 16 held a cold read at about 600 MB/s, 32 reached 830–980 MB/s and 48
/// little more (docs/BENCHMARKS.md, "Cold reads: buffers and request concurrency"). The read
/// layer's own default, so that a reader built without the flag uses the same.
pub const DEFAULT_PREFETCH_CONCURRENCY: u16 = {
    assert!(crate::read::DEFAULT_PREFETCH_CONCURRENCY <= u16::MAX as usize);
    crate::read::DEFAULT_PREFETCH_CONCURRENCY as u16
};

/// FUSE connection parameters that `benches/fuse_sweep.rs` varies without a rebuild (hidden
/// flags, `S3CACHEFS_FUSE_*` in the environment). `None` keeps the default chosen by that sweep
/// (docs/BENCHMARKS.md, "FUSE parameters").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FuseTuning {
    /// The kernel's read-ahead on the mount, in bytes (its backing device's `read_ahead_kb`).
    pub read_ahead: Option<u32>,
    /// Largest read request the kernel sends, in bytes (the `max_read=` mount option).
    pub max_read: Option<u32>,
    /// Background requests (read-ahead, async reads) the kernel keeps in flight at once.
    pub max_background: Option<u16>,
    /// Whether each session thread reads from its own cloned /dev/fuse descriptor.
    pub clone_fd: Option<bool>,
}

/// Bounds of the FUSE sizes: a page, and what the kernel allows (`max_read` is unbounded there,
/// but a read is never larger than 256 pages without raising `fs.fuse.max_pages_limit`; read-ahead
/// as large as 64 MiB is accepted and pointless).
pub fn validate_fuse_size(what: &str, size: u64) -> Result<u32, String> {
    if !(4 << 10..=64 << 20).contains(&size) || !size.is_multiple_of(4 << 10) {
        return Err(format!(
            "invalid {what} {size}: must be a multiple of 4KiB between 4KiB and 64MiB"
        ));
    }
    Ok(size as u32)
}

pub fn validate_block_size(size: u64) -> Result<u64, String> {
    if !(64 << 10..=64 << 20).contains(&size) || !size.is_power_of_two() {
        return Err(format!(
            "invalid block size {size}: must be a power of two between 64KiB and 64MiB"
        ));
    }
    Ok(size)
}

/// Whether `endpoint` names a host that cannot serve virtual-hosted-style requests
/// (an IP literal or localhost), so path-style addressing must be used.
pub fn endpoint_needs_path_style(endpoint: &str) -> bool {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host = if authority.starts_with('[') {
        return true; // IPv6 literal
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host == "localhost" || host.parse::<std::net::Ipv4Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(
            Source::parse("my-bucket", None).unwrap(),
            Source {
                bucket: "my-bucket".into(),
                prefix: "".into()
            }
        );
        assert_eq!(Source::parse("s3://my-bucket/jars/", None).unwrap().prefix, "jars/");
        assert_eq!(Source::parse("my-bucket/a/b", Some("c/")).unwrap().prefix, "a/b/c/");
        assert_eq!(Source::parse("s3://my-bucket", Some("/x")).unwrap().prefix, "x/");
        assert!(Source::parse("My_Bucket", None).is_err());
        assert!(Source::parse("b/../x", None).is_err());
        assert!(Source::parse("bucket/a//b", None).is_err());
    }

    #[test]
    fn named_sources() {
        let (name, src) = parse_named_source("jars=s3://jars-bucket/jars/").unwrap();
        assert_eq!(
            (name.as_str(), src.bucket.as_str(), src.prefix.as_str()),
            ("jars", "jars-bucket", "jars/")
        );
        assert_eq!(parse_named_source("d.1_x-y=data-bucket").unwrap().1.prefix, "");
        for (bad, why) in [
            ("jars", "expected NAME=BUCKET"),
            ("=b-bucket", "invalid name"),
            ("a/b=b-bucket", "invalid name"),
            ("..=b-bucket", "invalid name"),
            ("a b=b-bucket", "invalid name"),
            ("jars=", "no bucket"),
            ("jars=Bad_Bucket", "invalid bucket name"),
        ] {
            let e = parse_named_source(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn bucket_names() {
        for ok in ["abc", "my-bucket.1", "a1b", &"a".repeat(63)] {
            assert!(validate_bucket(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ab",
            "-abc",
            "abc-",
            "ABC",
            "a..b",
            "a_b",
            "192.168.1.1",
            &"a".repeat(64),
        ] {
            assert!(validate_bucket(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ttls() {
        assert_eq!("indefinite".parse::<Ttl>(), Ok(Ttl::Indefinite));
        assert_eq!("minimal".parse::<Ttl>(), Ok(Ttl::Finite(MINIMAL_TTL)));
        assert_eq!("30".parse::<Ttl>(), Ok(Ttl::Finite(Duration::from_secs(30))));
        assert!("-1".parse::<Ttl>().is_err());
        assert!("1h".parse::<Ttl>().is_err());
    }

    #[test]
    fn sizes_and_modes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("200GiB"), Ok(200 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("755"), Ok(0o755));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("rwx").is_err());
        assert!(validate_block_size(1 << 20).is_ok());
        assert!(validate_block_size(1000).is_err());
        assert_eq!(parse_percent("5%"), Ok(5.0));
        assert_eq!(parse_percent("2.5"), Ok(2.5));
        assert!(parse_percent("101").is_err());
        assert!(parse_percent("lots").is_err());
    }

    #[test]
    fn path_style_detection() {
        assert!(endpoint_needs_path_style("http://127.0.0.1:9000"));
        assert!(endpoint_needs_path_style("http://localhost:9000/"));
        assert!(endpoint_needs_path_style("http://[::1]:9000"));
        assert!(!endpoint_needs_path_style("https://s3.us-east-1.amazonaws.com"));
    }
}
