//! `ferrovisor run` as a user runs it: the demo with no arguments, and clear errors.

use std::process::Command;

#[path = "support/mod.rs"]
mod support;
use support::seabios;

fn ferrovisor(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferrovisor")).args(args).output().expect("run ferrovisor")
}

#[test]
fn test_cli_run_demo_prints_and_exits_zero() {
    let out = ferrovisor(&["run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.starts_with(test_roms::DEMO_BANNER), "{stdout}");
    assert!(stdout.contains(&test_roms::mandelbrot_reference()), "{stdout}");
    assert!(stdout.contains(&test_roms::primes_reference()), "{stdout}");
    assert!(stderr.contains("guest instructions") && stderr.contains("MIPS"), "{stderr}");
}

/// Issue 9's acceptance: `ferrovisor run` (the JIT) prints exactly what `--engine interp`
/// prints, and both report the same instruction count, followed by their MIPS. The
/// interpreter is the oracle; the RTC is pinned so nothing depends on the host's clock.
#[test]
fn test_cli_run_demo_jit_prints_exactly_what_the_interpreter_prints() {
    let run = |engine: &str| {
        let out = ferrovisor(&["run", "--engine", engine, "--rtc-base", "2026-01-01"]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{engine}: stdout:\n{stdout}\nstderr:\n{stderr}");
        let summary = stderr
            .lines()
            .find(|l| l.contains("guest instructions in") && l.ends_with("MIPS)"))
            .unwrap_or_else(|| panic!("{engine}: no instruction summary in {stderr}"))
            .to_string();
        let count = summary.split_whitespace().nth(1).expect("count").to_string();
        (stdout, count)
    };
    let (interp_out, interp_count) = run("interp");
    let (jit_out, jit_count) = run("jit");
    assert!(interp_out.starts_with(test_roms::DEMO_BANNER), "{interp_out}");
    assert_eq!(jit_out, interp_out, "the JIT's output differs from the interpreter's");
    assert_eq!(jit_count, interp_count, "instruction counts differ");
}

#[test]
fn test_cli_run_exit_port_sets_status() {
    let dir = std::env::temp_dir().join(format!("ferro-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("exit.bin");
    std::fs::write(&img, [0xB0, 0x05, 0xE6, 0xF4]).unwrap(); // mov al, 5; out 0xF4, al
    let out = ferrovisor(&["run", "--flat", img.to_str().unwrap(), "-q"]);
    assert_eq!(out.status.code(), Some((5 << 1) | 1));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn test_cli_run_errors_are_one_clear_line() {
    let out = ferrovisor(&["run", "--flat", "/nonexistent/image.bin"]);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read /nonexistent/image.bin"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let dir = std::env::temp_dir().join(format!("ferro-cli-mb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.elf");
    std::fs::write(&bad, b"not a kernel at all").unwrap();
    let out = ferrovisor(&["run", "--multiboot", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Multiboot"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn test_cli_run_instruction_limit() {
    let out = ferrovisor(&["run", "--max-insns", "1000", "-q"]);
    assert_eq!(out.status.code(), Some(10));
}

/// Issue 11, item 8: Ferrovisor's own outcomes never share a status with a guest's
/// isa-debug-exit value (always odd) or with each other.
#[test]
fn test_issue_11_exit_statuses_are_distinct() {
    let dir = std::env::temp_dir().join(format!("ferro-cli-status-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let code = |args: &[&str]| ferrovisor(args).status.code();
    let exit0 = img("exit0.bin", &[0xB0, 0x00, 0xE6, 0xF4]); // out 0xF4, 0
    let exit1 = img("exit1.bin", &[0xB0, 0x01, 0xE6, 0xF4]); // out 0xF4, 1
    let spin = img("spin.bin", &[0xEB, 0xFE]); // jmp $
    let triple = img("triple.bin", &[0x0F, 0x01, 0x1E, 0x00, 0x7E, 0xCC]); // lidt [0x7e00] (zero); int3
    let mut seen = [
        ("guest wrote 0", code(&["run", "-q", "--flat", &exit0])),
        ("guest wrote 1", code(&["run", "-q", "--flat", &exit1])),
        ("usage error", code(&["run", "--no-such-option"])),
        ("error", code(&["run", "-q", "--flat", "/nonexistent"])),
        ("instruction limit", code(&["run", "-q", "--flat", &spin, "--max-insns", "100"])),
        ("triple fault", code(&["run", "-q", "--flat", &triple])),
    ];
    assert_eq!(seen[0].1, Some(1));
    assert_eq!(seen[1].1, Some(3));
    seen.sort_by_key(|s| s.1);
    for w in seen.windows(2) {
        assert_ne!(w[0].1, w[1].1, "{} and {} share an exit status", w[0].0, w[1].0);
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Issue 11, item 8: options that would be silently ignored, and images that cannot run, are
/// refused with one clear line.
#[test]
fn test_issue_11_ignored_options_and_bad_images_are_refused() {
    let dir = std::env::temp_dir().join(format!("ferro-cli-refuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    let big = dir.join("big.bin");
    std::fs::write(&big, vec![0u8; 1 << 20]).unwrap();
    let disk = dir.join("d.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    for (args, status, needle) in [
        (vec!["run", "--flat", empty.to_str().unwrap()], 4, "image is empty"),
        (vec!["run", "--flat", big.to_str().unwrap(), "--load", "0x10000"], 4, "VGA window"),
        (vec!["run", "--disk", disk.to_str().unwrap()], 4, "--disk needs"),
        (vec!["run", "--read-only"], 2, "--disk"),
        (vec!["run", "--append", "x"], 2, "--kernel"),
        (vec!["run", "-m", "1T"], 4, "out of range"),
        (vec!["run", "-m", "lots"], 2, "not a size"),
    ] {
        let out = ferrovisor(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(status), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        if status == 4 {
            assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
            let first = err.find(needle).unwrap();
            assert!(!err[first + 1..].contains(needle), "{args:?} says it twice: {err}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn test_cli_seabios_boots_a_vmdk_disk() {
    let Some(bios) = seabios("tests/cli_run.rs") else { return };
    let dir = std::env::temp_dir().join(format!("ferro-cli-boot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let raw = dir.join("boot.raw");
    let vmdk = dir.join("boot.vmdk");
    std::fs::write(&raw, test_roms::boot_disk(8 << 20)).unwrap();
    let out = ferrovisor(&["disk", "convert", "-q", "-O", "vmdk", raw.to_str().unwrap(), vmdk.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The boot sector reads its second stage and data through INT 13h and writes one sector.
    let out = ferrovisor(&[
        "run",
        "--bios",
        bios.to_str().unwrap(),
        "--disk",
        vmdk.to_str().unwrap(),
        "--max-insns",
        "2000000000",
        "-q",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some((i32::from(test_roms::PASS) << 1) | 1), "{stdout}");
    assert!(stdout.contains(test_roms::BOOT_MESSAGE_DONE), "{stdout}");
    // The guest's write landed in the VMDK: convert back and compare with the raw image.
    let back = dir.join("back.raw");
    let out = ferrovisor(&["disk", "convert", "-q", "-O", "raw", vmdk.to_str().unwrap(), back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (before, after) = (std::fs::read(&raw).unwrap(), std::fs::read(&back).unwrap());
    assert_eq!(before.len(), after.len());
    let written = 40 * 512; // WRITE_LBA: a copy of the first data sector (LBA 5)
    assert_eq!(&after[written..written + 512], &before[5 * 512..6 * 512]);
    assert_eq!(&after[..written], &before[..written]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn test_cli_run_disk_format_is_honoured_and_checked() {
    let dir = std::env::temp_dir().join(format!("ferro-cli-fmt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("exit.bin");
    std::fs::write(&img, [0xB0, 0x00, 0xE6, 0xF4]).unwrap(); // mov al, 0; out 0xF4, al
    let raw = dir.join("d.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let (img, raw) = (img.to_str().unwrap(), raw.to_str().unwrap());
    // A raw file named as a VMDK is refused with a message naming it.
    let out = ferrovisor(&["run", "-q", "--flat", img, "--disk", raw, "--disk-format", "vmdk"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("d.raw"), "{err}");
    // Named raw, or detected, it opens.
    for fmt in ["raw", "auto"] {
        let out = ferrovisor(&["run", "-q", "--flat", img, "--disk", raw, "--disk-format", fmt]);
        assert_eq!(out.status.code(), Some(1), "{fmt}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = ferrovisor(&["run", "-q", "--flat", img, "--disk-format", "qcow2"]);
    assert_eq!(out.status.code(), Some(2), "an unknown format is a usage error");
    let out = ferrovisor(&["run", "-q", "--flat", img, "--read-only"]);
    assert_ne!(out.status.code(), Some(1), "--read-only without a disk is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--read-only"));
    std::fs::remove_dir_all(&dir).ok();
}

/// `--rtc-base` fixes what the guest's RTC reads: a guest that reads one CMOS register and
/// exits with it sees the date given on the command line, in BCD, whatever the host's clock.
#[test]
fn test_cli_run_rtc_base_fixes_the_guest_clock() {
    let dir = std::env::temp_dir().join(format!("ferro-cli-rtc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let read_cmos = |reg: u8| {
        let img = dir.join(format!("cmos{reg}.bin"));
        // mov al, reg; out 0x70, al; in al, 0x71; out 0xF4, al
        std::fs::write(&img, [0xB0, reg, 0xE6, 0x70, 0xE4, 0x71, 0xE6, 0xF4]).unwrap();
        img
    };
    // 2024-02-29T13:47:38 UTC (a leap day) is 1709214458 seconds after the epoch.
    for base in ["2024-02-29T13:47:38", "1709214458"] {
        for (reg, bcd) in [(0u8, 0x38), (2, 0x47), (4, 0x13), (7, 0x29), (8, 0x02), (9, 0x24)] {
            let img = read_cmos(reg);
            let out = ferrovisor(&["run", "-q", "--flat", img.to_str().unwrap(), "--rtc-base", base]);
            assert_eq!(out.status.code(), Some((bcd << 1) | 1), "{base}: CMOS register {reg}");
        }
    }
    for bad in ["2023-02-29", "2024-13-01", "yesterday", "2024-01-01T25:00:00"] {
        let out = ferrovisor(&["run", "-q", "--rtc-base", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
    }
    // `--stats` names the base, given or the host's time, so that any run can be repeated.
    let img = read_cmos(0);
    let stats_base = |extra: &[&str]| {
        let mut args = vec!["run", "-q", "--stats", "--flat", img.to_str().unwrap()];
        args.extend_from_slice(extra);
        let err = String::from_utf8_lossy(&ferrovisor(&args).stderr).into_owned();
        let line = err.lines().find(|l| l.contains("rtc base: ")).unwrap_or_else(|| panic!("no base in: {err}"));
        line.split("rtc base: ").nth(1).and_then(|r| r.split(' ').next()).unwrap().parse::<i64>().unwrap()
    };
    assert_eq!(stats_base(&["--rtc-base", "2024-02-29T13:47:38"]), 1709214458);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((stats_base(&[]) - now).abs() < 60, "the default base is the host's time");
    std::fs::remove_dir_all(&dir).ok();
}
