//! Direct kernel boot, as QEMU's `-kernel` does it: a Linux bzImage through the Linux x86 boot
//! protocol (Documentation/arch/x86/boot.rst), or an uncompressed ELF `vmlinux` through its PVH
//! entry note (Xen's `XEN_ELFNOTE_PHYS32_ENTRY`, the `hvm_start_info` structure).
//!
//! This module only plans: it parses the image and returns the bytes to place in guest memory
//! and the CPU state to start from. [`crate::Machine::load_kernel`] applies the plan.
//!
//! Guest memory used by a bzImage boot (all below 1 MiB, in conventional RAM):
//!
//! | range | use |
//! |---|---|
//! | 0x7000–0x7FFF | `boot_params` (the "zero page") |
//! | 0x8000–0x8FFF | GDT: null, null, `__BOOT_CS` 0x10 (64- or 32-bit code), `__BOOT_DS` 0x18 |
//! | 0x10000–0x15FFF | 64-bit entry: identity page tables for the first 4 GiB (2 MiB pages) |
//! | 0x20000–0x2FFFF | the command line |
//! | 0x100000– | the protected-mode kernel; the initrd goes as high as allowed |

use thiserror::Error;

/// Where the zero page goes.
pub const BOOT_PARAMS: u64 = 0x7000;
/// Where the boot GDT goes.
pub const BOOT_GDT: u64 = 0x8000;
/// Where the 64-bit identity page tables go (PML4, PDPT, 4 PDs).
pub const BOOT_PML4: u64 = 0x1_0000;
/// Where the command line goes.
pub const BOOT_CMDLINE: u64 = 0x2_0000;
/// Longest command line accepted, with its NUL.
pub const CMDLINE_MAX: usize = 0x1_0000;
/// Where the protected-mode kernel is loaded.
pub const KERNEL_LOAD: u64 = 0x10_0000;
/// `hvm_start_info` magic (PVH).
pub const PVH_MAGIC: u32 = 0x336E_C578;
/// The boot GDT's code selector (`__BOOT_CS`).
pub const BOOT_CS: u16 = 0x10;
/// The boot GDT's data selector (`__BOOT_DS`).
pub const BOOT_DS: u16 = 0x18;

/// Errors from a direct kernel boot.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LinuxError {
    /// The file is no kernel format Ferrovisor boots.
    #[error(
        "not a bootable kernel: expected a Linux bzImage (\"HdrS\" setup header), an ELF vmlinux with a PVH \
         entry note, or a Multiboot v1 kernel"
    )]
    UnknownFormat,
    /// The bzImage's boot protocol is too old.
    #[error("bzImage boot protocol {0:#x} is too old (2.06 or newer needed)")]
    OldProtocol(u16),
    /// The bzImage is truncated or inconsistent.
    #[error("bad bzImage: {0}")]
    BadBzImage(&'static str),
    /// The ELF is malformed.
    #[error("bad ELF vmlinux: {0}")]
    BadElf(&'static str),
    /// A 32-bit-only kernel asked for a 64-bit boot, or similar.
    #[error("the kernel does not fit in guest RAM ({0} MiB): give the guest more memory with -m")]
    TooBig(u64),
    /// The initrd does not fit where the kernel allows it.
    #[error("the initrd ({size} bytes) does not fit below the kernel's limit {limit:#x} in guest RAM")]
    InitrdTooBig {
        /// Initrd size.
        size: u64,
        /// Highest address the kernel accepts.
        limit: u64,
    },
    /// The command line is too long.
    #[error("the kernel command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The kernel's limit.
        max: usize,
    },
}

/// One E820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820 {
    /// Start.
    pub addr: u64,
    /// Length.
    pub size: u64,
    /// 1 RAM, 2 reserved, 3 ACPI reclaimable, 4 ACPI NVS.
    pub kind: u32,
}

/// How the CPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit long mode through the page tables at [`BOOT_PML4`]; RSI = boot_params.
    Long64 {
        /// Entry RIP.
        rip: u64,
        /// RSI.
        rsi: u64,
    },
    /// 32-bit protected mode, paging off, flat segments.
    Protected32 {
        /// Entry EIP.
        eip: u32,
        /// ESI.
        esi: u32,
        /// EBX.
        ebx: u32,
    },
}

/// What to write where, and how to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPlan {
    /// (guest physical address, bytes) to copy in.
    pub writes: Vec<(u64, Vec<u8>)>,
    /// Zero-filled ranges (BSS).
    pub zeros: Vec<(u64, u64)>,
    /// The CPU's start.
    pub entry: EntryMode,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}
fn put16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// Whether `file` is a Linux bzImage (boot sector signature and "HdrS").
pub fn is_bzimage(file: &[u8]) -> bool {
    u16_at(file, 0x1FE) == Some(0xAA55) && file.get(0x202..0x206) == Some(b"HdrS")
}

/// The PVH entry point of an ELF64 or ELF32 `vmlinux`, if it has one.
pub fn pvh_entry(file: &[u8]) -> Option<u32> {
    if file.get(0..4) != Some(b"\x7fELF") {
        return None;
    }
    let elf64 = *file.get(4)? == 2;
    let (phoff, phentsize, phnum) = if elf64 {
        (u64_at(file, 32)? as usize, u16_at(file, 54)? as usize, u16_at(file, 56)? as usize)
    } else {
        (u32_at(file, 28)? as usize, u16_at(file, 42)? as usize, u16_at(file, 44)? as usize)
    };
    for k in 0..phnum {
        let p = phoff.checked_add(k.checked_mul(phentsize)?)?;
        if u32_at(file, p)? != 4 {
            continue; // not PT_NOTE
        }
        let (off, size) = if elf64 {
            (u64_at(file, p + 8)? as usize, u64_at(file, p + 32)? as usize)
        } else {
            (u32_at(file, p + 4)? as usize, u32_at(file, p + 16)? as usize)
        };
        let notes = file.get(off..off.checked_add(size)?)?;
        let mut n = 0;
        while n + 12 <= notes.len() {
            let namesz = u32_at(notes, n)? as usize;
            let descsz = u32_at(notes, n + 4)? as usize;
            let ty = u32_at(notes, n + 8)?;
            let name_at = n + 12;
            let desc_at = name_at + namesz.div_ceil(4) * 4;
            let name = notes.get(name_at..name_at + namesz)?;
            if ty == 18 && name.starts_with(b"Xen") && descsz >= 4 {
                return u32_at(notes, desc_at);
            }
            n = desc_at + descsz.div_ceil(4) * 4;
        }
    }
    None
}

/// The boot GDT: null, null, code at [`BOOT_CS`] (64-bit when `long`), data at [`BOOT_DS`].
fn boot_gdt(long: bool) -> Vec<u8> {
    let code: u64 = if long { 0x00AF_9A00_0000_FFFF } else { 0x00CF_9A00_0000_FFFF };
    let data: u64 = 0x00CF_9200_0000_FFFF;
    [0u64, 0, code, data].iter().flat_map(|d| d.to_le_bytes()).collect()
}

/// Identity page tables for the first 4 GiB with 2 MiB pages, at [`BOOT_PML4`].
fn identity_tables() -> Vec<u8> {
    let mut t = vec![0u8; 6 * 0x1000];
    let pdpt = BOOT_PML4 + 0x1000;
    put64(&mut t, 0, pdpt | 3);
    for i in 0..4u64 {
        let pd = BOOT_PML4 + 0x2000 + i * 0x1000;
        put64(&mut t, 0x1000 + i as usize * 8, pd | 3);
        for j in 0..512u64 {
            let addr = (i << 30) | (j << 21);
            put64(&mut t, (0x2000 + i * 0x1000 + j * 8) as usize, addr | 0x83);
        }
    }
    t
}

/// Plans a bzImage boot. `e820` is the memory map to report; `ram_end` the end of RAM above
/// 1 MiB (the initrd goes below it); `rsdp` the ACPI RSDP address, if tables were placed.
pub fn plan_bzimage(
    file: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    e820: &[E820],
    ram_end: u64,
    rsdp: Option<u64>,
) -> Result<BootPlan, LinuxError> {
    if !is_bzimage(file) {
        return Err(LinuxError::UnknownFormat);
    }
    let version = u16_at(file, 0x206).ok_or(LinuxError::BadBzImage("truncated setup header"))?;
    if version < 0x206 {
        return Err(LinuxError::OldProtocol(version));
    }
    let setup_sects = match file[0x1F1] {
        0 => 4,
        n => usize::from(n),
    };
    let kernel_off = (setup_sects + 1) * 512;
    let kernel =
        file.get(kernel_off..).filter(|k| !k.is_empty()).ok_or(LinuxError::BadBzImage("no kernel after setup"))?;
    let loadflags = file[0x211];
    if loadflags & 1 == 0 {
        return Err(LinuxError::BadBzImage("zImage (not loaded high) is not supported"));
    }
    let xloadflags = u16_at(file, 0x236).unwrap_or(0);
    let long = xloadflags & 1 != 0; // XLF_KERNEL_64: has the 64-bit entry at +0x200
    let initrd_max = u64::from(u32_at(file, 0x22C).unwrap_or(0x37FF_FFFF));
    let cmdline_max = u32_at(file, 0x238).unwrap_or(255) as usize;
    let init_size = u64::from(u32_at(file, 0x260).unwrap_or(0)).max(kernel.len() as u64);
    if KERNEL_LOAD + init_size > ram_end {
        return Err(LinuxError::TooBig(ram_end >> 20));
    }
    let mut cmd = cmdline.as_bytes().to_vec();
    if cmd.len() > cmdline_max.min(CMDLINE_MAX - 1) {
        return Err(LinuxError::CmdlineTooLong { len: cmd.len(), max: cmdline_max.min(CMDLINE_MAX - 1) });
    }
    cmd.push(0);

    // The zero page: the setup header copied from the file, then the loader's fields.
    let mut bp = vec![0u8; 0x1000];
    let hdr_end = (0x202 + usize::from(file[0x201])).min(0x1000).min(file.len());
    bp[0x1F1..hdr_end].copy_from_slice(&file[0x1F1..hdr_end]);
    bp[0x210] = 0xFF; // type_of_loader: undefined
    bp[0x211] = loadflags | 0x80; // CAN_USE_HEAP
    put16(&mut bp, 0x224, 0xFE00 - 0x200); // heap_end_ptr
    put32(&mut bp, 0x228, BOOT_CMDLINE as u32); // cmd_line_ptr
    let mut writes = vec![(BOOT_CMDLINE, cmd), (KERNEL_LOAD, kernel.to_vec())];
    if let Some(rd) = initrd {
        let size = rd.len() as u64;
        let limit = initrd_max.min(ram_end - 1);
        let kernel_end = KERNEL_LOAD + init_size;
        let at = (limit + 1).checked_sub(size).map(|a| a & !0xFFF);
        let at = at.filter(|&a| a >= kernel_end).ok_or(LinuxError::InitrdTooBig { size, limit })?;
        put32(&mut bp, 0x218, at as u32);
        put32(&mut bp, 0x21C, size as u32);
        put32(&mut bp, 0x0C0, (at >> 32) as u32); // ext_ramdisk_image
        put32(&mut bp, 0x0C4, (size >> 32) as u32); // ext_ramdisk_size
        writes.push((at, rd.to_vec()));
    }
    if let Some(r) = rsdp {
        put64(&mut bp, 0x070, r); // acpi_rsdp_addr (protocol 2.14)
    }
    let n = e820.len().min(128);
    bp[0x1E8] = n as u8;
    for (k, e) in e820.iter().take(n).enumerate() {
        let o = 0x2D0 + k * 20;
        put64(&mut bp, o, e.addr);
        put64(&mut bp, o + 8, e.size);
        put32(&mut bp, o + 16, e.kind);
    }
    writes.push((BOOT_PARAMS, bp));
    writes.push((BOOT_GDT, boot_gdt(long)));
    let entry = if long {
        writes.push((BOOT_PML4, identity_tables()));
        EntryMode::Long64 { rip: KERNEL_LOAD + 0x200, rsi: BOOT_PARAMS }
    } else {
        EntryMode::Protected32 { eip: KERNEL_LOAD as u32, esi: BOOT_PARAMS as u32, ebx: 0 }
    };
    Ok(BootPlan { writes, zeros: Vec::new(), entry })
}

/// Plans a PVH boot of an ELF `vmlinux`: PT_LOAD segments at their physical addresses, an
/// `hvm_start_info` at [`BOOT_PARAMS`] with the command line, the initrd as module 0 and the
/// memory map; 32-bit protected mode, EBX = the start info.
pub fn plan_pvh(
    file: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    e820: &[E820],
    ram_end: u64,
    rsdp: Option<u64>,
) -> Result<BootPlan, LinuxError> {
    let entry = pvh_entry(file).ok_or(LinuxError::UnknownFormat)?;
    let elf64 = file.get(4) == Some(&2);
    let bad = LinuxError::BadElf;
    let (phoff, phentsize, phnum) = if elf64 {
        (
            u64_at(file, 32).ok_or(bad("truncated header"))? as usize,
            u16_at(file, 54).ok_or(bad("truncated header"))? as usize,
            u16_at(file, 56).ok_or(bad("truncated header"))? as usize,
        )
    } else {
        (
            u32_at(file, 28).ok_or(bad("truncated header"))? as usize,
            u16_at(file, 42).ok_or(bad("truncated header"))? as usize,
            u16_at(file, 44).ok_or(bad("truncated header"))? as usize,
        )
    };
    let mut writes = Vec::new();
    let mut zeros = Vec::new();
    let mut top = 0u64;
    for k in 0..phnum {
        let p = phoff.checked_add(k * phentsize).ok_or(bad("program headers overflow"))?;
        if u32_at(file, p).ok_or(bad("program headers past end of file"))? != 1 {
            continue;
        }
        let (off, paddr, filesz, memsz) = if elf64 {
            let g = |o| u64_at(file, p + o).ok_or(bad("program headers past end of file"));
            (g(8)?, g(24)?, g(32)?, g(40)?)
        } else {
            let g = |o| u32_at(file, p + o).map(u64::from).ok_or(bad("program headers past end of file"));
            (g(4)?, g(12)?, g(16)?, g(20)?)
        };
        if memsz < filesz {
            return Err(bad("segment memsz smaller than filesz"));
        }
        let end = paddr.checked_add(memsz).ok_or(bad("segment overflows"))?;
        if end > ram_end {
            return Err(LinuxError::TooBig(ram_end >> 20));
        }
        let data = file
            .get(off as usize..(off as usize).checked_add(filesz as usize).ok_or(bad("segment overflows"))?)
            .ok_or(bad("segment data past end of file"))?;
        writes.push((paddr, data.to_vec()));
        if memsz > filesz {
            zeros.push((paddr + filesz, memsz - filesz));
        }
        top = top.max(end);
    }
    if writes.is_empty() {
        return Err(bad("no loadable segments"));
    }
    let mut cmd = cmdline.as_bytes().to_vec();
    if cmd.len() >= CMDLINE_MAX {
        return Err(LinuxError::CmdlineTooLong { len: cmd.len(), max: CMDLINE_MAX - 1 });
    }
    cmd.push(0);
    // hvm_start_info (version 1) at BOOT_PARAMS: magic(0) version(4) flags(8) nr_modules(12)
    // modlist_paddr(16) cmdline_paddr(24) rsdp_paddr(32) memmap_paddr(40) memmap_entries(48);
    // the module list (paddr, size, cmdline_paddr, reserved) at +0x80, the memory map
    // (addr, size, type, reserved) at +0x100.
    let mut si = vec![0u8; 0x1000];
    put32(&mut si, 0, PVH_MAGIC);
    put32(&mut si, 4, 1);
    put64(&mut si, 24, BOOT_CMDLINE);
    put64(&mut si, 32, rsdp.unwrap_or(0));
    if let Some(rd) = initrd {
        let size = rd.len() as u64;
        let limit = ram_end.min(1 << 32);
        let at = limit.checked_sub(size).map(|a| a & !0xFFF).filter(|&a| a >= top.max(KERNEL_LOAD));
        let at = at.ok_or(LinuxError::InitrdTooBig { size, limit })?;
        put32(&mut si, 12, 1);
        put64(&mut si, 16, BOOT_PARAMS + 0x80);
        put64(&mut si, 0x80, at);
        put64(&mut si, 0x88, size);
        writes.push((at, rd.to_vec()));
    }
    put64(&mut si, 40, BOOT_PARAMS + 0x100);
    let n = e820.len().min(100);
    put32(&mut si, 48, n as u32);
    for (k, e) in e820.iter().take(n).enumerate() {
        let o = 0x100 + k * 24;
        put64(&mut si, o, e.addr);
        put64(&mut si, o + 8, e.size);
        put32(&mut si, o + 16, e.kind);
    }
    writes.push((BOOT_CMDLINE, cmd));
    writes.push((BOOT_PARAMS, si));
    writes.push((BOOT_GDT, boot_gdt(false)));
    Ok(BootPlan { writes, zeros, entry: EntryMode::Protected32 { eip: entry, esi: 0, ebx: BOOT_PARAMS as u32 } })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic bzImage: one setup sector, protocol 2.15, 64-bit entry, `kernel` after it.
    pub(crate) fn fake_bzimage(kernel: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 2 * 512];
        f[0x1F1] = 1;
        f[0x1FE] = 0x55;
        f[0x1FF] = 0xAA;
        f[0x201] = 0x6A; // header runs to 0x26C
        f[0x202..0x206].copy_from_slice(b"HdrS");
        put16(&mut f, 0x206, 0x20F);
        f[0x211] = 1; // LOADED_HIGH
        put32(&mut f, 0x22C, 0x7FFF_FFFF);
        put16(&mut f, 0x236, 1); // XLF_KERNEL_64
        put32(&mut f, 0x238, 2048);
        put32(&mut f, 0x260, 0x10_0000);
        f.extend_from_slice(kernel);
        f
    }

    #[test]
    fn test_bzimage_plan_fills_boot_params() {
        let file = fake_bzimage(&[0x90; 0x400]);
        let e820 = [E820 { addr: 0, size: 0x9FC00, kind: 1 }, E820 { addr: 0x10_0000, size: 0x7F0_0000, kind: 1 }];
        let rd = vec![7u8; 0x3000];
        let plan = plan_bzimage(&file, Some(&rd), "console=ttyS0", &e820, 0x800_0000, Some(0xE0000)).unwrap();
        let bp = &plan.writes.iter().find(|w| w.0 == BOOT_PARAMS).unwrap().1;
        assert_eq!(&bp[0x202..0x206], b"HdrS", "setup header copied");
        assert_eq!(bp[0x210], 0xFF);
        assert_eq!(u32_at(bp, 0x228), Some(BOOT_CMDLINE as u32));
        let rd_at = u64::from(u32_at(bp, 0x218).unwrap());
        assert_eq!(rd_at % 0x1000, 0);
        assert!(rd_at + 0x3000 <= 0x800_0000 && rd_at >= KERNEL_LOAD + 0x10_0000);
        assert_eq!(u32_at(bp, 0x21C), Some(0x3000));
        assert_eq!(bp[0x1E8], 2);
        assert_eq!(u64_at(bp, 0x2D0 + 20), Some(0x10_0000));
        assert_eq!(u64_at(bp, 0x070), Some(0xE0000));
        assert_eq!(plan.entry, EntryMode::Long64 { rip: KERNEL_LOAD + 0x200, rsi: BOOT_PARAMS });
        let cmd = &plan.writes.iter().find(|w| w.0 == BOOT_CMDLINE).unwrap().1;
        assert_eq!(cmd, b"console=ttyS0\0");
    }

    #[test]
    fn test_bad_kernels_are_clear_errors() {
        assert_eq!(plan_bzimage(b"hello", None, "", &[], 1 << 30, None), Err(LinuxError::UnknownFormat));
        let mut old = fake_bzimage(&[0x90; 16]);
        put16(&mut old, 0x206, 0x204);
        assert_eq!(plan_bzimage(&old, None, "", &[], 1 << 30, None), Err(LinuxError::OldProtocol(0x204)));
        let long = "x".repeat(5000);
        let f = fake_bzimage(&[0x90; 16]);
        assert!(matches!(plan_bzimage(&f, None, &long, &[], 1 << 30, None), Err(LinuxError::CmdlineTooLong { .. })));
        let big = vec![1u8; 64 << 20];
        assert!(matches!(plan_bzimage(&f, Some(&big), "", &[], 32 << 20, None), Err(LinuxError::InitrdTooBig { .. })));
        assert!(pvh_entry(b"\x7fELF\x02").is_none());
    }
}
