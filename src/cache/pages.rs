//! Page files: the 16 KiB pages (`object::PAGE_SIZE`) that random reads fetched, kept on disk for
//! a block that has no block file. One file per block, `blocks/<shard>/<object>.<n>.p`, next to
//! where the block file would be.
//!
//! Layout (little-endian):
//!
//! | offset | size | field                                                    |
//! |--------|------|----------------------------------------------------------|
//! | 0      | 8    | magic `S3CFSPGS`                                         |
//! | 8      | 4    | format version (`PAGES_VERSION`)                         |
//! | 12     | 4    | header length T (table and checksum included)           |
//! | 16     | 8    | block index                                              |
//! | 24     | 8    | block size of the cache                                  |
//! | 32     | 8    | block length (shorter than the block size at the end)   |
//! | 40     | 8    | number of pages P = ceil(block length / PAGE_SIZE)      |
//! | 48     | 2+n  | store, key, ETag, each length-prefixed                   |
//! | ..     | 8×P  | page table: per page, u32 present (0 or 1), u32 crc32c  |
//! | T-4    | 4    | crc32c of bytes 0..T-4                                   |
//! | D      | ..   | data: page i at D + i × PAGE_SIZE, D = T rounded up to 4 KiB; absent pages are holes |
//!
//! A page is served only if the header describes the block asked for, its checksum matches,
//! the table says the page is present and the page's own crc32c matches. A merge reads the
//! current file (under the block's stripe lock), adds the new pages and writes the whole file
//! again through `tmp/` and a rename: a crash leaves the old file or the new one. The ledger
//! counts the file's allocated bytes (holes take none).

use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::coord::Cell;
use super::{DIR_BYTES, DiskCache, FormatError, Location, alloc_size, touch};
use crate::cachedir::{self, Area};
use crate::object::{BlockId, PAGE_SIZE};

pub const PAGES_MAGIC: &[u8; 8] = b"S3CFSPGS";
/// Bump on any change to the layout above.
pub const PAGES_VERSION: u32 = 1;
const FIXED: usize = 48;

/// The page file of a block file's path.
pub(super) fn page_path(block_path: &Path) -> PathBuf {
    let mut p = block_path.as_os_str().to_owned();
    p.push(".p");
    PathBuf::from(p)
}

/// Whether `name` is a page file's name (`<32 hex>.<index>.p`).
pub(super) fn is_page_name(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .and_then(|n| n.strip_suffix(".p"))
        .is_some_and(|b| super::evict::is_block_name(std::ffi::OsStr::new(b)))
}

fn pages_of(block_len: u64) -> u64 {
    block_len.div_ceil(PAGE_SIZE)
}

/// The length of page `i` of a block of `block_len` bytes.
fn page_len(block_len: u64, i: u64) -> u64 {
    (block_len - i * PAGE_SIZE).min(PAGE_SIZE)
}

fn header_len(id: &BlockId, block_len: u64) -> usize {
    FIXED + 6 + id.source.as_str().len() + id.key.len() + id.etag.len() + 8 * pages_of(block_len) as usize + 4
}

/// Where the data area starts for a header of `t` bytes.
fn data_offset(t: usize) -> u64 {
    alloc_size(t as u64)
}

/// The header (with its table) of a page file of block `id`; `table[i]` is the crc32c of
/// page i if present.
pub fn encode(id: &BlockId, block_len: u64, table: &[Option<u32>]) -> Result<Vec<u8>, FormatError> {
    let len = header_len(id, block_len);
    debug_assert_eq!(table.len() as u64, pages_of(block_len));
    let mut h = Vec::with_capacity(len);
    h.extend_from_slice(PAGES_MAGIC);
    h.extend_from_slice(&PAGES_VERSION.to_le_bytes());
    h.extend_from_slice(&(len as u32).to_le_bytes());
    h.extend_from_slice(&id.index.to_le_bytes());
    h.extend_from_slice(&id.block_size.to_le_bytes());
    h.extend_from_slice(&block_len.to_le_bytes());
    h.extend_from_slice(&(table.len() as u64).to_le_bytes());
    for s in [id.source.as_str(), &id.key, &id.etag] {
        let n = u16::try_from(s.len()).map_err(|_| FormatError::TooLong)?;
        h.extend_from_slice(&n.to_le_bytes());
        h.extend_from_slice(s.as_bytes());
    }
    for e in table {
        h.extend_from_slice(&(e.is_some() as u32).to_le_bytes());
        h.extend_from_slice(&e.unwrap_or(0).to_le_bytes());
    }
    let crc = crc32c::crc32c(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(h.len(), len);
    Ok(h)
}

/// Reads and validates the header of a page file against block `id` of `block_len` bytes:
/// the page table and where the data starts.
pub fn read_header(file: &std::fs::File, id: &BlockId, block_len: u64) -> Result<(Vec<Option<u32>>, u64), FormatError> {
    let want = header_len(id, block_len);
    let mut buf = vec![0u8; want];
    let got = super::read_full_at(file, &mut buf, 0).map_err(|_| FormatError::Truncated)?;
    if got < FIXED {
        return Err(FormatError::Truncated);
    }
    if &buf[..8] != PAGES_MAGIC {
        return Err(FormatError::BadMagic);
    }
    let u32_at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().unwrap());
    let version = u32_at(8);
    if version != PAGES_VERSION {
        return Err(FormatError::Version(version));
    }
    // A header of another length describes another block (strings, table) or is damaged.
    if u32_at(12) as usize != want {
        return Err(FormatError::Mismatch("header length"));
    }
    if got < want {
        return Err(FormatError::Truncated);
    }
    if crc32c::crc32c(&buf[..want - 4]) != u32_at(want - 4) {
        return Err(FormatError::HeaderChecksum);
    }
    let mut pos = FIXED;
    let mut strings = [&buf[..0]; 3];
    for s in &mut strings {
        let n = u16::from_le_bytes(buf[pos..pos + 2].try_into().unwrap()) as usize;
        *s = buf.get(pos + 2..pos + 2 + n).ok_or(FormatError::Truncated)?;
        pos += 2 + n;
    }
    let checks: [(bool, &'static str); 7] = [
        (strings[0] == id.source.as_str().as_bytes(), "store"),
        (strings[1] == id.key.as_bytes(), "key"),
        (strings[2] == id.etag.as_bytes(), "etag"),
        (u64_at(16) == id.index, "index"),
        (u64_at(24) == id.block_size, "block size"),
        (u64_at(32) == block_len, "length"),
        (u64_at(40) == pages_of(block_len), "pages"),
    ];
    if let Some((_, what)) = checks.iter().find(|(ok, _)| !ok) {
        return Err(FormatError::Mismatch(what));
    }
    let mut table = Vec::with_capacity(pages_of(block_len) as usize);
    for _ in 0..pages_of(block_len) {
        let present = u32_at(pos);
        let crc = u32_at(pos + 4);
        table.push(match present {
            0 => None,
            1 => Some(crc),
            _ => return Err(FormatError::Mismatch("page table")),
        });
        pos += 8;
    }
    if pos != want - 4 {
        return Err(FormatError::Truncated);
    }
    Ok((table, data_offset(want)))
}

/// Reads page `i` (of `len` bytes) at `data`, checking it against `crc`.
fn read_page_at(file: &std::fs::File, data: u64, i: u64, len: u64, crc: u32) -> Result<Bytes, FormatError> {
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, data + i * PAGE_SIZE)
        .map_err(|_| FormatError::Truncated)?;
    if crc32c::crc32c(&buf) != crc {
        return Err(FormatError::DataChecksum);
    }
    Ok(Bytes::from(buf))
}

impl DiskCache {
    /// Page `index` (of `len` bytes) of the block at `loc`, from its page file; `None` when
    /// absent. A file that does not validate is counted, removed and never served.
    pub(super) fn read_page(&self, loc: &Location, index: u64, len: u64) -> Option<Bytes> {
        if index >= pages_of(loc.len) || page_len(loc.len, index) != len {
            return None;
        }
        let path = page_path(&loc.path);
        let super::Opened::File(file) = self.open_own(&path, true) else {
            return None;
        };
        let read = read_header(&file, &loc.id, loc.len).and_then(|(table, data)| match table[index as usize] {
            Some(crc) => read_page_at(&file, data, index, len, crc).map(Some),
            None => Ok(None),
        });
        match read {
            Ok(Some(b)) => {
                touch(&file);
                self.stats.hits.inc();
                self.stats.hit_bytes.inc_by(len);
                Some(b)
            }
            Ok(None) => None,
            Err(e) => {
                self.reject(&path, &format!("page file: {e}"));
                None
            }
        }
    }

    /// Adds `pages` (index, bytes) of the block at `loc` to its page file (blocking; best
    /// effort like every write). Under the block's stripe lock: nothing is written if the
    /// block file exists (it supersedes pages).
    pub(super) fn merge_pages(&self, loc: &Location, pages: &[(u64, Bytes)]) {
        let _stripe = match self.locks.stripe(loc.stripe, self.cfg.lock_wait) {
            Ok(g) => g,
            Err(e) => {
                self.lock_failed("wait for another write of a block's pages", e);
                return;
            }
        };
        // Cached whole already: its pages are not kept apart.
        if self.dir.metadata(&loc.path).is_ok() || self.object_file_holds(loc) {
            return;
        }
        let path = page_path(&loc.path);
        let n = pages_of(loc.len) as usize;
        let mut table: Vec<Option<u32>> = vec![None; n];
        let mut data: Vec<Option<Bytes>> = vec![None; n];
        // What the current file holds (pages that do not verify are dropped).
        if let Ok(file) = self.dir.open_read(&path, true)
            && file.metadata().is_ok_and(|m| cachedir::is_own_file(&m))
            && let Ok((old, at)) = read_header(&file, &loc.id, loc.len)
        {
            for (i, crc) in old.iter().enumerate() {
                if let Some(crc) = *crc
                    && let Ok(b) = read_page_at(&file, at, i as u64, page_len(loc.len, i as u64), crc)
                {
                    table[i] = Some(crc);
                    data[i] = Some(b);
                }
            }
        }
        let mut added = 0;
        for (i, b) in pages {
            let i = *i as usize;
            if i < n && data[i].is_none() && b.len() as u64 == page_len(loc.len, i as u64) {
                table[i] = Some(crc32c::crc32c(b));
                data[i] = Some(b.clone());
                added += b.len() as u64;
            }
        }
        if added == 0 {
            return;
        }
        let Ok(header) = super::pages::encode(&loc.id, loc.len, &table) else {
            return;
        };
        let at = data_offset(header.len());
        let new_shard = !self.real_parents(&path);
        let size = at
            + data.iter().flatten().map(|b| alloc_size(b.len() as u64)).sum::<u64>()
            + if new_shard { DIR_BYTES } else { 0 };
        let Some(reservation) = self.reserve(size) else {
            self.stats.skipped_full.inc();
            return;
        };
        let Some((cell, _)) = self.cell_of(&path) else {
            return;
        };
        let result = (|| -> io::Result<bool> {
            let mut tmp = self.dir.temp(&self.dir.area(Area::Tmp), "tmp", None)?;
            tmp.file().write_all_at(&header, 0)?;
            for (i, b) in data.iter().enumerate() {
                if let Some(b) = b {
                    tmp.file().write_all_at(b, at + i as u64 * PAGE_SIZE)?;
                }
            }
            let bytes = tmp.file().metadata()?.blocks() * 512;
            let Some(_g) = self.lock_shard_to_store(cell, "pages")? else {
                return Ok(false);
            };
            let placed = tmp.place(&path, Some(&self.dir.area(Area::Blocks)))?;
            let delta = (bytes + placed.dirs_created as u64 * DIR_BYTES) as i64 - placed.replaced.unwrap_or(0) as i64;
            reservation.commit(Cell::Shard(cell), delta);
            Ok(true)
        })();
        match result {
            Ok(true) => {
                self.stats.written_bytes.inc_by(added);
            }
            Ok(false) => {}
            Err(e) => {
                self.stats.write_failures.inc();
                self.warn(format_args!(
                    "cannot write pages to the disk cache ({e}); serving from S3 without caching"
                ));
            }
        }
    }

    /// Removes the page file of the block at `loc` (a block file now holds every page).
    pub(super) fn remove_pages(&self, loc: &Location) {
        let path = page_path(&loc.path);
        if self.dir.metadata(&path).is_ok() {
            self.remove_accounted(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::SourceId;

    /// The exact bytes of a v1 page file header. If this test fails, the format changed: bump
    /// PAGES_VERSION (old page files are then refetched, never misread).
    #[test]
    fn golden_bytes_v1() {
        let id = BlockId {
            source: SourceId::new(Some("s3"), "b", ""),
            key: "k".into(),
            etag: "\"e\"".into(),
            index: 2,
            block_size: 1 << 20,
        };
        let h = encode(&id, 2 * PAGE_SIZE, &[None, Some(0x0102_0304)]).unwrap();
        let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "533343465350475301000000520000000200000000000000000010000000000000800000000000000200000000000000040073337c6201006b030022652200000000000000000100000004030201ed50f87f"
        );
    }
}
