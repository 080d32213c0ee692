//! The filesystem core: inodes, handles and the operations the FUSE adapter calls, as plain
//! async functions returning our own types. No `fuser` here, so it is tested without a kernel.
//!
//! Invariants:
//! - An inode number names one (parent, name, kind) and is never reused. It lives while the
//!   kernel holds it: entry replies count, `forget` drops (see `inode`); a forgotten name
//!   looked up again gets a new number. Attributes are always answered from the namespace
//!   cache, so they follow its TTL.
//! - A directory stream serves entries from the snapshot taken at `opendir`, by index: each
//!   `readdir`/`readdirplus` costs the entries it returns, whatever the offset.
//! - A file handle pins the object version (ETag) seen at open; every byte it returns belongs
//!   to that version.

mod error;
mod inode;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tracing::warn;

pub use error::FsError;
use inode::{InodeTable, Node};

use crate::meta::{Brief, DirListing, Entry, Namespace};
use crate::object::{Assembled, AssembledFiles, ObjectMeta};
use crate::read::{BlockReader, ReadError, ReadHandle};

pub const ROOT_INO: u64 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    File,
    Dir,
}

/// Attributes of an inode, in our own terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: FileKind,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub blksize: u32,
    /// How long the kernel may cache these attributes (`None`: indefinitely).
    pub valid_for: Option<Duration>,
}

/// The answer to a lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Looked {
    Found(Attr),
    /// No such name; the kernel may remember that for `valid_for` (`None`: indefinitely).
    Missing {
        valid_for: Option<Duration>,
    },
}

/// Ownership and modes shown for every file and directory.
#[derive(Clone, Debug)]
pub struct FsSettings {
    /// Offer assembled objects of the disk cache as backing files (FUSE passthrough).
    pub passthrough: bool,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
}

/// The result of `open`.
#[derive(Debug)]
pub struct Opened {
    pub fh: u64,
    /// The kernel may keep its page cache of this file: the ETag is the one of the last open.
    pub keep_cache: bool,
    /// The object changed since the previous open: attributes the kernel cached (the size)
    /// belong to the old version and must be dropped.
    pub changed: bool,
    /// The version opened (ETag, size), when passthrough is wanted and the object may have
    /// an assembled file: a backing file held for this version may serve the open
    /// (`passed_through`), else `backing_file` looks for one.
    pub version: Option<(Arc<str>, u64)>,
}

/// One entry of a directory stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: FileKind,
    pub name: Arc<str>,
    /// Cookie of the entry after this one.
    pub next_offset: u64,
}

/// Told of the objects read through the mount (`--record-access`): once per open, at the
/// first successful read, or at the open itself when the kernel reads a backing file directly
/// and the daemon sees no read. Called on the runtime: it must not block.
pub trait AccessLog: Send + Sync {
    fn read(&self, meta: &ObjectMeta);
}

/// One entry of a `readdirplus` stream: the name with its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntryPlus {
    pub attr: Attr,
    pub name: Arc<str>,
    /// Cookie of the entry after this one.
    pub next_offset: u64,
    /// The entry was counted as one kernel lookup of `attr.ino` (every entry but `.` and
    /// `..`): if it is not sent after all, `forget(attr.ino, 1)` undoes that.
    pub counted: bool,
}

struct FileHandle {
    reader: ReadHandle,
    node: Arc<Node>,
    /// The access log was told of this open.
    logged: AtomicBool,
    /// The kernel reads a backing file for this open: nothing to assemble at release.
    through: AtomicBool,
}

/// An object version: key and ETag.
type ObjectVersion = (Arc<str>, Arc<str>);

/// The most assembled files verified in the background at once (each reads its file whole).
const VERIFY_AT_ONCE: usize = 2;

/// How long after an open of an unverified file its background verification starts. The
/// reader that opened it usually reads it whole at once, through the daemon, which checks each
/// block it takes (and the release then verifies what is left, usually nothing): started at
/// once, the verification raced that reader and both read the file.
const VERIFY_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

struct DirHandle {
    node: Arc<Node>,
    listing: Arc<DirListing>,
}

/// Directory streams number "." 0, ".." 1, then the listing's entries from 2; an entry's
/// cookie is its number plus one.
const DOTS: u64 = 2;

pub struct Fs {
    ns: Arc<Namespace>,
    reader: Arc<BlockReader>,
    settings: FsSettings,
    /// Whole objects as local files (the disk cache's), offered to the kernel at open.
    assembled: Option<Arc<dyn AssembledFiles>>,
    access: Option<Arc<dyn AccessLog>>,
    inodes: InodeTable,
    files: Mutex<HashMap<u64, Arc<FileHandle>>>,
    dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
    next_fh: AtomicU64,
    mounted_at: SystemTime,
    /// Assembled files being verified in the background: (key, ETag).
    verifying: Arc<Mutex<std::collections::HashSet<ObjectVersion>>>,
}

impl Fs {
    /// A filesystem whose root is the directory `root_prefix` (empty or ending in `/`).
    pub fn new(ns: Arc<Namespace>, reader: Arc<BlockReader>, root_prefix: &str, settings: FsSettings) -> Fs {
        Fs {
            ns,
            reader,
            settings,
            assembled: None,
            access: None,
            inodes: InodeTable::new(root_prefix),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            mounted_at: SystemTime::now(),
            verifying: Arc::default(),
        }
    }

    /// Where assembled objects come from when `settings.passthrough` is on.
    pub fn with_assembled_files(mut self, files: Arc<dyn AssembledFiles>) -> Fs {
        self.assembled = Some(files);
        self
    }

    /// Where reads are reported (`--record-access`).
    pub fn with_access_log(mut self, log: Arc<dyn AccessLog>) -> Fs {
        self.access = Some(log);
        self
    }

    /// The assembled files, when passthrough is on and there are any.
    fn passthrough_files(&self) -> Option<Arc<dyn AssembledFiles>> {
        self.assembled.clone().filter(|_| self.settings.passthrough)
    }

    fn dir_attr(&self, ino: u64, valid_for: Option<Duration>) -> Attr {
        Attr {
            ino,
            kind: FileKind::Dir,
            size: 0,
            mtime: self.mounted_at,
            perm: self.settings.dir_mode,
            uid: self.settings.uid,
            gid: self.settings.gid,
            nlink: 2,
            blksize: self.reader.block_size() as u32,
            valid_for,
        }
    }

    fn file_attr(&self, ino: u64, meta: &ObjectMeta, valid_for: Option<Duration>) -> Attr {
        self.file_attr_of(ino, meta.size, meta.last_modified, valid_for)
    }

    fn file_attr_of(&self, ino: u64, size: u64, mtime: std::time::SystemTime, valid_for: Option<Duration>) -> Attr {
        Attr {
            ino,
            kind: FileKind::File,
            size,
            mtime,
            perm: self.settings.file_mode,
            uid: self.settings.uid,
            gid: self.settings.gid,
            nlink: 1,
            blksize: self.reader.block_size() as u32,
            valid_for,
        }
    }

    fn dir_node(&self, ino: u64) -> Result<Arc<Node>, FsError> {
        let node = self.inodes.get(ino).ok_or(FsError::NoSuchInode(ino))?;
        if node.kind != FileKind::Dir {
            return Err(FsError::NotADirectory);
        }
        Ok(node)
    }

    /// Resolves `name` in directory `parent`.
    pub async fn lookup(&self, parent: u64, name: &OsStr) -> Result<Looked, FsError> {
        let dir = self.dir_node(parent)?;
        let Some(name) = name.to_str() else {
            return Ok(Looked::Missing { valid_for: None });
        }; // S3 keys are UTF-8
        let r = self.ns.lookup(&dir.key, name).await?;
        let valid_for = self.ns.valid_for(&r);
        Ok(match r.entry {
            None => Looked::Missing { valid_for },
            // Counted as a kernel lookup: this answer is about to be sent.
            Some(Entry::Dir) => {
                Looked::Found(self.dir_attr(self.inodes.lookup(&dir, name.into(), FileKind::Dir).ino, valid_for))
            }
            Some(Entry::File(meta)) => Looked::Found(self.file_attr(
                self.inodes.lookup(&dir, name.into(), FileKind::File).ino,
                &meta,
                valid_for,
            )),
        })
    }

    /// Current metadata of a file inode, from the namespace cache (refetched after the TTL),
    /// with how long it stays valid.
    async fn current_meta(&self, node: &Node) -> Result<(ObjectMeta, Option<Duration>), FsError> {
        let r = self.ns.lookup(&node.parent_key, &node.name).await?;
        let valid_for = self.ns.valid_for(&r);
        match r.entry {
            Some(Entry::File(meta)) => Ok((meta, valid_for)),
            // The name is gone or became a directory: this inode is stale.
            _ => Err(FsError::Stale),
        }
    }

    pub async fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        let node = self.inodes.get(ino).ok_or(FsError::NoSuchInode(ino))?;
        match node.kind {
            // A directory's attributes never change; whether it still exists is the entry's TTL.
            FileKind::Dir => Ok(self.dir_attr(ino, self.ns.ttl())),
            FileKind::File => {
                let (meta, valid_for) = self.current_meta(&node).await?;
                Ok(self.file_attr(ino, &meta, valid_for))
            }
        }
    }

    /// Opens a file for reading; `write` is true when the open asks for write access.
    pub async fn open(&self, ino: u64, write: bool) -> Result<Opened, FsError> {
        let node = self.inodes.get(ino).ok_or(FsError::NoSuchInode(ino))?;
        if node.kind == FileKind::Dir {
            return Err(FsError::IsADirectory);
        }
        if write {
            return Err(FsError::ReadOnly);
        }
        let (meta, _) = self.current_meta(&node).await?;
        // Reads pin the version by its ETag, which some servers' listings leave out.
        let meta = self.ns.with_etag(meta).await?;
        let (keep_cache, changed) = node.swap_open_etag(meta.etag.clone());
        let version = (self.passthrough_files().is_some() && meta.size > 0).then(|| (meta.etag.clone(), meta.size));
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files.lock().unwrap().insert(
            fh,
            Arc::new(FileHandle {
                reader: self.reader.handle(meta),
                node,
                logged: AtomicBool::new(false),
                through: AtomicBool::new(false),
            }),
        );
        Ok(Opened {
            fh,
            keep_cache,
            changed,
            version,
        })
    }

    /// The assembled file of open `fh`'s object, verified, for the kernel to read directly
    /// (passthrough). An assembled file this process has not verified yet is not handed out:
    /// its verification starts in the background [`VERIFY_DELAY`] later (at most
    /// [`VERIFY_AT_ONCE`] at a time) and this open reads through the daemon, which checks each
    /// block it takes from the file.
    pub async fn backing_file(&self, fh: u64) -> Option<std::fs::File> {
        let files = self.passthrough_files()?;
        let handle = self.files.lock().unwrap().get(&fh).cloned()?;
        let meta = handle.reader.meta().clone();
        let found = {
            let (files, meta) = (files.clone(), meta.clone());
            tokio::task::spawn_blocking(move || files.open_assembled(&meta))
                .await
                .ok()?
        };
        match found {
            Assembled::Verified(f) => Some(f),
            Assembled::Unverified => {
                self.verify_in_background(files, meta);
                None
            }
            Assembled::Absent => None,
        }
    }

    fn verify_in_background(&self, files: Arc<dyn AssembledFiles>, meta: ObjectMeta) {
        let verifying = self.verifying.clone();
        tokio::spawn(async move {
            tokio::time::sleep(VERIFY_DELAY).await;
            let _ = tokio::task::spawn_blocking(move || verify_bounded(&verifying, &*files, &meta)).await;
        });
    }

    /// Open `fh` was answered with a backing file: the kernel reads it without the daemon, so
    /// this open is the read (access log). `reused`: the backing file was one already held for
    /// the inode (not from `backing_file`), with whether its last access is due an update.
    pub fn passed_through(&self, fh: u64, reused: Option<(Arc<std::fs::File>, bool)>) {
        let Some(handle) = self.files.lock().unwrap().get(&fh).cloned() else {
            return;
        };
        handle.through.store(true, Ordering::Relaxed);
        match (reused, self.passthrough_files()) {
            // Recording the last access writes metadata: not on a runtime worker.
            (Some((file, true)), Some(files)) => {
                let meta = handle.reader.meta().clone();
                tokio::task::spawn_blocking(move || files.reused(&file, &meta, true));
            }
            (Some((file, false)), Some(files)) => files.reused(&file, handle.reader.meta(), false),
            _ => {}
        }
        if let Some(log) = &self.access
            && !handle.logged.swap(true, Ordering::Relaxed)
        {
            log.read(handle.reader.meta());
        }
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes, FsError> {
        let handle = self.files.lock().unwrap().get(&fh).cloned().ok_or(FsError::BadHandle)?;
        match handle.reader.read(offset, size).await {
            Ok(b) => {
                if let Some(log) = &self.access
                    && !handle.logged.swap(true, Ordering::Relaxed)
                {
                    log.read(handle.reader.meta());
                }
                Ok(b)
            }
            Err(e @ (ReadError::Changed | ReadError::Gone)) => {
                let meta = handle.reader.meta();
                warn!(key = %meta.key, etag = %meta.etag, "{e}; failing the read (reopen the file to read the current version)");
                // Make the next lookup/open see the new state instead of the cached one.
                self.ns.invalidate(&handle.node.parent_key, &handle.node.name).await;
                handle.node.mark_changed();
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn release(&self, fh: u64) {
        if let Some(handle) = self.files.lock().unwrap().remove(&fh) {
            // A file read to the end may now be complete in the disk cache: assemble it, so
            // that the next open can hand it to the kernel. One read through a backing file
            // is assembled already.
            if let Some(files) = self.passthrough_files()
                && !handle.through.load(Ordering::Relaxed)
            {
                let meta = handle.reader.meta().clone();
                let verifying = self.verifying.clone();
                // Verified right away (from the page cache the assembly just filled), so that
                // the next open passes through.
                tokio::task::spawn_blocking(move || {
                    if files.assemble_if_complete(&meta) {
                        verify_bounded(&verifying, &*files, &meta);
                    }
                });
            }
        }
    }

    /// Opens a directory stream: a snapshot of the listing, so offsets stay consistent.
    pub async fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let node = self.dir_node(ino)?;
        let listing = self.ns.list_dir(&node.key).await?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs
            .lock()
            .unwrap()
            .insert(fh, Arc::new(DirHandle { node, listing }));
        Ok(fh)
    }

    fn dir_handle(&self, fh: u64) -> Result<Arc<DirHandle>, FsError> {
        self.dirs.lock().unwrap().get(&fh).cloned().ok_or(FsError::BadHandle)
    }

    /// Entries of an open directory stream from `offset` on ("." and ".." first). The caller
    /// stops when its buffer is full and asks again from the last entry's `next_offset`.
    /// Nothing is allocated for names the kernel does not know: their `ino` is a number no
    /// inode will have (a plain `readdir` entry is no lookup; `stat` gets the real one).
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<impl Iterator<Item = DirEntry> + '_, FsError> {
        let h = self.dir_handle(fh)?;
        Ok((offset..DOTS + h.listing.len() as u64).map(move |i| {
            let (ino, kind, name) = match i {
                0 => (h.node.ino, FileKind::Dir, Arc::<str>::from(".")),
                1 => (h.node.parent, FileKind::Dir, Arc::<str>::from("..")),
                _ => {
                    let (name, brief) = h.listing.brief((i - DOTS) as usize);
                    let (kind, name) = (brief_kind(brief), Arc::<str>::from(name));
                    let ino =
                        (self.inodes.known(h.node.ino, &name, kind)).unwrap_or_else(|| self.inodes.unused_number());
                    (ino, kind, name)
                }
            };
            DirEntry {
                ino,
                kind,
                name,
                next_offset: i + 1,
            }
        }))
    }

    /// Like `readdir`, with each entry's attributes from the listing (no request per entry).
    /// Every entry but "." and ".." counts as one kernel lookup of its inode when the
    /// iterator yields it (see `DirEntryPlus::counted`).
    pub fn readdirplus(&self, fh: u64, offset: u64) -> Result<impl Iterator<Item = DirEntryPlus> + '_, FsError> {
        let h = self.dir_handle(fh)?;
        let valid_for = self.ns.listing_valid_for(&h.listing);
        Ok((offset..DOTS + h.listing.len() as u64).map(move |i| {
            let (attr, name, counted) = match i {
                0 => (self.dir_attr(h.node.ino, valid_for), Arc::<str>::from("."), false),
                1 => (self.dir_attr(h.node.parent, valid_for), Arc::<str>::from(".."), false),
                _ => {
                    let (name, brief) = h.listing.brief((i - DOTS) as usize);
                    let name = Arc::<str>::from(name);
                    let node = self.inodes.lookup(&h.node, name.clone(), brief_kind(brief));
                    let attr = match brief {
                        Brief::Dir => self.dir_attr(node.ino, valid_for),
                        Brief::File { size, modified } => self.file_attr_of(node.ino, size, modified, valid_for),
                    };
                    (attr, name.clone(), true)
                }
            };
            DirEntryPlus {
                attr,
                name,
                next_offset: i + 1,
                counted,
            }
        }))
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().unwrap().remove(&fh);
    }

    /// Forgets every cached lookup and listing: the next access asks S3 again.
    pub fn forget_metadata(&self) {
        self.ns.invalidate_all();
    }

    /// Every (parent inode, name) the kernel knows.
    pub fn known_names(&self) -> Vec<(u64, Arc<str>)> {
        self.inodes.names()
    }

    /// The kernel dropped `n` lookups of `ino` (FORGET); an inode it no longer knows goes.
    /// True when the kernel has just dropped most of the inodes it held (a moment to give
    /// freed memory back to the system).
    pub fn forget(&self, ino: u64, n: u64) -> bool {
        self.inodes.forget(ino, n)
    }

    /// Whether inode `ino` is still known (the kernel holds it).
    pub fn knows(&self, ino: u64) -> bool {
        self.inodes.get(ino).is_some()
    }

    /// Number of inodes the kernel knows, the root included; reported by statfs and the
    /// `inodes` gauge.
    pub fn inode_count(&self) -> u64 {
        self.inodes.len()
    }

    pub fn block_size(&self) -> u64 {
        self.reader.block_size()
    }
}

/// Verifies the assembled file of `meta` (blocking), unless [`VERIFY_AT_ONCE`] verifications
/// are running or this one is (a later open or release asks again). One already verified
/// costs an open of the file and its index.
fn verify_bounded(
    verifying: &Mutex<std::collections::HashSet<ObjectVersion>>,
    files: &dyn AssembledFiles,
    meta: &ObjectMeta,
) {
    let id = (meta.key.clone(), meta.etag.clone());
    {
        let mut v = verifying.lock().unwrap();
        if v.len() >= VERIFY_AT_ONCE || !v.insert(id.clone()) {
            return;
        }
    }
    // Leaves the set even if the verification panics.
    struct Done<'a>(&'a Mutex<std::collections::HashSet<ObjectVersion>>, ObjectVersion);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.1);
        }
    }
    let _done = Done(verifying, id);
    let ok = files.verify_assembled(meta);
    tracing::debug!(key = %meta.key, ok, "assembled file verified");
}

fn brief_kind(brief: Brief) -> FileKind {
    match brief {
        Brief::Dir => FileKind::Dir,
        Brief::File { .. } => FileKind::File,
    }
}

#[cfg(test)]
mod tests;
