//! The interpreter: fetch through the soft TLB, decode with iced-x86 (cached by physical
//! address), execute, deliver exceptions and interrupts.

mod alu;
mod debug;
mod descriptor_insn;
mod exec;
mod fast;
mod mem;
mod sysinsn;
mod system;
mod task;
mod v86;

pub use alu::{double_shift, shift, ShiftOp};

use crate::bus::CpuBus;
use crate::engine::{ExecutionEngine, RunExit};
use crate::exception::Exception;
use crate::state::{rflags, CpuMode, CpuState, SegReg};
use fast::Fast;
use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction};
use mmu::{TlbAccess, PAGE_MASK};

const CACHE_ENTRIES: usize = 1 << 16;
const KEY_VALID: u64 = 1 << 63;
/// One step of a bank generation in the decode-cache key (bits 40..55; backing offsets are
/// below 2^40).
const GEN_ONE: u64 = 1 << 40;
/// The generation bits of a key.
const GEN_MASK: u64 = 0xFFFF << 40;

/// An instruction as the decode cache holds it: iced-x86's decoding and the hot-path form.
#[derive(Clone, Copy)]
pub(crate) struct Decoded {
    instr: Instruction,
    fast: Fast,
}

/// Entries of the cache of instructions that cross a page end.
const STRADDLERS: usize = 16;

/// An instruction that crosses a page end, decoded: valid while RIP, bitness and where both
/// pages map are as when it was decoded and neither page's bank moved to a new generation (its
/// bytes are marked as code in both pages, so a write to them does that). Without it, each run
/// of such an instruction fetched and decoded it twice (a loop over one ran it 13 M times on
/// the Linux workload).
#[derive(Clone, Copy)]
struct Straddler {
    /// Linear address, RIP, bitness (0: empty).
    lin: u64,
    rip: u64,
    bitness: u32,
    /// Backing offsets of the first byte and of the next page, with their bank generations.
    b1: u64,
    b2: u64,
    gen1: u64,
    gen2: u64,
    decoded: Decoded,
}

/// Decoded instructions keyed by backing offset (physical), bitness and RIP; a write to a page
/// drops that page's entries.
///
/// The tags and the decoded instructions live in separate arrays: invalidation only ever
/// touches the tags, so the executing instruction can be borrowed straight from the cache (no
/// copy of the 40-byte `Instruction` per step). The instruction array is reached only through
/// `instrs`, a pointer to a heap buffer this cache owns; slot `CACHE_ENTRIES` is scratch space
/// for instructions decoded without being cached.
pub(crate) struct DecodeCache {
    /// (key, rip) per slot.
    tags: Box<[(u64, u64); CACHE_ENTRIES]>,
    /// Owner of the instruction buffer (never touched after `new` except by drop). Left
    /// uninitialised: a slot is only read after `put` wrote it (its tag matches only then), so
    /// the 3.7 MB buffer costs no page faults until instructions are decoded into it.
    _instr_buf: Box<[std::mem::MaybeUninit<Decoded>]>,
    /// `CACHE_ENTRIES + 1` decoded instructions.
    instrs: *mut Decoded,
    /// Per bank (see [`DecodeCache::bank`]): the generation bits entries must carry to match.
    bank_gen: [u64; 16],
    /// Some tag may be valid (a `put` since the last `clear`): `clear` on an empty cache (the
    /// image loads before the first instruction) does not touch the 1 MB of tags.
    used: bool,
    /// Instructions that cross a page end (see [`Straddler`]), by linear page.
    straddlers: Box<[Straddler; STRADDLERS]>,
    pub(crate) hits: u64,
    pub(crate) misses: u64,
}

// SAFETY: `instrs` points into `_instr_buf`, which this value owns exclusively (like a `Vec`);
// nothing else holds the pointer, so moving the cache to another thread is sound.
unsafe impl Send for DecodeCache {}

// SAFETY: the buffer behind `instrs` is only read or written through `&mut self` methods (and
// the reference `step_one` derives while it holds `&mut self`), so sharing `&DecodeCache`
// between threads gives no access to it.
unsafe impl Sync for DecodeCache {}

impl std::fmt::Debug for DecodeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeCache").field("hits", &self.hits).field("misses", &self.misses).finish()
    }
}

impl DecodeCache {
    fn new() -> Self {
        let mut buf = Box::<[Decoded]>::new_uninit_slice(CACHE_ENTRIES + 1);
        let instrs = buf.as_mut_ptr().cast::<Decoded>();
        // Zeroed (no valid key has bit 63 clear): the allocator hands out untouched pages.
        let tags: Box<[(u64, u64); CACHE_ENTRIES]> =
            vec![(0, 0); CACHE_ENTRIES].into_boxed_slice().try_into().expect("CACHE_ENTRIES tags");
        let empty = Straddler {
            lin: 0,
            rip: 0,
            bitness: 0,
            b1: 0,
            b2: 0,
            gen1: 0,
            gen2: 0,
            decoded: Decoded { instr: Instruction::default(), fast: Fast::default() },
        };
        DecodeCache {
            tags,
            _instr_buf: buf,
            instrs,
            bank_gen: [0; 16],
            used: false,
            straddlers: Box::new([empty; STRADDLERS]),
            hits: 0,
            misses: 0,
        }
    }

    #[inline(always)]
    fn slot(backing: u64) -> usize {
        (backing as usize) & (CACHE_ENTRIES - 1)
    }

    /// Stores `instr` in `slot` (or the scratch slot `CACHE_ENTRIES`) and returns a pointer to it.
    #[inline]
    fn put(&mut self, slot: usize, instr: &Instruction) -> *const Decoded {
        debug_assert!(slot <= CACHE_ENTRIES);
        // SAFETY: `slot <= CACHE_ENTRIES` is inside the buffer of CACHE_ENTRIES + 1 elements
        // (`write` fills a slot that may be uninitialised; `Decoded` is `Copy`, nothing drops);
        // `&mut self` guarantees no instruction borrowed from the cache is alive (callers only
        // borrow one between `fetch` and the end of its execution, which never calls `put`).
        unsafe {
            let p = self.instrs.add(slot);
            p.write(Decoded { instr: *instr, fast: fast::predecode(instr) });
            p
        }
    }

    /// The slots of a backing page form one of 16 banks (slot = offset mod 64K); each bank has a
    /// generation, kept in key bits 40..55, that invalidation bumps.
    #[inline(always)]
    fn bank(backing: u64) -> usize {
        ((backing >> 12) & 15) as usize
    }

    /// The key bits of the generation of `backing`'s bank.
    #[inline(always)]
    fn gen_bits(&self, backing: u64) -> u64 {
        self.bank_gen[Self::bank(backing)]
    }

    /// Drops every entry decoded from the backing page at `page_addr`, in O(1): the page's bank
    /// moves to a new generation, so its entries (and those of the 15 other pages sharing the
    /// bank, which are simply decoded again) no longer match. A page that mixes code and data
    /// therefore costs a re-decode per write, not a scan of the cache. When the 16-bit
    /// generation wraps, the bank's tags (and the straddlers on its pages) are cleared so no old
    /// entry can match again.
    pub(crate) fn invalidate_page(&mut self, page_addr: u64) {
        let bank = Self::bank(page_addr);
        let next = (self.bank_gen[bank] + GEN_ONE) & GEN_MASK;
        self.bank_gen[bank] = next;
        if next == 0 {
            let first = bank << 12;
            for e in &mut self.tags[first..first + 0x1000] {
                e.0 = 0;
            }
            // The straddlers carry generations too: one of this bank would match again.
            for st in self.straddlers.iter_mut() {
                if Self::bank(st.b1) == bank || Self::bank(st.b2) == bank {
                    st.bitness = 0;
                }
            }
        }
    }

    fn clear(&mut self) {
        if !std::mem::take(&mut self.used) {
            return;
        }
        for e in self.tags.iter_mut() {
            e.0 = 0;
        }
        for s in self.straddlers.iter_mut() {
            s.bitness = 0;
        }
    }

    /// The straddler slot of a linear address.
    fn straddler_slot(lin: u64) -> usize {
        ((lin >> 12) as usize) & (STRADDLERS - 1)
    }
}

/// The per-instruction execution context.
pub(crate) struct Cx<'a> {
    pub(crate) cpu: &'a mut CpuState,
    pub(crate) bus: &'a mut dyn CpuBus,
    pub(crate) cache: &'a mut DecodeCache,
    pub(crate) mode: CpuMode,
    /// Accesses are implicit supervisor accesses (descriptor tables, TSS, IDT).
    pub(crate) sys_access: bool,
    /// A port or MMIO write happened, or an event needs a look (a waiting NMI after IRET): the
    /// run loop services NMIs and asks the bus whether to stop.
    pub(crate) io_written: bool,
    /// A port or MMIO access happened: the run loop refreshes `CpuState::irq_pending`.
    pub(crate) io_touched: bool,
    /// A port or MMIO access happened during this context's life (never reset).
    pub(crate) any_io: bool,
    /// Cached code was overwritten.
    pub(crate) code_written: bool,
    /// The instruction changed the mode, paging or CS: refresh `mode`.
    pub(crate) mode_changed: bool,
    /// REP iterations count as instructions and stop at this instruction count.
    pub(crate) budget_end: u64,
    /// RIP of the instruction after the one executing (saved by task switches).
    pub(crate) next_rip: u64,
    /// Linear page of the last instruction fetch through the TLB (`u64::MAX`: none) and its
    /// backing page, reused while only hot-path instructions execute.
    pub(crate) fetch_lin_page: u64,
    pub(crate) fetch_backing_page: u64,
    /// The decode-cache key bits (bitness, valid, bank generation) that went with
    /// `fetch_lin_page`; invalidating a page resets `fetch_lin_page`.
    pub(crate) fetch_key_hi: u64,
    /// The instruction was MOV SS or POP SS: debug traps wait one instruction (SDM 6.8.3).
    pub(crate) dbg_ss_loaded: bool,
    /// The instruction raised a software interrupt (INT n, INT3, INTO): no single-step trap.
    pub(crate) dbg_soft_int: bool,
    /// DR6 B0-B3 bits of data and I/O breakpoints hit by the executing instruction.
    pub(crate) dbg_hits: u64,
    /// DR6 bits of debug traps held back by a MOV SS/POP SS.
    pub(crate) dbg_deferred: u64,
    /// Debug features apply (a run; not the single-instruction `Interpreter::step`).
    pub(crate) dbg_enabled: bool,
    /// The executing instruction was started by `Cx::debug_before`.
    pub(crate) dbg_live: bool,
    /// TF was set when it started.
    pub(crate) dbg_step: bool,
    /// The run's instruction budget, while single-stepping clamps it to one REP iteration.
    pub(crate) dbg_budget_end: u64,
    /// User data accesses are alignment-checked (CR0.AM, EFLAGS.AC, CPL 3): the user TLB
    /// entries have slow tags and the slow paths raise #AC.
    pub(crate) ac_active: bool,
}

/// The interpreter engine. Holds only caches; all architectural state is in [`CpuState`].
#[derive(Debug)]
pub struct Interpreter {
    cache: DecodeCache,
    /// Log each instruction (`--trace`).
    pub trace: bool,
}

impl Default for Interpreter {
    fn default() -> Self {
        Self::new()
    }
}

/// Why executing one instruction did not simply complete.
pub(crate) enum Stop {
    /// An exception to deliver (faults leave RIP at the instruction).
    Exc(Exception),
}

impl From<Exception> for Stop {
    fn from(e: Exception) -> Self {
        Stop::Exc(e)
    }
}

impl Interpreter {
    /// A new interpreter with empty caches.
    pub fn new() -> Self {
        Interpreter { cache: DecodeCache::new(), trace: false }
    }

    /// The NMI part of the start of a run, for an engine that runs the rest itself (the JIT):
    /// exactly what [`ExecutionEngine::run`] does after setting up `budget_end`, `irq_pending`
    /// and `stop_requested`, and nothing else. Unless NMIs are blocked, a latched NMI
    /// ([`CpuBus::take_nmi`], the only bus call) is delivered (counts 0 instructions).
    /// `Ok(true)`: an interrupt shadow holds it back, so the run must end after one instruction
    /// (the next run delivers it). `Err(RunExit::TripleFault)`: delivering it triple-faulted.
    ///
    /// Why not `run(cpu, bus, 0)`: see the start-of-run rule on [`ExecutionEngine::run`] for
    /// the interpreter; a zero-budget run polls the bus again.
    pub fn service_nmi_for_jit(&mut self, cpu: &mut CpuState, bus: &mut dyn CpuBus) -> Result<bool, RunExit> {
        let end = cpu.budget_end;
        let mut cx = Cx::new(cpu, bus, &mut self.cache, end, true);
        cx.service_nmi().map_err(|()| RunExit::TripleFault)
    }

    /// One turn of the run loop for the JIT's per-instruction helper (see
    /// [`crate::helpers::helper_step`]): the run's end is `cpu.budget_end`.
    pub fn step_for_jit(&mut self, cpu: &mut CpuState, bus: &mut dyn CpuBus, trace: bool) -> u32 {
        use crate::helpers::exit;
        let end = cpu.budget_end;
        let mut cx = Cx::new(cpu, bus, &mut self.cache, end, true);
        let rip = cx.cpu.rip;
        let icount = cx.cpu.icount;
        let epoch = cx.cpu.tlb.stats.epoch();
        let interrupt = cx.cpu.rflags & rflags::IF != 0 && !cx.cpu.interrupt_shadow && cx.cpu.irq_pending;
        let r = if trace { cx.run_one::<true>() } else { cx.run_one::<false>() };
        match r {
            Some(RunExit::Halted) => exit::HALTED,
            Some(RunExit::TripleFault) => exit::TRIPLE_FAULT,
            Some(RunExit::Stopped) => exit::STOPPED,
            Some(RunExit::BudgetExhausted) => exit::BLOCK_END,
            None => {
                let fell_through = cx.cpu.rip == cx.next_rip && cx.cpu.rip != rip;
                let quiet = !interrupt && !cx.any_io && !cx.code_written && !cx.cpu.interrupt_shadow && !cx.cpu.halted;
                let deliverable = cx.cpu.rflags & rflags::IF != 0 && cx.cpu.irq_pending;
                // Generated code after the helper assumes the mode it was translated for.
                // ... and that the mapping of its code still holds (no TLB flush, no INVLPG).
                // An instruction that kept the fetch page (`Fast::keeps_fetch_page`: it cannot
                // change CS, the CPL, a segment register, a control register, EFLAGS.AC/VM or
                // the mapping; `step_one` drops the page for every other instruction and for a
                // fault) leaves the mode key as it was: no need to compute it.
                let kept = cx.fetch_lin_page != u64::MAX;
                let same_mode =
                    cx.cpu.tlb.stats.epoch() == epoch && (kept || cx.cpu.compute_mode_key() == cx.cpu.mode_key);
                if fell_through
                    && quiet
                    && !deliverable
                    && same_mode
                    && cx.cpu.icount == icount + 1
                    && cx.cpu.icount < end
                {
                    exit::CONTINUE
                } else {
                    exit::BLOCK_END
                }
            }
        }
    }

    /// Decode-cache hits and misses so far.
    pub fn decode_stats(&self) -> (u64, u64) {
        (self.cache.hits, self.cache.misses)
    }

    /// Executes exactly one instruction (a REP string instruction runs all its iterations). An
    /// exception is returned, not delivered; RIP and RSP are left as they were before the
    /// instruction. The instruction count follows the rule on [`CpuState::icount`].
    pub fn step(&mut self, cpu: &mut CpuState, bus: &mut dyn CpuBus) -> Result<(), Exception> {
        let mut cx = Cx::new(cpu, bus, &mut self.cache, u64::MAX, false);
        let r = cx.step_one(false);
        cx.cpu.icount += 1;
        match r {
            Ok(()) => Ok(()),
            Err(Stop::Exc(e)) => Err(e),
        }
    }
}

impl<'a> Cx<'a> {
    /// The context for running `cpu` on `bus` until the instruction count reaches `budget_end`.
    /// With `debug`, the debug registers, TF and RF take effect (runs, not `Interpreter::step`).
    fn new(
        cpu: &'a mut CpuState,
        bus: &'a mut dyn CpuBus,
        cache: &'a mut DecodeCache,
        budget_end: u64,
        debug: bool,
    ) -> Self {
        let mode = cpu.mode();
        Cx {
            cpu,
            bus,
            cache,
            mode,
            sys_access: false,
            io_written: false,
            io_touched: false,
            any_io: false,
            code_written: false,
            mode_changed: false,
            budget_end,
            next_rip: 0,
            fetch_lin_page: u64::MAX,
            fetch_backing_page: 0,
            fetch_key_hi: 0,
            dbg_ss_loaded: false,
            dbg_soft_int: false,
            dbg_hits: 0,
            dbg_deferred: 0,
            dbg_enabled: debug,
            dbg_live: false,
            dbg_step: false,
            dbg_budget_end: budget_end,
            ac_active: false,
        }
    }

    /// The bus for a port or MMIO access, with its clock brought to the current instruction.
    #[inline]
    pub(crate) fn io_bus(&mut self) -> &mut dyn CpuBus {
        self.io_touched = true;
        self.any_io = true;
        self.bus.advance_clock(self.cpu.icount);
        &mut *self.bus
    }

    /// Fetches and decodes the instruction at CS:RIP.
    #[inline(always)]
    fn fetch(&mut self) -> Result<*const Decoded, Exception> {
        // Hot path: same code page as the previous hot-path instruction, decoded already.
        let rip = self.cpu.rip;
        let lin = if self.mode == CpuMode::Long64 {
            rip
        } else {
            let cs = &self.cpu.seg[SegReg::Cs as usize];
            if rip > u64::from(cs.limit) {
                return self.fetch_slow();
            }
            cs.base.wrapping_add(rip) & 0xFFFF_FFFF
        };
        if lin & PAGE_MASK == self.fetch_lin_page {
            let b = self.fetch_backing_page | (lin & 0xFFF);
            let key = b | self.fetch_key_hi;
            let slot = DecodeCache::slot(b);
            let e = self.cache.tags[slot];
            if e.0 == key && e.1 == rip {
                self.cache.hits += 1;
                // SAFETY: `slot < CACHE_ENTRIES`, inside the cache's instruction buffer.
                return Ok(unsafe { self.cache.instrs.add(slot) });
            }
        }
        self.fetch_slow()
    }

    /// The debug and alignment-check work at the start of an instruction (rare: kept out of
    /// the fetch path).
    #[cold]
    #[inline(never)]
    fn fetch_hooks(&mut self) -> Result<(), Exception> {
        if self.debug_wanted() {
            self.debug_before()?;
        }
        self.update_alignment_checking();
        Ok(())
    }

    /// Fetch through segmentation and the TLB, decoding on a miss.
    #[inline(never)]
    fn fetch_slow(&mut self) -> Result<*const Decoded, Exception> {
        if self.debug_wanted() || self.ac_active || self.cpu.cr0 & crate::state::cr::CR0_AM != 0 {
            self.fetch_hooks()?;
        }
        let rip = self.cpu.rip;
        let cs = self.cpu.seg[SegReg::Cs as usize];
        let lin = match self.mode {
            CpuMode::Long64 => rip,
            CpuMode::Real => cs.base.wrapping_add(rip) & 0xFFFF_FFFF,
            _ => {
                if rip > u64::from(cs.limit) {
                    return Err(Exception::GeneralProtection(0));
                }
                cs.base.wrapping_add(rip) & 0xFFFF_FFFF
            }
        };
        let bitness = self.mode.bitness();
        let user = self.cpu.cpl == 3;
        // The page of the previous fetch needs no TLB lookup: only instructions that do not
        // keep it (they reset `fetch_lin_page`) can change the mapping, the mode or the CPL.
        let hit = if lin & PAGE_MASK == self.fetch_lin_page {
            Some(self.fetch_backing_page | (lin & 0xFFF))
        } else {
            let r = self.cpu.tlb.lookup(user, TlbAccess::Exec, lin, 1);
            if let Some(b) = r {
                self.fetch_lin_page = lin & PAGE_MASK;
                self.fetch_backing_page = b & PAGE_MASK;
                self.fetch_key_hi = (u64::from(bitness) << 56) | KEY_VALID | self.cache.gen_bits(b);
            }
            r
        };
        if let Some(b) = hit {
            let key = b | (u64::from(bitness) << 56) | KEY_VALID | self.cache.gen_bits(b);
            let slot = DecodeCache::slot(b);
            let e = self.cache.tags[slot];
            if e.0 == key && e.1 == rip {
                self.cache.hits += 1;
                // SAFETY: `slot < CACHE_ENTRIES`, inside the cache's instruction buffer.
                return Ok(unsafe { self.cache.instrs.add(slot) });
            }
            if (lin & 0xFFF) <= 0x1000 - 15 {
                let mem = self.bus.memory();
                let bytes = mem.backing().get(b as usize..b as usize + 15);
                if let Some(bytes) = bytes {
                    let mut instr = Instruction::default();
                    let mut dec = Decoder::with_ip(bitness, bytes, rip, DecoderOptions::NONE);
                    dec.decode_out(&mut instr);
                    self.cache.misses += 1;
                    if instr.is_invalid() {
                        log::debug!("invalid opcode at {:#x}: {:02x?}", rip, &bytes[..bytes.len().min(15)]);
                        return Err(Exception::InvalidOpcode);
                    }
                    wrap_next_ip(&mut instr, bitness);
                    if mem.mark_code_range(b, instr.len() as u64) {
                        self.cpu.tlb.protect_backing_page(b & PAGE_MASK);
                    }
                    self.cache.tags[slot] = (key, rip);
                    self.cache.used = true;
                    return Ok(self.cache.put(slot, &instr));
                }
            }
        }
        // An instruction crossing the page end, decoded before (see `Straddler`): both pages
        // must still map where they did (no walk here: a TLB miss takes the slow path).
        let in_page = (0x1000 - (lin & 0xFFF)).min(15) as usize;
        let next_page = (lin & PAGE_MASK).wrapping_add(0x1000);
        let b2 = match hit {
            Some(_) if in_page < 15 => self.cpu.tlb.lookup(user, TlbAccess::Exec, next_page, 1),
            _ => None,
        };
        if let (Some(b1), Some(b2)) = (hit, b2) {
            let slot = DecodeCache::straddler_slot(lin);
            let s = &self.cache.straddlers[slot];
            if s.bitness == bitness
                && s.lin == lin
                && s.rip == rip
                && s.b1 == b1
                && s.b2 == b2
                && s.gen1 == self.cache.gen_bits(b1)
                && s.gen2 == self.cache.gen_bits(b2)
            {
                self.cache.hits += 1;
                return Ok(&s.decoded);
            }
        }
        // Slow path: near a page end, or the TLB has no entry yet. The bytes up to the end of
        // the page first: an instruction that ends there must not touch the next page (a walk
        // of it would set its accessed bit; the JIT, which decodes within the page, does not).
        let mut bytes = [0u8; 15];
        let (mut n, mut fault) = self.fetch_bytes_upto(lin, &mut bytes, in_page);
        let mut instr = Instruction::default();
        let mut dec = Decoder::with_ip(bitness, &bytes[..n], rip, DecoderOptions::NONE);
        dec.decode_out(&mut instr);
        if instr.is_invalid() && n == in_page && in_page < 15 && dec.last_error() == DecoderError::NoMoreBytes {
            (n, fault) = self.fetch_bytes(lin, &mut bytes);
            dec = Decoder::with_ip(bitness, &bytes[..n], rip, DecoderOptions::NONE);
            dec.decode_out(&mut instr);
        }
        if instr.is_invalid() {
            if dec.last_error() == DecoderError::NoMoreBytes {
                if let Some(f) = fault {
                    return Err(f);
                }
            }
            log::debug!("invalid opcode at {:#x}: {:02x?}", rip, &bytes[..n]);
            return Err(Exception::InvalidOpcode);
        }
        wrap_next_ip(&mut instr, bitness);
        let len = instr.len();
        if len > in_page {
            // It crosses the page end: keep it (its bytes marked as code in both pages, so a
            // write to either part moves that page's bank to a new generation).
            let b1 = hit.or_else(|| self.cpu.tlb.lookup(user, TlbAccess::Exec, lin, 1));
            let b2 = self.cpu.tlb.lookup(user, TlbAccess::Exec, next_page, 1);
            if let (Some(b1), Some(b2)) = (b1, b2) {
                let mem = self.bus.memory();
                for (b, n) in [(b1, in_page), (b2, len - in_page)] {
                    if mem.mark_code_range(b, n as u64) {
                        self.cpu.tlb.protect_backing_page(b & PAGE_MASK);
                    }
                }
                let slot = DecodeCache::straddler_slot(lin);
                self.cache.straddlers[slot] = Straddler {
                    lin,
                    rip,
                    bitness,
                    b1,
                    b2,
                    gen1: self.cache.gen_bits(b1),
                    gen2: self.cache.gen_bits(b2),
                    decoded: Decoded { instr, fast: fast::predecode(&instr) },
                };
                self.cache.used = true;
                return Ok(&self.cache.straddlers[slot].decoded);
            }
        }
        Ok(self.cache.put(CACHE_ENTRIES, &instr))
    }

    /// Fetches and executes one instruction. On an exception, RIP and RSP are restored.
    #[inline(always)]
    pub(crate) fn step_one(&mut self, trace: bool) -> Result<(), Stop> {
        let rip = self.cpu.rip;
        let rsp = self.cpu.gpr[4];
        let r = match self.fetch() {
            Ok(p) => {
                // SAFETY: `p` points into the decode cache's instruction buffer, which lives as
                // long as `self.cache`. Only `DecodeCache::put` (called from `fetch` alone) writes
                // that buffer, and nothing executed below fetches, so the instruction stays
                // unchanged while it executes; invalidation only touches the tags.
                let d: &Decoded = unsafe { &*p };
                // Every byte of the instruction must lie within the CS limit (real mode
                // included: IP 0xFFFF plus a 2-byte instruction is #GP, not IP 0x10001).
                if self.mode != CpuMode::Long64
                    && rip + d.instr.len() as u64 - 1 > u64::from(self.cpu.seg[SegReg::Cs as usize].limit)
                {
                    Err(Stop::Exc(Exception::GeneralProtection(0)))
                } else {
                    if trace {
                        trace_instr(self.cpu, &d.instr);
                    }
                    self.next_rip = d.instr.next_ip();
                    if !d.fast.keeps_fetch_page {
                        self.fetch_lin_page = u64::MAX;
                    }
                    self.exec_fast(&d.instr, &d.fast)
                }
            }
            Err(e) => Err(Stop::Exc(e)),
        };
        if r.is_err() {
            self.fetch_lin_page = u64::MAX;
            self.cpu.rip = rip;
            self.cpu.gpr[4] = rsp;
        }
        if self.mode_changed {
            self.mode_changed = false;
            self.mode = self.cpu.mode();
            // Only a flag goes in and an exception comes out: passing `r` itself would make it
            // a 16-byte memory copy on the hot path (a failed store-to-load forward per step).
            if self.dbg_live {
                if let Some(e) = self.debug_after(r.is_ok()) {
                    return Err(Stop::Exc(e));
                }
            }
        }
        r
    }

    /// Delivers an exception, escalating to #DF and reporting a triple fault (SDM 6.15).
    pub(crate) fn raise(&mut self, first: Exception) -> Result<(), ()> {
        let mut exc = first;
        for _ in 0..3 {
            if let Exception::PageFault { addr, .. } = exc {
                self.cpu.cr2 = addr;
            }
            // Fault-class exceptions push RF = 1 so the IRET does not hit an instruction
            // breakpoint again; a #DB pushes RF as it is (SDM 17.3.1.1). The exceptions raised
            // here are faults (traps are delivered by the instructions themselves), except
            // #DB, whose general-detect fault sets RF itself.
            if exc != Exception::Debug && exc != Exception::DoubleFault {
                self.cpu.rflags |= rflags::RF;
            }
            let r = self.deliver(exc.vector(), system::IntKind::Exception, self.cpu.rip, exc.error_code());
            self.mode = self.cpu.mode();
            match r {
                Ok(()) => return Ok(()),
                Err(next) => {
                    if exc == Exception::DoubleFault {
                        return Err(());
                    }
                    let is_pf = |e: &Exception| matches!(e, Exception::PageFault { .. });
                    let df = (exc.is_contributory() && next.is_contributory())
                        || (is_pf(&exc) && (is_pf(&next) || next.is_contributory()));
                    exc = if df { Exception::DoubleFault } else { next };
                }
            }
        }
        Err(())
    }
}

impl Cx<'_> {
    /// At the start of a run: takes an NMI from the bus and delivers it as vector 2, whatever
    /// EFLAGS.IF says (SDM 6.7.1). While NMIs are blocked (an NMI handler has not executed IRET
    /// yet) the NMI stays latched in the bus, whose stop request ends runs after device
    /// accesses; the handler's IRET ends the run too (`io_written`), and the next run delivers
    /// it. `Ok(true)`: an NMI waits behind MOV SS/POP SS, so the run executes one instruction
    /// only. Nothing of this is on the per-instruction path.
    #[cold]
    #[inline(never)]
    fn service_nmi(&mut self) -> Result<bool, ()> {
        if self.cpu.nmi_blocked {
            return Ok(false);
        }
        if self.bus.take_nmi() {
            self.cpu.nmi_pending = true;
        }
        if !self.cpu.nmi_pending {
            return Ok(false);
        }
        if self.cpu.interrupt_shadow {
            return Ok(true);
        }
        self.cpu.nmi_pending = false;
        self.cpu.nmi_blocked = true;
        self.cpu.halted = false;
        self.fetch_lin_page = u64::MAX;
        let rip = self.cpu.rip;
        if let Err(e) = self.deliver(2, system::IntKind::External, rip, None) {
            self.raise(e)?;
        }
        self.mode = self.cpu.mode();
        Ok(false)
    }

    /// The run loop, specialized on tracing so the untraced loop carries no trace checks.
    fn run_loop<const TRACE: bool>(&mut self, end: u64) -> RunExit {
        while self.cpu.icount < end {
            if let Some(x) = self.run_one::<TRACE>() {
                return x;
            }
        }
        RunExit::BudgetExhausted
    }

    /// One step of the run loop: take a pending interrupt (counts 0), then execute one
    /// instruction or one REP iteration (counts 1, faulting or not). `Some` ends the run.
    #[inline(always)]
    pub(crate) fn run_one<const TRACE: bool>(&mut self) -> Option<RunExit> {
        // External interrupts are taken between instructions.
        if self.cpu.rflags & rflags::IF != 0 && !self.cpu.interrupt_shadow && self.cpu.irq_pending {
            let ack = self.bus.acknowledge_interrupt();
            self.cpu.irq_pending = self.bus.interrupt_pending();
            if let Some(v) = ack {
                self.cpu.halted = false;
                self.fetch_lin_page = u64::MAX;
                let rip = self.cpu.rip;
                if let Err(e) = self.deliver(v, system::IntKind::External, rip, None) {
                    if self.raise(e).is_err() {
                        return Some(RunExit::TripleFault);
                    }
                }
                self.mode = self.cpu.mode();
            }
        }
        self.cpu.interrupt_shadow = false;
        if self.cpu.halted {
            return Some(RunExit::Halted);
        }
        match self.step_one(TRACE) {
            Ok(()) => {}
            Err(Stop::Exc(e)) => {
                if self.raise(e).is_err() {
                    self.cpu.icount += 1;
                    return Some(RunExit::TripleFault);
                }
            }
        }
        self.cpu.icount += 1;
        if self.io_touched {
            self.io_touched = false;
            self.cpu.irq_pending = self.bus.interrupt_pending();
        }
        if self.io_written {
            self.io_written = false;
            // A device may have remapped memory (ROM shadowing, A20): translate again.
            self.fetch_lin_page = u64::MAX;
            if self.bus.stop_requested() {
                self.cpu.stop_requested = true;
                return Some(RunExit::Stopped);
            }
        }
        None
    }
}

/// The IP after an instruction wraps at the code size: 16-bit code continues at IP 0 after an
/// instruction that ends at 0xFFFF, 32-bit code at EIP 0 after 0xFFFF_FFFF.
fn wrap_next_ip(instr: &mut Instruction, bitness: u32) {
    match bitness {
        16 => instr.set_next_ip(instr.next_ip() & 0xFFFF),
        32 => instr.set_next_ip(instr.next_ip() & 0xFFFF_FFFF),
        _ => {}
    }
}

fn trace_instr(cpu: &CpuState, instr: &Instruction) {
    use iced_x86::{Formatter, IntelFormatter};
    let mut f = IntelFormatter::new();
    let mut s = String::new();
    f.format(instr, &mut s);
    let cs = cpu.seg[SegReg::Cs as usize].selector;
    eprintln!(
        "{:>10} {:04x}:{:016x} {:<40} rax={:x} rbx={:x} rcx={:x} rdx={:x} rsp={:x} fl={:x}",
        cpu.icount,
        cs,
        cpu.rip,
        s,
        cpu.gpr[0],
        cpu.gpr[3],
        cpu.gpr[1],
        cpu.gpr[2],
        cpu.gpr[4],
        cpu.rflags()
    );
}

impl ExecutionEngine for Interpreter {
    /// The start of a run, which every engine must reproduce call for call (a bus may answer
    /// differently the second time it is asked, and the hostile tests' noisy bus does):
    /// 1. `budget_end = icount + budget`;
    /// 2. `irq_pending = bus.interrupt_pending()`: exactly one poll;
    /// 3. `stop_requested = false`, mode key refreshed;
    /// 4. unless NMIs are blocked, `bus.take_nmi()`; a latched NMI is delivered now (counts 0),
    ///    or, if an interrupt shadow (MOV SS, POP SS, STI) holds it back, the run ends after
    ///    one instruction so that the next run delivers it.
    ///
    /// So a zero-budget run executes nothing but is not a no-op: it polls the bus (steps 2
    /// and 4) and may deliver an NMI. Calling it at the start of every JIT run put one extra
    /// `interrupt_pending` poll into each run, which shifted the noisy bus's answers (port
    /// reads, interrupt vectors) and made hostile streams diverge; the JIT calls
    /// [`Interpreter::service_nmi_for_jit`] (step 4 only) instead.
    fn run(&mut self, cpu: &mut CpuState, bus: &mut dyn CpuBus, budget: base::InstrCount) -> RunExit {
        let end = cpu.icount.saturating_add(budget);
        cpu.budget_end = end;
        cpu.irq_pending = bus.interrupt_pending();
        cpu.stop_requested = false;
        cpu.refresh_mode_key();
        let trace = self.trace;
        let mut cx = Cx::new(cpu, bus, &mut self.cache, end, true);
        let end = match cx.service_nmi() {
            Err(()) => return RunExit::TripleFault,
            Ok(true) => end.min(cx.cpu.icount + 1),
            Ok(false) => end,
        };
        if trace {
            cx.run_loop::<true>(end)
        } else {
            cx.run_loop::<false>(end)
        }
    }

    fn invalidate_phys(&mut self, start: u64, len: u64) {
        // Backing offsets equal physical addresses only for low RAM; drop everything to be safe.
        let _ = (start, len);
        self.cache.clear();
    }

    fn flush_for_mode_change(&mut self, cpu: &mut CpuState) {
        cpu.tlb.flush_all();
    }

    fn name(&self) -> &'static str {
        "interp"
    }

    fn stats_text(&self) -> Option<String> {
        let (hits, misses) = self.decode_stats();
        Some(format!("decode cache hits: {hits}\ndecode cache misses: {misses}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A straddler decoded from a page whose bank then went through 65,536 invalidations (its
    /// generation wrapped back to the one it carries) must not match again: the wrap clears it,
    /// as it clears the bank's tags.
    #[test]
    fn test_generation_wrap_clears_straddlers_of_the_bank() {
        let mut c = DecodeCache::new();
        let (b1, b2) = (0x3FFE, 0x7000);
        let slot = DecodeCache::straddler_slot(0x3FFE);
        c.straddlers[slot] = Straddler {
            lin: 0x3FFE,
            rip: 0x3FFE,
            bitness: 32,
            b1,
            b2,
            gen1: c.gen_bits(b1),
            gen2: c.gen_bits(b2),
            decoded: Decoded { instr: Instruction::default(), fast: Fast::default() },
        };
        let other = DecodeCache::straddler_slot(0x5FFE);
        c.straddlers[other] = Straddler { lin: 0x5FFE, rip: 0x5FFE, b1: 0x5FFE, b2: 0x6000, ..c.straddlers[slot] };
        for _ in 0..0x1_0000 {
            c.invalidate_page(b1 & PAGE_MASK);
        }
        assert_eq!(c.gen_bits(b1), c.straddlers[slot].gen1, "the generation wrapped to the straddler's");
        assert_eq!(c.straddlers[slot].bitness, 0, "the wrap cleared the straddler");
        assert_eq!(c.straddlers[other].bitness, 32, "a straddler of other banks stays");
    }
}
