//! The inode table: (parent, name, kind) → inode number, stable for the life of the mount.
//!
//! Entries are never removed (a `forget` from the kernel does not free the number), so an
//! inode number is never reused for another name; the cost is a few dozen bytes per name ever
//! looked up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{FileKind, ROOT_INO};

pub struct Node {
    pub ino: u64,
    pub parent: u64,
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

#[derive(Default)]
struct Inner {
    nodes: HashMap<u64, Arc<Node>>,
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
            name: "".into(),
            kind: FileKind::Dir,
            key: root_prefix.into(),
            open_etag: Mutex::new(None),
        };
        let mut inner = Inner {
            next: ROOT_INO + 1,
            ..Default::default()
        };
        inner.nodes.insert(ROOT_INO, Arc::new(root));
        InodeTable {
            inner: Mutex::new(inner),
        }
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Node>> {
        self.inner.lock().unwrap().nodes.get(&ino).cloned()
    }

    /// The inode of `name` in directory `dir`, allocating it on first sight.
    pub fn child(&self, dir: &Node, name: &str, kind: FileKind) -> Arc<Node> {
        let mut inner = self.inner.lock().unwrap();
        let name: Arc<str> = name.into();
        if let Some(ino) = inner.by_name.get(&(dir.ino, name.clone(), kind)) {
            return inner.nodes[ino].clone();
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
            name: name.clone(),
            kind,
            key,
            open_etag: Mutex::new(None),
        });
        inner.nodes.insert(ino, node.clone());
        inner.by_name.insert((dir.ino, name, kind), ino);
        node
    }

    pub fn names(&self) -> Vec<(u64, Arc<str>)> {
        self.inner
            .lock()
            .unwrap()
            .by_name
            .keys()
            .map(|(parent, name, _)| (*parent, name.clone()))
            .collect()
    }

    pub fn len(&self) -> u64 {
        self.inner.lock().unwrap().nodes.len() as u64
    }
}
