//! x87 and SSE in real, protected and long mode: FPU detection (FNINIT/FNSTSW/FNSTCW),
//! arithmetic whose results the SDM and IEEE 754 fix, a lazy-FPU-switch #NM handler (CR0.TS
//! set; the handler runs CLTS and the instruction retries), WAIT's CR0.MP/TS rule, an #MF
//! handler (CR0.NE=1), the legacy FERR#/IRQ 13 path (CR0.NE=0), an #XM handler
//! (CR4.OSXMMEXCPT=1), #UD for an unmasked SIMD exception without CR4.OSXMMEXCPT, an
//! FXSAVE image, and XSETBV/XGETBV/XSAVE with CR4.OSXSAVE.
//!
//! Expected values: 1+1 = 2; 7/2 = 3.5 rounds to the even 4 (round to nearest); π rounded to
//! binary64 is 0x400921FB54442D18 and √2 is 0x3FF6A09E667F3BCD (the correctly rounded values
//! IEEE 754 requires); 1/0 with the zero-divide exception masked is +∞ = 0x7F800000 (binary32).

use crate::layout::{asm, build_with, fail_unless_eq, report, Mode, PAYLOAD, SEL_CODE32, SEL_CODE64};
use crate::{Rom, PASS};
use iced_x86::code_asm::*;
use iced_x86::IcedError;

const VAR_NM: u64 = 0x600;
const VAR_MF: u64 = 0x602;
const VAR_XM: u64 = 0x604;
const VAR_UD: u64 = 0x606;
const VAR_IRQ13: u64 = 0x608;
const VAR_TMP: u64 = 0x610;
const VAR_MX: u64 = 0x618;
const IDTR: u64 = 0x680;
const IDT: u64 = 0x1000;
const FXAREA: u64 = 0x3000;
const H_NM: u64 = PAYLOAD + 0x1000;
const H_MF: u64 = PAYLOAD + 0x1100;
const H_XM: u64 = PAYLOAD + 0x1200;
const H_UD: u64 = PAYLOAD + 0x1300;
const H_IRQ13: u64 = PAYLOAD + 0x1400;
/// The slave 8259's vector base: IRQ 13 arrives as 0x75.
const SLAVE_BASE: u64 = 0x70;

fn bits(mode: Mode) -> u32 {
    match mode {
        Mode::Real => 16,
        Mode::Protected32 => 32,
        Mode::Long64 => 64,
    }
}

fn iret(a: &mut CodeAssembler, mode: Mode) -> Result<(), IcedError> {
    match mode {
        Mode::Real => a.iret(),
        Mode::Protected32 => a.iretd(),
        Mode::Long64 => a.iretq(),
    }
}

/// The handlers, each counting in its variable.
fn handlers(mode: Mode) -> Result<Vec<(u64, Vec<u8>)>, IcedError> {
    let b = bits(mode);
    Ok(vec![
        // #NM: the lazy FPU switch. CLTS; the faulting instruction retries.
        asm(b, H_NM, |a| {
            a.clts()?;
            a.inc(word_ptr(VAR_NM))?;
            iret(a, mode)
        })?,
        // #MF: clear the pending exception; the waiting instruction retries.
        asm(b, H_MF, |a| {
            a.fnclex()?;
            a.inc(word_ptr(VAR_MF))?;
            iret(a, mode)
        })?,
        // #XM: mask the zero-divide exception and clear the flags; the instruction retries.
        asm(b, H_XM, |a| {
            a.stmxcsr(dword_ptr(VAR_MX))?;
            a.or(dword_ptr(VAR_MX), 0x200)?;
            a.and(dword_ptr(VAR_MX), !0x3F)?;
            a.ldmxcsr(dword_ptr(VAR_MX))?;
            a.inc(word_ptr(VAR_XM))?;
            iret(a, mode)
        })?,
        // #UD: skip the 4-byte DIVSS xmm0, xmm1.
        asm(b, H_UD, |a| {
            match mode {
                Mode::Real => {
                    a.push(bp)?;
                    a.mov(bp, sp)?;
                    a.add(word_ptr(bp + 2), 4)?;
                    a.pop(bp)?;
                }
                Mode::Protected32 => a.add(dword_ptr(esp), 4)?,
                Mode::Long64 => a.add(qword_ptr(rsp), 4)?,
            }
            a.inc(word_ptr(VAR_UD))?;
            iret(a, mode)
        })?,
        // IRQ 13 (FERR#): clear the exception, EOI both 8259s.
        asm(b, H_IRQ13, |a| {
            if mode == Mode::Long64 {
                a.push(rax)?;
            } else {
                a.push(eax)?;
            }
            a.fnclex()?;
            a.mov(al, 0x20)?;
            a.out(0xA0, al)?;
            a.out(0x20, al)?;
            a.inc(word_ptr(VAR_IRQ13))?;
            if mode == Mode::Long64 {
                a.pop(rax)?;
            } else {
                a.pop(eax)?;
            }
            iret(a, mode)
        })?,
    ])
}

/// Points `vector` at `handler` in the IVT (real mode) or the IDT.
fn gate(a: &mut CodeAssembler, mode: Mode, vector: u64, handler: u64) -> Result<(), IcedError> {
    match mode {
        Mode::Real => {
            a.mov(word_ptr(vector * 4), handler as u32)?;
            a.mov(word_ptr(vector * 4 + 2), 0u32)?;
        }
        Mode::Protected32 => {
            let g = IDT + vector * 8;
            a.mov(word_ptr(g), (handler & 0xFFFF) as u32)?;
            a.mov(word_ptr(g + 2), u32::from(SEL_CODE32))?;
            a.mov(word_ptr(g + 4), 0x8E00u32)?;
            a.mov(word_ptr(g + 6), (handler >> 16) as u32)?;
        }
        Mode::Long64 => {
            let g = IDT + vector * 16;
            a.mov(word_ptr(g), (handler & 0xFFFF) as u32)?;
            a.mov(word_ptr(g + 2), u32::from(SEL_CODE64))?;
            a.mov(word_ptr(g + 4), 0x8E00u32)?;
            a.mov(word_ptr(g + 6), (handler >> 16) as u32)?;
            a.mov(dword_ptr(g + 8), 0u32)?;
            a.mov(dword_ptr(g + 12), 0u32)?;
        }
    }
    Ok(())
}

/// CR0 or CR4 (`which`) |= `or`, &= !`and_not`.
fn set_cr(a: &mut CodeAssembler, mode: Mode, which: u8, or: u32, and_not: u32) -> Result<(), IcedError> {
    if mode == Mode::Long64 {
        if which == 0 {
            a.mov(rax, cr0)?;
        } else {
            a.mov(rax, cr4)?;
        }
        a.or(rax, or as i32)?;
        a.and(rax, !and_not as i32)?;
        if which == 0 {
            a.mov(cr0, rax)
        } else {
            a.mov(cr4, rax)
        }
    } else {
        if which == 0 {
            a.mov(eax, cr0)?;
        } else {
            a.mov(eax, cr4)?;
        }
        a.or(eax, or as i32)?;
        a.and(eax, !and_not as i32)?;
        if which == 0 {
            a.mov(cr0, eax)
        } else {
            a.mov(cr4, eax)
        }
    }
}

/// The checks, the same in every mode.
fn body(a: &mut CodeAssembler, mode: Mode) -> Result<(), IcedError> {
    const MP: u32 = 1 << 1;
    const TS: u32 = 1 << 3;
    const NE: u32 = 1 << 5;
    const OSFXSR: u32 = 1 << 9;
    const OSXMMEXCPT: u32 = 1 << 10;
    const OSXSAVE: u32 = 1 << 18;
    // The IDT (protected/long) and the gates.
    if mode != Mode::Real {
        let n = if mode == Mode::Long64 { 16 } else { 8 };
        a.mov(edi, IDT as u32)?;
        a.xor(eax, eax)?;
        a.mov(ecx, (256 * n / 4) as u32)?;
        a.rep().stosd()?;
        a.mov(word_ptr(IDTR), (256 * n - 1) as u32)?;
        a.mov(dword_ptr(IDTR + 2), IDT as u32)?;
        a.mov(dword_ptr(IDTR + 6), 0u32)?;
        a.lidt(ptr(IDTR))?;
    }
    for (v, h) in [(7, H_NM), (16, H_MF), (19, H_XM), (6, H_UD), (SLAVE_BASE + 5, H_IRQ13)] {
        gate(a, mode, v, h)?;
    }
    for v in [VAR_NM, VAR_MF, VAR_XM, VAR_UD, VAR_IRQ13] {
        a.mov(word_ptr(v), 0u32)?;
    }
    set_cr(a, mode, 0, MP | NE, TS | (1 << 2))?;

    // 1-2. FPU detection: FNINIT, then FNSTSW gives 0 and FNSTCW 0x037F.
    a.fninit()?;
    a.mov(word_ptr(VAR_TMP), 0xFFFFu32)?;
    a.fnstsw(word_ptr(VAR_TMP))?;
    a.movzx(eax, word_ptr(VAR_TMP))?;
    fail_unless_eq(a, 1, eax, 0)?;
    a.fnstcw(word_ptr(VAR_TMP))?;
    a.movzx(eax, word_ptr(VAR_TMP))?;
    fail_unless_eq(a, 2, eax, 0x037F)?;
    // 3. 1 + 1 = 2.
    a.fld1()?;
    a.fld1()?;
    a.faddp(st1, st0)?;
    a.fistp(word_ptr(VAR_TMP))?;
    a.movzx(eax, word_ptr(VAR_TMP))?;
    fail_unless_eq(a, 3, eax, 2)?;
    // 4. 7 / 2 = 3.5, stored as an integer with round-to-nearest-even: 4.
    a.mov(dword_ptr(VAR_TMP), 7u32)?;
    a.fild(dword_ptr(VAR_TMP))?;
    a.mov(dword_ptr(VAR_TMP), 2u32)?;
    a.fild(dword_ptr(VAR_TMP))?;
    a.fdivp(st1, st0)?;
    a.fistp(dword_ptr(VAR_TMP))?;
    fail_unless_eq(a, 4, dword_ptr(VAR_TMP), 4)?;
    // 5. FLDPI stored as binary64: 0x400921FB_54442D18.
    a.fldpi()?;
    a.fstp(qword_ptr(VAR_TMP))?;
    fail_unless_eq(a, 5, dword_ptr(VAR_TMP), 0x5444_2D18)?;
    fail_unless_eq(a, 5, dword_ptr(VAR_TMP + 4), 0x4009_21FB)?;
    // 6. √2 as binary64: 0x3FF6A09E_667F3BCD.
    a.mov(dword_ptr(VAR_TMP), 2u32)?;
    a.fild(dword_ptr(VAR_TMP))?;
    a.fsqrt()?;
    a.fstp(qword_ptr(VAR_TMP))?;
    fail_unless_eq(a, 6, dword_ptr(VAR_TMP), 0x667F_3BCD)?;
    fail_unless_eq(a, 6, dword_ptr(VAR_TMP + 4), 0x3FF6_A09E)?;

    // 7-8. Lazy FPU switch: with CR0.TS set, FLD1 raises #NM; the handler's CLTS lets it retry.
    set_cr(a, mode, 0, TS, 0)?;
    a.fld1()?;
    a.fistp(word_ptr(VAR_TMP))?;
    a.movzx(eax, word_ptr(VAR_TMP))?;
    fail_unless_eq(a, 7, eax, 1)?;
    a.movzx(eax, word_ptr(VAR_NM))?;
    fail_unless_eq(a, 8, eax, 1)?;
    // 9. WAIT with TS=1, MP=0: no #NM (and nothing pending: a no-op).
    set_cr(a, mode, 0, TS, MP)?;
    a.wait()?;
    a.movzx(eax, word_ptr(VAR_NM))?;
    fail_unless_eq(a, 9, eax, 1)?;
    // 10. WAIT with TS=1, MP=1: #NM.
    set_cr(a, mode, 0, TS | MP, 0)?;
    a.wait()?;
    a.movzx(eax, word_ptr(VAR_NM))?;
    fail_unless_eq(a, 10, eax, 2)?;

    // 11. #MF (CR0.NE=1): 1/0 with ZE unmasked leaves an exception pending; the next waiting
    //     instruction raises #MF, the handler's FNCLEX lets it retry.
    a.fninit()?;
    a.mov(word_ptr(VAR_TMP), 0x037Bu32)?;
    a.fldcw(word_ptr(VAR_TMP))?;
    a.fld1()?;
    a.fldz()?;
    a.fdivp(st1, st0)?;
    a.wait()?;
    a.movzx(eax, word_ptr(VAR_MF))?;
    fail_unless_eq(a, 11, eax, 1)?;

    // 12-13. #XM (CR4.OSXMMEXCPT=1): DIVSS 1/0 with ZE unmasked; the handler masks ZE and the
    //        retry gives +inf.
    set_cr(a, mode, 4, OSFXSR | OSXMMEXCPT, 0)?;
    a.mov(dword_ptr(VAR_MX), 0x1D80u32)?;
    a.ldmxcsr(dword_ptr(VAR_MX))?;
    a.mov(dword_ptr(VAR_TMP), 0x3F80_0000u32)?;
    a.movss(xmm0, dword_ptr(VAR_TMP))?;
    a.xorps(xmm1, xmm1)?;
    a.divss(xmm0, xmm1)?;
    a.movzx(eax, word_ptr(VAR_XM))?;
    fail_unless_eq(a, 12, eax, 1)?;
    a.movd(eax, xmm0)?;
    fail_unless_eq(a, 13, eax, 0x7F80_0000)?;
    // (VAR_TMP still holds 1.0.)
    // 14. Unmasked SIMD exception with CR4.OSXMMEXCPT=0: #UD (the handler skips DIVSS).
    set_cr(a, mode, 4, 0, OSXMMEXCPT)?;
    a.mov(dword_ptr(VAR_MX), 0x1D80u32)?;
    a.ldmxcsr(dword_ptr(VAR_MX))?;
    a.movss(xmm0, dword_ptr(VAR_TMP))?;
    a.divss(xmm0, xmm1)?;
    a.movzx(eax, word_ptr(VAR_UD))?;
    fail_unless_eq(a, 14, eax, 1)?;
    // 15. SSE2 integer: all-ones >> 63 = 1 in each quadword.
    a.mov(dword_ptr(VAR_MX), 0x1F80u32)?;
    a.ldmxcsr(dword_ptr(VAR_MX))?;
    a.pcmpeqb(xmm2, xmm2)?;
    a.psrlq(xmm2, 63)?;
    a.movd(eax, xmm2)?;
    fail_unless_eq(a, 15, eax, 1)?;
    // 16. CVTSI2SD 7, doubled, truncated back: 14.
    a.mov(eax, 7u32)?;
    a.cvtsi2sd(xmm3, eax)?;
    a.addsd(xmm3, xmm3)?;
    a.cvttsd2si(eax, xmm3)?;
    fail_unless_eq(a, 16, eax, 14)?;
    // 17. FXSAVE stores MXCSR at offset 24 and FCW at offset 0.
    a.fxsave(ptr(FXAREA))?;
    fail_unless_eq(a, 17, dword_ptr(FXAREA + 24), 0x1F80)?;
    a.movzx(eax, word_ptr(FXAREA))?;
    fail_unless_eq(a, 17, eax, 0x037B)?;

    // 18. The legacy path (CR0.NE=0): the pending exception drives FERR#, IRQ 13 through the
    //     8259 pair (master base 0x20 with only the cascade unmasked, slave base 0x70 with
    //     only IRQ 13 unmasked).
    for (port, bytes, mask) in [(0x20u32, [0x11u32, 0x20, 0x04, 0x01], 0xFBu32), (0xA0, [0x11, 0x70, 0x02, 0x01], 0xDF)]
    {
        a.mov(al, bytes[0])?;
        a.out(port, al)?;
        for &b in &bytes[1..] {
            a.mov(al, b)?;
            a.out(port + 1, al)?;
        }
        a.mov(al, mask)?;
        a.out(port + 1, al)?;
    }
    set_cr(a, mode, 0, 0, NE)?;
    a.sti()?;
    a.fninit()?;
    a.mov(word_ptr(VAR_TMP), 0x037Bu32)?;
    a.fldcw(word_ptr(VAR_TMP))?;
    a.fld1()?;
    a.fldz()?;
    a.fdivp(st1, st0)?;
    a.wait()?;
    a.nop()?;
    a.nop()?;
    a.cli()?;
    a.movzx(eax, word_ptr(VAR_IRQ13))?;
    fail_unless_eq(a, 18, eax, 1)?;
    a.movzx(eax, word_ptr(VAR_MF))?;
    fail_unless_eq(a, 18, eax, 1)?;

    // 19-21. XSAVE: CR4.OSXSAVE set, XCR0 = x87 | SSE (XGETBV reads it back), XSAVE of both
    //        components stores XSTATE_BV = 3 in the header and MXCSR at offset 24.
    set_cr(a, mode, 4, OSXSAVE, 0)?;
    a.xor(ecx, ecx)?;
    a.xgetbv()?;
    fail_unless_eq(a, 19, eax, 1)?;
    a.mov(eax, 3u32)?;
    a.xor(edx, edx)?;
    a.xor(ecx, ecx)?;
    a.xsetbv()?;
    a.xgetbv()?;
    fail_unless_eq(a, 20, eax, 3)?;
    a.mov(edi, FXAREA as u32)?;
    a.xor(eax, eax)?;
    a.mov(ecx, 576 / 4)?;
    a.rep().stosd()?;
    a.mov(eax, 3u32)?;
    a.xor(edx, edx)?;
    a.xsave(ptr(FXAREA))?;
    fail_unless_eq(a, 21, dword_ptr(FXAREA + 512), 3)?;
    fail_unless_eq(a, 21, dword_ptr(FXAREA + 24), 0x1F80)?;
    report(a, PASS)
}

fn rom(mode: Mode) -> Rom {
    let extras = handlers(mode).expect("FPU ROM handlers assemble");
    build_with(mode, |a| body(a, mode), extras).expect("FPU ROM assembles")
}

/// x87 and SSE checks in real mode.
pub fn fpu_real() -> Rom {
    rom(Mode::Real)
}

/// x87 and SSE checks in 32-bit protected mode.
pub fn fpu_protected() -> Rom {
    rom(Mode::Protected32)
}

/// x87 and SSE checks in 64-bit long mode.
pub fn fpu_long() -> Rom {
    rom(Mode::Long64)
}
