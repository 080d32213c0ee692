//! Per-open-handle read state: telling a scan from a skip, and a growing read-ahead window.
//!
//! Reads are grouped into a *run*: the span `[start, hi)` a reader is moving through, with the
//! *holes* it left behind (forward jumps nobody has filled yet). A read joins the current run
//! when it lies within `REORDER_SLACK` of it; anything further away starts a new run.
//!
//! - A read that continues the run (starts at or before `hi`) or fills one of its holes is
//!   evidence of a scan. The kernel sends a sequential reader's requests several at a time and
//!   they reach the handle slightly out of order, so a request that arrives early leaves a hole
//!   that the late one fills a moment later.
//! - A forward jump leaves a hole. A hole that is still unfilled once the reader is
//!   `REORDER_SLACK` past it was a skip (a columnar reader stepping over the columns it does not
//!   need): the run restarts after it and the read-ahead window is reset.
//! - A run is a *scan* once it has no holes and either starts at offset 0 (whole-file reads are
//!   the common case) or covers `SCAN_MIN_RUN` bytes. The window then starts at one block and
//!   doubles with each read that continues the run without holes, or fills a hole, up to the
//!   reader's maximum (shared between the handles scanning at the same time). A scan of a large
//!   object that starts with a large read at offset 0 (how a whole file is read: `cp`, `cat`, a
//!   class loader copying a JAR) opens its window at once to `FAST_START` bytes (at most a
//!   quarter of the reader's maximum) when no other handle is scanning and the object is larger
//!   than that window: once the first block is back, the whole window is requested at once,
//!   instead of one more round trip per doubling. The first block is fetched alone so that its
//!   first byte is not slowed by the window's GETs, and a failing tier below (a dead shared
//!   bucket behind its breaker) sees one failure, not a burst. Those reads and
//!   the next `window` blocks are fetched through whole blocks of the tier chain. A forward jump
//!   or a re-read inside a scan is served through whole blocks too, but neither grows the window
//!   nor prefetches: a scan that turns into skips stops prefetching at once, and its window is
//!   gone once the first skip is confirmed.
//! - Every other read is served by pages (`BlockReader::read_random`): from cached blocks or
//!   pages when they are all there, otherwise the missing 16 KiB pages around its bytes, which
//!   the memory tier keeps. Column chunks of a Parquet or ORC file read with gaps between them
//!   fetch what they read (rounded out to pages), not the gaps, and once.
//! - Handles of one object read at the same time share the kernel's page cache: each is asked
//!   only for what the others have not read yet, so its requests jump over theirs. While two or
//!   more are open, the reader remembers what any of them read (`ObjectReads`); a jump over bytes
//!   another handle read, or a hole that another handle has read since, is no skip. A random
//!   read of an object that another handle is scanning, or of a block another reader is fetching
//!   whole, takes whole blocks (joining that fetch) rather than fetching its bytes again.
//! - An object of at most `SMALL_OBJECT_BLOCKS` blocks is read whole: its first read fetches
//!   every block (those it needs at once, the others as prefetch) and every read goes through
//!   the blocks, so a JAR whose central directory is read first (at the end) costs its blocks'
//!   GETs, once.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{BlockReader, ObjectReads, ReadError};
use crate::object::ObjectMeta;

/// How far a request may land beyond (or before) the run and still be taken for the kernel's
/// reordering of one sequential reader's requests. Those are at most 1 MiB each (FUSE's default
/// limit of 256 pages) and a few are in flight (the kernel's read-ahead is one block, at most
/// 1 MiB, plus the read being waited for): 4 MiB covers them with room to spare. It is also how
/// long an unfilled hole stays open before it counts as a skip.
const REORDER_SLACK: u64 = 4 << 20;

/// Bytes a run must cover without holes before it is a scan (unless it starts at offset 0):
/// twice the largest request the kernel sends, so one read never makes a scan by itself, and a
/// columnar chunk (100 KB to 1 MB) read at a time never does.
const SCAN_MIN_RUN: u64 = 2 << 20;

/// Holes remembered per handle; when a run has more, the oldest counts as a skip.
const MAX_HOLES: usize = 8;

/// The window a fast start opens (see the module docs): bytes that 20 ms of S3 first-byte
/// latency hides at several hundred MB/s (half the 1 MiB blocks the default prefetch
/// concurrency sends at once). Measured in benches/e2e.rs (docs/BENCHMARKS.md, "Cold window").
pub const FAST_START: u64 = 16 << 20;

/// The smallest first read at offset 0 that makes a fast start: the kernel sends a streaming
/// reader's first request at 128 KiB or more (its initial read-ahead), a peek at a header (a
/// magic number, a Parquet or ORC reader's first bytes) much less.
const FAST_START_MIN_READ: u64 = 128 << 10;

/// Objects of at most this many blocks are fetched whole at their first read: the blocks cost
/// about as much time as the exact range, and the rest of the object is usually read next.
pub const SMALL_OBJECT_BLOCKS: u64 = 2;

/// What one read did to the handle's run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Started a new run (the first read, or one far from the current run).
    NewRun,
    /// Continued the run past `hi`, starting at or before it.
    Extend,
    /// Filled (part of) a hole.
    Fill,
    /// Jumped beyond `hi` or before the run's start, leaving a hole.
    Jump,
    /// Read again inside the run, filling nothing.
    Within,
}

/// The run a handle is reading, with the holes it left; no I/O, so the rule is testable alone.
#[derive(Debug, Default)]
struct Run {
    started: bool,
    start: u64,
    hi: u64,
    /// Unfilled gaps inside `[start, hi)`, sorted and disjoint.
    holes: Vec<(u64, u64)>,
}

impl Run {
    /// Records the read `[offset, end)` (`end > offset`). Returns what it was, and whether a
    /// hole was found to be a skip (the run restarted after it).
    fn observe(&mut self, offset: u64, end: u64) -> (Step, bool) {
        if !self.started
            || offset > self.hi.saturating_add(REORDER_SLACK)
            || end.saturating_add(REORDER_SLACK) < self.start
        {
            *self = Run {
                started: true,
                start: offset,
                hi: end,
                holes: Vec::new(),
            };
            return (Step::NewRun, false);
        }
        let filled = self.fill(offset, end);
        let step = if filled {
            Step::Fill
        } else if offset > self.hi {
            self.holes.push((self.hi, offset));
            Step::Jump
        } else if offset < self.start {
            if end < self.start {
                self.holes.insert(0, (end, self.start));
            }
            Step::Jump
        } else if end > self.hi {
            Step::Extend
        } else {
            Step::Within
        };
        self.start = self.start.min(offset);
        self.hi = self.hi.max(end);
        (step, self.expire())
    }

    /// Removes `[offset, end)` from the holes; whether it overlapped any.
    fn fill(&mut self, offset: u64, end: u64) -> bool {
        let mut filled = false;
        let mut kept = Vec::with_capacity(self.holes.len() + 1);
        for &(a, b) in &self.holes {
            if end <= a || offset >= b {
                kept.push((a, b));
                continue;
            }
            filled = true;
            if a < offset {
                kept.push((a, offset));
            }
            if end < b {
                kept.push((end, b));
            }
        }
        self.holes = kept;
        filled
    }

    /// Holes the reader left `REORDER_SLACK` behind, or beyond `MAX_HOLES`, were skips: the run
    /// restarts after the newest of them. Whether there was one.
    fn expire(&mut self) -> bool {
        let stale = self
            .holes
            .iter()
            .rposition(|&(_, b)| b.saturating_add(REORDER_SLACK) < self.hi);
        let over = self.holes.len().checked_sub(MAX_HOLES + 1);
        let Some(last) = stale.max(over) else {
            return false;
        };
        self.start = self.holes[last].1;
        self.holes.drain(..=last);
        true
    }

    /// A scan: no holes, and it starts at offset 0 or covers `SCAN_MIN_RUN` bytes.
    fn is_scan(&self) -> bool {
        self.holes.is_empty() && (self.start == 0 || self.hi - self.start >= SCAN_MIN_RUN)
    }
}

#[derive(Debug, Default)]
struct State {
    run: Run,
    /// Read-ahead window in blocks (0: not scanning).
    window: u64,
    /// Blocks below this index have already been requested for prefetch.
    prefetched_to: u64,
    /// A fast start's window waits for its first read to be answered before it is sent.
    held: bool,
    /// Blocks below this index were released by this run (`BlockReader::release`).
    released_to: u64,
}

pub struct ReadHandle {
    reader: Arc<BlockReader>,
    meta: ObjectMeta,
    state: Mutex<State>,
    /// What the handles of this object read, shared with them (`BlockReader::open_object`).
    object: Arc<Mutex<ObjectReads>>,
}

impl Drop for ReadHandle {
    fn drop(&mut self) {
        if self.state.get_mut().unwrap().window > 0 {
            self.scanning(false);
        }
        self.reader.close_object(&self.meta, &self.object);
    }
}

impl ReadHandle {
    pub(super) fn new(reader: Arc<BlockReader>, meta: ObjectMeta) -> ReadHandle {
        let object = reader.open_object(&meta);
        ReadHandle {
            reader,
            meta,
            state: Mutex::new(State::default()),
            object,
        }
    }

    /// This handle started scanning its object, or stopped (a skip, a new run, its release).
    fn scanning(&self, started: bool) {
        if started {
            self.reader.sequential_handles.fetch_add(1, Ordering::Relaxed);
        } else {
            self.reader.sequential_handles.fetch_sub(1, Ordering::Relaxed);
        }
        self.object.lock().unwrap().scanning(started);
    }

    pub fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    pub async fn read(&self, offset: u64, len: u32) -> Result<Bytes, ReadError> {
        if offset >= self.meta.size || len == 0 {
            return Ok(Bytes::new());
        }
        let bs = self.reader.block_size;
        let end = (offset + u64::from(len)).min(self.meta.size);
        let blocks = self.meta.size.div_ceil(bs);
        if blocks <= SMALL_OBJECT_BLOCKS {
            return self.read_small(offset, len, blocks).await;
        }
        let (scanning, prefetch, fast) = {
            let mut st = self.state.lock().unwrap();
            // Other handles of the object read the bytes this read jumps over, or those of a
            // hole it left (the kernel asked this handle only for what they had not read):
            // the run goes on as if this handle had read them.
            let from = {
                let mut object = self.object.lock().unwrap();
                if object.shared() {
                    object.note(offset, end);
                    st.run.holes.retain(|&(a, b)| !object.covers(a, b));
                }
                let run = &st.run;
                if object.shared() && run.started && offset > run.hi && object.covers(run.hi, offset) {
                    run.hi
                } else {
                    offset
                }
            };
            let (step, skipped) = st.run.observe(from, end);
            if (step == Step::NewRun || skipped) && st.window > 0 {
                self.scanning(false);
                st.window = 0;
                st.prefetched_to = 0;
                st.held = false;
            }
            if step == Step::NewRun {
                st.released_to = 0;
            }
            let evidence = match step {
                Step::Fill => true,
                Step::Extend => st.run.holes.is_empty(),
                _ => false,
            };
            let grow = if st.window == 0 {
                let scan = st.run.is_scan();
                if scan {
                    self.scanning(true);
                }
                scan
            } else {
                evidence
            };
            if grow {
                // Handles scanning at once share the prefetch memory: the window of each is a
                // share of the total, so prefetched blocks are not evicted before they are read.
                let sharers = self.reader.sequential_handles.load(Ordering::Relaxed).max(1);
                let cap = (self.reader.max_window / sharers).max(1);
                // At most a quarter of the read-ahead memory, and only for an object larger
                // than that: a window covering a whole object would only fill memory sooner.
                let fast_window = (FAST_START / bs).min(self.reader.max_window / 4).min(cap);
                let fast = st.window == 0
                    && step == Step::NewRun
                    && offset == 0
                    && end - offset >= FAST_START_MIN_READ
                    && sharers == 1
                    && blocks > fast_window;
                st.window = if fast {
                    fast_window.max(1)
                } else {
                    (st.window * 2).clamp(1, cap)
                };
                st.held |= fast;
                (true, self.take_window(&mut st, blocks), fast)
            } else {
                (st.window > 0, 0..0, false)
            }
        };
        for index in prefetch {
            self.reader.prefetch(&self.meta, index);
        }
        let got = if scanning {
            self.reader.read(&self.meta, offset, len).await
        } else {
            let scanned = self.object.lock().unwrap().scanned();
            self.reader.read_random_of(&self.meta, offset, len, scanned).await
        };
        if scanning && got.is_ok() {
            let done = self.done_with();
            self.reader.release(&self.meta, done).await;
        }
        if fast {
            // The first block came back alone (its first byte is not slowed by the window's
            // GETs, and a failing tier below has failed once, not once per block): now the
            // window, as it has grown since.
            let prefetch = {
                let mut st = self.state.lock().unwrap();
                let held = std::mem::replace(&mut st.held, false);
                if held && got.is_ok() {
                    self.take_window(&mut st, blocks)
                } else {
                    0..0
                }
            };
            for index in prefetch {
                self.reader.prefetch(&self.meta, index);
            }
        }
        got
    }

    /// The blocks this scan has read whole, with `REORDER_SLACK` to spare for reads the kernel
    /// sent out of order and that are still under way, not released yet; marked as released.
    fn done_with(&self) -> std::ops::Range<u64> {
        let bs = self.reader.block_size;
        let mut st = self.state.lock().unwrap();
        let read_to = st
            .run
            .holes
            .first()
            .map_or(st.run.hi, |h| h.0)
            .saturating_sub(REORDER_SLACK);
        let from = st.released_to.max(st.run.start.div_ceil(bs));
        let to = read_to / bs;
        if to <= from {
            return 0..0;
        }
        st.released_to = to;
        from..to
    }

    /// The blocks of the window not requested yet (none while a fast start is held), marked
    /// as requested.
    fn take_window(&self, st: &mut State, blocks: u64) -> std::ops::Range<u64> {
        if st.held {
            return 0..0;
        }
        let ahead = st.run.hi.div_ceil(self.reader.block_size);
        let from = ahead.max(st.prefetched_to);
        let to = (ahead + st.window).min(blocks);
        st.prefetched_to = st.prefetched_to.max(to);
        from..to
    }

    /// A small object: every read through its blocks, and the first one fetches them all.
    async fn read_small(&self, offset: u64, len: u32, blocks: u64) -> Result<Bytes, ReadError> {
        let first = {
            let mut st = self.state.lock().unwrap();
            !std::mem::replace(&mut st.run.started, true)
        };
        if first {
            let bs = self.reader.block_size;
            let end = (offset + u64::from(len)).min(self.meta.size);
            let needed = offset / bs..=(end - 1) / bs;
            for index in (0..blocks).filter(|i| !needed.contains(i)) {
                self.reader.prefetch(&self.meta, index);
            }
        }
        self.reader.read(&self.meta, offset, len).await
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

    /// Two handles reading one object at once: the kernel's page cache, shared by both, sends
    /// each only what the other has not read, so each handle's reads jump over the other's.
    /// Those jumps are no skips: both keep scanning, and every block is fetched whole, once
    /// (4 readers of one JAR set through one mount took 2.7 s instead of 7.4).
    #[tokio::test]
    async fn handles_reading_one_object_at_once_keep_scanning_across_each_others_reads() {
        let (s, r, meta, d) = setup(128 * BS as usize).await;
        let (a, b) = (r.handle(meta.clone()), r.handle(meta.clone()));
        let chunk = 2 * BS;
        // A reads chunks 0 and 2 (jumping over 1, which B reads next), then B reads 1 and 3
        // (jumping over 2, which A read), and so on.
        for k in 0..16 {
            for (h, i) in [(&a, 4 * k), (&a, 4 * k + 2), (&b, 4 * k + 1), (&b, 4 * k + 3)] {
                check(h, &d, i * chunk, chunk as u32).await;
            }
        }
        let windows = (a.state.lock().unwrap().window, b.state.lock().unwrap().window);
        assert!(windows.0 > 0 && windows.1 > 0, "both still scanning: {windows:?}");
        assert_eq!(r.sequential_handles.load(Ordering::Relaxed), 2);
        assert!(
            s.inner().gets.load(Ordering::Relaxed) <= 128,
            "whole blocks only, once each"
        );
        drop((a, b));
        assert!(r.objects.lock().unwrap().is_empty(), "forgotten once both are released");
    }

    /// A random read of an object another handle is scanning takes whole blocks (that handle
    /// fetches every block whole anyway), not pages of them.
    #[tokio::test]
    async fn a_random_read_of_an_object_another_handle_scans_takes_whole_blocks() {
        let (_s, r, meta, d) = setup(64 * BS as usize).await;
        let block = r.chain.block(&meta, 40);
        let random = r.read_random(&meta, 30 * BS + 100, 1000).await.unwrap();
        assert_eq!(&random[..], &d[(30 * BS + 100) as usize..(30 * BS + 1100) as usize]);
        assert!(
            !r.chain.holds(&r.chain.block(&meta, 30)),
            "alone, a random read fetches pages"
        );
        let a = r.handle(meta.clone());
        check(&a, &d, 0, (4 * BS) as u32).await;
        assert!(a.state.lock().unwrap().window > 0, "a scans");
        assert!(!r.chain.holds(&block) && !r.chain.fetching(&block), "beyond a's window");
        // Another handle's first read there: not a scan, so a random read.
        let b = r.handle(meta.clone());
        let got = b.read(40 * BS + 100, 1000).await.unwrap();
        assert_eq!(&got[..], &d[(40 * BS + 100) as usize..(40 * BS + 1100) as usize]);
        assert_eq!(b.state.lock().unwrap().window, 0, "b reads at random");
        assert!(r.chain.holds(&block), "fetched whole");
    }

    /// A random read of part of a block that another reader is fetching whole waits for that
    /// fetch: one GET between them, not a second one for the part (4 readers of one JAR at once
    /// fetched 1.04-1.07x its bytes before).
    #[tokio::test]
    async fn a_random_read_joins_the_fetch_of_its_block_under_way() {
        let (s, r, meta, d) = setup(4 * BS as usize).await;
        s.set_latency(Duration::from_millis(300));
        let whole = {
            let (r, meta) = (r.clone(), meta.clone());
            tokio::spawn(async move { r.read(&meta, 0, BS as u32).await })
        };
        let block = r.chain.block(&meta, 0);
        while !r.chain.fetching(&block) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let part = r.read_random(&meta, 1000, 5000).await.unwrap();
        assert_eq!(&part[..], &d[1000..6000]);
        assert_eq!(&whole.await.unwrap().unwrap()[..], &d[..BS as usize]);
        assert_eq!(s.inner().gets.load(Ordering::Relaxed), 1, "one GET, the whole block's");
        assert!(!r.chain.fetching(&block), "no longer under way");
    }

    async fn check(h: &ReadHandle, d: &[u8], off: u64, len: u32) {
        let got = h.read(off, len).await.unwrap();
        let end = (off as usize + len as usize).min(d.len());
        assert_eq!(&got[..], &d[(off as usize).min(end)..end], "offset {off} len {len}");
    }

    const MIB: u64 = 1 << 20;

    /// A reader over a `size`-byte object with `block`-byte blocks and `memory` bytes of memory.
    async fn setup_with(
        size: usize,
        block: u64,
        memory: u64,
    ) -> (Arc<FaultStore<MemoryStore>>, Arc<BlockReader>, ObjectMeta, Vec<u8>) {
        let s = Arc::new(FaultStore::new(MemoryStore::new()));
        let d = data(size, 3);
        s.inner().put("obj", d.clone());
        let meta = s.inner().head("obj").await.unwrap();
        let r = Arc::new(BlockReader::memory_only(s.clone(), block, memory));
        (s, r, meta, d)
    }

    fn fetched(s: &FaultStore<MemoryStore>) -> (u64, u64) {
        (
            s.inner().gets.load(Ordering::Relaxed),
            s.inner().get_bytes.load(Ordering::Relaxed),
        )
    }

    /// Reads `[off, off+len)` the way the kernel sends a large read: in 128 KiB requests.
    async fn check_pieces(h: &ReadHandle, d: &[u8], off: u64, len: u64) {
        let mut at = off;
        while at < off + len {
            let n = (off + len - at).min(128 << 10);
            check(h, d, at, n as u32).await;
            at += n;
        }
    }

    /// Column chunks of 320 KiB in file order, separated by forward gaps of 256 KiB, 700 KiB
    /// and 2 MiB in turn, from `from` to `to`; the bytes read.
    async fn columnar(h: &ReadHandle, d: &[u8], from: u64, to: u64) -> u64 {
        let gaps = [256 << 10, 700 << 10, 2 * MIB];
        let (mut off, mut read) = (from, 0);
        for i in 0.. {
            let chunk = 320 << 10;
            if off + chunk > to {
                break;
            }
            check_pieces(h, d, off, chunk).await;
            read += chunk;
            off += chunk + gaps[i % gaps.len()];
        }
        read
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scan_delivered_out_of_order_still_prefetches_each_block_once() {
        // 64 KiB blocks and 128 KiB requests, each group of four arriving as 0, 3, 1, 2: the
        // early one lands 256 KiB ahead (four blocks), farther than the old two-block tolerance.
        let (s, r, meta, d) = setup(256 * BS as usize).await;
        s.set_latency(Duration::from_millis(2));
        let h = r.handle(meta.clone());
        let req = 128u64 << 10;
        let groups = meta.size / (4 * req);
        let mut read = 0;
        for g in 0..groups {
            for i in [0, 3, 1, 2] {
                check(&h, &d, (4 * g + i) * req, req as u32).await;
                read += req;
            }
            if g == 3 {
                // 2 MiB read so far: read-ahead ran past it.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let (_, bytes) = fetched(&s);
                assert!(bytes > read, "prefetched ahead: {bytes} fetched for {read} read");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(fetched(&s), (256, meta.size), "each block exactly once, whole");
    }

    #[tokio::test]
    async fn a_scan_starting_mid_file_prefetches_once_it_is_long_enough() {
        let (s, r, meta, d) = setup_with(32 * MIB as usize, MIB, 64 * MIB).await;
        let h = r.handle(meta.clone());
        check_pieces(&h, &d, 5 * MIB + 4096, SCAN_MIN_RUN - 8192).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, before) = fetched(&s);
        // Whole 16 KiB pages (the read's ends rounded out) until the run is a scan.
        assert_eq!(before, SCAN_MIN_RUN, "pages until the run is a scan");
        check_pieces(&h, &d, 5 * MIB + SCAN_MIN_RUN - 4096, 256 << 10).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, after) = fetched(&s);
        assert!(after >= before + 3 * MIB, "then through blocks, prefetched: {after}");
    }

    #[tokio::test]
    async fn a_columnar_pattern_fetches_what_it_reads() {
        // 1 MiB blocks, as mounted by default: the gaps are all within the old rule's two blocks.
        let (s, r, meta, d) = setup_with(64 * MIB as usize, MIB, 64 * MIB).await;
        let h = r.handle(meta.clone());
        // Footer length, footer, then the chunks of a few columns.
        check(&h, &d, meta.size - 8, 8).await;
        check(&h, &d, meta.size - 40_000, 39_992).await;
        let read = 40_000 + columnar(&h, &d, 4, meta.size - 40_000).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, bytes) = fetched(&s);
        assert!(2 * bytes <= 3 * read, "fetched {bytes} for {read} read");
        assert_eq!(r.sequential_handles.load(Ordering::Relaxed), 0, "never a scan");
    }

    #[tokio::test]
    async fn a_scan_that_turns_into_skips_stops_prefetching() {
        // A window of at most 4 blocks (8 MiB of memory).
        let (s, r, meta, d) = setup_with(96 * MIB as usize, MIB, 8 * MIB).await;
        let h = r.handle(meta.clone());
        check_pieces(&h, &d, 0, 4 * MIB).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, scan) = fetched(&s);
        assert!(scan > 4 * MIB, "the scan prefetched ahead: {scan}");
        // The reader now skips, starting right where the scan ended.
        let read = columnar(&h, &d, 4 * MIB + (256 << 10), meta.size).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, total) = fetched(&s);
        let skips = total - scan;
        assert!(2 * skips <= 3 * read, "fetched {skips} for {read} read while skipping");
        assert_eq!(r.sequential_handles.load(Ordering::Relaxed), 0, "no longer a scan");
    }

    #[tokio::test]
    async fn a_large_object_read_from_the_start_opens_its_window_at_once() {
        // 1 MiB blocks and 128 MiB of memory: windows of up to 64 blocks.
        let (s, r, meta, d) = setup_with(64 * MIB as usize, MIB, 128 * MIB).await;
        let h = r.handle(meta.clone());
        check(&h, &d, 0, 128 << 10).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The first block and the whole fast-start window, at the first read.
        let n = 1 + FAST_START / MIB;
        assert_eq!(fetched(&s), (n, n * MIB));
        // Then it doubles as before, each block once.
        check_pieces(&h, &d, 128 << 10, meta.size - (128 << 10)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fetched(&s), (64, meta.size));
    }

    #[tokio::test]
    async fn an_object_no_larger_than_the_fast_window_ramps_up_from_one_block() {
        // 16 blocks: a fast-start window would be the whole object.
        let (s, r, meta, d) = setup_with(16 * MIB as usize, MIB, 128 * MIB).await;
        let h = r.handle(meta.clone());
        check(&h, &d, 0, MIB as u32).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fetched(&s), (2, 2 * MIB), "the block and the next one");
    }

    #[tokio::test]
    async fn a_peek_or_a_second_scan_starts_with_one_block() {
        let (s, r, meta, d) = setup_with(64 * MIB as usize, MIB, 128 * MIB).await;
        let d2 = data(64 * MIB as usize, 9);
        s.inner().put("obj2", d2.clone());
        let meta2 = s.inner().head("obj2").await.unwrap();
        // A 4 KiB read at offset 0 (a header's magic): the block and the next one.
        let peek = r.handle(meta.clone());
        check(&peek, &d, 0, 4096).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fetched(&s), (2, 2 * MIB));
        // That handle is scanning: a large first read of another object now shares the memory
        // and starts with one block too.
        let h = r.handle(meta2);
        check(&h, &d2, 0, MIB as u32).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fetched(&s), (4, 4 * MIB));
        drop(peek);
        assert_eq!(r.sequential_handles.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_small_object_is_one_get_whatever_is_read_first() {
        let (s, r, meta, d) = setup(40_000).await;
        let h = r.handle(meta.clone());
        // A JAR: the end of the central directory, the directory, then entries anywhere.
        check(&h, &d, meta.size - 22, 22).await;
        check(&h, &d, meta.size - 3000, 2978).await;
        for off in [100, 20_000, 7, 39_000, 5_000] {
            check(&h, &d, off, 900).await;
        }
        assert_eq!(fetched(&s), (1, meta.size));
        // Two blocks: both fetched at the first read, in parallel, then nothing more.
        let (s, r, meta, d) = setup_with(100_000, BS, 1 << 20).await;
        let h = r.handle(meta.clone());
        check(&h, &d, meta.size - 22, 22).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fetched(&s), (2, meta.size));
        check(&h, &d, 10, 50_000).await;
        assert_eq!(fetched(&s), (2, meta.size));
    }

    #[test]
    fn runs_tell_holes_filled_late_from_skips() {
        let mut run = Run::default();
        assert_eq!(run.observe(MIB, 2 * MIB), (Step::NewRun, false));
        assert!(!run.is_scan());
        assert_eq!(run.observe(3 * MIB, 4 * MIB), (Step::Jump, false));
        assert_eq!(
            run.observe(0, MIB),
            (Step::Jump, false),
            "an earlier request arriving late"
        );
        assert_eq!(run.holes, [(2 * MIB, 3 * MIB)]);
        assert_eq!(run.observe(2 * MIB, 3 * MIB), (Step::Fill, false));
        assert!(run.is_scan(), "from offset 0, no holes");
        // A hole left behind and never filled is a skip once the reader is far enough past it.
        assert_eq!(run.observe(5 * MIB, 6 * MIB), (Step::Jump, false));
        assert_eq!(run.observe(6 * MIB, 9 * MIB), (Step::Extend, false));
        assert!(!run.is_scan());
        assert_eq!(
            run.observe(9 * MIB, 10 * MIB),
            (Step::Extend, true),
            "4 MiB past the hole"
        );
        assert_eq!((run.start, run.hi), (5 * MIB, 10 * MIB));
        assert!(run.is_scan(), "5 MiB without holes since the skip");
        // Far away: a new run.
        assert_eq!(run.observe(50 * MIB, 50 * MIB + 10), (Step::NewRun, false));
        assert_eq!(run.observe(50 * MIB, 50 * MIB + 10), (Step::Within, false));
        // Too many holes: the oldest are skips.
        for i in 1..=MAX_HOLES as u64 + 2 {
            run.observe(50 * MIB + 100 * i, 50 * MIB + 100 * i + 10);
        }
        assert_eq!(run.holes.len(), MAX_HOLES);
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
            let off = (x >> 11) % (meta.size - (64 << 10));
            check(&h, &d, off, 64 << 10).await;
            read += 64 << 10;
        }
        // 16 KiB pages: an unaligned 64 KiB read fetches at most 80 KiB.
        let fetched = s.inner().get_bytes.load(Ordering::Relaxed);
        assert!(4 * fetched <= 5 * read, "fetched {fetched} for {read} read");
    }

    #[tokio::test]
    async fn a_region_read_at_random_again_costs_no_request() {
        let (s, r, meta, d) = setup(64 * BS as usize).await;
        let footer = meta.size - 10_000;
        for _ in 0..5 {
            let h = r.handle(meta.clone()); // a new open each time, like many executors
            check(&h, &d, footer, 8).await;
        }
        // First touch: the 16 KiB page around the 8 bytes; then from the memory tier.
        assert_eq!(s.inner().gets.load(Ordering::Relaxed), 1);
        assert_eq!(s.inner().get_bytes.load(Ordering::Relaxed), crate::tier::PAGE_SIZE);
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

    /// A reader of a `size`-byte object through a memory tier over a disk cache (in `dir`).
    fn over_disk(
        s: &Arc<FaultStore<MemoryStore>>,
        dir: &std::path::Path,
        block: u64,
    ) -> (Arc<BlockReader>, Arc<crate::tier::memory::MemoryTier>) {
        use crate::cache::{DiskCache, DiskCacheSettings};
        use crate::object::SourceId;
        use crate::tier::{TierChain, disk::DiskTier, memory::MemoryTier};
        let source = SourceId::new(None, "test", "");
        let cache = DiskCache::open(
            DiskCacheSettings {
                dir: dir.to_path_buf(),
                max_size: None,
                min_free_percent: 0.0,
                block_size: block,
                source: source.clone(),
                lock_wait: crate::cache::LOCK_WAIT,
                object_files: true,
            },
            &crate::metrics::Metrics::new(),
        )
        .unwrap();
        let memory = Arc::new(MemoryTier::new(64 << 20, block));
        let chain = TierChain::new(source, block, s.clone())
            .with(memory.clone())
            .with(Arc::new(DiskTier::new(cache)));
        let in_flight = memory.in_flight();
        (Arc::new(BlockReader::new(Arc::new(chain), in_flight, 64 << 20)), memory)
    }

    #[tokio::test]
    async fn a_scan_lets_go_of_the_blocks_it_read_when_the_disk_keeps_them() {
        use crate::tier::Tier;
        let blocks = 12;
        let (s, _, meta, d) = setup_with((blocks * MIB) as usize, MIB, 64 << 20).await;
        let dir = tempfile::tempdir().unwrap();
        let (r, memory) = over_disk(&s, dir.path(), MIB);
        let chain_block =
            |i: u64| crate::object::BlockRef::new(&crate::object::SourceId::new(None, "test", ""), &meta, MIB, i);
        let h = r.handle(meta.clone());
        check_pieces(&h, &d, 0, blocks * MIB).await;
        assert_eq!(fetched(&s).0, blocks, "each block fetched once");
        // Read whole, more than REORDER_SLACK behind the end of the scan: let go of.
        let behind = blocks - REORDER_SLACK / MIB - 1;
        for i in 0..behind {
            assert!(!memory.holds(&chain_block(i)), "block {i} still in memory");
        }
        // The blocks near the end are still there for reads the kernel sends out of order.
        assert!(memory.holds(&chain_block(blocks - 1)));
        // Let go of, not lost: the disk cache serves them, with no GET.
        let again = r.handle(meta.clone());
        check_pieces(&again, &d, 0, blocks * MIB).await;
        assert_eq!(fetched(&s).0, blocks, "read again from the disk cache");
    }

    #[tokio::test]
    async fn a_scan_keeps_its_blocks_in_memory_when_no_disk_tier_keeps_them() {
        let blocks = 12;
        let (s, r, meta, d) = setup_with((blocks * MIB) as usize, MIB, 64 << 20).await;
        let h = r.handle(meta.clone());
        check_pieces(&h, &d, 0, blocks * MIB).await;
        let again = r.handle(meta.clone());
        check_pieces(&again, &d, 0, blocks * MIB).await;
        assert_eq!(
            fetched(&s).0,
            blocks,
            "the second scan hit memory: nothing was let go of"
        );
    }
}
