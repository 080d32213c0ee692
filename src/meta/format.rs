//! The on-disk format of persisted metadata: one self-describing, checksummed record per file.
//! A record is only trusted if its magic, version, kind, generation, store and key all match
//! what the reader asked for, the checksum of the whole file matches, and every entry it holds
//! is well formed (valid names, sorted, no trailing bytes). So a truncated, corrupted, foreign,
//! misplaced or outdated file can never be served as metadata.
//!
//! Record layout (little-endian):
//!
//! | offset | size | field                                                        |
//! |--------|------|--------------------------------------------------------------|
//! | 0      | 8    | magic `S3CFSMET`                                             |
//! | 8      | 4    | format version (`FORMAT_VERSION`)                            |
//! | 12     | 4    | kind: 1 lookup, 2 listing                                    |
//! | 16     | 8    | generation (see `persist`): must equal the current one       |
//! | 24     | 8    | fetched: wall-clock time of the S3 request, ns since the epoch |
//! | 32     | 2+n  | store (endpoint and bucket), length-prefixed                 |
//! | ..     | 2+n  | key: the full key (lookup) or directory prefix (listing)     |
//! | ..     | ..   | body (below)                                                 |
//! | end-4  | 4    | crc32c of every byte before it                               |
//!
//! An entry is a tag byte (0 absent, 1 directory, 2 file); a file adds its size (u64), its
//! `Last-Modified` (i64 seconds and u32 nanoseconds relative to the epoch) and its ETag (2+n).
//! A lookup body is one entry. A listing body is a count (u32) and that many
//! (name (2+n), entry) pairs in strictly ascending byte order of name, none absent.
//!
//! The generation file (`GEN_LEN` bytes): magic `S3CFSGEN`, version (u32), generation (u64),
//! crc32c of the 20 bytes before it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Entries, Entry, Lookup, invalid_name};
use crate::object::ObjectMeta;

pub const MAGIC: &[u8; 8] = b"S3CFSMET";
pub const GEN_MAGIC: &[u8; 8] = b"S3CFSGEN";

/// Bump on any change to the layouts above (and add a golden test for the new version).
pub const FORMAT_VERSION: u32 = 1;

/// Size of the generation file.
pub const GEN_LEN: usize = 24;

const KIND_LOOKUP: u32 = 1;
const KIND_LISTING: u32 = 2;
const TAG_ABSENT: u8 = 0;
const TAG_DIR: u8 = 1;
const TAG_FILE: u8 = 2;
/// Magic, version, kind, generation, fetched.
const FIXED: usize = 32;

/// What a record must say about itself to be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordId<'a> {
    pub store: &'a str,
    pub generation: u64,
    /// The full key of a lookup, or the directory prefix (empty or ending in `/`) of a listing.
    pub key: &'a str,
}

/// Why a record was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("file is truncated")]
    Truncated,
    #[error("not a metadata file (bad magic)")]
    BadMagic,
    #[error("unsupported format version {0}")]
    Version(u32),
    #[error("checksum mismatch")]
    Checksum,
    #[error("record describes something else ({0})")]
    Mismatch(&'static str),
    #[error("malformed record ({0})")]
    Malformed(&'static str),
    #[error("a string is too long for the format")]
    TooLong,
}

struct Writer(Vec<u8>);

impl Writer {
    fn header(kind: u32, id: &RecordId, fetched: SystemTime, body_hint: usize) -> Result<Writer, FormatError> {
        let mut w = Writer(Vec::with_capacity(
            FIXED + 8 + id.store.len() + id.key.len() + body_hint,
        ));
        w.0.extend_from_slice(MAGIC);
        w.u32(FORMAT_VERSION);
        w.u32(kind);
        w.u64(id.generation);
        w.u64(epoch_nanos(fetched));
        w.str(id.store)?;
        w.str(id.key)?;
        Ok(w)
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) -> Result<(), FormatError> {
        let n = u16::try_from(s.len()).map_err(|_| FormatError::TooLong)?;
        self.0.extend_from_slice(&n.to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
    fn entry(&mut self, e: Option<&Entry>) -> Result<(), FormatError> {
        match e {
            None => self.0.push(TAG_ABSENT),
            Some(Entry::Dir) => self.0.push(TAG_DIR),
            Some(Entry::File(m)) => {
                self.0.push(TAG_FILE);
                self.u64(m.size);
                let (secs, nanos) = split_time(m.last_modified);
                self.u64(secs as u64);
                self.u32(nanos);
                self.str(&m.etag)?;
            }
        }
        Ok(())
    }
    fn finish(mut self) -> Vec<u8> {
        let crc = crc32c::crc32c(&self.0);
        self.u32(crc);
        self.0
    }
}

/// Nanoseconds since the epoch; fetch times are always after it (earlier clamps to 0).
fn epoch_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// (seconds, nanoseconds) relative to the epoch; `Last-Modified` may in principle precede it.
fn split_time(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            if d.subsec_nanos() == 0 {
                (-(d.as_secs() as i64), 0)
            } else {
                (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    }
}

fn join_time(secs: i64, nanos: u32) -> Option<SystemTime> {
    if nanos >= 1_000_000_000 {
        return None;
    }
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs as u64, nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(Duration::from_nanos(nanos as u64))
    }
}

/// A lookup record: what `id.key` is (or that it does not exist), fetched at `fetched`.
pub fn encode_lookup(id: &RecordId, fetched: SystemTime, entry: &Lookup) -> Result<Vec<u8>, FormatError> {
    let mut w = Writer::header(KIND_LOOKUP, id, fetched, 64)?;
    w.entry(entry.as_ref())?;
    Ok(w.finish())
}

/// A listing record: every name in directory `id.key`, sorted, fetched at `fetched`.
pub fn encode_listing(
    id: &RecordId,
    fetched: SystemTime,
    entries: &[(Arc<str>, Entry)],
) -> Result<Vec<u8>, FormatError> {
    let mut w = Writer::header(KIND_LISTING, id, fetched, entries.len() * 64)?;
    w.u32(u32::try_from(entries.len()).map_err(|_| FormatError::TooLong)?);
    for (name, e) in entries {
        w.str(name)?;
        w.entry(Some(e))?;
    }
    Ok(w.finish())
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self.pos.checked_add(n).ok_or(FormatError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(FormatError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn bytes(&mut self) -> Result<&'a [u8], FormatError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<&'a str, FormatError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| FormatError::Malformed("not UTF-8"))
    }
    /// One entry; `key` is the full key a file entry describes.
    fn entry(&mut self, key: impl FnOnce() -> Arc<str>) -> Result<Lookup, FormatError> {
        Ok(match self.u8()? {
            TAG_ABSENT => None,
            TAG_DIR => Some(Entry::Dir),
            TAG_FILE => {
                let size = self.u64()?;
                let secs = self.u64()? as i64;
                let nanos = self.u32()?;
                let last_modified = join_time(secs, nanos).ok_or(FormatError::Malformed("time"))?;
                let etag = self.str()?.into();
                Some(Entry::File(ObjectMeta {
                    key: key(),
                    size,
                    etag,
                    last_modified,
                }))
            }
            _ => return Err(FormatError::Malformed("entry tag")),
        })
    }
}

/// Checks everything but the body; returns the fetch time and a reader at the body.
fn open<'a>(file: &'a [u8], kind: u32, want: &RecordId) -> Result<(SystemTime, Reader<'a>), FormatError> {
    let mut r = Reader { buf: file, pos: 0 };
    if r.take(8)? != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = r.u32()?;
    if version != FORMAT_VERSION {
        return Err(FormatError::Version(version));
    }
    if file.len() < FIXED + 4 + 4 {
        return Err(FormatError::Truncated);
    }
    let (data, crc) = file.split_at(file.len() - 4);
    if crc32c::crc32c(data) != u32::from_le_bytes(crc.try_into().unwrap()) {
        return Err(FormatError::Checksum);
    }
    let mut r = Reader { buf: data, pos: 12 };
    if r.u32()? != kind {
        return Err(FormatError::Mismatch("kind"));
    }
    let generation = r.u64()?;
    let fetched = UNIX_EPOCH + Duration::from_nanos(r.u64()?);
    if r.bytes()? != want.store.as_bytes() {
        return Err(FormatError::Mismatch("store"));
    }
    if r.bytes()? != want.key.as_bytes() {
        return Err(FormatError::Mismatch("key"));
    }
    if generation != want.generation {
        return Err(FormatError::Mismatch("generation"));
    }
    Ok((fetched, r))
}

fn done(r: &Reader) -> Result<(), FormatError> {
    if r.pos == r.buf.len() {
        Ok(())
    } else {
        Err(FormatError::Malformed("trailing bytes"))
    }
}

/// Validates a whole lookup record; returns when it was fetched and what it says.
pub fn decode_lookup(file: &[u8], want: &RecordId) -> Result<(SystemTime, Lookup), FormatError> {
    let (fetched, mut r) = open(file, KIND_LOOKUP, want)?;
    let entry = r.entry(|| want.key.into())?;
    done(&r)?;
    Ok((fetched, entry))
}

/// Validates a whole listing record; returns when it was fetched and its sorted entries.
pub fn decode_listing(file: &[u8], want: &RecordId) -> Result<(SystemTime, Entries), FormatError> {
    let (fetched, mut r) = open(file, KIND_LISTING, want)?;
    let count = r.u32()? as usize;
    // Each entry takes at least 3 bytes: never allocate more than the file can hold.
    let mut entries: Entries = Vec::with_capacity(count.min(file.len() / 3));
    for _ in 0..count {
        let name = r.str()?;
        if invalid_name(name).is_some() || name.contains('/') {
            return Err(FormatError::Malformed("name"));
        }
        if entries.last().is_some_and(|(prev, _)| **prev >= *name) {
            return Err(FormatError::Malformed("names out of order"));
        }
        let entry = r
            .entry(|| format!("{}{name}", want.key).into())?
            .ok_or(FormatError::Malformed("absent entry in a listing"))?;
        entries.push((name.into(), entry));
    }
    done(&r)?;
    Ok((fetched, entries))
}

pub fn encode_generation(generation: u64) -> [u8; GEN_LEN] {
    let mut b = [0u8; GEN_LEN];
    b[..8].copy_from_slice(GEN_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[12..20].copy_from_slice(&generation.to_le_bytes());
    let crc = crc32c::crc32c(&b[..20]);
    b[20..].copy_from_slice(&crc.to_le_bytes());
    b
}

pub fn decode_generation(file: &[u8]) -> Result<u64, FormatError> {
    if file.len() < GEN_LEN {
        return Err(FormatError::Truncated);
    }
    if file.len() > GEN_LEN {
        return Err(FormatError::Malformed("trailing bytes"));
    }
    if &file[..8] != GEN_MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = u32::from_le_bytes(file[8..12].try_into().unwrap());
    if version != FORMAT_VERSION {
        return Err(FormatError::Version(version));
    }
    if crc32c::crc32c(&file[..20]) != u32::from_le_bytes(file[20..].try_into().unwrap()) {
        return Err(FormatError::Checksum);
    }
    Ok(u64::from_le_bytes(file[12..20].try_into().unwrap()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STORE: &str = "s3|bucket";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn file(key: &str, size: u64, etag: &str, mtime: SystemTime) -> Entry {
        Entry::File(ObjectMeta {
            key: key.into(),
            size,
            etag: etag.into(),
            last_modified: mtime,
        })
    }

    fn lookup_id() -> RecordId<'static> {
        RecordId {
            store: STORE,
            generation: 7,
            key: "jars/a.jar",
        }
    }

    fn listing_id() -> RecordId<'static> {
        RecordId {
            store: STORE,
            generation: 7,
            key: "jars/",
        }
    }

    fn listing() -> Vec<(Arc<str>, Entry)> {
        vec![
            ("a.jar".into(), file("jars/a.jar", 5, "\"e\"", at(1_700_000_000))),
            ("lib".into(), Entry::Dir),
        ]
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The exact bytes of v1 records. If this test fails, the on-disk format changed: bump
    /// FORMAT_VERSION (old records are then ignored, not misread) and write a new golden test.
    #[test]
    fn golden_bytes_v1() {
        assert_eq!(FORMAT_VERSION, 1);
        let head = |kind: &str, key: &str| {
            format!(
                "53334346534d4554\
                 01000000\
                 {kind}\
                 0700000000000000\
                 00e40b5402000000\
                 0900\
                 73337c6275636b6574\
                 {key}"
            )
        };
        let fetched = UNIX_EPOCH + Duration::from_secs(10);
        let f = encode_lookup(
            &lookup_id(),
            fetched,
            &Some(file("jars/a.jar", 5, "\"e\"", at(1_700_000_000))),
        )
        .unwrap();
        let want = head("01000000", "0a006a6172732f612e6a6172")
            + "02\
               0500000000000000\
               00f1536500000000\
               00000000\
               0300226522\
               22473b02";
        assert_eq!(hex(&f), want);
        let neg = encode_lookup(&lookup_id(), fetched, &None).unwrap();
        assert_eq!(
            hex(&neg),
            head("01000000", "0a006a6172732f612e6a6172") + "00" + "0366dac2"
        );
        let l = encode_listing(&listing_id(), fetched, &listing()).unwrap();
        let want = head("02000000", "05006a6172732f")
            + "02000000\
               0500612e6a6172\
               02\
               0500000000000000\
               00f1536500000000\
               00000000\
               0300226522\
               03006c6962\
               01\
               da16a7ff";
        assert_eq!(hex(&l), want);
        assert_eq!(
            hex(&encode_generation(0x0102030405060708)),
            "533343465347454e01000000080706050403020101688dd3"
        );
    }

    #[test]
    fn round_trips() {
        let fetched = SystemTime::now();
        let entries = [
            None,
            Some(Entry::Dir),
            Some(file("jars/a.jar", u64::MAX, "\"x-1\"", at(0))),
            Some(file("jars/a.jar", 0, "", UNIX_EPOCH - Duration::new(5, 3))),
            Some(file("jars/a.jar", 1 << 40, "\"abc\"", SystemTime::now())),
        ];
        for e in entries {
            let f = encode_lookup(&lookup_id(), fetched, &e).unwrap();
            assert_eq!(decode_lookup(&f, &lookup_id()).unwrap(), (fetched, e));
        }
        let l = encode_listing(&listing_id(), fetched, &listing()).unwrap();
        assert_eq!(decode_listing(&l, &listing_id()).unwrap(), (fetched, listing()));
        let empty = encode_listing(&listing_id(), fetched, &[]).unwrap();
        assert_eq!(decode_listing(&empty, &listing_id()).unwrap(), (fetched, vec![]));
        assert_eq!(decode_generation(&encode_generation(42)), Ok(42));
    }

    #[test]
    fn every_mismatch_is_rejected() {
        let f = encode_lookup(&lookup_id(), at(5), &Some(Entry::Dir)).unwrap();
        let other = |m: fn(&mut RecordId<'static>)| {
            let mut w = lookup_id();
            m(&mut w);
            decode_lookup(&f, &w).unwrap_err()
        };
        assert_eq!(other(|w| w.key = "jars/b.jar"), FormatError::Mismatch("key"));
        assert_eq!(other(|w| w.store = "s3|other"), FormatError::Mismatch("store"));
        assert_eq!(other(|w| w.generation = 8), FormatError::Mismatch("generation"));
        assert_eq!(
            decode_listing(&f, &lookup_id()).unwrap_err(),
            FormatError::Mismatch("kind")
        );
        assert_eq!(
            decode_lookup(&f[..f.len() - 1], &lookup_id()).unwrap_err(),
            FormatError::Checksum
        );
        assert_eq!(
            decode_lookup(&f[..10], &lookup_id()).unwrap_err(),
            FormatError::Truncated
        );
        assert_eq!(
            decode_lookup(b"junk", &lookup_id()).unwrap_err(),
            FormatError::Truncated
        );
        assert_eq!(
            decode_lookup(&[b'x'; 100], &lookup_id()).unwrap_err(),
            FormatError::BadMagic
        );
        let mut v2 = f.clone();
        v2[8] = 2;
        assert_eq!(decode_lookup(&v2, &lookup_id()).unwrap_err(), FormatError::Version(2));
        // A block file of the disk cache is foreign here.
        assert_eq!(
            decode_lookup(b"S3CFSBLK\x01\x00\x00\x00", &lookup_id()).unwrap_err(),
            FormatError::BadMagic
        );
        assert_eq!(decode_generation(&f), Err(FormatError::Malformed("trailing bytes")));
        let mut g = encode_generation(1);
        g[13] ^= 1;
        assert_eq!(decode_generation(&g), Err(FormatError::Checksum));
    }

    /// Rebuilds the checksum so that the structural checks (not the CRC) must catch a bad body.
    fn resealed(mut f: Vec<u8>) -> Vec<u8> {
        f.truncate(f.len() - 4);
        let crc = crc32c::crc32c(&f);
        f.extend_from_slice(&crc.to_le_bytes());
        f
    }

    #[test]
    fn malformed_listings_are_rejected_even_with_a_valid_checksum() {
        let fetched = at(1);
        let unsorted: Vec<(Arc<str>, Entry)> = listing().into_iter().rev().collect();
        let f = resealed(encode_listing(&listing_id(), fetched, &unsorted).unwrap());
        assert_eq!(
            decode_listing(&f, &listing_id()).unwrap_err(),
            FormatError::Malformed("names out of order")
        );
        for bad in ["..", "a/b", ""] {
            let f = encode_listing(&listing_id(), fetched, &[(bad.into(), Entry::Dir)]).unwrap();
            assert_eq!(
                decode_listing(&f, &listing_id()).unwrap_err(),
                FormatError::Malformed("name")
            );
        }
        let mut f = encode_listing(&listing_id(), fetched, &listing()).unwrap();
        f.insert(f.len() - 4, 0);
        assert_eq!(
            decode_listing(&resealed(f), &listing_id()).unwrap_err(),
            FormatError::Malformed("trailing bytes")
        );
        let mut f = encode_listing(&listing_id(), fetched, &listing()).unwrap();
        let n = f.len();
        f[n - 5] = TAG_ABSENT; // the last entry ("lib", a directory) becomes "absent"
        assert_eq!(
            decode_listing(&resealed(f), &listing_id()).unwrap_err(),
            FormatError::Malformed("absent entry in a listing")
        );
    }

    #[test]
    fn too_long_strings_are_refused_on_encode() {
        let long = "k".repeat(70_000);
        let id = RecordId {
            key: &long,
            ..lookup_id()
        };
        assert_eq!(encode_lookup(&id, at(1), &None).unwrap_err(), FormatError::TooLong);
    }

    proptest! {
        /// Arbitrary bytes never panic and never validate.
        #[test]
        fn arbitrary_bytes_never_validate(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            prop_assert!(decode_lookup(&bytes, &lookup_id()).is_err());
            prop_assert!(decode_listing(&bytes, &listing_id()).is_err());
            prop_assert!(decode_generation(&bytes).is_err());
        }

        /// Arbitrary bodies behind a valid header and checksum never panic.
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            for kind in [KIND_LOOKUP, KIND_LISTING] {
                let id = if kind == KIND_LOOKUP { lookup_id() } else { listing_id() };
                let mut w = Writer::header(kind, &id, at(1), 0).unwrap();
                w.0.extend_from_slice(&body);
                let f = w.finish();
                let _ = decode_lookup(&f, &id);
                let _ = decode_listing(&f, &id);
            }
        }

        /// Any single corrupted bit of a valid record is detected.
        #[test]
        fn any_flipped_bit_is_detected(pos in 0usize..4096, bit in 0u8..8, listing_kind: bool) {
            let mut f = if listing_kind {
                encode_listing(&listing_id(), at(9), &listing()).unwrap()
            } else {
                encode_lookup(&lookup_id(), at(9), &Some(file("jars/a.jar", 5, "\"e\"", at(3)))).unwrap()
            };
            let pos = pos % f.len();
            f[pos] ^= 1 << bit;
            prop_assert!(decode_lookup(&f, &lookup_id()).is_err());
            prop_assert!(decode_listing(&f, &listing_id()).is_err());
        }

        /// Any truncation of a valid record is detected.
        #[test]
        fn any_truncation_is_detected(cut in 0usize..4096) {
            let f = encode_listing(&listing_id(), at(9), &listing()).unwrap();
            let cut = cut % f.len();
            prop_assert!(decode_listing(&f[..cut], &listing_id()).is_err());
        }

        /// Any flipped bit of the generation file is detected.
        #[test]
        fn generation_bit_flips_are_detected(g: u64, pos in 0usize..GEN_LEN, bit in 0u8..8) {
            let mut f = encode_generation(g);
            f[pos] ^= 1 << bit;
            prop_assert!(decode_generation(&f).is_err());
        }
    }
}
