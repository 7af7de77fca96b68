//! Instruction fetch near the end of a page touches the next page only if the instruction
//! occupies it. The SDM sets a page's accessed flag when software accesses the page (vol. 3
//! 4.8); an instruction that ends at the page end does not access the next page, and the JIT,
//! which decodes within the page, does not walk it: with a 15-byte fetch window the
//! interpreter did, and per-block lockstep of 32-bit Linux diverged on that accessed bit.

use base::GuestPhysAddr;
use cpu::state::cr;
use cpu::{CpuState, ExecutionEngine, Interpreter, RamBus, RunExit};
use iced_x86::code_asm::*;

const PD: u64 = 0x1_0000;
const PT: u64 = 0x1_1000;
const PTE_A: u32 = 0x20;

/// 32-bit paging, 4 KiB pages mapping the first 4 MiB to themselves, accessed flags clear;
/// `code` at 0x1000 and `tail` assembled to end where it is placed, at `tail_at`.
fn setup(code: &[u8], tail: &[u8], tail_at: u64) -> (CpuState, RamBus) {
    let mut bus = RamBus::with_code(16 << 20, code, 0x1000).unwrap();
    let m = &mut bus.mem;
    m.load(GuestPhysAddr(PD), &((PT as u32) | 0x3).to_le_bytes()).unwrap();
    for i in 0..1024u32 {
        m.load(GuestPhysAddr(PT + u64::from(i) * 4), &((i << 12) | 0x3).to_le_bytes()).unwrap();
    }
    m.load(GuestPhysAddr(tail_at), tail).unwrap();
    let mut cpu = CpuState::new_flat32();
    cpu.rip = tail_at;
    cpu.cr3 = PD;
    cpu.cr0 |= cr::CR0_PG;
    (cpu, bus)
}

fn pte(bus: &RamBus, page: u64) -> u32 {
    let mut b = [0u8; 4];
    bus.mem.read(GuestPhysAddr(PT + page * 4), &mut b).unwrap();
    u32::from_le_bytes(b)
}

#[test]
fn test_instruction_ending_at_page_end_does_not_access_next_page() {
    let mut a = CodeAssembler::new(32).unwrap();
    a.hlt().unwrap();
    let code = a.assemble(0x1000).unwrap();
    // JMP rel32 at 0x1FFB..0x1FFF, back to the HLT.
    let mut t = CodeAssembler::new(32).unwrap();
    t.jmp(0x1000u64).unwrap();
    let tail = t.assemble(0x1FFB).unwrap();
    assert_eq!(tail.len(), 5);
    let (mut cpu, mut bus) = setup(&code, &tail, 0x1FFB);
    assert_eq!(Interpreter::new().run(&mut cpu, &mut bus, 10), RunExit::Halted);
    assert_ne!(pte(&bus, 1) & PTE_A, 0, "the code page was accessed");
    assert_eq!(pte(&bus, 2) & PTE_A, 0, "the next page was not");
}

#[test]
fn test_instruction_crossing_page_end_accesses_next_page() {
    let mut a = CodeAssembler::new(32).unwrap();
    a.hlt().unwrap();
    let code = a.assemble(0x1000).unwrap();
    // MOV EAX, imm32 at 0x1FFD..0x2001, then JMP back to the HLT.
    let mut t = CodeAssembler::new(32).unwrap();
    t.mov(eax, 0x1234_5678u32).unwrap();
    t.jmp(0x1000u64).unwrap();
    let tail = t.assemble(0x1FFD).unwrap();
    let (mut cpu, mut bus) = setup(&code, &tail, 0x1FFD);
    assert_eq!(Interpreter::new().run(&mut cpu, &mut bus, 10), RunExit::Halted);
    assert_eq!(cpu.gpr[0], 0x1234_5678);
    assert_ne!(pte(&bus, 2) & PTE_A, 0, "the instruction's bytes on the next page were fetched");
}
