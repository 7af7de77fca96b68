//! The availability rules of the x87/MMX/SSE instructions (Intel SDM vol. 3A table 2-2, 9.2
//! and vol. 2 chapter 2 "exception classes"): which exception each combination of CR0.EM,
//! CR0.MP, CR0.TS, CR4.OSFXSR and CR4.OSXSAVE gives, and LDMXCSR's #GP on reserved bits.

use cpu::state::cr;
use cpu::{CpuState, Exception, Interpreter, RamBus};
use iced_x86::code_asm::*;

/// Runs the single instruction `f` assembles (64-bit code at 0x1000) with CR0 |= `cr0_or` and
/// CR4 = `cr4`; returns the state after it or the exception it raised.
fn run(
    f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
    cr0_or: u64,
    cr4_value: u64,
) -> Result<CpuState, Exception> {
    let mut a = CodeAssembler::new(64).expect("assembler");
    f(&mut a).expect("assembles");
    let code = a.assemble(0x1000).expect("assembles");
    let mut bus = RamBus::with_code(1 << 20, &code, 0x1000).expect("bus");
    let mut s = CpuState::new_flat64();
    s.cr0 |= cr0_or;
    s.cr4 = cr4_value;
    s.rip = 0x1000;
    s.gpr[6] = 0x8000; // RSI: a 16-byte aligned scratch address
    s.fpu.init();
    let mut it = Interpreter::new();
    it.step(&mut s, &mut bus).map(|()| s)
}

const SSE_ON: u64 = cr::CR4_OSFXSR | cr::CR4_OSXMMEXCPT;

#[test]
fn test_x87_nm_on_em_or_ts() {
    // x87 instructions: EM=1 or TS=1 -> #NM.
    assert_eq!(run(|a| a.fld1(), cr::CR0_EM, SSE_ON).err(), Some(Exception::DeviceNotAvailable));
    assert_eq!(run(|a| a.fld1(), cr::CR0_TS, SSE_ON).err(), Some(Exception::DeviceNotAvailable));
    assert!(run(|a| a.fld1(), cr::CR0_MP, SSE_ON).is_ok());
    // FNINIT too (no-wait forms still check EM/TS).
    assert_eq!(run(|a| a.fninit(), cr::CR0_TS, SSE_ON).err(), Some(Exception::DeviceNotAvailable));
}

#[test]
fn test_wait_nm_only_with_mp_and_ts() {
    // WAIT: #NM only when MP=1 and TS=1; EM does not matter; otherwise a no-op.
    assert_eq!(run(|a| a.wait(), cr::CR0_MP | cr::CR0_TS, SSE_ON).err(), Some(Exception::DeviceNotAvailable));
    assert!(run(|a| a.wait(), cr::CR0_TS, SSE_ON).is_ok());
    assert!(run(|a| a.wait(), cr::CR0_EM, SSE_ON).is_ok());
    let s = run(|a| a.wait(), 0, SSE_ON).expect("WAIT with nothing pending");
    assert_eq!(s.rip, 0x1001);
}

#[test]
fn test_sse_ud_on_em_or_no_osfxsr_nm_on_ts() {
    let op = |a: &mut CodeAssembler| a.addps(xmm0, xmm1);
    assert_eq!(run(op, cr::CR0_EM, SSE_ON).err(), Some(Exception::InvalidOpcode));
    assert_eq!(run(op, 0, 0).err(), Some(Exception::InvalidOpcode));
    assert_eq!(run(op, cr::CR0_TS, SSE_ON).err(), Some(Exception::DeviceNotAvailable));
    assert!(run(op, 0, SSE_ON).is_ok());
}

#[test]
fn test_mmx_ud_on_em_nm_on_ts_no_osfxsr_needed() {
    let op = |a: &mut CodeAssembler| a.paddb(mm0, mm1);
    assert_eq!(run(op, cr::CR0_EM, SSE_ON).err(), Some(Exception::InvalidOpcode));
    assert_eq!(run(op, cr::CR0_TS, SSE_ON).err(), Some(Exception::DeviceNotAvailable));
    let s = run(op, 0, 0).expect("MMX without CR4.OSFXSR");
    // The x87 -> MMX transition: TOP = 0, all tags valid.
    assert_eq!((s.fpu.fsw >> 11) & 7, 0);
    assert_eq!(s.fpu.ftw, 0xFF);
}

#[test]
fn test_fxsave_nm_on_em_or_ts() {
    assert_eq!(run(|a| a.fxsave(ptr(rsi)), cr::CR0_EM, SSE_ON).err(), Some(Exception::DeviceNotAvailable));
    assert_eq!(run(|a| a.fxsave(ptr(rsi)), cr::CR0_TS, SSE_ON).err(), Some(Exception::DeviceNotAvailable));
    assert!(run(|a| a.fxsave(ptr(rsi)), 0, SSE_ON).is_ok());
    // Misaligned: #GP(0).
    assert_eq!(run(|a| a.fxsave(ptr(rsi + 8)), 0, SSE_ON).err(), Some(Exception::GeneralProtection(0)));
}

#[test]
fn test_ldmxcsr_gp_on_reserved_bits() {
    // MXCSR bits 16-31 are reserved: loading one is #GP(0); DAZ (bit 6) exists.
    let mut a = CodeAssembler::new(64).expect("assembler");
    a.ldmxcsr(dword_ptr(rsi)).expect("assembles");
    let code = a.assemble(0x1000).expect("assembles");
    for (v, ok) in [(0x1F80u32, true), (0x1FC0, true), (0x1_1F80, false), (0x8000_1F80, false)] {
        let mut bus = RamBus::with_code(1 << 20, &code, 0x1000).expect("bus");
        bus.mem.load(base::GuestPhysAddr(0x8000), &v.to_le_bytes()).expect("load");
        let mut s = CpuState::new_flat64();
        s.cr4 = SSE_ON;
        s.rip = 0x1000;
        s.gpr[6] = 0x8000;
        let r = Interpreter::new().step(&mut s, &mut bus);
        if ok {
            assert!(r.is_ok(), "{v:#x}");
            assert_eq!(s.fpu.mxcsr, v);
        } else {
            assert_eq!(r.err(), Some(Exception::GeneralProtection(0)), "{v:#x}");
        }
    }
}

#[test]
fn test_xsave_family_needs_osxsave() {
    assert_eq!(run(|a| a.xgetbv(), 0, SSE_ON).err(), Some(Exception::InvalidOpcode));
    let s = run(|a| a.xgetbv(), 0, SSE_ON | cr::CR4_OSXSAVE).expect("XGETBV");
    assert_eq!(s.gpr[0], 1, "XCR0 after reset: x87 only");
    assert_eq!(run(|a| a.xsave(ptr(rsi)), 0, SSE_ON).err(), Some(Exception::InvalidOpcode));
    assert_eq!(
        run(|a| a.xsave(ptr(rsi)), cr::CR0_TS, SSE_ON | cr::CR4_OSXSAVE).err(),
        Some(Exception::DeviceNotAvailable)
    );
}

#[test]
fn test_cpuid_osxsave_mirrors_cr4() {
    for (cr4_value, expect) in [(SSE_ON, 0), (SSE_ON | cr::CR4_OSXSAVE, 1u64 << 27)] {
        let mut a = CodeAssembler::new(64).expect("assembler");
        a.cpuid().expect("assembles");
        let code = a.assemble(0x1000).expect("assembles");
        let mut bus = RamBus::with_code(1 << 20, &code, 0x1000).expect("bus");
        let mut st = CpuState::new_flat64();
        st.cr4 = cr4_value;
        st.rip = 0x1000;
        st.gpr[0] = 1;
        Interpreter::new().step(&mut st, &mut bus).expect("CPUID");
        assert_eq!(st.gpr[1] & (1 << 27), expect);
        // FPU, MMX, FXSR, SSE, SSE2 advertised in EDX.
        for bit in [0, 23, 24, 25, 26] {
            assert_ne!(st.gpr[2] & (1 << bit), 0, "EDX bit {bit}");
        }
    }
}
