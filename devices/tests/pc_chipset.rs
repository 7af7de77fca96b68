//! The i440FX/PIIX chipset wired the way the machine is expected to wire it, driven through
//! the port bus in the order SeaBIOS's POST touches it. Doubles as a wiring example.

use base::VirtualInstant;
use devices::fw_cfg::{E820Entry, E820_RAM, FW_CFG_FILE_DIR, FW_CFG_SIGNATURE};
use devices::ide::{ATA_CMD_READ_SECTORS, ATA_SR_DRDY, ATA_SR_DSC, BM_STATUS_DMA_CAPABLE};
use devices::pci::PciAddress;
use devices::piix4_pm::PM_IO_SIZE;
use devices::{
    Access, AtaDiskConfig, Bus, FwCfg, FwCfgBuilder, I440fxHost, MemBackend, PciConfigIo, PciFunction, PciRoot,
    Piix3Isa, Piix4Pm, PiixIde, PioDevice, RecordingIrq,
};

/// The PCI functions of bus 0, held by type so the machine can still reach each one.
struct PcPci {
    host: I440fxHost,
    isa: Piix3Isa,
    ide: PiixIde<RecordingIrq>,
    pm: Piix4Pm<RecordingIrq>,
}

impl PciRoot for PcPci {
    fn function_mut(&mut self, a: PciAddress) -> Option<&mut dyn PciFunction> {
        match (a.bus, a.dev, a.func) {
            (0, 0, 0) => Some(&mut self.host),
            (0, 1, 0) => Some(&mut self.isa),
            (0, 1, 1) => Some(&mut self.ide),
            (0, 1, 3) => Some(&mut self.pm),
            _ => None,
        }
    }
}

/// Port-bus handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    Pci,
    Ide,
    Pm,
    FwCfg,
}

struct Board {
    ports: Bus<Port>,
    pci: PciConfigIo<PcPci>,
    fw: FwCfg,
    bm_base: Option<u16>,
    pm_base: Option<u16>,
    now: u64,
    irq14: RecordingIrq,
}

impl Board {
    fn new() -> Self {
        let (irq14, irq15, sci) = (RecordingIrq::new(), RecordingIrq::new(), RecordingIrq::new());
        let mut ide = PiixIde::new(irq14.clone(), irq15);
        let mut disk = vec![0u8; 2048 * 512];
        disk[510] = 0x55;
        disk[511] = 0xAA;
        ide.attach(0, false, Box::new(MemBackend::new(disk)), AtaDiskConfig::default()).unwrap();
        let root = PcPci { host: I440fxHost::new(), isa: Piix3Isa::new(), ide, pm: Piix4Pm::new(sci) };
        let fw = FwCfgBuilder::new()
            .ram_size(64 << 20)
            .e820(&[E820Entry { addr: 0, len: 64 << 20, kind: E820_RAM }])
            .build()
            .unwrap();
        let mut ports = Bus::new();
        ports.insert(0xCF8, 8, Port::Pci).unwrap();
        for (base, len) in [(0x1F0, 8), (0x3F6, 1), (0x170, 8), (0x376, 1)] {
            ports.insert(base, len, Port::Ide).unwrap();
        }
        ports.insert(0xAFE0, 4, Port::Pm).unwrap();
        ports.insert(0xB2, 2, Port::Pm).unwrap();
        ports.insert(0x510, 2, Port::FwCfg).unwrap();
        Board { ports, pci: PciConfigIo::new(root), fw, bm_base: None, pm_base: None, now: 0, irq14 }
    }

    /// After a PCI configuration write: follow BAR4 and PMBA (what the machine must do).
    fn remap(&mut self) {
        let bm = self.pci.root().ide.bus_master_base();
        if bm != self.bm_base {
            if let Some(old) = self.bm_base.take() {
                self.ports.remove(u64::from(old));
            }
            if let Some(new) = bm {
                self.ports.insert(u64::from(new), 16, Port::Ide).unwrap();
            }
            self.bm_base = bm;
        }
        let pm = self.pci.root().pm.pm_io_base();
        if pm != self.pm_base {
            if let Some(old) = self.pm_base.take() {
                self.ports.remove(u64::from(old));
            }
            if let Some(new) = pm {
                self.ports.insert(u64::from(new), u64::from(PM_IO_SIZE), Port::Pm).unwrap();
            }
            self.pm_base = pm;
        }
    }

    fn dispatch(&mut self, port: u16, data: &mut [u8], write: bool) {
        self.now += 1000; // a microsecond per port access
        let Some((&handle, offset)) = self.ports.lookup(u64::from(port), data.len() as u64) else {
            if !write {
                data.fill(0xFF);
            }
            return;
        };
        let access = Access { offset, addr: u64::from(port), now: VirtualInstant(self.now) };
        let dev: &mut dyn PioDevice = match handle {
            Port::Pci => &mut self.pci,
            Port::Ide => &mut self.pci.root_mut().ide,
            Port::Pm => &mut self.pci.root_mut().pm,
            Port::FwCfg => &mut self.fw,
        };
        if write {
            dev.write(access, data);
        } else {
            dev.read(access, data);
        }
        if write && handle == Port::Pci {
            self.remap();
        }
    }

    fn inb(&mut self, port: u16) -> u8 {
        let mut d = [0];
        self.dispatch(port, &mut d, false);
        d[0]
    }
    fn inw(&mut self, port: u16) -> u16 {
        let mut d = [0; 2];
        self.dispatch(port, &mut d, false);
        u16::from_le_bytes(d)
    }
    fn inl(&mut self, port: u16) -> u32 {
        let mut d = [0; 4];
        self.dispatch(port, &mut d, false);
        u32::from_le_bytes(d)
    }
    fn outb(&mut self, port: u16, v: u8) {
        self.dispatch(port, &mut [v], true);
    }
    fn outw(&mut self, port: u16, v: u16) {
        self.dispatch(port, &mut v.to_le_bytes(), true);
    }
    fn outl(&mut self, port: u16, v: u32) {
        self.dispatch(port, &mut v.to_le_bytes(), true);
    }

    fn cfg_addr(bdf: u16, reg: u8) -> u32 {
        0x8000_0000 | u32::from(bdf) << 8 | u32::from(reg & 0xFC)
    }
    fn cfg_readl(&mut self, bdf: u16, reg: u8) -> u32 {
        self.outl(0xCF8, Self::cfg_addr(bdf, reg));
        self.inl(0xCFC)
    }
    fn cfg_readw(&mut self, bdf: u16, reg: u8) -> u16 {
        self.outl(0xCF8, Self::cfg_addr(bdf, reg));
        self.inw(0xCFC + u16::from(reg & 2))
    }
    fn cfg_readb(&mut self, bdf: u16, reg: u8) -> u8 {
        self.outl(0xCF8, Self::cfg_addr(bdf, reg));
        self.inb(0xCFC + u16::from(reg & 3))
    }
    fn cfg_writel(&mut self, bdf: u16, reg: u8, v: u32) {
        self.outl(0xCF8, Self::cfg_addr(bdf, reg));
        self.outl(0xCFC, v);
    }
    fn cfg_writew(&mut self, bdf: u16, reg: u8, v: u16) {
        self.outl(0xCF8, Self::cfg_addr(bdf, reg));
        self.outw(0xCFC + u16::from(reg & 2), v);
    }
    fn cfg_writeb(&mut self, bdf: u16, reg: u8, v: u8) {
        self.outl(0xCF8, Self::cfg_addr(bdf, reg));
        self.outb(0xCFC + u16::from(reg & 3), v);
    }
}

const IDE_BDF: u16 = 0x09; // 00:01.1
const PM_BDF: u16 = 0x0B; // 00:01.3

#[test]
fn test_pc_chipset_seabios_post_sequence() {
    let mut b = Board::new();

    // foreachbdf: function 0 of every device, the other functions of multi-function ones.
    let mut found = Vec::new();
    for dev in 0..32u16 {
        let hdr = b.cfg_readb(dev << 3, 0x0E);
        let funcs = if b.cfg_readw(dev << 3, 0) == 0xFFFF {
            0
        } else if hdr & 0x80 != 0 {
            8
        } else {
            1
        };
        for f in 0..funcs {
            let id = b.cfg_readl(dev << 3 | f, 0);
            if id & 0xFFFF != 0xFFFF {
                found.push((dev, f, id));
            }
        }
    }
    assert_eq!(found, [(0, 0, 0x1237_8086), (1, 0, 0x7000_8086), (1, 1, 0x7010_8086), (1, 3, 0x7113_8086)]);

    // qemu_detect: QEMU's subsystem IDs on the host bridge.
    assert_eq!(b.cfg_readw(0, 0x2C), 0x1AF4);
    assert_eq!(b.cfg_readw(0, 0x2E), 0x1100);

    // make_bios_writable_intel: dword read-modify-write of 0x58..0x5F.
    let lo = b.cfg_readl(0, 0x58);
    let hi = b.cfg_readl(0, 0x5C);
    assert_eq!((lo >> 8, hi), (0, 0), "PAM0-6 zero at power-on");
    b.cfg_writel(0, 0x58, (lo & 0xFF) | 0x3333_3000);
    b.cfg_writel(0, 0x5C, 0x3333_3333);
    assert!(b.pci.root_mut().host.take_pam_changed());
    assert!(b.pci.root().host.pam_regions().iter().all(|r| r.read_dram && r.write_dram));

    // piix_isa_bridge_setup: PIRQA-D -> 10, 10, 11, 11.
    for (i, irq) in [10u8, 10, 11, 11].into_iter().enumerate() {
        b.cfg_writeb(0x08, 0x60 + i as u8, irq);
    }
    assert_eq!(b.pci.root().isa.pirq_route(3), Some(11));

    // piix_ide_setup and BAR sizing/assignment of BAR4, then command = IO | MEM | SERR.
    b.cfg_writew(IDE_BDF, 0x40, 0x8000);
    b.cfg_writew(IDE_BDF, 0x42, 0x8000);
    let old = b.cfg_readl(IDE_BDF, 0x20);
    assert_eq!(old & 1, 1, "I/O BAR");
    b.cfg_writel(IDE_BDF, 0x20, !0);
    let size = !(b.cfg_readl(IDE_BDF, 0x20) & !3) + 1;
    assert_eq!(size, 16);
    b.cfg_writel(IDE_BDF, 0x20, 0xC040);
    assert_eq!(b.bm_base, None, "not decoded before I/O enable");
    let cmd = b.cfg_readw(IDE_BDF, 0x04);
    b.cfg_writew(IDE_BDF, 0x04, cmd | 0x0103);
    assert_eq!(b.bm_base, Some(0xC040));
    b.outb(0xC042, BM_STATUS_DMA_CAPABLE);
    assert_eq!(b.inb(0xC042), BM_STATUS_DMA_CAPABLE, "bus-master block decoded at BAR4");

    // piix4_pm_setup: SCI line, PMBA 0xB000, PM I/O enable; SMM setup skipped (APMC_EN set).
    b.cfg_writeb(PM_BDF, 0x3C, 9);
    b.cfg_writel(PM_BDF, 0x40, 0xB000 | 1);
    b.cfg_writeb(PM_BDF, 0x80, 0x01);
    assert_ne!(b.cfg_readl(PM_BDF, 0x58) & (1 << 25), 0);
    assert_eq!(b.pm_base, Some(0xB000));
    let t0 = b.inl(0xB008);
    let t1 = b.inl(0xB008);
    assert!(t1 > t0, "the PM timer advances with virtual time ({t0} -> {t1})");

    // fw_cfg.
    b.outw(0x510, FW_CFG_SIGNATURE);
    let sig: Vec<u8> = (0..4).map(|_| b.inb(0x511)).collect();
    assert_eq!(sig, b"QEMU");
    b.outw(0x510, FW_CFG_FILE_DIR);
    assert_eq!((0..4).map(|_| b.inb(0x511)).collect::<Vec<_>>(), [0, 0, 0, 1]);

    // ata_detect: the secondary channel floats, the primary has a disk.
    assert_eq!(b.inb(0x177), 0xFF);
    b.outb(0x1F6, 0xA0);
    b.outb(0x1F2, 0x55);
    b.outb(0x1F3, 0xAA);
    assert_eq!((b.inb(0x1F2), b.inb(0x1F3), b.inb(0x1F6)), (0x55, 0xAA, 0xA0));
    b.outb(0x3F6, 0x0E); // HD15 | nIEN | SRST
    b.outb(0x3F6, 0x0A);
    assert_eq!(b.inb(0x1F7), ATA_SR_DRDY | ATA_SR_DSC);
    // Boot sector through PIO.
    b.outb(0x1F2, 1);
    b.outb(0x1F3, 0);
    b.outb(0x1F4, 0);
    b.outb(0x1F5, 0);
    b.outb(0x1F6, 0xE0);
    b.outb(0x1F7, ATA_CMD_READ_SECTORS);
    let mut sector = Vec::new();
    for _ in 0..256 {
        sector.extend_from_slice(&b.inw(0x1F0).to_le_bytes());
    }
    assert_eq!(&sector[510..], &[0x55, 0xAA]);
    assert_eq!(b.irq14.take_edges(), 0, "nIEN set: no interrupt");

    // Reboot through 0xCF9 as SeaBIOS's qemu_reboot does.
    b.outb(0xCF9, 0x02);
    b.outb(0xCF9, 0x06);
    assert_eq!(b.pci.take_reset_request(), Some(true));
}
