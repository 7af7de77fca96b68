//! The in-code lookup of the next block (RET, JMP/CALL through a register or memory, branches
//! into another guest page go from block to block without the dispatcher): results, state,
//! instruction count and memory equal the interpreter's, whole and in slices that end runs in
//! the middle of such chains; an interrupt raised or unmasked among them is taken at the
//! interpreter's count; code rewritten at a RET's target runs as rewritten; and the statistics
//! show the path is taken (so these tests test it, not the dispatcher).

mod common;

use base::{AccessSize, GuestPhysAddr, PortAddr};
use common::*;
use cpu::{CpuBus, CpuState, ExecutionEngine, Interpreter, RamBus, RunExit};
use iced_x86::code_asm::*;
use mmu::PhysMemory;

/// A RET-heavy loop: a call chain three deep per round, results summed in EBX/RBX.
fn ret_heavy(bits: u32, rounds: u32) -> Vec<u8> {
    assemble(bits, |a| {
        let mut top = a.create_label();
        let mut f = a.create_label();
        let mut g = a.create_label();
        let mut h = a.create_label();
        a.mov(ecx, rounds).unwrap();
        a.xor(ebx, ebx).unwrap();
        a.xor(edx, edx).unwrap();
        a.set_label(&mut top).unwrap();
        a.call(f).unwrap();
        a.add(ebx, eax).unwrap();
        a.call(h).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
        a.set_label(&mut f).unwrap();
        a.mov(eax, ecx).unwrap();
        a.call(g).unwrap();
        a.add(eax, 3).unwrap();
        a.ret().unwrap();
        a.set_label(&mut g).unwrap();
        a.shl(eax, 1).unwrap();
        a.call(h).unwrap();
        a.ret().unwrap();
        a.set_label(&mut h).unwrap();
        a.inc(edx).unwrap();
        a.ret().unwrap();
    })
}

#[test]
fn test_lookup_ret_heavy_equals_interpreter() {
    for bits in [32, 64] {
        let (exit, c, _) = lockstep("ret-heavy", &ret_heavy(bits, 200), &state(bits), 100_000);
        assert_eq!(exit, RunExit::Halted, "{bits}-bit");
        // sum over n = 1..=200 of 2n + 3, and two calls of h per round.
        assert_eq!(c.gpr[3], 200 * 201 + 600, "{bits}-bit");
        assert_eq!(c.gpr[2], 400, "{bits}-bit");
    }
}

#[test]
fn test_lookup_indirect_calls_and_jumps_equal_interpreter() {
    let code = assemble(64, |a| {
        let mut top = a.create_label();
        let mut table = a.create_label();
        let mut fns = [a.create_label(), a.create_label(), a.create_label(), a.create_label()];
        let mut back = a.create_label();
        let mut via_reg = a.create_label();
        // The table of function pointers is filled at run time (RIP-relative LEAs).
        a.lea(rbx, qword_ptr(table)).unwrap();
        for (k, f) in fns.iter().enumerate() {
            a.lea(rax, qword_ptr(*f)).unwrap();
            a.mov(qword_ptr(rbx + 8 * k as i32), rax).unwrap();
        }
        a.mov(ecx, 300u32).unwrap();
        a.xor(esi, esi).unwrap();
        a.set_label(&mut top).unwrap();
        a.mov(eax, ecx).unwrap();
        a.and(eax, 3).unwrap();
        a.call(qword_ptr(rbx + rax * 8)).unwrap();
        a.mov(rdx, qword_ptr(rbx + 8)).unwrap();
        a.call(rdx).unwrap();
        a.lea(rdx, qword_ptr(via_reg)).unwrap();
        a.jmp(rdx).unwrap();
        a.set_label(&mut back).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
        a.set_label(&mut via_reg).unwrap();
        a.add(rsi, 1000).unwrap();
        a.lea(rdx, qword_ptr(back)).unwrap();
        a.jmp(rdx).unwrap();
        for (k, f) in fns.iter_mut().enumerate() {
            a.set_label(f).unwrap();
            a.add(rsi, k as i32 + 1).unwrap();
            a.ret().unwrap();
        }
        a.set_label(&mut table).unwrap();
        a.dq(&[0, 0, 0, 0]).unwrap();
    });
    let (exit, c, _) = lockstep("indirect", &code, &state(64), 100_000);
    assert_eq!(exit, RunExit::Halted);
    // 75 rounds each of f0..f3 (1+2+3+4), f1 (2) and via_reg (1000) every round.
    assert_eq!(c.gpr[6], 75 * 10 + 300 * 2 + 300 * 1000);
}

/// Code that jumps between three guest pages (direct JMP, fallthrough into the next page, a
/// Jcc whose taken path leaves the page).
fn cross_page(bits: u32) -> Vec<u8> {
    assemble(bits, |a| {
        let mut top = a.create_label();
        let mut p2 = a.create_label();
        let mut p3 = a.create_label();
        let mut odd = a.create_label();
        a.mov(ecx, 250u32).unwrap();
        a.set_label(&mut top).unwrap();
        a.add(ebx, ecx).unwrap();
        a.jmp(p2).unwrap();
        a.db(&[0xCC; 0x1100]).unwrap();
        a.set_label(&mut p2).unwrap();
        a.xor(ebx, 0x55).unwrap();
        a.test(ecx, 1).unwrap();
        a.jnz(odd).unwrap();
        a.add(edi, 2).unwrap();
        a.jmp(p3).unwrap();
        a.db(&[0xCC; 0x1100]).unwrap();
        a.set_label(&mut p3).unwrap();
        a.inc(esi).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
        a.db(&[0xCC; 0x1100]).unwrap();
        a.set_label(&mut odd).unwrap();
        a.add(edi, 1).unwrap();
        a.jmp(p3).unwrap();
    })
}

#[test]
fn test_lookup_cross_page_equals_interpreter() {
    for bits in [32, 64] {
        let (exit, c, _) = lockstep("cross-page", &cross_page(bits), &state(bits), 100_000);
        assert_eq!(exit, RunExit::Halted, "{bits}-bit");
        assert_eq!((c.gpr[6], c.gpr[7]), (250, 125 * 2 + 125), "{bits}-bit");
    }
}

/// Runs `code` on a JIT with lookup on or off; returns its state and statistics.
fn jit_run(code: &[u8], bits: u32, lookup: bool, budget: u64) -> (RunExit, CpuState, jit::JitStats) {
    let mut jit = jit::Translator::new();
    jit.set_lookup(lookup);
    let (e, c, _) = run(&mut jit, code, &state(bits), budget, &[]);
    (e, c, jit.stats())
}

#[test]
fn test_lookup_stats_show_the_path_taken() {
    for bits in [32, 64] {
        let code = ret_heavy(bits, 500);
        let (e_on, c_on, on) = jit_run(&code, bits, true, 1_000_000);
        let (e_off, c_off, off) = jit_run(&code, bits, false, 1_000_000);
        assert_eq!((e_on, arch(&c_on)), (e_off, arch(&c_off)), "{bits}-bit");
        // 500 rounds of 4 RETs and 3 CALLs: with lookup, the RETs go from block to block.
        assert!(on.lookup_hits >= 4 * 490, "{bits}-bit: {on:?}");
        assert!(on.block_runs < 100, "{bits}-bit: few dispatcher entries with lookup: {on:?}");
        assert_eq!((off.lookup_hits, off.lookup_misses), (0, 0), "{bits}-bit: {off:?}");
        assert!(off.block_runs >= 4 * 500, "{bits}-bit: every RET to the dispatcher: {off:?}");
    }
    // Block stepping turns it off whatever `set_lookup` says.
    let code = ret_heavy(64, 20);
    let mut jit = jit::Translator::new();
    jit.set_block_step(true);
    let mut bus = RamBus::with_code(RAM, &code, CODE).unwrap();
    let mut cpu = state(64);
    while jit.run(&mut cpu, &mut bus, 10_000) == RunExit::BudgetExhausted {}
    assert!(cpu.halted);
    assert_eq!((jit.stats().lookup_hits, jit.stats().lookup_misses), (0, 0));
}

#[test]
fn test_lookup_ret_target_rewritten_between_calls() {
    // f (on another page) stores ECX into the immediate of the MOV at its own return address,
    // then returns to it: the block there was entered by lookup in earlier rounds, and must
    // run as rewritten every time.
    let code = assemble(32, |a| {
        let mut top = a.create_label();
        let mut target = a.create_label();
        let mut f = a.create_label();
        a.mov(ecx, 40u32).unwrap();
        a.xor(ebx, ebx).unwrap();
        a.set_label(&mut top).unwrap();
        a.call(f).unwrap();
        a.set_label(&mut target).unwrap();
        a.mov(eax, 0u32).unwrap();
        a.add(ebx, eax).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
        a.db(&[0xCC; 0x1000]).unwrap();
        a.set_label(&mut f).unwrap();
        a.mov(edx, dword_ptr(esp)).unwrap();
        a.mov(dword_ptr(edx + 1), ecx).unwrap();
        a.ret().unwrap();
    });
    let (exit, c, _) = lockstep("ret-target-smc", &code, &state(32), 10_000);
    assert_eq!(exit, RunExit::Halted);
    assert_eq!(c.gpr[3], 40 * 41 / 2, "every round added the ECX just stored");
    // The same, the store in a block before the one with the RET.
    let code = assemble(64, |a| {
        let mut top = a.create_label();
        let mut target = a.create_label();
        let mut f = a.create_label();
        let mut f2 = a.create_label();
        a.mov(ecx, 40u32).unwrap();
        a.xor(ebx, ebx).unwrap();
        a.set_label(&mut top).unwrap();
        a.call(f).unwrap();
        a.set_label(&mut target).unwrap();
        a.mov(eax, 0u32).unwrap();
        a.add(ebx, eax).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
        a.db(&[0xCC; 0x1000]).unwrap();
        a.set_label(&mut f).unwrap();
        a.mov(rdx, qword_ptr(rsp)).unwrap();
        a.mov(dword_ptr(rdx + 1), ecx).unwrap();
        a.jmp(f2).unwrap();
        a.db(&[0xCC; 0x1000]).unwrap();
        a.set_label(&mut f2).unwrap();
        a.add(esi, 1).unwrap();
        a.ret().unwrap();
    });
    let (exit, c, _) = lockstep("ret-target-smc-64", &code, &state(64), 10_000);
    assert_eq!(exit, RunExit::Halted);
    assert_eq!(c.gpr[3], 40 * 41 / 2);
}

/// RAM and an interrupt line: port 0x80 raises it, the acknowledge (vector 0x20) lowers it.
struct IrqBus {
    ram: RamBus,
    line: bool,
}

impl CpuBus for IrqBus {
    fn memory(&mut self) -> &mut PhysMemory {
        self.ram.memory()
    }
    fn mmio_read(&mut self, id: u32, a: GuestPhysAddr, s: AccessSize) -> u64 {
        self.ram.mmio_read(id, a, s)
    }
    fn mmio_write(&mut self, id: u32, a: GuestPhysAddr, s: AccessSize, v: u64) {
        self.ram.mmio_write(id, a, s, v)
    }
    fn port_read(&mut self, p: PortAddr, s: AccessSize) -> u32 {
        self.ram.port_read(p, s)
    }
    fn port_write(&mut self, p: PortAddr, s: AccessSize, v: u32) {
        if p.0 == 0x80 {
            self.line = true;
        }
        self.ram.port_write(p, s, v)
    }
    fn interrupt_pending(&mut self) -> bool {
        self.line
    }
    fn acknowledge_interrupt(&mut self) -> Option<u8> {
        std::mem::take(&mut self.line).then_some(0x20)
    }
    fn stop_requested(&mut self) -> bool {
        false
    }
}

const IDT: u64 = 0x800;
const HANDLER: u64 = 0x600;
/// The handler logs the instruction count (RDTSC) of each interrupt here.
const LOG: u64 = 0x8_0000;

fn irq_run(engine: &mut dyn ExecutionEngine, code: &[u8], slices: &[u64]) -> (RunExit, String, Vec<u8>) {
    let mut ram = RamBus::with_code(RAM, code, CODE).unwrap();
    let w = |ram: &mut RamBus, at: u64, v: u64| ram.mem.load(GuestPhysAddr(at), &v.to_le_bytes()).unwrap();
    w(&mut ram, 8, 0x00CF_9A00_0000_FFFF);
    w(&mut ram, 16, 0x00CF_9200_0000_FFFF);
    w(&mut ram, IDT + 0x20 * 8, (HANDLER & 0xFFFF) | (8 << 16) | (0x8E << 40) | ((HANDLER >> 16) << 48));
    // The same handler for the interrupt and for #DB (vector 1):
    // rdtsc; mov [edi], eax; add edi, 4; and dword [esp + 8], ~TF; iretd
    w(&mut ram, IDT + 8, (HANDLER & 0xFFFF) | (8 << 16) | (0x8E << 40) | ((HANDLER >> 16) << 48));
    #[rustfmt::skip]
    let handler = [0x0F, 0x31, 0x89, 0x07, 0x83, 0xC7, 0x04, 0x81, 0x64, 0x24, 0x08, 0xFF, 0xFE, 0xFF, 0xFF, 0xCF];
    ram.mem.load(GuestPhysAddr(HANDLER), &handler).unwrap();
    let mut bus = IrqBus { ram, line: false };
    let mut cpu = CpuState::new_flat32();
    cpu.gdtr = cpu::DescriptorTable { base: 0, limit: 23 };
    cpu.idtr = cpu::DescriptorTable { base: IDT, limit: 0x7FF };
    cpu.rip = CODE;
    cpu.gpr = [0; 16];
    cpu.gpr[4] = 0x7_0000;
    cpu.gpr[7] = LOG;
    cpu.rflags |= cpu::state::rflags::IF;
    let exit = run_sliced(engine, &mut cpu, &mut bus, 200_000, slices);
    let mut log = vec![0u8; 4096];
    bus.ram.mem.read(GuestPhysAddr(LOG), &mut log).unwrap();
    (exit, arch(&cpu), log)
}

#[test]
fn test_lookup_interrupts_taken_at_the_interpreters_count() {
    // A RET-heavy loop that raises the line every 8th round (taken right after the OUT) and,
    // once, raises it with interrupts masked and goes on through calls and returns (lookups
    // with the line up) until STI (taken after the instruction after STI).
    let code = assemble(32, |a| {
        let mut top = a.create_label();
        let mut f = a.create_label();
        let mut skip = a.create_label();
        let mut skip2 = a.create_label();
        let mut inner = a.create_label();
        a.mov(ecx, 200u32).unwrap();
        a.set_label(&mut top).unwrap();
        a.call(f).unwrap();
        a.test(ecx, 7).unwrap();
        a.jnz(skip).unwrap();
        a.out(0x80, al).unwrap();
        a.set_label(&mut skip).unwrap();
        a.cmp(ecx, 100).unwrap();
        a.jne(skip2).unwrap();
        a.cli().unwrap();
        a.out(0x80, al).unwrap();
        a.mov(edx, 30u32).unwrap();
        a.set_label(&mut inner).unwrap();
        a.call(f).unwrap();
        a.dec(edx).unwrap();
        a.jnz(inner).unwrap();
        a.sti().unwrap();
        a.nop().unwrap();
        a.set_label(&mut skip2).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
        a.set_label(&mut f).unwrap();
        a.add(ebx, ecx).unwrap();
        a.ret().unwrap();
    });
    let (e0, s0, log0) = irq_run(&mut Interpreter::new(), &code, &[]);
    assert_eq!(e0, RunExit::Halted);
    let taken = log0.chunks(4).take_while(|c| c != &[0, 0, 0, 0]).count();
    assert_eq!(taken, 26, "25 interrupts in the loop, one after STI");
    for slices in [&[][..], &[1], &[2, 3, 5], &[7, 1, 13], &[500, 1, 1, 2, 1, 3, 1]] {
        let mut jit = jit::Translator::new();
        let (e1, s1, log1) = irq_run(&mut jit, &code, slices);
        assert_eq!(e1, e0, "slices {slices:?}");
        assert_eq!(s1, s0, "slices {slices:?}");
        assert!(log1 == log0, "slices {slices:?}: interrupts at other counts");
        if slices.is_empty() {
            let st = jit.stats();
            assert!(st.lookup_hits > 100 && st.lookup_misses > 0, "{st:?}");
        }
    }
}

#[test]
fn test_lookup_budget_ends_inside_chains() {
    // Every slicing cuts runs at many places inside RET/indirect/cross-page chains; each
    // must stop at the budget exactly as the interpreter does.
    for bits in [32, 64] {
        let code = ret_heavy(bits, 60);
        let code2 = cross_page(bits);
        for (name, code) in [("ret", &code), ("pages", &code2)] {
            let (e0, c0, _) = run(&mut Interpreter::new(), code, &state(bits), 100_000, &[]);
            for slices in [&[3u64, 4, 1, 9, 17, 2][..], &[64, 63, 65], &[11]] {
                let mut jit = jit::Translator::new();
                let mut bus = RamBus::with_code(RAM, code, CODE).unwrap();
                let mut cpu = state(bits);
                let mut k = 0;
                let e1 = loop {
                    let before = cpu.icount;
                    let n = slices[k % slices.len()];
                    k += 1;
                    let e = jit.run(&mut cpu, &mut bus, n);
                    if e != RunExit::BudgetExhausted {
                        break e;
                    }
                    assert_eq!(cpu.icount, before + n, "{bits}-bit {name}: a run stopped at its budget");
                };
                assert_eq!((e1, arch(&cpu)), (e0, arch(&c0)), "{bits}-bit {name} slices {slices:?}");
            }
        }
    }
}

/// `code` placed at `CODE`, then `tail` at `at`, `CODE` jumping there (rel32) after `head`.
fn placed(head: &[u8], at: u64, tail: &[u8]) -> Vec<u8> {
    let mut v = head.to_vec();
    let jmp_end = CODE + v.len() as u64 + 5;
    v.push(0xE9);
    v.extend_from_slice(&((at - jmp_end) as u32).to_le_bytes());
    v.resize((at - CODE) as usize, 0xCC);
    v.extend_from_slice(tail);
    v
}

#[test]
fn test_lookup_instruction_across_the_page_end_runs_in_blocks() {
    // A loop whose ADD EAX, imm32 crosses from one page into the next:
    // 1ff8: inc ebx; 3 x nop; 1ffd: add eax, 1 (to 2002); dec ecx; jnz 1ff8; hlt
    #[rustfmt::skip]
    let tail = [0xFF, 0xC3, 0x90, 0x90, 0x90, 0x05, 1, 0, 0, 0, 0xFF, 0xC9, 0x75, 0xF2, 0xF4];
    let code = placed(&[0xB9, 0xE8, 0x03, 0, 0], 0x1FF8, &tail);
    for bits in [32, 64] {
        let (exit, c, _) = lockstep("across-page", &code, &state(bits), 100_000);
        assert_eq!(exit, RunExit::Halted, "{bits}-bit");
        assert_eq!((c.gpr[0] as u32, c.gpr[3] as u32), (1000, 1000), "{bits}-bit");
        let (_, _, st) = jit_run(&code, bits, true, 100_000);
        // The block ending with it runs it through the helper and looks up the next block.
        assert!(st.interpreted < 10 && st.block_runs < 10, "{bits}-bit: {st:?}");
    }
}

#[test]
fn test_lookup_popfd_across_the_page_end_traps_after_it() {
    // POPFD (with a DS prefix in the page before) sets TF in every other round; single-step
    // traps follow, so the exit after it must not jump into the next block (translated and
    // in the jump cache from the rounds without TF) unchecked.
    // 1ff0: mov eax, ecx; and eax, 1; shl eax, 8; or eax, 2; push eax; 3 x nop;
    // 1fff: ds popfd; 2001: inc ebx; dec ecx; jnz 1ff0; hlt
    #[rustfmt::skip]
    let tail = [
        0x89, 0xC8, 0x83, 0xE0, 0x01, 0xC1, 0xE0, 0x08, 0x83, 0xC8, 0x02, 0x50, 0x90, 0x90, 0x90,
        0x3E, 0x9D, 0xFF, 0xC3, 0xFF, 0xC9, 0x75, 0xE9, 0xF4,
    ];
    let code = placed(&[0xB9, 10, 0, 0, 0], 0x1FF0, &tail);
    let (e0, s0, log0) = irq_run(&mut Interpreter::new(), &code, &[]);
    assert_eq!(e0, RunExit::Halted);
    assert!(log0.chunks(4).take_while(|c| c != &[0, 0, 0, 0]).count() >= 5, "traps after each POPFD with TF");
    for slices in [&[][..], &[1], &[2, 3, 5], &[7, 1, 13]] {
        let (e1, s1, log1) = irq_run(&mut jit::Translator::new(), &code, slices);
        assert_eq!((e1, &s1), (e0, &s0), "slices {slices:?}");
        assert!(log1 == log0, "slices {slices:?}: traps at other counts");
    }
}
