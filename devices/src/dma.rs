//! Guest memory as DMA-capable devices (IDE bus master, fw_cfg DMA) see it.
//!
//! Port and MMIO accesses carry no memory, so devices that move data by DMA only record that a
//! transfer is ready; the machine then calls their `run_dma` with a [`DmaMemory`] over guest
//! RAM.

/// Guest physical memory for device DMA.
pub trait DmaMemory {
    /// Fills `buf` from guest physical `addr`; `Err` if any byte is not backed by RAM.
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), DmaFault>;
    /// Writes `buf` at guest physical `addr`; `Err` if any byte is not backed by RAM.
    fn write(&mut self, addr: u64, buf: &[u8]) -> Result<(), DmaFault>;
}

/// A DMA access outside guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, displaydoc::Display)]
pub struct DmaFault {
    /// guest physical {addr:#x} is not RAM
    pub addr: u64,
}
