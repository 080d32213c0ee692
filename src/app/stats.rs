//! `s3cachefs stats`: a human summary of a running mount's metrics, read from its
//! `--metrics-addr` endpoint. Every metric is looked up by its constant in `metrics`, the one
//! the daemon registered it under.

use std::fmt::Write;
use std::net::SocketAddr;

use crate::metrics::{self, counter_name, gauge_name, parse_text, sum};

use super::http;

/// Statuses of S3 attempts that succeeded: a 404 is an answer (no such key), not a failure.
const OK_STATUSES: [&str; 3] = ["\"200\"", "\"206\"", "\"404\""];

pub fn run(addr: SocketAddr) -> anyhow::Result<()> {
    let text = http::get(addr, "/metrics")?;
    print!("{}", summary(&text));
    Ok(())
}

/// The summary of one `/metrics` scrape, one line per topic.
fn summary(text: &str) -> String {
    let m = parse_text(text);
    let counter = |name: &str, labels: &[&str]| sum(&m, &counter_name(name), labels);
    let gauge = |name: &str| sum(&m, &gauge_name(name), &[]);
    let (hits, misses) = (counter(metrics::CACHE_HITS, &[]), counter(metrics::CACHE_MISSES, &[]));
    let mib = |b: f64| b / (1 << 20) as f64;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "disk cache:   {hits:.0} hits, {misses:.0} misses ({:.1}% hit ratio)",
        100.0 * hits / (hits + misses).max(1.0)
    );
    let _ = writeln!(
        out,
        "bytes:        {:.1} MiB read through the mount, {:.1} MiB from the disk cache, {:.1} MiB from S3",
        mib(counter(metrics::READ_BYTES, &[])),
        mib(counter(metrics::CACHE_HIT_BYTES, &[])),
        mib(counter(metrics::S3_BYTES, &[]))
    );
    let requests = format!("{}{{", counter_name(metrics::S3_REQUESTS));
    let succeeded: f64 = m
        .iter()
        .filter(|(s, _)| s.starts_with(&requests) && OK_STATUSES.iter().any(|c| s.contains(c)))
        .map(|(_, v)| v)
        .sum();
    let _ = writeln!(
        out,
        "S3 requests:  {:.0} GET, {:.0} HEAD, {:.0} LIST ({:.0} failed)",
        counter(metrics::S3_REQUESTS, &["operation=\"GetObject\""]),
        counter(metrics::S3_REQUESTS, &["operation=\"HeadObject\""]),
        counter(metrics::S3_REQUESTS, &["operation=\"ListObjectsV2\""]),
        counter(metrics::S3_REQUESTS, &[]) - succeeded
    );
    let _ = writeln!(
        out,
        "cache disk:   {:.1} MiB used, {:.0} evictions, {:.0} corrupt blocks, {:.0} write failures",
        mib(gauge(metrics::CACHE_SIZE_BYTES)),
        counter(metrics::CACHE_EVICTIONS, &[]),
        counter(metrics::CACHE_CORRUPT_BLOCKS, &[]),
        counter(metrics::CACHE_WRITE_FAILURES, &[])
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn summarizes_every_line_from_the_daemons_encoding() {
        let m = Metrics::new();
        for status in [Some(206), Some(206), Some(503), None] {
            m.s3_request("GetObject", status, 0.01);
        }
        m.s3_request("HeadObject", Some(200), 0.01);
        m.s3_request("HeadObject", Some(404), 0.01);
        m.s3_request("ListObjectsV2", Some(200), 0.01);
        m.s3_bytes.inc_by(2 << 20);
        m.read_bytes.inc_by(6 << 20);
        m.cache.hits.inc_by(3);
        m.cache.misses.inc_by(1);
        m.cache.hit_bytes.inc_by(3 << 20);
        m.cache.evictions.inc_by(7);
        m.cache.corrupt.inc_by(2);
        m.cache.write_failures.inc_by(5);
        m.set_cache_size_source(|| 10 << 20);
        assert_eq!(
            summary(&m.encode()),
            "disk cache:   3 hits, 1 misses (75.0% hit ratio)\n\
             bytes:        6.0 MiB read through the mount, 3.0 MiB from the disk cache, 2.0 MiB from S3\n\
             S3 requests:  4 GET, 2 HEAD, 1 LIST (2 failed)\n\
             cache disk:   10.0 MiB used, 7 evictions, 2 corrupt blocks, 5 write failures\n"
        );
    }

    #[test]
    fn an_idle_daemon_is_all_zeros() {
        assert_eq!(
            summary(&Metrics::new().encode()),
            "disk cache:   0 hits, 0 misses (0.0% hit ratio)\n\
             bytes:        0.0 MiB read through the mount, 0.0 MiB from the disk cache, 0.0 MiB from S3\n\
             S3 requests:  0 GET, 0 HEAD, 0 LIST (0 failed)\n\
             cache disk:   0.0 MiB used, 0 evictions, 0 corrupt blocks, 0 write failures\n"
        );
    }
}
