//! The machine end to end with small hand-assembled images.

use iced_x86::code_asm::*;
use machine::{Exit, Machine, MachineConfig};

fn machine() -> Machine {
    Machine::new(MachineConfig { ram_bytes: 16 << 20, capture_serial: true, ..Default::default() }).unwrap()
}

#[test]
fn test_machine_serial_and_exit_port() {
    let mut a = CodeAssembler::new(16).unwrap();
    for &b in b"hi\n" {
        a.mov(dx, 0x3F8u32).unwrap();
        a.mov(al, u32::from(b)).unwrap();
        a.out(dx, al).unwrap();
    }
    a.mov(al, 0xE9u32).unwrap();
    a.out(0xE9, al).unwrap(); // debug console gets 0xE9
    a.mov(al, 0x21u32).unwrap();
    a.out(0xF4, al).unwrap();
    a.hlt().unwrap();
    let code = a.assemble(0x7C00).unwrap();
    let mut m = machine();
    m.load_flat(&code, 0x7C00, 0x7C00).unwrap();
    assert_eq!(m.run(Some(1000)), Exit::ExitDevice(0x21));
    assert_eq!(m.serial_output(), b"hi\n\xE9");
}

#[test]
fn test_machine_halt_with_interrupts_off_is_power_off() {
    let mut m = machine();
    m.load_flat(&[0xFA, 0xF4], 0x1000, 0x1000).unwrap(); // cli; hlt
    assert_eq!(m.run(None), Exit::Halted);
    assert_eq!(m.instructions(), 2);
}

#[test]
fn test_machine_instruction_limit() {
    let mut m = machine();
    m.load_flat(&[0xEB, 0xFE], 0x1000, 0x1000).unwrap(); // jmp $
    assert_eq!(m.run(Some(12345)), Exit::InstructionLimit);
    assert_eq!(m.instructions(), 12345);
}

#[test]
fn test_machine_triple_fault() {
    // Empty IDT in protected mode: the first exception escalates to a triple fault.
    let mut a = CodeAssembler::new(16).unwrap();
    a.xor(ax, ax).unwrap();
    a.mov(ds, ax).unwrap();
    a.lidt(ptr(0x0500u64)).unwrap(); // limit 0 (memory there is zero)
    a.mov(eax, cr0).unwrap();
    a.or(eax, 1).unwrap();
    a.mov(cr0, eax).unwrap();
    a.ud2().unwrap();
    let code = a.assemble(0x1000).unwrap();
    let mut m = machine();
    m.load_flat(&code, 0x1000, 0x1000).unwrap();
    assert_eq!(m.run(Some(1000)), Exit::TripleFault);
}

#[test]
fn test_machine_bad_inputs_are_errors() {
    assert!(Machine::new(MachineConfig { ram_bytes: 4096, ..Default::default() }).is_err());
    let mut m = machine();
    assert!(m.load_flat(&[0; 16], 16 << 20, 0x1000).is_err(), "image past RAM");
    assert!(m.load_flat(&[0; 16], 0x1000, 0x20_0000).is_err(), "entry above 1 MiB");
    assert!(m.load_multiboot(b"not a kernel", "").is_err());
}
