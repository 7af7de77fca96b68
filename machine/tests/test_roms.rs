//! Every test ROM on the whole machine. The self-checking ROMs compare against values derived
//! from the Intel SDM and report through the exit port; the demo's output is compared with the
//! same computation done natively on the host.

use machine::{Exit, Machine, MachineConfig};
use test_roms::{Rom, FAIL, PASS};

fn run(rom: &Rom, limit: u64) -> (Exit, String, Machine) {
    let mut m = Machine::new(MachineConfig { ram_bytes: 32 << 20, capture_serial: true, ..Default::default() })
        .expect("machine");
    m.load_flat(&rom.image, rom.load_addr, rom.entry).expect("load");
    let exit = m.run(Some(limit));
    let out = String::from_utf8_lossy(&m.serial_output()).into_owned();
    (exit, out, m)
}

fn expect_pass(name: &str, rom: Rom) {
    let (exit, out, mut m) = run(&rom, 1_000_000);
    let mut vars = [0u8; 16];
    m.memory().read(base::GuestPhysAddr(0x600), &mut vars).expect("scratch variables");
    let out = format!("{out:?}; scratch at 0x600: {vars:02x?}");
    match exit {
        Exit::ExitDevice(v) if v == u32::from(PASS) => {}
        Exit::ExitDevice(v) if v & u32::from(FAIL) != 0 => {
            panic!("{name}: check {} failed; rip {:#x}; output {out}", v & 0x7F, m.cpu().rip)
        }
        other => panic!("{name}: ended with {other:?} at rip {:#x}; output {out}", m.cpu().rip),
    }
}

#[test]
fn test_rom_real_mode_arith() {
    expect_pass("real_mode_arith", test_roms::real_mode_arith());
}

#[test]
fn test_rom_long_mode_switch() {
    expect_pass("long_mode_switch", test_roms::long_mode_switch());
}

#[test]
fn test_rom_string_ops() {
    expect_pass("string_ops", test_roms::string_ops());
}

#[test]
fn test_rom_exceptions_real() {
    expect_pass("exceptions_real", test_roms::exceptions_real());
}

#[test]
fn test_rom_exceptions_protected() {
    expect_pass("exceptions_protected", test_roms::exceptions_protected());
}

#[test]
fn test_rom_demo_output_matches_host_computation() {
    let (exit, out, m) = run(&test_roms::demo(), 100_000_000);
    assert_eq!(exit, Exit::Halted, "rip {:#x}; output:\n{out}", m.cpu().rip);
    assert!(out.starts_with(test_roms::DEMO_BANNER), "output:\n{out}");
    assert!(out.contains(&test_roms::mandelbrot_reference()), "Mandelbrot differs from the host's:\n{out}");
    assert!(out.contains(&test_roms::primes_reference()), "primes differ from the host's:\n{out}");
    assert!(out.contains("CPU vendor: "), "output:\n{out}");
}

#[test]
fn test_rom_pit_interrupts_and_idle_skip() {
    let rom = test_roms::pit_interrupts();
    let (exit, out, m) = run(&rom, 1_000_000);
    assert_eq!(exit, Exit::ExitDevice(u32::from(PASS)), "output {out}; rip {:#x}; eax {}", m.cpu().rip, m.cpu().gpr[0]);
    // 100 ms of guest time passed in HLT: the CPU skipped ahead instead of spinning.
    assert!(m.instructions() < 10_000, "{} instructions", m.instructions());
}

#[test]
fn test_rom_system_protected() {
    expect_pass("system_protected", test_roms::system_protected());
}

#[test]
fn test_rom_system_long() {
    expect_pass("system_long", test_roms::system_long());
}

#[test]
fn test_rom_apic_timer_ipi_and_ioapic() {
    expect_pass("apic", test_roms::apic());
}

/// Issue 11, item 6: a halted guest with a very fast timer it can never receive used to spin
/// the host for minutes (one loop per timer period over an hour of virtual time). Now each
/// such timer costs O(1) host work: the run ends idle-forever after a handful of skips.
#[test]
fn test_issue_11_fast_undeliverable_timer_does_not_hang() {
    use test_roms::FastTimer;
    for kind in
        [FastTimer::PitMasked, FastTimer::LapicSoftwareDisabled, FastTimer::LapicMasked, FastTimer::LapicInService]
    {
        // A watchdog thread turns a regression into a failure instead of a hung test run.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rom = test_roms::fast_timer_halt(kind);
            let (exit, _, m) = run(&rom, 1_000_000);
            let _ = tx.send((exit, m.idle_skips(), m.virtual_time().0, m.instructions()));
        });
        let (exit, skips, vt, insns) = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("{kind:?}: the halted machine still spins"));
        assert_eq!(exit, Exit::IdleForever, "{kind:?}");
        assert!(vt >= 3_600_000_000_000, "{kind:?}: an hour of virtual time passed first ({vt} ns)");
        assert!(insns < 1_000, "{kind:?}: {insns} instructions");
        assert!(skips <= 16, "{kind:?}: {skips} idle skips for one halt");
    }
}

/// `run_limited` bounds virtual time, halted time included (a wall-time bound for any guest).
#[test]
fn test_issue_11_time_limit_counts_halted_time() {
    let rom = test_roms::fast_timer_halt(test_roms::FastTimer::PitMasked);
    let mut m = Machine::new(MachineConfig { ram_bytes: 32 << 20, ..Default::default() }).expect("machine");
    m.load_flat(&rom.image, rom.load_addr, rom.entry).expect("load");
    assert_eq!(m.run_limited(None, Some(5_000_000)), Exit::TimeLimit);
    assert_eq!(m.virtual_time().0, 5_000_000, "the run stops exactly at the bound");
}
