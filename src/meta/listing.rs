//! A directory listing as the namespace keeps it in memory: sorted names and what each one is,
//! stored compactly, because a directory can hold a million keys and its listing stays for the
//! metadata TTL (indefinitely, with `--metadata-ttl indefinite`).
//!
//! The names are one string, each entry holding where its name ends, so a listing is a few large
//! allocations (mapped on their own, and returned to the system whole when the listing goes)
//! rather than a million small ones scattered through the heap. A file's key is never stored: it
//! is always the directory's prefix plus the name (both the fetched and the persisted listings
//! are built that way). The usual single-part ETag (`"` and 32 lowercase hex digits and `"`) is
//! kept as its 16 bytes; any other ETag is kept as it came. Both come back byte for byte, so an
//! `ObjectMeta` rebuilt from the listing equals the one it was built from. About 64 bytes per
//! entry plus its name, against about 220 for a vector of `(name, Entry)`.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::{Entries, Entry};
use crate::object::ObjectMeta;

/// A full directory listing, sorted by name.
#[derive(Debug)]
pub struct DirListing {
    /// The directory's key prefix: empty or ending in `/`.
    dir: Arc<str>,
    /// Every name, one after another.
    text: Box<str>,
    names: Vec<Listed>,
    pub fetched: Instant,
}

#[derive(Debug)]
struct Listed {
    /// Where the name ends in `text` (it starts where the previous one ends).
    end: usize,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Dir,
    File {
        size: u64,
        modified: SystemTime,
        etag: Etag,
    },
}

#[derive(Debug)]
enum Etag {
    /// `"<32 lowercase hex digits>"`, as the 16 bytes the digits spell.
    Md5([u8; 16]),
    Other(Arc<str>),
}

/// What `readdirplus` needs of an entry, without building its `ObjectMeta`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Brief {
    Dir,
    File { size: u64, modified: SystemTime },
}

impl DirListing {
    /// The listing of directory `dir` (empty or ending in `/`) from its entries, sorted by name;
    /// every file's key is `dir` followed by its name.
    pub fn new(dir: &str, entries: Entries, fetched: Instant) -> DirListing {
        let mut names = Vec::with_capacity(entries.len());
        let mut text = String::with_capacity(entries.iter().map(|(n, _)| n.len()).sum());
        for (name, entry) in entries {
            let kind = match entry {
                Entry::Dir => Kind::Dir,
                Entry::File(meta) => {
                    debug_assert!(
                        meta.key.len() == dir.len() + name.len()
                            && meta.key.starts_with(dir)
                            && meta.key.ends_with(&*name),
                        "a listed file's key is its directory and its name"
                    );
                    Kind::File {
                        size: meta.size,
                        modified: meta.last_modified,
                        etag: Etag::pack(meta.etag),
                    }
                }
            };
            text.push_str(&name);
            names.push(Listed { end: text.len(), kind });
        }
        DirListing {
            dir: dir.into(),
            text: text.into_boxed_str(),
            names,
            fetched,
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The entry named `name`, if the directory has one.
    pub fn get(&self, name: &str) -> Option<Entry> {
        let (mut lo, mut hi) = (0, self.names.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.name(mid).cmp(name) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(self.entry_at(mid)),
            }
        }
        None
    }

    /// The `i`th name.
    pub fn name(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.names[i - 1].end };
        &self.text[start..self.names[i].end]
    }

    /// The `i`th name and its entry.
    pub fn entry(&self, i: usize) -> (Arc<str>, Entry) {
        (self.name(i).into(), self.entry_at(i))
    }

    /// The `i`th name and what `readdirplus` shows of it.
    pub fn brief(&self, i: usize) -> (&str, Brief) {
        let l = &self.names[i];
        let brief = match &l.kind {
            Kind::Dir => Brief::Dir,
            Kind::File { size, modified, .. } => Brief::File {
                size: *size,
                modified: *modified,
            },
        };
        (self.name(i), brief)
    }

    /// Every entry, rebuilt (persistence, tests).
    pub fn entries(&self) -> Entries {
        (0..self.len()).map(|i| self.entry(i)).collect()
    }

    fn entry_at(&self, i: usize) -> Entry {
        let l = &self.names[i];
        match &l.kind {
            Kind::Dir => Entry::Dir,
            Kind::File { size, modified, etag } => Entry::File(ObjectMeta {
                key: format!("{}{}", self.dir, self.name(i)).into(),
                size: *size,
                etag: etag.unpack(),
                last_modified: *modified,
            }),
        }
    }
}

impl Etag {
    fn pack(etag: Arc<str>) -> Etag {
        let b = etag.as_bytes();
        let hex = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        if b.len() == 34 && b[0] == b'"' && b[33] == b'"' {
            let mut out = [0u8; 16];
            let digits = &b[1..33];
            if digits
                .chunks(2)
                .zip(out.iter_mut())
                .all(|(pair, o)| match (hex(pair[0]), hex(pair[1])) {
                    (Some(h), Some(l)) => {
                        *o = h << 4 | l;
                        true
                    }
                    _ => false,
                })
            {
                return Etag::Md5(out);
            }
        }
        Etag::Other(etag)
    }

    fn unpack(&self) -> Arc<str> {
        match self {
            Etag::Md5(bytes) => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let mut s = String::with_capacity(34);
                s.push('"');
                for b in bytes {
                    s.push(HEX[usize::from(b >> 4)] as char);
                    s.push(HEX[usize::from(b & 15)] as char);
                }
                s.push('"');
                s.into()
            }
            Etag::Other(s) => s.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &str, name: &str, etag: &str) -> (Arc<str>, Entry) {
        (
            name.into(),
            Entry::File(ObjectMeta {
                key: format!("{dir}{name}").into(),
                size: name.len() as u64,
                etag: etag.into(),
                last_modified: SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(1_234_567_891),
            }),
        )
    }

    #[test]
    fn entries_come_back_byte_for_byte() {
        let entries: Entries = vec![
            file("d/", "a", "\"0123456789abcdef0123456789abcdef\""),
            ("b".into(), Entry::Dir),
            // Not packed: upper case, multipart, unquoted, too short.
            file("d/", "c", "\"0123456789ABCDEF0123456789abcdef\""),
            file("d/", "d", "\"0123456789abcdef0123456789abcdef-3\""),
            file("d/", "e", "0123456789abcdef0123456789abcdef"),
            file("d/", "f", "\"\""),
        ];
        let l = DirListing::new("d/", entries.clone(), Instant::now());
        assert_eq!(l.entries(), entries);
        assert_eq!(l.get("c"), Some(entries[2].1.clone()));
        assert_eq!(l.get("b"), Some(Entry::Dir));
        assert_eq!(l.get("zz"), None);
        assert_eq!(l.brief(1).1, Brief::Dir);
        assert!(matches!(l.brief(0).1, Brief::File { size: 1, .. }));
        assert!(matches!(l.names[0].kind, Kind::File { etag: Etag::Md5(_), .. }));
        assert!(matches!(
            l.names[2].kind,
            Kind::File {
                etag: Etag::Other(_),
                ..
            }
        ));
        let root = DirListing::new("", vec![file("", "top", "\"x\"")], Instant::now());
        assert_eq!(root.entries(), vec![file("", "top", "\"x\"")]);
    }

    proptest::proptest! {
        #[test]
        fn any_etag_comes_back_byte_for_byte(etag in "\\PC{0,40}", md5 in proptest::array::uniform16(0u8..)) {
            for e in [etag, format!("\"{}\"", md5.iter().map(|b| format!("{b:02x}")).collect::<String>())] {
                proptest::prop_assert_eq!(&*Etag::pack(e.as_str().into()).unpack(), e.as_str());
            }
        }
    }

    #[test]
    fn an_entry_is_small() {
        assert!(std::mem::size_of::<Listed>() <= 64, "{}", std::mem::size_of::<Listed>());
    }
}
