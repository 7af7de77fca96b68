//! Which backing pages hold code the CPU has cached (decoded or translated): the single owner of
//! that knowledge. CPU stores, DMA and image loads all clear marks through
//! [`CodePages::clear_range`] (or [`CodePages::clear`] for a whole page), which queues what was
//! invalidated for the engines ([`CodePages::take_invalidated`]).
//!
//! Pages that mix code and data would thrash (translate, write, invalidate, translate again).
//! As QEMU does (its per-page write counter and SMC bitmap), every invalidation of a page bumps
//! a saturating per-page counter; once it reaches [`HOT_DATA_WRITES`] the page is tracked per
//! [`CHUNK`]-byte chunk: the engines mark the bytes their cached code came from
//! ([`CodePages::mark_range`]), and a write invalidates only when it hits a chunk that holds
//! code, and then only the chunks it hit (a write elsewhere in the page keeps the code).
use crate::PAGE_SIZE;
use std::collections::HashMap;

/// A range of backing offsets whose cached code is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeRange {
    /// First backing offset.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Invalidations after which a page counts as mixed code and data, tracked per chunk.
pub const HOT_DATA_WRITES: u8 = 32;
/// Bytes per chunk of a finely tracked page (64 chunks per page: one `u64` of marks).
pub const CHUNK: u64 = 64;
/// Queued invalidations kept before the queue collapses into "everything".
const QUEUE_MAX: usize = 4096;

/// Code marks, per-page invalidation counters and the queue of ranges invalidated.
#[derive(Debug, Clone, Default)]
pub struct CodePages {
    bits: Vec<u64>,
    writes: Vec<u8>,
    /// Finely tracked pages: page -> one bit per chunk holding cached code.
    fine: HashMap<u64, u64>,
    queue: Vec<CodeRange>,
    overflow: bool,
    /// Total invalidations queued (statistics).
    pub invalidations: u64,
    /// Writes into a finely tracked code page that hit no code and invalidated nothing
    /// (statistics).
    pub fine_misses: u64,
}

/// The chunk bits of the bytes `[off, off + len)` of one page (`off` within the page).
fn chunk_mask(off: u64, len: u64) -> u64 {
    let first = off / CHUNK;
    let last = (off + len.max(1) - 1).min(PAGE_SIZE - 1) / CHUNK;
    let n = last - first + 1;
    (if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }) << first
}

impl CodePages {
    /// Tracking for `pages` backing pages.
    pub fn new(pages: u64) -> Self {
        let n = usize::try_from(pages).unwrap_or(0);
        CodePages { bits: vec![0; n.div_ceil(64)], writes: vec![0; n], ..Default::default() }
    }

    /// Marks a whole backing page as holding cached code; returns true if it was not marked
    /// before (the caller then makes writes to it take the slow path).
    pub fn mark(&mut self, page: u64) -> bool {
        self.mark_range(page * PAGE_SIZE, PAGE_SIZE)
    }

    /// Marks the code bytes `[off, off + len)` (backing offsets, within one page) as cached;
    /// returns true if their page was not marked before.
    pub fn mark_range(&mut self, off: u64, len: u64) -> bool {
        let page = off / PAGE_SIZE;
        let (w, b) = ((page / 64) as usize, page % 64);
        let Some(word) = self.bits.get_mut(w) else { return false };
        if let Some(m) = self.fine.get_mut(&page) {
            *m |= chunk_mask(off % PAGE_SIZE, len);
        }
        if *word & (1 << b) == 0 {
            *word |= 1 << b;
            true
        } else {
            false
        }
    }

    /// Whether a backing page holds cached code.
    #[inline]
    pub fn is_marked(&self, page: u64) -> bool {
        let (w, b) = ((page / 64) as usize, page % 64);
        self.bits.get(w).is_some_and(|word| word & (1 << b) != 0)
    }

    /// Clears a page's mark after a write into it that may have hit any of its bytes (DMA
    /// by page); returns true if it was set, in which case the whole page is queued for
    /// invalidation and its counter bumped.
    pub fn clear(&mut self, page: u64) -> bool {
        self.clear_in_page(page, 0, PAGE_SIZE)
    }

    /// A write of `len` bytes at page offset `off` of `page`: returns true if it invalidated
    /// cached code (queued).
    fn clear_in_page(&mut self, page: u64, off: u64, len: u64) -> bool {
        if !self.is_marked(page) {
            return false;
        }
        let start = page * PAGE_SIZE;
        let range = if let Some(m) = self.fine.get_mut(&page) {
            let hit = *m & chunk_mask(off, len);
            if hit == 0 {
                self.fine_misses += 1;
                return false;
            }
            *m &= !hit;
            let (lo, hi) = (u64::from(hit.trailing_zeros()), 64 - u64::from(hit.leading_zeros()));
            if *m != 0 {
                // Other chunks still hold code: the page stays marked (writes stay slow).
                self.queue_range(CodeRange { start: start + lo * CHUNK, len: (hi - lo) * CHUNK });
                return true;
            }
            CodeRange { start: start + lo * CHUNK, len: (hi - lo) * CHUNK }
        } else {
            CodeRange { start, len: PAGE_SIZE }
        };
        let (w, b) = ((page / 64) as usize, page % 64);
        self.bits[w] &= !(1 << b);
        if let Some(c) = self.writes.get_mut(page as usize) {
            *c = c.saturating_add(1);
            if *c >= HOT_DATA_WRITES {
                // From now on, track this page's code per chunk (empty until marked again).
                self.fine.entry(page).or_insert(0);
            }
        }
        self.queue_range(range);
        true
    }

    fn queue_range(&mut self, r: CodeRange) {
        self.invalidations += 1;
        if self.queue.len() < QUEUE_MAX {
            self.queue.push(r);
        } else {
            self.overflow = true;
        }
    }

    /// A write of `len` bytes at backing offset `off` (CPU store, DMA, image load): invalidates
    /// the cached code it hits (whole pages, or in finely tracked pages the chunks hit);
    /// returns true if it hit any.
    pub fn clear_range(&mut self, off: u64, len: u64) -> bool {
        if len == 0 {
            return false;
        }
        let mut hit = false;
        let end = off.saturating_add(len);
        let mut a = off;
        while a < end {
            let page = a / PAGE_SIZE;
            let n = ((page + 1) * PAGE_SIZE).min(end) - a;
            hit |= self.clear_in_page(page, a % PAGE_SIZE, n);
            a += n;
        }
        hit
    }

    /// Whether invalidations are queued.
    #[inline]
    pub fn has_invalidated(&self) -> bool {
        !self.queue.is_empty() || self.overflow
    }

    /// Hands the queued invalidations to `f` and empties the queue. After a queue overflow, `f`
    /// gets one range covering everything.
    pub fn take_invalidated(&mut self, mut f: impl FnMut(CodeRange)) {
        if std::mem::take(&mut self.overflow) {
            self.queue.clear();
            f(CodeRange { start: 0, len: u64::MAX });
            return;
        }
        for r in self.queue.drain(..) {
            f(r);
        }
    }

    /// Whether a page was invalidated so often that it holds data written next to code (it is
    /// tracked per chunk).
    #[inline]
    pub fn is_hot_data(&self, page: u64) -> bool {
        self.writes.get(page as usize).is_some_and(|&c| c >= HOT_DATA_WRITES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_code_pages_mark_clear_queue_and_counter() {
        let mut c = CodePages::new(100);
        assert!(c.mark(2));
        assert!(!c.mark(2));
        assert!(c.is_marked(2));
        assert!(!c.clear(3), "unmarked page: nothing to invalidate");
        assert!(!c.has_invalidated());
        c.clear_range(0x1FFF, 2); // pages 1 and 2
        assert!(!c.is_marked(2));
        let mut got = Vec::new();
        c.take_invalidated(|r| got.push(r));
        assert_eq!(got, vec![CodeRange { start: 0x2000, len: 0x1000 }]);
        assert!(!c.has_invalidated());
        for _ in 0..HOT_DATA_WRITES {
            assert!(!c.is_hot_data(7));
            c.mark(7);
            c.clear(7);
        }
        assert!(c.is_hot_data(7));
        assert!(!c.mark(1000) && !c.is_marked(1000), "out of range pages are never code");
    }

    #[test]
    fn test_code_pages_hot_page_is_tracked_per_chunk() {
        let mut c = CodePages::new(16);
        let page = 7u64;
        let base = page * PAGE_SIZE;
        for _ in 0..HOT_DATA_WRITES {
            c.mark(page);
            assert!(c.clear_range(base + 0x800, 8), "whole-page tracking: any write invalidates");
        }
        c.take_invalidated(|_| {});
        // Code in bytes 0x100..0x10A (chunk 4) and 0x13E..0x142 (chunks 4 and 5).
        assert!(c.mark_range(base + 0x100, 10), "the page was unmarked by the last write");
        assert!(!c.mark_range(base + 0x13E, 4));
        assert!(!c.clear_range(base + 0x800, 8), "a write into a chunk without code");
        assert!(!c.clear_range(base + 0xC0, 0x40), "chunk 3 ends where the code's chunk begins");
        assert!(c.is_marked(page) && !c.has_invalidated() && c.fine_misses == 2);
        assert!(c.clear_range(base + 0x17F, 2), "bytes 0x17F..0x181: chunks 5 and 6");
        let mut got = Vec::new();
        c.take_invalidated(|r| got.push(r));
        assert_eq!(got, vec![CodeRange { start: base + 0x140, len: 0x40 }], "only chunk 5 held code");
        assert!(c.is_marked(page), "chunk 4 still holds code");
        assert!(c.clear(page), "a whole-page write (DMA by page) hits chunk 4");
        c.take_invalidated(|r| got.push(r));
        assert_eq!(got[1], CodeRange { start: base + 0x100, len: 0x40 });
        assert!(!c.is_marked(page));
        assert!(!c.clear_range(base, PAGE_SIZE), "no code left");
    }

    #[test]
    fn test_code_pages_queue_overflow_means_everything() {
        let mut c = CodePages::new(QUEUE_MAX as u64 + 10);
        for p in 0..QUEUE_MAX as u64 + 5 {
            c.mark(p);
            c.clear(p);
        }
        let mut got = Vec::new();
        c.take_invalidated(|r| got.push(r));
        assert_eq!(got, vec![CodeRange { start: 0, len: u64::MAX }]);
    }
}
