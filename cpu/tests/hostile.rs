//! Hostile-guest test: random byte streams executed as guest code in real mode, 16-bit and
//! 32-bit protected mode (flat segments), 64-bit long mode (identity paging) and ring 3 of the
//! protected and long modes, under an instruction limit, with an IVT/IDT whose handlers either
//! return (IRET) or halt. The guest may fault, halt, triple-fault or use up its budget; the host
//! must survive every stream: no panic, no hang.
//!
//! Environment: `FERRO_HOSTILE_SEED` (replay), `FERRO_HOSTILE_STREAMS` (per mode, default 1000),
//! `FERRO_HOSTILE_BUDGET` (instructions per stream, default 20000).

use cpu::{ExecutionEngine, Interpreter, RunExit};
use mmu::PhysMemory;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod hostile_setup;
use hostile_setup::*;

fn run_mode(mode: Mode) {
    let seed = env_u64("FERRO_HOSTILE_SEED").unwrap_or(0x005E_ED0F_FE44);
    let streams = env_u64("FERRO_HOSTILE_STREAMS").unwrap_or(1000);
    let budget = env_u64("FERRO_HOSTILE_BUDGET").unwrap_or(20_000);
    let mut mem = PhysMemory::new(RAM).unwrap();
    mem.map_ram(0, RAM).unwrap();
    mem.map_mmio(MMIO_BASE, 0x1000, 1).unwrap();
    let mut bus = Bus { mem, noise: seed, irqs: true };
    // A watchdog: a stream that takes longer than this is a host hang.
    let progress = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (p2, d2) = (progress.clone(), done.clone());
    let watchdog = std::thread::spawn(move || {
        let mut last = u64::MAX;
        let mut since = Instant::now();
        while !d2.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            let p = p2.load(Ordering::Relaxed);
            if p != last {
                last = p;
                since = Instant::now();
            } else if since.elapsed() > Duration::from_secs(20) {
                eprintln!("hostile {mode:?}: stream {p} hangs (seed {seed:#x}); aborting");
                std::process::abort();
            }
        }
    });
    let mut it = Interpreter::new();
    let mut exits = std::collections::BTreeMap::<String, u64>::new();
    let mut panics = Vec::new();
    let mut total = 0u64;
    let t0 = Instant::now();
    for stream in 0..streams {
        if env_u64("FERRO_HOSTILE_ONLY").is_some_and(|o| o != stream) {
            continue;
        }
        progress.store(stream, Ordering::Relaxed);
        it.trace = std::env::var("FERRO_HOSTILE_TRACE").is_ok();
        let mut rng = Rng(seed ^ (stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ (mode as u64) << 56);
        let mut cpu = setup(mode, &mut bus.mem, &mut rng);
        let code = bus.mem.backing()[CODE as usize..CODE as usize + 64].to_vec();
        it.invalidate_phys(0, RAM);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut exit = it.run(&mut cpu, &mut bus, budget);
            // Halted with interrupts enabled: let a pending interrupt wake it a few times.
            for _ in 0..3 {
                if exit != RunExit::Halted {
                    break;
                }
                exit = it.run(&mut cpu, &mut bus, budget / 4);
            }
            exit
        }));
        total += cpu.icount;
        match r {
            Ok(exit) => *exits.entry(format!("{exit:?}")).or_default() += 1,
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panics.push(format!("stream {stream}: {msg}; first code bytes {code:02x?}"));
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    watchdog.join().unwrap();
    println!(
        "hostile {mode:?}: {streams} streams, {total} instructions in {:.2}s, exits {exits:?}, seed {seed:#x}",
        t0.elapsed().as_secs_f64()
    );
    assert!(panics.is_empty(), "host panics in {mode:?} (seed {seed:#x}):\n{}", panics.join("\n"));
}

#[test]
fn test_hostile_real_mode() {
    run_mode(Mode::Real);
}

#[test]
fn test_hostile_protected16() {
    run_mode(Mode::Prot16);
}

#[test]
fn test_hostile_protected32() {
    run_mode(Mode::Prot32);
}

#[test]
fn test_hostile_long64() {
    run_mode(Mode::Long64);
}

#[test]
fn test_hostile_protected32_ring3() {
    run_mode(Mode::Prot32Ring3);
}

#[test]
fn test_hostile_long64_ring3() {
    run_mode(Mode::Long64Ring3);
}

/// Self-consistency: the same stream run in one go and in slices of 1..64 instructions (each
/// slice a new `run` call, so every run-loop cache is rebuilt and REP instructions resume
/// mid-way) must end in the same state. Device noise is replayed identically.
const SLICED_RAM: u64 = 1 << 20;

fn sliced_mode(mode: Mode) {
    let seed = env_u64("FERRO_HOSTILE_SEED").unwrap_or(0x005E_ED0F_FE44) ^ 0x511CE;
    let streams = env_u64("FERRO_HOSTILE_STREAMS").unwrap_or(1000) / 4;
    let budget = 5_000u64;
    let mut it = Interpreter::new();
    for stream in 0..streams {
        if env_u64("FERRO_HOSTILE_ONLY").is_some_and(|o| o != stream) {
            continue;
        }
        let mut results = Vec::new();
        for sliced in [false, true] {
            // 1 MiB of RAM keeps the memory comparison cheap (the rest is open bus).
            let mut mem = PhysMemory::new(SLICED_RAM).unwrap();
            mem.map_ram(0, SLICED_RAM).unwrap();
            mem.map_mmio(MMIO_BASE, 0x1000, 1).unwrap();
            // No external interrupts: where they are taken inside a REP string instruction
            // legitimately depends on the slicing.
            let mut bus = Bus { mem, noise: seed ^ stream, irqs: false };
            let mut rng = Rng(seed ^ (stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ (mode as u64) << 56);
            let mut cpu = setup(mode, &mut bus.mem, &mut rng);
            it.invalidate_phys(0, RAM);
            let exit = if sliced {
                let mut slicer = Rng(stream);
                let max_slice = env_u64("FERRO_HOSTILE_SLICE").unwrap_or(64);
                it.trace = std::env::var("FERRO_HOSTILE_TRACE").is_ok();
                loop {
                    let left = budget - cpu.icount;
                    let slice = (1 + slicer.next() % max_slice).min(left);
                    let e = it.run(&mut cpu, &mut bus, slice);
                    if e != RunExit::BudgetExhausted || cpu.icount >= budget {
                        break e;
                    }
                }
            } else {
                it.trace = std::env::var("FERRO_HOSTILE_TRACE").is_ok();
                it.run(&mut cpu, &mut bus, budget)
            };
            results.push((outcome(exit, &cpu), bus.mem.backing()[..SLICED_RAM as usize].to_vec()));
        }
        assert_eq!(
            results[0].0, results[1].0,
            "{mode:?} stream {stream} (seed {seed:#x}): sliced run differs from one-shot run"
        );
        assert!(
            results[0].1 == results[1].1,
            "{mode:?} stream {stream} (seed {seed:#x}): sliced run left different memory"
        );
    }
    println!("hostile sliced {mode:?}: {streams} streams consistent");
}

#[test]
fn test_hostile_sliced_runs_match_one_shot() {
    for mode in [Mode::Real, Mode::Prot16, Mode::Prot32, Mode::Long64, Mode::Prot32Ring3, Mode::Long64Ring3] {
        sliced_mode(mode);
    }
}
