//! REP STOS in 64-bit mode stores the iterations that fit on one page at once (the interpreter's
//! fast path, which the JIT's helper uses too). The per-iteration rule must hold exactly: every
//! iteration counts 1, a run stops exactly at its budget with RCX/RDI/memory as after that many
//! iterations, and pages that need the slow path (cached code on the page) still work. Oracle:
//! the state worked out by hand after every slice.

use cpu::state::rflags;
use cpu::{CpuState, ExecutionEngine, Interpreter, RamBus, RunExit};
use iced_x86::code_asm::*;

const CODE: u64 = 0x1000;

fn program(width: u32, dst: u64, count: u64, down: bool) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    a.mov(rcx, count).unwrap();
    a.mov(rdi, dst).unwrap();
    a.mov(rax, 0x8877_6655_4433_2211u64).unwrap();
    if down {
        a.std().unwrap();
    } else {
        a.cld().unwrap();
    }
    match width {
        1 => a.rep().stosb().unwrap(),
        2 => a.rep().stosw().unwrap(),
        4 => a.rep().stosd().unwrap(),
        _ => a.rep().stosq().unwrap(),
    }
    a.hlt().unwrap();
    a.assemble(CODE).unwrap()
}

#[test]
fn test_rep_stos_runs_stop_exactly_at_every_budget() {
    let pattern = 0x8877_6655_4433_2211u64.to_le_bytes();
    // (width, first destination, count): page crossings, an unaligned start, a range over the
    // code page (slow path there), a count that ends mid-page.
    let cases = [
        (1u32, 0x8FF3u64, 5000u64),
        (2, 0x9001, 3000),
        (4, 0xA000, 2100),
        (8, 0xBFF8, 900),
        (8, 0x1100, 700),
        (1, 0xC000, 7),
    ];
    for (width, dst, count) in cases {
        for down in [false, true] {
            let start = if down { dst + (count - 1) * u64::from(width) } else { dst };
            let code = program(width, start, count, down);
            for slice in [1u64, 2, 7, 100, 1000, 4096, 1 << 20] {
                let mut bus = RamBus::with_code(1 << 20, &code, CODE).unwrap();
                let mut cpu = CpuState::new_flat64();
                cpu.rip = CODE;
                let mut it = Interpreter::new();
                let name = format!("width {width} dst {dst:#x} count {count} down {down} slice {slice}");
                let exit = loop {
                    let before = cpu.icount;
                    let e = it.run(&mut cpu, &mut bus, slice);
                    if e != RunExit::BudgetExhausted {
                        break e;
                    }
                    assert_eq!(cpu.icount, before + slice, "{name}: the run used its whole budget");
                    // After the 4 set-up instructions, each instruction is one iteration.
                    if cpu.icount > 4 && cpu.icount - 4 <= count {
                        let done = cpu.icount - 4;
                        assert_eq!(cpu.gpr[1], count - done, "{name}: RCX after {done} iterations");
                        let step = u64::from(width);
                        let rdi_now = if down { start - done * step } else { start + done * step };
                        assert_eq!(cpu.gpr[7], rdi_now, "{name}: RDI after {done} iterations");
                        let (lo, hi) = if down { (rdi_now + step, start + step) } else { (start, rdi_now) };
                        let m = bus.mem.backing();
                        let filled = (lo..hi).all(|a| m[a as usize] == pattern[((a - start) % step) as usize]);
                        assert!(filled, "{name}: the {done} iterations stored");
                        let next = if down { rdi_now + step - 1 } else { rdi_now };
                        if !(CODE..CODE + 0x1000).contains(&next) {
                            assert_eq!(m[next as usize], 0, "{name}: nothing stored past them");
                        }
                    }
                    if cpu.icount > 1_000_000 {
                        panic!("{name}: no end");
                    }
                };
                assert_eq!(exit, RunExit::Halted, "{name}");
                assert_eq!(cpu.icount, 4 + count + 1, "{name}: every iteration counted");
                assert_eq!((cpu.gpr[1], cpu.rflags() & rflags::DF != 0), (0, down), "{name}");
            }
        }
    }
}
