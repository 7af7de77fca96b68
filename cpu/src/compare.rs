//! Comparison of two CPUs' architectural state, field by field (lockstep of two engines).
//!
//! [`arch_eq`] is the hot path: plain comparisons, no formatting. [`arch_diff`] names what
//! differs (`rax: 0x1 vs 0x2`), for the report after a difference. Caches and engine
//! bookkeeping are left out: the TLB, the lazy-flags representation (RFLAGS is compared as
//! evaluated), the budget, the stop request and the mode key.

use crate::state::{CpuState, FpuState, Msrs};

/// One differing field: its name and both values, formatted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDiff {
    /// The field (`rax`, `cs`, `cr3`, `fpu.xmm3`, ...).
    pub field: String,
    /// Its value in the first state.
    pub a: String,
    /// Its value in the second state.
    pub b: String,
}

impl std::fmt::Display for FieldDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} vs {}", self.field, self.a, self.b)
    }
}

/// Names of the general registers in encoding order.
pub const GPR_NAMES: [&str; 16] =
    ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];
const SEG_NAMES: [&str; 6] = ["es", "cs", "ss", "ds", "fs", "gs"];

/// Whether two slices of words are equal, without a library call (the comparison runs at
/// every block boundary; `==` on arrays calls `memcmp`).
#[inline]
fn same_words(a: &[u64], b: &[u64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether two byte slices of a length divisible by 8 are equal (as [`same_words`]).
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8]));
    a.len() == b.len()
        && a.len().is_multiple_of(8)
        && a.chunks_exact(8).zip(b.chunks_exact(8)).fold(0, |acc, (x, y)| acc | (word(x) ^ word(y))) == 0
}

#[inline]
fn same_msrs(a: &Msrs, b: &Msrs) -> bool {
    same_words(
        &[
            a.star,
            a.lstar,
            a.cstar,
            a.sfmask,
            a.kernel_gs_base,
            a.sysenter_cs,
            a.sysenter_esp,
            a.sysenter_eip,
            a.apic_base,
            a.pat,
            a.misc_enable,
            a.tsc_offset,
            a.tsc_aux,
            a.mtrr_def_type,
        ],
        &[
            b.star,
            b.lstar,
            b.cstar,
            b.sfmask,
            b.kernel_gs_base,
            b.sysenter_cs,
            b.sysenter_esp,
            b.sysenter_eip,
            b.apic_base,
            b.pat,
            b.misc_enable,
            b.tsc_offset,
            b.tsc_aux,
            b.mtrr_def_type,
        ],
    ) && same_words(&a.mtrr_var, &b.mtrr_var)
        && same_words(&a.mtrr_fixed, &b.mtrr_fixed)
}

#[inline]
fn same_fpu(a: &FpuState, b: &FpuState) -> bool {
    a.fcw == b.fcw
        && a.fsw == b.fsw
        && a.ftw == b.ftw
        && a.rsvd5 == b.rsvd5
        && a.fop == b.fop
        && a.fip == b.fip
        && a.fdp == b.fdp
        && a.mxcsr == b.mxcsr
        && a.mxcsr_mask == b.mxcsr_mask
        && a.fcs == b.fcs
        && a.fds == b.fds
        && a.pad == b.pad
        && a.xcr0 == b.xcr0
        && same_bytes(a.st.as_flattened(), b.st.as_flattened())
        && same_bytes(a.xmm.as_flattened(), b.xmm.as_flattened())
        && same_bytes(&a.rsvd, &b.rsvd)
}

/// Whether two CPUs' architectural states are equal (exactly when [`arch_diff`] finds
/// nothing).
pub fn arch_eq(a: &CpuState, b: &CpuState) -> bool {
    a.icount == b.icount
        && a.rip == b.rip
        && same_words(&a.gpr, &b.gpr)
        && a.rflags() == b.rflags()
        && a.seg == b.seg
        && same_words(&[a.cr0, a.cr2, a.cr3, a.cr4, a.cr8, a.efer], &[b.cr0, b.cr2, b.cr3, b.cr4, b.cr8, b.efer])
        && a.cpl == b.cpl
        && a.halted == b.halted
        && a.interrupt_shadow == b.interrupt_shadow
        && a.irq_pending == b.irq_pending
        && a.nmi_pending == b.nmi_pending
        && a.nmi_blocked == b.nmi_blocked
        && a.ldtr == b.ldtr
        && a.tr == b.tr
        && a.gdtr == b.gdtr
        && a.idtr == b.idtr
        && same_words(&a.dr, &b.dr)
        && same_msrs(&a.msr, &b.msr)
        && same_fpu(&a.fpu, &b.fpu)
}

/// Every architectural field that differs between `a` and `b`, named, in a fixed order
/// (empty exactly when [`arch_eq`] holds).
pub fn arch_diff(a: &CpuState, b: &CpuState) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    let mut hex = |field: &str, x: u64, y: u64| {
        if x != y {
            out.push(FieldDiff { field: field.into(), a: format!("{x:#x}"), b: format!("{y:#x}") });
        }
    };
    hex("icount", a.icount, b.icount);
    hex("rip", a.rip, b.rip);
    for (i, n) in GPR_NAMES.iter().enumerate() {
        hex(n, a.gpr[i], b.gpr[i]);
    }
    hex("rflags", a.rflags(), b.rflags());
    hex("cr0", a.cr0, b.cr0);
    hex("cr2", a.cr2, b.cr2);
    hex("cr3", a.cr3, b.cr3);
    hex("cr4", a.cr4, b.cr4);
    hex("cr8", a.cr8, b.cr8);
    hex("efer", a.efer, b.efer);
    hex("cpl", a.cpl.into(), b.cpl.into());
    hex("halted", a.halted.into(), b.halted.into());
    hex("interrupt_shadow", a.interrupt_shadow.into(), b.interrupt_shadow.into());
    hex("irq_pending", a.irq_pending.into(), b.irq_pending.into());
    hex("nmi_pending", a.nmi_pending.into(), b.nmi_pending.into());
    hex("nmi_blocked", a.nmi_blocked.into(), b.nmi_blocked.into());
    for i in 0..8 {
        hex(&format!("dr{i}"), a.dr[i], b.dr[i]);
    }
    let fpu = (&a.fpu, &b.fpu);
    hex("fpu.fcw", fpu.0.fcw.into(), fpu.1.fcw.into());
    hex("fpu.fsw", fpu.0.fsw.into(), fpu.1.fsw.into());
    hex("fpu.ftw", fpu.0.ftw.into(), fpu.1.ftw.into());
    hex("fpu.fop", fpu.0.fop.into(), fpu.1.fop.into());
    hex("fpu.fip", fpu.0.fip, fpu.1.fip);
    hex("fpu.fdp", fpu.0.fdp, fpu.1.fdp);
    hex("fpu.fcs", fpu.0.fcs.into(), fpu.1.fcs.into());
    hex("fpu.fds", fpu.0.fds.into(), fpu.1.fds.into());
    hex("fpu.mxcsr", fpu.0.mxcsr.into(), fpu.1.mxcsr.into());
    hex("fpu.mxcsr_mask", fpu.0.mxcsr_mask.into(), fpu.1.mxcsr_mask.into());
    hex("fpu.xcr0", fpu.0.xcr0, fpu.1.xcr0);
    let mut dbg = |field: String, x: &dyn std::fmt::Debug, y: &dyn std::fmt::Debug, same: bool| {
        if !same {
            out.push(FieldDiff { field, a: format!("{x:x?}"), b: format!("{y:x?}") });
        }
    };
    for (i, n) in SEG_NAMES.iter().enumerate() {
        dbg((*n).into(), &a.seg[i], &b.seg[i], a.seg[i] == b.seg[i]);
    }
    dbg("ldtr".into(), &a.ldtr, &b.ldtr, a.ldtr == b.ldtr);
    dbg("tr".into(), &a.tr, &b.tr, a.tr == b.tr);
    dbg("gdtr".into(), &a.gdtr, &b.gdtr, a.gdtr == b.gdtr);
    dbg("idtr".into(), &a.idtr, &b.idtr, a.idtr == b.idtr);
    dbg("msr".into(), &a.msr, &b.msr, a.msr == b.msr);
    for i in 0..8 {
        dbg(format!("fpu.st{i}"), &fpu.0.st[i], &fpu.1.st[i], fpu.0.st[i] == fpu.1.st[i]);
    }
    for i in 0..16 {
        dbg(format!("fpu.xmm{i}"), &fpu.0.xmm[i], &fpu.1.xmm[i], fpu.0.xmm[i] == fpu.1.xmm[i]);
    }
    let (ra, rb) = ((fpu.0.rsvd, fpu.0.rsvd5, fpu.0.pad), (fpu.1.rsvd, fpu.1.rsvd5, fpu.1.pad));
    dbg("fpu.reserved".into(), &ra, &rb, ra == rb);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_arch_diff_names_fields_and_agrees_with_arch_eq() {
        let a = CpuState::new();
        let mut b = a.clone();
        assert!(arch_eq(&a, &b) && arch_diff(&a, &b).is_empty());
        // Engine bookkeeping is not architectural.
        b.budget_end = 99;
        b.mode_key ^= 1;
        b.tlb.flush_all();
        assert!(arch_eq(&a, &b) && arch_diff(&a, &b).is_empty());
        b.gpr[0] = 1;
        b.fpu.xmm[3][0] = 7;
        b.seg[1].selector = 8;
        assert!(!arch_eq(&a, &b));
        let d: Vec<String> = arch_diff(&a, &b).iter().map(ToString::to_string).collect();
        assert_eq!(d[0], "rax: 0x0 vs 0x1");
        assert!(d.iter().any(|s| s.starts_with("cs: ")), "{d:?}");
        assert!(d.iter().any(|s| s.starts_with("fpu.xmm3: ")), "{d:?}");
        assert_eq!(d.len(), 3, "{d:?}");
    }

    #[test]
    fn test_arch_eq_sees_every_fpu_and_msr_byte() {
        let a = CpuState::new();
        // Every byte of the FPU image and every MSR word, one at a time.
        for i in 0..core::mem::size_of::<FpuState>() {
            let mut b = a.clone();
            // SAFETY: FpuState is plain old data (repr(C), integers and byte arrays); `i` is
            // within it.
            let bytes = unsafe {
                core::slice::from_raw_parts_mut(
                    (&mut b.fpu as *mut FpuState).cast::<u8>(),
                    core::mem::size_of::<FpuState>(),
                )
            };
            bytes[i] ^= 0x10;
            let padding = a.fpu == b.fpu;
            assert_eq!(arch_eq(&a, &b), padding, "FPU byte {i}");
            assert_eq!(arch_diff(&a, &b).is_empty(), padding, "FPU byte {i}");
        }
        for i in 0..core::mem::size_of::<Msrs>() / 8 {
            let mut b = a.clone();
            // SAFETY: Msrs is a repr(C) struct of u64 fields and u64 arrays only; `i` is within it.
            let words = unsafe {
                core::slice::from_raw_parts_mut(
                    (&mut b.msr as *mut Msrs).cast::<u64>(),
                    core::mem::size_of::<Msrs>() / 8,
                )
            };
            words[i] ^= 1;
            assert!(!arch_eq(&a, &b), "MSR word {i}");
            assert!(!arch_diff(&a, &b).is_empty(), "MSR word {i}");
        }
    }
}
