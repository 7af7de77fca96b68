//! The shared skeleton of the programs: a 16-bit entry stage that switches to protected mode, a
//! 32-bit stage that builds page tables and enters long mode, and a payload at [`PAYLOAD`].

use crate::Rom;
use iced_x86::code_asm::asm_traits::CodeAsmCmp;
use iced_x86::code_asm::*;
use iced_x86::IcedError;

/// Physical address of the image and its real-mode entry point.
pub const ENTRY: u64 = 0x8000;
/// Physical address of the GDT.
const GDT: u64 = 0x8400;
/// Physical address of the GDT pseudo-descriptor (limit, base).
const GDTR: u64 = 0x8480;
/// Physical address of the 32-bit stage.
const STAGE32: u64 = 0x9000;
/// Physical address of the payload.
pub const PAYLOAD: u64 = 0xA000;
/// Long-mode page tables: PML4, PDPT, PD.
const PML4: u64 = 0x2_0000;
const PDPT: u64 = 0x2_1000;
const PD: u64 = 0x2_2000;
/// Stack top in protected and long mode.
pub(crate) const STACK32: u64 = 0x8_0000;

/// Flat 32-bit code selector.
pub(crate) const SEL_CODE32: u16 = 0x08;
/// Flat data selector.
pub(crate) const SEL_DATA: u16 = 0x10;
/// 64-bit code selector.
pub(crate) const SEL_CODE64: u16 = 0x18;

/// The mode the payload runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Real mode (the payload follows the entry stage directly).
    Real,
    /// 32-bit protected mode, flat segments, no paging.
    Protected32,
    /// 64-bit long mode, the first GiB identity-mapped.
    Long64,
}

/// Pieces of a flat image at absolute addresses; the image starts at the lowest piece.
struct Image {
    pieces: Vec<(u64, Vec<u8>)>,
}

impl Image {
    fn put(&mut self, addr: u64, data: &[u8]) {
        self.pieces.push((addr, data.to_vec()));
    }

    /// The image bytes and their load address.
    fn finish(self) -> (Vec<u8>, u64) {
        let base = self.pieces.iter().map(|p| p.0).min().unwrap_or(ENTRY);
        let end = self.pieces.iter().map(|p| p.0 + p.1.len() as u64).max().unwrap_or(ENTRY);
        let mut bytes = vec![0u8; (end - base) as usize];
        for (addr, data) in self.pieces {
            let off = (addr - base) as usize;
            bytes[off..off + data.len()].copy_from_slice(&data);
        }
        (bytes, base)
    }
}

/// A GDT descriptor from base, limit (in 4 KiB units when `g`) and the access/flags nibbles.
fn descriptor(access: u8, flags: u8) -> [u8; 8] {
    // Base 0, limit 0xFFFFF.
    [0xFF, 0xFF, 0, 0, 0, access, (flags << 4) | 0x0F, 0]
}

/// Builds an image whose payload, assembled by `payload` at [`PAYLOAD`] with the bitness of
/// `mode`, runs after the mode switch. The payload starts with flat data segments loaded and the
/// stack at [`STACK32`] (real mode: all segments 0, SP 0x7000).
pub(crate) fn build(
    mode: Mode,
    payload: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<Rom, IcedError> {
    build_with(mode, payload, Vec::new())
}

/// [`build`] plus extra pieces (`(address, bytes)`, e.g. from [`asm`] or prebuilt tables)
/// placed at fixed addresses, so code can refer to them by address. Pieces below [`ENTRY`] move
/// the image's load address down.
pub(crate) fn build_with(
    mode: Mode,
    payload: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
    extras: Vec<(u64, Vec<u8>)>,
) -> Result<Rom, IcedError> {
    let mut img = Image { pieces: Vec::new() };
    for (addr, bytes) in extras {
        img.put(addr, &bytes);
    }

    // GDT: null, flat code32, flat data, code64.
    let mut gdt = Vec::new();
    gdt.extend_from_slice(&[0; 8]);
    gdt.extend_from_slice(&descriptor(0x9A, 0xC));
    gdt.extend_from_slice(&descriptor(0x92, 0xC));
    gdt.extend_from_slice(&descriptor(0x9A, 0xA));
    img.put(GDT, &gdt);
    let mut gdtr = ((gdt.len() - 1) as u16).to_le_bytes().to_vec();
    gdtr.extend_from_slice(&(GDT as u32).to_le_bytes());
    img.put(GDTR, &gdtr);

    // 16-bit entry stage.
    let mut a = CodeAssembler::new(16)?;
    a.cli()?;
    a.xor(ax, ax)?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(ss, ax)?;
    a.mov(sp, 0x7000u32)?;
    a.cld()?;
    if mode == Mode::Real {
        a.jmp(PAYLOAD)?;
    } else {
        a.lgdt(ptr(GDTR))?;
        a.mov(eax, cr0)?;
        a.or(eax, 1)?;
        a.mov(cr0, eax)?;
        // jmp dword SEL_CODE32:STAGE32 (o32 jmp far ptr16:32).
        a.db(&[0x66, 0xEA])?;
        a.db(&(STAGE32 as u32).to_le_bytes())?;
        a.db(&SEL_CODE32.to_le_bytes())?;
    }
    img.put(ENTRY, &a.assemble(ENTRY)?);

    // 32-bit stage.
    if mode != Mode::Real {
        let mut a = CodeAssembler::new(32)?;
        a.mov(ax, u32::from(SEL_DATA))?;
        for s in [ds, es, fs, gs, ss] {
            a.mov(s, ax)?;
        }
        a.mov(esp, STACK32 as u32)?;
        if mode == Mode::Protected32 {
            a.jmp(PAYLOAD)?;
        } else {
            // Zero the three tables, then link PML4 -> PDPT -> PD and fill the PD with 2 MiB
            // identity pages (present, writable, PS).
            a.mov(edi, PML4 as u32)?;
            a.xor(eax, eax)?;
            a.mov(ecx, 3 * 1024)?;
            a.rep().stosd()?;
            a.mov(dword_ptr(PML4), (PDPT | 3) as u32)?;
            a.mov(dword_ptr(PDPT), (PD | 3) as u32)?;
            a.mov(edi, PD as u32)?;
            a.mov(eax, 0x83)?;
            a.mov(ecx, 512)?;
            let mut fill = a.create_label();
            a.set_label(&mut fill)?;
            a.mov(dword_ptr(edi), eax)?;
            a.add(eax, 0x20_0000)?;
            a.add(edi, 8)?;
            a.dec(ecx)?;
            a.jnz(fill)?;
            a.mov(eax, cr4)?;
            a.or(eax, 0x20)?; // CR4.PAE
            a.mov(cr4, eax)?;
            a.mov(eax, PML4 as u32)?;
            a.mov(cr3, eax)?;
            a.mov(ecx, 0xC000_0080u32)?; // IA32_EFER
            a.rdmsr()?;
            a.or(eax, 0x100)?; // EFER.LME
            a.wrmsr()?;
            a.mov(eax, cr0)?;
            a.or(eax, 0x8000_0000u32)?; // CR0.PG
            a.mov(cr0, eax)?;
            // jmp SEL_CODE64:PAYLOAD
            a.db(&[0xEA])?;
            a.db(&(PAYLOAD as u32).to_le_bytes())?;
            a.db(&SEL_CODE64.to_le_bytes())?;
        }
        img.put(STAGE32, &a.assemble(STAGE32)?);
    }

    let bits = match mode {
        Mode::Real => 16,
        Mode::Protected32 => 32,
        Mode::Long64 => 64,
    };
    let mut a = CodeAssembler::new(bits)?;
    if mode == Mode::Long64 {
        a.mov(ax, u32::from(SEL_DATA))?;
        for s in [ds, es, ss] {
            a.mov(s, ax)?;
        }
        a.mov(rsp, STACK32)?;
    }
    payload(&mut a)?;
    img.put(PAYLOAD, &a.assemble(PAYLOAD)?);
    let (image, load_addr) = img.finish();
    Ok(Rom { image, load_addr, entry: ENTRY })
}

/// Assembles a separate piece of code of `bits` bits for address `addr`.
pub(crate) fn asm(
    bits: u32,
    addr: u64,
    f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<(u64, Vec<u8>), IcedError> {
    let mut a = CodeAssembler::new(bits)?;
    f(&mut a)?;
    Ok((addr, a.assemble(addr)?))
}

/// Emits `cmp reg, value` and, when they differ, a report of `FAIL | n` and a halt.
pub(crate) fn fail_unless_eq<R>(a: &mut CodeAssembler, n: u8, reg: R, value: i32) -> Result<(), IcedError>
where
    CodeAssembler: CodeAsmCmp<R, i32>,
{
    a.cmp(reg, value)?;
    fail_unless_zf(a, n)
}

/// Emits a report of `FAIL | n` and a halt, skipped when ZF is set.
pub(crate) fn fail_unless_zf(a: &mut CodeAssembler, n: u8) -> Result<(), IcedError> {
    let mut ok = a.create_label();
    a.je(ok)?;
    report(a, crate::FAIL | n)?;
    a.set_label(&mut ok)?;
    Ok(())
}

/// Emits `out EXIT_PORT, value` followed by `cli; hlt` (in case the write did not end the run).
pub(crate) fn report(a: &mut CodeAssembler, value: u8) -> Result<(), IcedError> {
    a.mov(al, u32::from(value))?;
    a.out(u32::from(crate::EXIT_PORT), al)?;
    a.cli()?;
    a.hlt()?;
    Ok(())
}
