//! Random guests for the machine-level fuzz campaign (issue 11): each programs the timers at
//! random (PIT channel 0 mode and count, the 8259s initialised or not and their masks, the local
//! APIC timer, the RTC's interrupt sources) and then runs either random bytes or a `sti; hlt`
//! loop. Whatever they do, a run must end within its instruction or virtual-time bound at a
//! small host cost.

use crate::checks::{install_idt32_all, install_ivt_all};
use crate::layout::{asm, build_with, Mode, PAYLOAD};
use crate::Rom;
use iced_x86::code_asm::*;
use iced_x86::IcedError;

/// A small deterministic PRNG (splitmix64), so a seed names a guest.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// Address of the interrupt handler every vector points at.
const HANDLER: u64 = PAYLOAD + 0x1800;
const IDT: u64 = 0x1000;
const IDTR: u64 = 0x0680;
const LAPIC: u64 = 0xFEE0_0000;

/// The random guest named by `seed`, running in `mode`.
pub fn random_timer_guest(seed: u64, mode: Mode) -> Rom {
    build_random(seed, mode).expect("random guest assembles")
}

fn small_count(r: &mut SplitMix) -> u32 {
    match r.below(4) {
        0 => 1 + r.below(3) as u32,
        1 => r.below(64) as u32,
        2 => r.below(0x1_0000) as u32,
        _ => r.next_u64() as u32,
    }
}

fn build_random(seed: u64, mode: Mode) -> Result<Rom, IcedError> {
    let mut r = SplitMix(seed);
    let bits = match mode {
        Mode::Real => 16,
        Mode::Protected32 => 32,
        Mode::Long64 => 64,
    };
    // One handler for every vector: EOI to the local APIC (32-bit only) and the master 8259, or
    // (one time in four) no EOI at all, then return.
    let eoi = !r.one_in(4);
    let handler = asm(bits, HANDLER, |a| {
        if eoi {
            if bits == 32 {
                a.mov(dword_ptr(LAPIC + 0xB0), 0u32)?;
            }
            if bits == 16 {
                a.push(ax)?;
            } else if bits == 32 {
                a.push(eax)?;
            } else {
                a.push(rax)?;
            }
            a.mov(al, 0x20u32)?;
            a.out(0x20u32, al)?;
            if bits == 16 {
                a.pop(ax)?;
            } else if bits == 32 {
                a.pop(eax)?;
            } else {
                a.pop(rax)?;
            }
        }
        match bits {
            16 => a.iret(),
            32 => a.iretd(),
            _ => a.iretq(),
        }
    })?;
    let body_random = r.one_in(2);
    let body: Vec<u8> = (0..(16 + r.below(240))).map(|_| r.next_u64() as u8).collect();
    let choices: Vec<u64> = (0..32).map(|_| r.next_u64()).collect();
    build_with(
        mode,
        |a| {
            let mut c = choices.iter().copied();
            let mut next = move || c.next().unwrap_or(0);
            match mode {
                Mode::Real => install_ivt_all(a, HANDLER)?,
                Mode::Protected32 => install_idt32_all(a, IDT, IDTR, HANDLER)?,
                Mode::Long64 => {} // no IDT: an interrupt or fault ends in a triple fault
            }
            // The 8259s: initialised with a random mask, or left alone.
            if next() % 3 != 0 {
                for (port, bytes) in [(0x20u32, [0x11u32, 0x20, 0x04, 0x01]), (0xA0, [0x11, 0x28, 0x02, 0x01])] {
                    a.mov(al, bytes[0])?;
                    a.out(port, al)?;
                    for &b in &bytes[1..] {
                        a.mov(al, b)?;
                        a.out(port + 1, al)?;
                    }
                }
            }
            a.mov(al, (next() & 0xFF) as u32)?;
            a.out(0x21u32, al)?;
            a.mov(al, (next() & 0xFF) as u32)?;
            a.out(0xA1u32, al)?;
            // PIT channel 0: a random mode, count often tiny.
            let pit_mode = (next() % 6) as u32;
            let count = match next() % 3 {
                0 => 1 + (next() % 3) as u32,
                1 => (next() % 64) as u32,
                _ => (next() & 0xFFFF) as u32,
            };
            a.mov(al, 0x30 | (pit_mode << 1))?;
            a.out(0x43u32, al)?;
            a.mov(al, count & 0xFF)?;
            a.out(0x40u32, al)?;
            a.mov(al, (count >> 8) & 0xFF)?;
            a.out(0x40u32, al)?;
            // RTC: a random periodic rate and random interrupt enables (PIE, AIE, UIE).
            a.mov(al, 0x0Au32)?;
            a.out(0x70u32, al)?;
            a.mov(al, 0x20 | (next() & 0xF) as u32)?;
            a.out(0x71u32, al)?;
            a.mov(al, 0x0Bu32)?;
            a.out(0x70u32, al)?;
            a.mov(al, (next() & 0x70) as u32 | 0x02)?;
            a.out(0x71u32, al)?;
            // The local APIC timer (reachable from flat 32-bit code).
            if mode == Mode::Protected32 {
                let svr = if next() % 4 == 0 { 0xFF } else { 0x1FF };
                let lvt = (((next() % 3) as u32) << 17)
                    | (u32::from(next() % 4 == 0) << 16)
                    | (0x20 + (next() % 0x20) as u32);
                a.mov(dword_ptr(LAPIC + 0xF0), svr)?;
                a.mov(dword_ptr(LAPIC + 0x3E0), (next() & 0xB) as u32)?;
                a.mov(dword_ptr(LAPIC + 0x320), lvt)?;
                let mut rr = SplitMix(next());
                a.mov(dword_ptr(LAPIC + 0x380), small_count(&mut rr))?;
            }
            a.sti()?;
            if body_random {
                a.db(&body)?;
            }
            let mut again = a.create_label();
            a.set_label(&mut again)?;
            a.hlt()?;
            a.jmp(again)
        },
        vec![handler],
    )
}
