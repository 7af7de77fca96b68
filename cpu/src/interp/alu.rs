//! Pure ALU helpers for the instructions whose flags are computed eagerly: shifts, rotates,
//! double shifts, multiply, divide and BCD adjust. Each returns the result and the new status
//! flags; `flags_in` is the full RFLAGS before the instruction. Semantics follow the pseudocode in
//! the Intel SDM vol. 2; where the SDM leaves a flag undefined we produce what current Intel
//! cores produce when that is known, and the tests mask those flags.

use crate::flags::{size_mask, szp};
use crate::state::rflags::{AF, CF, OF, PF, SF, STATUS, ZF};

#[inline]
fn msb(v: u64, bits: u32) -> u64 {
    (v >> (bits - 1)) & 1
}

#[inline]
fn sext(v: u64, bits: u32) -> i64 {
    let sh = 64 - bits;
    ((v << sh) as i64) >> sh
}

/// The shift and rotate group (C0/C1/D0..D3 /0../7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShiftOp {
    /// ROL.
    Rol,
    /// ROR.
    Ror,
    /// RCL.
    Rcl,
    /// RCR.
    Rcr,
    /// SHL/SAL.
    Shl,
    /// SHR.
    Shr,
    /// SAR.
    Sar,
}

/// Applies a shift or rotate. Returns `None` when the masked count is 0 (nothing changes).
pub fn shift(op: ShiftOp, bits: u32, a: u64, count: u64, flags_in: u64) -> Option<(u64, u64)> {
    let m = size_mask(bits);
    let a = a & m;
    let cnt = (count & if bits == 64 { 0x3F } else { 0x1F }) as u32;
    if cnt == 0 {
        return None;
    }
    let keep = flags_in & STATUS;
    let cf_in = flags_in & CF;
    match op {
        ShiftOp::Shl => {
            let wide = u128::from(a) << cnt;
            let res = (wide as u64) & m;
            let cf = ((wide >> bits) & 1) as u64;
            let mut f = szp(res, bits) | if cf != 0 { CF } else { 0 };
            if msb(res, bits) ^ cf != 0 {
                f |= OF;
            }
            Some((res, f))
        }
        ShiftOp::Shr => {
            let res = if cnt >= 64 { 0 } else { a >> cnt };
            let cf = if cnt > 64 { 0 } else { (a >> (cnt - 1)) & 1 };
            let mut f = szp(res, bits) | if cf != 0 { CF } else { 0 };
            if msb(a, bits) != 0 {
                f |= OF;
            }
            Some((res, f))
        }
        ShiftOp::Sar => {
            let s = sext(a, bits);
            let res = (s >> cnt.min(63)) as u64 & m;
            let cf = ((s >> (cnt - 1).min(63)) & 1) as u64;
            let f = szp(res, bits) | if cf != 0 { CF } else { 0 };
            Some((res, f))
        }
        ShiftOp::Rol => {
            let r = cnt % bits;
            let res = if r == 0 { a } else { ((a << r) | (a >> (bits - r))) & m };
            let cf = res & 1;
            let mut f = (keep & !(CF | OF)) | if cf != 0 { CF } else { 0 };
            if msb(res, bits) ^ cf != 0 {
                f |= OF;
            }
            Some((res, f))
        }
        ShiftOp::Ror => {
            let r = cnt % bits;
            let res = if r == 0 { a } else { ((a >> r) | (a << (bits - r))) & m };
            let mut f = (keep & !(CF | OF)) | if msb(res, bits) != 0 { CF } else { 0 };
            if msb(res, bits) ^ ((res >> (bits - 2)) & 1) != 0 {
                f |= OF;
            }
            Some((res, f))
        }
        ShiftOp::Rcl | ShiftOp::Rcr => {
            let r = match bits {
                8 => cnt % 9,
                16 => cnt % 17,
                _ => cnt,
            };
            let mut v = a;
            let mut cf = u64::from(cf_in != 0);
            let mut of = 0;
            if op == ShiftOp::Rcl {
                for _ in 0..r {
                    let t = msb(v, bits);
                    v = ((v << 1) | cf) & m;
                    cf = t;
                }
                if r > 0 || cnt == 1 {
                    of = msb(v, bits) ^ cf;
                }
            } else {
                of = msb(v, bits) ^ cf;
                for _ in 0..r {
                    let t = v & 1;
                    v = (v >> 1) | (cf << (bits - 1));
                    cf = t;
                }
                if r > 0 {
                    of = msb(v, bits) ^ ((v >> (bits - 2)) & 1);
                }
            }
            let f = (keep & !(CF | OF)) | if cf != 0 { CF } else { 0 } | if of != 0 { OF } else { 0 };
            Some((v, f))
        }
    }
}

/// SHLD (`left`) or SHRD. Returns `None` when the masked count is 0.
pub fn double_shift(left: bool, bits: u32, dst: u64, src: u64, count: u64, flags_in: u64) -> Option<(u64, u64)> {
    let m = size_mask(bits);
    let (dst, src) = (dst & m, src & m);
    let cnt = (count & if bits == 64 { 0x3F } else { 0x1F }) as u32;
    if cnt == 0 {
        return None;
    }
    let _ = flags_in;
    // Intel cores treat a 16-bit operand with a count above 16 as a 32-bit funnel of
    // dst:src:dst; the result is architecturally undefined then.
    let (res, cf) = if left {
        if bits == 16 && cnt > 16 {
            let wide = (u64::from(dst as u16) << 32) | (u64::from(src as u16) << 16) | u64::from(dst as u16);
            let r = (wide << cnt) >> 32;
            (r & m, (wide >> (48 - cnt)) & 1)
        } else {
            let wide = (u128::from(dst) << bits) | u128::from(src);
            let r = ((wide << cnt) >> bits) as u64 & m;
            (r, (dst >> (bits - cnt)) & 1)
        }
    } else if bits == 16 && cnt > 16 {
        let wide = (u64::from(dst as u16) << 32) | (u64::from(src as u16) << 16) | u64::from(dst as u16);
        let r = wide >> cnt;
        (r & m, (wide >> (cnt - 1)) & 1)
    } else {
        let wide = (u128::from(src) << bits) | u128::from(dst);
        let r = (wide >> cnt) as u64 & m;
        (r, (dst >> (cnt - 1)) & 1)
    };
    let mut f = szp(res, bits) | if cf != 0 { CF } else { 0 };
    if msb(res, bits) ^ msb(dst, bits) != 0 {
        f |= OF;
    }
    Some((res, f))
}

/// Unsigned multiply: returns (low, high, flags).
pub fn mul(bits: u32, a: u64, b: u64) -> (u64, u64, u64) {
    let m = size_mask(bits);
    let p = u128::from(a & m) * u128::from(b & m);
    let lo = (p as u64) & m;
    let hi = ((p >> bits) as u64) & m;
    let mut f = szp(lo, bits);
    if hi != 0 {
        f |= CF | OF;
    }
    (lo, hi, f)
}

/// Signed multiply: returns (low, high, flags); CF = OF = the product does not fit in `bits`.
pub fn imul(bits: u32, a: u64, b: u64) -> (u64, u64, u64) {
    let m = size_mask(bits);
    let p = i128::from(sext(a, bits)) * i128::from(sext(b, bits));
    let lo = (p as u64) & m;
    let hi = ((p >> bits) as u64) & m;
    let mut f = szp(lo, bits);
    if i128::from(sext(lo, bits)) != p {
        f |= CF | OF;
    }
    (lo, hi, f)
}

/// Unsigned divide of `hi:lo` by `d`: (quotient, remainder), or `None` for #DE.
pub fn div(bits: u32, hi: u64, lo: u64, d: u64) -> Option<(u64, u64)> {
    let m = size_mask(bits);
    let d = u128::from(d & m);
    if d == 0 {
        return None;
    }
    let n = (u128::from(hi & m) << bits) | u128::from(lo & m);
    let q = n / d;
    if q > u128::from(m) {
        return None;
    }
    Some((q as u64, (n % d) as u64))
}

/// Signed divide of `hi:lo` by `d`: (quotient, remainder), or `None` for #DE.
pub fn idiv(bits: u32, hi: u64, lo: u64, d: u64) -> Option<(u64, u64)> {
    let m = size_mask(bits);
    let d = i128::from(sext(d, bits));
    if d == 0 {
        return None;
    }
    let n_u = (u128::from(hi & m) << bits) | u128::from(lo & m);
    let n = ((n_u << (128 - 2 * bits)) as i128) >> (128 - 2 * bits);
    let q = n.checked_div(d)?;
    let r = n.checked_rem(d)?;
    let min = -(1i128 << (bits - 1));
    let max = (1i128 << (bits - 1)) - 1;
    if q < min || q > max {
        return None;
    }
    Some(((q as u64) & m, (r as u64) & m))
}

/// DAA on AL: returns (new AL, flags).
pub fn daa(al: u8, flags_in: u64) -> (u8, u64) {
    let old_al = al;
    let old_cf = flags_in & CF != 0;
    let mut al = al;
    let mut cf = false;
    let mut af = false;
    if al & 0x0F > 9 || flags_in & AF != 0 {
        let (s, c) = al.overflowing_add(6);
        al = s;
        cf = old_cf || c;
        af = true;
    }
    if old_al > 0x99 || old_cf {
        al = al.wrapping_add(0x60);
        cf = true;
    }
    let f = szp(u64::from(al), 8) | if cf { CF } else { 0 } | if af { AF } else { 0 } | (flags_in & OF);
    (al, f)
}

/// DAS on AL: returns (new AL, flags).
pub fn das(al: u8, flags_in: u64) -> (u8, u64) {
    let old_al = al;
    let old_cf = flags_in & CF != 0;
    let mut al = al;
    let mut cf = false;
    let mut af = false;
    if al & 0x0F > 9 || flags_in & AF != 0 {
        let (s, b) = al.overflowing_sub(6);
        al = s;
        cf = old_cf || b;
        af = true;
    }
    if old_al > 0x99 || old_cf {
        al = al.wrapping_sub(0x60);
        cf = true;
    }
    let f = szp(u64::from(al), 8) | if cf { CF } else { 0 } | if af { AF } else { 0 } | (flags_in & OF);
    (al, f)
}

/// AAA (`add`) or AAS on AX: returns (new AX, flags).
pub fn aaa_aas(add: bool, ax: u16, flags_in: u64) -> (u16, u64) {
    let al = ax as u8;
    let keep = flags_in & (OF | SF | ZF | PF);
    if al & 0x0F > 9 || flags_in & AF != 0 {
        let ax = if add {
            // AX += 0x106: the carry out of AL + 6 propagates into AH (as on current CPUs).
            ax.wrapping_add(0x106) & 0xFF0F
        } else {
            let ax2 = ax.wrapping_sub(6);
            let ah = ((ax2 >> 8) as u8).wrapping_sub(1);
            (u16::from(ah) << 8) | (ax2 & 0x0F)
        };
        (ax, keep | AF | CF)
    } else {
        ((ax & 0xFF00) | u16::from(al & 0x0F), keep)
    }
}

/// AAM with base `imm`: `None` for #DE when the base is 0.
pub fn aam(al: u8, imm: u8) -> Option<(u16, u64)> {
    if imm == 0 {
        return None;
    }
    let ah = al / imm;
    let al = al % imm;
    Some(((u16::from(ah) << 8) | u16::from(al), szp(u64::from(al), 8)))
}

/// AAD with base `imm`.
pub fn aad(ax: u16, imm: u8) -> (u16, u64) {
    let al = ((ax as u8) as u32 + ((ax >> 8) as u32) * u32::from(imm)) as u8;
    (u16::from(al), szp(u64::from(al), 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_alu_shift_examples() {
        assert_eq!(shift(ShiftOp::Shl, 8, 0x81, 1, 0), Some((0x02, CF | OF)));
        assert_eq!(shift(ShiftOp::Shr, 8, 0x81, 1, 0), Some((0x40, CF | OF)));
        assert_eq!(shift(ShiftOp::Sar, 8, 0x81, 1, 0).map(|r| r.0), Some(0xC0));
        assert_eq!(shift(ShiftOp::Rol, 8, 0x81, 1, 0).map(|r| r.0), Some(0x03));
        assert_eq!(shift(ShiftOp::Rcr, 8, 0x01, 1, CF).map(|r| r.0), Some(0x80));
        assert_eq!(shift(ShiftOp::Shl, 32, 1, 32, 0), None, "count masked to 0");
        assert_eq!(shift(ShiftOp::Shl, 64, 1, 63, 0).map(|r| r.0), Some(1 << 63));
    }

    #[test]
    fn test_alu_div_overflow_is_de() {
        assert_eq!(div(8, 0x01, 0x00, 1), None);
        assert_eq!(div(8, 0x00, 0x10, 0), None);
        assert_eq!(div(16, 0, 100, 7), Some((14, 2)));
        assert_eq!(idiv(8, 0xFF, 0x80, 0xFF), None, "-128 / -1 overflows");
        assert_eq!(
            idiv(32, 0xFFFF_FFFF, (-7i32) as u32 as u64, 2),
            Some(((-3i32) as u32 as u64, (-1i32) as u32 as u64))
        );
    }

    #[test]
    fn test_alu_bcd_examples() {
        assert_eq!(daa(0x0F, 0).0, 0x15);
        assert_eq!(daa(0x9A, 0), (0x00, CF | AF | ZF | PF));
        assert_eq!(das(0x10, AF).0, 0x0A);
        assert_eq!(aam(63, 10), Some((0x0603, PF)), "AL = 3 has even parity");
        assert_eq!(aad(0x0603, 10).0, 63);
        assert_eq!(aaa_aas(true, 0x000B, 0).0, 0x0101);
        assert_eq!(aaa_aas(true, 0xFFFF, 0).0, 0x0105, "AL + 6 carries into AH");
    }
}
