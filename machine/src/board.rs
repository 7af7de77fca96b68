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
    LocalApic, Mc146818Rtc, MmioDevice, PciAddress, PciConfigIo, PciFunction, PciRoot, Piix3Isa, Piix4Pm, PiixIde,
    PioDevice, Port92, Timed, Uart16550, VirtioBlk, I8042,
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

/// Where the PIIX4 PM I/O block is (SeaBIOS's choice, programmed by the board itself for a
/// direct kernel boot) and what the ACPI tables say.
pub const PM_IO_BASE: u16 = 0x600;

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
    Pm,
    Virtio,
}

/// PCI bus 0 of the PC: the i440FX host bridge at 00:00.0, the PIIX3 ISA bridge at 00:01.0,
/// its IDE function at 00:01.1 and the PIIX4 power management function at 00:01.3 (as on
/// QEMU's `pc` machine). The IDE and PM functions are also on the port bus, so the root owns
/// the functions by name rather than in a boxed slot table.
#[derive(Debug)]
struct PcPci {
    host: I440fxHost,
    isa: Piix3Isa,
    ide: PiixIde<IsaIrq>,
    pm: Piix4Pm<IsaIrq>,
    /// A virtio-blk disk at 00:03.0, if attached.
    virtio: Option<VirtioBlk<IsaIrq>>,
}

/// PCI slot of the virtio-blk function.
pub const VIRTIO_BLK_SLOT: u8 = 3;
/// Interrupt-queue line numbers from 16 up are PCI PIRQ lines A-D: the board raises I/O APIC
/// pin 16 + n (the GSI the DSDT's `_PRT` names) and the ISA IRQ the PIIX3 routes PIRQ n to.
const PIRQ_LINE_BASE: u8 = 16;

impl PciRoot for PcPci {
    fn function_mut(&mut self, addr: PciAddress) -> Option<&mut dyn PciFunction> {
        match (addr.bus, addr.dev, addr.func) {
            (0, 0, 0) => Some(&mut self.host),
            (0, 1, 0) => Some(&mut self.isa),
            (0, 1, 1) => Some(&mut self.ide),
            (0, 1, 3) => Some(&mut self.pm),
            (0, VIRTIO_BLK_SLOT, 0) => self.virtio.as_mut().map(|v| v as &mut dyn PciFunction),
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

/// The number of timer sources [`Board::timer_deadlines`] reports.
pub(crate) const TIMERS: usize = 5;
/// Per timer source: after this many consecutive firings that woke nothing, a halted CPU's
/// skip-ahead ignores it (see `Machine::run_limited`); the RTC and the PM timer never (the PM
/// timer's carry has no deadline while its status bit is set) and serial input never.
pub(crate) const TIMER_QUIET_AFTER: [u8; TIMERS] = [2, u8::MAX, 2, u8::MAX, u8::MAX];

/// Everything the CPU reaches through [`CpuBus`].
#[derive(Debug)]
pub(crate) struct Board {
    pub(crate) mem: PhysMemory,
    ports: Bus<Port>,
    chips: Chips,
    irqs: IrqQueue,
    irq_pending: bool,
    /// The local APIC accepted an NMI the CPU has not taken yet.
    nmi_pending: bool,
    sink: ConsoleSink,
    fwlog_sink: ConsoleSink,
    /// Unix time the RTC shows at virtual time 0 (a host input, recorded in the config).
    rtc_base: i64,
    ram_bytes: u64,
    /// The guest wrote this to the exit port.
    pub(crate) exit_value: Option<u32>,
    /// The guest asked for a reset (keyboard controller, port 0x92).
    pub(crate) reset_requested: bool,
    /// Through what the guest last asked for a reset (for the message that ends a run).
    pub(crate) reset_cause: Option<&'static str>,
    /// The guest entered S5 (soft-off) through the PIIX4 PM control register.
    pub(crate) power_off: bool,
    /// Guest-physical pages mapped for the local APIC (its default base, and each base the
    /// guest moved it to).
    lapic_windows: Vec<u64>,
    /// Host input waiting for COM1.
    pub(crate) serial_in: crate::serial_input::SerialInput,
    /// A device wrote guest memory by DMA over code the CPU has decoded: the engine must drop
    /// its decoded code before running on.
    pub(crate) code_written: bool,
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
            (u64::from(devices::piix4_pm::PIIX4_GPE0_PORT), u64::from(devices::piix4_pm::PIIX4_GPE0_LEN), Port::Pm),
            (u64::from(devices::piix4_pm::APM_CNT_PORT), 2, Port::Pm),
        ] {
            ports.insert(base, len, tag).map_err(|e| crate::MachineError::Wiring(e.to_string()))?;
        }
        Ok(Board {
            mem,
            ports,
            chips,
            irqs,
            irq_pending: false,
            nmi_pending: false,
            sink,
            fwlog_sink,
            rtc_base,
            ram_bytes,
            exit_value: None,
            reset_requested: false,
            reset_cause: None,
            power_off: false,
            serial_in: Default::default(),
            lapic_windows: vec![devices::lapic::LAPIC_DEFAULT_BASE],
            code_written: false,
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
                ide: {
                    let mut ide = PiixIde::new(irqs.line(IDE_IRQS[0]), irqs.line(IDE_IRQS[1]));
                    // The board runs the bus master (`after_write`), so IDENTIFY may say so.
                    ide.set_dma_advertised(true);
                    ide
                },
                pm: Piix4Pm::new(irqs.line(devices::piix4_pm::PIIX4_SCI_IRQ)),
                virtio: None,
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

    /// Attaches a virtio-blk disk at 00:03.0 (one only).
    pub(crate) fn attach_virtio_disk(&mut self, backend: Box<dyn BlockBackend>) -> Result<(), crate::MachineError> {
        let root = self.chips.pci.root_mut();
        if root.virtio.is_some() {
            return Err(crate::MachineError::TooManyVirtioDisks);
        }
        let pirq = crate::acpi::pci_pirq(VIRTIO_BLK_SLOT, 0);
        root.virtio = Some(VirtioBlk::new(self.irqs.line(PIRQ_LINE_BASE + pirq), backend));
        Ok(())
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
        // The disks move over to the fresh controllers.
        let mut old_pci = old.pci;
        if let Some(v) = old_pci.root_mut().virtio.take() {
            if let Err(e) = self.attach_virtio_disk(v.into_disk()) {
                log::error!("reattaching the virtio disk after reset: {e}");
            }
        }
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
        self.nmi_pending = false;
        self.reset_requested = false;
        self.power_off = false;
        self.exit_value = None;
    }

    /// Programs the PM I/O block at [`PM_IO_BASE`] as firmware would (direct kernel boot).
    pub(crate) fn enable_pm_io(&mut self) {
        self.chips.pci.root_mut().pm.enable_pm_io(PM_IO_BASE);
    }

    /// The sector data the IDE controller moved, by path (DMA or PIO).
    pub(crate) fn ide_transfer_stats(&self) -> devices::IdeTransferStats {
        self.chips.pci.root().ide.transfer_stats()
    }

    /// Turns on the IDE channels' decode as firmware would (direct kernel boot).
    pub(crate) fn enable_ide_decode(&mut self) {
        self.chips.pci.root_mut().ide.enable_decode();
    }

    /// Presses the ACPI power button (PWRBTN_STS; an OS that enabled the event gets an SCI).
    pub(crate) fn press_power_button(&mut self) {
        self.chips.pci.root_mut().pm.press_power_button();
        self.sync_irqs();
    }

    /// The earliest virtual instant at which a timer changes an interrupt line.
    pub(crate) fn next_deadline(&self) -> Option<VirtualInstant> {
        self.timer_deadlines().into_iter().flatten().min()
    }

    /// Each timer's next deadline: PIT channel 0, RTC, local APIC timer, PM timer carry, the
    /// next serial input (in that order).
    pub(crate) fn timer_deadlines(&self) -> [Option<VirtualInstant>; TIMERS] {
        let c = &self.chips;
        [
            c.pit.next_deadline(),
            c.rtc.next_deadline(),
            c.lapic.next_deadline(),
            c.pci.root().pm.next_deadline(),
            self.serial_in.next_deadline(),
        ]
    }

    /// Whether an interrupt can be delivered to the CPU now (as `CpuBus::interrupt_pending`).
    pub(crate) fn irq_pending(&self) -> bool {
        self.irq_pending
    }

    /// Brings every timer to `now` and delivers the resulting interrupt-line changes.
    pub(crate) fn advance_timers(&mut self, now: VirtualInstant) {
        self.now = now;
        self.chips.pit.advance_to(now);
        self.chips.rtc.advance_to(now);
        self.chips.lapic.advance_to(now);
        self.chips.pci.root_mut().pm.advance_to(now);
        self.serial_in.poll_source(now);
        self.serial_in.deliver(now, &mut self.chips.com1);
        self.sync_irqs();
    }

    /// Drains the interrupt-line queue into the PIC and the I/O APIC, hands the I/O APIC's
    /// messages and the local APIC's EOI broadcasts on, and recomputes the CPU's interrupt input:
    /// a deliverable local-APIC vector, or the 8259's INTR where LINT0 passes it (virtual wire).
    fn sync_irqs(&mut self) {
        let c = &mut self.chips;
        let changes = std::mem::take(&mut *self.irqs.0.borrow_mut());
        for (line, level) in changes {
            if line >= PIRQ_LINE_BASE {
                // A PCI interrupt: the I/O APIC pin the _PRT names, and the 8259 input the PIIX3
                // routes the PIRQ to (if the firmware set a route).
                if let Some(irq) = c.pci.root().isa.pirq_route(usize::from(line - PIRQ_LINE_BASE)) {
                    c.pic.set_irq(irq, level);
                }
                c.ioapic.set_irq(usize::from(line), level);
                continue;
            }
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
            // Handed to the CPU through `CpuBus::take_nmi` (vector 2, not masked by IF).
            self.nmi_pending = true;
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
            Port::Pm => &mut c.pci.root_mut().pm,
            Port::Virtio => return c.pci.root_mut().virtio.as_mut().map(|v| v as &mut dyn PioDevice),
            Port::PortB => return None,
        })
    }

    /// Where IA32_APIC_BASE puts the local APIC's registers.
    fn lapic_base(&self) -> u64 {
        self.chips.lapic.base_msr() & 0x000F_FFFF_FFFF_F000
    }

    /// The MMIO device of region `id` at `addr` and the region's base. The local APIC answers
    /// only in the page IA32_APIC_BASE names, and not at all while globally disabled.
    fn mmio_device(&mut self, id: u32, addr: u64) -> Option<(&mut dyn MmioDevice, u64)> {
        match id {
            MMIO_IOAPIC => Some((&mut self.chips.ioapic, devices::ioapic::IOAPIC_DEFAULT_BASE)),
            MMIO_LAPIC => {
                let base = self.lapic_base();
                let here = addr & !(devices::lapic::LAPIC_MMIO_SIZE - 1) == base;
                (here && self.chips.lapic.hw_enabled()).then_some((&mut self.chips.lapic as &mut dyn MmioDevice, base))
            }
            _ => None,
        }
    }

    /// The device at a port: the fixed map, then the IDE bus-master block wherever BAR4 puts it.
    fn lookup_port(&self, port: PortAddr, n: usize) -> Option<(Port, u64)> {
        if let Some((&tag, offset)) = self.ports.lookup(u64::from(port.0), n as u64) {
            return Some((tag, offset));
        }
        let root = self.chips.pci.root();
        if root.pm.claims(port.0, n) {
            return Some((Port::Pm, 0));
        }
        if let Some(base) = root.virtio.as_ref().and_then(|v| v.io_base()) {
            if let Some(off) = port.0.checked_sub(base) {
                if u32::from(off) + n as u32 <= u32::from(devices::virtio_blk::VIRTIO_BAR_SIZE) {
                    return Some((Port::Virtio, u64::from(off)));
                }
            }
        }
        let base = root.ide.bus_master_base()?;
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
            Port::Kbc if self.chips.kbc.take_reset_request() => {
                self.reset_requested = true;
                self.reset_cause = Some("the keyboard controller (command 0xFE)");
            }
            Port::Port92 if self.chips.port92.take_reset_request() => {
                self.reset_requested = true;
                self.reset_cause = Some("port 0x92 (fast reset)");
            }
            Port::PciConfig if self.chips.pci.take_reset_request().is_some() => {
                self.reset_requested = true;
                self.reset_cause = Some("the reset control register 0xCF9 (the ACPI reset register)");
            }
            Port::Pit | Port::PortB | Port::Rtc => self.timers_dirty = true,
            Port::Ide if self.chips.pci.root().ide.dma_pending() => {
                let Board { mem, chips, code_written, .. } = self;
                let mut dma = BoardDma { mem, code_written };
                chips.pci.root_mut().ide.run_dma(&mut dma);
            }
            Port::Virtio => {
                let Board { mem, chips, code_written, .. } = self;
                if let Some(v) = chips.pci.root_mut().virtio.as_mut().filter(|v| v.pending()) {
                    v.run(&mut BoardDma { mem, code_written });
                }
            }
            Port::Pm => {
                // PM1 enable may have armed the timer carry.
                self.timers_dirty = true;
                match self.chips.pci.root_mut().pm.take_sleep_request() {
                    Some(0) => self.power_off = true,
                    Some(t) => log::info!("ACPI sleep type {t} requested: not supported, ignored"),
                    None => {}
                }
            }
            _ => {}
        }
    }
}

/// Guest RAM as bus-master devices see it. Writes over pages holding decoded code set
/// `code_written` (the machine then drops the engine's decoded code, as a CPU store would).
struct BoardDma<'a> {
    mem: &'a mut PhysMemory,
    code_written: &'a mut bool,
}

impl BoardDma<'_> {
    /// The backing range of each RAM piece of `[addr, addr + len)`.
    fn pieces(&self, addr: u64, len: usize) -> Result<Vec<(usize, usize)>, devices::DmaFault> {
        let mut out = Vec::new();
        let mut done = 0usize;
        while done < len {
            let a = addr.wrapping_add(done as u64);
            let region = self.mem.lookup(GuestPhysAddr(a)).copied().ok_or(devices::DmaFault { addr: a })?;
            let mmu::RegionKind::Ram { backing } = region.kind else {
                return Err(devices::DmaFault { addr: a });
            };
            let n = ((region.end() - a) as usize).min(len - done);
            out.push(((backing + a - region.start) as usize, n));
            done += n;
        }
        Ok(out)
    }
}

impl devices::DmaMemory for BoardDma<'_> {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), devices::DmaFault> {
        let mut done = 0;
        for (off, n) in self.pieces(addr, buf.len())? {
            let src = self.mem.backing().get(off..off + n).ok_or(devices::DmaFault { addr })?;
            buf[done..done + n].copy_from_slice(src);
            done += n;
        }
        Ok(())
    }

    fn write(&mut self, addr: u64, buf: &[u8]) -> Result<(), devices::DmaFault> {
        let mut done = 0;
        for (off, n) in self.pieces(addr, buf.len())? {
            if n == 0 {
                continue;
            }
            for page in off as u64 / mmu::PAGE_SIZE..=(off + n - 1) as u64 / mmu::PAGE_SIZE {
                if self.mem.clear_code_page(page) {
                    *self.code_written = true;
                }
            }
            self.mem.dirty_log().record(off as u64, n as u64);
            let dst = self.mem.backing_mut().get_mut(off..off + n).ok_or(devices::DmaFault { addr })?;
            dst.copy_from_slice(&buf[done..done + n]);
            done += n;
        }
        Ok(())
    }
}

/// The ACPI tables of this board with `ram_bytes` of RAM.
pub(crate) fn acpi_tables(ram_bytes: u64) -> crate::acpi::AcpiTables {
    crate::acpi::build_tables(&crate::acpi::AcpiConfig {
        pm_io_base: PM_IO_BASE,
        ioapic_id: IOAPIC_ID,
        pci_hole_start: u32::try_from(ram_bytes).unwrap_or(u32::MAX).max(0x10_0000),
        ..Default::default()
    })
}

/// The firmware configuration SeaBIOS reads: RAM size and map, one CPU, its console mirrored
/// to COM1, the first IDE disk first in the boot order, the ACPI tables with their loader
/// script (QEMU's `etc/acpi/tables`, `etc/acpi/rsdp`, `etc/table-loader`).
fn fw_cfg(ram_bytes: u64) -> FwCfg {
    let mut builder = FwCfgBuilder::new()
        .ram_size(ram_bytes)
        .e820(&[E820Entry { addr: 0, len: ram_bytes, kind: E820_RAM }])
        .sercon_port(COM1_PORT)
        .bootorder(&["/pci@i0cf8/ide@1,1/drive@0/disk@0"]);
    for (name, data) in acpi_tables(ram_bytes).fw_cfg_files() {
        builder = match builder.clone().file(name, data) {
            Ok(b) => b,
            Err(e) => {
                log::error!("fw_cfg: {e}");
                builder
            }
        };
    }
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
        let Some((dev, base)) = self.mmio_device(id, addr.0) else {
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
        let Some((dev, base)) = self.mmio_device(id, addr.0) else {
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
        if tag == Port::Com1 {
            // A read may have freed FIFO space for input that is already due.
            self.serial_in.deliver(now, &mut self.chips.com1);
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

    fn take_nmi(&mut self) -> bool {
        std::mem::take(&mut self.nmi_pending)
    }

    fn stop_requested(&mut self) -> bool {
        // A latched NMI ends the run: the next one delivers it (see `CpuBus::take_nmi`).
        self.exit_value.is_some()
            || self.reset_requested
            || self.power_off
            || self.code_written
            || std::mem::take(&mut self.timers_dirty)
            || self.nmi_pending
    }

    fn advance_clock(&mut self, icount: u64) {
        self.now = VirtualInstant(icount.wrapping_add(self.idle_time));
    }

    /// IA32_TSC_DEADLINE: the TSC and virtual time run in step (both advance one per
    /// instruction and by the same amount when a halt skips ahead), so the deadline's virtual
    /// instant is `now + (value - tsc_now)`.
    fn write_tsc_deadline(&mut self, value: u64, tsc_now: u64) {
        let now = self.now;
        let at = VirtualInstant(now.0.saturating_add(value.saturating_sub(tsc_now)));
        self.chips.lapic.write_tsc_deadline(value, at, now);
        self.chips.lapic.advance_to(now);
        self.timers_dirty = true;
        self.sync_irqs();
    }

    fn read_tsc_deadline(&mut self) -> u64 {
        self.chips.lapic.tsc_deadline()
    }

    /// IA32_APIC_BASE: the local APIC answers at the new base (mapped on first use; the old
    /// window then reads as open bus), or nowhere while globally disabled, when the 8259's
    /// INTR goes straight to the CPU.
    fn apic_base_written(&mut self, value: u64) {
        self.chips.lapic.set_base_msr(value);
        let base = self.lapic_base();
        if !self.lapic_windows.contains(&base) {
            match self.mem.map_mmio(base, devices::lapic::LAPIC_MMIO_SIZE, MMIO_LAPIC) {
                Ok(()) => self.lapic_windows.push(base),
                Err(e) => log::debug!("local APIC moved to {base:#x}, which cannot be mapped: {e}"),
            }
        }
        self.timers_dirty = true;
        self.sync_irqs();
    }

    fn fpu_error(&mut self) {
        // FERR# reaches the 8259 as IRQ 13 (an edge: the chipset latches it).
        self.irqs.0.borrow_mut().extend([(13, true), (13, false)]);
        self.sync_irqs();
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

    /// Random port writes and reads with the bus-master devices programmed to decode: the IDE
    /// bus master at 0xC000, virtio-blk at 0xC100 with random rings in RAM, the PM block at
    /// 0x600. Nothing panics or hangs.
    #[test]
    fn test_board_random_device_programs_never_panic() {
        let mut b = board();
        b.attach_virtio_disk(Box::new(devices::MemBackend::zeroed(1 << 20))).unwrap();
        b.enable_pm_io();
        for (devfn, bar, v) in [(0x09u32, 0x20u32, 0xC001u32), (0x18, 0x10, 0xC101)] {
            b.port_write(PortAddr(0xCF8), AccessSize::Dword, 0x8000_0000 | (devfn << 8) | bar);
            b.port_write(PortAddr(0xCFC), AccessSize::Dword, v);
            b.port_write(PortAddr(0xCF8), AccessSize::Dword, 0x8000_0000 | (devfn << 8) | 4);
            b.port_write(PortAddr(0xCFC), AccessSize::Word, 5);
        }
        let mut s = 0x0123_4567_89AB_CDEFu64;
        let ports: Vec<u16> = (0xC000..0xC010).chain(0xC100..0xC200).chain(0x1F0..0x1F8).chain(0x600..0x640).collect();
        for i in 0..200_000u64 {
            let r = rng(&mut s);
            if r & 7 == 0 {
                // Scribble on low RAM, where the rings and PRD tables point half the time.
                let addr = (r >> 8) % 0x10000;
                b.mem.load(GuestPhysAddr(addr), &(r >> 3).to_le_bytes()).unwrap();
            }
            let port = ports[((r >> 20) % ports.len() as u64) as usize];
            let size = [AccessSize::Byte, AccessSize::Word, AccessSize::Dword][((r >> 40) % 3) as usize];
            let v = (rng(&mut s) % 0x20000) as u32;
            b.advance_clock(i * 50);
            if r & (1 << 50) != 0 {
                b.port_write(PortAddr(port), size, v);
            } else {
                let _ = b.port_read(PortAddr(port), size);
            }
        }
        let _ = b.stop_requested();
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

    /// IDE bus-master DMA as ata_piix programs it: BAR4, a PRD table, READ DMA, start; the data
    /// lands in RAM, the bus master reports the interrupt, IRQ 14 rises, and a DMA write over
    /// decoded code asks the machine to drop it.
    #[test]
    fn test_board_ide_bus_master_dma_read() {
        let mut mem = PhysMemory::new(2 << 20).unwrap();
        mem.map_ram(0, 2 << 20).unwrap();
        let mut b = Board::new(mem, ConsoleSink::default(), ConsoleSink::default(), 0, 2 << 20).unwrap();
        let disk: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + (i >> 9)) as u8).collect();
        b.attach_disk(0, false, Box::new(devices::MemBackend::new(disk.clone()))).unwrap();
        let out = |b: &mut Board, port: u16, size: AccessSize, v: u32| b.port_write(PortAddr(port), size, v);
        // 00:01.1 BAR4 = 0xC000, I/O and bus master on.
        out(&mut b, 0xCF8, AccessSize::Dword, 0x8000_0920);
        out(&mut b, 0xCFC, AccessSize::Dword, 0xC001);
        out(&mut b, 0xCF8, AccessSize::Dword, 0x8000_0904);
        out(&mut b, 0xCFC, AccessSize::Word, 0x0005);
        // PRD table at 0x1000: 1 KiB at 0x20000 (end of table), and the page marked as code.
        b.mem.load(GuestPhysAddr(0x1000), &[0x00, 0x00, 0x02, 0x00, 0x00, 0x04, 0x00, 0x80]).unwrap();
        b.mem.mark_code_page(0x20);
        out(&mut b, 0xC004, AccessSize::Dword, 0x1000);
        // READ DMA of LBA 5, 2 sectors; then start the bus master towards memory.
        for (port, v) in [(0x1F6u16, 0xE0u32), (0x1F2, 2), (0x1F3, 5), (0x1F4, 0), (0x1F5, 0), (0x1F7, 0xC8)] {
            out(&mut b, port, AccessSize::Byte, v);
        }
        assert!(!b.code_written);
        b.mem.dirty_log().set_on(true);
        out(&mut b, 0xC000, AccessSize::Byte, 0x09);
        let mut got = vec![0u8; 1024];
        b.mem.read(GuestPhysAddr(0x20000), &mut got).unwrap();
        assert_eq!(got, disk[5 * 512..7 * 512]);
        let mut dirty = Vec::new();
        let _ = b.mem.dirty_log().take(|p| dirty.push(p));
        assert_eq!(dirty, [0x20], "the page the DMA wrote is in the dirty log (lockstep compares it)");
        assert!(b.code_written, "DMA over decoded code must invalidate it");
        assert!(!b.mem.is_code_page(0x20));
        let bm_status = b.port_read(PortAddr(0xC002), AccessSize::Byte);
        assert_eq!(bm_status & 0x05, 0x04, "interrupt set, no longer active: {bm_status:#x}");
        assert!(b.chips.pic.has_interrupt() || b.irq_pending(), "IRQ 14");
        assert_eq!(b.port_read(PortAddr(0x1F7), AccessSize::Byte) & 0x89, 0, "not busy, no DRQ, no error");
        let moved = b.ide_transfer_stats();
        assert_eq!((moved.dma_read_bytes, moved.dma_write_bytes, moved.pio_read_bytes), (1024, 0, 0));
        // The same two sectors by PIO (READ SECTORS) count as PIO.
        for (port, v) in [(0x1F6u16, 0xE0u32), (0x1F2, 2), (0x1F3, 5), (0x1F4, 0), (0x1F5, 0), (0x1F7, 0x20)] {
            out(&mut b, port, AccessSize::Byte, v);
        }
        for _ in 0..512 {
            b.port_read(PortAddr(0x1F0), AccessSize::Word);
        }
        assert_eq!(b.ide_transfer_stats().pio_read_bytes, 1024);
    }

    /// IA32_APIC_BASE (SDM vol. 3, 11.4.4/11.4.5): clearing the global enable makes the
    /// registers vanish and hands INTR back to the 8259; a new base moves the window.
    #[test]
    fn test_board_apic_base_msr_disable_and_relocation() {
        let mut b = board();
        let rd = |b: &mut Board, a: u64| b.mmio_read(MMIO_LAPIC, GuestPhysAddr(a), AccessSize::Dword);
        let version = rd(&mut b, 0xFEE0_0030);
        assert_ne!(version, 0xFFFF_FFFF);
        b.apic_base_written(0xFEE0_0000 | 0x100);
        assert_eq!(rd(&mut b, 0xFEE0_0030), 0xFFFF_FFFF, "globally disabled");
        assert!(b.chips.lapic.accepts_pic_interrupt(), "INTR goes straight to the CPU");
        b.apic_base_written(0xFED0_0000 | 0x900);
        assert!(matches!(
            b.mem.lookup(GuestPhysAddr(0xFED0_0030)).map(|r| r.kind),
            Some(mmu::RegionKind::Mmio { id: MMIO_LAPIC })
        ));
        assert_eq!(rd(&mut b, 0xFED0_0030), version, "registers at the new base");
        assert_eq!(rd(&mut b, 0xFEE0_0030), 0xFFFF_FFFF, "old window is open bus");
        b.apic_base_written(0xFEE0_0900);
        assert_eq!(rd(&mut b, 0xFEE0_0030), version);
        assert_eq!(rd(&mut b, 0xFED0_0030), 0xFFFF_FFFF);
    }

    /// The PIIX4 PM function on the board: its PM block where firmware (or install_acpi) puts
    /// it, the power button's SCI on ISA IRQ 9 / I/O APIC pin 9 (as the MADT and FADT say),
    /// and a virtio-blk INTx on the I/O APIC pin its _PRT entry names and on the 8259 input
    /// the PIIX3 routes its PIRQ to.
    #[test]
    fn test_board_sci_and_pci_interrupt_routing() {
        let mut b = board();
        b.enable_pm_io();
        let pm1_en = PM_IO_BASE + 2;
        b.port_write(PortAddr(pm1_en), AccessSize::Word, u32::from(devices::piix4_pm::ACPI_PWRBTN));
        assert_eq!(b.chips.ioapic.state().levels & (1 << 9), 0);
        b.press_power_button();
        assert_ne!(b.chips.ioapic.state().levels & (1 << 9), 0, "SCI on GSI 9");
        assert_ne!(b.chips.pic.state().slave.irr & (1 << 1), 0, "SCI on ISA IRQ 9");
        b.port_write(PortAddr(PM_IO_BASE), AccessSize::Word, u32::from(devices::piix4_pm::ACPI_PWRBTN));
        assert_eq!(b.chips.ioapic.state().levels & (1 << 9), 0, "PWRBTN_STS cleared");

        // virtio-blk at 00:03.0: PIRQC (QEMU's swizzle), GSI 18; the firmware routes PIRQC to 11.
        b.attach_virtio_disk(Box::new(devices::MemBackend::zeroed(1 << 20))).unwrap();
        let cfg = |b: &mut Board, reg: u32, size: AccessSize, v: u32| {
            b.port_write(PortAddr(0xCF8), AccessSize::Dword, 0x8000_0000 | (3 << 11) | reg);
            b.port_write(PortAddr(0xCFC + (reg & 3) as u16), size, v);
        };
        cfg(&mut b, 0x10, AccessSize::Dword, 0xC101);
        cfg(&mut b, 0x04, AccessSize::Word, 0x0005);
        b.port_write(PortAddr(0xCF8), AccessSize::Dword, 0x8000_0860);
        b.port_write(PortAddr(0xCFE), AccessSize::Byte, 11);
        // Make the device interrupt without a real ring: rings outside RAM make it report
        // DEVICE_NEEDS_RESET with a configuration interrupt.
        b.port_write(PortAddr(0xC114), AccessSize::Byte, 0x0B);
        b.port_write(PortAddr(0xC100 + 0x08), AccessSize::Dword, 1);
        b.port_write(PortAddr(0xC100 + 0x0C), AccessSize::Dword, 1);
        b.port_write(PortAddr(0xC114), AccessSize::Byte, 0x0B);
        b.port_write(PortAddr(0xC130), AccessSize::Dword, 0xFFFF_F000); // used ring outside RAM
        b.port_write(PortAddr(0xC128), AccessSize::Dword, 0xFFFF_E000); // avail ring outside RAM
        b.port_write(PortAddr(0xC11C), AccessSize::Word, 1);
        b.port_write(PortAddr(0xC114), AccessSize::Byte, 0x0F);
        b.port_write(PortAddr(0xC1C0), AccessSize::Word, 0);
        assert_ne!(b.chips.ioapic.state().levels & (1 << 18), 0, "INTA of slot 3 on GSI 18");
        assert_ne!(b.chips.pic.state().slave.irr & (1 << 3), 0, "PIRQC routed to IRQ 11");
        assert_eq!(b.port_read(PortAddr(0xC140), AccessSize::Byte), 2, "ISR: configuration change");
        assert_eq!(b.chips.ioapic.state().levels & (1 << 18), 0, "reading the ISR deasserts");
    }

    /// IA32_TSC_DEADLINE through the bus hooks the CPU's WRMSR/RDMSR use: the deadline in TSC
    /// ticks becomes the virtual instant the TSC reaches it, whatever the TSC's offset.
    #[test]
    fn test_board_tsc_deadline_timer() {
        let mut b = board();
        let lapic = |b: &mut Board, off: u64, v: u64| {
            b.mmio_write(MMIO_LAPIC, GuestPhysAddr(0xFEE0_0000 + off), AccessSize::Dword, v)
        };
        lapic(&mut b, 0xF0, 0x1FF); // software enable
        lapic(&mut b, 0x320, 0x4_00E0); // LVT timer: TSC-deadline, vector 0xE0
        b.advance_clock(1000);
        let tsc_now = 7_000_000_000u64; // any offset between the TSC and virtual time
        b.write_tsc_deadline(tsc_now + 5000, tsc_now);
        assert_eq!(b.read_tsc_deadline(), tsc_now + 5000);
        assert_eq!(b.timer_deadlines()[2], Some(VirtualInstant(6000)));
        b.advance_timers(VirtualInstant(5999));
        assert!(!b.irq_pending());
        b.advance_timers(VirtualInstant(6000));
        assert!(b.irq_pending());
        assert_eq!(b.acknowledge_interrupt(), Some(0xE0));
        assert_eq!(b.read_tsc_deadline(), 0, "disarmed after firing");
        // EOI; then a deadline in the past fires at once.
        lapic(&mut b, 0xB0, 0);
        b.write_tsc_deadline(1, tsc_now);
        assert!(b.irq_pending());
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
