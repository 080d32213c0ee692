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
    shared_line(&mut out, &counter, gauge(metrics::SHARED_BREAKER_OPEN) >= 1.0);
    out
}

/// The shared tier's line, only for a daemon that uses one: some shared-tier request or block
/// was counted (the probe at mount counts requests), or the breaker is open.
fn shared_line(out: &mut String, counter: &dyn Fn(&str, &[&str]) -> f64, breaker_open: bool) {
    let (hits, misses) = (counter(metrics::SHARED_HITS, &[]), counter(metrics::SHARED_MISSES, &[]));
    let activity = [
        metrics::SHARED_REQUESTS,
        metrics::SHARED_HITS,
        metrics::SHARED_MISSES,
        metrics::SHARED_INVALID,
        metrics::SHARED_ERRORS,
        metrics::SHARED_LEASE_WAITS,
        metrics::SHARED_WRITES,
        metrics::SHARED_WRITE_DROPS,
    ]
    .iter()
    .any(|name| counter(name, &[]) > 0.0);
    if !activity && !breaker_open {
        return;
    }
    let _ = writeln!(
        out,
        "shared cache: {hits:.0} hits, {misses:.0} misses ({:.1}% hit ratio), {:.1} MiB served, {:.0} invalid blocks, \
         {:.0} errors, {:.0} lease waits ({:.0} timed out), {:.0} writes, {:.0} write drops{}",
        100.0 * hits / (hits + misses).max(1.0),
        counter(metrics::SHARED_HIT_BYTES, &[]) / (1 << 20) as f64,
        counter(metrics::SHARED_INVALID, &[]),
        counter(metrics::SHARED_ERRORS, &[]),
        counter(metrics::SHARED_LEASE_WAITS, &[]),
        counter(metrics::SHARED_LEASE_TIMEOUTS, &[]),
        counter(metrics::SHARED_WRITES, &[]),
        counter(metrics::SHARED_WRITE_DROPS, &[]),
        if breaker_open { ", breaker open" } else { "" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, StoreRole};

    #[test]
    fn summarizes_every_line_from_the_daemons_encoding() {
        let m = Metrics::new();
        for status in [Some(206), Some(206), Some(503), None] {
            m.store_request(StoreRole::Origin, "GetObject", status, 0.01);
        }
        m.store_request(StoreRole::Origin, "HeadObject", Some(200), 0.01);
        m.store_request(StoreRole::Origin, "HeadObject", Some(404), 0.01);
        m.store_request(StoreRole::Origin, "ListObjectsV2", Some(200), 0.01);
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

    /// The four lines every daemon prints, for a daemon that did nothing else.
    const IDLE: &str = "disk cache:   0 hits, 0 misses (0.0% hit ratio)\n\
                        bytes:        0.0 MiB read through the mount, 0.0 MiB from the disk cache, 0.0 MiB from S3\n\
                        S3 requests:  0 GET, 0 HEAD, 0 LIST (0 failed)\n\
                        cache disk:   0.0 MiB used, 0 evictions, 0 corrupt blocks, 0 write failures\n";

    #[test]
    fn the_shared_cache_line_counts_every_shared_metric() {
        let m = Metrics::new();
        let s = &m.shared;
        s.hits.inc_by(6);
        s.misses.inc_by(2);
        s.hit_bytes.inc_by(6 << 20);
        s.invalid.inc_by(3);
        s.errors.inc_by(4);
        s.lease_waits.inc_by(5);
        s.lease_timeouts.inc_by(1);
        s.writes.inc_by(7);
        s.written_bytes.inc_by(7 << 20);
        s.write_drops.inc_by(8);
        // The shared bucket's requests are not the source's: the S3 line stays at zero.
        m.store_request(StoreRole::SharedTier, "GetObject", Some(200), 0.01);
        m.store_request(StoreRole::SharedTier, "PutObject", Some(412), 0.01);
        assert_eq!(
            summary(&m.encode()),
            format!(
                "{IDLE}shared cache: 6 hits, 2 misses (75.0% hit ratio), 6.0 MiB served, 3 invalid blocks, \
                 4 errors, 5 lease waits (1 timed out), 7 writes, 8 write drops\n"
            )
        );
        s.breaker_open.set(1);
        assert!(summary(&m.encode()).ends_with(", 8 write drops, breaker open\n"));
        s.breaker_open.set(0);
        assert!(summary(&m.encode()).ends_with(", 8 write drops\n"));
    }

    /// A mount with a shared tier has counted its probe's requests before anything is read:
    /// it gets the line, all zeros.
    #[test]
    fn a_shared_tier_that_served_nothing_yet_still_has_its_line() {
        let m = Metrics::new();
        m.store_request(StoreRole::SharedTier, "PutObject", Some(200), 0.01);
        m.store_request(StoreRole::SharedTier, "DeleteObject", Some(204), 0.01);
        assert_eq!(
            summary(&m.encode()),
            format!(
                "{IDLE}shared cache: 0 hits, 0 misses (0.0% hit ratio), 0.0 MiB served, 0 invalid blocks, \
                 0 errors, 0 lease waits (0 timed out), 0 writes, 0 write drops\n"
            )
        );
    }

    #[test]
    fn an_open_breaker_alone_shows_the_line() {
        let m = Metrics::new();
        m.shared.breaker_open.set(1);
        assert!(summary(&m.encode()).starts_with(IDLE));
        assert!(
            summary(&m.encode()).ends_with("0 writes, 0 write drops, breaker open\n"),
            "{}",
            summary(&m.encode())
        );
    }

    /// A daemon whose scrape has no shared-tier family at all (an older build) gets no line.
    #[test]
    fn a_scrape_without_shared_metrics_has_no_shared_line() {
        let m = Metrics::new();
        m.shared.hits.inc_by(3);
        m.shared.breaker_open.set(1);
        let text: String = m
            .encode()
            .lines()
            .filter(|l| !l.contains("shared_cache"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(!text.is_empty());
        assert_eq!(summary(&text), IDLE);
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
