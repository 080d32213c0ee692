//! Request accounting: the [`Op`] classification of requests, the [`Counts`] snapshot (server-wide and per
//! bucket) and the request log ([`RequestRecord`]), plus the internal mutable [`Stats`] they are taken from.

use crate::faults::FaultKind;

/// The kind of S3 operation a request was classified as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `GET /{bucket}` listing (ListObjectsV2, or V1 without `list-type`).
    List,
    /// `HEAD /{bucket}/{key}` (HeadObject).
    Head,
    /// `GET /{bucket}/{key}` (GetObject).
    Get,
    /// `HEAD /{bucket}` (HeadBucket).
    HeadBucket,
    /// `PUT /{bucket}/{key}` (PutObject).
    Put,
    /// `DELETE /{bucket}/{key}` (DeleteObject).
    Delete,
    /// Everything else: GetBucketLocation, CreateBucket, DeleteBucket, ListBuckets, unsupported requests.
    Other,
}

/// Per-operation request counters since the last reset (of the whole server, or of one bucket).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub list: u64,
    pub head: u64,
    pub get: u64,
    pub head_bucket: u64,
    pub put: u64,
    pub delete: u64,
    pub other: u64,
    /// Object body bytes handed to the connection for successful (200/206) GetObject responses.
    pub get_bytes: u64,
    /// Responses with status >= 400 (including injected 500/503).
    pub errors: u64,
    /// Injected faults.
    pub faults: u64,
}

impl Counts {
    /// Number of requests of all kinds (`list + head + get + head_bucket + put + delete + other`).
    pub fn total(&self) -> u64 {
        self.list + self.head + self.get + self.head_bucket + self.put + self.delete + self.other
    }

    fn bump(&mut self, op: Op) {
        match op {
            Op::List => self.list += 1,
            Op::Head => self.head += 1,
            Op::Get => self.get += 1,
            Op::HeadBucket => self.head_bucket += 1,
            Op::Put => self.put += 1,
            Op::Delete => self.delete += 1,
            Op::Other => self.other += 1,
        }
    }
}

/// One entry of the request log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// Monotonic request number (also the `x-amz-request-id`, as 16 upper-case hex digits).
    pub seq: u64,
    pub op: Op,
    /// HTTP method, e.g. `"GET"`.
    pub method: String,
    /// Percent-decoded request path, e.g. `"/bucket/dir/file name"`.
    pub path: String,
    /// Decoded bucket name (empty for `/`).
    pub bucket: String,
    /// Decoded object key, if the path had one.
    pub key: Option<String>,
    /// Raw query string (without `?`), empty if none.
    pub query: String,
    /// `Range` request header.
    pub range: Option<String>,
    /// `If-Match` request header.
    pub if_match: Option<String>,
    /// `If-None-Match` request header.
    pub if_none_match: Option<String>,
    /// Response status; 0 while the response head has not been produced or when the connection was aborted.
    pub status: u16,
    /// The fault injected into this request, if any.
    pub fault: Option<FaultKind>,
}

/// Handle to a log entry, valid for the epoch (reset generation) it was created in, and to the counters of the
/// request's bucket (valid in every epoch: a request that straddles a reset counts in the new epoch, server-wide
/// and for its bucket alike).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordHandle {
    epoch: u64,
    index: usize,
    bucket: usize,
}

#[derive(Default)]
pub(crate) struct Stats {
    counts: Counts,
    /// Counters per bucket name (empty for requests to `/`), in order of first request. Entries are never
    /// removed, only zeroed by a reset, so a [`RecordHandle`]'s bucket index stays valid.
    buckets: Vec<(String, Counts)>,
    log: Vec<RequestRecord>,
    epoch: u64,
}

impl Stats {
    pub(crate) fn counts(&self) -> Counts {
        self.counts
    }

    /// The counters of requests to `bucket` (all zero if it was never asked).
    pub(crate) fn counts_for(&self, bucket: &str) -> Counts {
        self.buckets
            .iter()
            .find(|(name, _)| name == bucket)
            .map(|(_, c)| *c)
            .unwrap_or_default()
    }

    pub(crate) fn requests(&self) -> Vec<RequestRecord> {
        self.log.clone()
    }

    pub(crate) fn reset(&mut self) {
        self.counts = Counts::default();
        for (_, c) in &mut self.buckets {
            *c = Counts::default();
        }
        self.log.clear();
        self.epoch += 1;
    }

    /// Counts the request by op and appends it to the log.
    pub(crate) fn register(&mut self, record: RequestRecord) -> RecordHandle {
        self.counts.bump(record.op);
        let bucket = match self.buckets.iter().position(|(name, _)| *name == record.bucket) {
            Some(i) => i,
            None => {
                self.buckets.push((record.bucket.clone(), Counts::default()));
                self.buckets.len() - 1
            }
        };
        self.buckets[bucket].1.bump(record.op);
        self.log.push(record);
        RecordHandle {
            epoch: self.epoch,
            index: self.log.len() - 1,
            bucket,
        }
    }

    fn entry(&mut self, h: RecordHandle) -> Option<&mut RequestRecord> {
        if h.epoch == self.epoch {
            self.log.get_mut(h.index)
        } else {
            None
        }
    }

    pub(crate) fn set_fault(&mut self, h: RecordHandle, kind: FaultKind) {
        self.counts.faults += 1;
        self.buckets[h.bucket].1.faults += 1;
        if let Some(e) = self.entry(h) {
            e.fault = Some(kind);
        }
    }

    pub(crate) fn set_status(&mut self, h: RecordHandle, status: u16) {
        if status >= 400 {
            self.counts.errors += 1;
            self.buckets[h.bucket].1.errors += 1;
        }
        if let Some(e) = self.entry(h) {
            e.status = status;
        }
    }

    pub(crate) fn add_get_bytes(&mut self, h: RecordHandle, n: u64) {
        self.counts.get_bytes += n;
        self.buckets[h.bucket].1.get_bytes += n;
    }
}
