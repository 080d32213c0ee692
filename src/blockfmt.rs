//! The format of one cached block, on the node's disk and as an object in the shared tier: a
//! self-describing, checksummed header followed by the block's bytes. A block is only trusted if every field matches what the reader asked for
//! and both checksums match, so a truncated, corrupted, foreign or misplaced file can never be
//! served as data.
//!
//! Layout (little-endian):
//!
//! | offset | size | field                                              |
//! |--------|------|----------------------------------------------------|
//! | 0      | 8    | magic `S3CFSBLK`                                   |
//! | 8      | 4    | format version (`FORMAT_VERSION`)                  |
//! | 12     | 4    | header length H, checksum included                 |
//! | 16     | 8    | block index                                        |
//! | 24     | 8    | block size of the cache                            |
//! | 32     | 8    | data length                                        |
//! | 40     | 4    | crc32c of the data                                 |
//! | 44     | 2+n  | store (endpoint and bucket), length-prefixed       |
//! | ..     | 2+n  | key, length-prefixed                               |
//! | ..     | 2+n  | ETag, length-prefixed                              |
//! | H-4    | 4    | crc32c of bytes 0..H-4                             |
//! | H      | len  | data                                               |

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::object::{BlockId, SourceId};

pub const MAGIC: &[u8; 8] = b"S3CFSBLK";

/// Bump on any change to the layout above (and add a golden test for the new version).
pub const FORMAT_VERSION: u32 = 1;

/// The identity of an object version's blocks, as file and object names: 32 hex digits, and the
/// same as a number (for lock stripes and shards). Covers the source, key, ETag and block size,
/// each length-prefixed, so no two different tuples share a name by concatenation.
pub fn object_hash(source: &SourceId, key: &str, etag: &str, block_size: u64) -> (String, u64) {
    let mut h = Sha256::new();
    for part in [source.as_str().as_bytes(), key.as_bytes(), etag.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(block_size.to_le_bytes());
    let digest = h.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    (hex, u64::from_le_bytes(digest[..8].try_into().unwrap()))
}

/// Why a block file was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("file is truncated")]
    Truncated,
    #[error("not a block file (bad magic)")]
    BadMagic,
    #[error("unsupported format version {0}")]
    Version(u32),
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("header describes another block ({0})")]
    Mismatch(&'static str),
    #[error("data checksum mismatch")]
    DataChecksum,
    #[error("a string is too long for the header")]
    TooLong,
}

fn header_len(id: &BlockId) -> usize {
    44 + 2 + id.source.as_str().len() + 2 + id.key.len() + 2 + id.etag.len() + 4
}

/// The header for `data` stored as block `id`.
pub fn encode_header(id: &BlockId, data: &[u8]) -> Result<Vec<u8>, FormatError> {
    let len = header_len(id);
    let mut h = Vec::with_capacity(len);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    h.extend_from_slice(&(len as u32).to_le_bytes());
    h.extend_from_slice(&id.index.to_le_bytes());
    h.extend_from_slice(&id.block_size.to_le_bytes());
    h.extend_from_slice(&(data.len() as u64).to_le_bytes());
    h.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    for s in [id.source.as_str(), &id.key, &id.etag] {
        let n = u16::try_from(s.len()).map_err(|_| FormatError::TooLong)?;
        h.extend_from_slice(&n.to_le_bytes());
        h.extend_from_slice(s.as_bytes());
    }
    let crc = crc32c::crc32c(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(h.len(), len);
    Ok(h)
}

/// Expected total file size of block `id` holding `data_len` bytes.
pub fn file_len(id: &BlockId, data_len: u64) -> u64 {
    header_len(id) as u64 + data_len
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
    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn str(&mut self) -> Result<&'a [u8], FormatError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
}

/// Validates a whole block file against what the caller expects; returns the data.
pub fn decode(file: Bytes, want: &BlockId, want_len: u64) -> Result<Bytes, FormatError> {
    let mut r = Reader { buf: &file, pos: 0 };
    if r.take(8)? != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = r.u32()?;
    if version != FORMAT_VERSION {
        return Err(FormatError::Version(version));
    }
    let hlen = r.u32()? as usize;
    if hlen < 48 || hlen > file.len() {
        return Err(FormatError::Truncated);
    }
    let stored_crc = u32::from_le_bytes(file[hlen - 4..hlen].try_into().unwrap());
    if crc32c::crc32c(&file[..hlen - 4]) != stored_crc {
        return Err(FormatError::HeaderChecksum);
    }
    let index = r.u64()?;
    let block_size = r.u64()?;
    let data_len = r.u64()?;
    let data_crc = r.u32()?;
    let (store, key, etag) = (r.str()?, r.str()?, r.str()?);
    if r.pos != hlen - 4 {
        return Err(FormatError::Truncated);
    }
    let checks: [(bool, &'static str); 6] = [
        (store == want.source.as_str().as_bytes(), "store"),
        (key == want.key.as_bytes(), "key"),
        (etag == want.etag.as_bytes(), "etag"),
        (index == want.index, "index"),
        (block_size == want.block_size, "block size"),
        (data_len == want_len, "length"),
    ];
    if let Some((_, what)) = checks.iter().find(|(ok, _)| !ok) {
        return Err(FormatError::Mismatch(what));
    }
    if (file.len() - hlen) as u64 != data_len {
        return Err(FormatError::Truncated);
    }
    let data = file.slice(hlen..);
    if crc32c::crc32c(&data) != data_crc {
        return Err(FormatError::DataChecksum);
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::SourceId;
    use proptest::prelude::*;

    fn id() -> BlockId {
        BlockId {
            source: SourceId::new(Some("s3"), "bucket", ""),
            key: "jars/a.jar".into(),
            etag: "\"abc\"".into(),
            index: 3,
            block_size: 1 << 20,
        }
    }

    fn file(id: &BlockId, data: &[u8]) -> Bytes {
        let mut f = encode_header(id, data).unwrap();
        f.extend_from_slice(data);
        Bytes::from(f)
    }

    /// The exact bytes of a v1 header. If this test fails, the on-disk format changed: bump
    /// FORMAT_VERSION (old caches are then ignored, not misread) and write a new golden test.
    #[test]
    fn golden_bytes_v1() {
        assert_eq!(FORMAT_VERSION, 1);
        let h = encode_header(&id(), b"hello").unwrap();
        let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5333434653424c4b\
             01000000\
             4e000000\
             0300000000000000\
             0000100000000000\
             0500000000000000\
             4cbb719a\
             0900\
             73337c6275636b6574\
             0a00\
             6a6172732f612e6a6172\
             0500\
             2261626322\
             bbf70e39"
        );
    }

    #[test]
    fn round_trip_and_every_mismatch_is_rejected() {
        let data = b"0123456789".repeat(100);
        let f = file(&id(), &data);
        assert_eq!(&decode(f.clone(), &id(), 1000).unwrap()[..], &data[..]);
        assert_eq!(file_len(&id(), 1000), f.len() as u64);
        let other = |m: fn(&mut BlockId)| {
            let mut w = id();
            m(&mut w);
            decode(f.clone(), &w, 1000).unwrap_err()
        };
        assert_eq!(other(|w| w.key = "jars/b.jar".into()), FormatError::Mismatch("key"));
        assert_eq!(other(|w| w.etag = "\"new\"".into()), FormatError::Mismatch("etag"));
        assert_eq!(
            other(|w| w.source = SourceId::new(Some("s3"), "other", "")),
            FormatError::Mismatch("store")
        );
        assert_eq!(other(|w| w.index = 4), FormatError::Mismatch("index"));
        assert_eq!(other(|w| w.block_size = 8 << 20), FormatError::Mismatch("block size"));
        assert_eq!(
            decode(f.clone(), &id(), 999).unwrap_err(),
            FormatError::Mismatch("length")
        );
        assert_eq!(
            decode(f.slice(..f.len() - 1), &id(), 1000).unwrap_err(),
            FormatError::Truncated
        );
        let mut flipped = f.to_vec();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            decode(flipped.into(), &id(), 1000).unwrap_err(),
            FormatError::DataChecksum
        );
        let mut flipped = f.to_vec();
        flipped[20] ^= 1;
        assert_eq!(
            decode(flipped.into(), &id(), 1000).unwrap_err(),
            FormatError::HeaderChecksum
        );
        assert_eq!(
            decode(Bytes::from_static(b"junk"), &id(), 1000).unwrap_err(),
            FormatError::Truncated
        );
        assert_eq!(
            decode(Bytes::from(vec![b'x'; 2000]), &id(), 1000).unwrap_err(),
            FormatError::BadMagic
        );
    }

    proptest! {
        /// Arbitrary bytes never panic and never validate as data.
        #[test]
        fn arbitrary_bytes_never_validate(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            prop_assert!(decode(Bytes::from(bytes), &id(), 10).is_err());
        }

        /// Any single corrupted byte of a valid file is detected.
        #[test]
        fn any_flipped_byte_is_detected(pos in 0usize..1071, bit in 0u8..8) {
            let data = b"0123456789".repeat(100);
            let mut f = file(&id(), &data).to_vec();
            let pos = pos % f.len();
            f[pos] ^= 1 << bit;
            prop_assert!(decode(Bytes::from(f), &id(), 1000).is_err());
        }
    }
}
