//! The Intel 8254 programmable interval timer, with the PC's System Control Port B (0x61).
//!
//! Three 16-bit down-counters clocked at 1.193182 MHz; the clock is derived from virtual time
//! (1 virtual ns per instruction), never from the host. Channel 0 drives IRQ0 through an
//! [`IrqLine`]; channel 2's gate and output are wired to port 0x61 (bit 0 gate, bit 5 output),
//! which also shows the DRAM refresh toggle in bit 4.
//!
//! Ports: 0x40–0x42 counters, 0x43 control word, 0x61 Port B. [`I8254Pit`] decodes the
//! absolute port (`Access::addr`), so the machine maps 0x40–0x43 and 0x61 to the same device.
//!
//! Counters are computed from the instant they were loaded, as in QEMU, so reads are exact at
//! any time and the device only needs [`Timed::advance_to`] to emit channel 0's output edges.
//! Implemented: modes 0–5 (6 and 7 alias 2 and 3), binary and BCD counting, LSB/MSB/word
//! access, counter latch, read-back (count and status), gate semantics per mode.
//! Simplification: writing a new count in modes 2 and 3 restarts the period at once instead of
//! at the next reload.

use crate::bus::{Access, IrqLine, PioDevice, Timed};
use base::{VirtualInstant, VIRTUAL_INSNS_PER_SECOND};
use serde::{Deserialize, Serialize};

/// The PIT input clock in Hz.
pub const PIT_FREQ_HZ: u64 = 1_193_182;
/// Counter 0 port.
pub const PIT_COUNTER0: u16 = 0x40;
/// Counter 1 port.
pub const PIT_COUNTER1: u16 = 0x41;
/// Counter 2 port.
pub const PIT_COUNTER2: u16 = 0x42;
/// Control word register port.
pub const PIT_CONTROL: u16 = 0x43;
/// System Control Port B.
pub const PORT_B: u16 = 0x61;

/// Control word: select counter field (bits 7–6); 3 is the read-back command.
pub const CW_SELECT_SHIFT: u8 = 6;
/// Control word: read/write field (bits 5–4); 0 is the counter latch command.
pub const CW_RW_SHIFT: u8 = 4;
/// Read/write: counter latch command.
pub const RW_LATCH: u8 = 0;
/// Read/write: least significant byte only.
pub const RW_LSB: u8 = 1;
/// Read/write: most significant byte only.
pub const RW_MSB: u8 = 2;
/// Read/write: LSB then MSB.
pub const RW_WORD: u8 = 3;
/// Control word: BCD counting.
pub const CW_BCD: u8 = 0x01;
/// Read-back: do not latch the count (active low COUNT).
pub const RB_NOT_COUNT: u8 = 0x20;
/// Read-back: do not latch the status (active low STATUS).
pub const RB_NOT_STATUS: u8 = 0x10;
/// Status byte: OUT pin.
pub const STATUS_OUT: u8 = 0x80;
/// Status byte: null count (the count written has not been loaded yet).
pub const STATUS_NULL_COUNT: u8 = 0x40;

/// Port B: timer 2 gate.
pub const PORTB_TIMER2_GATE: u8 = 0x01;
/// Port B: speaker data enable.
pub const PORTB_SPEAKER_DATA: u8 = 0x02;
/// Port B: refresh request toggle (read only).
pub const PORTB_REFRESH: u8 = 0x10;
/// Port B: timer 2 output (read only).
pub const PORTB_TIMER2_OUT: u8 = 0x20;
/// Refresh toggle half-period in ns (the 15.085 µs DRAM refresh cycle).
const REFRESH_PERIOD_NS: u64 = 15_085;

/// PIT ticks elapsed from virtual time 0 to `now`.
pub fn ticks_at(now: VirtualInstant) -> u64 {
    let t = u128::from(now.0) * u128::from(PIT_FREQ_HZ) / u128::from(VIRTUAL_INSNS_PER_SECOND);
    u64::try_from(t).unwrap_or(u64::MAX)
}

/// The first virtual instant at which `ticks_at` reaches `tick`.
pub fn instant_of_tick(tick: u64) -> VirtualInstant {
    let ns = (u128::from(tick) * u128::from(VIRTUAL_INSNS_PER_SECOND)).div_ceil(u128::from(PIT_FREQ_HZ));
    VirtualInstant(u64::try_from(ns).unwrap_or(u64::MAX))
}

fn from_bcd16(v: u16) -> u32 {
    let mut r = 0u32;
    for shift in [12, 8, 4, 0] {
        r = r * 10 + u32::from((v >> shift) & 0xF).min(9);
    }
    r
}

fn to_bcd16(mut v: u32) -> u16 {
    let mut r = 0u16;
    for shift in [0, 4, 8, 12] {
        r |= u16::try_from(v % 10).unwrap_or(0) << shift;
        v /= 10;
    }
    r
}

/// The state of one counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitChannelState {
    /// The reload value, 1..=65536 (binary) or 1..=10000 (BCD).
    pub count: u32,
    /// Mode bits as written (0–7).
    pub mode: u8,
    /// BCD counting.
    pub bcd: bool,
    /// Read/write mode (`RW_LSB`, `RW_MSB`, `RW_WORD`).
    pub rw: u8,
    /// Word writes: the LSB has been written and the MSB is next.
    pub write_msb_next: bool,
    /// The LSB written in the first half of a word write.
    pub write_lsb: u8,
    /// Word reads: the MSB is next.
    pub read_msb_next: bool,
    /// A latched count waiting to be read.
    pub latched: Option<u16>,
    /// Word reads of the latch: the MSB is next.
    pub latch_msb_next: bool,
    /// A latched status byte waiting to be read.
    pub status_latched: Option<u8>,
    /// A control word was written and no count loaded since.
    pub null_count: bool,
    /// Gate input level.
    pub gate: bool,
    /// A count has been loaded since the last control word.
    pub counting: bool,
    /// PIT tick at which the current count was loaded or (re)triggered.
    pub load_tick: u64,
    /// Counting is suspended by the gate with this many ticks elapsed.
    pub paused_at: Option<u64>,
    /// Modes 1 and 5: a gate trigger has started the count.
    pub triggered: bool,
}

impl PitChannelState {
    fn new(gate: bool) -> Self {
        PitChannelState {
            count: 0x1_0000,
            mode: 0,
            bcd: false,
            rw: RW_WORD,
            write_msb_next: false,
            write_lsb: 0,
            read_msb_next: false,
            latched: None,
            latch_msb_next: false,
            status_latched: None,
            null_count: true,
            gate,
            counting: false,
            load_tick: 0,
            paused_at: None,
            triggered: false,
        }
    }

    /// The effective mode (6 and 7 alias 2 and 3).
    fn mode(&self) -> u8 {
        match self.mode & 7 {
            6 => 2,
            7 => 3,
            m => m,
        }
    }

    fn modulus(&self) -> u32 {
        if self.bcd {
            10_000
        } else {
            0x1_0000
        }
    }

    /// Ticks counted at `tick`, or `None` if the counter is not running.
    fn elapsed(&self, tick: u64) -> Option<u64> {
        if !self.counting || (matches!(self.mode(), 1 | 5) && !self.triggered) {
            return None;
        }
        Some(self.paused_at.unwrap_or_else(|| tick.saturating_sub(self.load_tick)))
    }

    /// The counting element at `tick` (0..modulus; 0 stands for the full count).
    fn current(&self, tick: u64) -> u32 {
        let n = u64::from(self.count);
        let Some(d) = self.elapsed(tick) else {
            return self.count % self.modulus();
        };
        let v = match self.mode() {
            2 => n - d % n,
            3 => n - (2 * d) % n,
            _ => {
                let m = u64::from(self.modulus());
                (n + m - d % m) % m
            }
        };
        u32::try_from(v % u64::from(self.modulus())).unwrap_or(0)
    }

    /// The count as the guest reads it (BCD-encoded in BCD mode).
    fn read_value(&self, tick: u64) -> u16 {
        let v = self.current(tick);
        if self.bcd {
            to_bcd16(v)
        } else {
            u16::try_from(v & 0xFFFF).unwrap_or(0)
        }
    }

    /// The OUT pin at `tick`.
    fn out(&self, tick: u64) -> bool {
        let mode = self.mode();
        if !self.counting {
            return mode != 0;
        }
        if matches!(mode, 2 | 3) && !self.gate {
            return true;
        }
        let Some(d) = self.elapsed(tick) else {
            return true; // modes 1 and 5 waiting for a trigger
        };
        let n = u64::from(self.count);
        match mode {
            0 | 1 => d >= n,
            2 => n < 2 || d % n != n - 1,
            3 => d % n < n.div_ceil(2),
            _ => d != n,
        }
    }

    /// The first tick after `tick` at which OUT changes, if it ever does on its own.
    fn next_transition(&self, tick: u64) -> Option<u64> {
        if self.paused_at.is_some() || (matches!(self.mode(), 2 | 3) && !self.gate) {
            return None;
        }
        let d = self.elapsed(tick)?;
        let n = u64::from(self.count);
        let next_d = match self.mode() {
            0 | 1 => (d < n).then_some(n)?,
            2 => {
                if n < 2 {
                    return None;
                }
                let base = d - d % n;
                if d % n < n - 1 {
                    base + n - 1
                } else {
                    base + n
                }
            }
            3 => {
                let base = d - d % n;
                let half = n.div_ceil(2);
                if n < 2 {
                    return None;
                }
                if d % n < half {
                    base + half
                } else {
                    base + n
                }
            }
            _ => match d.cmp(&n) {
                std::cmp::Ordering::Less => n,
                std::cmp::Ordering::Equal => n + 1,
                std::cmp::Ordering::Greater => return None,
            },
        };
        Some(self.load_tick + next_d)
    }

    fn status(&self, tick: u64) -> u8 {
        (u8::from(self.out(tick)) << 7)
            | (u8::from(self.null_count) << 6)
            | (self.rw << 4)
            | ((self.mode & 7) << 1)
            | u8::from(self.bcd)
    }

    fn latch_count(&mut self, tick: u64) {
        if self.latched.is_none() {
            self.latched = Some(self.read_value(tick));
            self.latch_msb_next = false;
        }
    }

    fn latch_status(&mut self, tick: u64) {
        if self.status_latched.is_none() {
            self.status_latched = Some(self.status(tick));
        }
    }

    fn set_control(&mut self, v: u8) {
        self.rw = (v >> CW_RW_SHIFT) & 3;
        self.mode = (v >> 1) & 7;
        self.bcd = v & CW_BCD != 0;
        self.write_msb_next = false;
        self.read_msb_next = false;
        self.latched = None;
        self.status_latched = None;
        self.null_count = true;
        self.counting = false;
        self.paused_at = None;
        self.triggered = false;
    }

    fn load(&mut self, raw: u16, tick: u64) {
        let v = if self.bcd { from_bcd16(raw) } else { u32::from(raw) };
        self.count = if v == 0 { self.modulus() } else { v };
        self.counting = true;
        self.null_count = false;
        self.load_tick = tick;
        self.triggered = false;
        self.paused_at = match self.mode() {
            0 | 2 | 3 | 4 if !self.gate => Some(0),
            _ => None,
        };
    }

    fn write(&mut self, v: u8, tick: u64) {
        match self.rw {
            RW_LSB => self.load(u16::from(v), tick),
            RW_MSB => self.load(u16::from(v) << 8, tick),
            _ => {
                if self.write_msb_next {
                    self.write_msb_next = false;
                    self.load(u16::from_le_bytes([self.write_lsb, v]), tick);
                } else {
                    self.write_lsb = v;
                    self.write_msb_next = true;
                }
            }
        }
    }

    fn read(&mut self, tick: u64) -> u8 {
        if let Some(s) = self.status_latched.take() {
            return s;
        }
        let (value, msb) = if let Some(l) = self.latched {
            let msb = match self.rw {
                RW_LSB => false,
                RW_MSB => true,
                _ => self.latch_msb_next,
            };
            if self.rw == RW_WORD && !msb {
                self.latch_msb_next = true;
            } else {
                self.latched = None;
                self.latch_msb_next = false;
            }
            (l, msb)
        } else {
            let msb = match self.rw {
                RW_LSB => false,
                RW_MSB => true,
                _ => {
                    let m = self.read_msb_next;
                    self.read_msb_next = !m;
                    m
                }
            };
            (self.read_value(tick), msb)
        };
        value.to_le_bytes()[usize::from(msb)]
    }

    fn set_gate(&mut self, high: bool, tick: u64) {
        let rising = high && !self.gate;
        let falling = !high && self.gate;
        self.gate = high;
        if !self.counting {
            return;
        }
        match self.mode() {
            0 | 4 => {
                if falling {
                    self.paused_at = self.elapsed(tick);
                } else if rising {
                    if let Some(d) = self.paused_at.take() {
                        self.load_tick = tick.saturating_sub(d);
                    }
                }
            }
            1 | 5 => {
                if rising {
                    self.triggered = true;
                    self.load_tick = tick;
                }
            }
            _ => {
                if falling {
                    self.paused_at = Some(0);
                } else if rising {
                    self.paused_at = None;
                    self.load_tick = tick;
                }
            }
        }
    }
}

/// A snapshot of the PIT and Port B.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8254PitState {
    /// The three counters.
    pub channels: [PitChannelState; 3],
    /// Writable bits 0–3 of Port B.
    pub port_b: u8,
    /// PIT tick up to which channel 0's output has been delivered to IRQ0.
    pub irq_tick: u64,
}

/// The 8254 PIT, with channel 0 driving `I` (IRQ0).
#[derive(Debug)]
pub struct I8254Pit<I: IrqLine> {
    s: I8254PitState,
    irq: I,
    irq_level: bool,
}

impl<I: IrqLine> I8254Pit<I> {
    /// The PIT at power-on (no counter programmed; gates 0 and 1 tied high, gate 2 low).
    pub fn new(irq: I) -> Self {
        let channels = [PitChannelState::new(true), PitChannelState::new(true), PitChannelState::new(false)];
        Self::from_state(I8254PitState { channels, port_b: 0, irq_tick: 0 }, irq)
    }

    /// Rebuilds the PIT from a snapshot, driving IRQ0 to the restored output level.
    pub fn from_state(state: I8254PitState, irq: I) -> Self {
        let level = state.channels[0].out(state.irq_tick);
        irq.set_level(level);
        I8254Pit { s: state, irq, irq_level: level }
    }

    /// A snapshot.
    pub fn state(&self) -> I8254PitState {
        self.s.clone()
    }

    /// The interrupt line of channel 0.
    pub fn irq(&self) -> &I {
        &self.irq
    }

    fn drive_irq(&mut self, level: bool) {
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    /// The OUT pin of `channel` (0–2) at `now`.
    pub fn output(&self, channel: usize, now: VirtualInstant) -> bool {
        self.s.channels.get(channel).is_some_and(|c| c.out(ticks_at(now)))
    }

    /// Reads a counter or control port (0x40–0x43) or Port B (0x61).
    pub fn read_port(&mut self, port: u16, now: VirtualInstant) -> u8 {
        let tick = ticks_at(now);
        match port {
            PIT_COUNTER0..=PIT_COUNTER2 => self.s.channels[usize::from(port - PIT_COUNTER0)].read(tick),
            PORT_B => self.read_port_b(now),
            _ => {
                log::debug!("pit: read of port {port:#x}");
                0xFF
            }
        }
    }

    /// Writes a counter or control port (0x40–0x43) or Port B (0x61).
    pub fn write_port(&mut self, port: u16, v: u8, now: VirtualInstant) {
        // Deliver channel 0 edges up to now before the guest changes anything.
        self.advance_to(now);
        let tick = ticks_at(now);
        match port {
            PIT_COUNTER0..=PIT_COUNTER2 => self.s.channels[usize::from(port - PIT_COUNTER0)].write(v, tick),
            PIT_CONTROL => self.write_control(v, tick),
            PORT_B => self.write_port_b(v, now),
            _ => log::debug!("pit: write {v:#x} to port {port:#x}"),
        }
        self.s.irq_tick = tick;
        let level = self.s.channels[0].out(tick);
        self.drive_irq(level);
    }

    fn write_control(&mut self, v: u8, tick: u64) {
        match v >> CW_SELECT_SHIFT {
            3 => {
                for (i, ch) in self.s.channels.iter_mut().enumerate() {
                    if v & (2 << i) == 0 {
                        continue;
                    }
                    // Latch the status first: it reflects the state before the count latch.
                    if v & RB_NOT_STATUS == 0 {
                        ch.latch_status(tick);
                    }
                    if v & RB_NOT_COUNT == 0 {
                        ch.latch_count(tick);
                    }
                }
            }
            sel => {
                let ch = &mut self.s.channels[usize::from(sel)];
                if (v >> CW_RW_SHIFT) & 3 == RW_LATCH {
                    ch.latch_count(tick);
                } else {
                    ch.set_control(v);
                }
            }
        }
    }

    /// Reads Port B (0x61): bits 0–3 as written, bit 4 refresh toggle, bit 5 timer 2 output.
    pub fn read_port_b(&self, now: VirtualInstant) -> u8 {
        let refresh = (now.0 / REFRESH_PERIOD_NS) & 1 == 1;
        let out2 = self.s.channels[2].out(ticks_at(now));
        (self.s.port_b & 0x0F) | (u8::from(refresh) * PORTB_REFRESH) | (u8::from(out2) * PORTB_TIMER2_OUT)
    }

    /// Writes Port B (0x61): bit 0 drives timer 2's gate, bits 1–3 are stored.
    pub fn write_port_b(&mut self, v: u8, now: VirtualInstant) {
        self.s.port_b = v & 0x0F;
        self.s.channels[2].set_gate(v & PORTB_TIMER2_GATE != 0, ticks_at(now));
    }

    /// Whether the speaker is driven (timer 2 gate and speaker data both enabled).
    pub fn speaker_enabled(&self) -> bool {
        self.s.port_b & (PORTB_TIMER2_GATE | PORTB_SPEAKER_DATA) == PORTB_TIMER2_GATE | PORTB_SPEAKER_DATA
    }
}

impl<I: IrqLine> Timed for I8254Pit<I> {
    fn next_deadline(&self) -> Option<VirtualInstant> {
        self.s.channels[0].next_transition(self.s.irq_tick).map(instant_of_tick)
    }

    fn advance_to(&mut self, now: VirtualInstant) {
        let tick = ticks_at(now);
        if tick < self.s.irq_tick {
            return;
        }
        // Replay each transition so the receiver sees every edge; if far behind, coalesce.
        for _ in 0..16 {
            match self.s.channels[0].next_transition(self.s.irq_tick) {
                Some(t) if t <= tick => {
                    let level = self.s.channels[0].out(t);
                    self.drive_irq(level);
                    self.s.irq_tick = t;
                }
                _ => break,
            }
        }
        self.s.irq_tick = tick;
        let level = self.s.channels[0].out(tick);
        self.drive_irq(level);
    }
}

impl<I: IrqLine> PioDevice for I8254Pit<I> {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        match (u16::try_from(access.addr), data.len()) {
            (Ok(port), 1) => data[0] = self.read_port(port, access.now),
            _ => {
                log::debug!("pit: {}-byte read at {:#x}", data.len(), access.addr);
                data.fill(0xFF);
            }
        }
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        match (u16::try_from(access.addr), data) {
            (Ok(port), [v]) => self.write_port(port, *v, access.now),
            _ => log::debug!("pit: {}-byte write at {:#x}", data.len(), access.addr),
        }
    }
}

impl<I: IrqLine> base::Persist for I8254Pit<I> {
    type State = I8254PitState;
    /// The IRQ 0 line.
    type ConstructorArgs = I;
    type Error = std::convert::Infallible;
    fn save(&self) -> I8254PitState {
        self.state()
    }
    fn restore(irq: I, state: &I8254PitState) -> Result<Self, Self::Error> {
        Ok(Self::from_state(state.clone(), irq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::RecordingIrq;

    fn t(tick: u64) -> VirtualInstant {
        instant_of_tick(tick)
    }

    fn pit() -> (I8254Pit<RecordingIrq>, RecordingIrq) {
        let irq = RecordingIrq::new();
        (I8254Pit::new(irq.clone()), irq)
    }

    fn program(p: &mut I8254Pit<RecordingIrq>, ch: u16, mode: u8, count: u16, now: VirtualInstant) {
        p.write_port(PIT_CONTROL, ((ch as u8) << 6) | (RW_WORD << 4) | (mode << 1), now);
        let [lo, hi] = count.to_le_bytes();
        p.write_port(PIT_COUNTER0 + ch, lo, now);
        p.write_port(PIT_COUNTER0 + ch, hi, now);
    }

    fn read_count(p: &mut I8254Pit<RecordingIrq>, ch: u16, now: VirtualInstant) -> u16 {
        p.write_port(PIT_CONTROL, (ch as u8) << 6, now); // latch
        let lo = p.read_port(PIT_COUNTER0 + ch, now);
        let hi = p.read_port(PIT_COUNTER0 + ch, now);
        u16::from_le_bytes([lo, hi])
    }

    #[test]
    fn test_pit_tick_conversion() {
        assert_eq!(ticks_at(VirtualInstant(1_000_000_000)), PIT_FREQ_HZ);
        for tick in [0, 1, 2, 1193, 1_193_182, 123_456_789] {
            let i = instant_of_tick(tick);
            assert_eq!(ticks_at(i), tick);
            assert_eq!(ticks_at(VirtualInstant(i.0 - u64::from(tick > 0))), tick.saturating_sub(1));
        }
    }

    #[test]
    fn test_pit_mode2_reload_period_and_irq_edges() {
        let (mut p, irq) = pit();
        let start = 1000;
        program(&mut p, 0, 2, 1193, t(start));
        assert!(irq.level(), "mode 2 output starts high");
        irq.clear();
        // The output drops for one tick before each reload.
        assert_eq!(p.next_deadline(), Some(t(start + 1192)));
        p.advance_to(t(start + 1192));
        assert!(!irq.level());
        assert_eq!(p.next_deadline(), Some(t(start + 1193)));
        p.advance_to(t(start + 1193));
        assert!(irq.level());
        assert_eq!(irq.rising_edges(), 1);
        assert_eq!(read_count(&mut p, 0, t(start + 1193)), 1193);
        assert_eq!(read_count(&mut p, 0, t(start + 1193 + 100)), 1093);
        // Drive it through its deadlines like the machine does: one edge per period.
        irq.clear();
        for _ in 0..20 {
            let d = p.next_deadline().unwrap();
            p.advance_to(d);
        }
        assert_eq!(irq.rising_edges(), 10);
        // Late delivery still gives edges (coalesced when far behind).
        irq.clear();
        p.advance_to(t(start + 1193 * 14 + 5));
        assert_eq!(irq.rising_edges(), 3);
        // 1193 ticks is very close to 1 ms.
        let period = t(start + 2 * 1193).0 - t(start + 1193).0;
        assert!((999_000..1_000_100).contains(&period), "{period}");
    }

    #[test]
    fn test_pit_mode0_terminal_count() {
        let (mut p, irq) = pit();
        program(&mut p, 0, 0, 100, t(0));
        assert!(!irq.level());
        assert_eq!(p.next_deadline(), Some(t(100)));
        p.advance_to(t(99));
        assert!(!irq.level());
        assert_eq!(read_count(&mut p, 0, t(99)), 1);
        p.advance_to(t(100));
        assert!(irq.level());
        assert_eq!(irq.rising_edges(), 1);
        assert_eq!(p.next_deadline(), None, "mode 0 fires once");
        p.advance_to(t(100_000));
        assert!(irq.level());
        // The counter keeps counting down through 0 and wraps.
        assert_eq!(read_count(&mut p, 0, t(101)), 0xFFFF);
        // Reprogramming drops the output.
        program(&mut p, 0, 0, 10, t(100_000));
        assert!(!irq.level());
    }

    #[test]
    fn test_pit_mode3_square_wave() {
        let (mut p, irq) = pit();
        program(&mut p, 0, 3, 10, t(0));
        irq.clear();
        let mut levels = Vec::new();
        for tick in 0..20 {
            p.advance_to(t(tick));
            levels.push(irq.level());
        }
        let high: Vec<bool> = (0..20).map(|i| i % 10 < 5).collect();
        assert_eq!(levels, high);
        // The count decrements by two.
        assert_eq!(read_count(&mut p, 0, t(2)), 6);
        // Odd count: high one tick longer.
        program(&mut p, 0, 3, 5, t(100));
        assert!(p.output(0, t(102)));
        assert!(!p.output(0, t(103)));
        assert!(!p.output(0, t(104)));
        assert!(p.output(0, t(105)));
    }

    #[test]
    fn test_pit_mode4_strobe() {
        let (mut p, irq) = pit();
        program(&mut p, 0, 4, 50, t(0));
        assert!(irq.level());
        irq.clear();
        p.advance_to(t(50));
        assert!(!irq.level());
        p.advance_to(t(51));
        assert!(irq.level());
        assert_eq!(irq.rising_edges(), 1);
        assert_eq!(p.next_deadline(), None);
    }

    #[test]
    fn test_pit_latch_holds_value() {
        let (mut p, _irq) = pit();
        program(&mut p, 0, 2, 1000, t(0));
        p.write_port(PIT_CONTROL, 0x00, t(10)); // latch counter 0
        p.write_port(PIT_CONTROL, 0x00, t(20)); // second latch ignored until read
        assert_eq!(p.read_port(PIT_COUNTER0, t(500)), (990u16 & 0xFF) as u8);
        assert_eq!(p.read_port(PIT_COUNTER0, t(600)), (990u16 >> 8) as u8);
        // Unlatched word read follows the live counter.
        assert_eq!(p.read_port(PIT_COUNTER0, t(700)), (300u16 & 0xFF) as u8);
        assert_eq!(p.read_port(PIT_COUNTER0, t(700)), (300u16 >> 8) as u8);
        // LSB-only access mode.
        p.write_port(PIT_CONTROL, (RW_LSB << 4) | (2 << 1), t(0));
        p.write_port(PIT_COUNTER0, 200, t(0));
        assert_eq!(p.read_port(PIT_COUNTER0, t(50)), 150);
        assert_eq!(p.read_port(PIT_COUNTER0, t(60)), 140);
    }

    #[test]
    fn test_pit_read_back() {
        let (mut p, _irq) = pit();
        program(&mut p, 1, 2, 500, t(0));
        p.write_port(PIT_CONTROL, (RW_MSB << 4) | (3 << 1) | 0x80 | CW_BCD, t(0));
        // Read-back: count and status of counter 1, status of counter 2.
        p.write_port(PIT_CONTROL, 0xC0 | 0x04, t(100));
        p.write_port(PIT_CONTROL, 0xC0 | RB_NOT_COUNT | 0x08, t(100));
        assert_eq!(p.read_port(PIT_COUNTER1, t(200)), 0x80 | (RW_WORD << 4) | (2 << 1));
        assert_eq!(p.read_port(PIT_COUNTER1, t(200)), (400u16 & 0xFF) as u8);
        assert_eq!(p.read_port(PIT_COUNTER1, t(200)), (400u16 >> 8) as u8);
        assert_eq!(
            p.read_port(PIT_COUNTER2, t(200)),
            STATUS_OUT | STATUS_NULL_COUNT | (RW_MSB << 4) | (3 << 1) | CW_BCD
        );
        // BCD: load 0x25 in the MSB = 2500 decimal.
        p.write_port(PIT_COUNTER2, 0x25, t(200));
        p.write_port(PORT_B, PORTB_TIMER2_GATE, t(200));
        p.write_port(PIT_CONTROL, 0xC0 | RB_NOT_STATUS | 0x08, t(300));
        assert_eq!(p.read_port(PIT_COUNTER2, t(300)), 0x23, "2500 - 2*100 = 2300 in BCD");
    }

    #[test]
    fn test_pit_channel2_gate_and_port_b() {
        let (mut p, irq) = pit();
        p.write_port(PORT_B, 0, t(0));
        program(&mut p, 2, 0, 1000, t(0));
        assert_eq!(p.read_port(PORT_B, t(0)) & PORTB_TIMER2_OUT, 0);
        // Gate low: counting is suspended.
        assert_eq!(read_count(&mut p, 2, t(500)), 1000);
        p.write_port(PORT_B, PORTB_TIMER2_GATE, t(500));
        assert_eq!(read_count(&mut p, 2, t(900)), 600);
        p.write_port(PORT_B, 0, t(900));
        assert_eq!(read_count(&mut p, 2, t(5000)), 600);
        p.write_port(PORT_B, PORTB_TIMER2_GATE | PORTB_SPEAKER_DATA, t(5000));
        assert!(p.speaker_enabled());
        assert_eq!(p.read_port(PORT_B, t(5599)) & PORTB_TIMER2_OUT, 0);
        assert_eq!(p.read_port(PORT_B, t(5600)) & PORTB_TIMER2_OUT, PORTB_TIMER2_OUT);
        assert_eq!(p.read_port(PORT_B, t(5600)) & 0x0F, PORTB_TIMER2_GATE | PORTB_SPEAKER_DATA);
        // Refresh toggle flips with virtual time.
        let a = p.read_port(PORT_B, VirtualInstant(0)) & PORTB_REFRESH;
        let b = p.read_port(PORT_B, VirtualInstant(REFRESH_PERIOD_NS)) & PORTB_REFRESH;
        assert_ne!(a, b);
        // Mode 2 on channel 2: gate low forces OUT high, rising gate reloads.
        program(&mut p, 2, 2, 100, t(6000));
        p.write_port(PORT_B, 0, t(6050));
        assert!(p.output(2, t(6099)));
        p.write_port(PORT_B, PORTB_TIMER2_GATE, t(7000));
        assert_eq!(read_count(&mut p, 2, t(7010)), 90);
        // Mode 1: hardware-triggered one-shot.
        program(&mut p, 2, 1, 10, t(8000));
        assert!(p.output(2, t(8005)), "waits for a gate trigger");
        p.write_port(PORT_B, 0, t(8005));
        p.write_port(PORT_B, PORTB_TIMER2_GATE, t(8006));
        assert!(!p.output(2, t(8010)));
        assert!(p.output(2, t(8016)));
        assert_eq!(irq.rising_edges(), 0, "channel 2 does not drive IRQ0");
    }

    #[test]
    fn test_pit_state_roundtrip_and_bad_access() {
        let (mut p, _irq) = pit();
        program(&mut p, 0, 2, 100, t(0));
        let st = p.state();
        let irq2 = RecordingIrq::new();
        let q = I8254Pit::from_state(st.clone(), irq2.clone());
        assert!(irq2.level());
        assert_eq!(q.state(), st);
        assert_eq!(p.read_port(0x44, t(0)), 0xFF);
        let mut d = [0; 2];
        p.read(Access::at(0x40, t(0)), &mut d);
        assert_eq!(d, [0xFF; 2]);
        p.write(Access::at(0x40, t(0)), &[1, 2]);
        assert_eq!(p.state(), st);
    }
}
