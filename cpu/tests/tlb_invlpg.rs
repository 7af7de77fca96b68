//! INVLPG on a large page must drop every cached 4 KiB piece of it (SDM vol. 3 4.10.4.1:
//! "INVLPG ... invalidates any TLB entries for the page", whatever its size), and a CR3 write
//! must drop non-global translations.

use base::GuestPhysAddr;
use cpu::state::cr;
use cpu::{CpuState, ExecutionEngine, Interpreter, RamBus, RunExit};
use iced_x86::code_asm::*;

const PD: u64 = 0x1_0000;

/// 32-bit paging with PSE: PDE 0 maps linear 0..4 MiB to itself, PDE 1 maps 4..8 MiB to
/// physical 8 MiB; the dwords at 8 MiB + 0x5000 and 12 MiB + 0x5000 are told apart.
fn setup(code: &[u8]) -> (CpuState, RamBus) {
    let mut bus = RamBus::with_code(16 << 20, code, 0x1000).unwrap();
    let m = &mut bus.mem;
    m.load(GuestPhysAddr(PD), &0x83u32.to_le_bytes()).unwrap();
    m.load(GuestPhysAddr(PD + 4), &0x80_0083u32.to_le_bytes()).unwrap();
    m.load(GuestPhysAddr(0x80_5000), &0xAAAAu32.to_le_bytes()).unwrap();
    m.load(GuestPhysAddr(0xC0_5000), &0xBBBBu32.to_le_bytes()).unwrap();
    let mut cpu = CpuState::new_flat32();
    cpu.rip = 0x1000;
    cpu.cr3 = PD;
    cpu.cr4 |= cr::CR4_PSE;
    cpu.cr0 |= cr::CR0_PG;
    (cpu, bus)
}

#[test]
fn test_invlpg_on_large_page_flushes_other_4k_pieces() {
    let mut a = CodeAssembler::new(32).unwrap();
    a.mov(eax, dword_ptr(0x40_5000)).unwrap(); // caches the piece at 0x405000
    a.mov(dword_ptr(PD + 4), 0xC0_0083u32).unwrap(); // PDE 1 now maps 12 MiB
    a.invlpg(byte_ptr(0x40_0000)).unwrap(); // a different piece of the same 4 MiB page
    a.mov(ebx, dword_ptr(0x40_5000)).unwrap();
    a.hlt().unwrap();
    let code = a.assemble(0x1000).unwrap();
    let (mut cpu, mut bus) = setup(&code);
    let exit = Interpreter::new().run(&mut cpu, &mut bus, 100);
    assert_eq!(exit, RunExit::Halted);
    assert_eq!(cpu.gpr[0], 0xAAAA);
    assert_eq!(cpu.gpr[3], 0xBBBB, "a stale 4 KiB piece of the large page survived INVLPG");
}

#[test]
fn test_cr3_write_flushes_and_repeated_cr3_writes_stay_correct() {
    // Many CR3 writes (more than the TLB's generations) with a PDE rewrite in between each:
    // every read after a CR3 write sees the current mapping.
    let mut a = CodeAssembler::new(32).unwrap();
    let mut top = a.create_label();
    a.mov(ecx, 3000u32).unwrap();
    a.xor(esi, esi).unwrap();
    a.set_label(&mut top).unwrap();
    a.mov(eax, ecx).unwrap();
    a.and(eax, 1).unwrap();
    a.shl(eax, 22).unwrap(); // 0 or 4 MiB
    a.add(eax, 0x80_0083u32).unwrap(); // 8 MiB or 12 MiB
    a.mov(dword_ptr(PD + 4), eax).unwrap();
    a.mov(eax, cr3).unwrap();
    a.mov(cr3, eax).unwrap();
    a.add(esi, dword_ptr(0x40_5000)).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(top).unwrap();
    a.hlt().unwrap();
    let code = a.assemble(0x1000).unwrap();
    let (mut cpu, mut bus) = setup(&code);
    let exit = Interpreter::new().run(&mut cpu, &mut bus, 100_000);
    assert_eq!(exit, RunExit::Halted);
    assert_eq!(cpu.gpr[6], 1500 * 0xAAAA + 1500 * 0xBBBB);
}
