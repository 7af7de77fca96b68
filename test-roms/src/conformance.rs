//! Issue 11 conformance ROMs: virtual-8086 mode under a CPL 0 monitor, and an NMI sent through
//! the local APIC's ICR. Expected values come from the Intel SDM (vol. 3B chapter 20 for
//! virtual-8086 mode, 6.7.1 and 10.6.1 for NMIs and the ICR).

use crate::layout::{asm, build_with, fail_unless_eq, report, Mode, SEL_CODE32, SEL_DATA, STACK32};
use crate::{Rom, PASS};
use iced_x86::code_asm::*;
use iced_x86::IcedError;

const IDT: u64 = 0x1000;
const IDTR: u64 = 0x0680;
/// A GDT with the layout's code/data selectors plus a 32-bit TSS, and its pseudo-descriptor.
const GDT2: u64 = 0x2000;
const GDTR2: u64 = 0x2100;
const TSS: u64 = 0x2800;
const SEL_TSS: u16 = 0x20;
/// Variables.
const CLI_COUNT: u64 = 0x600;
const SAVED_ESP: u64 = 0x604;
const ENTRY_DS: u64 = 0x608;
const FRAME: u64 = 0x610; // nine dwords: EIP CS EFLAGS ESP SS ES DS FS GS
const NMI_COUNT: u64 = 0x640;
const NMI_LOG: u64 = 0x644;
/// Handlers.
const H_GP: u64 = 0xE000;
const H_NMI: u64 = 0xE400;
/// The virtual-8086 program: CS = 0x3000 (linear 0x30000), data at 0x3100:0x0010.
const V86_CS: u64 = 0x3000;
const V86_DS: u32 = 0x3100;
const V86_SS: u32 = 0x3800;

fn assembled(r: Result<Rom, IcedError>) -> Rom {
    r.expect("test ROM assembles")
}

/// Interrupt gates (32-bit, DPL 0, present) for `gates`, the rest of the 256 entries zero.
fn install_idt(a: &mut CodeAssembler, gates: &[(u64, u64)]) -> Result<(), IcedError> {
    a.mov(edi, IDT as u32)?;
    a.xor(eax, eax)?;
    a.mov(ecx, 512u32)?;
    a.rep().stosd()?;
    for &(vec, h) in gates {
        a.mov(word_ptr(IDT + vec * 8), (h & 0xFFFF) as u32)?;
        a.mov(word_ptr(IDT + vec * 8 + 2), u32::from(SEL_CODE32))?;
        a.mov(word_ptr(IDT + vec * 8 + 4), 0x8E00u32)?;
        a.mov(word_ptr(IDT + vec * 8 + 6), (h >> 16) as u32)?;
    }
    a.mov(word_ptr(IDTR), (256 * 8 - 1) as u32)?;
    a.mov(dword_ptr(IDTR + 2), IDT as u32)?;
    a.lidt(ptr(IDTR))
}

/// The GDT with a TSS descriptor, and the TSS (SS0:ESP0 = data:0x70000, no I/O bitmap).
fn gdt_and_tss() -> Vec<(u64, Vec<u8>)> {
    let flat = |access: u8, flags: u8| [0xFF, 0xFF, 0, 0, 0, access, (flags << 4) | 0x0F, 0];
    let mut gdt = Vec::new();
    gdt.extend_from_slice(&[0; 8]);
    gdt.extend_from_slice(&flat(0x9A, 0xC));
    gdt.extend_from_slice(&flat(0x92, 0xC));
    gdt.extend_from_slice(&flat(0x9A, 0xA));
    // TSS: base TSS, limit 0x67, type 9 (available 32-bit TSS), present.
    gdt.extend_from_slice(&[0x67, 0, (TSS & 0xFF) as u8, (TSS >> 8) as u8, (TSS >> 16) as u8, 0x89, 0, 0]);
    let mut gdtr = ((gdt.len() - 1) as u16).to_le_bytes().to_vec();
    gdtr.extend_from_slice(&(GDT2 as u32).to_le_bytes());
    let mut tss = vec![0u8; 0x68];
    tss[4..8].copy_from_slice(&0x7_0000u32.to_le_bytes());
    tss[8..10].copy_from_slice(&SEL_DATA.to_le_bytes());
    tss[0x66..0x68].copy_from_slice(&0x68u16.to_le_bytes()); // I/O map base at the limit: none
    vec![(GDT2, gdt), (GDTR2, gdtr), (TSS, tss)]
}

/// Virtual-8086 mode under a monitor. A CPL 0 program enters virtual-8086 mode with IRETD
/// (EFLAGS.VM = 1, IOPL = 0) and runs real-mode-style code there: segment loads give base =
/// selector × 16, so a store to 0x3100:0x0010 lands at linear 0x31010. CLI is IOPL-sensitive:
/// it raises #GP(0), which reaches the #GP handler (the monitor) at CPL 0 on the TSS's ring-0
/// stack with GS, FS, DS, ES of the virtual-8086 task pushed above SS:ESP and those four
/// registers null (SDM 20.3.1.1). The monitor emulates CLI by stepping over it and returns
/// with IRETD; the program goes on. HLT (also #GP at CPL 3) makes the monitor leave
/// virtual-8086 mode. Checks:
///
/// 1. the monitor saw CLI once;
/// 2. the store went to linear 0x31010;
/// 3. the value computed after the return (0x55AB) survived in BX;
/// 4. the #GP frame has VM = 1, CS = 0x3000 and the virtual-8086 DS = 0x3100;
/// 5. DS was null on entry to the monitor;
/// 7. (in the monitor) the error code was 0 and the faulting instruction CLI or HLT.
pub fn v86_monitor() -> Rom {
    let mut extras = gdt_and_tss();
    let v86 = asm(16, V86_CS << 4, |a| {
        a.mov(ax, V86_DS)?;
        a.mov(ds, ax)?;
        a.mov(ax, V86_SS)?;
        a.mov(ss, ax)?;
        a.mov(sp, 0x100u32)?;
        a.mov(word_ptr(0x10), 0x55AAu32)?;
        a.push(word_ptr(0x10))?;
        a.pop(dx)?;
        a.cli()?; // #GP(0) to the monitor, which skips it (it uses EAX and ECX only)
        a.add(dx, 1)?;
        a.mov(bx, dx)?;
        a.hlt() // #GP(0): the monitor ends the virtual-8086 task
    })
    .expect("v86 code assembles");
    extras.push(v86);
    // The monitor: #GP handler. Stack: error code, EIP, CS, EFLAGS, ESP, SS, ES, DS, FS, GS.
    let monitor = asm(32, H_GP, |a| {
        let mut not_cli = a.create_label();
        let mut bad = a.create_label();
        a.mov(ecx, ds)?;
        a.mov(ax, u32::from(SEL_DATA))?;
        a.mov(ds, ax)?;
        a.mov(es, ax)?;
        a.mov(dword_ptr(ENTRY_DS), ecx)?;
        a.cmp(dword_ptr(esp), 0)?;
        a.jne(bad)?;
        // The faulting instruction's first byte, at CS * 16 + IP.
        a.movzx(eax, word_ptr(esp + 8))?;
        a.shl(eax, 4)?;
        a.add(eax, dword_ptr(esp + 4))?;
        a.mov(al, byte_ptr(eax))?;
        a.cmp(al, 0xFA)?;
        a.jne(not_cli)?;
        a.inc(dword_ptr(CLI_COUNT))?;
        a.inc(dword_ptr(esp + 4))?;
        a.add(esp, 4)?;
        a.iretd()?;
        a.set_label(&mut not_cli)?;
        a.cmp(al, 0xF4)?;
        a.jne(bad)?;
        // HLT: copy the frame, drop back to the protected-mode program.
        for k in 0..9u64 {
            a.mov(eax, dword_ptr(esp + 4 + 4 * k as i32))?;
            a.mov(dword_ptr(FRAME + 4 * k), eax)?;
        }
        a.mov(esp, dword_ptr(SAVED_ESP))?;
        a.ret()?;
        a.set_label(&mut bad)?;
        report(a, crate::FAIL | 7)
    })
    .expect("monitor assembles");
    extras.push(monitor);
    assembled(build_with(
        Mode::Protected32,
        |a| {
            install_idt(a, &[(13, H_GP)])?;
            a.lgdt(ptr(GDTR2))?;
            a.mov(ax, u32::from(SEL_TSS))?;
            a.ltr(ax)?;
            a.mov(dword_ptr(CLI_COUNT), 0u32)?;
            a.mov(dword_ptr(ENTRY_DS), 0xFFFFu32)?;
            a.xor(ebx, ebx)?;
            // CALL a stub that enters virtual-8086 mode; the monitor RETs here with ESP as it
            // was inside the stub.
            let mut enter = a.create_label();
            let mut back = a.create_label();
            a.call(enter)?;
            a.jmp(back)?;
            a.set_label(&mut enter)?;
            a.mov(dword_ptr(SAVED_ESP), esp)?;
            for v in [0u32, 0, 0x1111, 0x2222, V86_SS, 0xFFFE] {
                a.push(v)?; // GS FS DS ES SS ESP
            }
            a.push(0x2_0002u32)?; // EFLAGS: VM, IOPL 0, IF 0
            a.push(V86_CS as u32)?;
            a.push(0u32)?;
            a.iretd()?;
            a.set_label(&mut back)?;
            a.mov(ax, u32::from(SEL_DATA))?;
            a.mov(ds, ax)?;
            fail_unless_eq(a, 1, dword_ptr(CLI_COUNT), 1)?;
            fail_unless_eq(a, 2, word_ptr(0x31010), 0x55AA)?;
            fail_unless_eq(a, 3, bx, 0x55AB)?;
            a.mov(eax, dword_ptr(FRAME + 8))?;
            a.and(eax, 0x2_0000)?;
            fail_unless_eq(a, 4, eax, 0x2_0000)?;
            fail_unless_eq(a, 4, dword_ptr(FRAME + 4), V86_CS as i32)?;
            fail_unless_eq(a, 4, dword_ptr(FRAME + 24), V86_DS as i32)?;
            fail_unless_eq(a, 5, dword_ptr(ENTRY_DS), 0)?;
            report(a, PASS)
        },
        extras,
    ))
}

/// An NMI sent to itself through the local APIC's ICR (delivery mode NMI = 100b, shorthand
/// self: ICR low = 0x4_0400) arrives as vector 2 even with EFLAGS.IF = 0 (SDM 6.7.1, 10.6.1).
/// The NMI handler sends a second NMI IPI and only then logs its entry: NMIs are blocked until
/// the handler's IRET, so the second NMI comes after the first handler finished (the log reads
/// 1 then 2: LOG = LOG * 16 + count = 0x12), not nested inside it (0x22... would show 2 first).
///
/// Checks: 1. two NMIs arrived; 2. they did not nest.
pub fn nmi_ipi() -> Rom {
    const LAPIC: u64 = 0xFEE0_0000;
    let handler = asm(32, H_NMI, |a| {
        let mut second = a.create_label();
        a.inc(dword_ptr(NMI_COUNT))?;
        a.mov(ecx, dword_ptr(NMI_COUNT))?;
        a.cmp(ecx, 1)?;
        a.jne(second)?;
        a.mov(dword_ptr(LAPIC + 0x300), 0x4_0400u32)?; // NMI to self: blocked for now
        a.nop()?;
        a.nop()?;
        a.set_label(&mut second)?;
        a.mov(eax, dword_ptr(NMI_LOG))?;
        a.shl(eax, 4)?;
        a.or(eax, ecx)?;
        a.mov(dword_ptr(NMI_LOG), eax)?;
        a.iretd()
    })
    .expect("NMI handler assembles");
    assembled(build_with(
        Mode::Protected32,
        |a| {
            install_idt(a, &[(2, H_NMI)])?;
            a.mov(dword_ptr(NMI_COUNT), 0u32)?;
            a.mov(dword_ptr(NMI_LOG), 0u32)?;
            a.mov(esp, STACK32 as u32)?;
            a.cli()?;
            // Software-enable the local APIC (SVR bit 8, spurious vector 0xFF).
            a.mov(dword_ptr(LAPIC + 0xF0), 0x1FFu32)?;
            a.mov(dword_ptr(LAPIC + 0x300), 0x4_0400u32)?;
            a.nop()?;
            a.nop()?;
            a.nop()?;
            fail_unless_eq(a, 1, dword_ptr(NMI_COUNT), 2)?;
            fail_unless_eq(a, 2, dword_ptr(NMI_LOG), 0x12)?;
            report(a, PASS)
        },
        vec![handler],
    ))
}
