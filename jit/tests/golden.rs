//! Golden tests of emitted host code: for a dozen small guest snippets, the host code of the
//! block at the snippet's start is disassembled (iced-x86, Intel syntax) and compared with the
//! checked-in `tests/golden/<name>.expected`, so every change to emitted code shows in review.
//! `FERRO_BLESS=1 cargo test -p jit --test golden` rewrites the files.

mod common;

use common::*;
use cpu::ExecutionEngine;
use iced_x86::code_asm::*;
use std::path::PathBuf;

type Snippet = (&'static str, u32, fn(&mut CodeAssembler));

fn snippets() -> Vec<Snippet> {
    vec![
        ("alu_loop", 64, |a| {
            let mut top = a.create_label();
            a.set_label(&mut top).unwrap();
            a.add(rax, rcx).unwrap();
            a.xor(edx, eax).unwrap();
            a.dec(ecx).unwrap();
            a.jnz(top).unwrap();
            a.hlt().unwrap();
        }),
        ("load_store", 64, |a| {
            a.mov(rax, qword_ptr(rsi + 8)).unwrap();
            a.mov(qword_ptr(rdi + rcx * 8 + 0x10), rax).unwrap();
            a.add(dword_ptr(rsi), 5).unwrap();
            a.hlt().unwrap();
        }),
        ("call_ret", 64, |a| {
            let mut f = a.create_label();
            a.call(f).unwrap();
            a.hlt().unwrap();
            a.set_label(&mut f).unwrap();
            a.ret().unwrap();
        }),
        ("cond_branch", 32, |a| {
            let mut skip = a.create_label();
            a.cmp(eax, ebx).unwrap();
            a.jl(skip).unwrap();
            a.inc(esi).unwrap();
            a.set_label(&mut skip).unwrap();
            a.hlt().unwrap();
        }),
        ("string_rep_movsb", 64, |a| {
            a.mov(ecx, 16u32).unwrap();
            a.rep().movsb().unwrap();
            a.hlt().unwrap();
        }),
        ("inc_after_helper", 64, |a| {
            a.adc(eax, ebx).unwrap();
            a.inc(ecx).unwrap();
            a.hlt().unwrap();
        }),
        ("rip_relative", 64, |a| {
            let mut d = a.create_label();
            a.mov(rax, qword_ptr(d)).unwrap();
            a.hlt().unwrap();
            a.set_label(&mut d).unwrap();
            a.dq(&[0]).unwrap();
        }),
        ("addr32_in_64", 64, |a| {
            a.mov(eax, dword_ptr(esi + edi * 4)).unwrap();
            a.hlt().unwrap();
        }),
        ("shifts", 32, |a| {
            a.shl(eax, 1).unwrap();
            a.sar(ebx, 1).unwrap();
            a.shr(ecx, 3).unwrap();
            a.hlt().unwrap();
        }),
        ("mov_imm64", 64, |a| {
            a.mov(r8, 0x1234_5678_9ABC_DEF0u64).unwrap();
            a.mov(r9d, r8d).unwrap();
            a.hlt().unwrap();
        }),
        ("test_cmp_mem", 32, |a| {
            a.test(dword_ptr(esi), eax).unwrap();
            a.cmp(ebx, dword_ptr(0x8000u32)).unwrap();
            a.je(0x1000u64).unwrap();
            a.hlt().unwrap();
        }),
        ("partial_regs", 64, |a| {
            a.add(al, bl).unwrap();
            a.mov(ah, cl).unwrap();
            a.inc(dx).unwrap();
            a.movzx(esi, ah).unwrap();
            a.setb(spl).unwrap();
            a.cmovne(rdi, rax).unwrap();
            a.hlt().unwrap();
        }),
        ("imul_shifts_liveness", 64, |a| {
            a.imul_2(rax, rbx).unwrap(); // flags dead: the SHL overwrites them
            a.shl(rax, 5).unwrap(); // live: JC reads them
            a.jc(0x1000u64).unwrap();
            a.hlt().unwrap();
        }),
        ("gs_incdec_rdtsc", 64, |a| {
            a.mov(rax, qword_ptr(0x40u64).gs()).unwrap();
            a.inc(dword_ptr(rax + 8)).unwrap();
            a.movzx(ecx, byte_ptr(rax)).unwrap();
            a.rdtsc().unwrap();
            a.hlt().unwrap();
        }),
        ("fs_absolute_bt", 64, |a| {
            a.mov(rax, qword_ptr(0x28u64).fs()).unwrap();
            a.bt(dword_ptr(rsi + 4), 3).unwrap();
            a.hlt().unwrap();
        }),
        ("jmp_direct_64", 64, |a| {
            let mut l = a.create_label();
            a.inc(eax).unwrap();
            a.jmp(l).unwrap();
            a.set_label(&mut l).unwrap();
            a.hlt().unwrap();
        }),
        ("jmp_indirect_64", 64, |a| {
            a.inc(eax).unwrap();
            a.jmp(rbx).unwrap();
        }),
        // The loop jit_speed times (cpu/examples/speed_loop): a store and a load through the
        // TLB probe in a self-loop.
        ("speed_loop_64", 64, |a| {
            let mut top = a.create_label();
            a.set_label(&mut top).unwrap();
            a.add(rax, rcx).unwrap();
            a.mov(qword_ptr(rsi), rax).unwrap();
            a.xor(rdx, qword_ptr(rsi)).unwrap();
            a.shl(rdx, 1).unwrap();
            a.dec(ecx).unwrap();
            a.jnz(top).unwrap();
            a.hlt().unwrap();
        }),
        // The benchmark guest's integer loop (test-roms bench_guest; most of its instructions).
        ("int_loop_32", 32, |a| {
            let mut l1 = a.create_label();
            a.set_label(&mut l1).unwrap();
            a.add(eax, ecx).unwrap();
            a.mov(edx, eax).unwrap();
            a.shl(edx, 1).unwrap();
            a.add(eax, edx).unwrap();
            a.xor(eax, ecx).unwrap();
            a.dec(ecx).unwrap();
            a.jnz(l1).unwrap();
            a.hlt().unwrap();
        }),
        // The benchmark guest's hash loop (test-roms bench_guest): a self-loop with a memory
        // operand and live flags at the entry, on host registers.
        ("hash_loop_32", 32, |a| {
            let mut word = a.create_label();
            a.set_label(&mut word).unwrap();
            a.xor(eax, dword_ptr(ecx * 4 + 0x8000)).unwrap();
            a.mov(edx, eax).unwrap();
            a.shl(edx, 1).unwrap();
            a.add(eax, edx).unwrap();
            a.mov(edx, eax).unwrap();
            a.shr(edx, 1).unwrap();
            a.xor(eax, edx).unwrap();
            a.add(ecx, 1).unwrap();
            a.cmp(ecx, 16).unwrap();
            a.jne(word).unwrap();
            a.hlt().unwrap();
        }),
        // Its insertion sort's inner loop: two side exits (Jcc inside the block) and a JMP
        // back to the entry.
        ("sort_inner_32", 32, |a| {
            let mut inner = a.create_label();
            let mut place = a.create_label();
            a.set_label(&mut inner).unwrap();
            a.test(ebx, ebx).unwrap();
            a.je(place).unwrap();
            a.mov(eax, dword_ptr(esi + ebx * 4 - 4)).unwrap();
            a.cmp(eax, edx).unwrap();
            a.jbe(place).unwrap();
            a.mov(dword_ptr(esi + ebx * 4), eax).unwrap();
            a.sub(ebx, 1).unwrap();
            a.jmp(inner).unwrap();
            a.set_label(&mut place).unwrap();
            a.hlt().unwrap();
        }),
        // Its recursion's first block (fib: CMP, JB, PUSH, SUB, CALL): a side exit and a CALL.
        ("fib_entry_32", 32, |a| {
            let mut small = a.create_label();
            a.cmp(eax, 2).unwrap();
            a.jb(small).unwrap();
            a.push(eax).unwrap();
            a.sub(eax, 1).unwrap();
            a.call(small).unwrap();
            a.set_label(&mut small).unwrap();
            a.hlt().unwrap();
        }),
        // Its recursion's return path (fib: POP, ADD, RET): a RET through the lookup stub.
        ("fib_return_32", 32, |a| {
            a.pop(edx).unwrap();
            a.add(eax, edx).unwrap();
            a.ret().unwrap();
        }),
        ("real_mode_helpers_only", 16, |a| {
            a.mov(ax, 0x1234u32).unwrap();
            a.add(ax, bx).unwrap();
            a.hlt().unwrap();
        }),
    ]
}

#[test]
fn test_golden_emitted_host_code() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let bless = std::env::var_os("FERRO_BLESS").is_some();
    let mut failures = Vec::new();
    for (name, bits, f) in snippets() {
        let code = assemble(bits, f);
        let mut start = if bits == 16 {
            let mut s = cpu::CpuState::new();
            s.seg = [cpu::Segment::real(0); 6];
            s.seg[1].attr |= cpu::state::seg_attr::CODE;
            s.rip = CODE;
            s
        } else {
            state(bits)
        };
        start.gpr[4] = 0x7000;
        start.gpr[6] = 0x8000;
        start.gpr[7] = 0x9000;
        let mut bus = cpu::RamBus::with_code(RAM, &code, CODE).unwrap();
        let mut jit = jit::Translator::new();
        // The first run fills the TLB (an instruction fetch with no TLB entry is interpreted);
        // the second translates the block at the start.
        let mut c = start.clone();
        jit.run(&mut c, &mut bus, 100);
        let mut again = start.clone();
        again.tlb = c.tlb.clone();
        jit.run(&mut again, &mut bus, 100);
        let got = jit
            .disassemble_block(CODE, start.compute_mode_key())
            .unwrap_or_else(|| panic!("{name}: no block translated at the start"));
        let path = dir.join(format!("{name}.expected"));
        if bless {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if want != got {
            failures.push(format!("{name}: emitted code differs from {}:\n{got}", path.display()));
        }
    }
    assert!(failures.is_empty(), "{}\n(FERRO_BLESS=1 accepts the new code)", failures.join("\n"));
}
