//! Whole-machine snapshots: the [`Persist`] implementation of [`Machine`] and the snapshot file.
//!
//! # File format (version 1.1, all integers little-endian)
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
//! - `CPU`: JSON [`CpuStateSnapshot`], `CpuState`'s `Persist` state (registers, descriptor
//!   caches, MSRs, the FXSAVE image of the FPU as 512 bytes, NMI latches, instruction count);
//! - `DEVICES`: JSON [`BoardState`] (every chip through its `Persist` state, the COM1 input not
//!   yet delivered, a latched NMI);
//! - `RAM`: the guest backing store as `mmu::PhysMemory`'s `Persist` state ([`RamState`]),
//!   sparse: `len u64`, `page_size u32`, `runs u32`, then `runs`
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
//!
//! History: 1.0 was the first release (`tests/data/pit-v1.0.fvsnap` is one, and still loads);
//! 1.1 adds to the CPU section the state's version, the NMI latches, the x87 selectors and XCR0,
//! with FOP/FIP/FDP in the FXSAVE image, and to the devices the pending COM1 input and the
//! latched NMI. A 1.0 file restores those to their reset values, which is what a 1.0 writer
//! implied.

use crate::board::persist::BoardState;
use crate::{Machine, MachineConfig, MachineError};
use base::Persist;
use cpu::persist::CpuStateSnapshot;
use cpu::CpuState;
use mmu::{PhysMemory, RamState};

use flate2::Crc;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

pub use devices::BlockBackend;

/// The file's magic number.
pub const MAGIC: [u8; 8] = *b"FVSNAPSH";
/// Format major version written and read by this build.
pub const FORMAT_MAJOR: u16 = 1;
/// Format minor version written by this build.
pub const FORMAT_MINOR: u16 = 1;
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
    #[error("{}", path.display())]
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
    #[error("cannot rebuild the saved machine")]
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

/// The RAM section's codec: [`RamState`] (the sparse pages [`mmu::PhysMemory`]'s `Persist`
/// gives) with its page data cut into chunks of at most [`RAM_CHUNK`] bytes, each compressed
/// with zlib on every host core, or stored as it is when a probe of its start barely shrinks.
mod ram_section {
    use super::{RAM_CHUNK, RAM_PAGE};
    use mmu::RamState;
    use std::io::{Read, Write};

    /// One chunk: `raw_len u32`, `kind u8` (0 stored, 1 zlib), `stored_len u32`, data.
    fn encode_chunk(raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + raw.len());
        out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        // Probe: does the first 16 KiB shrink by at least 1/16?
        let probe = &raw[..raw.len().min(16 << 10)];
        let _ = enc.write_all(probe);
        let _ = enc.flush();
        let compressible = enc.get_ref().len() < probe.len() - probe.len() / 16;
        let payload = if compressible {
            let _ = enc.write_all(&raw[probe.len()..]);
            enc.finish().ok().filter(|c| c.len() < raw.len())
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
                out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
                out.extend_from_slice(raw);
            }
        }
        out
    }

    /// The section: `len u64`, `page_size u32`, `runs u32`, `runs` × (`first_page u64`,
    /// `pages u64`), then the chunks.
    pub(super) fn encode(s: &RamState) -> Vec<u8> {
        let chunks: Vec<&[u8]> = s.pages.chunks(RAM_CHUNK).collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
        let mut encoded: Vec<Vec<u8>> = vec![Vec::new(); chunks.len()];
        std::thread::scope(|sc| {
            let per = chunks.len().div_ceil(threads).max(1);
            for (cs, outs) in chunks.chunks(per).zip(encoded.chunks_mut(per)) {
                sc.spawn(move || {
                    for (c, o) in cs.iter().zip(outs.iter_mut()) {
                        *o = encode_chunk(c);
                    }
                });
            }
        });
        let body: usize = encoded.iter().map(Vec::len).sum();
        let mut b = Vec::with_capacity(16 + s.runs.len() * 16 + body);
        b.extend_from_slice(&s.len.to_le_bytes());
        b.extend_from_slice(&(RAM_PAGE as u32).to_le_bytes());
        b.extend_from_slice(&(s.runs.len() as u32).to_le_bytes());
        for &(f, n) in &s.runs {
            b.extend_from_slice(&f.to_le_bytes());
            b.extend_from_slice(&n.to_le_bytes());
        }
        for e in encoded {
            b.extend_from_slice(&e);
        }
        b
    }

    /// Reads the section back. The page data may not exceed what the runs can cover, so a
    /// crafted chunk length cannot make the reader allocate more than the saved RAM.
    pub(super) fn decode(b: &[u8]) -> Result<RamState, String> {
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
        let mut cover = 0u64;
        for _ in 0..n {
            let run = (r.u64()?, r.u64()?);
            let range = RamState::run_bytes(len, run).map_err(|e| e.0)?;
            cover = cover.saturating_add(range.len() as u64);
            runs.push(run);
        }
        if cover > len {
            return Err(format!("runs cover {cover} bytes of a {len}-byte RAM"));
        }
        let mut pages = Vec::new();
        while r.pos < b.len() {
            let raw_len = r.u32()? as usize;
            let kind = r.take(1)?[0];
            let stored = r.u32()? as usize;
            if raw_len > RAM_CHUNK || (pages.len() + raw_len) as u64 > cover {
                return Err(format!("chunk of {raw_len} bytes"));
            }
            let body = r.take(stored)?;
            let before = pages.len();
            match kind {
                0 if stored == raw_len => pages.extend_from_slice(body),
                1 => {
                    pages.resize(before + raw_len, 0);
                    let mut dec = flate2::read::ZlibDecoder::new(body);
                    dec.read_exact(&mut pages[before..]).map_err(|e| format!("compressed pages: {e}"))?;
                }
                k => return Err(format!("chunk kind {k} with {stored} bytes for {raw_len}")),
            }
        }
        Ok(RamState { len, runs, pages })
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
    pub cpu: CpuStateSnapshot,
    /// The chips.
    pub board: BoardState,
    /// RAM (the backing store: RAM and ROM), zero pages left out.
    pub ram: RamState,
    /// The firmware image, if one was loaded.
    pub bios: Option<Vec<u8>>,
    /// Disks frozen at the snapshot (filled in by the caller of [`Machine::snapshot_disk`]).
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
            cpu: self.cpu.save(),
            board: self.board.save_state(),
            ram: self.board.mem.save(),
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
        // The map Machine::new laid out keeps its mapping and takes the saved contents.
        let placeholder = PhysMemory::new(RAM_PAGE as u64).map_err(|e| malformed("RAM", e.to_string()))?;
        let map = std::mem::replace(&mut m.board.mem, placeholder);
        m.board.mem = PhysMemory::restore(map, &s.ram).map_err(|e| malformed("RAM", e.0))?;
        *m.cpu = CpuState::restore((), &s.cpu).map_err(|e| malformed("CPU", e.0))?;
        m.board.restore_state(&s.board);
        m.board.serial_in = crate::serial_input::SerialInput::restore(None, &s.board.serial_in)
            .map_err(|e| malformed("DEVICES", e.0))?;
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
    let mut sections: Vec<(&str, Vec<u8>)> = vec![
        ("CONFIG", json(&s.config)),
        ("CPU", json(&s.cpu)),
        ("DEVICES", json(&s.board)),
        ("RAM", ram_section::encode(&s.ram)),
    ];
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
    let ram = ram_section::decode(found.get("RAM").ok_or(SnapshotError::Missing("RAM"))?)
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
            "cpu": self.cpu.save(),
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
