//! The host-CPU differential harness, shared by cpu/tests/differential.rs (the interpreter) and
//! jit/tests/differential_jit.rs (the translator, with sliced budgets): random register, flag and
//! memory states and random operand forms of every general-purpose integer instruction run
//! natively on the host and on any [`ExecutionEngine`], and must agree. How the host side works
//! is described in cpu/tests/differential.rs.
//!
//! The engine runs each instruction as a guest would: the slot holds the instruction followed
//! by `jmp $` (so the two form one translated block), the step gets [`STEP_BUDGET`] instructions
//! (in one run or in slices), and a fault is delivered through a real IDT (the CPU states carry
//! a GDT, a TSS and an IDT in a system region of guest memory) to a per-vector handler; the
//! harness reads the vector from where the CPU landed and the faulting RIP, RSP and RFLAGS from
//! the exception frame, then returns the CPU to ring 3.
#![allow(dead_code)]

use base::GuestPhysAddr;
use cpu::state::rflags::{AF, CF, DF, IF, OF, PF, SF, STATUS, ZF};
use cpu::{CpuState, DescriptorTable, Exception, ExecutionEngine, RamBus, RunExit, SegReg, Segment};
use iced_x86::{
    Code, Decoder, DecoderOptions, Encoder, EncodingKind, Formatter, Instruction, IntelFormatter, Mnemonic,
    OpCodeOperandKind as K, OpKind, Register, RepPrefixKind,
};
use mmu::PhysMemory;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

const SCRATCH_LEN: usize = 0x4000;
/// The thunk region: page 0 holds the prologues, epilogues and the context block; the rest
/// is instruction slots. The guest maps the same region at the same address, so return
/// addresses and branch targets agree.
const THUNK_LEN: usize = 0x10000;
const PRO64_OFF: usize = 0x000;
const EPI64_OFF: usize = 0x200;
const PRO32_OFF: usize = 0x400;
const EPI32_OFF: usize = 0x600;
const STUB32_OFF: usize = 0x7C0;
const CTX_OFF: usize = 0x800;
/// 16-bit path: 64-bit prologue, 64-bit "taken" epilogue entry, 16-bit stub for faults.
const PRO16_OFF: usize = 0x900;
const EPI32T_OFF: usize = 0xB00;
const STUB16_OFF: usize = 0xB40;
const SLOTS_OFF: usize = 0x1000;
/// LDT selectors (RPL 3) of the 16-bit code segment (base = thunk region) and the 16-bit
/// data segment (base = scratch, limit = scratch size).
const CODE16_SEL: u64 = 0x07;
const DATA16_SEL: u32 = 0x0F;
/// Each slot: the instruction and an exit jump, then at `TAKEN_OFF` the landing pad of a
/// taken branch (it records that it ran, then exits too).
const SLOT_LEN: usize = 64;
const TAKEN_OFF: usize = 32;
const SLOTS: usize = (THUNK_LEN - SLOTS_OFF) / SLOT_LEN;
/// Linux's 32-bit and 64-bit user code selectors and its data selector.
const USER32_CS: u64 = 0x23;
const USER64_CS: u64 = 0x33;
const USER_DS: u32 = 0x2B;
/// Flags compared: the status flags and DF.
const CMP_FLAGS: u64 = STATUS | DF;

// ------------------------------------------------------------------------------------------
// The ONE table of undefined results.
// ------------------------------------------------------------------------------------------

/// What the Intel SDM (vol. 2, "Flags Affected" of each instruction) leaves undefined:
/// (undefined status flags, destination undefined). `count` is the masked shift/rotate count,
/// `src_zero` whether a bit-scan source is zero.
pub(super) fn undefined(m: Mnemonic, bits: u32, count: u32, src_zero: bool) -> (u64, bool) {
    use Mnemonic as M;
    match m {
        M::And | M::Or | M::Xor | M::Test => (AF, false),
        M::Shl | M::Sal | M::Shr | M::Sar => {
            if count == 0 {
                (0, false)
            } else {
                let of = if count != 1 { OF } else { 0 };
                let cf = if count >= bits && m != M::Sar { CF } else { 0 };
                (AF | of | cf, false)
            }
        }
        M::Rol | M::Ror | M::Rcl | M::Rcr => (if count > 1 { OF } else { 0 }, false),
        M::Shld | M::Shrd => {
            if count == 0 {
                (0, false)
            } else if count > bits {
                (STATUS, true)
            } else {
                (AF | if count != 1 { OF } else { 0 }, false)
            }
        }
        M::Mul | M::Imul => (SF | ZF | AF | PF, false),
        M::Div | M::Idiv => (STATUS, false),
        M::Bt | M::Bts | M::Btr | M::Btc => (OF | SF | AF | PF, false),
        M::Bsf | M::Bsr => (CF | OF | SF | AF | PF, src_zero),
        M::Lzcnt | M::Tzcnt => (OF | SF | PF | AF, false),
        M::Daa | M::Das => (OF, false),
        M::Aaa | M::Aas => (OF | SF | ZF | PF, false),
        M::Aam | M::Aad => (OF | AF | CF, false),
        _ => (0, false),
    }
}

// ------------------------------------------------------------------------------------------
// The ONE table of model-specific results: cases where real x86 CPUs legitimately differ
// from one another, so the host CPU cannot be the oracle for the exact value.
// ------------------------------------------------------------------------------------------

/// For a GPR the host and the interpreter disagree on, whether the case is a documented
/// model-specific result and both values are ones some real CPU produces. Each row names
/// its reason.
pub(super) fn model_specific(
    ins: &Instruction,
    cbits: u32,
    reg: usize,
    pre_rcx: u64,
    pre: u64,
    host: u64,
    interp: u64,
) -> bool {
    // REP string with a 32-bit address size (0x67) in 64-bit mode and ECX = 0: some Intel
    // Xeons write ECX (zero-extended, clearing RCX[63:32]) although no iteration runs, and
    // for REP MOVS/STOS also ESI/EDI; other CPUs leave them untouched. Ferrovisor's model
    // writes them (see the REP loop in interp/exec.rs). Accept exactly those two outcomes
    // per register: unchanged, or the low 32 bits zero-extended.
    let rep = ins.has_rep_prefix() || ins.has_repne_prefix();
    let zero_count = (pre_rcx & 0xFFFF_FFFF) == 0;
    if cbits == 64 && rep && zero_count && matches!(reg, 1 | 6 | 7) && is_string(ins.mnemonic()) && a32(ins) {
        let ok = |v: u64| v == pre || v == pre & 0xFFFF_FFFF;
        return ok(host) && ok(interp);
    }
    false
}

fn a32(ins: &Instruction) -> bool {
    (0..ins.op_count()).any(|k| matches!(ins.op_kind(k), OpKind::MemorySegESI | OpKind::MemoryESEDI))
}

fn is_string(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::Movsb
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
    )
}

// ------------------------------------------------------------------------------------------
// PRNG
// ------------------------------------------------------------------------------------------

/// The case generator's random source; `m32` says the case runs in 32-bit (compatibility)
/// mode, which changes the registers and address sizes the generator may use.
pub(super) struct Rng {
    state: u64,
    /// Not 64-bit code: only EAX..EDI (and AH..BH), no REX.
    m32: bool,
    /// 16-bit code: offsets are relative to `data_base` (DS, ES, SS) and `code_base` (CS).
    m16: bool,
    data_base: u64,
    code_base: u64,
}

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Rng { state: seed ^ 0x9E37_79B9_7F4A_7C15, m32: false, m16: false, data_base: 0, code_base: 0 }
    }
    /// splitmix64.
    pub(super) fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub(super) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// A value biased towards the boundaries of 8/16/32/64-bit arithmetic.
    pub(super) fn value(&mut self) -> u64 {
        const SPECIAL: [u64; 16] = [
            0,
            1,
            2,
            0x7F,
            0x80,
            0xFF,
            0x7FFF,
            0x8000,
            0xFFFF,
            0x7FFF_FFFF,
            0x8000_0000,
            0xFFFF_FFFF,
            0x7FFF_FFFF_FFFF_FFFF,
            0x8000_0000_0000_0000,
            u64::MAX,
            u64::MAX - 1,
        ];
        match self.below(10) {
            0 | 1 => SPECIAL[self.below(16) as usize],
            2 => {
                // A special value in the low bits, random above.
                let s = SPECIAL[self.below(16) as usize];
                let w = [8u32, 16, 32][self.below(3) as usize];
                (self.next() & !((1u64 << w) - 1)) | (s & ((1u64 << w) - 1))
            }
            3 => self.below(64),
            4 => (self.below(64) as i64 - 32) as u64,
            5 => 1u64 << self.below(64),
            _ => self.next(),
        }
    }
}

// ------------------------------------------------------------------------------------------
// The host side: thunk page, scratch memory, fault handler.
// ------------------------------------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct Ctx {
    gpr: [u64; 16],
    rflags: u64,
    /// Signal number of a fault inside the instruction (0: none).
    sig: u64,
    /// The host RSP while the instruction runs with the guest's stack pointer.
    host_rsp: u64,
    /// m16:32 far pointer to the slot (32-bit runs).
    far32: u64,
    /// Address of the slot (64-bit runs).
    target64: u64,
    /// Set by a slot's taken-branch landing pad.
    taken: u64,
    /// Code size of the run: 16, 32 or 64 (the fault handler resumes accordingly).
    bits: u64,
}

const CTX_HOST_RSP: u64 = 8 * 16 + 16;
const CTX_FAR32: u64 = 8 * 16 + 24;
const CTX_TARGET64: u64 = 8 * 16 + 32;
const CTX_TAKEN: u64 = 8 * 16 + 40;

/// Thunk regions currently registered with the fault handler.
static REGIONS: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];

extern "C" fn on_fault(sig: libc::c_int, _info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: for an SA_SIGINFO handler the kernel passes a valid, exclusive ucontext_t.
    let uc = unsafe { &mut *(uc as *mut libc::ucontext_t) };
    let rip = uc.uc_mcontext.gregs[libc::REG_RIP as usize] as u64;
    let cs = uc.uc_mcontext.gregs[libc::REG_CSGSFS as usize] as u64 & 0xFFFF;
    for r in &REGIONS {
        let base = r.load(Ordering::Relaxed);
        if base == 0 {
            continue;
        }
        // 16-bit code: RIP is the offset in the code segment based at the region.
        let in16 = cs == CODE16_SEL && rip >= SLOTS_OFF as u64 && rip < THUNK_LEN as u64;
        if in16 || rip >= base + SLOTS_OFF as u64 && rip < base + THUNK_LEN as u64 {
            let ctx = (base + CTX_OFF as u64) as *mut Ctx;
            // SAFETY: `base` is a live thunk region registered by `Host::new`; its context
            // block is not accessed by Rust code while the thunk runs.
            let bits = unsafe {
                (*ctx).sig = sig as u64;
                (*ctx).bits
            };
            // Resume at the epilogue (through a stub in compatibility or 16-bit mode): it
            // stores the registers as they were at the fault.
            let resume = match bits {
                16 => STUB16_OFF as u64,
                32 => base + STUB32_OFF as u64,
                _ => base + EPI64_OFF as u64,
            };
            uc.uc_mcontext.gregs[libc::REG_RIP as usize] = resume as i64;
            return;
        }
    }
    // Not a fault of a test instruction: take the default action on return.
    // SAFETY: resetting a signal disposition is async-signal-safe.
    unsafe { libc::signal(sig, libc::SIG_DFL) };
}

fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for sig in [libc::SIGFPE, libc::SIGILL, libc::SIGSEGV, libc::SIGBUS] {
            // SAFETY: a zeroed sigaction is a valid starting point; the handler has the
            // SA_SIGINFO signature and only touches registered thunk regions.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_fault as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut sa.sa_mask);
                assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
            }
        }
    });
}

pub(super) struct Host {
    thunk: *mut u8,
    scratch: *mut u8,
    region: usize,
    /// Alternate signal stack: instructions run with the guest's stack pointer.
    _altstack: Vec<u8>,
    next_slot: usize,
    /// The 16-bit segments are installed (16-bit cases can run).
    pub(super) has16: bool,
}

fn map_fixed(addr: u64, len: usize, prot: libc::c_int) -> Option<*mut u8> {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; the result is checked.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    if p as u64 != addr {
        // SAFETY: unmapping what this call just mapped.
        unsafe { libc::munmap(p, len) };
        return None;
    }
    Some(p as *mut u8)
}

/// `jmp far 0x33:target` with a 32-bit offset, in 16-bit code (66 EA ptr16:32).
fn far_jmp_back16(target: u64) -> [u8; 8] {
    let mut b = [0x66u8, 0xEA, 0, 0, 0, 0, 0, 0];
    b[2..6].copy_from_slice(&(target as u32).to_le_bytes());
    b[6..8].copy_from_slice(&(USER64_CS as u16).to_le_bytes());
    b
}

/// Installs the 16-bit code and data segments in this process's LDT; false if the kernel
/// does not allow it.
fn setup_ldt(code_base: u64, data_base: u64) -> bool {
    #[repr(C)]
    struct UserDesc {
        entry_number: u32,
        base_addr: u32,
        limit: u32,
        flags: u32,
    }
    // flags: seg_32bit (bit 0) = 0, contents (bits 1-2): 2 = code, 0 = data; useable (bit 6).
    let code = UserDesc { entry_number: 0, base_addr: code_base as u32, limit: 0xFFFF, flags: (2 << 1) | (1 << 6) };
    let data = UserDesc { entry_number: 1, base_addr: data_base as u32, limit: SCRATCH_LEN as u32 - 1, flags: 1 << 6 };
    for d in [&code, &data] {
        // SAFETY: modify_ldt(1, desc, size) reads one user_desc from the pointer.
        let r =
            unsafe { libc::syscall(libc::SYS_modify_ldt, 1, d as *const UserDesc, std::mem::size_of::<UserDesc>()) };
        if r != 0 {
            return false;
        }
    }
    true
}

/// `jmp far 0x33:EPI32` in 32-bit code.
fn far_jmp_back(base: u64) -> [u8; 7] {
    let mut b = [0xEAu8, 0, 0, 0, 0, 0, 0];
    b[1..5].copy_from_slice(&((base + EPI32_OFF as u64) as u32).to_le_bytes());
    b[5..7].copy_from_slice(&(USER64_CS as u16).to_le_bytes());
    b
}

impl Host {
    pub(super) fn new() -> Host {
        install_handler();
        for slot in 0..256u64 {
            let base = 0x3000_0000 + slot * 0x10_0000;
            let Some(thunk) = map_fixed(base, THUNK_LEN, libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) else {
                continue;
            };
            let Some(scratch) = map_fixed(base + 0x8_0000, SCRATCH_LEN, libc::PROT_READ | libc::PROT_WRITE) else {
                // SAFETY: unmapping the region mapped just above.
                unsafe { libc::munmap(thunk as *mut libc::c_void, THUNK_LEN) };
                continue;
            };
            let region = REGIONS
                .iter()
                .position(|r| r.compare_exchange(0, base, Ordering::SeqCst, Ordering::SeqCst).is_ok())
                .expect("too many hosts");
            let mut altstack = vec![0u8; 0x10000];
            let ss = libc::stack_t {
                ss_sp: altstack.as_mut_ptr() as *mut libc::c_void,
                ss_flags: 0,
                ss_size: altstack.len(),
            };
            // SAFETY: the alternate stack is owned by the Host, which lives as long as the
            // thunks run on this thread; `ss` is a valid stack_t.
            assert_eq!(unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) }, 0);
            let has16 = setup_ldt(base, base + 0x8_0000);
            if !has16 {
                println!("differential: modify_ldt refused 16-bit segments; no 16-bit cases");
            }
            let mut h = Host { thunk, scratch, region, _altstack: altstack, next_slot: 0, has16 };
            h.write_thunk();
            return h;
        }
        panic!("no free fixed address range below 4 GiB for the differential test");
    }

    pub(super) fn base(&self) -> u64 {
        self.thunk as u64
    }

    pub(super) fn scratch_addr(&self) -> u64 {
        self.scratch as u64
    }

    pub(super) fn scratch(&mut self) -> &mut [u8] {
        // SAFETY: `scratch` is a private RW mapping of SCRATCH_LEN bytes owned by `self`.
        unsafe { std::slice::from_raw_parts_mut(self.scratch, SCRATCH_LEN) }
    }

    /// The address of the slot the next instruction will use.
    pub(super) fn slot_addr(&self) -> u64 {
        self.base() + (SLOTS_OFF + self.next_slot * SLOT_LEN) as u64
    }

    /// Moves to the next slot; true when the slots wrapped around.
    pub(super) fn advance(&mut self) -> bool {
        self.next_slot = (self.next_slot + 1) % SLOTS;
        self.next_slot == 0
    }

    fn ctx(&mut self) -> &mut Ctx {
        // SAFETY: the context block lies inside the thunk region owned by `self`, is
        // aligned, and only the thunk (not running now) or the fault handler write it.
        unsafe { &mut *(self.thunk.add(CTX_OFF) as *mut Ctx) }
    }

    fn write_thunk(&mut self) {
        use iced_x86::code_asm::*;
        let base = self.base();
        let ctx = base + CTX_OFF as u64;
        // 64-bit: load all GPRs (RSP too) and RFLAGS, jump to the slot.
        let regs = [rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15];
        let mut a = CodeAssembler::new(64).unwrap();
        for r in [rbx, rbp, r12, r13, r14, r15] {
            a.push(r).unwrap();
        }
        a.mov(rax, ctx).unwrap();
        a.mov(qword_ptr(rax + CTX_HOST_RSP as i32), rsp).unwrap();
        a.push(qword_ptr(rax + 128)).unwrap();
        a.popfq().unwrap();
        for (k, r) in regs.iter().enumerate() {
            a.mov(*r, qword_ptr(rax + 8 * (k as i32 + 1))).unwrap();
        }
        a.mov(rax, qword_ptr(rax)).unwrap();
        a.jmp(qword_ptr(ctx + CTX_TARGET64)).unwrap();
        let pro64 = a.assemble(base + PRO64_OFF as u64).unwrap();
        // 64-bit epilogue: store RAX and RSP, restore the host RSP, store the rest.
        let mut e = CodeAssembler::new(64).unwrap();
        e.mov(qword_ptr(ctx), rax).unwrap();
        e.mov(qword_ptr(ctx + 32), rsp).unwrap();
        e.mov(rsp, qword_ptr(ctx + CTX_HOST_RSP)).unwrap();
        e.mov(rax, ctx).unwrap();
        for (k, r) in regs.iter().enumerate() {
            if k + 1 != 4 {
                e.mov(qword_ptr(rax + 8 * (k as i32 + 1)), *r).unwrap();
            }
        }
        e.pushfq().unwrap();
        e.pop(qword_ptr(rax + 128)).unwrap();
        e.cld().unwrap();
        for r in [r15, r14, r13, r12, rbp, rbx] {
            e.pop(r).unwrap();
        }
        e.ret().unwrap();
        let epi64 = e.assemble(base + EPI64_OFF as u64).unwrap();
        // 32-bit: load EAX..EDI (ESP too) and EFLAGS, far-jump to the slot in compatibility
        // mode.
        let regs32 = [rcx, rdx, rbx, rsp, rbp, rsi, rdi];
        let mut p = CodeAssembler::new(64).unwrap();
        for r in [rbx, rbp, r12, r13, r14, r15] {
            p.push(r).unwrap();
        }
        p.mov(rax, ctx).unwrap();
        p.mov(qword_ptr(rax + CTX_HOST_RSP as i32), rsp).unwrap();
        // 64-bit Linux runs with null DS/ES, which fault in compatibility mode.
        p.mov(ecx, USER_DS).unwrap();
        p.mov(ds, cx).unwrap();
        p.mov(es, cx).unwrap();
        p.push(qword_ptr(rax + 128)).unwrap();
        p.popfq().unwrap();
        for (k, r) in regs32.iter().enumerate() {
            p.mov(*r, qword_ptr(rax + 8 * (k as i32 + 1))).unwrap();
        }
        p.mov(rax, qword_ptr(rax)).unwrap();
        p.jmp(fword_ptr(ctx + CTX_FAR32)).unwrap();
        let pro32 = p.assemble(base + PRO32_OFF as u64).unwrap();
        // The 32-bit epilogue: back in 64-bit mode, store EAX and ESP, restore the host RSP.
        let mut e = CodeAssembler::new(64).unwrap();
        e.mov(qword_ptr(ctx), rax).unwrap();
        e.mov(qword_ptr(ctx + 32), rsp).unwrap();
        e.mov(rsp, qword_ptr(ctx + CTX_HOST_RSP)).unwrap();
        e.mov(rax, ctx).unwrap();
        for (k, r) in regs32.iter().enumerate() {
            if k + 1 != 4 {
                e.mov(qword_ptr(rax + 8 * (k as i32 + 1)), *r).unwrap();
            }
        }
        e.pushfq().unwrap();
        e.pop(qword_ptr(rax + 128)).unwrap();
        e.cld().unwrap();
        e.mov(ecx, 0).unwrap();
        e.mov(ds, cx).unwrap();
        e.mov(es, cx).unwrap();
        e.mov(ecx, USER_DS).unwrap();
        e.mov(ss, cx).unwrap();
        for r in [r15, r14, r13, r12, rbp, rbx] {
            e.pop(r).unwrap();
        }
        e.ret().unwrap();
        let epi32 = e.assemble(base + EPI32_OFF as u64).unwrap();
        assert!(pro64.len() <= EPI64_OFF - PRO64_OFF && epi64.len() <= PRO32_OFF - EPI64_OFF);
        assert!(pro32.len() <= EPI32_OFF - PRO32_OFF && epi32.len() <= STUB32_OFF - EPI32_OFF);
        // The 16-bit path: like the 32-bit one, with the 16-bit segments in DS, ES and SS.
        let mut p = CodeAssembler::new(64).unwrap();
        for r in [rbx, rbp, r12, r13, r14, r15] {
            p.push(r).unwrap();
        }
        p.mov(rax, ctx).unwrap();
        p.mov(qword_ptr(rax + CTX_HOST_RSP as i32), rsp).unwrap();
        p.mov(ecx, DATA16_SEL).unwrap();
        p.mov(ds, cx).unwrap();
        p.mov(es, cx).unwrap();
        p.mov(ss, cx).unwrap();
        p.push(qword_ptr(rax + 128)).unwrap();
        p.popfq().unwrap();
        for (k, r) in regs32.iter().enumerate() {
            p.mov(*r, qword_ptr(rax + 8 * (k as i32 + 1))).unwrap();
        }
        p.mov(rax, qword_ptr(rax)).unwrap();
        p.jmp(fword_ptr(ctx + CTX_FAR32)).unwrap();
        let pro16 = p.assemble(base + PRO16_OFF as u64).unwrap();
        let mut t = CodeAssembler::new(64).unwrap();
        t.mov(byte_ptr(ctx + CTX_TAKEN), 1).unwrap();
        t.jmp(base + EPI32_OFF as u64).unwrap();
        let epi32t = t.assemble(base + EPI32T_OFF as u64).unwrap();
        assert!(pro16.len() <= EPI32T_OFF - PRO16_OFF && epi32t.len() <= STUB16_OFF - EPI32T_OFF);
        let stub16 = far_jmp_back16(base + EPI32_OFF as u64);
        // SAFETY: the ranges lie inside the RWX thunk region owned by `self`.
        unsafe {
            std::ptr::copy_nonoverlapping(pro16.as_ptr(), self.thunk.add(PRO16_OFF), pro16.len());
            std::ptr::copy_nonoverlapping(epi32t.as_ptr(), self.thunk.add(EPI32T_OFF), epi32t.len());
            std::ptr::copy_nonoverlapping(stub16.as_ptr(), self.thunk.add(STUB16_OFF), stub16.len());
        }
        let stub = far_jmp_back(base);
        // SAFETY: all ranges lie inside the RWX thunk region owned by `self`.
        unsafe {
            std::ptr::copy_nonoverlapping(pro64.as_ptr(), self.thunk.add(PRO64_OFF), pro64.len());
            std::ptr::copy_nonoverlapping(epi64.as_ptr(), self.thunk.add(EPI64_OFF), epi64.len());
            std::ptr::copy_nonoverlapping(pro32.as_ptr(), self.thunk.add(PRO32_OFF), pro32.len());
            std::ptr::copy_nonoverlapping(epi32.as_ptr(), self.thunk.add(EPI32_OFF), epi32.len());
            std::ptr::copy_nonoverlapping(stub.as_ptr(), self.thunk.add(STUB32_OFF), stub.len());
        }
    }

    /// The slot image for `bytes`: the instruction, an exit, and the taken-branch pad.
    pub(super) fn slot_image(&self, bytes: &[u8], bits: u32) -> [u8; SLOT_LEN] {
        assert!(bytes.len() <= 15);
        let base = self.base();
        let slot = self.slot_addr();
        let mut code = [0xCCu8; SLOT_LEN];
        code[..bytes.len()].copy_from_slice(bytes);
        if bits == 16 {
            // 16-bit code cannot address the context block: the exits go to the plain and
            // the "taken" 64-bit epilogue entries.
            code[bytes.len()..bytes.len() + 8].copy_from_slice(&far_jmp_back16(base + EPI32_OFF as u64));
            code[TAKEN_OFF..TAKEN_OFF + 8].copy_from_slice(&far_jmp_back16(base + EPI32T_OFF as u64));
            return code;
        }
        let m32 = bits == 32;
        let exit = |code: &mut [u8], at: usize| {
            if m32 {
                code[at..at + 7].copy_from_slice(&far_jmp_back(base));
            } else {
                let after = slot + at as u64 + 5;
                code[at] = 0xE9;
                let rel = (base + EPI64_OFF as u64).wrapping_sub(after) as i32;
                code[at + 1..at + 5].copy_from_slice(&rel.to_le_bytes());
            }
        };
        exit(&mut code, bytes.len());
        // Taken pad: mov byte [abs32 ctx.taken], 1 (no flags touched), then exit.
        let taken = (base + CTX_OFF as u64 + CTX_TAKEN) as u32;
        let pad: Vec<u8> = if m32 {
            let mut v = vec![0xC6, 0x05];
            v.extend_from_slice(&taken.to_le_bytes());
            v.push(1);
            v
        } else {
            let mut v = vec![0xC6, 0x04, 0x25];
            v.extend_from_slice(&taken.to_le_bytes());
            v.push(1);
            v
        };
        code[TAKEN_OFF..TAKEN_OFF + pad.len()].copy_from_slice(&pad);
        exit(&mut code, TAKEN_OFF + pad.len());
        code
    }

    /// Runs the slot image (one instruction) natively on `state` in the current slot; 32-bit
    /// runs use EAX..EDI and ESP in compatibility mode. Returns (signal, branch taken).
    pub(super) fn run(&mut self, code: &[u8; SLOT_LEN], state: &mut State, bits: u32) -> (u64, bool) {
        let slot = self.slot_addr();
        let m32 = bits != 64;
        // SAFETY: the slot lies inside the RWX thunk region owned by `self`.
        unsafe {
            std::ptr::copy_nonoverlapping(code.as_ptr(), self.thunk.add((slot - self.base()) as usize), SLOT_LEN)
        };
        let n = if m32 { 8 } else { 16 };
        let base = self.base();
        let c = self.ctx();
        for k in 0..16 {
            c.gpr[k] = if k < n { state.gpr[k] } else { 0 };
        }
        c.rflags = (state.rflags & CMP_FLAGS) | 2;
        c.sig = 0;
        c.taken = 0;
        c.bits = u64::from(bits);
        c.far32 = if bits == 16 { (slot - base) | (CODE16_SEL << 32) } else { slot | (USER32_CS << 32) };
        c.target64 = slot;
        let entry = match bits {
            16 => PRO16_OFF,
            32 => PRO32_OFF,
            _ => PRO64_OFF,
        };
        // SAFETY: the thunk is complete code with the C ABI: it saves the callee-saved
        // registers and the host RSP, runs the instruction with the guest's registers (the
        // generator keeps every memory access, the stack included, inside the scratch
        // mapping; faults go to the registered handler, on the alternate signal stack),
        // then restores the host RSP and the callee-saved registers and clears DF.
        unsafe {
            let f: extern "C" fn() = std::mem::transmute(self.thunk.add(entry));
            f();
        }
        let c = *self.ctx();
        for k in 0..n {
            state.gpr[k] = if m32 { c.gpr[k] & 0xFFFF_FFFF } else { c.gpr[k] };
        }
        state.rflags = c.rflags & CMP_FLAGS;
        (c.sig, c.taken != 0)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        REGIONS[self.region].store(0, Ordering::SeqCst);
        let ss = libc::stack_t { ss_sp: std::ptr::null_mut(), ss_flags: libc::SS_DISABLE, ss_size: 0 };
        // SAFETY: disabling this thread's alternate stack before it is freed; unmapping the
        // two mappings created in `new`, no longer referenced.
        unsafe {
            libc::sigaltstack(&ss, std::ptr::null_mut());
            libc::munmap(self.thunk as *mut libc::c_void, THUNK_LEN);
            libc::munmap(self.scratch as *mut libc::c_void, SCRATCH_LEN);
        }
    }
}

// ------------------------------------------------------------------------------------------
// The guest side.
// ------------------------------------------------------------------------------------------

/// Guest physical region of the guest's system tables (GDT, IDT, TSSs), its exception handlers
/// and ring-0 stacks: the engines deliver a fault through the IDT like any other run, and the
/// harness tells which vector from where the CPU landed. The host has no such region.
const SYS: u64 = 0x0010_0000;
const SYS_LEN: u64 = 0x1_0000;
const GDT_OFF: u64 = 0x0;
const TSS64_OFF: u64 = 0x100;
const TSS32_OFF: u64 = 0x200;
const IDT64_OFF: u64 = 0x1000;
const IDT32_OFF: u64 = 0x2000;
/// Handler of vector v at `HANDLERS + v * 16`: `jmp $` (the run ends there at its budget).
const HANDLERS: u64 = SYS + 0x3000;
const RING0_STACK64: u64 = SYS + 0xF000;
const RING0_STACK32: u64 = SYS + 0xE000;
/// GDT selectors of the ring-0 handler segments (the test's own code and data segments are
/// loaded into the CPU directly and never reloaded).
const K_CODE64: u16 = 0x08;
const K_DATA: u16 = 0x10;
const K_CODE32: u16 = 0x18;
const TSS64_SEL: u16 = 0x20;
const TSS32_SEL: u16 = 0x30;
/// Instructions each step may take: the instruction (REP strings: up to 20 iterations), then
/// the `jmp $` it lands on spins until the budget ends.
const STEP_BUDGET: u64 = 64;

fn gdt_desc(base: u64, limit: u64, access: u64, flags: u64) -> u64 {
    (limit & 0xFFFF)
        | ((base & 0xFF_FFFF) << 16)
        | (access << 40)
        | (((limit >> 16) & 0xF) << 48)
        | (flags << 52)
        | (((base >> 24) & 0xFF) << 56)
}

/// Vectors that push an error code.
fn has_error_code(v: u64) -> bool {
    matches!(v, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

fn exception_of(v: u64) -> Exception {
    match v {
        0 => Exception::DivideError,
        1 => Exception::Debug,
        3 => Exception::Breakpoint,
        4 => Exception::Overflow,
        5 => Exception::BoundRange,
        6 => Exception::InvalidOpcode,
        7 => Exception::DeviceNotAvailable,
        8 => Exception::DoubleFault,
        10 => Exception::InvalidTss(0),
        11 => Exception::SegmentNotPresent(0),
        12 => Exception::StackFault(0),
        14 => Exception::PageFault { addr: 0, code: 0 },
        16 => Exception::FloatingPoint,
        17 => Exception::AlignmentCheck,
        19 => Exception::SimdFloatingPoint,
        _ => Exception::GeneralProtection(0),
    }
}

/// How a [`Guest`] splits each step's budget into runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slicing {
    /// One run of the whole step budget.
    Whole,
    /// Usually one run; one step in four in random slices (from 1 instruction up), so runs
    /// end inside blocks and blocks are entered part-way through a step.
    Sliced,
}

/// The engine side: guest memory mapping the thunk region and the scratch area at the host's
/// addresses, and one CPU state per code size, run by any [`ExecutionEngine`].
struct Guest<E: ExecutionEngine> {
    engine: E,
    /// The CPU of the current case: 64-bit mode, 32-bit or 16-bit protected mode.
    cpu: CpuState,
    /// The CPUs of the other modes, swapped in by `set_mode`.
    parked: [Option<CpuState>; 3],
    cur: usize,
    m32: bool,
    bus: RamBus,
    scratch_backing: usize,
    slicing: Slicing,
    /// Runs that ended before the step's budget (statistics).
    pub(super) partial_runs: u64,
}

impl<E: ExecutionEngine> Guest<E> {
    fn new(engine: E, slicing: Slicing, thunk_addr: u64, scratch_addr: u64) -> Guest<E> {
        let mut mem = PhysMemory::new(THUNK_LEN as u64 + SCRATCH_LEN as u64 + SYS_LEN).unwrap();
        mem.map_ram(thunk_addr, THUNK_LEN as u64).unwrap();
        let scratch_backing = mem.map_ram(scratch_addr, SCRATCH_LEN as u64).unwrap() as usize;
        mem.map_ram(SYS, SYS_LEN).unwrap();
        // System tables: ring-0 code and data, a 64-bit and a 32-bit TSS (ring-0 stacks), an
        // IDT of each format with every vector on its own `jmp $` handler.
        let gdt = [
            0,
            gdt_desc(0, 0xFFFFF, 0x9A, 0xA), // K_CODE64
            gdt_desc(0, 0xFFFFF, 0x92, 0xC), // K_DATA
            gdt_desc(0, 0xFFFFF, 0x9A, 0xC), // K_CODE32
            gdt_desc(SYS + TSS64_OFF, 0x67, 0x8B, 0),
            0,
            gdt_desc(SYS + TSS32_OFF, 0x67, 0x8B, 0),
        ];
        let w = |mem: &mut PhysMemory, at: u64, bytes: &[u8]| mem.load(GuestPhysAddr(at), bytes).unwrap();
        for (k, d) in gdt.iter().enumerate() {
            w(&mut mem, SYS + GDT_OFF + 8 * k as u64, &d.to_le_bytes());
        }
        w(&mut mem, SYS + TSS64_OFF + 4, &RING0_STACK64.to_le_bytes());
        w(&mut mem, SYS + TSS32_OFF + 4, &(RING0_STACK32 as u32).to_le_bytes());
        w(&mut mem, SYS + TSS32_OFF + 8, &u32::from(K_DATA).to_le_bytes());
        for v in 0..256u64 {
            let h = HANDLERS + v * 16;
            w(&mut mem, h, &[0xEB, 0xFE]);
            // Interrupt gates, DPL 3 (INT n from ring 3 reaches them too).
            let lo = (h & 0xFFFF) | (u64::from(K_CODE64) << 16) | (0xEE << 40) | ((h >> 16) & 0xFFFF) << 48;
            w(&mut mem, SYS + IDT64_OFF + 16 * v, &lo.to_le_bytes());
            w(&mut mem, SYS + IDT64_OFF + 16 * v + 8, &(h >> 32).to_le_bytes());
            let g32 = (h & 0xFFFF) | (u64::from(K_CODE32) << 16) | (0xEE << 40) | ((h >> 16) & 0xFFFF) << 48;
            w(&mut mem, SYS + IDT32_OFF + 8 * v, &g32.to_le_bytes());
        }
        let tables = |c: &mut CpuState, idt_off: u64, idt_len: u64, tss_sel: u16, tss_off: u64| {
            c.gdtr = DescriptorTable { base: SYS + GDT_OFF, limit: 8 * gdt.len() as u16 - 1 };
            c.idtr = DescriptorTable { base: SYS + idt_off, limit: (idt_len * 256 - 1) as u16 };
            c.tr = Segment { selector: tss_sel, attr: 0x8B, limit: 0x67, base: SYS + tss_off };
        };
        // The host runs at CPL 3 with IF set and IOPL 0: PUSHF must see IF, POPF must not
        // change it.
        let mut cpu = CpuState::new_flat64();
        cpu.rflags |= IF;
        cpu.cpl = 3;
        tables(&mut cpu, IDT64_OFF, 16, TSS64_SEL, TSS64_OFF);
        let mut c32 = CpuState::new_flat32();
        c32.rflags |= IF;
        c32.cpl = 3;
        tables(&mut c32, IDT32_OFF, 8, TSS32_SEL, TSS32_OFF);
        // 16-bit: the LDT segments the host uses (code based at the thunk region, data and
        // stack at the scratch area with its size as the limit), DPL 3.
        let mut c16 = c32.clone();
        let data =
            Segment { selector: DATA16_SEL as u16, attr: 0xF3, limit: SCRATCH_LEN as u32 - 1, base: scratch_addr };
        c16.seg = [data; 6];
        c16.seg[SegReg::Cs as usize] =
            Segment { selector: CODE16_SEL as u16, attr: 0xFB, limit: 0xFFFF, base: thunk_addr };
        Guest {
            engine,
            cpu,
            parked: [None, Some(c32), Some(c16)],
            cur: 0,
            m32: false,
            bus: RamBus::new(mem),
            scratch_backing,
            slicing,
            partial_runs: 0,
        }
    }

    fn set_mode(&mut self, bits: u32) {
        let idx = match bits {
            64 => 0,
            32 => 1,
            _ => 2,
        };
        if idx != self.cur {
            let new = self.parked[idx].take().unwrap();
            let old = std::mem::replace(&mut self.cpu, new);
            self.parked[self.cur] = Some(old);
            self.cur = idx;
            self.m32 = bits != 64;
        }
    }

    fn scratch(&mut self) -> &mut [u8] {
        let b = self.scratch_backing;
        &mut self.bus.mem.backing_mut()[b..b + SCRATCH_LEN]
    }

    fn state(&self) -> State {
        let mut gpr = self.cpu.gpr;
        if self.m32 {
            for g in gpr.iter_mut().take(8) {
                *g &= 0xFFFF_FFFF;
            }
            for g in gpr.iter_mut().skip(8) {
                *g = 0;
            }
        }
        State { gpr, rflags: self.cpu.rflags() & CMP_FLAGS }
    }

    /// Makes the engine's registers and flags equal to `s`. Flags are only touched when they
    /// differ, so lazily held flags survive.
    fn sync_to(&mut self, s: &State) {
        self.cpu.gpr = s.gpr;
        let cur = self.cpu.rflags();
        if cur & CMP_FLAGS != s.rflags & CMP_FLAGS {
            self.cpu.set_rflags((cur & !CMP_FLAGS) | (s.rflags & CMP_FLAGS));
        }
    }

    fn read(&mut self, addr: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.bus.mem.read(GuestPhysAddr(addr), &mut b[..len]).unwrap();
        u64::from_le_bytes(b)
    }

    /// Executes the guest image `code` (the slot image with `jmp $` where the host exits) at
    /// `rip` (the host's slot address) with [`STEP_BUDGET`] instructions; returns the result and
    /// the linear address the instruction left for (on a fault: its own). `wrapped`: slots are
    /// being reused, drop cached code. `slicer` picks the slices of a sliced run.
    fn run(&mut self, code: &[u8], rip: u64, wrapped: bool, slicer: &mut Rng) -> (Result<(), Exception>, u64) {
        if wrapped {
            self.engine.invalidate_phys(0, u64::MAX);
        }
        self.bus.mem.load(GuestPhysAddr(rip), code).unwrap();
        let seg = self.cpu.seg;
        let cpl = self.cpu.cpl;
        let pre_rflags = self.cpu.rflags();
        let cs_base = seg[SegReg::Cs as usize].base;
        self.cpu.rip = rip - cs_base;
        let end = self.cpu.icount + STEP_BUDGET;
        let sliced = self.slicing == Slicing::Sliced && slicer.chance(25);
        while self.cpu.icount < end {
            let left = end - self.cpu.icount;
            let n = if sliced { (1 + slicer.below(8)).min(left) } else { left };
            let x = self.engine.run(&mut self.cpu, &mut self.bus, n);
            if n < STEP_BUDGET {
                self.partial_runs += 1;
            }
            assert_eq!(x, RunExit::BudgetExhausted, "{}: the step must spin at its end", self.engine.name());
        }
        let at = self.cpu.seg[SegReg::Cs as usize].base + self.cpu.rip;
        if !(HANDLERS..HANDLERS + 256 * 16).contains(&at) {
            return (Ok(()), at);
        }
        // A fault: read the frame on the ring-0 stack, then put the ring-3 state back.
        let v = (at - HANDLERS) / 16;
        let w: u64 = if self.cur == 0 { 8 } else { 4 };
        let mut sp = self.cpu.gpr[4] & if w == 8 { u64::MAX } else { 0xFFFF_FFFF };
        if has_error_code(v) {
            sp += w;
        }
        let frame_rip = self.read(sp, w as usize);
        let frame_rflags = self.read(sp + 2 * w, w as usize);
        let frame_rsp = self.read(sp + 3 * w, w as usize);
        self.cpu.seg = seg;
        self.cpu.cpl = cpl;
        self.cpu.gpr[4] = if w == 8 { frame_rsp } else { (self.cpu.gpr[4] & !0xFFFF_FFFF) | frame_rsp };
        self.cpu.set_rflags((pre_rflags & !CMP_FLAGS) | (frame_rflags & CMP_FLAGS));
        self.cpu.rip = frame_rip;
        self.cpu.refresh_mode_key();
        (Err(exception_of(v)), cs_base + frame_rip)
    }
}

/// The guest's image of a slot: where the host's code exits (after the instruction, and at
/// the taken-branch pad) the guest spins on `jmp $` until its run ends, so the instruction and
/// that jump form one block for a translator.
fn guest_image(bytes: &[u8]) -> [u8; SLOT_LEN] {
    let mut code = [0xCCu8; SLOT_LEN];
    code[..bytes.len()].copy_from_slice(bytes);
    code[bytes.len()..bytes.len() + 2].copy_from_slice(&[0xEB, 0xFE]);
    code[TAKEN_OFF..TAKEN_OFF + 2].copy_from_slice(&[0xEB, 0xFE]);
    code
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct State {
    gpr: [u64; 16],
    rflags: u64,
}

// ------------------------------------------------------------------------------------------
// Instruction generation.
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Entry {
    Code(Code),
    /// (kind, element bytes): 0 MOVS, 1 STOS, 2 LODS, 3 CMPS, 4 SCAS.
    Str(u8, u32),
}

fn mnemonic_set() -> Vec<Mnemonic> {
    use Mnemonic as M;
    let mut v = vec![
        M::Mov,
        M::Movzx,
        M::Movsx,
        M::Movsxd,
        M::Lea,
        M::Xchg,
        M::Add,
        M::Adc,
        M::Sub,
        M::Sbb,
        M::Cmp,
        M::Inc,
        M::Dec,
        M::Neg,
        M::And,
        M::Or,
        M::Xor,
        M::Not,
        M::Test,
        M::Shl,
        M::Sal,
        M::Shr,
        M::Sar,
        M::Rol,
        M::Ror,
        M::Rcl,
        M::Rcr,
        M::Shld,
        M::Shrd,
        M::Mul,
        M::Imul,
        M::Div,
        M::Idiv,
        M::Bt,
        M::Bts,
        M::Btr,
        M::Btc,
        M::Bsf,
        M::Bsr,
        M::Bswap,
        M::Cbw,
        M::Cwde,
        M::Cdqe,
        M::Cwd,
        M::Cdq,
        M::Cqo,
        M::Cmpxchg,
        M::Cmpxchg8b,
        M::Cmpxchg16b,
        M::Xadd,
        M::Lahf,
        M::Sahf,
        M::Clc,
        M::Stc,
        M::Cmc,
        M::Cld,
        M::Std,
        M::Nop,
        M::Xlatb,
        M::Seto,
        M::Setno,
        M::Setb,
        M::Setae,
        M::Sete,
        M::Setne,
        M::Setbe,
        M::Seta,
        M::Sets,
        M::Setns,
        M::Setp,
        M::Setnp,
        M::Setl,
        M::Setge,
        M::Setle,
        M::Setg,
        M::Cmovo,
        M::Cmovno,
        M::Cmovb,
        M::Cmovae,
        M::Cmove,
        M::Cmovne,
        M::Cmovbe,
        M::Cmova,
        M::Cmovs,
        M::Cmovns,
        M::Cmovp,
        M::Cmovnp,
        M::Cmovl,
        M::Cmovge,
        M::Cmovle,
        M::Cmovg,
    ];
    if std::arch::is_x86_feature_detected!("lzcnt") {
        v.push(M::Lzcnt);
    } else {
        println!("differential: host has no LZCNT, not testing it");
    }
    if std::arch::is_x86_feature_detected!("bmi1") {
        v.push(M::Tzcnt);
    } else {
        println!("differential: host has no BMI1, not testing TZCNT");
    }
    if std::arch::is_x86_feature_detected!("popcnt") {
        v.push(M::Popcnt);
    } else {
        println!("differential: host has no POPCNT, not testing it");
    }
    if let Ok(extra) = std::env::var("FERRO_DIFF_EXTRA") {
        // Probe mnemonics that are not in the default set, e.g. FERRO_DIFF_EXTRA=Movbe,Adcx.
        for name in extra.split(',') {
            if let Some(m) = Mnemonic::values().find(|m| format!("{m:?}").eq_ignore_ascii_case(name.trim())) {
                v.push(m);
            }
        }
    }
    v
}

fn branch_and_stack_set() -> Vec<Mnemonic> {
    use Mnemonic as M;
    vec![
        M::Jo,
        M::Jno,
        M::Jb,
        M::Jae,
        M::Je,
        M::Jne,
        M::Jbe,
        M::Ja,
        M::Js,
        M::Jns,
        M::Jp,
        M::Jnp,
        M::Jl,
        M::Jge,
        M::Jle,
        M::Jg,
        M::Jmp,
        M::Call,
        M::Ret,
        M::Loop,
        M::Loope,
        M::Loopne,
        M::Jcxz,
        M::Jecxz,
        M::Jrcxz,
        M::Push,
        M::Pop,
        M::Pushfq,
        M::Popfq,
        M::Enter,
        M::Leave,
    ]
}

fn is_branch(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::Jo
            | M::Jno
            | M::Jb
            | M::Jae
            | M::Je
            | M::Jne
            | M::Jbe
            | M::Ja
            | M::Js
            | M::Jns
            | M::Jp
            | M::Jnp
            | M::Jl
            | M::Jge
            | M::Jle
            | M::Jg
            | M::Jmp
            | M::Call
            | M::Ret
            | M::Loop
            | M::Loope
            | M::Loopne
            | M::Jcxz
            | M::Jecxz
            | M::Jrcxz
    )
}

fn handled_kind(k: K) -> bool {
    matches!(
        k,
        K::r8_or_mem
            | K::r16_or_mem
            | K::r32_or_mem
            | K::r64_or_mem
            | K::r8_reg
            | K::r8_opcode
            | K::r16_reg
            | K::r16_opcode
            | K::r16_rm
            | K::r32_reg
            | K::r32_opcode
            | K::r32_rm
            | K::r32_vvvv
            | K::r64_reg
            | K::r64_opcode
            | K::r64_rm
            | K::r64_vvvv
            | K::mem
            | K::mem_offs
            | K::al
            | K::cl
            | K::ax
            | K::eax
            | K::rax
            | K::imm8
            | K::imm8_const_1
            | K::imm8sex16
            | K::imm8sex32
            | K::imm8sex64
            | K::imm16
            | K::imm32
            | K::imm32sex64
            | K::imm64
            | K::seg_rBX_al
            | K::br16_1
            | K::br16_2
            | K::br32_1
            | K::br64_1
            | K::br32_4
            | K::br64_4
    )
}

fn build_table(bits: u32) -> Vec<Entry> {
    let m32 = bits != 64;
    let mut set = mnemonic_set();
    set.extend(branch_and_stack_set());
    if m32 {
        use Mnemonic as M;
        set.extend([
            M::Daa,
            M::Das,
            M::Aaa,
            M::Aas,
            M::Aam,
            M::Aad,
            M::Push,
            M::Pop,
            M::Pusha,
            M::Pushad,
            M::Popa,
            M::Popad,
            M::Pushf,
            M::Pushfd,
            M::Popf,
            M::Popfd,
            M::Enter,
            M::Leave,
            M::Bound,
        ]);
    }
    let mut t = Vec::new();
    for code in Code::values() {
        let m = code.mnemonic();
        if !set.contains(&m) {
            continue;
        }
        let oc = code.op_code();
        let in_mode = match bits {
            16 => oc.mode16(),
            32 => oc.mode32(),
            _ => oc.mode64(),
        };
        if !in_mode || !matches!(oc.encoding(), EncodingKind::Legacy | EncodingKind::VEX) {
            continue;
        }
        if !oc.op_kinds().iter().all(|&k| handled_kind(k)) {
            continue;
        }
        // Near branches with a 16-bit operand size truncate the target to 16 bits: it would
        // leave the slot (and the host's address space).
        if is_branch(m) && oc.operand_size() == 16 && bits != 16 {
            continue;
        }
        // Far JMP/CALL through memory: no far targets here.
        if matches!(m, Mnemonic::Jmp | Mnemonic::Call) && oc.op_kinds().contains(&K::mem) {
            continue;
        }
        // BSWAP r16 is undefined.
        if code == Code::Bswap_r16 {
            continue;
        }
        t.push(Entry::Code(code));
    }
    for kind in 0..5u8 {
        for size in [1u32, 2, 4, 8] {
            t.push(Entry::Str(kind, size));
        }
    }
    t
}

fn gpr_reg(bits: u32, idx: usize) -> Register {
    match bits {
        64 => Register::RAX + idx as u32,
        32 => Register::EAX + idx as u32,
        16 => Register::AX + idx as u32,
        _ => {
            if idx < 4 {
                Register::AL + idx as u32
            } else {
                Register::SPL + (idx - 4) as u32
            }
        }
    }
}

/// (GPR index, is a high-byte register) of a general-purpose register.
fn gpr_index(r: Register) -> (usize, bool) {
    let n = r as u32;
    if r.is_gpr64() {
        ((n - Register::RAX as u32) as usize, false)
    } else if r.is_gpr32() {
        ((n - Register::EAX as u32) as usize, false)
    } else if r.is_gpr16() {
        ((n - Register::AX as u32) as usize, false)
    } else if (Register::AH as u32..=Register::BH as u32).contains(&n) {
        ((n - Register::AH as u32) as usize, true)
    } else if n < Register::AH as u32 {
        ((n - Register::AL as u32) as usize, false)
    } else {
        ((n - Register::SPL as u32 + 4) as usize, false)
    }
}

/// A random GPR index other than RSP.
fn rand_gpr(rng: &mut Rng) -> usize {
    let n = if rng.m32 { 8 } else { 16 };
    loop {
        let r = rng.below(n) as usize;
        if r != 4 {
            return r;
        }
    }
}

fn rand_reg(rng: &mut Rng, bits: u32) -> Register {
    if bits == 8 && rng.m32 {
        // AL, CL, DL, BL, AH, CH, DH, BH.
        return Register::AL + rng.below(8) as u32;
    }
    if bits == 8 && rng.chance(20) {
        // AH, CH, DH, BH.
        return Register::AH + rng.below(4) as u32;
    }
    gpr_reg(bits, rand_gpr(rng))
}

/// A generated instruction plus the register and memory adjustments that make its memory
/// operands land in the scratch area (applied to both sides before it runs).
struct Gen {
    ins: Instruction,
    fix_regs: Vec<(usize, u64)>,
    fix_mem: Vec<(u64, u64, usize)>,
    /// Has a memory operand (compare the scratch area afterwards).
    touches_mem: bool,
    /// Memory target address of the memory operand, if any.
    mem_addr: Option<u64>,
}

fn set_reg_val(fix: &mut Vec<(usize, u64)>, idx: usize, v: u64) {
    fix.retain(|(i, _)| *i != idx);
    fix.push((idx, v));
}

/// Builds memory operand `n` of `ins` pointing at `target`.
fn gen_mem(rng: &mut Rng, ins: &mut Instruction, n: u32, target: u64, offs: bool, fix: &mut Vec<(usize, u64)>) {
    ins.set_op_kind(n, OpKind::Memory);
    ins.set_segment_prefix(Register::None);
    let target = target - rng.data_base;
    let a16 = rng.m16 && rng.chance(70);
    if offs {
        ins.set_memory_base(Register::None);
        ins.set_memory_index(Register::None);
        ins.set_memory_index_scale(1);
        let a32 = rng.m32 || rng.chance(30);
        ins.set_memory_displ_size(if a16 {
            2
        } else if a32 {
            4
        } else {
            8
        });
        ins.set_memory_displacement64(target);
        return;
    }
    if a16 {
        // [BX+SI], [BX+DI], [BP+SI], [BP+DI], [SI], [DI], [BP], [BX] or [disp16]; the
        // registers' upper halves are garbage the 16-bit address must ignore.
        const COMBOS: [(usize, usize); 9] =
            [(3, 6), (3, 7), (5, 6), (5, 7), (6, 99), (7, 99), (5, 99), (3, 99), (99, 99)];
        let (b, i) = COMBOS[rng.below(9) as usize];
        let disp: i64 = match rng.below(3) {
            0 => 0,
            1 => rng.below(256) as i64 - 128,
            _ => rng.below(0x10000) as i64 - 0x8000,
        };
        let up = |rng: &mut Rng| rng.next() & 0xFFFF_0000;
        let reg16 = |r: usize| if r == 99 { Register::None } else { Register::AX + r as u32 };
        if b == 99 {
            ins.set_memory_base(Register::None);
            ins.set_memory_index(Register::None);
            ins.set_memory_index_scale(1);
            ins.set_memory_displ_size(2);
            ins.set_memory_displacement64(target & 0xFFFF);
            return;
        }
        let rest = (target as i64).wrapping_sub(disp) as u64;
        if i == 99 {
            let v = up(rng) | (rest & 0xFFFF);
            set_reg_val(fix, b, v);
        } else {
            let bv = rng.below(0x10000);
            let v = up(rng) | bv;
            set_reg_val(fix, b, v);
            let v = up(rng) | (rest.wrapping_sub(bv) & 0xFFFF);
            set_reg_val(fix, i, v);
        }
        ins.set_memory_base(reg16(b));
        ins.set_memory_index(reg16(i));
        ins.set_memory_index_scale(1);
        ins.set_memory_displ_size(if disp == 0 && rng.chance(70) { 0 } else { 1 });
        ins.set_memory_displacement64(disp as u16 as u64);
        return;
    }
    let a32 = rng.m32 || rng.chance(25);
    let abits = if a32 { 32 } else { 64 };
    let garbage = |rng: &mut Rng| if a32 && !rng.m32 { rng.next() << 32 } else { 0 };
    let has_base = rng.chance(85);
    let has_index = rng.chance(45) || !has_base && rng.chance(50);
    let scale = [1u64, 2, 4, 8][rng.below(4) as usize];
    let disp: i64 = match rng.below(4) {
        0 => 0,
        1 => rng.below(256) as i64 - 128,
        2 => rng.below(0x1000) as i64 - 0x800,
        _ => rng.below(16) as i64 - 8,
    };
    let base = if has_base { rand_gpr(rng) } else { 99 };
    let index = if has_index { rand_gpr(rng) } else { 99 };
    let mut disp = disp;
    if has_base && has_index && base == index {
        // v * (1 + scale) + disp = target.
        let k = 1 + scale as i64;
        let rem = (target as i64 - disp).rem_euclid(k);
        disp += rem;
        let v = (target as i64 - disp) / k;
        set_reg_val(fix, base, (v as u64 & 0xFFFF_FFFF) | garbage(rng));
    } else {
        let iv: i64 = if has_index { rng.below(512) as i64 - 256 } else { 0 };
        if has_index {
            set_reg_val(fix, index, (iv as u64 & if a32 { 0xFFFF_FFFF } else { u64::MAX }) | garbage(rng));
        }
        if has_base {
            let bv = (target as i64).wrapping_sub(iv * scale as i64).wrapping_sub(disp);
            set_reg_val(fix, base, (bv as u64 & if a32 { 0xFFFF_FFFF } else { u64::MAX }) | garbage(rng));
        } else {
            disp = (target as i64).wrapping_sub(iv * scale as i64);
        }
    }
    ins.set_memory_base(if has_base { gpr_reg(abits, base) } else { Register::None });
    ins.set_memory_index(if has_index { gpr_reg(abits, index) } else { Register::None });
    ins.set_memory_index_scale(if has_index { scale as u32 } else { 1 });
    if !has_base && !has_index {
        ins.set_memory_displ_size(if a32 { 4 } else { 8 });
    } else {
        ins.set_memory_displ_size(if disp == 0 && rng.chance(70) { 0 } else { 1 });
    }
    let d = if a32 { disp as i32 as u32 as u64 } else { disp as u64 };
    ins.set_memory_displacement64(d);
}

fn imm_for(rng: &mut Rng, ins: &mut Instruction, n: u32, k: K, count_op: bool) {
    let v = if count_op {
        // Shift counts: mostly small and at the boundaries.
        match rng.below(4) {
            0 => rng.below(3),
            1 => [7u64, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65][rng.below(12) as usize],
            2 => rng.below(256),
            _ => rng.below(66),
        }
    } else {
        rng.value()
    };
    match k {
        K::imm8 => {
            ins.set_op_kind(n, OpKind::Immediate8);
            ins.set_immediate8(v as u8);
        }
        K::imm8_const_1 => {
            ins.set_op_kind(n, OpKind::Immediate8);
            ins.set_immediate8(1);
        }
        K::imm8sex16 => {
            ins.set_op_kind(n, OpKind::Immediate8to16);
            ins.set_immediate8to16(v as i8 as i16);
        }
        K::imm8sex32 => {
            ins.set_op_kind(n, OpKind::Immediate8to32);
            ins.set_immediate8to32(v as i8 as i32);
        }
        K::imm8sex64 => {
            ins.set_op_kind(n, OpKind::Immediate8to64);
            ins.set_immediate8to64(v as i8 as i64);
        }
        K::imm16 => {
            ins.set_op_kind(n, OpKind::Immediate16);
            ins.set_immediate16(v as u16);
        }
        K::imm32 => {
            ins.set_op_kind(n, OpKind::Immediate32);
            ins.set_immediate32(v as u32);
        }
        K::imm32sex64 => {
            ins.set_op_kind(n, OpKind::Immediate32to64);
            ins.set_immediate32to64(v as i32 as i64);
        }
        _ => {
            ins.set_op_kind(n, OpKind::Immediate64);
            ins.set_immediate64(v);
        }
    }
}

fn kind_bits(k: K) -> u32 {
    match k {
        K::r8_or_mem | K::r8_reg | K::r8_opcode | K::al | K::cl => 8,
        K::r16_or_mem | K::r16_reg | K::r16_opcode | K::r16_rm | K::ax => 16,
        K::r32_or_mem | K::r32_reg | K::r32_opcode | K::r32_rm | K::r32_vvvv | K::eax => 32,
        _ => 64,
    }
}

fn pick_target(rng: &mut Rng, scratch: u64, align: u64) -> u64 {
    if rng.m16 && rng.chance(4) {
        // Straddling the 16-bit data segment's limit: #GP (or #SS) on both sides.
        return scratch + SCRATCH_LEN as u64 - 16 + rng.below(15);
    }
    let t = scratch + 0x1000 + rng.below(0x2000);
    if align > 1 && rng.chance(90) {
        t & !(align - 1)
    } else {
        t
    }
}

/// Reads the current value of a register operand from `s`.
fn reg_value(s: &State, r: Register) -> u64 {
    let (i, high) = gpr_index(r);
    let v = s.gpr[i];
    if high {
        (v >> 8) & 0xFF
    } else {
        v & mask(r.size() as u32 * 8)
    }
}

fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

fn generate(rng: &mut Rng, table: &[Entry], scratch: u64, slot: u64, s: &State, mem: &[u8]) -> Option<Gen> {
    let e = table[rng.below(table.len() as u64) as usize];
    let mut g = Gen {
        ins: Instruction::default(),
        fix_regs: Vec::new(),
        fix_mem: Vec::new(),
        touches_mem: false,
        mem_addr: None,
    };
    match e {
        Entry::Str(kind, size) => {
            let a16 = rng.m16 && rng.chance(70);
            let a32 = !a16 && (rng.m32 || rng.chance(30));
            let asz = if a16 {
                16
            } else if a32 {
                32
            } else {
                64
            };
            let cmp = kind == 3 || kind == 4;
            let rep = match rng.below(3) {
                0 => RepPrefixKind::None,
                1 => RepPrefixKind::Repe,
                _ if cmp => RepPrefixKind::Repne,
                _ => RepPrefixKind::Repe,
            };
            let seg = Register::None;
            let ins = match (kind, size) {
                (0, 1) => Instruction::with_movsb(asz, seg, rep),
                (0, 2) => Instruction::with_movsw(asz, seg, rep),
                (0, 4) => Instruction::with_movsd(asz, seg, rep),
                (0, _) => Instruction::with_movsq(asz, seg, rep),
                (1, 1) => Instruction::with_stosb(asz, rep),
                (1, 2) => Instruction::with_stosw(asz, rep),
                (1, 4) => Instruction::with_stosd(asz, rep),
                (1, _) => Instruction::with_stosq(asz, rep),
                (2, 1) => Instruction::with_lodsb(asz, seg, rep),
                (2, 2) => Instruction::with_lodsw(asz, seg, rep),
                (2, 4) => Instruction::with_lodsd(asz, seg, rep),
                (2, _) => Instruction::with_lodsq(asz, seg, rep),
                (3, 1) => Instruction::with_cmpsb(asz, seg, rep),
                (3, 2) => Instruction::with_cmpsw(asz, seg, rep),
                (3, 4) => Instruction::with_cmpsd(asz, seg, rep),
                (3, _) => Instruction::with_cmpsq(asz, seg, rep),
                (_, 1) => Instruction::with_scasb(asz, rep),
                (_, 2) => Instruction::with_scasw(asz, rep),
                (_, 4) => Instruction::with_scasd(asz, rep),
                (_, _) => Instruction::with_scasq(asz, rep),
            }
            .ok()?;
            g.ins = ins;
            let garbage = |rng: &mut Rng| {
                if a16 {
                    rng.next() & 0xFFFF_0000
                } else if a32 && !rng.m32 {
                    rng.next() << 32
                } else {
                    0
                }
            };
            let si = scratch + 0x1800 + rng.below(0x1000);
            let di = if rng.chance(20) { si + rng.below(32) - 16 } else { scratch + 0x1800 + rng.below(0x1000) };
            let count = if rng.chance(10) { 0 } else { rng.below(20) };
            let g1 = garbage(rng);
            let g2 = garbage(rng);
            let g3 = garbage(rng);
            set_reg_val(&mut g.fix_regs, 6, (si - rng.data_base) | g1);
            set_reg_val(&mut g.fix_regs, 7, (di - rng.data_base) | g2);
            set_reg_val(&mut g.fix_regs, 1, count | g3);
            if cmp && rng.chance(50) {
                // Make some elements equal so REPE/REPNE stop at interesting places.
                let n = rng.below(20) as usize * size as usize;
                for k in 0..n {
                    let b = mem[(si - scratch) as usize + k];
                    g.fix_mem.push((di + k as u64, u64::from(b), 1));
                }
                if kind == 4 {
                    let v = s.gpr[0];
                    let pat = mem[(di - scratch) as usize..][..size as usize].to_vec();
                    let mut x = 0u64;
                    for (k, b) in pat.iter().enumerate() {
                        x |= u64::from(*b) << (8 * k);
                    }
                    set_reg_val(&mut g.fix_regs, 0, (v & !mask(size * 8)) | x);
                }
            }
            g.touches_mem = true;
            Some(g)
        }
        Entry::Code(code) => {
            let oc = code.op_code();
            let mut ins = Instruction::default();
            ins.set_code(code);
            let m = code.mnemonic();
            let is_shift = matches!(
                m,
                Mnemonic::Shl
                    | Mnemonic::Sal
                    | Mnemonic::Shr
                    | Mnemonic::Sar
                    | Mnemonic::Rol
                    | Mnemonic::Ror
                    | Mnemonic::Rcl
                    | Mnemonic::Rcr
                    | Mnemonic::Shld
                    | Mnemonic::Shrd
            );
            let align = if m == Mnemonic::Cmpxchg16b { 16 } else { 1 };
            let target = pick_target(rng, scratch, align);
            let mut mem_op = None;
            for n in 0..oc.op_count() {
                let k = oc.op_kind(n);
                match k {
                    K::r8_or_mem | K::r16_or_mem | K::r32_or_mem | K::r64_or_mem => {
                        if rng.chance(45) {
                            gen_mem(rng, &mut ins, n, target, false, &mut g.fix_regs);
                            mem_op = Some(n);
                        } else {
                            ins.set_op_kind(n, OpKind::Register);
                            ins.set_op_register(n, rand_reg(rng, kind_bits(k)));
                        }
                    }
                    K::mem => {
                        gen_mem(rng, &mut ins, n, target, false, &mut g.fix_regs);
                        mem_op = Some(n);
                    }
                    K::mem_offs => {
                        gen_mem(rng, &mut ins, n, target, true, &mut g.fix_regs);
                        mem_op = Some(n);
                    }
                    K::br16_1 | K::br16_2 => {
                        ins.set_op_kind(n, OpKind::NearBranch16);
                        ins.set_near_branch16((slot + TAKEN_OFF as u64 - rng.code_base) as u16);
                    }
                    K::br32_1 | K::br32_4 => {
                        ins.set_op_kind(n, OpKind::NearBranch32);
                        ins.set_near_branch32((slot + TAKEN_OFF as u64 - rng.code_base) as u32);
                    }
                    K::br64_1 | K::br64_4 => {
                        ins.set_op_kind(n, OpKind::NearBranch64);
                        ins.set_near_branch64(slot + TAKEN_OFF as u64);
                    }
                    K::seg_rBX_al => {
                        // XLAT: [rBX + AL].
                        let a16 = rng.m16 && rng.chance(70);
                        let a32 = !a16 && (rng.m32 || rng.chance(30));
                        ins.set_op_kind(n, OpKind::Memory);
                        ins.set_memory_base(if a16 {
                            Register::BX
                        } else if a32 {
                            Register::EBX
                        } else {
                            Register::RBX
                        });
                        ins.set_memory_index(Register::AL);
                        ins.set_memory_displ_size(0);
                        ins.set_memory_index_scale(1);
                        ins.set_segment_prefix(Register::None);
                        let al = s.gpr[0] & 0xFF;
                        let hi = if a16 {
                            rng.next() & 0xFFFF_0000
                        } else if a32 && !rng.m32 {
                            rng.next() << 32
                        } else {
                            0
                        };
                        let bx = (target - rng.data_base - al) & if a16 { 0xFFFF } else { u64::MAX };
                        set_reg_val(&mut g.fix_regs, 3, bx | hi);
                        mem_op = Some(n);
                    }
                    K::r8_reg | K::r8_opcode => {
                        ins.set_op_kind(n, OpKind::Register);
                        ins.set_op_register(n, rand_reg(rng, 8));
                    }
                    K::r16_reg | K::r16_opcode | K::r16_rm => {
                        ins.set_op_kind(n, OpKind::Register);
                        ins.set_op_register(n, rand_reg(rng, 16));
                    }
                    K::r32_reg | K::r32_opcode | K::r32_rm | K::r32_vvvv => {
                        ins.set_op_kind(n, OpKind::Register);
                        ins.set_op_register(n, rand_reg(rng, 32));
                    }
                    K::r64_reg | K::r64_opcode | K::r64_rm | K::r64_vvvv => {
                        ins.set_op_kind(n, OpKind::Register);
                        ins.set_op_register(n, rand_reg(rng, 64));
                    }
                    K::al | K::cl | K::ax | K::eax | K::rax => {
                        let r = match k {
                            K::al => Register::AL,
                            K::cl => Register::CL,
                            K::ax => Register::AX,
                            K::eax => Register::EAX,
                            _ => Register::RAX,
                        };
                        ins.set_op_kind(n, OpKind::Register);
                        ins.set_op_register(n, r);
                    }
                    _ => imm_for(rng, &mut ins, n, k, is_shift && n == oc.op_count() - 1),
                }
            }
            if oc.can_use_lock_prefix() && (mem_op == Some(0) && rng.chance(25) || rng.chance(2)) {
                ins.set_has_lock_prefix(true);
            }
            g.touches_mem = mem_op.is_some();
            g.mem_addr = mem_op.map(|_| target);
            // Per-instruction value adjustments; they must not move an address register.
            let addr_regs: Vec<usize> = g.fix_regs.iter().map(|(r, _)| *r).collect();
            let implicit: &[usize] = match m {
                Mnemonic::Div | Mnemonic::Idiv | Mnemonic::Cmpxchg8b | Mnemonic::Cmpxchg16b => &[0, 2],
                Mnemonic::Cmpxchg => &[0],
                _ if is_shift => &[1],
                _ => &[],
            };
            if implicit.iter().any(|r| addr_regs.contains(r)) {
                return None;
            }
            let bits = if oc.op_count() > 0 { kind_bits(oc.op_kind(0)) } else { 64 };
            let msize = (ins.memory_size().size() as u64).max(1);
            match m {
                Mnemonic::Div | Mnemonic::Idiv => {
                    let d = if rng.chance(5) { 0 } else { rng.value() & mask(bits) };
                    let d = if d == 0 && rng.chance(80) { 3 } else { d };
                    if mem_op.is_some() {
                        g.fix_mem.push((target, d, (bits / 8) as usize));
                    } else {
                        let (i, high) = gpr_index(ins.op0_register());
                        let cur = s.gpr[i];
                        let v = if high {
                            (cur & !0xFF00) | ((d & 0xFF) << 8)
                        } else if bits == 32 {
                            d | (rng.next() << 32)
                        } else {
                            (cur & !mask(bits)) | d
                        };
                        set_reg_val(&mut g.fix_regs, i, v);
                    }
                    if rng.chance(75) && d != 0 {
                        let lo = rng.value() & mask(bits);
                        let hi = if m == Mnemonic::Div {
                            rng.next() % d
                        } else if lo >> (bits - 1) & 1 != 0 {
                            mask(bits)
                        } else {
                            0
                        };
                        if bits == 8 {
                            let v = (s.gpr[0] & !0xFFFF) | (hi << 8) | lo;
                            set_reg_val(&mut g.fix_regs, 0, v);
                        } else {
                            let keep = !mask(bits);
                            set_reg_val(&mut g.fix_regs, 0, (s.gpr[0] & keep) | lo);
                            set_reg_val(&mut g.fix_regs, 2, (s.gpr[2] & keep) | hi);
                        }
                    }
                }
                Mnemonic::Cmpxchg if rng.chance(50) => {
                    let v = if mem_op.is_some() {
                        let off = (target - scratch) as usize;
                        let mut x = 0u64;
                        for k in 0..(bits / 8) as usize {
                            x |= u64::from(mem.get(off + k).copied().unwrap_or(0)) << (8 * k);
                        }
                        x
                    } else {
                        reg_value(s, ins.op0_register())
                    };
                    set_reg_val(&mut g.fix_regs, 0, (s.gpr[0] & !mask(bits)) | v);
                }
                Mnemonic::Cmpxchg8b | Mnemonic::Cmpxchg16b if rng.chance(50) => {
                    let half = (msize / 2) as usize;
                    let off = (target - scratch) as usize;
                    let rd = |o: usize| {
                        let mut x = 0u64;
                        for k in 0..half {
                            x |= u64::from(mem.get(o + k).copied().unwrap_or(0)) << (8 * k);
                        }
                        x
                    };
                    let (lo, hi) = (rd(off), rd(off + half));
                    set_reg_val(&mut g.fix_regs, 0, lo | if half == 4 { rng.next() << 32 } else { 0 });
                    set_reg_val(&mut g.fix_regs, 2, hi | if half == 4 { rng.next() << 32 } else { 0 });
                }
                Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc
                    if mem_op == Some(0) && ins.op_kind(1) == OpKind::Register =>
                {
                    // The bit offset register addresses beyond the operand: keep it small.
                    let (i, _) = gpr_index(ins.op1_register());
                    if g.fix_regs.iter().any(|(r, _)| *r == i) {
                        return None;
                    }
                    let off = (rng.below(0x4000) as i64 - 0x2000) as u64;
                    let v = (s.gpr[i] & !mask(bits)) | (off & mask(bits));
                    set_reg_val(&mut g.fix_regs, i, v);
                }
                _ => {}
            }
            // The stack top as an address, the taken target as an offset in CS.
            let sp = if rng.m16 { rng.data_base + (s.gpr[4] & 0xFFFF) } else { s.gpr[4] };
            let taken_addr = slot + TAKEN_OFF as u64 - rng.code_base;
            let osize = match oc.operand_size() {
                0 if rng.m16 => 2,
                0 if rng.m32 => 4,
                0 => 8,
                n => (n / 8) as usize,
            };
            match m {
                Mnemonic::Jmp | Mnemonic::Call
                    if !matches!(
                        ins.op_kind(0),
                        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
                    ) =>
                {
                    // Indirect: the register or memory operand holds the target.
                    if let Some(n) = mem_op {
                        let _ = n;
                        g.fix_mem.push((target, taken_addr, ins.memory_size().size()));
                    } else {
                        let (i, _) = gpr_index(ins.op0_register());
                        if g.fix_regs.iter().any(|(r, _)| *r == i) {
                            return None;
                        }
                        set_reg_val(&mut g.fix_regs, i, taken_addr);
                    }
                }
                Mnemonic::Ret => {
                    if ins.op_count() > 0 {
                        ins.set_op_kind(0, OpKind::Immediate16);
                        ins.set_immediate16(rng.below(0x100) as u16);
                    }
                    g.fix_mem.push((sp, taken_addr, osize));
                }
                Mnemonic::Enter => {
                    ins.set_op_kind(0, OpKind::Immediate16);
                    ins.set_immediate16(rng.below(0x200) as u16);
                    ins.set_op_kind(1, OpKind::Immediate8_2nd);
                    ins.set_immediate8_2nd(if rng.chance(80) { rng.below(5) } else { rng.below(256) } as u8);
                    let bp = (scratch + 0x2000 + rng.below(0x400)) & !3;
                    set_reg_val(&mut g.fix_regs, 5, bp - rng.data_base);
                }
                Mnemonic::Leave => {
                    let bp = (scratch + 0x1800 + rng.below(0x800)) & !3;
                    set_reg_val(&mut g.fix_regs, 5, bp - rng.data_base);
                }
                Mnemonic::Popf | Mnemonic::Popfd | Mnemonic::Popfq => {
                    // No TF (a trap), AC (alignment checks), NT, VIF, VIP, ID (the host resets them).
                    let v = rng.value() & 0x3F_FFFF & !(0x100 | 0x4000 | 0x4_0000 | 0x8_0000 | 0x10_0000 | 0x20_0000);
                    let n = match m {
                        Mnemonic::Popf => 2,
                        Mnemonic::Popfd => 4,
                        _ => 8,
                    };
                    g.fix_mem.push((sp, v, n));
                }
                _ => {}
            }
            if is_shift && oc.op_kind(oc.op_count() - 1) == K::cl && rng.chance(70) {
                let c = match rng.below(3) {
                    0 => rng.below(3),
                    1 => [7u64, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65][rng.below(12) as usize],
                    _ => rng.below(70),
                };
                let cur = g.fix_regs.iter().find(|(r, _)| *r == 1).map_or(s.gpr[1], |x| x.1);
                set_reg_val(&mut g.fix_regs, 1, (cur & !0xFF) | c);
            }
            if mem_op.is_some()
                && rng.chance(20)
                && !matches!(
                    m,
                    Mnemonic::Div
                        | Mnemonic::Idiv
                        | Mnemonic::Cmpxchg
                        | Mnemonic::Cmpxchg8b
                        | Mnemonic::Cmpxchg16b
                        | Mnemonic::Jmp
                        | Mnemonic::Call
                )
            {
                let v = rng.value();
                let n = msize.min(8) as usize;
                g.fix_mem.push((target, v, n));
            }
            g.ins = ins;
            Some(g)
        }
    }
}

fn disasm(bytes: &[u8], bits: u32) -> String {
    let mut d = Decoder::with_ip(bits, bytes, 0, DecoderOptions::NONE);
    let i = d.decode();
    let mut s = String::new();
    IntelFormatter::new().format(&i, &mut s);
    s
}

fn fmt_state(s: &State) -> String {
    let names =
        ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];
    let mut out = String::new();
    for (k, n) in names.iter().enumerate() {
        if k == 4 {
            continue;
        }
        out.push_str(&format!("{n}={:016x} ", s.gpr[k]));
        if k % 4 == 3 {
            out.push('\n');
        }
    }
    out.push_str(&format!("flags={:#x} [{}]", s.rflags, flag_names(s.rflags)));
    out
}

fn flag_names(f: u64) -> String {
    let mut s = String::new();
    for (b, n) in [(CF, "CF"), (PF, "PF"), (AF, "AF"), (ZF, "ZF"), (SF, "SF"), (OF, "OF"), (DF, "DF")] {
        if f & b != 0 {
            s.push_str(n);
            s.push(' ');
        }
    }
    s.trim_end().to_string()
}

fn sig_name(sig: u64) -> &'static str {
    match sig as i32 {
        0 => "none",
        libc::SIGFPE => "SIGFPE (#DE)",
        libc::SIGILL => "SIGILL (#UD)",
        libc::SIGSEGV => "SIGSEGV (#GP/#PF)",
        libc::SIGBUS => "SIGBUS",
        _ => "other",
    }
}

fn exc_matches(sig: u64, r: &Result<(), Exception>) -> bool {
    matches!(
        (sig as i32, r),
        (0, Ok(()))
            | (libc::SIGFPE, Err(Exception::DivideError))
            | (libc::SIGILL, Err(Exception::InvalidOpcode))
            | (
                libc::SIGSEGV | libc::SIGBUS,
                Err(Exception::GeneralProtection(_) | Exception::StackFault(_) | Exception::BoundRange)
            )
    )
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    if let Some(h) = v.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()
    } else {
        v.parse().ok()
    }
}

/// Runs the differential test on `engine`: `FERRO_DIFF_CASES` random cases (default 100,000)
/// from `FERRO_DIFF_SEED` (default: from the clock), each executed natively and on the engine,
/// whose results must agree except where the SDM says undefined ([`undefined`]) or real CPU
/// models differ ([`model_specific`]). The cases depend only on the seed, not on the engine
/// or the slicing.
pub fn run_all<E: ExecutionEngine>(engine: E, slicing: Slicing) {
    let seed = env_u64("FERRO_DIFF_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        t.as_nanos() as u64 ^ u64::from(std::process::id())
    });
    let cases = env_u64("FERRO_DIFF_CASES").unwrap_or(100_000);
    let only = env_u64("FERRO_DIFF_CASE");
    let trace = std::env::var("FERRO_DIFF_TRACE").is_ok();
    println!("differential: seed {seed:#x} ({cases} cases); replay with FERRO_DIFF_SEED={seed:#x}");
    let table64 = build_table(64);
    let table32 = build_table(32);
    let table16 = build_table(16);
    let mut host = Host::new();
    let scratch = host.scratch_addr();
    let who = engine.name();
    let mut guest = Guest::new(engine, slicing, host.base(), scratch);
    let mut wrapped = false;
    let mut enc64 = Encoder::new(64);
    let mut enc32 = Encoder::new(32);
    let mut enc16 = Encoder::new(16);
    let mut mismatches = 0u64;
    let mut insns = 0u64;
    let mut faults = 0u64;
    let mut by_mnemonic: std::collections::BTreeMap<String, u64> = Default::default();
    let mut coverage: std::collections::BTreeMap<String, u64> = Default::default();
    let mut sigs: std::collections::BTreeMap<&str, u64> = Default::default();
    let t0 = std::time::Instant::now();
    {
        let mut init = Rng::new(seed ^ 0x5CA7C4);
        for b in host.scratch().iter_mut() {
            *b = init.next() as u8;
        }
        let copy = host.scratch().to_vec();
        guest.scratch().copy_from_slice(&copy);
    }
    for case in 0..cases {
        if only.is_some_and(|o| o != case) {
            continue;
        }
        let mut rng = Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ case.wrapping_mul(0x9E37_79B9));
        // Fresh random scratch contents now and then, and a random state.
        if rng.chance(5) {
            let off = rng.below((SCRATCH_LEN - 0x100) as u64) as usize;
            for k in 0..0x100 {
                let b = rng.next() as u8;
                host.scratch()[off + k] = b;
                guest.scratch()[off + k] = b;
            }
        }
        // About a quarter of the cases run in 32-bit compatibility mode and a quarter in
        // 16-bit code (if the kernel lets us install 16-bit segments).
        let cbits: u32 = match rng.below(4) {
            0 => 32,
            1 if host.has16 => 16,
            _ => 64,
        };
        let m32 = cbits != 64;
        rng.m32 = m32;
        rng.m16 = cbits == 16;
        rng.data_base = if cbits == 16 { scratch } else { 0 };
        rng.code_base = if cbits == 16 { host.base() } else { 0 };
        guest.set_mode(cbits);
        let (table, enc) = match cbits {
            16 => (&table16, &mut enc16),
            32 => (&table32, &mut enc32),
            _ => (&table64, &mut enc64),
        };
        let mut st = State { gpr: [0; 16], rflags: 0 };
        for k in 0..16 {
            st.gpr[k] = rng.value();
        }
        // The stack pointer in the scratch area (usually aligned): PUSH, POP, CALL, RET...
        // work on it.
        let sp = scratch + 0x2000 + rng.below(0x800);
        st.gpr[4] = if rng.chance(90) { sp & !7 } else { sp };
        if m32 {
            for g in st.gpr.iter_mut() {
                *g &= 0xFFFF_FFFF;
            }
            for g in st.gpr.iter_mut().skip(8) {
                *g = 0;
            }
        }
        if cbits == 16 {
            // SP is an offset in the 16-bit stack segment; ESP's upper half is left alone.
            let hi = if rng.chance(50) { rng.next() & 0xFFFF_0000 } else { 0 };
            st.gpr[4] = (st.gpr[4] - scratch) | hi;
        }
        st.rflags = rng.next() & STATUS | if rng.chance(20) { DF } else { 0 };
        guest.sync_to(&st);
        let n = 1 + rng.below(4);
        for step in 0..n {
            let g = loop {
                let mem_now = host.scratch().to_vec();
                if let Some(g) = generate(&mut rng, table, scratch, host.slot_addr(), &st, &mem_now) {
                    break g;
                }
            };
            let slot = host.slot_addr();
            let r = enc.encode(&g.ins, slot - rng.code_base);
            let bytes = enc.take_buffer();
            if r.is_err() {
                continue; // e.g. AH with a REX prefix
            }
            // Apply the adjustments to both sides.
            for &(r, v) in &g.fix_regs {
                st.gpr[r] = v;
            }
            for &(addr, v, len) in &g.fix_mem {
                let off = (addr - scratch) as usize;
                // (Bytes past the end belong to an access that faults anyway.)
                for k in (0..len).filter(|k| off + k < SCRATCH_LEN) {
                    host.scratch()[off + k] = (v >> (8 * k)) as u8;
                    guest.scratch()[off + k] = (v >> (8 * k)) as u8;
                }
            }
            guest.sync_to(&st);
            let pre = st;
            // Stack instructions touch memory implicitly: always compare the scratch area.
            let touches_mem = true;
            let pre_mem: Option<Vec<u8>> = if touches_mem { Some(host.scratch().to_vec()) } else { None };
            // Dynamic inputs of the undefined-flag table.
            let ins = &g.ins;
            let m = ins.mnemonic();
            let bits = match ins.op_kind(0) {
                OpKind::Register => ins.op0_register().size() as u32 * 8,
                _ => (ins.memory_size().size() * 8) as u32,
            };
            let count = if ins.op_count() >= 2 {
                let last = ins.op_count() - 1;
                let raw = match ins.op_kind(last) {
                    OpKind::Register if ins.op_register(last) == Register::CL => pre.gpr[1] & 0xFF,
                    OpKind::Immediate8 => u64::from(ins.immediate8()),
                    _ => 0,
                };
                (raw & if bits == 64 { 63 } else { 31 }) as u32
            } else {
                1
            };
            let src_zero = matches!(m, Mnemonic::Bsf | Mnemonic::Bsr) && {
                match ins.op_kind(1) {
                    OpKind::Register => reg_value(&pre, ins.op1_register()) == 0,
                    _ => {
                        let off = (g.mem_addr.unwrap() - scratch) as usize;
                        host.scratch().iter().skip(off).take((bits / 8) as usize).all(|b| *b == 0)
                    }
                }
            };
            let (undef_flags, undef_dest) = undefined(m, bits, count, src_zero);
            // Run both.
            if trace {
                eprintln!("case {case} step {step} ({}-bit) {:02x?} {}", cbits, bytes, disasm(&bytes, cbits));
            }
            let image = host.slot_image(&bytes, cbits);
            let (sig, taken) = host.run(&image, &mut st, cbits);
            let mut slicer = Rng::new(seed ^ case.wrapping_mul(0x51_1CE5) ^ step);
            let (gr, grip) = guest.run(&guest_image(&bytes), slot, wrapped, &mut slicer);
            wrapped = host.advance();
            insns += 1;
            *coverage.entry(format!("{m:?}")).or_default() += 1;
            if sig != 0 {
                *sigs.entry(sig_name(sig)).or_default() += 1;
            }
            if sig != 0 {
                faults += 1;
            }
            let gs = guest.state();
            let mut problems = Vec::new();
            if !exc_matches(sig, &gr) {
                problems.push(format!("exception: host {} vs {who} {:?}", sig_name(sig), gr));
            }
            let expect_rip = if sig != 0 {
                slot
            } else if taken {
                slot + TAKEN_OFF as u64
            } else {
                slot + bytes.len() as u64
            };
            if grip != expect_rip {
                problems.push(format!(
                    "rip: host {:#x} ({}) {who} {grip:#x}",
                    expect_rip,
                    if taken { "taken" } else { "not taken" }
                ));
            }
            let dest = if undef_dest && ins.op_kind(0) == OpKind::Register {
                Some(gpr_index(ins.op0_register()).0)
            } else {
                None
            };
            for k in 0..16 {
                if Some(k) != dest
                    && st.gpr[k] != gs.gpr[k]
                    && !model_specific(ins, cbits, k, pre.gpr[1], pre.gpr[k], st.gpr[k], gs.gpr[k])
                {
                    problems.push(format!(
                        "gpr[{k}]: host {:#018x} {who} {:#018x} (was {:#018x})",
                        st.gpr[k], gs.gpr[k], pre.gpr[k]
                    ));
                }
            }
            let fmask = CMP_FLAGS & !undef_flags;
            if (st.rflags ^ gs.rflags) & fmask != 0 {
                problems.push(format!(
                    "flags: host [{}] {who} [{}] (compared {}; was [{}])",
                    flag_names(st.rflags & fmask),
                    flag_names(gs.rflags & fmask),
                    flag_names(fmask),
                    flag_names(pre.rflags)
                ));
            }
            let mem_undef = undef_dest && ins.op_kind(0) != OpKind::Register;
            if touches_mem {
                let h = host.scratch().to_vec();
                let gm = guest.scratch().to_vec();
                if h != gm {
                    if !mem_undef {
                        let first = h.iter().zip(&gm).position(|(a, b)| a != b).unwrap();
                        let a = (first & !7).saturating_sub(8);
                        let pm = pre_mem.as_ref().unwrap();
                        problems.push(format!(
                            "memory at {:#x}: host {:02x?} {who} {:02x?} (was {:02x?})",
                            scratch + a as u64,
                            &h[a..(a + 24).min(SCRATCH_LEN)],
                            &gm[a..(a + 24).min(SCRATCH_LEN)],
                            &pm[a..(a + 24).min(SCRATCH_LEN)]
                        ));
                    }
                    guest.scratch().copy_from_slice(&h);
                }
            }
            if !problems.is_empty() {
                mismatches += 1;
                *by_mnemonic.entry(format!("{m:?}")).or_default() += 1;
                if mismatches <= 25 {
                    println!(
                        "\nMISMATCH seed {seed:#x} case {case} step {step} ({}-bit): {:02x?}  {}\n\
                         replay: FERRO_DIFF_SEED={seed:#x} FERRO_DIFF_CASE={case}\n\
                         before:\n{}\nhost after (signal {}):\n{}\n{who} after ({:?}):\n{}\n  {}",
                        cbits,
                        bytes,
                        disasm(&bytes, cbits),
                        fmt_state(&pre),
                        sig_name(sig),
                        fmt_state(&st),
                        gr,
                        fmt_state(&gs),
                        problems.join("\n  ")
                    );
                }
            }
            // Continue the case from the host's state (undefined results included).
            guest.sync_to(&st);
        }
    }
    let el = t0.elapsed();
    println!(
        "differential: {cases} cases, {insns} instructions ({faults} faulted natively), {mismatches} mismatches \
         in {:.2}s; seed {seed:#x}",
        el.as_secs_f64()
    );
    println!("native faults: {sigs:?}");
    if slicing == Slicing::Sliced {
        println!("{who}: {} runs shorter than a step (sliced)", guest.partial_runs);
    }
    if let Some(st) = guest.engine.stats_text() {
        println!("{who} statistics:\n{st}");
    }
    if std::env::var("FERRO_DIFF_VERBOSE").is_ok() {
        println!("instructions by mnemonic: {coverage:?}");
    }
    let untested: Vec<String> =
        mnemonic_set().iter().map(|m| format!("{m:?}")).filter(|m| !coverage.contains_key(m)).collect();
    if only.is_none() && cases >= 10_000 {
        assert!(untested.is_empty(), "mnemonics never generated: {untested:?}");
    }
    if !by_mnemonic.is_empty() {
        println!("mismatches by mnemonic: {by_mnemonic:?}");
    }
    assert_eq!(mismatches, 0, "{who} differs from the host CPU (seed {seed:#x})");
}
