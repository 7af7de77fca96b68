//! `Translator::set_max_block_insns`, which lockstep uses to cut a divergent block down to the
//! instruction that diverges: block-stepped, each unit of straight-line code is exactly `k`
//! instructions (the last one what is left up to the HLT), a change of `k` drops the blocks
//! translated before it, and the result is the interpreter's (the oracle: the same code run by
//! the interpreter). The first instruction of a fresh CPU is interpreted (its fetch fills the
//! soft TLB), and a HLT ending a block is reported by the next run (which runs nothing).

use cpu::compare::{arch_diff, arch_eq};
use cpu::{CpuState, ExecutionEngine, Interpreter, RamBus, RunExit};

const CODE: u64 = 0x1000;
/// `inc eax` this many times, then HLT.
const INCS: u64 = 40;

fn machine() -> (CpuState, RamBus) {
    let mut code = vec![0x40u8; INCS as usize];
    code.push(0xF4);
    let bus = RamBus::with_code(1 << 20, &code, CODE).expect("ram");
    let mut cpu = CpuState::new_flat32();
    cpu.rip = CODE;
    cpu.refresh_mode_key();
    (cpu, bus)
}

/// Block-steps `t` from the start to the HLT; the instructions each unit ran after the first
/// (interpreted) one, up to the HLT.
fn units(t: &mut jit::Translator) -> (Vec<u64>, CpuState) {
    let (mut cpu, mut bus) = machine();
    let mut units = Vec::new();
    for _ in 0..1000 {
        let before = cpu.icount;
        let r = t.run(&mut cpu, &mut bus, 1_000_000);
        units.push(cpu.icount - before);
        if r == RunExit::Halted {
            assert_eq!(units.remove(0), 1, "the first instruction fills the TLB: {units:?}");
            while units.last() == Some(&0) {
                units.pop();
            }
            return (units, cpu);
        }
        assert_eq!(r, RunExit::BudgetExhausted);
    }
    panic!("no HLT: {units:?}");
}

#[test]
fn test_blocks_hold_at_most_the_set_number_of_instructions() {
    let (mut cpu, mut bus) = machine();
    assert_eq!(Interpreter::new().run(&mut cpu, &mut bus, 1_000_000), RunExit::Halted);
    let want = cpu;
    // After the first INC: the other INCs and the HLT.
    let total = INCS;
    let mut t = jit::Translator::new();
    t.set_block_step(true);
    // Untruncated first: one unit; then shorter limits, each dropping the longer blocks.
    for k in [jit::MAX_BLOCK_INSNS, 1, 2, 7, 39, 40, 3] {
        t.set_max_block_insns(k);
        let (units, cpu) = units(&mut t);
        let k = k as u64;
        let expect: Vec<u64> =
            (0..total.div_ceil(k)).map(|i| if (i + 1) * k <= total { k } else { total % k }).collect();
        assert_eq!(units, expect, "k = {k}");
        assert!(arch_eq(&cpu, &want), "k = {k}: {:?}", arch_diff(&cpu, &want));
    }
    // Out of range: clamped to 1..=MAX_BLOCK_INSNS.
    t.set_max_block_insns(0);
    assert_eq!(units(&mut t).0.len() as u64, total);
    t.set_max_block_insns(usize::MAX);
    assert_eq!(units(&mut t).0, vec![total]);
}
