//! Which backing pages hold code the CPU has cached (decoded or translated): the single owner of
//! that knowledge. CPU stores, DMA and image loads all clear marks through [`CodePages::clear`],
//! which queues the page for the engines to invalidate ([`CodePages::take_invalidated`]).
//!
//! Pages that mix code and data would thrash (translate, write, invalidate, translate again).
//! Every invalidation of a page bumps a saturating per-page counter; an engine asks
//! [`CodePages::is_hot_data`] and stops translating such a page (it interprets it instead, the
//! interpreter's per-instruction decode cache being cheap to refill).

use crate::PAGE_SIZE;

/// A range of backing offsets whose cached code is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeRange {
    /// First backing offset.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Invalidations after which a page counts as mixed code and data.
pub const HOT_DATA_WRITES: u8 = 32;
/// Queued invalidations kept before the queue collapses into "everything".
const QUEUE_MAX: usize = 4096;

/// Code marks, per-page invalidation counters and the queue of pages invalidated.
#[derive(Debug, Clone, Default)]
pub struct CodePages {
    bits: Vec<u64>,
    writes: Vec<u8>,
    queue: Vec<u64>,
    overflow: bool,
    /// Total pages invalidated (statistics).
    pub invalidations: u64,
}

impl CodePages {
    /// Tracking for `pages` backing pages.
    pub fn new(pages: u64) -> Self {
        let n = usize::try_from(pages).unwrap_or(0);
        CodePages { bits: vec![0; n.div_ceil(64)], writes: vec![0; n], ..Default::default() }
    }

    /// Marks a backing page as holding cached code; returns true if it was not before.
    pub fn mark(&mut self, page: u64) -> bool {
        let (w, b) = ((page / 64) as usize, page % 64);
        match self.bits.get_mut(w) {
            Some(word) if *word & (1 << b) == 0 => {
                *word |= 1 << b;
                true
            }
            _ => false,
        }
    }

    /// Whether a backing page holds cached code.
    #[inline]
    pub fn is_marked(&self, page: u64) -> bool {
        let (w, b) = ((page / 64) as usize, page % 64);
        self.bits.get(w).is_some_and(|word| word & (1 << b) != 0)
    }

    /// Clears a page's mark after a write into it; returns true if it was set, in which case
    /// the page is queued for invalidation and its counter bumped.
    pub fn clear(&mut self, page: u64) -> bool {
        let (w, b) = ((page / 64) as usize, page % 64);
        match self.bits.get_mut(w) {
            Some(word) if *word & (1 << b) != 0 => {
                *word &= !(1 << b);
                if let Some(c) = self.writes.get_mut(page as usize) {
                    *c = c.saturating_add(1);
                }
                self.invalidations += 1;
                if self.queue.len() < QUEUE_MAX {
                    self.queue.push(page);
                } else {
                    self.overflow = true;
                }
                true
            }
            _ => false,
        }
    }

    /// Clears the marks of every page overlapping `len` bytes at backing offset `off`.
    pub fn clear_range(&mut self, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        for page in off / PAGE_SIZE..=(off + len - 1) / PAGE_SIZE {
            self.clear(page);
        }
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
        for page in self.queue.drain(..) {
            f(CodeRange { start: page * PAGE_SIZE, len: PAGE_SIZE });
        }
    }

    /// Whether a page was invalidated so often that it holds data written next to code.
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
