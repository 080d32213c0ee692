//! Offline restart (docs/SEMANTICS.md, "Offline restart"): a mount whose start-up bucket check
//! cannot reach S3 starts anyway when the cache holds its metadata, serves what is cached,
//! says it is degraded, and fetches again once S3 answers.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    r
}

fn degraded_gauge(port: u16) -> String {
    http_get(port, "/metrics")
        .lines()
        .find(|l| l.starts_with("s3cachefs_origin_degraded "))
        .unwrap_or_else(|| panic!("no s3cachefs_origin_degraded"))
        .to_string()
}

fn objects(s: &TestServer) -> Vec<(String, Vec<u8>)> {
    (0..4)
        .map(|i| {
            let key = format!("jars/f{i}.jar");
            let body = data((1 << 20) * (i + 1) + 123, 40 + i as u64);
            s.put(BUCKET, &key, body.clone());
            (key, body)
        })
        .collect()
}

#[test]
fn a_restart_while_s3_is_unreachable_serves_the_cache_and_recovers() {
    let s = server();
    let objs = objects(&s);
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path().to_str().unwrap();
    let endpoint = s.endpoint();
    let addr = s.addr();
    {
        let m = Mount::new(&s, BUCKET, &["--cache", c, "--metadata-ttl", "indefinite"]);
        assert_eq!(fs::read_dir(m.join("jars")).unwrap().count(), objs.len());
        for (k, b) in &objs[..3] {
            assert!(fs::read(m.join(k)).unwrap() == *b, "{k}");
        }
    }
    drop(s); // connections to the port are now refused
    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let args = [
        "--cache",
        c,
        "--metadata-ttl",
        "indefinite",
        "--metrics-addr",
        metrics_addr.as_str(),
        "--max-attempts",
        "2",
    ];
    let m = Mount::try_new_at(&endpoint, BUCKET, &args, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert!(m.log().contains("mounting degraded"), "{}", m.log());
    let health = http_get(port, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("degraded"), "{health}");
    assert_eq!(degraded_gauge(port), "s3cachefs_origin_degraded 1");
    assert_eq!(fs::read_dir(m.join("jars")).unwrap().count(), objs.len());
    for (k, b) in &objs[..3] {
        assert!(fs::read(m.join(k)).unwrap() == *b, "{k} differs offline");
    }
    // Never read: its metadata is cached, its bytes are not. An error, not a hang.
    let started = Instant::now();
    let e = fs::read(m.join(&objs[3].0)).expect_err("uncached bytes offline");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(started.elapsed() < Duration::from_secs(60));

    // S3 comes back on the same address: the mount fetches again, and is no longer degraded.
    let s = TestServer::start_on(addr).unwrap();
    let _ = objects(&s);
    let deadline = Instant::now() + Duration::from_secs(30);
    while degraded_gauge(port) != "s3cachefs_origin_degraded 0" {
        assert!(Instant::now() < deadline, "still degraded:\n{}", m.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(http_get(port, "/healthz").split("\r\n\r\n").nth(1), Some("ok\n"));
    let (k, b) = &objs[3];
    assert!(fs::read(m.join(k)).unwrap() == *b);
    assert!(s.counts().get > 0);
}

#[test]
fn without_cached_metadata_or_when_denied_the_mount_still_fails() {
    let s = server();
    s.put(BUCKET, "f", b"x".to_vec());
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path().to_str().unwrap();
    let args = ["--cache", c, "--metadata-ttl", "indefinite", "--max-attempts", "2"];
    // Nothing cached for this source: refused.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let e = Mount::try_new_at(&nowhere, BUCKET, &args, &[]).err().expect("refused");
    assert!(e.contains("cannot reach"), "{e}");
    // Cached, but S3 answers: access denied and a missing bucket still fail.
    {
        let m = Mount::new(&s, BUCKET, &args);
        assert_eq!(fs::read(m.join("f")).unwrap(), b"x");
    }
    s.deny_bucket(BUCKET, true);
    let e = Mount::try_new(&s, BUCKET, &args).err().expect("denied");
    assert!(e.contains("access denied"), "{e}");
    s.deny_bucket(BUCKET, false);
    let e = Mount::try_new(&s, "no-such-bucket", &args).err().expect("missing");
    assert!(e.contains("does not exist"), "{e}");
}
