//! Virtual-8086 mode (Intel SDM vol. 3B chapter 20) and protected-mode virtual interrupts.
//!
//! - Entry: IRET at CPL 0 with a 32-bit operand size and VM = 1 in the popped EFLAGS (outside
//!   IA-32e mode), or a task switch to a TSS whose EFLAGS image has VM = 1.
//! - In the mode: CPL 3; every segment register is loaded 8086-style (base = selector × 16,
//!   limit 0xFFFF, a writable, accessed data segment of DPL 3); 16-bit code and stack.
//! - Exit: any interrupt or exception through a 32-bit interrupt or trap gate to a non-conforming
//!   CPL 0 code segment (else #GP(selector)). The handler's stack, from the TSS, receives GS, FS,
//!   DS, ES, SS, ESP, EFLAGS, CS, EIP (and an error code); GS, FS, DS and ES are then null.
//! - IOPL-sensitive instructions (CLI, STI, PUSHF, POPF, INT n, IRET) #GP(0) when IOPL < 3,
//!   except where CR4.VME lets them work on VIF/VIP or redirect INT n (table 20-2 and the
//!   interrupt-redirection bitmap, the 32 bytes below the I/O permission bitmap in the TSS).
//!   IN/OUT and INS/OUTS always consult the I/O permission bitmap (see `Cx::io_permitted`).
//! - With CR4.PVI, CLI and STI at CPL 3 with IOPL < 3 in protected mode change VIF instead of
//!   faulting (SDM 20.4).

use super::system::IntKind;
use super::Cx;
use crate::exception::Exception;
use crate::state::{cr, rflags, seg_attr, SegReg, Segment};

/// The segment cache virtual-8086 mode uses for `sel`.
fn v86_segment(sel: u16) -> Segment {
    Segment {
        selector: sel,
        attr: seg_attr::P | seg_attr::S | seg_attr::RW | seg_attr::ACCESSED | (3 << 5),
        limit: 0xFFFF,
        base: u64::from(sel) << 4,
    }
}

impl Cx<'_> {
    fn iopl(&self) -> u8 {
        ((self.cpu.rflags & rflags::IOPL) >> 12) as u8
    }

    /// Virtual-8086 mode with CR4.VME and IOPL < 3: CLI/STI/PUSHF/POPF work on VIF.
    pub(crate) fn v86_vif_path(&self) -> bool {
        self.cpu.rflags & rflags::VM != 0 && self.iopl() < 3 && self.cpu.cr4 & cr::CR4_VME != 0
    }

    /// Protected mode (not virtual-8086) with CR4.PVI, CPL 3 and IOPL < 3: CLI/STI use VIF.
    pub(crate) fn pvi_path(&self) -> bool {
        self.cpu.rflags & rflags::VM == 0
            && self.cpu.cr4 & cr::CR4_PVI != 0
            && self.cpu.cpl == 3
            && self.iopl() < 3
            && self.mode != crate::state::CpuMode::Real
    }

    /// Loads ES, CS, SS, DS, FS, GS (in that order in `sels`) the virtual-8086 way and sets CPL 3.
    pub(crate) fn enter_v86_segments(&mut self, sels: [u16; 6]) {
        for (k, &sel) in sels.iter().enumerate() {
            self.cpu.seg[k] = v86_segment(sel);
        }
        self.cpu.cpl = 3;
        self.mode_changed = true;
        self.mode = self.cpu.mode();
        self.fetch_lin_page = u64::MAX;
    }

    /// IRET at CPL 0 to virtual-8086 mode (SDM IRET, "RETURN-TO-VIRTUAL-8086-MODE"): the frame
    /// is EIP, CS, EFLAGS, ESP, SS, ES, DS, FS, GS, 32 bits each, at SS:`sp`.
    pub(crate) fn iret_to_v86(&mut self, sp: u64) -> Result<(), Exception> {
        let mut v = [0u64; 9];
        for (k, slot) in v.iter_mut().enumerate() {
            *slot = self.stack_read(sp.wrapping_add(4 * k as u64), 32)?;
        }
        // Every flag comes from the frame (CPL 0), VM included.
        self.cpu.set_rflags(v[2] & 0x003F_7FD5 | rflags::FIXED1);
        let sel = |x: u64| x as u16;
        self.enter_v86_segments([sel(v[5]), sel(v[1]), sel(v[4]), sel(v[6]), sel(v[7]), sel(v[8])]);
        self.cpu.rip = v[0] & 0xFFFF;
        self.cpu.gpr[4] = v[3] & 0xFFFF_FFFF;
        self.cpu.interrupt_shadow = false;
        Ok(())
    }

    /// IRET executed in virtual-8086 mode.
    pub(crate) fn v86_iret(&mut self, bits: u32) -> Result<(), Exception> {
        let vme = self.v86_vif_path();
        if self.iopl() < 3 && !(vme && bits == 16) {
            return Err(Exception::GeneralProtection(0));
        }
        let sz = u64::from(bits / 8);
        let sp = self.cpu.gpr[4];
        let ip = self.stack_read(sp, bits)?;
        let cs = self.stack_read(sp.wrapping_add(sz), bits)? as u16;
        let fl = self.stack_read(sp.wrapping_add(2 * sz), bits)?;
        let cur = self.cpu.rflags();
        let new = if vme {
            // IOPL < 3 with VME (16-bit only): TF = 1, or IF = 1 while VIP = 1, is #GP(0);
            // the popped IF goes to VIF, IF and IOPL stay.
            if fl & rflags::TF != 0 || (fl & rflags::IF != 0 && cur & rflags::VIP != 0) {
                return Err(Exception::GeneralProtection(0));
            }
            let vif = if fl & rflags::IF != 0 { rflags::VIF } else { 0 };
            let keep = !0xFFFF | rflags::IF | rflags::IOPL;
            (cur & keep & !rflags::VIF) | (fl & 0xFFFF & !keep) | vif
        } else {
            // IOPL = 3: VM, IOPL, VIP and VIF are not modified (RF is, for IRETD).
            let keep = rflags::VM | rflags::IOPL | rflags::VIP | rflags::VIF | if bits == 16 { !0xFFFF } else { 0 };
            (cur & keep) | (fl & !keep & 0x003F_7FD5)
        };
        self.cpu.seg[SegReg::Cs as usize] = v86_segment(cs);
        self.cpu.rip = ip & 0xFFFF;
        self.set_sp(sp.wrapping_add(3 * sz));
        self.cpu.set_rflags(new);
        self.mode_changed = true;
        self.fetch_lin_page = u64::MAX;
        Ok(())
    }

    /// INT n in virtual-8086 mode: SDM table 20-2.
    pub(crate) fn v86_int(&mut self, vector: u8, next: u64) -> Result<(), Exception> {
        let iopl3 = self.iopl() == 3;
        if self.cpu.cr4 & cr::CR4_VME == 0 {
            // Methods 1 and 2: the protected-mode handler with IOPL = 3, else #GP(0).
            if !iopl3 {
                return Err(Exception::GeneralProtection(0));
            }
            return self.deliver(vector, IntKind::Software, next, None);
        }
        if self.redirection_bit(vector)? {
            // Methods 3 and 4.
            if !iopl3 {
                return Err(Exception::GeneralProtection(0));
            }
            return self.deliver(vector, IntKind::Software, next, None);
        }
        // Methods 5 and 6: through the 8086 interrupt vector table at linear 0.
        let ent = self.read_lin(u64::from(vector) * 4, 4)?;
        let fl = self.cpu.rflags();
        let image = if iopl3 {
            fl & 0xFFFF
        } else {
            // IOPL < 3: the pushed FLAGS has IF = VIF and IOPL = 3.
            let vif_as_if = if fl & rflags::VIF != 0 { rflags::IF } else { 0 };
            (fl & 0xFFFF & !rflags::IF) | vif_as_if | rflags::IOPL
        };
        let cs = self.cpu.seg[SegReg::Cs as usize].selector;
        let sp = self.cpu.gpr[4];
        let lin = self.linear(SegReg::Ss, sp.wrapping_sub(6) & 0xFFFF, 6);
        if lin.is_err() {
            // The three words may wrap around the 64 KiB stack: check them one by one.
            for k in 1..=3u64 {
                self.linear(SegReg::Ss, sp.wrapping_sub(2 * k) & 0xFFFF, 2)?;
            }
        }
        self.push(16, image)?;
        self.push(16, u64::from(cs))?;
        self.push(16, next & 0xFFFF)?;
        let clear = if iopl3 { rflags::IF } else { rflags::VIF };
        self.cpu.set_rflags(fl & !(clear | rflags::TF | rflags::RF));
        let sel = (ent >> 16) as u16;
        self.cpu.seg[SegReg::Cs as usize] = v86_segment(sel);
        self.cpu.rip = ent & 0xFFFF;
        self.mode_changed = true;
        self.fetch_lin_page = u64::MAX;
        Ok(())
    }

    /// Bit `vector` of the TSS interrupt-redirection bitmap (the 32 bytes below the I/O map
    /// base). A bitmap outside the TSS limit counts as set.
    fn redirection_bit(&mut self, vector: u8) -> Result<bool, Exception> {
        let tss = self.cpu.tr;
        if tss.limit < 0x67 {
            return Err(Exception::GeneralProtection(0));
        }
        let io_base = self.read_sys(tss.base.wrapping_add(0x66), 2)?;
        let byte = (io_base + u64::from(vector / 8)).wrapping_sub(32);
        if io_base < 32 || byte > u64::from(tss.limit) {
            return Ok(true);
        }
        let b = self.read_sys(tss.base.wrapping_add(byte), 1)?;
        Ok(b & (1 << (vector & 7)) != 0)
    }

    /// CLI/STI on VIF (virtual-8086 mode with VME, or protected mode with PVI). STI with VIP
    /// set is #GP(0).
    pub(crate) fn v86_cli_sti(&mut self, sti: bool) -> Result<(), Exception> {
        if sti {
            if self.cpu.rflags & rflags::VIP != 0 {
                return Err(Exception::GeneralProtection(0));
            }
            self.cpu.rflags |= rflags::VIF;
        } else {
            self.cpu.rflags &= !rflags::VIF;
        }
        Ok(())
    }

    /// PUSHF in virtual-8086 mode with IOPL < 3: #GP(0) unless VME and 16-bit; then the image
    /// has IF = VIF and IOPL = 3.
    pub(crate) fn v86_pushf(&mut self, bits: u32) -> Result<(), Exception> {
        if !(self.v86_vif_path() && bits == 16) {
            return Err(Exception::GeneralProtection(0));
        }
        let fl = self.cpu.rflags();
        let vif_as_if = if fl & rflags::VIF != 0 { rflags::IF } else { 0 };
        self.push(16, (fl & 0xFFFF & !rflags::IF) | vif_as_if | rflags::IOPL)
    }

    /// POPF in virtual-8086 mode with IOPL < 3: #GP(0) unless VME and 16-bit; then TF = 1, or
    /// IF = 1 while VIP = 1, is #GP(0), and the popped IF goes to VIF (IF and IOPL stay).
    pub(crate) fn v86_popf(&mut self, bits: u32) -> Result<(), Exception> {
        if !(self.v86_vif_path() && bits == 16) {
            return Err(Exception::GeneralProtection(0));
        }
        let sp = self.cpu.gpr[4];
        let fl = self.stack_read(sp, 16)?;
        let cur = self.cpu.rflags();
        if fl & rflags::TF != 0 || (fl & rflags::IF != 0 && cur & rflags::VIP != 0) {
            return Err(Exception::GeneralProtection(0));
        }
        let vif = if fl & rflags::IF != 0 { rflags::VIF } else { 0 };
        let keep = !0xFFFF | rflags::IF | rflags::IOPL;
        self.cpu.set_rflags((cur & keep & !rflags::VIF) | (fl & !keep) | vif);
        self.set_sp(sp.wrapping_add(2));
        Ok(())
    }
}
