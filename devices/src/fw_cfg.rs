//! QEMU's firmware configuration device (fw_cfg), traditional I/O interface, as SeaBIOS and
//! OVMF read it.
//!
//! A 16-bit selector at port 0x510 picks an item and resets the read offset; each byte read
//! from the data port 0x511 returns the next byte of the item (zero past its end, and for
//! unknown items). Writes to the data port are ignored (the write interface is gone from QEMU
//! too). By default the ID item reports only the traditional interface (bit 0).
//!
//! The DMA interface is opt-in ([`FwCfgBuilder::dma`], ID bit 1): the guest writes the
//! big-endian address of a `FWCfgDmaAccess` (BE32 control, BE32 length, BE64 address) to
//! 0x514 (high half) and 0x518 (low half, which starts the transfer); reading 0x514–0x51B
//! returns "QEMU CFG". The transfer needs guest memory, so the write only records it and the
//! machine calls [`FwCfg::run_dma`] when [`FwCfg::dma_pending`] says so (map 0x510 with length
//! 12 then). Select, read and skip are supported; write requests fail with the error bit.
//!
//! Items are numbered keys. Named files live at keys from 0x20 up, listed by the directory at
//! key 0x19: a big-endian 32-bit count, then per file a big-endian 32-bit size, big-endian
//! 16-bit key, 16 reserved bits and a 56-byte NUL-padded name. Files are kept sorted by name
//! and numbered in that order, as QEMU does. Multi-byte numeric items (RAM size, CPU counts)
//! are little-endian.

use crate::bus::{Access, PioDevice};
use crate::dma::DmaMemory;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// DMA address, high half (32-bit big-endian writes).
pub const FW_CFG_DMA_PORT_HIGH: u16 = 0x514;
/// DMA address, low half (a 32-bit big-endian write starts the transfer).
pub const FW_CFG_DMA_PORT_LOW: u16 = 0x518;
/// What the DMA address register reads as.
pub const FW_CFG_DMA_SIGNATURE: [u8; 8] = *b"QEMU CFG";
/// DMA control: error.
pub const FW_CFG_DMA_CTL_ERROR: u32 = 0x01;
/// DMA control: read.
pub const FW_CFG_DMA_CTL_READ: u32 = 0x02;
/// DMA control: skip.
pub const FW_CFG_DMA_CTL_SKIP: u32 = 0x04;
/// DMA control: select the item in bits 31:16 first.
pub const FW_CFG_DMA_CTL_SELECT: u32 = 0x08;
/// DMA control: write (not supported).
pub const FW_CFG_DMA_CTL_WRITE: u32 = 0x10;

/// Selector port (16-bit writes).
pub const FW_CFG_SELECTOR_PORT: u16 = 0x510;
/// Data port (8-bit reads).
pub const FW_CFG_DATA_PORT: u16 = 0x511;

/// "QEMU".
pub const FW_CFG_SIGNATURE: u16 = 0x00;
/// Interface feature bits (u32 LE).
pub const FW_CFG_ID: u16 = 0x01;
/// VM UUID (16 bytes).
pub const FW_CFG_UUID: u16 = 0x02;
/// RAM size in bytes (u64 LE).
pub const FW_CFG_RAM_SIZE: u16 = 0x03;
/// No graphics (u16 LE).
pub const FW_CFG_NOGRAPHIC: u16 = 0x04;
/// Boot CPUs (u16 LE).
pub const FW_CFG_NB_CPUS: u16 = 0x05;
/// Machine ID (u32 LE).
pub const FW_CFG_MACHINE_ID: u16 = 0x06;
/// Legacy boot device (u16 LE).
pub const FW_CFG_BOOT_DEVICE: u16 = 0x0C;
/// NUMA layout: u64 LE node count, then per-CPU node (u64 each), then per-node memory.
pub const FW_CFG_NUMA: u16 = 0x0D;
/// Boot menu enable (u16 LE).
pub const FW_CFG_BOOT_MENU: u16 = 0x0E;
/// Possible CPUs / APIC ID limit (u16 LE).
pub const FW_CFG_MAX_CPUS: u16 = 0x0F;
/// The file directory.
pub const FW_CFG_FILE_DIR: u16 = 0x19;
/// First key of named files.
pub const FW_CFG_FILE_FIRST: u16 = 0x20;
/// Write flag of a selector value (writes are not supported; the flag is ignored).
pub const FW_CFG_WRITE_CHANNEL: u16 = 0x4000;
/// x86 architecture-local keys start here.
pub const FW_CFG_ARCH_LOCAL: u16 = 0x8000;
/// x86: ACPI tables (legacy).
pub const FW_CFG_ACPI_TABLES: u16 = FW_CFG_ARCH_LOCAL;
/// x86: SMBIOS entries (legacy).
pub const FW_CFG_SMBIOS_ENTRIES: u16 = FW_CFG_ARCH_LOCAL + 1;
/// x86: IRQ0 override flag.
pub const FW_CFG_IRQ0_OVERRIDE: u16 = FW_CFG_ARCH_LOCAL + 2;
/// x86: legacy e820 reservations table.
pub const FW_CFG_E820_TABLE: u16 = FW_CFG_ARCH_LOCAL + 3;
/// ID bit: traditional (port) interface.
pub const FW_CFG_VERSION: u32 = 0x01;
/// ID bit: DMA interface (not offered).
pub const FW_CFG_VERSION_DMA: u32 = 0x02;
/// Length of a file name in a directory entry (NUL included).
pub const FW_CFG_MAX_FILE_PATH: usize = 56;
/// Size of one directory entry.
const FW_CFG_FILE_ENTRY_SIZE: usize = 4 + 2 + 2 + FW_CFG_MAX_FILE_PATH;

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;
/// e820 type: ACPI reclaimable.
pub const E820_ACPI: u32 = 3;
/// e820 type: ACPI NVS.
pub const E820_NVS: u32 = 4;

/// One entry of "etc/e820" (20 bytes little-endian: u64 address, u64 length, u32 type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Type ([`E820_RAM`], [`E820_RESERVED`], ...).
    pub kind: u32,
}

impl E820Entry {
    /// The 20-byte wire form.
    pub fn to_bytes(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..16].copy_from_slice(&self.len.to_le_bytes());
        b[16..].copy_from_slice(&self.kind.to_le_bytes());
        b
    }
}

/// Errors building fw_cfg content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, displaydoc::Display)]
pub enum FwCfgError {
    /// file name {0:?} is empty or longer than 55 bytes
    BadFileName(String),
    /// key {0:#x} is reserved for the file directory and files
    ReservedKey(u16),
    /// too many files ({0})
    TooManyFiles(usize),
}

/// The guest-visible cursor, for snapshots (the items are configuration).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwCfgState {
    /// The selected key (write flag stripped).
    pub selector: u16,
    /// Next byte of the item to read.
    pub offset: u32,
    /// DMA address register.
    #[serde(default)]
    pub dma_addr: u64,
    /// A DMA transfer was started and not yet run.
    #[serde(default)]
    pub dma_pending: bool,
}

/// Builds an [`FwCfg`].
#[derive(Debug, Clone, Default)]
pub struct FwCfgBuilder {
    items: BTreeMap<u16, Vec<u8>>,
    files: BTreeMap<String, Vec<u8>>,
    dma: bool,
}

impl FwCfgBuilder {
    /// The signature and ID items, one CPU, no NUMA, boot menu off.
    pub fn new() -> Self {
        let mut b = FwCfgBuilder::default();
        b.items.insert(FW_CFG_SIGNATURE, b"QEMU".to_vec());
        b.items.insert(FW_CFG_ID, FW_CFG_VERSION.to_le_bytes().to_vec());
        b.items.insert(FW_CFG_BOOT_MENU, 0u16.to_le_bytes().to_vec());
        b.cpus(1, 1)
    }

    /// Sets a numbered item (keys 0x19–0x3FFF belong to the directory and files).
    pub fn item(mut self, key: u16, data: Vec<u8>) -> Result<Self, FwCfgError> {
        let key = key & !FW_CFG_WRITE_CHANNEL;
        if (FW_CFG_FILE_DIR..FW_CFG_WRITE_CHANNEL).contains(&key) {
            return Err(FwCfgError::ReservedKey(key));
        }
        self.items.insert(key, data);
        Ok(self)
    }

    /// Offers the DMA interface (ID bit 1; the machine must call [`FwCfg::run_dma`]).
    pub fn dma(mut self, on: bool) -> Self {
        self.dma = on;
        let id = if on { FW_CFG_VERSION | FW_CFG_VERSION_DMA } else { FW_CFG_VERSION };
        self.items.insert(FW_CFG_ID, id.to_le_bytes().to_vec());
        self
    }

    /// RAM size in bytes (key 0x03).
    pub fn ram_size(mut self, bytes: u64) -> Self {
        self.items.insert(FW_CFG_RAM_SIZE, bytes.to_le_bytes().to_vec());
        self
    }

    /// Boot CPUs (key 0x05) and possible CPUs (key 0x0F); the NUMA item (key 0x0D) says zero
    /// nodes, with one zero per possible CPU as QEMU lays it out.
    pub fn cpus(mut self, boot: u16, max: u16) -> Self {
        let max = max.max(boot).max(1);
        self.items.insert(FW_CFG_NB_CPUS, boot.to_le_bytes().to_vec());
        self.items.insert(FW_CFG_MAX_CPUS, max.to_le_bytes().to_vec());
        self.items.insert(FW_CFG_NUMA, vec![0u8; 8 * (1 + usize::from(max))]);
        self
    }

    /// The boot menu: key 0x0E and the "etc/show-boot-menu" file (u16), plus
    /// "etc/boot-menu-wait" (u16 milliseconds) if given.
    pub fn boot_menu(mut self, show: bool, wait_ms: Option<u16>) -> Self {
        let v = u16::from(show).to_le_bytes().to_vec();
        self.items.insert(FW_CFG_BOOT_MENU, v.clone());
        self.files.insert("etc/show-boot-menu".into(), v);
        if let Some(ms) = wait_ms {
            self.files.insert("etc/boot-menu-wait".into(), ms.to_le_bytes().to_vec());
        }
        self
    }

    /// The x86 IRQ0-override flag (key 0x8002, u32): when set, SeaBIOS's MADT routes ISA IRQ 0
    /// (the PIT) to I/O APIC pin 2, so the machine must wire the PIT there too.
    pub fn irq0_override(mut self, on: bool) -> Self {
        self.items.insert(FW_CFG_IRQ0_OVERRIDE, u32::from(on).to_le_bytes().to_vec());
        self
    }

    /// "etc/e820": the memory map.
    pub fn e820(mut self, entries: &[E820Entry]) -> Self {
        self.files.insert("etc/e820".into(), entries.iter().flat_map(|e| e.to_bytes()).collect());
        self
    }

    /// "bootorder": one OpenFirmware device path per line (NUL terminated, as QEMU does).
    pub fn bootorder(mut self, paths: &[&str]) -> Self {
        let mut s = paths.join("\n").into_bytes();
        s.push(0);
        self.files.insert("bootorder".into(), s);
        self
    }

    /// "etc/sercon-port": the I/O port of the UART SeaBIOS mirrors its console to (u16).
    pub fn sercon_port(mut self, port: u16) -> Self {
        self.files.insert("etc/sercon-port".into(), port.to_le_bytes().to_vec());
        self
    }

    /// A named file with arbitrary content (replaces one of the same name).
    pub fn file(mut self, name: &str, data: Vec<u8>) -> Result<Self, FwCfgError> {
        if name.is_empty() || name.len() >= FW_CFG_MAX_FILE_PATH {
            return Err(FwCfgError::BadFileName(name.into()));
        }
        self.files.insert(name.into(), data);
        Ok(self)
    }

    /// The device.
    pub fn build(self) -> Result<FwCfg, FwCfgError> {
        let max = usize::from(FW_CFG_WRITE_CHANNEL - FW_CFG_FILE_FIRST);
        if self.files.len() > max {
            return Err(FwCfgError::TooManyFiles(self.files.len()));
        }
        let mut items = self.items;
        let mut dir = Vec::with_capacity(4 + self.files.len() * FW_CFG_FILE_ENTRY_SIZE);
        dir.extend_from_slice(&(self.files.len() as u32).to_be_bytes());
        for (i, (name, data)) in self.files.into_iter().enumerate() {
            let key = FW_CFG_FILE_FIRST + i as u16;
            dir.extend_from_slice(&(data.len() as u32).to_be_bytes());
            dir.extend_from_slice(&key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut n = [0u8; FW_CFG_MAX_FILE_PATH];
            n[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&n);
            items.insert(key, data);
        }
        items.insert(FW_CFG_FILE_DIR, dir);
        Ok(FwCfg { items, dma: self.dma, s: FwCfgState::default() })
    }
}

/// The fw_cfg device; map it at 0x510 with length 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwCfg {
    items: BTreeMap<u16, Vec<u8>>,
    dma: bool,
    s: FwCfgState,
}

impl FwCfg {
    /// A snapshot of the cursor.
    pub fn state(&self) -> FwCfgState {
        self.s
    }

    /// Restores the cursor.
    pub fn restore(&mut self, state: FwCfgState) {
        self.s = state;
    }

    /// The content of item `key`.
    pub fn item(&self, key: u16) -> Option<&[u8]> {
        self.items.get(&key).map(Vec::as_slice)
    }

    /// The key of the file `name`.
    pub fn file_key(&self, name: &str) -> Option<u16> {
        let dir = self.items.get(&FW_CFG_FILE_DIR)?;
        dir.get(4..)?.chunks_exact(FW_CFG_FILE_ENTRY_SIZE).find_map(|e| {
            let n = &e[8..];
            let len = n.iter().position(|&b| b == 0).unwrap_or(n.len());
            (&n[..len] == name.as_bytes()).then(|| u16::from_be_bytes([e[4], e[5]]))
        })
    }

    /// Selects an item (the write flag is ignored) and rewinds.
    pub fn select(&mut self, key: u16) {
        self.s.selector = key & !FW_CFG_WRITE_CHANNEL;
        self.s.offset = 0;
    }

    /// Whether a DMA transfer waits for [`FwCfg::run_dma`].
    pub fn dma_pending(&self) -> bool {
        self.s.dma_pending
    }

    /// Runs the pending DMA transfer: reads the access descriptor, performs select/read/skip,
    /// and writes the control word back (0, or the error bit).
    pub fn run_dma(&mut self, mem: &mut dyn DmaMemory) {
        if !std::mem::take(&mut self.s.dma_pending) {
            return;
        }
        let desc_addr = std::mem::take(&mut self.s.dma_addr);
        let mut d = [0u8; 16];
        if let Err(e) = mem.read(desc_addr, &mut d) {
            log::debug!("fw_cfg: DMA descriptor: {e}");
            return;
        }
        let control = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
        let length = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
        let addr = u64::from_be_bytes([d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15]]);
        if control & FW_CFG_DMA_CTL_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let mut error = false;
        let read = control & FW_CFG_DMA_CTL_READ != 0;
        let skip = control & FW_CFG_DMA_CTL_SKIP != 0;
        if !read && control & FW_CFG_DMA_CTL_WRITE != 0 {
            log::debug!("fw_cfg: DMA write to item {:#x} refused", self.s.selector);
            error = true;
        } else if read || skip {
            let item = self.items.get(&self.s.selector).map(Vec::as_slice).unwrap_or(&[]);
            let start = (self.s.offset as usize).min(item.len());
            let n = (length as usize).min(item.len() - start);
            if read {
                // The item's bytes, then zeros past its end, in bounded pieces: the guest
                // chooses the length.
                let mut res = mem.write(addr, &item[start..start + n]);
                let zeros = [0u8; 4096];
                let mut at = addr.saturating_add(n as u64);
                let mut left = u64::from(length) - n as u64;
                while res.is_ok() && left > 0 {
                    let k = left.min(zeros.len() as u64);
                    res = mem.write(at, &zeros[..k as usize]);
                    at = at.saturating_add(k);
                    left -= k;
                }
                if let Err(e) = res {
                    log::debug!("fw_cfg: DMA read into {e}");
                    error = true;
                }
            }
            self.s.offset += n as u32;
        }
        let status = if error { FW_CFG_DMA_CTL_ERROR } else { 0 };
        if let Err(e) = mem.write(desc_addr, &status.to_be_bytes()) {
            log::debug!("fw_cfg: DMA status write: {e}");
        }
    }

    /// The next data byte (0 past the end or for an absent item).
    pub fn read_byte(&mut self) -> u8 {
        match self.items.get(&self.s.selector).and_then(|d| d.get(self.s.offset as usize)) {
            Some(&b) => {
                self.s.offset += 1;
                b
            }
            None => 0,
        }
    }
}

impl PioDevice for FwCfg {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        match (access.offset, data.len()) {
            (1, 1) => data[0] = self.read_byte(),
            (off @ 4..=11, n) if self.dma && off as usize + n <= 12 => {
                let o = off as usize - 4;
                data.copy_from_slice(&FW_CFG_DMA_SIGNATURE[o..o + n]);
            }
            _ => {
                log::debug!("fw_cfg: {}-byte read at {:#x}", data.len(), access.addr);
                data.fill(0xFF);
            }
        }
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        match (access.offset, data) {
            (0, &[lo, hi]) => self.select(u16::from_le_bytes([lo, hi])),
            (4, &[a, b, c, d]) if self.dma => {
                let hi = u64::from(u32::from_be_bytes([a, b, c, d]));
                self.s.dma_addr = (self.s.dma_addr & 0xFFFF_FFFF) | hi << 32;
            }
            (8, &[a, b, c, d]) if self.dma => {
                let lo = u64::from(u32::from_be_bytes([a, b, c, d]));
                self.s.dma_addr = (self.s.dma_addr & !0xFFFF_FFFF) | lo;
                self.s.dma_pending = true;
            }
            _ => log::debug!("fw_cfg: {}-byte write at {:#x} dropped", data.len(), access.addr),
        }
    }
}

impl base::Persist for FwCfg {
    type State = FwCfgState;
    /// The device with its items (the items are configuration, rebuilt by the board; only the
    /// cursor is state).
    type ConstructorArgs = FwCfg;
    type Error = std::convert::Infallible;
    fn save(&self) -> FwCfgState {
        self.state()
    }
    fn restore(mut dev: FwCfg, state: &FwCfgState) -> Result<Self, Self::Error> {
        dev.restore(*state);
        Ok(dev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::DmaFault;
    use base::VirtualInstant;

    fn sel(f: &mut FwCfg, key: u16) {
        f.write(Access::at(0, VirtualInstant(0)), &key.to_le_bytes());
    }

    fn read(f: &mut FwCfg, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                let mut b = [0];
                f.read(Access::at(1, VirtualInstant(0)), &mut b);
                b[0]
            })
            .collect()
    }

    fn pc() -> FwCfg {
        FwCfgBuilder::new()
            .ram_size(128 << 20)
            .cpus(1, 4)
            .e820(&[
                E820Entry { addr: 0, len: 0x9_FC00, kind: E820_RAM },
                E820Entry { addr: 0x10_0000, len: (128 << 20) - 0x10_0000, kind: E820_RAM },
                E820Entry { addr: 0xFEFF_C000, len: 0x4000, kind: E820_RESERVED },
            ])
            .bootorder(&["/pci@i0cf8/ide@1,1/drive@0/disk@0"])
            .boot_menu(true, Some(2500))
            .sercon_port(0x3F8)
            .file("opt/blob", vec![1, 2, 3])
            .unwrap()
            .build()
            .unwrap()
    }

    #[test]
    fn test_fw_cfg_signature_and_id() {
        let mut f = pc();
        sel(&mut f, FW_CFG_SIGNATURE);
        assert_eq!(read(&mut f, 6), b"QEMU\0\0", "zero past the end");
        sel(&mut f, FW_CFG_ID);
        assert_eq!(read(&mut f, 4), [1, 0, 0, 0], "traditional interface only");
        // Reselecting rewinds.
        sel(&mut f, FW_CFG_SIGNATURE);
        assert_eq!(read(&mut f, 2), b"QE");
        sel(&mut f, FW_CFG_SIGNATURE);
        assert_eq!(read(&mut f, 1), b"Q");
    }

    #[test]
    fn test_fw_cfg_numeric_items() {
        let mut f = pc();
        sel(&mut f, FW_CFG_RAM_SIZE);
        assert_eq!(u64::from_le_bytes(read(&mut f, 8).try_into().unwrap()), 128 << 20);
        sel(&mut f, FW_CFG_NB_CPUS);
        assert_eq!(read(&mut f, 2), [1, 0]);
        sel(&mut f, FW_CFG_MAX_CPUS);
        assert_eq!(read(&mut f, 2), [4, 0]);
        sel(&mut f, FW_CFG_NUMA);
        assert_eq!(read(&mut f, 8), [0; 8], "zero NUMA nodes");
        assert_eq!(f.item(FW_CFG_NUMA).unwrap().len(), 8 * 5);
        sel(&mut f, FW_CFG_BOOT_MENU);
        assert_eq!(read(&mut f, 2), [1, 0]);
        // An absent item reads zeros, whatever the write flag.
        sel(&mut f, 0x1234 | FW_CFG_WRITE_CHANNEL);
        assert_eq!(f.state().selector, 0x1234);
        assert_eq!(read(&mut f, 3), [0, 0, 0]);
    }

    #[test]
    fn test_fw_cfg_file_directory_layout() {
        let mut f = pc();
        sel(&mut f, FW_CFG_FILE_DIR);
        let count = u32::from_be_bytes(read(&mut f, 4).try_into().unwrap());
        assert_eq!(count, 6);
        let mut names = Vec::new();
        for i in 0..count {
            let e = read(&mut f, 64);
            let size = u32::from_be_bytes(e[0..4].try_into().unwrap());
            let key = u16::from_be_bytes([e[4], e[5]]);
            assert_eq!(&e[6..8], &[0, 0], "reserved");
            let name = String::from_utf8(e[8..].iter().take_while(|&&b| b != 0).copied().collect()).unwrap();
            assert!(e[8 + name.len()..].iter().all(|&b| b == 0), "NUL padded");
            assert_eq!(key, FW_CFG_FILE_FIRST + i as u16);
            assert_eq!(f.item(key).unwrap().len() as u32, size, "{name}");
            names.push(name);
        }
        assert_eq!(
            names,
            ["bootorder", "etc/boot-menu-wait", "etc/e820", "etc/sercon-port", "etc/show-boot-menu", "opt/blob"],
            "sorted by name, numbered in that order"
        );
        // e820: 20-byte little-endian entries.
        let key = f.file_key("etc/e820").unwrap();
        sel(&mut f, key);
        let e = read(&mut f, 60);
        assert_eq!(u64::from_le_bytes(e[20..28].try_into().unwrap()), 0x10_0000);
        assert_eq!(u64::from_le_bytes(e[28..36].try_into().unwrap()), (128 << 20) - 0x10_0000);
        assert_eq!(u32::from_le_bytes(e[36..40].try_into().unwrap()), E820_RAM);
        assert_eq!(u32::from_le_bytes(e[56..60].try_into().unwrap()), E820_RESERVED);
        let key = f.file_key("etc/sercon-port").unwrap();
        sel(&mut f, key);
        assert_eq!(read(&mut f, 2), [0xF8, 0x03]);
        let key = f.file_key("etc/boot-menu-wait").unwrap();
        sel(&mut f, key);
        assert_eq!(u16::from_le_bytes(read(&mut f, 2).try_into().unwrap()), 2500);
        let key = f.file_key("bootorder").unwrap();
        assert_eq!(f.item(key).unwrap().last(), Some(&0));
        assert_eq!(f.file_key("nope"), None);
    }

    struct Ram(Vec<u8>);

    impl DmaMemory for Ram {
        fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
            let a = addr as usize;
            buf.copy_from_slice(self.0.get(a..a + buf.len()).ok_or(DmaFault { addr })?);
            Ok(())
        }
        fn write(&mut self, addr: u64, buf: &[u8]) -> Result<(), DmaFault> {
            let a = addr as usize;
            self.0.get_mut(a..a + buf.len()).ok_or(DmaFault { addr })?.copy_from_slice(buf);
            Ok(())
        }
    }

    /// Starts a DMA the way SeaBIOS does (`outl(cpu_to_be32(addr), 0x518)`) and runs it.
    fn dma(f: &mut FwCfg, ram: &mut Ram, control: u32, len: u32, dest: u64) -> u32 {
        let mut desc = Vec::new();
        desc.extend_from_slice(&control.to_be_bytes());
        desc.extend_from_slice(&len.to_be_bytes());
        desc.extend_from_slice(&dest.to_be_bytes());
        ram.0[0x100..0x110].copy_from_slice(&desc);
        f.write(Access::at(8, VirtualInstant(0)), &0x100u32.to_be_bytes());
        assert!(f.dma_pending());
        f.run_dma(ram);
        assert!(!f.dma_pending());
        u32::from_be_bytes(ram.0[0x100..0x104].try_into().unwrap())
    }

    #[test]
    fn test_fw_cfg_dma_interface() {
        let mut plain = pc();
        let mut sig = [0u8; 4];
        plain.read(Access::at(4, VirtualInstant(0)), &mut sig);
        assert_eq!(sig, [0xFF; 4], "no DMA register unless offered");
        let mut f = FwCfgBuilder::new().dma(true).ram_size(1 << 30).build().unwrap();
        sel(&mut f, FW_CFG_ID);
        assert_eq!(read(&mut f, 4), [3, 0, 0, 0], "traditional + DMA");
        let mut s8 = [0u8; 4];
        f.read(Access::at(4, VirtualInstant(0)), &mut s8);
        assert_eq!(&s8, b"QEMU");
        f.read(Access::at(8, VirtualInstant(0)), &mut s8);
        assert_eq!(&s8, b" CFG");
        let mut ram = Ram(vec![0xEE; 0x1000]);
        // Select + read past the end: zero filled.
        let ctl = u32::from(FW_CFG_SIGNATURE) << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ;
        assert_eq!(dma(&mut f, &mut ram, ctl, 6, 0x200), 0);
        assert_eq!(&ram.0[0x200..0x207], b"QEMU\0\0\xEE");
        // Skip then read continues at the cursor, shared with the port interface.
        let ctl = u32::from(FW_CFG_RAM_SIZE) << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_SKIP;
        assert_eq!(dma(&mut f, &mut ram, ctl, 3, 0), 0);
        assert_eq!(dma(&mut f, &mut ram, FW_CFG_DMA_CTL_READ, 2, 0x300), 0);
        assert_eq!(ram.0[0x300..0x302], [0x40, 0], "bytes 3-4 of 1 GiB LE");
        assert_eq!(read(&mut f, 1), [0]);
        // Writes are refused; a destination outside RAM reports an error.
        assert_eq!(dma(&mut f, &mut ram, FW_CFG_DMA_CTL_WRITE, 1, 0x300), FW_CFG_DMA_CTL_ERROR);
        let ctl = u32::from(FW_CFG_SIGNATURE) << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ;
        assert_eq!(dma(&mut f, &mut ram, ctl, 4, 0xFFFF_0000), FW_CFG_DMA_CTL_ERROR);
        // The high half moves the descriptor.
        f.write(Access::at(4, VirtualInstant(0)), &1u32.to_be_bytes());
        assert_eq!(f.state().dma_addr, 1 << 32);
    }

    #[test]
    fn test_fw_cfg_builder_errors() {
        assert!(matches!(FwCfgBuilder::new().file("", vec![]), Err(FwCfgError::BadFileName(_))));
        assert!(FwCfgBuilder::new().file(&"x".repeat(56), vec![]).is_err());
        assert!(FwCfgBuilder::new().file(&"x".repeat(55), vec![]).is_ok());
        assert_eq!(FwCfgBuilder::new().item(0x20, vec![]).unwrap_err(), FwCfgError::ReservedKey(0x20));
        assert!(FwCfgBuilder::new().item(FW_CFG_E820_TABLE, vec![0; 4]).is_ok());
        let f = FwCfgBuilder::new().irq0_override(true).build().unwrap();
        assert_eq!(f.item(FW_CFG_IRQ0_OVERRIDE), Some(&[1u8, 0, 0, 0][..]));
        assert!(!FwCfgError::ReservedKey(0x19).to_string().is_empty());
    }

    #[test]
    fn test_fw_cfg_state_and_random_accesses() {
        let mut f = pc();
        sel(&mut f, FW_CFG_SIGNATURE);
        read(&mut f, 2);
        let st = f.state();
        let mut g = pc();
        g.restore(st);
        assert_eq!(read(&mut g, 2), b"MU");
        let mut x = 0x1234_5678_9ABC_DEF1u64;
        let mut d = FwCfgBuilder::new().dma(true).file("big", vec![7; 70_000]).unwrap().build().unwrap();
        let mut ram = Ram(vec![0; 0x2_0000]);
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut buf = (x >> 16).to_le_bytes();
            let a = Access::at(x % 14, VirtualInstant(0));
            let width = [1usize, 2, 4, 8][(x >> 10) as usize % 4];
            if x & (1 << 41) != 0 {
                // Descriptors land in RAM (or not) at random.
                ram.0[(x >> 8) as usize % 0x1_FFF0..][..8].copy_from_slice(&x.to_be_bytes());
                d.write(a, &buf[..width]);
            } else {
                d.read(a, &mut buf[..width]);
            }
            d.run_dma(&mut ram);
        }
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = x % 3;
            let width = [1usize, 2, 4, 8][(x >> 10) as usize % 4];
            let mut buf = (x >> 16).to_le_bytes();
            let a = Access::at(off, VirtualInstant(0));
            if x & (1 << 40) != 0 {
                f.write(a, &buf[..width]);
            } else {
                f.read(a, &mut buf[..width]);
                if off != 1 || width != 1 {
                    assert!(buf[..width].iter().all(|&b| b == 0xFF));
                }
            }
        }
        sel(&mut f, FW_CFG_SIGNATURE);
        assert_eq!(read(&mut f, 4), b"QEMU");
    }
}
