//! The PIIX4 power-management function (82371AB function 3, 8086:7113 at 00:01.3): its PCI
//! configuration space, the ACPI PM I/O block with the PM timer, the GPE0 block and the APM
//! control ports, as QEMU's `pc` machine presents them to SeaBIOS and Linux.
//!
//! I/O decoding, by absolute port (`Access::addr`), all mapped to this one device:
//! - the 64-byte PM block at PMBA (config 0x40, enabled by PMREGMISC bit 0; SeaBIOS puts it at
//!   0xB000, see [`Piix4Pm::pm_io_base`]): PM1a_STS (+0, write-one-to-clear), PM1a_EN (+2),
//!   PM1a_CNT (+4, SCI_EN, SLP_TYP, SLP_EN) and the 24-bit PM timer (+8) at 3.579545 MHz of
//!   virtual time;
//! - GPE0 at 0xAFE0 (2 bytes status, 2 bytes enable), the address SeaBIOS's FADT gives;
//! - APMC 0xB2 and APMS 0xB3. There is no SMM: an APMC write of 0xF1/0xF0 (the FADT's
//!   ACPI_ENABLE/ACPI_DISABLE) sets/clears SCI_EN directly, as QEMU does.
//!
//! The SCI (ISA IRQ 9) is high while any enabled PM1 or GPE0 status bit is set. Writing SLP_EN
//! records a sleep request with its SLP_TYP ([`Piix4Pm::take_sleep_request`]; type 0 is S5,
//! soft-off, in SeaBIOS's and QEMU's ACPI tables).
//!
//! DEVACTB (config 0x58) powers up with APMC_EN set: SeaBIOS skips its SMM initialisation
//! when it reads that bit, which it must because the CPU has no SMM (otherwise it raises an
//! SMI through APMC and spins until an SMM handler writes APMS). This is a deliberate
//! deviation from the datasheet's reset value of 0.

use crate::bus::{Access, IrqLine, PioDevice, Timed};
use crate::pci::{
    PciConfig, PciFunction, PCI_DEVICE_ID_INTEL_82371AB_3, PCI_INTERRUPT_PIN, PCI_SUBDEVICE_ID_QEMU,
    PCI_SUBVENDOR_ID_REDHAT_QUMRANET, PCI_VENDOR_ID_INTEL,
};
use base::{VirtualInstant, VIRTUAL_INSNS_PER_SECOND};
use serde::{Deserialize, Serialize};

/// PMBA: PM I/O base (bits 15:6, bit 0 hardwired to 1).
pub const PIIX4_PMBA: usize = 0x40;
/// DEVACTB: device activity B (bit 25 APMC_EN).
pub const PIIX4_DEVACTB: usize = 0x58;
/// DEVACTB: SMI on APMC writes enabled.
pub const PIIX4_DEVACTB_APMC_EN: u32 = 1 << 25;
/// PMREGMISC: bit 0 enables the PM I/O space.
pub const PIIX4_PMREGMISC: usize = 0x80;
/// SMBBA: SMBus I/O base.
pub const PIIX4_SMBBA: usize = 0x90;
/// SMBHSTCFG: SMBus host configuration.
pub const PIIX4_SMBHSTCFG: usize = 0xD2;

/// Size of the PM I/O block.
pub const PM_IO_SIZE: u16 = 0x40;
/// GPE0 block port (QEMU/SeaBIOS).
pub const PIIX4_GPE0_PORT: u16 = 0xAFE0;
/// GPE0 block length.
pub const PIIX4_GPE0_LEN: u16 = 4;
/// APM control port (the FADT's SMI_CMD).
pub const APM_CNT_PORT: u16 = 0xB2;
/// APM status port.
pub const APM_STS_PORT: u16 = 0xB3;
/// FADT ACPI_ENABLE value.
pub const ACPI_ENABLE: u8 = 0xF1;
/// FADT ACPI_DISABLE value.
pub const ACPI_DISABLE: u8 = 0xF0;
/// ISA IRQ of the SCI.
pub const PIIX4_SCI_IRQ: u8 = 9;

/// PM1 register offsets in the PM block.
pub const PM1_STS: u64 = 0x00;
/// PM1 enable.
pub const PM1_EN: u64 = 0x02;
/// PM1 control.
pub const PM1_CNT: u64 = 0x04;
/// PM timer.
pub const PM_TMR: u64 = 0x08;

/// PM1_STS/EN: timer carry (bit 23 of the PM timer changed).
pub const ACPI_TMR: u16 = 1 << 0;
/// PM1_STS: bus master activity.
pub const ACPI_BM: u16 = 1 << 4;
/// PM1_STS/EN: global (BIOS release).
pub const ACPI_GBL: u16 = 1 << 5;
/// PM1_STS/EN: power button.
pub const ACPI_PWRBTN: u16 = 1 << 8;
/// PM1_STS/EN: RTC alarm.
pub const ACPI_RTC: u16 = 1 << 10;
/// PM1_STS: wake.
pub const ACPI_WAK: u16 = 1 << 15;
/// PM1_CNT: SCI enable (ACPI mode).
pub const ACPI_SCI_EN: u16 = 1 << 0;
/// PM1_CNT: sleep type field.
pub const ACPI_SLP_TYP_SHIFT: u16 = 10;
/// PM1_CNT: sleep enable (write-only).
pub const ACPI_SLP_EN: u16 = 1 << 13;
/// PM1_STS write-one-to-clear bits.
const PM1_STS_W1C: u16 = ACPI_TMR | ACPI_BM | ACPI_GBL | ACPI_PWRBTN | ACPI_RTC | ACPI_WAK;
/// PM1_EN writable bits.
const PM1_EN_MASK: u16 = ACPI_TMR | ACPI_GBL | ACPI_PWRBTN | ACPI_RTC;
/// PM1_CNT stored bits (SCI_EN, BM_RLD, GBL_RLS, SLP_TYP).
const PM1_CNT_MASK: u16 = 0x1C07;

/// The PM timer frequency.
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// The PM timer carry bit.
const PM_TMR_CARRY_SHIFT: u32 = 23;

/// Guest-visible state of the PM function, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piix4PmState {
    /// PCI configuration space.
    pub config: PciConfig,
    /// PM1a status.
    pub pm1_sts: u16,
    /// PM1a enable.
    pub pm1_en: u16,
    /// PM1a control.
    pub pm1_cnt: u16,
    /// PM timer carry period (timer >> 23) when TMR_STS was last cleared.
    pub tmr_period: u64,
    /// GPE0 status.
    pub gpe_sts: u16,
    /// GPE0 enable.
    pub gpe_en: u16,
    /// APM control.
    pub apmc: u8,
    /// APM status.
    pub apms: u8,
    /// Sleep requested (SLP_TYP) and not yet taken.
    pub sleep_request: Option<u8>,
}

/// The PIIX4 PM function driving the SCI line `I`.
#[derive(Debug)]
pub struct Piix4Pm<I: IrqLine> {
    s: Piix4PmState,
    sci: I,
    sci_level: bool,
}

/// PM timer ticks at `now`.
fn pm_ticks(now: VirtualInstant) -> u64 {
    (u128::from(now.0) * u128::from(PM_TIMER_HZ) / u128::from(VIRTUAL_INSNS_PER_SECOND)) as u64
}

impl<I: IrqLine> Piix4Pm<I> {
    /// The function at power-on (interrupt pin INTA#, revision 3 as on QEMU's PC, PM I/O
    /// disabled, DEVACTB.APMC_EN set: see the module documentation).
    pub fn new(sci: I) -> Self {
        let mut c = PciConfig::new(PCI_VENDOR_ID_INTEL, PCI_DEVICE_ID_INTEL_82371AB_3, 0x03, 0x06_80_00, 0);
        c.set_subsystem(PCI_SUBVENDOR_ID_REDHAT_QUMRANET, PCI_SUBDEVICE_ID_QEMU);
        c.bytes[PCI_INTERRUPT_PIN] = 1;
        c.set_u32(PIIX4_PMBA, 1);
        c.writable[PIIX4_PMBA] = 0xC0;
        c.writable[PIIX4_PMBA + 1] = 0xFF;
        c.set_writable_range(PIIX4_DEVACTB - 4, PIIX4_DEVACTB + 4); // DEVACTA, DEVACTB
        c.set_u32(PIIX4_DEVACTB, PIIX4_DEVACTB_APMC_EN);
        c.set_writable_range(0x5C, 0x80); // DEVRESA-J
        c.writable[PIIX4_PMREGMISC] = 0x01;
        c.set_u32(PIIX4_SMBBA, 1);
        c.writable[PIIX4_SMBBA] = 0xF0;
        c.writable[PIIX4_SMBBA + 1] = 0xFF;
        c.writable[PIIX4_SMBHSTCFG] = 0x0F;
        let s = Piix4PmState {
            config: c,
            pm1_sts: 0,
            pm1_en: 0,
            pm1_cnt: 0,
            tmr_period: 0,
            gpe_sts: 0,
            gpe_en: 0,
            apmc: 0,
            apms: 0,
            sleep_request: None,
        };
        Piix4Pm { s, sci, sci_level: false }
    }

    /// Rebuilds from a snapshot, re-driving the SCI.
    pub fn from_state(sci: I, mut state: Piix4PmState) -> Self {
        state.config = PciConfig::from_state(state.config);
        let mut pm = Piix4Pm { s: state, sci, sci_level: false };
        pm.update_sci();
        pm
    }

    /// A snapshot.
    pub fn state(&self) -> Piix4PmState {
        self.s.clone()
    }

    /// The PM I/O base if PMREGMISC enables it (map `PM_IO_SIZE` bytes there).
    pub fn pm_io_base(&self) -> Option<u16> {
        let c = &self.s.config;
        (c.bytes[PIIX4_PMREGMISC] & 1 != 0).then(|| (c.u32_at(PIIX4_PMBA) & 0xFFC0) as u16)
    }

    /// Programs PMBA and enables the PM I/O space as firmware does (for a direct kernel boot,
    /// where no firmware runs). `base` is rounded down to 64 bytes.
    pub fn enable_pm_io(&mut self, base: u16) {
        let c = &mut self.s.config;
        c.set_u32(PIIX4_PMBA, u32::from(base & 0xFFC0) | 1);
        c.bytes[PIIX4_PMREGMISC] |= 1;
    }

    /// Whether an access of `len` bytes at absolute port `port` reaches this function (the PM
    /// block where PMBA puts it, GPE0, APMC/APMS).
    pub fn claims(&self, port: u16, len: usize) -> bool {
        self.decode(u64::from(port), len).is_some()
    }

    /// Whether the OS switched to ACPI mode (SCI_EN).
    pub fn acpi_enabled(&self) -> bool {
        self.s.pm1_cnt & ACPI_SCI_EN != 0
    }

    /// Returns and clears a sleep request (the SLP_TYP written with SLP_EN; 0 is soft-off).
    pub fn take_sleep_request(&mut self) -> Option<u8> {
        self.s.sleep_request.take()
    }

    /// A press of the power button (PWRBTN_STS; the OS shuts down if it enabled the event).
    pub fn press_power_button(&mut self) {
        self.s.pm1_sts |= ACPI_PWRBTN;
        self.update_sci();
    }

    /// Sets GPE0 status bits (hot-plug style events).
    pub fn raise_gpe(&mut self, bits: u16) {
        self.s.gpe_sts |= bits;
        self.update_sci();
    }

    /// The PM timer value at `now` (24 bits).
    pub fn pm_timer(&self, now: VirtualInstant) -> u32 {
        (pm_ticks(now) & 0xFF_FFFF) as u32
    }

    fn refresh(&mut self, now: VirtualInstant) {
        if pm_ticks(now) >> PM_TMR_CARRY_SHIFT != self.s.tmr_period {
            self.s.pm1_sts |= ACPI_TMR;
        }
    }

    fn update_sci(&mut self) {
        let level = self.s.pm1_sts & self.s.pm1_en & PM1_EN_MASK != 0 || self.s.gpe_sts & self.s.gpe_en != 0;
        if level != self.sci_level {
            self.sci_level = level;
            self.sci.set_level(level);
        }
    }

    /// The SCI level.
    pub fn sci_level(&self) -> bool {
        self.sci_level
    }

    fn pm_read_byte(&self, off: u64, now: VirtualInstant) -> u8 {
        let tmr = self.pm_timer(now);
        match off {
            0 | 1 => (self.s.pm1_sts >> (8 * off)) as u8,
            2 | 3 => (self.s.pm1_en >> (8 * (off - 2))) as u8,
            4 | 5 => (self.s.pm1_cnt >> (8 * (off - 4))) as u8,
            8..=11 => (tmr >> (8 * (off - 8))) as u8,
            _ => 0,
        }
    }

    fn pm_write_byte(&mut self, off: u64, v: u8, now: VirtualInstant) {
        let shift = 8 * (off & 1);
        let v16 = u16::from(v) << shift;
        let lane = 0xFFu16 << shift;
        match off {
            0 | 1 => {
                let clear = v16 & PM1_STS_W1C;
                if clear & ACPI_TMR != 0 {
                    self.s.tmr_period = pm_ticks(now) >> PM_TMR_CARRY_SHIFT;
                }
                self.s.pm1_sts &= !clear;
            }
            2 | 3 => self.s.pm1_en = (self.s.pm1_en & !lane) | (v16 & lane & PM1_EN_MASK),
            4 | 5 => {
                self.s.pm1_cnt = (self.s.pm1_cnt & !lane) | (v16 & lane & PM1_CNT_MASK);
                if v16 & ACPI_SLP_EN != 0 {
                    let typ = ((self.s.pm1_cnt >> ACPI_SLP_TYP_SHIFT) & 7) as u8;
                    log::debug!("piix4_pm: sleep request, SLP_TYP {typ}");
                    self.s.sleep_request = Some(typ);
                }
            }
            _ => log::debug!("piix4_pm: write {v:#x} to PM block offset {off:#x} dropped"),
        }
    }

    fn gpe_read_byte(&self, off: u64) -> u8 {
        match off {
            0 | 1 => (self.s.gpe_sts >> (8 * off)) as u8,
            _ => (self.s.gpe_en >> (8 * (off - 2))) as u8,
        }
    }

    fn gpe_write_byte(&mut self, off: u64, v: u8) {
        let shift = 8 * (off & 1);
        let v16 = u16::from(v) << shift;
        match off {
            0 | 1 => self.s.gpe_sts &= !v16,
            _ => self.s.gpe_en = (self.s.gpe_en & !(0xFF << shift)) | v16,
        }
    }

    /// Which block an absolute port belongs to, and the offset in it.
    fn decode(&self, port: u64, len: usize) -> Option<(Block, u64)> {
        let p = u16::try_from(port).ok()?;
        let end = u32::from(p) + len as u32;
        if let Some(base) = self.pm_io_base() {
            if p >= base && end <= u32::from(base) + u32::from(PM_IO_SIZE) {
                return Some((Block::Pm, u64::from(p - base)));
            }
        }
        if p >= PIIX4_GPE0_PORT && end <= u32::from(PIIX4_GPE0_PORT + PIIX4_GPE0_LEN) {
            return Some((Block::Gpe, u64::from(p - PIIX4_GPE0_PORT)));
        }
        match (p, len) {
            (APM_CNT_PORT, 1) => Some((Block::Apmc, 0)),
            (APM_STS_PORT, 1) => Some((Block::Apms, 0)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Pm,
    Gpe,
    Apmc,
    Apms,
}

impl<I: IrqLine> PioDevice for Piix4Pm<I> {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        let Some((block, off)) = self.decode(access.addr, data.len()).filter(|_| matches!(data.len(), 1 | 2 | 4))
        else {
            log::debug!("piix4_pm: {}-byte read at {:#x}", data.len(), access.addr);
            data.fill(0xFF);
            return;
        };
        self.refresh(access.now);
        for (i, b) in data.iter_mut().enumerate() {
            *b = match block {
                Block::Pm => self.pm_read_byte(off + i as u64, access.now),
                Block::Gpe => self.gpe_read_byte(off + i as u64),
                Block::Apmc => self.s.apmc,
                Block::Apms => self.s.apms,
            };
        }
        self.update_sci();
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        let Some((block, off)) = self.decode(access.addr, data.len()).filter(|_| matches!(data.len(), 1 | 2 | 4))
        else {
            log::debug!("piix4_pm: {}-byte write at {:#x} dropped", data.len(), access.addr);
            return;
        };
        self.refresh(access.now);
        for (i, &v) in data.iter().enumerate() {
            match block {
                Block::Pm => self.pm_write_byte(off + i as u64, v, access.now),
                Block::Gpe => self.gpe_write_byte(off + i as u64, v),
                Block::Apmc => {
                    self.s.apmc = v;
                    match v {
                        ACPI_ENABLE => self.s.pm1_cnt |= ACPI_SCI_EN,
                        ACPI_DISABLE => self.s.pm1_cnt &= !ACPI_SCI_EN,
                        _ => log::debug!("piix4_pm: APMC {v:#x} (no SMM)"),
                    }
                }
                Block::Apms => self.s.apms = v,
            }
        }
        self.update_sci();
    }
}

impl<I: IrqLine> PciFunction for Piix4Pm<I> {
    fn read_config(&mut self, offset: u8, data: &mut [u8]) {
        self.s.config.read(usize::from(offset), data);
    }

    fn write_config(&mut self, offset: u8, data: &[u8]) {
        self.s.config.write(usize::from(offset), data);
    }
}

impl<I: IrqLine> Timed for Piix4Pm<I> {
    fn next_deadline(&self) -> Option<VirtualInstant> {
        if self.s.pm1_en & ACPI_TMR == 0 || self.s.pm1_sts & ACPI_TMR != 0 {
            return None;
        }
        // First instant whose tick count reaches the next carry period.
        let ticks = u128::from(self.s.tmr_period + 1) << PM_TMR_CARRY_SHIFT;
        let ns = (ticks * u128::from(VIRTUAL_INSNS_PER_SECOND)).div_ceil(u128::from(PM_TIMER_HZ));
        Some(VirtualInstant(u64::try_from(ns).unwrap_or(u64::MAX)))
    }

    fn advance_to(&mut self, now: VirtualInstant) {
        self.refresh(now);
        self.update_sci();
    }
}

impl<I: IrqLine> base::Persist for Piix4Pm<I> {
    type State = Piix4PmState;
    /// The SCI line.
    type ConstructorArgs = I;
    type Error = std::convert::Infallible;
    fn save(&self) -> Piix4PmState {
        self.state()
    }
    fn restore(sci: I, state: &Piix4PmState) -> Result<Self, Self::Error> {
        Ok(Self::from_state(sci, state.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::RecordingIrq;

    fn port(p: u16, ns: u64) -> Access {
        Access { offset: 0, addr: u64::from(p), now: VirtualInstant(ns) }
    }

    /// The PM block at 0xB000, as SeaBIOS programs it.
    fn pm() -> (Piix4Pm<RecordingIrq>, RecordingIrq) {
        let irq = RecordingIrq::new();
        let mut pm = Piix4Pm::new(irq.clone());
        pm.write_config(0x40, &0xB001u32.to_le_bytes());
        pm.write_config(0x80, &[1]);
        (pm, irq)
    }

    fn inw(pm: &mut Piix4Pm<RecordingIrq>, p: u16, ns: u64) -> u16 {
        let mut d = [0; 2];
        pm.read(port(p, ns), &mut d);
        u16::from_le_bytes(d)
    }

    fn inl(pm: &mut Piix4Pm<RecordingIrq>, p: u16, ns: u64) -> u32 {
        let mut d = [0; 4];
        pm.read(port(p, ns), &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn test_piix4_pm_config() {
        let mut pm = Piix4Pm::new(RecordingIrq::new());
        let mut d = [0u8; 4];
        pm.read_config(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x7113_8086);
        pm.read_config(8, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0680_0003, "bridge/other, revision 3");
        assert_eq!(pm.pm_io_base(), None);
        pm.read_config(0x58, &mut d);
        assert_ne!(u32::from_le_bytes(d) & PIIX4_DEVACTB_APMC_EN, 0, "SeaBIOS skips SMM setup");
        pm.write_config(0x40, &0xB001u32.to_le_bytes());
        pm.write_config(0x80, &[1]);
        assert_eq!(pm.pm_io_base(), Some(0xB000));
        pm.read_config(0x40, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xB001);
        pm.read_config(0x3C, &mut d);
        assert_eq!(d[1], 1, "INTA#");
    }

    #[test]
    fn test_piix4_pm_timer_runs_at_3_579545_mhz() {
        let (mut pm, _) = pm();
        assert_eq!(inl(&mut pm, 0xB008, 0), 0);
        assert_eq!(inl(&mut pm, 0xB008, 1_000_000_000), 3_579_545);
        assert_eq!(inl(&mut pm, 0xB008, 1_000_000), 3579);
        // 24 bits wide: wraps after 2^24 ticks (about 4.69 s).
        let wrap_ns = (1u64 << 24) * 1_000_000_000 / PM_TIMER_HZ + 1;
        assert!(inl(&mut pm, 0xB008, wrap_ns) < 10);
        assert_eq!(inl(&mut pm, 0xB008, wrap_ns - 2) >> 24, 0);
        // Unmapped until PMREGMISC enables it.
        let mut off = Piix4Pm::new(RecordingIrq::new());
        assert_eq!(inl(&mut off, 0xB008, 1_000_000_000), 0xFFFF_FFFF);
    }

    #[test]
    fn test_piix4_pm_timer_carry_sci() {
        let (mut pm, irq) = pm();
        assert_eq!(pm.next_deadline(), None, "TMR_EN clear");
        pm.write(port(0xB002, 0), &ACPI_TMR.to_le_bytes());
        let carry = pm.next_deadline().unwrap();
        // Bit 23 changes at 2^23 ticks = 2.3435 s.
        assert_eq!(carry.0, ((1u128 << 23) * 1_000_000_000).div_ceil(u128::from(PM_TIMER_HZ)) as u64);
        assert_eq!(pm.pm_timer(carry) >> 23, 1);
        assert_eq!(pm.pm_timer(VirtualInstant(carry.0 - 1)) >> 23, 0);
        pm.advance_to(VirtualInstant(carry.0 - 1));
        assert!(!irq.level());
        pm.advance_to(carry);
        assert!(irq.level(), "SCI on timer carry");
        assert_eq!(inw(&mut pm, 0xB000, carry.0) & ACPI_TMR, ACPI_TMR);
        assert_eq!(pm.next_deadline(), None, "status pending");
        pm.write(port(0xB000, carry.0), &ACPI_TMR.to_le_bytes());
        assert!(!irq.level());
        assert_eq!(pm.next_deadline().unwrap().0, carry.0 * 2 - 1, "next carry at 2^24 ticks");
    }

    #[test]
    fn test_piix4_pm_acpi_enable_and_sleep() {
        let (mut pm, _) = pm();
        assert!(!pm.acpi_enabled());
        pm.write(port(APM_CNT_PORT, 0), &[ACPI_ENABLE]);
        assert!(pm.acpi_enabled());
        assert_eq!(inw(&mut pm, 0xB004, 0) & ACPI_SCI_EN, ACPI_SCI_EN);
        pm.write(port(APM_STS_PORT, 0), &[0x5A]);
        let mut b = [0];
        pm.read(port(APM_STS_PORT, 0), &mut b);
        assert_eq!(b, [0x5A]);
        // S5: SLP_TYP 0 with SLP_EN; SLP_EN reads back as zero.
        pm.write(port(0xB004, 0), &(ACPI_SCI_EN | ACPI_SLP_EN).to_le_bytes());
        assert_eq!(pm.take_sleep_request(), Some(0));
        assert_eq!(pm.take_sleep_request(), None);
        assert_eq!(inw(&mut pm, 0xB004, 0), ACPI_SCI_EN);
        pm.write(port(0xB004, 0), &(ACPI_SCI_EN | 1 << 10 | ACPI_SLP_EN).to_le_bytes());
        assert_eq!(pm.take_sleep_request(), Some(1));
        pm.write(port(APM_CNT_PORT, 0), &[ACPI_DISABLE]);
        assert!(!pm.acpi_enabled());
    }

    #[test]
    fn test_piix4_pm_power_button_and_gpe() {
        let (mut pm, irq) = pm();
        pm.press_power_button();
        assert!(!irq.level(), "event not enabled");
        pm.write(port(0xB002, 0), &ACPI_PWRBTN.to_le_bytes());
        assert!(irq.level());
        pm.write(port(0xB000, 0), &ACPI_PWRBTN.to_le_bytes());
        assert!(!irq.level(), "write one to clear");
        assert_eq!(inw(&mut pm, 0xB000, 0), 0);
        // GPE0: status write-one-to-clear, enable plain.
        pm.write(port(0xAFE2, 0), &[0x02, 0]);
        pm.raise_gpe(0x02);
        assert!(irq.level());
        assert_eq!(inl(&mut pm, 0xAFE0, 0), 0x0002_0002);
        pm.write(port(0xAFE0, 0), &[0xFF, 0xFF]);
        assert!(!irq.level());
    }

    #[test]
    fn test_piix4_pm_state_and_random_accesses() {
        let (mut pm, _) = pm();
        pm.write(port(0xB002, 0), &0x0121u16.to_le_bytes());
        let st = pm.state();
        let copy = Piix4Pm::from_state(RecordingIrq::new(), st.clone());
        assert_eq!(copy.state(), st);
        let ports: Vec<u16> = (0xAFDE..0xAFE6).chain(0xAFFF..0xB044).chain([0xB2, 0xB3, 0xB4]).collect();
        let mut x = 0x5DEE_CE66_D1CE_4E5Bu64;
        for i in 0..50_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let p = ports[(x % ports.len() as u64) as usize];
            let width = [1usize, 2, 4, 3][(x >> 9) as usize % 4];
            let mut buf = (x >> 16).to_le_bytes();
            if x & (1 << 62) != 0 {
                pm.write(port(p, i * 1000), &buf[..width]);
            } else {
                pm.read(port(p, i * 1000), &mut buf[..width]);
            }
            if x & (1 << 33) != 0 {
                pm.write_config((x >> 40) as u8 & 0xFC, &buf[..4]);
            }
            pm.advance_to(VirtualInstant(i * 1000));
        }
    }
}
