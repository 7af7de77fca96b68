//! Lockstep: two identical machines, one per engine, run side by side in equal slices; after
//! every slice their CPU state, memory, console output and exit must be equal. Everything a
//! guest sees is deterministic (virtual time is the instruction count), so any difference is an
//! engine bug. On a difference, both machines are rebuilt and re-run to the start of the
//! divergent slice, then stepped one instruction at a time to name the first divergent
//! instruction.

use crate::{EngineKind, Exit, Machine};
use cpu::CpuState;

/// Where two engines first disagreed.
#[derive(Debug, Clone)]
pub struct Divergence {
    /// Instructions both had executed identically before the divergent one (by the reference).
    pub icount: u64,
    /// What differs (state, memory, output, exit).
    pub what: String,
    /// The reference engine's state after the divergent instruction.
    pub reference: String,
    /// The other engine's state after the divergent instruction.
    pub other: String,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "engines diverge at instruction {}: {}", self.icount, self.what)?;
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
    /// Slices compared.
    pub comparisons: u64,
    /// What the guest wrote to its console (COM1 and the debug console; the machines must
    /// capture it).
    pub serial: Vec<u8>,
}

/// The architectural state as text, for comparison and printing (caches and engine bookkeeping
/// such as the TLB, the budget and the mode key are left out).
pub fn arch_state(c: &CpuState) -> String {
    format!(
        "icount={} rip={:#x} rflags={:#x} gpr={:x?} seg={:x?} ldtr={:x?} tr={:x?} gdtr={:x?} idtr={:x?} \
         cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} cr8={:#x} efer={:#x} dr={:x?} msr={:x?} cpl={} halted={} \
         shadow={} irq_pending={} fpu={:x?}",
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
        c.msr,
        c.cpl,
        c.halted,
        c.interrupt_shadow,
        c.irq_pending,
        c.fpu
    )
}

/// The first difference between two machines, if any.
fn compare(a: &mut Machine, b: &mut Machine, ea: Option<Exit>, eb: Option<Exit>) -> Option<String> {
    if ea != eb {
        return Some(format!("exit {ea:?} vs {eb:?}"));
    }
    let (sa, sb) = (arch_state(a.cpu()), arch_state(b.cpu()));
    if sa != sb {
        return Some("CPU state".into());
    }
    if a.serial_output() != b.serial_output() || a.firmware_log() != b.firmware_log() {
        return Some("console output".into());
    }
    let ma = a.memory().backing();
    let mb = b.memory().backing();
    if ma != mb {
        let first = ma.iter().zip(mb).position(|(x, y)| x != y).unwrap_or(0);
        return Some(format!("memory (first differing backing byte {first:#x})"));
    }
    None
}

/// Runs `build(EngineKind::Interp)` and `build(EngineKind::Jit)` side by side in slices of
/// `slice` instructions until the guest exits or `max_insns` have run, comparing after every
/// slice. The builder must make identical machines (same images, no host input).
pub fn run_lockstep<E>(
    build: &dyn Fn(EngineKind) -> Result<Machine, E>,
    max_insns: Option<u64>,
    slice: u64,
) -> Result<Result<LockstepReport, Divergence>, E> {
    let slice = slice.max(1);
    let mut a = build(EngineKind::Interp)?;
    let mut b = build(EngineKind::Jit)?;
    let mut comparisons = 0;
    loop {
        let start = a.instructions();
        let mut n = slice;
        if let Some(m) = max_insns {
            n = n.min(m.saturating_sub(start));
            if n == 0 {
                let serial = a.serial_output();
                return Ok(Ok(LockstepReport {
                    exit: Exit::InstructionLimit,
                    instructions: start,
                    comparisons,
                    serial,
                }));
            }
        }
        let ea = a.run(Some(n));
        let eb = b.run(Some(n));
        comparisons += 1;
        let (ea, eb) = ((ea != Exit::InstructionLimit).then_some(ea), (eb != Exit::InstructionLimit).then_some(eb));
        if let Some(what) = compare(&mut a, &mut b, ea, eb) {
            let mut d = pinpoint(build, start, slice)?;
            if d.what.starts_with("a difference in the slice") {
                d.what = format!("{what} after the slice from {start}, which single steps do not reproduce");
            }
            return Ok(Err(d));
        }
        if let Some(e) = ea {
            let serial = a.serial_output();
            return Ok(Ok(LockstepReport { exit: e, instructions: a.instructions(), comparisons, serial }));
        }
    }
}

/// Re-runs both engines to `start` (in the same slices as before), then one instruction at a
/// time until they differ.
fn pinpoint<E>(build: &dyn Fn(EngineKind) -> Result<Machine, E>, start: u64, slice: u64) -> Result<Divergence, E> {
    let mut a = build(EngineKind::Interp)?;
    let mut b = build(EngineKind::Jit)?;
    while a.instructions() < start {
        let n = slice.min(start - a.instructions());
        a.run(Some(n));
        b.run(Some(n));
    }
    for _ in 0..slice.saturating_mul(2) {
        let at = a.instructions();
        let ea = a.run(Some(1));
        let eb = b.run(Some(1));
        let (ea, eb) = ((ea != Exit::InstructionLimit).then_some(ea), (eb != Exit::InstructionLimit).then_some(eb));
        if let Some(what) = compare(&mut a, &mut b, ea, eb) {
            return Ok(Divergence { icount: at, what, reference: arch_state(a.cpu()), other: arch_state(b.cpu()) });
        }
        if ea.is_some() {
            break;
        }
    }
    Ok(Divergence {
        icount: start,
        what: "a difference in the slice that single steps do not reproduce".into(),
        reference: arch_state(a.cpu()),
        other: arch_state(b.cpu()),
    })
}
