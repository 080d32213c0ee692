//! Block buffers: the memory a block lives in, from the S3 body or the disk cache to the FUSE
//! reply, reused instead of mapped afresh for every block.
//!
//! A buffer of at least [`MIN_POOLED`] bytes is an anonymous mapping of its own, never part of
//! malloc's heaps (so freed blocks never stay behind in fragmented heaps, and malloc's mmap
//! threshold, set in `main.rs`, can be high enough for the HTTP client's read buffers). Mapping
//! a new one costs a page fault per page, the kernel zeroing it, and an `munmap` when it is
//! dropped: on a cold sequential read that was about a third of the daemon's CPU
//! (docs/BENCHMARKS.md, "Cold reads: buffers and request concurrency"). So freed buffers go to
//! a pool and are handed out again, still mapped. Smaller buffers are plain `Vec`s.
//!
//! Invariants:
//! - **Bounded**: the pool keeps at most [`max_free`] bytes of free buffers (at most
//!   [`MAX_FREE_BYTES`], lowered by [`limit_free`] to a share of the memory cache); a buffer
//!   dropped when the pool is full is unmapped.
//! - **No stale bytes**: only bytes written into a buffer since it was handed out are ever
//!   readable through it ([`BlockBuf::as_slice`] ends at what was written; [`BlockBuf::zeroed`]
//!   zeroes a reused buffer).
//! - A buffer's memory is freed exactly once: by the pool's owner or by the last `Bytes`.

use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

/// Buffers of at least this many bytes are mappings of their own, and pooled.
pub const MIN_POOLED: usize = 256 << 10;

/// Free buffers kept at most, in bytes.
pub const MAX_FREE_BYTES: usize = 16 << 20;

static LIMIT: AtomicUsize = AtomicUsize::new(MAX_FREE_BYTES);

/// Lowers the pool's bound to `bytes` (never raises it above [`MAX_FREE_BYTES`], never lowers
/// it below what an earlier call allowed: several mounts in one process share the pool).
pub fn limit_free(bytes: usize) {
    static SET: Mutex<Option<usize>> = Mutex::new(None);
    let mut set = SET.lock().unwrap_or_else(|p| p.into_inner());
    let v = set.map_or(bytes, |old| old.max(bytes)).min(MAX_FREE_BYTES);
    *set = Some(v);
    LIMIT.store(v, Ordering::Relaxed);
}

/// The pool's bound now, in bytes.
pub fn max_free() -> usize {
    LIMIT.load(Ordering::Relaxed)
}

/// One anonymous mapping.
struct Mapping {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: the mapping is plain memory owned by this value alone.
unsafe impl Send for Mapping {}
// SAFETY: shared access only reads it.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(cap: usize) -> Mapping {
        // SAFETY: a new private anonymous mapping; nothing else refers to it.
        let p = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                cap,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
            )
        };
        match p.ok().and_then(|p| NonNull::new(p.cast::<u8>())) {
            Some(ptr) => Mapping { ptr, cap },
            None => std::alloc::handle_alloc_error(std::alloc::Layout::array::<u8>(cap).unwrap()),
        }
    }

    fn slice(&self, len: usize) -> &[u8] {
        // SAFETY: `len <= cap`, checked by every caller; the mapping is readable.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), len) }
    }

    fn slice_mut(&mut self, len: usize) -> &mut [u8] {
        // SAFETY: as `slice`, and `&mut self` is the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once, with no reference left to it.
        unsafe {
            let _ = rustix::mm::munmap(self.ptr.as_ptr().cast(), self.cap);
        }
    }
}

struct Free {
    maps: Vec<Mapping>,
    bytes: usize,
}

static FREE: Mutex<Free> = Mutex::new(Free {
    maps: Vec::new(),
    bytes: 0,
});

fn take(cap: usize) -> Mapping {
    let mut free = FREE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(i) = free.maps.iter().position(|m| m.cap == cap) {
        let m = free.maps.swap_remove(i);
        free.bytes -= m.cap;
        return m;
    }
    drop(free);
    Mapping::new(cap)
}

fn give_back(m: Mapping) {
    let mut free = FREE.lock().unwrap_or_else(|p| p.into_inner());
    if free.bytes + m.cap <= max_free() {
        free.bytes += m.cap;
        free.maps.push(m);
    }
    // Otherwise dropped here, after the lock: unmapped.
}

/// Free buffers held now (count, bytes).
#[cfg(test)]
fn free() -> (usize, usize) {
    let free = FREE.lock().unwrap_or_else(|p| p.into_inner());
    (free.maps.len(), free.bytes)
}

/// A mapping that goes back to the pool when dropped.
struct Pooled(Option<Mapping>);

impl Pooled {
    fn map(&self) -> &Mapping {
        self.0.as_ref().expect("present until dropped")
    }

    fn map_mut(&mut self) -> &mut Mapping {
        self.0.as_mut().expect("present until dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            give_back(m);
        }
    }
}

enum Store {
    Heap(Vec<u8>),
    Mapped { map: Pooled, len: usize },
}

/// A buffer of fixed capacity being filled, then frozen into `Bytes`.
pub struct BlockBuf(Store);

impl BlockBuf {
    /// An empty buffer with room for exactly `cap` bytes.
    pub fn with_capacity(cap: usize) -> BlockBuf {
        if cap >= MIN_POOLED {
            BlockBuf(Store::Mapped {
                map: Pooled(Some(take(cap))),
                len: 0,
            })
        } else {
            BlockBuf(Store::Heap(Vec::with_capacity(cap)))
        }
    }

    /// A buffer of `len` zero bytes, to read into.
    pub fn zeroed(len: usize) -> BlockBuf {
        let mut b = BlockBuf::with_capacity(len);
        match &mut b.0 {
            Store::Heap(v) => v.resize(len, 0),
            Store::Mapped { map, len: l } => {
                map.map_mut().slice_mut(len).fill(0);
                *l = len;
            }
        }
        b
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            Store::Heap(v) => v.len(),
            Store::Mapped { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        match &self.0 {
            Store::Heap(v) => v.capacity(),
            Store::Mapped { map, .. } => map.map().cap,
        }
    }

    /// Appends `data`. Panics when it does not fit: callers check lengths first.
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        let (len, cap) = (self.len(), self.capacity());
        assert!(
            len + data.len() <= cap,
            "block buffer overflow: {} + {} > {cap}",
            len,
            data.len()
        );
        match &mut self.0 {
            Store::Heap(v) => v.extend_from_slice(data),
            Store::Mapped { map, len } => {
                map.map_mut().slice_mut(*len + data.len())[*len..].copy_from_slice(data);
                *len += data.len();
            }
        }
    }

    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            Store::Heap(v) => v,
            Store::Mapped { map, len } => map.map().slice(*len),
        }
    }

    /// The bytes written so far, to overwrite in place.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.0 {
            Store::Heap(v) => v,
            Store::Mapped { map, len } => map.map_mut().slice_mut(*len),
        }
    }

    /// The buffer as `Bytes`; a mapped one goes back to the pool when the last `Bytes` sharing
    /// it is dropped.
    pub fn freeze(self) -> Bytes {
        match self.0 {
            Store::Heap(v) => Bytes::from(v),
            Store::Mapped { map, len } => Bytes::from_owner(Frozen { map, len }),
        }
    }
}

struct Frozen {
    map: Pooled,
    len: usize,
}

impl AsRef<[u8]> for Frozen {
    fn as_ref(&self) -> &[u8] {
        self.map.map().slice(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the pool is global, and tests run in parallel.
    #[test]
    fn buffers_are_reused_without_their_old_bytes_and_the_pool_stays_bounded() {
        let cap = MIN_POOLED + 4096;
        let mut a = BlockBuf::with_capacity(cap);
        a.extend_from_slice(&[7u8; 100]);
        a.extend_from_slice(&[8u8; 28]);
        assert_eq!(a.len(), 128);
        let bytes = a.freeze();
        assert_eq!(&bytes[..100], &[7u8; 100][..]);
        assert_eq!(&bytes[100..], &[8u8; 28][..]);
        let ptr = bytes.as_ptr();
        let shared = bytes.slice(1..3);
        drop(bytes);
        assert_eq!(&shared[..], &[7, 7], "still owned while a slice lives");
        drop(shared);
        // Handed out again: empty, then zeroed where asked.
        let b = BlockBuf::with_capacity(cap);
        assert_eq!(b.as_slice().as_ptr(), ptr, "the freed buffer was reused");
        assert!(b.is_empty() && b.as_slice().is_empty());
        drop(b);
        let z = BlockBuf::zeroed(cap);
        assert_eq!(z.len(), cap);
        assert!(z.as_slice().iter().all(|&x| x == 0), "no old bytes in a zeroed buffer");
        drop(z);
        // Small buffers are plain vectors.
        let mut small = BlockBuf::with_capacity(1000);
        small.extend_from_slice(b"abc");
        assert_eq!(&small.freeze()[..], b"abc");
        // Far more than the bound returned at once: the pool keeps at most its bound.
        let many: Vec<Bytes> = (0..2 * MAX_FREE_BYTES / cap + 2)
            .map(|_| BlockBuf::zeroed(cap).freeze())
            .collect();
        drop(many);
        let (n, held) = free();
        assert!(held <= max_free(), "{held} bytes held");
        assert!(n >= max_free() / cap - 1, "the pool filled up to its bound: {n}");
        // An overflow is refused, not written past the mapping.
        let r = std::panic::catch_unwind(|| {
            let mut b = BlockBuf::with_capacity(cap);
            b.extend_from_slice(&vec![1u8; cap + 1]);
        });
        assert!(r.is_err());
    }
}
