//! System Control Port A (port 0x92, the "fast A20 and reset" port of PS/2 and PIIX chipsets).
//!
//! Bit 1 gates A20; a 0→1 transition of bit 0 requests a fast (warm) reset. The machine decides
//! how this A20 combines with the i8042's (PCs OR them).

use crate::bus::{Access, PioDevice};
use serde::{Deserialize, Serialize};

/// The port.
pub const PORT_A: u16 = 0x92;
/// Fast reset (a rising edge requests a reset).
pub const PORTA_FAST_RESET: u8 = 0x01;
/// A20 gate.
pub const PORTA_A20: u8 = 0x02;

/// The state of port 0x92, for snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port92State {
    /// The value last written.
    pub value: u8,
    /// A reset was requested and not yet taken.
    pub reset_requested: bool,
}

/// System Control Port A.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Port92 {
    s: Port92State,
}

impl Port92 {
    /// The port at power-on (A20 off, as in QEMU; the i8042's A20 starts on).
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the port from a snapshot.
    pub fn from_state(state: Port92State) -> Self {
        Port92 { s: state }
    }

    /// A snapshot.
    pub fn state(&self) -> Port92State {
        self.s
    }

    /// Whether this port enables A20.
    pub fn a20_enabled(&self) -> bool {
        self.s.value & PORTA_A20 != 0
    }

    /// Whether a fast reset was requested.
    pub fn reset_requested(&self) -> bool {
        self.s.reset_requested
    }

    /// Returns and clears the reset request.
    pub fn take_reset_request(&mut self) -> bool {
        std::mem::take(&mut self.s.reset_requested)
    }

    /// Reads the port.
    pub fn read_value(&self) -> u8 {
        self.s.value
    }

    /// Writes the port.
    pub fn write_value(&mut self, v: u8) {
        if v & PORTA_FAST_RESET != 0 && self.s.value & PORTA_FAST_RESET == 0 {
            log::debug!("port92: fast reset requested");
            self.s.reset_requested = true;
        }
        self.s.value = v;
    }
}

impl PioDevice for Port92 {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        if access.offset == 0 && data.len() == 1 {
            data[0] = self.read_value();
        } else {
            log::debug!("port92: {}-byte read at {:#x}", data.len(), access.addr);
            data.fill(0xFF);
        }
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        match data {
            [v] if access.offset == 0 => self.write_value(*v),
            _ => log::debug!("port92: {}-byte write at {:#x}", data.len(), access.addr),
        }
    }
}

impl base::Persist for Port92 {
    type State = Port92State;
    type ConstructorArgs = ();
    type Error = std::convert::Infallible;
    fn save(&self) -> Port92State {
        self.state()
    }
    fn restore((): (), state: &Port92State) -> Result<Self, Self::Error> {
        Ok(Self::from_state(*state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base::VirtualInstant;

    #[test]
    fn test_port92_a20_and_fast_reset() {
        let mut p = Port92::new();
        let a = Access::at(0, VirtualInstant(0));
        assert!(!p.a20_enabled());
        p.write(a, &[PORTA_A20]);
        assert!(p.a20_enabled());
        assert!(!p.reset_requested());
        let mut d = [0];
        p.read(a, &mut d);
        assert_eq!(d, [PORTA_A20]);
        p.write(a, &[PORTA_A20 | PORTA_FAST_RESET]);
        assert!(p.take_reset_request());
        p.write(a, &[PORTA_A20 | PORTA_FAST_RESET]);
        assert!(!p.reset_requested(), "only a rising edge resets");
        p.write(a, &[0]);
        p.write(a, &[PORTA_FAST_RESET]);
        assert!(p.reset_requested());
        assert_eq!(Port92::from_state(p.state()), p);
    }
}
