//! ACPI power management of the board as a guest drives it: S5 through PM1a_CNT (the FADT's
//! address, SLP_TYP from `\_S5`), the PM timer at 3.579545 MHz of virtual time, the power
//! button's SCI.

use machine::acpi::{DIRECT_BOOT_RSDP, DIRECT_BOOT_TABLES};
use machine::{Exit, Machine, MachineConfig};

fn machine(code: &[u8], acpi: bool) -> Machine {
    let mut m = Machine::new(MachineConfig { ram_bytes: 16 << 20, ..Default::default() }).unwrap();
    if acpi {
        m.install_acpi(DIRECT_BOOT_TABLES, DIRECT_BOOT_RSDP).unwrap();
    }
    m.load_flat(code, 0x7C00, 0x7C00).unwrap();
    m
}

/// The FADT's PM1a_CNT_BLK and PM_TMR_BLK, read from the installed tables as an OS would.
fn fadt_ports(m: &mut Machine) -> (u16, u16) {
    let mut r = [0u8; 36];
    m.memory().read(base::GuestPhysAddr(u64::from(DIRECT_BOOT_RSDP)), &mut r).unwrap();
    assert_eq!(&r[..8], b"RSD PTR ");
    let rsdt = u32::from_le_bytes(r[16..20].try_into().unwrap());
    let mut h = [0u8; 44];
    m.memory().read(base::GuestPhysAddr(u64::from(rsdt)), &mut h).unwrap();
    let fadt = u32::from_le_bytes(h[36..40].try_into().unwrap());
    let mut f = [0u8; 80];
    m.memory().read(base::GuestPhysAddr(u64::from(fadt)), &mut f).unwrap();
    assert_eq!(&f[..4], b"FACP");
    (u32::from_le_bytes(f[64..68].try_into().unwrap()) as u16, u32::from_le_bytes(f[76..80].try_into().unwrap()) as u16)
}

#[test]
fn test_s5_power_off_ends_the_run() {
    // mov dx, PM1a_CNT; mov ax, SLP_EN | SLP_TYP 0; out dx, ax; hlt
    let mut m = machine(&[0xF4], true);
    let (cnt, _) = fadt_ports(&mut m);
    let [lo, hi] = cnt.to_le_bytes();
    let code = [0xBA, lo, hi, 0xB8, 0x00, 0x20, 0xEF, 0xF4];
    let mut m = machine(&code, true);
    assert_eq!(m.run(Some(1000)), Exit::PowerOff);
    // Without the PM block enabled (no firmware, no install_acpi) the write goes nowhere.
    let mut m = machine(&code, false);
    assert_eq!(m.run(Some(1000)), Exit::Halted);
}

#[test]
fn test_pm_timer_counts_virtual_time() {
    let mut m = machine(&[0xF4], true);
    let (_, tmr) = fadt_ports(&mut m);
    let [lo, hi] = tmr.to_le_bytes();
    // mov dx, PM_TMR; in eax, dx; mov ebx, eax; mov ecx, 100000; loop $; in eax, dx; hlt
    let code = [
        0xBA, lo, hi, 0x66, 0xED, 0x66, 0x89, 0xC3, 0x66, 0xB9, 0xA0, 0x86, 0x01, 0x00, 0x67, 0xE2, 0xFD, 0x66, 0xED,
        0xF4,
    ];
    let mut m = machine(&code, true);
    assert_eq!(m.run(Some(1_000_000)), Exit::Halted);
    let cpu = m.cpu();
    let (first, second) = (cpu.gpr[3] as u32, cpu.gpr[0] as u32);
    // Virtual time is one nanosecond per instruction; the reads are the 2nd and the 100004th
    // instruction, 100002 ns apart: 357.96 ticks of a 3.579545 MHz clock.
    assert!(first <= 1, "{first}");
    assert!((357..=358).contains(&second.wrapping_sub(first)), "{first} {second}");
}
