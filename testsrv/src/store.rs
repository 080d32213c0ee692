//! The in-memory object store: buckets of byte-sorted keys mapping to immutable [`Object`]s (data, ETag,
//! Last-Modified), plus the set of denied buckets.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use md5::{Digest, Md5};

/// A stored object. Cloning is cheap (the data is a shared [`Bytes`]).
#[derive(Clone, Debug)]
pub(crate) struct Object {
    pub(crate) data: Bytes,
    /// Quoted ETag, e.g. `"\"d41d8cd98f00b204e9800998ecf8427e\""`.
    pub(crate) etag: String,
    /// Second precision.
    pub(crate) last_modified: SystemTime,
}

impl Object {
    pub(crate) fn new(data: Bytes, mtime: SystemTime) -> Self {
        let digest = md5_digest(&data);
        Self::with_md5(data, digest, mtime)
    }

    /// Like [`Object::new`] with an already computed MD5 of `data`.
    pub(crate) fn with_md5(data: Bytes, digest: [u8; 16], mtime: SystemTime) -> Self {
        Object {
            data,
            etag: format!("\"{}\"", hex(&digest)),
            last_modified: truncate_to_secs(mtime),
        }
    }
}

/// Bucket name -> (key -> object). `String` ordering is UTF-8 byte ordering, as S3 lists.
pub(crate) type Bucket = BTreeMap<String, Object>;

#[derive(Default)]
pub(crate) struct Store {
    buckets: HashMap<String, Bucket>,
    denied: HashSet<String>,
}

impl Store {
    pub(crate) fn create_bucket(&mut self, bucket: &str) {
        self.buckets.entry(bucket.to_owned()).or_default();
    }

    /// Removes an empty bucket. `Err(())` if it is not empty; `Ok(false)` if it did not exist.
    pub(crate) fn delete_bucket(&mut self, bucket: &str) -> Result<bool, ()> {
        match self.buckets.get(bucket) {
            None => Ok(false),
            Some(b) if !b.is_empty() => Err(()),
            Some(_) => {
                self.buckets.remove(bucket);
                Ok(true)
            }
        }
    }

    pub(crate) fn bucket(&self, bucket: &str) -> Option<&Bucket> {
        self.buckets.get(bucket)
    }

    pub(crate) fn bucket_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.buckets.keys().cloned().collect();
        v.sort();
        v
    }

    /// Stores an object, creating the bucket if needed; returns the quoted ETag.
    pub(crate) fn put(&mut self, bucket: &str, key: &str, obj: Object) -> String {
        let etag = obj.etag.clone();
        self.buckets
            .entry(bucket.to_owned())
            .or_default()
            .insert(key.to_owned(), obj);
        etag
    }

    pub(crate) fn delete(&mut self, bucket: &str, key: &str) {
        if let Some(b) = self.buckets.get_mut(bucket) {
            b.remove(key);
        }
    }

    pub(crate) fn get(&self, bucket: &str, key: &str) -> Option<&Object> {
        self.buckets.get(bucket)?.get(key)
    }

    pub(crate) fn set_denied(&mut self, bucket: &str, deny: bool) {
        if deny {
            self.denied.insert(bucket.to_owned());
        } else {
            self.denied.remove(bucket);
        }
    }

    pub(crate) fn is_denied(&self, bucket: &str) -> bool {
        self.denied.contains(bucket)
    }
}

pub(crate) fn md5_digest(data: &[u8]) -> [u8; 16] {
    let out = Md5::digest(data);
    let mut a = [0u8; 16];
    a.copy_from_slice(&out);
    a
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

pub(crate) fn truncate_to_secs(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_of_empty() {
        let o = Object::new(Bytes::new(), SystemTime::now());
        assert_eq!(o.etag, "\"d41d8cd98f00b204e9800998ecf8427e\"");
    }
}
