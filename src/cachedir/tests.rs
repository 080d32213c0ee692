use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};

use super::*;

/// A cache directory `c` with its areas, next to `outside`, a directory holding one file.
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: CacheDir,
    outside: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CacheDir::open(&tmp.path().join("c")).unwrap();
        for area in Area::ALL {
            dir.create_dir(&dir.area(area)).unwrap();
        }
        dir.create_dir(&dir.area(Area::Meta).join("tmp")).unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"precious").unwrap();
        Fixture {
            _tmp: tmp,
            dir,
            outside,
        }
    }

    /// Replaces directory `path` (creating it first if needed) by a symlink to `outside`.
    fn plant(&self, path: &Path) {
        if path.exists() {
            fs::remove_dir_all(path).unwrap();
        }
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        symlink(&self.outside, path).unwrap();
    }

    fn assert_outside_untouched(&self, what: &str) {
        let names: Vec<_> = fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("keep")], "{what}: written outside");
        assert_eq!(fs::read(self.outside.join("keep")).unwrap(), b"precious", "{what}");
    }

    fn write(&self, tmp_dir: &Path, dest: &Path, create_below: &Path) -> io::Result<Placed> {
        let mut t = self.dir.temp(tmp_dir, "tmp", Some(create_below))?;
        t.file().write_all(b"data")?;
        t.place(dest, Some(create_below))
    }
}

/// A symlink in place of any directory of the tree (the version directory, an area, a shard,
/// a generation directory of persisted metadata, ...) is never followed: writes through it
/// fail, and nothing outside the cache directory is created, changed or removed.
///
/// Then the same without `openat2` (as on a kernel or under a seccomp filter that refuses it):
/// the walk one component at a time refuses every symlink too. Tests running meanwhile take the
/// walk as well, which is as correct.
#[test]
fn symlinked_directories_are_never_followed() {
    assert!(OPENAT2.load(Ordering::Relaxed), "this kernel has openat2");
    never_followed();
    OPENAT2.store(false, Ordering::Relaxed);
    let restore = RestoreOpenat2;
    never_followed();
    drop(restore);
}

struct RestoreOpenat2;

impl Drop for RestoreOpenat2 {
    fn drop(&mut self) {
        OPENAT2.store(true, Ordering::Relaxed);
    }
}

fn never_followed() {
    let gen_dir = |f: &Fixture| f.dir.area(Area::Meta).join("g0000000000000001");
    type Case = (&'static str, fn(&Fixture) -> PathBuf);
    let cases: [Case; 7] = [
        ("version directory", |f| f.dir.version_path()),
        ("blocks area", |f| f.dir.area(Area::Blocks)),
        ("tmp area", |f| f.dir.area(Area::Tmp)),
        ("meta area", |f| f.dir.area(Area::Meta)),
        ("shard", |f| f.dir.area(Area::Blocks).join(shard_name(0xabc))),
        ("generation directory", |f| {
            f.dir.area(Area::Meta).join("g0000000000000001")
        }),
        ("record kind directory", |f| {
            f.dir.area(Area::Meta).join("g0000000000000001").join("l")
        }),
    ];
    for (what, planted) in cases {
        let f = Fixture::new();
        let link = planted(&f);
        f.plant(&link);
        let base = f.dir.path().to_path_buf();
        // What the caches write: a block, a persisted record (through the link or not).
        let block = f.dir.area(Area::Blocks).join("abc").join("0123.0");
        let record = gen_dir(&f).join("l").join("abc").join("0123");
        let _ = f.write(&f.dir.area(Area::Tmp), &block, &f.dir.area(Area::Blocks));
        let _ = f.write(&f.dir.area(Area::Meta).join("tmp"), &record, &base);
        // Everything through the link fails.
        let behind = link.join("abc").join("x");
        let results = [
            f.write(&f.dir.area(Area::Tmp), &behind, &base).map(|_| ()),
            f.write(&f.dir.area(Area::Meta).join("tmp"), &behind, &base).map(|_| ()),
            f.dir.temp(&link, "tmp", Some(&base)).map(|_| ()),
            f.dir.open_private(&link.join("keep")).map(|_| ()),
            f.dir.open_private(&link.join("new")).map(|_| ()),
            f.dir.open_read(&link.join("keep"), true).map(|_| ()),
            f.dir.metadata(&link.join("keep")).map(|_| ()),
            f.dir.remove_file(&link.join("keep")),
            f.dir.remove_tree(&link.join("keep")),
            f.dir.read_dir(&link).map(|_| ()),
        ];
        for (i, r) in results.iter().enumerate() {
            assert!(r.is_err(), "{what}: operation {i} went through the symlink");
        }
        assert_eq!(f.dir.tree_size(&link.join("keep")), 0, "{what}");
        assert!(
            matches!(f.dir.dir_state(&link), DirState::NotADirectory(ref p, _) if *p == link),
            "{what}: {:?}",
            f.dir.dir_state(&link)
        );
        // Removing the tree above the link removes the link, not what it points to.
        if link != f.dir.version_path() {
            f.dir.remove_tree(&f.dir.version_path()).unwrap();
        } else {
            f.dir.remove_file(&link).unwrap();
        }
        assert!(!f.dir.version_path().exists(), "{what}");
        f.assert_outside_untouched(what);
    }
}

#[test]
fn a_symlinked_file_is_neither_followed_nor_replaced_through() {
    let f = Fixture::new();
    let block = f.dir.area(Area::Blocks).join("abc").join("0123.0");
    fs::create_dir(block.parent().unwrap()).unwrap();
    symlink(f.outside.join("keep"), &block).unwrap();
    assert!(f.dir.open_read(&block, true).is_err());
    assert!(f.dir.open_private(&block).is_err());
    assert!(f.dir.metadata(&block).unwrap().is_symlink());
    // Placing a file there replaces the link itself.
    let placed = f
        .write(&f.dir.area(Area::Tmp), &block, &f.dir.area(Area::Blocks))
        .unwrap();
    assert!(placed.replaced.is_some());
    assert!(f.dir.metadata(&block).unwrap().is_file());
    f.dir.remove_file(&block).unwrap();
    f.assert_outside_untouched("file");
}

#[test]
fn temp_files_are_removed_when_not_placed() {
    let f = Fixture::new();
    let tmp_dir = f.dir.area(Area::Tmp);
    let count = || fs::read_dir(&tmp_dir).unwrap().count();
    // Dropped without being placed.
    let mut t = f.dir.temp(&tmp_dir, "tmp", None).unwrap();
    t.file().write_all(b"partial").unwrap();
    assert!(t.path().starts_with(&tmp_dir));
    assert_eq!(count(), 1);
    drop(t);
    assert_eq!(count(), 0);
    // Placing fails: a symlinked shard, a missing area that may not be created.
    f.plant(&f.dir.area(Area::Blocks).join("abc"));
    let to_link = f.dir.area(Area::Blocks).join("abc").join("x");
    assert!(f.write(&tmp_dir, &to_link, &f.dir.area(Area::Blocks)).is_err());
    assert_eq!(count(), 0);
    let t = f.dir.temp(&tmp_dir, "tmp", None).unwrap();
    assert!(t.place(&f.dir.area(Area::Full).join("nope").join("x"), None).is_err());
    assert_eq!(count(), 0);
    // `place_new` on an existing file.
    let dest = f.dir.area(Area::Meta).join("generation");
    f.dir.temp(&tmp_dir, "tmp", None).unwrap().place_new(&dest).unwrap();
    let e = f.dir.temp(&tmp_dir, "tmp", None).unwrap().place_new(&dest).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    assert_eq!(count(), 0);
    f.assert_outside_untouched("temp");
}

#[test]
fn place_creates_private_directories_and_reports_what_it_replaced() {
    let f = Fixture::new();
    let base = f.dir.path().to_path_buf();
    let record = f.dir.area(Area::Meta).join("g1").join("l").join("abc").join("rec");
    assert_eq!(f.dir.missing_dirs(record.parent().unwrap()), 3);
    let placed = f.write(&f.dir.area(Area::Meta).join("tmp"), &record, &base).unwrap();
    assert_eq!((placed.dirs_created, placed.replaced), (3, None));
    assert_eq!(f.dir.missing_dirs(record.parent().unwrap()), 0);
    let placed = f.write(&f.dir.area(Area::Meta).join("tmp"), &record, &base).unwrap();
    assert_eq!(placed.dirs_created, 0);
    assert_eq!(placed.replaced, Some(f.dir.metadata(&record).unwrap().blocks() * 512));
    assert_eq!(fs::read(&record).unwrap(), b"data");
    assert_eq!(fs::metadata(&record).unwrap().mode() & 0o777, 0o600);
    for d in record.ancestors().skip(1).take(4) {
        assert_eq!(fs::metadata(d).unwrap().mode() & 0o777, 0o700, "{}", d.display());
    }
    // Only below `create_below`: a missing area is not created for a block.
    f.dir.remove_tree(&f.dir.area(Area::Blocks)).unwrap();
    let block = f.dir.area(Area::Blocks).join("abc").join("b");
    assert!(
        f.write(&f.dir.area(Area::Tmp), &block, &f.dir.area(Area::Blocks))
            .is_err()
    );
    assert!(!f.dir.area(Area::Blocks).exists());
    assert!(matches!(f.dir.dir_state(block.parent().unwrap()), DirState::Missing));
}

#[test]
fn paths_outside_the_cache_directory_are_refused() {
    let f = Fixture::new();
    let escapes = [
        f.outside.join("keep"),
        f.dir
            .area(Area::Blocks)
            .join("..")
            .join("..")
            .join("..")
            .join("outside")
            .join("keep"),
        PathBuf::from("relative/keep"),
    ];
    for p in &escapes {
        assert_eq!(
            f.dir.remove_file(p).unwrap_err().kind(),
            io::ErrorKind::InvalidInput,
            "{}",
            p.display()
        );
        assert_eq!(
            f.dir.open_read(p, false).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let t = f.dir.temp(&f.dir.area(Area::Tmp), "tmp", None).unwrap();
        assert_eq!(t.place(p, None).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
    f.assert_outside_untouched("escapes");
}

/// The owner check: root creates a directory, gives it to `nobody`, and is refused.
#[test]
fn a_directory_of_another_user_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("c");
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let err = CacheDir::open(&dir).expect_err("refused");
    assert!(matches!(err, OpenError::WrongOwner { owner: 65534, .. }), "{err}");
    assert!(err.to_string().contains("owned by uid 65534"), "{err}");
    assert!(!version_path(&dir).exists(), "nothing created in it");
}

#[test]
fn open_creates_the_directory_private_and_never_changes_an_existing_one() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("a/b/c");
    let c = CacheDir::open(&dir).unwrap();
    assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    assert!(fs::symlink_metadata(c.version_path()).unwrap().is_dir());
    // An existing directory keeps its mode (it may be a filesystem's root); the version
    // directory, ours, is restricted.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(c.version_path(), fs::Permissions::from_mode(0o755)).unwrap();
    CacheDir::open(&dir).unwrap();
    assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o7777, 0o755);
    assert_eq!(fs::metadata(c.version_path()).unwrap().mode() & 0o777, 0o700);
    // Writable by others: refused, unless sticky (as /tmp); never changed either way.
    for mode in [0o777, 0o775] {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
        let err = CacheDir::open(&dir).expect_err("refused");
        assert!(matches!(err, OpenError::Unsafe { .. }), "{err}");
        assert!(err.to_string().contains("writable by other users"), "{err}");
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o7777, mode);
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
    CacheDir::open(&dir).unwrap();
    assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o7777, 0o1777);
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    // A version directory of another user is refused, and left as it is.
    std::os::unix::fs::chown(c.version_path(), Some(65534), Some(65534)).unwrap();
    let err = CacheDir::open(&dir).expect_err("refused");
    assert!(matches!(err, OpenError::WrongOwner { owner: 65534, .. }), "{err}");
    assert_eq!(fs::metadata(c.version_path()).unwrap().uid(), 65534);
    std::os::unix::fs::chown(c.version_path(), Some(euid()), Some(euid())).unwrap();
    // A file in place of the directory, or of its version directory.
    fs::write(d.path().join("f"), b"").unwrap();
    assert!(CacheDir::open(&d.path().join("f")).is_err());
    fs::remove_dir(c.version_path()).unwrap();
    symlink(d.path(), c.version_path()).unwrap();
    assert!(matches!(CacheDir::open(&dir), Err(OpenError::NotADirectory(_))));
}

#[test]
fn layout_names() {
    let d = Path::new("/var/cache/s3");
    assert_eq!(version_path(d), Path::new("/var/cache/s3/v1"));
    let names: Vec<_> = Area::ALL.iter().map(|a| area_path(d, *a)).collect();
    assert_eq!(
        names,
        ["blocks", "full", "meta", "tmp"].map(|n| Path::new("/var/cache/s3/v1").join(n))
    );
    assert_eq!([USAGE, LOCKS, EVICT_LOCK], ["usage", "locks", "evict.lock"]);
    assert_eq!(shard_name(0xabc), "abc");
    assert_eq!(shard_name(7), "007");
    assert_eq!(shard_name(SHARDS + 1), "001");
    assert_eq!(hex_shard("0123456789abcdef"), "012");
    assert!(is_shard_name(OsStr::new("0af")));
    for bad in ["0a", "0afe", "xyz", ".."] {
        assert!(!is_shard_name(OsStr::new(bad)), "{bad}");
    }
}

#[test]
fn read_dir_and_tree_size_do_not_follow() {
    let f = Fixture::new();
    let shard = f.dir.area(Area::Blocks).join("abc");
    fs::create_dir(&shard).unwrap();
    fs::write(shard.join("a"), vec![1u8; 10_000]).unwrap();
    symlink(&f.outside, shard.join("link")).unwrap();
    let mut names: Vec<_> = f
        .dir
        .read_dir(&shard)
        .unwrap()
        .into_iter()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "link"]);
    let blocks = |p: &Path| fs::symlink_metadata(p).unwrap().blocks() * 512;
    assert_eq!(
        f.dir.tree_size(&shard),
        blocks(&shard) + blocks(&shard.join("a")) + blocks(&shard.join("link"))
    );
    f.dir.remove_tree(&shard).unwrap();
    f.assert_outside_untouched("tree");
}

/// Each operation goes through the configured path again, to the directory checked at open:
/// one moved away is no longer used, and one put in its place (not checked) is not used either.
#[test]
fn a_removed_or_replaced_cache_directory_is_not_used() {
    let f = Fixture::new();
    let tmp_dir = f.dir.area(Area::Tmp);
    let moved = f.dir.path().with_extension("moved");
    fs::rename(f.dir.path(), &moved).unwrap();
    assert!(f.dir.temp(&tmp_dir, "tmp", None).is_err());
    fs::create_dir(f.dir.path()).unwrap();
    assert!(f.dir.temp(&tmp_dir, "tmp", Some(f.dir.path())).is_err());
    assert!(f.dir.open_private(&f.dir.version_path().join(LOCKS)).is_err());
    assert!(matches!(f.dir.dir_state(&tmp_dir), DirState::Missing));
    assert_eq!(fs::read_dir(f.dir.path()).unwrap().count(), 0, "nothing created");
    // Back in place: used again.
    fs::remove_dir(f.dir.path()).unwrap();
    fs::rename(&moved, f.dir.path()).unwrap();
    f.dir.temp(&tmp_dir, "tmp", None).unwrap();
}

/// Unmounts (detaching) when dropped, also when the test fails.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

/// A read-only bind mount put over the cache directory while it is in use takes effect at the
/// next operation (it reaches the directory through another mount, so the descriptor held since
/// `open` is not used), and so does its removal. Needs root, as CI runs.
#[test]
fn a_read_only_bind_mount_over_the_directory_takes_effect() {
    let f = Fixture::new();
    let tmp_dir = f.dir.area(Area::Tmp);
    f.dir.temp(&tmp_dir, "tmp", None).unwrap();
    let p = f.dir.path().to_path_buf();
    rustix::mount::mount_bind(&p, &p).expect("bind mount (needs root)");
    let guard = Unmount(p.clone());
    rustix::mount::mount_remount(
        &p,
        rustix::mount::MountFlags::BIND | rustix::mount::MountFlags::RDONLY,
        "",
    )
    .expect("remount read-only");
    let e = f.dir.temp(&tmp_dir, "tmp", None).map(|_| ()).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    assert!(f.dir.open_private(&f.dir.version_path().join("probe")).is_err());
    drop(guard);
    f.dir.temp(&tmp_dir, "tmp", None).unwrap();
}

#[test]
fn only_own_regular_files_are_trusted() {
    let f = Fixture::new();
    let p = f.dir.area(Area::Blocks).join("f");
    fs::write(&p, b"x").unwrap();
    assert!(is_own_file(&f.dir.metadata(&p).unwrap()));
    std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
    assert!(!is_own_file(&f.dir.metadata(&p).unwrap()));
    assert!(!is_own_file(&f.dir.metadata(&f.dir.area(Area::Blocks)).unwrap()));
    symlink(&p, f.dir.area(Area::Blocks).join("l")).unwrap();
    assert!(!is_own_file(
        &f.dir.metadata(&f.dir.area(Area::Blocks).join("l")).unwrap()
    ));
}
