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
