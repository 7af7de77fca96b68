//! Guest MIPS of the interpreter on an SSE2 loop and an x87 loop (`FERRO_SPEED_ITERS` scales
//! them). Each loop body mixes loads, stores, integer SIMD / floating point and the loop control.

use cpu::state::cr;
use cpu::{CpuState, ExecutionEngine, Interpreter, RamBus};
use iced_x86::code_asm::*;
use iced_x86::IcedError;

fn run(name: &str, body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>, per_iter: u64, iters: u32) {
    let mut a = CodeAssembler::new(64).expect("assembler");
    let mut top = a.create_label();
    (|| -> Result<(), IcedError> {
        a.mov(ecx, iters)?;
        a.mov(rsi, 0x8000u64)?;
        a.set_label(&mut top)?;
        body(&mut a)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    })()
    .expect("loop assembles");
    let code = a.assemble(0x1000).expect("assembles");
    let mut bus = RamBus::with_code(1 << 20, &code, 0x1000).expect("bus");
    let mut cpu = CpuState::new_flat64();
    cpu.cr4 |= cr::CR4_OSFXSR | cr::CR4_OSXMMEXCPT;
    cpu.fpu.fcw = 0x037F;
    cpu.fpu.ftw = 0;
    cpu.rip = 0x1000;
    let mut it = Interpreter::new();
    let t = std::time::Instant::now();
    let exit = it.run(&mut cpu, &mut bus, u64::MAX);
    let s = t.elapsed().as_secs_f64();
    assert_eq!(cpu.icount, 3 + u64::from(iters) * (per_iter + 2), "{name}: the loop ran to the end");
    println!("{name}: {exit:?} {} insns in {s:.3}s = {:.1} MIPS", cpu.icount, cpu.icount as f64 / s / 1e6);
}

fn main() {
    let iters: u32 = std::env::var("FERRO_SPEED_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(3_000_000);
    // SSE2: 8 instructions per iteration (integer and double-precision SIMD, a load and a store).
    run(
        "SSE2 loop",
        |a| {
            a.movdqa(xmm0, xmmword_ptr(rsi))?;
            a.paddd(xmm1, xmm0)?;
            a.pxor(xmm2, xmm1)?;
            a.pcmpeqb(xmm3, xmm2)?;
            a.cvtsi2sd(xmm4, ecx)?;
            a.addpd(xmm5, xmm4)?;
            a.mulsd(xmm6, xmm4)?;
            a.movdqa(xmmword_ptr(rsi + 16), xmm1)
        },
        8,
        iters,
    );
    // x87: 8 instructions per iteration (loads, arithmetic, a compare and a store).
    run(
        "x87 loop",
        |a| {
            a.mov(dword_ptr(rsi), ecx)?;
            a.fild(dword_ptr(rsi))?;
            a.fld1()?;
            a.faddp(st1, st0)?;
            a.fmul_2(st0, st0)?;
            a.fsqrt()?;
            a.fcomi(st0, st0)?;
            a.fstp(qword_ptr(rsi + 8))
        },
        8,
        iters,
    );
}
