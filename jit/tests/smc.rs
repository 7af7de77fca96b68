//! Self-modifying code under the JIT: the architectural rule (SDM vol. 3 11.6: a write to a
//! code byte is seen by the next fetch of it) holds for a store into the running block, a
//! REP STOSB over the code it is part of, a page written through one linear alias and executed
//! through another, and memory rewritten by DMA between runs. Results are worked out by hand
//! and the interpreter must agree.

mod common;

use common::*;
use cpu::state::cr;
use cpu::{ExecutionEngine, RunExit};
use iced_x86::code_asm::*;

#[test]
fn test_smc_loop_patches_its_own_next_instruction() {
    // 64-bit: the store is RIP-relative.
    let code64 = assemble(64, |a| {
        let mut top = a.create_label();
        let mut patch = a.create_label();
        a.mov(ecx, 10u32).unwrap();
        a.xor(ebx, ebx).unwrap();
        a.set_label(&mut top).unwrap();
        // The immediate of the MOV below becomes CL; the MOV runs right after the store.
        a.lea(rdi, qword_ptr(patch)).unwrap();
        a.mov(byte_ptr(rdi + 1), cl).unwrap();
        a.set_label(&mut patch).unwrap();
        a.mov(eax, 0u32).unwrap();
        a.add(ebx, eax).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
    });
    // 32-bit, by hand (absolute store address):
    let code32 = [
        0xB9, 10, 0, 0, 0, // 1000: mov ecx, 10
        0x31, 0xDB, // 1005: xor ebx, ebx
        0x88, 0x0D, 0x0E, 0x10, 0, 0, // 1007: mov [0x100e], cl
        0xB8, 0, 0, 0, 0, // 100d: mov eax, imm32 (patched)
        0x01, 0xC3, // 1012: add ebx, eax
        0x49, // 1014: dec ecx
        0x75, 0xF0, // 1015: jnz 1007
        0xF4, // 1017: hlt
    ];
    for (bits, code) in [(64u32, code64), (32, code32.to_vec())] {
        let (exit, c, _) = lockstep("patch-next", &code, &state(bits), 10_000);
        assert_eq!(exit, RunExit::Halted);
        assert_eq!(c.gpr[3], 55, "{bits}-bit: every MOV ran with the value just stored into it");
    }
}

#[test]
fn test_smc_rep_stosb_over_running_code() {
    // REP STOSB writes NOPs over the instructions that follow it (ECX of them).
    let code = assemble(64, |a| {
        let mut target = a.create_label();
        a.lea(rdi, qword_ptr(target)).unwrap();
        a.mov(al, 0x90u32).unwrap();
        a.mov(ecx, 10u32).unwrap();
        a.xor(ebx, ebx).unwrap();
        a.rep().stosb().unwrap();
        a.set_label(&mut target).unwrap();
        a.mov(ebx, 1u32).unwrap(); // 5 bytes
        a.mov(ebx, 2u32).unwrap(); // 5 bytes
        a.add(ebx, 0x40).unwrap();
        a.hlt().unwrap();
    });
    let (exit, c, _) = lockstep("rep-stosb", &code, &state(64), 1000);
    assert_eq!(exit, RunExit::Halted);
    assert_eq!(c.gpr[3], 0x40, "both MOVs were overwritten before they ran");
}

#[test]
fn test_smc_write_through_one_alias_execute_through_another() {
    // 32-bit paging, 4 MiB pages: linear 0 and linear 4 MiB both map physical 0. The function
    // at 0x3000 (`mov eax, imm32; ret`) is called through the alias 0x403000 and patched
    // through 0x3001.
    let pd = 0x1_0000u64;
    let code = assemble(32, |a| {
        a.xor(ebx, ebx).unwrap();
        a.mov(eax, 0x40_3000u32).unwrap();
        a.call(eax).unwrap();
        a.add(ebx, eax).unwrap();
        a.mov(dword_ptr(0x3001u32), 2).unwrap();
        a.mov(eax, 0x40_3000u32).unwrap();
        a.call(eax).unwrap();
        a.add(ebx, eax).unwrap();
        a.mov(dword_ptr(0x3001u32), 40).unwrap();
        a.mov(eax, 0x40_3000u32).unwrap();
        a.call(eax).unwrap();
        a.add(ebx, eax).unwrap();
        a.hlt().unwrap();
    });
    let func = [0xB8, 1, 0, 0, 0, 0xC3]; // mov eax, 1; ret
    let mut start = state(32);
    start.cr3 = pd;
    start.cr4 |= cr::CR4_PSE;
    start.cr0 |= cr::CR0_PG;
    for engine in 0..2 {
        let mut bus = cpu::RamBus::with_code(RAM, &code, CODE).unwrap();
        bus.mem.load(base::GuestPhysAddr(pd), &0x83u32.to_le_bytes()).unwrap();
        bus.mem.load(base::GuestPhysAddr(pd + 4), &0x83u32.to_le_bytes()).unwrap();
        bus.mem.load(base::GuestPhysAddr(0x3000), &func).unwrap();
        let mut e: Box<dyn ExecutionEngine> =
            if engine == 0 { Box::new(cpu::Interpreter::new()) } else { Box::new(jit::Translator::new()) };
        let mut c = start.clone();
        assert_eq!(e.run(&mut c, &mut bus, 1000), RunExit::Halted);
        assert_eq!(c.gpr[3], 1 + 2 + 40, "engine {}", e.name());
    }
}

#[test]
fn test_smc_dma_into_translated_code_is_seen() {
    // A translated loop; between runs a device writes new code over it (DMA).
    let code = assemble(64, |a| {
        a.mov(eax, 1u32).unwrap();
        a.add(ebx, eax).unwrap();
        a.hlt().unwrap();
    });
    let mut bus = cpu::RamBus::with_code(RAM, &code, CODE).unwrap();
    let mut jit = jit::Translator::new();
    let mut c = state(64);
    assert_eq!(jit.run(&mut c, &mut bus, 100), RunExit::Halted);
    assert_eq!(c.gpr[3], 1);
    assert!(jit.stats().blocks_translated >= 1);
    // DMA: the immediate of `mov eax, 1` becomes 7.
    bus.mem.dma_write_backing(CODE + 1, &7u32.to_le_bytes());
    let mut c = state(64);
    assert_eq!(jit.run(&mut c, &mut bus, 100), RunExit::Halted);
    assert_eq!(c.gpr[3], 7, "the block translated before the DMA was dropped");
    assert!(jit.stats().smc_invalidations >= 1);
}

#[test]
fn test_smc_data_next_to_a_hot_loop_does_not_drop_it() {
    // A loop stores to a variable in its own page, 2 KiB away (another 64-byte chunk). At
    // ECX = 500 it patches its own ADD (imm8 1 -> 2) once: that store hits code.
    let code = assemble(64, |a| {
        let mut top = a.create_label();
        let mut patch = a.create_label();
        let mut var = a.create_label();
        a.mov(ecx, 1000u32).unwrap();
        a.xor(ebx, ebx).unwrap();
        a.set_label(&mut top).unwrap();
        a.mov(qword_ptr(var), rcx).unwrap();
        a.cmp(ecx, 500).unwrap();
        a.jne(patch).unwrap();
        a.lea(rdi, qword_ptr(patch)).unwrap();
        a.mov(byte_ptr(rdi + 2), 2).unwrap();
        a.set_label(&mut patch).unwrap();
        a.add(ebx, 1).unwrap(); // 83 C3 01
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
        a.db(&[0u8; 0x800]).unwrap();
        a.set_label(&mut var).unwrap();
        a.dq(&[0]).unwrap();
    });
    assert_eq!(code[code.len() - 8..], [0; 8]);
    let (exit, c, _) = lockstep("data-next-to-loop", &code, &state(64), 20_000);
    assert_eq!(exit, RunExit::Halted);
    assert_eq!(c.gpr[3], 500 + 2 * 500, "500 ADDs of 1, then the patched ADD of 2 ran 500 times");
    // One run: after HOT_DATA_WRITES invalidations the page is tracked per chunk, and stores
    // to the variable stop dropping the loop (which keeps running as translated code).
    let mut jit = jit::Translator::new();
    let (exit, c, mut bus) = run(&mut jit, &code, &state(64), 20_000, &[]);
    assert_eq!(exit, RunExit::Halted);
    assert_eq!(c.gpr[3], 1500);
    let s = jit.stats();
    let hot = u64::from(mmu::code::HOT_DATA_WRITES);
    let code_pages = bus.mem.code_pages();
    // HOT_DATA_WRITES whole-page invalidations, then only the patch (one chunk).
    assert_eq!(code_pages.invalidations, hot + 1, "{s:?}: writes to the variable kept invalidating the loop");
    // Each whole-page invalidation drops the few blocks of the loop; 1000 iterations would drop
    // (and translate) thousands.
    assert!(s.smc_invalidations <= 4 * (hot + 1), "{s:?}");
    assert!(s.blocks_translated <= 4 * (hot + 2), "{s:?}");
    assert!(s.interpreted < 100, "{s:?}: the loop ran as translated code, not interpreted");
    assert!(bus.mem.code_pages().fine_misses >= 900, "stores to the variable hit no code");
}

/// An instruction crossing a page end, rewritten in its second page while a loop runs it: each
/// turn must run the bytes as they are now (the interpreter keeps such instructions decoded
/// while both pages map where they did and neither part was written).
#[test]
fn test_smc_instruction_across_a_page_end() {
    let mut code = vec![0x90u8; 0x1013];
    // 1000: mov ecx, 5 ; xor ebx, ebx ; jmp 1ffe
    code[..5].copy_from_slice(&[0xB9, 5, 0, 0, 0]);
    code[5..7].copy_from_slice(&[0x31, 0xDB]);
    code[7] = 0xE9;
    code[8..12].copy_from_slice(&(0x1FFEi32 - 0x100C).to_le_bytes());
    // 1ffe: mov eax, 1 (its immediate's last three bytes in the next page)
    code[0xFFE..0x1003].copy_from_slice(&[0xB8, 1, 0, 0, 0]);
    // 2003: add ebx, eax ; mov [0x2000], cl ; dec ecx ; jnz 1ffe ; hlt
    code[0x1003..0x1005].copy_from_slice(&[0x01, 0xC3]);
    code[0x1005..0x100B].copy_from_slice(&[0x88, 0x0D, 0x00, 0x20, 0x00, 0x00]);
    code[0x100B] = 0x49;
    code[0x100C..0x100E].copy_from_slice(&[0x0F, 0x85]);
    code[0x100E..0x1012].copy_from_slice(&(0x1FFEi32 - 0x2012).to_le_bytes());
    code[0x1012] = 0xF4;
    let (exit, c, _) = lockstep("smc-straddle", &code, &state(32), 1000);
    assert_eq!(exit, RunExit::Halted);
    // By hand: EAX takes 0x001, 0x501, 0x401, 0x301, 0x201 (CL written over the immediate's
    // second byte after each turn).
    assert_eq!(c.gpr[3], 0x001 + 0x501 + 0x401 + 0x301 + 0x201);
    assert_eq!(c.gpr[1], 0);
}
