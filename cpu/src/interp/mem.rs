//! Memory access for the interpreter: segmentation, the soft-TLB fast path and the slow path
//! (page walks, MMIO, ROM, unmapped space, self-modifying code).

use super::Cx;
use crate::exception::Exception;
use crate::state::{seg_attr, CpuMode, SegReg};
use base::{AccessSize, GuestPhysAddr};
use mmu::{RegionKind, TlbAccess, TlbEntry, TlbSide, WalkAccess, WalkRegs, PAGE_MASK, TLB_SLOW};

/// A translation just installed in the TLB: the entry (tags without generation) and its side data.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Filled {
    pub(crate) e: TlbEntry,
    pub(crate) side: TlbSide,
}

/// Little-endian load of `size` bytes (1, 2, 4 or 8) without a memcpy call.
#[inline(always)]
fn load_le(m: &[u8], at: usize, size: usize) -> Option<u64> {
    Some(match size {
        1 => u64::from(*m.get(at)?),
        2 => u64::from(u16::from_le_bytes(m.get(at..at + 2)?.try_into().ok()?)),
        4 => u64::from(u32::from_le_bytes(m.get(at..at + 4)?.try_into().ok()?)),
        8 => u64::from_le_bytes(m.get(at..at + 8)?.try_into().ok()?),
        _ => {
            let mut buf = [0u8; 8];
            buf[..size].copy_from_slice(m.get(at..at + size)?);
            u64::from_le_bytes(buf)
        }
    })
}

/// Little-endian store of `size` bytes (1, 2, 4 or 8); false if out of range.
#[inline(always)]
fn store_le(m: &mut [u8], at: usize, size: usize, v: u64) -> bool {
    match size {
        1 => m.get_mut(at).map(|b| *b = v as u8).is_some(),
        2 => m.get_mut(at..at + 2).map(|s| s.copy_from_slice(&(v as u16).to_le_bytes())).is_some(),
        4 => m.get_mut(at..at + 4).map(|s| s.copy_from_slice(&(v as u32).to_le_bytes())).is_some(),
        8 => m.get_mut(at..at + 8).map(|s| s.copy_from_slice(&v.to_le_bytes())).is_some(),
        _ => m.get_mut(at..at + size).map(|s| s.copy_from_slice(&v.to_le_bytes()[..size])).is_some(),
    }
}

/// #AC(0) for a misaligned 2-, 4- or 8-byte data access (SDM 6.15, interrupt 17: a word at an
/// odd address, a doubleword not at a multiple of 4, a quadword not at a multiple of 8).
fn check_alignment(lin: u64, size: usize) -> Result<(), Exception> {
    if matches!(size, 2 | 4 | 8) && lin & (size as u64 - 1) != 0 {
        return Err(Exception::AlignmentCheck);
    }
    Ok(())
}

impl Cx<'_> {
    /// Alignment checking is on: CR0.AM, EFLAGS.AC and CPL 3 (SDM 2.5, 6.15 interrupt 17).
    pub(crate) fn alignment_checking(&self) -> bool {
        self.cpu.cr0 & crate::state::cr::CR0_AM != 0
            && self.cpu.rflags & crate::state::rflags::AC != 0
            && self.cpu.cpl == 3
    }

    /// Called from the slow fetch: when alignment checking turns on or off, the TLB is flushed
    /// so that user entries are refilled with slow (checked) or fast tags. Every instruction that
    /// can change CR0, EFLAGS.AC or the CPL ends its fetch page, so the next fetch comes here.
    pub(crate) fn update_alignment_checking(&mut self) {
        let on = self.alignment_checking();
        if on != self.ac_active {
            self.ac_active = on;
            self.cpu.tlb.flush_all();
        }
    }

    /// Linear address of `size` bytes at `seg:off`, with the limit (or canonical) check.
    #[inline]
    pub(crate) fn linear(&self, seg: SegReg, off: u64, size: u64) -> Result<u64, Exception> {
        self.linear_for::<false>(seg, off, size)
    }

    /// [`Self::linear`] for a write: outside 64-bit mode the segment must also be writable
    /// (see [`Self::check_writable`]); 64-bit mode pays nothing for the check.
    #[inline(always)]
    fn linear_for<const WRITE: bool>(&self, seg: SegReg, off: u64, size: u64) -> Result<u64, Exception> {
        let s = &self.cpu.seg[seg as usize];
        if self.mode == CpuMode::Long64 {
            let lin = match seg {
                SegReg::Fs | SegReg::Gs => off.wrapping_add(s.base),
                _ => off,
            };
            let canon = ((lin << 16) as i64 >> 16) as u64 == lin;
            if !canon {
                return Err(if seg == SegReg::Ss { Exception::StackFault(0) } else { Exception::GeneralProtection(0) });
            }
            return Ok(lin);
        }
        if WRITE {
            self.check_writable(seg)?;
        }
        if off.wrapping_add(size - 1) > u64::from(s.limit) || off.wrapping_add(size - 1) < off {
            return Err(if seg == SegReg::Ss { Exception::StackFault(0) } else { Exception::GeneralProtection(0) });
        }
        Ok(s.base.wrapping_add(off) & 0xFFFF_FFFF)
    }

    fn walk_regs(&self) -> WalkRegs {
        WalkRegs { cr0: self.cpu.cr0, cr3: self.cpu.cr3, cr4: self.cpu.cr4, efer: self.cpu.efer }
    }

    /// Walks the page tables for `lin` and installs a TLB entry for its page.
    pub(crate) fn tlb_fill(&mut self, lin: u64, access: TlbAccess, user: bool) -> Result<Filled, Exception> {
        let regs = self.walk_regs();
        let walk = WalkAccess { write: access == TlbAccess::Write, user, fetch: access == TlbAccess::Exec };
        let mem = self.bus.memory();
        // Addends are host addresses: the TLB must know where this memory lives (a state
        // moved to another copy of memory moves its entries with it).
        self.cpu.tlb.set_host_base(mem.host_base() as u64);
        let t = mmu::translate(&regs, lin & PAGE_MASK | (lin & 0xFFF), walk, mem)
            .map_err(|pf| Exception::PageFault { addr: pf.addr, code: pf.code })?;
        self.cpu.tlb.stats.misses += 1;
        let page = lin & PAGE_MASK;
        let phys_page = t.phys & PAGE_MASK;
        let slow = page | TLB_SLOW;
        let side = TlbSide::new(phys_page, t.global, t.page_bits);
        let mut e = TlbEntry { read_tag: slow, write_tag: slow, exec_tag: slow, addend: 0 };
        if let Some(r) = mem.lookup(GuestPhysAddr(phys_page)) {
            match r.kind {
                RegionKind::Ram { backing } | RegionKind::Rom { backing } => {
                    let bpage = backing + (phys_page - r.start);
                    e.addend = bpage.wrapping_sub(page);
                    e.read_tag = page;
                    if t.executable {
                        e.exec_tag = page;
                    }
                    let ram = matches!(r.kind, RegionKind::Ram { .. });
                    // No cached code on the page and, while the dirty log records, the page
                    // already logged (see `mmu::dirty`).
                    if ram && t.writable && t.dirty && mem.allows_fast_write(bpage >> 12) {
                        e.write_tag = page;
                        mem.dirty_log().granted(mmu::SoftTlb::slot(user, lin));
                    }
                }
                RegionKind::Mmio { .. } => {}
            }
        }
        if self.page_watched(page) || (self.ac_active && user) {
            // A data breakpoint lies on this page, or user accesses are alignment-checked:
            // reads and writes must reach the slow path (and its checks) every time; the
            // caller still gets the real entry.
            let mut watched = e;
            watched.read_tag |= TLB_SLOW;
            watched.write_tag |= TLB_SLOW;
            self.cpu.tlb.fill(user, lin, watched, side);
        } else {
            self.cpu.tlb.fill(user, lin, e, side);
        }
        Ok(Filled { e, side })
    }

    #[inline]
    fn user(&self) -> bool {
        self.cpu.cpl == 3 && !self.sys_access
    }

    /// Reads `size` (1..=8) bytes at a linear address.
    #[inline]
    pub(crate) fn read_lin(&mut self, lin: u64, size: usize) -> Result<u64, Exception> {
        let user = self.user();
        if let Some(b) = self.cpu.tlb.lookup(user, TlbAccess::Read, lin, size as u64) {
            if let Some(v) = load_le(self.bus.memory().backing(), b as usize, size) {
                return Ok(v);
            }
        }
        self.read_lin_slow(lin, size, user)
    }

    fn read_lin_slow(&mut self, lin: u64, size: usize, user: bool) -> Result<u64, Exception> {
        if self.ac_active && user {
            check_alignment(lin, size)?;
        }
        if (lin & 0xFFF) as usize + size > 0x1000 {
            // Crosses a page: assemble from bytes (each byte checks its own page).
            let mut v = 0u64;
            for i in 0..size {
                v |= self.read_lin(lin.wrapping_add(i as u64), 1)? << (8 * i);
            }
            return Ok(v);
        }
        if self.cpu.dr[7] & 0xFF != 0 {
            self.data_breakpoint_check(lin, size, false);
        }
        let Filled { e, side } = self.tlb_fill(lin, TlbAccess::Read, user)?;
        let phys = side.phys_page | (lin & 0xFFF);
        if e.read_tag & TLB_SLOW == 0 {
            let b = lin.wrapping_add(e.addend) as usize;
            let m = self.bus.memory().backing();
            let mut buf = [0u8; 8];
            if let Some(s) = m.get(b..b + size) {
                buf[..size].copy_from_slice(s);
            }
            return Ok(u64::from_le_bytes(buf));
        }
        self.phys_read_device(phys, size)
    }

    fn phys_read_device(&mut self, phys: u64, size: usize) -> Result<u64, Exception> {
        let region = self.bus.memory().lookup(GuestPhysAddr(phys)).copied();
        let width = AccessSize::from_bytes(size).unwrap_or(AccessSize::Byte);
        match region.map(|r| r.kind) {
            Some(RegionKind::Mmio { id }) => Ok(self.io_bus().mmio_read(id, GuestPhysAddr(phys), width) & width.mask()),
            _ => {
                log::debug!("read of unmapped physical address {phys:#x} ({size} bytes): open bus");
                Ok(width.mask())
            }
        }
    }

    /// Writes `size` (1..=8) bytes at a linear address.
    #[inline]
    pub(crate) fn write_lin(&mut self, lin: u64, size: usize, val: u64) -> Result<(), Exception> {
        let user = self.user();
        if let Some(b) = self.cpu.tlb.lookup(user, TlbAccess::Write, lin, size as u64) {
            if store_le(self.bus.memory().backing_mut(), b as usize, size, val) {
                return Ok(());
            }
        }
        self.write_lin_slow(lin, size, val, user)
    }

    fn write_lin_slow(&mut self, lin: u64, size: usize, val: u64, user: bool) -> Result<(), Exception> {
        if self.ac_active && user {
            check_alignment(lin, size)?;
        }
        if (lin & 0xFFF) as usize + size > 0x1000 {
            // Check both pages before writing anything, so a fault leaves memory unchanged.
            self.tlb_fill(lin, TlbAccess::Write, user)?;
            self.tlb_fill(lin.wrapping_add(size as u64 - 1), TlbAccess::Write, user)?;
            for i in 0..size {
                self.write_lin(lin.wrapping_add(i as u64), 1, val >> (8 * i))?;
            }
            return Ok(());
        }
        if self.cpu.dr[7] & 0xFF != 0 {
            self.data_breakpoint_check(lin, size, true);
        }
        let Filled { e, side } = self.tlb_fill(lin, TlbAccess::Write, user)?;
        let phys = side.phys_page | (lin & 0xFFF);
        let region = self.bus.memory().lookup(GuestPhysAddr(phys)).copied();
        match region.map(|r| r.kind) {
            Some(RegionKind::Ram { backing }) => {
                let bpage = backing + (side.phys_page - region.map_or(0, |r| r.start));
                if self.bus.memory().code_write(bpage | (lin & 0xFFF), size as u64) {
                    self.cache.invalidate_page(bpage);
                    self.code_written = true;
                    // The fetch shortcut carries the old generation of the page's bank.
                    self.fetch_lin_page = u64::MAX;
                }
                let b = (bpage | (lin & 0xFFF)) as usize;
                self.bus.memory().dirty_log().record(b as u64, size as u64);
                if let Some(s) = self.bus.memory().backing_mut().get_mut(b..b + size) {
                    s.copy_from_slice(&val.to_le_bytes()[..size]);
                }
                // The page is dirty and holds no cached code now: let later writes go fast
                // (a finely tracked page keeps code in other chunks: writes stay slow).
                if !(self.page_watched(lin & PAGE_MASK)
                    || self.ac_active && user
                    || !self.bus.memory().allows_fast_write(bpage >> 12))
                {
                    let mut e2 = e;
                    e2.write_tag = lin & PAGE_MASK;
                    self.cpu.tlb.fill(user, lin, e2, side);
                    self.bus.memory().dirty_log().granted(mmu::SoftTlb::slot(user, lin));
                }
                Ok(())
            }
            Some(RegionKind::Rom { .. }) => {
                log::debug!("write to ROM at {phys:#x} dropped");
                Ok(())
            }
            Some(RegionKind::Mmio { id }) => {
                let width = AccessSize::from_bytes(size).unwrap_or(AccessSize::Byte);
                self.io_bus().mmio_write(id, GuestPhysAddr(phys), width, val & width.mask());
                self.io_written = true;
                Ok(())
            }
            None => {
                log::debug!("write to unmapped physical address {phys:#x} dropped");
                Ok(())
            }
        }
    }

    /// Checks that `size` bytes at `lin` are writable without writing (for multi-part stores).
    pub(crate) fn probe_write(&mut self, lin: u64, size: usize) -> Result<(), Exception> {
        let user = self.user();
        if self.cpu.tlb.lookup(user, TlbAccess::Write, lin, size as u64).is_some() {
            return Ok(());
        }
        self.tlb_fill(lin, TlbAccess::Write, user)?;
        if (lin & 0xFFF) as usize + size > 0x1000 {
            self.tlb_fill(lin.wrapping_add(size as u64 - 1), TlbAccess::Write, user)?;
        }
        Ok(())
    }

    /// Reads `bits` at `seg:off`.
    #[inline]
    pub(crate) fn read_mem(&mut self, seg: SegReg, off: u64, bits: u32) -> Result<u64, Exception> {
        let n = (bits / 8) as usize;
        let lin = self.linear(seg, off, n as u64)?;
        self.read_lin(lin, n)
    }

    /// In protected mode outside 64-bit mode, a write needs a writable data segment: a code
    /// segment, a read-only data segment or a null selector is #GP(0), #SS(0) for SS (SDM 5.4,
    /// 3.4.5.1 "Code- and Data-Segment Descriptor Types"). Real and virtual-8086 mode do not check
    /// (virtual-8086 segments are loaded as writable data).
    #[inline]
    pub(crate) fn check_writable(&self, seg: SegReg) -> Result<(), Exception> {
        if self.mode != CpuMode::Long64 {
            let a = self.cpu.seg[seg as usize].attr;
            if a & (seg_attr::CODE | seg_attr::RW) != seg_attr::RW && self.mode != CpuMode::Real {
                return Err(if seg == SegReg::Ss { Exception::StackFault(0) } else { Exception::GeneralProtection(0) });
            }
        }
        Ok(())
    }

    /// Writes `bits` at `seg:off`.
    #[inline]
    pub(crate) fn write_mem(&mut self, seg: SegReg, off: u64, bits: u32, val: u64) -> Result<(), Exception> {
        let n = (bits / 8) as usize;
        let lin = self.linear_for::<true>(seg, off, n as u64)?;
        self.write_lin(lin, n, val)
    }

    /// Reads a system structure (descriptor tables, TSS) with supervisor rights.
    pub(crate) fn read_sys(&mut self, lin: u64, size: usize) -> Result<u64, Exception> {
        let old = std::mem::replace(&mut self.sys_access, true);
        let r = self.read_lin(lin, size);
        self.sys_access = old;
        r
    }

    /// Writes a system structure with supervisor rights.
    pub(crate) fn write_sys(&mut self, lin: u64, size: usize, val: u64) -> Result<(), Exception> {
        let old = std::mem::replace(&mut self.sys_access, true);
        let r = self.write_lin(lin, size, val);
        self.sys_access = old;
        r
    }

    /// Fetches up to 15 instruction bytes at linear `lin`; returns the bytes available and the
    /// fault that stopped the fetch early, if any.
    pub(crate) fn fetch_bytes(&mut self, lin: u64, out: &mut [u8; 15]) -> (usize, Option<Exception>) {
        self.fetch_bytes_upto(lin, out, 15)
    }

    /// [`Cx::fetch_bytes`] of the first `want` (at most 15) bytes only.
    pub(crate) fn fetch_bytes_upto(&mut self, lin: u64, out: &mut [u8; 15], want: usize) -> (usize, Option<Exception>) {
        let user = self.user();
        let want = want.min(15);
        for (i, slot) in out.iter_mut().enumerate().take(want) {
            let a = lin.wrapping_add(i as u64);
            let a = if self.mode == CpuMode::Long64 { a } else { a & 0xFFFF_FFFF };
            let b = match self.cpu.tlb.lookup(user, TlbAccess::Exec, a, 1) {
                Some(b) => Some(b),
                None => match self.tlb_fill(a, TlbAccess::Exec, user) {
                    Ok(Filled { e, .. }) if e.exec_tag & TLB_SLOW == 0 => Some(a.wrapping_add(e.addend)),
                    Ok(Filled { side, .. }) => {
                        // Executing from MMIO or unmapped space.
                        match self.phys_read_device(side.phys_page | (a & 0xFFF), 1) {
                            Ok(v) => {
                                *slot = v as u8;
                                continue;
                            }
                            Err(x) => return (i, Some(x)),
                        }
                    }
                    Err(x) => return (i, Some(x)),
                },
            };
            if let Some(b) = b {
                *slot = self.bus.memory().backing().get(b as usize).copied().unwrap_or(0xFF);
            }
        }
        (want, None)
    }
}
