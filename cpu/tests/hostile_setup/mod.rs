//! The hostile-guest setup shared by cpu/tests/hostile.rs (the interpreter must survive random
//! byte streams) and jit/tests/hostile_lockstep.rs (the JIT must end every stream exactly where
//! the interpreter does): the memory layout, descriptor tables, handlers and start state of each
//! mode, a noisy bus and the seeded generator.
#![allow(dead_code)]

use base::{AccessSize, GuestPhysAddr, PortAddr};
use cpu::state::{cr, seg_attr};
use cpu::{CpuBus, CpuState, RunExit, SegReg, Segment};
use mmu::PhysMemory;

/// The observable outcome of a run: exit and architectural state (memory is compared apart).
pub fn outcome(exit: RunExit, cpu: &CpuState) -> String {
    format!(
        "{exit:?} icount={} rip={:#x} gpr={:x?} rflags={:#x} seg={:x?} cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x} cpl={} \
         halted={} xmm={:x?} mxcsr={:#x}",
        cpu.icount,
        cpu.rip,
        cpu.gpr,
        cpu.rflags(),
        cpu.seg.map(|s| (s.selector, s.base, s.limit, s.attr)),
        cpu.cr0,
        cpu.cr3,
        cpu.cr4,
        cpu.efer,
        cpu.cpl,
        cpu.halted,
        cpu.fpu.xmm.map(u128::from_le_bytes),
        cpu.fpu.mxcsr
    )
}

pub const RAM: u64 = 4 << 20;
pub const MMIO_BASE: u64 = 0x0080_0000;
pub const GDT: u64 = 0x2000;
pub const IDT: u64 = 0x3000;
pub const TSS: u64 = 0x4800;
pub const HANDLERS: u64 = 0x5000;
pub const PML4: u64 = 0x8000;
pub const CODE: u64 = 0x10000;
pub const CODE_LEN: usize = 0x1000;
pub const DATA: u64 = 0x20000;
pub const STACK_TOP: u64 = 0x70000;
pub const RING0_STACK: u64 = 0x78000;

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A bus with RAM, one MMIO window and ports that return pseudo-random data.
pub struct Bus {
    pub mem: PhysMemory,
    pub noise: u64,
    /// Raise random external interrupts.
    pub irqs: bool,
}

impl Bus {
    pub fn noise(&mut self) -> u64 {
        self.noise = self.noise.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.noise >> 11
    }
}

impl CpuBus for Bus {
    fn memory(&mut self) -> &mut PhysMemory {
        &mut self.mem
    }
    fn mmio_read(&mut self, _: u32, _: GuestPhysAddr, s: AccessSize) -> u64 {
        self.noise() & s.mask()
    }
    fn mmio_write(&mut self, _: u32, _: GuestPhysAddr, _: AccessSize, _: u64) {}
    fn port_read(&mut self, _: PortAddr, s: AccessSize) -> u32 {
        (self.noise() & s.mask()) as u32
    }
    fn port_write(&mut self, _: PortAddr, _: AccessSize, _: u32) {}
    fn interrupt_pending(&mut self) -> bool {
        self.irqs && self.noise().is_multiple_of(64)
    }
    fn acknowledge_interrupt(&mut self) -> Option<u8> {
        Some(0x20 + (self.noise() % 16) as u8)
    }
    fn stop_requested(&mut self) -> bool {
        false
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Real,
    Prot16,
    Prot32,
    Long64,
    Prot32Ring3,
    Long64Ring3,
}

pub fn desc(base: u64, limit: u64, access: u64, flags: u64) -> u64 {
    (limit & 0xFFFF)
        | ((base & 0xFF_FFFF) << 16)
        | (access << 40)
        | (((limit >> 16) & 0xF) << 48)
        | (flags << 52)
        | (((base >> 24) & 0xFF) << 56)
}

// GDT selectors.
pub const CODE32: u16 = 0x08;
pub const DATA32: u16 = 0x10;
pub const CODE16: u16 = 0x18;
pub const DATA16: u16 = 0x20;
pub const CODE64: u16 = 0x28;
pub const HCODE16: u16 = 0x30;
pub const CODE32_R3: u16 = 0x38 | 3;
pub const DATA32_R3: u16 = 0x40 | 3;
pub const CODE64_R3: u16 = 0x48 | 3;
pub const TSS_SEL: u16 = 0x50;

pub fn w(mem: &mut PhysMemory, addr: u64, bytes: &[u8]) {
    mem.load(GuestPhysAddr(addr), bytes).unwrap();
}

/// Builds the machine for `mode` with `code` at CODE; returns the CPU state.
pub fn setup(mode: Mode, mem: &mut PhysMemory, rng: &mut Rng) -> CpuState {
    // Wipe low memory (the previous stream may have scribbled anywhere).
    let zero = vec![0u8; 0x80000];
    w(mem, 0, &zero);
    // Random code and data.
    let mut code = vec![0u8; CODE_LEN];
    for b in code.iter_mut() {
        *b = rng.next() as u8;
    }
    w(mem, CODE, &code);
    let mut data = vec![0u8; 0x1000];
    for b in data.iter_mut() {
        *b = rng.next() as u8;
    }
    w(mem, DATA, &data);
    // GDT.
    let gdt = [
        0u64,
        desc(0, 0xFFFFF, 0x9A, 0xC),   // CODE32
        desc(0, 0xFFFFF, 0x92, 0xC),   // DATA32
        desc(CODE, 0xFFFF, 0x9A, 0x0), // CODE16 (base = CODE)
        desc(0, 0xFFFF, 0x92, 0x0),    // DATA16
        desc(0, 0xFFFFF, 0x9A, 0xA),   // CODE64
        desc(0, 0xFFFF, 0x9A, 0x0),    // HCODE16: handlers
        desc(0, 0xFFFFF, 0xFA, 0xC),   // CODE32 DPL3
        desc(0, 0xFFFFF, 0xF2, 0xC),   // DATA32 DPL3
        desc(0, 0xFFFFF, 0xFA, 0xA),   // CODE64 DPL3
        desc(TSS, 0x67, 0x89, 0x0),    // 32-bit TSS (available); the 64-bit TSS is 16 bytes:
        0,                             // upper half (base 63:32 = 0)
    ];
    for (k, d) in gdt.iter().enumerate() {
        w(mem, GDT + 8 * k as u64, &d.to_le_bytes());
    }
    // TSS: ESP0/SS0 for the 32-bit TSS, RSP0 for the 64-bit one (same memory, both read).
    let long = matches!(mode, Mode::Long64 | Mode::Long64Ring3);
    let mut tss = [0u8; 0x68];
    tss[4..8].copy_from_slice(&(RING0_STACK as u32).to_le_bytes()); // ESP0 / RSP0 low
    if !long {
        tss[8..10].copy_from_slice(&DATA32.to_le_bytes()); // SS0
    }
    w(mem, TSS, &tss);
    // Handlers: per vector either "return" or "halt".
    let errcode = |v: u8| matches!(v, 8 | 10..=14 | 17 | 21 | 29 | 30);
    for v in 0..=255u8 {
        let halt = rng.next().is_multiple_of(4);
        let mut h: Vec<u8> = Vec::new();
        match mode {
            Mode::Real => {}
            Mode::Prot16 => {
                if errcode(v) {
                    h.extend_from_slice(&[0x83, 0xC4, 0x02]); // add sp, 2
                }
            }
            Mode::Prot32 | Mode::Prot32Ring3 => {
                if errcode(v) {
                    h.extend_from_slice(&[0x83, 0xC4, 0x04]); // add esp, 4
                }
            }
            Mode::Long64 | Mode::Long64Ring3 => {
                if errcode(v) {
                    h.extend_from_slice(&[0x48, 0x83, 0xC4, 0x08]); // add rsp, 8
                }
            }
        }
        if halt {
            h.extend_from_slice(&[0xF4, 0xEB, 0xFD]); // hlt; jmp back to hlt
        } else if long {
            h.extend_from_slice(&[0x48, 0xCF]); // iretq
        } else {
            h.push(0xCF); // iret / iretd
        }
        w(mem, HANDLERS + u64::from(v) * 16, &h);
    }
    // IVT and IDT.
    for v in 0..256u64 {
        let off = HANDLERS + v * 16;
        match mode {
            Mode::Real => {
                let seg = (HANDLERS >> 4) as u16;
                let ip = (v * 16) as u16;
                let mut e = [0u8; 4];
                e[..2].copy_from_slice(&ip.to_le_bytes());
                e[2..].copy_from_slice(&seg.to_le_bytes());
                w(mem, v * 4, &e);
            }
            Mode::Prot16 => {
                let g = (off & 0xFFFF) | (u64::from(HCODE16) << 16) | (0x86u64 << 40);
                w(mem, IDT + v * 8, &g.to_le_bytes());
            }
            Mode::Prot32 | Mode::Prot32Ring3 => {
                let g = (off & 0xFFFF) | (u64::from(CODE32) << 16) | (0xEEu64 << 40) | ((off >> 16) << 48);
                w(mem, IDT + v * 8, &g.to_le_bytes());
            }
            Mode::Long64 | Mode::Long64Ring3 => {
                let g = (off & 0xFFFF) | (u64::from(CODE64) << 16) | (0xEEu64 << 40) | ((off >> 16) << 48);
                w(mem, IDT + v * 16, &g.to_le_bytes());
                w(mem, IDT + v * 16 + 8, &0u64.to_le_bytes());
            }
        }
    }
    // Identity paging for long mode: PML4 -> PDPT -> PD of 2 MiB pages (first 1 GiB), user-accessible.
    let pdpt = PML4 + 0x1000;
    let pd = PML4 + 0x2000;
    w(mem, PML4, &(pdpt | 7).to_le_bytes());
    w(mem, pdpt, &(pd | 7).to_le_bytes());
    for k in 0..512u64 {
        w(mem, pd + 8 * k, &((k << 21) | 0x87).to_le_bytes());
    }

    let mut cpu = CpuState::new();
    for g in cpu.gpr.iter_mut() {
        *g = rng.next() >> (rng.next() % 64);
    }
    for x in cpu.fpu.xmm.iter_mut() {
        *x = (u128::from(rng.next()) << 64 | u128::from(rng.next())).to_le_bytes();
    }
    let sel_seg = |sel: u16, raw: u64| Segment::from_descriptor(sel, raw);
    let flat_data = sel_seg(DATA32, gdt[2] | (1 << 40));
    match mode {
        Mode::Real => {
            let mut cs = Segment::real((CODE >> 4) as u16);
            cs.attr |= seg_attr::CODE;
            cpu.seg = [Segment::real((DATA >> 4) as u16); 6];
            cpu.seg[SegReg::Cs as usize] = cs;
            cpu.seg[SegReg::Ss as usize] = Segment::real(((STACK_TOP - 0x10000) >> 4) as u16);
            cpu.gpr[4] = 0xFFF0;
            cpu.rip = 0;
            cpu.idtr.base = 0;
            cpu.idtr.limit = 0x3FF;
        }
        _ => {
            cpu.cr0 |= cr::CR0_PE;
            // SSE enabled, so random streams reach the SSE instructions (and the JIT's inline
            // forms of them) rather than #UD.
            cpu.cr4 |= cr::CR4_OSFXSR;
            cpu.gdtr.base = GDT;
            cpu.gdtr.limit = (gdt.len() * 8 - 1) as u16;
            cpu.idtr.base = IDT;
            cpu.idtr.limit = if long { 256 * 16 - 1 } else { 256 * 8 - 1 };
            cpu.tr = sel_seg(TSS_SEL, gdt[10] | (if long { 0xB } else { 0x9 } << 40));
            cpu.seg = [flat_data; 6];
            cpu.gpr[4] = STACK_TOP;
            match mode {
                Mode::Prot16 => {
                    cpu.seg[SegReg::Cs as usize] = sel_seg(CODE16, gdt[3] | (1 << 40));
                    cpu.seg =
                        cpu.seg.map(|s| if s.selector == DATA32 { sel_seg(DATA16, gdt[4] | (1 << 40)) } else { s });
                    cpu.gpr[4] = 0xFFF0;
                    cpu.rip = 0;
                }
                Mode::Prot32 => {
                    cpu.seg[SegReg::Cs as usize] = sel_seg(CODE32, gdt[1] | (1 << 40));
                    cpu.rip = CODE;
                }
                Mode::Prot32Ring3 => {
                    cpu.seg = [sel_seg(DATA32_R3, gdt[8] | (1 << 40)); 6];
                    cpu.seg[SegReg::Cs as usize] = sel_seg(CODE32_R3, gdt[7] | (1 << 40));
                    cpu.cpl = 3;
                    cpu.rip = CODE;
                }
                Mode::Long64 | Mode::Long64Ring3 => {
                    cpu.cr4 |= cr::CR4_PAE;
                    cpu.cr3 = PML4;
                    cpu.cr0 |= cr::CR0_PG;
                    cpu.efer |= cr::EFER_LME | cr::EFER_LMA;
                    if mode == Mode::Long64Ring3 {
                        cpu.seg = [sel_seg(DATA32_R3, gdt[8] | (1 << 40)); 6];
                        cpu.seg[SegReg::Cs as usize] = sel_seg(CODE64_R3, gdt[9] | (1 << 40));
                        cpu.cpl = 3;
                    } else {
                        cpu.seg[SegReg::Cs as usize] = sel_seg(CODE64, gdt[5] | (1 << 40));
                    }
                    cpu.rip = CODE;
                }
                Mode::Real => unreachable!(),
            }
        }
    }
    if rng.next().is_multiple_of(2) {
        cpu.rflags |= cpu::state::rflags::IF;
    }
    cpu
}

pub fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    if let Some(h) = v.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()
    } else {
        v.parse().ok()
    }
}
