//! System-level pieces: interrupt and exception delivery (IVT, 32-bit and 64-bit IDT),
//! descriptor loads, segment register loads and far transfers.
//!
//! Covered here: real-mode IVT delivery; protected-mode interrupt and trap gates (16/32-bit)
//! with a stack switch through the 32-bit TSS on a privilege change; long-mode 64-bit gates
//! with RSP0 and IST; far JMP/CALL/RET and IRET within a privilege level and returns to an outer
//! level. Task gates, call gates and task switches raise #GP for now.

use super::task::{FarKind, SwitchReason};
use super::Cx;
use crate::exception::Exception;
use crate::state::{rflags, seg_attr, CpuMode, SegReg, Segment};

/// What kind of event is being delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IntKind {
    /// INT n, INT3, INTO: gate DPL is checked, no error code, EXT = 0.
    Software,
    /// A CPU exception: EXT = 1 in error codes it causes.
    Exception,
    /// An external interrupt: EXT = 1.
    External,
}

fn sel_err(sel: u16) -> u16 {
    sel & 0xFFFC
}

impl Cx<'_> {
    /// Reads the 8-byte descriptor for `sel` from the GDT or LDT.
    pub(crate) fn read_descriptor(&mut self, sel: u16) -> Result<u64, Exception> {
        let (base, limit) = if sel & 4 != 0 {
            (self.cpu.ldtr.base, u64::from(self.cpu.ldtr.limit))
        } else {
            (self.cpu.gdtr.base, u64::from(self.cpu.gdtr.limit))
        };
        let idx = u64::from(sel & 0xFFF8);
        if idx + 7 > limit {
            return Err(Exception::GeneralProtection(sel_err(sel)));
        }
        self.read_sys(base.wrapping_add(idx), 8)
    }

    fn set_accessed(&mut self, sel: u16, raw: u64) -> Result<(), Exception> {
        if raw & (1 << 40) == 0 {
            let base = if sel & 4 != 0 { self.cpu.ldtr.base } else { self.cpu.gdtr.base };
            let a = base.wrapping_add(u64::from(sel & 0xFFF8) + 5);
            let b = (raw >> 40) as u8 | 1;
            self.write_sys(a, 1, u64::from(b))?;
        }
        Ok(())
    }

    /// MOV/POP/LDS to a data or stack segment register (not CS).
    pub(crate) fn load_seg(&mut self, sreg: SegReg, sel: u16) -> Result<(), Exception> {
        if self.mode == CpuMode::Real || self.cpu.rflags & rflags::VM != 0 {
            let s = &mut self.cpu.seg[sreg as usize];
            s.selector = sel;
            s.base = u64::from(sel) << 4;
            if sreg == SegReg::Ss {
                self.cpu.interrupt_shadow = true;
            }
            return Ok(());
        }
        let cpl = self.cpu.cpl;
        let rpl = (sel & 3) as u8;
        if sel & 0xFFFC == 0 {
            if sreg == SegReg::Ss && !(self.mode == CpuMode::Long64 && cpl != 3) {
                return Err(Exception::GeneralProtection(0));
            }
            let s = &mut self.cpu.seg[sreg as usize];
            *s = Segment {
                selector: sel,
                attr: 0,
                limit: 0,
                base: if matches!(sreg, SegReg::Fs | SegReg::Gs) { 0 } else { s.base },
            };
            if sreg == SegReg::Ss {
                s.attr = seg_attr::S | seg_attr::RW | seg_attr::P | (u16::from(cpl) << 5) | seg_attr::DB;
                self.cpu.interrupt_shadow = true;
            }
            return Ok(());
        }
        let raw = self.read_descriptor(sel)?;
        let d = Segment::from_descriptor(sel, raw);
        let is_code = d.attr & seg_attr::CODE != 0;
        if d.attr & seg_attr::S == 0 {
            return Err(Exception::GeneralProtection(sel_err(sel)));
        }
        if sreg == SegReg::Ss {
            if is_code || d.attr & seg_attr::RW == 0 || rpl != cpl || d.dpl() != cpl {
                return Err(Exception::GeneralProtection(sel_err(sel)));
            }
            if d.attr & seg_attr::P == 0 {
                return Err(Exception::StackFault(sel_err(sel)));
            }
            self.cpu.interrupt_shadow = true;
        } else {
            if is_code && d.attr & seg_attr::RW == 0 {
                return Err(Exception::GeneralProtection(sel_err(sel)));
            }
            let conforming_code = is_code && d.attr & seg_attr::DC != 0;
            if !conforming_code && (cpl.max(rpl) > d.dpl()) {
                return Err(Exception::GeneralProtection(sel_err(sel)));
            }
            if d.attr & seg_attr::P == 0 {
                return Err(Exception::SegmentNotPresent(sel_err(sel)));
            }
        }
        self.set_accessed(sel, raw)?;
        let mut d = d;
        d.attr |= seg_attr::ACCESSED;
        self.cpu.seg[sreg as usize] = d;
        Ok(())
    }

    /// Loads CS for a far transfer to `sel` at privilege `new_cpl` (descriptor checks done by
    /// the caller).
    pub(crate) fn set_cs(&mut self, sel: u16, raw: u64, new_cpl: u8) {
        let mut d = Segment::from_descriptor((sel & !3) | u16::from(new_cpl), raw);
        d.attr |= seg_attr::ACCESSED;
        self.cpu.seg[SegReg::Cs as usize] = d;
        self.cpu.cpl = new_cpl;
        self.mode_changed = true;
        self.mode = self.cpu.mode();
    }

    /// Reads and checks a code-segment descriptor for a far transfer.
    fn code_descriptor(&mut self, sel: u16) -> Result<u64, Exception> {
        if sel & 0xFFFC == 0 {
            return Err(Exception::GeneralProtection(0));
        }
        let raw = self.read_descriptor(sel)?;
        let attr = ((raw >> 40) & 0xFF) as u16;
        if attr & seg_attr::S == 0 {
            // Call gates, task gates and TSS descriptors are not supported yet.
            log::debug!("far transfer through system descriptor {sel:#x} (type {:#x}) not supported", attr & 0xF);
            return Err(Exception::GeneralProtection(sel_err(sel)));
        }
        if attr & seg_attr::CODE == 0 {
            return Err(Exception::GeneralProtection(sel_err(sel)));
        }
        Ok(raw)
    }

    /// Far JMP.
    pub(crate) fn far_jump(&mut self, sel: u16, off: u64) -> Result<(), Exception> {
        if self.mode == CpuMode::Real || self.cpu.rflags & rflags::VM != 0 {
            let cs = &mut self.cpu.seg[SegReg::Cs as usize];
            cs.selector = sel;
            cs.base = u64::from(sel) << 4;
            self.cpu.rip = off & 0xFFFF_FFFF;
            self.mode_changed = true;
            return Ok(());
        }
        if sel & 0xFFFC == 0 {
            return Err(Exception::GeneralProtection(0));
        }
        let raw = self.read_descriptor(sel)?;
        if raw & (1 << 44) == 0 {
            return self.far_system(sel, raw, FarKind::Jmp);
        }
        self.far_to_code(sel, raw, off)
    }

    /// Far CALL: jumps like [`Self::far_jump`], then pushes CS and the return offset.
    pub(crate) fn far_call(&mut self, bits: u32, sel: u16, off: u64, next: u64) -> Result<(), Exception> {
        let protected = self.mode != CpuMode::Real && self.cpu.rflags & rflags::VM == 0;
        let mut raw = 0;
        if protected {
            if sel & 0xFFFC == 0 {
                return Err(Exception::GeneralProtection(0));
            }
            raw = self.read_descriptor(sel)?;
            if raw & (1 << 44) == 0 {
                return self.far_system(sel, raw, FarKind::Call { bits, next });
            }
        }
        let old_cs = u64::from(self.cpu.seg[SegReg::Cs as usize].selector);
        let saved = (self.cpu.seg[SegReg::Cs as usize], self.cpu.cpl, self.mode, self.cpu.rip);
        let sp = self.cpu.gpr[4];
        // Check the pushes against the current stack first.
        let n = u64::from(bits / 8);
        let lin = self.linear(SegReg::Ss, sp.wrapping_sub(2 * n) & self.cpu.stack_mask(), 2 * n)?;
        self.probe_write(lin, (2 * n) as usize)?;
        if protected {
            self.far_to_code(sel, raw, off)?;
        } else {
            self.far_jump(sel, off)?;
        }
        let r = self.push(bits, old_cs).and_then(|_| self.push(bits, next));
        if r.is_err() {
            self.cpu.seg[SegReg::Cs as usize] = saved.0;
            self.cpu.cpl = saved.1;
            self.mode = saved.2;
            self.cpu.rip = saved.3;
        }
        r
    }

    /// A far JMP/CALL straight to a code segment at the same privilege level.
    fn far_to_code(&mut self, sel: u16, raw: u64, off: u64) -> Result<(), Exception> {
        if raw & (1 << 43) == 0 {
            return Err(Exception::GeneralProtection(sel_err(sel)));
        }
        let d = Segment::from_descriptor(sel, raw);
        let cpl = self.cpu.cpl;
        let rpl = (sel & 3) as u8;
        let conforming = d.attr & seg_attr::DC != 0;
        if (conforming && d.dpl() > cpl) || (!conforming && (rpl > cpl || d.dpl() != cpl)) {
            return Err(Exception::GeneralProtection(sel_err(sel)));
        }
        if d.attr & seg_attr::P == 0 {
            return Err(Exception::SegmentNotPresent(sel_err(sel)));
        }
        let long_target = self.cpu.efer & crate::state::cr::EFER_LMA != 0 && d.attr & seg_attr::L != 0;
        if !long_target && off > u64::from(d.limit) {
            return Err(Exception::GeneralProtection(0));
        }
        self.set_cs(sel, raw, cpl);
        self.cpu.rip = if long_target { off } else { off & 0xFFFF_FFFF };
        Ok(())
    }

    /// Far RET (`RETF imm`): pops CS:IP (and SS:SP for a return to an outer level).
    pub(crate) fn far_return(&mut self, bits: u32, imm: u64) -> Result<(), Exception> {
        let sz = u64::from(bits / 8);
        let sp = self.cpu.gpr[4];
        let ip = self.stack_read(sp, bits)?;
        let sel = self.stack_read(sp.wrapping_add(sz), bits)? as u16;
        if self.mode == CpuMode::Real || self.cpu.rflags & rflags::VM != 0 {
            self.far_jump(sel, ip)?;
            self.set_sp(sp.wrapping_add(2 * sz + imm));
            return Ok(());
        }
        let raw = self.code_descriptor(sel)?;
        let d = Segment::from_descriptor(sel, raw);
        let cpl = self.cpu.cpl;
        let rpl = (sel & 3) as u8;
        if rpl < cpl || (d.attr & seg_attr::DC != 0 && d.dpl() > rpl) || (d.attr & seg_attr::DC == 0 && d.dpl() != rpl)
        {
            return Err(Exception::GeneralProtection(sel_err(sel)));
        }
        if d.attr & seg_attr::P == 0 {
            return Err(Exception::SegmentNotPresent(sel_err(sel)));
        }
        if rpl > cpl {
            let nsp = self.stack_read(sp.wrapping_add(2 * sz + imm), bits)?;
            let nss = self.stack_read(sp.wrapping_add(3 * sz + imm), bits)? as u16;
            self.set_cs(sel, raw, rpl);
            self.cpu.rip = ip;
            self.load_seg(SegReg::Ss, nss)?;
            self.set_sp(nsp.wrapping_add(imm));
            self.null_outer_data_segs();
        } else {
            self.set_cs(sel, raw, cpl);
            self.cpu.rip = ip;
            self.set_sp(sp.wrapping_add(2 * sz + imm));
        }
        Ok(())
    }

    /// After a return to an outer level, data segments the new CPL may not use become null.
    fn null_outer_data_segs(&mut self) {
        let cpl = self.cpu.cpl;
        for s in [SegReg::Es, SegReg::Ds, SegReg::Fs, SegReg::Gs] {
            let seg = &mut self.cpu.seg[s as usize];
            let conforming_code = seg.attr & seg_attr::CODE != 0 && seg.attr & seg_attr::DC != 0;
            if !conforming_code && seg.dpl() < cpl {
                seg.selector = 0;
                seg.attr = 0;
            }
        }
    }

    /// Reads from the stack at offset `sp` (SS-relative) with the current stack width.
    pub(crate) fn stack_read(&mut self, sp: u64, bits: u32) -> Result<u64, Exception> {
        let off = sp & self.cpu.stack_mask();
        self.read_mem(SegReg::Ss, off, bits)
    }

    /// Sets RSP, respecting the stack width (a 16-bit stack changes only SP).
    pub(crate) fn set_sp(&mut self, v: u64) {
        let m = self.cpu.stack_mask();
        self.cpu.gpr[4] = (self.cpu.gpr[4] & !m) | (v & m);
    }

    /// Pushes `bits` of `val`.
    pub(crate) fn push(&mut self, bits: u32, val: u64) -> Result<(), Exception> {
        let n = u64::from(bits / 8);
        let sp = self.cpu.gpr[4].wrapping_sub(n) & self.cpu.stack_mask();
        self.write_mem(SegReg::Ss, sp, bits, val)?;
        self.set_sp(sp);
        Ok(())
    }

    /// Pops `bits`.
    pub(crate) fn pop(&mut self, bits: u32) -> Result<u64, Exception> {
        let sp = self.cpu.gpr[4];
        let v = self.stack_read(sp, bits)?;
        self.set_sp(sp.wrapping_add(u64::from(bits / 8)));
        Ok(v)
    }

    /// Writes RFLAGS from POPF/IRET with the privilege rules of SDM POPF.
    pub(crate) fn write_flags(&mut self, new: u64, bits: u32, from_iret: bool) {
        let cur = self.cpu.rflags();
        let cpl = self.cpu.cpl;
        let iopl = ((cur & rflags::IOPL) >> 12) as u8;
        let mut mask = rflags::STATUS | rflags::TF | rflags::DF | rflags::NT | rflags::AC | rflags::ID;
        if self.mode == CpuMode::Real || cpl == 0 {
            mask |= rflags::IOPL | rflags::IF;
        } else if cpl <= iopl {
            mask |= rflags::IF;
        }
        if from_iret {
            mask |= rflags::RF;
            if cpl == 0 {
                mask |= rflags::VIF | rflags::VIP;
            }
        }
        if bits == 16 {
            mask &= 0xFFFF;
        }
        self.cpu.set_rflags((cur & !mask) | (new & mask));
    }

    /// IRET/IRETD/IRETQ.
    pub(crate) fn iret(&mut self, bits: u32) -> Result<(), Exception> {
        let sz = u64::from(bits / 8);
        let sp = self.cpu.gpr[4];
        let ip = self.stack_read(sp, bits)?;
        let sel = self.stack_read(sp.wrapping_add(sz), bits)? as u16;
        let fl = self.stack_read(sp.wrapping_add(2 * sz), bits)?;
        if self.mode == CpuMode::Real {
            self.far_jump(sel, ip)?;
            self.set_sp(sp.wrapping_add(3 * sz));
            self.write_flags(fl, bits, true);
            return Ok(());
        }
        if self.cpu.rflags & rflags::VM != 0 {
            return self.v86_iret(bits);
        }
        if self.cpu.rflags & rflags::NT != 0 && self.cpu.efer & crate::state::cr::EFER_LMA == 0 {
            return self.iret_task();
        }
        // IA-32e mode ignores the popped VM bit (SDM IRET: "IF EFLAGS.VM = 1 ... not in IA-32e").
        if fl & rflags::VM != 0 && self.cpu.cpl == 0 && bits == 32 && self.cpu.efer & crate::state::cr::EFER_LMA == 0 {
            return self.iret_to_v86(sp);
        }
        let raw = self.code_descriptor(sel)?;
        let d = Segment::from_descriptor(sel, raw);
        let cpl = self.cpu.cpl;
        let rpl = (sel & 3) as u8;
        if rpl < cpl || (d.attr & seg_attr::DC != 0 && d.dpl() > rpl) || (d.attr & seg_attr::DC == 0 && d.dpl() != rpl)
        {
            return Err(Exception::GeneralProtection(sel_err(sel)));
        }
        if d.attr & seg_attr::P == 0 {
            return Err(Exception::SegmentNotPresent(sel_err(sel)));
        }
        let long = self.mode == CpuMode::Long64;
        if rpl > cpl || long {
            let nsp = self.stack_read(sp.wrapping_add(3 * sz), bits)?;
            let nss = self.stack_read(sp.wrapping_add(4 * sz), bits)? as u16;
            // Flags are written with the old CPL's rights.
            self.write_flags(fl, bits, true);
            self.set_cs(sel, raw, rpl);
            self.cpu.rip = ip;
            if long && nss & 0xFFFC == 0 && rpl != 3 {
                let s = &mut self.cpu.seg[SegReg::Ss as usize];
                s.selector = nss;
                s.attr = seg_attr::S | seg_attr::RW | seg_attr::P | (u16::from(rpl) << 5) | seg_attr::DB;
            } else {
                self.load_seg(SegReg::Ss, nss)?;
            }
            if long || bits == 64 {
                self.cpu.gpr[4] = nsp;
            } else {
                self.set_sp(nsp);
            }
            if rpl > cpl {
                self.null_outer_data_segs();
            }
        } else {
            self.write_flags(fl, bits, true);
            self.set_cs(sel, raw, cpl);
            self.cpu.rip = ip;
            self.set_sp(sp.wrapping_add(3 * sz));
        }
        self.cpu.interrupt_shadow = false;
        Ok(())
    }

    /// Delivers interrupt `vector`. `ret_rip` is the RIP pushed (the faulting instruction for
    /// faults, the next one for traps and software interrupts).
    pub(crate) fn deliver(
        &mut self,
        vector: u8,
        kind: IntKind,
        ret_rip: u64,
        err: Option<u32>,
    ) -> Result<(), Exception> {
        self.cpu.halted = false;
        if self.mode == CpuMode::Real {
            return self.deliver_real(vector, ret_rip);
        }
        // Snapshot what delivery changes, so a fault midway leaves the state untouched.
        let saved = (self.cpu.seg, self.cpu.gpr[4], self.cpu.cpl, self.cpu.rflags(), self.cpu.rip);
        let r = self.deliver_protected(vector, kind, ret_rip, err);
        if r.is_err() {
            self.cpu.seg = saved.0;
            self.cpu.gpr[4] = saved.1;
            self.cpu.cpl = saved.2;
            self.cpu.set_rflags(saved.3);
            self.cpu.rip = saved.4;
            self.mode = self.cpu.mode();
        }
        r
    }

    fn deliver_real(&mut self, vector: u8, ret_rip: u64) -> Result<(), Exception> {
        let off = u64::from(vector) * 4;
        if off + 3 > u64::from(self.cpu.idtr.limit) {
            return Err(Exception::GeneralProtection(0));
        }
        let ent = self.read_sys(self.cpu.idtr.base.wrapping_add(off), 4)?;
        let fl = self.cpu.rflags();
        let cs = self.cpu.seg[SegReg::Cs as usize].selector;
        self.push(16, fl)?;
        self.push(16, u64::from(cs))?;
        self.push(16, ret_rip)?;
        self.cpu.set_rflags(fl & !(rflags::IF | rflags::TF | rflags::AC | rflags::RF));
        let cs = &mut self.cpu.seg[SegReg::Cs as usize];
        cs.selector = (ent >> 16) as u16;
        cs.base = (ent >> 16) << 4;
        self.cpu.rip = ent & 0xFFFF;
        Ok(())
    }

    fn deliver_protected(
        &mut self,
        vector: u8,
        kind: IntKind,
        ret_rip: u64,
        err: Option<u32>,
    ) -> Result<(), Exception> {
        let long = self.cpu.efer & crate::state::cr::EFER_LMA != 0;
        let ext = u16::from(kind != IntKind::Software);
        let idt_err = u16::from(vector) * 8 + 2 + ext;
        let esz: u64 = if long { 16 } else { 8 };
        let off = u64::from(vector) * esz;
        if off + esz - 1 > u64::from(self.cpu.idtr.limit) {
            return Err(Exception::GeneralProtection(idt_err));
        }
        let base = self.cpu.idtr.base.wrapping_add(off);
        let lo = self.read_sys(base, 8)?;
        let hi = if long { self.read_sys(base + 8, 8)? } else { 0 };
        let gtype = ((lo >> 40) & 0xF) as u8;
        let gdpl = ((lo >> 45) & 3) as u8;
        let present = lo & (1 << 47) != 0;
        let valid = if long { matches!(gtype, 0xE | 0xF) } else { matches!(gtype, 0x5 | 0x6 | 0x7 | 0xE | 0xF) };
        if !valid {
            log::debug!("IDT vector {vector}: gate type {gtype:#x} not supported");
            return Err(Exception::GeneralProtection(idt_err));
        }
        if kind == IntKind::Software && gdpl < self.cpu.cpl {
            return Err(Exception::GeneralProtection(idt_err));
        }
        if !present {
            return Err(Exception::SegmentNotPresent(idt_err));
        }
        let sel = ((lo >> 16) & 0xFFFF) as u16;
        if gtype == 0x5 {
            // Task gate: switch tasks, then push the error code on the new task's stack.
            if sel & 4 != 0 {
                return Err(Exception::InvalidTss(sel_err(sel)));
            }
            let raw = self.read_descriptor(sel).map_err(|_| Exception::InvalidTss(sel_err(sel)))?;
            self.task_switch(sel, raw, SwitchReason::Int, ret_rip)?;
            if let Some(e) = err {
                let bits = if self.cpu.seg[SegReg::Ss as usize].attr & seg_attr::DB != 0 { 32 } else { 16 };
                self.push(bits, u64::from(e))?;
            }
            return Ok(());
        }
        let mut target = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF_0000);
        if long {
            target |= (hi & 0xFFFF_FFFF) << 32;
        }
        let ist = if long { (lo >> 32) & 7 } else { 0 };
        if sel & 0xFFFC == 0 {
            return Err(Exception::GeneralProtection(ext));
        }
        let raw = self.read_descriptor(sel).map_err(|_| Exception::GeneralProtection(sel_err(sel) | ext))?;
        let d = Segment::from_descriptor(sel, raw);
        if d.attr & seg_attr::S == 0 || d.attr & seg_attr::CODE == 0 || d.dpl() > self.cpu.cpl {
            return Err(Exception::GeneralProtection(sel_err(sel) | ext));
        }
        if d.attr & seg_attr::P == 0 {
            return Err(Exception::SegmentNotPresent(sel_err(sel) | ext));
        }
        if long && d.attr & seg_attr::L == 0 {
            return Err(Exception::GeneralProtection(sel_err(sel) | ext));
        }
        let old_cpl = self.cpu.cpl;
        let new_cpl = if d.attr & seg_attr::DC != 0 { old_cpl } else { d.dpl() };
        // From virtual-8086 mode only a CPL 0 handler (non-conforming code) can be entered, and
        // only through a 32-bit gate (SDM 20.3.1.1).
        let fl = self.cpu.rflags();
        let from_v86 = self.cpu.rflags & rflags::VM != 0;
        if from_v86 {
            if new_cpl != 0 {
                return Err(Exception::GeneralProtection(sel_err(sel) | ext));
            }
            if gtype & 8 == 0 {
                return Err(Exception::GeneralProtection(idt_err));
            }
            // Segment loads below are protected-mode loads.
            self.cpu.rflags &= !rflags::VM;
        }
        let v86_segs = [SegReg::Gs, SegReg::Fs, SegReg::Ds, SegReg::Es].map(|s| self.cpu.seg[s as usize].selector);
        let old_ss = self.cpu.seg[SegReg::Ss as usize].selector;
        let old_sp = self.cpu.gpr[4];
        let old_cs = self.cpu.seg[SegReg::Cs as usize].selector;
        let gate_bits: u32 = if long {
            64
        } else if gtype & 8 != 0 {
            32
        } else {
            16
        };
        let tss = self.cpu.tr;
        if long {
            let switch = new_cpl < old_cpl;
            if switch || ist != 0 {
                let slot = if ist != 0 { 0x24 + 8 * (ist - 1) } else { 4 + 8 * u64::from(new_cpl) };
                if slot + 7 > u64::from(tss.limit) {
                    return Err(Exception::InvalidTss(sel_err(tss.selector)));
                }
                let nsp = self.read_sys(tss.base.wrapping_add(slot), 8)?;
                self.cpu.gpr[4] = nsp;
            }
            if switch {
                let s = &mut self.cpu.seg[SegReg::Ss as usize];
                *s = Segment {
                    selector: u16::from(new_cpl),
                    attr: seg_attr::S | seg_attr::RW | seg_attr::P | (u16::from(new_cpl) << 5),
                    limit: 0,
                    base: 0,
                };
            }
            self.cpu.gpr[4] &= !0xF;
            self.set_cs(sel, raw, new_cpl);
            self.push(64, u64::from(old_ss))?;
            self.push(64, old_sp)?;
            self.push(64, fl)?;
            self.push(64, u64::from(old_cs))?;
            self.push(64, ret_rip)?;
            if let Some(e) = err {
                self.push(64, u64::from(e))?;
            }
        } else {
            if new_cpl < old_cpl {
                let slot = 4 + 8 * u64::from(new_cpl);
                if slot + 5 > u64::from(tss.limit) {
                    return Err(Exception::InvalidTss(sel_err(tss.selector)));
                }
                let nsp = self.read_sys(tss.base.wrapping_add(slot), 4)?;
                let nss = self.read_sys(tss.base.wrapping_add(slot + 4), 2)? as u16;
                self.cpu.cpl = new_cpl;
                self.load_seg(SegReg::Ss, nss).map_err(|_| Exception::InvalidTss(sel_err(nss)))?;
                self.cpu.gpr[4] = nsp;
                self.set_cs(sel, raw, new_cpl);
                if from_v86 {
                    for s in v86_segs {
                        self.push(32, u64::from(s))?;
                    }
                    for s in [SegReg::Gs, SegReg::Fs, SegReg::Ds, SegReg::Es] {
                        self.cpu.seg[s as usize] = Segment::default();
                    }
                }
                self.push(gate_bits, u64::from(old_ss))?;
                self.push(gate_bits, old_sp)?;
            } else {
                self.set_cs(sel, raw, new_cpl);
            }
            self.push(gate_bits, fl)?;
            self.push(gate_bits, u64::from(old_cs))?;
            self.push(gate_bits, ret_rip)?;
            if let Some(e) = err {
                self.push(gate_bits, u64::from(e))?;
            }
            if gate_bits == 16 {
                target &= 0xFFFF;
            }
        }
        let mut nf = fl & !(rflags::TF | rflags::NT | rflags::RF | rflags::VM);
        if gtype & 1 == 0 {
            nf &= !rflags::IF;
        }
        self.cpu.set_rflags(nf);
        self.cpu.rip = target;
        self.mode_changed = true;
        Ok(())
    }
}
