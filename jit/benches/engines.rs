//! Interpreter and JIT throughput on the same CPU-bound guest loops (the loops of
//! cpu/benches/interp.rs) (integer arithmetic, memory loads and stores,
//! branches). Criterion reports throughput in elements = guest instructions, so "Melem/s" is
//! guest MIPS.

use cpu::{CpuState, ExecutionEngine, Interpreter, RamBus, RunExit};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use iced_x86::code_asm::*;
use jit::Translator;
use std::hint::black_box;

const ITERS: u32 = 100_000;
const CODE: u64 = 0x1000;

/// 64-bit: add, store, load-xor, shift, LEA, compare and a data-dependent branch per iteration.
fn loop64() -> Vec<u8> {
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
fn loop64_reg() -> Vec<u8> {
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
fn loop64_calls() -> Vec<u8> {
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
fn loop32() -> Vec<u8> {
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
fn machine(code: &[u8]) -> RamBus {
    RamBus::with_code(1 << 20, code, CODE).unwrap()
}

fn run_once(e: &mut dyn ExecutionEngine, bus: &mut RamBus, fresh: &CpuState) -> u64 {
    let mut cpu = fresh.clone();
    cpu.rip = CODE;
    let exit = e.run(&mut cpu, bus, u64::MAX);
    assert_eq!(exit, RunExit::Halted);
    cpu.icount
}

fn bench_loop(c: &mut Criterion, name: &str, code: Vec<u8>, fresh: CpuState) {
    let mut g = c.benchmark_group(name);
    let mut engines: Vec<Box<dyn ExecutionEngine>> = vec![Box::new(Interpreter::new()), Box::new(Translator::new())];
    for e in &mut engines {
        let mut bus = machine(&code);
        let insns = run_once(e.as_mut(), &mut bus, &fresh);
        g.throughput(Throughput::Elements(insns));
        g.bench_function(e.name(), |b| b.iter(|| black_box(run_once(e.as_mut(), &mut bus, &fresh))));
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    bench_loop(c, "loop64_reg_alu_branch", loop64_reg(), CpuState::new_flat64());
    bench_loop(c, "loop64_alu_mem_branch", loop64(), CpuState::new_flat64());
    bench_loop(c, "loop32_array_sum", loop32(), CpuState::new_flat32());
    bench_loop(c, "loop64_call_push_pop", loop64_calls(), CpuState::new_flat64());
}

criterion_group! {
    name = engines;
    config = Criterion::default().sample_size(10);
    targets = benches
}
criterion_main!(engines);
