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

/// A Multiboot a.out-kludge kernel: header at file offset 0, loaded at `load`, `len` bytes of
/// which the rest is a recognisable pattern, entry at the first byte after the header (HLT).
fn multiboot_kernel(load: u32, len: u32) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i % 251) as u8 | 1).collect();
    let flags: u32 = 1 << 16;
    let magic: u32 = 0x1BAD_B002;
    let words = [magic, flags, magic.wrapping_add(flags).wrapping_neg(), load, load, load + len, 0, load + 32];
    for (k, w) in words.iter().enumerate() {
        f[k * 4..k * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    f[32] = 0xF4; // hlt
    f
}

/// Issue 11, item 10: the Multiboot information used to go to a fixed 0x9000-0x9FFF, over a
/// kernel loaded at 0x8000; and the command line must be what QEMU passes.
#[test]
fn test_issue_11_multiboot_info_overlaps_nothing() {
    let kernel = multiboot_kernel(0x8000, 0x3000);
    let mut m = Machine::new(MachineConfig { ram_bytes: 32 << 20, ..Default::default() }).unwrap();
    m.load_multiboot(&kernel, "/boot/kernel.elf arg1 arg2").unwrap();
    // The kernel's bytes are intact.
    let mut back = vec![0u8; kernel.len()];
    m.memory().read(base::GuestPhysAddr(0x8000), &mut back).unwrap();
    assert_eq!(back, kernel, "the loader wrote over the kernel");
    // EBX points at the information structure (Multiboot spec 3.2), outside the kernel.
    let info = m.cpu().gpr[3];
    assert_eq!(m.cpu().gpr[0], 0x2BAD_B002);
    assert!(info + 88 <= 0x8000 || info >= 0xB000, "info at {info:#x} overlaps the kernel");
    let mut mbi = [0u8; 88];
    m.memory().read(base::GuestPhysAddr(info), &mut mbi).unwrap();
    let word = |o: usize| u64::from(u32::from_le_bytes(mbi[o..o + 4].try_into().unwrap()));
    assert_ne!(word(0) & (1 << 2), 0, "flags: cmdline present");
    let (cmd, mmap, mmap_len) = (word(16), word(48), word(44));
    for (what, at, len) in [("cmdline", cmd, 27), ("mmap", mmap, mmap_len)] {
        assert!(at + len <= 0x8000 || at >= 0xB000, "{what} at {at:#x} overlaps the kernel");
    }
    let mut c = [0u8; 27];
    m.memory().read(base::GuestPhysAddr(cmd), &mut c).unwrap();
    assert_eq!(&c, b"/boot/kernel.elf arg1 arg2\0");
    assert_eq!(m.run(Some(10)), Exit::Halted);
}
