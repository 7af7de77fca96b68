//! Interpreter throughput on CPU-bound guest loops (integer arithmetic, memory loads and stores,
//! branches). Criterion reports throughput in elements = guest instructions, so "Melem/s" is
//! guest MIPS.

use cpu::{CpuState, Interpreter};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

mod loops;
use loops::{machine, run_once};

fn bench_loop(c: &mut Criterion, name: &str, code: Vec<u8>, fresh: CpuState) {
    let mut bus = machine(&code);
    let mut it = Interpreter::new();
    let insns = run_once(&mut it, &mut bus, &fresh);
    let mut g = c.benchmark_group("interp");
    g.throughput(Throughput::Elements(insns));
    g.bench_function(name, |b| b.iter(|| black_box(run_once(&mut it, &mut bus, &fresh))));
    g.finish();
}

fn benches(c: &mut Criterion) {
    for (name, code, fresh) in loops::all() {
        bench_loop(c, name, code, fresh);
    }
}

criterion_group! {
    name = interp;
    config = Criterion::default().sample_size(20);
    targets = benches
}
criterion_main!(interp);
