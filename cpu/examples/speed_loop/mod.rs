//! The 64-bit integer loop timed by cpu/examples/speed.rs (the interpreter) and
//! jit/examples/jit_speed.rs (interpreter and JIT): 6 guest instructions per iteration,
//! `FERRO_SPEED_ITERS` iterations (default 30 million), assembled at [`CODE`].

use iced_x86::code_asm::*;

/// Where the loop is assembled and started.
pub const CODE: u64 = 0x1000;

/// The loop's machine code, ending in HLT.
pub fn code() -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    let mut top = a.create_label();
    a.xor(eax, eax).unwrap();
    let iters: u32 = std::env::var("FERRO_SPEED_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(30_000_000);
    a.mov(ecx, iters).unwrap();
    a.mov(rsi, 0x8000u64).unwrap();
    a.set_label(&mut top).unwrap();
    a.add(rax, rcx).unwrap();
    a.mov(qword_ptr(rsi), rax).unwrap();
    a.xor(rdx, qword_ptr(rsi)).unwrap();
    a.shl(rdx, 1).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(top).unwrap();
    a.hlt().unwrap();
    a.assemble(CODE).unwrap()
}
