//! The dirty log: which backing pages were written since the log was last taken (KVM's dirty
//! log, QEMU's `TLB_NOTDIRTY`), so a comparison of two machines (lockstep) looks at the pages
//! written instead of all of RAM.
//!
//! **The TLB rule.** While logging, a soft-TLB entry may allow fast (inline) writes to a page
//! only after a write to that page has been recorded here; the CPU's slow path records the
//! write ([`DirtyLog::record`]) before it installs a fast write tag, and every fill that
//! installs one names its TLB slot ([`DirtyLog::granted`]). Taking the log clears it and hands
//! back those slots, whose write tags the owner of the TLB then forces back to the slow path
//! ([`crate::SoftTlb::protect_write_slots`]): O(pages written), not O(TLB). The JIT's inline
//! stores probe the same TLB, so they are covered. Everything else that writes RAM (DMA, image
//! loads, the page walk setting accessed and dirty bits) records its writes directly.
//!
//! When logging is off, [`DirtyLog::allows_fast_write`] is always true and nothing is recorded.
use crate::PAGE_SIZE;

/// Granted slots kept before the log asks for the whole TLB to be protected instead.
const SLOTS_MAX: usize = 4096;

/// Pages written since the log was last taken, and the TLB slots allowed fast writes since.
#[derive(Debug, Clone, Default)]
pub struct DirtyLog {
    on: bool,
    /// Backing pages tracked.
    total: u64,
    bits: Vec<u64>,
    pages: Vec<u64>,
    slots: Vec<u16>,
    slots_overflow: bool,
}

/// What [`DirtyLog::take`] hands back besides the pages: which TLB write tags to protect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtectSlots {
    /// These slots (`user as usize * TLB_ENTRIES + index`, possibly repeated).
    Slots(Vec<u16>),
    /// Too many to list: every write tag.
    All,
}

impl DirtyLog {
    /// A log (off) for `pages` backing pages.
    pub fn new(pages: u64) -> Self {
        let n = usize::try_from(pages).unwrap_or(0);
        DirtyLog { bits: vec![0; n.div_ceil(64)], total: pages, ..Default::default() }
    }

    /// Whether the log is recording.
    #[inline]
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Starts or stops recording; either way the log is emptied. Starting requires the owner of
    /// the TLB to protect every write tag once (fast entries filled before were not granted
    /// through the log).
    pub fn set_on(&mut self, on: bool) {
        self.on = on;
        for &p in &self.pages {
            self.bits[(p / 64) as usize] &= !(1 << (p % 64));
        }
        self.pages.clear();
        self.slots.clear();
        self.slots_overflow = false;
    }

    /// Whether a backing page is in the log.
    #[inline]
    pub fn is_dirty(&self, page: u64) -> bool {
        let (w, b) = ((page / 64) as usize, page % 64);
        self.bits.get(w).is_some_and(|word| word & (1 << b) != 0)
    }

    /// Whether a TLB entry may allow fast writes to `page`: logging is off or the page is
    /// already in the log.
    #[inline]
    pub fn allows_fast_write(&self, page: u64) -> bool {
        !self.on || self.is_dirty(page)
    }

    /// Records a write of `len` bytes at backing offset `off` (nothing when off).
    #[inline]
    pub fn record(&mut self, off: u64, len: u64) {
        if !self.on || len == 0 {
            return;
        }
        let last = (off.saturating_add(len - 1) / PAGE_SIZE).min(self.total.saturating_sub(1));
        for page in off / PAGE_SIZE..=last {
            let (w, b) = ((page / 64) as usize, page % 64);
            let Some(word) = self.bits.get_mut(w) else { return };
            if *word & (1 << b) == 0 {
                *word |= 1 << b;
                self.pages.push(page);
            }
        }
    }

    /// A TLB fill allowed fast writes in `slot` (`user as usize * TLB_ENTRIES + index`).
    #[inline]
    pub fn granted(&mut self, slot: usize) {
        if !self.on {
            return;
        }
        if self.slots.len() < SLOTS_MAX {
            self.slots.push(slot as u16);
        } else {
            self.slots_overflow = true;
        }
    }

    /// Hands the pages written since the last take to `f` (each once, in the order first
    /// written), empties the log and returns the TLB slots whose write tags must be protected.
    pub fn take(&mut self, mut f: impl FnMut(u64)) -> ProtectSlots {
        for &p in &self.pages {
            self.bits[(p / 64) as usize] &= !(1 << (p % 64));
            f(p);
        }
        self.pages.clear();
        if std::mem::take(&mut self.slots_overflow) {
            self.slots.clear();
            ProtectSlots::All
        } else {
            ProtectSlots::Slots(std::mem::take(&mut self.slots))
        }
    }

    /// Pages in the log now.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_dirty_log_records_only_while_on() {
        let mut d = DirtyLog::new(16);
        d.record(0x1000, 4);
        assert!(d.is_empty());
        assert!(d.allows_fast_write(1));
        d.set_on(true);
        assert!(!d.allows_fast_write(1));
        d.record(0x1FFE, 4); // crosses into page 2
        d.record(0x1000, 1);
        d.record(0xF000, 0x2000); // past the end: page 15 only
        assert!(d.allows_fast_write(1) && d.allows_fast_write(2));
        d.granted(7);
        let mut got = Vec::new();
        assert_eq!(d.take(|p| got.push(p)), ProtectSlots::Slots(vec![7]));
        assert_eq!(got, [1, 2, 15]);
        assert!(d.is_empty() && !d.is_dirty(1));
        for i in 0..=SLOTS_MAX {
            d.granted(i);
        }
        assert_eq!(d.take(|_| {}), ProtectSlots::All);
    }
}
