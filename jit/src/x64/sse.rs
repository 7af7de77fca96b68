//! Inline SSE forms: the integer, bitwise, shuffle and move instructions on XMM registers that
//! glibc's string and memory functions use (PXOR, PCMPEQB, PMOVMSKB, MOVDQU, MOVD, MOVQ, ...).
//!
//! Each runs on host XMM0/XMM1 loaded from and stored to `CpuState::fpu.xmm` (every host XMM
//! register is caller-saved scratch). Arithmetic forms are the guest's instruction re-encoded for
//! the host on XMM0 (destination) and XMM1 (source); only forms whose result is fully defined by
//! the SDM and independent of MXCSR are taken (no floating point, no flags), so the host
//! computes exactly what the interpreter's software implementation does (the differential tests
//! prove the interpreter against the host for every such form). SSSE3/SSE4 forms only when the
//! host has them.
//!
//! Faults: the block is translated for a mode key that says SSE cannot fault for availability
//! (bit 11: CR0.EM = 0, CR0.TS = 0, CR4.OSFXSR = 1), so register forms cannot fault. A memory
//! operand goes through the inline TLB probe; a miss, a page crossing, or a misaligned operand
//! of a form that requires 16-byte alignment (the interpreter's #GP rule: 16-byte operands of
//! everything but MOVDQU/MOVUPS/MOVUPD/LDDQU) runs the whole instruction in the interpreter.

use super::{effective_address, offsets, regcache::RegCache, Ea, Emitter};
use dynasmrt::{dynasm, DynamicLabel, DynasmApi, DynasmLabelApi};
use iced_x86::{Code, EncodingKind, Instruction, Mnemonic, OpKind, Register};

/// Byte offset in `CpuState` of XMM register `n`.
fn xmm_off(n: u8) -> i32 {
    (offsets::XMM + 16 * usize::from(n)) as i32
}

/// XMM0-15 as 0-15.
fn xmm_index(r: Register) -> Option<u8> {
    let n = (r as usize).wrapping_sub(Register::XMM0 as usize);
    (n < 16).then_some(n as u8)
}

/// What an inline SSE instruction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SseOp {
    /// `x = host(code)(x, y)` (`imm`: the immediate of a three-operand form); `y` is an XMM
    /// register or a 16-byte memory operand.
    Host { code: Code, imm: Option<u8> },
    /// A shift of `x` by an immediate (`y` is `None`).
    HostShift { code: Code, imm: u8 },
    /// `x = y` (16 bytes, register or memory), or `x = ` the zero-extension of `bytes` (4 or 8)
    /// loaded from memory.
    Load { bytes: u8 },
    /// Memory `y` = the low `bytes` (4, 8 or 16) of `x`.
    Store { bytes: u8 },
    /// GPR `y` = the low 32 bits (zero-extended) or 64 bits of `x`.
    ToGpr { w64: bool },
    /// `x` = GPR `y` (32 bits or 64), zero-extended to 128.
    FromGpr { w64: bool },
    /// GPR `y` (32-bit write) = the sign mask of `x` (PMOVMSKB, MOVMSKPS, MOVMSKPD).
    Mask { code: Code },
}

/// The other operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SseArg {
    None,
    Xmm(u8),
    /// A memory operand (`user`: a CPL 3 access).
    Mem {
        ea: Ea,
        user: bool,
        align: bool,
    },
    /// A general-purpose register (its `CpuState` offset).
    Gpr(i32),
}

/// An inline SSE instruction: `op` on XMM register `x` and `y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sse {
    pub(super) op: SseOp,
    pub(super) x: u8,
    pub(super) y: SseArg,
}

impl Sse {
    /// The general-purpose register the emitter reads or writes in `CpuState`, if any.
    pub(super) fn gpr(self) -> Option<i32> {
        match self.y {
            SseArg::Gpr(g) => Some(g),
            _ => None,
        }
    }

    /// Whether it may fault (a memory operand).
    pub(super) fn may_fault(self) -> bool {
        matches!(self.y, SseArg::Mem { .. })
    }
}

/// The host's SSSE3, SSE4.1 and SSE4.2 (needed to run those forms natively).
fn host_has(m: Mnemonic) -> bool {
    use Mnemonic as M;
    static FEATS: std::sync::OnceLock<(bool, bool, bool)> = std::sync::OnceLock::new();
    let (ssse3, sse41, sse42) = *FEATS.get_or_init(|| {
        (
            std::arch::is_x86_feature_detected!("ssse3"),
            std::arch::is_x86_feature_detected!("sse4.1"),
            std::arch::is_x86_feature_detected!("sse4.2"),
        )
    });
    match m {
        M::Pshufb | M::Palignr | M::Pabsb | M::Pabsw | M::Pabsd => ssse3,
        M::Pcmpeqq
        | M::Pminsb
        | M::Pminsd
        | M::Pminuw
        | M::Pminud
        | M::Pmaxsb
        | M::Pmaxsd
        | M::Pmaxuw
        | M::Pmaxud
        | M::Pmulld
        | M::Packusdw => sse41,
        M::Pcmpgtq => sse42,
        _ => true,
    }
}

/// Integer, bitwise and shuffle forms `xmm, xmm/m128 (, imm8)` whose result the SDM defines
/// completely, without MXCSR.
fn is_host_op(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::Pxor
            | M::Por
            | M::Pand
            | M::Pandn
            | M::Xorps
            | M::Xorpd
            | M::Andps
            | M::Andpd
            | M::Orps
            | M::Orpd
            | M::Andnps
            | M::Andnpd
            | M::Pcmpeqb
            | M::Pcmpeqw
            | M::Pcmpeqd
            | M::Pcmpeqq
            | M::Pcmpgtb
            | M::Pcmpgtw
            | M::Pcmpgtd
            | M::Pcmpgtq
            | M::Paddb
            | M::Paddw
            | M::Paddd
            | M::Paddq
            | M::Psubb
            | M::Psubw
            | M::Psubd
            | M::Psubq
            | M::Paddsb
            | M::Paddsw
            | M::Paddusb
            | M::Paddusw
            | M::Psubsb
            | M::Psubsw
            | M::Psubusb
            | M::Psubusw
            | M::Pminub
            | M::Pmaxub
            | M::Pminsw
            | M::Pmaxsw
            | M::Pminsb
            | M::Pminsd
            | M::Pminuw
            | M::Pminud
            | M::Pmaxsb
            | M::Pmaxsd
            | M::Pmaxuw
            | M::Pmaxud
            | M::Pavgb
            | M::Pavgw
            | M::Pmullw
            | M::Pmulhw
            | M::Pmulhuw
            | M::Pmuludq
            | M::Pmulld
            | M::Pmaddwd
            | M::Psadbw
            | M::Punpcklbw
            | M::Punpcklwd
            | M::Punpckldq
            | M::Punpcklqdq
            | M::Punpckhbw
            | M::Punpckhwd
            | M::Punpckhdq
            | M::Punpckhqdq
            | M::Packsswb
            | M::Packssdw
            | M::Packuswb
            | M::Packusdw
            | M::Pshufb
            | M::Pshufd
            | M::Pshuflw
            | M::Pshufhw
            | M::Palignr
            | M::Shufps
            | M::Shufpd
            | M::Unpcklps
            | M::Unpckhps
            | M::Unpcklpd
            | M::Unpckhpd
            | M::Psrlw
            | M::Psrld
            | M::Psrlq
            | M::Psllw
            | M::Pslld
            | M::Psllq
            | M::Psraw
            | M::Psrad
            | M::Pabsb
            | M::Pabsw
            | M::Pabsd
    )
}

/// Whether (and how) `i` runs inline as an SSE form. Only for blocks whose mode key says SSE
/// cannot fault for availability, in flat 32- or 64-bit code.
pub(super) fn classify_sse(i: &Instruction, bitness: u32, user: bool) -> Option<Sse> {
    use Mnemonic as M;
    if i.has_lock_prefix() || i.encoding() != EncodingKind::Legacy || !super::ext::forms_enabled() {
        return None;
    }
    let n = i.op_count();
    let xmm = |k: u32| if k < n && i.op_kind(k) == OpKind::Register { xmm_index(i.op_register(k)) } else { None };
    let gpr = |k: u32| {
        if k < n && i.op_kind(k) == OpKind::Register {
            let r = i.op_register(k);
            (r.is_gpr32() || r.is_gpr64()).then(|| (offsets::GPR + 8 * r.full_register().number()) as i32)
        } else {
            None
        }
    };
    let mem = |k: u32, align: bool| -> Option<SseArg> {
        if k < n && i.op_kind(k) == OpKind::Memory {
            Some(SseArg::Mem { ea: effective_address(i, bitness)?, user, align })
        } else {
            None
        }
    };
    let m = i.mnemonic();
    let code = i.code();
    let sse = |op, x, y| encodable(op).then_some(Sse { op, x, y });
    match code {
        Code::Movdqa_xmm_xmmm128
        | Code::Movdqu_xmm_xmmm128
        | Code::Movaps_xmm_xmmm128
        | Code::Movups_xmm_xmmm128
        | Code::Movapd_xmm_xmmm128
        | Code::Movupd_xmm_xmmm128
        | Code::Lddqu_xmm_m128 => {
            let x = xmm(0)?;
            let align = !matches!(m, M::Movdqu | M::Movups | M::Movupd | M::Lddqu);
            let y = match xmm(1) {
                Some(s) => SseArg::Xmm(s),
                None => mem(1, align)?,
            };
            sse(SseOp::Load { bytes: 16 }, x, y)
        }
        Code::Movdqa_xmmm128_xmm
        | Code::Movdqu_xmmm128_xmm
        | Code::Movaps_xmmm128_xmm
        | Code::Movups_xmmm128_xmm
        | Code::Movapd_xmmm128_xmm
        | Code::Movupd_xmmm128_xmm
        | Code::Movntdq_m128_xmm
        | Code::Movntps_m128_xmm
        | Code::Movntpd_m128_xmm => {
            let s = xmm(1)?;
            if let Some(d) = xmm(0) {
                return sse(SseOp::Load { bytes: 16 }, d, SseArg::Xmm(s));
            }
            let align = !matches!(m, M::Movdqu | M::Movups | M::Movupd);
            sse(SseOp::Store { bytes: 16 }, s, mem(0, align)?)
        }
        // Loads that zero-extend from memory; between registers, the host's merge/zero rules.
        Code::Movq_xmm_xmmm64 | Code::Movsd_xmm_xmmm64 | Code::Movss_xmm_xmmm32 => {
            let x = xmm(0)?;
            match xmm(1) {
                Some(s) => sse(SseOp::Host { code, imm: None }, x, SseArg::Xmm(s)),
                None => {
                    let bytes = if code == Code::Movss_xmm_xmmm32 { 4 } else { 8 };
                    sse(SseOp::Load { bytes }, x, mem(1, false)?)
                }
            }
        }
        Code::Movq_xmmm64_xmm | Code::Movsd_xmmm64_xmm | Code::Movss_xmmm32_xmm => {
            let s = xmm(1)?;
            match xmm(0) {
                Some(d) => sse(SseOp::Host { code, imm: None }, d, SseArg::Xmm(s)),
                None => {
                    let bytes = if code == Code::Movss_xmmm32_xmm { 4 } else { 8 };
                    sse(SseOp::Store { bytes }, s, mem(0, false)?)
                }
            }
        }
        Code::Movd_xmm_rm32 | Code::Movq_xmm_rm64 => {
            let x = xmm(0)?;
            let w64 = code == Code::Movq_xmm_rm64;
            match gpr(1) {
                Some(g) => sse(SseOp::FromGpr { w64 }, x, SseArg::Gpr(g)),
                None => sse(SseOp::Load { bytes: if w64 { 8 } else { 4 } }, x, mem(1, false)?),
            }
        }
        Code::Movd_rm32_xmm | Code::Movq_rm64_xmm => {
            let x = xmm(1)?;
            let w64 = code == Code::Movq_rm64_xmm;
            match gpr(0) {
                Some(g) => sse(SseOp::ToGpr { w64 }, x, SseArg::Gpr(g)),
                None => sse(SseOp::Store { bytes: if w64 { 8 } else { 4 } }, x, mem(0, false)?),
            }
        }
        Code::Pmovmskb_r32_xmm | Code::Pmovmskb_r64_xmm => {
            sse(SseOp::Mask { code: Code::Pmovmskb_r32_xmm }, xmm(1)?, SseArg::Gpr(gpr(0)?))
        }
        Code::Movmskps_r32_xmm | Code::Movmskps_r64_xmm => {
            sse(SseOp::Mask { code: Code::Movmskps_r32_xmm }, xmm(1)?, SseArg::Gpr(gpr(0)?))
        }
        Code::Movmskpd_r32_xmm | Code::Movmskpd_r64_xmm => {
            sse(SseOp::Mask { code: Code::Movmskpd_r32_xmm }, xmm(1)?, SseArg::Gpr(gpr(0)?))
        }
        _ if is_host_op(m) && host_has(m) => {
            let x = xmm(0)?;
            if n == 2 && i.op_kind(1) == OpKind::Immediate8 {
                return sse(SseOp::HostShift { code, imm: i.immediate8() }, x, SseArg::None);
            }
            let imm = match n {
                2 => None,
                3 if i.op_kind(2) == OpKind::Immediate8 => Some(i.immediate8()),
                _ => return None,
            };
            let y = match xmm(1) {
                Some(s) => SseArg::Xmm(s),
                // Every 16-byte operand of these must be aligned (#GP otherwise).
                None if i.memory_size().size() == 16 => mem(1, true)?,
                None => return None,
            };
            sse(SseOp::Host { code, imm }, x, y)
        }
        _ => None,
    }
}

/// `code` re-encoded for the host with the given operands, if iced can encode that.
fn try_encode(code: Code, ops: &[Register], imm: Option<u8>) -> Option<Vec<u8>> {
    let instr = match (ops, imm) {
        ([a], Some(v)) => Instruction::with2(code, *a, u32::from(v)),
        ([a, b], None) => Instruction::with2(code, *a, *b),
        ([a, b], Some(v)) => Instruction::with3(code, *a, *b, u32::from(v)),
        _ => return None,
    }
    .ok()?;
    let mut enc = iced_x86::Encoder::new(64);
    enc.encode(&instr, 0).ok()?;
    Some(enc.take_buffer())
}

/// [`try_encode`] for a form [`classify_sse`] accepted (it checked that the encoding exists).
fn encode(code: Code, ops: &[Register], imm: Option<u8>) -> Vec<u8> {
    try_encode(code, ops, imm).expect("classify_sse checked the encoding")
}

/// Whether the host form of `op` can be encoded (classification refuses the instruction if not:
/// a guest instruction must never make translation fail).
fn encodable(op: SseOp) -> bool {
    match op {
        SseOp::Host { code, imm } => try_encode(code, &[Register::XMM0, Register::XMM1], imm).is_some(),
        SseOp::HostShift { code, imm } => try_encode(code, &[Register::XMM0], Some(imm)).is_some(),
        SseOp::Mask { code } => try_encode(code, &[Register::EAX, Register::XMM0], None).is_some(),
        _ => true,
    }
}

/// The fast path's state at a memory operand's probe (for its slow path).
struct MemSite {
    slow: DynamicLabel,
    cont: DynamicLabel,
    synced0: u64,
    pending0: i32,
    pre: RegCache,
}

impl Emitter<'_> {
    fn push_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.ops.push(b);
        }
    }

    /// The start of a memory access: flags stashed (the probe clobbers the host's), the address
    /// into RAX, the alignment check, the TLB probe; RAX = host address after it.
    fn sse_mem_begin(&mut self, y: SseArg, write: bool, size: i32, dead: bool) -> MemSite {
        let SseArg::Mem { ea, user, align } = y else { unreachable!("memory operand expected") };
        self.stash_or_sync_flags(dead, false);
        let (synced0, pending0) = (self.synced, self.pending);
        let slow = self.ops.new_dynamic_label();
        let cont = self.ops.new_dynamic_label();
        self.effective_address(ea);
        if align {
            // The linear address (flat segments, or the FS/GS base added).
            dynasm!(self.ops ; .arch x64 ; test al, 15 ; jnz =>slow);
        }
        self.probe(write, size, user, slow);
        MemSite { slow, cont, synced0, pending0, pre: self.regs }
    }

    /// The end of a memory access: the slow path (the interpreter runs the instruction) is put
    /// off to the block's end; the fast path goes on here.
    fn sse_mem_end(&mut self, m: MemSite, at: u64, next: u64) {
        self.slow_path(m.slow, m.cont, at, next, m.synced0, m.pending0, false, m.pre);
        dynasm!(self.ops ; .arch x64 ; =>m.cont);
        self.synced = m.synced0;
        self.pending = m.pending0;
        self.after_stash();
    }

    /// Emits an inline SSE instruction (`dead`: the flags are dead after it).
    pub(super) fn inline_sse(&mut self, s: Sse, at: u64, next: u64, dead: bool) {
        let x = xmm_off(s.x);
        match s.op {
            SseOp::Host { code, imm } => {
                let site = match s.y {
                    SseArg::Xmm(r) => {
                        let y = xmm_off(r);
                        dynasm!(self.ops ; .arch x64 ; movdqu xmm1, [r12 + y]);
                        None
                    }
                    y => {
                        let site = self.sse_mem_begin(y, false, 16, dead);
                        dynasm!(self.ops ; .arch x64 ; movdqu xmm1, [rax]);
                        Some(site)
                    }
                };
                dynasm!(self.ops ; .arch x64 ; movdqu xmm0, [r12 + x]);
                let bytes = encode(code, &[Register::XMM0, Register::XMM1], imm);
                self.push_bytes(&bytes);
                dynasm!(self.ops ; .arch x64 ; movdqu [r12 + x], xmm0);
                if let Some(site) = site {
                    self.sse_mem_end(site, at, next);
                }
            }
            SseOp::HostShift { code, imm } => {
                dynasm!(self.ops ; .arch x64 ; movdqu xmm0, [r12 + x]);
                let bytes = encode(code, &[Register::XMM0], Some(imm));
                self.push_bytes(&bytes);
                dynasm!(self.ops ; .arch x64 ; movdqu [r12 + x], xmm0);
            }
            SseOp::Load { bytes } => match s.y {
                SseArg::Xmm(r) => {
                    let y = xmm_off(r);
                    dynasm!(self.ops ; .arch x64 ; movdqu xmm0, [r12 + y] ; movdqu [r12 + x], xmm0);
                }
                y => {
                    let site = self.sse_mem_begin(y, false, i32::from(bytes), dead);
                    match bytes {
                        4 => dynasm!(self.ops ; .arch x64 ; movd xmm0, DWORD [rax]),
                        8 => dynasm!(self.ops ; .arch x64 ; movq xmm0, QWORD [rax]),
                        _ => dynasm!(self.ops ; .arch x64 ; movdqu xmm0, [rax]),
                    }
                    dynasm!(self.ops ; .arch x64 ; movdqu [r12 + x], xmm0);
                    self.sse_mem_end(site, at, next);
                }
            },
            SseOp::Store { bytes } => {
                let site = self.sse_mem_begin(s.y, true, i32::from(bytes), dead);
                match bytes {
                    4 => dynasm!(self.ops ; .arch x64 ; mov ecx, DWORD [r12 + x] ; mov DWORD [rax], ecx),
                    8 => dynasm!(self.ops ; .arch x64 ; mov rcx, QWORD [r12 + x] ; mov QWORD [rax], rcx),
                    _ => dynasm!(self.ops ; .arch x64 ; movdqu xmm0, [r12 + x] ; movdqu [rax], xmm0),
                }
                self.sse_mem_end(site, at, next);
            }
            SseOp::ToGpr { w64 } => {
                let g = s.gpr().expect("a GPR operand");
                if w64 {
                    dynasm!(self.ops ; .arch x64 ; mov rax, QWORD [r12 + x] ; mov QWORD [r12 + g], rax);
                } else {
                    dynasm!(self.ops ; .arch x64 ; mov eax, DWORD [r12 + x] ; mov QWORD [r12 + g], rax);
                }
            }
            SseOp::FromGpr { w64 } => {
                let g = s.gpr().expect("a GPR operand");
                if w64 {
                    dynasm!(self.ops ; .arch x64 ; mov rax, QWORD [r12 + g]);
                } else {
                    dynasm!(self.ops ; .arch x64 ; mov eax, DWORD [r12 + g]);
                }
                dynasm!(self.ops ; .arch x64 ; mov QWORD [r12 + x], rax ; mov QWORD [r12 + x + 8], 0);
            }
            SseOp::Mask { code } => {
                let g = s.gpr().expect("a GPR operand");
                dynasm!(self.ops ; .arch x64 ; movdqu xmm0, [r12 + x]);
                let bytes = encode(code, &[Register::EAX, Register::XMM0], None);
                self.push_bytes(&bytes);
                // A 32-bit result, zero-extended (the host's write of EAX clears the top).
                dynasm!(self.ops ; .arch x64 ; mov QWORD [r12 + g], rax);
            }
        }
    }
}
