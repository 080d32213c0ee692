//! The namespace: what names exist under a directory prefix, from S3 listings, cached in memory.
//!
//! Directories come from `/` delimiters: a name is a directory when some key starts with
//! `dir/name/` (an implicit directory or a `name/` marker object); it is a file when the key
//! `dir/name` exists and no such key does (a directory shadows a file of the same name).
//!
//! Two caches, both expiring after the metadata TTL (negative answers after the negative TTL;
//! `indefinite` never expires):
//! - whole directory listings, filled by `readdir` and authoritative for every name in that
//!   directory while fresh (positive and negative answers come from it without S3);
//! - single lookups, each resolved with a HeadObject and a one-key ListObjectsV2 issued together.
//!
//! Concurrent misses for the same key are coalesced (moka's `try_get_with`), so a burst of
//! lookups of one cold name costs one HEAD and one LIST.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use tracing::{info, warn};

use crate::config::Ttl;
use crate::object::ObjectMeta;
use crate::store::{ListRequest, ObjectStore, StoreError};

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

/// A full directory listing, sorted by name.
#[derive(Debug)]
pub struct DirListing {
    pub entries: Vec<(Arc<str>, Entry)>,
    pub fetched: Instant,
}

impl DirListing {
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries
            .binary_search_by(|(n, _)| (**n).cmp(name))
            .ok()
            .map(|i| &self.entries[i].1)
    }
}

/// Why a key cannot be shown as a file name.
fn invalid_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty path segment")
    } else if name == "." || name == ".." {
        Some("\".\" or \"..\" path segment")
    } else if name.contains('\0') {
        Some("NUL in name")
    } else if name.len() > 255 {
        Some("name longer than 255 bytes")
    } else {
        None
    }
}

/// Most hidden keys logged individually; past this, one summary line.
const MAX_LOGGED_HIDDEN: usize = 10_000;

/// Default bounds of the in-memory metadata caches (entries): a few hundred bytes each, so
/// about 200 MiB at the worst; past them the least recently used entries are refetched.
const MAX_LOOKUP_ENTRIES: u64 = 1_000_000;
const MAX_LISTED_ENTRIES: u64 = 1_000_000;

struct LookupExpiry {
    positive: Option<Duration>,
    negative: Option<Duration>,
}

impl Expiry<Arc<str>, Resolved> for LookupExpiry {
    fn expire_after_create(&self, _key: &Arc<str>, value: &Resolved, _now: Instant) -> Option<Duration> {
        if value.entry.is_some() {
            self.positive
        } else {
            self.negative
        }
    }
}

pub struct Namespace {
    store: Arc<dyn ObjectStore>,
    ttl: Option<Duration>,
    negative_ttl: Option<Duration>,
    lookups: Cache<Arc<str>, Resolved>,
    dirs: Cache<Arc<str>, Arc<DirListing>>,
    hidden_logged: Mutex<HashSet<String>>,
}

impl Namespace {
    pub fn new(store: Arc<dyn ObjectStore>, ttl: Ttl, negative_ttl: Ttl) -> Namespace {
        let lookups = Cache::builder()
            .max_capacity(MAX_LOOKUP_ENTRIES)
            .expire_after(LookupExpiry {
                positive: ttl.duration(),
                negative: negative_ttl.duration(),
            })
            .build();
        let mut dirs = Cache::builder()
            .max_capacity(MAX_LISTED_ENTRIES)
            .weigher(|_: &Arc<str>, l: &Arc<DirListing>| l.entries.len().clamp(1, u32::MAX as usize) as u32);
        if let Some(d) = ttl.duration() {
            dirs = dirs.time_to_live(d);
        }
        Namespace {
            store,
            ttl: ttl.duration(),
            negative_ttl: negative_ttl.duration(),
            lookups,
            dirs: dirs.build(),
            hidden_logged: Mutex::new(HashSet::new()),
        }
    }

    /// The positive TTL (`None`: indefinite).
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Looks `name` up in the directory whose key prefix is `dir` (empty or ending in `/`).
    pub async fn lookup(&self, dir: &str, name: &str) -> Result<Resolved, StoreError> {
        if invalid_name(name).is_some() {
            return Ok(Resolved {
                entry: None,
                fetched: Instant::now(),
            });
        }
        if let Some(listing) = self.dirs.get(dir).await {
            match listing.get(name) {
                Some(e) => {
                    return Ok(Resolved {
                        entry: Some(e.clone()),
                        fetched: listing.fetched,
                    });
                }
                // A listing proves a name absent only for as long as the negative TTL.
                None if self.negative_ttl.is_none_or(|t| listing.fetched.elapsed() < t) => {
                    return Ok(Resolved {
                        entry: None,
                        fetched: listing.fetched,
                    });
                }
                None => {}
            }
        }
        let key: Arc<str> = format!("{dir}{name}").into();
        self.lookups
            .try_get_with(key.clone(), async {
                let entry = self.fetch_lookup(key).await?;
                Ok(Resolved {
                    entry,
                    fetched: Instant::now(),
                })
            })
            .await
            .map_err(|e: Arc<StoreError>| (*e).clone())
    }

    /// How much longer an answer may be trusted (`None`: indefinitely); the kernel is told the
    /// same, so a change in S3 shows within one TTL of the fetch, not two.
    pub fn valid_for(&self, r: &Resolved) -> Option<Duration> {
        let ttl = if r.entry.is_some() { self.ttl } else { self.negative_ttl };
        ttl.map(|t| t.saturating_sub(r.fetched.elapsed()))
    }

    async fn fetch_lookup(&self, key: Arc<str>) -> Result<Lookup, StoreError> {
        let dir_prefix = format!("{key}/");
        let list = self.store.list(ListRequest {
            prefix: &dir_prefix,
            delimited: true,
            continuation: None,
            max_keys: Some(1),
        });
        let (list, head) = tokio::join!(list, self.store.head(&key));
        let list = list?;
        if !list.objects.is_empty() || !list.prefixes.is_empty() {
            if head.is_ok() {
                self.log_hidden(&key, "shadowed by a directory of the same name");
            }
            return Ok(Some(Entry::Dir));
        }
        match head {
            Ok(meta) => Ok(Some(Entry::File(meta))),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The whole listing of directory `dir` (empty or ending in `/`), paginated as needed.
    pub async fn list_dir(&self, dir: &str) -> Result<Arc<DirListing>, StoreError> {
        self.dirs
            .try_get_with(dir.into(), self.fetch_listing(dir))
            .await
            .map_err(|e| (*e).clone())
    }

    async fn fetch_listing(&self, dir: &str) -> Result<Arc<DirListing>, StoreError> {
        let fetched = Instant::now();
        let mut entries: BTreeMap<Arc<str>, Entry> = BTreeMap::new();
        let mut continuation = None;
        loop {
            let page = self
                .store
                .list(ListRequest {
                    prefix: dir,
                    delimited: true,
                    continuation,
                    max_keys: None,
                })
                .await?;
            for obj in page.objects {
                let name = &obj.key[dir.len()..];
                if name.is_empty() {
                    continue; // the directory's own marker object `dir/`
                }
                if let Some(why) = invalid_name(name) {
                    self.log_hidden(&obj.key, why);
                    continue;
                }
                entries.insert(name.into(), Entry::File(obj));
            }
            for prefix in page.prefixes {
                let name = &prefix[dir.len()..prefix.len() - 1];
                if let Some(why) = invalid_name(name) {
                    self.log_hidden(&prefix, why);
                    continue;
                }
                if let Some(Entry::File(f)) = entries.insert(name.into(), Entry::Dir) {
                    self.log_hidden(&f.key, "shadowed by a directory of the same name");
                }
            }
            continuation = page.next;
            if continuation.is_none() {
                break;
            }
        }
        Ok(Arc::new(DirListing {
            entries: entries.into_iter().collect(),
            fetched,
        }))
    }

    /// Forgets what is cached about `name` in `dir` (and the listing of `dir`).
    pub async fn invalidate(&self, dir: &str, name: &str) {
        self.dirs.invalidate(dir).await;
        self.lookups.invalidate(format!("{dir}{name}").as_str()).await;
    }

    /// Forgets everything cached.
    pub fn invalidate_all(&self) {
        self.dirs.invalidate_all();
        self.lookups.invalidate_all();
    }

    fn log_hidden(&self, key: &str, why: &str) {
        let mut logged = self.hidden_logged.lock().unwrap();
        if logged.len() < MAX_LOGGED_HIDDEN {
            if logged.insert(key.to_string()) {
                warn!(key, reason = why, "S3 key is not shown in the mount");
            }
        } else if logged.len() == MAX_LOGGED_HIDDEN {
            logged.insert(String::new());
            info!("more keys are hidden; no longer logging them individually");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use std::sync::atomic::Ordering;

    fn ns(store: &Arc<MemoryStore>, ttl: Ttl) -> Namespace {
        Namespace::new(store.clone(), ttl, ttl)
    }

    fn names(l: &DirListing) -> Vec<(&str, bool)> {
        l.entries.iter().map(|(n, e)| (&**n, matches!(e, Entry::Dir))).collect()
    }

    #[tokio::test]
    async fn listing_builds_dirs_shadows_and_hides() {
        let s = Arc::new(MemoryStore::new());
        for k in [
            "a.jar",
            "lib/x.jar",
            "lib",
            "empty/",
            "deep/er/f",
            "bad//k",
            "./dot",
            "../up",
            "c/",
            "c/d",
        ] {
            s.put(k, "data");
        }
        s.put(&"n".repeat(256), "long");
        let ns = ns(&s, Ttl::Indefinite);
        let root = ns.list_dir("").await.unwrap();
        assert_eq!(
            names(&root),
            vec![
                ("a.jar", false),
                ("bad", true),
                ("c", true),
                ("deep", true),
                ("empty", true),
                ("lib", true)
            ]
        );
        // "bad/" holds only "bad//k", whose empty segment hides it.
        assert!(ns.list_dir("bad/").await.unwrap().entries.is_empty());
        assert!(ns.list_dir("empty/").await.unwrap().entries.is_empty());
        assert_eq!(names(&ns.list_dir("c/").await.unwrap()), vec![("d", false)]);
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
        let ns = Arc::new(Namespace::new(s.clone(), Ttl::Indefinite, Ttl::Indefinite));
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
    async fn errors_are_not_cached() {
        let s = Arc::new(crate::store::fault::FaultStore::new(MemoryStore::new()));
        s.inner().put("k", "v");
        let ns = Namespace::new(s.clone(), Ttl::Indefinite, Ttl::Indefinite);
        s.fail_next(1, StoreError::Timeout);
        assert_eq!(ns.lookup("", "k").await.map(|r| r.entry), Err(StoreError::Timeout));
        assert!(matches!(
            ns.lookup("", "k").await.map(|r| r.entry),
            Ok(Some(Entry::File(_)))
        ));
    }

    #[tokio::test]
    async fn listing_negatives_expire_with_the_negative_ttl_and_ttls_count_down() {
        let s = Arc::new(MemoryStore::new());
        s.put("d/a", "1");
        let ns = Namespace::new(s.clone(), Ttl::Indefinite, Ttl::Finite(Duration::from_millis(200)));
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
        let ns = Namespace::new(s.clone(), Ttl::Finite(Duration::from_secs(10)), Ttl::Indefinite);
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
}
