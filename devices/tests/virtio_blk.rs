//! virtio-blk driven as Linux's virtio_pci_modern and virtio_blk drive it (virtio 1.2,
//! sections 2.7 split virtqueues, 3.1 device initialisation, 4.1.4 PCI capabilities, 5.2
//! block device): the structures are laid out here from the specification, and the data is
//! checked against the backing file through the host's file API.

use base::VirtualInstant;
use devices::dma::{DmaFault, DmaMemory};
use devices::pci::PciFunction;
use devices::{Access, PioDevice, RawFileBackend, RecordingIrq, VirtioBlk};
use std::io::{Read, Seek, SeekFrom, Write};

/// Guest RAM for the test: 1 MiB at physical 0.
struct Ram(Vec<u8>);

impl DmaMemory for Ram {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let a = usize::try_from(addr).map_err(|_| DmaFault { addr })?;
        let s = self.0.get(a..a.checked_add(buf.len()).ok_or(DmaFault { addr })?).ok_or(DmaFault { addr })?;
        buf.copy_from_slice(s);
        Ok(())
    }
    fn write(&mut self, addr: u64, buf: &[u8]) -> Result<(), DmaFault> {
        let a = usize::try_from(addr).map_err(|_| DmaFault { addr })?;
        let s = self.0.get_mut(a..a.checked_add(buf.len()).ok_or(DmaFault { addr })?).ok_or(DmaFault { addr })?;
        s.copy_from_slice(buf);
        Ok(())
    }
}

const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const BUF: u64 = 0x10000;
const IO: u16 = 0xC000;

struct Rig {
    dev: VirtioBlk<RecordingIrq>,
    irq: RecordingIrq,
    ram: Ram,
    file: std::fs::File,
    path: std::path::PathBuf,
    /// Offsets of the structures found through the capability list.
    common: u64,
    isr: u64,
    device: u64,
    notify: u64,
    qsize: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn cfg_read(d: &mut VirtioBlk<RecordingIrq>, off: u8, n: usize) -> u32 {
    let mut b = [0u8; 4];
    d.read_config(off, &mut b[..n]);
    u32::from_le_bytes(b)
}

impl Rig {
    fn io_read(&mut self, off: u64, n: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.read(Access { offset: off, addr: u64::from(IO) + off, now: VirtualInstant(0) }, &mut b[..n]);
        u64::from_le_bytes(b)
    }
    fn io_write(&mut self, off: u64, n: usize, v: u64) {
        self.dev
            .write(Access { offset: off, addr: u64::from(IO) + off, now: VirtualInstant(0) }, &v.to_le_bytes()[..n]);
    }

    /// The PCI side as the kernel's PCI core and virtio_pci_modern see it.
    fn new(disk: &[u8], read_only: bool) -> Rig {
        let path = std::env::temp_dir().join(format!(
            "ferro-virtio-{}-{:?}.img",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(disk).unwrap();
        drop(f);
        let file = std::fs::OpenOptions::new().read(true).write(!read_only).open(&path).unwrap();
        let backend = RawFileBackend::new(file.try_clone().unwrap(), read_only).unwrap();
        let irq = RecordingIrq::new();
        let mut dev = VirtioBlk::new(irq.clone(), Box::new(backend));
        assert_eq!(cfg_read(&mut dev, 0, 4), 0x1042_1AF4, "virtio 1.x block device ID");
        assert_eq!(cfg_read(&mut dev, 0x3D, 1), 1, "INTA#");
        assert_ne!(cfg_read(&mut dev, 6, 2) & 0x10, 0, "capability list");
        // BAR0 sizing and placement.
        dev.write_config(0x10, &u32::MAX.to_le_bytes());
        let size = !(cfg_read(&mut dev, 0x10, 4) & !3) + 1;
        assert!(size >= 0x100 && cfg_read(&mut dev, 0x10, 4) & 1 == 1, "I/O BAR of {size:#x}");
        dev.write_config(0x10, &u32::from(IO).to_le_bytes());
        dev.write_config(4, &[0x05, 0]); // I/O + bus master
        assert_eq!(dev.io_base(), Some(IO));
        let mut r = Rig {
            dev,
            irq,
            ram: Ram(vec![0; 1 << 20]),
            file,
            path,
            common: u64::MAX,
            isr: u64::MAX,
            device: u64::MAX,
            notify: u64::MAX,
            qsize: 0,
            avail_idx: 0,
            used_seen: 0,
        };
        // Walk the vendor capabilities (struct virtio_pci_cap).
        let mut p = cfg_read(&mut r.dev, 0x34, 1) as u8;
        let mut seen = 0;
        while p != 0 && seen < 48 {
            seen += 1;
            let id = cfg_read(&mut r.dev, p, 1);
            let next = cfg_read(&mut r.dev, p + 1, 1) as u8;
            if id == 0x09 {
                let cfg_type = cfg_read(&mut r.dev, p + 3, 1);
                assert_eq!(cfg_read(&mut r.dev, p + 4, 1), 0, "BAR 0");
                let off = u64::from(cfg_read(&mut r.dev, p + 8, 4));
                let len = cfg_read(&mut r.dev, p + 12, 4);
                match cfg_type {
                    1 => (r.common, _) = (off, assert!(len >= 0x38)),
                    2 => {
                        r.notify = off;
                        assert!(len >= 2);
                        assert_eq!(cfg_read(&mut r.dev, p + 2, 1), 20, "notify cap length");
                    }
                    3 => r.isr = off,
                    4 => r.device = off,
                    _ => {}
                }
            }
            p = next;
        }
        assert!(r.common != u64::MAX && r.isr != u64::MAX && r.notify != u64::MAX && r.device != u64::MAX);
        r
    }

    /// virtio_dev_probe + virtio_pci_modern's find_vqs: reset, ACKNOWLEDGE, DRIVER, features,
    /// FEATURES_OK, queue 0 setup, DRIVER_OK. Returns the device's features.
    fn init(&mut self, accept: u64) -> u64 {
        let c = self.common;
        self.io_write(c + 0x14, 1, 0);
        assert_eq!(self.io_read(c + 0x14, 1), 0);
        self.io_write(c + 0x14, 1, 1);
        self.io_write(c + 0x14, 1, 3);
        self.io_write(c, 4, 0);
        let lo = self.io_read(c + 4, 4);
        self.io_write(c, 4, 1);
        let hi = self.io_read(c + 4, 4);
        let features = lo | hi << 32;
        let want = features & accept;
        self.io_write(c + 8, 4, 0);
        self.io_write(c + 0xC, 4, want & 0xFFFF_FFFF);
        self.io_write(c + 8, 4, 1);
        self.io_write(c + 0xC, 4, want >> 32);
        self.io_write(c + 0x14, 1, 0xB);
        if self.io_read(c + 0x14, 1) & 8 == 0 {
            return features;
        }
        assert_eq!(self.io_read(c + 0x12, 2), 1, "num_queues");
        self.io_write(c + 0x16, 2, 0);
        self.qsize = self.io_read(c + 0x18, 2) as u16;
        assert!(self.qsize.is_power_of_two() && self.qsize >= 4);
        self.io_write(c + 0x18, 2, 16);
        self.qsize = 16;
        assert_eq!(self.io_read(c + 0x1E, 2), 0, "queue_notify_off");
        for (off, v) in [(0x20, DESC), (0x28, AVAIL), (0x30, USED)] {
            self.io_write(c + off, 4, v & 0xFFFF_FFFF);
            self.io_write(c + off + 4, 4, v >> 32);
        }
        self.io_write(c + 0x1C, 2, 1);
        self.io_write(c + 0x14, 1, 0xF);
        features
    }

    /// Queues one request: a header descriptor, data descriptors, a status descriptor. Returns
    /// (status, used length) after the device ran.
    fn request(&mut self, kind: u32, sector: u64, data: &[(u64, u32, bool)]) -> (u8, u32) {
        let head = (self.avail_idx * 4) % self.qsize;
        let hdr = BUF - 0x100;
        let status = BUF - 0x10;
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.ram.write(hdr, &h).unwrap();
        self.ram.write(status, &[0xEE]).unwrap();
        let mut descs = vec![(hdr, 16u32, false)];
        descs.extend_from_slice(data);
        descs.push((status, 1, true));
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % self.qsize;
            let last = i + 1 == descs.len();
            let flags = if last { 0 } else { 1 } | if write { 2 } else { 0 };
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&(flags as u16).to_le_bytes());
            d[14..16].copy_from_slice(&((idx + 1) % self.qsize).to_le_bytes());
            self.ram.write(DESC + 16 * u64::from(idx), &d).unwrap();
        }
        let slot = u64::from(self.avail_idx % self.qsize);
        self.ram.write(AVAIL + 4 + 2 * slot, &head.to_le_bytes()).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.ram.write(AVAIL + 2, &self.avail_idx.to_le_bytes()).unwrap();
        self.io_write(self.notify, 2, 0);
        assert!(self.dev.pending());
        self.dev.run(&mut self.ram);
        assert!(self.irq.level(), "queue interrupt");
        assert_eq!(self.io_read(self.isr, 1), 1, "ISR: queue interrupt");
        assert!(!self.irq.level(), "reading the ISR deasserts INTx");
        let mut u = [0u8; 4];
        self.ram.read(USED + 2, &mut u[..2]).unwrap();
        self.used_seen = self.used_seen.wrapping_add(1);
        assert_eq!(u16::from_le_bytes([u[0], u[1]]), self.used_seen);
        let mut e = [0u8; 8];
        self.ram.read(USED + 4 + 8 * u64::from((self.used_seen - 1) % self.qsize), &mut e).unwrap();
        assert_eq!(u32::from_le_bytes(e[..4].try_into().unwrap()), u32::from(head), "used id is the head");
        let mut s = [0u8];
        self.ram.read(status, &mut s).unwrap();
        (s[0], u32::from_le_bytes(e[4..].try_into().unwrap()))
    }

    fn file_bytes(&mut self, off: u64, n: usize) -> Vec<u8> {
        let mut f = std::fs::File::open(&self.path).unwrap();
        f.seek(SeekFrom::Start(off)).unwrap();
        let mut b = vec![0; n];
        f.read_exact(&mut b).unwrap();
        b
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8).collect()
}

#[test]
fn test_virtio_blk_linux_style_session() {
    let disk = pattern(1 << 20, 7);
    let mut r = Rig::new(&disk, false);
    let features = r.init(u64::MAX);
    assert_ne!(features & (1 << 32), 0, "VERSION_1");
    assert_ne!(features & (1 << 9), 0, "FLUSH");
    assert_eq!(features & (1 << 5), 0, "not read-only");
    assert_eq!(r.io_read(r.common + 0x14, 1), 0xF, "DRIVER_OK with FEATURES_OK");
    // struct virtio_blk_config: capacity in 512-byte sectors, seg_max, blk_size.
    let d = r.device;
    assert_eq!(r.io_read(d, 4) | r.io_read(d + 4, 4) << 32, 2048);
    assert!(r.io_read(d + 0x0C, 4) >= 1);
    assert_eq!(r.io_read(d + 0x14, 4), 512);

    // GET_ID: 20 bytes.
    let (st, used) = r.request(8, 0, &[(BUF, 20, true)]);
    assert_eq!(st, 0);
    assert_eq!(used, 21);
    let mut id = [0u8; 20];
    r.ram.read(BUF, &mut id).unwrap();
    assert!(id.starts_with(b"FERROVISOR"));

    // IN: sectors 3..7 into two buffers.
    let (st, used) = r.request(0, 3, &[(BUF, 1024, true), (BUF + 0x8000, 1024, true)]);
    assert_eq!((st, used), (0, 2049));
    let mut got = vec![0u8; 2048];
    r.ram.read(BUF, &mut got[..1024]).unwrap();
    r.ram.read(BUF + 0x8000, &mut got[1024..]).unwrap();
    assert_eq!(got, r.file_bytes(3 * 512, 2048));

    // OUT: 3 sectors at sector 100 from two buffers, then FLUSH; the file has them.
    let data = pattern(1536, 99);
    r.ram.write(BUF, &data[..512]).unwrap();
    r.ram.write(BUF + 0x4000, &data[512..]).unwrap();
    let (st, used) = r.request(1, 100, &[(BUF, 512, false), (BUF + 0x4000, 1024, false)]);
    assert_eq!((st, used), (0, 1));
    assert_eq!(r.request(4, 0, &[]), (0, 1));
    assert_eq!(r.file_bytes(100 * 512, 1536), data);

    // Past the end: IOERR; an unknown type: UNSUPP.
    assert_eq!(r.request(0, 2047, &[(BUF, 1024, true)]).0, 1);
    assert_eq!(r.request(0, u64::MAX / 256, &[(BUF, 512, true)]).0, 1);
    assert_eq!(r.request(11, 0, &[(BUF, 16, false)]).0, 2);
    // The ring wraps (queue of 16, four descriptors per request).
    for i in 0..40u64 {
        let (st, _) = r.request(0, i, &[(BUF, 512, true)]);
        assert_eq!(st, 0);
        let mut b = vec![0u8; 512];
        r.ram.read(BUF, &mut b).unwrap();
        assert_eq!(b, r.file_bytes(i * 512, 512));
    }
    drop(r.file.sync_all());
}

#[test]
fn test_virtio_blk_feature_negotiation_and_read_only() {
    let mut r = Rig::new(&[0u8; 4096], true);
    // A legacy-only driver (no VERSION_1) is refused: FEATURES_OK does not stick.
    let f = r.init(!(1u64 << 32));
    assert_ne!(f & (1 << 5), 0, "RO offered for a read-only disk");
    assert_eq!(r.io_read(r.common + 0x14, 1) & 8, 0);
    // Properly negotiated, writes fail with IOERR and leave the file alone.
    r.init(u64::MAX);
    r.ram.write(BUF, &[0xAB; 512]).unwrap();
    assert_eq!(r.request(1, 0, &[(BUF, 512, false)]).0, 1);
    assert_eq!(r.file_bytes(0, 512), vec![0u8; 512]);
}

#[test]
fn test_virtio_blk_hostile_rings_never_hang() {
    let mut r = Rig::new(&pattern(64 << 10, 1), false);
    r.init(u64::MAX);
    // A descriptor chain that loops onto itself.
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&BUF.to_le_bytes());
    d[8..12].copy_from_slice(&16u32.to_le_bytes());
    d[12..14].copy_from_slice(&1u16.to_le_bytes());
    r.ram.write(DESC, &d).unwrap();
    r.ram.write(AVAIL + 4, &0u16.to_le_bytes()).unwrap();
    r.ram.write(AVAIL + 2, &1u16.to_le_bytes()).unwrap();
    r.io_write(r.notify, 2, 0);
    r.dev.run(&mut r.ram);
    assert_ne!(r.io_read(r.common + 0x14, 1) & 0x40, 0, "DEVICE_NEEDS_RESET");
    assert_eq!(r.io_read(r.isr, 1), 2, "configuration interrupt");
    // Reset recovers; random rings and register writes never panic.
    r.avail_idx = 0;
    r.used_seen = 0;
    r.init(u64::MAX);
    let mut x = 0x1234_5678_9ABC_DEF1u64;
    for _ in 0..3000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let addr = [DESC, AVAIL, USED, BUF][(x % 4) as usize] + ((x >> 8) % 64);
        r.ram.write(addr, &(x >> 16).to_le_bytes()).unwrap();
        if x & 0x100 != 0 {
            let off = (x >> 20) % 0x100;
            let n = [1usize, 2, 4][((x >> 30) % 3) as usize];
            if x & 0x200 != 0 {
                r.io_write(off, n, x >> 33);
            } else {
                r.io_read(off, n);
            }
        }
        r.io_write(r.notify, 2, 0);
        r.dev.run(&mut r.ram);
    }
}
