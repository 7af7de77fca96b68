//! Guest memory for Ferrovisor: one host mapping for RAM and ROM, a physical memory map,
//! a soft TLB shared by the interpreter and the future JIT, and the x86 page walk.

pub mod code;
pub mod dirty;
pub mod paging;
pub mod persist;
pub mod phys;
pub mod ram;
pub mod tlb;

pub use code::{CodePages, CodeRange};
pub use dirty::{DirtyLog, ProtectSlots};
pub use paging::{
    translate, PageFault, PagingMode, Translation, WalkAccess, WalkRegs, MAX_PHYS_BITS, PF_FETCH, PF_PRESENT, PF_RSVD,
    PF_USER, PF_WRITE,
};
pub use persist::RamState;
pub use phys::{PhysMemory, PhysMemoryError, Region, RegionKind};
pub use ram::{GuestRam, GuestRamError};
pub use tlb::{SoftTlb, TlbAccess, TlbEntry, TlbSide, TlbStats, TLB_ENTRIES, TLB_INVALID, TLB_SLOW};

/// Size of a guest page in bytes.
pub const PAGE_SIZE: u64 = 4096;
/// Mask that keeps the page-number bits of an address.
pub const PAGE_MASK: u64 = !(PAGE_SIZE - 1);
