//! The instruction-count rule written on `CpuState::icount`: every retired or faulting
//! instruction counts 1, every REP iteration counts 1, delivering an interrupt counts 0; `run`,
//! sliced `run` and `step` agree.

use base::{AccessSize, GuestPhysAddr, PortAddr};
use cpu::state::rflags;
use cpu::{CpuBus, CpuState, ExecutionEngine, Interpreter, RamBus, RunExit, Segment};
use iced_x86::code_asm::*;
use mmu::PhysMemory;

fn real_mode_at(ip: u64) -> CpuState {
    let mut cpu = CpuState::new();
    cpu.seg = [Segment::real(0); 6];
    cpu.seg[1].attr |= cpu::state::seg_attr::CODE;
    cpu.rip = ip;
    cpu
}

fn rep_stosb_code() -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    a.mov(ecx, 5u32).unwrap();
    a.mov(edi, 0x8000u32).unwrap();
    a.mov(al, 0x5Au32).unwrap();
    a.rep().stosb().unwrap();
    a.hlt().unwrap();
    a.assemble(0x1000).unwrap()
}

#[test]
fn test_icount_rep_iterations_count_one_each_in_run_sliced_run_and_step() {
    let code = rep_stosb_code();
    // 3 movs + 5 iterations + hlt.
    let want = 3 + 5 + 1;
    let mut bus = RamBus::with_code(1 << 20, &code, 0x1000).unwrap();
    let mut cpu = CpuState::new_flat64();
    cpu.rip = 0x1000;
    assert_eq!(Interpreter::new().run(&mut cpu, &mut bus, 1000), RunExit::Halted);
    assert_eq!(cpu.icount, want);

    let mut bus = RamBus::with_code(1 << 20, &code, 0x1000).unwrap();
    let mut sliced = CpuState::new_flat64();
    sliced.rip = 0x1000;
    let mut it = Interpreter::new();
    let mut runs = 0;
    while it.run(&mut sliced, &mut bus, 1) != RunExit::Halted {
        runs += 1;
        assert_eq!(sliced.icount, runs, "a budget of 1 runs exactly one instruction or iteration");
    }
    assert_eq!(sliced.icount, want);
    assert_eq!(sliced.gpr, cpu.gpr);
    assert_eq!(sliced.rip, cpu.rip);

    let mut bus = RamBus::with_code(1 << 20, &code, 0x1000).unwrap();
    let mut stepped = CpuState::new_flat64();
    stepped.rip = 0x1000;
    let mut it = Interpreter::new();
    for _ in 0..4 {
        it.step(&mut stepped, &mut bus).unwrap();
    }
    assert_eq!(stepped.icount, 3 + 5, "step runs the whole REP, counting every iteration");
    assert_eq!(&bus.mem.backing()[0x8000..0x8006], &[0x5A, 0x5A, 0x5A, 0x5A, 0x5A, 0]);
}

#[test]
fn test_icount_faulting_instruction_counts_one() {
    // Real mode: UD2 at 0x1000, #UD handler (IVT vector 6) at 0x2000 is HLT.
    let mut bus = RamBus::with_code(1 << 20, &[0x0F, 0x0B], 0x1000).unwrap();
    bus.mem.load(GuestPhysAddr(6 * 4), &[0x00, 0x20, 0x00, 0x00]).unwrap();
    bus.mem.load(GuestPhysAddr(0x2000), &[0xF4]).unwrap();
    let mut cpu = real_mode_at(0x1000);
    cpu.gpr[4] = 0x7000;
    assert_eq!(Interpreter::new().run(&mut cpu, &mut bus, 100), RunExit::Halted);
    assert_eq!(cpu.rip, 0x2001);
    assert_eq!(cpu.icount, 2, "the faulting UD2 counts 1, HLT counts 1");

    let mut bus2 = RamBus::with_code(1 << 20, &[0x0F, 0x0B], 0x1000).unwrap();
    let mut c2 = real_mode_at(0x1000);
    assert!(Interpreter::new().step(&mut c2, &mut bus2).is_err());
    assert_eq!(c2.icount, 1, "step counts a faulting instruction too");
    assert_eq!(c2.rip, 0x1000);
}

/// RAM plus one interrupt request (vector 0x20) asserted from the start until acknowledged.
struct IrqOnce {
    ram: RamBus,
    pending: bool,
}

impl CpuBus for IrqOnce {
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
        self.pending
    }
    fn acknowledge_interrupt(&mut self) -> Option<u8> {
        std::mem::take(&mut self.pending).then_some(0x20)
    }
    fn stop_requested(&mut self) -> bool {
        false
    }
}

#[test]
fn test_icount_interrupt_delivery_counts_zero() {
    // NOP at 0x1000 (never reached before the interrupt), handler for vector 0x20 at 0x2000: HLT.
    let mut ram = RamBus::with_code(1 << 20, &[0x90, 0xF4], 0x1000).unwrap();
    ram.mem.load(GuestPhysAddr(0x20 * 4), &[0x00, 0x20, 0x00, 0x00]).unwrap();
    ram.mem.load(GuestPhysAddr(0x2000), &[0xF4]).unwrap();
    let mut bus = IrqOnce { ram, pending: true };
    let mut cpu = real_mode_at(0x1000);
    cpu.gpr[4] = 0x7000;
    cpu.set_rflags(rflags::IF);
    assert_eq!(Interpreter::new().run(&mut cpu, &mut bus, 100), RunExit::Halted);
    assert_eq!(cpu.rip, 0x2001, "the interrupt was taken before the NOP");
    assert_eq!(cpu.icount, 1, "delivery counts 0, the handler's HLT counts 1");
    assert!(!cpu.irq_pending, "the mirrored INTR line dropped with the acknowledge");
}
