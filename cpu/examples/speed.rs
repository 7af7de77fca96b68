//! Guest MIPS of the interpreter on a 64-bit integer loop (`FERRO_SPEED_ITERS` scales it).

use cpu::{CpuState, ExecutionEngine, Interpreter, RamBus};

mod speed_loop;

fn main() {
    let code = speed_loop::code();
    let mut bus = RamBus::with_code(1 << 20, &code, speed_loop::CODE).unwrap();
    let mut cpu = CpuState::new_flat64();
    cpu.rip = speed_loop::CODE;
    let mut it = Interpreter::new();
    let t = std::time::Instant::now();
    let exit = it.run(&mut cpu, &mut bus, u64::MAX);
    let s = t.elapsed().as_secs_f64();
    println!("{exit:?} {} insns in {s:.3}s = {:.1} MIPS", cpu.icount, cpu.icount as f64 / s / 1e6);
}
