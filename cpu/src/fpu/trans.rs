//! The x87 transcendental instructions, evaluated in 128-bit software floating point (integer
//! arithmetic only) and rounded once to the destination: F2XM1, FYL2X, FYL2XP1, FSIN, FCOS,
//! FSINCOS, FPTAN, FPATAN. Like the x87, FSIN/FCOS/FSINCOS/FPTAN reduce their argument with a
//! 66-bit approximation of π (so large arguments give the x87's answers, not the exact ones).

use super::soft::{self, Env, Packed, Val, F80};

/// m × 2^e with m normalized (bit 127 set) or zero; sign s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Big {
    s: bool,
    e: i32,
    m: u128,
}

const ZERO: Big = Big { s: false, e: 0, m: 0 };

impl Big {
    fn new(s: bool, m: u128, e: i32) -> Big {
        if m == 0 {
            return ZERO;
        }
        let lz = m.leading_zeros();
        Big { s, e: e - lz as i32, m: m << lz }
    }
    fn int(v: i64) -> Big {
        Big::new(v < 0, u128::from(v.unsigned_abs()), 0)
    }
    fn from_fin(s: bool, m: u64, e: i32) -> Big {
        Big::new(s, u128::from(m), e)
    }
    fn neg(self) -> Big {
        Big { s: !self.s, ..self }
    }
    fn abs(self) -> Big {
        Big { s: false, ..self }
    }
    fn is_zero(self) -> bool {
        self.m == 0
    }
    /// Exponent of the leading bit.
    fn lead(self) -> i32 {
        self.e + 127
    }
    fn mul(self, o: Big) -> Big {
        if self.m == 0 || o.m == 0 {
            return ZERO;
        }
        let (hi, lo) = mul128(self.m, o.m);
        // Keep the top 128 bits of the 256-bit product (the low half only as a sticky bit).
        let (m, e) =
            if hi >> 127 != 0 { (hi, self.e + o.e + 128) } else { ((hi << 1) | (lo >> 127), self.e + o.e + 127) };
        Big { s: self.s ^ o.s, e, m: m | u128::from(lo << 1 != 0) }
    }
    fn add(self, o: Big) -> Big {
        if self.m == 0 {
            return o;
        }
        if o.m == 0 {
            return self;
        }
        let (a, b) = if (self.lead(), self.m) >= (o.lead(), o.m) { (self, o) } else { (o, self) };
        let d = (a.e - b.e) as u32;
        // Work with one guard bit of headroom.
        let am = a.m >> 1;
        let bm = if d + 1 >= 128 {
            u128::from(b.m != 0)
        } else {
            (b.m >> (d + 1)) | u128::from(b.m & ((1u128 << (d + 1)) - 1) != 0)
        };
        if a.s == b.s {
            Big::new(a.s, am + bm, a.e + 1)
        } else {
            Big::new(a.s, am - bm, a.e + 1)
        }
    }
    fn sub(self, o: Big) -> Big {
        self.add(o.neg())
    }
    fn div(self, o: Big) -> Big {
        if self.m == 0 {
            return ZERO;
        }
        // Restoring division with a 129-bit remainder (carry, r): 128 quotient bits of
        // self.m × 2^127 / o.m and a sticky bit.
        let (mut r, b) = (self.m, o.m);
        let mut carry = false;
        let mut q: u128 = 0;
        for _ in 0..128 {
            q <<= 1;
            if carry || r >= b {
                r = r.wrapping_sub(b);
                q |= 1;
            }
            carry = r >> 127 != 0;
            r <<= 1;
        }
        Big::new(self.s ^ o.s, q | u128::from(r != 0 || carry), self.e - o.e - 127)
    }
    /// Rounds to the 80-bit format.
    fn round(self, env: Env) -> (Packed, u32) {
        if self.m == 0 {
            return (soft::zero(F80, self.s), 0);
        }
        soft::round_pack(F80, 64, self.s, self.m, self.e, env)
    }
}

/// The 256-bit product of two u128 as (high, low).
fn mul128(a: u128, b: u128) -> (u128, u128) {
    let (a1, a0) = (a >> 64, a & u128::from(u64::MAX));
    let (b1, b0) = (b >> 64, b & u128::from(u64::MAX));
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 64) + (p01 & u128::from(u64::MAX)) + (p10 & u128::from(u64::MAX));
    let lo = (p00 & u128::from(u64::MAX)) | (mid << 64);
    let hi = p11 + (p01 >> 64) + (p10 >> 64) + (mid >> 64);
    (hi, lo)
}

/// ln 2 and π to 128 bits.
const LN2: Big = Big { s: false, e: -128, m: 0xB172_17F7_D1CF_79AB_C9E3_B398_03F2_F6AF };
const PI: Big = Big { s: false, e: -126, m: 0xC90F_DAA2_2168_C234_C4C6_628B_80DC_1CD1 };
/// √2 / 2.
const SQRT1_2: Big = Big { s: false, e: -128, m: 0xB504_F333_F9DE_6484_597D_89B3_754A_BE9F };

fn one() -> Big {
    Big::int(1)
}

/// e^t - 1 for |t| < 1 (Taylor series).
fn expm1(t: Big) -> Big {
    let mut sum = t;
    let mut term = t;
    for k in 2..80 {
        term = term.mul(t).div(Big::int(k));
        // The first negligible term is still added: it leaves a sticky bit on the right side.
        sum = sum.add(term);
        if term.is_zero() || term.lead() < sum.lead() - 120 {
            break;
        }
    }
    sum
}

/// ln(x) for x > 0.
fn ln(x: Big) -> Big {
    // x = m × 2^k with m in [√2/2, √2].
    let mut k = x.lead();
    let mut m = Big { s: false, e: -127, m: x.m };
    let sqrt2 = Big { e: SQRT1_2.e + 1, ..SQRT1_2 };
    if !m.sub(sqrt2).s {
        m = Big { e: m.e - 1, ..m };
        k += 1;
    }
    // ln(m) = 2 atanh(u), u = (m - 1) / (m + 1).
    let u = m.sub(one()).div(m.add(one()));
    ln_atanh(u).add(LN2.mul(Big::int(i64::from(k))))
}

/// 2 atanh(u) for small |u|.
fn ln_atanh(u: Big) -> Big {
    let u2 = u.mul(u);
    let mut sum = u;
    let mut pw = u;
    for k in 1..120 {
        pw = pw.mul(u2);
        let term = pw.div(Big::int(2 * k + 1));
        sum = sum.add(term);
        if term.is_zero() || term.lead() < sum.lead() - 120 {
            break;
        }
    }
    Big { e: sum.e + 1, ..sum }
}

/// sin and cos of |r| <= π/4 (Taylor series).
fn sincos(r: Big) -> (Big, Big) {
    let r2 = r.mul(r);
    let mut s = r;
    let mut term = r;
    for k in 1..60 {
        term = term.mul(r2).div(Big::int((2 * k) * (2 * k + 1))).neg();
        s = s.add(term);
        if term.is_zero() || term.lead() < s.lead() - 120 {
            break;
        }
    }
    let mut c = one();
    let mut term = one();
    for k in 1..60 {
        term = term.mul(r2).div(Big::int((2 * k - 1) * (2 * k))).neg();
        c = c.add(term);
        if term.is_zero() || term.lead() < -120 {
            break;
        }
    }
    (s, c)
}

/// atan(z) for any finite z.
fn atan(z: Big) -> Big {
    let neg = z.s;
    let mut a = z.abs();
    let mut flip = false;
    let mut base = ZERO;
    if one().sub(a).s {
        // |z| > 1: atan(z) = π/2 - atan(1/z).
        a = one().div(a);
        flip = true;
    }
    // tan(π/8) = √2 - 1: above it, atan(a) = π/4 + atan((a - 1) / (a + 1)).
    let t8 = Big { e: SQRT1_2.e + 1, ..SQRT1_2 }.sub(one());
    if !a.sub(t8).s {
        a = a.sub(one()).div(a.add(one()));
        base = Big { e: PI.e - 2, ..PI };
    }
    let a2 = a.mul(a);
    let mut sum = a;
    let mut pw = a;
    for k in 1..200 {
        pw = pw.mul(a2).neg();
        let term = pw.div(Big::int(2 * k + 1));
        sum = sum.add(term);
        if term.is_zero() || a.is_zero() || term.lead() < sum.lead() - 120 {
            break;
        }
    }
    let mut r = sum.add(base);
    if flip {
        r = Big { e: PI.e - 1, ..PI }.sub(r);
    }
    if neg {
        r.neg()
    } else {
        r
    }
}

fn big_of(v: Val) -> Option<Big> {
    match v {
        Val::Fin { s, m, e, .. } => Some(Big::from_fin(s, m, e)),
        Val::Zero(s) => Some(Big { s, ..ZERO }),
        _ => None,
    }
}

/// F2XM1: 2^x - 1 for finite non-zero x in [-1, 1] (the caller handles specials).
pub(crate) fn f2xm1(x: Val, env: Env) -> (Packed, u32) {
    let Some(b) = big_of(x) else { return (soft::indefinite(F80), soft::IE) };
    if b.is_zero() {
        return (soft::zero(F80, b.s), 0);
    }
    if b.abs() == one() {
        // 2^1 - 1 = 1 and 2^-1 - 1 = -0.5 exactly, but the x87 reports them inexact.
        let (p, fl) = if b.s { Big { e: -128, ..one() }.neg().round(env) } else { one().round(env) };
        return (p, fl | soft::PE);
    }
    expm1(b.mul(LN2)).round(env)
}

/// y × log2(x) for finite x > 0, finite y (the caller handles specials).
pub(crate) fn fyl2x(x: Val, y: Val, env: Env) -> (Packed, u32) {
    let (Some(bx), Some(by)) = (big_of(x), big_of(y)) else { return (soft::indefinite(F80), soft::IE) };
    if by.is_zero() || bx == one() {
        return (soft::zero(F80, by.s ^ bx.sub(one()).s), 0);
    }
    let l = ln(bx).div(LN2);
    // The x87 reports precision even when y × log2(x) happens to be exact (x a power of two).
    let (p, fl) = by.mul(l).round(env);
    (p, fl | soft::PE)
}

/// y × log2(1 + x) for small finite x (the caller handles specials).
pub(crate) fn fyl2xp1(x: Val, y: Val, env: Env) -> (Packed, u32) {
    let (Some(bx), Some(by)) = (big_of(x), big_of(y)) else { return (soft::indefinite(F80), soft::IE) };
    if bx.is_zero() || by.is_zero() {
        return (soft::zero(F80, bx.s ^ by.s), 0);
    }
    // ln(1 + x) = 2 atanh(x / (2 + x)).
    let u = bx.div(Big::int(2).add(bx));
    let l = ln_atanh(u).div(LN2);
    by.mul(l).round(env)
}

/// The argument reduction of FSIN/FCOS/FSINCOS/FPTAN for finite |x| < 2^63: (r, q mod 4)
/// with x = q × P + r, P = π/2 to 66 bits, |r| <= P/2 (r exact for P).
fn reduce(x: Big) -> (Big, u32) {
    // P = 0x3243F6A8885A308D3 × 2^-65 (π/2 rounded to 66 significant bits).
    const P: u128 = 0x3_243F_6A88_85A3_08D3;
    let lead = x.lead();
    if lead < -1 {
        // |x| < 0.5 < P/2.
        return (x, 0);
    }
    // X = |x| × 2^65 as an exact integer (|x| < 2^63 so it fits 128 bits; lead >= -1 so the
    // significand's low bits are dropped only if they are zero... x has 64 significant bits).
    let sh = x.e + 65;
    let xi: u128 = if sh >= 0 { x.m << sh } else { x.m >> (-sh) };
    let mut q = xi / P;
    let mut r = xi - q * P;
    if 2 * r > P || (2 * r == P && q & 1 == 1) {
        q += 1;
        r = P - r;
        // r is now negative (P - r): represent the sign.
        let rb = Big::new(!x.s, r, -65);
        let qq = if x.s { (4 - (q & 3) as u32) & 3 } else { (q & 3) as u32 };
        return (rb, qq);
    }
    let qq = if x.s { (4 - (q & 3) as u32) & 3 } else { (q & 3) as u32 };
    (Big::new(x.s, r, -65), qq)
}

/// sin and cos of a reduced argument: quadrant q, r.
fn sc_quadrant(r: Big, q: u32) -> (Big, Big) {
    let (s, c) = sincos(r);
    match q {
        0 => (s, c),
        1 => (c, s.neg()),
        2 => (s.neg(), c.neg()),
        _ => (c.neg(), s),
    }
}

/// (sin x, cos x) for finite |x| < 2^63, each rounded.
pub(crate) fn fsincos(x: Val, env: Env) -> ((Packed, u32), (Packed, u32)) {
    let Some(b) = big_of(x) else {
        let i = (soft::indefinite(F80), soft::IE);
        return (i, i);
    };
    if b.is_zero() {
        return ((soft::zero(F80, b.s), 0), one().round(env));
    }
    let (r, q) = reduce(b);
    let (s, c) = sc_quadrant(r, q);
    (s.round(env), c.round(env))
}

/// tan x for finite |x| < 2^63.
pub(crate) fn ftan(x: Val, env: Env) -> (Packed, u32) {
    let Some(b) = big_of(x) else { return (soft::indefinite(F80), soft::IE) };
    if b.is_zero() {
        return (soft::zero(F80, b.s), 0);
    }
    let (r, q) = reduce(b);
    let (s, c) = sc_quadrant(r, q);
    s.div(c).round(env)
}

/// atan2(y, x) for finite or infinite operands (NaNs handled by the caller).
pub(crate) fn fpatan(y: Val, x: Val, env: Env) -> (Packed, u32) {
    use Val::*;
    let half_pi = Big { e: PI.e - 1, ..PI };
    let quarter = Big { e: PI.e - 2, ..PI };
    let sy = matches!(y, Zero(true) | Inf(true) | Fin { s: true, .. });
    let sx = matches!(x, Zero(true) | Inf(true) | Fin { s: true, .. });
    let signed = |b: Big| if sy { b.neg() } else { b };
    let r = match (y, x) {
        (Zero(_), Zero(_) | Fin { .. } | Inf(_)) => {
            if sx {
                signed(PI)
            } else {
                return (soft::zero(F80, sy), 0);
            }
        }
        (Inf(_), Inf(_)) => signed(if sx { PI.sub(quarter) } else { quarter }),
        (Inf(_), _) | (Fin { .. }, Zero(_)) => signed(half_pi),
        (Fin { .. }, Inf(_)) => {
            if sx {
                signed(PI)
            } else {
                return (soft::zero(F80, sy), 0);
            }
        }
        (Fin { .. }, Fin { .. }) => {
            let (Some(by), Some(bx)) = (big_of(y), big_of(x)) else { return (soft::indefinite(F80), soft::IE) };
            let a = atan(by.div(bx).abs());
            let a = if sx { PI.sub(a) } else { a };
            signed(a)
        }
        _ => return (soft::indefinite(F80), soft::IE),
    };
    r.round(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_f64(p: Packed) -> f64 {
        let x = p.ext();
        let e = i32::from(x.se & 0x7FFF) - 16383;
        let v = x.sig as f64 * 2f64.powi(e - 63);
        if x.sign() {
            -v
        } else {
            v
        }
    }
    const E: Env = Env { rc: soft::RN, daz: false, ftz: false, scale: 0, traps: 0 };

    #[test]
    fn test_trans_known_values() {
        // Reference values from the definitions: sin(0.5), cos(0.5), tan(1), atan2(1, 1) = π/4,
        // log2(8) = 3, 2^0.5 - 1.
        let v = |f: f64| soft::unpack(soft::F64, f.to_bits());
        let ((s, _), (c, _)) = fsincos(v(0.5), E);
        assert!((to_f64(s) - 0.479_425_538_604_203).abs() < 1e-15);
        assert!((to_f64(c) - 0.877_582_561_890_372_8).abs() < 1e-15);
        assert!((to_f64(ftan(v(1.0), E).0) - 1.557_407_724_654_902_3).abs() < 1e-15);
        assert!((to_f64(fpatan(v(1.0), v(1.0), E).0) - std::f64::consts::FRAC_PI_4).abs() < 1e-15);
        assert_eq!(to_f64(fyl2x(v(8.0), v(1.0), E).0), 3.0);
        assert!((to_f64(f2xm1(v(0.5), E).0) - (std::f64::consts::SQRT_2 - 1.0)).abs() < 1e-15);
    }
}

#[cfg(test)]
mod regression_tests {
    use super::*;
    /// sin of a tiny argument is inexact (x - x³/6 with x³/6 below the 128-bit window): the
    /// series must leave a sticky bit, not cancel its own sticky bits (found by the host
    /// differential test).
    #[test]
    fn test_trans_tiny_sin_is_inexact() {
        let x = soft::X80 { sig: 0x8a3e_b869_2703_0cc0, se: 0x3fbd };
        let env = Env { rc: soft::RN, daz: false, ftz: false, scale: 0, traps: 0 };
        let ((p, fl), _) = fsincos(soft::unpack80(x), env);
        assert_eq!(p.ext(), x);
        assert!(fl & soft::PE != 0);
    }
}
