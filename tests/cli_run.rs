//! `ferrovisor run` as a user runs it: the demo with no arguments, and clear errors.

use std::process::Command;

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
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read /nonexistent/image.bin"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let dir = std::env::temp_dir().join(format!("ferro-cli-mb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.elf");
    std::fs::write(&bad, b"not a kernel at all").unwrap();
    let out = ferrovisor(&["run", "--multiboot", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Multiboot"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn test_cli_run_instruction_limit() {
    let out = ferrovisor(&["run", "--max-insns", "1000", "-q"]);
    assert_eq!(out.status.code(), Some(3));
}
