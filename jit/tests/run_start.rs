//! The start of a run under the JIT, against the interpreter and the SDM: a latched NMI is
//! delivered before the first instruction, an interrupt shadow holds it back for exactly one
//! instruction (SDM vol. 3 6.8.3: MOV SS / POP SS inhibit interrupts, NMIs included, until the
//! end of the next instruction), and the bus is polled exactly as often as under the
//! interpreter (once for INTR, once for NMI): a zero-budget interpreter run in front of every
//! JIT run polled it twice, which made hostile streams diverge on a bus whose answers depend on
//! how often it is asked.

use base::{AccessSize, GuestPhysAddr, PortAddr};
use cpu::state::seg_attr;
use cpu::{CpuBus, CpuState, ExecutionEngine, Interpreter, RamBus, RunExit, SegReg, Segment};
use mmu::PhysMemory;

const CODE: u64 = 0x1000;
const NMI_HANDLER: u64 = 0x0500;
const STACK: u64 = 0x7000;

/// RAM, an NMI latch and counters of the polls a run makes.
struct NmiBus {
    ram: RamBus,
    nmi: bool,
    intr_polls: u32,
    nmi_polls: u32,
}

impl CpuBus for NmiBus {
    fn memory(&mut self) -> &mut PhysMemory {
        self.ram.memory()
    }
    fn mmio_read(&mut self, id: u32, a: GuestPhysAddr, s: AccessSize) -> u64 {
        self.ram.mmio_read(id, a, s)
    }
    fn mmio_write(&mut self, id: u32, a: GuestPhysAddr, s: AccessSize, v: u64) {
        self.ram.mmio_write(id, a, s, v)
    }
    fn port_read(&mut self, p: PortAddr, s: AccessSize) -> u32 {
        self.ram.port_read(p, s)
    }
    fn port_write(&mut self, p: PortAddr, s: AccessSize, v: u32) {
        self.ram.port_write(p, s, v)
    }
    fn interrupt_pending(&mut self) -> bool {
        self.intr_polls += 1;
        false
    }
    fn acknowledge_interrupt(&mut self) -> Option<u8> {
        None
    }
    fn take_nmi(&mut self) -> bool {
        self.nmi_polls += 1;
        std::mem::take(&mut self.nmi)
    }
    fn stop_requested(&mut self) -> bool {
        false
    }
}

/// Real mode at 0000:1000 with 64 NOPs and a HLT, the NMI vector pointing at `handler`.
fn machine(handler: &[u8]) -> (CpuState, NmiBus) {
    let mut code = vec![0x90u8; 64];
    code.push(0xF4);
    let mut ram = RamBus::with_code(1 << 20, &code, CODE).unwrap();
    ram.mem.load(GuestPhysAddr(NMI_HANDLER), handler).unwrap();
    // IVT entry 2: offset, segment 0.
    ram.mem.load(GuestPhysAddr(2 * 4), &[NMI_HANDLER as u8, (NMI_HANDLER >> 8) as u8, 0, 0]).unwrap();
    let mut cpu = CpuState::new();
    let mut cs = Segment::real(0);
    cs.attr |= seg_attr::CODE;
    cpu.seg[SegReg::Cs as usize] = cs;
    cpu.rip = CODE;
    cpu.gpr[4] = STACK;
    cpu.refresh_mode_key();
    (cpu, NmiBus { ram, nmi: true, intr_polls: 0, nmi_polls: 0 })
}

fn engines() -> [(&'static str, Box<dyn ExecutionEngine>); 2] {
    [("interp", Box::new(Interpreter::new())), ("jit", Box::new(jit::Translator::new()))]
}

/// The IP the NMI pushed (real mode: IP, CS, FLAGS at SP).
fn pushed_ip(cpu: &CpuState, bus: &mut NmiBus) -> u64 {
    let sp = cpu.gpr[4] & 0xFFFF;
    let mut b = [0u8; 2];
    bus.ram.mem.read(GuestPhysAddr(sp), &mut b).unwrap();
    u64::from(u16::from_le_bytes(b))
}

#[test]
fn test_nmi_held_by_interrupt_shadow_for_exactly_one_instruction() {
    for (name, mut e) in engines() {
        let (mut cpu, mut bus) = machine(&[0xF4]); // the handler halts
        cpu.interrupt_shadow = true; // as right after a MOV SS
        let mut runs = 0;
        let exit = loop {
            runs += 1;
            let x = e.run(&mut cpu, &mut bus, 50);
            if x != RunExit::BudgetExhausted || runs > 10 {
                break x;
            }
        };
        assert_eq!(exit, RunExit::Halted, "{name}");
        assert_eq!(pushed_ip(&cpu, &mut bus), CODE + 1, "{name}: the NMI came after exactly one NOP");
        assert_eq!(cpu.rip, NMI_HANDLER + 1, "{name}: halted in the handler");
        assert_eq!(cpu.icount, 2, "{name}: one NOP, the handler's HLT (delivery counts 0)");
        assert_eq!(runs, 2, "{name}: the held NMI ends the first run after one instruction");
    }
}

#[test]
fn test_nmi_at_run_start_polls_the_bus_like_the_interpreter() {
    let mut polls = Vec::new();
    for (name, mut e) in engines() {
        let (mut cpu, mut bus) = machine(&[0xCF]); // the handler returns (IRET)
        let exit = e.run(&mut cpu, &mut bus, 30);
        assert_eq!(exit, RunExit::BudgetExhausted, "{name}");
        assert_eq!(cpu.rip, CODE + 29, "{name}: IRET, then 29 NOPs");
        assert!(!cpu.nmi_blocked, "{name}: IRET ends NMI blocking (SDM vol. 3 6.7.1)");
        polls.push((name, bus.intr_polls, bus.nmi_polls));
        // A run with nothing latched.
        let (mut cpu, mut bus) = machine(&[0xCF]);
        bus.nmi = false;
        e.run(&mut cpu, &mut bus, 30);
        polls.push((name, bus.intr_polls, bus.nmi_polls));
    }
    assert_eq!(polls[0].1, 1, "the interpreter polls INTR once per run");
    assert_eq!(polls[0..2], [("interp", 1, 1), ("interp", 1, 1)]);
    assert_eq!(polls[2..4], [("jit", 1, 1), ("jit", 1, 1)], "the JIT polls the bus as the interpreter does");
}

/// Regression (hostile lockstep campaign, Prot32 stream 1295): a block ended by POPF left
/// through a chained jump into the next block, so a TF that POPF set was not seen by the
/// dispatcher and the next block's inline code ran on: the single-step trap came instructions
/// late. SDM vol. 3 17.3.1.4: with TF set by POPF, the trap follows the first instruction after
/// the POPF.
#[test]
fn test_single_step_armed_by_popf_traps_after_one_instruction() {
    use iced_x86::code_asm::*;
    // Flat 32-bit protected mode, ring 0: GDT at 0 (0x08 code, 0x10 data), IDT at 0x800 with
    // vector 1 (#DB) on the halting handler.
    let mut a = CodeAssembler::new(32).unwrap();
    let mut top = a.create_label();
    let mut step = a.create_label();
    a.mov(ecx, 3u32).unwrap();
    a.set_label(&mut top).unwrap();
    // EBX = 0x102 (TF) in the last round, else 2: no branch, so the block that ends with the
    // POPF is the same in every round and its exit is chained after the first.
    a.xor(ebx, ebx).unwrap();
    a.cmp(ecx, 1).unwrap();
    a.sete(bl).unwrap();
    a.shl(ebx, 8).unwrap();
    a.or(ebx, 2).unwrap();
    a.push(ebx).unwrap();
    a.popfd().unwrap();
    a.inc(edx).unwrap();
    a.set_label(&mut step).unwrap();
    a.inc(esi).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(top).unwrap();
    a.hlt().unwrap();
    let r = a.assemble_options(CODE, iced_x86::BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS).unwrap();
    let code = r.inner.code_buffer.clone();
    let after_first = r.label_ip(&step).unwrap();
    const IDT: u64 = 0x800;
    for (name, mut e) in engines() {
        let mut ram = RamBus::with_code(1 << 20, &code, CODE).unwrap();
        let w = |ram: &mut RamBus, at: u64, v: u64| ram.mem.load(GuestPhysAddr(at), &v.to_le_bytes()).unwrap();
        w(&mut ram, 8, 0x00CF_9A00_0000_FFFF);
        w(&mut ram, 16, 0x00CF_9200_0000_FFFF);
        w(&mut ram, IDT + 8, (NMI_HANDLER & 0xFFFF) | (8 << 16) | (0x8E << 40) | ((NMI_HANDLER >> 16) << 48));
        ram.mem.load(GuestPhysAddr(NMI_HANDLER), &[0xF4]).unwrap();
        let mut bus = NmiBus { ram, nmi: false, intr_polls: 0, nmi_polls: 0 };
        let mut cpu = CpuState::new_flat32();
        cpu.gdtr = cpu::DescriptorTable { base: 0, limit: 23 };
        cpu.idtr = cpu::DescriptorTable { base: IDT, limit: 0x7FF };
        cpu.rip = CODE;
        cpu.gpr = [0; 16];
        cpu.gpr[4] = STACK;
        assert_eq!(e.run(&mut cpu, &mut bus, 1000), RunExit::Halted, "{name}");
        assert_eq!(cpu.rip, NMI_HANDLER + 1, "{name}: halted in the #DB handler");
        let mut b = [0u8; 4];
        bus.ram.mem.read(GuestPhysAddr(cpu.gpr[4]), &mut b).unwrap();
        assert_eq!(u64::from(u32::from_le_bytes(b)), after_first, "{name}: the trap came right after INC EDX");
        assert_eq!(cpu.gpr[2], 3, "{name}: INC EDX ran in each of the 3 rounds");
        assert_eq!(cpu.gpr[6], 2, "{name}: INC ESI did not run in the last round");
    }
}
