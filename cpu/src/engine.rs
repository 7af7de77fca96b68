//! The interface shared by the interpreter and the binary translator.

use crate::bus::CpuBus;
use crate::state::CpuState;
use base::InstrCount;

/// Why a run returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunExit {
    /// The instruction budget was used up.
    BudgetExhausted,
    /// The CPU executed HLT and no interrupt is deliverable.
    Halted,
    /// A triple fault: the machine must reset (or stop with --no-reboot).
    TripleFault,
    /// A device asked the run to stop (see [`CpuBus::stop_requested`]).
    Stopped,
}

/// An engine that executes guest instructions on a [`CpuState`].
pub trait ExecutionEngine: std::fmt::Debug {
    /// Runs until `budget` instructions have retired or something stops the run.
    fn run(&mut self, cpu: &mut CpuState, bus: &mut dyn CpuBus, budget: InstrCount) -> RunExit;
    /// Forgets cached code for a guest physical range (the guest or a DMA wrote it).
    fn invalidate_phys(&mut self, start: u64, len: u64);
    /// Forgets everything that depends on the CPU mode (CR0/CR3/CR4/EFER/CS changes).
    fn flush_for_mode_change(&mut self, cpu: &mut CpuState);
    /// Block stepping (for lockstep): when on, a run returns after one unit of work, a
    /// translated block or one interpreted instruction, with [`RunExit::BudgetExhausted`] unless
    /// the unit ended otherwise (the budget is then not necessarily used up; the caller reads
    /// how far it got from `icount`). Returns false if the engine has no such mode (it then
    /// runs as before: the interpreter's unit is already one instruction per `run` of budget 1).
    fn set_block_step(&mut self, on: bool) -> bool {
        let _ = on;
        false
    }
    /// A short name for messages (`interp`, `jit`).
    fn name(&self) -> &'static str {
        "engine"
    }
    /// Engine statistics as `name: value` lines (`--stats`), if the engine keeps any.
    fn stats_text(&self) -> Option<String> {
        None
    }
}
