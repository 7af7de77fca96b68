//! Counted self-loops: a self-loop block whose flags are dead at its entry checks its budget
//! with one DEC/JZ that clobbers the host's flags, so when the budget runs out at the top, the
//! JIT makes the back edge's flags again from the loop's last flag writer (CMP/TEST, SUB/ADD
//! with an immediate or a register, AND/OR/XOR). Each form runs under the interpreter and the
//! JIT with budgets cut into slices of many lengths, and the whole state (flags included) must
//! agree at the end of every slice, where the loop stopped at its top.

mod common;

use common::*;
use cpu::{CpuState, ExecutionEngine, Interpreter, RamBus, RunExit};
use iced_x86::code_asm::*;

/// Runs `code` under both engines in slices of `slice` instructions and compares the state
/// after every slice; returns the final state.
fn compare_slices(name: &str, code: &[u8], start: &CpuState, budget: u64, slice: u64) -> CpuState {
    let mut bi = RamBus::with_code(RAM, code, CODE).unwrap();
    let mut bj = RamBus::with_code(RAM, code, CODE).unwrap();
    let (mut ci, mut cj) = (start.clone(), start.clone());
    let mut interp = Interpreter::new();
    let mut jit = jit::Translator::new();
    loop {
        let n = slice.min(budget - ci.icount);
        let ei = interp.run(&mut ci, &mut bi, n);
        let ej = jit.run(&mut cj, &mut bj, n);
        assert_eq!((ej, arch(&cj)), (ei, arch(&ci)), "{name}: slice {slice}, at {}", ci.icount);
        if ei != RunExit::BudgetExhausted || ci.icount >= budget {
            assert!(bj.mem.backing() == bi.mem.backing(), "{name}: memory, slice {slice}");
            return ci;
        }
    }
}

/// The loop forms: each a self-loop whose first instruction writes every flag and whose last
/// flag writer is the form named.
fn loops(bits: u32) -> Vec<(&'static str, Vec<u8>)> {
    let wide = bits == 64;
    let mut v = Vec::new();
    let mut add = |name: &'static str, f: &dyn Fn(&mut CodeAssembler)| {
        v.push((name, assemble(bits, |a| f(a))));
    };
    // SUB with an immediate, JNZ back (the benchmark's integer loop shape with SUB).
    add("sub-imm-jnz", &|a| {
        let mut top = a.create_label();
        a.mov(ecx, 300u32).unwrap();
        a.set_label(&mut top).unwrap();
        a.add(eax, ecx).unwrap();
        a.xor(edx, eax).unwrap();
        a.sub(ecx, 1).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
    });
    // SUB with an immediate, then JMP back (the insertion sort's inner loop shape).
    add("sub-imm-jmp", &|a| {
        let mut top = a.create_label();
        let mut out = a.create_label();
        a.mov(ebx, 200u32).unwrap();
        a.set_label(&mut top).unwrap();
        a.test(ebx, ebx).unwrap();
        a.je(out).unwrap();
        a.add(eax, ebx).unwrap();
        a.sub(ebx, 1).unwrap();
        a.jmp(top).unwrap();
        a.set_label(&mut out).unwrap();
        a.hlt().unwrap();
    });
    // ADD with a negative immediate (CF set on every turn but the last).
    add("add-imm", &|a| {
        let mut top = a.create_label();
        a.mov(ecx, 250u32).unwrap();
        a.set_label(&mut top).unwrap();
        a.or(eax, ecx).unwrap();
        a.add(ecx, -1).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
    });
    // CMP of registers, JB back (the hash loop's shape, without the memory operand).
    add("cmp-reg", &|a| {
        let mut top = a.create_label();
        a.mov(ecx, 0u32).unwrap();
        a.mov(esi, 180u32).unwrap();
        a.set_label(&mut top).unwrap();
        a.add(eax, 0x3333_3333).unwrap();
        a.add(ecx, 1).unwrap();
        a.cmp(ecx, esi).unwrap();
        a.jb(top).unwrap();
        a.hlt().unwrap();
    });
    // TEST with an immediate; JNZ back.
    add("test-imm", &|a| {
        let mut top = a.create_label();
        a.mov(ecx, 0x1F0u32).unwrap();
        a.set_label(&mut top).unwrap();
        a.add(eax, ecx).unwrap();
        a.sub(ecx, 1).unwrap();
        a.test(ecx, 0x1F0).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
    });
    // SUB of a register (borrow and overflow on some turns).
    add("sub-reg", &|a| {
        let mut top = a.create_label();
        a.mov(ecx, 0x7FFF_FF00u32).unwrap();
        a.mov(esi, 0x0123_4567u32).unwrap();
        a.set_label(&mut top).unwrap();
        a.add(eax, esi).unwrap();
        a.sub(ecx, esi).unwrap();
        a.jno(top).unwrap();
        a.hlt().unwrap();
    });
    // ADD of a register, JNC back (carry ends it).
    add("add-reg", &|a| {
        let mut top = a.create_label();
        a.mov(ecx, 0x8000_0000u32).unwrap();
        a.mov(esi, 0x0076_5432u32).unwrap();
        a.set_label(&mut top).unwrap();
        a.xor(eax, ecx).unwrap();
        a.add(ecx, esi).unwrap();
        a.jnc(top).unwrap();
        a.hlt().unwrap();
    });
    // AND/XOR as the last writers (AF is 0 after them); ends when ECX = 0x100.
    add("logic", &|a| {
        let mut top = a.create_label();
        a.mov(ecx, 400u32).unwrap();
        a.set_label(&mut top).unwrap();
        a.add(eax, 0x0F0F_0F11).unwrap();
        a.dec(ecx).unwrap();
        a.mov(edx, ecx).unwrap();
        a.and(edx, 0x1FF).unwrap();
        a.xor(edx, 0x100).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
    });
    if wide {
        // 64-bit: SUB of a register and ADD of an immediate on 64-bit registers.
        add("sub-reg-64", &|a| {
            let mut top = a.create_label();
            a.mov(rcx, 0x7FFF_FFFF_FFFF_FF00u64).unwrap();
            a.mov(rsi, 0x0123_4567_89AB_CDEFu64).unwrap();
            a.set_label(&mut top).unwrap();
            a.add(rax, rsi).unwrap();
            a.sub(rcx, rsi).unwrap();
            a.jno(top).unwrap();
            a.hlt().unwrap();
        });
        add("add-imm-64", &|a| {
            let mut top = a.create_label();
            a.mov(rcx, 300u64).unwrap();
            a.set_label(&mut top).unwrap();
            a.add(rax, rcx).unwrap();
            a.add(rcx, -1).unwrap();
            a.jnz(top).unwrap();
            a.hlt().unwrap();
        });
    }
    v
}

#[test]
fn test_counted_loops_stop_with_the_back_edge_flags() {
    for bits in [32u32, 64] {
        for (name, code) in loops(bits) {
            for slice in [1u64, 2, 3, 4, 5, 7, 11, 13, 64, 1000] {
                let end = compare_slices(name, &code, &state(bits), 5000, slice);
                assert!(end.halted, "{bits}-bit {name}: the loop ends (slice {slice})");
            }
        }
    }
}

#[test]
fn test_counted_loop_results_by_hand() {
    // sub-imm-jnz: ECX from 300 down; EAX sums 300..1; the loop is 4 instructions a turn.
    let (_, code) = loops(32).into_iter().find(|(n, _)| *n == "sub-imm-jnz").unwrap();
    let c = compare_slices("sub-imm-jnz", &code, &state(32), 5000, 7);
    assert_eq!(c.gpr[0], (1..=300u64).sum::<u64>());
    assert_eq!(c.gpr[1], 0);
    assert_eq!(c.icount, 1 + 4 * 300 + 1, "MOV, 300 turns, HLT");
}
