//! Guest MIPS of the interpreter and the JIT on the same 64-bit integer loop, in one run
//! (`FERRO_SPEED_ITERS` scales it; the loop is cpu/examples/speed_loop, also timed by
//! `cpu/examples/speed.rs`).
//! `FERRO_SPEED_ENGINE=jit` or `interp` runs one engine only (for instruction counting, e.g.
//! `valgrind --tool=callgrind --smc-check=all-non-file`).

use cpu::{CpuState, ExecutionEngine, Interpreter, RamBus};

#[path = "../../cpu/examples/speed_loop/mod.rs"]
mod speed_loop;

fn main() {
    let code = speed_loop::code();
    let only = std::env::var("FERRO_SPEED_ENGINE").ok();
    let mut engines: Vec<Box<dyn ExecutionEngine>> = match only.as_deref() {
        Some("jit") => vec![Box::new(jit::Translator::new())],
        Some("interp") => vec![Box::new(Interpreter::new())],
        _ => vec![Box::new(Interpreter::new()), Box::new(jit::Translator::new())],
    };
    let mut results = Vec::new();
    for e in &mut engines {
        let mut bus = RamBus::with_code(1 << 20, &code, speed_loop::CODE).unwrap();
        let mut cpu = CpuState::new_flat64();
        cpu.rip = speed_loop::CODE;
        let t = std::time::Instant::now();
        let exit = e.run(&mut cpu, &mut bus, u64::MAX);
        let s = t.elapsed().as_secs_f64();
        let mips = cpu.icount as f64 / s / 1e6;
        println!("{:>6}: {exit:?} {} insns in {s:.3}s = {mips:.1} MIPS", e.name(), cpu.icount);
        if let Some(st) = e.stats_text() {
            println!("        {}", st.replace('\n', "; "));
        }
        results.push((mips, cpu.gpr, cpu.icount));
    }
    if results.len() == 2 {
        assert_eq!(results[0].1, results[1].1, "engines disagree");
        assert_eq!(results[0].2, results[1].2, "engines disagree on the instruction count");
        println!("jit/interp = {:.2}x", results[1].0 / results[0].0);
    }
}
