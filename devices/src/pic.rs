//! The two cascaded Intel 8259A programmable interrupt controllers of the PC, plus the PIIX
//! edge/level control registers (ELCR).
//!
//! The master is at ports 0x20/0x21, the slave at 0xA0/0xA1 and cascaded on master IRQ2; the
//! ELCR is at 0x4D0 (IRQ 0–7) and 0x4D1 (IRQ 8–15). [`I8259Pic`] decodes the absolute port
//! (`Access::addr`), so the machine maps all three ranges to the same device.
//!
//! Implemented: ICW1–ICW4 (single/cascade, ICW4 optional, LTIM level mode, auto-EOI,
//! special fully nested mode), OCW1 (IMR), OCW2 (non-specific/specific EOI, rotation in all its
//! forms, set priority), OCW3 (read IRR/ISR, poll, special mask), edge and level triggering,
//! and spurious IRQ 7/15.

use crate::bus::{Access, PioDevice};
use serde::{Deserialize, Serialize};

/// Master command port (ICW1, OCW2, OCW3; reads IRR/ISR).
pub const PIC_MASTER_CMD: u16 = 0x20;
/// Master data port (ICW2–4, OCW1 = IMR).
pub const PIC_MASTER_DATA: u16 = 0x21;
/// Slave command port.
pub const PIC_SLAVE_CMD: u16 = 0xA0;
/// Slave data port.
pub const PIC_SLAVE_DATA: u16 = 0xA1;
/// ELCR for IRQ 0–7.
pub const ELCR_MASTER: u16 = 0x4D0;
/// ELCR for IRQ 8–15.
pub const ELCR_SLAVE: u16 = 0x4D1;

/// ICW1 marker bit (on the command port).
pub const ICW1_INIT: u8 = 0x10;
/// ICW1: ICW4 will follow.
pub const ICW1_IC4: u8 = 0x01;
/// ICW1: single mode (no ICW3).
pub const ICW1_SNGL: u8 = 0x02;
/// ICW1: level-triggered mode for all inputs.
pub const ICW1_LTIM: u8 = 0x08;
/// ICW4: 8086 mode.
pub const ICW4_8086: u8 = 0x01;
/// ICW4: automatic EOI.
pub const ICW4_AEOI: u8 = 0x02;
/// ICW4: special fully nested mode.
pub const ICW4_SFNM: u8 = 0x10;
/// OCW3 marker bit.
pub const OCW3_SELECT: u8 = 0x08;
/// OCW3: read register command (with `OCW3_RIS` selecting ISR over IRR).
pub const OCW3_RR: u8 = 0x02;
/// OCW3: read ISR (when `OCW3_RR` is set).
pub const OCW3_RIS: u8 = 0x01;
/// OCW3: poll command.
pub const OCW3_POLL: u8 = 0x04;
/// OCW3: enable special mask mode change (with `OCW3_SMM`).
pub const OCW3_ESMM: u8 = 0x40;
/// OCW3: special mask mode.
pub const OCW3_SMM: u8 = 0x20;
/// OCW2: non-specific EOI.
pub const OCW2_EOI: u8 = 0x20;
/// OCW2: specific EOI (with the level in bits 0–2).
pub const OCW2_SPECIFIC_EOI: u8 = 0x60;
/// OCW2: rotate on non-specific EOI.
pub const OCW2_ROTATE_EOI: u8 = 0xA0;
/// OCW2: set priority (lowest priority level in bits 0–2).
pub const OCW2_SET_PRIORITY: u8 = 0xC0;
/// OCW2: rotate on specific EOI.
pub const OCW2_ROTATE_SPECIFIC_EOI: u8 = 0xE0;
/// OCW2: set rotate in automatic EOI mode.
pub const OCW2_SET_ROTATE_AEOI: u8 = 0x80;
/// OCW2: clear rotate in automatic EOI mode.
pub const OCW2_CLEAR_ROTATE_AEOI: u8 = 0x00;

/// The cascade input of the master.
const CASCADE_IRQ: u8 = 2;

/// The state of one 8259A.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PicChipState {
    /// Interrupt request register.
    pub irr: u8,
    /// In-service register.
    pub isr: u8,
    /// Interrupt mask register.
    pub imr: u8,
    /// Input levels as last seen (edge detection).
    pub last_irr: u8,
    /// Edge/level control (1 = level).
    pub elcr: u8,
    /// Bits of the ELCR that may be set.
    pub elcr_mask: u8,
    /// The IRQ with the highest priority is `priority_add` (rotation).
    pub priority_add: u8,
    /// Vector base from ICW2 (top five bits).
    pub irq_base: u8,
    /// OCW3 register select: read ISR instead of IRR.
    pub read_isr: bool,
    /// A poll command is pending: the next read returns the poll byte.
    pub poll: bool,
    /// Special mask mode.
    pub special_mask: bool,
    /// Initialization sequence position: 0 = ready, 1–3 = expecting ICW2–ICW4.
    pub init_state: u8,
    /// ICW4 expected.
    pub init4: bool,
    /// Single mode (no cascade, no ICW3).
    pub single_mode: bool,
    /// All inputs level-triggered (ICW1 LTIM).
    pub ltim: bool,
    /// Automatic EOI.
    pub auto_eoi: bool,
    /// Rotate in automatic EOI mode.
    pub rotate_on_auto_eoi: bool,
    /// Special fully nested mode.
    pub special_fully_nested: bool,
}

impl PicChipState {
    fn new(elcr_mask: u8) -> Self {
        PicChipState { elcr_mask, ..Default::default() }
    }

    fn level_mask(&self) -> u8 {
        if self.ltim {
            0xFF
        } else {
            self.elcr
        }
    }

    /// Priority (0 = highest) of the highest-priority bit of `mask`, or 8 if none.
    fn priority(&self, mask: u8) -> u8 {
        if mask == 0 {
            return 8;
        }
        let mut p = 0;
        while mask & (1 << ((p + self.priority_add) & 7)) == 0 {
            p += 1;
        }
        p
    }

    /// The IRQ this chip would deliver now, if any.
    fn pending_irq(&self, is_master: bool) -> Option<u8> {
        let p = self.priority(self.irr & !self.imr);
        if p == 8 {
            return None;
        }
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if self.special_fully_nested && is_master {
            in_service &= !(1 << CASCADE_IRQ);
        }
        let cur = self.priority(in_service);
        (p < cur).then_some((p + self.priority_add) & 7)
    }

    fn set_input(&mut self, irq: u8, level: bool) {
        let mask = 1u8 << irq;
        if self.level_mask() & mask != 0 {
            if level {
                self.irr |= mask;
                self.last_irr |= mask;
            } else {
                self.irr &= !mask;
                self.last_irr &= !mask;
            }
        } else if level {
            if self.last_irr & mask == 0 {
                self.irr |= mask;
            }
            self.last_irr |= mask;
        } else {
            self.last_irr &= !mask;
        }
    }

    fn intack(&mut self, irq: u8) {
        let mask = 1u8 << irq;
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.priority_add = (irq + 1) & 7;
            }
        } else {
            self.isr |= mask;
        }
        // A level-triggered request stays in IRR while its input is high.
        if self.level_mask() & mask == 0 {
            self.irr &= !mask;
        }
    }

    fn init_reset(&mut self) {
        // The edge-sense latch is cleared by ICW1; level requests stay requested.
        self.last_irr = 0;
        self.irr &= self.level_mask();
        self.isr = 0;
        self.imr = 0;
        self.priority_add = 0;
        self.irq_base = 0;
        self.read_isr = false;
        self.poll = false;
        self.special_mask = false;
        self.init_state = 0;
        self.init4 = false;
        self.single_mode = false;
        self.auto_eoi = false;
        self.rotate_on_auto_eoi = false;
        self.special_fully_nested = false;
    }

    fn write_cmd(&mut self, v: u8) {
        if v & ICW1_INIT != 0 {
            self.init_reset();
            self.init_state = 1;
            self.init4 = v & ICW1_IC4 != 0;
            self.single_mode = v & ICW1_SNGL != 0;
            self.ltim = v & ICW1_LTIM != 0;
        } else if v & OCW3_SELECT != 0 {
            if v & OCW3_POLL != 0 {
                self.poll = true;
            }
            if v & OCW3_RR != 0 {
                self.read_isr = v & OCW3_RIS != 0;
            }
            if v & OCW3_ESMM != 0 {
                self.special_mask = v & OCW3_SMM != 0;
            }
        } else {
            let level = v & 7;
            match v & 0xE0 {
                OCW2_CLEAR_ROTATE_AEOI => self.rotate_on_auto_eoi = false,
                OCW2_SET_ROTATE_AEOI => self.rotate_on_auto_eoi = true,
                OCW2_EOI | OCW2_ROTATE_EOI => {
                    let p = self.priority(self.isr);
                    if p != 8 {
                        let irq = (p + self.priority_add) & 7;
                        self.isr &= !(1 << irq);
                        if v & 0xE0 == OCW2_ROTATE_EOI {
                            self.priority_add = (irq + 1) & 7;
                        }
                    }
                }
                OCW2_SPECIFIC_EOI => self.isr &= !(1 << level),
                OCW2_SET_PRIORITY => self.priority_add = (level + 1) & 7,
                OCW2_ROTATE_SPECIFIC_EOI => {
                    self.isr &= !(1 << level);
                    self.priority_add = (level + 1) & 7;
                }
                _ => {} // 0x40: no operation
            }
        }
    }

    fn write_data(&mut self, v: u8) {
        match self.init_state {
            1 => {
                self.irq_base = v & 0xF8;
                self.init_state = match (self.single_mode, self.init4) {
                    (false, _) => 2,
                    (true, true) => 3,
                    (true, false) => 0,
                };
            }
            2 => self.init_state = if self.init4 { 3 } else { 0 },
            3 => {
                self.special_fully_nested = v & ICW4_SFNM != 0;
                self.auto_eoi = v & ICW4_AEOI != 0;
                if v & ICW4_8086 == 0 {
                    log::debug!("pic: ICW4 selects MCS-80/85 mode, not emulated");
                }
                self.init_state = 0;
            }
            _ => self.imr = v,
        }
    }

    fn read(&mut self, data_port: bool, is_master: bool) -> u8 {
        if self.poll {
            self.poll = false;
            return match self.pending_irq(is_master) {
                Some(irq) => {
                    self.intack(irq);
                    0x80 | irq
                }
                None => 0,
            };
        }
        match (data_port, self.read_isr) {
            (true, _) => self.imr,
            (false, true) => self.isr,
            (false, false) => self.irr,
        }
    }
}

/// A snapshot of the PIC pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8259PicState {
    /// The master (IRQ 0–7).
    pub master: PicChipState,
    /// The slave (IRQ 8–15).
    pub slave: PicChipState,
}

/// The master/slave 8259A pair of the PC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct I8259Pic {
    master: PicChipState,
    slave: PicChipState,
}

impl Default for I8259Pic {
    fn default() -> Self {
        Self::new()
    }
}

impl I8259Pic {
    /// The pair at power-on: uninitialized, all inputs edge-triggered.
    pub fn new() -> Self {
        // IRQ 0, 1, 2 (master) and 8, 13 (slave) cannot be level-triggered on PIIX.
        I8259Pic { master: PicChipState::new(0xF8), slave: PicChipState::new(0xDE) }
    }

    /// Rebuilds the pair from a snapshot.
    pub fn from_state(state: I8259PicState) -> Self {
        I8259Pic { master: state.master, slave: state.slave }
    }

    /// A snapshot of the pair.
    pub fn state(&self) -> I8259PicState {
        I8259PicState { master: self.master.clone(), slave: self.slave.clone() }
    }

    /// Propagates the slave's INT output to master IRQ2.
    fn update_cascade(&mut self) {
        let slave_int = self.slave.pending_irq(false).is_some();
        self.master.set_input(CASCADE_IRQ, slave_int);
    }

    /// Drives input `line` (0–15) to `level`. Line 2 is the cascade and cannot be driven.
    pub fn set_irq(&mut self, line: u8, level: bool) {
        match line {
            0..=7 if line != CASCADE_IRQ => self.master.set_input(line, level),
            8..=15 => {
                self.slave.set_input(line - 8, level);
                self.update_cascade();
            }
            _ => log::debug!("pic: set_irq on invalid line {line}"),
        }
    }

    /// Whether the master's INT output (the CPU's INTR pin) is asserted.
    pub fn has_interrupt(&self) -> bool {
        self.master.pending_irq(true).is_some()
    }

    /// Runs an interrupt acknowledge cycle if INTR is asserted and returns the vector, else
    /// `None`. The vector is the spurious IRQ 15 vector if the slave withdrew its request.
    pub fn acknowledge(&mut self) -> Option<u8> {
        self.has_interrupt().then(|| self.inta())
    }

    /// Runs an interrupt acknowledge cycle unconditionally, as the bus does once the CPU has
    /// committed to it. With no request left, the answer is the spurious IRQ 7 vector (no ISR
    /// bit is set); a cascade with no slave request gives the spurious IRQ 15 vector.
    pub fn inta(&mut self) -> u8 {
        let vector = match self.master.pending_irq(true) {
            Some(CASCADE_IRQ) => {
                self.master.intack(CASCADE_IRQ);
                let irq = match self.slave.pending_irq(false) {
                    Some(irq) => {
                        self.slave.intack(irq);
                        irq
                    }
                    None => 7,
                };
                self.slave.irq_base.wrapping_add(irq)
            }
            Some(irq) => {
                self.master.intack(irq);
                self.master.irq_base.wrapping_add(irq)
            }
            None => self.master.irq_base.wrapping_add(7),
        };
        self.update_cascade();
        vector
    }

    /// The IRR of both chips (bit n = IRQ n).
    pub fn irr(&self) -> u16 {
        u16::from_le_bytes([self.master.irr, self.slave.irr])
    }

    /// The ISR of both chips.
    pub fn isr(&self) -> u16 {
        u16::from_le_bytes([self.master.isr, self.slave.isr])
    }

    /// The IMR of both chips.
    pub fn imr(&self) -> u16 {
        u16::from_le_bytes([self.master.imr, self.slave.imr])
    }

    /// Reads the byte at absolute port `port`.
    pub fn read_port(&mut self, port: u16) -> u8 {
        let v = match port {
            PIC_MASTER_CMD | PIC_MASTER_DATA => self.master.read(port == PIC_MASTER_DATA, true),
            PIC_SLAVE_CMD | PIC_SLAVE_DATA => {
                let v = self.slave.read(port == PIC_SLAVE_DATA, false);
                // A poll on the slave acknowledges; its output may drop.
                self.update_cascade();
                v
            }
            ELCR_MASTER => self.master.elcr,
            ELCR_SLAVE => self.slave.elcr,
            _ => {
                log::debug!("pic: read of unknown port {port:#x}");
                0xFF
            }
        };
        v
    }

    /// Writes `v` to absolute port `port`.
    pub fn write_port(&mut self, port: u16, v: u8) {
        match port {
            PIC_MASTER_CMD => self.master.write_cmd(v),
            PIC_MASTER_DATA => self.master.write_data(v),
            PIC_SLAVE_CMD => self.slave.write_cmd(v),
            PIC_SLAVE_DATA => self.slave.write_data(v),
            ELCR_MASTER => self.master.elcr = v & self.master.elcr_mask,
            ELCR_SLAVE => self.slave.elcr = v & self.slave.elcr_mask,
            _ => log::debug!("pic: write {v:#x} to unknown port {port:#x}"),
        }
        self.update_cascade();
    }
}

impl PioDevice for I8259Pic {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        match (u16::try_from(access.addr), data.len()) {
            (Ok(port), 1) => data[0] = self.read_port(port),
            _ => {
                log::debug!("pic: {}-byte read at {:#x}", data.len(), access.addr);
                data.fill(0xFF);
            }
        }
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        match (u16::try_from(access.addr), data) {
            (Ok(port), [v]) => self.write_port(port, *v),
            _ => log::debug!("pic: {}-byte write at {:#x}", data.len(), access.addr),
        }
    }
}

impl base::Persist for I8259Pic {
    type State = I8259PicState;
    type ConstructorArgs = ();
    type Error = std::convert::Infallible;
    fn save(&self) -> I8259PicState {
        self.state()
    }
    fn restore((): (), state: &I8259PicState) -> Result<Self, Self::Error> {
        Ok(Self::from_state(state.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The usual BIOS/Linux setup: vectors 0x20/0x28, cascade on IRQ2, 8086 mode.
    fn pic() -> I8259Pic {
        let mut p = I8259Pic::new();
        p.write_port(0x20, ICW1_INIT | ICW1_IC4);
        p.write_port(0x21, 0x20);
        p.write_port(0x21, 0x04);
        p.write_port(0x21, ICW4_8086);
        p.write_port(0xA0, ICW1_INIT | ICW1_IC4);
        p.write_port(0xA1, 0x28);
        p.write_port(0xA1, 0x02);
        p.write_port(0xA1, ICW4_8086);
        p.write_port(0x21, 0x00);
        p.write_port(0xA1, 0x00);
        p
    }

    fn eoi(p: &mut I8259Pic, irq: u8) {
        if irq >= 8 {
            p.write_port(0xA0, OCW2_EOI);
        }
        p.write_port(0x20, OCW2_EOI);
    }

    #[test]
    fn test_pic_priorities() {
        let mut p = pic();
        assert!(!p.has_interrupt());
        assert_eq!(p.acknowledge(), None);
        p.set_irq(4, true);
        p.set_irq(1, true);
        p.set_irq(3, true);
        assert_eq!(p.acknowledge(), Some(0x21));
        // IRQ1 in service blocks lower priorities until EOI.
        assert!(!p.has_interrupt());
        p.write_port(0x20, OCW2_EOI);
        assert_eq!(p.acknowledge(), Some(0x23));
        p.write_port(0x20, OCW2_EOI);
        assert_eq!(p.acknowledge(), Some(0x24));
        p.write_port(0x20, OCW2_EOI);
        assert_eq!(p.acknowledge(), None);
        // Higher priority nests over a lower one in service.
        p.set_irq(5, true);
        assert_eq!(p.acknowledge(), Some(0x25));
        p.set_irq(0, true);
        assert_eq!(p.acknowledge(), Some(0x20));
        assert_eq!(p.isr(), 0x21);
        p.write_port(0x20, OCW2_EOI); // clears IRQ0, the highest in service
        assert_eq!(p.isr(), 0x20);
    }

    #[test]
    fn test_pic_edge_needs_new_edge() {
        let mut p = pic();
        p.set_irq(3, true);
        assert_eq!(p.acknowledge(), Some(0x23));
        eoi(&mut p, 3);
        p.set_irq(3, true); // still high: no new edge
        assert!(!p.has_interrupt());
        p.set_irq(3, false);
        p.set_irq(3, true);
        assert_eq!(p.acknowledge(), Some(0x23));
    }

    #[test]
    fn test_pic_level_triggered_elcr() {
        let mut p = pic();
        p.write_port(ELCR_SLAVE, 0xFF);
        assert_eq!(p.read_port(ELCR_SLAVE), 0xDE, "IRQ 8 and 13 are edge only");
        p.write_port(ELCR_MASTER, 0xFF);
        assert_eq!(p.read_port(ELCR_MASTER), 0xF8);
        p.set_irq(11, true);
        assert_eq!(p.acknowledge(), Some(0x2B));
        eoi(&mut p, 11);
        // Still asserted: interrupts again without a new edge.
        assert_eq!(p.acknowledge(), Some(0x2B));
        p.set_irq(11, false);
        eoi(&mut p, 11);
        assert!(!p.has_interrupt());
    }

    #[test]
    fn test_pic_masks() {
        let mut p = pic();
        p.write_port(0x21, 0xFB);
        p.set_irq(6, true);
        assert!(!p.has_interrupt());
        assert_eq!(p.read_port(0x21), 0xFB);
        assert_eq!(p.irr() & 0x40, 0x40, "masked request stays in IRR");
        p.write_port(0x21, 0x00);
        assert_eq!(p.acknowledge(), Some(0x26));
        // Slave mask.
        p.write_port(0xA1, 0x02);
        p.set_irq(9, true);
        assert!(!p.has_interrupt());
        assert_eq!(p.irr() & 0x0200, 0x0200);
        assert_eq!(p.imr(), 0x0200);
    }

    #[test]
    fn test_pic_cascade() {
        let mut p = pic();
        p.set_irq(12, true);
        p.set_irq(14, true);
        p.set_irq(3, true);
        // Slave requests come in at master priority 2, above IRQ3.
        assert_eq!(p.acknowledge(), Some(0x2C));
        assert_eq!(p.isr(), 0x1004);
        // IRQ14 is lower than IRQ12 on the slave, so the slave holds off; IRQ3 is lower than
        // the cascade in service on the master.
        assert!(!p.has_interrupt());
        p.write_port(0xA0, OCW2_EOI);
        // Master IRQ2 still in service: nothing until the master EOI.
        assert!(!p.has_interrupt());
        p.write_port(0x20, OCW2_EOI);
        assert_eq!(p.acknowledge(), Some(0x2E));
        eoi(&mut p, 14);
        assert_eq!(p.acknowledge(), Some(0x23));
    }

    #[test]
    fn test_pic_spurious() {
        let mut p = pic();
        // Nothing pending: the INTA cycle answers IRQ 7 and sets no ISR bit.
        assert_eq!(p.inta(), 0x27);
        assert_eq!(p.isr(), 0);
        // A slave request latched on the master, withdrawn on the slave (level, deasserted).
        p.write_port(ELCR_SLAVE, 0x08);
        p.set_irq(11, true);
        p.write_port(0xA1, 0x08);
        // The master's IRR bit 2 is an edge latch: still set.
        assert!(p.has_interrupt());
        assert_eq!(p.acknowledge(), Some(0x2F));
        assert_eq!(p.isr(), 0x0004, "spurious 15: master ISR2 set, slave ISR clear");
        p.write_port(0x20, OCW2_EOI);
        assert_eq!(p.isr(), 0);
    }

    #[test]
    fn test_pic_specific_eoi_and_rotation() {
        let mut p = pic();
        p.set_irq(1, true);
        p.set_irq(5, true);
        assert_eq!(p.acknowledge(), Some(0x21));
        // Special mask mode lets a lower priority through while IRQ1 is in service.
        p.write_port(0x21, 0x02);
        p.write_port(0x20, OCW3_SELECT | OCW3_ESMM | OCW3_SMM);
        assert_eq!(p.acknowledge(), Some(0x25));
        p.write_port(0x20, OCW2_SPECIFIC_EOI | 1);
        assert_eq!(p.isr(), 0x20);
        p.write_port(0x20, OCW3_SELECT | OCW3_ESMM);
        p.write_port(0x21, 0x00);
        p.write_port(0x20, OCW2_ROTATE_EOI); // EOIs IRQ5, which becomes lowest priority
        assert_eq!(p.isr(), 0);
        p.set_irq(5, false);
        p.set_irq(5, true);
        p.set_irq(4, false);
        p.set_irq(4, true);
        p.set_irq(6, true);
        // Priority order is now 6, 7, 0, 1, ..., 5.
        assert_eq!(p.acknowledge(), Some(0x26));
        p.write_port(0x20, OCW2_EOI);
        assert_eq!(p.acknowledge(), Some(0x24));
        p.write_port(0x20, OCW2_EOI);
        // Set priority: IRQ3 lowest, so IRQ4 is highest.
        p.write_port(0x20, OCW2_SET_PRIORITY | 3);
        p.set_irq(0, true);
        assert_eq!(p.acknowledge(), Some(0x25));
        p.write_port(0x20, OCW2_ROTATE_SPECIFIC_EOI | 5);
        assert_eq!(p.acknowledge(), Some(0x20));
    }

    #[test]
    fn test_pic_auto_eoi() {
        let mut p = I8259Pic::new();
        p.write_port(0x20, ICW1_INIT | ICW1_IC4 | ICW1_SNGL);
        p.write_port(0x21, 0x08);
        p.write_port(0x21, ICW4_8086 | ICW4_AEOI);
        p.write_port(0x21, 0x00);
        p.set_irq(0, true);
        p.set_irq(1, true);
        assert_eq!(p.acknowledge(), Some(0x08));
        assert_eq!(p.isr(), 0);
        assert_eq!(p.acknowledge(), Some(0x09));
        // Rotate in AEOI.
        p.write_port(0x20, OCW2_SET_ROTATE_AEOI);
        p.set_irq(0, false);
        p.set_irq(0, true);
        p.set_irq(7, true);
        assert_eq!(p.acknowledge(), Some(0x08));
        p.set_irq(0, false);
        p.set_irq(0, true);
        assert_eq!(p.acknowledge(), Some(0x0F), "IRQ0 rotated to lowest");
    }

    #[test]
    fn test_pic_poll_and_read_registers() {
        let mut p = pic();
        p.set_irq(5, true);
        p.write_port(0x21, 0x20);
        p.set_irq(3, true);
        p.write_port(0x20, OCW3_SELECT | OCW3_RR);
        assert_eq!(p.read_port(0x20), 0x28, "IRR");
        p.write_port(0x20, OCW3_SELECT | OCW3_POLL);
        assert_eq!(p.read_port(0x20), 0x83);
        p.write_port(0x20, OCW3_SELECT | OCW3_RR | OCW3_RIS);
        assert_eq!(p.read_port(0x20), 0x08, "ISR after poll");
        p.write_port(0x20, OCW2_EOI);
        p.write_port(0x20, OCW3_SELECT | OCW3_POLL);
        assert_eq!(p.read_port(0x20), 0x00, "nothing unmasked pending");
        assert_eq!(p.read_port(0x20), 0x00, "ISR select persists");
        assert_eq!(p.read_port(0x22), 0xFF);
    }

    #[test]
    fn test_pic_state_roundtrip() {
        let mut p = pic();
        p.set_irq(10, true);
        let st = p.state();
        let mut q = I8259Pic::from_state(st.clone());
        assert_eq!(q.state(), st);
        assert_eq!(q.acknowledge(), Some(0x2A));
        assert_ne!(q.state(), st);
    }
}
