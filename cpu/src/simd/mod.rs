//! SSE and SSE2 (XMM forms). Floating point goes through the exact software core in
//! [`crate::fpu::soft`] with MXCSR's rounding control, DAZ, FTZ, exception flags and masks;
//! an unmasked exception leaves the destination unchanged and raises #XM (CR4.OSXMMEXCPT=1)
//! or #UD.

use crate::exception::Exception;
use crate::fpu::soft::{self, Cmp, Env, Fmt, Op, Val, F32, F64};
use crate::fpu::{check_available, Class, R};
use crate::interp::Cx;
use crate::state::cr;
use crate::state::rflags::{AF, CF, OF, PF, SF, ZF};
use iced_x86::{Instruction, Mnemonic, OpKind, Register};

/// A vector register number: XMM0-15 are 0-15, MM0-7 are 16-23.
fn xmm_index(r: Register) -> Option<usize> {
    let n = (r as usize).wrapping_sub(Register::XMM0 as usize);
    let m = (r as usize).wrapping_sub(Register::MM0 as usize);
    if n < 16 {
        Some(n)
    } else if m < 8 {
        Some(16 + m)
    } else {
        None
    }
}

const MM: usize = 16;

fn u(b: [u8; 16]) -> u128 {
    u128::from_le_bytes(b)
}

fn lanes_get(v: u128, w: u32, k: u32) -> u64 {
    let m = if w == 64 { u64::MAX } else { (1u64 << w) - 1 };
    ((v >> (w * k)) as u64) & m
}

fn map2(a: u128, b: u128, w: u32, mut f: impl FnMut(u64, u64) -> u64) -> u128 {
    let m = if w == 64 { u64::MAX } else { (1u64 << w) - 1 };
    let mut r = 0u128;
    for k in 0..128 / w {
        r |= u128::from(f(lanes_get(a, w, k), lanes_get(b, w, k)) & m) << (w * k);
    }
    r
}

fn sx(v: u64, w: u32) -> i64 {
    ((v << (64 - w)) as i64) >> (64 - w)
}

fn sat_s(v: i64, w: u32) -> u64 {
    let lo = -(1i64 << (w - 1));
    let hi = (1i64 << (w - 1)) - 1;
    v.clamp(lo, hi) as u64
}

fn sat_u(v: i64, w: u32) -> u64 {
    v.clamp(0, (1i64 << w) - 1) as u64
}

/// MOV-class instructions that do not require 16-byte alignment of a 128-bit operand.
fn unaligned_ok(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::Movups
            | M::Movupd
            | M::Movdqu
            | M::Lddqu
            | M::Pcmpestri
            | M::Pcmpestri64
            | M::Pcmpestrm
            | M::Pcmpestrm64
            | M::Pcmpistri
            | M::Pcmpistrm
    )
}

impl Cx<'_> {
    /// A vector register (XMM, or MM zero-extended).
    fn xmm(&self, n: usize) -> u128 {
        if n >= MM {
            let mut b = [0u8; 8];
            b.copy_from_slice(&self.cpu.fpu.st[n - MM][..8]);
            u128::from(u64::from_le_bytes(b))
        } else {
            u(self.cpu.fpu.xmm[n])
        }
    }
    /// Writes a vector register; an MM write also sets bits 79:64 of the x87 register.
    fn set_xmm(&mut self, n: usize, v: u128) {
        if n >= MM {
            let r = &mut self.cpu.fpu.st[n - MM];
            r[..8].copy_from_slice(&(v as u64).to_le_bytes());
            r[8] = 0xFF;
            r[9] = 0xFF;
        } else {
            self.cpu.fpu.xmm[n] = v.to_le_bytes();
        }
    }

    /// Operand `n` as 128 bits: an XMM register, or memory of the instruction's memory size
    /// (zero-extended), with the alignment check of legacy SSE 128-bit operands.
    fn src(&mut self, i: &Instruction, n: u32) -> Result<u128, Exception> {
        match i.op_kind(n) {
            OpKind::Register => {
                let r = i.op_register(n);
                match xmm_index(r) {
                    Some(x) => Ok(self.xmm(x)),
                    None => Ok(u128::from(crate::fpu::gpr(self.cpu, r))),
                }
            }
            OpKind::Memory => {
                let size = i.memory_size().size();
                let (s, ea) = self.mem_op(i);
                if size == 16 && !unaligned_ok(i.mnemonic()) {
                    let lin = self.linear(s, ea, 16)?;
                    if lin & 15 != 0 {
                        return Err(Exception::GeneralProtection(0));
                    }
                }
                let mut b = [0u8; 16];
                self.read_bytes(s, ea, &mut b[..size.min(16)])?;
                Ok(u(b))
            }
            _ => Ok(u128::from(i.immediate(n))),
        }
    }

    /// Writes operand 0: an XMM register (whole), a GPR, or memory of the memory size.
    fn dst(&mut self, i: &Instruction, v: u128) -> Result<(), Exception> {
        match i.op_kind(0) {
            OpKind::Register => {
                let r = i.op0_register();
                match xmm_index(r) {
                    Some(x) => self.set_xmm(x, v),
                    None => crate::fpu::set_gpr(self.cpu, r, v as u64),
                }
                Ok(())
            }
            _ => {
                let size = i.memory_size().size();
                let (s, ea) = self.mem_op(i);
                if size == 16 && !unaligned_ok(i.mnemonic()) {
                    let lin = self.linear(s, ea, 16)?;
                    if lin & 15 != 0 {
                        return Err(Exception::GeneralProtection(0));
                    }
                }
                self.write_bytes(s, ea, &v.to_le_bytes()[..size.min(16)])
            }
        }
    }

    fn sse_env(&self) -> Env {
        let mx = self.cpu.fpu.mxcsr;
        Env {
            rc: ((mx >> 13) & 3) as u8,
            daz: mx & (1 << 6) != 0,
            ftz: mx & (1 << 15) != 0 && mx & (1 << 11) != 0,
            scale: 0,
            traps: !(mx >> 7) & (soft::OE | soft::UE),
        }
    }

    /// Records SIMD floating-point flags; Err when an unmasked exception must be raised.
    fn sse_flags(&mut self, flags: u32) -> Result<(), Exception> {
        let masks = (self.cpu.fpu.mxcsr >> 7) & 0x3F;
        let pre = flags & (soft::IE | soft::DE | soft::ZE);
        let mut post = flags & (soft::OE | soft::UE | soft::PE);
        if masks & soft::UE == 0 && flags & soft::TINY != 0 {
            post |= soft::UE;
        }
        let raise = if pre & !masks != 0 {
            // Pre-computation exceptions: the operation is not performed.
            self.cpu.fpu.mxcsr |= pre;
            true
        } else if post & !masks & (soft::OE | soft::UE) != 0 {
            // Unmasked overflow/underflow: the precision flag says whether the result is exact
            // with an unbounded exponent (the scaled result).
            let pe = if flags & soft::PEX != 0 { soft::PE } else { 0 };
            self.cpu.fpu.mxcsr |= pre | (post & (soft::OE | soft::UE)) | pe;
            true
        } else {
            self.cpu.fpu.mxcsr |= pre | post;
            post & !masks != 0
        };
        if raise {
            return Err(if self.cpu.cr4 & cr::CR4_OSXMMEXCPT != 0 {
                Exception::SimdFloatingPoint
            } else {
                Exception::InvalidOpcode
            });
        }
        Ok(())
    }

    pub(crate) fn exec_simd(&mut self, i: &Instruction) -> R<()> {
        let regs = (0..i.op_count()).filter(|&n| i.op_kind(n) == OpKind::Register).map(|n| i.op_register(n));
        let (mut any_mm, mut any_xmm) = (false, false);
        for r in regs {
            any_mm |= r.is_mm();
            any_xmm |= r.is_xmm();
        }
        let is_mmx = any_mm || i.mnemonic() == Mnemonic::Emms;
        if is_mmx && !any_xmm {
            // MMX, and the SSE instructions on MMX registers: EM -> #UD, TS -> #NM.
            if self.cpu.cr0 & cr::CR0_EM != 0 {
                return Err(Exception::InvalidOpcode.into());
            }
            if self.cpu.cr0 & cr::CR0_TS != 0 {
                return Err(Exception::DeviceNotAvailable.into());
            }
        } else {
            check_available(self.cpu.cr0, self.cpu.cr4, Class::Sse)?;
        }
        if is_mmx {
            // A pending x87 exception is taken first.
            self.x87_pending()?;
        }
        let r = self.exec_sse(i);
        if is_mmx && matches!(r, Ok(true) | Err(Exception::SimdFloatingPoint | Exception::InvalidOpcode)) {
            // The x87 -> MMX transition (TOP = 0, every register valid; EMMS: every register
            // empty) happens once the operands are read, so a SIMD exception leaves it done
            // but a memory fault does not.
            let f = &mut self.cpu.fpu;
            f.fsw &= !(7 << 11);
            f.ftw = if i.mnemonic() == Mnemonic::Emms { 0 } else { 0xFF };
        }
        if !r? {
            log::debug!("unimplemented SSE instruction {:?}: #UD", i.code());
            return Err(Exception::InvalidOpcode.into());
        }
        self.cpu.rip = i.next_ip();
        Ok(())
    }

    /// Executes one SSE/SSE2 instruction; Ok(false) when it is not implemented.
    fn exec_sse(&mut self, i: &Instruction) -> Result<bool, Exception> {
        use Mnemonic as M;
        let m = i.mnemonic();
        let d_is_xmm = i.op_kind(0) == OpKind::Register && xmm_index(i.op0_register()).is_some();
        let dn = if d_is_xmm { xmm_index(i.op0_register()).unwrap_or(0) } else { 0 };
        // Vector width: 64 bits when an MMX register is the destination (or the source of a GPR
        // result), else 128.
        let mm_src = i.op_count() > 1 && i.op_kind(1) == OpKind::Register && i.op1_register().is_mm();
        let vw: u32 = if (d_is_xmm && dn >= MM) || (!d_is_xmm && mm_src) { 64 } else { 128 };
        match m {
            // ---- moves ----
            M::Movaps
            | M::Movups
            | M::Movapd
            | M::Movupd
            | M::Movdqa
            | M::Movdqu
            | M::Movntps
            | M::Movntpd
            | M::Movntdq
            | M::Lddqu
            | M::Movntq => {
                let v = self.src(i, 1)?;
                self.dst(i, v)?;
            }
            M::Movss | M::Movsd => {
                let w = if m == M::Movss { 32 } else { 64 };
                let mask = if w == 32 { 0xFFFF_FFFFu128 } else { u128::from(u64::MAX) };
                let v = self.src(i, 1)?;
                if d_is_xmm && i.op_kind(1) == OpKind::Register {
                    let d = self.xmm(dn);
                    self.set_xmm(dn, (d & !mask) | (v & mask));
                } else {
                    // Load zero-extends; store writes the low element.
                    self.dst(i, v & mask)?;
                }
            }
            M::Movd | M::Movq | M::Movq2dq | M::Movdq2q => {
                let v = self.src(i, 1)?;
                let w = if m == M::Movd { 32 } else { 64 };
                let mask = if w == 32 { 0xFFFF_FFFFu128 } else { u128::from(u64::MAX) };
                if d_is_xmm {
                    self.set_xmm(dn, v & mask);
                } else {
                    self.dst(i, v & mask)?;
                }
            }
            M::Movnti => {
                let v = self.src(i, 1)?;
                self.dst(i, v)?;
            }
            M::Movlps | M::Movlpd | M::Movhps | M::Movhpd => {
                let hi = matches!(m, M::Movhps | M::Movhpd);
                if d_is_xmm {
                    let v = self.src(i, 1)? as u64;
                    let d = self.xmm(dn);
                    let r = if hi {
                        (d & u128::from(u64::MAX)) | (u128::from(v) << 64)
                    } else {
                        (d & !u128::from(u64::MAX)) | u128::from(v)
                    };
                    self.set_xmm(dn, r);
                } else {
                    let s = self.src(i, 1)?;
                    let v = if hi { s >> 64 } else { s & u128::from(u64::MAX) };
                    self.dst(i, v)?;
                }
            }
            M::Movhlps | M::Movlhps => {
                let s = self.src(i, 1)?;
                let d = self.xmm(dn);
                let r = if m == M::Movhlps {
                    (d & !u128::from(u64::MAX)) | (s >> 64)
                } else {
                    (d & u128::from(u64::MAX)) | (s << 64)
                };
                self.set_xmm(dn, r);
            }
            M::Movmskps | M::Movmskpd | M::Pmovmskb => {
                let s = self.src(i, 1)?;
                let w = match m {
                    M::Movmskps => 32,
                    M::Movmskpd => 64,
                    _ => 8,
                };
                let mut r = 0u64;
                let vw = if m == M::Pmovmskb { vw } else { 128 };
                for k in 0..vw / w {
                    r |= ((lanes_get(s, w, k) >> (w - 1)) & 1) << k;
                }
                crate::fpu::set_gpr(self.cpu, i.op0_register().full_register32(), r);
            }
            // ---- logic ----
            M::Andps | M::Andpd | M::Pand => self.bin(i, |a, b| a & b)?,
            M::Andnps | M::Andnpd | M::Pandn => self.bin(i, |a, b| !a & b)?,
            M::Orps | M::Orpd | M::Por => self.bin(i, |a, b| a | b)?,
            M::Xorps | M::Xorpd | M::Pxor => self.bin(i, |a, b| a ^ b)?,
            // ---- integer arithmetic ----
            M::Paddb | M::Paddw | M::Paddd | M::Paddq | M::Psubb | M::Psubw | M::Psubd | M::Psubq => {
                let w = match m {
                    M::Paddb | M::Psubb => 8,
                    M::Paddw | M::Psubw => 16,
                    M::Paddd | M::Psubd => 32,
                    _ => 64,
                };
                let sub = matches!(m, M::Psubb | M::Psubw | M::Psubd | M::Psubq);
                self.bin(i, |a, b| map2(a, b, w, |x, y| if sub { x.wrapping_sub(y) } else { x.wrapping_add(y) }))?;
            }
            M::Paddsb | M::Paddsw | M::Psubsb | M::Psubsw => {
                let w = if matches!(m, M::Paddsb | M::Psubsb) { 8 } else { 16 };
                let sub = matches!(m, M::Psubsb | M::Psubsw);
                self.bin(i, |a, b| {
                    map2(a, b, w, |x, y| {
                        let (x, y) = (sx(x, w), sx(y, w));
                        sat_s(if sub { x - y } else { x + y }, w)
                    })
                })?;
            }
            M::Paddusb | M::Paddusw | M::Psubusb | M::Psubusw => {
                let w = if matches!(m, M::Paddusb | M::Psubusb) { 8 } else { 16 };
                let sub = matches!(m, M::Psubusb | M::Psubusw);
                self.bin(i, |a, b| {
                    map2(a, b, w, |x, y| sat_u(if sub { x as i64 - y as i64 } else { x as i64 + y as i64 }, w))
                })?;
            }
            M::Pcmpeqb | M::Pcmpeqw | M::Pcmpeqd | M::Pcmpgtb | M::Pcmpgtw | M::Pcmpgtd => {
                let w = match m {
                    M::Pcmpeqb | M::Pcmpgtb => 8,
                    M::Pcmpeqw | M::Pcmpgtw => 16,
                    _ => 32,
                };
                let gt = matches!(m, M::Pcmpgtb | M::Pcmpgtw | M::Pcmpgtd);
                self.bin(i, |a, b| {
                    map2(a, b, w, |x, y| {
                        let t = if gt { sx(x, w) > sx(y, w) } else { x == y };
                        if t {
                            u64::MAX
                        } else {
                            0
                        }
                    })
                })?;
            }
            M::Pminub => self.bin(i, |a, b| map2(a, b, 8, |x, y| x.min(y)))?,
            M::Pmaxub => self.bin(i, |a, b| map2(a, b, 8, |x, y| x.max(y)))?,
            M::Pminsw => self.bin(i, |a, b| map2(a, b, 16, |x, y| sx(x, 16).min(sx(y, 16)) as u64))?,
            M::Pmaxsw => self.bin(i, |a, b| map2(a, b, 16, |x, y| sx(x, 16).max(sx(y, 16)) as u64))?,
            M::Pavgb => self.bin(i, |a, b| map2(a, b, 8, |x, y| (x + y + 1) >> 1))?,
            M::Pavgw => self.bin(i, |a, b| map2(a, b, 16, |x, y| (x + y + 1) >> 1))?,
            M::Pmullw => self.bin(i, |a, b| map2(a, b, 16, |x, y| x.wrapping_mul(y)))?,
            M::Pmulhw => self.bin(i, |a, b| map2(a, b, 16, |x, y| ((sx(x, 16) * sx(y, 16)) >> 16) as u64))?,
            M::Pmulhuw => self.bin(i, |a, b| map2(a, b, 16, |x, y| (x * y) >> 16))?,
            M::Pmuludq => self.bin(i, |a, b| map2(a, b, 64, |x, y| (x & 0xFFFF_FFFF) * (y & 0xFFFF_FFFF)))?,
            M::Pmaddwd => self.bin(i, |a, b| {
                map2(a, b, 32, |x, y| {
                    let p0 = sx(x & 0xFFFF, 16) * sx(y & 0xFFFF, 16);
                    let p1 = sx(x >> 16, 16) * sx(y >> 16, 16);
                    (p0 + p1) as u64
                })
            })?,
            M::Psadbw => self.bin(i, |a, b| {
                map2(a, b, 64, |x, y| (0..8).map(|k| ((x >> (8 * k)) & 0xFF).abs_diff((y >> (8 * k)) & 0xFF)).sum())
            })?,
            // ---- shifts ----
            M::Psllw | M::Pslld | M::Psllq | M::Psrlw | M::Psrld | M::Psrlq | M::Psraw | M::Psrad => {
                let w = match m {
                    M::Psllw | M::Psrlw | M::Psraw => 16,
                    M::Pslld | M::Psrld | M::Psrad => 32,
                    _ => 64,
                };
                let cnt = if i.op_kind(1) == OpKind::Immediate8 {
                    u64::from(i.immediate8())
                } else {
                    // The count is the low 64 bits of the source.
                    self.src(i, 1)? as u64
                };
                let d = self.xmm(dn);
                let r = map2(d, 0, w, |x, _| match m {
                    M::Psllw | M::Pslld | M::Psllq => {
                        if cnt >= u64::from(w) {
                            0
                        } else {
                            x << cnt
                        }
                    }
                    M::Psrlw | M::Psrld | M::Psrlq => {
                        if cnt >= u64::from(w) {
                            0
                        } else {
                            x >> cnt
                        }
                    }
                    _ => (sx(x, w) >> cnt.min(u64::from(w) - 1)) as u64,
                });
                self.set_xmm(dn, r);
            }
            M::Pslldq | M::Psrldq => {
                let n = u32::from(i.immediate8());
                let d = self.xmm(dn);
                let r = if n > 15 {
                    0
                } else if m == M::Pslldq {
                    d << (8 * n)
                } else {
                    d >> (8 * n)
                };
                self.set_xmm(dn, r);
            }
            // ---- shuffles and unpacks ----
            M::Pshufd => {
                let s = self.src(i, 1)?;
                let imm = u32::from(i.immediate8());
                let mut r = 0u128;
                for k in 0..4 {
                    r |= u128::from(lanes_get(s, 32, (imm >> (2 * k)) & 3)) << (32 * k);
                }
                self.set_xmm(dn, r);
            }
            M::Pshuflw | M::Pshufhw => {
                let s = self.src(i, 1)?;
                let imm = u32::from(i.immediate8());
                let base = if m == M::Pshuflw { 0 } else { 4 };
                let mut r = s;
                for k in 0..4u32 {
                    let v = lanes_get(s, 16, base + ((imm >> (2 * k)) & 3));
                    r &= !(0xFFFFu128 << (16 * (base + k)));
                    r |= u128::from(v) << (16 * (base + k));
                }
                self.set_xmm(dn, r);
            }
            M::Punpcklbw
            | M::Punpcklwd
            | M::Punpckldq
            | M::Punpcklqdq
            | M::Punpckhbw
            | M::Punpckhwd
            | M::Punpckhdq
            | M::Punpckhqdq
            | M::Unpcklps
            | M::Unpckhps
            | M::Unpcklpd
            | M::Unpckhpd => {
                let w = match m {
                    M::Punpcklbw | M::Punpckhbw => 8,
                    M::Punpcklwd | M::Punpckhwd => 16,
                    M::Punpckldq | M::Punpckhdq | M::Unpcklps | M::Unpckhps => 32,
                    _ => 64,
                };
                let high =
                    matches!(m, M::Punpckhbw | M::Punpckhwd | M::Punpckhdq | M::Punpckhqdq | M::Unpckhps | M::Unpckhpd);
                let s = self.src(i, 1)?;
                let d = self.xmm(dn);
                let half = vw / 2 / w;
                let off = if high { half } else { 0 };
                let mut r = 0u128;
                for k in 0..half {
                    r |= u128::from(lanes_get(d, w, off + k)) << (w * 2 * k);
                    r |= u128::from(lanes_get(s, w, off + k)) << (w * (2 * k + 1));
                }
                self.set_xmm(dn, r);
            }
            M::Packsswb | M::Packssdw | M::Packuswb => {
                let w = if m == M::Packssdw { 32 } else { 16 };
                let s = self.src(i, 1)?;
                let d = self.xmm(dn);
                let n = vw / w;
                let mut r = 0u128;
                for k in 0..2 * n {
                    let x = if k < n { lanes_get(d, w, k) } else { lanes_get(s, w, k - n) };
                    let v = if m == M::Packuswb { sat_u(sx(x, w), w / 2) } else { sat_s(sx(x, w), w / 2) };
                    r |= u128::from(v & ((1u64 << (w / 2)) - 1)) << ((w / 2) * k);
                }
                self.set_xmm(dn, r);
            }
            M::Shufps => {
                let s = self.src(i, 1)?;
                let d = self.xmm(dn);
                let imm = u32::from(i.immediate8());
                let r = u128::from(lanes_get(d, 32, imm & 3))
                    | (u128::from(lanes_get(d, 32, (imm >> 2) & 3)) << 32)
                    | (u128::from(lanes_get(s, 32, (imm >> 4) & 3)) << 64)
                    | (u128::from(lanes_get(s, 32, (imm >> 6) & 3)) << 96);
                self.set_xmm(dn, r);
            }
            M::Shufpd => {
                let s = self.src(i, 1)?;
                let d = self.xmm(dn);
                let imm = u32::from(i.immediate8());
                let r = u128::from(lanes_get(d, 64, imm & 1)) | (u128::from(lanes_get(s, 64, (imm >> 1) & 1)) << 64);
                self.set_xmm(dn, r);
            }
            M::Pextrw | M::Pextrb | M::Pextrd | M::Pextrq | M::Extractps => {
                let s = self.src(i, 1)?;
                let w = match m {
                    M::Pextrw => 16,
                    M::Pextrb => 8,
                    M::Pextrq => 64,
                    _ => 32,
                };
                let v = lanes_get(s, w, u32::from(i.immediate8()) & (vw / w - 1));
                if i.op_kind(0) == OpKind::Register {
                    let r = i.op0_register();
                    // A GPR destination is zero-extended (32-bit writes clear the upper half).
                    let r = if r.size() == 8 { r } else { r.full_register32() };
                    crate::fpu::set_gpr(self.cpu, r, v);
                } else {
                    self.dst(i, u128::from(v))?;
                }
            }
            M::Pinsrb | M::Pinsrd | M::Pinsrq => {
                let w = match m {
                    M::Pinsrb => 8,
                    M::Pinsrd => 32,
                    _ => 64,
                };
                let v = (self.src(i, 1)? as u64) & if w == 64 { u64::MAX } else { (1u64 << w) - 1 };
                let k = u32::from(i.immediate8()) & (128 / w - 1);
                let d = self.xmm(dn);
                let mask = u128::from(if w == 64 { u64::MAX } else { (1u64 << w) - 1 }) << (w * k);
                self.set_xmm(dn, (d & !mask) | (u128::from(v) << (w * k)));
            }
            M::Insertps => {
                let imm = u32::from(i.immediate8());
                let v = if i.op_kind(1) == OpKind::Register {
                    lanes_get(self.src(i, 1)?, 32, imm >> 6)
                } else {
                    self.src(i, 1)? as u64 & 0xFFFF_FFFF
                };
                let d = self.xmm(dn);
                let k = (imm >> 4) & 3;
                let mut r = (d & !(0xFFFF_FFFFu128 << (32 * k))) | (u128::from(v) << (32 * k));
                for z in 0..4 {
                    if imm & (1 << z) != 0 {
                        r &= !(0xFFFF_FFFFu128 << (32 * z));
                    }
                }
                self.set_xmm(dn, r);
            }
            // ---- SSE4.1 ----
            M::Blendps | M::Blendpd | M::Pblendw | M::Blendvps | M::Blendvpd | M::Pblendvb => {
                let w = match m {
                    M::Blendps | M::Blendvps => 32,
                    M::Blendpd | M::Blendvpd => 64,
                    M::Pblendw => 16,
                    _ => 8,
                };
                let s = self.src(i, 1)?;
                let d = self.xmm(dn);
                let imm = if matches!(m, M::Blendps | M::Blendpd | M::Pblendw) { u32::from(i.immediate8()) } else { 0 };
                let x0 = self.xmm(0);
                let mut r = 0u128;
                for k in 0..128 / w {
                    let pick = if matches!(m, M::Blendps | M::Blendpd | M::Pblendw) {
                        imm & (1 << k) != 0
                    } else {
                        (lanes_get(x0, w, k) >> (w - 1)) & 1 != 0
                    };
                    r |= u128::from(lanes_get(if pick { s } else { d }, w, k)) << (w * k);
                }
                self.set_xmm(dn, r);
            }
            M::Pmaxsb | M::Pmaxsd | M::Pminsb | M::Pminsd | M::Pmaxuw | M::Pmaxud | M::Pminuw | M::Pminud => {
                let w = match m {
                    M::Pmaxsb | M::Pminsb => 8,
                    M::Pmaxuw | M::Pminuw => 16,
                    _ => 32,
                };
                let signed = matches!(m, M::Pmaxsb | M::Pmaxsd | M::Pminsb | M::Pminsd);
                let max = matches!(m, M::Pmaxsb | M::Pmaxsd | M::Pmaxuw | M::Pmaxud);
                self.bin(i, |a, b| {
                    map2(a, b, w, |x, y| {
                        let gt = if signed { sx(x, w) > sx(y, w) } else { x > y };
                        if gt == max {
                            x
                        } else {
                            y
                        }
                    })
                })?;
            }
            M::Pmovsxbw
            | M::Pmovsxbd
            | M::Pmovsxbq
            | M::Pmovsxwd
            | M::Pmovsxwq
            | M::Pmovsxdq
            | M::Pmovzxbw
            | M::Pmovzxbd
            | M::Pmovzxbq
            | M::Pmovzxwd
            | M::Pmovzxwq
            | M::Pmovzxdq => {
                let (from, to) = match m {
                    M::Pmovsxbw | M::Pmovzxbw => (8, 16),
                    M::Pmovsxbd | M::Pmovzxbd => (8, 32),
                    M::Pmovsxbq | M::Pmovzxbq => (8, 64),
                    M::Pmovsxwd | M::Pmovzxwd => (16, 32),
                    M::Pmovsxwq | M::Pmovzxwq => (16, 64),
                    _ => (32, 64),
                };
                let signed = format!("{m:?}").starts_with("Pmovsx");
                let s = self.src(i, 1)?;
                let mut r = 0u128;
                for k in 0..128 / to {
                    let x = lanes_get(s, from, k);
                    let v = if signed { sx(x, from) as u64 } else { x };
                    let mask = if to == 64 { u64::MAX } else { (1u64 << to) - 1 };
                    r |= u128::from(v & mask) << (to * k);
                }
                self.set_xmm(dn, r);
            }
            M::Pmuldq => {
                self.bin(i, |a, b| map2(a, b, 64, |x, y| (sx(x & 0xFFFF_FFFF, 32) * sx(y & 0xFFFF_FFFF, 32)) as u64))?
            }
            M::Pmulld => self.bin(i, |a, b| map2(a, b, 32, |x, y| x.wrapping_mul(y)))?,
            M::Pcmpeqq | M::Pcmpgtq => {
                let gt = m == M::Pcmpgtq;
                self.bin(i, |a, b| {
                    map2(a, b, 64, |x, y| if (gt && (x as i64) > (y as i64)) || (!gt && x == y) { u64::MAX } else { 0 })
                })?
            }
            M::Packusdw => {
                let s = self.src(i, 1)?;
                let d = self.xmm(dn);
                let mut r = 0u128;
                for k in 0..8 {
                    let x = if k < 4 { lanes_get(d, 32, k) } else { lanes_get(s, 32, k - 4) };
                    r |= u128::from(sat_u(sx(x, 32), 16)) << (16 * k);
                }
                self.set_xmm(dn, r);
            }
            M::Ptest => {
                let s = self.src(i, 1)?;
                let d = self.xmm(dn);
                let mut f = 0;
                if d & s == 0 {
                    f |= ZF;
                }
                if !d & s == 0 {
                    f |= CF;
                }
                let cur = self.cpu.rflags();
                self.cpu.set_rflags((cur & !(CF | PF | ZF | OF | SF | AF)) | f);
            }
            M::Phminposuw => {
                let s = self.src(i, 1)?;
                let mut best = (u64::MAX, 0u64);
                for k in 0..8 {
                    let v = lanes_get(s, 16, k);
                    if v < best.0 {
                        best = (v, u64::from(k));
                    }
                }
                self.set_xmm(dn, u128::from(best.0) | (u128::from(best.1) << 16));
            }
            M::Mpsadbw => {
                let s = self.src(i, 1)?;
                let d = self.xmm(dn);
                let imm = u32::from(i.immediate8());
                let so = (imm & 3) * 4;
                let doff = ((imm >> 2) & 1) * 4;
                let mut r = 0u128;
                for k in 0..8 {
                    let mut sum = 0u64;
                    for j in 0..4 {
                        sum += lanes_get(d, 8, doff + k + j).abs_diff(lanes_get(s, 8, so + j));
                    }
                    r |= u128::from(sum) << (16 * k);
                }
                self.set_xmm(dn, r);
            }
            M::Movntdqa => {
                let v = self.src(i, 1)?;
                self.set_xmm(dn, v);
            }
            M::Roundps | M::Roundpd | M::Roundss | M::Roundsd => {
                let (f, n) = match m {
                    M::Roundps => (F32, 4),
                    M::Roundpd => (F64, 2),
                    M::Roundss => (F32, 1),
                    _ => (F64, 1),
                };
                let imm = i.immediate8();
                let env = self.sse_env();
                let rc = if imm & 4 != 0 { env.rc } else { imm & 3 };
                let quiet = imm & 8 != 0;
                let w = f_bits(f);
                let s = self.src(i, 1)?;
                let d = self.xmm(dn);
                let mut r = if n == 1 { d } else { 0 };
                let mut fl = 0;
                for k in 0..n {
                    let x = lanes_get(s, w, k);
                    let (v, f2) = round_to_int(f, soft::daz(soft::unpack(f, x), env), x, rc);
                    fl |= if quiet { f2 & !soft::PE } else { f2 };
                    let mask = (if w == 64 { u128::from(u64::MAX) } else { 0xFFFF_FFFF }) << (w * k);
                    r = (r & !mask) | (u128::from(v) << (w * k));
                }
                self.sse_flags(fl)?;
                self.set_xmm(dn, r);
            }
            M::Dpps | M::Dppd => {
                let f = if m == M::Dpps { F32 } else { F64 };
                let w = f_bits(f);
                let n = 128 / w;
                let imm = u32::from(i.immediate8());
                let env = self.sse_env();
                let s = self.src(i, 1)?;
                let d = self.xmm(dn);
                let op = |o: Op, a: u64, b: u64, fl: &mut u32| -> u64 {
                    let (p, f2) = soft::arith(
                        o,
                        f,
                        f.p,
                        soft::daz(soft::unpack(f, a), env),
                        soft::daz(soft::unpack(f, b), env),
                        env,
                        false,
                    );
                    *fl |= f2;
                    p.bin()
                };
                // Products destination × source (+0.0 where the mask is clear); then each
                // destination lane k sums in its own order, (t[k^1] + t[k]) + (t[k^3] + t[k^2]),
                // which decides which NaN propagates (measured on the host; DPPD: t[k] + t[k^1]). Each stage raises
                // its unmasked exceptions before the next one runs.
                let mut fl = 0;
                let mut t = [0u64; 4];
                for k in 0..n {
                    if imm & (1 << (4 + k)) != 0 {
                        t[k as usize] = op(Op::Mul, lanes_get(d, w, k), lanes_get(s, w, k), &mut fl);
                    }
                }
                self.sse_flags(fl)?;
                let mut fl2 = 0;
                let mut pairs = [0u64; 4];
                for k in 0..n as usize {
                    // DPPD: t[k] + t[k^1].
                    pairs[k] = if n == 2 {
                        op(Op::Add, t[k], t[k ^ 1], &mut fl2)
                    } else {
                        op(Op::Add, t[k ^ 1], t[k], &mut fl2)
                    };
                }
                self.sse_flags(fl2)?;
                let mut sums = pairs;
                if n == 4 {
                    let mut fl3 = 0;
                    for k in 0..4 {
                        sums[k] = op(Op::Add, pairs[k], pairs[k ^ 2], &mut fl3);
                    }
                    self.sse_flags(fl3)?;
                }
                let mut r = 0u128;
                for k in 0..n {
                    if imm & (1 << k) != 0 {
                        r |= u128::from(sums[k as usize]) << (w * k);
                    }
                }
                self.set_xmm(dn, r);
            }
            M::Pinsrw => {
                let v = (self.src(i, 1)? as u64) & 0xFFFF;
                let k = u32::from(i.immediate8()) & (vw / 16 - 1);
                let d = self.xmm(dn);
                self.set_xmm(dn, (d & !(0xFFFFu128 << (16 * k))) | (u128::from(v) << (16 * k)));
            }
            // ---- floating point ----
            M::Addss
            | M::Addsd
            | M::Addps
            | M::Addpd
            | M::Subss
            | M::Subsd
            | M::Subps
            | M::Subpd
            | M::Mulss
            | M::Mulsd
            | M::Mulps
            | M::Mulpd
            | M::Divss
            | M::Divsd
            | M::Divps
            | M::Divpd => {
                let op = match m {
                    M::Addss | M::Addsd | M::Addps | M::Addpd => Op::Add,
                    M::Subss | M::Subsd | M::Subps | M::Subpd => Op::Sub,
                    M::Mulss | M::Mulsd | M::Mulps | M::Mulpd => Op::Mul,
                    _ => Op::Div,
                };
                let (f, n) = shape(m);
                let env = self.sse_env();
                self.fp2(i, f, n, |a, b| {
                    let (p, fl) = soft::arith(op, f, f.p, soft::daz(a, env), soft::daz(b, env), env, false);
                    (p.bin(), fl)
                })?;
            }
            M::Sqrtss | M::Sqrtsd | M::Sqrtps | M::Sqrtpd => {
                let (f, n) = shape(m);
                let env = self.sse_env();
                self.fp2(i, f, n, |_, b| {
                    let (p, fl) = soft::sqrt(f, f.p, soft::daz(b, env), env);
                    (p.bin(), fl)
                })?;
            }
            M::Minss | M::Minsd | M::Minps | M::Minpd | M::Maxss | M::Maxsd | M::Maxps | M::Maxpd => {
                let (f, n) = shape(m);
                let env = self.sse_env();
                let min = matches!(m, M::Minss | M::Minsd | M::Minps | M::Minpd);
                self.fp2_raw(i, f, n, |ra, rb| {
                    let a = soft::daz(soft::unpack(f, ra), env);
                    let b = soft::daz(soft::unpack(f, rb), env);
                    let bz =
                        if matches!(b, Val::Zero(_)) { soft::pack_zero(f, rb >> (f_bits(f) - 1) != 0) } else { rb };
                    let az =
                        if matches!(a, Val::Zero(_)) { soft::pack_zero(f, ra >> (f_bits(f) - 1) != 0) } else { ra };
                    if soft::is_nan(a) || soft::is_nan(b) {
                        return (bz, soft::IE);
                    }
                    let de = if soft::is_denormal(a) || soft::is_denormal(b) { soft::DE } else { 0 };
                    let c = soft::compare(a, b);
                    let pick_a = if min { c == Cmp::Lt } else { c == Cmp::Gt };
                    (if pick_a { az } else { bz }, de)
                })?;
            }
            M::Cmpss | M::Cmpsd | M::Cmpps | M::Cmppd => {
                let (f, n) = shape(m);
                let env = self.sse_env();
                let pred = i.immediate8() & 7;
                let ones = if f_bits(f) == 32 { 0xFFFF_FFFF } else { u64::MAX };
                self.fp2_raw(i, f, n, |ra, rb| {
                    let a = soft::daz(soft::unpack(f, ra), env);
                    let b = soft::daz(soft::unpack(f, rb), env);
                    let c = soft::compare(a, b);
                    let signalling = matches!(pred, 1 | 2 | 5 | 6);
                    let fl = cmp_flags(a, b, !signalling);
                    let t = match pred {
                        0 => c == Cmp::Eq,
                        1 => c == Cmp::Lt,
                        2 => c == Cmp::Lt || c == Cmp::Eq,
                        3 => c == Cmp::Un,
                        4 => c != Cmp::Eq,
                        5 => c != Cmp::Lt,
                        6 => !(c == Cmp::Lt || c == Cmp::Eq),
                        _ => c != Cmp::Un,
                    };
                    (if t { ones } else { 0 }, fl)
                })?;
            }
            M::Comiss | M::Comisd | M::Ucomiss | M::Ucomisd => {
                let f = if matches!(m, M::Comiss | M::Ucomiss) { F32 } else { F64 };
                let env = self.sse_env();
                let ra = lanes_get(self.xmm(dn), f_bits(f), 0);
                let rb = lanes_get(self.src(i, 1)?, f_bits(f), 0);
                let a = soft::daz(soft::unpack(f, ra), env);
                let b = soft::daz(soft::unpack(f, rb), env);
                let fl = cmp_flags(a, b, matches!(m, M::Ucomiss | M::Ucomisd));
                self.sse_flags(fl)?;
                let r = match soft::compare(a, b) {
                    Cmp::Gt => 0,
                    Cmp::Lt => CF,
                    Cmp::Eq => ZF,
                    Cmp::Un => ZF | PF | CF,
                };
                let cur = self.cpu.rflags();
                self.cpu.set_rflags((cur & !(CF | PF | ZF | OF | SF | AF)) | r);
            }
            // ---- conversions ----
            M::Cvtsi2ss | M::Cvtsi2sd => {
                let f = if m == M::Cvtsi2ss { F32 } else { F64 };
                let bits = if i.op_kind(1) == OpKind::Register {
                    (i.op1_register().size() * 8) as u32
                } else {
                    (i.memory_size().size() * 8) as u32
                };
                let v = sx(self.src(i, 1)? as u64, bits);
                let env = self.sse_env();
                let (p, fl) = soft::from_int(f, f.p, v, env);
                self.sse_flags(fl)?;
                let w = f_bits(f);
                let d = self.xmm(dn);
                let mask = if w == 32 { 0xFFFF_FFFFu128 } else { u128::from(u64::MAX) };
                self.set_xmm(dn, (d & !mask) | u128::from(p.bin()));
            }
            M::Cvtss2sd | M::Cvtsd2ss => {
                let (from, to) = if m == M::Cvtss2sd { (F32, F64) } else { (F64, F32) };
                let env = self.sse_env();
                let s = lanes_get(self.src(i, 1)?, f_bits(from), 0);
                let (p, fl) = soft::convert(to, to.p, soft::daz(soft::unpack(from, s), env), env);
                self.sse_flags(fl)?;
                let w = f_bits(to);
                let d = self.xmm(dn);
                let mask = if w == 32 { 0xFFFF_FFFFu128 } else { u128::from(u64::MAX) };
                self.set_xmm(dn, (d & !mask) | u128::from(p.bin()));
            }
            M::Cvtss2si | M::Cvttss2si | M::Cvtsd2si | M::Cvttsd2si => {
                let f = if matches!(m, M::Cvtss2si | M::Cvttss2si) { F32 } else { F64 };
                let env = self.sse_env();
                let rc = if matches!(m, M::Cvttss2si | M::Cvttsd2si) { soft::RZ } else { env.rc };
                let bits = (i.op0_register().size() * 8) as u32;
                let s = lanes_get(self.src(i, 1)?, f_bits(f), 0);
                let (r, fl) = soft::to_int(soft::daz(soft::unpack(f, s), env), bits, rc);
                self.sse_flags(fl)?;
                crate::fpu::set_gpr(self.cpu, i.op0_register(), r as u64);
            }
            M::Cvtdq2ps => {
                let s = self.src(i, 1)?;
                let env = self.sse_env();
                let mut fl = 0;
                let r = map2(s, 0, 32, |x, _| {
                    let (p, f) = soft::from_int(F32, 24, sx(x, 32), env);
                    fl |= f;
                    p.bin()
                });
                self.sse_flags(fl)?;
                self.set_xmm(dn, r);
            }
            M::Cvtps2dq | M::Cvttps2dq => {
                let s = self.src(i, 1)?;
                let env = self.sse_env();
                let rc = if m == M::Cvttps2dq { soft::RZ } else { env.rc };
                let mut fl = 0;
                let r = map2(s, 0, 32, |x, _| {
                    let (v, f) = soft::to_int(soft::daz(soft::unpack(F32, x), env), 32, rc);
                    fl |= f;
                    v as u64
                });
                self.sse_flags(fl)?;
                self.set_xmm(dn, r);
            }
            M::Cvtdq2pd => {
                let s = self.src(i, 1)?;
                let env = self.sse_env();
                let mut r = 0u128;
                for k in 0..2 {
                    let (p, _) = soft::from_int(F64, 53, sx(lanes_get(s, 32, k), 32), env);
                    r |= u128::from(p.bin()) << (64 * k);
                }
                self.set_xmm(dn, r);
            }
            M::Cvtpd2dq | M::Cvttpd2dq => {
                let s = self.src(i, 1)?;
                let env = self.sse_env();
                let rc = if m == M::Cvttpd2dq { soft::RZ } else { env.rc };
                let mut fl = 0;
                let mut r = 0u128;
                for k in 0..2 {
                    let (v, f) = soft::to_int(soft::daz(soft::unpack(F64, lanes_get(s, 64, k)), env), 32, rc);
                    fl |= f;
                    r |= u128::from(v as u32) << (32 * k);
                }
                self.sse_flags(fl)?;
                self.set_xmm(dn, r);
            }
            M::Cvtps2pd | M::Cvtpd2ps => {
                let s = self.src(i, 1)?;
                let env = self.sse_env();
                let (from, to) = if m == M::Cvtps2pd { (F32, F64) } else { (F64, F32) };
                let mut fl = 0;
                let mut r = 0u128;
                for k in 0..2 {
                    let x = lanes_get(s, f_bits(from), k);
                    let (p, f) = soft::convert(to, to.p, soft::daz(soft::unpack(from, x), env), env);
                    fl |= f;
                    r |= u128::from(p.bin()) << (f_bits(to) * k);
                }
                self.sse_flags(fl)?;
                self.set_xmm(dn, r);
            }
            // ---- SSE3 ----
            M::Addsubps | M::Addsubpd | M::Haddps | M::Haddpd | M::Hsubps | M::Hsubpd => {
                let f = if matches!(m, M::Addsubps | M::Haddps | M::Hsubps) { F32 } else { F64 };
                let w = f_bits(f);
                let n = 128 / w;
                let env = self.sse_env();
                let s = self.src(i, 1)?;
                let d = self.xmm(dn);
                let mut fl = 0;
                let mut r = 0u128;
                for k in 0..n {
                    let (a, b, op) = match m {
                        M::Addsubps | M::Addsubpd => {
                            (lanes_get(d, w, k), lanes_get(s, w, k), if k & 1 == 0 { Op::Sub } else { Op::Add })
                        }
                        _ => {
                            // Horizontal: the destination's pairs, then the source's.
                            let src = if k < n / 2 { d } else { s };
                            let j = 2 * (k % (n / 2));
                            let op = if matches!(m, M::Haddps | M::Haddpd) { Op::Add } else { Op::Sub };
                            (lanes_get(src, w, j), lanes_get(src, w, j + 1), op)
                        }
                    };
                    let (p, f2) = soft::arith(
                        op,
                        f,
                        f.p,
                        soft::daz(soft::unpack(f, a), env),
                        soft::daz(soft::unpack(f, b), env),
                        env,
                        false,
                    );
                    fl |= f2;
                    r |= u128::from(p.bin()) << (w * k);
                }
                self.sse_flags(fl)?;
                self.set_xmm(dn, r);
            }
            M::Movddup => {
                let s = self.src(i, 1)? & u128::from(u64::MAX);
                self.set_xmm(dn, s | (s << 64));
            }
            M::Movshdup | M::Movsldup => {
                let s = self.src(i, 1)?;
                let o = u32::from(m == M::Movshdup);
                let mut r = 0u128;
                for k in 0..2 {
                    let v = u128::from(lanes_get(s, 32, 2 * k + o));
                    r |= (v | (v << 32)) << (64 * k);
                }
                self.set_xmm(dn, r);
            }
            // ---- SSSE3 ----
            M::Pabsb | M::Pabsw | M::Pabsd => {
                let w = match m {
                    M::Pabsb => 8,
                    M::Pabsw => 16,
                    _ => 32,
                };
                let s = self.src(i, 1)?;
                self.set_xmm(dn, map2(s, 0, w, |x, _| sx(x, w).unsigned_abs()));
            }
            M::Psignb | M::Psignw | M::Psignd => {
                let w = match m {
                    M::Psignb => 8,
                    M::Psignw => 16,
                    _ => 32,
                };
                self.bin(i, |a, b| {
                    map2(a, b, w, |x, y| match sx(y, w).signum() {
                        -1 => x.wrapping_neg(),
                        0 => 0,
                        _ => x,
                    })
                })?;
            }
            M::Pshufb => {
                let s = self.src(i, 1)?;
                let d = self.xmm(dn);
                let idx_mask = if vw == 64 { 7 } else { 15 };
                let mut r = 0u128;
                for k in 0..vw / 8 {
                    let c = lanes_get(s, 8, k);
                    if c & 0x80 == 0 {
                        r |= u128::from(lanes_get(d, 8, (c & idx_mask) as u32)) << (8 * k);
                    }
                }
                self.set_xmm(dn, r);
            }
            M::Phaddw | M::Phaddd | M::Phaddsw | M::Phsubw | M::Phsubd | M::Phsubsw => {
                let w = if matches!(m, M::Phaddd | M::Phsubd) { 32 } else { 16 };
                let s = self.src(i, 1)?;
                let d = self.xmm(dn);
                let n = vw / w;
                let mut r = 0u128;
                for k in 0..n {
                    let src = if k < n / 2 { d } else { s };
                    let j = 2 * (k % (n / 2));
                    let (a, b) = (sx(lanes_get(src, w, j), w), sx(lanes_get(src, w, j + 1), w));
                    let v = match m {
                        M::Phaddw | M::Phaddd => a.wrapping_add(b) as u64,
                        M::Phsubw | M::Phsubd => a.wrapping_sub(b) as u64,
                        M::Phaddsw => sat_s(a + b, 16),
                        _ => sat_s(a - b, 16),
                    };
                    r |= u128::from(v & ((1u64 << w) - 1)) << (w * k);
                }
                self.set_xmm(dn, r);
            }
            M::Pmaddubsw => self.bin(i, |a, b| {
                map2(a, b, 16, |x, y| {
                    let p0 = (x & 0xFF) as i64 * sx(y & 0xFF, 8);
                    let p1 = ((x >> 8) & 0xFF) as i64 * sx((y >> 8) & 0xFF, 8);
                    sat_s(p0 + p1, 16)
                })
            })?,
            M::Pmulhrsw => {
                self.bin(i, |a, b| map2(a, b, 16, |x, y| ((((sx(x, 16) * sx(y, 16)) >> 14) + 1) >> 1) as u64))?
            }
            M::Palignr => {
                let s = self.src(i, 1)?;
                let d = self.xmm(dn);
                let n = u32::from(i.immediate8());
                let bytes = vw / 8;
                // (dst:src) as a 2×width value shifted right by n bytes.
                let mut r = 0u128;
                for k in 0..bytes {
                    let pos = k + n;
                    let b = if pos < bytes {
                        lanes_get(s, 8, pos)
                    } else if pos < 2 * bytes {
                        lanes_get(d, 8, pos - bytes)
                    } else {
                        0
                    };
                    r |= u128::from(b) << (8 * k);
                }
                self.set_xmm(dn, r);
            }
            // ---- SSE4.2 ----
            M::Crc32 => {
                let (v, bytes) = if i.op_kind(1) == OpKind::Register {
                    let r = i.op1_register();
                    (crate::fpu::gpr(self.cpu, r), r.size())
                } else {
                    let n = i.memory_size().size();
                    (self.src(i, 1)? as u64, n)
                };
                let mut crc = crate::fpu::gpr(self.cpu, i.op0_register()) as u32;
                for k in 0..bytes {
                    crc ^= ((v >> (8 * k)) & 0xFF) as u32;
                    for _ in 0..8 {
                        crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
                    }
                }
                crate::fpu::set_gpr(self.cpu, i.op0_register(), u64::from(crc));
            }
            M::Pcmpestri | M::Pcmpestri64 | M::Pcmpestrm | M::Pcmpestrm64 | M::Pcmpistri | M::Pcmpistrm => {
                let a = self.xmm(dn);
                let b = self.src(i, 1)?;
                let imm = u32::from(i.immediate8());
                let explicit = matches!(m, M::Pcmpestri | M::Pcmpestri64 | M::Pcmpestrm | M::Pcmpestrm64);
                let wide64 = matches!(m, M::Pcmpestri64 | M::Pcmpestrm64);
                let (la, lb) = if explicit {
                    let len = |v: u64| -> u32 {
                        let x = if wide64 { v as i64 } else { i64::from(v as i32) };
                        x.unsigned_abs().min(if imm & 1 != 0 { 8 } else { 16 }) as u32
                    };
                    (len(self.cpu.gpr[0]), len(self.cpu.gpr[2]))
                } else {
                    let n = if imm & 1 != 0 { 8 } else { 16 };
                    let w = 128 / n;
                    let z = |v: u128| (0..n).find(|&k| lanes_get(v, w, k) == 0).unwrap_or(n);
                    (z(a), z(b))
                };
                let (r, flags) = pcmpstr(a, b, la, lb, imm);
                let is_index = matches!(m, M::Pcmpestri | M::Pcmpestri64 | M::Pcmpistri);
                let n = if imm & 1 != 0 { 8 } else { 16 };
                if is_index {
                    let idx = if r == 0 {
                        n
                    } else if imm & 0x40 != 0 {
                        31 - r.leading_zeros()
                    } else {
                        r.trailing_zeros()
                    };
                    self.cpu.gpr[1] = u64::from(idx);
                } else {
                    let v = if imm & 0x40 != 0 {
                        let w = 128 / n;
                        let mut x = 0u128;
                        for k in 0..n {
                            if r & (1 << k) != 0 {
                                x |= (if w == 8 { 0xFFu128 } else { 0xFFFF }) << (w * k);
                            }
                        }
                        x
                    } else {
                        u128::from(r)
                    };
                    self.set_xmm(0, v);
                }
                let cur = self.cpu.rflags();
                self.cpu.set_rflags((cur & !(CF | PF | ZF | OF | SF | AF)) | flags);
            }
            M::Emms => {}
            M::Pshufw => {
                let s = self.src(i, 1)?;
                let imm = u32::from(i.immediate8());
                let mut r = 0u128;
                for k in 0..4 {
                    r |= u128::from(lanes_get(s, 16, (imm >> (2 * k)) & 3)) << (16 * k);
                }
                self.set_xmm(dn, r);
            }
            M::Cvtpi2ps | M::Cvtpi2pd => {
                let s = self.src(i, 1)?;
                let env = self.sse_env();
                let to = if m == M::Cvtpi2ps { F32 } else { F64 };
                let mut fl = 0;
                let mut r = 0u128;
                for k in 0..2 {
                    let (p, f) = soft::from_int(to, to.p, sx(lanes_get(s, 32, k), 32), env);
                    fl |= f;
                    r |= u128::from(p.bin()) << (f_bits(to) * k);
                }
                self.sse_flags(fl)?;
                if m == M::Cvtpi2ps {
                    let d = self.xmm(dn);
                    r |= d & !u128::from(u64::MAX);
                }
                self.set_xmm(dn, r);
            }
            M::Cvtps2pi | M::Cvttps2pi | M::Cvtpd2pi | M::Cvttpd2pi => {
                let s = self.src(i, 1)?;
                let env = self.sse_env();
                let from = if matches!(m, M::Cvtps2pi | M::Cvttps2pi) { F32 } else { F64 };
                let rc = if matches!(m, M::Cvttps2pi | M::Cvttpd2pi) { soft::RZ } else { env.rc };
                let mut fl = 0;
                let mut r = 0u128;
                for k in 0..2 {
                    let x = lanes_get(s, f_bits(from), k);
                    let (v, f) = soft::to_int(soft::daz(soft::unpack(from, x), env), 32, rc);
                    fl |= f;
                    r |= u128::from(v as u32) << (32 * k);
                }
                self.sse_flags(fl)?;
                self.set_xmm(dn, r);
            }
            M::Maskmovq | M::Maskmovdqu => {
                let (data, mask) = (self.src(i, 1)?, self.src(i, 2)?);
                let addr = match i.op_kind(0) {
                    OpKind::MemorySegDI => self.cpu.gpr[7] & 0xFFFF,
                    OpKind::MemorySegEDI => self.cpu.gpr[7] & 0xFFFF_FFFF,
                    _ => self.cpu.gpr[7],
                };
                let (seg, _) = self.mem_op(i);
                let n = if m == M::Maskmovq { 8 } else { 16 };
                for k in 0..n {
                    if (mask >> (8 * k + 7)) & 1 != 0 {
                        let off = addr.wrapping_add(k as u64);
                        let off = match i.op_kind(0) {
                            OpKind::MemorySegDI => off & 0xFFFF,
                            OpKind::MemorySegEDI => off & 0xFFFF_FFFF,
                            _ => off,
                        };
                        self.write_mem(seg, off, 8, ((data >> (8 * k)) & 0xFF) as u64)?;
                    }
                }
            }
            M::Rcpps | M::Rcpss | M::Rsqrtps | M::Rsqrtss => {
                let n = if matches!(m, M::Rcpps | M::Rsqrtps) { 4 } else { 1 };
                let sq = matches!(m, M::Rsqrtps | M::Rsqrtss);
                self.fp2_raw(i, F32, n, |_, b| (approx(b, sq), 0))?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// dst = f(dst, src) on 128 bits.
    fn bin(&mut self, i: &Instruction, f: impl Fn(u128, u128) -> u128) -> Result<(), Exception> {
        let dn = xmm_index(i.op0_register()).unwrap_or(0);
        let s = self.src(i, 1)?;
        let d = self.xmm(dn);
        self.set_xmm(dn, f(d, s));
        Ok(())
    }

    /// A floating-point operation on `n` lanes of `f` (1 = scalar: the other lanes of the
    /// destination are kept), operands unpacked.
    fn fp2(&mut self, i: &Instruction, f: Fmt, n: u32, op: impl Fn(Val, Val) -> (u64, u32)) -> Result<(), Exception> {
        self.fp2_raw(i, f, n, |a, b| op(soft::unpack(f, a), soft::unpack(f, b)))
    }

    fn fp2_raw(
        &mut self,
        i: &Instruction,
        f: Fmt,
        n: u32,
        op: impl Fn(u64, u64) -> (u64, u32),
    ) -> Result<(), Exception> {
        let dn = xmm_index(i.op0_register()).unwrap_or(0);
        let s = self.src(i, 1)?;
        let d = self.xmm(dn);
        let w = f_bits(f);
        let mut r = d;
        let mut fl = 0;
        for k in 0..n {
            let (v, f2) = op(lanes_get(d, w, k), lanes_get(s, w, k));
            fl |= f2;
            let mask = (if w == 64 { u128::from(u64::MAX) } else { 0xFFFF_FFFF }) << (w * k);
            r = (r & !mask) | (u128::from(v) << (w * k));
        }
        self.sse_flags(fl)?;
        self.set_xmm(dn, r);
        Ok(())
    }
}

/// PCMPxSTRx (SDM vol. 2, 4.1): compares the elements of `a` (valid below `la`) with those
/// of `b` (valid below `lb`) as `imm` says; returns IntRes2 and the flags (CF ZF SF OF).
fn pcmpstr(a: u128, b: u128, la: u32, lb: u32, imm: u32) -> (u32, u64) {
    let words = imm & 1 != 0;
    let signed = imm & 2 != 0;
    let n: u32 = if words { 8 } else { 16 };
    let w = 128 / n;
    let elem = |v: u128, k: u32| -> i64 {
        let x = lanes_get(v, w, k);
        if signed {
            sx(x, w)
        } else {
            x as i64
        }
    };
    let agg = (imm >> 2) & 3;
    // BoolRes with the validity overrides of each aggregation.
    let boolres = |i: u32, j: u32| -> bool {
        let (va, vb) = (i < la, j < lb);
        match agg {
            0 | 1 => {
                if !(va && vb) {
                    return false;
                }
                if agg == 0 {
                    elem(a, i) == elem(b, j)
                } else if i & 1 == 0 {
                    elem(b, j) >= elem(a, i)
                } else {
                    elem(b, j) <= elem(a, i)
                }
            }
            2 => match (va, vb) {
                (true, true) => elem(a, i) == elem(b, j),
                (false, false) => true,
                _ => false,
            },
            _ => match (va, vb) {
                (true, true) => elem(a, i) == elem(b, j),
                (false, _) => true,
                (true, false) => false,
            },
        }
    };
    let mut r1: u32 = 0;
    for j in 0..n {
        let bit = match agg {
            0 => (0..n).any(|i| boolres(i, j)),
            1 => (0..n).step_by(2).any(|i| boolres(i, j) && boolres(i + 1, j)),
            2 => boolres(j, j),
            _ => (0..n - j).all(|i| boolres(i, j + i)),
        };
        if bit {
            r1 |= 1 << j;
        }
    }
    let all = (1u32 << n) - 1;
    let r2 = match (imm >> 4) & 3 {
        1 => !r1 & all,
        3 => r1 ^ ((1u32 << lb) - 1),
        _ => r1,
    };
    let mut f = 0;
    if r2 != 0 {
        f |= CF;
    }
    if lb < n {
        f |= ZF;
    }
    if la < n {
        f |= SF;
    }
    if r2 & 1 != 0 {
        f |= OF;
    }
    (r2, f)
}

/// ROUNDPS/ROUNDSS: x rounded to an integral value with rounding `rc`: (bits, flags).
fn round_to_int(f: Fmt, v: Val, raw: u64, rc: u8) -> (u64, u32) {
    let near = Env { rc: soft::RN, daz: false, ftz: false, scale: 0, traps: 0 };
    match v {
        Val::Nan(s, fr) => (soft::pack_nan(f, s, fr | 1 << 63), if fr & (1 << 63) == 0 { soft::IE } else { 0 }),
        Val::Zero(s) => (soft::pack_zero(f, s), 0),
        Val::Inf(_) => (raw, 0),
        Val::Fin { s, m, e, .. } => {
            if e >= 0 {
                return (raw, 0);
            }
            let (r, fl) = soft::to_int_big(s, m, e, rc);
            if r == 0 {
                return (soft::pack_zero(f, s), fl & soft::PE);
            }
            (soft::round_pack(f, f.p, s, r, 0, near).0.bin(), fl & soft::PE)
        }
        Val::Unsupported => (soft::default_nan(f), soft::IE),
    }
}

/// RCPPS/RSQRTPS: 1/x or 1/√x with a relative error below 2^-12 (the SDM's bound is
/// 1.5 × 2^-12; the exact bits of the hardware's tables are model-specific). Computed exactly
/// and rounded to 12 significant bits; denormal inputs count as zero, denormal results flush to
/// zero, no exception is signalled and MXCSR is not consulted.
fn approx(x: u64, sqrt: bool) -> u64 {
    let near = Env { rc: soft::RN, daz: false, ftz: false, scale: 0, traps: 0 };
    let v = soft::unpack(F32, x);
    match v {
        Val::Nan(s, f) => soft::pack_nan(F32, s, f | 1 << 63),
        Val::Zero(s) | Val::Fin { s, den: true, .. } => {
            if sqrt && s && !matches!(v, Val::Zero(_)) {
                // A negative denormal reads as -0: 1/√-0 = -inf.
                soft::pack_inf(F32, true)
            } else {
                soft::pack_inf(F32, s)
            }
        }
        Val::Inf(s) => {
            if sqrt && s {
                soft::default_nan(F32)
            } else {
                soft::pack_zero(F32, s)
            }
        }
        Val::Fin { s, .. } => {
            if sqrt && s {
                return soft::default_nan(F32);
            }
            if !sqrt && (x >> 23) & 0xFF >= 253 && x & 0x7FFF_FFFF != 253 << 23 {
                // |x| > 2^126: 1/x is below the smallest normal and flushes to zero.
                return soft::pack_zero(F32, s);
            }
            let one = soft::unpack(F64, 1.0f64.to_bits());
            let den = if sqrt {
                let (r, _) = soft::sqrt(F64, 53, soft::convert(F64, 53, v, near).0.bin_val(F64), near);
                r.bin_val(F64)
            } else {
                v
            };
            let (r, fl) = soft::arith(Op::Div, F32, 12, one, den, near, false);
            if fl & soft::TINY != 0 {
                soft::pack_zero(F32, s)
            } else {
                r.bin()
            }
        }
        Val::Unsupported => soft::default_nan(F32),
    }
}

fn f_bits(f: Fmt) -> u32 {
    if f == F32 {
        32
    } else {
        64
    }
}

/// (format, lanes) of a floating-point arithmetic mnemonic.
fn shape(m: Mnemonic) -> (Fmt, u32) {
    use Mnemonic as M;
    match m {
        M::Addss | M::Subss | M::Mulss | M::Divss | M::Sqrtss | M::Minss | M::Maxss | M::Cmpss => (F32, 1),
        M::Addsd | M::Subsd | M::Mulsd | M::Divsd | M::Sqrtsd | M::Minsd | M::Maxsd | M::Cmpsd => (F64, 1),
        M::Addps | M::Subps | M::Mulps | M::Divps | M::Sqrtps | M::Minps | M::Maxps | M::Cmpps => (F32, 4),
        _ => (F64, 2),
    }
}

/// SSE compare flags: IE on an SNaN (or any NaN when `quiet` is false), else DE on a
/// denormal operand.
fn cmp_flags(a: Val, b: Val, quiet: bool) -> u32 {
    let nan = soft::is_nan(a) || soft::is_nan(b);
    let snan = soft::is_snan(a) || soft::is_snan(b);
    if snan || (nan && !quiet) {
        return soft::IE;
    }
    if nan {
        return 0;
    }
    if soft::is_denormal(a) || soft::is_denormal(b) {
        soft::DE
    } else {
        0
    }
}
