//! The JIT's inline SSE forms against the interpreter: every legacy SSE/SSE2/SSSE3/SSE4 form
//! with XMM operands (iced's table of encodings, whether the JIT inlines it or not) on register
//! and memory operands, aligned and misaligned, at page ends and across pages, at a page fault,
//! with the GPR moves between cached registers, and with SSE unavailable (CR4.OSFXSR clear,
//! CR0.TS set and cleared inside a run). The comparison covers the XMM registers and MXCSR (see
//! `common::arch`). A test also checks that a block of these forms runs without any helper call
//! once SSE is enabled (what inlining means), and with helper calls when it is not.

mod common;

use common::*;
use cpu::state::cr;
use cpu::{CpuState, ExecutionEngine, Interpreter, RunExit};
use iced_x86::code_asm::*;
use iced_x86::{Code, Encoder, EncodingKind, Instruction, MemoryOperand, OpCodeOperandKind as K, Register};

/// Seeded pseudo-random numbers (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A start state with SSE enabled and XMM registers full of mixed patterns (equal bytes, sign
/// bits, zeros), RSI at the data area.
fn sse_state(bits: u32, seed: u64) -> CpuState {
    let mut c = state(bits);
    c.cr4 |= cr::CR4_OSFXSR;
    let mut rng = Rng(seed | 1);
    for (k, x) in c.fpu.xmm.iter_mut().enumerate() {
        let mut v = [0u8; 16];
        for (j, b) in v.iter_mut().enumerate() {
            let r = rng.next();
            *b = match (r >> 8) % 5 {
                0 => 0,
                1 => 0x80 | (r as u8 & 0x7F),
                2 => (k * 3 + j) as u8 & 0x0F,
                3 => 0xFF,
                _ => r as u8,
            };
        }
        *x = v;
    }
    c.gpr[6] = 0x8000;
    c.gpr[2] = rng.next();
    c.gpr[3] = rng.next();
    c
}

/// Lockstep with fewer slicings than `common::lockstep` (many small programs).
fn lockstep2(name: &str, code: &[u8], start: &CpuState, budget: u64) -> (RunExit, CpuState) {
    let (e0, c0, b0) = run(&mut Interpreter::new(), code, start, budget, &[]);
    for slices in [&[][..], &[1], &[2, 3]] {
        let mut jit = jit::Translator::new();
        let (e1, c1, b1) = run(&mut jit, code, start, budget, slices);
        assert_eq!(e1, e0, "{name}: exit differs with slices {slices:?}");
        assert_eq!(arch(&c1), arch(&c0), "{name}: state differs with slices {slices:?}");
        assert!(b1.mem.backing() == b0.mem.backing(), "{name}: memory differs with slices {slices:?}");
    }
    (e0, c0)
}

/// The encoding of `instrs` at `CODE`; `None` if one does not exist in this mode.
fn encode(bits: u32, instrs: &[Instruction]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut ip = CODE;
    for i in instrs {
        let mut enc = Encoder::new(bits);
        let n = enc.encode(i, ip).ok()?;
        ip += n as u64;
        out.extend(enc.take_buffer());
    }
    Some(out)
}

/// The operands to try for each operand kind of a form (register and memory variants, each
/// with a destination of its own so that none hides another's result), or `None` if the form
/// has a shape this test does not build.
fn variants(code: Code, bits: u32, misaligned: bool) -> Option<Vec<Instruction>> {
    let oc = code.op_code();
    let x_b = if bits == 64 { Register::XMM12 } else { Register::XMM7 };
    let dests = [Register::XMM3, Register::XMM2, Register::XMM1, Register::XMM0, Register::XMM6, Register::XMM5];
    let mut next = 0;
    let mut d = || {
        next += 1;
        dests[(next - 1) % dests.len()]
    };
    let base_reg = if bits == 64 { Register::RSI } else { Register::ESI };
    let off = if misaligned { 8 } else { 0 };
    let m_src = MemoryOperand::with_base_displ(base_reg, 16 + off);
    let m_dst = MemoryOperand::with_base_displ(base_reg, 32 + off);
    let (g32, g64) = (Register::EDX, Register::RDX);
    let (h32, h64) = (Register::EBX, Register::RBX);
    let mut v = Vec::new();
    let k = oc.op_kinds();
    let imms: &[u32] = if k.last() == Some(&K::imm8) { &[0x1B, 3, 0x21] } else { &[] };
    macro_rules! add {
        ($r:expr) => {
            match $r {
                Ok(i) => v.push(i),
                Err(_) => return None,
            }
        };
    }
    match k {
        [K::xmm_reg, K::xmm_or_mem] | [K::xmm_reg, K::xmm_rm] | [K::xmm_reg, K::mem] => {
            if !misaligned && k[1] != K::mem {
                add!(Instruction::with2(code, d(), x_b));
                add!(Instruction::with2(code, x_b, x_b));
            }
            if k[1] != K::xmm_rm {
                add!(Instruction::with2(code, d(), m_src));
            }
        }
        [K::xmm_reg, K::xmm_or_mem, K::imm8] | [K::xmm_reg, K::xmm_rm, K::imm8] => {
            for &imm in imms {
                if !misaligned {
                    add!(Instruction::with3(code, d(), x_b, imm));
                }
                if k[1] == K::xmm_or_mem {
                    add!(Instruction::with3(code, d(), m_src, imm));
                }
            }
        }
        [K::xmm_rm, K::imm8] if !misaligned => {
            for &imm in imms {
                add!(Instruction::with2(code, d(), imm));
            }
        }
        [K::xmm_or_mem, K::xmm_reg] | [K::mem, K::xmm_reg] | [K::xmm_rm, K::xmm_reg] => {
            if !misaligned && k[0] != K::mem {
                add!(Instruction::with2(code, d(), x_b));
            }
            if k[0] != K::xmm_rm {
                add!(Instruction::with2(code, m_dst, x_b));
            }
        }
        [K::r32_reg, K::xmm_rm] | [K::r32_reg, K::xmm_or_mem] if !misaligned => {
            add!(Instruction::with2(code, g32, x_b));
            if k[1] == K::xmm_or_mem {
                add!(Instruction::with2(code, h32, m_src));
            }
        }
        [K::r64_reg, K::xmm_rm] | [K::r64_reg, K::xmm_or_mem] if !misaligned && bits == 64 => {
            add!(Instruction::with2(code, g64, x_b));
            if k[1] == K::xmm_or_mem {
                add!(Instruction::with2(code, h64, m_src));
            }
        }
        [K::xmm_reg, K::r32_or_mem] => {
            if !misaligned {
                add!(Instruction::with2(code, d(), g32));
            }
            add!(Instruction::with2(code, d(), m_src));
        }
        [K::xmm_reg, K::r64_or_mem] if bits == 64 => {
            if !misaligned {
                add!(Instruction::with2(code, d(), g64));
            }
            add!(Instruction::with2(code, d(), m_src));
        }
        [K::r32_or_mem, K::xmm_reg] => {
            if !misaligned {
                add!(Instruction::with2(code, g32, x_b));
            }
            add!(Instruction::with2(code, m_dst, x_b));
        }
        [K::r64_or_mem, K::xmm_reg] if bits == 64 => {
            if !misaligned {
                add!(Instruction::with2(code, g64, x_b));
            }
            add!(Instruction::with2(code, m_dst, x_b));
        }
        _ => return None,
    }
    (!v.is_empty()).then_some(v)
}

/// Every legacy form with an XMM operand in iced's table.
fn sse_codes() -> Vec<Code> {
    Code::values()
        .filter(|c| {
            c.encoding() == EncodingKind::Legacy
                && c.op_code().is_instruction()
                && c.op_code().op_kinds().iter().any(|k| matches!(k, K::xmm_reg | K::xmm_rm | K::xmm_or_mem))
        })
        .collect()
}

/// A program: the data area filled from XMM5-7, then `body`, then HLT.
fn program(bits: u32, body: &[Instruction]) -> Option<Vec<u8>> {
    let base_reg = if bits == 64 { Register::RSI } else { Register::ESI };
    let mut all = Vec::new();
    for (k, x) in [Register::XMM5, Register::XMM6, Register::XMM7].into_iter().enumerate() {
        all.push(
            Instruction::with2(Code::Movdqu_xmmm128_xmm, MemoryOperand::with_base_displ(base_reg, 16 * k as i64), x)
                .unwrap(),
        );
    }
    all.extend_from_slice(body);
    all.push(Instruction::with(Code::Hlt));
    encode(bits, &all)
}

#[test]
fn test_jit_every_sse_form_on_registers_and_memory() {
    let mut forms = 0;
    for bits in [64u32, 32] {
        for (n, code) in sse_codes().into_iter().enumerate() {
            let Some(prog) = variants(code, bits, false).and_then(|b| program(bits, &b)) else { continue };
            forms += 1;
            lockstep2(&format!("{code:?} ({bits}-bit)"), &prog, &sse_state(bits, n as u64 * 77 + 5), 100);
        }
    }
    assert!(forms > 300, "only {forms} forms built");
}

#[test]
fn test_jit_sse_misaligned_memory_operands() {
    // 8 bytes off a 16-byte boundary: #GP for the forms that require alignment (no IDT: a
    // triple fault), the access for the others; registers and memory unchanged on a fault.
    let mut faults = 0;
    for bits in [64u32, 32] {
        for (n, code) in sse_codes().into_iter().enumerate() {
            let Some(prog) = variants(code, bits, true).and_then(|b| program(bits, &b)) else { continue };
            let (e, _) =
                lockstep2(&format!("{code:?} misaligned ({bits}-bit)"), &prog, &sse_state(bits, n as u64), 100);
            faults += usize::from(e == RunExit::TripleFault);
        }
    }
    assert!(faults > 100, "only {faults} forms faulted on a misaligned operand");
    // By hand: MOVDQA faults, MOVDQU does not.
    for (aligned, want) in [(true, RunExit::TripleFault), (false, RunExit::Halted)] {
        let code = assemble(64, |a| {
            if aligned {
                a.movdqa(xmm1, xmmword_ptr(rsi + 8)).unwrap();
            } else {
                a.movdqu(xmm1, xmmword_ptr(rsi + 8)).unwrap();
            }
            a.hlt().unwrap();
        });
        let (e, c) = lockstep2("movdqa/movdqu", &code, &sse_state(64, 9), 100);
        assert_eq!((e, c.icount), (want, if aligned { 1 } else { 2 }));
    }
}

#[test]
fn test_jit_sse_memory_at_page_ends() {
    // Loads and stores ending exactly at a page end (inline) and crossing it (slow path), for
    // each width, with flags live across them.
    for bits in [64u32, 32] {
        let code = assemble(bits, |a| {
            a.cmp(eax, edx).unwrap();
            for base in [0x8FF0u32, 0x8FF8, 0x8FFC, 0x8FF9, 0x8FF1] {
                a.mov(esi, base).unwrap();
                a.movdqu(xmmword_ptr(esi), xmm1).unwrap();
                a.movdqu(xmm2, xmmword_ptr(esi)).unwrap();
                a.movq(qword_ptr(esi + 4), xmm3).unwrap();
                a.movq(xmm4, qword_ptr(esi + 4)).unwrap();
                a.movd(dword_ptr(esi + 8), xmm5).unwrap();
                a.movd(xmm6, dword_ptr(esi + 8)).unwrap();
                a.movsd_2(xmm7, qword_ptr(esi + 8)).unwrap();
                a.movss(dword_ptr(esi + 12), xmm0).unwrap();
                a.pxor(xmm1, xmm2).unwrap();
            }
            a.setb(bl).unwrap();
            a.hlt().unwrap();
        });
        let start = sse_state(bits, 3);
        let (e, c) = lockstep2("page ends", &code, &start, 1000);
        assert_eq!(e, RunExit::Halted);
        let below = (start.gpr[0] as u32) < (start.gpr[2] as u32);
        assert_eq!(c.gpr[3] & 0xFF, u64::from(below), "the CMP's CF survived the accesses");
    }
}

#[test]
fn test_jit_sse_store_across_a_page_fault_writes_nothing() {
    // PSE paging: PDE 0 maps 0..4 MiB, PDE 1 is not present. A 16-byte store whose second half
    // is on the missing page faults before writing its first half (#PF, then a triple fault).
    let pd = 0x1_0000u64;
    for store in [true, false] {
        let code = assemble(32, |a| {
            a.mov(esi, 0x3F_FFF8u32).unwrap();
            a.mov(dword_ptr(esi), 0x1234_5678).unwrap();
            if store {
                a.movups(xmmword_ptr(esi), xmm1).unwrap();
            } else {
                a.paddb(xmm1, xmm2).unwrap();
                a.movdqu(xmm3, xmmword_ptr(esi)).unwrap();
            }
            a.hlt().unwrap();
        });
        let mut start = sse_state(32, 11);
        start.cr3 = pd;
        start.cr4 |= cr::CR4_PSE;
        start.cr0 |= cr::CR0_PG;
        let go = |engine: &mut dyn ExecutionEngine, slices: &[u64]| {
            let mut bus = cpu::RamBus::with_code(4 << 20, &code, CODE).unwrap();
            bus.mem.load(base::GuestPhysAddr(pd), &0x83u32.to_le_bytes()).unwrap();
            let mut c = start.clone();
            let mut k = 0;
            let e = loop {
                let n = if slices.is_empty() { 100 } else { slices[k % slices.len()] };
                k += 1;
                let e = engine.run(&mut c, &mut bus, n);
                if e != RunExit::BudgetExhausted || c.icount >= 100 {
                    break e;
                }
            };
            let m = bus.mem.backing()[0x3F_FFF8..0x40_0000].to_vec();
            (e, arch(&c), m)
        };
        let want = go(&mut Interpreter::new(), &[]);
        for slices in [&[][..], &[1], &[2]] {
            assert_eq!(go(&mut jit::Translator::new(), slices), want, "store {store}, slices {slices:?}");
        }
        assert_eq!(want.0, RunExit::TripleFault);
        assert_eq!(&want.2[..4], &0x1234_5678u32.to_le_bytes(), "nothing of the store written");
    }
}

#[test]
fn test_jit_sse_gpr_moves_with_cached_registers() {
    // GPRs changed in host registers, then moved to and from XMM registers, PMOVMSKB/MOVMSKPS
    // into a cached register, all in a loop (a block that jumps back to itself).
    let code = assemble(64, |a| {
        let mut top = a.create_label();
        a.mov(ecx, 40u32).unwrap();
        a.set_label(&mut top).unwrap();
        a.add(eax, ecx).unwrap();
        a.imul_2(rbx, rax).unwrap();
        a.movd(xmm0, eax).unwrap();
        a.movq(xmm1, rbx).unwrap();
        a.punpcklqdq(xmm0, xmm1).unwrap();
        a.pcmpeqb(xmm2, xmm0).unwrap();
        a.pmovmskb(edx, xmm2).unwrap();
        a.movmskps(r8d, xmm0).unwrap();
        a.add(eax, edx).unwrap();
        a.add(r8d, edx).unwrap();
        a.movq(rdi, xmm0).unwrap();
        a.movd(r9d, xmm1).unwrap();
        a.xor(rbx, rdi).unwrap();
        a.add(rbx, r9).unwrap();
        a.psubb(xmm2, xmm1).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
    });
    let start = sse_state(64, 21);
    let (e, _, _) = lockstep("gpr moves", &code, &start, 10_000);
    assert_eq!(e, RunExit::Halted);
}

/// Helper calls of a JIT run of `code` from `start`.
fn helper_calls(code: &[u8], start: &CpuState) -> (RunExit, u64) {
    let mut jit = jit::Translator::new();
    let (e, _, _) = run(&mut jit, code, start, 10_000, &[]);
    (e, jit.stats().helper_calls)
}

#[test]
fn test_jit_sse_forms_run_inline_only_when_sse_cannot_fault() {
    let code = assemble(64, |a| {
        let mut top = a.create_label();
        a.mov(ecx, 100u32).unwrap();
        a.set_label(&mut top).unwrap();
        a.movdqu(xmm1, xmmword_ptr(rsi)).unwrap();
        a.pcmpeqb(xmm1, xmm0).unwrap();
        a.pmovmskb(eax, xmm1).unwrap();
        a.movdqa(xmmword_ptr(rsi + 16), xmm1).unwrap();
        a.pxor(xmm0, xmm0).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
    });
    let on = sse_state(64, 1);
    lockstep("inline sse", &code, &on, 10_000);
    // 700 instructions; the helper serves the first accesses to each page (TLB fills) and HLT.
    let (e, calls) = helper_calls(&code, &on);
    assert_eq!(e, RunExit::Halted);
    assert!(calls <= 4, "every SSE form inline: {calls} helper calls");
    // CR0.TS: #NM at the first SSE instruction; CR4.OSFXSR clear: #UD (helpers, no IDT).
    let mut ts = on.clone();
    ts.cr0 |= cr::CR0_TS;
    let mut no_fxsr = on.clone();
    no_fxsr.cr4 &= !cr::CR4_OSFXSR;
    for (name, s) in [("ts", ts), ("no osfxsr", no_fxsr)] {
        let (e, c, _) = lockstep(name, &code, &s, 10_000);
        assert_eq!((e, c.icount), (RunExit::TripleFault, 2), "{name}");
        assert!(helper_calls(&code, &s).1 > 0, "{name}");
    }
}

#[test]
fn test_jit_sse_after_ts_changes_inside_a_run() {
    // CLTS makes SSE usable, then MOV CR0 sets TS again: the blocks after each must be
    // translated for the new mode (#NM at the PXOR after the second change).
    let code = assemble(64, |a| {
        a.clts().unwrap();
        a.pxor(xmm1, xmm2).unwrap();
        a.movdqu(xmmword_ptr(rsi), xmm1).unwrap();
        a.mov(rax, cr0).unwrap();
        a.or(rax, 8).unwrap();
        a.mov(cr0, rax).unwrap();
        a.inc(ebx).unwrap();
        a.pxor(xmm1, xmm3).unwrap();
        a.hlt().unwrap();
    });
    let mut start = sse_state(64, 5);
    start.cr0 |= cr::CR0_TS;
    let (e, c, _) = lockstep("ts toggles", &code, &start, 100);
    assert_eq!((e, c.icount, c.gpr[3] & 0xFF), (RunExit::TripleFault, 8, start.gpr[3].wrapping_add(1) & 0xFF));
}
