//! Self-checking programs. Each expected value below is derived by hand from the Intel SDM's
//! definition of the instruction (the comments show the derivation), so a run is checked against
//! the architecture, not against the emulator's own arithmetic.

use crate::layout::{asm, build, build_with, fail_unless_eq, fail_unless_zf, report, Mode, PAYLOAD, SEL_CODE32};
use crate::{Rom, PASS};
use iced_x86::code_asm::*;
use iced_x86::IcedError;

/// RFLAGS bits.
const CF: i32 = 0x001;
const PF: i32 = 0x004;
const AF: i32 = 0x010;
const ZF: i32 = 0x040;
const SF: i32 = 0x080;
const IF: i32 = 0x200;
const OF: i32 = 0x800;
/// The six arithmetic flags.
const OSZAPC: i32 = OF | SF | ZF | AF | PF | CF;

/// Where the flag checks park FLAGS.
const VAR_FLAGS: u64 = 0x6F0;

/// Emits a check that `FLAGS & mask == expected` (16-bit code; preserves the registers).
fn expect_flags16(a: &mut CodeAssembler, n: u8, mask: i32, expected: i32) -> Result<(), IcedError> {
    a.pushf()?;
    a.pop(word_ptr(VAR_FLAGS))?;
    a.push(ax)?;
    a.mov(ax, word_ptr(VAR_FLAGS))?;
    a.and(ax, mask)?;
    a.cmp(ax, expected)?;
    a.pop(ax)?;
    fail_unless_zf(a, n)
}

/// Emits a check that `EFLAGS & mask == expected` (32-bit code; preserves the registers).
fn expect_flags32(a: &mut CodeAssembler, n: u8, mask: i32, expected: i32) -> Result<(), IcedError> {
    a.pushfd()?;
    a.pop(dword_ptr(VAR_FLAGS))?;
    a.push(eax)?;
    a.mov(eax, dword_ptr(VAR_FLAGS))?;
    a.and(eax, mask)?;
    a.cmp(eax, expected)?;
    a.pop(eax)?;
    fail_unless_zf(a, n)
}

fn assembled(r: Result<Rom, IcedError>) -> Rom {
    r.expect("test ROM assembles")
}

/// Real-mode integer arithmetic and flags.
pub fn real_mode_arith() -> Rom {
    assembled(build(Mode::Real, |a| {
        // 1. 0xFF + 1 = 0x00: carry out (CF), carry out of bit 3 (AF), zero, even parity.
        a.mov(al, 0xFF)?;
        a.add(al, 1)?;
        expect_flags16(a, 1, OSZAPC, CF | AF | ZF | PF)?;
        // 2. 0x7F + 1 = 0x80: signed overflow, sign, AF; 0x80 has one bit set (odd parity).
        a.mov(al, 0x7F)?;
        a.add(al, 1)?;
        expect_flags16(a, 2, OSZAPC, OF | SF | AF)?;
        // 3. 0 - 1 = 0xFFFF: borrow (CF), borrow from bit 4 (AF), sign; low byte 0xFF: even parity.
        a.xor(ax, ax)?;
        a.sub(ax, 1)?;
        expect_flags16(a, 3, OSZAPC, CF | AF | SF | PF)?;
        // 4. 0x8000 - 1 = 0x7FFF: negative minus positive gives positive: OF; AF; even parity.
        a.mov(ax, 0x8000u32)?;
        a.sub(ax, 1)?;
        expect_flags16(a, 4, OSZAPC, OF | AF | PF)?;
        // 5. ADC with CF=1: 0x10 + 0x0F + 1 = 0x20; low nibbles 0 + F + 1 carry out of bit 3.
        a.stc()?;
        a.mov(al, 0x10)?;
        a.adc(al, 0x0F)?;
        expect_flags16(a, 5, OSZAPC, AF)?;
        fail_unless_eq(a, 5, al, 0x20)?;
        // 6. SHL 0x81 by 1 = 0x02: CF = old bit 7 = 1; OF = MSB(result) xor CF = 1; AF undefined.
        a.mov(al, 0x81)?;
        a.shl(al, 1)?;
        expect_flags16(a, 6, OSZAPC & !AF, OF | CF)?;
        // 7. MUL 0x1234 * 0x100 = 0x12_3400: DX = 0x0012, AX = 0x3400, CF = OF = 1 (DX != 0).
        a.mov(ax, 0x1234u32)?;
        a.mov(bx, 0x100u32)?;
        a.mul(bx)?;
        expect_flags16(a, 7, OF | CF, OF | CF)?;
        fail_unless_eq(a, 7, ax, 0x3400)?;
        fail_unless_eq(a, 7, dx, 0x0012)?;
        // 8. DIV 1000 / 7 = 142 remainder 6.
        a.xor(dx, dx)?;
        a.mov(ax, 1000u32)?;
        a.mov(bx, 7u32)?;
        a.div(bx)?;
        fail_unless_eq(a, 8, ax, 142)?;
        fail_unless_eq(a, 8, dx, 6)?;
        // 9. IMUL -3 * 5 = -15 = 0xFFF1; fits in AL sign-extended, so CF = OF = 0.
        a.mov(al, 0xFD)?;
        a.mov(bl, 5)?;
        a.imul(bl)?;
        expect_flags16(a, 9, OF | CF, 0)?;
        fail_unless_eq(a, 9, ax, 0xFFF1)?;
        // 10. BCD 79 + 35 = 114: ADD gives 0xAE, DAA adds 6 (nibble > 9) then 0x60 (> 0x99): 0x14, CF.
        a.mov(al, 0x79)?;
        a.add(al, 0x35)?;
        a.daa()?;
        expect_flags16(a, 10, CF, CF)?;
        fail_unless_eq(a, 10, al, 0x14)?;
        // 11. SAR 0x80 by 7 = 0xFF: CF = bit 6 of the source = 0; OF undefined for counts > 1.
        a.mov(al, 0x80)?;
        a.sar(al, 7)?;
        expect_flags16(a, 11, SF | ZF | PF | CF, SF | PF)?;
        fail_unless_eq(a, 11, al, 0xFF)?;
        // 12. BSF/BSR of 0x00F0: lowest set bit 4, highest 7, ZF = 0.
        a.mov(ax, 0x00F0u32)?;
        a.bsf(cx, ax)?;
        expect_flags16(a, 12, ZF, 0)?;
        fail_unless_eq(a, 12, cx, 4)?;
        a.bsr(cx, ax)?;
        fail_unless_eq(a, 12, cx, 7)?;
        // 13. NEG 5 = 0xFB: CF = (source != 0); AF: borrow from bit 4; 0xFB has 7 bits (odd).
        a.mov(al, 5)?;
        a.neg(al)?;
        expect_flags16(a, 13, OSZAPC, CF | AF | SF)?;
        // 14. CBW of 0x80 = 0xFF80; CWD of 0x8000 gives DX = 0xFFFF.
        a.mov(al, 0x80)?;
        a.cbw()?;
        fail_unless_eq(a, 14, ax, 0xFF80)?;
        a.mov(ax, 0x8000u32)?;
        a.cwd()?;
        fail_unless_eq(a, 14, dx, 0xFFFF)?;
        // 15. INC leaves CF alone: with CF = 1, 0xFF + 1 = 0 sets ZF, AF, PF and keeps CF.
        a.stc()?;
        a.mov(al, 0xFF)?;
        a.inc(al)?;
        expect_flags16(a, 15, OSZAPC, CF | AF | ZF | PF)?;
        // 16. RCL 0x80 by 1 with CF = 0: result 0x00, CF = 1, OF = MSB(result) xor CF = 1.
        a.clc()?;
        a.mov(al, 0x80)?;
        a.rcl(al, 1)?;
        expect_flags16(a, 16, OF | CF, OF | CF)?;
        fail_unless_eq(a, 16, al, 0)?;
        // 17. AAM of 47: AH = 4, AL = 7.
        a.mov(ax, 47u32)?;
        a.aam(10)?;
        fail_unless_eq(a, 17, ax, 0x0407)?;
        // 18. LOOP: 5 + 4 + 3 + 2 + 1 = 15.
        a.mov(cx, 5u32)?;
        a.xor(ax, ax)?;
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.add(ax, cx)?;
        a.loop_(top)?;
        fail_unless_eq(a, 18, ax, 15)?;
        fail_unless_eq(a, 18, cx, 0)?;
        // 19. A 32-bit operand in real mode: 0x12345678 / 0x10000 = 0x1234 remainder 0x5678.
        a.xor(edx, edx)?;
        a.mov(eax, 0x1234_5678u32)?;
        a.mov(ebx, 0x1_0000u32)?;
        a.div(ebx)?;
        fail_unless_eq(a, 19, eax, 0x1234)?;
        fail_unless_eq(a, 19, edx, 0x5678)?;
        // 20. XCHG and SUB to zero: ZF and even parity, no carry.
        a.mov(ax, 0x1111u32)?;
        a.mov(bx, 0x2222u32)?;
        a.xchg(ax, bx)?;
        a.sub(ax, 0x2222)?;
        expect_flags16(a, 20, OSZAPC, ZF | PF)?;
        fail_unless_eq(a, 20, bx, 0x1111)?;
        report(a, PASS)
    }))
}

/// Real mode to protected mode to long mode; checks EFER.LMA, 64-bit arithmetic and the
/// extended registers there.
pub fn long_mode_switch() -> Rom {
    assembled(build(Mode::Long64, |a| {
        // 1. EFER.LMA (bit 10) is set once paging is enabled with EFER.LME.
        a.mov(ecx, 0xC000_0080u32)?;
        a.rdmsr()?;
        a.and(eax, 0x400)?;
        fail_unless_eq(a, 1, eax, 0x400)?;
        // 2. 64-bit arithmetic: 0xFFFF_FFFF + 1 carries into bit 32 instead of wrapping.
        a.mov(eax, 0xFFFF_FFFFu32)?;
        a.add(rax, 1)?;
        a.shr(rax, 32)?;
        fail_unless_eq(a, 2, rax, 1)?;
        // 3. A 32-bit write zero-extends into the full 64-bit register.
        a.mov(rbx, -1i64)?;
        a.mov(ebx, 5u32)?;
        a.shr(rbx, 32)?;
        fail_unless_eq(a, 3, rbx, 0)?;
        // 4. R8-R15 exist: 10 * 3 via R9 and R10.
        a.mov(r9, 10u64)?;
        a.mov(r10, 3u64)?;
        a.imul_2(r9, r10)?;
        fail_unless_eq(a, 4, r9, 30)?;
        // 5. Memory above 1 MiB is reachable through the identity map: store and reload.
        a.mov(rdi, 0x30_0000u64)?;
        a.mov(rax, 0x0123_4567_89AB_CDEFu64)?;
        a.mov(qword_ptr(rdi), rax)?;
        a.mov(rdx, qword_ptr(rdi))?;
        a.cmp(rdx, rax)?;
        fail_unless_zf(a, 5)?;
        // 6. CS is the 64-bit selector.
        a.mov(ax, cs)?;
        fail_unless_eq(a, 6, ax, 0x18)?;
        report(a, PASS)
    }))
}

/// Fixed addresses of the pieces the checks refer to by address.
const TEXT: u64 = PAYLOAD + 0x1000;
const H_DE: u64 = PAYLOAD + 0x1100;
const H_UD: u64 = PAYLOAD + 0x1200;
const H_GP: u64 = PAYLOAD + 0x1300;
const H_INT: u64 = PAYLOAD + 0x1400;

/// String instructions with REP prefixes, both directions, 16- and 32-bit addressing.
pub fn string_ops() -> Rom {
    const SRC: u64 = 0x3000;
    const DST: u64 = 0x3100;
    let text = (TEXT, b"hello".to_vec());
    assembled(build_with(
        Mode::Real,
        |a| {
            // 1. REP MOVSB copies "hello" (CX = 5) and leaves DI past the end, CX = 0.
            a.mov(si, TEXT as u32)?;
            a.mov(di, DST as u32)?;
            a.mov(cx, 5u32)?;
            a.rep().movsb()?;
            fail_unless_eq(a, 1, cx, 0)?;
            fail_unless_eq(a, 1, di, (DST + 5) as i32)?;
            fail_unless_eq(a, 1, si, (TEXT + 5) as i32)?;
            // 2. REPE CMPSB over equal strings runs to CX = 0 with ZF = 1.
            a.mov(si, TEXT as u32)?;
            a.mov(di, DST as u32)?;
            a.mov(cx, 5u32)?;
            a.repe().cmpsb()?;
            fail_unless_zf(a, 2)?;
            fail_unless_eq(a, 2, cx, 0)?;
            // 3. REPNE SCASB for 'l' in "hello": stops after the third byte: CX = 2, DI = DST + 3.
            a.mov(di, DST as u32)?;
            a.mov(cx, 5u32)?;
            a.mov(al, u32::from(b'l'))?;
            a.repne().scasb()?;
            fail_unless_zf(a, 3)?;
            fail_unless_eq(a, 3, cx, 2)?;
            fail_unless_eq(a, 3, di, (DST + 3) as i32)?;
            // 4. REP STOSW fills 4 words with 0xABCD; LODSW reads the last one back.
            a.mov(di, SRC as u32)?;
            a.mov(ax, 0xABCDu32)?;
            a.mov(cx, 4u32)?;
            a.rep().stosw()?;
            a.mov(si, (SRC + 6) as u32)?;
            a.xor(ax, ax)?;
            a.lodsw()?;
            fail_unless_eq(a, 4, ax, 0xABCD)?;
            fail_unless_eq(a, 4, si, (SRC + 8) as i32)?;
            // 5. With DF = 1, REP MOVSB runs backwards from the last byte; the copy is the same.
            a.std()?;
            a.mov(si, (TEXT + 4) as u32)?;
            a.mov(di, (SRC + 4) as u32)?;
            a.mov(cx, 5u32)?;
            a.rep().movsb()?;
            a.cld()?;
            fail_unless_eq(a, 5, di, (SRC - 1) as i32)?;
            fail_unless_eq(a, 5, si, (TEXT - 1) as i32)?;
            a.mov(al, byte_ptr(SRC))?;
            fail_unless_eq(a, 5, al, i32::from(b'h'))?;
            a.mov(al, byte_ptr(SRC + 4))?;
            fail_unless_eq(a, 5, al, i32::from(b'o'))?;
            // 6. 32-bit addressing in real mode (address-size prefix): REP STOSD with EDI, ECX.
            a.mov(edi, (SRC + 0x80) as u32)?;
            a.mov(eax, 0x1122_3344u32)?;
            a.mov(ecx, 2u32)?;
            a.db(&[0x67])?;
            a.rep().stosd()?;
            fail_unless_eq(a, 6, edi, (SRC + 0x88) as i32)?;
            fail_unless_eq(a, 6, ecx, 0)?;
            a.mov(eax, dword_ptr(SRC + 0x84))?;
            fail_unless_eq(a, 6, eax, 0x1122_3344)?;
            // 7. REP with CX = 0 does nothing.
            a.mov(di, DST as u32)?;
            a.xor(cx, cx)?;
            a.rep().stosb()?;
            fail_unless_eq(a, 7, di, DST as i32)?;
            // 8. REPE CMPSB stops at the first difference: "hello" vs "helpo" at byte 3 (CX = 1).
            a.mov(byte_ptr(DST + 3), u32::from(b'p'))?;
            a.mov(si, TEXT as u32)?;
            a.mov(di, DST as u32)?;
            a.mov(cx, 5u32)?;
            a.repe().cmpsb()?;
            a.pushf()?;
            a.pop(ax)?;
            a.and(ax, ZF)?;
            fail_unless_eq(a, 8, ax, 0)?;
            fail_unless_eq(a, 8, cx, 1)?;
            // 9. 16-bit addressing wraps SI at 64 KiB: MOVSB from SI = 0xFFFF leaves SI = 0.
            a.mov(si, 0xFFFFu32)?;
            a.mov(di, DST as u32)?;
            a.movsb()?;
            fail_unless_eq(a, 9, si, 0)?;
            report(a, PASS)
        },
        vec![text],
    ))
}

/// Scratch variables of the exception checks.
const VAR_COUNT_DE: u64 = 0x600;
const VAR_COUNT_UD: u64 = 0x602;
const VAR_COUNT_INT: u64 = 0x604;
const VAR_BAD: u64 = 0x610;
const VAR_ERRCODE: u64 = 0x608;
const VAR_COUNT_GP: u64 = 0x60C;

/// Exceptions through the real-mode IVT: #DE and #UD push the address of the faulting
/// instruction, INT n the address of the next one; the handlers see IF = 0 and IRET restores it.
pub fn exceptions_real() -> Rom {
    // Handler prologue: BP -> the frame (IP, CS, FLAGS), after `pushes` saved words. Checks
    // IF = 0 inside, saved IF = 1 and saved CS = 0; loads the saved IP into SI.
    fn frame16(a: &mut CodeAssembler, pushes: i32, bad: u32) -> Result<(), IcedError> {
        let mut ok = a.create_label();
        let mut wrong = a.create_label();
        a.mov(bp, sp)?;
        a.add(bp, 2 * pushes)?;
        a.pushf()?;
        a.pop(ax)?;
        a.test(ax, IF)?;
        a.jnz(wrong)?;
        a.test(word_ptr(bp + 4), IF)?;
        a.jz(wrong)?;
        a.cmp(word_ptr(bp + 2), 0)?;
        a.jne(wrong)?;
        a.jmp(ok)?;
        a.set_label(&mut wrong)?;
        a.or(word_ptr(VAR_BAD), bad)?;
        a.set_label(&mut ok)?;
        a.mov(si, word_ptr(bp))?;
        Ok(())
    }
    // Checks `word [SI + disp] == value` (else sets `bad` in VAR_BAD), adds `skip` to the saved
    // IP, counts, restores AX and BP and returns.
    fn finish16(
        a: &mut CodeAssembler,
        disp: i32,
        value: i32,
        bad: u32,
        skip: i32,
        count: u64,
    ) -> Result<(), IcedError> {
        let mut ok = a.create_label();
        a.cmp(word_ptr(si + disp), value)?;
        a.je(ok)?;
        a.or(word_ptr(VAR_BAD), bad)?;
        a.set_label(&mut ok)?;
        a.add(word_ptr(bp), skip)?;
        a.inc(word_ptr(count))?;
        a.pop(ax)?;
        a.pop(bp)?;
        a.iret()
    }
    let handlers = || -> Result<Vec<(u64, Vec<u8>)>, IcedError> {
        Ok(vec![
            // #DE: saved IP at DIV r/m8 (F6 F3: 2 bytes).
            asm(16, H_DE, |a| {
                a.push(bp)?;
                a.push(ax)?;
                frame16(a, 2, 1)?;
                finish16(a, 0, 0xF3F6, 0x10, 2, VAR_COUNT_DE)
            })?,
            // #UD: saved IP at UD2 (0F 0B).
            asm(16, H_UD, |a| {
                a.push(bp)?;
                a.push(ax)?;
                frame16(a, 2, 2)?;
                finish16(a, 0, 0x0B0F, 0x20, 2, VAR_COUNT_UD)
            })?,
            // INT 0x80: saved IP after CD 80; the caller's AX (saved at BP - 4) is 0x1234.
            asm(16, H_INT, |a| {
                a.push(bp)?;
                a.push(ax)?;
                frame16(a, 2, 4)?;
                let mut ok = a.create_label();
                a.cmp(word_ptr(bp - 4), 0x1234)?;
                a.je(ok)?;
                a.or(word_ptr(VAR_BAD), 0x80u32)?;
                a.set_label(&mut ok)?;
                finish16(a, -2, 0x80CD, 0x40, 0, VAR_COUNT_INT)
            })?,
        ])
    };
    let extras = handlers().expect("handlers assemble");
    assembled(build_with(
        Mode::Real,
        |a| {
            for (vec, h) in [(0u64, H_DE), (6, H_UD), (0x80, H_INT)] {
                a.mov(word_ptr(vec * 4), h as u32)?;
                a.mov(word_ptr(vec * 4 + 2), 0u32)?;
            }
            for v in [VAR_COUNT_DE, VAR_COUNT_UD, VAR_COUNT_INT, VAR_BAD] {
                a.mov(word_ptr(v), 0u32)?;
            }
            a.sti()?;
            // 1. DIV by zero raises #DE once; execution resumes after the DIV.
            a.mov(ax, 1u32)?;
            a.mov(bl, 0)?;
            a.div(bl)?;
            a.mov(ax, word_ptr(VAR_COUNT_DE))?;
            fail_unless_eq(a, 1, ax, 1)?;
            // 2. A quotient too large for AL also raises #DE: 0x1000 / 2 = 0x800 > 0xFF.
            a.mov(ax, 0x1000u32)?;
            a.mov(bl, 2)?;
            a.div(bl)?;
            a.mov(ax, word_ptr(VAR_COUNT_DE))?;
            fail_unless_eq(a, 2, ax, 2)?;
            // 3. UD2 raises #UD.
            a.ud2()?;
            a.mov(ax, word_ptr(VAR_COUNT_UD))?;
            fail_unless_eq(a, 3, ax, 1)?;
            // 4. INT 0x80 calls the handler with AX = 0x1234 and returns after the INT.
            a.mov(ax, 0x1234u32)?;
            a.int(0x80)?;
            fail_unless_eq(a, 4, ax, 0x1234)?;
            a.mov(ax, word_ptr(VAR_COUNT_INT))?;
            fail_unless_eq(a, 4, ax, 1)?;
            // 5. No handler saw a wrong frame, and IRET restored IF = 1.
            a.mov(ax, word_ptr(VAR_BAD))?;
            fail_unless_eq(a, 5, ax, 0)?;
            expect_flags16(a, 5, IF, IF)?;
            report(a, PASS)
        },
        extras,
    ))
}

/// Exceptions through a 32-bit protected-mode IDT: #DE, #UD and INT n without an error code,
/// #GP with the selector error code the SDM specifies for a selector beyond the GDT limit.
pub fn exceptions_protected() -> Rom {
    const IDT: u64 = 0x1000;
    const IDTR: u64 = 0x0680;
    // Handler body: EBP -> the frame (EIP, CS, EFLAGS) above the saved EBP and EAX. Checks IF = 0
    // inside, saved IF = 1 and CS = the code selector; then `dword [saved EIP + disp] & mask ==
    // value`, adds `skip` to the saved EIP, counts, and returns.
    #[allow(clippy::too_many_arguments)]
    fn handler32(
        a: &mut CodeAssembler,
        bad: u32,
        disp: i32,
        mask: u32,
        value: i32,
        skip: i32,
        count: u64,
    ) -> Result<(), IcedError> {
        let mut ok = a.create_label();
        let mut wrong = a.create_label();
        let mut ok2 = a.create_label();
        a.push(ebp)?;
        a.push(eax)?;
        a.push(esi)?;
        a.lea(ebp, dword_ptr(esp + 12))?;
        a.pushfd()?;
        a.pop(eax)?;
        a.test(eax, IF)?;
        a.jnz(wrong)?;
        a.test(dword_ptr(ebp + 8), IF)?;
        a.jz(wrong)?;
        a.cmp(dword_ptr(ebp + 4), i32::from(SEL_CODE32))?;
        a.jne(wrong)?;
        a.jmp(ok)?;
        a.set_label(&mut wrong)?;
        a.or(dword_ptr(VAR_BAD), bad)?;
        a.set_label(&mut ok)?;
        a.mov(esi, dword_ptr(ebp))?;
        a.mov(eax, dword_ptr(esi + disp))?;
        a.and(eax, mask)?;
        a.cmp(eax, value)?;
        a.je(ok2)?;
        a.or(dword_ptr(VAR_BAD), bad << 4)?;
        a.set_label(&mut ok2)?;
        a.add(dword_ptr(ebp), skip)?;
        a.inc(word_ptr(count))?;
        a.pop(esi)?;
        a.pop(eax)?;
        a.pop(ebp)?;
        a.iretd()
    }
    let handlers = || -> Result<Vec<(u64, Vec<u8>)>, IcedError> {
        Ok(vec![
            // #DE: saved EIP at DIV/IDIV r/m32 (F7 /6 or /7 with a register: 2 bytes).
            asm(32, H_DE, |a| handler32(a, 1, 0, 0xFF, 0xF7, 2, VAR_COUNT_DE))?,
            // #UD: saved EIP at UD2 (0F 0B).
            asm(32, H_UD, |a| handler32(a, 2, 0, 0xFFFF, 0x0B0F, 2, VAR_COUNT_UD))?,
            // #GP: the error code is popped first; saved EIP at MOV DS, AX (8E D8).
            asm(32, H_GP, |a| {
                a.pop(dword_ptr(VAR_ERRCODE))?;
                handler32(a, 4, 0, 0xFFFF, 0xD88E, 2, VAR_COUNT_GP)
            })?,
            // INT 0x80: saved EIP after CD 80.
            asm(32, H_INT, |a| handler32(a, 8, -2, 0xFFFF, 0x80CD, 0, VAR_COUNT_INT))?,
        ])
    };
    let extras = handlers().expect("handlers assemble");
    assembled(build_with(
        Mode::Protected32,
        |a| {
            install_idt32(a, IDT, IDTR, &[(0, H_DE), (6, H_UD), (13, H_GP), (0x80, H_INT)])?;
            for v in [VAR_COUNT_DE, VAR_COUNT_UD, VAR_COUNT_INT, VAR_COUNT_GP] {
                a.mov(word_ptr(v), 0u32)?;
            }
            a.mov(dword_ptr(VAR_BAD), 0u32)?;
            a.sti()?;
            // 1. 32-bit DIV by zero: #DE.
            a.mov(eax, 7u32)?;
            a.xor(edx, edx)?;
            a.xor(ecx, ecx)?;
            a.div(ecx)?;
            a.movzx(eax, word_ptr(VAR_COUNT_DE))?;
            fail_unless_eq(a, 1, eax, 1)?;
            // 2. IDIV overflow: -2^31 / -1 does not fit: #DE.
            a.mov(eax, 0x8000_0000u32)?;
            a.cdq()?;
            a.mov(ecx, 0xFFFF_FFFFu32)?;
            a.idiv(ecx)?;
            a.movzx(eax, word_ptr(VAR_COUNT_DE))?;
            fail_unless_eq(a, 2, eax, 2)?;
            // 3. UD2: #UD.
            a.ud2()?;
            a.movzx(eax, word_ptr(VAR_COUNT_UD))?;
            fail_unless_eq(a, 3, eax, 1)?;
            // 4. Loading DS with selector 0x0100 (index 32, beyond the GDT limit): #GP(0x0100).
            a.mov(eax, 0x0100u32)?;
            a.mov(ds, eax)?; // 8E D8 (no operand-size prefix)
            a.movzx(eax, word_ptr(VAR_COUNT_GP))?;
            fail_unless_eq(a, 4, eax, 1)?;
            a.mov(eax, dword_ptr(VAR_ERRCODE))?;
            fail_unless_eq(a, 4, eax, 0x0100)?;
            // 5. The null selector loads into DS without a fault (it faults only on use).
            a.xor(eax, eax)?;
            a.mov(ds, eax)?;
            a.mov(eax, 0x10u32)?;
            a.mov(ds, eax)?;
            a.movzx(eax, word_ptr(VAR_COUNT_GP))?;
            fail_unless_eq(a, 5, eax, 1)?;
            // 6. INT 0x80 returns after the INT with registers intact.
            a.mov(eax, 0xCAFEu32)?;
            a.int(0x80)?;
            fail_unless_eq(a, 6, eax, 0xCAFE)?;
            a.movzx(eax, word_ptr(VAR_COUNT_INT))?;
            fail_unless_eq(a, 6, eax, 1)?;
            // 7. Frames were as specified, and IF is back on.
            a.mov(eax, dword_ptr(VAR_BAD))?;
            fail_unless_eq(a, 7, eax, 0)?;
            expect_flags32(a, 7, IF, IF)?;
            report(a, PASS)
        },
        extras,
    ))
}

/// Emits code that zeroes a 256-gate IDT at `idt`, installs 32-bit interrupt gates (type 0xE,
/// present, DPL 0, the flat code selector) for `(vector, handler)` pairs and loads it through a
/// pseudo-descriptor at `idtr`.
fn install_idt32(a: &mut CodeAssembler, idt: u64, idtr: u64, gates: &[(u64, u64)]) -> Result<(), IcedError> {
    a.mov(edi, idt as u32)?;
    a.xor(eax, eax)?;
    a.mov(ecx, 512u32)?;
    a.rep().stosd()?;
    for &(vec, h) in gates {
        a.mov(word_ptr(idt + vec * 8), (h & 0xFFFF) as u32)?;
        a.mov(word_ptr(idt + vec * 8 + 2), u32::from(SEL_CODE32))?;
        a.mov(word_ptr(idt + vec * 8 + 4), 0x8E00u32)?;
        a.mov(word_ptr(idt + vec * 8 + 6), (h >> 16) as u32)?;
    }
    a.mov(word_ptr(idtr), (256 * 8 - 1) as u32)?;
    a.mov(dword_ptr(idtr + 2), idt as u32)?;
    a.lidt(ptr(idtr))
}

/// Emits code that points all 256 IDT gates at `handler` (32-bit interrupt gates) and loads the
/// IDT.
pub(crate) fn install_idt32_all(a: &mut CodeAssembler, idt: u64, idtr: u64, handler: u64) -> Result<(), IcedError> {
    a.mov(edi, idt as u32)?;
    a.mov(ecx, 256u32)?;
    let mut fill = a.create_label();
    a.set_label(&mut fill)?;
    a.mov(word_ptr(edi), (handler & 0xFFFF) as u32)?;
    a.mov(word_ptr(edi + 2), u32::from(SEL_CODE32))?;
    a.mov(word_ptr(edi + 4), 0x8E00u32)?;
    a.mov(word_ptr(edi + 6), (handler >> 16) as u32)?;
    a.add(edi, 8)?;
    a.dec(ecx)?;
    a.jnz(fill)?;
    a.mov(word_ptr(idtr), (256 * 8 - 1) as u32)?;
    a.mov(dword_ptr(idtr + 2), idt as u32)?;
    a.lidt(ptr(idtr))
}

/// Emits code that points all 256 real-mode IVT entries at `0000:handler`.
pub(crate) fn install_ivt_all(a: &mut CodeAssembler, handler: u64) -> Result<(), IcedError> {
    a.xor(di, di)?;
    a.mov(cx, 256u32)?;
    let mut fill = a.create_label();
    a.set_label(&mut fill)?;
    a.mov(word_ptr(di), handler as u32)?;
    a.mov(word_ptr(di + 2), 0u32)?;
    a.add(di, 4)?;
    a.dec(cx)?;
    a.jnz(fill)?;
    Ok(())
}

/// Emits the initialisation of the 8259A pair: ICW1 (edge, cascade, ICW4), ICW2 (vector base:
/// `master_base` and 0x70), ICW3 (slave on IRQ 2), ICW4 (8086 mode); then the masks (the slave
/// fully masked).
fn init_pics(a: &mut CodeAssembler, master_base: u32, master_mask: u32) -> Result<(), IcedError> {
    for (port, bytes, mask) in
        [(0x20u32, [0x11u32, master_base, 0x04, 0x01], master_mask), (0xA0, [0x11, 0x70, 0x02, 0x01], 0xFF)]
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
    Ok(())
}

/// Emits the programming of 8254 channel 0: lobyte/hibyte, mode 2 (rate generator), count 1193
/// (1.193182 MHz / 1193 = 1000.15 Hz).
fn pit_1khz(a: &mut CodeAssembler) -> Result<(), IcedError> {
    for (port, v) in [(0x43u32, 0x34u32), (0x40, 0xA9), (0x40, 0x04)] {
        a.mov(al, v)?;
        a.out(port, al)?;
    }
    Ok(())
}

/// Timer interrupts: programs the 8259A pair (IRQ0 at vector 8, only IRQ0 unmasked) and the 8254
/// channel 0 in mode 2 with a count of 1193 (1.193182 MHz / 1193 = 1000.15 Hz), then sleeps in
/// `sti; hlt` through 100 interrupt periods. The TSC (which counts virtual nanoseconds here) must
/// show 100 periods of 0.99985 ms, within 1%.
pub fn pit_interrupts() -> Rom {
    const TICKS: u64 = 0x600;
    const TSC0: u64 = 0x620;
    assembled(build_with(
        Mode::Real,
        |a| {
            a.mov(word_ptr(8 * 4), H_INT as u32)?;
            a.mov(word_ptr(8 * 4 + 2), 0u32)?;
            a.mov(word_ptr(TICKS), 0u32)?;
            init_pics(a, 0x08, 0xFE)?;
            pit_1khz(a)?;
            // Measure from the first interrupt (the output's state before programming is
            // undefined, so an edge right at the control-word write is legitimate) to the 101st.
            a.sti()?;
            let mut first = a.create_label();
            a.set_label(&mut first)?;
            a.hlt()?;
            a.cmp(word_ptr(TICKS), 0)?;
            a.je(first)?;
            a.rdtsc()?;
            a.mov(dword_ptr(TSC0), eax)?;
            a.mov(dword_ptr(TSC0 + 4), edx)?;
            let mut sleep = a.create_label();
            a.set_label(&mut sleep)?;
            a.hlt()?;
            a.cmp(word_ptr(TICKS), 101)?;
            a.jb(sleep)?;
            a.cli()?;
            a.rdtsc()?;
            a.sub(eax, dword_ptr(TSC0))?;
            a.sbb(edx, dword_ptr(TSC0 + 4))?;
            // 1. Less than 2^32 ns passed.
            fail_unless_eq(a, 1, edx, 0)?;
            // 2. 100 periods of 1193 / 1.193182 MHz = 99.985 ms, within 1%.
            let mut slow = a.create_label();
            a.cmp(eax, 98_985_000)?;
            a.jb(slow)?;
            a.cmp(eax, 100_985_000)?;
            a.ja(slow)?;
            report(a, PASS)?;
            a.set_label(&mut slow)?;
            report(a, crate::FAIL | 2)
        },
        vec![asm(16, H_INT, |a| {
            a.inc(word_ptr(TICKS))?;
            a.push(ax)?;
            a.mov(al, 0x20u32)?; // non-specific EOI
            a.out(0x20, al)?;
            a.pop(ax)?;
            a.iret()
        })
        .expect("handler assembles")],
    ))
}

/// The local APIC and the I/O APIC: the LAPIC timer in periodic mode (1 GHz bus clock, divide by
/// 1, count 1,000,000: one interrupt per virtual millisecond), a self IPI held back by the task
/// priority and released by lowering it, the I/O APIC version register, and the PIT's IRQ 0
/// reaching the CPU through I/O APIC pin 2 while the 8259s are masked.
pub fn apic() -> Rom {
    const IDT: u64 = 0x1000;
    const IDTR: u64 = 0x0680;
    const LAPIC: u64 = 0xFEE0_0000;
    const IOAPIC: u64 = 0xFEC0_0000;
    const TICKS: u64 = 0x600;
    const IPIS: u64 = 0x604;
    const PITS: u64 = 0x608;
    const TSC0: u64 = 0x620;
    let eoi_iret = |a: &mut CodeAssembler, counter: u64| -> Result<(), IcedError> {
        a.inc(dword_ptr(counter))?;
        a.mov(dword_ptr(LAPIC + 0xB0), 0u32)?;
        a.iretd()
    };
    let handlers = || -> Result<Vec<(u64, Vec<u8>)>, IcedError> {
        Ok(vec![
            asm(32, H_INT, |a| eoi_iret(a, TICKS))?,
            asm(32, H_UD, |a| eoi_iret(a, IPIS))?,
            asm(32, H_GP, |a| eoi_iret(a, PITS))?,
            asm(32, H_DE, |a| a.iretd())?, // spurious vector: no EOI
        ])
    };
    let extras = handlers().expect("handlers assemble");
    assembled(build_with(
        Mode::Protected32,
        |a| {
            install_idt32(a, IDT, IDTR, &[(0x40, H_INT), (0x41, H_UD), (0x42, H_GP), (0xFF, H_DE)])?;
            for v in [TICKS, IPIS, PITS] {
                a.mov(dword_ptr(v), 0u32)?;
            }
            // The 8259s initialised and fully masked.
            init_pics(a, 0x20, 0xFF)?;
            // 1. LAPIC timer: SVR enables the APIC (spurious vector 0xFF); periodic, vector 0x40.
            a.mov(dword_ptr(LAPIC + 0xF0), 0x1FFu32)?;
            a.mov(dword_ptr(LAPIC + 0x3E0), 0xBu32)?;
            a.mov(dword_ptr(LAPIC + 0x320), 0x2_0040u32)?;
            a.mov(dword_ptr(LAPIC + 0x380), 1_000_000u32)?;
            a.sti()?;
            let mut first = a.create_label();
            a.set_label(&mut first)?;
            a.hlt()?;
            a.cmp(dword_ptr(TICKS), 0)?;
            a.je(first)?;
            a.rdtsc()?;
            a.mov(dword_ptr(TSC0), eax)?;
            let mut sleep = a.create_label();
            a.set_label(&mut sleep)?;
            a.hlt()?;
            a.cmp(dword_ptr(TICKS), 11)?;
            a.jb(sleep)?;
            a.rdtsc()?;
            a.sub(eax, dword_ptr(TSC0))?;
            // 10 periods of 1 ms, within 1%.
            let mut bad_timer = a.create_label();
            let mut timer_ok = a.create_label();
            a.cmp(eax, 9_900_000)?;
            a.jb(bad_timer)?;
            a.cmp(eax, 10_100_000)?;
            a.jbe(timer_ok)?;
            a.set_label(&mut bad_timer)?;
            report(a, crate::FAIL | 1)?;
            a.set_label(&mut timer_ok)?;
            // Stop the timer (mask its LVT).
            a.mov(dword_ptr(LAPIC + 0x320), 0x1_0040u32)?;
            // 2. A self IPI (ICR: vector 0x41, fixed, assert, shorthand self) arrives at once.
            a.mov(dword_ptr(LAPIC + 0x300), 0x4_4041u32)?;
            a.nop()?;
            a.cmp(dword_ptr(IPIS), 1)?;
            fail_unless_zf(a, 2)?;
            // 3. With TPR class 5, vector 0x41 (class 4) waits in IRR; TPR 0 releases it.
            a.mov(dword_ptr(LAPIC + 0x80), 0x50u32)?;
            a.mov(dword_ptr(LAPIC + 0x300), 0x4_4041u32)?;
            a.nop()?;
            a.cmp(dword_ptr(IPIS), 1)?;
            fail_unless_zf(a, 3)?;
            a.mov(eax, dword_ptr(LAPIC + 0x200 + 0x20))?; // IRR bits 32-63: vector 0x41 is bit 1
            a.and(eax, 2)?;
            fail_unless_eq(a, 3, eax, 2)?;
            a.mov(dword_ptr(LAPIC + 0x80), 0u32)?;
            a.nop()?;
            a.cmp(dword_ptr(IPIS), 2)?;
            fail_unless_zf(a, 3)?;
            // 4. The I/O APIC version register: 24 redirection entries, version 0x11.
            a.mov(dword_ptr(IOAPIC), 1u32)?;
            a.mov(eax, dword_ptr(IOAPIC + 0x10))?;
            fail_unless_eq(a, 4, eax, 0x0017_0011)?;
            // 5. PIT channel 0 at 1 kHz reaches the CPU through I/O APIC pin 2 as vector 0x42
            //    (edge, physical destination APIC 0) while the 8259s are masked.
            a.mov(dword_ptr(IOAPIC), 0x10 + 2 * 2 + 1)?;
            a.mov(dword_ptr(IOAPIC + 0x10), 0u32)?;
            a.mov(dword_ptr(IOAPIC), 0x10 + 2 * 2)?;
            a.mov(dword_ptr(IOAPIC + 0x10), 0x42u32)?;
            pit_1khz(a)?;
            let mut wait_pit = a.create_label();
            a.set_label(&mut wait_pit)?;
            a.hlt()?;
            a.cmp(dword_ptr(PITS), 5)?;
            a.jb(wait_pit)?;
            // No timer tick arrived after the LVT was masked.
            a.cmp(dword_ptr(TICKS), 11)?;
            fail_unless_zf(a, 5)?;
            report(a, PASS)
        },
        extras,
    ))
}

/// How [`fast_timer_halt`] makes its fast timer undeliverable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastTimer {
    /// PIT channel 0, mode 2, count 2 (about 600 kHz); the 8259s initialised and IRQ 0 masked.
    PitMasked,
    /// Local APIC timer, periodic, count 1, divide by 1, with the APIC software-disabled.
    LapicSoftwareDisabled,
    /// Local APIC timer, periodic, count 2, divide by 1, its LVT entry masked.
    LapicMasked,
    /// Local APIC timer, periodic, count 1: its handler does `sti; hlt` without an EOI, so its
    /// vector stays in service and every later expiry only sets IRR.
    LapicInService,
}

/// A guest that programs a very fast timer it cannot receive, then executes `sti; hlt`. Nothing
/// can ever wake it: a correct machine reports it idle forever at O(1) host cost per timer,
/// however short the period (issue 11, item 6).
pub fn fast_timer_halt(kind: FastTimer) -> Rom {
    const IDT: u64 = 0x1000;
    const IDTR: u64 = 0x0680;
    const LAPIC: u64 = 0xFEE0_0000;
    let extras = vec![asm(32, H_INT, |a| {
        a.sti()?;
        a.hlt()?;
        a.jmp(H_INT + 1)
    })
    .expect("handler assembles")];
    assembled(build_with(
        Mode::Protected32,
        |a| {
            install_idt32(a, IDT, IDTR, &[(0x40, H_INT)])?;
            match kind {
                FastTimer::PitMasked => {
                    init_pics(a, 0x20, 0xFF)?;
                    // Channel 0, lobyte/hibyte, mode 2 (rate generator), count 2.
                    a.mov(al, 0x34u32)?;
                    a.out(0x43u32, al)?;
                    a.mov(al, 2u32)?;
                    a.out(0x40u32, al)?;
                    a.mov(al, 0u32)?;
                    a.out(0x40u32, al)?;
                }
                FastTimer::LapicSoftwareDisabled | FastTimer::LapicMasked | FastTimer::LapicInService => {
                    init_pics(a, 0x20, 0xFF)?;
                    let (svr, lvt, count) = match kind {
                        FastTimer::LapicSoftwareDisabled => (0x0FFu32, 0x2_0040u32, 1u32),
                        FastTimer::LapicMasked => (0x1FF, 0x3_0040, 2),
                        _ => (0x1FF, 0x2_0040, 1),
                    };
                    a.mov(dword_ptr(LAPIC + 0xF0), svr)?;
                    a.mov(dword_ptr(LAPIC + 0x3E0), 0xBu32)?; // divide by 1
                    a.mov(dword_ptr(LAPIC + 0x320), lvt)?; // periodic, vector 0x40
                    a.mov(dword_ptr(LAPIC + 0x380), count)?;
                }
            }
            a.sti()?;
            let mut again = a.create_label();
            a.set_label(&mut again)?;
            a.hlt()?;
            a.jmp(again)
        },
        extras,
    ))
}
