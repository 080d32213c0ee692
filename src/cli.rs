//! Command-line parsing (clap). Only parses: `MountArgs::resolve` turns strings into a
//! validated `config::MountConfig`, and every check lives in `config`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, LogConfig, MountConfig, S3Config, Source, Ttl};

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

    /// Bound of the in-memory cache of recently read blocks.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", help_heading = "Caching")]
    pub memory_cache_size: String,

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

    /// Attempts per S3 request before an error is returned (1 = no retries).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20), help_heading = "Bucket options")]
    pub max_attempts: u32,

    /// Timeout of one S3 request attempt, body included, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600), help_heading = "Bucket options")]
    pub request_timeout: u64,

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

impl MountArgs {
    /// Validates and resolves the arguments; the error is one line for the user.
    pub fn resolve(&self) -> Result<MountConfig, String> {
        let source = Source::parse(&self.source, self.prefix.as_deref())?;
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
            config::parse_size(&self.memory_cache_size).map_err(|e| format!("--memory-cache-size: {e}"))?;
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
        let endpoint_url = self.endpoint_url.clone().filter(|e| !e.is_empty());
        if let Some(e) = &endpoint_url
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(format!("--endpoint-url: {e:?} must start with http:// or https://"));
        }
        let cache = match &self.cache {
            None => None,
            Some(dir) if dir.as_os_str().is_empty() => return Err("--cache: empty path".into()),
            Some(dir) => Some(config::CacheSettings {
                dir: dir.clone(),
                max_size: match &self.max_cache_size {
                    Some(s) => Some(config::parse_size(s).map_err(|e| format!("--max-cache-size: {e}"))?),
                    None => None,
                },
                min_free_percent: config::parse_percent(self.cache_min_free.as_deref().unwrap_or("5%"))
                    .map_err(|e| format!("--cache-min-free: {e}"))?,
            }),
        };
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Ok(MountConfig {
            mountpoint: self.mountpoint.clone(),
            s3: S3Config {
                region: self.region.clone().filter(|r| !r.is_empty()),
                force_path_style: self.force_path_style
                    || endpoint_url.as_deref().is_some_and(config::endpoint_needs_path_style),
                endpoint_url,
                profile: self.profile.clone(),
                no_sign_request: self.no_sign_request,
                max_attempts: self.max_attempts,
                request_timeout: std::time::Duration::from_secs(self.request_timeout),
            },
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
            fuse_threads: self.fuse_threads.into(),
            cache,
            foreground: self.foreground,
            log: LogConfig {
                filter: self.log_level.clone(),
                file: self.log_file.clone(),
            },
        })
    }
}
