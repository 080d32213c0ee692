//! Which S3 keys the mount shows, and as what: the name rules, applied the same way to whole
//! listings and to single lookups.
//!
//! - A name is one path segment of a key below its directory's prefix. A key with an empty,
//!   `.` or `..` segment, a NUL, or a segment over 255 bytes cannot be shown and is hidden.
//! - A name is a directory when some key starts with `dir/name/` (an implicit directory or a
//!   `name/` marker object). A directory shadows a file of the same name, which is hidden.
//! - A directory's own marker object (`dir/`) is not an entry of it.
//!
//! Each hidden key is logged once, up to a bound, so that a bucket of millions of unshowable
//! keys cannot flood the log or grow memory without end.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use super::{Entries, Entry};
use crate::object::ObjectMeta;

/// Why a key cannot be shown as a file name (`None`: it can).
pub(super) fn invalid_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty path segment")
    } else if name == "." || name == ".." {
        Some("\".\" or \"..\" path segment")
    } else if name.contains('\0') {
        Some("NUL in name")
    } else if name.len() > 255 {
        Some("name longer than 255 bytes")
    } else {
        None
    }
}

/// Why a file whose name is also a directory is hidden.
pub(super) const SHADOWED: &str = "shadowed by a directory of the same name";

/// Most hidden keys logged individually; past this, one summary line.
const MAX_LOGGED_HIDDEN: usize = 10_000;

/// The keys hidden so far, each logged once.
#[derive(Default)]
pub(super) struct HiddenKeys(Mutex<HashSet<String>>);

impl HiddenKeys {
    /// Logs that `key` is not shown, and why, unless it was logged before.
    pub(super) fn log(&self, key: &str, why: &str) {
        let mut logged = self.0.lock().unwrap();
        if logged.len() < MAX_LOGGED_HIDDEN {
            if logged.insert(key.to_string()) {
                warn!(key, reason = why, "S3 key is not shown in the mount");
            }
        } else if logged.len() == MAX_LOGGED_HIDDEN {
            logged.insert(String::new());
            info!("more keys are hidden; no longer logging them individually");
        }
    }
}

/// The entries of directory `dir` (empty or ending in `/`), built from the objects and common
/// prefixes of its delimited listing, in any order and over any number of pages.
pub(super) struct DirBuilder<'a> {
    dir: &'a str,
    hidden: &'a HiddenKeys,
    entries: BTreeMap<Arc<str>, Entry>,
}

impl<'a> DirBuilder<'a> {
    pub(super) fn new(dir: &'a str, hidden: &'a HiddenKeys) -> DirBuilder<'a> {
        DirBuilder {
            dir,
            hidden,
            entries: BTreeMap::new(),
        }
    }

    /// An object directly under the directory.
    pub(super) fn file(&mut self, obj: ObjectMeta) {
        let name = &obj.key[self.dir.len()..];
        if name.is_empty() {
            return; // the directory's own marker object `dir/`
        }
        if let Some(why) = invalid_name(name) {
            self.hidden.log(&obj.key, why);
            return;
        }
        // A directory already seen under this name shadows the file.
        if let Some(Entry::Dir) = self.entries.get(name) {
            self.hidden.log(&obj.key, SHADOWED);
            return;
        }
        self.entries.insert(name.into(), Entry::File(obj));
    }

    /// A common prefix `dir/name/`: a subdirectory.
    pub(super) fn subdir(&mut self, prefix: &str) {
        let name = &prefix[self.dir.len()..prefix.len() - 1];
        if let Some(why) = invalid_name(name) {
            self.hidden.log(prefix, why);
            return;
        }
        if let Some(Entry::File(f)) = self.entries.insert(name.into(), Entry::Dir) {
            self.hidden.log(&f.key, SHADOWED);
        }
    }

    /// The entries, sorted by name.
    pub(super) fn finish(self) -> Entries {
        self.entries.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::Namespace;
    use super::*;
    use crate::config::Ttl;
    use crate::store::memory::MemoryStore;

    #[test]
    fn names_that_cannot_be_shown() {
        for bad in ["", ".", "..", "a\0b", &"n".repeat(256)] {
            assert!(invalid_name(bad).is_some(), "{bad:?}");
        }
        for good in ["a", "...", ".hidden", " ", "é", &"n".repeat(255)] {
            assert_eq!(invalid_name(good), None, "{good:?}");
        }
    }

    fn file(key: &str) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size: 1,
            etag: "\"e\"".into(),
            last_modified: std::time::SystemTime::UNIX_EPOCH,
        }
    }

    fn kinds(entries: &Entries) -> Vec<(&str, bool)> {
        entries.iter().map(|(n, e)| (&**n, matches!(e, Entry::Dir))).collect()
    }

    #[test]
    fn a_directory_shadows_a_file_whichever_comes_first() {
        let hidden = HiddenKeys::default();
        let mut b = DirBuilder::new("d/", &hidden);
        b.file(file("d/x"));
        b.subdir("d/x/");
        b.subdir("d/y/");
        b.file(file("d/y"));
        b.file(file("d/")); // the marker
        b.file(file("d/z"));
        b.subdir("d/../");
        assert_eq!(kinds(&b.finish()), vec![("x", true), ("y", true), ("z", false)]);
        let logged = hidden.0.lock().unwrap();
        for key in ["d/x", "d/y", "d/../"] {
            assert!(logged.contains(key), "{key} logged as hidden");
        }
        assert_eq!(logged.len(), 3, "{logged:?}");
    }

    #[tokio::test]
    async fn listing_builds_dirs_shadows_and_hides() {
        let s = Arc::new(MemoryStore::new());
        for k in [
            "a.jar",
            "lib/x.jar",
            "lib",
            "empty/",
            "deep/er/f",
            "bad//k",
            "./dot",
            "../up",
            "c/",
            "c/d",
        ] {
            s.put(k, "data");
        }
        s.put(&"n".repeat(256), "long");
        let ns = Namespace::new(s.clone(), Ttl::Indefinite, Ttl::Indefinite).one_name_at_a_time();
        let root = ns.list_dir("").await.unwrap();
        assert_eq!(
            kinds(&root.entries()),
            vec![
                ("a.jar", false),
                ("bad", true),
                ("c", true),
                ("deep", true),
                ("empty", true),
                ("lib", true)
            ]
        );
        // "bad/" holds only "bad//k", whose empty segment hides it.
        assert!(ns.list_dir("bad/").await.unwrap().is_empty());
        assert!(ns.list_dir("empty/").await.unwrap().is_empty());
        assert_eq!(kinds(&ns.list_dir("c/").await.unwrap().entries()), vec![("d", false)]);
    }
}
