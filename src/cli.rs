//! Command-line parsing (clap). Only parses: `MountArgs::resolve` turns strings into a
//! validated `config::MountConfig`, and every check lives in `config`.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::config::{self, LogConfig, MountConfig, S3Config, ServeConfig, ServedSource, Source, Ttl};

#[derive(Debug, Parser)]
#[command(
    name = "s3cachefs",
    version,
    about = "Mount an S3 bucket as a read-only filesystem, cached in memory and on local disk"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount a bucket (or a prefix of it) read-only at a directory.
    Mount(MountArgs),
    /// Serve several sources from one process, each at ROOT/NAME, sharing one cache, one
    /// metrics endpoint and one log.
    Serve(ServeArgs),
    /// Preload objects into a disk cache (shared with running mounts) and/or the shared cache,
    /// e.g. before pods start or when JARs are published.
    Warm(WarmArgs),
    /// Print a short summary of a running mount's metrics (hit ratio, bytes saved, S3 calls).
    Stats(StatsArgs),
}

#[derive(Debug, Args)]
pub struct WarmArgs {
    /// Bucket and optional prefix to preload: `my-bucket/jars/`, `s3://my-bucket/jars/`.
    #[arg(value_name = "BUCKET[/PREFIX]")]
    pub source: String,

    /// Only keys under this prefix (appended to any prefix in BUCKET[/PREFIX]).
    #[arg(long, help_heading = "Bucket options")]
    pub prefix: Option<String>,

    #[command(flatten)]
    pub s3: S3Args,

    /// The disk cache to fill (the same directory the mounts use). At least one of --cache and
    /// --shared-cache is needed.
    #[arg(long, value_name = "DIR", required_unless_present = "shared_cache")]
    pub cache: Option<PathBuf>,

    #[command(flatten)]
    pub shared: SharedCacheArgs,

    /// Bound of the disk cache (as for `mount`).
    #[arg(long, value_name = "SIZE")]
    pub max_cache_size: Option<String>,

    /// Keep at least this share of the cache's filesystem free [default: 5%].
    #[arg(long, value_name = "PERCENT")]
    pub cache_min_free: Option<String>,

    /// Block size; must match the mounts' --block-size for them to use the blocks.
    #[arg(long, value_name = "SIZE", default_value = "1MiB")]
    pub block_size: String,

    /// Only keys (relative to the prefix) matching this glob; repeatable. `**` crosses `/`.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,

    /// Skip keys (relative to the prefix) matching this glob; repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,

    /// Preload the keys listed in this file (one per line, relative to the prefix) instead of
    /// listing the prefix; `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,

    /// Blocks fetched in parallel.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,

    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The --metrics-addr of the mount to ask.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: std::net::SocketAddr,
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Bucket to mount, optionally with a prefix: `my-bucket`, `my-bucket/jars/`, `s3://my-bucket/jars/`.
    #[arg(value_name = "BUCKET[/PREFIX]")]
    pub source: String,

    /// Empty directory to mount at.
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,

    /// Show only keys under this prefix (appended to any prefix in BUCKET[/PREFIX]).
    #[arg(long, help_heading = "Bucket options")]
    pub prefix: Option<String>,

    /// Append each object read (key and ETag, once, in first-read order) to this manifest, for
    /// `warm --manifest`.
    #[arg(long, value_name = "FILE")]
    pub record_access: Option<PathBuf>,

    #[command(flatten)]
    pub flags: MountFlags,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory under which each source is mounted, at ROOT/NAME (created when missing).
    #[arg(value_name = "ROOT")]
    pub root: PathBuf,

    /// A source to serve at ROOT/NAME: `NAME=BUCKET[/PREFIX/]` or `NAME=s3://BUCKET[/PREFIX/]`;
    /// repeatable. NAME is letters, digits, `.`, `_` and `-`.
    #[arg(long = "source", value_name = "NAME=BUCKET[/PREFIX/]", required = true)]
    pub sources: Vec<String>,

    /// Record the objects each source reads in DIR/NAME.manifest (see `mount --record-access`).
    #[arg(long, value_name = "DIR")]
    pub record_access: Option<PathBuf>,

    #[command(flatten)]
    pub flags: MountFlags,
}

/// Every flag of `mount` but the source, the mountpoint, `--prefix` and `--record-access`:
/// `serve` takes the same ones and applies them to every source.
#[derive(Debug, Args)]
pub struct MountFlags {
    #[command(flatten)]
    pub s3: S3Args,

    /// How long metadata (listings, sizes, ETags) is trusted: SECONDS, `indefinite` or `minimal` (1 s).
    #[arg(
        long,
        value_name = "SECONDS|indefinite|minimal",
        default_value = "60",
        help_heading = "Caching"
    )]
    pub metadata_ttl: String,

    /// How long "no such file" answers are trusted [default: the metadata TTL].
    #[arg(long, value_name = "SECONDS|indefinite|minimal", help_heading = "Caching")]
    pub negative_metadata_ttl: Option<String>,

    /// Bytes per ranged GET and per cached block (power of two, 64KiB to 64MiB).
    #[arg(long, value_name = "SIZE", default_value = "1MiB", help_heading = "Caching")]
    pub block_size: String,

    /// Memory for prefetched and recently read blocks (the in-memory block cache); read-ahead
    /// windows are sized from it.
    #[arg(
        long,
        visible_alias = "memory-cache-size",
        value_name = "SIZE",
        default_value = "256MiB",
        help_heading = "Caching"
    )]
    pub max_prefetch_memory: String,

    /// Prefetch GETs in flight at once, across all open files.
    #[arg(long, value_name = "N", default_value_t = crate::config::DEFAULT_PREFETCH_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..=256), help_heading = "Caching")]
    pub prefetch_concurrency: u16,

    /// Keep object data in this directory on local disk (NVMe): persistent across restarts and
    /// shared by every s3cachefs process that uses the same directory.
    #[arg(long, value_name = "DIR", help_heading = "Caching")]
    pub cache: Option<PathBuf>,

    /// Bound of the disk cache, everything on disk included (e.g. 200GiB, 500MB) [default: no bound but --cache-min-free].
    #[arg(long, value_name = "SIZE", requires = "cache", help_heading = "Caching")]
    pub max_cache_size: Option<String>,

    /// Keep at least this share of the cache's filesystem free [default: 5%].
    #[arg(long, value_name = "PERCENT", requires = "cache", help_heading = "Caching")]
    pub cache_min_free: Option<String>,

    #[command(flatten)]
    pub shared: SharedCacheArgs,

    /// Do not hand fully cached files to the kernel (FUSE passthrough, Linux 6.9+, root);
    /// every read then goes through the daemon.
    #[arg(long, help_heading = "Caching")]
    pub no_passthrough: bool,

    /// Seconds a fully cached file stays open and registered with the kernel after its last
    /// close, so that opening it again costs no file open; a file evicted meanwhile gives its
    /// disk space back at the latest then.
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400), help_heading = "Caching")]
    pub passthrough_hold: u64,

    /// Let users other than the one who mounted access the mount.
    #[arg(long, help_heading = "Mount options")]
    pub allow_other: bool,

    /// Let root access the mount as well as the user who mounted it.
    #[arg(long, help_heading = "Mount options")]
    pub allow_root: bool,

    /// Owner of every file and directory [default: the daemon's user].
    #[arg(long, help_heading = "Mount options")]
    pub uid: Option<u32>,

    /// Group of every file and directory [default: the daemon's group].
    #[arg(long, help_heading = "Mount options")]
    pub gid: Option<u32>,

    /// Permission bits of files (octal).
    #[arg(long, value_name = "MODE", default_value = "0644", help_heading = "Mount options")]
    pub file_mode: String,

    /// Permission bits of directories (octal).
    #[arg(long, value_name = "MODE", default_value = "0755", help_heading = "Mount options")]
    pub dir_mode: String,

    /// Threads serving FUSE requests.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64), help_heading = "Mount options")]
    pub fuse_threads: u16,

    // FUSE connection parameters for `benches/fuse_sweep.rs` (docs/BENCHMARKS.md, "FUSE
    // parameters"): hidden, as the defaults are the measured choice.
    /// Kernel read-ahead on the mount (a size).
    #[arg(long, hide = true, env = "S3CACHEFS_FUSE_READ_AHEAD", value_name = "SIZE")]
    pub fuse_read_ahead: Option<String>,

    /// Largest read request the kernel sends (a size).
    #[arg(long, hide = true, env = "S3CACHEFS_FUSE_MAX_READ", value_name = "SIZE")]
    pub fuse_max_read: Option<String>,

    /// Background requests the kernel keeps in flight.
    #[arg(long, hide = true, env = "S3CACHEFS_FUSE_MAX_BACKGROUND", value_parser = clap::value_parser!(u16).range(1..))]
    pub fuse_max_background: Option<u16>,

    /// Each session thread reads from its own cloned /dev/fuse descriptor (true or false).
    #[arg(long, hide = true, env = "S3CACHEFS_FUSE_CLONE_FD", value_name = "BOOL")]
    pub fuse_clone_fd: Option<bool>,

    /// Serve Prometheus metrics at http://ADDR/metrics and a health check at /healthz.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Stay in the foreground instead of returning once the mount is live.
    #[arg(short, long)]
    pub foreground: bool,

    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, value_name = "LEVEL", help_heading = "Logging")]
    pub log_level: Option<String>,

    /// Append logs to this file [default: stderr in the foreground, syslog in the background].
    #[arg(long, value_name = "FILE", help_heading = "Logging")]
    pub log_file: Option<PathBuf>,
}

fn cache_config(dir: &Path, max: Option<&str>, min_free: Option<&str>) -> Result<config::CacheConfig, String> {
    if dir.as_os_str().is_empty() {
        return Err("--cache: empty path".into());
    }
    Ok(config::CacheConfig {
        dir: dir.to_path_buf(),
        max_size: max
            .map(|s| config::parse_size(s).map_err(|e| format!("--max-cache-size: {e}")))
            .transpose()?,
        min_free_percent: config::parse_percent(min_free.unwrap_or("5%"))
            .map_err(|e| format!("--cache-min-free: {e}"))?,
    })
}

fn check_log_level(level: Option<&str>) -> Result<(), String> {
    match level {
        Some(l) if !["error", "warn", "info", "debug", "trace"].contains(&l) => Err(format!(
            "--log-level: invalid level {l:?} (error, warn, info, debug or trace)"
        )),
        _ => Ok(()),
    }
}

impl WarmArgs {
    pub fn resolve(&self) -> Result<config::WarmConfig, String> {
        check_log_level(self.log_level.as_deref())?;
        let s3 = self.s3.resolve()?;
        let source = Source::parse(&self.source, self.prefix.as_deref())?;
        let shared_cache = self.shared.resolve(&s3)?;
        if let Some(shared) = &shared_cache {
            shared.check_apart_from(&source, &s3)?;
        }
        Ok(config::WarmConfig {
            source,
            s3: s3.clone(),
            cache: match &self.cache {
                None => None,
                Some(dir) => Some(cache_config(
                    dir,
                    self.max_cache_size.as_deref(),
                    self.cache_min_free.as_deref(),
                )?),
            },
            shared_cache,
            block_size: config::validate_block_size(
                config::parse_size(&self.block_size).map_err(|e| format!("--block-size: {e}"))?,
            )
            .map_err(|e| format!("--block-size: {e}"))?,
            include: self.include.clone(),
            exclude: self.exclude.clone(),
            manifest: self.manifest.clone(),
            concurrency: self.concurrency.into(),
            log: LogConfig {
                filter: self.log_level.clone(),
                file: None,
            },
        })
    }
}

/// The shared tier (a block cache in an S3 bucket that every node uses): shared by `mount` and
/// `warm`.
#[derive(Debug, Args)]
pub struct SharedCacheArgs {
    /// Also cache blocks in this S3 bucket, shared by every node (an S3 Express One Zone
    /// directory bucket in the nodes' zone, or any bucket): s3://BUCKET[/PREFIX/].
    #[arg(long, value_name = "s3://BUCKET[/PREFIX/]", help_heading = "Shared cache")]
    pub shared_cache: Option<String>,

    /// Region of the shared bucket [default: the source's].
    #[arg(long, requires = "shared_cache", help_heading = "Shared cache")]
    pub shared_cache_region: Option<String>,

    /// Endpoint URL of the shared bucket [default: the source's].
    #[arg(long, requires = "shared_cache", help_heading = "Shared cache")]
    pub shared_cache_endpoint_url: Option<String>,

    /// Read blocks from the shared cache but never write to it.
    #[arg(long, requires = "shared_cache", help_heading = "Shared cache")]
    pub shared_cache_read_only: bool,

    /// Sign blocks with the HMAC-SHA256 key in this file (at least 16 bytes) and serve only
    /// blocks that carry a valid signature.
    #[arg(long, value_name = "FILE", requires = "shared_cache", help_heading = "Shared cache")]
    pub shared_cache_key_file: Option<PathBuf>,

    /// How long a node waits for another node that is fetching the same block before fetching
    /// it from the source itself, in seconds.
    #[arg(long, value_name = "SECONDS", default_value = "2", help_heading = "Shared cache")]
    pub shared_cache_lease_wait: String,

    /// Timeout of one request to the shared bucket, in seconds; a slower shared cache is
    /// skipped (the source serves the read).
    #[arg(long, value_name = "SECONDS", default_value = "2", help_heading = "Shared cache")]
    pub shared_cache_timeout: String,
}

impl SharedCacheArgs {
    /// The shared tier's configuration, or `None` without `--shared-cache`. `source_s3` gives
    /// what the shared bucket inherits (credentials, profile, region, endpoint).
    pub fn resolve(&self, source_s3: &S3Config) -> Result<Option<config::SharedCacheConfig>, String> {
        let Some(url) = &self.shared_cache else { return Ok(None) };
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(format!("--shared-cache: {url:?} must look like s3://BUCKET[/PREFIX/]"));
        };
        let location = Source::parse(rest, None).map_err(|e| format!("--shared-cache: {e}"))?;
        let endpoint_url = match &self.shared_cache_endpoint_url {
            Some(e) => Some(config::check_endpoint_url("--shared-cache-endpoint-url", e)?),
            None => source_s3.endpoint_url.clone(),
        };
        let timeout =
            config::parse_seconds(&self.shared_cache_timeout).map_err(|e| format!("--shared-cache-timeout: {e}"))?;
        if timeout.is_zero() {
            return Err("--shared-cache-timeout: must be more than 0".into());
        }
        let s3 = S3Config {
            region: self.shared_cache_region.clone().or_else(|| source_s3.region.clone()),
            force_path_style: source_s3.force_path_style
                || endpoint_url.as_deref().is_some_and(config::endpoint_needs_path_style),
            endpoint_url,
            profile: source_s3.profile.clone(),
            no_sign_request: source_s3.no_sign_request,
            // The source serves any read the shared cache cannot: no retries, a short timeout.
            max_attempts: 1,
            request_timeout: timeout,
            // The source's partition names the blocks; the shared bucket has none of its own.
            cache_partition: None,
        };
        Ok(Some(config::SharedCacheConfig {
            location,
            s3,
            read_only: self.shared_cache_read_only,
            key: match &self.shared_cache_key_file {
                Some(path) => Some(config::read_key_file(path)?),
                None => None,
            },
            lease_wait: config::parse_seconds(&self.shared_cache_lease_wait)
                .map_err(|e| format!("--shared-cache-lease-wait: {e}"))?,
        }))
    }
}

/// How to reach S3: shared by `mount` and `warm`.
#[derive(Debug, Args)]
pub struct S3Args {
    /// AWS region of the bucket [default: from the AWS configuration, else us-east-1].
    #[arg(long, env = "AWS_REGION", help_heading = "Bucket options")]
    pub region: Option<String>,

    /// S3 endpoint URL, e.g. for an S3-compatible store or a VPC endpoint.
    #[arg(long, env = "AWS_ENDPOINT_URL", help_heading = "Bucket options")]
    pub endpoint_url: Option<String>,

    /// Use path-style addressing (`endpoint/bucket/key`); implied for IP and localhost endpoints.
    #[arg(long, help_heading = "Bucket options")]
    pub force_path_style: bool,

    /// AWS profile to take credentials and settings from.
    #[arg(long, env = "AWS_PROFILE", help_heading = "AWS credentials")]
    pub profile: Option<String>,

    /// Send unsigned requests (public buckets); no credentials are looked up.
    #[arg(long, help_heading = "AWS credentials")]
    pub no_sign_request: bool,

    /// Use the caches' partition named LABEL instead of the identity STS GetCallerIdentity names:
    /// data and metadata cached by one partition are never served to another. For stores without
    /// STS, or to separate identities STS cannot tell apart (see docs/SEMANTICS.md, "Trust model").
    #[arg(long, value_name = "LABEL", help_heading = "AWS credentials")]
    pub cache_partition: Option<String>,

    /// Attempts per S3 request before an error is returned (1 = no retries).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20), help_heading = "Bucket options")]
    pub max_attempts: u32,

    /// Timeout of one S3 request attempt, body included, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600), help_heading = "Bucket options")]
    pub request_timeout: u64,
}

impl S3Args {
    pub fn resolve(&self) -> Result<S3Config, String> {
        let endpoint_url = match self.endpoint_url.as_deref().filter(|e| !e.is_empty()) {
            Some(e) => Some(config::check_endpoint_url("--endpoint-url", e)?),
            None => None,
        };
        Ok(S3Config {
            region: self.region.clone().filter(|r| !r.is_empty()),
            force_path_style: self.force_path_style
                || endpoint_url.as_deref().is_some_and(config::endpoint_needs_path_style),
            endpoint_url,
            profile: self.profile.clone(),
            no_sign_request: self.no_sign_request,
            max_attempts: self.max_attempts,
            request_timeout: std::time::Duration::from_secs(self.request_timeout),
            cache_partition: match &self.cache_partition {
                Some(l) => Some(config::check_partition_label(l)?),
                None => None,
            },
        })
    }
}

impl MountArgs {
    /// Validates and resolves the arguments; the error is one line for the user.
    pub fn resolve(&self) -> Result<MountConfig, String> {
        let source = Source::parse(&self.source, self.prefix.as_deref())?;
        self.flags
            .resolve(source, self.mountpoint.clone(), self.record_access.clone())
    }
}

impl ServeArgs {
    /// Validates every source (names unique) and the flags they share.
    pub fn resolve(&self) -> Result<ServeConfig, String> {
        let mut mounts: Vec<ServedSource> = Vec::new();
        for arg in &self.sources {
            let (name, source) = config::parse_named_source(arg)?;
            if mounts.iter().any(|m| m.name == name) {
                return Err(format!("--source {arg:?}: the name {name:?} is given twice"));
            }
            let record = self.record_access.as_ref().map(|d| d.join(format!("{name}.manifest")));
            let mount = self
                .flags
                .resolve(source, self.root.join(&name), record)
                .map_err(|e| format!("--source {name}: {e}"))?;
            mounts.push(ServedSource { name, mount });
        }
        Ok(ServeConfig {
            root: self.root.clone(),
            mounts,
        })
    }
}

impl MountFlags {
    /// The configuration of one mount of `source` at `mountpoint`.
    pub fn resolve(
        &self,
        source: Source,
        mountpoint: PathBuf,
        record_access: Option<PathBuf>,
    ) -> Result<MountConfig, String> {
        let metadata_ttl: Ttl = self.metadata_ttl.parse().map_err(|e| format!("--metadata-ttl: {e}"))?;
        let negative_metadata_ttl = match &self.negative_metadata_ttl {
            Some(t) => t.parse().map_err(|e| format!("--negative-metadata-ttl: {e}"))?,
            None => metadata_ttl,
        };
        let block_size = config::validate_block_size(
            config::parse_size(&self.block_size).map_err(|e| format!("--block-size: {e}"))?,
        )
        .map_err(|e| format!("--block-size: {e}"))?;
        let memory_cache_bytes =
            config::parse_size(&self.max_prefetch_memory).map_err(|e| format!("--max-prefetch-memory: {e}"))?;
        let fuse_size = |flag: &str, v: &Option<String>| -> Result<Option<u32>, String> {
            v.as_deref()
                .map(|s| config::parse_size(s).and_then(|n| config::validate_fuse_size("size", n)))
                .transpose()
                .map_err(|e| format!("--{flag}: {e}"))
        };
        let fuse_tuning = config::FuseTuning {
            read_ahead: fuse_size("fuse-read-ahead", &self.fuse_read_ahead)?,
            max_read: fuse_size("fuse-max-read", &self.fuse_max_read)?,
            max_background: self.fuse_max_background,
            clone_fd: self.fuse_clone_fd,
        };
        if self.allow_other && self.allow_root {
            return Err("--allow-other and --allow-root are mutually exclusive (--allow-other includes root)".into());
        }
        if let Some(level) = &self.log_level
            && !["error", "warn", "info", "debug", "trace"].contains(&level.as_str())
        {
            return Err(format!(
                "--log-level: invalid level {level:?} (error, warn, info, debug or trace)"
            ));
        }
        let cache = match &self.cache {
            None => None,
            Some(dir) => Some(cache_config(
                dir,
                self.max_cache_size.as_deref(),
                self.cache_min_free.as_deref(),
            )?),
        };
        let s3 = self.s3.resolve()?;
        let shared_cache = self.shared.resolve(&s3)?;
        if let Some(shared) = &shared_cache {
            shared.check_apart_from(&source, &s3)?;
        }
        let (uid, gid) = (rustix::process::getuid().as_raw(), rustix::process::getgid().as_raw());
        Ok(MountConfig {
            mountpoint,
            record_access,
            s3,
            shared_cache,
            source,
            metadata_ttl,
            negative_metadata_ttl,
            allow_other: self.allow_other,
            allow_root: self.allow_root,
            uid: self.uid.unwrap_or(uid),
            gid: self.gid.unwrap_or(gid),
            file_mode: config::parse_mode(&self.file_mode).map_err(|e| format!("--file-mode: {e}"))?,
            dir_mode: config::parse_mode(&self.dir_mode).map_err(|e| format!("--dir-mode: {e}"))?,
            block_size,
            memory_cache_bytes,
            prefetch_concurrency: self.prefetch_concurrency.into(),
            fuse_threads: self.fuse_threads.into(),
            fuse_tuning,
            cache,
            metrics_addr: self.metrics_addr,
            passthrough: !self.no_passthrough,
            passthrough_hold: std::time::Duration::from_secs(self.passthrough_hold),
            foreground: self.foreground,
            log: LogConfig {
                filter: self.log_level.clone(),
                file: self.log_file.clone(),
            },
        })
    }
}

/// The `mount(8)` helper convention: `mount -t fuse.s3cachefs SRC DIR -o OPTS` runs
/// `mount.fuse.s3cachefs SRC DIR -o OPTS` (a symlink to this binary), and through
/// `mount.fuse3` it runs `s3cachefs SRC DIR -o OPTS`. Returns the equivalent
/// `s3cachefs mount ...` arguments, or `None` when `args` are not helper-style.
///
/// Options are the long flags with `_` for `-` (`cache=/nvme/c`, `metadata_ttl=indefinite`,
/// `allow_other`); generic mount options (`ro`, `_netdev`, `nofail`, `noauto`, `x-systemd.*`,
/// ...) are accepted and ignored, as the filesystem is always read-only.
pub fn from_mount_helper(args: &[std::ffi::OsString]) -> Option<Result<Vec<std::ffi::OsString>, String>> {
    let argv0 = Path::new(args.first()?).file_name()?.to_string_lossy().into_owned();
    let subcommands = [
        "mount",
        "serve",
        "warm",
        "stats",
        "help",
        "-h",
        "--help",
        "-V",
        "--version",
    ];
    let helper = argv0.starts_with("mount.")
        || (args.len() >= 3
            && !subcommands.contains(&&*args[1].to_string_lossy())
            && args.iter().any(|a| a.to_string_lossy().starts_with("-o")));
    if !helper {
        return None;
    }
    Some(helper_to_mount(&args[1..]))
}

fn helper_to_mount(args: &[std::ffi::OsString]) -> Result<Vec<std::ffi::OsString>, String> {
    const IGNORED: &[&str] = &[
        "ro",
        "defaults",
        "auto",
        "noauto",
        "user",
        "nouser",
        "users",
        "owner",
        "group",
        "_netdev",
        "nofail",
        "dev",
        "nodev",
        "suid",
        "nosuid",
        "exec",
        "noexec",
        "atime",
        "noatime",
        "relatime",
        "strictatime",
        "nodiratime",
        "diratime",
        "sync",
        "async",
        "lazytime",
        "nolazytime",
        "silent",
        "loud",
    ];
    let mut positional = Vec::new();
    let mut flags: Vec<std::ffi::OsString> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        let opts = if s == "-o" {
            it.next().ok_or("-o needs a value")?.to_string_lossy().into_owned()
        } else if let Some(o) = s.strip_prefix("-o") {
            o.to_string()
        } else if ["-n", "-s", "-v", "-f"].contains(&&*s) {
            continue; // no mtab, sloppy, verbose, fake: nothing to do differently
        } else if s.starts_with('-') {
            return Err(format!("unsupported mount helper flag {s}"));
        } else {
            positional.push(a.clone());
            continue;
        };
        for opt in opts.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (key, value) = opt.split_once('=').map_or((opt, None), |(k, v)| (k, Some(v)));
            if IGNORED.contains(&key) || key.starts_with("x-") || key == "comment" {
                continue;
            }
            if key == "rw" {
                return Err("s3cachefs mounts are read-only: use the `ro` option instead of `rw`".into());
            }
            flags.push(format!("--{}", key.replace('_', "-")).into());
            if let Some(v) = value {
                flags.push(v.into());
            }
        }
    }
    let [source, mountpoint] = <[std::ffi::OsString; 2]>::try_from(positional)
        .map_err(|p| format!("expected SOURCE and MOUNTPOINT, got {} arguments", p.len()))?;
    let mut out: Vec<std::ffi::OsString> = vec!["s3cachefs".into(), "mount".into(), source, mountpoint];
    out.extend(flags);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn helper(args: &[&str]) -> Option<Result<Vec<String>, String>> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        from_mount_helper(&args).map(|r| r.map(|v| v.into_iter().map(|s| s.into_string().unwrap()).collect()))
    }

    #[test]
    fn mount_helper_translation() {
        assert_eq!(
            helper(&[
                "/sbin/mount.fuse.s3cachefs",
                "b",
                "/mnt",
                "-o",
                "ro,_netdev,allow_other,cache=/c,metadata_ttl=indefinite"
            ]),
            Some(Ok([
                "s3cachefs",
                "mount",
                "b",
                "/mnt",
                "--allow-other",
                "--cache",
                "/c",
                "--metadata-ttl",
                "indefinite"
            ]
            .map(String::from)
            .to_vec()))
        );
        assert_eq!(
            helper(&[
                "s3cachefs",
                "b",
                "/mnt",
                "-oro,x-systemd.automount,region=eu-west-1",
                "-n"
            ]),
            Some(Ok(["s3cachefs", "mount", "b", "/mnt", "--region", "eu-west-1"]
                .map(String::from)
                .to_vec()))
        );
        assert!(helper(&["s3cachefs", "mount", "b", "/mnt"]).is_none());
        assert!(helper(&["s3cachefs", "--version"]).is_none());
        assert!(
            helper(&["mount.fuse.s3cachefs", "b", "/mnt", "-o", "rw"])
                .unwrap()
                .unwrap_err()
                .contains("read-only")
        );
        assert!(helper(&["mount.fuse.s3cachefs", "b", "-o", "ro"]).unwrap().is_err());
    }

    /// Without `--block-size`, a mount and `warm` use the documented default, the same for both:
    /// a cache warmed with another block size would be cold for a default mount.
    #[test]
    fn mount_and_warm_default_to_the_same_block_size() {
        let Command::Mount(m) = Cli::try_parse_from(["s3cachefs", "mount", "b", "/mnt"])
            .unwrap()
            .command
        else {
            panic!("not a mount")
        };
        let Command::Warm(w) = Cli::try_parse_from(["s3cachefs", "warm", "--cache", "/c", "b"])
            .unwrap()
            .command
        else {
            panic!("not a warm")
        };
        for default in [&m.flags.block_size, &w.block_size] {
            assert_eq!(config::parse_size(default), Ok(config::DEFAULT_BLOCK_SIZE));
        }
    }

    /// `-o shared_cache=...` (fstab, `mount -t fuse.s3cachefs`) reaches the shared tier's config.
    #[test]
    fn mount_helper_passes_the_shared_cache_options() {
        let args = helper(&[
            "/sbin/mount.fuse.s3cachefs",
            "src-bucket/jars/",
            "/mnt",
            "-o",
            "ro,shared_cache=s3://cache-bucket/c/,shared_cache_read_only,shared_cache_lease_wait=0.5",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            &args[4..],
            [
                "--shared-cache",
                "s3://cache-bucket/c/",
                "--shared-cache-read-only",
                "--shared-cache-lease-wait",
                "0.5"
            ]
        );
        let Command::Mount(m) = Cli::try_parse_from(&args).unwrap().command else {
            panic!("not a mount")
        };
        let cfg = m.resolve().unwrap();
        let shared = cfg.shared_cache.expect("shared cache configured");
        assert_eq!(shared.location.bucket, "cache-bucket");
        assert_eq!(shared.location.prefix, "c/");
        assert!(shared.read_only);
        assert_eq!(shared.lease_wait, std::time::Duration::from_millis(500));
        assert_eq!(
            shared.s3.max_attempts, 1,
            "the source serves what the shared tier cannot"
        );
    }
}
