//! The x87/MMX/SSE differential test (cpu/tests/differential_fpu.rs) run through the JIT: the
//! same cases execute natively on the host and under the translator, where these instructions
//! run through its per-instruction helper between translated code, with one case in four cut
//! into slices. (A binary of its own: the harness installs a process-wide fault handler.)
//!
//! Environment: as cpu/tests/differential_fpu.rs (`FERRO_FPU_SEED`, `FERRO_FPU_CASES`, ...).

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
#[path = "../../tests/support/mod.rs"]
mod support;

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
#[test]
fn test_jit_differential_fpu_against_host() {
    support::report_skip("jit/tests/differential_fpu_jit.rs: the differential tests need an x86_64 Linux host");
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[path = "../../cpu/tests/differential_fpu_setup/mod.rs"]
mod differential_fpu_setup;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[test]
fn test_jit_differential_fpu_against_host() {
    differential_fpu_setup::run_all(jit::Translator::new(), differential_fpu_setup::Slicing::Sliced);
}
