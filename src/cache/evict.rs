//! Space: reserving bytes against the bound before a write, and least-recently-used eviction
//! (a scan of the cache under the exclusive `evict.lock`, which also makes the shared usage
//! counter exact).

use super::*;

impl DiskCache {
    /// The most bytes the cache may hold now: the smaller of
    /// `--max-cache-size` and what keeps `--cache-min-free` of the filesystem free.
    pub(super) fn limit(&self) -> u64 {
        let used = self.usage.get();
        let mut limit = self.cfg.max_size.unwrap_or(u64::MAX);
        if let Some((avail, total)) = self.dir.space() {
            let min_free = (total as f64 * self.cfg.min_free_percent / 100.0) as u64;
            limit = limit.min((used + avail).saturating_sub(min_free));
        }
        limit
    }

    /// Reserves `n` bytes, evicting if needed. Returns the shared `evict.lock` to hold until
    /// the block is in place (or the reservation released), `None` if the bound cannot be met.
    pub(super) fn reserve(&self, n: u64) -> Option<fs::File> {
        let lock = self.root.join(EVICT_LOCK);
        for attempt in 0..2 {
            let guard = match coord::shared(&self.dir, &lock) {
                Ok(g) => g,
                Err(e) => {
                    self.warn(format_args!("cannot lock the disk cache: {e}"));
                    return None;
                }
            };
            let limit = self.limit();
            if self.usage.try_reserve(n, limit) {
                return Some(guard);
            }
            drop(guard);
            if attempt == 1 || n > limit {
                return None;
            }
            // Evict to a low watermark so that eviction is not needed again at once.
            let target = limit.saturating_sub(n).min(limit / 10 * 9);
            match coord::exclusive(&self.dir, &lock) {
                Ok(_guard) => {
                    if self.usage.get().saturating_add(n) > self.limit() {
                        self.scan_and_evict(target);
                    }
                }
                Err(e) => {
                    self.warn(format_args!("cannot lock the disk cache for eviction: {e}"));
                    return None;
                }
            }
        }
        None
    }

    /// Scans the cache (caller holds `evict.lock`), deletes least-recently-used blocks until
    /// at most `target` bytes remain, and corrects the shared counter. Returns (bytes, files).
    pub(super) fn scan_and_evict(&self, target: u64) -> (u64, u64) {
        let mut total = 0u64;
        // Eviction candidates: (last access, bytes, file, companion file removed with it).
        let mut blocks: Vec<(SystemTime, u64, PathBuf, Option<PathBuf>)> = Vec::new();
        let fixed = [
            self.cfg.dir.clone(),
            self.root.clone(),
            self.dir.area(Area::Blocks),
            self.dir.area(Area::Full),
            self.dir.area(Area::Tmp),
            self.root.join(USAGE),
            self.root.join(LOCKS),
            self.root.join(EVICT_LOCK),
        ];
        for p in &fixed {
            total += self.dir.metadata(p).map(|m| m.blocks() * 512).unwrap_or(0);
        }
        let now = SystemTime::now();
        for e in self.dir.read_dir(&self.dir.area(Area::Tmp)).unwrap_or_default() {
            let m = e.metadata();
            let age = now.duration_since(m.modified().unwrap_or(now)).unwrap_or_default();
            if age > STALE_TMP || !m.is_file() {
                let _ = self.dir.remove_file(&e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
        let mut shard_dirs: Vec<(PathBuf, u64)> = Vec::new();
        total += self.scan_shards(&self.dir.area(Area::Blocks), &mut shard_dirs, |f, m| {
            if !m.is_file() || !is_block_name(&f.file_name()) {
                self.reject(&f.path(), Some(m), "foreign file in the cache");
                return 0;
            }
            let size = m.blocks() * 512;
            blocks.push((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), size, f.path(), None));
            size
        });
        total += self.scan_full(&mut blocks, &mut shard_dirs, now);
        // Persisted metadata (v1/meta) counts toward the bound but is not evicted here.
        total += self.dir.tree_size(&self.dir.area(Area::Meta));
        let files = blocks.len() as u64;
        if total > target {
            blocks.sort_unstable_by_key(|b| b.0);
            for (_, size, path, companion) in blocks {
                if total <= target {
                    break;
                }
                if self.dir.remove_file(&path).is_ok() {
                    // An assembled object goes with its index.
                    if let Some(c) = companion {
                        let _ = self.dir.remove_file(&c);
                    }
                    total -= size;
                    self.stats.evictions.inc();
                    self.stats.evicted_bytes.inc_by(size);
                }
            }
            // Empty shard directories go too (a writer recreates one when it needs it).
            for (dir, size) in shard_dirs {
                if self.dir.remove_dir(&dir).is_ok() {
                    total -= size;
                }
            }
        }
        // No reservation is outstanding while we hold evict.lock exclusively: this is exact.
        self.usage.set(total);
        (total, files)
    }
}

impl DiskCache {
    /// Walks the shard directories under `dir`: removes foreign entries, records each shard
    /// (for removal when emptied), and hands every file to `file`, which returns the bytes it
    /// counts. Returns the bytes of the shards and of what `file` counted.
    pub(super) fn scan_shards(
        &self,
        dir: &Path,
        shard_dirs: &mut Vec<(PathBuf, u64)>,
        mut file: impl FnMut(&DirEntry, &fs::Metadata) -> u64,
    ) -> u64 {
        let mut total = 0;
        let Ok(shards) = self.dir.read_dir(dir) else { return 0 };
        for shard in shards {
            let sm = shard.metadata();
            if !sm.is_dir() || !is_shard_name(&shard.file_name()) {
                self.reject(&shard.path(), Some(sm), "foreign entry in the cache");
                let _ = self.dir.remove_tree(&shard.path());
                continue;
            }
            total += sm.blocks() * 512;
            shard_dirs.push((shard.path(), sm.blocks() * 512));
            let Ok(files) = self.dir.read_dir(&shard.path()) else {
                continue;
            };
            for f in &files {
                total += file(f, f.metadata());
            }
        }
        total
    }
}

pub(super) fn is_block_name(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| {
        n.split_once('.').is_some_and(|(h, i)| {
            h.len() == 32
                && h.bytes().all(|b| b.is_ascii_hexdigit())
                && !i.is_empty()
                && i.bytes().all(|b| b.is_ascii_digit())
        })
    })
}
