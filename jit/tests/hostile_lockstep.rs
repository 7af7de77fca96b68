//! Lockstep of the JIT against the interpreter on hostile guests: random byte streams executed as guest code in real mode, 16-bit and
//! 32-bit protected mode (flat segments), 64-bit long mode (identity paging) and ring 3 of the
//! protected and long modes, under an instruction limit, with an IVT/IDT whose handlers either
//! return (IRET) or halt. The guest may fault, halt, triple-fault or use up its budget; the host
//! JIT must end every stream in exactly the interpreter's state (registers, flags, segments,
//! control registers, instruction count, exit) with the same memory, in one run and sliced.
//! (Setup copied from cpu/tests/hostile.rs.)
//!
//! Environment: `FERRO_HOSTILE_SEED` (replay), `FERRO_HOSTILE_STREAMS` (per mode, default 1000),
//! `FERRO_HOSTILE_BUDGET` (instructions per stream, default 20000).
//!
//! The acceptance campaign (10,000 streams per mode in one run, 2,500 sliced) is an ignored
//! test, kept out of the default run for time:
//! `cargo test --release -p jit --test hostile_lockstep -- --ignored campaign`.

use cpu::{ExecutionEngine, Interpreter, RunExit};
use mmu::PhysMemory;

#[path = "../../cpu/tests/hostile_setup/mod.rs"]
mod hostile_setup;
use hostile_setup::*;

fn new_bus(ram: u64, noise: u64, irqs: bool) -> Bus {
    let mut mem = PhysMemory::new(ram).unwrap();
    mem.map_ram(0, ram).unwrap();
    mem.map_mmio(MMIO_BASE, 0x1000, 1).unwrap();
    Bus { mem, noise, irqs }
}

/// Runs one stream on `engine` (optionally in random slices) and returns the outcome.
fn run_stream(
    engine: &mut dyn ExecutionEngine,
    mode: Mode,
    bus: &mut Bus,
    rng_seed: u64,
    budget: u64,
    slices: Option<u64>,
) -> String {
    let mut rng = Rng(rng_seed);
    let mut cpu = setup(mode, &mut bus.mem, &mut rng);
    engine.invalidate_phys(0, u64::MAX);
    engine.flush_for_mode_change(&mut cpu);
    let mut exit = match slices {
        None => engine.run(&mut cpu, bus, budget),
        Some(s) => {
            let mut slicer = Rng(rng_seed ^ 0x51);
            loop {
                let left = budget - cpu.icount;
                let e = engine.run(&mut cpu, bus, (1 + slicer.next() % s).min(left));
                if e != RunExit::BudgetExhausted || cpu.icount >= budget {
                    break e;
                }
            }
        }
    };
    if slices.is_none() {
        for _ in 0..3 {
            if exit != RunExit::Halted {
                break;
            }
            exit = engine.run(&mut cpu, bus, budget / 4);
        }
    }
    outcome(exit, &cpu)
}

fn lockstep_mode(mode: Mode, sliced: bool) {
    lockstep_streams(mode, sliced, env_u64("FERRO_HOSTILE_STREAMS").unwrap_or(1000));
}

/// `per_mode` streams of `mode` (a quarter of them when sliced) in lockstep.
fn lockstep_streams(mode: Mode, sliced: bool, per_mode: u64) {
    let seed = env_u64("FERRO_HOSTILE_SEED").unwrap_or(0x005E_ED0F_FE44) ^ 0x1175;
    let streams = per_mode / if sliced { 4 } else { 1 };
    let budget = if sliced { 5_000 } else { env_u64("FERRO_HOSTILE_BUDGET").unwrap_or(20_000) };
    let ram = if sliced { 1 << 20 } else { RAM };
    let mut it = Interpreter::new();
    let mut jit = jit::Translator::new();
    // The sliced streams also check the translator's helper calls (see `set_clobber_calls`).
    jit.set_clobber_calls(sliced);
    let mut a = new_bus(ram, 0, !sliced);
    let mut b = new_bus(ram, 0, !sliced);
    let mut total = 0u64;
    for stream in 0..streams {
        if env_u64("FERRO_HOSTILE_ONLY").is_some_and(|o| o != stream) {
            continue;
        }
        let rng_seed = seed ^ (stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ (mode as u64) << 56;
        a.noise = seed ^ stream;
        b.noise = seed ^ stream;
        jit.trace = std::env::var("FERRO_HOSTILE_TRACE").is_ok();
        let want = run_stream(&mut it, mode, &mut a, rng_seed, budget, None);
        let got = run_stream(&mut jit, mode, &mut b, rng_seed, budget, sliced.then_some(64));
        assert_eq!(got, want, "{mode:?} stream {stream} (seed {seed:#x}, sliced {sliced}): JIT differs");
        assert!(
            a.mem.backing() == b.mem.backing(),
            "{mode:?} stream {stream} (seed {seed:#x}, sliced {sliced}): JIT left different memory"
        );
        total += 1;
    }
    let s = jit.stats();
    println!("lockstep {mode:?} sliced={sliced}: {total} streams identical (seed {seed:#x}); {s:?}");
}

const MODES: [Mode; 6] = [Mode::Real, Mode::Prot16, Mode::Prot32, Mode::Long64, Mode::Prot32Ring3, Mode::Long64Ring3];

#[test]
fn test_jit_lockstep_hostile_real_mode() {
    lockstep_mode(Mode::Real, false);
}

#[test]
fn test_jit_lockstep_hostile_protected16() {
    lockstep_mode(Mode::Prot16, false);
}

#[test]
fn test_jit_lockstep_hostile_protected32() {
    lockstep_mode(Mode::Prot32, false);
}

#[test]
fn test_jit_lockstep_hostile_long64() {
    lockstep_mode(Mode::Long64, false);
}

#[test]
fn test_jit_lockstep_hostile_protected32_ring3() {
    lockstep_mode(Mode::Prot32Ring3, false);
}

#[test]
fn test_jit_lockstep_hostile_long64_ring3() {
    lockstep_mode(Mode::Long64Ring3, false);
}

#[test]
fn test_jit_lockstep_hostile_sliced_jit_matches_one_shot_interpreter() {
    for mode in MODES {
        lockstep_mode(mode, true);
    }
}

#[test]
#[ignore = "the 10,000-streams-per-mode acceptance campaign (about half an hour); run with --ignored"]
fn test_jit_lockstep_hostile_campaign_10000_per_mode() {
    let per_mode = env_u64("FERRO_HOSTILE_STREAMS").unwrap_or(10_000);
    for mode in MODES {
        lockstep_streams(mode, false, per_mode);
        lockstep_streams(mode, true, per_mode);
    }
}

/// `streams` streams of `mode` compared at every block boundary, as `ferrovisor run --engine
/// lockstep` does: the JIT block-steps (one translated block or one interpreted instruction
/// per run), the interpreter then runs exactly as many instructions; both make the same run
/// calls, so the noisy bus answers both alike. After every unit the architectural state and
/// the pages either wrote (dirty logs) must be equal, and at the end all of memory.
fn lockstep_per_block(mode: Mode, streams: u64) {
    use cpu::compare::{arch_diff, arch_eq};
    let seed = env_u64("FERRO_HOSTILE_SEED").unwrap_or(0x005E_ED0F_FE44) ^ 0xB10C;
    let budget = 5_000;
    let mut it = Interpreter::new();
    let mut jit = jit::Translator::new();
    jit.set_block_step(true);
    jit.set_clobber_calls(true);
    let (mut a, mut b) = (new_bus(RAM, 0, true), new_bus(RAM, 0, true));
    let (mut units, mut pages) = (0u64, Vec::new());
    for stream in 0..streams {
        let rng_seed = seed ^ (stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ (mode as u64) << 56;
        a.noise = seed ^ stream;
        b.noise = seed ^ stream;
        let mut ca = setup(mode, &mut a.mem, &mut Rng(rng_seed));
        let mut cb = setup(mode, &mut b.mem, &mut Rng(rng_seed));
        it.invalidate_phys(0, u64::MAX);
        jit.invalidate_phys(0, u64::MAX);
        it.flush_for_mode_change(&mut ca);
        jit.flush_for_mode_change(&mut cb);
        for (m, c) in [(&mut a.mem, &mut ca), (&mut b.mem, &mut cb)] {
            m.dirty_log().set_on(true);
            c.tlb.protect_write_slots(&mmu::ProtectSlots::All);
        }
        let what = |u: u64| format!("{mode:?} stream {stream} (seed {seed:#x}) unit {u}");
        while cb.icount < budget {
            let start = cb.icount;
            let rb = jit.run(&mut cb, &mut b, budget - start);
            let n = cb.icount - start;
            let ra = it.run(&mut ca, &mut a, n.max(1));
            units += 1;
            assert_eq!(ra, rb, "{}: run exits differ after {n} instructions from {start}", what(units));
            assert!(
                arch_eq(&ca, &cb),
                "{}: from instruction {start} ({n} instructions): {:?}",
                what(units),
                arch_diff(&ca, &cb).iter().map(ToString::to_string).collect::<Vec<_>>()
            );
            pages.clear();
            for (m, c) in [(&mut a.mem, &mut ca), (&mut b.mem, &mut cb)] {
                let slots = m.dirty_log().take(|p| pages.push(p));
                c.tlb.protect_write_slots(&slots);
            }
            for &p in &pages {
                let r = (p * 4096) as usize..(p * 4096 + 4096) as usize;
                assert!(a.mem.backing()[r.clone()] == b.mem.backing()[r], "{}: page {p:#x} differs", what(units));
            }
            if rb != RunExit::BudgetExhausted {
                break;
            }
        }
        assert!(a.mem.backing() == b.mem.backing(), "{}: memory differs at the end", what(units));
        a.mem.dirty_log().set_on(false);
        b.mem.dirty_log().set_on(false);
    }
    println!("per-block lockstep {mode:?}: {streams} streams, {units} units identical; {:?}", jit.stats());
}

#[test]
fn test_jit_lockstep_hostile_per_block_every_mode() {
    let streams = env_u64("FERRO_HOSTILE_STREAMS").map_or(150, |s| s / 4);
    for mode in MODES {
        lockstep_per_block(mode, streams);
    }
}
