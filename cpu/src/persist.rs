//! Save and restore of [`CpuState`] through [`base::Persist`].
//!
//! The saved shape ([`CpuStateSnapshot`]) is a plain serde struct kept apart from the
//! `#[repr(C)]` in-memory layout, so the snapshot file does not change when a field moves or a
//! cache is added. What is saved is everything architectural: the registers, RFLAGS evaluated,
//! the segment descriptor caches, GDTR/IDTR, control and debug registers, EFER, the MSRs, the
//! whole x87/SSE state (as the 512-byte FXSAVE image plus the x87 selectors and XCR0), the
//! HLT, interrupt-shadow and NMI latches, and the instruction count (the guest's virtual time).
//!
//! What is not saved, because it is a cache or belongs to one run: the lazy-flag bookkeeping
//! (folded into RFLAGS), the soft TLB, the mode key (recomputed), `budget_end` and
//! `stop_requested` (set at run entry) and `irq_pending` (a mirror of the bus's INTR line,
//! refreshed at run entry).
//!
//! Versions of the saved shape ([`CpuStateSnapshot::version`]):
//! - absent (read as 1): the first snapshot format, written by `machine` field by field; it has
//!   no NMI latches, x87 selectors or XCR0, which restore to their reset values;
//! - 2: this module; adds `nmi_pending`, `nmi_blocked`, `fcs`, `fds` and `xcr0`, and the FXSAVE
//!   image carries FOP, FIP, FDP and MXCSR_MASK.
//!
//! New fields must carry `#[serde(default)]` so every older file still loads.

use crate::state::{DescriptorTable, FpuState, Msrs, Segment};
use crate::CpuState;
use base::{Persist, PersistError};
use serde::{Deserialize, Serialize};

/// The version of [`CpuStateSnapshot`] this build writes.
pub const CPU_STATE_VERSION: u32 = 2;

fn version_one() -> u32 {
    1
}

fn xcr0_reset() -> u64 {
    1
}

/// A segment register: selector and descriptor cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentSnapshot {
    /// Selector.
    pub selector: u16,
    /// Attributes (see [`Segment::attr`]).
    pub attr: u16,
    /// Effective limit.
    pub limit: u32,
    /// Base.
    pub base: u64,
}

impl From<Segment> for SegmentSnapshot {
    fn from(s: Segment) -> Self {
        SegmentSnapshot { selector: s.selector, attr: s.attr, limit: s.limit, base: s.base }
    }
}

impl From<SegmentSnapshot> for Segment {
    fn from(s: SegmentSnapshot) -> Self {
        Segment { selector: s.selector, attr: s.attr, limit: s.limit, base: s.base }
    }
}

/// The model-specific registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsrSnapshot {
    /// IA32_STAR, LSTAR, CSTAR, FMASK.
    pub star: [u64; 4],
    /// IA32_KERNEL_GS_BASE.
    pub kernel_gs_base: u64,
    /// SYSENTER CS, ESP, EIP.
    pub sysenter: [u64; 3],
    /// IA32_APIC_BASE.
    pub apic_base: u64,
    /// IA32_PAT.
    pub pat: u64,
    /// IA32_MISC_ENABLE.
    pub misc_enable: u64,
    /// TSC offset (TSC = instruction count + offset).
    pub tsc_offset: u64,
    /// IA32_TSC_AUX.
    pub tsc_aux: u64,
    /// MTRR default type.
    pub mtrr_def_type: u64,
    /// Variable MTRRs (16 values).
    pub mtrr_var: Vec<u64>,
    /// Fixed MTRRs (11 values).
    pub mtrr_fixed: Vec<u64>,
}

/// The saved CPU (field names are those of the first snapshot format, which still loads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuStateSnapshot {
    /// Version of this shape (absent in the first format: 1).
    #[serde(default = "version_one")]
    pub version: u32,
    /// RAX..R15 (16 values).
    pub gpr: Vec<u64>,
    /// RIP.
    pub rip: u64,
    /// RFLAGS, evaluated.
    pub rflags: u64,
    /// ES, CS, SS, DS, FS, GS.
    pub seg: Vec<SegmentSnapshot>,
    /// LDTR.
    pub ldtr: SegmentSnapshot,
    /// TR.
    pub tr: SegmentSnapshot,
    /// GDTR (base, limit).
    pub gdtr: (u64, u16),
    /// IDTR (base, limit).
    pub idtr: (u64, u16),
    /// CR0, CR2, CR3, CR4, CR8.
    pub cr: [u64; 5],
    /// IA32_EFER.
    pub efer: u64,
    /// DR0..DR7 (8 values).
    pub dr: Vec<u64>,
    /// MSRs.
    pub msr: MsrSnapshot,
    /// CPL.
    pub cpl: u8,
    /// Stopped by HLT.
    pub halted: bool,
    /// STI/MOV SS shadow.
    pub interrupt_shadow: bool,
    /// An NMI was accepted and waits for delivery (version 2).
    #[serde(default)]
    pub nmi_pending: bool,
    /// NMIs are blocked until the next IRET (version 2).
    #[serde(default)]
    pub nmi_blocked: bool,
    /// Instructions retired.
    pub icount: u64,
    /// The x87/SSE state as the 512-byte FXSAVE image, 64-bit layout (Intel SDM vol. 1, table
    /// 10-2), the x87 registers in physical order as [`FpuState::st`] holds them.
    pub fxsave: Vec<u8>,
    /// Last x87 code selector (version 2).
    #[serde(default)]
    pub fcs: u16,
    /// Last x87 data selector (version 2).
    #[serde(default)]
    pub fds: u16,
    /// XCR0 (version 2; reset value 1 before).
    #[serde(default = "xcr0_reset")]
    pub xcr0: u64,
}

/// The FXSAVE image of `f`.
fn fxsave_image(f: &FpuState) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[0..2].copy_from_slice(&f.fcw.to_le_bytes());
    b[2..4].copy_from_slice(&f.fsw.to_le_bytes());
    b[4] = f.ftw;
    b[5] = f.rsvd5;
    b[6..8].copy_from_slice(&f.fop.to_le_bytes());
    b[8..16].copy_from_slice(&f.fip.to_le_bytes());
    b[16..24].copy_from_slice(&f.fdp.to_le_bytes());
    b[24..28].copy_from_slice(&f.mxcsr.to_le_bytes());
    b[28..32].copy_from_slice(&f.mxcsr_mask.to_le_bytes());
    for (i, st) in f.st.iter().enumerate() {
        b[32 + 16 * i..48 + 16 * i].copy_from_slice(st);
    }
    for (i, x) in f.xmm.iter().enumerate() {
        b[160 + 16 * i..176 + 16 * i].copy_from_slice(x);
    }
    b[416..512].copy_from_slice(&f.rsvd);
    b
}

/// The x87/SSE state from an FXSAVE image plus the fields outside it.
fn fpu_from_image(b: &[u8], s: &CpuStateSnapshot) -> Result<FpuState, PersistError> {
    let b: &[u8; 512] = b.try_into().map_err(|_| PersistError(format!("fxsave: {} bytes, expected 512", b.len())))?;
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
    let mut st = [[0u8; 16]; 8];
    for (i, r) in st.iter_mut().enumerate() {
        r.copy_from_slice(&b[32 + 16 * i..48 + 16 * i]);
    }
    let mut xmm = [[0u8; 16]; 16];
    for (i, r) in xmm.iter_mut().enumerate() {
        r.copy_from_slice(&b[160 + 16 * i..176 + 16 * i]);
    }
    let mut rsvd = [0u8; 96];
    rsvd.copy_from_slice(&b[416..512]);
    let mxcsr_mask = u32_at(28);
    let mxcsr = u32_at(24);
    if mxcsr & !mxcsr_mask != 0 {
        return Err(PersistError(format!("MXCSR {mxcsr:#x} sets bits outside MXCSR_MASK {mxcsr_mask:#x}")));
    }
    Ok(FpuState {
        fcw: u16_at(0),
        fsw: u16_at(2),
        ftw: b[4],
        rsvd5: b[5],
        fop: u16_at(6),
        fip: u64_at(8),
        fdp: u64_at(16),
        mxcsr,
        mxcsr_mask,
        st,
        xmm,
        rsvd,
        fcs: s.fcs,
        fds: s.fds,
        pad: 0,
        xcr0: s.xcr0,
    })
}

fn array<const N: usize>(v: &[u64], what: &str) -> Result<[u64; N], PersistError> {
    v.try_into().map_err(|_| PersistError(format!("{what}: {} values, expected {N}", v.len())))
}

impl Persist for CpuState {
    type State = CpuStateSnapshot;
    type ConstructorArgs = ();
    type Error = PersistError;

    fn save(&self) -> CpuStateSnapshot {
        let m = &self.msr;
        CpuStateSnapshot {
            version: CPU_STATE_VERSION,
            gpr: self.gpr.to_vec(),
            rip: self.rip,
            rflags: self.rflags(),
            seg: self.seg.iter().map(|&s| s.into()).collect(),
            ldtr: self.ldtr.into(),
            tr: self.tr.into(),
            gdtr: (self.gdtr.base, self.gdtr.limit),
            idtr: (self.idtr.base, self.idtr.limit),
            cr: [self.cr0, self.cr2, self.cr3, self.cr4, self.cr8],
            efer: self.efer,
            dr: self.dr.to_vec(),
            msr: MsrSnapshot {
                star: [m.star, m.lstar, m.cstar, m.sfmask],
                kernel_gs_base: m.kernel_gs_base,
                sysenter: [m.sysenter_cs, m.sysenter_esp, m.sysenter_eip],
                apic_base: m.apic_base,
                pat: m.pat,
                misc_enable: m.misc_enable,
                tsc_offset: m.tsc_offset,
                tsc_aux: m.tsc_aux,
                mtrr_def_type: m.mtrr_def_type,
                mtrr_var: m.mtrr_var.to_vec(),
                mtrr_fixed: m.mtrr_fixed.to_vec(),
            },
            cpl: self.cpl,
            halted: self.halted,
            interrupt_shadow: self.interrupt_shadow,
            nmi_pending: self.nmi_pending,
            nmi_blocked: self.nmi_blocked,
            icount: self.icount,
            fxsave: fxsave_image(&self.fpu),
            fcs: self.fpu.fcs,
            fds: self.fpu.fds,
            xcr0: self.fpu.xcr0,
        }
    }

    /// The CPU the snapshot describes; the caches start empty (a fresh soft TLB, the mode key
    /// recomputed). Refuses a newer version, wrong array lengths, a CPL above 3 and an MXCSR with
    /// reserved bits set.
    fn restore((): (), s: &CpuStateSnapshot) -> Result<Self, PersistError> {
        if s.version > CPU_STATE_VERSION {
            return Err(PersistError(format!(
                "CPU state version {} is newer than this build's {CPU_STATE_VERSION}",
                s.version
            )));
        }
        if s.cpl > 3 {
            return Err(PersistError(format!("CPL {}", s.cpl)));
        }
        if s.seg.len() != 6 {
            return Err(PersistError(format!("seg: {} segments, expected 6", s.seg.len())));
        }
        let m = &s.msr;
        let [star, lstar, cstar, sfmask] = m.star;
        let [sysenter_cs, sysenter_esp, sysenter_eip] = m.sysenter;
        let msr = Msrs {
            star,
            lstar,
            cstar,
            sfmask,
            kernel_gs_base: m.kernel_gs_base,
            sysenter_cs,
            sysenter_esp,
            sysenter_eip,
            apic_base: m.apic_base,
            pat: m.pat,
            misc_enable: m.misc_enable,
            tsc_offset: m.tsc_offset,
            tsc_aux: m.tsc_aux,
            mtrr_def_type: m.mtrr_def_type,
            mtrr_var: array(&m.mtrr_var, "mtrr_var")?,
            mtrr_fixed: array(&m.mtrr_fixed, "mtrr_fixed")?,
        };
        let mut c = CpuState::new();
        c.gpr = array(&s.gpr, "gpr")?;
        c.rip = s.rip;
        c.set_rflags(s.rflags);
        for (d, v) in c.seg.iter_mut().zip(&s.seg) {
            *d = (*v).into();
        }
        c.ldtr = s.ldtr.into();
        c.tr = s.tr.into();
        c.gdtr = DescriptorTable { base: s.gdtr.0, limit: s.gdtr.1 };
        c.idtr = DescriptorTable { base: s.idtr.0, limit: s.idtr.1 };
        [c.cr0, c.cr2, c.cr3, c.cr4, c.cr8] = s.cr;
        c.efer = s.efer;
        c.dr = array(&s.dr, "dr")?;
        c.msr = msr;
        c.cpl = s.cpl;
        c.halted = s.halted;
        c.interrupt_shadow = s.interrupt_shadow;
        c.nmi_pending = s.nmi_pending;
        c.nmi_blocked = s.nmi_blocked;
        c.icount = s.icount;
        c.budget_end = s.icount;
        c.fpu = fpu_from_image(&s.fxsave, s)?;
        c.refresh_mode_key();
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::rflags;

    /// A state with every saved field away from its reset value.
    fn busy() -> CpuState {
        let mut c = CpuState::new_flat64();
        for (i, r) in c.gpr.iter_mut().enumerate() {
            *r = 0x1111_1111_1111_1111u64.wrapping_mul(i as u64 + 1);
        }
        c.rip = 0xFFFF_8000_0010_2030;
        c.set_rflags(rflags::CF | rflags::ZF | rflags::IF | rflags::AC);
        c.ldtr.selector = 0x28;
        c.tr = Segment { selector: 0x30, attr: 0x8B, limit: 0x67, base: 0xFFFF_8000_0000_1000 };
        c.gdtr = DescriptorTable { base: 0x1000, limit: 0x3F };
        c.idtr = DescriptorTable { base: 0x2000, limit: 0xFFF };
        c.cr2 = 0xDEAD_B000;
        c.cr3 = 0x0040_0000;
        c.cr4 = crate::state::cr::CR4_PAE | crate::state::cr::CR4_OSFXSR;
        c.cr8 = 5;
        c.dr = [1, 2, 3, 4, 0, 0, 0xFFFF_4FF0, 0x455];
        c.msr.lstar = 0xFFFF_FFFF_8100_0000;
        c.msr.sysenter_eip = 0xC100_0000;
        c.msr.mtrr_var[15] = 0xF_FF00_0800;
        c.msr.mtrr_fixed[10] = 0x0606_0606_0606_0606;
        c.msr.tsc_aux = 7;
        c.cpl = 3;
        c.halted = true;
        c.interrupt_shadow = true;
        c.nmi_pending = true;
        c.nmi_blocked = true;
        c.icount = 123_456_789;
        c.fpu.fcw = 0x037F;
        c.fpu.fsw = 0x3800;
        c.fpu.ftw = 0x81;
        c.fpu.fop = 0x7D9;
        c.fpu.fip = 0x40_1234;
        c.fpu.fdp = 0x60_5678;
        c.fpu.fcs = 0x23;
        c.fpu.fds = 0x2B;
        c.fpu.mxcsr = 0x9FC0;
        c.fpu.st[7] = [0xAB; 16];
        c.fpu.xmm[15] = [0xCD; 16];
        c.fpu.xcr0 = 3;
        c
    }

    #[test]
    fn test_cpu_persist_roundtrip_through_json_bytes() {
        let c = busy();
        let s = c.save();
        let bytes = serde_json::to_vec(&s).unwrap();
        let back: CpuStateSnapshot = serde_json::from_slice(&bytes).unwrap();
        let r = CpuState::restore((), &back).unwrap();
        assert_eq!(r.save(), s, "save -> bytes -> restore -> save is the identity");
        // Field by field against the original, not against the snapshot.
        assert_eq!((r.gpr, r.rip, r.rflags(), r.seg, r.ldtr, r.tr), (c.gpr, c.rip, c.rflags(), c.seg, c.ldtr, c.tr));
        assert_eq!(
            (r.gdtr, r.idtr, r.cr0, r.cr2, r.cr3, r.cr4, r.cr8),
            (c.gdtr, c.idtr, c.cr0, c.cr2, c.cr3, c.cr4, c.cr8)
        );
        assert_eq!((r.efer, r.dr, r.msr, r.cpl), (c.efer, c.dr, c.msr, c.cpl));
        assert_eq!(
            (r.halted, r.interrupt_shadow, r.nmi_pending, r.nmi_blocked, r.icount),
            (true, true, true, true, 123_456_789)
        );
        assert_eq!(r.fpu, c.fpu);
        assert_eq!(r.mode_key, c.compute_mode_key());
    }

    #[test]
    fn test_cpu_persist_fxsave_image_layout_matches_the_sdm() {
        // Intel SDM vol. 1 table 10-2 (64-bit format): FCW 0, FSW 2, FTW 4, FOP 6, FIP 8, FDP 16,
        // MXCSR 24, MXCSR_MASK 28, ST0/MM0 32, XMM0 160, XMM15 400.
        let s = busy().save();
        let f = &s.fxsave;
        assert_eq!(f.len(), 512);
        assert_eq!(&f[0..2], &[0x7F, 0x03]);
        assert_eq!(&f[2..4], &[0x00, 0x38]);
        assert_eq!(f[4], 0x81);
        assert_eq!(&f[6..8], &[0xD9, 0x07]);
        assert_eq!(&f[8..16], &0x40_1234u64.to_le_bytes());
        assert_eq!(&f[16..24], &0x60_5678u64.to_le_bytes());
        assert_eq!(&f[24..28], &0x9FC0u32.to_le_bytes());
        assert_eq!(&f[28..32], &0xFFFFu32.to_le_bytes());
        assert_eq!(&f[32 + 7 * 16..48 + 7 * 16], &[0xAB; 16]);
        assert_eq!(&f[400..416], &[0xCD; 16]);
    }

    #[test]
    fn test_cpu_persist_first_format_loads_with_reset_defaults() {
        // A CPU section as the first snapshot format wrote it (no version, no NMI latches, no
        // x87 selectors or XCR0): the new fields take their reset values.
        let mut v = serde_json::to_value(busy().save()).unwrap();
        let o = v.as_object_mut().unwrap();
        for k in ["version", "nmi_pending", "nmi_blocked", "fcs", "fds", "xcr0"] {
            o.remove(k);
        }
        let s: CpuStateSnapshot = serde_json::from_value(v).unwrap();
        assert_eq!(s.version, 1);
        let r = CpuState::restore((), &s).unwrap();
        assert!(!r.nmi_pending && !r.nmi_blocked);
        assert_eq!((r.fpu.fcs, r.fpu.fds, r.fpu.xcr0), (0, 0, 1));
        assert_eq!(r.gpr, busy().gpr);
    }

    #[test]
    fn test_cpu_persist_refuses_inconsistent_states() {
        let good = busy().save();
        type Mutate = Box<dyn Fn(&mut CpuStateSnapshot)>;
        let cases: Vec<(&str, Mutate)> = vec![
            ("newer", Box::new(|s| s.version = CPU_STATE_VERSION + 1)),
            ("CPL", Box::new(|s| s.cpl = 4)),
            ("gpr", Box::new(|s| s.gpr.pop().map(drop).unwrap_or(()))),
            ("seg", Box::new(|s| s.seg.push(s.seg[0]))),
            ("dr", Box::new(|s| s.dr.clear())),
            ("mtrr_var", Box::new(|s| s.msr.mtrr_var.push(0))),
            ("fxsave", Box::new(|s| s.fxsave.truncate(511))),
            ("MXCSR", Box::new(|s| s.fxsave[26] = 0x01)),
        ];
        for (want, f) in cases {
            let mut s = good.clone();
            f(&mut s);
            let e = CpuState::restore((), &s).expect_err(want).to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
