//! A boot disk for the firmware tests. The boot sector, loaded by a PC BIOS to 0000:7C00,
//! prints through INT 10h teletype and straight to COM1, loads a second stage from LBA 1-4
//! with INT 13h and jumps to it. The second stage reads the data sectors through INT 13h
//! (extended LBA read, CHS read), writes one and reads it back, checks what it reads against
//! the pattern [`boot_disk`] wrote, and reports through the exit port.

use crate::layout::{fail_unless_zf, report};
use crate::{COM1, PASS};
use iced_x86::code_asm::*;
use iced_x86::IcedError;

/// Text the boot sector prints through INT 10h.
pub const BOOT_MESSAGE_INT10: &str = "boot sector: hello through INT 10h";
/// Text the boot sector prints straight to COM1.
pub const BOOT_MESSAGE_SERIAL: &str = "boot sector: hello through COM1";
/// Text printed after every disk check held.
pub const BOOT_MESSAGE_DONE: &str = "boot sector: disk reads and writes verified";

/// Sectors of the second stage (from LBA 1) and where it is loaded.
const STAGE2_SECTORS: u32 = 4;
const STAGE2: u64 = 0x7E00;
/// First sector of the pattern and the number of pattern sectors.
const DATA_LBA: u32 = 1 + STAGE2_SECTORS;
const DATA_SECTORS: u32 = 16;
/// First dword of data sector `i` is `MAGIC + i`, its last dword the complement.
const MAGIC: u32 = 0xF00D_0000;
/// Where the sectors are read to.
const BUF: u64 = 0x9000;
/// LBA the write test uses.
const WRITE_LBA: u32 = 40;

/// The 32-bit pattern word at the start of data sector `lba`.
fn pattern(lba: u32) -> u32 {
    MAGIC + lba
}

/// A disk image of `bytes` bytes (rounded up to whole sectors, at least 32 KiB): the boot
/// sector, the second stage, then [`DATA_SECTORS`] sectors whose first and last dwords
/// identify them, then zeros.
pub fn boot_disk(bytes: usize) -> Vec<u8> {
    let mut disk = vec![0u8; bytes.div_ceil(512).max(64) * 512];
    disk[..512].copy_from_slice(&boot_sector());
    let stage2 = stage2().expect("second stage assembles");
    assert!(stage2.len() <= STAGE2_SECTORS as usize * 512, "second stage too large");
    disk[512..512 + stage2.len()].copy_from_slice(&stage2);
    for lba in DATA_LBA..DATA_LBA + DATA_SECTORS {
        let s = &mut disk[lba as usize * 512..][..512];
        for (j, b) in s.iter_mut().enumerate() {
            *b = (lba as usize * 7 + j) as u8;
        }
        s[..4].copy_from_slice(&pattern(lba).to_le_bytes());
        s[508..].copy_from_slice(&(!pattern(lba)).to_le_bytes());
    }
    disk
}

/// The 512-byte boot sector (ends with the 0x55 0xAA signature).
pub fn boot_sector() -> Vec<u8> {
    build().expect("boot sector assembles")
}

/// Fixed addresses shared by the two stages.
const ORG: u64 = 0x7C00;
const MSG_INT10: u64 = ORG + 0x150;
const MSG_SERIAL: u64 = ORG + 0x180;
const MSG_DONE: u64 = ORG + 0x1A0;
const DRIVE: u64 = 0x500;
const DAP: u64 = 0x600;
/// Entry points of the boot sector's print routines, called by the second stage.
const PRINT10: u64 = ORG + 0x100;
const PRINT_SERIAL: u64 = ORG + 0x120;

/// Emits the setup of an INT 13h extended-read/write packet at [`DAP`] and loads SI and DL.
fn dap(a: &mut CodeAssembler, count: u32, buf: u64, lba: u32) -> Result<(), IcedError> {
    a.mov(word_ptr(DAP), 0x10u32)?;
    a.mov(word_ptr(DAP + 2), count)?;
    a.mov(word_ptr(DAP + 4), buf as u32)?;
    a.mov(word_ptr(DAP + 6), 0u32)?;
    a.mov(dword_ptr(DAP + 8), lba)?;
    a.mov(dword_ptr(DAP + 12), 0u32)?;
    a.mov(si, DAP as u32)?;
    a.mov(dl, byte_ptr(DRIVE))?;
    Ok(())
}

/// Emits "fail with `n` if CF is set" after an INT 13h call.
fn fail_if_carry(a: &mut CodeAssembler, n: u8) -> Result<(), IcedError> {
    a.setc(al)?;
    a.cmp(al, 0)?;
    fail_unless_zf(a, n)
}

fn build() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(16)?;
    a.cli()?;
    a.xor(ax, ax)?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(ss, ax)?;
    a.mov(sp, ORG as u32)?;
    a.sti()?;
    a.cld()?;
    a.mov(byte_ptr(DRIVE), dl)?;
    a.mov(si, MSG_INT10 as u32)?;
    a.call(PRINT10)?;
    a.mov(si, MSG_SERIAL as u32)?;
    a.call(PRINT_SERIAL)?;
    // 1. INT 13h AH=42h: load the second stage and jump to it.
    dap(&mut a, STAGE2_SECTORS, STAGE2, 1)?;
    a.mov(ah, 0x42)?;
    a.int(0x13)?;
    fail_if_carry(&mut a, 1)?;
    a.jmp(STAGE2)?;
    let code = a.assemble(ORG)?;
    assert!(code.len() <= (PRINT10 - ORG) as usize, "boot sector code ({} bytes) overlaps its routines", code.len());

    let mut sector = vec![0u8; 512];
    sector[..code.len()].copy_from_slice(&code);
    let routines = print_routines()?;
    assert!(routines.len() <= (MSG_INT10 - PRINT10) as usize, "print routines too large ({})", routines.len());
    let off = (PRINT10 - ORG) as usize;
    sector[off..off + routines.len()].copy_from_slice(&routines);
    for (at, msg) in [(MSG_INT10, BOOT_MESSAGE_INT10), (MSG_SERIAL, BOOT_MESSAGE_SERIAL), (MSG_DONE, BOOT_MESSAGE_DONE)]
    {
        let off = (at - ORG) as usize;
        sector[off..off + msg.len()].copy_from_slice(msg.as_bytes());
        sector[off + msg.len()] = 0;
    }
    sector[510] = 0x55;
    sector[511] = 0xAA;
    Ok(sector)
}

/// The second stage, assembled for [`STAGE2`].
fn stage2() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(16)?;
    // 2. INT 13h AH=42h: read the pattern sectors to BUF.
    dap(&mut a, DATA_SECTORS, BUF, DATA_LBA)?;
    a.mov(ah, 0x42)?;
    a.int(0x13)?;
    fail_if_carry(&mut a, 2)?;
    // 3. Every sector carries its pattern: first dword MAGIC + lba, last dword its complement.
    a.mov(bx, BUF as u32)?;
    a.mov(eax, pattern(DATA_LBA))?;
    a.mov(cx, DATA_SECTORS)?;
    let mut each = a.create_label();
    a.set_label(&mut each)?;
    a.cmp(dword_ptr(bx), eax)?;
    fail_unless_zf(&mut a, 3)?;
    a.mov(edx, eax)?;
    a.not(edx)?;
    a.cmp(dword_ptr(bx + 508), edx)?;
    fail_unless_zf(&mut a, 3)?;
    a.inc(eax)?;
    a.add(bx, 512)?;
    a.dec(cx)?;
    a.jnz(each)?;
    // 4. INT 13h AH=02h (CHS): cylinder 0, head 0, sector DATA_LBA + 2 is LBA DATA_LBA + 1.
    a.mov(ax, 0x0201u32)?;
    a.mov(cx, DATA_LBA + 2)?;
    a.mov(dh, 0)?;
    a.mov(dl, byte_ptr(DRIVE))?;
    a.mov(bx, 0xA000u32)?;
    a.int(0x13)?;
    fail_if_carry(&mut a, 4)?;
    a.cmp(dword_ptr(0xA000u64), pattern(DATA_LBA + 1) as i32)?;
    fail_unless_zf(&mut a, 4)?;
    // 5. INT 13h AH=43h: write the first pattern sector to WRITE_LBA, read it back, compare.
    dap(&mut a, 1, BUF, WRITE_LBA)?;
    a.mov(ax, 0x4300u32)?;
    a.int(0x13)?;
    fail_if_carry(&mut a, 5)?;
    dap(&mut a, 1, 0xB000, WRITE_LBA)?;
    a.mov(ah, 0x42)?;
    a.int(0x13)?;
    fail_if_carry(&mut a, 5)?;
    a.mov(si, BUF as u32)?;
    a.mov(di, 0xB000u32)?;
    a.mov(cx, 512u32)?;
    a.repe().cmpsb()?;
    fail_unless_zf(&mut a, 5)?;
    a.mov(si, MSG_DONE as u32)?;
    a.call(PRINT_SERIAL)?;
    report(&mut a, PASS)?;
    a.assemble(STAGE2)
}

/// The two print routines, at [`PRINT10`] and [`PRINT_SERIAL`] (relative to [`PRINT10`]).
fn print_routines() -> Result<Vec<u8>, IcedError> {
    // print10: the NUL-terminated string at SI through INT 10h AH=0Eh, then CR LF.
    let mut a = CodeAssembler::new(16)?;
    let mut print10 = a.create_label();
    let mut p10_end = a.create_label();
    a.set_label(&mut print10)?;
    a.lodsb()?;
    a.test(al, al)?;
    a.jz(p10_end)?;
    a.mov(ah, 0x0E)?;
    a.mov(bx, 0x0007u32)?;
    a.int(0x10)?;
    a.jmp(print10)?;
    a.set_label(&mut p10_end)?;
    for c in [b'\r', b'\n'] {
        a.mov(ax, 0x0E00u32 | u32::from(c))?;
        a.int(0x10)?;
    }
    a.ret()?;
    let mut bytes = a.assemble(PRINT10)?;
    let serial_at = (PRINT_SERIAL - PRINT10) as usize;
    assert!(bytes.len() <= serial_at, "INT 10h print routine too large ({})", bytes.len());
    bytes.resize(serial_at, 0x90);

    // print_serial: the NUL-terminated string at SI to COM1 (polling LSR.THRE), then CR LF.
    let mut a = CodeAssembler::new(16)?;
    let mut print_serial = a.create_label();
    let mut wait = a.create_label();
    let mut ps_end = a.create_label();
    a.set_label(&mut print_serial)?;
    a.lodsb()?;
    a.test(al, al)?;
    a.jz(ps_end)?;
    a.mov(ah, al)?;
    a.mov(dx, u32::from(COM1 + 5))?;
    a.set_label(&mut wait)?;
    a.in_(al, dx)?;
    a.test(al, 0x20)?;
    a.jz(wait)?;
    a.mov(al, ah)?;
    a.mov(dx, u32::from(COM1))?;
    a.out(dx, al)?;
    a.jmp(print_serial)?;
    a.set_label(&mut ps_end)?;
    a.mov(dx, u32::from(COM1))?;
    a.mov(al, 0x0D)?;
    a.out(dx, al)?;
    a.mov(al, 0x0A)?;
    a.out(dx, al)?;
    a.ret()?;
    bytes.extend(a.assemble(PRINT_SERIAL)?);
    Ok(bytes)
}
