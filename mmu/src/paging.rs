//! The x86 page walk: 2-level (4 KiB, and 4 MiB with CR4.PSE), PAE and 4-level paging, with
//! U/S, R/W, WP, NX and global pages, accessed/dirty updates and #PF error codes (Intel SDM
//! vol. 3A, chapter 4).

use crate::phys::PhysMemory;
use base::GuestPhysAddr;

const PTE_P: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_US: u64 = 1 << 2;
const PTE_A: u64 = 1 << 5;
const PTE_D: u64 = 1 << 6;
const PTE_PS: u64 = 1 << 7;
const PTE_G: u64 = 1 << 8;
const PTE_NX: u64 = 1 << 63;

/// #PF error code bit: the fault was a protection violation (the page was present).
pub const PF_PRESENT: u32 = 1 << 0;
/// #PF error code bit: the access was a write.
pub const PF_WRITE: u32 = 1 << 1;
/// #PF error code bit: the access was made in user mode (CPL 3).
pub const PF_USER: u32 = 1 << 2;
/// #PF error code bit: a reserved bit was set in a paging-structure entry.
pub const PF_RSVD: u32 = 1 << 3;
/// #PF error code bit: the access was an instruction fetch.
pub const PF_FETCH: u32 = 1 << 4;

const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_PGE: u64 = 1 << 7;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// The guest's MAXPHYADDR (CPUID 0x8000_0008 EAX[7:0] must report the same).
pub const MAX_PHYS_BITS: u32 = 40;
const RESERVED_PHYS_BITS: u64 = ((1u64 << 52) - 1) & !((1u64 << MAX_PHYS_BITS) - 1);

/// Reserved bits of a large-page (PS = 1) directory entry besides the MAXPHYADDR ones (SDM
/// tables 4-4 and 4-18): a 2-MByte PAE/4-level page keeps bits 20:13 reserved (bit 12 is PAT);
/// a 4-MByte 32-bit page uses bits 20:13 for physical-address bits 39:32 (PSE-36 with
/// MAXPHYADDR 40), leaving bit 21 reserved.
fn large_page_reserved(wide: bool) -> u64 {
    if wide {
        0x1F_E000
    } else {
        1 << 21
    }
}

/// Which paging structure format is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingMode {
    /// CR0.PG clear: linear equals physical.
    Off,
    /// 32-bit 2-level paging.
    TwoLevel,
    /// PAE 3-level paging.
    Pae,
    /// 4-level paging (long mode).
    FourLevel,
}

/// The control registers that steer a walk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalkRegs {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// IA32_EFER.
    pub efer: u64,
}

impl WalkRegs {
    /// The paging mode these registers select.
    pub fn mode(&self) -> PagingMode {
        if self.cr0 & CR0_PG == 0 {
            PagingMode::Off
        } else if self.efer & EFER_LMA != 0 {
            PagingMode::FourLevel
        } else if self.cr4 & CR4_PAE != 0 {
            PagingMode::Pae
        } else {
            PagingMode::TwoLevel
        }
    }
}

/// What the access wants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalkAccess {
    /// A data write.
    pub write: bool,
    /// Made at CPL 3 (and not an implicit supervisor access).
    pub user: bool,
    /// An instruction fetch.
    pub fetch: bool,
}

/// A successful translation, with the rights the privilege class of the access has on the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// Physical address of the byte translated.
    pub phys: u64,
    /// Writes by this privilege class are allowed.
    pub writable: bool,
    /// Instruction fetches are allowed.
    pub executable: bool,
    /// The page is global (CR4.PGE and G set).
    pub global: bool,
    /// The final entry's dirty bit is already set (writes need no page-table update).
    pub dirty: bool,
    /// log2 of the size of the page that maps the address (12, 21, 22 or 30).
    pub page_bits: u32,
}

/// A page fault to deliver to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFault {
    /// The faulting linear address (goes into CR2).
    pub addr: u64,
    /// The #PF error code.
    pub code: u32,
}

fn read_entry(mem: &PhysMemory, addr: u64, wide: bool) -> u64 {
    let Some((off, _)) = mem.backing_offset(GuestPhysAddr(addr)) else { return 0 };
    let b = mem.backing();
    let off = off as usize;
    if wide {
        b.get(off..off + 8).map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
    } else {
        b.get(off..off + 4).map_or(0, |s| u64::from(u32::from_le_bytes(s.try_into().unwrap_or([0; 4]))))
    }
}

fn set_bits(mem: &mut PhysMemory, addr: u64, wide: bool, old: u64, bits: u64) {
    if old & bits == bits {
        return;
    }
    let Some((off, true)) = mem.backing_offset(GuestPhysAddr(addr)) else { return };
    let new = old | bits;
    mem.dirty_log().record(off, if wide { 8 } else { 4 });
    let off = off as usize;
    let b = mem.backing_mut();
    if wide {
        if let Some(s) = b.get_mut(off..off + 8) {
            s.copy_from_slice(&new.to_le_bytes());
        }
    } else if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&(new as u32).to_le_bytes());
    }
}

/// Translates `linear` for `access`, setting accessed and dirty bits as the SDM specifies.
pub fn translate(
    regs: &WalkRegs,
    linear: u64,
    access: WalkAccess,
    mem: &mut PhysMemory,
) -> Result<Translation, PageFault> {
    let mode = regs.mode();
    if mode == PagingMode::Off {
        return Ok(Translation {
            phys: linear & 0xFFFF_FFFF,
            writable: true,
            executable: true,
            global: false,
            dirty: true,
            page_bits: 12,
        });
    }
    let nxe = regs.efer & EFER_NXE != 0 && mode != PagingMode::TwoLevel;
    let base_code = (if access.write { PF_WRITE } else { 0 })
        | (if access.user { PF_USER } else { 0 })
        | (if access.fetch && nxe { PF_FETCH } else { 0 });
    let fault = |extra: u32| PageFault { addr: linear, code: base_code | extra };
    // Physical-address bits 51..MAXPHYADDR are reserved in 64-bit entries.
    // PAE entries also reserve bits 62:52 (SDM tables 4-8 to 4-10); 4-level paging ignores them.
    let rsvd_hi: u64 = if mode == PagingMode::Pae { RESERVED_PHYS_BITS | (0x7FF << 52) } else { RESERVED_PHYS_BITS };
    let nx_rsvd = if nxe { 0 } else { PTE_NX };

    let (levels, wide, mut table): (u32, bool, u64) = match mode {
        PagingMode::TwoLevel => (2, false, regs.cr3 & 0xFFFF_F000),
        PagingMode::Pae => {
            // The PDPTE is read at walk time rather than cached at CR3 load.
            let pdpte_addr = (regs.cr3 & 0xFFFF_FFE0) + ((linear >> 30) & 3) * 8;
            let pdpte = read_entry(mem, pdpte_addr, true);
            if pdpte & PTE_P == 0 {
                return Err(fault(0));
            }
            if pdpte & (0x1E6 | rsvd_hi | PTE_NX) != 0 {
                return Err(fault(PF_PRESENT | PF_RSVD));
            }
            (2, true, pdpte & 0x000F_FFFF_FFFF_F000)
        }
        PagingMode::FourLevel => (4, true, regs.cr3 & 0x000F_FFFF_FFFF_F000),
        PagingMode::Off => unreachable!("handled above"),
    };

    let mut user_ok = true;
    let mut write_ok = true;
    let mut exec_ok = true;
    let mut level = levels;
    loop {
        let shift = if wide { 12 + 9 * (level - 1) } else { 12 + 10 * (level - 1) };
        let idx_mask = if wide { 0x1FF } else { 0x3FF };
        let entry_addr = table + ((linear >> shift) & idx_mask) * if wide { 8 } else { 4 };
        let entry = read_entry(mem, entry_addr, wide);
        if entry & PTE_P == 0 {
            return Err(fault(0));
        }
        let large = level > 1 && entry & PTE_PS != 0;
        // 1-GByte pages are not supported (CPUID 0x8000_0001 EDX.Page1GB = 0), so PS in a
        // PDPTE is reserved, as it is in a PML4E (SDM 4.5, table 4-15).
        let large_allowed = match (mode, level) {
            (PagingMode::TwoLevel, 2) => regs.cr4 & CR4_PSE != 0,
            (PagingMode::Pae, 2) | (PagingMode::FourLevel, 2) => true,
            _ => false,
        };
        if wide && (entry & (rsvd_hi | nx_rsvd) != 0 || (large && !large_allowed && mode == PagingMode::FourLevel)) {
            return Err(fault(PF_PRESENT | PF_RSVD));
        }
        if large && large_allowed && entry & large_page_reserved(wide) != 0 {
            return Err(fault(PF_PRESENT | PF_RSVD));
        }
        user_ok &= entry & PTE_US != 0;
        write_ok &= entry & PTE_RW != 0;
        exec_ok &= !(nxe && entry & PTE_NX != 0);
        let leaf = level == 1 || (large && large_allowed);
        if !leaf {
            set_bits(mem, entry_addr, wide, entry, PTE_A);
            table = entry & if wide { 0x000F_FFFF_FFFF_F000 } else { 0xFFFF_F000 };
            level -= 1;
            continue;
        }
        // Permission checks (SDM 4.6).
        let wp = regs.cr0 & CR0_WP != 0;
        if access.user && !user_ok {
            return Err(fault(PF_PRESENT));
        }
        let may_write = if access.user { write_ok } else { write_ok || !wp };
        if access.write && !may_write {
            return Err(fault(PF_PRESENT));
        }
        if access.fetch && !exec_ok {
            return Err(fault(PF_PRESENT));
        }
        let page_bits = shift;
        let frame = if !wide && large {
            // 4 MiB page: bits 31..22 from the PDE, bits 39..32 from PDE bits 20..13 (PSE-36).
            (entry & 0xFFC0_0000) | ((entry >> 13) & 0xFF) << 32
        } else {
            entry & 0x000F_FFFF_FFFF_F000 & !((1u64 << page_bits) - 1)
        };
        let phys = frame | (linear & ((1u64 << page_bits) - 1));
        let mut bits = PTE_A;
        if access.write {
            bits |= PTE_D;
        }
        set_bits(mem, entry_addr, wide, entry, bits);
        return Ok(Translation {
            phys,
            writable: may_write,
            executable: exec_ok,
            global: entry & PTE_G != 0 && regs.cr4 & CR4_PGE != 0,
            dirty: access.write || entry & PTE_D != 0,
            page_bits,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> PhysMemory {
        let mut m = PhysMemory::new(0x40_0000).unwrap();
        m.map_ram(0, 0x40_0000).unwrap();
        m
    }

    fn put32(m: &mut PhysMemory, a: u64, v: u32) {
        m.load(GuestPhysAddr(a), &v.to_le_bytes()).unwrap();
    }
    fn put64(m: &mut PhysMemory, a: u64, v: u64) {
        m.load(GuestPhysAddr(a), &v.to_le_bytes()).unwrap();
    }
    fn get64(m: &PhysMemory, a: u64) -> u64 {
        let mut b = [0; 8];
        m.read(GuestPhysAddr(a), &mut b).unwrap();
        u64::from_le_bytes(b)
    }

    #[test]
    fn test_paging_two_level_4k_and_faults() {
        let mut m = mem();
        // PD at 0x1000, PT at 0x2000; map linear 0x40_3000 -> 0x8000, supervisor read-only.
        put32(&mut m, 0x1000 + 4, 0x2000 | 0x7);
        put32(&mut m, 0x2000 + 3 * 4, 0x8000 | 0x1);
        let regs = WalkRegs { cr0: CR0_PG | 1, cr3: 0x1000, cr4: 0, efer: 0 };
        let t = translate(&regs, 0x40_3123, WalkAccess::default(), &mut m).unwrap();
        assert_eq!(t.phys, 0x8123);
        assert!(!t.dirty);
        // Accessed bits set on both levels.
        assert_eq!(get64(&m, 0x1004) as u32 & 0x20, 0x20);
        assert_eq!(get64(&m, 0x200C) as u32 & 0x20, 0x20);
        // Supervisor write to read-only page with WP=0 succeeds and sets D.
        let t = translate(&regs, 0x40_3000, WalkAccess { write: true, ..Default::default() }, &mut m).unwrap();
        assert!(t.dirty);
        assert_eq!(get64(&m, 0x200C) as u32 & 0x40, 0x40);
        // With WP=1 it faults: present + write.
        let wp = WalkRegs { cr0: regs.cr0 | CR0_WP, ..regs };
        let f = translate(&wp, 0x40_3000, WalkAccess { write: true, ..Default::default() }, &mut m).unwrap_err();
        assert_eq!(f, PageFault { addr: 0x40_3000, code: PF_PRESENT | PF_WRITE });
        // User read of a supervisor page: present + user.
        let f = translate(&regs, 0x40_3004, WalkAccess { user: true, ..Default::default() }, &mut m).unwrap_err();
        assert_eq!(f.code, PF_PRESENT | PF_USER);
        // Not present.
        let f = translate(&regs, 0x80_0000, WalkAccess { user: true, write: true, ..Default::default() }, &mut m)
            .unwrap_err();
        assert_eq!(f.code, PF_USER | PF_WRITE);
    }

    #[test]
    fn test_paging_two_level_4m_pse() {
        let mut m = mem();
        put32(&mut m, 0x1000 + 2 * 4, 0x0040_0000 | 0x83);
        let regs = WalkRegs { cr0: CR0_PG, cr3: 0x1000, cr4: CR4_PSE, efer: 0 };
        assert_eq!(translate(&regs, 0x80_1234, WalkAccess::default(), &mut m).unwrap().phys, 0x40_1234);
        let nopse = WalkRegs { cr4: 0, ..regs };
        // Without PSE the PS bit is ignored and the entry points at a page table at 4 MiB,
        // outside RAM, which reads as a not-present entry.
        let f = translate(&nopse, 0x80_1234, WalkAccess::default(), &mut m).unwrap_err();
        assert_eq!(f.code, 0);
    }

    #[test]
    fn test_paging_four_level_nx_and_2m() {
        let mut m = mem();
        put64(&mut m, 0x1000, 0x2000 | 7); // PML4[0]
        put64(&mut m, 0x2000, 0x3000 | 7); // PDPT[0]
        put64(&mut m, 0x3000, 0x20_0000 | 0x83 | PTE_NX); // PD[0]: 2 MiB at 2 MiB, NX
        put64(&mut m, 0x3008, 0x4000 | 7); // PD[1] -> PT
        put64(&mut m, 0x4000 + 5 * 8, 0x9000 | 3 | PTE_G); // PT[5]
        let regs = WalkRegs { cr0: CR0_PG | 1, cr3: 0x1000, cr4: CR4_PAE | CR4_PGE, efer: EFER_LMA | EFER_NXE };
        assert_eq!(translate(&regs, 0x1_2345, WalkAccess::default(), &mut m).unwrap().phys, 0x21_2345);
        let f = translate(&regs, 0x1_2345, WalkAccess { fetch: true, ..Default::default() }, &mut m).unwrap_err();
        assert_eq!(f.code, PF_PRESENT | PF_FETCH);
        let t = translate(&regs, 0x20_5010, WalkAccess::default(), &mut m).unwrap();
        assert_eq!(t.phys, 0x9010);
        assert!(t.global);
        // NX set while EFER.NXE clear is a reserved-bit fault.
        let nonx = WalkRegs { efer: EFER_LMA, ..regs };
        let f = translate(&nonx, 0x1_2345, WalkAccess::default(), &mut m).unwrap_err();
        assert_eq!(f.code, PF_PRESENT | PF_RSVD);
    }

    /// Issue 11 item 10: reserved bits in paging-structure entries fault with PFEC = P | RSVD
    /// (bits 0 and 3), plus W/U/I for the access (SDM 4.7, "Page-Fault Exceptions").
    #[test]
    fn test_issue_11_reserved_bits_fault_with_rsvd() {
        let rsvd = PF_PRESENT | PF_RSVD;
        // 4-level: PML4 0x1000, PDPT 0x2000, PD 0x3000, PT 0x4000; 0x0 -> 4 KiB page at 0x8000,
        // 0x20_0000 -> 2 MiB page at 0x20_0000.
        let four = |m: &mut PhysMemory| {
            put64(m, 0x1000, 0x2000 | 7);
            put64(m, 0x2000, 0x3000 | 7);
            put64(m, 0x3000, 0x4000 | 7);
            put64(m, 0x3008, 0x20_0000 | 0x87);
            put64(m, 0x4000, 0x8000 | 7);
        };
        let regs = WalkRegs { cr0: CR0_PG | 1, cr3: 0x1000, cr4: CR4_PAE, efer: EFER_LMA | EFER_NXE };
        let read = WalkAccess::default();
        let uw = WalkAccess { user: true, write: true, fetch: false };
        let mut m = mem();
        four(&mut m);
        assert_eq!(translate(&regs, 0x123, read, &mut m).unwrap().phys, 0x8123);
        assert_eq!(translate(&regs, 0x20_0123, read, &mut m).unwrap().phys, 0x20_0123);
        // A PTE address bit at MAXPHYADDR (bit 40) is reserved.
        put64(&mut m, 0x4000, 0x8000 | 7 | (1 << MAX_PHYS_BITS));
        assert_eq!(translate(&regs, 0x123, uw, &mut m).unwrap_err().code, rsvd | PF_USER | PF_WRITE);
        // The same bit in the PML4E.
        four(&mut m);
        put64(&mut m, 0x1000, 0x2000 | 7 | (1 << 51));
        assert_eq!(translate(&regs, 0x123, read, &mut m).unwrap_err().code, rsvd);
        // PS in a PML4E is reserved; PS in a PDPTE too (no 1-GByte pages in CPUID).
        four(&mut m);
        put64(&mut m, 0x1000, 0x2000 | 0x87);
        assert_eq!(translate(&regs, 0x123, read, &mut m).unwrap_err().code, rsvd);
        four(&mut m);
        put64(&mut m, 0x2000, 0x87);
        assert_eq!(translate(&regs, 0x123, read, &mut m).unwrap_err().code, rsvd);
        // A 2-MByte PDE with bit 13 set (bits 20:13 reserved).
        four(&mut m);
        put64(&mut m, 0x3008, 0x20_0000 | 0x87 | (1 << 13));
        assert_eq!(translate(&regs, 0x20_0000, read, &mut m).unwrap_err().code, rsvd);
        // NX (bit 63) is reserved when EFER.NXE = 0; the fetch bit is then not reported.
        four(&mut m);
        put64(&mut m, 0x4000, 0x8000 | 7 | (1 << 63));
        let nonxe = WalkRegs { efer: EFER_LMA, ..regs };
        let fetch = WalkAccess { fetch: true, ..Default::default() };
        assert_eq!(translate(&nonxe, 0x123, fetch, &mut m).unwrap_err().code, rsvd);
        // With NXE it is the execute-disable bit: a fetch is a protection fault, not RSVD.
        assert_eq!(translate(&regs, 0x123, fetch, &mut m).unwrap_err().code, PF_PRESENT | PF_FETCH);
        // A not-present entry with reserved bits is a plain not-present fault (P = 0, no RSVD).
        put64(&mut m, 0x4000, 0x8000 | (1 << 45));
        assert_eq!(translate(&regs, 0x123, read, &mut m).unwrap_err().code, 0);

        // PAE: PDPTE reserved bits (bit 1, bit 63 NX) and PDE/PTE bits 62:52.
        let pae = WalkRegs { cr0: CR0_PG | 1, cr3: 0x1000, cr4: CR4_PAE, efer: 0 };
        let pae_tables = |m: &mut PhysMemory| {
            put64(m, 0x1000, 0x3000 | 1);
            put64(m, 0x3000, 0x4000 | 7);
            put64(m, 0x4000, 0x8000 | 7);
        };
        let mut m = mem();
        pae_tables(&mut m);
        assert_eq!(translate(&pae, 0x123, read, &mut m).unwrap().phys, 0x8123);
        put64(&mut m, 0x1000, 0x3000 | 1 | 2);
        assert_eq!(translate(&pae, 0x123, read, &mut m).unwrap_err().code, rsvd);
        pae_tables(&mut m);
        put64(&mut m, 0x4000, 0x8000 | 7 | (1 << 55));
        assert_eq!(translate(&pae, 0x123, read, &mut m).unwrap_err().code, rsvd);

        // 32-bit paging, 4-MByte page: bit 21 is reserved (bits 20:13 hold address bits 39:32).
        let two = WalkRegs { cr0: CR0_PG | 1, cr3: 0x1000, cr4: CR4_PSE, efer: 0 };
        let mut m = mem();
        put32(&mut m, 0x1000, 0x83 | (1 << 21));
        assert_eq!(translate(&two, 0x123, read, &mut m).unwrap_err().code, rsvd);
    }
}
