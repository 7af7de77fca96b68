//! Memory accesses that share one soft-TLB probe (the JIT's probe groups: same address
//! registers, or the stack): every case where the shared probe cannot serve them all (the
//! group's bytes cross a page end, a write goes to a page holding code, a member faults) runs
//! under the interpreter and the JIT (one run and sliced) with identical results, and the
//! results are checked by hand.

mod common;

use common::*;
use cpu::RunExit;
use iced_x86::code_asm::*;

fn word(bus: &cpu::RamBus, addr: u64) -> u32 {
    let mut b = [0u8; 4];
    bus.mem.read(base::GuestPhysAddr(addr), &mut b).unwrap();
    u32::from_le_bytes(b)
}

/// Page tables (4 KiB pages, 32-bit paging) at 0x10000 mapping the first 1 MiB one to one
/// except linear page 0x2000, which maps to 0x5000: the pages on either side of 0x3000 are not
/// next to each other in memory, so an access given the other page's translation goes wrong.
fn split_paging(bus: &mut cpu::RamBus, c: &mut cpu::CpuState) {
    let (pd, pt) = (0x1_0000u64, 0x1_1000u64);
    bus.mem.load(base::GuestPhysAddr(pd), &((pt as u32) | 7).to_le_bytes()).unwrap();
    for page in 0..256u64 {
        let frame = if page == 2 { 0x5000 } else { page << 12 };
        bus.mem.load(base::GuestPhysAddr(pt + 4 * page), &((frame as u32) | 7).to_le_bytes()).unwrap();
    }
    c.cr3 = pd;
    c.cr0 |= cpu::state::cr::CR0_PG;
}

#[test]
fn test_group_across_a_page_end_equals_interpreter() {
    // Each turn reads [EBX-4] and writes [EBX] (one group: bytes [EBX-4, EBX+4)); EBX walks
    // down across 0x3000, where the group's bytes straddle two pages and each access probes
    // alone. Memory starts zeroed and the walk goes down, so every store writes 0 + 1. With
    // paging, linear 0x2000 is at 0x5000.
    for (bits, paged) in [(32u32, false), (64, false), (32, true)] {
        let code = assemble(bits, |a| {
            let mut top = a.create_label();
            // A store to linear page 0x2000 first, so its TLB entry allows writes when the
            // walk reaches it (the group's probe would then pass for that page alone).
            a.mov(ebx, 0x2F00u32).unwrap();
            if bits == 64 {
                a.mov(dword_ptr(rbx), eax).unwrap();
            } else {
                a.mov(dword_ptr(ebx), eax).unwrap();
            }
            a.mov(ebx, 0x3020u32).unwrap();
            a.mov(ecx, 40u32).unwrap();
            a.set_label(&mut top).unwrap();
            if bits == 64 {
                a.mov(eax, dword_ptr(rbx - 4)).unwrap();
                a.add(eax, 1).unwrap();
                a.mov(dword_ptr(rbx), eax).unwrap();
            } else {
                a.mov(eax, dword_ptr(ebx - 4)).unwrap();
                a.add(eax, 1).unwrap();
                a.mov(dword_ptr(ebx), eax).unwrap();
            }
            a.sub(ebx, 4).unwrap();
            a.dec(ecx).unwrap();
            a.jnz(top).unwrap();
            a.hlt().unwrap();
        });
        let what = format!("{bits}-bit{}", if paged { ", paged" } else { "" });
        let start = state(bits);
        let run = |engine: &mut dyn cpu::ExecutionEngine, slices: &[u64]| {
            let mut bus = cpu::RamBus::with_code(RAM, &code, CODE).unwrap();
            let mut c = start.clone();
            if paged {
                split_paging(&mut bus, &mut c);
            }
            let e = run_sliced(engine, &mut c, &mut bus, 1000, slices);
            (e, c, bus)
        };
        let (e0, c0, b0) = run(&mut cpu::Interpreter::new(), &[]);
        for slices in [&[][..], &[1], &[2, 3, 5], &[7, 1, 13]] {
            let (e1, c1, b1) = run(&mut jit::Translator::new(), slices);
            assert_eq!((e1, arch(&c1)), (e0, arch(&c0)), "{what}: slices {slices:?}");
            assert!(b1.mem.backing() == b0.mem.backing(), "{what}: memory differs with slices {slices:?}");
        }
        assert_eq!(e0, RunExit::Halted, "{what}");
        assert_eq!(c0.gpr[3], 0x3020 - 40 * 4, "{what}");
        let phys = |lin: u64| if paged && lin >> 12 == 2 { 0x5000 | (lin & 0xFFF) } else { lin };
        for k in 0..40u64 {
            assert_eq!(word(&b0, phys(0x3020 - 4 * k)), 1, "{what}: word {k}");
        }
        assert_eq!(word(&b0, phys(0x3020 - 4 * 40)), 0, "{what}: below the walk");
    }
}

#[test]
fn test_group_writing_a_page_that_holds_code() {
    // Data in the code's own page: the group's write makes its shared probe miss (writes to a
    // page with translated code take the slow path), so both accesses probe alone, and the
    // stores land.
    let code = assemble(32, |a| {
        let mut top = a.create_label();
        a.mov(esi, (CODE + 0x800) as u32).unwrap();
        a.mov(ecx, 20u32).unwrap();
        a.set_label(&mut top).unwrap();
        a.mov(eax, dword_ptr(esi)).unwrap();
        a.add(eax, ecx).unwrap();
        a.mov(dword_ptr(esi + 4), eax).unwrap();
        a.add(esi, 4).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
    });
    let (exit, c, bus) = lockstep("group-code-page", &code, &state(32), 1000);
    assert_eq!(exit, RunExit::Halted);
    assert_eq!(c.gpr[6], CODE + 0x800 + 80);
    // word[k+1] = word[k] + (20 - k), word[0] = 0: the partial sums of 20, 19, ...
    let mut want = 0u32;
    for k in 0..20u32 {
        want += 20 - k;
        assert_eq!(word(&bus, CODE + 0x800 + 4 * u64::from(k + 1)), want, "word {}", k + 1);
    }
}

#[test]
fn test_group_member_faults_on_the_next_page() {
    // The group's bytes run from the last present page into a page that is not: the shared
    // probe misses, the load (leader) runs alone, and the store (member) faults (#PF; no IDT,
    // so a triple fault) with the load's result in EAX and nothing written. PSE: PDE 0 maps
    // 0..4 MiB, PDE 1 is not present.
    let pd = 0x1_0000u64;
    let code = assemble(32, |a| {
        a.mov(ebx, 0x3F_FFFCu32).unwrap();
        a.mov(eax, dword_ptr(ebx)).unwrap();
        a.add(eax, 5).unwrap();
        a.mov(dword_ptr(ebx + 4), eax).unwrap();
        a.hlt().unwrap();
    });
    let mut start = state(32);
    start.cr3 = pd;
    start.cr4 |= cpu::state::cr::CR4_PSE;
    start.cr0 |= cpu::state::cr::CR0_PG;
    let run = |engine: &mut dyn cpu::ExecutionEngine, slices: &[u64]| {
        let mut bus = cpu::RamBus::with_code(4 << 20, &code, CODE).unwrap();
        bus.mem.load(base::GuestPhysAddr(pd), &0x83u32.to_le_bytes()).unwrap();
        bus.mem.load(base::GuestPhysAddr(0x3F_FFFC), &7u32.to_le_bytes()).unwrap();
        // Twice: the first run fills the TLB, the second (with that TLB) runs the translated
        // block.
        let mut c = start.clone();
        let first = run_sliced(engine, &mut c, &mut bus, 100, slices);
        let mut again = start.clone();
        again.tlb = c.tlb.clone();
        let second = run_sliced(engine, &mut again, &mut bus, 100, slices);
        (vec![first, second], arch(&again), again)
    };
    let (e0, s0, c0) = run(&mut cpu::Interpreter::new(), &[]);
    for slices in [&[][..], &[1], &[2, 3]] {
        let (e1, s1, _) = run(&mut jit::Translator::new(), slices);
        assert_eq!((&e1, &s1), (&e0, &s0), "slices {slices:?}");
    }
    assert_eq!(e0, [RunExit::TripleFault; 2]);
    // By hand: the store (the 4th instruction) faulted at 0x400000 with EAX = 7 + 5.
    assert_eq!((c0.gpr[0], c0.icount, c0.cr2), (12, 4, 0x40_0000));
}

#[test]
fn test_stack_group_prologue_epilogue_and_page_end() {
    // A function that saves and restores three registers (PUSH x3, POP x3, RET: one group on
    // RSP), called in a loop with the stack first well inside a page, then straddling a page
    // end (the pushes cross 0x70000).
    for bits in [32u32, 64] {
        for stack in [0x7_0800u64, 0x7_0008] {
            let code = assemble(bits, |a| {
                let mut top = a.create_label();
                let mut f = a.create_label();
                a.mov(edi, 25u32).unwrap();
                a.mov(ebp, 0x100u32).unwrap();
                a.set_label(&mut top).unwrap();
                a.call(f).unwrap();
                a.dec(edi).unwrap();
                a.jnz(top).unwrap();
                a.hlt().unwrap();
                a.set_label(&mut f).unwrap();
                if bits == 64 {
                    a.push(rbp).unwrap();
                    a.push(rbx).unwrap();
                    a.push(rsi).unwrap();
                    a.mov(ebx, dword_ptr(rsp + 8)).unwrap();
                    a.add(ebx, 3).unwrap();
                    a.mov(dword_ptr(rsp + 16), ebx).unwrap();
                    a.pop(rsi).unwrap();
                    a.pop(rbx).unwrap();
                    a.pop(rbp).unwrap();
                } else {
                    a.push(ebp).unwrap();
                    a.push(ebx).unwrap();
                    a.push(esi).unwrap();
                    a.mov(ebx, dword_ptr(esp + 4)).unwrap();
                    a.add(ebx, 3).unwrap();
                    a.mov(dword_ptr(esp + 8), ebx).unwrap();
                    a.pop(esi).unwrap();
                    a.pop(ebx).unwrap();
                    a.pop(ebp).unwrap();
                }
                a.ret().unwrap();
            });
            let mut start = state(bits);
            start.gpr[4] = stack;
            let (exit, c, _) = lockstep("stack-group", &code, &start, 10_000);
            assert_eq!(exit, RunExit::Halted, "{bits}-bit, rsp {stack:#x}");
            // By hand: each call stores the saved EBX (0) + 3 over the saved EBP, so EBX
            // comes back unchanged, EBP comes back as 3, and RSP as it was.
            assert_eq!((c.gpr[5], c.gpr[3], c.gpr[4]), (3, 0, stack), "{bits}-bit, rsp {stack:#x}");
        }
    }
}

#[test]
fn test_group_last_member_that_calls_the_flags_helper() {
    // The Linux workload's crash (a host SIGSEGV, CI of stop 16): a group's last member that
    // needs the guest's CF (INC keeps it, ADC adds it) materializes lazy flags through a Rust
    // helper before its own access, and the helper may change R10, which holds the group's
    // addend. The interpreted CMPXCHG before the group leaves the flags lazy, so the helper
    // really runs; the clobbering check (`set_clobber_calls`, on in the sliced runs of
    // `lockstep`) makes it change R10 every time. By hand: each turn adds 1 (INC) or
    // 1 + CF (ADC; CMPXCHG compared 7 with 9, so CF = 1) to the word at ESI + 4, reads the
    // word at ESI, and CMPXCHG never stores (EAX = 7 differs from 9).
    for bits in [32u32, 64] {
        for adc in [false, true] {
            let code = assemble(bits, |a| {
                let mut top = a.create_label();
                a.mov(esi, 0x8000u32).unwrap();
                a.mov(edi, 0x8100u32).unwrap();
                a.mov(ebx, 50u32).unwrap();
                if bits == 64 {
                    a.mov(dword_ptr(rdi), 9u32).unwrap();
                    a.mov(dword_ptr(rsi), 0x1234u32).unwrap();
                } else {
                    a.mov(dword_ptr(edi), 9u32).unwrap();
                    a.mov(dword_ptr(esi), 0x1234u32).unwrap();
                }
                a.set_label(&mut top).unwrap();
                a.mov(eax, 7u32).unwrap();
                a.mov(ecx, 1u32).unwrap();
                if bits == 64 {
                    a.cmpxchg(dword_ptr(rdi), ecx).unwrap();
                    a.mov(edx, dword_ptr(rsi)).unwrap();
                    if adc {
                        a.adc(dword_ptr(rsi + 4), ecx).unwrap();
                    } else {
                        a.inc(dword_ptr(rsi + 4)).unwrap();
                    }
                } else {
                    a.cmpxchg(dword_ptr(edi), ecx).unwrap();
                    a.mov(edx, dword_ptr(esi)).unwrap();
                    if adc {
                        a.adc(dword_ptr(esi + 4), ecx).unwrap();
                    } else {
                        a.inc(dword_ptr(esi + 4)).unwrap();
                    }
                }
                a.dec(ebx).unwrap();
                a.jnz(top).unwrap();
                a.hlt().unwrap();
            });
            let what = format!("{bits}-bit, {}", if adc { "ADC" } else { "INC" });
            let (exit, c, bus) = lockstep(&what, &code, &state(bits), 10_000);
            assert_eq!(exit, RunExit::Halted, "{what}");
            assert_eq!((c.gpr[2], c.gpr[0]), (0x1234, 9), "{what}: EDX, EAX (CMPXCHG loads 9)");
            assert_eq!(word(&bus, 0x8004), if adc { 100 } else { 50 }, "{what}");
            assert_eq!(word(&bus, 0x8100), 9, "{what}");
        }
    }
}
