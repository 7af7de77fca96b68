//! The JIT's inline BSF/BSR, TZCNT, BT/BTS/BTR/BTC, one-operand MUL/IMUL, DIV and BSWAP against
//! the interpreter: zero and non-zero sources, bit offsets past the width, products that fit
//! and that do not, divisions that fault (#DE through the interpreter), with the flags live
//! (each result's flags pushed on the stack, so memory compares them) and dead (overwritten
//! next), in 32- and 64-bit code, in one run and sliced. Some results are checked by hand.

mod common;

use common::*;
use cpu::RunExit;
use iced_x86::code_asm::*;

const VALUES: [u64; 8] = [
    0,
    1,
    0x8000_0000,
    0xFFFF_FFFF,
    0x0000_0001_0000_0000,
    0x8000_0000_0000_0000,
    0x0123_4567_89AB_CDEF,
    0xFFFF_FFFF_FFFF_FFFE,
];

/// Sets the flags to a mix (CF, PF, AF, ZF, SF, OF from a CMP of `k`-dependent values), so kept
/// flags are visible.
fn mix_flags(a: &mut CodeAssembler, k: usize) {
    a.mov(r8d, (k as u32).wrapping_mul(0x9E37_79B9)).unwrap();
    a.cmp(r8d, 0x7FFF_FFFF).unwrap();
}

fn pushf(a: &mut CodeAssembler, bits: u32) {
    if bits == 64 {
        a.pushfq().unwrap();
    } else {
        a.pushfd().unwrap();
    }
}

#[test]
fn test_jit_bit_scan_and_count() {
    let code = assemble(64, |a| {
        for (k, &v) in VALUES.iter().enumerate() {
            a.mov(rcx, v).unwrap();
            a.mov(rax, 0x5555_AAAA_5555_AAAAu64).unwrap();
            a.mov(rdx, rax).unwrap();
            a.mov(rbx, rax).unwrap();
            a.mov(rsi, rax).unwrap();
            mix_flags(a, k);
            a.bsf(eax, ecx).unwrap();
            a.pushfq().unwrap();
            a.bsr(rdx, rcx).unwrap();
            a.pushfq().unwrap();
            mix_flags(a, k + 1);
            a.bsr(ebx, ecx).unwrap();
            a.pushfq().unwrap();
            a.bsf(rsi, rcx).unwrap();
            a.pushfq().unwrap();
            mix_flags(a, k + 2);
            a.tzcnt(edi, ecx).unwrap();
            a.pushfq().unwrap();
            a.tzcnt(r9, rcx).unwrap();
            a.pushfq().unwrap();
            // Dead flags: the ADD overwrites them.
            a.bsf(r10, rcx).unwrap();
            a.tzcnt(r11d, ecx).unwrap();
            a.add(r10, r11).unwrap();
            a.push(rax).unwrap();
            a.push(rdx).unwrap();
            a.push(rbx).unwrap();
            a.push(rsi).unwrap();
            a.push(rdi).unwrap();
            a.push(r9).unwrap();
            a.push(r10).unwrap();
        }
        a.hlt().unwrap();
    });
    let (e, c, bus) = lockstep("bit scan", &code, &state(64), 10_000);
    assert_eq!(e, RunExit::Halted);
    // The last value (…FFFE): BSF = 1, BSR = 63; TZCNT r9 = 1.
    let top = c.gpr[4] as usize;
    let word = |n: usize| u64::from_le_bytes(bus.mem.backing()[top + 8 * n..top + 8 * n + 8].try_into().unwrap());
    assert_eq!(word(1), 1, "tzcnt r9");
    assert_eq!(word(5), 63, "bsr rdx");
    // The first value (0): BSF EAX with a zero source leaves all of RAX, ZF = 1.
    let first = 0x7_0000 - 8;
    let f = u64::from_le_bytes(bus.mem.backing()[first..first + 8].try_into().unwrap());
    assert_ne!(f & 0x40, 0, "ZF after BSF of 0");
}

#[test]
fn test_jit_bit_test_forms() {
    for bits in [32u32, 64] {
        let code = assemble(bits, |a| {
            for (k, &v) in VALUES.iter().enumerate() {
                a.mov(eax, v as u32).unwrap();
                a.mov(edx, (v >> 32) as u32 | 0x10).unwrap();
                a.mov(ecx, (k as u32) * 13 + 30).unwrap();
                for imm in [0u32, 5, 31, 32, 33, 63, 200] {
                    mix_flags_any(a, bits, k + imm as usize);
                    a.bt(eax, imm).unwrap();
                    pushf(a, bits);
                    a.bts(edx, imm).unwrap();
                    pushf(a, bits);
                    a.btr(eax, imm).unwrap();
                    pushf(a, bits);
                    a.btc(edx, imm).unwrap();
                    pushf(a, bits);
                    a.bt(edx, ecx).unwrap();
                    pushf(a, bits);
                    // Dead flags.
                    a.bts(eax, imm).unwrap();
                    a.bt(eax, 3).unwrap();
                    a.add(eax, edx).unwrap();
                }
                if bits == 64 {
                    a.mov(rbx, v).unwrap();
                    a.mov(rcx, v.rotate_left(7)).unwrap();
                    for imm in [0u32, 31, 32, 63, 64, 100] {
                        mix_flags(a, k + imm as usize);
                        a.bt(rbx, imm).unwrap();
                        a.pushfq().unwrap();
                        a.btc(rbx, imm).unwrap();
                        a.pushfq().unwrap();
                        a.bts(rbx, imm).unwrap();
                        a.btr(rcx, imm).unwrap();
                        a.pushfq().unwrap();
                        a.bt(rbx, rcx).unwrap();
                        a.pushfq().unwrap();
                    }
                    a.push(rbx).unwrap();
                    a.push(rcx).unwrap();
                }
                if bits == 64 {
                    a.push(rax).unwrap();
                    a.push(rdx).unwrap();
                } else {
                    a.push(eax).unwrap();
                    a.push(edx).unwrap();
                }
            }
            a.hlt().unwrap();
        });
        let (e, _, _) = lockstep("bit test", &code, &state(bits), 100_000);
        assert_eq!(e, RunExit::Halted);
    }
}

fn mix_flags_any(a: &mut CodeAssembler, bits: u32, k: usize) {
    a.mov(edi, (k as u32).wrapping_mul(0x9E37_79B9)).unwrap();
    a.cmp(edi, 0x7FFF_FFFF).unwrap();
    let _ = bits;
}

#[test]
fn test_jit_wide_multiply_and_divide() {
    for bits in [32u32, 64] {
        let code = assemble(bits, |a| {
            for (k, &x) in VALUES.iter().enumerate() {
                for &y in &VALUES[(k % 3)..] {
                    if bits == 64 {
                        a.mov(rax, x).unwrap();
                        a.mov(rbx, y).unwrap();
                        mix_flags(a, k);
                        a.mul(rbx).unwrap();
                        a.pushfq().unwrap();
                        a.push(rax).unwrap();
                        a.push(rdx).unwrap();
                        a.mov(rax, y).unwrap();
                        a.imul(rbx).unwrap();
                        a.pushfq().unwrap();
                        a.push(rdx).unwrap();
                        a.mul(ebx).unwrap();
                        a.pushfq().unwrap();
                        a.imul(eax).unwrap();
                        a.pushfq().unwrap();
                        a.push(rax).unwrap();
                        a.push(rdx).unwrap();
                        // DIV that cannot fault: RDX below the divisor (or 0 and the divisor
                        // not 0); flags kept.
                        a.mov(rax, x).unwrap();
                        a.mov(rcx, y | 1).unwrap();
                        a.xor(edx, edx).unwrap();
                        mix_flags(a, k + 1);
                        a.div(rcx).unwrap();
                        a.pushfq().unwrap();
                        a.push(rdx).unwrap();
                        a.xor(edx, edx).unwrap();
                        a.div(ecx).unwrap();
                        a.pushfq().unwrap();
                        a.push(rax).unwrap();
                        a.push(rdx).unwrap();
                        a.bswap(rax).unwrap();
                        a.bswap(edx).unwrap();
                        a.push(rax).unwrap();
                        a.push(rdx).unwrap();
                    } else {
                        a.mov(eax, x as u32).unwrap();
                        a.mov(ebx, y as u32).unwrap();
                        mix_flags_any(a, bits, k);
                        a.mul(ebx).unwrap();
                        a.pushfd().unwrap();
                        a.imul(ebx).unwrap();
                        a.pushfd().unwrap();
                        a.push(eax).unwrap();
                        a.push(edx).unwrap();
                        a.mov(ecx, y as u32 | 1).unwrap();
                        a.xor(edx, edx).unwrap();
                        a.div(ecx).unwrap();
                        a.pushfd().unwrap();
                        a.bswap(eax).unwrap();
                        a.push(eax).unwrap();
                        a.push(edx).unwrap();
                    }
                }
            }
            a.hlt().unwrap();
        });
        let (e, _, _) = lockstep("mul div", &code, &state(bits), 100_000);
        assert_eq!(e, RunExit::Halted);
    }
    // By hand: 0xFFFF_FFFF * 0xFFFF_FFFF = 0xFFFF_FFFE_0000_0001 (CF = OF = 1).
    let code = assemble(32, |a| {
        a.mov(eax, 0xFFFF_FFFFu32).unwrap();
        a.mov(ebx, eax).unwrap();
        a.mul(ebx).unwrap();
        a.setc(cl).unwrap();
        a.hlt().unwrap();
    });
    let (_, c, _) = lockstep("mul by hand", &code, &state(32), 100);
    assert_eq!((c.gpr[0], c.gpr[2], c.gpr[1] & 0xFF), (1, 0xFFFF_FFFE, 1));
}

#[test]
fn test_jit_divide_errors_go_to_the_interpreter() {
    // #DE (no IDT: a triple fault) for a zero divisor and for a quotient that does not fit;
    // the registers are those before the DIV, the flags those the CMP left.
    for (bits, hi, d) in [(64u32, 0u64, 0u64), (64, 5, 5), (64, 7, 3), (32, 0, 0), (32, 9, 9)] {
        let code = assemble(bits, |a| {
            a.mov(eax, 0x1234u32).unwrap();
            a.mov(edx, hi as u32).unwrap();
            a.mov(ecx, d as u32).unwrap();
            a.cmp(eax, 0x2000).unwrap();
            a.inc(ebx).unwrap();
            if bits == 64 {
                a.div(rcx).unwrap();
            } else {
                a.div(ecx).unwrap();
            }
            a.inc(ebx).unwrap();
            a.hlt().unwrap();
        });
        let (e, c, _) = lockstep("div fault", &code, &state(bits), 100);
        assert_eq!((e, c.icount, c.gpr[0]), (RunExit::TripleFault, 6, 0x1234), "{bits} {hi} {d}");
    }
}

#[test]
fn test_jit_shifts_by_cl_with_live_flags() {
    // Every masked count (0 keeps the flags and still zero-extends a 32-bit register), each
    // result's flags pushed; the shifted register's CL among them.
    for bits in [32u32, 64] {
        let code = assemble(bits, |a| {
            for (k, &v) in VALUES.iter().enumerate() {
                for count in [0u32, 1, 2, 7, 31, 32, 33, 63, 64, 65, 255] {
                    a.mov(ecx, count).unwrap();
                    a.mov(eax, v as u32).unwrap();
                    a.mov(edx, (v >> 32) as u32).unwrap();
                    mix_flags_any(a, bits, k + count as usize);
                    a.shl(eax, cl).unwrap();
                    pushf(a, bits);
                    a.shr(edx, cl).unwrap();
                    pushf(a, bits);
                    a.sar(eax, cl).unwrap();
                    pushf(a, bits);
                    a.shl(ecx, cl).unwrap();
                    pushf(a, bits);
                    if bits == 64 {
                        a.mov(rbx, v).unwrap();
                        a.mov(ecx, count).unwrap();
                        mix_flags(a, k);
                        a.shl(rbx, cl).unwrap();
                        a.pushfq().unwrap();
                        a.shr(rbx, cl).unwrap();
                        a.pushfq().unwrap();
                        a.sar(rbx, cl).unwrap();
                        a.pushfq().unwrap();
                        a.push(rbx).unwrap();
                        a.push(rax).unwrap();
                        a.push(rdx).unwrap();
                        a.push(rcx).unwrap();
                    } else {
                        a.push(eax).unwrap();
                        a.push(edx).unwrap();
                        a.push(ecx).unwrap();
                    }
                }
            }
            a.hlt().unwrap();
        });
        let (e, _, _) = lockstep("shift cl", &code, &state(bits), 100_000);
        assert_eq!(e, RunExit::Halted);
    }
}

#[test]
fn test_jit_double_shifts_by_cl_and_immediate() {
    for bits in [32u32, 64] {
        let code = assemble(bits, |a| {
            for (k, &v) in VALUES.iter().enumerate() {
                for count in [0u32, 1, 2, 17, 31, 32, 33, 63, 64, 200] {
                    a.mov(ecx, count).unwrap();
                    a.mov(eax, v as u32).unwrap();
                    a.mov(edx, (v >> 32) as u32 ^ 0x8000_0001).unwrap();
                    mix_flags_any(a, bits, k + count as usize);
                    a.shld(eax, edx, cl).unwrap();
                    pushf(a, bits);
                    a.shrd(edx, eax, cl).unwrap();
                    pushf(a, bits);
                    if count & 31 != 0 {
                        a.shld(eax, edx, count).unwrap();
                        pushf(a, bits);
                        a.shrd(edx, eax, count).unwrap();
                        pushf(a, bits);
                    }
                    // Dead flags.
                    a.shrd(eax, edx, cl).unwrap();
                    a.add(eax, edx).unwrap();
                    if bits == 64 {
                        a.mov(rbx, v).unwrap();
                        a.mov(rsi, v.rotate_left(13) ^ 0x8000_0000_0000_0000).unwrap();
                        mix_flags(a, k);
                        a.shld(rbx, rsi, cl).unwrap();
                        a.pushfq().unwrap();
                        a.shrd(rsi, rbx, cl).unwrap();
                        a.pushfq().unwrap();
                        if count & 63 != 0 {
                            a.shrd(rbx, rsi, count).unwrap();
                            a.pushfq().unwrap();
                        }
                        a.push(rbx).unwrap();
                        a.push(rsi).unwrap();
                        a.push(rax).unwrap();
                        a.push(rdx).unwrap();
                    } else {
                        a.push(eax).unwrap();
                        a.push(edx).unwrap();
                    }
                }
            }
            a.hlt().unwrap();
        });
        let (e, _, _) = lockstep("double shift", &code, &state(bits), 100_000);
        assert_eq!(e, RunExit::Halted);
    }
}
