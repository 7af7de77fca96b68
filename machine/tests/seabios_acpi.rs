//! Debian's SeaBIOS installs Ferrovisor's ACPI tables from fw_cfg (`etc/table-loader`), as it
//! does QEMU's, and the PIIX4 power management function it finds at 00:01.3 works. The BIOS is
//! fetched as in seabios.rs; outside CI the test skips, saying so, when that is impossible.

use machine::{Exit, Machine, MachineConfig};

#[path = "../../tests/support/mod.rs"]
mod support;
use support::seabios;

/// A guest-memory checksum over `len` bytes at `addr`.
fn sum(m: &mut Machine, addr: u64, len: usize) -> u8 {
    let mut b = vec![0u8; len];
    m.memory().read(base::GuestPhysAddr(addr), &mut b).expect("read");
    b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
}

fn rd(m: &mut Machine, addr: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    m.memory().read(base::GuestPhysAddr(addr), &mut b).expect("read");
    b
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

#[test]
fn test_seabios_installs_acpi_tables() {
    let Some(path) = seabios("machine/tests/seabios_acpi.rs") else { return };
    let image = std::fs::read(&path).expect("read bios.bin");
    let mut m = Machine::new(MachineConfig { ram_bytes: 128 << 20, capture_serial: true, ..Default::default() })
        .expect("machine");
    m.load_bios(&image).expect("load bios");
    let exit = m.run(Some(150_000_000));
    let log = String::from_utf8_lossy(&m.firmware_log()).into_owned();
    assert_ne!(exit, Exit::TripleFault, "log:\n{log}");
    assert!(log.contains("Found 4 PCI devices"), "PIIX4 PM not found at 00:01.3; log:\n{log}");
    assert!(log.contains("Moving pm_base to 0x600"), "log:\n{log}");
    // SeaBIOS (built with debug level 1) runs the loader silently and complains only on
    // failure.
    assert!(!log.contains("internal error"), "log:\n{log}");
    // Find the RSDP where an OS does: a 16-byte aligned "RSD PTR " in 0xE0000-0xFFFFF.
    let bios_area = rd(&mut m, 0xE0000, 0x20000);
    let off = (0..bios_area.len()).step_by(16).find(|&o| bios_area[o..].starts_with(b"RSD PTR ")).expect("RSDP");
    let rsdp_addr = 0xE0000 + off as u64;
    assert_eq!(sum(&mut m, rsdp_addr, 20), 0, "RSDP checksum");
    assert_eq!(sum(&mut m, rsdp_addr, 36), 0, "RSDP extended checksum");
    let rsdp = rd(&mut m, rsdp_addr, 36);
    assert_eq!(&rsdp[9..15], b"FERRO ", "the RSDP is Ferrovisor's, not one SeaBIOS built");
    let rsdt_addr = u64::from(u32_at(&rsdp, 16));
    let rsdt = rd(&mut m, rsdt_addr, 36);
    assert_eq!(&rsdt[..4], b"RSDT");
    let rsdt_len = u32_at(&rsdt, 4) as usize;
    assert_eq!(sum(&mut m, rsdt_addr, rsdt_len), 0, "RSDT checksum");
    let rsdt = rd(&mut m, rsdt_addr, rsdt_len);
    let mut sigs = Vec::new();
    for e in (36..rsdt_len).step_by(4) {
        let a = u64::from(u32_at(&rsdt, e));
        let h = rd(&mut m, a, 36);
        let len = u32_at(&h, 4) as usize;
        assert_eq!(sum(&mut m, a, len), 0, "{} checksum", String::from_utf8_lossy(&h[..4]));
        sigs.push(String::from_utf8_lossy(&h[..4]).into_owned());
        if &h[..4] == b"FACP" {
            let f = rd(&mut m, a, len);
            let dsdt = u64::from(u32_at(&f, 40));
            let d = rd(&mut m, dsdt, 36);
            assert_eq!(&d[..4], b"DSDT");
            assert_eq!(sum(&mut m, dsdt, u32_at(&d, 4) as usize), 0, "DSDT checksum");
            let facs = rd(&mut m, u64::from(u32_at(&f, 36)), 4);
            assert_eq!(&facs, b"FACS");
        }
    }
    assert_eq!(sigs, ["FACP", "APIC"]);
}

/// SeaBIOS's own virtio-blk driver (virtio 1.x over the I/O BAR capabilities) finds the disk
/// at 00:03.0 and boots its MBR, which runs to its end.
#[test]
fn test_seabios_boots_virtio_disk() {
    let Some(path) = seabios("machine/tests/seabios_acpi.rs") else { return };
    let image = std::fs::read(&path).expect("read bios.bin");
    let mut m = Machine::new(MachineConfig { ram_bytes: 128 << 20, capture_serial: true, ..Default::default() })
        .expect("machine");
    m.load_bios(&image).expect("load bios");
    let disk = test_roms::boot_disk(4 << 20);
    m.attach_virtio_disk(Box::new(devices::MemBackend::new(disk))).expect("attach disk");
    let exit = m.run(Some(1_000_000_000));
    let log = String::from_utf8_lossy(&m.firmware_log()).into_owned();
    let out = String::from_utf8_lossy(&m.serial_output()).into_owned();
    assert!(log.contains("found virtio-blk at 00:03.0"), "SeaBIOS did not find the disk; exit {exit:?}; log:\n{log}");
    assert!(out.contains(test_roms::BOOT_MESSAGE_SERIAL), "boot sector did not run; exit {exit:?}; log:\n{log}");
    assert_eq!(exit, Exit::ExitDevice(u32::from(test_roms::PASS)), "output:\n{out}\nlog:\n{log}");
}
