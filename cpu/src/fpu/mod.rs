//! The x87 FPU, FXSAVE/FXRSTOR, XSAVE/XRSTOR, XGETBV/XSETBV, LDMXCSR/STMXCSR and the
//! device-availability rules (CR0.EM/MP/TS/NE, CR4.OSFXSR/OSXSAVE) shared with the SIMD code.
//!
//! Arithmetic is exact integer software floating point ([`soft`]), never host floating point.

pub mod soft;
mod trans;
mod x87;

use crate::exception::Exception;
use crate::interp::{Cx, Stop};
use crate::state::{cr, CpuMode, FpuState, SegReg, MXCSR_MASK};
use iced_x86::{Instruction, Mnemonic, Register};

pub(crate) type R<T> = Result<T, Stop>;

/// x87 status word bits.
pub mod fsw {
    /// Stack fault.
    pub const SF: u16 = 1 << 6;
    /// Error summary.
    pub const ES: u16 = 1 << 7;
    /// Condition code C0.
    pub const C0: u16 = 1 << 8;
    /// C1.
    pub const C1: u16 = 1 << 9;
    /// C2.
    pub const C2: u16 = 1 << 10;
    /// C3.
    pub const C3: u16 = 1 << 14;
    /// Busy.
    pub const B: u16 = 1 << 15;
    /// TOP field.
    pub const TOP: u16 = 7 << 11;
}

/// Which availability rule an instruction follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// x87 floating point: EM or TS -> #NM.
    X87,
    /// WAIT/FWAIT: TS and MP -> #NM.
    Wait,
    /// SSE*: EM or !OSFXSR -> #UD, TS -> #NM.
    Sse,
    /// FXSAVE/FXRSTOR: EM or TS -> #NM.
    Fxsr,
    /// XSAVE family: !OSXSAVE -> #UD, TS -> #NM.
    Xsave,
    /// XGETBV/XSETBV: !OSXSAVE -> #UD.
    Xcr,
}

/// The CR0/CR4 checks of an instruction class (SDM vol. 3A table 2-2 and vol. 2 chapter 2).
pub(crate) fn check_available(cr0: u64, cr4: u64, class: Class) -> Result<(), Exception> {
    let em = cr0 & cr::CR0_EM != 0;
    let ts = cr0 & cr::CR0_TS != 0;
    let mp = cr0 & cr::CR0_MP != 0;
    match class {
        Class::X87 | Class::Fxsr => {
            if em || ts {
                return Err(Exception::DeviceNotAvailable);
            }
        }
        Class::Wait => {
            if ts && mp {
                return Err(Exception::DeviceNotAvailable);
            }
        }
        Class::Sse => {
            if em || cr4 & cr::CR4_OSFXSR == 0 {
                return Err(Exception::InvalidOpcode);
            }
            if ts {
                return Err(Exception::DeviceNotAvailable);
            }
        }
        Class::Xsave => {
            if cr4 & cr::CR4_OSXSAVE == 0 {
                return Err(Exception::InvalidOpcode);
            }
            if ts {
                return Err(Exception::DeviceNotAvailable);
            }
        }
        Class::Xcr => {
            if cr4 & cr::CR4_OSXSAVE == 0 {
                return Err(Exception::InvalidOpcode);
            }
        }
    }
    Ok(())
}

/// Reads a 32/64-bit general-purpose register (iced register of any width; 8/16-bit reads
/// are masked).
pub(crate) fn gpr(cpu: &crate::state::CpuState, r: Register) -> u64 {
    let full = r.full_register();
    let idx = full as usize - Register::RAX as usize;
    let v = cpu.gpr[idx & 15];
    match r.size() {
        8 => v,
        4 => v & 0xFFFF_FFFF,
        2 => v & 0xFFFF,
        _ => v & 0xFF,
    }
}

/// Writes a 32/64-bit GPR (32-bit writes zero-extend; 16-bit writes merge).
pub(crate) fn set_gpr(cpu: &mut crate::state::CpuState, r: Register, v: u64) {
    let full = r.full_register();
    let idx = (full as usize - Register::RAX as usize) & 15;
    match r.size() {
        8 => cpu.gpr[idx] = v,
        4 => cpu.gpr[idx] = v & 0xFFFF_FFFF,
        2 => cpu.gpr[idx] = (cpu.gpr[idx] & !0xFFFF) | (v & 0xFFFF),
        _ => cpu.gpr[idx] = (cpu.gpr[idx] & !0xFF) | (v & 0xFF),
    }
}

impl FpuState {
    /// The full 16-bit tag word, computed from the abridged tags and the register contents
    /// (as FSTENV does): 00 valid, 01 zero, 10 special, 11 empty, per physical register.
    pub fn full_tag_word(&self) -> u16 {
        let mut t = 0u16;
        for r in 0..8 {
            let tag = if self.ftw & (1 << r) == 0 {
                3
            } else {
                let x = soft::X80::from_bytes(&self.st[r][..10]);
                let e = x.se & 0x7FFF;
                if e == 0x7FFF {
                    2
                } else if e == 0 {
                    if x.sig == 0 {
                        1
                    } else {
                        2
                    }
                } else if x.sig >> 63 == 0 {
                    2
                } else {
                    0
                }
            };
            t |= tag << (2 * r);
        }
        t
    }

    /// Sets the abridged tags from a full tag word.
    pub fn set_full_tag_word(&mut self, t: u16) {
        let mut a = 0u8;
        for r in 0..8 {
            if (t >> (2 * r)) & 3 != 3 {
                a |= 1 << r;
            }
        }
        self.ftw = a;
    }

    /// FNINIT.
    pub fn init(&mut self) {
        self.fcw = 0x037F;
        self.fsw = 0;
        self.ftw = 0;
        self.fop = 0;
        self.fip = 0;
        self.fdp = 0;
        self.fcs = 0;
        self.fds = 0;
    }

    /// The 512-byte FXSAVE image: `rex_w` selects the 64-bit FIP/FDP layout; `with_xmm`
    /// says whether MXCSR and the XMM registers are part of it; `nxmm` is 16 in 64-bit mode.
    pub fn fxsave_image(&self, rex_w: bool, with_xmm: bool, nxmm: usize) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..2].copy_from_slice(&self.fcw.to_le_bytes());
        b[2..4].copy_from_slice(&self.fsw.to_le_bytes());
        b[4] = self.ftw;
        b[6..8].copy_from_slice(&self.fop.to_le_bytes());
        if rex_w {
            b[8..16].copy_from_slice(&self.fip.to_le_bytes());
            b[16..24].copy_from_slice(&self.fdp.to_le_bytes());
        } else {
            b[8..12].copy_from_slice(&(self.fip as u32).to_le_bytes());
            b[12..14].copy_from_slice(&self.fcs.to_le_bytes());
            b[16..20].copy_from_slice(&(self.fdp as u32).to_le_bytes());
            b[20..22].copy_from_slice(&self.fds.to_le_bytes());
        }
        if with_xmm {
            b[24..28].copy_from_slice(&self.mxcsr.to_le_bytes());
        }
        b[28..32].copy_from_slice(&self.mxcsr_mask.to_le_bytes());
        let top = usize::from((self.fsw >> 11) & 7);
        for i in 0..8 {
            let p = (top + i) & 7;
            b[32 + 16 * i..32 + 16 * i + 10].copy_from_slice(&self.st[p][..10]);
        }
        if with_xmm {
            for i in 0..nxmm {
                b[160 + 16 * i..176 + 16 * i].copy_from_slice(&self.xmm[i]);
            }
        }
        b
    }

    /// Loads an FXSAVE image (the caller has checked MXCSR's reserved bits).
    pub fn fxrstor_image(&mut self, b: &[u8; 512], rex_w: bool, with_xmm: bool, nxmm: usize) {
        let w = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let d = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let q = |o: usize| u64::from(d(o)) | (u64::from(d(o + 4)) << 32);
        // Reserved control-word bits read as the hardware keeps them (bit 6 set, 7 and 13-15 clear).
        self.fcw = (w(0) & 0x1F3F) | 0x40;
        self.fsw = w(2);
        self.ftw = b[4];
        self.fop = w(6) & 0x7FF;
        if rex_w {
            self.fip = q(8);
            self.fdp = q(16);
        } else {
            self.fip = u64::from(d(8));
            self.fcs = w(12);
            self.fdp = u64::from(d(16));
            self.fds = w(20);
        }
        if with_xmm {
            self.mxcsr = d(24);
        }
        let top = usize::from((self.fsw >> 11) & 7);
        for i in 0..8 {
            let p = (top + i) & 7;
            self.st[p][..10].copy_from_slice(&b[32 + 16 * i..32 + 16 * i + 10]);
            self.st[p][10..].fill(0);
        }
        if with_xmm {
            for i in 0..nxmm {
                self.xmm[i].copy_from_slice(&b[160 + 16 * i..176 + 16 * i]);
            }
        }
        // ES and B follow the unmasked exception flags.
        self.update_es();
    }

    /// Recomputes FSW.ES and FSW.B from the exception flags and masks.
    pub fn update_es(&mut self) {
        let unmasked = self.fsw & !self.fcw & 0x3F;
        if unmasked != 0 {
            self.fsw |= fsw::ES | fsw::B;
        } else {
            self.fsw &= !(fsw::ES | fsw::B);
        }
    }
}

impl Cx<'_> {
    /// Reads `out.len()` bytes at `seg:off` (one limit check for the whole range).
    pub(crate) fn read_bytes(&mut self, seg: SegReg, off: u64, out: &mut [u8]) -> Result<(), Exception> {
        let lin = self.linear(seg, off, out.len() as u64)?;
        let wrap = |a: u64, m: CpuMode| if m == CpuMode::Long64 { a } else { a & 0xFFFF_FFFF };
        let mut n = 0;
        while n < out.len() {
            let chunk = (out.len() - n).min(8);
            let chunk = if chunk >= 8 {
                8
            } else if chunk >= 4 {
                4
            } else if chunk >= 2 {
                2
            } else {
                1
            };
            let v = self.read_lin(wrap(lin.wrapping_add(n as u64), self.mode), chunk)?;
            out[n..n + chunk].copy_from_slice(&v.to_le_bytes()[..chunk]);
            n += chunk;
        }
        Ok(())
    }

    /// Writes `data` at `seg:off`, checking every page is writable before the first byte.
    pub(crate) fn write_bytes(&mut self, seg: SegReg, off: u64, data: &[u8]) -> Result<(), Exception> {
        let lin = self.linear(seg, off, data.len() as u64)?;
        self.probe_write(lin, data.len())?;
        let wrap = |a: u64, m: CpuMode| if m == CpuMode::Long64 { a } else { a & 0xFFFF_FFFF };
        let mut n = 0;
        while n < data.len() {
            let rem = data.len() - n;
            let chunk = if rem >= 8 {
                8
            } else if rem >= 4 {
                4
            } else if rem >= 2 {
                2
            } else {
                1
            };
            let mut v = [0u8; 8];
            v[..chunk].copy_from_slice(&data[n..n + chunk]);
            self.write_lin(wrap(lin.wrapping_add(n as u64), self.mode), chunk, u64::from_le_bytes(v))?;
            n += chunk;
        }
        Ok(())
    }

    /// The memory operand of `i` as (segment, offset).
    pub(crate) fn mem_op(&self, i: &Instruction) -> (SegReg, u64) {
        let s = match i.memory_segment() {
            Register::ES => SegReg::Es,
            Register::CS => SegReg::Cs,
            Register::SS => SegReg::Ss,
            Register::FS => SegReg::Fs,
            Register::GS => SegReg::Gs,
            _ => SegReg::Ds,
        };
        (s, self.ea(i))
    }

    /// Entry for every x87, MMX, SSE and XSAVE-family instruction. `None`: not ours.
    pub(crate) fn exec_fpu_simd(&mut self, i: &Instruction) -> Option<R<()>> {
        use iced_x86::CpuidFeature as C;
        let feats = i.cpuid_features();
        let ours = feats.iter().any(|f| {
            matches!(
                f,
                C::FPU
                    | C::FPU287
                    | C::FPU387
                    | C::FPU287XL_ONLY
                    | C::FPU387SL_ONLY
                    | C::MMX
                    | C::SSE
                    | C::SSE2
                    | C::SSE3
                    | C::SSSE3
                    | C::SSE4_1
                    | C::SSE4_2
                    | C::FXSR
                    | C::XSAVE
                    | C::XSAVEOPT
            )
        }) || i.mnemonic() == Mnemonic::Wait;
        if !ours {
            return None;
        }
        if !crate::cpuid::executes(feats) {
            return Some(Err(Exception::InvalidOpcode.into()));
        }
        Some(self.exec_fpu_simd_inner(i))
    }

    fn exec_fpu_simd_inner(&mut self, i: &Instruction) -> R<()> {
        use Mnemonic as M;
        match i.mnemonic() {
            M::Wait => {
                check_available(self.cpu.cr0, self.cpu.cr4, Class::Wait)?;
                self.x87_pending()?;
            }
            M::Fxsave | M::Fxsave64 | M::Fxrstor | M::Fxrstor64 => {
                check_available(self.cpu.cr0, self.cpu.cr4, Class::Fxsr)?;
                let (s, ea) = self.mem_op(i);
                let lin = self.linear(s, ea, 512)?;
                if lin & 15 != 0 {
                    return Err(Exception::GeneralProtection(0).into());
                }
                let rex_w = matches!(i.mnemonic(), M::Fxsave64 | M::Fxrstor64);
                let nxmm = if self.mode == CpuMode::Long64 { 16 } else { 8 };
                // With CR4.OSFXSR clear, MXCSR and the XMM registers are not part of the image.
                let with_xmm = self.cpu.cr4 & cr::CR4_OSFXSR != 0;
                if matches!(i.mnemonic(), M::Fxsave | M::Fxsave64) {
                    let img = self.cpu.fpu.fxsave_image(rex_w, with_xmm, nxmm);
                    self.write_bytes(s, ea, &img[..416])?;
                } else {
                    let mut img = [0u8; 512];
                    self.read_bytes(s, ea, &mut img)?;
                    let mx = u32::from_le_bytes([img[24], img[25], img[26], img[27]]);
                    if with_xmm && mx & !MXCSR_MASK != 0 {
                        return Err(Exception::GeneralProtection(0).into());
                    }
                    self.cpu.fpu.fxrstor_image(&img, rex_w, with_xmm, nxmm);
                }
            }
            M::Ldmxcsr | M::Stmxcsr => {
                check_available(self.cpu.cr0, self.cpu.cr4, Class::Sse)?;
                let (s, ea) = self.mem_op(i);
                if i.mnemonic() == M::Ldmxcsr {
                    let v = self.read_mem(s, ea, 32)? as u32;
                    if v & !MXCSR_MASK != 0 {
                        return Err(Exception::GeneralProtection(0).into());
                    }
                    self.cpu.fpu.mxcsr = v;
                } else {
                    let v = self.cpu.fpu.mxcsr;
                    self.write_mem(s, ea, 32, u64::from(v))?;
                }
            }
            M::Xgetbv => {
                check_available(self.cpu.cr0, self.cpu.cr4, Class::Xcr)?;
                if self.cpu.gpr[1] as u32 != 0 {
                    return Err(Exception::GeneralProtection(0).into());
                }
                let v = self.cpu.fpu.xcr0;
                self.cpu.gpr[0] = v & 0xFFFF_FFFF;
                self.cpu.gpr[2] = v >> 32;
            }
            M::Xsetbv => {
                check_available(self.cpu.cr0, self.cpu.cr4, Class::Xcr)?;
                if (self.cpu.cpl != 0 && self.mode != CpuMode::Real) || self.cpu.gpr[1] as u32 != 0 {
                    return Err(Exception::GeneralProtection(0).into());
                }
                let v = (self.cpu.gpr[0] & 0xFFFF_FFFF) | (self.cpu.gpr[2] << 32);
                // Bit 0 (x87) must be set; only x87 and SSE exist.
                if v & 1 == 0 || v & !3 != 0 {
                    return Err(Exception::GeneralProtection(0).into());
                }
                self.cpu.fpu.xcr0 = v;
            }
            M::Xsave | M::Xsave64 | M::Xsaveopt | M::Xsaveopt64 | M::Xrstor | M::Xrstor64 => {
                self.exec_xsave(i)?;
            }
            _ => {
                let feats = i.cpuid_features();
                use iced_x86::CpuidFeature as C;
                if feats
                    .iter()
                    .any(|f| matches!(f, C::FPU | C::FPU287 | C::FPU387 | C::FPU287XL_ONLY | C::FPU387SL_ONLY))
                {
                    return self.exec_x87(i);
                }
                return self.exec_simd(i);
            }
        }
        self.cpu.rip = i.next_ip();
        Ok(())
    }

    /// XSAVE/XSAVEOPT/XRSTOR with the x87 and SSE components (both in the legacy region).
    fn exec_xsave(&mut self, i: &Instruction) -> R<()> {
        use Mnemonic as M;
        check_available(self.cpu.cr0, self.cpu.cr4, Class::Xsave)?;
        let (s, ea) = self.mem_op(i);
        let lin = self.linear(s, ea, 576)?;
        if lin & 63 != 0 {
            return Err(Exception::GeneralProtection(0).into());
        }
        let rex_w = matches!(i.mnemonic(), M::Xsave64 | M::Xsaveopt64 | M::Xrstor64);
        let nxmm = if self.mode == CpuMode::Long64 { 16 } else { 8 };
        let rfbm = ((self.cpu.gpr[0] & 0xFFFF_FFFF) | (self.cpu.gpr[2] << 32)) & self.cpu.fpu.xcr0;
        let img = self.cpu.fpu.fxsave_image(rex_w, true, nxmm);
        if matches!(i.mnemonic(), M::Xsave | M::Xsave64 | M::Xsaveopt | M::Xsaveopt64) {
            let mut hdr = [0u8; 8];
            self.read_bytes(s, ea + 512, &mut hdr)?;
            let mut bv = u64::from_le_bytes(hdr);
            // Check the whole area is writable first.
            let lin = self.linear(s, ea, 576)?;
            self.probe_write(lin, 576)?;
            if rfbm & 1 != 0 {
                self.write_bytes(s, ea, &img[..24])?;
                self.write_bytes(s, ea + 32, &img[32..160])?;
            }
            if rfbm & 2 != 0 {
                // MXCSR and MXCSR_MASK go with the SSE component.
                self.write_bytes(s, ea + 24, &img[24..32])?;
                self.write_bytes(s, ea + 160, &img[160..160 + 16 * nxmm])?;
            }
            // XSTATE_BV[i] = XINUSE[i]. The SDM lets XINUSE[i] be 1 even for a component in its
            // initial configuration; this model does not track it (nor does the host CPU after an
            // FXRSTOR), so both components report in use.
            let inuse = 3u64;
            bv = (bv & !rfbm) | (inuse & rfbm);
            self.write_bytes(s, ea + 512, &bv.to_le_bytes())?;
        } else {
            let mut hdr = [0u8; 64];
            self.read_bytes(s, ea + 512, &mut hdr)?;
            let bv = u64::from_le_bytes(hdr[..8].try_into().unwrap_or([0; 8]));
            let comp = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or([0; 8]));
            // Standard form only: bytes 8-23 of the header (XCOMP_BV and the next 8) must be 0;
            // bytes 24-63 are not checked (SDM vol. 1, 13.8.1; as on the host).
            if bv & !self.cpu.fpu.xcr0 != 0 || comp != 0 || hdr[16..24].iter().any(|&b| b != 0) {
                return Err(Exception::GeneralProtection(0).into());
            }
            let mut mem = [0u8; 512];
            self.read_bytes(s, ea, &mut mem)?;
            let mx = u32::from_le_bytes([mem[24], mem[25], mem[26], mem[27]]);
            if rfbm & 2 != 0 && mx & !MXCSR_MASK != 0 {
                return Err(Exception::GeneralProtection(0).into());
            }
            let mut cur = self.cpu.fpu.fxsave_image(rex_w, true, nxmm);
            if rfbm & 1 != 0 {
                if bv & 1 != 0 {
                    cur[..24].copy_from_slice(&mem[..24]);
                    cur[32..160].copy_from_slice(&mem[32..160]);
                } else {
                    // Initial x87 state.
                    let mut f = FpuState::default();
                    f.init();
                    let init = f.fxsave_image(rex_w, false, 0);
                    cur[..24].copy_from_slice(&init[..24]);
                    cur[32..160].copy_from_slice(&init[32..160]);
                }
            }
            if rfbm & 2 != 0 {
                if bv & 2 != 0 {
                    cur[160..160 + 16 * nxmm].copy_from_slice(&mem[160..160 + 16 * nxmm]);
                } else {
                    cur[160..160 + 16 * nxmm].fill(0);
                }
            }
            if rfbm & 2 != 0 {
                cur[24..28].copy_from_slice(&mem[24..28]);
            }
            self.cpu.fpu.fxrstor_image(&cur, rex_w, true, nxmm);
        }
        self.cpu.rip = i.next_ip();
        Ok(())
    }

    /// A waiting instruction with an unmasked x87 exception pending: #MF with CR0.NE=1; with
    /// CR0.NE=0 the legacy FERR# path (IRQ 13 through the bus) and the instruction proceeds
    /// (as with IGNNE# asserted by the chipset).
    pub(crate) fn x87_pending(&mut self) -> Result<(), Exception> {
        if self.cpu.fpu.fsw & fsw::ES != 0 {
            if self.cpu.cr0 & cr::CR0_NE != 0 {
                return Err(Exception::FloatingPoint);
            }
            // FERR# changes an interrupt line: through `io_bus`, so the run loop re-reads INTR.
            self.io_bus().fpu_error();
        }
        Ok(())
    }
}
