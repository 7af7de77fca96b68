//! Debian's stock Linux kernel (linux-image-amd64, 6.1) booted as a PC boots it: SeaBIOS reads
//! the disk's MBR, whose code (syslinux-common's mbr.bin, or GRUB 2's boot.img and core.img)
//! starts a boot loader (SYSLINUX from the active FAT partition, or GRUB), which loads the bzImage
//! and the busybox initramfs with BIOS disk calls and enters the kernel through the Linux boot
//! protocol. The kernel decompresses itself in the guest, finds the ACPI tables that Ferrovisor
//! serves to SeaBIOS through fw_cfg, runs with the LAPIC and the IOAPIC, reaches user space and
//! powers off through ACPI S5.
//!
//! The disks are built from Debian packages by scripts/make-boot-disk.sh (no root, no loop
//! mounts) into target/guest-cache/bootdisk, from the guest kit of scripts/fetch-linux-guest.sh.
//! In CI that must work; elsewhere the tests skip (and `scripts/test` says so).
//!
//! What the console must show comes from the programs that print it, not from Ferrovisor:
//! SYSLINUX's banner and the `SAY` line of syslinux.cfg (GRUB: its `echo`), the `BOOT_IMAGE=` that
//! the boot loader puts on the kernel command line, the initrd size the kernel freed (the file's
//! size in pages), the kernel's ACPI and APIC lines, and /init's marker.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

#[path = "support/mod.rs"]
mod support;
use support::report_skip;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Fails in CI, skips elsewhere: the Debian packages could not be fetched or assembled.
fn unavailable(what: &str) -> Option<PathBuf> {
    assert!(std::env::var_os("CI").is_none(), "{what} (required in CI)");
    report_skip(&format!("tests/linux_bootloader.rs: {what}"));
    None
}

/// The amd64 guest kit (target/guest-cache/linux) and the boot disk built from it
/// (target/guest-cache/bootdisk), made once per test process.
fn kit_and_disk() -> Option<(PathBuf, PathBuf)> {
    static DIRS: OnceLock<Option<(PathBuf, PathBuf)>> = OnceLock::new();
    DIRS.get_or_init(|| {
        let kit = root().join("target/guest-cache/linux");
        let status =
            Command::new("bash").arg(root().join("scripts/fetch-linux-guest.sh")).arg(&kit).arg("amd64").status();
        if !matches!(status, Ok(s) if s.success()) || !kit.join("vmlinuz").exists() {
            unavailable("cannot build the Linux guest kit from Debian packages")?;
        }
        let disk = root().join("target/guest-cache/bootdisk");
        let status = Command::new("bash")
            .arg(root().join("scripts/make-boot-disk.sh"))
            .arg(&disk)
            .arg(&kit)
            .env("FERROVISOR", env!("CARGO_BIN_EXE_ferrovisor"))
            .status();
        if !matches!(status, Ok(s) if s.success()) || !disk.join("boot.vmdk").exists() {
            unavailable("cannot build the boot disks (SYSLINUX, GRUB) from Debian packages")?;
        }
        Some((kit, disk))
    })
    .clone()
}

/// Runs SeaBIOS with `disk` as the primary IDE master for at most `max_insns` instructions.
/// Returns the run's output and its console.
fn run_pc(bios: &Path, disk: &Path, max_insns: &str) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrovisor"))
        .args(["run", "-m", "512M", "--serial", "stdio", "--max-insns", max_insns])
        .arg("--bios")
        .arg(bios)
        .arg("--disk")
        .arg(disk)
        .output()
        .expect("run ferrovisor");
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, console)
}

/// The last 60 lines of `console`, for failure messages.
fn tail(console: &str) -> String {
    let lines: Vec<&str> = console.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// What SYSLINUX prints before it enters the kernel, and the kernel's real-mode setup code
/// running (it probes the BIOS's EDD before it switches to protected mode).
fn assert_syslinux_started_kernel(console: &str) {
    let t = tail(console);
    assert!(console.contains("Booting from Hard Disk"), "SeaBIOS did not boot the disk:\n{t}");
    assert!(console.contains("SYSLINUX 6.04"), "no SYSLINUX banner:\n{t}");
    assert!(console.contains("FERROVISOR-SYSLINUX: booting Linux"), "syslinux.cfg not read:\n{t}");
    assert!(console.contains("Loading /vmlinuz... ok"), "SYSLINUX did not load the kernel:\n{t}");
    assert!(console.contains("Loading /initrd.gz...ok"), "SYSLINUX did not load the initrd:\n{t}");
    assert!(console.contains("Probing EDD"), "the kernel's setup code did not run:\n{t}");
}

/// What a boot to user space with ACPI and both APICs prints, after a boot loader that passed
/// `cmdline` and the kit's initramfs; and the run's end by ACPI power-off (status 0).
fn assert_linux_reached_userspace(kit: &Path, out: &Output, console: &str, cmdline: &str) {
    let t = tail(console);
    let line = console.lines().find(|l| l.contains("] Command line:")).unwrap_or_else(|| panic!("no kernel:\n{t}"));
    assert!(line.ends_with(&format!("Command line: {cmdline}")), "{line}");
    // The kernel got the whole initramfs: it frees the initrd's pages once unpacked.
    let initrd_len = std::fs::metadata(kit.join("initramfs.cpio.gz")).unwrap().len();
    let freed = format!("Freeing initrd memory: {}K", initrd_len.div_ceil(4096) * 4);
    assert!(console.contains(&freed), "expected \"{freed}\":\n{t}");

    // ACPI: the tables reached the kernel through SeaBIOS, and the AML interpreter runs.
    for line in [
        "ACPI: RSDP ",
        "ACPI: XSDT ",
        "ACPI: FACP ",
        "ACPI: DSDT ",
        "ACPI: APIC ",
        "ACPI: Interpreter enabled",
        "ACPI: PM: (supports S0 S5)",
        "ACPI: PCI Root Bridge [PCI0]",
    ] {
        assert!(console.contains(line), "no \"{line}\":\n{t}");
    }
    // The APICs: the MADT's IOAPIC, symmetric I/O mode, and interrupts routed through the IOAPIC.
    for line in [
        "IOAPIC[0]: apic_id",
        "ACPI: Using ACPI (MADT) for SMP configuration information",
        "APIC: Switch to symmetric I/O mode setup",
        "ACPI: Using IOAPIC for interrupt routing",
    ] {
        assert!(console.contains(line), "no \"{line}\":\n{t}");
    }
    for off in ["noapic", "nolapic", "acpi=off", "APIC: disable", "ACPI: Unable"] {
        assert!(!console.contains(off), "found \"{off}\":\n{t}");
    }

    assert!(console.contains("FERROVISOR-USERSPACE-OK"), "no user space:\n{t}");
    assert!(console.contains("ACPI: PM: Preparing to enter system sleep state S5"), "{t}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "poweroff ends the run with 0; stderr: {}\n{t}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SeaBIOS → MBR → SYSLINUX → Linux from a monolithicSparse VMDK, to user space and power-off,
/// with ACPI and both APICs. SYSLINUX enters the kernel's 16-bit setup code.
#[test]
fn test_linux_boots_through_seabios_and_syslinux_from_vmdk() {
    let Some(bios) = support::seabios("tests/linux_bootloader.rs") else { return };
    let Some((kit, disk)) = kit_and_disk() else { return };
    let (out, console) = run_pc(&bios, &disk.join("boot.vmdk"), "20000000000");
    assert_syslinux_started_kernel(&console);
    // SYSLINUX prepends BOOT_IMAGE= to syslinux.cfg's APPEND and appends its INITRD as initrd=.
    let cmdline = "BOOT_IMAGE=/vmlinuz console=ttyS0 nokaslr initrd=/initrd.gz";
    assert_linux_reached_userspace(&kit, &out, &console, cmdline);
}

/// SeaBIOS → GRUB 2 (boot.img in the MBR, core.img behind it) → Linux from a monolithicSparse
/// VMDK, to user space and power-off. GRUB's `linux` enters the kernel at its 32-bit entry with
/// the boot parameters GRUB filled in, so the kernel's 16-bit setup code never runs.
#[test]
fn test_linux_boots_through_seabios_and_grub_from_vmdk() {
    let Some(bios) = support::seabios("tests/linux_bootloader.rs") else { return };
    let Some((kit, disk)) = kit_and_disk() else { return };
    let (out, console) = run_pc(&bios, &disk.join("boot-grub.vmdk"), "20000000000");
    let t = tail(&console);
    assert!(console.contains("Booting from Hard Disk"), "SeaBIOS did not boot the disk:\n{t}");
    assert!(console.contains("FERROVISOR-GRUB: booting Linux"), "GRUB's embedded configuration did not run:\n{t}");
    assert!(!console.contains("error:"), "GRUB reported an error:\n{t}");
    assert!(!console.contains("Probing EDD"), "the kernel's 16-bit setup code ran under GRUB's `linux`:\n{t}");
    // GRUB prepends BOOT_IMAGE= (the kernel's path) to the `linux` line's arguments.
    assert_linux_reached_userspace(&kit, &out, &console, "BOOT_IMAGE=/vmlinuz console=ttyS0 nokaslr");
}

/// The same disk as a raw image, a streamOptimized VMDK and a twoGbMaxExtentSparse VMDK, as far
/// as the disk matters: until SYSLINUX has loaded the kernel and the initrd with BIOS disk calls
/// and entered the kernel's setup code (the kernel itself reads no disk in this boot). That is
/// about 40 million instructions of the full boot's 6 billion; the limit leaves room for a larger
/// initramfs.
#[test]
fn test_syslinux_loads_linux_from_raw_stream_optimized_and_split_disks() {
    let Some(bios) = support::seabios("tests/linux_bootloader.rs") else { return };
    let Some((_, disk)) = kit_and_disk() else { return };
    for image in ["boot.img", "boot-stream.vmdk", "boot-split.vmdk"] {
        let (out, console) = run_pc(&bios, &disk.join(image), "150000000");
        assert_syslinux_started_kernel(&console);
        assert_eq!(
            out.status.code(),
            Some(10),
            "{image}: the run ends at the instruction limit; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
