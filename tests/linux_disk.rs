//! Debian's stock kernel (6.1) drives Ferrovisor's disks with its own drivers, loaded from the
//! initramfs (scripts/fetch-linux-guest.sh builds initramfs-disk.cpio.gz with ata_piix, sd_mod,
//! virtio_pci, virtio_blk and their dependencies):
//! - what the guest reads (sha256sum of the whole device) equals the host's sha256sum of the
//!   same bytes, through ata_piix with bus-master DMA and through virtio_blk, from raw and VMDK
//!   images (one VMDK made by qemu-img, one by `ferrovisor disk convert`);
//! - what the guest writes reaches the VMDK files: `ferrovisor disk check` and `qemu-img check`
//!   pass on them afterwards, and qemu-img reads back exactly the bytes written;
//! - a kernel panic with `panic=-1` resets the machine: with `--no-reboot` the run ends with
//!   status 8 and a message naming the reset, without it the kernel boots again.
//!
//! The guest kit is fetched into target/guest-cache/linux; in CI that must work, elsewhere the
//! tests skip (and `scripts/test` says so).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

#[path = "support/mod.rs"]
mod support;
use support::report_skip;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The amd64 guest kit with its disk variant, fetched once per test process (the tests run in
/// parallel and must not build it concurrently).
fn guest_kit() -> Option<PathBuf> {
    static KIT: OnceLock<Option<PathBuf>> = OnceLock::new();
    KIT.get_or_init(|| {
        let dir = root().join("target/guest-cache/linux");
        let status = Command::new("bash")
            .arg(root().join("scripts/fetch-linux-guest.sh"))
            .arg(&dir)
            .args(["amd64", "disk"])
            .status();
        if matches!(status, Ok(s) if s.success()) && dir.join("initramfs-disk.cpio.gz").exists() {
            return Some(dir);
        }
        assert!(std::env::var_os("CI").is_none(), "cannot build the Linux guest kit (required in CI)");
        report_skip("tests/linux_disk.rs: cannot build the Linux guest kit from Debian packages");
        None
    })
    .clone()
}

/// A scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferro-linux-disk-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `len` bytes from a seeded xorshift64* generator: data no compressor or allocator shortcut
/// (zero grains, repeated sectors) can fake.
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// The host's sha256 of `path`, by coreutils' sha256sum.
fn host_sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("run sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_owned()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// qemu-img, which CI installs: the oracle that reads the VMDK files back.
fn qemu_img() -> Option<&'static str> {
    let found = Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var_os("CI").is_none(), "qemu-img is missing (required in CI)");
        report_skip("tests/linux_disk.rs: qemu-img is not installed");
    }
    found.then_some("qemu-img")
}

/// What the guest's disk workload writes (see DISK in scripts/fetch-linux-guest.sh): the text
/// of `seq 1 20000` at byte offset 1 MiB.
const WRITE_OFFSET: usize = 1 << 20;
fn written_pattern() -> Vec<u8> {
    (1..=20000).map(|i| format!("{i}\n")).collect::<String>().into_bytes()
}

/// The last `n` lines of `text`, for failure messages.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `D-<tag> <dev> <value>` lines of the console: dev -> value.
fn disk_lines(console: &str, tag: &str) -> Vec<(String, String)> {
    let prefix = format!("D-{tag} ");
    console
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| l.split_once(' ').map(|(d, v)| (d.to_owned(), v.trim().to_owned())))
        .collect()
}

/// One boot, three disks: an IDE master (raw, read), an IDE slave (a monolithicSparse VMDK made
/// by qemu-img: read, then written) and the virtio-blk disk (a monolithicSparse VMDK made by
/// `ferrovisor disk convert`: read, then written).
#[test]
fn test_linux_reads_and_writes_ide_dma_and_virtio_disks() {
    let Some(kit) = guest_kit() else { return };
    let Some(qemu_img) = qemu_img() else { return };
    let dir = scratch("rw");
    const MIB: usize = 1 << 20;
    let (a, b, c) = (data(1, 4 * MIB), data(2, 2 * MIB), data(3, 2 * MIB));
    let (a_raw, b_raw, c_raw) = (dir.join("a.raw"), dir.join("b.raw"), dir.join("c.raw"));
    std::fs::write(&a_raw, &a).unwrap();
    std::fs::write(&b_raw, &b).unwrap();
    std::fs::write(&c_raw, &c).unwrap();
    let want: Vec<String> = [&a_raw, &b_raw, &c_raw].iter().map(|p| host_sha256(p)).collect();
    let (b_vmdk, c_vmdk) = (dir.join("b.vmdk"), dir.join("c.vmdk"));
    run(Command::new(qemu_img)
        .args(["convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicSparse"])
        .args([&b_raw, &b_vmdk]));
    run(Command::new(env!("CARGO_BIN_EXE_ferrovisor"))
        .args(["disk", "convert", "-q", "-O", "vmdk", "-s", "monolithicSparse"])
        .args([&c_raw, &c_vmdk]));

    let out = Command::new(env!("CARGO_BIN_EXE_ferrovisor"))
        .args(["run", "-m", "512M", "--serial", "stdio", "--stats", "--max-insns", "20000000000"])
        .arg("--kernel")
        .arg(kit.join("vmlinux"))
        .arg("--initrd")
        .arg(kit.join("initramfs-disk.cpio.gz"))
        .arg("--disk")
        .arg(&a_raw)
        .arg("--disk")
        .arg(&b_vmdk)
        .arg("--virtio-disk")
        .arg(&c_vmdk)
        .args(["--append", "console=ttyS0 nokaslr ferro.run=disk ferro.disks=sda,sdb,vda ferro.write=sdb,vda"])
        .output()
        .expect("run ferrovisor");
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let t = tail(&console, 60);
    assert_eq!(out.status.code(), Some(0), "the guest powers off; stderr:\n{stderr}\nconsole tail:\n{t}");

    // Reads: the guest's sha256 of each whole device is the host's.
    let got = disk_lines(&console, "SHA256");
    let expected: Vec<(String, String)> =
        ["sda", "sdb", "vda"].iter().zip(&want).map(|(d, s)| (d.to_string(), s.clone())).collect();
    assert_eq!(got, expected, "guest sha256 of sda (IDE raw), sdb (IDE VMDK), vda (virtio VMDK); console tail:\n{t}");

    // ata_piix moved the data by bus-master DMA, not PIO: at least the two IDE disks' bytes
    // went through the bus master (the controller's own count), and no sector data through the
    // data port.
    let ide = stderr.lines().find(|l| l.contains("ide: bus-master DMA read")).expect("--stats prints the IDE line");
    // "ide: bus-master DMA read R bytes, written W bytes; PIO data read r bytes, written w bytes"
    let n: Vec<u64> = ide.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let [dma_read, dma_written, pio_read, pio_written] = n[..] else { panic!("{ide}") };
    assert!(dma_read >= (a.len() + b.len()) as u64, "{ide}");
    assert!(dma_written >= written_pattern().len() as u64, "{ide}");
    assert_eq!((pio_read, pio_written), (0, 0), "{ide}");
    // ... and libata says so: the PIIX3 does multiword DMA (ata_piix: "max MWDMA2").
    let xfer = disk_lines(&console, "XFER");
    for dev in ["1.0", "1.1"] {
        let mode = xfer.iter().find(|(d, _)| d == dev).map(|(_, m)| m.as_str());
        assert_eq!(mode, Some("XFER_MW_DMA_2"), "ATA device {dev}; console tail:\n{t}");
    }

    // Writes: both VMDKs are consistent, and hold exactly the pattern over the original data.
    let pattern = written_pattern();
    assert_eq!(
        disk_lines(&console, "WROTE"),
        vec![("sdb".to_owned(), pattern.len().to_string()), ("vda".to_owned(), pattern.len().to_string())],
        "console tail:\n{t}"
    );
    for (vmdk, original) in [(&b_vmdk, &b), (&c_vmdk, &c)] {
        run(Command::new(env!("CARGO_BIN_EXE_ferrovisor")).args(["disk", "check"]).arg(vmdk));
        run(Command::new(qemu_img).args(["check", "-f", "vmdk"]).arg(vmdk));
        let back = dir.join("back.raw");
        let _ = std::fs::remove_file(&back);
        run(Command::new(qemu_img).args(["convert", "-f", "vmdk", "-O", "raw"]).arg(vmdk).arg(&back));
        let mut expected = original.clone();
        expected[WRITE_OFFSET..WRITE_OFFSET + pattern.len()].copy_from_slice(&pattern);
        let got = std::fs::read(&back).unwrap();
        assert_eq!(got.len(), expected.len(), "{}", vmdk.display());
        let first_diff = got.iter().zip(&expected).position(|(x, y)| x != y);
        assert_eq!(first_diff, None, "{}: differs from the expected bytes at this offset", vmdk.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `panic=-1` makes a panicking kernel reset the machine (through the ACPI reset register).
/// With `--no-reboot` the run ends there with status 8 and a message.
#[test]
fn test_linux_panic_with_no_reboot_ends_the_run() {
    let Some(kit) = guest_kit() else { return };
    let out = Command::new(env!("CARGO_BIN_EXE_ferrovisor"))
        .args(["run", "-m", "512M", "--serial", "stdio", "--no-reboot", "--max-insns", "20000000000"])
        .arg("--kernel")
        .arg(kit.join("vmlinux"))
        .arg("--initrd")
        .arg(kit.join("initramfs.cpio.gz"))
        .args(["--append", "console=ttyS0 nokaslr panic=-1 ferro.run=panic"])
        .output()
        .expect("run ferrovisor");
    let console = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(console.contains("Kernel panic - not syncing: sysrq triggered crash"), "{}", tail(&console, 40));
    assert_eq!(console.matches("Linux version").count(), 1);
    assert_eq!(out.status.code(), Some(8), "stderr: {stderr}");
    assert!(
        stderr.contains("the guest requested a reset through the reset control register 0xCF9")
            && stderr.contains("--no-reboot ends the run"),
        "stderr: {stderr}"
    );
}

/// Without `--no-reboot`, the panic reboots: the kernel, initrd and command line are loaded
/// again and the kernel starts over. The test stops the run once the second boot has begun.
#[test]
fn test_linux_panic_reboots_the_kernel() {
    let Some(kit) = guest_kit() else { return };
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrovisor"))
        .args(["run", "-m", "512M", "--serial", "stdio", "--max-insns", "6000000000"])
        .arg("--kernel")
        .arg(kit.join("vmlinux"))
        .arg("--initrd")
        .arg(kit.join("initramfs.cpio.gz"))
        .args(["--append", "console=ttyS0 nokaslr panic=-1 ferro.run=panic"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run ferrovisor");
    let mut console = String::new();
    let mut boots = 0;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let Ok(line) = line else { break };
        console.push_str(&line);
        console.push('\n');
        if line.contains("Linux version") {
            boots += 1;
        }
        // The second boot got far enough to unpack the initramfs it was given again.
        if boots == 2 && line.contains("Freeing initrd memory") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(console.contains("Kernel panic - not syncing: sysrq triggered crash"), "{}", tail(&console, 40));
    assert_eq!(boots, 2, "{}", tail(&console, 40));
    assert!(
        console.rsplit("Linux version").next().unwrap().contains("Freeing initrd memory"),
        "the second boot did not unpack its initrd:\n{}",
        tail(&console, 40)
    );
}
