//! The soft TLB: one entry format shared by the interpreter and the (future) JIT.
//!
//! Each entry caches one 4 KiB linear page for one privilege class (supervisor or user). It has a
//! separate tag per access kind, in QEMU's softmmu style:
//!
//! ```text
//! read_tag / write_tag / exec_tag = linear page address (bits 63..12) | flag bits (11..0)
//! addend                          = backing offset of the page - linear page address (wrapping)
//! ```
//!
//! The fast path for an access of `size` bytes at linear address `a` is one mask-and-compare:
//!
//! ```text
//! if tag == (a & PAGE_MASK) && (a & 0xFFF) + size <= 0x1000 {  backing = a + addend  }
//! ```
//!
//! Any flag bit in the tag makes the compare fail, so these cases fall to the slow path without
//! a separate test: an invalid entry ([`TLB_INVALID`]), an MMIO page, a write to ROM, a write to a
//! page holding cached code (self-modifying code detection), and a write that must still set the
//! page-table dirty bit ([`TLB_SLOW`] for all of those). Generated code adds the host base of the
//! backing mapping to `backing` to get a host pointer.

use crate::PAGE_MASK;

/// Number of entries per privilege class (direct-mapped by linear page number).
pub const TLB_ENTRIES: usize = 256;
/// Tag flag: the entry holds nothing.
pub const TLB_INVALID: u64 = 1;
/// Tag flag: the translation is known but this access kind must take the slow path.
pub const TLB_SLOW: u64 = 2;

/// One cached translation. `#[repr(C)]` so generated code can address its fields.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlbEntry {
    /// Tag checked by data reads.
    pub read_tag: u64,
    /// Tag checked by data writes.
    pub write_tag: u64,
    /// Tag checked by instruction fetches.
    pub exec_tag: u64,
    /// Backing offset minus linear page address (wrapping arithmetic).
    pub addend: u64,
    /// Physical page address of the translation (for slow paths and code tracking).
    pub phys_page: u64,
    /// Whether the translation came from a global page (survives CR3 reloads).
    pub global: bool,
}

impl TlbEntry {
    /// An entry that matches nothing.
    pub const EMPTY: TlbEntry = TlbEntry {
        read_tag: TLB_INVALID,
        write_tag: TLB_INVALID,
        exec_tag: TLB_INVALID,
        addend: 0,
        phys_page: 0,
        global: false,
    };
}

/// Counters of why accesses left the fast path.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlbStats {
    /// Lookups that found no entry and walked the page tables.
    pub misses: u64,
    /// Full flushes (CR3 writes, mode changes).
    pub flushes: u64,
}

/// Two direct-mapped sets: index 0 for supervisor accesses, 1 for user accesses.
#[repr(C)]
#[derive(Debug, Clone)]
pub struct SoftTlb {
    /// `sets[user as usize][index(page)]`.
    pub sets: [[TlbEntry; TLB_ENTRIES]; 2],
    /// Slow-path counters.
    pub stats: TlbStats,
}

impl Default for SoftTlb {
    fn default() -> Self {
        SoftTlb { sets: [[TlbEntry::EMPTY; TLB_ENTRIES]; 2], stats: TlbStats::default() }
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
        if tag == (linear & PAGE_MASK) && (linear & 0xFFF) + size <= 0x1000 {
            Some(linear.wrapping_add(e.addend))
        } else {
            None
        }
    }

    /// The entry for `linear`, whatever its tags say.
    pub fn entry(&self, user: bool, linear: u64) -> &TlbEntry {
        &self.sets[user as usize][Self::index(linear)]
    }

    /// Installs an entry for the page of `linear`.
    pub fn fill(&mut self, user: bool, linear: u64, entry: TlbEntry) {
        self.sets[user as usize][Self::index(linear)] = entry;
    }

    /// Drops every entry.
    pub fn flush_all(&mut self) {
        self.stats.flushes += 1;
        for set in &mut self.sets {
            set.fill(TlbEntry::EMPTY);
        }
    }

    /// Drops every non-global entry (a CR3 write with CR4.PGE set).
    pub fn flush_non_global(&mut self) {
        self.stats.flushes += 1;
        for e in self.sets.iter_mut().flat_map(|s| s.iter_mut()) {
            if !e.global {
                *e = TlbEntry::EMPTY;
            }
        }
    }

    /// Drops the entries for one linear page (INVLPG).
    pub fn flush_page(&mut self, linear: u64) {
        let i = Self::index(linear);
        for set in &mut self.sets {
            set[i] = TlbEntry::EMPTY;
        }
    }

    /// Forces writes to a backing page through the slow path (it now holds cached code).
    pub fn protect_backing_page(&mut self, backing_page_addr: u64) {
        for e in self.sets.iter_mut().flat_map(|s| s.iter_mut()) {
            if e.write_tag & (TLB_INVALID | TLB_SLOW) == 0
                && (e.write_tag.wrapping_add(e.addend) & PAGE_MASK) == backing_page_addr
            {
                e.write_tag |= TLB_SLOW;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_tlb_fast_path_and_page_cross() {
        let mut t = SoftTlb::default();
        let lin = 0x7000_1000u64;
        t.fill(
            false,
            lin,
            TlbEntry {
                read_tag: lin,
                write_tag: lin | TLB_SLOW,
                exec_tag: lin,
                addend: 0x5000u64.wrapping_sub(lin),
                phys_page: 0x5000,
                global: false,
            },
        );
        assert_eq!(t.lookup(false, TlbAccess::Read, lin + 0x10, 4), Some(0x5010));
        assert_eq!(t.lookup(false, TlbAccess::Read, lin + 0xFFC, 4), Some(0x5FFC));
        assert_eq!(t.lookup(false, TlbAccess::Read, lin + 0xFFD, 4), None, "crosses the page");
        assert_eq!(t.lookup(false, TlbAccess::Write, lin, 1), None, "slow flag forces slow path");
        assert_eq!(t.lookup(true, TlbAccess::Read, lin, 1), None, "user set is separate");
        t.flush_page(lin + 0x123);
        assert_eq!(t.lookup(false, TlbAccess::Read, lin, 1), None);
    }

    #[test]
    fn test_tlb_protect_backing_page() {
        let mut t = SoftTlb::default();
        let lin = 0x40_0000u64;
        t.fill(
            false,
            lin,
            TlbEntry {
                read_tag: lin,
                write_tag: lin,
                exec_tag: lin,
                addend: 0x9000u64.wrapping_sub(lin),
                phys_page: 0x9000,
                global: true,
            },
        );
        assert!(t.lookup(false, TlbAccess::Write, lin, 8).is_some());
        t.protect_backing_page(0x9000);
        assert!(t.lookup(false, TlbAccess::Write, lin, 8).is_none());
        assert!(t.lookup(false, TlbAccess::Read, lin, 8).is_some());
        t.flush_non_global();
        assert!(t.lookup(false, TlbAccess::Read, lin, 8).is_some(), "global survives");
        t.flush_all();
        assert!(t.lookup(false, TlbAccess::Read, lin, 8).is_none());
    }
}
