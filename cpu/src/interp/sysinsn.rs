//! System instructions: descriptor-table registers, LDT/TR, CR0 shortcuts, INVLPG, MSRs,
//! far-pointer loads, SWAPGS, SYSCALL/SYSRET and SYSENTER/SYSEXIT.

use super::exec::{get_reg, set_reg, Loc};
use super::{Cx, Stop};
use crate::exception::Exception;
use crate::state::rflags as rf;
use crate::state::{cr, seg_attr, CpuMode, SegReg, Segment};
use iced_x86::{Instruction, Mnemonic, Register};

/// MSR numbers.
pub mod msr {
    /// IA32_TIME_STAMP_COUNTER.
    pub const TSC: u32 = 0x10;
    /// IA32_APIC_BASE.
    pub const APIC_BASE: u32 = 0x1B;
    /// IA32_TSC_DEADLINE (kept by the board's local APIC).
    pub const TSC_DEADLINE: u32 = 0x6E0;
    /// IA32_SYSENTER_CS.
    pub const SYSENTER_CS: u32 = 0x174;
    /// IA32_SYSENTER_ESP.
    pub const SYSENTER_ESP: u32 = 0x175;
    /// IA32_SYSENTER_EIP.
    pub const SYSENTER_EIP: u32 = 0x176;
    /// IA32_MISC_ENABLE.
    pub const MISC_ENABLE: u32 = 0x1A0;
    /// IA32_PAT.
    pub const PAT: u32 = 0x277;
    /// IA32_MTRRCAP.
    pub const MTRRCAP: u32 = 0xFE;
    /// IA32_MTRR_DEF_TYPE.
    pub const MTRR_DEF_TYPE: u32 = 0x2FF;
    /// IA32_EFER.
    pub const EFER: u32 = 0xC000_0080;
    /// IA32_STAR.
    pub const STAR: u32 = 0xC000_0081;
    /// IA32_LSTAR.
    pub const LSTAR: u32 = 0xC000_0082;
    /// IA32_CSTAR.
    pub const CSTAR: u32 = 0xC000_0083;
    /// IA32_FMASK.
    pub const FMASK: u32 = 0xC000_0084;
    /// IA32_FS_BASE.
    pub const FS_BASE: u32 = 0xC000_0100;
    /// IA32_GS_BASE.
    pub const GS_BASE: u32 = 0xC000_0101;
    /// IA32_KERNEL_GS_BASE.
    pub const KERNEL_GS_BASE: u32 = 0xC000_0102;
    /// IA32_TSC_AUX.
    pub const TSC_AUX: u32 = 0xC000_0103;
}

/// The slot of a fixed-range MTRR (0x250, 0x258, 0x259, 0x268-0x26F) in `Msrs::mtrr_fixed`.
fn mtrr_fixed_index(n: u32) -> usize {
    match n {
        0x250 => 0,
        0x258 => 1,
        0x259 => 2,
        _ => (n.saturating_sub(0x268) as usize + 3).min(10),
    }
}

impl Cx<'_> {
    fn cpl0(&self) -> Result<(), Exception> {
        if self.cpu.cpl != 0 && self.mode != CpuMode::Real {
            Err(Exception::GeneralProtection(0))
        } else {
            Ok(())
        }
    }

    fn mem_operand(&self, i: &Instruction, n: u32) -> Result<(SegReg, u64), Exception> {
        match self.loc(i, n) {
            Loc::Mem(s, ea) => Ok((s, ea)),
            Loc::Reg(_) => Err(Exception::InvalidOpcode),
        }
    }

    fn read_msr(&self, n: u32) -> Result<u64, Exception> {
        let m = &self.cpu.msr;
        Ok(match n {
            msr::TSC => self.cpu.icount.wrapping_add(m.tsc_offset),
            msr::APIC_BASE => m.apic_base,
            msr::SYSENTER_CS => m.sysenter_cs,
            msr::SYSENTER_ESP => m.sysenter_esp,
            msr::SYSENTER_EIP => m.sysenter_eip,
            msr::MISC_ENABLE => m.misc_enable,
            msr::PAT => m.pat,
            msr::MTRRCAP => 0x508, // 8 variable ranges, fixed ranges, write-combining
            msr::MTRR_DEF_TYPE => m.mtrr_def_type,
            0x200..=0x20F => m.mtrr_var[(n - 0x200) as usize],
            0x250 | 0x258 | 0x259 | 0x268..=0x26F => m.mtrr_fixed[mtrr_fixed_index(n)],
            msr::EFER => self.cpu.efer,
            msr::STAR => m.star,
            msr::LSTAR => m.lstar,
            msr::CSTAR => m.cstar,
            msr::FMASK => m.sfmask,
            msr::FS_BASE => self.cpu.seg[SegReg::Fs as usize].base,
            msr::GS_BASE => self.cpu.seg[SegReg::Gs as usize].base,
            msr::KERNEL_GS_BASE => m.kernel_gs_base,
            msr::TSC_AUX => m.tsc_aux,
            _ => {
                log::debug!("RDMSR of unknown MSR {n:#x}: #GP");
                return Err(Exception::GeneralProtection(0));
            }
        })
    }

    fn write_msr(&mut self, n: u32, v: u64) -> Result<(), Exception> {
        let canon = |v: u64| ((v << 16) as i64 >> 16) as u64 == v;
        match n {
            msr::TSC => self.cpu.msr.tsc_offset = v.wrapping_sub(self.cpu.icount),
            msr::APIC_BASE => {
                self.cpu.msr.apic_base = v;
                self.io_bus().apic_base_written(v);
            }
            msr::TSC_DEADLINE => {
                let tsc = self.cpu.icount.wrapping_add(self.cpu.msr.tsc_offset);
                self.io_bus().write_tsc_deadline(v, tsc);
            }
            msr::SYSENTER_CS => self.cpu.msr.sysenter_cs = v & 0xFFFF,
            msr::SYSENTER_ESP => self.cpu.msr.sysenter_esp = v,
            msr::SYSENTER_EIP => self.cpu.msr.sysenter_eip = v,
            msr::MISC_ENABLE => self.cpu.msr.misc_enable = v,
            msr::PAT => self.cpu.msr.pat = v,
            // IA32_MTRR_DEF_TYPE: type (bits 0-7), FE (10), E (11); the rest is reserved.
            msr::MTRR_DEF_TYPE if v & !0xCFF != 0 => return Err(Exception::GeneralProtection(0)),
            msr::MTRR_DEF_TYPE => self.cpu.msr.mtrr_def_type = v,
            0x200..=0x20F => self.cpu.msr.mtrr_var[(n - 0x200) as usize] = v,
            0x250 | 0x258 | 0x259 | 0x268..=0x26F => self.cpu.msr.mtrr_fixed[mtrr_fixed_index(n)] = v,
            msr::EFER => {
                // SCE, LME, NXE are writable; LMA is read-only.
                const W: u64 = cr::EFER_SCE | cr::EFER_LME | cr::EFER_NXE;
                if v & !(W | cr::EFER_LMA) != 0 {
                    return Err(Exception::GeneralProtection(0));
                }
                if self.cpu.cr0 & cr::CR0_PG != 0 && (v ^ self.cpu.efer) & cr::EFER_LME != 0 {
                    return Err(Exception::GeneralProtection(0));
                }
                self.cpu.efer = (self.cpu.efer & cr::EFER_LMA) | (v & W);
                self.cpu.tlb.flush_all();
            }
            msr::STAR => self.cpu.msr.star = v,
            msr::LSTAR | msr::CSTAR | msr::FS_BASE | msr::GS_BASE | msr::KERNEL_GS_BASE if !canon(v) => {
                return Err(Exception::GeneralProtection(0));
            }
            msr::LSTAR => self.cpu.msr.lstar = v,
            msr::CSTAR => self.cpu.msr.cstar = v,
            msr::FMASK => self.cpu.msr.sfmask = v & 0xFFFF_FFFF,
            msr::FS_BASE => self.cpu.seg[SegReg::Fs as usize].base = v,
            msr::GS_BASE => self.cpu.seg[SegReg::Gs as usize].base = v,
            msr::KERNEL_GS_BASE => self.cpu.msr.kernel_gs_base = v,
            msr::TSC_AUX => self.cpu.msr.tsc_aux = v & 0xFFFF_FFFF,
            _ => {
                log::debug!("WRMSR of unknown MSR {n:#x} = {v:#x}: #GP");
                return Err(Exception::GeneralProtection(0));
            }
        }
        Ok(())
    }

    /// Instructions not handled by the main dispatch.
    pub(crate) fn exec_system(&mut self, i: &Instruction) -> Result<(), Stop> {
        use Mnemonic as M;
        let long = self.mode == CpuMode::Long64;
        match i.mnemonic() {
            M::Lgdt | M::Lidt => {
                self.cpl0()?;
                let (s, ea) = self.mem_operand(i, 0)?;
                let limit = self.read_mem(s, ea, 16)? as u16;
                let base = if long {
                    self.read_mem(s, ea + 2, 64)?
                } else {
                    let b = self.read_mem(s, ea + 2, 32)?;
                    // A 16-bit operand size loads a 24-bit base.
                    if i.code() == iced_x86::Code::Lgdt_m1632_16 || i.code() == iced_x86::Code::Lidt_m1632_16 {
                        b & 0xFF_FFFF
                    } else {
                        b
                    }
                };
                let t = crate::state::DescriptorTable { base, limit };
                if i.mnemonic() == M::Lgdt {
                    self.cpu.gdtr = t;
                } else {
                    self.cpu.idtr = t;
                }
            }
            M::Sgdt | M::Sidt => {
                let (s, ea) = self.mem_operand(i, 0)?;
                let t = if i.mnemonic() == M::Sgdt { self.cpu.gdtr } else { self.cpu.idtr };
                let lin = self.linear(s, ea, if long { 10 } else { 6 })?;
                self.probe_write(lin, if long { 10 } else { 6 })?;
                self.write_mem(s, ea, 16, u64::from(t.limit))?;
                if long {
                    self.write_mem(s, ea + 2, 64, t.base)?;
                } else {
                    self.write_mem(s, ea + 2, 32, t.base & 0xFFFF_FFFF)?;
                }
            }
            M::Lldt | M::Ltr => {
                if self.mode == CpuMode::Real {
                    return Err(Exception::InvalidOpcode.into());
                }
                self.cpl0()?;
                let l = self.loc(i, 0);
                let sel = self.get(l, 16)? as u16;
                let is_ldt = i.mnemonic() == M::Lldt;
                if sel & 0xFFFC == 0 {
                    if is_ldt {
                        self.cpu.ldtr = Segment { selector: sel, ..Default::default() };
                        self.next_ip(i);
                        return Ok(());
                    }
                    return Err(Exception::GeneralProtection(0).into());
                }
                if sel & 4 != 0 {
                    return Err(Exception::GeneralProtection(sel & 0xFFFC).into());
                }
                let raw = self.read_descriptor(sel)?;
                let ty = (raw >> 40) & 0x1F;
                let ok = if is_ldt { ty == 0x02 } else { ty == 0x09 || ty == 0x01 };
                if !ok {
                    return Err(Exception::GeneralProtection(sel & 0xFFFC).into());
                }
                if raw & (1 << 47) == 0 {
                    return Err(Exception::SegmentNotPresent(sel & 0xFFFC).into());
                }
                let mut d = Segment::from_descriptor(sel, raw);
                if long {
                    let hi = self.read_sys(self.cpu.gdtr.base.wrapping_add(u64::from(sel & 0xFFF8) + 8), 4)?;
                    d.base |= hi << 32;
                }
                if is_ldt {
                    self.cpu.ldtr = d;
                } else {
                    // Mark the TSS busy.
                    let a = self.cpu.gdtr.base.wrapping_add(u64::from(sel & 0xFFF8) + 5);
                    let b = ((raw >> 40) as u8) | 2;
                    self.write_sys(a, 1, u64::from(b))?;
                    d.attr |= 2;
                    self.cpu.tr = d;
                }
            }
            M::Sldt | M::Str => {
                if self.mode == CpuMode::Real {
                    return Err(Exception::InvalidOpcode.into());
                }
                let sel = if i.mnemonic() == M::Sldt { self.cpu.ldtr.selector } else { self.cpu.tr.selector };
                let l = self.loc(i, 0);
                let bits = match l {
                    Loc::Reg(r) => reg_bits(r),
                    Loc::Mem(..) => 16,
                };
                self.set(l, bits, u64::from(sel))?;
            }
            M::Smsw => {
                let l = self.loc(i, 0);
                let bits = match l {
                    Loc::Reg(r) => reg_bits(r),
                    Loc::Mem(..) => 16,
                };
                self.set(l, bits, self.cpu.cr0)?;
            }
            M::Lmsw => {
                self.cpl0()?;
                let l = self.loc(i, 0);
                let v = self.get(l, 16)?;
                // LMSW can set PE but not clear it, and touches only PE/MP/EM/TS.
                let new = (self.cpu.cr0 & !0xE) | (v & 0xF) | (self.cpu.cr0 & 1);
                self.set_cr0(new)?;
            }
            M::Clts => {
                self.cpl0()?;
                self.cpu.cr0 &= !cr::CR0_TS;
            }
            M::Invlpg => {
                self.cpl0()?;
                let (s, ea) = self.mem_operand(i, 0)?;
                let lin = self.linear(s, ea, 1)?;
                self.cpu.tlb.flush_page(lin);
            }
            M::Wbinvd | M::Invd => self.cpl0()?,
            M::Rdmsr => {
                self.cpl0()?;
                let n = self.cpu.gpr[1] as u32;
                let v = if n == msr::TSC_DEADLINE { self.io_bus().read_tsc_deadline() } else { self.read_msr(n)? };
                self.cpu.gpr[0] = v & 0xFFFF_FFFF;
                self.cpu.gpr[2] = v >> 32;
            }
            M::Wrmsr => {
                self.cpl0()?;
                let v = (self.cpu.gpr[0] & 0xFFFF_FFFF) | (self.cpu.gpr[2] << 32);
                self.write_msr(self.cpu.gpr[1] as u32, v)?;
                self.mode_changed = true;
            }
            M::Lds | M::Les | M::Lfs | M::Lgs | M::Lss => {
                let (s, ea) = self.mem_operand(i, 1)?;
                let bits = reg_bits(i.op0_register());
                let off = self.read_mem(s, ea, bits)?;
                let sel = self.read_mem(s, ea + u64::from(bits / 8), 16)? as u16;
                let sr = match i.mnemonic() {
                    M::Lds => SegReg::Ds,
                    M::Les => SegReg::Es,
                    M::Lfs => SegReg::Fs,
                    M::Lgs => SegReg::Gs,
                    _ => SegReg::Ss,
                };
                self.load_seg(sr, sel)?;
                set_reg(self.cpu, i.op0_register(), off);
            }
            M::Arpl => {
                if self.mode == CpuMode::Real {
                    return Err(Exception::InvalidOpcode.into());
                }
                let l = self.loc(i, 0);
                let d = self.get(l, 16)?;
                let s = get_reg(self.cpu, i.op1_register());
                if d & 3 < s & 3 {
                    self.set(l, 16, (d & !3) | (s & 3))?;
                    let f = self.cpu.rflags() | rf::ZF;
                    self.cpu.set_rflags(f);
                } else {
                    let f = self.cpu.rflags() & !rf::ZF;
                    self.cpu.set_rflags(f);
                }
            }
            M::Swapgs => {
                if !long {
                    return Err(Exception::InvalidOpcode.into());
                }
                self.cpl0()?;
                let gs = &mut self.cpu.seg[SegReg::Gs as usize].base;
                std::mem::swap(gs, &mut self.cpu.msr.kernel_gs_base);
            }
            M::Syscall => {
                if self.cpu.efer & cr::EFER_SCE == 0 || self.cpu.efer & cr::EFER_LMA == 0 {
                    return Err(Exception::InvalidOpcode.into());
                }
                let next = i.next_ip();
                let sel = ((self.cpu.msr.star >> 32) & 0xFFFC) as u16;
                self.cpu.gpr[1] = next;
                let fl = self.cpu.rflags();
                self.cpu.gpr[11] = fl & !rf::RF;
                self.cpu.set_rflags(fl & !self.cpu.msr.sfmask & !rf::RF);
                self.cpu.seg[SegReg::Cs as usize] =
                    Segment { selector: sel, attr: 0x9B | seg_attr::L | seg_attr::G, limit: u32::MAX, base: 0 };
                self.cpu.seg[SegReg::Ss as usize] =
                    Segment { selector: sel + 8, attr: 0x93 | seg_attr::DB | seg_attr::G, limit: u32::MAX, base: 0 };
                self.cpu.cpl = 0;
                self.cpu.rip = if long { self.cpu.msr.lstar } else { self.cpu.msr.cstar };
                self.mode_changed = true;
                return Ok(());
            }
            M::Sysret | M::Sysretq => {
                if self.cpu.efer & cr::EFER_SCE == 0 || !long {
                    return Err(Exception::InvalidOpcode.into());
                }
                self.cpl0()?;
                let to64 = i.code() == iced_x86::Code::Sysretq;
                let base = ((self.cpu.msr.star >> 48) & 0xFFFF) as u16;
                let (cs_sel, attr) = if to64 {
                    (base + 16, 0xFB | seg_attr::L | seg_attr::G)
                } else {
                    (base, 0xFB | seg_attr::DB | seg_attr::G)
                };
                let rip = if to64 { self.cpu.gpr[1] } else { self.cpu.gpr[1] & 0xFFFF_FFFF };
                if to64 && ((rip << 16) as i64 >> 16) as u64 != rip {
                    return Err(Exception::GeneralProtection(0).into());
                }
                let fl = self.cpu.gpr[11];
                self.cpu.set_rflags((fl & 0x3C_7FD7) | 2);
                self.cpu.seg[SegReg::Cs as usize] = Segment { selector: cs_sel | 3, attr, limit: u32::MAX, base: 0 };
                self.cpu.seg[SegReg::Ss as usize] = Segment {
                    selector: (base + 8) | 3,
                    attr: 0xF3 | seg_attr::DB | seg_attr::G,
                    limit: u32::MAX,
                    base: 0,
                };
                self.cpu.cpl = 3;
                self.cpu.rip = rip;
                self.mode_changed = true;
                return Ok(());
            }
            M::Sysenter => {
                let cs = (self.cpu.msr.sysenter_cs & 0xFFFC) as u16;
                if self.mode == CpuMode::Real || cs == 0 {
                    return Err(Exception::GeneralProtection(0).into());
                }
                let lma = self.cpu.efer & cr::EFER_LMA != 0;
                let fl = self.cpu.rflags();
                self.cpu.set_rflags(fl & !(rf::VM | rf::IF | rf::RF));
                let cattr = if lma { 0x9B | seg_attr::L | seg_attr::G } else { 0x9B | seg_attr::DB | seg_attr::G };
                self.cpu.seg[SegReg::Cs as usize] = Segment { selector: cs, attr: cattr, limit: u32::MAX, base: 0 };
                self.cpu.seg[SegReg::Ss as usize] =
                    Segment { selector: cs + 8, attr: 0x93 | seg_attr::DB | seg_attr::G, limit: u32::MAX, base: 0 };
                self.cpu.cpl = 0;
                let m = if lma { u64::MAX } else { 0xFFFF_FFFF };
                self.cpu.gpr[4] = self.cpu.msr.sysenter_esp & m;
                self.cpu.rip = self.cpu.msr.sysenter_eip & m;
                self.mode_changed = true;
                return Ok(());
            }
            M::Sysexit | M::Sysexitq => {
                let cs = (self.cpu.msr.sysenter_cs & 0xFFFC) as u16;
                if self.mode == CpuMode::Real || cs == 0 {
                    return Err(Exception::GeneralProtection(0).into());
                }
                self.cpl0()?;
                let to64 = i.code() == iced_x86::Code::Sysexitq;
                let (csel, attr) = if to64 {
                    (cs + 32, 0xFB | seg_attr::L | seg_attr::G)
                } else {
                    (cs + 16, 0xFB | seg_attr::DB | seg_attr::G)
                };
                self.cpu.seg[SegReg::Cs as usize] = Segment { selector: csel | 3, attr, limit: u32::MAX, base: 0 };
                self.cpu.seg[SegReg::Ss as usize] = Segment {
                    selector: (csel + 8) | 3,
                    attr: 0xF3 | seg_attr::DB | seg_attr::G,
                    limit: u32::MAX,
                    base: 0,
                };
                self.cpu.cpl = 3;
                let m = if to64 { u64::MAX } else { 0xFFFF_FFFF };
                self.cpu.gpr[4] = self.cpu.gpr[1] & m;
                self.cpu.rip = self.cpu.gpr[2] & m;
                self.mode_changed = true;
                return Ok(());
            }
            _ => {
                if log::log_enabled!(log::Level::Debug) {
                    let bytes = self.code_bytes(i.len());
                    log::debug!(
                        "unimplemented instruction {:?} ({:?}) at {:#x}: {:02x?}: #UD",
                        i.mnemonic(),
                        i.code(),
                        self.cpu.rip,
                        bytes
                    );
                }
                return Err(Exception::InvalidOpcode.into());
            }
        }
        self.next_ip(i);
        Ok(())
    }

    /// The `len` bytes at CS:RIP, for diagnostics (as many as can be fetched).
    fn code_bytes(&mut self, len: usize) -> Vec<u8> {
        let cs = self.cpu.seg[SegReg::Cs as usize];
        let lin =
            if self.mode == CpuMode::Long64 { self.cpu.rip } else { cs.base.wrapping_add(self.cpu.rip) & 0xFFFF_FFFF };
        let mut buf = [0u8; 15];
        let (n, _) = self.fetch_bytes(lin, &mut buf);
        buf[..n.min(len)].to_vec()
    }

    fn next_ip(&mut self, i: &Instruction) {
        self.cpu.rip = i.next_ip();
    }
}

fn reg_bits(r: Register) -> u32 {
    (r.size() * 8) as u32
}
