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
}
