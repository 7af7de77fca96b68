//! The local APIC of the (single) CPU, xAPIC MMIO mode.
//!
//! Map it at [`LAPIC_DEFAULT_BASE`] (0xFEE00000) with length 0x1000; registers are 32 bits
//! wide at 16-byte aligned offsets. Other widths or misaligned accesses read all ones and are
//! dropped; reserved registers read 0 and ignore writes, as on hardware.
//!
//! Interrupts enter through [`LocalApic::deliver`] (I/O APIC messages, self IPIs, the timer,
//! LVT error) and sit in IRR. The machine polls [`LocalApic::pending_vector`] (the highest IRR
//! vector whose priority class beats the processor priority, i.e. TPR and the highest
//! in-service vector) and, when the CPU takes it, calls [`LocalApic::acknowledge`], which
//! moves it from IRR to ISR. An EOI write clears the highest ISR bit; if that vector was
//! level-triggered (TMR) its number is queued for the I/O APIC
//! ([`LocalApic::take_eoi_broadcasts`]). The 8259 reaches the CPU through LINT0 in ExtINT
//! mode ([`LocalApic::accepts_pic_interrupt`]); the BSP's LINT0 starts in that mode, as QEMU
//! sets it, so the PIC works before firmware programs the APIC.
//!
//! The timer counts APIC bus ticks at [`LAPIC_BUS_HZ`] (one per virtual nanosecond) divided by
//! the divide configuration register, one-shot or periodic, and is driven through [`Timed`].
//! A divide-configuration change applies from the next initial-count write. TSC-deadline mode
//! is not offered (writing that mode leaves the timer idle). Only one CPU exists: IPIs other
//! than to self are queued for the machine ([`LocalApic::take_ipis`]).

use crate::bus::{Access, MmioDevice, Timed};
use base::VirtualInstant;
use serde::{Deserialize, Serialize};

/// The architectural default base address.
pub const LAPIC_DEFAULT_BASE: u64 = 0xFEE0_0000;
/// Size of the register page.
pub const LAPIC_MMIO_SIZE: u64 = 0x1000;
/// Timer input: APIC bus ticks per virtual second.
pub const LAPIC_BUS_HZ: u64 = 1_000_000_000;

/// Local APIC ID.
pub const APIC_ID: u64 = 0x20;
/// Version.
pub const APIC_LVR: u64 = 0x30;
/// Task priority.
pub const APIC_TASKPRI: u64 = 0x80;
/// Arbitration priority.
pub const APIC_ARBPRI: u64 = 0x90;
/// Processor priority.
pub const APIC_PROCPRI: u64 = 0xA0;
/// End of interrupt.
pub const APIC_EOI: u64 = 0xB0;
/// Remote read.
pub const APIC_RRR: u64 = 0xC0;
/// Logical destination.
pub const APIC_LDR: u64 = 0xD0;
/// Destination format.
pub const APIC_DFR: u64 = 0xE0;
/// Spurious interrupt vector.
pub const APIC_SPIV: u64 = 0xF0;
/// In-service register (8 × 32 bits).
pub const APIC_ISR: u64 = 0x100;
/// Trigger mode register.
pub const APIC_TMR: u64 = 0x180;
/// Interrupt request register.
pub const APIC_IRR: u64 = 0x200;
/// Error status.
pub const APIC_ESR: u64 = 0x280;
/// Interrupt command, low half (writing it sends the IPI).
pub const APIC_ICR: u64 = 0x300;
/// Interrupt command, high half (destination).
pub const APIC_ICR2: u64 = 0x310;
/// LVT timer.
pub const APIC_LVTT: u64 = 0x320;
/// LVT thermal sensor.
pub const APIC_LVTTHMR: u64 = 0x330;
/// LVT performance counters.
pub const APIC_LVTPC: u64 = 0x340;
/// LVT LINT0.
pub const APIC_LVT0: u64 = 0x350;
/// LVT LINT1.
pub const APIC_LVT1: u64 = 0x360;
/// LVT error.
pub const APIC_LVTERR: u64 = 0x370;
/// Timer initial count.
pub const APIC_TMICT: u64 = 0x380;
/// Timer current count.
pub const APIC_TMCCT: u64 = 0x390;
/// Timer divide configuration.
pub const APIC_TDCR: u64 = 0x3E0;

/// Version register: version 14h (integrated APIC), max LVT entry 5 (six LVTs).
pub const APIC_VERSION: u32 = 0x0005_0014;
/// SVR: APIC software enable.
pub const APIC_SPIV_APIC_ENABLED: u32 = 0x100;
/// SVR: focus processor checking disabled.
pub const APIC_SPIV_FOCUS_DISABLED: u32 = 0x200;
/// LVT: masked.
pub const APIC_LVT_MASKED: u32 = 0x1_0000;
/// LVT: level triggered.
pub const APIC_LVT_LEVEL_TRIGGER: u32 = 0x8000;
/// LVT: remote IRR.
pub const APIC_LVT_REMOTE_IRR: u32 = 0x4000;
/// LVT timer: periodic mode.
pub const APIC_LVT_TIMER_PERIODIC: u32 = 0x2_0000;
/// LVT timer: TSC-deadline mode.
pub const APIC_LVT_TIMER_TSCDEADLINE: u32 = 0x4_0000;
/// LVT/ICR: delivery mode field.
pub const APIC_MODE_MASK: u32 = 0x700;
/// Delivery mode: fixed.
pub const APIC_DM_FIXED: u8 = 0;
/// Delivery mode: lowest priority.
pub const APIC_DM_LOWEST: u8 = 1;
/// Delivery mode: SMI.
pub const APIC_DM_SMI: u8 = 2;
/// Delivery mode: NMI.
pub const APIC_DM_NMI: u8 = 4;
/// Delivery mode: INIT.
pub const APIC_DM_INIT: u8 = 5;
/// Delivery mode: start-up.
pub const APIC_DM_STARTUP: u8 = 6;
/// Delivery mode: external interrupt (8259).
pub const APIC_DM_EXTINT: u8 = 7;
/// ICR: logical destination mode.
pub const APIC_DEST_LOGICAL: u32 = 0x800;
/// ICR: level assert.
pub const APIC_INT_ASSERT: u32 = 0x4000;
/// ICR: level triggered.
pub const APIC_INT_LEVELTRIG: u32 = 0x8000;
/// ICR: destination shorthand field.
pub const APIC_SHORT_MASK: u32 = 0xC_0000;
/// Shorthand: self.
pub const APIC_DEST_SELF: u32 = 0x4_0000;
/// Shorthand: all including self.
pub const APIC_DEST_ALLINC: u32 = 0x8_0000;
/// Shorthand: all excluding self.
pub const APIC_DEST_ALLBUT: u32 = 0xC_0000;
/// DFR: flat model.
pub const APIC_DFR_FLAT: u32 = 0xFFFF_FFFF;
/// ESR: send illegal vector.
pub const APIC_ESR_SEND_ILLEGAL: u32 = 0x20;
/// ESR: received illegal vector.
pub const APIC_ESR_RECV_ILLEGAL: u32 = 0x40;
/// ESR: illegal register address.
pub const APIC_ESR_ILLEGAL_REG: u32 = 0x80;
/// IA32_APIC_BASE: bootstrap processor.
pub const MSR_APIC_BASE_BSP: u64 = 0x100;
/// IA32_APIC_BASE: APIC global enable.
pub const MSR_APIC_BASE_ENABLE: u64 = 0x800;

/// IPIs kept for the machine before newer ones are dropped (a guest cannot grow host memory).
const MAX_QUEUED_IPIS: usize = 64;

/// Indices into the LVT array.
const LVT_TIMER: usize = 0;
const LVT_LINT0: usize = 3;
const LVT_ERROR: usize = 5;
/// Writable bits of each LVT (timer, thermal, perf, LINT0, LINT1, error).
const LVT_WRITABLE: [u32; 6] = [0x0007_00FF, 0x0001_07FF, 0x0001_07FF, 0x0001_A7FF, 0x0001_A7FF, 0x0001_00FF];

/// An interrupt message for an APIC (from the I/O APIC, an IPI, or the machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApicMessage {
    /// Vector.
    pub vector: u8,
    /// Delivery mode ([`APIC_DM_FIXED`], ...).
    pub delivery_mode: u8,
    /// Logical (else physical) destination mode.
    pub logical: bool,
    /// Destination (APIC ID, or logical mask).
    pub dest: u8,
    /// Level triggered (sets TMR; its EOI is broadcast to the I/O APIC).
    pub level: bool,
}

/// An IPI the single-CPU machine cannot deliver itself (INIT/SIPI to other CPUs, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipi {
    /// ICR low half as written.
    pub icr_low: u32,
    /// ICR high half.
    pub icr_high: u32,
}

/// The state of the local APIC, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalApicState {
    /// IA32_APIC_BASE.
    pub base_msr: u64,
    /// ID register.
    pub id: u32,
    /// Task priority.
    pub tpr: u32,
    /// Logical destination.
    pub ldr: u32,
    /// Destination format.
    pub dfr: u32,
    /// Spurious interrupt vector register.
    pub svr: u32,
    /// In-service bits.
    pub isr: [u32; 8],
    /// Trigger mode bits.
    pub tmr: [u32; 8],
    /// Request bits.
    pub irr: [u32; 8],
    /// Error status as last latched.
    pub esr: u32,
    /// Errors since the last ESR write.
    pub esr_pending: u32,
    /// ICR low.
    pub icr_low: u32,
    /// ICR high.
    pub icr_high: u32,
    /// LVT timer, thermal, perf, LINT0, LINT1, error.
    pub lvt: [u32; 6],
    /// Timer initial count.
    pub initial_count: u32,
    /// Divide configuration register.
    pub dcr: u32,
    /// Divisor latched at the last initial-count write.
    pub timer_divisor: u32,
    /// Virtual ns at which the count was loaded (or last reloaded).
    pub timer_start: u64,
    /// Virtual ns of the next expiry, if counting.
    pub timer_deadline: Option<u64>,
    /// IA32_TSC_DEADLINE as written (TSC ticks), while armed in TSC-deadline mode; 0 otherwise.
    #[serde(default)]
    pub tsc_deadline_msr: u64,
    /// Level-triggered vectors EOIed, for the I/O APIC.
    pub eoi_broadcasts: Vec<u8>,
    /// IPIs for other processors.
    pub ipis: Vec<Ipi>,
    /// An NMI was delivered.
    pub nmi_pending: bool,
    /// An ExtINT was delivered (fetch the vector from the 8259).
    pub extint_pending: bool,
}

/// A local APIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalApic {
    s: LocalApicState,
}

fn bit_set(r: &mut [u32; 8], v: u8) {
    r[usize::from(v >> 5)] |= 1 << (v & 31);
}

fn bit_clear(r: &mut [u32; 8], v: u8) {
    r[usize::from(v >> 5)] &= !(1 << (v & 31));
}

fn bit_test(r: &[u32; 8], v: u8) -> bool {
    r[usize::from(v >> 5)] & (1 << (v & 31)) != 0
}

/// The highest set bit of a 256-bit register.
fn highest(r: &[u32; 8]) -> Option<u8> {
    (0..8).rev().find(|&i| r[i] != 0).map(|i| (i * 32 + 31 - r[i].leading_zeros() as usize) as u8)
}

impl LocalApic {
    /// The APIC at power-on with ID `id`: enabled in IA32_APIC_BASE at the default base,
    /// software-disabled (SVR 0xFF), all LVTs masked except, on the bootstrap processor,
    /// LINT0 in ExtINT mode (virtual wire to the 8259).
    pub fn new(id: u8, bsp: bool) -> Self {
        let mut lvt = [APIC_LVT_MASKED; 6];
        if bsp {
            lvt[LVT_LINT0] = u32::from(APIC_DM_EXTINT) << 8;
        }
        LocalApic {
            s: LocalApicState {
                base_msr: LAPIC_DEFAULT_BASE | MSR_APIC_BASE_ENABLE | if bsp { MSR_APIC_BASE_BSP } else { 0 },
                id: u32::from(id) << 24,
                tpr: 0,
                ldr: 0,
                dfr: APIC_DFR_FLAT,
                svr: 0xFF,
                isr: [0; 8],
                tmr: [0; 8],
                irr: [0; 8],
                esr: 0,
                esr_pending: 0,
                icr_low: 0,
                icr_high: 0,
                lvt,
                initial_count: 0,
                dcr: 0,
                timer_divisor: 2,
                timer_start: 0,
                timer_deadline: None,
                tsc_deadline_msr: 0,
                eoi_broadcasts: Vec::new(),
                ipis: Vec::new(),
                nmi_pending: false,
                extint_pending: false,
            },
        }
    }

    /// Rebuilds from a snapshot.
    pub fn from_state(mut state: LocalApicState) -> Self {
        state.timer_divisor = state.timer_divisor.max(1);
        LocalApic { s: state }
    }

    /// A snapshot.
    pub fn state(&self) -> LocalApicState {
        self.s.clone()
    }

    /// The APIC ID.
    pub fn id(&self) -> u8 {
        (self.s.id >> 24) as u8
    }

    /// IA32_APIC_BASE as the CPU's RDMSR should return it.
    pub fn base_msr(&self) -> u64 {
        self.s.base_msr
    }

    /// A WRMSR to IA32_APIC_BASE (base relocation is recorded; the machine remaps).
    pub fn set_base_msr(&mut self, v: u64) {
        self.s.base_msr =
            (v & 0x000F_FFFF_FFFF_F000) | (v & MSR_APIC_BASE_ENABLE) | (self.s.base_msr & MSR_APIC_BASE_BSP);
    }

    /// Whether the APIC is enabled in IA32_APIC_BASE.
    pub fn hw_enabled(&self) -> bool {
        self.s.base_msr & MSR_APIC_BASE_ENABLE != 0
    }

    /// Whether the APIC is software-enabled (SVR bit 8).
    pub fn sw_enabled(&self) -> bool {
        self.s.svr & APIC_SPIV_APIC_ENABLED != 0
    }

    /// Whether an 8259 INTR reaches the CPU: the APIC is globally disabled (legacy INTR pin),
    /// or LINT0 is unmasked in ExtINT mode.
    pub fn accepts_pic_interrupt(&self) -> bool {
        let l = self.s.lvt[LVT_LINT0];
        !self.hw_enabled() || (l & APIC_LVT_MASKED == 0 && ((l >> 8) & 7) as u8 == APIC_DM_EXTINT)
    }

    /// The processor priority: TPR, or the class of the highest in-service vector if higher.
    pub fn ppr(&self) -> u8 {
        let tpr = self.s.tpr as u8;
        let isrv = highest(&self.s.isr).unwrap_or(0);
        if tpr >> 4 >= isrv >> 4 {
            tpr
        } else {
            isrv & 0xF0
        }
    }

    /// The vector the CPU would take now (when its IF allows): the highest IRR vector whose
    /// class is above the processor priority class. `None` while the APIC is disabled (globally
    /// or by software); requests stay in IRR meanwhile.
    pub fn pending_vector(&self) -> Option<u8> {
        if !self.hw_enabled() || !self.sw_enabled() {
            return None;
        }
        let v = highest(&self.s.irr)?;
        (v >> 4 > self.ppr() >> 4).then_some(v)
    }

    /// The CPU takes the pending vector: it moves from IRR to ISR. `None` if nothing is
    /// deliverable (the machine then does not interrupt the CPU).
    pub fn acknowledge(&mut self) -> Option<u8> {
        let v = self.pending_vector()?;
        bit_clear(&mut self.s.irr, v);
        bit_set(&mut self.s.isr, v);
        Some(v)
    }

    /// Returns and clears the level-triggered vectors EOIed since the last call (pass each to
    /// [`crate::ioapic::IoApic::end_of_interrupt`]).
    pub fn take_eoi_broadcasts(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.s.eoi_broadcasts)
    }

    /// Returns and clears the IPIs addressed to other processors.
    pub fn take_ipis(&mut self) -> Vec<Ipi> {
        std::mem::take(&mut self.s.ipis)
    }

    /// Returns and clears a delivered NMI.
    pub fn take_nmi(&mut self) -> bool {
        std::mem::take(&mut self.s.nmi_pending)
    }

    /// Returns and clears a delivered ExtINT (the vector comes from the 8259's INTA).
    pub fn take_extint(&mut self) -> bool {
        std::mem::take(&mut self.s.extint_pending)
    }

    /// Whether a message for `dest` in the given mode addresses this APIC.
    pub fn matches_destination(&self, dest: u8, logical: bool) -> bool {
        if !logical {
            return dest == 0xFF || dest == self.id();
        }
        let ldr = (self.s.ldr >> 24) as u8;
        if self.s.dfr >> 28 == 0xF {
            ldr & dest != 0 // flat model
        } else {
            // Cluster model: high nibble cluster, low nibble members.
            (dest >> 4 == 0xF || dest >> 4 == ldr >> 4) && ldr & dest & 0xF != 0
        }
    }

    /// Delivers a message to this APIC (the destination was already matched). Returns whether
    /// it was accepted.
    pub fn deliver(&mut self, msg: &ApicMessage) -> bool {
        match msg.delivery_mode {
            APIC_DM_FIXED | APIC_DM_LOWEST => {
                self.accept_interrupt(msg.vector, msg.level);
                true
            }
            APIC_DM_NMI => {
                self.s.nmi_pending = true;
                true
            }
            APIC_DM_EXTINT => {
                self.s.extint_pending = true;
                true
            }
            m => {
                log::debug!("lapic: delivery mode {m} ignored");
                false
            }
        }
    }

    /// Raises `vector` in IRR (and TMR if level-triggered). Vectors 0–15 are illegal and only
    /// set the error status.
    pub fn accept_interrupt(&mut self, vector: u8, level: bool) {
        if vector < 16 {
            self.error(APIC_ESR_RECV_ILLEGAL);
            return;
        }
        bit_set(&mut self.s.irr, vector);
        if level {
            bit_set(&mut self.s.tmr, vector);
        } else {
            bit_clear(&mut self.s.tmr, vector);
        }
    }

    fn error(&mut self, bits: u32) {
        let first = self.s.esr_pending & bits != bits;
        self.s.esr_pending |= bits;
        let lvt = self.s.lvt[LVT_ERROR];
        if first && lvt & APIC_LVT_MASKED == 0 && (lvt as u8) >= 16 {
            bit_set(&mut self.s.irr, lvt as u8);
        }
    }

    fn eoi(&mut self) {
        if let Some(v) = highest(&self.s.isr) {
            bit_clear(&mut self.s.isr, v);
            // One entry per vector is enough: the I/O APIC's EOI handling is idempotent.
            if bit_test(&self.s.tmr, v) && !self.s.eoi_broadcasts.contains(&v) {
                self.s.eoi_broadcasts.push(v);
            }
        }
    }

    fn send_ipi(&mut self) {
        let lo = self.s.icr_low;
        let msg = ApicMessage {
            vector: lo as u8,
            delivery_mode: ((lo >> 8) & 7) as u8,
            logical: lo & APIC_DEST_LOGICAL != 0,
            dest: (self.s.icr_high >> 24) as u8,
            level: false,
        };
        let to_self = match lo & APIC_SHORT_MASK {
            APIC_DEST_SELF | APIC_DEST_ALLINC => true,
            APIC_DEST_ALLBUT => false,
            _ => self.matches_destination(msg.dest, msg.logical),
        };
        let to_others = match lo & APIC_SHORT_MASK {
            APIC_DEST_ALLINC | APIC_DEST_ALLBUT => true,
            APIC_DEST_SELF => false,
            _ => !to_self || msg.dest == 0xFF || msg.logical,
        };
        if to_self {
            if matches!(msg.delivery_mode, APIC_DM_FIXED | APIC_DM_LOWEST) && msg.vector < 16 {
                self.error(APIC_ESR_SEND_ILLEGAL);
            } else if msg.delivery_mode != APIC_DM_INIT && msg.delivery_mode != APIC_DM_STARTUP {
                self.deliver(&msg);
            }
        }
        if to_others {
            if self.s.ipis.len() < MAX_QUEUED_IPIS {
                self.s.ipis.push(Ipi { icr_low: lo, icr_high: self.s.icr_high });
            } else {
                log::debug!("lapic: IPI queue full, {lo:#x} dropped");
            }
        }
    }

    fn divisor(dcr: u32) -> u32 {
        let v = ((dcr & 8) >> 1) | (dcr & 3);
        if v == 7 {
            1
        } else {
            2 << v
        }
    }

    fn timer_period_ns(&self) -> u64 {
        let ns = u128::from(self.s.initial_count) * u128::from(self.s.timer_divisor) * 1_000_000_000
            / u128::from(LAPIC_BUS_HZ);
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    /// The timer's current count at `now`.
    pub fn current_count(&self, now: VirtualInstant) -> u32 {
        let Some(deadline) = self.s.timer_deadline else {
            return 0;
        };
        if self.timer_mode() == APIC_LVT_TIMER_TSCDEADLINE {
            return 0;
        }
        let period = self.timer_period_ns().max(1);
        let elapsed = now.0.saturating_sub(self.s.timer_start);
        let into = if self.timer_mode() == APIC_LVT_TIMER_PERIODIC {
            // Reloads happen whether or not the machine advanced the timer yet.
            elapsed % period
        } else if now.0 >= deadline {
            return 0;
        } else {
            elapsed
        };
        let ticks = u128::from(into) * u128::from(LAPIC_BUS_HZ) / 1_000_000_000 / u128::from(self.s.timer_divisor);
        self.s.initial_count.saturating_sub(u32::try_from(ticks).unwrap_or(u32::MAX))
    }

    /// A WRMSR to IA32_TSC_DEADLINE (SDM vol. 3, 11.5.4.1): `value` in TSC ticks, `at` the
    /// virtual instant the TSC reaches it (the machine converts; an instant not after `now`
    /// fires at once). Only TSC-deadline mode arms the timer; zero disarms it; other modes
    /// ignore the write.
    pub fn write_tsc_deadline(&mut self, value: u64, at: VirtualInstant, now: VirtualInstant) {
        if self.timer_mode() != APIC_LVT_TIMER_TSCDEADLINE {
            return;
        }
        if value == 0 {
            self.s.tsc_deadline_msr = 0;
            self.s.timer_deadline = None;
            return;
        }
        self.s.tsc_deadline_msr = value;
        self.s.timer_start = now.0;
        self.s.timer_deadline = Some(at.0.max(now.0));
    }

    /// IA32_TSC_DEADLINE as RDMSR returns it: the armed value, 0 once fired or disarmed, or in
    /// other timer modes.
    pub fn tsc_deadline(&self) -> u64 {
        if self.timer_mode() == APIC_LVT_TIMER_TSCDEADLINE && self.s.timer_deadline.is_some() {
            self.s.tsc_deadline_msr
        } else {
            0
        }
    }

    fn timer_mode(&self) -> u32 {
        self.s.lvt[LVT_TIMER] & (APIC_LVT_TIMER_PERIODIC | APIC_LVT_TIMER_TSCDEADLINE)
    }

    fn load_timer(&mut self, now: VirtualInstant, count: u32) {
        self.s.initial_count = count;
        self.s.timer_divisor = Self::divisor(self.s.dcr);
        self.s.timer_start = now.0;
        self.s.timer_deadline = (count != 0 && self.timer_mode() != APIC_LVT_TIMER_TSCDEADLINE)
            .then(|| now.0.saturating_add(self.timer_period_ns().max(1)));
    }

    fn timer_fire(&mut self) {
        let lvt = self.s.lvt[LVT_TIMER];
        if lvt & APIC_LVT_MASKED == 0 {
            self.accept_interrupt(lvt as u8, false);
        }
    }

    /// Reads the 32-bit register at `offset` (16-byte aligned).
    pub fn read_register(&mut self, offset: u64, now: VirtualInstant) -> u32 {
        let idx = |base: u64| ((offset - base) >> 4) as usize;
        match offset {
            APIC_ID => self.s.id,
            APIC_LVR => APIC_VERSION,
            APIC_TASKPRI => self.s.tpr,
            APIC_ARBPRI => 0,
            APIC_PROCPRI => u32::from(self.ppr()),
            APIC_LDR => self.s.ldr,
            APIC_DFR => self.s.dfr,
            APIC_SPIV => self.s.svr,
            0x100..=0x170 => self.s.isr[idx(APIC_ISR)],
            0x180..=0x1F0 => self.s.tmr[idx(APIC_TMR)],
            0x200..=0x270 => self.s.irr[idx(APIC_IRR)],
            APIC_ESR => self.s.esr,
            APIC_ICR => self.s.icr_low & !0x1000, // delivery status: idle
            APIC_ICR2 => self.s.icr_high,
            APIC_LVTT..=APIC_LVTERR => self.s.lvt[idx(APIC_LVTT)],
            APIC_TMICT => self.s.initial_count,
            APIC_TMCCT => self.current_count(now),
            APIC_TDCR => self.s.dcr,
            _ => {
                log::debug!("lapic: read of reserved register {offset:#x}");
                0
            }
        }
    }

    /// Writes the 32-bit register at `offset` (16-byte aligned).
    pub fn write_register(&mut self, offset: u64, v: u32, now: VirtualInstant) {
        match offset {
            APIC_ID => self.s.id = v & 0xFF00_0000,
            APIC_TASKPRI => self.s.tpr = v & 0xFF,
            APIC_EOI => self.eoi(),
            APIC_LDR => self.s.ldr = v & 0xFF00_0000,
            APIC_DFR => self.s.dfr = v | 0x0FFF_FFFF,
            APIC_SPIV => {
                self.s.svr = v & (0xFF | APIC_SPIV_APIC_ENABLED | APIC_SPIV_FOCUS_DISABLED);
                if !self.sw_enabled() {
                    for l in &mut self.s.lvt {
                        *l |= APIC_LVT_MASKED;
                    }
                }
            }
            APIC_ESR => {
                self.s.esr = self.s.esr_pending;
                self.s.esr_pending = 0;
            }
            APIC_ICR => {
                self.s.icr_low = v & 0x000C_CFFF;
                self.send_ipi();
            }
            APIC_ICR2 => self.s.icr_high = v & 0xFF00_0000,
            APIC_LVTT..=APIC_LVTERR => {
                let i = ((offset - APIC_LVTT) >> 4) as usize;
                let mut nv = (self.s.lvt[i] & !LVT_WRITABLE[i]) | (v & LVT_WRITABLE[i]);
                if !self.sw_enabled() {
                    nv |= APIC_LVT_MASKED;
                }
                if i == LVT_TIMER {
                    let old_mode = self.timer_mode();
                    self.s.lvt[i] = nv;
                    if self.timer_mode() != old_mode {
                        // A mode change stops the count (as on hardware for TSC-deadline).
                        self.s.timer_deadline = None;
                        self.s.initial_count = 0;
                    }
                } else {
                    self.s.lvt[i] = nv;
                }
            }
            APIC_TMICT => self.load_timer(now, v),
            APIC_TDCR => self.s.dcr = v & 0xB,
            APIC_LVR | APIC_ARBPRI | APIC_PROCPRI | APIC_RRR | APIC_TMCCT | 0x100..=0x270 => {
                log::debug!("lapic: write {v:#x} to read-only register {offset:#x} dropped")
            }
            _ => log::debug!("lapic: write {v:#x} to reserved register {offset:#x} dropped"),
        }
    }
}

impl MmioDevice for LocalApic {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        if data.len() == 4 && access.offset & 0xF == 0 && access.offset < LAPIC_MMIO_SIZE {
            data.copy_from_slice(&self.read_register(access.offset, access.now).to_le_bytes());
        } else {
            log::debug!("lapic: {}-byte read at {:#x}", data.len(), access.addr);
            data.fill(0xFF);
        }
    }

    fn write(&mut self, access: Access, data: &[u8]) {
        match data {
            &[a, b, c, d] if access.offset & 0xF == 0 && access.offset < LAPIC_MMIO_SIZE => {
                self.write_register(access.offset, u32::from_le_bytes([a, b, c, d]), access.now)
            }
            _ => log::debug!("lapic: {}-byte write at {:#x} dropped", data.len(), access.addr),
        }
    }
}

impl Timed for LocalApic {
    fn next_deadline(&self) -> Option<VirtualInstant> {
        self.s.timer_deadline.map(VirtualInstant)
    }

    fn advance_to(&mut self, now: VirtualInstant) {
        let Some(deadline) = self.s.timer_deadline else {
            return;
        };
        if now.0 < deadline {
            return;
        }
        // Interrupts that expire together coalesce in IRR, so fire once.
        self.timer_fire();
        if self.timer_mode() == APIC_LVT_TIMER_PERIODIC {
            let period = self.timer_period_ns().max(1);
            let periods = (now.0 - deadline) / period + 1;
            let start = deadline + (periods - 1) * period;
            self.s.timer_start = start;
            self.s.timer_deadline = Some(start + period);
        } else {
            self.s.timer_deadline = None;
            self.s.tsc_deadline_msr = 0;
        }
    }
}

impl base::Persist for LocalApic {
    type State = LocalApicState;
    type ConstructorArgs = ();
    type Error = std::convert::Infallible;
    fn save(&self) -> LocalApicState {
        self.state()
    }
    fn restore((): (), state: &LocalApicState) -> Result<Self, Self::Error> {
        Ok(Self::from_state(state.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: VirtualInstant = VirtualInstant(0);

    fn enabled() -> LocalApic {
        let mut a = LocalApic::new(0, true);
        a.write_register(APIC_SPIV, APIC_SPIV_APIC_ENABLED | 0xFF, T0);
        a
    }

    fn rd(a: &mut LocalApic, off: u64) -> u32 {
        let mut d = [0u8; 4];
        a.read(Access::at(off, T0), &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn test_lapic_reset_values() {
        let mut a = LocalApic::new(3, true);
        assert_eq!(rd(&mut a, APIC_ID), 3 << 24);
        assert_eq!(rd(&mut a, APIC_LVR), 0x0005_0014);
        assert_eq!(rd(&mut a, APIC_SPIV), 0xFF);
        assert_eq!(rd(&mut a, APIC_DFR), 0xFFFF_FFFF);
        assert_eq!(rd(&mut a, APIC_LVTT), APIC_LVT_MASKED);
        assert_eq!(rd(&mut a, APIC_LVT0), 0x700, "BSP LINT0: ExtINT, unmasked");
        assert_eq!(rd(&mut a, APIC_LVT1), APIC_LVT_MASKED);
        assert_eq!(a.base_msr(), 0xFEE0_0900);
        assert!(a.accepts_pic_interrupt());
        assert!(!LocalApic::new(1, false).accepts_pic_interrupt());
        a.accept_interrupt(0x40, false);
        assert_eq!(a.pending_vector(), None, "software-disabled: held in IRR");
        a.write_register(APIC_SPIV, APIC_SPIV_APIC_ENABLED, T0);
        assert_eq!(a.pending_vector(), Some(0x40));
        let mut ap = LocalApic::new(1, false);
        ap.set_base_msr(0xFEE0_0000);
        assert!(ap.accepts_pic_interrupt(), "globally disabled APIC: the INTR pin is direct");
    }

    #[test]
    fn test_lapic_priority_classes_and_eoi() {
        let mut a = enabled();
        a.accept_interrupt(0x31, false);
        a.accept_interrupt(0x52, false);
        a.accept_interrupt(0x3F, false);
        assert_eq!(a.pending_vector(), Some(0x52));
        assert_eq!(a.acknowledge(), Some(0x52));
        assert_eq!(rd(&mut a, APIC_PROCPRI), 0x50, "PPR follows the in-service class");
        assert_eq!(a.pending_vector(), None, "class 3 is below in-service class 5");
        // A higher class preempts.
        a.accept_interrupt(0x61, false);
        assert_eq!(a.acknowledge(), Some(0x61));
        assert_eq!(rd(&mut a, APIC_ISR + 0x30), 1 << 1, "ISR bit 0x61");
        // EOI clears the highest in-service vector first.
        a.write_register(APIC_EOI, 0, T0);
        assert_eq!(rd(&mut a, APIC_ISR + 0x30), 0);
        assert_eq!(rd(&mut a, APIC_ISR + 0x20), 1 << 18, "0x52 still in service");
        a.write_register(APIC_EOI, 0, T0);
        assert_eq!(a.pending_vector(), Some(0x3F));
        // TPR blocks classes at or below it.
        a.write_register(APIC_TASKPRI, 0x30, T0);
        assert_eq!(a.pending_vector(), None);
        assert_eq!(rd(&mut a, APIC_PROCPRI), 0x30);
        a.write_register(APIC_TASKPRI, 0x2F, T0);
        assert_eq!(a.acknowledge(), Some(0x3F));
        assert_eq!(a.acknowledge(), None, "0x31 is in the in-service class");
        a.write_register(APIC_EOI, 0, T0);
        assert_eq!(a.acknowledge(), Some(0x31));
        assert!(a.take_eoi_broadcasts().is_empty(), "edge vectors are not broadcast");
    }

    #[test]
    fn test_lapic_level_eoi_broadcast() {
        let mut a = enabled();
        a.accept_interrupt(0x41, true);
        assert_eq!(rd(&mut a, APIC_TMR + 0x20), 1 << 1);
        assert_eq!(a.acknowledge(), Some(0x41));
        a.write_register(APIC_EOI, 0, T0);
        assert_eq!(a.take_eoi_broadcasts(), vec![0x41]);
        assert!(a.take_eoi_broadcasts().is_empty());
    }

    #[test]
    fn test_lapic_illegal_vector_and_esr() {
        let mut a = enabled();
        a.write_register(APIC_LVTERR, 0xFE, T0);
        a.accept_interrupt(5, false);
        assert_eq!(a.pending_vector(), Some(0xFE), "LVT error interrupt");
        assert_eq!(rd(&mut a, APIC_ESR), 0, "ESR updates on write");
        a.write_register(APIC_ESR, 0, T0);
        assert_eq!(rd(&mut a, APIC_ESR), APIC_ESR_RECV_ILLEGAL);
        a.write_register(APIC_ESR, 0, T0);
        assert_eq!(rd(&mut a, APIC_ESR), 0);
    }

    #[test]
    fn test_lapic_self_ipi_and_others() {
        let mut a = enabled();
        a.write_register(APIC_ICR, APIC_DEST_SELF | 0x45, T0);
        assert_eq!(a.pending_vector(), Some(0x45));
        // Fixed, physical destination = own ID.
        a.write_register(APIC_ICR2, 0, T0);
        a.write_register(APIC_ICR, 0x66, T0);
        assert_eq!(a.pending_vector(), Some(0x66));
        assert!(a.take_ipis().is_empty());
        // Logical flat destination matching the LDR.
        a.write_register(APIC_LDR, 0x0100_0000, T0);
        a.write_register(APIC_ICR2, 0x0100_0000, T0);
        a.write_register(APIC_ICR, APIC_DEST_LOGICAL | 0x77, T0);
        assert_eq!(a.pending_vector(), Some(0x77));
        // INIT + SIPI to all others go to the machine.
        a.take_ipis();
        a.write_register(APIC_ICR, APIC_DEST_ALLBUT | APIC_INT_ASSERT | 0x500, T0);
        a.write_register(APIC_ICR, APIC_DEST_ALLBUT | 0x600 | 0x9A, T0);
        let ipis = a.take_ipis();
        assert_eq!(ipis.len(), 2);
        assert_eq!(ipis[1].icr_low & 0xFFF, 0x69A);
        // A guest cannot grow the queue without bound.
        for _ in 0..1000 {
            a.write_register(APIC_ICR, APIC_DEST_ALLBUT | 0x40, T0);
        }
        assert_eq!(a.take_ipis().len(), MAX_QUEUED_IPIS);
        // NMI to self.
        a.write_register(APIC_ICR, APIC_DEST_SELF | 0x400, T0);
        assert!(a.take_nmi());
        assert_eq!(rd(&mut a, APIC_ICR) & 0x1000, 0, "delivery status idle");
    }

    #[test]
    fn test_lapic_software_disable_masks_lvts() {
        let mut a = enabled();
        a.write_register(APIC_LVTT, 0x30, T0);
        assert_eq!(rd(&mut a, APIC_LVTT), 0x30);
        a.write_register(APIC_SPIV, 0xFF, T0);
        assert_eq!(rd(&mut a, APIC_LVTT), APIC_LVT_MASKED | 0x30);
        a.write_register(APIC_LVTT, 0x30, T0);
        assert_eq!(rd(&mut a, APIC_LVTT) & APIC_LVT_MASKED, APIC_LVT_MASKED, "cannot unmask");
        assert!(!a.accepts_pic_interrupt());
    }

    #[test]
    fn test_lapic_timer_one_shot() {
        let mut a = enabled();
        a.write_register(APIC_TDCR, 0x3, T0); // divide by 16
        a.write_register(APIC_LVTT, 0x40, T0);
        a.write_register(APIC_TMICT, 1000, VirtualInstant(500));
        // 1000 ticks × 16 ns.
        assert_eq!(a.next_deadline(), Some(VirtualInstant(500 + 16_000)));
        assert_eq!(a.read_register(APIC_TMCCT, VirtualInstant(500 + 1600)), 900);
        a.advance_to(VirtualInstant(16_499));
        assert_eq!(a.pending_vector(), None);
        a.advance_to(VirtualInstant(16_500));
        assert_eq!(a.pending_vector(), Some(0x40));
        assert_eq!(a.next_deadline(), None);
        assert_eq!(a.read_register(APIC_TMCCT, VirtualInstant(20_000)), 0);
        // Divide by 1 (1011b), masked: counts but does not interrupt.
        a.acknowledge();
        a.write_register(APIC_TDCR, 0xB, T0);
        a.write_register(APIC_LVTT, APIC_LVT_MASKED | 0x40, T0);
        a.write_register(APIC_TMICT, 10, VirtualInstant(100));
        assert_eq!(a.next_deadline(), Some(VirtualInstant(110)));
        a.advance_to(VirtualInstant(200));
        assert_eq!(rd(&mut a, APIC_IRR + 0x20), 0);
        // The longest count (2^32 - 1 ticks divided by 128) does not overflow.
        a.write_register(APIC_TDCR, 0xA, T0);
        a.write_register(APIC_TMICT, u32::MAX, VirtualInstant(1));
        assert_eq!(a.next_deadline(), Some(VirtualInstant(1 + u64::from(u32::MAX) * 128)));
        assert_eq!(a.read_register(APIC_TMCCT, VirtualInstant(1 + 128 * 1000)), u32::MAX - 1000);
        // Initial count 0 stops the timer.
        a.write_register(APIC_TMICT, 0, VirtualInstant(300));
        assert_eq!(a.next_deadline(), None);
    }

    /// TSC-deadline mode (SDM vol. 3, 11.5.4.1): armed by the MSR only in that mode, fires
    /// once at the deadline and reads back 0 afterwards, zero disarms, the count registers
    /// read 0, and a mode change disarms.
    #[test]
    fn test_lapic_tsc_deadline_mode() {
        let mut a = enabled();
        let t = |ns| VirtualInstant(ns);
        a.write_tsc_deadline(5000, t(5000), T0);
        assert_eq!(a.next_deadline(), None, "one-shot mode ignores the MSR");
        assert_eq!(a.tsc_deadline(), 0);
        a.write_register(APIC_LVTT, APIC_LVT_TIMER_TSCDEADLINE | 0xE0, T0);
        a.write_register(APIC_TMICT, 100, T0);
        assert_eq!(a.next_deadline(), None, "initial count ignored in TSC-deadline mode");
        a.write_tsc_deadline(7000, t(5000), t(100));
        assert_eq!(a.next_deadline(), Some(t(5000)));
        assert_eq!(a.tsc_deadline(), 7000);
        assert_eq!(rd(&mut a, APIC_TMCCT), 0);
        a.advance_to(t(4999));
        assert_eq!(a.pending_vector(), None);
        a.advance_to(t(5000));
        assert_eq!(a.pending_vector(), Some(0xE0));
        assert_eq!(a.tsc_deadline(), 0, "cleared when it fires");
        assert_eq!(a.next_deadline(), None);
        // A deadline already passed fires at once; zero disarms.
        a.write_tsc_deadline(1, t(10), t(6000));
        assert_eq!(a.next_deadline(), Some(t(6000)));
        a.write_tsc_deadline(0, t(0), t(6000));
        assert_eq!(a.next_deadline(), None);
        a.write_tsc_deadline(9000, t(9000), t(6000));
        a.write_register(APIC_LVTT, 0xE0, t(6000));
        assert_eq!(a.next_deadline(), None, "switching to one-shot disarms");
        assert_eq!(a.tsc_deadline(), 0);
    }

    #[test]
    fn test_lapic_timer_periodic() {
        let mut a = enabled();
        a.write_register(APIC_TDCR, 0x0, T0); // divide by 2
        a.write_register(APIC_LVTT, APIC_LVT_TIMER_PERIODIC | 0xEF, T0);
        a.write_register(APIC_TMICT, 50, T0);
        assert_eq!(a.next_deadline(), Some(VirtualInstant(100)));
        a.advance_to(VirtualInstant(100));
        assert_eq!(a.acknowledge(), Some(0xEF));
        a.write_register(APIC_EOI, 0, T0);
        assert_eq!(a.next_deadline(), Some(VirtualInstant(200)));
        assert_eq!(a.read_register(APIC_TMCCT, VirtualInstant(150)), 25, "reloaded at 100");
        assert_eq!(a.read_register(APIC_TMCCT, VirtualInstant(260)), 20, "reloads before advance_to runs");
        // Skipping several periods fires once and keeps the phase.
        a.advance_to(VirtualInstant(1050));
        assert_eq!(a.acknowledge(), Some(0xEF));
        assert_eq!(a.next_deadline(), Some(VirtualInstant(1100)));
        // Switching to one-shot stops it.
        a.write_register(APIC_LVTT, 0xEF, T0);
        assert_eq!(a.next_deadline(), None);
    }

    #[test]
    fn test_lapic_divider_values() {
        let expect = [(0x0, 2), (0x1, 4), (0x2, 8), (0x3, 16), (0x8, 32), (0x9, 64), (0xA, 128), (0xB, 1)];
        for (dcr, div) in expect {
            assert_eq!(LocalApic::divisor(dcr), div, "{dcr:#x}");
        }
    }

    #[test]
    fn test_lapic_state_roundtrip_and_random_accesses() {
        let mut a = enabled();
        a.accept_interrupt(0x80, true);
        a.write_register(APIC_LVTT, APIC_LVT_TIMER_PERIODIC | 0x30, T0);
        a.write_register(APIC_TMICT, 1000, T0);
        let b = LocalApic::from_state(a.state());
        assert_eq!(a, b);
        let mut x = 0xDEAD_BEEF_CAFE_F00Du64;
        for i in 0..50_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = x % 0x1004;
            let width = [1usize, 2, 4, 8][(x >> 14) as usize % 4];
            let mut buf = (x >> 20).to_le_bytes();
            let acc = Access::at(off, VirtualInstant(i * 7));
            if x & (1 << 60) != 0 {
                a.write(acc, &buf[..width]);
            } else {
                a.read(acc, &mut buf[..width]);
            }
            a.advance_to(VirtualInstant(i * 7));
            a.acknowledge();
        }
        assert_eq!(rd(&mut a, APIC_LVR), APIC_VERSION);
    }
}
