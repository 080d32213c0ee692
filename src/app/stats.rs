//! `s3cachefs stats`: a human summary of a running mount's metrics, read from its
//! `--metrics-addr` endpoint. Every metric is looked up by its constant in `metrics`, the one
//! the daemon registered it under.

use std::net::SocketAddr;

use crate::metrics::{self, counter_name, gauge_name, parse_text, sum};

use super::http;

/// Statuses of S3 attempts that succeeded: a 404 is an answer (the key does not exist), not a failure.
const OK_STATUSES: [&str; 3] = ["\"200\"", "\"206\"", "\"404\""];

pub fn run(addr: SocketAddr) -> anyhow::Result<()> {
    let text = http::get(addr, "/metrics")?;
    let m = parse_text(&text);
    let counter = |name: &str, labels: &[&str]| sum(&m, &counter_name(name), labels);
    let gauge = |name: &str| sum(&m, &gauge_name(name), &[]);
    let (hits, misses) = (counter(metrics::CACHE_HITS, &[]), counter(metrics::CACHE_MISSES, &[]));
    let mib = |b: f64| b / (1 << 20) as f64;
    println!(
        "disk cache:   {hits:.0} hits, {misses:.0} misses ({:.1}% hit ratio)",
        100.0 * hits / (hits + misses).max(1.0)
    );
    println!(
        "bytes:        {:.1} MiB read through the mount, {:.1} MiB from the disk cache, {:.1} MiB from S3",
        mib(counter(metrics::READ_BYTES, &[])),
        mib(counter(metrics::CACHE_HIT_BYTES, &[])),
        mib(counter(metrics::S3_BYTES, &[]))
    );
    let requests = counter_name(metrics::S3_REQUESTS);
    let series = format!("{requests}{{");
    let succeeded: f64 = m
        .iter()
        .filter(|(s, _)| s.starts_with(&series) && OK_STATUSES.iter().any(|c| s.contains(c)))
        .map(|(_, v)| v)
        .sum();
    println!(
        "S3 requests:  {:.0} GET, {:.0} HEAD, {:.0} LIST ({:.0} failed)",
        counter(metrics::S3_REQUESTS, &["operation=\"GetObject\""]),
        counter(metrics::S3_REQUESTS, &["operation=\"HeadObject\""]),
        counter(metrics::S3_REQUESTS, &["operation=\"ListObjectsV2\""]),
        counter(metrics::S3_REQUESTS, &[]) - succeeded
    );
    println!(
        "cache disk:   {:.1} MiB used, {:.0} evictions, {:.0} corrupt blocks, {:.0} write failures",
        mib(gauge(metrics::CACHE_SIZE_BYTES)),
        counter(metrics::CACHE_EVICTIONS, &[]),
        counter(metrics::CACHE_CORRUPT_BLOCKS, &[]),
        counter(metrics::CACHE_WRITE_FAILURES, &[])
    );
    Ok(())
}
