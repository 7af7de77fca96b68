//! Small end-to-end checks of the interpreter on hand-assembled code.

use base::GuestPhysAddr;
use cpu::{CpuState, ExecutionEngine, Interpreter, RamBus, RunExit};
use iced_x86::code_asm::*;

fn bus_with(code: &[u8], at: u64) -> RamBus {
    RamBus::with_code(1 << 20, code, at).unwrap()
}

#[test]
fn test_interp_64bit_sum_loop() {
    let mut a = CodeAssembler::new(64).unwrap();
    let mut top = a.create_label();
    a.xor(eax, eax).unwrap();
    a.mov(ecx, 1000).unwrap();
    a.set_label(&mut top).unwrap();
    a.add(rax, rcx).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(top).unwrap();
    a.mov(rbx, rax).unwrap();
    a.mov(dx, 0xE9).unwrap();
    a.mov(al, b'!' as u32).unwrap();
    a.out(dx, al).unwrap();
    a.hlt().unwrap();
    let code = a.assemble(0x1000).unwrap();
    let mut bus = bus_with(&code, 0x1000);
    let mut cpu = CpuState::new_flat64();
    cpu.rip = 0x1000;
    let mut it = Interpreter::new();
    let exit = it.run(&mut cpu, &mut bus, 1_000_000);
    assert_eq!(exit, RunExit::Halted);
    assert_eq!(bus.debug_out, b"!");
    assert_eq!(cpu.gpr[3], 500_500);
    assert_eq!(cpu.icount, 2 + 3 * 1000 + 5);
}

#[test]
fn test_interp_real_mode_divide_error_through_ivt() {
    let mut a = CodeAssembler::new(16).unwrap();
    a.xor(ax, ax).unwrap();
    a.mov(ds, ax).unwrap();
    a.mov(ss, ax).unwrap();
    a.mov(sp, 0x7000).unwrap();
    a.mov(word_ptr(0), 0x2000).unwrap(); // vector 0 -> 0000:2000
    a.mov(word_ptr(2), 0).unwrap();
    a.xor(bl, bl).unwrap();
    a.mov(ax, 5).unwrap();
    a.div(bl).unwrap();
    a.hlt().unwrap();
    let code = a.assemble(0x1000).unwrap();
    let mut h = CodeAssembler::new(16).unwrap();
    h.mov(cx, 0x1234).unwrap();
    h.mov(bp, sp).unwrap();
    h.add(word_ptr(bp), 2).unwrap(); // skip the 2-byte DIV BL
    h.iret().unwrap();
    let hcode = h.assemble(0x2000).unwrap();
    let mut bus = bus_with(&code, 0x1000);
    bus.mem.load(GuestPhysAddr(0x2000), &hcode).unwrap();
    let mut cpu = CpuState::new();
    cpu.seg[1] = cpu::Segment::real(0);
    cpu.rip = 0x1000;
    let mut it = Interpreter::new();
    assert_eq!(it.run(&mut cpu, &mut bus, 10_000), RunExit::Halted);
    assert_eq!(cpu.gpr[1] & 0xFFFF, 0x1234, "handler ran");
    assert_eq!(cpu.gpr[4] & 0xFFFF, 0x7000, "IRET restored SP");
}

#[test]
fn test_interp_self_modifying_code_is_seen() {
    // 0x2000 holds HLT and is executed (so it is in the decode cache); then guest code
    // overwrites it with "inc eax; hlt" and jumps there: the new bytes must run.
    let mut b = CodeAssembler::new(64).unwrap();
    b.mov(byte_ptr(0x2000u64), 0xFF).unwrap(); // FF C0 = inc eax
    b.mov(byte_ptr(0x2001u64), 0xC0).unwrap();
    b.mov(byte_ptr(0x2002u64), 0xF4).unwrap(); // hlt
    b.jmp(0x2000u64).unwrap();
    let code = b.assemble(0x3000).unwrap();
    let mut bus = bus_with(&code, 0x3000);
    bus.mem.load(GuestPhysAddr(0x2000), &[0xF4, 0x90, 0x90]).unwrap();
    let mut cpu = CpuState::new_flat64();
    let mut it = Interpreter::new();
    cpu.rip = 0x2000;
    assert_eq!(it.run(&mut cpu, &mut bus, 10), RunExit::Halted);
    assert_eq!(cpu.rip, 0x2001);
    cpu.rip = 0x3000;
    cpu.halted = false;
    cpu.gpr[0] = 0;
    assert_eq!(it.run(&mut cpu, &mut bus, 100), RunExit::Halted);
    assert_eq!(cpu.gpr[0], 1, "the rewritten instruction ran, not the cached HLT");
    assert_eq!(cpu.rip, 0x2003);
}

#[test]
fn test_interp_engine_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Interpreter>();
}

/// A real-mode CPU with CS = `sel`, IP = `ip`.
fn real_mode_at(sel: u16, ip: u64) -> CpuState {
    let mut cpu = CpuState::new();
    let mut seg = cpu::Segment::real(sel);
    seg.attr |= cpu::state::seg_attr::CODE;
    cpu.seg[1] = seg;
    cpu.rip = ip;
    cpu
}

#[test]
fn test_interp_real_mode_ip_wraps_at_64k() {
    // INC AX as the last byte of the segment: execution continues at IP 0.
    let mut bus = bus_with(&[0x40], 0x1FFFF);
    bus.mem.load(GuestPhysAddr(0x10000), &[0x43]).unwrap(); // INC BX at 1000:0000
    let mut cpu = real_mode_at(0x1000, 0xFFFF);
    let mut it = Interpreter::new();
    it.step(&mut cpu, &mut bus).unwrap();
    assert_eq!(cpu.rip, 0, "IP wrapped");
    it.step(&mut cpu, &mut bus).unwrap();
    assert_eq!(cpu.gpr[3] & 0xFFFF, 1, "the instruction at 1000:0000 ran");
}

#[test]
fn test_interp_real_mode_instruction_crossing_64k_is_gp() {
    // MOV AX, BX (2 bytes) starting at IP 0xFFFF runs past the segment limit.
    let mut bus = bus_with(&[0x89, 0xD8], 0x1FFFF);
    let mut cpu = real_mode_at(0x1000, 0xFFFF);
    let mut it = Interpreter::new();
    assert_eq!(it.step(&mut cpu, &mut bus), Err(cpu::Exception::GeneralProtection(0)));
    assert_eq!(cpu.rip, 0xFFFF);
}

#[test]
fn test_interp_mtrrs_read_back_and_reserved_bits_fault() {
    // WRMSR then RDMSR of a variable-range base, a fixed-range MTRR and MTRR_DEF_TYPE (as a
    // BIOS programs them); then a reserved bit in MTRR_DEF_TYPE must raise #GP(0).
    let mut a = CodeAssembler::new(64).unwrap();
    for (i, (index, lo, hi)) in [
        (0x200u32, 0x0000_0006u32, 0u32),
        (0x20Fu32, 0xF800_0800, 0xF),
        (0x26F, 0x0505_0505, 0x0606_0606),
        (0x2FF, 0xC06, 0),
    ]
    .into_iter()
    .enumerate()
    {
        a.mov(ecx, index).unwrap();
        a.mov(eax, lo).unwrap();
        a.mov(edx, hi).unwrap();
        a.wrmsr().unwrap();
        a.xor(eax, eax).unwrap();
        a.xor(edx, edx).unwrap();
        a.rdmsr().unwrap();
        a.shl(rdx, 32).unwrap();
        a.or(rax, rdx).unwrap();
        a.mov(qword_ptr(0x2000 + 8 * i as u64), rax).unwrap();
    }
    a.mov(ecx, 0x2FFu32).unwrap();
    a.mov(eax, 0x1000u32).unwrap(); // bit 12: reserved
    a.xor(edx, edx).unwrap();
    a.wrmsr().unwrap();
    a.hlt().unwrap();
    let code = a.assemble(0x1000).unwrap();
    let mut bus = bus_with(&code, 0x1000);
    let mut cpu = CpuState::new_flat64();
    cpu.rip = 0x1000;
    let mut it = Interpreter::new();
    let last_wrmsr = loop {
        let rip = cpu.rip;
        match it.step(&mut cpu, &mut bus) {
            Ok(()) => {}
            Err(e) => break (rip, e),
        }
    };
    assert_eq!(last_wrmsr.1, cpu::Exception::GeneralProtection(0));
    let mut got = [0u8; 32];
    bus.mem.read(GuestPhysAddr(0x2000), &mut got).unwrap();
    let v: Vec<u64> = got.chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(v, [0x6, 0xF_F800_0800, 0x0606_0606_0505_0505, 0xC06]);
}

/// Issue 11 item 1: a 32-bit-address REP string in 64-bit mode with ECX = 0 runs no iteration
/// but, in Ferrovisor's CPU model (the Intel Xeon behaviour the differential test met on a CI
/// host), writes ECX and, for MOVS/STOS, ESI/EDI, zero-extending them; LODS/CMPS/SCAS leave
/// RSI/RDI alone.
#[test]
fn test_issue_11_rep_a32_zero_count_zero_extends() {
    for (bytes, rsi_written, rdi_written) in [
        (&[0x67, 0xF3, 0xAB][..], false, true),        // rep stosd [edi]
        (&[0x67, 0xF3, 0x48, 0xA5][..], true, true),   // rep movsq
        (&[0x67, 0xF3, 0xAD][..], false, false),       // rep lodsd
        (&[0x67, 0xF2, 0xAE][..], false, false),       // repne scasb
        (&[0x66, 0x67, 0xF3, 0xA7][..], false, false), // repe cmpsw
    ] {
        let mut code = bytes.to_vec();
        code.push(0xF4);
        let mut bus = bus_with(&code, 0x1000);
        let mut cpu = CpuState::new_flat64();
        cpu.rip = 0x1000;
        cpu.gpr[1] = 0x1234_5678_0000_0000;
        cpu.gpr[6] = 0xAAAA_0000_0000_2000;
        cpu.gpr[7] = 0xBBBB_0000_0000_3000;
        let mut it = Interpreter::new();
        let exit = it.run(&mut cpu, &mut bus, 10);
        assert_eq!(exit, RunExit::Halted, "{bytes:02x?}");
        assert_eq!(cpu.gpr[1], 0, "{bytes:02x?}: RCX");
        assert_eq!(cpu.gpr[6], if rsi_written { 0x2000 } else { 0xAAAA_0000_0000_2000 }, "{bytes:02x?}: RSI");
        assert_eq!(cpu.gpr[7], if rdi_written { 0x3000 } else { 0xBBBB_0000_0000_3000 }, "{bytes:02x?}: RDI");
    }
}
