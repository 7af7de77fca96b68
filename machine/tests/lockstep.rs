//! Lockstep of the JIT against the interpreter on whole machines: every test ROM, the demo and
//! SeaBIOS's POST and disk boot, compared at every block boundary (CPU state, the memory
//! written, console output, exit); 0 divergences allowed. Planted differences (a register, a
//! memory byte) must be reported with their instruction count, field and address, and the
//! dirty log must cover every page the JIT writes, inline stores included.

use machine::lockstep::{run_lockstep, run_lockstep_with, LockstepOptions};
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

/// SeaBIOS's POST with 128 MiB (the CLI's default) and no disk: it copies code over pages the
/// JIT has translated, so REP MOVSB stops after each iteration in the JIT machine (a store into
/// translated code) and at the unit's budget in the interpreter's; the two stops once left RF
/// different (found by `ferrovisor run --engine lockstep`, instruction 6842863).
#[test]
fn test_lockstep_seabios_post_without_disk_over_translated_code() {
    let Some(path) = seabios("machine/tests/lockstep.rs") else { return };
    let bios = std::fs::read(&path).expect("read bios.bin");
    let build = |engine| {
        let mut m =
            Machine::new(MachineConfig { ram_bytes: 128 << 20, capture_serial: true, engine, ..Default::default() })?;
        m.load_bios(&bios)?;
        Ok(m)
    };
    match run_lockstep::<MachineError>(&build, Some(30_000_000), SLICE).expect("machine") {
        Ok(r) => println!("SeaBIOS without disk: {r:?}"),
        Err(d) => panic!("SeaBIOS without disk: {d}"),
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
    assert_eq!((d.icount, d.len), (0, 0), "{d}");
    assert_eq!(d.memory.first().map(|m| (m.phys, m.interp, m.jit)), Some((Some(0x3_0000), 0, 1)), "{d}");
}

/// The benchmark guest (flat 32-bit code: the JIT runs it as host code with inline stores).
fn bench_machine(engine: EngineKind) -> Result<Machine, MachineError> {
    let mut m =
        Machine::new(MachineConfig { ram_bytes: 16 << 20, capture_serial: true, engine, ..Default::default() })?;
    m.load_multiboot(&test_roms::bench_guest(1), "")?;
    Ok(m)
}

#[test]
fn test_lockstep_names_a_planted_register_difference() {
    // Fault injection: once the JIT machine has run 200,000 instructions, EBX changes in it at
    // a block boundary. Lockstep must name that boundary (the end of the unit it compared),
    // the field and both values.
    let mut planted: Option<(u64, u64)> = None;
    let mut plant = |m: &mut Machine| {
        if planted.is_none() && m.instructions() >= 200_000 {
            let v = m.cpu().gpr[3];
            m.cpu_mut().gpr[3] = v ^ 0x40;
            planted = Some((m.instructions(), v));
        }
    };
    let opts = LockstepOptions { max_insns: Some(2_000_000), plant: Some(&mut plant), ..Default::default() };
    let d = run_lockstep_with::<MachineError>(&bench_machine, opts).expect("machine").expect_err("a divergence");
    let (at, v) = planted.expect("planted");
    println!("{d}");
    assert_eq!(d.icount + d.len, at, "{d}");
    assert!(d.len <= 64 * 2, "one block: {d}");
    let rbx = d.fields.iter().find(|f| f.field == "rbx").unwrap_or_else(|| panic!("rbx named: {d}"));
    assert_eq!((rbx.a.clone(), rbx.b.clone()), (format!("{v:#x}"), format!("{:#x}", v ^ 0x40)), "{d}");
    assert_eq!(d.fields.len(), 1, "only rbx differs: {d}");
    // Planted from outside, the difference is in no engine: re-runs do not reproduce it.
    assert!(d.pinpoint.contains("does not reproduce it either"), "{d}");
    assert!(d.memory.is_empty(), "{d}");
}

#[test]
fn test_lockstep_names_a_planted_memory_difference() {
    // Once the JIT machine has run 300,000 instructions, a byte of its RAM changes (through
    // the loader path, which the dirty log records, as it records DMA). Lockstep must name the
    // guest-physical address and both values.
    const ADDR: u64 = 0x9_1234;
    let mut planted: Option<(u64, u8)> = None;
    let mut plant = |m: &mut Machine| {
        if planted.is_none() && m.instructions() >= 300_000 {
            let mut b = [0u8];
            m.memory().read(base::GuestPhysAddr(ADDR), &mut b).expect("read");
            m.memory().load(base::GuestPhysAddr(ADDR), &[b[0] ^ 0x5A]).expect("poke");
            planted = Some((m.instructions(), b[0]));
        }
    };
    let opts = LockstepOptions { max_insns: Some(2_000_000), plant: Some(&mut plant), ..Default::default() };
    let d = run_lockstep_with::<MachineError>(&bench_machine, opts).expect("machine").expect_err("a divergence");
    let (at, v) = planted.expect("planted");
    println!("{d}");
    assert_eq!(d.icount + d.len, at, "{d}");
    assert!(d.fields.is_empty(), "{d}");
    assert_eq!(d.memory.len(), 1, "{d}");
    let m = &d.memory[0];
    assert_eq!((m.phys, m.interp, m.jit), (Some(ADDR), v, v ^ 0x5A), "{d}");
    assert!(d.to_string().contains(&format!("memory {ADDR:#x}: ")), "{d}");
}

#[test]
fn test_lockstep_exact_instruction_of_a_planted_difference_in_real_mode() {
    // A changed byte of code in the JIT machine's image (built in, so the re-run has it too):
    // the first instruction the change alters must be named exactly, with the count a plain
    // interpreter run reaches that instruction at (the oracle: another machine, stepped).
    let rom = test_roms::real_mode_arith();
    // The oracle: step an interpreter machine and record the icount of every instruction start.
    let mut m = rom_machine(&rom, EngineKind::Interp).expect("machine");
    let mut starts = Vec::new();
    for _ in 0..100 {
        let c = m.cpu();
        starts.push((c.icount, (u64::from(c.seg[1].selector) << 4) + c.rip));
        if m.run(Some(1)) != Exit::InstructionLimit {
            break;
        }
    }
    // Flip the low bit of the 21st instruction's first byte (real-mode code runs as translated
    // blocks of helper calls: the unit holding it is longer than one instruction).
    let (count20, addr20) = starts[20];
    let build = |engine| {
        let mut m = rom_machine(&rom, engine)?;
        if engine == EngineKind::Jit {
            let mut b = [0u8];
            m.memory().read(base::GuestPhysAddr(addr20), &mut b).expect("read");
            m.memory().load(base::GuestPhysAddr(addr20), &[b[0] ^ 0x01]).expect("poke");
        }
        Ok(m)
    };
    let opts = LockstepOptions { max_insns: Some(1_000_000), skip_start_check: true, ..Default::default() };
    let d = run_lockstep_with::<MachineError>(&build, opts).expect("machine").expect_err("a divergence");
    println!("{d}");
    // The changed byte was loaded before the dirty logs started, so it is not itself reported;
    // the first difference is what the changed instruction does.
    assert_eq!((d.icount, d.len), (count20, 1), "{d}");
    // Named with its address (as the interpreter, with the original byte, ran it).
    let i = d.insn.as_ref().unwrap_or_else(|| panic!("instruction named: {d}"));
    assert_eq!((i.icount, (u64::from(i.cs) << 4) + i.rip), (count20, addr20), "{d}");
    assert!(!i.text.is_empty(), "{d}");
}

#[test]
fn test_dirty_log_covers_every_page_the_jit_writes() {
    // The oracle is a full copy of memory: every page that changed between two checks must
    // have been handed out by the dirty log in between, although the JIT writes most of them
    // with inline stores (after the first, recorded, write of each page per interval).
    let (instructions, helper_calls) = dirty_log_against_full_copies(EngineKind::Jit);
    assert!(helper_calls * 4 < instructions, "most instructions ran as host code");
}

#[test]
fn test_dirty_log_covers_every_page_the_interpreter_writes() {
    dirty_log_against_full_copies(EngineKind::Interp);
}

/// Runs the benchmark guest on `engine` in turns of one block (the interpreter: 50
/// instructions), taking the dirty log after every turn and checking it against a full copy of
/// memory every 2048 turns; returns the instructions run and the JIT's helper calls.
fn dirty_log_against_full_copies(engine: EngineKind) -> (u64, u64) {
    let mut m = bench_machine(engine).expect("machine");
    let cap = if m.set_block_step(true) { None } else { Some(50) };
    m.set_dirty_log(true);
    let mut shadow = m.memory().backing().to_vec();
    let mut logged = std::collections::BTreeSet::new();
    let mut st = m.run_state(None, None);
    let (mut checks, mut changed_pages) = (0, 0);
    for turn in 0u64.. {
        let t = m.run_turn(&mut st, cap);
        m.take_dirty_pages(|p| {
            logged.insert(p);
        });
        if turn % 2048 == 0 || t.exit.is_some() {
            checks += 1;
            let now = m.memory().backing();
            for (i, (x, y)) in now.chunks(4096).zip(shadow.chunks(4096)).enumerate() {
                if x != y {
                    changed_pages += 1;
                    assert!(
                        logged.contains(&(i as u64)),
                        "{engine:?}: page {i:#x} changed but was not logged (turn {turn})"
                    );
                }
            }
            shadow.copy_from_slice(now);
            logged.clear();
        }
        if let Some(e) = t.exit {
            assert_eq!(e, Exit::ExitDevice(u32::from(PASS)), "{engine:?}: the guest ran to its end");
            break;
        }
    }
    let (_, stats) = m.engine_stats();
    let stats = stats.unwrap_or_default();
    let helper_calls: u64 =
        stats.lines().find_map(|l| l.strip_prefix("helper calls: ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    println!(
        "{engine:?}: checks {checks}, changed pages {changed_pages}, {} instructions, helper calls {helper_calls}",
        m.instructions()
    );
    assert!(changed_pages > 20, "the guest wrote memory");
    (m.instructions(), helper_calls)
}

/// Debian's Linux kit for `arch` (amd64 or i386), fetched by scripts/fetch-linux-guest.sh.
fn linux_kit(arch: &str) -> Option<std::path::PathBuf> {
    let root = support::workspace_root();
    let dir = root.join(if arch == "amd64" {
        "target/guest-cache/linux".to_owned()
    } else {
        format!("target/guest-cache/linux-{arch}")
    });
    let status =
        std::process::Command::new("bash").arg(root.join("scripts/fetch-linux-guest.sh")).arg(&dir).arg(arch).status();
    if matches!(status, Ok(s) if s.success()) && dir.join("vmlinux").exists() {
        return Some(dir);
    }
    assert!(std::env::var_os("CI").is_none(), "cannot build the Linux guest kit (required in CI)");
    support::report_skip("machine/tests/lockstep.rs: cannot build the Linux guest kit from Debian packages");
    None
}

/// Boots the kit's kernel to user space and power-off under per-block lockstep.
fn lockstep_linux(arch: &str) {
    let Some(kit) = linux_kit(arch) else { return };
    let kernel = std::fs::read(kit.join("vmlinux")).expect("vmlinux");
    let initrd = std::fs::read(kit.join("initramfs.cpio.gz")).expect("initramfs");
    let build = |engine| {
        let mut m = Machine::new(MachineConfig {
            ram_bytes: 512 << 20,
            capture_serial: true,
            no_reboot: true,
            engine,
            ..Default::default()
        })?;
        m.load_kernel(&kernel, Some(&initrd), "console=ttyS0 nokaslr panic=-1", "vmlinux")?;
        Ok(m)
    };
    match run_lockstep::<MachineError>(&build, Some(30_000_000_000), SLICE).expect("machine") {
        Ok(r) => {
            let console = String::from_utf8_lossy(&r.serial);
            println!(
                "{arch}: {} instructions, {} comparisons, {} pages compared",
                r.instructions, r.comparisons, r.pages_compared
            );
            assert!(console.contains("FERROVISOR-USERSPACE-OK"), "{arch}: no user space:\n{console}");
            assert_eq!(r.exit, Exit::PowerOff, "{arch}");
        }
        Err(d) => panic!("{arch}: {d}"),
    }
}

/// 64-bit Linux to user space under per-block lockstep: about 1.5 billion instructions, a few
/// minutes; the same as `ferrovisor run --engine lockstep -m 512M --serial stdio --kernel
/// target/guest-cache/linux/vmlinux --initrd target/guest-cache/linux/initramfs.cpio.gz
/// --append "console=ttyS0 nokaslr panic=-1" --no-reboot`. Run with `--ignored`.
#[test]
#[ignore = "minutes: run with --ignored"]
fn test_lockstep_linux_64bit_to_userspace() {
    lockstep_linux("amd64");
}

/// 32-bit (PAE) Linux to user space under per-block lockstep (the i386 kit,
/// target/guest-cache/linux-i386, as above). Run with `--ignored`.
#[test]
#[ignore = "minutes: run with --ignored"]
fn test_lockstep_linux_32bit_to_userspace() {
    lockstep_linux("i386");
}

#[test]
fn test_lockstep_names_the_instruction_of_a_planted_translator_fault() {
    // Fault injection in the translator (`jit::plant`, test-only): translated code uses 12346
    // where the guest's instruction has the immediate 12345, the benchmark guest's LCG step
    // `add eax, 12345`, which runs as host code in the middle of a translated block. Single
    // steps cannot show it (the JIT interprets a run of one instruction), so lockstep must
    // narrow the block down by truncating it, and name exactly that instruction.
    const IMM: u32 = 12_345;
    // The oracle: an interpreter machine stepped to the first instruction that is that ADD,
    // decoded from its memory (flat code, paging off: RIP is the physical address).
    let mut m = bench_machine(EngineKind::Interp).expect("machine");
    let (count, rip) = (0..20_000_000)
        .find_map(|_| {
            let (icount, rip) = (m.instructions(), m.cpu().rip);
            let mut bytes = [0u8; 15];
            m.memory().read(base::GuestPhysAddr(rip), &mut bytes).expect("read");
            let i = iced_x86::Decoder::with_ip(32, &bytes, rip, iced_x86::DecoderOptions::NONE).decode();
            if i.mnemonic() == iced_x86::Mnemonic::Add
                && i.op0_register() == iced_x86::Register::EAX
                && i.op1_kind() == iced_x86::OpKind::Immediate32
                && i.immediate32() == IMM
            {
                return Some((icount, rip));
            }
            assert_eq!(m.run(Some(1)), Exit::InstructionLimit);
            None
        })
        .expect("the guest runs `add eax, 12345`");
    jit::plant::plant_imm32(Some((IMM, IMM + 1)));
    let opts = LockstepOptions { max_insns: Some(count + 1_000_000), ..Default::default() };
    let d = run_lockstep_with::<MachineError>(&bench_machine, opts).expect("machine");
    jit::plant::plant_imm32(None);
    let d = d.expect_err("a divergence");
    println!("{d}");
    // Not found by single steps: by truncating the translated block that starts earlier.
    let from: u64 = d
        .pinpoint
        .split("the block run from instruction ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("narrowed within a translated block: {d}"));
    assert!(from < count, "the block starts before the ADD: {d}");
    assert!(d.pinpoint.contains("truncated to its first"), "{d}");
    // Exactly the ADD: its count and address, disassembled.
    assert_eq!((d.icount, d.len), (count, 1), "{d}");
    let i = d.insn.as_ref().unwrap_or_else(|| panic!("instruction named: {d}"));
    assert_eq!((i.icount, u64::from(i.cs), i.rip), (count, u64::from(m.cpu().seg[1].selector), rip), "{d}");
    assert!(i.text.starts_with("add eax,"), "{d}");
    // EAX differs by the planted 1 (both values as the states right after the ADD have them).
    let rax = d.fields.iter().find(|f| f.field == "rax").unwrap_or_else(|| panic!("rax named: {d}"));
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex");
    assert_eq!(hex(&rax.b), u64::from((hex(&rax.a) as u32).wrapping_add(1)), "{d}");
    assert!(d.fields.iter().all(|f| f.field == "rax" || f.field == "rflags"), "only EAX and flags: {d}");
    assert!(d.memory.is_empty(), "{d}");
    // The host code of the truncated block is shown.
    assert!(d.host_code.as_ref().is_some_and(|h| !h.is_empty()), "{d}");
    let text = d.to_string();
    assert!(text.contains(&format!("divergent instruction {count} at ")), "{d}");
    assert!(text.contains("host code of the block:"), "{d}");
}
