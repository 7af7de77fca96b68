//! A reset under direct kernel boot boots the same kernel again, as QEMU's `-kernel` does: the
//! image is loaded afresh (the kernel may have overwritten itself) while RAM outside it keeps
//! its contents. With `no_reboot` (QEMU's `-no-reboot`) the first reset ends the run.

use machine::{Exit, KernelKind, Machine, MachineConfig};

/// Load address of the test kernel (1 MiB, where Multiboot kernels usually live).
const LOAD: u32 = 0x10_0000;
/// Boot counter: a dword outside the kernel image, which a reset does not clear.
const COUNTER: u32 = 0x20_0000;
/// Where the zero IDT descriptor (limit 0, base 0) lies in the image.
const IDTR: u32 = LOAD + 0x80;

/// A Multiboot v1 a.out-kludge kernel that counts its boots at [`COUNTER`], overwrites its own
/// first instruction with `ud2` (so running it again without reloading the image faults
/// forever), then: on boot 1 triple-faults (an interrupt with an empty IDT), on boot 2 resets
/// through the keyboard controller (command 0xFE to port 0x64), on boot 3 writes the count to
/// the exit port.
fn counting_kernel() -> Vec<u8> {
    let entry = LOAD + 32;
    let mut code: Vec<u8> = Vec::new();
    code.extend([0xFF, 0x05]); // inc dword [COUNTER]
    code.extend(COUNTER.to_le_bytes());
    code.push(0xA1); // mov eax, [COUNTER]
    code.extend(COUNTER.to_le_bytes());
    code.extend([0xC7, 0x05]); // mov dword [entry], 0x0B0F0B0F (ud2; ud2)
    code.extend(entry.to_le_bytes());
    code.extend(0x0B0F_0B0Fu32.to_le_bytes());
    code.extend([0x83, 0xF8, 0x03, 0x75, 0x03]); // cmp eax, 3; jne +3
    code.extend([0xE6, 0xF4, 0xF4]); // out 0xF4, al; hlt
    code.extend([0x83, 0xF8, 0x02, 0x75, 0x05]); // cmp eax, 2; jne +5
    code.extend([0xB0, 0xFE, 0xE6, 0x64, 0xF4]); // mov al, 0xFE; out 0x64, al; hlt
    code.extend([0x0F, 0x01, 0x1D]); // lidt [IDTR]
    code.extend(IDTR.to_le_bytes());
    code.push(0xCC); // int3: #GP (no IDT entry), #DF, triple fault
    let len = 0x100u32;
    let mut f = vec![0u8; len as usize];
    let flags: u32 = 1 << 16;
    let magic: u32 = 0x1BAD_B002;
    let header = [magic, flags, magic.wrapping_add(flags).wrapping_neg(), LOAD, LOAD, LOAD + len, 0, entry];
    for (k, w) in header.iter().enumerate() {
        f[k * 4..k * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    f[32..32 + code.len()].copy_from_slice(&code);
    assert!(32 + code.len() <= 0x80);
    f
}

fn boot(no_reboot: bool) -> Machine {
    let mut m = Machine::new(MachineConfig { ram_bytes: 32 << 20, no_reboot, ..Default::default() }).unwrap();
    assert_eq!(m.load_kernel(&counting_kernel(), None, "", "counter").unwrap(), KernelKind::Multiboot);
    m
}

fn counter(m: &mut Machine) -> u32 {
    let mut c = [0u8; 4];
    m.memory().read(base::GuestPhysAddr(u64::from(COUNTER)), &mut c).unwrap();
    u32::from_le_bytes(c)
}

#[test]
fn test_direct_boot_triple_fault_and_kbc_reset_boot_the_kernel_again() {
    let mut m = boot(false);
    assert_eq!(m.run(Some(1_000_000)), Exit::ExitDevice(3), "the third boot writes its count to the exit port");
    assert_eq!(m.reboots(), 2);
    assert_eq!(m.last_reset_cause(), Some("the keyboard controller (command 0xFE)"));
    assert_eq!(counter(&mut m), 3, "RAM outside the image survives a reset");
}

#[test]
fn test_direct_boot_no_reboot_ends_the_run_at_the_first_reset() {
    let mut m = boot(true);
    assert_eq!(m.run(Some(1_000_000)), Exit::TripleFault);
    assert_eq!((m.reboots(), counter(&mut m)), (0, 1));
    assert_eq!(m.last_reset_cause(), Some("a triple fault"));
}

/// A flat image has no kernel to load again: its reset still ends the run.
#[test]
fn test_flat_image_reset_still_ends_the_run() {
    let mut m = Machine::new(MachineConfig { ram_bytes: 32 << 20, ..Default::default() }).unwrap();
    // mov al, 0xFE; out 0x64, al; hlt
    m.load_flat(&[0xB0, 0xFE, 0xE6, 0x64, 0xF4], 0x7C00, 0x7C00).unwrap();
    assert_eq!(m.run(Some(1000)), Exit::Reset);
    assert_eq!(m.reboots(), 0);
}
