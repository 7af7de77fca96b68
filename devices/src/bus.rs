//! The device bus, the device access traits, interrupt lines and timed devices.
//!
//! A [`Bus`] maps non-overlapping address ranges `[base, base + len)` to device handles of any
//! type `D` (a device, an enum of devices, an index into a slot table...). It is used both for
//! the 64K x86 port space and for MMIO. Lookups are `O(log n)` in the number of ranges.

use base::VirtualInstant;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

/// One device access, as the device sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Offset of the access from the base of the range the device is mapped at.
    pub offset: u64,
    /// Absolute bus address of the access (port number or guest physical address), for logs and
    /// for chips that are mapped at several ranges and decode the absolute address.
    pub addr: u64,
    /// Virtual time of the access.
    pub now: VirtualInstant,
}

impl Access {
    /// An access at `offset` with the absolute address equal to the offset.
    pub const fn at(offset: u64, now: VirtualInstant) -> Self {
        Access { offset, addr: offset, now }
    }
}

/// A device on the port-I/O bus. The data slice length is the access width (1, 2 or 4).
pub trait PioDevice {
    /// Handles a read; the device fills `data` (little-endian for multi-byte accesses).
    fn read(&mut self, access: Access, data: &mut [u8]);
    /// Handles a write of `data` (little-endian for multi-byte accesses).
    fn write(&mut self, access: Access, data: &[u8]);
}

/// A device on the MMIO bus. The data slice length is the access width (1, 2, 4 or 8).
pub trait MmioDevice {
    /// Handles a read; the device fills `data` (little-endian).
    fn read(&mut self, access: Access, data: &mut [u8]);
    /// Handles a write of `data` (little-endian).
    fn write(&mut self, access: Access, data: &[u8]);
}

/// Errors of [`Bus`] management.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, displaydoc::Display)]
pub enum BusError {
    /// range at {base:#x} has zero length
    EmptyRange {
        /// Base of the rejected range.
        base: u64,
    },
    /// range at {base:#x} with length {len:#x} wraps around the address space
    RangeOverflow {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// range [{base:#x}, +{len:#x}) overlaps the range at {existing_base:#x} (length {existing_len:#x})
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
        /// Base of the range already mapped.
        existing_base: u64,
        /// Length of the range already mapped.
        existing_len: u64,
    },
}

/// Maps non-overlapping address ranges to device handles of type `D`.
#[derive(Debug, Clone)]
pub struct Bus<D> {
    /// Keyed by range base; the value is the range length and the handle.
    ranges: BTreeMap<u64, (u64, D)>,
}

impl<D> Default for Bus<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D> Bus<D> {
    /// An empty bus.
    pub fn new() -> Self {
        Bus { ranges: BTreeMap::new() }
    }

    /// Maps `[base, base + len)` to `dev`. Fails if the range is empty, wraps past `u64::MAX`,
    /// or overlaps a range already mapped.
    pub fn insert(&mut self, base: u64, len: u64, dev: D) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::EmptyRange { base });
        }
        let last = base.checked_add(len - 1).ok_or(BusError::RangeOverflow { base, len })?;
        // The only candidates for an overlap: the range starting at or below `last` with the
        // greatest base. Any earlier range ends before that one starts (ranges are disjoint).
        if let Some((&b, &(l, _))) = self.ranges.range(..=last).next_back() {
            let end_incl = b + (l - 1);
            if end_incl >= base {
                return Err(BusError::Overlap { base, len, existing_base: b, existing_len: l });
            }
        }
        self.ranges.insert(base, (len, dev));
        Ok(())
    }

    /// Unmaps the range starting exactly at `base`, returning its length and handle.
    pub fn remove(&mut self, base: u64) -> Option<(u64, D)> {
        self.ranges.remove(&base)
    }

    /// The range containing `addr`: its base, length and handle.
    fn find(&self, addr: u64) -> Option<(u64, u64)> {
        let (&b, &(l, _)) = self.ranges.range(..=addr).next_back()?;
        (addr - b < l).then_some((b, l))
    }

    /// Checks that `[addr, addr + len)` lies inside one range; returns that range's base.
    fn check(&self, addr: u64, len: u64) -> Option<u64> {
        let (b, l) = self.find(addr)?;
        let off = addr - b;
        // Reject empty accesses and accesses running past the end of the range.
        (len != 0 && len <= l - off).then_some(b)
    }

    /// The handle and offset for an access of `len` bytes at `addr`, only if the whole access
    /// fits inside one mapped range.
    pub fn lookup(&self, addr: u64, len: u64) -> Option<(&D, u64)> {
        let b = self.check(addr, len)?;
        self.ranges.get(&b).map(|(_, d)| (d, addr - b))
    }

    /// Mutable form of [`Bus::lookup`].
    pub fn lookup_mut(&mut self, addr: u64, len: u64) -> Option<(&mut D, u64)> {
        let b = self.check(addr, len)?;
        self.ranges.get_mut(&b).map(|(_, d)| (d, addr - b))
    }

    /// Iterates over `(base, len, handle)` in address order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, &D)> {
        self.ranges.iter().map(|(&b, (l, d))| (b, *l, d))
    }

    /// Iterates mutably over `(base, len, handle)` in address order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u64, u64, &mut D)> {
        self.ranges.iter_mut().map(|(&b, (l, d))| (b, *l, d))
    }

    /// Number of mapped ranges.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether no range is mapped.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// An interrupt request line driven by a device (vm-superio's `Trigger`, but level-aware).
///
/// Devices report the level of their interrupt output; the receiver (PIC, I/O APIC, machine)
/// decides whether it is edge- or level-sensitive. Devices call `set_level` only when they have
/// a reason to, but receivers must tolerate repeated calls with the same level.
pub trait IrqLine {
    /// Drives the line to `high`.
    fn set_level(&self, high: bool);

    /// Emits a rising edge followed by a return to low (for edge-triggered receivers).
    fn pulse(&self) {
        self.set_level(true);
        self.set_level(false);
    }
}

impl<T: IrqLine + ?Sized> IrqLine for &T {
    fn set_level(&self, high: bool) {
        (**self).set_level(high)
    }
}

impl<T: IrqLine + ?Sized> IrqLine for Rc<T> {
    fn set_level(&self, high: bool) {
        (**self).set_level(high)
    }
}

impl<T: IrqLine + ?Sized> IrqLine for Box<T> {
    fn set_level(&self, high: bool) {
        (**self).set_level(high)
    }
}

/// An interrupt line connected to nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoIrq;

impl IrqLine for NoIrq {
    fn set_level(&self, _high: bool) {}
}

/// An interrupt line that records every level it is driven to. Clones share the record, so a
/// test keeps one clone and hands the other to the device.
#[derive(Debug, Clone, Default)]
pub struct RecordingIrq {
    inner: Rc<RefCell<Recording>>,
}

#[derive(Debug, Default)]
struct Recording {
    /// The level before the first entry of `history`.
    start: bool,
    history: Vec<bool>,
}

impl RecordingIrq {
    /// A line that is low and has no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current level (low if never driven).
    pub fn level(&self) -> bool {
        let r = self.inner.borrow();
        r.history.last().copied().unwrap_or(r.start)
    }

    /// Every level the line was driven to since the last clear, in order (including repeats).
    pub fn history(&self) -> Vec<bool> {
        self.inner.borrow().history.clone()
    }

    /// The number of low-to-high transitions since the last clear.
    pub fn rising_edges(&self) -> usize {
        let r = self.inner.borrow();
        let mut prev = r.start;
        let mut n = 0;
        for &l in &r.history {
            if l && !prev {
                n += 1;
            }
            prev = l;
        }
        n
    }

    /// Forgets the history, keeping the current level.
    pub fn clear(&self) {
        let level = self.level();
        let mut r = self.inner.borrow_mut();
        r.start = level;
        r.history.clear();
    }

    /// The number of rising edges since the last clear, then clears.
    pub fn take_edges(&self) -> usize {
        let n = self.rising_edges();
        self.clear();
        n
    }
}

impl IrqLine for RecordingIrq {
    fn set_level(&self, high: bool) {
        self.inner.borrow_mut().history.push(high);
    }
}

/// A device with internal timers driven by virtual time.
pub trait Timed {
    /// The next instant at which the device's guest-visible state (typically an interrupt
    /// output) changes on its own, or `None` if nothing is scheduled.
    fn next_deadline(&self) -> Option<VirtualInstant>;
    /// Brings the device up to `now`, raising or lowering interrupt lines as its timers fire.
    fn advance_to(&mut self, now: VirtualInstant);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_bus_every_offset_of_a_range() {
        let mut bus = Bus::new();
        bus.insert(0x3F8, 8, "com1").unwrap();
        for off in 0..8 {
            assert_eq!(bus.lookup(0x3F8 + off, 1), Some((&"com1", off)));
        }
        assert_eq!(bus.lookup(0x3F7, 1), None);
        assert_eq!(bus.lookup(0x400, 1), None);
    }

    #[test]
    fn test_bus_rejects_straddles() {
        let mut bus = Bus::new();
        bus.insert(0x40, 4, 1).unwrap();
        bus.insert(0x44, 4, 2).unwrap();
        assert_eq!(bus.lookup(0x40, 4), Some((&1, 0)));
        assert_eq!(bus.lookup(0x42, 2), Some((&1, 2)));
        // Runs past the end of the first range into the adjacent one.
        assert_eq!(bus.lookup(0x42, 4), None);
        assert_eq!(bus.lookup(0x43, 2), None);
        // Runs past the end of the last range into a gap.
        assert_eq!(bus.lookup(0x46, 4), None);
        // Starts in a gap.
        assert_eq!(bus.lookup(0x3F, 2), None);
        // Zero-length accesses never match.
        assert_eq!(bus.lookup(0x40, 0), None);
        // Near the top of the address space.
        bus.insert(u64::MAX - 3, 4, 3).unwrap();
        assert_eq!(bus.lookup(u64::MAX - 3, 4), Some((&3, 0)));
        assert_eq!(bus.lookup(u64::MAX, 1), Some((&3, 3)));
        assert_eq!(bus.lookup(u64::MAX, 2), None);
    }

    #[test]
    fn test_bus_rejects_overlaps() {
        let mut bus = Bus::new();
        bus.insert(0x100, 0x10, 'a').unwrap();
        for (base, len) in [(0x100, 0x10), (0xF8, 0x9), (0x10F, 1), (0x104, 2), (0x0, 0x1000)] {
            assert!(
                matches!(bus.insert(base, len, 'x'), Err(BusError::Overlap { existing_base: 0x100, .. })),
                "{base:#x}+{len:#x}"
            );
        }
        // Touching but not overlapping is fine on both sides.
        bus.insert(0xF0, 0x10, 'b').unwrap();
        bus.insert(0x110, 0x10, 'c').unwrap();
        assert_eq!(bus.len(), 3);
        assert_eq!(bus.insert(0x200, 0, 'z'), Err(BusError::EmptyRange { base: 0x200 }));
        assert!(matches!(bus.insert(u64::MAX, 2, 'z'), Err(BusError::RangeOverflow { .. })));
        assert!(!BusError::EmptyRange { base: 1 }.to_string().is_empty());
    }

    #[test]
    fn test_bus_gaps_and_remove() {
        let mut bus = Bus::new();
        bus.insert(0x20, 2, 0u8).unwrap();
        bus.insert(0xA0, 2, 1u8).unwrap();
        for addr in [0x0, 0x1F, 0x22, 0x50, 0x9F, 0xA2, 0xFFFF] {
            assert_eq!(bus.lookup(addr, 1), None, "{addr:#x}");
        }
        if let Some((d, off)) = bus.lookup_mut(0xA1, 1) {
            *d = 7;
            assert_eq!(off, 1);
        }
        assert_eq!(bus.lookup(0xA0, 1), Some((&7, 0)));
        assert_eq!(bus.remove(0xA0), Some((2, 7)));
        assert_eq!(bus.lookup(0xA0, 1), None);
        assert_eq!(bus.iter().map(|(b, l, _)| (b, l)).collect::<Vec<_>>(), vec![(0x20, 2)]);
        bus.insert(0xA0, 2, 2u8).unwrap();
    }

    #[test]
    fn test_bus_full_port_space() {
        let mut bus = Bus::new();
        for p in (0..0x1_0000u64).step_by(4) {
            bus.insert(p, 4, p).unwrap();
        }
        for p in 0..0x1_0000u64 {
            assert_eq!(bus.lookup(p, 1), Some((&(p & !3), p & 3)));
        }
    }

    #[test]
    fn test_recording_irq_edges() {
        let irq = RecordingIrq::new();
        let dev_side = irq.clone();
        assert!(!irq.level());
        dev_side.set_level(true);
        dev_side.set_level(true);
        dev_side.set_level(false);
        dev_side.pulse();
        assert_eq!(irq.rising_edges(), 2);
        assert_eq!(irq.history(), vec![true, true, false, true, false]);
        dev_side.set_level(true);
        assert_eq!(irq.take_edges(), 3);
        assert!(irq.level());
        dev_side.set_level(true);
        assert_eq!(irq.rising_edges(), 0);
        let boxed: Box<dyn IrqLine> = Box::new(irq.clone());
        boxed.set_level(false);
        Rc::new(NoIrq).pulse();
        assert!(!irq.level());
    }
}
