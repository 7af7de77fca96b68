//! In-code lookup of the next block (QEMU's `lookup_and_goto_ptr`).
//!
//! A block exit whose target is not chained (RET, JMP/CALL through a register or memory, a
//! direct branch into another guest page) used to return to the dispatcher, which popped the
//! block frame, ran its loop (gate checks, mode key, TLB, jump cache) and pushed the frame again
//! for the next block. Such exits now jump (`jmp [r14 + STUB]`, with `CpuState` exact: guest
//! registers, flags, RIP and count written back) to one shared stub, emitted once per cache:
//!
//! ```text
//! checked:  if eax != BLOCK_END: epilogue            ; entry 0: helper exits, plain exits
//!           jmp miss                                  ; (exit code in EAX)
//! stub:  if !table.on: leave                          ; block stepping, FERRO_JIT_LOOKUP=0 at run
//!        eax = cpu.mode_key; if !(eax & FLAT): miss   ; flat: CS base 0, linear = RIP
//!        if cpu.irq_pending: miss                     ; (Rust decides with IF, shadow, ...)
//!        rcx = cpu.rip; soft-TLB exec probe (set of cpu.cpl == 3) else miss; rcx = backing
//!        e = jc[hash(rcx, eax)]; if e.backing != rcx || e.mode != eax: miss
//!        table.hits += 1; jmp e.body_ptr             ; the body checks the budget itself
//! miss:  rax = table.lookup(cpu, env, table)          ; the dispatcher's gate + find, in Rust
//!        if rax != 0: jmp rax
//! leave: eax = BLOCK_END; the block epilogue; ret     ; to the dispatcher
//! ```
//!
//! Every other exit that would return `BLOCK_END` to the dispatcher (a helper that did not
//! fall through: a branch, a fault, an interrupt, I/O, a store into code, a mode change; POPF,
//! STI, MOV SS; an instruction crossing into the next page, run through the helper) goes
//! through the `checked` entry: the state may be anything the dispatcher checks (TF after
//! POPF, an interrupt shadow, a queued invalidation, a new mode), so the inline probe is
//! skipped and [`lookup`] runs all of the dispatcher's checks, returning to it if any fails.
//!
//! Every block shares the frame the prologue pushes, so any body can be entered from any exit.
//! The Rust side ([`lookup`]) runs the very checks the dispatcher makes between blocks
//! ([`super::gate`]) and the same search ([`super::block_for`], never flushing: a full cache
//! returns to the dispatcher, so the code the stub returns into is never overwritten).
//!
//! Why the inline path needs no more checks than IRQ pending: a block is entered only with no
//! interrupt due, no debug feature armed, no interrupt shadow and no code invalidation queued
//! (the dispatcher or [`lookup`] checked), and inside it a helper returns `CONTINUE` only if it
//! left all of that so (`helper_step`); instructions that change IF, TF, DR7 or the shadow end
//! their block through the plain exit. Chained jumps rely on the same rule.

// dynasm's dynamic registers expand to `.into()` calls.
#![allow(clippy::useless_conversion)]

use super::{block_for, emit_epilogue, gate, Assembler, CodeCache, HelperTable, ENV, TLB_IDX_MASK, TLB_USER_SET};
use crate::profile::Profile;
use crate::JitStats;
use cpu::helpers::{exit, offsets, HelperEnv};
use cpu::CpuState;
use dynasmrt::{dynasm, DynasmApi, DynasmLabelApi};
use std::mem::offset_of;

/// Entries of the jump cache (shared by the dispatcher and the stub).
pub(crate) const JC_SIZE: usize = 16384;

/// One jump-cache entry: the key (backing offset, mode key) and where the block is.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JcEntry {
    /// Backing offset of the block's first instruction.
    pub(crate) backing: u64,
    /// Mode key, zero-extended; `u64::MAX` (no mode key) for an empty entry.
    pub(crate) mode: u64,
    /// Host address of the block's body (after the prologue).
    pub(crate) body_ptr: u64,
    /// Offset of the block's entry in the code buffer.
    pub(crate) entry: u32,
    /// Offset of the block's body in the code buffer.
    pub(crate) body: u32,
}

const _: () = assert!(std::mem::size_of::<JcEntry>() == 32);

impl JcEntry {
    /// Matches no key.
    pub(crate) const EMPTY: JcEntry = JcEntry { backing: u64::MAX, mode: u64::MAX, body_ptr: 0, entry: 0, body: 0 };

    /// Whether this entry holds `key`.
    pub(crate) fn holds(&self, key: (u64, u32)) -> bool {
        self.backing == key.0 && self.mode == u64::from(key.1)
    }
}

/// The jump-cache slot of `key` (the stub computes the same with host instructions).
pub(crate) fn jc_index(key: (u64, u32)) -> usize {
    ((key.0 ^ (key.0 >> 12) ^ (u64::from(key.1) << 7)) as usize) & (JC_SIZE - 1)
}

/// Whether blocks are emitted with the in-code lookup (`FERRO_JIT_LOOKUP=0` turns it off: the
/// exits then return to the dispatcher as before, for measuring and bisecting).
pub(crate) fn lookup_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("FERRO_JIT_LOOKUP").map_or(true, |v| v != "0"))
}

/// `[r14 + STUB]`: where block exits that look up the next block jump.
pub(crate) const STUB: i32 = offset_of!(HelperTable, stub) as i32;
/// `[r14 + STUB_CHECKED]`: the stub's entry straight to [`lookup`] (no inline probe).
pub(crate) const STUB_CHECKED: i32 = offset_of!(HelperTable, stub_checked) as i32;
const LOOKUP: i32 = offset_of!(HelperTable, lookup) as i32;
const JC: i32 = offset_of!(HelperTable, jc) as i32;
const HITS: i32 = offset_of!(HelperTable, hits) as i32;
const ON: i32 = offset_of!(HelperTable, on) as i32;
const MODE_KEY: i32 = offset_of!(CpuState, mode_key) as i32;
const CPL: i32 = offset_of!(CpuState, cpl) as i32;
const IRQ_PENDING: i32 = offsets::IRQ_PENDING as i32;
const RIP: i32 = offsets::RIP as i32;
const MEM_BASE: i32 = HelperEnv::MEM_BASE as i32;
/// Mode key bit 7: flat segments (CS base 0) or 64-bit mode.
const FLAT: i32 = 1 << 7;

const _: () = assert!(std::mem::size_of::<bool>() == 1);
const _: () = assert!(offset_of!(mmu::TlbEntry, exec_tag) == 16 && offset_of!(mmu::TlbEntry, addend) == 24);

/// The shared lookup stub (see the module doc), position-independent. Its entry at offset 0
/// goes straight to the Rust lookup (for exits after a helper, see
/// [`super::Emitter::leave_lookup_checked`]); returns the offset of the inline-probe entry.
pub(crate) fn emit_stub(ops: &mut Assembler) -> usize {
    let miss = ops.new_dynamic_label();
    let leave = ops.new_dynamic_label();
    let sup = ops.new_dynamic_label();
    let epilogue = ops.new_dynamic_label();
    dynasm!(ops
        ; .arch x64
        ; cmp eax, exit::BLOCK_END as i32
        ; jne =>epilogue
        ; jmp =>miss
    );
    let fast = ops.offset().0;
    let jc_mask = (JC_SIZE - 1) as i32;
    dynasm!(ops
        ; .arch x64
        ; cmp BYTE [r14 + ON], 0
        ; je =>leave
        ; mov eax, DWORD [r12 + MODE_KEY]
        ; test eax, FLAT
        ; jz =>miss
        ; cmp BYTE [r12 + IRQ_PENDING], 0
        ; jne =>miss
        ; mov rcx, QWORD [r12 + RIP]
        // The exec tag of the TLB entry for RIP's page (the set of CPL 3 for user code).
        ; mov edx, ecx
        ; shr edx, 7
        ; and edx, TLB_IDX_MASK
        ; cmp BYTE [r12 + CPL], 3
        ; jne =>sup
        ; add edx, TLB_USER_SET
        ; =>sup
        ; mov r8, rcx
        ; and r8, -4096
        ; cmp r8, QWORD [r13 + rdx + 16]
        ; jne =>miss
        // The addend is a host address: less the host base, the backing offset.
        ; add rcx, QWORD [r13 + rdx + 24]
        ; mov r8, QWORD [r14 + ENV]
        ; sub rcx, QWORD [r8 + MEM_BASE]
        // rcx = backing offset; the jump-cache slot as `jc_index` computes it.
        ; mov rdx, rcx
        ; shr rdx, 12
        ; xor rdx, rcx
        ; mov r8d, eax
        ; shl r8d, 7
        ; xor rdx, r8
        ; and edx, jc_mask
        ; shl edx, 5
        ; add rdx, QWORD [r14 + JC]
        ; cmp rcx, QWORD [rdx]
        ; jne =>miss
        ; cmp rax, QWORD [rdx + 8]
        ; jne =>miss
        ; add QWORD [r14 + HITS], 1
        ; jmp QWORD [rdx + 16]
        ; =>miss
        ; mov rdi, r12
        ; mov rsi, QWORD [r14 + ENV]
        ; mov rdx, r14
        ; call QWORD [r14 + LOOKUP]
        ; test rax, rax
        ; jz =>leave
        ; jmp rax
        ; =>leave
        ; mov eax, exit::BLOCK_END as i32
        // The epilogue every block has (the frame is shared); EAX = the exit code.
        ; =>epilogue
    );
    emit_epilogue(ops);
    fast
}

/// The Rust half of the lookup (a stub miss): the dispatcher's between-block checks, then its
/// block search (translating if needed); the body's host address, or null to return to the
/// dispatcher (which then does exactly what it would have done without the lookup).
///
/// # Safety
/// Called only from the stub, with the pointers the block received: `cpu` and `env` valid and
/// exclusive, `table` the run's table whose `cache`, `stats` and `profile` point at the
/// dispatcher's (not borrowed by the dispatcher while a block runs).
pub(crate) unsafe extern "sysv64" fn lookup(
    cpu: *mut CpuState,
    env: *mut HelperEnv<'_>,
    table: *mut HelperTable,
) -> *const u8 {
    // SAFETY: by the contract above, each pointer is valid and nothing else uses its target
    // during the call (generated code waits for the return).
    let (cpu, env, t) = unsafe { (&mut *cpu, &mut *env, &mut *table) };
    if t.on == 0 {
        return std::ptr::null();
    }
    t.misses += 1;
    // SAFETY: see the contract: the dispatcher derived these from its exclusive borrows just
    // before entering the block and does not touch them until the block returns.
    let (cache, stats, profile): (&mut CodeCache, &mut JitStats, &mut Option<Profile>) =
        unsafe { (&mut *t.cache, &mut *t.stats, &mut *t.profile) };
    if !gate(cpu, env.bus(), t.end) {
        return std::ptr::null();
    }
    match block_for(cache, stats, profile.as_mut(), cpu, env.bus(), false) {
        Ok((found, _)) => {
            t.found += 1;
            cache.code.as_ref().map_or(std::ptr::null(), |c| c.entry(found.body.0))
        }
        Err(_) => std::ptr::null(),
    }
}
