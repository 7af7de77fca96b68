//! The host backing store for guest RAM and ROM: one anonymous memmap2 mapping.

use thiserror::Error;

/// Errors from creating guest RAM.
#[derive(Debug, Error)]
pub enum GuestRamError {
    /// The host refused the anonymous mapping.
    #[error("cannot map {size} bytes of guest memory: {source}")]
    Map {
        /// Requested size.
        size: usize,
        /// The host error.
        #[source]
        source: std::io::Error,
    },
    /// Zero-sized memory was requested.
    #[error("guest memory size must be non-zero")]
    Empty,
}

/// One contiguous host mapping. Offsets into it are "backing offsets"; the [`crate::PhysMemory`]
/// map says which guest physical ranges land where.
#[derive(Debug)]
pub struct GuestRam {
    map: memmap2::MmapMut,
}

impl GuestRam {
    /// Maps `size` bytes of zeroed anonymous memory (lazily committed by the host).
    pub fn new(size: usize) -> Result<Self, GuestRamError> {
        if size == 0 {
            return Err(GuestRamError::Empty);
        }
        let map =
            memmap2::MmapOptions::new().len(size).map_anon().map_err(|source| GuestRamError::Map { size, source })?;
        Ok(GuestRam { map })
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always false: a mapping is never empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The whole backing store.
    pub fn as_slice(&self) -> &[u8] {
        &self.map
    }

    /// The whole backing store, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map
    }

    /// Host address of backing offset 0 (for generated code, which adds a TLB addend to it).
    pub fn host_base(&mut self) -> *mut u8 {
        self.map.as_mut_ptr()
    }
}
