//! The namespace: what names exist under a directory prefix, from S3 listings, cached in memory
//! and, with `--cache`, persisted on disk (`persist`) so that a restarted daemon, or another
//! daemon sharing the cache directory, answers without S3.
//!
//! Rooms: `names` (which keys are shown, and as what: hidden keys, shadowing), `fetch` (the
//! requests to S3), `ttl` (expiry counted from the fetch), `persist` and `format` (records on
//! disk), `error` (`MetaError`, what the layers above see of a failure). This file keeps
//! `Namespace`: its caches, and the order in which a question is answered.
//!
//! Two caches, both expiring after the metadata TTL (negative answers after the negative TTL;
//! `indefinite` never expires), counted from when the answer was fetched from S3:
//! - whole directory listings, filled by `readdir` and authoritative for every name in that
//!   directory while fresh (positive and negative answers come from it without S3);
//! - single lookups, each resolved with a HeadObject and a one-key ListObjectsV2 issued together.
//!
//! Concurrent misses for the same key are coalesced (moka's `try_get_with`), so a burst of
//! lookups of one cold name costs one HEAD and one LIST.
//!
//! With persistence, a miss in memory reads the persisted record (the directory's listing,
//! then the key's lookup answer) before asking S3, and every answer fetched from S3 is written
//! back with its wall-clock fetch time. A persisted answer is used only while it is fresh by
//! that time under this daemon's TTLs, and it enters memory with its age (an `Instant` in the
//! past), so neither the daemon nor the kernel trusts it longer than the TTL from the fetch.
//! Invariants: the persisted generation is read *before* the S3 request whose answer is
//! written under it, so an answer fetched before an `invalidate_all` can never be written into
//! the generation that follows it; nothing persisted is read before a miss, so mounting costs
//! nothing however much is persisted.

mod error;
mod fetch;
mod format;
mod listing;
mod names;
pub mod persist;
mod ttl;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::future::Cache;
use tracing::{info, warn};

pub use error::MetaError;
pub use listing::{Brief, DirListing};
pub use persist::MetaStore;

use crate::config::Ttl;
use crate::object::{DiskSpace, ObjectMeta};
use crate::store::ObjectStore;
use fetch::Fetcher;
// `format` checks decoded names with the same rule.
use names::invalid_name;
use ttl::{ListingExpiry, Stamp, Ttls, restore};

/// What a name in a directory is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    File(ObjectMeta),
    Dir,
}

/// The answer to a lookup: an entry, or a cached "no such name".
pub type Lookup = Option<Entry>;

/// An answer of the namespace and when it was fetched from S3 (for the remaining TTL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub entry: Lookup,
    pub fetched: Instant,
}

/// The names of a directory and what they are, sorted by name.
pub type Entries = Vec<(Arc<str>, Entry)>;

/// Default bounds of the in-memory metadata caches (entries): a few hundred bytes each, so
/// about 200 MiB at the worst; past them the least recently used entries are refetched.
const MAX_LOOKUP_ENTRIES: u64 = 1_000_000;
const MAX_LISTED_ENTRIES: u64 = 1_000_000;

pub struct Namespace {
    fetch: Fetcher,
    ttls: Ttls,
    lookups: Cache<Arc<str>, Resolved>,
    dirs: Cache<Arc<str>, Arc<DirListing>>,
    /// Directories known to hold more than one listing page: names in them are looked up
    /// one by one instead of by listing the directory.
    large_dirs: moka::sync::Cache<Arc<str>, ()>,
    /// Answer lookups in small directories by listing them (see `lookup`).
    list_small_dirs: bool,
    persist: Option<Arc<MetaStore>>,
    /// Set when persisted records could not be invalidated: never read them again.
    persist_off: AtomicBool,
}

impl Namespace {
    /// A namespace cached in memory only.
    pub fn new(store: Arc<dyn ObjectStore>, ttl: Ttl, negative_ttl: Ttl) -> Namespace {
        let ttls = Ttls {
            positive: ttl.duration(),
            negative: negative_ttl.duration(),
        };
        let lookups = Cache::builder()
            .max_capacity(MAX_LOOKUP_ENTRIES)
            .expire_after(ttls)
            .build();
        let dirs = Cache::builder()
            .max_capacity(MAX_LISTED_ENTRIES)
            .weigher(|_: &Arc<str>, l: &Arc<DirListing>| l.len().clamp(1, u32::MAX as usize) as u32)
            .expire_after(ListingExpiry(ttls.positive))
            .build();
        Namespace {
            fetch: Fetcher::new(store),
            ttls,
            lookups,
            dirs,
            large_dirs: {
                let b = moka::sync::Cache::builder().max_capacity(100_000);
                match ttls.positive {
                    Some(t) => b.time_to_live(t.max(Duration::from_secs(1))).build(),
                    None => b.build(),
                }
            },
            list_small_dirs: true,
            persist: None,
            persist_off: AtomicBool::new(false),
        }
    }

    /// Resolves every name with its own HeadObject and one-key ListObjectsV2, never by
    /// listing its directory.
    pub fn one_name_at_a_time(mut self) -> Namespace {
        self.list_small_dirs = false;
        self
    }

    /// Also persists what is learned in `persist`, and answers misses from it.
    pub fn with_persistence(mut self, persist: Arc<MetaStore>) -> Namespace {
        self.persist = Some(persist);
        self
    }

    /// Persists metadata under the cache directory `cache_dir` for the store `store_id`
    /// (endpoint and bucket), and starts the background cleanup of old records. If the
    /// directory cannot be used, logs why and keeps metadata in memory only.
    pub fn persisted(self, cache_dir: &Path, store_id: &str, space: Option<Arc<dyn DiskSpace>>) -> Namespace {
        match MetaStore::open(cache_dir, store_id) {
            Ok(p) => {
                let p = Arc::new(match space {
                    Some(s) => p.with_space(s),
                    None => p,
                });
                info!(dir = %p.root().display(), "persisting metadata");
                p.start_background();
                self.with_persistence(p)
            }
            Err(e) => {
                warn!(dir = %cache_dir.display(), "cannot persist metadata ({e}); keeping it in memory only");
                self
            }
        }
    }

    /// The positive TTL (`None`: indefinite).
    pub fn ttl(&self) -> Option<Duration> {
        self.ttls.positive
    }

    /// How much longer an answer may be trusted (`None`: indefinitely); the kernel is told the
    /// same, so a change in S3 shows within one TTL of the fetch, not two.
    pub fn valid_for(&self, r: &Resolved) -> Option<Duration> {
        self.ttls.left(r)
    }

    /// How much longer the entries of `listing` may be trusted (`None`: indefinitely).
    pub fn listing_valid_for(&self, listing: &DirListing) -> Option<Duration> {
        ttl::remaining(self.ttls.positive, listing.fetched)
    }

    /// Looks `name` up in the directory whose key prefix is `dir` (empty or ending in `/`).
    ///
    /// The first step that can answer does: a name that cannot exist; the directory's listing
    /// in memory; the lookup cache in memory; then, once per key however many ask at once
    /// (`resolve_miss`), the persisted records, a listing of a small directory, and last a
    /// HEAD and a one-key LIST of the name.
    pub async fn lookup(&self, dir: &str, name: &str) -> Result<Resolved, MetaError> {
        if invalid_name(name).is_some() {
            return Ok(Resolved {
                entry: None,
                fetched: Instant::now(),
            });
        }
        if let Some(r) = self.try_listing_in_memory(dir, name).await {
            return Ok(r);
        }
        let key: Arc<str> = format!("{dir}{name}").into();
        self.lookups
            .try_get_with(key.clone(), self.resolve_miss(dir, name, key))
            .await
            .map_err(|e: Arc<MetaError>| (*e).clone())
    }

    /// Answers `name` from a listing of its directory, if the listing can tell.
    fn answer_from(&self, listing: &DirListing, name: &str) -> Option<Resolved> {
        match listing.get(name) {
            Some(e) => Some(Resolved {
                entry: Some(e),
                fetched: listing.fetched,
            }),
            // A listing proves a name absent only for as long as the negative TTL.
            None if self.ttls.negative.is_none_or(|t| listing.fetched.elapsed() < t) => Some(Resolved {
                entry: None,
                fetched: listing.fetched,
            }),
            None => None,
        }
    }

    /// Applies when the directory's listing is in memory and fresh (after a `readdir`, or an
    /// earlier lookup in a small directory): no request at all.
    async fn try_listing_in_memory(&self, dir: &str, name: &str) -> Option<Resolved> {
        let listing = self.dirs.get(dir).await?;
        self.answer_from(&listing, name)
    }

    /// A name that neither memory cache could answer. Runs once per key at a time: concurrent
    /// lookups of the key wait for this one's answer.
    async fn resolve_miss(&self, dir: &str, name: &str, key: Arc<str>) -> Result<Resolved, MetaError> {
        let mut generation = None;
        if self.persist.is_some() {
            if let Some(r) = self.try_persisted_listing(dir, name).await {
                return Ok(r);
            }
            let (g, found) = self.try_persisted_lookup(&key).await;
            if let Some(r) = found {
                return Ok(r);
            }
            generation = g;
        }
        if self.list_small_dirs
            && !self.large_dirs.contains_key(dir)
            && let Some(r) = self.try_small_listing(dir, name, generation).await?
        {
            return Ok(r);
        }
        self.ask_head_and_list(key, generation).await
    }

    /// Applies with persistence: the directory's persisted listing, if fresh, loaded into
    /// memory (one load per directory, however many names are looked up in it at once).
    async fn try_persisted_listing(&self, dir: &str, name: &str) -> Option<Resolved> {
        let listing = self
            .dirs
            .optionally_get_with(dir.into(), async { self.disk_listing(dir).await.1 })
            .await?;
        self.answer_from(&listing, name)
    }

    /// Applies with persistence: the key's own persisted answer, if fresh under the TTL its
    /// kind follows. Also returns the current generation, for writing back what S3 answers.
    async fn try_persisted_lookup(&self, key: &Arc<str>) -> (Option<u64>, Option<Resolved>) {
        let k = key.clone();
        let Some((generation, found)) = self
            .on_disk(move |p| {
                let g = p.current_generation()?;
                Some((g, p.load_lookup(g, &k)))
            })
            .await
        else {
            return (None, None);
        };
        let resolved = found.and_then(|(at, entry)| {
            let fetched = restore(at, self.ttls.of(&entry))?;
            Some(Resolved { entry, fetched })
        });
        (Some(generation), resolved)
    }

    /// Applies unless the directory is known to be large (or `one_name_at_a_time`): a directory
    /// that fits in one listing page is listed whole, and one request answers every name in it
    /// (a JAR directory opened file by file costs one LIST, not a HEAD and a LIST per JAR).
    /// `None` when the directory turns out larger than a page, or the listing cannot tell.
    async fn try_small_listing(
        &self,
        dir: &str,
        name: &str,
        generation: Option<u64>,
    ) -> Result<Option<Resolved>, MetaError> {
        // A failed listing fails the lookup (rather than trying HEAD+LIST next and doubling
        // the time it takes to report an unreachable S3).
        let failed = Mutex::new(None);
        let listing = self
            .dirs
            .optionally_get_with(dir.into(), async {
                self.fetch_small_listing(dir, generation).await.unwrap_or_else(|e| {
                    *failed.lock().unwrap() = Some(e);
                    None
                })
            })
            .await;
        if let Some(e) = failed.into_inner().unwrap() {
            return Err(e);
        }
        Ok(listing.and_then(|l| self.answer_from(&l, name)))
    }

    /// The last resort: a HEAD and a one-key LIST of the name, written back to the persisted
    /// `generation` (not with a TTL of 0).
    async fn ask_head_and_list(&self, key: Arc<str>, generation: Option<u64>) -> Result<Resolved, MetaError> {
        let stamp = Stamp::now();
        let entry = self.fetch.lookup(&key).await?;
        if let Some(g) = generation
            && self.ttls.of(&entry) != Some(Duration::ZERO)
        {
            let e = entry.clone();
            self.on_disk(move |p| {
                p.save_lookup(g, &key, stamp.wall, &e);
                Some(())
            })
            .await;
        }
        Ok(Resolved {
            entry,
            fetched: stamp.instant,
        })
    }

    /// `meta` with an ETag to pin reads to: `meta` itself, or, when its listing carried no
    /// ETag (some S3-compatible servers), the object's current metadata from a HEAD, which is
    /// not cached. `NotFound` if the object is gone.
    pub async fn with_etag(&self, meta: ObjectMeta) -> Result<ObjectMeta, MetaError> {
        if !meta.etag.is_empty() {
            return Ok(meta);
        }
        self.fetch.head(&meta.key).await
    }

    /// The whole listing of directory `dir` (empty or ending in `/`), paginated as needed.
    pub async fn list_dir(&self, dir: &str) -> Result<Arc<DirListing>, MetaError> {
        self.dirs
            .try_get_with(dir.into(), async {
                let (generation, persisted) = self.disk_listing(dir).await;
                if let Some(l) = persisted {
                    return Ok(l);
                }
                let stamp = Stamp::now();
                let listing = self
                    .fetch
                    .listing(dir, stamp.instant, None)
                    .await?
                    .expect("no page limit");
                self.persist_listing(generation, dir, &stamp, &listing).await;
                Ok(listing)
            })
            .await
            .map_err(|e: Arc<MetaError>| (*e).clone())
    }

    /// The listing of `dir` if it fits in one page (persisted like any listing); `None` when
    /// it does not (remembered, so its names are looked up one by one).
    async fn fetch_small_listing(
        &self,
        dir: &str,
        generation: Option<u64>,
    ) -> Result<Option<Arc<DirListing>>, MetaError> {
        let stamp = Stamp::now();
        Ok(match self.fetch.listing(dir, stamp.instant, Some(1)).await? {
            Some(listing) => {
                self.persist_listing(generation, dir, &stamp, &listing).await;
                Some(listing)
            }
            None => {
                self.large_dirs.insert(dir.into(), ());
                None
            }
        })
    }

    /// Runs `f` on the persisted store, off the async workers; `None` without persistence.
    async fn on_disk<T: Send + 'static>(&self, f: impl FnOnce(&MetaStore) -> Option<T> + Send + 'static) -> Option<T> {
        let p = self.persist.clone()?;
        if self.persist_off.load(Ordering::Relaxed) {
            return None;
        }
        tokio::task::spawn_blocking(move || f(&p)).await.ok().flatten()
    }

    /// The current generation and the persisted listing of `dir` if it is fresh.
    async fn disk_listing(&self, dir: &str) -> (Option<u64>, Option<Arc<DirListing>>) {
        let d = dir.to_string();
        let Some((generation, found)) = self
            .on_disk(move |p| {
                let g = p.current_generation()?;
                Some((g, p.load_listing(g, &d)))
            })
            .await
        else {
            return (None, None);
        };
        let listing = found.and_then(|(at, entries)| {
            restore(at, self.ttls.positive).map(|fetched| Arc::new(DirListing::new(dir, entries, fetched)))
        });
        (Some(generation), listing)
    }

    /// Writes a listing fetched at `stamp` to the persisted generation (not with a TTL of 0).
    async fn persist_listing(&self, generation: Option<u64>, dir: &str, stamp: &Stamp, listing: &Arc<DirListing>) {
        if let Some(g) = generation
            && self.ttls.positive != Some(Duration::ZERO)
        {
            let (d, l, wall) = (dir.to_string(), listing.clone(), stamp.wall);
            self.on_disk(move |p| {
                p.save_listing(g, &d, wall, &l.entries());
                Some(())
            })
            .await;
        }
    }

    /// Forgets what is cached about `name` in `dir` (and the listing of `dir`), in memory and
    /// on disk (for every process sharing the cache directory).
    pub async fn invalidate(&self, dir: &str, name: &str) {
        let key = format!("{dir}{name}");
        // Disk first: a miss in memory in between must not reload the old answer.
        let (d, k) = (dir.to_string(), key.clone());
        self.on_disk(move |p| {
            p.forget(&d, &k);
            Some(())
        })
        .await;
        self.dirs.invalidate(dir).await;
        self.lookups.invalidate(key.as_str()).await;
    }

    /// Forgets everything cached, in memory and on disk: one write of a new persisted
    /// generation invalidates every record, for every process sharing the cache directory.
    pub fn invalidate_all(&self) {
        if let Some(p) = &self.persist
            && !self.persist_off.load(Ordering::Relaxed)
        {
            if p.invalidate_all() {
                p.start_background();
            } else {
                // The old records cannot be invalidated: never read them again.
                self.persist_off.store(true, Ordering::Relaxed);
            }
        }
        self.dirs.invalidate_all();
        self.lookups.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;
    use crate::store::memory::MemoryStore;
    use std::sync::atomic::Ordering;
    use std::time::SystemTime;

    fn ns(store: &Arc<MemoryStore>, ttl: Ttl) -> Namespace {
        Namespace::new(store.clone(), ttl, ttl).one_name_at_a_time()
    }

    #[tokio::test]
    async fn lookup_resolves_files_dirs_and_misses_then_caches() {
        let s = Arc::new(MemoryStore::new());
        s.put("jars/app.jar", "x");
        s.put("jars", "shadowed");
        s.put("marker/", "");
        let ns = ns(&s, Ttl::Indefinite);
        assert_eq!(ns.lookup("", "jars").await.unwrap().entry, Some(Entry::Dir));
        assert_eq!(ns.lookup("", "marker").await.unwrap().entry, Some(Entry::Dir));
        assert!(matches!(ns.lookup("jars/", "app.jar").await.unwrap().entry, Some(Entry::File(m)) if m.size == 1));
        assert_eq!(ns.lookup("", "nope").await.unwrap().entry, None);
        let before = s.requests();
        assert_eq!(before, 8, "each cold lookup is one HEAD plus one LIST");
        for _ in 0..3 {
            ns.lookup("", "jars").await.unwrap();
            ns.lookup("jars/", "app.jar").await.unwrap();
            ns.lookup("", "nope").await.unwrap();
        }
        assert_eq!(s.requests(), before, "cached lookups make no requests");
    }

    #[tokio::test]
    async fn listing_answers_lookups_including_negative() {
        let s = Arc::new(MemoryStore::new());
        s.put("d/a", "1");
        s.put("d/b/c", "2");
        let ns = ns(&s, Ttl::Indefinite);
        ns.list_dir("d/").await.unwrap();
        let before = s.requests();
        assert!(matches!(
            ns.lookup("d/", "a").await.unwrap().entry,
            Some(Entry::File(_))
        ));
        assert_eq!(ns.lookup("d/", "b").await.unwrap().entry, Some(Entry::Dir));
        assert_eq!(ns.lookup("d/", "zzz").await.unwrap().entry, None);
        assert_eq!(s.requests(), before);
    }

    #[tokio::test]
    async fn ttl_zero_refetches_and_expiry_sees_changes() {
        let s = Arc::new(MemoryStore::new());
        s.put("f", "1");
        let ns = ns(&s, Ttl::Finite(Duration::ZERO));
        ns.lookup("", "f").await.unwrap();
        ns.lookup("", "f").await.unwrap();
        assert_eq!(s.heads.load(Ordering::Relaxed), 2);
        s.remove("f");
        assert_eq!(ns.lookup("", "f").await.unwrap().entry, None);
    }

    #[tokio::test]
    async fn concurrent_cold_lookups_are_coalesced() {
        let s = Arc::new(crate::store::fault::FaultStore::new(MemoryStore::new()));
        s.inner().put("k", "v");
        s.set_latency(Duration::from_millis(50));
        let ns = Arc::new(Namespace::new(s.clone(), Ttl::Indefinite, Ttl::Indefinite).one_name_at_a_time());
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let ns = ns.clone();
                tokio::spawn(async move { ns.lookup("", "k").await.unwrap() })
            })
            .collect();
        for t in tasks {
            assert!(matches!(t.await.unwrap().entry, Some(Entry::File(_))));
        }
        assert_eq!(s.inner().heads.load(Ordering::Relaxed), 1);
        assert_eq!(s.inner().lists.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn lookups_in_small_directories_list_them_once() {
        let s = Arc::new(MemoryStore::new());
        for i in 0..60 {
            s.put(&format!("jars/lib{i}.jar"), "x");
        }
        s.put("jars/sub/a", "y");
        let ns = Namespace::new(s.clone(), Ttl::Indefinite, Ttl::Indefinite);
        for i in 0..60 {
            assert!(matches!(
                ns.lookup("jars/", &format!("lib{i}.jar")).await.unwrap().entry,
                Some(Entry::File(_))
            ));
        }
        assert_eq!(ns.lookup("jars/", "sub").await.unwrap().entry, Some(Entry::Dir));
        assert_eq!(ns.lookup("jars/", "missing.jar").await.unwrap().entry, None);
        assert_eq!(
            (s.lists.load(Ordering::Relaxed), s.heads.load(Ordering::Relaxed)),
            (1, 0),
            "one LIST for 62 names"
        );
        // A directory larger than one page (1,000 entries) is not listed for a lookup.
        for i in 0..1001 {
            s.put(&format!("big/f{i:04}"), "z");
        }
        let before = s.requests();
        assert!(matches!(
            ns.lookup("big/", "f0500").await.unwrap().entry,
            Some(Entry::File(_))
        ));
        assert!(matches!(
            ns.lookup("big/", "f0501").await.unwrap().entry,
            Some(Entry::File(_))
        ));
        assert_eq!(s.requests() - before, 1 + 2 + 2, "one page, then HEAD+LIST per name");
    }

    #[tokio::test]
    async fn an_etag_missing_from_a_listing_comes_from_one_uncached_head() {
        let s = Arc::new(MemoryStore::new());
        let etag = s.put("d/k", "v");
        let ns = ns(&s, Ttl::Indefinite);
        let Some(Entry::File(listed)) = ns.lookup("d/", "k").await.unwrap().entry else {
            panic!("a file");
        };
        let before = s.requests();
        assert_eq!(ns.with_etag(listed.clone()).await.unwrap(), listed, "no request");
        assert_eq!(s.requests(), before);
        let bare = ObjectMeta {
            etag: "".into(),
            ..listed
        };
        for _ in 0..2 {
            assert_eq!(&*ns.with_etag(bare.clone()).await.unwrap().etag, etag);
        }
        assert_eq!(s.heads.load(Ordering::Relaxed), 1 + 2, "one HEAD each time");
        s.remove("d/k");
        assert_eq!(ns.with_etag(bare).await, Err(MetaError::NotFound));
    }

    #[tokio::test]
    async fn a_failed_directory_listing_fails_the_lookup_at_once() {
        let s = Arc::new(crate::store::fault::FaultStore::new(MemoryStore::new()));
        s.inner().put("d/k", "v");
        let ns = Namespace::new(s.clone(), Ttl::Indefinite, Ttl::Indefinite);
        s.fail_next(1, StoreError::Timeout);
        assert_eq!(ns.lookup("d/", "k").await.map(|r| r.entry), Err(MetaError::Timeout));
        assert_eq!(s.inner().requests(), 0, "no HEAD+LIST after the listing failed");
        assert!(matches!(
            ns.lookup("d/", "k").await.map(|r| r.entry),
            Ok(Some(Entry::File(_)))
        ));
    }

    #[tokio::test]
    async fn errors_are_not_cached() {
        let s = Arc::new(crate::store::fault::FaultStore::new(MemoryStore::new()));
        s.inner().put("k", "v");
        let ns = Namespace::new(s.clone(), Ttl::Indefinite, Ttl::Indefinite).one_name_at_a_time();
        s.fail_next(1, StoreError::Timeout);
        assert_eq!(ns.lookup("", "k").await.map(|r| r.entry), Err(MetaError::Timeout));
        assert!(matches!(
            ns.lookup("", "k").await.map(|r| r.entry),
            Ok(Some(Entry::File(_)))
        ));
    }

    #[tokio::test]
    async fn listing_negatives_expire_with_the_negative_ttl_and_ttls_count_down() {
        let s = Arc::new(MemoryStore::new());
        s.put("d/a", "1");
        let ns =
            Namespace::new(s.clone(), Ttl::Indefinite, Ttl::Finite(Duration::from_millis(200))).one_name_at_a_time();
        ns.list_dir("d/").await.unwrap();
        assert_eq!(ns.lookup("d/", "b").await.unwrap().entry, None);
        s.put("d/b", "2");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(matches!(
            ns.lookup("d/", "b").await.unwrap().entry,
            Some(Entry::File(_))
        ));
        let r = ns.lookup("d/", "a").await.unwrap();
        assert_eq!(ns.valid_for(&r), None, "indefinite");
        let ns = Namespace::new(s.clone(), Ttl::Finite(Duration::from_secs(10)), Ttl::Indefinite).one_name_at_a_time();
        let r = ns.lookup("d/", "a").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let left = ns.valid_for(&ns.lookup("d/", "a").await.unwrap()).unwrap();
        assert!(
            left < Duration::from_secs(10) && left > Duration::from_secs(9),
            "{left:?}"
        );
        assert_eq!(
            r.fetched,
            ns.lookup("d/", "a").await.unwrap().fetched,
            "served from cache"
        );
    }

    const STORE_ID: &str = "http://s3|b";

    fn meta_store(dir: &tempfile::TempDir) -> Arc<MetaStore> {
        Arc::new(MetaStore::open(dir.path(), STORE_ID).unwrap())
    }

    fn persisted(s: &Arc<MemoryStore>, dir: &tempfile::TempDir, ttl: Ttl, negative: Ttl) -> Namespace {
        Namespace::new(s.clone(), ttl, negative)
            .one_name_at_a_time()
            .with_persistence(meta_store(dir))
    }

    fn meta(key: &str, size: u64) -> Entry {
        Entry::File(ObjectMeta {
            key: key.into(),
            size,
            etag: "\"old\"".into(),
            last_modified: SystemTime::UNIX_EPOCH,
        })
    }

    fn size(r: &Resolved) -> Option<u64> {
        match &r.entry {
            Some(Entry::File(m)) => Some(m.size),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_restarted_namespace_answers_from_disk_without_requests() {
        let s = Arc::new(MemoryStore::new());
        s.put("d/a", "1");
        s.put("d/b/c", "22");
        s.put("top", "333");
        let cache = tempfile::tempdir().unwrap();
        let queries = [
            ("", "d"),
            ("", "top"),
            ("", "nope"),
            ("d/b/", "c"),
            ("d/", "a"),
            ("d/", "zz"),
        ];
        let first = persisted(&s, &cache, Ttl::Indefinite, Ttl::Indefinite);
        let listing = first.list_dir("d/").await.unwrap();
        let mut answers = vec![];
        for (dir, name) in queries {
            answers.push(first.lookup(dir, name).await.unwrap().entry);
        }
        drop(first);
        let before = s.requests();
        let second = persisted(&s, &cache, Ttl::Indefinite, Ttl::Indefinite);
        for ((dir, name), want) in queries.iter().zip(&answers) {
            let r = second.lookup(dir, name).await.unwrap();
            assert_eq!(&r.entry, want, "{dir}{name}");
            assert_eq!(second.valid_for(&r), None);
        }
        assert_eq!(second.list_dir("d/").await.unwrap().entries(), listing.entries());
        assert_eq!(s.requests(), before, "everything came from disk");
    }

    #[tokio::test]
    async fn persisted_answers_expire_by_their_fetch_time_and_are_rewritten() {
        let s = Arc::new(MemoryStore::new());
        s.put("d/a", "1");
        s.put("x", "1");
        let cache = tempfile::tempdir().unwrap();
        let m = meta_store(&cache);
        let g = m.generation().unwrap();
        let thirty_ago = SystemTime::now() - Duration::from_secs(30);
        m.save_listing(g, "d/", thirty_ago, &[("a".into(), meta("d/a", 99))]);
        m.save_lookup(g, "x", thirty_ago, &None);

        // Fresh under a 60 s TTL: used as they are, with 30 s left for the kernel.
        let ttl = Ttl::Finite(Duration::from_secs(60));
        let ns = persisted(&s, &cache, ttl, ttl);
        let r = ns.lookup("d/", "a").await.unwrap();
        assert_eq!(size(&r), Some(99));
        let left = ns.valid_for(&r).unwrap();
        assert!(
            left <= Duration::from_secs(30) && left > Duration::from_secs(28),
            "{left:?}"
        );
        let r = ns.lookup("", "x").await.unwrap();
        assert_eq!(r.entry, None);
        assert!(ns.valid_for(&r).unwrap() <= Duration::from_secs(30));
        assert_eq!(s.requests(), 0);

        // Stale under a 10 s TTL: fetched again and rewritten with the new fetch time.
        let ttl = Ttl::Finite(Duration::from_secs(10));
        let ns = persisted(&s, &cache, ttl, ttl);
        assert_eq!(size(&ns.lookup("d/", "a").await.unwrap()), Some(1));
        assert_eq!(size(&ns.lookup("", "x").await.unwrap()), Some(1));
        assert_eq!(ns.list_dir("d/").await.unwrap().len(), 1);
        assert!(s.requests() > 0);
        let (at, entries) = m.load_listing(g, "d/").unwrap();
        assert!(at > thirty_ago + Duration::from_secs(25));
        assert_eq!(entries[0].1, ns.list_dir("d/").await.unwrap().entries()[0].1);
        let (at, entry) = m.load_lookup(g, "x").unwrap();
        assert!(at > thirty_ago + Duration::from_secs(25) && entry.is_some());
    }

    #[tokio::test]
    async fn persisted_negatives_follow_the_negative_ttl() {
        let s = Arc::new(MemoryStore::new());
        let cache = tempfile::tempdir().unwrap();
        let m = meta_store(&cache);
        let g = m.generation().unwrap();
        let five_ago = SystemTime::now() - Duration::from_secs(5);
        m.save_lookup(g, "gone", five_ago, &None);
        m.save_listing(g, "d/", five_ago, &[]);
        s.put("gone", "back");
        s.put("d/new", "n");
        let ns = persisted(&s, &cache, Ttl::Indefinite, Ttl::Finite(Duration::from_secs(10)));
        assert_eq!(ns.lookup("", "gone").await.unwrap().entry, None);
        assert_eq!(
            ns.lookup("d/", "new").await.unwrap().entry,
            None,
            "the listing proves it absent"
        );
        assert_eq!(s.requests(), 0);
        let ns = persisted(&s, &cache, Ttl::Indefinite, Ttl::Finite(Duration::from_secs(3)));
        assert_eq!(size(&ns.lookup("", "gone").await.unwrap()), Some(4));
        assert_eq!(size(&ns.lookup("d/", "new").await.unwrap()), Some(1));
        // The listing itself is still fresh under the indefinite TTL.
        let before = s.requests();
        assert!(ns.list_dir("d/").await.unwrap().is_empty());
        assert_eq!(s.requests(), before);
    }

    #[tokio::test]
    async fn fetch_times_in_the_future_are_trusted_only_indefinitely() {
        let s = Arc::new(MemoryStore::new());
        s.put("k", "now");
        let cache = tempfile::tempdir().unwrap();
        let m = meta_store(&cache);
        let g = m.generation().unwrap();
        m.save_lookup(
            g,
            "k",
            SystemTime::now() + Duration::from_secs(3600),
            &Some(meta("k", 7)),
        );
        let ttl = Ttl::Finite(Duration::from_secs(7200));
        assert_eq!(
            size(&persisted(&s, &cache, ttl, ttl).lookup("", "k").await.unwrap()),
            Some(3)
        );
        m.save_lookup(
            g,
            "k",
            SystemTime::now() + Duration::from_secs(3600),
            &Some(meta("k", 7)),
        );
        let ns = persisted(&s, &cache, Ttl::Indefinite, Ttl::Indefinite);
        assert_eq!(size(&ns.lookup("", "k").await.unwrap()), Some(7));
    }

    #[tokio::test]
    async fn invalidation_reaches_the_disk_and_every_namespace_sharing_it() {
        let s = Arc::new(MemoryStore::new());
        s.put("d/a", "1");
        s.put("top", "1");
        let cache = tempfile::tempdir().unwrap();
        let ind = Ttl::Indefinite;
        let ns = persisted(&s, &cache, ind, ind);
        ns.list_dir("d/").await.unwrap();
        ns.lookup("", "top").await.unwrap();
        s.put("d/new", "2");
        s.put("top", "22");
        ns.invalidate("", "top").await;
        let other = persisted(&s, &cache, ind, ind);
        assert_eq!(size(&other.lookup("", "top").await.unwrap()), Some(2));
        assert_eq!(other.list_dir("d/").await.unwrap().len(), 1, "not invalidated");
        ns.invalidate_all();
        assert_eq!(size(&ns.lookup("", "top").await.unwrap()), Some(2));
        let third = persisted(&s, &cache, ind, ind);
        assert_eq!(third.list_dir("d/").await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn ttl_zero_persists_nothing() {
        let s = Arc::new(MemoryStore::new());
        s.put("d/a", "1");
        let cache = tempfile::tempdir().unwrap();
        let zero = Ttl::Finite(Duration::ZERO);
        let ns = persisted(&s, &cache, zero, zero);
        ns.list_dir("d/").await.unwrap();
        ns.lookup("", "d").await.unwrap();
        ns.lookup("", "missing").await.unwrap();
        let m = meta_store(&cache);
        let g = m.generation().unwrap();
        assert_eq!(m.load_listing(g, "d/"), None);
        assert_eq!(m.load_lookup(g, "d"), None);
        assert_eq!(m.load_lookup(g, "missing"), None);
    }

    #[tokio::test]
    async fn concurrent_cold_lookups_in_a_persisted_directory_make_no_requests() {
        let s = Arc::new(MemoryStore::new());
        for i in 0..50 {
            s.put(&format!("d/f{i}"), "x");
        }
        let cache = tempfile::tempdir().unwrap();
        persisted(&s, &cache, Ttl::Indefinite, Ttl::Indefinite)
            .list_dir("d/")
            .await
            .unwrap();
        let before = s.requests();
        let ns = Arc::new(persisted(&s, &cache, Ttl::Indefinite, Ttl::Indefinite));
        let tasks: Vec<_> = (0..60)
            .map(|i| {
                let ns = ns.clone();
                tokio::spawn(async move { ns.lookup("d/", &format!("f{i}")).await.unwrap().entry.is_some() })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap(), i < 50);
        }
        assert_eq!(s.requests(), before);
    }

    #[tokio::test]
    async fn an_answer_fetched_before_invalidate_all_is_not_persisted_after_it() {
        let s = Arc::new(crate::store::fault::FaultStore::new(MemoryStore::new()));
        s.inner().put("k", "old");
        s.set_latency(Duration::from_millis(300));
        let cache = tempfile::tempdir().unwrap();
        let m = meta_store(&cache);
        let ns = Arc::new(
            Namespace::new(s.clone(), Ttl::Indefinite, Ttl::Indefinite)
                .one_name_at_a_time()
                .with_persistence(m.clone()),
        );
        let slow = {
            let ns = ns.clone();
            tokio::spawn(async move { ns.lookup("", "k").await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        ns.invalidate_all();
        let g = m.generation().unwrap();
        slow.await.unwrap();
        assert_eq!(m.load_lookup(g, "k"), None, "written under the old generation only");
        s.set_latency(Duration::ZERO);
        s.inner().put("k", "new!");
        let fresh = persisted_with(&s, &m);
        assert!(matches!(fresh.lookup("", "k").await.unwrap().entry, Some(Entry::File(f)) if f.size == 4));
    }

    fn persisted_with(s: &Arc<crate::store::fault::FaultStore<MemoryStore>>, m: &Arc<MetaStore>) -> Namespace {
        Namespace::new(s.clone(), Ttl::Indefinite, Ttl::Indefinite)
            .one_name_at_a_time()
            .with_persistence(m.clone())
    }
}
