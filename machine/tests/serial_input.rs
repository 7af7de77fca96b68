//! Host input on COM1 enters at its virtual-time stamp: a guest polling the 16550's line
//! status sees the byte exactly when virtual time reaches the stamp, whatever the run slicing,
//! so two runs with the same input retire the same instructions.

use base::VirtualInstant;
use machine::{Exit, Machine, MachineConfig};

/// Polls LSR.DR, reads RBR, writes the byte to the exit port.
const ECHO: [u8; 17] = [
    0xBA, 0xFD, 0x03, // mov dx, 0x3fd
    0xEC, // in al, dx
    0xA8, 0x01, // test al, 1
    0x74, 0xFB, // jz -5
    0xBA, 0xF8, 0x03, // mov dx, 0x3f8
    0xEC, // in al, dx
    0xE6, 0xF4, // out 0xf4, al
    0xF4, // hlt
    0x90, 0x90,
];

fn run(at: u64, max: Option<u64>) -> (Exit, u64, u64) {
    let mut m = Machine::new(MachineConfig { ram_bytes: 16 << 20, ..Default::default() }).unwrap();
    m.load_flat(&ECHO, 0x7C00, 0x7C00).unwrap();
    m.queue_serial_input(VirtualInstant(at), b"Zq");
    let exit = m.run(max);
    (exit, m.instructions(), m.virtual_time().0)
}

#[test]
fn test_serial_input_arrives_at_its_virtual_time() {
    let (exit, insns, _) = run(1_000_000, Some(10_000_000));
    assert_eq!(exit, Exit::ExitDevice(u32::from(b'Z')));
    // The poll loop is 4 instructions; the byte is seen by the first LSR read at or after
    // the stamp.
    assert!((1_000_000..1_000_000 + 12).contains(&insns), "{insns}");
    assert_eq!(run(1_000_000, Some(10_000_000)).1, insns, "same input, same run");
    // Not before its time.
    assert_eq!(run(1_000_000, Some(900_000)).0, Exit::InstructionLimit);
    // Input stamped in the past arrives at once.
    let (exit, insns, _) = run(0, Some(1000));
    assert_eq!(exit, Exit::ExitDevice(u32::from(b'Z')));
    assert!(insns < 20);
}
