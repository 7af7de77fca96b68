//! Test-only fault injection (cargo feature `test-plant`, never on in a normal build): makes
//! the translator emit wrong code for one chosen guest instruction, so lockstep's narrowing of
//! a divergence inside a translated block can be tested against a known culprit.
//!
//! The fault is per thread (tests run in parallel threads; the translator runs on the thread
//! that calls the engine): [`plant_imm32`] makes every instruction translated on this thread
//! whose 32-bit immediate operand is `from` use `to` instead. The interpreter, and the
//! per-instruction helper, still decode the guest's bytes and are not affected.

use iced_x86::{Instruction, OpKind};
use std::cell::Cell;

thread_local! {
    static IMM32: Cell<Option<(u32, u32)>> = const { Cell::new(None) };
}

/// From now on, on this thread, translated code uses immediate `to` wherever the guest
/// instruction has the 32-bit immediate `from`; `None` removes the fault.
pub fn plant_imm32(fault: Option<(u32, u32)>) {
    IMM32.with(|c| c.set(fault));
}

/// Applies the planted fault to a block's decoded instructions before they are emitted.
pub(crate) fn apply(insns: &mut [Instruction]) {
    let Some((from, to)) = IMM32.with(Cell::get) else { return };
    for i in insns {
        if (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Immediate32) && i.immediate32() == from {
            i.set_immediate32(to);
        }
    }
}
