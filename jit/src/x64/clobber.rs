//! A check for generated code that relies on a register a call may change.
//!
//! Generated code calls three Rust helpers (through the [`super::HelperTable`]). The System V
//! ABI lets a callee change every caller-saved register, but which ones a given helper really
//! changes, and to what, depends on its compiled code and on the path it takes. So code that
//! wrongly keeps a value in such a register across a call (the probe group's addend in R10,
//! once) works on most runs and corrupts memory on a few. With the check on
//! ([`crate::Translator::set_clobber_calls`], or `FERRO_JIT_CLOBBER=1`), the table points at
//! these wrappers instead: each calls its helper and then sets every caller-saved register
//! that carries no return value to a non-canonical address, so such code faults (or diverges)
//! at once and on every run. Results of correct code are unchanged.

use cpu::helpers::{helper_flags, helper_step, HelperEnv};
use cpu::CpuState;

/// What the caller-saved registers hold after a call (non-canonical: an address made from it
/// faults).
pub(crate) const POISON: u64 = 0xDEAD_0BAD_0BAD_DEAD;

/// Sets RCX, RDX, RSI, RDI, R8-R11 and XMM0-XMM15 to [`POISON`] (RAX holds return values).
#[inline(always)]
fn clobber() {
    // SAFETY: only writes registers the asm declares as clobbered; touches no memory and no
    // stack.
    unsafe {
        core::arch::asm!(
            "mov rcx, {p}",
            "mov rdx, {p}",
            "mov rsi, {p}",
            "mov rdi, {p}",
            "mov r8, {p}",
            "mov r9, {p}",
            "mov r10, {p}",
            "mov r11, {p}",
            "movq xmm0, {p}",
            "punpcklqdq xmm0, xmm0",
            "movdqa xmm1, xmm0",
            "movdqa xmm2, xmm0",
            "movdqa xmm3, xmm0",
            "movdqa xmm4, xmm0",
            "movdqa xmm5, xmm0",
            "movdqa xmm6, xmm0",
            "movdqa xmm7, xmm0",
            "movdqa xmm8, xmm0",
            "movdqa xmm9, xmm0",
            "movdqa xmm10, xmm0",
            "movdqa xmm11, xmm0",
            "movdqa xmm12, xmm0",
            "movdqa xmm13, xmm0",
            "movdqa xmm14, xmm0",
            "movdqa xmm15, xmm0",
            p = in(reg) POISON,
            out("rcx") _, out("rdx") _, out("rsi") _, out("rdi") _,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
            out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
            options(nomem, nostack, preserves_flags),
        );
    }
}

/// [`helper_step`], then [`clobber`].
///
/// # Safety
/// As [`helper_step`].
pub(crate) unsafe extern "sysv64" fn step(cpu: *mut CpuState, env: *mut HelperEnv<'_>) -> u32 {
    // SAFETY: the caller upholds `helper_step`'s contract.
    let r = unsafe { helper_step(cpu, env) };
    clobber();
    r
}

/// [`helper_flags`], then [`clobber`].
///
/// # Safety
/// As [`helper_flags`].
pub(crate) unsafe extern "sysv64" fn flags(cpu: *mut CpuState) {
    // SAFETY: the caller upholds `helper_flags`' contract.
    unsafe { helper_flags(cpu) };
    clobber();
}

/// [`super::lookup::lookup`], then [`clobber`].
///
/// # Safety
/// As [`super::lookup::lookup`].
pub(crate) unsafe extern "sysv64" fn lookup(
    cpu: *mut CpuState,
    env: *mut HelperEnv<'_>,
    table: *mut super::HelperTable,
) -> *const u8 {
    // SAFETY: the caller upholds `lookup`'s contract.
    let r = unsafe { super::lookup::lookup(cpu, env, table) };
    clobber();
    r
}

/// Whether `FERRO_JIT_CLOBBER=1` asks for the check.
pub(crate) fn from_env() -> bool {
    std::env::var("FERRO_JIT_CLOBBER").is_ok_and(|v| v == "1")
}
