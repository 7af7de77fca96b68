//! The host-CPU differential harness of the x87, MMX, SSE..SSE4.2 and XSAVE instructions,
//! shared by cpu/tests/differential_fpu.rs (the interpreter) and jit/tests/differential_jit.rs
//! (the translator, whose helper path runs these instructions, with sliced budgets). How it
//! works is described in cpu/tests/differential_fpu.rs. The engine runs each case as a guest:
//! the instruction and a `jmp $` in a code slot, a fault delivered through a real IDT to a
//! per-vector handler, the vector read from where the CPU landed.
#![allow(dead_code)]

use cpu::state::cr;
use cpu::state::rflags::{AF, CF, DF, OF, PF, SF, ZF};
use cpu::{CpuState, DescriptorTable, ExecutionEngine, RamBus, RunExit};
use iced_x86::code_asm::*;
use iced_x86::{
    Code, CpuidFeature, Encoder, EncodingKind, Instruction, MemoryOperand, Mnemonic, OpCodeOperandKind as K, OpKind,
    Register,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Fixed host/guest addresses: the thunk, the context block, the scratch memory.
const BASE: u64 = 0x0300_0000;
const LEN: usize = 0x4000;
const THUNK: u64 = BASE;
const EPI: u64 = BASE + 0x200;
const SLOT: u64 = BASE + 0x400;
const CTX: u64 = BASE + 0x1000;
const SCRATCH: u64 = BASE + 0x2000;
const SCRATCH_LEN: usize = 0x400;
const GUEST_RAM: u64 = 0x0400_0000;
// Context block layout.
const IN_FX: u64 = 0;
const OUT_FX: u64 = 0x200;
const IN_GPR: u64 = 0x400; // rax, rcx, rdx, rsi
const OUT_GPR: u64 = 0x440;
const IN_FL: u64 = 0x480;
const OUT_FL: u64 = 0x488;
const HOST_RSP: u64 = 0x490;
const SIG: u64 = 0x498;

static ARMED: AtomicU64 = AtomicU64::new(0);

/// Model-specific differences that are masked, with the reason: (byte range of the FXSAVE
/// image, why).
pub(super) fn model_specific() -> &'static [(std::ops::Range<usize>, &'static str)] {
    &[
        (6..8, "FOP: this host updates the last opcode only on unmasked exceptions (FOP compatibility off)"),
        (8..24, "FIP/FDP (in the FXSAVE image and in FSTENV/FSAVE/FXSAVE memory images, see stored_pointers): the interpreter records the instruction and data pointers; the host records FDP only on unmasked exceptions (CPUID.7:EBX.FDP_EXCPTN_ONLY) and both pointers as linear addresses"),
        (416..512, "reserved/available bytes of the image"),
        (0..0, "FSTPNCE (D9 D8+i, undocumented) from an empty ST(0): the stored value and the destination's tag differ between runs on this host (an FFREE'd source stays empty, an FXRSTOR'd empty one does not)"),
        (0..0, "x87 transcendental results (F2XM1 FYL2X FYL2XP1 FSIN FCOS FSINCOS FPTAN FPATAN): values compared within 1 ulp and C1 (the direction the host's internal approximation was rounded) not compared (trans_compare); the SDM promises 1 ulp, not a rounding"),
        (0..0, "RCPPS/RCPSS/RSQRTPS/RSQRTSS results: compared within the SDM's error bound (approx_equal), the hardware's table is model-specific"),
    ]
}

/// The x87/MMX/SSE..SSE4.2 instructions the interpreter does not implement yet (they raise
/// #UD); listed in the test output. Empty today.
pub(super) fn not_implemented() -> Vec<Mnemonic> {
    vec![]
}

extern "C" fn on_fault(sig: libc::c_int, _info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: for an SA_SIGINFO handler the kernel passes a valid, exclusive ucontext_t.
    let uc = unsafe { &mut *(uc as *mut libc::ucontext_t) };
    let rip = uc.uc_mcontext.gregs[libc::REG_RIP as usize] as u64;
    if ARMED.load(Ordering::SeqCst) != 0 && (SLOT..SLOT + 0x40).contains(&rip) {
        // SAFETY: the context block is mapped for the whole test and not otherwise
        // accessed while the thunk runs.
        unsafe { *((CTX + SIG) as *mut u64) = sig as u64 };
        uc.uc_mcontext.gregs[libc::REG_RIP as usize] = EPI as i64;
        return;
    }
    // SAFETY: resetting a disposition is async-signal-safe; the fault recurs and kills.
    unsafe { libc::signal(sig, libc::SIG_DFL) };
}

fn install_handler() {
    for sig in [libc::SIGFPE, libc::SIGILL, libc::SIGSEGV, libc::SIGBUS] {
        // SAFETY: a zeroed sigaction is valid to start from; the handler has the SA_SIGINFO
        // signature and only touches the fixed test mapping.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_fault as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
        }
    }
}

fn map_fixed() -> bool {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; the result is checked.
    let p = unsafe {
        libc::mmap(
            BASE as *mut libc::c_void,
            LEN,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    p as u64 == BASE
}

fn thunk_code() -> Vec<u8> {
    let mut a = CodeAssembler::new(64).expect("64-bit assembler");
    let ctx = CTX as i64;
    (|| -> Result<(), IcedError> {
        a.push(rbx)?;
        a.push(rbp)?;
        a.push(r12)?;
        a.push(r13)?;
        a.push(r14)?;
        a.push(r15)?;
        a.mov(rbx, ctx)?;
        a.mov(qword_ptr(rbx + HOST_RSP as i32), rsp)?;
        a.fxrstor64(ptr(rbx + IN_FX as i32))?;
        a.push(qword_ptr(rbx + IN_FL as i32))?;
        a.popfq()?;
        a.mov(rax, qword_ptr(rbx + IN_GPR as i32))?;
        a.mov(rcx, qword_ptr(rbx + IN_GPR as i32 + 8))?;
        a.mov(rdx, qword_ptr(rbx + IN_GPR as i32 + 16))?;
        a.mov(rsi, qword_ptr(rbx + IN_GPR as i32 + 24))?;
        a.mov(rdi, SLOT as i64)?;
        a.push(rdi)?;
        a.mov(rdi, qword_ptr(rbx + IN_GPR as i32 + 32))?;
        a.ret()?;
        Ok(())
    })()
    .expect("prologue");
    let mut code = a.assemble(THUNK).expect("prologue assembles");
    code.resize((EPI - THUNK) as usize, 0xCC);
    let mut e = CodeAssembler::new(64).expect("64-bit assembler");
    (|| -> Result<(), IcedError> {
        e.mov(rbx, ctx)?;
        e.mov(rsp, qword_ptr(rbx + HOST_RSP as i32))?;
        e.pushfq()?;
        e.pop(qword_ptr(rbx + OUT_FL as i32))?;
        e.mov(qword_ptr(rbx + OUT_GPR as i32), rax)?;
        e.mov(qword_ptr(rbx + OUT_GPR as i32 + 8), rcx)?;
        e.mov(qword_ptr(rbx + OUT_GPR as i32 + 16), rdx)?;
        e.fxsave64(ptr(rbx + OUT_FX as i32))?;
        // A clean x87/SSE state for Rust code.
        e.fninit()?;
        e.mov(dword_ptr(rbx + SIG as i32 + 8), 0x1F80u32)?;
        e.ldmxcsr(dword_ptr(rbx + SIG as i32 + 8))?;
        e.cld()?;
        e.pop(r15)?;
        e.pop(r14)?;
        e.pop(r13)?;
        e.pop(r12)?;
        e.pop(rbp)?;
        e.pop(rbx)?;
        e.ret()?;
        Ok(())
    })()
    .expect("epilogue");
    code.extend(e.assemble(EPI).expect("epilogue assembles"));
    code
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
    fn f32(&mut self) -> u32 {
        let s = (self.next() as u32) & 0x8000_0000;
        let specials = [
            0,
            0x7F80_0000,
            0x7FC0_0000,
            0x7FA0_0000,
            0x7F80_0001,
            0x7FFF_FFFF,
            0x0000_0001,
            0x007F_FFFF,
            0x0040_0000,
            0x0080_0000,
            0x7F7F_FFFF,
            0x3F80_0000,
            0x4F00_0000,
            0x4F80_0000,
            0x5F00_0000,
            0x3F00_0000,
            0x3FC0_0000,
            0x4B00_0000,
            0x0080_0001,
            0x3400_0000,
        ];
        match self.below(8) {
            0..=2 => s | self.pick(&specials),
            3 => s | (self.next() as u32 & 0x007F_FFFF),
            4 => s | ((self.below(40) as u32 + 110) << 23) | (self.next() as u32 & 0x7F_FFFF),
            5 => (self.below(2000) as i32 - 1000) as f32 as u32 ^ s,
            _ => self.next() as u32,
        }
    }
    fn f64(&mut self) -> u64 {
        let s = self.next() & (1 << 63);
        let specials = [
            0u64,
            0x7FF0_0000_0000_0000,
            0x7FF8_0000_0000_0000,
            0x7FF4_0000_0000_0000,
            0x7FF0_0000_0000_0001,
            0x0000_0000_0000_0001,
            0x000F_FFFF_FFFF_FFFF,
            0x0010_0000_0000_0000,
            0x7FEF_FFFF_FFFF_FFFF,
            0x3FF0_0000_0000_0000,
            0x41E0_0000_0000_0000,
            0x43E0_0000_0000_0000,
            0x3FE0_0000_0000_0000,
            0x41DF_FFFF_FFC0_0000,
            0x41E0_0000_0000_0001,
            0x3690_0000_0000_0000,
            0x47EF_FFFF_E000_0000,
            0x47EF_FFFF_F000_0000,
            0x3810_0000_0000_0000,
            0x380F_FFFF_F000_0000,
        ];
        match self.below(8) {
            0..=2 => s | self.pick(&specials),
            3 => s | (self.next() & 0x000F_FFFF_FFFF_FFFF),
            4 => s | ((self.below(80) + 980) << 52) | (self.next() & 0xF_FFFF_FFFF_FFFF),
            5 => ((self.below(4000) as i64 - 2000) as f64 / 8.0).to_bits() ^ s,
            6 => s | ((self.below(64) + 0x3FF - 32 + 0x380) << 52) | (self.next() & 0xF_FFFF_FFFF_FFFF),
            _ => self.next(),
        }
    }
    fn f80(&mut self) -> [u8; 10] {
        let s: u16 = if self.chance(50) { 0x8000 } else { 0 };
        let (sig, e): (u64, u16) = match self.below(12) {
            0 => (0, 0),
            1 => (1 << 63, 0x7FFF),
            2 => (0xC000_0000_0000_0000, 0x7FFF),
            3 => (0xA000_0000_0000_0000 | (self.next() & 0xFFFF), 0x7FFF),
            4 => (self.next() >> 1, 0),                             // denormal
            5 => ((1 << 63) | self.next(), 0),                      // pseudo-denormal
            6 => (self.next() >> 1, 1 + self.below(0x7FFE) as u16), // unnormal
            7 => ((1 << 63) | self.next(), 0x3FFF + self.below(64) as u16 - 16),
            8 => ((1 << 63) | (self.next() & !0xFFF), 0x3FFF + self.below(4) as u16),
            9 => ((1 << 63) | self.next(), self.pick(&[1u16, 0x7FFE, 0x3C01, 0x3C00, 0x3F81, 0x3F80, 0x43FE, 0x407E])),
            10 => {
                let v = (self.below(2000) as f64 - 1000.0) / 4.0;
                let b = v.to_bits();
                if v == 0.0 {
                    (0, 0)
                } else {
                    let e = ((b >> 52) & 0x7FF) as u16 + 0x3C00;
                    (((b & 0xF_FFFF_FFFF_FFFF) << 11) | (1 << 63), e)
                }
            }
            _ => ((1 << 63) | self.next(), self.next() as u16 & 0x7FFF),
        };
        let mut o = [0u8; 10];
        o[..8].copy_from_slice(&sig.to_le_bytes());
        o[8..].copy_from_slice(&(e | s).to_le_bytes());
        o
    }
    fn int(&mut self) -> u64 {
        match self.below(6) {
            0 => self.pick(&[
                0,
                1,
                u64::MAX,
                0x8000_0000,
                0x7FFF_FFFF,
                1 << 63,
                (1 << 63) - 1,
                0xFFFF_8000,
                0x8000,
                0x7FFF,
            ]),
            1 => self.below(200).wrapping_sub(100),
            2 => 999_999_999_999_999_999 - self.below(3),
            _ => self.next(),
        }
    }
}

/// The forms under test: legacy encoding, valid in 64-bit mode, x87/SSE/SSE2 (and FXSR), and
/// every operand of a kind the generator knows.
fn forms() -> Vec<Code> {
    let skip = [
        // Not deterministic in a user-mode test / outside this work.
        Mnemonic::Wait,
    ];
    let not_implemented = not_implemented();
    // XGETBV returns the guest's XCR0 (x87 | SSE) where the host's has more components;
    // XSETBV needs CPL 0; XSAVEOPT's init and modified optimizations are model-specific.
    let skip_xsave = [Mnemonic::Xgetbv, Mnemonic::Xsetbv, Mnemonic::Xsaveopt, Mnemonic::Xsaveopt64];
    let mut v = Vec::new();
    for code in Code::values() {
        let oc = code.op_code();
        if oc.encoding() != EncodingKind::Legacy || !oc.mode64() {
            continue;
        }
        let m = code.mnemonic();
        if skip.contains(&m) || not_implemented.contains(&m) || skip_xsave.contains(&m) {
            continue;
        }
        let feats = Instruction::with(code).cpuid_features();
        let fpu = feats.iter().any(|f| matches!(f, CpuidFeature::FPU | CpuidFeature::FPU387));
        let sse = feats.iter().any(|f| {
            matches!(
                f,
                CpuidFeature::SSE
                    | CpuidFeature::SSE2
                    | CpuidFeature::SSE3
                    | CpuidFeature::SSSE3
                    | CpuidFeature::SSE4_1
                    | CpuidFeature::SSE4_2
                    | CpuidFeature::MMX
                    | CpuidFeature::XSAVE
            )
        });
        if !(fpu || sse) || !cpu::cpuid::executes(feats) {
            continue;
        }
        if feats
            .iter()
            .any(|f| matches!(f, CpuidFeature::FPU287 | CpuidFeature::FPU287XL_ONLY | CpuidFeature::FPU387SL_ONLY))
        {
            continue;
        }
        if !oc.op_kinds().iter().all(|k| {
            matches!(
                k,
                K::xmm_reg
                    | K::xmm_rm
                    | K::xmm_or_mem
                    | K::mem
                    | K::r32_or_mem
                    | K::r64_or_mem
                    | K::r32_reg
                    | K::r64_reg
                    | K::r32_rm
                    | K::r64_rm
                    | K::imm8
                    | K::st0
                    | K::sti_opcode
                    | K::r8_or_mem
                    | K::r16_or_mem
                    | K::mm_reg
                    | K::mm_rm
                    | K::mm_or_mem
                    | K::seg_rDI
            )
        }) {
            continue;
        }
        v.push(code);
    }
    v
}

enum Opnd {
    R(Register),
    M(MemoryOperand),
    I(u32),
}

fn build(code: Code, ops: Vec<Opnd>) -> Option<Instruction> {
    use Opnd::*;
    let r = match (ops.first(), ops.get(1), ops.get(2)) {
        (None, ..) => Ok(Instruction::with(code)),
        (Some(R(a)), None, _) => Instruction::with1(code, *a),
        (Some(M(a)), None, _) => Instruction::with1(code, *a),
        (Some(R(a)), Some(R(b)), None) => Instruction::with2(code, *a, *b),
        (Some(R(a)), Some(M(b)), None) => Instruction::with2(code, *a, *b),
        (Some(M(a)), Some(R(b)), None) => Instruction::with2(code, *a, *b),
        (Some(R(a)), Some(I(b)), None) => Instruction::with2(code, *a, *b),
        (Some(R(a)), Some(R(b)), Some(I(c))) => Instruction::with3(code, *a, *b, *c),
        (Some(R(a)), Some(M(b)), Some(I(c))) => Instruction::with3(code, *a, *b, *c),
        _ => return None,
    };
    r.ok()
}

fn gen_instr(rng: &mut Rng, code: Code) -> Option<Instruction> {
    let oc = code.op_code();
    let mmr = |rng: &mut Rng| Register::try_from(Register::MM0 as usize + rng.below(8) as usize).ok();
    let xr = |rng: &mut Rng| Register::try_from(Register::XMM0 as usize + rng.below(16) as usize).ok();
    match code {
        Code::Maskmovq_rDI_mm_mm => {
            return Instruction::with_maskmovq(64, mmr(rng)?, mmr(rng)?, Register::None).ok();
        }
        Code::Maskmovdqu_rDI_xmm_xmm => {
            return Instruction::with_maskmovdqu(64, xr(rng)?, xr(rng)?, Register::None).ok();
        }
        _ => {}
    }
    let mut ops = Vec::new();
    let disp = if rng.chance(10) { rng.below(64) as i64 } else { (rng.below(4) * 16) as i64 };
    let mem = MemoryOperand::with_base_displ(Register::RSI, disp);
    let gprs32 = [Register::EAX, Register::ECX, Register::EDX];
    let gprs64 = [Register::RAX, Register::RCX, Register::RDX];
    for &k in oc.op_kinds() {
        let xmm = || Register::XMM0;
        let _ = xmm;
        let x = Register::try_from(Register::XMM0 as usize + rng.below(16) as usize).ok()?;
        ops.push(match k {
            K::xmm_reg | K::xmm_rm => Opnd::R(x),
            K::xmm_or_mem => {
                if rng.chance(50) {
                    Opnd::R(x)
                } else {
                    Opnd::M(mem)
                }
            }
            K::mem => Opnd::M(mem),
            K::r32_reg | K::r32_rm => Opnd::R(rng.pick(&gprs32)),
            K::r8_or_mem => {
                if rng.chance(50) {
                    Opnd::R(rng.pick(&[Register::AL, Register::CL, Register::DL]))
                } else {
                    Opnd::M(mem)
                }
            }
            K::r16_or_mem => {
                if rng.chance(50) {
                    Opnd::R(rng.pick(&[Register::AX, Register::CX, Register::DX]))
                } else {
                    Opnd::M(mem)
                }
            }
            K::r64_reg | K::r64_rm => Opnd::R(rng.pick(&gprs64)),
            K::r32_or_mem => {
                if rng.chance(50) {
                    Opnd::R(rng.pick(&gprs32))
                } else {
                    Opnd::M(mem)
                }
            }
            K::r64_or_mem => {
                if rng.chance(50) {
                    Opnd::R(rng.pick(&gprs64))
                } else {
                    Opnd::M(mem)
                }
            }
            K::imm8 => {
                let m = code.mnemonic();
                Opnd::I(if matches!(m, Mnemonic::Cmpps | Mnemonic::Cmpss | Mnemonic::Cmppd | Mnemonic::Cmpsd) {
                    rng.below(8) as u32
                } else {
                    rng.below(256) as u32
                })
            }
            K::mm_reg | K::mm_rm => Opnd::R(mmr(rng)?),
            K::mm_or_mem => {
                if rng.chance(50) {
                    Opnd::R(mmr(rng)?)
                } else {
                    Opnd::M(mem)
                }
            }
            K::st0 => Opnd::R(Register::ST0),
            K::sti_opcode => Opnd::R(Register::try_from(Register::ST0 as usize + rng.below(8) as usize).ok()?),
            _ => return None,
        });
    }
    build(code, ops)
}

/// One generated case.
struct Case {
    fx: [u8; 512],
    gpr: [u64; 5],
    flags: u64,
    scratch: Vec<u8>,
    instr: Instruction,
}

fn gen_case(rng: &mut Rng, code: Code) -> Option<Case> {
    let mut instr = gen_instr(rng, code)?;
    if matches!(code.mnemonic(), Mnemonic::Xsave | Mnemonic::Xsave64 | Mnemonic::Xrstor | Mnemonic::Xrstor64)
        && rng.chance(60)
    {
        // 64-byte aligned most of the time.
        instr.set_memory_displacement64(0);
        instr.set_memory_displ_size(0);
    }
    let mut fx = [0u8; 512];
    // x87 control: random RC, PC and exception masks.
    let mut fcw: u16 = 0x0040 | ((rng.below(4) as u16) << 10) | (rng.pick(&[0u16, 2, 3, 3]) << 8);
    fcw |= if rng.chance(75) { 0x3F } else { rng.below(64) as u16 };
    let mut fsw: u16 = (rng.below(8) as u16) << 11;
    if rng.chance(20) {
        fsw |= rng.below(64) as u16 & 0x3F;
    }
    fsw |= rng.below(16) as u16 & 0x4700 >> 8 << 8;
    if fsw & !fcw & 0x3F != 0 {
        fsw |= 0x8080;
    }
    let ftw: u8 = match rng.below(4) {
        0 => 0xFF,
        1 => 0,
        _ => rng.next() as u8,
    };
    fx[0..2].copy_from_slice(&fcw.to_le_bytes());
    fx[2..4].copy_from_slice(&fsw.to_le_bytes());
    fx[4] = ftw;
    let mut mx: u32 = ((rng.below(4) as u32) << 13) | if rng.chance(80) { 0x1F80 } else { (rng.below(64) as u32) << 7 };
    if rng.chance(30) {
        mx |= 1 << 6;
    }
    if rng.chance(30) {
        mx |= 1 << 15;
    }
    if rng.chance(20) {
        mx |= rng.below(64) as u32;
    }
    fx[24..28].copy_from_slice(&mx.to_le_bytes());
    fx[28..32].copy_from_slice(&0xFFFFu32.to_le_bytes());
    for k in 0..8 {
        let v = rng.f80();
        fx[32 + 16 * k..42 + 16 * k].copy_from_slice(&v);
    }
    for k in 0..16 {
        let o = 160 + 16 * k;
        for l in 0..2 {
            let v = match rng.below(3) {
                0 => u64::from(rng.f32()) | (u64::from(rng.f32()) << 32),
                1 => rng.f64(),
                _ => rng.int(),
            };
            fx[o + 8 * l..o + 8 * l + 8].copy_from_slice(&v.to_le_bytes());
        }
    }
    let mut scratch = vec![0u8; SCRATCH_LEN];
    for c in scratch.chunks_mut(16) {
        let v: [u8; 16] = match rng.below(4) {
            0 => {
                let mut b = [0u8; 16];
                for q in 0..4 {
                    b[4 * q..4 * q + 4].copy_from_slice(&rng.f32().to_le_bytes());
                }
                b
            }
            1 => {
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&rng.f64().to_le_bytes());
                b[8..].copy_from_slice(&rng.f64().to_le_bytes());
                b
            }
            2 => {
                let mut b = [0u8; 16];
                b[..10].copy_from_slice(&rng.f80());
                b[10..].copy_from_slice(&(rng.next() as u16 as u64).to_le_bytes()[..6]);
                b
            }
            _ => {
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&rng.int().to_le_bytes());
                b[8..].copy_from_slice(&rng.int().to_le_bytes());
                b
            }
        };
        c.copy_from_slice(&v);
    }
    // FLDENV/FRSTOR images: a sane control word half of the time.
    if matches!(code.mnemonic(), Mnemonic::Fldenv | Mnemonic::Frstor | Mnemonic::Fldcw) && rng.chance(50) {
        for c in 0..4 {
            let o = 16 * c;
            scratch[o..o + 2].copy_from_slice(&(0x037Fu16 | ((rng.below(16) as u16) << 8)).to_le_bytes());
        }
    }
    // F2XM1 needs |ST0| <= 1 and FYL2XP1 |ST0| < 1 - √2/2 (else the result is undefined);
    // the trigonometric instructions get moderate arguments most of the time.
    let m = code.mnemonic();
    if matches!(
        m,
        Mnemonic::F2xm1
            | Mnemonic::Fyl2xp1
            | Mnemonic::Fsin
            | Mnemonic::Fcos
            | Mnemonic::Fsincos
            | Mnemonic::Fptan
            | Mnemonic::Fpatan
            | Mnemonic::Fyl2x
    ) && rng.chance(70)
    {
        let top = ((fsw >> 11) & 7) as usize;
        fx[4] |= 1 << top;
        let lim = match m {
            Mnemonic::F2xm1 => 0,
            Mnemonic::Fyl2xp1 => -2,
            _ => rng.below(70) as i32 - 10,
        };
        let e = (0x3FFF + lim - rng.below(70) as i32).max(1) as u16;
        let sig = (1u64 << 63) | (rng.next() >> 1);
        let sg: u16 = if rng.chance(50) { 0x8000 } else { 0 };
        fx[32..40].copy_from_slice(&sig.to_le_bytes());
        fx[40..42].copy_from_slice(&(e | sg).to_le_bytes());
    }
    if matches!(m, Mnemonic::F2xm1 | Mnemonic::Fyl2xp1) {
        let e = i32::from(u16::from_le_bytes([fx[40], fx[41]]) & 0x7FFF);
        let lim = if m == Mnemonic::F2xm1 { 0x3FFF } else { 0x3FFD };
        let sig = u64::from_le_bytes(fx[32..40].try_into().expect("8 bytes"));
        if e != 0x7FFF && (e > lim || (e == lim && m == Mnemonic::F2xm1 && sig != 1 << 63)) {
            return None;
        }
    }
    let mut gpr = [rng.int(), rng.int(), rng.int(), SCRATCH + 64, SCRATCH + 128 + rng.below(8) * 8];
    if matches!(m, Mnemonic::Pcmpestri | Mnemonic::Pcmpestri64 | Mnemonic::Pcmpestrm | Mnemonic::Pcmpestrm64)
        && rng.chance(70)
    {
        // Explicit lengths around the element count, negative ones included.
        gpr[0] = (rng.below(40) as i64 - 20) as u64;
        gpr[2] = (rng.below(40) as i64 - 20) as u64;
    }
    if matches!(
        m,
        Mnemonic::Pcmpestri
            | Mnemonic::Pcmpestri64
            | Mnemonic::Pcmpestrm
            | Mnemonic::Pcmpestrm64
            | Mnemonic::Pcmpistri
            | Mnemonic::Pcmpistrm
    ) && rng.chance(70)
    {
        // Strings over a small alphabet (with NULs) so that matches happen.
        for k in 0..16 {
            let o = 160 + 16 * k;
            for b in 0..16 {
                fx[o + b] = rng.pick(&[0u8, b'a', b'b', b'c', 0xFF, 0x80]);
            }
        }
        for b in scratch.iter_mut() {
            *b = rng.pick(&[0u8, b'a', b'b', b'c', 0xFF, 0x80]);
        }
    }
    if matches!(m, Mnemonic::Xsave | Mnemonic::Xsave64 | Mnemonic::Xrstor | Mnemonic::Xrstor64) {
        // EDX:EAX = the requested components, within the guest's XCR0 (x87 | SSE): the
        // host's XCR0 has more.
        gpr[0] = rng.below(4);
        let _ = rng.next(); // keeps the case stream of earlier runs
        gpr[2] = 0;
        // An XRSTOR header: XSTATE_BV within x87 | SSE, the rest zero most of the time.
        let at = 64 + instr.memory_displacement64() as usize + 512;
        if at + 64 <= SCRATCH_LEN {
            scratch[at..at + 8].copy_from_slice(&rng.below(4).to_le_bytes());
            // XCOMP_BV = 0 (the host implements the compacted form, this model does not:
            // XCOMP_BV[63] = 1 is #GP here and a compacted restore there).
            scratch[at + 8..at + 16].fill(0);
            if rng.chance(80) {
                scratch[at + 16..at + 64].fill(0);
            }
            if rng.chance(70) {
                // A valid MXCSR in the legacy region.
                let mx = (0x1F80u32 | (rng.below(64) as u32)).to_le_bytes();
                scratch[at - 512 + 24..at - 512 + 28].copy_from_slice(&mx);
            }
        }
    }
    let flags = rng.next() & (CF | PF | AF | ZF | SF | OF);
    Some(Case { fx, gpr, flags, scratch, instr })
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    fx: Vec<u8>,
    gpr: [u64; 3],
    flags: u64,
    exc: Option<u8>,
    scratch: Vec<u8>,
}

fn mask_fx(fx: &mut [u8]) {
    for (r, _) in model_specific() {
        fx[r.clone()].fill(0);
    }
}

fn run_host(c: &Case, code: &[u8]) -> Outcome {
    // SAFETY: the fixed mapping BASE..BASE+LEN is owned by this test; the slot gets the
    // instruction and a jump to the epilogue; the context block and scratch are plain data.
    unsafe {
        let slot = SLOT as *mut u8;
        std::ptr::copy_nonoverlapping(code.as_ptr(), slot, code.len());
        // jmp rel32 to EPI.
        let after = SLOT + code.len() as u64 + 5;
        *slot.add(code.len()) = 0xE9;
        let rel = (EPI as i64 - after as i64) as i32;
        std::ptr::copy_nonoverlapping(rel.to_le_bytes().as_ptr(), slot.add(code.len() + 1), 4);
        let ctx = CTX as *mut u8;
        std::ptr::copy_nonoverlapping(c.fx.as_ptr(), ctx.add(IN_FX as usize), 512);
        for k in 0..5 {
            *((CTX + IN_GPR + 8 * k as u64) as *mut u64) = c.gpr[k];
        }
        *((CTX + IN_FL) as *mut u64) = c.flags | 2;
        *((CTX + SIG) as *mut u64) = 0;
        std::ptr::copy_nonoverlapping(c.scratch.as_ptr(), SCRATCH as *mut u8, SCRATCH_LEN);
        ARMED.store(1, Ordering::SeqCst);
        let f: extern "sysv64" fn() = std::mem::transmute(THUNK as *const u8);
        f();
        ARMED.store(0, Ordering::SeqCst);
        let mut fx = vec![0u8; 512];
        std::ptr::copy_nonoverlapping(ctx.add(OUT_FX as usize), fx.as_mut_ptr(), 512);
        mask_fx(&mut fx);
        let gpr = [
            *((CTX + OUT_GPR) as *const u64),
            *((CTX + OUT_GPR + 8) as *const u64),
            *((CTX + OUT_GPR + 16) as *const u64),
        ];
        let flags = *((CTX + OUT_FL) as *const u64) & (CF | PF | AF | ZF | SF | OF | DF);
        let sig = *((CTX + SIG) as *const u64) as i32;
        let mut scratch = vec![0u8; SCRATCH_LEN];
        std::ptr::copy_nonoverlapping(SCRATCH as *const u8, scratch.as_mut_ptr(), SCRATCH_LEN);
        let x87 = c.instr.cpuid_features().iter().any(|f| matches!(f, CpuidFeature::FPU | CpuidFeature::FPU387));
        let mmx = c.instr.mnemonic() == Mnemonic::Emms
            || (0..c.instr.op_count())
                .any(|n| c.instr.op_kind(n) == OpKind::Register && c.instr.op_register(n).is_mm());
        let exc = match sig {
            0 => None,
            libc::SIGILL => Some(6),
            libc::SIGSEGV | libc::SIGBUS => Some(13),
            // #MF (x87 error summary set) or #XM.
            // #MF: an x87 instruction, or an MMX one with an x87 exception pending.
            libc::SIGFPE => Some(if x87 || (mmx && c.fx[2] & 0x80 != 0) { 16 } else { 19 }),
            _ => Some(255),
        };
        Outcome { fx, gpr, flags, exc, scratch }
    }
}

/// Guest code slots: each case runs from its own address (the decode cache is keyed by
/// address), and cached code is dropped when the slots wrap around. A slot holds the
/// instruction and a `jmp $` the run spins on until its budget ends.
const GUEST_CODE: u64 = 0x0200_0000;
const GUEST_SLOTS: u64 = 4096;
const GUEST_SLOT_LEN: u64 = 32;
/// Instructions per case: a waiting form decodes as two (9B, then the FN... form), then the
/// `jmp $`.
const CASE_BUDGET: u64 = 8;
/// The guest's system tables (GDT, IDT), its per-vector handlers (`jmp $` at `HANDLERS + 16 v`)
/// and its stack: the engines deliver faults through the IDT as for any guest.
const SYS: u64 = 0x0100_0000;
const HANDLERS: u64 = SYS + 0x2000;
const GUEST_STACK: u64 = SYS + 0xF000;

/// Writes the GDT (a 64-bit ring-0 code segment at 0x08) and an IDT whose every vector leads
/// to its own handler; points `tmpl` at them and at the stack.
fn setup_system(mem: &mut mmu::PhysMemory, tmpl: &mut CpuState) {
    let w = |mem: &mut mmu::PhysMemory, at: u64, v: u64| mem.load(base::GuestPhysAddr(at), &v.to_le_bytes()).unwrap();
    w(mem, SYS + 8, 0x00AF_9A00_0000_FFFF);
    for v in 0..256u64 {
        let h = HANDLERS + 16 * v;
        mem.load(base::GuestPhysAddr(h), &[0xEB, 0xFE]).unwrap();
        w(mem, SYS + 0x1000 + 16 * v, (h & 0xFFFF) | (8 << 16) | (0x8E << 40) | ((h >> 16) & 0xFFFF) << 48);
        w(mem, SYS + 0x1000 + 16 * v + 8, h >> 32);
    }
    tmpl.gdtr = DescriptorTable { base: SYS, limit: 15 };
    tmpl.idtr = DescriptorTable { base: SYS + 0x1000, limit: 16 * 256 - 1 };
    tmpl.gpr[4] = GUEST_STACK;
}

/// How a guest run splits each case's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slicing {
    /// One run per case.
    Whole,
    /// One case in four in random slices of 1 to 3 instructions.
    Sliced,
}

#[allow(clippy::too_many_arguments)]
fn run_guest<E: ExecutionEngine>(
    c: &Case,
    code: &[u8],
    n: u64,
    tmpl: &CpuState,
    bus: &mut RamBus,
    engine: &mut E,
    slicing: Slicing,
    rng: &mut Rng,
) -> Outcome {
    let mut s = tmpl.clone();
    let img = c.fx;
    s.fpu.fxrstor_image(&img, true, true, 16);
    // The host's FXRSTOR loads ES/B as given; the generator keeps them consistent.
    s.fpu.fsw = u16::from_le_bytes([img[2], img[3]]);
    s.gpr[0] = c.gpr[0];
    s.gpr[1] = c.gpr[1];
    s.gpr[2] = c.gpr[2];
    s.gpr[6] = c.gpr[3];
    s.gpr[7] = c.gpr[4];
    s.set_rflags(c.flags | 2);
    let slot = n % GUEST_SLOTS;
    if slot == 0 {
        engine.invalidate_phys(GUEST_CODE, GUEST_SLOTS * GUEST_SLOT_LEN);
    }
    s.rip = GUEST_CODE + GUEST_SLOT_LEN * slot;
    let mut image = code.to_vec();
    image.extend_from_slice(&[0xEB, 0xFE]);
    bus.mem.load(base::GuestPhysAddr(s.rip), &image).expect("code fits");
    bus.mem.load(base::GuestPhysAddr(SCRATCH), &c.scratch).expect("scratch fits");
    let end = s.icount + CASE_BUDGET;
    let sliced = slicing == Slicing::Sliced && rng.below(4) == 0;
    while s.icount < end {
        let left = end - s.icount;
        let k = if sliced { (1 + rng.below(3)).min(left) } else { left };
        let x = engine.run(&mut s, bus, k);
        assert_eq!(x, RunExit::BudgetExhausted, "{}: the case must spin at its end", engine.name());
    }
    let exc = if (HANDLERS..HANDLERS + 16 * 256).contains(&s.rip) {
        match (s.rip - HANDLERS) / 16 {
            12 | 14 => Some(13),
            v => Some(v as u8),
        }
    } else {
        assert_eq!(s.rip, GUEST_CODE + GUEST_SLOT_LEN * slot + code.len() as u64, "the case ran off its slot");
        None
    };
    let mut fx = s.fpu.fxsave_image(true, true, 16).to_vec();
    mask_fx(&mut fx);
    let mut scratch = vec![0u8; SCRATCH_LEN];
    bus.mem.read(base::GuestPhysAddr(SCRATCH), &mut scratch).expect("scratch readable");
    Outcome {
        fx,
        gpr: [s.gpr[0], s.gpr[1], s.gpr[2]],
        flags: s.rflags() & (CF | PF | AF | ZF | SF | OF | DF),
        exc,
        scratch,
    }
}

fn is_trans(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(m, M::F2xm1 | M::Fyl2x | M::Fyl2xp1 | M::Fsin | M::Fcos | M::Fsincos | M::Fptan | M::Fpatan)
}

/// Per transcendental instruction: results compared, bit-exact ones, worst error in ulps.
#[derive(Default)]
struct TransStats {
    results: u64,
    exact: u64,
    worst: u64,
}

/// The x87 transcendentals: the SDM promises results within 1 ulp, not bit-exact ones. Each
/// of ST0 and ST1 agrees when the two values are within 1 ulp (same sign; the distance counted
/// on the 80-bit encoding); then the host's value and C1 (the rounding direction) are copied
/// into the interpreter's outcome, so everything else — flags, tags, control and status
/// words — is still compared exactly.
fn trans_compare(h: &Outcome, g: &mut Outcome, t: &mut TransStats) {
    let mut all_close = true;
    let mut any_diff = false;
    for k in 0..2 {
        let o = 32 + 16 * k;
        let hv = &h.fx[o..o + 10];
        let gv = &g.fx[o..o + 10];
        if hv == gv {
            if k == 0 {
                t.results += 1;
                t.exact += 1;
            }
            continue;
        }
        let key = |b: &[u8]| {
            let sig = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
            let se = u16::from_le_bytes([b[8], b[9]]);
            (se >> 15, (u128::from(se & 0x7FFF) << 63) | u128::from(sig & !(1 << 63)))
        };
        let ((h_sign, hk), (g_sign, gk)) = (key(hv), key(gv));
        let ulps = if h_sign == g_sign { hk.abs_diff(gk) } else { u128::MAX };
        t.results += 1;
        t.worst = t.worst.max(ulps.min(u128::from(u64::MAX)) as u64);
        if ulps <= 1 {
            any_diff = true;
        } else {
            all_close = false;
        }
    }
    if all_close && any_diff {
        g.fx[32..64].copy_from_slice(&h.fx[32..64]);
    }
    // C1 reports the rounding direction of the host's internal approximation.
    g.fx[3] = (g.fx[3] & !0x02) | (h.fx[3] & 0x02);
}

/// The bytes of the scratch memory where FSTENV/FSAVE/FXSAVE store the last instruction
/// and data pointers and opcode (masked for the reason in [`model_specific`]).
fn stored_pointers(instr: &Instruction) -> Vec<std::ops::Range<usize>> {
    let at = (64 + instr.memory_displacement64()) as usize;
    let clip = |r: std::ops::Range<usize>| r.start.min(SCRATCH_LEN)..r.end.min(SCRATCH_LEN);
    match instr.mnemonic() {
        Mnemonic::Fnstenv | Mnemonic::Fstenv | Mnemonic::Fnsave | Mnemonic::Fsave => {
            if matches!(instr.memory_size(), iced_x86::MemorySize::FpuEnv14 | iced_x86::MemorySize::FpuState94) {
                vec![clip(at + 6..at + 14)]
            } else {
                vec![clip(at + 12..at + 28)]
            }
        }
        Mnemonic::Fxsave | Mnemonic::Fxsave64 | Mnemonic::Xsave | Mnemonic::Xsave64 => {
            vec![clip(at + 6..at + 24), clip(at + 416..at + 512)]
        }
        _ => vec![],
    }
}

/// RCPPS/RSQRTPS: the SDM bounds the relative error by 1.5 × 2^-12 and the exact bits are
/// model-specific. A lane agrees when both are the same special value (NaN, ±inf, ±0) or
/// both are finite with the same sign within 3 × 2^-12 of each other; then the host's
/// value is copied into the interpreter's outcome so the exact comparison of everything
/// else follows.
fn approx_equal(instr: &Instruction, h: &Outcome, g: &mut Outcome) {
    let r = instr.op0_register() as usize - Register::XMM0 as usize;
    let o = 160 + 16 * r;
    for k in 0..4 {
        let at = o + 4 * k;
        let hv = u32::from_le_bytes(h.fx[at..at + 4].try_into().expect("4 bytes"));
        let gv = u32::from_le_bytes(g.fx[at..at + 4].try_into().expect("4 bytes"));
        let (hf, gf) = (f32::from_bits(hv), f32::from_bits(gv));
        let ok = if !hf.is_finite() || hf == 0.0 {
            hv == gv
        } else {
            gf.is_finite() && hf.is_sign_negative() == gf.is_sign_negative() && ((hf - gf) / hf).abs() <= 3.0 / 4096.0
        };
        if ok {
            g.fx[at..at + 4].copy_from_slice(&h.fx[at..at + 4]);
        }
    }
}

fn describe(a: &Outcome, b: &Outcome) -> String {
    let mut s = String::new();
    if a.exc != b.exc {
        s += &format!(" exc host {:?} interp {:?};", a.exc, b.exc);
    }
    if a.gpr != b.gpr {
        s += &format!(" gpr host {:x?} interp {:x?};", a.gpr, b.gpr);
    }
    if a.flags != b.flags {
        s += &format!(" flags host {:x} interp {:x};", a.flags, b.flags);
    }
    let names = |o: usize| match o {
        0..=1 => "FCW".to_string(),
        2..=3 => "FSW".to_string(),
        4 => "FTW".to_string(),
        24..=27 => "MXCSR".to_string(),
        32..=159 => format!("ST{}", (o - 32) / 16),
        160..=415 => format!("XMM{}", (o - 160) / 16),
        _ => format!("byte {o}"),
    };
    let mut seen = std::collections::BTreeSet::new();
    for k in 0..512 {
        if a.fx[k] != b.fx[k] && seen.insert(names(k)) {
            let r = match k {
                0..=3 => k & !1..(k & !1) + 2,
                4 => 4..5,
                24..=27 => 24..28,
                32..=415 => (k - (k - 32) % 16)..(k - (k - 32) % 16 + 16),
                _ => k..k + 1,
            };
            s += &format!(" {} host {:02x?} interp {:02x?};", names(k), &a.fx[r.clone()], &b.fx[r]);
        }
    }
    if a.scratch != b.scratch {
        let at = (0..SCRATCH_LEN).find(|&x| a.scratch[x] != b.scratch[x]).unwrap_or(0);
        let st = (at & !7).min(SCRATCH_LEN - 16);
        s +=
            &format!(" memory +{at:#x} host {:02x?} interp {:02x?};", &a.scratch[st..st + 16], &b.scratch[st..st + 16]);
    }
    s
}

/// Runs the FPU differential test on `engine` (`FERRO_FPU_CASES` cases from `FERRO_FPU_SEED`);
/// the cases depend only on the seed, not on the engine or the slicing.
pub fn run_all<E: ExecutionEngine>(mut engine: E, slicing: Slicing) {
    if !map_fixed() {
        println!("differential FPU: the fixed test mapping at {BASE:#x} is taken; skipped");
        return;
    }
    install_handler();
    let thunk = thunk_code();
    // SAFETY: the mapping at BASE is ours and large enough for the thunk.
    unsafe { std::ptr::copy_nonoverlapping(thunk.as_ptr(), THUNK as *mut u8, thunk.len()) };
    let seed = std::env::var("FERRO_FPU_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x005E_EDF9_u64);
    let cases: u64 = std::env::var("FERRO_FPU_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(210_000);
    let verbose = std::env::var("FERRO_FPU_VERBOSE").is_ok();
    let forms = forms();
    if std::env::var("FERRO_FPU_LIST").is_ok() {
        // Every legacy x87/MMX/SSE/SSE2 form of 64-bit mode that is not under test.
        for code in Code::values() {
            let oc = code.op_code();
            let feats = Instruction::with(code).cpuid_features();
            let ours = feats.iter().any(|f| {
                matches!(
                    f,
                    CpuidFeature::FPU
                        | CpuidFeature::FPU387
                        | CpuidFeature::MMX
                        | CpuidFeature::SSE
                        | CpuidFeature::SSE2
                        | CpuidFeature::SSE3
                        | CpuidFeature::SSSE3
                        | CpuidFeature::SSE4_1
                        | CpuidFeature::SSE4_2
                )
            });
            if ours && oc.encoding() == EncodingKind::Legacy && oc.mode64() && !forms.contains(&code) {
                println!("not tested: {code:?} {:?}", oc.op_kinds());
            }
        }
    }
    assert!(forms.len() > 100, "only {} forms", forms.len());
    let mut rng = Rng(seed);
    let mut mem = mmu::PhysMemory::new(GUEST_RAM).expect("guest RAM");
    mem.map_ram(0, GUEST_RAM).expect("map RAM");
    let mut bus = RamBus::new(mem);
    let mut slicer = Rng(seed ^ 0x51_1CE5);
    let mut tmpl = CpuState::new_flat64();
    tmpl.cr0 |= cr::CR0_NE | cr::CR0_MP;
    tmpl.cr4 |= cr::CR4_OSFXSR | cr::CR4_OSXMMEXCPT | cr::CR4_OSXSAVE;
    tmpl.fpu.xcr0 = 3;
    setup_system(&mut bus.mem, &mut tmpl);
    let mut by_mn: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut fails = Vec::new();
    let mut trans: BTreeMap<String, TransStats> = BTreeMap::new();
    let mut ran = 0u64;
    for n in 0..cases {
        let code = forms[rng.below(forms.len() as u64) as usize];
        let Some(c) = gen_case(&mut rng, code) else { continue };
        let mut enc = Encoder::new(64);
        let Ok(len) = enc.encode(&c.instr, SLOT) else { continue };
        let bytes = enc.take_buffer();
        let _ = len;
        if std::env::var("FERRO_FPU_CASE").ok().and_then(|v| v.parse::<u64>().ok()) == Some(n) {
            println!(
                "case {n}: st {:02x?} fcw {:02x?} fsw {:02x?} mxcsr {:02x?} xmm {:02x?} scratch {:02x?}",
                c.fx[32..160].chunks(16).map(|x| &x[..10]).collect::<Vec<_>>(),
                &c.fx[0..2],
                &c.fx[2..4],
                &c.fx[24..28],
                c.fx[160..416].chunks(16).collect::<Vec<_>>(),
                &c.scratch[64..128]
            );
        }
        let mut h = run_host(&c, &bytes);
        let mut g = run_guest(&c, &bytes, ran, &tmpl, &mut bus, &mut engine, slicing, &mut slicer);
        for r in stored_pointers(&c.instr) {
            h.scratch[r.clone()].fill(0);
            g.scratch[r].fill(0);
        }
        if matches!(code.mnemonic(), Mnemonic::Rcpps | Mnemonic::Rcpss | Mnemonic::Rsqrtps | Mnemonic::Rsqrtss) {
            approx_equal(&c.instr, &h, &mut g);
        }
        if code.mnemonic() == Mnemonic::Fstpnce {
            // FSTPNCE from an empty ST(0): the value the host stores is not the register's
            // FXRSTOR-loaded bits (model-specific); the tag and everything else still compare.
            let top = usize::from((u16::from_le_bytes([c.fx[2], c.fx[3]]) >> 11) & 7);
            if c.fx[4] & (1 << top) == 0 {
                let n = c.instr.op0_register() as usize - Register::ST0 as usize;
                if n > 0 {
                    let o = 32 + 16 * (n - 1);
                    g.fx[o..o + 16].copy_from_slice(&h.fx[o..o + 16]);
                }
                // The destination's tag too (physical register TOP + n).
                let pd = (top + n) & 7;
                g.fx[4] = (g.fx[4] & !(1 << pd)) | (h.fx[4] & (1 << pd));
            }
        }
        if is_trans(code.mnemonic()) {
            let t = trans.entry(format!("{:?}", code.mnemonic())).or_default();
            trans_compare(&h, &mut g, t);
        }
        ran += 1;
        let e = by_mn.entry(format!("{:?}", code.mnemonic())).or_default();
        e.0 += 1;
        if h != g {
            e.1 += 1;
            let only = std::env::var("FERRO_FPU_ONLY").unwrap_or_default();
            if fails.len() < 40 && (only.is_empty() || format!("{:?}", code.mnemonic()).starts_with(&only)) {
                fails.push(format!("case {n} {:?} `{}`:{}", code, c.instr, describe(&h, &g)));
            }
        }
    }
    let bad: u64 = by_mn.values().map(|v| v.1).sum();
    if verbose || bad != 0 {
        for (m, (n, b)) in &by_mn {
            if verbose || *b != 0 {
                println!("{m:>12}: {n:>7} cases, {b} mismatches");
            }
        }
        for f in &fails {
            println!("{f}");
        }
    }
    for (m, t) in &trans {
        println!(
            "differential FPU: {m:>8}: {} results compared, {} bit-exact ({:.3}%), worst {} ulp",
            t.results,
            t.exact,
            100.0 * t.exact as f64 / t.results.max(1) as f64,
            t.worst
        );
    }
    println!("differential FPU: not implemented (excluded): {:?}", not_implemented());
    println!("differential FPU: {ran} cases over {} forms, {bad} mismatches (seed {seed:#x})", forms.len());
    assert_eq!(bad, 0, "mismatches against the host CPU");
}
