//! An opened VMDK image: descriptor, extents, backing chain, and the thread-safe block API.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::descriptor::{self, Access, Descriptor, ExtentKind, ExtentLine, NO_PARENT_CID};
use crate::error::{io, Error, Result};
use crate::header::{SparseHeader, MAGIC, SECTOR};
use crate::sparse::{read_full, Grain, SparseExtent};

/// CID of a descriptor synthesised for a sparse extent that has none.
const SYNTHESISED_CID: u32 = 0xFFFF_FFFE;

/// Deepest backing chain accepted.
pub const MAX_CHAIN_DEPTH: usize = 64;

/// The block interface disk controllers and the tools sit on. All methods take `&self` and are
/// safe to call from several threads.
pub trait BlockDevice: Send + Sync {
    /// Size in bytes.
    fn len(&self) -> u64;
    /// Whether the size is zero.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Writes `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;
    /// Makes `[offset, offset+len)` read as zeros, deallocating where the format allows.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()>;
    /// Discards a range; afterwards it reads as zeros.
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len)
    }
    /// Makes every acknowledged write durable.
    fn flush(&self) -> Result<()>;
}

/// How to open an image.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Open for writing (extent files of RW extents are opened read-write).
    pub writable: bool,
    /// Do not open the backing chain (reads of unallocated grains then return zeros). For `check`.
    pub no_parent: bool,
}

pub(crate) enum ExtentData {
    Flat { file: File, path: PathBuf, offset: u64, dirty: bool },
    Sparse(Box<SparseExtent>),
    Zero,
}

pub(crate) struct Extent {
    pub(crate) line: ExtentLine,
    /// First virtual sector.
    pub(crate) start: u64,
    pub(crate) data: ExtentData,
}

pub(crate) struct Inner {
    pub(crate) desc: Descriptor,
    pub(crate) extents: Vec<Extent>,
    pub(crate) parent: Option<Box<Image>>,
    /// The CID was renewed in this session (also set when there is no stored descriptor).
    cid_renewed: bool,
    /// Where the descriptor disagrees with the sparse headers (the headers were used), for `check`.
    pub(crate) disagreements: Vec<String>,
    /// Facts for `check` that are not errors.
    pub(crate) notes: Vec<String>,
    /// A sparse file with its descriptor embedded (or none): the image is that one file.
    pub(crate) single_file: bool,
    /// fdatasync calls on flat extents.
    flat_syncs: u64,
}

/// An open VMDK image (the top of a backing chain).
pub struct Image {
    path: PathBuf,
    size: u64,
    writable: bool,
    pub(crate) inner: Mutex<Inner>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image").field("path", &self.path).field("size", &self.size).finish()
    }
}

/// How a byte range of the disk is backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapKind {
    /// Data stored in the image at this depth of the chain (0 = the top image).
    Data {
        /// Chain depth.
        depth: usize,
    },
    /// Reads as zeros because of a zeroed-grain entry, a ZERO extent, or a hole (or missing tail)
    /// in a flat extent's file, at this depth.
    Zero {
        /// Chain depth.
        depth: usize,
    },
    /// Not allocated anywhere in the chain: reads as zeros.
    Unallocated,
    /// A NOACCESS extent.
    NoAccess,
}

/// One range of [`Image::map`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapRange {
    /// Byte offset.
    pub start: u64,
    /// Byte length.
    pub len: u64,
    /// What backs it.
    pub kind: MapKind,
}

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Hosted sparse extent (KDMV).
    Sparse,
    /// Text descriptor.
    Descriptor,
    /// ESX COWD sparse (unsupported).
    Cowd,
    /// Another image format (qcow, qcow2, qed, vdi, vhdx, vpc, parallels, luks), named as qemu-img
    /// names it; not supported.
    Foreign(&'static str),
    /// Anything else (raw).
    Other,
}

/// Another image format recognised by its magic (the formats qemu-img probes by magic).
pub fn foreign_format(b: &[u8]) -> Option<&'static str> {
    let at = |o: usize, m: &[u8]| b.len() >= o + m.len() && &b[o..o + m.len()] == m;
    if at(0, b"QFI\xfb") {
        let v = if b.len() >= 8 { u32::from_be_bytes([b[4], b[5], b[6], b[7]]) } else { 0 };
        return Some(if v == 1 { "qcow" } else { "qcow2" });
    }
    if at(0, b"QED\0") {
        return Some("qed");
    }
    if at(0, b"vhdxfile") {
        return Some("vhdx");
    }
    if at(0, b"conectix") {
        return Some("vpc");
    }
    if at(0x40, &0xbeda_107fu32.to_le_bytes()) {
        return Some("vdi");
    }
    if at(0, b"WithoutFreeSpace") || at(0, b"WithouFreSpacExt") {
        return Some("parallels");
    }
    if at(0, b"LUKS\xba\xbe") {
        return Some("luks");
    }
    None
}

/// Looks at the first bytes of a file.
pub fn probe(path: &Path) -> Result<Probe> {
    let f = File::open(path).map_err(io(path))?;
    let mut b = vec![0u8; 4096];
    let n = read_full(&f, &mut b, 0).map_err(io(path))?;
    b.truncate(n);
    Ok(probe_bytes(&b))
}

/// What a file whose first bytes (up to 4 KiB; [`probe`] reads no more) are `b` is taken for.
pub fn probe_bytes(b: &[u8]) -> Probe {
    let n = b.len();
    if n >= 4 && u32::from_le_bytes([b[0], b[1], b[2], b[3]]) == MAGIC {
        Probe::Sparse
    } else if b.starts_with(b"COWD") {
        Probe::Cowd
    } else if descriptor::looks_like_descriptor(b) {
        Probe::Descriptor
    } else if let Some(f) = foreign_format(b) {
        Probe::Foreign(f)
    } else {
        Probe::Other
    }
}

/// Reads the descriptor of the image at `path` (embedded or a text file) without opening extents.
pub fn read_descriptor(path: &Path) -> Result<Descriptor> {
    read_descriptor_ex(path).map(|(d, _)| d)
}

/// Like [`read_descriptor`]; also says whether the descriptor is stored (false for a bare sparse
/// extent without an embedded descriptor, whose descriptor is synthesised).
fn read_descriptor_ex(path: &Path) -> Result<(Descriptor, bool)> {
    let file = File::open(path).map_err(io(path))?;
    match probe(path)? {
        Probe::Sparse => {
            let mut b = [0u8; 512];
            let n = read_full(&file, &mut b, 0).map_err(io(path))?;
            let h = SparseHeader::parse(&b[..n]).map_err(|reason| Error::BadHeader { path: path.into(), reason })?;
            let len = file.metadata().map_err(io(path))?.len();
            h.validate_layout(len).map_err(|reason| Error::BadHeader { path: path.into(), reason })?;
            if h.desc_offset == 0 {
                // qemu-img reads an embedded descriptor at sector 1 whatever descriptorOffset says;
                // a delta whose offset was zeroed must not silently lose its parent.
                let mut t = vec![0u8; (crate::ops::EMBEDDED_DESC_SECTORS * SECTOR) as usize];
                let n = read_full(&file, &mut t, SECTOR).map_err(io(path))?;
                t.truncate(n);
                if descriptor::looks_like_descriptor(&t) {
                    // Not "stored": the header gives it no area, so it is never rewritten (no CID
                    // renewal), as for a bare extent.
                    return Descriptor::parse_opt(&t, false).map(|d| (d, false)).map_err(|e| with_path(e, path));
                }
                // A bare sparse extent: synthesise a monolithic descriptor.
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let mut d = Descriptor::new(
                    if h.compressed() { "streamOptimized" } else { "monolithicSparse" },
                    h.capacity,
                    "ide",
                    "4",
                );
                d.cid = SYNTHESISED_CID;
                d.extents.push(ExtentLine {
                    access: Access::Rw,
                    sectors: h.capacity,
                    kind: ExtentKind::Sparse,
                    file: Some(name),
                    offset: 0,
                });
                return Ok((d, false));
            }
            let mut t = vec![0u8; (h.desc_size * SECTOR) as usize];
            file.read_exact_at(&mut t, h.desc_offset * SECTOR).map_err(io(path))?;
            Descriptor::parse_opt(&t, false).map(|d| (d, true)).map_err(|e| with_path(e, path))
        }
        Probe::Descriptor => {
            let len = file.metadata().map_err(io(path))?.len();
            if len > descriptor::MAX_DESCRIPTOR_BYTES as u64 {
                return Err(Error::NotVmdk { path: path.into(), reason: format!("descriptor file of {len} bytes") });
            }
            let t = std::fs::read(path).map_err(io(path))?;
            Descriptor::parse(&t).map(|d| (d, true)).map_err(|e| with_path(e, path))
        }
        Probe::Cowd => Err(Error::Unsupported {
            path: path.into(),
            reason: "ESX COWD (vmfsSparse) extents are not supported".into(),
        }),
        Probe::Foreign(format) => Err(Error::UnsupportedFormat { path: path.into(), format }),
        Probe::Other => {
            Err(Error::NotVmdk { path: path.into(), reason: "no KDMV magic and no text descriptor".into() })
        }
    }
}

/// How an embedded descriptor disagrees with the header of the file it is embedded in.
fn embedded_disagreements(d: &Descriptor, h: &SparseHeader) -> Vec<String> {
    let mut v = Vec::new();
    if d.extents.len() != 1 {
        v.push(format!(
            "embedded descriptor has {} extent lines; a monolithic sparse file is one extent (itself)",
            d.extents.len()
        ));
    }
    if let Some(e) = d.extents.first() {
        if e.kind != ExtentKind::Sparse {
            v.push(format!("embedded descriptor says extent type {}; the file is a sparse extent", e.kind.as_str()));
        }
        if e.sectors != h.capacity {
            v.push(format!(
                "embedded descriptor says {} sectors; the sparse header's capacity is {} (the header's is used)",
                e.sectors, h.capacity
            ));
        }
        if e.access != Access::Rw {
            v.push(format!("embedded descriptor says access {}; the file is opened as RW", e.access.as_str()));
        }
    }
    let want = if h.compressed() { "streamOptimized" } else { "monolithicSparse" };
    if matches!(d.create_type.as_str(), "monolithicSparse" | "streamOptimized") && d.create_type != want {
        v.push(format!("embedded descriptor says createType {}; the header says {want}", d.create_type));
    }
    v
}

fn with_path(e: Error, path: &Path) -> Error {
    match e {
        Error::BadDescriptor { line, reason } => Error::NotVmdk {
            path: path.into(),
            reason: if line > 0 {
                format!("descriptor line {line}: {reason}")
            } else {
                format!("descriptor: {reason}")
            },
        },
        Error::Unsupported { reason, .. } => Error::Unsupported { path: path.into(), reason },
        e => e,
    }
}

/// Rewrites the descriptor of the image at `path` in place (embedded area or text file) and syncs.
pub fn write_descriptor(path: &Path, d: &Descriptor) -> Result<()> {
    write_descriptor_opt(path, d, true)
}

/// [`write_descriptor`]; `sync = false` leaves syncing to the caller (the write itself is still
/// all-or-nothing for a text descriptor, which is replaced by rename).
pub fn write_descriptor_opt(path: &Path, d: &Descriptor, sync: bool) -> Result<()> {
    let text = d.to_text();
    match probe(path)? {
        Probe::Sparse => {
            let file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(io(path))?;
            let mut b = [0u8; 512];
            file.read_exact_at(&mut b, 0).map_err(io(path))?;
            let h = SparseHeader::parse(&b).map_err(|reason| Error::BadHeader { path: path.into(), reason })?;
            let len = file.metadata().map_err(io(path))?.len();
            h.validate_layout(len).map_err(|reason| Error::BadHeader { path: path.into(), reason })?;
            let room = if h.desc_offset == 0 { 0 } else { (h.desc_size * SECTOR) as usize };
            if room == 0 || text.len() > room {
                return Err(Error::Unsupported {
                    path: path.into(),
                    reason: format!(
                        "the descriptor ({} bytes) does not fit the embedded area ({room} bytes)",
                        text.len()
                    ),
                });
            }
            let mut t = text.into_bytes();
            t.resize(room, 0);
            file.write_all_at(&t, h.desc_offset * SECTOR).map_err(io(path))?;
            if sync {
                file.sync_data().map_err(io(path))?;
            }
            Ok(())
        }
        _ => {
            // Write a sibling file and rename it over the old one: the descriptor is never half-written.
            let tmp = path.with_extension("vmdk-new");
            std::fs::write(&tmp, text).map_err(io(&tmp))?;
            if sync {
                File::open(&tmp).and_then(|f| f.sync_all()).map_err(io(&tmp))?;
            }
            std::fs::rename(&tmp, path).map_err(io(path))
        }
    }
}

impl Image {
    /// Opens an image read-only.
    pub fn open(path: impl AsRef<Path>) -> Result<Image> {
        Image::open_with(path, OpenOptions::default())
    }

    /// Opens an image read-write.
    pub fn open_rw(path: impl AsRef<Path>) -> Result<Image> {
        Image::open_with(path, OpenOptions { writable: true, no_parent: false })
    }

    /// Opens an image with options.
    pub fn open_with(path: impl AsRef<Path>, opts: OpenOptions) -> Result<Image> {
        let mut seen = Vec::new();
        Image::open_chain(path.as_ref(), opts, &mut seen)
    }

    fn open_chain(path: &Path, opts: OpenOptions, seen: &mut Vec<PathBuf>) -> Result<Image> {
        let canon = std::fs::canonicalize(path).map_err(io(path))?;
        if seen.contains(&canon) {
            return Err(Error::ParentLoop { path: canon });
        }
        if seen.len() >= MAX_CHAIN_DEPTH {
            return Err(Error::ChainTooDeep(MAX_CHAIN_DEPTH));
        }
        seen.push(canon.clone());
        let single_file = probe(path)? == Probe::Sparse;
        let (desc, desc_stored) = read_descriptor_ex(path)?;
        // Extent names and the parent hint are relative to the directory of the descriptor as it
        // was named (as qemu-img does), not of wherever a symlink to it points.
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut disagreements = Vec::new();
        let mut notes = Vec::new();
        let mut extents = Vec::with_capacity(desc.extents.len());
        let mut start = 0u64;
        if single_file {
            // A sparse file with an embedded descriptor is one extent: the file itself, whatever
            // name its descriptor carries (a copy or a renamed file must never open the original),
            // with the header's capacity (qemu-img and VMware behave so). The embedded extent
            // lines only say what the header already does; where they disagree the header wins
            // and `check` reports it.
            let file = std::fs::OpenOptions::new().read(true).write(opts.writable).open(path).map_err(io(path))?;
            let s = SparseExtent::open(path, file)?;
            if desc_stored {
                disagreements = embedded_disagreements(&desc, &s.hdr);
            } else if desc.cid != SYNTHESISED_CID {
                notes.push(
                    "the header's descriptorOffset is 0 but sector 1 holds a descriptor: it is used for the CID and the parent (as qemu-img does) and never rewritten"
                        .into(),
                );
            }
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let line = ExtentLine {
                access: Access::Rw,
                sectors: s.hdr.capacity,
                kind: ExtentKind::Sparse,
                file: Some(name),
                offset: 0,
            };
            start = s.hdr.capacity;
            extents.push(Extent { line, start: 0, data: ExtentData::Sparse(Box::new(s)) });
        } else {
            // Files already used, canonical path -> (kind, flat byte range), to refuse aliasing.
            let mut used: Vec<(PathBuf, ExtentKind, u64, u64)> = Vec::new();
            for (idx, line) in desc.extents.iter().enumerate() {
                let mut line = line.clone();
                let data = match line.kind {
                    ExtentKind::Zero => ExtentData::Zero,
                    kind => {
                        let name = line.file.as_deref().unwrap_or_default();
                        let p = dir.join(name);
                        let pc = std::fs::canonicalize(&p).map_err(io(&p))?;
                        let corrupt = |reason: String| Error::Corrupt { path: path.to_path_buf(), reason };
                        if pc == canon {
                            return Err(corrupt(format!("extent {idx} names the descriptor file itself ({name:?})")));
                        }
                        let (lo, hi) = if kind == ExtentKind::Sparse {
                            (0, u64::MAX)
                        } else {
                            (line.offset * SECTOR, (line.offset + line.sectors) * SECTOR)
                        };
                        for (up, uk, ulo, uhi) in &used {
                            let both_flat = kind != ExtentKind::Sparse && *uk != ExtentKind::Sparse;
                            if *up == pc && (!both_flat || (lo < *uhi && *ulo < hi)) {
                                return Err(corrupt(format!(
                                    "extent file {name:?} is used more than once (extent {idx} overlaps an earlier one)"
                                )));
                            }
                        }
                        used.push((pc, kind, lo, hi));
                        let rw = opts.writable && line.access == Access::Rw;
                        let file = std::fs::OpenOptions::new().read(true).write(rw).open(&p).map_err(io(&p))?;
                        if kind == ExtentKind::Sparse {
                            let s = SparseExtent::open(&p, file)?;
                            if line.sectors != s.hdr.capacity {
                                // The header wins (as qemu-img): the descriptor's size is a copy.
                                disagreements.push(format!(
                                    "descriptor extent {idx} ({name:?}) says {} sectors but its sparse header's capacity is {}; the header's is used",
                                    line.sectors, s.hdr.capacity
                                ));
                                line.sectors = s.hdr.capacity;
                            }
                            ExtentData::Sparse(Box::new(s))
                        } else {
                            ExtentData::Flat { file, path: p, offset: line.offset, dirty: false }
                        }
                    }
                };
                let sectors = line.sectors;
                extents.push(Extent { line, start, data });
                start += sectors;
            }
            if start > descriptor::MAX_DISK_SECTORS {
                return Err(Error::Corrupt { path: path.to_path_buf(), reason: "total disk size is absurd".into() });
            }
        }
        let parent = match (&desc.parent_hint, opts.no_parent) {
            (Some(hint), false) => {
                let pp = if Path::new(hint).is_absolute() { PathBuf::from(hint) } else { dir.join(hint) };
                if !pp.exists() {
                    return Err(Error::ParentNotFound { path: pp, hint: hint.clone() });
                }
                let parent = Image::open_chain(&pp, OpenOptions { writable: false, no_parent: false }, seen).map_err(
                    |e| match e {
                        e @ (Error::ParentLoop { .. } | Error::ChainTooDeep(_) | Error::CidMismatch { .. }) => e,
                        e => Error::Parent { child: canon.clone(), cause: Box::new(e) },
                    },
                )?;
                let pcid = parent.cid();
                if desc.parent_cid != pcid {
                    return Err(Error::CidMismatch {
                        child: canon,
                        parent: pp,
                        expected: desc.parent_cid,
                        found: pcid,
                    });
                }
                Some(Box::new(parent))
            }
            _ => None,
        };
        if desc.parent_hint.is_none() && desc.parent_cid != NO_PARENT_CID {
            return Err(Error::Corrupt { path: canon, reason: "parentCID set without parentFileNameHint".into() });
        }
        Ok(Image {
            path: path.to_path_buf(),
            size: start * SECTOR,
            writable: opts.writable,
            inner: Mutex::new(Inner {
                desc,
                extents,
                parent,
                cid_renewed: !desc_stored,
                disagreements,
                notes,
                single_file,
                flat_syncs: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves tables possibly half-updated in memory only; the file
        // is still consistent (grains before entries), so continuing is safe.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Path the image was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the image was opened read-write.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Current content ID.
    pub fn cid(&self) -> u32 {
        self.lock().desc.cid
    }

    /// A copy of the descriptor.
    pub fn descriptor(&self) -> Descriptor {
        self.lock().desc.clone()
    }

    /// Depth of the backing chain below this image.
    pub fn chain_depth(&self) -> usize {
        self.lock().parent.as_ref().map_or(0, |p| 1 + p.chain_depth())
    }

    /// Path of the parent image, if any.
    pub fn parent_path(&self) -> Option<PathBuf> {
        self.lock().parent.as_ref().map(|p| p.path.clone())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(Error::OutOfRange { offset, len, size: self.size });
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at byte `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.lock().read(buf, offset)
    }

    /// Writes `buf` at byte `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        if !self.writable {
            return Err(Error::ReadOnlyImage);
        }
        let mut g = self.lock();
        g.check_writable(offset, buf.len() as u64, false)?;
        g.renew_cid(&self.path, true)?;
        g.write(buf, offset)
    }

    /// Makes a range read as zeros (zeroed-grain entries where possible).
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        if !self.writable {
            return Err(Error::ReadOnlyImage);
        }
        let mut g = self.lock();
        g.check_writable(offset, len, true)?;
        g.renew_cid(&self.path, true)?;
        g.zero(offset, len)
    }

    /// Gives the image its new CID now (as the first write would) and returns it. Lets a caller
    /// point a child at the new CID before changing any data (see [`crate::ops::commit`]).
    /// The new descriptor is written but not synced: `flush` syncs it (so a caller can update
    /// another file right after with no fsync in between).
    pub fn renew_cid(&self) -> Result<u32> {
        if !self.writable {
            return Err(Error::ReadOnlyImage);
        }
        let mut g = self.lock();
        g.renew_cid(&self.path, false)?;
        Ok(g.desc.cid)
    }

    /// Writes all metadata and syncs the files.
    pub fn flush(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        let mut g = self.lock();
        let Inner { extents, flat_syncs, .. } = &mut *g;
        for e in extents {
            match &mut e.data {
                ExtentData::Sparse(s) => s.flush()?,
                // Only what was written since the last flush is synced (a guest may send FLUSH
                // CACHE after every command).
                ExtentData::Flat { file, path, dirty, .. } if *dirty => {
                    *flat_syncs += 1;
                    file.sync_data().map_err(io(path))?;
                    *dirty = false;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// How many fdatasync calls `flush` has made on this image's own files since it was opened
    /// (a flush with nothing written makes none).
    pub fn sync_count(&self) -> u64 {
        let g = self.lock();
        g.flat_syncs
            + g.extents.iter().map(|e| if let ExtentData::Sparse(s) = &e.data { s.syncs } else { 0 }).sum::<u64>()
    }

    /// The allocation map of the whole disk, resolved through the chain; adjacent equal ranges merged.
    pub fn map(&self) -> Result<Vec<MapRange>> {
        let mut out = Vec::new();
        self.map_range(0, self.size, 0, &mut out)?;
        Ok(out)
    }

    fn map_range(&self, start: u64, len: u64, depth: usize, out: &mut Vec<MapRange>) -> Result<()> {
        let layer = self.lock().layer_map(start, len)?;
        for r in layer {
            match r.kind {
                MapKind::Unallocated => {
                    let g = self.lock();
                    if let Some(p) = &g.parent {
                        let plen = p.size.saturating_sub(r.start).min(r.len);
                        if plen > 0 {
                            p.map_range(r.start, plen, depth + 1, out)?;
                        }
                        if plen < r.len {
                            push_merge(out, MapRange { start: r.start + plen, len: r.len - plen, kind: r.kind });
                        }
                        continue;
                    }
                    push_merge(out, r);
                }
                MapKind::Data { .. } => push_merge(out, MapRange { kind: MapKind::Data { depth }, ..r }),
                MapKind::Zero { .. } => push_merge(out, MapRange { kind: MapKind::Zero { depth }, ..r }),
                MapKind::NoAccess => push_merge(out, r),
            }
        }
        Ok(())
    }

    /// The map of this image's own layer only (Unallocated = falls through to the parent).
    pub fn layer_map(&self) -> Result<Vec<MapRange>> {
        self.lock().layer_map(0, self.size)
    }

    /// Number of bytes allocated in this image's own layer (data grains and flat extents).
    pub fn allocated_bytes(&self) -> Result<u64> {
        Ok(self.layer_map()?.iter().filter(|r| matches!(r.kind, MapKind::Data { .. })).map(|r| r.len).sum())
    }

    /// Information about the extents, for `info`.
    pub fn extent_info(&self) -> Vec<ExtentInfo> {
        let g = self.lock();
        g.extents
            .iter()
            .map(|e| {
                let (path, file_size, header) = match &e.data {
                    ExtentData::Flat { file, path, .. } => {
                        (Some(path.clone()), file.metadata().map(|m| m.len()).unwrap_or(0), None)
                    }
                    ExtentData::Sparse(s) => (Some(s.path.clone()), s.file_len, Some(s.hdr)),
                    ExtentData::Zero => (None, 0, None),
                };
                ExtentInfo { line: e.line.clone(), path, file_size, header }
            })
            .collect()
    }
}

/// Per-extent facts for `info`.
#[derive(Debug, Clone)]
pub struct ExtentInfo {
    /// The descriptor line.
    pub line: ExtentLine,
    /// Resolved file path.
    pub path: Option<PathBuf>,
    /// File size in bytes.
    pub file_size: u64,
    /// Sparse header (effective: the footer for GD_AT_END streams).
    pub header: Option<SparseHeader>,
}

fn push_merge(out: &mut Vec<MapRange>, r: MapRange) {
    if r.len == 0 {
        return;
    }
    if let Some(l) = out.last_mut() {
        if l.kind == r.kind && l.start + l.len == r.start {
            l.len += r.len;
            return;
        }
    }
    out.push(r);
}

impl Drop for Image {
    fn drop(&mut self) {
        if self.writable {
            let _ = self.flush();
        }
    }
}

impl Inner {
    /// Calls `f(extent_index, byte_offset_in_extent, virtual_offset, len)` for each piece of a range.
    fn pieces(&self, offset: u64, len: u64) -> Vec<(usize, u64, u64, u64)> {
        let mut v = Vec::new();
        let mut pos = offset;
        let end = offset + len;
        let first = self.extents.partition_point(|e| (e.start + e.line.sectors) * SECTOR <= pos);
        for (i, e) in self.extents.iter().enumerate().skip(first) {
            if pos >= end {
                break;
            }
            let es = e.start * SECTOR;
            let ee = (e.start + e.line.sectors) * SECTOR;
            if ee <= pos {
                continue;
            }
            let n = end.min(ee) - pos;
            v.push((i, pos - es, pos, n));
            pos += n;
        }
        v
    }

    fn read(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0usize;
        for (i, eoff, voff, n) in self.pieces(offset, buf.len() as u64) {
            let out = &mut buf[done..done + n as usize];
            done += n as usize;
            let Inner { extents, parent, .. } = self;
            let e = &mut extents[i];
            if e.line.access == Access::NoAccess {
                return Err(Error::NoAccess { sector: voff / SECTOR, extent: i });
            }
            match &mut e.data {
                ExtentData::Zero => out.fill(0),
                ExtentData::Flat { file, path, offset, .. } => {
                    let k = read_full(file, out, *offset * SECTOR + eoff).map_err(io(path))?;
                    out[k..].fill(0);
                }
                ExtentData::Sparse(s) => {
                    let gb = s.grain_bytes() as u64;
                    let gs = s.hdr.grain_size;
                    let mut p = 0usize;
                    while p < out.len() {
                        let o = eoff + p as u64;
                        let g = o / gb;
                        let go = (o % gb) as usize;
                        let st = s.lookup(g)?;
                        // One I/O for a run of grains that are adjacent in the file (or all
                        // unallocated, or all zero); compressed grains go one by one.
                        let mut k = (gb as usize - go).min(out.len() - p);
                        let mut last = st;
                        let mut n = 1;
                        while p + k < out.len() && !matches!(st, Grain::Compressed(_)) {
                            let next = s.lookup(g + n)?;
                            let adjacent = match (last, next) {
                                (Grain::Data(a), Grain::Data(b)) => b == a + gs,
                                (Grain::Unallocated, Grain::Unallocated) | (Grain::Zero, Grain::Zero) => true,
                                _ => false,
                            };
                            if !adjacent {
                                break;
                            }
                            last = next;
                            k += (gb as usize).min(out.len() - p - k);
                            n += 1;
                        }
                        let chunk = &mut out[p..p + k];
                        match st {
                            Grain::Unallocated => read_parent(parent.as_deref(), chunk, voff + p as u64)?,
                            Grain::Zero => chunk.fill(0),
                            Grain::Data(sec) => {
                                let r = read_full(&s.file, chunk, sec * SECTOR + go as u64);
                                let r = r.map_err(io(&s.path))?;
                                chunk[r..].fill(0);
                            }
                            Grain::Compressed(_) => s.read_grain(g, st, go, chunk)?,
                        }
                        p += k;
                    }
                }
            }
        }
        Ok(())
    }

    fn check_writable(&self, offset: u64, len: u64, zero: bool) -> Result<()> {
        for (i, _, voff, _) in self.pieces(offset, len) {
            let e = &self.extents[i];
            let refuse = match (e.line.access, &e.data) {
                (Access::Rw, ExtentData::Zero) => !zero,
                (Access::Rw, ExtentData::Sparse(s)) if s.hdr.compressed() => {
                    return Err(Error::StreamReadOnly { path: s.path.clone() })
                }
                (Access::Rw, ExtentData::Sparse(s)) if s.layout_error.is_some() => {
                    return Err(Error::Corrupt {
                        path: s.path.clone(),
                        reason: format!("writes refused: {}", s.layout_error.as_deref().unwrap_or_default()),
                    })
                }
                (Access::Rw, _) => false,
                _ => true,
            };
            if refuse {
                let access = if matches!(e.data, ExtentData::Zero) && e.line.access == Access::Rw {
                    "a ZERO extent".to_string()
                } else {
                    e.line.access.as_str().to_string()
                };
                return Err(Error::ReadOnlyExtent { sector: voff / SECTOR, extent: i, access });
            }
        }
        Ok(())
    }

    /// Renews the CID on the first write after open (before any data changes, so a child never sees
    /// changed data under the old CID).
    fn renew_cid(&mut self, path: &Path, sync: bool) -> Result<()> {
        if self.cid_renewed {
            return Ok(());
        }
        let mut d = self.desc.clone();
        d.cid = descriptor::new_cid();
        write_descriptor_opt(path, &d, sync)?;
        self.desc = d;
        self.cid_renewed = true;
        Ok(())
    }

    fn write(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        let mut done = 0usize;
        for (i, eoff, voff, n) in self.pieces(offset, buf.len() as u64) {
            let data = &buf[done..done + n as usize];
            done += n as usize;
            let Inner { extents, parent, .. } = self;
            match &mut extents[i].data {
                ExtentData::Zero => unreachable!("refused by check_writable"),
                ExtentData::Flat { file, path, offset, dirty } => {
                    *dirty = true;
                    file.write_all_at(data, *offset * SECTOR + eoff).map_err(io(path))?
                }
                ExtentData::Sparse(s) => {
                    let gb = s.grain_bytes() as u64;
                    let mut p = 0usize;
                    while p < data.len() {
                        let o = eoff + p as u64;
                        let g = o / gb;
                        let go = (o % gb) as usize;
                        let whole = (data.len() - p) / gb as usize;
                        if go == 0 && whole >= 2 {
                            let n = s.write_new_grains(g, &data[p..p + whole * gb as usize])?;
                            if n > 0 {
                                p += (n * gb) as usize;
                                continue;
                            }
                        }
                        let k = (gb as usize - go).min(data.len() - p);
                        let gvirt = voff + p as u64 - go as u64;
                        let par = parent.as_deref();
                        s.write_grain(g, go, &data[p..p + k], &mut |b| read_parent(par, b, gvirt))?;
                        p += k;
                    }
                }
            }
        }
        Ok(())
    }

    fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        for (i, eoff, voff, n) in self.pieces(offset, len) {
            let Inner { extents, parent, .. } = self;
            match &mut extents[i].data {
                ExtentData::Zero => {}
                ExtentData::Flat { file, path, offset, dirty } => {
                    *dirty = true;
                    let z = vec![0u8; n.min(1 << 20) as usize];
                    let mut p = 0u64;
                    while p < n {
                        let k = (n - p).min(z.len() as u64);
                        file.write_all_at(&z[..k as usize], *offset * SECTOR + eoff + p).map_err(io(path))?;
                        p += k;
                    }
                }
                ExtentData::Sparse(s) => {
                    let gb = s.grain_bytes() as u64;
                    let mut p = 0u64;
                    while p < n {
                        let o = eoff + p;
                        let g = o / gb;
                        let go = o % gb;
                        let k = (gb - go).min(n - p);
                        let par = parent.as_deref();
                        if k == gb {
                            s.zero_grain(g, par.is_some())?;
                        } else {
                            let z = vec![0u8; k as usize];
                            let gvirt = voff + p - go;
                            s.write_grain(g, go as usize, &z, &mut |b| read_parent(par, b, gvirt))?;
                        }
                        p += k;
                    }
                }
            }
        }
        Ok(())
    }

    fn layer_map(&mut self, offset: u64, len: u64) -> Result<Vec<MapRange>> {
        let mut out = Vec::new();
        for (i, eoff, voff, n) in self.pieces(offset, len) {
            let e = &mut self.extents[i];
            if e.line.access == Access::NoAccess {
                push_merge(&mut out, MapRange { start: voff, len: n, kind: MapKind::NoAccess });
                continue;
            }
            match &mut e.data {
                ExtentData::Zero => {
                    push_merge(&mut out, MapRange { start: voff, len: n, kind: MapKind::Zero { depth: 0 } })
                }
                ExtentData::Flat { file, offset, .. } => {
                    // Holes in a flat file (and a short file's missing tail) read as zeros.
                    let base = *offset * SECTOR;
                    let mut p = 0u64;
                    for (d, l) in file_data_ranges(file, base + eoff, base + eoff + n) {
                        let at = d - base - eoff;
                        push_merge(
                            &mut out,
                            MapRange { start: voff + p, len: at - p, kind: MapKind::Zero { depth: 0 } },
                        );
                        push_merge(&mut out, MapRange { start: voff + at, len: l, kind: MapKind::Data { depth: 0 } });
                        p = at + l;
                    }
                    push_merge(&mut out, MapRange { start: voff + p, len: n - p, kind: MapKind::Zero { depth: 0 } });
                }
                ExtentData::Sparse(s) => {
                    let gb = s.grain_bytes() as u64;
                    let mut p = 0u64;
                    while p < n {
                        let o = eoff + p;
                        let g = o / gb;
                        let (st, run) = s.lookup_run(g, (eoff + n).div_ceil(gb) - g)?;
                        let k = (run * gb - o % gb).min(n - p);
                        let kind = match st {
                            Grain::Unallocated => MapKind::Unallocated,
                            Grain::Zero => MapKind::Zero { depth: 0 },
                            _ => MapKind::Data { depth: 0 },
                        };
                        push_merge(&mut out, MapRange { start: voff + p, len: k, kind });
                        p += k;
                    }
                }
            }
        }
        Ok(out)
    }
}

fn read_parent(parent: Option<&Image>, buf: &mut [u8], voff: u64) -> Result<()> {
    match parent {
        Some(p) if voff < p.size => {
            let n = ((p.size - voff) as usize).min(buf.len());
            p.read_at(&mut buf[..n], voff)?;
            buf[n..].fill(0);
            Ok(())
        }
        _ => {
            buf.fill(0);
            Ok(())
        }
    }
}

impl BlockDevice for Image {
    fn len(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        Image::read_at(self, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        Image::write_at(self, buf, offset)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        Image::write_zeroes(self, offset, len)
    }
    fn flush(&self) -> Result<()> {
        Image::flush(self)
    }
}

/// A raw image file as a [`BlockDevice`].
#[derive(Debug)]
pub struct RawImage {
    file: File,
    path: PathBuf,
    size: u64,
    writable: bool,
    /// Bytes written since write-back was last started (see [`RawImage::write_at`]).
    unsynced: std::sync::atomic::AtomicU64,
    /// Written since the last flush.
    dirty: std::sync::atomic::AtomicBool,
    /// fdatasync calls made by `flush`.
    syncs: std::sync::atomic::AtomicU64,
}

impl RawImage {
    /// Opens a raw file.
    pub fn open(path: impl AsRef<Path>, writable: bool) -> Result<RawImage> {
        let path = path.as_ref();
        let file = std::fs::OpenOptions::new().read(true).write(writable).open(path).map_err(io(path))?;
        let size = file.metadata().map_err(io(path))?.len();
        Ok(RawImage {
            file,
            path: path.to_path_buf(),
            size,
            writable,
            unsynced: Default::default(),
            dirty: Default::default(),
            syncs: Default::default(),
        })
    }

    /// Creates (or truncates) a raw file of `size` bytes.
    pub fn create(path: impl AsRef<Path>, size: u64) -> Result<RawImage> {
        let path = path.as_ref();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io(path))?;
        file.set_len(size).map_err(io(path))?;
        Ok(RawImage {
            file,
            path: path.to_path_buf(),
            size,
            writable: true,
            unsynced: Default::default(),
            dirty: Default::default(),
            syncs: Default::default(),
        })
    }
}

impl RawImage {
    /// How many fdatasync calls `flush` has made (a flush with nothing written makes none).
    pub fn sync_count(&self) -> u64 {
        self.syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Byte ranges holding data according to the file system (SEEK_DATA/SEEK_HOLE); holes read as
    /// zeros and need not be copied. Falls back to the whole file where the call is unsupported.
    pub fn data_ranges(&self) -> Vec<(u64, u64)> {
        file_data_ranges(&self.file, 0, self.size)
    }
}

/// The parts of bytes `[lo, hi)` of `file` that hold data according to the file system
/// (SEEK_DATA/SEEK_HOLE), as (start, len) in file offsets; bytes past the end of the file are
/// not data. Where the calls are unsupported the whole range (up to the end of the file) is data.
pub(crate) fn file_data_ranges(file: &File, lo: u64, hi: u64) -> Vec<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let flen = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    let hi = hi.min(flen);
    let whole = || if hi > lo { vec![(lo, hi - lo)] } else { Vec::new() };
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = lo;
    while pos < hi {
        let Ok(p) = libc::off_t::try_from(pos) else { return whole() };
        // SAFETY: lseek on a file descriptor we own; it only moves the file offset, which this
        // crate never uses (all I/O is positional pread/pwrite).
        let data = unsafe { libc::lseek(fd, p, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // no more data after pos
            }
            return whole();
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return whole();
        }
        let (d, h) = ((data as u64).max(pos), (hole as u64).min(hi));
        if d >= hi {
            break;
        }
        if h > d {
            out.push((d, h - d));
        }
        if h <= pos {
            return whole();
        }
        pos = h;
    }
    out
}

impl BlockDevice for RawImage {
    fn len(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if offset.checked_add(buf.len() as u64).is_none_or(|e| e > self.size) {
            return Err(Error::OutOfRange { offset, len: buf.len() as u64, size: self.size });
        }
        let n = read_full(&self.file, buf, offset).map_err(io(&self.path))?;
        buf[n..].fill(0);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnlyImage);
        }
        if offset.checked_add(buf.len() as u64).is_none_or(|e| e > self.size) {
            return Err(Error::OutOfRange { offset, len: buf.len() as u64, size: self.size });
        }
        self.dirty.store(true, std::sync::atomic::Ordering::Release);
        self.file.write_all_at(buf, offset).map_err(io(&self.path))?;
        // Start write-back every 32 MiB so that a bulk copy overlaps with the disk and the final
        // flush has little left to do.
        use std::sync::atomic::Ordering;
        let n = self.unsynced.fetch_add(buf.len() as u64, Ordering::Relaxed) + buf.len() as u64;
        if n >= 32 << 20 {
            self.unsynced.store(0, Ordering::Relaxed);
            use std::os::fd::AsRawFd;
            // SAFETY: sync_file_range only starts write-back of this file's dirty pages; it does
            // not touch memory we own. Failure is harmless (flush still syncs), so it is ignored.
            unsafe {
                libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        let z = vec![0u8; len.min(1 << 20) as usize];
        let mut p = 0;
        while p < len {
            let k = (len - p).min(z.len() as u64);
            self.write_at(&z[..k as usize], offset + p)?;
            p += k;
        }
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        // Clear before syncing: a write racing with the sync marks the file dirty again.
        if self.writable && self.dirty.swap(false, Ordering::AcqRel) {
            self.syncs.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.file.sync_data() {
                self.dirty.store(true, Ordering::Release);
                return Err(io(&self.path)(e));
            }
        }
        Ok(())
    }
}
