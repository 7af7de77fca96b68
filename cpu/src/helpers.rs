//! The helper ABI: the `extern "sysv64"` functions generated code calls, declared once.
//!
//! Every helper takes the CPU state and an environment pointer ([`HelperEnv`]: the interpreter
//! serving the helpers and the bus) and returns a `u32` exit code from [`exit`]. Generated code
//! reaches `CpuState` fields through the offsets in [`offsets`] (from `core::mem::offset_of!`,
//! checked at compile time against the widths the emitters use).

use crate::bus::CpuBus;
use crate::interp::Interpreter;
use crate::state::CpuState;
use std::marker::PhantomData;

/// Exit codes returned by helpers and by generated code.
pub mod exit {
    /// The instruction fell through to the next one: the block goes on.
    pub const CONTINUE: u32 = 0;
    /// The block must end here (branch taken, fault delivered, interrupt taken, I/O, code
    /// written, budget reached): the dispatcher looks up the next block.
    pub const BLOCK_END: u32 = 1;
    /// HLT with no interrupt deliverable.
    pub const HALTED: u32 = 2;
    /// A triple fault.
    pub const TRIPLE_FAULT: u32 = 3;
    /// A device asked the run to stop.
    pub const STOPPED: u32 = 4;
    /// Generated code: the block does not fit in the remaining budget (nothing was executed).
    pub const NO_BUDGET: u32 = 5;
}

/// Byte offsets of the `CpuState` fields generated code touches.
pub mod offsets {
    use crate::state::CpuState;
    use core::mem::{offset_of, size_of};

    /// `CpuState::gpr[0]`.
    pub const GPR: usize = offset_of!(CpuState, gpr);
    /// `CpuState::rip`.
    pub const RIP: usize = offset_of!(CpuState, rip);
    /// `CpuState::icount`.
    pub const ICOUNT: usize = offset_of!(CpuState, icount);
    /// `CpuState::budget_end`.
    pub const BUDGET_END: usize = offset_of!(CpuState, budget_end);
    /// `CpuState::irq_pending`.
    pub const IRQ_PENDING: usize = offset_of!(CpuState, irq_pending);
    /// `CpuState::tlb` (the fast-path entries are its first field).
    pub const TLB: usize = offset_of!(CpuState, tlb);
    /// `CpuState::rflags`.
    pub const RFLAGS: usize = offset_of!(CpuState, rflags);
    /// `CpuState::seg[0].base`; segment register `n`'s base is at `SEG_BASE + n * SEG_SIZE`.
    pub const SEG_BASE: usize = offset_of!(CpuState, seg) + offset_of!(crate::state::Segment, base);
    /// `size_of::<Segment>()`.
    pub const SEG_SIZE: usize = size_of::<crate::state::Segment>();
    /// `CpuState::msr.tsc_offset` (TSC = instruction count + this).
    pub const TSC_OFFSET: usize = offset_of!(CpuState, msr) + offset_of!(crate::state::Msrs, tsc_offset);
    /// `CpuState::fpu.xmm[0]`; XMM register `n` is the 16 bytes at `XMM + 16 * n`.
    pub const XMM: usize = offset_of!(CpuState, fpu) + offset_of!(crate::state::FpuState, xmm);
    /// `CpuState::lazy.mask` (which status flags are held lazily).
    pub const LAZY_MASK: usize = offset_of!(CpuState, lazy) + offset_of!(crate::flags::LazyFlags, mask);

    // The emitters use 64-bit loads for these and 8-bit loads for the flags.
    const _: () = assert!(size_of::<[u64; 16]>() == 128);
    const _: () =
        assert!(offset_of!(CpuState, icount).is_multiple_of(8) && offset_of!(CpuState, budget_end).is_multiple_of(8));
    const _: () = assert!(offset_of!(CpuState, rip).is_multiple_of(8) && offset_of!(CpuState, gpr).is_multiple_of(8));
    const _: () = assert!(offset_of!(CpuState, rflags).is_multiple_of(8) && LAZY_MASK.is_multiple_of(8));
    const _: () = assert!(size_of::<CpuState>() < i32::MAX as usize);
    const _: () = assert!(SEG_BASE.is_multiple_of(8) && SEG_SIZE.is_multiple_of(8));
    const _: () = assert!(TSC_OFFSET.is_multiple_of(8));
    const _: () = assert!(offset_of!(mmu::SoftTlb, sets) == 0);
}

/// What helpers need besides the CPU state: the interpreter that executes single instructions
/// and the bus. Lives on the stack of the engine's `run` for the duration of one run.
/// `#[repr(C)]`: generated code reads `mem_base` (offset [`HelperEnv::MEM_BASE`]).
#[repr(C)]
pub struct HelperEnv<'a> {
    /// Host address of guest backing offset 0 (soft-TLB addends are host addresses computed
    /// from it: the JIT's run sets it as the TLB's host base, see [`mmu::SoftTlb::set_host_base`]).
    pub mem_base: *mut u8,
    interp: *mut Interpreter,
    bus: *mut (dyn CpuBus + 'a),
    /// Log each instruction (`--trace`).
    pub trace: bool,
    /// Helper calls made (statistics).
    pub helper_calls: u64,
    _life: PhantomData<&'a mut ()>,
}

impl<'a> HelperEnv<'a> {
    /// An environment over `interp` and `bus`, both borrowed for the environment's life.
    pub fn new(interp: &'a mut Interpreter, bus: &'a mut dyn CpuBus, trace: bool) -> Self {
        let mem_base = bus.memory().host_base();
        HelperEnv { mem_base, interp, bus, trace, helper_calls: 0, _life: PhantomData }
    }

    /// Byte offset of `mem_base`.
    pub const MEM_BASE: usize = core::mem::offset_of!(HelperEnv<'static>, mem_base);

    /// The bus (between calls into generated code).
    pub fn bus(&mut self) -> &mut dyn CpuBus {
        // SAFETY: `bus` came from a `&'a mut dyn CpuBus` held for the environment's life, and
        // `&mut self` makes this the only reference derived from it while it lives.
        unsafe { &mut *self.bus }
    }

    /// Runs one step of the interpreter's run loop; see [`helper_step`].
    pub fn step(&mut self, cpu: &mut CpuState) -> u32 {
        self.helper_calls += 1;
        // SAFETY: both pointers came from exclusive borrows held for the environment's life;
        // `&mut self` makes these the only references derived from them while they live.
        let (interp, bus) = unsafe { (&mut *self.interp, &mut *self.bus) };
        interp.step_for_jit(cpu, bus, self.trace)
    }
}

/// Materializes the lazily held status flags into `CpuState::rflags` (generated code then reads
/// or loads them directly).
///
/// # Safety
/// `cpu` must be a valid, exclusive pointer for the duration of the call.
pub unsafe extern "sysv64" fn helper_flags(cpu: *mut CpuState) {
    // SAFETY: the caller guarantees the pointer is valid and not aliased during the call.
    let cpu = unsafe { &mut *cpu };
    let f = cpu.rflags();
    cpu.set_rflags(f);
}

/// Executes one instruction with the interpreter, exactly as one turn of its run loop does: a
/// pending interrupt is taken first (counts 0), then one instruction or one REP iteration runs
/// (counts 1, faulting or not; a fault is delivered). Returns [`exit::CONTINUE`] if execution
/// fell through to the next sequential instruction, counted exactly 1, left budget, and left
/// nothing the block must react to (no I/O, no store into cached code, no interrupt shadow, no
/// deliverable interrupt); otherwise another [`exit`] code. Generated code relies on this: after
/// `CONTINUE` it may run instructions inline without checking for interrupts.
///
/// # Safety
/// `cpu` and `env` must be valid, exclusive pointers for the duration of the call (generated
/// code passes on the pointers the engine's single entry point received).
pub unsafe extern "sysv64" fn helper_step(cpu: *mut CpuState, env: *mut HelperEnv<'_>) -> u32 {
    // SAFETY: the caller guarantees both pointers are valid and not aliased during the call.
    let (cpu, env) = unsafe { (&mut *cpu, &mut *env) };
    env.step(cpu)
}
