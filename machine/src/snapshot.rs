//! Whole-machine snapshots: the [`Persist`] implementation of [`Machine`] and the snapshot file.
//!
//! # File format (version 1.0, all integers little-endian)
//!
//! ```text
//! +--------------------------------------------------------------+
//! | magic "FVSNAPSH" (8) | major u16 | minor u16 | count u32      |  header, 20 bytes
//! | header CRC-32 u32 (of the 16 bytes before it)                 |
//! +--------------------------------------------------------------+
//! | tag [u8; 8] | length u64 | CRC-32 u32 | flags u32             |  one per section,
//! | payload (length bytes)                                        |  `count` times
//! +--------------------------------------------------------------+
//! ```
//!
//! The section CRC-32 covers the tag, the length, the flags and the payload. Sections (tags are ASCII,
//! NUL-padded):
//! - `CONFIG`: JSON [`SavedConfig`] (RAM size, no-reboot, RTC base);
//! - `CPU`: JSON [`CpuSnapshot`] (registers, MSRs, the FXSAVE image of the FPU as 512 bytes);
//! - `DEVICES`: JSON [`BoardState`] (every chip through its `Persist` state);
//! - `RAM`: the guest backing store, sparse: `len u64`, `page_size u32`, `runs u32`, then `runs`
//!   × (`first_page u64`, `pages u64`) of the non-zero pages, then the pages of every run
//!   concatenated and cut into chunks of at most 1 MiB, each `raw_len u32`, `kind u8` (0 stored,
//!   1 zlib), `stored_len u32`, data. Zero pages are not stored;
//! - `BIOS` (optional): the firmware image, raw;
//! - `DISKS` (optional): JSON list of [`DiskSnapshot`] (the frozen VMDK parents).
//!
//! Versioning: the major number changes when an older reader would misread a file; a reader
//! refuses any other major with [`SnapshotError::Version`]. Minor versions only add sections
//! (skipped by older readers) or JSON fields (`#[serde(default)]` in newer readers). A reader
//! never trusts a length: every section is bounds-checked against the file and its CRC checked
//! before it is parsed.

use crate::board::persist::BoardState;
use crate::{Machine, MachineConfig, MachineError};
use base::Persist;
use cpu::state::{DescriptorTable, Msrs, Segment};
use cpu::CpuState;

use flate2::Crc;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

pub use devices::BlockBackend;

/// The file's magic number.
pub const MAGIC: [u8; 8] = *b"FVSNAPSH";
/// Format major version written and read by this build.
pub const FORMAT_MAJOR: u16 = 1;
/// Format minor version written by this build.
pub const FORMAT_MINOR: u16 = 0;
/// Page granularity of the sparse RAM section.
pub const RAM_PAGE: usize = 4096;
/// Largest chunk of page data in the RAM section.
pub const RAM_CHUNK: usize = 1 << 20;
/// Largest file accepted (a cap against resource exhaustion by a crafted file).
pub const MAX_FILE_BYTES: u64 = 16 << 30;

/// Why a snapshot could not be written or read.
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// Reading or writing the file failed.
    #[error("snapshot file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the snapshot magic.
    #[error("not a Ferrovisor snapshot (bad magic number)")]
    BadMagic,
    /// A format version this build cannot read.
    #[error("snapshot format version {major}.{minor} is not supported (this build reads {FORMAT_MAJOR}.x)")]
    Version {
        /// Major version in the file.
        major: u16,
        /// Minor version in the file.
        minor: u16,
    },
    /// The file ends early.
    #[error("snapshot is truncated: {0}")]
    Truncated(String),
    /// A checksum does not match.
    #[error("snapshot is corrupt: checksum mismatch in {0}")]
    Checksum(String),
    /// A section's content is malformed.
    #[error("snapshot is corrupt: section {section}: {reason}")]
    Malformed {
        /// The section tag.
        section: String,
        /// What is wrong.
        reason: String,
    },
    /// A required section is missing.
    #[error("snapshot is incomplete: no {0} section")]
    Missing(&'static str),
    /// The saved machine cannot be rebuilt here.
    #[error("cannot rebuild the saved machine: {0}")]
    Machine(#[from] MachineError),
    /// A disk could not be snapshotted or reattached.
    #[error("disk {index}: {reason}")]
    Disk {
        /// IDE index.
        index: usize,
        /// What went wrong.
        reason: String,
    },
}

impl From<devices::IdeError> for SnapshotError {
    fn from(e: devices::IdeError) -> Self {
        SnapshotError::Disk { index: usize::MAX, reason: e.to_string() }
    }
}

/// The machine configuration a snapshot carries (guest-visible; host-side options such as where
/// the console goes come from whoever restores).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedConfig {
    /// Guest RAM in bytes.
    pub ram_bytes: u64,
    /// Reset ends the run.
    pub no_reboot: bool,
    /// Unix time of the RTC at virtual time 0.
    pub rtc_unix_seconds: i64,
}

/// A segment register as saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentSnapshot {
    /// Selector.
    pub selector: u16,
    /// Attributes.
    pub attr: u16,
    /// Limit.
    pub limit: u32,
    /// Base.
    pub base: u64,
}

impl From<Segment> for SegmentSnapshot {
    fn from(s: Segment) -> Self {
        SegmentSnapshot { selector: s.selector, attr: s.attr, limit: s.limit, base: s.base }
    }
}

impl From<SegmentSnapshot> for Segment {
    fn from(s: SegmentSnapshot) -> Self {
        Segment { selector: s.selector, attr: s.attr, limit: s.limit, base: s.base }
    }
}

/// The model-specific registers as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsrSnapshot {
    /// IA32_STAR, LSTAR, CSTAR, FMASK.
    pub star: [u64; 4],
    /// IA32_KERNEL_GS_BASE.
    pub kernel_gs_base: u64,
    /// SYSENTER CS, ESP, EIP.
    pub sysenter: [u64; 3],
    /// IA32_APIC_BASE.
    pub apic_base: u64,
    /// IA32_PAT.
    pub pat: u64,
    /// IA32_MISC_ENABLE.
    pub misc_enable: u64,
    /// TSC offset.
    pub tsc_offset: u64,
    /// IA32_TSC_AUX.
    pub tsc_aux: u64,
    /// MTRR default type.
    pub mtrr_def_type: u64,
    /// Variable MTRRs.
    pub mtrr_var: Vec<u64>,
    /// Fixed MTRRs.
    pub mtrr_fixed: Vec<u64>,
}

/// The CPU as saved: built field by field from [`CpuState`]'s public fields, so the file does not
/// change when the in-memory layout does. Caches (the soft TLB, lazy-flag bookkeeping) are not
/// state: RFLAGS is saved evaluated and the TLB starts empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuSnapshot {
    /// RAX..R15.
    pub gpr: Vec<u64>,
    /// RIP.
    pub rip: u64,
    /// RFLAGS, evaluated.
    pub rflags: u64,
    /// ES, CS, SS, DS, FS, GS.
    pub seg: Vec<SegmentSnapshot>,
    /// LDTR.
    pub ldtr: SegmentSnapshot,
    /// TR.
    pub tr: SegmentSnapshot,
    /// GDTR (base, limit).
    pub gdtr: (u64, u16),
    /// IDTR (base, limit).
    pub idtr: (u64, u16),
    /// CR0, CR2, CR3, CR4, CR8.
    pub cr: [u64; 5],
    /// IA32_EFER.
    pub efer: u64,
    /// DR0..DR7.
    pub dr: Vec<u64>,
    /// MSRs.
    pub msr: MsrSnapshot,
    /// CPL.
    pub cpl: u8,
    /// Halted by HLT.
    pub halted: bool,
    /// STI/MOV SS shadow.
    pub interrupt_shadow: bool,
    /// Instructions retired.
    pub icount: u64,
    /// The x87/SSE state as a 512-byte FXSAVE image (Intel SDM Vol. 1, Table 10-2).
    pub fxsave: Vec<u8>,
}

/// The FXSAVE image of the FPU state (the layout the FPU state is moving to).
fn fxsave_image(f: &cpu::state::FpuState) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[0..2].copy_from_slice(&f.fcw.to_le_bytes());
    b[2..4].copy_from_slice(&f.fsw.to_le_bytes());
    b[4] = f.ftw;
    b[24..28].copy_from_slice(&f.mxcsr.to_le_bytes());
    b[28..32].copy_from_slice(&0xFFFFu32.to_le_bytes()); // MXCSR_MASK
    for (i, st) in f.st.iter().enumerate() {
        b[32 + 16 * i..48 + 16 * i].copy_from_slice(st);
    }
    for (i, x) in f.xmm.iter().enumerate() {
        b[160 + 16 * i..176 + 16 * i].copy_from_slice(x);
    }
    b
}

/// The FPU state from an FXSAVE image.
#[allow(clippy::field_reassign_with_default)] // one line per FXSAVE field, in layout order
fn fpu_from_image(b: &[u8]) -> Option<cpu::state::FpuState> {
    if b.len() != 512 {
        return None;
    }
    let mut f = cpu::state::FpuState::default();
    f.fcw = u16::from_le_bytes([b[0], b[1]]);
    f.fsw = u16::from_le_bytes([b[2], b[3]]);
    f.ftw = b[4];
    f.mxcsr = u32::from_le_bytes([b[24], b[25], b[26], b[27]]);
    for (i, st) in f.st.iter_mut().enumerate() {
        st.copy_from_slice(&b[32 + 16 * i..48 + 16 * i]);
    }
    for (i, x) in f.xmm.iter_mut().enumerate() {
        x.copy_from_slice(&b[160 + 16 * i..176 + 16 * i]);
    }
    Some(f)
}

impl CpuSnapshot {
    /// The snapshot of `c`.
    pub fn of(c: &CpuState) -> Self {
        let m = &c.msr;
        CpuSnapshot {
            gpr: c.gpr.to_vec(),
            rip: c.rip,
            rflags: c.rflags(),
            seg: c.seg.iter().map(|&s| s.into()).collect(),
            ldtr: c.ldtr.into(),
            tr: c.tr.into(),
            gdtr: (c.gdtr.base, c.gdtr.limit),
            idtr: (c.idtr.base, c.idtr.limit),
            cr: [c.cr0, c.cr2, c.cr3, c.cr4, c.cr8],
            efer: c.efer,
            dr: c.dr.to_vec(),
            msr: MsrSnapshot {
                star: [m.star, m.lstar, m.cstar, m.sfmask],
                kernel_gs_base: m.kernel_gs_base,
                sysenter: [m.sysenter_cs, m.sysenter_esp, m.sysenter_eip],
                apic_base: m.apic_base,
                pat: m.pat,
                misc_enable: m.misc_enable,
                tsc_offset: m.tsc_offset,
                tsc_aux: m.tsc_aux,
                mtrr_def_type: m.mtrr_def_type,
                mtrr_var: m.mtrr_var.to_vec(),
                mtrr_fixed: m.mtrr_fixed.to_vec(),
            },
            cpl: c.cpl,
            halted: c.halted,
            interrupt_shadow: c.interrupt_shadow,
            icount: c.icount,
            fxsave: fxsave_image(&c.fpu),
        }
    }

    /// The CPU state this snapshot describes (fields this build does not save keep their
    /// reset values).
    pub fn to_state(&self) -> Result<CpuState, String> {
        fn arr<const N: usize>(v: &[u64], what: &str) -> Result<[u64; N], String> {
            v.try_into().map_err(|_| format!("{what}: {} values, expected {N}", v.len()))
        }
        let mut c = CpuState::new();
        c.gpr = arr(&self.gpr, "gpr")?;
        c.rip = self.rip;
        c.set_rflags(self.rflags);
        if self.seg.len() != 6 {
            return Err(format!("seg: {} segments, expected 6", self.seg.len()));
        }
        for (d, s) in c.seg.iter_mut().zip(&self.seg) {
            *d = (*s).into();
        }
        c.ldtr = self.ldtr.into();
        c.tr = self.tr.into();
        c.gdtr = DescriptorTable { base: self.gdtr.0, limit: self.gdtr.1 };
        c.idtr = DescriptorTable { base: self.idtr.0, limit: self.idtr.1 };
        [c.cr0, c.cr2, c.cr3, c.cr4, c.cr8] = self.cr;
        c.efer = self.efer;
        c.dr = arr(&self.dr, "dr")?;
        let m = &self.msr;
        let msr: &mut Msrs = &mut c.msr;
        [msr.star, msr.lstar, msr.cstar, msr.sfmask] = m.star;
        msr.kernel_gs_base = m.kernel_gs_base;
        [msr.sysenter_cs, msr.sysenter_esp, msr.sysenter_eip] = m.sysenter;
        msr.apic_base = m.apic_base;
        msr.pat = m.pat;
        msr.misc_enable = m.misc_enable;
        msr.tsc_offset = m.tsc_offset;
        msr.tsc_aux = m.tsc_aux;
        msr.mtrr_def_type = m.mtrr_def_type;
        msr.mtrr_var = arr(&m.mtrr_var, "mtrr_var")?;
        msr.mtrr_fixed = arr(&m.mtrr_fixed, "mtrr_fixed")?;
        if self.cpl > 3 {
            return Err(format!("cpl {}", self.cpl));
        }
        c.cpl = self.cpl;
        c.halted = self.halted;
        c.interrupt_shadow = self.interrupt_shadow;
        c.icount = self.icount;
        c.fpu =
            fpu_from_image(&self.fxsave).ok_or_else(|| format!("fxsave: {} bytes, expected 512", self.fxsave.len()))?;
        Ok(c)
    }
}

/// Guest RAM (the whole backing store), sparse and compressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RamSnapshot {
    /// Bytes of backing store.
    pub len: u64,
    /// Runs of non-zero pages: (first page, page count).
    pub runs: Vec<(u64, u64)>,
    /// The pages of every run, concatenated, as chunks (stored or zlib-compressed).
    pub compressed: Vec<u8>,
}

fn page_is_zero(p: &[u8]) -> bool {
    let (pre, mid, post) = {
        // SAFETY: every bit pattern is a valid u64; align_to only reinterprets the aligned middle.
        unsafe { p.align_to::<u64>() }
    };
    pre.iter().all(|&b| b == 0) && mid.iter().all(|&w| w == 0) && post.iter().all(|&b| b == 0)
}

impl RamSnapshot {
    /// Compresses `mem`, skipping zero pages. The non-zero pages are cut into chunks of up to
    /// [`RAM_CHUNK`] bytes, compressed on every host core; a chunk that does not compress (a probe
    /// of its start barely shrinks) is stored as it is.
    pub fn of(mem: &[u8]) -> Self {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (i, page) in mem.chunks(RAM_PAGE).enumerate() {
            if page_is_zero(page) {
                continue;
            }
            let i = i as u64;
            match runs.last_mut() {
                Some((first, n)) if *first + *n == i => *n += 1,
                _ => runs.push((i, 1)),
            }
        }
        // The chunks: lists of (offset, length) slices of `mem`, RAM_CHUNK bytes each at most.
        let mut chunks: Vec<Vec<(usize, usize)>> = vec![Vec::new()];
        let mut fill = 0usize;
        for &(first, n) in &runs {
            let mut off = first as usize * RAM_PAGE;
            let end = (off + n as usize * RAM_PAGE).min(mem.len());
            while off < end {
                if fill == RAM_CHUNK {
                    chunks.push(Vec::new());
                    fill = 0;
                }
                let take = (end - off).min(RAM_CHUNK - fill);
                if let Some(c) = chunks.last_mut() {
                    c.push((off, take));
                }
                fill += take;
                off += take;
            }
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
        let encode_chunk = |parts: &Vec<(usize, usize)>| -> Vec<u8> {
            let raw_len: usize = parts.iter().map(|p| p.1).sum();
            let mut out = Vec::with_capacity(9 + raw_len);
            out.extend_from_slice(&(raw_len as u32).to_le_bytes());
            let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            // Probe: does the first 16 KiB shrink by at least 1/16?
            let (o, l) = parts.first().copied().unwrap_or((0, 0));
            let probe = &mem[o..o + l.min(16 << 10)];
            let _ = enc.write_all(probe);
            let _ = enc.flush();
            let compressible = enc.get_ref().len() < probe.len() - probe.len() / 16;
            let payload = if compressible {
                let mut first = true;
                for &(o, l) in parts {
                    let s = if first { &mem[o + probe.len()..o + l] } else { &mem[o..o + l] };
                    first = false;
                    let _ = enc.write_all(s);
                }
                enc.finish().ok().filter(|c| c.len() < raw_len)
            } else {
                None
            };
            match payload {
                Some(c) => {
                    out.push(1);
                    out.extend_from_slice(&(c.len() as u32).to_le_bytes());
                    out.extend_from_slice(&c);
                }
                None => {
                    out.push(0);
                    out.extend_from_slice(&(raw_len as u32).to_le_bytes());
                    for &(o, l) in parts {
                        out.extend_from_slice(&mem[o..o + l]);
                    }
                }
            }
            out
        };
        let mut encoded: Vec<Vec<u8>> = vec![Vec::new(); chunks.len()];
        std::thread::scope(|sc| {
            let per = chunks.len().div_ceil(threads).max(1);
            for (cs, outs) in chunks.chunks(per).zip(encoded.chunks_mut(per)) {
                let encode_chunk = &encode_chunk;
                sc.spawn(move || {
                    for (c, o) in cs.iter().zip(outs.iter_mut()) {
                        *o = encode_chunk(c);
                    }
                });
            }
        });
        RamSnapshot { len: mem.len() as u64, runs, compressed: encoded.concat() }
    }

    /// Writes the pages into `mem` (which must be `len` bytes), zeroing the rest.
    pub fn restore_into(&self, mem: &mut [u8]) -> Result<(), String> {
        if mem.len() as u64 != self.len {
            return Err(format!("RAM of {} bytes, this machine has {}", self.len, mem.len()));
        }
        // The page data: every chunk, decoded, in order.
        let mut data = Vec::new();
        let mut r = Reader { b: &self.compressed, pos: 0 };
        while r.pos < self.compressed.len() {
            let raw_len = r.u32()? as usize;
            let kind = r.take(1)?[0];
            let stored = r.u32()? as usize;
            if raw_len > RAM_CHUNK {
                return Err(format!("chunk of {raw_len} bytes"));
            }
            let body = r.take(stored)?;
            let before = data.len();
            match kind {
                0 if stored == raw_len => data.extend_from_slice(body),
                1 => {
                    data.resize(before + raw_len, 0);
                    let mut dec = flate2::read::ZlibDecoder::new(body);
                    dec.read_exact(&mut data[before..]).map_err(|e| format!("compressed pages: {e}"))?;
                }
                k => return Err(format!("chunk kind {k} with {stored} bytes for {raw_len}")),
            }
        }
        // Pages outside the runs become zero. Fresh guest memory mostly is already: writing only
        // the pages that are not avoids touching (allocating) all of RAM.
        for page in mem.chunks_mut(RAM_PAGE) {
            if !page_is_zero(page) {
                page.fill(0);
            }
        }
        let mut pos = 0usize;
        for &(first, n) in &self.runs {
            let start = first.checked_mul(RAM_PAGE as u64).ok_or("run start overflows")?;
            let bytes = n.checked_mul(RAM_PAGE as u64).ok_or("run length overflows")?;
            let end = start.checked_add(bytes).ok_or("run end overflows")?.min(self.len);
            if start >= end {
                return Err(format!("run at page {first} lies outside RAM"));
            }
            let len = (end - start) as usize;
            let src = data.get(pos..pos + len).ok_or("fewer page bytes than the runs need")?;
            mem[start as usize..end as usize].copy_from_slice(src);
            pos += len;
        }
        if pos != data.len() {
            return Err(format!("{} page bytes more than the runs need", data.len() - pos));
        }
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(16 + self.runs.len() * 16 + self.compressed.len());
        b.extend_from_slice(&self.len.to_le_bytes());
        b.extend_from_slice(&(RAM_PAGE as u32).to_le_bytes());
        b.extend_from_slice(&(self.runs.len() as u32).to_le_bytes());
        for &(f, n) in &self.runs {
            b.extend_from_slice(&f.to_le_bytes());
            b.extend_from_slice(&n.to_le_bytes());
        }
        b.extend_from_slice(&self.compressed);
        b
    }

    fn decode(b: &[u8]) -> Result<Self, String> {
        let mut r = Reader { b, pos: 0 };
        let len = r.u64()?;
        let page = r.u32()?;
        if page as usize != RAM_PAGE {
            return Err(format!("page size {page}"));
        }
        let n = r.u32()? as usize;
        if n.checked_mul(16).is_none_or(|x| x > b.len()) {
            return Err(format!("{n} runs do not fit"));
        }
        let mut runs = Vec::with_capacity(n);
        for _ in 0..n {
            runs.push((r.u64()?, r.u64()?));
        }
        Ok(RamSnapshot { len, runs, compressed: b[r.pos..].to_vec() })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len()).ok_or("ends early")?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }
}

/// A disk as recorded in a snapshot: the image frozen at the snapshot's instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSnapshot {
    /// IDE index (0 primary master .. 3 secondary slave).
    pub index: usize,
    /// The frozen image (the parent of the delta the VM went on with).
    pub frozen: PathBuf,
}

/// Everything a snapshot holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineState {
    /// Guest-visible configuration.
    pub config: SavedConfig,
    /// The CPU.
    pub cpu: CpuSnapshot,
    /// The chips.
    pub board: BoardState,
    /// RAM.
    pub ram: RamSnapshot,
    /// The firmware image, if one was loaded.
    pub bios: Option<Vec<u8>>,
    /// Disks frozen at the snapshot (filled in by [`Machine::snapshot_disks`]'s caller).
    pub disks: Vec<DiskSnapshot>,
}

/// What [`Machine`]'s restore needs besides the state.
pub struct RestoreArgs {
    /// Host-side options (console, trace); RAM size, no-reboot and RTC base come from the state.
    pub host: MachineConfig,
    /// Backends to attach, by IDE index, before the controller's state is restored.
    pub disks: Vec<(usize, Box<dyn devices::BlockBackend>)>,
}

impl std::fmt::Debug for RestoreArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreArgs").field("host", &self.host).field("disks", &self.disks.len()).finish()
    }
}

impl Persist for Machine {
    type State = MachineState;
    type ConstructorArgs = RestoreArgs;
    type Error = SnapshotError;

    fn save(&self) -> MachineState {
        MachineState {
            config: SavedConfig {
                ram_bytes: self.ram_bytes,
                no_reboot: self.no_reboot,
                rtc_unix_seconds: self.board.save_state().rtc_base,
            },
            cpu: CpuSnapshot::of(&self.cpu),
            board: self.board.save_state(),
            ram: RamSnapshot::of(self.board.mem.backing()),
            bios: self.bios.clone(),
            disks: Vec::new(),
        }
    }

    fn restore(args: RestoreArgs, s: &MachineState) -> Result<Self, SnapshotError> {
        let config = MachineConfig {
            ram_bytes: s.config.ram_bytes,
            no_reboot: s.config.no_reboot,
            rtc_unix_seconds: s.config.rtc_unix_seconds,
            ..args.host
        };
        let mut m = Machine::new(config)?;
        if let Some(bios) = &s.bios {
            m.load_bios(bios)?;
        }
        for (index, backend) in args.disks {
            m.attach_disk(index, backend)?;
        }
        let malformed = |section: &str, reason: String| SnapshotError::Malformed { section: section.into(), reason };
        s.ram.restore_into(m.board.mem.backing_mut()).map_err(|e| malformed("RAM", e))?;
        *m.cpu = s.cpu.to_state().map_err(|e| malformed("CPU", e))?;
        m.board.restore_state(&s.board);
        // A local APIC the guest moved answers at its new base again.
        if m.cpu.msr.apic_base & !0xFFF != devices::lapic::LAPIC_DEFAULT_BASE {
            cpu::CpuBus::apic_base_written(&mut m.board, m.cpu.msr.apic_base);
        }
        m.engine.invalidate_phys(0, u64::MAX);
        m.engine.flush_for_mode_change(&mut m.cpu);
        Ok(m)
    }
}

fn tag(name: &str) -> [u8; 8] {
    let mut t = [0u8; 8];
    t[..name.len()].copy_from_slice(name.as_bytes());
    t
}

fn crc(b: &[u8]) -> u32 {
    let mut c = Crc::new();
    c.update(b);
    c.sum()
}

/// Encodes a machine state as a snapshot file image.
pub fn encode(s: &MachineState) -> Vec<u8> {
    let json = |v: &dyn erased::Json| v.to_json();
    let mut sections: Vec<(&str, Vec<u8>)> =
        vec![("CONFIG", json(&s.config)), ("CPU", json(&s.cpu)), ("DEVICES", json(&s.board)), ("RAM", s.ram.encode())];
    if let Some(b) = &s.bios {
        sections.push(("BIOS", b.clone()));
    }
    if !s.disks.is_empty() {
        sections.push(("DISKS", json(&s.disks)));
    }
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_MAJOR.to_le_bytes());
    out.extend_from_slice(&FORMAT_MINOR.to_le_bytes());
    out.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    let hcrc = crc(&out);
    out.extend_from_slice(&hcrc.to_le_bytes());
    for (name, payload) in sections {
        let mut c = Crc::new();
        c.update(&tag(name));
        c.update(&(payload.len() as u64).to_le_bytes());
        c.update(&0u32.to_le_bytes());
        c.update(&payload);
        out.extend_from_slice(&tag(name));
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&c.sum().to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&payload);
    }
    out
}

mod erased {
    /// Object-safe JSON encoding for the section list.
    pub(super) trait Json {
        fn to_json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Vec<u8> {
            // Serializing plain data structs to a Vec cannot fail.
            serde_json::to_vec(self).unwrap_or_default()
        }
    }
}

/// Decodes a snapshot file image, checking magic, version, bounds and checksums.
pub fn decode(b: &[u8]) -> Result<MachineState, SnapshotError> {
    if b.len() < 8 {
        return Err(SnapshotError::Truncated(format!("{} bytes, shorter than the header", b.len())));
    }
    if b[..8] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    if b.len() < 20 {
        return Err(SnapshotError::Truncated(format!("{} bytes, shorter than the header", b.len())));
    }
    let major = u16::from_le_bytes([b[8], b[9]]);
    let minor = u16::from_le_bytes([b[10], b[11]]);
    let count = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
    let hcrc = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
    if crc(&b[..16]) != hcrc {
        return Err(SnapshotError::Checksum("the header".into()));
    }
    if major != FORMAT_MAJOR {
        return Err(SnapshotError::Version { major, minor });
    }
    let mut pos = 20usize;
    let mut found: std::collections::BTreeMap<String, &[u8]> = std::collections::BTreeMap::new();
    for i in 0..count {
        let Some(h) = b.get(pos..pos + 24) else {
            return Err(SnapshotError::Truncated(format!("section header {i} of {count} is cut off")));
        };
        let name = String::from_utf8_lossy(&h[..8]).trim_end_matches('\0').to_string();
        let len = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
        let want = u32::from_le_bytes(h[16..20].try_into().unwrap_or_default());
        pos += 24;
        let end = usize::try_from(len).ok().and_then(|l| pos.checked_add(l)).filter(|&e| e <= b.len());
        let Some(end) = end else {
            return Err(SnapshotError::Truncated(format!(
                "section {name:?} claims {len} bytes, {} remain",
                b.len() - pos
            )));
        };
        let payload = &b[pos..end];
        let mut c = Crc::new();
        c.update(&h[..16]);
        c.update(&h[20..24]);
        c.update(payload);
        if c.sum() != want {
            return Err(SnapshotError::Checksum(format!("section {name:?}")));
        }
        found.insert(name, payload);
        pos = end;
    }
    if pos != b.len() {
        return Err(SnapshotError::Malformed {
            section: "(file)".into(),
            reason: format!("{} bytes after the last section", b.len() - pos),
        });
    }
    fn json<T: serde::de::DeserializeOwned>(
        found: &std::collections::BTreeMap<String, &[u8]>,
        name: &'static str,
    ) -> Result<T, SnapshotError> {
        let p = found.get(name).ok_or(SnapshotError::Missing(name))?;
        serde_json::from_slice(p).map_err(|e| SnapshotError::Malformed { section: name.into(), reason: e.to_string() })
    }
    let ram = RamSnapshot::decode(found.get("RAM").ok_or(SnapshotError::Missing("RAM"))?)
        .map_err(|reason| SnapshotError::Malformed { section: "RAM".into(), reason })?;
    Ok(MachineState {
        config: json(&found, "CONFIG")?,
        cpu: json(&found, "CPU")?,
        board: json(&found, "DEVICES")?,
        ram,
        bios: found.get("BIOS").map(|b| b.to_vec()),
        disks: if found.contains_key("DISKS") { json(&found, "DISKS")? } else { Vec::new() },
    })
}

/// Writes `s` to `path` atomically (a temporary file in the same directory, then a rename).
pub fn write_file(path: &Path, s: &MachineState) -> Result<(), SnapshotError> {
    let io = |source| SnapshotError::Io { path: path.to_path_buf(), source };
    let bytes = encode(s);
    let tmp = path.with_extension("partial");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads and checks a snapshot file.
pub fn read_file(path: &Path) -> Result<MachineState, SnapshotError> {
    let io = |source| SnapshotError::Io { path: path.to_path_buf(), source };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(SnapshotError::Malformed {
            section: "(file)".into(),
            reason: format!("{} bytes is above the {MAX_FILE_BYTES}-byte limit", meta.len()),
        });
    }
    decode(&std::fs::read(path).map_err(io)?)
}

impl Machine {
    /// Asks for a machine reset (QMP `system_reset`); it happens when the next run slice starts,
    /// as a guest-requested one does.
    pub fn request_reset(&mut self) {
        self.board.reset_requested = true;
    }

    /// The machine's full state as a comparable value without RAM (CPU and chips), for tests
    /// and `--state-out`.
    pub fn state_json(&self) -> serde_json::Value {
        let mut h = Crc::new();
        h.update(self.board.mem.backing());
        serde_json::json!({
            "cpu": CpuSnapshot::of(&self.cpu),
            "devices": self.board.save_state(),
            "ram_crc32": h.sum(),
            "ram_bytes": self.board.mem.backing().len(),
        })
    }

    /// Puts the VM on a new VMDK delta for IDE disk `index`: the current image `current` is
    /// flushed and closed (from now on frozen), `child` is created on top of it and attached in
    /// its place, the drive's registers untouched. On failure the old image is reattached.
    pub fn snapshot_disk(&mut self, index: usize, current: &Path, child: &Path) -> Result<(), SnapshotError> {
        let derr = |reason: String| SnapshotError::Disk { index, reason };
        self.board.replace_disk(index, |old| {
            let Some(mut old) = old else {
                return Err((None, derr("no disk attached".into())));
            };
            let read_only = old.read_only();
            if let Err(e) = old.flush() {
                return Err((Some(old), derr(format!("flush: {e}"))));
            }
            drop(old);
            let reopen = || {
                crate::disk::ImageBackend::open(current, read_only)
                    .ok()
                    .map(|b| Box::new(b) as Box<dyn devices::BlockBackend>)
            };
            if let Err(e) = vmdk::snapshot(current, child, vmdk::Subformat::MonolithicSparse, false) {
                let _ = std::fs::remove_file(child);
                return Err((reopen(), derr(format!("creating delta {}: {e}", child.display()))));
            }
            match crate::disk::ImageBackend::open(child, read_only) {
                Ok(b) => Ok(Box::new(b) as Box<dyn devices::BlockBackend>),
                Err(e) => Err((reopen(), derr(format!("opening delta {}: {e}", child.display())))),
            }
        })
    }
}
