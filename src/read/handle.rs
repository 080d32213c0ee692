//! Per-open-handle read state: sequential detection and a growing read-ahead window.
//!
//! A read that continues where the previous one ended (give or take two blocks, since the
//! kernel may deliver concurrent read-ahead requests out of order) is sequential: it is served
//! from whole blocks, and the next `window` blocks are prefetched in parallel. The window
//! starts at one block and doubles with each sequential read up to the reader's maximum.
//! A read elsewhere resets the window and is served exactly (`BlockReader::read_random`), so
//! random access (Parquet footers, column chunks) fetches what it reads and little more; a
//! block read at random twice is then fetched whole and cached like any other.
//! A first read near offset 0 counts as sequential: whole-file reads are the common case.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{BlockReader, ReadError};
use crate::object::ObjectMeta;

#[derive(Debug, Default)]
struct State {
    /// Offset just past the previous read.
    next: u64,
    /// Read-ahead window in blocks (0: not sequential).
    window: u64,
    /// Blocks below this index have already been requested for prefetch.
    prefetched_to: u64,
}

pub struct ReadHandle {
    reader: Arc<BlockReader>,
    meta: ObjectMeta,
    state: Mutex<State>,
}

impl Drop for ReadHandle {
    fn drop(&mut self) {
        if self.state.get_mut().unwrap().window > 0 {
            self.reader.sequential_handles.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl ReadHandle {
    pub(super) fn new(reader: Arc<BlockReader>, meta: ObjectMeta) -> ReadHandle {
        ReadHandle {
            reader,
            meta,
            state: Mutex::new(State::default()),
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    pub async fn read(&self, offset: u64, len: u32) -> Result<Bytes, ReadError> {
        let bs = self.reader.block_size;
        let end = (offset + u64::from(len)).min(self.meta.size);
        let blocks = self.meta.size.div_ceil(bs);
        let (sequential, prefetch) = {
            let mut st = self.state.lock().unwrap();
            let sequential = offset.abs_diff(st.next) <= 2 * bs;
            if sequential {
                if st.window == 0 {
                    self.reader.sequential_handles.fetch_add(1, Ordering::Relaxed);
                }
                // Handles reading at once share the prefetch memory: the window of each is a
                // share of the total, so prefetched blocks are not evicted before they are read.
                let sharers = self.reader.sequential_handles.load(Ordering::Relaxed).max(1);
                let cap = (self.reader.max_window / sharers).max(1);
                st.window = (st.window * 2).clamp(1, cap);
                st.next = st.next.max(end);
            } else {
                if st.window > 0 {
                    self.reader.sequential_handles.fetch_sub(1, Ordering::Relaxed);
                }
                st.window = 0;
                st.prefetched_to = 0;
                st.next = end;
            }
            let from = end.div_ceil(bs).max(st.prefetched_to);
            let to = (end.div_ceil(bs) + st.window).min(blocks);
            if sequential && from < to {
                st.prefetched_to = to;
                (true, from..to)
            } else {
                (sequential, 0..0)
            }
        };
        for index in prefetch {
            self.reader.prefetch(&self.meta, index);
        }
        if sequential {
            self.reader.read(&self.meta, offset, len).await
        } else {
            self.reader.read_random(&self.meta, offset, len).await
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;
    use crate::store::ObjectStore;
    use crate::store::fault::FaultStore;
    use crate::store::memory::MemoryStore;

    const BS: u64 = 64 << 10;

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| ((i * 31 + i / 997) as u8) ^ seed).collect()
    }

    async fn setup(size: usize) -> (Arc<FaultStore<MemoryStore>>, Arc<BlockReader>, ObjectMeta, Vec<u8>) {
        let s = Arc::new(FaultStore::new(MemoryStore::new()));
        let d = data(size, 1);
        s.inner().put("obj", d.clone());
        let meta = s.inner().head("obj").await.unwrap();
        let r = Arc::new(BlockReader::memory_only(s.clone(), BS, 64 << 20));
        (s, r, meta, d)
    }

    async fn check(h: &ReadHandle, d: &[u8], off: u64, len: u32) {
        let got = h.read(off, len).await.unwrap();
        let end = (off as usize + len as usize).min(d.len());
        assert_eq!(&got[..], &d[(off as usize).min(end)..end], "offset {off} len {len}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sequential_reads_prefetch_ahead_and_fetch_each_block_once() {
        let (s, r, meta, d) = setup(64 * BS as usize + 123).await;
        s.set_latency(Duration::from_millis(5));
        let h = r.handle(meta.clone());
        let chunk = 16 << 10;
        check(&h, &d, 0, chunk).await;
        check(&h, &d, chunk as u64, chunk).await;
        check(&h, &d, 2 * chunk as u64, chunk).await;
        // Read-ahead ran past what was read.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(s.inner().gets.load(Ordering::Relaxed) > 1, "prefetch started");
        let mut off = 3 * chunk as u64;
        while off < meta.size {
            check(&h, &d, off, chunk).await;
            off += u64::from(chunk);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(s.inner().gets.load(Ordering::Relaxed), 65, "each block exactly once");
        assert_eq!(s.inner().get_bytes.load(Ordering::Relaxed), meta.size);
    }

    #[tokio::test]
    async fn random_reads_fetch_about_what_they_read() {
        let (s, r, meta, d) = setup(1024 * BS as usize).await;
        let h = r.handle(meta.clone());
        let mut x = 12345u64;
        let mut read = 0u64;
        for _ in 0..50 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let off = (x >> 11) % (meta.size - 8192);
            check(&h, &d, off, 4096).await;
            read += 4096;
        }
        let fetched = s.inner().get_bytes.load(Ordering::Relaxed);
        assert!(fetched <= 2 * read, "fetched {fetched} for {read} read");
    }

    #[tokio::test]
    async fn a_block_read_at_random_twice_is_cached_whole() {
        let (s, r, meta, d) = setup(64 * BS as usize).await;
        let footer = meta.size - 10_000;
        for _ in 0..5 {
            let h = r.handle(meta.clone()); // a new open each time, like many executors
            check(&h, &d, footer, 8).await;
        }
        // First touch: 8 bytes; second: the whole last block; then from the cache.
        assert_eq!(s.inner().gets.load(Ordering::Relaxed), 2);
        assert_eq!(s.inner().get_bytes.load(Ordering::Relaxed), 8 + BS);
    }

    #[tokio::test]
    async fn backwards_strided_and_tail_reads_are_exact() {
        let (_s, r, meta, d) = setup(20 * BS as usize + 77).await;
        let h = r.handle(meta.clone());
        // Parquet-like: footer length, footer, then column chunks.
        check(&h, &d, meta.size - 8, 8).await;
        check(&h, &d, meta.size - 5000, 4992).await;
        for i in (0..20).rev() {
            check(&h, &d, i * BS + 100, 3000).await;
        }
        for i in (0..meta.size).step_by(3 * BS as usize + 17) {
            check(&h, &d, i, 40_000).await;
        }
        check(&h, &d, meta.size, 10).await;
        check(&h, &d, meta.size + 100, 10).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_handles_and_versions_stay_apart() {
        let (s, r, meta, d) = setup(16 * BS as usize).await;
        let mut tasks = vec![];
        for t in 0..8u64 {
            let (r, meta, d) = (r.clone(), meta.clone(), d.clone());
            tasks.push(tokio::spawn(async move {
                let h = r.handle(meta);
                let mut off = (t * 7919) % BS;
                while off < d.len() as u64 {
                    check(&h, &d, off, 50_000).await;
                    off += 50_000;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // A new version opened later reads only new bytes; the old handle fails on unfetched
        // blocks instead of mixing.
        let old = r.handle(meta.clone());
        check(&old, &d, 0, 10).await;
        let d2 = data(20 * BS as usize, 2);
        s.inner().put("obj", d2.clone());
        let meta2 = s.inner().head("obj").await.unwrap();
        let new = r.handle(meta2);
        check(&new, &d2, 0, 100_000).await;
        check(&new, &d2, 19 * BS, 100_000).await;
        assert_eq!(
            old.read(0, 10).await.unwrap(),
            d[..10],
            "cached bytes of the old version"
        );
    }
}
