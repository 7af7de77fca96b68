//! Lockstep: two identical machines, one per engine, compared at every block boundary. Everything
//! a guest sees is deterministic (virtual time is the instruction count), so any difference is
//! an engine bug.
//!
//! **Pairing.** The JIT machine block-steps ([`cpu::ExecutionEngine::set_block_step`]): each
//! turn of its run loop ([`Machine::run_turn`]) runs one translated block or one interpreted
//! instruction and reports how many instructions that was, `n`. The interpreter machine then
//! makes the same turn with its budget capped at `n` (1 if the JIT stopped without executing
//! anything, halted or faulting: the interpreter then stops at the same point). Both machines
//! thus make the same calls on their boards: one engine run per turn, each opening with the one
//! interrupt poll and NMI check of the rule on `Interpreter::run`, the same timer advances and
//! idle skips. A block that loops back to its own entry goes round as long as its iterations
//! fit in [`jit::MAX_BLOCK_INSNS`] instructions in one unit (its budget, as a run's, stops it).
//!
//! **Comparison** (after every turn, or every `slice` instructions): the engines' exits, the
//! architectural CPU state field by field ([`cpu::compare::arch_eq`]), the console output
//! written since the last comparison, and the memory pages either machine wrote since then,
//! from each machine's dirty log ([`mmu::dirty`]: DMA, loads and the JIT's inline stores
//! included). At the end, all of memory once more, which checks the dirty log itself.
//!
//! **On a difference** the report names the differing fields (`rax: 0x1 vs 0x2`) and memory
//! bytes (guest-physical address, both values) and the unit it appeared in: `icount` is the
//! number of instructions both executed identically before it, `len` its length (1 names the
//! divergent instruction exactly). Then both machines are rebuilt and run (at full speed,
//! unpaired: the board's behaviour does not depend on how runs are split) to the unit's start,
//! then stepped one instruction at a time through it to find the first divergent instruction
//! and name it (CS:RIP, disassembly). When single steps agree (a JIT run of budget 1
//! interprets), the unit is re-run as lockstep ran it (the JIT block-stepping) to find the
//! translated block that diverges, and that block is re-run from its start translated to at
//! most `k` instructions
//! ([`jit::Translator::set_max_block_insns`]), `k` bisected over 1..=[`jit::MAX_BLOCK_INSNS`]:
//! if the block truncated to `k` instructions diverges and truncated to `k - 1` agrees, and
//! both ran to their end, instruction `k` of the block is the divergent one (its own code is
//! wrong, or the code of an earlier instruction translated differently because instruction `k`
//! follows it, as flag liveness does; truncation cannot tell these apart), and the report
//! names it (count, CS:RIP, disassembly) with the differences and both states right after it,
//! and the host code of the truncated block. When truncation cannot isolate one instruction
//! (the difference needs more of the block: flag liveness across instructions, a loop going
//! round), the report says so and lists the block's instructions as the interpreter ran them.
//! No snapshot of the last good boundary is kept: every re-run starts from the beginning, so
//! the builder must make the same machines every time (the CLI reads the host clock for the
//! RTC base once, and opens disks as snapshots: guest writes stay in each machine's memory).

use crate::{EngineKind, Exit, Machine, Turn};
use cpu::compare::{arch_diff, arch_eq, FieldDiff};
use cpu::{CpuBus, CpuState, ExecutionEngine, RunExit};
use mmu::{RegionKind, TlbAccess, PAGE_SIZE};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

/// Most differing memory bytes listed in a report.
const MAX_MEM_DIFFS: usize = 16;
/// Most instructions listed for a block that single steps do not reproduce.
const MAX_LISTED: usize = 80;
/// Most instructions whose location and disassembly the single-step pass keeps.
const MAX_RECORDED: usize = 1 << 16;

/// One instruction as the interpreter ran it: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsnAt {
    /// Instructions executed before it.
    pub icount: u64,
    /// CS selector.
    pub cs: u16,
    /// RIP.
    pub rip: u64,
    /// Intel-syntax disassembly (empty if its bytes were no longer mapped by the soft TLB
    /// after it ran, e.g. it faulted on the fetch).
    pub text: String,
}

impl std::fmt::Display for InsnAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "instruction {} at {:04x}:{:#x}", self.icount, self.cs, self.rip)?;
        if self.text.is_empty() {
            write!(f, " (bytes not available)")
        } else {
            write!(f, ": {}", self.text)
        }
    }
}

/// One differing byte of guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemDiff {
    /// Offset in the backing store.
    pub backing: u64,
    /// The guest-physical address of that byte (the lowest one that maps it), if mapped.
    pub phys: Option<u64>,
    /// The interpreter's byte.
    pub interp: u8,
    /// The JIT's byte.
    pub jit: u8,
}

impl std::fmt::Display for MemDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.phys {
            Some(p) => write!(f, "memory {p:#x}: {:#04x} vs {:#04x}", self.interp, self.jit),
            None => write!(f, "backing {:#x}: {:#04x} vs {:#04x}", self.backing, self.interp, self.jit),
        }
    }
}

/// Where two engines first disagreed.
#[derive(Debug, Clone)]
pub struct Divergence {
    /// Instructions both had executed identically before the divergent unit.
    pub icount: u64,
    /// Instructions in the divergent unit (1: `icount` names the divergent instruction; 0: the
    /// machines differed before running).
    pub len: u64,
    /// What differs, in short (exit, CPU state, console output, memory).
    pub what: String,
    /// The differing CPU fields (interpreter vs JIT).
    pub fields: Vec<FieldDiff>,
    /// The first differing memory bytes (interpreter vs JIT).
    pub memory: Vec<MemDiff>,
    /// What narrowing the unit down found (or why it could not).
    pub pinpoint: String,
    /// The divergent instruction, when the unit was narrowed down to one (`len` 1).
    pub insn: Option<InsnAt>,
    /// The host code of the translated block that diverges (truncated to end with the
    /// divergent instruction when narrowing found it), disassembled.
    pub host_code: Option<String>,
    /// The interpreter's state after the divergent unit.
    pub reference: String,
    /// The JIT's state after the divergent unit.
    pub other: String,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.len == 0 {
            writeln!(f, "engines differ before instruction {}: {}", self.icount, self.what)?;
        } else if self.len == 1 {
            writeln!(f, "engines diverge at instruction {}: {}", self.icount, self.what)?;
        } else {
            writeln!(
                f,
                "engines diverge in the {} instructions from instruction {}: {}",
                self.len, self.icount, self.what
            )?;
        }
        for d in &self.fields {
            writeln!(f, "  {d}")?;
        }
        for d in &self.memory {
            writeln!(f, "  {d}")?;
        }
        if let Some(i) = &self.insn {
            writeln!(f, "divergent {i}")?;
        }
        if !self.pinpoint.is_empty() {
            writeln!(f, "{}", self.pinpoint)?;
        }
        if let Some(h) = &self.host_code {
            writeln!(f, "host code of the block:")?;
            for l in h.lines() {
                writeln!(f, "  {l}")?;
            }
        }
        writeln!(f, "interp: {}", self.reference)?;
        write!(f, "jit:    {}", self.other)
    }
}

/// The outcome of a lockstep run with no divergence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockstepReport {
    /// How the guest ended.
    pub exit: Exit,
    /// Instructions executed.
    pub instructions: u64,
    /// Comparisons made.
    pub comparisons: u64,
    /// Turns (JIT blocks or interpreted instructions) run.
    pub turns: u64,
    /// Memory pages compared (written by either machine since the previous comparison).
    pub pages_compared: u64,
    /// What the guest wrote to its console (COM1 and the debug console; the machines must
    /// capture it).
    pub serial: Vec<u8>,
}

/// Settings of [`run_lockstep_with`].
#[derive(Default)]
pub struct LockstepOptions<'a> {
    /// Stop after this many instructions.
    pub max_insns: Option<u64>,
    /// Compare once at least this many instructions ran since the last comparison (0 or 1:
    /// after every block).
    pub slice: u64,
    /// Test hook (fault injection): called on the JIT machine after each of its turns, before
    /// the comparison.
    pub plant: Option<&'a mut dyn FnMut(&mut Machine)>,
    /// Called about every 2^28 instructions with the instructions run and the comparisons
    /// made so far (progress of long runs).
    pub progress: Option<&'a mut dyn FnMut(u64, u64)>,
    /// Do not compare all of memory before the first instruction (tests that build a
    /// difference into one machine's image and want to see where it shows).
    pub skip_start_check: bool,
}

/// The architectural state as text, for printing (caches and engine bookkeeping such as the
/// TLB, the budget and the mode key are left out).
pub fn arch_state(c: &CpuState) -> String {
    format!(
        "icount={} rip={:#x} rflags={:#x} gpr={:x?} seg={:x?} ldtr={:x?} tr={:x?} gdtr={:x?} idtr={:x?} \
         cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} cr8={:#x} efer={:#x} dr={:x?} cpl={} halted={} \
         shadow={} irq_pending={} nmi_pending={} nmi_blocked={}",
        c.icount,
        c.rip,
        c.rflags(),
        c.gpr,
        c.seg,
        c.ldtr,
        c.tr,
        c.gdtr,
        c.idtr,
        c.cr0,
        c.cr2,
        c.cr3,
        c.cr4,
        c.cr8,
        c.efer,
        c.dr,
        c.cpl,
        c.halted,
        c.interrupt_shadow,
        c.irq_pending,
        c.nmi_pending,
        c.nmi_blocked,
    )
}

/// The lowest guest-physical address mapping backing offset `b`, if any.
fn phys_of(m: &mut Machine, b: u64) -> Option<u64> {
    m.memory()
        .regions()
        .iter()
        .filter_map(|r| match r.kind {
            RegionKind::Ram { backing } | RegionKind::Rom { backing } if (backing..backing + r.len).contains(&b) => {
                Some(r.start + (b - backing))
            }
            _ => None,
        })
        .min()
}

/// The differing bytes of two backing stores within `[start, start + len)` (at most `room`).
fn mem_diffs(a: &mut Machine, b: &mut Machine, start: usize, len: usize, out: &mut Vec<MemDiff>) {
    let mut found = Vec::new();
    {
        let (ma, mb) = (a.memory().backing(), b.memory().backing());
        let end = (start + len).min(ma.len()).min(mb.len());
        for i in start..end {
            if ma[i] != mb[i] {
                found.push((i as u64, ma[i], mb[i]));
                if out.len() + found.len() >= MAX_MEM_DIFFS {
                    break;
                }
            }
        }
    }
    for (off, x, y) in found {
        let phys = phys_of(a, off);
        out.push(MemDiff { backing: off, phys, interp: x, jit: y });
    }
}

/// Two machines compared as they go: the console bytes and dirty pages seen so far.
struct Pair {
    a: Machine,
    b: Machine,
    console: (usize, usize),
    pages: Vec<u64>,
    pages_compared: u64,
}

/// A difference found by [`Pair::compare`].
struct Diff {
    what: String,
    fields: Vec<FieldDiff>,
    memory: Vec<MemDiff>,
}

impl Pair {
    fn new(a: Machine, b: Machine) -> Self {
        let mut p = Pair { a, b, console: (0, 0), pages: Vec::new(), pages_compared: 0 };
        p.a.set_dirty_log(true);
        p.b.set_dirty_log(true);
        p
    }

    /// Compares the turns' outcomes, the CPU state, the console output since the last call and
    /// the pages either machine wrote since then (all of memory with `full`).
    fn compare(&mut self, ta: &Turn, tb: &Turn, full: bool) -> Option<Diff> {
        let mut whats = Vec::new();
        if ta != tb {
            whats.push(format!("exit {:?} vs {:?}", (ta.exit, ta.ran), (tb.exit, tb.ran)));
        }
        let fields =
            if arch_eq(self.a.cpu(), self.b.cpu()) { Vec::new() } else { arch_diff(self.a.cpu(), self.b.cpu()) };
        if !fields.is_empty() {
            whats.push("CPU state".into());
        }
        let (ca, cb) = (self.a.console_from(self.console), self.b.console_from(self.console));
        if ca != cb {
            whats.push(format!(
                "console output {:?} vs {:?}",
                String::from_utf8_lossy(&[ca.0, ca.1].concat()),
                String::from_utf8_lossy(&[cb.0, cb.1].concat())
            ));
        } else {
            self.console.0 += ca.0.len();
            self.console.1 += ca.1.len();
        }
        let mut memory = Vec::new();
        self.pages.clear();
        let pages = &mut self.pages;
        self.a.take_dirty_pages(|p| pages.push(p));
        self.b.take_dirty_pages(|p| pages.push(p));
        if full {
            let (ma, mb) = (self.a.memory().backing().len(), self.b.memory().backing().len());
            if ma != mb || self.a.memory().backing() != self.b.memory().backing() {
                mem_diffs(&mut self.a, &mut self.b, 0, ma.min(mb), &mut memory);
                if memory.is_empty() {
                    whats.push("memory size".into());
                }
            }
        } else {
            pages.sort_unstable();
            pages.dedup();
            self.pages_compared += pages.len() as u64;
            for i in 0..self.pages.len() {
                let start = (self.pages[i] * PAGE_SIZE) as usize;
                let end = start + PAGE_SIZE as usize;
                let (ma, mb) = (self.a.memory().backing(), self.b.memory().backing());
                if ma.get(start..end) != mb.get(start..end) && memory.len() < MAX_MEM_DIFFS {
                    mem_diffs(&mut self.a, &mut self.b, start, PAGE_SIZE as usize, &mut memory);
                }
            }
        }
        if !memory.is_empty() {
            whats.push("memory".into());
        }
        (!whats.is_empty()).then(|| Diff { what: whats.join(", "), fields, memory })
    }
}

/// Runs `build(EngineKind::Interp)` and `build(EngineKind::Jit)` side by side, comparing at
/// every block boundary (or every `slice` instructions) until the guest exits or `max_insns`
/// have run. The builder must make identical machines (same images, no host input).
pub fn run_lockstep<E>(
    build: &dyn Fn(EngineKind) -> Result<Machine, E>,
    max_insns: Option<u64>,
    slice: u64,
) -> Result<Result<LockstepReport, Divergence>, E> {
    run_lockstep_with(build, LockstepOptions { max_insns, slice, ..Default::default() })
}

/// [`run_lockstep`] with all its settings.
pub fn run_lockstep_with<E>(
    build: &dyn Fn(EngineKind) -> Result<Machine, E>,
    opts: LockstepOptions<'_>,
) -> Result<Result<LockstepReport, Divergence>, E> {
    let LockstepOptions { max_insns, slice, mut plant, mut progress, skip_start_check } = opts;
    let a = build(EngineKind::Interp)?;
    let mut b = build(EngineKind::Jit)?;
    b.set_block_step(true);
    let mut p = Pair::new(a, b);
    // The machines must start equal (all of memory: the dirty logs start now).
    let start = Turn { exit: None, ran: None };
    if let Some(d) = p.compare(&start, &start, !skip_start_check) {
        return Ok(Err(Divergence {
            icount: p.a.instructions(),
            len: 0,
            what: format!("{} (the machines differ as built)", d.what),
            fields: d.fields,
            memory: d.memory,
            pinpoint: String::new(),
            insn: None,
            host_code: None,
            reference: arch_state(p.a.cpu()),
            other: arch_state(p.b.cpu()),
        }));
    }
    let (mut sa, mut sb) = (p.a.run_state(max_insns, None), p.b.run_state(max_insns, None));
    let (mut comparisons, mut turns) = (0u64, 0u64);
    // The instruction count at the last comparison that found the machines equal.
    let mut good = p.a.instructions();
    loop {
        let tb = p.b.run_turn(&mut sb, None);
        if let Some(f) = plant.as_mut() {
            f(&mut p.b);
        }
        // The reference runs exactly as far; if the JIT made no engine run, at most one
        // instruction (it makes none either when the two agree).
        let cap = tb.ran.map_or(1, |(_, n)| n);
        let ta = p.a.run_turn(&mut sa, Some(cap));
        turns += 1;
        let done = ta.exit.is_some() || tb.exit.is_some();
        let now = p.a.instructions();
        if !done && ta == tb && now.saturating_sub(good) < slice {
            continue;
        }
        comparisons += 1;
        let mut diff = p.compare(&ta, &tb, false);
        if diff.is_none() && done {
            // The dirty log must have covered every write: check all of memory once.
            diff = p.compare(&ta, &tb, true).map(|mut d| {
                d.what = format!("{} (missed by the dirty log)", d.what);
                d
            });
        }
        if let Some(d) = diff {
            let len = now.max(p.b.instructions()).saturating_sub(good).max(1);
            let mut div = Divergence {
                icount: good,
                len,
                what: d.what,
                fields: d.fields,
                memory: d.memory,
                pinpoint: String::new(),
                insn: None,
                host_code: None,
                reference: arch_state(p.a.cpu()),
                other: arch_state(p.b.cpu()),
            };
            // Even a unit of one instruction is re-run: to name the instruction (where, what).
            drop(p);
            pinpoint(build, &mut div)?;
            return Ok(Err(div));
        }
        if let Some(f) = progress.as_mut() {
            if now >> 28 != good >> 28 {
                f(now, comparisons);
            }
        }
        good = now;
        if let Some(exit) = ta.exit {
            let serial = p.a.serial_output();
            return Ok(Ok(LockstepReport {
                exit,
                instructions: now,
                comparisons,
                turns,
                pages_compared: p.pages_compared,
                serial,
            }));
        }
    }
}

/// Rebuilds both machines and runs them (unpaired, at full speed: the board does not depend on
/// how runs are split) to instruction `start`; `Err` says why they cannot be compared there.
fn rerun_to<E>(build: &dyn Fn(EngineKind) -> Result<Machine, E>, start: u64) -> Result<Result<Pair, String>, E> {
    let mut a = build(EngineKind::Interp)?;
    let mut b = build(EngineKind::Jit)?;
    let (ea, eb) = if start > 0 {
        (a.run(Some(start)), b.run(Some(start)))
    } else {
        (Exit::InstructionLimit, Exit::InstructionLimit)
    };
    if ea != Exit::InstructionLimit || eb != Exit::InstructionLimit || a.instructions() != start {
        return Ok(Err(format!("a re-run to instruction {start} ended early: {ea:?} vs {eb:?}")));
    }
    // The CPU states only: memory may differ where neither machine wrote since it was built
    // (a difference built in); the dirty logs start now.
    if !arch_eq(a.cpu(), b.cpu()) {
        return Ok(Err(format!("a re-run differs already at instruction {start}")));
    }
    Ok(Ok(Pair::new(a, b)))
}

/// Where an instruction starts, taken before the interpreter runs it; [`Where::insn`] reads its
/// bytes afterwards (the fetch has then filled the soft TLB).
struct Where {
    icount: u64,
    cs: u16,
    rip: u64,
    /// Linear address of the first byte.
    lin: u64,
    user: bool,
    bitness: u32,
    mode_key: u32,
}

impl Where {
    fn of(c: &CpuState) -> Self {
        let bitness = c.mode().bitness();
        let cs = &c.seg[cpu::SegReg::Cs as usize];
        let lin = if bitness == 64 { c.rip } else { cs.base.wrapping_add(c.rip) & 0xFFFF_FFFF };
        Where {
            icount: c.icount,
            cs: cs.selector,
            rip: c.rip,
            lin,
            user: c.cpl == 3,
            bitness,
            mode_key: c.compute_mode_key(),
        }
    }

    /// The backing offset of byte `i` of the instruction, through `m`'s soft TLB.
    fn backing(&self, m: &Machine, i: u64) -> Option<u64> {
        m.cpu().tlb.lookup(self.user, TlbAccess::Exec, self.lin.wrapping_add(i), 1)
    }

    /// The instruction, disassembled from `m`'s memory (the machine that just ran it).
    fn insn(&self, m: &mut Machine) -> InsnAt {
        let mut bytes = Vec::new();
        for i in 0..15 {
            let Some(b) = self.backing(m, i) else { break };
            match m.memory().backing().get(b as usize) {
                Some(&x) => bytes.push(x),
                None => break,
            }
        }
        let mut text = String::new();
        if !bytes.is_empty() {
            use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
            let i = Decoder::with_ip(self.bitness, &bytes, self.rip, DecoderOptions::NONE).decode();
            if !i.is_invalid() {
                IntelFormatter::new().format(&i, &mut text);
            }
        }
        InsnAt { icount: self.icount, cs: self.cs, rip: self.rip, text }
    }
}

/// A translator that a machine runs while the caller keeps a handle on it (to read the host
/// code it made afterwards): the JIT machine's engine in the truncation re-runs.
#[derive(Debug)]
struct SharedJit(Rc<RefCell<jit::Translator>>);

impl ExecutionEngine for SharedJit {
    fn run(&mut self, cpu: &mut CpuState, bus: &mut dyn CpuBus, budget: base::InstrCount) -> RunExit {
        self.0.borrow_mut().run(cpu, bus, budget)
    }
    fn invalidate_phys(&mut self, start: u64, len: u64) {
        self.0.borrow_mut().invalidate_phys(start, len);
    }
    fn flush_for_mode_change(&mut self, cpu: &mut CpuState) {
        self.0.borrow_mut().flush_for_mode_change(cpu);
    }
    fn set_block_step(&mut self, on: bool) -> bool {
        ExecutionEngine::set_block_step(&mut *self.0.borrow_mut(), on)
    }
    fn name(&self) -> &'static str {
        self.0.borrow().name()
    }
    fn stats_text(&self) -> Option<String> {
        self.0.borrow().stats_text()
    }
}

/// One re-run of the translated block at `at` truncated to `k` instructions.
struct Trial {
    /// What differs after it, if anything.
    diff: Option<Diff>,
    /// Instructions the JIT ran in that one turn.
    ran: u64,
    /// Both states after it.
    reference: String,
    other: String,
    /// The host code of the block at `block` (backing offset, mode key), if translated.
    host_code: Option<String>,
}

/// Rebuilds both machines, runs them to instruction `at`, gives the JIT machine a fresh
/// translator whose blocks hold at most `k` instructions, and makes one lockstep turn (the JIT
/// block-stepping, the interpreter as far).
fn trial<E>(
    build: &dyn Fn(EngineKind) -> Result<Machine, E>,
    at: u64,
    k: usize,
    block: Option<(u64, u32)>,
) -> Result<Result<Trial, String>, E> {
    let mut p = match rerun_to(build, at)? {
        Ok(p) => p,
        Err(why) => return Ok(Err(why)),
    };
    let t = Rc::new(RefCell::new(jit::Translator::new()));
    t.borrow_mut().set_max_block_insns(k);
    p.b.engine = Box::new(SharedJit(t.clone()));
    p.b.set_block_step(true);
    let (mut sa, mut sb) = (p.a.run_state(None, None), p.b.run_state(None, None));
    let tb = p.b.run_turn(&mut sb, None);
    let ta = p.a.run_turn(&mut sa, Some(tb.ran.map_or(1, |(_, n)| n)));
    let ran = p.b.instructions().saturating_sub(at);
    let diff = p.compare(&ta, &tb, false);
    #[cfg(target_arch = "x86_64")]
    let host_code = block.and_then(|(b, key)| t.borrow().disassemble_block(b, key));
    #[cfg(not(target_arch = "x86_64"))]
    let host_code = {
        let _ = block;
        None
    };
    Ok(Ok(Trial { diff, ran, reference: arch_state(p.a.cpu()), other: arch_state(p.b.cpu()), host_code }))
}

/// Narrows a divergence in `div.len` instructions from `div.icount` down: rebuilds both
/// machines, runs them to `div.icount`, then steps both one instruction at a time. If single
/// steps agree, runs the unit again as in lockstep (the JIT block-stepping) to find the
/// translated block that diverges, then bisects the block's length (see the module
/// documentation) for the first divergent instruction in it.
fn pinpoint<E>(build: &dyn Fn(EngineKind) -> Result<Machine, E>, div: &mut Divergence) -> Result<(), E> {
    let (start, end) = (div.icount, div.icount + div.len);
    let mut p = match rerun_to(build, start)? {
        Ok(p) => p,
        Err(why) => {
            div.pinpoint = format!("({why}; not narrowed)");
            return Ok(());
        }
    };
    let (mut sa, mut sb) = (p.a.run_state(None, None), p.b.run_state(None, None));
    let mut listed = Vec::new();
    // Every instruction the interpreter ran, by count (the re-runs are deterministic: the
    // same count is the same instruction), with its location and mode key for the block key.
    let mut ran: BTreeMap<u64, (InsnAt, Option<u64>, u32)> = BTreeMap::new();
    // Bounded: a halted CPU makes turns that execute nothing.
    let turns = div.len.saturating_mul(4).saturating_add(10_000);
    for _ in 0..turns {
        if p.a.instructions() >= end {
            break;
        }
        let at = p.a.instructions();
        let w = Where::of(p.a.cpu());
        if listed.len() < MAX_LISTED {
            listed.push(format!("  {at}: {:04x}:{:#x}", w.cs, w.rip));
        }
        let ta = p.a.run_turn(&mut sa, Some(1));
        let tb = p.b.run_turn(&mut sb, Some(1));
        if p.a.instructions() > at && ran.len() < MAX_RECORDED {
            let i = w.insn(&mut p.a);
            if let Some(l) = listed.last_mut().filter(|_| ran.len() < MAX_LISTED && !i.text.is_empty()) {
                l.push_str(&format!(" {}", i.text));
            }
            ran.insert(at, (i, w.backing(&p.a, 0), w.mode_key));
        }
        if let Some(d) = p.compare(&ta, &tb, false) {
            let executed = p.a.instructions().max(p.b.instructions()) - at;
            *div = Divergence {
                icount: at,
                len: executed.max(1),
                what: d.what,
                fields: d.fields,
                memory: d.memory,
                pinpoint: format!("(found by single steps from instruction {start})"),
                insn: ran.get(&at).map(|r| r.0.clone()),
                host_code: None,
                reference: arch_state(p.a.cpu()),
                other: arch_state(p.b.cpu()),
            };
            return Ok(());
        }
        if ta.exit.is_some() {
            break;
        }
    }
    drop(p);
    let listing = |ran: &BTreeMap<u64, (InsnAt, Option<u64>, u32)>, from: u64, to: u64| {
        let mut l: Vec<String> = ran.range(from..to).take(MAX_LISTED).map(|(_, (i, _, _))| format!("  {i}")).collect();
        if l.is_empty() {
            l = listed.clone();
        }
        l.join("\n")
    };
    // Single steps agree: run the unit again as lockstep did, to find the divergent block.
    let mut reproduced = None;
    if let Ok(mut p) = rerun_to(build, start)? {
        p.b.set_block_step(true);
        let (mut sa, mut sb) = (p.a.run_state(None, None), p.b.run_state(None, None));
        reproduced = Some(None);
        for _ in 0..turns {
            let at = p.a.instructions();
            if at >= end {
                break;
            }
            let tb = p.b.run_turn(&mut sb, None);
            let ta = p.a.run_turn(&mut sa, Some(tb.ran.map_or(1, |(_, n)| n)));
            if p.compare(&ta, &tb, false).is_some() {
                reproduced = Some(Some((at, p.b.instructions().saturating_sub(at))));
                break;
            }
            if ta.exit.is_some() {
                break;
            }
        }
    }
    let Some(Some((at, n))) = reproduced else {
        let how = match reproduced {
            Some(_) => "a re-run of the translated code does not reproduce it either (something outside the engines?)",
            None => "a second re-run failed",
        };
        div.pinpoint = format!(
            "single steps from instruction {start} do not reproduce it; {how}; the interpreter ran:\n{}",
            listing(&ran, start, end)
        );
        return Ok(());
    };
    let head = format!(
        "single steps from instruction {start} do not reproduce it; a re-run of the translated code does: \
         the block run from instruction {at} ({n} instructions) diverges"
    );
    let fallback = |div: &mut Divergence, why: String, host_code: Option<String>| {
        div.pinpoint = format!("{head}; {why}; the interpreter ran:\n{}", listing(&ran, at, at + n.max(1)));
        div.host_code = host_code;
    };
    let block = ran.get(&at).and_then(|r| r.1.map(|b| (b, r.2)));
    // Truncated to every length from MAX_BLOCK_INSNS (the whole block) down: the shortest
    // that diverges, by bisection (`lo` agrees, `hi` diverges).
    let mut trials: BTreeMap<usize, Trial> = BTreeMap::new();
    let max = jit::MAX_BLOCK_INSNS;
    match trial(build, at, max, block)? {
        Ok(t) if t.diff.is_some() => {
            trials.insert(max, t);
        }
        Ok(t) => {
            let why = "the block translated afresh does not diverge (the translation the re-run had cached did: \
                       stale code in the cache?)"
                .to_string();
            fallback(div, why, t.host_code);
            return Ok(());
        }
        Err(why) => {
            fallback(div, format!("not narrowed further ({why})"), None);
            return Ok(());
        }
    }
    let (mut lo, mut hi) = (0usize, max);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let t = match trial(build, at, mid, block)? {
            Ok(t) => t,
            Err(why) => {
                fallback(div, format!("not narrowed further ({why})"), None);
                return Ok(());
            }
        };
        if t.diff.is_some() {
            hi = mid;
        } else {
            lo = mid;
        }
        trials.insert(mid, t);
    }
    let Some(t) = trials.remove(&hi) else { return Ok(()) };
    let ran_lo = trials.get(&lo).map_or(0, |t| t.ran);
    let k = hi as u64;
    if t.ran != k || ran_lo + 1 != k {
        let why = format!(
            "truncated to its first {k} instructions it diverges (running {}), to {lo} it agrees (running \
             {ran_lo}): the difference needs more of the block than one instruction (flags live across \
             instructions, a side exit, a loop going round), so no single instruction is named",
            t.ran
        );
        fallback(div, why, t.host_code);
        return Ok(());
    }
    let icount = at + k - 1;
    let Some(d) = t.diff else { return Ok(()) };
    *div = Divergence {
        icount,
        len: 1,
        what: d.what,
        fields: d.fields,
        memory: d.memory,
        pinpoint: format!(
            "{head}; truncated to its first {k} instructions it diverges, to {lo} it agrees: its instruction {k} \
             is the first divergent one (its own code, or code before it translated differently because it \
             follows, e.g. flags left uncomputed; the states below are right after it)"
        ),
        insn: ran.get(&icount).map(|r| r.0.clone()),
        host_code: t.host_code,
        reference: t.reference,
        other: t.other,
    };
    Ok(())
}
