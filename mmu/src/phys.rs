//! The guest physical memory map: which physical ranges are RAM, ROM or MMIO.
//!
//! RAM and ROM are both stored in one [`GuestRam`] backing mapping; a region records the backing
//! offset it starts at, so aliases (the BIOS visible both below 1 MiB and below 4 GiB) share bytes.
//! MMIO regions carry an id that the machine dispatches to a device.

use crate::code::CodePages;
use crate::dirty::DirtyLog;
use crate::ram::{GuestRam, GuestRamError};
use crate::PAGE_SIZE;
use base::GuestPhysAddr;
use thiserror::Error;

/// What a physical region is backed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// Read/write memory at this backing offset.
    Ram {
        /// Offset of the region's first byte in the backing mapping.
        backing: u64,
    },
    /// Read-only memory at this backing offset; guest writes are dropped.
    Rom {
        /// Offset of the region's first byte in the backing mapping.
        backing: u64,
    },
    /// Device memory; accesses go to the machine with this id.
    Mmio {
        /// Which device (assigned by the machine).
        id: u32,
    },
}

/// One mapped physical range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First guest physical address.
    pub start: u64,
    /// Length in bytes (a multiple of the page size).
    pub len: u64,
    /// The backing.
    pub kind: RegionKind,
}

impl Region {
    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Errors from building or loading the physical map.
#[derive(Debug, Error)]
pub enum PhysMemoryError {
    /// The backing mapping failed.
    #[error(transparent)]
    Ram(#[from] GuestRamError),
    /// A new region overlaps an existing one.
    #[error("physical region {start:#x}+{len:#x} overlaps an existing region")]
    Overlap {
        /// Start of the new region.
        start: u64,
        /// Length of the new region.
        len: u64,
    },
    /// A region is not page aligned or does not fit in the backing store.
    #[error("physical region {start:#x}+{len:#x} is misaligned or exceeds the backing store")]
    BadRegion {
        /// Start of the region.
        start: u64,
        /// Length of the region.
        len: u64,
    },
    /// A load or read touched an address that is not RAM or ROM.
    #[error("guest physical address {0:#x} is not backed by RAM or ROM")]
    NotMemory(u64),
}

/// The physical address space of one machine.
#[derive(Debug)]
pub struct PhysMemory {
    backing: GuestRam,
    next_backing: u64,
    regions: Vec<Region>,
    /// Which backing pages hold decoded or translated code.
    code: CodePages,
    /// Which backing pages were written since the log was last taken (while logging).
    dirty: DirtyLog,
}

impl PhysMemory {
    /// Creates an empty map over a backing store of `backing_bytes` bytes (rounded up to pages).
    pub fn new(backing_bytes: u64) -> Result<Self, PhysMemoryError> {
        let bytes = backing_bytes.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let size = usize::try_from(bytes).map_err(|_| PhysMemoryError::BadRegion { start: 0, len: backing_bytes })?;
        let backing = GuestRam::new(size)?;
        let pages = bytes / PAGE_SIZE;
        Ok(PhysMemory {
            backing,
            next_backing: 0,
            regions: Vec::new(),
            code: CodePages::new(pages),
            dirty: DirtyLog::new(pages),
        })
    }

    fn insert(&mut self, region: Region) -> Result<(), PhysMemoryError> {
        let Region { start, len, .. } = region;
        if start % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 || len == 0 || start.checked_add(len).is_none() {
            return Err(PhysMemoryError::BadRegion { start, len });
        }
        if self.regions.iter().any(|r| start < r.end() && r.start < start + len) {
            return Err(PhysMemoryError::Overlap { start, len });
        }
        let pos = self.regions.partition_point(|r| r.start < start);
        self.regions.insert(pos, region);
        Ok(())
    }

    fn allocate(&mut self, start: u64, len: u64) -> Result<u64, PhysMemoryError> {
        let off = self.next_backing;
        if off + len > self.backing.len() as u64 {
            return Err(PhysMemoryError::BadRegion { start, len });
        }
        self.next_backing += len;
        Ok(off)
    }

    /// Maps `len` bytes of fresh RAM at `start`; returns its backing offset.
    pub fn map_ram(&mut self, start: u64, len: u64) -> Result<u64, PhysMemoryError> {
        let backing = self.allocate(start, len)?;
        self.insert(Region { start, len, kind: RegionKind::Ram { backing } })?;
        Ok(backing)
    }

    /// Maps a ROM image at `start` (length rounded up to pages); returns its backing offset.
    pub fn map_rom(&mut self, start: u64, image: &[u8]) -> Result<u64, PhysMemoryError> {
        let len = (image.len() as u64).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let backing = self.allocate(start, len)?;
        self.insert(Region { start, len, kind: RegionKind::Rom { backing } })?;
        let b = usize::try_from(backing).map_err(|_| PhysMemoryError::BadRegion { start, len })?;
        self.backing.as_mut_slice()[b..b + image.len()].copy_from_slice(image);
        Ok(backing)
    }

    /// Maps another view of existing backing bytes (e.g. the BIOS alias below 1 MiB).
    pub fn map_alias(&mut self, start: u64, len: u64, backing: u64, read_only: bool) -> Result<(), PhysMemoryError> {
        if backing + len > self.backing.len() as u64 {
            return Err(PhysMemoryError::BadRegion { start, len });
        }
        let kind = if read_only { RegionKind::Rom { backing } } else { RegionKind::Ram { backing } };
        self.insert(Region { start, len, kind })
    }

    /// Maps a device window.
    pub fn map_mmio(&mut self, start: u64, len: u64, id: u32) -> Result<(), PhysMemoryError> {
        self.insert(Region { start, len, kind: RegionKind::Mmio { id } })
    }

    /// The region containing `addr`, if any.
    pub fn lookup(&self, addr: GuestPhysAddr) -> Option<&Region> {
        let a = addr.0;
        let pos = self.regions.partition_point(|r| r.start <= a);
        let r = self.regions.get(pos.checked_sub(1)?)?;
        (a < r.end()).then_some(r)
    }

    /// All regions, sorted by start.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The backing store (RAM and ROM bytes by backing offset).
    pub fn backing(&self) -> &[u8] {
        self.backing.as_slice()
    }

    /// The backing store, writable.
    pub fn backing_mut(&mut self) -> &mut [u8] {
        self.backing.as_mut_slice()
    }

    /// Host address of backing offset 0.
    pub fn host_base(&mut self) -> *mut u8 {
        self.backing.host_base()
    }

    /// Backing offset of a RAM/ROM address, and whether it is writable, if it is memory.
    pub fn backing_offset(&self, addr: GuestPhysAddr) -> Option<(u64, bool)> {
        let r = self.lookup(addr)?;
        match r.kind {
            RegionKind::Ram { backing } => Some((backing + (addr.0 - r.start), true)),
            RegionKind::Rom { backing } => Some((backing + (addr.0 - r.start), false)),
            RegionKind::Mmio { .. } => None,
        }
    }

    /// Copies guest memory into `buf` (RAM or ROM only, may span regions). For loaders and tests.
    pub fn read(&self, addr: GuestPhysAddr, buf: &mut [u8]) -> Result<(), PhysMemoryError> {
        let mut done = 0usize;
        while done < buf.len() {
            let a = addr.0 + done as u64;
            let r = self.lookup(GuestPhysAddr(a)).ok_or(PhysMemoryError::NotMemory(a))?;
            let (RegionKind::Ram { backing } | RegionKind::Rom { backing }) = r.kind else {
                return Err(PhysMemoryError::NotMemory(a));
            };
            let n = ((r.end() - a) as usize).min(buf.len() - done);
            let off = (backing + a - r.start) as usize;
            buf[done..done + n].copy_from_slice(&self.backing.as_slice()[off..off + n]);
            done += n;
        }
        Ok(())
    }

    /// Copies `data` into guest memory, ROM included (a loader writes firmware). For loaders.
    pub fn load(&mut self, addr: GuestPhysAddr, data: &[u8]) -> Result<(), PhysMemoryError> {
        let mut done = 0usize;
        while done < data.len() {
            let a = addr.0 + done as u64;
            let r = *self.lookup(GuestPhysAddr(a)).ok_or(PhysMemoryError::NotMemory(a))?;
            let (RegionKind::Ram { backing } | RegionKind::Rom { backing }) = r.kind else {
                return Err(PhysMemoryError::NotMemory(a));
            };
            let n = ((r.end() - a) as usize).min(data.len() - done);
            let off = (backing + a - r.start) as usize;
            self.backing.as_mut_slice()[off..off + n].copy_from_slice(&data[done..done + n]);
            self.clear_code_range(off as u64, n as u64);
            self.dirty.record(off as u64, n as u64);
            done += n;
        }
        Ok(())
    }

    fn clear_code_range(&mut self, off: u64, len: u64) {
        let _ = self.code.clear_range(off, len);
    }

    /// Marks a backing page as holding code the CPU has cached; returns true if it was not before.
    pub fn mark_code_page(&mut self, backing_page: u64) -> bool {
        self.code.mark(backing_page)
    }

    /// Marks the bytes `[off, off + len)` (backing offsets, within one page) as code the CPU
    /// has cached; returns true if their page was not marked before.
    pub fn mark_code_range(&mut self, off: u64, len: u64) -> bool {
        self.code.mark_range(off, len)
    }

    /// A CPU store of `len` bytes at backing offset `off`: invalidates the cached code it hits
    /// (see [`CodePages::clear_range`]); returns true if it hit any.
    pub fn code_write(&mut self, off: u64, len: u64) -> bool {
        self.code.clear_range(off, len)
    }

    /// Whether a backing page holds cached code.
    pub fn is_code_page(&self, backing_page: u64) -> bool {
        self.code.is_marked(backing_page)
    }

    /// Clears a backing page's code mark (a write into it); returns true if it was set. The
    /// page is queued for the engines to invalidate.
    pub fn clear_code_page(&mut self, backing_page: u64) -> bool {
        self.code.clear(backing_page)
    }

    /// Writes `data` at backing offset `off` on behalf of a device (DMA): cached code there
    /// is invalidated. Bytes past the backing store are dropped.
    pub fn dma_write_backing(&mut self, off: u64, data: &[u8]) {
        let Ok(start) = usize::try_from(off) else { return };
        let b = self.backing.as_mut_slice();
        let n = data.len().min(b.len().saturating_sub(start));
        if n > 0 {
            b[start..start + n].copy_from_slice(&data[..n]);
            let _ = self.code.clear_range(off, n as u64);
            self.dirty.record(off, n as u64);
        }
    }

    /// The code-page tracker (marks, invalidation queue, per-page counters).
    pub fn code_pages(&mut self) -> &mut CodePages {
        &mut self.code
    }

    /// The dirty log (see [`crate::dirty`]).
    pub fn dirty_log(&mut self) -> &mut DirtyLog {
        &mut self.dirty
    }

    /// Whether a TLB entry may allow fast writes to a backing page: no cached code there and,
    /// while the dirty log records, the page already logged (see [`crate::dirty`]).
    #[inline]
    pub fn allows_fast_write(&self, backing_page: u64) -> bool {
        !self.code.is_marked(backing_page) && self.dirty.allows_fast_write(backing_page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_phys_lookup_and_alias() {
        let mut m = PhysMemory::new(0x30000).unwrap();
        let ram = m.map_ram(0, 0x10000).unwrap();
        assert_eq!(ram, 0);
        let rom = m.map_rom(0xFFFF_0000, &[0xEA; 0x10000]).unwrap();
        m.map_alias(0xF0000, 0x10000, rom, true).unwrap();
        m.map_mmio(0xFEC0_0000, 0x1000, 7).unwrap();
        assert_eq!(m.backing_offset(GuestPhysAddr(0x1234)), Some((0x1234, true)));
        assert_eq!(m.backing_offset(GuestPhysAddr(0xF0010)), Some((rom + 0x10, false)));
        assert_eq!(m.backing_offset(GuestPhysAddr(0xFFFF_FFF0)), Some((rom + 0xFFF0, false)));
        assert!(matches!(m.lookup(GuestPhysAddr(0xFEC0_0010)).unwrap().kind, RegionKind::Mmio { id: 7 }));
        assert!(m.lookup(GuestPhysAddr(0x20000)).is_none());
        assert!(matches!(m.map_ram(0x8000, 0x1000), Err(PhysMemoryError::Overlap { .. })));
        assert!(matches!(m.map_ram(0x100_0000, 0x100_0000), Err(PhysMemoryError::BadRegion { .. })));
    }

    #[test]
    fn test_phys_read_load_span_regions() {
        let mut m = PhysMemory::new(0x3000).unwrap();
        m.map_ram(0, 0x1000).unwrap();
        m.map_ram(0x1000, 0x1000).unwrap();
        m.load(GuestPhysAddr(0xFFE), &[1, 2, 3, 4]).unwrap();
        let mut b = [0u8; 4];
        m.read(GuestPhysAddr(0xFFE), &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert!(m.read(GuestPhysAddr(0x1FFE), &mut b).is_err());
    }

    #[test]
    fn test_phys_code_page_bits() {
        let mut m = PhysMemory::new(0x3000).unwrap();
        m.map_ram(0, 0x3000).unwrap();
        assert!(m.mark_code_page(2));
        assert!(!m.mark_code_page(2));
        assert!(m.is_code_page(2));
        m.load(GuestPhysAddr(0x2000), &[0]).unwrap();
        assert!(!m.is_code_page(2));
    }
}
