//! `ferrovisor run` feeds standard input to COM1 stamped in virtual time, records it with
//! --serial-record, and --serial-replay repeats the run instruction for instruction.

use std::io::Write;
use std::process::{Command, Stdio};

/// Polls the 16550's LSR.DR, reads RBR and writes the byte to the exit port.
const ECHO: [u8; 15] = [0xBA, 0xFD, 0x03, 0xEC, 0xA8, 0x01, 0x74, 0xFB, 0xBA, 0xF8, 0x03, 0xEC, 0xE6, 0xF4, 0xF4];

#[test]
fn test_cli_serial_input_record_and_replay() {
    let dir = std::env::temp_dir().join(format!("ferro-cli-serial-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("echo.bin");
    std::fs::write(&image, ECHO).unwrap();
    let rec = dir.join("input.txt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrovisor"))
        .args(["run", "--flat"])
        .arg(&image)
        .args(["--max-insns", "1000000000", "--serial-record"])
        .arg(&rec)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"Z").unwrap();
    let live = child.wait_with_output().unwrap();
    assert_eq!(live.status.code(), Some(i32::from(b'Z') << 1 | 1), "{}", String::from_utf8_lossy(&live.stderr));
    let log = std::fs::read_to_string(&rec).unwrap();
    assert!(log.ends_with(" 5a\n"), "{log}");
    let replay = Command::new(env!("CARGO_BIN_EXE_ferrovisor"))
        .args(["run", "--flat"])
        .arg(&image)
        .args(["--max-insns", "1000000000", "--serial-replay"])
        .arg(&rec)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(replay.status.code(), live.status.code());
    // "N guest instructions in ...": the same N.
    let n = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).split_whitespace().nth(1).map(String::from);
    assert!(n(&live).is_some());
    assert_eq!(n(&replay), n(&live), "{}", String::from_utf8_lossy(&replay.stderr));
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, "12 zz\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferrovisor"))
        .args(["run", "--flat"])
        .arg(&image)
        .arg("--serial-replay")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad hex bytes"));
    let _ = std::fs::remove_dir_all(&dir);
}
