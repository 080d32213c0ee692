//! One conformance suite for every `ObjectStore`: the same cases run against `MemoryStore`,
//! `FaultStore` over a `MemoryStore` with no faults, and `S3Store` over real HTTP to the test
//! server (`testsrv`). Each case becomes one test per store, named `<store>::<case>`, so a failure
//! names both. The cases check what the trait promises (`src/store/mod.rs`): listing order and
//! pagination, common prefixes, `NotFound`, `PreconditionFailed`, `InvalidRange`, exact lengths,
//! empty and deleted objects, unusual keys, and HEAD agreeing with LIST.
//!
//! After the suite, a few tests of one store each: error classification through `FaultStore`,
//! and which `S3Store` errors are retried, counted at the test server.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use s3cachefs::metrics::Metrics;
use s3cachefs::object::{ByteRange, ObjectMeta};
use s3cachefs::store::fault::FaultStore;
use s3cachefs::store::memory::MemoryStore;
use s3cachefs::store::s3::{RetryPolicy, S3Settings, S3Store};
use s3cachefs::store::{ListPage, ListRequest, ObjectStore, StoreError};
use s3cachefs_testserver::{FaultKind, FaultPlan, FaultRule, Op, TestServer};

/// Stores an object under a key and returns its ETag as the store will report it.
type Seed = Box<dyn Fn(&str, &[u8]) -> String + Send + Sync>;
/// Removes the object under a key.
type Delete = Box<dyn Fn(&str) + Send + Sync>;

/// A store under test and a way to put objects into it and remove them (stores are read-only
/// through the trait).
struct Fixture {
    store: Arc<dyn ObjectStore>,
    seed: Seed,
    delete: Delete,
}

impl Fixture {
    async fn memory() -> Fixture {
        let store = Arc::new(MemoryStore::new());
        let (s, d) = (store.clone(), store.clone());
        Fixture {
            store,
            seed: Box::new(move |key, data| s.put(key, data.to_vec())),
            delete: Box::new(move |key| d.remove(key)),
        }
    }

    async fn fault() -> Fixture {
        let store = Arc::new(FaultStore::new(MemoryStore::new()));
        let (s, d) = (store.clone(), store.clone());
        Fixture {
            store,
            seed: Box::new(move |key, data| s.inner().put(key, data.to_vec())),
            delete: Box::new(move |key| d.inner().remove(key)),
        }
    }

    async fn s3() -> Fixture {
        let server = Arc::new(common::server());
        let store = Arc::new(s3_store(&server, common::BUCKET, RetryPolicy::default()).await);
        let (s, d) = (server.clone(), server);
        Fixture {
            store,
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
    };
    S3Store::new(&settings, Arc::new(Metrics::new())).await
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
    let odd = [
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
