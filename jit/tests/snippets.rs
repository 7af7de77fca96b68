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

/// Status-flag bits (SDM vol. 1, 3.4.3).
const CF: u64 = 1;
const PF: u64 = 1 << 2;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;

/// Stores RFLAGS at [rsi] (through R15) and advances RSI (64-bit code; PUSHFQ goes through the helper, so
/// the flags of the instruction before are observed).
fn save_flags(a: &mut CodeAssembler) {
    a.pushfq().unwrap();
    a.pop(r15).unwrap();
    a.mov(qword_ptr(rsi), r15).unwrap();
    a.add(rsi, 8).unwrap();
}

/// The saved RFLAGS values (status bits) from the data area at 0x8000.
fn saved_flags(bus: &cpu::RamBus, n: usize) -> Vec<u64> {
    let m = bus.mem.backing();
    (0..n).map(|k| u64::from_le_bytes(m[0x8000 + 8 * k..0x8008 + 8 * k].try_into().unwrap()) & 0x8D5).collect()
}

#[test]
fn test_jit_partial_registers_8_and_16_bit() {
    let code = assemble(64, |a| {
        a.mov(rsi, 0x8000u64).unwrap();
        a.mov(rax, 0x1122_3344_5566_7788u64).unwrap();
        a.mov(rbx, 0x0102_0304_0506_07F0u64).unwrap();
        a.mov(ah, 0x99u32).unwrap(); // rax = ..99 88
        a.add(al, bl).unwrap(); // 0x88 + 0xF0 = 0x178: al = 0x78, CF
        save_flags(a);
        a.adc(bh, ah).unwrap(); // 0x07 + 0x99 + 1 = 0xA1
        a.mov(cx, 0xFFFFu32).unwrap();
        a.mov(rcx, 0x7777_0000_0000_FFFFu64).unwrap();
        a.add(cx, 1).unwrap(); // 16-bit wraparound: cx = 0, CF ZF; upper bits kept
        save_flags(a);
        a.mov(dx, 0x7FFFu32).unwrap();
        a.inc(dx).unwrap(); // 0x8000: OF SF
        save_flags(a);
        a.dec(cl).unwrap(); // 0xFF, CF from before? INC/DEC keep CF
        a.xor(ch, dh).unwrap();
        a.test(ah, ah).unwrap();
        save_flags(a);
        a.cmp(bl, 0x80).unwrap();
        save_flags(a);
        a.sub(r9w, r10w).unwrap();
        a.sbb(r9b, 1).unwrap();
        a.mov(sil, 0x42u32).unwrap(); // REX: SIL, the low byte of RSI
        a.mov(rsi, 0x8100u64).unwrap();
        a.mov(r8b, bl).unwrap();
        a.neg(r8b).unwrap();
        save_flags(a);
        a.not(cx).unwrap();
        a.not(ebx).unwrap(); // zero-extends
        a.neg(bp).unwrap();
        a.xchg(al, ah).unwrap();
        a.xchg(r11d, r12d).unwrap();
        a.xchg(r13w, r14w).unwrap();
        a.nop().unwrap();
        a.nop_1(dword_ptr(rax + 0x1234_5678)).unwrap(); // no memory access
        a.hlt().unwrap();
    });
    let mut s = state(64);
    s.gpr[9] = 0x1234;
    s.gpr[10] = 0x1235;
    s.gpr[11] = 0xFFFF_FFFF_0000_0001;
    s.gpr[12] = 0x2222_2222_3333_3333;
    s.gpr[13] = 0xAAAA;
    s.gpr[14] = 0xBBBB_CCCC;
    s.gpr[5] = 0x1_0000;
    let (exit, c, bus) = lockstep("partial", &code, &s, 1000);
    assert_eq!(exit, RunExit::Halted);
    // By hand from the SDM: 0x88 + 0xF0 = 0x178 -> AL = 0x78; AH = 0x99; XCHG AL, AH.
    assert_eq!(c.gpr[0] & 0xFFFF, 0x7899, "AL and AH exchanged at the end");
    assert_eq!(c.gpr[0] >> 16, 0x1122_3344_5566, "8-bit writes keep the upper bits");
    assert_eq!(c.gpr[1] >> 16, 0x7777_0000_0000, "16-bit writes keep the upper bits");
    assert_eq!(c.gpr[3] >> 32, 0, "NOT EBX zero-extends");
    assert_eq!(c.gpr[5], 0x1_0000, "NEG BP of 0 is 0, the upper bits kept");
    assert_eq!(c.gpr[11], 0x3333_3333);
    assert_eq!(c.gpr[12], 1);
    assert_eq!(c.gpr[13], 0xCCCC);
    assert_eq!(c.gpr[14], 0xBBBB_AAAA);
    let f = saved_flags(&bus, 5);
    assert_eq!(f[0], CF | OF | PF, "0x88 + 0xF0 = 0x178: -120 + -16 overflows, 0x78 has four 1 bits");
    assert_eq!(f[1], CF | ZF | PF | 0x10, "0xFFFF + 1 wraps (AF from the low nibble)");
    assert_eq!(f[2], OF | SF | PF | 0x10, "0x7FFF + 1");
    assert_eq!(f[3] & (SF | ZF | CF | OF), SF, "TEST AH, AH with AH = 0x99");
}

#[test]
fn test_jit_shift_flags_every_count() {
    // Each shift's flags are saved by PUSHFQ (live flags: the OF rules) and also overwritten
    // by ADD right after a second copy (dead flags: inline by CL).
    let values = [0x8000_0000_0000_0001u64, 0x4000_0000_C000_0003, 1, 0xFFFF_FFFF_FFFF_FFFF];
    let counts = [0u32, 1, 2, 5, 31, 32, 33, 63, 64];
    let code = assemble(64, |a| {
        a.mov(rsi, 0x8000u64).unwrap();
        for v in values {
            for c in counts {
                for (wide, op) in [(true, 0), (true, 1), (true, 2), (false, 0), (false, 1), (false, 2)] {
                    a.mov(rax, v).unwrap();
                    a.mov(ecx, c).unwrap();
                    macro_rules! sh {
                        ($m:ident) => {
                            if wide {
                                a.$m(rax, cl).unwrap();
                                a.mov(rbx, v).unwrap();
                                a.$m(rbx, c).unwrap();
                            } else {
                                a.$m(eax, cl).unwrap();
                                a.mov(rbx, v).unwrap();
                                a.$m(ebx, c).unwrap();
                            }
                        };
                    }
                    match op {
                        0 => sh!(shl),
                        1 => sh!(shr),
                        _ => sh!(sar),
                    }
                    save_flags(a);
                    // Dead flags: a CL shift followed by a flag writer.
                    a.mov(rdi, v).unwrap();
                    match op {
                        0 => a.shl(rdi, cl).unwrap(),
                        1 => a.shr(rdi, cl).unwrap(),
                        _ => a.sar(rdi, cl).unwrap(),
                    }
                    a.add(rdi, rax).unwrap();
                    a.mov(qword_ptr(rsi), rdi).unwrap();
                    a.add(rsi, 8).unwrap();
                }
            }
        }
        a.hlt().unwrap();
    });
    let (exit, _, bus) = lockstep("shifts", &code, &state(64), 100_000);
    assert_eq!(exit, RunExit::Halted);
    // By hand (SDM SHL/SHR/SAR): the first entries are value 0x8000_0000_0000_0001.
    let f = saved_flags(&bus, 1);
    // SHL RBX, 0 keeps the flags: none was set at the start.
    assert_eq!(f[0], 0);
    let m = bus.mem.backing();
    let at = |k: usize| u64::from_le_bytes(m[0x8000 + 8 * k..0x8008 + 8 * k].try_into().unwrap()) & 0x8D5;
    // Count 1, SHL r64: result 2, CF = 1, OF = MSB(result) ^ CF = 1.
    assert_eq!(at(12), CF | OF);
    // Count 2, SHR r64 of 0x8000_0000_0000_0001: result 0x2000_0000_0000_0000, CF = 0,
    // OF = MSB of the operand = 1 (the interpreter's value for every count), PF (low byte 0).
    assert_eq!(at(2 * 12 + 2), OF | PF);
}

#[test]
fn test_jit_imul_flags_and_widths() {
    let code = assemble(64, |a| {
        a.mov(rsi, 0x8000u64).unwrap();
        a.mov(eax, 0x1_0000u32).unwrap();
        a.imul_2(eax, eax).unwrap(); // 2^32 truncated to 0: CF OF, ZF, PF
        save_flags(a);
        a.mov(rbx, -3i64).unwrap();
        a.mov(rcx, 7u64).unwrap();
        a.imul_2(rbx, rcx).unwrap(); // -21: SF, fits
        save_flags(a);
        a.imul_3(rdx, rcx, -0x4000_0000).unwrap();
        save_flags(a);
        a.mov(r8w, 0x100u32).unwrap();
        a.imul_3(r9w, r8w, 0x100).unwrap(); // 0x10000 -> 0 in 16 bits: CF OF ZF
        save_flags(a);
        a.mov(rdi, 0x7FFF_FFFF_FFFF_FFFFu64).unwrap();
        a.imul_2(rdi, rdi).unwrap();
        save_flags(a);
        // Dead flags: IMUL then CMP.
        a.imul_2(r10, rcx).unwrap();
        a.cmp(r10, rbx).unwrap();
        a.setl(r11b).unwrap();
        a.hlt().unwrap();
    });
    let mut s = state(64);
    s.gpr[9] = 0xFFFF_FFFF_FFFF_FFFF;
    s.gpr[10] = 5;
    let (exit, c, bus) = lockstep("imul", &code, &s, 1000);
    assert_eq!(exit, RunExit::Halted);
    assert_eq!(c.gpr[0], 0);
    assert_eq!(c.gpr[3] as i64, -21);
    assert_eq!(c.gpr[2] as i64, -0x1_C000_0000);
    assert_eq!(c.gpr[9], 0xFFFF_FFFF_FFFF_0000, "16-bit IMUL keeps the upper bits");
    let f = saved_flags(&bus, 5);
    assert_eq!(f[0], CF | OF | ZF | PF);
    assert_eq!(f[1] & (CF | OF | SF | ZF), SF);
    assert_eq!(f[2] & (CF | OF | SF), SF);
    assert_eq!(f[3], CF | OF | ZF | PF);
    assert_eq!(f[4] & (CF | OF), CF | OF);
    assert_eq!(c.gpr[11] & 0xFF, 0, "35 is not less than -21");
}

#[test]
fn test_jit_extend_setcc_cmov_convert() {
    let code = assemble(64, |a| {
        a.mov(rsi, 0x8000u64).unwrap();
        a.mov(qword_ptr(rsi), -2i32).unwrap(); // 0xFFFF_FFFF_FFFF_FFFE
        a.mov(rax, 0x8081u64).unwrap();
        a.movzx(ebx, al).unwrap();
        a.movsx(rcx, al).unwrap();
        a.movsx(dx, al).unwrap();
        a.movzx(edi, ah).unwrap();
        a.movsx(r8d, ax).unwrap();
        a.movsxd(r9, eax).unwrap();
        a.movzx(r10d, byte_ptr(rsi)).unwrap();
        a.movsx(r11, word_ptr(rsi)).unwrap();
        a.movsxd(r12, dword_ptr(rsi + 4)).unwrap();
        a.movzx(r13w, byte_ptr(rsi + 1)).unwrap();
        a.mov(byte_ptr(rsi + 0x10), ah).unwrap();
        a.mov(word_ptr(rsi + 0xFFF), 0x1234).unwrap(); // crosses a page: slow path
        a.add(byte_ptr(rsi + 0x10), 0x7F).unwrap();
        a.cmp(byte_ptr(rsi + 0x10), 0x80u32 as i32).unwrap();
        a.seto(ah).unwrap(); // no REX: AH
        a.setb(spl).unwrap(); // REX: SPL
        a.test(word_ptr(rsi + 0xFFF), 0x0204).unwrap();
        a.setne(bh).unwrap();
        a.sub(r14w, word_ptr(rsi)).unwrap();
        a.setc(r14b).unwrap();
        // CMOV: a false condition still zero-extends a 32-bit destination.
        a.mov(r15, -1i64).unwrap();
        a.xor(ecx, ecx).unwrap();
        a.cmovne(r15d, eax).unwrap();
        a.cmove(bp, ax).unwrap();
        a.cmovl(rdx, rax).unwrap();
        a.cwde().unwrap();
        a.cdqe().unwrap();
        a.cdq().unwrap();
        a.mov(rdi, rdx).unwrap();
        a.cqo().unwrap();
        a.hlt().unwrap();
    });
    let mut s = state(64);
    s.gpr[4] = 0x7_0000;
    s.gpr[14] = 1;
    let (exit, c, bus) = lockstep("extend", &code, &s, 1000);
    assert_eq!(exit, RunExit::Halted);
    assert_eq!(c.gpr[3] & 0xFF, 0x81, "MOVZX EBX, AL");
    assert_eq!(c.gpr[10], 0xFE);
    assert_eq!(c.gpr[11], u64::MAX - 1);
    assert_eq!(c.gpr[12], u64::MAX);
    assert_eq!(c.gpr[9], 0x8081);
    assert_eq!(c.gpr[8], 0xFFFF_8081);
    assert_eq!(c.gpr[15], 0xFFFF_FFFF, "CMOVNE not taken still clears bits 63..32");
    assert_eq!(c.gpr[4] & 0xFF, 0, "0x80 is not below 0x80 (SETB SPL)");
    let m = bus.mem.backing();
    assert_eq!(m[0x8010], 0x80u8.wrapping_add(0x7F));
    assert_eq!(m[0x8FFF], 0x34);
    assert_eq!(m[0x9000], 0x12);
}

#[test]
fn test_jit_cmov_with_false_condition_still_faults() {
    // CMOVcc reads its memory operand whatever the condition: a non-canonical address is #GP
    // (no IDT: a triple fault) even though nothing is moved.
    let code = assemble(64, |a| {
        a.mov(rbx, 0x8000_0000_0000_0000u64).unwrap();
        a.xor(eax, eax).unwrap();
        a.cmovne(rcx, qword_ptr(rbx)).unwrap();
        a.inc(eax).unwrap();
        a.hlt().unwrap();
    });
    let (exit, c, _) = lockstep("cmov-fault", &code, &state(64), 100);
    assert_eq!(exit, RunExit::TripleFault);
    assert_eq!(c.gpr[0], 0);
}

#[test]
fn test_jit_flags_live_at_a_possible_fault() {
    // The flags of SHL/IMUL are overwritten by the ADD after the load, but the load faults
    // first: the state at the fault (compared in lockstep) holds their flags.
    for bad in [0x8000_0000_0000_0000u64, 0x9000] {
        let code = assemble(64, |a| {
            a.mov(rbx, bad).unwrap();
            a.mov(rax, 0x4000_0000_0000_0001u64).unwrap();
            a.shl(rax, 2).unwrap();
            a.imul_2(rcx, rax).unwrap();
            a.mov(rdx, qword_ptr(rbx)).unwrap();
            a.add(rax, rax).unwrap();
            a.hlt().unwrap();
        });
        let mut s = state(64);
        s.gpr[1] = 3;
        let (exit, _, _) = lockstep("live-at-fault", &code, &s, 100);
        assert_eq!(exit, if bad == 0x9000 { RunExit::Halted } else { RunExit::TripleFault });
    }
}

#[test]
fn test_jit_fs_gs_bases_in_64_bit_mode() {
    let code = assemble(64, |a| {
        a.mov(rbx, 0x10u64).unwrap();
        a.mov(rax, 0x1111_2222_3333_4444u64).unwrap();
        a.mov(qword_ptr(rbx + 8).gs(), rax).unwrap(); // 0x8000 + 0x18
        a.mov(rcx, qword_ptr(0x18u64).gs()).unwrap();
        a.add(dword_ptr(rbx).fs(), 5).unwrap(); // 0x8800 + 0x10
        a.movzx(edx, byte_ptr(rbx + 3).gs()).unwrap();
        a.sub(rcx, qword_ptr(rbx + 8).gs()).unwrap();
        a.mov(esi, dword_ptr(ebx + 0x10).fs()).unwrap(); // 32-bit address, 64-bit base
        a.mov(rdi, qword_ptr(rbx).gs()).unwrap(); // GS base non-canonical after the write below
        a.hlt().unwrap();
    });
    let mut s = state(64);
    s.seg[5].base = 0x8000;
    s.seg[4].base = 0x8800;
    let (exit, c, bus) = lockstep("fs-gs", &code, &s, 100);
    assert_eq!(exit, RunExit::Halted);
    assert_eq!(c.gpr[1], 0, "GS:[0x18] read back what GS:[RBX + 8] wrote");
    let m = bus.mem.backing();
    assert_eq!(u64::from_le_bytes(m[0x8018..0x8020].try_into().unwrap()), 0x1111_2222_3333_4444);
    assert_eq!(m[0x8810], 5);
    // A base that makes the address non-canonical: #GP (no IDT: triple fault), in lockstep.
    let mut s = state(64);
    s.seg[5].base = 0x7FFF_FFFF_FFFF_FFF8;
    let (exit, _, _) = lockstep("gs-noncanonical", &code, &s, 100);
    assert_eq!(exit, RunExit::TripleFault);
}

#[test]
fn test_jit_rotates_with_dead_flags_and_pause() {
    // ROL/ROR run inline only when a flag writer follows; with a reader (ADC, PUSHFQ) they go
    // through the interpreter. Both must agree with it.
    let code = assemble(64, |a| {
        a.mov(rsi, 0x8000u64).unwrap();
        a.mov(rax, 0x8000_0000_0000_0001u64).unwrap();
        for c in [0u32, 1, 2, 31, 32, 63, 64] {
            a.mov(ecx, c).unwrap();
            a.mov(rbx, rax).unwrap();
            a.rol(rbx, c).unwrap();
            a.add(rbx, 1).unwrap(); // dead
            a.mov(rdx, rax).unwrap();
            a.ror(edx, cl).unwrap();
            a.xor(rdx, rbx).unwrap(); // dead
            a.mov(rdi, rax).unwrap();
            a.rol(rdi, cl).unwrap();
            a.adc(rdi, 0).unwrap(); // live: reads CF
            a.ror(eax, c).unwrap();
            save_flags(a); // live
            a.rol(r11, c).unwrap();
            save_flags(a); // live
            a.ror(r12, c).unwrap();
            save_flags(a); // live
            a.pause().unwrap();
            a.add(r8, rbx).unwrap();
            a.add(r9, rdx).unwrap();
            a.add(r10, rdi).unwrap();
        }
        a.hlt().unwrap();
    });
    let mut s = state(64);
    s.gpr[11] = 0xC000_0000_0000_0001;
    s.gpr[12] = 0x4000_0000_0000_0003;
    let (exit, c, _) = lockstep("rotates", &code, &s, 1000);
    assert_eq!(exit, RunExit::Halted);
    // R8 sums ROL(RAX, c) + 1 (Rust's rotate_left as the reference; counts masked to 6 bits),
    // and ROR EAX, c zero-extends RAX on the way.
    let (mut v, mut want) = (0x8000_0000_0000_0001u64, 0u64);
    for c in [0u32, 1, 2, 31, 32, 63, 64] {
        want = want.wrapping_add(v.rotate_left(c & 63).wrapping_add(1));
        v = u64::from((v as u32).rotate_right(c & 31));
    }
    assert_eq!(c.gpr[8], want);
    assert_eq!(c.gpr[0], v);
}

#[test]
fn test_jit_flags_live_at_a_faulting_push_and_store() {
    // ADD's flags are dead after the PUSH/store (SUB overwrites them) but the access faults
    // first (RSP or RBX non-canonical): the fault sees them (the JIT keeps them only for its
    // slow path).
    for (stack_ptr, base) in [(0x8000_0000_0000_0008u64, 0x8000u64), (0x7_0000, 0x8000_0000_0000_0000)] {
        let code = assemble(64, |a| {
            a.add(rax, rcx).unwrap();
            a.push(rdx).unwrap();
            a.sub(rdx, 1).unwrap();
            a.add(rax, rcx).unwrap();
            a.mov(qword_ptr(rbx), rdx).unwrap();
            a.sub(rdx, 1).unwrap();
            a.hlt().unwrap();
        });
        let mut s = state(64);
        s.gpr[0] = 0x8000_0000_0000_0000;
        s.gpr[1] = 0x8000_0000_0000_0000;
        s.gpr[3] = base;
        s.gpr[4] = stack_ptr;
        let (exit, c, _) = lockstep("flags-at-fault", &code, &s, 100);
        assert_eq!(exit, RunExit::TripleFault);
        // By hand: the first ADD gives 0 (CF, OF, ZF, PF), the second 0x8000_0000_0000_0000
        // (SF, PF).
        let want = if c.icount == 2 { CF | OF | ZF | PF } else { SF | PF };
        assert_eq!(c.rflags() & 0x8D5, want, "flags at the fault (after {} instructions)", c.icount);
    }
}

#[test]
fn test_jit_absolute_gs_inc_dec_memory_and_rdtsc() {
    let code = assemble(64, |a| {
        a.mov(rax, 0x1234u64).unwrap();
        a.mov(qword_ptr(0x40u64).gs(), rax).unwrap(); // absolute disp32, GS base 0x8000
        a.add(rax, qword_ptr(0x40u64).gs()).unwrap();
        a.inc(dword_ptr(0x40u64).gs()).unwrap();
        a.stc().unwrap();
        a.dec(byte_ptr(0x48u64).gs()).unwrap(); // 0 - 1: CF kept (1), SF, AF
        a.setc(bl).unwrap();
        a.inc(word_ptr(0x8fffu64)).unwrap(); // crosses a page: slow path
        a.dec(qword_ptr(0x40u64).gs()).unwrap();
        a.rdtsc().unwrap();
        a.mov(rsi, rax).unwrap();
        a.mov(rdi, rdx).unwrap();
        a.nop().unwrap();
        a.rdtsc().unwrap();
        a.sub(rax, rsi).unwrap();
        a.hlt().unwrap();
    });
    let mut s = state(64);
    s.seg[5].base = 0x8000;
    s.msr.tsc_offset = 0x1_FFFF_FFF0;
    let (exit, c, bus) = lockstep("gs-incdec-rdtsc", &code, &s, 100);
    assert_eq!(exit, RunExit::Halted);
    let m = bus.mem.backing();
    assert_eq!(u64::from_le_bytes(m[0x8040..0x8048].try_into().unwrap()), 0x1234, "INC then DEC");
    assert_eq!(m[0x8048], 0xFF);
    assert_eq!(c.gpr[3] & 0xFF, 1, "DEC kept the CF that STC set");
    // By the TSC rule (instructions retired before the RDTSC + offset): the first RDTSC is the
    // 10th instruction (9 before it), the second the 14th.
    assert_eq!(c.gpr[6], (0x1_FFFF_FFF0u64 + 9) & 0xFFFF_FFFF);
    assert_eq!(c.gpr[7], (0x1_FFFF_FFF0u64 + 9) >> 32);
    assert_eq!(c.gpr[0], 4, "4 instructions between the two");
}

#[test]
fn test_jit_indirect_jumps() {
    // A loop whose body jumps through a register and through a table in memory; then a jump to
    // a non-canonical address (#GP with RIP unchanged: no IDT, so a triple fault).
    let code = assemble(64, |a| {
        let mut top = a.create_label();
        let mut via_reg = a.create_label();
        let mut via_mem = a.create_label();
        let mut table = a.create_label();
        a.mov(ecx, 50u32).unwrap();
        a.lea(rax, qword_ptr(via_mem)).unwrap();
        a.mov(qword_ptr(table), rax).unwrap();
        a.set_label(&mut top).unwrap();
        a.lea(rax, qword_ptr(via_reg)).unwrap();
        a.jmp(rax).unwrap();
        a.set_label(&mut via_reg).unwrap();
        a.inc(ebx).unwrap();
        a.jmp(qword_ptr(table)).unwrap();
        a.set_label(&mut via_mem).unwrap();
        a.add(edx, 3).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.mov(rax, 0x8000_0000_0000_0000u64).unwrap();
        a.mov(qword_ptr(table), rax).unwrap();
        a.jmp(qword_ptr(table)).unwrap();
        a.hlt().unwrap();
        a.set_label(&mut table).unwrap();
        a.dq(&[0]).unwrap();
    });
    let mut s = state(64);
    s.gpr[2] = 0; // (EDX holds the CPU signature after reset)
    let (exit, c, _) = lockstep("indirect", &code, &s, 10_000);
    assert_eq!(exit, RunExit::TripleFault);
    assert_eq!((c.gpr[3], c.gpr[2]), (50, 150));
}

#[test]
fn test_jit_bt_memory_immediate_keeps_other_flags() {
    let code = assemble(64, |a| {
        a.mov(rsi, 0x8000u64).unwrap();
        a.mov(rdi, 0x9000u64).unwrap();
        a.mov(qword_ptr(rdi), 0x21).unwrap(); // bits 0 and 5
        a.mov(eax, 0x7FFF_FFFFu32).unwrap();
        a.add(eax, 1).unwrap(); // OF, SF, AF, PF
        a.bt(dword_ptr(rdi), 5).unwrap(); // CF = 1, the rest kept
        save_flags(a);
        a.bt(qword_ptr(rdi), 63).unwrap(); // CF = 0
        save_flags(a);
        a.xor(eax, eax).unwrap(); // ZF PF
        a.bt(word_ptr(rdi), 16).unwrap(); // count masked to 0: bit 0 = 1
        save_flags(a);
        a.mov(rbx, 0x8000_0000_0000_0000u64).unwrap();
        a.bt(dword_ptr(rbx), 1).unwrap(); // #GP (no IDT: triple fault)
        a.hlt().unwrap();
    });
    let (exit, _, bus) = lockstep("bt", &code, &state(64), 100);
    assert_eq!(exit, RunExit::TripleFault);
    let f = saved_flags(&bus, 3);
    // By hand: 0x7FFF_FFFF + 1 = 0x8000_0000 sets OF, SF, AF (and PF: low byte 0).
    assert_eq!(f[0], OF | SF | 0x10 | PF | CF);
    // SAVE's ADD RSI, 8 (0x8008) cleared every flag; BT bit 63 = 0 keeps them clear.
    assert_eq!(f[1], 0);
    assert_eq!(f[2], ZF | PF | CF);
}

#[test]
fn test_jit_cmov_from_memory() {
    let code = assemble(64, |a| {
        a.mov(rsi, 0x8000u64).unwrap();
        a.mov(qword_ptr(rsi), -5i32).unwrap();
        a.mov(rax, -1i64).unwrap();
        a.mov(rbx, -1i64).unwrap();
        a.mov(rcx, -1i64).unwrap();
        a.mov(rdx, 7u64).unwrap();
        a.cmp(edx, 7).unwrap(); // ZF
        a.cmove(eax, dword_ptr(rsi)).unwrap(); // taken
        a.cmovne(ebx, dword_ptr(rsi)).unwrap(); // not taken: still zero-extends
        a.cmovl(cx, word_ptr(rsi + 0xFFF)).unwrap(); // crosses a page: slow path; not taken
        a.cmovge(rdx, qword_ptr(rsi)).unwrap(); // taken
        a.hlt().unwrap();
    });
    let (exit, c, _) = lockstep("cmov-mem", &code, &state(64), 100);
    assert_eq!(exit, RunExit::Halted);
    assert_eq!(c.gpr[0], 0xFFFF_FFFB);
    assert_eq!(c.gpr[3], 0xFFFF_FFFF, "CMOVNE EBX not taken: bits 63..32 cleared");
    assert_eq!(c.gpr[1], u64::MAX, "CMOVL CX not taken: a 16-bit destination is untouched");
    assert_eq!(c.gpr[2] as i64, -5);
}

#[test]
fn test_jit_indirect_calls() {
    // CALL through a register and through memory, RET back; then CALL RSP-relative memory and
    // a CALL whose push faults (RSP non-canonical after the first loop).
    let code = assemble(64, |a| {
        let mut top = a.create_label();
        let mut f = a.create_label();
        let mut slot = a.create_label();
        a.mov(ecx, 30u32).unwrap();
        a.lea(rax, qword_ptr(f)).unwrap();
        a.mov(qword_ptr(slot), rax).unwrap();
        a.set_label(&mut top).unwrap();
        a.call(rax).unwrap();
        a.call(qword_ptr(slot)).unwrap();
        a.push(rax).unwrap();
        a.call(qword_ptr(rsp)).unwrap();
        a.pop(rdi).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.mov(rsp, 0x8000_0000_0000_0010u64).unwrap();
        a.call(rax).unwrap();
        a.hlt().unwrap();
        a.set_label(&mut f).unwrap();
        a.inc(ebx).unwrap();
        a.ret().unwrap();
        a.set_label(&mut slot).unwrap();
        a.dq(&[0]).unwrap();
    });
    let (exit, c, _) = lockstep("indirect-call", &code, &state(64), 10_000);
    assert_eq!(exit, RunExit::TripleFault);
    assert_eq!(c.gpr[3], 90);
    assert_eq!(c.gpr[4], 0x8000_0000_0000_0010, "RSP unchanged by the faulting CALL");
}

// The register cache: guest registers in host registers within a block.

#[test]
fn test_jit_cached_registers_at_a_page_fault() {
    // EAX and ECX are changed in host registers, then a load from a page that is not present
    // faults (#PF; no IDT, so it escalates to a triple fault): the state at the fault must hold
    // their new values. PSE: PDE 0 maps 0..4 MiB, PDE 1 is not present.
    let pd = 0x1_0000u64;
    let code = assemble(32, |a| {
        a.mov(eax, 5u32).unwrap();
        a.mov(ecx, 7u32).unwrap();
        a.add(eax, ecx).unwrap();
        a.add(ecx, eax).unwrap();
        a.mov(ebx, 0x40_0010u32).unwrap();
        a.mov(edx, dword_ptr(ebx)).unwrap();
        a.add(eax, ecx).unwrap();
        a.hlt().unwrap();
    });
    let mut start = state(32);
    start.cr3 = pd;
    start.cr4 |= cpu::state::cr::CR4_PSE;
    start.cr0 |= cpu::state::cr::CR0_PG;
    let (e0, c0, _) = {
        let mut bus = cpu::RamBus::with_code(RAM, &code, CODE).unwrap();
        bus.mem.load(base::GuestPhysAddr(pd), &0x83u32.to_le_bytes()).unwrap();
        let mut c = start.clone();
        let e = cpu::ExecutionEngine::run(&mut cpu::Interpreter::new(), &mut c, &mut bus, 100);
        (e, c, bus)
    };
    for slices in [&[][..], &[1], &[2, 3]] {
        let mut bus = cpu::RamBus::with_code(RAM, &code, CODE).unwrap();
        bus.mem.load(base::GuestPhysAddr(pd), &0x83u32.to_le_bytes()).unwrap();
        let mut jit = jit::Translator::new();
        let mut c = start.clone();
        let mut k = 0;
        let e = loop {
            let n = if slices.is_empty() { 100 } else { slices[k % slices.len()] };
            k += 1;
            let e = cpu::ExecutionEngine::run(&mut jit, &mut c, &mut bus, n);
            if e != RunExit::BudgetExhausted || c.icount >= 100 {
                break e;
            }
        };
        assert_eq!((e, arch(&c)), (e0, arch(&c0)), "slices {slices:?}");
    }
    assert_eq!(e0, RunExit::TripleFault);
    // By hand: EAX = 5 + 7, ECX = 7 + 12; the faulting load counts (6 instructions).
    assert_eq!((c0.gpr[0], c0.gpr[1], c0.icount), (12, 19, 6));
}

#[test]
fn test_jit_helper_between_cached_uses() {
    // BSWAP runs in the interpreter between inline uses of EAX and ECX: it must read the value
    // the host register holds, and the inline code after it must see its result.
    for bits in [32u32, 64] {
        let code = assemble(bits, |a| {
            a.mov(eax, 1u32).unwrap();
            a.mov(ecx, 2u32).unwrap();
            a.add(eax, ecx).unwrap();
            a.bswap(eax).unwrap();
            a.add(eax, ecx).unwrap();
            a.add(ecx, eax).unwrap();
            a.hlt().unwrap();
        });
        let (exit, c, _) = lockstep("helper-between", &code, &state(bits), 100);
        assert_eq!(exit, RunExit::Halted);
        assert_eq!((c.gpr[0], c.gpr[1]), (0x0300_0002, 0x0300_0004));
    }
}

#[test]
fn test_jit_partial_writes_to_cached_registers() {
    // AH and 16-bit writes to a register cached in a host register keep its other bits.
    let code = assemble(64, |a| {
        a.mov(rax, 0x1122_3344_5566_7788u64).unwrap();
        a.mov(ebx, 1u32).unwrap();
        a.add(rax, rbx).unwrap();
        a.mov(ah, 0x99).unwrap();
        a.add(rax, rbx).unwrap();
        a.mov(ax, 0x1234u32).unwrap();
        a.add(rax, rbx).unwrap();
        a.inc(al).unwrap();
        a.add(bh, ah).unwrap();
        a.add(rax, rbx).unwrap();
        a.hlt().unwrap();
    });
    let (exit, c, _) = lockstep("partial-cached", &code, &state(64), 100);
    assert_eq!(exit, RunExit::Halted);
    // By hand: ...7789 -> AH=99 -> ...998a -> AX=1234 -> ...1235 -> AL=36 -> BH=12 (RBX 0x1201)
    // -> RAX + 0x1201.
    assert_eq!(c.gpr[3], 0x1201);
    assert_eq!(c.gpr[0], 0x1122_3344_5566_1236 + 0x1201);
}

#[test]
fn test_jit_32_bit_writes_to_cached_registers_zero_extend() {
    let code = assemble(64, |a| {
        a.mov(rax, -1i64).unwrap();
        a.mov(rcx, -1i64).unwrap();
        a.mov(rdx, -1i64).unwrap();
        a.mov(rsi, 0x8000u64).unwrap();
        a.mov(qword_ptr(rsi), rax).unwrap();
        a.add(eax, 1).unwrap(); // 0
        a.add(rax, rcx).unwrap(); // -1
        a.mov(ecx, eax).unwrap(); // 0xFFFF_FFFF
        a.lea(edx, dword_ptr(rax + rcx)).unwrap(); // low half of -1 + 0xFFFF_FFFF
        a.mov(edi, dword_ptr(rsi)).unwrap(); // 0xFFFF_FFFF
        a.add(rdi, rcx).unwrap();
        a.add(rdx, rcx).unwrap();
        a.add(rax, rcx).unwrap();
        a.hlt().unwrap();
    });
    let (exit, c, _) = lockstep("zext-cached", &code, &state(64), 100);
    assert_eq!(exit, RunExit::Halted);
    assert_eq!(c.gpr[1], 0xFFFF_FFFF);
    assert_eq!(c.gpr[2], 0xFFFF_FFFE + 0xFFFF_FFFF);
    assert_eq!(c.gpr[7], 0x1_FFFF_FFFE);
    assert_eq!(c.gpr[0], 0xFFFF_FFFE);
}

#[test]
fn test_jit_register_self_loop_ends_at_the_exact_budget() {
    // A register-only self-loop (the benchmark guest's integer loop) runs on host registers
    // with a countdown of whole iterations: every budget must still end exactly, and the
    // flags at the stop are those of the last iteration's DEC.
    let code = assemble(32, |a| {
        let mut top = a.create_label();
        a.mov(eax, 1u32).unwrap();
        a.mov(ecx, 50u32).unwrap();
        a.set_label(&mut top).unwrap();
        a.add(eax, ecx).unwrap();
        a.mov(edx, eax).unwrap();
        a.shl(edx, 1).unwrap();
        a.add(eax, edx).unwrap();
        a.xor(eax, ecx).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
    });
    let (exit, c, _) = lockstep("self-loop", &code, &state(32), 1000);
    assert_eq!(exit, RunExit::Halted);
    assert_eq!(c.icount, 2 + 7 * 50 + 1);
    let mut want = 1u32;
    for k in (1..=50u32).rev() {
        want = want.wrapping_add(k);
        want = want.wrapping_add(want << 1) ^ k;
    }
    assert_eq!(c.gpr[0], u64::from(want), "the loop's result, computed on the host");
    for budget in (1u64..=40).chain([100, 351, 352, 353]) {
        let (e0, c0, _) = run(&mut cpu::Interpreter::new(), &code, &state(32), budget, &[]);
        let (e1, c1, _) = run(&mut jit::Translator::new(), &code, &state(32), budget, &[]);
        assert_eq!((e1, arch(&c1)), (e0, arch(&c0)), "budget {budget}");
        assert_eq!(c1.icount, budget.min(353));
    }
}

#[test]
fn test_jit_flags_kept_across_loads_and_stores() {
    // CMP's flags stay live across a store, a load and a push (kept in R9, not written back),
    // then SETB, CMOV, a Jcc and ADC read them; with `bad`, the second store faults (#GP on a
    // non-canonical address): the state at the fault holds the CMP's flags.
    for bad in [0x8000u64, 0x8000_0000_0000_0000] {
        let code = assemble(64, |a| {
            let mut skip = a.create_label();
            a.mov(rsi, 0x8000u64).unwrap();
            a.mov(rdi, bad).unwrap();
            a.mov(eax, 1u32).unwrap();
            a.cmp(eax, 2).unwrap(); // CF = 1, SF = 1
            a.mov(qword_ptr(rsi), rax).unwrap();
            a.mov(rbx, qword_ptr(rsi)).unwrap();
            a.push(rbx).unwrap();
            a.mov(dword_ptr(rdi + 8), eax).unwrap();
            a.setb(cl).unwrap();
            a.cmovs(edx, ebx).unwrap();
            a.jl(skip).unwrap();
            a.mov(ebx, 99u32).unwrap();
            a.set_label(&mut skip).unwrap();
            a.adc(ebx, 0).unwrap(); // 1 + 0 + CF
            a.hlt().unwrap();
        });
        let (exit, c, _) = lockstep("flags-r9", &code, &state(64), 100);
        if bad == 0x8000 {
            assert_eq!(exit, RunExit::Halted);
            assert_eq!((c.gpr[3], c.gpr[1] & 0xFF, c.gpr[2]), (2, 1, 1), "SETB, CMOVS, JL taken, ADC saw CF");
        } else {
            assert_eq!(exit, RunExit::TripleFault);
            assert_eq!(c.rflags() & 0x81, 0x81, "CF and SF of the CMP at the fault");
        }
    }
}

#[test]
fn test_jit_cmp_flags_recomputed_after_loads_and_at_a_fault() {
    // The flags of a CMP stay live across loads: instead of being saved they are made again by
    // running the CMP once more (at a fault, on the slow path; before a load that overwrites
    // one of its registers; at the reader).
    for bad in [0x8000u64, 0x8000_0000_0000_0000] {
        let code = assemble(64, |a| {
            let mut l = a.create_label();
            a.mov(rsi, 0x8000u64).unwrap();
            a.mov(rdi, bad).unwrap();
            a.mov(eax, 5u32).unwrap();
            a.mov(ebx, 7u32).unwrap();
            a.mov(qword_ptr(rsi), rbx).unwrap();
            a.cmp(rax, rbx).unwrap(); // CF = 1, SF != OF
            a.mov(rcx, qword_ptr(rsi)).unwrap();
            a.mov(rdx, qword_ptr(rdi)).unwrap(); // faults with the non-canonical address
            a.mov(rax, qword_ptr(rsi)).unwrap(); // overwrites a register of the CMP
            a.jb(l).unwrap();
            a.mov(r8d, 99u32).unwrap();
            a.set_label(&mut l).unwrap();
            a.setl(r9b).unwrap();
            a.test(ecx, 0x10).unwrap(); // TEST: AF reads 0 afterwards
            a.mov(r10, qword_ptr(rsi)).unwrap();
            a.lahf().unwrap();
            a.hlt().unwrap();
        });
        let (exit, c, _) = lockstep("cmp-recompute", &code, &state(64), 100);
        if bad == 0x8000 {
            assert_eq!(exit, RunExit::Halted);
            assert_eq!((c.gpr[0] & 0xFF, c.gpr[1], c.gpr[2], c.gpr[8], c.gpr[9] & 0xFF), (7, 7, 7, 0, 1));
            // LAHF after TEST ECX(7), 0x10: ZF = 1, PF = 1, the rest 0 (AF 0), bit 1 set.
            assert_eq!((c.gpr[0] >> 8) & 0xFF, 0x46);
        } else {
            assert_eq!(exit, RunExit::TripleFault);
            assert_eq!(c.rflags() & 0x881, 0x81, "CF and SF of the CMP (OF 0) at the fault");
        }
    }
}

#[test]
fn test_jit_insertion_sort_with_side_exits() {
    // The benchmark guest's insertion sort: its inner loop is one block with two side exits
    // (Jcc inside the block) and a JMP back to its entry, run on host registers. The result
    // must be the host's sort of the same words, under every slicing.
    let words: Vec<u32> = (0..40u32).map(|k| k.wrapping_mul(2_654_435_761) >> 7).collect();
    let code = assemble(32, |a| {
        let (mut outer, mut inner, mut place) = (a.create_label(), a.create_label(), a.create_label());
        a.mov(esi, 0x8000u32).unwrap();
        a.mov(ecx, 1u32).unwrap();
        a.set_label(&mut outer).unwrap();
        a.mov(edx, dword_ptr(esi + ecx * 4)).unwrap();
        a.mov(ebx, ecx).unwrap();
        a.set_label(&mut inner).unwrap();
        a.test(ebx, ebx).unwrap();
        a.je(place).unwrap();
        a.mov(eax, dword_ptr(esi + ebx * 4 - 4)).unwrap();
        a.cmp(eax, edx).unwrap();
        a.jbe(place).unwrap();
        a.mov(dword_ptr(esi + ebx * 4), eax).unwrap();
        a.sub(ebx, 1).unwrap();
        a.jmp(inner).unwrap();
        a.set_label(&mut place).unwrap();
        a.mov(dword_ptr(esi + ebx * 4), edx).unwrap();
        a.add(ecx, 1).unwrap();
        a.cmp(ecx, words.len() as i32).unwrap();
        a.jne(outer).unwrap();
        a.hlt().unwrap();
    });
    let mut img = code.clone();
    img.resize(0x8000 - CODE as usize, 0);
    for w in &words {
        img.extend_from_slice(&w.to_le_bytes());
    }
    let (exit, _, bus) = lockstep("insertion-sort", &img, &state(32), 100_000);
    assert_eq!(exit, RunExit::Halted);
    let mut sorted = words.clone();
    sorted.sort_unstable();
    let mut got = vec![0u8; 4 * words.len()];
    bus.mem.read(base::GuestPhysAddr(0x8000), &mut got).unwrap();
    let got: Vec<u32> = got.chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(got, sorted);
}
