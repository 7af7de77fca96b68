//! The Motorola MC146818 real-time clock and its 128 bytes of CMOS RAM.
//!
//! Port 0x70 selects the register (bit 7 is the PC's NMI-disable bit, kept separately) and
//! port 0x71 reads or writes it. [`Mc146818Rtc`] decodes the absolute port (`Access::addr`).
//!
//! Host time is an input: the clock is set with [`Mc146818Rtc::new`] or
//! [`Mc146818Rtc::set_time`] and then advances with virtual time only, so execution stays
//! deterministic. Implemented: time/date registers in BCD or binary and 12- or 24-hour format
//! per register B, the IBM century byte (0x32), the SET bit, the update-in-progress bit for the
//! 244 µs before each update, the periodic interrupt at the register A rate, alarm (with
//! don't-care bytes) and update-ended interrupts, IRQ8 held until register C is read.
//! Not modelled: daylight saving (DSE), square-wave output, the divider chain's 500 ms restart.

use crate::bus::{Access, IrqLine, PioDevice, Timed};
use base::{VirtualInstant, VIRTUAL_INSNS_PER_SECOND};
use serde::{Deserialize, Serialize};

/// Index port (bit 7: NMI disable).
pub const RTC_INDEX_PORT: u16 = 0x70;
/// Data port.
pub const RTC_DATA_PORT: u16 = 0x71;

/// Seconds.
pub const RTC_SECONDS: u8 = 0x00;
/// Seconds alarm.
pub const RTC_SECONDS_ALARM: u8 = 0x01;
/// Minutes.
pub const RTC_MINUTES: u8 = 0x02;
/// Minutes alarm.
pub const RTC_MINUTES_ALARM: u8 = 0x03;
/// Hours.
pub const RTC_HOURS: u8 = 0x04;
/// Hours alarm.
pub const RTC_HOURS_ALARM: u8 = 0x05;
/// Day of week (1 = Sunday).
pub const RTC_DAY_OF_WEEK: u8 = 0x06;
/// Day of month.
pub const RTC_DAY_OF_MONTH: u8 = 0x07;
/// Month.
pub const RTC_MONTH: u8 = 0x08;
/// Year (two digits).
pub const RTC_YEAR: u8 = 0x09;
/// Register A.
pub const RTC_REG_A: u8 = 0x0A;
/// Register B.
pub const RTC_REG_B: u8 = 0x0B;
/// Register C.
pub const RTC_REG_C: u8 = 0x0C;
/// Register D.
pub const RTC_REG_D: u8 = 0x0D;
/// IBM PC century byte.
pub const RTC_CENTURY: u8 = 0x32;

/// Register A: update in progress.
pub const REG_A_UIP: u8 = 0x80;
/// Register A: divider bits.
pub const REG_A_DV: u8 = 0x70;
/// Register A: rate select bits.
pub const REG_A_RS: u8 = 0x0F;
/// Register B: SET (stop updates so the time can be written).
pub const REG_B_SET: u8 = 0x80;
/// Register B: periodic interrupt enable.
pub const REG_B_PIE: u8 = 0x40;
/// Register B: alarm interrupt enable.
pub const REG_B_AIE: u8 = 0x20;
/// Register B: update-ended interrupt enable.
pub const REG_B_UIE: u8 = 0x10;
/// Register B: square wave enable.
pub const REG_B_SQWE: u8 = 0x08;
/// Register B: data mode binary (else BCD).
pub const REG_B_DM_BINARY: u8 = 0x04;
/// Register B: 24-hour mode (else 12-hour).
pub const REG_B_24H: u8 = 0x02;
/// Register B: daylight saving enable.
pub const REG_B_DSE: u8 = 0x01;
/// Register C: interrupt request flag.
pub const REG_C_IRQF: u8 = 0x80;
/// Register C: periodic interrupt flag.
pub const REG_C_PF: u8 = 0x40;
/// Register C: alarm flag.
pub const REG_C_AF: u8 = 0x20;
/// Register C: update-ended flag.
pub const REG_C_UF: u8 = 0x10;
/// Register D: valid RAM and time.
pub const REG_D_VRT: u8 = 0x80;

/// Hours byte in 12-hour mode: PM.
const HOUR_PM: u8 = 0x80;
/// Alarm bytes with both top bits set match any value.
const ALARM_DONT_CARE: u8 = 0xC0;
/// The update-in-progress window before each update (244 µs).
pub const UIP_HOLD_NS: u64 = 244_141;
/// The time base: 32.768 kHz.
const RTC_BASE_HZ: u64 = 32_768;
const NS: u64 = VIRTUAL_INSNS_PER_SECOND;

/// A calendar date and time of day (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    /// Full year, e.g. 1999.
    pub year: i64,
    /// 1–12.
    pub month: u8,
    /// 1–31.
    pub day: u8,
    /// 0–23.
    pub hour: u8,
    /// 0–59.
    pub minute: u8,
    /// 0–59.
    pub second: u8,
    /// 0 = Sunday … 6 = Saturday.
    pub weekday: u8,
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: u8, d: u8) -> i64 {
    let (m, d) = (i64::from(m), i64::from(d));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl DateTime {
    /// The date and time of a Unix timestamp.
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let tod = secs.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let small = |v: i64| u8::try_from(v).unwrap_or(0);
        DateTime {
            year,
            month: small(month),
            day: small(day),
            hour: small(tod / 3600),
            minute: small(tod / 60 % 60),
            second: small(tod % 60),
            weekday: small((days + 4).rem_euclid(7)),
        }
    }

    /// The Unix timestamp (the weekday is ignored).
    pub fn to_unix(&self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> u8 {
    (v >> 4) * 10 + (v & 0xF)
}

/// The state of the RTC, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mc146818RtcState {
    /// The 128 bytes of CMOS (time bytes are refreshed from the clock on read).
    pub cmos: Vec<u8>,
    /// Selected register.
    pub index: u8,
    /// NMI disabled (bit 7 of the last index write).
    pub nmi_disabled: bool,
    /// Unix time at `base_ns`.
    pub base_unix: i64,
    /// Virtual instant (ns) at which the clock read `base_unix`, at a second boundary.
    pub base_ns: u64,
    /// Interrupt events have been processed up to this instant.
    pub event_ns: u64,
}

/// The MC146818 RTC driving `I` (IRQ8).
#[derive(Debug)]
pub struct Mc146818Rtc<I: IrqLine> {
    s: Mc146818RtcState,
    irq: I,
    irq_level: bool,
}

impl<I: IrqLine> Mc146818Rtc<I> {
    /// An RTC reading `unix_seconds` at virtual time 0, with register A = 0x26 (32.768 kHz,
    /// 1024 Hz rate), register B = 24-hour BCD and register D = valid.
    pub fn new(irq: I, unix_seconds: i64) -> Self {
        let mut cmos = vec![0u8; 128];
        cmos[usize::from(RTC_REG_A)] = 0x26;
        cmos[usize::from(RTC_REG_B)] = REG_B_24H;
        cmos[usize::from(RTC_REG_D)] = REG_D_VRT;
        let s =
            Mc146818RtcState { cmos, index: 0, nmi_disabled: false, base_unix: unix_seconds, base_ns: 0, event_ns: 0 };
        let mut rtc = Mc146818Rtc { s, irq, irq_level: false };
        rtc.fill_time(VirtualInstant(0));
        rtc
    }

    /// Rebuilds the RTC from a snapshot, driving IRQ8 to the restored level.
    pub fn from_state(mut state: Mc146818RtcState, irq: I) -> Self {
        state.cmos.resize(128, 0);
        state.index &= 0x7F;
        let level = state.cmos[usize::from(RTC_REG_C)] & REG_C_IRQF != 0;
        irq.set_level(level);
        Mc146818Rtc { s: state, irq, irq_level: level }
    }

    /// A snapshot.
    pub fn state(&self) -> Mc146818RtcState {
        self.s.clone()
    }

    /// Sets the clock to `unix_seconds` at `now` (host time entering as an input).
    pub fn set_time(&mut self, unix_seconds: i64, now: VirtualInstant) {
        self.advance_to(now);
        self.s.base_unix = unix_seconds;
        self.s.base_ns = now.0;
        self.fill_time(now);
    }

    /// The clock's Unix time at `now` (frozen while SET is on).
    pub fn unix_time(&self, now: VirtualInstant) -> i64 {
        if self.reg(RTC_REG_B) & REG_B_SET != 0 {
            return self.regs_to_unix();
        }
        self.unix_at(now.0)
    }

    /// Whether NMIs are disabled through bit 7 of port 0x70.
    pub fn nmi_disabled(&self) -> bool {
        self.s.nmi_disabled
    }

    /// A raw CMOS byte (for the machine: memory size, boot order...).
    pub fn cmos(&self, index: u8) -> u8 {
        self.s.cmos.get(usize::from(index)).copied().unwrap_or(0xFF)
    }

    /// Sets a raw CMOS byte. Registers A–D and the time bytes are better left to the guest.
    pub fn set_cmos(&mut self, index: u8, v: u8) {
        if let Some(b) = self.s.cmos.get_mut(usize::from(index)) {
            *b = v;
        }
    }

    fn reg(&self, r: u8) -> u8 {
        self.s.cmos[usize::from(r)]
    }

    fn set_reg(&mut self, r: u8, v: u8) {
        self.s.cmos[usize::from(r)] = v;
    }

    fn unix_at(&self, ns: u64) -> i64 {
        let secs = ns.saturating_sub(self.s.base_ns) / NS;
        self.s.base_unix.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX))
    }

    fn binary(&self) -> bool {
        self.reg(RTC_REG_B) & REG_B_DM_BINARY != 0
    }

    fn encode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            from_bcd(v)
        }
    }

    fn encode_hour(&self, h: u8) -> u8 {
        if self.reg(RTC_REG_B) & REG_B_24H != 0 {
            self.encode(h)
        } else {
            let h12 = match h % 12 {
                0 => 12,
                x => x,
            };
            self.encode(h12) | if h >= 12 { HOUR_PM } else { 0 }
        }
    }

    fn decode_hour(&self, v: u8) -> u8 {
        if self.reg(RTC_REG_B) & REG_B_24H != 0 {
            self.decode(v)
        } else {
            let h = self.decode(v & !HOUR_PM) % 12;
            h + if v & HOUR_PM != 0 { 12 } else { 0 }
        }
    }

    /// Writes the time and date registers from the running clock.
    fn fill_time(&mut self, now: VirtualInstant) {
        let t = DateTime::from_unix(self.unix_at(now.0));
        let yy = u8::try_from(t.year.rem_euclid(100)).unwrap_or(0);
        let cc = u8::try_from(t.year.div_euclid(100).clamp(0, 99)).unwrap_or(0);
        self.set_reg(RTC_SECONDS, self.encode(t.second));
        self.set_reg(RTC_MINUTES, self.encode(t.minute));
        self.set_reg(RTC_HOURS, self.encode_hour(t.hour));
        self.set_reg(RTC_DAY_OF_WEEK, self.encode(t.weekday + 1));
        self.set_reg(RTC_DAY_OF_MONTH, self.encode(t.day));
        self.set_reg(RTC_MONTH, self.encode(t.month));
        self.set_reg(RTC_YEAR, self.encode(yy));
        self.set_reg(RTC_CENTURY, self.encode(cc));
    }

    /// The time the registers hold.
    fn regs_to_unix(&self) -> i64 {
        let yy = i64::from(self.decode(self.reg(RTC_YEAR)));
        let cc = match self.decode(self.reg(RTC_CENTURY)) {
            c @ 19..=99 => i64::from(c),
            _ if yy < 70 => 20,
            _ => 19,
        };
        let t = DateTime {
            year: cc * 100 + yy,
            month: self.decode(self.reg(RTC_MONTH)).clamp(1, 12),
            day: self.decode(self.reg(RTC_DAY_OF_MONTH)).clamp(1, 31),
            hour: self.decode_hour(self.reg(RTC_HOURS)),
            minute: self.decode(self.reg(RTC_MINUTES)),
            second: self.decode(self.reg(RTC_SECONDS)),
            weekday: 0,
        };
        t.to_unix()
    }

    fn updates_running(&self) -> bool {
        self.reg(RTC_REG_B) & REG_B_SET == 0
    }

    /// The periodic interrupt period in 32.768 kHz cycles, if running.
    fn periodic_cycles(&self) -> Option<u64> {
        let a = self.reg(RTC_REG_A);
        if a & 0x60 == 0x60 {
            return None; // divider chain in reset
        }
        match a & REG_A_RS {
            0 => None,
            rs @ 1..=2 => Some(1 << (rs + 6)),
            rs => Some(1 << (rs - 1)),
        }
    }

    /// Index of the last periodic event at or before `ns`.
    fn periodic_index(ns: u64, cycles: u64) -> u128 {
        u128::from(ns) * u128::from(RTC_BASE_HZ) / (u128::from(cycles) * u128::from(NS))
    }

    fn periodic_instant(index: u128, cycles: u64) -> u64 {
        let ns = (index * u128::from(cycles) * u128::from(NS)).div_ceil(u128::from(RTC_BASE_HZ));
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    /// Index of the last update (second boundary) at or before `ns`.
    fn second_index(&self, ns: u64) -> u64 {
        ns.saturating_sub(self.s.base_ns) / NS
    }

    fn alarm_matches(&self, unix: i64) -> bool {
        // Only the time of day matters: no calendar arithmetic per second checked.
        let tod = unix.rem_euclid(86_400);
        let (hour, minute, second) = ((tod / 3600) as u8, (tod / 60 % 60) as u8, (tod % 60) as u8);
        let check = |alarm: u8, value: u8| alarm & ALARM_DONT_CARE == ALARM_DONT_CARE || alarm == value;
        check(self.reg(RTC_SECONDS_ALARM), self.encode(second))
            && check(self.reg(RTC_MINUTES_ALARM), self.encode(minute))
            && check(self.reg(RTC_HOURS_ALARM), self.encode_hour(hour))
    }

    /// Whether the alarm matches at any second `k` in `first..=to` (RTC time `base_unix + k`).
    /// With a fixed seconds alarm only one second a minute can match, so after the first
    /// matching second the search steps by minutes: a long skip costs O(span / 60), not O(span).
    fn alarm_in(&self, first: u64, to: u64) -> bool {
        let unix = |k: u64| self.s.base_unix.saturating_add(i64::try_from(k).unwrap_or(i64::MAX));
        let sec_alarm = self.reg(RTC_SECONDS_ALARM);
        let sec_fixed = sec_alarm & ALARM_DONT_CARE != ALARM_DONT_CARE;
        let mut k = first;
        while k <= to {
            let u = unix(k);
            if self.alarm_matches(u) {
                return true;
            }
            let second_matches = self.encode(u.rem_euclid(60) as u8) == sec_alarm;
            k += if sec_fixed && second_matches { 60 } else { 1 };
        }
        false
    }

    fn update_irq(&mut self) {
        let mut c = self.reg(RTC_REG_C) & (REG_C_PF | REG_C_AF | REG_C_UF);
        if c & self.reg(RTC_REG_B) & (REG_B_PIE | REG_B_AIE | REG_B_UIE) != 0 {
            c |= REG_C_IRQF;
        }
        self.set_reg(RTC_REG_C, c);
        let level = c & REG_C_IRQF != 0;
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    fn read_data(&mut self, now: VirtualInstant) -> u8 {
        let index = self.s.index;
        match index {
            RTC_SECONDS | RTC_MINUTES | RTC_HOURS | RTC_DAY_OF_WEEK..=RTC_YEAR | RTC_CENTURY => {
                if self.updates_running() {
                    self.fill_time(now);
                }
                self.reg(index)
            }
            RTC_REG_A => {
                let phase = now.0.saturating_sub(self.s.base_ns) % NS;
                let uip = self.updates_running() && self.reg(RTC_REG_A) & 0x60 != 0x60 && phase >= NS - UIP_HOLD_NS;
                (self.reg(RTC_REG_A) & !REG_A_UIP) | if uip { REG_A_UIP } else { 0 }
            }
            RTC_REG_C => {
                let c = self.reg(RTC_REG_C);
                self.set_reg(RTC_REG_C, 0);
                self.update_irq();
                c
            }
            _ => self.reg(index),
        }
    }

    fn write_data(&mut self, v: u8, now: VirtualInstant) {
        let index = self.s.index;
        match index {
            RTC_SECONDS | RTC_MINUTES | RTC_HOURS | RTC_DAY_OF_WEEK..=RTC_YEAR | RTC_CENTURY => {
                if self.updates_running() {
                    self.fill_time(now);
                    self.set_reg(index, v);
                    self.s.base_unix = self.regs_to_unix();
                    self.s.base_ns = now.0;
                } else {
                    self.set_reg(index, v);
                }
            }
            RTC_REG_A => self.set_reg(RTC_REG_A, v & !REG_A_UIP),
            RTC_REG_B => {
                let old = self.reg(RTC_REG_B);
                let mut v = v;
                if v & REG_B_SET != 0 {
                    v &= !REG_B_UIE;
                    if old & REG_B_SET == 0 {
                        // Freeze the registers at the current time.
                        self.fill_time(now);
                    }
                } else if old & REG_B_SET != 0 {
                    // Leaving SET: the clock restarts from what the guest wrote.
                    self.s.base_unix = self.regs_to_unix();
                    self.s.base_ns = now.0;
                }
                if self.updates_running() && (old ^ v) & (REG_B_DM_BINARY | REG_B_24H) != 0 {
                    self.set_reg(RTC_REG_B, v);
                    self.fill_time(now);
                }
                self.set_reg(RTC_REG_B, v);
                self.update_irq();
            }
            RTC_REG_C | RTC_REG_D => log::debug!("rtc: write {v:#x} to read-only register {index:#x}"),
            _ => self.set_reg(index, v),
        }
    }

    /// Reads port 0x70 (write-only on real hardware: 0xFF) or 0x71.
    pub fn read_port(&mut self, port: u16, now: VirtualInstant) -> u8 {
        self.advance_to(now);
        match port {
            RTC_DATA_PORT => self.read_data(now),
            _ => {
                log::debug!("rtc: read of port {port:#x}");
                0xFF
            }
        }
    }

    /// Writes port 0x70 (index and NMI disable) or 0x71 (data).
    pub fn write_port(&mut self, port: u16, v: u8, now: VirtualInstant) {
        self.advance_to(now);
        match port {
            RTC_INDEX_PORT => {
                self.s.index = v & 0x7F;
                self.s.nmi_disabled = v & 0x80 != 0;
            }
            RTC_DATA_PORT => self.write_data(v, now),
            _ => log::debug!("rtc: write {v:#x} to port {port:#x}"),
        }
    }
}

impl<I: IrqLine> Timed for Mc146818Rtc<I> {
    fn next_deadline(&self) -> Option<VirtualInstant> {
        if self.reg(RTC_REG_C) & REG_C_IRQF != 0 {
            return None; // nothing observable changes until register C is read
        }
        let b = self.reg(RTC_REG_B);
        let mut best: Option<u64> = None;
        if b & REG_B_PIE != 0 {
            if let Some(cycles) = self.periodic_cycles() {
                let next = Self::periodic_instant(Self::periodic_index(self.s.event_ns, cycles) + 1, cycles);
                best = Some(next);
            }
        }
        if b & (REG_B_AIE | REG_B_UIE) != 0 && self.updates_running() {
            let next = if self.s.event_ns < self.s.base_ns {
                self.s.base_ns + NS
            } else {
                self.s.base_ns + (self.second_index(self.s.event_ns) + 1) * NS
            };
            best = Some(best.map_or(next, |b| b.min(next)));
        }
        best.map(VirtualInstant)
    }

    fn advance_to(&mut self, now: VirtualInstant) {
        let (last, now_ns) = (self.s.event_ns, now.0);
        if now_ns <= last {
            return;
        }
        let mut c = self.reg(RTC_REG_C);
        if let Some(cycles) = self.periodic_cycles() {
            if Self::periodic_index(now_ns, cycles) > Self::periodic_index(last, cycles) {
                c |= REG_C_PF;
            }
        }
        if self.updates_running() && now_ns >= self.s.base_ns + NS {
            let from = if last < self.s.base_ns { 0 } else { self.second_index(last) };
            let to = self.second_index(now_ns);
            if to > from {
                c |= REG_C_UF;
                // Each update compares the new time with the alarm; a day covers every pattern.
                let first = to - (to - from).min(86_400) + 1;
                let hit = self.alarm_in(first, to);
                if hit {
                    c |= REG_C_AF;
                }
            }
        }
        self.set_reg(RTC_REG_C, c);
        self.s.event_ns = now_ns;
        self.update_irq();
    }
}

impl<I: IrqLine> PioDevice for Mc146818Rtc<I> {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        match (u16::try_from(access.addr), data.len()) {
            (Ok(port), 1) => data[0] = self.read_port(port, access.now),
            _ => {
                log::debug!("rtc: {}-byte read at {:#x}", data.len(), access.addr);
                data.fill(0xFF);
            }
        }
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        match (u16::try_from(access.addr), data) {
            (Ok(port), [v]) => self.write_port(port, *v, access.now),
            _ => log::debug!("rtc: {}-byte write at {:#x}", data.len(), access.addr),
        }
    }
}

impl<I: IrqLine> base::Persist for Mc146818Rtc<I> {
    type State = Mc146818RtcState;
    /// The IRQ 8 line.
    type ConstructorArgs = I;
    type Error = std::convert::Infallible;
    fn save(&self) -> Mc146818RtcState {
        self.state()
    }
    fn restore(irq: I, state: &Mc146818RtcState) -> Result<Self, Self::Error> {
        Ok(Self::from_state(state.clone(), irq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::RecordingIrq;

    /// 1999-12-31 23:59:59 UTC, a Friday.
    const PARTY_LIKE_ITS_1999: i64 = 946_684_799;

    fn rtc(t: i64) -> (Mc146818Rtc<RecordingIrq>, RecordingIrq) {
        let irq = RecordingIrq::new();
        (Mc146818Rtc::new(irq.clone(), t), irq)
    }

    fn read(r: &mut Mc146818Rtc<RecordingIrq>, index: u8, ns: u64) -> u8 {
        r.write_port(RTC_INDEX_PORT, index, VirtualInstant(ns));
        r.read_port(RTC_DATA_PORT, VirtualInstant(ns))
    }

    fn write(r: &mut Mc146818Rtc<RecordingIrq>, index: u8, v: u8, ns: u64) {
        r.write_port(RTC_INDEX_PORT, index, VirtualInstant(ns));
        r.write_port(RTC_DATA_PORT, v, VirtualInstant(ns));
    }

    fn time_regs(r: &mut Mc146818Rtc<RecordingIrq>, ns: u64) -> [u8; 8] {
        [RTC_SECONDS, RTC_MINUTES, RTC_HOURS, RTC_DAY_OF_WEEK, RTC_DAY_OF_MONTH, RTC_MONTH, RTC_YEAR, RTC_CENTURY]
            .map(|i| read(r, i, ns))
    }

    #[test]
    fn test_rtc_date_conversion() {
        for secs in [0, 951_782_400, PARTY_LIKE_ITS_1999, 1_700_000_000, 4_102_444_800, -1] {
            assert_eq!(DateTime::from_unix(secs).to_unix(), secs);
        }
        let leap = DateTime::from_unix(951_782_400); // 2000-02-29
        assert_eq!((leap.year, leap.month, leap.day, leap.weekday), (2000, 2, 29, 2));
    }

    #[test]
    fn test_rtc_party_like_its_1999_rollover() {
        let (mut r, _irq) = rtc(PARTY_LIKE_ITS_1999);
        assert_eq!(time_regs(&mut r, 0), [0x59, 0x59, 0x23, 0x06, 0x31, 0x12, 0x99, 0x19]);
        assert_eq!(time_regs(&mut r, NS - 1), [0x59, 0x59, 0x23, 0x06, 0x31, 0x12, 0x99, 0x19]);
        assert_eq!(time_regs(&mut r, NS), [0x00, 0x00, 0x00, 0x07, 0x01, 0x01, 0x00, 0x20]);
        assert_eq!(r.unix_time(VirtualInstant(61 * NS)), PARTY_LIKE_ITS_1999 + 61);
        assert_eq!(read(&mut r, RTC_MINUTES, 61 * NS), 0x01);
        assert_eq!(read(&mut r, RTC_REG_D, 0), REG_D_VRT);
    }

    #[test]
    fn test_rtc_binary_and_12_hour() {
        let (mut r, _irq) = rtc(PARTY_LIKE_ITS_1999);
        write(&mut r, RTC_REG_B, REG_B_DM_BINARY, 0);
        assert_eq!(time_regs(&mut r, 0), [59, 59, 11 | HOUR_PM, 6, 31, 12, 99, 19]);
        write(&mut r, RTC_REG_B, 0, 0);
        assert_eq!(read(&mut r, RTC_HOURS, 0), 0x11 | HOUR_PM);
        assert_eq!(read(&mut r, RTC_HOURS, NS), 0x12, "midnight is 12 AM");
        write(&mut r, RTC_REG_B, REG_B_24H | REG_B_DM_BINARY, 0);
        assert_eq!(read(&mut r, RTC_HOURS, NS), 0);
    }

    #[test]
    fn test_rtc_set_time_through_registers() {
        let (mut r, _irq) = rtc(0);
        write(&mut r, RTC_REG_B, REG_B_SET | REG_B_24H, 5 * NS);
        for (i, v) in [(RTC_SECONDS, 0x30), (RTC_MINUTES, 0x15), (RTC_HOURS, 0x08), (RTC_DAY_OF_MONTH, 0x29)] {
            write(&mut r, i, v, 5 * NS);
        }
        write(&mut r, RTC_MONTH, 0x02, 5 * NS);
        write(&mut r, RTC_YEAR, 0x24, 5 * NS);
        write(&mut r, RTC_CENTURY, 0x20, 5 * NS);
        // Frozen while SET.
        assert_eq!(read(&mut r, RTC_SECONDS, 9 * NS), 0x30);
        write(&mut r, RTC_REG_B, REG_B_24H, 10 * NS);
        assert_eq!(read(&mut r, RTC_SECONDS, 12 * NS), 0x32);
        let t = DateTime::from_unix(r.unix_time(VirtualInstant(12 * NS)));
        assert_eq!((t.year, t.month, t.day, t.hour, t.minute, t.second), (2024, 2, 29, 8, 15, 32));
        // Writing a time register without SET sets the clock at once.
        write(&mut r, RTC_MINUTES, 0x45, 12 * NS);
        assert_eq!(read(&mut r, RTC_MINUTES, 13 * NS), 0x45);
        assert_eq!(read(&mut r, RTC_SECONDS, 13 * NS), 0x33);
        // The host can set the time too.
        r.set_time(PARTY_LIKE_ITS_1999, VirtualInstant(20 * NS));
        assert_eq!(read(&mut r, RTC_YEAR, 20 * NS), 0x99);
    }

    #[test]
    fn test_rtc_update_in_progress_window() {
        let (mut r, _irq) = rtc(0);
        assert_eq!(read(&mut r, RTC_REG_A, 0), 0x26);
        assert_eq!(read(&mut r, RTC_REG_A, NS - UIP_HOLD_NS - 1), 0x26);
        assert_eq!(read(&mut r, RTC_REG_A, NS - UIP_HOLD_NS), 0x26 | REG_A_UIP);
        assert_eq!(read(&mut r, RTC_REG_A, NS - 1), 0x26 | REG_A_UIP);
        assert_eq!(read(&mut r, RTC_REG_A, NS), 0x26);
        write(&mut r, RTC_REG_A, 0xFF, NS);
        assert_eq!(read(&mut r, RTC_REG_A, NS), 0x7F, "UIP is read-only");
    }

    #[test]
    fn test_rtc_periodic_interrupt() {
        let (mut r, irq) = rtc(0);
        // 1024 Hz (rate 6), periodic interrupt enabled.
        write(&mut r, RTC_REG_B, REG_B_24H | REG_B_PIE, 0);
        let d = r.next_deadline().unwrap();
        assert_eq!(d, VirtualInstant(976_563));
        r.advance_to(d);
        assert!(irq.level());
        assert_eq!(r.next_deadline(), None, "held until C is read");
        assert_eq!(read(&mut r, RTC_REG_C, d.0), REG_C_IRQF | REG_C_PF);
        assert!(!irq.level());
        assert_eq!(read(&mut r, RTC_REG_C, d.0), 0);
        // A guest that acknowledges every interrupt sees 1024 of them per second.
        let mut n = 0;
        while let Some(d) = r.next_deadline() {
            if d.0 > NS {
                break;
            }
            r.advance_to(d);
            read(&mut r, RTC_REG_C, d.0);
            n += 1;
        }
        assert_eq!(n, 1023);
        assert_eq!(irq.rising_edges(), 1024);
        // Rate 15: 2 Hz.
        write(&mut r, RTC_REG_A, 0x2F, NS);
        let d = r.next_deadline().unwrap();
        assert_eq!(d, VirtualInstant(3 * NS / 2));
        // Disabling the rate stops it.
        write(&mut r, RTC_REG_A, 0x20, NS);
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn test_rtc_update_ended_and_alarm() {
        let (mut r, irq) = rtc(PARTY_LIKE_ITS_1999);
        write(&mut r, RTC_REG_A, 0x20, 0); // no periodic flag
                                           // Alarm at 00:00:02 (BCD 24-hour), hours don't-care.
        write(&mut r, RTC_SECONDS_ALARM, 0x02, 0);
        write(&mut r, RTC_MINUTES_ALARM, 0x00, 0);
        write(&mut r, RTC_HOURS_ALARM, 0xC0, 0);
        write(&mut r, RTC_REG_B, REG_B_24H | REG_B_UIE, 0);
        assert_eq!(r.next_deadline(), Some(VirtualInstant(NS)));
        r.advance_to(VirtualInstant(NS));
        assert!(irq.level());
        assert_eq!(read(&mut r, RTC_REG_C, NS), REG_C_IRQF | REG_C_UF);
        // AF is set even while AIE is off; it only raises IRQF with AIE.
        write(&mut r, RTC_REG_B, REG_B_24H | REG_B_AIE, NS);
        r.advance_to(VirtualInstant(2 * NS));
        assert!(!irq.level());
        r.advance_to(VirtualInstant(3 * NS));
        assert!(irq.level());
        assert_eq!(read(&mut r, RTC_REG_C, 3 * NS), REG_C_IRQF | REG_C_AF | REG_C_UF);
        // SET stops updates and clears UIE.
        write(&mut r, RTC_REG_B, REG_B_24H | REG_B_SET | REG_B_UIE, 3 * NS);
        assert_eq!(read(&mut r, RTC_REG_B, 3 * NS), REG_B_24H | REG_B_SET);
        r.advance_to(VirtualInstant(10 * NS));
        assert_eq!(read(&mut r, RTC_REG_C, 10 * NS), 0);
        // PF is set by the periodic rate even with PIE off, without raising IRQF.
        write(&mut r, RTC_REG_A, 0x26, 10 * NS);
        r.advance_to(VirtualInstant(11 * NS));
        assert!(!irq.level());
        assert_eq!(read(&mut r, RTC_REG_C, 11 * NS), REG_C_PF);
    }

    /// A long jump of virtual time (a halted guest skipping ahead) must find an alarm that
    /// matched somewhere inside it, and not find one that did not, at a cost that does not
    /// grow with every second skipped.
    #[test]
    fn test_rtc_alarm_found_inside_a_long_skip() {
        // PARTY_LIKE_ITS_1999 is 1999-12-31 23:59:59 UTC: the alarm at 05:17:42 is 19,063 s later.
        for (to_s, hit) in [(5 * 3600 + 17 * 60 + 42 + 60, true), (5 * 3600, false), (3 * 86_400, true)] {
            let (mut r, _irq) = rtc(PARTY_LIKE_ITS_1999);
            write(&mut r, RTC_REG_A, 0x20, 0);
            write(&mut r, RTC_SECONDS_ALARM, 0x42, 0);
            write(&mut r, RTC_MINUTES_ALARM, 0x17, 0);
            write(&mut r, RTC_HOURS_ALARM, 0x05, 0);
            write(&mut r, RTC_REG_B, REG_B_24H, 0);
            r.advance_to(VirtualInstant(to_s * NS));
            let c = read(&mut r, RTC_REG_C, to_s * NS);
            assert_eq!(c & REG_C_AF != 0, hit, "skip to {to_s} s: register C {c:#x}");
        }
    }

    #[test]
    fn test_rtc_index_nmi_and_cmos() {
        let (mut r, _irq) = rtc(0);
        r.write_port(RTC_INDEX_PORT, 0x80 | 0x40, VirtualInstant(0));
        assert!(r.nmi_disabled());
        r.write_port(RTC_DATA_PORT, 0xAB, VirtualInstant(0));
        assert_eq!(r.cmos(0x40), 0xAB);
        assert_eq!(r.read_port(RTC_DATA_PORT, VirtualInstant(0)), 0xAB);
        assert_eq!(r.read_port(RTC_INDEX_PORT, VirtualInstant(0)), 0xFF);
        r.set_cmos(0x7F, 1);
        assert_eq!(read(&mut r, 0x7F, 0), 1);
        assert!(!r.nmi_disabled());
        write(&mut r, RTC_REG_D, 0, 0);
        assert_eq!(read(&mut r, RTC_REG_D, 0), REG_D_VRT);
    }

    #[test]
    fn test_rtc_state_roundtrip() {
        let (mut r, _irq) = rtc(PARTY_LIKE_ITS_1999);
        write(&mut r, RTC_REG_B, REG_B_24H | REG_B_PIE, 0);
        r.advance_to(VirtualInstant(NS));
        let st = r.state();
        let irq2 = RecordingIrq::new();
        let mut q = Mc146818Rtc::from_state(st.clone(), irq2.clone());
        assert!(irq2.level());
        assert_eq!(q.state(), st);
        assert_eq!(read(&mut q, RTC_YEAR, NS), 0x00);
    }
}
