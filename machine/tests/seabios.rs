//! Debian's SeaBIOS on Ferrovisor. The test fetches the `seabios` package itself
//! (scripts/fetch-seabios.sh); outside CI it skips, saying so, when that is impossible.

use machine::{Exit, Machine, MachineConfig};

#[path = "../../tests/support/mod.rs"]
mod support;
use support::seabios;

#[test]
fn test_seabios_post_banner() {
    let Some(path) = seabios("machine/tests/seabios.rs") else { return };
    let image = std::fs::read(&path).expect("read bios.bin");
    let mut m = Machine::new(MachineConfig { ram_bytes: 128 << 20, capture_serial: true, ..Default::default() })
        .expect("machine");
    m.load_bios(&image).expect("load bios");
    let exit = m.run(Some(300_000_000));
    let log = String::from_utf8_lossy(&m.firmware_log()).into_owned();
    assert!(log.contains("SeaBIOS (version"), "no SeaBIOS banner; exit {exit:?}; log:\n{log}");
    assert!(log.contains("Found QEMU fw_cfg"), "fw_cfg not found; log:\n{log}");
    assert!(
        log.contains("Found 4 PCI devices"),
        "PCI devices not found (i440FX, PIIX3 ISA, IDE, PIIX4 PM); log:\n{log}"
    );
    assert_ne!(exit, Exit::TripleFault, "log:\n{log}");
    // The firmware's console reaches the serial port (fw_cfg etc/sercon-port).
    let out = String::from_utf8_lossy(&m.serial_output()).into_owned();
    assert!(out.contains("SeaBIOS (version"), "no banner on the serial console:\n{out}");
}

#[test]
fn test_seabios_boots_ide_disk() {
    let Some(path) = seabios("machine/tests/seabios.rs") else { return };
    let image = std::fs::read(&path).expect("read bios.bin");
    let mut m = Machine::new(MachineConfig { ram_bytes: 128 << 20, capture_serial: true, ..Default::default() })
        .expect("machine");
    m.load_bios(&image).expect("load bios");
    let disk = test_roms::boot_disk(4 << 20);
    m.attach_disk(0, Box::new(devices::MemBackend::new(disk))).expect("attach disk");
    let exit = m.run(Some(1_000_000_000));
    let log = String::from_utf8_lossy(&m.firmware_log()).into_owned();
    let out = String::from_utf8_lossy(&m.serial_output()).into_owned();
    assert!(log.contains("ata0-0: FERROVISOR HARDDISK"), "SeaBIOS did not find the disk; exit {exit:?}; log:\n{log}");
    assert!(log.contains("Booting from Hard Disk"), "SeaBIOS did not boot the disk; exit {exit:?}; log:\n{log}");
    assert!(out.contains(test_roms::BOOT_MESSAGE_SERIAL), "boot sector did not run; exit {exit:?}; output:\n{out}");
    assert_eq!(exit, Exit::ExitDevice(u32::from(test_roms::PASS)), "output:\n{out}\nlog:\n{log}");
    assert!(out.contains(test_roms::BOOT_MESSAGE_DONE), "output:\n{out}");
    // SeaBIOS's serial console emulates a screen and sends text lazily: the last characters
    // of the INT 10h line may still be in its buffer when the guest exits.
    let int10 = &test_roms::BOOT_MESSAGE_INT10[..test_roms::BOOT_MESSAGE_INT10.len() - 4];
    assert!(out.contains(int10), "INT 10h output did not reach the serial console:\n{out}");
}

#[test]
fn test_seabios_no_disk_waits_then_reboots_idle() {
    let Some(path) = seabios("machine/tests/seabios.rs") else { return };
    let image = std::fs::read(&path).expect("read bios.bin");
    let mut m = Machine::new(MachineConfig {
        ram_bytes: 64 << 20,
        capture_serial: true,
        no_reboot: true,
        ..Default::default()
    })
    .expect("machine");
    m.load_bios(&image).expect("load bios");
    let exit = m.run(Some(200_000_000));
    let log = String::from_utf8_lossy(&m.firmware_log()).into_owned();
    assert_eq!(exit, Exit::Reset, "log:\n{log}");
    assert!(log.contains("No bootable device.  Retrying in 60 seconds."), "log:\n{log}");
    // SeaBIOS slept 60 seconds of guest time in HLT; the machine skipped ahead instead of
    // executing them: far fewer instructions than nanoseconds passed.
    let t = m.virtual_time().0;
    assert!(t >= 60_000_000_000, "virtual time {t} ns");
    assert!(m.instructions() < t / 100, "{} instructions for {t} ns", m.instructions());
}
