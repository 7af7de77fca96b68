//! Lazy evaluation of the arithmetic status flags.
//!
//! ADD/ADC/SUB/SBB/CMP/NEG/INC/DEC and the logic instructions record their operands and result
//! here instead of computing six flags; RFLAGS is materialized only when something reads it
//! (Jcc, SETcc, PUSHF, LAHF, an interrupt). `mask` says which RFLAGS bits live here; INC and DEC
//! leave CF out of it so the old carry stays in `CpuState::rflags`.
//!
//! The carry and overflow formulas work on whole values, so ADC and SBB need no separate ops:
//! the carry out of the top bit of `a + b + cin = r` is the top bit of `(a & b) | ((a | b) & !r)`.

use crate::state::rflags::{AF, CF, OF, PF, SF, STATUS, ZF};

/// Which computation produced the recorded result.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlagOp {
    /// No lazy flags recorded.
    #[default]
    None = 0,
    /// `res = dst + src (+ carry)`.
    Add = 1,
    /// `res = dst - src (- borrow)`.
    Sub = 2,
    /// AND/OR/XOR/TEST: CF = OF = 0, AF = 0.
    Logic = 3,
}

/// The recorded operation. `#[repr(C)]` for generated code.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LazyFlags {
    /// The RFLAGS bits held lazily (a subset of the six status flags).
    pub mask: u64,
    /// First operand (destination before the operation).
    pub dst: u64,
    /// Second operand.
    pub src: u64,
    /// Result, truncated to the operand size.
    pub res: u64,
    /// Operand size in bits (8, 16, 32, 64).
    pub bits: u32,
    /// The operation.
    pub op: FlagOp,
}

/// PF: set when the low byte of the result has an even number of 1 bits.
#[inline(always)]
pub fn parity(v: u64) -> u64 {
    if (v as u8).count_ones().is_multiple_of(2) {
        PF
    } else {
        0
    }
}

/// ZF, SF and PF for a result of `bits` width.
#[inline(always)]
pub fn szp(res: u64, bits: u32) -> u64 {
    let m = size_mask(bits);
    let r = res & m;
    (if r == 0 { ZF } else { 0 }) | (if (r >> (bits - 1)) & 1 != 0 { SF } else { 0 }) | parity(r)
}

/// All-ones mask of `bits` width.
#[inline(always)]
pub fn size_mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

impl LazyFlags {
    /// Records an operation whose status flags are all lazy.
    #[inline(always)]
    pub fn set(&mut self, op: FlagOp, bits: u32, dst: u64, src: u64, res: u64) {
        self.op = op;
        self.bits = bits;
        self.dst = dst;
        self.src = src;
        self.res = res;
        self.mask = STATUS;
    }

    /// Computes only the lazy flags in `want` (cheaper than [`Self::eval`] for one flag).
    #[inline]
    pub fn eval_bits(&self, want: u64) -> u64 {
        let want = want & self.mask;
        if want == 0 {
            return 0;
        }
        let bits = self.bits;
        let top = bits - 1;
        let (a, b, r) = (self.dst, self.src, self.res);
        let mut f = 0;
        if want & ZF != 0 && r & size_mask(bits) == 0 {
            f |= ZF;
        }
        if want & SF != 0 && (r >> top) & 1 != 0 {
            f |= SF;
        }
        if want & PF != 0 {
            f |= parity(r);
        }
        if want & (CF | OF | AF) != 0 {
            let (c, o) = match self.op {
                FlagOp::Add => (((a & b) | ((a | b) & !r)) >> top & 1, ((a ^ r) & (b ^ r)) >> top & 1),
                FlagOp::Sub => (((!a & b) | ((!a | b) & r)) >> top & 1, ((a ^ b) & (a ^ r)) >> top & 1),
                _ => (0, 0),
            };
            if c != 0 {
                f |= CF;
            }
            if o != 0 {
                f |= OF;
            }
            if matches!(self.op, FlagOp::Add | FlagOp::Sub) {
                f |= (a ^ b ^ r) & AF;
            }
        }
        f & want
    }

    /// Computes the lazy flags (only the bits in `mask` are meaningful).
    #[inline]
    pub fn eval(&self) -> u64 {
        if self.mask == 0 {
            return 0;
        }
        let bits = self.bits;
        let top = bits - 1;
        let (a, b, r) = (self.dst, self.src, self.res);
        let mut f = szp(r, bits);
        match self.op {
            FlagOp::None => {}
            FlagOp::Add => {
                if ((a & b) | ((a | b) & !r)) >> top & 1 != 0 {
                    f |= CF;
                }
                if ((a ^ r) & (b ^ r)) >> top & 1 != 0 {
                    f |= OF;
                }
                f |= (a ^ b ^ r) & AF;
            }
            FlagOp::Sub => {
                if ((!a & b) | ((!a | b) & r)) >> top & 1 != 0 {
                    f |= CF;
                }
                if ((a ^ b) & (a ^ r)) >> top & 1 != 0 {
                    f |= OF;
                }
                f |= (a ^ b ^ r) & AF;
            }
            FlagOp::Logic => {}
        }
        f & self.mask
    }
}

/// Whether `m` is one of the 16 SETcc mnemonics.
pub fn is_setcc(m: iced_x86::Mnemonic) -> bool {
    use iced_x86::Mnemonic as M;
    matches!(
        m,
        M::Seto
            | M::Setno
            | M::Setb
            | M::Setae
            | M::Sete
            | M::Setne
            | M::Setbe
            | M::Seta
            | M::Sets
            | M::Setns
            | M::Setp
            | M::Setnp
            | M::Setl
            | M::Setge
            | M::Setle
            | M::Setg
    )
}

/// Whether `m` is one of the 16 CMOVcc mnemonics.
pub fn is_cmovcc(m: iced_x86::Mnemonic) -> bool {
    use iced_x86::Mnemonic as M;
    matches!(
        m,
        M::Cmovo
            | M::Cmovno
            | M::Cmovb
            | M::Cmovae
            | M::Cmove
            | M::Cmovne
            | M::Cmovbe
            | M::Cmova
            | M::Cmovs
            | M::Cmovns
            | M::Cmovp
            | M::Cmovnp
            | M::Cmovl
            | M::Cmovge
            | M::Cmovle
            | M::Cmovg
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_flags_eval_bits_matches_eval() {
        let mut l = LazyFlags::default();
        let vals = [0u64, 1, 0x7F, 0x80, 0xFF, 0x7FFF_FFFF, 0x8000_0000, u64::MAX, 0x1234_5678_9ABC_DEF0];
        for op in [FlagOp::Add, FlagOp::Sub, FlagOp::Logic] {
            for bits in [8u32, 16, 32, 64] {
                for &a in &vals {
                    for &b in &vals {
                        let m = size_mask(bits);
                        let r = match op {
                            FlagOp::Add => a.wrapping_add(b),
                            FlagOp::Sub => a.wrapping_sub(b),
                            _ => a & b,
                        } & m;
                        l.set(op, bits, a & m, b & m, r);
                        for want in [CF, PF, AF, ZF, SF, OF, CF | ZF, STATUS] {
                            assert_eq!(l.eval_bits(want), l.eval() & want, "{op:?} {bits} {a:#x} {b:#x} {want:#x}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn test_flags_add_sub_examples() {
        let mut l = LazyFlags::default();
        l.set(FlagOp::Add, 8, 0x7F, 1, 0x80);
        assert_eq!(l.eval(), OF | SF | AF);
        l.set(FlagOp::Add, 8, 0xFF, 1, 0x00);
        assert_eq!(l.eval(), CF | ZF | AF | PF);
        l.set(FlagOp::Sub, 32, 0, 1, 0xFFFF_FFFF);
        assert_eq!(l.eval(), CF | SF | AF | PF);
        l.set(FlagOp::Sub, 64, 0x8000_0000_0000_0000, 1, 0x7FFF_FFFF_FFFF_FFFF);
        assert_eq!(l.eval(), OF | AF | PF);
        // ADC with carry-in: 0xFF + 0xFF + 1 = 0x1FF -> CF set, result 0xFF.
        l.set(FlagOp::Add, 8, 0xFF, 0xFF, 0xFF);
        assert_eq!(l.eval() & CF, CF);
        // SBB with borrow-in: 0 - 0xFF - 1 = -0x100 -> result 0, CF set.
        l.set(FlagOp::Sub, 8, 0, 0xFF, 0);
        assert_eq!(l.eval() & (CF | ZF), CF | ZF);
    }
}
