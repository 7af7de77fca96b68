//! Shared by the JIT tests: running guest code under both engines and comparing.

#![allow(dead_code)]

use cpu::{CpuBus, CpuState, ExecutionEngine, Interpreter, RamBus, RunExit};
use iced_x86::code_asm::CodeAssembler;

pub const CODE: u64 = 0x1000;
pub const RAM: u64 = 1 << 20;

/// The architectural state as text (lazy flags evaluated; caches and bookkeeping left out).
pub fn arch(c: &CpuState) -> String {
    format!(
        "icount={} rip={:#x} rflags={:#x} gpr={:x?} seg={:x?} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cpl={} halted={} xmm={:x?} mxcsr={:#x}",
        c.icount,
        c.rip,
        c.rflags(),
        c.gpr,
        c.seg,
        c.cr0,
        c.cr2,
        c.cr3,
        c.cr4,
        c.efer,
        c.cpl,
        c.halted,
        c.fpu.xmm.map(u128::from_le_bytes),
        c.fpu.mxcsr
    )
}

pub fn assemble(bits: u32, f: impl FnOnce(&mut CodeAssembler)) -> Vec<u8> {
    let mut a = CodeAssembler::new(bits).unwrap();
    f(&mut a);
    a.assemble(CODE).unwrap()
}

pub fn state(bits: u32) -> CpuState {
    let mut c = if bits == 64 { CpuState::new_flat64() } else { CpuState::new_flat32() };
    c.rip = CODE;
    c.gpr[4] = 0x7_0000;
    c
}

/// Runs `code` from `start` on `engine` in slices from `slices` (cycled; empty: one run).
pub fn run(
    engine: &mut dyn ExecutionEngine,
    code: &[u8],
    start: &CpuState,
    budget: u64,
    slices: &[u64],
) -> (RunExit, CpuState, RamBus) {
    let mut bus = RamBus::with_code(RAM, code, CODE).unwrap();
    let mut cpu = start.clone();
    let exit = run_sliced(engine, &mut cpu, &mut bus, budget, slices);
    (exit, cpu, bus)
}

/// Runs `cpu` on `bus` until the instruction count reaches `budget` or a run ends otherwise, in
/// runs of the lengths in `slices` (cycled; empty: one run).
pub fn run_sliced(
    engine: &mut dyn ExecutionEngine,
    cpu: &mut CpuState,
    bus: &mut dyn CpuBus,
    budget: u64,
    slices: &[u64],
) -> RunExit {
    let mut k = 0;
    loop {
        let left = budget - cpu.icount;
        let n = if slices.is_empty() { left } else { slices[k % slices.len()].min(left) };
        k += 1;
        let e = engine.run(cpu, bus, n);
        if e != RunExit::BudgetExhausted || cpu.icount >= budget {
            break e;
        }
    }
}

/// Runs `code` under the interpreter (one run) and the JIT (one run and several slicings);
/// asserts identical exits, states and memory; returns the interpreter's state and bus. The
/// sliced JIT runs check the translator's helper calls too
/// ([`jit::Translator::set_clobber_calls`]).
pub fn lockstep(name: &str, code: &[u8], start: &CpuState, budget: u64) -> (RunExit, CpuState, RamBus) {
    let (e0, c0, b0) = run(&mut Interpreter::new(), code, start, budget, &[]);
    // Long slices patch chains between blocks; short ones after them end inside chained code.
    for slices in [&[][..], &[1], &[2, 3, 5], &[7, 1, 13], &[500, 1, 1, 2, 1, 3, 1]] {
        let mut jit = jit::Translator::new();
        jit.set_clobber_calls(!slices.is_empty());
        let (e1, c1, b1) = run(&mut jit, code, start, budget, slices);
        assert_eq!(e1, e0, "{name}: exit differs with slices {slices:?}");
        assert_eq!(arch(&c1), arch(&c0), "{name}: state differs with slices {slices:?}");
        assert!(b1.mem.backing() == b0.mem.backing(), "{name}: memory differs with slices {slices:?}");
        assert_eq!(b1.debug_out, b0.debug_out, "{name}: port output differs with slices {slices:?}");
    }
    (e0, c0, b0)
}
