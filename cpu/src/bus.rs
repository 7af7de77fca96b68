//! The CPU's view of the machine. Defined here (the consumer), implemented by `machine`.

use base::{AccessSize, GuestPhysAddr, PortAddr};
use mmu::PhysMemory;

/// Everything outside the CPU core that an instruction can reach.
pub trait CpuBus {
    /// Guest physical memory: RAM and ROM bytes and the physical map.
    fn memory(&mut self) -> &mut PhysMemory;
    /// A read from an MMIO region with the given id.
    fn mmio_read(&mut self, id: u32, addr: GuestPhysAddr, size: AccessSize) -> u64;
    /// A write to an MMIO region with the given id.
    fn mmio_write(&mut self, id: u32, addr: GuestPhysAddr, size: AccessSize, value: u64);
    /// IN from a port.
    fn port_read(&mut self, port: PortAddr, size: AccessSize) -> u32;
    /// OUT to a port.
    fn port_write(&mut self, port: PortAddr, size: AccessSize, value: u32);
    /// Whether a maskable interrupt is being requested (INTR asserted).
    fn interrupt_pending(&mut self) -> bool;
    /// Acknowledges the pending interrupt (INTA cycle) and returns its vector.
    fn acknowledge_interrupt(&mut self) -> Option<u8>;
    /// Whether a device asked the run to stop (the exit device, a reset request, or a timer
    /// was reprogrammed and the run slice must be rescheduled).
    fn stop_requested(&mut self) -> bool;
    /// Called with the instruction count before every port or MMIO access, so devices can see
    /// the exact virtual time of the access. Buses without timed devices need not care.
    fn advance_clock(&mut self, icount: u64) {
        let _ = icount;
    }
    /// The guest wrote IA32_APIC_BASE (the CPU keeps the MSR value for RDMSR; a board with a
    /// local APIC moves or disables it). Buses without one need not care.
    fn apic_base_written(&mut self, value: u64) {
        let _ = value;
    }
    /// WRMSR IA32_TSC_DEADLINE: `value` in TSC ticks, `tsc_now` the TSC at the write (the
    /// board's local APIC converts to virtual time). Buses without a local APIC ignore it.
    fn write_tsc_deadline(&mut self, value: u64, tsc_now: u64) {
        let _ = (value, tsc_now);
    }
    /// RDMSR IA32_TSC_DEADLINE (0 without a local APIC or when disarmed).
    fn read_tsc_deadline(&mut self) -> u64 {
        0
    }
}

/// A bus with guest memory and nothing else, for tests, benches and tools that run bare code:
/// ports and MMIO read as open bus, bytes written to the debug-console port 0xE9 are kept in
/// [`RamBus::debug_out`], no interrupt is ever requested.
#[derive(Debug)]
pub struct RamBus {
    /// Guest physical memory.
    pub mem: PhysMemory,
    /// Bytes the guest wrote to port 0xE9.
    pub debug_out: Vec<u8>,
}

impl RamBus {
    /// A bus over `mem`.
    pub fn new(mem: PhysMemory) -> Self {
        RamBus { mem, debug_out: Vec::new() }
    }

    /// A bus with `ram_bytes` of RAM from address 0 and `code` loaded at `at`.
    pub fn with_code(ram_bytes: u64, code: &[u8], at: u64) -> Result<Self, mmu::PhysMemoryError> {
        let mut mem = PhysMemory::new(ram_bytes)?;
        mem.map_ram(0, ram_bytes)?;
        mem.load(GuestPhysAddr(at), code)?;
        Ok(Self::new(mem))
    }
}

impl CpuBus for RamBus {
    fn memory(&mut self) -> &mut PhysMemory {
        &mut self.mem
    }
    fn mmio_read(&mut self, _: u32, _: GuestPhysAddr, size: AccessSize) -> u64 {
        size.mask()
    }
    fn mmio_write(&mut self, _: u32, _: GuestPhysAddr, _: AccessSize, _: u64) {}
    fn port_read(&mut self, _: PortAddr, size: AccessSize) -> u32 {
        size.mask() as u32
    }
    fn port_write(&mut self, port: PortAddr, _: AccessSize, value: u32) {
        if port.0 == 0xE9 {
            self.debug_out.push(value as u8);
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
