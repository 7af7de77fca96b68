//! ACPI tables of the Ferrovisor PC: RSDP, RSDT, XSDT, FADT, FACS, MADT and a DSDT in AML.
//!
//! [`build_tables`] lays the tables out in one blob whose internal pointers hold offsets from
//! the blob's start; [`AcpiTables`] then either places them at fixed guest addresses (direct
//! kernel boot: [`AcpiTables::place`]) or serves them to SeaBIOS through fw_cfg the way QEMU
//! does ([`AcpiTables::fw_cfg_files`]: `etc/acpi/tables`, `etc/acpi/rsdp` and the
//! `etc/table-loader` command list with ALLOCATE, ADD_POINTER and ADD_CHECKSUM entries that the
//! firmware runs to relocate and checksum them).
//!
//! What the tables describe (ACPI 6.x field layouts; FADT revision 3, MADT revision 1):
//! - FADT: SCI on ISA IRQ 9, SMI_CMD 0xB2 with ACPI_ENABLE 0xF1 / ACPI_DISABLE 0xF0 (the
//!   PIIX4 PM function sets SCI_EN on those), the PM1a event (4 bytes) and control (2 bytes)
//!   blocks and the 24-bit PM timer in the PIIX4 PM block, GPE0 (4 bytes), a fixed-feature
//!   power button, no sleep button, the reset register (I/O 0xCF9, value 6), CENTURY at CMOS
//!   0x32 and IAPC_BOOT_ARCH "legacy devices + 8042, no VGA".
//! - MADT: one local APIC (ID 0), the I/O APIC (ID 1, GSI base 0), the interrupt source
//!   overrides ISA IRQ 0 -> GSI 2 and IRQ 9 (the SCI) -> GSI 9 level/active-high, and the
//!   LINT1 NMI of all processors.
//! - DSDT: `\_SB.PCI0` (PNP0A03) with its resources and a `_PRT` that routes INTx of every
//!   slot straight to GSIs 16-19 (`(slot - 1 + pin) & 3`, the PIIX3 PIRQ swizzle), and `\_S5`
//!   with SLP_TYP 0 (the PIIX4's soft-off). The board raises PCI INTx on those I/O APIC pins;
//!   an OS in PIC mode (no APIC) has no link devices to use.

/// Where the hardware the tables describe lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Base of the 64-byte PIIX4 PM I/O block (PM1a_EVT at +0, PM1a_CNT at +4, PM_TMR at +8).
    pub pm_io_base: u16,
    /// GPE0 block port.
    pub gpe0_port: u16,
    /// ISA IRQ of the SCI.
    pub sci_irq: u8,
    /// Physical address of the local APIC.
    pub lapic_addr: u32,
    /// I/O APIC ID.
    pub ioapic_id: u8,
    /// Physical address of the I/O APIC.
    pub ioapic_addr: u32,
    /// Number of processors (APIC IDs 0..cpus).
    pub cpus: u8,
    /// First address above RAM below 4 GiB: the PCI memory window starts here.
    pub pci_hole_start: u32,
}

impl Default for AcpiConfig {
    fn default() -> Self {
        AcpiConfig {
            pm_io_base: 0x600,
            gpe0_port: devices::piix4_pm::PIIX4_GPE0_PORT,
            sci_irq: devices::piix4_pm::PIIX4_SCI_IRQ,
            lapic_addr: devices::lapic::LAPIC_DEFAULT_BASE as u32,
            ioapic_id: 1,
            ioapic_addr: devices::ioapic::IOAPIC_DEFAULT_BASE as u32,
            cpus: 1,
            pci_hole_start: 0x0800_0000,
        }
    }
}

/// The first GSI of the PCI INTx lines (PIRQ A-D go to GSI 16-19).
pub const PCI_GSI_BASE: u32 = 16;

/// The PIRQ line (0-3 for A-D) that INTx `pin` (0-3 for INTA#-INTD#) of PCI device `slot` on
/// bus 0 reaches through the PIIX3 (QEMU's and SeaBIOS's swizzle).
pub fn pci_pirq(slot: u8, pin: u8) -> u8 {
    (slot.wrapping_sub(1).wrapping_add(pin)) & 3
}

/// fw_cfg file with the tables.
pub const ACPI_TABLES_FILE: &str = "etc/acpi/tables";
/// fw_cfg file with the RSDP.
pub const ACPI_RSDP_FILE: &str = "etc/acpi/rsdp";
/// fw_cfg file with the loader commands.
pub const TABLE_LOADER_FILE: &str = "etc/table-loader";

/// A pointer field the placement fills in: `size` bytes at `offset` of the tables blob
/// (`in_rsdp` false) or of the RSDP, holding an offset into the tables blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiPointer {
    /// The field is in the RSDP rather than the tables blob.
    pub in_rsdp: bool,
    /// Byte offset of the field.
    pub offset: u32,
    /// Field size in bytes (4 or 8).
    pub size: u8,
}

/// A checksum byte at `offset` making the bytes `[start, start + len)` sum to zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiChecksum {
    /// The checksum is in the RSDP rather than the tables blob.
    pub in_rsdp: bool,
    /// Offset of the checksum byte.
    pub offset: u32,
    /// First byte covered.
    pub start: u32,
    /// Bytes covered.
    pub len: u32,
}

/// The generated tables, unrelocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTables {
    /// FACS, DSDT, FADT, MADT, RSDT and XSDT back to back; pointers hold blob offsets and
    /// checksums are zero until placed.
    pub tables: Vec<u8>,
    /// The 36-byte ACPI 2.0 RSDP, its pointers holding blob offsets.
    pub rsdp: Vec<u8>,
    /// Pointer fields, in the order they must be patched.
    pub pointers: Vec<AcpiPointer>,
    /// Checksums, to be computed after every pointer is patched, in this order.
    pub checksums: Vec<AcpiChecksum>,
    /// (signature, offset, length) of each table in the blob.
    pub layout: Vec<([u8; 4], u32, u32)>,
}

/// Alignment of the tables blob (FACS needs 64).
pub const TABLES_ALIGN: u32 = 64;
/// Alignment of the RSDP.
pub const RSDP_ALIGN: u32 = 16;

/// Table header OEM fields.
const OEM_ID: &[u8; 6] = b"FERRO ";
const OEM_TABLE_ID: &[u8; 8] = b"FERROVSR";
const CREATOR_ID: &[u8; 4] = b"FRVS";

/// The 36-byte system description table header, length and checksum filled in later.
fn header(sig: &[u8; 4], revision: u8) -> Vec<u8> {
    let mut h = Vec::with_capacity(36);
    h.extend_from_slice(sig);
    h.extend_from_slice(&0u32.to_le_bytes()); // length
    h.push(revision);
    h.push(0); // checksum
    h.extend_from_slice(OEM_ID);
    h.extend_from_slice(OEM_TABLE_ID);
    h.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    h.extend_from_slice(CREATOR_ID);
    h.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    h
}

/// Two's-complement checksum byte of `data`.
pub fn checksum(data: &[u8]) -> u8 {
    0u8.wrapping_sub(data.iter().fold(0u8, |a, &b| a.wrapping_add(b)))
}

/// A Generic Address Structure in system I/O space.
fn gas_io(port: u16, bit_width: u8, access_size: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O
    g[1] = bit_width;
    g[2] = 0;
    g[3] = access_size;
    g[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

/// Where a direct kernel boot may put the RSDP: the start of the BIOS area that OSes scan
/// (0xE0000-0xFFFFF), which the machine maps as RAM.
pub const DIRECT_BOOT_RSDP: u32 = 0xE_0000;
/// Where a direct kernel boot may put the tables (64-byte aligned, after the RSDP; about 3 KiB).
pub const DIRECT_BOOT_TABLES: u32 = 0xE_0040;

impl crate::Machine {
    /// Puts the board's ACPI tables in guest memory for a direct kernel boot (no firmware runs):
    /// the tables at `tables_addr` (64-byte aligned), the RSDP at `rsdp_addr` (16-byte
    /// aligned; in 0xE0000-0xFFFFF for an OS that scans for it), and programs the PIIX4 PM
    /// block where the FADT says it is, as SeaBIOS would. The caller reserves the range in the
    /// e820 map and may pass `rsdp_addr` in `boot_params.acpi_rsdp_addr`. Returns the end of
    /// the tables.
    pub fn install_acpi(&mut self, tables_addr: u32, rsdp_addr: u32) -> Result<u64, crate::MachineError> {
        let t = crate::board::acpi_tables(self.ram_bytes);
        let (tables, rsdp) = t.place(tables_addr.next_multiple_of(TABLES_ALIGN));
        let tables_addr = u64::from(tables_addr.next_multiple_of(TABLES_ALIGN));
        let rsdp_addr = u64::from(rsdp_addr.next_multiple_of(RSDP_ALIGN));
        let overlap = rsdp_addr < tables_addr + tables.len() as u64 && tables_addr < rsdp_addr + rsdp.len() as u64;
        if overlap {
            return Err(crate::MachineError::ImageOutOfRange {
                addr: rsdp_addr,
                len: rsdp.len() as u64,
                ram: self.ram_bytes,
            });
        }
        self.board.mem.load(base::GuestPhysAddr(tables_addr), &tables)?;
        self.board.mem.load(base::GuestPhysAddr(rsdp_addr), &rsdp)?;
        cpu::ExecutionEngine::invalidate_phys(&mut self.engine, 0, u64::MAX);
        self.board.enable_pm_io();
        Ok(tables_addr + tables.len() as u64)
    }

    /// Presses the ACPI power button: an OS that handles it shuts down (and ends the run with
    /// [`crate::Exit::PowerOff`]).
    pub fn press_power_button(&mut self) {
        self.board.press_power_button();
    }
}

// ---------------------------------------------------------------------------------------------
// AML
// ---------------------------------------------------------------------------------------------

const AML_ZERO: u8 = 0x00;
const AML_ONE: u8 = 0x01;
const AML_NAME: u8 = 0x08;
const AML_BYTE: u8 = 0x0A;
const AML_WORD: u8 = 0x0B;
const AML_DWORD: u8 = 0x0C;
const AML_SCOPE: u8 = 0x10;
const AML_BUFFER: u8 = 0x11;
const AML_PACKAGE: u8 = 0x12;
const AML_EXT: u8 = 0x5B;
const AML_DEVICE: u8 = 0x82;

/// A PkgLength prefix for `body_len` bytes following it (ACPI 6.4, 20.2.4).
fn pkg_length(body_len: usize) -> Vec<u8> {
    // The encoded length includes the PkgLength bytes themselves.
    for extra in 0..4usize {
        let total = body_len + 1 + extra;
        let fits = match extra {
            0 => total < 0x40,
            1 => total < 1 << 12,
            2 => total < 1 << 20,
            _ => total < 1 << 28,
        };
        if fits {
            if extra == 0 {
                return vec![total as u8];
            }
            let mut v = vec![((extra as u8) << 6) | (total & 0xF) as u8];
            for i in 0..extra {
                v.push((total >> (4 + 8 * i)) as u8);
            }
            return v;
        }
    }
    unreachable!("AML package longer than 2^28 bytes")
}

/// A NameString: an optional root prefix and dot-separated 4-character segments (shorter
/// segments are padded with '_').
fn aml_name(path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let rest = match path.strip_prefix('\\') {
        Some(r) => {
            out.push(b'\\');
            r
        }
        None => path,
    };
    let segs: Vec<[u8; 4]> = rest
        .split('.')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let mut seg = [b'_'; 4];
            seg[..s.len().min(4)].copy_from_slice(&s.as_bytes()[..s.len().min(4)]);
            seg
        })
        .collect();
    match segs.len() {
        0 => out.push(0),
        1 => {}
        2 => out.push(0x2E),
        n => {
            out.push(0x2F);
            out.push(n as u8);
        }
    }
    for s in segs {
        out.extend_from_slice(&s);
    }
    out
}

/// The shortest integer encoding of `v`.
fn aml_int(v: u64) -> Vec<u8> {
    match v {
        0 => vec![AML_ZERO],
        1 => vec![AML_ONE],
        2..=0xFF => vec![AML_BYTE, v as u8],
        0x100..=0xFFFF => {
            let mut o = vec![AML_WORD];
            o.extend_from_slice(&(v as u16).to_le_bytes());
            o
        }
        0x1_0000..=0xFFFF_FFFF => {
            let mut o = vec![AML_DWORD];
            o.extend_from_slice(&(v as u32).to_le_bytes());
            o
        }
        _ => {
            let mut o = vec![0x0E];
            o.extend_from_slice(&v.to_le_bytes());
            o
        }
    }
}

/// `Name(name, value)`.
fn aml_name_decl(name: &str, value: &[u8]) -> Vec<u8> {
    let mut o = vec![AML_NAME];
    o.extend(aml_name(name));
    o.extend_from_slice(value);
    o
}

/// `Scope(name) { body }`.
fn aml_scope(name: &str, body: &[u8]) -> Vec<u8> {
    let mut inner = aml_name(name);
    inner.extend_from_slice(body);
    let mut o = vec![AML_SCOPE];
    o.extend(pkg_length(inner.len()));
    o.extend(inner);
    o
}

/// `Device(name) { body }`.
fn aml_device(name: &str, body: &[u8]) -> Vec<u8> {
    let mut inner = aml_name(name);
    inner.extend_from_slice(body);
    let mut o = vec![AML_EXT, AML_DEVICE];
    o.extend(pkg_length(inner.len()));
    o.extend(inner);
    o
}

/// `Package() { elements }` (each element already encoded).
fn aml_package(elements: &[Vec<u8>]) -> Vec<u8> {
    let mut inner = vec![elements.len() as u8];
    for e in elements {
        inner.extend_from_slice(e);
    }
    let mut o = vec![AML_PACKAGE];
    o.extend(pkg_length(inner.len()));
    o.extend(inner);
    o
}

/// `Buffer() { bytes }`.
fn aml_buffer(bytes: &[u8]) -> Vec<u8> {
    let mut inner = aml_int(bytes.len() as u64);
    inner.extend_from_slice(bytes);
    let mut o = vec![AML_BUFFER];
    o.extend(pkg_length(inner.len()));
    o.extend(inner);
    o
}

/// The 32-bit compressed form of an EISA ID such as "PNP0A03".
pub fn eisa_id(id: &str) -> u32 {
    let b = id.as_bytes();
    if b.len() != 7 {
        return 0;
    }
    let c = |i: usize| u16::from(b[i].wrapping_sub(0x40) & 0x1F);
    let vendor = (c(0) << 10) | (c(1) << 5) | c(2);
    let hex = |i: usize| (b[i] as char).to_digit(16).unwrap_or(0) as u8;
    let bytes = [(vendor >> 8) as u8, vendor as u8, (hex(3) << 4) | hex(4), (hex(5) << 4) | hex(6)];
    u32::from_le_bytes(bytes)
}

/// A Word Address Space descriptor (type 0 memory, 1 I/O, 2 bus number), min and max fixed.
fn res_word(kind: u8, type_flags: u8, min: u16, max: u16) -> Vec<u8> {
    let mut o = vec![0x88, 0x0D, 0x00, kind, 0x0C, type_flags];
    for v in [0u16, min, max, 0, max - min + 1] {
        o.extend_from_slice(&v.to_le_bytes());
    }
    o
}

/// A DWord memory descriptor (cacheable, read-write), min and max fixed.
fn res_dword_mem(min: u32, max: u32) -> Vec<u8> {
    let mut o = vec![0x87, 0x17, 0x00, 0x00, 0x0C, 0x03];
    for v in [0u32, min, max, 0, max - min + 1] {
        o.extend_from_slice(&v.to_le_bytes());
    }
    o
}

/// An I/O port descriptor with 16-bit decoding.
fn res_io(min: u16, len: u8) -> Vec<u8> {
    let mut o = vec![0x47, 0x01];
    o.extend_from_slice(&min.to_le_bytes());
    o.extend_from_slice(&min.to_le_bytes());
    o.push(1);
    o.push(len);
    o
}

/// `ResourceTemplate() { descriptors }` with its end tag.
fn resource_template(descs: &[Vec<u8>]) -> Vec<u8> {
    let mut b: Vec<u8> = descs.concat();
    b.extend_from_slice(&[0x79, 0x00]);
    aml_buffer(&b)
}

/// The DSDT's AML body.
fn dsdt_aml(cfg: &AcpiConfig) -> Vec<u8> {
    let mut prt = Vec::new();
    for slot in 1u8..32 {
        for pin in 0u8..4 {
            prt.push(aml_package(&[
                aml_int((u64::from(slot) << 16) | 0xFFFF),
                aml_int(u64::from(pin)),
                aml_int(0),
                aml_int(u64::from(PCI_GSI_BASE) + u64::from(pci_pirq(slot, pin))),
            ]));
        }
    }
    let hole = cfg.pci_hole_start.max(0x10_0000);
    let crs = resource_template(&[
        res_word(2, 0, 0, 0xFF),
        res_io(0xCF8, 8),
        res_word(1, 0x03, 0, 0x0CF7),
        res_word(1, 0x03, 0x0D00, 0xFFFF),
        res_dword_mem(0x000A_0000, 0x000B_FFFF),
        res_dword_mem(hole, 0xFEBF_FFFF),
    ]);
    let mut pci0 = Vec::new();
    pci0.extend(aml_name_decl("_HID", &aml_int(u64::from(eisa_id("PNP0A03")))));
    pci0.extend(aml_name_decl("_ADR", &aml_int(0)));
    pci0.extend(aml_name_decl("_UID", &aml_int(0)));
    pci0.extend(aml_name_decl("_CRS", &crs));
    pci0.extend(aml_name_decl("_PRT", &aml_package(&prt)));
    // Names at the root without the '\' prefix: the definition block's scope is the root, and
    // this is how iasl encodes them, so the tests can compare bytes with its compilation.
    let mut body = aml_scope("_SB", &aml_device("PCI0", &pci0));
    // \_S5: SLP_TYPa, SLP_TYPb (and two reserved).
    body.extend(aml_name_decl("_S5", &aml_package(&[aml_int(0), aml_int(0), aml_int(0), aml_int(0)])));
    body
}

// ---------------------------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------------------------

/// FADT flags.
const FADT_WBINVD: u32 = 1 << 0;
const FADT_PROC_C1: u32 = 1 << 2;
const FADT_SLP_BUTTON: u32 = 1 << 5;
const FADT_RESET_REG_SUP: u32 = 1 << 10;
/// IAPC_BOOT_ARCH: legacy devices, 8042.
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
const IAPC_8042: u16 = 1 << 1;
/// IAPC_BOOT_ARCH: no VGA (the machine has no display adapter; Linux then leaves vgacon off).
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// FADT length for revision 3.
const FADT_LEN: usize = 244;
/// FADT field offsets used for pointers.
const FADT_FIRMWARE_CTRL: usize = 36;
const FADT_DSDT: usize = 40;
const FADT_X_DSDT: usize = 140;

fn fadt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut t = header(b"FACP", 3);
    t.resize(FADT_LEN, 0);
    let pm = cfg.pm_io_base;
    let put16 = |t: &mut Vec<u8>, off: usize, v: u16| t[off..off + 2].copy_from_slice(&v.to_le_bytes());
    let put32 = |t: &mut Vec<u8>, off: usize, v: u32| t[off..off + 4].copy_from_slice(&v.to_le_bytes());
    t[45] = 0; // preferred PM profile: unspecified
    put16(&mut t, 46, u16::from(cfg.sci_irq));
    put32(&mut t, 48, u32::from(devices::piix4_pm::APM_CNT_PORT));
    t[52] = devices::piix4_pm::ACPI_ENABLE;
    t[53] = devices::piix4_pm::ACPI_DISABLE;
    put32(&mut t, 56, u32::from(pm)); // PM1a_EVT_BLK
    put32(&mut t, 64, u32::from(pm) + 4); // PM1a_CNT_BLK
    put32(&mut t, 76, u32::from(pm) + 8); // PM_TMR_BLK
    put32(&mut t, 80, u32::from(cfg.gpe0_port)); // GPE0_BLK
    t[88] = 4; // PM1_EVT_LEN
    t[89] = 2; // PM1_CNT_LEN
    t[91] = 4; // PM_TMR_LEN
    t[92] = 4; // GPE0_BLK_LEN
    put16(&mut t, 96, 0x0FFF); // P_LVL2_LAT: C2 not supported
    put16(&mut t, 98, 0x0FFF); // P_LVL3_LAT: C3 not supported
    t[108] = 0x32; // CENTURY
    put16(&mut t, 109, IAPC_LEGACY_DEVICES | IAPC_8042 | IAPC_VGA_NOT_PRESENT);
    put32(&mut t, 112, FADT_WBINVD | FADT_PROC_C1 | FADT_SLP_BUTTON | FADT_RESET_REG_SUP);
    t[116..128].copy_from_slice(&gas_io(devices::pci::PIIX_RCR_PORT, 8, 1));
    t[128] = devices::pci::RCR_SYS_RST | devices::pci::RCR_RST_CPU; // RESET_VALUE 6
    t[148..160].copy_from_slice(&gas_io(pm, 32, 2)); // X_PM1a_EVT_BLK
    t[172..184].copy_from_slice(&gas_io(pm + 4, 16, 2)); // X_PM1a_CNT_BLK
    t[208..220].copy_from_slice(&gas_io(pm + 8, 32, 3)); // X_PM_TMR_BLK
    t[220..232].copy_from_slice(&gas_io(cfg.gpe0_port, 32, 1)); // X_GPE0_BLK
    t
}

fn facs() -> Vec<u8> {
    let mut t = vec![0u8; 64];
    t[0..4].copy_from_slice(b"FACS");
    t[4..8].copy_from_slice(&64u32.to_le_bytes());
    t[32] = 1; // version
    t
}

fn madt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut t = header(b"APIC", 1);
    t.extend_from_slice(&cfg.lapic_addr.to_le_bytes());
    t.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT: 8259s present
    for cpu in 0..cfg.cpus.max(1) {
        t.extend_from_slice(&[0, 8, cpu, cpu]);
        t.extend_from_slice(&1u32.to_le_bytes()); // enabled
    }
    t.extend_from_slice(&[1, 12, cfg.ioapic_id, 0]);
    t.extend_from_slice(&cfg.ioapic_addr.to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes()); // GSI base
                                              // Interrupt source overrides: (ISA IRQ, GSI, MPS INTI flags).
    for (irq, gsi, flags) in [(0u8, 2u32, 0u16), (cfg.sci_irq, u32::from(cfg.sci_irq), 0x000D)] {
        t.extend_from_slice(&[2, 10, 0, irq]);
        t.extend_from_slice(&gsi.to_le_bytes());
        t.extend_from_slice(&flags.to_le_bytes());
    }
    // Local APIC NMI: all processors, LINT1, conforming.
    t.extend_from_slice(&[4, 6, 0xFF, 0, 0, 1]);
    t
}

/// Builds the tables for `cfg`.
pub fn build_tables(cfg: &AcpiConfig) -> AcpiTables {
    let mut tables: Vec<u8> = Vec::new();
    let mut pointers = Vec::new();
    let mut checksums = Vec::new();
    let mut layout = Vec::new();

    // Appends a table at an 8-byte (FACS: 64-byte) boundary, sets its length, returns its offset.
    let mut add = |tables: &mut Vec<u8>, mut t: Vec<u8>, align: usize, sum: bool| -> u32 {
        let off = tables.len().next_multiple_of(align);
        tables.resize(off, 0);
        let sig: [u8; 4] = [t[0], t[1], t[2], t[3]];
        if sum {
            let len = t.len() as u32;
            t[4..8].copy_from_slice(&len.to_le_bytes());
            checksums.push(AcpiChecksum { in_rsdp: false, offset: off as u32 + 9, start: off as u32, len });
        }
        layout.push((sig, off as u32, t.len() as u32));
        tables.extend(t);
        off as u32
    };

    let facs_off = add(&mut tables, facs(), 64, false);
    let mut dsdt = header(b"DSDT", 2);
    dsdt.extend(dsdt_aml(cfg));
    let dsdt_off = add(&mut tables, dsdt, 8, true);
    let mut f = fadt(cfg);
    f[FADT_FIRMWARE_CTRL..FADT_FIRMWARE_CTRL + 4].copy_from_slice(&facs_off.to_le_bytes());
    f[FADT_DSDT..FADT_DSDT + 4].copy_from_slice(&dsdt_off.to_le_bytes());
    f[FADT_X_DSDT..FADT_X_DSDT + 8].copy_from_slice(&u64::from(dsdt_off).to_le_bytes());
    let fadt_off = add(&mut tables, f, 8, true);
    pointers.push(AcpiPointer { in_rsdp: false, offset: fadt_off + FADT_FIRMWARE_CTRL as u32, size: 4 });
    pointers.push(AcpiPointer { in_rsdp: false, offset: fadt_off + FADT_DSDT as u32, size: 4 });
    pointers.push(AcpiPointer { in_rsdp: false, offset: fadt_off + FADT_X_DSDT as u32, size: 8 });
    let madt_off = add(&mut tables, madt(cfg), 8, true);
    let entries = [fadt_off, madt_off];
    let mut rsdt = header(b"RSDT", 1);
    for e in entries {
        rsdt.extend_from_slice(&e.to_le_bytes());
    }
    let rsdt_off = add(&mut tables, rsdt, 8, true);
    for i in 0..entries.len() as u32 {
        pointers.push(AcpiPointer { in_rsdp: false, offset: rsdt_off + 36 + 4 * i, size: 4 });
    }
    let mut xsdt = header(b"XSDT", 1);
    for e in entries {
        xsdt.extend_from_slice(&u64::from(e).to_le_bytes());
    }
    let xsdt_off = add(&mut tables, xsdt, 8, true);
    for i in 0..entries.len() as u32 {
        pointers.push(AcpiPointer { in_rsdp: false, offset: xsdt_off + 36 + 8 * i, size: 8 });
    }
    // The table checksums must follow the pointer patches: move them after.
    let mut rsdp = Vec::with_capacity(36);
    rsdp.extend_from_slice(b"RSD PTR ");
    rsdp.push(0); // checksum of the first 20 bytes
    rsdp.extend_from_slice(OEM_ID);
    rsdp.push(2); // revision: ACPI 2.0+
    rsdp.extend_from_slice(&rsdt_off.to_le_bytes());
    rsdp.extend_from_slice(&36u32.to_le_bytes());
    rsdp.extend_from_slice(&u64::from(xsdt_off).to_le_bytes());
    rsdp.extend_from_slice(&[0, 0, 0, 0]); // extended checksum, reserved
    pointers.push(AcpiPointer { in_rsdp: true, offset: 16, size: 4 });
    pointers.push(AcpiPointer { in_rsdp: true, offset: 24, size: 8 });
    checksums.push(AcpiChecksum { in_rsdp: true, offset: 8, start: 0, len: 20 });
    checksums.push(AcpiChecksum { in_rsdp: true, offset: 32, start: 0, len: 36 });
    AcpiTables { tables, rsdp, pointers, checksums, layout }
}

/// Table-loader command numbers (QEMU's hw/acpi/bios-linker-loader.c).
const LOADER_ALLOCATE: u32 = 1;
const LOADER_ADD_POINTER: u32 = 2;
const LOADER_ADD_CHECKSUM: u32 = 3;
/// Allocation zones.
const LOADER_ZONE_HIGH: u8 = 1;
const LOADER_ZONE_FSEG: u8 = 2;
/// Size of one loader command.
const LOADER_ENTRY: usize = 128;
/// Length of a file name field.
const LOADER_NAME: usize = 56;

fn loader_name(e: &mut [u8], at: usize, name: &str) {
    let n = name.len().min(LOADER_NAME - 1);
    e[at..at + n].copy_from_slice(&name.as_bytes()[..n]);
}

impl AcpiTables {
    /// The tables patched for `tables_addr` (64-byte aligned) and the RSDP for `rsdp_addr`
    /// (16-byte aligned; it only points at the tables): copy them to guest memory there.
    /// The RSDP must lie in the EBDA's first KiB or 0xE0000-0xFFFFF for an OS to find it by
    /// scanning (Linux's direct boot may also pass it in `boot_params.acpi_rsdp_addr`).
    pub fn place(&self, tables_addr: u32) -> (Vec<u8>, Vec<u8>) {
        let mut t = self.tables.clone();
        let mut r = self.rsdp.clone();
        for p in &self.pointers {
            let buf = if p.in_rsdp { &mut r } else { &mut t };
            let o = p.offset as usize;
            let n = usize::from(p.size);
            let mut v = [0u8; 8];
            v[..n].copy_from_slice(&buf[o..o + n]);
            let patched = u64::from_le_bytes(v).wrapping_add(u64::from(tables_addr));
            buf[o..o + n].copy_from_slice(&patched.to_le_bytes()[..n]);
        }
        for c in &self.checksums {
            let buf = if c.in_rsdp { &mut r } else { &mut t };
            buf[c.offset as usize] = 0;
            buf[c.offset as usize] = checksum(&buf[c.start as usize..(c.start + c.len) as usize]);
        }
        (t, r)
    }

    /// The `etc/table-loader` command list for the fw_cfg files [`ACPI_TABLES_FILE`] and
    /// [`ACPI_RSDP_FILE`] holding [`AcpiTables::tables`] and [`AcpiTables::rsdp`] as they are.
    pub fn table_loader(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut entry = |f: &dyn Fn(&mut [u8])| {
            let mut e = [0u8; LOADER_ENTRY];
            f(&mut e);
            out.extend_from_slice(&e);
        };
        for (file, align, zone) in
            [(ACPI_TABLES_FILE, TABLES_ALIGN, LOADER_ZONE_HIGH), (ACPI_RSDP_FILE, RSDP_ALIGN, LOADER_ZONE_FSEG)]
        {
            entry(&|e| {
                e[0..4].copy_from_slice(&LOADER_ALLOCATE.to_le_bytes());
                loader_name(e, 4, file);
                e[60..64].copy_from_slice(&align.to_le_bytes());
                e[64] = zone;
            });
        }
        let file = |in_rsdp: bool| if in_rsdp { ACPI_RSDP_FILE } else { ACPI_TABLES_FILE };
        for p in &self.pointers {
            entry(&|e| {
                e[0..4].copy_from_slice(&LOADER_ADD_POINTER.to_le_bytes());
                loader_name(e, 4, file(p.in_rsdp));
                loader_name(e, 60, ACPI_TABLES_FILE);
                e[116..120].copy_from_slice(&p.offset.to_le_bytes());
                e[120] = p.size;
            });
        }
        for c in &self.checksums {
            entry(&|e| {
                e[0..4].copy_from_slice(&LOADER_ADD_CHECKSUM.to_le_bytes());
                loader_name(e, 4, file(c.in_rsdp));
                e[60..64].copy_from_slice(&c.offset.to_le_bytes());
                e[64..68].copy_from_slice(&c.start.to_le_bytes());
                e[68..72].copy_from_slice(&c.len.to_le_bytes());
            });
        }
        out
    }

    /// The three fw_cfg files, as (name, content).
    pub fn fw_cfg_files(&self) -> [(&'static str, Vec<u8>); 3] {
        [
            (ACPI_TABLES_FILE, self.tables.clone()),
            (ACPI_RSDP_FILE, self.rsdp.clone()),
            (TABLE_LOADER_FILE, self.table_loader()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_acpi_eisa_id_and_pkg_length() {
        // Values from the ACPI specification's examples and iasl output.
        assert_eq!(eisa_id("PNP0A03"), 0x030A_D041);
        assert_eq!(eisa_id("PNP0C0C"), 0x0C0C_D041);
        assert_eq!(pkg_length(0x3E), vec![0x3F]);
        // 0x40 bytes of body: 0x42 total with a 2-byte PkgLength.
        assert_eq!(pkg_length(0x40), vec![0x42, 0x04]);
        assert_eq!(aml_name("\\_SB"), b"\\_SB_".to_vec());
        assert_eq!(aml_name("\\_SB.PCI0"), b"\\\x2E_SB_PCI0".to_vec());
    }

    #[test]
    fn test_acpi_place_checksums_and_pointers() {
        let t = build_tables(&AcpiConfig::default());
        let base = 0x7FF_0000u32;
        let (tables, rsdp) = t.place(base);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(rsdp[..20].iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0);
        assert_eq!(rsdp.iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0);
        let rsdt = u32::from_le_bytes(rsdp[16..20].try_into().unwrap()) - base;
        let xsdt = u64::from_le_bytes(rsdp[24..32].try_into().unwrap()) - u64::from(base);
        for (sig, off, len) in &t.layout {
            let tb = &tables[*off as usize..(*off + *len) as usize];
            assert_eq!(&tb[..4], sig);
            if sig != b"FACS" {
                assert_eq!(u32::from_le_bytes(tb[4..8].try_into().unwrap()), *len);
                assert_eq!(tb.iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0, "{}", String::from_utf8_lossy(sig));
            }
        }
        assert_eq!(&tables[rsdt as usize..rsdt as usize + 4], b"RSDT");
        assert_eq!(&tables[xsdt as usize..xsdt as usize + 4], b"XSDT");
    }
}
