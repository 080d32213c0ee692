//! An in-memory [`ObjectStore`] for unit tests of the layers above the store.
//!
//! It follows S3's listing rules (UTF-8 byte order, delimiter roll-up, common prefixes count as
//! one entry toward `max_keys`, opaque continuation tokens) so that the namespace code can be
//! tested without HTTP. Request counts are kept per operation.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ListPage, ListRequest, ObjectStore, StoreError};
use crate::object::{ByteRange, ObjectMeta};

#[derive(Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, (Bytes, ObjectMeta)>>,
    version: AtomicU64,
    pub lists: AtomicU64,
    pub heads: AtomicU64,
    pub gets: AtomicU64,
    pub get_bytes: AtomicU64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `data` under `key` with a fresh ETag; returns the ETag.
    pub fn put(&self, key: &str, data: impl Into<Bytes>) -> String {
        let data = data.into();
        let v = self.version.fetch_add(1, Ordering::Relaxed);
        let etag = format!("\"v{v}-{}\"", data.len());
        let meta = ObjectMeta {
            key: key.into(),
            size: data.len() as u64,
            etag: etag.as_str().into(),
            last_modified: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
        };
        self.objects.lock().unwrap().insert(key.to_string(), (data, meta));
        etag
    }

    pub fn remove(&self, key: &str) {
        self.objects.lock().unwrap().remove(key);
    }

    /// Total requests of every kind.
    pub fn requests(&self) -> u64 {
        self.lists.load(Ordering::Relaxed) + self.heads.load(Ordering::Relaxed) + self.gets.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn list(&self, req: ListRequest<'_>) -> Result<ListPage, StoreError> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        let max = req.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
        let objects = self.objects.lock().unwrap();
        let mut page = ListPage::default();
        let after = req.continuation.clone();
        let mut count = 0;
        let mut last: Option<String> = None;
        for (key, (_, meta)) in objects.range(req.prefix.to_string()..) {
            if !key.starts_with(req.prefix) {
                break;
            }
            let rest = &key[req.prefix.len()..];
            let entry = match (req.delimited, rest.find('/')) {
                (true, Some(i)) => Err(format!("{}{}", req.prefix, &rest[..=i])),
                _ => Ok(meta),
            };
            let name = match &entry {
                Ok(m) => m.key.to_string(),
                Err(p) => p.clone(),
            };
            if after.as_deref().is_some_and(|a| name.as_str() <= a) || last.as_deref() == Some(name.as_str()) {
                continue;
            }
            if count == max {
                page.next = last.clone();
                break;
            }
            count += 1;
            match entry {
                Ok(m) => page.objects.push(m.clone()),
                Err(p) => page.prefixes.push(p),
            }
            last = Some(name);
        }
        Ok(page)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.heads.fetch_add(1, Ordering::Relaxed);
        self.objects
            .lock()
            .unwrap()
            .get(key)
            .map(|(_, m)| m.clone())
            .ok_or(StoreError::NotFound)
    }

    async fn get_range(&self, key: &str, range: ByteRange, etag: &str) -> Result<Bytes, StoreError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        let objects = self.objects.lock().unwrap();
        let (data, meta) = objects.get(key).ok_or(StoreError::NotFound)?;
        if &*meta.etag != etag {
            return Err(StoreError::PreconditionFailed);
        }
        // Like `S3Store`: a range that does not lie wholly within the object is an error, never a
        // shorter answer.
        if range.is_empty() || range.end > meta.size {
            return Err(StoreError::InvalidRange);
        }
        let out = data.slice(range.start as usize..range.end as usize);
        self.get_bytes.fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }

    fn describe(&self) -> String {
        "memory://".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn list_all(s: &MemoryStore, prefix: &str, max: i32) -> (Vec<String>, Vec<String>, u32) {
        let (mut keys, mut prefixes, mut pages) = (vec![], vec![], 0);
        let mut token = None;
        loop {
            let page = s
                .list(ListRequest {
                    prefix,
                    delimited: true,
                    continuation: token.clone(),
                    max_keys: Some(max),
                })
                .await
                .unwrap();
            pages += 1;
            keys.extend(page.objects.iter().map(|o| o.key.to_string()));
            prefixes.extend(page.prefixes);
            token = page.next;
            if token.is_none() {
                return (keys, prefixes, pages);
            }
        }
    }

    #[tokio::test]
    async fn delimited_listing_paginates_over_prefixes() {
        let s = MemoryStore::new();
        for k in ["a/1", "a/2", "b", "c/x/y", "c/z", "d", "e/"] {
            s.put(k, "x");
        }
        let (keys, prefixes, pages) = list_all(&s, "", 2).await;
        assert_eq!(keys, vec!["b", "d"]);
        assert_eq!(prefixes, vec!["a/", "c/", "e/"]);
        assert_eq!(pages, 3);
        let (keys, prefixes, _) = list_all(&s, "c/", 1).await;
        assert_eq!(keys, vec!["c/z"]);
        assert_eq!(prefixes, vec!["c/x/"]);
    }

    #[tokio::test]
    async fn ranged_get_checks_etag() {
        let s = MemoryStore::new();
        let etag = s.put("k", "hello world");
        assert_eq!(s.get_range("k", ByteRange::new(6, 11), &etag).await.unwrap(), "world");
        assert_eq!(
            s.get_range("k", ByteRange::new(0, 1), "\"other\"").await,
            Err(StoreError::PreconditionFailed)
        );
        assert_eq!(
            s.get_range("nope", ByteRange::new(0, 1), &etag).await,
            Err(StoreError::NotFound)
        );
    }
}
