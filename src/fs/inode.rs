//! The inode table: (parent, name, kind) → inode number, for as long as the kernel knows it.
//!
//! Each number carries the kernel's lookup count: one per entry reply (`lookup`, and each
//! entry of a `readdirplus` reply other than `.` and `..`), taken under the table's lock before
//! the reply is sent, so the count here is never below the kernel's. A `forget` subtracts what
//! the kernel says it drops; at zero the kernel no longer knows the number and the entry is
//! removed, with everything kept per inode (the ETag of its last open). So memory follows what
//! the kernel holds, not every name ever seen.
//!
//! Numbers come from one counter and are never reused: a forgotten name looked up again gets a
//! new number (the kernel has forgotten the old one), and no number ever names two different
//! (parent, name, kind). Open file and directory handles hold their `Node` themselves, so a
//! handle keeps working whatever the table holds (the kernel does not forget an inode that has
//! open files anyway).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{FileKind, ROOT_INO};

pub struct Node {
    pub ino: u64,
    pub parent: u64,
    /// The parent directory's key prefix (shared by siblings).
    pub parent_key: Arc<str>,
    pub name: Arc<str>,
    pub kind: FileKind,
    /// Directory: key prefix (empty or ending in `/`). File: the object key.
    pub key: Arc<str>,
    /// ETag at the last open, to decide whether the kernel may keep its page cache.
    open_etag: Mutex<Option<Arc<str>>>,
}

impl Node {
    /// Records the ETag of an open. Returns (same as the previous open's, different from a
    /// version the kernel may have seen before).
    pub fn swap_open_etag(&self, etag: Arc<str>) -> (bool, bool) {
        let mut last = self.open_etag.lock().unwrap();
        let result = match last.as_deref() {
            Some(prev) if prev == &*etag => (true, false),
            Some(_) => (false, true),
            None => (false, false),
        };
        *last = Some(etag);
        result
    }

    /// After a read found the object changed: the next open must not trust the page cache.
    pub fn mark_changed(&self) {
        *self.open_etag.lock().unwrap() = Some("".into());
    }
}

struct Slot {
    node: Arc<Node>,
    /// The kernel's lookup count of this number (at least).
    lookups: u64,
}

#[derive(Default)]
struct Inner {
    nodes: HashMap<u64, Slot>,
    by_name: HashMap<(u64, Arc<str>, FileKind), u64>,
    next: u64,
}

pub struct InodeTable {
    inner: Mutex<Inner>,
}

impl InodeTable {
    pub fn new(root_prefix: &str) -> InodeTable {
        let root = Node {
            ino: ROOT_INO,
            parent: ROOT_INO,
            parent_key: root_prefix.into(),
            name: "".into(),
            kind: FileKind::Dir,
            key: root_prefix.into(),
            open_etag: Mutex::new(None),
        };
        let mut inner = Inner {
            next: ROOT_INO + 1,
            ..Default::default()
        };
        // The root is never looked up nor forgotten: it stays.
        inner.nodes.insert(
            ROOT_INO,
            Slot {
                node: Arc::new(root),
                lookups: 1,
            },
        );
        InodeTable {
            inner: Mutex::new(inner),
        }
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Node>> {
        self.inner.lock().unwrap().nodes.get(&ino).map(|s| s.node.clone())
    }

    /// The inode of `name` in directory `dir`, allocated on first sight, counted as handed to
    /// the kernel once more: call it only for an entry the kernel is about to receive.
    pub fn lookup(&self, dir: &Node, name: Arc<str>, kind: FileKind) -> Arc<Node> {
        let mut inner = self.inner.lock().unwrap();
        if let Some(&ino) = inner.by_name.get(&(dir.ino, name.clone(), kind)) {
            let slot = inner.nodes.get_mut(&ino).expect("by_name and nodes agree");
            slot.lookups += 1;
            return slot.node.clone();
        }
        let ino = inner.next;
        inner.next += 1;
        let key: Arc<str> = match kind {
            FileKind::Dir => format!("{}{name}/", dir.key).into(),
            FileKind::File => format!("{}{name}", dir.key).into(),
        };
        let node = Arc::new(Node {
            ino,
            parent: dir.ino,
            parent_key: dir.key.clone(),
            name: name.clone(),
            kind,
            key,
            open_etag: Mutex::new(None),
        });
        inner.nodes.insert(
            ino,
            Slot {
                node: node.clone(),
                lookups: 1,
            },
        );
        inner.by_name.insert((dir.ino, name, kind), ino);
        node
    }

    /// The number of `name` in directory `dir` if the kernel knows it; nothing is allocated
    /// or counted.
    pub fn known(&self, dir: u64, name: &Arc<str>, kind: FileKind) -> Option<u64> {
        self.inner
            .lock()
            .unwrap()
            .by_name
            .get(&(dir, name.clone(), kind))
            .copied()
    }

    /// A number no inode has or will ever have: the `d_ino` of a plain `readdir` entry the
    /// kernel has not looked up (it gets a real number when it does).
    pub fn unused_number(&self) -> u64 {
        let mut inner = self.inner.lock().unwrap();
        inner.next += 1;
        inner.next - 1
    }

    /// The kernel dropped `n` of its lookups of `ino`; at zero the entry goes. True when the
    /// table shrank because the kernel dropped most of what it held.
    pub fn forget(&self, ino: u64, n: u64) -> bool {
        self.forget_many(std::iter::once((ino, n)))
    }

    /// `forget` of several inodes under one lock.
    pub fn forget_many(&self, items: impl IntoIterator<Item = (u64, u64)>) -> bool {
        let mut inner = self.inner.lock().unwrap();
        for (ino, n) in items {
            if ino == ROOT_INO {
                continue;
            }
            let Some(slot) = inner.nodes.get_mut(&ino) else {
                continue;
            };
            slot.lookups = slot.lookups.saturating_sub(n);
            if slot.lookups == 0 {
                let node = inner.nodes.remove(&ino).expect("just found").node;
                inner.by_name.remove(&(node.parent, node.name.clone(), node.kind));
            }
        }
        if inner.nodes.capacity() > 64 && inner.nodes.capacity() > 4 * inner.nodes.len() {
            // The kernel dropped most of what it held (memory pressure, drop_caches): give the
            // tables' memory back too.
            inner.nodes.shrink_to_fit();
            inner.by_name.shrink_to_fit();
            return true;
        }
        false
    }

    /// Every (parent inode, name) the kernel knows.
    pub fn names(&self) -> Vec<(u64, Arc<str>)> {
        self.inner
            .lock()
            .unwrap()
            .by_name
            .keys()
            .map(|(parent, name, _)| (*parent, name.clone()))
            .collect()
    }

    /// Inodes the kernel knows, the root included.
    pub fn len(&self) -> u64 {
        self.inner.lock().unwrap().nodes.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_forget_and_never_reuse_numbers() {
        let t = InodeTable::new("p/");
        let root = t.get(ROOT_INO).unwrap();
        let a = t.lookup(&root, "a".into(), FileKind::File);
        assert_eq!(&*a.key, "p/a");
        assert_eq!(t.lookup(&root, "a".into(), FileKind::File).ino, a.ino);
        let d = t.lookup(&root, "a".into(), FileKind::Dir);
        assert_ne!(d.ino, a.ino, "a file and a directory of one name are different inodes");
        assert_eq!(&*d.key, "p/a/");
        assert_eq!(t.len(), 3);
        // Two lookups of a: one forget of 1 keeps it, the second drops it.
        t.forget(a.ino, 1);
        assert_eq!(t.known(ROOT_INO, &"a".into(), FileKind::File), Some(a.ino));
        t.forget(a.ino, 1);
        assert!(t.get(a.ino).is_none());
        assert_eq!(t.known(ROOT_INO, &"a".into(), FileKind::File), None);
        assert_eq!(t.len(), 2);
        // Looked up again: a new number, never the old one, nor one handed out as unused.
        let spare = t.unused_number();
        let again = t.lookup(&root, "a".into(), FileKind::File);
        assert!(again.ino > a.ino && again.ino != spare && again.ino != d.ino);
        // The handle's node outlives the table entry.
        assert_eq!(&*a.key, "p/a");
        // Forgets of unknown numbers, more than counted, or of the root change nothing else.
        t.forget_many([(999, 5), (d.ino, 7), (ROOT_INO, 100)]);
        assert!(t.get(ROOT_INO).is_some() && t.get(again.ino).is_some() && t.get(d.ino).is_none());
        assert_eq!(t.names(), vec![(ROOT_INO, Arc::<str>::from("a"))]);
    }
}
