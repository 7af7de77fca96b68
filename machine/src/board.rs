//! The board: guest memory plus the chipset, glued to the CPU through [`CpuBus`].
//!
//! Interrupt lines of the ISA devices do not call into the PIC directly (the device that drives a
//! line is itself borrowed at that moment); each line records level changes in a shared queue
//! that the board drains into the PIC after every device access and timer advance. The queue is
//! in order, so edges are seen exactly as the devices produced them.

pub(crate) mod persist;

use base::{AccessSize, GuestPhysAddr, PortAddr, VirtualInstant};
use cpu::CpuBus;
use devices::fw_cfg::{E820Entry, FwCfg, FwCfgBuilder, E820_RAM};
use devices::{
    Access, AtaDiskConfig, BlockBackend, Bus, DebugCon, ExitDevice, I440fxHost, I8254Pit, I8259Pic, IoApic, IrqLine,
    LocalApic, Mc146818Rtc, MmioDevice, PciAddress, PciConfigIo, PciFunction, PciRoot, Piix3Isa, PiixIde, PioDevice,
    Port92, Timed, Uart16550, I8042,
};
use mmu::PhysMemory;
use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;

/// Port of the Bochs/QEMU debug console.
pub const DEBUGCON_PORT: u16 = 0xE9;
/// Port SeaBIOS writes its debug log to (QEMU's `-debugcon` with iobase 0x402).
pub const FIRMWARE_LOG_PORT: u16 = 0x402;
/// Port of the QEMU isa-debug-exit device.
pub const EXIT_PORT: u16 = 0xF4;
/// Base port of COM1.
pub const COM1_PORT: u16 = 0x3F8;
/// ISA IRQ of COM1.
const COM1_IRQ: u8 = 4;
/// ISA IRQ of the PIT's channel 0.
const PIT_IRQ: u8 = 0;
/// ISA IRQ of the keyboard.
const KBD_IRQ: u8 = 1;
/// ISA IRQ of the PS/2 mouse.
const AUX_IRQ: u8 = 12;
/// ISA IRQ of the RTC.
const RTC_IRQ: u8 = 8;
/// MMIO region ids of the board.
const MMIO_IOAPIC: u32 = 1;
const MMIO_LAPIC: u32 = 2;
/// I/O APIC ID (after the one CPU's local APIC ID 0, as SeaBIOS's MP table expects).
const IOAPIC_ID: u8 = 1;

/// The I/O APIC input an ISA IRQ reaches: the PIT's IRQ 0 is wired to pin 2 (the interrupt
/// source override that SeaBIOS's and QEMU's tables declare); the others to the pin of their
/// number.
fn ioapic_pin(isa_irq: u8) -> usize {
    if isa_irq == 0 {
        2
    } else {
        usize::from(isa_irq)
    }
}

/// ISA IRQs of the primary and secondary IDE channels.
const IDE_IRQS: [u8; 2] = [14, 15];

/// Where console output goes: the host's standard output or error, a capture buffer, or
/// several of these.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConsoleSink {
    pub(crate) stdout: bool,
    pub(crate) stderr: bool,
    pub(crate) capture: Option<Rc<RefCell<Vec<u8>>>>,
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.stdout {
            let mut o = std::io::stdout().lock();
            o.write_all(buf)?;
            o.flush()?;
        }
        if self.stderr {
            std::io::stderr().lock().write_all(buf)?;
        }
        if let Some(c) = &self.capture {
            c.borrow_mut().extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Level changes of ISA interrupt lines, in the order the devices made them.
#[derive(Debug, Clone, Default)]
pub(crate) struct IrqQueue(Rc<RefCell<Vec<(u8, bool)>>>);

/// One ISA interrupt line feeding an [`IrqQueue`].
#[derive(Debug, Clone)]
pub(crate) struct IsaIrq {
    line: u8,
    queue: IrqQueue,
}

impl IrqLine for IsaIrq {
    fn set_level(&self, high: bool) {
        self.queue.0.borrow_mut().push((self.line, high));
    }
}

impl IrqQueue {
    fn line(&self, line: u8) -> IsaIrq {
        IsaIrq { line, queue: self.clone() }
    }
}

/// The devices on the port bus. The bus maps port ranges to these tags; the board owns the
/// devices, so one chip can answer at several ranges (the PIT at 0x40 and port B at 0x61).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    DebugCon,
    FirmwareLog,
    Exit,
    Com1,
    Pic,
    Pit,
    PortB,
    Rtc,
    Kbc,
    Port92,
    PciConfig,
    Ide,
    FwCfg,
}

/// PCI bus 0 of the PC: the i440FX host bridge at 00:00.0, the PIIX3 ISA bridge at 00:01.0 and
/// its IDE function at 00:01.1. The IDE controller is also on the port bus, so the root owns
/// the functions by name rather than in a boxed slot table.
#[derive(Debug)]
struct PcPci {
    host: I440fxHost,
    isa: Piix3Isa,
    ide: PiixIde<IsaIrq>,
}

impl PciRoot for PcPci {
    fn function_mut(&mut self, addr: PciAddress) -> Option<&mut dyn PciFunction> {
        match (addr.bus, addr.dev, addr.func) {
            (0, 0, 0) => Some(&mut self.host),
            (0, 1, 0) => Some(&mut self.isa),
            (0, 1, 1) => Some(&mut self.ide),
            _ => None,
        }
    }
}

/// The chips of the board, rebuilt on a machine reset.
#[derive(Debug)]
struct Chips {
    debugcon: DebugCon<ConsoleSink>,
    fwlog: DebugCon<ConsoleSink>,
    exit: ExitDevice,
    com1: Uart16550<IsaIrq, ConsoleSink>,
    pic: I8259Pic,
    pit: I8254Pit<IsaIrq>,
    rtc: Mc146818Rtc<IsaIrq>,
    kbc: I8042<IsaIrq>,
    port92: Port92,
    pci: PciConfigIo<PcPci>,
    fw_cfg: FwCfg,
    lapic: LocalApic,
    ioapic: IoApic,
}

/// Everything the CPU reaches through [`CpuBus`].
#[derive(Debug)]
pub(crate) struct Board {
    pub(crate) mem: PhysMemory,
    ports: Bus<Port>,
    chips: Chips,
    irqs: IrqQueue,
    irq_pending: bool,
    sink: ConsoleSink,
    fwlog_sink: ConsoleSink,
    /// Unix time the RTC shows at virtual time 0 (a host input, recorded in the config).
    rtc_base: i64,
    ram_bytes: u64,
    /// The guest wrote this to the exit port.
    pub(crate) exit_value: Option<u32>,
    /// The guest asked for a reset (keyboard controller, port 0x92).
    pub(crate) reset_requested: bool,
    /// A timer was reprogrammed: the run slice must end so the deadline is recomputed.
    timers_dirty: bool,
    /// Virtual time of the current instruction.
    pub(crate) now: VirtualInstant,
    /// Virtual time that passed without instructions (HLT skipped ahead to a deadline).
    pub(crate) idle_time: u64,
}

impl Board {
    /// A board whose serial console and debug console write to `sink` and whose firmware log
    /// (port 0x402) writes to `fwlog_sink`.
    pub(crate) fn new(
        mem: PhysMemory,
        sink: ConsoleSink,
        fwlog_sink: ConsoleSink,
        rtc_base: i64,
        ram_bytes: u64,
    ) -> Result<Self, crate::MachineError> {
        let irqs = IrqQueue::default();
        let chips = Self::chips(&irqs, &sink, &fwlog_sink, rtc_base, ram_bytes);
        let mut mem = mem;
        mem.map_mmio(devices::ioapic::IOAPIC_DEFAULT_BASE, 0x1000, MMIO_IOAPIC)?;
        mem.map_mmio(devices::lapic::LAPIC_DEFAULT_BASE, devices::lapic::LAPIC_MMIO_SIZE, MMIO_LAPIC)?;
        let mut ports = Bus::new();
        for (base, len, tag) in [
            (u64::from(DEBUGCON_PORT), 1, Port::DebugCon),
            (u64::from(FIRMWARE_LOG_PORT), 1, Port::FirmwareLog),
            (u64::from(EXIT_PORT), 4, Port::Exit),
            (u64::from(COM1_PORT), 8, Port::Com1),
            (0x20, 2, Port::Pic),
            (0xA0, 2, Port::Pic),
            (0x4D0, 2, Port::Pic),
            (0x40, 4, Port::Pit),
            (0x61, 1, Port::PortB),
            (0x70, 2, Port::Rtc),
            (0x60, 1, Port::Kbc),
            (0x64, 1, Port::Kbc),
            (0x92, 1, Port::Port92),
            (0xCF8, 8, Port::PciConfig),
            (0x1F0, 8, Port::Ide),
            (0x3F6, 1, Port::Ide),
            (0x170, 8, Port::Ide),
            (0x376, 1, Port::Ide),
            (u64::from(devices::fw_cfg::FW_CFG_SELECTOR_PORT), 2, Port::FwCfg),
        ] {
            ports.insert(base, len, tag).map_err(|e| crate::MachineError::Wiring(e.to_string()))?;
        }
        Ok(Board {
            mem,
            ports,
            chips,
            irqs,
            irq_pending: false,
            sink,
            fwlog_sink,
            rtc_base,
            ram_bytes,
            exit_value: None,
            reset_requested: false,
            timers_dirty: false,
            now: VirtualInstant(0),
            idle_time: 0,
        })
    }

    fn chips(irqs: &IrqQueue, sink: &ConsoleSink, fwlog_sink: &ConsoleSink, rtc_base: i64, ram_bytes: u64) -> Chips {
        let mut rtc = Mc146818Rtc::new(irqs.line(RTC_IRQ), rtc_base);
        setup_cmos(&mut rtc, ram_bytes);
        Chips {
            debugcon: DebugCon::new(sink.clone()),
            fwlog: DebugCon::new(fwlog_sink.clone()),
            exit: ExitDevice::new(),
            com1: Uart16550::new(irqs.line(COM1_IRQ), sink.clone()),
            pic: I8259Pic::new(),
            pit: I8254Pit::new(irqs.line(PIT_IRQ)),
            rtc,
            kbc: I8042::new(irqs.line(KBD_IRQ), irqs.line(AUX_IRQ)),
            port92: Port92::new(),
            pci: PciConfigIo::new(PcPci {
                host: I440fxHost::new(),
                isa: Piix3Isa::new(),
                ide: PiixIde::new(irqs.line(IDE_IRQS[0]), irqs.line(IDE_IRQS[1])),
            }),
            fw_cfg: fw_cfg(ram_bytes),
            lapic: LocalApic::new(0, true),
            ioapic: IoApic::new(IOAPIC_ID),
        }
    }

    /// Attaches a disk to the IDE controller (`channel` 0 or 1, master or slave).
    pub(crate) fn attach_disk(
        &mut self,
        channel: usize,
        slave: bool,
        backend: Box<dyn BlockBackend>,
    ) -> Result<(), devices::IdeError> {
        self.chips.pci.root_mut().ide.attach(channel, slave, backend, AtaDiskConfig::default())
    }

    /// Puts every chip back in its power-on state (a machine reset; memory is kept). The RTC
    /// keeps running: it is battery-backed.
    pub(crate) fn reset_chips(&mut self) {
        let elapsed = self.chips.rtc.unix_time(self.now);
        self.irqs.0.borrow_mut().clear();
        let old = std::mem::replace(
            &mut self.chips,
            Self::chips(&self.irqs, &self.sink, &self.fwlog_sink, self.rtc_base, self.ram_bytes),
        );
        self.chips.rtc.set_time(elapsed, self.now);
        // The disks move over to the fresh controller.
        let mut old_pci = old.pci;
        for channel in 0..2 {
            for slave in [false, true] {
                let disk = old_pci.root_mut().ide.channel_mut(channel).and_then(|c| c.detach(slave));
                if let Some(backend) = disk {
                    if let Err(e) = self.attach_disk(channel, slave, backend) {
                        log::error!("reattaching IDE disk {channel}/{slave} after reset: {e}");
                    }
                }
            }
        }
        self.irqs.0.borrow_mut().clear();
        self.irq_pending = false;
        self.reset_requested = false;
        self.exit_value = None;
    }

    /// The earliest virtual instant at which a timer changes an interrupt line.
    pub(crate) fn next_deadline(&self) -> Option<VirtualInstant> {
        let c = &self.chips;
        [c.pit.next_deadline(), c.rtc.next_deadline(), c.lapic.next_deadline()].into_iter().flatten().min()
    }

    /// Brings every timer to `now` and delivers the resulting interrupt-line changes.
    pub(crate) fn advance_timers(&mut self, now: VirtualInstant) {
        self.now = now;
        self.chips.pit.advance_to(now);
        self.chips.rtc.advance_to(now);
        self.chips.lapic.advance_to(now);
        self.sync_irqs();
    }

    /// Drains the interrupt-line queue into the PIC and the I/O APIC, hands the I/O APIC's
    /// messages and the local APIC's EOI broadcasts on, and recomputes the CPU's interrupt input:
    /// a deliverable local-APIC vector, or the 8259's INTR where LINT0 passes it (virtual wire).
    fn sync_irqs(&mut self) {
        let c = &mut self.chips;
        let changes = std::mem::take(&mut *self.irqs.0.borrow_mut());
        for (line, level) in changes {
            c.pic.set_irq(line, level);
            c.ioapic.set_irq(ioapic_pin(line), level);
        }
        for vector in c.lapic.take_eoi_broadcasts() {
            c.ioapic.end_of_interrupt(vector);
        }
        c.ioapic.deliver_to(&mut c.lapic);
        for ipi in c.lapic.take_ipis() {
            log::debug!("IPI to another processor dropped (one CPU): {ipi:?}");
        }
        if c.lapic.take_nmi() {
            log::debug!("NMI delivered to the local APIC dropped (no NMI input modelled)");
        }
        self.irq_pending =
            c.lapic.pending_vector().is_some() || (c.pic.has_interrupt() && c.lapic.accepts_pic_interrupt());
    }

    /// The device behind a tag; `None` for port B, which is a side door of the PIT.
    fn device(&mut self, tag: Port) -> Option<&mut dyn PioDevice> {
        let c = &mut self.chips;
        Some(match tag {
            Port::DebugCon => &mut c.debugcon,
            Port::FirmwareLog => &mut c.fwlog,
            Port::Exit => &mut c.exit,
            Port::Com1 => &mut c.com1,
            Port::Pic => &mut c.pic,
            Port::Pit => &mut c.pit,
            Port::Rtc => &mut c.rtc,
            Port::Kbc => &mut c.kbc,
            Port::Port92 => &mut c.port92,
            Port::PciConfig => &mut c.pci,
            Port::Ide => &mut c.pci.root_mut().ide,
            Port::FwCfg => &mut c.fw_cfg,
            Port::PortB => return None,
        })
    }

    /// The MMIO device of region `id` and the region's base.
    fn mmio_device(&mut self, id: u32) -> Option<(&mut dyn MmioDevice, u64)> {
        match id {
            MMIO_IOAPIC => Some((&mut self.chips.ioapic, devices::ioapic::IOAPIC_DEFAULT_BASE)),
            MMIO_LAPIC => Some((&mut self.chips.lapic, devices::lapic::LAPIC_DEFAULT_BASE)),
            _ => None,
        }
    }

    /// The device at a port: the fixed map, then the IDE bus-master block wherever BAR4 puts it.
    fn lookup_port(&self, port: PortAddr, n: usize) -> Option<(Port, u64)> {
        if let Some((&tag, offset)) = self.ports.lookup(u64::from(port.0), n as u64) {
            return Some((tag, offset));
        }
        let base = self.chips.pci.root().ide.bus_master_base()?;
        let off = port.0.checked_sub(base)?;
        (usize::from(off) + n <= 16).then_some((Port::Ide, u64::from(off)))
    }

    /// After a write: collect exit and reset requests and note reprogrammed timers.
    fn after_write(&mut self, tag: Port) {
        match tag {
            Port::Exit => {
                if let Some(v) = self.chips.exit.take_exit() {
                    self.exit_value = Some(v);
                }
            }
            Port::Kbc if self.chips.kbc.take_reset_request() => self.reset_requested = true,
            Port::Port92 if self.chips.port92.take_reset_request() => self.reset_requested = true,
            Port::PciConfig if self.chips.pci.take_reset_request().is_some() => self.reset_requested = true,
            Port::Pit | Port::PortB | Port::Rtc => self.timers_dirty = true,
            _ => {}
        }
    }
}

/// The firmware configuration SeaBIOS reads: RAM size and map, one CPU, its console mirrored
/// to COM1, the first IDE disk first in the boot order.
fn fw_cfg(ram_bytes: u64) -> FwCfg {
    let builder = FwCfgBuilder::new()
        .ram_size(ram_bytes)
        .e820(&[E820Entry { addr: 0, len: ram_bytes, kind: E820_RAM }])
        .sercon_port(COM1_PORT)
        .bootorder(&["/pci@i0cf8/ide@1,1/drive@0/disk@0"]);
    match builder.build() {
        Ok(f) => f,
        Err(e) => {
            // The items above are fixed and valid; an error here is a programming error.
            log::error!("fw_cfg: {e}");
            FwCfgBuilder::new().build().unwrap_or_else(|_| unreachable!("an empty fw_cfg always builds"))
        }
    }
}

/// The CMOS bytes a PC BIOS reads for the memory size (as QEMU's `pc_cmos_init` sets them).
fn setup_cmos<I: IrqLine>(rtc: &mut Mc146818Rtc<I>, ram_bytes: u64) {
    let kib_above_1m = (ram_bytes.saturating_sub(1 << 20) >> 10).min(0xFFFF) as u16;
    let above_16m = (ram_bytes.saturating_sub(16 << 20) >> 16).min(0xFFFF) as u16;
    let [b0, b1] = 640u16.to_le_bytes();
    rtc.set_cmos(0x15, b0);
    rtc.set_cmos(0x16, b1);
    let [e0, e1] = kib_above_1m.to_le_bytes();
    for (lo, hi) in [(0x17, 0x18), (0x30, 0x31)] {
        rtc.set_cmos(lo, e0);
        rtc.set_cmos(hi, e1);
    }
    let [h0, h1] = above_16m.to_le_bytes();
    rtc.set_cmos(0x34, h0);
    rtc.set_cmos(0x35, h1);
    // Boot order: hard disk first (QEMU's encoding: 2 = disk), then nothing.
    rtc.set_cmos(0x3D, 0x02);
    rtc.set_cmos(0x38, 0x00);
}

impl CpuBus for Board {
    fn memory(&mut self) -> &mut PhysMemory {
        &mut self.mem
    }

    fn mmio_read(&mut self, id: u32, addr: GuestPhysAddr, size: AccessSize) -> u64 {
        let now = self.now;
        let Some((dev, base)) = self.mmio_device(id) else {
            log::debug!("MMIO read of unclaimed region {id} at {:#x} ({} bytes): open bus", addr.0, size.bytes());
            return size.mask();
        };
        let mut buf = [0xFFu8; 8];
        let n = size.bytes();
        dev.read(Access { offset: addr.0.wrapping_sub(base), addr: addr.0, now }, &mut buf[..n]);
        self.sync_irqs();
        u64::from_le_bytes(buf) & size.mask()
    }

    fn mmio_write(&mut self, id: u32, addr: GuestPhysAddr, size: AccessSize, value: u64) {
        let now = self.now;
        let Some((dev, base)) = self.mmio_device(id) else {
            log::debug!(
                "MMIO write of unclaimed region {id} at {:#x} ({} bytes) = {value:#x} dropped",
                addr.0,
                size.bytes()
            );
            return;
        };
        let n = size.bytes();
        dev.write(Access { offset: addr.0.wrapping_sub(base), addr: addr.0, now }, &value.to_le_bytes()[..n]);
        if id == MMIO_LAPIC {
            // The timer may have been reprogrammed.
            self.timers_dirty = true;
        }
        self.sync_irqs();
    }

    fn port_read(&mut self, port: PortAddr, size: AccessSize) -> u32 {
        let n = size.bytes();
        let now = self.now;
        let Some((tag, offset)) = self.lookup_port(port, n) else {
            log::debug!("IN from unclaimed port {:#x} ({n} bytes): open bus", port.0);
            return size.mask() as u32;
        };
        let mut buf = [0xFFu8; 4];
        match self.device(tag) {
            Some(d) => d.read(Access { offset, addr: u64::from(port.0), now }, &mut buf[..n]),
            None => buf[0] = self.chips.pit.read_port_b(now),
        }
        self.sync_irqs();
        u32::from_le_bytes(buf) & size.mask() as u32
    }

    fn port_write(&mut self, port: PortAddr, size: AccessSize, value: u32) {
        let n = size.bytes();
        let now = self.now;
        let Some((tag, offset)) = self.lookup_port(port, n) else {
            log::debug!("OUT to unclaimed port {:#x} ({n} bytes) = {value:#x} dropped", port.0);
            return;
        };
        match self.device(tag) {
            Some(d) => d.write(Access { offset, addr: u64::from(port.0), now }, &value.to_le_bytes()[..n]),
            None => self.chips.pit.write_port_b(value as u8, now),
        }
        self.after_write(tag);
        self.sync_irqs();
    }

    fn interrupt_pending(&mut self) -> bool {
        self.irq_pending
    }

    fn acknowledge_interrupt(&mut self) -> Option<u8> {
        let c = &mut self.chips;
        let v = match c.lapic.acknowledge() {
            Some(v) => Some(v),
            None if c.lapic.accepts_pic_interrupt() => c.pic.acknowledge(),
            None => None,
        };
        self.sync_irqs();
        v
    }

    fn stop_requested(&mut self) -> bool {
        self.exit_value.is_some() || self.reset_requested || std::mem::take(&mut self.timers_dirty)
    }

    fn advance_clock(&mut self, icount: u64) {
        self.now = VirtualInstant(icount.wrapping_add(self.idle_time));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board() -> Board {
        let mut mem = PhysMemory::new(2 << 20).unwrap();
        mem.map_ram(0, 2 << 20).unwrap();
        let mut b = Board::new(mem, ConsoleSink::default(), ConsoleSink::default(), 0, 2 << 20).unwrap();
        b.attach_disk(0, false, Box::new(devices::MemBackend::zeroed(1 << 20))).unwrap();
        b
    }

    /// A small deterministic PRNG (xorshift64*).
    fn rng(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    #[test]
    fn test_board_random_writes_to_every_port_never_panic() {
        let mut b = board();
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        for round in 0..3 {
            for port in 0..=0xFFFFu16 {
                for size in [AccessSize::Byte, AccessSize::Word, AccessSize::Dword] {
                    b.advance_clock(u64::from(port) * 10 + round);
                    let v = rng(&mut s) as u32;
                    b.port_write(PortAddr(port), size, v);
                    let r = b.port_read(PortAddr(port), size);
                    assert_eq!(u64::from(r) & !size.mask(), 0, "port {port:#x} returned bits beyond its width");
                }
            }
            let now = VirtualInstant(1 << 30);
            b.advance_timers(now);
            let _ = b.acknowledge_interrupt();
            let _ = b.stop_requested();
        }
    }

    #[test]
    fn test_board_unclaimed_ports_and_mmio_read_all_ones() {
        let mut b = board();
        for port in [0x0100u16, 0x2F8, 0x5000, 0xFFFF] {
            assert_eq!(b.port_read(PortAddr(port), AccessSize::Byte), 0xFF);
            assert_eq!(b.port_read(PortAddr(port), AccessSize::Word), 0xFFFF);
            assert_eq!(b.port_read(PortAddr(port), AccessSize::Dword), 0xFFFF_FFFF);
        }
        assert_eq!(b.mmio_read(7, GuestPhysAddr(0xFEE0_0000), AccessSize::Qword), u64::MAX);
        // PCI configuration reads of an absent device return all ones (device 5 of bus 0).
        b.port_write(PortAddr(0xCF8), AccessSize::Dword, 0x8000_2800);
        assert_eq!(b.port_read(PortAddr(0xCFC), AccessSize::Dword), 0xFFFF_FFFF);
        // ... and of the host bridge its IDs: Intel 82441FX.
        b.port_write(PortAddr(0xCF8), AccessSize::Dword, 0x8000_0000);
        assert_eq!(b.port_read(PortAddr(0xCFC), AccessSize::Dword), 0x1237_8086);
    }

    #[test]
    fn test_board_reset_requests_from_kbc_port92_and_cf9() {
        for (port, value) in [(0x64u16, 0xFEu32), (0x92, 0x01), (0xCF9, 0x06)] {
            let mut b = board();
            b.port_write(PortAddr(port), AccessSize::Byte, value);
            assert!(b.reset_requested, "port {port:#x} = {value:#x} should request a reset");
            assert!(b.stop_requested());
        }
    }
}
