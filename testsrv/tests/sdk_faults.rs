//! Fault injection as observed by the `aws-sdk-s3` client (retries disabled unless stated): injected statuses,
//! broken bodies, stalls, trickling, rule filters and limits, and determinism of seeded plans.

mod common;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use common::{client, client_no_retry, pattern, status_and_code};
use s3cachefs_testserver::{FaultKind, FaultPlan, FaultRule, Op, TestServer};

const B: &str = "bkt";

/// The kinds of all `std::io::Error`s in an error's source chain.
fn io_kinds(err: &(dyn std::error::Error + 'static)) -> Vec<ErrorKind> {
    let mut kinds = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            kinds.push(io.kind());
        }
        cur = e.source();
    }
    kinds
}

fn setup() -> TestServer {
    let server = TestServer::start();
    server.put(B, "obj", pattern(200_000));
    server.put(B, "x-obj", pattern(1000));
    server.put(B, "y-obj", pattern(1000));
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_faults() {
    let server = setup();
    let c = client_no_retry(&server).await;
    server.set_faults(FaultPlan::new(1).rule(FaultRule::new(FaultKind::Status500).max_count(1)));
    let e = c.get_object().bucket(B).key("obj").send().await.unwrap_err();
    assert_eq!(status_and_code(&e), (Some(500), Some("InternalError".into())));
    // max_count reached: the next request goes through.
    c.get_object().bucket(B).key("obj").send().await.unwrap();

    server.set_faults(FaultPlan::new(1).rule(FaultRule::new(FaultKind::SlowDown).ops([Op::List])));
    let e = c.list_objects_v2().bucket(B).send().await.unwrap_err();
    assert_eq!(status_and_code(&e), (Some(503), Some("SlowDown".into())));
    // HEAD gets the status with an empty body.
    server.set_faults(FaultPlan::new(1).rule(FaultRule::new(FaultKind::Status500).ops([Op::Head])));
    let e = c.head_object().bucket(B).key("obj").send().await.unwrap_err();
    assert_eq!(status_and_code(&e).0, Some(500));
    server.clear_faults();
    c.head_object().bucket(B).key("obj").send().await.unwrap();

    let counts = server.counts();
    assert_eq!(counts.faults, 3);
    assert_eq!(counts.errors, 3);
    let faulted: Vec<_> = server
        .requests()
        .into_iter()
        .filter_map(|r| r.fault.map(|f| (r.op, f, r.status)))
        .collect();
    assert_eq!(
        faulted,
        [
            (Op::Get, FaultKind::Status500, 500),
            (Op::List, FaultKind::SlowDown, 503),
            (Op::Head, FaultKind::Status500, 500)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_retries_through_slowdown() {
    let server = setup();
    let c = client(&server).await;
    server.set_faults(FaultPlan::new(9).rule(FaultRule::new(FaultKind::SlowDown).ops([Op::Get]).max_count(2)));
    let out = c.get_object().bucket(B).key("x-obj").send().await.unwrap();
    assert_eq!(out.body.collect().await.unwrap().into_bytes().to_vec(), pattern(1000));
    let counts = server.counts();
    assert_eq!((counts.get, counts.faults, counts.errors), (3, 2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_mid_body_fails_the_body_read() {
    let server = setup();
    let c = client_no_retry(&server).await;
    server.set_faults(FaultPlan::new(1).rule(FaultRule::new(FaultKind::ResetMidBody).ops([Op::Get]).max_count(1)));
    let out = c
        .get_object()
        .bucket(B)
        .key("obj")
        .send()
        .await
        .expect("the head arrives intact");
    assert_eq!(out.content_length(), Some(200_000));
    let err = out.body.collect().await.expect_err("body read must fail");
    assert!(io_kinds(&err).contains(&ErrorKind::ConnectionReset), "{err:?}");
    let counts = server.counts();
    assert_eq!(counts.faults, 1);
    assert!(counts.get_bytes <= 100_000, "{counts:?}");
    // The server keeps working (on a new connection).
    let out = c.get_object().bucket(B).key("obj").send().await.unwrap();
    assert_eq!(out.body.collect().await.unwrap().into_bytes().len(), 200_000);

    // HEAD has no body: the connection is dropped before any response.
    server.set_faults(FaultPlan::new(1).rule(FaultRule::new(FaultKind::ResetMidBody).ops([Op::Head])));
    let e = c.head_object().bucket(B).key("obj").send().await.unwrap_err();
    assert!(e.raw_response().is_none(), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_body_fails_the_body_read() {
    let server = setup();
    let c = client_no_retry(&server).await;
    server.set_faults(FaultPlan::new(1).rule(FaultRule::new(FaultKind::ShortBody).ops([Op::Get]).max_count(1)));
    let out = c
        .get_object()
        .bucket(B)
        .key("obj")
        .send()
        .await
        .expect("the head arrives intact");
    assert_eq!(out.content_length(), Some(200_000));
    // The SDK (hyper) notices the premature EOF against Content-Length and reports an error.
    let err = out.body.collect().await.expect_err("short body must be an error");
    assert!(io_kinds(&err).contains(&ErrorKind::UnexpectedEof), "{err:?}");
    assert_eq!(server.counts().faults, 1);
    let out = c.get_object().bucket(B).key("obj").send().await.unwrap();
    assert_eq!(out.body.collect().await.unwrap().into_bytes().len(), 200_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_and_trickle() {
    let server = setup();
    let c = client_no_retry(&server).await;
    c.head_object().bucket(B).key("x-obj").send().await.unwrap();

    server
        .set_faults(FaultPlan::new(1).rule(FaultRule::new(FaultKind::Stall(Duration::from_millis(600))).max_count(1)));
    let t = Instant::now();
    c.head_object().bucket(B).key("x-obj").send().await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(600), "{:?}", t.elapsed());
    let t = Instant::now();
    c.head_object().bucket(B).key("x-obj").send().await.unwrap();
    assert!(t.elapsed() < Duration::from_millis(450), "{:?}", t.elapsed());

    // 1000 bytes at 2000 B/s: about half a second, content intact.
    server.set_faults(
        FaultPlan::new(1).rule(FaultRule::new(FaultKind::Trickle { bytes_per_sec: 2000 }).key_contains("x-")),
    );
    let t = Instant::now();
    let out = c.get_object().bucket(B).key("x-obj").send().await.unwrap();
    let head_time = t.elapsed();
    let body = out.body.collect().await.unwrap().into_bytes();
    let el = t.elapsed();
    assert_eq!(body.to_vec(), pattern(1000));
    assert!(head_time < Duration::from_millis(400), "{head_time:?}");
    assert!(el >= Duration::from_millis(450), "{el:?}");
    assert!(el < Duration::from_secs(3), "{el:?}");
    // key_contains filter: y-obj is not trickled.
    let t = Instant::now();
    c.get_object()
        .bucket(B)
        .key("y-obj")
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_millis(300));
    assert_eq!(server.counts().faults, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_filters() {
    let server = setup();
    let c = client_no_retry(&server).await;
    server.set_faults(
        FaultPlan::new(3)
            .rule(FaultRule::new(FaultKind::SlowDown).ops([Op::Head]).key_contains("x-"))
            .rule(
                FaultRule::new(FaultKind::Status500)
                    .ops([Op::Get])
                    .key_contains("y-")
                    .max_count(1),
            ),
    );
    c.get_object().bucket(B).key("x-obj").send().await.unwrap();
    c.head_object().bucket(B).key("y-obj").send().await.unwrap();
    let e = c.head_object().bucket(B).key("x-obj").send().await.unwrap_err();
    assert_eq!(status_and_code(&e).0, Some(503));
    let e = c.get_object().bucket(B).key("y-obj").send().await.unwrap_err();
    assert_eq!(status_and_code(&e), (Some(500), Some("InternalError".into())));
    c.get_object().bucket(B).key("y-obj").send().await.unwrap();
    c.list_objects_v2().bucket(B).send().await.unwrap();
    assert_eq!(server.counts().faults, 2);
}

/// Outcome pattern of `n` sequential GETs under a plan.
async fn pattern_of(server: &TestServer, c: &aws_sdk_s3::Client, plan: FaultPlan, n: usize) -> Vec<Option<u16>> {
    server.set_faults(plan);
    let mut out = Vec::new();
    for _ in 0..n {
        match c.get_object().bucket(B).key("x-obj").send().await {
            Ok(o) => {
                o.body.collect().await.unwrap();
                out.push(None)
            }
            Err(e) => out.push(status_and_code(&e).0),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_plans_are_deterministic() {
    let server = setup();
    let c = client_no_retry(&server).await;
    let plan = |seed| {
        FaultPlan::new(seed)
            .rule(FaultRule::new(FaultKind::Status500).probability(0.25))
            .rule(FaultRule::new(FaultKind::SlowDown).probability(0.25))
    };
    let a = pattern_of(&server, &c, plan(7), 60).await;
    let b = pattern_of(&server, &c, plan(7), 60).await;
    let other = pattern_of(&server, &c, plan(8), 60).await;
    assert_eq!(a, b);
    assert_ne!(a, other);
    let n500 = a.iter().filter(|s| **s == Some(500)).count();
    let n503 = a.iter().filter(|s| **s == Some(503)).count();
    assert!(n500 > 3 && n503 > 3 && n500 + n503 < 50, "{n500} {n503}");
    // The log agrees with what the client saw.
    let log = server.requests();
    let seen: Vec<Option<u16>> = log[120..]
        .iter()
        .map(|r| match r.fault {
            Some(FaultKind::Status500) => Some(500),
            Some(FaultKind::SlowDown) => Some(503),
            _ => None,
        })
        .collect();
    assert_eq!(seen, other);
    assert_eq!(
        server.counts().faults as usize,
        a.iter().chain(&b).chain(&other).filter(|s| s.is_some()).count()
    );
}

/// A plan set for one bucket faults only requests to that bucket: the cache bucket answers 500 to everything
/// while the source bucket on the same server works. The bucket's plan has its own dice and counters (the
/// server-wide plan faults the same requests with or without it), is rolled first, and is removed by
/// `clear_bucket_faults` (only it) or `clear_faults` (every plan).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_fault_plans() {
    let server = setup();
    server.put("cache", "blk", pattern(10));
    let c = client_no_retry(&server).await;
    server.set_bucket_faults("cache", FaultPlan::new(1).rule(FaultRule::new(FaultKind::Status500)));
    for _ in 0..3 {
        let e = c.get_object().bucket("cache").key("blk").send().await.unwrap_err();
        assert_eq!(status_and_code(&e), (Some(500), Some("InternalError".into())));
        let e = c
            .put_object()
            .bucket("cache")
            .key("new")
            .if_none_match("*")
            .body(pattern(5).into())
            .send()
            .await
            .unwrap_err();
        assert_eq!(status_and_code(&e).0, Some(500));
        let e = c.delete_object().bucket("cache").key("blk").send().await.unwrap_err();
        assert_eq!(status_and_code(&e).0, Some(500));
        c.get_object().bucket(B).key("obj").send().await.unwrap();
        c.put_object()
            .bucket(B)
            .key("new")
            .body(pattern(5).into())
            .send()
            .await
            .unwrap();
    }
    assert_eq!(server.get_object("cache", "blk").as_deref(), Some(&pattern(10)[..]));
    assert_eq!(server.get_object("cache", "new"), None);
    let counts = server.counts();
    assert_eq!(
        (counts.faults, counts.errors, counts.put, counts.delete),
        (9, 9, 6, 3),
        "{counts:?}"
    );
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.fault.is_some() == (r.bucket == "cache"))
    );

    // With a server-wide plan too: the bucket's plan decides first, the server-wide plan faults the others.
    server.set_faults(FaultPlan::new(1).rule(FaultRule::new(FaultKind::SlowDown).ops([Op::Get])));
    let e = c.get_object().bucket("cache").key("blk").send().await.unwrap_err();
    assert_eq!(status_and_code(&e).0, Some(500));
    let e = c.get_object().bucket(B).key("obj").send().await.unwrap_err();
    assert_eq!(status_and_code(&e).0, Some(503));
    // Removing the bucket's plan leaves the server-wide one.
    server.clear_bucket_faults("cache");
    let e = c.get_object().bucket("cache").key("blk").send().await.unwrap_err();
    assert_eq!(status_and_code(&e).0, Some(503));
    c.head_object().bucket("cache").key("blk").send().await.unwrap();
    // clear_faults removes every plan.
    server.set_bucket_faults("cache", FaultPlan::new(1).rule(FaultRule::new(FaultKind::Status500)));
    server.clear_faults();
    c.get_object().bucket("cache").key("blk").send().await.unwrap();
    c.get_object().bucket(B).key("obj").send().await.unwrap();

    // A bucket's plan has dice of its own: it faults the same cache requests whether or not requests to the
    // source bucket (faulted by a server-wide plan of the same seed, scoped to the source) come in between.
    let plan = |bucket: Option<&str>| {
        let rule = FaultRule::new(FaultKind::Status500).probability(0.5);
        FaultPlan::new(5).rule(match bucket {
            Some(b) => rule.bucket(b),
            None => rule,
        })
    };
    let mut runs = Vec::new();
    for interleaved in [false, true] {
        server.set_bucket_faults("cache", plan(None));
        server.set_faults(plan(Some(B)));
        let (mut cache, mut source) = (Vec::new(), Vec::new());
        for _ in 0..20 {
            cache.push(c.head_object().bucket("cache").key("blk").send().await.is_ok());
            if interleaved {
                source.push(c.head_object().bucket(B).key("obj").send().await.is_ok());
            }
        }
        runs.push((cache, source));
        server.clear_faults();
    }
    let (cache, source) = (&runs[1].0, &runs[1].1);
    assert_eq!(&runs[0].0, cache);
    // Same seed, own dice: the source requests see the very pattern the cache requests do.
    assert_eq!(source, cache);
    assert!(cache.iter().any(|ok| *ok) && cache.iter().any(|ok| !*ok), "{cache:?}");
}

/// `FaultRule::bucket` scopes one rule of a plan to one bucket; requests to other buckets are not eligible and
/// do not count toward its `max_count`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_bucket_filter() {
    let server = setup();
    server.put("cache", "blk", pattern(10));
    let c = client_no_retry(&server).await;
    server.set_faults(FaultPlan::new(1).rule(FaultRule::new(FaultKind::SlowDown).bucket("cache").max_count(2)));
    for _ in 0..3 {
        c.get_object().bucket(B).key("obj").send().await.unwrap();
    }
    for _ in 0..2 {
        let e = c.head_object().bucket("cache").key("blk").send().await.unwrap_err();
        assert_eq!(status_and_code(&e).0, Some(503));
    }
    c.head_object().bucket("cache").key("blk").send().await.unwrap();
    assert_eq!(server.counts().faults, 2);
}

/// `counts_for` splits every counter by bucket (requests, GET body bytes, errors, faults) and the split adds up to
/// the server-wide counts; `reset_counts` zeroes it too. `keys` lists a bucket's keys under a prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_per_bucket_and_keys() {
    let server = setup();
    server.put("cache", "a/1", pattern(10));
    server.put("cache", "a/2", pattern(20));
    server.put("cache", "b/1", pattern(30));
    assert_eq!(server.keys("cache", "a/"), ["a/1", "a/2"]);
    assert_eq!(server.keys("cache", ""), ["a/1", "a/2", "b/1"]);
    assert!(server.keys("cache", "c/").is_empty());
    assert!(server.keys("missing", "").is_empty());

    let c = client_no_retry(&server).await;
    server.set_bucket_faults(
        "cache",
        FaultPlan::new(1).rule(FaultRule::new(FaultKind::Status500).ops([Op::Delete])),
    );
    for _ in 0..2 {
        c.get_object()
            .bucket(B)
            .key("obj")
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap();
    }
    c.head_object().bucket(B).key("x-obj").send().await.unwrap();
    let got = c
        .get_object()
        .bucket("cache")
        .key("a/2")
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap();
    assert_eq!(got.into_bytes().len(), 20);
    c.put_object()
        .bucket("cache")
        .key("a/3")
        .if_none_match("*")
        .body(pattern(5).into())
        .send()
        .await
        .unwrap();
    let e = c.delete_object().bucket("cache").key("a/1").send().await.unwrap_err();
    assert_eq!(status_and_code(&e).0, Some(500));
    assert_eq!(server.keys("cache", "a/"), ["a/1", "a/2", "a/3"]);

    let source = server.counts_for(B);
    let cache = server.counts_for("cache");
    assert_eq!(
        (
            source.get,
            source.head,
            source.put,
            source.delete,
            source.get_bytes,
            source.errors,
            source.faults
        ),
        (2, 1, 0, 0, 400_000, 0, 0),
        "{source:?}"
    );
    assert_eq!(
        (
            cache.get,
            cache.head,
            cache.put,
            cache.delete,
            cache.get_bytes,
            cache.errors,
            cache.faults
        ),
        (1, 0, 1, 1, 20, 1, 1),
        "{cache:?}"
    );
    assert_eq!(server.counts_for("other"), Default::default());
    let all = server.counts();
    assert_eq!(all.total(), source.total() + cache.total());
    assert_eq!(all.get_bytes, source.get_bytes + cache.get_bytes);
    assert_eq!((all.errors, all.faults), (1, 1));

    server.reset_counts();
    assert_eq!(server.counts_for(B), Default::default());
    assert_eq!(server.counts_for("cache"), Default::default());
}

/// The 409 ConditionalRequestConflict fault answers as S3 does to a conditional write racing another write, and
/// writes nothing; with `max_count` the next attempt goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_conflict_fault() {
    let server = setup();
    let c = client_no_retry(&server).await;
    server.set_faults(
        FaultPlan::new(1).rule(
            FaultRule::new(FaultKind::ConditionalConflict)
                .ops([Op::Put])
                .max_count(1),
        ),
    );
    let put = || {
        c.put_object()
            .bucket(B)
            .key("new")
            .if_none_match("*")
            .body(pattern(7).into())
            .send()
    };
    let e = put().await.unwrap_err();
    assert_eq!(
        status_and_code(&e),
        (Some(409), Some("ConditionalRequestConflict".into()))
    );
    assert_eq!(server.get_object(B, "new"), None);
    put().await.unwrap();
    assert_eq!(server.get_object(B, "new").as_deref(), Some(&pattern(7)[..]));
    let faulted: Vec<_> = server
        .requests()
        .into_iter()
        .map(|r| (r.op, r.fault, r.status))
        .collect();
    assert_eq!(
        faulted,
        [
            (Op::Put, Some(FaultKind::ConditionalConflict), 409),
            (Op::Put, None, 200)
        ]
    );
}
