//! PIIX IDE / ATA PIO tests: registers driven directly, checked against ATA/ATAPI-6.

use base::VirtualInstant;
use devices::ide::*;
use devices::{
    AtaDiskConfig, BlockBackend, DmaFault, DmaMemory, MemBackend, PciFunction, PiixIde, PioDevice, RecordingIrq,
};
use std::io;
use std::sync::{Arc, Mutex};

/// A disk the test can inspect after handing it to the controller.
#[derive(Clone)]
struct Shared(Arc<Mutex<MemBackend>>);

impl BlockBackend for Shared {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.lock().unwrap().read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.0.lock().unwrap().write_at(offset, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap().flush()
    }
    fn len(&self) -> u64 {
        self.0.lock().unwrap().len()
    }
}

/// A huge read-only disk whose every byte is a function of its offset (for LBA48 tests).
struct Pattern(u64);

fn pattern_byte(off: u64) -> u8 {
    (off ^ (off >> 9) ^ (off >> 17) ^ (off >> 33)) as u8
}

impl BlockBackend for Pattern {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = pattern_byte(offset + i as u64);
        }
        Ok(())
    }
    fn write_at(&mut self, _: u64, _: &[u8]) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "pattern disk"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> u64 {
        self.0
    }
}

/// Sector `n` of the test disk is filled with `n as u8`, except byte 0 = `n >> 8`.
fn sector_disk(sectors: usize) -> Shared {
    let mut v = vec![0u8; sectors * 512];
    for (n, s) in v.chunks_mut(512).enumerate() {
        s.fill(n as u8);
        s[0] = (n >> 8) as u8;
    }
    Shared(Arc::new(Mutex::new(MemBackend::new(v))))
}

struct Rig {
    ide: PiixIde<RecordingIrq>,
    irq14: RecordingIrq,
    irq15: RecordingIrq,
}

const P: u16 = 0x1F0;
const CTRL: u16 = 0x3F6;

fn acc(port: u16) -> devices::Access {
    devices::Access { offset: 0, addr: u64::from(port), now: VirtualInstant(0) }
}

impl Rig {
    fn new() -> Self {
        let (irq14, irq15) = (RecordingIrq::new(), RecordingIrq::new());
        Rig { ide: PiixIde::new(irq14.clone(), irq15.clone()), irq14, irq15 }
    }

    fn with_disk(disk: impl BlockBackend + 'static) -> Self {
        let mut r = Self::new();
        r.ide.attach(0, false, Box::new(disk), AtaDiskConfig::default()).unwrap();
        r
    }

    fn inb(&mut self, port: u16) -> u8 {
        let mut d = [0];
        self.ide.read(acc(port), &mut d);
        d[0]
    }

    fn outb(&mut self, port: u16, v: u8) {
        self.ide.write(acc(port), &[v]);
    }

    fn inw(&mut self, port: u16) -> u16 {
        let mut d = [0; 2];
        self.ide.read(acc(port), &mut d);
        u16::from_le_bytes(d)
    }

    fn outw(&mut self, port: u16, v: u16) {
        self.ide.write(acc(port), &v.to_le_bytes());
    }

    fn read_block(&mut self, bytes: usize) -> Vec<u8> {
        (0..bytes / 2).flat_map(|_| self.inw(P).to_le_bytes()).collect()
    }

    /// Issues a 28-bit LBA command.
    fn cmd28(&mut self, cmd: u8, lba: u32, count: u8) {
        self.outb(P + 2, count);
        self.outb(P + 3, lba as u8);
        self.outb(P + 4, (lba >> 8) as u8);
        self.outb(P + 5, (lba >> 16) as u8);
        self.outb(P + 6, 0xE0 | ((lba >> 24) as u8 & 0xF));
        self.outb(P + 7, cmd);
    }
}

#[test]
fn test_ide_identify_words() {
    let mut r = Rig::with_disk(sector_disk(20480)); // 10 MiB
    assert_eq!(r.inb(P + 7), ATA_SR_DRDY | ATA_SR_DSC, "power-on status 50h");
    r.outb(P + 6, 0xA0);
    r.outb(P + 7, ATA_CMD_IDENTIFY_DEVICE);
    assert_eq!(r.irq14.take_edges(), 1);
    assert!(r.irq14.level(), "INTRQ held until Status is read");
    assert_eq!(r.inb(CTRL), ATA_SR_DRDY | ATA_SR_DSC | ATA_SR_DRQ, "alternate status");
    assert!(r.irq14.level(), "alternate status does not acknowledge");
    assert_eq!(r.inb(P + 7) & (ATA_SR_BSY | ATA_SR_DRQ), ATA_SR_DRQ);
    assert!(!r.irq14.level());
    let bytes = r.read_block(512);
    let w = |i: usize| u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]);
    assert_eq!(w(0), 0x0040);
    // 20480 sectors / (16 heads * 63) = 20 cylinders.
    assert_eq!((w(1), w(3), w(6)), (20, 16, 63));
    assert_eq!((w(54), w(55), w(56)), (20, 16, 63));
    assert_eq!(u32::from(w(57)) | u32::from(w(58)) << 16, 20 * 16 * 63);
    // Strings: first character in the high byte of each word, so raw bytes are pair-swapped.
    assert_eq!(&bytes[54..60], b"EFRRVO", "model \"FERROVISOR HARDDISK\" swapped");
    assert_eq!(&bytes[20..28], b"VF0000 1", "serial \"FV00001\" swapped and space padded");
    assert_eq!(&bytes[46..50], b".0 1", "firmware \"0.1\"");
    assert_eq!(bytes[93], b' ', "model padded with spaces to 40 characters");
    assert_eq!(w(47) & 0xFF, u16::from(MAX_MULTIPLE_SECTORS));
    assert_eq!(w(47) >> 8, 0x80);
    assert_ne!(w(49) & (1 << 9), 0, "LBA supported");
    assert_eq!(w(49) & (1 << 8), 0, "DMA not advertised");
    assert_eq!(w(53) & 1, 1, "words 54-58 valid");
    assert_eq!(u32::from(w(60)) | u32::from(w(61)) << 16, 20480);
    assert_ne!(w(80) & 0x40, 0, "ATA-6");
    assert_ne!(w(83) & (1 << 10), 0, "48-bit address supported");
    assert_ne!(w(86) & (1 << 10), 0, "48-bit address enabled");
    assert_eq!(w(83) >> 14, 1, "word 83 bits 15:14 = 01b");
    let lba48 = (0..4).fold(0u64, |a, i| a | u64::from(w(100 + i)) << (16 * i));
    assert_eq!(lba48, 20480);
    assert_eq!(w(255) & 0xFF, 0xA5);
    assert_eq!(bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0, "integrity checksum");
    assert_eq!(r.inb(P + 7), ATA_SR_DRDY | ATA_SR_DSC, "DRQ clear after 256 words");
    assert_eq!(r.irq14.take_edges(), 0, "no interrupt at the end of PIO data-in");
}

#[test]
fn test_ide_read_sectors_lba28() {
    let mut r = Rig::with_disk(sector_disk(1000));
    r.cmd28(ATA_CMD_READ_SECTORS, 5, 2);
    assert_eq!(r.irq14.take_edges(), 1);
    assert_eq!(r.inb(P + 7), ATA_SR_DRDY | ATA_SR_DSC | ATA_SR_DRQ);
    let s5 = r.read_block(512);
    assert_eq!((s5[0], s5[1], s5[511]), (0, 5, 5));
    assert!(r.irq14.level(), "INTRQ for the next block");
    assert_eq!(r.irq14.take_edges(), 1, "one interrupt per DRQ block");
    assert_eq!(r.inb(P + 7) & ATA_SR_DRQ, ATA_SR_DRQ);
    let s6 = r.read_block(512);
    assert_eq!(s6[1], 6);
    assert_eq!(r.irq14.take_edges(), 0);
    assert_eq!(r.inb(P + 7), ATA_SR_DRDY | ATA_SR_DSC);
    // Sector count 0 means 256 sectors.
    r.cmd28(ATA_CMD_READ_SECTORS, 0, 0);
    for n in 0..256u32 {
        r.inb(P + 7); // acknowledge, as an interrupt handler does
        let s = r.read_block(512);
        assert_eq!((s[0], s[1]), ((n >> 8) as u8, n as u8));
    }
    assert_eq!(r.irq14.take_edges(), 256);
    assert_eq!(r.inb(P + 7) & ATA_SR_DRQ, 0);
    // 32-bit data port reads return two words.
    r.cmd28(ATA_CMD_READ_SECTORS, 0x102, 1);
    let mut d = [0u8; 4];
    r.ide.read(acc(P), &mut d);
    assert_eq!(d, [1, 2, 2, 2]);
}

#[test]
fn test_ide_write_sectors_and_flush() {
    let disk = sector_disk(100);
    let mut r = Rig::with_disk(disk.clone());
    r.cmd28(ATA_CMD_WRITE_SECTORS, 10, 2);
    assert_eq!(r.irq14.take_edges(), 0, "the first data-out block has no interrupt");
    assert_eq!(r.inb(CTRL), ATA_SR_DRDY | ATA_SR_DSC | ATA_SR_DRQ);
    for i in 0..256u16 {
        r.outw(P, 0xA000 | i);
    }
    assert_eq!(r.irq14.take_edges(), 1);
    assert_eq!(r.inb(P + 7) & ATA_SR_DRQ, ATA_SR_DRQ, "second block requested");
    assert!(!r.irq14.level());
    for _ in 0..128 {
        r.ide.write(acc(P), &0xDEAD_BEEFu32.to_le_bytes());
    }
    assert_eq!(r.irq14.take_edges(), 1, "completion interrupt");
    assert_eq!(r.inb(P + 7), ATA_SR_DRDY | ATA_SR_DSC);
    {
        let d = disk.0.lock().unwrap();
        assert_eq!(&d.data()[10 * 512..10 * 512 + 4], &[0x00, 0xA0, 0x01, 0xA0]);
        assert_eq!(&d.data()[11 * 512..11 * 512 + 4], &[0xEF, 0xBE, 0xAD, 0xDE]);
        assert_eq!(d.data()[12 * 512 + 1], 12, "neighbour untouched");
    }
    r.outb(P + 7, ATA_CMD_FLUSH_CACHE);
    r.inb(P + 7);
    r.outb(P + 7, ATA_CMD_FLUSH_CACHE_EXT);
    assert_eq!(r.irq14.take_edges(), 2);
    assert_eq!(disk.0.lock().unwrap().flushes(), 2);
    // Data written outside a data-out phase is dropped.
    r.outw(P, 0x1234);
    assert_eq!(disk.0.lock().unwrap().data()[0..2], [0, 0]);
}

#[test]
fn test_ide_lba48_and_hob_readback() {
    let sectors: u64 = 0x2_0000_0000; // 4 TiB
    let mut r = Rig::with_disk(Pattern(sectors * 512));
    let lba: u64 = 0x1_2345_6789;
    // Previous ("HOB") bytes first, then current.
    r.outb(P + 2, 0x00);
    r.outb(P + 3, (lba >> 24) as u8);
    r.outb(P + 4, (lba >> 32) as u8);
    r.outb(P + 5, (lba >> 40) as u8);
    r.outb(P + 2, 0x02);
    r.outb(P + 3, lba as u8);
    r.outb(P + 4, (lba >> 8) as u8);
    r.outb(P + 5, (lba >> 16) as u8);
    r.outb(P + 6, ATA_DEV_LBA);
    // HOB read-back.
    r.outb(CTRL, ATA_DC_HOB);
    assert_eq!((r.inb(P + 3), r.inb(P + 4)), (0x23, 0x01));
    r.outb(CTRL, 0);
    assert_eq!(r.inb(P + 3), 0x89);
    r.outb(P + 7, ATA_CMD_READ_SECTORS_EXT);
    r.inb(P + 7);
    let a = r.read_block(512);
    r.inb(P + 7);
    let b = r.read_block(512);
    let base = lba * 512;
    assert!(a.iter().enumerate().all(|(i, &x)| x == pattern_byte(base + i as u64)));
    assert!(b.iter().enumerate().all(|(i, &x)| x == pattern_byte(base + 512 + i as u64)));
    assert_eq!(r.irq14.take_edges(), 2);
    // The 28-bit capacity words saturate; IDENTIFY reports the real size in 100-103.
    r.outb(P + 7, ATA_CMD_IDENTIFY_DEVICE);
    let id = r.read_block(512);
    let w = |i: usize| u16::from_le_bytes([id[2 * i], id[2 * i + 1]]);
    assert_eq!(u32::from(w(60)) | u32::from(w(61)) << 16, 0x0FFF_FFFF);
    assert_eq!((w(100), w(101), w(102), w(103)), (0, 0, 2, 0));
    assert_eq!((w(1), w(3), w(6)), (16383, 16, 63));
    // Writes fail on this disk: ERR with ABRT, failing LBA in the registers.
    r.outb(P + 2, 0);
    r.outb(P + 2, 1);
    r.outb(P + 7, ATA_CMD_WRITE_SECTORS_EXT);
    for _ in 0..256 {
        r.outw(P, 0);
    }
    assert_eq!(r.inb(P + 7) & ATA_SR_ERR, ATA_SR_ERR);
    assert_eq!(r.inb(P + 1), ATA_ER_ABRT);
}

#[test]
fn test_ide_chs_and_initialize_device_parameters() {
    let mut r = Rig::with_disk(sector_disk(4000));
    // Default geometry 16 heads, 63 sectors: C/H/S 1/2/3 is LBA (1*16+2)*63+2 = 1136.
    r.outb(P + 2, 1);
    r.outb(P + 3, 3);
    r.outb(P + 4, 1);
    r.outb(P + 5, 0);
    r.outb(P + 6, 0xA2);
    r.outb(P + 7, ATA_CMD_READ_SECTORS);
    let s = r.read_block(512);
    assert_eq!((s[0], s[1]), ((1136 >> 8) as u8, 1136u32 as u8));
    // INITIALIZE DEVICE PARAMETERS: 4 heads, 17 sectors per track.
    r.outb(P + 2, 17);
    r.outb(P + 6, 0xA0 | 3);
    r.outb(P + 7, ATA_CMD_INITIALIZE_DEVICE_PARAMETERS);
    assert_eq!(r.inb(P + 7), ATA_SR_DRDY | ATA_SR_DSC);
    r.outb(P + 2, 1);
    r.outb(P + 3, 3);
    r.outb(P + 4, 1);
    r.outb(P + 6, 0xA2);
    r.outb(P + 7, ATA_CMD_READ_SECTORS);
    let s = r.read_block(512);
    assert_eq!(s[1], 104, "(1 * 4 + 2) * 17 + 3 - 1 through the new geometry");
    // IDENTIFY reports it as the current geometry, the default one unchanged.
    r.outb(P + 7, ATA_CMD_IDENTIFY_DEVICE);
    let id = r.read_block(512);
    let w = |i: usize| u16::from_le_bytes([id[2 * i], id[2 * i + 1]]);
    assert_eq!((w(54), w(55), w(56)), (4000 / 68, 4, 17));
    assert_eq!((w(3), w(6)), (16, 63));
    // Sector 0 and a head beyond the geometry do not exist.
    r.outb(P + 3, 0);
    r.outb(P + 7, ATA_CMD_READ_SECTORS);
    assert_eq!(r.inb(P + 7), ATA_SR_DRDY | ATA_SR_DSC | ATA_SR_ERR);
    assert_eq!(r.inb(P + 1), ATA_ER_IDNF);
    r.outb(P + 3, 1);
    r.outb(P + 6, 0xA0 | 5);
    r.outb(P + 7, ATA_CMD_READ_VERIFY);
    assert_eq!(r.inb(P + 1), ATA_ER_IDNF);
    // Zero sectors per track is invalid.
    r.outb(P + 2, 0);
    r.outb(P + 7, ATA_CMD_INITIALIZE_DEVICE_PARAMETERS);
    assert_eq!(r.inb(P + 1), ATA_ER_ABRT);
}

#[test]
fn test_ide_read_write_multiple() {
    let disk = sector_disk(64);
    let mut r = Rig::with_disk(disk.clone());
    r.cmd28(ATA_CMD_READ_MULTIPLE, 0, 4);
    assert_eq!(r.inb(P + 7), ATA_SR_DRDY | ATA_SR_DSC | ATA_SR_ERR, "multiple mode disabled");
    assert_eq!(r.inb(P + 1), ATA_ER_ABRT);
    r.outb(P + 2, 3);
    r.outb(P + 7, ATA_CMD_SET_MULTIPLE_MODE);
    assert_eq!(r.inb(P + 1), ATA_ER_ABRT, "not a power of two");
    r.outb(P + 2, 32);
    r.outb(P + 7, ATA_CMD_SET_MULTIPLE_MODE);
    assert_eq!(r.inb(P + 1), ATA_ER_ABRT, "above IDENTIFY word 47");
    r.outb(P + 2, 4);
    r.outb(P + 7, ATA_CMD_SET_MULTIPLE_MODE);
    assert_eq!(r.inb(P + 7), ATA_SR_DRDY | ATA_SR_DSC);
    r.irq14.clear();
    r.cmd28(ATA_CMD_READ_MULTIPLE, 8, 6);
    assert_eq!(r.irq14.take_edges(), 1);
    r.inb(P + 7);
    let blk = r.read_block(4 * 512);
    assert_eq!((blk[1], blk[512 + 1], blk[3 * 512 + 1]), (8, 9, 11));
    assert_eq!(r.irq14.take_edges(), 1, "second (partial) block");
    let blk = r.read_block(2 * 512);
    assert_eq!((blk[1], blk[513]), (12, 13));
    assert_eq!(r.inb(P + 7), ATA_SR_DRDY | ATA_SR_DSC);
    // WRITE MULTIPLE EXT: 5 sectors at LBA 20, blocks of 4 + 1.
    r.outb(P + 2, 0);
    r.outb(P + 2, 5);
    for reg in 3..=5 {
        r.outb(P + reg, 0);
        r.outb(P + reg, if reg == 3 { 20 } else { 0 });
    }
    r.outb(P + 6, ATA_DEV_LBA);
    r.outb(P + 7, ATA_CMD_WRITE_MULTIPLE_EXT);
    for _ in 0..4 * 256 {
        r.outw(P, 0x7777);
    }
    assert_eq!(r.irq14.take_edges(), 1);
    assert_eq!(r.inb(P + 7) & ATA_SR_DRQ, ATA_SR_DRQ);
    for _ in 0..256 {
        r.outw(P, 0x8888);
    }
    assert_eq!(r.irq14.take_edges(), 1);
    assert_eq!(r.inb(P + 7), ATA_SR_DRDY | ATA_SR_DSC);
    let d = disk.0.lock().unwrap();
    assert!(d.data()[20 * 512..24 * 512].iter().all(|&b| b == 0x77));
    assert!(d.data()[24 * 512..25 * 512].iter().all(|&b| b == 0x88));
    assert_eq!(d.data()[25 * 512 + 1], 25);
}

#[test]
fn test_ide_errors_and_aborts() {
    let mut r = Rig::with_disk(sector_disk(100));
    r.cmd28(ATA_CMD_READ_SECTORS, 99, 2);
    assert_eq!(r.irq14.take_edges(), 1);
    assert_eq!(r.inb(P + 7), ATA_SR_DRDY | ATA_SR_DSC | ATA_SR_ERR, "range past the end");
    assert_eq!(r.inb(P + 1), ATA_ER_IDNF);
    r.cmd28(ATA_CMD_READ_VERIFY, 98, 2);
    assert_eq!(r.inb(P + 7), ATA_SR_DRDY | ATA_SR_DSC);
    r.irq14.clear();
    for cmd in [0x00, ATA_CMD_IDENTIFY_PACKET_DEVICE, ATA_CMD_PACKET, ATA_CMD_DEVICE_RESET, 0xF8, 0xFF] {
        r.outb(P + 7, cmd);
        assert_eq!(r.irq14.take_edges(), 1, "{cmd:#x}");
        assert_eq!(r.inb(P + 7), ATA_SR_DRDY | ATA_SR_DSC | ATA_SR_ERR, "{cmd:#x}");
        assert_eq!(r.inb(P + 1), ATA_ER_ABRT, "{cmd:#x}");
    }
    // SET FEATURES: PIO mode 4 accepted, UDMA 5 (not advertised) and unknown features abort.
    r.outb(P + 1, SETFEATURES_XFER);
    r.outb(P + 2, 0x0C);
    r.outb(P + 7, ATA_CMD_SET_FEATURES);
    assert_eq!(r.inb(P + 7), ATA_SR_DRDY | ATA_SR_DSC);
    r.outb(P + 2, 0x45);
    r.outb(P + 7, ATA_CMD_SET_FEATURES);
    assert_eq!(r.inb(P + 1), ATA_ER_ABRT);
    r.outb(P + 1, 0x31);
    r.outb(P + 7, ATA_CMD_SET_FEATURES);
    assert_eq!(r.inb(P + 1), ATA_ER_ABRT);
    r.outb(P + 1, SETFEATURES_WC_OFF);
    r.outb(P + 7, ATA_CMD_SET_FEATURES);
    assert_eq!(r.inb(P + 7), ATA_SR_DRDY | ATA_SR_DSC);
    r.outb(P + 7, ATA_CMD_IDENTIFY_DEVICE);
    let id = r.read_block(512);
    assert_eq!(u16::from_le_bytes([id[170], id[171]]) & (1 << 5), 0, "word 85: write cache disabled");
    // Power management no-ops and CHECK POWER MODE (FFh: active or idle).
    for cmd in [ATA_CMD_IDLE, ATA_CMD_IDLE_IMMEDIATE, ATA_CMD_STANDBY, ATA_CMD_STANDBY_IMMEDIATE, 0x10, 0x70] {
        r.outb(P + 7, cmd);
        assert_eq!(r.inb(P + 7), ATA_SR_DRDY | ATA_SR_DSC, "{cmd:#x}");
    }
    r.outb(P + 2, 0);
    r.outb(P + 7, ATA_CMD_CHECK_POWER_MODE);
    assert_eq!(r.inb(P + 2), 0xFF);
}

#[test]
fn test_ide_software_reset_and_diagnostics() {
    let mut r = Rig::with_disk(sector_disk(100));
    r.cmd28(ATA_CMD_READ_SECTORS, 3, 1);
    r.irq14.clear();
    r.outb(CTRL, ATA_DC_SRST | ATA_DC_NIEN);
    assert_eq!(r.inb(CTRL) & ATA_SR_BSY, ATA_SR_BSY, "BSY while SRST is set");
    r.outb(P + 7, ATA_CMD_IDENTIFY_DEVICE);
    assert_eq!(r.inb(CTRL) & ATA_SR_DRQ, 0, "commands are ignored while busy");
    r.outb(CTRL, ATA_DC_NIEN);
    assert_eq!(r.inb(P + 7), ATA_SR_DRDY | ATA_SR_DSC);
    assert_eq!(r.inb(P + 1), ATA_DIAG_PASSED);
    // ATA signature: count 1, LBA low 1, mid 0, high 0, device 0.
    assert_eq!([r.inb(P + 2), r.inb(P + 3), r.inb(P + 4), r.inb(P + 5), r.inb(P + 6)], [1, 1, 0, 0, 0]);
    assert_eq!(r.irq14.take_edges(), 0, "no interrupt from a software reset");
    assert_eq!(r.inw(P), 0xFFFF, "the transfer was cancelled");
    r.outb(CTRL, 0);
    r.outb(P + 3, 0x55);
    r.outb(P + 7, ATA_CMD_EXECUTE_DEVICE_DIAGNOSTIC);
    assert_eq!(r.irq14.take_edges(), 1);
    assert_eq!((r.inb(P + 1), r.inb(P + 3)), (ATA_DIAG_PASSED, 1));
}

#[test]
fn test_ide_nien_masks_interrupt() {
    let mut r = Rig::with_disk(sector_disk(10));
    r.outb(CTRL, ATA_DC_NIEN);
    r.outb(P + 7, ATA_CMD_IDLE);
    assert!(!r.irq14.level());
    assert_eq!(r.irq14.take_edges(), 0);
    r.outb(CTRL, 0);
    assert!(r.irq14.level(), "a pending interrupt shows once nIEN is cleared");
    r.inb(P + 7);
    assert!(!r.irq14.level());
    assert_eq!(r.irq14.take_edges(), 1);
    // The secondary channel has its own line.
    r.ide.attach(1, false, Box::new(sector_disk(10)), AtaDiskConfig::default()).unwrap();
    r.outb(0x177, ATA_CMD_IDLE);
    assert_eq!((r.irq14.take_edges(), r.irq15.take_edges()), (0, 1));
    assert_eq!(r.inb(0x177), ATA_SR_DRDY | ATA_SR_DSC);
    assert!(!r.irq15.level());
}

#[test]
fn test_ide_absent_devices() {
    let mut r = Rig::with_disk(sector_disk(10));
    // Empty secondary channel: a floating bus.
    assert_eq!(r.inb(0x177), 0xFF);
    assert_eq!(r.inb(0x376), 0xFF);
    r.outb(0x172, 0x55);
    assert_eq!(r.inb(0x172), 0xFF);
    // Device 1 absent behind device 0: registers read 0, the device register reads back.
    r.outb(P + 6, 0xB0);
    assert_eq!(r.inb(P + 6), 0xB0);
    r.outb(P + 2, 0x55);
    r.outb(P + 3, 0xAA);
    assert_eq!([r.inb(P + 7), r.inb(CTRL), r.inb(P + 1), r.inb(P + 2), r.inb(P + 3)], [0; 5]);
    r.outb(P + 7, ATA_CMD_IDENTIFY_DEVICE);
    assert_eq!(r.irq14.take_edges(), 0, "commands to an absent device are ignored");
    assert_eq!(r.inb(P + 7), 0);
    // Device 0 kept the values written while device 1 was selected (shared task file).
    r.outb(P + 6, 0xA0);
    assert_eq!((r.inb(P + 2), r.inb(P + 3)), (0x55, 0xAA));
    // Impossible geometries are refused.
    let bad = AtaDiskConfig { geometry: Some(Chs { cylinders: 10, heads: 0, sectors: 63 }), ..Default::default() };
    assert!(matches!(r.ide.attach(1, true, Box::new(sector_disk(10)), bad), Err(IdeError::BadGeometry(_))));
    assert!(matches!(
        r.ide.attach(2, false, Box::new(sector_disk(10)), AtaDiskConfig::default()),
        Err(IdeError::NoSuchChannel(2))
    ));
    assert!(matches!(
        r.ide.attach(1, false, Box::new(MemBackend::zeroed(100)), AtaDiskConfig::default()),
        Err(IdeError::DiskTooSmall(100))
    ));
    // A device 1 alone answers as itself.
    let mut r2 = Rig::new();
    r2.ide.attach(0, true, Box::new(sector_disk(10)), AtaDiskConfig::default()).unwrap();
    r2.outb(P + 6, 0xB0);
    assert_eq!(r2.inb(P + 7), ATA_SR_DRDY | ATA_SR_DSC);
    r2.outb(P + 6, 0xA0);
    assert_eq!(r2.inb(P + 7), 0);
}

#[test]
fn test_ide_pci_function_and_bus_master_registers() {
    let mut r = Rig::with_disk(sector_disk(10));
    let mut d = [0u8; 4];
    r.ide.read_config(0, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x7010_8086);
    r.ide.read_config(8, &mut d);
    assert_eq!(d[1..], [0x80, 0x01, 0x01], "prog-if 80h (bus master, legacy), class 0101h");
    r.ide.write_config(0x20, &u32::MAX.to_le_bytes());
    r.ide.read_config(0x20, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0xFFFF_FFF1, "BAR4: 16 bytes of I/O");
    r.ide.read_config(0x10, &mut d);
    assert_eq!(d, [0; 4], "BAR0-3 unused in legacy mode");
    r.ide.write_config(0x20, &0xC001u32.to_le_bytes());
    assert_eq!(r.ide.bus_master_base(), None, "I/O decoding off");
    r.ide.write_config(4, &[0x05, 0]);
    assert_eq!(r.ide.bus_master_base(), Some(0xC000));
    // IDETIM is plain storage (SeaBIOS writes 0x8000 to enable the channels).
    r.ide.write_config(0x40, &[0x00, 0x80, 0x00, 0x80]);
    r.ide.read_config(0x40, &mut d);
    assert_eq!(d, [0x00, 0x80, 0x00, 0x80]);
    // Bus-master registers: PRDT dword aligned, interrupt bit set by INTRQ and write-one-clear.
    r.ide.write(acc(0xC004), &0x0012_3457u32.to_le_bytes());
    r.ide.read(acc(0xC004), &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x0012_3454);
    r.outb(P + 7, ATA_CMD_IDLE);
    assert_eq!(r.inb(0xC002) & BM_STATUS_INT, BM_STATUS_INT);
    r.outb(0xC002, BM_STATUS_INT | 0x20);
    assert_eq!(r.inb(0xC002), 0x20);
    assert_eq!(r.inb(0xC00A), 0, "secondary bus-master status");
    assert_eq!(r.inb(0xC010), 0xFF, "past the 16-byte block");
}

#[test]
fn test_ide_state_roundtrip_mid_transfer() {
    let disk = sector_disk(50);
    let mut r = Rig::with_disk(disk.clone());
    r.cmd28(ATA_CMD_READ_SECTORS, 7, 2);
    let first = r.read_block(100);
    let st = r.ide.state();
    let mut r2 = Rig::with_disk(disk);
    r2.ide.restore(st.clone());
    assert_eq!(r2.ide.state(), st);
    assert!(r2.irq14.level(), "restore re-raises the pending interrupt");
    let rest = r2.read_block(412);
    let next = r2.read_block(512);
    assert_eq!(first[1], 7);
    assert!(rest.iter().all(|&b| b == 7));
    assert_eq!(next[1], 8);
}

#[test]
fn test_ide_random_accesses_never_panic() {
    let mut r = Rig::with_disk(sector_disk(300));
    r.ide.attach(1, true, Box::new(sector_disk(40)), AtaDiskConfig::default()).unwrap();
    r.ide.write_config(0x20, &0xC001u32.to_le_bytes());
    r.ide.write_config(4, &[0x05, 0]);
    r.ide.set_dma_advertised(true);
    let mut ram = Ram(vec![0; 1 << 16]);
    let ports: Vec<u16> =
        (0x1F0..=0x1F7).chain(0x170..=0x177).chain([0x3F6, 0x376, 0x3F7]).chain(0xBFF8..0xC018).collect();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..200_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = ports[(x % ports.len() as u64) as usize];
        let width = [1usize, 2, 4, 3][(x >> 20) as usize % 4];
        let mut buf = (x >> 24).to_le_bytes();
        // Keep SRST mostly clear so commands get through.
        if matches!(port, 0x3F6 | 0x376) {
            buf[0] &= !ATA_DC_SRST;
        }
        if x & (1 << 50) != 0 {
            r.ide.write(acc(port), &buf[..width]);
        } else {
            r.ide.read(acc(port), &mut buf[..width]);
        }
        if r.ide.dma_pending() {
            r.ide.run_dma(&mut ram);
        }
    }
    let mut d = [0u8; 2];
    r.ide.read_config(0, &mut d);
    assert_eq!(u16::from_le_bytes(d), 0x8086);
}

/// Guest RAM for DMA tests: 1 MiB at physical 0.
struct Ram(Vec<u8>);

impl DmaMemory for Ram {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let a = usize::try_from(addr).map_err(|_| DmaFault { addr })?;
        let src = self.0.get(a..a + buf.len()).ok_or(DmaFault { addr })?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write(&mut self, addr: u64, buf: &[u8]) -> Result<(), DmaFault> {
        let a = usize::try_from(addr).map_err(|_| DmaFault { addr })?;
        self.0.get_mut(a..a + buf.len()).ok_or(DmaFault { addr })?.copy_from_slice(buf);
        Ok(())
    }
}

impl Ram {
    fn prd(&mut self, at: usize, entries: &[(u32, u32)]) {
        for (i, &(addr, flags)) in entries.iter().enumerate() {
            self.0[at + 8 * i..at + 8 * i + 4].copy_from_slice(&addr.to_le_bytes());
            self.0[at + 8 * i + 4..at + 8 * i + 8].copy_from_slice(&flags.to_le_bytes());
        }
    }
}

const BM: u16 = 0xC000;

fn dma_rig(disk: Shared) -> (Rig, Ram) {
    let mut r = Rig::with_disk(disk);
    r.ide.write_config(0x20, &u32::from(BM | 1).to_le_bytes());
    r.ide.write_config(4, &[0x05, 0]); // I/O + bus master
    (r, Ram(vec![0; 1 << 20]))
}

#[test]
fn test_ide_dma_read_with_prd_table() {
    let (mut r, mut ram) = dma_rig(sector_disk(64));
    ram.prd(0x1000, &[(0x2000, 512), (0x3000, PRD_EOT | 1024)]);
    r.ide.write(acc(BM + 4), &0x1000u32.to_le_bytes());
    r.outb(BM, BM_CMD_READ);
    r.outb(BM + 2, BM_STATUS_INT | BM_STATUS_ERROR);
    r.cmd28(ATA_CMD_READ_DMA, 4, 3);
    assert!(!r.ide.dma_pending(), "bus master not started");
    assert_eq!(r.irq14.take_edges(), 0);
    r.outb(BM, BM_CMD_READ | BM_CMD_START);
    assert_eq!(r.inb(BM + 2) & BM_STATUS_ACTIVE, BM_STATUS_ACTIVE);
    assert!(r.ide.dma_pending());
    r.ide.run_dma(&mut ram);
    assert!(!r.ide.dma_pending());
    assert_eq!((ram.0[0x2001], ram.0[0x21FF]), (4, 4));
    assert_eq!((ram.0[0x3001], ram.0[0x3201], ram.0[0x33FF]), (5, 6, 6));
    assert_eq!(ram.0[0x3400], 0, "nothing past the last PRD");
    assert_eq!(r.inb(BM + 2) & (BM_STATUS_INT | BM_STATUS_ACTIVE | BM_STATUS_ERROR), BM_STATUS_INT);
    assert_eq!(r.irq14.take_edges(), 1);
    assert_eq!(r.inb(P + 7), ATA_SR_DRDY | ATA_SR_DSC);
    r.outb(BM, BM_CMD_READ);
    // SeaBIOS-style ordering (command first, start after) and Linux-style (start first) both work.
    r.outb(BM, BM_CMD_READ | BM_CMD_START);
    ram.prd(0x1000, &[(0x4000, PRD_EOT | 512)]);
    r.cmd28(ATA_CMD_READ_DMA, 9, 1);
    r.ide.run_dma(&mut ram);
    assert_eq!(ram.0[0x4001], 9);
}

#[test]
fn test_ide_dma_write_ext_and_prd_sizes() {
    let disk = sector_disk(64);
    let (mut r, mut ram) = dma_rig(disk.clone());
    ram.0[0x8000..0x8400].fill(0xC3);
    // The table is larger than the transfer: done, but the bus master stays active.
    ram.prd(0x1000, &[(0x8000, PRD_EOT | 0x2000)]);
    r.ide.write(acc(BM + 4), &0x1000u32.to_le_bytes());
    r.outb(P + 2, 0);
    r.outb(P + 2, 2);
    for reg in 3..=5 {
        r.outb(P + reg, 0);
        r.outb(P + reg, if reg == 3 { 30 } else { 0 });
    }
    r.outb(P + 6, ATA_DEV_LBA);
    r.outb(P + 7, ATA_CMD_WRITE_DMA_EXT);
    r.outb(BM, BM_CMD_START);
    r.ide.run_dma(&mut ram);
    assert!(disk.0.lock().unwrap().data()[30 * 512..32 * 512].iter().all(|&b| b == 0xC3));
    assert_eq!(disk.0.lock().unwrap().data()[32 * 512 + 1], 32);
    assert_eq!(r.inb(BM + 2) & (BM_STATUS_INT | BM_STATUS_ACTIVE), BM_STATUS_INT | BM_STATUS_ACTIVE);
    assert_eq!(r.inb(P + 7), ATA_SR_DRDY | ATA_SR_DSC);
    r.outb(BM, 0);
    assert_eq!(r.inb(BM + 2) & BM_STATUS_ACTIVE, 0, "stopping the engine clears active");
    // A table shorter than the transfer is an error.
    r.outb(BM + 2, BM_STATUS_INT);
    ram.prd(0x1000, &[(0x8000, PRD_EOT | 512)]);
    r.cmd28(ATA_CMD_READ_DMA, 0, 2);
    r.outb(BM, BM_CMD_READ | BM_CMD_START);
    r.ide.run_dma(&mut ram);
    assert_eq!(r.inb(BM + 2) & (BM_STATUS_ERROR | BM_STATUS_ACTIVE), BM_STATUS_ERROR);
    assert_eq!(r.inb(P + 7) & ATA_SR_ERR, ATA_SR_ERR);
    // A table outside RAM is an error too.
    r.outb(BM, 0);
    r.outb(BM + 2, BM_STATUS_INT | BM_STATUS_ERROR);
    r.ide.write(acc(BM + 4), &0xFFF0_0000u32.to_le_bytes());
    r.cmd28(ATA_CMD_READ_DMA, 0, 1);
    r.outb(BM, BM_CMD_READ | BM_CMD_START);
    r.ide.run_dma(&mut ram);
    assert_eq!(r.inb(BM + 2) & BM_STATUS_ERROR, BM_STATUS_ERROR);
    assert_eq!(r.inb(P + 1), ATA_ER_ABRT);
}

#[test]
fn test_ide_dma_needs_pci_bus_master_and_advertising() {
    let (mut r, mut ram) = dma_rig(sector_disk(8));
    r.ide.write_config(4, &[0x01, 0]); // I/O only
    ram.prd(0x1000, &[(0x2000, PRD_EOT | 512)]);
    r.ide.write(acc(BM + 4), &0x1000u32.to_le_bytes());
    r.cmd28(ATA_CMD_READ_DMA, 1, 1);
    r.outb(BM, BM_CMD_READ | BM_CMD_START);
    r.ide.run_dma(&mut ram);
    assert!(r.ide.dma_pending(), "waits for PCI bus mastering");
    r.ide.write_config(4, &[0x05, 0]);
    r.ide.run_dma(&mut ram);
    assert!(!r.ide.dma_pending());
    assert_eq!(ram.0[0x2001], 1);
    // IDENTIFY: DMA modes only once advertised.
    let identify = |r: &mut Rig| {
        r.outb(P + 7, ATA_CMD_IDENTIFY_DEVICE);
        let b = r.read_block(512);
        move |i: usize| u16::from_le_bytes([b[2 * i], b[2 * i + 1]])
    };
    let w = identify(&mut r);
    assert_eq!((w(49) & (1 << 8), w(63), w(88)), (0, 0, 0));
    r.outb(P + 1, SETFEATURES_XFER);
    r.outb(P + 2, 0x45);
    r.outb(P + 7, ATA_CMD_SET_FEATURES);
    assert_eq!(r.inb(P + 1), ATA_ER_ABRT, "UDMA refused while not advertised");
    r.ide.set_dma_advertised(true);
    let w = identify(&mut r);
    assert_eq!((w(49) & (1 << 8), w(53) & 4, w(63), w(88)), (1 << 8, 4, 0x0007, 0x003F));
    r.outb(P + 1, SETFEATURES_XFER);
    r.outb(P + 2, 0x45);
    r.outb(P + 7, ATA_CMD_SET_FEATURES);
    assert_eq!(r.inb(P + 7), ATA_SR_DRDY | ATA_SR_DSC);
    let w = identify(&mut r);
    assert_eq!((w(63), w(88)), (0x0007, 0x203F), "UDMA 5 selected");
    r.outb(P + 2, 0x22);
    r.outb(P + 7, ATA_CMD_SET_FEATURES);
    let w = identify(&mut r);
    assert_eq!((w(63), w(88)), (0x0407, 0x003F), "MWDMA 2 selected");
}
