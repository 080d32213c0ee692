//! An in-memory [`ObjectStore`] for unit tests of the layers above the store.
//!
//! It follows S3's listing rules (UTF-8 byte order, delimiter roll-up, common prefixes count as
//! one entry toward `max_keys`, opaque continuation tokens) so that the namespace code can be
//! tested without HTTP. Request counts are kept per operation. It is also a [`WritableStore`]:
//! `put_if_absent` checks and inserts under one lock, so concurrent writers of a key have exactly
//! one winner.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ListPage, ListRequest, ObjectStore, PutOutcome, StoreError, WritableStore};
use crate::object::{ByteRange, ObjectMeta};

#[derive(Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, (Bytes, ObjectMeta)>>,
    version: AtomicU64,
    pub lists: AtomicU64,
    pub heads: AtomicU64,
    pub gets: AtomicU64,
    pub get_bytes: AtomicU64,
    /// `put_if_absent` calls (both outcomes); `put` is the test's own seeding and is not counted.
    pub puts: AtomicU64,
    pub deletes: AtomicU64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `data` under `key` with a fresh ETag, replacing any object; returns the ETag.
    pub fn put(&self, key: &str, data: impl Into<Bytes>) -> String {
        let (data, meta) = self.object(key, data.into());
        let etag = meta.etag.to_string();
        self.objects.lock().unwrap().insert(key.to_string(), (data, meta));
        etag
    }

    /// An object with a fresh ETag.
    fn object(&self, key: &str, data: Bytes) -> (Bytes, ObjectMeta) {
        let v = self.version.fetch_add(1, Ordering::Relaxed);
        let meta = ObjectMeta {
            key: key.into(),
            size: data.len() as u64,
            etag: format!("\"v{v}-{}\"", data.len()).into(),
            last_modified: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
        };
        (data, meta)
    }

    pub fn remove(&self, key: &str) {
        self.objects.lock().unwrap().remove(key);
    }

    /// Total requests of every kind.
    pub fn requests(&self) -> u64 {
        self.lists.load(Ordering::Relaxed)
            + self.heads.load(Ordering::Relaxed)
            + self.gets.load(Ordering::Relaxed)
            + self.puts.load(Ordering::Relaxed)
            + self.deletes.load(Ordering::Relaxed)
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

#[async_trait]
impl WritableStore for MemoryStore {
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<PutOutcome, StoreError> {
        self.puts.fetch_add(1, Ordering::Relaxed);
        // The check and the insert under one lock: of concurrent writers, exactly one creates.
        let mut objects = self.objects.lock().unwrap();
        if objects.contains_key(key) {
            return Ok(PutOutcome::AlreadyExists);
        }
        let object = self.object(key, body);
        objects.insert(key.to_string(), object);
        Ok(PutOutcome::Created)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.deletes.fetch_add(1, Ordering::Relaxed);
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }

    async fn get_object(&self, key: &str, max_len: u64) -> Result<Bytes, StoreError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        let objects = self.objects.lock().unwrap();
        let (data, _) = objects.get(key).ok_or(StoreError::NotFound)?;
        if data.len() as u64 > max_len {
            return Err(StoreError::InvalidRange);
        }
        self.get_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data.clone())
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
    async fn put_if_absent_keeps_the_first_body_and_counts_writes() {
        let s = MemoryStore::new();
        assert_eq!(
            s.put_if_absent("k", Bytes::from_static(b"first")).await,
            Ok(PutOutcome::Created)
        );
        assert_eq!(
            s.put_if_absent("k", Bytes::from_static(b"second")).await,
            Ok(PutOutcome::AlreadyExists)
        );
        let meta = s.head("k").await.unwrap();
        assert_eq!(
            s.get_range("k", ByteRange::new(0, 5), &meta.etag).await.unwrap(),
            "first"
        );
        assert_eq!(s.delete("k").await, Ok(()));
        assert_eq!(s.delete("k").await, Ok(()));
        assert_eq!(s.head("k").await, Err(StoreError::NotFound));
        assert_eq!(
            (s.puts.load(Ordering::Relaxed), s.deletes.load(Ordering::Relaxed)),
            (2, 2)
        );
        assert_eq!(s.requests(), 7);
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
