//! Whole-VM snapshots (issue 10): save after N instructions, run M more in this process; restore
//! the file in a fresh `ferrovisor` process, run M; the full machine state and the console output
//! must be identical. A run that never saved is a second oracle. Corrupt, truncated and
//! wrong-version files are refused with a clear error.

use base::Persist;
use machine::snapshot::{self, DiskSnapshot};
use machine::{Exit, Machine, MachineConfig};
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "support/mod.rs"]
mod support;
use support::seabios;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferro-snap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ferrovisor(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferrovisor")).args(args).output().expect("run ferrovisor")
}

fn config() -> MachineConfig {
    MachineConfig { ram_bytes: 16 << 20, capture_serial: true, ..Default::default() }
}

/// Runs `m` N instructions, saves to `file` (with `disks` recorded as frozen), runs M more and
/// returns (exit, state, console output after the save).
fn save_and_continue(
    m: &mut Machine,
    n: u64,
    mm: u64,
    file: &Path,
    disk: Option<(&Path, &Path)>,
) -> (Exit, String, Vec<u8>) {
    let e = m.run(Some(n));
    assert_eq!(e, Exit::InstructionLimit, "the guest must still be running at the save point");
    let mut st = m.save();
    if let Some((cur, child)) = disk {
        m.snapshot_disk(0, cur, child).expect("disk delta");
        st.disks.push(DiskSnapshot { index: 0, frozen: cur.to_path_buf() });
    }
    snapshot::write_file(file, &st).expect("write snapshot");
    let before = m.serial_output().len();
    let exit = m.run(Some(mm));
    (exit, serde_json::to_string_pretty(&m.state_json()).unwrap(), m.serial_output()[before..].to_vec())
}

/// Restores `file` in a fresh process, runs M, returns (exit status, state, stdout).
fn restore_in_fresh_process(file: &Path, mm: u64, dir: &Path) -> (i32, String, Vec<u8>) {
    let state = dir.join("restored.json");
    let out = ferrovisor(&[
        "run",
        "-q",
        "--snapshot-load",
        file.to_str().unwrap(),
        "--max-insns",
        &mm.to_string(),
        "--state-out",
        state.to_str().unwrap(),
    ]);
    assert!(out.status.code().is_some(), "killed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&state)
            .unwrap_or_else(|e| panic!("no state written ({e}); stderr: {}", String::from_utf8_lossy(&out.stderr))),
    )
    .unwrap();
    (out.status.code().unwrap(), serde_json::to_string_pretty(&v).unwrap(), out.stdout)
}

fn exit_code(e: Exit) -> i32 {
    match e {
        Exit::ExitDevice(v) => ((v << 1) | 1) as i32,
        Exit::InstructionLimit | Exit::TimeLimit => 10,
        Exit::Halted | Exit::PowerOff => 0,
        Exit::Reset => 8,
        Exit::TripleFault => 6,
        Exit::IdleForever => 12,
    }
}

fn check_rom(name: &str, rom: test_roms::Rom) {
    let dir = tmpdir(name);
    // The whole run, never saved: how long it is, and the reference end state.
    let mut r = Machine::new(config()).unwrap();
    r.load_flat(&rom.image, rom.load_addr, rom.entry).unwrap();
    let full_exit = r.run(Some(50_000_000));
    assert_eq!(full_exit, Exit::ExitDevice(u32::from(test_roms::PASS)), "{name} must pass on its own");
    let total = r.instructions();
    let reference = serde_json::to_string_pretty(&r.state_json()).unwrap();
    // Save in the middle of the interrupt activity.
    let n = total / 2;
    let mm = total; // more than enough: the guest exits first
    let mut m = Machine::new(config()).unwrap();
    m.load_flat(&rom.image, rom.load_addr, rom.entry).unwrap();
    let file = dir.join("mid.fvsnap");
    let (exit, state, console) = save_and_continue(&mut m, n, mm, &file, None);
    assert_eq!(exit, full_exit);
    assert_eq!(state, reference, "{name}: saving changed the run");
    let (code, rstate, rconsole) = restore_in_fresh_process(&file, mm, &dir);
    assert_eq!(code, exit_code(exit), "{name}: exit status after restore");
    assert_eq!(rstate, state, "{name}: state after restore differs");
    assert_eq!(rconsole, console, "{name}: console output after restore differs");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn test_snapshot_continuation_pit_rom_in_fresh_process() {
    check_rom("pit", test_roms::pit_interrupts());
}

#[test]
fn test_snapshot_continuation_apic_rom_in_fresh_process() {
    check_rom("apic", test_roms::apic());
}

/// SeaBIOS booting a VMDK disk: saved mid-POST (timers, interrupts, IDE probing), the disk frozen
/// and the VM moved onto a delta; the restored process continues on its own delta of the frozen
/// disk and prints exactly what the original printed.
#[test]
fn test_snapshot_continuation_seabios_vmdk_boot_in_fresh_process() {
    let Some(bios) = seabios("snapshot: SeaBIOS continuation") else { return };
    let image = std::fs::read(&bios).unwrap();
    let dir = tmpdir("seabios");
    let raw = dir.join("boot.img");
    std::fs::write(&raw, test_roms::boot_disk(4 << 20)).unwrap();
    let disk = dir.join("boot.vmdk");
    let out = ferrovisor(&["disk", "convert", "-q", "-O", "vmdk", raw.to_str().unwrap(), disk.to_str().unwrap()]);
    assert!(out.status.success(), "convert: {}", String::from_utf8_lossy(&out.stderr));
    let cfg = MachineConfig { ram_bytes: 64 << 20, capture_serial: true, ..Default::default() };

    let mut m = Machine::new(cfg.clone()).unwrap();
    m.load_bios(&image).unwrap();
    m.attach_disk_file(0, &disk, false).unwrap();
    let n = 5_000_000;
    let mm = 1_000_000_000;
    let file = dir.join("post.fvsnap");
    let child = dir.join("boot.after.vmdk");
    let (exit, state, console) = save_and_continue(&mut m, n, mm, &file, Some((&disk, &child)));
    assert_eq!(exit, Exit::ExitDevice(u32::from(test_roms::PASS)), "{}", String::from_utf8_lossy(&console));
    let text = String::from_utf8_lossy(&console);
    assert!(text.contains(test_roms::BOOT_MESSAGE_SERIAL), "the boot sector ran after the save:\n{text}");
    // VMware's model: the VM went on with a delta whose parent is the frozen image.
    let info = ferrovisor(&["disk", "info", child.to_str().unwrap()]);
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("boot.vmdk"), "the delta names its parent:\n{info}");

    let (code, rstate, rconsole) = restore_in_fresh_process(&file, mm, &dir);
    assert_eq!(code, exit_code(exit));
    assert_eq!(rconsole, console, "console output after restore differs");
    assert_eq!(rstate, state, "state after restore differs");
    std::fs::remove_dir_all(&dir).ok();
}

/// Reads COM1 by polling LSR.DR; for each byte writes the byte and the low 24 bits of the TSC
/// (instructions retired plus an offset) to COM1, then spins 3000 instructions; exits through
/// the exit port when the byte was a newline. Real mode, loaded at 0x7C00.
const SERIAL_STAMP_GUEST: [u8; 46] = [
    0xBA, 0xFD, 0x03, // 0: mov dx, 0x3fd
    0xEC, // 3: in al, dx
    0xA8, 0x01, // 4: test al, 1
    0x74, 0xFB, // 6: jz 3
    0xBA, 0xF8, 0x03, // 8: mov dx, 0x3f8
    0xEC, // 11: in al, dx
    0xEE, // 12: out dx, al
    0x88, 0xC3, // 13: mov bl, al
    0x0F, 0x31, // 15: rdtsc (EDX:EAX)
    0xBA, 0xF8, 0x03, // 17: mov dx, 0x3f8
    0xEE, // 20: out dx, al
    0x88, 0xE0, // 21: mov al, ah
    0xEE, // 23: out dx, al
    0x66, 0xC1, 0xE8, 0x10, // 24: shr eax, 16
    0xEE, // 28: out dx, al
    0x80, 0xFB, 0x0A, // 29: cmp bl, 0x0a
    0x74, 0x07, // 32: je 41
    0xB9, 0xB8, 0x0B, // 34: mov cx, 3000
    0xE2, 0xFE, // 37: loop 37
    0xEB, 0xD7, // 39: jmp 0
    0x88, 0xD8, // 41: mov al, bl
    0xE6, 0xF4, // 43: out 0xf4, al
    0xF4, // 45: hlt
];

/// The guest's console: (byte, TSC low 24 bits) per byte it read from COM1.
fn stamped_reads(console: &[u8]) -> Vec<(u8, u32)> {
    console.chunks(4).map(|c| (c[0], u32::from_le_bytes([c[1], c[2], c[3], 0]))).collect()
}

/// COM1 input queued for later (part of it stamped after the save point, part of it due but
/// held back because the guest reads slowly) is in the snapshot: the restored process sees
/// the same bytes at the same instruction counts as the run that never stopped.
#[test]
fn test_snapshot_pending_serial_input_arrives_at_the_same_counts_in_fresh_process() {
    let dir = tmpdir("serial");
    let input: [(u64, &[u8]); 3] = [(1_000, b"hello "), (20_000, b"0123456789ABCDEF"), (150_000, b"bye\n")];
    let boot = || {
        let mut m = Machine::new(config()).unwrap();
        m.load_flat(&SERIAL_STAMP_GUEST, 0x7C00, 0x7C00).unwrap();
        for (at, bytes) in input {
            m.queue_serial_input(base::VirtualInstant(at), bytes);
        }
        m
    };
    let n = 40_000; // in the middle of the second chunk, which waits for the guest's reads
    let mm = 10_000_000;
    // The run that never stopped.
    let mut r = boot();
    assert_eq!(r.run(Some(n)), Exit::InstructionLimit);
    let at_save = r.serial_output().len();
    let full_exit = r.run(Some(mm));
    assert_eq!(full_exit, Exit::ExitDevice(u32::from(b'\n')));
    let reads = stamped_reads(&r.serial_output());
    let text: Vec<u8> = reads.iter().map(|r| r.0).collect();
    assert_eq!(text, b"hello 0123456789ABCDEFbye\n", "every byte reached the guest once, in order");
    // TSC = instruction count + a constant offset: 'h' was read just after 1000 (the poll loop
    // is 3 instructions), 'b' no earlier than 150 000.
    let since_first = reads[22].1.wrapping_sub(reads[0].1) & 0xFF_FFFF;
    assert!(since_first >= 150_000 - 1_000 - 20, "'b' came before its stamp: {since_first}");
    let unstopped_after = r.serial_output()[at_save..].to_vec();
    let reference = serde_json::to_string_pretty(&r.state_json()).unwrap();

    let mut m = boot();
    let file = dir.join("serial.fvsnap");
    let (exit, state, console) = save_and_continue(&mut m, n, mm, &file, None);
    assert_eq!(exit, full_exit);
    assert_eq!(console, unstopped_after);
    assert_eq!(state, reference, "saving changed the run");
    let pending = snapshot::read_file(&file).unwrap().board.serial_in;
    assert!(pending.pending.iter().any(|(t, _)| *t == 150_000), "the later chunk is in the file: {pending:?}");
    let (code, rstate, rconsole) = restore_in_fresh_process(&file, mm, &dir);
    assert_eq!(code, exit_code(exit), "exit status after restore");
    let mut whole = r.serial_output()[..at_save].to_vec();
    whole.extend_from_slice(&rconsole);
    assert_eq!(stamped_reads(&whole), reads, "the bytes and the counts they were read at");
    assert_eq!(rstate, state, "state after restore differs");
    std::fs::remove_dir_all(&dir).ok();
}

/// The RAM section skips zero pages and compresses the rest: a 64 MiB guest holding 1 MiB of
/// text and 1 MiB of random bytes is a file of about 1 MiB, zlib (flate2) alone squeezes the
/// text to under 1/10, and the random MiB cannot shrink; restored, the memory is the same.
#[test]
fn test_snapshot_ram_is_sparse_and_compressed() {
    let mut m = Machine::new(MachineConfig { ram_bytes: 64 << 20, ..Default::default() }).unwrap();
    let text: Vec<u8> = b"Ferrovisor snapshot page text. ".iter().copied().cycle().take(1 << 20).collect();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let random: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    m.memory().load(base::GuestPhysAddr(16 << 20), &text).unwrap();
    m.memory().load(base::GuestPhysAddr(40 << 20), &random).unwrap();
    let st = m.save();
    // Two runs of 256 pages (at backing offsets, which need not equal guest addresses).
    let pages: Vec<u64> = st.ram.runs.iter().map(|r| r.1).collect();
    assert_eq!(pages, [256, 256], "only the written pages are kept: {:?}", st.ram.runs);
    assert_eq!(st.ram.pages.len(), 2 << 20);
    let bytes = snapshot::encode(&st);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut z, &text).unwrap();
    let text_z = z.finish().unwrap().len();
    assert!(text_z < (1 << 20) / 10);
    let len = bytes.len();
    assert!(len >= 1 << 20, "random bytes do not compress: {len}");
    assert!(len < (1 << 20) + text_z + (64 << 10), "file of {len} bytes");
    let back = snapshot::decode(&bytes).unwrap();
    let r = Machine::restore(snapshot::RestoreArgs { host: MachineConfig::default(), disks: vec![] }, &back).unwrap();
    assert_eq!(r.state_json(), m.state_json());
}

fn small_snapshot() -> Vec<u8> {
    let rom = test_roms::pit_interrupts();
    let mut m = Machine::new(MachineConfig { ram_bytes: 2 << 20, ..Default::default() }).unwrap();
    m.load_flat(&rom.image, rom.load_addr, rom.entry).unwrap();
    // Mid-run: the ROM takes about 960 instructions (halted time is skipped).
    assert_eq!(m.run(Some(500)), Exit::InstructionLimit);
    snapshot::encode(&m.save())
}

#[test]
fn test_snapshot_every_flipped_byte_and_truncation_is_refused() {
    let good = small_snapshot();
    assert!(snapshot::decode(&good).is_ok());
    // Flip every byte of the headers and a stride through the payloads.
    let step = (good.len() / 4000).max(1);
    for i in (0..good.len()).filter(|&i| i < 256 || i % step == 0 || i + 64 > good.len()) {
        for mask in [0x01u8, 0x80, 0xFF] {
            let mut b = good.clone();
            b[i] ^= mask;
            let e = snapshot::decode(&b).err().unwrap_or_else(|| panic!("flip of byte {i} by {mask:#x} accepted"));
            let msg = e.to_string();
            assert!(
                msg.contains("corrupt")
                    || msg.contains("truncated")
                    || msg.contains("magic")
                    || msg.contains("version"),
                "byte {i}: unclear error: {msg}"
            );
        }
    }
    for len in (0..good.len()).step_by(step).chain([good.len() - 1]) {
        let e = snapshot::decode(&good[..len]).expect_err("truncated file accepted").to_string();
        assert!(e.contains("truncated") || e.contains("corrupt"), "truncated to {len}: {e}");
    }
}

#[test]
fn test_snapshot_wrong_version_and_garbage_refused_by_the_cli() {
    let dir = tmpdir("bad");
    let mut good = small_snapshot();
    let trunc = dir.join("trunc.fvsnap");
    std::fs::write(&trunc, &good[..good.len() / 2]).unwrap();
    // A future major version (header CRC recomputed so only the version is wrong).
    good[8] = 2;
    good[10] = 0;
    let mut crc = flate2::Crc::new();
    crc.update(&good[..16]);
    good[16..20].copy_from_slice(&crc.sum().to_le_bytes());
    let v2 = dir.join("v2.fvsnap");
    std::fs::write(&v2, &good).unwrap();
    let garbage = dir.join("garbage.fvsnap");
    std::fs::write(&garbage, b"this is not a snapshot at all").unwrap();
    for (f, want) in [
        (&v2, "snapshot format version 2.0 is not supported (this build reads 1.x)"),
        (&trunc, "truncated"),
        (&garbage, "bad magic"),
    ] {
        let out = ferrovisor(&["run", "--snapshot-load", f.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "`run` errors exit 4: {err}");
        assert!(err.contains(want), "{f:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Files written by every release of the format (committed: 1.0, the first, and 1.1, which
/// added the NMI latches, x87 selectors, pending serial input) still load and run: a newer
/// release reads today's files. `FERRO_BLESS=1` writes the current version's file (never
/// overwrites an older one).
#[test]
fn test_snapshot_committed_v1_file_still_loads() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let current = data.join(format!("pit-v{}.{}.fvsnap", snapshot::FORMAT_MAJOR, snapshot::FORMAT_MINOR));
    if std::env::var_os("FERRO_BLESS").is_some() {
        std::fs::write(&current, small_snapshot()).unwrap();
    }
    assert!(current.exists(), "commit a file of the current format: FERRO_BLESS=1 writes {current:?}");
    for name in ["pit-v1.0.fvsnap", "pit-v1.1.fvsnap"] {
        let f = data.join(name);
        let out = ferrovisor(&["run", "-q", "--snapshot-load", f.to_str().unwrap(), "--max-insns", "50000000"]);
        assert_eq!(
            out.status.code(),
            Some(i32::from(test_roms::PASS) << 1 | 1),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Times a snapshot of `m` (state capture, encode + write + fsync) and its restore (read,
/// check, decode, rebuild), checks the restored state, and prints the figures.
fn measure(label: &str, m: &Machine, dir: &Path) {
    use std::time::Instant;
    let f = dir.join("measure.fvsnap");
    let t = Instant::now();
    let st = m.save();
    let capture = t.elapsed();
    snapshot::write_file(&f, &st).unwrap();
    let save = t.elapsed();
    let size = std::fs::metadata(&f).unwrap().len();
    let nonzero = st.ram.pages.len();
    drop(st);
    let t = Instant::now();
    let st = snapshot::read_file(&f).unwrap();
    let r = Machine::restore(snapshot::RestoreArgs { host: MachineConfig::default(), disks: vec![] }, &st).unwrap();
    let restore = t.elapsed();
    assert_eq!(r.state_json(), m.state_json());
    eprintln!(
        "{label}: {:.1} MiB of non-zero pages; save {:.3} s (state capture {:.3} s, the rest encode + write + \
         fsync), file {size} bytes ({:.1} MiB), restore {:.3} s (read + check + decode + rebuild)",
        nonzero as f64 / (1 << 20) as f64,
        save.as_secs_f64(),
        capture.as_secs_f64(),
        size as f64 / (1 << 20) as f64,
        restore.as_secs_f64()
    );
}

/// Measurement (not run by default): snapshot and restore of a 256 MiB guest whose RAM is all
/// pseudo-random bytes (the worst case: nothing is zero, nothing compresses).
/// `cargo test --release --test snapshot measure_ -- --ignored --nocapture`
#[test]
#[ignore]
fn measure_snapshot_256mib_random_ram() {
    let dir = tmpdir("measure");
    let mut m = Machine::new(MachineConfig { ram_bytes: 256 << 20, ..Default::default() }).unwrap();
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = vec![0u8; 1 << 20];
    for mib in 0..255u64 {
        for w in buf.chunks_mut(8) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            w.copy_from_slice(&s.to_le_bytes());
        }
        let _ = m.memory().load(base::GuestPhysAddr((mib + 1) << 20), &buf);
    }
    measure("256 MiB guest, 255 MiB random RAM", &m, &dir);
    std::fs::remove_dir_all(&dir).ok();
}

/// Measurement (not run by default): a realistic, mostly-zero 256 MiB guest: Debian's Linux
/// booted to its busybox user space and powered off, saved by the CLI first:
/// `ferrovisor run -m 256M --kernel target/guest-cache/linux/vmlinux --initrd
/// target/guest-cache/linux/initramfs.cpio.gz --append "console=ttyS0 nokaslr"
/// --max-insns 30000000000 --snapshot-save /tmp/linux256.fvsnap`, then
/// `FERRO_MEASURE_SNAPSHOT=/tmp/linux256.fvsnap cargo test --release --test snapshot measure_ --
/// --ignored --nocapture`.
#[test]
#[ignore]
fn measure_snapshot_256mib_linux_guest() {
    let Some(f) = std::env::var_os("FERRO_MEASURE_SNAPSHOT") else {
        eprintln!("FERRO_MEASURE_SNAPSHOT is not set: no Linux guest snapshot to measure");
        return;
    };
    let dir = tmpdir("measure-linux");
    let st = snapshot::read_file(Path::new(&f)).unwrap();
    let m = Machine::restore(snapshot::RestoreArgs { host: MachineConfig::default(), disks: vec![] }, &st).unwrap();
    measure("256 MiB guest, Linux booted to user space", &m, &dir);
    std::fs::remove_dir_all(&dir).ok();
}

/// A VM restored with `run --snapshot-load` takes COM1 input from standard input, as a booted
/// one does: a guest saved while polling for a byte gets the one typed after the restore.
#[test]
fn test_snapshot_restored_vm_reads_standard_input() {
    use std::io::Write;
    let dir = tmpdir("stdin");
    // Polls LSR.DR, reads RBR, writes the byte to the exit port.
    let echo = dir.join("echo.bin");
    std::fs::write(&echo, [0xBA, 0xFD, 0x03, 0xEC, 0xA8, 0x01, 0x74, 0xFB, 0xBA, 0xF8, 0x03, 0xEC, 0xE6, 0xF4, 0xF4])
        .unwrap();
    let file = dir.join("polling.fvsnap");
    let out = ferrovisor(&[
        "run",
        "-q",
        "--flat",
        echo.to_str().unwrap(),
        "--max-insns",
        "1000",
        "--snapshot-save",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(10), "{}", String::from_utf8_lossy(&out.stderr));
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrovisor"))
        .args(["run", "-q", "--max-insns", "1000000000", "--snapshot-load"])
        .arg(&file)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"Z").unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(i32::from(b'Z') << 1 | 1), "the restored guest read the byte");
    std::fs::remove_dir_all(&dir).ok();
}
