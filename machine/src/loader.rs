//! Image loaders: flat binaries and Multiboot v1 kernels (as QEMU's `-kernel` loads them).
//!
//! Multiboot v1: the header (magic 0x1BADB002, flags, checksum) must be 4-byte aligned within
//! the first 8192 bytes. With flag bit 16 the header's address fields say where to load the
//! file; otherwise the file must be an ELF32 executable and its PT_LOAD segments are loaded.
//! The kernel is entered in 32-bit protected mode with flat segments, paging off, interrupts
//! off, EAX = 0x2BADB002 and EBX = the physical address of the Multiboot information structure.

use thiserror::Error;

/// Multiboot v1 header magic.
pub const MULTIBOOT_HEADER_MAGIC: u32 = 0x1BAD_B002;
/// Value in EAX at kernel entry.
pub const MULTIBOOT_BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;

/// Errors from parsing a kernel image.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LoadError {
    /// No Multiboot header in the first 8 KiB.
    #[error("no Multiboot v1 header (magic 0x1BADB002) in the first 8 KiB")]
    NoMultibootHeader,
    /// The header checksum is wrong.
    #[error("Multiboot header checksum is wrong")]
    BadChecksum,
    /// The header asks for something not supported.
    #[error("Multiboot header requests unsupported features (flags {0:#x})")]
    UnsupportedFlags(u32),
    /// The ELF file is malformed.
    #[error("bad ELF image: {0}")]
    BadElf(&'static str),
    /// 64-bit ELF kernels cannot be Multiboot v1 kernels.
    #[error("64-bit ELF kernels are not supported by Multiboot v1; build a 32-bit image")]
    Elf64,
    /// The address fields of the header are inconsistent with the file.
    #[error("Multiboot address fields are inconsistent with the file size")]
    BadAddresses,
}

/// One piece of the image to copy into guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical load address.
    pub addr: u64,
    /// Bytes from the file.
    pub data: Vec<u8>,
    /// Zero bytes that follow `data` (BSS).
    pub zero_fill: u64,
}

/// A parsed kernel: what to load and where to enter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelImage {
    /// Pieces to load.
    pub segments: Vec<Segment>,
    /// 32-bit entry point.
    pub entry: u32,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

/// Largest image the loader accepts in memory (limits BSS sizes from hostile headers too).
const MAX_IMAGE: u64 = 1 << 32;

/// Parses a Multiboot v1 kernel.
pub fn parse_multiboot(file: &[u8]) -> Result<KernelImage, LoadError> {
    let limit = file.len().min(8192);
    let mut hdr = None;
    let mut off = 0;
    while off + 12 <= limit {
        if u32_at(file, off) == Some(MULTIBOOT_HEADER_MAGIC) {
            hdr = Some(off);
            break;
        }
        off += 4;
    }
    let h = hdr.ok_or(LoadError::NoMultibootHeader)?;
    let flags = u32_at(file, h + 4).ok_or(LoadError::NoMultibootHeader)?;
    let sum = u32_at(file, h + 8).ok_or(LoadError::NoMultibootHeader)?;
    if MULTIBOOT_HEADER_MAGIC.wrapping_add(flags).wrapping_add(sum) != 0 {
        return Err(LoadError::BadChecksum);
    }
    // Bits 0..15 that the loader must honour: 0 (page alignment) and 1 (memory info) are
    // fine; 2 (video mode) is ignored by QEMU as well. Other required bits are refused.
    if flags & 0xFFF8 != 0 {
        return Err(LoadError::UnsupportedFlags(flags));
    }
    if flags & (1 << 16) != 0 {
        let f = |k| u32_at(file, h + k).ok_or(LoadError::BadAddresses);
        let (header_addr, load_addr, load_end, bss_end, entry) = (f(12)?, f(16)?, f(20)?, f(24)?, f(28)?);
        if load_addr > header_addr || (header_addr - load_addr) as usize > h {
            return Err(LoadError::BadAddresses);
        }
        let file_off = h - (header_addr - load_addr) as usize;
        let len = if load_end == 0 {
            file.len() - file_off
        } else {
            load_end.checked_sub(load_addr).ok_or(LoadError::BadAddresses)? as usize
        };
        let data = file.get(file_off..file_off + len).ok_or(LoadError::BadAddresses)?.to_vec();
        let end = u64::from(load_addr) + len as u64;
        let zero_fill =
            if bss_end == 0 { 0 } else { u64::from(bss_end).checked_sub(end).ok_or(LoadError::BadAddresses)? };
        if zero_fill > MAX_IMAGE {
            return Err(LoadError::BadAddresses);
        }
        return Ok(KernelImage { segments: vec![Segment { addr: u64::from(load_addr), data, zero_fill }], entry });
    }
    parse_elf32(file)
}

/// Parses the PT_LOAD segments of an ELF32 executable (loaded at their physical addresses).
pub fn parse_elf32(file: &[u8]) -> Result<KernelImage, LoadError> {
    if file.get(0..4) != Some(b"\x7fELF") {
        return Err(LoadError::BadElf("missing ELF magic"));
    }
    match file.get(4) {
        Some(1) => {}
        Some(2) => return Err(LoadError::Elf64),
        _ => return Err(LoadError::BadElf("unknown ELF class")),
    }
    if file.get(5) != Some(&1) {
        return Err(LoadError::BadElf("not little-endian"));
    }
    if u16_at(file, 18) != Some(3) {
        return Err(LoadError::BadElf("not an x86 (EM_386) image"));
    }
    let entry = u32_at(file, 24).ok_or(LoadError::BadElf("truncated header"))?;
    let phoff = u32_at(file, 28).ok_or(LoadError::BadElf("truncated header"))? as usize;
    let phentsize = u16_at(file, 42).ok_or(LoadError::BadElf("truncated header"))? as usize;
    let phnum = u16_at(file, 44).ok_or(LoadError::BadElf("truncated header"))? as usize;
    if phentsize < 32 {
        return Err(LoadError::BadElf("program header entries too small"));
    }
    let mut segments = Vec::new();
    let mut total = 0u64;
    for k in 0..phnum {
        let p = phoff.checked_add(k * phentsize).ok_or(LoadError::BadElf("program header offset overflows"))?;
        let ty = u32_at(file, p).ok_or(LoadError::BadElf("program headers past end of file"))?;
        if ty != 1 {
            continue;
        }
        let g = |o| u32_at(file, p + o).ok_or(LoadError::BadElf("program headers past end of file"));
        let (offset, paddr, filesz, memsz) = (g(4)? as usize, g(12)?, g(16)? as usize, g(20)?);
        if (memsz as usize) < filesz {
            return Err(LoadError::BadElf("segment memsz smaller than filesz"));
        }
        let data = file
            .get(offset..offset.checked_add(filesz).ok_or(LoadError::BadElf("segment overflows"))?)
            .ok_or(LoadError::BadElf("segment data past end of file"))?
            .to_vec();
        total += u64::from(memsz);
        if total > MAX_IMAGE {
            return Err(LoadError::BadElf("segments too large"));
        }
        segments.push(Segment { addr: u64::from(paddr), data, zero_fill: u64::from(memsz) - filesz as u64 });
    }
    if segments.is_empty() {
        return Err(LoadError::BadElf("no loadable segments"));
    }
    Ok(KernelImage { segments, entry })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF32 with one PT_LOAD segment and a Multiboot header inside it.
    pub(crate) fn tiny_elf(code: &[u8], paddr: u32) -> Vec<u8> {
        let mut f = vec![0u8; 0x80];
        f[0..4].copy_from_slice(b"\x7fELF");
        f[4] = 1;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes());
        f[18..20].copy_from_slice(&3u16.to_le_bytes());
        f[24..28].copy_from_slice(&(paddr + 12).to_le_bytes());
        f[28..32].copy_from_slice(&52u32.to_le_bytes());
        f[42..44].copy_from_slice(&32u16.to_le_bytes());
        f[44..46].copy_from_slice(&1u16.to_le_bytes());
        let mut seg = Vec::new();
        seg.extend_from_slice(&MULTIBOOT_HEADER_MAGIC.to_le_bytes());
        seg.extend_from_slice(&0u32.to_le_bytes());
        seg.extend_from_slice(&MULTIBOOT_HEADER_MAGIC.wrapping_neg().to_le_bytes());
        seg.extend_from_slice(code);
        let ph = 52;
        f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
        f[ph + 4..ph + 8].copy_from_slice(&0x80u32.to_le_bytes());
        f[ph + 8..ph + 12].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 12..ph + 16].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 16..ph + 20].copy_from_slice(&(seg.len() as u32).to_le_bytes());
        f[ph + 20..ph + 24].copy_from_slice(&(seg.len() as u32 + 0x100).to_le_bytes());
        f.extend_from_slice(&seg);
        f
    }

    #[test]
    fn test_loader_elf_multiboot() {
        let elf = tiny_elf(&[0xF4], 0x10_0000);
        let k = parse_multiboot(&elf).unwrap();
        assert_eq!(k.entry, 0x10_000C);
        assert_eq!(k.segments.len(), 1);
        assert_eq!(k.segments[0].addr, 0x10_0000);
        assert_eq!(k.segments[0].zero_fill, 0x100);
    }

    #[test]
    fn test_loader_rejects_bad_images() {
        assert_eq!(parse_multiboot(b"hello"), Err(LoadError::NoMultibootHeader));
        let mut elf = tiny_elf(&[0xF4], 0x10_0000);
        elf[0x88] ^= 1; // checksum
        assert_eq!(parse_multiboot(&elf), Err(LoadError::BadChecksum));
        let mut elf = tiny_elf(&[0xF4], 0x10_0000);
        elf[4] = 2;
        assert_eq!(parse_multiboot(&elf), Err(LoadError::Elf64));
        let mut elf = tiny_elf(&[0xF4], 0x10_0000);
        elf[52 + 16..52 + 20].copy_from_slice(&0xFFFF_0000u32.to_le_bytes());
        assert!(matches!(parse_multiboot(&elf), Err(LoadError::BadElf(_))));
        // Truncated anywhere: an error, never a panic.
        let elf = tiny_elf(&[0xF4], 0x10_0000);
        for n in 0..elf.len() {
            let _ = parse_multiboot(&elf[..n]);
        }
    }
}
