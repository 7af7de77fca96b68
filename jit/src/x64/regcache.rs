//! Guest general-purpose registers in host registers within a block.
//!
//! The guest registers a block uses most (32- and 64-bit operands) get one of six host
//! registers (callee-saved RBX, RBP, R15, saved by every block's prologue; caller-saved R11,
//! RSI, RDI, saved around the one call that keeps them, the lazy-flags helper). A cached
//! register is loaded from `CpuState` on its first use and written back (only if changed) before
//! anything outside the block can look at `CpuState`:
//!
//! - before every helper call (an interpreted instruction, the slow path of a memory access,
//!   which may fault and deliver an exception: the interpreter then sees exactly its own state);
//! - on every block exit, before control reaches the shared `out` epilogue or a chain slot (so
//!   `CpuState` is in sync at `out` and at every block entry: code after `out` and chained or
//!   looked-up blocks can rely on it);
//! - before an instruction the emitter runs on `CpuState` fields directly (8-bit high registers,
//!   forms not converted to [`Operand`]s), which also drops the cached copy.
//!
//! A host register always holds all 64 bits of its guest register: a 32-bit operation on it
//! zero-extends as the guest's does, an 8/16-bit one merges as the guest's does.

use super::{Assembler, Emitter};
use cpu::helpers::offsets;
use dynasmrt::{dynasm, DynasmApi};

/// The host registers that can hold guest registers (RBX, R11, RSI, RDI, RBP, R15; a self-loop
/// block keeps the first four for guest registers, RBP for the count and R15 for its countdown).
pub(super) const HOST_REGS: [u8; 6] = [3, 11, 6, 7, 5, 15];
/// The instruction count's host register in a self-loop block (R15 holds its countdown).
pub(super) const ICOUNT_HOST: u8 = 5;
/// Scratch host registers the emitters use (RAX, RCX, RDX).
pub(super) const RAX: u8 = 0;
pub(super) const RCX: u8 = 1;

/// Which guest registers live in which host registers, and their state at the current point of
/// the (linear) emission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct RegCache {
    /// Host register + 1 of guest register n (0: not cached); entry [`ICOUNT_SLOT`] is the
    /// instruction count (in a self-loop block).
    host: [u8; SLOTS],
    /// Guest registers whose host register holds the current value.
    pub(super) loaded: u32,
    /// Loaded guest registers whose `CpuState` copy is stale.
    pub(super) dirty: u32,
}

/// Slots: the 16 guest registers and the instruction count.
const SLOTS: usize = 17;
/// The slot of `CpuState::icount`.
pub(super) const ICOUNT_SLOT: usize = 16;

/// Slot of a `CpuState` byte offset inside `gpr` (AH..BH: byte 1 of their register) or of
/// `icount`.
pub(super) fn gpr_index(off: i32) -> Option<usize> {
    let base = offsets::GPR as i32;
    if off == offsets::ICOUNT as i32 {
        return Some(ICOUNT_SLOT);
    }
    (base..base + 16 * 8).contains(&off).then(|| ((off - base) / 8) as usize)
}

/// The `CpuState` offset of a slot.
pub(super) fn off_of(g: usize) -> i32 {
    if g == ICOUNT_SLOT {
        offsets::ICOUNT as i32
    } else {
        (offsets::GPR + 8 * g) as i32
    }
}

/// Whether `off` is a whole slot (not AH..BH).
fn whole(off: i32) -> Option<usize> {
    let g = gpr_index(off)?;
    (off_of(g) == off).then_some(g)
}

impl RegCache {
    /// Gives host registers to the guest registers used most (`uses[g]`: weighted count of
    /// register-operand uses the emitters can serve from a host register); only registers used
    /// at least `min_uses` times.
    pub(super) fn allocate(uses: &[u32; 16], min_uses: u32, pool: &[u8]) -> RegCache {
        let mut order: Vec<usize> = (0..16).filter(|&g| uses[g] >= min_uses).collect();
        order.sort_by_key(|&g| (std::cmp::Reverse(uses[g]), g));
        let mut c = RegCache::default();
        for (g, &h) in order.into_iter().zip(pool) {
            c.host[g] = h + 1;
        }
        c
    }

    /// Gives the instruction count host register `h`.
    pub(super) fn set_icount_host(&mut self, h: u8) {
        self.host[ICOUNT_SLOT] = h + 1;
    }

    /// The host register of guest register `g`, if it has one.
    pub(super) fn host_of(&self, g: usize) -> Option<u8> {
        self.host[g].checked_sub(1)
    }

    /// Guest registers that have a host register.
    pub(super) fn allocated(&self) -> u32 {
        (0..SLOTS).filter(|&g| self.host[g] != 0).fold(0, |m, g| m | 1 << g)
    }
}

/// `mov host, [r12 + off]` (64-bit).
pub(super) fn emit_load(ops: &mut Assembler, h: u8, off: i32) {
    dynasm!(ops ; .arch x64 ; mov Rq(h), QWORD [r12 + off]);
}

/// `mov [r12 + off], host` (64-bit).
pub(super) fn emit_store(ops: &mut Assembler, h: u8, off: i32) {
    dynasm!(ops ; .arch x64 ; mov QWORD [r12 + off], Rq(h));
}

/// An operand of a register form: a host register (cached guest register or scratch).
pub(super) type Operand = u8;

impl Emitter<'_> {
    /// Writes back the dirty cached registers in `mask` without changing the tracked state (for a
    /// path that leaves the block or calls the interpreter). Leaves the host flags alone.
    pub(super) fn writeback(&mut self, mask: u32) {
        self.writeback_state(self.regs, mask);
    }

    /// Writes back the registers dirty in the cache state `c` (a snapshot taken where a slow
    /// path branches off).
    pub(super) fn writeback_state(&mut self, c: RegCache, mask: u32) {
        for g in 0..SLOTS {
            if c.dirty & mask & (1 << g) != 0 {
                if let Some(h) = c.host_of(g) {
                    emit_store(self.ops, h, off_of(g));
                }
            }
        }
    }

    /// Writes back every dirty cached register (a side exit: the state tracked goes on).
    pub(super) fn writeback_all(&mut self) {
        self.writeback(u32::MAX);
    }

    /// The cache state as it is, with nothing loaded: code emitted on `CpuState` after a
    /// write-back (a slow path, an exit). Returns the state to put back afterwards.
    pub(super) fn regs_to_memory_mode(&mut self) -> RegCache {
        let keep = self.regs;
        self.regs.loaded = 0;
        self.regs.dirty = 0;
        keep
    }

    /// After a helper that may have changed any guest register: nothing cached is current.
    pub(super) fn forget_regs(&mut self) {
        self.regs.loaded = 0;
        self.regs.dirty = 0;
    }

    /// Loads the cached registers in `mask` from `CpuState` (after a slow path: the interpreter
    /// ran the instruction). Leaves the host flags alone.
    pub(super) fn reload(&mut self, mask: u32) {
        let c = self.regs;
        for g in 0..SLOTS {
            if mask & (1 << g) != 0 {
                if let Some(h) = c.host_of(g) {
                    emit_load(self.ops, h, off_of(g));
                }
            }
        }
    }

    /// Before an instruction emitted on `CpuState` fields: writes back and drops the cached
    /// copies of the guest registers in `mask`.
    pub(super) fn spill(&mut self, mask: u32) {
        self.writeback(mask);
        self.regs.loaded &= !mask;
        self.regs.dirty &= !mask;
    }

    /// The host register holding guest register `off` (a full 64-bit register offset) for a
    /// read, loading it if needed; `None` if it is not cached.
    pub(super) fn cached(&mut self, off: i32) -> Option<u8> {
        let g = whole(off)?;
        let h = self.regs.host_of(g)?;
        if self.regs.loaded & (1 << g) == 0 {
            emit_load(self.ops, h, off);
            self.regs.loaded |= 1 << g;
        }
        Some(h)
    }

    /// Whether guest register `off` (a whole register) has a host register (no code emitted).
    pub(super) fn has_host(&self, off: i32) -> bool {
        whole(off).is_some_and(|g| self.regs.host_of(g).is_some())
    }

    /// The host register of guest register `off` for a write of 32 or 64 bits (no load: the
    /// write defines all 64 bits); marks it dirty. `None` if not cached.
    pub(super) fn cached_def(&mut self, off: i32) -> Option<u8> {
        let g = whole(off)?;
        let h = self.regs.host_of(g)?;
        self.regs.loaded |= 1 << g;
        self.regs.dirty |= 1 << g;
        Some(h)
    }

    /// Marks the cached guest register `off` changed (after a read-modify-write through the
    /// register [`Self::cached`] returned).
    pub(super) fn set_dirty(&mut self, off: i32) {
        if let Some(g) = gpr_index(off) {
            if self.regs.host_of(g).is_some() {
                self.regs.dirty |= 1 << g;
            }
        }
    }

    /// A source operand as a host register: the cached one, or loaded (64 bits) into `scratch`.
    pub(super) fn src(&mut self, off: i32, scratch: u8) -> Operand {
        match self.cached(off) {
            Some(h) => h,
            None => {
                emit_load(self.ops, scratch, off);
                scratch
            }
        }
    }

    /// A destination read and written: the cached register, or RAX loaded with the guest
    /// register (finish with [`Self::dst_end`]).
    pub(super) fn dst_begin(&mut self, off: i32) -> Operand {
        self.src(off, RAX)
    }

    /// A destination only written (32 or 64 bits): the cached register, or RAX.
    pub(super) fn def_begin(&mut self, off: i32) -> Operand {
        self.cached_def(off).unwrap_or(RAX)
    }

    /// Ends a destination write: stores RAX (all 64 bits) if the register is not cached, else
    /// marks it changed.
    pub(super) fn dst_end(&mut self, off: i32, r: Operand) {
        if r == RAX {
            emit_store(self.ops, RAX, off);
        } else {
            self.set_dirty(off);
        }
    }

    /// Around a call to a Rust helper that leaves the guest registers alone (the lazy-flags
    /// helper): pushes the loaded caller-saved cached registers (and a pad to keep RSP 16-byte
    /// aligned); returns them for [`Self::restore_caller_saved`].
    pub(super) fn save_caller_saved(&mut self) -> Vec<u8> {
        let c = self.regs;
        let mut saved: Vec<u8> = (0..SLOTS)
            .filter(|&g| c.loaded & (1 << g) != 0)
            .filter_map(|g| c.host_of(g))
            .filter(|h| matches!(h, 11 | 6 | 7))
            .collect();
        // A probe group's addend (see `ProbeRole`), when members still use it.
        if self.r10_live() {
            saved.push(10);
        }
        saved.sort_unstable();
        for &h in &saved {
            dynasm!(self.ops ; .arch x64 ; push Rq(h));
        }
        if saved.len() % 2 == 1 {
            dynasm!(self.ops ; .arch x64 ; lea rsp, [rsp - 8]);
        }
        saved
    }

    pub(super) fn restore_caller_saved(&mut self, saved: &[u8]) {
        if saved.len() % 2 == 1 {
            dynasm!(self.ops ; .arch x64 ; lea rsp, [rsp + 8]);
        }
        for &h in saved.iter().rev() {
            dynasm!(self.ops ; .arch x64 ; pop Rq(h));
        }
    }
}
