//! Debug registers and the debug exception (#DB), Intel SDM vol. 3B chapter 17.
//!
//! - DR0-DR3 hold breakpoint linear addresses; DR7 enables them (L0-G3, bits 0-7) and gives each
//!   a condition (R/W, 2 bits at 16 + 4n: 00 execute, 01 write, 10 I/O with CR4.DE, 11 read or
//!   write) and a length (LEN, 2 bits at 18 + 4n: 1, 2, 8 or 4 bytes). DR6 reports what hit:
//!   B0-B3 (bits 0-3), BD (13, general detect), BS (14, single step).
//! - Instruction breakpoints are faults, checked before the instruction unless EFLAGS.RF = 1.
//!   Data and I/O breakpoints and single-step (TF) are traps, delivered after the instruction.
//! - RF is cleared once an instruction passes the breakpoint check; fault-class exceptions push
//!   RF = 1 (see `Cx::raise`), so an IRET from their handler does not break again.
//! - MOV SS and POP SS hold debug traps back until the next instruction has executed.
//! - DR7.GD makes any MOV to or from a debug register a #DB fault with DR6.BD, clearing GD.
//! - With CR4.DE = 1, DR4 and DR5 are #UD; with CR4.DE = 0 they alias DR6 and DR7.
//!
//! Cost: nothing on the hot path. While TF, RF, an enable bit of DR7 or a deferred trap is set,
//! every fetch takes the slow path (the instructions that can set them do not keep the fetch
//! page, and each debug-checked instruction drops it), where [`Cx::debug_before`] runs; it
//! flags the instruction so that `step_one`'s existing post-instruction check calls
//! [`Cx::debug_after`]. Data breakpoints cost nothing on the memory fast path either: TLB
//! entries of a watched page are filled with slow read/write tags, so only accesses to that
//! page reach the check in the slow path.

use super::Cx;
use crate::exception::Exception;
use crate::state::{cr, rflags, CpuMode, SegReg};

/// DR6: breakpoint condition bits B0-B3.
pub(crate) const DR6_B: u64 = 0xF;
/// DR6: debug-register access detected (general detect).
pub(crate) const DR6_BD: u64 = 1 << 13;
/// DR6: single step.
pub(crate) const DR6_BS: u64 = 1 << 14;
/// DR6 bits that always read as 1 (bits 4-11 and 16-31; bit 12 reads 0).
const DR6_FIXED1: u64 = 0xFFFF_0FF0;
/// DR7: general detect enable.
const DR7_GD: u64 = 1 << 13;
/// DR7 bits that always read as 1.
const DR7_FIXED1: u64 = 1 << 10;
/// DR7 bits that always read as 0 (11, 12, 14, 15).
const DR7_FIXED0: u64 = 0xD800;

/// The condition of breakpoint `n` in DR7.
fn rw(dr7: u64, n: usize) -> u64 {
    (dr7 >> (16 + 4 * n)) & 3
}

/// The length in bytes of breakpoint `n` in DR7.
fn len(dr7: u64, n: usize) -> u64 {
    match (dr7 >> (18 + 4 * n)) & 3 {
        0 => 1,
        1 => 2,
        2 => 8,
        _ => 4,
    }
}

/// Whether breakpoint `n` is enabled (locally or globally).
fn enabled(dr7: u64, n: usize) -> bool {
    dr7 & (3 << (2 * n)) != 0
}

impl Cx<'_> {
    /// Whether the next instruction must go through [`Self::debug_before`]: TF or RF set, a
    /// DR7 enable bit set, or a trap deferred by MOV SS.
    #[inline]
    pub(crate) fn debug_wanted(&self) -> bool {
        self.dbg_enabled
            && (self.cpu.rflags & (rflags::TF | rflags::RF) != 0
                || self.cpu.dr[7] & 0xFF != 0
                || self.dbg_deferred != 0)
    }

    /// Called from the slow fetch at the start of an instruction when [`Self::debug_wanted`]:
    /// the instruction-breakpoint check (a fault), then RF is cleared and the state for the
    /// traps after the instruction is set up; [`Self::debug_after`] finishes it.
    #[cold]
    pub(crate) fn debug_before(&mut self) -> Result<(), Exception> {
        let start = self.cpu.rflags;
        let dr7 = self.cpu.dr[7];
        // Instruction breakpoints: not with RF set, and not right after MOV SS (its traps are
        // still pending then, and the SDM lets the breakpoint be missed).
        if start & rflags::RF == 0 && self.dbg_deferred == 0 && dr7 & 0xFF != 0 {
            let hits = self.exec_breakpoint_hits(dr7);
            if hits != 0 {
                self.cpu.dr[6] = (self.cpu.dr[6] & !DR6_B) | hits | DR6_FIXED1;
                return Err(Exception::Debug);
            }
        }
        self.cpu.rflags &= !rflags::RF;
        self.dbg_hits = 0;
        self.dbg_ss_loaded = false;
        self.dbg_soft_int = false;
        self.dbg_step = start & rflags::TF != 0;
        self.dbg_live = true;
        // Single-stepping a REP string instruction traps after each iteration: the budget ends
        // after one, leaving RIP at the instruction (and RF = 1) until the last.
        self.dbg_budget_end = self.budget_end;
        if self.dbg_step {
            self.budget_end = self.budget_end.min(self.cpu.icount + 1);
        }
        // Makes `step_one` call `debug_after` once the instruction is done.
        self.mode_changed = true;
        Ok(())
    }

    /// After an instruction that [`Self::debug_before`] started (`completed`: it did not
    /// fault): the single-step, data- and I/O-breakpoint traps (a #DB to deliver, with RIP at
    /// the next instruction), or their deferral by MOV SS/POP SS. The next instruction's fetch
    /// takes the slow path again.
    #[cold]
    #[inline(never)]
    pub(crate) fn debug_after(&mut self, completed: bool) -> Option<Exception> {
        self.dbg_live = false;
        self.budget_end = self.dbg_budget_end;
        self.fetch_lin_page = u64::MAX;
        if !completed {
            // The instruction faulted: its breakpoint hits and single step do not count.
            return None;
        }
        let mut bits = std::mem::take(&mut self.dbg_deferred) | self.dbg_hits;
        if self.dbg_step && !self.dbg_soft_int {
            bits |= DR6_BS;
        }
        if self.dbg_ss_loaded {
            // MOV SS / POP SS: these traps come after the next instruction.
            self.dbg_deferred = bits;
            return None;
        }
        if bits == 0 {
            return None;
        }
        // B0-B3 report this event's breakpoints; BS and BD accumulate (SDM 17.2.3).
        let b = if bits & DR6_B != 0 { bits & DR6_B } else { self.cpu.dr[6] & DR6_B };
        self.cpu.dr[6] = (self.cpu.dr[6] & !DR6_B) | b | (bits & (DR6_BS | DR6_BD)) | DR6_FIXED1;
        // A trap: RIP already points at the next instruction.
        Some(Exception::Debug)
    }

    /// DR6 B bits of enabled execute breakpoints at the linear address of CS:RIP.
    fn exec_breakpoint_hits(&self, dr7: u64) -> u64 {
        let rip = self.cpu.rip;
        let lin = if self.mode == CpuMode::Long64 {
            rip
        } else {
            self.cpu.seg[SegReg::Cs as usize].base.wrapping_add(rip) & 0xFFFF_FFFF
        };
        let mut hits = 0;
        for n in 0..4 {
            if enabled(dr7, n) && rw(dr7, n) == 0 && self.cpu.dr[n] == lin {
                hits |= 1 << n;
            }
        }
        hits
    }

    /// Records enabled data breakpoints that `size` bytes at `lin` touch.
    pub(crate) fn data_breakpoint_check(&mut self, lin: u64, size: usize, write: bool) {
        let dr7 = self.cpu.dr[7];
        for n in 0..4 {
            let cond = rw(dr7, n);
            if !enabled(dr7, n) || !(cond == 3 || (cond == 1 && write)) {
                continue;
            }
            let l = len(dr7, n);
            let start = self.cpu.dr[n] & !(l - 1);
            if lin < start.wrapping_add(l) && start < lin.wrapping_add(size as u64) {
                self.dbg_hits |= 1 << n;
            }
        }
    }

    /// Records enabled I/O breakpoints (CR4.DE = 1, R/W = 10) that an access of `size` bytes at
    /// `port` touches.
    pub(crate) fn io_breakpoint_check(&mut self, port: u16, size: usize) {
        let dr7 = self.cpu.dr[7];
        if dr7 & 0xFF == 0 || self.cpu.cr4 & cr::CR4_DE == 0 {
            return;
        }
        let p = u64::from(port);
        for n in 0..4 {
            if !enabled(dr7, n) || rw(dr7, n) != 2 {
                continue;
            }
            let l = len(dr7, n);
            let start = self.cpu.dr[n] & 0xFFFF & !(l - 1);
            if p < start + l && start < p + size as u64 {
                self.dbg_hits |= 1 << n;
            }
        }
    }

    /// Whether an enabled data breakpoint lies in the 4 KiB linear page `page`: TLB entries for
    /// it must keep their read and write tags slow.
    pub(crate) fn page_watched(&self, page: u64) -> bool {
        let dr7 = self.cpu.dr[7];
        if dr7 & 0xFF == 0 {
            return false;
        }
        (0..4).any(|n| {
            let cond = rw(dr7, n);
            enabled(dr7, n) && (cond == 1 || cond == 3) && {
                let l = len(dr7, n);
                let start = self.cpu.dr[n] & !(l - 1);
                start & mmu::PAGE_MASK == page || start.wrapping_add(l - 1) & mmu::PAGE_MASK == page
            }
        })
    }

    /// MOV from DRn.
    pub(crate) fn read_dr(&mut self, n: usize) -> Result<u64, Exception> {
        self.debug_register_access(n)?;
        Ok(match n {
            0..=3 => self.cpu.dr[n],
            4 | 6 => self.cpu.dr[6] | DR6_FIXED1,
            _ => (self.cpu.dr[7] | DR7_FIXED1) & !DR7_FIXED0,
        })
    }

    /// MOV to DRn.
    pub(crate) fn write_dr(&mut self, n: usize, v: u64) -> Result<(), Exception> {
        self.debug_register_access(n)?;
        match n {
            0..=3 => self.cpu.dr[n] = v,
            _ => {
                // 64-bit mode: the upper 32 bits of DR6 and DR7 must be written as 0.
                if v >> 32 != 0 {
                    return Err(Exception::GeneralProtection(0));
                }
                if n == 4 || n == 6 {
                    self.cpu.dr[6] = (v & !(1 << 12)) | DR6_FIXED1;
                } else {
                    self.cpu.dr[7] = (v | DR7_FIXED1) & !DR7_FIXED0;
                }
            }
        }
        // Watched pages change: drop translations that may have fast read/write tags.
        self.cpu.tlb.flush_all();
        self.fetch_lin_page = u64::MAX;
        Ok(())
    }

    /// The checks shared by MOV to and from a debug register (after the CPL check).
    fn debug_register_access(&mut self, n: usize) -> Result<(), Exception> {
        if (n == 4 || n == 5) && self.cpu.cr4 & cr::CR4_DE != 0 {
            return Err(Exception::InvalidOpcode);
        }
        if self.cpu.dr[7] & DR7_GD != 0 {
            // General detect: a fault, DR6.BD set, GD cleared so the handler can use the
            // registers. Fault-class, so the pushed RF is 1.
            self.cpu.dr[7] &= !DR7_GD;
            self.cpu.dr[6] |= DR6_BD | DR6_FIXED1;
            self.cpu.rflags |= rflags::RF;
            return Err(Exception::Debug);
        }
        Ok(())
    }
}
