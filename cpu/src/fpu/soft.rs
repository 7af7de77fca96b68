//! Exact software floating point for the x87 and SSE: integer arithmetic only, so every host
//! computes the same bits. One rounding routine ([`round_pack`]) serves binary32, binary64
//! and the x87 80-bit format at any precision control, with x86's rules: tininess is detected
//! after rounding, the masked responses of IEEE 754, DAZ and FTZ for SSE, and the x86 NaN
//! rules (a signalling NaN is quietened; the default NaN is the negative "real indefinite").

/// Invalid operation.
pub const IE: u32 = 0x01;
/// Denormal operand.
pub const DE: u32 = 0x02;
/// Divide by zero.
pub const ZE: u32 = 0x04;
/// Overflow.
pub const OE: u32 = 0x08;
/// Underflow.
pub const UE: u32 = 0x10;
/// Precision (inexact).
pub const PE: u32 = 0x20;
/// Internal: the result was tiny (before any flush), exact or not. Unmasked underflow traps on
/// tininess alone.
pub const TINY: u32 = 0x100;

/// Internal: the magnitude was rounded up (the x87 reports it in C1).
pub const UP: u32 = 0x200;

/// Internal: the result is inexact at the destination precision with an unbounded exponent
/// (what the precision flag reports with unmasked overflow or underflow).
pub const PEU: u32 = 0x400;

/// Internal: the precision flag as reported when an unmasked overflow or underflow is taken:
/// [`PEU`] for a result that trapped, [`PE`] otherwise (masked responses are inexact).
pub const PEX: u32 = 0x800;

/// Rounding control, encoded as in the x87 control word and MXCSR.
pub const RN: u8 = 0;
/// Round down (toward -inf).
pub const RD: u8 = 1;
/// Round up (toward +inf).
pub const RU: u8 = 2;
/// Round toward zero.
pub const RZ: u8 = 3;

/// A binary floating-point format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fmt {
    /// Exponent bits.
    pub eb: u32,
    /// Precision in bits, the integer bit included.
    pub p: u32,
    /// The integer bit is stored (x87 80-bit).
    pub explicit: bool,
}

/// IEEE binary32.
pub const F32: Fmt = Fmt { eb: 8, p: 24, explicit: false };
/// IEEE binary64.
pub const F64: Fmt = Fmt { eb: 11, p: 53, explicit: false };
/// x87 double extended.
pub const F80: Fmt = Fmt { eb: 15, p: 64, explicit: true };

/// The rounding environment of one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Env {
    /// Rounding control.
    pub rc: u8,
    /// Denormal operands are read as zero (SSE DAZ).
    pub daz: bool,
    /// Tiny results are flushed to zero (SSE FTZ with underflow masked).
    pub ftz: bool,
    /// Added to the exponent of exact results before rounding (the x87's bias adjustment of
    /// ±24576 for unmasked overflow and underflow); 0 otherwise.
    pub scale: i32,
    /// The unmasked ones of [`OE`] and [`UE`] (SSE): decides the [`PEX`] flag.
    pub traps: u32,
}

/// An unpacked value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Val {
    /// ±0.
    Zero(bool),
    /// ±infinity.
    Inf(bool),
    /// A NaN: sign, fraction left-aligned in 64 bits (bit 63 is the quiet bit).
    Nan(bool, u64),
    /// A finite non-zero value: sign, significand `m`, exponent: value = m × 2^e. `den` says
    /// the encoding was denormal.
    Fin { s: bool, m: u64, e: i32, den: bool },
    /// An x87 encoding the 387 and later reject (unnormal, pseudo-NaN, pseudo-infinity).
    Unsupported,
}

impl Fmt {
    fn bias(self) -> i32 {
        (1 << (self.eb - 1)) - 1
    }
    /// Stored fraction bits (the precision less the implicit bit).
    fn fb(self) -> u32 {
        if self.explicit {
            63
        } else {
            self.p - 1
        }
    }
    fn emax_field(self) -> u64 {
        (1 << self.eb) - 1
    }
}

/// Unpacks a binary32 or binary64 value held in the low bits of `v`.
pub fn unpack(f: Fmt, v: u64) -> Val {
    let fb = f.fb();
    let s = (v >> (fb + f.eb)) & 1 != 0;
    let ef = (v >> fb) & f.emax_field();
    let frac = v & ((1u64 << fb) - 1);
    if ef == f.emax_field() {
        if frac == 0 {
            Val::Inf(s)
        } else {
            Val::Nan(s, frac << (64 - fb))
        }
    } else if ef == 0 {
        if frac == 0 {
            Val::Zero(s)
        } else {
            Val::Fin { s, m: frac, e: 1 - f.bias() - fb as i32, den: true }
        }
    } else {
        Val::Fin { s, m: frac | (1 << fb), e: ef as i32 - f.bias() - fb as i32, den: false }
    }
}

/// An 80-bit value: significand and sign/exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct X80 {
    /// Significand, explicit integer bit 63.
    pub sig: u64,
    /// Sign (bit 15) and biased exponent.
    pub se: u16,
}

impl X80 {
    /// From the 10 bytes of memory format.
    pub fn from_bytes(b: &[u8]) -> X80 {
        let mut s = [0u8; 8];
        s.copy_from_slice(&b[..8]);
        X80 { sig: u64::from_le_bytes(s), se: u16::from_le_bytes([b[8], b[9]]) }
    }
    /// To the 10 bytes of memory format.
    pub fn to_bytes(self) -> [u8; 10] {
        let mut o = [0u8; 10];
        o[..8].copy_from_slice(&self.sig.to_le_bytes());
        o[8..].copy_from_slice(&self.se.to_le_bytes());
        o
    }
    /// The x87 default NaN (real indefinite).
    pub const INDEFINITE: X80 = X80 { sig: 0xC000_0000_0000_0000, se: 0xFFFF };
    /// Sign bit.
    pub fn sign(self) -> bool {
        self.se & 0x8000 != 0
    }
}

/// Unpacks an 80-bit value.
pub fn unpack80(x: X80) -> Val {
    let s = x.sign();
    let ef = i32::from(x.se & 0x7FFF);
    let int = x.sig >> 63 != 0;
    if ef == 0x7FFF {
        if !int {
            return Val::Unsupported;
        }
        let frac = x.sig << 1;
        if frac == 0 {
            Val::Inf(s)
        } else {
            Val::Nan(s, frac)
        }
    } else if ef == 0 {
        if x.sig == 0 {
            Val::Zero(s)
        } else {
            // Denormal or pseudo-denormal (integer bit set): both read with exponent 1-bias.
            Val::Fin { s, m: x.sig, e: 1 - 16383 - 63, den: true }
        }
    } else if !int {
        Val::Unsupported
    } else {
        Val::Fin { s, m: x.sig, e: ef - 16383 - 63, den: false }
    }
}

/// Packs a NaN (sign, left-aligned fraction) into `f` (binary32/64 in a u64).
pub fn pack_nan(f: Fmt, s: bool, frac: u64) -> u64 {
    let fb = f.fb();
    (u64::from(s) << (fb + f.eb)) | (f.emax_field() << fb) | (frac >> (64 - fb))
}

/// Packs infinity.
pub fn pack_inf(f: Fmt, s: bool) -> u64 {
    (u64::from(s) << (f.fb() + f.eb)) | (f.emax_field() << f.fb())
}

/// Packs zero.
pub fn pack_zero(f: Fmt, s: bool) -> u64 {
    u64::from(s) << (f.fb() + f.eb)
}

/// The default NaN of a binary format.
pub fn default_nan(f: Fmt) -> u64 {
    pack_nan(f, true, 1 << 63)
}

/// Quietens a NaN and reports whether it was signalling.
pub fn quiet(frac: u64) -> (u64, bool) {
    (frac | (1 << 63), frac & (1 << 63) == 0)
}

/// Result of rounding: the bits (binary formats: low bits of `u64`; 80-bit: `X80`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packed {
    /// binary32/64.
    Bin(u64),
    /// 80-bit.
    Ext(X80),
}

impl Packed {
    /// The binary bits.
    pub fn bin(self) -> u64 {
        match self {
            Packed::Bin(v) => v,
            Packed::Ext(x) => x.sig,
        }
    }
    /// Unpacked again, read as format `f`.
    pub fn bin_val(self, f: Fmt) -> Val {
        match self {
            Packed::Bin(v) => unpack(f, v),
            Packed::Ext(x) => unpack80(x),
        }
    }
    /// The 80-bit value.
    pub fn ext(self) -> X80 {
        match self {
            Packed::Ext(x) => x,
            Packed::Bin(_) => X80::INDEFINITE,
        }
    }
}

fn pack_fields(f: Fmt, s: bool, ef: u64, sig: u64) -> Packed {
    if f.explicit {
        Packed::Ext(X80 { sig, se: (u16::from(s) << 15) | ef as u16 })
    } else {
        let fb = f.fb();
        Packed::Bin((u64::from(s) << (fb + f.eb)) | (ef << fb) | (sig & ((1 << fb) - 1)))
    }
}

/// Packs ±0 in `f`.
pub fn zero(f: Fmt, s: bool) -> Packed {
    pack_fields(f, s, 0, 0)
}

/// Packs ±inf in `f`.
pub fn inf(f: Fmt, s: bool) -> Packed {
    pack_fields(f, s, f.emax_field(), if f.explicit { 1 << 63 } else { 0 })
}

/// Packs a NaN in `f`.
pub fn nan(f: Fmt, s: bool, frac: u64) -> Packed {
    if f.explicit {
        Packed::Ext(X80 { sig: (1 << 63) | (frac >> 1), se: (u16::from(s) << 15) | 0x7FFF })
    } else {
        Packed::Bin(pack_nan(f, s, frac))
    }
}

/// The default NaN in `f`.
pub fn indefinite(f: Fmt) -> Packed {
    nan(f, true, 1 << 63)
}

/// Rounds `m` (with sticky in bit 0 where the caller dropped bits) right by `drop` bits.
fn round_at(m: u128, drop: u32, s: bool, rc: u8) -> (u128, bool) {
    let (v, inx, _) = round_at_up(m, drop, s, rc);
    (v, inx)
}

fn round_at_up(m: u128, drop: u32, s: bool, rc: u8) -> (u128, bool, bool) {
    if drop == 0 {
        return (m, false, false);
    }
    let (kept, rest, half) = if drop > 128 {
        (0u128, m, None)
    } else if drop == 128 {
        (0u128, m, Some(1u128 << 127))
    } else {
        (m >> drop, m & ((1u128 << drop) - 1), Some(1u128 << (drop - 1)))
    };
    let inexact = rest != 0;
    let inc = match rc {
        RN => match half {
            Some(h) => rest > h || (rest == h && kept & 1 == 1),
            None => false,
        },
        RD => s && inexact,
        RU => !s && inexact,
        _ => false,
    };
    (kept + u128::from(inc), inexact, inc)
}

/// Rounds the exact value (-1)^s × m × 2^e (a sticky bit may sit in bit 0 of `m`; callers
/// keep at least two bits beyond the precision) to `f` with `prec` bits of precision.
/// Returns the packed result and the flags (with [`TINY`] when the result was tiny).
pub fn round_pack(f: Fmt, prec: u32, s: bool, m: u128, e: i32, env: Env) -> (Packed, u32) {
    let e = e + env.scale;
    if m == 0 {
        return (zero(f, s), 0);
    }
    let lz = m.leading_zeros();
    let m = m << lz;
    // Exponent of the leading bit.
    let el = e + 127 - lz as i32;
    let bias = f.bias();
    let emin = 1 - bias;
    let emax = bias;
    let (r, inexact, up) = round_at_up(m, 128 - prec, s, env.rc);
    let (r, eu) = if r >> prec != 0 { (r >> 1, el + 1) } else { (r, el) };
    if eu > emax {
        let to_inf = match env.rc {
            RN => true,
            RZ => false,
            RD => s,
            _ => !s,
        };
        let v = if to_inf {
            inf(f, s)
        } else {
            let sig = (u64::MAX >> (64 - prec)) << (if f.explicit { 64 - prec } else { f.p - prec });
            pack_fields(f, s, (emax + bias) as u64, sig)
        };
        let pex = if env.traps & OE == 0 || inexact { PEX } else { 0 };
        return (v, OE | PE | pex | if to_inf { UP } else { 0 } | if inexact { PEU } else { 0 });
    }
    let tiny = eu < emin;
    if el < emin {
        if env.ftz && tiny {
            let pex = if env.traps & UE == 0 || inexact { PEX } else { 0 };
            return (zero(f, s), UE | PE | pex | TINY | if inexact { PEU } else { 0 });
        }
        let drop = 128 - prec + (emin - el) as u32;
        let (d, inx, dup) = round_at_up(m, drop, s, env.rc);
        let pex =
            if (env.traps & UE != 0 && tiny && inexact) || ((env.traps & UE == 0 || !tiny) && inx) { PEX } else { 0 };
        let mut flags = if inx { PE } else { 0 } | pex | if dup { UP } else { 0 } | if inexact { PEU } else { 0 };
        if tiny {
            flags |= TINY;
            if inx {
                flags |= UE;
            }
        }
        // `d` has at most `prec` bits; bit prec-1 set means it rounded up to the minimum normal.
        let sig = d as u64;
        let normal = sig >> (prec - 1) != 0;
        let shifted = if f.explicit { sig << (64 - prec) } else { sig << (f.p - prec) };
        return (pack_fields(f, s, u64::from(normal), shifted), flags);
    }
    let sig = r as u64;
    let shifted = if f.explicit { sig << (64 - prec) } else { sig << (f.p - prec) };
    (pack_fields(f, s, (eu + bias) as u64, shifted), if inexact { PE | PEU | PEX } else { 0 } | if up { UP } else { 0 })
}

/// Applies DAZ to an unpacked operand.
pub fn daz(v: Val, env: Env) -> Val {
    match v {
        Val::Fin { s, den: true, .. } if env.daz => Val::Zero(s),
        _ => v,
    }
}

/// Arithmetic operations with two operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// a + b.
    Add,
    /// a - b.
    Sub,
    /// a × b.
    Mul,
    /// a / b.
    Div,
}

/// The NaN result of a two-operand operation with at least one NaN (SSE/x87 rules: for SSE the
/// first operand's NaN wins; the x87 picks the larger significand when both are NaNs, which
/// callers ask for with `x87`). Returns (sign, quiet fraction, invalid).
pub fn propagate(a: Val, b: Val, x87: bool) -> (bool, u64, bool) {
    let sn = |v: Val| matches!(v, Val::Nan(_, fr) if fr & (1 << 63) == 0);
    let inv = sn(a) || sn(b);
    match (a, b) {
        (Val::Nan(sa, fa), Val::Nan(sb, fb)) => {
            if x87 {
                let (qa, qb) = (fa | 1 << 63, fb | 1 << 63);
                // Both of one kind (or both signalling/quiet): the larger significand, ties to
                // the positive one; a QNaN beats an SNaN.
                let pick_a = match (sn(a), sn(b)) {
                    (true, false) => false,
                    (false, true) => true,
                    _ => qa > qb || (qa == qb && !sa),
                };
                if pick_a {
                    (sa, qa, inv)
                } else {
                    (sb, qb, inv)
                }
            } else {
                (sa, fa | 1 << 63, inv)
            }
        }
        (Val::Nan(s, f), _) | (_, Val::Nan(s, f)) => (s, f | 1 << 63, inv),
        _ => (true, 1 << 63, inv),
    }
}

fn is_den(v: Val) -> bool {
    matches!(v, Val::Fin { den: true, .. })
}

/// a op b in format `f` at precision `prec`, inputs already unpacked (DAZ applied by the
/// caller). NaNs propagate with `x87` rules or SSE rules.
pub fn arith(op: Op, f: Fmt, prec: u32, a: Val, b: Val, env: Env, x87: bool) -> (Packed, u32) {
    use Val::*;
    if matches!(a, Unsupported) || matches!(b, Unsupported) {
        return (indefinite(f), IE);
    }
    if matches!(a, Nan(..)) || matches!(b, Nan(..)) {
        let (s, fr, inv) = propagate(a, b, x87);
        return (nan(f, s, fr), if inv { IE } else { 0 });
    }
    let de = if is_den(a) || is_den(b) { DE } else { 0 };
    let (r, fl) = match op {
        Op::Add | Op::Sub => {
            let b = if op == Op::Sub { neg(b) } else { b };
            add(f, prec, a, b, env)
        }
        Op::Mul => match (a, b) {
            (Inf(_), Zero(_)) | (Zero(_), Inf(_)) => (indefinite(f), IE),
            (Inf(sa), x) | (x, Inf(sa)) => (inf(f, sa ^ sign(x)), 0),
            (Zero(sa), x) | (x, Zero(sa)) => (zero(f, sa ^ sign(x)), 0),
            (Fin { s: sa, m: ma, e: ea, .. }, Fin { s: sb, m: mb, e: eb, .. }) => {
                round_pack(f, prec, sa ^ sb, u128::from(ma) * u128::from(mb), ea + eb, env)
            }
            _ => (indefinite(f), IE),
        },
        Op::Div => match (a, b) {
            (Inf(_), Inf(_)) | (Zero(_), Zero(_)) => (indefinite(f), IE),
            (Inf(sa), x) => (inf(f, sa ^ sign(x)), 0),
            (x, Inf(sb)) => (zero(f, sb ^ sign(x)), 0),
            (Zero(sa), x) => (zero(f, sa ^ sign(x)), 0),
            // A denormal dividend is not reported with a zero divisor.
            (Fin { s, .. }, Zero(sb)) => return (inf(f, s ^ sb), ZE),
            (Fin { s: sa, m: ma, e: ea, .. }, Fin { s: sb, m: mb, e: eb, .. }) => {
                // Normalize both to bit 63, then a 128-bit quotient with a sticky remainder.
                let la = ma.leading_zeros();
                let lb = mb.leading_zeros();
                let (na, nb) = (ma << la, mb << lb);
                let num = u128::from(na) << 64;
                let q1 = num / u128::from(nb);
                let r1 = num % u128::from(nb);
                let num2 = r1 << 64;
                let q2 = num2 / u128::from(nb);
                let r2 = num2 % u128::from(nb);
                let q = (q1 << 62) | (q2 >> 2) | u128::from(q2 & 3 != 0 || r2 != 0);
                // value = na/nb × 2^(ea-la - (eb-lb)); q = na/nb × 2^126.
                round_pack(f, prec, sa ^ sb, q, ea - la as i32 - (eb - lb as i32) - 126, env)
            }
            _ => (indefinite(f), IE),
        },
    };
    // An invalid operation reports no denormal-operand flag alongside.
    (r, fl | if fl & IE != 0 { 0 } else { de })
}

fn sign(v: Val) -> bool {
    match v {
        Val::Zero(s) | Val::Inf(s) | Val::Nan(s, _) | Val::Fin { s, .. } => s,
        Val::Unsupported => false,
    }
}

fn neg(v: Val) -> Val {
    match v {
        Val::Zero(s) => Val::Zero(!s),
        Val::Inf(s) => Val::Inf(!s),
        Val::Fin { s, m, e, den } => Val::Fin { s: !s, m, e, den },
        o => o,
    }
}

fn add(f: Fmt, prec: u32, a: Val, b: Val, env: Env) -> (Packed, u32) {
    use Val::*;
    match (a, b) {
        (Inf(sa), Inf(sb)) => {
            if sa == sb {
                (inf(f, sa), 0)
            } else {
                (indefinite(f), IE)
            }
        }
        (Inf(s), _) | (_, Inf(s)) => (inf(f, s), 0),
        (Zero(sa), Zero(sb)) => (zero(f, if sa == sb { sa } else { env.rc == RD }), 0),
        (Zero(_), Fin { s, m, e, .. }) | (Fin { s, m, e, .. }, Zero(_)) => {
            round_pack(f, prec, s, u128::from(m), e, env)
        }
        (Fin { s: sa, m: ma, e: ea, .. }, Fin { s: sb, m: mb, e: eb, .. }) => {
            // Place both at bit 125 (leading bit of a normalized 64-bit significand <= bit 125
            // after the shift below), align the smaller with sticky jamming.
            let (la, lb) = (ma.leading_zeros() as i32, mb.leading_zeros() as i32);
            let (xa, xe) = (u128::from(ma) << (62 + la), ea - 62 - la);
            let (xb, ye) = (u128::from(mb) << (62 + lb), eb - 62 - lb);
            let ((big, bs, be), (small, ss, se)) = if xe > ye || (xe == ye && xa >= xb) {
                ((xa, sa, xe), (xb, sb, ye))
            } else {
                ((xb, sb, ye), (xa, sa, xe))
            };
            let d = (be - se) as u32;
            let small = if d == 0 {
                small
            } else if d >= 127 {
                u128::from(small != 0)
            } else {
                (small >> d) | u128::from(small & ((1u128 << d) - 1) != 0)
            };
            let (m, s) = if bs == ss { (big + small, bs) } else { (big - small, bs) };
            if m == 0 {
                return (zero(f, env.rc == RD), 0);
            }
            round_pack(f, prec, s, m, be, env)
        }
        _ => (indefinite(f), IE),
    }
}

/// Square root.
pub fn sqrt(f: Fmt, prec: u32, a: Val, env: Env) -> (Packed, u32) {
    use Val::*;
    match a {
        Unsupported => (indefinite(f), IE),
        Nan(s, fr) => (nan(f, s, fr | 1 << 63), if fr & (1 << 63) == 0 { IE } else { 0 }),
        Zero(s) => (zero(f, s), 0),
        Inf(false) => (inf(f, false), 0),
        Inf(true) | Fin { s: true, .. } => (indefinite(f), IE),
        Fin { m, e, den, .. } => {
            // value = m × 2^e; make the exponent even and the radicand ~ 2^126..2^128.
            let lz = m.leading_zeros() as i32;
            let mut x = u128::from(m) << (64 + lz - 2);
            let mut ex = e - (64 + lz - 2);
            if ex & 1 != 0 {
                x >>= 1; // loses nothing: the low 62 - lz bits are zero
                ex += 1;
            }
            if prec <= 61 {
                // r = floor(sqrt(x)) has 63 bits: enough for binary32/64 and the x87's 24- and
                // 53-bit precision control (two rounding bits and a sticky remainder).
                let (r, rem) = isqrt_fast(x);
                let m = (r << 1) | u128::from(rem != 0);
                let (p, fl) = round_pack(f, prec, false, m, ex / 2 - 1, env);
                return (p, fl | if den { DE } else { 0 });
            }
            // r = floor(sqrt(x)), 63 bits; then 32 more bits digit by digit.
            let (r, rem) = isqrt_fast(x);
            // Need > prec + 2 bits: r has ~63-64 bits; extend by 32 fraction bits from the
            // remainder with a second step (sqrt(x × 2^64) = r' where we solve exactly).
            let (r2, rem2) = isqrt_ext(x, r, rem);
            let m = (r2 << 1) | u128::from(rem2);
            let (p, fl) = round_pack(f, prec, false, m, ex / 2 - 33, env);
            (p, fl | if den { DE } else { 0 })
        }
    }
}

/// floor(sqrt(x)) and the remainder, for x < 2^126: a floating-point first guess refined by
/// one integer Newton step and corrected exactly, so the result does not depend on the guess.
fn isqrt_fast(x: u128) -> (u128, u128) {
    // The guess is within a relative 2^-50 of the root; one Newton step brings it to within 1.
    let g = ((x as f64).sqrt() as u128).max(1);
    let mut r = (g + x / g) / 2;
    while r * r > x {
        r -= 1;
    }
    while (r + 1) * (r + 1) <= x {
        r += 1;
    }
    (r, x - r * r)
}

/// Continues the digit-by-digit square root of `x` for 32 more bits (radicand x × 2^64):
/// returns the 96-bit root and whether a remainder is left.
fn isqrt_ext(_x: u128, mut r: u128, mut rem: u128) -> (u128, bool) {
    for _ in 0..32 {
        // rem < 2r+1 <= 2^66: shifting by 2 fits.
        rem <<= 2;
        let t = (r << 2) | 1;
        r <<= 1;
        if rem >= t {
            rem -= t;
            r |= 1;
        }
    }
    (r, rem != 0)
}

/// Converts an integer to `f`.
pub fn from_int(f: Fmt, prec: u32, v: i64, env: Env) -> (Packed, u32) {
    if v == 0 {
        return (zero(f, false), 0);
    }
    round_pack(f, prec, v < 0, u128::from(v.unsigned_abs()), 0, env)
}

/// Converts to a signed integer of `bits` (32/64; 16 for the x87) with rounding `rc` (or
/// truncation): out of range or NaN gives the "integer indefinite" and IE.
pub fn to_int(v: Val, bits: u32, rc: u8) -> (i64, u32) {
    let indef = (-1i64) << (bits - 1);
    match v {
        Val::Zero(_) => (0, 0),
        Val::Nan(..) | Val::Inf(_) | Val::Unsupported => (indef, IE),
        Val::Fin { s, m, e, .. } => {
            let (mag, inexact) = if e >= 0 {
                if e > 63 || (m.leading_zeros() as i32) < e {
                    return (indef, IE);
                }
                (u128::from(m) << e, false)
            } else {
                round_at(u128::from(m), (-e) as u32, s, rc)
            };
            let limit = if s { 1u128 << (bits - 1) } else { (1u128 << (bits - 1)) - 1 };
            if mag > limit {
                return (indef, IE);
            }
            let r = if s { (mag as i128).wrapping_neg() as i64 } else { mag as i64 };
            (r, if inexact { PE } else { 0 })
        }
    }
}

/// Rounds m × 2^e (e < 0) to an integer magnitude in rounding mode `rc`: (magnitude, PE and
/// UP flags).
pub fn to_int_big(s: bool, m: u64, e: i32, rc: u8) -> (u128, u32) {
    let (r, inx, up) = round_at_up(u128::from(m), (-e) as u32, s, rc);
    (r, if inx { PE } else { 0 } | if up { UP } else { 0 })
}

/// Converts between formats (widening is exact; narrowing rounds).
pub fn convert(to: Fmt, prec: u32, v: Val, env: Env) -> (Packed, u32) {
    match v {
        Val::Unsupported => (indefinite(to), IE),
        Val::Nan(s, fr) => (nan(to, s, fr | 1 << 63), if fr & (1 << 63) == 0 { IE } else { 0 }),
        Val::Zero(s) => (zero(to, s), 0),
        Val::Inf(s) => (inf(to, s), 0),
        Val::Fin { s, m, e, den } => {
            let (p, fl) = round_pack(to, prec, s, u128::from(m), e, env);
            (p, fl | if den { DE } else { 0 })
        }
    }
}

/// Result of comparing two values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// a < b.
    Lt,
    /// a == b.
    Eq,
    /// a > b.
    Gt,
    /// Unordered.
    Un,
}

/// Compares two unpacked values (no flags).
pub fn compare(a: Val, b: Val) -> Cmp {
    use Val::*;
    let key = |v: Val| -> Option<(i8, i32, u128)> {
        // (class: -2 -inf, -1 neg fin, 0 zero, 1 pos fin, 2 +inf), magnitude as (exp, mant).
        match v {
            Zero(_) => Some((0, 0, 0)),
            Inf(s) => Some((if s { -2 } else { 2 }, 0, 0)),
            Fin { s, m, e, .. } => {
                let lz = m.leading_zeros() as i32;
                Some((if s { -1 } else { 1 }, e + 63 - lz, u128::from(m << lz)))
            }
            _ => None,
        }
    };
    match (key(a), key(b)) {
        (Some(x), Some(y)) => {
            let o = if x.0 != y.0 {
                x.0.cmp(&y.0)
            } else if x.0 == 1 {
                (x.1, x.2).cmp(&(y.1, y.2))
            } else if x.0 == -1 {
                (y.1, y.2).cmp(&(x.1, x.2))
            } else {
                std::cmp::Ordering::Equal
            };
            match o {
                std::cmp::Ordering::Less => Cmp::Lt,
                std::cmp::Ordering::Equal => Cmp::Eq,
                std::cmp::Ordering::Greater => Cmp::Gt,
            }
        }
        _ => Cmp::Un,
    }
}

/// Whether `v` is a signalling NaN.
pub fn is_snan(v: Val) -> bool {
    matches!(v, Val::Nan(_, f) if f & (1 << 63) == 0)
}

/// Whether `v` is a NaN.
pub fn is_nan(v: Val) -> bool {
    matches!(v, Val::Nan(..))
}

/// Whether `v` was a denormal encoding.
pub fn is_denormal(v: Val) -> bool {
    is_den(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    const E: Env = Env { rc: RN, daz: false, ftz: false, scale: 0, traps: 0 };

    fn f64op(op: Op, a: f64, b: f64) -> f64 {
        let (p, _) = arith(op, F64, 53, unpack(F64, a.to_bits()), unpack(F64, b.to_bits()), E, false);
        f64::from_bits(p.bin())
    }

    #[test]
    fn test_soft_basic_ops_match_ieee() {
        // The expected values are what IEEE 754 round-to-nearest gives (Rust's f64 is IEEE).
        let vals = [1.0, 3.0, 0.1, -7.25, 1e300, 1e-300, 5e-324, 2.5e-310, 123456.789];
        for &a in &vals {
            for &b in &vals {
                assert_eq!(f64op(Op::Add, a, b).to_bits(), (a + b).to_bits(), "{a} + {b}");
                assert_eq!(f64op(Op::Sub, a, b).to_bits(), (a - b).to_bits(), "{a} - {b}");
                assert_eq!(f64op(Op::Mul, a, b).to_bits(), (a * b).to_bits(), "{a} * {b}");
                assert_eq!(f64op(Op::Div, a, b).to_bits(), (a / b).to_bits(), "{a} / {b}");
            }
            if a >= 0.0 {
                let (p, _) = sqrt(F64, 53, unpack(F64, a.to_bits()), E);
                assert_eq!(p.bin(), a.sqrt().to_bits(), "sqrt {a}");
            }
        }
    }
}
