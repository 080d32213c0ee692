//! One conformance suite for every `ObjectStore`: the same cases run against `MemoryStore`,
//! `FaultStore` over a `MemoryStore` with no faults, and `S3Store` over real HTTP to the test
//! server (`testsrv`). Each case becomes one test per store, named `<store>::<case>`, so a failure
//! names both. The cases check what the trait promises (`src/store/mod.rs`): listing order and
//! pagination, common prefixes, `NotFound`, `PreconditionFailed`, `InvalidRange`, exact lengths,
//! empty and deleted objects, unusual keys, and HEAD agreeing with LIST; and what `WritableStore`
//! promises: create-only writes with one winner among concurrent writers, deletes, empty and
//! large bodies, unusual keys.
//!
//! After the suite, a few tests of one store each: error classification through `FaultStore`,
//! which `S3Store` errors are retried, counted at the test server, and the requests and metrics of
//! `S3Store`'s writes.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use s3cachefs::metrics::{self, Metrics, StoreRole};
use s3cachefs::object::{ByteRange, ObjectMeta};
use s3cachefs::store::fault::FaultStore;
use s3cachefs::store::memory::MemoryStore;
use s3cachefs::store::s3::{RetryPolicy, S3Settings, S3Store};
use s3cachefs::store::{ListPage, ListRequest, ObjectStore, PutOutcome, StoreError, WritableStore};
use s3cachefs_testserver::{FaultKind, FaultPlan, FaultRule, Op, TestServer};

/// Stores an object under a key and returns its ETag as the store will report it.
type Seed = Box<dyn Fn(&str, &[u8]) -> String + Send + Sync>;
/// Removes the object under a key.
type Delete = Box<dyn Fn(&str) + Send + Sync>;

/// A store under test and a way to put objects into it and remove them behind its back (the
/// read-only cases see it only as an `ObjectStore`). `writable` is the same store, for the cases
/// of `WritableStore`.
struct Fixture {
    store: Arc<dyn ObjectStore>,
    writable: Arc<dyn WritableStore>,
    seed: Seed,
    delete: Delete,
}

impl Fixture {
    async fn memory() -> Fixture {
        let store = Arc::new(MemoryStore::new());
        let (s, d) = (store.clone(), store.clone());
        Fixture {
            store: store.clone(),
            writable: store,
            seed: Box::new(move |key, data| s.put(key, data.to_vec())),
            delete: Box::new(move |key| d.remove(key)),
        }
    }

    async fn fault() -> Fixture {
        let store = Arc::new(FaultStore::new(MemoryStore::new()));
        let (s, d) = (store.clone(), store.clone());
        Fixture {
            store: store.clone(),
            writable: store,
            seed: Box::new(move |key, data| s.inner().put(key, data.to_vec())),
            delete: Box::new(move |key| d.inner().remove(key)),
        }
    }

    async fn s3() -> Fixture {
        let server = Arc::new(common::server());
        let store = Arc::new(s3_store(&server, common::BUCKET, RetryPolicy::default()).await);
        let (s, d) = (server.clone(), server);
        Fixture {
            store: store.clone(),
            writable: store,
            seed: Box::new(move |key, data| s.put(common::BUCKET, key, data.to_vec())),
            delete: Box::new(move |key| d.delete(common::BUCKET, key)),
        }
    }

    fn put(&self, key: &str, data: &[u8]) -> String {
        (self.seed)(key, data)
    }

    fn delete(&self, key: &str) {
        (self.delete)(key)
    }
}

/// An `S3Store` for `bucket` on `server`: unsigned requests (so no credential chain is consulted,
/// and nothing outside loopback is reached), path style, short backoff.
async fn s3_store(server: &TestServer, bucket: &str, retry: RetryPolicy) -> S3Store {
    s3_store_with_metrics(server, bucket, retry, Arc::new(Metrics::new())).await
}

/// Like [`s3_store`], counting its requests in `metrics`.
async fn s3_store_with_metrics(
    server: &TestServer,
    bucket: &str,
    retry: RetryPolicy,
    metrics: Arc<Metrics>,
) -> S3Store {
    let settings = S3Settings {
        bucket: bucket.into(),
        region: Some("us-east-1".into()),
        endpoint_url: Some(server.endpoint()),
        force_path_style: true,
        profile: None,
        no_sign_request: true,
        retry: RetryPolicy {
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(10),
            ..retry
        },
        role: StoreRole::Origin,
    };
    S3Store::new(&settings, metrics).await
}

/// Instantiates every case for one store as `mod $store { #[tokio::test] async fn $case() }`.
macro_rules! suite_for {
    ($store:ident, $fixture:path; $($case:ident),* $(,)?) => {
        mod $store {
            $(
                #[tokio::test]
                async fn $case() {
                    let f = $fixture().await;
                    super::$case(&f).await;
                }
            )*
        }
    };
}

/// Instantiates every case for every store.
macro_rules! conformance_suite {
    ($($case:ident),* $(,)?) => {
        suite_for!(memory, super::Fixture::memory; $($case),*);
        suite_for!(fault, super::Fixture::fault; $($case),*);
        suite_for!(s3, super::Fixture::s3; $($case),*);
    };
}

conformance_suite!(
    pagination_lists_every_key_once_in_byte_order,
    delimited_listing_rolls_up_common_prefixes,
    prefix_matching_nothing_lists_nothing,
    head_of_missing_key_is_not_found,
    get_range_of_missing_key_is_not_found,
    get_range_with_wrong_etag_is_precondition_failed,
    ranges_return_exact_bytes,
    range_past_the_end_is_invalid_range,
    empty_object_has_size_zero_and_no_range,
    unusual_keys_round_trip,
    head_and_list_agree,
    default_page_is_at_most_1000_entries,
    deleted_object_is_not_found,
    put_if_absent_creates_then_keeps_the_first_body,
    concurrent_put_if_absent_has_one_winner,
    delete_then_head_is_not_found,
    delete_of_missing_key_is_ok,
    put_if_absent_of_empty_and_large_bodies,
    written_unusual_keys_round_trip,
);

// ---------------------------------------------------------------------------------------------
// Helpers

fn data(len: usize, seed: u64) -> Vec<u8> {
    common::data(len, seed)
}

async fn page(store: &dyn ObjectStore, prefix: &str, delimited: bool, token: Option<String>, max: i32) -> ListPage {
    store
        .list(ListRequest {
            prefix,
            delimited,
            continuation: token,
            max_keys: Some(max),
        })
        .await
        .unwrap_or_else(|e| panic!("{}: list {prefix:?} failed: {e}", store.describe()))
}

/// Every page of a listing, checking the paging rules on the way: at most `max` entries per page,
/// every page but the last full, no empty page after the last entry, objects and prefixes each
/// sorted within a page, and each page's entries after the previous page's.
async fn list_all(store: &dyn ObjectStore, prefix: &str, delimited: bool, max: i32) -> (Vec<ObjectMeta>, Vec<String>) {
    let (mut objects, mut prefixes) = (Vec::new(), Vec::new());
    let mut token = None;
    let mut last_name: Option<String> = None;
    let mut pages = 0;
    for n in 0.. {
        assert!(n < 10_000, "{}: listing {prefix:?} never ends", store.describe());
        let p = page(store, prefix, delimited, token.take(), max).await;
        let entries = p.objects.len() + p.prefixes.len();
        assert!(
            entries <= max as usize,
            "{}: page {n} of {prefix:?} has {entries} entries, max_keys {max}",
            store.describe()
        );
        if p.next.is_some() {
            assert_eq!(
                entries,
                max as usize,
                "{}: page {n} of {prefix:?} is not full but not the last",
                store.describe()
            );
        }
        pages += 1;
        let strictly_increasing = |v: &[&str]| v.windows(2).all(|w| w[0] < w[1]);
        let page_keys: Vec<&str> = p.objects.iter().map(|o| &*o.key).collect();
        let page_prefixes: Vec<&str> = p.prefixes.iter().map(String::as_str).collect();
        assert!(
            strictly_increasing(&page_keys) && strictly_increasing(&page_prefixes),
            "{}: page {n} of {prefix:?} out of order: {page_keys:?} {page_prefixes:?}",
            store.describe()
        );
        // Within a page, S3 sorts objects and prefixes separately; across pages, every entry of a
        // page comes after every entry of the page before.
        let mut names: Vec<&str> = p
            .objects
            .iter()
            .map(|o| &*o.key)
            .chain(p.prefixes.iter().map(String::as_str))
            .collect();
        names.sort_unstable();
        if let (Some(prev), Some(first)) = (&last_name, names.first()) {
            assert!(
                prev.as_str() < *first,
                "{}: page {n} of {prefix:?} starts at {first:?}, not after {prev:?}",
                store.describe()
            );
        }
        if let Some(l) = names.last() {
            last_name = Some(l.to_string());
        }
        objects.extend(p.objects);
        prefixes.extend(p.prefixes);
        match p.next {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    let entries = objects.len() + prefixes.len();
    assert_eq!(
        pages,
        entries.div_ceil(max as usize).max(1),
        "{}: {entries} entries of {prefix:?} in {pages} pages of {max}",
        store.describe()
    );
    (objects, prefixes)
}

fn keys(objects: &[ObjectMeta]) -> Vec<String> {
    objects.iter().map(|o| o.key.to_string()).collect()
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// The whole object under `key`, read back through HEAD and one GET pinned to its ETag (none for
/// an empty object, which has no range).
async fn read_back(store: &dyn ObjectStore, key: &str) -> Vec<u8> {
    let head = store
        .head(key)
        .await
        .unwrap_or_else(|e| panic!("{}: head {key:?}: {e}", store.describe()));
    if head.size == 0 {
        return Vec::new();
    }
    store
        .get_range(key, ByteRange::new(0, head.size), &head.etag)
        .await
        .unwrap_or_else(|e| panic!("{}: get {key:?}: {e}", store.describe()))
        .to_vec()
}

/// Keys with characters that URLs, query strings, XML or shells treat specially.
const UNUSUAL_KEYS: [&str; 25] = [
    "with space",
    "two  spaces and trailing ",
    "plus+sign",
    "percent%",
    "percent%20encoded-looking",
    "percent%2F",
    "question?mark",
    "hash#tag",
    "equals=sign&and",
    "a=b?c#d%e+f g",
    "semi;colon,comma:colon@at$dollar!bang",
    "quote'double\"",
    "xml<&>",
    "tilde~star*paren()brackets[]braces{}",
    "caret^backtick`pipe|backslash\\",
    "caf\u{e9}",
    "\u{30d5}\u{30a1}\u{30a4}\u{30eb}",
    "emoji \u{1f600}",
    "tab\tin key",
    "sp ace+dir?/#x=1 %2B",
    "sp ace+dir?/y",
    // Path segments an HTTP client might normalize away; S3 keeps them.
    "dots//double",
    "dots/./dot",
    "dots/../dotdot",
    "/leading",
];

// ---------------------------------------------------------------------------------------------
// The cases

/// Without a delimiter, every key under the prefix comes back exactly once, in UTF-8 byte order
/// (which is not UTF-16 order: U+FF61 sorts before U+1F600 in UTF-8, after it in UTF-16), over
/// as many pages as `max_keys` makes, resuming from each continuation token.
async fn pagination_lists_every_key_once_in_byte_order(f: &Fixture) {
    let mut all = vec![
        "a",
        "a b",
        "a+b",
        "a-b",
        "a.b",
        "a/b",
        "a/b/c",
        "a0",
        "aa",
        "A",
        "B/",
        "\u{ff61}",
        "\u{1f600}",
        "\u{e9}t\u{e9}",
        "e\u{301}t\u{e9}",
        "z",
    ];
    let numbered: Vec<String> = (0..13).map(|i| format!("n/{i:03}")).collect();
    all.extend(numbered.iter().map(String::as_str));
    for (i, k) in all.iter().enumerate() {
        f.put(k, &data(i % 5, i as u64));
    }
    let want = sorted(&all);
    assert!(
        want.iter().position(|k| k == "\u{ff61}") < want.iter().position(|k| k == "\u{1f600}"),
        "byte order"
    );
    for max in [1, 2, 3, 7, 28, 29, 1000] {
        let (objects, prefixes) = list_all(&*f.store, "", false, max).await;
        assert!(
            prefixes.is_empty(),
            "max_keys {max}: prefixes without a delimiter: {prefixes:?}"
        );
        assert_eq!(keys(&objects), want, "max_keys {max}");
        let unique: BTreeSet<&str> = objects.iter().map(|o| &*o.key).collect();
        assert_eq!(unique.len(), objects.len(), "max_keys {max}: a key twice");
    }
    // With a prefix: only keys that start with it, still paged.
    for max in [1, 4, 1000] {
        let (objects, _) = list_all(&*f.store, "n/", false, max).await;
        assert_eq!(keys(&objects), numbered, "prefix n/, max_keys {max}");
        let (objects, _) = list_all(&*f.store, "a", false, max).await;
        assert_eq!(
            keys(&objects),
            ["a", "a b", "a+b", "a-b", "a.b", "a/b", "a/b/c", "a0", "aa"],
            "prefix a, max_keys {max}"
        );
    }
}

/// With the `/` delimiter: objects directly under the prefix, and one common prefix (ending in
/// `/`) per deeper level, each counted as one entry toward `max_keys` and listed once even when it
/// spans pages. Keys that sort between a prefix's members (`dir.txt` < `dir/…` < `dir0`) do not
/// break the roll-up. A key equal to the prefix (`dir/`) is an object of that listing.
async fn delimited_listing_rolls_up_common_prefixes(f: &Fixture) {
    for (i, k) in [
        "top.txt",
        "di",
        "dir.txt",
        "dir/",
        "dir/a",
        "dir/b",
        "dir/sub/c",
        "dir/sub/d/e",
        "dir/sub/d/f",
        "dir0",
        "dirx",
        "other/z",
        "other/y/x",
        "\u{e9}/1",
        "\u{e9}/2",
    ]
    .iter()
    .enumerate()
    {
        f.put(k, &data(3, i as u64));
    }
    let cases: [(&str, &[&str], &[&str]); 5] = [
        (
            "",
            &["di", "dir.txt", "dir0", "dirx", "top.txt"],
            &["dir/", "other/", "\u{e9}/"],
        ),
        ("dir/", &["dir/", "dir/a", "dir/b"], &["dir/sub/"]),
        ("dir/sub/", &["dir/sub/c"], &["dir/sub/d/"]),
        ("dir/sub/d/", &["dir/sub/d/e", "dir/sub/d/f"], &[]),
        // A prefix that is not a whole path component: S3 matches it byte for byte.
        ("di", &["di", "dir.txt", "dir0", "dirx"], &["dir/"]),
    ];
    for (prefix, want_objects, want_prefixes) in cases {
        for max in [1, 2, 3, 1000] {
            let (objects, prefixes) = list_all(&*f.store, prefix, true, max).await;
            assert_eq!(
                keys(&objects),
                *want_objects,
                "objects under {prefix:?}, max_keys {max}"
            );
            assert_eq!(prefixes, *want_prefixes, "prefixes under {prefix:?}, max_keys {max}");
            for p in &prefixes {
                assert!(
                    p.starts_with(prefix) && p.ends_with('/'),
                    "prefix {p:?} under {prefix:?}"
                );
                assert!(
                    !p[prefix.len()..p.len() - 1].contains('/'),
                    "prefix {p:?} more than one level"
                );
            }
            for o in &objects {
                assert!(!o.key[prefix.len()..].contains('/') || &*o.key == prefix, "{:?}", o.key);
            }
            let names: BTreeSet<&str> = objects
                .iter()
                .map(|o| &*o.key)
                .chain(prefixes.iter().map(String::as_str))
                .collect();
            assert_eq!(
                names.len(),
                objects.len() + prefixes.len(),
                "an entry listed twice under {prefix:?}, max_keys {max}"
            );
        }
    }
}

/// A prefix that matches no key lists nothing: no objects, no prefixes, no continuation. This
/// includes a prefix below an object's key (`dir/a/` when `dir/a` is an object).
async fn prefix_matching_nothing_lists_nothing(f: &Fixture) {
    f.put("dir/a", b"x");
    f.put("m", b"x");
    for prefix in ["nothing/", "dir/a/", "zzz", "dir/b", "M", "0"] {
        for delimited in [false, true] {
            let p = page(&*f.store, prefix, delimited, None, 1000).await;
            assert_eq!(p, ListPage::default(), "prefix {prefix:?}, delimited {delimited}");
        }
    }
}

/// HEAD of a key with no object is `NotFound`, also when the key is a common prefix of other keys
/// (`dir/`), a prefix of a key (`fil`) or differs only in case.
async fn head_of_missing_key_is_not_found(f: &Fixture) {
    f.put("dir/file", b"hello");
    for key in ["absent", "dir", "dir/", "dir/fil", "dir/file/", "DIR/file", "dir/file "] {
        assert_eq!(f.store.head(key).await, Err(StoreError::NotFound), "head {key:?}");
    }
    assert_eq!(f.store.head("dir/file").await.unwrap().size, 5);
}

/// A ranged GET of a key with no object is `NotFound`, whatever ETag it is pinned to (the key
/// is checked before the ETag).
async fn get_range_of_missing_key_is_not_found(f: &Fixture) {
    let etag = f.put("present", b"hello");
    for key in ["absent", "present/", "presen"] {
        for e in [etag.as_str(), "\"00000000000000000000000000000000\""] {
            assert_eq!(
                f.store.get_range(key, ByteRange::new(0, 1), e).await,
                Err(StoreError::NotFound),
                "get {key:?} pinned to {e}"
            );
        }
    }
}

/// A ranged GET pinned to an ETag the object does not have is `PreconditionFailed`: a made-up
/// ETag, the object's previous ETag after an overwrite, or an empty quoted ETag. The ETag is
/// checked before the range.
async fn get_range_with_wrong_etag_is_precondition_failed(f: &Fixture) {
    let old = f.put("k", b"first version");
    let new = f.put("k", b"second version!");
    assert_ne!(old, new, "an overwrite with other bytes must change the ETag");
    for bad in [old.as_str(), "\"0123456789abcdef0123456789abcdef\"", "\"\""] {
        assert_eq!(
            f.store.get_range("k", ByteRange::new(0, 5), bad).await,
            Err(StoreError::PreconditionFailed),
            "pinned to {bad}"
        );
        // Before the range: a range past the end pinned to a wrong ETag is still 412.
        assert_eq!(
            f.store.get_range("k", ByteRange::new(100, 200), bad).await,
            Err(StoreError::PreconditionFailed),
            "range past the end pinned to {bad}"
        );
    }
    assert_eq!(
        &f.store.get_range("k", ByteRange::new(0, 6), &new).await.unwrap()[..],
        b"second"
    );
    // HEAD and LIST show the new version.
    let head = f.store.head("k").await.unwrap();
    assert_eq!((head.size, &*head.etag), (15, new.as_str()));
    let p = page(&*f.store, "k", false, None, 1000).await;
    assert_eq!(p.objects, [head]);
}

/// Ranges at the start, in the middle, ending exactly at the end, the last byte alone and the
/// whole object return exactly those bytes.
async fn ranges_return_exact_bytes(f: &Fixture) {
    let body = data(1000, 7);
    let etag = f.put("obj", &body);
    for (start, end) in [
        (0, 1),
        (0, 100),
        (1, 2),
        (450, 550),
        (900, 1000),
        (999, 1000),
        (0, 1000),
        (1, 999),
    ] {
        let got = f
            .store
            .get_range("obj", ByteRange::new(start, end), &etag)
            .await
            .unwrap_or_else(|e| panic!("range {start}..{end}: {e}"));
        assert_eq!(got.len() as u64, end - start, "length of {start}..{end}");
        assert!(got[..] == body[start as usize..end as usize], "bytes of {start}..{end}");
    }
    // A one-byte object: its only byte.
    let etag = f.put("one", b"Z");
    assert_eq!(
        &f.store.get_range("one", ByteRange::new(0, 1), &etag).await.unwrap()[..],
        b"Z"
    );
}

/// A range that does not lie within the object is `InvalidRange`: one starting at or past the end
/// (S3's 416), and one starting inside but ending past the end (S3 would serve the shorter tail;
/// the trait never returns fewer bytes than asked).
async fn range_past_the_end_is_invalid_range(f: &Fixture) {
    let etag = f.put("obj", &data(100, 3));
    for (start, end) in [(100, 101), (100, 200), (150, 160), (99, 101), (0, 101), (50, 1 << 40)] {
        assert_eq!(
            f.store.get_range("obj", ByteRange::new(start, end), &etag).await,
            Err(StoreError::InvalidRange),
            "range {start}..{end} of 100 bytes"
        );
    }
    // The object is still readable right up to its end.
    assert_eq!(
        f.store
            .get_range("obj", ByteRange::new(99, 100), &etag)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// An empty object has size 0 in HEAD and LIST, with the same ETag, and no byte to range over.
/// So does a directory marker (an empty object whose key ends in `/`).
async fn empty_object_has_size_zero_and_no_range(f: &Fixture) {
    let etag = f.put("dir/empty", b"");
    let marker = f.put("dir/", b"");
    f.put("dir/full", b"x");
    for (key, etag) in [("dir/empty", &etag), ("dir/", &marker)] {
        let head = f.store.head(key).await.unwrap();
        assert_eq!((&*head.key, head.size, &*head.etag), (key, 0, etag.as_str()));
        assert_eq!(
            f.store.get_range(key, ByteRange::new(0, 1), etag).await,
            Err(StoreError::InvalidRange),
            "{key}"
        );
    }
    for delimited in [false, true] {
        let p = page(&*f.store, "dir/", delimited, None, 1000).await;
        assert_eq!(keys(&p.objects), ["dir/", "dir/empty", "dir/full"]);
        assert_eq!((p.objects[0].size, &*p.objects[0].etag), (0, marker.as_str()));
        assert_eq!((p.objects[1].size, &*p.objects[1].etag), (0, etag.as_str()));
    }
}

/// A deleted object is `NotFound` to HEAD, and to a GET pinned to the ETag it had (not
/// `PreconditionFailed`: the key is checked first), and LIST no longer shows it.
async fn deleted_object_is_not_found(f: &Fixture) {
    let etag = f.put("d/gone", b"soon deleted");
    f.put("d/kept", b"kept");
    assert_eq!(
        f.store
            .get_range("d/gone", ByteRange::new(0, 4), &etag)
            .await
            .as_deref(),
        Ok(&b"soon"[..])
    );
    f.delete("d/gone");
    assert_eq!(f.store.head("d/gone").await, Err(StoreError::NotFound));
    assert_eq!(
        f.store.get_range("d/gone", ByteRange::new(0, 4), &etag).await,
        Err(StoreError::NotFound)
    );
    for delimited in [false, true] {
        assert_eq!(
            keys(&page(&*f.store, "d/", delimited, None, 1000).await.objects),
            ["d/kept"]
        );
    }
}

/// Keys with characters that URLs, query strings, XML or shells treat specially come back from
/// LIST exactly as stored, and HEAD and GET reach them by that key. Listing with such a key as the
/// prefix, or below such a directory with the delimiter, finds exactly them.
async fn unusual_keys_round_trip(f: &Fixture) {
    let odd = UNUSUAL_KEYS;
    let mut etags = Vec::new();
    for k in odd {
        etags.push(f.put(k, k.as_bytes()));
    }
    let (objects, _) = list_all(&*f.store, "", false, 1000).await;
    assert_eq!(keys(&objects), sorted(&odd));
    for (k, etag) in odd.iter().zip(&etags) {
        let head = f.store.head(k).await.unwrap_or_else(|e| panic!("head {k:?}: {e}"));
        assert_eq!(
            (&*head.key, head.size, &*head.etag),
            (*k, k.len() as u64, etag.as_str()),
            "head {k:?}"
        );
        let got = f
            .store
            .get_range(k, ByteRange::new(0, k.len() as u64), etag)
            .await
            .unwrap_or_else(|e| panic!("get {k:?}: {e}"));
        assert_eq!(&got[..], k.as_bytes(), "get {k:?}");
        // The key as a prefix finds it (and only keys that start with it).
        let p = page(&*f.store, k, false, None, 1000).await;
        let want: Vec<&str> = odd.iter().copied().filter(|o| o.starts_with(k)).collect();
        assert_eq!(keys(&p.objects), sorted(&want), "list with prefix {k:?}");
    }
    // Delimited, from the top: keys without `/` as objects, the rest rolled up at their first `/`.
    let (objects, prefixes) = list_all(&*f.store, "", true, 2).await;
    let top: Vec<&str> = odd.iter().copied().filter(|k| !k.contains('/')).collect();
    assert_eq!(keys(&objects), sorted(&top));
    assert_eq!(prefixes, ["/", "dots/", "sp ace+dir?/"]);
    let (objects, prefixes) = list_all(&*f.store, "sp ace+dir?/", true, 1).await;
    assert_eq!(keys(&objects), ["sp ace+dir?/#x=1 %2B", "sp ace+dir?/y"]);
    assert!(prefixes.is_empty());
    let (objects, prefixes) = list_all(&*f.store, "dots/", true, 1).await;
    assert_eq!(prefixes, ["dots/../", "dots/./", "dots//"]);
    assert!(objects.is_empty());
}

/// HEAD and LIST report the same size, ETag and modification time for every object, and the ETag
/// is the one the object was stored with.
async fn head_and_list_agree(f: &Fixture) {
    let mut stored = Vec::new();
    for (i, len) in [0usize, 1, 17, 4096, 65_537].into_iter().enumerate() {
        let key = format!("d/obj{i}");
        let etag = f.put(&key, &data(len, i as u64));
        stored.push((key, len as u64, etag));
    }
    for delimited in [false, true] {
        let (objects, _) = list_all(&*f.store, "d/", delimited, 2).await;
        assert_eq!(objects.len(), stored.len());
        for (listed, (key, len, etag)) in objects.iter().zip(&stored) {
            assert_eq!(
                (&*listed.key, listed.size, &*listed.etag),
                (key.as_str(), *len, etag.as_str())
            );
            assert!(!listed.etag.is_empty(), "{key}: listed without an ETag");
            let head = f.store.head(key).await.unwrap();
            assert_eq!(&head, listed, "HEAD and LIST of {key}");
        }
    }
}

/// Without `max_keys`, a page holds at most 1,000 entries, as S3's do; and a `max_keys` above
/// 1,000 is capped at 1,000.
async fn default_page_is_at_most_1000_entries(f: &Fixture) {
    let all: Vec<String> = (0..1001).map(|i| format!("many/{i:04}")).collect();
    for k in &all {
        f.put(k, b"");
    }
    for max_keys in [None, Some(5000)] {
        let first = f
            .store
            .list(ListRequest {
                prefix: "many/",
                max_keys,
                ..ListRequest::default()
            })
            .await
            .unwrap();
        assert_eq!(first.objects.len(), 1000, "max_keys {max_keys:?}");
        assert_eq!(keys(&first.objects), all[..1000], "max_keys {max_keys:?}");
        let rest = f
            .store
            .list(ListRequest {
                prefix: "many/",
                continuation: Some(first.next.expect("a second page")),
                max_keys,
                ..ListRequest::default()
            })
            .await
            .unwrap();
        assert_eq!(keys(&rest.objects), ["many/1000"]);
        assert_eq!(rest.next, None);
    }
}

/// `put_if_absent` stores a body under a free key (`Created`) and never overwrites: a second write
/// of the key, with another body or the same one, or of a key an object was put under by other
/// means, is `AlreadyExists`, and the body and ETag read back are still the first ones. Keys that
/// differ only by a trailing `/` or a prefix are different keys.
async fn put_if_absent_creates_then_keeps_the_first_body(f: &Fixture) {
    let w = &*f.writable;
    let first = data(1000, 1);
    assert_eq!(
        w.put_if_absent("w/k", Bytes::from(first.clone())).await,
        Ok(PutOutcome::Created)
    );
    let created = f.store.head("w/k").await.unwrap();
    assert_eq!(created.size, 1000);
    assert_eq!(read_back(&*f.store, "w/k").await, first);
    for second in [data(10, 2), data(1000, 3), first.clone(), Vec::new()] {
        assert_eq!(
            w.put_if_absent("w/k", Bytes::from(second.clone())).await,
            Ok(PutOutcome::AlreadyExists),
            "second write of {} bytes",
            second.len()
        );
        assert_eq!(f.store.head("w/k").await.unwrap(), created, "overwritten");
        assert_eq!(read_back(&*f.store, "w/k").await, first, "overwritten");
    }
    // An object that was there before is not overwritten either.
    let etag = f.put("w/seeded", b"seeded");
    assert_eq!(
        w.put_if_absent("w/seeded", Bytes::from_static(b"other")).await,
        Ok(PutOutcome::AlreadyExists)
    );
    assert_eq!(&*f.store.head("w/seeded").await.unwrap().etag, etag.as_str());
    assert_eq!(read_back(&*f.store, "w/seeded").await, b"seeded");
    // Neighbouring keys are free.
    for (i, key) in ["w/k/", "w/", "w", "w/k2", "W/k"].into_iter().enumerate() {
        let body = data(5, 10 + i as u64);
        assert_eq!(
            w.put_if_absent(key, Bytes::from(body.clone())).await,
            Ok(PutOutcome::Created),
            "{key}"
        );
        assert_eq!(read_back(&*f.store, key).await, body, "{key}");
    }
    let (objects, _) = list_all(&*f.store, "", false, 1000).await;
    assert_eq!(
        keys(&objects),
        sorted(&["W/k", "w", "w/", "w/k", "w/k/", "w/k2", "w/seeded"])
    );
    assert_eq!(read_back(&*f.store, "w/k").await, first);
}

/// Eight tasks writing one key at once, each with its own body: exactly one gets `Created`, the
/// others `AlreadyExists`, and the key holds the winner's body, whole. Repeated over several keys.
async fn concurrent_put_if_absent_has_one_winner(f: &Fixture) {
    const WRITERS: usize = 8;
    for round in 0..4u64 {
        let key = format!("race/{round}");
        let bodies: Vec<Bytes> = (0..WRITERS as u64)
            .map(|i| Bytes::from(data(4096 + i as usize, round * 100 + i)))
            .collect();
        let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
        let tasks: Vec<_> = bodies
            .iter()
            .map(|body| {
                let (w, key, body, barrier) = (f.writable.clone(), key.clone(), body.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    w.put_if_absent(&key, body).await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.unwrap().unwrap_or_else(|e| panic!("{key}: {e}")));
        }
        let winners: Vec<usize> = (0..WRITERS).filter(|&i| outcomes[i] == PutOutcome::Created).collect();
        assert_eq!(winners.len(), 1, "{key}: outcomes {outcomes:?}");
        assert!(
            read_back(&*f.store, &key).await == bodies[winners[0]],
            "{key}: the stored body is not the winner's"
        );
    }
}

/// After `delete`, HEAD and a GET pinned to the old ETag are `NotFound` and LIST no longer shows
/// the key; other keys, including those it is a prefix of, stay. The key is free again:
/// `put_if_absent` creates it anew with the new body.
async fn delete_then_head_is_not_found(f: &Fixture) {
    let w = &*f.writable;
    for key in ["d/k", "d/k/under", "d/k2"] {
        assert_eq!(
            w.put_if_absent(key, Bytes::from(key.as_bytes().to_vec())).await,
            Ok(PutOutcome::Created)
        );
    }
    let old = f.store.head("d/k").await.unwrap();
    assert_eq!(w.delete("d/k").await, Ok(()));
    assert_eq!(f.store.head("d/k").await, Err(StoreError::NotFound));
    assert_eq!(
        f.store.get_range("d/k", ByteRange::new(0, 1), &old.etag).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        keys(&list_all(&*f.store, "d/", false, 1000).await.0),
        ["d/k/under", "d/k2"]
    );
    assert_eq!(read_back(&*f.store, "d/k/under").await, b"d/k/under");
    assert_eq!(read_back(&*f.store, "d/k2").await, b"d/k2");
    // Free again: a new body, and a new ETag when the bytes differ.
    assert_eq!(
        w.put_if_absent("d/k", Bytes::from_static(b"second life")).await,
        Ok(PutOutcome::Created)
    );
    assert_eq!(read_back(&*f.store, "d/k").await, b"second life");
    assert_ne!(f.store.head("d/k").await.unwrap().etag, old.etag);
    // An object put by other means is deleted the same way.
    f.put("d/seeded", b"x");
    assert_eq!(w.delete("d/seeded").await, Ok(()));
    assert_eq!(f.store.head("d/seeded").await, Err(StoreError::NotFound));
}

/// Deleting a key that has no object succeeds, as in S3: a key never written, one deleted
/// already, and a key that is only a prefix of others (`dir/`), which stay.
async fn delete_of_missing_key_is_ok(f: &Fixture) {
    let w = &*f.writable;
    f.put("dir/x", b"x");
    assert_eq!(w.delete("never-written").await, Ok(()));
    assert_eq!(w.delete("dir/").await, Ok(()));
    assert_eq!(w.delete("dir").await, Ok(()));
    assert_eq!(read_back(&*f.store, "dir/x").await, b"x");
    assert_eq!(w.delete("dir/x").await, Ok(()));
    assert_eq!(w.delete("dir/x").await, Ok(()));
    assert_eq!(f.store.head("dir/x").await, Err(StoreError::NotFound));
    assert_eq!(page(&*f.store, "", false, None, 1000).await, ListPage::default());
}

/// An empty body is an object of size 0 (in HEAD and LIST) with no range to read, and it takes
/// the key like any other. A body of 1 MiB + 1 bytes comes back byte for byte, up to its last byte.
async fn put_if_absent_of_empty_and_large_bodies(f: &Fixture) {
    let w = &*f.writable;
    assert_eq!(w.put_if_absent("empty", Bytes::new()).await, Ok(PutOutcome::Created));
    let head = f.store.head("empty").await.unwrap();
    assert_eq!(head.size, 0);
    assert_eq!(
        f.store.get_range("empty", ByteRange::new(0, 1), &head.etag).await,
        Err(StoreError::InvalidRange)
    );
    assert_eq!(
        w.put_if_absent("empty", Bytes::from_static(b"not empty")).await,
        Ok(PutOutcome::AlreadyExists)
    );
    assert_eq!(f.store.head("empty").await.unwrap(), head);

    let big = data((1 << 20) + 1, 5);
    assert_eq!(
        w.put_if_absent("big", Bytes::from(big.clone())).await,
        Ok(PutOutcome::Created)
    );
    let head = f.store.head("big").await.unwrap();
    assert_eq!(head.size, (1 << 20) + 1);
    assert!(read_back(&*f.store, "big").await == big, "big body differs");
    let last = f
        .store
        .get_range("big", ByteRange::new(1 << 20, (1 << 20) + 1), &head.etag)
        .await
        .unwrap();
    assert_eq!(last[..], big[1 << 20..]);
    assert_eq!(
        w.put_if_absent("big", Bytes::from(data((1 << 20) + 1, 6))).await,
        Ok(PutOutcome::AlreadyExists)
    );
    assert!(read_back(&*f.store, "big").await == big, "big body overwritten");
    let p = page(&*f.store, "", false, None, 1000).await;
    assert_eq!(
        p.objects.iter().map(|o| (&*o.key, o.size)).collect::<Vec<_>>(),
        [("big", (1 << 20) + 1), ("empty", 0)]
    );
}

/// Keys with characters that URLs, query strings, XML or shells treat specially are written,
/// listed, read, refused a second write and deleted by exactly that key.
async fn written_unusual_keys_round_trip(f: &Fixture) {
    let w = &*f.writable;
    for k in UNUSUAL_KEYS {
        assert_eq!(
            w.put_if_absent(k, Bytes::from(k.as_bytes().to_vec())).await,
            Ok(PutOutcome::Created),
            "{k:?}"
        );
    }
    let (objects, _) = list_all(&*f.store, "", false, 1000).await;
    assert_eq!(keys(&objects), sorted(&UNUSUAL_KEYS));
    for k in UNUSUAL_KEYS {
        assert_eq!(read_back(&*f.store, k).await, k.as_bytes(), "{k:?}");
        assert_eq!(
            w.put_if_absent(k, Bytes::from_static(b"again")).await,
            Ok(PutOutcome::AlreadyExists),
            "{k:?}"
        );
    }
    for k in UNUSUAL_KEYS {
        assert_eq!(w.delete(k).await, Ok(()), "{k:?}");
        assert_eq!(f.store.head(k).await, Err(StoreError::NotFound), "{k:?}");
    }
    assert_eq!(page(&*f.store, "", false, None, 1000).await, ListPage::default());
}

// ---------------------------------------------------------------------------------------------
// One store each: how errors are classified and which are retried

/// Errors injected by `FaultStore` reach the caller unchanged, with the classification callers
/// rely on (HTTP status, transient or not), one request each, before the inner store answers again.
#[tokio::test]
async fn fault_store_injects_classified_errors_then_recovers() {
    let store = FaultStore::new(MemoryStore::new());
    let etag = store.inner().put("k", "hello");
    let cases = [
        (StoreError::NotFound, Some(404), false),
        (StoreError::PreconditionFailed, Some(412), false),
        (StoreError::InvalidRange, Some(416), false),
        (StoreError::AccessDenied("no".into()), Some(403), false),
        (StoreError::Throttled, Some(503), true),
        (StoreError::Timeout, None, true),
        (StoreError::Network("reset".into()), None, true),
        (
            StoreError::Service {
                status: 500,
                code: "InternalError".into(),
                message: String::new(),
            },
            Some(500),
            true,
        ),
        (
            StoreError::Service {
                status: 400,
                code: "InvalidArgument".into(),
                message: String::new(),
            },
            Some(400),
            false,
        ),
    ];
    let n = cases.len() as u64;
    for (err, status, transient) in cases {
        assert_eq!((err.http_status(), err.is_transient()), (status, transient), "{err:?}");
        store.fail_next(3, err.clone());
        assert_eq!(store.head("k").await, Err(err.clone()));
        assert_eq!(store.list(ListRequest::default()).await, Err(err.clone()));
        assert_eq!(
            store.get_range("k", ByteRange::new(0, 5), &etag).await,
            Err(err.clone())
        );
        assert_eq!(
            &store.get_range("k", ByteRange::new(0, 5), &etag).await.unwrap()[..],
            b"hello"
        );
    }
    // Injected errors never reach the inner store: it saw only the successful GETs.
    assert_eq!(store.inner().requests(), n);
}

/// `S3Store` sends a request that fails for a reason a retry cannot change (404, 412, 416, a range
/// past the end) exactly once.
#[tokio::test]
async fn s3_store_does_not_retry_permanent_errors() {
    let server = common::server();
    let etag = server.put(common::BUCKET, "obj", data(100, 1));
    let store = s3_store(&server, common::BUCKET, RetryPolicy::default()).await;
    server.reset_counts();
    assert_eq!(store.head("absent").await, Err(StoreError::NotFound));
    let r = ByteRange::new(0, 10);
    assert_eq!(store.get_range("absent", r, &etag).await, Err(StoreError::NotFound));
    assert_eq!(
        store.get_range("obj", r, "\"x\"").await,
        Err(StoreError::PreconditionFailed)
    );
    for (start, end) in [(100, 101), (90, 101)] {
        assert_eq!(
            store.get_range("obj", ByteRange::new(start, end), &etag).await,
            Err(StoreError::InvalidRange)
        );
    }
    let c = server.counts();
    assert_eq!((c.head, c.get, c.list), (1, 4, 0), "{c:?}");
}

/// `S3Store` classifies what the server says: a missing bucket, a denied bucket, and the transient
/// faults (503 SlowDown, 500, a body cut short by a close or a reset), which it retries up to
/// `max_attempts` and then reports as `Throttled`, `Service`, `BadResponse` or `Network`.
#[tokio::test]
async fn s3_store_classifies_server_errors() {
    let server = common::server();
    let etag = server.put(common::BUCKET, "obj", data(10, 1));
    let retry = RetryPolicy {
        max_attempts: 3,
        ..RetryPolicy::default()
    };
    let missing = s3_store(&server, "no-such-bucket", retry).await;
    assert_eq!(
        missing.list(ListRequest::default()).await,
        Err(StoreError::NoSuchBucket)
    );
    assert_eq!(
        missing.get_range("obj", ByteRange::new(0, 1), &etag).await,
        Err(StoreError::NoSuchBucket)
    );
    // A HEAD answer has no body to carry the error code, so a missing bucket is a plain 404.
    assert_eq!(missing.head("obj").await, Err(StoreError::NotFound));

    let store = s3_store(&server, common::BUCKET, retry).await;
    server.deny_bucket(common::BUCKET, true);
    assert!(matches!(store.head("obj").await, Err(StoreError::AccessDenied(_))));
    assert!(matches!(
        store.get_range("obj", ByteRange::new(0, 1), &etag).await,
        Err(StoreError::AccessDenied(_))
    ));
    server.deny_bucket(common::BUCKET, false);

    fn throttled(e: &StoreError) -> bool {
        *e == StoreError::Throttled
    }
    fn service_500(e: &StoreError) -> bool {
        *e == StoreError::Service {
            status: 500,
            code: "InternalError".into(),
            message: "We encountered an internal error. Please try again.".into(),
        }
    }
    fn body_cut(e: &StoreError) -> bool {
        matches!(e, StoreError::BadResponse(_) | StoreError::Network(_))
    }
    type Check = fn(&StoreError) -> bool;
    let faults: [(FaultKind, Check); 4] = [
        (FaultKind::SlowDown, throttled),
        (FaultKind::Status500, service_500),
        (FaultKind::ShortBody, body_cut),
        (FaultKind::ResetMidBody, body_cut),
    ];
    for (kind, want) in faults {
        server.set_faults(FaultPlan::new(1).rule(FaultRule::new(kind.clone()).ops([Op::Get])));
        server.reset_counts();
        let err = store.get_range("obj", ByteRange::new(0, 10), &etag).await.unwrap_err();
        assert!(want(&err) && err.is_transient(), "{kind:?}: {err:?}");
        assert_eq!(server.counts().get, 3, "{kind:?}: attempts");
        // Two faults, then the third attempt succeeds.
        server.set_faults(FaultPlan::new(1).rule(FaultRule::new(kind.clone()).ops([Op::Get]).max_count(2)));
        server.reset_counts();
        let got = store.get_range("obj", ByteRange::new(0, 10), &etag).await;
        assert_eq!(got.as_deref(), Ok(&data(10, 1)[..]), "{kind:?}");
        assert_eq!(server.counts().get, 3, "{kind:?}: attempts before success");
    }
    server.clear_faults();
}

// ---------------------------------------------------------------------------------------------
// One store each: writes

/// Errors injected by `FaultStore` reach the writer unchanged and never reach the inner store:
/// no object is written or deleted by a failed call, and the next call goes through.
#[tokio::test]
async fn fault_store_injects_errors_into_writes() {
    let store = FaultStore::new(MemoryStore::new());
    store.inner().put("kept", "kept");
    for err in [
        StoreError::Throttled,
        StoreError::AccessDenied("no".into()),
        StoreError::Timeout,
    ] {
        store.fail_next(2, err.clone());
        assert_eq!(
            store.put_if_absent("new", Bytes::from_static(b"x")).await,
            Err(err.clone())
        );
        assert_eq!(store.delete("kept").await, Err(err.clone()));
        assert_eq!(store.inner().head("new").await, Err(StoreError::NotFound));
        assert!(store.inner().head("kept").await.is_ok());
    }
    let writes = |s: &MemoryStore| (s.puts.load(Ordering::Relaxed), s.deletes.load(Ordering::Relaxed));
    assert_eq!(writes(store.inner()), (0, 0));
    assert_eq!(
        store.put_if_absent("new", Bytes::from_static(b"x")).await,
        Ok(PutOutcome::Created)
    );
    assert_eq!(store.delete("kept").await, Ok(()));
    assert_eq!(store.inner().head("kept").await, Err(StoreError::NotFound));
    assert_eq!(writes(store.inner()), (1, 1));
}

/// The value of `s3cachefs_s3_requests_total` for one operation and status.
fn s3_requests(m: &Metrics, operation: &str, status: &str) -> f64 {
    metrics::sum(
        &metrics::parse_text(&m.encode()),
        "s3cachefs_s3_requests_total",
        &[&format!("operation=\"{operation}\""), &format!("status=\"{status}\"")],
    )
}

/// `S3Store::put_if_absent` is one PutObject carrying `If-None-Match: *`, answered 200 when it
/// creates and 412 when the key is taken; the 412 is `AlreadyExists`, sent once, and counted as a
/// PutObject with status 412. `delete` is one DeleteObject, 204 also for a missing key.
#[tokio::test]
async fn s3_store_writes_are_conditional_puts_and_deletes() {
    let server = common::server();
    let m = Arc::new(Metrics::new());
    let store = s3_store_with_metrics(&server, common::BUCKET, RetryPolicy::default(), m.clone()).await;
    server.reset_counts();
    assert_eq!(
        store.put_if_absent("k", Bytes::from_static(b"first")).await,
        Ok(PutOutcome::Created)
    );
    assert_eq!(
        store.put_if_absent("k", Bytes::from_static(b"second")).await,
        Ok(PutOutcome::AlreadyExists)
    );
    assert_eq!(server.get_object(common::BUCKET, "k").as_deref(), Some(&b"first"[..]));
    assert_eq!(store.delete("k").await, Ok(()));
    assert_eq!(store.delete("k").await, Ok(()));
    assert_eq!(server.get_object(common::BUCKET, "k"), None);
    let c = server.counts();
    assert_eq!((c.put, c.delete, c.total()), (2, 2, 4), "{c:?}");
    let log: Vec<_> = server
        .requests()
        .into_iter()
        .map(|r| (r.method, r.key, r.if_none_match, r.status))
        .collect();
    let k = Some("k".to_string());
    let star = Some("*".to_string());
    assert_eq!(
        log,
        [
            ("PUT".to_string(), k.clone(), star.clone(), 200),
            ("PUT".to_string(), k.clone(), star, 412),
            ("DELETE".to_string(), k.clone(), None, 204),
            ("DELETE".to_string(), k, None, 204),
        ]
    );
    assert_eq!(s3_requests(&m, "PutObject", "200"), 1.0);
    assert_eq!(s3_requests(&m, "PutObject", "412"), 1.0);
    assert_eq!(s3_requests(&m, "DeleteObject", "204"), 2.0);
}

/// A 409 ConditionalRequestConflict is retried like a 5xx: after two conflicts the third attempt
/// creates the object, and when the key was taken meanwhile the retry reports `AlreadyExists`.
/// A conflict that outlasts the retries comes back as a transient `Service` error, and nothing
/// is written.
#[tokio::test]
async fn s3_store_retries_conditional_request_conflicts() {
    let server = common::server();
    let m = Arc::new(Metrics::new());
    let retry = RetryPolicy {
        max_attempts: 3,
        ..RetryPolicy::default()
    };
    let store = s3_store_with_metrics(&server, common::BUCKET, retry, m.clone()).await;
    let conflict = || FaultRule::new(FaultKind::ConditionalConflict).ops([Op::Put]);

    server.set_faults(FaultPlan::new(1).rule(conflict().max_count(2)));
    server.reset_counts();
    assert_eq!(
        store.put_if_absent("a", Bytes::from_static(b"a")).await,
        Ok(PutOutcome::Created)
    );
    assert_eq!(server.counts().put, 3);
    assert_eq!(server.get_object(common::BUCKET, "a").as_deref(), Some(&b"a"[..]));

    server.put(common::BUCKET, "taken", &b"theirs"[..]);
    server.set_faults(FaultPlan::new(1).rule(conflict().max_count(1)));
    server.reset_counts();
    assert_eq!(
        store.put_if_absent("taken", Bytes::from_static(b"ours")).await,
        Ok(PutOutcome::AlreadyExists)
    );
    assert_eq!(server.counts().put, 2);
    assert_eq!(
        server.get_object(common::BUCKET, "taken").as_deref(),
        Some(&b"theirs"[..])
    );

    server.set_faults(FaultPlan::new(1).rule(conflict()));
    server.reset_counts();
    let err = store.put_if_absent("b", Bytes::from_static(b"b")).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Service { status: 409, code, .. } if code == "ConditionalRequestConflict")
            && err.is_transient(),
        "{err:?}"
    );
    assert_eq!(server.counts().put, 3);
    assert_eq!(server.get_object(common::BUCKET, "b"), None);
    server.clear_faults();
    assert_eq!(s3_requests(&m, "PutObject", "409"), 6.0);
}

/// Writes to a bucket that does not exist or is denied fail with the same errors as reads, sent
/// once; and a fault plan scoped to the cache bucket breaks its writes and reads while the source
/// bucket on the same server keeps working.
#[tokio::test]
async fn s3_store_write_errors_and_a_broken_cache_bucket() {
    let server = common::server();
    let source_etag = server.put(common::BUCKET, "src", data(100, 1));
    server.create_bucket("cache");
    let retry = RetryPolicy {
        max_attempts: 3,
        ..RetryPolicy::default()
    };
    let missing = s3_store(&server, "no-such-bucket", retry).await;
    server.reset_counts();
    assert_eq!(
        missing.put_if_absent("k", Bytes::from_static(b"x")).await,
        Err(StoreError::NoSuchBucket)
    );
    assert_eq!(missing.delete("k").await, Err(StoreError::NoSuchBucket));
    assert_eq!((server.counts().put, server.counts().delete), (1, 1));

    let cache = s3_store(&server, "cache", retry).await;
    let source = s3_store(&server, common::BUCKET, retry).await;
    server.deny_bucket("cache", true);
    assert!(matches!(
        cache.put_if_absent("k", Bytes::from_static(b"x")).await,
        Err(StoreError::AccessDenied(_))
    ));
    assert!(matches!(cache.delete("k").await, Err(StoreError::AccessDenied(_))));
    server.deny_bucket("cache", false);

    server.set_bucket_faults("cache", FaultPlan::new(1).rule(FaultRule::new(FaultKind::Status500)));
    server.reset_counts();
    let err = cache.put_if_absent("k", Bytes::from_static(b"x")).await.unwrap_err();
    assert!(matches!(err, StoreError::Service { status: 500, .. }), "{err:?}");
    assert!(
        matches!(cache.head("k").await, Err(StoreError::Service { status: 500, .. })),
        "head in the broken bucket"
    );
    assert_eq!(
        source
            .get_range("src", ByteRange::new(0, 100), &source_etag)
            .await
            .as_deref(),
        Ok(&data(100, 1)[..])
    );
    let c = server.counts();
    assert_eq!((c.put, c.head, c.get, c.faults), (3, 3, 1, 6), "{c:?}");
    server.clear_bucket_faults("cache");
    assert_eq!(
        cache.put_if_absent("k", Bytes::from_static(b"x")).await,
        Ok(PutOutcome::Created)
    );
}
