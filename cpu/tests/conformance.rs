//! Issue 11 (items 7 and 10): CPU conformance gaps found by outside tests. Each test states the
//! behaviour the Intel SDM specifies (vol. 2 instruction pages, vol. 3 chapters named in the
//! comments) and checks the interpreter against those values.

use base::GuestPhysAddr;
use cpu::{CpuBus, CpuState, Exception, ExecutionEngine, Interpreter, RamBus, RunExit, SegReg, Segment};
use iced_x86::code_asm::*;
use mmu::PhysMemory;

const GDT: u64 = 0x800;
const IDT: u64 = 0x1000;
const TSS: u64 = 0x2000;
/// Exception/interrupt stubs: vector v at `STUBS + 16 * v` is a single HLT.
const STUBS: u64 = 0x4000;
const CODE: u64 = 0x1_0000;
const STACK0: u64 = 0x9000;

/// GDT selectors.
const CODE32: u16 = 0x08;
const DATA32: u16 = 0x10;
const DATA16: u16 = 0x20;
const RO_DATA: u16 = 0x28;
const CODE64: u16 = 0x30;
const TSS_SEL: u16 = 0x38;
const CODE32_R3: u16 = 0x40;
const DATA32_R3: u16 = 0x48;
const LDT_SEL: u16 = 0x50;
const CALL_GATE: u16 = 0x58;
const CONFORMING: u16 = 0x60;
const EXEC_ONLY: u16 = 0x68;
const DATA_DPL1: u16 = 0x70;
const TASK_GATE: u16 = 0x78;
const TSS16_SEL: u16 = 0x80;
/// 16 bytes: a 64-bit TSS descriptor (two slots).
const TSS64_SEL: u16 = 0x88;
const GDT_ENTRIES: u64 = 20;

/// An 8-byte segment descriptor.
fn desc(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    let (b, l) = (u64::from(base), u64::from(limit));
    (l & 0xFFFF)
        | ((b & 0xFF_FFFF) << 16)
        | (u64::from(access) << 40)
        | (((l >> 16) & 0xF) << 48)
        | (u64::from(flags & 0xF) << 52)
        | ((b >> 24) << 56)
}

/// A 32-bit interrupt gate to `CODE32:off` with DPL `dpl`.
fn gate32(off: u32, dpl: u8) -> u64 {
    let o = u64::from(off);
    (o & 0xFFFF) | (u64::from(CODE32) << 16) | ((0x8E | u64::from(dpl) << 5) << 40) | ((o >> 16) << 48)
}

struct Env {
    bus: RamBus,
    cpu: CpuState,
    it: Interpreter,
}

impl Env {
    /// 32-bit flat protected mode at CPL 0 with the GDT above, an IDT whose every vector is a
    /// HLT stub, and a 32-bit TSS (ESP0 = STACK0, SS0 = DATA32).
    fn pm32() -> Env {
        let mut bus = RamBus::new({
            let mut m = PhysMemory::new(4 << 20).unwrap();
            m.map_ram(0, 4 << 20).unwrap();
            m
        });
        let gdt = [
            0,
            desc(0, 0xF_FFFF, 0x9B, 0xC),
            desc(0, 0xF_FFFF, 0x93, 0xC),
            desc(0, 0xFFFF, 0x9B, 0x0),
            desc(0, 0xFFFF, 0x93, 0x0),
            desc(0, 0xF_FFFF, 0x91, 0xC),
            desc(0, 0xF_FFFF, 0x9B, 0xA),
            desc(TSS as u32, 0x2067, 0x89, 0x0),
            desc(0, 0xF_FFFF, 0xFB, 0xC),
            desc(0, 0xF_FFFF, 0xF3, 0xC),
            desc(0x3000, 0x7, 0x82, 0x0),
            // A 32-bit call gate, DPL 3, to CODE32:0x1234.
            0x1234 | (u64::from(CODE32) << 16) | (0xEC << 40),
            desc(0, 0xF_FFFF, 0x9F, 0xC),
            desc(0, 0xF_FFFF, 0x99, 0xC),
            desc(0, 0xF_FFFF, 0xB3, 0xC),
            // A task gate, DPL 0.
            (u64::from(TSS_SEL) << 16) | (0x85 << 40),
            desc(0x2800, 0x2B, 0x81, 0x0),
            desc(0x5000, 0x67, 0x89, 0x0),
            0,
            0,
        ];
        for (k, d) in gdt.iter().enumerate() {
            bus.mem.load(GuestPhysAddr(GDT + 8 * k as u64), &d.to_le_bytes()).unwrap();
        }
        for v in 0..256u64 {
            bus.mem.load(GuestPhysAddr(IDT + 8 * v), &gate32((STUBS + 16 * v) as u32, 0).to_le_bytes()).unwrap();
            bus.mem.load(GuestPhysAddr(STUBS + 16 * v), &[0xF4]).unwrap();
        }
        // TSS: ESP0, SS0, I/O map base beyond the limit (no bitmap).
        bus.mem.load(GuestPhysAddr(TSS + 4), &(STACK0 as u32).to_le_bytes()).unwrap();
        bus.mem.load(GuestPhysAddr(TSS + 8), &u32::from(DATA32).to_le_bytes()).unwrap();
        bus.mem.load(GuestPhysAddr(TSS + 0x66), &0x2068u16.to_le_bytes()).unwrap();
        let mut cpu = CpuState::new_flat32();
        cpu.gdtr = cpu::DescriptorTable { base: GDT, limit: (GDT_ENTRIES * 8 - 1) as u16 };
        cpu.idtr = cpu::DescriptorTable { base: IDT, limit: 0x7FF };
        cpu.tr = Segment::from_descriptor(TSS_SEL, desc(TSS as u32, 0x2067, 0x8B, 0));
        cpu.gpr[4] = STACK0;
        cpu.rip = CODE;
        Env { bus, cpu, it: Interpreter::new() }
    }

    fn load(&mut self, at: u64, bytes: &[u8]) {
        self.bus.mem.load(GuestPhysAddr(at), bytes).unwrap();
    }

    fn code(&mut self, bitness: u32, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) {
        let mut a = CodeAssembler::new(bitness).unwrap();
        f(&mut a).unwrap();
        let bytes = a.assemble(CODE).unwrap();
        self.load(CODE, &bytes);
        // Written behind the interpreter's back: drop decoded instructions.
        self.it.invalidate_phys(CODE, bytes.len() as u64);
        self.cpu.rip = CODE;
    }

    fn read(&self, at: u64, n: usize) -> u64 {
        let mut b = [0u8; 8];
        self.bus.mem.read(GuestPhysAddr(at), &mut b[..n]).unwrap();
        u64::from_le_bytes(b)
    }

    fn step(&mut self) -> Result<(), Exception> {
        self.it.step(&mut self.cpu, &mut self.bus)
    }

    fn run(&mut self, n: u64) -> RunExit {
        self.it.run(&mut self.cpu, &mut self.bus, n)
    }

    /// The vector whose HLT stub stopped the run.
    fn stub_vector(&self) -> u64 {
        assert!(self.cpu.rip > STUBS && self.cpu.rip <= STUBS + 16 * 256, "not in a stub: {:#x}", self.cpu.rip);
        (self.cpu.rip - 1 - STUBS) / 16
    }

    /// Switches to 64-bit mode (CS = CODE64, paging is not needed by the interpreter's tests).
    fn enter_long_mode(&mut self) {
        self.cpu.efer |= 0x500;
        self.cpu.cr4 |= 0x20;
        let raw = desc(0, 0xF_FFFF, 0x9B, 0xA);
        self.cpu.seg[SegReg::Cs as usize] = Segment::from_descriptor(CODE64, raw);
    }
}

/// A piece of code to assemble.
type AsmFn = dyn Fn(&mut CodeAssembler) -> Result<(), IcedError>;

fn seg(sel: u16, raw: u64) -> Segment {
    Segment::from_descriptor(sel, raw)
}

// ---------------------------------------------------------------------------------------------
// POP SS and PUSHA stack-pointer arithmetic.

/// SDM POP: the stack pointer is incremented by the operand size using the stack-address size
/// of the stack the value is popped from (SS.B of the old SS). `o32 pop ss` on a 16-bit stack
/// with ESP = 0x2FFFC pops the dword at SP = 0xFFFC and wraps SP to 0: ESP = 0x20000 (the upper
/// half of ESP is untouched by 16-bit stack arithmetic), even though the new SS is a 32-bit stack.
#[test]
fn test_issue_11_o32_pop_ss_follows_old_stack_size() {
    let mut e = Env::pm32();
    e.cpu.seg[SegReg::Ss as usize] = seg(DATA16, desc(0, 0xFFFF, 0x93, 0));
    e.cpu.gpr[4] = 0x2_FFFC;
    e.load(0xFFFC, &u32::from(DATA32).to_le_bytes());
    e.code(32, |a| a.pop(ss));
    e.step().unwrap();
    assert_eq!(e.cpu.seg[SegReg::Ss as usize].selector, DATA32);
    assert_eq!(e.cpu.gpr[4], 0x2_0000);
}

/// SDM PUSHA (real-address mode): each of the eight pushes decrements SP by 2 and wraps within
/// the 64 KiB segment; only SP = 7, 9, 11, 13, 15 (a word straddling offset 0xFFFF) is #GP(0).
/// With SP = 8: AX at 6, CX at 4, DX at 2, BX at 0, the original SP at 0xFFFE, BP at 0xFFFC,
/// SI at 0xFFFA, DI at 0xFFF8; SP ends at 0xFFF8.
#[test]
fn test_issue_11_pusha_real_mode_wraps_sp() {
    let mut bus = RamBus::with_code(1 << 20, &[0x60], 0x1000).unwrap(); // pusha
    let mut cpu = CpuState::new();
    cpu.seg[SegReg::Cs as usize] = Segment::real(0);
    cpu.seg[SegReg::Ss as usize] = Segment::real(0x2000);
    cpu.rip = 0x1000;
    for (r, v) in [(0usize, 0xA0A0u64), (1, 0xC1C1), (2, 0xD2D2), (3, 0xB3B3), (5, 0xB5B5), (6, 0x5656), (7, 0xD7D7)] {
        cpu.gpr[r] = v;
    }
    cpu.gpr[4] = 8;
    let mut it = Interpreter::new();
    it.step(&mut cpu, &mut bus).unwrap();
    assert_eq!(cpu.gpr[4], 0xFFF8);
    let rd = |bus: &RamBus, off: u64| {
        let mut b = [0u8; 2];
        bus.mem.read(GuestPhysAddr(0x2_0000 + off), &mut b).unwrap();
        u16::from_le_bytes(b)
    };
    let want = [(6, 0xA0A0), (4, 0xC1C1), (2, 0xD2D2), (0, 0xB3B3), (0xFFFE, 8), (0xFFFC, 0xB5B5), (0xFFFA, 0x5656)];
    for (off, v) in want {
        assert_eq!(rd(&bus, off), v, "word at SS:{off:#x}");
    }
    assert_eq!(rd(&bus, 0xFFF8), 0xD7D7);
    for start in [7u64, 9, 11, 13, 15, 1] {
        cpu.rip = 0x1000;
        cpu.gpr[4] = start;
        assert_eq!(it.step(&mut cpu, &mut bus), Err(Exception::GeneralProtection(0)), "SP = {start}");
        assert_eq!(cpu.gpr[4], start, "a faulting PUSHA leaves SP alone");
    }
    // SP = 16 and SP = 0 need no straddling word: fine.
    for start in [16u64, 0] {
        cpu.rip = 0x1000;
        cpu.gpr[4] = start;
        it.step(&mut cpu, &mut bus).unwrap();
        assert_eq!(cpu.gpr[4], start.wrapping_sub(16) & 0xFFFF);
    }
}

// ---------------------------------------------------------------------------------------------
// IRET in IA-32e mode.

/// SDM IRET: in IA-32e mode the VM bit of the popped EFLAGS is ignored (the "RETURN-TO-VIRTUAL-
/// 8086-MODE" path exists only outside IA-32e mode). A 32-bit IRETD at CPL 0 in 64-bit mode with
/// VM = 1 in the image returns normally, to 64-bit code, with VM clear.
#[test]
fn test_issue_11_iretd_in_64bit_mode_ignores_vm() {
    let mut e = Env::pm32();
    e.enter_long_mode();
    let top = 0x8000u64;
    e.cpu.gpr[4] = top;
    let target = 0x1_2000u32;
    let frame = [target, u32::from(CODE64), (1 << 17) | 0x2 | 0x1, 0x7000, u32::from(DATA32)];
    for (k, v) in frame.iter().enumerate() {
        e.load(top + 4 * k as u64, &v.to_le_bytes());
    }
    e.code(64, |a| a.iretd());
    e.step().unwrap();
    assert_eq!(e.cpu.rip, u64::from(target));
    assert_eq!(e.cpu.rflags() & (1 << 17), 0, "VM is not set in IA-32e mode");
    assert_eq!(e.cpu.rflags() & 1, 1, "CF came from the image");
    assert_eq!(e.cpu.gpr[4], 0x7000);
    assert_eq!(e.cpu.mode(), cpu::CpuMode::Long64);
}

// ---------------------------------------------------------------------------------------------
// MSRs.

/// IA32_BIOS_SIGN_ID (0x8B): WRMSR is accepted (software writes 0 before CPUID), RDMSR returns
/// the microcode signature in EDX (0: none loaded) (SDM vol. 3A 9.11.7.1). IA32_MCG_CAP (0x179)
/// and IA32_MCG_STATUS (0x17A) read 0: no banks, no machine check in progress (SDM 16.3.1).
/// MCG_CAP is read-only: WRMSR is #GP(0).
#[test]
fn test_issue_11_msr_bios_sign_id_and_mcg() {
    let mut e = Env::pm32();
    e.code(32, |a| {
        a.mov(ecx, 0x8B)?;
        a.xor(eax, eax)?;
        a.xor(edx, edx)?;
        a.wrmsr()?;
        a.mov(eax, 0xFFFF_FFFFu32)?;
        a.mov(edx, 0xFFFF_FFFFu32)?;
        a.rdmsr()?;
        a.mov(ebx, eax)?;
        a.mov(esi, edx)?;
        a.mov(ecx, 0x179)?;
        a.rdmsr()?;
        a.or(ebx, eax)?;
        a.or(esi, edx)?;
        a.mov(ecx, 0x17A)?;
        a.rdmsr()?;
        a.or(ebx, eax)?;
        a.or(esi, edx)?;
        a.mov(ecx, 0x179)?;
        a.wrmsr()
    });
    for _ in 0..18 {
        e.step().unwrap();
    }
    assert_eq!((e.cpu.gpr[3], e.cpu.gpr[6]), (0, 0));
    assert_eq!(e.step(), Err(Exception::GeneralProtection(0)), "MCG_CAP is read-only");
}

// ---------------------------------------------------------------------------------------------
// Segment checks.

/// SDM 3.4.5.1 / 5.4: a write through a read-only data segment or a code segment is #GP(0) in
/// protected mode; reads are fine. Real mode does not check (CS-relative writes work there).
#[test]
fn test_issue_11_write_through_read_only_segment_faults() {
    let mut e = Env::pm32();
    e.cpu.seg[SegReg::Ds as usize] = seg(RO_DATA, desc(0, 0xF_FFFF, 0x91, 0xC));
    e.cpu.seg[SegReg::Es as usize] = seg(RO_DATA, desc(0, 0xF_FFFF, 0x91, 0xC));
    e.load(0x5000, &0x1234_5678u32.to_le_bytes());
    let cases: Vec<Box<AsmFn>> = vec![
        Box::new(|a| a.mov(dword_ptr(0x5000), eax)),
        Box::new(|a| a.add(dword_ptr(0x5000), 1)),
        Box::new(|a| a.stosb()),
        Box::new(|a| a.mov(dword_ptr(0x5000).cs(), eax)),
        Box::new(|a| a.inc(dword_ptr(0x5000))),
    ];
    for (k, c) in cases.iter().enumerate() {
        e.code(32, c);
        e.cpu.gpr[7] = 0x5000;
        assert_eq!(e.step(), Err(Exception::GeneralProtection(0)), "case {k}");
        assert_eq!(e.read(0x5000, 4), 0x1234_5678, "case {k}: memory unchanged");
    }
    e.code(32, |a| a.mov(eax, dword_ptr(0x5000)));
    e.step().unwrap();
    assert_eq!(e.cpu.gpr[0], 0x1234_5678);
    // Real mode: a CS-override write goes through.
    let mut bus = RamBus::with_code(1 << 20, &[0x2E, 0xA3, 0x00, 0x50], 0x1000).unwrap(); // mov cs:[0x5000], ax
    let mut cpu = CpuState::new();
    cpu.seg[SegReg::Cs as usize] = Segment::real(0);
    cpu.rip = 0x1000;
    cpu.gpr[0] = 0xBEEF;
    Interpreter::new().step(&mut cpu, &mut bus).unwrap();
    let mut b = [0u8; 2];
    bus.mem.read(GuestPhysAddr(0x5000), &mut b).unwrap();
    assert_eq!(u16::from_le_bytes(b), 0xBEEF);
}

/// SDM LGDT/LIDT (64-bit mode exceptions): a non-canonical base is #GP(0). LLDT/LTR: a
/// descriptor whose 64-bit base is non-canonical is #GP(selector).
#[test]
fn test_issue_11_64bit_descriptor_table_bases_must_be_canonical() {
    let mut e = Env::pm32();
    e.enter_long_mode();
    let gdtr_before = e.cpu.gdtr;
    // Pseudo-descriptor at 0x6000: limit 0xFFF, base 0x0000_8000_0000_0000.
    e.load(0x6000, &0xFFFu16.to_le_bytes());
    e.load(0x6002, &0x0000_8000_0000_0000u64.to_le_bytes());
    e.code(64, |a| a.lgdt(ptr(0x6000u64)));
    assert_eq!(e.step(), Err(Exception::GeneralProtection(0)));
    assert_eq!(e.cpu.gdtr, gdtr_before);
    e.code(64, |a| a.lidt(ptr(0x6000u64)));
    assert_eq!(e.step(), Err(Exception::GeneralProtection(0)));
    // Canonical: 0xFFFF_8000_0000_0000 loads.
    e.load(0x6002, &0xFFFF_8000_0000_0000u64.to_le_bytes());
    e.code(64, |a| a.lidt(ptr(0x6000u64)));
    e.step().unwrap();
    assert_eq!(e.cpu.idtr.base, 0xFFFF_8000_0000_0000);
    // A 64-bit TSS descriptor with base[63:32] = 0x0000_8000: non-canonical.
    let lo = desc(0x5000, 0x67, 0x89, 0);
    e.load(GDT + u64::from(TSS64_SEL), &lo.to_le_bytes());
    e.load(GDT + u64::from(TSS64_SEL) + 8, &0x8000u64.to_le_bytes());
    e.code(64, |a| {
        a.mov(ax, TSS64_SEL as u32)?;
        a.ltr(ax)
    });
    e.step().unwrap();
    assert_eq!(e.step(), Err(Exception::GeneralProtection(TSS64_SEL)));
    // Canonical upper half: loads.
    e.load(GDT + u64::from(TSS64_SEL) + 8, &0u64.to_le_bytes());
    e.cpu.rip = CODE;
    e.step().unwrap();
    e.step().unwrap();
    assert_eq!(e.cpu.tr.selector, TSS64_SEL);
}

// ---------------------------------------------------------------------------------------------
// LAR, LSL, VERR, VERW.

/// Runs `op sel` (LAR/LSL: `op eax, bx` with EAX preset to 0xDEAD_BEEF) and returns
/// (ZF, EAX).
fn probe(e: &mut Env, bits: u32, which: &str, sel: u16) -> (bool, u64) {
    let w = which.to_string();
    e.code(bits, |a| match w.as_str() {
        "lar" => a.lar(eax, ebx),
        "lsl" => a.lsl(eax, ebx),
        "verr" => a.verr(bx),
        _ => a.verw(bx),
    });
    e.cpu.gpr[3] = u64::from(sel);
    e.cpu.gpr[0] = 0xDEAD_BEEF;
    e.step().unwrap();
    let zf = e.cpu.rflags() & 0x40 != 0;
    // LAR bits 19:16 (the limit nibble) are undefined ("00FxFF00H"): not compared.
    let v = if which == "lar" && zf { e.cpu.gpr[0] & !0xF_0000 } else { e.cpu.gpr[0] };
    (zf, v)
}

/// SDM LAR/LSL/VERR/VERW. LAR loads the high descriptor dword AND 0x00FxFF00; LSL the limit
/// with G applied; both set ZF only for the accepted types and when DPL >= CPL and DPL >= RPL
/// (conforming code is exempt); otherwise ZF = 0 and the destination is unchanged. VERR
/// accepts data and readable code; VERW writable data only. Null and out-of-table selectors
/// give ZF = 0 without a fault.
#[test]
fn test_issue_11_lar_lsl_verr_verw() {
    let mut e = Env::pm32();
    // CPL 0, legacy mode.
    assert_eq!(probe(&mut e, 32, "lar", CODE32), (true, 0x00C0_9B00));
    assert_eq!(probe(&mut e, 32, "lar", DATA16), (true, 0x0000_9300));
    assert_eq!(probe(&mut e, 32, "lar", CALL_GATE), (true, 0x0000_EC00), "call gates are accepted");
    assert_eq!(probe(&mut e, 32, "lar", TASK_GATE), (true, 0x0000_8500));
    assert_eq!(probe(&mut e, 32, "lar", LDT_SEL), (true, 0x0000_8200));
    assert_eq!(probe(&mut e, 32, "lar", TSS_SEL), (true, 0x0000_8900));
    assert_eq!(probe(&mut e, 32, "lar", 0), (false, 0xDEAD_BEEF), "null selector");
    assert_eq!(probe(&mut e, 32, "lar", 0x400), (false, 0xDEAD_BEEF), "beyond the GDT limit");
    assert_eq!(probe(&mut e, 32, "lar", 0x0C), (false, 0xDEAD_BEEF), "LDT selector, no LDT loaded");
    assert_eq!(probe(&mut e, 32, "lsl", CODE32), (true, 0xFFFF_FFFF), "G = 1: 4 KiB units");
    assert_eq!(probe(&mut e, 32, "lsl", DATA16), (true, 0xFFFF));
    assert_eq!(probe(&mut e, 32, "lsl", TSS_SEL), (true, 0x2067));
    assert_eq!(probe(&mut e, 32, "lsl", TSS16_SEL), (true, 0x2B));
    assert_eq!(probe(&mut e, 32, "lsl", CALL_GATE), (false, 0xDEAD_BEEF), "gates have no limit");
    assert_eq!(probe(&mut e, 32, "lsl", TASK_GATE), (false, 0xDEAD_BEEF));
    assert!(probe(&mut e, 32, "verr", DATA32).0);
    assert!(probe(&mut e, 32, "verr", CODE32).0, "readable code");
    assert!(!probe(&mut e, 32, "verr", EXEC_ONLY).0, "execute-only code");
    assert!(!probe(&mut e, 32, "verr", TSS_SEL).0, "system descriptor");
    assert!(probe(&mut e, 32, "verw", DATA32).0);
    assert!(!probe(&mut e, 32, "verw", RO_DATA).0, "read-only data");
    assert!(!probe(&mut e, 32, "verw", CODE32).0, "code is never writable");
    // RPL 3 against a DPL 1 segment: invisible; RPL 1: visible at CPL 0.
    assert!(!probe(&mut e, 32, "verr", DATA_DPL1 | 3).0);
    assert!(probe(&mut e, 32, "verr", DATA_DPL1 | 1).0);
    // 16-bit operand: LAR keeps only the access byte (AND 0xFF00), upper EAX bits unchanged.
    e.code(32, |a| a.lar(ax, bx));
    e.cpu.gpr[3] = u64::from(CODE32);
    e.cpu.gpr[0] = 0xDEAD_BEEF;
    e.step().unwrap();
    assert_eq!(e.cpu.gpr[0], 0xDEAD_9B00);

    // CPL 3: DPL 0 segments are invisible, conforming code is not.
    e.cpu.cpl = 3;
    e.cpu.seg[SegReg::Cs as usize] = seg(CODE32_R3 | 3, desc(0, 0xF_FFFF, 0xFB, 0xC));
    e.cpu.seg[SegReg::Ss as usize] = seg(DATA32_R3 | 3, desc(0, 0xF_FFFF, 0xF3, 0xC));
    assert_eq!(probe(&mut e, 32, "lar", CODE32), (false, 0xDEAD_BEEF));
    assert_eq!(probe(&mut e, 32, "lar", CONFORMING), (true, 0x00C0_9F00));
    assert!(probe(&mut e, 32, "verr", CONFORMING).0);
    assert!(probe(&mut e, 32, "verw", DATA32_R3 | 3).0);
    assert!(!probe(&mut e, 32, "verw", DATA32).0);

    // 64-bit mode: 16-bit TSS and task gates are no longer valid for LAR; the 64-bit TSS needs
    // an upper half whose type field is 0.
    let mut e = Env::pm32();
    e.enter_long_mode();
    let lo = desc(0x5000, 0x67, 0x89, 0);
    e.load(GDT + u64::from(TSS64_SEL), &lo.to_le_bytes());
    e.load(GDT + u64::from(TSS64_SEL) + 8, &0u64.to_le_bytes());
    assert_eq!(probe(&mut e, 64, "lar", TSS64_SEL), (true, 0x0000_8900));
    assert_eq!(probe(&mut e, 64, "lsl", TSS64_SEL), (true, 0x67));
    assert_eq!(probe(&mut e, 64, "lar", TSS16_SEL), (false, 0xDEAD_BEEF));
    assert_eq!(probe(&mut e, 64, "lar", TASK_GATE), (false, 0xDEAD_BEEF));
    assert_eq!(probe(&mut e, 64, "lar", CODE64), (true, 0x00A0_9B00));
    e.load(GDT + u64::from(TSS64_SEL) + 8, &(0x1u64 << 40).to_le_bytes());
    assert_eq!(probe(&mut e, 64, "lar", TSS64_SEL), (false, 0xDEAD_BEEF));
    // Real mode: #UD.
    let mut bus = RamBus::with_code(1 << 20, &[0x0F, 0x00, 0xE3], 0x1000).unwrap(); // verr bx
    let mut cpu = CpuState::new();
    cpu.seg[SegReg::Cs as usize] = Segment::real(0);
    cpu.rip = 0x1000;
    assert_eq!(Interpreter::new().step(&mut cpu, &mut bus), Err(Exception::InvalidOpcode));
}

// ---------------------------------------------------------------------------------------------
// Debug registers and #DB (SDM vol. 3B chapter 17).

/// Assembles `f` at `at` and returns its length.
fn asm_at(e: &mut Env, at: u64, bits: u32, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> u64 {
    let mut a = CodeAssembler::new(bits).unwrap();
    f(&mut a).unwrap();
    let bytes = a.assemble(at).unwrap();
    e.load(at, &bytes);
    e.it.invalidate_phys(at, bytes.len() as u64);
    bytes.len() as u64
}

const TF: u64 = 1 << 8;
const RF: u64 = 1 << 16;
const DR6_BS: u64 = 1 << 14;
const DR6_BD: u64 = 1 << 13;

impl Env {
    /// The dword at SS:ESP + `k` * 4 (the handler's stack).
    fn frame(&self, k: u64) -> u64 {
        self.read(self.cpu.gpr[4] + 4 * k, 4)
    }
}

/// Single step (SDM 17.3.1.4): with TF = 1 at the start of an instruction, #DB (a trap) follows
/// it: the pushed EIP is the next instruction, DR6.BS = 1. POPF that sets TF is not itself
/// trapped (TF was 0 when it started); the instruction after it is.
#[test]
fn test_issue_11_single_step_trap() {
    let mut e = Env::pm32();
    let head = asm_at(&mut e, CODE, 32, |a| {
        a.pushfd()?;
        a.or(dword_ptr(esp), TF as i32)?;
        a.popfd()?;
        a.inc(eax)
    });
    asm_at(&mut e, CODE + head, 32, |a| {
        a.inc(ebx)?;
        a.hlt()
    });
    e.cpu.rip = CODE;
    assert_eq!(e.run(100), RunExit::Halted);
    assert_eq!(e.stub_vector(), 1);
    assert_eq!(e.frame(0), CODE + head, "trap: EIP of the next instruction");
    assert_eq!(e.frame(2) & (TF | RF), TF, "pushed EFLAGS: TF set, RF clear");
    assert_eq!((e.cpu.gpr[0], e.cpu.gpr[3]), (1, 0));
    assert_ne!(e.cpu.dr[6] & DR6_BS, 0);
    assert_eq!(e.cpu.rflags() & TF, 0, "the handler runs with TF clear");
}

/// MOV SS / POP SS (SDM 6.8.3): debug exceptions are inhibited until the next instruction
/// completes, so the single-step trap comes after the instruction that follows MOV SS.
#[test]
fn test_issue_11_mov_ss_delays_single_step() {
    let mut e = Env::pm32();
    let head = asm_at(&mut e, CODE, 32, |a| {
        a.mov(ss, ax)?;
        a.inc(ebx)
    });
    asm_at(&mut e, CODE + head, 32, |a| {
        a.nop()?;
        a.hlt()
    });
    e.cpu.gpr[0] = u64::from(DATA32);
    e.cpu.set_rflags(e.cpu.rflags() | TF);
    e.cpu.rip = CODE;
    assert_eq!(e.run(100), RunExit::Halted);
    assert_eq!(e.stub_vector(), 1);
    assert_eq!(e.frame(0), CODE + head, "one trap, after the instruction following MOV SS");
    assert_eq!(e.cpu.gpr[3], 1);
}

/// Instruction breakpoint (SDM 17.3.1.1, 17.2.4): a fault before the instruction at DR0, DR6.B0
/// set. The pushed RF is the current RF (0): the handler sets RF in the image so that the
/// IRET resumes without breaking again. Other faults push RF = 1.
#[test]
fn test_issue_11_instruction_breakpoint_fault_and_rf() {
    let mut e = Env::pm32();
    let head = asm_at(&mut e, CODE, 32, |a| a.inc(eax));
    asm_at(&mut e, CODE + head, 32, |a| {
        a.inc(ebx)?;
        a.inc(ecx)?;
        a.ud2()
    });
    e.cpu.dr[0] = CODE + head;
    e.cpu.dr[7] = 0x401; // L0, R/W0 = 00 (execute), LEN0 = 00
    e.cpu.rip = CODE;
    assert_eq!(e.run(100), RunExit::Halted);
    assert_eq!(e.stub_vector(), 1);
    assert_eq!(e.frame(0), CODE + head, "fault: EIP of the breakpoint instruction");
    assert_eq!(e.frame(2) & RF, 0, "instruction-breakpoint #DB pushes RF as it was");
    assert_eq!(e.cpu.dr[6] & 0xF, 1, "DR6.B0");
    assert_eq!((e.cpu.gpr[0], e.cpu.gpr[3]), (1, 0));

    // Again, with a handler that counts, sets RF in the image and returns.
    let mut e2 = Env::pm32();
    asm_at(&mut e2, CODE, 32, |a| a.inc(eax));
    asm_at(&mut e2, CODE + head, 32, |a| {
        a.inc(ebx)?;
        a.inc(ecx)?;
        a.ud2()
    });
    asm_at(&mut e2, STUBS + 16, 32, |a| {
        a.inc(esi)?;
        a.or(dword_ptr(esp + 8), RF as i32)?;
        a.iretd()
    });
    e2.cpu.dr[0] = CODE + head;
    e2.cpu.dr[7] = 0x401;
    e2.cpu.rip = CODE;
    assert_eq!(e2.run(100), RunExit::Halted);
    assert_eq!(e2.stub_vector(), 6, "ran on to the UD2");
    assert_eq!(e2.cpu.gpr[6], 1, "one breakpoint hit: RF suppressed the second");
    assert_eq!((e2.cpu.gpr[3], e2.cpu.gpr[1]), (1, 1));
    assert_ne!(e2.frame(2) & RF, 0, "#UD is a fault: the pushed RF is 1");
}

/// Data breakpoint (SDM 17.3.1.2): a trap after the access; R/W = 01 breaks on writes only;
/// any overlap with the LEN-aligned range counts. DR6.B1.
#[test]
fn test_issue_11_data_breakpoint_trap() {
    let mut e = Env::pm32();
    let head = asm_at(&mut e, CODE, 32, |a| {
        a.mov(eax, dword_ptr(0x6000))?; // a read: no break for R/W = 01
        a.mov(byte_ptr(0x6007), bl)?; // outside the range
        a.mov(byte_ptr(0x6002), bl)
    });
    asm_at(&mut e, CODE + head, 32, |a| {
        a.nop()?;
        a.hlt()
    });
    e.cpu.gpr[3] = 0x5A;
    e.cpu.dr[1] = 0x6001; // aligned down to 0x6000 by LEN = 4
    e.cpu.dr[7] = 0x400 | (1 << 2) | (0b01 << 20) | (0b11 << 22);
    e.cpu.rip = CODE;
    assert_eq!(e.run(100), RunExit::Halted);
    assert_eq!(e.stub_vector(), 1);
    assert_eq!(e.frame(0), CODE + head, "trap after the write");
    assert_eq!(e.read(0x6002, 1), 0x5A, "the write happened");
    assert_eq!(e.cpu.dr[6] & 0xF, 0b10, "DR6.B1");
    assert_eq!(e.cpu.dr[6] & DR6_BS, 0);

    // R/W = 11 breaks on reads too.
    let mut e = Env::pm32();
    let head = asm_at(&mut e, CODE, 32, |a| a.mov(eax, dword_ptr(0x6004)));
    asm_at(&mut e, CODE + head, 32, |a| a.hlt());
    e.cpu.dr[3] = 0x6006;
    e.cpu.dr[7] = 0x400 | (1 << 7) | (0b11 << 28) | (0b01 << 30); // G3, read/write, 2 bytes
    e.cpu.rip = CODE;
    e.run(100);
    assert_eq!(e.stub_vector(), 1);
    assert_eq!(e.cpu.dr[6] & 0xF, 0b1000, "DR6.B3");
}

/// I/O breakpoint (SDM 17.2.4/17.2.5): with CR4.DE = 1 and R/W = 10, IN/OUT on the port is a
/// trap; with CR4.DE = 0 the condition is undefined and nothing is reported here.
#[test]
fn test_issue_11_io_breakpoint() {
    for de in [true, false] {
        let mut e = Env::pm32();
        let head = asm_at(&mut e, CODE, 32, |a| {
            a.out(0x81, al)?;
            a.out(0x80, al)
        });
        asm_at(&mut e, CODE + head, 32, |a| {
            a.nop()?;
            a.hlt()
        });
        e.cpu.cr4 |= if de { 8 } else { 0 };
        e.cpu.dr[2] = 0x80;
        e.cpu.dr[7] = 0x400 | (1 << 4) | (0b10 << 24);
        e.cpu.rip = CODE;
        assert_eq!(e.run(100), RunExit::Halted);
        if de {
            assert_eq!(e.stub_vector(), 1);
            assert_eq!(e.frame(0), CODE + head);
            assert_eq!(e.cpu.dr[6] & 0xF, 0b100, "DR6.B2");
        } else {
            assert_eq!(e.cpu.rip, CODE + head + 2, "no break without CR4.DE");
        }
    }
}

/// General detect (SDM 17.2.4): with DR7.GD = 1 a MOV to or from a debug register is a #DB
/// fault with DR6.BD = 1 and GD cleared; a fault, so the pushed RF is 1.
/// DR4/DR5: #UD with CR4.DE = 1, aliases of DR6/DR7 with CR4.DE = 0 (SDM 17.2.2).
#[test]
fn test_issue_11_general_detect_and_dr4_dr5() {
    let mut e = Env::pm32();
    asm_at(&mut e, CODE, 32, |a| a.mov(eax, dr0));
    e.cpu.dr[7] = 0x400 | (1 << 13);
    e.cpu.rip = CODE;
    assert_eq!(e.run(100), RunExit::Halted);
    assert_eq!(e.stub_vector(), 1);
    assert_eq!(e.frame(0), CODE);
    assert_ne!(e.cpu.dr[6] & DR6_BD, 0);
    assert_eq!(e.cpu.dr[7] & (1 << 13), 0, "GD cleared");
    assert_ne!(e.frame(2) & RF, 0);

    let mut e = Env::pm32();
    e.code(32, |a| a.mov(eax, dr4));
    e.cpu.cr4 |= 8;
    assert_eq!(e.step(), Err(Exception::InvalidOpcode));
    e.cpu.cr4 &= !8;
    e.cpu.dr[6] = 0xFFFF_4FF1;
    e.step().unwrap();
    assert_eq!(e.cpu.gpr[0], 0xFFFF_4FF1, "DR4 reads DR6");
    e.code(32, |a| a.mov(dr5, eax));
    e.cpu.gpr[0] = 0x3;
    e.step().unwrap();
    assert_eq!(e.cpu.dr[7], 0x403, "DR5 writes DR7 (bit 10 reads as 1)");
}

// ---------------------------------------------------------------------------------------------
// NMI.

/// A RAM bus that raises an NMI at the start and once more on the first OUT to port 0x99.
struct NmiBus {
    ram: RamBus,
    nmi: bool,
    outs: u32,
}

impl CpuBus for NmiBus {
    fn memory(&mut self) -> &mut PhysMemory {
        &mut self.ram.mem
    }
    fn mmio_read(&mut self, id: u32, a: GuestPhysAddr, s: base::AccessSize) -> u64 {
        self.ram.mmio_read(id, a, s)
    }
    fn mmio_write(&mut self, id: u32, a: GuestPhysAddr, s: base::AccessSize, v: u64) {
        self.ram.mmio_write(id, a, s, v)
    }
    fn port_read(&mut self, p: base::PortAddr, s: base::AccessSize) -> u32 {
        self.ram.port_read(p, s)
    }
    fn port_write(&mut self, p: base::PortAddr, _: base::AccessSize, _: u32) {
        if p.0 == 0x99 {
            self.outs += 1;
            if self.outs == 1 {
                self.nmi = true;
            }
        }
    }
    fn interrupt_pending(&mut self) -> bool {
        false
    }
    fn acknowledge_interrupt(&mut self) -> Option<u8> {
        None
    }
    fn stop_requested(&mut self) -> bool {
        self.nmi
    }
    fn take_nmi(&mut self) -> bool {
        std::mem::take(&mut self.nmi)
    }
}

/// SDM 6.7.1: an NMI is delivered through vector 2 whatever EFLAGS.IF says, and further NMIs
/// are blocked until the next IRET. The handler computes EDX = EDX * 10 + ECX after raising a
/// second NMI: unnested, the two runs give 1 then 12; a nested second NMI would give 22.
#[test]
fn test_issue_11_nmi_vector_2_not_masked_and_blocked_until_iret() {
    let mut e = Env::pm32();
    e.code(32, |a| {
        a.cli()?;
        a.inc(eax)?;
        a.hlt()
    });
    asm_at(&mut e, STUBS + 32, 32, |a| {
        a.inc(ecx)?;
        a.out(0x99, al)?;
        a.imul_3(edx, edx, 10)?;
        a.add(edx, ecx)?;
        a.iretd()
    });
    let Env { bus, mut cpu, mut it } = e;
    let mut bus = NmiBus { ram: bus, nmi: true, outs: 0 };
    cpu.set_rflags(0x2);
    cpu.gpr[2] = 0;
    // A raised NMI ends the run (`stop_requested`); the next run delivers it.
    let mut exit = RunExit::Stopped;
    for _ in 0..10 {
        exit = it.run(&mut cpu, &mut bus, 100);
        if exit != RunExit::Stopped {
            break;
        }
    }
    assert_eq!(exit, RunExit::Halted);
    assert_eq!(cpu.gpr[1], 2, "two NMIs");
    assert_eq!(cpu.gpr[2], 12, "the second NMI waited for the first handler's IRET");
    assert_eq!(cpu.gpr[0], 1, "then the interrupted code ran on");
    assert!(!cpu.nmi_blocked);
}

// ---------------------------------------------------------------------------------------------
// Virtual-8086 mode (SDM vol. 3B chapter 20).

const VM: u64 = 1 << 17;
const IOPL3: u64 = 3 << 12;
const VIF: u64 = 1 << 19;
/// The virtual-8086 program's code segment (linear 0x20000) and stack segment.
const V86_CS: u64 = 0x2000;
const V86_SS: u64 = 0x3000;

/// Enters virtual-8086 mode from CPL 0 with IRETD (frame: EIP, CS, EFLAGS, ESP, SS, ES, DS, FS,
/// GS) with the given EFLAGS, at V86_CS:0 with SS:SP = V86_SS:0xFFFE.
fn enter_v86(e: &mut Env, eflags: u64, v86: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) {
    asm_at(e, V86_CS << 4, 16, v86);
    e.code(32, |a| {
        for v in [0x4444u32, 0x3333, 0x2222, 0x1111, V86_SS as u32, 0xFFFE] {
            a.push(v)?;
        }
        a.push((eflags | 2) as u32)?;
        a.push(V86_CS as u32)?;
        a.push(0u32)?;
        a.iretd()
    });
}

/// Entry by IRET, 8086-style addressing, an IOPL-sensitive CLI (IOPL = 0, no VME) raising
/// #GP(0) to the CPL 0 monitor (which skips it and returns with IRETD), then a #UD to look at
/// the frame: the handler runs at CPL 0 on the TSS stack, the frame holds GS, FS, DS, ES, SS,
/// ESP, EFLAGS (VM = 1), CS, EIP, and DS/ES/FS/GS are null in the handler (SDM 20.3.1.1).
#[test]
fn test_issue_11_v86_enter_gp_to_monitor_and_return() {
    let mut e = Env::pm32();
    // The #GP monitor: count, skip the 1-byte instruction, drop the error code, return.
    asm_at(&mut e, STUBS + 13 * 16, 32, |a| {
        a.inc(esi)?;
        a.add(dword_ptr(esp + 4), 1)?;
        a.add(esp, 4)?;
        a.iretd()
    });
    enter_v86(&mut e, VM, |a| {
        a.mov(ax, 0x1234)?;
        a.mov(ds, ax)?;
        a.mov(word_ptr(0x10), ax)?; // linear 0x12350
        a.push(ax)?; // SS:SP = 0x3000:0xFFFC
        a.cli()?; // #GP(0): IOPL < 3
        a.inc(bx)?;
        a.ud2()
    });
    e.cpu.gpr[3] = 0;
    e.cpu.gpr[6] = 0;
    assert_eq!(e.run(200), RunExit::Halted);
    assert_eq!(e.stub_vector(), 6, "#UD after the monitor returned");
    assert_eq!(e.cpu.gpr[6], 1, "the monitor ran once");
    assert_eq!(e.cpu.gpr[3], 1, "execution resumed after CLI");
    assert_eq!(e.read(0x12350, 2), 0x1234, "DS base = selector * 16");
    assert_eq!(e.read((V86_SS << 4) + 0xFFFC, 2), 0x1234, "the push went to SS * 16 + SP");
    assert_eq!(e.cpu.cpl, 0);
    assert_eq!(e.cpu.rflags() & VM, 0);
    assert_eq!(e.cpu.gpr[4], STACK0 - 36, "nine dwords on the ring-0 stack from the TSS");
    let frame: Vec<u64> = (0..9).map(|k| e.frame(k)).collect();
    assert_eq!(frame[1], V86_CS);
    assert_ne!(frame[2] & VM, 0, "pushed EFLAGS has VM");
    assert_eq!((frame[3], frame[4]), (0xFFFC, V86_SS));
    assert_eq!((frame[5], frame[6], frame[7], frame[8]), (0x1111, 0x1234, 0x3333, 0x4444), "ES DS FS GS");
    for s in [SegReg::Es, SegReg::Ds, SegReg::Fs, SegReg::Gs] {
        assert_eq!(e.cpu.seg[s as usize].selector, 0, "{s:?} is null in the handler");
    }
}

/// IOPL = 3: CLI, STI, PUSHF, POPF work directly; PUSHF/POPF cannot change IOPL... but at
/// IOPL 3 nothing faults. INT n goes to the protected-mode handler (no VME: method 1).
#[test]
fn test_issue_11_v86_iopl3_and_int_to_protected_handler() {
    let mut e = Env::pm32();
    // INT 0x30 from CPL 3 needs a DPL 3 gate.
    e.load(IDT + 0x30 * 8, &gate32((STUBS + 0x30 * 16) as u32, 3).to_le_bytes());
    enter_v86(&mut e, VM | IOPL3, |a| {
        a.cli()?;
        a.pushf()?;
        a.pop(cx)?;
        a.sti()?;
        a.int(0x30)
    });
    assert_eq!(e.run(200), RunExit::Halted);
    assert_eq!(e.stub_vector(), 0x30);
    assert_eq!(e.cpu.gpr[1] & 0x3200, 0x3000, "PUSHF image: IOPL 3, IF 0 after CLI");
    assert_eq!(e.frame(0), 6, "EIP after INT 0x30 (5 one-byte instructions, then CD 30)");
    assert_ne!(e.frame(2) & 0x200, 0, "IF set again by STI");
}

/// CR4.VME with IOPL < 3 (SDM 20.4.1, table 20-2): CLI/STI/PUSHF/POPF use VIF instead of
/// faulting (the PUSHF image carries IF = VIF and IOPL = 3), and INT n whose bit in the TSS
/// interrupt-redirection bitmap is clear goes through the 8086 vector table at linear 0
/// (method 6), pushing FLAGS (IF = VIF, IOPL = 3), CS and IP on the virtual-8086 stack; a set
/// bit is #GP(0) (method 4). The I/O permission bitmap decides IN/OUT at any IOPL.
#[test]
fn test_issue_11_v86_vme_vif_redirection_and_io_bitmap() {
    let mut e = Env::pm32();
    e.cpu.cr4 |= 1; // VME
                    // TSS: redirection bitmap at 0x68..0x88 (bit 0x31 set), I/O bitmap from 0x88: port 0x61 denied.
    let mut tss_tail = vec![0u8; 0x20 + 0x2000 / 8 + 1];
    tss_tail[0x31 / 8] |= 1 << (0x31 % 8);
    tss_tail[0x20 + 0x61 / 8] |= 1 << (0x61 % 8);
    tss_tail[0x20 + 0x2000 / 8] = 0xFF;
    e.load(TSS + 0x68, &tss_tail);
    e.load(TSS + 0x66, &0x88u16.to_le_bytes());
    e.cpu.tr = Segment::from_descriptor(TSS_SEL, desc(TSS as u32, 0x88 + 0x2000 / 8, 0x8B, 0));
    // 8086 vector 0x21 -> 0x1800:0x0010: "mov di, 0x77; iret".
    e.load(0x21 * 4, &0x1800_0010u32.to_le_bytes());
    asm_at(&mut e, 0x1_8010, 16, |a| {
        a.mov(di, 0x77)?;
        a.iret()
    });
    enter_v86(&mut e, VM | VIF, |a| {
        a.cli()?; // VIF = 0
        a.pushf()?;
        a.pop(cx)?; // IF image = VIF = 0, IOPL image = 3
        a.sti()?; // VIF = 1
        a.pushf()?;
        a.pop(dx)?; // IF image 1
        a.in_(al, 0x60)?; // allowed by the bitmap
        a.int(0x21)?; // redirected through the IVT
        a.in_(al, 0x61) // denied: #GP
    });
    e.cpu.gpr[7] = 0;
    e.it.trace = std::env::var("TRACE_V86").is_ok();
    assert_eq!(e.run(200), RunExit::Halted);
    assert_eq!(e.stub_vector(), 13);
    assert_eq!(e.frame(1), 10, "#GP(0) at IN AL, 0x61 (six 1-byte, two 2-byte instructions before it)");
    assert_eq!(e.frame(0), 0, "error code 0");
    assert_eq!(e.cpu.gpr[1] & 0xFFFF & 0x3200, 0x3000, "PUSHF after CLI: IF = VIF = 0, IOPL 3");
    assert_eq!(e.cpu.gpr[2] & 0xFFFF & 0x3200, 0x3200, "PUSHF after STI: IF = VIF = 1");
    assert_eq!(e.cpu.gpr[7], 0x77, "INT 0x21 ran the 8086 handler and IRET came back");
    assert_ne!(e.frame(3) & VIF, 0, "VIF set, as STI left it");
    assert_eq!(e.frame(3) & IOPL3, 0, "IOPL still 0");

    // Bit 0x31 set in the redirection bitmap and IOPL < 3: INT 0x31 is #GP(0).
    let mut e2 = Env::pm32();
    e2.cpu.cr4 |= 1;
    e2.load(TSS + 0x68, &tss_tail);
    e2.load(TSS + 0x66, &0x88u16.to_le_bytes());
    e2.cpu.tr = e.cpu.tr;
    enter_v86(&mut e2, VM, |a| a.int(0x31));
    e2.run(100);
    assert_eq!(e2.stub_vector(), 13);
    assert_eq!(e2.frame(1), 0, "faulting INT: EIP of the INT");
}

/// A task switch to a TSS whose EFLAGS image has VM = 1 enters virtual-8086 mode with the
/// TSS's selectors loaded 8086-style (SDM 20.2.5).
#[test]
fn test_issue_11_v86_entry_by_task_switch() {
    let mut e = Env::pm32();
    let tss2: u64 = 0x2_8000;
    // TSS2: EIP 0, EFLAGS VM, ESP 0xFFF0, ES CS SS DS FS GS.
    let fields: [(u64, u32); 11] = [
        (0x04, STACK0 as u32),
        (0x08, u32::from(DATA32)),
        (0x20, 0),
        (0x24, (VM | 2) as u32),
        (0x38, 0xFFF0),
        (0x48, 0x5000),
        (0x4C, V86_CS as u32),
        (0x50, V86_SS as u32),
        (0x54, 0x6000),
        (0x58, 0x7000),
        (0x5C, 0x8000),
    ];
    for (off, v) in fields {
        e.load(tss2 + off, &v.to_le_bytes());
    }
    e.load(GDT + 0x88, &desc(tss2 as u32, 0x67, 0x89, 0).to_le_bytes());
    asm_at(&mut e, V86_CS << 4, 16, |a| {
        a.mov(word_ptr(0), 0xABCD)?; // DS = 0x6000: linear 0x60000
        a.ud2()
    });
    e.code(32, |a| a.jmp_far(0x88, 0));
    assert_eq!(e.run(100), RunExit::Halted);
    assert_eq!(e.stub_vector(), 6);
    assert_eq!(e.read(0x6_0000, 2), 0xABCD);
    assert_ne!(e.frame(2) & VM, 0);
    assert_eq!(e.frame(3), 0xFFF0);
    assert_eq!((e.frame(5), e.frame(6), e.frame(7), e.frame(8)), (0x5000, 0x6000, 0x7000, 0x8000));
}

/// Single-stepping a REP string instruction (SDM 17.3.1.4 with 17.3.1.1): the trap comes after
/// each iteration; for every iteration but the last the pushed EIP is the REP instruction itself
/// and the pushed RF is 1.
#[test]
fn test_issue_11_single_step_rep_string_per_iteration() {
    let mut e = Env::pm32();
    let rep_len = asm_at(&mut e, CODE, 32, |a| a.rep().stosb());
    asm_at(&mut e, CODE + rep_len, 32, |a| {
        a.nop()?;
        a.ud2()
    });
    // #DB handler: count, OR the pushed EFLAGS.RF into EBP, log the pushed EIPs from 0x7000.
    asm_at(&mut e, STUBS + 16, 32, |a| {
        a.mov(eax, dword_ptr(esp))?;
        a.mov(dword_ptr(esi * 4 + 0x7000), eax)?;
        a.inc(esi)?;
        a.mov(eax, dword_ptr(esp + 8))?;
        a.and(eax, RF as u32)?;
        a.or(ebp, eax)?;
        a.iretd()
    });
    e.cpu.gpr[1] = 3;
    e.cpu.gpr[7] = 0x6000;
    e.cpu.gpr[5] = 0;
    e.cpu.gpr[6] = 0;
    e.cpu.set_rflags(e.cpu.rflags() | TF);
    e.cpu.rip = CODE;
    assert_eq!(e.run(200), RunExit::Halted);
    assert_eq!(e.stub_vector(), 6);
    assert_eq!(e.cpu.gpr[6], 4, "three iterations and the NOP each trapped once");
    let eips: Vec<u64> = (0..4).map(|k| e.read(0x7000 + 4 * k, 4)).collect();
    assert_eq!(eips, [CODE, CODE, CODE + rep_len, CODE + rep_len + 1]);
    assert_eq!(e.cpu.gpr[5], RF, "RF = 1 was pushed for the unfinished iterations");
    assert_eq!(e.cpu.gpr[1], 0);
}

/// Without CR4.VME and with IOPL < 3, each IOPL-sensitive instruction of virtual-8086 mode
/// (CLI, STI, PUSHF, POPF, INT n, IRET) is #GP(0) with EIP at the instruction (SDM 20.2.7);
/// ARPL, LAR and the other protected-mode-only instructions are #UD there (SDM ARPL, LAR).
#[test]
fn test_issue_11_v86_iopl_sensitive_and_protected_only_instructions() {
    type Case = (&'static str, Box<AsmFn>, u64);
    let cases: Vec<Case> = vec![
        ("cli", Box::new(|a| a.cli()), 13),
        ("sti", Box::new(|a| a.sti()), 13),
        ("pushf", Box::new(|a| a.pushf()), 13),
        ("popf", Box::new(|a| a.popf()), 13),
        ("int 0x21", Box::new(|a| a.int(0x21)), 13),
        ("iret", Box::new(|a| a.iret()), 13),
        ("arpl", Box::new(|a| a.arpl(ax, bx)), 6),
        ("lar", Box::new(|a| a.lar(ax, bx)), 6),
        ("mov eax, cr0", Box::new(|a| a.mov(eax, cr0)), 13),
    ];
    for (name, f, vector) in cases {
        let mut e = Env::pm32();
        enter_v86(&mut e, VM, |a| f(a));
        assert_eq!(e.run(100), RunExit::Halted, "{name}");
        assert_eq!(e.stub_vector(), vector, "{name}");
        let eip = if vector == 13 { e.frame(1) } else { e.frame(0) };
        assert_eq!(eip, 0, "{name}: a fault, EIP at the instruction");
    }
}

// ---------------------------------------------------------------------------------------------
// Alignment check.

/// #AC(0) (SDM 6.15, interrupt 17): with CR0.AM = 1, EFLAGS.AC = 1 and CPL 3, a data access of
/// a word at an odd address, a doubleword not 4-aligned or a quadword not 8-aligned faults
/// (stack pushes included); aligned accesses, byte accesses, CPL 0 or AC = 0 do not.
#[test]
fn test_issue_11_alignment_check_at_cpl3() {
    const AM: u64 = 1 << 18;
    const AC: u64 = 1 << 18;
    let user = |e: &mut Env| {
        e.cpu.cpl = 3;
        e.cpu.seg[SegReg::Cs as usize] = seg(CODE32_R3 | 3, desc(0, 0xF_FFFF, 0xFB, 0xC));
        for s in [SegReg::Ss, SegReg::Ds, SegReg::Es] {
            e.cpu.seg[s as usize] = seg(DATA32_R3 | 3, desc(0, 0xF_FFFF, 0xF3, 0xC));
        }
        e.cpu.cr0 |= AM;
        e.cpu.set_rflags(e.cpu.rflags() | AC);
    };
    let cases: Vec<(&str, Box<AsmFn>, bool)> = vec![
        ("dword at +1", Box::new(|a| a.mov(eax, dword_ptr(0x6001))), true),
        ("dword at +4", Box::new(|a| a.mov(eax, dword_ptr(0x6004))), false),
        ("word at +3", Box::new(|a| a.mov(word_ptr(0x6003), ax)), true),
        ("word at +2", Box::new(|a| a.mov(word_ptr(0x6002), ax)), false),
        ("byte at +3", Box::new(|a| a.mov(byte_ptr(0x6003), al)), false),
        ("push to ESP 0x8002", Box::new(|a| a.push(eax)), true),
    ];
    for (name, f, faults) in cases {
        let mut e = Env::pm32();
        user(&mut e);
        e.cpu.gpr[4] = 0x8002;
        e.code(32, &f);
        let want = if faults { Err(Exception::AlignmentCheck) } else { Ok(()) };
        assert_eq!(e.step(), want, "{name}");
        // The same access with AC = 0, or at CPL 0, does not fault.
        let mut e = Env::pm32();
        user(&mut e);
        e.cpu.set_rflags(e.cpu.rflags() & !AC);
        e.cpu.gpr[4] = 0x8002;
        e.code(32, &f);
        assert_eq!(e.step(), Ok(()), "{name} with AC = 0");
        let mut e = Env::pm32();
        e.cpu.cr0 |= AM;
        e.cpu.set_rflags(e.cpu.rflags() | AC);
        e.cpu.gpr[4] = 0x8002;
        e.code(32, &f);
        assert_eq!(e.step(), Ok(()), "{name} at CPL 0");
    }
    // Through the IDT: vector 17 with error code 0, and a run keeps checking after a POPF
    // turned AC on (the TLB entries filled before were fast).
    let mut e = Env::pm32();
    user(&mut e);
    e.cpu.set_rflags(e.cpu.rflags() & !AC);
    e.load(IDT + 17 * 8, &gate32((STUBS + 17 * 16) as u32, 0).to_le_bytes());
    e.code(32, |a| {
        a.mov(eax, dword_ptr(0x6001))?; // AC = 0: fine, fills the TLB
        a.pushfd()?;
        a.or(dword_ptr(esp), AC as i32)?;
        a.popfd()?;
        a.mov(eax, dword_ptr(0x6001))?; // #AC
        a.hlt()
    });
    e.cpu.gpr[4] = 0x8000;
    assert_eq!(e.run(100), RunExit::Halted);
    assert_eq!(e.stub_vector(), 17);
    assert_eq!(e.frame(0), 0, "error code 0");
}
