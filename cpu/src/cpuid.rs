//! The CPUID model: ONE table ([`FEATURES`]) is the source of both the feature bits CPUID
//! reports and the check that lets an instruction of an optional extension execute
//! ([`executes`]), so the two cannot drift.
//!
//! Identity: "GenuineIntel", family 6, model 15, stepping 11 (the signature of an Intel Core 2
//! "Merom"; [`SIGNATURE`] is also what EDX holds after RESET). Only features whose every
//! instruction is implemented (and, for MMX, SSE and SSE2, every legacy form differentially
//! tested against the host CPU in `cpu/tests/differential_fpu.rs`) are advertised; an
//! extension that is partly implemented is
//! [`Level::Partial`]: its implemented instructions execute (so firmware probing an FPU with
//! FNINIT/FNSTSW works) but CPUID does not claim it (no extension is partial today).

use iced_x86::CpuidFeature;

/// CPUID.1:EAX and the RESET value of EDX: stepping 11, model 15, family 6, type 0.
pub const SIGNATURE: u32 = 0x0000_06FB;

/// The highest basic leaf (0x16: the processor frequency leaf).
pub const MAX_BASIC_LEAF: u32 = 0x16;

/// The TSC and the local APIC timer tick once per nanosecond of virtual time: 1 GHz. Leaves
/// 0x15 and 0x16 (and the hypervisor timing leaf 0x40000010) say so, so a guest kernel takes
/// the frequencies from CPUID instead of calibrating them against another timer.
pub const TSC_HZ: u32 = 1_000_000_000;

/// IA32_ARCH_CAPABILITIES (MSR 0x10A), enumerated by CPUID.(EAX=7,ECX=0):EDX[29]: the
/// "not affected" bits of an emulated CPU, which has no speculative side channels for these
/// mitigations to close. RDCL_NO (Meltdown, so no page-table isolation), SKIP_L1DFL_VMENTRY,
/// SSB_NO, MDS_NO, PSCHANGE_MC_NO, TAA_NO, SBDR_SSDP_NO, FBSDP_NO, PSDP_NO, BHI_NO, PBRSB_NO,
/// GDS_NO, RFDS_NO.
pub const ARCH_CAPABILITIES: u64 = (1 << 0)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 8)
    | (1 << 13)
    | (1 << 14)
    | (1 << 15)
    | (1 << 20)
    | (1 << 24)
    | (1 << 26)
    | (1 << 27);

/// The hypervisor vendor leaf's signature (CPUID 0x40000000 EBX, ECX, EDX).
pub const HYPERVISOR_SIGNATURE: &[u8; 12] = b"FerrovisorVM";

/// Which register of a leaf a feature bit is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    /// EAX.
    Eax,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

/// How far a feature is implemented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Fully implemented: advertised, and its instructions execute.
    Advertised,
    /// Partly implemented: not advertised; the implemented instructions execute.
    Partial,
    /// Not implemented: not advertised; its instructions raise #UD.
    Absent,
}

/// One feature bit.
#[derive(Debug, Clone, Copy)]
pub struct Feature {
    /// CPUID leaf.
    pub leaf: u32,
    /// Output register.
    pub reg: Reg,
    /// Bit number.
    pub bit: u32,
    /// iced-x86's name for the instructions this bit gates (None: no instruction, or the
    /// instructions are gated elsewhere).
    pub iced: Option<CpuidFeature>,
    /// Implementation level.
    pub level: Level,
}

const fn f(leaf: u32, reg: Reg, bit: u32, iced: Option<CpuidFeature>, level: Level) -> Feature {
    Feature { leaf, reg, bit, iced, level }
}

use CpuidFeature as C;
use Level::{Absent, Advertised};
use Reg::{Eax, Ecx, Edx};

/// THE table.
pub const FEATURES: &[Feature] = &[
    // Leaf 1 EDX.
    f(1, Edx, 0, Some(C::FPU), Advertised),
    f(1, Edx, 3, None, Advertised),           // PSE
    f(1, Edx, 4, Some(C::TSC), Advertised),   // TSC
    f(1, Edx, 5, Some(C::MSR), Advertised),   // MSR
    f(1, Edx, 6, None, Advertised),           // PAE
    f(1, Edx, 8, Some(C::CX8), Advertised),   // CX8
    f(1, Edx, 9, None, Advertised),           // APIC (cleared while IA32_APIC_BASE disables it)
    f(1, Edx, 13, None, Advertised),          // PGE
    f(1, Edx, 15, Some(C::CMOV), Advertised), // CMOV
    f(1, Edx, 16, None, Advertised),          // PAT
    f(1, Edx, 23, Some(C::MMX), Advertised),  // MMX
    f(1, Edx, 24, Some(C::FXSR), Advertised), // FXSAVE/FXRSTOR
    f(1, Edx, 25, Some(C::SSE), Advertised),  // SSE
    f(1, Edx, 26, Some(C::SSE2), Advertised), // SSE2
    // Leaf 1 ECX.
    f(1, Ecx, 0, Some(C::SSE3), Advertised),        // SSE3
    f(1, Ecx, 9, Some(C::SSSE3), Advertised),       // SSSE3
    f(1, Ecx, 13, Some(C::CMPXCHG16B), Advertised), // CX16
    f(1, Ecx, 19, Some(C::SSE4_1), Advertised),     // SSE4.1
    f(1, Ecx, 20, Some(C::SSE4_2), Advertised),     // SSE4.2
    f(1, Ecx, 23, Some(C::POPCNT), Advertised),     // POPCNT
    f(1, Ecx, 24, None, Advertised),                // TSC-deadline mode of the local APIC timer
    f(1, Ecx, 31, None, Advertised),                // running under a hypervisor
    f(7, Edx, 29, None, Advertised),                // IA32_ARCH_CAPABILITIES
    f(1, Ecx, 26, Some(C::XSAVE), Advertised),      // XSAVE/XRSTOR/XGETBV/XSETBV
    // Leaf 0xD subleaf 1 EAX.
    f(0xD, Eax, 0, Some(C::XSAVEOPT), Advertised), // XSAVEOPT
    // Leaf 0x8000_0001.
    f(0x8000_0001, Ecx, 0, None, Advertised), // LAHF/SAHF in 64-bit mode
    f(0x8000_0001, Ecx, 5, Some(C::LZCNT), Advertised), // ABM (LZCNT)
    f(0x8000_0001, Edx, 11, Some(C::SYSCALL), Advertised),
    f(0x8000_0001, Edx, 20, None, Advertised), // NX
    f(0x8000_0001, Edx, 29, None, Advertised), // LM
];

/// The advertised bits of `leaf` in register `reg`.
pub const fn bits(leaf: u32, reg: Reg) -> u32 {
    let mut v = 0;
    let mut n = 0;
    while n < FEATURES.len() {
        let e = &FEATURES[n];
        if e.leaf == leaf && e.reg as u32 == reg as u32 && matches!(e.level, Advertised) {
            v |= 1 << e.bit;
        }
        n += 1;
    }
    v
}

/// Leaf 1 EDX feature bits advertised.
pub const LEAF1_EDX: u32 = bits(1, Edx);
/// Leaf 1 ECX feature bits advertised (OSXSAVE, bit 27, is added from CR4 at run time).
pub const LEAF1_ECX: u32 = bits(1, Ecx);

/// The implementation level of the table entry for `feat`; features not in the table (the
/// base ISA: 8086, 386, X64 ...) are implemented.
pub fn level(feat: CpuidFeature) -> Level {
    for e in FEATURES {
        if e.iced == Some(feat) {
            return e.level;
        }
    }
    match feat {
        // Families of the x87 with their own iced names go with the FPU bit.
        C::FPU287 | C::FPU387 | C::FPU287XL_ONLY | C::FPU387SL_ONLY => level(C::FPU),
        _ => Advertised,
    }
}

/// Whether an instruction needing `feats` (iced-x86's `Instruction::cpuid_features`) may
/// execute: every feature it needs is at least partly implemented.
pub fn executes(feats: &[CpuidFeature]) -> bool {
    feats.iter().all(|&f| level(f) != Absent)
}

/// Bit 27 of CPUID.1:ECX, OSXSAVE (mirrors CR4.OSXSAVE).
pub const LEAF1_ECX_OSXSAVE: u32 = 1 << 27;

/// Executes CPUID for leaf `eax`, subleaf `ecx`: (EAX, EBX, ECX, EDX). `cr4` supplies the
/// OSXSAVE bit, `xcr0` leaf 0xD.
pub fn cpuid_with(eax: u32, ecx: u32, cr4: u64, xcr0: u64) -> (u32, u32, u32, u32) {
    cpuid_full(eax, ecx, cr4, xcr0, true)
}

/// [`cpuid_with`], with `apic` saying whether the local APIC is enabled (IA32_APIC_BASE bit 11):
/// CPUID.1:EDX.APIC follows it, as on hardware.
pub fn cpuid_full(eax: u32, ecx: u32, cr4: u64, xcr0: u64, apic: bool) -> (u32, u32, u32, u32) {
    let text = |s: &[u8; 4]| u32::from_le_bytes(*s);
    let xsave = bits(1, Ecx) & (1 << 26) != 0;
    match eax {
        0 => (MAX_BASIC_LEAF, text(b"Genu"), text(b"ntel"), text(b"ineI")),
        1 => {
            let mut c = LEAF1_ECX;
            if xsave && cr4 & crate::state::cr::CR4_OSXSAVE != 0 {
                c |= LEAF1_ECX_OSXSAVE;
            }
            let d = if apic { LEAF1_EDX } else { LEAF1_EDX & !(1 << 9) };
            (SIGNATURE, 0x0001_0800, c, d)
        }
        7 if ecx == 0 => (0, 0, 0, bits(7, Edx)),
        7 => (0, 0, 0, 0),
        0x15 => (1, 1, TSC_HZ, 0),
        0x16 => (TSC_HZ / 1_000_000, TSC_HZ / 1_000_000, TSC_HZ / 1_000_000, 0),
        0x4000_0000 => {
            let w = |k: usize| {
                let b = HYPERVISOR_SIGNATURE;
                u32::from_le_bytes([b[k], b[k + 1], b[k + 2], b[k + 3]])
            };
            (0x4000_0010, w(0), w(4), w(8))
        }
        // The timing leaf (VMware's layout): TSC and local APIC timer frequencies in kHz.
        0x4000_0010 => (TSC_HZ / 1000, TSC_HZ / 1000, 0, 0),
        0xD if xsave => match ecx {
            // Supported components x87|SSE; size for the enabled ones and for all.
            0 => (3, xsave_size(xcr0), 576, 0),
            1 => (bits(0xD, Eax), 0, 0, 0),
            _ => (0, 0, 0, 0),
        },
        0x8000_0000 => (0x8000_0008, 0, 0, 0),
        0x8000_0001 => (0, 0, bits(0x8000_0001, Ecx), bits(0x8000_0001, Edx)),
        0x8000_0002..=0x8000_0004 => {
            let name = *b"Ferrovisor virtual CPU\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
            let off = ((eax - 0x8000_0002) * 16) as usize;
            let w =
                |k: usize| u32::from_le_bytes([name[off + k], name[off + k + 1], name[off + k + 2], name[off + k + 3]]);
            (w(0), w(4), w(8), w(12))
        }
        0x8000_0008 => (mmu::MAX_PHYS_BITS | (48 << 8), 0, 0, 0),
        _ => (0, 0, 0, 0),
    }
}

/// The XSAVE area size for the components in `xcr0` (legacy region + header; x87 and SSE
/// live in the legacy region).
pub fn xsave_size(xcr0: u64) -> u32 {
    let _ = xcr0;
    576
}

/// CPUID with CR4.OSXSAVE clear and XCR0 = x87 (the state after RESET).
pub fn cpuid(eax: u32, ecx: u32) -> (u32, u32, u32, u32) {
    cpuid_with(eax, ecx, 0, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cpuid_signature_is_family6_model15() {
        let (a, ..) = cpuid(1, 0);
        assert_eq!((a >> 8) & 0xF, 6, "family");
        assert_eq!((a >> 4) & 0xF, 15, "model");
        assert_eq!(a & 0xF, 11, "stepping");
        assert_eq!(crate::state::CpuState::new().gpr[2], u64::from(a));
    }

    #[test]
    fn test_cpuid_advertises_only_advertised_level() {
        let (_, _, c, d) = cpuid(1, 0);
        for e in FEATURES {
            let v = if e.reg == Reg::Ecx { c } else { d };
            if e.leaf == 1 {
                assert_eq!(v & (1 << e.bit) != 0, e.level == Level::Advertised, "leaf 1 bit {}", e.bit);
            }
        }
    }

    /// What a Linux 6.1 guest reads to skip calibration and mitigations (issue 8): the TSC
    /// crystal leaf (SDM vol. 2A, CPUID leaf 15H: TSC Hz = ECX * EBX / EAX), the frequency
    /// leaf, ARCH_CAPABILITIES enumeration (leaf 7 EDX[29]), the hypervisor bit, TSC-deadline,
    /// and the APIC bit following IA32_APIC_BASE's global enable.
    #[test]
    fn test_cpuid_linux_timing_and_capability_leaves() {
        assert!(cpuid(0, 0).0 >= 0x16);
        let (a, b, c, _) = cpuid(0x15, 0);
        assert_eq!(u64::from(c) * u64::from(b) / u64::from(a), 1_000_000_000);
        assert_eq!(cpuid(0x16, 0).0, 1000);
        assert_ne!(cpuid(7, 0).3 & (1 << 29), 0);
        assert_eq!(ARCH_CAPABILITIES & 1, 1, "RDCL_NO: no page-table isolation needed");
        let (_, _, c1, d1) = cpuid(1, 0);
        assert_ne!(c1 & (1 << 31), 0, "hypervisor");
        assert_ne!(c1 & (1 << 24), 0, "TSC-deadline");
        assert_ne!(d1 & (1 << 9), 0, "APIC");
        assert_eq!(cpuid_full(1, 0, 0, 1, false).3 & (1 << 9), 0, "APIC globally disabled");
        let (max, b, c, d) = cpuid(0x4000_0000, 0);
        assert!(max >= 0x4000_0010);
        let sig: Vec<u8> = [b, c, d].iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(&sig, HYPERVISOR_SIGNATURE);
    }
}
