//! The hot path: the most frequent instruction forms, pre-decoded once per decode-cache entry
//! into a [`Fast`] record (operation, operand size, GPR indices, immediate) and executed without
//! going back through iced-x86's operand accessors or the mnemonic dispatch. Everything else
//! (and every form with an operand this path does not model, such as AH..BH) is
//! [`FastKind::Slow`] and goes to [`Cx::exec`]. The differential test runs every instruction
//! through this dispatch, so both paths are checked against the host CPU.

use super::alu::{self, ShiftOp};
use super::exec::{sreg_of, test_cc, R};
use super::Cx;
use crate::flags::{size_mask, szp, FlagOp};
use crate::state::rflags::{CF, OF, STATUS};
use crate::state::SegReg;
use iced_x86::{ConditionCode, Instruction, Mnemonic, OpKind, Register};

/// The pre-decoded form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub(crate) enum FastKind {
    /// Not handled here: use the generic executor.
    #[default]
    Slow,
    /// ALU op reg, reg.
    AluRR,
    /// ALU op reg, imm.
    AluRI,
    /// ALU op reg, mem.
    AluRM,
    /// ALU op mem, reg.
    AluMR,
    /// ALU op mem, imm.
    AluMI,
    /// MOV reg, reg.
    MovRR,
    /// MOV reg, imm.
    MovRI,
    /// MOV reg, mem.
    MovRM,
    /// MOV mem, reg.
    MovMR,
    /// MOV mem, imm.
    MovMI,
    /// INC reg.
    IncR,
    /// DEC reg.
    DecR,
    /// LEA reg, mem.
    Lea,
    /// SHL/SHR/SAR reg, imm (op = 0/1/2).
    ShiftRI,
    /// Jcc rel.
    Jcc,
    /// JMP rel.
    Jmp,
    /// PUSH reg (`bits` = operand size).
    PushR,
    /// POP reg.
    PopR,
    /// CALL rel (`bits` = operand size of the pushed return address).
    CallRel,
    /// RET (near, no immediate).
    Ret,
}

/// ALU operations (`Fast::op` for the Alu* kinds).
const ADD: u8 = 0;
const ADC: u8 = 1;
const SUB: u8 = 2;
const SBB: u8 = 3;
const CMP: u8 = 4;
const AND: u8 = 5;
const OR: u8 = 6;
const XOR: u8 = 7;
const TEST: u8 = 8;

/// A pre-decoded instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fast {
    pub(crate) kind: FastKind,
    /// ALU operation or shift kind.
    op: u8,
    /// Operand size in bits.
    bits: u8,
    /// Destination GPR index.
    d: u8,
    /// Source GPR index.
    s: u8,
    /// Segment of the memory operand.
    seg: SegReg,
    /// All-ones mask of the operand size.
    mask: u64,
    /// Condition of a Jcc.
    cc: ConditionCode,
    /// Immediate (already truncated to the operand size) or branch target.
    imm: u64,
    /// Executing this instruction cannot change the code mapping, the mode or the CPL, so the
    /// next fetch may reuse the previous fetch's page translation (always true for the hot
    /// kinds; for [`FastKind::Slow`] only for a whitelist of plain integer instructions).
    pub(crate) keeps_fetch_page: bool,
}

impl Default for Fast {
    fn default() -> Self {
        Fast {
            kind: FastKind::Slow,
            op: 0,
            bits: 0,
            d: 0,
            s: 0,
            seg: SegReg::Ds,
            mask: 0,
            cc: ConditionCode::None,
            imm: 0,
            keeps_fetch_page: false,
        }
    }
}

/// A GPR operand this path can model: (index, bits); not AH..BH, not other register classes.
fn gpr(r: Register) -> Option<(u8, u8)> {
    let n = r as u32;
    let (base, bits) = if r.is_gpr64() {
        (Register::RAX as u32, 64)
    } else if r.is_gpr32() {
        (Register::EAX as u32, 32)
    } else if r.is_gpr16() {
        (Register::AX as u32, 16)
    } else if r.is_gpr8() {
        if (Register::AH as u32..=Register::BH as u32).contains(&n) {
            return None;
        }
        if n < Register::AH as u32 {
            return Some(((n - Register::AL as u32) as u8, 8));
        }
        return Some(((n - Register::SPL as u32 + 4) as u8, 8));
    } else {
        return None;
    };
    Some(((n - base) as u8, bits))
}

fn is_imm(k: OpKind) -> bool {
    matches!(
        k,
        OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
    )
}

/// Pre-decodes `i` (once, when it enters the decode cache).
pub(crate) fn predecode(i: &Instruction) -> Fast {
    let mut f = predecode_inner(i);
    f.mask = if f.bits == 0 { 0 } else { size_mask(u32::from(f.bits)) };
    f.keeps_fetch_page = f.kind != FastKind::Slow || keeps_fetch_page(i);
    f
}

/// Plain integer instructions executed by the generic path that cannot change the code
/// mapping, the mode, CS or the CPL (faults reset the fetch page anyway).
fn keeps_fetch_page(i: &Instruction) -> bool {
    use Mnemonic as M;
    // No segment, control or debug registers, no far transfers.
    for n in 0..i.op_count() {
        match i.op_kind(n) {
            OpKind::Register => {
                let r = i.op_register(n);
                if r.is_segment_register() || r.is_cr() || r.is_dr() {
                    return false;
                }
            }
            OpKind::FarBranch16 | OpKind::FarBranch32 => return false,
            _ => {}
        }
    }
    if i.is_call_far_indirect() || i.is_jmp_far_indirect() {
        return false;
    }
    matches!(
        i.mnemonic(),
        M::Add
            | M::Adc
            | M::Sub
            | M::Sbb
            | M::Cmp
            | M::And
            | M::Or
            | M::Xor
            | M::Test
            | M::Inc
            | M::Dec
            | M::Neg
            | M::Not
            | M::Mov
            | M::Movzx
            | M::Movsx
            | M::Movsxd
            | M::Lea
            | M::Xchg
            | M::Shl
            | M::Sal
            | M::Shr
            | M::Sar
            | M::Rol
            | M::Ror
            | M::Rcl
            | M::Rcr
            | M::Shld
            | M::Shrd
            | M::Mul
            | M::Imul
            | M::Div
            | M::Idiv
            | M::Bt
            | M::Bts
            | M::Btr
            | M::Btc
            | M::Bsf
            | M::Bsr
            | M::Lzcnt
            | M::Tzcnt
            | M::Popcnt
            | M::Bswap
            | M::Cbw
            | M::Cwde
            | M::Cdqe
            | M::Cwd
            | M::Cdq
            | M::Cqo
            | M::Cmpxchg
            | M::Xadd
            | M::Lahf
            | M::Sahf
            | M::Clc
            | M::Stc
            | M::Cmc
            | M::Cld
            | M::Std
            | M::Nop
            | M::Push
            | M::Pop
            | M::Call
            | M::Ret
            | M::Jmp
            | M::Loop
            | M::Loope
            | M::Loopne
            | M::Jcxz
            | M::Jecxz
            | M::Jrcxz
            | M::Enter
            | M::Leave
            | M::Movsb
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
            | M::Xlatb
    ) || is_cc_insn(i)
}

/// SETcc and CMOVcc.
fn is_cc_insn(i: &Instruction) -> bool {
    i.condition_code() != ConditionCode::None
        && !i.is_jcc_short_or_near()
        && !i.is_loop()
        && !i.is_loopcc()
        && !i.is_jcx_short()
}

fn predecode_inner(i: &Instruction) -> Fast {
    let mut f = Fast::default();
    if i.has_lock_prefix() {
        return f;
    }
    let alu = match i.mnemonic() {
        Mnemonic::Add => Some(ADD),
        Mnemonic::Adc => Some(ADC),
        Mnemonic::Sub => Some(SUB),
        Mnemonic::Sbb => Some(SBB),
        Mnemonic::Cmp => Some(CMP),
        Mnemonic::And => Some(AND),
        Mnemonic::Or => Some(OR),
        Mnemonic::Xor => Some(XOR),
        Mnemonic::Test => Some(TEST),
        _ => None,
    };
    let mem_bits = || (i.memory_size().size() * 8) as u8;
    let k0 = if i.op_count() > 0 { i.op_kind(0) } else { OpKind::Register };
    let k1 = if i.op_count() > 1 { i.op_kind(1) } else { OpKind::Register };
    if i.op_count() > 0 && k0 == OpKind::Memory || i.op_count() > 1 && k1 == OpKind::Memory {
        f.seg = sreg_of(i.memory_segment());
    }
    let m = i.mnemonic();
    if let Some(op) = alu {
        f.op = op;
        match (k0, k1) {
            (OpKind::Register, OpKind::Register) => {
                let (Some((d, b)), Some((s, b2))) = (gpr(i.op0_register()), gpr(i.op1_register())) else {
                    return f;
                };
                if b != b2 {
                    return f;
                }
                (f.kind, f.d, f.s, f.bits) = (FastKind::AluRR, d, s, b);
            }
            (OpKind::Register, k) if is_imm(k) => {
                let Some((d, b)) = gpr(i.op0_register()) else { return f };
                (f.kind, f.d, f.bits) = (FastKind::AluRI, d, b);
                f.imm = i.immediate(1) & size_mask(u32::from(b));
            }
            (OpKind::Register, OpKind::Memory) => {
                let Some((d, b)) = gpr(i.op0_register()) else { return f };
                (f.kind, f.d, f.bits) = (FastKind::AluRM, d, b);
            }
            (OpKind::Memory, OpKind::Register) => {
                let Some((s, b)) = gpr(i.op1_register()) else { return f };
                (f.kind, f.s, f.bits) = (FastKind::AluMR, s, b);
            }
            (OpKind::Memory, k) if is_imm(k) => {
                let b = mem_bits();
                (f.kind, f.bits) = (FastKind::AluMI, b);
                f.imm = i.immediate(1) & size_mask(u32::from(b));
            }
            _ => {}
        }
        return f;
    }
    match m {
        Mnemonic::Mov => match (k0, k1) {
            (OpKind::Register, OpKind::Register) => {
                let (Some((d, b)), Some((s, b2))) = (gpr(i.op0_register()), gpr(i.op1_register())) else {
                    return f;
                };
                if b == b2 {
                    (f.kind, f.d, f.s, f.bits) = (FastKind::MovRR, d, s, b);
                }
            }
            (OpKind::Register, k) if is_imm(k) => {
                let Some((d, b)) = gpr(i.op0_register()) else { return f };
                (f.kind, f.d, f.bits) = (FastKind::MovRI, d, b);
                f.imm = i.immediate(1) & size_mask(u32::from(b));
            }
            (OpKind::Register, OpKind::Memory) => {
                let Some((d, b)) = gpr(i.op0_register()) else { return f };
                (f.kind, f.d, f.bits) = (FastKind::MovRM, d, b);
            }
            (OpKind::Memory, OpKind::Register) => {
                let Some((s, b)) = gpr(i.op1_register()) else { return f };
                (f.kind, f.s, f.bits) = (FastKind::MovMR, s, b);
            }
            (OpKind::Memory, k) if is_imm(k) => {
                let b = mem_bits();
                (f.kind, f.bits) = (FastKind::MovMI, b);
                f.imm = i.immediate(1) & size_mask(u32::from(b));
            }
            _ => {}
        },
        Mnemonic::Inc | Mnemonic::Dec if k0 == OpKind::Register => {
            if let Some((d, b)) = gpr(i.op0_register()) {
                f.kind = if m == Mnemonic::Inc { FastKind::IncR } else { FastKind::DecR };
                (f.d, f.bits) = (d, b);
            }
        }
        Mnemonic::Lea => {
            if let Some((d, b)) = gpr(i.op0_register()) {
                (f.kind, f.d, f.bits) = (FastKind::Lea, d, b);
            }
        }
        Mnemonic::Shl | Mnemonic::Sal | Mnemonic::Shr | Mnemonic::Sar
            if k0 == OpKind::Register && k1 == OpKind::Immediate8 =>
        {
            if let Some((d, b)) = gpr(i.op0_register()) {
                f.op = match m {
                    Mnemonic::Shr => 1,
                    Mnemonic::Sar => 2,
                    _ => 0,
                };
                (f.kind, f.d, f.bits) = (FastKind::ShiftRI, d, b);
                f.imm = u64::from(i.immediate8());
            }
        }
        Mnemonic::Push | Mnemonic::Pop if i.op_count() == 1 && k0 == OpKind::Register => {
            if let Some((d, b)) = gpr(i.op0_register()) {
                f.kind = if m == Mnemonic::Push { FastKind::PushR } else { FastKind::PopR };
                (f.d, f.bits) = (d, b);
            }
        }
        Mnemonic::Call if matches!(k0, OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64) => {
            f.kind = FastKind::CallRel;
            f.bits = (i.stack_pointer_increment().unsigned_abs() * 8) as u8;
            f.imm = i.near_branch_target();
        }
        Mnemonic::Ret if i.op_count() == 0 => {
            f.kind = FastKind::Ret;
            f.bits = (i.stack_pointer_increment().unsigned_abs() * 8) as u8;
        }
        Mnemonic::Jmp if matches!(k0, OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64) => {
            f.kind = FastKind::Jmp;
            f.imm = i.near_branch_target();
        }
        _ if i.is_jcc_short_or_near() => {
            f.kind = FastKind::Jcc;
            f.cc = i.condition_code();
            f.imm = i.near_branch_target();
        }
        _ => {}
    }
    f
}

#[inline(always)]
fn alu_res(op: u8, a: u64, b: u64, cf: u64) -> (FlagOp, u64) {
    match op {
        ADD => (FlagOp::Add, a.wrapping_add(b)),
        ADC => (FlagOp::Add, a.wrapping_add(b).wrapping_add(cf)),
        SUB | CMP => (FlagOp::Sub, a.wrapping_sub(b)),
        SBB => (FlagOp::Sub, a.wrapping_sub(b).wrapping_sub(cf)),
        AND | TEST => (FlagOp::Logic, a & b),
        OR => (FlagOp::Logic, a | b),
        _ => (FlagOp::Logic, a ^ b),
    }
}

impl Cx<'_> {
    /// Writes GPR `idx` with operand-size `mask`: 32/64-bit writes replace the register
    /// (zero-extending), 8/16-bit ones merge.
    #[inline(always)]
    fn wreg(&mut self, idx: u8, mask: u64, v: u64) {
        let g = &mut self.cpu.gpr[idx as usize & 15];
        *g = if mask >= 0xFFFF_FFFF { v & mask } else { (*g & !mask) | (v & mask) };
    }

    #[inline(always)]
    fn rreg(&self, idx: u8, mask: u64) -> u64 {
        self.cpu.gpr[idx as usize & 15] & mask
    }

    #[inline(always)]
    fn carry_in(&self, op: u8) -> u64 {
        if op == ADC || op == SBB {
            self.cpu.flag_bits(CF)
        } else {
            0
        }
    }

    #[inline(always)]
    fn mem_seg(f: &Fast) -> SegReg {
        f.seg
    }

    /// Executes a pre-decoded instruction, or hands it to the generic executor.
    #[inline(always)]
    pub(crate) fn exec_fast(&mut self, i: &Instruction, f: &Fast) -> R<()> {
        let bits = u32::from(f.bits);
        let m = f.mask;
        match f.kind {
            FastKind::Slow => return self.exec(i),
            FastKind::AluRR | FastKind::AluRI | FastKind::AluRM => {
                let a = self.rreg(f.d, m);
                let b = match f.kind {
                    FastKind::AluRR => self.rreg(f.s, m),
                    FastKind::AluRI => f.imm,
                    _ => {
                        let ea = self.ea(i);
                        self.read_mem(Self::mem_seg(f), ea, bits)?
                    }
                };
                let (op, res) = alu_res(f.op, a, b, self.carry_in(f.op));
                let res = res & m;
                if f.op != CMP && f.op != TEST {
                    self.wreg(f.d, m, res);
                }
                self.cpu.lazy.set(op, bits, a, b, res);
            }
            FastKind::AluMR | FastKind::AluMI => {
                let seg = Self::mem_seg(f);
                let ea = self.ea(i);
                let a = self.read_mem(seg, ea, bits)?;
                let b = if f.kind == FastKind::AluMR { self.rreg(f.s, m) } else { f.imm };
                let (op, res) = alu_res(f.op, a, b, self.carry_in(f.op));
                let res = res & m;
                if f.op != CMP && f.op != TEST {
                    self.write_mem(seg, ea, bits, res)?;
                }
                self.cpu.lazy.set(op, bits, a, b, res);
            }
            FastKind::MovRR => {
                let v = self.rreg(f.s, m);
                self.wreg(f.d, m, v);
            }
            FastKind::MovRI => self.wreg(f.d, m, f.imm),
            FastKind::MovRM => {
                let ea = self.ea(i);
                let v = self.read_mem(Self::mem_seg(f), ea, bits)?;
                self.wreg(f.d, m, v);
            }
            FastKind::MovMR => {
                let ea = self.ea(i);
                let v = self.rreg(f.s, m);
                self.write_mem(Self::mem_seg(f), ea, bits, v)?;
            }
            FastKind::MovMI => {
                let ea = self.ea(i);
                self.write_mem(Self::mem_seg(f), ea, bits, f.imm)?;
            }
            FastKind::IncR | FastKind::DecR => {
                let a = self.rreg(f.d, m);
                // INC/DEC keep CF: materialize it first.
                let cf = self.cpu.flag_bits(CF);
                let (op, res) = if f.kind == FastKind::IncR {
                    (FlagOp::Add, a.wrapping_add(1) & m)
                } else {
                    (FlagOp::Sub, a.wrapping_sub(1) & m)
                };
                self.wreg(f.d, m, res);
                self.cpu.rflags = (self.cpu.rflags & !CF) | cf;
                self.cpu.lazy.set(op, bits, a, 1, res);
                self.cpu.lazy.mask = STATUS & !CF;
            }
            FastKind::Lea => {
                let a = self.ea(i);
                self.wreg(f.d, m, a & m);
            }
            FastKind::ShiftRI => {
                let a = self.rreg(f.d, m);
                let cnt = f.imm & if bits == 64 { 63 } else { 31 };
                if cnt != 0 && cnt < u64::from(bits) {
                    // The common case inline, with exactly the flags `alu::shift` produces.
                    let (res, cf, of) = match f.op {
                        0 => {
                            let res = (a << cnt) & m;
                            let cf = (a >> (u64::from(bits) - cnt)) & 1;
                            (res, cf, ((res >> (bits - 1)) & 1) ^ cf)
                        }
                        1 => (a >> cnt, (a >> (cnt - 1)) & 1, (a >> (bits - 1)) & 1),
                        _ => {
                            let sh = 64 - bits;
                            let s = ((a << sh) as i64) >> sh;
                            (((s >> cnt) as u64) & m, ((s >> (cnt - 1)) & 1) as u64, 0)
                        }
                    };
                    self.wreg(f.d, m, res);
                    let fl = szp(res, bits) | if cf != 0 { CF } else { 0 } | if of != 0 { OF } else { 0 };
                    self.cpu.rflags = (self.cpu.rflags & !STATUS) | fl;
                    self.cpu.lazy.mask = 0;
                    self.cpu.rip = i.next_ip();
                    return Ok(());
                }
                let op = match f.op {
                    0 => ShiftOp::Shl,
                    1 => ShiftOp::Shr,
                    _ => ShiftOp::Sar,
                };
                if let Some((res, fl)) = alu::shift(op, bits, a, f.imm, 0) {
                    self.wreg(f.d, m, res);
                    self.cpu.rflags = (self.cpu.rflags & !STATUS) | (fl & STATUS);
                    self.cpu.lazy.mask = 0;
                } else if bits == 32 {
                    // A count of 0 still writes a 32-bit register (zero-extending it).
                    self.wreg(f.d, 0xFFFF_FFFF, a);
                }
            }
            FastKind::Jcc => {
                if test_cc(self.cpu, f.cc) {
                    self.check_near_target(f.imm)?;
                    self.cpu.rip = f.imm;
                    return Ok(());
                }
            }
            FastKind::Jmp => {
                self.check_near_target(f.imm)?;
                self.cpu.rip = f.imm;
                return Ok(());
            }
            FastKind::PushR => {
                let v = self.rreg(f.d, m);
                self.push(bits, v)?;
            }
            FastKind::PopR => {
                let sp = self.cpu.gpr[4];
                let v = self.stack_read(sp, bits)?;
                // The stack pointer moves first: POP (E/R)SP loads the popped value.
                self.set_sp(sp.wrapping_add(u64::from(bits / 8)));
                self.wreg(f.d, m, v);
            }
            FastKind::CallRel => {
                self.check_near_target(f.imm)?;
                self.push(bits, i.next_ip())?;
                self.cpu.rip = f.imm;
                return Ok(());
            }
            FastKind::Ret => {
                let sp = self.cpu.gpr[4];
                let target = self.stack_read(sp, bits)?;
                self.check_near_target(target)?;
                self.set_sp(sp.wrapping_add(u64::from(bits / 8)));
                self.cpu.rip = target;
                return Ok(());
            }
        }
        self.cpu.rip = i.next_ip();
        Ok(())
    }
}
