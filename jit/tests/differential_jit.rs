//! The host-CPU differential test (cpu/tests/differential.rs) run through the JIT: the same
//! random cases (same seed, same instructions, same states) execute natively on the host and
//! in translated code, with one step in four cut into random slices of 1 to 8 instructions, so
//! runs end inside blocks and blocks are entered part-way. The only masks are the harness's two
//! tables: what the SDM leaves undefined and what differs between real CPU models.
//!
//! The x87/MMX/SSE cases run through the JIT in differential_fpu_jit.rs (a test binary of its
//! own: each harness installs its own process-wide fault handler).
//!
//! Environment: as cpu/tests/differential.rs (`FERRO_DIFF_SEED`, `FERRO_DIFF_CASES`,
//! `FERRO_DIFF_CASE`, `FERRO_DIFF_TRACE`, ...).

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
#[path = "../../tests/support/mod.rs"]
mod support;

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
#[test]
fn test_jit_differential_against_host() {
    support::report_skip("jit/tests/differential_jit.rs: the differential tests need an x86_64 Linux host");
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[path = "../../cpu/tests/differential_setup/mod.rs"]
mod differential_setup;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[test]
fn test_jit_differential_against_host() {
    differential_setup::run_all(jit::Translator::new(), differential_setup::Slicing::Sliced);
}
