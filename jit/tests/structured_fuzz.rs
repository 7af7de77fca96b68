//! Structured fuzzing of the translator against the interpreter: random *valid* programs of
//! the integer instructions the JIT emits inline (ALU, moves, INC/DEC/NEG/NOT, shifts and
//! rotates, LEA, PUSH/POP, CMOVcc/SETcc, BT*/BSF/BSR, IMUL/MUL/DIV, SHLD/SHRD, string
//! instructions, SSE2 integer and move forms) mixed with helper-served ones (CMPXCHG, XADD, XCHG, LAHF/SAHF, PUSHF), on 8- to
//! 64-bit operands, with memory operands off a few base registers that start near page ends
//! (so the JIT's probe groups form, straddle pages and miss), forward branches inside the body
//! calls of subroutines (direct and through a register), stores that rewrite instructions of
//! the body (self-modifying code) and a loop around it (in some 64-bit programs counted in R15
//! and made only of inline forms, so that it becomes a self-loop block).
//!
//! Random bytes (jit/tests/hostile_lockstep.rs) rarely reach such sequences: the probe group
//! whose last member called the lazy-flags helper (a host SIGSEGV on one Linux run in a
//! hundred) needs a load and an INC off the same register right after an interpreted
//! instruction. Here every program is run by the interpreter once and by the JIT in one run
//! and in three slicings, with the helper-call check on ([`jit::Translator::set_clobber_calls`]);
//! exits, the architectural state and all of memory must be equal. Four setups: 32-bit flat,
//! 32-bit with paging that maps the data pages out of order (at CPL 0 and at CPL 3), and
//! 64-bit.
//!
//! Environment: `FERRO_FUZZ_PROGRAMS` (per setup, default 300), `FERRO_FUZZ_SEED` (replay;
//! a failure names its seed), `FERRO_FUZZ_ONLY` (run only the program with that index),
//! `FERRO_FUZZ_TRACE=1` (print each program's index before it runs: generated code that
//! touches a wild host address kills the test process, which then names no program; rerun with
//! `-- --nocapture`).

mod common;

use common::*;
use cpu::{CpuState, ExecutionEngine, Interpreter, RamBus, RunExit};
use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    Flat32,
    Paged32,
    /// As `Paged32`, at CPL 3 (the probes use the TLB's user entries).
    Ring3Paged32,
    Long64,
}

impl Setup {
    fn bits(self) -> u32 {
        if self == Setup::Long64 {
            64
        } else {
            32
        }
    }
}

/// Where the program's data lives (linear): 8 pages; the loop counter is at `COUNTER`.
const DATA: u64 = 0x2_0000;
const DATA_PAGES: u64 = 8;
const COUNTER: u64 = 0x1_F000;
/// Page tables for the paged setup.
const PD: u64 = 0x1_0000;
const PT: u64 = 0x1_1000;

const R64: [AsmRegister64; 16] = [rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15];
const R32: [AsmRegister32; 16] = [eax, ecx, edx, ebx, esp, ebp, esi, edi, r8d, r9d, r10d, r11d, r12d, r13d, r14d, r15d];
const R16: [AsmRegister16; 16] = [ax, cx, dx, bx, sp, bp, si, di, r8w, r9w, r10w, r11w, r12w, r13w, r14w, r15w];
const R8: [AsmRegister8; 16] = [al, cl, dl, bl, spl, bpl, sil, dil, r8b, r9b, r10b, r11b, r12b, r13b, r14b, r15b];

/// The base registers (memory operands are off them; only small moves change them).
const BASES: [usize; 4] = [3, 5, 6, 7];

struct Gen<'a> {
    a: &'a mut CodeAssembler,
    rng: Rng,
    bits: u32,
    /// R15 counts the loop (64-bit programs with a register-counted loop): not a data register.
    r15_counter: bool,
    /// Only forms the JIT runs inline (no helper), so the loop can become a self-loop block.
    inline_only: bool,
}

impl Gen<'_> {
    /// A data register (never a base, never RSP).
    fn data_reg(&mut self) -> usize {
        if self.bits == 64 && self.r15_counter {
            self.rng.pick(&[0, 1, 2, 8, 9, 10, 11, 12, 13, 14])
        } else if self.bits == 64 {
            self.rng.pick(&[0, 1, 2, 8, 9, 10, 11, 12, 13, 14, 15])
        } else {
            self.rng.pick(&[0, 1, 2])
        }
    }

    fn base(&mut self) -> usize {
        self.rng.pick(&BASES)
    }

    /// A memory operand off a base (sometimes with a data register as a small index; every
    /// index register is masked to 0..=15 first by the caller of `index_mem`).
    fn mem(&mut self) -> AsmMemoryOperand {
        let b = self.base();
        let d = self.rng.range(-40, 40) as i32;
        if self.bits == 64 {
            R64[b] + d
        } else {
            R32[b] + d
        }
    }

    /// The operand size of the next instruction: mostly 32, then 64 (64-bit only), 8, 16.
    fn size(&mut self) -> u32 {
        match self.rng.below(10) {
            0 => 8,
            1 => 16,
            2..=3 if self.bits == 64 => 64,
            _ => 32,
        }
    }

    fn imm(&mut self, size: u32) -> i32 {
        match self.rng.below(4) {
            0 => self.rng.range(-2, 2) as i32,
            1 => self.rng.range(-128, 127) as i32,
            _ => match size {
                8 => self.rng.range(-128, 127) as i32,
                16 => self.rng.range(-32768, 32767) as i32,
                _ => self.rng.next() as i32,
            },
        }
    }

    fn cond(&mut self) -> u32 {
        self.rng.below(16) as u32
    }

    /// One random instruction (or a short fixed sequence).
    fn one(&mut self) {
        if self.inline_only {
            match self.rng.below(100) {
                0..=39 => self.alu(),
                40..=59 => self.mov(),
                60..=69 => self.unary(),
                70..=79 => self.lea(),
                80..=89 => self.base_move(),
                _ => self.stack(),
            }
            return;
        }
        match self.rng.below(100) {
            0..=24 => self.alu(),
            25..=36 => self.mov(),
            37..=41 => self.unary(),
            42..=49 => self.shift(),
            50..=53 => self.lea(),
            54..=60 => self.stack(),
            61..=64 => self.cmov_set(),
            65..=69 => self.atomic(),
            70..=74 => self.bits_ops(),
            75..=78 => self.mul_div(),
            79..=80 => self.double_shift(),
            81..=84 => self.flag_ops(),
            85..=89 => self.base_move(),
            90..=92 => self.string(),
            93..=96 => self.sse(),
            _ => self.movx(),
        }
    }

    fn alu(&mut self) {
        let op = self.rng.below(9);
        let size = self.size();
        let form = self.rng.below(5);
        let r = self.data_reg();
        let s = self.data_reg();
        let m = self.mem();
        let imm = self.imm(size);
        macro_rules! go {
            ($f:ident) => {{
                let a = &mut *self.a;
                match (form, size) {
                    (0, 8) => a.$f(R8[r], R8[s]),
                    (0, 16) => a.$f(R16[r], R16[s]),
                    (0, 32) => a.$f(R32[r], R32[s]),
                    (0, _) => a.$f(R64[r], R64[s]),
                    (1, 8) => a.$f(R8[r], imm),
                    (1, 16) => a.$f(R16[r], imm),
                    (1, 32) => a.$f(R32[r], imm),
                    (1, _) => a.$f(R64[r], imm),
                    (2, 8) => a.$f(R8[r], byte_ptr(m)),
                    (2, 16) => a.$f(R16[r], word_ptr(m)),
                    (2, 32) => a.$f(R32[r], dword_ptr(m)),
                    (2, _) => a.$f(R64[r], qword_ptr(m)),
                    (3, 8) => a.$f(byte_ptr(m), R8[s]),
                    (3, 16) => a.$f(word_ptr(m), R16[s]),
                    (3, 32) => a.$f(dword_ptr(m), R32[s]),
                    (3, _) => a.$f(qword_ptr(m), R64[s]),
                    (_, 8) => a.$f(byte_ptr(m), imm),
                    (_, 16) => a.$f(word_ptr(m), imm),
                    (_, 32) => a.$f(dword_ptr(m), imm),
                    (_, _) => a.$f(qword_ptr(m), imm),
                }
                .unwrap()
            }};
        }
        match op {
            0 => go!(add),
            1 => go!(sub),
            2 => go!(and),
            3 => go!(or),
            4 => go!(xor),
            5 => go!(cmp),
            6 => go!(adc),
            7 => go!(sbb),
            _ => {
                // TEST has no reg, mem form in code_asm's order: mem, reg only.
                let a = &mut *self.a;
                match (form, size) {
                    (0, 32) => a.test(R32[r], R32[s]),
                    (0, _) => a.test(R8[r], R8[s]),
                    (1, 32) => a.test(R32[r], imm),
                    (1, _) => a.test(R16[r], imm as i16 as i32),
                    (2 | 3, 32) => a.test(dword_ptr(m), R32[s]),
                    (2 | 3, _) => a.test(byte_ptr(m), R8[s]),
                    (_, _) => a.test(dword_ptr(m), imm),
                }
                .unwrap()
            }
        }
    }

    fn mov(&mut self) {
        let size = self.size();
        let (r, s, m) = (self.data_reg(), self.data_reg(), self.mem());
        let imm = self.imm(size);
        let a = &mut *self.a;
        match (self.rng.below(5), size) {
            (0, 8) => a.mov(R8[r], byte_ptr(m)),
            (0, 16) => a.mov(R16[r], word_ptr(m)),
            (0, 32) => a.mov(R32[r], dword_ptr(m)),
            (0, _) => a.mov(R64[r], qword_ptr(m)),
            (1, 8) => a.mov(byte_ptr(m), R8[s]),
            (1, 16) => a.mov(word_ptr(m), R16[s]),
            (1, 32) => a.mov(dword_ptr(m), R32[s]),
            (1, _) => a.mov(qword_ptr(m), R64[s]),
            (2, 8) => a.mov(byte_ptr(m), imm),
            (2, 16) => a.mov(word_ptr(m), imm),
            (2, 32) => a.mov(dword_ptr(m), imm),
            (2, _) => a.mov(qword_ptr(m), imm),
            (3, 64) => a.mov(R64[r], R64[s]),
            (3, _) => a.mov(R32[r], R32[s]),
            (_, 64) => a.mov(R64[r], self.rng.next()),
            (_, _) => a.mov(R32[r], imm as u32),
        }
        .unwrap()
    }

    fn movx(&mut self) {
        let (r, s, m) = (self.data_reg(), self.data_reg(), self.mem());
        let a = &mut *self.a;
        match self.rng.below(6) {
            0 => a.movzx(R32[r], byte_ptr(m)),
            1 => a.movzx(R32[r], word_ptr(m)),
            2 => a.movsx(R32[r], byte_ptr(m)),
            3 => a.movsx(R32[r], word_ptr(m)),
            4 => a.movzx(R32[r], R8[s]),
            _ => a.movsx(R32[r], R16[s]),
        }
        .unwrap()
    }

    fn unary(&mut self) {
        let size = self.size();
        let (r, m) = (self.data_reg(), self.mem());
        let mem = self.rng.chance(60);
        macro_rules! go {
            ($f:ident) => {{
                let a = &mut *self.a;
                match (mem, size) {
                    (false, 8) => a.$f(R8[r]),
                    (false, 16) => a.$f(R16[r]),
                    (false, 32) => a.$f(R32[r]),
                    (false, _) => a.$f(R64[r]),
                    (true, 8) => a.$f(byte_ptr(m)),
                    (true, 16) => a.$f(word_ptr(m)),
                    (true, 32) => a.$f(dword_ptr(m)),
                    (true, _) => a.$f(qword_ptr(m)),
                }
                .unwrap()
            }};
        }
        match self.rng.below(4) {
            0 => go!(inc),
            1 => go!(dec),
            2 => go!(neg),
            _ => go!(not),
        }
    }

    fn shift(&mut self) {
        let size = self.size();
        let (r, m) = (self.data_reg(), self.mem());
        let mem = self.rng.chance(40);
        let count = self.rng.below(3);
        let imm = self.rng.range(0, 70) as u32;
        macro_rules! go {
            ($f:ident) => {{
                let a = &mut *self.a;
                match (mem, size, count) {
                    (false, 8, 0) => a.$f(R8[r], 1),
                    (false, 8, 1) => a.$f(R8[r], imm),
                    (false, 8, _) => a.$f(R8[r], cl),
                    (false, 16, 0) => a.$f(R16[r], 1),
                    (false, 16, 1) => a.$f(R16[r], imm),
                    (false, 16, _) => a.$f(R16[r], cl),
                    (false, 32, 0) => a.$f(R32[r], 1),
                    (false, 32, 1) => a.$f(R32[r], imm),
                    (false, 32, _) => a.$f(R32[r], cl),
                    (false, _, 0) => a.$f(R64[r], 1),
                    (false, _, 1) => a.$f(R64[r], imm),
                    (false, _, _) => a.$f(R64[r], cl),
                    (true, 8, 0) => a.$f(byte_ptr(m), 1),
                    (true, 8, 1) => a.$f(byte_ptr(m), imm),
                    (true, 8, _) => a.$f(byte_ptr(m), cl),
                    (true, 16, 0) => a.$f(word_ptr(m), 1),
                    (true, 16, 1) => a.$f(word_ptr(m), imm),
                    (true, 16, _) => a.$f(word_ptr(m), cl),
                    (true, 32, 0) => a.$f(dword_ptr(m), 1),
                    (true, 32, 1) => a.$f(dword_ptr(m), imm),
                    (true, 32, _) => a.$f(dword_ptr(m), cl),
                    (true, _, 0) => a.$f(qword_ptr(m), 1),
                    (true, _, 1) => a.$f(qword_ptr(m), imm),
                    (true, _, _) => a.$f(qword_ptr(m), cl),
                }
                .unwrap()
            }};
        }
        match self.rng.below(7) {
            0 => go!(shl),
            1 => go!(shr),
            2 => go!(sar),
            3 => go!(rol),
            4 => go!(ror),
            5 => go!(rcl),
            _ => go!(rcr),
        }
    }

    fn lea(&mut self) {
        let (r, b, x) = (self.data_reg(), self.base(), self.data_reg());
        let d = self.rng.range(-300, 300) as i32;
        let scale = self.rng.pick(&[1, 2, 4, 8]);
        let a = &mut *self.a;
        if self.bits == 64 {
            match self.rng.below(3) {
                0 => a.lea(R64[r], R64[b] + d),
                1 => a.lea(R64[r], R64[b] + R64[x] * scale + d),
                _ => a.lea(R32[r], R64[x] * scale + d),
            }
        } else {
            match self.rng.below(2) {
                0 => a.lea(R32[r], R32[b] + d),
                _ => a.lea(R32[r], R32[b] + R32[x] * scale + d),
            }
        }
        .unwrap()
    }

    fn stack(&mut self) {
        let (r, m) = (self.data_reg(), self.mem());
        let imm = self.imm(32);
        let off = self.rng.range(0, 24) as i32;
        let a = &mut *self.a;
        let q = self.bits == 64;
        match (self.rng.below(7), q) {
            (0, true) => a.push(R64[r]),
            (0, false) => a.push(R32[r]),
            (1, true) => a.pop(R64[r]),
            (1, false) => a.pop(R32[r]),
            (2, _) => a.push(imm),
            (3, true) => a.push(qword_ptr(m)),
            (3, false) => a.push(dword_ptr(m)),
            (4, true) => a.pop(qword_ptr(m)),
            (4, false) => a.pop(dword_ptr(m)),
            (5, true) => a.mov(R64[r], qword_ptr(rsp + off)),
            (5, false) => a.mov(R32[r], dword_ptr(esp + off)),
            (_, true) => a.mov(qword_ptr(rsp + off), R64[r]),
            (_, false) => a.mov(dword_ptr(esp + off), R32[r]),
        }
        .unwrap()
    }

    fn cmov_set(&mut self) {
        let (r, s, m, c) = (self.data_reg(), self.data_reg(), self.mem(), self.cond());
        let a = &mut *self.a;
        match self.rng.below(4) {
            0 => match c % 8 {
                0 => a.cmovo(R32[r], R32[s]),
                1 => a.cmovb(R32[r], R32[s]),
                2 => a.cmove(R32[r], R32[s]),
                3 => a.cmovbe(R32[r], R32[s]),
                4 => a.cmovs(R32[r], R32[s]),
                5 => a.cmovp(R32[r], R32[s]),
                6 => a.cmovl(R32[r], R32[s]),
                _ => a.cmovle(R32[r], R32[s]),
            }
            .unwrap(),
            1 => match c % 8 {
                0 => a.cmovno(R32[r], dword_ptr(m)),
                1 => a.cmovae(R32[r], dword_ptr(m)),
                2 => a.cmovne(R32[r], dword_ptr(m)),
                3 => a.cmova(R32[r], dword_ptr(m)),
                4 => a.cmovns(R32[r], dword_ptr(m)),
                5 => a.cmovnp(R32[r], dword_ptr(m)),
                6 => a.cmovge(R32[r], dword_ptr(m)),
                _ => a.cmovg(R32[r], dword_ptr(m)),
            }
            .unwrap(),
            2 => match c % 4 {
                0 => a.sete(R8[r]),
                1 => a.setb(R8[r]),
                2 => a.setl(R8[r]),
                _ => a.seto(R8[r]),
            }
            .unwrap(),
            _ => match c % 4 {
                0 => a.setne(byte_ptr(m)),
                1 => a.seta(byte_ptr(m)),
                2 => a.setge(byte_ptr(m)),
                _ => a.setp(byte_ptr(m)),
            }
            .unwrap(),
        }
    }

    fn atomic(&mut self) {
        let (r, m) = (self.data_reg(), self.mem());
        let a = &mut *self.a;
        match self.rng.below(5) {
            0 => a.cmpxchg(dword_ptr(m), R32[r]),
            1 => a.xadd(dword_ptr(m), R32[r]),
            2 => a.xchg(dword_ptr(m), R32[r]),
            3 => a.lock().add(dword_ptr(m), R32[r]),
            _ => a.cmpxchg(byte_ptr(m), R8[r]),
        }
        .unwrap()
    }

    fn bits_ops(&mut self) {
        let (r, s, m) = (self.data_reg(), self.data_reg(), self.mem());
        let imm = self.rng.range(0, 40) as u32;
        let a = &mut *self.a;
        match self.rng.below(8) {
            0 => a.bt(R32[r], imm),
            1 => a.bts(dword_ptr(m), imm),
            2 => a.btr(R32[r], R32[s]),
            3 => a.btc(dword_ptr(m), imm),
            4 => a.bsf(R32[r], R32[s]),
            5 => a.bsr(R32[r], dword_ptr(m)),
            6 => a.bswap(R32[r]),
            _ => a.bt(dword_ptr(m), imm),
        }
        .unwrap()
    }

    fn mul_div(&mut self) {
        let (r, s, m) = (self.data_reg(), self.data_reg(), self.mem());
        let imm = self.imm(32);
        let a = &mut *self.a;
        match self.rng.below(6) {
            0 => a.imul_2(R32[r], R32[s]).unwrap(),
            1 => a.imul_2(R32[r], dword_ptr(m)).unwrap(),
            2 => a.imul_3(R32[r], R32[s], imm).unwrap(),
            3 => a.mul(R32[s]).unwrap(),
            4 => a.imul(dword_ptr(m)).unwrap(),
            _ => {
                // No #DE: EDX = 0 and a divisor >= 1 (ECX | 1).
                a.xor(edx, edx).unwrap();
                a.or(ecx, 1).unwrap();
                a.div(ecx).unwrap();
            }
        }
    }

    fn double_shift(&mut self) {
        let (r, s, m) = (self.data_reg(), self.data_reg(), self.mem());
        let imm = self.rng.range(0, 31) as u32;
        let a = &mut *self.a;
        match self.rng.below(4) {
            0 => a.shld(R32[r], R32[s], imm),
            1 => a.shrd(R32[r], R32[s], cl),
            2 => a.shld(dword_ptr(m), R32[s], imm),
            _ => a.shrd(dword_ptr(m), R32[s], imm),
        }
        .unwrap()
    }

    fn flag_ops(&mut self) {
        let r = self.data_reg();
        let a = &mut *self.a;
        match self.rng.below(6) {
            0 => a.clc().unwrap(),
            1 => a.stc().unwrap(),
            2 => a.cmc().unwrap(),
            3 if self.bits == 32 => {
                a.lahf().unwrap();
                a.sahf().unwrap();
            }
            4 => {
                if self.bits == 64 {
                    a.pushfq().unwrap();
                    a.pop(R64[r]).unwrap();
                } else {
                    a.pushfd().unwrap();
                    a.pop(R32[r]).unwrap();
                }
            }
            _ if self.bits == 32 => a.sahf().unwrap(),
            _ => a.clc().unwrap(),
        }
    }

    fn base_move(&mut self) {
        let b = self.base();
        let d = self.rng.range(-12, 12) as i32;
        let a = &mut *self.a;
        let q = self.bits == 64;
        match (self.rng.below(4), q) {
            (0, true) => a.add(R64[b], d),
            (0, false) => a.add(R32[b], d),
            (1, true) => a.lea(R64[b], R64[b] + d),
            (1, false) => a.lea(R32[b], R32[b] + d),
            (2, true) => a.inc(R64[b]),
            (2, false) => a.inc(R32[b]),
            (_, true) => a.sub(R64[b], d),
            (_, false) => a.sub(R32[b], d),
        }
        .unwrap()
    }

    /// SSE2 integer and move forms (memory only through the unaligned moves: the others
    /// would fault on most addresses), XMM0-XMM7 (XMM0-XMM15 in 64-bit code).
    fn sse(&mut self) {
        let n = if self.bits == 64 { 16 } else { 8 };
        const X: [AsmRegisterXmm; 16] =
            [xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13, xmm14, xmm15];
        let (x, y) = (X[self.rng.below(n) as usize], X[self.rng.below(n) as usize]);
        let (r, m) = (self.data_reg(), self.mem());
        let imm = self.rng.below(256) as u32;
        let a = &mut *self.a;
        match self.rng.below(14) {
            0 => a.movdqu(x, xmmword_ptr(m)),
            1 => a.movdqu(xmmword_ptr(m), x),
            2 => a.movd(x, R32[r]),
            3 => a.movd(R32[r], x),
            4 => a.paddd(x, y),
            5 => a.psubq(x, y),
            6 => a.pxor(x, y),
            7 => a.pand(x, y),
            8 => a.pcmpeqb(x, y),
            9 => a.pshufd(x, y, imm),
            10 => a.punpcklbw(x, y),
            11 => a.psllq(x, imm % 70),
            12 => a.pmovmskb(R32[r], x),
            _ => a.movq(x, qword_ptr(m)),
        }
        .unwrap()
    }

    fn string(&mut self) {
        let n = self.rng.range(0, 40) as u32;
        let a = &mut *self.a;
        a.mov(ecx, n).unwrap();
        match self.rng.below(5) {
            0 => a.rep().stosb(),
            1 => a.rep().movsb(),
            2 => a.rep().stosd(),
            3 => a.lodsd(),
            _ => a.repe().cmpsb(),
        }
        .unwrap()
    }
}

/// The program for `seed`: setup, a body of random instructions with forward branches, calls
/// of a few subroutines (direct and through a register) and stores into its own code, a loop
/// of `turns` around it (the base registers and RSP are set again at the top of each turn).
///
/// The self-modifying stores rewrite the 32-bit immediate of an `ADD reg, imm32` in the body
/// (before or after the store, so in the running block or in one to come): the program is
/// assembled twice, the first time to learn where those immediates are.
fn program(setup: Setup, seed: u64) -> Vec<u8> {
    let (first, addrs) = program_pass(setup, seed, None);
    let (code, again) = program_pass(setup, seed, Some(&addrs));
    assert_eq!((code.len(), &again), (first.len(), &addrs), "both passes lay the program out alike");
    code
}

/// Where the patchable immediates and the subroutines are.
#[derive(Debug, PartialEq)]
struct Layout {
    imms: Vec<u64>,
    subs: Vec<u64>,
}

/// One pass of [`program`]: the code and its [`Layout`] (`known`: the first pass's, which the
/// stores and 32-bit indirect calls use; None: placeholders of the same length).
fn program_pass(setup: Setup, seed: u64, known: Option<&Layout>) -> (Vec<u8>, Layout) {
    let bits = setup.bits();
    let mut a = CodeAssembler::new(bits).unwrap();
    let mut rng = Rng(seed | 1);
    // Some 64-bit programs count their loop in R15 with one of the tails below, and some of
    // those use only inline forms: their loop is then one block that jumps to its own entry
    // (a self-loop on host registers, counted with DEC/JZ at its top when its flags are dead
    // there), run for more turns.
    let r15_tail = (bits == 64 && rng.chance(40)).then(|| rng.below(6));
    let inline_only = r15_tail.is_some() && rng.chance(50);
    let turns = if inline_only { 1 + rng.below(300) } else { 1 + rng.below(12) } as u32;
    let len = if inline_only { 2 + rng.below(12) } else { 4 + rng.below(40) };
    // Starting values: the bases near page ends of the data area, RSP near one too.
    let near_end = |rng: &mut Rng| DATA + 0x1000 * (1 + rng.below(DATA_PAGES - 2)) + rng.range(-48, 48) as u64;
    let bases: Vec<u64> = BASES.iter().map(|_| near_end(&mut rng)).collect();
    let stack_top = near_end(&mut rng) & !3;
    for r in 0..16 {
        if r == 4 || BASES.contains(&r) || (bits == 32 && r >= 8) {
            continue;
        }
        let v = rng.next();
        if bits == 64 {
            a.mov(R64[r], v).unwrap();
        } else {
            a.mov(R32[r], v as u32).unwrap();
        }
    }
    if r15_tail.is_some() {
        a.mov(r15d, turns).unwrap();
    } else if bits == 64 {
        a.mov(dword_ptr(COUNTER), turns).unwrap();
    } else {
        a.mov(dword_ptr(COUNTER as u32), turns).unwrap();
    }
    let mut top = a.create_label();
    a.set_label(&mut top).unwrap();
    for (i, &b) in BASES.iter().enumerate() {
        a.mov(R32[b], bases[i] as u32).unwrap();
    }
    a.mov(esp, stack_top as u32).unwrap();
    // Patchable immediates (label after each) and subroutines.
    let n_patch = if inline_only { 0 } else { rng.below(3) as usize };
    let n_subs = if inline_only { 0 } else { rng.below(3) as usize };
    let mut patch_after: Vec<CodeLabel> = (0..n_patch).map(|_| a.create_label()).collect();
    let mut subs: Vec<CodeLabel> = (0..n_subs).map(|_| a.create_label()).collect();
    let sub_seed = rng.next() | 1;
    {
        let mut g = Gen { a: &mut a, rng: Rng(rng.next() | 1), bits, r15_counter: r15_tail.is_some(), inline_only };
        let mut placed = 0;
        // Forward branches: a Jcc (or JMP) over the next 1-3 instructions.
        let mut pending: Vec<(CodeLabel, u64)> = Vec::new();
        for i in 0..len {
            if !inline_only && g.rng.chance(12) {
                let l = g.a.create_label();
                let c = g.rng.below(5);
                match c {
                    0 => g.a.je(l),
                    1 => g.a.jb(l),
                    2 => g.a.jl(l),
                    3 => g.a.jns(l),
                    _ => g.a.jmp(l),
                }
                .unwrap();
                pending.push((l, i + 1 + g.rng.below(3)));
            }
            match g.rng.below(100) {
                // A patchable ADD (imm32 kept out of the imm8 range, so its encoding is fixed).
                0..=3 if placed < n_patch => {
                    let r = g.data_reg();
                    let imm = (g.rng.next() as u32 | 0x0100_0000) as i32;
                    if bits == 64 {
                        g.a.add(R64[r], imm).unwrap();
                    } else {
                        g.a.add(R32[r], imm).unwrap();
                    }
                    g.a.set_label(&mut patch_after[placed]).unwrap();
                    g.a.nop().unwrap();
                    placed += 1;
                }
                // A store of a new immediate into one of them (placed or to come).
                4..=7 if n_patch > 0 => {
                    let j = g.rng.below(n_patch as u64) as usize;
                    let at = known.map_or(CODE, |l| l.imms[j]);
                    let v = g.rng.next() as u32;
                    if bits == 64 {
                        g.a.mov(dword_ptr(at), v).unwrap();
                    } else {
                        g.a.mov(dword_ptr(at as u32), v).unwrap();
                    }
                }
                // A call of a subroutine, direct or through a data register.
                8..=11 if n_subs > 0 => {
                    let k = g.rng.below(n_subs as u64) as usize;
                    if g.rng.chance(50) {
                        g.a.call(subs[k]).unwrap();
                    } else {
                        let r = g.data_reg();
                        if bits == 64 {
                            g.a.lea(R64[r], ptr(subs[k])).unwrap();
                            g.a.call(R64[r]).unwrap();
                        } else {
                            g.a.mov(R32[r], known.map_or(CODE, |l| l.subs[k]) as u32).unwrap();
                            g.a.call(R32[r]).unwrap();
                        }
                    }
                }
                _ => g.one(),
            }
            while let Some(p) = pending.iter().position(|&(_, at)| at <= i + 1) {
                let (mut l, _) = pending.remove(p);
                g.a.nop().unwrap();
                g.a.set_label(&mut l).unwrap();
            }
        }
        for (mut l, _) in pending.drain(..) {
            g.a.nop().unwrap();
            g.a.set_label(&mut l).unwrap();
        }
        // Patchable immediates the body did not reach: placed here.
        while placed < n_patch {
            g.a.add(eax, 0x0100_0001).unwrap();
            g.a.set_label(&mut patch_after[placed]).unwrap();
            g.a.nop().unwrap();
            placed += 1;
        }
    }
    match r15_tail {
        Some(0) => {
            a.dec(r15).unwrap();
            a.jnz(top).unwrap();
        }
        Some(1) => {
            a.sub(r15, 1).unwrap();
            a.jnz(top).unwrap();
        }
        Some(2) => {
            a.add(r15d, -1).unwrap();
            a.jne(top).unwrap();
        }
        Some(3) => {
            a.dec(r15).unwrap();
            a.test(r15, r15).unwrap();
            a.jnz(top).unwrap();
        }
        Some(4) => {
            a.lea(r15, r15 - 1).unwrap();
            a.cmp(r15, 0).unwrap();
            a.jne(top).unwrap();
        }
        Some(_) => {
            a.sub(r15d, 1).unwrap();
            a.ja(top).unwrap();
        }
        None => {
            if bits == 64 {
                a.dec(dword_ptr(COUNTER)).unwrap();
            } else {
                a.dec(dword_ptr(COUNTER as u32)).unwrap();
            }
            a.jne(top).unwrap();
        }
    }
    // The end was reached (HLT itself faults at CPL 3).
    if bits == 64 {
        a.mov(dword_ptr(COUNTER + 4), 1).unwrap();
    } else {
        a.mov(dword_ptr(COUNTER as u32 + 4), 1).unwrap();
    }
    a.hlt().unwrap();
    // The subroutines: a few instructions that leave RSP as they found it, then RET.
    let mut g = Gen { a: &mut a, rng: Rng(sub_seed), bits, r15_counter: r15_tail.is_some(), inline_only: true };
    for l in subs.iter_mut() {
        g.a.set_label(l).unwrap();
        for _ in 0..1 + g.rng.below(6) {
            match g.rng.below(4) {
                0 => g.alu(),
                1 => g.mov(),
                2 => g.unary(),
                _ => g.base_move(),
            }
        }
        g.a.ret().unwrap();
    }
    let r = a.assemble_options(CODE, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS).unwrap();
    let layout = Layout {
        imms: patch_after.iter().map(|l| r.label_ip(l).unwrap() - 4).collect(),
        subs: subs.iter().map(|l| r.label_ip(l).unwrap()).collect(),
    };
    (r.inner.code_buffer, layout)
}

/// Page tables mapping the first 1 MiB one to one except the data pages, which are mapped in
/// reverse order (neighbouring linear pages are not neighbours in memory).
fn paging(bus: &mut RamBus, c: &mut CpuState) {
    bus.mem.load(base::GuestPhysAddr(PD), &((PT as u32) | 7).to_le_bytes()).unwrap();
    for page in 0..256u64 {
        let lin = page << 12;
        let frame = if (DATA..DATA + DATA_PAGES * 0x1000).contains(&lin) {
            DATA + (DATA_PAGES - 1 - ((lin - DATA) >> 12)) * 0x1000
        } else {
            lin
        };
        bus.mem.load(base::GuestPhysAddr(PT + 4 * page), &((frame as u32) | 7).to_le_bytes()).unwrap();
    }
    c.cr3 = PD;
    c.cr0 |= cpu::state::cr::CR0_PG;
}

fn run_one(
    engine: &mut dyn ExecutionEngine,
    setup: Setup,
    code: &[u8],
    budget: u64,
    slices: &[u64],
) -> (RunExit, CpuState, RamBus) {
    let mut bus = RamBus::with_code(RAM, code, CODE).unwrap();
    let mut c = state(setup.bits());
    c.cr4 |= cpu::state::cr::CR4_OSFXSR | cpu::state::cr::CR4_OSXMMEXCPT;
    if matches!(setup, Setup::Paged32 | Setup::Ring3Paged32) {
        paging(&mut bus, &mut c);
    }
    if setup == Setup::Ring3Paged32 {
        // Flat DPL 3 segments (no descriptor table: nothing reloads them).
        use cpu::state::SegReg;
        for (i, s) in c.seg.iter_mut().enumerate() {
            if i == SegReg::Cs as usize {
                s.selector = 0x1B;
                s.attr = (s.attr & !0xFF) | 0xFB;
            } else {
                s.selector = 0x23;
                s.attr = (s.attr & !0xFF) | 0xF3;
            }
        }
        c.cpl = 3;
    }
    // Data: a pattern, so loads see varied values.
    let pattern: Vec<u8> = (0..DATA_PAGES * 0x1000).map(|i| (i.wrapping_mul(0x9D) ^ (i >> 7)) as u8).collect();
    bus.mem.load(base::GuestPhysAddr(DATA), &pattern).unwrap();
    let e = run_sliced(engine, &mut c, &mut bus, budget, slices);
    (e, c, bus)
}

/// Instructions a program may run (the longest that reach their end run about 7,000; one that
/// overwrote a return address may loop).
const BUDGET: u64 = 20_000;

/// Where a failing program first diverges: the smallest budget after which the JIT (one run,
/// blocks of at most `k` instructions, for the `k` that diverges first) and the interpreter
/// differ, as text.
fn first_divergence(setup: Setup, code: &[u8], total: u64) -> String {
    for k in [1, 2, 4, 8, 16, 32, jit::MAX_BLOCK_INSNS] {
        for n in 1..=total {
            let (e0, c0, b0) = run_one(&mut Interpreter::new(), setup, code, n, &[]);
            let mut t = jit::Translator::new();
            t.set_max_block_insns(k);
            let (e1, c1, b1) = run_one(&mut t, setup, code, n, &[]);
            if e0 != e1 || arch(&c0) != arch(&c1) || b0.mem.backing() != b1.mem.backing() {
                return format!(
                    "first divergence with blocks of at most {k} instructions: after {n} instructions, \
                     RIP {:#x} (JIT) / {:#x} (interpreter)\n jit: {}\nintp: {}",
                    c1.rip,
                    c0.rip,
                    arch(&c1),
                    arch(&c0)
                );
            }
        }
    }
    "no divergence found with short budgets (only sliced runs diverge)".to_owned()
}

fn disassembly(bits: u32, code: &[u8]) -> String {
    use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
    let mut out = String::new();
    let mut f = IntelFormatter::new();
    for i in Decoder::with_ip(bits, code, CODE, DecoderOptions::NONE).iter() {
        let mut s = String::new();
        f.format(&i, &mut s);
        out += &format!("  {:#07x}  {s}\n", i.ip());
    }
    out
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    v.strip_prefix("0x").map_or_else(|| v.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
}

fn fuzz(setup: Setup) {
    let programs = env_u64("FERRO_FUZZ_PROGRAMS").unwrap_or(300);
    let seed = env_u64("FERRO_FUZZ_SEED").unwrap_or(0xF0_22ED_5EED) ^ (setup as u64) << 48;
    let (mut ended, mut insns, mut early) = (0u64, 0u64, Vec::new());
    for k in 0..programs {
        if env_u64("FERRO_FUZZ_ONLY").is_some_and(|o| o != k) {
            continue;
        }
        let pseed = seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let code = program(setup, pseed);
        if std::env::var_os("FERRO_FUZZ_TRACE").is_some() {
            eprintln!("{setup:?} program {k}:\n{}", disassembly(setup.bits(), &code));
        }
        let (e0, c0, b0) = run_one(&mut Interpreter::new(), setup, &code, BUDGET, &[]);
        for slices in [&[][..], &[1, 2, 3], &[17, 5, 1], &[300, 1, 40]] {
            let mut jit = jit::Translator::new();
            jit.set_clobber_calls(true);
            let (e1, c1, b1) = run_one(&mut jit, setup, &code, BUDGET, slices);
            let same_mem = b1.mem.backing() == b0.mem.backing();
            if e1 != e0 || arch(&c1) != arch(&c0) || !same_mem {
                // The first differing bytes (backing offsets: physical addresses here).
                let diff: Vec<String> = (b1.mem.backing().iter().zip(b0.mem.backing()).enumerate())
                    .filter(|(_, (x, y))| x != y)
                    .take(16)
                    .map(|(i, (x, y))| format!("{i:#x}: jit {x:#04x} interpreter {y:#04x}"))
                    .collect();
                panic!(
                    "{setup:?} program {k} (FERRO_FUZZ_SEED={:#x} FERRO_FUZZ_ONLY={k}), slices {slices:?}:\n\
                     exit {e1:?} vs interpreter {e0:?}; memory {}\n jit: {}\nintp: {}\n{}\nprogram:\n{}",
                    seed ^ (setup as u64) << 48,
                    if same_mem { "equal".to_owned() } else { format!("differs at {diff:?}") },
                    arch(&c1),
                    arch(&c0),
                    first_divergence(setup, &code, c0.icount),
                    disassembly(setup.bits(), &code)
                );
            }
        }
        let mut end = [0u8; 4];
        b0.mem.read(base::GuestPhysAddr(COUNTER + 4), &mut end).unwrap();
        if u32::from_le_bytes(end) == 1 {
            ended += 1;
        } else if early.len() < 5 {
            early.push((k, e0, c0.rip));
        }
        insns += c0.icount;
    }
    println!(
        "{setup:?}: {programs} programs identical, {ended} ran to their end (the first that did not: {early:x?}), \
         {insns} instructions (interpreter)"
    );
    // The programs must mostly run to the end (not fault early), or they test little.
    assert!(ended * 10 >= programs * 9, "{setup:?}: only {ended} of {programs} programs reached their end");
}

#[test]
fn test_structured_programs_flat32() {
    fuzz(Setup::Flat32);
}

#[test]
fn test_structured_programs_paged32() {
    fuzz(Setup::Paged32);
}

#[test]
fn test_structured_programs_ring3_paged32() {
    fuzz(Setup::Ring3Paged32);
}

#[test]
fn test_structured_programs_long64() {
    fuzz(Setup::Long64);
}
