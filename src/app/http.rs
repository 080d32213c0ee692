//! The operator endpoint (`--metrics-addr`): Prometheus text at `/metrics`, and `/healthz`,
//! which answers 200 only while the mount answers a `stat` (a hung or dead FUSE session
//! turns it into 503). A deliberately small HTTP/1.1 responder: one request per connection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

use crate::metrics::Metrics;

/// How long `/healthz` waits for the mount to answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on --metrics-addr {addr}: {e}"))
}

pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, mountpoint: PathBuf) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving /metrics and /healthz");
    }
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (metrics, mountpoint) = (metrics.clone(), mountpoint.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &metrics, mountpoint).await {
                debug!("metrics connection: {e}");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics, mountpoint: PathBuf) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // Read the request head (bounded: 8 KiB, 5 s).
    let read_head = async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(5), read_head)
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)??;
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics.encode()),
        ("GET", "/healthz") => {
            if mount_answers(mountpoint).await {
                ("200 OK", "text/plain", health_body(metrics))
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    "mount is not answering\n".to_string(),
                )
            }
        }
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// `stat` of the mount's root, off the runtime (it goes through FUSE), with a timeout.
async fn mount_answers(mountpoint: PathBuf) -> bool {
    let stat = tokio::task::spawn_blocking(move || std::fs::metadata(&mountpoint).is_ok());
    matches!(tokio::time::timeout(HEALTH_TIMEOUT, stat).await, Ok(Ok(true)))
}

/// `GET path` on `addr`; the body when the status is 200.
pub fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| {
        anyhow::anyhow!("cannot connect to {addr}: {e} (is a mount running with --metrics-addr {addr}?)")
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or("");
    anyhow::ensure!(status.contains(" 200 "), "{addr}{path} answered {status:?}");
    Ok(body.to_string())
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
