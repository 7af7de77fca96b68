//! virtio-blk over the virtio 1.x ("modern") PCI transport (virtio 1.2, sections 4.1 and
//! 5.2): PCI 1af4:1042, one split virtqueue, INTx interrupts (no MSI-X).
//!
//! The transport's structures live in one 256-byte I/O BAR (BAR0), which Linux's
//! `virtio_pci_modern` and SeaBIOS both accept (the capabilities may name an I/O BAR):
//! - 0x00 common configuration (`struct virtio_pci_common_cfg`, 0x38 bytes);
//! - 0x40 ISR status (1 byte, read-to-clear: bit 0 queue interrupt, bit 1 configuration);
//! - 0x60 device configuration (`struct virtio_blk_config`, 0x40 bytes exposed);
//! - 0xC0 notification (notify_off_multiplier 0: every queue notifies here, 2 bytes).
//!
//! Features offered: SEG_MAX, BLK_SIZE, FLUSH, RO for a read-only backend, and VERSION_1. A
//! driver that accepts anything else, or not VERSION_1, finds FEATURES_OK cleared when it
//! reads the status back. Requests: IN, OUT, FLUSH, GET_ID; others complete with UNSUPP.
//!
//! Port accesses carry no memory, so a queue notification only marks the queue as kicked; the
//! machine then calls [`VirtioBlk::run`] with a [`DmaMemory`] (as for the IDE bus master).
//! Everything read from guest memory is bounds-checked: a hostile ring (loops, huge lengths,
//! addresses outside RAM) ends that request with an I/O error status or marks the device
//! broken (DEVICE_NEEDS_RESET), never a panic or an endless loop.

use crate::block::BlockBackend;
use crate::bus::{Access, IrqLine, PioDevice};
use crate::dma::DmaMemory;
use crate::pci::{PciBarKind, PciConfig, PciFunction, PCI_COMMAND, PCI_COMMAND_INTX_DISABLE, PCI_COMMAND_IO};
use serde::{Deserialize, Serialize};

/// Red Hat / virtio vendor ID.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1AF4;
/// Modern virtio-blk device ID (0x1040 + device type 2).
pub const VIRTIO_PCI_DEVICE_ID_BLK: u16 = 0x1042;
/// Size of the I/O BAR.
pub const VIRTIO_BAR_SIZE: u16 = 0x100;

/// Offsets of the structures in the BAR.
pub const COMMON_CFG_OFFSET: u64 = 0x00;
/// Length of the common configuration.
pub const COMMON_CFG_LEN: u64 = 0x38;
/// ISR status offset.
pub const ISR_OFFSET: u64 = 0x40;
/// Device configuration offset.
pub const DEVICE_CFG_OFFSET: u64 = 0x60;
/// Device configuration length.
pub const DEVICE_CFG_LEN: u64 = 0x40;
/// Notification offset.
pub const NOTIFY_OFFSET: u64 = 0xC0;

/// Device status bits.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
/// Driver found.
pub const STATUS_DRIVER: u8 = 2;
/// Driver ready.
pub const STATUS_DRIVER_OK: u8 = 4;
/// Features accepted.
pub const STATUS_FEATURES_OK: u8 = 8;
/// The device hit an error the driver must reset it for.
pub const STATUS_DEVICE_NEEDS_RESET: u8 = 0x40;
/// The driver gave up.
pub const STATUS_FAILED: u8 = 0x80;

/// Feature bits.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// Read-only device.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Block size in config.
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
/// Cache flush command.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// Virtio 1.x.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Request types.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Write.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Flush.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Device ID string (20 bytes).
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Request status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Request status: I/O error.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Request status: unsupported request.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Descriptor flags.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Device-writable buffer.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Indirect descriptor table (not negotiated: treated as an error).
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Available ring flag: no interrupt wanted.
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Largest queue the device offers.
pub const QUEUE_SIZE_MAX: u16 = 128;
/// Most data segments per request (queue size minus header and status).
pub const SEG_MAX: u32 = QUEUE_SIZE_MAX as u32 - 2;
/// Largest request payload accepted (bytes); longer ones fail with IOERR.
pub const MAX_REQUEST_BYTES: u64 = 32 << 20;
/// The ID string GET_ID returns.
pub const DEVICE_ID: &[u8; 20] = b"FERROVISOR-VIRTIO-0\0";
/// "No MSI-X vector".
const NO_VECTOR: u16 = 0xFFFF;
/// Sector size.
const SECTOR: u64 = 512;

/// The virtqueue's registers and ring position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtqState {
    /// Queue size (power of two, at most [`QUEUE_SIZE_MAX`]).
    pub size: u16,
    /// Enabled by the driver.
    pub enabled: bool,
    /// Descriptor table address.
    pub desc: u64,
    /// Available (driver) ring address.
    pub avail: u64,
    /// Used (device) ring address.
    pub used: u64,
    /// Next available-ring index to take.
    pub last_avail: u16,
    /// Next used-ring index to fill.
    pub used_idx: u16,
}

impl Default for VirtqState {
    fn default() -> Self {
        VirtqState { size: QUEUE_SIZE_MAX, enabled: false, desc: 0, avail: 0, used: 0, last_avail: 0, used_idx: 0 }
    }
}

/// Guest-visible state, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioBlkState {
    /// PCI configuration space.
    pub config: PciConfig,
    /// device_feature_select.
    pub device_feature_select: u32,
    /// driver_feature_select.
    pub driver_feature_select: u32,
    /// Features the driver accepted.
    pub driver_features: u64,
    /// Device status.
    pub status: u8,
    /// queue_select.
    pub queue_select: u16,
    /// The request queue.
    pub queue: VirtqState,
    /// ISR status.
    pub isr: u8,
    /// A notification waits for [`VirtioBlk::run`].
    pub kicked: bool,
}

/// A virtio-blk PCI function driving INTx through `I`.
pub struct VirtioBlk<I: IrqLine> {
    s: VirtioBlkState,
    disk: Box<dyn BlockBackend>,
    irq: I,
    irq_level: bool,
}

impl<I: IrqLine> std::fmt::Debug for VirtioBlk<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioBlk").field("state", &self.s).field("disk_len", &self.disk.len()).finish()
    }
}

/// Writes a virtio PCI capability at `at` (16 bytes, or 20 with a notify multiplier).
fn put_cap(c: &mut PciConfig, at: usize, next: u8, cfg_type: u8, offset: u64, len: u64, mult: Option<u32>) {
    let cap_len = if mult.is_some() { 20 } else { 16 };
    c.bytes[at..at + 4].copy_from_slice(&[0x09, next, cap_len, cfg_type]);
    c.bytes[at + 4] = 0; // BAR 0
    c.set_u32(at + 8, offset as u32);
    c.set_u32(at + 12, len as u32);
    if let Some(m) = mult {
        c.set_u32(at + 16, m);
    }
}

/// A request's buffers: device-readable bytes and device-writable segments.
struct Chain {
    head: u16,
    readable: Vec<u8>,
    writable: Vec<(u64, u32)>,
}

/// Why a chain could not be walked.
#[derive(Debug)]
enum ChainError {
    /// Guest memory outside RAM.
    Fault,
    /// A malformed chain (loop, bad index, indirect, too long).
    Malformed(&'static str),
}

impl<I: IrqLine> VirtioBlk<I> {
    /// The function with `disk` behind it, interrupt pin INTA#.
    pub fn new(irq: I, disk: Box<dyn BlockBackend>) -> Self {
        let mut c = PciConfig::new(VIRTIO_PCI_VENDOR_ID, VIRTIO_PCI_DEVICE_ID_BLK, 0x01, 0x01_80_00, 0);
        c.set_subsystem(VIRTIO_PCI_VENDOR_ID, 0x1100);
        c.bytes[crate::pci::PCI_INTERRUPT_PIN] = 1;
        c.add_bar(0, PciBarKind::Io, u32::from(VIRTIO_BAR_SIZE));
        c.set_status(0x10); // capabilities list
        c.bytes[0x34] = 0x40;
        put_cap(&mut c, 0x40, 0x50, 1, COMMON_CFG_OFFSET, COMMON_CFG_LEN, None);
        put_cap(&mut c, 0x50, 0x60, 3, ISR_OFFSET, 1, None);
        put_cap(&mut c, 0x60, 0x70, 4, DEVICE_CFG_OFFSET, DEVICE_CFG_LEN, None);
        put_cap(&mut c, 0x70, 0x00, 2, NOTIFY_OFFSET, 2, Some(0));
        let s = VirtioBlkState {
            config: c,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            queue_select: 0,
            queue: VirtqState::default(),
            isr: 0,
            kicked: false,
        };
        VirtioBlk { s, disk, irq, irq_level: false }
    }

    /// Rebuilds from a snapshot with the same disk.
    pub fn from_state(irq: I, disk: Box<dyn BlockBackend>, mut state: VirtioBlkState) -> Self {
        state.config = PciConfig::from_state(state.config);
        let mut d = VirtioBlk { s: state, disk, irq, irq_level: false };
        d.update_irq();
        d
    }

    /// A snapshot.
    pub fn state(&self) -> VirtioBlkState {
        self.s.clone()
    }

    /// Takes the disk out (a machine reset moves it to a fresh device).
    pub fn into_disk(self) -> Box<dyn BlockBackend> {
        self.disk
    }

    /// The features offered.
    pub fn device_features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH;
        if self.disk.read_only() {
            f |= VIRTIO_BLK_F_RO;
        }
        f
    }

    /// The I/O port base of BAR0 if I/O decoding is on.
    pub fn io_base(&self) -> Option<u16> {
        let c = &self.s.config;
        if c.command() & PCI_COMMAND_IO == 0 {
            return None;
        }
        let base = c.bar_address(0)? as u16;
        (base != 0).then_some(base)
    }

    /// Whether a notification waits for [`VirtioBlk::run`].
    pub fn pending(&self) -> bool {
        self.s.kicked
    }

    /// The INTx level.
    pub fn irq_level(&self) -> bool {
        self.irq_level
    }

    fn update_irq(&mut self) {
        let level = self.s.isr != 0 && self.s.config.command() & PCI_COMMAND_INTX_DISABLE == 0;
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    fn reset(&mut self) {
        self.s.device_feature_select = 0;
        self.s.driver_feature_select = 0;
        self.s.driver_features = 0;
        self.s.status = 0;
        self.s.queue_select = 0;
        self.s.queue = VirtqState::default();
        self.s.isr = 0;
        self.s.kicked = false;
        self.update_irq();
    }

    /// The 0x40 bytes of `struct virtio_blk_config`.
    fn device_config(&self) -> [u8; DEVICE_CFG_LEN as usize] {
        let mut b = [0u8; DEVICE_CFG_LEN as usize];
        b[0..8].copy_from_slice(&(self.disk.len() / SECTOR).to_le_bytes());
        b[0x0C..0x10].copy_from_slice(&SEG_MAX.to_le_bytes());
        b[0x14..0x18].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        b[0x22..0x24].copy_from_slice(&1u16.to_le_bytes()); // num_queues
        b
    }

    fn common_read(&self, off: u64) -> u64 {
        let s = &self.s;
        let q = &s.queue;
        let sel_ok = s.queue_select == 0;
        match off {
            0x00 => u64::from(s.device_feature_select),
            0x04 => match s.device_feature_select {
                0 => self.device_features() & 0xFFFF_FFFF,
                1 => self.device_features() >> 32,
                _ => 0,
            },
            0x08 => u64::from(s.driver_feature_select),
            0x0C => match s.driver_feature_select {
                0 => s.driver_features & 0xFFFF_FFFF,
                1 => s.driver_features >> 32,
                _ => 0,
            },
            0x10 => u64::from(NO_VECTOR),
            0x12 => 1,
            0x14 => u64::from(s.status),
            0x15 => 0, // config_generation: the configuration never changes
            0x16 => u64::from(s.queue_select),
            0x18 => u64::from(if sel_ok { q.size } else { 0 }),
            0x1A => u64::from(NO_VECTOR),
            0x1C => u64::from(sel_ok && q.enabled),
            0x1E => 0, // queue_notify_off
            0x20 if sel_ok => q.desc,
            0x28 if sel_ok => q.avail,
            0x30 if sel_ok => q.used,
            _ => 0,
        }
    }

    /// The register at `off` of width `len` in the common configuration, and its field width.
    fn common_field(off: u64) -> Option<(u64, usize)> {
        Some(match off {
            0x00 | 0x04 | 0x08 | 0x0C => (off, 4),
            0x10 | 0x12 | 0x16 | 0x18 | 0x1A | 0x1C | 0x1E => (off, 2),
            0x14 | 0x15 => (off, 1),
            0x20..=0x37 => (off & !7, 8),
            _ => return None,
        })
    }

    fn common_write(&mut self, off: u64, len: usize, v: u64) {
        let can_setup_queue = self.s.status & STATUS_DRIVER_OK == 0;
        let sel_ok = self.s.queue_select == 0;
        match (off, len) {
            (0x00, 4) => self.s.device_feature_select = v as u32,
            (0x08, 4) => self.s.driver_feature_select = v as u32,
            (0x0C, 4) => {
                if self.s.status & STATUS_FEATURES_OK == 0 {
                    match self.s.driver_feature_select {
                        0 => self.s.driver_features = (self.s.driver_features & !0xFFFF_FFFF) | (v & 0xFFFF_FFFF),
                        1 => self.s.driver_features = (self.s.driver_features & 0xFFFF_FFFF) | (v << 32),
                        _ => {}
                    }
                }
            }
            (0x14, 1) => self.write_status(v as u8),
            (0x16, 2) => self.s.queue_select = v as u16,
            (0x18, 2) if sel_ok && can_setup_queue => {
                let n = v as u16;
                if n.is_power_of_two() && n <= QUEUE_SIZE_MAX {
                    self.s.queue.size = n;
                } else {
                    log::debug!("virtio-blk: bad queue size {n}");
                }
            }
            (0x1C, 2) if sel_ok => {
                if v == 1 {
                    self.s.queue.enabled = true;
                }
            }
            (0x20..=0x37, 4 | 8) if sel_ok && can_setup_queue => {
                let field = match off & !7 {
                    0x20 => &mut self.s.queue.desc,
                    0x28 => &mut self.s.queue.avail,
                    _ => &mut self.s.queue.used,
                };
                if len == 8 {
                    *field = v;
                } else if off & 4 == 0 {
                    *field = (*field & !0xFFFF_FFFF) | (v & 0xFFFF_FFFF);
                } else {
                    *field = (*field & 0xFFFF_FFFF) | (v << 32);
                }
            }
            _ => log::debug!("virtio-blk: common config write {v:#x} ({len} bytes) at {off:#x} dropped"),
        }
    }

    fn write_status(&mut self, v: u8) {
        if v == 0 {
            self.reset();
            return;
        }
        let mut v = v;
        if v & STATUS_FEATURES_OK != 0 && self.s.status & STATUS_FEATURES_OK == 0 {
            let f = self.s.driver_features;
            if f & !self.device_features() != 0 || f & VIRTIO_F_VERSION_1 == 0 {
                log::debug!("virtio-blk: features {f:#x} refused");
                v &= !STATUS_FEATURES_OK;
            }
        }
        self.s.status = v | (self.s.status & STATUS_DEVICE_NEEDS_RESET);
    }

    fn bar_read(&mut self, off: u64, data: &mut [u8]) {
        let len = data.len();
        if off < COMMON_CFG_LEN {
            let v = match Self::common_field(off) {
                Some((base, w)) if w >= len && off + len as u64 <= base + w as u64 => {
                    self.common_read(base) >> (8 * (off - base))
                }
                _ => u64::MAX,
            };
            data.copy_from_slice(&v.to_le_bytes()[..len]);
        } else if off == ISR_OFFSET {
            data.fill(0);
            data[0] = std::mem::take(&mut self.s.isr);
            self.update_irq();
        } else if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_LEN).contains(&off) {
            let cfg = self.device_config();
            for (i, d) in data.iter_mut().enumerate() {
                *d = cfg.get((off - DEVICE_CFG_OFFSET) as usize + i).copied().unwrap_or(0);
            }
        } else {
            data.fill(0xFF);
        }
    }

    fn bar_write(&mut self, off: u64, data: &[u8]) {
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(b);
        if off < COMMON_CFG_LEN {
            self.common_write(off, data.len(), v);
        } else if off == NOTIFY_OFFSET {
            if v & 0xFFFF == 0 && self.s.status & STATUS_DRIVER_OK != 0 && self.s.queue.enabled {
                self.s.kicked = true;
            }
        } else {
            log::debug!("virtio-blk: write {v:#x} at BAR offset {off:#x} dropped");
        }
    }

    /// Processes every request the driver made available, completing each in the used ring,
    /// and raises the queue interrupt unless the driver asked for none.
    pub fn run(&mut self, mem: &mut dyn DmaMemory) {
        if !std::mem::take(&mut self.s.kicked) {
            return;
        }
        let q = self.s.queue;
        if q.size == 0 || self.s.status & STATUS_DEVICE_NEEDS_RESET != 0 {
            return;
        }
        let mut completed = 0u32;
        // At most one queue's worth per kick: a driver that keeps adding gets another kick.
        for _ in 0..u32::from(q.size) * 2 {
            let Some(avail_idx) = read_u16(mem, q.avail + 2) else { return self.broken("avail ring") };
            if avail_idx == self.s.queue.last_avail {
                break;
            }
            let slot = u64::from(self.s.queue.last_avail % q.size);
            let Some(head) = read_u16(mem, q.avail + 4 + 2 * slot) else { return self.broken("avail ring") };
            let written = match self.walk(mem, head) {
                Ok(chain) => self.execute(mem, &chain),
                Err(ChainError::Fault) => return self.broken("descriptor outside RAM"),
                Err(ChainError::Malformed(why)) => return self.broken(why),
            };
            let used_slot = u64::from(self.s.queue.used_idx % q.size);
            let mut elem = [0u8; 8];
            elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
            elem[4..].copy_from_slice(&written.to_le_bytes());
            if mem.write(q.used + 4 + 8 * used_slot, &elem).is_err() {
                return self.broken("used ring");
            }
            self.s.queue.used_idx = self.s.queue.used_idx.wrapping_add(1);
            self.s.queue.last_avail = self.s.queue.last_avail.wrapping_add(1);
            if mem.write(q.used + 2, &self.s.queue.used_idx.to_le_bytes()).is_err() {
                return self.broken("used ring");
            }
            completed += 1;
        }
        if completed > 0 {
            let flags = read_u16(mem, q.avail).unwrap_or(0);
            if flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0 {
                self.s.isr |= 1;
                self.update_irq();
            }
        }
    }

    /// The device cannot go on (a hostile or broken ring): DEVICE_NEEDS_RESET and a
    /// configuration interrupt, as the specification says.
    fn broken(&mut self, why: &str) {
        log::debug!("virtio-blk: {why}: device needs reset");
        self.s.status |= STATUS_DEVICE_NEEDS_RESET;
        self.s.isr |= 2;
        self.update_irq();
    }

    fn walk(&self, mem: &mut dyn DmaMemory, head: u16) -> Result<Chain, ChainError> {
        let q = &self.s.queue;
        let mut chain = Chain { head, readable: Vec::new(), writable: Vec::new() };
        let mut idx = head;
        let mut total = 0u64;
        for _ in 0..q.size {
            if idx >= q.size {
                return Err(ChainError::Malformed("descriptor index out of range"));
            }
            let mut d = [0u8; 16];
            mem.read(q.desc + 16 * u64::from(idx), &mut d).map_err(|_| ChainError::Fault)?;
            let addr = u64::from_le_bytes(d[0..8].try_into().unwrap_or_default());
            let len = u32::from_le_bytes(d[8..12].try_into().unwrap_or_default());
            let flags = u16::from_le_bytes([d[12], d[13]]);
            let next = u16::from_le_bytes([d[14], d[15]]);
            if flags & VIRTQ_DESC_F_INDIRECT != 0 {
                return Err(ChainError::Malformed("indirect descriptor not negotiated"));
            }
            total += u64::from(len);
            if total > MAX_REQUEST_BYTES + 64 {
                return Err(ChainError::Malformed("request too long"));
            }
            if flags & VIRTQ_DESC_F_WRITE != 0 {
                chain.writable.push((addr, len));
            } else {
                if !chain.writable.is_empty() {
                    return Err(ChainError::Malformed("readable descriptor after a writable one"));
                }
                let at = chain.readable.len();
                chain.readable.resize(at + len as usize, 0);
                mem.read(addr, &mut chain.readable[at..]).map_err(|_| ChainError::Fault)?;
            }
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(chain);
            }
            idx = next;
        }
        Err(ChainError::Malformed("descriptor loop"))
    }

    /// Runs one request; returns the bytes written to its writable buffers.
    fn execute(&mut self, mem: &mut dyn DmaMemory, chain: &Chain) -> u32 {
        let wlen: u64 = chain.writable.iter().map(|&(_, l)| u64::from(l)).sum();
        if wlen == 0 || chain.readable.len() < 16 {
            log::debug!("virtio-blk: request {} without header or status byte", chain.head);
            return 0;
        }
        let h = &chain.readable;
        let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let sector = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
        let data_in = wlen - 1; // bytes before the status byte
        let mut out = Vec::new();
        let status = match kind {
            VIRTIO_BLK_T_IN => match self.disk_range(sector, data_in) {
                Some(off) => {
                    out.resize(data_in as usize, 0);
                    if self.disk.read_at(off, &mut out).is_ok() {
                        VIRTIO_BLK_S_OK
                    } else {
                        out.clear();
                        VIRTIO_BLK_S_IOERR
                    }
                }
                None => VIRTIO_BLK_S_IOERR,
            },
            VIRTIO_BLK_T_OUT => {
                let data = &h[16..];
                match self.disk_range(sector, data.len() as u64) {
                    Some(_) if self.disk.read_only() => VIRTIO_BLK_S_IOERR,
                    Some(off) if self.disk.write_at(off, data).is_ok() => VIRTIO_BLK_S_OK,
                    _ => VIRTIO_BLK_S_IOERR,
                }
            }
            VIRTIO_BLK_T_FLUSH => {
                if self.disk.flush().is_ok() {
                    VIRTIO_BLK_S_OK
                } else {
                    VIRTIO_BLK_S_IOERR
                }
            }
            VIRTIO_BLK_T_GET_ID => {
                out.extend_from_slice(&DEVICE_ID[..(data_in as usize).min(DEVICE_ID.len())]);
                VIRTIO_BLK_S_OK
            }
            _ => VIRTIO_BLK_S_UNSUPP,
        };
        out.push(status);
        // Data fills the writable buffers from the start; the status byte is the last byte of
        // the last one.
        let status_pos = wlen - 1;
        let mut pos = 0u64;
        let mut written = 0u64;
        for &(addr, len) in &chain.writable {
            let seg_end = pos + u64::from(len);
            // Payload bytes for this segment.
            let data_end = (out.len() as u64 - 1).min(seg_end);
            if pos < data_end {
                let src = &out[pos as usize..data_end as usize];
                if mem.write(addr, src).is_err() {
                    return written as u32;
                }
                written += src.len() as u64;
            }
            if (pos..seg_end).contains(&status_pos) && mem.write(addr + (status_pos - pos), &[status]).is_err() {
                return written as u32;
            }
            pos = seg_end;
        }
        // The used length counts every byte written, the status byte included.
        (written + 1) as u32
    }

    /// The byte offset of a transfer of `len` bytes at `sector`, if it is whole sectors inside
    /// the disk.
    fn disk_range(&self, sector: u64, len: u64) -> Option<u64> {
        let off = sector.checked_mul(SECTOR)?;
        (len.is_multiple_of(SECTOR) && off.checked_add(len)? <= self.disk.len() && len <= MAX_REQUEST_BYTES)
            .then_some(off)
    }
}

fn read_u16(mem: &mut dyn DmaMemory, addr: u64) -> Option<u16> {
    let mut b = [0u8; 2];
    mem.read(addr, &mut b).ok()?;
    Some(u16::from_le_bytes(b))
}

impl<I: IrqLine> PioDevice for VirtioBlk<I> {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        if !matches!(data.len(), 1 | 2 | 4) {
            data.fill(0xFF);
            return;
        }
        self.bar_read(access.offset, data);
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        if !matches!(data.len(), 1 | 2 | 4) {
            return;
        }
        self.bar_write(access.offset, data);
        self.update_irq();
    }
}

impl<I: IrqLine> PciFunction for VirtioBlk<I> {
    fn read_config(&mut self, offset: u8, data: &mut [u8]) {
        self.s.config.read(usize::from(offset), data);
    }

    fn write_config(&mut self, offset: u8, data: &[u8]) {
        self.s.config.write(usize::from(offset), data);
        if usize::from(offset) <= PCI_COMMAND + 1 {
            self.update_irq();
        }
    }
}

impl<I: IrqLine> base::Persist for VirtioBlk<I> {
    type State = VirtioBlkState;
    /// The interrupt line and the disk (its contents are not part of the state).
    type ConstructorArgs = (I, Box<dyn BlockBackend>);
    type Error = std::convert::Infallible;
    fn save(&self) -> VirtioBlkState {
        self.state()
    }
    fn restore((irq, disk): Self::ConstructorArgs, state: &VirtioBlkState) -> Result<Self, Self::Error> {
        Ok(Self::from_state(irq, disk, state.clone()))
    }
}
