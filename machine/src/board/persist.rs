//! Save and restore of the board: every chip's state (through [`base::Persist`]) plus the
//! board's own bookkeeping. Kept out of `board.rs` so the wiring stays readable; a child module
//! so it can reach the board's private fields.

use super::{Board, Chips, PcPci};
use base::{Persist, VirtualInstant};
use devices::{
    FwCfgState, I8042State, I8254PitState, I8259PicState, IoApicState, LocalApicState, Mc146818RtcState, PciConfig,
    PciConfigIoState, PiixIdeState, Port92State, Uart16550State,
};
use serde::{Deserialize, Serialize};

/// The board's state at a run-slice boundary. Chips added later get `#[serde(default)]` and
/// restore to their power-on state when a file predates them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoardState {
    /// COM1.
    pub com1: Uart16550State,
    /// The 8259 pair.
    pub pic: I8259PicState,
    /// The 8254.
    pub pit: I8254PitState,
    /// The MC146818 RTC and CMOS.
    pub rtc: Mc146818RtcState,
    /// The keyboard controller.
    pub kbc: I8042State,
    /// Port 0x92.
    pub port92: Port92State,
    /// The PCI configuration ports.
    pub pci_io: PciConfigIoState,
    /// The i440FX host bridge.
    pub host: PciConfig,
    /// The PIIX3 ISA bridge.
    pub isa: PciConfig,
    /// The PIIX IDE controller (not the disks' contents).
    pub ide: PiixIdeState,
    /// The fw_cfg cursor.
    pub fw_cfg: FwCfgState,
    /// The PIIX4 power management function (files before it existed: power-on state).
    #[serde(default)]
    pub pm: Option<devices::Piix4PmState>,
    /// The virtio-blk function, when a virtio disk is attached.
    #[serde(default)]
    pub virtio: Option<devices::virtio_blk::VirtioBlkState>,
    /// The guest asked for power-off (ACPI S5).
    #[serde(default)]
    pub power_off: bool,
    /// The local APIC.
    pub lapic: LocalApicState,
    /// The I/O APIC.
    pub ioapic: IoApicState,
    /// A pending exit-port value.
    #[serde(default)]
    pub exit_value: Option<u32>,
    /// A pending reset request.
    #[serde(default)]
    pub reset_requested: bool,
    /// The local APIC accepted an NMI the CPU has not taken yet.
    #[serde(default)]
    pub nmi_pending: bool,
    /// A timer was reprogrammed and the run slice has not ended for it yet. It decides where
    /// the next slice ends, so a restored machine slices its run as the original did (files
    /// before it: set, which only ends the first slice early).
    #[serde(default = "set")]
    pub timers_dirty: bool,
    /// COM1 input stamped but not yet in the UART's FIFO (files before it: none).
    #[serde(default)]
    pub serial_in: crate::serial_input::SerialInputState,
    /// Virtual time of the board.
    pub now: u64,
    /// Virtual time skipped while halted.
    pub idle_time: u64,
    /// Unix time the RTC showed at virtual time 0.
    pub rtc_base: i64,
}

fn set() -> bool {
    true
}

/// A restore that cannot work.
fn never(e: std::convert::Infallible) -> ! {
    match e {}
}

impl Board {
    /// The board's state (call at a run-slice boundary: the interrupt queue is then empty).
    pub(crate) fn save_state(&self) -> BoardState {
        let c = &self.chips;
        let root = c.pci.root();
        BoardState {
            com1: c.com1.save(),
            pic: c.pic.save(),
            pit: c.pit.save(),
            rtc: c.rtc.save(),
            kbc: c.kbc.save(),
            port92: c.port92.save(),
            pci_io: c.pci.save(),
            host: root.host.save(),
            isa: root.isa.save(),
            ide: root.ide.save(),
            fw_cfg: c.fw_cfg.save(),
            pm: Some(root.pm.save()),
            virtio: root.virtio.as_ref().map(|v| v.save()),
            power_off: self.power_off,
            lapic: c.lapic.save(),
            ioapic: c.ioapic.save(),
            exit_value: self.exit_value,
            reset_requested: self.reset_requested,
            nmi_pending: self.nmi_pending,
            timers_dirty: self.timers_dirty,
            serial_in: self.serial_in.save(),
            now: self.now.0,
            idle_time: self.idle_time,
            rtc_base: self.rtc_base,
        }
    }

    /// Puts every chip into the saved state. Disks must already be attached (the IDE state is
    /// restored onto them). Chips this file does not know keep their power-on state.
    pub(crate) fn restore_state(&mut self, s: &BoardState) {
        self.rtc_base = s.rtc_base;
        self.irqs.0.borrow_mut().clear();
        let fresh = Self::chips(&self.irqs, &self.sink, &self.fwlog_sink, self.rtc_base, self.ram_bytes);
        let Chips { pci: mut old_pci, fw_cfg, .. } = std::mem::replace(&mut self.chips, fresh);
        // The disks move over to a new controller, which then takes the saved state.
        let irqs = &self.irqs;
        let mut ide = PiixIde::new(irqs.line(super::IDE_IRQS[0]), irqs.line(super::IDE_IRQS[1]));
        for channel in 0..2 {
            for slave in [false, true] {
                let disk = old_pci.root_mut().ide.channel_mut(channel).and_then(|ch| ch.detach(slave));
                if let Some(backend) = disk {
                    if let Err(e) = ide.attach(channel, slave, backend, devices::AtaDiskConfig::default()) {
                        log::error!("reattaching IDE disk {channel}/{slave} on restore: {e}");
                    }
                }
            }
        }
        // The fresh chips drove their power-on levels into the queue: drop those, the restored
        // chips drive the saved ones.
        irqs.0.borrow_mut().clear();
        let c = &mut self.chips;
        let ide = <PiixIde<_> as Persist>::restore(ide, &s.ide).unwrap_or_else(|e| never(e));
        let pm_irq = irqs.line(devices::piix4_pm::PIIX4_SCI_IRQ);
        let pm = match &s.pm {
            Some(st) => devices::Piix4Pm::restore(pm_irq, st).unwrap_or_else(|e| never(e)),
            None => devices::Piix4Pm::new(pm_irq),
        };
        // The virtio disk moves over too, taking the saved state when there is one.
        let pirq = crate::acpi::pci_pirq(super::VIRTIO_BLK_SLOT, 0);
        let virtio = old_pci.root_mut().virtio.take().map(|v| {
            let line = irqs.line(super::PIRQ_LINE_BASE + pirq);
            match &s.virtio {
                Some(st) => devices::VirtioBlk::restore((line, v.into_disk()), st).unwrap_or_else(|e| never(e)),
                None => devices::VirtioBlk::new(line, v.into_disk()),
            }
        });
        let root = PcPci {
            host: devices::I440fxHost::restore((), &s.host).unwrap_or_else(|e| never(e)),
            isa: devices::Piix3Isa::restore((), &s.isa).unwrap_or_else(|e| never(e)),
            ide,
            pm,
            virtio,
        };
        // The PIC and I/O APIC first: the other chips re-drive their lines on restore, and the
        // queue then replays levels the interrupt controllers already hold (no new edges).
        c.pic = devices::I8259Pic::restore((), &s.pic).unwrap_or_else(|e| never(e));
        c.ioapic = devices::IoApic::restore((), &s.ioapic).unwrap_or_else(|e| never(e));
        c.lapic = devices::LocalApic::restore((), &s.lapic).unwrap_or_else(|e| never(e));
        c.pci = devices::PciConfigIo::restore(root, &s.pci_io).unwrap_or_else(|e| never(e));
        c.com1 = devices::Uart16550::restore((irqs.line(super::COM1_IRQ), self.sink.clone()), &s.com1)
            .unwrap_or_else(|e| never(e));
        c.pit = devices::I8254Pit::restore(irqs.line(super::PIT_IRQ), &s.pit).unwrap_or_else(|e| never(e));
        c.rtc = devices::Mc146818Rtc::restore(irqs.line(super::RTC_IRQ), &s.rtc).unwrap_or_else(|e| never(e));
        c.kbc = devices::I8042::restore((irqs.line(super::KBD_IRQ), irqs.line(super::AUX_IRQ)), &s.kbc)
            .unwrap_or_else(|e| never(e));
        c.port92 = devices::Port92::restore((), &s.port92).unwrap_or_else(|e| never(e));
        c.fw_cfg = <devices::FwCfg as Persist>::restore(fw_cfg, &s.fw_cfg).unwrap_or_else(|e| never(e));
        self.exit_value = s.exit_value;
        self.power_off = s.power_off;
        self.reset_requested = s.reset_requested;
        self.nmi_pending = s.nmi_pending;
        self.now = VirtualInstant(s.now);
        self.idle_time = s.idle_time;
        self.timers_dirty = s.timers_dirty;
        self.sync_irqs();
    }
}

use devices::PiixIde;

impl Board {
    /// Replaces the backend of IDE disk `index` (0..4) without disturbing the drive's registers
    /// (a snapshot switches the VM onto a new delta this way). `make` gets the old backend
    /// (which it flushes and closes) and returns the new one, or an error and optionally a
    /// backend to put back.
    pub(crate) fn replace_disk<E>(
        &mut self,
        index: usize,
        make: impl FnOnce(
            Option<Box<dyn devices::BlockBackend>>,
        ) -> Result<Box<dyn devices::BlockBackend>, (Option<Box<dyn devices::BlockBackend>>, E)>,
    ) -> Result<(), E>
    where
        E: From<devices::IdeError>,
    {
        let ide = &mut self.chips.pci.root_mut().ide;
        let saved = ide.save();
        let (channel, slave) = (index / 2, index % 2 == 1);
        let old = ide.channel_mut(channel).and_then(|c| c.detach(slave));
        let result = match make(old) {
            Ok(new) => ide.attach(channel, slave, new, devices::AtaDiskConfig::default()).map_err(E::from),
            Err((back, e)) => {
                if let Some(b) = back {
                    if let Err(a) = ide.attach(channel, slave, b, devices::AtaDiskConfig::default()) {
                        log::error!("reattaching IDE disk {index}: {a}");
                    }
                }
                Err(e)
            }
        };
        ide.restore(saved);
        self.sync_irqs();
        result
    }
}
