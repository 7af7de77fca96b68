//! Chipset devices of the virtual PC, written as pure register state machines.
//!
//! Every device here is driven by offsets and bytes (the rust-vmm vm-superio style): it never
//! sees a thread, a file descriptor, the host clock or the CPU. Interrupts leave through an
//! [`IrqLine`] and guest-visible time enters as a [`base::VirtualInstant`] carried by each
//! [`Access`] or passed to [`Timed::advance_to`]. Nothing a guest does may panic: accesses at a
//! bad offset or with a bad width read as all ones and are logged at debug level.
//!
//! The crate depends only on `base`; the `machine` crate composes these devices into a PC.

pub mod block;
pub mod bus;
pub mod debugcon;
pub mod dma;
pub mod exit;
pub mod fw_cfg;
pub mod i8042;
pub mod ide;
pub mod ioapic;
pub mod lapic;
pub mod pci;
pub mod pic;
pub mod piix4_pm;
pub mod pit;
pub mod port92;
pub mod rtc;
pub mod uart;
pub mod virtio_blk;

pub use block::{BlockBackend, MemBackend, RawFileBackend};
pub use bus::{Access, Bus, BusError, IrqLine, MmioDevice, NoIrq, PioDevice, RecordingIrq, Timed};
pub use debugcon::{DebugCon, DEBUGCON_PORT};
pub use dma::{DmaFault, DmaMemory};
pub use exit::{exit_status, ExitDevice, EXIT_PORT};
pub use fw_cfg::{E820Entry, FwCfg, FwCfgBuilder, FwCfgError, FwCfgState};
pub use i8042::{I8042State, I8042};
pub use ide::{
    AtaDiskConfig, AtaDriveState, Chs, IdeChannel, IdeChannelState, IdeError, IdeTransferStats, PiixIde, PiixIdeState,
};
pub use ioapic::{IoApic, IoApicState};
pub use lapic::{ApicMessage, Ipi, LocalApic, LocalApicState};
pub use pci::{
    parse_config_address, I440fxHost, PamRegion, PciAddress, PciBarKind, PciBus, PciConfig, PciConfigIo,
    PciConfigIoState, PciFunction, PciRoot, Piix3Isa,
};
pub use pic::{I8259Pic, I8259PicState};
pub use piix4_pm::{Piix4Pm, Piix4PmState};
pub use pit::{I8254Pit, I8254PitState};
pub use port92::{Port92, Port92State};
pub use rtc::{Mc146818Rtc, Mc146818RtcState};
pub use uart::{Uart16550, Uart16550State};
pub use virtio_blk::{VirtioBlk, VirtioBlkState};
