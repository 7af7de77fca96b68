//! Every chip through the one `base::Persist` trait and serialized bytes (crosvm's
//! `suspendable_tests!` idea, asserting): a state after guest activity differs from the power-on
//! state, and save → JSON bytes → restore → save gives the same bytes.

use base::{Persist, VirtualInstant};
use devices::{
    Access, AtaDiskConfig, FwCfgBuilder, I440fxHost, I8254Pit, I8259Pic, IoApic, LocalApic, Mc146818Rtc, MemBackend,
    PciBus, PciConfigIo, PciFunction, Piix3Isa, Piix4Pm, PiixIde, PioDevice, Port92, RecordingIrq, Uart16550,
    VirtioBlk, I8042,
};

fn bytes<T: Persist>(d: &T) -> Vec<u8> {
    serde_json::to_vec(&d.save()).unwrap()
}

/// Checks the laws for `dev` (already mutated) against `fresh`, restoring with `args`.
fn check<T: Persist>(name: &str, fresh: &T, dev: &T, args: T::ConstructorArgs)
where
    T::Error: std::fmt::Debug,
{
    let b = bytes(dev);
    assert_ne!(bytes(fresh), b, "{name}: the activity must show in the state");
    let state: T::State = serde_json::from_slice(&b).unwrap();
    let r = T::restore(args, &state).unwrap();
    assert_eq!(bytes(&r), b, "{name}: save -> bytes -> restore -> save changed the state");
}

fn at(port: u16) -> Access {
    Access { offset: 0, addr: u64::from(port), now: VirtualInstant(5_000) }
}

#[test]
fn test_persist_trait_every_chip_roundtrips_through_bytes() {
    let mut pic = I8259Pic::new();
    for (p, v) in [(0x20u16, 0x11u8), (0x21, 0x08), (0x21, 0x04), (0x21, 0x01), (0x21, 0xFE)] {
        pic.write(Access { offset: u64::from(p & 1), addr: u64::from(p), now: VirtualInstant(0) }, &[v]);
    }
    check("pic", &I8259Pic::new(), &pic, ());

    let mut pit = I8254Pit::new(RecordingIrq::new());
    pit.write_port(0x43, 0x34, VirtualInstant(0));
    pit.write_port(0x40, 0xA9, VirtualInstant(0));
    pit.write_port(0x40, 0x04, VirtualInstant(0));
    check("pit", &I8254Pit::new(RecordingIrq::new()), &pit, RecordingIrq::new());

    let mut rtc = Mc146818Rtc::new(RecordingIrq::new(), 0);
    rtc.write(Access { offset: 0, addr: 0x70, now: VirtualInstant(0) }, &[0x0B]);
    rtc.write(Access { offset: 1, addr: 0x71, now: VirtualInstant(0) }, &[0x42]);
    check("rtc", &Mc146818Rtc::new(RecordingIrq::new(), 0), &rtc, RecordingIrq::new());

    let mut kbc = I8042::new(RecordingIrq::new(), RecordingIrq::new());
    kbc.write(Access { offset: 0, addr: 0x64, now: VirtualInstant(0) }, &[0x20]);
    check(
        "i8042",
        &I8042::new(RecordingIrq::new(), RecordingIrq::new()),
        &kbc,
        (RecordingIrq::new(), RecordingIrq::new()),
    );

    let mut p92 = Port92::new();
    p92.write(at(0x92), &[0x02]);
    check("port92", &Port92::new(), &p92, ());

    let mut uart = Uart16550::new(RecordingIrq::new(), Vec::new());
    uart.write(Access { offset: 3, addr: 0x3FB, now: VirtualInstant(0) }, &[0x83]);
    uart.write(Access { offset: 1, addr: 0x3F9, now: VirtualInstant(0) }, &[0x0F]);
    check("uart", &Uart16550::new(RecordingIrq::new(), Vec::new()), &uart, (RecordingIrq::new(), Vec::new()));

    let mut lapic = LocalApic::new(0, true);
    lapic.write_register(devices::lapic::APIC_SPIV, devices::lapic::APIC_SPIV_APIC_ENABLED | 0xFF, VirtualInstant(0));
    check("lapic", &LocalApic::new(0, true), &lapic, ());

    let mut ioapic = IoApic::new(1);
    ioapic.write_indirect(0x10, 0x31);
    check("ioapic", &IoApic::new(1), &ioapic, ());

    let mut host = I440fxHost::new();
    host.write_config(0x59, &[0x30]);
    check("i440fx", &I440fxHost::new(), &host, ());

    let mut isa = Piix3Isa::new();
    isa.write_config(0x60, &[10]);
    check("piix3", &Piix3Isa::new(), &isa, ());

    let mut pm = Piix4Pm::new(RecordingIrq::new());
    pm.write_config(0x80, &[1]);
    check("piix4_pm", &Piix4Pm::new(RecordingIrq::new()), &pm, RecordingIrq::new());

    let mut io = PciConfigIo::new(PciBus::new());
    io.write(Access::at(0, VirtualInstant(0)), &0x8000_0810u32.to_le_bytes());
    check("pci_config_io", &PciConfigIo::new(PciBus::new()), &io, PciBus::new());

    let ide = || {
        let mut d = PiixIde::new(RecordingIrq::new(), RecordingIrq::new());
        d.attach(0, false, Box::new(MemBackend::zeroed(64 * 512)), AtaDiskConfig::default()).unwrap();
        d
    };
    let mut d = ide();
    d.write(at(0x1F2), &[4]);
    d.write(at(0x1F6), &[0xE0]);
    check("piix_ide", &ide(), &d, ide());

    let virtio = || VirtioBlk::new(RecordingIrq::new(), Box::new(MemBackend::zeroed(64 * 512)));
    let mut v = virtio();
    v.write_config(0x04, &[0x01]); // PCI command: I/O space
    check("virtio_blk", &virtio(), &v, (RecordingIrq::new(), Box::new(MemBackend::zeroed(64 * 512))));

    let fw = || FwCfgBuilder::new().build().unwrap();
    let mut f = fw();
    f.write(Access::at(0, VirtualInstant(0)), &0u16.to_le_bytes());
    f.read(Access::at(1, VirtualInstant(0)), &mut [0]);
    check("fw_cfg", &fw(), &f, fw());
}
