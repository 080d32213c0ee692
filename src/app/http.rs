//! The operator endpoint (`--metrics-addr`): Prometheus text at `/metrics`, and `/healthz`,
//! which answers 200 only while every mountpoint of the process answers a `stat` and is still a
//! mount (a hung or dead FUSE session, or a mount detached from outside, turns it into 503). Also the small client that `s3cachefs stats` uses.
//!
//! Served by hyper (HTTP/1.1, already in the dependency tree through the AWS SDK), one request per
//! connection. Bounds, so that nothing a client does can tie the endpoint up or grow without
//! limit:
//! - at most [`MAX_CONNECTIONS`] connections at once; past that, new connections wait in the
//!   listen backlog until one closes;
//! - a connection must send its request head within [`HEADER_TIMEOUT`] and is closed after
//!   [`CONNECTION_TIMEOUT`] whatever it does, so idle or slow clients free their slot;
//! - a failing `accept` (out of descriptors) backs off, from [`ACCEPT_BACKOFF_MIN`] doubling to
//!   [`ACCEPT_BACKOFF_MAX`], instead of spinning;
//! - `/healthz` runs at most one probe (the `stat`s, on a blocking thread) at a time: concurrent
//!   callers share the probe in flight, and each waits for it at most [`HEALTH_TIMEOUT`]. A probe
//!   stuck on a hung mount is never joined by a second one: callers keep getting 503 until it
//!   returns.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// How long a `/healthz` caller waits for the mount to answer.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once: Prometheus and kubelet's probes need a handful; the cap bounds
/// descriptors and memory whatever connects.
pub const MAX_CONNECTIONS: usize = 64;
/// Time to send the request head (kubelet's and Prometheus' requests arrive in one packet).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a whole connection: the head, `/healthz`'s probe (5 s) and writing the answer.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);
/// First pause after a failed `accept`; doubled on each failure in a row.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause after failed `accept`s.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on --metrics-addr {addr}: {e}"))
}

/// Serves `/metrics` from `metrics` and `/healthz` for `mountpoints` (healthy when all of them
/// answer) until the runtime stops.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, mountpoints: Vec<PathBuf>) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving /metrics and /healthz");
    }
    let health = Arc::new(Health::new(stat_all(mountpoints), HEALTH_TIMEOUT));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                stream
            }
            Err(e) => {
                // EMFILE and the like: they persist for a while, so wait instead of spinning.
                if backoff == ACCEPT_BACKOFF_MIN {
                    warn!("metrics endpoint: accept failed: {e}; retrying with back-off");
                } else {
                    debug!("metrics endpoint: accept failed: {e}");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let (metrics, health) = (metrics.clone(), health.clone());
                async move { Ok::<_, Infallible>(respond(&req, &metrics, &health).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!("metrics connection: {e}"),
                Err(_) => debug!("metrics connection: closed after {CONNECTION_TIMEOUT:?}"),
            }
        });
    }
}

async fn respond<B>(req: &Request<B>, metrics: &Metrics, health: &Arc<Health>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.encode(),
        ),
        (&Method::GET, "/healthz") => {
            if health.check().await {
                (StatusCode::OK, "text/plain", health_body(metrics))
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "mount is not answering\n".to_string(),
                )
            }
        }
        (&Method::GET, _) => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_string()),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

/// The probe `/healthz` runs: a `stat` of every mountpoint (through FUSE, so it may block), each
/// of which must still be a mount: on another device than its parent directory. A mount detached
/// from outside (`umount -l`) leaves a plain directory behind, which is not healthy.
fn stat_all(mountpoints: Vec<PathBuf>) -> impl Fn() -> bool + Send + Sync + 'static {
    move || mountpoints.iter().all(|m| is_mounted(m))
}

fn is_mounted(mountpoint: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent = match mountpoint.parent() {
        Some(p) if p.as_os_str().is_empty() => std::path::Path::new("."),
        Some(p) => p,
        None => return false,
    };
    match (std::fs::metadata(parent), std::fs::metadata(mountpoint)) {
        (Ok(p), Ok(m)) => p.dev() != m.dev(),
        _ => false,
    }
}

type Probe = dyn Fn() -> bool + Send + Sync;

/// Single-flight health probe: at most one probe runs at a time, on a blocking thread; callers
/// that arrive while it runs wait for its result (each at most `timeout`).
struct Health {
    probe: Arc<Probe>,
    timeout: Duration,
    /// The result channel of the probe in flight, if any.
    running: Mutex<Option<watch::Receiver<Option<bool>>>>,
}

impl Health {
    fn new(probe: impl Fn() -> bool + Send + Sync + 'static, timeout: Duration) -> Health {
        Health {
            probe: Arc::new(probe),
            timeout,
            running: Mutex::new(None),
        }
    }

    /// Whether the probe succeeds: the result of the probe in flight, or of a new one. `false`
    /// when it does not finish within the timeout.
    async fn check(self: &Arc<Self>) -> bool {
        let mut rx = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            match &*running {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    *running = Some(rx.clone());
                    let this = self.clone();
                    tokio::task::spawn_blocking(move || {
                        // Clears `running` even if the probe panics, so a later caller starts anew.
                        let done = Done(&this);
                        let ok = (done.0.probe)();
                        drop(done);
                        let _ = tx.send(Some(ok));
                    });
                    rx
                }
            }
        };
        let result = tokio::time::timeout(self.timeout, rx.wait_for(Option::is_some)).await;
        matches!(result, Ok(Ok(v)) if *v == Some(true))
    }
}

/// Marks the probe as finished when dropped.
struct Done<'a>(&'a Health);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        *self.0.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// How long `get` waits to connect, and then for the whole answer.
const CLIENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET path` on `addr`; the body when the status is 200.
pub fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let connect = tokio::net::TcpStream::connect(addr);
        let stream = match tokio::time::timeout(CLIENT_CONNECT_TIMEOUT, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                anyhow::bail!("cannot connect to {addr}: {e} (is a mount running with --metrics-addr {addr}?)")
            }
            Err(_) => anyhow::bail!("cannot connect to {addr}: no answer within {CLIENT_CONNECT_TIMEOUT:?}"),
        };
        let exchange = async {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let req = Request::get(path)
                .header(header::HOST, addr.to_string())
                .body(Empty::<Bytes>::new())?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, body))
        };
        let (status, body) = tokio::time::timeout(CLIENT_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow::anyhow!("{addr}{path}: no answer within {CLIENT_TIMEOUT:?}"))??;
        anyhow::ensure!(status == StatusCode::OK, "{addr}{path} answered {status}");
        Ok(String::from_utf8_lossy(&body).into_owned())
    })
}

/// The body of a healthy `/healthz`: `ok`, plus a second line while the mount is degraded (it
/// still answers, from its cache, so the status stays 200).
fn health_body(metrics: &Metrics) -> String {
    if metrics.origin_degraded.get() != 0 {
        "ok\ndegraded: S3 did not answer at start; serving from the cache until it does\n".to_string()
    } else {
        "ok\n".to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A probe that counts its runs and blocks until `release` is sent.
    fn gated(runs: Arc<AtomicUsize>) -> (impl Fn() -> bool + Send + Sync, std::sync::mpsc::SyncSender<bool>) {
        let (tx, rx) = std::sync::mpsc::sync_channel::<bool>(16);
        let rx = Mutex::new(rx);
        let probe = move || {
            runs.fetch_add(1, Ordering::SeqCst);
            rx.lock().unwrap().recv().unwrap_or(false)
        };
        (probe, tx)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_checks_share_one_probe() {
        let runs = Arc::new(AtomicUsize::new(0));
        let (probe, release) = gated(runs.clone());
        let health = Arc::new(Health::new(probe, Duration::from_secs(30)));
        let checks: Vec<_> = (0..32)
            .map(|_| {
                let h = health.clone();
                tokio::spawn(async move { h.check().await })
            })
            .collect();
        // Let every check start and find the probe in flight.
        tokio::time::sleep(Duration::from_millis(200)).await;
        release.send(true).unwrap();
        for c in checks {
            assert!(c.await.unwrap());
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "one probe for 32 concurrent checks");
        // A later check runs a new probe.
        let h = health.clone();
        let next = tokio::spawn(async move { h.check().await });
        release.send(false).unwrap();
        assert!(!next.await.unwrap());
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_probe_times_out_and_is_never_doubled() {
        let runs = Arc::new(AtomicUsize::new(0));
        let (probe, release) = gated(runs.clone());
        let health = Arc::new(Health::new(probe, Duration::from_millis(100)));
        // The probe hangs: every check gives up after the timeout, and none starts a second probe.
        for _ in 0..5 {
            let start = std::time::Instant::now();
            assert!(!health.check().await);
            assert!(start.elapsed() < Duration::from_secs(5));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Once it returns, the next check probes again.
        release.send(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while health.running.lock().unwrap().is_some() {
            assert!(std::time::Instant::now() < deadline, "the probe did not finish");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let h = health.clone();
        let next = tokio::spawn(async move { h.check().await });
        release.send(true).unwrap();
        assert!(next.await.unwrap());
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }
}
