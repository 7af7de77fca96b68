//! Guest MIPS of the interpreter on a 64-bit integer loop (`FERRO_SPEED_ITERS` scales it).

use cpu::{CpuState, ExecutionEngine, Interpreter, RamBus};
use iced_x86::code_asm::*;

fn bus_with(code: &[u8], at: u64) -> RamBus {
    RamBus::with_code(1 << 20, code, at).unwrap()
}

fn main() {
    let mut a = CodeAssembler::new(64).unwrap();
    let mut top = a.create_label();
    a.xor(eax, eax).unwrap();
    // Loop iterations (6 guest instructions each); FERRO_SPEED_ITERS overrides.
    let iters: u32 = std::env::var("FERRO_SPEED_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(30_000_000);
    a.mov(ecx, iters).unwrap();
    a.mov(rsi, 0x8000u64).unwrap();
    a.set_label(&mut top).unwrap();
    a.add(rax, rcx).unwrap();
    a.mov(qword_ptr(rsi), rax).unwrap();
    a.xor(rdx, qword_ptr(rsi)).unwrap();
    a.shl(rdx, 1).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(top).unwrap();
    a.hlt().unwrap();
    let code = a.assemble(0x1000).unwrap();
    let mut bus = bus_with(&code, 0x1000);
    let mut cpu = CpuState::new_flat64();
    cpu.rip = 0x1000;
    let mut it = Interpreter::new();
    let t = std::time::Instant::now();
    let exit = it.run(&mut cpu, &mut bus, u64::MAX);
    let s = t.elapsed().as_secs_f64();
    println!("{exit:?} {} insns in {s:.3}s = {:.1} MIPS", cpu.icount, cpu.icount as f64 / s / 1e6);
}
