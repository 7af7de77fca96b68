//! More inline forms: 8- and 16-bit register MOV and ALU operations (AH..BH included), INC/DEC
//! and NOT/NEG of any width, MOVZX/MOVSX/MOVSXD, IMUL with two and three operands, shifts by an
//! immediate and by CL, SHLD/SHRD, SETcc, CMOVcc, XCHG, NOP, CWDE/CDQE/CDQ/CQO, BSF/BSR/TZCNT,
//! BT/BTS/BTR/BTC, one-operand MUL/IMUL, DIV, BSWAP, the SSE forms of [`super::sse`]; and the
//! flag liveness the block planner computes for them.
//!
//! Flags are the interpreter's (`cpu::interp::alu`), which follows the SDM and, where the SDM
//! leaves a flag undefined, fixes a value: AF = 0 after shifts and IMUL; SHL's OF = MSB(result)
//! XOR CF and SHR's OF = MSB(operand) for every count; SAR's OF = 0; IMUL's SF/ZF/PF from the
//! truncated result; SHLD/SHRD's OF = MSB(result) XOR MSB(destination), AF = 0; MUL as IMUL;
//! BSF/BSR change ZF only, TZCNT CF and ZF only, BT* CF only (the others kept). Where the host
//! leaves such a flag undefined the emitted code computes it, unless liveness shows that the
//! flags are overwritten before anything can see them.

use super::{offsets, AluOp, Emitter, Src, RFLAGS};
use cpu::state::rflags::{AF, CF, OF, PF, SF, STATUS, ZF};
use dynasmrt::{dynasm, DynasmApi, DynasmLabelApi};
use iced_x86::{Code, ConditionCode, Instruction, Mnemonic, OpKind, Register};

/// An operand size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sz {
    B,
    W,
    D,
    Q,
}

impl Sz {
    pub(super) fn bytes(self) -> i32 {
        match self {
            Sz::B => 1,
            Sz::W => 2,
            Sz::D => 4,
            Sz::Q => 8,
        }
    }

    pub(super) fn from_bytes(n: usize) -> Option<Sz> {
        match n {
            1 => Some(Sz::B),
            2 => Some(Sz::W),
            4 => Some(Sz::D),
            8 => Some(Sz::Q),
            _ => None,
        }
    }
}

/// Byte offset in `CpuState` and width of a general-purpose register of any size (AH..BH are
/// byte 1 of RAX..RBX).
pub(super) fn gpr_loc(r: Register) -> Option<(i32, Sz)> {
    let sz = if r.is_gpr8() {
        Sz::B
    } else if r.is_gpr16() {
        Sz::W
    } else if r.is_gpr32() {
        Sz::D
    } else if r.is_gpr64() {
        Sz::Q
    } else {
        return None;
    };
    let high = matches!(r, Register::AH | Register::CH | Register::DH | Register::BH);
    let off = offsets::GPR + 8 * r.full_register().number() + usize::from(high);
    Some((off as i32, sz))
}

/// An immediate operand truncated to `sz` (sign-extended from 32 bits for 64-bit operations).
pub(super) fn imm_of(i: &Instruction, op: u32, sz: Sz) -> Option<i32> {
    if !matches!(
        i.op_kind(op),
        OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
    ) {
        return None;
    }
    let v = i.immediate(op);
    Some(match sz {
        Sz::B => i32::from(v as u8 as i8),
        Sz::W => i32::from(v as u16 as i16),
        Sz::D => v as u32 as i32,
        Sz::Q => i32::try_from(v as i64).ok()?,
    })
}

/// A shift kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ShiftKind {
    Shl,
    Shr,
    Sar,
}

/// The register-only forms added here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ext {
    /// 8/16-bit `dst = src`.
    MovN { dst: i32, src: Src, sz: Sz },
    /// 8/16-bit ALU operation.
    AluN { op: AluOp, dst: i32, src: Src, sz: Sz },
    /// 8/16-bit INC/DEC.
    IncDecN { inc: bool, dst: i32, sz: Sz },
    /// NOT (no flags).
    Not { dst: i32, sz: Sz },
    /// NEG.
    Neg { dst: i32, sz: Sz },
    /// MOVZX/MOVSX/MOVSXD from a register.
    Extend { dst: i32, dsz: Sz, src: i32, ssz: Sz, signed: bool },
    /// IMUL `dst = src1 * src2` (two-operand form: `src1 = dst`), 16/32/64-bit.
    Imul { dst: i32, src1: i32, src2: Src, sz: Sz },
    /// SHL/SHR/SAR of a 32/64-bit register by an immediate (masked count 2.. only; 1 is
    /// `Inline::Shift1`, 0 goes to the interpreter).
    ShiftImm { kind: ShiftKind, dst: i32, count: i8, sz: Sz },
    /// SHL/SHR/SAR of a 32/64-bit register by CL (a count of 0 keeps the flags).
    ShiftCl { kind: ShiftKind, dst: i32, sz: Sz },
    /// ROL/ROR of a 32/64-bit register by an immediate (`cl`: false) or by CL: inline only when
    /// its flags are dead (the host's OF differs for counts above 1; count 0 keeps the flags).
    RotDead { left: bool, dst: i32, cl: bool, count: i8, sz: Sz },
    /// SETcc to a byte register.
    Setcc { cc: ConditionCode, dst: i32 },
    /// CMOVcc between registers (16/32/64-bit).
    Cmov { cc: ConditionCode, dst: i32, src: i32, sz: Sz },
    /// XCHG of two registers.
    Xchg { a: i32, b: i32, sz: Sz },
    /// NOP (any form, no memory access).
    Nop,
    /// CWDE, CDQE, CDQ, CQO.
    Convert(Code),
    /// RDTSC at CPL 0 (no fault possible): EDX:EAX = instruction count + TSC offset.
    Rdtsc,
    /// An SSE form (see [`super::sse`]).
    Sse(super::sse::Sse),
    /// BSF/BSR (`rev`) of 32/64-bit registers: ZF = source is zero, the other flags kept; a zero
    /// source leaves the destination as it was (all 64 bits).
    BitScan { rev: bool, dst: i32, src: i32, sz: Sz },
    /// TZCNT of 32/64-bit registers (host BMI1): CF = source is zero, ZF = result is zero, the
    /// other flags kept.
    Tzcnt { dst: i32, src: i32, sz: Sz },
    /// BT/BTS/BTR/BTC of a 32/64-bit register by an immediate or a register (offset modulo the
    /// width): CF = the bit, the other flags kept.
    BitTest { op: BitOp, dst: i32, bit: Src, sz: Sz },
    /// MUL/IMUL (`signed`) with one 32/64-bit register operand: EDX:EAX / RDX:RAX = EAX/RAX *
    /// src; CF = OF = the high half is significant, SF/ZF/PF from the low half, AF = 0.
    MulWide { signed: bool, src: i32, sz: Sz },
    /// DIV by a 32/64-bit register; #DE (zero divisor, quotient overflow) through the
    /// interpreter. Flags kept.
    Div { src: i32, sz: Sz },
    /// BSWAP of a 32/64-bit register.
    Bswap { dst: i32, sz: Sz },
    /// SHLD/SHRD (`left`) of 32/64-bit registers by CL (`count` None) or by an immediate
    /// (masked, not 0): CF, SF, ZF, PF the host's, OF = MSB(result) ^ MSB(destination), AF = 0
    /// (the interpreter's rule for every count); a count of 0 keeps the flags and still writes
    /// a 32-bit destination (zero-extended).
    DoubleShift { left: bool, dst: i32, src: i32, count: Option<i8>, sz: Sz },
}

/// A bit-test operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BitOp {
    Bt,
    Bts,
    Btr,
    Btc,
}

/// What an instruction does to the guest's status flags, for liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FlagUse {
    /// Neither reads nor writes them, and cannot fault.
    None,
    /// Writes all six without reading them, and cannot fault.
    WritesAll,
    /// Reads them, or may make them visible (helper, fault, block exit).
    Observes,
}

impl Ext {
    /// The `CpuState` offsets of the guest registers (and count) this form's emitter reads or
    /// writes, implicit operands included.
    pub(super) fn regs(self) -> [Option<i32>; 3] {
        let gpr = |n: usize| Some((offsets::GPR + 8 * n) as i32);
        let src = |s: Src| match s {
            Src::Reg(r) => Some(r),
            Src::Imm(_) => None,
        };
        match self {
            Ext::MovN { dst, src: s, .. } | Ext::AluN { dst, src: s, .. } => [Some(dst), src(s), None],
            Ext::IncDecN { dst, .. }
            | Ext::Not { dst, .. }
            | Ext::Neg { dst, .. }
            | Ext::ShiftImm { dst, .. }
            | Ext::Setcc { dst, .. } => [Some(dst), None, None],
            Ext::Extend { dst, src, .. } | Ext::Cmov { dst, src, .. } => [Some(dst), Some(src), None],
            Ext::Xchg { a, b, .. } => [Some(a), Some(b), None],
            Ext::Imul { dst, src1, src2, .. } => [Some(dst), Some(src1), src(src2)],
            Ext::ShiftCl { dst, .. } => [Some(dst), gpr(1), None],
            Ext::RotDead { dst, cl, .. } => [Some(dst), if cl { gpr(1) } else { None }, None],
            Ext::Nop => [None, None, None],
            Ext::Convert(_) => [gpr(0), gpr(2), None],
            Ext::Rdtsc => [gpr(0), gpr(2), Some(offsets::ICOUNT as i32)],
            Ext::Sse(s) => [s.gpr(), None, None],
            Ext::BitScan { dst, src, .. } | Ext::Tzcnt { dst, src, .. } => [Some(dst), Some(src), None],
            Ext::BitTest { dst, bit, .. } => [Some(dst), src(bit), None],
            Ext::MulWide { src, .. } | Ext::Div { src, .. } => [gpr(0), gpr(2), Some(src)],
            Ext::Bswap { dst, .. } => [Some(dst), None, None],
            Ext::DoubleShift { dst, src, count, .. } => {
                [Some(dst), Some(src), if count.is_none() { gpr(1) } else { None }]
            }
        }
    }

    pub(super) fn flag_use(self) -> FlagUse {
        match self {
            Ext::MovN { .. }
            | Ext::Not { .. }
            | Ext::Extend { .. }
            | Ext::Xchg { .. }
            | Ext::Nop
            | Ext::Convert(_)
            | Ext::Rdtsc => FlagUse::None,
            Ext::Sse(s) if s.may_fault() => FlagUse::Observes,
            Ext::Sse(_) | Ext::Bswap { .. } => FlagUse::None,
            Ext::MulWide { .. } | Ext::DoubleShift { count: Some(_), .. } => FlagUse::WritesAll,
            Ext::DoubleShift { count: None, .. } => FlagUse::Observes,
            Ext::BitScan { .. } | Ext::Tzcnt { .. } | Ext::BitTest { .. } | Ext::Div { .. } => FlagUse::Observes,
            Ext::AluN { op: AluOp::Adc | AluOp::Sbb, .. } => FlagUse::Observes,
            Ext::AluN { .. } | Ext::Neg { .. } | Ext::Imul { .. } | Ext::ShiftImm { .. } => FlagUse::WritesAll,
            Ext::IncDecN { .. } | Ext::ShiftCl { .. } | Ext::RotDead { .. } | Ext::Setcc { .. } | Ext::Cmov { .. } => {
                FlagUse::Observes
            }
        }
    }
}

/// The SSE forms and the bit-scan, bit-test, wide multiply, divide and byte-swap forms are on
/// unless `FERRO_JIT_FORMS=0` (for measuring what they gain).
pub(super) fn forms_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("FERRO_JIT_FORMS").map_or(true, |v| v != "0"))
}

/// The host has BMI1 (TZCNT; without it the encoding runs as BSF).
fn host_bmi1() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::arch::is_x86_feature_detected!("bmi1"))
}

fn shift_kind(m: Mnemonic) -> Option<ShiftKind> {
    match m {
        Mnemonic::Shl | Mnemonic::Sal => Some(ShiftKind::Shl),
        Mnemonic::Shr => Some(ShiftKind::Shr),
        Mnemonic::Sar => Some(ShiftKind::Sar),
        _ => None,
    }
}

/// Whether (and how) a register-only instruction runs inline through the forms added here.
pub(super) fn classify_ext(i: &Instruction) -> Option<Ext> {
    if i.has_lock_prefix() {
        return None;
    }
    let m = i.mnemonic();
    // What the interpreter runs as a no-op (no memory access, no fault).
    if matches!(
        m,
        Mnemonic::Nop
            | Mnemonic::Pause
            | Mnemonic::Endbr32
            | Mnemonic::Endbr64
            | Mnemonic::Lfence
            | Mnemonic::Mfence
            | Mnemonic::Sfence
            | Mnemonic::Prefetchnta
            | Mnemonic::Prefetcht0
            | Mnemonic::Prefetcht1
            | Mnemonic::Prefetcht2
            | Mnemonic::Prefetchw
    ) {
        return Some(Ext::Nop);
    }
    if matches!(i.code(), Code::Cwde | Code::Cdqe | Code::Cdq | Code::Cqo) {
        return Some(Ext::Convert(i.code()));
    }
    if (0..i.op_count()).any(|k| i.op_kind(k) == OpKind::Memory) {
        return None;
    }
    let reg = |k: u32| if i.op_kind(k) == OpKind::Register { gpr_loc(i.op_register(k)) } else { None };
    let (dst, sz) = reg(0)?;
    let src_of = |sz: Sz| -> Option<Src> {
        match reg(1) {
            Some((s, ssz)) if ssz == sz => Some(Src::Reg(s)),
            Some(_) => None,
            None => imm_of(i, 1, sz).map(Src::Imm),
        }
    };
    let small = matches!(sz, Sz::B | Sz::W);
    match m {
        Mnemonic::Mov if small && i.op_count() == 2 => Some(Ext::MovN { dst, src: src_of(sz)?, sz }),
        Mnemonic::Add
        | Mnemonic::Adc
        | Mnemonic::Sub
        | Mnemonic::Sbb
        | Mnemonic::And
        | Mnemonic::Or
        | Mnemonic::Xor
        | Mnemonic::Cmp
        | Mnemonic::Test
            if small && i.op_count() == 2 =>
        {
            let op = match m {
                Mnemonic::Add => AluOp::Add,
                Mnemonic::Adc => AluOp::Adc,
                Mnemonic::Sub => AluOp::Sub,
                Mnemonic::Sbb => AluOp::Sbb,
                Mnemonic::And => AluOp::And,
                Mnemonic::Or => AluOp::Or,
                Mnemonic::Xor => AluOp::Xor,
                Mnemonic::Cmp => AluOp::Cmp,
                _ => AluOp::Test,
            };
            Some(Ext::AluN { op, dst, src: src_of(sz)?, sz })
        }
        Mnemonic::Inc | Mnemonic::Dec if small && i.op_count() == 1 => {
            Some(Ext::IncDecN { inc: m == Mnemonic::Inc, dst, sz })
        }
        Mnemonic::Not if i.op_count() == 1 => Some(Ext::Not { dst, sz }),
        Mnemonic::Neg if i.op_count() == 1 => Some(Ext::Neg { dst, sz }),
        Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd if i.op_count() == 2 => {
            let (src, ssz) = reg(1)?;
            Some(Ext::Extend { dst, dsz: sz, src, ssz, signed: m != Mnemonic::Movzx })
        }
        Mnemonic::Imul if !small || sz == Sz::W => match i.op_count() {
            1 if !small && forms_enabled() => Some(Ext::MulWide { signed: true, src: dst, sz }),
            2 => Some(Ext::Imul { dst, src1: dst, src2: src_of(sz)?, sz }),
            3 => {
                let (s1, s1z) = reg(1)?;
                if s1z != sz {
                    return None;
                }
                Some(Ext::Imul { dst, src1: s1, src2: Src::Imm(imm_of(i, 2, sz)?), sz })
            }
            _ => None,
        },
        Mnemonic::Shl | Mnemonic::Sal | Mnemonic::Shr | Mnemonic::Sar if !small && i.op_count() == 2 => {
            let kind = shift_kind(m)?;
            if i.op1_kind() == OpKind::Register {
                (i.op1_register() == Register::CL).then_some(Ext::ShiftCl { kind, dst, sz })
            } else {
                let mask = if sz == Sz::Q { 63 } else { 31 };
                let count = (i.immediate(1) & mask) as i8;
                (count >= 2).then_some(Ext::ShiftImm { kind, dst, count, sz })
            }
        }
        Mnemonic::Rol | Mnemonic::Ror if !small && i.op_count() == 2 => {
            let left = m == Mnemonic::Rol;
            if i.op1_kind() == OpKind::Register {
                (i.op1_register() == Register::CL).then_some(Ext::RotDead { left, dst, cl: true, count: 0, sz })
            } else {
                let mask = if sz == Sz::Q { 63 } else { 31 };
                Some(Ext::RotDead { left, dst, cl: false, count: (i.immediate(1) & mask) as i8, sz })
            }
        }
        Mnemonic::Bsf
        | Mnemonic::Bsr
        | Mnemonic::Tzcnt
        | Mnemonic::Bt
        | Mnemonic::Bts
        | Mnemonic::Btr
        | Mnemonic::Btc
        | Mnemonic::Mul
        | Mnemonic::Div
        | Mnemonic::Bswap
            if !forms_enabled() =>
        {
            None
        }
        Mnemonic::Bsf | Mnemonic::Bsr if !small && i.op_count() == 2 => {
            let (src, ssz) = reg(1)?;
            (ssz == sz).then_some(Ext::BitScan { rev: m == Mnemonic::Bsr, dst, src, sz })
        }
        Mnemonic::Tzcnt if !small && i.op_count() == 2 && host_bmi1() => {
            let (src, ssz) = reg(1)?;
            (ssz == sz).then_some(Ext::Tzcnt { dst, src, sz })
        }
        Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc if !small && i.op_count() == 2 => {
            let op = match m {
                Mnemonic::Bt => BitOp::Bt,
                Mnemonic::Bts => BitOp::Bts,
                Mnemonic::Btr => BitOp::Btr,
                _ => BitOp::Btc,
            };
            let bit = match reg(1) {
                // (The assembler has the register-offset form of BT only.)
                Some((b, bsz)) if bsz == sz && op == BitOp::Bt => Src::Reg(b),
                Some(_) => return None,
                None if i.op1_kind() == OpKind::Immediate8 => {
                    Src::Imm(i32::from(i.immediate8()) & if sz == Sz::Q { 63 } else { 31 })
                }
                None => return None,
            };
            Some(Ext::BitTest { op, dst, bit, sz })
        }
        Mnemonic::Mul if !small && i.op_count() == 1 => Some(Ext::MulWide { signed: false, src: dst, sz }),
        Mnemonic::Div if !small && i.op_count() == 1 => Some(Ext::Div { src: dst, sz }),
        Mnemonic::Bswap if !small && i.op_count() == 1 => Some(Ext::Bswap { dst, sz }),
        Mnemonic::Shld | Mnemonic::Shrd if !small && i.op_count() == 3 && forms_enabled() => {
            let (src, ssz) = reg(1)?;
            if ssz != sz {
                return None;
            }
            let count = match i.op2_kind() {
                OpKind::Register if i.op2_register() == Register::CL => None,
                OpKind::Immediate8 => {
                    let c = (i.immediate8() & if sz == Sz::Q { 63 } else { 31 }) as i8;
                    if c == 0 {
                        return None;
                    }
                    Some(c)
                }
                _ => return None,
            };
            Some(Ext::DoubleShift { left: m == Mnemonic::Shld, dst, src, count, sz })
        }
        _ if sz == Sz::B && i.op_count() == 1 && cpu::flags::is_setcc(m) => {
            Some(Ext::Setcc { cc: i.condition_code(), dst })
        }
        _ if sz != Sz::B && i.op_count() == 2 && cpu::flags::is_cmovcc(m) => {
            let (src, ssz) = reg(1)?;
            (ssz == sz).then_some(Ext::Cmov { cc: i.condition_code(), dst, src, sz })
        }
        Mnemonic::Xchg if i.op_count() == 2 => {
            let (b, bsz) = reg(1)?;
            (bsz == sz).then_some(Ext::Xchg { a: dst, b, sz })
        }
        _ => None,
    }
}

/// `$m!(<mnemonic for cc>, args...)` for the 16 condition codes, mnemonics listed in the order
/// o no b ae e ne be a s ns p np l ge le g.
macro_rules! with_cc {
    ($cc:expr, $m:ident, [$o:ident, $no:ident, $b:ident, $ae:ident, $e:ident, $ne:ident, $be:ident, $a:ident,
      $s:ident, $ns:ident, $p:ident, $np:ident, $l:ident, $ge:ident, $le:ident, $g:ident], $($args:tt)*) => {
        match $cc {
            ConditionCode::o => $m!($o, $($args)*),
            ConditionCode::no => $m!($no, $($args)*),
            ConditionCode::b => $m!($b, $($args)*),
            ConditionCode::ae => $m!($ae, $($args)*),
            ConditionCode::e => $m!($e, $($args)*),
            ConditionCode::ne => $m!($ne, $($args)*),
            ConditionCode::be => $m!($be, $($args)*),
            ConditionCode::a => $m!($a, $($args)*),
            ConditionCode::s => $m!($s, $($args)*),
            ConditionCode::ns => $m!($ns, $($args)*),
            ConditionCode::p => $m!($p, $($args)*),
            ConditionCode::np => $m!($np, $($args)*),
            ConditionCode::l => $m!($l, $($args)*),
            ConditionCode::ge => $m!($ge, $($args)*),
            ConditionCode::le => $m!($le, $($args)*),
            ConditionCode::g | ConditionCode::None => $m!($g, $($args)*),
        }
    };
}

macro_rules! cmovm16_m { ($o:ident, $ops:expr) => { dynasm!($ops ; .arch x64 ; $o cx, WORD [rax]) }; }
macro_rules! cmovm32_m { ($o:ident, $ops:expr) => { dynasm!($ops ; .arch x64 ; $o ecx, DWORD [rax]) }; }
macro_rules! cmovm64_m { ($o:ident, $ops:expr) => { dynasm!($ops ; .arch x64 ; $o rcx, QWORD [rax]) }; }

/// `CMOVcc CX/ECX/RCX, [RAX]` (the host's CMOV reads its memory operand whatever the
/// condition, and zero-extends ECX either way).
pub(super) fn cmov_from_rax(ops: &mut super::Assembler, cc: ConditionCode, sz: Sz) {
    match sz {
        Sz::W => with_cc!(
            cc,
            cmovm16_m,
            [
                cmovo, cmovno, cmovb, cmovae, cmove, cmovne, cmovbe, cmova, cmovs, cmovns, cmovp, cmovnp, cmovl,
                cmovge, cmovle, cmovg
            ],
            ops
        ),
        Sz::D => with_cc!(
            cc,
            cmovm32_m,
            [
                cmovo, cmovno, cmovb, cmovae, cmove, cmovne, cmovbe, cmova, cmovs, cmovns, cmovp, cmovnp, cmovl,
                cmovge, cmovle, cmovg
            ],
            ops
        ),
        _ => with_cc!(
            cc,
            cmovm64_m,
            [
                cmovo, cmovno, cmovb, cmovae, cmove, cmovne, cmovbe, cmova, cmovs, cmovns, cmovp, cmovnp, cmovl,
                cmovge, cmovle, cmovg
            ],
            ops
        ),
    }
}

macro_rules! setcc_m { ($o:ident, $ops:expr, $d:expr) => { dynasm!($ops ; .arch x64 ; $o BYTE [r12 + $d]) }; }
macro_rules! cmov16_m { ($o:ident, $ops:expr, $s:expr) => { dynasm!($ops ; .arch x64 ; $o ax, WORD [r12 + $s]) }; }
macro_rules! cmov32_m { ($o:ident, $ops:expr, $s:expr) => { dynasm!($ops ; .arch x64 ; $o eax, DWORD [r12 + $s]) }; }
macro_rules! cmov64_m { ($o:ident, $ops:expr, $s:expr) => { dynasm!($ops ; .arch x64 ; $o rax, QWORD [r12 + $s]) }; }

/// `al/ax op= src` for an 8/16-bit ALU operation (`$op`: the host mnemonic).
macro_rules! alu_small {
    ($op:tt, $ops:expr, $sz:expr, $src:expr) => {
        match ($sz, $src) {
            (Sz::B, Src::Reg(s)) => dynasm!($ops ; .arch x64 ; $op al, BYTE [r12 + s]),
            (Sz::B, Src::Imm(v)) => dynasm!($ops ; .arch x64 ; $op al, v as i8),
            (_, Src::Reg(s)) => dynasm!($ops ; .arch x64 ; $op ax, WORD [r12 + s]),
            (_, Src::Imm(v)) => dynasm!($ops ; .arch x64 ; $op ax, v as i16),
        }
    };
}

const STATUS_I: i32 = STATUS as i32;

impl Emitter<'_> {
    /// `rax = guest register` (8/16-bit: only AL/AX meaningful; 32-bit: zero-extended).
    fn load_rax(&mut self, off: i32, sz: Sz) {
        match sz {
            Sz::B => dynasm!(self.ops ; .arch x64 ; mov al, BYTE [r12 + off]),
            Sz::W => dynasm!(self.ops ; .arch x64 ; mov ax, WORD [r12 + off]),
            Sz::D => dynasm!(self.ops ; .arch x64 ; mov eax, DWORD [r12 + off]),
            Sz::Q => dynasm!(self.ops ; .arch x64 ; mov rax, QWORD [r12 + off]),
        }
    }

    /// Guest register = RAX as a register write of `sz` does it (8/16-bit merge, 32-bit
    /// zero-extends: RAX must hold a zero-extended 32-bit value then).
    fn store_rax(&mut self, off: i32, sz: Sz) {
        match sz {
            Sz::B => dynasm!(self.ops ; .arch x64 ; mov BYTE [r12 + off], al),
            Sz::W => dynasm!(self.ops ; .arch x64 ; mov WORD [r12 + off], ax),
            Sz::D | Sz::Q => dynasm!(self.ops ; .arch x64 ; mov QWORD [r12 + off], rax),
        }
    }

    /// Makes the host's status flags the guest's (loading them from `CpuState` if needed).
    pub(super) fn flags_to_host(&mut self) {
        self.flags_from_r9();
        if !self.flags_in_host {
            self.materialize_lazy();
            dynasm!(self.ops
                ; .arch x64
                ; mov rax, QWORD [r12 + RFLAGS]
                ; and eax, STATUS_I
                ; push rax
                ; popfq
            );
            self.flags_now_in_host();
            self.last_logic = false;
        }
    }

    /// The host flags (in RAX, from PUSHFQ) with OF replaced by bit 0 of EDX, merged into
    /// `CpuState::rflags` (AF cleared).
    fn merge_with_of_from_edx(&mut self) {
        let keep = (STATUS & !(OF | AF)) as i32;
        dynasm!(self.ops
            ; .arch x64
            ; and eax, keep
            ; and edx, 1
            ; shl edx, 11
            ; or eax, edx
        );
        self.last_logic = true;
        self.merge_flags_from_rax();
        self.flags_now_synced();
    }

    pub(super) fn inline_ext(&mut self, op: Ext, at: u64, next: u64, dead: bool) {
        match op {
            Ext::Nop => {}
            Ext::Sse(s) => self.inline_sse(s, at, next, dead),
            Ext::BitScan { rev, dst, src, sz } => self.bit_scan(rev, dst, src, sz, dead),
            Ext::Tzcnt { dst, src, sz } => self.tzcnt(dst, src, sz, dead),
            Ext::BitTest { op, dst, bit, sz } => self.bit_test(op, dst, bit, sz, dead),
            Ext::MulWide { signed, src, sz } => self.mul_wide(signed, src, sz, dead),
            Ext::Div { src, sz } => self.div(src, sz, at, next),
            Ext::DoubleShift { left, dst, src, count, sz } => self.double_shift(left, dst, src, count, sz, dead),
            Ext::Bswap { dst, sz } => match sz {
                Sz::Q => {
                    dynasm!(self.ops ; .arch x64 ; mov rax, QWORD [r12 + dst] ; bswap rax ; mov QWORD [r12 + dst], rax)
                }
                _ => {
                    dynasm!(self.ops ; .arch x64 ; mov eax, DWORD [r12 + dst] ; bswap eax ; mov QWORD [r12 + dst], rax)
                }
            },
            Ext::MovN { dst, src, sz } => match (sz, src) {
                (Sz::B, Src::Imm(v)) => dynasm!(self.ops ; .arch x64 ; mov BYTE [r12 + dst], v as i8),
                (_, Src::Imm(v)) => dynasm!(self.ops ; .arch x64 ; mov WORD [r12 + dst], v as i16),
                (_, Src::Reg(s)) => {
                    self.load_rax(s, sz);
                    self.store_rax(dst, sz);
                }
            },
            Ext::AluN { op, dst, src, sz } => {
                if matches!(op, AluOp::Adc | AluOp::Sbb) {
                    self.load_guest_cf();
                }
                self.load_rax(dst, sz);
                match op {
                    AluOp::Add => alu_small!(add, self.ops, sz, src),
                    AluOp::Adc => alu_small!(adc, self.ops, sz, src),
                    AluOp::Sub => alu_small!(sub, self.ops, sz, src),
                    AluOp::Sbb => alu_small!(sbb, self.ops, sz, src),
                    AluOp::And => alu_small!(and, self.ops, sz, src),
                    AluOp::Or => alu_small!(or, self.ops, sz, src),
                    AluOp::Xor => alu_small!(xor, self.ops, sz, src),
                    AluOp::Cmp => alu_small!(cmp, self.ops, sz, src),
                    AluOp::Test => alu_small!(test, self.ops, sz, src),
                }
                if !matches!(op, AluOp::Cmp | AluOp::Test) {
                    self.store_rax(dst, sz);
                }
                self.flags_now_in_host();
                self.last_logic = matches!(op, AluOp::And | AluOp::Or | AluOp::Xor | AluOp::Test);
            }
            Ext::IncDecN { inc, dst, sz } => {
                self.load_guest_cf();
                self.load_rax(dst, sz);
                match (inc, sz) {
                    (true, Sz::B) => dynasm!(self.ops ; .arch x64 ; inc al),
                    (false, Sz::B) => dynasm!(self.ops ; .arch x64 ; dec al),
                    (true, _) => dynasm!(self.ops ; .arch x64 ; inc ax),
                    (false, _) => dynasm!(self.ops ; .arch x64 ; dec ax),
                }
                self.store_rax(dst, sz);
                self.flags_now_in_host();
                self.last_logic = false;
            }
            Ext::Not { dst, sz } => match sz {
                Sz::B => dynasm!(self.ops ; .arch x64 ; not BYTE [r12 + dst]),
                Sz::W => dynasm!(self.ops ; .arch x64 ; not WORD [r12 + dst]),
                Sz::D => {
                    dynasm!(self.ops ; .arch x64 ; mov eax, DWORD [r12 + dst] ; not eax ; mov QWORD [r12 + dst], rax)
                }
                Sz::Q => dynasm!(self.ops ; .arch x64 ; not QWORD [r12 + dst]),
            },
            Ext::Neg { dst, sz } => {
                self.load_rax(dst, sz);
                match sz {
                    Sz::B => dynasm!(self.ops ; .arch x64 ; neg al),
                    Sz::W => dynasm!(self.ops ; .arch x64 ; neg ax),
                    Sz::D => dynasm!(self.ops ; .arch x64 ; neg eax),
                    Sz::Q => dynasm!(self.ops ; .arch x64 ; neg rax),
                }
                self.store_rax(dst, sz);
                self.flags_now_in_host();
                self.last_logic = false;
            }
            Ext::Extend { dst, dsz, src, ssz, signed } => {
                self.extend_from(dsz, ssz, signed, src);
                self.store_rax(dst, dsz);
            }
            Ext::Imul { dst, src1, src2, sz } => self.imul(dst, src1, src2, sz, dead),
            Ext::ShiftImm { kind, dst, count, sz } => self.shift_imm(kind, dst, count, sz, dead),
            Ext::ShiftCl { kind, dst, sz } if !dead => self.shift_cl_live(kind, dst, sz),
            Ext::ShiftCl { kind, dst, sz } => {
                // Dead flags: the host's shift alone.
                let guest_cl = offsets::GPR as i32 + 8;
                dynasm!(self.ops ; .arch x64 ; mov cl, BYTE [r12 + guest_cl]);
                self.load_rax(dst, sz);
                match (kind, sz) {
                    (ShiftKind::Shl, Sz::Q) => dynasm!(self.ops ; .arch x64 ; shl rax, cl),
                    (ShiftKind::Shr, Sz::Q) => dynasm!(self.ops ; .arch x64 ; shr rax, cl),
                    (ShiftKind::Sar, Sz::Q) => dynasm!(self.ops ; .arch x64 ; sar rax, cl),
                    (ShiftKind::Shl, _) => dynasm!(self.ops ; .arch x64 ; shl eax, cl),
                    (ShiftKind::Shr, _) => dynasm!(self.ops ; .arch x64 ; shr eax, cl),
                    (ShiftKind::Sar, _) => dynasm!(self.ops ; .arch x64 ; sar eax, cl),
                }
                self.store_rax(dst, sz);
                self.flags_now_in_host();
                self.last_logic = true;
            }
            Ext::RotDead { left, dst, cl: false, count, sz } if !dead => self.rotate_live(left, dst, count, sz),
            Ext::RotDead { left, dst, cl, count, sz } => {
                // By CL: only planned with dead flags.
                if cl {
                    let guest_cl = offsets::GPR as i32 + 8;
                    dynasm!(self.ops ; .arch x64 ; mov cl, BYTE [r12 + guest_cl]);
                }
                self.load_rax(dst, sz);
                match (left, cl, sz) {
                    (true, true, Sz::Q) => dynasm!(self.ops ; .arch x64 ; rol rax, cl),
                    (false, true, Sz::Q) => dynasm!(self.ops ; .arch x64 ; ror rax, cl),
                    (true, true, _) => dynasm!(self.ops ; .arch x64 ; rol eax, cl),
                    (false, true, _) => dynasm!(self.ops ; .arch x64 ; ror eax, cl),
                    (true, false, Sz::Q) => dynasm!(self.ops ; .arch x64 ; rol rax, count),
                    (false, false, Sz::Q) => dynasm!(self.ops ; .arch x64 ; ror rax, count),
                    (true, false, _) => dynasm!(self.ops ; .arch x64 ; rol eax, count),
                    (false, false, _) => dynasm!(self.ops ; .arch x64 ; ror eax, count),
                }
                self.store_rax(dst, sz);
                self.flags_now_in_host();
                self.last_logic = true;
            }
            Ext::Setcc { cc, dst } => {
                self.flags_to_host();
                with_cc!(
                    cc,
                    setcc_m,
                    [
                        seto, setno, setb, setae, sete, setne, setbe, seta, sets, setns, setp, setnp, setl, setge,
                        setle, setg
                    ],
                    self.ops,
                    dst
                );
            }
            Ext::Cmov { cc, dst, src, sz } => {
                self.flags_to_host();
                // The host's CMOV also zero-extends a 32-bit destination when not taken.
                self.load_rax(dst, sz);
                match sz {
                    Sz::W => with_cc!(
                        cc,
                        cmov16_m,
                        [
                            cmovo, cmovno, cmovb, cmovae, cmove, cmovne, cmovbe, cmova, cmovs, cmovns, cmovp, cmovnp,
                            cmovl, cmovge, cmovle, cmovg
                        ],
                        self.ops,
                        src
                    ),
                    Sz::D => with_cc!(
                        cc,
                        cmov32_m,
                        [
                            cmovo, cmovno, cmovb, cmovae, cmove, cmovne, cmovbe, cmova, cmovs, cmovns, cmovp, cmovnp,
                            cmovl, cmovge, cmovle, cmovg
                        ],
                        self.ops,
                        src
                    ),
                    _ => with_cc!(
                        cc,
                        cmov64_m,
                        [
                            cmovo, cmovno, cmovb, cmovae, cmove, cmovne, cmovbe, cmova, cmovs, cmovns, cmovp, cmovnp,
                            cmovl, cmovge, cmovle, cmovg
                        ],
                        self.ops,
                        src
                    ),
                }
                self.store_rax(dst, sz);
            }
            Ext::Xchg { a, b, sz } => {
                match sz {
                    Sz::B => dynasm!(self.ops ; .arch x64 ; mov al, BYTE [r12 + a] ; mov cl, BYTE [r12 + b]),
                    Sz::W => dynasm!(self.ops ; .arch x64 ; mov ax, WORD [r12 + a] ; mov cx, WORD [r12 + b]),
                    Sz::D => dynasm!(self.ops ; .arch x64 ; mov eax, DWORD [r12 + a] ; mov ecx, DWORD [r12 + b]),
                    Sz::Q => dynasm!(self.ops ; .arch x64 ; mov rax, QWORD [r12 + a] ; mov rcx, QWORD [r12 + b]),
                }
                match sz {
                    Sz::B => dynasm!(self.ops ; .arch x64 ; mov BYTE [r12 + b], al ; mov BYTE [r12 + a], cl),
                    Sz::W => dynasm!(self.ops ; .arch x64 ; mov WORD [r12 + b], ax ; mov WORD [r12 + a], cx),
                    _ => dynasm!(self.ops ; .arch x64 ; mov QWORD [r12 + b], rax ; mov QWORD [r12 + a], rcx),
                }
            }
            Ext::Rdtsc => {
                // The count the interpreter sees: the instructions before this one. No flags
                // touched (LEA, MOV).
                let (gax, gdx) = (offsets::GPR as i32, offsets::GPR as i32 + 16);
                let (icount, tsc) = (offsets::ICOUNT as i32, offsets::TSC_OFFSET as i32);
                let pending = self.pending;
                dynasm!(self.ops
                    ; .arch x64
                    ; mov rax, QWORD [r12 + icount]
                    ; mov rcx, QWORD [r12 + tsc]
                    ; lea rax, [rax + rcx + pending]
                    ; mov QWORD [r12 + gdx], rax
                    ; mov ecx, DWORD [r12 + gdx + 4]
                    ; mov QWORD [r12 + gdx], rcx
                    ; mov ecx, eax
                    ; mov QWORD [r12 + gax], rcx
                );
            }
            Ext::Convert(code) => {
                let (gax, gdx) = (offsets::GPR as i32, offsets::GPR as i32 + 16);
                match code {
                    Code::Cwde => {
                        dynasm!(self.ops ; .arch x64 ; movsx eax, WORD [r12 + gax] ; mov QWORD [r12 + gax], rax)
                    }
                    Code::Cdqe => {
                        dynasm!(self.ops ; .arch x64 ; movsxd rax, DWORD [r12 + gax] ; mov QWORD [r12 + gax], rax)
                    }
                    // The host's CDQ writes EDX, zero-extending RDX, as the guest's does.
                    Code::Cdq => {
                        dynasm!(self.ops ; .arch x64 ; mov eax, DWORD [r12 + gax] ; cdq ; mov QWORD [r12 + gdx], rdx)
                    }
                    _ => dynasm!(self.ops ; .arch x64 ; mov rax, QWORD [r12 + gax] ; cqo ; mov QWORD [r12 + gdx], rdx),
                }
            }
        }
    }

    /// RAX = the zero- or sign-extension of the `ssz` value at `[r12 + src]` to `dsz` (a
    /// 32-bit result zero-extended to 64).
    fn extend_from(&mut self, dsz: Sz, ssz: Sz, signed: bool, src: i32) {
        match (dsz, ssz, signed) {
            (_, Sz::B, false) => dynasm!(self.ops ; .arch x64 ; movzx eax, BYTE [r12 + src]),
            (_, Sz::W, false) => dynasm!(self.ops ; .arch x64 ; movzx eax, WORD [r12 + src]),
            (Sz::Q, Sz::B, true) => dynasm!(self.ops ; .arch x64 ; movsx rax, BYTE [r12 + src]),
            (Sz::Q, Sz::W, true) => dynasm!(self.ops ; .arch x64 ; movsx rax, WORD [r12 + src]),
            (Sz::Q, Sz::D, true) => dynasm!(self.ops ; .arch x64 ; movsxd rax, DWORD [r12 + src]),
            (_, Sz::B, true) => dynasm!(self.ops ; .arch x64 ; movsx eax, BYTE [r12 + src]),
            (_, Sz::W, true) => dynasm!(self.ops ; .arch x64 ; movsx eax, WORD [r12 + src]),
            // MOVSXD with a 32-bit destination (and MOVZX/MOVSX forms iced never produces).
            (_, Sz::D, _) => dynasm!(self.ops ; .arch x64 ; mov eax, DWORD [r12 + src]),
            (_, Sz::Q, _) => dynasm!(self.ops ; .arch x64 ; mov rax, QWORD [r12 + src]),
        }
    }

    /// IMUL. The host computes CF = OF (the product does not fit); SF, ZF and PF come from a
    /// TEST of the truncated result, AF = 0, as the interpreter defines them.
    ///
    /// ```text
    /// rax = src1 * src2; dst = rax
    /// flags live: if OF { TEST rax; flags |= CF|OF } else { TEST rax }   (AF cleared at merge)
    /// ```
    fn imul(&mut self, dst: i32, src1: i32, src2: Src, sz: Sz, dead: bool) {
        match (sz, src2) {
            (Sz::W, Src::Reg(s)) => dynasm!(self.ops ; .arch x64 ; mov ax, WORD [r12 + src1] ; imul ax, WORD [r12 + s]),
            (Sz::W, Src::Imm(v)) => dynasm!(self.ops ; .arch x64 ; imul ax, WORD [r12 + src1], v as i16),
            (Sz::D, Src::Reg(s)) => {
                dynasm!(self.ops ; .arch x64 ; mov eax, DWORD [r12 + src1] ; imul eax, DWORD [r12 + s])
            }
            (Sz::D, Src::Imm(v)) => dynasm!(self.ops ; .arch x64 ; imul eax, DWORD [r12 + src1], v),
            (_, Src::Reg(s)) => dynasm!(self.ops ; .arch x64 ; mov rax, QWORD [r12 + src1] ; imul rax, QWORD [r12 + s]),
            (_, Src::Imm(v)) => dynasm!(self.ops ; .arch x64 ; imul rax, QWORD [r12 + src1], v),
        }
        self.store_rax(dst, sz);
        self.flags_now_in_host();
        self.last_logic = true;
        if !dead {
            self.mul_flags(sz);
        }
    }

    /// After a host multiply with the low half of the product in RAX: the flags as the
    /// interpreter defines them (CF = OF from the host, SF/ZF/PF from the low half, AF = 0 at the
    /// merge: `last_logic`).
    fn mul_flags(&mut self, sz: Sz) {
        let ovf = self.ops.new_dynamic_label();
        let done = self.ops.new_dynamic_label();
        let (sf_zf_pf, cf_of) = ((SF | ZF | PF) as i32, (CF | OF) as i32);
        dynasm!(self.ops ; .arch x64 ; jo =>ovf);
        self.test_rax(sz);
        dynasm!(self.ops ; .arch x64 ; jmp =>done ; =>ovf);
        self.test_rax(sz);
        dynasm!(self.ops
            ; .arch x64
            ; pushfq
            ; pop rcx
            ; and ecx, sf_zf_pf
            ; or ecx, cf_of
            ; push rcx
            ; popfq
            ; =>done
        );
    }

    /// The guest's flags into the host's and their image into RDX (for a form that changes
    /// some of them and keeps the others).
    fn guest_flags_to_rdx(&mut self) {
        self.flags_to_host();
        dynasm!(self.ops ; .arch x64 ; pushfq ; pop rdx);
        if self.last_logic {
            // After a logic operation the host leaves AF undefined; the guest's is 0.
            let not_af = !(AF as i32);
            dynasm!(self.ops ; .arch x64 ; and edx, not_af);
        }
    }

    /// The flags image in RDX with the `mask` bits of the host's current flags, into the host's
    /// flags (which are then the guest's, AF included).
    fn merge_host_bits_from_rdx(&mut self, mask: u64) {
        let (m, keep) = (mask as i32, !mask as i32);
        dynasm!(self.ops
            ; .arch x64
            ; pushfq
            ; pop rax
            ; and eax, m
            ; and edx, keep
            ; or edx, eax
            ; push rdx
            ; popfq
        );
        self.flags_now_in_host();
        self.last_logic = false;
    }

    /// BSF/BSR: the host's result where the source is not zero (CMOVNZ keeps the whole old
    /// destination otherwise), its ZF, the guest's other flags.
    fn bit_scan(&mut self, rev: bool, dst: i32, src: i32, sz: Sz, dead: bool) {
        if !dead {
            self.guest_flags_to_rdx();
        }
        dynasm!(self.ops ; .arch x64 ; mov rax, QWORD [r12 + dst]);
        match (rev, sz) {
            (false, Sz::Q) => dynasm!(self.ops ; .arch x64 ; bsf rcx, QWORD [r12 + src]),
            (true, Sz::Q) => dynasm!(self.ops ; .arch x64 ; bsr rcx, QWORD [r12 + src]),
            (false, _) => dynasm!(self.ops ; .arch x64 ; bsf ecx, DWORD [r12 + src]),
            (true, _) => dynasm!(self.ops ; .arch x64 ; bsr ecx, DWORD [r12 + src]),
        }
        // A 32-bit BSF/BSR with a source that is not zero wrote ECX, zero-extending RCX.
        dynasm!(self.ops ; .arch x64 ; cmovnz rax, rcx ; mov QWORD [r12 + dst], rax);
        if dead {
            self.flags_now_in_host();
            self.last_logic = false;
        } else {
            self.merge_host_bits_from_rdx(ZF);
        }
    }

    /// TZCNT: the host's result, CF and ZF; the guest's other flags.
    fn tzcnt(&mut self, dst: i32, src: i32, sz: Sz, dead: bool) {
        if !dead {
            self.guest_flags_to_rdx();
        }
        match sz {
            Sz::Q => dynasm!(self.ops ; .arch x64 ; tzcnt rcx, QWORD [r12 + src]),
            _ => dynasm!(self.ops ; .arch x64 ; tzcnt ecx, DWORD [r12 + src]),
        }
        dynasm!(self.ops ; .arch x64 ; mov QWORD [r12 + dst], rcx);
        if dead {
            self.flags_now_in_host();
            self.last_logic = false;
        } else {
            self.merge_host_bits_from_rdx(CF | ZF);
        }
    }

    /// BT/BTS/BTR/BTC on a register: the host's CF, the guest's other flags (the host leaves
    /// OF, SF, AF and PF undefined). A 32-bit BTS/BTR/BTC zero-extends its register; BT writes
    /// nothing (with dead flags it is no operation at all).
    fn bit_test(&mut self, op: BitOp, dst: i32, bit: Src, sz: Sz, dead: bool) {
        if dead && op == BitOp::Bt {
            return;
        }
        if !dead {
            self.guest_flags_to_rdx();
        }
        if let Src::Reg(b) = bit {
            dynasm!(self.ops ; .arch x64 ; mov rcx, QWORD [r12 + b]);
        }
        self.load_rax(dst, sz);
        let q = sz == Sz::Q;
        let b = match bit {
            Src::Imm(v) => v as i8,
            Src::Reg(_) => 0,
        };
        match (op, bit, q) {
            (_, Src::Reg(_), true) => dynasm!(self.ops ; .arch x64 ; bt rax, rcx),
            (_, Src::Reg(_), false) => dynasm!(self.ops ; .arch x64 ; bt eax, ecx),
            (BitOp::Bt, _, true) => dynasm!(self.ops ; .arch x64 ; bt rax, BYTE b),
            (BitOp::Bt, _, false) => dynasm!(self.ops ; .arch x64 ; bt eax, BYTE b),
            (BitOp::Bts, _, true) => dynasm!(self.ops ; .arch x64 ; bts rax, BYTE b),
            (BitOp::Bts, _, false) => dynasm!(self.ops ; .arch x64 ; bts eax, BYTE b),
            (BitOp::Btr, _, true) => dynasm!(self.ops ; .arch x64 ; btr rax, BYTE b),
            (BitOp::Btr, _, false) => dynasm!(self.ops ; .arch x64 ; btr eax, BYTE b),
            (BitOp::Btc, _, true) => dynasm!(self.ops ; .arch x64 ; btc rax, BYTE b),
            (BitOp::Btc, _, false) => dynasm!(self.ops ; .arch x64 ; btc eax, BYTE b),
        }
        if op != BitOp::Bt {
            self.store_rax(dst, sz);
        }
        if dead {
            self.flags_now_in_host();
            self.last_logic = false;
        } else {
            self.merge_host_bits_from_rdx(CF);
        }
    }

    /// One-operand MUL/IMUL: the host's product into RAX/RDX (EAX/EDX zero-extended), flags as
    /// for IMUL (see [`Self::mul_flags`]).
    fn mul_wide(&mut self, signed: bool, src: i32, sz: Sz, dead: bool) {
        let (gax, gdx) = (offsets::GPR as i32, offsets::GPR as i32 + 16);
        match (signed, sz) {
            (false, Sz::Q) => dynasm!(self.ops ; .arch x64 ; mov rax, QWORD [r12 + gax] ; mul QWORD [r12 + src]),
            (true, Sz::Q) => dynasm!(self.ops ; .arch x64 ; mov rax, QWORD [r12 + gax] ; imul QWORD [r12 + src]),
            (false, _) => dynasm!(self.ops ; .arch x64 ; mov eax, DWORD [r12 + gax] ; mul DWORD [r12 + src]),
            (true, _) => dynasm!(self.ops ; .arch x64 ; mov eax, DWORD [r12 + gax] ; imul DWORD [r12 + src]),
        }
        dynasm!(self.ops ; .arch x64 ; mov QWORD [r12 + gax], rax ; mov QWORD [r12 + gdx], rdx);
        self.flags_now_in_host();
        self.last_logic = true;
        if !dead {
            self.mul_flags(sz);
        }
    }

    /// DIV: the host's when it cannot fault (high half of the dividend below the divisor, so
    /// the divisor is not zero and the quotient fits); otherwise the interpreter runs it (#DE).
    /// The guest's flags go to `CpuState` first (the host's DIV and CMP clobber the host's).
    fn div(&mut self, src: i32, sz: Sz, at: u64, next: u64) {
        let (gax, gdx) = (offsets::GPR as i32, offsets::GPR as i32 + 16);
        self.stashed = false;
        self.stashed_recomp = false;
        self.keep_r9 = false;
        self.sync_flags();
        let (synced0, pending0) = (self.synced, self.pending);
        let slow = self.ops.new_dynamic_label();
        let cont = self.ops.new_dynamic_label();
        let pre = self.regs;
        match sz {
            Sz::Q => dynasm!(self.ops
                ; .arch x64
                ; mov rcx, QWORD [r12 + src]
                ; mov rdx, QWORD [r12 + gdx]
                ; cmp rdx, rcx
                ; jae =>slow
                ; mov rax, QWORD [r12 + gax]
                ; div rcx
            ),
            _ => dynasm!(self.ops
                ; .arch x64
                ; mov ecx, DWORD [r12 + src]
                ; mov edx, DWORD [r12 + gdx]
                ; cmp edx, ecx
                ; jae =>slow
                ; mov eax, DWORD [r12 + gax]
                ; div ecx
            ),
        }
        dynasm!(self.ops ; .arch x64 ; mov QWORD [r12 + gax], rax ; mov QWORD [r12 + gdx], rdx);
        self.slow_path(slow, cont, at, next, synced0, pending0, false, pre);
        dynasm!(self.ops ; .arch x64 ; =>cont);
        self.synced = synced0;
        self.pending = pending0;
        self.flags_now_synced();
    }

    /// ROL/ROR by an immediate with live flags: SF, ZF, AF and PF are kept (the guest's are
    /// put in the host first), CF is the host's; OF is the interpreter's for every count (ROL:
    /// MSB(result) ^ CF; ROR: the two top bits of the result XORed), which the host defines for
    /// a count of 1 only. A count of 0 changes nothing but the zero-extension of a 32-bit
    /// register.
    fn rotate_live(&mut self, left: bool, dst: i32, count: i8, sz: Sz) {
        self.flags_to_host();
        self.load_rax(dst, sz);
        match (left, sz) {
            (true, Sz::Q) => dynasm!(self.ops ; .arch x64 ; rol rax, count),
            (false, Sz::Q) => dynasm!(self.ops ; .arch x64 ; ror rax, count),
            (true, _) => dynasm!(self.ops ; .arch x64 ; rol eax, count),
            (false, _) => dynasm!(self.ops ; .arch x64 ; ror eax, count),
        }
        self.store_rax(dst, sz);
        if count <= 1 {
            // The host's flags are exact (count 0: unchanged). They are no longer a CMP/TEST's
            // (`flags_to_host` may have run one again): a later slow path must not run it
            // again instead of keeping these (which lost this rotate's CF and OF).
            self.flags_now_in_host();
            return;
        }
        let top = if sz == Sz::Q { 63 } else { 31 };
        if left {
            dynasm!(self.ops ; .arch x64 ; mov rdx, rax ; pushfq ; pop rax ; shr rdx, top ; xor edx, eax);
        } else {
            dynasm!(self.ops
                ; .arch x64
                ; mov rdx, rax
                ; mov rcx, rax
                ; pushfq
                ; pop rax
                ; shr rdx, top
                ; shr rcx, top - 1
                ; xor edx, ecx
            );
        }
        // Keep AF (the guest's, loaded above; after a logic operation the host's is undefined
        // and the guest's 0), replace OF.
        let keep = if self.last_logic { STATUS & !(OF | AF) } else { STATUS & !OF } as i32;
        dynasm!(self.ops
            ; .arch x64
            ; and eax, keep
            ; and edx, 1
            ; shl edx, 11
            ; or eax, edx
        );
        self.last_logic = false;
        self.merge_flags_from_rax();
        self.flags_now_synced();
    }

    fn test_rax(&mut self, sz: Sz) {
        match sz {
            Sz::B => dynasm!(self.ops ; .arch x64 ; test al, al),
            Sz::W => dynasm!(self.ops ; .arch x64 ; test ax, ax),
            Sz::D => dynasm!(self.ops ; .arch x64 ; test eax, eax),
            Sz::Q => dynasm!(self.ops ; .arch x64 ; test rax, rax),
        }
    }

    /// SHL/SHR/SAR by CL with live flags. A masked count of 0 keeps the guest's flags (loaded
    /// into the host's first, which the host's shift by 0 leaves alone) and still writes a
    /// 32-bit register (zero-extended); otherwise the host's CF, SF, ZF and PF, AF = 0 and OF as
    /// the interpreter defines it for every count (SHL: MSB(result) ^ CF; SHR: MSB(operand);
    /// SAR: 0), the host defining it for a count of 1 only.
    fn shift_cl_live(&mut self, kind: ShiftKind, dst: i32, sz: Sz) {
        self.flags_to_host();
        let guest_cl = offsets::GPR as i32 + 8;
        dynasm!(self.ops ; .arch x64 ; movzx ecx, BYTE [r12 + guest_cl]);
        self.load_rax(dst, sz);
        dynasm!(self.ops ; .arch x64 ; mov rdx, rax);
        match (kind, sz) {
            (ShiftKind::Shl, Sz::Q) => dynasm!(self.ops ; .arch x64 ; shl rax, cl),
            (ShiftKind::Shr, Sz::Q) => dynasm!(self.ops ; .arch x64 ; shr rax, cl),
            (ShiftKind::Sar, Sz::Q) => dynasm!(self.ops ; .arch x64 ; sar rax, cl),
            (ShiftKind::Shl, _) => dynasm!(self.ops ; .arch x64 ; shl eax, cl),
            (ShiftKind::Shr, _) => dynasm!(self.ops ; .arch x64 ; shr eax, cl),
            (ShiftKind::Sar, _) => dynasm!(self.ops ; .arch x64 ; sar eax, cl),
        }
        self.store_rax(dst, sz);
        let (top, mask) = if sz == Sz::Q { (63, 63) } else { (31, 31) };
        let skip = self.ops.new_dynamic_label();
        let keep = !(OF | AF) as i32;
        dynasm!(self.ops
            ; .arch x64
            ; pushfq
            ; pop r8
            ; and ecx, mask
            ; jz =>skip
        );
        match kind {
            // OF = MSB(result) ^ CF.
            ShiftKind::Shl => dynasm!(self.ops
                ; .arch x64
                ; mov rdx, rax
                ; shr rdx, top
                ; xor edx, r8d
                ; and edx, 1
                ; shl edx, 11
                ; and r8d, keep
                ; or r8d, edx
            ),
            // OF = MSB(operand).
            ShiftKind::Shr => dynasm!(self.ops
                ; .arch x64
                ; shr rdx, top
                ; and edx, 1
                ; shl edx, 11
                ; and r8d, keep
                ; or r8d, edx
            ),
            ShiftKind::Sar => dynasm!(self.ops ; .arch x64 ; and r8d, keep),
        }
        dynasm!(self.ops ; .arch x64 ; =>skip ; push r8 ; popfq);
        // `last_logic` stays as `flags_to_host` left it: a count of 0 keeps the flags of the
        // last writer (whose AF the merge must clear after a logic operation); other counts
        // cleared AF above.
        self.flags_now_in_host();
    }

    /// SHLD/SHRD (see [`Ext::DoubleShift`]). R8 holds the flags image, R10 the destination's
    /// old value.
    fn double_shift(&mut self, left: bool, dst: i32, src: i32, count: Option<i8>, sz: Sz, dead: bool) {
        if count.is_none() && !dead {
            // A count of 0 keeps them: the guest's in the host's, which the host's shift by 0
            // leaves alone.
            self.flags_to_host();
        }
        let guest_cl = offsets::GPR as i32 + 8;
        if count.is_none() {
            dynasm!(self.ops ; .arch x64 ; movzx ecx, BYTE [r12 + guest_cl]);
        }
        let q = sz == Sz::Q;
        if q {
            dynasm!(self.ops ; .arch x64 ; mov rdx, QWORD [r12 + src]);
        } else {
            dynasm!(self.ops ; .arch x64 ; mov edx, DWORD [r12 + src]);
        }
        self.load_rax(dst, sz);
        dynasm!(self.ops ; .arch x64 ; mov r10, rax);
        match (left, q, count) {
            (true, true, None) => dynasm!(self.ops ; .arch x64 ; shld rax, rdx, cl),
            (false, true, None) => dynasm!(self.ops ; .arch x64 ; shrd rax, rdx, cl),
            (true, false, None) => dynasm!(self.ops ; .arch x64 ; shld eax, edx, cl),
            (false, false, None) => dynasm!(self.ops ; .arch x64 ; shrd eax, edx, cl),
            (true, true, Some(c)) => dynasm!(self.ops ; .arch x64 ; shld rax, rdx, c),
            (false, true, Some(c)) => dynasm!(self.ops ; .arch x64 ; shrd rax, rdx, c),
            (true, false, Some(c)) => dynasm!(self.ops ; .arch x64 ; shld eax, edx, c),
            (false, false, Some(c)) => dynasm!(self.ops ; .arch x64 ; shrd eax, edx, c),
        }
        self.store_rax(dst, sz);
        if dead {
            self.flags_now_in_host();
            self.last_logic = true;
            return;
        }
        let (top, mask) = if q { (63, 63) } else { (31, 31) };
        let skip = self.ops.new_dynamic_label();
        let keep = !(OF | AF) as i32;
        dynasm!(self.ops ; .arch x64 ; pushfq ; pop r8);
        if count.is_none() {
            dynasm!(self.ops ; .arch x64 ; and ecx, mask ; jz =>skip);
        }
        dynasm!(self.ops
            ; .arch x64
            ; xor r10, rax
            ; shr r10, top
            ; and r10d, 1
            ; shl r10d, 11
            ; and r8d, keep
            ; or r8d, r10d
            ; =>skip
            ; push r8
            ; popfq
        );
        self.flags_now_in_host();
        // By CL, `last_logic` stays as `flags_to_host` left it (see `shift_cl_live`); by an
        // immediate (never 0) AF was cleared above.
        if count.is_some() {
            self.last_logic = false;
        }
    }

    /// SHL/SHR/SAR by an immediate count of 2 or more. The host's CF, SF, ZF and PF are the
    /// interpreter's; its OF is undefined for these counts, so with live flags OF is computed
    /// (SHL: MSB(result) ^ CF; SHR: MSB(operand); SAR: 0) and the flags go to `CpuState`.
    fn shift_imm(&mut self, kind: ShiftKind, dst: i32, count: i8, sz: Sz, dead: bool) {
        self.load_rax(dst, sz);
        if !dead && kind == ShiftKind::Shr {
            dynasm!(self.ops ; .arch x64 ; mov rdx, rax);
        }
        match (kind, sz) {
            (ShiftKind::Shl, Sz::Q) => dynasm!(self.ops ; .arch x64 ; shl rax, count),
            (ShiftKind::Shr, Sz::Q) => dynasm!(self.ops ; .arch x64 ; shr rax, count),
            (ShiftKind::Sar, Sz::Q) => dynasm!(self.ops ; .arch x64 ; sar rax, count),
            (ShiftKind::Shl, _) => dynasm!(self.ops ; .arch x64 ; shl eax, count),
            (ShiftKind::Shr, _) => dynasm!(self.ops ; .arch x64 ; shr eax, count),
            (ShiftKind::Sar, _) => dynasm!(self.ops ; .arch x64 ; sar eax, count),
        }
        self.store_rax(dst, sz);
        self.flags_now_in_host();
        self.last_logic = true;
        if dead {
            return;
        }
        let top = if sz == Sz::Q { 63 } else { 31 };
        match kind {
            ShiftKind::Shl => dynasm!(self.ops
                ; .arch x64
                ; mov rdx, rax
                ; pushfq
                ; pop rax
                ; shr rdx, top
                ; xor edx, eax
            ),
            ShiftKind::Shr => dynasm!(self.ops ; .arch x64 ; pushfq ; pop rax ; shr rdx, top),
            ShiftKind::Sar => dynasm!(self.ops ; .arch x64 ; pushfq ; pop rax ; xor edx, edx),
        }
        self.merge_with_of_from_edx();
    }
}
