//! x87 instructions.

use super::soft::{self, Cmp, Env, Fmt, Op, Packed, Val, F32, F64, F80, X80};
use super::{check_available, fsw, Class, R};
use crate::exception::Exception;
use crate::interp::Cx;
use crate::state::rflags::{AF, CF, OF, PF, SF, ZF};
use crate::state::{CpuMode, FpuState, SegReg};
use iced_x86::{Instruction, MemorySize, Mnemonic, OpKind, Register};

const C0: u16 = fsw::C0;
const C1: u16 = fsw::C1;
const C2: u16 = fsw::C2;
const C3: u16 = fsw::C3;

impl FpuState {
    /// TOP.
    pub fn top(&self) -> usize {
        usize::from((self.fsw >> 11) & 7)
    }
    fn set_top(&mut self, t: usize) {
        self.fsw = (self.fsw & !fsw::TOP) | (((t & 7) as u16) << 11);
    }
    fn phys(&self, i: usize) -> usize {
        (self.top() + i) & 7
    }
    /// Whether ST(i) is empty.
    pub fn st_empty(&self, i: usize) -> bool {
        self.ftw & (1 << self.phys(i)) == 0
    }
    /// ST(i) (whatever the tag says).
    pub fn st_get(&self, i: usize) -> X80 {
        X80::from_bytes(&self.st[self.phys(i)][..10])
    }
    /// Writes ST(i) and tags it valid.
    pub fn st_set(&mut self, i: usize, v: X80) {
        let p = self.phys(i);
        self.st[p][..10].copy_from_slice(&v.to_bytes());
        self.st[p][10..].fill(0);
        self.ftw |= 1 << p;
    }
    fn push_raw(&mut self, v: X80) {
        let t = (self.top() + 7) & 7;
        self.set_top(t);
        self.st_set(0, v);
    }
    fn pop(&mut self) {
        let p = self.phys(0);
        self.ftw &= !(1 << p);
        self.set_top(self.top() + 1);
    }
    fn env(&self) -> Env {
        Env { rc: ((self.fcw >> 10) & 3) as u8, daz: false, ftz: false, scale: 0, traps: 0 }
    }
    /// Precision control in bits.
    fn prec(&self) -> u32 {
        match (self.fcw >> 8) & 3 {
            0 => 24,
            2 => 53,
            _ => 64,
        }
    }
}

fn st_index(r: Register) -> usize {
    (r as usize).wrapping_sub(Register::ST0 as usize) & 7
}

/// The memory format of an x87 memory operand.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MemFmt {
    F(Fmt),
    I(u32),
    Bcd,
}

fn mem_fmt(ms: MemorySize) -> Option<MemFmt> {
    Some(match ms {
        MemorySize::Float32 => MemFmt::F(F32),
        MemorySize::Float64 => MemFmt::F(F64),
        MemorySize::Float80 => MemFmt::F(F80),
        MemorySize::Int16 => MemFmt::I(16),
        MemorySize::Int32 => MemFmt::I(32),
        MemorySize::Int64 => MemFmt::I(64),
        MemorySize::Bcd => MemFmt::Bcd,
        _ => return None,
    })
}

fn bits_of(f: MemFmt) -> u32 {
    match f {
        MemFmt::F(f) if f == F32 => 32,
        MemFmt::F(f) if f == F64 => 64,
        MemFmt::F(_) | MemFmt::Bcd => 80,
        MemFmt::I(b) => b,
    }
}

/// Constants (exact 80-bit values as the x87 rounds them with round-to-nearest; the x87
/// adjusts the last bit of the irrational ones for the other rounding modes).
fn constant(m: Mnemonic, rc: u8) -> X80 {
    // (significand, exponent, rounded-to-nearest went up)
    let (sig, se, up) = match m {
        Mnemonic::Fld1 => (1u64 << 63, 0x3FFFu16, false),
        Mnemonic::Fldz => (0, 0, false),
        Mnemonic::Fldl2t => (0xD49A_784B_CD1B_8AFE, 0x4000, false),
        Mnemonic::Fldl2e => (0xB8AA_3B29_5C17_F0BC, 0x3FFF, true),
        Mnemonic::Fldpi => (0xC90F_DAA2_2168_C235, 0x4000, true),
        Mnemonic::Fldlg2 => (0x9A20_9A84_FBCF_F799, 0x3FFD, true),
        Mnemonic::Fldln2 => (0xB172_17F7_D1CF_79AC, 0x3FFE, true),
        _ => (0, 0, false),
    };
    // The round-to-nearest value went up: round-down and round-to-zero give one less.
    // L2T's nearest value went down: round-up gives one more.
    let sig = match (m, rc) {
        (Mnemonic::Fldl2t, soft::RU) => sig + 1,
        (_, soft::RD | soft::RZ) if up => sig - 1,
        _ => sig,
    };
    X80 { sig, se }
}

fn pk(p: Packed) -> X80 {
    p.ext()
}

impl Cx<'_> {
    /// Records the x87 exception flags of an operation. Returns whether the destination may
    /// be written (no unmasked invalid, zero-divide or denormal exception).
    fn x87_raise(&mut self, flags: u32) -> bool {
        let f = &mut self.cpu.fpu;
        let pre = (flags & (soft::IE | soft::DE | soft::ZE)) as u16;
        if pre & !f.fcw & 0x3F != 0 {
            // An unmasked invalid, denormal or zero-divide exception: nothing is computed.
            f.fsw |= pre | fsw::ES | fsw::B;
            return false;
        }
        let ex = (flags & 0x3F) as u16;
        f.fsw |= ex;
        if flags & soft::UP != 0 && flags & soft::PE != 0 {
            f.fsw |= C1;
        }
        if ex & !f.fcw & 0x3F != 0 {
            f.fsw |= fsw::ES | fsw::B;
        }
        true
    }

    /// Runs `op` in the x87 rounding environment. When overflow or underflow occurs with that
    /// exception unmasked, the result is delivered with the exponent bias-adjusted by ∓24576
    /// (SDM vol. 1, 4.9.1.4 and 4.9.1.5), so `op` runs again with the adjustment.
    fn x87_op(&self, op: impl Fn(Env) -> (Packed, u32)) -> (Packed, u32) {
        let env = self.cpu.fpu.env();
        let (p, fl) = op(env);
        let fcw = u32::from(self.cpu.fpu.fcw);
        let keep = fl & (soft::IE | soft::DE | soft::ZE);
        if fl & soft::OE != 0 && fcw & soft::OE == 0 {
            let (p2, f2) = op(Env { scale: -24576, ..env });
            if f2 & soft::OE != 0 {
                // Too large even with the adjustment: a signed infinity.
                let s = p2.ext().sign();
                return (soft::inf(F80, s), keep | soft::OE | soft::PE | soft::UP);
            }
            return (p2, keep | soft::OE | (f2 & (soft::PE | soft::UP)));
        }
        if fl & soft::TINY != 0 && fcw & soft::UE == 0 {
            let (p2, f2) = op(Env { scale: 24576, ..env });
            if f2 & soft::TINY != 0 {
                // Too small even with the adjustment: a signed zero.
                let s = p2.ext().sign();
                return (soft::zero(F80, s), keep | soft::UE | soft::PE);
            }
            return (p2, keep | soft::UE | (f2 & (soft::PE | soft::UP)));
        }
        (p, fl)
    }

    /// Stack underflow on reading an empty register: IE|SF, C1=0. Returns whether the
    /// masked response (the indefinite) should be written.
    fn x87_underflow(&mut self) -> bool {
        self.cpu.fpu.fsw &= !C1;
        self.cpu.fpu.fsw |= fsw::SF;
        self.x87_raise(soft::IE)
    }

    fn x87_overflow(&mut self) -> bool {
        self.cpu.fpu.fsw |= fsw::SF | C1;
        self.cpu.fpu.fsw |= soft::IE as u16;
        let masked = self.cpu.fpu.fcw & 1 != 0;
        if !masked {
            self.cpu.fpu.fsw |= fsw::ES | fsw::B;
        }
        masked
    }

    /// Pushes `v`, with the stack-overflow response.
    fn x87_push(&mut self, v: X80) {
        if !self.cpu.fpu.st_empty(7) {
            if self.x87_overflow() {
                self.cpu.fpu.push_raw(X80::INDEFINITE);
            }
            return;
        }
        self.cpu.fpu.push_raw(v);
    }

    /// Reads a memory operand as an unpacked value (loads convert exactly).
    fn x87_load_mem(&mut self, i: &Instruction, f: MemFmt) -> Result<Val, Exception> {
        let (s, ea) = self.mem_op(i);
        Ok(match f {
            MemFmt::F(ff) if ff == F80 => {
                let mut b = [0u8; 10];
                self.read_bytes(s, ea, &mut b)?;
                soft::unpack80(X80::from_bytes(&b))
            }
            MemFmt::F(ff) => soft::unpack(ff, self.read_mem(s, ea, bits_of(f))?),
            MemFmt::I(b) => {
                let v = self.read_mem(s, ea, b)?;
                let sh = 64 - b;
                let v = ((v << sh) as i64) >> sh;
                int_val(v)
            }
            MemFmt::Bcd => {
                let mut b = [0u8; 10];
                self.read_bytes(s, ea, &mut b)?;
                let mut v: u64 = 0;
                for k in (0..9).rev() {
                    v = v * 100 + u64::from(b[k] >> 4) * 10 + u64::from(b[k] & 0xF);
                }
                let neg = b[9] & 0x80 != 0;
                if v == 0 {
                    Val::Zero(neg)
                } else {
                    Val::Fin { s: neg, m: v, e: 0, den: false }
                }
            }
        })
    }

    fn set_fip(&mut self, i: &Instruction) {
        let f = &mut self.cpu.fpu;
        f.fip = self.cpu.rip;
        f.fcs = self.cpu.seg[SegReg::Cs as usize].selector;
        if (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Memory) {
            let (s, ea) = {
                let s = match i.memory_segment() {
                    Register::ES => SegReg::Es,
                    Register::CS => SegReg::Cs,
                    Register::SS => SegReg::Ss,
                    Register::FS => SegReg::Fs,
                    Register::GS => SegReg::Gs,
                    _ => SegReg::Ds,
                };
                (s, self.ea(i))
            };
            self.cpu.fpu.fdp = ea;
            self.cpu.fpu.fds = self.cpu.seg[s as usize].selector;
        }
    }

    pub(crate) fn exec_x87(&mut self, i: &Instruction) -> R<()> {
        use Mnemonic as M;
        check_available(self.cpu.cr0, self.cpu.cr4, Class::X87)?;
        let m = i.mnemonic();
        // The control instructions without a wait do not check for pending exceptions.
        let no_wait = matches!(
            m,
            M::Fninit | M::Fnstsw | M::Fnstcw | M::Fnclex | M::Fnstenv | M::Fnsave | M::Fndisi | M::Fneni | M::Fnsetpm
        );
        let wait_form = matches!(m, M::Finit | M::Fstsw | M::Fstcw | M::Fclex | M::Fstenv | M::Fsave);
        if wait_form {
            check_available(self.cpu.cr0, self.cpu.cr4, Class::Wait)?;
        }
        if !no_wait {
            self.x87_pending()?;
        }
        let control = no_wait
            || wait_form
            || matches!(m, M::Fldcw | M::Fldenv | M::Frstor | M::Fdisi | M::Feni | M::Fsetpm | M::Frstpm);
        match m {
            M::Fninit | M::Finit => self.cpu.fpu.init(),
            M::Fnstsw | M::Fstsw => {
                let v = u64::from(self.cpu.fpu.fsw);
                if i.op_kind(0) == OpKind::Register {
                    super::set_gpr(self.cpu, Register::AX, v);
                } else {
                    let (s, ea) = self.mem_op(i);
                    self.write_mem(s, ea, 16, v)?;
                }
            }
            M::Fnstcw | M::Fstcw => {
                let (s, ea) = self.mem_op(i);
                self.write_mem(s, ea, 16, u64::from(self.cpu.fpu.fcw))?;
            }
            M::Fldcw => {
                let (s, ea) = self.mem_op(i);
                let v = self.read_mem(s, ea, 16)? as u16;
                self.cpu.fpu.fcw = (v & 0x1F3F) | 0x40;
                self.cpu.fpu.update_es();
            }
            M::Fnclex | M::Fclex => {
                self.cpu.fpu.fsw &= !(0x3F | fsw::SF | fsw::ES | fsw::B);
            }
            M::Fnop | M::Fndisi | M::Fneni | M::Fnsetpm | M::Fdisi | M::Feni | M::Fsetpm | M::Frstpm => {}
            M::Fnstenv | M::Fstenv => {
                let (s, ea) = self.mem_op(i);
                self.store_env(s, ea, i)?;
                // FSTENV masks all exceptions afterwards.
                self.cpu.fpu.fcw |= 0x3F;
                self.cpu.fpu.update_es();
            }
            M::Fldenv => {
                let (s, ea) = self.mem_op(i);
                self.load_env(s, ea, i)?;
            }
            M::Fnsave | M::Fsave => {
                let (s, ea) = self.mem_op(i);
                let n = self.env_len(i);
                let mut regs = [0u8; 80];
                for k in 0..8 {
                    regs[10 * k..10 * k + 10].copy_from_slice(&self.cpu.fpu.st_get(k).to_bytes());
                }
                let lin = self.linear(s, ea, n + 80)?;
                self.probe_write(lin, (n + 80) as usize)?;
                self.store_env(s, ea, i)?;
                self.write_bytes(s, ea.wrapping_add(n), &regs)?;
                self.cpu.fpu.init();
            }
            M::Frstor => {
                let (s, ea) = self.mem_op(i);
                let n = self.env_len(i);
                let mut regs = [0u8; 80];
                self.read_bytes(s, ea.wrapping_add(n), &mut regs)?;
                self.load_env(s, ea, i)?;
                for k in 0..8 {
                    let p = self.cpu.fpu.phys(k);
                    self.cpu.fpu.st[p][..10].copy_from_slice(&regs[10 * k..10 * k + 10]);
                    self.cpu.fpu.st[p][10..].fill(0);
                }
            }
            _ => {
                self.set_fip(i);
                self.exec_x87_data(i)?;
            }
        }
        let _ = control;
        self.cpu.rip = i.next_ip();
        Ok(())
    }

    /// Size of the FSTENV image: 14 bytes with a 16-bit operand size, 28 otherwise.
    fn env_len(&self, i: &Instruction) -> u64 {
        if matches!(i.memory_size(), MemorySize::FpuEnv14 | MemorySize::FpuState94) {
            14
        } else {
            28
        }
    }

    fn store_env(&mut self, s: SegReg, ea: u64, i: &Instruction) -> Result<(), Exception> {
        let f = self.cpu.fpu;
        let tag = f.full_tag_word();
        let real = matches!(self.mode, CpuMode::Real) || self.cpu.rflags & crate::state::rflags::VM != 0;
        let mut b = [0u8; 28];
        if self.env_len(i) == 14 {
            let w = [f.fcw, f.fsw, tag];
            for (k, v) in w.iter().enumerate() {
                b[2 * k..2 * k + 2].copy_from_slice(&v.to_le_bytes());
            }
            if real {
                let ip = f.fip as u32;
                let dp = f.fdp as u32;
                b[6..8].copy_from_slice(&(ip as u16).to_le_bytes());
                b[8..10].copy_from_slice(&((((ip >> 16) & 0xF) << 12) as u16 | f.fop).to_le_bytes());
                b[10..12].copy_from_slice(&(dp as u16).to_le_bytes());
                b[12..14].copy_from_slice(&((((dp >> 16) & 0xF) << 12) as u16).to_le_bytes());
            } else {
                b[6..8].copy_from_slice(&(f.fip as u16).to_le_bytes());
                b[8..10].copy_from_slice(&f.fcs.to_le_bytes());
                b[10..12].copy_from_slice(&(f.fdp as u16).to_le_bytes());
                b[12..14].copy_from_slice(&f.fds.to_le_bytes());
            }
            return self.write_bytes(s, ea, &b[..14]);
        }
        let w = [u32::from(f.fcw) | 0xFFFF_0000, u32::from(f.fsw) | 0xFFFF_0000, u32::from(tag) | 0xFFFF_0000];
        for (k, v) in w.iter().enumerate() {
            b[4 * k..4 * k + 4].copy_from_slice(&v.to_le_bytes());
        }
        if real {
            let ip = f.fip as u32;
            let dp = f.fdp as u32;
            b[12..16].copy_from_slice(&(0xFFFF_0000 | (ip & 0xFFFF)).to_le_bytes());
            b[16..20].copy_from_slice(&(((ip >> 16) << 12) | u32::from(f.fop)).to_le_bytes());
            b[20..24].copy_from_slice(&(0xFFFF_0000 | (dp & 0xFFFF)).to_le_bytes());
            b[24..28].copy_from_slice(&((dp >> 16) << 12).to_le_bytes());
        } else {
            b[12..16].copy_from_slice(&(f.fip as u32).to_le_bytes());
            b[16..20].copy_from_slice(&(u32::from(f.fcs) | (u32::from(f.fop) << 16)).to_le_bytes());
            b[20..24].copy_from_slice(&(f.fdp as u32).to_le_bytes());
            b[24..28].copy_from_slice(&(u32::from(f.fds) | 0xFFFF_0000).to_le_bytes());
        }
        self.write_bytes(s, ea, &b)
    }

    fn load_env(&mut self, s: SegReg, ea: u64, i: &Instruction) -> Result<(), Exception> {
        let short = self.env_len(i) == 14;
        let mut b = [0u8; 28];
        let n = if short { 14 } else { 28 };
        self.read_bytes(s, ea, &mut b[..n])?;
        let w = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let d = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let real = matches!(self.mode, CpuMode::Real) || self.cpu.rflags & crate::state::rflags::VM != 0;
        let f = &mut self.cpu.fpu;
        let st = if short { 2 } else { 4 };
        f.fcw = (w(0) & 0x1F3F) | 0x40;
        f.fsw = w(st);
        f.set_full_tag_word(w(2 * st));
        if short {
            if real {
                f.fip = u64::from(w(6)) | (u64::from(w(8) >> 12) << 16);
                f.fop = w(8) & 0x7FF;
                f.fdp = u64::from(w(10)) | (u64::from(w(12) >> 12) << 16);
            } else {
                f.fip = u64::from(w(6));
                f.fcs = w(8);
                f.fdp = u64::from(w(10));
                f.fds = w(12);
            }
        } else if real {
            f.fip = u64::from(d(12) & 0xFFFF) | (u64::from(d(16) >> 12) << 16);
            f.fop = (d(16) & 0x7FF) as u16;
            f.fdp = u64::from(d(20) & 0xFFFF) | (u64::from(d(24) >> 12) << 16);
        } else {
            f.fip = u64::from(d(12));
            f.fcs = w(16);
            f.fop = w(18) & 0x7FF;
            f.fdp = u64::from(d(20));
            f.fds = w(24);
        }
        f.update_es();
        Ok(())
    }

    /// ST(i) as an unpacked value, or None after the stack-underflow response.
    fn st_val(&mut self, n: usize) -> Option<Val> {
        if self.cpu.fpu.st_empty(n) {
            None
        } else {
            Some(soft::unpack80(self.cpu.fpu.st_get(n)))
        }
    }

    fn exec_x87_data(&mut self, i: &Instruction) -> Result<(), Exception> {
        use Mnemonic as M;
        let m = i.mnemonic();
        let mem = (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Memory);
        let mf = if mem { mem_fmt(i.memory_size()) } else { None };
        // C1 is cleared by most instructions (set again by rounding up or a stack fault).
        match m {
            M::Fld | M::Fild | M::Fbld => {
                self.cpu.fpu.fsw &= !C1;
                let v = if let Some(f) = mf {
                    let raw80 = f == MemFmt::F(F80);
                    if raw80 {
                        let (s, ea) = self.mem_op(i);
                        let mut b = [0u8; 10];
                        self.read_bytes(s, ea, &mut b)?;
                        Some(X80::from_bytes(&b))
                    } else {
                        let v = self.x87_load_mem(i, f)?;
                        let (p, fl) = soft::convert(F80, 64, v, self.cpu.fpu.env());
                        if !self.cpu.fpu.st_empty(7) {
                            self.x87_push(X80::default());
                            return Ok(());
                        }
                        // An unmasked denormal exception still loads the operand; an unmasked
                        // invalid one (SNaN) does not.
                        let unmasked_ie = fl & soft::IE != 0 && self.cpu.fpu.fcw & 1 == 0;
                        self.x87_raise(fl & !soft::UP);
                        if unmasked_ie {
                            return Ok(());
                        }
                        Some(pk(p))
                    }
                } else {
                    let n = st_index(i.op0_register());
                    if self.cpu.fpu.st_empty(n) {
                        // Stack underflow takes precedence over overflow.
                        if self.x87_underflow() {
                            self.cpu.fpu.push_raw(X80::INDEFINITE);
                        }
                        None
                    } else {
                        Some(self.cpu.fpu.st_get(n))
                    }
                };
                if let Some(v) = v {
                    self.x87_push(v);
                }
            }
            M::Fld1 | M::Fldz | M::Fldl2t | M::Fldl2e | M::Fldpi | M::Fldlg2 | M::Fldln2 => {
                self.cpu.fpu.fsw &= !C1;
                let v = constant(m, self.cpu.fpu.env().rc);
                self.x87_push(v);
            }
            M::Fstpnce => {
                // D9 D8+i (undocumented alias of FSTP ST(i)): copies ST(0) and its tag to ST(i),
                // then pops, with no stack-fault check (measured on the host: an FFREE'd ST(0) is
                // copied as empty, raw bits and all).
                let n = st_index(i.op0_register());
                let f = &mut self.cpu.fpu;
                let (ps, pd) = (f.phys(0), f.phys(n));
                f.st[pd] = f.st[ps];
                f.ftw = (f.ftw & !(1 << pd)) | (((f.ftw >> ps) & 1) << pd);
                f.pop();
            }
            M::Fst | M::Fstp | M::Fist | M::Fistp | M::Fisttp | M::Fbstp => {
                self.cpu.fpu.fsw &= !C1;
                let pop = matches!(m, M::Fstp | M::Fistp | M::Fisttp | M::Fbstp);
                let src = self.st_val(0);
                if let Some(f) = mf {
                    let (s, ea) = self.mem_op(i);
                    let nbytes = (bits_of(f) / 8) as usize;
                    let out: Option<Vec<u8>> = match src {
                        None => {
                            if self.x87_underflow() {
                                Some(match f {
                                    MemFmt::F(ff) if ff == F80 => X80::INDEFINITE.to_bytes().to_vec(),
                                    MemFmt::F(ff) => soft::default_nan(ff).to_le_bytes()[..nbytes].to_vec(),
                                    MemFmt::I(b) => ((-1i64) << (b - 1)).to_le_bytes()[..nbytes].to_vec(),
                                    MemFmt::Bcd => bcd_indefinite().to_vec(),
                                })
                            } else {
                                None
                            }
                        }
                        Some(v) => {
                            let env = self.cpu.fpu.env();
                            match f {
                                MemFmt::F(ff) if ff == F80 => Some(self.cpu.fpu.st_get(0).to_bytes().to_vec()),
                                MemFmt::F(ff) => {
                                    let (p, fl) = soft::convert(ff, ff.p, v, env);
                                    let fl = fl & !soft::DE;
                                    // Unmasked overflow/underflow on a store: nothing is stored.
                                    let unm = (fl & 0x3F) as u16 & !self.cpu.fpu.fcw & (soft::OE | soft::UE) as u16;
                                    // Unmasked overflow/underflow on a store: nothing is stored
                                    // and only OE/UE is reported.
                                    let fl = if unm != 0 { fl & !(soft::PE | soft::UP) } else { fl };
                                    let ok = self.x87_raise(fl);
                                    if ok && unm == 0 {
                                        Some(p.bin().to_le_bytes()[..nbytes].to_vec())
                                    } else {
                                        None
                                    }
                                }
                                MemFmt::I(b) => {
                                    // FISTTP (SSE3) truncates whatever the rounding control.
                                    let rc = if m == M::Fisttp { soft::RZ } else { env.rc };
                                    let (r, fl) = soft::to_int(v, b, rc);
                                    let fl = if fl & soft::PE != 0 && round_up_int(v, r) { fl | soft::UP } else { fl };
                                    if self.x87_raise(fl) {
                                        Some(r.to_le_bytes()[..nbytes].to_vec())
                                    } else {
                                        None
                                    }
                                }
                                MemFmt::Bcd => {
                                    let (r, fl) = soft::to_int(v, 64, env.rc);
                                    let (bytes, fl) = if fl & soft::IE != 0
                                        || r.unsigned_abs() >= 1_000_000_000_000_000_000
                                    {
                                        (bcd_indefinite(), soft::IE)
                                    } else {
                                        (to_bcd(r, soft::compare(v, Val::Zero(false)) == Cmp::Lt || is_neg_zero(v)), fl)
                                    };
                                    let fl = if fl & soft::PE != 0 && round_up_int(v, r) { fl | soft::UP } else { fl };
                                    if self.x87_raise(fl) {
                                        Some(bytes.to_vec())
                                    } else {
                                        None
                                    }
                                }
                            }
                        }
                    };
                    match out {
                        Some(b) => self.write_bytes(s, ea, &b)?,
                        None => {
                            if self.cpu.fpu.fsw & fsw::ES != 0 && src.is_some() {
                                // Unmasked: no store, no pop.
                                return Ok(());
                            }
                            if src.is_none() {
                                return Ok(());
                            }
                        }
                    }
                } else {
                    let n = st_index(i.op0_register());
                    match src {
                        None => {
                            if !self.x87_underflow() {
                                return Ok(());
                            }
                            self.cpu.fpu.st_set(n, X80::INDEFINITE);
                        }
                        Some(_) => {
                            let v = self.cpu.fpu.st_get(0);
                            self.cpu.fpu.st_set(n, v);
                        }
                    }
                }
                if pop {
                    self.cpu.fpu.pop();
                }
            }
            M::Fxch => {
                self.cpu.fpu.fsw &= !C1;
                let n = if i.op_count() == 2 { st_index(i.op1_register()) } else { 1 };
                let (e0, en) = (self.cpu.fpu.st_empty(0), self.cpu.fpu.st_empty(n));
                if (e0 || en) && !self.x87_underflow() {
                    return Ok(());
                }
                let a = if e0 { X80::INDEFINITE } else { self.cpu.fpu.st_get(0) };
                let b = if en { X80::INDEFINITE } else { self.cpu.fpu.st_get(n) };
                self.cpu.fpu.st_set(0, b);
                self.cpu.fpu.st_set(n, a);
            }
            M::Fchs | M::Fabs => {
                self.cpu.fpu.fsw &= !C1;
                if self.cpu.fpu.st_empty(0) {
                    if self.x87_underflow() {
                        self.cpu.fpu.st_set(0, X80::INDEFINITE);
                    }
                    return Ok(());
                }
                let mut v = self.cpu.fpu.st_get(0);
                v.se = if m == M::Fchs { v.se ^ 0x8000 } else { v.se & 0x7FFF };
                self.cpu.fpu.st_set(0, v);
            }
            M::Ffree | M::Ffreep => {
                let n = st_index(i.op0_register());
                let p = self.cpu.fpu.phys(n);
                self.cpu.fpu.ftw &= !(1 << p);
                if m == M::Ffreep {
                    self.cpu.fpu.pop();
                }
            }
            M::Fincstp | M::Fdecstp => {
                self.cpu.fpu.fsw &= !C1;
                let t = self.cpu.fpu.top();
                self.cpu.fpu.set_top(if m == M::Fincstp { t + 1 } else { t + 7 });
            }
            M::Fadd
            | M::Faddp
            | M::Fiadd
            | M::Fsub
            | M::Fsubp
            | M::Fisub
            | M::Fsubr
            | M::Fsubrp
            | M::Fisubr
            | M::Fmul
            | M::Fmulp
            | M::Fimul
            | M::Fdiv
            | M::Fdivp
            | M::Fidiv
            | M::Fdivr
            | M::Fdivrp
            | M::Fidivr => {
                self.cpu.fpu.fsw &= !C1;
                let (dst, src_val) = if let Some(f) = mf {
                    (0usize, Some(self.x87_load_mem(i, f)?))
                } else {
                    let (d, s) = (st_index(i.op0_register()), st_index(i.op1_register()));
                    (d, self.st_val(s))
                };
                let pop = matches!(m, M::Faddp | M::Fsubp | M::Fsubrp | M::Fmulp | M::Fdivp | M::Fdivrp);
                let dst_val = self.st_val(dst);
                let (a, b) = match (dst_val, src_val) {
                    (Some(a), Some(b)) => (a, b),
                    _ => {
                        if self.x87_underflow() {
                            self.cpu.fpu.st_set(dst, X80::INDEFINITE);
                            if pop {
                                self.cpu.fpu.pop();
                            }
                        }
                        return Ok(());
                    }
                };
                let (op, rev) = match m {
                    M::Fadd | M::Faddp | M::Fiadd => (Op::Add, false),
                    M::Fsub | M::Fsubp | M::Fisub => (Op::Sub, false),
                    M::Fsubr | M::Fsubrp | M::Fisubr => (Op::Sub, true),
                    M::Fmul | M::Fmulp | M::Fimul => (Op::Mul, false),
                    M::Fdiv | M::Fdivp | M::Fidiv => (Op::Div, false),
                    _ => (Op::Div, true),
                };
                let (x, y) = if rev { (b, a) } else { (a, b) };
                let prec = self.cpu.fpu.prec();
                let (p, fl) = self.x87_op(|env| soft::arith(op, F80, prec, x, y, env, true));
                if self.x87_raise(fl) {
                    self.cpu.fpu.st_set(dst, pk(p));
                    if pop {
                        self.cpu.fpu.pop();
                    }
                }
            }
            M::Fsqrt => {
                self.cpu.fpu.fsw &= !C1;
                let Some(a) = self.st_val(0) else {
                    if self.x87_underflow() {
                        self.cpu.fpu.st_set(0, X80::INDEFINITE);
                    }
                    return Ok(());
                };
                let prec = self.cpu.fpu.prec();
                let (p, fl) = soft::sqrt(F80, prec, a, self.cpu.fpu.env());
                if self.x87_raise(fl) {
                    self.cpu.fpu.st_set(0, pk(p));
                }
            }
            M::Frndint => {
                self.cpu.fpu.fsw &= !C1;
                let Some(a) = self.st_val(0) else {
                    if self.x87_underflow() {
                        self.cpu.fpu.st_set(0, X80::INDEFINITE);
                    }
                    return Ok(());
                };
                let (p, fl) = round_int(a, self.cpu.fpu.env().rc);
                if self.x87_raise(fl) {
                    self.cpu.fpu.st_set(0, p);
                }
            }
            M::Fcom | M::Fcomp | M::Fcompp | M::Fucom | M::Fucomp | M::Fucompp | M::Ficom | M::Ficomp | M::Ftst => {
                let a = self.st_val(0);
                let b = if m == M::Ftst {
                    Some(Val::Zero(false))
                } else if let Some(f) = mf {
                    Some(self.x87_load_mem(i, f)?)
                } else {
                    let n = if i.op_count() >= 2 {
                        st_index(i.op1_register())
                    } else if i.op_count() == 1 {
                        st_index(i.op0_register())
                    } else {
                        1
                    };
                    self.st_val(n)
                };
                let pops = match m {
                    M::Fcomp | M::Fucomp | M::Ficomp => 1,
                    M::Fcompp | M::Fucompp => 2,
                    _ => 0,
                };
                let f = &mut self.cpu.fpu;
                f.fsw &= !(C0 | C1 | C2 | C3);
                let (cc, ok) = match (a, b) {
                    (Some(a), Some(b)) => {
                        let unordered_quiet = matches!(m, M::Fucom | M::Fucomp | M::Fucompp);
                        let fl = cmp_flags(a, b, unordered_quiet);
                        let ok = self.x87_raise(fl);
                        (soft::compare(a, b), ok)
                    }
                    _ => {
                        let ok = self.x87_underflow();
                        (Cmp::Un, ok)
                    }
                };
                {
                    let bits = match cc {
                        Cmp::Gt => 0,
                        Cmp::Lt => C0,
                        Cmp::Eq => C3,
                        Cmp::Un => C0 | C2 | C3,
                    };
                    self.cpu.fpu.fsw |= bits;
                }
                if ok {
                    for _ in 0..pops {
                        self.cpu.fpu.pop();
                    }
                }
            }
            M::Fcomi | M::Fcomip | M::Fucomi | M::Fucomip => {
                self.cpu.fpu.fsw &= !C1;
                let n = st_index(i.op1_register());
                let (a, b) = (self.st_val(0), self.st_val(n));
                let (cc, ok) = match (a, b) {
                    (Some(a), Some(b)) => {
                        let fl = cmp_flags(a, b, matches!(m, M::Fucomi | M::Fucomip));
                        (soft::compare(a, b), self.x87_raise(fl))
                    }
                    _ => (Cmp::Un, self.x87_underflow()),
                };
                {
                    let f = match cc {
                        Cmp::Gt => 0,
                        Cmp::Lt => CF,
                        Cmp::Eq => ZF,
                        Cmp::Un => ZF | PF | CF,
                    };
                    let cur = self.cpu.rflags();
                    self.cpu.set_rflags((cur & !(CF | PF | ZF | OF | SF | AF)) | f);
                    if ok && matches!(m, M::Fcomip | M::Fucomip) {
                        self.cpu.fpu.pop();
                    }
                }
            }
            M::Fxam => {
                let f = &mut self.cpu.fpu;
                f.fsw &= !(C0 | C1 | C2 | C3);
                let v = f.st_get(0);
                if v.sign() {
                    f.fsw |= C1;
                }
                let cc = if f.st_empty(0) {
                    C3 | C0
                } else {
                    match soft::unpack80(v) {
                        Val::Unsupported => 0,
                        Val::Nan(..) => C0,
                        Val::Fin { den: false, .. } => C2,
                        Val::Inf(_) => C2 | C0,
                        Val::Zero(_) => C3,
                        Val::Fin { den: true, .. } => C3 | C2,
                    }
                };
                f.fsw |= cc;
            }
            M::Fcmovb | M::Fcmove | M::Fcmovbe | M::Fcmovu | M::Fcmovnb | M::Fcmovne | M::Fcmovnbe | M::Fcmovnu => {
                self.cpu.fpu.fsw &= !C1;
                let n = st_index(i.op1_register());
                if self.cpu.fpu.st_empty(0) || self.cpu.fpu.st_empty(n) {
                    if self.x87_underflow() {
                        self.cpu.fpu.st_set(0, X80::INDEFINITE);
                    }
                    return Ok(());
                }
                let fl = self.cpu.rflags();
                let take = match m {
                    M::Fcmovb => fl & CF != 0,
                    M::Fcmove => fl & ZF != 0,
                    M::Fcmovbe => fl & (CF | ZF) != 0,
                    M::Fcmovu => fl & PF != 0,
                    M::Fcmovnb => fl & CF == 0,
                    M::Fcmovne => fl & ZF == 0,
                    M::Fcmovnbe => fl & (CF | ZF) == 0,
                    _ => fl & PF == 0,
                };
                if take {
                    let v = self.cpu.fpu.st_get(n);
                    self.cpu.fpu.st_set(0, v);
                }
            }
            M::Fxtract => {
                self.cpu.fpu.fsw &= !C1;
                let Some(a) = self.st_val(0) else {
                    if self.x87_underflow() {
                        self.cpu.fpu.st_set(0, X80::INDEFINITE);
                        self.cpu.fpu.push_raw(X80::INDEFINITE);
                    }
                    return Ok(());
                };
                if !self.cpu.fpu.st_empty(7) {
                    if self.x87_overflow() {
                        self.cpu.fpu.st_set(0, X80::INDEFINITE);
                        self.cpu.fpu.push_raw(X80::INDEFINITE);
                    }
                    return Ok(());
                }
                let (expo, sig, fl) = match a {
                    Val::Unsupported => (X80::INDEFINITE, X80::INDEFINITE, soft::IE),
                    Val::Nan(s, f) => {
                        let q = soft::nan(F80, s, f | 1 << 63).ext();
                        (q, q, if f & (1 << 63) == 0 { soft::IE } else { 0 })
                    }
                    Val::Zero(s) => (soft::inf(F80, true).ext(), soft::zero(F80, s).ext(), soft::ZE),
                    Val::Inf(s) => (soft::inf(F80, false).ext(), soft::inf(F80, s).ext(), 0),
                    Val::Fin { s, m, e, den } => {
                        let lz = m.leading_zeros();
                        let true_exp = e + 63 - lz as i32;
                        let near = Env { rc: soft::RN, daz: false, ftz: false, scale: 0, traps: 0 };
                        let (ex, _) = soft::from_int(F80, 64, i64::from(true_exp), near);
                        let sig = X80 { sig: m << lz, se: (u16::from(s) << 15) | 0x3FFF };
                        (ex.ext(), sig, if den { soft::DE } else { 0 })
                    }
                };
                if self.x87_raise(fl) {
                    self.cpu.fpu.st_set(0, expo);
                    self.cpu.fpu.push_raw(sig);
                }
            }
            M::Fscale => {
                self.cpu.fpu.fsw &= !C1;
                let (Some(a), Some(b)) = (self.st_val(0), self.st_val(1)) else {
                    if self.x87_underflow() {
                        self.cpu.fpu.st_set(0, X80::INDEFINITE);
                    }
                    return Ok(());
                };
                let (r, fl) = self.x87_op(|env| {
                    let (r, fl) = scale(a, b, env);
                    (Packed::Ext(r), fl)
                });
                let r = r.ext();
                if self.x87_raise(fl) {
                    self.cpu.fpu.st_set(0, r);
                }
            }
            M::Fprem | M::Fprem1 => {
                self.cpu.fpu.fsw &= !(C0 | C1 | C2 | C3);
                let (Some(a), Some(b)) = (self.st_val(0), self.st_val(1)) else {
                    if self.x87_underflow() {
                        self.cpu.fpu.st_set(0, X80::INDEFINITE);
                    }
                    return Ok(());
                };
                let (mut r, q, partial, mut fl) = prem(a, b, m == M::Fprem1, 0);
                if fl & soft::TINY != 0 && self.cpu.fpu.fcw & soft::UE as u16 == 0 {
                    // Unmasked underflow: the result is delivered bias-adjusted by +24576.
                    r = prem(a, b, m == M::Fprem1, 24576).0;
                    fl |= soft::UE;
                }
                if self.x87_raise(fl) {
                    if let Some(r) = r {
                        self.cpu.fpu.st_set(0, r);
                    }
                    let f = &mut self.cpu.fpu;
                    if partial {
                        f.fsw |= C2;
                    } else if fl & soft::IE == 0 {
                        if q & 4 != 0 {
                            f.fsw |= C0;
                        }
                        if q & 2 != 0 {
                            f.fsw |= C3;
                        }
                        if q & 1 != 0 {
                            f.fsw |= C1;
                        }
                    }
                }
            }
            M::F2xm1 | M::Fsin | M::Fcos | M::Fptan | M::Fsincos => {
                self.cpu.fpu.fsw &= !(C1 | C2);
                let pushes = matches!(m, M::Fptan | M::Fsincos);
                let Some(a) = self.st_val(0) else {
                    if self.x87_underflow() {
                        self.cpu.fpu.st_set(0, X80::INDEFINITE);
                        if pushes {
                            self.cpu.fpu.push_raw(X80::INDEFINITE);
                        }
                    }
                    return Ok(());
                };
                if pushes && !self.cpu.fpu.st_empty(7) {
                    if self.x87_overflow() {
                        self.cpu.fpu.st_set(0, X80::INDEFINITE);
                        self.cpu.fpu.push_raw(X80::INDEFINITE);
                    }
                    return Ok(());
                }
                let de = if soft::is_denormal(a) { soft::DE } else { 0 };
                let one = X80 { sig: 1 << 63, se: 0x3FFF };
                // (first result, second result pushed, flags)
                let (r1, r2, fl): (X80, Option<X80>, u32) = match a {
                    Val::Unsupported | Val::Inf(_) if m != M::F2xm1 => {
                        (X80::INDEFINITE, pushes.then_some(X80::INDEFINITE), soft::IE)
                    }
                    Val::Unsupported => (X80::INDEFINITE, None, soft::IE),
                    Val::Nan(sg, f) => {
                        let q = soft::nan(F80, sg, f | 1 << 63).ext();
                        (q, pushes.then_some(q), if f & (1 << 63) == 0 { soft::IE } else { 0 })
                    }
                    Val::Inf(sg) => {
                        // F2XM1: 2^+inf - 1 = +inf, 2^-inf - 1 = -1.
                        (if sg { X80 { se: 0xBFFF, ..one } } else { soft::inf(F80, false).ext() }, None, 0)
                    }
                    Val::Fin { m: mm, e, .. } if m != M::F2xm1 && e + 63 - mm.leading_zeros() as i32 >= 63 => {
                        // |x| >= 2^63: out of range, C2 = 1 and ST0 unchanged.
                        self.cpu.fpu.fsw |= C2;
                        return Ok(());
                    }
                    _ => {
                        let (res, fl) = self.x87_op(|env| match m {
                            M::F2xm1 => super::trans::f2xm1(a, env),
                            M::Fsin => super::trans::fsincos(a, env).0,
                            M::Fcos => super::trans::fsincos(a, env).1,
                            M::Fptan => super::trans::ftan(a, env),
                            _ => super::trans::fsincos(a, env).0,
                        });
                        match m {
                            M::Fptan => (res.ext(), Some(one), fl | de),
                            M::Fsincos => {
                                let (c, fc) = self.x87_op(|env| super::trans::fsincos(a, env).1);
                                // ST1 = sin, ST0 = cos.
                                (res.ext(), Some(c.ext()), fl | fc | de)
                            }
                            _ => (res.ext(), None, fl | de),
                        }
                    }
                };
                if self.x87_raise(fl) {
                    self.cpu.fpu.st_set(0, r1);
                    if let Some(r2) = r2 {
                        self.cpu.fpu.push_raw(r2);
                    }
                }
            }
            M::Fyl2x | M::Fyl2xp1 | M::Fpatan => {
                self.cpu.fpu.fsw &= !C1;
                let (Some(x), Some(y)) = (self.st_val(0), self.st_val(1)) else {
                    if self.x87_underflow() {
                        self.cpu.fpu.st_set(1, X80::INDEFINITE);
                        self.cpu.fpu.pop();
                    }
                    return Ok(());
                };
                let (r, fl) = two_operand_trans(m, x, y, self);
                if self.x87_raise(fl) {
                    self.cpu.fpu.st_set(1, r);
                    self.cpu.fpu.pop();
                }
            }
            _ => {
                log::debug!("unimplemented x87 instruction {:?}: #UD", i.code());
                return Err(Exception::InvalidOpcode);
            }
        }
        Ok(())
    }
}

fn int_val(v: i64) -> Val {
    if v == 0 {
        Val::Zero(false)
    } else {
        Val::Fin { s: v < 0, m: v.unsigned_abs(), e: 0, den: false }
    }
}

fn is_neg_zero(v: Val) -> bool {
    matches!(v, Val::Zero(true) | Val::Fin { s: true, .. })
}

/// Whether rounding `v` to the integer `r` increased its magnitude.
fn round_up_int(v: Val, r: i64) -> bool {
    match v {
        Val::Fin { m, e, .. } if e < 0 => {
            let trunc = if -e >= 64 { 0 } else { m >> (-e) };
            u128::from(r.unsigned_abs()) > u128::from(trunc)
        }
        _ => false,
    }
}

/// The exception flags of a compare: IE for a NaN (FCOM) or an SNaN (FUCOM), IE for an
/// unsupported encoding, DE for a denormal.
fn cmp_flags(a: Val, b: Val, quiet: bool) -> u32 {
    if matches!(a, Val::Unsupported) || matches!(b, Val::Unsupported) {
        return soft::IE;
    }
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

/// FRNDINT: round to an integral value in the current rounding mode.
fn round_int(a: Val, rc: u8) -> (X80, u32) {
    let near = Env { rc: soft::RN, daz: false, ftz: false, scale: 0, traps: 0 };
    match a {
        Val::Unsupported => (X80::INDEFINITE, soft::IE),
        Val::Nan(s, f) => (soft::nan(F80, s, f | 1 << 63).ext(), if f & (1 << 63) == 0 { soft::IE } else { 0 }),
        Val::Zero(s) => (soft::zero(F80, s).ext(), 0),
        Val::Inf(s) => (soft::inf(F80, s).ext(), 0),
        Val::Fin { s, m, e, den } => {
            let de = if den { soft::DE } else { 0 };
            if e >= 0 {
                return (soft::round_pack(F80, 64, s, u128::from(m), e, near).0.ext(), de);
            }
            let (r, fl) = soft::to_int_big(s, m, e, rc);
            if r == 0 {
                return (soft::zero(F80, s).ext(), fl | de);
            }
            (soft::round_pack(F80, 64, s, r, 0, near).0.ext(), fl | de)
        }
    }
}

/// FSCALE: a × 2^trunc(b).
fn scale(a: Val, b: Val, env: Env) -> (X80, u32) {
    use Val::*;
    if matches!(a, Unsupported) || matches!(b, Unsupported) {
        return (X80::INDEFINITE, soft::IE);
    }
    if soft::is_nan(a) || soft::is_nan(b) {
        let (s, f, inv) = soft::propagate(a, b, true);
        return (soft::nan(F80, s, f).ext(), if inv { soft::IE } else { 0 });
    }
    let de = if soft::is_denormal(a) || soft::is_denormal(b) { soft::DE } else { 0 };
    match (a, b) {
        (Zero(_), Inf(false)) | (Inf(_), Inf(true)) => (X80::INDEFINITE, soft::IE),
        (Zero(s), _) => (soft::zero(F80, s).ext(), de),
        (Inf(s), _) => (soft::inf(F80, s).ext(), de),
        (Fin { s, .. }, Inf(false)) => (soft::inf(F80, s).ext(), de),
        (Fin { s, .. }, Inf(true)) => (soft::zero(F80, s).ext(), de),
        (Fin { s, m, e, .. }, Zero(_)) => {
            // Scaling by ±0 returns the operand: no underflow for a denormal (a non-zero scale
            // below 1 in magnitude goes through the computation and does underflow).
            let (p, fl) = soft::round_pack(F80, 64, s, u128::from(m), e, Env { scale: 0, ..env });
            (p.ext(), (fl & !(soft::UE | soft::TINY)) | de)
        }
        (Fin { s, m, e, .. }, Fin { s: sb, m: mb, e: eb, .. }) => {
            // trunc(b), clamped: anything beyond ±2^20 over- or underflows the same way.
            let n: i64 = if eb >= 0 {
                1 << 20
            } else if -eb >= 64 {
                0
            } else {
                ((mb >> (-eb)) as i64).min(1 << 20)
            };
            let n = if sb { -n } else { n };

            let (p, fl) = soft::round_pack(F80, 64, s, u128::from(m), e + n as i32, env);
            (p.ext(), fl | de)
        }
        _ => (X80::INDEFINITE, soft::IE),
    }
}

/// FPREM (truncating quotient) and FPREM1 (quotient rounded to nearest): (result, the low
/// three quotient bits, reduction incomplete, flags).
fn prem(a: Val, b: Val, ieee: bool, adj: i32) -> (Option<X80>, u64, bool, u32) {
    use Val::*;
    if matches!(a, Unsupported) || matches!(b, Unsupported) {
        return (Some(X80::INDEFINITE), 0, false, soft::IE);
    }
    if soft::is_nan(a) || soft::is_nan(b) {
        let (s, f, inv) = soft::propagate(a, b, true);
        return (Some(soft::nan(F80, s, f).ext()), 0, false, if inv { soft::IE } else { 0 });
    }
    let de = if soft::is_denormal(a) || soft::is_denormal(b) { soft::DE } else { 0 };
    let near = Env { rc: soft::RN, daz: false, ftz: false, scale: 0, traps: 0 };
    match (a, b) {
        (Inf(_), _) | (_, Zero(_)) => (Some(X80::INDEFINITE), 0, false, soft::IE),
        (Zero(s), _) => (Some(soft::zero(F80, s).ext()), 0, false, de),
        (Fin { s, m, e, .. }, Inf(_)) => {
            (Some(soft::round_pack(F80, 64, s, u128::from(m), e, near).0.ext()), 0, false, de)
        }
        (Fin { s, m: ma, e: ea, .. }, Fin { m: mb, e: eb, .. }) => {
            // Normalize both significands to bit 63.
            let (la, lb) = (ma.leading_zeros(), mb.leading_zeros());
            let (na, ea) = (ma << la, ea - la as i32);
            let (nb, eb) = (mb << lb, eb - lb as i32);
            let d = ea - eb;
            if d >= 64 {
                // Partial remainder: reduce the exponent difference by 32..63.
                let n = 32 + ((d - 32) % 32) as u32;
                let big = u128::from(na) << (n.min(63));
                let r = big % u128::from(nb);
                let e = ea - n as i32;
                if r == 0 {
                    return (Some(soft::zero(F80, s).ext()), 0, true, de);
                }
                let (p, _) = soft::round_pack(F80, 64, s, r, e, near);
                return (Some(p.ext()), 0, true, de);
            }
            if d < -1 || (d == -1 && !ieee) {
                // |a| < |b| (or < |b|/2): the result is a itself.
                let (p, fl) = soft::round_pack(F80, 64, s, u128::from(ma), ea + la as i32, Env { scale: adj, ..near });
                return (Some(p.ext()), 0, false, de | (fl & soft::TINY));
            }
            // Common exponent min(ea, eb).
            let (big_a, big_b, e) = if d >= 0 {
                (u128::from(na) << d, u128::from(nb), eb)
            } else {
                (u128::from(na), u128::from(nb) << 1, ea)
            };
            let mut q = big_a / big_b;
            let mut r = big_a % big_b;
            let mut sign = s;
            if ieee && (2 * r > big_b || (2 * r == big_b && q & 1 == 1)) {
                q += 1;
                r = big_b - r;
                sign = !s;
            }
            if r == 0 {
                return (Some(soft::zero(F80, s).ext()), q as u64 & 7, false, de);
            }
            let (p, fl) = soft::round_pack(F80, 64, sign, r, e, Env { scale: adj, ..near });
            (Some(p.ext()), q as u64 & 7, false, de | (fl & soft::TINY))
        }
        _ => (Some(X80::INDEFINITE), 0, false, soft::IE),
    }
}

/// FYL2X (y × log2 x), FYL2XP1 (y × log2(1 + x)) and FPATAN (atan2(y, x)) with their
/// special cases; x = ST0, y = ST1.
fn two_operand_trans(m: Mnemonic, x: Val, y: Val, cx: &Cx<'_>) -> (X80, u32) {
    use Val::*;
    if matches!(x, Unsupported) || matches!(y, Unsupported) {
        return (X80::INDEFINITE, soft::IE);
    }
    if soft::is_nan(x) || soft::is_nan(y) {
        let (s, f, inv) = soft::propagate(y, x, true);
        return (soft::nan(F80, s, f).ext(), if inv { soft::IE } else { 0 });
    }
    let de = if soft::is_denormal(x) || soft::is_denormal(y) { soft::DE } else { 0 };
    let sign = |v: Val| matches!(v, Zero(true) | Inf(true) | Fin { s: true, .. });
    let inf = |s: bool| (soft::inf(F80, s).ext(), de);
    let zero = |s: bool| (soft::zero(F80, s).ext(), de);
    let invalid = (X80::INDEFINITE, soft::IE);
    if m == Mnemonic::Fpatan {
        let (p, fl) = cx.x87_op(|env| super::trans::fpatan(y, x, env));
        return (p.ext(), fl | de);
    }
    // The logarithm's class: (is zero, is infinite, sign).
    let lg = if m == Mnemonic::Fyl2x {
        match x {
            Fin { s: true, .. } | Inf(true) => return invalid,
            Zero(_) => (false, true, true),
            Inf(false) => (false, true, false),
            Fin { m: 0x8000_0000_0000_0000, e: -63, .. } => (true, false, false),
            Fin { m: mm, e, .. } => (false, false, e + 63 - (mm.leading_zeros() as i32) < 0),
            _ => return invalid,
        }
    } else {
        match x {
            Zero(s) => (true, false, s),
            // log2(1 - inf) is invalid; log2(1 + inf) = +inf.
            Inf(true) => return invalid,
            Inf(false) => (false, true, false),
            Fin { s, .. } => (false, false, s),
            _ => return invalid,
        }
    };
    let (lzero, linf, ls) = lg;
    let ys = sign(y);
    match y {
        Zero(_) if linf => invalid,
        Inf(_) if lzero => invalid,
        Inf(_) => inf(ys ^ ls),
        Zero(_) => zero(ys ^ ls),
        _ if linf => {
            // A finite y times log2(0) = -inf is a division by zero.
            if matches!(x, Zero(_)) {
                // Reported as a zero divide alone (no denormal flag for y).
                return (soft::inf(F80, ys ^ ls).ext(), soft::ZE);
            }
            (soft::inf(F80, ys ^ ls).ext(), de)
        }
        _ if lzero => zero(ys ^ ls),
        _ => {
            let (p, fl) = cx.x87_op(|env| {
                if m == Mnemonic::Fyl2x {
                    super::trans::fyl2x(x, y, env)
                } else {
                    super::trans::fyl2xp1(x, y, env)
                }
            });
            (p.ext(), fl | de)
        }
    }
}

fn bcd_indefinite() -> [u8; 10] {
    [0, 0, 0, 0, 0, 0, 0, 0xC0, 0xFF, 0xFF]
}

fn to_bcd(v: i64, neg: bool) -> [u8; 10] {
    let mut b = [0u8; 10];
    let mut x = v.unsigned_abs();
    for byte in b.iter_mut().take(9) {
        let lo = (x % 10) as u8;
        x /= 10;
        let hi = (x % 10) as u8;
        x /= 10;
        *byte = lo | (hi << 4);
    }
    if neg {
        b[9] = 0x80;
    }
    b
}
