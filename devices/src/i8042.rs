//! A minimal Intel 8042 keyboard controller with a PS/2 keyboard behind it.
//!
//! Ports: 0x60 data, 0x64 status (read) / command (write). [`I8042`] decodes the absolute port
//! (`Access::addr`), so the machine maps both ports to the same device.
//!
//! Implemented: controller self-test (0xAA → 0x55), interface tests, read/write of the command
//! byte, keyboard and aux enable/disable, the output port (command 0xD0/0xD1) with A20 in bit 1
//! and the system reset line in bit 0, A20 shortcuts 0xDD/0xDF, pulse output port (0xF0–0xFF,
//! where 0xFE requests a reset), writes into the output buffer (0xD2/0xD3), and a keyboard that
//! answers reset, echo, identify, enable/disable scanning, defaults, LEDs, typematic and scan-set
//! commands. IRQ1 is raised while the output buffer holds keyboard data and command byte bit 0 is
//! set; IRQ12 likewise for aux data and bit 1. There is no mouse: bytes sent to it (0xD4) are
//! answered with 0xFE. Host key input ([`I8042::enqueue_key`]) is queued as already-translated
//! scan codes; the controller does not translate.

use crate::bus::{Access, IrqLine, PioDevice};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// Status (read) and command (write) port.
pub const I8042_COMMAND_PORT: u16 = 0x64;

/// Status: output buffer full.
pub const STATUS_OBF: u8 = 0x01;
/// Status: input buffer full (always clear: input is processed at once).
pub const STATUS_IBF: u8 = 0x02;
/// Status: system flag (command byte bit 2).
pub const STATUS_SYS: u8 = 0x04;
/// Status: the last write went to the command port.
pub const STATUS_A2: u8 = 0x08;
/// Status: keyboard not inhibited.
pub const STATUS_INH: u8 = 0x10;
/// Status: the output buffer holds aux (mouse) data.
pub const STATUS_AUX_OBF: u8 = 0x20;

/// Command byte: keyboard interrupt enable.
pub const CB_KBD_INT: u8 = 0x01;
/// Command byte: aux interrupt enable.
pub const CB_AUX_INT: u8 = 0x02;
/// Command byte: system flag.
pub const CB_SYS: u8 = 0x04;
/// Command byte: keyboard disabled.
pub const CB_KBD_DISABLE: u8 = 0x10;
/// Command byte: aux disabled.
pub const CB_AUX_DISABLE: u8 = 0x20;
/// Command byte: scan code translation.
pub const CB_TRANSLATE: u8 = 0x40;

/// Output port: system reset (active low).
pub const OUTPORT_RESET: u8 = 0x01;
/// Output port: A20 gate.
pub const OUTPORT_A20: u8 = 0x02;

/// Controller command: read command byte.
pub const CMD_READ_CB: u8 = 0x20;
/// Controller command: write command byte.
pub const CMD_WRITE_CB: u8 = 0x60;
/// Controller command: disable aux.
pub const CMD_DISABLE_AUX: u8 = 0xA7;
/// Controller command: enable aux.
pub const CMD_ENABLE_AUX: u8 = 0xA8;
/// Controller command: aux interface test.
pub const CMD_TEST_AUX: u8 = 0xA9;
/// Controller command: self-test.
pub const CMD_SELF_TEST: u8 = 0xAA;
/// Controller command: keyboard interface test.
pub const CMD_TEST_KBD: u8 = 0xAB;
/// Controller command: disable keyboard.
pub const CMD_DISABLE_KBD: u8 = 0xAD;
/// Controller command: enable keyboard.
pub const CMD_ENABLE_KBD: u8 = 0xAE;
/// Controller command: read input port.
pub const CMD_READ_INPORT: u8 = 0xC0;
/// Controller command: read output port.
pub const CMD_READ_OUTPORT: u8 = 0xD0;
/// Controller command: write output port.
pub const CMD_WRITE_OUTPORT: u8 = 0xD1;
/// Controller command: write keyboard output buffer.
pub const CMD_WRITE_KBD_OBUF: u8 = 0xD2;
/// Controller command: write aux output buffer.
pub const CMD_WRITE_AUX_OBUF: u8 = 0xD3;
/// Controller command: write to the aux device.
pub const CMD_WRITE_AUX: u8 = 0xD4;
/// Controller command: disable A20.
pub const CMD_DISABLE_A20: u8 = 0xDD;
/// Controller command: enable A20.
pub const CMD_ENABLE_A20: u8 = 0xDF;
/// Controller command: read test inputs.
pub const CMD_READ_TEST: u8 = 0xE0;
/// Controller command: pulse output port bit 0 (system reset).
pub const CMD_PULSE_RESET: u8 = 0xFE;

/// Self-test passed.
pub const SELF_TEST_OK: u8 = 0x55;
/// Keyboard: acknowledge.
pub const KBD_ACK: u8 = 0xFA;
/// Keyboard: basic assurance test passed.
pub const KBD_BAT_OK: u8 = 0xAA;
/// Keyboard: echo.
pub const KBD_ECHO: u8 = 0xEE;
/// Keyboard: resend (unknown command).
pub const KBD_RESEND: u8 = 0xFE;

/// Output buffer depth (keyboard-side buffering included).
const OBUF_MAX: usize = 64;

/// The state of the controller, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    /// Controller command byte.
    pub command_byte: u8,
    /// Output port.
    pub output_port: u8,
    /// Last write went to the command port.
    pub last_was_command: bool,
    /// A controller command waiting for its data byte.
    pub pending_command: Option<u8>,
    /// A keyboard command waiting for its parameter.
    pub pending_kbd_command: Option<u8>,
    /// Output buffer: (byte, is aux).
    pub output: VecDeque<(u8, bool)>,
    /// The last byte read from the data port (re-read when the buffer is empty).
    pub last_read: u8,
    /// The keyboard is scanning.
    pub scanning: bool,
    /// Scan code set selected by the guest.
    pub scan_set: u8,
    /// A system reset was requested and not yet taken.
    pub reset_requested: bool,
}

impl Default for I8042State {
    fn default() -> Self {
        I8042State {
            command_byte: CB_KBD_INT | CB_SYS | CB_TRANSLATE,
            output_port: OUTPORT_RESET | OUTPORT_A20,
            last_was_command: false,
            pending_command: None,
            pending_kbd_command: None,
            output: VecDeque::new(),
            last_read: 0,
            scanning: true,
            scan_set: 2,
            reset_requested: false,
        }
    }
}

/// The 8042, raising IRQ1 (keyboard) and IRQ12 (aux) through `I`.
#[derive(Debug)]
pub struct I8042<I: IrqLine> {
    s: I8042State,
    irq1: I,
    irq12: I,
    levels: (bool, bool),
}

impl<I: IrqLine> I8042<I> {
    /// The controller after the BIOS's usual setup: self-tested, keyboard enabled, IRQ1 on,
    /// translation on, A20 enabled.
    pub fn new(irq1: I, irq12: I) -> Self {
        Self::from_state(I8042State::default(), irq1, irq12)
    }

    /// Rebuilds the controller from a snapshot, driving the lines to the restored levels.
    pub fn from_state(state: I8042State, irq1: I, irq12: I) -> Self {
        let mut c = I8042 { s: state, irq1, irq12, levels: (false, false) };
        let (k, a) = c.wanted_levels();
        c.levels = (k, a);
        c.irq1.set_level(k);
        c.irq12.set_level(a);
        c
    }

    /// A snapshot.
    pub fn state(&self) -> I8042State {
        self.s.clone()
    }

    /// Whether the output port enables A20.
    pub fn a20_enabled(&self) -> bool {
        self.s.output_port & OUTPORT_A20 != 0
    }

    /// Whether the guest requested a system reset (command 0xFE, or output port bit 0 cleared).
    pub fn reset_requested(&self) -> bool {
        self.s.reset_requested
    }

    /// Returns and clears the reset request.
    pub fn take_reset_request(&mut self) -> bool {
        std::mem::take(&mut self.s.reset_requested)
    }

    /// Queues scan codes typed on the host keyboard. Returns false (and drops them) if the
    /// keyboard is disabled or not scanning, or the buffer is full.
    pub fn enqueue_key(&mut self, scancodes: &[u8]) -> bool {
        if !self.s.scanning || self.s.command_byte & CB_KBD_DISABLE != 0 {
            return false;
        }
        if self.s.output.len() + scancodes.len() > OBUF_MAX {
            log::debug!("i8042: output buffer full, dropping {} bytes", scancodes.len());
            return false;
        }
        for &b in scancodes {
            self.s.output.push_back((b, false));
        }
        self.update_irq();
        true
    }

    fn push(&mut self, v: u8, aux: bool) {
        if self.s.output.len() < OBUF_MAX {
            self.s.output.push_back((v, aux));
        }
    }

    fn wanted_levels(&self) -> (bool, bool) {
        match self.s.output.front() {
            Some(&(_, false)) => (self.s.command_byte & CB_KBD_INT != 0, false),
            Some(&(_, true)) => (false, self.s.command_byte & CB_AUX_INT != 0),
            None => (false, false),
        }
    }

    fn update_irq(&mut self) {
        let (k, a) = self.wanted_levels();
        if k != self.levels.0 {
            self.irq1.set_level(k);
        }
        if a != self.levels.1 {
            self.irq12.set_level(a);
        }
        self.levels = (k, a);
    }

    /// The status register.
    pub fn status(&self) -> u8 {
        let mut st = STATUS_INH;
        if let Some(&(_, aux)) = self.s.output.front() {
            st |= STATUS_OBF;
            if aux {
                st |= STATUS_AUX_OBF;
            }
        }
        if self.s.command_byte & CB_SYS != 0 {
            st |= STATUS_SYS;
        }
        if self.s.last_was_command {
            st |= STATUS_A2;
        }
        st
    }

    fn read_data(&mut self) -> u8 {
        if let Some((v, _)) = self.s.output.pop_front() {
            self.s.last_read = v;
            // Drop the lines so that a following byte gives a fresh edge.
            if self.levels.0 {
                self.irq1.set_level(false);
            }
            if self.levels.1 {
                self.irq12.set_level(false);
            }
            self.levels = (false, false);
            self.update_irq();
        }
        self.s.last_read
    }

    fn write_output_port(&mut self, v: u8) {
        self.s.output_port = v;
        if v & OUTPORT_RESET == 0 {
            log::debug!("i8042: system reset via output port");
            self.s.reset_requested = true;
        }
    }

    fn write_command(&mut self, cmd: u8) {
        self.s.pending_command = None;
        match cmd {
            CMD_READ_CB => self.push(self.s.command_byte, false),
            0x21..=0x3F => self.push(0, false),
            CMD_WRITE_CB..=0x7F | CMD_WRITE_OUTPORT..=CMD_WRITE_AUX => self.s.pending_command = Some(cmd),
            CMD_DISABLE_AUX => self.s.command_byte |= CB_AUX_DISABLE,
            CMD_ENABLE_AUX => self.s.command_byte &= !CB_AUX_DISABLE,
            CMD_TEST_AUX | CMD_TEST_KBD => self.push(0x00, false),
            CMD_SELF_TEST => {
                self.s.command_byte |= CB_SYS;
                self.push(SELF_TEST_OK, false);
            }
            CMD_DISABLE_KBD => self.s.command_byte |= CB_KBD_DISABLE,
            CMD_ENABLE_KBD => self.s.command_byte &= !CB_KBD_DISABLE,
            CMD_READ_INPORT => self.push(0x80, false),
            CMD_READ_OUTPORT => {
                let mut v = self.s.output_port & (OUTPORT_RESET | OUTPORT_A20);
                if let Some(&(_, aux)) = self.s.output.front() {
                    v |= if aux { 0x20 } else { 0x10 };
                }
                self.push(v, false);
            }
            CMD_DISABLE_A20 => self.s.output_port &= !OUTPORT_A20,
            CMD_ENABLE_A20 => self.s.output_port |= OUTPORT_A20,
            CMD_READ_TEST => self.push(0x00, false),
            0xF0..=0xFF => {
                // Pulse the output port bits that are 0 in the low nibble.
                if cmd & OUTPORT_RESET == 0 {
                    log::debug!("i8042: system reset via pulse command {cmd:#x}");
                    self.s.reset_requested = true;
                }
            }
            _ => log::debug!("i8042: unknown controller command {cmd:#x}"),
        }
    }

    fn write_data(&mut self, v: u8) {
        if let Some(cmd) = self.s.pending_command.take() {
            match cmd {
                CMD_WRITE_CB => self.s.command_byte = v,
                CMD_WRITE_OUTPORT => self.write_output_port(v),
                CMD_WRITE_KBD_OBUF => self.push(v, false),
                CMD_WRITE_AUX_OBUF => self.push(v, true),
                CMD_WRITE_AUX => self.push(KBD_RESEND, true),
                _ => {} // controller RAM: not kept
            }
            return;
        }
        self.keyboard_command(v);
    }

    fn keyboard_command(&mut self, v: u8) {
        // Writing to the keyboard enables its interface.
        self.s.command_byte &= !CB_KBD_DISABLE;
        if let Some(cmd) = self.s.pending_kbd_command.take() {
            self.push(KBD_ACK, false);
            if cmd == 0xF0 {
                match v {
                    0 => self.push(self.s.scan_set, false),
                    1..=3 => self.s.scan_set = v,
                    _ => {}
                }
            }
            return;
        }
        match v {
            0xFF => {
                self.s.scanning = true;
                self.s.scan_set = 2;
                self.push(KBD_ACK, false);
                self.push(KBD_BAT_OK, false);
            }
            0xEE => self.push(KBD_ECHO, false),
            0xF2 => {
                self.push(KBD_ACK, false);
                self.push(0xAB, false);
                self.push(0x83, false);
            }
            0xF4 => {
                self.s.scanning = true;
                self.push(KBD_ACK, false);
            }
            0xF5 => {
                self.s.scanning = false;
                self.push(KBD_ACK, false);
            }
            0xF6 => {
                self.s.scanning = true;
                self.s.scan_set = 2;
                self.push(KBD_ACK, false);
            }
            0xED | 0xF3 | 0xF0 => {
                self.s.pending_kbd_command = Some(v);
                self.push(KBD_ACK, false);
            }
            0xF7..=0xFD => self.push(KBD_ACK, false),
            _ => {
                log::debug!("i8042: unknown keyboard command {v:#x}");
                self.push(KBD_RESEND, false);
            }
        }
    }

    /// Reads port 0x60 (data) or 0x64 (status).
    pub fn read_port(&mut self, port: u16) -> u8 {
        match port {
            I8042_DATA_PORT => self.read_data(),
            I8042_COMMAND_PORT => self.status(),
            _ => {
                log::debug!("i8042: read of port {port:#x}");
                0xFF
            }
        }
    }

    /// Writes port 0x60 (data) or 0x64 (command).
    pub fn write_port(&mut self, port: u16, v: u8) {
        match port {
            I8042_DATA_PORT => {
                self.s.last_was_command = false;
                self.write_data(v);
            }
            I8042_COMMAND_PORT => {
                self.s.last_was_command = true;
                self.write_command(v);
            }
            _ => log::debug!("i8042: write {v:#x} to port {port:#x}"),
        }
        self.update_irq();
    }
}

impl<I: IrqLine> PioDevice for I8042<I> {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        match (u16::try_from(access.addr), data.len()) {
            (Ok(port), 1) => data[0] = self.read_port(port),
            _ => {
                log::debug!("i8042: {}-byte read at {:#x}", data.len(), access.addr);
                data.fill(0xFF);
            }
        }
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        match (u16::try_from(access.addr), data) {
            (Ok(port), [v]) => self.write_port(port, *v),
            _ => log::debug!("i8042: {}-byte write at {:#x}", data.len(), access.addr),
        }
    }
}

impl<I: IrqLine> base::Persist for I8042<I> {
    type State = I8042State;
    /// The IRQ 1 (keyboard) and IRQ 12 (mouse) lines.
    type ConstructorArgs = (I, I);
    type Error = std::convert::Infallible;
    fn save(&self) -> I8042State {
        self.state()
    }
    fn restore((irq1, irq12): (I, I), state: &I8042State) -> Result<Self, Self::Error> {
        Ok(Self::from_state(state.clone(), irq1, irq12))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::RecordingIrq;

    fn kbc() -> (I8042<RecordingIrq>, RecordingIrq, RecordingIrq) {
        let (k, a) = (RecordingIrq::new(), RecordingIrq::new());
        (I8042::new(k.clone(), a.clone()), k, a)
    }

    fn drain(c: &mut I8042<RecordingIrq>) -> Vec<u8> {
        let mut v = Vec::new();
        while c.read_port(0x64) & STATUS_OBF != 0 {
            v.push(c.read_port(0x60));
        }
        v
    }

    #[test]
    fn test_i8042_self_test_and_command_byte() {
        let (mut c, irq1, _) = kbc();
        assert_eq!(c.read_port(0x64) & STATUS_OBF, 0);
        c.write_port(0x64, CMD_SELF_TEST);
        assert_eq!(c.read_port(0x64) & (STATUS_OBF | STATUS_A2 | STATUS_SYS), STATUS_OBF | STATUS_A2 | STATUS_SYS);
        assert!(irq1.level());
        assert_eq!(c.read_port(0x60), SELF_TEST_OK);
        assert!(!irq1.level());
        c.write_port(0x64, CMD_WRITE_CB);
        c.write_port(0x60, CB_SYS | CB_TRANSLATE);
        c.write_port(0x64, CMD_READ_CB);
        assert_eq!(c.read_port(0x64) & STATUS_A2, STATUS_A2);
        assert!(!irq1.level(), "IRQ1 disabled in the command byte");
        assert_eq!(drain(&mut c), vec![CB_SYS | CB_TRANSLATE]);
        c.write_port(0x64, CMD_DISABLE_KBD);
        c.write_port(0x64, CMD_READ_CB);
        assert_eq!(drain(&mut c), vec![CB_SYS | CB_TRANSLATE | CB_KBD_DISABLE]);
        assert_eq!(c.read_port(0x60), CB_SYS | CB_TRANSLATE | CB_KBD_DISABLE, "empty buffer re-reads");
        assert_eq!(c.read_port(0x61), 0xFF);
    }

    #[test]
    fn test_i8042_a20_and_reset() {
        let (mut c, _, _) = kbc();
        assert!(c.a20_enabled());
        c.write_port(0x64, CMD_WRITE_OUTPORT);
        c.write_port(0x60, OUTPORT_RESET);
        assert!(!c.a20_enabled());
        c.write_port(0x64, CMD_READ_OUTPORT);
        assert_eq!(drain(&mut c), vec![OUTPORT_RESET]);
        c.write_port(0x64, CMD_ENABLE_A20);
        assert!(c.a20_enabled());
        c.write_port(0x64, CMD_DISABLE_A20);
        assert!(!c.a20_enabled());
        assert!(!c.reset_requested());
        c.write_port(0x64, CMD_PULSE_RESET);
        assert!(c.reset_requested());
        assert!(c.take_reset_request());
        assert!(!c.reset_requested());
        c.write_port(0x64, CMD_WRITE_OUTPORT);
        c.write_port(0x60, OUTPORT_A20);
        assert!(c.take_reset_request(), "clearing the reset line resets");
    }

    #[test]
    fn test_i8042_keyboard_commands() {
        let (mut c, irq1, _) = kbc();
        c.write_port(0x60, 0xFF);
        assert_eq!(drain(&mut c), vec![KBD_ACK, KBD_BAT_OK]);
        c.write_port(0x60, 0xEE);
        assert_eq!(drain(&mut c), vec![KBD_ECHO]);
        c.write_port(0x60, 0xF2);
        assert_eq!(drain(&mut c), vec![KBD_ACK, 0xAB, 0x83]);
        c.write_port(0x60, 0xED);
        c.write_port(0x60, 0x07);
        assert_eq!(drain(&mut c), vec![KBD_ACK, KBD_ACK]);
        c.write_port(0x60, 0xF0);
        c.write_port(0x60, 0x00);
        assert_eq!(drain(&mut c), vec![KBD_ACK, KBD_ACK, 2]);
        c.write_port(0x60, 0x42);
        assert_eq!(drain(&mut c), vec![KBD_RESEND]);
        // Each byte gives its own IRQ1 edge.
        irq1.clear();
        assert!(c.enqueue_key(&[0x1E, 0x9E]));
        assert_eq!(c.read_port(0x60), 0x1E);
        assert_eq!(c.read_port(0x60), 0x9E);
        assert_eq!(irq1.rising_edges(), 2);
        c.write_port(0x60, 0xF5);
        drain(&mut c);
        assert!(!c.enqueue_key(&[0x1E]), "scanning disabled");
        c.write_port(0x60, 0xF4);
        drain(&mut c);
        assert!(c.enqueue_key(&[0x1E]));
    }

    #[test]
    fn test_i8042_aux_paths() {
        let (mut c, irq1, irq12) = kbc();
        c.write_port(0x64, CMD_WRITE_CB);
        c.write_port(0x60, CB_KBD_INT | CB_AUX_INT | CB_SYS);
        c.write_port(0x64, CMD_WRITE_AUX_OBUF);
        c.write_port(0x60, 0x5A);
        assert_eq!(c.read_port(0x64) & STATUS_AUX_OBF, STATUS_AUX_OBF);
        assert!(irq12.level());
        assert!(!irq1.level());
        assert_eq!(c.read_port(0x60), 0x5A);
        assert!(!irq12.level());
        c.write_port(0x64, CMD_WRITE_AUX);
        c.write_port(0x60, 0xF4);
        assert_eq!(c.read_port(0x60), KBD_RESEND, "no mouse");
        c.write_port(0x64, CMD_WRITE_KBD_OBUF);
        c.write_port(0x60, 0x33);
        assert!(irq1.level());
        assert_eq!(c.read_port(0x60), 0x33);
    }

    #[test]
    fn test_i8042_state_roundtrip() {
        let (mut c, _, _) = kbc();
        c.enqueue_key(&[1, 2]);
        let st = c.state();
        let k = RecordingIrq::new();
        let mut d = I8042::from_state(st.clone(), k.clone(), RecordingIrq::new());
        assert!(k.level());
        assert_eq!(d.state(), st);
        assert_eq!(d.read_port(0x60), 1);
    }
}
