//! The soft TLB: one entry format shared by the interpreter and the JIT's inline probes.
//!
//! Each entry caches one 4 KiB linear page for one privilege class (supervisor or user). The
//! entry the fast path reads is small (32 bytes, [`TlbEntry`]): a separate tag per access kind,
//! in QEMU's softmmu style, plus the host addend. The side data the slow paths need (physical
//! page, global bit, page size) lives in a separate array ([`TlbSide`]).
//!
//! ```text
//! read_tag / write_tag / exec_tag = linear page (bits 63..12) | flags (1..0)
//! addend                          = host address of the page - linear page address (wrapping)
//! ```
//!
//! The addend is a host address (QEMU's layout), so generated code adds it and accesses
//! memory with nothing else to add. [`SoftTlb::fill`] takes and [`SoftTlb::lookup`] returns
//! backing offsets: the TLB holds the host address of backing offset 0
//! ([`SoftTlb::set_host_base`]) and converts.
//!
//! The fast path for an access of `size` bytes at linear address `a` is one compare:
//!
//! ```text
//! if tag == (a + size - 1) & PAGE_MASK {  host = a + addend  }
//! ```
//!
//! Any flag bit in the tag makes the compare fail, so these cases fall to the slow path without
//! a separate test: an invalid entry ([`TLB_INVALID`]), an MMIO page, a write to ROM, a write to a
//! page holding cached code (self-modifying code detection), and a write that must still set the
//! page-table dirty bit ([`TLB_SLOW`] for all of those). So does an access that crosses into the
//! next page.
//!
//! A flush (CR3 write) does not rewrite the whole table: the slots filled since they were last
//! emptied are listed, and a flush empties those (keeping the global ones on a non-global
//! flush). A fill costs a page walk, so the flush costs at most one store per walk since the
//! last one (PCID-less Linux with page-table isolation writes CR3 twice per system call).

use crate::PAGE_MASK;

/// Number of entries per privilege class (direct-mapped by linear page number). 4096: with
/// 1024, busybox's hot data page (0x5eb000, read by awk's and sort's inner loops) lost its
/// entry to another page a multiple of 4 MiB away on nearly every access: 17 M slow paths in
/// the Linux workload (helper calls 54.2 M -> 36.5 M, time -14%). 16384 gained nothing more
/// measurable.
pub const TLB_ENTRIES: usize = 4096;
/// Tag flag: the entry holds nothing.
pub const TLB_INVALID: u64 = 1;
/// Tag flag: the translation is known but this access kind must take the slow path.
pub const TLB_SLOW: u64 = 2;

/// One cached translation as the fast path sees it. `#[repr(C)]` so generated code can address
/// its fields; 32 bytes so an index scales by a shift.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlbEntry {
    /// Tag checked by data reads.
    pub read_tag: u64,
    /// Tag checked by data writes.
    pub write_tag: u64,
    /// Tag checked by instruction fetches.
    pub exec_tag: u64,
    /// Host address of the page minus linear page address (wrapping arithmetic).
    pub addend: u64,
}

const _: () = assert!(core::mem::size_of::<TlbEntry>() == 32);

impl TlbEntry {
    /// An entry that matches nothing.
    pub const EMPTY: TlbEntry =
        TlbEntry { read_tag: TLB_INVALID, write_tag: TLB_INVALID, exec_tag: TLB_INVALID, addend: 0 };
}

/// What the slow paths know about an entry (kept apart from the fast-path entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TlbSide {
    /// Physical page address of the translation.
    pub phys_page: u64,
    /// Whether the translation came from a global page (survives CR3 reloads).
    pub global: bool,
    /// log2 of the size of the guest page the 4 KiB piece belongs to (12, 21, 22 or 30).
    pub page_bits: u8,
    /// The slot is on the list of filled slots.
    filled: bool,
}

impl TlbSide {
    /// Side data for a translation.
    pub fn new(phys_page: u64, global: bool, page_bits: u32) -> Self {
        TlbSide { phys_page, global, page_bits: page_bits as u8, filled: false }
    }
}

/// Counters of why accesses left the fast path.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlbStats {
    /// Lookups that found no entry and walked the page tables.
    pub misses: u64,
    /// Full flushes (CR3 writes, mode changes).
    pub flushes: u64,
    /// INVLPGs that hit a large page and dropped all its 4 KiB pieces.
    pub large_invlpg: u64,
    /// Single-page flushes (INVLPG).
    pub page_flushes: u64,
}

impl TlbStats {
    /// Changes whenever a translation may have been dropped (any flush, INVLPG): translated
    /// code compares it to know that the mapping of its own page still holds.
    pub fn epoch(&self) -> u64 {
        self.flushes.wrapping_add(self.page_flushes)
    }
}

/// Two direct-mapped sets: index 0 for supervisor accesses, 1 for user accesses.
#[repr(C)]
#[derive(Debug, Clone)]
pub struct SoftTlb {
    /// `sets[user as usize][index(page)]`: the fast-path entries, on the heap (256 KiB: inside
    /// `CpuState` they made it too large for states kept on a thread's stack). First field
    /// (offset 0): generated code loads the pointer once per block entry and keeps it in a
    /// register, so the allocation is never replaced while the TLB exists (`flush_all` and the
    /// rest write into it; `Clone` makes a new one for the copy).
    pub sets: Box<[[TlbEntry; TLB_ENTRIES]; 2]>,
    /// Host address of backing offset 0: addends are host addresses, relative to this.
    host_base: u64,
    /// Slow-path counters.
    pub stats: TlbStats,
    /// Side data, `side[user as usize * TLB_ENTRIES + index]`.
    side: Vec<TlbSide>,
    /// Slots filled since they were last emptied (each once: [`TlbSide::filled`]); a flush
    /// empties these.
    filled: Vec<u16>,
    /// Linear range `[large_lo, large_hi]` covered by cached pieces of large pages.
    large_lo: u64,
    large_hi: u64,
}

impl Default for SoftTlb {
    fn default() -> Self {
        SoftTlb {
            sets: vec![[TlbEntry::EMPTY; TLB_ENTRIES]; 2].into_boxed_slice().try_into().expect("two sets"),
            host_base: 0,
            stats: TlbStats::default(),
            side: vec![TlbSide::default(); 2 * TLB_ENTRIES],
            filled: Vec::new(),
            large_lo: u64::MAX,
            large_hi: 0,
        }
    }
}

/// The kind of access a TLB lookup serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlbAccess {
    /// Data read.
    Read,
    /// Data write.
    Write,
    /// Instruction fetch.
    Exec,
}

impl SoftTlb {
    /// The direct-mapped slot of a linear address.
    #[inline(always)]
    pub fn index(linear: u64) -> usize {
        ((linear >> 12) as usize) & (TLB_ENTRIES - 1)
    }

    /// The fast path: the backing offset of `size` bytes at `linear`, if the entry allows it.
    #[inline(always)]
    pub fn lookup(&self, user: bool, access: TlbAccess, linear: u64, size: u64) -> Option<u64> {
        let e = &self.sets[user as usize][Self::index(linear)];
        let tag = match access {
            TlbAccess::Read => e.read_tag,
            TlbAccess::Write => e.write_tag,
            TlbAccess::Exec => e.exec_tag,
        };
        if tag == linear & PAGE_MASK && (linear & 0xFFF) + size <= 0x1000 {
            Some(linear.wrapping_add(e.addend).wrapping_sub(self.host_base))
        } else {
            None
        }
    }

    /// Sets the host address of backing offset 0 (the memory the entries point into). If it
    /// moved, every addend moves with it, so entries keep translating to the same backing
    /// offsets: a CPU state run against another copy of guest memory sees no difference.
    pub fn set_host_base(&mut self, base: u64) {
        if base == self.host_base {
            return;
        }
        let delta = base.wrapping_sub(self.host_base);
        for e in self.sets.iter_mut().flat_map(|s| s.iter_mut()) {
            e.addend = e.addend.wrapping_add(delta);
        }
        self.host_base = base;
    }

    /// The host address of backing offset 0 the addends are relative to.
    pub fn host_base(&self) -> u64 {
        self.host_base
    }

    /// The side data for `linear`'s slot, whatever the entry's tags say.
    pub fn side(&self, user: bool, linear: u64) -> &TlbSide {
        &self.side[user as usize * TLB_ENTRIES + Self::index(linear)]
    }

    /// Installs an entry for the page of `linear`. Tags are the plain page address, maybe with
    /// [`TLB_SLOW`]; `entry.addend` is a backing offset minus the linear page address (the
    /// host base is added here).
    pub fn fill(&mut self, user: bool, linear: u64, entry: TlbEntry, side: TlbSide) {
        let i = Self::index(linear);
        self.sets[user as usize][i] = TlbEntry { addend: entry.addend.wrapping_add(self.host_base), ..entry };
        let slot = user as usize * TLB_ENTRIES + i;
        let filled = self.side[slot].filled;
        self.side[slot] = TlbSide { filled: true, ..side };
        if !filled {
            self.filled.push(slot as u16);
        }
        if side.page_bits > 12 {
            let size = 1u64 << side.page_bits;
            let base = linear & !(size - 1);
            self.large_lo = self.large_lo.min(base);
            self.large_hi = self.large_hi.max(base.wrapping_add(size - 1));
        }
    }

    /// Drops every entry: O(slots filled since the last flush).
    pub fn flush_all(&mut self) {
        self.stats.flushes += 1;
        for &slot in &self.filled {
            let s = usize::from(slot);
            self.sets[s / TLB_ENTRIES][s % TLB_ENTRIES] = TlbEntry::EMPTY;
            self.side[s].filled = false;
        }
        self.filled.clear();
        self.large_lo = u64::MAX;
        self.large_hi = 0;
    }

    /// Drops every non-global entry (a CR3 write with CR4.PGE set): O(slots filled since the
    /// last flush, global ones included).
    pub fn flush_non_global(&mut self) {
        self.stats.flushes += 1;
        let (sets, side) = (&mut self.sets, &mut self.side);
        self.filled.retain(|&slot| {
            let s = usize::from(slot);
            let e = &mut sets[s / TLB_ENTRIES][s % TLB_ENTRIES];
            let live = side[s].global && e.read_tag & TLB_INVALID == 0;
            if !live {
                *e = TlbEntry::EMPTY;
                side[s].filled = false;
            }
            live
        });
    }

    /// Drops the entries for one linear page (INVLPG). If the page belongs to a large page whose
    /// 4 KiB pieces are cached, every piece of that large page is dropped (SDM 4.10.4.1).
    pub fn flush_page(&mut self, linear: u64) {
        self.stats.page_flushes += 1;
        let i = Self::index(linear);
        for set in self.sets.iter_mut() {
            set[i] = TlbEntry::EMPTY;
        }
        if linear < self.large_lo || linear > self.large_hi {
            return;
        }
        self.stats.large_invlpg += 1;
        for (slot, side) in self.side.iter().enumerate() {
            if side.page_bits > 12 {
                let size = 1u64 << side.page_bits;
                let e = &mut self.sets[slot / TLB_ENTRIES][slot % TLB_ENTRIES];
                // The tag holds the linear page of a valid entry; compare the large-page bases.
                if e.read_tag & TLB_INVALID == 0 && (e.read_tag & !(size - 1)) == (linear & !(size - 1)) {
                    *e = TlbEntry::EMPTY;
                }
            }
        }
    }

    /// Forces the writes of the given slots (`user as usize * TLB_ENTRIES + index`, see
    /// [`SoftTlb::slot`]) through the slow path, or of every slot: what taking the dirty log
    /// asks for (see [`crate::dirty`]).
    pub fn protect_write_slots(&mut self, slots: &crate::ProtectSlots) {
        match slots {
            crate::ProtectSlots::Slots(list) => {
                for &s in list {
                    let s = usize::from(s);
                    if let Some(e) = self.sets.get_mut(s / TLB_ENTRIES).and_then(|set| set.get_mut(s % TLB_ENTRIES)) {
                        e.write_tag |= TLB_SLOW;
                    }
                }
            }
            crate::ProtectSlots::All => {
                for e in self.sets.iter_mut().flat_map(|s| s.iter_mut()) {
                    e.write_tag |= TLB_SLOW;
                }
            }
        }
    }

    /// The slot number of `linear`'s entry for `user` (as [`crate::DirtyLog::granted`] takes it).
    #[inline]
    pub fn slot(user: bool, linear: u64) -> usize {
        user as usize * TLB_ENTRIES + Self::index(linear)
    }

    /// Forces writes to a backing page through the slow path (it now holds cached code).
    pub fn protect_backing_page(&mut self, backing_page_addr: u64) {
        for e in self.sets.iter_mut().flat_map(|s| s.iter_mut()) {
            if e.write_tag & (TLB_INVALID | TLB_SLOW) == 0
                && ((e.write_tag & PAGE_MASK).wrapping_add(e.addend).wrapping_sub(self.host_base) & PAGE_MASK)
                    == backing_page_addr
            {
                e.write_tag |= TLB_SLOW;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl SoftTlb {
        fn entry_for_test(&self, lin: u64) -> &TlbEntry {
            &self.sets[0][Self::index(lin)]
        }
    }

    fn ent(lin: u64, backing: u64, write_flags: u64) -> TlbEntry {
        TlbEntry { read_tag: lin, write_tag: lin | write_flags, exec_tag: lin, addend: backing.wrapping_sub(lin) }
    }

    #[test]
    fn test_tlb_fast_path_and_page_cross() {
        let mut t = SoftTlb::default();
        let lin = 0x7000_1000u64;
        t.fill(false, lin, ent(lin, 0x5000, TLB_SLOW), TlbSide::new(0x5000, false, 12));
        assert_eq!(t.lookup(false, TlbAccess::Read, lin + 0x10, 4), Some(0x5010));
        assert_eq!(t.lookup(false, TlbAccess::Read, lin + 0xFFC, 4), Some(0x5FFC));
        assert_eq!(t.lookup(false, TlbAccess::Read, lin + 0xFFD, 4), None, "crosses the page");
        assert_eq!(t.lookup(false, TlbAccess::Write, lin, 1), None, "slow flag forces slow path");
        assert_eq!(t.lookup(true, TlbAccess::Read, lin, 1), None, "user set is separate");
        assert_eq!(t.side(false, lin).phys_page, 0x5000);
        t.flush_page(lin + 0x123);
        assert_eq!(t.lookup(false, TlbAccess::Read, lin, 1), None);
    }

    #[test]
    fn test_tlb_protect_backing_page() {
        let mut t = SoftTlb::default();
        let lin = 0x40_0000u64;
        t.fill(false, lin, ent(lin, 0x9000, 0), TlbSide::new(0x9000, true, 12));
        assert!(t.lookup(false, TlbAccess::Write, lin, 8).is_some());
        t.protect_backing_page(0x9000);
        assert!(t.lookup(false, TlbAccess::Write, lin, 8).is_none());
        assert!(t.lookup(false, TlbAccess::Read, lin, 8).is_some());
        t.flush_non_global();
        assert!(t.lookup(false, TlbAccess::Read, lin, 8).is_some(), "global survives");
        t.flush_all();
        assert!(t.lookup(false, TlbAccess::Read, lin, 8).is_none());
    }

    #[test]
    fn test_tlb_protect_write_slots() {
        let mut t = SoftTlb::default();
        let (a, b) = (0x40_0000u64, 0x41_0000u64);
        t.fill(false, a, ent(a, 0x9000, 0), TlbSide::new(0x9000, false, 12));
        t.fill(true, b, ent(b, 0xA000, 0), TlbSide::new(0xA000, false, 12));
        t.protect_write_slots(&crate::ProtectSlots::Slots(vec![SoftTlb::slot(true, b) as u16]));
        assert!(t.lookup(false, TlbAccess::Write, a, 4).is_some(), "other slots keep fast writes");
        assert!(t.lookup(true, TlbAccess::Write, b, 4).is_none());
        assert!(t.lookup(true, TlbAccess::Read, b, 4).is_some(), "reads stay fast");
        t.protect_write_slots(&crate::ProtectSlots::All);
        assert!(t.lookup(false, TlbAccess::Write, a, 4).is_none());
        assert!(t.lookup(false, TlbAccess::Exec, a, 1).is_some());
    }

    #[test]
    fn test_tlb_flushes_drop_filled_entries_and_keep_globals() {
        let mut t = SoftTlb::default();
        let (g, n) = (0x1000u64, 0x2000u64);
        // Many flushes: entries filled before a flush never match after it, global ones always
        // do across non-global flushes, and the list of filled slots stays small.
        for round in 0..5000u64 {
            t.fill(false, g, ent(g, 0x3000, 0), TlbSide::new(0x3000, true, 12));
            t.fill(true, n, ent(n, 0x4000, 0), TlbSide::new(0x4000, false, 12));
            t.fill(true, n, ent(n, 0x4000, 0), TlbSide::new(0x4000, false, 12));
            assert!(t.lookup(true, TlbAccess::Read, n, 1).is_some());
            t.flush_non_global();
            assert!(t.lookup(true, TlbAccess::Read, n, 1).is_none(), "round {round}");
            assert!(t.lookup(false, TlbAccess::Read, g, 1).is_some(), "round {round}");
            assert!(t.filled.len() <= 2, "round {round}: {} slots listed", t.filled.len());
        }
        // An INVLPG'd global slot is dropped from the list by the next flush.
        t.flush_page(g);
        t.flush_non_global();
        assert!(t.filled.is_empty());
        t.fill(false, g, ent(g, 0x3000, 0), TlbSide::new(0x3000, true, 12));
        t.flush_all();
        assert!(t.lookup(false, TlbAccess::Read, g, 1).is_none(), "flush_all drops global entries");
        assert!(t.sets.iter().flatten().all(|e| *e == TlbEntry::EMPTY), "flush_all empties every slot");
    }

    #[test]
    fn test_tlb_host_base_moves_addends_not_backing_offsets() {
        let mut t = SoftTlb::default();
        t.set_host_base(0x7f00_0000_0000);
        let lin = 0x40_1000u64;
        t.fill(false, lin, ent(lin, 0x9000, 0), TlbSide::new(0x9000, false, 12));
        assert_eq!(t.entry_for_test(lin).addend, 0x7f00_0000_9000u64.wrapping_sub(lin), "host addend");
        assert_eq!(t.lookup(false, TlbAccess::Read, lin + 8, 4), Some(0x9008));
        t.set_host_base(0x5500_0000_0000);
        assert_eq!(t.entry_for_test(lin).addend, 0x5500_0000_9000u64.wrapping_sub(lin), "moved with the base");
        assert_eq!(t.lookup(false, TlbAccess::Read, lin + 8, 4), Some(0x9008), "same backing offset");
        t.protect_backing_page(0x9000);
        assert!(t.lookup(false, TlbAccess::Write, lin, 4).is_none(), "found by its backing page");
    }

    #[test]
    fn test_tlb_invlpg_drops_every_piece_of_a_large_page() {
        let mut t = SoftTlb::default();
        // Three 4 KiB pieces of the 2 MiB page at 0x20_0000, one of the next large page, and a
        // small page inside the same range of slots.
        for off in [0x0u64, 0x1000, 0x1F_F000] {
            let lin = 0x20_0000 + off;
            t.fill(false, lin, ent(lin, 0x80_0000 + off, 0), TlbSide::new(0x80_0000 + off, false, 21));
        }
        t.fill(false, 0x40_2000, ent(0x40_2000, 0x2000, 0), TlbSide::new(0x2000, false, 21));
        t.fill(false, 0x50_3000, ent(0x50_3000, 0x3000, 0), TlbSide::new(0x3000, false, 12));
        t.flush_page(0x20_1234);
        for off in [0x0u64, 0x1000, 0x1F_F000] {
            assert!(t.lookup(false, TlbAccess::Read, 0x20_0000 + off, 1).is_none(), "{off:#x}");
        }
        assert!(t.lookup(false, TlbAccess::Read, 0x40_2000, 1).is_some(), "other large page kept");
        assert!(t.lookup(false, TlbAccess::Read, 0x50_3000, 1).is_some(), "small page kept");
    }
}
