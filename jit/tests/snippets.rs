//! The JIT against the interpreter on hand-written guest code that exercises every inline path
//! (register ALU, flags across inline code and helpers, every condition code, memory operands
//! with every addressing form, TLB misses, page crossings, open bus, faults), in one run and
//! in slices. The interpreter is the reference; some results are also checked against values
//! worked out by hand from the SDM's definitions.

mod common;

use common::*;
use cpu::RunExit;
use iced_x86::code_asm::*;

#[test]
fn test_jit_register_alu_and_flags() {
    for bits in [32u32, 64] {
        let code = assemble(bits, |a| {
            a.mov(eax, 0x89AB_CDEFu32).unwrap();
            a.mov(ebx, 0xFFFF_FFFFu32).unwrap();
            a.mov(ecx, 5u32).unwrap();
            a.add(eax, ebx).unwrap();
            a.sub(ebx, ecx).unwrap();
            a.and(eax, 0x00FF_00FF).unwrap();
            a.or(ecx, 0x80).unwrap();
            a.xor(ebx, eax).unwrap();
            a.cmp(eax, ebx).unwrap();
            a.test(ecx, 3).unwrap();
            a.inc(eax).unwrap();
            a.dec(ebx).unwrap();
            a.shl(ecx, 1).unwrap();
            a.shr(ebx, 1).unwrap();
            a.sar(eax, 1).unwrap();
            if bits == 32 {
                a.pushfd().unwrap();
            } else {
                a.pushfq().unwrap();
            }
            // CF set by a helper instruction (STC), then INC inline must keep it.
            a.stc().unwrap();
            a.inc(edx).unwrap();
            a.setb(cl).unwrap();
            // Lazy flags from a helper (ADC), then DEC inline needs their CF.
            a.mov(esi, 0xFFFF_FFFFu32).unwrap();
            a.adc(esi, 1).unwrap();
            a.dec(edi).unwrap();
            a.setb(ch).unwrap();
            a.seto(dl).unwrap();
            // Logic op then a flag reader through a helper: AF must be 0.
            a.xor(eax, 0x0F).unwrap();
            a.lahf().unwrap();
            a.hlt().unwrap();
        });
        let (exit, c, _) = lockstep("alu", &code, &state(bits), 1000);
        assert_eq!(exit, RunExit::Halted);
        assert_eq!(c.gpr[1] & 0xFFFF, 0x0101, "CF survived INC and DEC (SETB = 1 twice)");
    }
    let code = assemble(64, |a| {
        a.mov(rax, 0x0123_4567_89AB_CDEFu64).unwrap();
        a.mov(rbx, -2i64).unwrap();
        a.add(rax, rbx).unwrap();
        a.sub(rbx, 0x7FFF_FFFF).unwrap();
        a.imul_2(rax, rbx).unwrap();
        a.xor(r8, r8).unwrap();
        a.add(r9d, 0x10).unwrap();
        a.or(r15, -8).unwrap();
        a.mov(r10, r15).unwrap();
        a.mov(r11d, r10d).unwrap();
        a.shl(r10, 1).unwrap();
        a.shr(r11, 1).unwrap();
        a.sar(r15, 1).unwrap();
        a.dec(r9).unwrap();
        a.hlt().unwrap();
    });
    let (_, c, _) = lockstep("alu64", &code, &state(64), 1000);
    assert_eq!(c.gpr[11], 0x7FFF_FFFC, "r11d = low half of r15 (-8), zero-extended, shifted right");
}

#[test]
fn test_jit_every_condition_code() {
    let pairs: [(u32, u32); 6] =
        [(0, 0), (1, 2), (2, 1), (0x8000_0000, 1), (1, 0x8000_0000), (0xFFFF_FFFF, 0x7FFF_FFFF)];
    for bits in [32u32, 64] {
        let code = assemble(bits, |a| {
            for (x, y) in pairs {
                a.mov(eax, x).unwrap();
                a.mov(ebx, y).unwrap();
                macro_rules! each {
                    ($($j:ident),*) => {$(
                        let mut skip = a.create_label();
                        a.cmp(eax, ebx).unwrap();
                        a.$j(skip).unwrap();
                        a.inc(esi).unwrap();
                        a.set_label(&mut skip).unwrap();
                        a.shl(edi, 1).unwrap();
                        a.adc(edi, 0).unwrap();
                    )*};
                }
                each!(jo, jno, jb, jae, je, jne, jbe, ja, js, jns, jp, jnp, jl, jge, jle, jg);
            }
            a.hlt().unwrap();
        });
        let (exit, c, _) = lockstep("jcc", &code, &state(bits), 10_000);
        assert_eq!(exit, RunExit::Halted);
        // Each pair takes exactly 8 of the 16 branches (the conditions come in opposite pairs).
        assert_eq!(c.gpr[6], 6 * 8);
    }
}

#[test]
fn test_jit_memory_operands() {
    let code = assemble(64, |a| {
        let mut data = a.create_label();
        a.mov(rsi, 0x8000u64).unwrap();
        a.mov(rdi, 3u64).unwrap();
        a.mov(rax, 0x1122_3344_5566_7788u64).unwrap();
        a.mov(rbx, 0x99u64).unwrap();
        a.mov(qword_ptr(rsi), rax).unwrap();
        a.mov(qword_ptr(rsi + rdi * 8 + 0x10), rbx).unwrap();
        a.mov(ecx, dword_ptr(rsi + 4)).unwrap();
        a.add(qword_ptr(rsi), rcx).unwrap();
        a.sub(rdx, qword_ptr(rsi + rdi * 8 + 0x10)).unwrap();
        a.cmp(qword_ptr(rsi), 5).unwrap();
        a.test(dword_ptr(rsi), eax).unwrap();
        a.mov(dword_ptr(rsi + 0x40), 0x1234_5678).unwrap();
        a.mov(qword_ptr(rsi + 0x48), -3).unwrap();
        a.xor(qword_ptr(rsi + 0x48), rax).unwrap();
        a.and(dword_ptr(rsi + rdi * 4), 0xF0F0).unwrap();
        a.or(qword_ptr(rdi * 8 + 0x8000), rbx).unwrap();
        a.mov(r8, qword_ptr(data)).unwrap(); // RIP-relative
        a.add(qword_ptr(data), r8).unwrap();
        a.mov(r9d, dword_ptr(esi + 8)).unwrap(); // 32-bit addressing in 64-bit code
        a.mov(r10, qword_ptr(rsi + 0xFFC)).unwrap(); // crosses into the next page: slow path
        a.mov(qword_ptr(rsi + 0xFFD), rax).unwrap();
        a.mov(r11, qword_ptr(0x20_0000u64 + 0x100)).unwrap(); // no RAM there: open bus
        a.mov(r12, 0x20_0000u64).unwrap();
        a.mov(qword_ptr(r12), rax).unwrap(); // dropped
        a.mov(r13, qword_ptr(r12)).unwrap();
        a.hlt().unwrap();
        a.set_label(&mut data).unwrap();
        a.dq(&[0x0102_0304_0506_0708]).unwrap();
    });
    let (exit, c, bus) = lockstep("mem64", &code, &state(64), 1000);
    assert_eq!(exit, RunExit::Halted);
    assert_eq!(c.gpr[8], 0x0102_0304_0506_0708);
    assert_eq!(c.gpr[11], u64::MAX, "unmapped memory reads as all ones");
    let m = bus.mem.backing();
    assert_eq!(u32::from_le_bytes(m[0x8040..0x8044].try_into().unwrap()), 0x1234_5678);

    let code = assemble(32, |a| {
        a.mov(esi, 0x8000u32).unwrap();
        a.mov(edi, 2u32).unwrap();
        a.mov(eax, 0xCAFE_F00Du32).unwrap();
        a.mov(dword_ptr(esi + edi * 4 + 8), eax).unwrap();
        a.add(eax, dword_ptr(esi + 0x10)).unwrap();
        a.mov(dword_ptr(0x8100u32), 7).unwrap();
        a.sub(dword_ptr(0x8100u32), eax).unwrap();
        a.cmp(eax, dword_ptr(esi + edi * 2)).unwrap();
        a.mov(ebx, dword_ptr(esi + 0xFFE)).unwrap();
        a.mov(ecx, 0xFFFF_FFFEu32).unwrap();
        a.mov(edx, dword_ptr(ecx)).unwrap(); // beyond the 4 GiB limit: #GP, no IDT: triple fault
        a.hlt().unwrap();
    });
    let (exit, _, _) = lockstep("mem32", &code, &state(32), 1000);
    assert_eq!(exit, RunExit::TripleFault);
}

#[test]
fn test_jit_non_canonical_access_faults_like_the_interpreter() {
    let code = assemble(64, |a| {
        a.mov(rbx, 0x8000_0000_0000_0000u64).unwrap();
        a.inc(eax).unwrap();
        a.mov(rcx, qword_ptr(rbx)).unwrap();
        a.inc(eax).unwrap();
        a.hlt().unwrap();
    });
    let (exit, c, _) = lockstep("noncanonical", &code, &state(64), 100);
    assert_eq!(exit, RunExit::TripleFault);
    assert_eq!(c.gpr[0], 1);
}

#[test]
fn test_jit_loops_and_budget_ends_exactly() {
    let code = assemble(64, |a| {
        let mut top = a.create_label();
        a.xor(eax, eax).unwrap();
        a.mov(ecx, 1000u32).unwrap();
        a.mov(rsi, 0x8000u64).unwrap();
        a.set_label(&mut top).unwrap();
        a.add(rax, rcx).unwrap();
        a.mov(qword_ptr(rsi), rax).unwrap();
        a.xor(rdx, qword_ptr(rsi)).unwrap();
        a.shl(rdx, 1).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
    });
    let (exit, c, _) = lockstep("loop", &code, &state(64), 1_000_000);
    assert_eq!(exit, RunExit::Halted);
    assert_eq!(c.gpr[0], 500_500);
    assert_eq!(c.icount, 3 + 6 * 1000 + 1);
    // Every budget ends exactly there, mid-loop included.
    for budget in [1u64, 2, 3, 4, 5, 6, 7, 8, 9, 10, 100, 1001, 5999] {
        let (e0, c0, _) = run(&mut cpu::Interpreter::new(), &code, &state(64), budget, &[]);
        let (e1, c1, _) = run(&mut jit::Translator::new(), &code, &state(64), budget, &[]);
        assert_eq!((e1, arch(&c1)), (e0, arch(&c0)), "budget {budget}");
        assert_eq!(c1.icount, budget);
    }
}

#[test]
fn test_jit_budget_ends_exactly_inside_chained_blocks() {
    // Block A (`jmp mid`) chains to block B; once the chain is patched, a run with budget 1
    // started at A must stop after A's one instruction, not run into B.
    let code = assemble(64, |a| {
        let mut top = a.create_label();
        let mut mid = a.create_label();
        a.set_label(&mut top).unwrap();
        a.jmp(mid).unwrap();
        a.set_label(&mut mid).unwrap();
        a.inc(eax).unwrap();
        a.inc(ebx).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
    });
    let mut start = state(64);
    start.gpr[1] = 1000;
    let mut bus = cpu::RamBus::with_code(RAM, &code, CODE).unwrap();
    let mut jit = jit::Translator::new();
    let mut warm = start.clone();
    assert_eq!(cpu::ExecutionEngine::run(&mut jit, &mut warm, &mut bus, 100), RunExit::BudgetExhausted);
    assert!(jit.stats().chains_patched > 0, "{:?}", jit.stats());
    for budget in 1..=6 {
        let mut c = start.clone();
        c.tlb = warm.tlb.clone();
        let mut want = start.clone();
        let mut bus2 = cpu::RamBus::with_code(RAM, &code, CODE).unwrap();
        cpu::ExecutionEngine::run(&mut cpu::Interpreter::new(), &mut want, &mut bus2, budget);
        cpu::ExecutionEngine::run(&mut jit, &mut c, &mut bus, budget);
        assert_eq!(arch(&c), arch(&want), "budget {budget}");
        assert_eq!(c.icount, budget);
    }
}

#[test]
fn test_jit_lea_between_flag_writer_and_reader() {
    // LEA writes no flags: a compare before it decides the branch after it.
    for bits in [32u32, 64] {
        let code = assemble(bits, |a| {
            let mut skip = a.create_label();
            let mut top = a.create_label();
            a.mov(ecx, 40u32).unwrap();
            a.set_label(&mut top).unwrap();
            a.cmp(ecx, 20).unwrap();
            a.lea(edx, dword_ptr(edx + ecx * 4 + 0x1000)).unwrap();
            a.lea(esi, dword_ptr(esi + 1)).unwrap();
            a.jl(skip).unwrap();
            a.inc(ebx).unwrap();
            a.set_label(&mut skip).unwrap();
            a.dec(ecx).unwrap();
            a.jnz(top).unwrap();
            a.hlt().unwrap();
        });
        let (exit, c, _) = lockstep("lea-flags", &code, &state(bits), 10_000);
        assert_eq!(exit, RunExit::Halted);
        assert_eq!(c.gpr[3], 21, "{bits}-bit: ECX = 40..20 are not below 20");
    }
}
