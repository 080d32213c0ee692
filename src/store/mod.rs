//! The `ObjectStore` trait: the only way any layer talks to S3.
//!
//! Three implementations: [`s3::S3Store`] (aws-sdk-s3 over HTTP, the only user of the SDK),
//! [`memory::MemoryStore`] (an in-memory fake for unit tests) and [`fault::FaultStore`] (a
//! wrapper that adds latency and injected failures). A store is bound to one bucket; keys are
//! full S3 keys.
//!
//! [`WritableStore`] adds conditional writes and deletes, for a cache tier that keeps blocks in a
//! bucket of its own. The origin is never written: the mount's read path holds its store as an
//! `ObjectStore` only.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;

use crate::object::{ByteRange, ObjectMeta};

pub mod fault;
pub mod memory;
pub mod s3;

/// One page of a ListObjectsV2 answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    /// Objects directly under the prefix (with a delimiter) or all of them (without).
    pub objects: Vec<ObjectMeta>,
    /// Common prefixes (each ends with the delimiter), only when listing with a delimiter.
    pub prefixes: Vec<String>,
    /// Token to fetch the next page; `None` on the last page.
    pub next: Option<String>,
}

/// Parameters of one ListObjectsV2 call.
#[derive(Clone, Debug, Default)]
pub struct ListRequest<'a> {
    pub prefix: &'a str,
    /// Roll keys up at `/` into common prefixes (a directory listing) when true.
    pub delimited: bool,
    pub continuation: Option<String>,
    /// At most this many entries (S3 caps a page at 1,000).
    pub max_keys: Option<i32>,
}

/// What can go wrong talking to the object store, already classified for callers.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("no such key")]
    NotFound,
    #[error("bucket does not exist")]
    NoSuchBucket,
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error("object changed since it was opened (ETag no longer matches)")]
    PreconditionFailed,
    #[error("requested range is not satisfiable")]
    InvalidRange,
    #[error("throttled by S3 (SlowDown) after retries")]
    Throttled,
    #[error("no usable AWS credentials: {0}")]
    Credentials(String),
    #[error("request timed out")]
    Timeout,
    #[error("network error: {0}")]
    Network(String),
    #[error("S3 answered {status} {code}: {message}")]
    Service { status: u16, code: String, message: String },
    #[error("bad response from S3: {0}")]
    BadResponse(String),
}

impl StoreError {
    /// The HTTP status this error came with, if any.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            StoreError::NotFound | StoreError::NoSuchBucket => Some(404),
            StoreError::AccessDenied(_) => Some(403),
            StoreError::PreconditionFailed => Some(412),
            StoreError::InvalidRange => Some(416),
            StoreError::Throttled => Some(503),
            StoreError::Service { status, .. } => Some(*status),
            StoreError::Timeout | StoreError::Network(_) | StoreError::BadResponse(_) | StoreError::Credentials(_) => {
                None
            }
        }
    }

    /// Whether trying the same request again may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Throttled | StoreError::Timeout | StoreError::Network(_) | StoreError::BadResponse(_) => true,
            StoreError::Service { status, code, .. } => {
                *status >= 500 || (*status == 409 && code == CONDITIONAL_REQUEST_CONFLICT)
            }
            _ => false,
        }
    }
}

/// The code of S3's 409 to a conditional write that raced another write or a delete of the same
/// key. AWS documents it as resolved by sending the request again, so it is transient.
pub const CONDITIONAL_REQUEST_CONFLICT: &str = "ConditionalRequestConflict";

/// Access to one bucket.
///
/// Every implementation behaves alike; `tests/store_conformance.rs` runs one suite of cases
/// against each of them.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// One page of ListObjectsV2.
    ///
    /// Keys are in UTF-8 byte order and come back exactly as stored, whatever characters they
    /// hold. Following `next` from page to page lists every key under the prefix exactly once.
    /// A page holds at most `max_keys` entries (never more than 1,000), objects and common
    /// prefixes together. Every page but the last is full, and the page with the last entry is
    /// the last. With `delimited`, `objects` holds only keys with no `/` after the prefix
    /// (including a key equal to the prefix), and each deeper level appears once in `prefixes`,
    /// ending in `/`. A prefix that matches nothing gives one empty page, not an error. Sizes
    /// and ETags agree with [`ObjectStore::head`].
    async fn list(&self, req: ListRequest<'_>) -> Result<ListPage, StoreError>;

    /// HeadObject. `NotFound` when no object has exactly this key, also when the key is only a
    /// prefix of other keys (`dir/`).
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError>;

    /// GetObject of `range`, pinned to `etag` with `If-Match`. Returns exactly `range.len()`
    /// bytes or an error, never fewer.
    ///
    /// The errors, checked in this order: `NotFound` when no object has the key;
    /// `PreconditionFailed` (412) when its ETag is not `etag`; `InvalidRange` when the range does
    /// not lie wholly within the object (`range.end > size`). S3 answers 416 only to a range
    /// that starts at or past the end, and serves the existing tail of one that starts inside;
    /// stores report both as `InvalidRange`, without retrying. An empty object therefore has no
    /// valid range. `range` must be non-empty: `S3Store` panics on an empty one, and the fakes
    /// answer `InvalidRange`.
    async fn get_range(&self, key: &str, range: ByteRange, etag: &str) -> Result<Bytes, StoreError>;

    /// A short description for logs, e.g. `s3://bucket`.
    fn describe(&self) -> String;
}

/// What [`WritableStore::put_if_absent`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// No object had the key; it now holds the body sent.
    Created,
    /// An object already had the key (S3's 412 to `If-None-Match: *`). It was left as it was:
    /// its body may differ from the one sent.
    AlreadyExists,
}

/// A store that may be written: a bucket of a cache tier's own, never the origin.
///
/// Writes are create-only, so whatever a reader finds under a key is the body of the first writer,
/// whole: there is no overwrite, and so no moment at which a key holds a mix or a newer version.
/// Read back with [`ObjectStore::head`] and [`ObjectStore::get_range`] like any object.
#[async_trait]
pub trait WritableStore: ObjectStore {
    /// PutObject with `If-None-Match: *`: stores `body` under `key` unless an object already has
    /// that key. The first writer wins, even among concurrent writers: exactly one of them gets
    /// `Created`, the others `AlreadyExists`, and the key then holds the winner's body.
    ///
    /// `AlreadyExists` is an outcome, never an error. After a transient failure the store sends
    /// the request again, so `AlreadyExists` may also mean that an earlier attempt of this very
    /// call stored the body. A 409 `ConditionalRequestConflict` (a conditional write racing
    /// another write or a delete) is transient and retried like a 5xx; if it outlasts the retries
    /// the error comes back with `is_transient()` true. An empty body is a valid object.
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<PutOutcome, StoreError>;

    /// DeleteObject. Deleting a key that has no object succeeds, as in S3. Afterwards `head` and
    /// `get_range` answer `NotFound`, LIST no longer shows the key, and `put_if_absent` may
    /// create it again.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// GetObject of the whole object, unconditionally (no range, no `If-Match`): for a cache
    /// tier's own objects, which are immutable once written. An object longer than `max_len` is
    /// refused with `InvalidRange` without reading its body.
    async fn get_object(&self, key: &str, max_len: u64) -> Result<Bytes, StoreError>;
}

impl fmt::Debug for dyn WritableStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl fmt::Debug for dyn ObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}
