//! The PIIX3 IDE controller (82371SB function 1) with ATA hard disks, PIO only.
//!
//! Two channels in legacy (compatibility) mode: primary at 0x1F0–0x1F7 plus 0x3F6 on IRQ 14,
//! secondary at 0x170–0x177 plus 0x376 on IRQ 15. [`PiixIde`] decodes the absolute port
//! (`Access::addr`), so the machine maps all four ranges (and the 16-byte bus-master block at
//! BAR4, see [`PiixIde::bus_master_base`]) to the same device. As in QEMU, the legacy ports
//! decode whatever the PCI command register and the IDETIM decode-enable bits say (those
//! registers are stored; SeaBIOS sets IDETIM bit 15 for both channels, as Linux's ata_piix
//! expects).
//!
//! Implemented (ATA/ATAPI-6 command protocols, all completing instantly, so BSY is only seen
//! during a software reset): IDENTIFY DEVICE, READ/WRITE SECTOR(S) and their EXT forms,
//! READ/WRITE MULTIPLE (EXT) with SET MULTIPLE MODE, READ VERIFY SECTOR(S) (EXT), SET FEATURES
//! (transfer mode, write cache, look-ahead), INITIALIZE DEVICE PARAMETERS with CHS addressing
//! through the current geometry, FLUSH CACHE (EXT), the power-management no-ops, RECALIBRATE,
//! SEEK, EXECUTE DEVICE DIAGNOSTIC, software reset (SRST) leaving the ATA signature, nIEN, the
//! HOB read-back of the 48-bit registers, ABRT for everything else (including the ATAPI
//! commands). A channel without drives floats (reads 0xFF); an absent device 1 behind a
//! present device 0 reads 0.
//!
//! Bus-master DMA (READ/WRITE DMA and their EXT forms, PRD tables): a DMA command waits until
//! the bus-master start bit is set; the transfer itself needs guest memory, which a port
//! access does not carry, so the machine calls [`PiixIde::run_dma`] with a [`DmaMemory`]
//! whenever [`PiixIde::dma_pending`] says so (simplest: after every write to the IDE ports).
//! The whole transfer then happens at once and completes with an interrupt. IDENTIFY
//! advertises DMA (MWDMA 0–2, UDMA 0–5) only after [`PiixIde::set_dma_advertised`], so that
//! guests which check (Linux) keep to PIO until the machine has wired `run_dma`; firmware that
//! uses the bus master without checking (SeaBIOS built with CONFIG_ATA_DMA) still works.

use crate::block::BlockBackend;
use crate::bus::{Access, IrqLine, PioDevice};
pub use crate::dma::{DmaFault, DmaMemory};
use crate::pci::{
    PciBarKind, PciConfig, PciFunction, PCI_COMMAND, PCI_COMMAND_IO, PCI_COMMAND_MASTER, PCI_DEVICE_ID_INTEL_82371SB_1,
    PCI_SUBDEVICE_ID_QEMU, PCI_SUBVENDOR_ID_REDHAT_QUMRANET, PCI_VENDOR_ID_INTEL,
};
use serde::{Deserialize, Serialize};

/// Primary channel command block.
pub const IDE_PRIMARY_CMD: u16 = 0x1F0;
/// Primary channel control block (alternate status / device control).
pub const IDE_PRIMARY_CTRL: u16 = 0x3F6;
/// Secondary channel command block.
pub const IDE_SECONDARY_CMD: u16 = 0x170;
/// Secondary channel control block.
pub const IDE_SECONDARY_CTRL: u16 = 0x376;
/// ISA IRQ of the primary channel.
pub const IDE_PRIMARY_IRQ: u8 = 14;
/// ISA IRQ of the secondary channel.
pub const IDE_SECONDARY_IRQ: u8 = 15;

/// Command block register offsets.
pub const ATA_REG_DATA: u64 = 0;
/// Error (read) / Features (write).
pub const ATA_REG_ERROR: u64 = 1;
/// Sector count.
pub const ATA_REG_NSECT: u64 = 2;
/// LBA low / sector number.
pub const ATA_REG_LBAL: u64 = 3;
/// LBA mid / cylinder low.
pub const ATA_REG_LBAM: u64 = 4;
/// LBA high / cylinder high.
pub const ATA_REG_LBAH: u64 = 5;
/// Device / head.
pub const ATA_REG_DEVICE: u64 = 6;
/// Status (read) / Command (write).
pub const ATA_REG_STATUS: u64 = 7;

/// Status: busy.
pub const ATA_SR_BSY: u8 = 0x80;
/// Status: device ready.
pub const ATA_SR_DRDY: u8 = 0x40;
/// Status: device fault.
pub const ATA_SR_DF: u8 = 0x20;
/// Status: device seek complete (obsolete, still set by drives and expected by old BIOSes).
pub const ATA_SR_DSC: u8 = 0x10;
/// Status: data request.
pub const ATA_SR_DRQ: u8 = 0x08;
/// Status: error.
pub const ATA_SR_ERR: u8 = 0x01;

/// Error: command aborted.
pub const ATA_ER_ABRT: u8 = 0x04;
/// Error: ID not found (address out of range).
pub const ATA_ER_IDNF: u8 = 0x10;
/// Error: uncorrectable data error.
pub const ATA_ER_UNC: u8 = 0x40;
/// Diagnostic code: device 0 passed, device 1 passed or absent.
pub const ATA_DIAG_PASSED: u8 = 0x01;

/// Device register: LBA addressing.
pub const ATA_DEV_LBA: u8 = 0x40;
/// Device register: device 1 selected.
pub const ATA_DEV_DEV1: u8 = 0x10;
/// Device register: head / LBA bits 27:24.
pub const ATA_DEV_HEAD: u8 = 0x0F;

/// Device control: high-order byte read-back.
pub const ATA_DC_HOB: u8 = 0x80;
/// Device control: software reset.
pub const ATA_DC_SRST: u8 = 0x04;
/// Device control: interrupts disabled.
pub const ATA_DC_NIEN: u8 = 0x02;

/// DEVICE RESET (ATAPI only).
pub const ATA_CMD_DEVICE_RESET: u8 = 0x08;
/// RECALIBRATE (0x10–0x1F).
pub const ATA_CMD_RECALIBRATE: u8 = 0x10;
/// READ SECTOR(S).
pub const ATA_CMD_READ_SECTORS: u8 = 0x20;
/// READ SECTOR(S) without retries (obsolete).
pub const ATA_CMD_READ_SECTORS_NORETRY: u8 = 0x21;
/// READ SECTOR(S) EXT.
pub const ATA_CMD_READ_SECTORS_EXT: u8 = 0x24;
/// READ DMA EXT.
pub const ATA_CMD_READ_DMA_EXT: u8 = 0x25;
/// READ MULTIPLE EXT.
pub const ATA_CMD_READ_MULTIPLE_EXT: u8 = 0x29;
/// WRITE SECTOR(S).
pub const ATA_CMD_WRITE_SECTORS: u8 = 0x30;
/// WRITE SECTOR(S) without retries (obsolete).
pub const ATA_CMD_WRITE_SECTORS_NORETRY: u8 = 0x31;
/// WRITE SECTOR(S) EXT.
pub const ATA_CMD_WRITE_SECTORS_EXT: u8 = 0x34;
/// WRITE DMA EXT.
pub const ATA_CMD_WRITE_DMA_EXT: u8 = 0x35;
/// WRITE MULTIPLE EXT.
pub const ATA_CMD_WRITE_MULTIPLE_EXT: u8 = 0x39;
/// READ VERIFY SECTOR(S).
pub const ATA_CMD_READ_VERIFY: u8 = 0x40;
/// READ VERIFY SECTOR(S) without retries (obsolete).
pub const ATA_CMD_READ_VERIFY_NORETRY: u8 = 0x41;
/// READ VERIFY SECTOR(S) EXT.
pub const ATA_CMD_READ_VERIFY_EXT: u8 = 0x42;
/// SEEK (0x70–0x7F).
pub const ATA_CMD_SEEK: u8 = 0x70;
/// EXECUTE DEVICE DIAGNOSTIC.
pub const ATA_CMD_EXECUTE_DEVICE_DIAGNOSTIC: u8 = 0x90;
/// INITIALIZE DEVICE PARAMETERS.
pub const ATA_CMD_INITIALIZE_DEVICE_PARAMETERS: u8 = 0x91;
/// PACKET (ATAPI only).
pub const ATA_CMD_PACKET: u8 = 0xA0;
/// IDENTIFY PACKET DEVICE (ATAPI only).
pub const ATA_CMD_IDENTIFY_PACKET_DEVICE: u8 = 0xA1;
/// READ MULTIPLE.
pub const ATA_CMD_READ_MULTIPLE: u8 = 0xC4;
/// WRITE MULTIPLE.
pub const ATA_CMD_WRITE_MULTIPLE: u8 = 0xC5;
/// SET MULTIPLE MODE.
pub const ATA_CMD_SET_MULTIPLE_MODE: u8 = 0xC6;
/// READ DMA.
pub const ATA_CMD_READ_DMA: u8 = 0xC8;
/// WRITE DMA.
pub const ATA_CMD_WRITE_DMA: u8 = 0xCA;
/// STANDBY IMMEDIATE.
pub const ATA_CMD_STANDBY_IMMEDIATE: u8 = 0xE0;
/// IDLE IMMEDIATE.
pub const ATA_CMD_IDLE_IMMEDIATE: u8 = 0xE1;
/// STANDBY.
pub const ATA_CMD_STANDBY: u8 = 0xE2;
/// IDLE.
pub const ATA_CMD_IDLE: u8 = 0xE3;
/// CHECK POWER MODE.
pub const ATA_CMD_CHECK_POWER_MODE: u8 = 0xE5;
/// SLEEP.
pub const ATA_CMD_SLEEP: u8 = 0xE6;
/// FLUSH CACHE.
pub const ATA_CMD_FLUSH_CACHE: u8 = 0xE7;
/// FLUSH CACHE EXT.
pub const ATA_CMD_FLUSH_CACHE_EXT: u8 = 0xEA;
/// IDENTIFY DEVICE.
pub const ATA_CMD_IDENTIFY_DEVICE: u8 = 0xEC;
/// SET FEATURES.
pub const ATA_CMD_SET_FEATURES: u8 = 0xEF;

/// SET FEATURES: enable write cache.
pub const SETFEATURES_WC_ON: u8 = 0x02;
/// SET FEATURES: set transfer mode (mode in the sector count register).
pub const SETFEATURES_XFER: u8 = 0x03;
/// SET FEATURES: disable read look-ahead.
pub const SETFEATURES_RA_OFF: u8 = 0x55;
/// SET FEATURES: disable reverting to power-on defaults.
pub const SETFEATURES_REVERT_OFF: u8 = 0x66;
/// SET FEATURES: disable write cache.
pub const SETFEATURES_WC_OFF: u8 = 0x82;
/// SET FEATURES: enable read look-ahead.
pub const SETFEATURES_RA_ON: u8 = 0xAA;
/// SET FEATURES: enable reverting to power-on defaults.
pub const SETFEATURES_REVERT_ON: u8 = 0xCC;

/// Bytes per sector.
pub const SECTOR_SIZE: usize = 512;
/// Largest DRQ block of READ/WRITE MULTIPLE (IDENTIFY word 47).
pub const MAX_MULTIPLE_SECTORS: u8 = 16;
/// Largest LBA28 capacity reported in IDENTIFY words 60–61.
const LBA28_MAX_SECTORS: u64 = 0x0FFF_FFFF;
/// Largest capacity expressible in the default CHS translation (16383 × 16 × 63).
const CHS_MAX_SECTORS: u64 = 16383 * 16 * 63;

/// ATA_CMD_READ_DMA without retries (obsolete).
pub const ATA_CMD_READ_DMA_NORETRY: u8 = 0xC9;
/// ATA_CMD_WRITE_DMA without retries (obsolete).
pub const ATA_CMD_WRITE_DMA_NORETRY: u8 = 0xCB;
/// PRD entry: end of table.
pub const PRD_EOT: u32 = 0x8000_0000;
/// Largest number of PRD entries walked per transfer (a 64 KiB table).
const PRD_MAX_ENTRIES: u64 = 8192;

/// Bus-master IDE command register (per channel, offset 0).
pub const BM_REG_COMMAND: u64 = 0;
/// Bus-master IDE status register (per channel, offset 2).
pub const BM_REG_STATUS: u64 = 2;
/// Bus-master PRD table address (per channel, offsets 4–7).
pub const BM_REG_PRDT: u64 = 4;
/// BM command: start/stop bus master.
pub const BM_CMD_START: u8 = 0x01;
/// BM command: direction (set: write to memory, i.e. a device read).
pub const BM_CMD_READ: u8 = 0x08;
/// BM status: bus master active.
pub const BM_STATUS_ACTIVE: u8 = 0x01;
/// BM status: DMA error (write one to clear).
pub const BM_STATUS_ERROR: u8 = 0x02;
/// BM status: interrupt (write one to clear).
pub const BM_STATUS_INT: u8 = 0x04;
/// BM status: drive 0 and drive 1 DMA capable (plain storage).
pub const BM_STATUS_DMA_CAPABLE: u8 = 0x60;

/// PIIX IDE timing registers (IDETIM primary/secondary, SIDETIM), stored only.
const PIIX_IDETIM: usize = 0x40;
/// IDETIM bit 15: IDE Decode Enable (the channel's legacy ports decode).
const PIIX_IDETIM_IDE_DECODE_ENABLE: u16 = 0x8000;

/// Cylinders, heads and sectors per track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chs {
    /// Cylinders.
    pub cylinders: u16,
    /// Heads (1–16).
    pub heads: u8,
    /// Sectors per track (1–255).
    pub sectors: u8,
}

impl Chs {
    /// The usual default translation of a disk of `total` sectors: 16 heads and 63 sectors
    /// per track, cylinders capped at 16383 (smaller disks get fewer heads/sectors).
    pub fn for_sectors(total: u64) -> Chs {
        let spt = total.clamp(1, 63);
        let heads = (total / spt).clamp(1, 16);
        let cyls = (total.min(CHS_MAX_SECTORS) / (heads * spt)).clamp(1, 16383);
        Chs { cylinders: cyls as u16, heads: heads as u8, sectors: spt as u8 }
    }

    /// Sectors addressable through this geometry.
    pub fn capacity(&self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors)
    }
}

/// Identity of an ATA disk (what IDENTIFY DEVICE reports besides the size).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AtaDiskConfig {
    /// Serial number (up to 20 ASCII characters).
    pub serial: String,
    /// Firmware revision (up to 8 ASCII characters).
    pub firmware: String,
    /// Model number (up to 40 ASCII characters).
    pub model: String,
    /// The default CHS translation; `None` derives it from the size.
    pub geometry: Option<Chs>,
}

impl Default for AtaDiskConfig {
    fn default() -> Self {
        AtaDiskConfig {
            serial: "FV00001".into(),
            firmware: "0.1".into(),
            model: "FERROVISOR HARDDISK".into(),
            geometry: None,
        }
    }
}

/// Errors of IDE configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, displaydoc::Display)]
pub enum IdeError {
    /// there is no IDE channel {0} (only 0 and 1)
    NoSuchChannel(usize),
    /// a disk of {0} bytes holds no whole sector
    DiskTooSmall(u64),
    /// geometry {0:?} needs 1-16 heads and non-zero cylinders and sectors per track
    BadGeometry(Chs),
}

/// Guest-changeable state of one ATA device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AtaDriveState {
    /// Status register.
    pub status: u8,
    /// Error register.
    pub error: u8,
    /// Sectors per DRQ block of READ/WRITE MULTIPLE (0: disabled).
    pub multiple: u8,
    /// Current CHS translation (INITIALIZE DEVICE PARAMETERS).
    pub current: Chs,
    /// Write cache enabled.
    pub write_cache: bool,
    /// Transfer mode selected by SET FEATURES (0: PIO default).
    #[serde(default)]
    pub xfer_mode: u8,
}

/// The PIO data transfer in progress on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transfer {
    /// No data phase.
    None,
    /// Device to host: the buffer holds IDENTIFY data.
    Identify,
    /// Device to host: sectors from the disk.
    Read,
    /// Host to device: sectors to the disk.
    Write,
    /// DMA command waiting for (or ready for) the bus master.
    Dma {
        /// Memory to disk.
        to_disk: bool,
    },
}

/// The state of one IDE channel, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdeChannelState {
    /// Features register, current and previous ("HOB") write.
    pub features: [u8; 2],
    /// Sector count, current and previous.
    pub nsect: [u8; 2],
    /// LBA low, current and previous.
    pub lbal: [u8; 2],
    /// LBA mid, current and previous.
    pub lbam: [u8; 2],
    /// LBA high, current and previous.
    pub lbah: [u8; 2],
    /// Device register.
    pub device: u8,
    /// Device control register.
    pub control: u8,
    /// INTRQ pending (cleared by reading Status or writing Command).
    pub intrq: bool,
    /// Per-device state (`None`: no device).
    pub drives: [Option<AtaDriveState>; 2],
    /// Data phase in progress.
    pub transfer: Transfer,
    /// Device (0/1) owning the transfer.
    pub active: u8,
    /// The current DRQ block.
    pub buffer: Vec<u8>,
    /// Bytes of `buffer` already transferred.
    pub pos: usize,
    /// First sector of the current block.
    pub lba: u64,
    /// Sectors left after the current block.
    pub remaining: u64,
    /// Sectors per DRQ block.
    pub block: u64,
    /// The transfer's command uses 48-bit addressing.
    pub ext: bool,
    /// Bus-master command register.
    pub bm_command: u8,
    /// Bus-master status register.
    pub bm_status: u8,
    /// Bus-master PRD table address.
    pub bm_prdt: u32,
}

impl IdeChannelState {
    fn new() -> Self {
        IdeChannelState {
            features: [0; 2],
            nsect: [1, 0],
            lbal: [1, 0],
            lbam: [0; 2],
            lbah: [0; 2],
            device: 0,
            control: 0,
            intrq: false,
            drives: [None, None],
            transfer: Transfer::None,
            active: 0,
            buffer: Vec::new(),
            pos: 0,
            lba: 0,
            remaining: 0,
            block: 0,
            ext: false,
            bm_command: 0,
            bm_status: 0,
            bm_prdt: 0,
        }
    }

    fn with_present(mut self, present: [bool; 2]) -> Self {
        for (d, p) in self.drives.iter_mut().zip(present) {
            if !p {
                *d = None;
            }
        }
        self
    }
}

/// A disk attached to a channel: the backend and its identity.
struct Disk {
    backend: Box<dyn BlockBackend>,
    config: AtaDiskConfig,
    sectors: u64,
    default_chs: Chs,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk").field("config", &self.config).field("sectors", &self.sectors).finish()
    }
}

/// How much sector data a controller moved, by path: an observation for `--stats` (which
/// path a guest's driver took), not guest-visible state (not snapshotted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdeTransferStats {
    /// Bytes the bus master moved from disk to guest memory (READ DMA).
    pub dma_read_bytes: u64,
    /// Bytes the bus master moved from guest memory to disk (WRITE DMA).
    pub dma_write_bytes: u64,
    /// Sector bytes the guest read through the data port (PIO READ SECTOR(S)/MULTIPLE).
    pub pio_read_bytes: u64,
    /// Sector bytes the guest wrote through the data port (PIO WRITE SECTOR(S)/MULTIPLE).
    pub pio_write_bytes: u64,
}

impl std::ops::AddAssign for IdeTransferStats {
    fn add_assign(&mut self, o: Self) {
        self.dma_read_bytes += o.dma_read_bytes;
        self.dma_write_bytes += o.dma_write_bytes;
        self.pio_read_bytes += o.pio_read_bytes;
        self.pio_write_bytes += o.pio_write_bytes;
    }
}

/// One IDE channel with up to two ATA disks, driving `I` (IRQ 14 or 15).
#[derive(Debug)]
pub struct IdeChannel<I: IrqLine> {
    s: IdeChannelState,
    disks: [Option<Disk>; 2],
    irq: I,
    irq_level: bool,
    dma_advertised: bool,
    stats: IdeTransferStats,
}

/// Writes `text` into IDENTIFY words `[start, start + len / 2)`, space padded, each word
/// holding two characters with the first in the high byte (ATA string convention).
fn ata_string(words: &mut [u16; 256], start: usize, len: usize, text: &str) {
    let mut bytes = text.bytes().filter(|b| b.is_ascii() && !b.is_ascii_control()).collect::<Vec<_>>();
    bytes.resize(len, b' ');
    for (i, pair) in bytes.chunks(2).enumerate() {
        words[start + i] = u16::from(pair[0]) << 8 | u16::from(pair[1]);
    }
}

impl<I: IrqLine> IdeChannel<I> {
    /// A channel with no disks.
    pub fn new(irq: I) -> Self {
        IdeChannel {
            s: IdeChannelState::new(),
            disks: [None, None],
            irq,
            irq_level: false,
            dma_advertised: false,
            stats: IdeTransferStats::default(),
        }
    }

    /// Attaches `backend` as device 0 (`slave == false`) or device 1, replacing any disk there.
    pub fn attach(
        &mut self,
        slave: bool,
        backend: Box<dyn BlockBackend>,
        config: AtaDiskConfig,
    ) -> Result<(), IdeError> {
        let sectors = backend.len() / SECTOR_SIZE as u64;
        if sectors == 0 {
            return Err(IdeError::DiskTooSmall(backend.len()));
        }
        let default_chs = config.geometry.unwrap_or_else(|| Chs::for_sectors(sectors));
        if default_chs.cylinders == 0 || !(1..=16).contains(&default_chs.heads) || default_chs.sectors == 0 {
            return Err(IdeError::BadGeometry(default_chs));
        }
        let i = usize::from(slave);
        self.disks[i] = Some(Disk { backend, config, sectors, default_chs });
        self.s.drives[i] = Some(AtaDriveState {
            status: ATA_SR_DRDY | ATA_SR_DSC,
            error: ATA_DIAG_PASSED,
            multiple: 0,
            current: default_chs,
            write_cache: true,
            xfer_mode: 0,
        });
        Ok(())
    }

    /// Detaches device 0 or 1, returning its backend.
    pub fn detach(&mut self, slave: bool) -> Option<Box<dyn BlockBackend>> {
        let i = usize::from(slave);
        self.s.drives[i] = None;
        self.disks[i].take().map(|d| d.backend)
    }

    /// A snapshot (the disks' contents are the backends' business).
    pub fn state(&self) -> IdeChannelState {
        self.s.clone()
    }

    /// Restores a snapshot onto this channel's disks, re-driving the IRQ line. Device slots
    /// without an attached disk stay absent.
    pub fn restore(&mut self, state: IdeChannelState) {
        let present = [self.disks[0].is_some(), self.disks[1].is_some()];
        let mut s = state.with_present(present);
        for (i, p) in present.into_iter().enumerate() {
            if p && s.drives[i].is_none() {
                s.drives[i] = self.s.drives[i].clone();
            }
        }
        s.pos = s.pos.min(s.buffer.len());
        s.active &= 1;
        self.s = s;
        self.irq_level = !self.irq_out();
        self.update_irq();
    }

    /// The level of the interrupt output.
    pub fn irq_level(&self) -> bool {
        self.irq_level
    }

    fn irq_out(&self) -> bool {
        self.s.intrq && self.s.control & ATA_DC_NIEN == 0
    }

    fn update_irq(&mut self) {
        let level = self.irq_out();
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    fn raise_irq(&mut self) {
        self.s.intrq = true;
        self.s.bm_status |= BM_STATUS_INT;
        self.update_irq();
    }

    fn clear_irq(&mut self) {
        self.s.intrq = false;
        self.update_irq();
    }

    fn selected(&self) -> usize {
        usize::from(self.s.device & ATA_DEV_DEV1 != 0)
    }

    fn any_present(&self) -> bool {
        self.s.drives.iter().any(Option::is_some)
    }

    fn drive_mut(&mut self, d: usize) -> Option<&mut AtaDriveState> {
        self.s.drives[d].as_mut()
    }

    fn set_status(&mut self, d: usize, status: u8, error: u8) {
        if let Some(dr) = self.drive_mut(d) {
            dr.status = status;
            dr.error = error;
        }
    }

    /// Ends a command without data (or after its last data block) and interrupts.
    fn complete(&mut self, d: usize) {
        self.s.transfer = Transfer::None;
        self.set_status(d, ATA_SR_DRDY | ATA_SR_DSC, 0);
        self.raise_irq();
    }

    /// Ends a command with an error and interrupts.
    fn fail(&mut self, d: usize, error: u8) {
        self.s.transfer = Transfer::None;
        self.s.buffer.clear();
        self.s.pos = 0;
        self.set_status(d, ATA_SR_DRDY | ATA_SR_DSC | ATA_SR_ERR, error);
        self.raise_irq();
    }

    /// Sets the ATA signature and diagnostic result (after reset or diagnostics).
    fn set_signature(&mut self) {
        self.s.nsect[0] = 1;
        self.s.lbal[0] = 1;
        self.s.lbam[0] = 0;
        self.s.lbah[0] = 0;
        self.s.device = 0;
        for d in 0..2 {
            self.set_status(d, ATA_SR_DRDY | ATA_SR_DSC, ATA_DIAG_PASSED);
        }
    }

    fn ext_count(&self) -> u64 {
        match u64::from(self.s.nsect[1]) << 8 | u64::from(self.s.nsect[0]) {
            0 => 65536,
            n => n,
        }
    }

    fn count28(&self) -> u64 {
        match self.s.nsect[0] {
            0 => 256,
            n => u64::from(n),
        }
    }

    fn lba48(&self) -> u64 {
        u64::from(self.s.lbah[1]) << 40
            | u64::from(self.s.lbam[1]) << 32
            | u64::from(self.s.lbal[1]) << 24
            | u64::from(self.s.lbah[0]) << 16
            | u64::from(self.s.lbam[0]) << 8
            | u64::from(self.s.lbal[0])
    }

    /// The 28-bit LBA, or the CHS address translated through the current geometry (`None`
    /// for a CHS address outside it).
    fn lba28_or_chs(&self, d: usize) -> Option<u64> {
        if self.s.device & ATA_DEV_LBA != 0 {
            return Some(
                u64::from(self.s.device & ATA_DEV_HEAD) << 24
                    | u64::from(self.s.lbah[0]) << 16
                    | u64::from(self.s.lbam[0]) << 8
                    | u64::from(self.s.lbal[0]),
            );
        }
        let g = self.s.drives[d].as_ref()?.current;
        let cyl = u64::from(self.s.lbah[0]) << 8 | u64::from(self.s.lbam[0]);
        let head = u64::from(self.s.device & ATA_DEV_HEAD);
        let sector = u64::from(self.s.lbal[0]);
        if sector == 0 || sector > u64::from(g.sectors) || head >= u64::from(g.heads) || cyl >= u64::from(g.cylinders) {
            return None;
        }
        Some((cyl * u64::from(g.heads) + head) * u64::from(g.sectors) + sector - 1)
    }

    /// Writes `lba` back into the address registers (error reporting), in the addressing
    /// mode of the command.
    fn set_address(&mut self, d: usize, lba: u64, ext: bool) {
        if ext {
            self.s.lbal = [lba as u8, (lba >> 24) as u8];
            self.s.lbam = [(lba >> 8) as u8, (lba >> 32) as u8];
            self.s.lbah = [(lba >> 16) as u8, (lba >> 40) as u8];
        } else if self.s.device & ATA_DEV_LBA != 0 {
            self.s.lbal[0] = lba as u8;
            self.s.lbam[0] = (lba >> 8) as u8;
            self.s.lbah[0] = (lba >> 16) as u8;
            self.s.device = (self.s.device & !ATA_DEV_HEAD) | ((lba >> 24) as u8 & ATA_DEV_HEAD);
        } else if let Some(g) = self.s.drives[d].as_ref().map(|dr| dr.current).filter(|g| g.heads > 0 && g.sectors > 0)
        {
            let (h, s) = (u64::from(g.heads), u64::from(g.sectors));
            let cyl = lba / (h * s);
            self.s.lbal[0] = (lba % s + 1) as u8;
            self.s.lbam[0] = cyl as u8;
            self.s.lbah[0] = (cyl >> 8) as u8;
            self.s.device = (self.s.device & !ATA_DEV_HEAD) | ((lba / s % h) as u8 & ATA_DEV_HEAD);
        }
    }

    /// The address and count of a sector command, or `None` after failing it with IDNF.
    fn sector_range(&mut self, d: usize, ext: bool) -> Option<(u64, u64)> {
        let (lba, count) =
            if ext { (Some(self.lba48()), self.ext_count()) } else { (self.lba28_or_chs(d), self.count28()) };
        let sectors = self.disks[d].as_ref().map_or(0, |k| k.sectors);
        match lba {
            Some(l) if l.checked_add(count).is_some_and(|end| end <= sectors) => Some((l, count)),
            _ => {
                log::debug!("ide: sector range {lba:?}+{count} outside the disk ({sectors} sectors)");
                self.fail(d, ATA_ER_IDNF);
                None
            }
        }
    }

    /// Loads the next DRQ block of a read from the disk; false after failing the command.
    fn load_read_block(&mut self, d: usize, ext: bool) -> bool {
        let n = self.s.remaining.min(self.s.block);
        let mut buf = vec![0u8; n as usize * SECTOR_SIZE];
        let res = match &self.disks[d] {
            Some(disk) => disk.backend.read_at(self.s.lba * SECTOR_SIZE as u64, &mut buf),
            None => return false,
        };
        if let Err(e) = res {
            log::debug!("ide: read of {n} sectors at {} failed: {e}", self.s.lba);
            let lba = self.s.lba;
            self.set_address(d, lba, ext);
            self.fail(d, ATA_ER_UNC);
            return false;
        }
        self.s.buffer = buf;
        self.s.pos = 0;
        self.s.remaining -= n;
        self.set_status(d, ATA_SR_DRDY | ATA_SR_DSC | ATA_SR_DRQ, 0);
        self.raise_irq();
        true
    }

    fn start_read(&mut self, d: usize, ext: bool, block: u64) {
        if let Some((lba, count)) = self.sector_range(d, ext) {
            self.s.transfer = Transfer::Read;
            self.s.active = d as u8;
            self.s.lba = lba;
            self.s.remaining = count;
            self.s.block = block;
            self.s.ext = ext;
            self.load_read_block(d, ext);
        }
    }

    fn start_write(&mut self, d: usize, ext: bool, block: u64) {
        if let Some((lba, count)) = self.sector_range(d, ext) {
            self.s.transfer = Transfer::Write;
            self.s.active = d as u8;
            self.s.lba = lba;
            self.s.remaining = count;
            self.s.block = block;
            self.s.ext = ext;
            self.s.buffer = vec![0; (count.min(block) as usize) * SECTOR_SIZE];
            self.s.pos = 0;
            // PIO data-out: the first block is requested without an interrupt.
            self.set_status(d, ATA_SR_DRDY | ATA_SR_DSC | ATA_SR_DRQ, 0);
        }
    }

    /// The host has read the whole current block.
    fn read_block_done(&mut self) {
        let d = usize::from(self.s.active);
        match self.s.transfer {
            Transfer::Read if self.s.remaining > 0 => {
                self.s.lba += self.s.block;
                let ext = self.s.ext;
                self.load_read_block(d, ext);
            }
            _ => {
                // PIO data-in ends without an interrupt after the last block.
                self.s.transfer = Transfer::None;
                self.set_status(d, ATA_SR_DRDY | ATA_SR_DSC, 0);
            }
        }
    }

    /// The host has filled the current block: write it out.
    fn write_block_done(&mut self) {
        let d = usize::from(self.s.active);
        let ext = self.s.ext;
        let n = (self.s.buffer.len() / SECTOR_SIZE) as u64;
        let offset = self.s.lba * SECTOR_SIZE as u64;
        let buf = std::mem::take(&mut self.s.buffer);
        let res = match &mut self.disks[d] {
            Some(disk) => disk.backend.write_at(offset, &buf),
            None => return,
        };
        if let Err(e) = res {
            log::debug!("ide: write of {n} sectors at {} failed: {e}", self.s.lba);
            let lba = self.s.lba;
            self.set_address(d, lba, ext);
            self.fail(d, ATA_ER_ABRT);
            return;
        }
        self.s.lba += n;
        self.s.remaining -= n;
        if self.s.remaining > 0 {
            self.s.buffer = vec![0; (self.s.remaining.min(self.s.block) as usize) * SECTOR_SIZE];
            self.s.pos = 0;
            self.set_status(d, ATA_SR_DRDY | ATA_SR_DSC | ATA_SR_DRQ, 0);
            self.raise_irq();
        } else {
            self.complete(d);
        }
    }

    fn start_dma(&mut self, d: usize, ext: bool, to_disk: bool) {
        if let Some((lba, count)) = self.sector_range(d, ext) {
            self.s.transfer = Transfer::Dma { to_disk };
            self.s.active = d as u8;
            self.s.lba = lba;
            self.s.remaining = count;
            self.s.ext = ext;
            // The device requests data (DMARQ) until the bus master moves it.
            self.set_status(d, ATA_SR_DRDY | ATA_SR_DSC | ATA_SR_DRQ, 0);
        }
    }

    /// Whether a DMA command waits and the bus master is started.
    pub fn dma_pending(&self) -> bool {
        matches!(self.s.transfer, Transfer::Dma { .. }) && self.s.bm_command & BM_CMD_START != 0
    }

    /// Ends a DMA transfer: bus-master interrupt bit, active cleared unless the PRD table was
    /// longer than the transfer, device status and interrupt.
    fn finish_dma(&mut self, d: usize, error: Option<u8>, bm_error: bool, prd_left: bool) {
        self.s.bm_status &= !BM_STATUS_ACTIVE;
        if prd_left && error.is_none() {
            self.s.bm_status |= BM_STATUS_ACTIVE;
        }
        if bm_error {
            self.s.bm_status |= BM_STATUS_ERROR;
        }
        match error {
            Some(e) => {
                let lba = self.s.lba;
                let ext = self.s.ext;
                self.set_address(d, lba, ext);
                self.fail(d, e);
            }
            None => self.complete(d),
        }
    }

    /// Runs a pending DMA transfer to completion against `mem`.
    pub fn run_dma(&mut self, mem: &mut dyn DmaMemory) {
        if !self.dma_pending() {
            return;
        }
        let Transfer::Dma { to_disk } = self.s.transfer else {
            return;
        };
        let d = usize::from(self.s.active);
        let mut left = self.s.remaining * SECTOR_SIZE as u64;
        let mut disk_off = self.s.lba * SECTOR_SIZE as u64;
        let mut prd = u64::from(self.s.bm_prdt);
        let mut chunk = Vec::new();
        for _ in 0..PRD_MAX_ENTRIES {
            if left == 0 {
                // The transfer ended before the table did (no EOT seen yet).
                self.finish_dma(d, None, false, true);
                return;
            }
            let mut entry = [0u8; 8];
            if mem.read(prd, &mut entry).is_err() {
                log::debug!("ide: PRD table at {prd:#x} is not in RAM");
                self.finish_dma(d, Some(ATA_ER_ABRT), true, false);
                return;
            }
            let addr = u64::from(u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]) & !1);
            let flags = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
            let len = match flags & 0xFFFF {
                0 => 0x1_0000,
                n => u64::from(n & !1),
            };
            let n = len.min(left);
            chunk.resize(n as usize, 0);
            let res = if to_disk {
                match mem.read(addr, &mut chunk) {
                    Ok(()) => self.disks[d].as_mut().map(|k| k.backend.write_at(disk_off, &chunk)),
                    Err(f) => {
                        log::debug!("ide: DMA source {f}");
                        self.finish_dma(d, Some(ATA_ER_ABRT), true, false);
                        return;
                    }
                }
            } else {
                let r = self.disks[d].as_ref().map(|k| k.backend.read_at(disk_off, &mut chunk));
                if matches!(r, Some(Ok(()))) {
                    if let Err(f) = mem.write(addr, &chunk) {
                        log::debug!("ide: DMA destination {f}");
                        self.finish_dma(d, Some(ATA_ER_ABRT), true, false);
                        return;
                    }
                }
                r
            };
            match res {
                Some(Ok(())) => {}
                other => {
                    if let Some(Err(e)) = other {
                        log::debug!("ide: DMA disk access at {disk_off:#x} failed: {e}");
                    }
                    self.s.lba = disk_off / SECTOR_SIZE as u64;
                    self.finish_dma(d, Some(if to_disk { ATA_ER_ABRT } else { ATA_ER_UNC }), false, false);
                    return;
                }
            }
            if to_disk {
                self.stats.dma_write_bytes += n;
            } else {
                self.stats.dma_read_bytes += n;
            }
            left -= n;
            disk_off += n;
            let eot = flags & PRD_EOT != 0;
            if eot || left == 0 {
                if left == 0 {
                    self.s.remaining = 0;
                    self.finish_dma(d, None, false, !(eot && n == len));
                } else {
                    // The table ended before the transfer: the device still wants data.
                    log::debug!("ide: PRD table too short, {left} bytes left");
                    self.s.lba = disk_off / SECTOR_SIZE as u64;
                    self.finish_dma(d, Some(ATA_ER_ABRT), true, false);
                }
                return;
            }
            prd += 8;
        }
        log::debug!("ide: PRD table without EOT");
        self.finish_dma(d, Some(ATA_ER_ABRT), true, false);
    }

    /// IDENTIFY DEVICE data for device `d`.
    pub fn identify_data(&self, d: usize) -> Option<[u16; 256]> {
        let disk = self.disks.get(d)?.as_ref()?;
        let dr = self.s.drives[d].as_ref()?;
        let mut w = [0u16; 256];
        let g = disk.default_chs;
        let cur = dr.current;
        w[0] = 0x0040; // fixed device, not removable
        w[1] = g.cylinders;
        w[3] = u16::from(g.heads);
        w[6] = u16::from(g.sectors);
        ata_string(&mut w, 10, 20, &disk.config.serial);
        w[20] = 3; // buffer type (obsolete)
        w[21] = 512; // buffer size in sectors (obsolete)
        w[22] = 4; // ECC bytes (obsolete)
        ata_string(&mut w, 23, 8, &disk.config.firmware);
        ata_string(&mut w, 27, 40, &disk.config.model);
        w[47] = 0x8000 | u16::from(MAX_MULTIPLE_SECTORS);
        w[49] = 1 << 11 | 1 << 9; // IORDY supported, LBA supported
        if self.dma_advertised {
            w[49] |= 1 << 8; // DMA supported
        }
        w[50] = 0x4000;
        w[51] = 0x0200; // PIO timing mode 2 (obsolete)
        w[53] = if self.dma_advertised { 0x0007 } else { 0x0003 }; // words 54-58, 64-70 (, 88) valid
        let cur_cap = cur.capacity().min(disk.sectors);
        w[54] = cur.cylinders;
        w[55] = u16::from(cur.heads);
        w[56] = u16::from(cur.sectors);
        w[57] = cur_cap as u16;
        w[58] = (cur_cap >> 16) as u16;
        if dr.multiple != 0 {
            w[59] = 0x0100 | u16::from(dr.multiple);
        }
        let lba28 = disk.sectors.min(LBA28_MAX_SECTORS);
        w[60] = lba28 as u16;
        w[61] = (lba28 >> 16) as u16;
        if self.dma_advertised {
            let sel = |base: u8, n: u8| match dr.xfer_mode {
                m if (base..base + n).contains(&m) => 1u16 << (8 + m - base),
                _ => 0,
            };
            w[63] = 0x0007 | sel(0x20, 3); // multiword DMA 0-2
            w[88] = 0x003F | sel(0x40, 6); // Ultra DMA 0-5
        }
        w[64] = 0x0003; // PIO modes 3 and 4
        w[65] = 120;
        w[66] = 120;
        w[67] = 120;
        w[68] = 120;
        w[80] = 0x00F0; // ATA/ATAPI-4 to -7
        w[82] = 1 << 14 | 1 << 5 | 1 << 3; // NOP, write cache, power management
        w[83] = 0x4000 | 1 << 13 | 1 << 12 | 1 << 10; // FLUSH CACHE (EXT), 48-bit address
        w[84] = 0x4000;
        w[85] = 1 << 14 | u16::from(dr.write_cache) << 5 | 1 << 3;
        w[86] = 1 << 13 | 1 << 12 | 1 << 10;
        w[87] = 0x4000;
        for (i, word) in w[100..104].iter_mut().enumerate() {
            *word = (disk.sectors >> (16 * i)) as u16;
        }
        // Integrity word: signature A5h, checksum making all 512 bytes sum to zero.
        w[255] = 0x00A5;
        let sum = w.iter().fold(0u8, |acc, &x| acc.wrapping_add(x as u8).wrapping_add((x >> 8) as u8));
        w[255] |= u16::from(sum.wrapping_neg()) << 8;
        Some(w)
    }

    fn set_features(&mut self, d: usize) {
        let ok = match self.s.features[0] {
            SETFEATURES_WC_ON | SETFEATURES_WC_OFF => {
                let on = self.s.features[0] == SETFEATURES_WC_ON;
                if let Some(dr) = self.drive_mut(d) {
                    dr.write_cache = on;
                }
                true
            }
            // PIO default, PIO default without IORDY, PIO flow control modes 0-4, and when
            // DMA is advertised multiword DMA 0-2 and Ultra DMA 0-5.
            SETFEATURES_XFER => {
                let m = self.s.nsect[0];
                let ok = matches!(m, 0x00 | 0x01 | 0x08..=0x0C)
                    || (self.dma_advertised && matches!(m, 0x20..=0x22 | 0x40..=0x45));
                if ok {
                    if let Some(dr) = self.drive_mut(d) {
                        dr.xfer_mode = m;
                    }
                }
                ok
            }
            SETFEATURES_RA_OFF | SETFEATURES_RA_ON | SETFEATURES_REVERT_OFF | SETFEATURES_REVERT_ON => true,
            _ => false,
        };
        if ok {
            self.complete(d);
        } else {
            log::debug!("ide: SET FEATURES {:#x} aborted", self.s.features[0]);
            self.fail(d, ATA_ER_ABRT);
        }
    }

    fn execute(&mut self, cmd: u8) {
        let d = self.selected();
        self.s.intrq = false;
        if cmd == ATA_CMD_EXECUTE_DEVICE_DIAGNOSTIC {
            if self.any_present() {
                self.s.transfer = Transfer::None;
                self.set_signature();
                self.raise_irq();
            }
            return;
        }
        if self.s.drives[d].is_none() {
            self.update_irq();
            log::debug!("ide: command {cmd:#x} to absent device {d} ignored");
            return;
        }
        // A new command cancels any data phase in progress.
        self.s.transfer = Transfer::None;
        self.s.buffer.clear();
        self.s.pos = 0;
        let multiple = u64::from(self.s.drives[d].as_ref().map_or(0, |dr| dr.multiple));
        match cmd {
            ATA_CMD_IDENTIFY_DEVICE => {
                let words = self.identify_data(d).unwrap_or([0; 256]);
                self.s.buffer = words.iter().flat_map(|w| w.to_le_bytes()).collect();
                self.s.transfer = Transfer::Identify;
                self.s.active = d as u8;
                self.s.remaining = 0;
                self.set_status(d, ATA_SR_DRDY | ATA_SR_DSC | ATA_SR_DRQ, 0);
                self.raise_irq();
            }
            ATA_CMD_READ_SECTORS | ATA_CMD_READ_SECTORS_NORETRY => self.start_read(d, false, 1),
            ATA_CMD_READ_SECTORS_EXT => self.start_read(d, true, 1),
            ATA_CMD_WRITE_SECTORS | ATA_CMD_WRITE_SECTORS_NORETRY => self.start_write(d, false, 1),
            ATA_CMD_WRITE_SECTORS_EXT => self.start_write(d, true, 1),
            ATA_CMD_READ_MULTIPLE | ATA_CMD_READ_MULTIPLE_EXT | ATA_CMD_WRITE_MULTIPLE | ATA_CMD_WRITE_MULTIPLE_EXT
                if multiple == 0 =>
            {
                self.fail(d, ATA_ER_ABRT)
            }
            ATA_CMD_READ_MULTIPLE => self.start_read(d, false, multiple),
            ATA_CMD_READ_MULTIPLE_EXT => self.start_read(d, true, multiple),
            ATA_CMD_WRITE_MULTIPLE => self.start_write(d, false, multiple),
            ATA_CMD_WRITE_MULTIPLE_EXT => self.start_write(d, true, multiple),
            ATA_CMD_SET_MULTIPLE_MODE => {
                let n = self.s.nsect[0];
                if n == 0 || (n.is_power_of_two() && n <= MAX_MULTIPLE_SECTORS) {
                    if let Some(dr) = self.drive_mut(d) {
                        dr.multiple = n;
                    }
                    self.complete(d);
                } else {
                    self.fail(d, ATA_ER_ABRT);
                }
            }
            ATA_CMD_READ_VERIFY | ATA_CMD_READ_VERIFY_NORETRY => {
                if self.sector_range(d, false).is_some() {
                    self.complete(d);
                }
            }
            ATA_CMD_READ_VERIFY_EXT => {
                if self.sector_range(d, true).is_some() {
                    self.complete(d);
                }
            }
            ATA_CMD_INITIALIZE_DEVICE_PARAMETERS => {
                let spt = self.s.nsect[0];
                let heads = (self.s.device & ATA_DEV_HEAD) + 1;
                let total = self.disks[d].as_ref().map_or(0, |k| k.sectors).min(CHS_MAX_SECTORS);
                if spt == 0 {
                    self.fail(d, ATA_ER_ABRT);
                } else {
                    let cyls = (total / (u64::from(heads) * u64::from(spt))).min(65535) as u16;
                    if let Some(dr) = self.drive_mut(d) {
                        dr.current = Chs { cylinders: cyls, heads, sectors: spt };
                    }
                    self.complete(d);
                }
            }
            ATA_CMD_SET_FEATURES => self.set_features(d),
            ATA_CMD_READ_DMA | ATA_CMD_READ_DMA_NORETRY => self.start_dma(d, false, false),
            ATA_CMD_READ_DMA_EXT => self.start_dma(d, true, false),
            ATA_CMD_WRITE_DMA | ATA_CMD_WRITE_DMA_NORETRY => self.start_dma(d, false, true),
            ATA_CMD_WRITE_DMA_EXT => self.start_dma(d, true, true),
            ATA_CMD_FLUSH_CACHE | ATA_CMD_FLUSH_CACHE_EXT => {
                let res = self.disks[d].as_mut().map(|k| k.backend.flush());
                match res {
                    Some(Err(e)) => {
                        log::debug!("ide: flush failed: {e}");
                        self.fail(d, ATA_ER_ABRT);
                    }
                    _ => self.complete(d),
                }
            }
            ATA_CMD_CHECK_POWER_MODE | 0x98 => {
                self.s.nsect[0] = 0xFF; // active or idle
                self.complete(d);
            }
            ATA_CMD_STANDBY_IMMEDIATE
            | ATA_CMD_IDLE_IMMEDIATE
            | ATA_CMD_STANDBY
            | ATA_CMD_IDLE
            | ATA_CMD_SLEEP
            | 0x94..=0x97
            | 0x99 => self.complete(d),
            0x10..=0x1F | 0x70..=0x7F => self.complete(d), // RECALIBRATE, SEEK
            _ => {
                log::debug!("ide: command {cmd:#x} aborted");
                self.fail(d, ATA_ER_ABRT);
            }
        }
    }

    /// Reads the command block register at `offset` (0–7). The data register takes 2 or 4
    /// bytes, the others 1.
    pub fn read_command(&mut self, offset: u64, data: &mut [u8]) {
        if !self.any_present() {
            data.fill(0xFF); // no device drives the bus
            return;
        }
        let d = self.selected();
        if offset == ATA_REG_DATA {
            match data.len() {
                2 | 4 => {
                    for chunk in data.chunks_mut(2) {
                        let w = self.read_data_word(d);
                        chunk.copy_from_slice(&w.to_le_bytes());
                    }
                }
                _ => {
                    log::debug!("ide: {}-byte data port read", data.len());
                    data.fill(0xFF);
                }
            }
            return;
        }
        if data.len() != 1 || offset > 7 {
            log::debug!("ide: {}-byte read of command register {offset}", data.len());
            data.fill(0xFF);
            return;
        }
        let hob = usize::from(self.s.control & ATA_DC_HOB != 0);
        let present = self.s.drives[d].is_some();
        data[0] = match offset {
            _ if !present && offset != ATA_REG_DEVICE => 0,
            ATA_REG_ERROR => self.s.drives[d].as_ref().map_or(0, |dr| dr.error),
            ATA_REG_NSECT => self.s.nsect[hob],
            ATA_REG_LBAL => self.s.lbal[hob],
            ATA_REG_LBAM => self.s.lbam[hob],
            ATA_REG_LBAH => self.s.lbah[hob],
            ATA_REG_DEVICE => self.s.device,
            _ => {
                let st = self.s.drives[d].as_ref().map_or(0, |dr| dr.status);
                self.clear_irq();
                st
            }
        };
    }

    fn read_data_word(&mut self, d: usize) -> u16 {
        let reading = matches!(self.s.transfer, Transfer::Read | Transfer::Identify);
        if !reading || usize::from(self.s.active) != d || self.s.pos + 2 > self.s.buffer.len() {
            return 0xFFFF;
        }
        let w = u16::from_le_bytes([self.s.buffer[self.s.pos], self.s.buffer[self.s.pos + 1]]);
        self.s.pos += 2;
        if self.s.transfer == Transfer::Read {
            self.stats.pio_read_bytes += 2;
        }
        if self.s.pos >= self.s.buffer.len() {
            self.read_block_done();
        }
        w
    }

    fn write_data_word(&mut self, d: usize, w: u16) {
        if self.s.transfer != Transfer::Write || usize::from(self.s.active) != d || self.s.pos + 2 > self.s.buffer.len()
        {
            log::debug!("ide: data write {w:#x} outside a data-out phase dropped");
            return;
        }
        self.s.buffer[self.s.pos..self.s.pos + 2].copy_from_slice(&w.to_le_bytes());
        self.s.pos += 2;
        self.stats.pio_write_bytes += 2;
        if self.s.pos >= self.s.buffer.len() {
            self.write_block_done();
        }
    }

    /// Writes the command block register at `offset` (0–7).
    pub fn write_command(&mut self, offset: u64, data: &[u8]) {
        if offset == ATA_REG_DATA {
            if !matches!(data.len(), 2 | 4) {
                log::debug!("ide: {}-byte data port write dropped", data.len());
                return;
            }
            let d = self.selected();
            for chunk in data.chunks(2) {
                self.write_data_word(d, u16::from_le_bytes([chunk[0], chunk[1]]));
            }
            return;
        }
        let v = match data {
            [v] if offset <= 7 => *v,
            _ => {
                log::debug!("ide: {}-byte write of command register {offset} dropped", data.len());
                return;
            }
        };
        // Writes to the command block clear HOB.
        self.s.control &= !ATA_DC_HOB;
        let push = |r: &mut [u8; 2]| {
            r[1] = r[0];
            r[0] = v;
        };
        match offset {
            ATA_REG_ERROR => push(&mut self.s.features),
            ATA_REG_NSECT => push(&mut self.s.nsect),
            ATA_REG_LBAL => push(&mut self.s.lbal),
            ATA_REG_LBAM => push(&mut self.s.lbam),
            ATA_REG_LBAH => push(&mut self.s.lbah),
            ATA_REG_DEVICE => self.s.device = v,
            _ => {
                if self.s.drives.iter().flatten().any(|dr| dr.status & ATA_SR_BSY != 0) {
                    log::debug!("ide: command {v:#x} while busy ignored");
                    return;
                }
                self.execute(v)
            }
        }
    }

    /// Reads the control block (alternate status; does not acknowledge the interrupt).
    pub fn read_control(&mut self, data: &mut [u8]) {
        if data.len() != 1 || !self.any_present() {
            data.fill(0xFF);
            return;
        }
        data[0] = self.s.drives[self.selected()].as_ref().map_or(0, |dr| dr.status);
    }

    /// Writes the device control register (nIEN, SRST, HOB).
    pub fn write_control(&mut self, data: &[u8]) {
        let [v] = data else {
            log::debug!("ide: {}-byte device control write dropped", data.len());
            return;
        };
        let old = self.s.control;
        self.s.control = *v;
        if v & ATA_DC_SRST != 0 && old & ATA_DC_SRST == 0 {
            self.s.transfer = Transfer::None;
            self.s.buffer.clear();
            self.s.pos = 0;
            self.s.intrq = false;
            for dr in self.s.drives.iter_mut().flatten() {
                dr.status = ATA_SR_BSY;
            }
        } else if v & ATA_DC_SRST == 0 && old & ATA_DC_SRST != 0 {
            self.set_signature();
        }
        self.update_irq();
    }

    fn read_bm(&mut self, offset: u64, data: &mut [u8]) {
        let regs = [
            self.s.bm_command,
            0,
            self.s.bm_status,
            0,
            self.s.bm_prdt as u8,
            (self.s.bm_prdt >> 8) as u8,
            (self.s.bm_prdt >> 16) as u8,
            (self.s.bm_prdt >> 24) as u8,
        ];
        for (i, b) in data.iter_mut().enumerate() {
            *b = regs.get(offset as usize + i).copied().unwrap_or(0xFF);
        }
    }

    fn write_bm(&mut self, offset: u64, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            match offset + i as u64 {
                BM_REG_COMMAND => {
                    let was = self.s.bm_command & BM_CMD_START != 0;
                    self.s.bm_command = v & (BM_CMD_START | BM_CMD_READ);
                    match (was, v & BM_CMD_START != 0) {
                        (false, true) => self.s.bm_status |= BM_STATUS_ACTIVE,
                        (true, false) => self.s.bm_status &= !BM_STATUS_ACTIVE,
                        _ => {}
                    }
                }
                BM_REG_STATUS => {
                    let keep = self.s.bm_status & BM_STATUS_ACTIVE;
                    let w1c = self.s.bm_status & (BM_STATUS_ERROR | BM_STATUS_INT) & !v;
                    self.s.bm_status = keep | w1c | (v & BM_STATUS_DMA_CAPABLE);
                }
                o @ 4..=7 => {
                    let shift = 8 * (o - 4);
                    self.s.bm_prdt = (self.s.bm_prdt & !(0xFF << shift)) | u32::from(v) << shift;
                    self.s.bm_prdt &= !3;
                }
                _ => {}
            }
        }
    }
}

/// The state of the PIIX IDE function, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PiixIdeState {
    /// PCI configuration space.
    pub config: PciConfig,
    /// Primary and secondary channels.
    pub channels: [IdeChannelState; 2],
}

/// The PIIX3 IDE function (8086:7010 at 00:01.1) with its two legacy channels.
#[derive(Debug)]
pub struct PiixIde<I: IrqLine> {
    config: PciConfig,
    channels: [IdeChannel<I>; 2],
}

impl<I: IrqLine> PiixIde<I> {
    /// The controller with no disks; `primary_irq` is ISA IRQ 14, `secondary_irq` IRQ 15.
    pub fn new(primary_irq: I, secondary_irq: I) -> Self {
        let mut config = PciConfig::new(PCI_VENDOR_ID_INTEL, PCI_DEVICE_ID_INTEL_82371SB_1, 0x00, 0x01_01_80, 0);
        config.set_subsystem(PCI_SUBVENDOR_ID_REDHAT_QUMRANET, PCI_SUBDEVICE_ID_QEMU);
        config.add_bar(4, PciBarKind::Io, 16);
        config.set_writable_range(PIIX_IDETIM, PIIX_IDETIM + 5);
        PiixIde { config, channels: [IdeChannel::new(primary_irq), IdeChannel::new(secondary_irq)] }
    }

    /// Attaches a disk to `channel` (0 primary, 1 secondary) as device 0 or 1.
    pub fn attach(
        &mut self,
        channel: usize,
        slave: bool,
        backend: Box<dyn BlockBackend>,
        config: AtaDiskConfig,
    ) -> Result<(), IdeError> {
        self.channels.get_mut(channel).ok_or(IdeError::NoSuchChannel(channel))?.attach(slave, backend, config)
    }

    /// Channel 0 (primary) or 1 (secondary).
    pub fn channel(&self, i: usize) -> Option<&IdeChannel<I>> {
        self.channels.get(i)
    }

    /// Channel 0 (primary) or 1 (secondary), mutably.
    pub fn channel_mut(&mut self, i: usize) -> Option<&mut IdeChannel<I>> {
        self.channels.get_mut(i)
    }

    /// The PCI configuration space.
    pub fn config(&self) -> &PciConfig {
        &self.config
    }

    /// Turns on both channels' IDE decode (IDE Decode Enable, bit 15 of IDETIM at 0x40 and
    /// 0x42), which is off at power-on: what PC firmware does before it boots anything
    /// (SeaBIOS's `piix_ide_setup`). Linux's ata_piix treats a channel whose decode is off as
    /// disabled, so a directly booted kernel needs this done by the machine.
    pub fn enable_decode(&mut self) {
        for reg in [PIIX_IDETIM, PIIX_IDETIM + 2] {
            self.config.write(reg, &PIIX_IDETIM_IDE_DECODE_ENABLE.to_le_bytes());
        }
    }

    /// Makes IDENTIFY advertise DMA modes (call once [`PiixIde::run_dma`] is wired).
    pub fn set_dma_advertised(&mut self, on: bool) {
        for c in &mut self.channels {
            c.dma_advertised = on;
        }
    }

    /// The sector data both channels moved so far, by path (DMA or PIO).
    pub fn transfer_stats(&self) -> IdeTransferStats {
        let mut t = self.channels[0].stats;
        t += self.channels[1].stats;
        t
    }

    /// Whether a channel has a DMA transfer ready for [`PiixIde::run_dma`].
    pub fn dma_pending(&self) -> bool {
        self.channels.iter().any(IdeChannel::dma_pending)
    }

    /// Runs the ready DMA transfers against guest memory (only while bus mastering is
    /// enabled in the PCI command register).
    pub fn run_dma(&mut self, mem: &mut dyn DmaMemory) {
        if self.config.command() & PCI_COMMAND_MASTER == 0 {
            if self.dma_pending() {
                log::debug!("ide: DMA waits for PCI bus mastering to be enabled");
            }
            return;
        }
        for c in &mut self.channels {
            c.run_dma(mem);
        }
    }

    /// The I/O base of the 16-byte bus-master block (BAR4) while I/O decoding is enabled.
    pub fn bus_master_base(&self) -> Option<u16> {
        let base = self.config.bar_address(4)?;
        (self.config.command() & PCI_COMMAND_IO != 0 && base != 0).then_some(base as u16)
    }

    /// A snapshot.
    pub fn state(&self) -> PiixIdeState {
        PiixIdeState { config: self.config.clone(), channels: [self.channels[0].state(), self.channels[1].state()] }
    }

    /// Restores a snapshot onto the attached disks.
    pub fn restore(&mut self, state: PiixIdeState) {
        self.config = PciConfig::from_state(state.config);
        let [a, b] = state.channels;
        self.channels[0].restore(a);
        self.channels[1].restore(b);
    }

    /// Which channel and block an absolute port belongs to.
    fn decode(&self, port: u64) -> Option<(usize, Block, u64)> {
        let p = u16::try_from(port).ok()?;
        match p {
            IDE_PRIMARY_CMD..=0x1F7 => Some((0, Block::Command, u64::from(p - IDE_PRIMARY_CMD))),
            IDE_SECONDARY_CMD..=0x177 => Some((1, Block::Command, u64::from(p - IDE_SECONDARY_CMD))),
            IDE_PRIMARY_CTRL => Some((0, Block::Control, 0)),
            IDE_SECONDARY_CTRL => Some((1, Block::Control, 0)),
            _ => {
                let base = self.bus_master_base()?;
                let off = p.checked_sub(base).filter(|&o| o < 16)?;
                Some((usize::from(off / 8), Block::BusMaster, u64::from(off % 8)))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Command,
    Control,
    BusMaster,
}

impl<I: IrqLine> PioDevice for PiixIde<I> {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        match self.decode(access.addr) {
            Some((ch, Block::Command, off)) => self.channels[ch].read_command(off, data),
            Some((ch, Block::Control, _)) => self.channels[ch].read_control(data),
            Some((ch, Block::BusMaster, off)) if off as usize + data.len() <= 8 => self.channels[ch].read_bm(off, data),
            _ => {
                log::debug!("ide: {}-byte read at {:#x}", data.len(), access.addr);
                data.fill(0xFF);
            }
        }
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        match self.decode(access.addr) {
            Some((ch, Block::Command, off)) => self.channels[ch].write_command(off, data),
            Some((ch, Block::Control, _)) => self.channels[ch].write_control(data),
            Some((ch, Block::BusMaster, off)) if off as usize + data.len() <= 8 => {
                self.channels[ch].write_bm(off, data)
            }
            _ => log::debug!("ide: {}-byte write at {:#x} dropped", data.len(), access.addr),
        }
    }
}

impl<I: IrqLine> PciFunction for PiixIde<I> {
    fn read_config(&mut self, offset: u8, data: &mut [u8]) {
        self.config.read(usize::from(offset), data);
    }

    fn write_config(&mut self, offset: u8, data: &[u8]) {
        self.config.write(usize::from(offset), data);
        if usize::from(offset) <= PCI_COMMAND + 1 && PCI_COMMAND < usize::from(offset) + data.len() {
            log::debug!("ide: PCI command = {:#x}", self.config.command());
        }
    }
}

impl<I: IrqLine> base::Persist for PiixIde<I> {
    type State = PiixIdeState;
    /// The controller with its disks attached (disk contents are snapshotted as VMDK deltas,
    /// not here).
    type ConstructorArgs = PiixIde<I>;
    type Error = std::convert::Infallible;
    fn save(&self) -> PiixIdeState {
        self.state()
    }
    fn restore(mut dev: PiixIde<I>, state: &PiixIdeState) -> Result<Self, Self::Error> {
        dev.restore(state.clone());
        Ok(dev)
    }
}
