//! A virtio-blk write lands in a VMDK image through the same block backend the IDE disks use
//! (machine::disk::ImageBackend over the vmdk crate), and the image passes `vmdk::check`
//! (the library behind `ferrovisor disk check`) afterwards. The ring is laid out as the virtio
//! 1.2 specification (2.7) says, as in devices/tests/virtio_blk.rs.

use base::VirtualInstant;
use devices::dma::{DmaFault, DmaMemory};
use devices::pci::PciFunction;
use devices::{Access, NoIrq, PioDevice, VirtioBlk};
use machine::disk::ImageBackend;

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

fn out(d: &mut VirtioBlk<NoIrq>, off: u64, v: u64, n: usize) {
    d.write(Access { offset: off, addr: 0xC000 + off, now: VirtualInstant(0) }, &v.to_le_bytes()[..n]);
}

fn inp(d: &mut VirtioBlk<NoIrq>, off: u64, n: usize) -> u64 {
    let mut b = [0u8; 8];
    d.read(Access { offset: off, addr: 0xC000 + off, now: VirtualInstant(0) }, &mut b[..n]);
    u64::from_le_bytes(b)
}

/// One request through descriptors 0.. of a 16-entry queue; returns the status byte.
fn request(d: &mut VirtioBlk<NoIrq>, ram: &mut Ram, n: u16, kind: u32, sector: u64, data: Option<(u32, bool)>) -> u8 {
    let mut hdr = [0u8; 16];
    hdr[..4].copy_from_slice(&kind.to_le_bytes());
    hdr[8..].copy_from_slice(&sector.to_le_bytes());
    ram.write(0x8000, &hdr).unwrap();
    ram.write(0x8100, &[0xFF]).unwrap();
    let mut descs = vec![(0x8000u64, 16u32, 0u16)];
    if let Some((len, write)) = data {
        descs.push((0x10000, len, if write { 2 } else { 0 }));
    }
    descs.push((0x8100, 1, 2));
    for (i, &(addr, len, flags)) in descs.iter().enumerate() {
        let next = i + 1 < descs.len();
        let mut e = [0u8; 16];
        e[..8].copy_from_slice(&addr.to_le_bytes());
        e[8..12].copy_from_slice(&len.to_le_bytes());
        e[12..14].copy_from_slice(&(flags | u16::from(next)).to_le_bytes());
        e[14..16].copy_from_slice(&(i as u16 + 1).to_le_bytes());
        ram.write(0x1000 + 16 * i as u64, &e).unwrap();
    }
    ram.write(0x2000 + 4 + 2 * u64::from(n % 16), &0u16.to_le_bytes()).unwrap();
    ram.write(0x2002, &(n + 1).to_le_bytes()).unwrap();
    out(d, 0xC0, 0, 2);
    d.run(ram);
    let mut used = [0u8; 2];
    ram.read(0x3002, &mut used).unwrap();
    assert_eq!(u16::from_le_bytes(used), n + 1);
    let mut s = [0u8];
    ram.read(0x8100, &mut s).unwrap();
    s[0]
}

#[test]
fn test_virtio_write_reaches_vmdk_and_check_passes() {
    let dir = std::env::temp_dir().join(format!("ferro-virtio-vmdk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("disk.vmdk");
    let _ = std::fs::remove_file(&path);
    vmdk::create(&path, &vmdk::CreateOptions::new(vmdk::Subformat::MonolithicSparse, 8 << 20)).unwrap();
    let data: Vec<u8> = (0..16384u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    {
        let mut d = VirtioBlk::new(NoIrq, Box::new(ImageBackend::open(&path, false).unwrap()));
        d.write_config(0x04, &[0x05, 0x00]);
        let mut ram = Ram(vec![0; 1 << 20]);
        out(&mut d, 0x14, 0, 1);
        out(&mut d, 0x14, 3, 1);
        out(&mut d, 0x08, 1, 4);
        out(&mut d, 0x0C, 1, 4); // VERSION_1
        out(&mut d, 0x08, 0, 4);
        out(&mut d, 0x0C, 1 << 9, 4); // FLUSH
        out(&mut d, 0x14, 0xB, 1);
        assert_eq!(inp(&mut d, 0x14, 1), 0xB);
        out(&mut d, 0x18, 16, 2);
        for (off, v) in [(0x20u64, 0x1000u64), (0x28, 0x2000), (0x30, 0x3000)] {
            out(&mut d, off, v, 4);
            out(&mut d, off + 4, 0, 4);
        }
        out(&mut d, 0x1C, 1, 2);
        out(&mut d, 0x14, 0xF, 1);
        ram.write(0x10000, &data).unwrap();
        assert_eq!(request(&mut d, &mut ram, 0, 1, 3000, Some((data.len() as u32, false))), 0);
        assert_eq!(request(&mut d, &mut ram, 1, 4, 0, None), 0);
        ram.write(0x10000, &vec![0u8; data.len()]).unwrap();
        assert_eq!(request(&mut d, &mut ram, 2, 0, 3000, Some((data.len() as u32, true))), 0);
        let mut back = vec![0u8; data.len()];
        ram.read(0x10000, &mut back).unwrap();
        assert_eq!(back, data);
    }
    let report = vmdk::check(&path, false).unwrap();
    assert!(report.corruptions.is_empty() && report.leaks.is_empty(), "{report:?}");
    let img = vmdk::AnyImage::open(&path, false).unwrap();
    let mut back = vec![0u8; data.len()];
    img.dev().read_at(&mut back, 3000 * 512).unwrap();
    assert_eq!(back, data, "the write is in the VMDK file");
    let _ = std::fs::remove_dir_all(&dir);
}
