//! Small end-to-end checks of the interpreter on hand-assembled code.

use base::{AccessSize, GuestPhysAddr, PortAddr};
use cpu::{CpuBus, CpuState, ExecutionEngine, Interpreter};
use iced_x86::code_asm::*;
use mmu::PhysMemory;

struct Bus {
    mem: PhysMemory,
    out: Vec<u8>,
}

impl CpuBus for Bus {
    fn memory(&mut self) -> &mut PhysMemory {
        &mut self.mem
    }
    fn mmio_read(&mut self, _: u32, _: GuestPhysAddr, s: AccessSize) -> u64 {
        s.mask()
    }
    fn mmio_write(&mut self, _: u32, _: GuestPhysAddr, _: AccessSize, _: u64) {}
    fn port_read(&mut self, _: PortAddr, s: AccessSize) -> u32 {
        s.mask() as u32
    }
    fn port_write(&mut self, p: PortAddr, _: AccessSize, v: u32) {
        if p.0 == 0xE9 {
            self.out.push(v as u8);
        }
    }
    fn interrupt_pending(&mut self) -> bool {
        false
    }
    fn acknowledge_interrupt(&mut self) -> Option<u8> {
        None
    }
    fn stop_requested(&mut self) -> bool {
        false
    }
}

fn bus_with(code: &[u8], at: u64) -> Bus {
    let mut mem = PhysMemory::new(1 << 20).unwrap();
    mem.map_ram(0, 1 << 20).unwrap();
    mem.load(GuestPhysAddr(at), code).unwrap();
    Bus { mem, out: Vec::new() }
}

fn main() {
    let mut a = CodeAssembler::new(64).unwrap();
    let mut top = a.create_label();
    a.xor(eax, eax).unwrap();
    // Loop iterations (6 guest instructions each); FERRO_SPEED_ITERS overrides.
    let iters: u32 = std::env::var("FERRO_SPEED_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(30_000_000);
    a.mov(ecx, iters).unwrap();
    a.mov(rsi, 0x8000u64).unwrap();
    a.set_label(&mut top).unwrap();
    a.add(rax, rcx).unwrap();
    a.mov(qword_ptr(rsi), rax).unwrap();
    a.xor(rdx, qword_ptr(rsi)).unwrap();
    a.shl(rdx, 1).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(top).unwrap();
    a.hlt().unwrap();
    let code = a.assemble(0x1000).unwrap();
    let mut bus = bus_with(&code, 0x1000);
    let mut cpu = CpuState::new_flat64();
    cpu.rip = 0x1000;
    let mut it = Interpreter::new();
    let t = std::time::Instant::now();
    let exit = it.run(&mut cpu, &mut bus, u64::MAX);
    let s = t.elapsed().as_secs_f64();
    println!("{exit:?} {} insns in {s:.3}s = {:.1} MIPS", cpu.icount, cpu.icount as f64 / s / 1e6);
}
