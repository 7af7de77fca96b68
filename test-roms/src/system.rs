//! System-architecture checks in 32-bit protected mode: selector loads and their exceptions
//! (#GP, #NP, #SS with the SDM's error codes), a double fault, ring 3 and back through gates with
//! the stack switch from the TSS, a 32-bit task switch, and 2-level paging (#PF error codes and
//! CR2, CR0.WP, U/S, 4 MiB pages, accessed and dirty bits), then PAE paging with
//! execute-disable.
//!
//! Every exception vector 0-31 goes through a stub that records the vector, the error code and
//! CR2, and resumes at the address in `RESUME`; [`expect_fault`] sets `RESUME` with a CALL, so no
//! code address has to be known in advance.

use crate::layout::{asm, build_with, fail_unless_eq, fail_unless_zf, report, Mode};
use crate::{Rom, PASS};
use iced_x86::code_asm::*;
use iced_x86::IcedError;

/// Variables.
const VEC: u64 = 0x600;
const ERR: u64 = 0x604;
const CR2: u64 = 0x608;
const RESUME: u64 = 0x610;
const COUNT: u64 = 0x618;
const SAVED_SP: u64 = 0x620;
const CONT: u64 = 0x628;
const R3_CS: u64 = 0x630;
const R3_SS: u64 = 0x634;
const R3_SP: u64 = 0x638;
const AUX: u64 = 0x640;
const R3_FAIL: u64 = 0x644;
const IDTR: u64 = 0x680;
const GDTR: u64 = 0x690;
/// Tables.
const IDT: u64 = 0x1000;
const GDT: u64 = 0x2000;
const TSS1: u64 = 0x2800;
const TSS2: u64 = 0x2C00;
const PD: u64 = 0x3_0000;
const PT0: u64 = 0x3_1000;
/// PAE tables: PDPT, PD, the first page table.
const PAE_PDPT: u64 = 0x3_4000;
const PAE_PD: u64 = 0x3_5000;
const PAE_PT: u64 = 0x3_6000;
/// Code pieces at fixed addresses.
const STUBS: u64 = 0xC000;
const COMMON: u64 = 0xC200;
const RET81: u64 = 0xC300;
const TASK2: u64 = 0xC400;
const SYSENTER_ENTRY: u64 = 0xC600;
/// What the SYSENTER entry saw: CS, SS, ESP.
const SYSE_CS: u64 = 0x650;
const SYSE_SS: u64 = 0x654;
const SYSE_ESP: u64 = 0x658;
/// IA32_SYSENTER_ESP.
const SYSENTER_STACK: u32 = 0x6_C000;
/// Stacks.
const ESP0: u32 = 0x7_0000;
const ESP3: u32 = 0x6_0000;
const TASK2_ESP: u32 = 0x6_8000;

/// Selectors of the GDT built here.
const CODE32: u16 = 0x08;
const DATA: u16 = 0x10;
const CODE32_R3: u16 = 0x28;
const DATA_R3: u16 = 0x30;
const TSS1_SEL: u16 = 0x40;
const TSS2_SEL: u16 = 0x50;
const RO_DATA: u16 = 0x58;
const NP_DATA: u16 = 0x60;

/// Pages with special mappings.
const PAGE_NP: u32 = 0x5_0000;
const PAGE_RO: u32 = 0x5_1000;
const PAGE_SUPER: u32 = 0x5_2000;
const PAGE_AD: u32 = 0x5_3000;
const PAGE_NX: u32 = 0x5_4000;

/// Vectors that push an error code.
fn has_error_code(v: u8) -> bool {
    matches!(v, 8 | 10..=14 | 17 | 21)
}

/// A segment descriptor.
fn desc(base: u32, limit: u32, access: u8, flags: u8) -> [u8; 8] {
    let b = base.to_le_bytes();
    let l = limit.to_le_bytes();
    [l[0], l[1], b[0], b[1], b[2], access, (flags << 4) | (l[2] & 0x0F), b[3]]
}

fn gdt() -> Vec<u8> {
    let mut g = Vec::new();
    for d in [
        [0; 8],
        desc(0, 0xFFFFF, 0x9A, 0xC),      // 0x08 code32 ring 0
        desc(0, 0xFFFFF, 0x92, 0xC),      // 0x10 data ring 0
        desc(0, 0xFFFFF, 0x9A, 0xA),      // 0x18 code64 ring 0
        desc(0, 0xFFFFF, 0x92, 0xC),      // 0x20 data ring 0
        desc(0, 0xFFFFF, 0xFA, 0xC),      // 0x28 code32 ring 3
        desc(0, 0xFFFFF, 0xF2, 0xC),      // 0x30 data ring 3
        desc(0, 0xFFFFF, 0xFA, 0xA),      // 0x38 code64 ring 3
        desc(TSS1 as u32, 0x67, 0x89, 0), // 0x40 TSS (available 32-bit)
        [0; 8],                           // 0x48 (upper half of a 64-bit TSS descriptor)
        desc(TSS2 as u32, 0x67, 0x89, 0), // 0x50 second TSS
        desc(0, 0xFFFFF, 0x90, 0xC),      // 0x58 read-only data ring 0
        desc(0, 0xFFFFF, 0x12, 0xC),      // 0x60 writable data, not present
    ] {
        g.extend_from_slice(&d);
    }
    g
}

fn tss1() -> Vec<u8> {
    let mut t = vec![0u8; 0x68];
    t[4..8].copy_from_slice(&ESP0.to_le_bytes());
    t[8..10].copy_from_slice(&DATA.to_le_bytes());
    t[0x66..0x68].copy_from_slice(&0x68u16.to_le_bytes()); // no I/O bitmap
    t
}

fn tss2() -> Vec<u8> {
    let mut t = vec![0u8; 0x68];
    let put = |t: &mut Vec<u8>, off: usize, v: u32| t[off..off + 4].copy_from_slice(&v.to_le_bytes());
    put(&mut t, 0x20, TASK2 as u32); // EIP
    put(&mut t, 0x24, 0x2); // EFLAGS
    put(&mut t, 0x28, 0x7A5C_0002); // EAX
    put(&mut t, 0x38, TASK2_ESP); // ESP
    for (off, sel) in [(0x48, DATA), (0x4C, CODE32), (0x50, DATA), (0x54, DATA), (0x58, DATA), (0x5C, DATA)] {
        put(&mut t, off, u32::from(sel));
    }
    t[0x66..0x68].copy_from_slice(&0x68u16.to_le_bytes());
    t
}

/// The 32-bit IDT: vectors 0-31 to their stubs (DPL 0), 0x80 with DPL 0 (so ring 3 may not use
/// it), 0x81 with DPL 3 (the way back from ring 3).
fn idt() -> Vec<u8> {
    let gate = |off: u64, dpl: u8| {
        let o = (off as u32).to_le_bytes();
        let s = CODE32.to_le_bytes();
        [o[0], o[1], s[0], s[1], 0, 0x8E | (dpl << 5), o[2], o[3]]
    };
    let mut t = vec![0u8; 256 * 8];
    for v in 0..32u64 {
        t[(v * 8) as usize..][..8].copy_from_slice(&gate(STUBS + v * 16, 0));
    }
    t[0x80 * 8..][..8].copy_from_slice(&gate(STUBS, 0));
    t[0x81 * 8..][..8].copy_from_slice(&gate(RET81, 3));
    t
}

/// Page directory and the first page table: identity map of 0-4 MiB with 4 KiB user-writable
/// pages (accessed and dirty clear), except the special pages; 4-8 MiB as one 4 MiB page.
fn page_tables() -> Vec<u8> {
    let mut t = vec![0u8; 0x2000];
    t[0..4].copy_from_slice(&(PT0 as u32 | 7).to_le_bytes());
    t[4..8].copy_from_slice(&(0x40_0000u32 | 0x87).to_le_bytes()); // PS, U, W, P
    for i in 0..1024u32 {
        let page = i << 12;
        let pte = match page {
            PAGE_NP => 0,
            PAGE_RO => page | 5,
            PAGE_SUPER => page | 3,
            _ => page | 7,
        };
        t[0x1000 + i as usize * 4..][..4].copy_from_slice(&pte.to_le_bytes());
    }
    t
}

/// PAE tables: identity map of 0-4 MiB (the first 2 MiB in 4 KiB pages), with the
/// not-present page and an execute-disable page holding a RET.
fn pae_tables() -> Vec<u8> {
    let mut t = vec![0u8; 0x3000];
    let put = |t: &mut Vec<u8>, off: usize, v: u64| t[off..off + 8].copy_from_slice(&v.to_le_bytes());
    put(&mut t, 0, PAE_PD | 1); // PDPTEs have only P (and cache bits)
    put(&mut t, 0x1000, PAE_PT | 7);
    put(&mut t, 0x1008, 0x20_0000 | 0x87);
    for i in 0..512u64 {
        let page = i << 12;
        let pte = match page as u32 {
            PAGE_NP => 0,
            PAGE_NX => page | 7 | (1 << 63),
            _ => page | 7,
        };
        put(&mut t, 0x2000 + i as usize * 8, pte);
    }
    t
}

/// Stub for vector `v`: an error-code placeholder when the CPU pushes none, the vector, then
/// the common handler.
fn stub(v: u8) -> Result<(u64, Vec<u8>), IcedError> {
    asm(32, STUBS + u64::from(v) * 16, |a| {
        if !has_error_code(v) {
            a.push(0)?;
        }
        a.push(u32::from(v))?;
        a.jmp(COMMON)
    })
}

/// Records vector, error code and CR2, counts, and resumes at RESUME (same privilege level).
fn common() -> Result<(u64, Vec<u8>), IcedError> {
    asm(32, COMMON, |a| {
        a.push(eax)?;
        a.mov(eax, dword_ptr(esp + 4))?;
        a.mov(dword_ptr(VEC), eax)?;
        a.mov(eax, dword_ptr(esp + 8))?;
        a.mov(dword_ptr(ERR), eax)?;
        a.mov(eax, cr2)?;
        a.mov(dword_ptr(CR2), eax)?;
        a.inc(dword_ptr(COUNT))?;
        a.mov(eax, dword_ptr(RESUME))?;
        a.mov(dword_ptr(esp + 12), eax)?;
        a.pop(eax)?;
        a.add(esp, 8)?;
        a.iretd()
    })
}

/// INT 0x81 from ring 3: records the CS and SS the gate pushed and the ring-0 stack pointer
/// (switched from the TSS), then continues the ring-0 flow at CONT with its saved stack.
fn ret81() -> Result<(u64, Vec<u8>), IcedError> {
    asm(32, RET81, |a| {
        a.mov(eax, dword_ptr(esp + 4))?;
        a.mov(dword_ptr(R3_CS), eax)?;
        a.mov(eax, dword_ptr(esp + 16))?;
        a.mov(dword_ptr(R3_SS), eax)?;
        a.mov(dword_ptr(R3_SP), esp)?;
        a.mov(esp, dword_ptr(SAVED_SP))?;
        a.jmp(dword_ptr(CONT))
    })
}

/// The second task: checks the state loaded from its TSS, marks AUX and jumps back to task 1.
fn task2() -> Result<(u64, Vec<u8>), IcedError> {
    asm(32, TASK2, |a| {
        let mut bad = a.create_label();
        a.cmp(eax, 0x7A5C_0002)?;
        a.jne(bad)?;
        a.cmp(esp, TASK2_ESP as i32)?;
        a.jne(bad)?;
        a.str(ax)?;
        a.cmp(ax, i32::from(TSS2_SEL))?;
        a.jne(bad)?;
        a.mov(dword_ptr(AUX), 1u32)?;
        a.mov(eax, 0x1234u32)?;
        a.db(&[0xEA, 0, 0, 0, 0])?;
        a.db(&TSS1_SEL.to_le_bytes())?;
        a.set_label(&mut bad)?;
        a.mov(dword_ptr(AUX), 2u32)?;
        a.db(&[0xEA, 0, 0, 0, 0])?;
        a.db(&TSS1_SEL.to_le_bytes())
    })
}

/// The privilege level code is emitted for: ring 3 cannot use the exit port, so it records a
/// failure in R3_FAIL and returns to ring 0, which reports it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ring {
    Zero,
    Three,
}

/// Emits a failure report of check `n`.
fn fail(a: &mut CodeAssembler, ring: Ring, n: u8) -> Result<(), IcedError> {
    match ring {
        Ring::Zero => report(a, crate::FAIL | n),
        Ring::Three => {
            a.mov(dword_ptr(R3_FAIL), u32::from(n))?;
            a.int(0x81)
        }
    }
}

/// Emits a failure report of check `n` unless ZF is set.
fn fail_unless_zf_in(a: &mut CodeAssembler, ring: Ring, n: u8) -> Result<(), IcedError> {
    if ring == Ring::Zero {
        return fail_unless_zf(a, n);
    }
    let mut ok = a.create_label();
    a.je(ok)?;
    fail(a, ring, n)?;
    a.set_label(&mut ok)
}

/// The SYSENTER entry: records CS, SS and ESP, then SYSEXIT back (EDX = EIP, ECX = ESP).
fn sysenter_entry() -> Result<(u64, Vec<u8>), IcedError> {
    asm(32, SYSENTER_ENTRY, |a| {
        a.mov(ax, cs)?;
        a.mov(word_ptr(SYSE_CS), ax)?;
        a.mov(ax, ss)?;
        a.mov(word_ptr(SYSE_SS), ax)?;
        a.mov(dword_ptr(SYSE_ESP), esp)?;
        a.sysexit()
    })
}

/// Emits `body`, which must fault; the stub records the fault and execution resumes after it.
/// Then checks the vector, the error code and (when given) CR2; check number `n` on failure.
/// Works in 32- and 64-bit code (RESUME and CR2 are stored at the code's width).
fn expect_fault(
    a: &mut CodeAssembler,
    ring: Ring,
    n: u8,
    vector: u32,
    error: u32,
    cr2_value: Option<u64>,
    body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<(), IcedError> {
    let long = a.bitness() == 64;
    let mut setup = a.create_label();
    let mut after = a.create_label();
    a.mov(dword_ptr(VEC), 0xFFFF_FFFFu32)?;
    a.call(setup)?;
    a.jmp(after)?;
    a.set_label(&mut setup)?;
    if long {
        a.pop(qword_ptr(RESUME))?;
    } else {
        a.pop(dword_ptr(RESUME))?;
    }
    body(a)?;
    // The body did not fault.
    fail(a, ring, n)?;
    a.set_label(&mut after)?;
    a.cmp(dword_ptr(VEC), vector as i32)?;
    fail_unless_zf_in(a, ring, n)?;
    a.cmp(dword_ptr(ERR), error as i32)?;
    fail_unless_zf_in(a, ring, n)?;
    if let Some(c) = cr2_value {
        if long {
            a.mov(rax, c)?;
            a.cmp(qword_ptr(CR2), rax)?;
        } else {
            a.cmp(dword_ptr(CR2), c as i32)?;
        }
        fail_unless_zf_in(a, ring, n)?;
    }
    Ok(())
}

/// Back in ring 0 after [`in_ring3`]: reports a failure ring 3 recorded in R3_FAIL.
fn report_ring3_failure(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut ok = a.create_label();
    a.cmp(dword_ptr(R3_FAIL), 0)?;
    a.je(ok)?;
    a.mov(eax, dword_ptr(R3_FAIL))?;
    a.or(al, crate::FAIL as u32)?;
    a.out(u32::from(crate::EXIT_PORT), al)?;
    a.cli()?;
    a.hlt()?;
    a.set_label(&mut ok)
}

/// Emits a trip to ring 3 through IRET, running `body` there; `body` must end by reaching
/// INT 0x81 (emitted here after it). Ring 0 continues after this code with its stack intact.
fn in_ring3(
    a: &mut CodeAssembler,
    body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<(), IcedError> {
    let mut setup = a.create_label();
    let mut go3 = a.create_label();
    let mut done = a.create_label();
    a.call(setup)?;
    a.jmp(done)?;
    a.set_label(&mut setup)?;
    a.pop(dword_ptr(CONT))?;
    a.mov(dword_ptr(SAVED_SP), esp)?;
    a.call(go3)?;
    // Ring 3 code.
    a.mov(eax, u32::from(DATA_R3 | 3))?;
    a.mov(ds, eax)?;
    a.mov(es, eax)?;
    body(a)?;
    a.int(0x81)?;
    a.set_label(&mut go3)?;
    a.pop(eax)?;
    a.push(u32::from(DATA_R3 | 3))?;
    a.push(ESP3)?;
    a.push(0x2u32)?;
    a.push(u32::from(CODE32_R3 | 3))?;
    a.push(eax)?;
    a.iretd()?;
    a.set_label(&mut done)?;
    // Back in ring 0: restore the data segments and report a failure ring 3 recorded.
    a.mov(eax, u32::from(DATA))?;
    a.mov(ds, eax)?;
    a.mov(es, eax)?;
    report_ring3_failure(a)
}

/// The protected-mode system checks.
pub fn system_protected() -> Rom {
    let pieces = || -> Result<Vec<(u64, Vec<u8>)>, IcedError> {
        let mut v = vec![(GDT, gdt()), (TSS1, tss1()), (TSS2, tss2()), (IDT, idt()), (PD, page_tables())];
        v.push((PAE_PDPT, pae_tables()));
        v.push((u64::from(PAGE_NX), vec![0xC3])); // RET
        for vec in 0..32 {
            v.push(stub(vec)?);
        }
        v.extend([common()?, ret81()?, task2()?, sysenter_entry()?]);
        Ok(v)
    };
    let extras = pieces().expect("system pieces assemble");
    build_with(
        Mode::Protected32,
        |a| {
            // Our own GDT, IDT and task register.
            a.mov(word_ptr(GDTR), (gdt().len() - 1) as u32)?;
            a.mov(dword_ptr(GDTR + 2), GDT as u32)?;
            a.lgdt(ptr(GDTR))?;
            a.mov(word_ptr(IDTR), (256 * 8 - 1) as u32)?;
            a.mov(dword_ptr(IDTR + 2), IDT as u32)?;
            a.lidt(ptr(IDTR))?;
            a.mov(eax, u32::from(TSS1_SEL))?;
            a.ltr(ax)?;
            a.mov(dword_ptr(COUNT), 0u32)?;
            a.mov(dword_ptr(R3_FAIL), 0u32)?;

            // 1. A null selector in SS: #GP(0).
            expect_fault(a, Ring::Zero, 1, 13, 0, None, |a| {
                a.xor(eax, eax)?;
                a.mov(ss, eax)
            })?;
            // 2. A read-only data segment in SS: #GP(selector).
            expect_fault(a, Ring::Zero, 2, 13, u32::from(RO_DATA), None, |a| {
                a.mov(eax, u32::from(RO_DATA))?;
                a.mov(ss, eax)
            })?;
            // 3. A not-present data segment in DS: #NP(selector).
            expect_fault(a, Ring::Zero, 3, 11, u32::from(NP_DATA), None, |a| {
                a.mov(eax, u32::from(NP_DATA))?;
                a.mov(ds, eax)
            })?;
            // 4. A not-present segment in SS: #SS(selector).
            expect_fault(a, Ring::Zero, 4, 12, u32::from(NP_DATA), None, |a| {
                a.mov(eax, u32::from(NP_DATA))?;
                a.mov(ss, eax)
            })?;
            // 5. A system descriptor (the TSS) in DS: #GP(selector).
            expect_fault(a, Ring::Zero, 5, 13, u32::from(TSS1_SEL), None, |a| {
                a.mov(eax, u32::from(TSS1_SEL))?;
                a.mov(ds, eax)
            })?;
            // 6. A selector with RPL 3 for a DPL-0 data segment at CPL 0: #GP with the selector's
            //    index and TI (the error code has no RPL field).
            expect_fault(a, Ring::Zero, 6, 13, u32::from(DATA), None, |a| {
                a.mov(eax, u32::from(DATA | 3))?;
                a.mov(ds, eax)
            })?;
            // 7. Double fault: the #GP gate is not present, so delivering #GP raises #NP, and a
            //    contributory fault during a contributory fault is #DF with error code 0.
            a.and(byte_ptr(IDT + 13 * 8 + 5), 0x7F)?;
            expect_fault(a, Ring::Zero, 7, 8, 0, None, |a| {
                a.mov(eax, u32::from(RO_DATA))?;
                a.mov(ss, eax)
            })?;
            a.or(byte_ptr(IDT + 13 * 8 + 5), 0x80)?;

            // 8. Ring 3 and back: IRET to CPL 3, INT 0x81 through a DPL-3 gate switches to the
            //    ring-0 stack from the TSS and pushes the ring-3 SS:ESP, EFLAGS, CS:EIP.
            a.mov(dword_ptr(R3_CS), 0u32)?;
            in_ring3(a, |_| Ok(()))?;
            a.cmp(dword_ptr(R3_CS), i32::from(CODE32_R3 | 3))?;
            fail_unless_zf(a, 8)?;
            a.cmp(dword_ptr(R3_SS), i32::from(DATA_R3 | 3))?;
            fail_unless_zf(a, 8)?;
            a.cmp(dword_ptr(R3_SP), (ESP0 - 20) as i32)?;
            fail_unless_zf(a, 8)?;
            // 9. In ring 3: CLI with IOPL 0 is #GP(0); INT 0x80 through a DPL-0 gate is
            //    #GP(0x80 * 8 + 2) (IDT bit); IN from a port without an I/O bitmap is #GP(0).
            in_ring3(a, |a| {
                expect_fault(a, Ring::Three, 9, 13, 0, None, |a| a.cli())?;
                expect_fault(a, Ring::Three, 9, 13, 0x80 * 8 + 2, None, |a| a.int(0x80))?;
                expect_fault(a, Ring::Three, 9, 13, 0, None, |a| a.in_(al, 0x80))
            })?;

            // 20. SYSENTER from ring 3 to CS = IA32_SYSENTER_CS (SS = CS + 8, ESP and EIP from
            //     their MSRs) and SYSEXIT back to CS = SYSENTER_CS + 16 | 3, SS = + 24 | 3.
            for (msr_index, value) in
                [(0x174u32, u32::from(CODE32)), (0x175, SYSENTER_STACK), (0x176, SYSENTER_ENTRY as u32)]
            {
                a.mov(ecx, msr_index)?;
                a.mov(eax, value)?;
                a.xor(edx, edx)?;
                a.wrmsr()?;
            }
            in_ring3(a, |a| {
                let mut enter = a.create_label();
                let mut back = a.create_label();
                a.call(enter)?;
                a.jmp(back)?;
                a.set_label(&mut enter)?;
                a.pop(edx)?;
                a.mov(ecx, esp)?;
                a.sysenter()?;
                a.set_label(&mut back)?;
                a.mov(ax, cs)?;
                a.cmp(ax, i32::from(CODE32 + 16) | 3)?;
                fail_unless_zf_in(a, Ring::Three, 20)?;
                a.mov(ax, ss)?;
                a.cmp(ax, i32::from(CODE32 + 24) | 3)?;
                fail_unless_zf_in(a, Ring::Three, 20)?;
                a.cmp(esp, ESP3 as i32)?;
                fail_unless_zf_in(a, Ring::Three, 20)
            })?;
            a.cmp(word_ptr(SYSE_CS), i32::from(CODE32))?;
            fail_unless_zf(a, 20)?;
            a.cmp(word_ptr(SYSE_SS), i32::from(CODE32 + 8))?;
            fail_unless_zf(a, 20)?;
            a.cmp(dword_ptr(SYSE_ESP), SYSENTER_STACK as i32)?;
            fail_unless_zf(a, 20)?;

            // 10. A 32-bit task switch by JMP to a TSS and back: task 2 starts with the
            //     registers of its TSS, task 1 resumes after its JMP with its own registers.
            a.mov(dword_ptr(AUX), 0u32)?;
            a.mov(eax, 0xAAAA_5555u32)?;
            a.db(&[0xEA, 0, 0, 0, 0])?;
            a.db(&TSS2_SEL.to_le_bytes())?;
            fail_unless_eq(a, 10, eax, 0xAAAA_5555u32 as i32)?;
            a.cmp(dword_ptr(AUX), 1)?;
            fail_unless_zf(a, 10)?;
            a.str(ax)?;
            fail_unless_eq(a, 10, ax, i32::from(TSS1_SEL))?;
            // Task 2's descriptor is available again (JMP clears the busy bit of the old task).
            a.movzx(eax, byte_ptr(GDT + u64::from(TSS2_SEL) + 5))?;
            fail_unless_eq(a, 10, eax, 0x89)?;
            // Task 2's TSS holds its state at the switch: EAX = 0x1234.
            a.cmp(dword_ptr(TSS2 + 0x28), 0x1234)?;
            fail_unless_zf(a, 10)?;

            // Paging: 2-level tables, 4 MiB pages (CR4.PSE), supervisor writes honour R/W (CR0.WP).
            a.mov(eax, PD as u32)?;
            a.mov(cr3, eax)?;
            a.mov(eax, cr4)?;
            a.or(eax, 0x10)?;
            a.mov(cr4, eax)?;
            a.mov(eax, cr0)?;
            a.or(eax, 0x8001_0000u32)?;
            a.mov(cr0, eax)?;
            // 11. Read of a not-present page: #PF, error 0 (read, supervisor, not present).
            a.mov(ebx, PAGE_NP + 0x10)?;
            expect_fault(a, Ring::Zero, 11, 14, 0, Some(u64::from(PAGE_NP + 0x10)), |a| a.mov(eax, dword_ptr(ebx)))?;
            // 12. Write to a read-only page with CR0.WP: #PF, error 3 (present, write).
            a.mov(ebx, PAGE_RO + 8)?;
            expect_fault(a, Ring::Zero, 12, 14, 3, Some(u64::from(PAGE_RO + 8)), |a| a.mov(dword_ptr(ebx), eax))?;
            // 13. Accessed and dirty bits: a read sets A in the PTE and the PDE, a write sets D.
            let pte_ad = PT0 + u64::from(PAGE_AD >> 12) * 4;
            a.mov(eax, dword_ptr(u64::from(PAGE_AD)))?;
            a.mov(eax, dword_ptr(pte_ad))?;
            a.and(eax, 0x60)?;
            fail_unless_eq(a, 13, eax, 0x20)?;
            a.mov(eax, dword_ptr(PD))?;
            a.and(eax, 0x20)?;
            fail_unless_eq(a, 13, eax, 0x20)?;
            a.mov(dword_ptr(u64::from(PAGE_AD)), eax)?;
            a.mov(eax, dword_ptr(pte_ad))?;
            a.and(eax, 0x60)?;
            fail_unless_eq(a, 13, eax, 0x60)?;
            // 14. A 4 MiB page: a write at 4 MiB + 16 sets A and D in the PDE itself.
            a.mov(dword_ptr(0x40_0010u64), eax)?;
            a.mov(eax, dword_ptr(PD + 4))?;
            a.and(eax, 0x60)?;
            fail_unless_eq(a, 14, eax, 0x60)?;
            // 15. From ring 3: a supervisor page read is #PF 5 (present, user); a read-only page
            //     write is #PF 7 (present, write, user).
            in_ring3(a, |a| {
                a.mov(ebx, PAGE_SUPER)?;
                expect_fault(a, Ring::Three, 15, 14, 5, Some(u64::from(PAGE_SUPER)), |a| a.mov(eax, dword_ptr(ebx)))?;
                a.mov(ebx, PAGE_RO)?;
                expect_fault(a, Ring::Three, 15, 14, 7, Some(u64::from(PAGE_RO)), |a| a.mov(dword_ptr(ebx), eax))
            })?;
            // 16. Without CR0.WP a supervisor write to the read-only page succeeds.
            a.mov(eax, cr0)?;
            a.and(eax, !0x1_0000u32)?;
            a.mov(cr0, eax)?;
            a.mov(dword_ptr(PAGE_RO as u64 + 8), 0x5A5Au32)?;
            a.cmp(dword_ptr(PAGE_RO as u64 + 8), 0x5A5A)?;
            fail_unless_zf(a, 16)?;

            // PAE paging with EFER.NXE: paging off, CR4.PAE, CR3 = the PDPT, paging on.
            a.mov(eax, cr0)?;
            a.and(eax, 0x7FFF_FFFFu32)?;
            a.mov(cr0, eax)?;
            a.mov(eax, cr4)?;
            a.or(eax, 0x20)?;
            a.mov(cr4, eax)?;
            a.mov(eax, PAE_PDPT as u32)?;
            a.mov(cr3, eax)?;
            a.mov(ecx, 0xC000_0080u32)?;
            a.rdmsr()?;
            a.or(eax, 0x800)?; // EFER.NXE
            a.wrmsr()?;
            a.mov(eax, cr0)?;
            a.or(eax, 0x8000_0000u32)?;
            a.mov(cr0, eax)?;
            // 17. A read of the not-present page: #PF 0 with CR2.
            a.mov(ebx, PAGE_NP + 0x20)?;
            expect_fault(a, Ring::Zero, 17, 14, 0, Some(u64::from(PAGE_NP + 0x20)), |a| a.mov(eax, dword_ptr(ebx)))?;
            // 18. A fetch from the execute-disable page: #PF 0x11 (instruction fetch, present).
            a.mov(ebx, PAGE_NX)?;
            expect_fault(a, Ring::Zero, 18, 14, 0x11, Some(u64::from(PAGE_NX)), |a| a.call(ebx))?;
            // 19. Reads of the same page are allowed, and 2 MiB pages map.
            a.movzx(eax, byte_ptr(u64::from(PAGE_NX)))?;
            fail_unless_eq(a, 19, eax, 0xC3)?;
            a.mov(dword_ptr(0x20_0040u64), 0x77u32)?;
            a.cmp(dword_ptr(0x20_0040u64), 0x77)?;
            fail_unless_zf(a, 19)?;
            report(a, PASS)
        },
        extras,
    )
    .expect("system ROM assembles")
}

/// Long-mode pieces: 64-bit IDT, TSS with RSP0, stubs, common handler, INT 0x81 return,
/// SYSCALL entry, and 4-level tables with 4 KiB pages in the first 2 MiB.
mod long {
    use super::*;

    pub(super) const IDT64: u64 = 0x1000;
    pub(super) const TSS64: u64 = 0x2800;
    pub(super) const PML4: u64 = 0x4_0000;
    const PDPT: u64 = 0x4_1000;
    const PD: u64 = 0x4_2000;
    const PT: u64 = 0x4_3000;
    pub(super) const SYSCALL_ENTRY: u64 = 0xC500;
    pub(super) const CODE64: u16 = 0x18;
    pub(super) const SYSCALL_SS: u16 = 0x20;
    pub(super) const SYSRET_BASE: u16 = 0x28;
    pub(super) const DATA_R3: u16 = 0x30;
    pub(super) const CODE64_R3: u16 = 0x38;
    pub(super) const RSP0: u64 = 0x7_0000;
    pub(super) const RSP3: u64 = 0x6_0000;
    /// What the SYSCALL entry saw: RCX, R11, CS, SS.
    pub(super) const SYS_RCX: u64 = 0x660;
    pub(super) const SYS_R11: u64 = 0x668;
    pub(super) const SYS_CS: u64 = 0x670;
    pub(super) const SYS_SS: u64 = 0x674;
    pub(super) const SYS_FLAGS: u64 = 0x678;

    pub(super) fn idt64() -> Vec<u8> {
        let gate = |off: u64, dpl: u8| {
            let o = off.to_le_bytes();
            let s = CODE64.to_le_bytes();
            [o[0], o[1], s[0], s[1], 0, 0x8E | (dpl << 5), o[2], o[3], o[4], o[5], o[6], o[7], 0, 0, 0, 0]
        };
        let mut t = vec![0u8; 256 * 16];
        for v in 0..32u64 {
            t[(v * 16) as usize..][..16].copy_from_slice(&gate(STUBS + v * 16, 0));
        }
        t[0x81 * 16..][..16].copy_from_slice(&gate(RET81, 3));
        t
    }

    pub(super) fn tss64() -> Vec<u8> {
        let mut t = vec![0u8; 0x68];
        t[4..12].copy_from_slice(&RSP0.to_le_bytes());
        t[0x66..0x68].copy_from_slice(&0x68u16.to_le_bytes());
        t
    }

    pub(super) fn tables() -> Vec<u8> {
        let mut t = vec![0u8; 0x4000];
        let put = |t: &mut Vec<u8>, off: usize, v: u64| t[off..off + 8].copy_from_slice(&v.to_le_bytes());
        put(&mut t, 0, PDPT | 7);
        put(&mut t, 0x1000, PD | 7);
        put(&mut t, 0x2000, PT | 7);
        for i in 1..512u64 {
            put(&mut t, 0x2000 + i as usize * 8, (i << 21) | 0x87);
        }
        for i in 0..512u64 {
            let page = i << 12;
            let pte = match page as u32 {
                PAGE_NP => 0,
                PAGE_SUPER => page | 3,
                PAGE_NX => page | 7 | (1 << 63),
                _ => page | 7,
            };
            put(&mut t, 0x3000 + i as usize * 8, pte);
        }
        t
    }

    pub(super) fn stub64(v: u8) -> Result<(u64, Vec<u8>), IcedError> {
        asm(64, STUBS + u64::from(v) * 16, |a| {
            if !has_error_code(v) {
                a.push(0i32)?;
            }
            a.push(i32::from(v))?;
            a.jmp(COMMON)
        })
    }

    pub(super) fn common64() -> Result<(u64, Vec<u8>), IcedError> {
        asm(64, COMMON, |a| {
            a.push(rax)?;
            a.mov(rax, qword_ptr(rsp + 8))?;
            a.mov(dword_ptr(VEC), eax)?;
            a.mov(rax, qword_ptr(rsp + 16))?;
            a.mov(dword_ptr(ERR), eax)?;
            a.mov(rax, cr2)?;
            a.mov(qword_ptr(CR2), rax)?;
            a.inc(dword_ptr(COUNT))?;
            a.mov(rax, qword_ptr(RESUME))?;
            a.mov(qword_ptr(rsp + 24), rax)?;
            a.pop(rax)?;
            a.add(rsp, 16)?;
            a.iretq()
        })
    }

    pub(super) fn ret81_64() -> Result<(u64, Vec<u8>), IcedError> {
        asm(64, RET81, |a| {
            a.mov(rax, qword_ptr(rsp + 8))?;
            a.mov(dword_ptr(R3_CS), eax)?;
            a.mov(rax, qword_ptr(rsp + 32))?;
            a.mov(dword_ptr(R3_SS), eax)?;
            a.mov(qword_ptr(R3_SP), rsp)?;
            a.mov(rsp, qword_ptr(SAVED_SP))?;
            a.jmp(qword_ptr(CONT))
        })
    }

    /// The SYSCALL entry: records RCX, R11, CS, SS and RFLAGS, sets RAX and returns with SYSRETQ.
    pub(super) fn syscall_entry() -> Result<(u64, Vec<u8>), IcedError> {
        asm(64, SYSCALL_ENTRY, |a| {
            a.mov(qword_ptr(SYS_RCX), rcx)?;
            a.mov(qword_ptr(SYS_R11), r11)?;
            a.mov(ax, cs)?;
            a.mov(word_ptr(SYS_CS), ax)?;
            a.mov(ax, ss)?;
            a.mov(word_ptr(SYS_SS), ax)?;
            a.pushfq()?;
            a.pop(rax)?;
            a.mov(qword_ptr(SYS_FLAGS), rax)?;
            a.mov(eax, 0x5CA11u32)?;
            a.db(&[0x48, 0x0F, 0x07]) // sysretq
        })
    }

    /// [`super::in_ring3`] for long mode: IRETQ to CPL 3, back through INT 0x81.
    pub(super) fn in_ring3_64(
        a: &mut CodeAssembler,
        body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
    ) -> Result<(), IcedError> {
        let mut setup = a.create_label();
        let mut go3 = a.create_label();
        let mut done = a.create_label();
        a.call(setup)?;
        a.jmp(done)?;
        a.set_label(&mut setup)?;
        a.pop(qword_ptr(CONT))?;
        a.mov(qword_ptr(SAVED_SP), rsp)?;
        a.call(go3)?;
        body(a)?;
        a.int(0x81)?;
        a.set_label(&mut go3)?;
        a.pop(rax)?;
        a.push(i32::from(DATA_R3 | 3))?;
        a.push(RSP3 as i32)?;
        a.push(0x202i32)?;
        a.push(i32::from(CODE64_R3 | 3))?;
        a.push(rax)?;
        a.iretq()?;
        a.set_label(&mut done)?;
        report_ring3_failure(a)
    }
}

/// The long-mode system checks: the 64-bit TSS stack switch, SYSCALL/SYSRET, and 4-level
/// paging with 4 KiB pages (#PF codes and CR2, U/S, execute-disable).
pub fn system_long() -> Rom {
    use long::*;
    let pieces = || -> Result<Vec<(u64, Vec<u8>)>, IcedError> {
        let mut v = vec![(GDT, gdt()), (TSS64, tss64()), (IDT64, idt64()), (PML4, tables())];
        v.push((u64::from(PAGE_NX), vec![0xC3]));
        for vec in 0..32 {
            v.push(stub64(vec)?);
        }
        v.extend([common64()?, ret81_64()?, syscall_entry()?]);
        Ok(v)
    };
    let extras = pieces().expect("long-mode pieces assemble");
    build_with(
        Mode::Long64,
        |a| {
            a.mov(word_ptr(GDTR), (gdt().len() - 1) as u32)?;
            a.mov(qword_ptr(GDTR + 2), GDT as i32)?;
            a.lgdt(ptr(GDTR))?;
            a.mov(word_ptr(IDTR), (256 * 16 - 1) as u32)?;
            a.mov(qword_ptr(IDTR + 2), IDT64 as i32)?;
            a.lidt(ptr(IDTR))?;
            a.mov(eax, u32::from(TSS1_SEL))?;
            a.ltr(ax)?;
            a.mov(eax, u32::from(DATA))?;
            a.mov(ds, eax)?;
            a.mov(ss, eax)?;
            a.mov(dword_ptr(COUNT), 0u32)?;
            a.mov(dword_ptr(R3_FAIL), 0u32)?;
            a.mov(rax, PML4)?;
            a.mov(cr3, rax)?;
            a.mov(ecx, 0xC000_0080u32)?;
            a.rdmsr()?;
            a.or(eax, 0x801)?; // EFER.NXE, EFER.SCE
            a.wrmsr()?;

            // 1. 4-level paging: a read of a not-present page is #PF 0 with CR2.
            a.mov(ebx, PAGE_NP + 0x30)?;
            expect_fault(a, Ring::Zero, 1, 14, 0, Some(u64::from(PAGE_NP + 0x30)), |a| a.mov(eax, dword_ptr(rbx)))?;
            // 2. A write to it is #PF 2.
            expect_fault(a, Ring::Zero, 2, 14, 2, Some(u64::from(PAGE_NP + 0x30)), |a| a.mov(dword_ptr(rbx), eax))?;
            // 3. A fetch from an execute-disable page is #PF 0x11.
            a.mov(ebx, PAGE_NX)?;
            expect_fault(a, Ring::Zero, 3, 14, 0x11, Some(u64::from(PAGE_NX)), |a| a.call(rbx))?;
            // 4. A non-canonical address is #GP(0).
            a.mov(rbx, 0x8000_0000_0000_0000u64)?;
            expect_fault(a, Ring::Zero, 4, 13, 0, None, |a| a.mov(eax, dword_ptr(rbx)))?;

            // 5. Ring 3 and back: INT 0x81 switches to RSP0 from the 64-bit TSS and pushes
            //    SS:RSP, RFLAGS, CS:RIP (40 bytes).
            in_ring3_64(a, |_| Ok(()))?;
            a.cmp(dword_ptr(R3_CS), i32::from(CODE64_R3 | 3))?;
            fail_unless_zf(a, 5)?;
            a.cmp(dword_ptr(R3_SS), i32::from(DATA_R3 | 3))?;
            fail_unless_zf(a, 5)?;
            a.mov(rax, RSP0 - 40)?;
            a.cmp(qword_ptr(R3_SP), rax)?;
            fail_unless_zf(a, 5)?;

            // 6. SYSCALL from ring 3 and SYSRETQ back. STAR: SYSCALL CS = 0x18 (SS 0x20);
            //    SYSRET base 0x28 (SS 0x30|3, CS 0x38|3). LSTAR the entry; SFMASK clears IF and DF.
            a.mov(ecx, 0xC000_0081u32)?;
            a.xor(eax, eax)?;
            a.mov(edx, (u32::from(SYSRET_BASE) << 16) | u32::from(CODE64))?;
            a.wrmsr()?;
            a.mov(ecx, 0xC000_0082u32)?;
            a.mov(eax, SYSCALL_ENTRY as u32)?;
            a.xor(edx, edx)?;
            a.wrmsr()?;
            a.mov(ecx, 0xC000_0084u32)?;
            a.mov(eax, 0x600u32)?;
            a.wrmsr()?;
            in_ring3_64(a, |a| {
                let mut back = a.create_label();
                a.std()?;
                a.pushfq()?;
                a.pop(r13)?;
                a.lea(r14, ptr(back))?;
                a.xor(eax, eax)?;
                a.pushfq()?;
                a.pop(r13)?;
                a.syscall()?;
                a.set_label(&mut back)?;
                a.cld()?;
                // RAX from the kernel; RCX = the return RIP, R11 = the RFLAGS before SYSCALL.
                a.cmp(eax, 0x5CA11)?;
                fail_unless_zf_in(a, Ring::Three, 6)?;
                a.cmp(rcx, r14)?;
                fail_unless_zf_in(a, Ring::Three, 6)?;
                a.cmp(r11, r13)?;
                fail_unless_zf_in(a, Ring::Three, 6)?;
                a.mov(ax, cs)?;
                a.cmp(ax, i32::from(CODE64_R3 | 3))?;
                fail_unless_zf_in(a, Ring::Three, 6)?;
                a.mov(ax, ss)?;
                a.cmp(ax, i32::from(DATA_R3 | 3))?;
                fail_unless_zf_in(a, Ring::Three, 6)?;
                // 7. From ring 3: a supervisor page is #PF 5; a privileged instruction #GP(0).
                a.mov(ebx, PAGE_SUPER)?;
                expect_fault(a, Ring::Three, 7, 14, 5, Some(u64::from(PAGE_SUPER)), |a| a.mov(eax, dword_ptr(rbx)))?;
                expect_fault(a, Ring::Three, 7, 13, 0, None, |a| a.hlt())
            })?;
            // What the SYSCALL entry saw: CS 0x18, SS 0x20, IF and DF masked.
            a.cmp(word_ptr(SYS_CS), i32::from(CODE64))?;
            fail_unless_zf(a, 6)?;
            a.cmp(word_ptr(SYS_SS), i32::from(SYSCALL_SS))?;
            fail_unless_zf(a, 6)?;
            a.mov(rax, qword_ptr(SYS_FLAGS))?;
            a.and(eax, 0x600)?;
            fail_unless_eq(a, 6, eax, 0)?;
            a.mov(rax, qword_ptr(SYS_R11))?;
            a.and(eax, 0x600)?;
            fail_unless_eq(a, 6, eax, 0x600)?;
            report(a, PASS)
        },
        extras,
    )
    .expect("long-mode system ROM assembles")
}
