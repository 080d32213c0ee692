//! Talking to the store: the only part of `meta` that sends requests. Whole directory listings
//! (one delimited ListObjectsV2 per page), single-name lookups (a HeadObject and a one-key
//! ListObjectsV2 issued together), and a plain HEAD. Store errors become `MetaError` here.
//!
//! Nothing here caches: every call is requests to S3. Coalescing and TTLs are the caller's.

use std::sync::Arc;
use std::time::Instant;

use super::names::{DirBuilder, HiddenKeys, SHADOWED};
use super::{DirListing, Entry, Lookup, MetaError};
use crate::object::ObjectMeta;
use crate::store::{ListRequest, ObjectStore, StoreError};

pub(super) struct Fetcher {
    store: Arc<dyn ObjectStore>,
    hidden: HiddenKeys,
}

impl Fetcher {
    pub(super) fn new(store: Arc<dyn ObjectStore>) -> Fetcher {
        Fetcher {
            store,
            hidden: HiddenKeys::default(),
        }
    }

    /// What `key` is, from one HEAD and one one-key LIST of `key/`, sent together: a directory
    /// if anything is under `key/` (shadowing an object `key`), else the object, else nothing.
    pub(super) async fn lookup(&self, key: &str) -> Result<Lookup, MetaError> {
        let dir_prefix = format!("{key}/");
        let list = self.store.list(ListRequest {
            prefix: &dir_prefix,
            delimited: true,
            continuation: None,
            max_keys: Some(1),
        });
        let (list, head) = tokio::join!(list, self.store.head(key));
        let list = list?;
        if !list.objects.is_empty() || !list.prefixes.is_empty() {
            if head.is_ok() {
                self.hidden.log(key, SHADOWED);
            }
            return Ok(Some(Entry::Dir));
        }
        match head {
            Ok(meta) => Ok(Some(Entry::File(meta))),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The object's metadata from a HEAD (`NotFound` when it does not exist).
    pub(super) async fn head(&self, key: &str) -> Result<ObjectMeta, MetaError> {
        Ok(self.store.head(key).await?)
    }

    /// Lists `dir` (empty or ending in `/`) whole, stamped `fetched`, or `None` when it has more
    /// than `max_pages` pages (`None`: no limit).
    pub(super) async fn listing(
        &self,
        dir: &str,
        fetched: Instant,
        max_pages: Option<usize>,
    ) -> Result<Option<Arc<DirListing>>, MetaError> {
        let mut entries = DirBuilder::new(dir, &self.hidden);
        let mut continuation = None;
        let mut pages = 0;
        loop {
            pages += 1;
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
                entries.file(obj);
            }
            for prefix in &page.prefixes {
                entries.subdir(prefix);
            }
            continuation = page.next;
            if continuation.is_none() {
                break;
            }
            if max_pages.is_some_and(|m| pages >= m) {
                return Ok(None);
            }
        }
        Ok(Some(Arc::new(DirListing::new(dir, entries.finish(), fetched))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fault::FaultStore;
    use crate::store::memory::MemoryStore;
    use std::sync::atomic::Ordering;

    fn counts(s: &MemoryStore) -> (u64, u64) {
        (s.lists.load(Ordering::Relaxed), s.heads.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn a_lookup_is_one_head_and_one_list() {
        let s = Arc::new(MemoryStore::new());
        s.put("f", "1");
        s.put("d/x", "2");
        s.put("both", "3");
        s.put("both/y", "4");
        let f = Fetcher::new(s.clone());
        assert!(matches!(f.lookup("f").await.unwrap(), Some(Entry::File(m)) if m.size == 1));
        assert_eq!(f.lookup("d").await.unwrap(), Some(Entry::Dir));
        assert_eq!(
            f.lookup("both").await.unwrap(),
            Some(Entry::Dir),
            "the directory shadows"
        );
        assert_eq!(f.lookup("none").await.unwrap(), None);
        assert_eq!(counts(&s), (4, 4));
        assert!(f.head("none").await == Err(MetaError::NotFound));
    }

    #[tokio::test]
    async fn store_errors_become_meta_errors() {
        let s = Arc::new(FaultStore::new(MemoryStore::new()));
        s.inner().put("k", "v");
        let f = Fetcher::new(s.clone());
        s.fail_next(1, StoreError::AccessDenied("no".into()));
        assert_eq!(f.head("k").await, Err(MetaError::AccessDenied("no".into())));
        s.fail_next(2, StoreError::Timeout);
        assert_eq!(f.lookup("k").await, Err(MetaError::Timeout));
        s.fail_next(1, StoreError::NoSuchBucket);
        assert_eq!(
            f.listing("", Instant::now(), None).await.map(|_| ()),
            Err(MetaError::Other("bucket does not exist".into()))
        );
    }

    #[tokio::test]
    async fn listings_follow_pages_up_to_the_limit() {
        let s = Arc::new(MemoryStore::new());
        for i in 0..2500 {
            s.put(&format!("d/f{i:04}"), "x");
        }
        s.put("d/sub/a", "y");
        let f = Fetcher::new(s.clone());
        let whole = f.listing("d/", Instant::now(), None).await.unwrap().unwrap();
        assert_eq!(whole.len(), 2501);
        assert_eq!(whole.get("sub"), Some(Entry::Dir));
        assert_eq!(counts(&s), (3, 0), "three pages of 1,000");
        assert!(f.listing("d/", Instant::now(), Some(2)).await.unwrap().is_none());
        assert_eq!(counts(&s), (5, 0), "stops after two pages");
        assert!(f.listing("d/sub/", Instant::now(), Some(1)).await.unwrap().is_some());
    }
}
