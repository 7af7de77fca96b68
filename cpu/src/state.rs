//! Architectural state. `#[repr(C)]` so generated code can reach fields by `offset_of!`.

use crate::flags::LazyFlags;
use mmu::SoftTlb;

/// RFLAGS bits.
pub mod rflags {
    /// Carry.
    pub const CF: u64 = 1 << 0;
    /// Reserved, always 1.
    pub const FIXED1: u64 = 1 << 1;
    /// Parity.
    pub const PF: u64 = 1 << 2;
    /// Auxiliary carry.
    pub const AF: u64 = 1 << 4;
    /// Zero.
    pub const ZF: u64 = 1 << 6;
    /// Sign.
    pub const SF: u64 = 1 << 7;
    /// Trap.
    pub const TF: u64 = 1 << 8;
    /// Interrupt enable.
    pub const IF: u64 = 1 << 9;
    /// Direction.
    pub const DF: u64 = 1 << 10;
    /// Overflow.
    pub const OF: u64 = 1 << 11;
    /// I/O privilege level (2 bits).
    pub const IOPL: u64 = 3 << 12;
    /// Nested task.
    pub const NT: u64 = 1 << 14;
    /// Resume.
    pub const RF: u64 = 1 << 16;
    /// Virtual-8086 mode.
    pub const VM: u64 = 1 << 17;
    /// Alignment check.
    pub const AC: u64 = 1 << 18;
    /// Virtual interrupt flag.
    pub const VIF: u64 = 1 << 19;
    /// Virtual interrupt pending.
    pub const VIP: u64 = 1 << 20;
    /// CPUID available.
    pub const ID: u64 = 1 << 21;
    /// The six arithmetic status flags.
    pub const STATUS: u64 = CF | PF | AF | ZF | SF | OF;
}

/// Control register bits used by the CPU core.
pub mod cr {
    /// CR0: protection enable.
    pub const CR0_PE: u64 = 1 << 0;
    /// CR0: monitor coprocessor.
    pub const CR0_MP: u64 = 1 << 1;
    /// CR0: emulation.
    pub const CR0_EM: u64 = 1 << 2;
    /// CR0: task switched.
    pub const CR0_TS: u64 = 1 << 3;
    /// CR0: extension type (hardwired 1).
    pub const CR0_ET: u64 = 1 << 4;
    /// CR0: numeric error.
    pub const CR0_NE: u64 = 1 << 5;
    /// CR0: write protect.
    pub const CR0_WP: u64 = 1 << 16;
    /// CR0: alignment mask.
    pub const CR0_AM: u64 = 1 << 18;
    /// CR0: not write-through.
    pub const CR0_NW: u64 = 1 << 29;
    /// CR0: cache disable.
    pub const CR0_CD: u64 = 1 << 30;
    /// CR0: paging.
    pub const CR0_PG: u64 = 1 << 31;
    /// CR4: page size extensions.
    pub const CR4_PSE: u64 = 1 << 4;
    /// CR4: physical address extension.
    pub const CR4_PAE: u64 = 1 << 5;
    /// CR4: virtual-8086 mode extensions.
    pub const CR4_VME: u64 = 1 << 0;
    /// CR4: protected-mode virtual interrupts.
    pub const CR4_PVI: u64 = 1 << 1;
    /// CR4: debugging extensions (I/O breakpoints; DR4/DR5 are not aliases).
    pub const CR4_DE: u64 = 1 << 3;
    /// CR4: page global enable.
    pub const CR4_PGE: u64 = 1 << 7;
    /// CR4: OS supports FXSAVE.
    pub const CR4_OSFXSR: u64 = 1 << 9;
    /// CR4: OS supports SIMD exceptions.
    pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
    /// CR4: OS supports XSAVE and XCR0.
    pub const CR4_OSXSAVE: u64 = 1 << 18;
    /// EFER: syscall enable.
    pub const EFER_SCE: u64 = 1 << 0;
    /// EFER: long mode enable.
    pub const EFER_LME: u64 = 1 << 8;
    /// EFER: long mode active.
    pub const EFER_LMA: u64 = 1 << 10;
    /// EFER: no-execute enable.
    pub const EFER_NXE: u64 = 1 << 11;
}

/// Segment register indices (the order of the ModRM sreg field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum SegReg {
    /// ES.
    Es = 0,
    /// CS.
    Cs = 1,
    /// SS.
    Ss = 2,
    /// DS.
    Ds = 3,
    /// FS.
    Fs = 4,
    /// GS.
    Gs = 5,
}

/// A segment register: the visible selector and the hidden descriptor cache.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    /// Visible selector.
    pub selector: u16,
    /// Descriptor attribute bits 8..15 and 20..23 of the high dword, packed as
    /// `type(4) S(1) DPL(2) P(1) | AVL(1) L(1) D/B(1) G(1)` in bits 0..11.
    pub attr: u16,
    /// Effective limit in bytes (granularity already applied).
    pub limit: u32,
    /// Base address.
    pub base: u64,
}

/// Segment attribute bits (in [`Segment::attr`]).
pub mod seg_attr {
    /// Accessed (type bit 0).
    pub const ACCESSED: u16 = 1 << 0;
    /// Writable data / readable code (type bit 1).
    pub const RW: u16 = 1 << 1;
    /// Expand-down data / conforming code (type bit 2).
    pub const DC: u16 = 1 << 2;
    /// Code segment (type bit 3).
    pub const CODE: u16 = 1 << 3;
    /// Code or data (not system).
    pub const S: u16 = 1 << 4;
    /// Present.
    pub const P: u16 = 1 << 7;
    /// 64-bit code segment.
    pub const L: u16 = 1 << 9;
    /// Default operation size 32 bits / big stack.
    pub const DB: u16 = 1 << 10;
    /// Granularity 4 KiB.
    pub const G: u16 = 1 << 11;
}

impl Segment {
    /// A real-mode segment for `selector`: base = selector × 16, 64 KiB limit.
    pub fn real(selector: u16) -> Self {
        Segment {
            selector,
            attr: seg_attr::P | seg_attr::S | seg_attr::RW | seg_attr::ACCESSED,
            limit: 0xFFFF,
            base: u64::from(selector) << 4,
        }
    }

    /// Descriptor privilege level.
    pub fn dpl(&self) -> u8 {
        ((self.attr >> 5) & 3) as u8
    }

    /// Builds the cache from a raw 8-byte descriptor.
    pub fn from_descriptor(selector: u16, raw: u64) -> Self {
        let base = ((raw >> 16) & 0xFF_FFFF) | (((raw >> 56) & 0xFF) << 24);
        let mut limit = ((raw & 0xFFFF) | ((raw >> 32) & 0xF_0000)) as u32;
        let attr = (((raw >> 40) & 0xFF) | (((raw >> 52) & 0xF) << 8)) as u16;
        if attr & seg_attr::G != 0 {
            limit = (limit << 12) | 0xFFF;
        }
        Segment { selector, attr, limit, base }
    }
}

/// GDTR/IDTR.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DescriptorTable {
    /// Linear base.
    pub base: u64,
    /// Limit in bytes.
    pub limit: u16,
}

/// The operating mode, as far as instruction decoding and address sizes are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMode {
    /// Real-address mode.
    Real,
    /// Protected mode with a 16-bit code segment.
    Protected16,
    /// Protected mode with a 32-bit code segment (or compatibility mode with D=1).
    Protected32,
    /// 64-bit mode.
    Long64,
}

impl CpuMode {
    /// Decoder bitness.
    pub fn bitness(self) -> u32 {
        match self {
            CpuMode::Real | CpuMode::Protected16 => 16,
            CpuMode::Protected32 => 32,
            CpuMode::Long64 => 64,
        }
    }
}

/// Model-specific registers the core keeps.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Msrs {
    /// IA32_STAR.
    pub star: u64,
    /// IA32_LSTAR.
    pub lstar: u64,
    /// IA32_CSTAR.
    pub cstar: u64,
    /// IA32_FMASK.
    pub sfmask: u64,
    /// IA32_KERNEL_GS_BASE.
    pub kernel_gs_base: u64,
    /// IA32_SYSENTER_CS.
    pub sysenter_cs: u64,
    /// IA32_SYSENTER_ESP.
    pub sysenter_esp: u64,
    /// IA32_SYSENTER_EIP.
    pub sysenter_eip: u64,
    /// IA32_APIC_BASE.
    pub apic_base: u64,
    /// IA32_PAT.
    pub pat: u64,
    /// IA32_MISC_ENABLE.
    pub misc_enable: u64,
    /// TSC = instructions retired + this offset (WRMSR to IA32_TSC adjusts it).
    pub tsc_offset: u64,
    /// IA32_TSC_AUX.
    pub tsc_aux: u64,
    /// IA32_MTRR_DEF_TYPE (read back as written; memory types do not affect emulation).
    pub mtrr_def_type: u64,
    /// IA32_MTRR_PHYSBASE0..7 / PHYSMASK0..7 (MSRs 0x200-0x20F).
    pub mtrr_var: [u64; 16],
    /// The fixed-range MTRRs: 0x250, 0x258, 0x259, 0x268-0x26F.
    pub mtrr_fixed: [u64; 11],
}

/// x87/MMX/SSE register file. The first 512 bytes are exactly the FXSAVE image (Intel SDM
/// vol. 1, table 10-2, the 64-bit layout: FIP and FDP as 64-bit fields), so FXSAVE/XSAVE copy
/// it and generated code can reach the XMM registers with `offset_of!`. Two deviations from the
/// memory image, both undone by FXSAVE: `st` holds the x87 registers in *physical* order
/// (R0..R7, MMi = Ri), not stack order, and the x87 code/data selectors live after the image
/// (`fcs`, `fds`) because the 64-bit image has no room for them.
#[repr(C, align(16))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FpuState {
    /// x87 control word (offset 0).
    pub fcw: u16,
    /// x87 status word, TOP in bits 11..13 (offset 2).
    pub fsw: u16,
    /// Abridged tag word: bit i set = physical register Ri is valid (offset 4).
    pub ftw: u8,
    /// Reserved (offset 5).
    pub rsvd5: u8,
    /// Last x87 opcode (11 bits, offset 6).
    pub fop: u16,
    /// Last x87 instruction pointer (offset 8).
    pub fip: u64,
    /// Last x87 data pointer (offset 16).
    pub fdp: u64,
    /// MXCSR (offset 24).
    pub mxcsr: u32,
    /// MXCSR_MASK: the writable MXCSR bits (offset 28).
    pub mxcsr_mask: u32,
    /// R0..R7 as 80-bit values (little-endian significand then sign/exponent) in 16-byte slots
    /// (offset 32), physical order.
    pub st: [[u8; 16]; 8],
    /// XMM0..XMM15 (offset 160).
    pub xmm: [[u8; 16]; 16],
    /// Reserved part of the image (offset 416).
    pub rsvd: [u8; 96],
    /// Last x87 instruction's code selector (not part of the 64-bit image).
    pub fcs: u16,
    /// Last x87 operand's data selector.
    pub fds: u16,
    /// Padding.
    pub pad: u32,
    /// XCR0 (the enabled XSAVE state components; bit 0 x87 is always set).
    pub xcr0: u64,
}

/// The MXCSR bits that exist (DAZ included): everything else is reserved and LDMXCSR/FXRSTOR
/// raise #GP(0) when it is set.
pub const MXCSR_MASK: u32 = 0xFFFF;

impl Default for FpuState {
    fn default() -> Self {
        FpuState {
            // The power-up values (SDM vol. 3A table 9-1): FCW 0040H, tags 5555H (all valid, +0).
            fcw: 0x0040,
            fsw: 0,
            ftw: 0xFF,
            rsvd5: 0,
            fop: 0,
            fip: 0,
            fdp: 0,
            mxcsr: 0x1F80,
            mxcsr_mask: MXCSR_MASK,
            st: [[0; 16]; 8],
            xmm: [[0; 16]; 16],
            rsvd: [0; 96],
            fcs: 0,
            fds: 0,
            pad: 0,
            xcr0: 1,
        }
    }
}

/// The whole architectural state of one CPU.
#[repr(C)]
#[derive(Debug, Clone)]
pub struct CpuState {
    /// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15 (encoding order).
    pub gpr: [u64; 16],
    /// Instruction pointer (offset within CS).
    pub rip: u64,
    /// RFLAGS, except the status bits currently held lazily in `lazy`.
    pub rflags: u64,
    /// Lazily evaluated status flags.
    pub lazy: LazyFlags,
    /// ES, CS, SS, DS, FS, GS.
    pub seg: [Segment; 6],
    /// LDTR.
    pub ldtr: Segment,
    /// Task register.
    pub tr: Segment,
    /// GDTR.
    pub gdtr: DescriptorTable,
    /// IDTR.
    pub idtr: DescriptorTable,
    /// CR0.
    pub cr0: u64,
    /// CR2 (last page-fault address).
    pub cr2: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// CR8 (task priority).
    pub cr8: u64,
    /// IA32_EFER.
    pub efer: u64,
    /// DR0..DR7.
    pub dr: [u64; 8],
    /// Other MSRs.
    pub msr: Msrs,
    /// Current privilege level.
    pub cpl: u8,
    /// Stopped by HLT until an interrupt.
    pub halted: bool,
    /// Interrupts are inhibited for one instruction (after STI or a load of SS).
    pub interrupt_shadow: bool,
    /// An NMI was accepted from the bus and waits for delivery.
    pub nmi_pending: bool,
    /// NMIs are blocked: an NMI handler runs and has not executed IRET yet (SDM 6.7.1).
    pub nmi_blocked: bool,
    /// Instructions since reset: the guest's virtual time. **The instruction-count rule**, kept
    /// by every engine and every path (`Interpreter::run`, `Interpreter::step`, the JIT's
    /// generated code and its helpers):
    /// - every instruction that retires counts 1;
    /// - every instruction that faults counts 1 (the fault is delivered, the count stays);
    /// - every iteration of a REP-prefixed string instruction counts 1 (a REP with a zero count
    ///   counts 1 as it retires; a REP interrupted by the budget, an interrupt or a code write
    ///   counts the iterations it did);
    /// - delivering an external interrupt counts 0.
    ///
    /// Interrupts, port and MMIO accesses therefore happen at the same count under every engine.
    pub icount: u64,
    /// The run in progress ends when `icount` reaches this (set at run entry; generated code
    /// compares against it).
    pub budget_end: u64,
    /// INTR is asserted: the bus's `interrupt_pending`, mirrored at run entry, after every port or
    /// MMIO access and after every interrupt acknowledge (the only points where a line can
    /// change during a run), so the run loop reads a field instead of making a call.
    pub irq_pending: bool,
    /// A device asked the run to stop (set after a port or MMIO write when the bus says so;
    /// cleared at run entry).
    pub stop_requested: bool,
    /// The mode key (see [`CpuState::compute_mode_key`]): what translated code may assume about
    /// the mode. Valid at run entry and block boundaries ([`CpuState::refresh_mode_key`]).
    pub mode_key: u32,
    /// x87/SSE.
    pub fpu: FpuState,
    /// The soft TLB (a cache of paging; part of the state so generated code can reach it).
    pub tlb: SoftTlb,
}

impl Default for CpuState {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuState {
    /// The state after RESET: real mode, CS:IP = F000:FFF0 with CS base FFFF0000.
    pub fn new() -> Self {
        let mut cs = Segment::real(0xF000);
        cs.base = 0xFFFF_0000;
        cs.attr |= seg_attr::CODE;
        let mut s = CpuState {
            gpr: [0; 16],
            rip: 0xFFF0,
            rflags: rflags::FIXED1,
            lazy: LazyFlags::default(),
            seg: [Segment::real(0); 6],
            ldtr: Segment { attr: 0x82 | seg_attr::P, limit: 0xFFFF, ..Default::default() },
            tr: Segment { attr: 0x8B, limit: 0xFFFF, ..Default::default() },
            gdtr: DescriptorTable { base: 0, limit: 0xFFFF },
            idtr: DescriptorTable { base: 0, limit: 0x3FF },
            cr0: cr::CR0_ET | cr::CR0_CD | cr::CR0_NW,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            cr8: 0,
            efer: 0,
            dr: [0, 0, 0, 0, 0, 0, 0xFFFF_0FF0, 0x400],
            msr: Msrs { apic_base: 0xFEE0_0900, pat: 0x0007_0406_0007_0406, misc_enable: 1, ..Default::default() },
            cpl: 0,
            halted: false,
            interrupt_shadow: false,
            nmi_pending: false,
            nmi_blocked: false,
            icount: 0,
            budget_end: 0,
            irq_pending: false,
            stop_requested: false,
            mode_key: 0,
            fpu: FpuState::default(),
            tlb: SoftTlb::default(),
        };
        s.seg[SegReg::Cs as usize] = cs;
        s.gpr[2] = u64::from(crate::cpuid::SIGNATURE); // EDX = CPUID.1:EAX at reset
        s.refresh_mode_key();
        s
    }

    /// The mode key: everything about the mode that decoding or translated code depends on.
    ///
    /// Bits 0-1 code size ([`CpuMode`] order), 2-3 CPL, 4 big stack (SS.B or 64-bit), 5 paging,
    /// 6 virtual-8086, 7 flat segments (CS a readable code segment, SS, DS, ES writable data
    /// segments, all with base 0 and a 4 GiB limit; or 64-bit mode), 8 EFER.NXE, 9 CR0.WP,
    /// 10 alignment checks possible (CR0.AM and EFLAGS.AC), 11 SSE instructions cannot fault for
    /// availability (CR0.EM = 0, CR0.TS = 0, CR4.OSFXSR = 1: no #UD or #NM before their operands).
    pub fn compute_mode_key(&self) -> u32 {
        let mode = self.mode();
        let mut k = match mode {
            CpuMode::Real => 0,
            CpuMode::Protected16 => 1,
            CpuMode::Protected32 => 2,
            CpuMode::Long64 => 3,
        };
        k |= u32::from(self.cpl & 3) << 2;
        if self.stack_mask() != 0xFFFF {
            k |= 1 << 4;
        }
        if self.cr0 & cr::CR0_PG != 0 {
            k |= 1 << 5;
        }
        if self.rflags & rflags::VM != 0 {
            k |= 1 << 6;
        }
        // Flat also means every access through them is allowed: CS a readable code segment,
        // SS, DS and ES writable data segments (a store through a read-only DS must #GP).
        let flat = mode == CpuMode::Long64
            || [SegReg::Cs, SegReg::Ss, SegReg::Ds, SegReg::Es].iter().all(|&r| {
                let s = &self.seg[r as usize];
                let want = if r == SegReg::Cs { 0x1A } else { 0x12 };
                s.base == 0 && s.limit == u32::MAX && s.attr & 0x1A == want
            });
        if flat {
            k |= 1 << 7;
        }
        if self.efer & cr::EFER_NXE != 0 {
            k |= 1 << 8;
        }
        if self.cr0 & cr::CR0_WP != 0 {
            k |= 1 << 9;
        }
        if self.cr0 & cr::CR0_AM != 0 && self.rflags & rflags::AC != 0 {
            k |= 1 << 10;
        }
        if self.cr0 & (cr::CR0_EM | cr::CR0_TS) == 0 && self.cr4 & cr::CR4_OSFXSR != 0 {
            k |= 1 << 11;
        }
        k
    }

    /// Recomputes [`CpuState::mode_key`].
    #[inline]
    pub fn refresh_mode_key(&mut self) {
        self.mode_key = self.compute_mode_key();
    }

    /// A 64-bit flat state with paging off, for unit and differential tests: CS.L=1, EFER.LMA=1.
    pub fn new_flat64() -> Self {
        let mut s = Self::new();
        s.cr0 |= cr::CR0_PE;
        s.efer = cr::EFER_LME | cr::EFER_LMA;
        let data = Segment { selector: 0x10, attr: 0x93 | seg_attr::DB | seg_attr::G, limit: u32::MAX, base: 0 };
        s.seg = [data; 6];
        s.seg[SegReg::Cs as usize] =
            Segment { selector: 0x08, attr: 0x9B | seg_attr::L | seg_attr::G, limit: u32::MAX, base: 0 };
        s.rip = 0;
        s
    }

    /// A 32-bit flat protected-mode state with paging off.
    pub fn new_flat32() -> Self {
        let mut s = Self::new();
        s.cr0 |= cr::CR0_PE;
        let data = Segment { selector: 0x10, attr: 0x93 | seg_attr::DB | seg_attr::G, limit: u32::MAX, base: 0 };
        s.seg = [data; 6];
        s.seg[SegReg::Cs as usize] =
            Segment { selector: 0x08, attr: 0x9B | seg_attr::DB | seg_attr::G, limit: u32::MAX, base: 0 };
        s.rip = 0;
        s
    }

    /// The current mode.
    #[inline]
    pub fn mode(&self) -> CpuMode {
        if self.cr0 & cr::CR0_PE == 0 {
            return CpuMode::Real;
        }
        let cs = &self.seg[SegReg::Cs as usize];
        if self.efer & cr::EFER_LMA != 0 && cs.attr & seg_attr::L != 0 {
            CpuMode::Long64
        } else if cs.attr & seg_attr::DB != 0 {
            CpuMode::Protected32
        } else {
            CpuMode::Protected16
        }
    }

    /// The full RFLAGS value, evaluating lazy flags.
    #[inline]
    pub fn rflags(&self) -> u64 {
        (self.rflags & !self.lazy.mask) | self.lazy.eval() | rflags::FIXED1
    }

    /// The RFLAGS bits in `want`, evaluating only those that are lazy.
    #[inline]
    pub fn flag_bits(&self, want: u64) -> u64 {
        (self.rflags & !self.lazy.mask & want) | self.lazy.eval_bits(want)
    }

    /// Replaces RFLAGS (all bits, no lazy state left).
    #[inline]
    pub fn set_rflags(&mut self, v: u64) {
        self.rflags = v | rflags::FIXED1;
        self.lazy.mask = 0;
    }

    /// Stack pointer width mask in bytes' worth of bits (SS.B or 64-bit mode).
    pub fn stack_mask(&self) -> u64 {
        if self.mode() == CpuMode::Long64 {
            u64::MAX
        } else if self.seg[SegReg::Ss as usize].attr & seg_attr::DB != 0 && self.cr0 & cr::CR0_PE != 0 {
            0xFFFF_FFFF
        } else {
            0xFFFF
        }
    }
}
