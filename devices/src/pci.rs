//! PCI: configuration mechanism #1 (ports 0xCF8/0xCFC), config space with masks, and the
//! i440FX/PIIX3 functions of the PC.
//!
//! [`PciConfigIo`] latches CONFIG_ADDRESS (0xCF8, dword writes only) and forwards CONFIG_DATA
//! (0xCFC–0xCFF, byte/word/dword accesses at any offset that stays inside the dword) to the
//! function addressed, found through a [`PciRoot`]. Absent functions read as all ones and
//! ignore writes, as on real hardware. Byte accesses to 0xCF9 reach the PIIX reset control
//! register (Linux reboots through it).
//!
//! Every function keeps its 256-byte configuration space in a [`PciConfig`]: the bytes plus a
//! writable-bits mask and a write-one-to-clear mask (status register), so read-only bits are
//! enforced in one place and BAR sizing (write all ones, read back the size mask) falls out of
//! the mask. A machine can use the generic slot table [`PciBus`], or implement [`PciRoot`] over
//! its own struct holding the concrete functions ([`I440fxHost`], [`Piix3Isa`],
//! [`crate::ide::PiixIde`], [`crate::piix4_pm::Piix4Pm`]) so it can still reach them by type.

use crate::bus::{Access, PioDevice};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// CONFIG_ADDRESS port.
pub const PCI_CONFIG_ADDRESS_PORT: u16 = 0xCF8;
/// CONFIG_DATA port (0xCFC–0xCFF).
pub const PCI_CONFIG_DATA_PORT: u16 = 0xCFC;
/// PIIX reset control register (byte port inside the CONFIG_ADDRESS dword).
pub const PIIX_RCR_PORT: u16 = 0xCF9;

/// CONFIG_ADDRESS: enable bit.
pub const CONFIG_ADDRESS_ENABLE: u32 = 0x8000_0000;
/// CONFIG_ADDRESS: bus number field.
const CONFIG_ADDRESS_BUS_SHIFT: u32 = 16;
/// CONFIG_ADDRESS: device number field.
const CONFIG_ADDRESS_DEV_SHIFT: u32 = 11;
/// CONFIG_ADDRESS: function number field.
const CONFIG_ADDRESS_FUNC_SHIFT: u32 = 8;
/// CONFIG_ADDRESS: register number field (dword aligned).
const CONFIG_ADDRESS_REG_MASK: u32 = 0xFC;
/// CONFIG_ADDRESS: bits that latch (bits 30:24 and 1:0 are reserved and read as 0).
const CONFIG_ADDRESS_WRITABLE: u32 = 0x80FF_FFFC;

/// PIIX RCR: system reset (full reset rather than CPU-only INIT).
pub const RCR_SYS_RST: u8 = 0x02;
/// PIIX RCR: reset CPU (a 0→1 transition triggers the reset selected by SYS_RST).
pub const RCR_RST_CPU: u8 = 0x04;

/// Config space size of a conventional PCI function.
pub const PCI_CONFIG_SPACE_SIZE: usize = 256;

/// Vendor ID (16 bits).
pub const PCI_VENDOR_ID: usize = 0x00;
/// Device ID (16 bits).
pub const PCI_DEVICE_ID: usize = 0x02;
/// Command register (16 bits).
pub const PCI_COMMAND: usize = 0x04;
/// Status register (16 bits).
pub const PCI_STATUS: usize = 0x06;
/// Revision ID.
pub const PCI_REVISION_ID: usize = 0x08;
/// Programming interface.
pub const PCI_CLASS_PROG: usize = 0x09;
/// Sub-class.
pub const PCI_CLASS_DEVICE: usize = 0x0A;
/// Base class.
pub const PCI_CLASS_BASE: usize = 0x0B;
/// Cache line size.
pub const PCI_CACHE_LINE_SIZE: usize = 0x0C;
/// Latency timer.
pub const PCI_LATENCY_TIMER: usize = 0x0D;
/// Header type (bit 7: multi-function).
pub const PCI_HEADER_TYPE: usize = 0x0E;
/// First base address register.
pub const PCI_BASE_ADDRESS_0: usize = 0x10;
/// Subsystem vendor ID.
pub const PCI_SUBSYSTEM_VENDOR_ID: usize = 0x2C;
/// Subsystem ID.
pub const PCI_SUBSYSTEM_ID: usize = 0x2E;
/// Interrupt line (written by firmware, read by the OS).
pub const PCI_INTERRUPT_LINE: usize = 0x3C;
/// Interrupt pin (1 = INTA#).
pub const PCI_INTERRUPT_PIN: usize = 0x3D;

/// Command: I/O space enable.
pub const PCI_COMMAND_IO: u16 = 0x0001;
/// Command: memory space enable.
pub const PCI_COMMAND_MEMORY: u16 = 0x0002;
/// Command: bus master enable.
pub const PCI_COMMAND_MASTER: u16 = 0x0004;
/// Command: special cycles.
pub const PCI_COMMAND_SPECIAL: u16 = 0x0008;
/// Command: parity error response.
pub const PCI_COMMAND_PARITY: u16 = 0x0040;
/// Command: SERR# enable.
pub const PCI_COMMAND_SERR: u16 = 0x0100;
/// Command: interrupt disable.
pub const PCI_COMMAND_INTX_DISABLE: u16 = 0x0400;
/// Status: the write-one-to-clear error bits (parity, SERR, master/target abort, ...).
pub const PCI_STATUS_W1C: u16 = 0xF900;
/// Status: medium DEVSEL timing (what the Intel chipset functions report).
pub const PCI_STATUS_DEVSEL_MEDIUM: u16 = 0x0200;
/// Header type: multi-function device.
pub const PCI_HEADER_TYPE_MULTI_FUNCTION: u8 = 0x80;
/// BAR: I/O space indicator.
pub const PCI_BASE_ADDRESS_SPACE_IO: u32 = 0x01;
/// BAR: 64-bit memory type.
pub const PCI_BASE_ADDRESS_MEM_TYPE_64: u32 = 0x04;
/// BAR: prefetchable memory.
pub const PCI_BASE_ADDRESS_MEM_PREFETCH: u32 = 0x08;

/// Subsystem vendor QEMU gives its devices (Red Hat / Qumranet); SeaBIOS checks it on the
/// host bridge to know it runs on QEMU-compatible hardware.
pub const PCI_SUBVENDOR_ID_REDHAT_QUMRANET: u16 = 0x1AF4;
/// Subsystem ID QEMU gives its devices.
pub const PCI_SUBDEVICE_ID_QEMU: u16 = 0x1100;
/// Intel's vendor ID.
pub const PCI_VENDOR_ID_INTEL: u16 = 0x8086;
/// 82441FX (i440FX) PCI and memory controller.
pub const PCI_DEVICE_ID_INTEL_82441: u16 = 0x1237;
/// 82371SB (PIIX3) PCI-to-ISA bridge, function 0.
pub const PCI_DEVICE_ID_INTEL_82371SB_0: u16 = 0x7000;
/// 82371SB (PIIX3) IDE, function 1.
pub const PCI_DEVICE_ID_INTEL_82371SB_1: u16 = 0x7010;
/// 82371AB (PIIX4) power management, function 3.
pub const PCI_DEVICE_ID_INTEL_82371AB_3: u16 = 0x7113;

/// A PCI function address (bus, device, function).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PciAddress {
    /// Bus number.
    pub bus: u8,
    /// Device number (0–31).
    pub dev: u8,
    /// Function number (0–7).
    pub func: u8,
}

impl PciAddress {
    /// The address `bus:dev.func` (dev and func are masked to 5 and 3 bits).
    pub const fn new(bus: u8, dev: u8, func: u8) -> Self {
        PciAddress { bus, dev: dev & 0x1F, func: func & 7 }
    }

    /// The device/function byte (`dev << 3 | func`).
    pub const fn devfn(self) -> u8 {
        (self.dev << 3) | self.func
    }
}

impl std::fmt::Display for PciAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.dev, self.func)
    }
}

/// Decodes a CONFIG_ADDRESS value: `None` if the enable bit is clear, else the function and
/// the dword-aligned register number (PCI Local Bus Specification 3.0, 3.2.2.3.2).
pub fn parse_config_address(value: u32) -> Option<(PciAddress, u8)> {
    if value & CONFIG_ADDRESS_ENABLE == 0 {
        return None;
    }
    let bus = (value >> CONFIG_ADDRESS_BUS_SHIFT) as u8;
    let dev = ((value >> CONFIG_ADDRESS_DEV_SHIFT) & 0x1F) as u8;
    let func = ((value >> CONFIG_ADDRESS_FUNC_SHIFT) & 7) as u8;
    Some((PciAddress::new(bus, dev, func), (value & CONFIG_ADDRESS_REG_MASK) as u8))
}

/// The kind of a base address register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PciBarKind {
    /// I/O space.
    Io,
    /// 32-bit memory space.
    Memory32,
}

/// A 256-byte configuration space with its writable and write-one-to-clear masks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciConfig {
    /// The register bytes.
    pub bytes: Vec<u8>,
    /// Bits software may write.
    pub writable: Vec<u8>,
    /// Bits cleared by writing one (status register error bits).
    pub w1c: Vec<u8>,
}

impl PciConfig {
    /// A type-0 header: IDs, revision, class code (`base << 16 | sub << 8 | prog_if`) and
    /// header type. The command register's usual bits, cache line size, latency timer and
    /// interrupt line are writable; the status error bits are write-one-to-clear.
    pub fn new(vendor: u16, device: u16, revision: u8, class: u32, header_type: u8) -> Self {
        let mut c = PciConfig {
            bytes: vec![0; PCI_CONFIG_SPACE_SIZE],
            writable: vec![0; PCI_CONFIG_SPACE_SIZE],
            w1c: vec![0; PCI_CONFIG_SPACE_SIZE],
        };
        c.set_u16(PCI_VENDOR_ID, vendor);
        c.set_u16(PCI_DEVICE_ID, device);
        c.bytes[PCI_REVISION_ID] = revision;
        c.bytes[PCI_CLASS_PROG] = class as u8;
        c.bytes[PCI_CLASS_DEVICE] = (class >> 8) as u8;
        c.bytes[PCI_CLASS_BASE] = (class >> 16) as u8;
        c.bytes[PCI_HEADER_TYPE] = header_type;
        c.set_status(PCI_STATUS_DEVSEL_MEDIUM);
        let cmd_mask = PCI_COMMAND_IO
            | PCI_COMMAND_MEMORY
            | PCI_COMMAND_MASTER
            | PCI_COMMAND_SPECIAL
            | PCI_COMMAND_PARITY
            | PCI_COMMAND_SERR
            | PCI_COMMAND_INTX_DISABLE;
        c.set_writable_u16(PCI_COMMAND, cmd_mask);
        c.w1c[PCI_STATUS..PCI_STATUS + 2].copy_from_slice(&PCI_STATUS_W1C.to_le_bytes());
        c.writable[PCI_CACHE_LINE_SIZE] = 0xFF;
        c.writable[PCI_LATENCY_TIMER] = 0xFF;
        c.writable[PCI_INTERRUPT_LINE] = 0xFF;
        c
    }

    /// Rebuilds from saved bytes and masks (each must hold 256 bytes; shorter vectors are
    /// padded with zeros, longer ones truncated).
    pub fn from_state(mut state: PciConfig) -> Self {
        for v in [&mut state.bytes, &mut state.writable, &mut state.w1c] {
            v.resize(PCI_CONFIG_SPACE_SIZE, 0);
        }
        state
    }

    /// The byte at `offset` (0xFF past the end).
    pub fn byte(&self, offset: usize) -> u8 {
        self.bytes.get(offset).copied().unwrap_or(0xFF)
    }

    /// The little-endian word at `offset`.
    pub fn u16_at(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.byte(offset), self.byte(offset + 1)])
    }

    /// The little-endian dword at `offset`.
    pub fn u32_at(&self, offset: usize) -> u32 {
        u32::from_le_bytes([self.byte(offset), self.byte(offset + 1), self.byte(offset + 2), self.byte(offset + 3)])
    }

    /// Sets a word directly (device side, bypassing the masks).
    pub fn set_u16(&mut self, offset: usize, v: u16) {
        if let Some(s) = self.bytes.get_mut(offset..offset + 2) {
            s.copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Sets a dword directly (device side, bypassing the masks).
    pub fn set_u32(&mut self, offset: usize, v: u32) {
        if let Some(s) = self.bytes.get_mut(offset..offset + 4) {
            s.copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Sets the writable mask of a word.
    pub fn set_writable_u16(&mut self, offset: usize, mask: u16) {
        if let Some(s) = self.writable.get_mut(offset..offset + 2) {
            s.copy_from_slice(&mask.to_le_bytes());
        }
    }

    /// Makes `[start, end)` fully writable (device-specific registers).
    pub fn set_writable_range(&mut self, start: usize, end: usize) {
        if let Some(s) = self.writable.get_mut(start..end.min(PCI_CONFIG_SPACE_SIZE)) {
            s.fill(0xFF);
        }
    }

    /// Sets the subsystem vendor and device IDs (read-only to the guest).
    pub fn set_subsystem(&mut self, vendor: u16, device: u16) {
        self.set_u16(PCI_SUBSYSTEM_VENDOR_ID, vendor);
        self.set_u16(PCI_SUBSYSTEM_ID, device);
    }

    /// ORs `bits` into the status register (device side).
    pub fn set_status(&mut self, bits: u16) {
        let s = self.u16_at(PCI_STATUS) | bits;
        self.set_u16(PCI_STATUS, s);
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.u16_at(PCI_COMMAND)
    }

    /// Declares BAR `index` (0–5) of `size` bytes (a power of two; at least 4 for I/O and 16
    /// for memory). The BAR's address bits above the size become writable, so writing all
    /// ones reads back `!(size - 1)` with the type bits.
    pub fn add_bar(&mut self, index: usize, kind: PciBarKind, size: u32) {
        debug_assert!(index < 6 && size.is_power_of_two());
        let off = PCI_BASE_ADDRESS_0 + 4 * index;
        let (flags, min) = match kind {
            PciBarKind::Io => (PCI_BASE_ADDRESS_SPACE_IO, 4),
            PciBarKind::Memory32 => (0, 16),
        };
        let size = size.max(min);
        self.set_u32(off, flags);
        let mask = !(size - 1);
        if let Some(s) = self.writable.get_mut(off..off + 4) {
            s.copy_from_slice(&mask.to_le_bytes());
        }
    }

    /// The base address BAR `index` decodes (type bits stripped), or `None` if it is not an
    /// implemented BAR. Whether decoding is enabled is the command register's business.
    pub fn bar_address(&self, index: usize) -> Option<u32> {
        if index >= 6 {
            return None;
        }
        let off = PCI_BASE_ADDRESS_0 + 4 * index;
        let m = self.writable.get(off..off + 4)?;
        let mask = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
        (mask != 0).then(|| self.u32_at(off) & mask)
    }

    /// A guest read of `data.len()` bytes at `offset` (bytes past the end read 0xFF).
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            *d = self.byte(offset + i);
        }
    }

    /// A guest write through the masks: writable bits take the new value, write-one-to-clear
    /// bits written as one are cleared, everything else is kept.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let o = offset + i;
            let (Some(&wm), Some(&cm)) = (self.writable.get(o), self.w1c.get(o)) else {
                break;
            };
            if let Some(b) = self.bytes.get_mut(o) {
                *b = ((*b & !wm) | (v & wm)) & !(v & cm);
            }
        }
    }
}

/// A PCI function as seen by configuration cycles.
pub trait PciFunction {
    /// Reads `data.len()` (1, 2 or 4) bytes at config `offset` (never crossing a dword).
    fn read_config(&mut self, offset: u8, data: &mut [u8]);
    /// Writes `data.len()` (1, 2 or 4) bytes at config `offset` (never crossing a dword).
    fn write_config(&mut self, offset: u8, data: &[u8]);
}

impl PciFunction for PciConfig {
    fn read_config(&mut self, offset: u8, data: &mut [u8]) {
        self.read(usize::from(offset), data);
    }

    fn write_config(&mut self, offset: u8, data: &[u8]) {
        self.write(usize::from(offset), data);
    }
}

/// Finds the function a configuration cycle addresses.
pub trait PciRoot {
    /// The function at `addr`, or `None` if nothing answers there (reads all ones).
    fn function_mut(&mut self, addr: PciAddress) -> Option<&mut dyn PciFunction>;
}

/// A generic PCI bus 0: a slot table of boxed functions keyed by device/function.
#[derive(Default)]
pub struct PciBus {
    slots: BTreeMap<u8, Box<dyn PciFunction>>,
}

impl std::fmt::Debug for PciBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciBus").field("devfns", &self.slots.keys().collect::<Vec<_>>()).finish()
    }
}

impl PciBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Plugs `f` in at `dev.func` of bus 0, returning what was there.
    pub fn insert(&mut self, dev: u8, func: u8, f: Box<dyn PciFunction>) -> Option<Box<dyn PciFunction>> {
        self.slots.insert(PciAddress::new(0, dev, func).devfn(), f)
    }

    /// Unplugs the function at `dev.func`.
    pub fn remove(&mut self, dev: u8, func: u8) -> Option<Box<dyn PciFunction>> {
        self.slots.remove(&PciAddress::new(0, dev, func).devfn())
    }
}

impl PciRoot for PciBus {
    fn function_mut(&mut self, addr: PciAddress) -> Option<&mut dyn PciFunction> {
        if addr.bus != 0 {
            return None;
        }
        match self.slots.get_mut(&addr.devfn()) {
            Some(f) => Some(f.as_mut()),
            None => None,
        }
    }
}

/// The state of [`PciConfigIo`], for snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciConfigIoState {
    /// CONFIG_ADDRESS as last written.
    pub address: u32,
    /// The PIIX reset control register (0xCF9).
    pub rcr: u8,
    /// A reset was requested through 0xCF9 and not yet taken.
    pub reset_requested: bool,
}

/// Configuration mechanism #1 in front of a [`PciRoot`]; map it at 0xCF8 with length 8.
#[derive(Debug)]
pub struct PciConfigIo<R: PciRoot> {
    s: PciConfigIoState,
    root: R,
}

impl<R: PciRoot> PciConfigIo<R> {
    /// The ports in front of `root`, CONFIG_ADDRESS cleared.
    pub fn new(root: R) -> Self {
        PciConfigIo { s: PciConfigIoState::default(), root }
    }

    /// Rebuilds from a snapshot (the root's functions restore themselves).
    pub fn from_state(root: R, state: PciConfigIoState) -> Self {
        PciConfigIo { s: state, root }
    }

    /// A snapshot of the port state.
    pub fn state(&self) -> PciConfigIoState {
        self.s
    }

    /// The functions.
    pub fn root(&self) -> &R {
        &self.root
    }

    /// The functions, mutably.
    pub fn root_mut(&mut self) -> &mut R {
        &mut self.root
    }

    /// Returns and clears a reset requested through 0xCF9 (`Some(true)` for a system reset,
    /// `Some(false)` for a CPU-only reset).
    pub fn take_reset_request(&mut self) -> Option<bool> {
        if std::mem::take(&mut self.s.reset_requested) {
            Some(self.s.rcr & RCR_SYS_RST != 0)
        } else {
            None
        }
    }

    /// A configuration read at the latched address plus `byte` (0–3 within the dword).
    fn config_read(&mut self, byte: u8, data: &mut [u8]) {
        match parse_config_address(self.s.address) {
            Some((addr, reg)) => match self.root.function_mut(addr) {
                Some(f) => f.read_config(reg + byte, data),
                None => data.fill(0xFF),
            },
            None => data.fill(0xFF),
        }
    }

    fn config_write(&mut self, byte: u8, data: &[u8]) {
        if let Some((addr, reg)) = parse_config_address(self.s.address) {
            match self.root.function_mut(addr) {
                Some(f) => f.write_config(reg + byte, data),
                None => log::debug!("pci: write to absent function {addr} reg {:#x} dropped", reg + byte),
            }
        }
    }
}

impl<R: PciRoot> PioDevice for PciConfigIo<R> {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        match (access.offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.s.address.to_le_bytes()),
            (1, 1) => data[0] = self.s.rcr,
            (off @ 4..=7, n @ (1 | 2 | 4)) if (off - 4) as usize + n <= 4 => self.config_read((off - 4) as u8, data),
            _ => {
                log::debug!("pci: {}-byte read at {:#x}", data.len(), access.addr);
                data.fill(0xFF);
            }
        }
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        match (access.offset, data) {
            (0, &[a, b, c, d]) => self.s.address = u32::from_le_bytes([a, b, c, d]) & CONFIG_ADDRESS_WRITABLE,
            (1, &[v]) => {
                if v & RCR_RST_CPU != 0 && self.s.rcr & RCR_RST_CPU == 0 {
                    log::debug!("pci: reset requested through 0xCF9 ({v:#x})");
                    self.s.reset_requested = true;
                }
                self.s.rcr = v & (RCR_SYS_RST | RCR_RST_CPU);
                if v & RCR_RST_CPU != 0 {
                    // The RST_CPU bit does not stick on real hardware once the reset happens;
                    // clear it so the next 0→1 write resets again.
                    self.s.rcr &= !RCR_RST_CPU;
                }
            }
            (off @ 4..=7, d) if matches!(d.len(), 1 | 2 | 4) && (off - 4) as usize + d.len() <= 4 => {
                self.config_write((off - 4) as u8, d)
            }
            _ => log::debug!("pci: {}-byte write at {:#x} dropped", data.len(), access.addr),
        }
    }
}

/// i440FX PAM0 (BIOS area 0xF0000–0xFFFFF in bits 5:4).
pub const I440FX_PAM0: usize = 0x59;
/// i440FX SMRAM control register.
pub const I440FX_SMRAM: usize = 0x72;
/// i440FX DRAM row boundary registers (DRB0–7).
const I440FX_DRB0: usize = 0x60;
/// SMRAM: D_OPEN (SMRAM visible outside SMM).
pub const SMRAM_D_OPEN: u8 = 0x40;
/// SMRAM: D_CLS.
pub const SMRAM_D_CLS: u8 = 0x20;
/// SMRAM: D_LCK (locks D_OPEN, D_LCK and G_SMRAME until reset).
pub const SMRAM_D_LCK: u8 = 0x10;
/// SMRAM: G_SMRAME (global SMRAM enable).
pub const SMRAM_G_SMRAME: u8 = 0x08;
/// SMRAM: C_BASE_SEG, hardwired to 010b (SMRAM at 0xA0000).
pub const SMRAM_C_BASE_SEG: u8 = 0x02;
/// PAM nibble: reads hit DRAM.
pub const PAM_RE: u8 = 0x1;
/// PAM nibble: writes hit DRAM.
pub const PAM_WE: u8 = 0x2;

/// How one PAM segment routes accesses: to DRAM (shadow RAM) or to the PCI bus / ROM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PamRegion {
    /// Guest physical base.
    pub base: u32,
    /// Length in bytes.
    pub len: u32,
    /// Reads come from DRAM (else from the BIOS ROM / PCI).
    pub read_dram: bool,
    /// Writes go to DRAM (else to the ROM, i.e. dropped).
    pub write_dram: bool,
}

/// The i440FX (82441FX) PCI and memory controller at 00:00.0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct I440fxHost {
    config: PciConfig,
    pam_changed: bool,
}

impl Default for I440fxHost {
    fn default() -> Self {
        Self::new()
    }
}

impl I440fxHost {
    /// The host bridge at power-on: PAM all zero (0xC0000–0xFFFFF reads go to ROM), SMRAM
    /// 0x02.
    pub fn new() -> Self {
        let mut c = PciConfig::new(PCI_VENDOR_ID_INTEL, PCI_DEVICE_ID_INTEL_82441, 0x02, 0x06_00_00, 0);
        // The host bridge always responds to memory and I/O cycles and masters the bus.
        c.set_subsystem(PCI_SUBVENDOR_ID_REDHAT_QUMRANET, PCI_SUBDEVICE_ID_QEMU);
        c.set_u16(PCI_COMMAND, PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
        c.set_writable_u16(PCI_COMMAND, PCI_COMMAND_SERR | PCI_COMMAND_PARITY);
        // PMCCFG, DETURBO, DBC, AXC, DRAMR, DRAMC, DRAMT (0x50-0x58) and DRB0-7 (0x60-0x67)
        // are plain storage as far as an emulator is concerned.
        c.set_writable_range(0x50, 0x59);
        c.set_writable_range(I440FX_DRB0, I440FX_DRB0 + 8);
        c.writable[I440FX_PAM0] = 0x30;
        for r in I440FX_PAM0 + 1..=I440FX_PAM0 + 6 {
            c.writable[r] = 0x33;
        }
        c.bytes[I440FX_SMRAM] = SMRAM_C_BASE_SEG;
        c.writable[I440FX_SMRAM] = SMRAM_D_OPEN | SMRAM_D_CLS | SMRAM_D_LCK | SMRAM_G_SMRAME;
        I440fxHost { config: c, pam_changed: false }
    }

    /// Rebuilds from a snapshot.
    pub fn from_state(state: PciConfig) -> Self {
        I440fxHost { config: PciConfig::from_state(state), pam_changed: true }
    }

    /// A snapshot.
    pub fn state(&self) -> PciConfig {
        self.config.clone()
    }

    /// The configuration space.
    pub fn config(&self) -> &PciConfig {
        &self.config
    }

    /// The seven PAM registers (0x59–0x5F).
    pub fn pam(&self) -> [u8; 7] {
        let mut p = [0; 7];
        p.copy_from_slice(&self.config.bytes[I440FX_PAM0..I440FX_PAM0 + 7]);
        p
    }

    /// The SMRAM control register.
    pub fn smram(&self) -> u8 {
        self.config.bytes[I440FX_SMRAM]
    }

    /// Whether SMRAM (0xA0000–0xBFFFF DRAM) is visible to non-SMM accesses: G_SMRAME and
    /// D_OPEN both set. Otherwise that window goes to the PCI bus (VGA).
    pub fn smram_open(&self) -> bool {
        let v = self.smram();
        v & SMRAM_G_SMRAME != 0 && v & SMRAM_D_OPEN != 0
    }

    /// The 13 PAM segments in address order: 0xC0000–0xEFFFF in 16 KiB pieces (PAM1–PAM6,
    /// low nibble then high nibble), then 0xF0000–0xFFFFF (PAM0 high nibble).
    pub fn pam_regions(&self) -> [PamRegion; 13] {
        let pam = self.pam();
        let region = |base: u32, len: u32, nibble: u8| PamRegion {
            base,
            len,
            read_dram: nibble & PAM_RE != 0,
            write_dram: nibble & PAM_WE != 0,
        };
        let mut out = [region(0, 0, 0); 13];
        for (i, r) in out.iter_mut().take(12).enumerate() {
            let reg = pam[1 + i / 2];
            let nibble = if i % 2 == 0 { reg & 0xF } else { reg >> 4 };
            *r = region(0xC_0000 + 0x4000 * i as u32, 0x4000, nibble);
        }
        out[12] = region(0xF_0000, 0x1_0000, pam[0] >> 4);
        out
    }

    /// Returns and clears "a PAM register was written since the last call" (the machine
    /// remaps the shadow area when it is set; also set after a restore).
    pub fn take_pam_changed(&mut self) -> bool {
        std::mem::take(&mut self.pam_changed)
    }
}

impl PciFunction for I440fxHost {
    fn read_config(&mut self, offset: u8, data: &mut [u8]) {
        self.config.read(usize::from(offset), data);
    }

    fn write_config(&mut self, offset: u8, data: &[u8]) {
        let start = usize::from(offset);
        let end = start + data.len();
        let pam_before = self.pam();
        let smram_before = self.smram();
        self.config.write(start, data);
        if (start..end).contains(&I440FX_SMRAM) {
            let new = self.config.bytes[I440FX_SMRAM];
            let v = if smram_before & SMRAM_D_LCK != 0 {
                // Locked: D_OPEN reads 0 and cannot be set; D_LCK and G_SMRAME stay as they
                // were; D_CLS remains writable.
                (smram_before & !(SMRAM_D_CLS | SMRAM_D_OPEN)) | (new & SMRAM_D_CLS)
            } else if new & SMRAM_D_LCK != 0 {
                new & !SMRAM_D_OPEN
            } else {
                new
            };
            self.config.bytes[I440FX_SMRAM] = v | SMRAM_C_BASE_SEG;
        }
        if self.pam() != pam_before {
            self.pam_changed = true;
        }
    }
}

/// PIIX3 PIRQ route control registers (PIRQRC A–D, 0x60–0x63).
pub const PIIX_PIRQRC: usize = 0x60;
/// PIRQRC: routing disabled.
pub const PIRQRC_DISABLE: u8 = 0x80;
/// PIRQRC: IRQ number field.
pub const PIRQRC_IRQ_MASK: u8 = 0x0F;

/// The PIIX3 PCI-to-ISA bridge (82371SB function 0) at 00:01.0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piix3Isa {
    config: PciConfig,
}

impl Default for Piix3Isa {
    fn default() -> Self {
        Self::new()
    }
}

impl Piix3Isa {
    /// The bridge at power-on: multi-function header, all PIRQs disabled (0x80).
    pub fn new() -> Self {
        let mut c = PciConfig::new(
            PCI_VENDOR_ID_INTEL,
            PCI_DEVICE_ID_INTEL_82371SB_0,
            0x00,
            0x06_01_00,
            PCI_HEADER_TYPE_MULTI_FUNCTION,
        );
        c.set_subsystem(PCI_SUBVENDOR_ID_REDHAT_QUMRANET, PCI_SUBDEVICE_ID_QEMU);
        c.set_u16(PCI_COMMAND, PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
        // The ISA bridge's function registers (0x4C IORT, 0x4E XBCS, 0x60 PIRQRC, 0x69 TOM,
        // 0x6A MSTAT, 0x70 MBIRQ, 0x76 MBDMA, 0x80 APICBASE, 0x82 DLC, 0xA0 SMI...) are
        // storage here.
        c.set_writable_range(0x40, 0x100);
        c.bytes[0x4C] = 0x4D; // IORT
        c.bytes[0x4E] = 0x03; // XBCS: BIOS/keyboard decode
        for r in PIIX_PIRQRC..PIIX_PIRQRC + 4 {
            c.bytes[r] = PIRQRC_DISABLE;
        }
        c.bytes[0x69] = 0x02; // TOM
        c.bytes[0x70] = PIRQRC_DISABLE; // MBIRQ0
        c.bytes[0x71] = PIRQRC_DISABLE; // MBIRQ1
        c.bytes[0x76] = 0x0C; // MBDMA0
        c.bytes[0x77] = 0x0C; // MBDMA1
        c.bytes[0xA8] = 0x0F; // SMI timer
        Piix3Isa { config: c }
    }

    /// Rebuilds from a snapshot.
    pub fn from_state(state: PciConfig) -> Self {
        Piix3Isa { config: PciConfig::from_state(state) }
    }

    /// A snapshot.
    pub fn state(&self) -> PciConfig {
        self.config.clone()
    }

    /// The configuration space.
    pub fn config(&self) -> &PciConfig {
        &self.config
    }

    /// The ISA IRQ PIRQ`n` (0–3 for A–D) is routed to, or `None` if routing is disabled or
    /// the IRQ number is reserved (0–2, 8, 13).
    pub fn pirq_route(&self, n: usize) -> Option<u8> {
        let v = *self.config.bytes.get(PIIX_PIRQRC + n).filter(|_| n < 4)?;
        let irq = v & PIRQRC_IRQ_MASK;
        (v & PIRQRC_DISABLE == 0 && !matches!(irq, 0..=2 | 8 | 13)).then_some(irq)
    }
}

impl PciFunction for Piix3Isa {
    fn read_config(&mut self, offset: u8, data: &mut [u8]) {
        self.config.read(usize::from(offset), data);
    }

    fn write_config(&mut self, offset: u8, data: &[u8]) {
        self.config.write(usize::from(offset), data);
    }
}

impl<R: PciRoot> base::Persist for PciConfigIo<R> {
    type State = PciConfigIoState;
    /// The functions behind the ports (each restores itself).
    type ConstructorArgs = R;
    type Error = std::convert::Infallible;
    fn save(&self) -> PciConfigIoState {
        self.state()
    }
    fn restore(root: R, state: &PciConfigIoState) -> Result<Self, Self::Error> {
        Ok(Self::from_state(root, *state))
    }
}

impl base::Persist for I440fxHost {
    type State = PciConfig;
    type ConstructorArgs = ();
    type Error = std::convert::Infallible;
    fn save(&self) -> PciConfig {
        self.state()
    }
    fn restore((): (), state: &PciConfig) -> Result<Self, Self::Error> {
        Ok(Self::from_state(state.clone()))
    }
}

impl base::Persist for Piix3Isa {
    type State = PciConfig;
    type ConstructorArgs = ();
    type Error = std::convert::Infallible;
    fn save(&self) -> PciConfig {
        self.state()
    }
    fn restore((): (), state: &PciConfig) -> Result<Self, Self::Error> {
        Ok(Self::from_state(state.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base::VirtualInstant;

    fn at(port: u16) -> Access {
        Access { offset: u64::from(port - PCI_CONFIG_ADDRESS_PORT), addr: u64::from(port), now: VirtualInstant(0) }
    }

    fn addr(dev: u8, func: u8, reg: u8) -> u32 {
        CONFIG_ADDRESS_ENABLE | u32::from(dev) << 11 | u32::from(func) << 8 | u32::from(reg)
    }

    fn pc() -> PciConfigIo<PciBus> {
        let mut bus = PciBus::new();
        bus.insert(0, 0, Box::new(I440fxHost::new()));
        bus.insert(1, 0, Box::new(Piix3Isa::new()));
        bus.insert(1, 3, Box::new(crate::piix4_pm::Piix4Pm::new(crate::bus::NoIrq)));
        PciConfigIo::new(bus)
    }

    fn cfg_read(io: &mut PciConfigIo<PciBus>, dev: u8, func: u8, reg: u8, width: usize) -> u32 {
        io.write(at(0xCF8), &addr(dev, func, reg & 0xFC).to_le_bytes());
        let mut b = [0u8; 4];
        io.read(at(0xCFC + u16::from(reg & 3)), &mut b[..width]);
        u32::from_le_bytes(b)
    }

    fn cfg_write(io: &mut PciConfigIo<PciBus>, dev: u8, func: u8, reg: u8, width: usize, v: u32) {
        io.write(at(0xCF8), &addr(dev, func, reg & 0xFC).to_le_bytes());
        io.write(at(0xCFC + u16::from(reg & 3)), &v.to_le_bytes()[..width]);
    }

    #[test]
    fn test_pci_config_address_decode() {
        assert_eq!(parse_config_address(0x8000_0000), Some((PciAddress::new(0, 0, 0), 0)));
        assert_eq!(parse_config_address(0x8001_0A3C), Some((PciAddress::new(1, 1, 2), 0x3C)));
        assert_eq!(parse_config_address(0x8000_FFFF), Some((PciAddress::new(0, 31, 7), 0xFC)));
        assert_eq!(parse_config_address(0x0000_0800), None);
        assert_eq!(PciAddress::new(0, 1, 3).devfn(), 0x0B);
        assert_eq!(PciAddress::new(0, 1, 3).to_string(), "00:01.3");
    }

    #[test]
    fn test_pci_ids_and_widths() {
        let mut io = pc();
        assert_eq!(cfg_read(&mut io, 0, 0, 0, 4), 0x1237_8086);
        assert_eq!(cfg_read(&mut io, 0, 0, 2, 2), 0x1237);
        assert_eq!(cfg_read(&mut io, 0, 0, 1, 1), 0x80);
        assert_eq!(cfg_read(&mut io, 0, 0, 3, 1), 0x12);
        assert_eq!(cfg_read(&mut io, 1, 0, 0, 4), 0x7000_8086);
        assert_eq!(cfg_read(&mut io, 1, 0, 0x0A, 2), 0x0601, "ISA bridge class");
        assert_eq!(cfg_read(&mut io, 1, 0, PCI_HEADER_TYPE as u8, 1), 0x80, "multi-function");
        assert_eq!(cfg_read(&mut io, 0, 0, 0x0A, 2), 0x0600, "host bridge class");
        assert_eq!(cfg_read(&mut io, 1, 3, 0, 4), 0x7113_8086);
        // QEMU's subsystem IDs, which SeaBIOS's qemu_detect() checks on 00:00.0.
        assert_eq!(cfg_read(&mut io, 0, 0, PCI_SUBSYSTEM_VENDOR_ID as u8, 4), 0x1100_1AF4);
        cfg_write(&mut io, 0, 0, PCI_SUBSYSTEM_VENDOR_ID as u8, 4, 0);
        assert_eq!(cfg_read(&mut io, 0, 0, PCI_SUBSYSTEM_VENDOR_ID as u8, 4), 0x1100_1AF4, "read-only");
        // Word access at CFE reads the upper half of the dword.
        io.write(at(0xCF8), &addr(1, 0, 0).to_le_bytes());
        let mut w = [0u8; 2];
        io.read(at(0xCFE), &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x7000);
        // A word access at CFF would cross the dword: all ones, not a panic.
        io.read(at(0xCFF), &mut w);
        assert_eq!(w, [0xFF, 0xFF]);
        // CONFIG_ADDRESS reads back with its reserved bits clear.
        io.write(at(0xCF8), &0xFFFF_FFFFu32.to_le_bytes());
        let mut d = [0u8; 4];
        io.read(at(0xCF8), &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x80FF_FFFC);
    }

    #[test]
    fn test_pci_absent_functions_read_all_ones() {
        let mut io = pc();
        assert_eq!(cfg_read(&mut io, 2, 0, 0, 4), 0xFFFF_FFFF);
        assert_eq!(cfg_read(&mut io, 0, 1, 0, 2), 0xFFFF);
        assert_eq!(cfg_read(&mut io, 31, 7, 0xFC, 1), 0xFF);
        // Another bus.
        io.write(at(0xCF8), &(addr(0, 0, 0) | 1 << 16).to_le_bytes());
        let mut d = [0u8; 4];
        io.read(at(0xCFC), &mut d);
        assert_eq!(d, [0xFF; 4]);
        // Enable bit clear: no configuration cycle.
        io.write(at(0xCF8), &0u32.to_le_bytes());
        io.read(at(0xCFC), &mut d);
        assert_eq!(d, [0xFF; 4]);
        cfg_write(&mut io, 5, 0, 0x10, 4, 0x1234);
        assert_eq!(cfg_read(&mut io, 5, 0, 0x10, 4), 0xFFFF_FFFF);
    }

    #[test]
    fn test_pci_read_only_and_w1c_bits() {
        let mut io = pc();
        cfg_write(&mut io, 1, 0, 0, 4, 0);
        assert_eq!(cfg_read(&mut io, 1, 0, 0, 4), 0x7000_8086, "IDs are read-only");
        cfg_write(&mut io, 1, 0, 0x08, 4, 0);
        assert_eq!(cfg_read(&mut io, 1, 0, 0x0A, 2), 0x0601, "class is read-only");
        // Interrupt line writable, pin read-only.
        let mut cfg = PciConfig::new(0x1234, 0x5678, 1, 0x01_00_00, 0);
        cfg.bytes[PCI_INTERRUPT_PIN] = 1;
        cfg.write(PCI_INTERRUPT_LINE, &[0x0B, 0x04]);
        assert_eq!(cfg.u16_at(PCI_INTERRUPT_LINE), 0x010B);
        // Command: only the defined bits stick.
        cfg.write(PCI_COMMAND, &[0xFF, 0xFF]);
        assert_eq!(cfg.command(), 0x054F);
        // Status error bits are write-one-to-clear, DEVSEL is read-only.
        cfg.set_status(0x8000 | 0x2000);
        cfg.write(PCI_STATUS, &0x8000u16.to_le_bytes());
        assert_eq!(cfg.u16_at(PCI_STATUS), 0x2000 | PCI_STATUS_DEVSEL_MEDIUM);
        cfg.write(PCI_STATUS, &0xFFFFu16.to_le_bytes());
        assert_eq!(cfg.u16_at(PCI_STATUS), PCI_STATUS_DEVSEL_MEDIUM);
    }

    #[test]
    fn test_pci_bar_sizing() {
        let mut cfg = PciConfig::new(0x1234, 0x5678, 1, 0x01_00_00, 0);
        cfg.add_bar(0, PciBarKind::Memory32, 0x1000);
        cfg.add_bar(4, PciBarKind::Io, 16);
        cfg.write(0x10, &u32::MAX.to_le_bytes());
        assert_eq!(cfg.u32_at(0x10), 0xFFFF_F000, "4 KiB memory BAR");
        cfg.write(0x20, &u32::MAX.to_le_bytes());
        assert_eq!(cfg.u32_at(0x20), 0xFFFF_FFF1, "16-byte I/O BAR keeps its space bit");
        // Unimplemented BARs read zero whatever is written.
        cfg.write(0x14, &u32::MAX.to_le_bytes());
        assert_eq!(cfg.u32_at(0x14), 0);
        assert_eq!(cfg.bar_address(1), None);
        cfg.write(0x10, &0xFEBF_1234u32.to_le_bytes());
        assert_eq!(cfg.bar_address(0), Some(0xFEBF_1000));
        cfg.write(0x20, &0xC041u32.to_le_bytes());
        assert_eq!(cfg.bar_address(4), Some(0xC040));
        assert_eq!(cfg.u32_at(0x20), 0xC041);
        // Byte writes go through the same mask.
        cfg.write(0x21, &[0xD0]);
        assert_eq!(cfg.bar_address(4), Some(0xD040));
    }

    #[test]
    fn test_i440fx_pam_shadowing_sequence() {
        let mut host = I440fxHost::new();
        assert!(host.pam_regions().iter().all(|r| !r.read_dram && !r.write_dram), "power-on: all ROM");
        // SeaBIOS make_bios_writable: PAM1-6 = 0x33, PAM0 = 0x30.
        for r in 0x5A..=0x5F {
            host.write_config(r, &[0x33]);
        }
        host.write_config(0x59, &[0x30]);
        assert!(host.take_pam_changed());
        assert!(!host.take_pam_changed());
        assert_eq!(host.pam(), [0x30, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33]);
        let regions = host.pam_regions();
        assert!(regions.iter().all(|r| r.read_dram && r.write_dram));
        assert_eq!((regions[0].base, regions[0].len), (0xC_0000, 0x4000));
        assert_eq!((regions[11].base, regions[11].len), (0xE_C000, 0x4000));
        assert_eq!((regions[12].base, regions[12].len), (0xF_0000, 0x1_0000));
        // make_bios_readonly: read-only DRAM for the BIOS, low nibble of PAM0 reserved.
        host.write_config(0x59, &[0x1F]);
        host.write_config(0x5A, &[0x31]);
        assert_eq!(host.pam()[0], 0x10);
        let r = host.pam_regions();
        assert_eq!((r[12].read_dram, r[12].write_dram), (true, false));
        assert_eq!((r[0].read_dram, r[0].write_dram), (true, false), "C0000: low nibble 1");
        assert_eq!((r[1].read_dram, r[1].write_dram), (true, true), "C4000: high nibble 3");
        // A dword write covering PAM0..PAM2 at 0x58.
        host.write_config(0x58, &[0x00, 0x00, 0x22, 0x11]);
        assert_eq!(host.pam()[..3], [0x00, 0x22, 0x11]);
    }

    #[test]
    fn test_i440fx_smram_lock() {
        let mut host = I440fxHost::new();
        assert_eq!(host.smram(), 0x02);
        assert!(!host.smram_open());
        host.write_config(0x72, &[0x4A]);
        assert_eq!(host.smram(), 0x4A, "D_OPEN | G_SMRAME, base segment hardwired");
        assert!(host.smram_open());
        host.write_config(0x72, &[0x00]);
        assert_eq!(host.smram(), 0x02, "C_BASE_SEG cannot be cleared");
        host.write_config(0x72, &[0x58]);
        assert_eq!(host.smram(), 0x1A, "setting D_LCK closes D_OPEN");
        host.write_config(0x72, &[0x40]);
        assert_eq!(host.smram(), 0x1A, "locked");
    }

    #[test]
    fn test_piix3_pirq_routing() {
        let mut isa = Piix3Isa::new();
        assert_eq!(isa.pirq_route(0), None);
        isa.write_config(0x60, &[0x0A, 0x0A, 0x0B, 0x0B]);
        assert_eq!((0..4).map(|n| isa.pirq_route(n)).collect::<Vec<_>>(), [Some(10), Some(10), Some(11), Some(11)]);
        isa.write_config(0x62, &[0x80]);
        assert_eq!(isa.pirq_route(2), None);
        isa.write_config(0x63, &[0x02]);
        assert_eq!(isa.pirq_route(3), None, "IRQ 2 is reserved");
        assert_eq!(isa.pirq_route(4), None);
        let mut d = [0u8; 4];
        isa.read_config(0x60, &mut d);
        assert_eq!(d, [0x0A, 0x0A, 0x80, 0x02]);
    }

    #[test]
    fn test_pci_reset_control_register() {
        let mut io = pc();
        assert_eq!(io.take_reset_request(), None);
        io.write(at(0xCF9), &[RCR_SYS_RST]);
        assert_eq!(io.take_reset_request(), None);
        io.write(at(0xCF9), &[RCR_SYS_RST | RCR_RST_CPU]);
        assert_eq!(io.take_reset_request(), Some(true));
        io.write(at(0xCF9), &[RCR_RST_CPU]);
        assert_eq!(io.take_reset_request(), Some(false));
    }

    #[test]
    fn test_pci_random_accesses_never_panic() {
        let mut io = pc();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = x % 9;
            let width = [1usize, 2, 3, 4, 8][(x >> 8) as usize % 5];
            let mut buf = [0u8; 8];
            buf.copy_from_slice(&(x >> 3).to_le_bytes());
            let a = Access { offset: off, addr: 0xCF8 + off, now: VirtualInstant(0) };
            if x & (1 << 40) != 0 {
                io.write(a, &buf[..width]);
            } else {
                io.read(a, &mut buf[..width]);
            }
            // Keep the read-only identity intact.
            let _ = io.take_reset_request();
        }
        assert_eq!(cfg_read(&mut io, 0, 0, 0, 4), 0x1237_8086);
    }
}
