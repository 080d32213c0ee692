//! Wiring: validated config → logging → (daemon) → runtime → S3 store → caches → filesystem →
//! FUSE mount → serve until unmounted or signalled.
//!
//! Backgrounding forks before any thread exists; the child reports "mounted" or the reason it
//! failed through a pipe, so the parent's exit status tells whether the mount is live.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use tracing::{error, info};

use crate::cli::{Cli, Command, MountArgs};
use crate::config::{MountConfig, S3Config, Source};
use crate::fs::{Fs, FsSettings};
use crate::fuse::{FuseAdapter, MountOptions, Refresher, Unmounted, Unmounter};
use crate::meta::Namespace;
use crate::metrics::Metrics;
use crate::object::SourceId;
use crate::read::BlockReader;
use crate::store::s3::{RetryPolicy, S3Settings, S3Store};
use crate::store::{ListRequest, ObjectStore, StoreError};

mod http;
mod logging;
mod mountpoint;
mod notify;
mod tiers;
mod warm;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Mount(args) => mount(&args),
        Command::Warm(args) => {
            let cfg = args.resolve().map_err(|e| anyhow!(e))?;
            logging::init(&cfg.log, true)?;
            warm::run(&cfg)
        }
        Command::Stats(args) => stats(args.metrics_addr),
    }
}

/// `s3cachefs stats`: a human summary of a running mount's metrics.
fn stats(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    use crate::metrics::{parse_text, sum};
    let text = http::get(addr, "/metrics")?;
    let m = parse_text(&text);
    let get = |name: &str, labels: &[&str]| sum(&m, &format!("s3cachefs_{name}"), labels);
    let (hits, misses) = (get("cache_hits_total", &[]), get("cache_misses_total", &[]));
    let mib = |b: f64| b / (1 << 20) as f64;
    println!(
        "disk cache:   {hits:.0} hits, {misses:.0} misses ({:.1}% hit ratio)",
        100.0 * hits / (hits + misses).max(1.0)
    );
    println!(
        "bytes:        {:.1} MiB read through the mount, {:.1} MiB from the disk cache, {:.1} MiB from S3",
        mib(get("read_bytes_total", &[])),
        mib(get("cache_hit_bytes_total", &[])),
        mib(get("s3_bytes_total", &[]))
    );
    println!(
        "S3 requests:  {:.0} GET, {:.0} HEAD, {:.0} LIST ({:.0} failed)",
        get("s3_requests_total", &["operation=\"GetObject\""]),
        get("s3_requests_total", &["operation=\"HeadObject\""]),
        get("s3_requests_total", &["operation=\"ListObjectsV2\""]),
        sum(&m, "s3cachefs_s3_requests_total", &[])
            - m.iter()
                .filter(|(s, _)| s.starts_with("s3cachefs_s3_requests_total{")
                    && ["\"200\"", "\"206\"", "\"404\""].iter().any(|c| s.contains(c)))
                .map(|(_, v)| v)
                .sum::<f64>()
    );
    println!(
        "cache disk:   {:.1} MiB used, {:.0} evictions, {:.0} corrupt blocks, {:.0} write failures",
        mib(get("cache_size_bytes", &[])),
        get("cache_evictions_total", &[]),
        get("cache_corrupt_blocks_total", &[]),
        get("cache_write_failures_total", &[])
    );
    Ok(())
}

fn mount(args: &MountArgs) -> anyhow::Result<()> {
    let mut cfg = args.resolve().map_err(|e| anyhow!(e))?;
    mountpoint::check(&cfg.mountpoint)?;
    // The daemon leaves its working directory: every path must be absolute from here on.
    cfg.mountpoint = std::path::absolute(&cfg.mountpoint)?;
    if let Some(c) = &mut cfg.cache {
        c.dir = std::path::absolute(&c.dir)?;
    }
    if let Some(f) = &mut cfg.log.file {
        *f = std::path::absolute(&*f)?;
    }
    if let Some(path) = &cfg.log.file {
        logging::open_log_file(path)?;
    }
    let ready = if cfg.foreground { None } else { Some(daemonize()?) };
    logging::init(&cfg.log, cfg.foreground)?;
    match serve(&cfg, ready) {
        Ok(()) => Ok(()),
        Err((e, Some(ready))) => {
            error!("{e:#}");
            report(ready, &format!("{e:#}"));
            // The parent prints the reason; exit quietly with failure.
            std::process::exit(1);
        }
        Err((e, None)) => Err(e),
    }
}

/// Forks; the parent waits for the child's report and exits. Returns the write end of the
/// report pipe in the child.
fn daemonize() -> anyhow::Result<OwnedFd> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("cannot create pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors that we now own.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other thread exists yet (no runtime, no logging threads), so fork is sound.
    match unsafe { libc::fork() } {
        -1 => bail!("cannot fork: {}", std::io::Error::last_os_error()),
        0 => {
            drop(r);
            // SAFETY: setsid and chdir have no memory-safety preconditions. Leaving the
            // starting directory keeps the daemon from holding it busy.
            unsafe {
                libc::setsid();
                libc::chdir(c"/".as_ptr());
            }
            Ok(w)
        }
        _ => {
            drop(w);
            let mut msg = String::new();
            let _ = std::fs::File::from(r).read_to_string(&mut msg);
            match msg.strip_prefix("ok") {
                Some(_) => std::process::exit(0),
                None if msg.is_empty() => {
                    eprintln!("s3cachefs: error: the daemon exited before the mount was ready (see its log)");
                    std::process::exit(1)
                }
                None => {
                    eprintln!("s3cachefs: error: {msg}");
                    std::process::exit(1)
                }
            }
        }
    }
}

fn report(ready: OwnedFd, msg: &str) {
    let _ = std::fs::File::from(ready).write_all(msg.as_bytes());
}

/// Detaches the daemon's standard streams from the terminal of whoever started it.
fn detach_stdio() {
    // SAFETY: plain syscalls on descriptors we own; /dev/null always exists on Linux.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
}

type ServeError = (anyhow::Error, Option<OwnedFd>);

/// A live mount and the runtime that serves it.
pub struct Daemon {
    rt: tokio::runtime::Runtime,
    mounted: crate::fuse::Mounted,
    refresher: Refresher,
}

impl Daemon {
    /// Connects to S3, checks the bucket, builds the caches and mounts. On return the mount
    /// is live.
    pub fn start(cfg: &MountConfig) -> anyhow::Result<Daemon> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("s3cachefs-rt")
            .build()?;
        let metrics = Arc::new(Metrics::new());
        let store: Arc<dyn ObjectStore> =
            Arc::new(rt.block_on(S3Store::new(&s3_settings(&cfg.s3, &cfg.source.bucket), metrics.clone())));
        rt.block_on(check_bucket(store.as_ref(), &cfg.source, &cfg.s3))?;
        let listener = match cfg.metrics_addr {
            Some(addr) => Some(rt.block_on(http::bind(addr))?),
            None => None,
        };

        let source = source_id(&cfg.s3, &cfg.source);
        let plan = tiers::TierPlan {
            source: source.clone(),
            block_size: cfg.block_size,
            memory_bytes: Some(cfg.memory_cache_bytes),
            cache: cfg.cache.as_ref(),
        };
        let tiers::Tiers { chain, memory, disk } = tiers::build(plan, store.clone(), &metrics)?;
        let mut ns = Namespace::new(store.clone(), cfg.metadata_ttl, cfg.negative_metadata_ttl);
        if let Some(c) = &cfg.cache {
            let space = disk.clone().map(|d| d as Arc<dyn crate::object::DiskSpace>);
            ns = ns.persisted(&c.dir, source.as_str(), space);
        }
        let ns = Arc::new(ns);
        let in_flight = memory.expect("a mount always has a memory tier").in_flight();
        let reader = Arc::new(
            BlockReader::new(chain, in_flight, cfg.memory_cache_bytes)
                .with_prefetch_concurrency(cfg.prefetch_concurrency),
        );
        let passthrough = cfg.passthrough && disk.is_some();
        let settings = FsSettings {
            passthrough,
            uid: cfg.uid,
            gid: cfg.gid,
            file_mode: cfg.file_mode,
            dir_mode: cfg.dir_mode,
        };
        let mut fs = Fs::new(ns, reader, &cfg.source.prefix, settings);
        if let Some(d) = &disk {
            fs = fs.with_assembled_files(d.clone());
        }
        let fs = Arc::new(fs);
        if let Some(d) = &disk {
            let d = d.clone();
            metrics.set_cache_size_source(move || d.usage());
        }
        let adapter = FuseAdapter::new(fs, rt.handle().clone(), metrics.clone(), passthrough);
        let refresher = adapter.refresher();
        let opts = MountOptions {
            fsname: format!("{}/{}", cfg.source.bucket, cfg.source.prefix)
                .trim_end_matches('/')
                .to_string(),
            allow_other: cfg.allow_other,
            allow_root: cfg.allow_root,
            threads: cfg.fuse_threads,
        };
        let mounted = crate::fuse::mount(adapter, &cfg.mountpoint, &opts)
            .with_context(|| format!("cannot mount at {}", cfg.mountpoint.display()))?;
        info!(
            bucket = %cfg.source.bucket,
            prefix = %cfg.source.prefix,
            mountpoint = %cfg.mountpoint.display(),
            "mounted"
        );
        if let Some(disk) = disk {
            disk.start_background();
        }
        if let Some(listener) = listener {
            rt.spawn(http::serve(listener, metrics, cfg.mountpoint.clone()));
        }
        Ok(Daemon { rt, mounted, refresher })
    }

    /// Serves the mount on a background thread (for examples, benchmarks and embedding).
    pub fn spawn(mut self) -> BackgroundMount {
        let unmounter = self.mounted.unmounter();
        let thread = std::thread::Builder::new()
            .name("s3cachefs-session".into())
            .spawn(move || {
                let r = self.mounted.run();
                self.rt.shutdown_background();
                r
            })
            .expect("spawn session thread");
        BackgroundMount {
            unmounter,
            thread: Some(thread),
        }
    }
}

/// A mount served on a background thread; unmounted when dropped.
pub struct BackgroundMount {
    unmounter: Unmounter,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl BackgroundMount {
    /// Unmounts and waits for the session to end.
    pub fn unmount(mut self) -> anyhow::Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        if self.unmounter.unmount()? == Unmounted::Detached {
            bail!("mount was busy and has been detached lazily");
        }
        thread.join().map_err(|_| anyhow!("FUSE session thread panicked"))??;
        Ok(())
    }
}

impl Drop for BackgroundMount {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            error!("unmount failed: {e:#}");
        }
    }
}

fn serve(cfg: &MountConfig, ready: Option<OwnedFd>) -> Result<(), ServeError> {
    let Daemon {
        rt,
        mut mounted,
        refresher,
    } = match Daemon::start(cfg) {
        Ok(d) => d,
        Err(e) => return Err((e, ready)),
    };
    // Handlers are in place before anyone is told the mount is ready: a SIGTERM right after
    // READY=1 must unmount, not kill.
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        let _rt = rt.enter();
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        )
    };
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = signals else {
        return Err((anyhow!("cannot install signal handlers"), ready));
    };
    if let Some(ready) = ready {
        report(ready, "ok");
        detach_stdio();
    }

    notify::notify("READY=1");

    let unmounter = mounted.unmounter();
    rt.spawn(async move {
        let name = loop {
            tokio::select! {
                _ = term.recv() => break "SIGTERM",
                _ = int.recv() => break "SIGINT",
                _ = hup.recv() => {
                    let n = refresher.refresh_all().await;
                    info!(kernel_entries = n, "SIGHUP: cached metadata dropped; the next access asks S3");
                }
            }
        };
        info!(signal = name, "unmounting");
        notify::notify("STOPPING=1");
        match unmounter.unmount() {
            Ok(Unmounted::Clean) => {}
            Ok(Unmounted::Detached) => {
                // Exiting closes /dev/fuse, which ends the connection: files still open on the
                // detached mount fail with ENOTCONN instead of keeping the daemon alive.
                info!("exiting; files still open on the detached mount can no longer be read");
                std::process::exit(0);
            }
            Err(e) => error!("unmount failed: {e}"),
        }
    });

    let result = mounted.run();
    info!(mountpoint = %cfg.mountpoint.display(), "unmounted");
    // Do not wait for in-flight S3 requests of a filesystem that no longer exists.
    rt.shutdown_background();
    result.map_err(|e| (anyhow!("FUSE session failed: {e}"), None))
}

/// Names the object store in the caches, so blocks of two stores never mix.
pub fn source_id(s3: &S3Config, source: &Source) -> SourceId {
    SourceId::new(s3.endpoint_url.as_deref(), &source.bucket)
}

/// [`source_id`] as a string (persisted metadata records name their store this way).
pub fn store_id(s3: &S3Config, source: &Source) -> String {
    source_id(s3, source).to_string()
}

fn s3_settings(s3: &S3Config, bucket: &str) -> S3Settings {
    S3Settings {
        bucket: bucket.to_string(),
        region: s3.region.clone(),
        endpoint_url: s3.endpoint_url.clone(),
        force_path_style: s3.force_path_style,
        profile: s3.profile.clone(),
        no_sign_request: s3.no_sign_request,
        retry: RetryPolicy {
            max_attempts: s3.max_attempts,
            attempt_timeout: s3.request_timeout,
            ..RetryPolicy::default()
        },
    }
}

/// Lists one key under the prefix: proves the bucket exists, is reachable and may be listed,
/// before anything is mounted.
async fn check_bucket(store: &dyn ObjectStore, source: &Source, s3: &S3Config) -> anyhow::Result<()> {
    let bucket = &source.bucket;
    let req = ListRequest {
        prefix: &source.prefix,
        delimited: true,
        continuation: None,
        max_keys: Some(1),
    };
    match store.list(req).await {
        Ok(_) => Ok(()),
        Err(StoreError::NoSuchBucket) => bail!("bucket {bucket:?} does not exist"),
        Err(StoreError::AccessDenied(m)) => {
            bail!("access denied listing bucket {bucket:?} (s3:ListBucket is required): {m}")
        }
        Err(e @ (StoreError::Network(_) | StoreError::Timeout)) => {
            let endpoint = s3.endpoint_url.as_deref().unwrap_or("the default S3 endpoint");
            bail!("cannot reach {endpoint} for bucket {bucket:?}: {e}")
        }
        Err(e @ StoreError::Credentials(_)) => bail!("{e}"),
        Err(e) => bail!("cannot list bucket {bucket:?}: {e}"),
    }
}
