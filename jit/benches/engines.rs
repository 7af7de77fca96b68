//! Interpreter and JIT throughput on the same CPU-bound guest loops (cpu/benches/loops: integer
//! arithmetic, memory loads and stores, branches, calls). Criterion reports throughput in
//! elements = guest instructions, so "Melem/s" is guest MIPS.

use cpu::{CpuState, ExecutionEngine, Interpreter};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use jit::Translator;
use std::hint::black_box;

#[path = "../../cpu/benches/loops/mod.rs"]
mod loops;
use loops::{machine, run_once};

fn bench_loop(c: &mut Criterion, name: &str, code: Vec<u8>, fresh: CpuState) {
    let mut g = c.benchmark_group(name);
    let mut engines: Vec<Box<dyn ExecutionEngine>> = vec![Box::new(Interpreter::new()), Box::new(Translator::new())];
    for e in &mut engines {
        let mut bus = machine(&code);
        let insns = run_once(e.as_mut(), &mut bus, &fresh);
        g.throughput(Throughput::Elements(insns));
        g.bench_function(e.name(), |b| b.iter(|| black_box(run_once(e.as_mut(), &mut bus, &fresh))));
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    for (name, code, fresh) in loops::all() {
        bench_loop(c, name, code, fresh);
    }
}

criterion_group! {
    name = engines;
    config = Criterion::default().sample_size(10);
    targets = benches
}
criterion_main!(engines);
