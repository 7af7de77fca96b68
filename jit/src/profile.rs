//! A profile of the instructions generated code hands to the interpreter (`FERRO_JIT_PROFILE=1`):
//! one counter per instruction form (mnemonic and operand shapes, e.g. `movzx r32, m8`), bumped
//! by the generated code right before its helper call. With the variable unset nothing is
//! emitted, so the profile costs nothing when off.

use iced_x86::{Instruction, OpKind, Register};
use std::collections::HashMap;
use std::fmt::Write;

/// Distinct instruction forms counted; later forms share the last counter.
const SLOTS: usize = 4096;

/// The counters and their names.
#[derive(Debug)]
pub(crate) struct Profile {
    /// Heap-allocated once: generated code holds the counters' addresses, which must not move
    /// while the profile lives (the translator owns both the profile and the code).
    counts: Box<[u64]>,
    names: Vec<String>,
    index: HashMap<String, usize>,
}

impl Profile {
    /// A profile if `FERRO_JIT_PROFILE` is set to something other than `0`.
    pub(crate) fn from_env() -> Option<Profile> {
        match std::env::var("FERRO_JIT_PROFILE") {
            Ok(v) if !v.is_empty() && v != "0" => Some(Profile::new()),
            _ => None,
        }
    }

    pub(crate) fn new() -> Profile {
        Profile { counts: vec![0; SLOTS].into_boxed_slice(), names: Vec::new(), index: HashMap::new() }
    }

    /// The address of the counter for `i` served by a helper; `slow` marks the slow path of an
    /// inline instruction (a soft-TLB miss) rather than an instruction with no inline form.
    pub(crate) fn counter(&mut self, i: &Instruction, slow: bool) -> *mut u64 {
        let key = form(i, slow);
        let n = self.names.len();
        let slot = match self.index.get(&key) {
            Some(&s) => s,
            None if n < SLOTS - 1 => {
                self.index.insert(key.clone(), n);
                self.names.push(key);
                n
            }
            None => {
                if n == SLOTS - 1 {
                    self.names.push("(other forms)".into());
                }
                SLOTS - 1
            }
        };
        // The slice is never reallocated (boxed, fixed length): the pointer stays valid as long
        // as the profile lives.
        &mut self.counts[slot] as *mut u64
    }

    /// The `top` most frequent forms with their counts, one a line, most frequent first.
    pub(crate) fn table(&self, top: usize) -> String {
        let mut rows: Vec<(u64, &str)> =
            self.names.iter().enumerate().map(|(i, n)| (self.counts[i], n.as_str())).filter(|r| r.0 > 0).collect();
        rows.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        let total: u64 = rows.iter().map(|r| r.0).sum();
        let mut s = format!("helper-served instructions by form (top {top} of {}, total {total}):", rows.len());
        for (c, n) in rows.iter().take(top) {
            let pct = *c as f64 * 100.0 / total.max(1) as f64;
            let _ = write!(s, "\n  {c:>12} {pct:5.1}%  {n}");
        }
        s
    }
}

fn reg_shape(r: Register) -> String {
    if r.is_gpr8() {
        if matches!(r, Register::AH | Register::CH | Register::DH | Register::BH) {
            "rh8".into()
        } else {
            "r8".into()
        }
    } else if r.is_gpr16() {
        "r16".into()
    } else if r.is_gpr32() {
        "r32".into()
    } else if r.is_gpr64() {
        "r64".into()
    } else if r.is_segment_register() {
        "sreg".into()
    } else {
        format!("{r:?}").to_lowercase()
    }
}

/// `mnemonic shape, shape` (with `rep`/`lock` and `[slow]` for a TLB-miss slow path).
fn form(i: &Instruction, slow: bool) -> String {
    let mut s = String::new();
    if slow {
        s.push_str("[slow] ");
    }
    if i.has_lock_prefix() {
        s.push_str("lock ");
    }
    if i.has_rep_prefix() || i.has_repe_prefix() {
        s.push_str("rep ");
    } else if i.has_repne_prefix() {
        s.push_str("repne ");
    }
    s.push_str(&format!("{:?}", i.mnemonic()).to_lowercase());
    for k in 0..i.op_count() {
        s.push_str(if k == 0 { " " } else { ", " });
        let shape = match i.op_kind(k) {
            OpKind::Register => reg_shape(i.op_register(k)),
            OpKind::Memory => {
                let seg = if matches!(i.memory_segment(), Register::FS | Register::GS) {
                    format!("{:?}:", i.memory_segment()).to_lowercase()
                } else {
                    String::new()
                };
                format!("{seg}m{}", i.memory_size().size() * 8)
            }
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => "rel".into(),
            OpKind::FarBranch16 | OpKind::FarBranch32 => "far".into(),
            OpKind::MemorySegSI
            | OpKind::MemorySegESI
            | OpKind::MemorySegRSI
            | OpKind::MemorySegDI
            | OpKind::MemorySegEDI
            | OpKind::MemorySegRDI
            | OpKind::MemoryESDI
            | OpKind::MemoryESEDI
            | OpKind::MemoryESRDI => format!("m{}", i.memory_size().size() * 8),
            _ => "imm".into(),
        };
        s.push_str(&shape);
    }
    s
}
