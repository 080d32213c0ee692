//! `s3cachefs warm`: preloads objects into the node's disk cache (`--cache`) and/or the shared
//! tier (`--shared-cache`), in parallel, so that mounts (running now or later, on this node or,
//! with the shared tier, any node) read them without the source. Idempotent: blocks already in
//! the cache are verified and skipped, never fetched again. Exits non-zero naming every object
//! that could not be cached.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use globset::{GlobSet, GlobSetBuilder};
use indicatif::{ProgressBar, ProgressStyle};

use super::tiers::TierPlan;
use crate::cache::DiskCache;
use crate::config::WarmConfig;
use crate::metrics::Metrics;
use crate::object::ObjectMeta;
use crate::store::s3::S3Store;
use crate::store::{ListRequest, ObjectStore, StoreError};
use crate::tier::TierChain;

fn globs(patterns: &[String], what: &str) -> anyhow::Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        // `*` stays within one path segment, `**` crosses `/`: the usual shell meaning.
        let glob = globset::GlobBuilder::new(p).literal_separator(true).build();
        b.add(glob.with_context(|| format!("{what}: invalid glob {p:?}"))?);
    }
    Ok(Some(b.build()?))
}

pub fn run(cfg: &WarmConfig) -> anyhow::Result<()> {
    let filter = Filter::new(cfg)?;
    let manifest = match &cfg.manifest {
        None => None,
        Some(path) => Some(dedup(super::manifest::read(path)?)),
    };
    let metrics = Arc::new(Metrics::new());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let s3 = Arc::new(S3Store::new(&super::s3_settings(&cfg.s3, &cfg.source.bucket), metrics.clone()).await);
        let partition = super::identity::resolve(&s3, &cfg.s3, cfg.cache.as_ref().map(|c| c.dir.as_path())).await?;
        let store: Arc<dyn ObjectStore> = s3;
        super::s3::check_bucket(store.as_ref(), &cfg.source, &cfg.s3).await?;
        let plan = TierPlan {
            source: super::source_id(&cfg.s3, &cfg.source, &partition.token),
            block_size: cfg.block_size,
            memory_bytes: None,
            cache: cfg.cache.as_ref(),
            shared: cfg.shared_cache.as_ref(),
            // Warming exists to fill the tiers: wait for room to write rather than drop.
            shared_writes_wait: true,
        };
        let tiers = super::tiers::build(plan, store.clone(), &metrics).await?;
        let prefix = &cfg.source.prefix;
        let (objects, mut failed, check) = match manifest {
            Some(entries) => {
                let (objects, failed, check) = head_all(&store, prefix, entries, cfg.concurrency).await;
                (objects, failed, Some(check))
            }
            None => (list_all(&store, prefix).await?, Vec::new(), None),
        };
        let selected: Vec<ObjectMeta> = objects.into_iter().filter(|o| filter.selects(prefix, o)).collect();
        let started = Instant::now();
        let errors = fetch_all(&tiers.chain, &selected, cfg.concurrency).await;
        let mut complete = Vec::new();
        for (o, e) in selected.iter().zip(errors) {
            match e {
                Some(e) => failed.push((o.key.to_string(), e.to_string())),
                None => complete.push(o.clone()),
            }
        }
        let warmed = complete.len();
        if let Some(shared) = &tiers.shared {
            shared.flush().await;
        }
        if let Some(disk) = tiers.disk {
            assemble_all(disk, complete).await;
        }
        let total_bytes: u64 = selected.iter().map(|o| o.size).sum();
        let origin = tiers.chain.from_origin();
        summarize(
            &metrics,
            origin,
            warmed,
            total_bytes,
            started.elapsed(),
            &failed,
            check.as_ref(),
        )
    })
}

/// What HEADs of a manifest's keys found besides the objects.
#[derive(Debug, Default)]
struct ManifestCheck {
    /// Keys in the manifest (each once).
    keys: usize,
    /// Keys whose ETag differs from the recorded one: their current version is warmed.
    changed: Vec<String>,
    /// Keys that no longer exist.
    gone: Vec<String>,
}

/// Each key once, where it first appears, with the ETag it was last recorded with (a key is
/// recorded again when its ETag changes, and a restarted mount appends to the same manifest).
fn dedup(entries: Vec<super::manifest::Entry>) -> Vec<super::manifest::Entry> {
    let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut out: Vec<super::manifest::Entry> = Vec::new();
    for e in entries {
        match at.get(&e.key) {
            Some(&i) => {
                if e.etag.is_some() {
                    out[i].etag = e.etag;
                }
            }
            None => {
                at.insert(e.key.clone(), out.len());
                out.push(e);
            }
        }
    }
    out
}

/// Which listed objects to warm: `--include` and `--exclude` globs on the key relative to the
/// prefix; never directory markers.
struct Filter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

impl Filter {
    fn new(cfg: &WarmConfig) -> anyhow::Result<Filter> {
        Ok(Filter {
            include: globs(&cfg.include, "--include")?,
            exclude: globs(&cfg.exclude, "--exclude")?,
        })
    }

    fn selects(&self, prefix: &str, o: &ObjectMeta) -> bool {
        let rel = &o.key[prefix.len()..];
        !o.key.ends_with('/')
            && self.include.as_ref().is_none_or(|g| g.is_match(rel))
            && !self.exclude.as_ref().is_some_and(|g| g.is_match(rel))
    }
}

/// Reads every block of every object through the tier chain, `concurrency` blocks at a time,
/// with progress. Returns each object's first error.
async fn fetch_all(chain: &Arc<TierChain>, objects: &[ObjectMeta], concurrency: usize) -> Vec<Option<StoreError>> {
    let total_bytes: u64 = objects.iter().map(|o| o.size).sum();
    let progress = Progress::new(objects.len() as u64, total_bytes);
    let bs = chain.block_size();
    let mut remaining: Vec<u64> = objects.iter().map(|o| o.size.div_ceil(bs)).collect();
    let mut errors: Vec<Option<StoreError>> = vec![None; objects.len()];
    for _ in remaining.iter().filter(|r| **r == 0) {
        progress.object_done(); // empty objects have no blocks
    }
    let blocks = objects
        .iter()
        .enumerate()
        .flat_map(|(i, o)| (0..o.size.div_ceil(bs)).map(move |b| (i, chain.block(o, b))));
    let mut results = futures::stream::iter(blocks)
        .map(|(i, block)| async move { (i, block.len(), chain.get(&block).await.map(drop)) })
        .buffer_unordered(concurrency);
    while let Some((i, len, result)) = results.next().await {
        if let Err(e) = result {
            errors[i].get_or_insert(e);
        }
        progress.bytes(len);
        remaining[i] -= 1;
        if remaining[i] == 0 {
            progress.object_done();
        }
    }
    progress.finish();
    errors
}

/// Whole objects, so that mounts can hand them to the kernel (passthrough) at first open.
async fn assemble_all(disk: Arc<DiskCache>, objects: Vec<ObjectMeta>) {
    let _ = tokio::task::spawn_blocking(move || {
        for o in objects {
            let _ = disk.assemble(&o);
        }
    })
    .await;
}

/// Prints the summary; an error names the objects that could not be warmed, or the blocks
/// that could not be stored.
fn summarize(
    metrics: &Metrics,
    (origin_blocks, origin_bytes): (u64, u64),
    warmed: usize,
    total_bytes: u64,
    elapsed: Duration,
    failed: &[(String, String)],
    manifest: Option<&ManifestCheck>,
) -> anyhow::Result<()> {
    let (c, shared) = (&metrics.cache, &metrics.shared);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let manifest_part = manifest.map_or(String::new(), |m| {
        format!(
            "; manifest: {} keys, {} changed since recorded, {} no longer exist",
            m.keys,
            m.changed.len(),
            m.gone.len()
        )
    });
    println!(
        "warmed {warmed} objects ({:.1} MiB) in {:.1}s: {origin_blocks} blocks fetched from S3 ({:.1} MiB), \
         {} already cached, {} from the shared cache, {} written to the shared cache{manifest_part}",
        mib(total_bytes),
        elapsed.as_secs_f64(),
        mib(origin_bytes),
        c.hits.get(),
        shared.hits.get(),
        shared.writes.get(),
    );
    if let Some(m) = manifest {
        for key in &m.changed {
            eprintln!("changed: {key}: a new version since it was recorded; warmed the current one");
        }
        for key in &m.gone {
            eprintln!("gone: {key}: no longer in the bucket");
        }
        if m.keys > 0 && m.gone.len() == m.keys {
            bail!("none of the manifest's {} key(s) exists any more", m.keys);
        }
    }
    if !failed.is_empty() {
        for (key, e) in failed {
            eprintln!("failed: {key}: {e}");
        }
        let names: Vec<&str> = failed.iter().map(|(k, _)| k.as_str()).take(10).collect();
        bail!(
            "{} object(s) could not be warmed: {}{}",
            failed.len(),
            names.join(", "),
            if failed.len() > 10 { ", ..." } else { "" }
        );
    }
    if shared.write_drops.get() + shared.errors.get() > 0 {
        bail!(
            "the shared cache could not store every block ({} write(s) dropped, {} request(s) failed); \
             see the log",
            shared.write_drops.get(),
            shared.errors.get()
        );
    }
    let unstored = c.skipped_full.get() + c.write_failures.get();
    if unstored > 0 {
        // Read but not kept: the mounts would fetch these blocks again.
        bail!(
            "{unstored} block(s) could not be stored in the cache (cache full: {}, write failures: {}); \
             raise --max-cache-size or free disk space",
            c.skipped_full.get(),
            c.write_failures.get()
        );
    }
    Ok(())
}

/// Every object under `prefix` (no delimiter: the whole subtree).
async fn list_all(store: &Arc<dyn ObjectStore>, prefix: &str) -> anyhow::Result<Vec<ObjectMeta>> {
    let mut out = Vec::new();
    let mut continuation = None;
    loop {
        let page = store
            .list(ListRequest {
                prefix,
                delimited: false,
                continuation,
                max_keys: None,
            })
            .await
            .map_err(|e| anyhow!("cannot list {prefix:?}: {e}"))?;
        out.extend(page.objects);
        continuation = page.next;
        if continuation.is_none() {
            return Ok(out);
        }
    }
}

/// HEADs every manifest key; returns the objects found, the keys that failed, and the keys
/// that changed since they were recorded or no longer exist (not failures).
async fn head_all(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    entries: Vec<super::manifest::Entry>,
    concurrency: usize,
) -> (Vec<ObjectMeta>, Vec<(String, String)>, ManifestCheck) {
    let mut check = ManifestCheck {
        keys: entries.len(),
        ..ManifestCheck::default()
    };
    let progress = &KeyProgress::new(entries.len() as u64);
    let mut results: Vec<_> = futures::stream::iter(entries.into_iter().enumerate())
        .map(|(i, e)| async move {
            let key = format!("{prefix}{}", e.key);
            let r = store.head(&key).await;
            progress.inc();
            (i, key, e.etag, r)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    // Manifest order: the order objects were first read in.
    results.sort_by_key(|r| r.0);
    progress.finish();
    let (mut found, mut failed) = (Vec::new(), Vec::new());
    for (_, key, recorded, r) in results {
        match r {
            Ok(meta) => {
                if recorded.is_some_and(|e| *e != *meta.etag) {
                    check.changed.push(key);
                }
                found.push(meta);
            }
            Err(StoreError::NotFound) => check.gone.push(key),
            Err(e) => failed.push((key, e.to_string())),
        }
    }
    (found, failed, check)
}

/// Progress of the manifest's HEADs (a million keys take minutes): a bar on a terminal, plain
/// lines every few seconds otherwise.
struct KeyProgress {
    bar: Option<ProgressBar>,
    total: u64,
    done: std::sync::atomic::AtomicU64,
    last_line: std::sync::Mutex<Instant>,
}

impl KeyProgress {
    fn new(total: u64) -> KeyProgress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("checking manifest [{bar:30}] {pos}/{len} keys {per_sec} ETA {eta}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        KeyProgress {
            bar,
            total,
            done: 0.into(),
            last_line: std::sync::Mutex::new(Instant::now()),
        }
    }

    fn inc(&self) {
        let done = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        match &self.bar {
            Some(bar) => bar.set_position(done),
            None => {
                let mut last = self.last_line.lock().unwrap();
                if last.elapsed() >= Duration::from_secs(2) {
                    *last = Instant::now();
                    eprintln!("warm: checked {done}/{} manifest keys", self.total);
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A progress bar on a terminal; plain lines every few seconds otherwise (logs, CI).
struct Progress {
    bar: Option<ProgressBar>,
    objects: u64,
    done: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
    total: u64,
    started: Instant,
    last_line: std::sync::Mutex<Instant>,
}

impl Progress {
    fn new(objects: u64, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_message(format!("0/{objects} objects"));
            // Rate and ETA keep moving while a slow block is awaited.
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Progress {
            bar,
            objects,
            done: 0.into(),
            bytes: 0.into(),
            total,
            started: Instant::now(),
            last_line: std::sync::Mutex::new(Instant::now()),
        }
    }

    fn bytes(&self, n: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let bytes = self.bytes.fetch_add(n, Relaxed) + n;
        match &self.bar {
            Some(bar) => bar.set_position(bytes),
            None => {
                let mut last = self.last_line.lock().unwrap();
                if last.elapsed() >= Duration::from_secs(2) {
                    *last = Instant::now();
                    self.line();
                }
            }
        }
    }

    fn object_done(&self) {
        let done = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{done}/{} objects", self.objects));
        }
    }

    fn line(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let (bytes, secs) = (
            self.bytes.load(Relaxed),
            self.started.elapsed().as_secs_f64().max(0.001),
        );
        let rate = bytes as f64 / secs;
        let eta = if rate > 0.0 {
            (self.total.saturating_sub(bytes)) as f64 / rate
        } else {
            0.0
        };
        eprintln!(
            "warm: {}/{} objects, {:.1}/{:.1} MiB, {:.1} MiB/s, ETA {:.0}s",
            self.done.load(Relaxed),
            self.objects,
            bytes as f64 / (1 << 20) as f64,
            self.total as f64 / (1 << 20) as f64,
            rate / (1 << 20) as f64,
            eta
        );
    }

    fn finish(&self) {
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => self.line(),
        }
    }
}
