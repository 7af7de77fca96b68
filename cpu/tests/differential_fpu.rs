//! Differential tests of the x87, MMX, SSE..SSE4.2 and XSAVE instructions against the host CPU.
//!
//! Every implemented legacy-encoded x87, MMX and XMM instruction form valid in 64-bit mode
//! (taken from iced-x86's list of `Code`s, so no form is forgotten) runs with random operands, weighted towards special
//! values (QNaN/SNaN, denormals, infinities, ±0, the largest and smallest normals,
//! integer-conversion edges, 80-bit unnormals and pseudo-denormals), random x87 control words
//! (every rounding and precision mode, random masks), random MXCSR (rounding, DAZ, FTZ,
//! masks) and a random x87 stack (TOP, tags, pending flags). Each case runs natively, in a
//! thunk that FXRSTORs the input image, loads RAX/RCX/RDX/RSI and RFLAGS, runs the
//! instruction and FXSAVEs the result (a fault — #XM/#MF as SIGFPE, #GP as SIGSEGV, #UD as
//! SIGILL — resumes the epilogue), and in the interpreter. The 512-byte FXSAVE image (x87
//! control, status, tags, registers, MXCSR, XMM0-15), RAX/RCX/RDX, the status flags, the
//! exception raised and the scratch memory must agree.
//!
//! The harness lives in cpu/tests/differential_fpu_setup (generic over the engine; the JIT runs
//! it in jit/tests/differential_jit.rs); faults are delivered through a real IDT.
//!
//! What is not compared is in ONE table, [`model_specific`], with the reason.
//!
//! Environment: `FERRO_FPU_SEED`, `FERRO_FPU_CASES` (default 210000), `FERRO_FPU_VERBOSE`.

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
#[test]
fn test_differential_fpu_against_host() {
    println!("differential FPU tests skipped: they need an x86_64 Linux host");
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[path = "differential_fpu_setup/mod.rs"]
mod differential_fpu_setup;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[test]
fn test_differential_fpu_against_host() {
    differential_fpu_setup::run_all(cpu::Interpreter::new(), differential_fpu_setup::Slicing::Whole);
}
