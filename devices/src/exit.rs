//! QEMU's `isa-debug-exit` device, conventionally on port 0xF4.
//!
//! A write of value `v` asks the VM to end; QEMU then exits with status `(v << 1) | 1`, so a
//! test harness can tell a guest-requested exit (always odd) from a crash.

use crate::bus::{Access, PioDevice};

/// The conventional port of the exit device.
pub const EXIT_PORT: u16 = 0xF4;

/// The process exit status QEMU uses for a write of `v`: `(v << 1) | 1` (wrapping).
pub const fn exit_status(v: u32) -> u32 {
    (v << 1) | 1
}

/// The exit device. A write latches the value until [`ExitDevice::take_exit`] collects it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExitDevice {
    pending: Option<u32>,
}

impl ExitDevice {
    /// A device with no exit requested.
    pub fn new() -> Self {
        Self::default()
    }

    /// The raw value `v` of the last write, if an exit was requested since the last call.
    /// See [`exit_status`] for the conventional process status.
    pub fn take_exit(&mut self) -> Option<u32> {
        self.pending.take()
    }

    /// Whether an exit is requested and not yet taken.
    pub fn exit_requested(&self) -> bool {
        self.pending.is_some()
    }
}

impl PioDevice for ExitDevice {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        log::debug!("debug-exit: read at {:#x} ({} bytes)", access.addr, data.len());
        data.fill(0xFF);
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        if data.is_empty() || data.len() > 4 {
            log::debug!("debug-exit: bad write at {:#x} ({} bytes)", access.addr, data.len());
            return;
        }
        let mut buf = [0u8; 4];
        buf[..data.len()].copy_from_slice(data);
        let v = u32::from_le_bytes(buf);
        log::debug!("debug-exit: guest requested exit with value {v:#x}");
        self.pending = Some(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base::VirtualInstant;

    #[test]
    fn test_exit_latches_value() {
        let mut e = ExitDevice::new();
        let a = Access::at(0, VirtualInstant(0));
        assert_eq!(e.take_exit(), None);
        e.write(a, &[0x10]);
        assert!(e.exit_requested());
        assert_eq!(e.take_exit(), Some(0x10));
        assert_eq!(e.take_exit(), None);
        e.write(a, &0x1234_5678u32.to_le_bytes());
        assert_eq!(e.take_exit(), Some(0x1234_5678));
        e.write(a, &[1, 2, 3, 4, 5]);
        assert_eq!(e.take_exit(), None);
        let mut d = [0u8; 2];
        e.read(a, &mut d);
        assert_eq!(d, [0xFF; 2]);
        assert_eq!(exit_status(0), 1);
        assert_eq!(exit_status(0x10), 0x21);
    }
}
