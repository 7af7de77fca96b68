//! The x86-64 back end: the code cache, block translation and the dispatcher.

use crate::{JitStats, Translator, MAX_BLOCK_INSNS};
use cpu::helpers::{exit, helper_step, HelperEnv};
use cpu::state::{CpuMode, SegReg};
use cpu::{CpuBus, CpuState, RunExit};
use dynasmrt::x64::Assembler;
use dynasmrt::{dynasm, AssemblyOffset, DynasmApi, DynasmLabelApi, Executor};
use iced_x86::{Decoder, DecoderOptions, FlowControl, Formatter, Instruction, IntelFormatter};
use mmu::{TlbAccess, PAGE_MASK, PAGE_SIZE};
use std::collections::HashMap;

/// The helpers generated code calls, reached through r14 (so emitted code holds no absolute
/// addresses and its disassembly is the same on every build).
#[repr(C)]
pub(crate) struct HelperTable {
    step: for<'a> unsafe extern "sysv64" fn(*mut CpuState, *mut HelperEnv<'a>) -> u32,
}

static HELPERS: HelperTable = HelperTable { step: helper_step };

/// A translated block's signature: (state, helper environment, helper table) -> exit code.
type BlockFn = for<'a> unsafe extern "sysv64" fn(*mut CpuState, *mut HelperEnv<'a>, *const HelperTable) -> u32;

/// Emitted code is flushed once it reaches this size.
const CODE_LIMIT: usize = 16 << 20;
/// The cache is flushed once it holds this many blocks.
const MAX_BLOCKS: usize = 1 << 16;

/// (backing offset of the first instruction, mode key).
type BlockKey = (u64, u32);

#[derive(Debug, Clone, Copy)]
struct Block {
    entry: AssemblyOffset,
    len: usize,
}

/// Translated blocks and the executable buffer that holds them.
pub(crate) struct CodeCache {
    /// `None` if the host refused executable memory: everything is interpreted.
    ops: Option<(Assembler, Executor)>,
    blocks: HashMap<BlockKey, Block>,
    /// Backing page number -> blocks starting in it.
    pages: HashMap<u64, Vec<BlockKey>>,
}

impl std::fmt::Debug for CodeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeCache").field("blocks", &self.blocks.len()).finish()
    }
}

fn new_assembler() -> Option<(Assembler, Executor)> {
    match Assembler::new() {
        Ok(a) => {
            let r = a.reader();
            Some((a, r))
        }
        Err(e) => {
            log::warn!("no executable memory for the JIT ({e}): interpreting");
            None
        }
    }
}

impl CodeCache {
    pub(crate) fn new() -> Self {
        CodeCache { ops: new_assembler(), blocks: HashMap::new(), pages: HashMap::new() }
    }

    fn full(&self) -> bool {
        self.blocks.len() >= MAX_BLOCKS || self.ops.as_ref().is_some_and(|(a, _)| a.offset().0 >= CODE_LIMIT)
    }

    fn flush(&mut self) {
        self.blocks.clear();
        self.pages.clear();
        self.ops = new_assembler();
    }

    /// Drops the blocks that start in pages overlapping `[start, start + len)`; returns how many.
    pub(crate) fn invalidate(&mut self, start: u64, len: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        let first = start / PAGE_SIZE;
        let last = start.saturating_add(len - 1) / PAGE_SIZE;
        let mut n = 0;
        if last - first >= self.pages.len() as u64 {
            let pages: Vec<u64> = self.pages.keys().copied().filter(|p| (first..=last).contains(p)).collect();
            for p in pages {
                n += self.drop_page(p);
            }
        } else {
            for p in first..=last {
                n += self.drop_page(p);
            }
        }
        n
    }

    fn drop_page(&mut self, page: u64) -> u64 {
        let Some(keys) = self.pages.remove(&page) else { return 0 };
        let mut n = 0;
        for k in keys {
            if self.blocks.remove(&k).is_some() {
                n += 1;
            }
        }
        n
    }

    /// Translates the guest code at backing offset `key.0` (decoded at `bitness`, first
    /// instruction at `rip`) into a block; `None` if not even one instruction decodes within
    /// the page.
    fn translate(&mut self, code: &[u8], key: BlockKey, bitness: u32, rip: u64) -> Option<AssemblyOffset> {
        let backing = key.0;
        let page_end = (backing & PAGE_MASK) + PAGE_SIZE;
        let bytes = code.get(usize::try_from(backing).ok()?..usize::try_from(page_end).ok()?)?;
        let mut dec = Decoder::with_ip(bitness, bytes, rip, DecoderOptions::NONE);
        let mut insn = Instruction::default();
        let mut n = 0;
        while dec.can_decode() && n < MAX_BLOCK_INSNS {
            dec.decode_out(&mut insn);
            if insn.is_invalid() {
                break;
            }
            n += 1;
            if insn.flow_control() != FlowControl::Next {
                break;
            }
        }
        if n == 0 {
            return None;
        }
        let (ops, _) = self.ops.as_mut()?;
        let start = ops.offset();
        emit_block(ops, n);
        ops.commit().ok()?;
        let len = ops.offset().0 - start.0;
        self.blocks.insert(key, Block { entry: start, len });
        self.pages.entry(backing >> 12).or_default().push(key);
        Some(start)
    }

    /// Runs the block at `entry` until it exits; returns its exit code.
    fn enter(&self, entry: AssemblyOffset, cpu: &mut CpuState, env: &mut HelperEnv<'_>) -> u32 {
        let Some((_, exec)) = &self.ops else { return env.step(cpu) };
        let buf = exec.lock();
        let code = buf.ptr(entry);
        // SAFETY: `code` is the entry of a block `translate` emitted and committed into this
        // buffer (blocks are only looked up in the cache that emitted them, and the cache is
        // replaced, never modified, on a flush), and the read lock held in `buf` keeps the
        // buffer mapped and unchanged until the block returns. `cpu` and `env` are exclusive
        // borrows that outlive the call.
        unsafe { enter_block(code, cpu, env) }
    }

    /// The disassembly of a block's host code.
    pub(crate) fn disassemble(&self, backing: u64, mode_key: u32) -> Option<String> {
        let b = self.blocks.get(&(backing, mode_key))?;
        let (_, exec) = self.ops.as_ref()?;
        let buf = exec.lock();
        let bytes = buf.get(b.entry.0..b.entry.0 + b.len)?;
        let mut dec = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE);
        let mut fmt = IntelFormatter::new();
        let mut out = String::new();
        for i in &mut dec {
            let mut s = String::new();
            fmt.format(&i, &mut s);
            out.push_str(&format!("{:04x}  {s}\n", i.ip()));
        }
        Some(out)
    }
}

/// The block: a prologue pinning the state, environment and helper table in callee-saved
/// registers, one helper call per guest instruction (leaving with the helper's code unless it
/// is [`exit::CONTINUE`]), and an epilogue returning the last code.
///
/// ```text
/// push r12; push r13; push r14          ; rsp 16-aligned for the calls below
/// r12 = cpu; r13 = env; r14 = helpers
/// repeat n: eax = helpers.step(cpu, env); if eax != CONTINUE goto out
/// out: pop r14; pop r13; pop r12; ret   ; eax = exit code
/// ```
fn emit_block(ops: &mut Assembler, n: usize) {
    let out = ops.new_dynamic_label();
    dynasm!(ops
        ; .arch x64
        ; push r12
        ; push r13
        ; push r14
        ; mov r12, rdi
        ; mov r13, rsi
        ; mov r14, rdx
    );
    for _ in 0..n {
        dynasm!(ops
            ; .arch x64
            ; mov rdi, r12
            ; mov rsi, r13
            ; call QWORD [r14]
            ; test eax, eax
            ; jnz =>out
        );
    }
    dynasm!(ops
        ; .arch x64
        ; =>out
        ; pop r14
        ; pop r13
        ; pop r12
        ; ret
    );
}

/// The one entry into generated code.
///
/// # Safety
/// `code` must point at the first byte of a block emitted by [`emit_block`] into an executable
/// buffer that stays mapped and unmodified until this returns; `cpu` and `env` must be valid
/// and exclusive for the duration of the call.
unsafe fn enter_block(code: *const u8, cpu: &mut CpuState, env: &mut HelperEnv<'_>) -> u32 {
    // SAFETY: by the contract above `code` is the entry of a function emitted with the
    // `BlockFn` signature (sysv64: three pointer arguments, u32 result; it saves and restores
    // the callee-saved registers it uses and keeps the stack aligned for its calls).
    let f: BlockFn = unsafe { std::mem::transmute::<*const u8, BlockFn>(code) };
    // SAFETY: the pointers come from exclusive borrows valid for the call; the block only
    // passes them on to `helper_step`, whose contract they meet.
    unsafe { f(cpu, env, &HELPERS) }
}

/// The backing offset of the instruction at CS:RIP, if the TLB can tell without a walk.
fn code_backing(cpu: &CpuState) -> Option<u64> {
    let rip = cpu.rip;
    let lin = if cpu.mode() == CpuMode::Long64 {
        rip
    } else {
        let cs = &cpu.seg[SegReg::Cs as usize];
        if rip > u64::from(cs.limit) {
            return None;
        }
        cs.base.wrapping_add(rip) & 0xFFFF_FFFF
    };
    cpu.tlb.lookup(cpu.cpl == 3, TlbAccess::Exec, lin, 1)
}

/// Finds or makes the block for CS:RIP; `None` when the instruction must be interpreted.
fn block_for(
    cache: &mut CodeCache,
    stats: &mut JitStats,
    cpu: &mut CpuState,
    bus: &mut dyn CpuBus,
) -> Option<AssemblyOffset> {
    cache.ops.as_ref()?;
    cpu.refresh_mode_key();
    let b = code_backing(cpu)?;
    let key = (b, cpu.mode_key);
    if let Some(blk) = cache.blocks.get(&key) {
        return Some(blk.entry);
    }
    let mem = bus.memory();
    let page = b >> 12;
    if mem.code_pages().is_hot_data(page) {
        return None;
    }
    if cache.full() {
        cache.flush();
        stats.cache_flushes += 1;
    }
    let entry = cache.translate(mem.backing(), key, cpu.mode().bitness(), cpu.rip)?;
    if mem.mark_code_page(page) {
        cpu.tlb.protect_backing_page(page << 12);
    }
    stats.blocks_translated += 1;
    Some(entry)
}

/// The dispatcher: runs blocks (or single interpreted instructions) until the budget is used up
/// or something ends the run.
pub(crate) fn run(t: &mut Translator, cpu: &mut CpuState, bus: &mut dyn CpuBus, budget: u64) -> RunExit {
    let end = cpu.icount.saturating_add(budget);
    cpu.budget_end = end;
    cpu.irq_pending = bus.interrupt_pending();
    cpu.stop_requested = false;
    let Translator { interp, cache, stats, trace } = t;
    let mut env = HelperEnv::new(interp, bus, *trace);
    let r = loop {
        if cpu.icount >= end {
            break RunExit::BudgetExhausted;
        }
        let mem = env.bus().memory();
        if mem.code_pages().has_invalidated() {
            let mut ranges = Vec::new();
            mem.code_pages().take_invalidated(|r| ranges.push(r));
            for r in ranges {
                stats.smc_invalidations += cache.invalidate(r.start, r.len);
            }
        }
        let code = if cpu.halted { None } else { block_for(cache, stats, cpu, env.bus()) };
        let c = match code {
            Some(entry) => {
                stats.block_runs += 1;
                cache.enter(entry, cpu, &mut env)
            }
            None => {
                stats.interpreted += 1;
                env.step(cpu)
            }
        };
        match c {
            exit::HALTED => break RunExit::Halted,
            exit::TRIPLE_FAULT => break RunExit::TripleFault,
            exit::STOPPED => break RunExit::Stopped,
            _ => {}
        }
    };
    stats.helper_calls += env.helper_calls;
    r
}
