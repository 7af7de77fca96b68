//! Save and restore of guest memory through [`base::Persist`]: the contents of the backing
//! store, sparse (pages that are all zero are not kept). Compression and the on-disk encoding
//! belong to the snapshot file (`machine::snapshot`); this state is the uncompressed page data.
//!
//! Two implementations share [`RamState`]:
//! - [`GuestRam`] (the mapping alone): restore maps fresh memory of the saved size;
//! - [`PhysMemory`] (the mapping with its physical map): restore fills the backing of a map its
//!   owner has just laid out again (RAM, ROM and MMIO regions come from the machine's
//!   configuration, not from the snapshot), keeping that mapping, so host pointers into it stay
//!   valid.

use crate::{GuestRam, PhysMemory};
use base::{Persist, PersistError};
use serde::{Deserialize, Serialize};

/// Page granularity of [`RamState`].
pub const RAM_STATE_PAGE: usize = 4096;

/// The contents of a backing store, zero pages left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RamState {
    /// Bytes of backing store.
    pub len: u64,
    /// Runs of non-zero pages, ascending and not touching: (first page, page count).
    pub runs: Vec<(u64, u64)>,
    /// The bytes of every run, concatenated in order (the last page may be short when `len` is
    /// not a page multiple).
    pub pages: Vec<u8>,
}

/// Whether a page is all zero (word-wise).
pub fn page_is_zero(p: &[u8]) -> bool {
    let (pre, mid, post) = {
        // SAFETY: every bit pattern is a valid u64; align_to only reinterprets the aligned middle.
        unsafe { p.align_to::<u64>() }
    };
    pre.iter().all(|&b| b == 0) && mid.iter().all(|&w| w == 0) && post.iter().all(|&b| b == 0)
}

impl RamState {
    /// The runs of non-zero pages of `mem`.
    pub fn runs_of(mem: &[u8]) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (i, page) in mem.chunks(RAM_STATE_PAGE).enumerate() {
            if page_is_zero(page) {
                continue;
            }
            let i = i as u64;
            match runs.last_mut() {
                Some((first, n)) if *first + *n == i => *n += 1,
                _ => runs.push((i, 1)),
            }
        }
        runs
    }

    /// The byte range of `mem` one run covers, checked against `len`.
    pub fn run_bytes(len: u64, (first, n): (u64, u64)) -> Result<std::ops::Range<usize>, PersistError> {
        let page = RAM_STATE_PAGE as u64;
        let bad = |what: &str| PersistError(format!("RAM run at page {first} (+{n}): {what}"));
        let start = first.checked_mul(page).ok_or_else(|| bad("start overflows"))?;
        let bytes = n.checked_mul(page).ok_or_else(|| bad("length overflows"))?;
        let end = start.checked_add(bytes).ok_or_else(|| bad("end overflows"))?.min(len);
        if n == 0 || start >= end {
            return Err(bad("lies outside RAM"));
        }
        let conv = |v: u64| usize::try_from(v).map_err(|_| bad("does not fit this host"));
        Ok(conv(start)?..conv(end)?)
    }

    /// The sparse contents of `mem`.
    pub fn of(mem: &[u8]) -> Self {
        let runs = Self::runs_of(mem);
        let len = mem.len() as u64;
        let total: usize = runs.iter().filter_map(|&r| Self::run_bytes(len, r).ok()).map(|r| r.len()).sum();
        let mut pages = Vec::with_capacity(total);
        for &r in &runs {
            if let Ok(range) = Self::run_bytes(len, r) {
                pages.extend_from_slice(&mem[range]);
            }
        }
        RamState { len, runs, pages }
    }

    /// Writes the saved contents into `mem` (which must be `len` bytes): the runs' pages, and
    /// zero everywhere else. Pages that are already zero are not written, so untouched memory
    /// of a fresh mapping stays uncommitted.
    pub fn restore_into(&self, mem: &mut [u8]) -> Result<(), PersistError> {
        if mem.len() as u64 != self.len {
            return Err(PersistError(format!("RAM of {} bytes, this machine has {}", self.len, mem.len())));
        }
        // Check everything before touching memory: a refused state leaves `mem` as it was.
        let mut ranges = Vec::with_capacity(self.runs.len());
        let mut prev_end = 0usize;
        for &r in &self.runs {
            let range = Self::run_bytes(self.len, r)?;
            if range.start < prev_end {
                return Err(PersistError(format!("RAM run at page {} overlaps the one before", r.0)));
            }
            prev_end = range.end;
            ranges.push(range);
        }
        let need: usize = ranges.iter().map(|r| r.len()).sum();
        if need != self.pages.len() {
            return Err(PersistError(format!(
                "RAM runs cover {need} bytes, {} bytes of pages saved",
                self.pages.len()
            )));
        }
        for page in mem.chunks_mut(RAM_STATE_PAGE) {
            if !page_is_zero(page) {
                page.fill(0);
            }
        }
        let mut pos = 0usize;
        for range in ranges {
            let n = range.len();
            mem[range].copy_from_slice(&self.pages[pos..pos + n]);
            pos += n;
        }
        Ok(())
    }
}

impl Persist for GuestRam {
    type State = RamState;
    type ConstructorArgs = ();
    type Error = PersistError;

    fn save(&self) -> RamState {
        RamState::of(self.as_slice())
    }

    fn restore((): (), s: &RamState) -> Result<Self, PersistError> {
        let size = usize::try_from(s.len).map_err(|_| PersistError(format!("RAM of {} bytes", s.len)))?;
        let mut ram = GuestRam::new(size).map_err(|e| PersistError(e.to_string()))?;
        s.restore_into(ram.as_mut_slice())?;
        Ok(ram)
    }
}

impl Persist for PhysMemory {
    type State = RamState;
    /// The map as its owner lays it out at power-on (same backing size as the saved one).
    type ConstructorArgs = PhysMemory;
    type Error = PersistError;

    fn save(&self) -> RamState {
        RamState::of(self.backing())
    }

    fn restore(mut map: PhysMemory, s: &RamState) -> Result<Self, PersistError> {
        s.restore_into(map.backing_mut())?;
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        let mut m = vec![0u8; len];
        m[5] = 1; // page 0
        m[3 * 4096 + 4095] = 2; // page 3
        m[4 * 4096] = 3; // page 4, same run as 3
        if len > 9 * 4096 {
            m[len - 1] = 4; // the last (possibly short) page
        }
        m
    }

    #[test]
    fn test_ram_state_skips_zero_pages_and_roundtrips() {
        let len = 10 * 4096 + 100;
        let m = sample(len);
        let s = RamState::of(&m);
        assert_eq!(s.runs, vec![(0, 1), (3, 2), (10, 1)]);
        assert_eq!(s.pages.len(), 3 * 4096 + 100, "only the non-zero pages are kept");
        let bytes = serde_json::to_vec(&s).unwrap();
        let back: RamState = serde_json::from_slice(&bytes).unwrap();
        let mut dst = vec![0xEEu8; len];
        back.restore_into(&mut dst).unwrap();
        assert_eq!(dst, m, "zero pages come back as zero even over old contents");
    }

    #[test]
    fn test_guest_ram_and_phys_memory_persist() {
        let mut ram = GuestRam::new(16 * 4096).unwrap();
        ram.as_mut_slice().copy_from_slice(&sample(16 * 4096));
        let r = GuestRam::restore((), &ram.save()).unwrap();
        assert_eq!(r.as_slice(), ram.as_slice());

        let mut map = PhysMemory::new(16 * 4096).unwrap();
        map.map_ram(0, 16 * 4096).unwrap();
        map.backing_mut().copy_from_slice(&sample(16 * 4096));
        let mut fresh = PhysMemory::new(16 * 4096).unwrap();
        fresh.map_ram(0, 16 * 4096).unwrap();
        let base = fresh.host_base();
        let mut r = PhysMemory::restore(fresh, &map.save()).unwrap();
        assert_eq!(r.backing(), map.backing());
        assert_eq!(r.host_base(), base, "the mapping is kept");
    }

    #[test]
    fn test_ram_state_refuses_bad_runs_without_touching_memory() {
        let good = RamState::of(&sample(8 * 4096));
        let cases: Vec<(&str, RamState)> = vec![
            ("bytes", RamState { len: 4096, ..good.clone() }),
            ("outside", RamState { runs: vec![(0, 1), (3, 2), (9, 1)], ..good.clone() }),
            ("overflows", RamState { runs: vec![(u64::MAX / 2, 1)], ..good.clone() }),
            ("overlaps", RamState { runs: vec![(3, 2), (0, 1)], ..good.clone() }),
            ("saved", RamState { pages: good.pages[1..].to_vec(), ..good.clone() }),
        ];
        for (want, s) in cases {
            let mut dst = vec![0x55u8; 8 * 4096];
            let e = s.restore_into(&mut dst).expect_err(want).to_string();
            assert!(e.contains(want), "{want}: {e}");
            assert!(dst.iter().all(|&b| b == 0x55), "{want}: memory was changed");
        }
    }
}
