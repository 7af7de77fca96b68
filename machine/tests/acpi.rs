//! The generated ACPI tables checked by ACPICA's disassembler (`iasl -d`, Debian's
//! acpica-tools), which parses every table with its own reading of the specification.
//! Outside CI the test skips, saying so, when iasl is missing.

use machine::acpi::{build_tables, AcpiConfig};
use std::path::Path;
use std::process::Command;

fn iasl() -> bool {
    match Command::new("iasl").arg("-v").output() {
        Ok(_) => true,
        Err(_) if std::env::var_os("CI").is_some() => panic!("iasl (acpica-tools) is required in CI"),
        Err(_) => {
            eprintln!("SKIP machine/tests/acpi.rs: iasl not installed (apt-get install acpica-tools)");
            false
        }
    }
}

/// iasl's field lines as "Name : Value" with the offset prefix and spacing removed, joined by
/// " | ".
fn fields(dsl: &str) -> String {
    dsl.lines()
        .map(|l| {
            let l = if l.trim_start().starts_with('[') { l.split_once(']').map_or(l, |x| x.1) } else { l };
            l.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Disassembles `data` as table `name` in `dir`; returns iasl's output and the .dsl text.
fn disassemble(dir: &Path, name: &str, data: &[u8]) -> (String, String) {
    let bin = dir.join(format!("{name}.dat"));
    std::fs::write(&bin, data).unwrap();
    let out = Command::new("iasl").current_dir(dir).arg("-d").arg(&bin).output().expect("run iasl");
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "iasl -d {name} failed:\n{log}");
    let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap_or_default();
    (log, dsl)
}

#[test]
fn test_acpi_tables_parse_with_iasl() {
    if !iasl() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ferro-acpi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let t = build_tables(&AcpiConfig::default());
    // (iasl 20200925 does not disassemble a lone RSDP; SeaBIOS's test checks it.)
    let (tables, _rsdp) = t.place(0x07FE_0000);
    for (sig, off, len) in &t.layout {
        let name = String::from_utf8_lossy(sig).to_lowercase();
        let (log, dsl) = disassemble(&dir, &name, &tables[*off as usize..(*off + *len) as usize]);
        let lower = dsl.to_lowercase();
        assert!(!lower.contains("incorrect checksum"), "{name}: {dsl}");
        assert!(!log.contains("Error"), "{name}: {log}");
        match sig {
            b"DSDT" => {
                for s in ["PNP0A03", "_PRT", "_S5_", "_CRS", "0x0003FFFF"] {
                    assert!(dsl.contains(s), "DSDT lacks {s}:\n{dsl}");
                }
                assert!(!lower.contains("unknown"), "{dsl}");
            }
            b"FACP" => {
                for s in [
                    "SCI Interrupt : 0009",
                    "SMI Command Port : 000000B2",
                    "PM1A Event Block Address : 00000600",
                    "PM1A Control Block Address : 00000604",
                    "PM Timer Block Address : 00000608",
                    "GPE0 Block Address : 0000AFE0",
                    "Value to cause reset : 06",
                    "Control Method Power Button (V1) : 0",
                    "Reset Register Supported (V2) : 1",
                    "8042 Present on ports 60/64 (V2) : 1",
                    "VGA Not Present (V4) : 1",
                    "Century Index : 32",
                ] {
                    assert!(fields(&dsl).contains(s), "FADT lacks {s}:\n{dsl}");
                }
                assert!(dsl.contains("0x0000000000000CF9") || dsl.contains("0000000000000CF9"), "{dsl}");
            }
            b"APIC" => {
                let squashed = fields(&dsl);
                for s in [
                    "Subtable Type : 00 [Processor Local APIC]",
                    "Subtable Type : 01 [I/O APIC]",
                    "Address : FEC00000",
                    "Source : 00 | Interrupt : 00000002 | Flags (decoded below) : 0000",
                    "Source : 09 | Interrupt : 00000009 | Flags (decoded below) : 000D | Polarity : 1 | Trigger Mode : 3",
                    "Subtable Type : 04 [Local APIC NMI]",
                ] {
                    assert!(squashed.contains(s), "MADT lacks {s}:\n{dsl}");
                }
            }
            _ => {}
        }
    }
    // The strongest check of the AML encoding: iasl compiles its own disassembly back to the
    // same bytes (everything after the header, whose creator fields name the compiler).
    let (off, len) = t.layout.iter().find(|(s, _, _)| s == b"DSDT").map(|&(_, o, l)| (o, l)).unwrap();
    let ours = &tables[off as usize..(off + len) as usize];
    let out = Command::new("iasl").current_dir(&dir).args(["-p", "recompiled", "dsdt.dsl"]).output().expect("run iasl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let back = std::fs::read(dir.join("recompiled.aml")).unwrap();
    let first_diff = back[36..].iter().zip(&ours[36..]).position(|(a, b)| a != b);
    assert_eq!(
        back.len(),
        ours.len(),
        "AML length differs from iasl's compilation; first difference at {first_diff:?}"
    );
    assert_eq!(first_diff, None, "AML differs from iasl's compilation of its disassembly");
    let _ = std::fs::remove_dir_all(&dir);
}
