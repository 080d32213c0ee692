//! `s3cachefs-testserver`: a small, self-contained, in-memory S3-compatible HTTP server for tests.
//!
//! It owns the public [`TestServer`] handle: a server running on its own OS thread with its own tokio runtime,
//! speaking path-style S3 (`/{bucket}` and `/{bucket}/{key}`) over HTTP/1.1 keep-alive on loopback, good enough
//! for the official `aws-sdk-s3` client (with `force_path_style(true)`). Signatures are not checked; the access
//! key named in a SigV4 `Authorization` header can be restricted to key prefixes ([`TestServer::restrict`]), and
//! STS `GetCallerIdentity` answers an ARN per access key ([`TestServer::set_identity`]). Besides the object store it offers request counting and logging, first-byte latency, bandwidth
//! throttling and deterministic fault injection ([`FaultPlan`]); counts, latency and faults are server-wide or
//! for one bucket.
//!
//! The API is synchronous and can be used from plain `#[test]` functions as well as from async code.
//!
//! ```no_run
//! use s3cachefs_testserver::TestServer;
//! let server = TestServer::start();
//! server.put("bucket", "dir/file.txt", &b"hello"[..]);
//! println!("{}", server.endpoint());
//! ```

mod body;
mod chunked;
mod conn;
mod faults;
mod handler;
mod list;
mod state;
mod stats;
mod store;
mod xml;

use std::fmt;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use faults::{FaultKind, FaultPlan, FaultRule};
pub use stats::{Counts, Op, RequestRecord};

use conn::{ConnCtl, ConnStream};
use faults::FaultState;
use state::Shared;
use store::Object;

/// The ARN STS `GetCallerIdentity` answers for an access key without one of its own
/// ([`TestServer::set_identity`]): `arn:aws:iam::000000000000:user/u<hash>`, one user per key, the
/// key itself not in it (as in AWS, where an ARN never shows the access key).
pub fn default_arn(access_key: &str) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    access_key.hash(&mut h);
    format!("arn:aws:iam::000000000000:user/u{:016x}", h.finish())
}

/// Handle to a running test server. Dropping it stops accepting connections, shuts the server's runtime down
/// (open connections are closed) and joins its thread.
pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TestServer {
    /// Starts a server on `127.0.0.1:0` (an ephemeral port). Panics if that fails.
    pub fn start() -> TestServer {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).expect("s3 test server: failed to start on 127.0.0.1:0")
    }

    /// Starts a server listening on `addr`. Returns once the socket is listening.
    pub fn start_on(addr: SocketAddr) -> std::io::Result<TestServer> {
        let listener = StdTcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3-testserver-worker")
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared::default());
        let (tx, rx) = oneshot::channel();
        let accept_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("s3-testserver".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => accept_loop(listener, accept_shared, rx).await,
                        Err(e) => eprintln!("s3 test server: cannot register listener: {e}"),
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(TestServer {
            addr,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Creates the bucket if it does not exist.
    pub fn create_bucket(&self, bucket: &str) {
        self.shared.store_mut().create_bucket(bucket);
    }

    /// Stores an object (creating the bucket if missing) with Last-Modified = now; returns the quoted ETag.
    pub fn put(&self, bucket: &str, key: &str, data: impl Into<Bytes>) -> String {
        self.put_with_mtime(bucket, key, data, SystemTime::now())
    }

    /// Stores an object with the given Last-Modified (truncated to seconds); returns the quoted ETag.
    pub fn put_with_mtime(&self, bucket: &str, key: &str, data: impl Into<Bytes>, mtime: SystemTime) -> String {
        let obj = Object::new(data.into(), mtime);
        self.shared.store_mut().put(bucket, key, obj)
    }

    /// Removes an object (no-op if missing).
    pub fn delete(&self, bucket: &str, key: &str) {
        self.shared.store_mut().delete(bucket, key);
    }

    /// The stored data of an object.
    pub fn get_object(&self, bucket: &str, key: &str) -> Option<Bytes> {
        self.shared.store().get(bucket, key).map(|o| o.data.clone())
    }

    /// The keys of `bucket` that start with `prefix`, in listing order (empty if the bucket does not exist).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let store = self.shared.store();
        let Some(b) = store.bucket(bucket) else {
            return Vec::new();
        };
        b.range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// While denied, every request to the bucket answers 403 AccessDenied (empty body for HEAD).
    pub fn deny_bucket(&self, bucket: &str, deny: bool) {
        self.shared.store_mut().set_denied(bucket, deny);
    }

    /// Whether STS `GetCallerIdentity` (POST `/`, `Action=GetCallerIdentity`) answers (the default, as AWS).
    /// Off, it answers 400 `InvalidAction`, as an S3-compatible store without STS. STS requests are not counted.
    pub fn set_sts(&self, enabled: bool) {
        self.shared.iam().sts = enabled;
    }

    /// The ARN `GetCallerIdentity` answers for `access_key` (default [`default_arn`]).
    pub fn set_identity(&self, access_key: &str, arn: &str) {
        self.shared.iam().arns.insert(access_key.to_owned(), arn.to_owned());
    }

    /// Restricts `access_key` in `bucket` to keys under `prefixes`: HEAD/GET/PUT/DELETE of any other key, and
    /// listings whose prefix neither is under one nor leads to one, answer 403 AccessDenied. The access key is
    /// the one named in the request's SigV4 `Authorization` header; unsigned requests are not restricted.
    pub fn restrict(&self, access_key: &str, bucket: &str, prefixes: &[&str]) {
        self.shared.iam().prefixes.insert(
            (access_key.to_owned(), bucket.to_owned()),
            prefixes.iter().map(|p| p.to_string()).collect(),
        );
    }

    /// Snapshot of the counters.
    pub fn counts(&self) -> Counts {
        self.shared.stats().counts()
    }

    /// Snapshot of the counters of requests to one bucket (all zero for a bucket never asked), e.g. to tell a
    /// cache bucket's requests from the source bucket's. Requests to `/` (ListBuckets) count under `""`.
    pub fn counts_for(&self, bucket: &str) -> Counts {
        self.shared.stats().counts_for(bucket)
    }

    /// Zeroes the counters (server-wide and every bucket's) and clears the request log.
    pub fn reset_counts(&self) {
        self.shared.stats().reset();
    }

    /// The requests received since the last reset, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.stats().requests()
    }

    /// Delay before the response head of every request (default 0). A bucket with its own latency
    /// ([`TestServer::set_bucket_latency`]) keeps it.
    pub fn set_latency(&self, d: Duration) {
        self.shared.update_settings(|s| s.latency = d);
    }

    /// Delay before the response head of every request to `bucket`, instead of the server-wide latency
    /// (`None`: the server-wide latency again), e.g. a faster cache bucket next to the source.
    pub fn set_bucket_latency(&self, bucket: &str, d: Option<Duration>) {
        self.shared.set_bucket_latency(bucket, d);
    }

    /// Throttles each response body to this many bytes per second (`None` or `Some(0)` = unlimited).
    pub fn set_bandwidth(&self, bytes_per_sec: Option<u64>) {
        self.shared
            .update_settings(|s| s.bandwidth = bytes_per_sec.filter(|b| *b > 0));
    }

    /// Installs the server-wide fault plan, for requests to every bucket (replacing any previous server-wide
    /// plan; rule counters and the PRNG start afresh). Bucket plans ([`TestServer::set_bucket_faults`]) stay.
    pub fn set_faults(&self, plan: FaultPlan) {
        self.shared.set_faults(Some(FaultState::new(plan)));
    }

    /// Installs a fault plan for requests to `bucket` only (replacing any previous plan of that bucket), e.g. to
    /// break a cache bucket while the source bucket keeps working. It has its own rule counters and PRNG, rolled
    /// only by requests to `bucket`, so which of them it faults does not depend on requests to other buckets. A
    /// request to `bucket` rolls this plan first; only when it injects nothing does the server-wide plan roll.
    pub fn set_bucket_faults(&self, bucket: &str, plan: FaultPlan) {
        self.shared.set_bucket_faults(bucket, Some(FaultState::new(plan)));
    }

    /// Removes the fault plan of `bucket` (the server-wide plan and other buckets' plans stay).
    pub fn clear_bucket_faults(&self, bucket: &str) {
        self.shared.set_bucket_faults(bucket, None);
    }

    /// Removes every fault plan: the server-wide one and each bucket's.
    pub fn clear_faults(&self) {
        self.shared.clear_all_faults();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut shutdown: oneshot::Receiver<()>) {
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            res = listener.accept() => res,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                let ctl = Arc::new(ConnCtl::default());
                let io = TokioIo::new(ConnStream::new(stream, ctl.clone()));
                let shared = shared.clone();
                let service = service_fn(move |req| handler::handle(shared.clone(), ctl.clone(), req));
                tokio::spawn(async move {
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(io, service)
                        .await;
                });
            }
            // E.g. EMFILE: back off briefly instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}
