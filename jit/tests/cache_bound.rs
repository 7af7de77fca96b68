//! The translation cache is bounded: a guest whose code needs more blocks than the cache holds
//! still runs exactly as under the interpreter, through flushes (counted in the statistics)
//! that can land between chained blocks and in the middle of sliced runs. The bound is lowered
//! to 256 blocks so the test crosses it quickly (the default is 65,536 blocks or 16 MiB).

mod common;

use common::*;
use cpu::{Interpreter, RunExit};
use iced_x86::code_asm::*;

const BLOCKS_PER_PASS: u32 = 1000;
const PASSES: u32 = 3;
const BOUND: usize = 256;

#[test]
fn test_cache_bound_flushes_and_runs_on() {
    // PASSES times: BLOCKS_PER_PASS blocks of `inc ebx; jmp short next` (4 bytes each, so 1000
    // blocks fill pages), then `dec ecx; jnz top` back to the first.
    let code = assemble(64, |a| {
        let mut top = a.create_label();
        a.mov(ecx, PASSES).unwrap();
        a.set_label(&mut top).unwrap();
        for _ in 0..BLOCKS_PER_PASS {
            a.inc(ebx).unwrap();
            a.db(&[0xEB, 0x00]).unwrap(); // jmp short +0: ends the block
        }
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
    });
    let budget = 10_000;
    let (e0, c0, b0) = run(&mut Interpreter::new(), &code, &state(64), budget, &[]);
    assert_eq!(e0, RunExit::Halted);
    assert_eq!(c0.gpr[3], u64::from(BLOCKS_PER_PASS * PASSES));
    for slices in [&[][..], &[1], &[2, 3, 5], &[500, 1, 1, 2, 1, 3, 1], &[97]] {
        let mut jit = jit::Translator::with_max_blocks(BOUND);
        let (e1, c1, b1) = run(&mut jit, &code, &state(64), budget, slices);
        assert_eq!(e1, e0, "exit differs with slices {slices:?}");
        assert_eq!(arch(&c1), arch(&c0), "state differs with slices {slices:?}");
        assert!(b1.mem.backing() == b0.mem.backing(), "memory differs with slices {slices:?}");
        let s = jit.stats();
        println!("slices {slices:?}: {s:?}");
        if slices.is_empty() {
            // No pass fits in the cache: every pass translates every block again.
            assert!(s.blocks_translated >= u64::from(BLOCKS_PER_PASS * PASSES), "{s:?}");
            assert!(s.cache_flushes >= s.blocks_translated / BOUND as u64 - 1, "{s:?}");
            assert!(s.chains_patched > 0, "{s:?}: blocks were chained between flushes");
        }
    }
}
