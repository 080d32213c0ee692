use std::ffi::OsStr;
use std::sync::Arc;

use super::*;
use crate::config::Ttl;
use crate::store::memory::MemoryStore;

fn fs_over(store: &Arc<MemoryStore>, prefix: &str) -> Fs {
    let ns = Arc::new(Namespace::new(store.clone(), Ttl::Indefinite, Ttl::Indefinite));
    let reader = Arc::new(BlockReader::memory_only(store.clone(), 64 << 10, 1 << 20));
    Fs::new(
        ns,
        reader,
        prefix,
        FsSettings {
            passthrough: false,
            uid: 7,
            gid: 8,
            file_mode: 0o640,
            dir_mode: 0o750,
        },
    )
}

async fn lookup(fs: &Fs, parent: u64, name: &str) -> Option<Attr> {
    match fs.lookup(parent, OsStr::new(name)).await.unwrap() {
        Looked::Found(a) => Some(a),
        Looked::Missing { .. } => None,
    }
}

#[tokio::test]
async fn lookup_getattr_and_stable_inodes() {
    let s = Arc::new(MemoryStore::new());
    s.put("p/jars/a.jar", vec![1u8; 100]);
    let fs = fs_over(&s, "p/");
    let jars = lookup(&fs, ROOT_INO, "jars").await.unwrap();
    assert_eq!((jars.kind, jars.perm, jars.uid, jars.gid), (FileKind::Dir, 0o750, 7, 8));
    let a = lookup(&fs, jars.ino, "a.jar").await.unwrap();
    assert_eq!((a.kind, a.size, a.perm), (FileKind::File, 100, 0o640));
    assert_eq!(lookup(&fs, jars.ino, "a.jar").await.unwrap().ino, a.ino);
    assert_eq!(fs.getattr(a.ino).await.unwrap(), a);
    assert!(lookup(&fs, ROOT_INO, "missing").await.is_none());
    assert_eq!(
        fs.lookup(a.ino, OsStr::new("x")).await.unwrap_err().errno(),
        libc::ENOTDIR
    );
    assert_eq!(fs.getattr(999).await.unwrap_err().errno(), libc::ENOENT);
}

#[tokio::test]
async fn readdir_lists_dots_then_sorted_entries_with_resumable_offsets() {
    let s = Arc::new(MemoryStore::new());
    for k in ["d/b", "d/a/x", "d/c"] {
        s.put(k, "1");
    }
    let fs = fs_over(&s, "");
    let d = lookup(&fs, ROOT_INO, "d").await.unwrap();
    let fh = fs.opendir(d.ino).await.unwrap();
    let all: Vec<_> = fs.readdir(fh, 0).unwrap().collect();
    let names: Vec<_> = all.iter().map(|e| &*e.name).collect();
    assert_eq!(names, [".", "..", "a", "b", "c"]);
    assert_eq!(all[0].ino, d.ino);
    assert_eq!(all[1].ino, ROOT_INO);
    assert_eq!(all[2].kind, FileKind::Dir);
    // Resuming from an entry's cookie continues after it.
    let rest: Vec<_> = fs.readdir(fh, all[2].next_offset).unwrap().map(|e| e.name).collect();
    assert_eq!(rest.iter().map(|n| &**n).collect::<Vec<_>>(), ["b", "c"]);
    // A plain readdir allocates no inode: a name the kernel does not know shows a number no
    // inode has; once looked up, its real one.
    let before = fs.inode_count();
    let b = lookup(&fs, d.ino, "b").await.unwrap();
    assert_ne!(b.ino, all[3].ino);
    assert_eq!(fs.inode_count(), before + 1);
    assert_eq!(fs.readdir(fh, 3).unwrap().next().unwrap().ino, b.ino);
    fs.releasedir(fh);
    assert!(fs.readdir(fh, 0).is_err());
}

#[tokio::test]
async fn readdirplus_gives_attrs_counts_lookups_and_forget_frees() {
    let s = Arc::new(MemoryStore::new());
    for i in 0..50 {
        s.put(&format!("d/f{i:02}"), vec![7u8; i]);
    }
    s.put("d/sub/x", "1");
    let fs = fs_over(&s, "");
    let d = lookup(&fs, ROOT_INO, "d").await.unwrap();
    let fh = fs.opendir(d.ino).await.unwrap();
    let base = fs.inode_count();
    let reqs = s.requests();
    // Read in chunks of 7 from each returned cookie, as the kernel does.
    let mut got = Vec::new();
    let mut offset = 0;
    loop {
        let chunk: Vec<_> = fs.readdirplus(fh, offset).unwrap().take(7).collect();
        let Some(last) = chunk.last() else { break };
        offset = last.next_offset;
        got.extend(chunk);
    }
    assert_eq!(s.requests(), reqs, "attributes come from the listing");
    let names: Vec<_> = got.iter().map(|e| &*e.name).collect();
    let mut want = vec![".".to_string(), "..".into()];
    want.extend((0..50).map(|i| format!("f{i:02}")));
    want.push("sub".into());
    assert_eq!(names, want);
    assert_eq!((got[0].attr.ino, got[1].attr.ino), (d.ino, ROOT_INO));
    assert!(!got[0].counted && !got[1].counted && got[2..].iter().all(|e| e.counted));
    for (i, e) in got[2..52].iter().enumerate() {
        assert_eq!(
            (e.attr.kind, e.attr.size, e.attr.perm),
            (FileKind::File, i as u64, 0o640)
        );
        assert_eq!(fs.getattr(e.attr.ino).await.unwrap().size, i as u64);
    }
    assert_eq!(got[52].attr.kind, FileKind::Dir);
    assert_eq!(fs.inode_count(), base + 51);
    // The same inodes as lookup's, and each lookup counts once more.
    let f3 = lookup(&fs, d.ino, "f03").await.unwrap();
    assert_eq!(f3.ino, got[5].attr.ino);
    // The kernel forgets everything it was given: back to where it was.
    for e in &got[2..] {
        fs.forget(e.attr.ino, 1);
    }
    assert_eq!(fs.inode_count(), base + 1, "f03 was looked up twice");
    fs.forget(f3.ino, 1);
    assert_eq!(fs.inode_count(), base);
    assert_eq!(fs.getattr(f3.ino).await.unwrap_err().errno(), libc::ENOENT);
    // Looked up again: the same content under a new number.
    let again = lookup(&fs, d.ino, "f03").await.unwrap();
    assert!(again.ino > got[52].attr.ino);
    assert_eq!(again.size, 3);
    let o = fs.open(again.ino, false).await.unwrap();
    assert_eq!(&fs.read(o.fh, 0, 10).await.unwrap()[..], &[7u8; 3]);
    fs.releasedir(fh);
}

#[tokio::test]
async fn open_read_keep_cache_and_read_only() {
    let s = Arc::new(MemoryStore::new());
    // Two blocks of 64 KiB: "hello world" at the start, then more.
    let mut v1 = b"hello world".to_vec();
    v1.resize(100 << 10, b'1');
    s.put("f", v1.clone());
    let fs = fs_over(&s, "");
    let f = lookup(&fs, ROOT_INO, "f").await.unwrap();
    assert_eq!(fs.open(f.ino, true).await.unwrap_err().errno(), libc::EROFS);
    assert_eq!(fs.open(ROOT_INO, false).await.unwrap_err().errno(), libc::EISDIR);
    let first = fs.open(f.ino, false).await.unwrap();
    assert!(!first.keep_cache, "first open cannot trust the page cache");
    assert_eq!(&fs.read(first.fh, 6, 5).await.unwrap()[..], b"world");
    let second = fs.open(f.ino, false).await.unwrap();
    assert!(second.keep_cache, "same ETag as the last open");
    assert!(!second.changed);
    fs.release(first.fh);
    assert_eq!(fs.read(first.fh, 0, 1).await.unwrap_err().errno(), libc::EBADF);
    // The object changes under an open handle: bytes of the old version already fetched may
    // still be served, but a block not yet fetched fails rather than mixing versions, and the
    // next open sees the new version without keeping the old page cache.
    let mut v2 = b"HELLO WORLD".to_vec();
    v2.resize(100 << 10, b'2');
    s.put("f", v2);
    assert_eq!(&fs.read(second.fh, 0, 5).await.unwrap()[..], b"hello");
    assert_eq!(fs.read(second.fh, 70 << 10, 5).await.unwrap_err().errno(), libc::EIO);
    let third = fs.open(f.ino, false).await.unwrap();
    assert!(!third.keep_cache);
    assert!(third.changed, "the kernel's cached size must be dropped");
    assert_eq!(&fs.read(third.fh, 0, 5).await.unwrap()[..], b"HELLO");
    assert_eq!(&fs.read(third.fh, 70 << 10, 3).await.unwrap()[..], b"222");
}
