//! The Bochs/QEMU debug console on port 0xE9.
//!
//! A byte written to the port is sent to the output; a read returns 0xE9 so that a guest can
//! detect the console's presence.

use crate::bus::{Access, PioDevice};
use std::io::Write;

/// The conventional port of the debug console.
pub const DEBUGCON_PORT: u16 = 0xE9;
/// The value a read of the port returns (the port number).
pub const DEBUGCON_READBACK: u8 = 0xE9;

/// The debug console, writing guest output to `W`.
#[derive(Debug)]
pub struct DebugCon<W: Write> {
    out: W,
}

impl<W: Write> DebugCon<W> {
    /// A console writing to `out`.
    pub fn new(out: W) -> Self {
        DebugCon { out }
    }

    /// The output sink.
    pub fn writer(&self) -> &W {
        &self.out
    }

    /// The output sink, mutably.
    pub fn writer_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// Gives back the output sink.
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> PioDevice for DebugCon<W> {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        data.fill(0xFF);
        if access.offset == 0 && data.len() == 1 {
            data[0] = DEBUGCON_READBACK;
        } else {
            log::debug!("debugcon: bad read at {:#x} ({} bytes)", access.addr, data.len());
        }
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        // Like QEMU, only the low byte of a wider write is output.
        match data.first() {
            Some(&b) if access.offset == 0 => {
                if let Err(e) = self.out.write_all(&[b]).and_then(|()| self.out.flush()) {
                    log::debug!("debugcon: output error: {e}");
                }
            }
            _ => log::debug!("debugcon: bad write at {:#x} ({} bytes)", access.addr, data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base::VirtualInstant;

    #[test]
    fn test_debugcon_output_and_readback() {
        let mut con = DebugCon::new(Vec::new());
        let a = Access::at(0, VirtualInstant(0));
        for &b in b"hi\n" {
            con.write(a, &[b]);
        }
        con.write(a, b"!?");
        let mut d = [0u8; 1];
        con.read(a, &mut d);
        assert_eq!(d, [0xE9]);
        let mut d2 = [0u8; 2];
        con.read(a, &mut d2);
        assert_eq!(d2, [0xFF, 0xFF]);
        con.write(Access::at(1, VirtualInstant(0)), b"x");
        assert_eq!(con.into_inner(), b"hi\n!");
    }
}
