//! The binary translator: guest x86 code is translated a block at a time into x86-64 host
//! code with `dynasmrt`, exact and in lockstep with the interpreter.
//!
//! **How.** Blocks are keyed by (backing offset of the first instruction,
//! [`cpu::CpuState::mode_key`]) and end at a control transfer, a HLT, the end of the page or
//! after [`MAX_BLOCK_INSNS`] instructions; a conditional branch ends a block only if it goes
//! back to the block's entry (elsewhere its taken path is a side exit and the block goes on). In
//! flat 32- and 64-bit code these run as host code, with the guest registers a block uses most
//! held in host registers (loaded at first use, written back before every exit, helper call and
//! slow path, so `CpuState` is exact whenever anything outside the block looks at it): MOV and the ALU operations of every width (AH..BH included), INC/DEC,
//! NOT/NEG, MOVZX/MOVSX/MOVSXD, IMUL (2/3 operands), shifts and rotates by an immediate or CL,
//! SETcc, CMOVcc, XCHG, CWDE/CDQE/CDQ/CQO, NOPs, RDTSC at CPL 0, LEA; MOV/ALU/INC/DEC/BT/CMOV/
//! MOVZX with one memory operand (FS/GS in 64-bit mode too), PUSH/POP, CALL rel and RET, JMP and
//! CALL through a 64-bit register or memory, all through an inline soft-TLB probe (one compare,
//! one add: the TLB holds host addresses; a miss runs the instruction through the interpreter;
//! accesses with the same address registers, or on the stack, with no helper or other access
//! between them share one probe that checks their page holds all their bytes,
//! `FERRO_JIT_GROUPS=0` turns that off); Jcc and JMP; the SSE integer, bitwise,
//! shuffle and move forms on XMM registers and memory (when the mode key says SSE cannot fault),
//! BSF/BSR/TZCNT, BT/BTS/BTR/BTC, one-operand MUL/IMUL, DIV and BSWAP on registers
//! (`FERRO_JIT_FORMS=0` turns those off). The host ALU computes the
//! flags; they stay in the host's RFLAGS until an instruction or the block exit needs them in
//! `CpuState`, and are not computed at all where liveness within the block shows them
//! overwritten before anything (a reader, a helper, a possible fault, the exit) can see them
//! (`FERRO_JIT_LIVENESS=0` turns that off). Direct
//! branches within a guest page are chained through patched `jmp rel32`; a branch back to the
//! block's entry loops inside it (on host registers, counting down the iterations the budget
//! allows; where the flags are dead at the entry, with one DEC/JZ, the flags made again from the
//! last flag writer if the budget runs out: `FERRO_JIT_COUNTED=0` turns that off); RET, indirect
//! branches and branches into another page jump
//! to a shared stub that finds the next block in the jump cache (an inline soft-TLB probe of
//! RIP, then the cache) and jumps into it, or asks a Rust helper making the dispatcher's own
//! checks, so a run goes from block to block without returning to the dispatcher
//! (`FERRO_JIT_LOOKUP=0` turns that off). Every other instruction is one call of
//! [`cpu::helpers::helper_step`], which runs the interpreter on exactly that instruction with the guest state in sync, so the translator runs
//! everything the interpreter runs. Each block checks at its top that it fits in the remaining
//! budget (else one instruction is interpreted), and a helper ends the block whenever execution
//! did not simply fall through (branch, fault, interrupt, I/O, a store into cached code, TLB
//! flush, mode change, budget end): faults, interrupts, port and MMIO accesses happen at the same
//! instruction count, with the same state, as under the interpreter.
//!
//! `FERRO_JIT_PROFILE=1` counts the instructions served by the per-instruction helper by form;
//! `--stats` prints the top 20 (`FERRO_JIT_PROFILE_TOP=n`: the top n).
//!
//! `FERRO_JIT_PERFMAP=1` names every block in `/tmp/perf-<pid>.map` (host address, size,
//! guest RIP, backing offset, mode key), so `perf report` attributes generated code to guest code.
//!
//! Self-modifying code: the translator marks the guest bytes of every block it translates in
//! the [`mmu::CodePages`] tracker, which forces stores to their page through the slow path; a
//! store that hits marked code clears the mark and queues the range, and the translator drops
//! the blocks overlapping it (and the blocks of the page chained into them) before it runs the
//! next block. A store into the running block ends the block after the store. A page written
//! [`mmu::code::HOT_DATA_WRITES`] times is tracked per 64-byte chunk from then on, so stores to
//! data next to code stop dropping that code.
//!
//! On hosts other than x86-64, [`Translator`] runs the interpreter.

#[cfg(all(target_arch = "x86_64", feature = "test-plant"))]
pub mod plant;
#[cfg(target_arch = "x86_64")]
mod profile;
#[cfg(target_arch = "x86_64")]
mod x64;

use cpu::{CpuBus, CpuState, ExecutionEngine, Interpreter, RunExit};

/// Most guest instructions in one block.
pub const MAX_BLOCK_INSNS: usize = 64;

/// Translator statistics (`--stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitStats {
    /// Blocks translated.
    pub blocks_translated: u64,
    /// Whole-cache flushes (cache full, mode flushes).
    pub cache_flushes: u64,
    /// Blocks dropped because their code was written (stores, DMA, loads).
    pub smc_invalidations: u64,
    /// Calls from generated code into helpers.
    pub helper_calls: u64,
    /// Instructions executed by the interpreter outside any block (no translation possible).
    pub interpreted: u64,
    /// `interpreted` by reason: an interrupt or debug event due (or halted), no TLB entry for
    /// the fetch, nothing translatable, the block not fitting in the budget.
    pub interpreted_why: [u64; 4],
    /// Block entries from the dispatcher.
    pub block_runs: u64,
    /// Direct jumps between blocks patched to go straight from one to the other.
    pub chains_patched: u64,
    /// Exits (RET, indirect branches, branches into other pages) whose next block generated
    /// code found in the jump cache and jumped into, without the dispatcher.
    pub lookup_hits: u64,
    /// Exits the lookup stub could not resolve alone (calls of the Rust lookup).
    pub lookup_misses: u64,
    /// Of `lookup_misses`, those the Rust lookup resolved to a block (the rest returned to the
    /// dispatcher: budget end, interrupt or debug event due, code invalidated, no TLB entry,
    /// cache full).
    pub lookup_found: u64,
}

/// The translating engine.
#[derive(Debug)]
pub struct Translator {
    interp: Interpreter,
    #[cfg(target_arch = "x86_64")]
    cache: x64::CodeCache,
    stats: JitStats,
    /// Log each instruction (`--trace`).
    pub trace: bool,
    /// Counts of helper-served instruction forms (`FERRO_JIT_PROFILE=1`), shown by `--stats`.
    #[cfg(target_arch = "x86_64")]
    profile: Option<profile::Profile>,
    /// Return from `run` after each block or interpreted instruction (lockstep); no chaining.
    block_step: bool,
    /// Exits find the next block in generated code (see [`Translator::set_lookup`]).
    lookup: bool,
    /// Helper calls clobber every caller-saved register (see [`Translator::set_clobber_calls`]).
    clobber: bool,
}

impl Default for Translator {
    fn default() -> Self {
        Self::new()
    }
}

impl Translator {
    /// A translator with an empty code cache.
    pub fn new() -> Self {
        Translator {
            interp: Interpreter::new(),
            #[cfg(target_arch = "x86_64")]
            cache: x64::CodeCache::new(),
            stats: JitStats::default(),
            trace: false,
            #[cfg(target_arch = "x86_64")]
            profile: profile::Profile::from_env(),
            block_step: false,
            lookup: true,
            #[cfg(target_arch = "x86_64")]
            clobber: x64::clobber::from_env(),
            #[cfg(not(target_arch = "x86_64"))]
            clobber: false,
        }
    }

    /// A check for the translator itself (off by default; `FERRO_JIT_CLOBBER=1` turns it on):
    /// every call from generated code to a Rust helper returns with all caller-saved registers
    /// (RCX, RDX, RSI, RDI, R8-R11, XMM0-XMM15) set to a non-canonical address, the worst a
    /// callee may do under the System V ABI. Generated code that wrongly keeps a value in one
    /// of them across a call then faults or diverges on every run, instead of on the few where
    /// the helper's path happens to change that register. Results are otherwise identical.
    pub fn set_clobber_calls(&mut self, on: bool) {
        self.clobber = on;
    }

    /// The in-code lookup of the next block (on by default): RET, indirect JMP/CALL and
    /// branches into another guest page find and enter the next block from generated code
    /// (jump cache, then a Rust helper making the dispatcher's checks) instead of returning
    /// to the dispatcher. Off, those exits return to the dispatcher. It is off during block
    /// stepping whatever this says; `FERRO_JIT_LOOKUP=0` also emits the exits without it.
    pub fn set_lookup(&mut self, on: bool) {
        self.lookup = on;
    }

    /// Block stepping (see [`ExecutionEngine::set_block_step`]): `run` returns after each
    /// translated block or interpreted instruction, and blocks are not chained (a block runs
    /// alone and returns to the dispatcher), so the caller can compare state at every block
    /// boundary. A block that jumps back to its own entry goes round only while its iterations
    /// fit in [`MAX_BLOCK_INSNS`] instructions (the budget of the block's run is cut to that).
    pub fn set_block_step(&mut self, on: bool) {
        self.block_step = on;
    }

    /// Translates blocks of at most `k` guest instructions from now on (`k` within
    /// 1..=[`MAX_BLOCK_INSNS`]; the default is [`MAX_BLOCK_INSNS`]) and drops the blocks
    /// translated so far. Lockstep uses it to narrow a divergence in a translated block down to
    /// one instruction: the smallest prefix of the block that still diverges ends with it.
    pub fn set_max_block_insns(&mut self, k: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            let k = k.clamp(1, MAX_BLOCK_INSNS);
            if self.cache.max_insns != k {
                self.cache.max_insns = k;
                if self.cache.invalidate(0, u64::MAX) > 0 {
                    self.stats.cache_flushes += 1;
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = k;
    }

    /// Whether block stepping is on.
    pub fn block_step(&self) -> bool {
        self.block_step
    }

    /// A translator whose cache flushes once it holds `max_blocks` blocks (the default bound
    /// is 65,536 blocks or 16 MiB of host code), so tests can cross the bound quickly.
    pub fn with_max_blocks(max_blocks: usize) -> Self {
        #[allow(unused_mut)]
        let mut t = Self::new();
        #[cfg(target_arch = "x86_64")]
        {
            t.cache.max_blocks = max_blocks.max(1);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = max_blocks;
        t
    }

    /// Statistics so far.
    pub fn stats(&self) -> JitStats {
        self.stats
    }

    /// The host code of the block for the guest code at backing offset `backing` in the mode
    /// `mode_key`, disassembled (Intel syntax, offsets from the block start), if translated.
    #[cfg(target_arch = "x86_64")]
    pub fn disassemble_block(&self, backing: u64, mode_key: u32) -> Option<String> {
        self.cache.disassemble(backing, mode_key)
    }
}

impl ExecutionEngine for Translator {
    fn run(&mut self, cpu: &mut CpuState, bus: &mut dyn CpuBus, budget: base::InstrCount) -> RunExit {
        #[cfg(target_arch = "x86_64")]
        {
            x64::run(self, cpu, bus, budget)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self.interp.trace = self.trace;
            self.interp.run(cpu, bus, budget)
        }
    }

    fn set_block_step(&mut self, on: bool) -> bool {
        Translator::set_block_step(self, on);
        true
    }

    fn invalidate_phys(&mut self, start: u64, len: u64) {
        // Callers name guest-physical ranges, blocks are keyed by backing offsets (equal only in
        // low RAM); loads are rare, so forget everything. Stores and DMA reach the cache through
        // the code-page tracker's queue, which names backing pages.
        self.interp.invalidate_phys(start, len);
        #[cfg(target_arch = "x86_64")]
        {
            if self.cache.invalidate(0, u64::MAX) > 0 {
                self.stats.cache_flushes += 1;
            }
        }
    }

    fn flush_for_mode_change(&mut self, cpu: &mut CpuState) {
        self.interp.flush_for_mode_change(cpu);
    }

    fn name(&self) -> &'static str {
        "jit"
    }

    fn stats_text(&self) -> Option<String> {
        let s = self.stats;
        #[cfg(target_arch = "x86_64")]
        let profile = self.profile.as_ref().map(|p| format!("\n{}", p.table(profile_top()))).unwrap_or_default();
        #[cfg(not(target_arch = "x86_64"))]
        let profile = String::new();
        Some(format!(
            "blocks translated: {}\ncache flushes: {}\nSMC invalidations: {}\nhelper calls: {}\ninterpreted outside blocks: {} (interrupt/debug due {}, no TLB entry {}, untranslatable {}, budget {})\nblock entries from the dispatcher: {}\ndispatcher trips: {}\nin-code lookups: {} hits, {} misses ({} resolved in Rust, {} to the dispatcher)\nchains patched: {}{profile}",
            s.blocks_translated, s.cache_flushes, s.smc_invalidations, s.helper_calls,
            s.interpreted,
            s.interpreted_why[0],
            s.interpreted_why[1],
            s.interpreted_why[2],
            s.interpreted_why[3],
            s.block_runs,
            s.block_runs + s.interpreted,
            s.lookup_hits,
            s.lookup_misses,
            s.lookup_found,
            s.lookup_misses - s.lookup_found,
            s.chains_patched
        ))
    }
}

/// How many forms the profile table lists: `FERRO_JIT_PROFILE_TOP` (default 20).
#[cfg(target_arch = "x86_64")]
fn profile_top() -> usize {
    std::env::var("FERRO_JIT_PROFILE_TOP").ok().and_then(|v| v.parse().ok()).unwrap_or(20)
}
