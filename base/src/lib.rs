//! Shared vocabulary for every Ferrovisor crate: address newtypes, access sizes and virtual time.
//!
//! This crate depends on nothing inside the workspace. Types that cross a crate boundary live
//! here so that no crate needs to name another crate's internals just to talk about an address.

pub mod persist;

pub use persist::{Persist, PersistError};

use serde::{Deserialize, Serialize};

/// A guest physical address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct GuestPhysAddr(pub u64);

/// A guest linear (post-segmentation, pre-paging) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct LinearAddr(pub u64);

/// An x86 I/O port number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct PortAddr(pub u16);

/// The width of one bus access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AccessSize {
    /// 1 byte.
    Byte,
    /// 2 bytes.
    Word,
    /// 4 bytes.
    Dword,
    /// 8 bytes.
    Qword,
}

impl AccessSize {
    /// The width in bytes.
    pub const fn bytes(self) -> usize {
        match self {
            AccessSize::Byte => 1,
            AccessSize::Word => 2,
            AccessSize::Dword => 4,
            AccessSize::Qword => 8,
        }
    }

    /// The access size for a width in bytes (1, 2, 4 or 8).
    pub const fn from_bytes(n: usize) -> Option<Self> {
        match n {
            1 => Some(AccessSize::Byte),
            2 => Some(AccessSize::Word),
            4 => Some(AccessSize::Dword),
            8 => Some(AccessSize::Qword),
            _ => None,
        }
    }

    /// A mask of the low `bytes() * 8` bits.
    pub const fn mask(self) -> u64 {
        match self {
            AccessSize::Byte => 0xFF,
            AccessSize::Word => 0xFFFF,
            AccessSize::Dword => 0xFFFF_FFFF,
            AccessSize::Qword => u64::MAX,
        }
    }
}

/// A point in virtual time, measured in retired guest instructions since power-on.
///
/// Guest-visible time (PIT, RTC periodic interrupt, TSC) is derived from this, never from the
/// host clock, so that execution is deterministic and can be recorded and replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct VirtualInstant(pub u64);

impl VirtualInstant {
    /// The instant `n` instructions later.
    pub const fn after(self, n: u64) -> Self {
        VirtualInstant(self.0.saturating_add(n))
    }
}

/// A count of guest instructions (a run budget, or instructions retired).
pub type InstrCount = u64;

/// Nominal guest instructions per virtual second: the rate that converts instruction counts into
/// guest-visible time (1 instruction = 1 virtual nanosecond).
pub const VIRTUAL_INSNS_PER_SECOND: u64 = 1_000_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_access_size_roundtrip() {
        for n in [1usize, 2, 4, 8] {
            let s = AccessSize::from_bytes(n).unwrap();
            assert_eq!(s.bytes(), n);
            assert_eq!(s.mask().count_ones() as usize, n * 8);
        }
        assert_eq!(AccessSize::from_bytes(3), None);
    }
}
