//! Instruction execution: operand access and the per-mnemonic semantics.

use super::alu::{self, ShiftOp};
use super::system::IntKind;
use super::{Cx, Stop};
use crate::exception::Exception;
use crate::flags::{size_mask, FlagOp};
use crate::state::rflags::{self as rf, AF, CF, DF, OF, PF, SF, ZF};
use crate::state::{cr, CpuMode, SegReg};
use base::{AccessSize, PortAddr};
use iced_x86::{Code, ConditionCode, Instruction, Mnemonic, OpKind, Register};

pub(crate) type R<T> = Result<T, Stop>;

/// A resolved operand location.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Loc {
    /// A general-purpose register (any width).
    Reg(Register),
    /// Memory at segment:offset.
    Mem(SegReg, u64),
}

/// (GPR index, width in bits, is AH/CH/DH/BH) by `Register` number, computed at compile time.
const REG_INFO: [(u8, u8, bool); 256] = {
    let mut t = [(0u8, 0u8, false); 256];
    let al = Register::AL as usize;
    let ax = Register::AX as usize;
    let eax = Register::EAX as usize;
    let rax = Register::RAX as usize;
    let mut n = 0;
    while n < 256 {
        t[n] = if n >= rax && n < rax + 16 {
            ((n - rax) as u8, 64, false)
        } else if n >= eax && n < eax + 16 {
            ((n - eax) as u8, 32, false)
        } else if n >= ax && n < ax + 16 {
            ((n - ax) as u8, 16, false)
        } else if n >= al && n < al + 4 {
            ((n - al) as u8, 8, false)
        } else if n >= al + 4 && n < al + 8 {
            ((n - al - 4) as u8, 8, true)
        } else if n >= al + 8 && n < al + 20 {
            ((n - al - 4) as u8, 8, false)
        } else {
            (0, 0, false)
        };
        n += 1;
    }
    t
};

/// (GPR index, width in bits, is AH/CH/DH/BH).
#[inline(always)]
fn reg_info(r: Register) -> (usize, u32, bool) {
    let (i, b, h) = REG_INFO[r as usize & 0xFF];
    (i as usize, b as u32, h)
}

/// Reads a general-purpose register of any width.
#[inline]
pub(crate) fn get_reg(cpu: &crate::state::CpuState, r: Register) -> u64 {
    let (i, bits, high) = reg_info(r);
    let v = cpu.gpr[i];
    match (bits, high) {
        (8, true) => (v >> 8) & 0xFF,
        (0, _) => 0,
        _ => v & size_mask(bits),
    }
}

/// Writes a general-purpose register; 32-bit writes zero-extend, 8/16-bit writes merge.
#[inline]
pub(crate) fn set_reg(cpu: &mut crate::state::CpuState, r: Register, v: u64) {
    let (i, bits, high) = reg_info(r);
    let g = &mut cpu.gpr[i];
    match (bits, high) {
        (64, _) => *g = v,
        (32, _) => *g = v & 0xFFFF_FFFF,
        (16, _) => *g = (*g & !0xFFFF) | (v & 0xFFFF),
        (8, false) => *g = (*g & !0xFF) | (v & 0xFF),
        (8, true) => *g = (*g & !0xFF00) | ((v & 0xFF) << 8),
        _ => {}
    }
}

pub(crate) fn sreg_of(r: Register) -> SegReg {
    match r {
        Register::ES => SegReg::Es,
        Register::CS => SegReg::Cs,
        Register::SS => SegReg::Ss,
        Register::FS => SegReg::Fs,
        Register::GS => SegReg::Gs,
        _ => SegReg::Ds,
    }
}

/// The flags a condition reads.
fn cond_mask(cc: ConditionCode) -> u64 {
    match cc {
        ConditionCode::o | ConditionCode::no => OF,
        ConditionCode::b | ConditionCode::ae => CF,
        ConditionCode::e | ConditionCode::ne => ZF,
        ConditionCode::be | ConditionCode::a => CF | ZF,
        ConditionCode::s | ConditionCode::ns => SF,
        ConditionCode::p | ConditionCode::np => PF,
        ConditionCode::l | ConditionCode::ge => SF | OF,
        _ => ZF | SF | OF,
    }
}

/// Evaluates a condition code, computing only the flags it needs.
#[inline]
pub(crate) fn test_cc(cpu: &crate::state::CpuState, cc: ConditionCode) -> bool {
    cond(cpu.flag_bits(cond_mask(cc)), cc)
}

fn cond(f: u64, cc: ConditionCode) -> bool {
    let c = f & CF != 0;
    let z = f & ZF != 0;
    let s = f & SF != 0;
    let o = f & OF != 0;
    let p = f & PF != 0;
    match cc {
        ConditionCode::o => o,
        ConditionCode::no => !o,
        ConditionCode::b => c,
        ConditionCode::ae => !c,
        ConditionCode::e => z,
        ConditionCode::ne => !z,
        ConditionCode::be => c || z,
        ConditionCode::a => !c && !z,
        ConditionCode::s => s,
        ConditionCode::ns => !s,
        ConditionCode::p => p,
        ConditionCode::np => !p,
        ConditionCode::l => s != o,
        ConditionCode::ge => s == o,
        ConditionCode::le => z || s != o,
        ConditionCode::g => !z && s == o,
        _ => true,
    }
}

fn sext(v: u64, bits: u32) -> u64 {
    let sh = 64 - bits;
    (((v << sh) as i64) >> sh) as u64
}

/// Address width in bits of a string instruction, from its memory operand kinds.
fn string_addr_bits(i: &Instruction) -> u32 {
    for n in 0..i.op_count() {
        match i.op_kind(n) {
            OpKind::MemorySegSI | OpKind::MemoryESDI | OpKind::MemorySegDI => return 16,
            OpKind::MemorySegESI | OpKind::MemoryESEDI | OpKind::MemorySegEDI => return 32,
            OpKind::MemorySegRSI | OpKind::MemoryESRDI | OpKind::MemorySegRDI => return 64,
            _ => {}
        }
    }
    64
}

impl Cx<'_> {
    /// Effective address (offset within the segment) of the memory operand.
    #[inline]
    pub(crate) fn ea(&self, i: &Instruction) -> u64 {
        let base = i.memory_base();
        let index = i.memory_index();
        let mut a = i.memory_displacement64();
        let mut bits = match i.memory_displ_size() {
            2 => 16,
            4 if self.mode != CpuMode::Long64 => 32,
            _ => 64,
        };
        if base != Register::None {
            if base == Register::RIP {
                return a;
            }
            if base == Register::EIP {
                return a & 0xFFFF_FFFF;
            }
            let (_, b, _) = reg_info(base);
            bits = b;
            a = a.wrapping_add(get_reg(self.cpu, base));
        }
        if index != Register::None {
            let (_, b, _) = reg_info(index);
            bits = b;
            a = a.wrapping_add(get_reg(self.cpu, index).wrapping_mul(u64::from(i.memory_index_scale())));
        }
        a & size_mask(bits)
    }

    /// The location of operand `n` (a register or the memory operand).
    #[inline]
    pub(crate) fn loc(&self, i: &Instruction, n: u32) -> Loc {
        match i.op_kind(n) {
            OpKind::Register => Loc::Reg(i.op_register(n)),
            _ => Loc::Mem(sreg_of(i.memory_segment()), self.ea(i)),
        }
    }

    #[inline]
    pub(crate) fn get(&mut self, loc: Loc, bits: u32) -> Result<u64, Exception> {
        match loc {
            Loc::Reg(r) => Ok(get_reg(self.cpu, r)),
            Loc::Mem(s, off) => self.read_mem(s, off, bits),
        }
    }

    #[inline]
    pub(crate) fn set(&mut self, loc: Loc, bits: u32, v: u64) -> Result<(), Exception> {
        match loc {
            Loc::Reg(r) => {
                set_reg(self.cpu, r, v);
                Ok(())
            }
            Loc::Mem(s, off) => self.write_mem(s, off, bits, v & size_mask(bits)),
        }
    }

    /// Width in bits of operand `n` (register or memory).
    #[inline]
    fn op_bits(&self, i: &Instruction, n: u32) -> u32 {
        match i.op_kind(n) {
            OpKind::Register => reg_info(i.op_register(n)).1,
            _ => (i.memory_size().size() * 8) as u32,
        }
    }

    /// Value of operand `n`, immediates sign-extended/truncated to `bits`.
    #[inline]
    fn val(&mut self, i: &Instruction, n: u32, bits: u32) -> Result<u64, Exception> {
        match i.op_kind(n) {
            OpKind::Register => Ok(get_reg(self.cpu, i.op_register(n))),
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
            | OpKind::Immediate8_2nd => Ok(i.immediate(n) & size_mask(bits)),
            _ => {
                let l = self.loc(i, n);
                self.get(l, bits)
            }
        }
    }

    fn flags(&self) -> u64 {
        self.cpu.rflags()
    }

    /// Replaces the six status flags with `f` (other bits kept; nothing lazy is evaluated).
    #[inline]
    fn set_status(&mut self, f: u64) {
        self.cpu.rflags = (self.cpu.rflags & !rf::STATUS) | (f & rf::STATUS);
        self.cpu.lazy.mask = 0;
    }

    /// Replaces the status flags in `mask` only.
    fn set_status_masked(&mut self, f: u64, mask: u64) {
        let cur = self.cpu.rflags();
        self.cpu.set_rflags((cur & !mask) | (f & mask));
    }

    fn set_flag(&mut self, bit: u64, on: bool) {
        let cur = self.cpu.rflags();
        self.cpu.set_rflags(if on { cur | bit } else { cur & !bit });
    }

    fn next(&mut self, i: &Instruction) {
        self.cpu.rip = i.next_ip();
    }

    fn opsize_from_sp(i: &Instruction) -> u32 {
        i.stack_pointer_increment().unsigned_abs() * 8
    }

    fn require_cpl0(&self) -> Result<(), Exception> {
        if self.cpu.cpl != 0 && self.mode != CpuMode::Real {
            Err(Exception::GeneralProtection(0))
        } else {
            Ok(())
        }
    }

    /// Executes one decoded instruction.
    pub(crate) fn exec(&mut self, i: &Instruction) -> R<()> {
        use Mnemonic as M;
        match i.mnemonic() {
            M::Add | M::Adc | M::Sub | M::Sbb | M::Cmp | M::And | M::Or | M::Xor | M::Test => {
                let bits = self.op_bits(i, 0);
                let dst = self.loc(i, 0);
                let a = self.get(dst, bits)?;
                let b = self.val(i, 1, bits)?;
                let m = size_mask(bits);
                let (op, res) = match i.mnemonic() {
                    M::Add => (FlagOp::Add, a.wrapping_add(b)),
                    M::Adc => (FlagOp::Add, a.wrapping_add(b).wrapping_add(self.cpu.flag_bits(CF))),
                    M::Sub | M::Cmp => (FlagOp::Sub, a.wrapping_sub(b)),
                    M::Sbb => (FlagOp::Sub, a.wrapping_sub(b).wrapping_sub(self.cpu.flag_bits(CF))),
                    M::And | M::Test => (FlagOp::Logic, a & b),
                    M::Or => (FlagOp::Logic, a | b),
                    _ => (FlagOp::Logic, a ^ b),
                };
                let res = res & m;
                if !matches!(i.mnemonic(), M::Cmp | M::Test) {
                    self.set(dst, bits, res)?;
                }
                self.cpu.lazy.set(op, bits, a, b, res);
                self.next(i);
            }
            M::Inc | M::Dec | M::Neg => {
                let bits = self.op_bits(i, 0);
                let dst = self.loc(i, 0);
                let a = self.get(dst, bits)?;
                let m = size_mask(bits);
                // INC/DEC keep CF: materialize it first.
                let cf = self.cpu.flag_bits(CF);
                let (op, x, y, res) = match i.mnemonic() {
                    M::Inc => (FlagOp::Add, a, 1, a.wrapping_add(1) & m),
                    M::Dec => (FlagOp::Sub, a, 1, a.wrapping_sub(1) & m),
                    _ => (FlagOp::Sub, 0, a, a.wrapping_neg() & m),
                };
                self.set(dst, bits, res)?;
                if i.mnemonic() == M::Neg {
                    self.cpu.lazy.set(op, bits, x, y, res);
                } else {
                    self.cpu.rflags = (self.cpu.rflags & !CF) | cf;
                    self.cpu.lazy.set(op, bits, x, y, res);
                    self.cpu.lazy.mask = rf::STATUS & !CF;
                }
                self.next(i);
            }
            M::Not => {
                let bits = self.op_bits(i, 0);
                let dst = self.loc(i, 0);
                let a = self.get(dst, bits)?;
                self.set(dst, bits, !a)?;
                self.next(i);
            }
            M::Mov => self.exec_mov(i)?,
            M::Movzx | M::Movsx | M::Movsxd => {
                let dbits = self.op_bits(i, 0);
                let sbits = self.op_bits(i, 1);
                let v = self.val(i, 1, sbits)?;
                let v = if i.mnemonic() == M::Movzx { v } else { sext(v, sbits) };
                set_reg(self.cpu, i.op0_register(), v & size_mask(dbits));
                self.next(i);
            }
            M::Lea => {
                let bits = self.op_bits(i, 0);
                let a = self.ea(i);
                set_reg(self.cpu, i.op0_register(), a & size_mask(bits));
                self.next(i);
            }
            M::Xchg => {
                let bits = self.op_bits(i, 0);
                let l0 = self.loc(i, 0);
                let l1 = self.loc(i, 1);
                let a = self.get(l0, bits)?;
                let b = self.get(l1, bits)?;
                // Memory first, so a fault leaves registers unchanged.
                if let Loc::Mem(..) = l1 {
                    self.set(l1, bits, a)?;
                    self.set(l0, bits, b)?;
                } else {
                    self.set(l0, bits, b)?;
                    self.set(l1, bits, a)?;
                }
                self.next(i);
            }
            M::Nop
            | M::Pause
            | M::Endbr32
            | M::Endbr64
            | M::Lfence
            | M::Mfence
            | M::Sfence
            | M::Prefetchnta
            | M::Prefetcht0
            | M::Prefetcht1
            | M::Prefetcht2
            | M::Prefetchw
            | M::Clflush
            | M::Clflushopt => {
                self.next(i);
            }
            M::Shl | M::Sal | M::Shr | M::Sar | M::Rol | M::Ror | M::Rcl | M::Rcr => {
                let op = match i.mnemonic() {
                    M::Shl | M::Sal => ShiftOp::Shl,
                    M::Shr => ShiftOp::Shr,
                    M::Sar => ShiftOp::Sar,
                    M::Rol => ShiftOp::Rol,
                    M::Ror => ShiftOp::Ror,
                    M::Rcl => ShiftOp::Rcl,
                    _ => ShiftOp::Rcr,
                };
                let bits = self.op_bits(i, 0);
                let dst = self.loc(i, 0);
                let a = self.get(dst, bits)?;
                let count = if i.op_count() > 1 { self.val(i, 1, 8)? } else { 1 };
                // Plain shifts replace every status flag; rotates keep some.
                let fin = if matches!(op, ShiftOp::Shl | ShiftOp::Shr | ShiftOp::Sar) { 0 } else { self.flags() };
                if let Some((res, f)) = alu::shift(op, bits, a, count, fin) {
                    self.set(dst, bits, res)?;
                    self.set_status(f);
                } else if let Loc::Reg(r) = dst {
                    // A count of 0 still writes a 32-bit register (zero-extending it).
                    set_reg(self.cpu, r, a);
                }
                self.next(i);
            }
            M::Imul if i.op_count() > 1 => {
                let bits = self.op_bits(i, 0);
                let (a, b) = if i.op_count() == 2 {
                    (get_reg(self.cpu, i.op0_register()), self.val(i, 1, bits)?)
                } else {
                    (self.val(i, 1, bits)?, self.val(i, 2, bits)?)
                };
                let (lo, _, f) = alu::imul(bits, a, b);
                set_reg(self.cpu, i.op0_register(), lo);
                self.set_status(f);
                self.next(i);
            }
            M::Push => {
                let bits = Self::opsize_from_sp(i);
                let v = match i.op_kind(0) {
                    OpKind::Register => {
                        let r = i.op0_register();
                        if r.is_segment_register() {
                            u64::from(self.cpu.seg[sreg_of(r) as usize].selector)
                        } else {
                            get_reg(self.cpu, r)
                        }
                    }
                    OpKind::Memory => {
                        let l = self.loc(i, 0);
                        self.get(l, bits)?
                    }
                    _ => i.immediate(0) & size_mask(bits),
                };
                self.push(bits, v)?;
                self.next(i);
            }
            M::Pop => {
                let bits = Self::opsize_from_sp(i);
                let sp = self.cpu.gpr[4];
                let v = self.stack_read(sp, bits)?;
                match i.op_kind(0) {
                    OpKind::Register if i.op0_register().is_segment_register() => {
                        let sr = sreg_of(i.op0_register());
                        // The increment follows the stack the selector was popped from (its B
                        // bit), not the one POP SS loads (SDM POP: "stack-address size").
                        let m = self.cpu.stack_mask();
                        let new_sp = (sp & !m) | (sp.wrapping_add(u64::from(bits / 8)) & m);
                        self.load_seg(sr, v as u16)?;
                        self.cpu.gpr[4] = new_sp;
                        if sr == SegReg::Ss {
                            self.dbg_ss_loaded = true;
                        }
                    }
                    OpKind::Register => {
                        self.set_sp(sp.wrapping_add(u64::from(bits / 8)));
                        set_reg(self.cpu, i.op0_register(), v);
                    }
                    _ => {
                        // The address is computed with the incremented stack pointer.
                        self.set_sp(sp.wrapping_add(u64::from(bits / 8)));
                        let l = self.loc(i, 0);
                        self.set(l, bits, v)?;
                    }
                }
                self.next(i);
            }
            M::Jmp => self.exec_jmp(i)?,
            M::Call => self.exec_call(i)?,
            M::Ret => {
                let imm = if i.op_count() > 0 { u64::from(i.immediate16()) } else { 0 };
                let bits = (Self::opsize_from_sp(i) as u64 - imm * 8) as u32;
                let sp = self.cpu.gpr[4];
                let target = self.stack_read(sp, bits)?;
                self.check_near_target(target)?;
                self.set_sp(sp.wrapping_add(u64::from(bits / 8) + imm));
                self.cpu.rip = target;
            }
            _ => {
                if i.is_jcc_short_or_near() {
                    if test_cc(self.cpu, i.condition_code()) {
                        let t = i.near_branch_target();
                        self.check_near_target(t)?;
                        self.cpu.rip = t;
                    } else {
                        self.next(i);
                    }
                } else if crate::flags::is_setcc(i.mnemonic()) {
                    let v = u64::from(test_cc(self.cpu, i.condition_code()));
                    let l = self.loc(i, 0);
                    self.set(l, 8, v)?;
                    self.next(i);
                } else if crate::flags::is_cmovcc(i.mnemonic()) {
                    let bits = self.op_bits(i, 0);
                    let v = self.val(i, 1, bits)?;
                    let r = i.op0_register();
                    if test_cc(self.cpu, i.condition_code()) {
                        set_reg(self.cpu, r, v);
                    } else {
                        // Not taken: a 32-bit destination is still zero-extended.
                        let cur = get_reg(self.cpu, r);
                        set_reg(self.cpu, r, cur);
                    }
                    self.next(i);
                } else {
                    return self.exec_cold(i);
                }
            }
        }
        Ok(())
    }

    /// The less frequent instructions, kept out of [`Self::exec`] so the hot dispatch has a
    /// small stack frame.
    #[inline(never)]
    fn exec_cold(&mut self, i: &Instruction) -> R<()> {
        use Mnemonic as M;
        match i.mnemonic() {
            M::Shld | M::Shrd => {
                let bits = self.op_bits(i, 0);
                let dst = self.loc(i, 0);
                let a = self.get(dst, bits)?;
                let b = get_reg(self.cpu, i.op1_register());
                let count = self.val(i, 2, 8)?;
                if let Some((res, f)) = alu::double_shift(i.mnemonic() == M::Shld, bits, a, b, count, self.flags()) {
                    self.set(dst, bits, res)?;
                    self.set_status(f);
                } else if let Loc::Reg(r) = dst {
                    set_reg(self.cpu, r, a);
                }
                self.next(i);
            }
            M::Mul | M::Imul if i.op_count() == 1 => {
                let bits = self.op_bits(i, 0);
                let b = self.val(i, 0, bits)?;
                let a = self.cpu.gpr[0] & size_mask(bits);
                let (lo, hi, f) = if i.mnemonic() == M::Mul { alu::mul(bits, a, b) } else { alu::imul(bits, a, b) };
                if bits == 8 {
                    set_reg(self.cpu, Register::AX, lo | (hi << 8));
                } else {
                    let (rl, rh) = match bits {
                        16 => (Register::AX, Register::DX),
                        32 => (Register::EAX, Register::EDX),
                        _ => (Register::RAX, Register::RDX),
                    };
                    set_reg(self.cpu, rl, lo);
                    set_reg(self.cpu, rh, hi);
                }
                self.set_status(f);
                self.next(i);
            }
            M::Div | M::Idiv => {
                let bits = self.op_bits(i, 0);
                let d = self.val(i, 0, bits)?;
                let (hi, lo) = if bits == 8 {
                    ((self.cpu.gpr[0] >> 8) & 0xFF, self.cpu.gpr[0] & 0xFF)
                } else {
                    (self.cpu.gpr[2] & size_mask(bits), self.cpu.gpr[0] & size_mask(bits))
                };
                let r = if i.mnemonic() == M::Div { alu::div(bits, hi, lo, d) } else { alu::idiv(bits, hi, lo, d) };
                let (q, rem) = r.ok_or(Exception::DivideError)?;
                if bits == 8 {
                    set_reg(self.cpu, Register::AX, q | (rem << 8));
                } else {
                    let (rl, rh) = match bits {
                        16 => (Register::AX, Register::DX),
                        32 => (Register::EAX, Register::EDX),
                        _ => (Register::RAX, Register::RDX),
                    };
                    set_reg(self.cpu, rl, q);
                    set_reg(self.cpu, rh, rem);
                }
                self.next(i);
            }
            M::Bt | M::Bts | M::Btr | M::Btc => {
                let bits = self.op_bits(i, 0);
                let mut dst = self.loc(i, 0);
                let off = self.val(i, 1, bits)?;
                let bit = if i.op_kind(1) == OpKind::Register {
                    if let Loc::Mem(s, ea) = dst {
                        // A register bit offset addresses memory beyond the operand (signed).
                        let soff = sext(off, bits) as i64;
                        let unit = i64::from(bits);
                        let disp = soff.div_euclid(unit) * (unit / 8);
                        let amask = match (self.mode, i.memory_base(), i.memory_index()) {
                            (CpuMode::Long64, _, _) => u64::MAX,
                            _ => 0xFFFF_FFFF,
                        };
                        dst = Loc::Mem(s, ea.wrapping_add(disp as u64) & amask);
                        soff.rem_euclid(unit) as u32
                    } else {
                        (off % u64::from(bits)) as u32
                    }
                } else {
                    (off % u64::from(bits)) as u32
                };
                let a = self.get(dst, bits)?;
                let cf = (a >> bit) & 1 != 0;
                let res = match i.mnemonic() {
                    M::Bts => Some(a | (1 << bit)),
                    M::Btr => Some(a & !(1 << bit)),
                    M::Btc => Some(a ^ (1 << bit)),
                    _ => None,
                };
                if let Some(res) = res {
                    self.set(dst, bits, res)?;
                }
                self.set_flag(CF, cf);
                self.next(i);
            }
            M::Bsf | M::Bsr => {
                let bits = self.op_bits(i, 0);
                let v = self.val(i, 1, bits)? & size_mask(bits);
                if v == 0 {
                    self.set_status_masked(ZF, ZF);
                    if bits == 32 {
                        // Destination unchanged, but a 32-bit destination... is left as is.
                    }
                } else {
                    let idx = if i.mnemonic() == M::Bsf { v.trailing_zeros() } else { 63 - v.leading_zeros() };
                    set_reg(self.cpu, i.op0_register(), u64::from(idx));
                    self.set_status_masked(0, ZF);
                }
                self.next(i);
            }
            M::Lzcnt | M::Tzcnt | M::Popcnt => {
                let bits = self.op_bits(i, 0);
                let v = self.val(i, 1, bits)? & size_mask(bits);
                let res = match i.mnemonic() {
                    M::Lzcnt => u64::from(v.leading_zeros() - (64 - bits)),
                    M::Tzcnt => u64::from(v.trailing_zeros().min(bits)),
                    _ => u64::from(v.count_ones()),
                };
                set_reg(self.cpu, i.op0_register(), res);
                let f = if i.mnemonic() == M::Popcnt {
                    if v == 0 {
                        ZF
                    } else {
                        0
                    }
                } else {
                    (if v == 0 { CF } else { 0 }) | (if res == 0 { ZF } else { 0 })
                };
                let mask = if i.mnemonic() == M::Popcnt { rf::STATUS } else { CF | ZF };
                self.set_status_masked(f, mask);
                self.next(i);
            }
            M::Bswap => {
                let r = i.op0_register();
                let (_, bits, _) = reg_info(r);
                let v = get_reg(self.cpu, r);
                let res = match bits {
                    64 => v.swap_bytes(),
                    32 => u64::from((v as u32).swap_bytes()),
                    _ => 0, // BSWAP r16 is undefined; Intel and AMD produce zero
                };
                set_reg(self.cpu, r, res);
                self.next(i);
            }
            M::Cbw => {
                let v = sext(self.cpu.gpr[0] & 0xFF, 8);
                set_reg(self.cpu, Register::AX, v);
                self.next(i);
            }
            M::Cwde => {
                let v = sext(self.cpu.gpr[0] & 0xFFFF, 16);
                set_reg(self.cpu, Register::EAX, v);
                self.next(i);
            }
            M::Cdqe => {
                self.cpu.gpr[0] = sext(self.cpu.gpr[0] & 0xFFFF_FFFF, 32);
                self.next(i);
            }
            M::Cwd => {
                let v = if self.cpu.gpr[0] & 0x8000 != 0 { 0xFFFF } else { 0 };
                set_reg(self.cpu, Register::DX, v);
                self.next(i);
            }
            M::Cdq => {
                let v = if self.cpu.gpr[0] & 0x8000_0000 != 0 { 0xFFFF_FFFF } else { 0 };
                set_reg(self.cpu, Register::EDX, v);
                self.next(i);
            }
            M::Cqo => {
                self.cpu.gpr[2] = if self.cpu.gpr[0] & (1 << 63) != 0 { u64::MAX } else { 0 };
                self.next(i);
            }
            M::Lahf => {
                let f = self.flags() & 0xFF;
                set_reg(self.cpu, Register::AH, f | 2);
                self.next(i);
            }
            M::Sahf => {
                let ah = (self.cpu.gpr[0] >> 8) & 0xFF;
                self.set_status_masked(ah, SF | ZF | AF | PF | CF);
                self.next(i);
            }
            M::Clc => {
                self.set_flag(CF, false);
                self.next(i);
            }
            M::Stc => {
                self.set_flag(CF, true);
                self.next(i);
            }
            M::Cmc => {
                let c = self.flags() & CF == 0;
                self.set_flag(CF, c);
                self.next(i);
            }
            M::Cld => {
                self.cpu.rflags &= !DF;
                self.next(i);
            }
            M::Std => {
                self.cpu.rflags |= DF;
                self.next(i);
            }
            M::Cli | M::Sti => {
                if self.v86_vif_path() || self.pvi_path() {
                    self.v86_cli_sti(i.mnemonic() == M::Sti)?;
                    self.next(i);
                    return Ok(());
                }
                if self.mode != CpuMode::Real {
                    let iopl = ((self.cpu.rflags & rf::IOPL) >> 12) as u8;
                    if self.cpu.cpl > iopl {
                        return Err(Exception::GeneralProtection(0).into());
                    }
                }
                if i.mnemonic() == M::Sti {
                    if self.cpu.rflags & rf::IF == 0 {
                        self.cpu.interrupt_shadow = true;
                    }
                    self.cpu.rflags |= rf::IF;
                } else {
                    self.cpu.rflags &= !rf::IF;
                }
                self.next(i);
            }
            M::Cmpxchg => {
                let bits = self.op_bits(i, 0);
                let dst = self.loc(i, 0);
                let d = self.get(dst, bits)?;
                let acc = self.cpu.gpr[0] & size_mask(bits);
                let src = get_reg(self.cpu, i.op1_register());
                let res = acc.wrapping_sub(d) & size_mask(bits);
                if acc == d {
                    self.set(dst, bits, src)?;
                } else {
                    if let Loc::Mem(..) = dst {
                        // The processor always writes the destination of a locked cycle.
                        self.set(dst, bits, d)?;
                    }
                    let r = match bits {
                        8 => Register::AL,
                        16 => Register::AX,
                        32 => Register::EAX,
                        _ => Register::RAX,
                    };
                    set_reg(self.cpu, r, d);
                }
                self.cpu.lazy.set(FlagOp::Sub, bits, acc, d, res);
                self.next(i);
            }
            M::Cmpxchg8b | M::Cmpxchg16b => {
                let Loc::Mem(s, ea) = self.loc(i, 0) else {
                    return Err(Exception::InvalidOpcode.into());
                };
                let wide = i.mnemonic() == M::Cmpxchg16b;
                let half = if wide { 64 } else { 32 };
                if wide && ea % 16 != 0 {
                    return Err(Exception::GeneralProtection(0).into());
                }
                let step = u64::from(half / 8);
                let lo = self.read_mem(s, ea, half)?;
                let hi = self.read_mem(s, ea.wrapping_add(step), half)?;
                let m = size_mask(half);
                let (ax, dx) = (self.cpu.gpr[0] & m, self.cpu.gpr[2] & m);
                if lo == ax && hi == dx {
                    let lin = self.linear(s, ea, step * 2)?;
                    self.probe_write(lin, (step * 2) as usize)?;
                    self.write_mem(s, ea, half, self.cpu.gpr[3] & m)?;
                    self.write_mem(s, ea.wrapping_add(step), half, self.cpu.gpr[1] & m)?;
                    self.set_flag(ZF, true);
                } else {
                    let lin = self.linear(s, ea, step * 2)?;
                    self.probe_write(lin, (step * 2) as usize)?;
                    self.write_mem(s, ea, half, lo)?;
                    self.write_mem(s, ea.wrapping_add(step), half, hi)?;
                    if wide {
                        self.cpu.gpr[0] = lo;
                        self.cpu.gpr[2] = hi;
                    } else {
                        set_reg(self.cpu, Register::EAX, lo);
                        set_reg(self.cpu, Register::EDX, hi);
                    }
                    self.set_flag(ZF, false);
                }
                self.next(i);
            }
            M::Xadd => {
                let bits = self.op_bits(i, 0);
                let dst = self.loc(i, 0);
                let d = self.get(dst, bits)?;
                let sreg = i.op1_register();
                let s = get_reg(self.cpu, sreg);
                let res = d.wrapping_add(s) & size_mask(bits);
                if let Loc::Mem(..) = dst {
                    self.set(dst, bits, res)?;
                    set_reg(self.cpu, sreg, d);
                } else {
                    set_reg(self.cpu, sreg, d);
                    self.set(dst, bits, res)?;
                }
                self.cpu.lazy.set(FlagOp::Add, bits, d, s, res);
                self.next(i);
            }
            M::Pusha | M::Pushad => {
                let bits = if i.mnemonic() == M::Pusha { 16 } else { 32 };
                let sp0 = self.cpu.gpr[4];
                let n = u64::from(bits / 8);
                if self.mode == CpuMode::Real || self.cpu.rflags & rf::VM != 0 {
                    // Real and virtual-8086 mode: each push wraps SP within the 64 KiB stack
                    // (SDM PUSHA: "SP = SP - 2" per register); only a word or dword straddling
                    // offset 0xFFFF/0x10000 is a fault, #GP(0) for real mode (SDM PUSHA real-address
                    // mode exceptions: SP = 7, 9, 11, 13 or 15).
                    let mut lins = [0u64; 8];
                    for (k, l) in lins.iter_mut().enumerate() {
                        let off = sp0.wrapping_sub(n * (k as u64 + 1)) & 0xFFFF;
                        if off + n - 1 > 0xFFFF {
                            return Err(Exception::GeneralProtection(0).into());
                        }
                        *l = self.linear(SegReg::Ss, off, n)?;
                    }
                    for l in lins {
                        self.probe_write(l, n as usize)?;
                    }
                } else {
                    let lin = self.linear(SegReg::Ss, sp0.wrapping_sub(8 * n) & self.cpu.stack_mask(), 8 * n)?;
                    self.probe_write(lin, (8 * n) as usize)?;
                }
                for r in 0..8 {
                    let v = if r == 4 { sp0 } else { self.cpu.gpr[r] };
                    self.push(bits, v)?;
                }
                self.next(i);
            }
            M::Popa | M::Popad => {
                let bits = if i.mnemonic() == M::Popa { 16 } else { 32 };
                let sp = self.cpu.gpr[4];
                let n = u64::from(bits / 8);
                let mut vals = [0u64; 8];
                for (k, v) in vals.iter_mut().enumerate() {
                    *v = self.stack_read(sp.wrapping_add(n * k as u64), bits)?;
                }
                for r in 0..8 {
                    if r != 4 {
                        let reg = if bits == 16 { Register::AX } else { Register::EAX };
                        let reg: Register = gpr_of_width(reg, r);
                        set_reg(self.cpu, reg, vals[7 - r]);
                    }
                }
                self.set_sp(sp.wrapping_add(8 * n));
                self.next(i);
            }
            M::Pushf | M::Pushfd | M::Pushfq => {
                let bits = Self::opsize_from_sp(i);
                if self.cpu.rflags & rf::VM != 0 && ((self.cpu.rflags & rf::IOPL) >> 12) < 3 {
                    self.v86_pushf(bits)?;
                    self.next(i);
                    return Ok(());
                }
                let f = self.flags() & !(rf::VM | rf::RF);
                self.push(bits, f)?;
                self.next(i);
            }
            M::Popf | M::Popfd | M::Popfq => {
                let bits = Self::opsize_from_sp(i);
                if self.cpu.rflags & rf::VM != 0 && ((self.cpu.rflags & rf::IOPL) >> 12) < 3 {
                    self.v86_popf(bits)?;
                    self.next(i);
                    return Ok(());
                }
                let v = self.pop(bits)?;
                self.write_flags(v, bits, false);
                self.next(i);
            }
            M::Enter => {
                // Not from the stack pointer increment: for ENTER that includes the frame size.
                let bits = match i.code() {
                    Code::Enterw_imm16_imm8 => 16,
                    Code::Enterq_imm16_imm8 => 64,
                    _ => 32,
                };
                let size = i.immediate16();
                let level = u32::from(i.immediate8_2nd() & 31);
                let n = u64::from(bits / 8);
                let bp_reg = match bits {
                    16 => Register::BP,
                    32 => Register::EBP,
                    _ => Register::RBP,
                };
                let bp = get_reg(self.cpu, bp_reg);
                self.push(bits, bp)?;
                // FrameTemp is (E/R)SP of the operand size (a 32-bit ENTER on a 16-bit stack
                // keeps ESP's upper half in EBP).
                let frame = self.cpu.gpr[4] & size_mask(bits);
                // The outer frame pointers are read through (E/R)BP of the stack's address size,
                // whatever the operand size.
                let mut bpv = self.cpu.gpr[5] & self.cpu.stack_mask();
                if level > 0 {
                    for _ in 1..level {
                        bpv = bpv.wrapping_sub(n);
                        let v = self.stack_read(bpv, bits)?;
                        self.push(bits, v)?;
                    }
                    self.push(bits, frame)?;
                }
                let new_sp = self.cpu.gpr[4].wrapping_sub(u64::from(size));
                let lin = self.linear(SegReg::Ss, new_sp & self.cpu.stack_mask(), 1)?;
                self.probe_write(lin, 1)?;
                set_reg(self.cpu, bp_reg, frame);
                self.set_sp(new_sp);
                self.next(i);
            }
            M::Leave => {
                let bits = match i.code() {
                    Code::Leavew => 16,
                    Code::Leaveq => 64,
                    _ => 32,
                };
                let m = self.cpu.stack_mask();
                let bp = self.cpu.gpr[5] & m;
                let v = self.stack_read(bp, bits)?;
                self.set_sp(bp.wrapping_add(u64::from(bits / 8)));
                let bp_reg = match bits {
                    16 => Register::BP,
                    32 => Register::EBP,
                    _ => Register::RBP,
                };
                set_reg(self.cpu, bp_reg, v);
                self.next(i);
            }
            M::Xlatb => {
                let seg = sreg_of(i.memory_segment());
                let bx = match i.memory_base() {
                    Register::BX => self.cpu.gpr[3] & 0xFFFF,
                    Register::EBX => self.cpu.gpr[3] & 0xFFFF_FFFF,
                    _ => self.cpu.gpr[3],
                };
                let m = match i.memory_base() {
                    Register::BX => 0xFFFF,
                    Register::EBX => 0xFFFF_FFFF,
                    _ => u64::MAX,
                };
                let off = bx.wrapping_add(self.cpu.gpr[0] & 0xFF) & m;
                let v = self.read_mem(seg, off, 8)?;
                set_reg(self.cpu, Register::AL, v);
                self.next(i);
            }
            M::Daa | M::Das => {
                let al = self.cpu.gpr[0] as u8;
                let (r, f) =
                    if i.mnemonic() == M::Daa { alu::daa(al, self.flags()) } else { alu::das(al, self.flags()) };
                set_reg(self.cpu, Register::AL, u64::from(r));
                self.set_status(f);
                self.next(i);
            }
            M::Aaa | M::Aas => {
                let ax = self.cpu.gpr[0] as u16;
                let (r, f) = alu::aaa_aas(i.mnemonic() == M::Aaa, ax, self.flags());
                set_reg(self.cpu, Register::AX, u64::from(r));
                self.set_status(f);
                self.next(i);
            }
            M::Aam => {
                let (r, f) = alu::aam(self.cpu.gpr[0] as u8, i.immediate8()).ok_or(Exception::DivideError)?;
                set_reg(self.cpu, Register::AX, u64::from(r));
                self.set_status(f);
                self.next(i);
            }
            M::Aad => {
                let (r, f) = alu::aad(self.cpu.gpr[0] as u16, i.immediate8());
                set_reg(self.cpu, Register::AX, u64::from(r));
                self.set_status(f);
                self.next(i);
            }
            M::Salc => {
                let v = if self.flags() & CF != 0 { 0xFF } else { 0 };
                set_reg(self.cpu, Register::AL, v);
                self.next(i);
            }
            M::Retf => {
                let imm = if i.op_count() > 0 { u64::from(i.immediate16()) } else { 0 };
                let bits = match i.code() {
                    Code::Retfw | Code::Retfw_imm16 => 16,
                    Code::Retfq | Code::Retfq_imm16 => 64,
                    _ => 32,
                };
                self.far_return(bits, imm)?;
            }
            M::Iret | M::Iretd | M::Iretq => {
                let bits = match i.mnemonic() {
                    M::Iret => 16,
                    M::Iretd => 32,
                    _ => 64,
                };
                self.iret(bits)?;
                // IRET ends NMI blocking (SDM 6.7.1). The run stops if the bus holds another
                // NMI (its stop request), and the next run delivers it.
                if self.cpu.nmi_blocked {
                    self.cpu.nmi_blocked = false;
                    self.io_written = true;
                }
            }
            M::Loop | M::Loope | M::Loopne | M::Jcxz | M::Jecxz | M::Jrcxz => {
                let creg = match (i.mnemonic(), i.code()) {
                    (M::Jcxz, _) => Register::CX,
                    (M::Jecxz, _) => Register::ECX,
                    (M::Jrcxz, _) => Register::RCX,
                    (
                        _,
                        Code::Loop_rel8_16_CX
                        | Code::Loop_rel8_32_CX
                        | Code::Loope_rel8_16_CX
                        | Code::Loope_rel8_32_CX
                        | Code::Loopne_rel8_16_CX
                        | Code::Loopne_rel8_32_CX,
                    ) => Register::CX,
                    (
                        _,
                        Code::Loop_rel8_16_RCX
                        | Code::Loop_rel8_64_RCX
                        | Code::Loope_rel8_16_RCX
                        | Code::Loope_rel8_64_RCX
                        | Code::Loopne_rel8_16_RCX
                        | Code::Loopne_rel8_64_RCX,
                    ) => Register::RCX,
                    _ => Register::ECX,
                };
                let taken = match i.mnemonic() {
                    M::Jcxz | M::Jecxz | M::Jrcxz => get_reg(self.cpu, creg) == 0,
                    m => {
                        let c = get_reg(self.cpu, creg).wrapping_sub(1);
                        let z = self.cpu.flag_bits(ZF) != 0;
                        let ok = c & size_mask(reg_info(creg).1) != 0;
                        let t = match m {
                            M::Loope => ok && z,
                            M::Loopne => ok && !z,
                            _ => ok,
                        };
                        let target = i.near_branch_target();
                        if t {
                            self.check_near_target(target)?;
                        }
                        set_reg(self.cpu, creg, c);
                        t
                    }
                };
                if taken {
                    let target = i.near_branch_target();
                    self.check_near_target(target)?;
                    self.cpu.rip = target;
                } else {
                    self.next(i);
                }
            }
            M::Movsb
            | M::Movsw
            | M::Movsd
            | M::Movsq
            | M::Stosb
            | M::Stosw
            | M::Stosd
            | M::Stosq
            | M::Lodsb
            | M::Lodsw
            | M::Lodsd
            | M::Lodsq
            | M::Cmpsb
            | M::Cmpsw
            | M::Cmpsd
            | M::Cmpsq
            | M::Scasb
            | M::Scasw
            | M::Scasd
            | M::Scasq
            | M::Insb
            | M::Insw
            | M::Insd
            | M::Outsb
            | M::Outsw
            | M::Outsd
                if !matches!(i.mnemonic(), M::Movsd | M::Cmpsd)
                    || matches!(i.code(), Code::Movsd_m32_m32 | Code::Cmpsd_m32_m32) =>
            {
                self.exec_string(i)?
            }
            M::Int => {
                let v = i.immediate8();
                let next = i.next_ip();
                if self.cpu.rflags & rf::VM != 0 {
                    self.v86_int(v, next)?;
                } else {
                    self.deliver(v, IntKind::Software, next, None)?;
                }
                self.dbg_soft_int = true;
            }
            M::Int3 => {
                let next = i.next_ip();
                self.deliver(3, IntKind::Software, next, None)?;
                self.dbg_soft_int = true;
            }
            M::Int1 => {
                let next = i.next_ip();
                self.deliver(1, IntKind::Exception, next, None)?;
            }
            M::Into => {
                if self.flags() & OF != 0 {
                    let next = i.next_ip();
                    self.deliver(4, IntKind::Software, next, None)?;
                    self.dbg_soft_int = true;
                } else {
                    self.next(i);
                }
            }
            M::Bound => {
                let bits = self.op_bits(i, 0);
                let Loc::Mem(s, ea) = self.loc(i, 1) else {
                    return Err(Exception::InvalidOpcode.into());
                };
                let idx = sext(get_reg(self.cpu, i.op0_register()), bits) as i64;
                let lo = sext(self.read_mem(s, ea, bits)?, bits) as i64;
                let hi = sext(self.read_mem(s, ea.wrapping_add(u64::from(bits / 8)), bits)?, bits) as i64;
                if idx < lo || idx > hi {
                    return Err(Exception::BoundRange.into());
                }
                self.next(i);
            }
            M::Hlt => {
                self.require_cpl0()?;
                self.cpu.halted = true;
                self.next(i);
            }
            M::In | M::Out => {
                let is_in = i.mnemonic() == M::In;
                let (data_op, port_op) = if is_in { (0, 1) } else { (1, 0) };
                let bits = reg_info(i.op_register(data_op)).1;
                let port = match i.op_kind(port_op) {
                    OpKind::Register => (self.cpu.gpr[2] & 0xFFFF) as u16,
                    _ => u16::from(i.immediate8()),
                };
                self.io_permitted(port, (bits / 8) as usize)?;
                let size = AccessSize::from_bytes((bits / 8) as usize).unwrap_or(AccessSize::Byte);
                if is_in {
                    let v = self.io_bus().port_read(PortAddr(port), size);
                    set_reg(self.cpu, i.op0_register(), u64::from(v));
                } else {
                    let v = get_reg(self.cpu, i.op1_register()) as u32;
                    self.io_bus().port_write(PortAddr(port), size, v);
                    self.io_written = true;
                }
                self.next(i);
            }
            M::Cpuid => {
                let (a, b, c, d) = crate::cpuid::cpuid_full(
                    self.cpu.gpr[0] as u32,
                    self.cpu.gpr[1] as u32,
                    self.cpu.cr4,
                    self.cpu.fpu.xcr0,
                    self.cpu.msr.apic_base & (1 << 11) != 0,
                );
                self.cpu.gpr[0] = u64::from(a);
                self.cpu.gpr[3] = u64::from(b);
                self.cpu.gpr[1] = u64::from(c);
                self.cpu.gpr[2] = u64::from(d);
                self.next(i);
            }
            M::Rdtsc | M::Rdtscp => {
                if self.cpu.cr4 & (1 << 2) != 0 && self.cpu.cpl != 0 {
                    return Err(Exception::GeneralProtection(0).into());
                }
                let t = self.cpu.icount.wrapping_add(self.cpu.msr.tsc_offset);
                self.cpu.gpr[0] = t & 0xFFFF_FFFF;
                self.cpu.gpr[2] = t >> 32;
                if i.mnemonic() == M::Rdtscp {
                    self.cpu.gpr[1] = self.cpu.msr.tsc_aux & 0xFFFF_FFFF;
                }
                self.next(i);
            }
            M::Ud0 | M::Ud1 | M::Ud2 => return Err(Exception::InvalidOpcode.into()),
            _ => {
                // x87, MMX, SSE*, FXSAVE and XSAVE live in crate::fpu and crate::simd.
                if let Some(r) = self.exec_fpu_simd(i) {
                    return r;
                }
                return self.exec_system(i);
            }
        }
        Ok(())
    }

    /// In non-64-bit modes a near target beyond the CS limit raises #GP(0); in 64-bit mode a
    /// non-canonical target does.
    pub(crate) fn check_near_target(&self, t: u64) -> Result<(), Exception> {
        if self.mode == CpuMode::Long64 {
            if ((t << 16) as i64 >> 16) as u64 != t {
                return Err(Exception::GeneralProtection(0));
            }
        } else if t > u64::from(self.cpu.seg[SegReg::Cs as usize].limit) {
            return Err(Exception::GeneralProtection(0));
        }
        Ok(())
    }

    fn near_opsize(&self, i: &Instruction) -> u32 {
        match i.op_kind(0) {
            OpKind::NearBranch16 => 16,
            OpKind::NearBranch32 => 32,
            OpKind::NearBranch64 => 64,
            OpKind::Register => reg_info(i.op0_register()).1,
            _ => (i.memory_size().size() * 8) as u32,
        }
    }

    fn exec_jmp(&mut self, i: &Instruction) -> R<()> {
        match i.op_kind(0) {
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                let t = i.near_branch_target();
                self.check_near_target(t)?;
                self.cpu.rip = t;
            }
            OpKind::FarBranch16 | OpKind::FarBranch32 => {
                let off = if i.op_kind(0) == OpKind::FarBranch16 {
                    u64::from(i.far_branch16())
                } else {
                    u64::from(i.far_branch32())
                };
                self.far_jump(i.far_branch_selector(), off)?;
            }
            OpKind::Memory if i.is_jmp_far_indirect() => {
                let (sel, off) = self.far_pointer(i)?;
                self.far_jump(sel, off)?;
            }
            _ => {
                let bits = self.near_opsize(i);
                let t = self.val(i, 0, bits)?;
                self.check_near_target(t)?;
                self.cpu.rip = t;
            }
        }
        Ok(())
    }

    /// Reads an m16:16, m16:32 or m16:64 far pointer: (selector, offset).
    fn far_pointer(&mut self, i: &Instruction) -> Result<(u16, u64), Exception> {
        let Loc::Mem(s, ea) = self.loc(i, 0) else {
            return Err(Exception::InvalidOpcode);
        };
        let total = i.memory_size().size() as u32 * 8;
        let obits = total - 16;
        let off = self.read_mem(s, ea, obits)?;
        let sel = self.read_mem(s, ea.wrapping_add(u64::from(obits / 8)), 16)? as u16;
        Ok((sel, off))
    }

    fn exec_call(&mut self, i: &Instruction) -> R<()> {
        let next = i.next_ip();
        match i.op_kind(0) {
            OpKind::FarBranch16 | OpKind::FarBranch32 => {
                let bits = if i.op_kind(0) == OpKind::FarBranch16 { 16 } else { 32 };
                let off = if bits == 16 { u64::from(i.far_branch16()) } else { u64::from(i.far_branch32()) };
                self.far_call(bits, i.far_branch_selector(), off, next)?;
            }
            OpKind::Memory if i.is_call_far_indirect() => {
                let bits = i.memory_size().size() as u32 * 8 - 16;
                let (sel, off) = self.far_pointer(i)?;
                self.far_call(bits, sel, off, next)?;
            }
            _ => {
                let bits = Self::opsize_from_sp(i);
                let t = match i.op_kind(0) {
                    OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => i.near_branch_target(),
                    _ => self.val(i, 0, bits)?,
                };
                self.check_near_target(t)?;
                self.push(bits, next)?;
                self.cpu.rip = t;
            }
        }
        Ok(())
    }

    fn exec_string(&mut self, i: &Instruction) -> R<()> {
        use Mnemonic as M;
        let m = i.mnemonic();
        let (bits, kind) = match m {
            M::Movsb => (8, 0),
            M::Movsw => (16, 0),
            M::Movsd => (32, 0),
            M::Movsq => (64, 0),
            M::Stosb => (8, 1),
            M::Stosw => (16, 1),
            M::Stosd => (32, 1),
            M::Stosq => (64, 1),
            M::Lodsb => (8, 2),
            M::Lodsw => (16, 2),
            M::Lodsd => (32, 2),
            M::Lodsq => (64, 2),
            M::Cmpsb => (8, 3),
            M::Cmpsw => (16, 3),
            M::Cmpsd => (32, 3),
            M::Cmpsq => (64, 3),
            M::Scasb => (8, 4),
            M::Scasw => (16, 4),
            M::Scasd => (32, 4),
            M::Scasq => (64, 4),
            M::Insb => (8, 5),
            M::Insw => (16, 5),
            M::Insd => (32, 5),
            M::Outsb => (8, 6),
            M::Outsw => (16, 6),
            _ => (32, 6),
        };
        if kind >= 5 {
            self.io_permitted((self.cpu.gpr[2] & 0xFFFF) as u16, (bits / 8) as usize)?;
        }
        let abits = string_addr_bits(i);
        let amask = size_mask(abits);
        let creg = match abits {
            16 => Register::CX,
            32 => Register::ECX,
            _ => Register::RCX,
        };
        let rep = i.has_rep_prefix() || i.has_repne_prefix();
        let src_seg = sreg_of(i.memory_segment());
        let n = u64::from(bits / 8);
        let step = if self.cpu.rflags & DF != 0 { n.wrapping_neg() } else { n };
        let (si_r, di_r) = match abits {
            16 => (Register::SI, Register::DI),
            32 => (Register::ESI, Register::EDI),
            _ => (Register::RSI, Register::RDI),
        };
        let acc = match bits {
            8 => Register::AL,
            16 => Register::AX,
            32 => Register::EAX,
            _ => Register::RAX,
        };
        let port = (self.cpu.gpr[2] & 0xFFFF) as u16;
        let size = AccessSize::from_bytes(n as usize).unwrap_or(AccessSize::Byte);
        let mut first = true;
        self.code_written = false;
        loop {
            if rep {
                if get_reg(self.cpu, creg) == 0 {
                    if first && abits == 32 && self.cpu.mode() == crate::state::CpuMode::Long64 {
                        // CPU model choice (documented in cpu/src/cpuid.rs): a 32-bit-address
                        // REP in 64-bit mode writes ECX even for a zero count, which clears
                        // RCX[63:32], and REP MOVS/STOS (the fast-string forms) also write
                        // ESI/EDI, as the Intel Xeons this model follows do. Other hosts leave
                        // them untouched; the differential test lists this case in its table
                        // of model-specific results.
                        set_reg(self.cpu, creg, 0);
                        if kind <= 1 {
                            let di = get_reg(self.cpu, di_r);
                            set_reg(self.cpu, di_r, di);
                        }
                        if kind == 0 {
                            let si = get_reg(self.cpu, si_r);
                            set_reg(self.cpu, si_r, si);
                        }
                    }
                    break;
                }
                if !first {
                    // Each further iteration counts as an instruction, so a huge count is
                    // interruptible and bounded by the run budget.
                    if self.cpu.icount + 1 >= self.budget_end {
                        // RIP still at this instruction: resume later. An event taken before
                        // the next iteration pushes RF = 1 (SDM 17.3.1.1), so an instruction
                        // breakpoint on this instruction does not hit again.
                        self.cpu.rflags |= rf::RF;
                        self.fetch_lin_page = u64::MAX;
                        return Ok(());
                    }
                    self.cpu.icount += 1;
                }
            }
            first = false;
            let si = get_reg(self.cpu, si_r) & amask;
            let di = get_reg(self.cpu, di_r) & amask;
            match kind {
                0 => {
                    let v = self.read_mem(src_seg, si, bits)?;
                    self.write_mem(SegReg::Es, di, bits, v)?;
                    set_reg(self.cpu, si_r, si.wrapping_add(step));
                    set_reg(self.cpu, di_r, di.wrapping_add(step));
                }
                1 => {
                    let v = get_reg(self.cpu, acc);
                    let run = if rep && abits == 64 { self.rep_stos_run(di, v, n, get_reg(self.cpu, creg)) } else { 0 };
                    if run > 1 {
                        // `run` iterations stored at once: this one and `run - 1` more, each
                        // counted here as the iterations below would (the tail takes this one
                        // off the count).
                        self.cpu.icount += run - 1;
                        set_reg(self.cpu, creg, get_reg(self.cpu, creg) - (run - 1));
                        set_reg(self.cpu, di_r, di.wrapping_add(n * run));
                    } else {
                        self.write_mem(SegReg::Es, di, bits, v)?;
                        set_reg(self.cpu, di_r, di.wrapping_add(step));
                    }
                }
                2 => {
                    let v = self.read_mem(src_seg, si, bits)?;
                    set_reg(self.cpu, acc, v);
                    set_reg(self.cpu, si_r, si.wrapping_add(step));
                }
                3 | 4 => {
                    let (a, b) = if kind == 3 {
                        (self.read_mem(src_seg, si, bits)?, self.read_mem(SegReg::Es, di, bits)?)
                    } else {
                        (get_reg(self.cpu, acc), self.read_mem(SegReg::Es, di, bits)?)
                    };
                    let res = a.wrapping_sub(b) & size_mask(bits);
                    self.cpu.lazy.set(FlagOp::Sub, bits, a, b, res);
                    if kind == 3 {
                        set_reg(self.cpu, si_r, si.wrapping_add(step));
                    }
                    set_reg(self.cpu, di_r, di.wrapping_add(step));
                }
                5 => {
                    self.check_writable(SegReg::Es)?;
                    let lin = self.linear(SegReg::Es, di, n)?;
                    self.probe_write(lin, n as usize)?;
                    let v = self.io_bus().port_read(PortAddr(port), size);
                    self.write_mem(SegReg::Es, di, bits, u64::from(v))?;
                    set_reg(self.cpu, di_r, di.wrapping_add(step));
                }
                _ => {
                    let v = self.read_mem(src_seg, si, bits)?;
                    self.io_bus().port_write(PortAddr(port), size, v as u32);
                    self.io_written = true;
                    set_reg(self.cpu, si_r, si.wrapping_add(step));
                }
            }
            if !rep {
                break;
            }
            let c = get_reg(self.cpu, creg).wrapping_sub(1);
            set_reg(self.cpu, creg, c);
            if kind == 3 || kind == 4 {
                let z = self.cpu.lazy.res == 0;
                if (i.has_repe_prefix() && !z) || (i.has_repne_prefix() && z) {
                    break;
                }
            }
            if self.code_written && get_reg(self.cpu, creg) != 0 {
                // The string wrote over decoded code (perhaps its own bytes): stop here, as an
                // interrupt would, so the rest runs from a fresh fetch. This also makes the
                // outcome independent of where run budgets happen to split the instruction.
                // RF as at a budget stop (above): which engine's code pages a store hits
                // differs (the JIT's translated blocks, the interpreter's decode cache), so
                // the state at either stop must be the same.
                self.code_written = false;
                self.cpu.rflags |= rf::RF;
                self.fetch_lin_page = u64::MAX;
                return Ok(());
            }
        }
        self.next(i);
        Ok(())
    }

    /// REP STOS in 64-bit mode with DF = 0: how many iterations, starting with the current one
    /// at `di`, can be stored at once, and stores them. Only iterations whose every store the
    /// loop above would make through the fast TLB path on the same page (RAM, writable, no
    /// cached code, no watch or alignment check: the page's write tag is fast), within `count`
    /// and within the run budget (the further iterations that the loop would run before
    /// stopping at `budget_end`). 0 or 1: nothing done, the loop stores this one itself.
    fn rep_stos_run(&mut self, di: u64, v: u64, n: u64, count: u64) -> u64 {
        if self.mode != CpuMode::Long64 || self.cpu.rflags & DF != 0 || count < 2 {
            return 0;
        }
        if ((di << 16) as i64 >> 16) as u64 != di {
            return 0;
        }
        let room = (0x1000 - (di & 0xFFF)) / n;
        let further = self.budget_end.saturating_sub(self.cpu.icount + 1);
        let m = count.min(room).min(further.saturating_add(1));
        if m < 2 {
            return 0;
        }
        let user = self.cpu.cpl == 3 && !self.sys_access;
        let Some(b) = self.cpu.tlb.lookup(user, mmu::TlbAccess::Write, di, m * n) else { return 0 };
        let Some(dst) = self.bus.memory().backing_mut().get_mut(b as usize..(b + m * n) as usize) else { return 0 };
        let pattern = v.to_le_bytes();
        for chunk in dst.chunks_exact_mut(n as usize) {
            chunk.copy_from_slice(&pattern[..n as usize]);
        }
        m
    }

    fn exec_mov(&mut self, i: &Instruction) -> R<()> {
        let k0 = i.op_kind(0);
        let k1 = i.op_kind(1);
        if k0 == OpKind::Register {
            let r = i.op0_register();
            if r.is_segment_register() {
                let sel = self.val(i, 1, 16)? as u16;
                if r == Register::CS {
                    return Err(Exception::InvalidOpcode.into());
                }
                self.load_seg(sreg_of(r), sel)?;
                if r == Register::SS {
                    self.dbg_ss_loaded = true;
                }
                self.next(i);
                return Ok(());
            }
            if r.is_cr() || r.is_dr() {
                return self.write_control(i);
            }
        }
        if k1 == OpKind::Register {
            let r = i.op1_register();
            if r.is_segment_register() {
                let sel = u64::from(self.cpu.seg[sreg_of(r) as usize].selector);
                let l = self.loc(i, 0);
                // To a register, the selector is zero-extended to the operand size.
                let bits = if let Loc::Reg(_) = l { self.op_bits(i, 0) } else { 16 };
                self.set(l, bits, sel)?;
                self.next(i);
                return Ok(());
            }
            if r.is_cr() || r.is_dr() {
                return self.read_control(i);
            }
        }
        let bits = self.op_bits(i, 0);
        let v = self.val(i, 1, bits)?;
        let l = self.loc(i, 0);
        self.set(l, bits, v)?;
        self.next(i);
        Ok(())
    }

    fn read_control(&mut self, i: &Instruction) -> R<()> {
        self.require_cpl0()?;
        let r = i.op1_register();
        let v = match r {
            Register::CR0 => self.cpu.cr0,
            Register::CR2 => self.cpu.cr2,
            Register::CR3 => self.cpu.cr3,
            Register::CR4 => self.cpu.cr4,
            Register::CR8 => self.cpu.cr8,
            _ if r.is_dr() && (r as usize) - (Register::DR0 as usize) < 8 => {
                self.read_dr((r as usize) - (Register::DR0 as usize))?
            }
            _ => return Err(Exception::InvalidOpcode.into()),
        };
        let bits = if self.mode == CpuMode::Long64 { 64 } else { 32 };
        set_reg(self.cpu, i.op0_register(), v & size_mask(bits));
        self.next(i);
        Ok(())
    }

    fn write_control(&mut self, i: &Instruction) -> R<()> {
        self.require_cpl0()?;
        let r = i.op0_register();
        let v = get_reg(self.cpu, i.op1_register());
        match r {
            Register::CR0 => self.set_cr0(v)?,
            Register::CR2 => self.cpu.cr2 = v,
            Register::CR3 => {
                self.cpu.cr3 = v;
                if self.cpu.cr4 & cr::CR4_PGE != 0 {
                    self.cpu.tlb.flush_non_global();
                } else {
                    self.cpu.tlb.flush_all();
                }
            }
            Register::CR4 => {
                const KNOWN: u64 = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400;
                // CR4.OSXSAVE exists when CPUID advertises XSAVE.
                let osxsave = if crate::cpuid::LEAF1_ECX & (1 << 26) != 0 { cr::CR4_OSXSAVE } else { 0 };
                if v & !(KNOWN | osxsave) != 0 {
                    return Err(Exception::GeneralProtection(0).into());
                }
                if self.cpu.efer & cr::EFER_LMA != 0 && v & cr::CR4_PAE == 0 {
                    return Err(Exception::GeneralProtection(0).into());
                }
                self.cpu.cr4 = v;
                self.cpu.tlb.flush_all();
                self.mode_changed = true;
            }
            Register::CR8 => self.cpu.cr8 = v & 0xF,
            _ if r.is_dr() && (r as usize) - (Register::DR0 as usize) < 8 => {
                self.write_dr((r as usize) - (Register::DR0 as usize), v)?
            }
            _ => return Err(Exception::InvalidOpcode.into()),
        }
        self.next(i);
        Ok(())
    }

    pub(crate) fn set_cr0(&mut self, v: u64) -> Result<(), Exception> {
        let v = (v | cr::CR0_ET) & 0xFFFF_FFFF;
        if v & cr::CR0_PG != 0 && v & cr::CR0_PE == 0 {
            return Err(Exception::GeneralProtection(0));
        }
        if v & cr::CR0_NW != 0 && v & cr::CR0_CD == 0 {
            return Err(Exception::GeneralProtection(0));
        }
        let old = self.cpu.cr0;
        if v & cr::CR0_PG != 0 && old & cr::CR0_PG == 0 && self.cpu.efer & cr::EFER_LME != 0 {
            if self.cpu.cr4 & cr::CR4_PAE == 0 {
                return Err(Exception::GeneralProtection(0));
            }
            self.cpu.efer |= cr::EFER_LMA;
        }
        if v & cr::CR0_PG == 0 && old & cr::CR0_PG != 0 {
            if self.mode == CpuMode::Long64 {
                return Err(Exception::GeneralProtection(0));
            }
            self.cpu.efer &= !cr::EFER_LMA;
        }
        self.cpu.cr0 = v;
        if (old ^ v) & (cr::CR0_PG | cr::CR0_WP | cr::CR0_PE) != 0 {
            self.cpu.tlb.flush_all();
        }
        self.mode_changed = true;
        if v & cr::CR0_PE == 0 {
            self.cpu.cpl = 0;
        }
        Ok(())
    }
}

/// The `r`-th register of the AX.. or EAX.. family (encoding order).
fn gpr_of_width(base: Register, r: usize) -> Register {
    const W: [Register; 8] = [
        Register::AX,
        Register::CX,
        Register::DX,
        Register::BX,
        Register::SP,
        Register::BP,
        Register::SI,
        Register::DI,
    ];
    const D: [Register; 8] = [
        Register::EAX,
        Register::ECX,
        Register::EDX,
        Register::EBX,
        Register::ESP,
        Register::EBP,
        Register::ESI,
        Register::EDI,
    ];
    if base == Register::AX {
        W[r]
    } else {
        D[r]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_reg_info_layout() {
        assert_eq!(reg_info(Register::AL), (0, 8, false));
        assert_eq!(reg_info(Register::BH), (3, 8, true));
        assert_eq!(reg_info(Register::SPL), (4, 8, false));
        assert_eq!(reg_info(Register::R15L), (15, 8, false));
        assert_eq!(reg_info(Register::R8W), (8, 16, false));
        assert_eq!(reg_info(Register::EDI), (7, 32, false));
        assert_eq!(reg_info(Register::R15), (15, 64, false));
        assert_eq!(reg_info(Register::RIP).1, 0);
    }
}
