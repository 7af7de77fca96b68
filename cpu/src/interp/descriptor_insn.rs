//! LAR, LSL, VERR and VERW: descriptor inspection instructions that report through ZF instead
//! of faulting (Intel SDM vol. 2A/2B, the instruction pages of those names).
//!
//! Common rules (all four): #UD in real and virtual-8086 mode; a null selector, a selector whose
//! index lies beyond the GDT/LDT limit, a descriptor type the instruction does not accept, or a
//! failed privilege check (for everything except conforming code: DPL >= CPL and DPL >= RPL)
//! clear ZF and leave the destination unchanged. Faults reading the table itself (#PF) are
//! still raised.

use super::exec::{get_reg, set_reg, Loc};
use super::{Cx, Stop};
use crate::exception::Exception;
use crate::state::rflags::ZF;
use crate::state::{seg_attr, CpuMode};
use iced_x86::{Instruction, Mnemonic};

/// System descriptor types LAR accepts outside 64-bit mode: 16-bit TSS (available/busy), LDT,
/// 16-bit call gate, task gate, 32-bit TSS (available/busy), 32-bit call gate.
const LAR_LEGACY: [u8; 8] = [0x1, 0x2, 0x3, 0x4, 0x5, 0x9, 0xB, 0xC];
/// In 64-bit mode: LDT, 64-bit TSS (available/busy), 64-bit call gate.
const LAR_LONG: [u8; 4] = [0x2, 0x9, 0xB, 0xC];
/// System descriptor types LSL accepts outside 64-bit mode (no gates: they have no limit).
const LSL_LEGACY: [u8; 5] = [0x1, 0x2, 0x3, 0x9, 0xB];
/// In 64-bit mode.
const LSL_LONG: [u8; 3] = [0x2, 0x9, 0xB];

impl Cx<'_> {
    /// Reads the descriptor for `sel` for LAR/LSL/VERR/VERW: `None` for a null selector or an
    /// index beyond the table limit (those clear ZF, they do not fault).
    fn probe_descriptor(&mut self, sel: u16) -> Result<Option<u64>, Exception> {
        if sel & 0xFFFC == 0 {
            return Ok(None);
        }
        let (base, limit) = if sel & 4 != 0 {
            // A null LDTR (no LDT) has limit 0 here: every LDT selector is out of range.
            if self.cpu.ldtr.selector & 0xFFFC == 0 {
                return Ok(None);
            }
            (self.cpu.ldtr.base, u64::from(self.cpu.ldtr.limit))
        } else {
            (self.cpu.gdtr.base, u64::from(self.cpu.gdtr.limit))
        };
        let idx = u64::from(sel & 0xFFF8);
        if idx + 7 > limit {
            return Ok(None);
        }
        Ok(Some(self.read_sys(base.wrapping_add(idx), 8)?))
    }

    /// In 64-bit mode a system descriptor is 16 bytes; its upper half's type field must be 0.
    fn upper_half_ok(&mut self, sel: u16) -> Result<bool, Exception> {
        let (base, limit) = if sel & 4 != 0 {
            (self.cpu.ldtr.base, u64::from(self.cpu.ldtr.limit))
        } else {
            (self.cpu.gdtr.base, u64::from(self.cpu.gdtr.limit))
        };
        let idx = u64::from(sel & 0xFFF8) + 8;
        if idx + 7 > limit {
            return Ok(false);
        }
        let hi = self.read_sys(base.wrapping_add(idx), 8)?;
        Ok((hi >> 40) & 0x1F == 0)
    }

    /// The privilege rule shared by all four: conforming code segments are always visible,
    /// everything else needs DPL >= CPL and DPL >= RPL.
    fn descriptor_visible(&self, sel: u16, raw: u64) -> bool {
        let attr = ((raw >> 40) & 0xFF) as u16;
        let conforming_code = attr & seg_attr::S != 0 && attr & seg_attr::CODE != 0 && attr & seg_attr::DC != 0;
        let dpl = ((attr >> 5) & 3) as u8;
        conforming_code || (dpl >= self.cpu.cpl && dpl >= (sel & 3) as u8)
    }

    /// LAR, LSL, VERR, VERW.
    pub(crate) fn exec_descriptor_insn(&mut self, i: &Instruction) -> Result<(), Stop> {
        if self.mode == CpuMode::Real || self.cpu.rflags & crate::state::rflags::VM != 0 {
            return Err(Exception::InvalidOpcode.into());
        }
        let long = self.mode == CpuMode::Long64;
        let m = i.mnemonic();
        let src = if matches!(m, Mnemonic::Verr | Mnemonic::Verw) { 0 } else { 1 };
        let sel = match self.loc(i, src) {
            Loc::Reg(r) => get_reg(self.cpu, r) as u16,
            l @ Loc::Mem(..) => self.get(l, 16)? as u16,
        };
        let mut result: Option<u64> = None;
        if let Some(raw) = self.probe_descriptor(sel)? {
            let attr = ((raw >> 40) & 0xFF) as u16;
            let system = attr & seg_attr::S == 0;
            let ty = (attr & 0xF) as u8;
            let visible = self.descriptor_visible(sel, raw);
            match m {
                Mnemonic::Lar | Mnemonic::Lsl => {
                    let types: &[u8] = match (m, long) {
                        (Mnemonic::Lar, false) => &LAR_LEGACY,
                        (Mnemonic::Lar, true) => &LAR_LONG,
                        (_, false) => &LSL_LEGACY,
                        (_, true) => &LSL_LONG,
                    };
                    let type_ok = !system || types.contains(&ty);
                    let upper_ok = !(system && long) || self.upper_half_ok(sel)?;
                    if type_ok && upper_ok && visible {
                        result = Some(if m == Mnemonic::Lar {
                            // The high dword AND 00FxFF00H: type, S, DPL, P, AVL, L, D/B, G.
                            // Bits 19:16 ("x") are undefined; like hardware, they carry the
                            // limit nibble.
                            (raw >> 32) & 0x00FF_FF00
                        } else {
                            let mut limit = (raw & 0xFFFF) | ((raw >> 32) & 0xF_0000);
                            if raw & (1 << 55) != 0 {
                                limit = (limit << 12) | 0xFFF;
                            }
                            limit
                        });
                    }
                }
                Mnemonic::Verr => {
                    // Data segments are always readable; code segments when R = 1.
                    let readable = !system && (attr & seg_attr::CODE == 0 || attr & seg_attr::RW != 0);
                    if readable && visible {
                        result = Some(0);
                    }
                }
                _ => {
                    // VERW: writable data segments only.
                    let writable = !system && attr & seg_attr::CODE == 0 && attr & seg_attr::RW != 0;
                    if writable && visible {
                        result = Some(0);
                    }
                }
            }
        }
        let f = self.cpu.rflags();
        match result {
            Some(v) => {
                if matches!(m, Mnemonic::Lar | Mnemonic::Lsl) {
                    let dst = i.op0_register();
                    // A 16-bit destination keeps its upper bits (only the low word is written);
                    // 32-bit destinations zero-extend into the 64-bit register.
                    let v = if dst.size() == 2 { v & 0xFFFF } else { v };
                    set_reg(self.cpu, dst, v);
                }
                self.cpu.set_rflags(f | ZF);
            }
            None => self.cpu.set_rflags(f & !ZF),
        }
        self.cpu.rip = i.next_ip();
        Ok(())
    }
}
