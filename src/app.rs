//! Wiring: validated config → logging → (daemon) → runtime → S3 store → caches → filesystem →
//! FUSE mount → serve until unmounted or signalled.
//!
//! Command dispatch, `Daemon` (build and mount one or several sources: `mount` and `serve`),
//! `BackgroundMount` and `serve` (signals, readiness) live here. Backgrounding is in `process`, the S3 helpers in `s3`, and the
//! `stats` and `warm` commands in their own modules.

use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use tracing::{error, info, warn};

use crate::cli::{Cli, Command, ServeArgs};
use crate::config::MountConfig;
use crate::fs::{Fs, FsSettings};
use crate::fuse::{FuseAdapter, MountOptions, Refresher, Unmounted, Unmounter};
use crate::meta::Namespace;
use crate::metrics::Metrics;
use crate::read::BlockReader;
use crate::store::ObjectStore;
use crate::store::s3::S3Store;

use process::{daemonize, detach_stdio, report};
use s3::{bucket_error, probe_bucket, s3_settings};
pub use s3::{source_id, store_id};

mod http;
pub mod identity;
mod logging;
mod manifest;
mod mountpoint;
mod notify;
mod process;
mod s3;
mod stats;
mod tiers;
mod warm;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Mount(args) => {
            let cfg = args.resolve().map_err(|e| anyhow!(e))?;
            launch(vec![Named { name: None, cfg }])
        }
        Command::Serve(args) => serve_command(&args),
        Command::Warm(args) => {
            let cfg = args.resolve().map_err(|e| anyhow!(e))?;
            logging::init(&cfg.log, true)?;
            warm::run(&cfg)
        }
        Command::Stats(args) => stats::run(args.metrics_addr),
    }
}

/// One mount of the process; `serve` names each (the name prefixes its errors).
#[derive(Clone)]
struct Named {
    name: Option<String>,
    cfg: MountConfig,
}

impl Named {
    fn context(&self) -> String {
        match &self.name {
            Some(n) => format!(
                "source {n} (s3://{}/{})",
                self.cfg.source.bucket, self.cfg.source.prefix
            ),
            None => String::new(),
        }
    }
}

/// Adds "source NAME (...)" to errors of a named mount; leaves a lone mount's as they are.
fn named<T>(m: &Named, r: anyhow::Result<T>) -> anyhow::Result<T> {
    match &m.name {
        Some(_) => r.with_context(|| m.context()),
        None => r,
    }
}

/// `s3cachefs serve`: creates ROOT and ROOT/NAME (and the `--record-access` directory) when
/// missing, then mounts every source as `mount` would.
fn serve_command(args: &ServeArgs) -> anyhow::Result<()> {
    let cfg = args.resolve().map_err(|e| anyhow!(e))?;
    let mkdir = |p: &std::path::Path| {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(p)
            .with_context(|| format!("cannot create {}", p.display()))
    };
    mkdir(&cfg.root)?;
    if let Some(dir) = &args.record_access {
        mkdir(dir)?;
    }
    for m in &cfg.mounts {
        let path = &m.mount.mountpoint;
        // A stale mount answers ENOTCONN, not NotFound: the mountpoint check clears it.
        if let Err(e) = std::fs::symlink_metadata(path)
            && e.kind() == std::io::ErrorKind::NotFound
        {
            mkdir(path)?;
        }
    }
    let mounts = cfg
        .mounts
        .into_iter()
        .map(|m| Named {
            name: Some(m.name),
            cfg: m.mount,
        })
        .collect();
    launch(mounts)
}

/// Checks the mountpoints, backgrounds (unless `--foreground`) and serves `mounts` until they
/// are unmounted or a signal arrives. Every mount has the same process-wide settings (cache,
/// metrics address, log, foreground).
fn launch(mut mounts: Vec<Named>) -> anyhow::Result<()> {
    for m in &mut mounts {
        named(m, mountpoint::check(&m.cfg.mountpoint))?;
        // The daemon leaves its working directory: every path must be absolute from here on.
        let cfg = &mut m.cfg;
        cfg.mountpoint = std::path::absolute(&cfg.mountpoint)?;
        if let Some(c) = &mut cfg.cache {
            c.dir = std::path::absolute(&c.dir)?;
        }
        if let Some(f) = &mut cfg.log.file {
            *f = std::path::absolute(&*f)?;
        }
        if let Some(f) = &mut cfg.record_access {
            *f = std::path::absolute(&*f)?;
        }
    }
    let first = mounts[0].cfg.clone();
    if let Some(path) = &first.log.file {
        logging::open_log_file(path)?;
    }
    let ready = if first.foreground { None } else { Some(daemonize()?) };
    logging::init(&first.log, first.foreground)?;
    match serve(&mounts, ready) {
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

type ServeError = (anyhow::Error, Option<OwnedFd>);

/// How often a mount started degraded (offline restart) asks S3 whether it answers again.
const DEGRADED_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether the cache holds this mount's persisted root listing (current generation, any age):
/// what an offline restart needs to serve anything.
fn persisted_root(dir: &std::path::Path, store_id: &str, prefix: &str) -> bool {
    let Ok(m) = crate::meta::MetaStore::open(dir, store_id) else {
        return false;
    };
    m.current_generation()
        .is_some_and(|g| m.load_listing(g, prefix).is_some())
}

/// Live mounts and the runtime that serves them.
pub struct Daemon {
    rt: tokio::runtime::Runtime,
    mounts: Vec<Live>,
}

/// One live mount of a [`Daemon`].
struct Live {
    mountpoint: std::path::PathBuf,
    mounted: crate::fuse::Mounted,
    refresher: Refresher,
    recorder: Option<manifest::Recorder>,
}

/// A source ready to mount: everything but the mount itself.
struct Prepared {
    fs: Arc<Fs>,
    passthrough: bool,
    disk: Option<Arc<crate::cache::DiskCache>>,
    recorder: Option<manifest::Recorder>,
    /// Set when the source was mounted without S3 answering (offline restart).
    degraded: Option<Degraded>,
}

/// A source mounted while S3 did not answer: what to probe until it does.
struct Degraded {
    store: Arc<dyn ObjectStore>,
    source: crate::config::Source,
}

/// Counts `d` in the degraded gauge and probes its bucket every [`DEGRADED_PROBE_INTERVAL`]
/// until S3 answers, then counts it out.
fn watch_until_answering(rt: &tokio::runtime::Runtime, d: Degraded, metrics: &Arc<Metrics>) {
    metrics.origin_degraded.inc();
    let metrics = metrics.clone();
    rt.spawn(async move {
        loop {
            tokio::time::sleep(DEGRADED_PROBE_INTERVAL).await;
            if probe_bucket(d.store.as_ref(), &d.source).await.is_ok() {
                metrics.origin_degraded.dec();
                info!(bucket = %d.source.bucket, prefix = %d.source.prefix, "S3 answers again: no longer degraded");
                break;
            }
        }
    });
}

impl Daemon {
    /// Connects to S3, checks the bucket, builds the caches and mounts. On return the mount
    /// is live.
    pub fn start(cfg: &MountConfig) -> anyhow::Result<Daemon> {
        Daemon::start_all(&[Named {
            name: None,
            cfg: cfg.clone(),
        }])
    }

    /// Starts every mount in one runtime, with one metrics registry, one memory tier, one shared
    /// tier and one disk cache directory. Every source is checked and prepared before the first
    /// is mounted; if a mount fails, those already mounted are unmounted.
    fn start_all(mounts: &[Named]) -> anyhow::Result<Daemon> {
        let first = &mounts[0].cfg;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("s3cachefs-rt")
            .build()?;
        let metrics = Arc::new(Metrics::new());
        let listener = match first.metrics_addr {
            Some(addr) => Some(rt.block_on(http::bind(addr))?),
            None => None,
        };
        let common_plan = tiers::TierPlan {
            // Not used: the common tiers name no source.
            source: source_id(&first.s3, &first.source, ""),
            block_size: first.block_size,
            memory_bytes: Some(first.memory_cache_bytes),
            cache: first.cache.as_ref(),
            shared: first.shared_cache.as_ref(),
            shared_writes_wait: false,
        };
        let common = rt.block_on(tiers::build_common(&common_plan, &metrics))?;
        let mut prepared = Vec::new();
        for m in mounts {
            prepared.push(named(m, prepare(&rt, &m.cfg, &common, &metrics))?);
        }
        let mut live: Vec<Live> = Vec::new();
        let mut degraded = Vec::new();
        for (m, p) in mounts.iter().zip(prepared) {
            if let Some(d) = p.degraded {
                degraded.push(d);
            }
            let cfg = &m.cfg;
            let adapter = FuseAdapter::new(
                p.fs,
                rt.handle().clone(),
                metrics.clone(),
                p.passthrough,
                cfg.passthrough_hold,
            );
            let refresher = adapter.refresher();
            let opts = MountOptions {
                fsname: format!("{}/{}", cfg.source.bucket, cfg.source.prefix)
                    .trim_end_matches('/')
                    .to_string(),
                allow_other: cfg.allow_other,
                allow_root: cfg.allow_root,
                threads: cfg.fuse_threads,
                tuning: crate::fuse::Tuning {
                    read_ahead: cfg.fuse_tuning.read_ahead,
                    max_read: cfg.fuse_tuning.max_read,
                    max_background: cfg.fuse_tuning.max_background,
                    clone_fd: cfg.fuse_tuning.clone_fd,
                },
            };
            let mounted = match crate::fuse::mount(adapter, &cfg.mountpoint, &opts) {
                Ok(mounted) => mounted,
                Err(e) => {
                    for mut l in live {
                        if let Err(e) = l.mounted.unmounter().unmount() {
                            error!(mountpoint = %l.mountpoint.display(), "unmount failed: {e}");
                        }
                    }
                    let e = anyhow::Error::new(e).context(format!("cannot mount at {}", cfg.mountpoint.display()));
                    return named(m, Err(e));
                }
            };
            info!(
                bucket = %cfg.source.bucket,
                prefix = %cfg.source.prefix,
                mountpoint = %cfg.mountpoint.display(),
                "mounted"
            );
            // One reconciliation scan and one size gauge for the one directory.
            if let (Some(disk), true) = (&p.disk, live.is_empty()) {
                disk.start_background();
                let d = disk.clone();
                metrics.set_cache_size_source(move || d.usage());
            }
            live.push(Live {
                mountpoint: cfg.mountpoint.clone(),
                mounted,
                refresher,
                recorder: p.recorder,
            });
        }
        for d in degraded {
            watch_until_answering(&rt, d, &metrics);
        }
        if let Some(listener) = listener {
            let mountpoints = live.iter().map(|l| l.mountpoint.clone()).collect();
            rt.spawn(http::serve(listener, metrics, mountpoints));
        }
        Ok(Daemon { rt, mounts: live })
    }

    /// Serves the mounts on background threads (for examples, benchmarks and embedding).
    pub fn spawn(self) -> BackgroundMount {
        let Daemon { rt, mut mounts } = self;
        let unmounters = mounts.iter_mut().map(|l| l.mounted.unmounter()).collect();
        let thread = std::thread::Builder::new()
            .name("s3cachefs-session".into())
            .spawn(move || {
                let r = run_sessions(mounts);
                rt.shutdown_background();
                r
            })
            .expect("spawn session thread");
        BackgroundMount {
            unmounters,
            thread: Some(thread),
        }
    }
}

/// Everything one source needs before it is mounted: its store (bucket checked), its chain over
/// the common tiers, its namespace, reader and filesystem, and its access recorder.
fn prepare(
    rt: &tokio::runtime::Runtime,
    cfg: &MountConfig,
    common: &tiers::Common,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Prepared> {
    let s3 = Arc::new(rt.block_on(S3Store::new(&s3_settings(&cfg.s3, &cfg.source.bucket), metrics.clone())));
    let partition = rt.block_on(identity::resolve(
        &s3,
        &cfg.s3,
        cfg.cache.as_ref().map(|c| c.dir.as_path()),
    ))?;
    let store: Arc<dyn ObjectStore> = s3;
    let mut degraded = None;
    if let Err(e) = rt.block_on(probe_bucket(store.as_ref(), &cfg.source)) {
        // Offline restart: S3 does not answer, but the cache holds this mount's metadata.
        let id = store_id(&cfg.s3, &cfg.source, &partition.token);
        let cached = e.is_transient()
            && cfg
                .cache
                .as_ref()
                .is_some_and(|c| persisted_root(&c.dir, &id, &cfg.source.prefix));
        if !cached {
            return Err(bucket_error(e, &cfg.source, &cfg.s3));
        }
        warn!(error = %e, "S3 does not answer: mounting degraded, serving what the cache holds until it does");
        degraded = Some(Degraded {
            store: store.clone(),
            source: cfg.source.clone(),
        });
    }
    let source = source_id(&cfg.s3, &cfg.source, &partition.token);
    let plan = tiers::TierPlan {
        source: source.clone(),
        block_size: cfg.block_size,
        memory_bytes: Some(cfg.memory_cache_bytes),
        cache: cfg.cache.as_ref(),
        shared: cfg.shared_cache.as_ref(),
        shared_writes_wait: false,
    };
    let tiers::Tiers {
        chain, memory, disk, ..
    } = tiers::build_chain(&plan, common, store.clone(), metrics)?;
    let mut ns = Namespace::new(store.clone(), cfg.metadata_ttl, cfg.negative_metadata_ttl);
    if let Some(c) = &cfg.cache {
        let space = disk.clone().map(|d| d as Arc<dyn crate::object::DiskSpace>);
        ns = ns.persisted(&c.dir, source.as_str(), space);
    }
    let ns = Arc::new(ns);
    let in_flight = memory.expect("a mount always has a memory tier").in_flight();
    // Free block buffers kept for reuse: an eighth of the memory cache at most, so that they
    // stay a small part of the documented memory bound.
    crate::bufpool::limit_free((cfg.memory_cache_bytes / 8) as usize);
    let reader = Arc::new(
        BlockReader::new(chain, in_flight, cfg.memory_cache_bytes).with_prefetch_concurrency(cfg.prefetch_concurrency),
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
    let recorder = match &cfg.record_access {
        Some(path) => Some(manifest::Recorder::open(path, &cfg.source.prefix)?),
        None => None,
    };
    if let Some(r) = &recorder {
        fs = fs.with_access_log(r.log());
    }
    Ok(Prepared {
        fs: Arc::new(fs),
        passthrough,
        disk,
        recorder,
        degraded,
    })
}

/// Runs every mount's session on a thread of its own until all are unmounted, then writes out
/// the access records. Returns the first session error.
fn run_sessions(mounts: Vec<Live>) -> std::io::Result<()> {
    let several = mounts.len() > 1;
    let mut recorders = Vec::new();
    let threads: Vec<_> = mounts
        .into_iter()
        .map(|l| {
            recorders.push(l.recorder);
            let mountpoint = l.mountpoint;
            let mounted = l.mounted;
            std::thread::Builder::new()
                .name("s3cachefs-mount".into())
                .spawn(move || {
                    let r = mounted.run();
                    info!(mountpoint = %mountpoint.display(), "unmounted");
                    if several {
                        info!("the other mounts keep serving until they are unmounted too");
                    }
                    r
                })
        })
        .collect();
    let mut result = Ok(());
    for t in threads {
        let r = match t {
            Ok(t) => t
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("FUSE session thread panicked"))),
            Err(e) => Err(e),
        };
        if result.is_ok() {
            result = r;
        }
    }
    for mut r in recorders.into_iter().flatten() {
        r.finish();
    }
    result
}

/// Mounts served on a background thread; unmounted when dropped.
pub struct BackgroundMount {
    unmounters: Vec<Unmounter>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl BackgroundMount {
    /// Unmounts and waits for the sessions to end.
    pub fn unmount(mut self) -> anyhow::Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let mut detached = false;
        for u in &self.unmounters {
            detached |= u.unmount()? == Unmounted::Detached;
        }
        if detached {
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

fn serve(mounts: &[Named], ready: Option<OwnedFd>) -> Result<(), ServeError> {
    let Daemon { rt, mut mounts } = match Daemon::start_all(mounts) {
        Ok(d) => d,
        Err(e) => return Err((e, ready)),
    };
    // Handlers are in place before anyone is told the mounts are ready: a SIGTERM right after
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

    let unmounters: Vec<Unmounter> = mounts.iter_mut().map(|l| l.mounted.unmounter()).collect();
    let refreshers: Vec<Refresher> = mounts.iter().map(|l| l.refresher.clone()).collect();
    let flushers: Vec<_> = mounts
        .iter()
        .filter_map(|l| l.recorder.as_ref().map(|r| r.flusher()))
        .collect();
    rt.spawn(async move {
        let name = loop {
            tokio::select! {
                _ = term.recv() => break "SIGTERM",
                _ = int.recv() => break "SIGINT",
                _ = hup.recv() => {
                    let mut n = 0;
                    for r in &refreshers {
                        n += r.refresh_all().await;
                    }
                    info!(kernel_entries = n, "SIGHUP: cached metadata dropped; the next access asks S3");
                }
            }
        };
        info!(signal = name, "unmounting");
        notify::notify("STOPPING=1");
        let mut detached = false;
        for u in &unmounters {
            match u.unmount() {
                Ok(Unmounted::Clean) => {}
                Ok(Unmounted::Detached) => detached = true,
                Err(e) => error!("unmount failed: {e}"),
            }
        }
        if detached {
            // Exiting closes /dev/fuse, which ends the connection: files still open on the
            // detached mount fail with ENOTCONN instead of keeping the daemon alive.
            for f in &flushers {
                f.flush();
            }
            info!("exiting; files still open on the detached mount can no longer be read");
            std::process::exit(0);
        }
    });

    let result = run_sessions(mounts);
    // Do not wait for in-flight S3 requests of a filesystem that no longer exists.
    rt.shutdown_background();
    result.map_err(|e| (anyhow!("FUSE session failed: {e}"), None))
}
