//! Snapshot conformance for the chipset devices (style.md 6.5): a snapshot taken after a
//! mutation differs from the one before, and restoring it reproduces it exactly.

use base::VirtualInstant;
use devices::fw_cfg::FW_CFG_SIGNATURE;
use devices::lapic::{APIC_SPIV, APIC_SPIV_APIC_ENABLED, APIC_TMICT};
use devices::{
    Access, AtaDiskConfig, FwCfgBuilder, I440fxHost, IoApic, LocalApic, MemBackend, PciBus, PciConfigIo, PciFunction,
    Piix3Isa, Piix4Pm, PiixIde, PioDevice, RecordingIrq,
};

/// Checks `save` → mutate → `save` differs → restore → `save` equal.
macro_rules! persist_test {
    ($name:ident, $make:expr, $save:expr, $mutate:expr, $restore:expr) => {
        #[test]
        fn $name() {
            let mut dev = $make;
            let before = $save(&dev);
            $mutate(&mut dev);
            let after = $save(&dev);
            assert_ne!(before, after, "the mutation must show in the snapshot");
            let restored = $restore(after.clone());
            assert_eq!($save(&restored), after);
        }
    };
}

fn at(port: u16) -> Access {
    Access { offset: 0, addr: u64::from(port), now: VirtualInstant(1000) }
}

persist_test!(
    test_persist_pci_config_io,
    PciConfigIo::new(PciBus::new()),
    |d: &PciConfigIo<PciBus>| d.state(),
    |d: &mut PciConfigIo<PciBus>| d.write(Access::at(0, VirtualInstant(0)), &0x8000_0810u32.to_le_bytes()),
    |s| PciConfigIo::from_state(PciBus::new(), s)
);

persist_test!(
    test_persist_i440fx,
    I440fxHost::new(),
    |d: &I440fxHost| d.state(),
    |d: &mut I440fxHost| d.write_config(0x59, &[0x30, 0x33]),
    I440fxHost::from_state
);

persist_test!(
    test_persist_piix3_isa,
    Piix3Isa::new(),
    |d: &Piix3Isa| d.state(),
    |d: &mut Piix3Isa| d.write_config(0x60, &[10]),
    Piix3Isa::from_state
);

persist_test!(
    test_persist_piix4_pm,
    Piix4Pm::new(RecordingIrq::new()),
    |d: &Piix4Pm<RecordingIrq>| d.state(),
    |d: &mut Piix4Pm<RecordingIrq>| {
        d.write_config(0x80, &[1]);
        d.write(at(0xB2), &[0xF1]);
    },
    |s| Piix4Pm::from_state(RecordingIrq::new(), s)
);

fn ide() -> PiixIde<RecordingIrq> {
    let mut ide = PiixIde::new(RecordingIrq::new(), RecordingIrq::new());
    ide.attach(0, false, Box::new(MemBackend::zeroed(64 * 512)), AtaDiskConfig::default()).unwrap();
    ide
}

persist_test!(
    test_persist_piix_ide,
    ide(),
    |d: &PiixIde<RecordingIrq>| d.state(),
    |d: &mut PiixIde<RecordingIrq>| {
        d.write(at(0x1F2), &[4]);
        d.write(at(0x1F6), &[0xE0]);
        d.write(at(0x1F7), &[0x20]);
        d.read(at(0x1F0), &mut [0, 0]);
    },
    |s| {
        let mut d = ide();
        d.restore(s);
        d
    }
);

persist_test!(
    test_persist_fw_cfg,
    FwCfgBuilder::new().build().unwrap(),
    |d: &devices::FwCfg| d.state(),
    |d: &mut devices::FwCfg| {
        d.write(Access::at(0, VirtualInstant(0)), &FW_CFG_SIGNATURE.to_le_bytes());
        d.read(Access::at(1, VirtualInstant(0)), &mut [0]);
    },
    |s| {
        let mut d = FwCfgBuilder::new().build().unwrap();
        d.restore(s);
        d
    }
);

persist_test!(
    test_persist_local_apic,
    LocalApic::new(0, true),
    |d: &LocalApic| d.state(),
    |d: &mut LocalApic| {
        d.write_register(APIC_SPIV, APIC_SPIV_APIC_ENABLED | 0xFF, VirtualInstant(0));
        d.write_register(APIC_TMICT, 1000, VirtualInstant(5));
        d.accept_interrupt(0x41, true);
    },
    LocalApic::from_state
);

persist_test!(
    test_persist_io_apic,
    IoApic::new(0),
    |d: &IoApic| d.state(),
    |d: &mut IoApic| {
        d.write_indirect(0x14, 0x8031);
        d.set_irq(2, true);
    },
    IoApic::from_state
);

#[test]
fn test_persist_ide_restore_reraises_interrupt() {
    let irq = RecordingIrq::new();
    let mut d = PiixIde::new(irq.clone(), RecordingIrq::new());
    d.attach(0, false, Box::new(MemBackend::zeroed(8 * 512)), AtaDiskConfig::default()).unwrap();
    d.write(at(0x1F7), &[0xE3]); // IDLE: completes with INTRQ
    assert!(irq.level());
    let st = d.state();
    let irq2 = RecordingIrq::new();
    let mut e = PiixIde::new(irq2.clone(), RecordingIrq::new());
    e.attach(0, false, Box::new(MemBackend::zeroed(8 * 512)), AtaDiskConfig::default()).unwrap();
    e.restore(st);
    assert!(irq2.level());
}

#[test]
fn test_persist_piix4_pm_restore_reraises_sci() {
    let mut d = Piix4Pm::new(RecordingIrq::new());
    d.write_config(0x40, &0xB001u32.to_le_bytes());
    d.write_config(0x80, &[1]);
    d.write(at(0xB002), &0x0100u16.to_le_bytes());
    d.press_power_button();
    let sci = RecordingIrq::new();
    let e = Piix4Pm::from_state(sci.clone(), d.state());
    assert!(sci.level() && e.sci_level());
}
