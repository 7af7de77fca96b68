//! The CPU-bound guest loops measured by cpu/benches/interp.rs (the interpreter) and
//! jit/benches/engines.rs (interpreter and JIT side by side): integer arithmetic, memory loads
//! and stores, branches, calls.

use cpu::{CpuState, ExecutionEngine, RamBus, RunExit};
use iced_x86::code_asm::*;

pub const ITERS: u32 = 100_000;
pub const CODE: u64 = 0x1000;

/// 64-bit: add, store, load-xor, shift, LEA, compare and a data-dependent branch per iteration.
pub fn loop64() -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    let mut top = a.create_label();
    let mut skip = a.create_label();
    a.xor(eax, eax).unwrap();
    a.xor(edx, edx).unwrap();
    a.mov(ecx, ITERS).unwrap();
    a.mov(rsi, 0x8000u64).unwrap();
    a.set_label(&mut top).unwrap();
    a.add(rax, rcx).unwrap();
    a.mov(qword_ptr(rsi), rax).unwrap();
    a.xor(rdx, qword_ptr(rsi)).unwrap();
    a.shl(rdx, 1).unwrap();
    a.lea(rbx, qword_ptr(rax + rdx * 2)).unwrap();
    a.cmp(rbx, rax).unwrap();
    a.jb(skip).unwrap();
    a.inc(r8).unwrap();
    a.set_label(&mut skip).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(top).unwrap();
    a.hlt().unwrap();
    a.assemble(CODE).unwrap()
}

/// 64-bit register-only integer loop: add, xor, sub, compare-and-branch.
pub fn loop64_reg() -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    let mut top = a.create_label();
    a.xor(eax, eax).unwrap();
    a.mov(ecx, ITERS).unwrap();
    a.mov(edx, 7).unwrap();
    a.set_label(&mut top).unwrap();
    a.add(rax, rcx).unwrap();
    a.xor(rdx, rax).unwrap();
    a.sub(rdx, 3).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(top).unwrap();
    a.hlt().unwrap();
    a.assemble(CODE).unwrap()
}

/// 64-bit calls: a small function with PUSH/POP of a callee-saved register, CALL and RET.
pub fn loop64_calls() -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    let mut top = a.create_label();
    let mut func = a.create_label();
    let mut done = a.create_label();
    a.xor(eax, eax).unwrap();
    a.mov(ecx, ITERS).unwrap();
    a.mov(rsp, 0x9000u64).unwrap();
    a.set_label(&mut top).unwrap();
    a.call(func).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(top).unwrap();
    a.jmp(done).unwrap();
    a.set_label(&mut func).unwrap();
    a.push(rbx).unwrap();
    a.lea(rbx, qword_ptr(rcx + rcx * 2)).unwrap();
    a.add(rax, rbx).unwrap();
    a.pop(rbx).unwrap();
    a.ret().unwrap();
    a.set_label(&mut done).unwrap();
    a.hlt().unwrap();
    a.assemble(CODE).unwrap()
}

/// 32-bit protected mode: an array sum with indexed loads, a store and a loop counter.
pub fn loop32() -> Vec<u8> {
    let mut a = CodeAssembler::new(32).unwrap();
    let mut top = a.create_label();
    a.xor(eax, eax).unwrap();
    a.xor(edi, edi).unwrap();
    a.mov(ecx, ITERS).unwrap();
    a.mov(esi, 0x8000u32).unwrap();
    a.set_label(&mut top).unwrap();
    a.mov(edx, ecx).unwrap();
    a.and(edx, 0xFF).unwrap();
    a.add(eax, dword_ptr(esi + edx * 4)).unwrap();
    a.mov(dword_ptr(esi + edx * 4), eax).unwrap();
    a.adc(edi, 0).unwrap();
    a.sub(ecx, 1).unwrap();
    a.jnz(top).unwrap();
    a.hlt().unwrap();
    a.assemble(CODE).unwrap()
}

/// Guest RAM with the loop's code at [`CODE`].
pub fn machine(code: &[u8]) -> RamBus {
    RamBus::with_code(1 << 20, code, CODE).unwrap()
}

/// Runs the loop once from `fresh` to its HLT; returns the guest instructions executed.
pub fn run_once(e: &mut dyn ExecutionEngine, bus: &mut RamBus, fresh: &CpuState) -> u64 {
    let mut cpu = fresh.clone();
    cpu.rip = CODE;
    let exit = e.run(&mut cpu, bus, u64::MAX);
    assert_eq!(exit, RunExit::Halted);
    cpu.icount
}

/// Every loop: its benchmark name, code and start state.
pub fn all() -> Vec<(&'static str, Vec<u8>, CpuState)> {
    vec![
        ("loop64_reg_alu_branch", loop64_reg(), CpuState::new_flat64()),
        ("loop64_alu_mem_branch", loop64(), CpuState::new_flat64()),
        ("loop32_array_sum", loop32(), CpuState::new_flat32()),
        ("loop64_call_push_pop", loop64_calls(), CpuState::new_flat64()),
    ]
}
