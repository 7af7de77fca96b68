//! Debian's SeaBIOS on Ferrovisor. The test fetches the `seabios` package itself
//! (scripts/fetch-seabios.sh); outside CI it skips, saying so, when that is impossible.

use machine::{Exit, Machine, MachineConfig};
use std::path::PathBuf;
use std::process::Command;

/// Path of Debian's bios.bin: $FERRO_SEABIOS, or fetched into target/guest-cache/seabios.
fn seabios() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("FERRO_SEABIOS") {
        return Some(PathBuf::from(p));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("target/guest-cache/seabios");
    let bios = dir.join("bios.bin");
    if !bios.exists() {
        let status = Command::new("bash").arg(root.join("scripts/fetch-seabios.sh")).arg(&dir).status();
        if !matches!(status, Ok(s) if s.success()) {
            if std::env::var_os("CI").is_some() {
                panic!("cannot fetch Debian's seabios package (required in CI)");
            }
            eprintln!("skipped: cannot fetch Debian's seabios package (apt-get download seabios failed)");
            return None;
        }
    }
    Some(bios)
}

#[test]
fn test_seabios_post_banner() {
    let Some(path) = seabios() else { return };
    let image = std::fs::read(&path).expect("read bios.bin");
    let mut m = Machine::new(MachineConfig { ram_bytes: 128 << 20, capture_serial: true, ..Default::default() })
        .expect("machine");
    m.load_bios(&image).expect("load bios");
    let exit = m.run(Some(300_000_000));
    let out = String::from_utf8_lossy(&m.serial_output()).into_owned();
    assert!(out.contains("SeaBIOS (version"), "no SeaBIOS banner; exit {exit:?}; output:\n{out}");
    assert!(out.contains("Press ESC for boot menu"), "POST did not reach the boot menu; exit {exit:?}; output:\n{out}");
    assert_ne!(exit, Exit::TripleFault, "output:\n{out}");
}
