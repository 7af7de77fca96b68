//! The I/O APIC (82093AA register model, version 11h, 24 pins).
//!
//! Map it at [`IOAPIC_DEFAULT_BASE`] (0xFEC00000), length 0x1000: IOREGSEL at offset 0x00
//! (8 bits used) and IOWIN at 0x10, both accessed as 32 bits; other accesses read all ones.
//! Indirect registers: 0x00 ID (bits 27:24), 0x01 version 0x00170011, 0x02 arbitration ID,
//! 0x10–0x3F the redirection table (low dword then high dword per pin).
//!
//! Pins are driven by [`IoApic::set_irq`] with the asserted level (polarity is not modelled:
//! the machine passes "asserted", as QEMU does). An edge-triggered pin sends a message on each
//! rising edge while unmasked; a level-triggered pin sends one while asserted, unmasked and
//! remote IRR clear, then sets remote IRR until the local APIC broadcasts an EOI for its
//! vector ([`IoApic::end_of_interrupt`]), after which a still-asserted pin sends again. Sent
//! messages queue up; the machine drains them with [`IoApic::take_messages`] or hands them
//! straight to the local APIC with [`IoApic::deliver_to`].

use crate::bus::{Access, MmioDevice};
use crate::lapic::{ApicMessage, LocalApic, APIC_DM_LOWEST};
use serde::{Deserialize, Serialize};

/// The usual base address.
pub const IOAPIC_DEFAULT_BASE: u64 = 0xFEC0_0000;
/// The size to map.
pub const IOAPIC_MMIO_SIZE: u64 = 0x1000;
/// Number of input pins.
pub const IOAPIC_NUM_PINS: usize = 24;

/// Register select.
pub const IOAPIC_IOREGSEL: u64 = 0x00;
/// Register window.
pub const IOAPIC_IOWIN: u64 = 0x10;
/// ID register index.
pub const IOAPIC_REG_ID: u8 = 0x00;
/// Version register index.
pub const IOAPIC_REG_VER: u8 = 0x01;
/// Arbitration ID register index.
pub const IOAPIC_REG_ARB: u8 = 0x02;
/// First redirection table register index.
pub const IOAPIC_REG_REDTBL: u8 = 0x10;
/// Version 11h, maximum redirection entry 23.
pub const IOAPIC_VERSION: u32 = 0x0017_0011;

/// Redirection entry: vector.
pub const IOAPIC_RTE_VECTOR: u64 = 0xFF;
/// Redirection entry: delivery mode field (bits 10:8).
pub const IOAPIC_RTE_DELMODE_SHIFT: u32 = 8;
/// Redirection entry: logical destination mode.
pub const IOAPIC_RTE_DESTMODE_LOGICAL: u64 = 1 << 11;
/// Redirection entry: delivery status (read-only).
pub const IOAPIC_RTE_DELIVS: u64 = 1 << 12;
/// Redirection entry: active-low polarity.
pub const IOAPIC_RTE_POLARITY_LOW: u64 = 1 << 13;
/// Redirection entry: remote IRR (read-only).
pub const IOAPIC_RTE_REMOTE_IRR: u64 = 1 << 14;
/// Redirection entry: level triggered.
pub const IOAPIC_RTE_TRIGGER_LEVEL: u64 = 1 << 15;
/// Redirection entry: masked.
pub const IOAPIC_RTE_MASKED: u64 = 1 << 16;
/// Redirection entry: destination field shift.
pub const IOAPIC_RTE_DEST_SHIFT: u32 = 56;
/// Messages kept before newer ones are dropped (the machine drains them every step).
const MAX_QUEUED_MESSAGES: usize = 256;
/// Bits software may write.
const IOAPIC_RTE_WRITABLE: u64 = 0xFF00_0000_0001_AFFF;

/// The state of the I/O APIC, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoApicState {
    /// ID register.
    pub id: u32,
    /// IOREGSEL.
    pub regsel: u8,
    /// Redirection table.
    pub redtbl: Vec<u64>,
    /// Asserted pins (bit per pin).
    pub levels: u32,
    /// Messages sent and not yet taken by the machine.
    pub messages: Vec<ApicMessage>,
}

/// The I/O APIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoApic {
    s: IoApicState,
}

impl IoApic {
    /// The I/O APIC at power-on with APIC ID `id`: every pin masked, edge, vector 0.
    pub fn new(id: u8) -> Self {
        IoApic {
            s: IoApicState {
                id: u32::from(id & 0xF) << 24,
                regsel: 0,
                redtbl: vec![IOAPIC_RTE_MASKED; IOAPIC_NUM_PINS],
                levels: 0,
                messages: Vec::new(),
            },
        }
    }

    /// Rebuilds from a snapshot (a short table is padded with masked entries).
    pub fn from_state(mut state: IoApicState) -> Self {
        state.redtbl.resize(IOAPIC_NUM_PINS, IOAPIC_RTE_MASKED);
        IoApic { s: state }
    }

    /// A snapshot.
    pub fn state(&self) -> IoApicState {
        self.s.clone()
    }

    /// The redirection entry of `pin`.
    pub fn entry(&self, pin: usize) -> Option<u64> {
        self.s.redtbl.get(pin).copied()
    }

    fn send(&mut self, pin: usize) {
        let e = self.s.redtbl[pin];
        let level = e & IOAPIC_RTE_TRIGGER_LEVEL != 0;
        if level {
            self.s.redtbl[pin] |= IOAPIC_RTE_REMOTE_IRR;
        }
        if self.s.messages.len() >= MAX_QUEUED_MESSAGES {
            log::debug!("ioapic: message queue full, pin {pin} dropped");
            return;
        }
        self.s.messages.push(ApicMessage {
            vector: (e & IOAPIC_RTE_VECTOR) as u8,
            delivery_mode: ((e >> IOAPIC_RTE_DELMODE_SHIFT) & 7) as u8,
            logical: e & IOAPIC_RTE_DESTMODE_LOGICAL != 0,
            dest: (e >> IOAPIC_RTE_DEST_SHIFT) as u8,
            level,
        });
    }

    /// Sends for a level-triggered `pin` if it is asserted, unmasked and not awaiting EOI.
    fn check_level(&mut self, pin: usize) {
        let e = self.s.redtbl[pin];
        if e & IOAPIC_RTE_TRIGGER_LEVEL != 0
            && e & (IOAPIC_RTE_MASKED | IOAPIC_RTE_REMOTE_IRR) == 0
            && self.s.levels & (1 << pin) != 0
        {
            self.send(pin);
        }
    }

    /// Drives input `pin` to `asserted`. Out-of-range pins are ignored.
    pub fn set_irq(&mut self, pin: usize, asserted: bool) {
        if pin >= IOAPIC_NUM_PINS {
            log::debug!("ioapic: pin {pin} does not exist");
            return;
        }
        let was = self.s.levels & (1 << pin) != 0;
        if asserted {
            self.s.levels |= 1 << pin;
        } else {
            self.s.levels &= !(1 << pin);
        }
        let e = self.s.redtbl[pin];
        if e & IOAPIC_RTE_TRIGGER_LEVEL != 0 {
            self.check_level(pin);
        } else if asserted && !was && e & IOAPIC_RTE_MASKED == 0 {
            self.send(pin);
        }
    }

    /// An EOI for `vector` broadcast by a local APIC: clears remote IRR of the level-triggered
    /// pins using it, re-sending for those still asserted.
    pub fn end_of_interrupt(&mut self, vector: u8) {
        for pin in 0..IOAPIC_NUM_PINS {
            let e = self.s.redtbl[pin];
            if e & IOAPIC_RTE_REMOTE_IRR != 0 && (e & IOAPIC_RTE_VECTOR) as u8 == vector {
                self.s.redtbl[pin] &= !IOAPIC_RTE_REMOTE_IRR;
                self.check_level(pin);
            }
        }
    }

    /// Whether messages are waiting.
    pub fn has_messages(&self) -> bool {
        !self.s.messages.is_empty()
    }

    /// Returns and clears the messages sent since the last call, oldest first.
    pub fn take_messages(&mut self) -> Vec<ApicMessage> {
        std::mem::take(&mut self.s.messages)
    }

    /// Hands every waiting message addressed to `lapic` (lowest-priority messages always go
    /// to it, the only CPU) to it; others are dropped with a debug log.
    pub fn deliver_to(&mut self, lapic: &mut LocalApic) {
        for m in self.take_messages() {
            if m.delivery_mode == APIC_DM_LOWEST || lapic.matches_destination(m.dest, m.logical) {
                lapic.deliver(&m);
            } else {
                log::debug!("ioapic: message {m:?} matches no CPU");
            }
        }
    }

    /// Reads an indirect register.
    pub fn read_indirect(&self, index: u8) -> u32 {
        match index {
            IOAPIC_REG_ID | IOAPIC_REG_ARB => self.s.id,
            IOAPIC_REG_VER => IOAPIC_VERSION,
            0x10..=0x3F => {
                let e = self.s.redtbl[usize::from((index - IOAPIC_REG_REDTBL) / 2)];
                if index & 1 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => {
                log::debug!("ioapic: read of register {index:#x}");
                0xFFFF_FFFF
            }
        }
    }

    /// Writes an indirect register.
    pub fn write_indirect(&mut self, index: u8, v: u32) {
        match index {
            IOAPIC_REG_ID => self.s.id = v & 0x0F00_0000,
            0x10..=0x3F => {
                let pin = usize::from((index - IOAPIC_REG_REDTBL) / 2);
                let old = self.s.redtbl[pin];
                let merged = if index & 1 == 0 {
                    (old & !0xFFFF_FFFF) | u64::from(v)
                } else {
                    (old & 0xFFFF_FFFF) | u64::from(v) << 32
                };
                let mut new = (old & !IOAPIC_RTE_WRITABLE) | (merged & IOAPIC_RTE_WRITABLE);
                if new & IOAPIC_RTE_TRIGGER_LEVEL == 0 {
                    new &= !IOAPIC_RTE_REMOTE_IRR; // remote IRR is meaningless for edge pins
                }
                self.s.redtbl[pin] = new;
                self.check_level(pin);
            }
            _ => log::debug!("ioapic: write {v:#x} to read-only register {index:#x} dropped"),
        }
    }
}

impl MmioDevice for IoApic {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        let v = match (access.offset, data.len()) {
            (IOAPIC_IOREGSEL, 4) => Some(u32::from(self.s.regsel)),
            (IOAPIC_IOWIN, 4) => Some(self.read_indirect(self.s.regsel)),
            _ => None,
        };
        match v {
            Some(v) => data.copy_from_slice(&v.to_le_bytes()),
            None => {
                log::debug!("ioapic: {}-byte read at {:#x}", data.len(), access.addr);
                data.fill(0xFF);
            }
        }
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        match (access.offset, data) {
            (IOAPIC_IOREGSEL, &[a, ..]) if data.len() == 4 => self.s.regsel = a,
            (IOAPIC_IOWIN, &[a, b, c, d]) => self.write_indirect(self.s.regsel, u32::from_le_bytes([a, b, c, d])),
            _ => log::debug!("ioapic: {}-byte write at {:#x} dropped", data.len(), access.addr),
        }
    }
}

impl base::Persist for IoApic {
    type State = IoApicState;
    type ConstructorArgs = ();
    type Error = std::convert::Infallible;
    fn save(&self) -> IoApicState {
        self.state()
    }
    fn restore((): (), state: &IoApicState) -> Result<Self, Self::Error> {
        Ok(Self::from_state(state.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lapic::{APIC_DM_EXTINT, APIC_EOI, APIC_SPIV, APIC_SPIV_APIC_ENABLED};
    use base::VirtualInstant;

    const T0: VirtualInstant = VirtualInstant(0);

    fn w(io: &mut IoApic, reg: u8, v: u32) {
        io.write(Access::at(IOAPIC_IOREGSEL, T0), &u32::from(reg).to_le_bytes());
        io.write(Access::at(IOAPIC_IOWIN, T0), &v.to_le_bytes());
    }

    fn r(io: &mut IoApic, reg: u8) -> u32 {
        io.write(Access::at(IOAPIC_IOREGSEL, T0), &u32::from(reg).to_le_bytes());
        let mut d = [0u8; 4];
        io.read(Access::at(IOAPIC_IOWIN, T0), &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn test_ioapic_id_version_and_reset() {
        let mut io = IoApic::new(0);
        assert_eq!(r(&mut io, IOAPIC_REG_VER), 0x0017_0011);
        assert_eq!((r(&mut io, IOAPIC_REG_VER) >> 16) + 1, 24, "max redirection entry + 1 = pins");
        w(&mut io, IOAPIC_REG_ID, 0xFFFF_FFFF);
        assert_eq!(r(&mut io, IOAPIC_REG_ID), 0x0F00_0000);
        for pin in 0..24u8 {
            assert_eq!(r(&mut io, 0x10 + 2 * pin), IOAPIC_RTE_MASKED as u32);
            assert_eq!(r(&mut io, 0x11 + 2 * pin), 0);
        }
        let mut d = [0u8; 4];
        io.read(Access::at(IOAPIC_IOREGSEL, T0), &mut d);
        assert_eq!(d[0], 0x3F, "IOREGSEL reads back the last index");
        assert_eq!(r(&mut io, 0x40), 0xFFFF_FFFF, "no register 0x40");
    }

    #[test]
    fn test_ioapic_edge_delivery_and_mask() {
        let mut io = IoApic::new(0);
        w(&mut io, 0x10 + 2 * 4, 0x34);
        w(&mut io, 0x11 + 2 * 4, 0x0100_0000);
        io.set_irq(4, true);
        io.set_irq(4, true);
        let m = io.take_messages();
        assert_eq!(m.len(), 1, "one message per rising edge");
        assert_eq!((m[0].vector, m[0].dest, m[0].level, m[0].logical), (0x34, 1, false, false));
        io.set_irq(4, false);
        io.set_irq(4, true);
        assert_eq!(io.take_messages().len(), 1);
        // Masked: the edge is lost.
        w(&mut io, 0x10 + 2 * 4, 0x34 | IOAPIC_RTE_MASKED as u32);
        io.set_irq(4, false);
        io.set_irq(4, true);
        assert!(!io.has_messages());
        w(&mut io, 0x10 + 2 * 4, 0x34);
        assert!(!io.has_messages(), "unmasking does not replay an edge");
        for _ in 0..1000 {
            io.set_irq(4, false);
            io.set_irq(4, true);
        }
        assert_eq!(io.take_messages().len(), MAX_QUEUED_MESSAGES, "bounded when not drained");
    }

    #[test]
    fn test_ioapic_level_remote_irr_and_eoi() {
        let mut io = IoApic::new(0);
        let lvl = (IOAPIC_RTE_TRIGGER_LEVEL | IOAPIC_RTE_DESTMODE_LOGICAL) as u32;
        w(&mut io, 0x10 + 2 * 11, lvl | 0x51);
        io.set_irq(11, true);
        let m = io.take_messages();
        assert_eq!(m.len(), 1);
        assert!(m[0].level && m[0].logical);
        assert_ne!(r(&mut io, 0x10 + 2 * 11) & IOAPIC_RTE_REMOTE_IRR as u32, 0, "remote IRR set");
        // Remote IRR is read-only.
        w(&mut io, 0x10 + 2 * 11, lvl | 0x51);
        assert_ne!(r(&mut io, 0x10 + 2 * 11) & IOAPIC_RTE_REMOTE_IRR as u32, 0);
        io.set_irq(11, true);
        assert!(!io.has_messages(), "no resend while awaiting EOI");
        io.end_of_interrupt(0x52);
        assert!(!io.has_messages(), "EOI of another vector");
        io.end_of_interrupt(0x51);
        assert_eq!(io.take_messages().len(), 1, "still asserted: sent again");
        io.set_irq(11, false);
        io.end_of_interrupt(0x51);
        assert!(!io.has_messages());
        assert_eq!(r(&mut io, 0x10 + 2 * 11) & IOAPIC_RTE_REMOTE_IRR as u32, 0);
        // Masked while asserted: sent on unmask.
        w(&mut io, 0x10 + 2 * 11, lvl | IOAPIC_RTE_MASKED as u32 | 0x51);
        io.set_irq(11, true);
        assert!(!io.has_messages());
        w(&mut io, 0x10 + 2 * 11, lvl | 0x51);
        assert_eq!(io.take_messages().len(), 1);
    }

    #[test]
    fn test_ioapic_to_lapic_end_to_end() {
        let mut io = IoApic::new(0);
        let mut lapic = LocalApic::new(0, true);
        lapic.write_register(APIC_SPIV, APIC_SPIV_APIC_ENABLED | 0xFF, T0);
        w(&mut io, 0x10 + 2 * 10, IOAPIC_RTE_TRIGGER_LEVEL as u32 | 0x61);
        w(&mut io, 0x10 + 2 * 2, 0x30); // timer, edge
        w(&mut io, 0x10 + 2 * 3, 0x40);
        w(&mut io, 0x11 + 2 * 3, 0x0500_0000); // another CPU
        io.set_irq(10, true);
        io.set_irq(2, true);
        io.set_irq(3, true);
        io.deliver_to(&mut lapic);
        assert_eq!(lapic.acknowledge(), Some(0x61));
        lapic.write_register(APIC_EOI, 0, T0);
        for v in lapic.take_eoi_broadcasts() {
            io.end_of_interrupt(v);
        }
        io.deliver_to(&mut lapic);
        assert_eq!(lapic.acknowledge(), Some(0x61), "level line still asserted");
        io.set_irq(10, false);
        lapic.write_register(APIC_EOI, 0, T0);
        for v in lapic.take_eoi_broadcasts() {
            io.end_of_interrupt(v);
        }
        io.deliver_to(&mut lapic);
        assert_eq!(lapic.acknowledge(), Some(0x30));
        assert_eq!(lapic.acknowledge(), None, "0x40 went to APIC 5");
        // ExtINT through pin 0.
        w(&mut io, 0x10, u32::from(APIC_DM_EXTINT) << 8);
        io.set_irq(0, true);
        io.deliver_to(&mut lapic);
        assert!(lapic.take_extint());
    }

    #[test]
    fn test_ioapic_state_and_random_accesses() {
        let mut io = IoApic::new(1);
        w(&mut io, 0x12, 0x8031);
        io.set_irq(1, true);
        let copy = IoApic::from_state(io.state());
        assert_eq!(copy, io);
        let mut x = 0x0123_4567_89AB_CDEFu64;
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = [0u64, 0x10, 0x04, 0x11, 0x40, 0xFFF][(x % 6) as usize];
            let width = [1usize, 2, 4, 8][(x >> 8) as usize % 4];
            let mut buf = (x >> 12).to_le_bytes();
            if x & (1 << 62) != 0 {
                io.write(Access::at(off, T0), &buf[..width]);
            } else {
                io.read(Access::at(off, T0), &mut buf[..width]);
            }
            io.set_irq((x >> 40) as usize % 30, x & (1 << 45) != 0);
            io.end_of_interrupt((x >> 50) as u8);
            io.take_messages();
        }
        assert_eq!(r(&mut io, IOAPIC_REG_VER), IOAPIC_VERSION);
    }
}
