use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::cachedir::{area_path, shard_name};
use crate::object::block_range;

const BS: u64 = 64 << 10;

impl DiskCache {
    fn open_for_test(cfg: DiskCacheSettings) -> Result<Arc<DiskCache>, CacheError> {
        DiskCache::open(cfg, &Metrics::new())
    }
}

fn cfg(dir: &Path, max: Option<u64>) -> DiskCacheSettings {
    DiskCacheSettings {
        dir: dir.to_path_buf(),
        max_size: max,
        min_free_percent: 0.0,
        block_size: BS,
        source: SourceId::new(Some("test"), "bucket", ""),
        lock_wait: LOCK_WAIT,
        object_files: false,
    }
}

/// As the daemon runs it: blocks written into their object's file.
fn objects_cfg(dir: &Path, max: Option<u64>) -> DiskCacheSettings {
    DiskCacheSettings {
        object_files: true,
        ..cfg(dir, max)
    }
}

fn obj(key: &str, etag: &str, size: u64) -> ObjectMeta {
    ObjectMeta {
        key: key.into(),
        size,
        etag: etag.into(),
        last_modified: SystemTime::UNIX_EPOCH,
    }
}

fn block(o: &ObjectMeta, index: u64) -> BlockRef {
    BlockRef::new(&SourceId::new(Some("test"), "bucket", ""), o, BS, index)
}

fn content(o: &ObjectMeta, index: u64) -> Bytes {
    let r = block_range(index, BS, o.size);
    Bytes::from(
        (r.start..r.end)
            .map(|i| (i as u8) ^ o.etag.len() as u8 ^ o.key.len() as u8)
            .collect::<Vec<_>>(),
    )
}

/// Reads a block through the cache; counts fetches.
async fn get(c: &Arc<DiskCache>, o: &ObjectMeta, index: u64, fetches: &AtomicUsize) -> Bytes {
    c.get_or_fetch(&block(o, index), async {
        fetches.fetch_add(1, Ordering::SeqCst);
        Ok::<_, ()>(content(o, index))
    })
    .await
    .unwrap()
}

/// Bytes on disk under the cache directory, as `du` counts them.
pub(super) fn du(p: &Path) -> u64 {
    let m = fs::symlink_metadata(p).unwrap();
    let mut total = m.blocks() * 512;
    if m.is_dir() {
        for e in fs::read_dir(p).unwrap() {
            total += du(&e.unwrap().path());
        }
    }
    total
}

/// The ledger against the disk after blocks were written into `files` object files, once their
/// pages are written back (`settle`, so that the check does not depend on when the kernel does
/// it): within one 4 KiB block per file. ext4 keeps up to four extents in the inode and the
/// others in a block of their own, and it splits a range allocated ahead (`fallocate`) where a
/// block was written only when it writes the pages back, after the write recorded the file's
/// size on disk; merging them back may free that block again (docs/CACHE.md, "Space"). A
/// reconciliation then makes the ledger exact.
fn assert_ledger_within_extent_maps(c: &DiskCache, d: &Path, files: u64) {
    settle(d);
    let (ledger, disk) = (c.usage(), du(d));
    assert!(
        ledger.abs_diff(disk) <= 4096 * files,
        "ledger {ledger}, disk {disk}: more apart than the extent maps of {files} files"
    );
    c.scan_and_evict(u64::MAX);
    assert_eq!(c.usage(), du(d), "exact after a reconciliation");
}

/// Writes back the pages of every file under `p` (`fsync`), so that the sizes on disk `du` then
/// sees are settled: ext4 may allocate or free a block of a file's extent map when it writes the
/// file's pages back (`assert_ledger_within_extent_maps`), at a moment of its choosing.
pub(super) fn settle(p: &Path) {
    for e in fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            settle(&e.path());
        } else if t.is_file() {
            match fs::File::open(e.path()) {
                Ok(f) => f.sync_all().unwrap(),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => panic!("{}: {err}", e.path().display()),
            }
        }
    }
}

fn block_files(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for shard in fs::read_dir(area_path(root, Area::Blocks)).unwrap() {
        for f in fs::read_dir(shard.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out
}

#[tokio::test]
async fn miss_then_hit_then_persisted_across_instances() {
    let d = tempfile::tempdir().unwrap();
    let fetches = AtomicUsize::new(0);
    let o = obj("jars/a.jar", "\"e1\"", 3 * BS + 10);
    {
        let c = DiskCache::open_for_test(cfg(d.path(), None)).unwrap();
        for i in 0..4 {
            assert_eq!(get(&c, &o, i, &fetches).await, content(&o, i));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 4);
        for i in 0..4 {
            assert_eq!(get(&c, &o, i, &fetches).await, content(&o, i));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 4);
        assert_eq!(c.stats().hits.get(), 4);
    }
    let c = DiskCache::open_for_test(cfg(d.path(), None)).unwrap();
    for i in 0..4 {
        assert_eq!(get(&c, &o, i, &fetches).await, content(&o, i));
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        4,
        "a new instance (a restarted daemon) reads what was stored"
    );
    // A new ETag never matches old blocks.
    let o2 = obj("jars/a.jar", "\"e2\"", 3 * BS + 10);
    assert_eq!(get(&c, &o2, 0, &fetches).await, content(&o2, 0));
    assert_eq!(fetches.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn files_and_dirs_are_private() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("cache");
    let c = DiskCache::open_for_test(cfg(&dir, None)).unwrap();
    get(&c, &obj("k", "\"e\"", 10), 0, &AtomicUsize::new(0)).await;
    assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    for f in block_files(&dir) {
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(f.parent().unwrap()).unwrap().mode() & 0o777, 0o700);
    }
}

#[tokio::test]
async fn corrupt_truncated_and_foreign_blocks_are_refetched_and_counted() {
    let d = tempfile::tempdir().unwrap();
    let c = DiskCache::open_for_test(cfg(d.path(), None)).unwrap();
    let fetches = AtomicUsize::new(0);
    let o = obj("data/x", "\"e\"", 2 * BS);
    get(&c, &o, 0, &fetches).await;
    get(&c, &o, 1, &fetches).await;
    let files = block_files(d.path());
    assert_eq!(files.len(), 2);
    // Flip one data byte of one block, truncate the other.
    let mut bytes = fs::read(&files[0]).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0x40;
    fs::write(&files[0], bytes).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&files[1]).unwrap();
    f.set_len(1000).unwrap();
    for i in 0..2 {
        assert_eq!(get(&c, &o, i, &fetches).await, content(&o, i));
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 4);
    assert_eq!(c.stats().corrupt.get(), 2);
    // Replaced and valid again.
    for i in 0..2 {
        assert_eq!(get(&c, &o, i, &fetches).await, content(&o, i));
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 4);
    // A block file swapped with another block's file fails the header check.
    let files = block_files(d.path());
    fs::copy(&files[0], &files[1]).unwrap();
    for i in 0..2 {
        assert_eq!(get(&c, &o, i, &fetches).await, content(&o, i));
    }
    assert_eq!(c.stats().corrupt.get(), 3);
    // A block file with one byte too many is not trusted either.
    let files = block_files(d.path());
    let mut longer = fs::read(&files[0]).unwrap();
    longer.push(0);
    fs::write(&files[0], longer).unwrap();
    let before = fetches.load(Ordering::SeqCst);
    // Block files are named `<object hash>.<index>`.
    let which: u64 = files[0].extension().unwrap().to_str().unwrap().parse().unwrap();
    assert_eq!(get(&c, &o, which, &fetches).await, content(&o, which));
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        before + 1,
        "the longer file was refetched"
    );
    assert_eq!(c.stats().corrupt.get(), 4);
    // Junk in the cache tree is removed by the scan and counted.
    let shard = files[0].parent().unwrap();
    fs::write(shard.join("junk.txt"), b"junk").unwrap();
    fs::create_dir(area_path(d.path(), Area::Blocks).join("zzz")).unwrap();
    let _g = coord::try_exclusive(&c.dir, &c.root.join(EVICT_LOCK)).unwrap().unwrap();
    c.scan_and_evict(u64::MAX);
    assert!(!shard.join("junk.txt").exists());
    assert!(!area_path(d.path(), Area::Blocks).join("zzz").exists());
    assert_eq!(c.stats().corrupt.get(), 6);
}

#[tokio::test]
async fn symlink_in_place_of_a_block_is_never_followed() {
    let d = tempfile::tempdir().unwrap();
    let c = DiskCache::open_for_test(cfg(&d.path().join("c"), None)).unwrap();
    let fetches = AtomicUsize::new(0);
    let o = obj("k", "\"e\"", 100);
    get(&c, &o, 0, &fetches).await;
    let file = block_files(&d.path().join("c")).pop().unwrap();
    let outside = d.path().join("outside");
    fs::copy(&file, &outside).unwrap();
    fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(&outside, &file).unwrap();
    assert_eq!(get(&c, &o, 0, &fetches).await, content(&o, 0));
    assert_eq!(fetches.load(Ordering::SeqCst), 2, "the symlinked block was not trusted");
    assert!(outside.exists(), "the symlink target is untouched");
}

#[tokio::test]
async fn symlinked_directories_in_the_cache_tree_are_never_followed() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("c");
    let outside = d.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let c = DiskCache::open_for_test(cfg(&dir, None)).unwrap();
    let fetches = AtomicUsize::new(0);
    let o = obj("k", "\"e\"", 3 * BS);
    get(&c, &o, 0, &fetches).await;
    // The shard of block 0 moved outside and replaced by a symlink to it (a valid block
    // there); every other shard a symlink to the outside directory.
    let file = block_files(&dir).pop().unwrap();
    let shard = file.parent().unwrap().to_path_buf();
    fs::rename(&shard, outside.join("moved")).unwrap();
    std::os::unix::fs::symlink(outside.join("moved"), &shard).unwrap();
    for n in 0..SHARDS {
        let s = area_path(&dir, Area::Blocks).join(shard_name(n));
        if !s.exists() {
            std::os::unix::fs::symlink(&outside, &s).unwrap();
        }
    }
    for i in 0..3 {
        assert_eq!(get(&c, &o, i, &fetches).await, content(&o, i));
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        4,
        "the block behind the symlink was not trusted"
    );
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1, "nothing written outside");
    assert_eq!(fs::read_dir(outside.join("moved")).unwrap().count(), 1);
    assert!(
        fs::symlink_metadata(&shard).unwrap().is_dir(),
        "the symlink was replaced by a directory"
    );
    // The temp directory replaced by a symlink: writes fail, reads go on, nothing outside.
    fs::remove_dir(area_path(&dir, Area::Tmp)).unwrap();
    std::os::unix::fs::symlink(&outside, area_path(&dir, Area::Tmp)).unwrap();
    let o2 = obj("k2", "\"e\"", BS);
    assert_eq!(get(&c, &o2, 0, &fetches).await, content(&o2, 0));
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1, "nothing written outside");
    assert!(c.stats().write_failures.get() >= 1);
}

/// Scans and control files never go through a symlink either: with the areas, then the version
/// directory itself, replaced by symlinks to a directory of junk (foreign names, stale files,
/// a shard-named directory), a scan evicting everything and a write remove, create and change
/// nothing there.
#[tokio::test]
async fn scans_and_lock_files_never_follow_symlinked_areas() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("c");
    let c = DiskCache::open_for_test(cfg(&dir, None)).unwrap();
    let fetches = AtomicUsize::new(0);
    let outside = d.path().join("outside");
    fs::create_dir_all(outside.join("abc")).unwrap();
    let junk = [outside.join("junk.txt"), outside.join("abc").join("junk.txt")];
    for f in &junk {
        fs::write(f, b"keep").unwrap();
        let old = SystemTime::now() - STALE_TMP - Duration::from_secs(60);
        fs::File::options()
            .write(true)
            .open(f)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let untouched = |what: &str| {
        let mut names: Vec<_> = fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["abc", "junk.txt"], "{what}");
        for f in &junk {
            assert_eq!(fs::read(f).unwrap(), b"keep", "{what}");
        }
    };
    for area in [Area::Blocks, Area::Full, Area::Tmp] {
        let p = area_path(&dir, area);
        fs::rename(&p, p.with_extension("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, &p).unwrap();
    }
    {
        let _g = coord::try_exclusive(&c.dir, &c.root.join(EVICT_LOCK)).unwrap().unwrap();
        c.scan_and_evict(0);
    }
    untouched("scan");
    let o = obj("k", "\"e\"", 10);
    assert_eq!(get(&c, &o, 0, &fetches).await, content(&o, 0));
    untouched("write");
    // The version directory itself: its lock files are not created behind the link.
    let v1 = cachedir::version_path(&dir);
    fs::rename(&v1, v1.with_extension("moved")).unwrap();
    std::os::unix::fs::symlink(&outside, &v1).unwrap();
    assert_eq!(get(&c, &o, 0, &fetches).await, content(&o, 0));
    assert!(c.stats().write_failures.get() + c.stats().skipped_full.get() >= 1);
    assert!(coord::try_exclusive(&c.dir, &c.root.join(EVICT_LOCK)).is_err());
    untouched("version directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_across_instances_fetch_once() {
    let d = tempfile::tempdir().unwrap();
    // Two instances on one directory behave like two processes (separate descriptors).
    let caches = [
        DiskCache::open_for_test(cfg(d.path(), None)).unwrap(),
        DiskCache::open_for_test(cfg(d.path(), None)).unwrap(),
    ];
    let fetches = Arc::new(AtomicUsize::new(0));
    let o = obj("hot.jar", "\"e\"", 4 * BS);
    let mut tasks = vec![];
    for t in 0..16 {
        let (c, f, o) = (caches[t % 2].clone(), fetches.clone(), o.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..4 {
                let got = c
                    .get_or_fetch(&block(&o, i), async {
                        f.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        Ok::<_, ()>(content(&o, i))
                    })
                    .await
                    .unwrap();
                assert_eq!(got, content(&o, i));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 4, "one fetch per distinct block");
}

#[tokio::test]
async fn size_bound_holds_and_recent_blocks_survive() {
    let d = tempfile::tempdir().unwrap();
    let max = 2 << 20; // 2 MiB: about 30 blocks of 64 KiB
    let c = DiskCache::open_for_test(cfg(d.path(), Some(max))).unwrap();
    let fetches = AtomicUsize::new(0);
    let o = obj("big", "\"e\"", 200 * BS);
    for i in 0..200 {
        assert_eq!(get(&c, &o, i, &fetches).await, content(&o, i));
        assert!(
            du(d.path()) <= max,
            "on disk {} > bound {max} after block {i}",
            du(d.path())
        );
        // The block just written is present.
        let before = fetches.load(Ordering::SeqCst);
        get(&c, &o, i, &fetches).await;
        assert_eq!(fetches.load(Ordering::SeqCst), before);
    }
    assert!(c.stats().evictions.get() > 0);
    // Least recently used went first: the last blocks are cached, the first ones are not.
    let before = fetches.load(Ordering::SeqCst);
    get(&c, &o, 199, &fetches).await;
    get(&c, &o, 198, &fetches).await;
    assert_eq!(fetches.load(Ordering::SeqCst), before);
    get(&c, &o, 0, &fetches).await;
    assert_eq!(fetches.load(Ordering::SeqCst), before + 1);
}

#[tokio::test]
async fn block_larger_than_the_bound_is_served_uncached() {
    let d = tempfile::tempdir().unwrap();
    let c = DiskCache::open_for_test(cfg(d.path(), Some(40_000))).unwrap();
    let fetches = AtomicUsize::new(0);
    let o = obj("k", "\"e\"", BS);
    assert_eq!(get(&c, &o, 0, &fetches).await, content(&o, 0));
    assert_eq!(get(&c, &o, 0, &fetches).await, content(&o, 0));
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    assert!(c.stats().skipped_full.get() >= 1);
}

#[tokio::test]
async fn unwritable_cache_still_serves_reads() {
    let d = tempfile::tempdir().unwrap();
    let c = DiskCache::open_for_test(cfg(d.path(), None)).unwrap();
    // Break the temp directory: writes fail, reads go on.
    fs::remove_dir(area_path(d.path(), Area::Tmp)).unwrap();
    fs::write(area_path(d.path(), Area::Tmp), b"not a dir").unwrap();
    let fetches = AtomicUsize::new(0);
    let o = obj("k", "\"e\"", 1000);
    assert_eq!(get(&c, &o, 0, &fetches).await, content(&o, 0));
    assert_eq!(get(&c, &o, 0, &fetches).await, content(&o, 0));
    assert_eq!(c.stats().write_failures.get(), 2);
}

#[test]
fn cache_owned_by_another_user_is_refused() {
    // The tests run as root (CI too), which may give a directory away.
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("c");
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
    let err = DiskCache::open_for_test(cfg(&dir, None)).err().unwrap();
    assert!(matches!(err, CacheError::WrongOwner { owner: 65534, .. }), "{err}");
}

#[test]
fn key_to_path_mapping_is_stable_distinct_and_confined() {
    let d = tempfile::tempdir().unwrap();
    let c = DiskCache::open_for_test(cfg(d.path(), None)).unwrap();
    let mut seen = HashSet::new();
    let keys = [
        "a",
        "a/",
        "../../etc/passwd",
        "a/b\0c",
        "ü/𝄞",
        "",
        "x".repeat(1024).leak(),
    ];
    for key in keys {
        for etag in ["\"1\"", "\"2\""] {
            for index in [0, 1, 4095, u64::MAX] {
                let loc = c.locate(&block(&obj(key, etag, 10), index));
                assert!(loc.path.starts_with(area_path(d.path(), Area::Blocks)));
                let rel = loc.path.strip_prefix(area_path(d.path(), Area::Blocks)).unwrap();
                assert_eq!(rel.components().count(), 2);
                assert!(is_shard_name(rel.parent().unwrap().as_os_str()));
                assert!(is_block_name(loc.path.file_name().unwrap()));
                assert!(seen.insert(loc.path.clone()), "collision for {key:?} {etag} {index}");
                // Stable: the same inputs give the same path.
                assert_eq!(c.locate(&block(&obj(key, etag, 10), index)).path, loc.path);
            }
        }
    }
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Any key, ETag and index (".." segments, NUL, slashes, any Unicode, any length) maps
        /// to a block file and an assembled file two levels under the cache root, with names
        /// the cache's own scan recognizes: a key can never name a path outside the cache.
        #[test]
        fn locate_stays_under_the_cache_root(
            key in any::<String>(),
            etag in any::<String>(),
            index in any::<u64>(),
            size in 1u64..u64::MAX,
        ) {
            let d = tempfile::tempdir().unwrap();
            let c = DiskCache::open_for_test(cfg(d.path(), None)).unwrap();
            let o = obj(&key, &etag, size);
            let loc = c.locate(&block(&o, index));
            let blocks = area_path(d.path(), Area::Blocks);
            let rel = loc.path.strip_prefix(&blocks).unwrap();
            prop_assert_eq!(rel.components().count(), 2);
            prop_assert!(rel.components().all(|p| matches!(p, std::path::Component::Normal(_))));
            prop_assert!(is_shard_name(rel.parent().unwrap().as_os_str()));
            prop_assert!(is_block_name(loc.path.file_name().unwrap()));
            let full = c.full_path(&loc.object);
            let rel = full.strip_prefix(area_path(d.path(), Area::Full)).unwrap();
            prop_assert_eq!(rel.components().count(), 2);
            prop_assert!(is_shard_name(rel.parent().unwrap().as_os_str()));
            prop_assert!(loc.object.len() == 32 && loc.object.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }
}

/// A lock holder that never lets go (a stuck or stopped process) costs a reader one deadline:
/// the read then fetches the block itself, returns the right bytes, and the timeout is counted.
/// Holding every stripe and the maintainer's `evict.lock` stalls no hit either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_lock_holder_costs_a_read_one_deadline() {
    let d = tempfile::tempdir().unwrap();
    let mut settings = cfg(d.path(), None);
    settings.lock_wait = Duration::from_millis(300);
    let c = DiskCache::open(settings, &Metrics::new()).unwrap();
    let fetches = AtomicUsize::new(0);
    let cached = obj("cached", "\"e\"", 100);
    get(&c, &cached, 0, &fetches).await;
    // Another open file description (as another process has) takes every stripe.
    let holder = c.locks.open().unwrap();
    assert!(coord::try_range(&holder, 0, coord::STRIPES).unwrap());
    let _evict = coord::try_exclusive(&c.dir, &c.root.join(EVICT_LOCK)).unwrap().unwrap();
    let t = Instant::now();
    assert_eq!(
        get(&c, &cached, 0, &fetches).await,
        content(&cached, 0),
        "a hit takes no lock"
    );
    let o = obj("cold", "\"e\"", 2 * BS);
    for i in 0..2 {
        assert_eq!(get(&c, &o, i, &fetches).await, content(&o, i));
    }
    let took = t.elapsed();
    assert!(took < Duration::from_secs(3), "two cold reads took {took:?}");
    assert_eq!(c.stats().lock_timeouts.get(), 2);
    assert_eq!(fetches.load(Ordering::SeqCst), 3);
    drop(holder);
    // The ledger's lock held: a write gives up at its deadline, the read still succeeds.
    let holder = c.locks.open().unwrap();
    // The shard locks and the ledger lock follow the stripes.
    assert!(coord::try_range(&holder, coord::STRIPES, 2 * SHARDS + 1).unwrap());
    let o2 = obj("cold2", "\"e\"", BS);
    assert_eq!(get(&c, &o2, 0, &fetches).await, content(&o2, 0));
    assert!(c.stats().lock_timeouts.get() >= 3);
    drop(holder);
    assert_eq!(get(&c, &o2, 0, &fetches).await, content(&o2, 0));
    assert_eq!(get(&c, &o2, 0, &fetches).await, content(&o2, 0));
    assert_eq!(fetches.load(Ordering::SeqCst), 5, "cached once the locks are free");
}

/// The verified-file set never counts a file as verified because another file had its inode
/// number before (a reused inode), and evicted files leave it.
#[tokio::test]
async fn verified_files_are_told_apart_on_a_reused_inode_and_pruned() {
    let d = tempfile::tempdir().unwrap();
    let c = DiskCache::open_for_test(objects_cfg(d.path(), None)).unwrap();
    let fetches = AtomicUsize::new(0);
    let o = obj("whole", "\"e\"", 2 * BS + 5);
    for i in 0..3 {
        get(&c, &o, i, &fetches).await;
    }
    assert!(c.assemble(&o).unwrap());
    let (hash, _) = c.assembled_hash(&o);
    let path = c.full_path(&hash);
    let key = |p: &Path| {
        let m = fs::metadata(p).unwrap();
        (m.dev(), m.ino())
    };
    assert!(c.open_assembled(&o).is_some());
    assert!(c.verified_full.get(&key(&path)).is_some(), "remembered once verified");
    // Damage it, and make the set say that a file of an earlier life of this inode number was
    // verified: this file is still checked, and refused.
    let mut b = fs::read(&path).unwrap();
    b[7] ^= 1;
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(&b[7..8], 7)
        .unwrap();
    let (k, (generation, born, size)) = (key(&path), c.verified_full.get(&key(&path)).unwrap());
    c.verified_full.insert(k, (generation ^ 1, born, size));
    assert!(
        c.open_assembled(&o).is_none(),
        "a damaged file on a known inode number is checked"
    );
    c.verified_full.insert(k, (generation, born ^ 1, size));
    assert!(c.open_assembled(&o).is_none() || !path.exists());
    // Assembled again, verified, then evicted: it leaves the set.
    for i in 0..3 {
        get(&c, &o, i, &fetches).await;
    }
    assert!(c.assemble(&o).unwrap());
    assert!(c.open_assembled(&o).is_some());
    let k = key(&path);
    assert!(c.verified_full.get(&k).is_some());
    c.scan_and_evict(0);
    assert!(!path.exists());
    assert!(c.verified_full.get(&k).is_none(), "evicted files leave the set");
}

/// A file verified whole is stamped on its index: a restarted cache (same boot) hands it out
/// without reading it, until its data file is written or its times set; a stamp of another boot,
/// or none, is not trusted. Recording the last access renews a stamp that still matches.
#[tokio::test]
async fn a_verification_outlives_a_restart_of_the_same_boot_only() {
    let d = tempfile::tempdir().unwrap();
    let fetches = AtomicUsize::new(0);
    let o = obj("stamped", "\"e\"", 2 * BS + 5);
    let reopen = || DiskCache::open_for_test(objects_cfg(d.path(), None)).unwrap();
    let state = |c: &DiskCache| match c.open_if_verified(&o) {
        crate::object::Assembled::Verified(_) => "verified",
        crate::object::Assembled::Unverified => "unverified",
        crate::object::Assembled::Absent => "absent",
    };
    {
        let c = reopen();
        for i in 0..3 {
            get(&c, &o, i, &fetches).await;
        }
        // Every block written here: verified, and stamped, without a read.
        assert_eq!(state(&c), "verified");
    }
    let (hash, _) = reopen().assembled_hash(&o);
    let path = reopen().full_path(&hash);
    let idx = path.with_extension("idx");
    let stamp = || rustix::fs::getxattr(&idx, c"user.s3cachefs.ok", &mut [0u8; 64][..]).ok();
    assert_eq!(stamp(), Some(16));
    assert_eq!(state(&reopen()), "verified", "trusted after a restart");

    // A stamp of another boot: verified by reading, then stamped for this one.
    let mut other = reopen();
    Arc::get_mut(&mut other).unwrap().boot_id = Some("another-boot".into());
    assert_eq!(state(&other), "unverified");
    assert!(other.verify_assembled(&o));
    assert_eq!(state(&reopen()), "unverified", "stamped for the other boot");
    assert!(reopen().verify_assembled(&o));
    assert_eq!(state(&reopen()), "verified");

    // The same byte written again: the data file changed, so it is read again.
    let b = fs::read(&path).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&b[7..8], 7).unwrap();
    assert_eq!(state(&reopen()), "unverified");
    let c = reopen();
    assert!(c.verify_assembled(&o));
    assert_eq!(state(&reopen()), "verified");

    // Damage written after the stamp is caught: the file is read, refused and removed.
    f.write_all_at(&[b[9] ^ 4], 9).unwrap();
    let c = reopen();
    assert_eq!(state(&c), "unverified");
    assert!(!c.verify_assembled(&o));
    assert!(!path.exists() && stamp().is_none());

    // Written whole again, its last access old: opening it records the access (which moves
    // the change time) and renews the stamp.
    {
        let c = reopen();
        for i in 0..3 {
            get(&c, &o, i, &fetches).await;
        }
        assert_eq!(state(&c), "verified");
    }
    let old = std::time::SystemTime::now() - 2 * crate::cache::TOUCH_INTERVAL;
    let f = fs::File::open(&path).unwrap();
    f.set_times(fs::FileTimes::new().set_accessed(old).set_modified(old))
        .unwrap();
    let c = reopen();
    assert!(c.verify_assembled(&o), "read: setting the times moved the change time");
    assert_eq!(state(&c), "verified");
    assert!(
        fs::metadata(&path).unwrap().modified().unwrap() > old,
        "access recorded"
    );
    assert_eq!(state(&reopen()), "verified", "the stamp renewed with the access");
    // Without a stamp it is read again.
    rustix::fs::removexattr(&idx, c"user.s3cachefs.ok").unwrap();
    assert_eq!(state(&reopen()), "unverified");
}

/// The ledger cut short or removed under a running cache (by anyone) is rebuilt: reads and
/// writes go on, and a reconciliation makes it exact again.
#[tokio::test]
async fn a_truncated_ledger_is_rebuilt_and_reconciled() {
    let d = tempfile::tempdir().unwrap();
    let c = DiskCache::open_for_test(cfg(d.path(), None)).unwrap();
    let fetches = AtomicUsize::new(0);
    let o = obj("k", "\"e\"", 3 * BS);
    for i in 0..3 {
        get(&c, &o, i, &fetches).await;
    }
    c.scan_and_evict(u64::MAX);
    assert!(!c.reconcile_due());
    assert_eq!(c.usage(), du(d.path()));
    let usage = cachedir::version_path(d.path()).join(USAGE);
    fs::OpenOptions::new()
        .write(true)
        .open(&usage)
        .unwrap()
        .set_len(5)
        .unwrap();
    for i in 0..3 {
        assert_eq!(get(&c, &o, i, &fetches).await, content(&o, i));
    }
    let o2 = obj("k2", "\"e\"", BS);
    assert_eq!(get(&c, &o2, 0, &fetches).await, content(&o2, 0));
    assert!(c.reconcile_due(), "a rebuilt ledger asks for a reconciliation");
    c.scan_and_evict(u64::MAX);
    assert_eq!(c.usage(), du(d.path()), "exact again after reconciliation");
    assert_eq!(fetches.load(Ordering::SeqCst), 4);
}

/// Page `i` of block `index` of `o` (its expected bytes).
fn page_bytes(o: &ObjectMeta, index: u64, i: u64) -> Bytes {
    let b = content(o, index);
    let from = (i * crate::object::PAGE_SIZE) as usize;
    b.slice(from..(from + crate::object::PAGE_SIZE as usize).min(b.len()))
}

/// Writes pages `which` of block `index` of `o` to its page file (as `keep_pages` does, but
/// waiting for it).
fn keep(c: &Arc<DiskCache>, o: &ObjectMeta, index: u64, which: &[u64]) {
    let b = block(o, index);
    let pages = which.iter().map(|&i| (i, page_bytes(o, index, i))).collect::<Vec<_>>();
    c.merge_pages(&c.locate(&b), &pages);
}

async fn page(c: &Arc<DiskCache>, o: &ObjectMeta, index: u64, i: u64) -> Option<Bytes> {
    let b = block(o, index);
    let len = page_bytes(o, index, i).len() as u64;
    match c.page(&b.id, b.len(), i, len).await? {
        FoundPage::Page(p) => Some(p),
        FoundPage::Block(b) => {
            let from = (i * crate::object::PAGE_SIZE) as usize;
            Some(b.slice(from..from + len as usize))
        }
    }
}

fn page_file(c: &DiskCache, o: &ObjectMeta, index: u64) -> PathBuf {
    pages::page_path(&c.locate(&block(o, index)).path)
}

#[tokio::test]
async fn pages_are_merged_kept_across_instances_and_never_served_damaged() {
    let d = tempfile::tempdir().unwrap();
    // Block 1 is the last one: 2 full pages and a short one.
    let o = obj("t.parquet", "\"e\"", BS + 2 * crate::object::PAGE_SIZE + 100);
    {
        let c = DiskCache::open_for_test(cfg(d.path(), None)).unwrap();
        keep(&c, &o, 0, &[0, 2]);
        keep(&c, &o, 0, &[3]);
        keep(&c, &o, 1, &[2]);
        assert_eq!(c.usage(), du(d.path()), "the ledger counts page files as written");
    }
    let c = DiskCache::open_for_test(cfg(d.path(), None)).unwrap();
    for i in [0, 2, 3] {
        assert_eq!(page(&c, &o, 0, i).await, Some(page_bytes(&o, 0, i)), "page {i}");
    }
    assert_eq!(page(&c, &o, 0, 1).await, None);
    assert_eq!(page(&c, &o, 1, 2).await, Some(page_bytes(&o, 1, 2)));
    assert_eq!(page(&c, &o, 1, 0).await, None);
    // Another ETag never matches.
    assert_eq!(page(&c, &obj("t.parquet", "\"f\"", o.size), 0, 0).await, None);
    assert_eq!(c.stats().corrupt.get(), 0);

    // A flipped byte in a page: that page is not served, the file is removed.
    let path = page_file(&c, &o, 0);
    let f = fs::OpenOptions::new().write(true).read(true).open(&path).unwrap();
    let len = f.metadata().unwrap().len();
    let mut b = [0u8];
    f.read_exact_at(&mut b, len - 10).unwrap();
    f.write_all_at(&[b[0] ^ 1], len - 10).unwrap();
    drop(f);
    assert_eq!(page(&c, &o, 0, 3).await, None);
    assert_eq!(c.stats().corrupt.get(), 1);
    assert!(!path.exists());
    // A flipped byte in the page table.
    keep(&c, &o, 0, &[0]);
    let f = fs::OpenOptions::new().write(true).read(true).open(&path).unwrap();
    let hlen = u32::from_le_bytes({
        let mut h = [0u8; 4];
        f.read_exact_at(&mut h, 12).unwrap();
        h
    }) as u64;
    f.read_exact_at(&mut b, hlen - 8).unwrap();
    f.write_all_at(&[b[0] ^ 0x80], hlen - 8).unwrap();
    drop(f);
    assert_eq!(page(&c, &o, 0, 0).await, None);
    assert_eq!(c.stats().corrupt.get(), 2);
    // A page file cut short.
    keep(&c, &o, 0, &[0, 1]);
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(f.metadata().unwrap().len() - 1).unwrap();
    drop(f);
    assert_eq!(page(&c, &o, 0, 1).await, None);
    assert_eq!(c.stats().corrupt.get(), 3);
    c.scan_and_evict(u64::MAX);
    assert_eq!(c.usage(), du(d.path()));
}

#[tokio::test]
async fn a_block_file_supersedes_the_page_file() {
    let d = tempfile::tempdir().unwrap();
    let c = DiskCache::open_for_test(cfg(d.path(), None)).unwrap();
    let fetches = AtomicUsize::new(0);
    let o = obj("t.parquet", "\"e\"", 2 * BS);
    keep(&c, &o, 1, &[1]);
    let path = page_file(&c, &o, 1);
    assert!(path.exists());
    assert_eq!(get(&c, &o, 1, &fetches).await, content(&o, 1));
    assert!(!path.exists(), "the block file replaces the page file");
    assert_eq!(c.usage(), du(d.path()), "and its bytes leave the ledger");
    // Pages now come from the block file, and are not written again.
    assert_eq!(page(&c, &o, 1, 3).await, Some(page_bytes(&o, 1, 3)));
    keep(&c, &o, 1, &[2]);
    assert!(!path.exists());
}

#[tokio::test]
async fn reconciliation_keeps_and_counts_page_files() {
    let d = tempfile::tempdir().unwrap();
    let c = DiskCache::open_for_test(cfg(d.path(), None)).unwrap();
    let fetches = AtomicUsize::new(0);
    let o = obj("t.parquet", "\"e\"", 8 * BS);
    for i in 0..6 {
        keep(&c, &o, i, &[i % 4]);
    }
    // A page file left beside its block file (two writers racing) is superseded.
    let stale = fs::read(page_file(&c, &o, 5)).unwrap();
    assert_eq!(get(&c, &o, 5, &fetches).await, content(&o, 5));
    fs::write(page_file(&c, &o, 5), stale).unwrap();
    let (usage, files) = c.scan_and_evict(u64::MAX);
    assert_eq!(files, 6, "5 page files and a block file");
    assert!(!page_file(&c, &o, 5).exists());
    assert_eq!(usage, du(d.path()));
    assert_eq!(c.stats().corrupt.get(), 0);
    for i in 0..5 {
        assert_eq!(page(&c, &o, i, i % 4).await, Some(page_bytes(&o, i, i % 4)));
    }
    // Evicted like block files.
    c.scan_and_evict(0);
    assert_eq!(page(&c, &o, 0, 0).await, None);
    assert_eq!(c.usage(), du(d.path()));
}

/// Every file under `area` (recursively).
fn files_in(root: &Path, area: Area) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![area_path(root, area)];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { dirs.push(p) } else { out.push(p) }
        }
    }
    out
}

/// Blocks go straight into one sparse file per object: no block file, no assembly, each byte
/// written once; the ledger counts what the file takes as it grows, and the file is handed out
/// whole once every block is in.
#[tokio::test]
async fn blocks_are_written_once_into_their_object_file() {
    let d = tempfile::tempdir().unwrap();
    let c = DiskCache::open_for_test(objects_cfg(d.path(), None)).unwrap();
    let fetches = AtomicUsize::new(0);
    let o = obj("data/t.jar", "\"e\"", 3 * BS + 100);
    assert_eq!(get(&c, &o, 2, &fetches).await, content(&o, 2));
    let (hash, _) = c.assembled_hash(&o);
    let path = c.full_path(&hash);
    let m = fs::metadata(&path).unwrap();
    assert_eq!(m.len(), o.size);
    assert!(
        m.blocks() * 512 >= o.size,
        "an object within one allocation group is allocated whole at its first block"
    );
    assert!(
        c.open_assembled(&o).is_none(),
        "not handed out while blocks are missing"
    );
    assert_eq!(c.usage(), du(d.path()), "the ledger counts the file as it grows");
    for i in [0, 3, 1, 2] {
        assert_eq!(get(&c, &o, i, &fetches).await, content(&o, i));
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 4, "each block fetched once");
    assert_eq!(c.stats().written_bytes.get(), o.size, "each byte written once");
    assert!(files_in(d.path(), Area::Blocks).is_empty(), "no block file");
    assert_eq!(files_in(d.path(), Area::Full).len(), 2, "the data file and its index");
    assert_eq!(c.usage(), du(d.path()));
    let mut whole = Vec::new();
    c.open_assembled(&o).unwrap().read_to_end(&mut whole).unwrap();
    let want: Vec<u8> = (0..4).flat_map(|i| content(&o, i).to_vec()).collect();
    assert_eq!(whole, want);
    assert!(c.assemble(&o).unwrap(), "complete: nothing to assemble");
    // A new instance (a restart) reads every block from the file, and reconciliation agrees
    // with the ledger.
    drop(c);
    let c = DiskCache::open_for_test(objects_cfg(d.path(), None)).unwrap();
    for i in 0..4 {
        assert_eq!(get(&c, &o, i, &fetches).await, content(&o, i));
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 4);
    let before = c.usage();
    c.scan_and_evict(u64::MAX);
    assert_eq!((before, c.usage()), (du(d.path()), du(d.path())));
}

/// The first block written into an aligned group of `full::ALLOC_GROUP` bytes allocates the
/// whole group (the last group up to the object's end) when the group continues what the file
/// holds: the object's first group, or one after a group that holds a block. Later blocks of
/// the group allocate nothing more; a block far from any other allocates itself alone. The
/// ledger counts what is allocated. Sizes are taken once the pages are written back, and may
/// include one 4 KiB block of ext4's extent map (`assert_ledger_within_extent_maps`); a group
/// too many or too few is a MiB or more.
#[tokio::test]
async fn a_scan_allocates_whole_groups_and_a_lone_block_itself() {
    let d = tempfile::tempdir().unwrap();
    let c = DiskCache::open_for_test(objects_cfg(d.path(), None)).unwrap();
    let fetches = AtomicUsize::new(0);
    let per_group = full::ALLOC_GROUP / BS;
    let group = full::ALLOC_GROUP;
    let o = obj("data/g.bin", "\"e\"", (3 * per_group + 44) * BS + 100);
    let (hash, _) = c.assembled_hash(&o);
    let path = c.full_path(&hash);
    let allocated = |want: u64, what: &str| {
        fs::File::open(&path).unwrap().sync_all().unwrap();
        let got = fs::metadata(&path).unwrap().blocks() * 512;
        assert!(
            got == want || got == want + 4096,
            "{what}: {got} bytes allocated for {want} (and at most the extent map's block)"
        );
    };
    get(&c, &o, 2 * per_group + 5, &fetches).await;
    allocated(BS, "a lone block: itself");
    get(&c, &o, 1, &fetches).await;
    allocated(BS + group, "the object's first group, whole");
    assert_ledger_within_extent_maps(&c, d.path(), 1);
    get(&c, &o, per_group + 3, &fetches).await;
    allocated(BS + 2 * group, "the group after one that holds a block");
    get(&c, &o, per_group + 4, &fetches).await;
    get(&c, &o, 2 * per_group - 1, &fetches).await;
    get(&c, &o, 2 * per_group + 6, &fetches).await;
    allocated(2 * BS + 2 * group, "nothing more for blocks of a started group");
    get(&c, &o, 3 * per_group + 44, &fetches).await;
    allocated(
        2 * BS + 2 * group + (44 * BS + 4096),
        "the last group, up to the end of the object",
    );
    assert_ledger_within_extent_maps(&c, d.path(), 1);
    for i in 0..o.size.div_ceil(BS) {
        assert_eq!(get(&c, &o, i, &fetches).await, content(&o, i));
    }
    allocated(o.size.div_ceil(4096) * 4096, "every block");
    assert_ledger_within_extent_maps(&c, d.path(), 1);
}

/// Several processes writing blocks of one object at once: the file ends complete and right,
/// and with no reconciliation the ledger counts each byte once (within the extent map's block,
/// `assert_ledger_within_extent_maps`; a block counted twice is 64 KiB).
#[tokio::test]
async fn concurrent_writers_of_one_object_file_keep_it_whole_and_counted() {
    let d = tempfile::tempdir().unwrap();
    let o = obj("data/big.parquet", "\"e\"", 24 * BS);
    let caches: Vec<_> = (0..4)
        .map(|_| DiskCache::open_for_test(objects_cfg(d.path(), None)).unwrap())
        .collect();
    let fetches = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (n, c) in caches.iter().enumerate() {
        let (c, o, fetches) = (c.clone(), o.clone(), fetches.clone());
        tasks.push(tokio::spawn(async move {
            // Each writer goes through the blocks in its own order.
            for k in 0..24u64 {
                let i = (k * (2 * n as u64 + 1)) % 24;
                assert_eq!(get(&c, &o, i, &fetches).await, content(&o, i));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let c = &caches[0];
    assert_ledger_within_extent_maps(c, d.path(), 1);
    let mut whole = Vec::new();
    c.open_assembled(&o).unwrap().read_to_end(&mut whole).unwrap();
    let want: Vec<u8> = (0..24).flat_map(|i| content(&o, i).to_vec()).collect();
    assert!(whole == want);
}

/// Block files of a small object (left by an earlier version, which assembled objects by
/// copying) are moved into the object file, and a damaged entry of the index only makes its
/// block absent: it is fetched and written again, and the rest of the file is kept.
#[tokio::test]
async fn block_files_are_moved_in_and_a_damaged_entry_is_refetched() {
    let d = tempfile::tempdir().unwrap();
    let o = obj("data/old.jar", "\"e\"", 2 * BS + 7);
    let fetches = AtomicUsize::new(0);
    {
        let c = DiskCache::open_for_test(cfg(d.path(), None)).unwrap();
        for i in 0..3 {
            get(&c, &o, i, &fetches).await;
        }
        assert_eq!(files_in(d.path(), Area::Blocks).len(), 3);
    }
    let c = DiskCache::open_for_test(objects_cfg(d.path(), None)).unwrap();
    assert!(c.assemble(&o).unwrap());
    assert!(files_in(d.path(), Area::Blocks).is_empty(), "moved, not copied");
    assert_eq!(c.usage(), du(d.path()));
    // Damage block 1's entry in the index.
    let (hash, _) = c.assembled_hash(&o);
    let idx = c.full_path(&hash).with_extension("idx");
    let mut b = fs::read(&idx).unwrap();
    let at = b.len() - 8 * 3 + 8 + 2;
    b[at] ^= 0x40;
    fs::write(&idx, &b).unwrap();
    assert!(c.open_assembled(&o).is_none(), "a block is missing now");
    for i in 0..3 {
        assert_eq!(get(&c, &o, i, &fetches).await, content(&o, i));
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        4,
        "only the block whose entry was damaged"
    );
    assert_eq!(c.stats().corrupt.get(), 0, "absent, not corrupt");
    assert!(c.open_assembled(&o).is_some());
    // A damaged byte of the data is caught: the file goes, and its blocks come from S3.
    let data = c.full_path(&hash);
    let f = fs::OpenOptions::new().write(true).open(&data).unwrap();
    f.write_all_at(b"X", BS + 3).unwrap();
    drop(f);
    assert_eq!(get(&c, &o, 1, &fetches).await, content(&o, 1));
    assert_eq!(c.stats().corrupt.get(), 1);
    assert_eq!(fetches.load(Ordering::SeqCst), 5);
    c.scan_and_evict(u64::MAX);
    assert_eq!(c.usage(), du(d.path()));
}

/// After a restart, the blocks the daemon read (and checked) for a reader are not read again
/// to verify the file whole: only the others are. Damage is the probe: done to a block after it
/// was checked, it is not looked for again (as for a file verified whole); done to a block not
/// read yet, the verification finds it and the file goes.
#[tokio::test]
async fn verification_reads_only_the_blocks_not_checked_yet() {
    let d = tempfile::tempdir().unwrap();
    let fetches = AtomicUsize::new(0);
    let o = obj("data/lib.jar", "\"e\"", 3 * BS);
    {
        let c = DiskCache::open_for_test(objects_cfg(d.path(), None)).unwrap();
        for i in 0..3 {
            get(&c, &o, i, &fetches).await;
        }
    }
    let damage = |c: &DiskCache, at: u64| {
        let (hash, _) = c.assembled_hash(&o);
        let f = fs::OpenOptions::new().write(true).open(c.full_path(&hash)).unwrap();
        f.write_all_at(b"X", at).unwrap();
    };
    // A restart: blocks 0 and 1 read for a reader, then block 0 damaged.
    let c = DiskCache::open_for_test(objects_cfg(d.path(), None)).unwrap();
    for i in 0..2 {
        assert_eq!(get(&c, &o, i, &fetches).await, content(&o, i));
    }
    damage(&c, 5);
    assert!(c.verify_assembled(&o), "block 0 was checked when it was read");
    // Another restart: block 0 read, then block 2 (not read) damaged.
    drop(c);
    let c = DiskCache::open_for_test(objects_cfg(d.path(), None)).unwrap();
    fs::write(
        c.full_path(&c.assembled_hash(&o).0),
        (0..3).flat_map(|i| content(&o, i).to_vec()).collect::<Vec<u8>>(),
    )
    .unwrap();
    assert_eq!(get(&c, &o, 0, &fetches).await, content(&o, 0));
    damage(&c, 2 * BS + 5);
    assert!(!c.verify_assembled(&o), "block 2 was not read: its damage is found");
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        3,
        "no block came from the origin until then"
    );
}
