//! The x86-64 back end: the code cache, block translation and the dispatcher.

// dynasm's dynamic registers (`Rq(h)` with `h: u8`) expand to `h.into()`.
#![allow(clippy::useless_conversion)]

use crate::profile::Profile;
use crate::{JitStats, Translator, MAX_BLOCK_INSNS};
use cpu::helpers::{exit, helper_flags, helper_step, offsets, HelperEnv};
use cpu::state::rflags::{AF, IF, RF, STATUS, TF};
use cpu::state::{CpuMode, SegReg};
use cpu::{CpuBus, CpuState, RunExit};
use dynasmrt::x64::X64Relocation;
use dynasmrt::{dynasm, AssemblyOffset, DynamicLabel, DynasmApi, DynasmLabelApi, VecAssembler};
use iced_x86::{
    Code, ConditionCode, Decoder, DecoderOptions, FlowControl, Formatter, Instruction, IntelFormatter, Mnemonic,
    OpKind, Register,
};
use mmu::{TlbAccess, PAGE_MASK, PAGE_SIZE};
use std::collections::HashMap;

pub(crate) mod clobber;
mod codebuf;
mod ext;
mod lookup;
mod regcache;
mod sse;
use codebuf::CodeBuf;
use lookup::{jc_index, JcEntry, JC_SIZE};
use regcache::{gpr_index, RegCache, RAX, RCX};

/// Emits one block (position-independent: only relative jumps inside it).
type Assembler = VecAssembler<X64Relocation>;
use ext::{classify_ext, gpr_loc, imm_of, Ext, FlagUse, Sz};

/// The helpers and run data generated code reaches through r14 (so emitted code holds no
/// absolute addresses and its disassembly is the same on every build). One per run, on the
/// dispatcher's stack.
#[repr(C)]
pub(crate) struct HelperTable {
    /// `[r14 + 0]`: one instruction through the interpreter.
    step: for<'a> unsafe extern "sysv64" fn(*mut CpuState, *mut HelperEnv<'a>) -> u32,
    /// `[r14 + 8]`: materialize lazy flags into `rflags`.
    flags: unsafe extern "sysv64" fn(*mut CpuState),
    /// `[r14 + 16]`: the Rust half of the in-code lookup ([`lookup::lookup`]).
    lookup: for<'a> unsafe extern "sysv64" fn(*mut CpuState, *mut HelperEnv<'a>, *mut HelperTable) -> *const u8,
    /// `[r14 + 24]`: the lookup stub ([`lookup::emit_stub`]), where exits to unchained targets
    /// jump.
    stub: *const u8,
    /// `[r14 + 32]`: the stub's entry that skips the inline probe and asks
    /// [`lookup::lookup`] (all of the dispatcher's checks), for exits after a helper.
    stub_checked: *const u8,
    /// The jump cache ([`lookup::JcEntry`], [`lookup::JC_SIZE`] entries).
    jc: *const lookup::JcEntry,
    /// Stub hits (next block found in generated code).
    hits: u64,
    /// Non-zero: the stub looks up (else every exit returns to the dispatcher).
    on: u64,
    /// Stub misses that called [`lookup::lookup`], and those it resolved to a block.
    misses: u64,
    found: u64,
    /// The run's end (the dispatcher's `end`).
    end: u64,
    /// `[r14 + ENV]`: the helper environment, for the helpers' second argument (R13 holds the
    /// soft TLB's entries).
    env: *mut u8,
    /// The dispatcher's cache, statistics and profile (set before each block entry).
    cache: *mut CodeCache,
    stats: *mut JitStats,
    profile: *mut Option<Profile>,
}

/// A translated block's signature: (state, helper environment, helper table) -> exit code.
type BlockFn = for<'a> unsafe extern "sysv64" fn(*mut CpuState, *mut HelperEnv<'a>, *mut HelperTable) -> u32;

/// Emitted code is flushed once it reaches this size.
const CODE_LIMIT: usize = 16 << 20;
/// The code buffer: the limit plus room for the largest block.
const CODE_SIZE: usize = CODE_LIMIT + (4 << 20);
/// The cache is flushed once it holds this many blocks.
const MAX_BLOCKS: usize = 1 << 16;

/// (backing offset of the first instruction, mode key).
type BlockKey = (u64, u32);

#[derive(Debug, Clone, Copy)]
struct Block {
    entry: AssemblyOffset,
    /// After the prologue: where chained jumps from other blocks land.
    body: AssemblyOffset,
    len: usize,
    /// Bytes of guest code translated (from the key's backing offset; within one page).
    guest_len: u64,
    /// The chain slots this block emitted (ids into `CodeCache::slots`).
    slot_ids: (u32, u32),
}

/// Exit code of a chain slot not patched yet (bits 8.. hold the slot number).
const CHAIN: u32 = 6;

/// Translated blocks and the executable buffer that holds them.
pub(crate) struct CodeCache {
    /// `None` if the host refused executable memory: everything is interpreted.
    code: Option<CodeBuf>,
    blocks: HashMap<BlockKey, Block>,
    /// Backing page number -> blocks starting in it.
    pages: HashMap<u64, Vec<BlockKey>>,
    /// Chain slots: the `jmp rel32` to patch and the backing offset of its target. Chains only
    /// link blocks of one guest page (same translation, dropped together on invalidation).
    slots: Vec<(AssemblyOffset, u64)>,
    /// Chains patched (statistics).
    pub(crate) chained: u64,
    /// A direct-mapped cache in front of `blocks` for the dispatcher and the lookup stub
    /// (indirect branches, RET, exits into other pages); never reallocated (the stub reads it).
    jc: Vec<JcEntry>,
    /// The in-code lookup stub (its own small buffer: never flushed); `None`: no lookup.
    stub: Option<CodeBuf>,
    /// Blocks are emitted with exits through the lookup stub.
    pub(crate) lookup: bool,
    /// Offset of the stub's inline-probe entry (the checked entry is at 0).
    stub_fast: usize,
    /// The cache is flushed once it holds this many blocks ([`MAX_BLOCKS`] but in tests).
    pub(crate) max_blocks: usize,
    /// Flushes so far: a chain slot id is only meaningful in the generation that made it.
    generation: u64,
    /// Most guest instructions in a block ([`MAX_BLOCK_INSNS`] but when lockstep truncates
    /// blocks to find the divergent instruction, see [`Translator::set_max_block_insns`]).
    pub(crate) max_insns: usize,
    /// `FERRO_JIT_PERFMAP=1`: every block is named in `/tmp/perf-<pid>.map`, so `perf report`
    /// shows generated code by guest address (QEMU's `-perfmap`).
    perfmap: Option<std::fs::File>,
}

/// The perf map file, if `FERRO_JIT_PERFMAP=1` asks for one.
fn open_perfmap() -> Option<std::fs::File> {
    if std::env::var("FERRO_JIT_PERFMAP").ok().as_deref() != Some("1") {
        return None;
    }
    let path = format!("/tmp/perf-{}.map", std::process::id());
    match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
        Ok(f) => Some(f),
        Err(e) => {
            log::warn!("FERRO_JIT_PERFMAP: cannot open {path}: {e}");
            None
        }
    }
}

impl std::fmt::Debug for CodeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeCache").field("blocks", &self.blocks.len()).finish()
    }
}

fn new_code_buffer() -> Option<CodeBuf> {
    let b = CodeBuf::new(CODE_SIZE);
    if b.is_none() {
        log::warn!("no executable memory for the JIT: interpreting");
    }
    b
}

/// The lookup stub in a buffer of its own, and the offset of its inline-probe entry.
fn new_stub() -> Option<(CodeBuf, usize)> {
    let mut ops = Assembler::new(0);
    let fast = lookup::emit_stub(&mut ops);
    let bytes = ops.finalize().ok()?;
    let mut b = CodeBuf::new(4096)?;
    b.append(&bytes)?;
    Some((b, fast))
}

impl CodeCache {
    pub(crate) fn new() -> Self {
        let (stub, stub_fast) = if lookup::lookup_enabled() { new_stub().unzip() } else { (None, None) };
        let lookup = stub.is_some();
        let stub_fast = stub_fast.unwrap_or(0);
        CodeCache {
            code: new_code_buffer(),
            blocks: HashMap::new(),
            pages: HashMap::new(),
            slots: Vec::new(),
            chained: 0,
            jc: vec![JcEntry::EMPTY; JC_SIZE],
            stub,
            lookup,
            stub_fast,
            max_blocks: MAX_BLOCKS,
            generation: 0,
            max_insns: MAX_BLOCK_INSNS,
            perfmap: open_perfmap(),
        }
    }

    fn full(&self) -> bool {
        self.blocks.len() >= self.max_blocks || self.code.as_ref().is_some_and(|c| c.len() >= CODE_LIMIT)
    }

    fn flush(&mut self) {
        self.generation += 1;
        self.blocks.clear();
        self.pages.clear();
        self.slots.clear();
        self.jc.fill(JcEntry::EMPTY);
        if let Some(c) = &mut self.code {
            c.clear();
        }
    }

    /// Drops the blocks whose guest code overlaps `[start, start + len)` (backing offsets) and
    /// the blocks of their page chained into them; returns how many. Ranges of whole pages drop
    /// whole pages.
    pub(crate) fn invalidate(&mut self, start: u64, len: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        if start == 0 && len == u64::MAX {
            // Everything: start a fresh code buffer too (committing into a large buffer
            // costs more, and nothing in the old one can run again).
            let n = self.blocks.len() as u64;
            if n > 0 {
                self.flush();
            }
            return n;
        }
        let first = start / PAGE_SIZE;
        let last = start.saturating_add(len - 1) / PAGE_SIZE;
        if first == last && len < PAGE_SIZE {
            return self.drop_overlapping(first, start, start + len);
        }
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

    /// Drops the blocks of `page` whose guest bytes overlap `[start, end)`, then, until none
    /// is left, the blocks of the page with a chain slot aimed at a dropped block (a patched
    /// jump would run the stale translation; chains never leave a page).
    fn drop_overlapping(&mut self, page: u64, start: u64, end: u64) -> u64 {
        let Some(keys) = self.pages.get(&page) else { return 0 };
        let mut keep = Vec::with_capacity(keys.len());
        let mut drop = Vec::new();
        for &k in keys {
            match self.blocks.get(&k) {
                Some(b) if k.0 < end && k.0 + b.guest_len > start => drop.push(k),
                Some(_) => keep.push(k),
                None => {}
            }
        }
        if drop.is_empty() {
            return 0;
        }
        loop {
            let before = drop.len();
            keep.retain(|k| {
                let b = &self.blocks[k];
                let chained_to_dropped = (b.slot_ids.0..b.slot_ids.1)
                    .any(|id| self.slots.get(id as usize).is_some_and(|&(_, t)| drop.iter().any(|d| d.0 == t)));
                if chained_to_dropped {
                    drop.push(*k);
                }
                !chained_to_dropped
            });
            if drop.len() == before {
                break;
            }
        }
        for k in &drop {
            let j = jc_index(*k);
            if self.jc[j].holds(*k) {
                self.jc[j] = JcEntry::EMPTY;
            }
            self.blocks.remove(k);
        }
        if keep.is_empty() {
            self.pages.remove(&page);
        } else {
            self.pages.insert(page, keep);
        }
        drop.len() as u64
    }

    fn drop_page(&mut self, page: u64) -> u64 {
        let Some(keys) = self.pages.remove(&page) else { return 0 };
        let mut n = 0;
        for k in keys {
            let j = jc_index(k);
            if self.jc[j].holds(k) {
                self.jc[j] = JcEntry::EMPTY;
            }
            if self.blocks.remove(&k).is_some() {
                n += 1;
            }
        }
        n
    }

    /// Translates the guest code at backing offset `key.0` (decoded at `bitness`, first
    /// instruction at `rip`) into a block; `None` if not even one instruction decodes within
    /// the page.
    #[allow(clippy::too_many_arguments)]
    fn translate(
        &mut self,
        code: &[u8],
        key: BlockKey,
        bitness: u32,
        inline: bool,
        user: bool,
        big_stack: bool,
        rip: u64,
        profile: Option<&mut Profile>,
    ) -> Option<Block> {
        let backing = key.0;
        let page_end = (backing & PAGE_MASK) + PAGE_SIZE;
        let bytes = code.get(usize::try_from(backing).ok()?..usize::try_from(page_end).ok()?)?;
        // Decoded at IP 0: instruction IPs are offsets from the block's entry RIP, so the block
        // is right for every RIP that reaches this code (aliased pages, other CS bases).
        let mut dec = Decoder::with_ip(bitness, bytes, 0, DecoderOptions::NONE);
        let mut insns = Vec::new();
        // The block ends with an instruction that goes on into the next page (see below).
        let mut straddle = false;
        while dec.can_decode() && insns.len() < self.max_insns {
            let insn = dec.decode();
            if insn.is_invalid() {
                straddle = self.lookup && dec.last_error() == iced_x86::DecoderError::NoMoreBytes;
                break;
            }
            insns.push(insn);
            // A conditional branch does not end the block (its taken path leaves, the code after
            // it goes on in the block: a loop with exits in it is one block), unless it goes back
            // to the block's entry (a self-loop).
            let flow = insn.flow_control();
            let back = flow == FlowControl::ConditionalBranch && insn.near_branch_target() == 0;
            if !matches!(flow, FlowControl::Next | FlowControl::ConditionalBranch)
                || back
                || insn.mnemonic() == Mnemonic::Hlt
                || ends_block(&insn)
            {
                break;
            }
        }
        if insns.is_empty() && !straddle {
            return None;
        }
        #[cfg(feature = "test-plant")]
        crate::plant::apply(&mut insns);
        let mut guest_len = insns.iter().map(|i| i.len() as u64).sum();
        if straddle {
            // An instruction that crosses into the next page: the block runs it through the
            // helper (the interpreter fetches it across the page, as the dispatcher would have)
            // and then looks up the next block wherever the interpreter left RIP. Without this
            // a hot loop over such an instruction went through the dispatcher twice per turn.
            // A placeholder with no bytes stands for it (the emitter gives it to the helper);
            // its bytes in this page are marked as code like the block's.
            let mut s = Instruction::default();
            s.set_ip(guest_len);
            s.set_next_ip(guest_len);
            insns.push(s);
            guest_len = page_end - backing;
        }
        let code = self.code.as_mut()?;
        let mut ops = Assembler::new(0);
        let slots0 = self.slots.len();
        // RDTSC faults only outside CPL 0 (with CR4.TSD); the mode key holds the CPL.
        let cpl0 = (key.1 >> 2) & 3 == 0;
        // SSE cannot fault for availability (mode key bit 11): its forms may run inline.
        let sse = inline && (key.1 >> 11) & 1 != 0;
        let body = emit_block(
            &mut ops,
            &insns,
            bitness,
            inline,
            user,
            big_stack,
            cpl0,
            sse,
            rip,
            backing,
            &mut self.slots,
            profile,
            self.lookup,
            straddle,
        );
        let bytes = ops.finalize().ok()?;
        let Some(start) = code.append(&bytes) else {
            self.slots.truncate(slots0);
            return None;
        };
        // Offsets were relative to the block's start.
        for s in &mut self.slots[slots0..] {
            s.0 = AssemblyOffset(s.0 .0 + start);
        }
        let b = Block {
            entry: AssemblyOffset(start),
            body: AssemblyOffset(start + body.0),
            len: bytes.len(),
            guest_len,
            slot_ids: (slots0 as u32, self.slots.len() as u32),
        };
        if let Some(f) = &mut self.perfmap {
            use std::io::Write;
            let host = code.entry(start) as usize;
            // Best effort: a profiling aid, not guest-visible.
            let _ = writeln!(f, "{host:x} {:x} guest_{rip:x}_backing_{backing:x}_mode_{:x}", bytes.len(), key.1);
        }
        self.blocks.insert(key, b);
        self.pages.entry(backing >> 12).or_default().push(key);
        Some(b)
    }

    /// Points chain slot `id` at the body of `target` (which must start at the slot's target).
    fn chain(&mut self, id: usize, target_backing: u64, target: &Found) {
        let Some(&(slot, want)) = self.slots.get(id) else { return };
        if want != target_backing {
            return;
        }
        let Some(code) = self.code.as_mut() else { return };
        let Ok(rel) = i32::try_from(target.body.0 as i64 - (slot.0 as i64 + 5)) else { return };
        let mut jmp = [0xE9, 0, 0, 0, 0];
        jmp[1..].copy_from_slice(&rel.to_le_bytes());
        if code.patch(slot.0, &jmp) {
            self.chained += 1;
        }
    }

    /// The jump-cache entry for `key` at `b`.
    fn jc_fill(&mut self, key: BlockKey, b: &Block) {
        let Some(code) = &self.code else { return };
        self.jc[jc_index(key)] = JcEntry {
            backing: key.0,
            mode: u64::from(key.1),
            body_ptr: code.entry(b.body.0) as u64,
            entry: b.entry.0 as u32,
            body: b.body.0 as u32,
        };
    }

    /// Runs the block at `entry` until it exits; returns its exit code. The block may go on
    /// into other blocks through the lookup stub, which reaches the cache through `table`
    /// (`cache` points at `self`: no reference to the cache is held while the block runs).
    ///
    /// # Safety
    /// `cache` must be valid, and not otherwise borrowed during the call; `table`'s pointers
    /// must be valid for the call.
    unsafe fn enter(
        cache: *mut CodeCache,
        entry: AssemblyOffset,
        cpu: &mut CpuState,
        env: &mut HelperEnv<'_>,
        table: &mut HelperTable,
    ) -> u32 {
        // SAFETY: `cache` is valid (contract); the borrow ends before the block runs.
        let code = match unsafe { &(*cache).code } {
            Some(buf) => buf.entry(entry.0),
            None => return env.step(cpu),
        };
        // SAFETY: `code` is the entry of a block `translate` copied into this buffer (blocks
        // are only looked up in the cache that emitted them, and a flush forgets every block
        // before their bytes are reused); the buffer stays mapped, and the bytes of blocks in
        // use unmodified, until the block returns: only the dispatcher flushes or patches
        // chain slots, and the lookup helper only appends past them. `cpu`, `env` and
        // `table` are exclusive borrows that outlive the call.
        unsafe { enter_block(code, cpu, env, table) }
    }

    /// The disassembly of a block's host code.
    pub(crate) fn disassemble(&self, backing: u64, mode_key: u32) -> Option<String> {
        let b = self.blocks.get(&(backing, mode_key))?;
        let bytes = self.code.as_ref()?.bytes(b.entry.0, b.len)?;
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

/// Instructions after which a block ends although control flows on: they may arm single-step
/// or breakpoints (POPF, MOV to a debug register), inhibit interrupts and debug traps for one
/// instruction (MOV SS, POP SS), so the run loop must look at the state again.
fn ends_block(insn: &Instruction) -> bool {
    matches!(insn.mnemonic(), Mnemonic::Popf | Mnemonic::Popfd | Mnemonic::Popfq | Mnemonic::Sti)
        || (insn.mnemonic() == Mnemonic::Mov
            && insn.op_kind(0) == OpKind::Register
            && (insn.op0_register().is_dr() || insn.op0_register() == Register::SS))
        || (insn.mnemonic() == Mnemonic::Pop
            && insn.op_kind(0) == OpKind::Register
            && insn.op0_register() == Register::SS)
}

/// An instruction the block runs as host code (register and immediate operands only, 32- and
/// 64-bit operand sizes, flat 32- and 64-bit code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inline {
    /// `dst = src`.
    MovRR { dst: i32, src: i32, w64: bool },
    /// `dst = imm`.
    MovRI { dst: i32, imm: u64, w64: bool },
    /// An ALU operation whose flags the host computes.
    Alu { op: AluOp, dst: i32, src: Src, w64: bool },
    /// INC/DEC (CF preserved: the guest's CF must be in the host's first).
    IncDec { inc: bool, dst: i32, w64: bool },
    /// SHL/SHR/SAR by 1: every flag but AF defined as the interpreter computes it; AF is 0.
    Shift1 { op: Mnemonic, dst: i32, w64: bool },
    /// Jcc to `target` (an offset from the block's entry RIP).
    Jcc { cc: ConditionCode, target: u64 },
    /// JMP to `target`.
    Jmp { target: u64 },
    /// A MOV or ALU instruction with one memory operand, through the inline TLB probe.
    Mem { kind: MemKind, ea: Ea, sz: Sz, user: bool },
    /// LEA (no memory access, no flags).
    Lea { dst: i32, ea: Ea, w64: bool },
    /// PUSH/POP of a register, near CALL rel and near RET, through the inline TLB probe
    /// (`w64`: 64-bit mode, else a flat 32-bit stack).
    Stack { op: StackOp, w64: bool, user: bool },
    /// The forms of [`ext`].
    Ext(Ext),
    /// JMP through a 64-bit register (`Some(offset)`) or memory operand (64-bit mode): RIP is
    /// set and the dispatcher's jump cache finds the target.
    JmpInd { reg: Option<i32>, ea: Option<Ea>, user: bool, call: bool },
}

impl Inline {
    /// Forms that run on registers only: no memory access, no call, no slow path (a Jcc's
    /// taken path leaves the block).
    fn register_only(self) -> bool {
        matches!(
            self,
            Inline::MovRR { .. }
                | Inline::MovRI { .. }
                | Inline::Alu { .. }
                | Inline::IncDec { .. }
                | Inline::Shift1 { .. }
                | Inline::Lea { .. }
                | Inline::Jcc { .. }
        )
    }

    fn flag_use(self) -> FlagUse {
        match self {
            Inline::MovRR { .. } | Inline::MovRI { .. } | Inline::Lea { .. } => FlagUse::None,
            Inline::Alu { op: AluOp::Adc | AluOp::Sbb, .. } => FlagUse::Observes,
            Inline::Alu { .. } | Inline::Shift1 { .. } => FlagUse::WritesAll,
            Inline::Ext(e) => e.flag_use(),
            Inline::IncDec { .. }
            | Inline::Jcc { .. }
            | Inline::Jmp { .. }
            | Inline::Mem { .. }
            | Inline::Stack { .. }
            | Inline::JmpInd { .. } => FlagUse::Observes,
        }
    }
}

/// Flag liveness: for each planned instruction, whether the status flags it writes are
/// overwritten before anything can see them (a reader, a helper, a possible fault, the block's
/// end). Only register-only writers of all six flags end a dead range. Also returns whether the
/// flags are dead at the block's entry.
fn dead_flags(plan: &[Option<Inline>]) -> (Vec<bool>, bool) {
    let mut dead = vec![false; plan.len()];
    if !liveness_enabled() {
        return (dead, false);
    }
    // Scanning backwards: does the code after this point overwrite the flags before any use?
    let mut overwritten = false;
    for (k, p) in plan.iter().enumerate().rev() {
        dead[k] = overwritten;
        match p.map_or(FlagUse::Observes, |p| p.flag_use()) {
            FlagUse::None => {}
            FlagUse::WritesAll => overwritten = true,
            FlagUse::Observes => overwritten = false,
        }
    }
    (dead, overwritten)
}

/// The register cache is on unless `FERRO_JIT_REGCACHE=0` (for measuring what it gains).
fn regcache_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("FERRO_JIT_REGCACHE").map_or(true, |v| v != "0"))
}

/// `CpuState` offset of RSP.
const RSP_OFF: i32 = (offsets::GPR + 8 * 4) as i32;

/// Bit `n` for the guest register at `CpuState` offset `off` (any byte of it).
fn reg_bit(off: i32) -> u32 {
    gpr_index(off).map_or(0, |g| 1 << g)
}

/// The guest registers (and count) the emitter of `op` reads or writes as `CpuState` fields
/// rather than through the register cache: written back and dropped around it.
fn memory_regs(op: &Inline) -> u32 {
    let rsp = reg_bit(RSP_OFF);
    match *op {
        Inline::MovRR { .. }
        | Inline::MovRI { .. }
        | Inline::Alu { .. }
        | Inline::IncDec { .. }
        | Inline::Shift1 { .. }
        | Inline::Lea { .. }
        | Inline::Jcc { .. }
        | Inline::Jmp { .. } => 0,
        Inline::Mem { kind, sz, .. } => kind_reg(kind).filter(|_| kind.cacheable_reg(sz).is_none()).map_or(0, reg_bit),
        // The pushed or popped register goes through the cache (see `Emitter::stack`); RSP is
        // always run on `CpuState`.
        Inline::Stack { .. } => rsp,
        Inline::JmpInd { reg, call, .. } => reg.map_or(0, reg_bit) | if call { rsp } else { 0 },
        Inline::Ext(e) => e.regs().into_iter().flatten().fold(0, |m, off| m | reg_bit(off)),
    }
}

/// Counts the register operands of `op` that can live in host registers.
fn cached_uses(op: &Inline, uses: &mut [u32; 16]) {
    let mut add = |off: i32| {
        if let Some(g) = gpr_index(off).filter(|&g| g < 16) {
            uses[g] += 1;
        }
    };
    let ea_uses = |ea: &Ea, add: &mut dyn FnMut(i32)| {
        if let Some(b) = ea.base {
            add(b);
        }
        if let Some((x, _)) = ea.index {
            add(x);
        }
    };
    match *op {
        Inline::MovRR { dst, src, .. } => {
            add(dst);
            add(src);
        }
        Inline::Alu { dst, src, .. } => {
            add(dst);
            if let Src::Reg(s) = src {
                add(s);
            }
        }
        Inline::MovRI { dst, .. } | Inline::IncDec { dst, .. } | Inline::Shift1 { dst, .. } => add(dst),
        Inline::Lea { dst, ea, .. } => {
            add(dst);
            ea_uses(&ea, &mut add);
        }
        Inline::Mem { kind, ea, sz, .. } => {
            if let Some(r) = kind.cacheable_reg(sz) {
                add(r);
            }
            ea_uses(&ea, &mut add);
        }
        Inline::Stack { op: StackOp::Push(r) | StackOp::Pop(r), .. } if r != RSP_OFF => add(r),
        _ => {}
    }
}

/// Flag liveness is on unless `FERRO_JIT_LIVENESS=0` (for measuring what it gains).
fn liveness_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("FERRO_JIT_LIVENESS").map_or(true, |v| v != "0"))
}

/// A stack operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StackOp {
    /// PUSH of the register at this offset.
    Push(i32),
    /// POP into the register at this offset.
    Pop(i32),
    /// CALL: push the next RIP and jump to this offset from the entry RIP.
    Call(u64),
    /// RET.
    Ret,
}

/// What a memory instruction does (`reg`: offset of the register operand).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemKind {
    /// `reg = [m]`.
    Load { reg: i32 },
    /// MOVZX/MOVSX/MOVSXD: `reg` (of size `dsz`) = the extension of `[m]`.
    LoadExt { reg: i32, dsz: Sz, signed: bool },
    /// `[m] = reg`.
    Store { reg: i32 },
    /// `[m] = imm` (sign-extended for 64-bit).
    StoreImm { imm: i32 },
    /// `reg op= [m]` (CMP/TEST: flags only).
    AluRM { op: AluOp, reg: i32 },
    /// `[m] op= reg`.
    AluMR { op: AluOp, reg: i32 },
    /// `[m] op= imm`.
    AluMI { op: AluOp, imm: i32 },
    /// INC/DEC `[m]` (CF kept: the guest's CF is put in the host's first).
    IncDec { inc: bool },
    /// BT `[m]`, imm: CF = the bit; the other flags kept (the interpreter's rule).
    Bt { bit: i8 },
    /// CMOVcc `reg, [m]`: the memory is read whatever the condition (a fault is taken even
    /// when nothing moves), and a 32-bit destination is zero-extended either way.
    Cmov { cc: ConditionCode, reg: i32 },
}

impl MemKind {
    /// The register operand, if the emitter can use it from a host register (32/64-bit MOV,
    /// MOVZX/MOVSX/MOVSXD to 32/64 bits, ALU); other register operands are read and written in
    /// `CpuState`.
    fn cacheable_reg(self, sz: Sz) -> Option<i32> {
        match kind_reg(self) {
            Some(reg)
                if matches!(
                    (self, sz),
                    (
                        MemKind::Load { .. } | MemKind::Store { .. } | MemKind::AluRM { .. } | MemKind::AluMR { .. },
                        Sz::D | Sz::Q
                    ) | (MemKind::LoadExt { dsz: Sz::D | Sz::Q, .. }, _)
                ) =>
            {
                Some(reg)
            }
            _ => None,
        }
    }

    fn writes(self) -> bool {
        match self {
            MemKind::Load { .. }
            | MemKind::LoadExt { .. }
            | MemKind::AluRM { .. }
            | MemKind::Bt { .. }
            | MemKind::Cmov { .. } => false,
            MemKind::Store { .. } | MemKind::StoreImm { .. } | MemKind::IncDec { .. } => true,
            MemKind::AluMR { op, .. } | MemKind::AluMI { op, .. } => !matches!(op, AluOp::Cmp | AluOp::Test),
        }
    }

    fn flags(self) -> Option<AluOp> {
        match self {
            MemKind::AluRM { op, .. } | MemKind::AluMR { op, .. } | MemKind::AluMI { op, .. } => Some(op),
            _ => None,
        }
    }
}

/// The register operand of a memory instruction.
fn kind_reg(k: MemKind) -> Option<i32> {
    match k {
        MemKind::Load { reg }
        | MemKind::LoadExt { reg, .. }
        | MemKind::Store { reg }
        | MemKind::AluRM { reg, .. }
        | MemKind::AluMR { reg, .. }
        | MemKind::Cmov { reg, .. } => Some(reg),
        MemKind::StoreImm { .. } | MemKind::AluMI { .. } | MemKind::IncDec { .. } | MemKind::Bt { .. } => None,
    }
}

/// An effective address: `base + index * scale + disp`, or RIP-relative (`disp` is then the
/// target's offset from the block's entry RIP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ea {
    /// Offset in `CpuState` of a segment base to add (FS/GS in 64-bit mode).
    seg_base: Option<i32>,
    base: Option<i32>,
    index: Option<(i32, u32)>,
    disp: i32,
    addr32: bool,
    rip_rel: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AluOp {
    Add,
    /// ADC (reads CF).
    Adc,
    Sub,
    /// SBB (reads CF).
    Sbb,
    And,
    Or,
    Xor,
    Cmp,
    Test,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    Reg(i32),
    Imm(i32),
}

/// Byte offset of a guest register in `CpuState`.
fn gpr_off(r: Register) -> Option<(i32, bool)> {
    let w64 = if r.is_gpr64() {
        true
    } else if r.is_gpr32() {
        false
    } else {
        return None;
    };
    Some(((offsets::GPR + 8 * r.number()) as i32, w64))
}

/// Whether (and how) `i` runs inline.
fn classify(i: &Instruction) -> Option<Inline> {
    if i.has_lock_prefix() {
        return None;
    }
    let reg0 = || if i.op0_kind() == OpKind::Register { gpr_off(i.op0_register()) } else { None };
    let m = i.mnemonic();
    match m {
        Mnemonic::Mov
        | Mnemonic::Add
        | Mnemonic::Adc
        | Mnemonic::Sub
        | Mnemonic::Sbb
        | Mnemonic::And
        | Mnemonic::Or
        | Mnemonic::Xor
        | Mnemonic::Cmp
        | Mnemonic::Test => {
            if i.op_count() != 2 {
                return None;
            }
            let (dst, w64) = reg0()?;
            let src = match i.op1_kind() {
                OpKind::Register => {
                    let (s, w) = gpr_off(i.op1_register())?;
                    if w != w64 {
                        return None;
                    }
                    Src::Reg(s)
                }
                OpKind::Immediate64 if m == Mnemonic::Mov => {
                    return Some(Inline::MovRI { dst, imm: i.immediate64(), w64 })
                }
                OpKind::Immediate32 | OpKind::Immediate8to32 if !w64 => Src::Imm(i.immediate(1) as u32 as i32),
                OpKind::Immediate32to64 | OpKind::Immediate8to64 if w64 => {
                    Src::Imm(i32::try_from(i.immediate(1) as i64).ok()?)
                }
                _ => return None,
            };
            let op = match m {
                Mnemonic::Mov => {
                    return Some(match src {
                        Src::Reg(s) => Inline::MovRR { dst, src: s, w64 },
                        Src::Imm(v) => {
                            Inline::MovRI { dst, imm: if w64 { v as i64 as u64 } else { u64::from(v as u32) }, w64 }
                        }
                    })
                }
                Mnemonic::Add => AluOp::Add,
                Mnemonic::Adc => AluOp::Adc,
                Mnemonic::Sub => AluOp::Sub,
                Mnemonic::Sbb => AluOp::Sbb,
                Mnemonic::And => AluOp::And,
                Mnemonic::Or => AluOp::Or,
                Mnemonic::Xor => AluOp::Xor,
                Mnemonic::Cmp => AluOp::Cmp,
                _ => AluOp::Test,
            };
            Some(Inline::Alu { op, dst, src, w64 })
        }
        Mnemonic::Shl | Mnemonic::Shr | Mnemonic::Sar
            if i.op_count() == 2 && i.op1_kind() == OpKind::Immediate8 && i.immediate8() == 1 =>
        {
            let (dst, w64) = reg0()?;
            Some(Inline::Shift1 { op: m, dst, w64 })
        }
        Mnemonic::Inc | Mnemonic::Dec if i.op_count() == 1 => {
            let (dst, w64) = reg0()?;
            Some(Inline::IncDec { inc: m == Mnemonic::Inc, dst, w64 })
        }
        _ if i.is_jcc_short_or_near() && matches!(i.op0_kind(), OpKind::NearBranch32 | OpKind::NearBranch64) => {
            Some(Inline::Jcc { cc: i.condition_code(), target: i.near_branch_target() })
        }
        _ if i.is_jmp_short_or_near() && matches!(i.op0_kind(), OpKind::NearBranch32 | OpKind::NearBranch64) => {
            Some(Inline::Jmp { target: i.near_branch_target() })
        }
        _ => None,
    }
}

/// The effective address of `i`'s memory operand, if the inline path handles it: DS/ES/SS/CS
/// (flat in the modes that inline), 32- or 64-bit addressing, no RIP-relative 32-bit form.
fn effective_address(i: &Instruction, bitness: u32) -> Option<Ea> {
    // Outside 64-bit mode a CS override reaches a code segment: never writable, maybe not
    // readable (#GP). The helper checks it.
    if bitness != 64 && i.memory_segment() == Register::CS {
        return None;
    }
    let seg = match i.memory_segment() {
        // 64-bit mode: FS and GS add their base, nothing else (no limit).
        Register::FS if bitness == 64 => Some(4),
        Register::GS if bitness == 64 => Some(5),
        Register::FS | Register::GS => return None,
        _ => None,
    };
    let mut ea = effective_address_any_segment(i, bitness)?;
    ea.seg_base = seg.map(|n| (offsets::SEG_BASE + n * offsets::SEG_SIZE) as i32);
    Some(ea)
}

/// The offset part of the memory operand (LEA ignores the segment).
fn effective_address_any_segment(i: &Instruction, bitness: u32) -> Option<Ea> {
    let base = i.memory_base();
    let index = i.memory_index();
    if base == Register::RIP {
        let disp = i32::try_from(i.memory_displacement64() as i64).ok()?;
        return Some(Ea { seg_base: None, base: None, index: None, disp, addr32: false, rip_rel: true });
    }
    if base == Register::EIP {
        return None;
    }
    let size_of = |r: Register| {
        if r.is_gpr64() {
            Some(64)
        } else if r.is_gpr32() {
            Some(32)
        } else {
            None
        }
    };
    let width = match (base, index) {
        (Register::None, Register::None) if bitness == 64 => {
            // Absolute in 64-bit mode (per-CPU data: `gs:[disp32]`): a displacement that is the
            // same sign- or zero-extended (below 2 GiB), so the address size does not matter.
            let disp = i32::try_from(i.memory_displacement64() as i64).ok()?;
            return Some(Ea { seg_base: None, base: None, index: None, disp, addr32: false, rip_rel: false });
        }
        (Register::None, Register::None) => {
            // Absolute: only the plain 32-bit form of 32-bit code.
            if bitness != 32 || i.memory_displ_size() != 4 {
                return None;
            }
            32
        }
        (Register::None, x) => size_of(x)?,
        (b, _) => size_of(b)?,
    };
    if index != Register::None && size_of(index)? != width {
        return None;
    }
    let off = |r: Register| (offsets::GPR + 8 * r.number()) as i32;
    let disp = if width == 32 {
        i.memory_displacement32() as i32
    } else {
        i32::try_from(i.memory_displacement64() as i64).ok()?
    };
    Some(Ea {
        seg_base: None,
        base: (base != Register::None).then(|| off(base)),
        index: (index != Register::None).then(|| (off(index), i.memory_index_scale())),
        disp,
        addr32: width == 32,
        rip_rel: false,
    })
}

/// Whether (and how) a stack instruction runs inline: PUSH/POP of a full-width register, CALL
/// rel, RET without an immediate; 64-bit mode or a 32-bit stack (`big_stack`).
fn classify_stack(i: &Instruction, bitness: u32, big_stack: bool, user: bool) -> Option<Inline> {
    if i.has_lock_prefix() || (bitness == 32 && !big_stack) || bitness == 16 {
        return None;
    }
    let w64 = bitness == 64;
    let full = |r: Register| {
        let (o, w) = gpr_off(r)?;
        (w == w64).then_some(o)
    };
    let op = match i.mnemonic() {
        Mnemonic::Push if i.op_count() == 1 && i.op0_kind() == OpKind::Register => {
            StackOp::Push(full(i.op0_register())?)
        }
        Mnemonic::Pop if i.op_count() == 1 && i.op0_kind() == OpKind::Register => StackOp::Pop(full(i.op0_register())?),
        Mnemonic::Call if matches!(i.op0_kind(), OpKind::NearBranch32 | OpKind::NearBranch64) => {
            StackOp::Call(i.near_branch_target())
        }
        // Only the full-width forms: `66 C3` pops a 16-bit IP.
        Mnemonic::Ret if i.op_count() == 0 && matches!(i.code(), Code::Retnd | Code::Retnq) => StackOp::Ret,
        _ => return None,
    };
    Some(Inline::Stack { op, w64, user })
}

/// Whether (and how) a MOV/ALU instruction with a memory operand runs inline.
fn classify_mem(i: &Instruction, bitness: u32, user: bool) -> Option<Inline> {
    if i.has_lock_prefix() {
        return None;
    }
    if matches!(i.mnemonic(), Mnemonic::Inc | Mnemonic::Dec) && i.op_count() == 1 {
        let sz = Sz::from_bytes(i.memory_size().size())?;
        let ea = effective_address(i, bitness)?;
        return Some(Inline::Mem { kind: MemKind::IncDec { inc: i.mnemonic() == Mnemonic::Inc }, ea, sz, user });
    }
    if i.op_count() != 2 {
        return None;
    }
    if i.mnemonic() == Mnemonic::Bt && i.op0_kind() == OpKind::Memory && i.op1_kind() == OpKind::Immediate8 {
        let sz = Sz::from_bytes(i.memory_size().size())?;
        let ea = effective_address(i, bitness)?;
        return Some(Inline::Mem { kind: MemKind::Bt { bit: i.immediate8() as i8 }, ea, sz, user });
    }
    if cpu::flags::is_cmovcc(i.mnemonic()) && i.op0_kind() == OpKind::Register && i.op1_kind() == OpKind::Memory {
        let (reg, sz) = gpr_loc(i.op0_register())?;
        if Sz::from_bytes(i.memory_size().size())? != sz {
            return None;
        }
        let ea = effective_address(i, bitness)?;
        return Some(Inline::Mem { kind: MemKind::Cmov { cc: i.condition_code(), reg }, ea, sz, user });
    }
    if i.mnemonic() == Mnemonic::Lea {
        let (dst, w64) = if i.op0_kind() == OpKind::Register { gpr_off(i.op0_register())? } else { return None };
        let ea = effective_address_any_segment(i, bitness)?;
        return Some(Inline::Lea { dst, ea, w64 });
    }
    let op = match i.mnemonic() {
        Mnemonic::Mov => None,
        Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd => {
            let (reg, dsz) = if i.op0_kind() == OpKind::Register { gpr_loc(i.op0_register())? } else { return None };
            let sz = Sz::from_bytes(i.memory_size().size())?;
            let ea = effective_address(i, bitness)?;
            let kind = MemKind::LoadExt { reg, dsz, signed: i.mnemonic() != Mnemonic::Movzx };
            return Some(Inline::Mem { kind, ea, sz, user });
        }
        Mnemonic::Add => Some(AluOp::Add),
        Mnemonic::Sub => Some(AluOp::Sub),
        Mnemonic::And => Some(AluOp::And),
        Mnemonic::Or => Some(AluOp::Or),
        Mnemonic::Xor => Some(AluOp::Xor),
        Mnemonic::Cmp => Some(AluOp::Cmp),
        Mnemonic::Test => Some(AluOp::Test),
        _ => return None,
    };
    let sz = Sz::from_bytes(i.memory_size().size())?;
    let reg = |r: Register| {
        let (o, s) = gpr_loc(r)?;
        (s == sz).then_some(o)
    };
    let imm = || imm_of(i, 1, sz);
    let kind = match (i.op0_kind(), i.op1_kind(), op) {
        (OpKind::Register, OpKind::Memory, None) => MemKind::Load { reg: reg(i.op0_register())? },
        (OpKind::Memory, OpKind::Register, None) => MemKind::Store { reg: reg(i.op1_register())? },
        (OpKind::Memory, _, None) => MemKind::StoreImm { imm: imm()? },
        (OpKind::Register, OpKind::Memory, Some(op)) => MemKind::AluRM { op, reg: reg(i.op0_register())? },
        (OpKind::Memory, OpKind::Register, Some(op)) => MemKind::AluMR { op, reg: reg(i.op1_register())? },
        (OpKind::Memory, _, Some(op)) => MemKind::AluMI { op, imm: imm()? },
        _ => return None,
    };
    let ea = effective_address(i, bitness)?;
    Some(Inline::Mem { kind, ea, sz, user })
}

/// Block emission state.
struct Emitter<'a> {
    ops: &'a mut Assembler,
    out: DynamicLabel,
    /// The block body after the prologue: a branch back to the entry RIP jumps here (the
    /// budget check at its top keeps the instruction count exact).
    body: Option<DynamicLabel>,
    /// Backing offset of the block's first instruction.
    entry_backing: u64,
    /// The cache's chain slots.
    slots: &'a mut Vec<(AssemblyOffset, u64)>,
    /// 32-bit code: RIP arithmetic wraps at 4 GiB.
    rip32: bool,
    /// The RIP offset (from the entry RIP) that `CpuState::rip` holds now.
    synced: u64,
    /// Inline instructions not yet added to `CpuState::icount`.
    pending: i32,
    /// The host's status flags are the guest's (and `CpuState` has stale ones).
    flags_in_host: bool,
    /// The last flag writer was a logic operation (AF is 0 for the guest).
    last_logic: bool,
    /// The instruction being emitted.
    cur: Instruction,
    /// The block overwrites the flags before reading them: a branch back to its entry keeps
    /// them in R9 and writes them back only if the budget check fails (label after the check,
    /// instructions in the block).
    loop_back: Option<(DynamicLabel, i32)>,
    /// The guest's flags are in R9 (from PUSHFQ) for the slow path of the current memory
    /// instruction, not in `CpuState` (see [`Emitter::stash_or_sync_flags`]).
    stashed: bool,
    /// The stashed flags are live after the current instruction: R9 keeps them.
    keep_r9: bool,
    /// The guest's flags are in R9 (a PUSHFQ image or their status bits), not in the host's
    /// flags nor in `CpuState`.
    flags_in_r9: bool,
    /// The last flag writer was this CMP/TEST and its registers have not changed since: its
    /// flags can be recomputed by running it again instead of being saved.
    recompute: Option<Recompute>,
    /// The guest's flags are those [`Emitter::recompute`] gives (not in the host's flags, R9
    /// nor `CpuState`).
    flags_recomp: bool,
    /// The current memory instruction's slow path recomputes the flags (see `stashed`).
    stashed_recomp: bool,
    /// Counters of helper-served instructions (`FERRO_JIT_PROFILE=1`).
    profile: Option<&'a mut Profile>,
    /// Guest registers in host registers (see [`regcache`]).
    regs: RegCache,
    /// The block is a self-loop on host registers.
    fast_loop: Option<FastLoop>,
    /// Slow paths of memory instructions, emitted after the block's code.
    deferred: Vec<SlowPath>,
    /// Out-of-line per-access probes of grouped memory operands (see [`ProbeRole`]), emitted
    /// after the block's code.
    deferred_probes: Vec<DeferredProbe>,
    /// The shared probe role of each instruction of the block ([`probe_groups`]).
    roles: Vec<ProbeRole>,
    /// Index of the instruction being emitted.
    idx: usize,
    /// Index of the last member of the probe group in progress: until then R10 holds the
    /// group's TLB addend (or 0) and calls keep it.
    group_until: Option<usize>,
    /// Side exits (taken Jcc inside the block), emitted after the block's code.
    exits: Vec<SideExit>,
    /// The flag-merge subroutines (plain, after a logic operation) the block calls.
    merge_sub: [Option<DynamicLabel>; 2],
    /// The instruction being emitted is the block's last.
    last: bool,
    /// Exits to unchained targets go through the lookup stub ([`lookup`]).
    lookup: bool,
    /// Where helper exits and plain `BLOCK_END` exits go (exit code in EAX): with the lookup,
    /// a jump to the stub's checked entry (a `BLOCK_END` looks up the next block with every
    /// check of the dispatcher, other codes leave); without, `out`.
    hexit: DynamicLabel,
}

macro_rules! jcc_emit {
    ($ops:expr, $cc:expr, $label:expr) => {{
        let l = $label;
        match $cc {
            ConditionCode::o => dynasm!($ops ; .arch x64 ; jo =>l),
            ConditionCode::no => dynasm!($ops ; .arch x64 ; jno =>l),
            ConditionCode::b => dynasm!($ops ; .arch x64 ; jb =>l),
            ConditionCode::ae => dynasm!($ops ; .arch x64 ; jae =>l),
            ConditionCode::e => dynasm!($ops ; .arch x64 ; je =>l),
            ConditionCode::ne => dynasm!($ops ; .arch x64 ; jne =>l),
            ConditionCode::be => dynasm!($ops ; .arch x64 ; jbe =>l),
            ConditionCode::a => dynasm!($ops ; .arch x64 ; ja =>l),
            ConditionCode::s => dynasm!($ops ; .arch x64 ; js =>l),
            ConditionCode::ns => dynasm!($ops ; .arch x64 ; jns =>l),
            ConditionCode::p => dynasm!($ops ; .arch x64 ; jp =>l),
            ConditionCode::np => dynasm!($ops ; .arch x64 ; jnp =>l),
            ConditionCode::l => dynasm!($ops ; .arch x64 ; jl =>l),
            ConditionCode::ge => dynasm!($ops ; .arch x64 ; jge =>l),
            ConditionCode::le => dynasm!($ops ; .arch x64 ; jle =>l),
            ConditionCode::g => dynasm!($ops ; .arch x64 ; jg =>l),
            ConditionCode::None => dynasm!($ops ; .arch x64 ; jmp =>l),
        }
    }};
}

macro_rules! with_alu {
    ($op:expr, $m:ident, $($args:tt)*) => {
        match $op {
            AluOp::Add => $m!(add, $($args)*),
            AluOp::Adc => $m!(adc, $($args)*),
            AluOp::Sub => $m!(sub, $($args)*),
            AluOp::Sbb => $m!(sbb, $($args)*),
            AluOp::And => $m!(and, $($args)*),
            AluOp::Or => $m!(or, $($args)*),
            AluOp::Xor => $m!(xor, $($args)*),
            AluOp::Cmp => $m!(cmp, $($args)*),
            AluOp::Test => $m!(test, $($args)*),
        }
    };
}
macro_rules! rm64 { ($o:tt, $ops:expr) => { dynasm!($ops ; .arch x64 ; $o rcx, QWORD [rax]) }; }
macro_rules! rm16 { ($o:tt, $ops:expr) => { dynasm!($ops ; .arch x64 ; $o cx, WORD [rax]) }; }
macro_rules! rm8 { ($o:tt, $ops:expr) => { dynasm!($ops ; .arch x64 ; $o cl, BYTE [rax]) }; }
macro_rules! mr16 { ($o:tt, $ops:expr) => { dynasm!($ops ; .arch x64 ; $o WORD [rax], cx) }; }
macro_rules! mr8 { ($o:tt, $ops:expr) => { dynasm!($ops ; .arch x64 ; $o BYTE [rax], cl) }; }
macro_rules! mi16 { ($o:tt, $ops:expr, $v:expr) => { dynasm!($ops ; .arch x64 ; $o WORD [rax], $v) }; }
macro_rules! mi8 { ($o:tt, $ops:expr, $v:expr) => { dynasm!($ops ; .arch x64 ; $o BYTE [rax], $v) }; }
macro_rules! rm32 { ($o:tt, $ops:expr) => { dynasm!($ops ; .arch x64 ; $o ecx, DWORD [rax]) }; }
macro_rules! mr64 { ($o:tt, $ops:expr) => { dynasm!($ops ; .arch x64 ; $o QWORD [rax], rcx) }; }
macro_rules! mr32 { ($o:tt, $ops:expr) => { dynasm!($ops ; .arch x64 ; $o DWORD [rax], ecx) }; }
macro_rules! mi64 { ($o:tt, $ops:expr, $v:expr) => { dynasm!($ops ; .arch x64 ; $o QWORD [rax], $v) }; }
macro_rules! mi32 { ($o:tt, $ops:expr, $v:expr) => { dynasm!($ops ; .arch x64 ; $o DWORD [rax], $v) }; }

const RFLAGS: i32 = offsets::RFLAGS as i32;
/// The soft TLB's entry pointer (`SoftTlb::sets`, its first field), loaded into R13 by every
/// block's prologue.
const TLB_SETS: i32 = offsets::TLB as i32;
const _: () = assert!(core::mem::offset_of!(mmu::SoftTlb, sets) == 0);
/// The helper environment's slot in the helper table.
const ENV: i32 = core::mem::offset_of!(HelperTable, env) as i32;
// A TLB entry's byte offset, ((addr >> 12) & (entries - 1)) * 32, is (addr >> 7) & TLB_IDX_MASK.
const _: () = assert!(mmu::TLB_ENTRIES.is_power_of_two() && mmu::TLB_ENTRIES <= 1 << 20);
const _: () = assert!(core::mem::size_of::<mmu::TlbEntry>() == 32);
/// Mask of a TLB entry's byte offset within its set (see above).
const TLB_IDX_MASK: i32 = ((mmu::TLB_ENTRIES - 1) << 5) as i32;
/// Byte offset of the user set (CPL 3) from the supervisor set.
const TLB_USER_SET: i32 = (mmu::TLB_ENTRIES * 32) as i32;

/// Offsets from R13 (the TLB's entries) plus the entry's byte offset of the tag an access
/// compares and of the addend, for a data access of the given kind and privilege class.
fn tlb_fields(write: bool, user: bool) -> (i32, i32) {
    let set = if user { TLB_USER_SET } else { 0 };
    (set + if write { 8 } else { 0 }, set + 24)
}
const LAZY_MASK: i32 = offsets::LAZY_MASK as i32;
const ICOUNT: i32 = offsets::ICOUNT as i32;
const RIP: i32 = offsets::RIP as i32;
const BUDGET_END: i32 = offsets::BUDGET_END as i32;

impl Emitter<'_> {
    /// Host flags (in RAX, from PUSHFQ/POP) into `CpuState::rflags`; no lazy flags left.
    ///
    /// ```text
    /// rflags = rflags & !STATUS | rax & STATUS (AF cleared after a logic op); lazy.mask = 0
    /// ```
    ///
    /// A call to the block's copy of that sequence ([`Self::emit_merge_subroutines`]): every
    /// exit and slow path merges the flags, and code size decides how often the cache fills.
    /// Clobbers RCX (and RAX).
    fn merge_flags_from_rax(&mut self) {
        let logic = usize::from(self.last_logic);
        let l = *self.merge_sub[logic].get_or_insert_with(|| self.ops.new_dynamic_label());
        dynasm!(self.ops ; .arch x64 ; call =>l);
    }

    /// The merge subroutines the block called (see [`Self::merge_flags_from_rax`]).
    fn emit_merge_subroutines(&mut self) {
        for (logic, l) in self.merge_sub.into_iter().enumerate() {
            let Some(l) = l else { continue };
            let keep = if logic == 1 { (STATUS & !AF) as i32 } else { STATUS as i32 };
            let clear = !(STATUS as i32);
            dynasm!(self.ops
                ; .arch x64
                ; =>l
                ; and eax, keep
                ; mov rcx, QWORD [r12 + RFLAGS]
                ; and rcx, clear
                ; or rcx, rax
                ; mov QWORD [r12 + RFLAGS], rcx
                ; mov QWORD [r12 + LAZY_MASK], 0
                ; ret
            );
        }
    }

    /// Writes the host's flags (or those kept in R9) back if they are the guest's.
    fn sync_flags(&mut self) {
        self.recompute_to_host();
        if self.flags_in_host {
            dynasm!(self.ops ; .arch x64 ; pushfq ; pop rax);
            self.merge_flags_from_rax();
        } else if self.flags_in_r9 {
            dynasm!(self.ops ; .arch x64 ; mov rax, r9);
            self.merge_flags_from_rax();
        }
        self.flags_now_synced();
    }

    /// The host's flags are the guest's (a flag writer ran).
    fn flags_now_in_host(&mut self) {
        self.flags_in_host = true;
        self.flags_in_r9 = false;
        self.flags_recomp = false;
        self.recompute = None;
    }

    /// The guest's flags are in `CpuState` only.
    fn flags_now_synced(&mut self) {
        self.flags_in_host = false;
        self.flags_in_r9 = false;
        self.flags_recomp = false;
        self.recompute = None;
    }

    /// Flags kept in R9 or recomputable (see [`Self::stash_or_sync_flags`]) back into the
    /// host's.
    fn flags_from_r9(&mut self) {
        self.recompute_to_host();
        if self.flags_in_r9 {
            dynasm!(self.ops ; .arch x64 ; push r9 ; popfq);
            self.flags_now_in_host();
        }
    }

    /// Runs the CMP/TEST whose flags are the guest's again (see [`Emitter::recompute`]).
    fn recompute_to_host(&mut self) {
        if self.flags_recomp {
            let r = self.recompute.expect("recomputable flags have their CMP/TEST");
            self.emit_cmp_test(r);
            self.flags_now_in_host();
            self.recompute = Some(r);
            self.last_logic = r.test;
        }
    }

    /// The back edge's flags into the host's again (the stop path of a counted loop), from
    /// the registers as they are now: see [`StopFlags`].
    fn emit_stop_flags(&mut self, f: StopFlags) {
        match f {
            StopFlags::Compare(r) => {
                self.emit_cmp_test(r);
                self.last_logic = r.test;
            }
            StopFlags::Logic { dst, w64 } => {
                let d = self.src(dst, RAX);
                if w64 {
                    dynasm!(self.ops ; .arch x64 ; test Rq(d), Rq(d));
                } else {
                    dynasm!(self.ops ; .arch x64 ; test Rd(d), Rd(d));
                }
                self.last_logic = true;
            }
            StopFlags::Arith { sub, dst, src, w64 } => {
                let d = self.src(dst, RAX);
                let ops = &mut *self.ops;
                match (src, sub, w64) {
                    // RCX = the old destination (flagless), then the operation's flags.
                    (Src::Imm(v), true, true) => dynasm!(ops ; .arch x64 ; lea rcx, [Rq(d) + v] ; cmp rcx, v),
                    (Src::Imm(v), true, false) => dynasm!(ops ; .arch x64 ; lea ecx, [Rq(d) + v] ; cmp ecx, v),
                    (Src::Imm(v), false, true) => {
                        let nv = v.wrapping_neg();
                        dynasm!(ops ; .arch x64 ; lea rcx, [Rq(d) + nv] ; add rcx, v)
                    }
                    (Src::Imm(v), false, false) => {
                        let nv = v.wrapping_neg();
                        dynasm!(ops ; .arch x64 ; lea ecx, [Rq(d) + nv] ; add ecx, v)
                    }
                    (Src::Reg(s), _, _) => {
                        let s = self.src(s, 2);
                        let ops = &mut *self.ops;
                        match (sub, w64) {
                            (true, true) => dynasm!(ops ; .arch x64 ; lea rcx, [Rq(d) + Rq(s)] ; cmp rcx, Rq(s)),
                            (true, false) => dynasm!(ops ; .arch x64 ; lea ecx, [Rq(d) + Rq(s)] ; cmp ecx, Rd(s)),
                            (false, true) => {
                                dynasm!(ops ; .arch x64 ; mov rcx, Rq(d) ; sub rcx, Rq(s) ; add rcx, Rq(s))
                            }
                            (false, false) => {
                                dynasm!(ops ; .arch x64 ; mov ecx, Rd(d) ; sub ecx, Rd(s) ; add ecx, Rd(s))
                            }
                        }
                    }
                }
                self.last_logic = false;
            }
        }
        self.flags_now_in_host();
    }

    /// CMP or TEST of guest registers (cached or loaded into RAX/RCX) into the host's flags.
    fn emit_cmp_test(&mut self, r: Recompute) {
        let d = self.src(r.dst, RAX);
        let s = match r.src {
            Src::Reg(s) => Some(self.src(s, RCX)),
            Src::Imm(_) => None,
        };
        let ops = &mut *self.ops;
        macro_rules! alu {
            ($o:tt) => {
                match (s, r.src, r.w64) {
                    (Some(s), _, true) => dynasm!(ops ; .arch x64 ; $o Rq(d), Rq(s)),
                    (Some(s), _, false) => dynasm!(ops ; .arch x64 ; $o Rd(d), Rd(s)),
                    (None, Src::Imm(v), true) => dynasm!(ops ; .arch x64 ; $o Rq(d), v),
                    (None, Src::Imm(v), false) => dynasm!(ops ; .arch x64 ; $o Rd(d), v),
                    (None, Src::Reg(_), _) => unreachable!("register sources were loaded"),
                }
            };
        }
        if r.test {
            alu!(test);
        } else {
            alu!(cmp);
        }
    }

    /// Before an instruction that writes the guest registers in `written`: a recomputable
    /// CMP/TEST reading one of them is run again now (if its flags are needed later) and no
    /// longer recomputable.
    fn before_writes(&mut self, written: u32) {
        if let Some(r) = self.recompute {
            if r.regs() & written != 0 {
                self.recompute_to_host();
                self.recompute = None;
            }
        }
    }

    /// Makes `CpuState::rflags` hold every status flag (calls the flags helper if some are
    /// lazy): `if lazy.mask != 0 { helper_flags(cpu) }`.
    fn materialize_lazy(&mut self) {
        let done = self.ops.new_dynamic_label();
        dynasm!(self.ops
            ; .arch x64
            ; cmp QWORD [r12 + LAZY_MASK], 0
            ; je =>done
        );
        // The helper leaves the guest registers alone but may clobber caller-saved hosts.
        let saved = self.save_caller_saved();
        dynasm!(self.ops ; .arch x64 ; mov rdi, r12 ; call QWORD [r14 + 8]);
        self.restore_caller_saved(&saved);
        dynasm!(self.ops ; .arch x64 ; =>done);
    }

    /// Makes the host's CF the guest's (for ADC/SBB and for INC/DEC, which keep it). The
    /// `mov` loads below leave the host flags alone until the instruction itself.
    fn load_guest_cf(&mut self) {
        self.recompute_to_host();
        if self.flags_in_r9 {
            dynasm!(self.ops ; .arch x64 ; bt r9d, 0);
        } else if !self.flags_in_host {
            self.materialize_lazy();
            dynasm!(self.ops ; .arch x64 ; bt QWORD [r12 + RFLAGS], 0);
        }
    }

    /// Adds the pending instruction count and moves RIP to offset `to`.
    fn sync_count_rip(&mut self, to: u64) {
        if self.pending > 0 {
            let n = self.pending;
            match self.icount_reg() {
                // A self-loop block keeps the count in a host register (no flags touched).
                Some(h) => {
                    dynasm!(self.ops ; .arch x64 ; lea Rq(h), [Rq(h) + n]);
                    self.regs.dirty |= 1 << regcache::ICOUNT_SLOT;
                }
                None => dynasm!(self.ops ; .arch x64 ; add QWORD [r12 + ICOUNT], n),
            }
            self.pending = 0;
        }
        if to != self.synced {
            let d = to.wrapping_sub(self.synced);
            if self.rip32 {
                // The high half of a 32-bit RIP is zero and stays so.
                let d = d as u32 as i32;
                dynasm!(self.ops ; .arch x64 ; add DWORD [r12 + RIP], d);
            } else {
                let d = d as i64 as i32;
                dynasm!(self.ops ; .arch x64 ; add QWORD [r12 + RIP], d);
            }
            self.synced = to;
        }
    }

    /// Writes the cached registers back, then [`Self::leave_to`] (every exit goes through here
    /// or writes them back itself: `CpuState` is in sync at `out` and at chain slots).
    fn exit_to(&mut self, to: u64) {
        self.writeback_all();
        self.leave_to(to);
    }

    /// The host register holding the instruction count, if it is loaded there.
    fn icount_reg(&self) -> Option<u8> {
        let g = regcache::ICOUNT_SLOT;
        self.regs.host_of(g).filter(|_| self.regs.loaded & (1 << g) != 0)
    }

    /// Leaves the block with `BLOCK_END` (state already synced): with the lookup, through the
    /// stub's checked entry, which goes on into the next block if every check of the
    /// dispatcher passes (see [`Emitter::hexit`]).
    ///
    /// Callers write the cached guest registers back first ([`Self::exit_to`],
    /// [`Self::writeback_all`]): `CpuState` is exact whenever control reaches `out`, a chain
    /// slot or another block's body, so code there may rely on it.
    fn leave(&mut self) {
        let hexit = self.hexit;
        dynasm!(self.ops ; .arch x64 ; mov eax, exit::BLOCK_END as i32 ; jmp =>hexit);
    }

    /// Leaves the block to a target no chain reaches (state already synced, cached registers
    /// written back): through the lookup stub, which jumps straight into the next block if it
    /// finds it and may enter it, else returns `BLOCK_END` to the dispatcher as
    /// [`Self::leave`] does.
    fn leave_lookup(&mut self) {
        if self.lookup {
            dynasm!(self.ops ; .arch x64 ; jmp QWORD [r14 + lookup::STUB]);
        } else {
            self.leave();
        }
    }

    /// As [`Self::leave_lookup`], after a helper that may have left anything the dispatcher
    /// checks (TF after POPF, DR7, ...) but said `CONTINUE`: the lookup skips the inline probe
    /// and runs every check of the dispatcher (what [`Self::leave`] does).
    fn leave_lookup_checked(&mut self) {
        self.leave();
    }

    /// Goes on at offset `to` (state already synced there): back into the body if `to` is the
    /// entry, else out of the block.
    ///
    /// A target in the same guest page gets a chain slot: a `jmp rel32` that first falls
    /// through to an exit asking the dispatcher to chain, and is then patched to jump straight
    /// into the target block's body.
    fn leave_to(&mut self, to: u64) {
        if let (Some(body), 0) = (self.body, to) {
            dynasm!(self.ops ; .arch x64 ; jmp =>body);
            return;
        }
        let delta = if self.rip32 { i64::from(to as u32 as i32) } else { to as i64 };
        let target = self.entry_backing.wrapping_add(delta as u64);
        if target & PAGE_MASK != self.entry_backing & PAGE_MASK || self.slots.len() >= 1 << 22 {
            self.leave_lookup();
            return;
        }
        let id = self.slots.len();
        let slot = self.ops.offset();
        self.ops.push(0xE9);
        self.ops.push_i32(0);
        self.slots.push((slot, target));
        let code = (CHAIN | (id as u32) << 8) as i32;
        let out = self.out;
        dynasm!(self.ops ; .arch x64 ; mov eax, code ; jmp =>out);
    }

    /// Counts the current instruction in the profile, if one is kept: `++*counter`. Clobbers
    /// RAX and the host flags.
    fn count(&mut self, slow: bool) {
        if let Some(p) = self.profile.as_deref_mut() {
            let c = p.counter(&self.cur, slow) as i64;
            dynasm!(self.ops ; .arch x64 ; mov rax, QWORD c ; add QWORD [rax], 1);
        }
    }

    /// Before a memory access (the TLB probe clobbers the host's flags): the guest's flags, if
    /// in the host, are kept in R9 (PUSHFQ; POP) for the slow path, which merges them if the
    /// access faults ([`Self::unstash`]). If they are live after an instruction that does not
    /// write them (`dead`, `writes_flags` false), they stay in R9 after it (the slow path puts
    /// them back there): a later reader takes them from R9, a later writer replaces them.
    fn stash_or_sync_flags(&mut self, dead: bool, writes_flags: bool) {
        self.stashed = false;
        self.stashed_recomp = false;
        if self.flags_recomp || (self.flags_in_host && self.recompute.is_some()) {
            // A CMP/TEST made them: the slow path runs it again, nothing is saved.
            self.stashed_recomp = true;
            self.keep_r9 = !dead && !writes_flags;
            self.flags_in_host = false;
            self.flags_in_r9 = false;
            self.flags_recomp = true;
            return;
        }
        if self.flags_in_host {
            dynasm!(self.ops ; .arch x64 ; pushfq ; pop r9);
            self.stashed = true;
        } else if self.flags_in_r9 {
            self.stashed = true;
        }
        self.keep_r9 = self.stashed && !dead && !writes_flags;
        self.flags_in_host = false;
        self.flags_in_r9 = self.stashed;
    }

    /// On a slow path: writes the flags kept in R9 back to `CpuState` (see
    /// [`Self::stash_or_sync_flags`]).
    fn unstash(&mut self) {
        if self.stashed {
            dynasm!(self.ops ; .arch x64 ; mov rax, r9);
            self.merge_flags_from_rax();
        } else if self.stashed_recomp {
            // On `CpuState` (the registers were written back): the CMP/TEST again.
            let r = self.recompute.expect("recomputable flags have their CMP/TEST");
            let logic = self.last_logic;
            self.emit_cmp_test(r);
            self.last_logic = r.test;
            dynasm!(self.ops ; .arch x64 ; pushfq ; pop rax);
            self.merge_flags_from_rax();
            self.last_logic = logic;
        }
    }

    /// After a memory instruction that stashed the flags: live, they stay in R9; dead, the host
    /// holds garbage that the next flag writer replaces.
    fn after_stash(&mut self) {
        if std::mem::take(&mut self.stashed_recomp) {
            if std::mem::take(&mut self.keep_r9) {
                // Still recomputable (the instruction wrote none of the CMP/TEST's registers:
                // see `before_writes`).
                self.flags_recomp = true;
            } else {
                self.flags_now_in_host();
            }
        }
        if std::mem::take(&mut self.stashed) {
            if std::mem::take(&mut self.keep_r9) {
                self.flags_in_host = false;
                self.flags_in_r9 = true;
            } else {
                self.flags_now_in_host();
            }
        }
    }

    fn helper(&mut self, at: u64, next: u64) {
        self.sync_flags();
        self.count(false);
        self.sync_count_rip(at);
        // The interpreter sees (and may change) every guest register.
        self.writeback_all();
        self.forget_regs();
        let hexit = self.hexit;
        dynasm!(self.ops
            ; .arch x64
            ; mov rdi, r12
            ; mov rsi, QWORD [r14 + ENV]
            ; call QWORD [r14]
            ; test eax, eax
            ; jnz =>hexit
        );
        self.synced = next;
    }

    /// The effective address of a memory operand into RAX. Leaves the host flags alone (only
    /// MOV and LEA), so LEA can run between a flag writer and its reader.
    fn effective_address(&mut self, ea: Ea) {
        let disp = ea.disp;
        if ea.rip_rel {
            let back = -(self.synced as i32);
            dynasm!(self.ops ; .arch x64 ; mov rax, QWORD [r12 + RIP] ; lea rax, [rax + disp] ; lea rax, [rax + back]);
        } else {
            self.offset_part(ea);
        }
        if let Some(sb) = ea.seg_base {
            dynasm!(self.ops ; .arch x64 ; mov rcx, QWORD [r12 + sb] ; lea rax, [rax + rcx]);
        }
    }

    /// The offset part of an effective address (no RIP-relative form) into RAX: one LEA on
    /// the base and index registers (cached ones from their host registers, others loaded into
    /// RAX and RCX). A 32-bit address is the low half of the 64-bit sum, zero-extended.
    fn offset_part(&mut self, ea: Ea) {
        let disp = ea.disp;
        let b = ea.base.map(|b| self.src(b, RAX));
        let x = ea.index.map(|(x, scale)| (self.src(x, RCX), scale));
        macro_rules! lea {
            ($($m:tt)*) => {
                if ea.addr32 {
                    dynasm!(self.ops ; .arch x64 ; lea eax, [$($m)*])
                } else {
                    dynasm!(self.ops ; .arch x64 ; lea rax, [$($m)*])
                }
            };
        }
        match (b, x) {
            (None, None) if ea.addr32 => dynasm!(self.ops ; .arch x64 ; mov eax, disp),
            (None, None) => dynasm!(self.ops ; .arch x64 ; mov rax, disp),
            (Some(b), None) if disp == 0 && !ea.addr32 => {
                if b != RAX {
                    dynasm!(self.ops ; .arch x64 ; mov rax, Rq(b));
                }
            }
            (Some(b), None) => lea!(Rq(b) + disp),
            (None, Some((x, 1))) => lea!(Rq(x) + disp),
            (None, Some((x, 2))) => lea!(Rq(x) * 2 + disp),
            (None, Some((x, 4))) => lea!(Rq(x) * 4 + disp),
            (None, Some((x, _))) => lea!(Rq(x) * 8 + disp),
            (Some(b), Some((x, 1))) => lea!(Rq(b) + Rq(x) + disp),
            (Some(b), Some((x, 2))) => lea!(Rq(b) + Rq(x) * 2 + disp),
            (Some(b), Some((x, 4))) => lea!(Rq(b) + Rq(x) * 4 + disp),
            (Some(b), Some((x, _))) => lea!(Rq(b) + Rq(x) * 8 + disp),
        }
    }

    /// The soft-TLB probe: linear address in RAX, host address out in RAX, or a jump to
    /// `slow`. Clobbers RCX and RDX. One compare checks the entry, the access kind and that
    /// the access stays within the page (the tag is the page of its last byte); the addend
    /// is a host address ([`mmu::SoftTlb::set_host_base`]).
    fn probe(&mut self, write: bool, size: i32, user: bool, slow: DynamicLabel) {
        let (tag, addend) = tlb_fields(write, user);
        dynasm!(self.ops
            ; .arch x64
            ; mov ecx, eax
            ; shr ecx, 7
            ; and ecx, TLB_IDX_MASK
            ; lea rdx, [rax + size - 1]
            ; and rdx, -4096
            ; cmp rdx, QWORD [r13 + rcx + tag]
            ; jne =>slow
            ; add rax, QWORD [r13 + rcx + addend]
        );
    }

    /// The shared probe of a group's leader (see [`ProbeRole`]): its linear address in RAX,
    /// the group's bytes at `[RAX + lo, RAX + lo + span)`. A hit leaves the entry's addend in
    /// R10 and the leader's host address in RAX; a miss sets R10 to 0 and probes the leader's
    /// own access (`own_write`, `own_size`; its miss goes to `slow`). Clobbers RCX and RDX.
    #[allow(clippy::too_many_arguments)]
    fn group_probe(
        &mut self,
        (lo, span, write, last): (i32, i32, bool, usize),
        addr32: bool,
        user: bool,
        own_write: bool,
        own_size: i32,
        slow: DynamicLabel,
        add: bool,
    ) {
        let (tag, addend) = tlb_fields(write, user);
        let (entry, join) = (self.ops.new_dynamic_label(), self.ops.new_dynamic_label());
        // The group's first byte, wrapped as the guest's address size wraps.
        match (addr32, lo) {
            (true, 0) => dynasm!(self.ops ; .arch x64 ; mov ecx, eax),
            (false, 0) => dynasm!(self.ops ; .arch x64 ; mov rcx, rax),
            (true, _) => dynasm!(self.ops ; .arch x64 ; lea ecx, [rax + lo]),
            (false, _) => dynasm!(self.ops ; .arch x64 ; lea rcx, [rax + lo]),
        }
        dynasm!(self.ops
            ; .arch x64
            ; lea rdx, [rcx + span - 1]
            ; shr ecx, 7
            ; and ecx, TLB_IDX_MASK
            ; and rdx, -4096
            ; cmp rdx, QWORD [r13 + rcx + tag]
            ; jne =>entry
            ; mov r10, QWORD [r13 + rcx + addend]
        );
        if add {
            dynasm!(self.ops ; .arch x64 ; add rax, r10);
        }
        dynasm!(self.ops ; .arch x64 ; =>join);
        self.deferred_probes.push(DeferredProbe {
            entry,
            join,
            write: own_write,
            size: own_size,
            user,
            slow,
            zero_r10: true,
        });
        self.group_until = Some(last);
    }

    /// The probe of the current instruction's access as its [`ProbeRole`] says: linear address
    /// in RAX (`addr32`: wrapped at 4 GiB), host address out in RAX (or, unless `add`, RAX +
    /// R10 is it), a miss to `slow`.
    fn probe_for_role(&mut self, write: bool, size: i32, user: bool, addr32: bool, slow: DynamicLabel, add: bool) {
        match self.roles.get(self.idx).copied().unwrap_or(ProbeRole::Own) {
            ProbeRole::Own => self.probe(write, size, user, slow),
            ProbeRole::Leader { lo, span, write: group_write, last } => {
                self.group_probe((lo, span, group_write, last), addr32, user, write, size, slow, add)
            }
            ProbeRole::Member => self.member_probe(write, size, user, slow, add),
        }
    }

    /// A group member's probe (see [`ProbeRole`]): linear address in RAX, host address out
    /// in RAX; if the leader's probe missed (R10 = 0), the access probes alone (its miss goes
    /// to `slow`). Clobbers RCX and RDX.
    fn member_probe(&mut self, write: bool, size: i32, user: bool, slow: DynamicLabel, add: bool) {
        let (entry, join) = (self.ops.new_dynamic_label(), self.ops.new_dynamic_label());
        dynasm!(self.ops ; .arch x64 ; test r10, r10 ; jz =>entry);
        if add {
            dynasm!(self.ops ; .arch x64 ; add rax, r10);
        }
        dynasm!(self.ops ; .arch x64 ; =>join);
        self.deferred_probes.push(DeferredProbe { entry, join, write, size, user, slow, zero_r10: false });
    }

    /// Whether R10 holds a probe group's addend that the current or a later instruction of the
    /// block uses (calls must keep it). The last member counts: it may call the lazy-flags
    /// helper before its own access (INC/DEC and ADC/SBB on memory need the guest's CF).
    pub(super) fn r10_live(&self) -> bool {
        self.group_until.is_some_and(|last| self.idx <= last)
    }

    /// The slow path of an inline memory instruction at offset `at`: the interpreter runs it,
    /// then the state is put back to what the fast path leaves (`pending0 + 1` instructions
    /// pending, RIP at `synced0`, the flags in the host for an ALU operation).
    ///
    /// `pre` is the register cache where the fast path branched off (its dirty registers are
    /// written back for the interpreter); the registers loaded at the join (the current state)
    /// are reloaded after it.
    ///
    /// The slow path is emitted after the block's code (the fast path falls through to `cont`,
    /// where the slow one jumps back): see [`Self::emit_slow_paths`].
    #[allow(clippy::too_many_arguments)]
    fn slow_path(
        &mut self,
        slow: DynamicLabel,
        cont: DynamicLabel,
        at: u64,
        next: u64,
        synced0: u64,
        pending0: i32,
        alu: bool,
        pre: RegCache,
    ) {
        self.deferred.push(SlowPath {
            slow,
            cont,
            at,
            next,
            synced0,
            pending0,
            alu,
            pre,
            post: self.regs,
            stashed: self.stashed,
            stashed_recomp: self.stashed_recomp,
            keep_r9: self.keep_r9,
            recompute: self.recompute,
            last_logic: self.last_logic,
            cur: self.cur,
            zero_r10: self.roles.get(self.idx).is_some_and(|r| *r != ProbeRole::Own),
        });
    }

    /// Emits the side exits and slow paths put off ([`Self::side_exit`], [`Self::slow_path`]),
    /// each in the state its instruction left.
    fn emit_slow_paths(&mut self) {
        for e in std::mem::take(&mut self.exits) {
            self.synced = e.synced;
            self.pending = e.pending;
            self.regs = e.regs;
            self.flags_now_synced();
            self.flags_in_host = e.flags_in_host;
            self.last_logic = e.last_logic;
            dynasm!(self.ops ; .arch x64 ; =>e.stub);
            self.sync_flags();
            self.sync_count_rip(e.target);
            self.exit_to(e.target);
        }
        for d in std::mem::take(&mut self.deferred) {
            self.regs = d.post;
            self.stashed = d.stashed;
            self.stashed_recomp = d.stashed_recomp;
            self.keep_r9 = d.keep_r9;
            self.recompute = d.recompute;
            self.last_logic = d.last_logic;
            self.cur = d.cur;
            self.synced = d.synced0;
            self.pending = d.pending0;
            dynasm!(self.ops ; .arch x64 ; =>d.slow);
            self.emit_slow_path(d.at, d.next, d.synced0, d.pending0, d.alu, d.pre);
            if d.zero_r10 {
                // The helper may have left anything in R10: the members after this one must
                // probe alone (flags untouched).
                dynasm!(self.ops ; .arch x64 ; mov r10d, 0);
            }
            dynasm!(self.ops ; .arch x64 ; jmp =>d.cont);
        }
        for p in std::mem::take(&mut self.deferred_probes) {
            dynasm!(self.ops ; .arch x64 ; =>p.entry);
            if p.zero_r10 {
                dynasm!(self.ops ; .arch x64 ; mov r10d, 0);
            }
            self.probe(p.write, p.size, p.user, p.slow);
            dynasm!(self.ops ; .arch x64 ; jmp =>p.join);
        }
    }

    fn emit_slow_path(&mut self, at: u64, next: u64, synced0: u64, pending0: i32, alu: bool, pre: RegCache) {
        let post = self.regs;
        self.writeback_state(pre, u32::MAX);
        self.regs_to_memory_mode();
        self.count(true);
        self.unstash();
        self.sync_count_rip(at);
        let hexit = self.hexit;
        let undo = pending0 + 1;
        let back = next.wrapping_sub(synced0);
        dynasm!(self.ops
            ; .arch x64
            ; mov rdi, r12
            ; mov rsi, QWORD [r14 + ENV]
            ; call QWORD [r14]
            ; test eax, eax
            ; jnz =>hexit
            ; sub QWORD [r12 + ICOUNT], undo
        );
        if self.rip32 {
            let b = back as u32 as i32;
            dynasm!(self.ops ; .arch x64 ; sub DWORD [r12 + RIP], b);
        } else {
            let b = back as i64 as i32;
            dynasm!(self.ops ; .arch x64 ; sub QWORD [r12 + RIP], b);
        }
        if self.stashed && self.keep_r9 {
            // The instruction left the flags (merged above) alone: back into R9, status
            // bits only (R9 may be loaded into the host's flags).
            let status = STATUS as i32;
            dynasm!(self.ops ; .arch x64 ; mov r9, QWORD [r12 + RFLAGS] ; and r9d, status);
        }
        if alu {
            self.materialize_lazy();
            let status = STATUS as i32;
            dynasm!(self.ops ; .arch x64 ; mov rax, QWORD [r12 + RFLAGS] ; and eax, status ; push rax ; popfq);
        }
        self.reload(post.loaded);
        self.regs = post;
    }

    /// The slow path of an instruction that ends the block (CALL, RET, indirect JMP/CALL):
    /// the interpreter runs it with the registers of `pre` written back.
    fn slow_exit(&mut self, at: u64, pre: RegCache) {
        let keep = self.regs;
        self.writeback_state(pre, u32::MAX);
        self.regs_to_memory_mode();
        self.count(true);
        self.sync_count_rip(at);
        self.helper_then_leave();
        self.regs = keep;
    }

    /// PUSH, POP, CALL, RET. RSP changes only after the access succeeded; a miss runs the
    /// whole instruction through the interpreter.
    ///
    /// ```text
    /// r8 = rsp (- size for a push); rax = r8; probe; access [rax]; rsp = r8 (+ size for a pop)
    /// CALL: value = entry RIP + next; then on to the target.  RET: RIP = the value popped.
    /// ```
    fn stack(&mut self, op: StackOp, w64: bool, user: bool, at: u64, next: u64, dead: bool) {
        // CALL and RET end the block: the flags go to `CpuState` first.
        let ends = matches!(op, StackOp::Call(_) | StackOp::Ret);
        if ends {
            self.stashed = false;
            self.keep_r9 = false;
            self.sync_flags();
        } else {
            self.stash_or_sync_flags(dead, false);
        }
        let (synced0, pending0) = (self.synced, self.pending);
        // RSP is run on `CpuState` (written back before); the register pushed or popped may be
        // in the cache.
        let pre = self.regs;
        let slow = self.ops.new_dynamic_label();
        let cont = self.ops.new_dynamic_label();
        let stk = RSP_OFF;
        let size = if w64 { 8 } else { 4 };
        let push = matches!(op, StackOp::Push(_) | StackOp::Call(_));
        if w64 {
            dynasm!(self.ops ; .arch x64 ; mov r8, QWORD [r12 + stk]);
            if push {
                dynasm!(self.ops ; .arch x64 ; sub r8, 8);
            }
        } else {
            dynasm!(self.ops ; .arch x64 ; mov r8d, DWORD [r12 + stk]);
            if push {
                dynasm!(self.ops ; .arch x64 ; sub r8d, 4);
            }
        }
        dynasm!(self.ops ; .arch x64 ; mov rax, r8);
        self.probe_for_role(push, size, user, !w64, slow, true);
        // The value to push or the value popped, in RCX.
        match op {
            StackOp::Push(r) => match if r != RSP_OFF { self.cached(r) } else { None } {
                // From its host register (loaded there first if need be).
                Some(h) if w64 => dynasm!(self.ops ; .arch x64 ; mov QWORD [rax], Rq(h)),
                Some(h) => dynasm!(self.ops ; .arch x64 ; mov DWORD [rax], Rd(h)),
                None if w64 => dynasm!(self.ops ; .arch x64 ; mov rcx, QWORD [r12 + r] ; mov QWORD [rax], rcx),
                None => dynasm!(self.ops ; .arch x64 ; mov ecx, DWORD [r12 + r] ; mov DWORD [rax], ecx),
            },
            StackOp::Call(_) => {
                let d = next.wrapping_sub(synced0);
                if w64 {
                    let d = d as i64 as i32;
                    dynasm!(self.ops ; .arch x64 ; mov rcx, QWORD [r12 + RIP] ; add rcx, d ; mov QWORD [rax], rcx);
                } else {
                    let d = d as u32 as i32;
                    dynasm!(self.ops ; .arch x64 ; mov ecx, DWORD [r12 + RIP] ; add ecx, d ; mov DWORD [rax], ecx);
                }
            }
            StackOp::Pop(_) | StackOp::Ret => {
                if w64 {
                    dynasm!(self.ops ; .arch x64 ; mov rcx, QWORD [rax]);
                } else {
                    dynasm!(self.ops ; .arch x64 ; mov ecx, DWORD [rax]);
                }
                if op == StackOp::Ret && w64 {
                    // A non-canonical return address is #GP with nothing changed.
                    dynasm!(self.ops ; .arch x64 ; mov rdx, rcx ; shl rdx, 16 ; sar rdx, 16 ; cmp rdx, rcx ; jne =>slow);
                }
                if w64 {
                    dynasm!(self.ops ; .arch x64 ; add r8, 8);
                } else {
                    dynasm!(self.ops ; .arch x64 ; add r8d, 4);
                }
            }
        }
        // The new stack pointer (a 32-bit stack changes only ESP's low half).
        if w64 {
            dynasm!(self.ops ; .arch x64 ; mov QWORD [r12 + stk], r8);
        } else {
            dynasm!(self.ops ; .arch x64 ; mov DWORD [r12 + stk], r8d);
        }
        match op {
            StackOp::Pop(r) => {
                // Into its host register (all 64 bits: the load zero-extended a 32-bit value),
                // else into `CpuState`. POP ESP keeps the value popped (written after ESP).
                match if r != RSP_OFF { self.cached_def(r) } else { None } {
                    Some(h) => dynasm!(self.ops ; .arch x64 ; mov Rq(h), rcx),
                    None => dynasm!(self.ops ; .arch x64 ; mov QWORD [r12 + r], rcx),
                }
                self.slow_path(slow, cont, at, next, synced0, pending0, false, pre);
                dynasm!(self.ops ; .arch x64 ; =>cont);
                self.synced = synced0;
                self.pending = pending0 + 1;
                self.after_stash();
            }
            StackOp::Push(_) => {
                self.slow_path(slow, cont, at, next, synced0, pending0, false, pre);
                dynasm!(self.ops ; .arch x64 ; =>cont);
                self.synced = synced0;
                self.pending = pending0 + 1;
                self.after_stash();
            }
            StackOp::Call(target) => {
                self.pending = pending0 + 1;
                self.sync_count_rip(target);
                self.exit_to(target);
                self.synced = synced0;
                self.pending = pending0;
                self.regs = pre;
                // Slow path: the interpreter runs the CALL; the block ends either way.
                dynasm!(self.ops ; .arch x64 ; =>slow);
                self.slow_exit(at, pre);
            }
            StackOp::Ret => {
                let n = pending0 + 1;
                self.writeback_all();
                self.regs_to_memory_mode();
                dynasm!(self.ops
                    ; .arch x64
                    ; add QWORD [r12 + ICOUNT], n
                    ; mov QWORD [r12 + RIP], rcx
                );
                self.leave_lookup();
                dynasm!(self.ops ; .arch x64 ; =>slow);
                self.slow_exit(at, pre);
            }
        }
    }

    /// JMP/CALL r64 and m64 (64-bit mode), as the interpreter runs them: the target is loaded
    /// (through the TLB probe for a memory operand) and checked canonical (else #GP), a CALL
    /// pushes the next RIP (through the probe; RSP changes only once the store is done), then
    /// RIP is set and the block ends: the dispatcher's jump cache finds the next block. Any
    /// miss or fault: the interpreter runs the instruction.
    #[allow(clippy::too_many_arguments)]
    fn jmp_indirect(&mut self, reg: Option<i32>, ea: Option<Ea>, user: bool, call: bool, at: u64, next: u64) {
        self.sync_flags();
        // Run on `CpuState` (its registers were written back before).
        let pre = self.regs;
        let slow = self.ops.new_dynamic_label();
        match (reg, ea) {
            (Some(r), _) => dynasm!(self.ops ; .arch x64 ; mov r10, QWORD [r12 + r]),
            (None, Some(ea)) => {
                self.effective_address(ea);
                self.probe(false, 8, user, slow);
                dynasm!(self.ops ; .arch x64 ; mov r10, QWORD [rax]);
            }
            (None, None) => unreachable!("JmpInd has a register or a memory operand"),
        }
        dynasm!(self.ops
            ; .arch x64
            ; mov rdx, r10
            ; shl rdx, 16
            ; sar rdx, 16
            ; cmp rdx, r10
            ; jne =>slow
        );
        if call {
            let stk = RSP_OFF;
            let d = next.wrapping_sub(self.synced) as i64 as i32;
            dynasm!(self.ops ; .arch x64 ; mov r8, QWORD [r12 + stk] ; sub r8, 8 ; mov rax, r8);
            self.probe(true, 8, user, slow);
            dynasm!(self.ops
                ; .arch x64
                ; mov rcx, QWORD [r12 + RIP]
                ; add rcx, d
                ; mov QWORD [rax], rcx
                ; mov QWORD [r12 + stk], r8
            );
        }
        let n = self.pending + 1;
        self.writeback_all();
        self.regs_to_memory_mode();
        dynasm!(self.ops
            ; .arch x64
            ; add QWORD [r12 + ICOUNT], n
            ; mov QWORD [r12 + RIP], r10
        );
        self.leave_lookup();
        dynasm!(self.ops ; .arch x64 ; =>slow);
        self.slow_exit(at, pre);
    }

    /// Runs the instruction through the interpreter and leaves the block (with the helper's
    /// exit code, or `BLOCK_END` if it said `CONTINUE`).
    fn helper_then_leave(&mut self) {
        let hexit = self.hexit;
        dynasm!(self.ops
            ; .arch x64
            ; mov rdi, r12
            ; mov rsi, QWORD [r14 + ENV]
            ; call QWORD [r14]
            ; test eax, eax
            ; jnz =>hexit
            ; mov eax, exit::BLOCK_END as i32
            ; jmp =>hexit
        );
    }

    /// The fast-path access of a 32/64-bit MOV or ALU instruction whose register operand is
    /// in a host register (host address in RAX); false if it does not apply (nothing emitted).
    fn mem_cached(&mut self, kind: MemKind, sz: Sz) -> bool {
        let Some(reg) = kind.cacheable_reg(sz) else { return false };
        let Some(h) = self.cached(reg) else { return false };
        let ops = &mut *self.ops;
        let q = sz == Sz::Q;
        match kind {
            MemKind::Load { .. } if q => dynasm!(ops ; .arch x64 ; mov Rq(h), QWORD [rax]),
            MemKind::Load { .. } => dynasm!(ops ; .arch x64 ; mov Rd(h), DWORD [rax]),
            MemKind::Store { .. } if q => dynasm!(ops ; .arch x64 ; mov QWORD [rax], Rq(h)),
            MemKind::Store { .. } => dynasm!(ops ; .arch x64 ; mov DWORD [rax], Rd(h)),
            MemKind::LoadExt { dsz, signed, .. } => match (dsz, sz, signed) {
                (_, Sz::B, false) => dynasm!(ops ; .arch x64 ; movzx Rd(h), BYTE [rax]),
                (_, Sz::W, false) => dynasm!(ops ; .arch x64 ; movzx Rd(h), WORD [rax]),
                (Sz::Q, Sz::B, true) => dynasm!(ops ; .arch x64 ; movsx Rq(h), BYTE [rax]),
                (Sz::Q, Sz::W, true) => dynasm!(ops ; .arch x64 ; movsx Rq(h), WORD [rax]),
                (Sz::Q, Sz::D, true) => dynasm!(ops ; .arch x64 ; movsxd Rq(h), DWORD [rax]),
                (_, Sz::B, true) => dynasm!(ops ; .arch x64 ; movsx Rd(h), BYTE [rax]),
                (_, Sz::W, true) => dynasm!(ops ; .arch x64 ; movsx Rd(h), WORD [rax]),
                (_, Sz::D, _) => dynasm!(ops ; .arch x64 ; mov Rd(h), DWORD [rax]),
                (_, Sz::Q, _) => dynasm!(ops ; .arch x64 ; mov Rq(h), QWORD [rax]),
            },
            MemKind::AluRM { op, .. } => {
                macro_rules! rm { ($o:tt, ) => { if q { dynasm!(ops ; .arch x64 ; $o Rq(h), QWORD [rax]) } else { dynasm!(ops ; .arch x64 ; $o Rd(h), DWORD [rax]) } }; }
                with_alu!(op, rm,)
            }
            MemKind::AluMR { op, .. } => {
                macro_rules! mr { ($o:tt, ) => { if q { dynasm!(ops ; .arch x64 ; $o QWORD [rax], Rq(h)) } else { dynasm!(ops ; .arch x64 ; $o DWORD [rax], Rd(h)) } }; }
                with_alu!(op, mr,)
            }
            _ => unreachable!("filtered above"),
        }
        let writes_reg = match kind {
            MemKind::Load { .. } | MemKind::LoadExt { .. } => true,
            MemKind::AluRM { op, .. } => !matches!(op, AluOp::Cmp | AluOp::Test),
            _ => false,
        };
        if writes_reg {
            self.set_dirty(reg);
        }
        true
    }

    /// As [`Self::mem_cached`] for a grouped MOV (see [`ProbeRole`]): the host address is
    /// RAX + R10 (the linear address and the group's addend, or the host address and 0).
    fn mem_cached_indexed(&mut self, kind: MemKind, sz: Sz) -> bool {
        let Some(reg) = kind.cacheable_reg(sz) else { return false };
        let Some(h) = self.cached(reg) else { return false };
        let ops = &mut *self.ops;
        match (kind, sz) {
            (MemKind::Load { .. }, Sz::Q) => dynasm!(ops ; .arch x64 ; mov Rq(h), QWORD [rax + r10]),
            (MemKind::Load { .. }, _) => dynasm!(ops ; .arch x64 ; mov Rd(h), DWORD [rax + r10]),
            (MemKind::Store { .. }, Sz::Q) => dynasm!(ops ; .arch x64 ; mov QWORD [rax + r10], Rq(h)),
            (MemKind::Store { .. }, _) => dynasm!(ops ; .arch x64 ; mov DWORD [rax + r10], Rd(h)),
            _ => unreachable!("only grouped MOVs"),
        }
        if matches!(kind, MemKind::Load { .. }) {
            self.set_dirty(reg);
        }
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn mem(&mut self, kind: MemKind, ea: Ea, sz: Sz, user: bool, at: u64, next: u64, dead: bool) {
        if let MemKind::IncDec { .. } | MemKind::Bt { .. } | MemKind::Cmov { .. } = kind {
            // INC/DEC: the guest's CF must be in CpuState for the host's CF below; BT: the
            // guest's flags are updated there.
            self.stashed = false;
            self.keep_r9 = false;
            self.sync_flags();
            self.materialize_lazy();
        } else {
            self.stash_or_sync_flags(dead, kind.flags().is_some());
        }
        let (synced0, pending0) = (self.synced, self.pending);
        let slow = self.ops.new_dynamic_label();
        let cont = self.ops.new_dynamic_label();
        self.effective_address(ea);
        let role = self.roles.get(self.idx).copied().unwrap_or(ProbeRole::Own);
        // A grouped MOV to or from a cached register addresses [RAX + R10] itself (see
        // `ProbeRole`): the probe leaves RAX as it is.
        let indexed = role != ProbeRole::Own
            && matches!(kind, MemKind::Load { .. } | MemKind::Store { .. })
            && kind.cacheable_reg(sz).is_some_and(|r| self.has_host(r));
        self.probe_for_role(kind.writes(), sz.bytes(), user, ea.addr32, slow, !indexed);
        // The cache where the fast path may branch to the slow one.
        let pre = self.regs;
        if if indexed { self.mem_cached_indexed(kind, sz) } else { self.mem_cached(kind, sz) } {
            self.slow_path(slow, cont, at, next, synced0, pending0, kind.flags().is_some(), pre);
            dynasm!(self.ops ; .arch x64 ; =>cont);
            self.synced = synced0;
            self.pending = pending0 + 1;
            self.after_stash();
            if let Some(op) = kind.flags() {
                self.flags_now_in_host();
                self.last_logic = matches!(op, AluOp::And | AluOp::Or | AluOp::Xor | AluOp::Test);
            }
            return;
        }
        let ops = &mut *self.ops;
        match kind {
            MemKind::Load { reg } => match sz {
                Sz::B => dynasm!(ops ; .arch x64 ; mov cl, BYTE [rax] ; mov BYTE [r12 + reg], cl),
                Sz::W => dynasm!(ops ; .arch x64 ; mov cx, WORD [rax] ; mov WORD [r12 + reg], cx),
                Sz::D => dynasm!(ops ; .arch x64 ; mov ecx, DWORD [rax] ; mov QWORD [r12 + reg], rcx),
                Sz::Q => dynasm!(ops ; .arch x64 ; mov rcx, QWORD [rax] ; mov QWORD [r12 + reg], rcx),
            },
            MemKind::LoadExt { reg, dsz, signed } => {
                match (dsz, sz, signed) {
                    (_, Sz::B, false) => dynasm!(ops ; .arch x64 ; movzx ecx, BYTE [rax]),
                    (_, Sz::W, false) => dynasm!(ops ; .arch x64 ; movzx ecx, WORD [rax]),
                    (Sz::Q, Sz::B, true) => dynasm!(ops ; .arch x64 ; movsx rcx, BYTE [rax]),
                    (Sz::Q, Sz::W, true) => dynasm!(ops ; .arch x64 ; movsx rcx, WORD [rax]),
                    (Sz::Q, Sz::D, true) => dynasm!(ops ; .arch x64 ; movsxd rcx, DWORD [rax]),
                    (_, Sz::B, true) => dynasm!(ops ; .arch x64 ; movsx ecx, BYTE [rax]),
                    (_, Sz::W, true) => dynasm!(ops ; .arch x64 ; movsx ecx, WORD [rax]),
                    (_, Sz::D, _) => dynasm!(ops ; .arch x64 ; mov ecx, DWORD [rax]),
                    (_, Sz::Q, _) => dynasm!(ops ; .arch x64 ; mov rcx, QWORD [rax]),
                }
                match dsz {
                    Sz::B => dynasm!(ops ; .arch x64 ; mov BYTE [r12 + reg], cl),
                    Sz::W => dynasm!(ops ; .arch x64 ; mov WORD [r12 + reg], cx),
                    Sz::D | Sz::Q => dynasm!(ops ; .arch x64 ; mov QWORD [r12 + reg], rcx),
                }
            }
            MemKind::Store { reg } => match sz {
                Sz::B => dynasm!(ops ; .arch x64 ; mov cl, BYTE [r12 + reg] ; mov BYTE [rax], cl),
                Sz::W => dynasm!(ops ; .arch x64 ; mov cx, WORD [r12 + reg] ; mov WORD [rax], cx),
                Sz::D => dynasm!(ops ; .arch x64 ; mov ecx, DWORD [r12 + reg] ; mov DWORD [rax], ecx),
                Sz::Q => dynasm!(ops ; .arch x64 ; mov rcx, QWORD [r12 + reg] ; mov QWORD [rax], rcx),
            },
            MemKind::StoreImm { imm } => match sz {
                Sz::B => dynasm!(ops ; .arch x64 ; mov BYTE [rax], imm as i8),
                Sz::W => dynasm!(ops ; .arch x64 ; mov WORD [rax], imm as i16),
                Sz::D => dynasm!(ops ; .arch x64 ; mov DWORD [rax], imm),
                Sz::Q => dynasm!(ops ; .arch x64 ; mov QWORD [rax], imm),
            },
            MemKind::AluRM { op, reg } => {
                match sz {
                    Sz::B => {
                        dynasm!(ops ; .arch x64 ; mov cl, BYTE [r12 + reg]);
                        with_alu!(op, rm8, ops);
                    }
                    Sz::W => {
                        dynasm!(ops ; .arch x64 ; mov cx, WORD [r12 + reg]);
                        with_alu!(op, rm16, ops);
                    }
                    Sz::D => {
                        dynasm!(ops ; .arch x64 ; mov ecx, DWORD [r12 + reg]);
                        with_alu!(op, rm32, ops);
                    }
                    Sz::Q => {
                        dynasm!(ops ; .arch x64 ; mov rcx, QWORD [r12 + reg]);
                        with_alu!(op, rm64, ops);
                    }
                }
                if !matches!(op, AluOp::Cmp | AluOp::Test) {
                    match sz {
                        Sz::B => dynasm!(ops ; .arch x64 ; mov BYTE [r12 + reg], cl),
                        Sz::W => dynasm!(ops ; .arch x64 ; mov WORD [r12 + reg], cx),
                        Sz::D | Sz::Q => dynasm!(ops ; .arch x64 ; mov QWORD [r12 + reg], rcx),
                    }
                }
            }
            MemKind::AluMR { op, reg } => match sz {
                Sz::B => {
                    dynasm!(ops ; .arch x64 ; mov cl, BYTE [r12 + reg]);
                    with_alu!(op, mr8, ops);
                }
                Sz::W => {
                    dynasm!(ops ; .arch x64 ; mov cx, WORD [r12 + reg]);
                    with_alu!(op, mr16, ops);
                }
                Sz::D => {
                    dynasm!(ops ; .arch x64 ; mov ecx, DWORD [r12 + reg]);
                    with_alu!(op, mr32, ops);
                }
                Sz::Q => {
                    dynasm!(ops ; .arch x64 ; mov rcx, QWORD [r12 + reg]);
                    with_alu!(op, mr64, ops);
                }
            },
            MemKind::AluMI { op, imm } => match sz {
                Sz::B => with_alu!(op, mi8, ops, imm as i8),
                Sz::W => with_alu!(op, mi16, ops, imm as i16),
                Sz::D => with_alu!(op, mi32, ops, imm),
                Sz::Q => with_alu!(op, mi64, ops, imm),
            },
            MemKind::Bt { bit } => {
                // The host's BT leaves OF, SF, AF and PF undefined: only its CF is taken.
                match sz {
                    Sz::W => dynasm!(ops ; .arch x64 ; bt WORD [rax], bit),
                    Sz::D => dynasm!(ops ; .arch x64 ; bt DWORD [rax], bit),
                    _ => dynasm!(ops ; .arch x64 ; bt QWORD [rax], bit),
                }
                dynasm!(ops
                    ; .arch x64
                    ; setc cl
                    ; movzx ecx, cl
                    ; mov rdx, QWORD [r12 + RFLAGS]
                    ; and rdx, -2
                    ; or rdx, rcx
                    ; mov QWORD [r12 + RFLAGS], rdx
                );
            }
            MemKind::Cmov { cc, reg } => {
                // The guest's flags (in CpuState) into the host's for the condition.
                let status = STATUS as i32;
                dynasm!(ops ; .arch x64 ; mov rdx, QWORD [r12 + RFLAGS] ; and edx, status ; push rdx ; popfq);
                match sz {
                    Sz::W => {
                        dynasm!(ops ; .arch x64 ; mov cx, WORD [r12 + reg]);
                        ext::cmov_from_rax(ops, cc, Sz::W);
                        dynasm!(ops ; .arch x64 ; mov WORD [r12 + reg], cx);
                    }
                    Sz::D => {
                        dynasm!(ops ; .arch x64 ; mov ecx, DWORD [r12 + reg]);
                        ext::cmov_from_rax(ops, cc, Sz::D);
                        dynasm!(ops ; .arch x64 ; mov QWORD [r12 + reg], rcx);
                    }
                    _ => {
                        dynasm!(ops ; .arch x64 ; mov rcx, QWORD [r12 + reg]);
                        ext::cmov_from_rax(ops, cc, Sz::Q);
                        dynasm!(ops ; .arch x64 ; mov QWORD [r12 + reg], rcx);
                    }
                }
            }
            MemKind::IncDec { inc } => {
                dynasm!(ops ; .arch x64 ; bt QWORD [r12 + RFLAGS], 0);
                match (inc, sz) {
                    (true, Sz::B) => dynasm!(ops ; .arch x64 ; inc BYTE [rax]),
                    (true, Sz::W) => dynasm!(ops ; .arch x64 ; inc WORD [rax]),
                    (true, Sz::D) => dynasm!(ops ; .arch x64 ; inc DWORD [rax]),
                    (true, Sz::Q) => dynasm!(ops ; .arch x64 ; inc QWORD [rax]),
                    (false, Sz::B) => dynasm!(ops ; .arch x64 ; dec BYTE [rax]),
                    (false, Sz::W) => dynasm!(ops ; .arch x64 ; dec WORD [rax]),
                    (false, Sz::D) => dynasm!(ops ; .arch x64 ; dec DWORD [rax]),
                    (false, Sz::Q) => dynasm!(ops ; .arch x64 ; dec QWORD [rax]),
                }
            }
        }
        let alu = kind.flags();
        // INC/DEC: the flags they wrote; CMOV: the guest's, loaded for the condition.
        let incdec = matches!(kind, MemKind::IncDec { .. } | MemKind::Cmov { .. });
        self.slow_path(slow, cont, at, next, synced0, pending0, alu.is_some() || incdec, pre);
        dynasm!(self.ops ; .arch x64 ; =>cont);
        self.synced = synced0;
        self.pending = pending0 + 1;
        self.after_stash();
        if incdec {
            self.flags_now_in_host();
            self.last_logic = false;
        }
        if let Some(op) = alu {
            self.flags_now_in_host();
            self.last_logic = matches!(op, AluOp::And | AluOp::Or | AluOp::Xor | AluOp::Test);
        }
    }

    fn inline(&mut self, op: Inline, at: u64, next: u64, dead: bool) {
        match op {
            Inline::Ext(e) => self.inline_ext(e, at, next, dead),
            Inline::JmpInd { reg, ea, user, call } => {
                self.jmp_indirect(reg, ea, user, call, at, next);
                return;
            }
            Inline::Mem { kind, ea, sz, user } => {
                self.mem(kind, ea, sz, user, at, next, dead);
                return;
            }
            Inline::Stack { op, w64, user } => {
                self.stack(op, w64, user, at, next, dead);
                return;
            }
            Inline::Lea { dst, ea, w64 } => {
                self.effective_address(ea);
                let d = self.def_begin(dst);
                if w64 {
                    if d != RAX {
                        dynasm!(self.ops ; .arch x64 ; mov Rq(d), rax);
                    }
                } else {
                    dynasm!(self.ops ; .arch x64 ; mov Rd(d), eax);
                }
                self.dst_end(dst, d);
            }
            Inline::MovRR { dst, src, w64 } => {
                let s = self.src(src, RAX);
                let d = self.def_begin(dst);
                if w64 {
                    if d != s {
                        dynasm!(self.ops ; .arch x64 ; mov Rq(d), Rq(s));
                    }
                } else {
                    dynasm!(self.ops ; .arch x64 ; mov Rd(d), Rd(s));
                }
                self.dst_end(dst, d);
            }
            Inline::MovRI { dst, imm, w64 } => {
                let d = self.def_begin(dst);
                if w64 {
                    let v = imm as i64;
                    if i32::try_from(v).is_ok() {
                        dynasm!(self.ops ; .arch x64 ; mov Rq(d), v as i32);
                    } else {
                        dynasm!(self.ops ; .arch x64 ; mov Rq(d), QWORD v);
                    }
                } else {
                    let v = imm as u32 as i32;
                    dynasm!(self.ops ; .arch x64 ; mov Rd(d), v);
                }
                self.dst_end(dst, d);
            }
            Inline::Alu { op, dst, src, w64 } => {
                if matches!(op, AluOp::Adc | AluOp::Sbb) {
                    self.load_guest_cf();
                }
                let store = !matches!(op, AluOp::Cmp | AluOp::Test);
                let d = self.dst_begin(dst);
                let s = match src {
                    Src::Reg(s) => Some(self.src(s, RCX)),
                    Src::Imm(_) => None,
                };
                let ops = &mut *self.ops;
                macro_rules! alu {
                    ($o:tt, ) => {
                        match (s, src, w64) {
                            (Some(s), _, true) => dynasm!(ops ; .arch x64 ; $o Rq(d), Rq(s)),
                            (Some(s), _, false) => dynasm!(ops ; .arch x64 ; $o Rd(d), Rd(s)),
                            (None, Src::Imm(v), true) => dynasm!(ops ; .arch x64 ; $o Rq(d), v),
                            (None, Src::Imm(v), false) => dynasm!(ops ; .arch x64 ; $o Rd(d), v),
                            (None, Src::Reg(_), _) => unreachable!("register sources were loaded"),
                        }
                    };
                }
                with_alu!(op, alu,);
                if store {
                    self.dst_end(dst, d);
                }
                self.flags_now_in_host();
                self.last_logic = matches!(op, AluOp::And | AluOp::Or | AluOp::Xor | AluOp::Test);
                if !store {
                    self.recompute = Some(Recompute { test: op == AluOp::Test, dst, src, w64 });
                }
            }
            Inline::IncDec { inc, dst, w64 } => {
                // INC/DEC keep CF.
                self.load_guest_cf();
                let d = self.dst_begin(dst);
                match (inc, w64) {
                    (true, true) => dynasm!(self.ops ; .arch x64 ; inc Rq(d)),
                    (false, true) => dynasm!(self.ops ; .arch x64 ; dec Rq(d)),
                    (true, false) => dynasm!(self.ops ; .arch x64 ; inc Rd(d)),
                    (false, false) => dynasm!(self.ops ; .arch x64 ; dec Rd(d)),
                }
                self.dst_end(dst, d);
                self.flags_now_in_host();
                self.last_logic = false;
            }
            Inline::Shift1 { op, dst, w64 } => {
                let d = self.dst_begin(dst);
                match (op, w64) {
                    (Mnemonic::Shl, true) => dynasm!(self.ops ; .arch x64 ; shl Rq(d), 1),
                    (Mnemonic::Shr, true) => dynasm!(self.ops ; .arch x64 ; shr Rq(d), 1),
                    (_, true) => dynasm!(self.ops ; .arch x64 ; sar Rq(d), 1),
                    (Mnemonic::Shl, false) => dynasm!(self.ops ; .arch x64 ; shl Rd(d), 1),
                    (Mnemonic::Shr, false) => dynasm!(self.ops ; .arch x64 ; shr Rd(d), 1),
                    (_, false) => dynasm!(self.ops ; .arch x64 ; sar Rd(d), 1),
                }
                self.dst_end(dst, d);
                self.flags_now_in_host();
                self.last_logic = true;
            }
            Inline::Jcc { cc, target } => {
                self.pending += 1;
                if let (0, Some(fast), true) = (target, self.fast_loop, self.last) {
                    self.fast_loop_back(Some(cc), next, fast);
                    return;
                }
                if !self.last {
                    self.side_exit(cc, target);
                    return;
                }
                self.flags_from_r9();
                let taken = self.ops.new_dynamic_label();
                if self.flags_in_host {
                    // Branch on the host flags; each path then writes them back.
                    dynasm!(self.ops ; .arch x64 ; pushfq);
                    jcc_emit!(self.ops, cc, taken);
                    for (to, label) in [(next, None), (target, Some(taken))] {
                        if let Some(l) = label {
                            dynasm!(self.ops ; .arch x64 ; =>l);
                        }
                        let (synced, pending, regs) = (self.synced, self.pending, self.regs);
                        if let (0, Some((checked, n))) = (to, self.loop_back) {
                            // Back to the entry, whose code overwrites the flags first: they go
                            // to `CpuState` only if the loop stops here for the budget.
                            dynasm!(self.ops ; .arch x64 ; pop r9);
                            self.writeback_all();
                            self.sync_count_rip(0);
                            let out = self.out;
                            dynasm!(self.ops
                                ; .arch x64
                                ; mov rax, QWORD [r12 + ICOUNT]
                                ; add rax, n
                                ; cmp rax, QWORD [r12 + BUDGET_END]
                                ; jbe =>checked
                                ; mov rax, r9
                            );
                            self.merge_flags_from_rax();
                            dynasm!(self.ops ; .arch x64 ; mov eax, exit::NO_BUDGET as i32 ; jmp =>out);
                            self.synced = synced;
                            self.pending = pending;
                            self.regs = regs;
                            continue;
                        }
                        dynasm!(self.ops ; .arch x64 ; pop rax);
                        self.merge_flags_from_rax();
                        self.sync_count_rip(to);
                        self.exit_to(to);
                        self.synced = synced;
                        self.pending = pending;
                        self.regs = regs;
                    }
                } else {
                    self.materialize_lazy();
                    let status = STATUS as i32;
                    dynasm!(self.ops
                        ; .arch x64
                        ; mov rax, QWORD [r12 + RFLAGS]
                        ; and eax, status
                        ; push rax
                        ; popfq
                    );
                    jcc_emit!(self.ops, cc, taken);
                    for (to, label) in [(next, None), (target, Some(taken))] {
                        if let Some(l) = label {
                            dynasm!(self.ops ; .arch x64 ; =>l);
                        }
                        let (synced, pending, regs) = (self.synced, self.pending, self.regs);
                        self.sync_count_rip(to);
                        self.exit_to(to);
                        self.synced = synced;
                        self.pending = pending;
                        self.regs = regs;
                    }
                }
                self.flags_now_synced();
                return;
            }
            Inline::Jmp { target } => {
                self.pending += 1;
                if let (0, Some(fast)) = (target, self.fast_loop) {
                    self.fast_loop_back(None, next, fast);
                    return;
                }
                self.sync_flags();
                self.sync_count_rip(target);
                self.exit_to(target);
                return;
            }
        }
        self.pending += 1;
    }

    /// The Jcc (or JMP: `cc` None) at the end of a self-loop block (see [`FastLoop`]): taken,
    /// straight back to the loop top with every cached register (and the count) in its host
    /// register; not taken, out of the block. The stop path of the top's budget check is
    /// emitted here, where the flags' state is known: they are the guest's there.
    fn fast_loop_back(&mut self, cc: Option<ConditionCode>, next: u64, fast: FastLoop) {
        debug_assert_eq!((self.synced, self.pending), (0, fast.n), "fast loops have no helper");
        if cc.is_some() || fast.flags_live {
            // The condition (and the top, if the flags are live there) on the host's flags,
            // from `CpuState` if a slow path or a POP synced them.
            self.flags_to_host();
        }
        if fast.flags_live && self.last_logic {
            // The top expects the guest's AF in the host's (0 after a logic operation).
            let not_af = !(AF as i32);
            dynasm!(self.ops ; .arch x64 ; pushfq ; and QWORD [rsp], not_af ; popfq);
            self.last_logic = false;
        }
        // The top expects every cached register loaded (MOVs: the flags stay).
        let missing = self.regs.allocated() & !self.regs.loaded;
        self.reload(missing);
        self.regs.loaded |= missing;
        let mut top_regs = self.regs;
        top_regs.loaded = self.regs.allocated();
        top_regs.dirty = self.regs.allocated();
        let (flags_in_host, flags_in_r9, last_logic) = (self.flags_in_host, self.flags_in_r9, self.last_logic);
        let (flags_recomp, recompute) = (self.flags_recomp, self.recompute);
        match cc {
            Some(cc) => {
                jcc_emit!(self.ops, cc, fast.top);
                // Not taken: out of the block.
                self.sync_flags();
                self.sync_count_rip(next);
                self.exit_to(next);
            }
            None => dynasm!(self.ops ; .arch x64 ; jmp =>fast.top),
        }
        // The budget is used up at the top: the state is the top's (count exact, RIP at the
        // entry), the flags those of this back edge.
        dynasm!(self.ops ; .arch x64 ; =>fast.stop);
        self.regs = top_regs;
        self.pending = 0;
        self.synced = 0;
        self.flags_in_host = flags_in_host;
        self.flags_in_r9 = flags_in_r9;
        self.flags_recomp = flags_recomp;
        self.recompute = recompute;
        self.last_logic = last_logic;
        if let (true, Some(f)) = (flags_in_host, fast.stop_flags) {
            // The top's DEC/JZ clobbered the host's flags: make them again.
            self.emit_stop_flags(f);
        }
        self.sync_flags();
        self.writeback_all();
        let out = self.out;
        dynasm!(self.ops ; .arch x64 ; mov eax, exit::NO_BUDGET as i32 ; jmp =>out);
        self.flags_now_synced();
    }

    /// The entry of a self-loop block, after the budget check (see [`FastLoop`]).
    fn fast_loop_entry(&mut self, fast: FastLoop) {
        let all = self.regs.allocated();
        for g in 0..16 {
            if all & (1 << g) != 0 {
                if let Some(h) = self.regs.host_of(g) {
                    regcache::emit_load(self.ops, h, regcache::off_of(g));
                }
            }
        }
        let ic = regcache::ICOUNT_HOST;
        let n = fast.n;
        dynasm!(self.ops
            ; .arch x64
            ; mov Rq(ic), QWORD [r12 + ICOUNT]
            ; mov rax, QWORD [r12 + BUDGET_END]
            ; sub rax, Rq(ic)
            ; xor edx, edx
            ; mov ecx, n
            ; div rcx
            ; mov r15, rax
            ; lea Rq(ic), [Rq(ic) - n]
        );
        if fast.stop_flags.is_some() {
            // Counted: the top decrements first.
            dynasm!(self.ops ; .arch x64 ; lea r15, [r15 + 1]);
        }
        self.regs.loaded = all;
        self.regs.dirty = all;
        if fast.flags_live {
            self.flags_to_host();
        }
        let tramp = self.ops.new_dynamic_label();
        let (top, stop) = (fast.top, fast.stop);
        dynasm!(self.ops
            ; .arch x64
            ; jmp =>top
            ; =>tramp
            ; jmp =>stop
            ; =>top
            ; lea Rq(ic), [Rq(ic) + n]
        );
        if fast.stop_flags.is_some() {
            dynasm!(self.ops ; .arch x64 ; dec r15 ; jz =>tramp);
        } else {
            dynasm!(self.ops ; .arch x64 ; mov rcx, r15 ; jrcxz =>tramp ; lea r15, [r15 - 1]);
        }
        self.flags_in_host = fast.flags_live;
        self.flags_in_r9 = false;
        self.flags_recomp = false;
        self.recompute = None;
        self.last_logic = false;
    }

    /// A Jcc inside a block: taken, out of the block (to `target`); not taken, on with the
    /// flags where they are.
    fn side_exit(&mut self, cc: ConditionCode, target: u64) {
        self.flags_from_r9();
        let in_host = self.flags_in_host;
        if !in_host {
            self.materialize_lazy();
            let status = STATUS as i32;
            dynasm!(self.ops ; .arch x64 ; mov rax, QWORD [r12 + RFLAGS] ; and eax, status ; push rax ; popfq);
        }
        // The exit is emitted after the block's code: the usual path falls through.
        let stub = self.ops.new_dynamic_label();
        jcc_emit!(self.ops, cc, stub);
        self.exits.push(SideExit {
            stub,
            target,
            synced: self.synced,
            pending: self.pending,
            regs: self.regs,
            flags_in_host: in_host,
            last_logic: self.last_logic,
        });
    }
}

/// A side exit put off to the end of the block, with the emitter state it needs.
#[derive(Debug, Clone, Copy)]
struct SideExit {
    stub: DynamicLabel,
    target: u64,
    synced: u64,
    pending: i32,
    regs: RegCache,
    flags_in_host: bool,
    last_logic: bool,
}

/// A slow path put off to the end of the block, with the emitter state it needs.
#[derive(Debug, Clone, Copy)]
struct SlowPath {
    slow: DynamicLabel,
    cont: DynamicLabel,
    at: u64,
    next: u64,
    synced0: u64,
    pending0: i32,
    alu: bool,
    pre: RegCache,
    post: RegCache,
    stashed: bool,
    stashed_recomp: bool,
    keep_r9: bool,
    recompute: Option<Recompute>,
    last_logic: bool,
    cur: Instruction,
    /// The instruction belongs to a probe group: R10 is 0 again after the helper.
    zero_r10: bool,
}

/// A per-access probe put off the fast path of a grouped memory operand: at `entry`, the
/// usual probe of the access (linear address in RAX; a miss goes to `slow`), then back to
/// `join` with the host address in RAX. `zero_r10` first sets R10 to 0 (the group's shared
/// probe missed: the members after it probe alone too).
#[derive(Debug, Clone, Copy)]
struct DeferredProbe {
    entry: DynamicLabel,
    join: DynamicLabel,
    write: bool,
    size: i32,
    user: bool,
    slow: DynamicLabel,
    zero_r10: bool,
}

/// How a memory operand of a block is probed. Memory operands with the same address
/// registers (unchanged in between, no helper, slow path or other memory access in between,
/// all bytes within [`GROUP_SPAN`]) share one probe: the first (the leader) checks in one
/// compare that the page holds all of them (the union of their bytes, for a write if any
/// writes: a page writable through the TLB is readable) and keeps the entry's addend in R10;
/// the others (members) add R10 to their linear address. If the shared probe misses, R10 is
/// 0 and every access probes alone, exactly as without the group; slow paths leave R10 at 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeRole {
    /// Probes alone.
    Own,
    /// Probes for the group: its bytes are `[disp + lo, disp + lo + span)` relative to the
    /// leader's own displacement `disp`; `last` is the index of its last member.
    Leader { lo: i32, span: i32, write: bool, last: usize },
    /// Uses the leader's probe.
    Member,
}

/// Largest span of bytes one shared probe covers (a wider group crosses pages more often).
const GROUP_SPAN: i64 = 256;

fn counted_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("FERRO_JIT_COUNTED").map_or(true, |v| v != "0"))
}

fn groups_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("FERRO_JIT_GROUPS").map_or(true, |v| v != "0"))
}

/// The address registers of a memory access that can share a probe: base, index (with its
/// scale) and address size. Linear addresses with one key differ by their offsets only.
type GroupKey = (Option<i32>, Option<(i32, u32)>, bool);

/// A planned memory access as a probe group sees it.
#[derive(Debug, Clone, Copy)]
struct GroupAccess {
    key: GroupKey,
    /// Offset of the first byte from what the key's registers give before the instruction.
    off: i64,
    size: i64,
    write: bool,
    user: bool,
    /// How a stack operation moves RSP (after its access).
    rsp_move: i64,
}

/// The memory access of `op`, if it can be in a probe group: a MOV/ALU memory operand with no
/// segment base and no RIP-relative address, or a PUSH/POP/CALL/RET (on RSP).
fn group_access(op: &Inline) -> Option<GroupAccess> {
    match *op {
        Inline::Mem { kind, ea, sz, user } if ea.seg_base.is_none() && !ea.rip_rel => Some(GroupAccess {
            key: (ea.base, ea.index, ea.addr32),
            off: i64::from(ea.disp),
            size: i64::from(sz.bytes()),
            write: kind.writes(),
            user,
            rsp_move: 0,
        }),
        Inline::Stack { op, w64, user } => {
            let size = if w64 { 8 } else { 4 };
            let push = matches!(op, StackOp::Push(_) | StackOp::Call(_));
            Some(GroupAccess {
                key: (Some(RSP_OFF), None, !w64),
                off: if push { -size } else { 0 },
                size,
                write: push,
                user,
                rsp_move: if push { -size } else { size },
            })
        }
        _ => None,
    }
}

/// The probe role of every planned instruction (see [`ProbeRole`]).
fn probe_groups(plan: &[Option<Inline>]) -> Vec<ProbeRole> {
    let mut roles = vec![ProbeRole::Own; plan.len()];
    if !groups_enabled() {
        return roles;
    }
    let rsp = reg_bit(RSP_OFF);
    // After `op` (an access with key `key`), by how much the key's registers moved: `Some(0)`
    // if untouched, `Some(d)` if RSP alone is the key and a stack operation moved it by `d`,
    // `None` if they changed otherwise.
    let moved = |op: &Inline, a: Option<GroupAccess>, key: GroupKey| -> Option<i64> {
        let regs = key.0.map_or(0, reg_bit) | key.1.map_or(0, |(x, _)| reg_bit(x));
        let w = written_regs(op) & regs;
        match (op, a) {
            (_, _) if w == 0 => Some(0),
            (Inline::Stack { op: sop, .. }, Some(a)) if a.key == key && regs == rsp => match sop {
                StackOp::Pop(r) if reg_bit(*r) & regs != 0 => None,
                _ => Some(a.rsp_move),
            },
            _ => None,
        }
    };
    let mut i = 0;
    while i < plan.len() {
        let (Some(op), Some(a)) = (plan[i], plan[i].as_ref().and_then(group_access)) else {
            i += 1;
            continue;
        };
        let (mut lo, mut hi, mut write) = (a.off, a.off + a.size, a.write);
        let mut delta = moved(&op, Some(a), a.key);
        let mut last = None;
        for (j, p) in plan.iter().enumerate().skip(i + 1) {
            let Some(d) = delta else { break };
            let Some(op2) = p else { break };
            match group_access(op2) {
                Some(b) if b.key == a.key && b.user == a.user => {
                    let (l, h) = (lo.min(d + b.off), hi.max(d + b.off + b.size));
                    if h - l > GROUP_SPAN {
                        break;
                    }
                    (lo, hi, write, last) = (l, h, write || b.write, Some(j));
                    delta = moved(op2, Some(b), a.key).map(|m| d + m);
                }
                // Nothing in between may call anything that could clobber R10 unsaved or take a
                // slow path that comes back.
                None if op2.register_only() && moved(op2, None, a.key) == Some(0) => {}
                _ => break,
            }
        }
        let Some(last) = last else {
            i += 1;
            continue;
        };
        roles[i] = ProbeRole::Leader { lo: (lo - a.off) as i32, span: (hi - lo) as i32, write, last };
        // Only the memory accesses are members (the forms in between keep `Own`).
        for (r, p) in roles[i + 1..=last].iter_mut().zip(&plan[i + 1..=last]) {
            if p.as_ref().and_then(group_access).is_some() {
                *r = ProbeRole::Member;
            }
        }
        i = last + 1;
    }
    roles
}

/// A CMP or TEST of guest registers whose flags can be made again (see
/// [`Emitter::recompute`]).
#[derive(Debug, Clone, Copy)]
struct Recompute {
    test: bool,
    dst: i32,
    src: Src,
    w64: bool,
}

impl Recompute {
    fn regs(self) -> u32 {
        reg_bit(self.dst)
            | match self.src {
                Src::Reg(s) => reg_bit(s),
                Src::Imm(_) => 0,
            }
    }
}

/// The guest registers (and count) `op` may write (conservative for the forms of [`ext`]).
fn written_regs(op: &Inline) -> u32 {
    let rsp = reg_bit(RSP_OFF);
    match *op {
        Inline::MovRR { dst, .. }
        | Inline::MovRI { dst, .. }
        | Inline::Lea { dst, .. }
        | Inline::IncDec { dst, .. }
        | Inline::Shift1 { dst, .. } => reg_bit(dst),
        Inline::Alu { op: AluOp::Cmp | AluOp::Test, .. } | Inline::Jcc { .. } | Inline::Jmp { .. } => 0,
        Inline::Alu { dst, .. } => reg_bit(dst),
        Inline::Mem { kind, .. } => match kind {
            MemKind::Load { reg } | MemKind::LoadExt { reg, .. } | MemKind::Cmov { reg, .. } => reg_bit(reg),
            MemKind::AluRM { op, reg } if !matches!(op, AluOp::Cmp | AluOp::Test) => reg_bit(reg),
            _ => 0,
        },
        Inline::Stack { op, .. } => match op {
            StackOp::Pop(r) => rsp | reg_bit(r),
            _ => rsp,
        },
        Inline::JmpInd { call, .. } => {
            if call {
                rsp
            } else {
                0
            }
        }
        Inline::Ext(e) => e.regs().into_iter().flatten().fold(0, |m, off| m | reg_bit(off)),
    }
}

/// A block whose last instruction is a Jcc or JMP back to its entry and whose instructions all
/// run inline (no helper: RIP stays at the entry, the count of one iteration is `n`). Its loop
/// runs on host registers:
///
/// ```text
/// checked:  load every cached register; rIC = icount - n
///           r15 = (budget_end - icount) / n        ; iterations that fit (>= 1: checked)
///           flags live at the entry: the guest's into the host's
///           jmp top
/// tramp:    jmp stop
/// top:      rIC += n; if r15 == 0 goto tramp; r15 -= 1   ; LEA, MOV, JRCXZ: flags kept
///           (counted loop, see `StopFlags`: r15 = iterations + 1; top: rIC += n; r15 -= 1;
///           if r15 == 0 goto tramp, one DEC/JZ)
///           ... body on host registers ...
///           jcc top
///           (not taken) flags, count and registers to CpuState; out
/// stop:     flags, count and registers to CpuState; return NO_BUDGET
/// ```
#[derive(Debug, Clone, Copy)]
struct FastLoop {
    top: DynamicLabel,
    stop: DynamicLabel,
    /// Instructions per iteration.
    n: i32,
    /// The flags are live at the entry: the loop keeps them in the host's from the top (loaded
    /// once before it; AF cleared at the back edge after a logic operation, as the merge would).
    flags_live: bool,
    /// A counted loop: the top's budget check may clobber the host's flags (dead at the
    /// entry), and the stop path makes the back edge's flags again this way.
    stop_flags: Option<StopFlags>,
}

/// How the stop path of a counted self-loop (see [`FastLoop`]) makes the back edge's flags
/// again in the host's: the loop's last flag writer, run again on the registers as the back
/// edge leaves them (nothing after it changes its operands).
#[derive(Debug, Clone, Copy)]
enum StopFlags {
    /// CMP or TEST: run it again.
    Compare(Recompute),
    /// SUB or ADD `dst, src`: the old `dst` is `dst + src` (SUB) or `dst - src` (ADD); CMP or
    /// ADD it with `src` again.
    Arith { sub: bool, dst: i32, src: Src, w64: bool },
    /// AND, OR or XOR: the flags of the result (TEST of it; AF 0 as after a logic operation).
    Logic { dst: i32, w64: bool },
}

/// The [`StopFlags`] of a self-loop's plan, if its last flag writer is one of those forms and
/// only forms that neither write flags nor its operands come after it.
fn stop_flags(plan: &[Option<Inline>]) -> Option<StopFlags> {
    let mut later = 0u32;
    for p in plan.iter().rev() {
        let op = (*p)?;
        match op {
            Inline::Alu { op: a, dst, src, w64 } if !matches!(a, AluOp::Adc | AluOp::Sbb) => {
                let s = match src {
                    Src::Reg(s) => Some(s),
                    Src::Imm(_) => None,
                };
                if later & (reg_bit(dst) | s.map_or(0, reg_bit)) != 0 {
                    return None;
                }
                return match a {
                    AluOp::Cmp | AluOp::Test => {
                        Some(StopFlags::Compare(Recompute { test: a == AluOp::Test, dst, src, w64 }))
                    }
                    AluOp::And | AluOp::Or | AluOp::Xor => Some(StopFlags::Logic { dst, w64 }),
                    // The old value is lost when the source is the destination itself, or when
                    // the immediate cannot be negated in a displacement.
                    AluOp::Sub | AluOp::Add if s == Some(dst) => None,
                    AluOp::Add if matches!(src, Src::Imm(i32::MIN)) => None,
                    AluOp::Sub | AluOp::Add => Some(StopFlags::Arith { sub: a == AluOp::Sub, dst, src, w64 }),
                    AluOp::Adc | AluOp::Sbb => None,
                };
            }
            // Forms that leave the flags alone.
            Inline::Jcc { .. }
            | Inline::Jmp { .. }
            | Inline::MovRR { .. }
            | Inline::MovRI { .. }
            | Inline::Lea { .. } => later |= written_regs(&op),
            Inline::Mem {
                kind: MemKind::Load { .. } | MemKind::LoadExt { .. } | MemKind::Store { .. } | MemKind::StoreImm { .. },
                ..
            } => later |= written_regs(&op),
            _ => return None,
        }
    }
    None
}

/// Emits a block.
///
/// ```text
/// push r12..r14, r15, rbx, rbp; sub rsp, 8   ; one frame for every block (chains jump
///                                             ; between bodies); rsp 16-aligned for calls
/// r12 = cpu; r13 = the soft TLB's entries; r14 = helpers (the helper environment at [r14 + ENV])
/// body: if icount + n > budget_end: return NO_BUDGET
/// (self-loop: see `FastLoop`)
/// per instruction, inline:  host code on guest registers in host registers (see `regcache`:
///                           loaded on first use) or on CpuState fields; flags left in the
///                           host's RFLAGS (or R9, or recomputable) until something needs them
///                 a Jcc:     taken, out (a side exit); not taken, on
///                 otherwise: sync flags, icount, RIP, registers; eax = helpers.step(cpu, env);
///                            if eax != CONTINUE goto out
/// sync (flags, icount, RIP, dirty registers); eax = BLOCK_END or a chain slot
/// out: add rsp, 8; pop ...; ret               ; eax = exit code
/// ```
#[allow(clippy::too_many_arguments)]
fn emit_block(
    ops: &mut Assembler,
    insns: &[Instruction],
    bitness: u32,
    inline: bool,
    user: bool,
    big_stack: bool,
    cpl0: bool,
    sse: bool,
    entry_rip: u64,
    entry_backing: u64,
    slots: &mut Vec<(AssemblyOffset, u64)>,
    profile: Option<&mut Profile>,
    lookup: bool,
    straddle: bool,
) -> AssemblyOffset {
    let out = ops.new_dynamic_label();
    let no_budget = ops.new_dynamic_label();
    // A direct branch inlines only if its target is canonical for the RIP being translated
    // (the interpreter raises #GP for a non-canonical one).
    let canonical = |t: u64| {
        let a = entry_rip.wrapping_add(t);
        bitness != 64 || ((a << 16) as i64 >> 16) as u64 == a
    };
    let n_real = insns.len() - usize::from(straddle);
    let mut plan: Vec<Option<Inline>> = insns
        .iter()
        .enumerate()
        .map(|(k, i)| {
            // The placeholder of an instruction crossing the page end goes to the helper.
            if !inline || k >= n_real {
                return None;
            }
            if let Some(s) = sse.then(|| sse::classify_sse(i, bitness, user)).flatten() {
                return Some(Inline::Ext(Ext::Sse(s)));
            }
            let mem_op = (0..i.op_count()).any(|k| i.op_kind(k) == OpKind::Memory);
            let p = if matches!(i.mnemonic(), Mnemonic::Jmp | Mnemonic::Call)
                && bitness == 64
                && i.op_count() == 1
                && matches!(i.op0_kind(), OpKind::Register | OpKind::Memory)
                && !i.has_lock_prefix()
            {
                let call = i.mnemonic() == Mnemonic::Call;
                match i.op0_kind() {
                    OpKind::Register if i.op0_register().is_gpr64() => gpr_off(i.op0_register())
                        .map(|(reg, _)| Inline::JmpInd { reg: Some(reg), ea: None, user, call }),
                    OpKind::Memory if i.memory_size().size() == 8 && !i.is_call_far_indirect() => {
                        effective_address(i, bitness).map(|ea| Inline::JmpInd { reg: None, ea: Some(ea), user, call })
                    }
                    _ => None,
                }
            } else if mem_op && (i.op_count() == 2 || matches!(i.mnemonic(), Mnemonic::Inc | Mnemonic::Dec)) {
                classify_mem(i, bitness, user)
            } else if let Some(p) = classify_stack(i, bitness, big_stack, user) {
                Some(p)
            } else if i.mnemonic() == Mnemonic::Rdtsc {
                cpl0.then_some(Inline::Ext(Ext::Rdtsc))
            } else {
                classify(i).or_else(|| classify_ext(i).map(Inline::Ext))
            };
            match p {
                Some(Inline::Jcc { target, .. } | Inline::Jmp { target })
                | Some(Inline::Stack { op: StackOp::Call(target), .. })
                    if !canonical(target) =>
                {
                    None
                }
                p => p,
            }
        })
        .collect();
    let (dead, _) = dead_flags(&plan);
    // The host's rotates by CL leave OF undefined where the interpreter defines it: inline
    // only when the flags are dead anyway. (Shifts by CL with live flags: see `ext`.)
    for (p, d) in plan.iter_mut().zip(&dead) {
        if matches!(p, Some(Inline::Ext(Ext::RotDead { cl: true, .. }))) && !d {
            *p = None;
        }
    }
    let (dead, entry_dead) = dead_flags(&plan);
    let n_insns = insns.len() as i32;
    // A self-loop running on host registers (see `FastLoop`).
    let fast = plan.iter().all(Option::is_some)
        && matches!(plan.last(), Some(Some(Inline::Jcc { target: 0, .. } | Inline::Jmp { target: 0 })))
        && regcache_enabled();
    let mut uses = [0u32; 16];
    for p in plan.iter().flatten() {
        cached_uses(p, &mut uses);
    }
    let regs = if !regcache_enabled() {
        RegCache::default()
    } else if fast {
        let mut r = RegCache::allocate(&uses, 1, &regcache::HOST_REGS[..4]);
        r.set_icount_host(regcache::ICOUNT_HOST);
        r
    } else {
        RegCache::allocate(&uses, 2, &regcache::HOST_REGS)
    };
    // The frame every block shares (chained blocks jump into each other's bodies): the
    // callee-saved registers the cache may use are saved whether this block uses them or not.
    dynasm!(ops
        ; .arch x64
        ; push r12
        ; push r13
        ; push r14
        ; push r15
        ; push rbx
        ; push rbp
        ; sub rsp, 8
        ; mov r12, rdi
        ; mov r13, QWORD [rdi + TLB_SETS]
        ; mov r14, rdx
    );
    let body_off = ops.offset();
    let body = Some(ops.new_dynamic_label());
    let checked = ops.new_dynamic_label();
    if let Some(body) = body {
        let n = n_insns;
        dynasm!(ops
            ; .arch x64
            ; =>body
            ; mov rax, QWORD [r12 + ICOUNT]
            ; add rax, n
            ; cmp rax, QWORD [r12 + BUDGET_END]
            ; ja =>no_budget
            ; =>checked
        );
    }
    let fast_loop = fast.then(|| FastLoop {
        top: ops.new_dynamic_label(),
        stop: ops.new_dynamic_label(),
        n: n_insns,
        flags_live: !entry_dead,
        stop_flags: if entry_dead && counted_enabled() { stop_flags(&plan) } else { None },
    });
    let hexit = if lookup { ops.new_dynamic_label() } else { out };
    let mut em = Emitter {
        ops,
        out,
        body,
        entry_backing,
        slots,
        rip32: bitness != 64,
        synced: 0,
        pending: 0,
        flags_in_host: false,
        last_logic: false,
        cur: Instruction::default(),
        stashed: false,
        keep_r9: false,
        flags_in_r9: false,
        recompute: None,
        flags_recomp: false,
        stashed_recomp: false,
        loop_back: (entry_dead && !fast).then_some((checked, n_insns)),
        profile,
        regs,
        fast_loop,
        last: false,
        deferred: Vec::new(),
        deferred_probes: Vec::new(),
        roles: probe_groups(&plan),
        idx: 0,
        group_until: None,
        exits: Vec::new(),
        merge_sub: [None; 2],
        lookup,
        hexit,
    };
    if let Some(fast) = fast_loop {
        em.fast_loop_entry(fast);
    }
    let mut ended = false;
    for (k, ((i, p), &dead)) in insns.iter().zip(&plan).zip(&dead).enumerate() {
        let at = i.ip();
        let next = i.next_ip();
        em.cur = *i;
        em.idx = k;
        em.last = std::ptr::eq(i, insns.last().unwrap_or(i));
        match p {
            Some(op) => {
                // What the emitter runs on `CpuState` fields: written back and dropped.
                let m = memory_regs(op);
                em.before_writes(written_regs(op));
                em.spill(m);
                em.inline(*op, at, next, dead);
                em.regs.loaded &= !m;
                em.regs.dirty &= !m;
                if em.last && matches!(op, Inline::Jcc { .. })
                    || matches!(
                        op,
                        Inline::Jmp { .. }
                            | Inline::JmpInd { .. }
                            | Inline::Stack { op: StackOp::Call(_) | StackOp::Ret, .. }
                    )
                {
                    ended = true;
                }
            }
            None => em.helper(at, next),
        }
    }
    if straddle {
        // After the helper ran the instruction crossing the page end (and set RIP): the state
        // is in `CpuState`, the count synced; the next block is looked up with every check
        // (the instruction may be a POPF, a MOV to DR7, ...).
        em.leave_lookup_checked();
    } else if !ended {
        let end = insns.last().map_or(0, |i| i.next_ip());
        em.sync_flags();
        em.sync_count_rip(end);
        if insns.last().is_some_and(ends_block) {
            // POPF, STI, MOV SS, ...: the dispatcher must see the state they leave (TF, an
            // interrupt shadow, breakpoints) before the next instruction, so no chained jump.
            em.writeback_all();
            em.leave();
        } else {
            em.exit_to(end);
        }
    }
    em.emit_slow_paths();
    em.emit_merge_subroutines();
    if lookup {
        let hexit = em.hexit;
        dynasm!(em.ops ; .arch x64 ; =>hexit ; jmp QWORD [r14 + lookup::STUB_CHECKED]);
    }
    let ops = em.ops;
    dynasm!(ops ; .arch x64 ; =>no_budget ; mov eax, exit::NO_BUDGET as i32 ; jmp =>out);
    dynasm!(ops ; .arch x64 ; =>out);
    emit_epilogue(ops);
    body_off
}

/// The epilogue of the frame every block shares (pushed by [`emit_block`]'s prologue: r12..r15,
/// rbx, rbp and 8 bytes of alignment), also emitted by the lookup stub, which leaves from inside
/// whichever block jumped to it; EAX holds the exit code.
fn emit_epilogue(ops: &mut Assembler) {
    dynasm!(ops
        ; .arch x64
        ; add rsp, 8
        ; pop rbp
        ; pop rbx
        ; pop r15
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
unsafe fn enter_block(code: *const u8, cpu: &mut CpuState, env: &mut HelperEnv<'_>, table: &mut HelperTable) -> u32 {
    // SAFETY: by the contract above `code` is the entry of a function emitted with the
    // `BlockFn` signature (sysv64: three pointer arguments, u32 result; it saves and restores
    // the callee-saved registers it uses and keeps the stack aligned for its calls).
    let f: BlockFn = unsafe { std::mem::transmute::<*const u8, BlockFn>(code) };
    // Generated code passes the environment to the helpers from the table (R13 holds the
    // TLB's entries instead): the same pointer as the argument.
    let env: *mut HelperEnv<'_> = env;
    table.env = env.cast();
    // SAFETY: the pointers come from exclusive borrows valid for the call; the block only
    // passes them on to `helper_step`, whose contract they meet.
    unsafe { f(cpu, env, table) }
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

/// Why an instruction was interpreted outside any block (an index into
/// `JitStats::interpreted_why`).
#[derive(Debug, Clone, Copy)]
enum NoBlock {
    /// Halted, an interrupt due, an interrupt shadow or a debug feature armed.
    Due = 0,
    /// No TLB entry for the instruction fetch (the interpreter's fetch walks and fills it).
    NoTlb = 1,
    /// Nothing translatable (no executable memory, no decodable instruction).
    NoCode = 2,
    /// The block did not fit in the remaining budget.
    NoBudget = 3,
}

/// Where a block found by [`block_for`] is.
#[derive(Debug, Clone, Copy)]
struct Found {
    entry: AssemblyOffset,
    body: AssemblyOffset,
}

/// The checks the dispatcher makes before it enters a block, shared with the in-code lookup
/// so the two never disagree: the run's budget left, no code invalidation queued, not halted,
/// no interrupt due, no interrupt shadow, no debug feature armed (single-step TF, a pending RF,
/// breakpoints in DR7, a pending NMI: the interpreter's, one instruction at a time), no stop
/// asked for. Blocks assume all that when they start (helpers keep it so inside them).
fn gate(cpu: &CpuState, bus: &mut dyn CpuBus, end: u64) -> bool {
    cpu.icount < end && !bus.memory().code_pages().has_invalidated() && !cpu.stop_requested && !due(cpu)
}

/// Halted, an interrupt due, an interrupt shadow or a debug feature armed: the interpreter
/// runs the next instruction.
fn due(cpu: &CpuState) -> bool {
    let debug = cpu.rflags & (TF | RF) != 0 || cpu.dr[7] & 0xFF != 0 || cpu.nmi_pending;
    cpu.halted || debug || cpu.interrupt_shadow || (cpu.rflags & IF != 0 && cpu.irq_pending)
}

/// Finds or makes the block for CS:RIP; `Err` when the instruction must be interpreted (or,
/// without `may_flush`, when the cache is full: the in-code lookup leaves that to the
/// dispatcher, as a flush reuses the bytes of the code that called it).
fn block_for(
    cache: &mut CodeCache,
    stats: &mut JitStats,
    profile: Option<&mut Profile>,
    cpu: &mut CpuState,
    bus: &mut dyn CpuBus,
    may_flush: bool,
) -> Result<(Found, u64), NoBlock> {
    cache.code.as_ref().ok_or(NoBlock::NoCode)?;
    cpu.refresh_mode_key();
    let b = code_backing(cpu).ok_or(NoBlock::NoTlb)?;
    let key = (b, cpu.mode_key);
    let j = jc_index(key);
    let e = cache.jc[j];
    if e.holds(key) {
        return Ok((Found { entry: AssemblyOffset(e.entry as usize), body: AssemblyOffset(e.body as usize) }, b));
    }
    if let Some(blk) = cache.blocks.get(&key).copied() {
        cache.jc_fill(key, &blk);
        return Ok((Found { entry: blk.entry, body: blk.body }, b));
    }
    let mem = bus.memory();
    if cache.full() {
        if !may_flush {
            return Err(NoBlock::NoCode);
        }
        cache.flush();
        stats.cache_flushes += 1;
    }
    // Inline host code only in flat 32- and 64-bit code outside virtual-8086 mode.
    let k = cpu.mode_key;
    let inline = matches!(k & 3, 2 | 3) && k & (1 << 7) != 0 && k & (1 << 6) == 0;
    let big_stack = k & (1 << 4) != 0;
    let blk = cache
        .translate(mem.backing(), key, cpu.mode().bitness(), inline, cpu.cpl == 3, big_stack, cpu.rip, profile)
        .ok_or(NoBlock::NoCode)?;
    // Pages that mix code and data are tracked per chunk (see `mmu::CodePages`): mark the
    // bytes translated, so writes next to them do not drop the block.
    if mem.mark_code_range(b, blk.guest_len) {
        cpu.tlb.protect_backing_page(b & PAGE_MASK);
    }
    stats.blocks_translated += 1;
    cache.jc_fill(key, &blk);
    Ok((Found { entry: blk.entry, body: blk.body }, b))
}

/// The dispatcher: runs blocks (or single interpreted instructions) until the budget is used up
/// or something ends the run.
pub(crate) fn run(t: &mut Translator, cpu: &mut CpuState, bus: &mut dyn CpuBus, budget: u64) -> RunExit {
    // The start of a run, call for call as the interpreter does it (see the rule on
    // `Interpreter::run`): one interrupt poll, then a latched NMI is delivered; an NMI held by
    // an interrupt shadow ends the run after one instruction (`budget_end` stays, so a REP
    // there runs on as under the interpreter).
    let mut end = cpu.icount.saturating_add(budget);
    cpu.budget_end = end;
    cpu.irq_pending = bus.interrupt_pending();
    cpu.stop_requested = false;
    cpu.refresh_mode_key();
    match t.interp.service_nmi_for_jit(cpu, bus) {
        Err(x) => return x,
        Ok(true) => end = end.min(cpu.icount + 1),
        Ok(false) => {}
    }
    let Translator { interp, cache, stats, trace, profile, block_step, lookup, clobber } = t;
    let block_step = *block_step;
    let mut env = HelperEnv::new(interp, bus, *trace);
    // The inline probes use the TLB's addends as host addresses of this memory.
    cpu.tlb.set_host_base(env.mem_base as u64);
    let mut table = HelperTable {
        step: if *clobber { clobber::step } else { helper_step },
        flags: if *clobber { clobber::flags } else { helper_flags },
        lookup: if *clobber { clobber::lookup } else { lookup::lookup },
        stub: cache.stub.as_ref().map_or(std::ptr::null(), |b| b.entry(cache.stub_fast)),
        stub_checked: cache.stub.as_ref().map_or(std::ptr::null(), |b| b.entry(0)),
        jc: cache.jc.as_ptr(),
        hits: 0,
        // Block stepping returns after every block; a run cut short for an NMI held by an
        // interrupt shadow (`end` before `budget_end`) must not run on in generated code.
        on: u64::from(*lookup && cache.stub.is_some() && !block_step && end == cpu.budget_end),
        misses: 0,
        found: 0,
        end,
        env: std::ptr::null_mut(),
        cache: std::ptr::null_mut(),
        stats: std::ptr::null_mut(),
        profile: std::ptr::null_mut(),
    };
    // (cache generation, chain slot) of the last block exit through an unpatched chain slot.
    let mut chain_req: Option<(u64, usize)> = None;
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
        // Blocks assume no interrupt is due when they start (helpers keep it so inside them),
        // and no debug feature is armed (see `gate`, which the in-code lookup runs).
        let code =
            if due(cpu) { Err(NoBlock::Due) } else { block_for(cache, stats, profile.as_mut(), cpu, env.bus(), true) };
        // Block stepping: no chaining (every block returns to the dispatcher, so to the caller).
        if let (Some((generation, id)), Ok((blk, b)), false) = (chain_req.take(), &code, block_step) {
            // A flush in between (cache full, everything invalidated) took the slot away.
            if generation == cache.generation {
                cache.chain(id, *b, blk);
            }
        }
        let before = cpu.icount;
        let c = match code {
            Ok((blk, _)) => {
                stats.block_runs += 1;
                if block_step {
                    // A block that jumps back to its own entry checks the budget each time
                    // round: one unit runs at most one block's worth of instructions.
                    cpu.budget_end = end.min(cpu.icount + crate::MAX_BLOCK_INSNS as u64);
                }
                // The lookup helper reaches these while the block runs; nothing else does.
                table.cache = &mut *cache;
                table.stats = &mut *stats;
                table.profile = &mut *profile;
                // SAFETY: the pointers were just made from the dispatcher's exclusive borrows,
                // which it does not use again until the block returns.
                unsafe { CodeCache::enter(table.cache, blk.entry, cpu, &mut env, &mut table) }
            }
            Err(why) => {
                stats.interpreted += 1;
                stats.interpreted_why[why as usize] += 1;
                env.step(cpu)
            }
        };
        match c & 0xFF {
            exit::HALTED => break RunExit::Halted,
            exit::TRIPLE_FAULT => break RunExit::TripleFault,
            exit::STOPPED => break RunExit::Stopped,
            CHAIN => chain_req = Some((cache.generation, (c >> 8) as usize)),
            // The block that did not fit may have been reached by a chained jump after other
            // blocks ran: the budget may be used up already.
            // (Block stepping: a block that stopped looping for the unit's budget is a unit.)
            exit::NO_BUDGET if cpu.icount < end && !(block_step && cpu.icount > before) => {
                stats.interpreted += 1;
                stats.interpreted_why[NoBlock::NoBudget as usize] += 1;
                match env.step(cpu) {
                    exit::HALTED => break RunExit::Halted,
                    exit::TRIPLE_FAULT => break RunExit::TripleFault,
                    exit::STOPPED => break RunExit::Stopped,
                    _ => {}
                }
            }
            _ => {}
        }
        if block_step {
            break RunExit::BudgetExhausted;
        }
    };
    stats.helper_calls += env.helper_calls;
    stats.chains_patched = cache.chained;
    stats.lookup_hits += table.hits;
    stats.lookup_misses += table.misses;
    stats.lookup_found += table.found;
    r
}
