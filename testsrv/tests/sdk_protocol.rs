//! The S3 protocol as seen by the official `aws-sdk-s3` client: listing (delimiter, pagination, URL encoding),
//! awkward keys, HeadObject, ranged GetObject, conditionals, error codes, PutObject/DeleteObject round trips,
//! exact request counting (server-wide and per bucket), latency (server-wide and per bucket) and bandwidth.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::Client;
use aws_sdk_s3::operation::RequestId;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::EncodingType;
use common::{client, client_no_retry, form_decode, pattern, status_and_code};
use s3cachefs_testserver::{Counts, FaultKind, FaultPlan, FaultRule, Op, TestServer};

const B: &str = "bkt";

#[test]
fn server_handle_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<TestServer>();
}

/// Lists everything under `prefix` with the paginator; returns (pages, keys, common prefixes).
async fn list_all(
    c: &Client,
    prefix: &str,
    delimiter: Option<&str>,
    max_keys: Option<i32>,
) -> (usize, Vec<String>, Vec<String>) {
    let mut stream = c
        .list_objects_v2()
        .bucket(B)
        .prefix(prefix)
        .set_delimiter(delimiter.map(str::to_owned))
        .set_max_keys(max_keys)
        .into_paginator()
        .send();
    let (mut pages, mut keys, mut prefixes) = (0, Vec::new(), Vec::new());
    while let Some(page) = stream.next().await {
        let page = page.expect("list page");
        pages += 1;
        let n = page.contents().len() + page.common_prefixes().len();
        assert_eq!(page.key_count(), Some(n as i32));
        assert!(n <= max_keys.unwrap_or(1000) as usize);
        assert_eq!(page.is_truncated(), Some(page.next_continuation_token().is_some()));
        keys.extend(page.contents().iter().map(|o| o.key().unwrap().to_owned()));
        prefixes.extend(page.common_prefixes().iter().map(|p| p.prefix().unwrap().to_owned()));
    }
    (pages, keys, prefixes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_delimiter_and_pagination() {
    let server = TestServer::start();
    let c = client(&server).await;
    let mut expect_keys = Vec::new();
    let mut expect_prefixes = Vec::new();
    let mut all_under_big = BTreeSet::new();
    for i in 0..2500 {
        let k = format!("big/item{i:05}");
        server.put(B, &k, &b"x"[..]);
        expect_keys.push(k.clone());
        all_under_big.insert(k.clone());
        if i % 2 == 0 {
            // Nested prefixes interleaved with the plain keys, so page boundaries fall between and after them.
            for child in ["a", "b/c", "b/d"] {
                let ck = format!("{k}/{child}");
                server.put(B, &ck, &b"y"[..]);
                all_under_big.insert(ck);
            }
            expect_prefixes.push(format!("{k}/"));
        }
    }
    for k in ["big", "bigger/x", "other/y", "a"] {
        server.put(B, k, &b"z"[..]);
    }
    server.reset_counts();

    // 2,500 keys + 1,250 common prefixes = 3,750 entries -> 4 pages of up to 1,000.
    let (pages, keys, prefixes) = list_all(&c, "big/", Some("/"), None).await;
    assert_eq!(pages, 4);
    assert_eq!(keys, expect_keys);
    assert_eq!(prefixes, expect_prefixes);
    assert_eq!(server.counts().list, 4);

    // Small odd page size: tokens resume in the middle of runs of common prefixes.
    let (pages, keys, prefixes) = list_all(&c, "big/", Some("/"), Some(7)).await;
    assert_eq!(pages, 3750usize.div_ceil(7));
    assert_eq!(keys, expect_keys);
    assert_eq!(prefixes, expect_prefixes);

    // No delimiter: every key exactly once, sorted.
    let (pages, keys, prefixes) = list_all(&c, "big/", None, None).await;
    assert_eq!(pages, 7);
    assert!(prefixes.is_empty());
    assert_eq!(keys, all_under_big.iter().cloned().collect::<Vec<_>>());

    // Nested level.
    let (_, keys, prefixes) = list_all(&c, "big/item00002/", Some("/"), None).await;
    assert_eq!(keys, ["big/item00002/a"]);
    assert_eq!(prefixes, ["big/item00002/b/"]);

    // Top level.
    let (_, keys, prefixes) = list_all(&c, "", Some("/"), None).await;
    assert_eq!(keys, ["a", "big"]);
    assert_eq!(prefixes, ["big/", "bigger/", "other/"]);

    // max-keys above the cap is capped at 1000.
    let out = c
        .list_objects_v2()
        .bucket(B)
        .prefix("big/")
        .max_keys(5000)
        .send()
        .await
        .unwrap();
    assert_eq!(out.key_count(), Some(1000));
    assert_eq!(out.max_keys(), Some(1000));
    assert_eq!(out.is_truncated(), Some(true));

    // max-keys=0.
    let out = c.list_objects_v2().bucket(B).max_keys(0).send().await.unwrap();
    assert_eq!(out.key_count(), Some(0));
    assert!(out.contents().is_empty());

    // start-after.
    let out = c
        .list_objects_v2()
        .bucket(B)
        .prefix("big/")
        .delimiter("/")
        .start_after("big/item02497")
        .send()
        .await
        .unwrap();
    let keys: Vec<_> = out.contents().iter().map(|o| o.key().unwrap()).collect();
    assert_eq!(keys, ["big/item02498", "big/item02499"]);
    assert_eq!(out.common_prefixes()[0].prefix(), Some("big/item02498/"));
    assert_eq!(out.start_after(), Some("big/item02497"));

    // Object metadata in listings.
    let mtime = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let etag = server.put_with_mtime(B, "meta/obj", vec![7u8; 1234], mtime);
    let out = c.list_objects_v2().bucket(B).prefix("meta/").send().await.unwrap();
    let o = &out.contents()[0];
    assert_eq!(o.size(), Some(1234));
    assert_eq!(o.e_tag(), Some(etag.as_str()));
    assert_eq!(o.last_modified().unwrap().secs(), 1_700_000_000);
    assert_eq!(o.storage_class().map(|s| s.as_str()), Some("STANDARD"));
}

const SPECIAL_KEYS: &[&str] = &[
    "with space.txt",
    "unicode-\u{fc}-\u{65e5}\u{672c}.txt",
    "plus+sign",
    "percent%41%",
    "amp&and<lt>gt",
    "quote\"apos'",
    "dir/",
    "dir/sub file+x",
    "tilde~star*",
    "q?a=b#frag",
    "semi;colon,comma",
    "emoji\u{1F600}",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_keys() {
    let server = TestServer::start();
    let c = client(&server).await;
    for (i, k) in SPECIAL_KEYS.iter().enumerate() {
        server.put(B, k, format!("content {i}"));
    }
    let mut sorted: Vec<&str> = SPECIAL_KEYS.to_vec();
    sorted.sort();

    let (_, keys, _) = list_all(&c, "", None, None).await;
    assert_eq!(keys, sorted);

    // encoding-type=url: the Rust SDK does not decode, so the keys arrive encoded.
    let out = c
        .list_objects_v2()
        .bucket(B)
        .encoding_type(EncodingType::Url)
        .send()
        .await
        .unwrap();
    assert_eq!(out.encoding_type(), Some(&EncodingType::Url));
    let decoded: Vec<String> = out.contents().iter().map(|o| form_decode(o.key().unwrap())).collect();
    assert_eq!(decoded, sorted);
    let raw_plus = out
        .contents()
        .iter()
        .find(|o| o.key().unwrap().starts_with("plus"))
        .unwrap();
    assert_eq!(raw_plus.key(), Some("plus%2Bsign"));

    for (i, k) in SPECIAL_KEYS.iter().enumerate() {
        let got = c.get_object().bucket(B).key(*k).send().await.unwrap();
        let body = got.body.collect().await.unwrap().into_bytes();
        assert_eq!(&body[..], format!("content {i}").as_bytes(), "key {k:?}");
        let head = c.head_object().bucket(B).key(*k).send().await.unwrap();
        assert_eq!(head.content_length(), Some(body.len() as i64));
        // And PUT through the SDK with the same awkward key.
        let k2 = format!("up/{k}");
        c.put_object()
            .bucket(B)
            .key(&k2)
            .body(ByteStream::from(k.as_bytes().to_vec()))
            .send()
            .await
            .unwrap();
        assert_eq!(server.get_object(B, &k2).as_deref(), Some(k.as_bytes()));
    }
    // The request log holds decoded keys.
    let log = server.requests();
    assert!(
        log.iter()
            .any(|r| r.op == Op::Get && r.key.as_deref() == Some("amp&and<lt>gt"))
    );
    assert!(log.iter().any(|r| r.op == Op::Get && r.path == "/bkt/with space.txt"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_object_and_errors() {
    let server = TestServer::start();
    let c = client(&server).await;
    let mtime = UNIX_EPOCH + Duration::from_secs(1_600_000_000) + Duration::from_millis(700);
    let etag = server.put_with_mtime(B, "f", vec![1u8; 4096], mtime);
    assert_eq!(etag.len(), 34);
    assert!(etag.starts_with('"') && etag.ends_with('"'));

    let h = c.head_object().bucket(B).key("f").send().await.unwrap();
    assert_eq!(h.content_length(), Some(4096));
    assert_eq!(h.e_tag(), Some(etag.as_str()));
    assert_eq!(h.content_type(), Some("application/octet-stream"));
    assert_eq!(h.accept_ranges(), Some("bytes"));
    assert_eq!(h.last_modified().unwrap().secs(), 1_600_000_000);

    let e = c.head_object().bucket(B).key("missing").send().await.unwrap_err();
    assert_eq!(status_and_code(&e).0, Some(404));
    assert!(e.into_service_error().is_not_found());

    let e = c.get_object().bucket(B).key("missing").send().await.unwrap_err();
    assert_eq!(status_and_code(&e), (Some(404), Some("NoSuchKey".into())));
    assert!(e.into_service_error().is_no_such_key());

    // Directory markers are ordinary keys; their parent path without the slash does not exist.
    server.put(B, "d/", Vec::new());
    let got = c.get_object().bucket(B).key("d/").send().await.unwrap();
    assert_eq!(got.content_length(), Some(0));
    assert!(got.body.collect().await.unwrap().into_bytes().is_empty());
    let e = c.get_object().bucket(B).key("d").send().await.unwrap_err();
    assert_eq!(status_and_code(&e), (Some(404), Some("NoSuchKey".into())));
    let e = c.get_object().bucket(B).key("f/").send().await.unwrap_err();
    assert_eq!(status_and_code(&e), (Some(404), Some("NoSuchKey".into())));

    // Unknown bucket.
    let e = c.list_objects_v2().bucket("nope").send().await.unwrap_err();
    assert_eq!(status_and_code(&e), (Some(404), Some("NoSuchBucket".into())));
    let e = c.get_object().bucket("nope").key("f").send().await.unwrap_err();
    assert_eq!(status_and_code(&e), (Some(404), Some("NoSuchBucket".into())));
    let e = c.head_bucket().bucket("nope").send().await.unwrap_err();
    assert_eq!(status_and_code(&e).0, Some(404));
    assert!(e.into_service_error().is_not_found());
    c.head_bucket().bucket(B).send().await.unwrap();
    c.get_bucket_location().bucket(B).send().await.unwrap();

    // Denied bucket.
    server.deny_bucket(B, true);
    let e = c.get_object().bucket(B).key("f").send().await.unwrap_err();
    assert_eq!(status_and_code(&e), (Some(403), Some("AccessDenied".into())));
    let e = c.list_objects_v2().bucket(B).send().await.unwrap_err();
    assert_eq!(status_and_code(&e), (Some(403), Some("AccessDenied".into())));
    let e = c.head_object().bucket(B).key("f").send().await.unwrap_err();
    assert_eq!(status_and_code(&e).0, Some(403));
    let e = c.head_bucket().bucket(B).send().await.unwrap_err();
    assert_eq!(status_and_code(&e).0, Some(403));
    server.deny_bucket(B, false);
    c.head_object().bucket(B).key("f").send().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_get_and_if_match() {
    let server = TestServer::start();
    let c = client(&server).await;
    let data = pattern(1000);
    let etag = server.put(B, "r", data.clone());
    server.put(B, "empty", Vec::new());
    server.reset_counts();

    async fn ranged(c: &Client, key: &str, range: &str) -> (Option<String>, Option<i64>, Vec<u8>) {
        let out = c.get_object().bucket(B).key(key).range(range).send().await.unwrap();
        let cr = out.content_range().map(str::to_owned);
        let cl = out.content_length();
        (cr, cl, out.body.collect().await.unwrap().into_bytes().to_vec())
    }
    let (cr, cl, body) = ranged(&c, "r", "bytes=100-199").await;
    assert_eq!((cr.as_deref(), cl), (Some("bytes 100-199/1000"), Some(100)));
    assert_eq!(body, data[100..200]);
    let (cr, _, body) = ranged(&c, "r", "bytes=900-").await;
    assert_eq!(cr.as_deref(), Some("bytes 900-999/1000"));
    assert_eq!(body, data[900..]);
    let (cr, _, body) = ranged(&c, "r", "bytes=-50").await;
    assert_eq!(cr.as_deref(), Some("bytes 950-999/1000"));
    assert_eq!(body, data[950..]);
    let (cr, _, body) = ranged(&c, "r", "bytes=990-5000").await;
    assert_eq!(cr.as_deref(), Some("bytes 990-999/1000"));
    assert_eq!(body, data[990..]);
    let (cr, _, body) = ranged(&c, "r", "bytes=-5000").await;
    assert_eq!(cr.as_deref(), Some("bytes 0-999/1000"));
    assert_eq!(body, data);

    for (key, range) in [
        ("r", "bytes=1000-"),
        ("r", "bytes=5000-6000"),
        ("empty", "bytes=0-"),
        ("empty", "bytes=-1"),
    ] {
        let e = c.get_object().bucket(B).key(key).range(range).send().await.unwrap_err();
        assert_eq!(
            status_and_code(&e),
            (Some(416), Some("InvalidRange".into())),
            "{key} {range}"
        );
    }

    // Ranged HEAD.
    let h = c
        .head_object()
        .bucket(B)
        .key("r")
        .range("bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(h.content_length(), Some(10));
    assert_eq!(h.content_range(), Some("bytes 10-19/1000"));

    // If-Match, quoted and unquoted.
    let out = c.get_object().bucket(B).key("r").if_match(&etag).send().await.unwrap();
    assert_eq!(out.body.collect().await.unwrap().into_bytes().len(), 1000);
    let out = c
        .get_object()
        .bucket(B)
        .key("r")
        .if_match(etag.trim_matches('"'))
        .send()
        .await
        .unwrap();
    assert_eq!(out.e_tag(), Some(etag.as_str()));
    let e = c
        .get_object()
        .bucket(B)
        .key("r")
        .if_match("\"0000\"")
        .range("bytes=0-1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status_and_code(&e), (Some(412), Some("PreconditionFailed".into())));
    let e = c
        .head_object()
        .bucket(B)
        .key("r")
        .if_match("\"0000\"")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status_and_code(&e).0, Some(412));

    let counts = server.counts();
    assert_eq!(counts.get, 12);
    assert_eq!(counts.head, 2);
    assert_eq!(counts.errors, 6);
    assert_eq!(counts.get_bytes, 100 + 100 + 50 + 10 + 1000 + 1000 + 1000);
    let log = server.requests();
    assert_eq!(log.len(), 14);
    assert_eq!(log[0].range.as_deref(), Some("bytes=100-199"));
    assert_eq!(log[0].status, 206);
    let failed = log.iter().find(|r| r.status == 412 && r.op == Op::Get).unwrap();
    assert_eq!(failed.if_match.as_deref(), Some("\"0000\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_delete_round_trip() {
    let server = TestServer::start();
    server.create_bucket(B);
    let c = client(&server).await;
    for len in [0usize, 1, 100_000, 5 * 1024 * 1024 + 3] {
        let data = pattern(len);
        let key = format!("up/{len}");
        let out = c
            .put_object()
            .bucket(B)
            .key(&key)
            .body(ByteStream::from(data.clone()))
            .send()
            .await
            .unwrap();
        assert_eq!(server.get_object(B, &key).as_deref(), Some(&data[..]), "len {len}");
        let got = c.get_object().bucket(B).key(&key).send().await.unwrap();
        assert_eq!(got.e_tag(), out.e_tag());
        assert_eq!(got.body.collect().await.unwrap().into_bytes().to_vec(), data);
    }
    // A streaming (file) body: the SDK frames it with aws-chunked plus a checksum trailer.
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("put-{}", std::process::id()));
    let data = pattern(3 * 1024 * 1024 + 17);
    std::fs::write(&path, &data).unwrap();
    let body = ByteStream::from_path(&path).await.unwrap();
    c.put_object()
        .bucket(B)
        .key("streamed")
        .body(body)
        .send()
        .await
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(server.get_object(B, "streamed").as_deref(), Some(&data[..]));

    // Overwrite changes the ETag.
    let e1 = server.put(B, "k", &b"one"[..]);
    let out = c
        .put_object()
        .bucket(B)
        .key("k")
        .body(ByteStream::from_static(b"two"))
        .send()
        .await
        .unwrap();
    assert_ne!(out.e_tag(), Some(e1.as_str()));

    c.delete_object().bucket(B).key("k").send().await.unwrap();
    assert_eq!(server.get_object(B, "k"), None);
    // Deleting a missing key is fine, like S3.
    c.delete_object().bucket(B).key("k").send().await.unwrap();

    let e = c
        .put_object()
        .bucket("nope")
        .key("k")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(status_and_code(&e), (Some(404), Some("NoSuchBucket".into())));

    // Bucket lifecycle through the SDK.
    c.create_bucket().bucket("fresh").send().await.unwrap();
    c.head_bucket().bucket("fresh").send().await.unwrap();
    let names: Vec<String> = c
        .list_buckets()
        .send()
        .await
        .unwrap()
        .buckets()
        .iter()
        .map(|b| b.name().unwrap().to_owned())
        .collect();
    assert_eq!(names, [B, "fresh"]);
    c.delete_bucket().bucket("fresh").send().await.unwrap();
    assert!(c.head_bucket().bucket("fresh").send().await.is_err());
}

/// PutObject with `If-None-Match: *` creates a key once: a second conditional write is 412 PreconditionFailed and
/// leaves the first body, while an unconditional write still overwrites. `If-Match` writes only over the ETag it
/// names: 412 for another ETag, 404 NoSuchKey when there is no object. Every attempt counts as one PUT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_puts() {
    let server = TestServer::start();
    server.create_bucket(B);
    let c = client(&server).await;
    let put =
        |key: &'static str, body: &'static [u8]| c.put_object().bucket(B).key(key).body(ByteStream::from_static(body));
    let first = put("k", b"first").if_none_match("*").send().await.unwrap();
    let e = put("k", b"second").if_none_match("*").send().await.unwrap_err();
    assert_eq!(status_and_code(&e), (Some(412), Some("PreconditionFailed".into())));
    assert_eq!(server.get_object(B, "k").as_deref(), Some(&b"first"[..]));
    let got = c.head_object().bucket(B).key("k").send().await.unwrap();
    assert_eq!(got.e_tag(), first.e_tag());
    // An empty body takes a key too.
    put("empty", b"").if_none_match("*").send().await.unwrap();
    let e = put("empty", b"").if_none_match("*").send().await.unwrap_err();
    assert_eq!(status_and_code(&e).0, Some(412));

    // If-Match: only over the named ETag.
    let e = put("k", b"third").if_match("\"0123\"").send().await.unwrap_err();
    assert_eq!(status_and_code(&e), (Some(412), Some("PreconditionFailed".into())));
    assert_eq!(server.get_object(B, "k").as_deref(), Some(&b"first"[..]));
    let third = put("k", b"third")
        .if_match(first.e_tag().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(server.get_object(B, "k").as_deref(), Some(&b"third"[..]));
    assert_ne!(third.e_tag(), first.e_tag());
    let e = put("absent", b"x")
        .if_match(first.e_tag().unwrap())
        .send()
        .await
        .unwrap_err();
    assert_eq!(status_and_code(&e), (Some(404), Some("NoSuchKey".into())));
    assert_eq!(server.get_object(B, "absent"), None);

    // Without a condition, a write overwrites; after a delete, the conditional write creates again.
    put("k", b"fourth").send().await.unwrap();
    assert_eq!(server.get_object(B, "k").as_deref(), Some(&b"fourth"[..]));
    c.delete_object().bucket(B).key("k").send().await.unwrap();
    put("k", b"fifth").if_none_match("*").send().await.unwrap();
    assert_eq!(server.get_object(B, "k").as_deref(), Some(&b"fifth"[..]));

    let counts = server.counts();
    assert_eq!(
        (counts.put, counts.delete, counts.head, counts.errors),
        (9, 1, 1, 4),
        "{counts:?}"
    );
    let statuses: Vec<(String, Option<String>, Option<String>, u16)> = server
        .requests()
        .into_iter()
        .filter(|r| r.op == Op::Put)
        .map(|r| (r.key.unwrap(), r.if_none_match, r.if_match, r.status))
        .collect();
    let star = || Some("*".to_string());
    assert_eq!(statuses[0], ("k".into(), star(), None, 200));
    assert_eq!(statuses[1], ("k".into(), star(), None, 412));
    assert_eq!(statuses[4], ("k".into(), None, Some("\"0123\"".into()), 412));
    assert_eq!(statuses[8], ("k".into(), star(), None, 200));
}

/// Sixteen conditional writes of one key at once, each with its own body: exactly one is answered 200, the
/// others 412, and the key holds the body of the one that succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_conditional_puts_have_one_winner() {
    let server = TestServer::start();
    server.create_bucket(B);
    let c = client(&server).await;
    for round in 0..3 {
        let key = format!("race-{round}");
        let tasks: Vec<_> = (0..16u8)
            .map(|i| {
                let (c, key) = (c.clone(), key.clone());
                tokio::spawn(async move {
                    let body = vec![i; 1000 + i as usize];
                    let r = c
                        .put_object()
                        .bucket(B)
                        .key(&key)
                        .if_none_match("*")
                        .body(ByteStream::from(body.clone()))
                        .send()
                        .await;
                    (body, r.map_err(|e| status_and_code(&e)))
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                (body, Ok(_)) => winners.push(body),
                (_, Err(e)) => assert_eq!(e, (Some(412), Some("PreconditionFailed".into()))),
            }
        }
        assert_eq!(winners.len(), 1, "{key}");
        assert_eq!(server.get_object(B, &key).as_deref(), Some(&winners[0][..]), "{key}");
    }
    let counts = server.counts();
    assert_eq!((counts.put, counts.errors), (48, 45), "{counts:?}");
}

/// DeleteObject is counted as `Op::Delete`: 204 for a present key and a missing one alike, 404 NoSuchBucket for a
/// missing bucket; the object is gone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_object_is_counted() {
    let server = TestServer::start();
    server.put(B, "d/k", &b"x"[..]);
    server.put(B, "d/k2", &b"y"[..]);
    let c = client(&server).await;
    server.reset_counts();
    c.delete_object().bucket(B).key("d/k").send().await.unwrap();
    c.delete_object().bucket(B).key("d/k").send().await.unwrap();
    c.delete_object().bucket(B).key("d/").send().await.unwrap();
    let e = c.delete_object().bucket("nope").key("d/k").send().await.unwrap_err();
    assert_eq!(status_and_code(&e), (Some(404), Some("NoSuchBucket".into())));
    assert_eq!(server.get_object(B, "d/k"), None);
    assert_eq!(server.get_object(B, "d/k2").as_deref(), Some(&b"y"[..]));
    let counts = server.counts();
    assert_eq!(
        counts,
        Counts {
            delete: 4,
            errors: 1,
            ..Counts::default()
        }
    );
    let log: Vec<(Op, String, u16)> = server
        .requests()
        .into_iter()
        .map(|r| (r.op, r.method, r.status))
        .collect();
    let del = |status| (Op::Delete, "DELETE".to_string(), status);
    assert_eq!(log, [del(204), del(204), del(204), del(404)]);
}

/// Also runs on the default current-thread test runtime: the server has its own runtime and thread.
#[tokio::test]
async fn counts_are_exact() {
    let server = TestServer::start();
    let c = client(&server).await;
    server.put(B, "a", vec![0u8; 300]);
    server.put(B, "dir/b", vec![0u8; 10]);
    server.reset_counts();
    assert_eq!(server.counts(), Counts::default());

    c.list_objects_v2().bucket(B).delimiter("/").send().await.unwrap();
    c.head_object().bucket(B).key("a").send().await.unwrap();
    c.head_object().bucket(B).key("dir/b").send().await.unwrap();
    for _ in 0..3 {
        c.get_object()
            .bucket(B)
            .key("a")
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap();
    }
    let _ = c.get_object().bucket(B).key("zzz").send().await.unwrap_err();
    c.head_bucket().bucket(B).send().await.unwrap();
    c.put_object()
        .bucket(B)
        .key("p")
        .body(ByteStream::from_static(b"12345"))
        .send()
        .await
        .unwrap();
    c.delete_object().bucket(B).key("p").send().await.unwrap();
    c.get_bucket_location().bucket(B).send().await.unwrap();

    let counts = server.counts();
    assert_eq!(
        counts,
        Counts {
            list: 1,
            head: 2,
            get: 4,
            head_bucket: 1,
            put: 1,
            delete: 1,
            other: 1,
            get_bytes: 900,
            errors: 1,
            faults: 0,
        }
    );
    assert_eq!(counts.total(), 11);
    let ops: Vec<Op> = server.requests().iter().map(|r| r.op).collect();
    assert_eq!(
        ops,
        [
            Op::List,
            Op::Head,
            Op::Head,
            Op::Get,
            Op::Get,
            Op::Get,
            Op::Get,
            Op::HeadBucket,
            Op::Put,
            Op::Delete,
            Op::Other
        ]
    );
    let log = server.requests();
    assert_eq!(log[0].method, "GET");
    assert!(log[0].query.contains("list-type=2"));
    assert_eq!(log[1].method, "HEAD");
    assert_eq!(log[6].status, 404);
    assert_eq!(log[9].method, "DELETE");
    assert_eq!(log[9].status, 204);
    server.reset_counts();
    assert!(server.requests().is_empty());
    assert_eq!(server.counts().total(), 0);
}

/// `counts_for` splits the counters by bucket (a cache bucket's requests apart from the source's): operations,
/// GET body bytes, errors and injected faults each land in the bucket asked, and a reset zeroes them all.
#[tokio::test]
async fn counts_per_bucket() {
    let server = TestServer::start();
    let c = client_no_retry(&server).await;
    server.put("src", "a", vec![7u8; 300]);
    server.put("cache", "b", vec![9u8; 40]);
    server.set_bucket_faults(
        "cache",
        FaultPlan::new(1).rule(FaultRule::new(FaultKind::Status500).ops([Op::Get]).max_count(1)),
    );
    server.reset_counts();

    async fn get(c: &Client, bucket: &str, key: &str) -> Option<usize> {
        let out = c.get_object().bucket(bucket).key(key).send().await.ok()?;
        Some(out.body.collect().await.unwrap().into_bytes().len())
    }
    c.list_objects_v2().bucket("src").send().await.unwrap();
    assert_eq!(get(&c, "src", "a").await, Some(300));
    assert_eq!(get(&c, "src", "a").await, Some(300));
    assert_eq!(get(&c, "cache", "b").await, None, "the injected 500");
    assert_eq!(get(&c, "cache", "b").await, Some(40));
    assert_eq!(get(&c, "cache", "missing").await, None, "404");
    c.put_object()
        .bucket("cache")
        .key("new")
        .if_none_match("*")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap();
    c.delete_object().bucket("cache").key("new").send().await.unwrap();
    c.head_object().bucket("cache").key("b").send().await.unwrap();

    let src = Counts {
        list: 1,
        get: 2,
        get_bytes: 600,
        ..Counts::default()
    };
    let cache = Counts {
        head: 1,
        get: 3,
        put: 1,
        delete: 1,
        get_bytes: 40,
        errors: 2,
        faults: 1,
        ..Counts::default()
    };
    assert_eq!(server.counts_for("src"), src);
    assert_eq!(server.counts_for("cache"), cache);
    assert_eq!(server.counts_for("never-asked"), Counts::default());
    let all = server.counts();
    assert_eq!(all.total(), src.total() + cache.total());
    assert_eq!(
        (all.get_bytes, all.errors, all.faults),
        (
            src.get_bytes + cache.get_bytes,
            src.errors + cache.errors,
            src.faults + cache.faults
        )
    );

    server.reset_counts();
    assert_eq!(server.counts_for("src"), Counts::default());
    assert_eq!(server.counts_for("cache"), Counts::default());
    assert_eq!(get(&c, "cache", "b").await, Some(40));
    assert_eq!(
        server.counts_for("cache"),
        Counts {
            get: 1,
            get_bytes: 40,
            ..Counts::default()
        }
    );
    assert_eq!(server.counts_for("src"), Counts::default());
}

/// A bucket's own latency replaces the server-wide one for requests to that bucket (checked from below only:
/// the sleep before the response head can never be shorter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_latency_applies_to_its_bucket() {
    let server = TestServer::start();
    let c = client(&server).await;
    server.put("slow", "k", &b"hi"[..]);
    server.put("other", "k", &b"hi"[..]);
    server.set_bucket_latency("slow", Some(Duration::from_millis(400)));
    let t = Instant::now();
    c.head_object().bucket("slow").key("k").send().await.unwrap();
    c.head_object().bucket("slow").key("k").send().await.unwrap();
    let el = t.elapsed();
    assert!(el >= Duration::from_millis(800), "{el:?}");
    // Server-wide latency does not override a bucket's own.
    server.set_latency(Duration::from_millis(100));
    server.set_bucket_latency("other", Some(Duration::from_millis(300)));
    let t = Instant::now();
    c.head_object().bucket("other").key("k").send().await.unwrap();
    let el = t.elapsed();
    assert!(el >= Duration::from_millis(300), "{el:?}");
    // Cleared: the server-wide latency again (longer than the bucket's was, so a kept 400 ms would show).
    server.set_bucket_latency("slow", None);
    server.set_latency(Duration::from_millis(600));
    let t = Instant::now();
    c.head_object().bucket("slow").key("k").send().await.unwrap();
    let el = t.elapsed();
    assert!(el >= Duration::from_millis(600), "{el:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_and_bandwidth() {
    let server = TestServer::start();
    let c = client(&server).await;
    server.put(B, "small", &b"hi"[..]);
    server.put(B, "big", pattern(512 * 1024));
    // Warm up the connection pool.
    c.head_object().bucket(B).key("small").send().await.unwrap();

    server.set_latency(Duration::from_millis(500));
    let t = Instant::now();
    c.head_object().bucket(B).key("small").send().await.unwrap();
    let body = c
        .get_object()
        .bucket(B)
        .key("small")
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap();
    assert_eq!(&body.into_bytes()[..], b"hi");
    let el = t.elapsed();
    assert!(el >= Duration::from_millis(1000), "{el:?}");
    assert!(el < Duration::from_secs(4), "{el:?}");
    server.set_latency(Duration::ZERO);
    let t = Instant::now();
    c.head_object().bucket(B).key("small").send().await.unwrap();
    assert!(t.elapsed() < Duration::from_millis(450));

    // 512 KiB at 1 MiB/s takes about half a second.
    server.set_bandwidth(Some(1024 * 1024));
    let t = Instant::now();
    let body = c
        .get_object()
        .bucket(B)
        .key("big")
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap();
    let el = t.elapsed();
    assert_eq!(body.into_bytes().to_vec(), pattern(512 * 1024));
    assert!(el >= Duration::from_millis(480), "{el:?}");
    assert!(el < Duration::from_secs(3), "{el:?}");
    server.set_bandwidth(None);
    let t = Instant::now();
    c.get_object()
        .bucket(B)
        .key("big")
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_object_streams() {
    let server = TestServer::start();
    let c = client(&server).await;
    let data = bytes::Bytes::from(pattern(64 * 1024 * 1024));
    server.put(B, "large", data.clone());
    let t = SystemTime::now();
    let out = c.get_object().bucket(B).key("large").send().await.unwrap();
    assert_eq!(out.content_length(), Some(data.len() as i64));
    let got = out.body.collect().await.unwrap().into_bytes();
    assert!(got == data);
    assert_eq!(server.counts().get_bytes, data.len() as u64);
    let el = t.elapsed().unwrap();
    assert!(el < Duration::from_secs(20), "{el:?}");
    // Responses carry the request id.
    let e = c.get_object().bucket(B).key("none").send().await.unwrap_err();
    assert_eq!(e.request_id().map(str::len), Some(16));
}
