//! Differential tests against the host CPU.
//!
//! Random register, flag and memory states and random operand forms of every general-purpose
//! integer instruction the interpreter implements are executed twice: natively on the host and
//! in the interpreter. A thunk in an executable region loads the GPRs (the stack pointer too)
//! and RFLAGS from a context block, runs the instruction in a code slot and stores them back;
//! 32-bit cases run in compatibility mode (a far jump to Linux's 32-bit code selector), 16-bit
//! cases in a 16-bit code segment installed with modify_ldt (with 16-bit data and stack
//! segments based at the scratch area, so 16-bit addressing, SP and segment limits are real). Every
//! GPR, the status flags, DF, RIP afterwards (branches land on a "taken" pad) and the scratch
//! memory must agree. Host faults (#DE as SIGFPE, #UD as SIGILL, #GP/#BR as SIGSEGV) are caught
//! by a signal handler (on an alternate stack) that resumes the thunk's epilogue, and the
//! interpreter must raise the same exception. The only things masked are what the Intel SDM calls
//! undefined, from ONE table ([`host::undefined`]), and results that differ between real CPU
//! models, from ONE table with a reason per row ([`host::model_specific`]), so the test passes on
//! any x86-64 host it lands on.
//!
//! The scratch memory and the code slots live at the same addresses in the host process (fixed
//! mappings below 4 GiB, so 32-bit code and addressing work) and in guest physical memory, so
//! memory operands, return addresses and branch targets are the same on both sides. Each case
//! is 1 to 4 instructions run one at a time, so the interpreter's lazy flags flow from one
//! instruction into the next.
//!
//! The harness lives in cpu/tests/differential_setup (generic over the engine; the JIT runs it
//! in jit/tests/differential_jit.rs). The interpreter runs each instruction as a guest does,
//! and delivers faults through a real IDT to per-vector handlers.
//!
//! Environment: `FERRO_DIFF_SEED` (replay a run), `FERRO_DIFF_CASES` (default 100000),
//! `FERRO_DIFF_CASE` (run only that case of the seed), `FERRO_DIFF_TRACE` (print each
//! instruction before it runs), `FERRO_DIFF_VERBOSE` (instruction counts by mnemonic),
//! `FERRO_DIFF_EXTRA` (comma-separated mnemonics to add, e.g. `Movbe,Adcx`).

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
#[path = "../../tests/support/mod.rs"]
mod support;

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
#[test]
fn test_differential_against_host() {
    support::report_skip("cpu/tests/differential.rs: the differential tests need an x86_64 Linux host");
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[path = "differential_setup/mod.rs"]
mod differential_setup;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[test]
fn test_differential_against_host() {
    differential_setup::run_all(cpu::Interpreter::new(), differential_setup::Slicing::Whole);
}
