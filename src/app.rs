//! Wiring: validated config → logging → (daemon) → runtime → S3 store → caches → filesystem →
//! FUSE mount → serve until unmounted or signalled.
//!
//! Command dispatch, `Daemon` (build and mount), `BackgroundMount` and `serve` (signals,
//! readiness) live here. Backgrounding is in `process`, the S3 helpers in `s3`, and the
//! `stats` and `warm` commands in their own modules.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use tracing::{error, info, warn};

use crate::cli::{Cli, Command, MountArgs};
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
mod mountpoint;
mod notify;
mod process;
mod s3;
mod stats;
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
        Command::Stats(args) => stats::run(args.metrics_addr),
    }
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
        let s3 = Arc::new(rt.block_on(S3Store::new(&s3_settings(&cfg.s3, &cfg.source.bucket), metrics.clone())));
        let partition = rt.block_on(identity::resolve(
            &s3,
            &cfg.s3,
            cfg.cache.as_ref().map(|c| c.dir.as_path()),
        ))?;
        let store: Arc<dyn ObjectStore> = s3;
        let mut degraded = false;
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
            degraded = true;
        }
        let listener = match cfg.metrics_addr {
            Some(addr) => Some(rt.block_on(http::bind(addr))?),
            None => None,
        };

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
        } = rt.block_on(tiers::build(plan, store.clone(), &metrics))?;
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
        if degraded {
            metrics.origin_degraded.set(1);
            let (store, source, metrics) = (store.clone(), cfg.source.clone(), metrics.clone());
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(DEGRADED_PROBE_INTERVAL).await;
                    if probe_bucket(store.as_ref(), &source).await.is_ok() {
                        metrics.origin_degraded.set(0);
                        info!("S3 answers again: no longer degraded");
                        break;
                    }
                }
            });
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
