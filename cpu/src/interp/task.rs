//! Call gates, 32-bit hardware task switches and the TSS I/O permission bitmap
//! (Intel SDM vol. 3A, sections 5.8, 7.3 and 19.5).

use super::Cx;
use crate::exception::Exception;
use crate::state::{cr, rflags, seg_attr, CpuMode, SegReg, Segment};

/// Why a task switch happens (it decides busy bits, NT and the back link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SwitchReason {
    /// JMP to a TSS or task gate.
    Jmp,
    /// CALL to a TSS or task gate.
    Call,
    /// An interrupt or exception through a task gate.
    Int,
    /// IRET with EFLAGS.NT set.
    Iret,
}

/// A far JMP or CALL (with the return address to push).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FarKind {
    /// JMP.
    Jmp,
    /// CALL with the operand size and return offset.
    Call {
        /// Operand size of the CALL.
        bits: u32,
        /// Offset of the next instruction.
        next: u64,
    },
}

const TSS32_AVAILABLE: u16 = 0x9;
const TSS32_BUSY: u16 = 0xB;

fn sel_err(sel: u16) -> u16 {
    sel & 0xFFFC
}

impl Cx<'_> {
    /// A far JMP/CALL whose selector names a system descriptor: call gate, task gate or TSS.
    pub(crate) fn far_system(&mut self, sel: u16, raw: u64, kind: FarKind) -> Result<(), Exception> {
        let ty = ((raw >> 40) & 0xF) as u16;
        let dpl = ((raw >> 45) & 3) as u8;
        let present = raw & (1 << 47) != 0;
        let cpl = self.cpu.cpl;
        let rpl = (sel & 3) as u8;
        let long = self.cpu.efer & cr::EFER_LMA != 0;
        match ty {
            0x4 | 0xC => self.call_gate(sel, raw, kind),
            0x5 | 0x9 if !long => {
                if dpl < cpl || dpl < rpl {
                    return Err(Exception::GeneralProtection(sel_err(sel)));
                }
                if !present {
                    return Err(Exception::SegmentNotPresent(sel_err(sel)));
                }
                let (tss_sel, tss_raw) = if ty == 0x5 {
                    let t = ((raw >> 16) & 0xFFFF) as u16;
                    if t & 4 != 0 {
                        return Err(Exception::GeneralProtection(sel_err(t)));
                    }
                    (t, self.read_descriptor(t).map_err(|_| Exception::GeneralProtection(sel_err(t)))?)
                } else {
                    (sel, raw)
                };
                let reason = if kind == FarKind::Jmp { SwitchReason::Jmp } else { SwitchReason::Call };
                let ret = self.next_rip;
                self.task_switch(tss_sel, tss_raw, reason, ret)
            }
            _ => Err(Exception::GeneralProtection(sel_err(sel))),
        }
    }

    fn call_gate(&mut self, sel: u16, raw: u64, kind: FarKind) -> Result<(), Exception> {
        let cpl = self.cpu.cpl;
        let rpl = (sel & 3) as u8;
        let gdpl = ((raw >> 45) & 3) as u8;
        let long = self.cpu.efer & cr::EFER_LMA != 0;
        let ty = ((raw >> 40) & 0xF) as u8;
        if gdpl < cpl || gdpl < rpl || (long && ty != 0xC) {
            return Err(Exception::GeneralProtection(sel_err(sel)));
        }
        if raw & (1 << 47) == 0 {
            return Err(Exception::SegmentNotPresent(sel_err(sel)));
        }
        let gate_bits: u32 = if long {
            64
        } else if ty == 0xC {
            32
        } else {
            16
        };
        let cs_sel = ((raw >> 16) & 0xFFFF) as u16;
        let mut off = (raw & 0xFFFF) | if gate_bits == 16 { 0 } else { (raw >> 32) & 0xFFFF_0000 };
        if long {
            let table = if sel & 4 != 0 { self.cpu.ldtr.base } else { self.cpu.gdtr.base };
            let hi = self.read_sys(table.wrapping_add(u64::from(sel & 0xFFF8) + 8), 8)?;
            if (hi >> 40) & 0x1F != 0 {
                return Err(Exception::GeneralProtection(sel_err(sel)));
            }
            off |= (hi & 0xFFFF_FFFF) << 32;
        }
        let params = (raw >> 32) & 0x1F;
        if cs_sel & 0xFFFC == 0 {
            return Err(Exception::GeneralProtection(0));
        }
        let cs_raw = self.read_descriptor(cs_sel).map_err(|_| Exception::GeneralProtection(sel_err(cs_sel)))?;
        let d = Segment::from_descriptor(cs_sel, cs_raw);
        if d.attr & seg_attr::S == 0 || d.attr & seg_attr::CODE == 0 || d.dpl() > cpl {
            return Err(Exception::GeneralProtection(sel_err(cs_sel)));
        }
        if long && (d.attr & seg_attr::L == 0 || d.attr & seg_attr::DB != 0) {
            return Err(Exception::GeneralProtection(sel_err(cs_sel)));
        }
        if d.attr & seg_attr::P == 0 {
            return Err(Exception::SegmentNotPresent(sel_err(cs_sel)));
        }
        let conforming = d.attr & seg_attr::DC != 0;
        let saved = self.save_far_state();
        let r = match kind {
            FarKind::Jmp => {
                if !conforming && d.dpl() != cpl {
                    return Err(Exception::GeneralProtection(sel_err(cs_sel)));
                }
                self.set_cs(cs_sel, cs_raw, cpl);
                self.cpu.rip = off;
                Ok(())
            }
            FarKind::Call { next, .. } => {
                let old_cs = u64::from(self.cpu.seg[SegReg::Cs as usize].selector);
                if !conforming && d.dpl() < cpl {
                    self.call_gate_inner(cs_sel, cs_raw, d.dpl(), gate_bits, params, old_cs, next, off)
                } else {
                    self.set_cs(cs_sel, cs_raw, cpl);
                    self.push(gate_bits, old_cs).and_then(|_| self.push(gate_bits, next)).map(|_| self.cpu.rip = off)
                }
            }
        };
        if r.is_err() {
            self.restore_far_state(saved);
        }
        r
    }

    /// A CALL through a gate to a more privileged level: switch stacks, copy parameters.
    #[allow(clippy::too_many_arguments)]
    fn call_gate_inner(
        &mut self,
        cs_sel: u16,
        cs_raw: u64,
        new_cpl: u8,
        gate_bits: u32,
        params: u64,
        old_cs: u64,
        next: u64,
        off: u64,
    ) -> Result<(), Exception> {
        let old_ss = u64::from(self.cpu.seg[SegReg::Ss as usize].selector);
        let old_sp = self.cpu.gpr[4];
        let tss = self.cpu.tr;
        if gate_bits == 64 {
            let slot = 4 + 8 * u64::from(new_cpl);
            if slot + 7 > u64::from(tss.limit) {
                return Err(Exception::InvalidTss(sel_err(tss.selector)));
            }
            let nsp = self.read_sys(tss.base.wrapping_add(slot), 8)?;
            self.set_cs(cs_sel, cs_raw, new_cpl);
            self.cpu.seg[SegReg::Ss as usize] = Segment {
                selector: u16::from(new_cpl),
                attr: seg_attr::S | seg_attr::RW | seg_attr::P | (u16::from(new_cpl) << 5),
                limit: 0,
                base: 0,
            };
            self.cpu.gpr[4] = nsp;
            for v in [old_ss, old_sp, old_cs, next] {
                self.push(64, v)?;
            }
            self.cpu.rip = off;
            return Ok(());
        }
        let tss32 = matches!(tss.attr & 0xF, TSS32_AVAILABLE | TSS32_BUSY);
        let (sp_off, ss_off, w) = if tss32 {
            (4 + 8 * u64::from(new_cpl), 8 + 8 * u64::from(new_cpl), 4)
        } else {
            (2 + 4 * u64::from(new_cpl), 4 + 4 * u64::from(new_cpl), 2)
        };
        if ss_off + 1 > u64::from(tss.limit) {
            return Err(Exception::InvalidTss(sel_err(tss.selector)));
        }
        let nsp = self.read_sys(tss.base.wrapping_add(sp_off), w)?;
        let nss = self.read_sys(tss.base.wrapping_add(ss_off), 2)? as u16;
        // Parameters come from the caller's stack, read before switching.
        let pbytes = u64::from(gate_bits / 8);
        let mut vals = Vec::with_capacity(params as usize);
        for k in 0..params {
            vals.push(self.stack_read(old_sp.wrapping_add(k * pbytes), gate_bits)?);
        }
        let cpl = self.cpu.cpl;
        self.cpu.cpl = new_cpl;
        if let Err(e) = self.load_seg(SegReg::Ss, nss) {
            self.cpu.cpl = cpl;
            return Err(match e {
                Exception::StackFault(c) => Exception::StackFault(c),
                _ => Exception::InvalidTss(sel_err(nss)),
            });
        }
        self.cpu.gpr[4] = nsp;
        self.set_cs(cs_sel, cs_raw, new_cpl);
        self.push(gate_bits, old_ss)?;
        self.push(gate_bits, old_sp)?;
        for v in vals.iter().rev() {
            self.push(gate_bits, *v)?;
        }
        self.push(gate_bits, old_cs)?;
        self.push(gate_bits, next)?;
        self.cpu.rip = off;
        Ok(())
    }

    fn save_far_state(&self) -> ([Segment; 6], u64, u8, u64) {
        (self.cpu.seg, self.cpu.gpr[4], self.cpu.cpl, self.cpu.rip)
    }

    fn restore_far_state(&mut self, s: ([Segment; 6], u64, u8, u64)) {
        self.cpu.seg = s.0;
        self.cpu.gpr[4] = s.1;
        self.cpu.cpl = s.2;
        self.cpu.rip = s.3;
        self.mode = self.cpu.mode();
    }

    fn set_tss_busy(&mut self, sel: u16, busy: bool) -> Result<(), Exception> {
        let a = self.cpu.gdtr.base.wrapping_add(u64::from(sel & 0xFFF8) + 5);
        let b = self.read_sys(a, 1)?;
        let nb = if busy { b | 2 } else { b & !2 };
        self.write_sys(a, 1, nb)
    }

    /// Switches to the 32-bit task whose TSS descriptor is `raw` (SDM 7.3). On any fault the
    /// CPU state is left as it was before the switch.
    pub(crate) fn task_switch(
        &mut self,
        sel: u16,
        raw: u64,
        reason: SwitchReason,
        ret_eip: u64,
    ) -> Result<(), Exception> {
        if self.cpu.efer & cr::EFER_LMA != 0 {
            return Err(Exception::GeneralProtection(0));
        }
        let new = Segment::from_descriptor(sel, raw);
        let ty = new.attr & 0x1F;
        let want = if reason == SwitchReason::Iret { TSS32_BUSY } else { TSS32_AVAILABLE };
        if sel & 4 != 0 || ty != want {
            return Err(if reason == SwitchReason::Iret {
                Exception::InvalidTss(sel_err(sel))
            } else {
                Exception::GeneralProtection(sel_err(sel))
            });
        }
        if new.attr & seg_attr::P == 0 {
            return Err(Exception::SegmentNotPresent(sel_err(sel)));
        }
        if new.limit < 0x67 {
            return Err(Exception::InvalidTss(sel_err(sel)));
        }
        let snapshot = self.cpu.clone();
        let r = self.task_switch_inner(sel, new, reason, ret_eip);
        if r.is_err() {
            let tlb = std::mem::take(&mut self.cpu.tlb);
            *self.cpu = snapshot;
            self.cpu.tlb = tlb;
            self.cpu.tlb.flush_all();
            self.mode = self.cpu.mode();
        }
        r
    }

    fn task_switch_inner(
        &mut self,
        sel: u16,
        new: Segment,
        reason: SwitchReason,
        ret_eip: u64,
    ) -> Result<(), Exception> {
        let old = self.cpu.tr;
        let ob = old.base;
        let nb = new.base;
        // Read the whole new state first.
        let mut st = [0u64; 26];
        for (k, v) in st.iter_mut().enumerate() {
            *v = self.read_sys(nb.wrapping_add(4 * k as u64), 4)?;
        }
        let n_cr3 = st[7];
        let n_eip = st[8];
        let mut n_eflags = st[9];
        let n_gpr = &st[10..18];
        let n_seg: Vec<u16> = st[18..24].iter().map(|&v| v as u16).collect();
        let n_ldt = st[24] as u16;
        // Save the outgoing task.
        let mut eflags = self.cpu.rflags();
        if reason == SwitchReason::Iret {
            eflags &= !rflags::NT;
        }
        self.write_sys(ob + 0x20, 4, ret_eip & 0xFFFF_FFFF)?;
        self.write_sys(ob + 0x24, 4, eflags & 0xFFFF_FFFF)?;
        for r in 0..8 {
            self.write_sys(ob + 0x28 + 4 * r as u64, 4, self.cpu.gpr[r] & 0xFFFF_FFFF)?;
        }
        for s in 0..6 {
            self.write_sys(ob + 0x48 + 4 * s as u64, 2, u64::from(self.cpu.seg[s].selector))?;
        }
        if matches!(reason, SwitchReason::Jmp | SwitchReason::Iret) {
            self.set_tss_busy(old.selector, false)?;
        }
        if matches!(reason, SwitchReason::Call | SwitchReason::Int) {
            self.write_sys(nb, 2, u64::from(old.selector))?;
            n_eflags |= rflags::NT;
        }
        if reason != SwitchReason::Iret {
            self.set_tss_busy(sel, true)?;
        }
        // Commit: TR, CR3, registers, flags. A task switch clears the local breakpoint enables
        // L0-L3 and LE of DR7 (SDM 17.2.4).
        self.cpu.dr[7] &= !0x155;
        let mut tr = new;
        tr.attr |= 2;
        self.cpu.tr = tr;
        self.cpu.cr0 |= cr::CR0_TS;
        if self.cpu.cr0 & cr::CR0_PG != 0 {
            self.cpu.cr3 = n_cr3;
            self.cpu.tlb.flush_non_global();
        }
        self.cpu.gpr[..8].copy_from_slice(n_gpr);
        self.cpu.set_rflags(n_eflags & 0x003F_7FD7);
        self.cpu.rip = n_eip;
        // LDT, then segments: faults here are #TS with the selector.
        if n_ldt & 0xFFFC == 0 {
            self.cpu.ldtr = Segment { selector: n_ldt, ..Default::default() };
        } else {
            if n_ldt & 4 != 0 {
                return Err(Exception::InvalidTss(sel_err(n_ldt)));
            }
            let raw = self.read_descriptor(n_ldt).map_err(|_| Exception::InvalidTss(sel_err(n_ldt)))?;
            if (raw >> 40) & 0x1F != 0x02 || raw & (1 << 47) == 0 {
                return Err(Exception::InvalidTss(sel_err(n_ldt)));
            }
            self.cpu.ldtr = Segment::from_descriptor(n_ldt, raw);
        }
        if n_eflags & rflags::VM != 0 {
            // A virtual-8086 task: segments are loaded 8086-style, CPL 3 (SDM 20.2.5).
            let v = |k: usize| n_seg[k];
            self.enter_v86_segments([v(0), v(1), v(2), v(3), v(4), v(5)]);
            self.cpu.interrupt_shadow = false;
            return Ok(());
        }
        let cs_sel = n_seg[1];
        let new_cpl = (cs_sel & 3) as u8;
        if cs_sel & 0xFFFC == 0 {
            return Err(Exception::InvalidTss(0));
        }
        let cs_raw = self.read_descriptor(cs_sel).map_err(|_| Exception::InvalidTss(sel_err(cs_sel)))?;
        let d = Segment::from_descriptor(cs_sel, cs_raw);
        let conforming = d.attr & seg_attr::DC != 0;
        if d.attr & seg_attr::S == 0
            || d.attr & seg_attr::CODE == 0
            || (!conforming && d.dpl() != new_cpl)
            || (conforming && d.dpl() > new_cpl)
        {
            return Err(Exception::InvalidTss(sel_err(cs_sel)));
        }
        if d.attr & seg_attr::P == 0 {
            return Err(Exception::SegmentNotPresent(sel_err(cs_sel)));
        }
        self.set_cs(cs_sel, cs_raw, new_cpl);
        for (k, s) in [(2usize, SegReg::Ss), (0, SegReg::Es), (3, SegReg::Ds), (4, SegReg::Fs), (5, SegReg::Gs)] {
            self.load_seg(s, n_seg[k]).map_err(|e| match e {
                Exception::SegmentNotPresent(c) | Exception::StackFault(c) if c != 0 => e,
                _ => Exception::InvalidTss(sel_err(n_seg[k])),
            })?;
        }
        self.cpu.interrupt_shadow = false;
        self.mode_changed = true;
        Ok(())
    }

    /// IRET with NT set: return to the task in the current TSS's back link.
    pub(crate) fn iret_task(&mut self) -> Result<(), Exception> {
        let back = self.read_sys(self.cpu.tr.base, 2)? as u16;
        if back & 4 != 0 {
            return Err(Exception::InvalidTss(sel_err(back)));
        }
        let raw = self.read_descriptor(back).map_err(|_| Exception::InvalidTss(sel_err(back)))?;
        let ret = self.next_rip;
        self.task_switch(back, raw, SwitchReason::Iret, ret)
    }

    /// I/O permission: CPL <= IOPL, or the TSS I/O bitmap clears every bit of the access.
    pub(crate) fn io_permitted(&mut self, port: u16, size: usize) -> Result<(), Exception> {
        self.io_breakpoint_check(port, size);
        if self.mode == CpuMode::Real {
            return Ok(());
        }
        let iopl = ((self.cpu.rflags & rflags::IOPL) >> 12) as u8;
        if self.cpu.cpl <= iopl && self.cpu.rflags & rflags::VM == 0 {
            return Ok(());
        }
        let tss = self.cpu.tr;
        if !matches!(tss.attr & 0xF, TSS32_AVAILABLE | TSS32_BUSY) || tss.limit < 0x67 {
            return Err(Exception::GeneralProtection(0));
        }
        let io_base = self.read_sys(tss.base.wrapping_add(0x66), 2)?;
        let byte = io_base + u64::from(port / 8);
        if byte + 1 > u64::from(tss.limit) {
            return Err(Exception::GeneralProtection(0));
        }
        let bits = self.read_sys(tss.base.wrapping_add(byte), 2)?;
        let mask = ((1u64 << size) - 1) << (port & 7);
        if bits & mask != 0 {
            return Err(Exception::GeneralProtection(0));
        }
        Ok(())
    }
}
