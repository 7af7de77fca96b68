//! Whole-image operations: create, snapshot, convert, compare, commit.

use std::path::{Path, PathBuf};

use crate::descriptor::{Access, Descriptor, ExtentKind, ExtentLine, MAX_DISK_SECTORS};
use crate::error::{io, Error, Result};
use crate::header::SECTOR;
use crate::image::{probe, read_descriptor, write_descriptor_opt, BlockDevice, Image, MapKind, Probe, RawImage};
use crate::sparse::{create_sparse, SparseLayout};
use crate::stream::{write_stream, StreamOptions};

/// Sectors per split extent (qemu's 2 GiB).
pub const SPLIT_SECTORS: u64 = 4_194_304;
/// Grain size of the sparse extents we create (64 KiB).
pub const GRAIN_SECTORS: u64 = 128;
/// Sectors reserved for an embedded descriptor (10 KiB, as qemu).
pub const EMBEDDED_DESC_SECTORS: u64 = 20;

/// The hosted subformats (createType values) Ferrovisor creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subformat {
    /// One sparse file with the descriptor embedded.
    MonolithicSparse,
    /// Descriptor + one flat file.
    MonolithicFlat,
    /// Descriptor + 2 GiB sparse extents.
    TwoGbMaxExtentSparse,
    /// Descriptor + 2 GiB flat extents.
    TwoGbMaxExtentFlat,
    /// One compressed, append-only file (VMware layout).
    StreamOptimized,
}

impl Subformat {
    /// All subformats.
    pub const ALL: [Subformat; 5] = [
        Subformat::MonolithicSparse,
        Subformat::MonolithicFlat,
        Subformat::TwoGbMaxExtentSparse,
        Subformat::TwoGbMaxExtentFlat,
        Subformat::StreamOptimized,
    ];

    /// The createType name.
    pub fn as_str(self) -> &'static str {
        match self {
            Subformat::MonolithicSparse => "monolithicSparse",
            Subformat::MonolithicFlat => "monolithicFlat",
            Subformat::TwoGbMaxExtentSparse => "twoGbMaxExtentSparse",
            Subformat::TwoGbMaxExtentFlat => "twoGbMaxExtentFlat",
            Subformat::StreamOptimized => "streamOptimized",
        }
    }

    /// Whether the extents are flat.
    pub fn is_flat(self) -> bool {
        matches!(self, Subformat::MonolithicFlat | Subformat::TwoGbMaxExtentFlat)
    }
}

impl std::str::FromStr for Subformat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Subformat> {
        Subformat::ALL.into_iter().find(|f| f.as_str().eq_ignore_ascii_case(s)).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "unknown subformat {s:?} (monolithicSparse, monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat, streamOptimized)"
            ))
        })
    }
}

/// Adapter types accepted in `ddb.adapterType`.
pub const ADAPTERS: [&str; 5] = ["ide", "buslogic", "lsilogic", "legacyESX", "pvscsi"];

/// Options of [`create`].
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Layout.
    pub subformat: Subformat,
    /// Virtual size in bytes (rounded up to a sector).
    pub size: u64,
    /// `ddb.adapterType`.
    pub adapter: String,
    /// `ddb.virtualHWVersion`.
    pub hw_version: String,
    /// Use zeroed-grain GTEs (sparse only; version 2 extents).
    pub zeroed_grain: bool,
    /// Parent image for a delta link (sparse only).
    pub parent: Option<PathBuf>,
    /// zlib level (0..=9) of streamOptimized grains.
    pub compression_level: u32,
    /// Compression threads for streamOptimized output (0 = one per core).
    pub threads: usize,
    /// Grain size in sectors of hosted sparse extents (a power of two, 8..=65536; default 128).
    pub grain_sectors: u64,
}

impl CreateOptions {
    /// Defaults: monolithicSparse, ide, hardware version 4.
    pub fn new(subformat: Subformat, size: u64) -> CreateOptions {
        CreateOptions {
            subformat,
            size,
            adapter: "ide".into(),
            hw_version: "4".into(),
            zeroed_grain: false,
            parent: None,
            compression_level: crate::stream::DEFAULT_LEVEL,
            threads: 0,
            grain_sectors: GRAIN_SECTORS,
        }
    }
}

fn stem(path: &Path) -> Result<String> {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .ok_or_else(|| Error::InvalidArgument(format!("{}: not a file name", path.display())))
}

/// Builds the descriptor of a new image (without writing anything).
fn new_descriptor(path: &Path, o: &CreateOptions) -> Result<Descriptor> {
    if o.size == 0 {
        return Err(Error::InvalidArgument("size must be greater than zero".into()));
    }
    let sectors = o.size.div_ceil(SECTOR);
    if sectors > MAX_DISK_SECTORS {
        return Err(Error::InvalidArgument(format!("size {} bytes is too large", o.size)));
    }
    if !ADAPTERS.contains(&o.adapter.as_str()) {
        return Err(Error::InvalidArgument(format!("unknown adapter type {:?} ({})", o.adapter, ADAPTERS.join(", "))));
    }
    if o.zeroed_grain && (o.subformat.is_flat() || o.subformat == Subformat::StreamOptimized) {
        return Err(Error::InvalidArgument("zeroed grains need a hosted sparse subformat".into()));
    }
    if !o.grain_sectors.is_power_of_two() || !(8..=crate::header::MAX_GRAIN_SECTORS).contains(&o.grain_sectors) {
        return Err(Error::InvalidArgument(format!(
            "grain size {} sectors: must be a power of two from 8 to {}",
            o.grain_sectors,
            crate::header::MAX_GRAIN_SECTORS
        )));
    }
    if o.parent.is_some() && (o.subformat.is_flat() || o.subformat == Subformat::StreamOptimized) {
        return Err(Error::InvalidArgument(
            "a delta link needs a sparse subformat (not flat or streamOptimized)".into(),
        ));
    }
    if o.subformat == Subformat::MonolithicSparse && sectors > u64::from(u32::MAX) - 1_000_000 {
        return Err(Error::InvalidArgument(
            "monolithicSparse is limited to 2 TiB (use twoGbMaxExtentSparse or a flat subformat)".into(),
        ));
    }
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .ok_or_else(|| Error::InvalidArgument(format!("{}: not a file name", path.display())))?;
    let st = stem(path)?;
    let mut d = Descriptor::new(o.subformat.as_str(), sectors, &o.adapter, &o.hw_version);
    let mut push = |sectors, kind, file: String| {
        d.extents.push(ExtentLine { access: Access::Rw, sectors, kind, file: Some(file), offset: 0 })
    };
    match o.subformat {
        Subformat::MonolithicSparse | Subformat::StreamOptimized => push(sectors, ExtentKind::Sparse, name),
        Subformat::MonolithicFlat => push(sectors, ExtentKind::Flat, format!("{st}-flat.vmdk")),
        Subformat::TwoGbMaxExtentSparse | Subformat::TwoGbMaxExtentFlat => {
            let (kind, c) = if o.subformat.is_flat() { (ExtentKind::Flat, 'f') } else { (ExtentKind::Sparse, 's') };
            let n = sectors.div_ceil(SPLIT_SECTORS);
            for i in 0..n {
                push((sectors - i * SPLIT_SECTORS).min(SPLIT_SECTORS), kind, format!("{st}-{c}{:03}.vmdk", i + 1));
            }
        }
    }
    if let Some(p) = &o.parent {
        let parent = Image::open(p).map_err(|e| Error::Parent { child: path.into(), cause: Box::new(e) })?;
        d.parent_cid = parent.cid();
        let pc = std::fs::canonicalize(p).map_err(io(p))?;
        let dir = std::fs::canonicalize(path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")))
            .map_err(io(path))?;
        let hint = match pc.strip_prefix(&dir) {
            Ok(rel) => rel.to_string_lossy().into_owned(),
            Err(_) => pc.to_string_lossy().into_owned(),
        };
        d.parent_hint = Some(hint);
    }
    Ok(d)
}

/// Creates an empty image. Fails if any of its files exists.
pub fn create(path: &Path, o: &CreateOptions) -> Result<()> {
    let d = new_descriptor(path, o)?;
    create_from_descriptor(path, &d, o.zeroed_grain, o.grain_sectors)
}

fn create_from_descriptor(path: &Path, d: &Descriptor, zeroed_grain: bool, grain_size: u64) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new(""));
    let text = d.to_text();
    match d.create_type.as_str() {
        "monolithicSparse" => {
            let l = SparseLayout {
                capacity: d.extents[0].sectors,
                grain_size,
                zeroed_grain,
                desc_sectors: EMBEDDED_DESC_SECTORS,
            };
            create_sparse(path, l, Some(&text))
        }
        "streamOptimized" => {
            if path.exists() {
                return Err(Error::InvalidArgument(format!("{} already exists", path.display())));
            }
            crate::stream::StreamWriter::create(path, d.extents[0].sectors, &text)?.finish()
        }
        _ => {
            for e in &d.extents {
                let p = dir.join(e.file.as_deref().unwrap_or_default());
                if e.kind == ExtentKind::Flat {
                    let f = std::fs::OpenOptions::new().write(true).create_new(true).open(&p).map_err(io(&p))?;
                    f.set_len(e.sectors * SECTOR).map_err(io(&p))?;
                } else {
                    let l = SparseLayout { capacity: e.sectors, grain_size, zeroed_grain, desc_sectors: 0 };
                    create_sparse(&p, l, None)?;
                }
            }
            let f = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(io(path))?;
            use std::io::Write;
            let mut f = f;
            f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(io(path))
        }
    }
}

/// Creates a delta child of `parent` at `child` (a sparse `subformat`), optionally with zeroed-grain
/// entries (then zero writes in the child take no space and hide the parent's data).
pub fn snapshot(parent: &Path, child: &Path, subformat: Subformat, zeroed_grain: bool) -> Result<()> {
    let p = Image::open(parent)?;
    let mut o = CreateOptions::new(subformat, p.size());
    if let Some(a) = p.descriptor().ddb_get("ddb.adapterType") {
        if ADAPTERS.contains(&a) {
            o.adapter = a.to_string();
        }
    }
    o.parent = Some(parent.to_path_buf());
    o.zeroed_grain = zeroed_grain;
    create(child, &o)
}

/// Any image the tools accept as input.
#[derive(Debug)]
// One per opened file, never in a collection: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
pub enum AnyImage {
    /// A VMDK image (with its chain).
    Vmdk(Image),
    /// A raw file.
    Raw(RawImage),
}

impl AnyImage {
    /// Opens `path`, detecting the format (VMDK by magic or descriptor, otherwise raw).
    pub fn open(path: &Path, writable: bool) -> Result<AnyImage> {
        Ok(match probe(path)? {
            Probe::Other => AnyImage::Raw(RawImage::open(path, writable)?),
            Probe::Foreign(format) => return Err(Error::UnsupportedFormat { path: path.into(), format }),
            _ => AnyImage::Vmdk(if writable { Image::open_rw(path)? } else { Image::open(path)? }),
        })
    }

    /// Opens `path` as raw or VMDK as told.
    pub fn open_as(path: &Path, raw: bool, writable: bool) -> Result<AnyImage> {
        if raw {
            Ok(AnyImage::Raw(RawImage::open(path, writable)?))
        } else {
            Ok(AnyImage::Vmdk(if writable { Image::open_rw(path)? } else { Image::open(path)? }))
        }
    }

    /// The block device.
    pub fn dev(&self) -> &dyn BlockDevice {
        match self {
            AnyImage::Vmdk(i) => i,
            AnyImage::Raw(r) => r,
        }
    }

    /// fdatasync calls made by `flush` so far (see [`Image::sync_count`]).
    pub fn sync_count(&self) -> u64 {
        match self {
            AnyImage::Vmdk(i) => i.sync_count(),
            AnyImage::Raw(r) => r.sync_count(),
        }
    }

    /// Byte ranges that may hold non-zero data (a raw file: everything).
    pub fn data_ranges(&self) -> Result<Vec<(u64, u64)>> {
        match self {
            AnyImage::Vmdk(i) => Ok(i
                .map()?
                .into_iter()
                .filter(|r| matches!(r.kind, MapKind::Data { .. } | MapKind::NoAccess))
                .map(|r| (r.start, r.len))
                .collect()),
            AnyImage::Raw(r) => Ok(r.data_ranges()),
        }
    }
}

/// Output of [`convert`].
#[derive(Debug, Clone)]
pub enum Target {
    /// A raw file.
    Raw,
    /// A VMDK image of this subformat (adapter and hardware version taken from the options).
    Vmdk(CreateOptions),
}

const CHUNK: usize = 1 << 20;
const BLOCK: usize = 64 << 10;

/// Runs of non-zero 64 KiB blocks (aligned in the virtual disk) in `b`, which starts at `off`.
fn nonzero_runs(b: &[u8], off: u64) -> Vec<(usize, usize)> {
    let n = b.len();
    let mut runs = Vec::new();
    let mut i = 0usize;
    while i < n {
        let bend = (((off + i as u64) / BLOCK as u64 + 1) * BLOCK as u64 - off) as usize;
        let j0 = bend.min(n);
        if b[i..j0].iter().all(|&x| x == 0) {
            i = j0;
            continue;
        }
        let mut j = j0;
        while j < n {
            let k = (j + BLOCK).min(n);
            if b[j..k].iter().all(|&x| x == 0) {
                break;
            }
            j = k;
        }
        runs.push((i, j));
        i = j;
    }
    runs
}

type Chunk = (u64, Vec<u8>, Vec<(usize, usize)>);

/// Copies the non-zero 64 KiB blocks of `ranges` from `src` to `dst` (which reads as zeros).
/// Reading (and decompressing) runs on its own thread, overlapped with writing.
pub fn copy_data(
    src: &dyn BlockDevice,
    dst: &dyn BlockDevice,
    ranges: &[(u64, u64)],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    let (tx, rx) = crossbeam::channel::bounded::<Result<Chunk>>(4);
    let (free_tx, free_rx) = crossbeam::channel::bounded::<Vec<u8>>(8);
    std::thread::scope(|sc| -> Result<()> {
        sc.spawn(move || {
            for &(start, len) in ranges {
                let mut p = 0u64;
                while p < len {
                    let off = start + p;
                    // Chunks aligned to 1 MiB so runs line up with grains.
                    let n = ((CHUNK as u64 - off % CHUNK as u64).min(len - p)) as usize;
                    let mut buf = free_rx.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]);
                    buf.resize(n, 0);
                    if let Err(e) = src.read_at(&mut buf, off) {
                        let _ = tx.send(Err(e));
                        return;
                    }
                    let runs = nonzero_runs(&buf, off);
                    if tx.send(Ok((off, buf, runs))).is_err() {
                        return;
                    }
                    p += n as u64;
                }
            }
        });
        // Owned here so that an early error return disconnects the reader instead of blocking it.
        let rx = rx;
        for item in rx.iter() {
            let (off, buf, runs) = item?;
            for (i, j) in runs {
                dst.write_at(&buf[i..j], off + i as u64)?;
            }
            progress(buf.len() as u64);
            let _ = free_tx.try_send(buf);
        }
        Ok(())
    })
}

/// Converts `src` into a new image `dst`. `progress(done, total)` is called as bytes are processed.
pub fn convert(src: &AnyImage, dst: &Path, target: &Target, progress: &(dyn Fn(u64) + Sync)) -> Result<()> {
    let size = src.dev().len();
    let ranges = src.data_ranges()?;
    match target {
        Target::Raw => {
            let out = RawImage::create(dst, size)?;
            copy_data(src.dev(), &out, &ranges, progress)?;
            out.flush()
        }
        Target::Vmdk(o) => {
            let mut o = o.clone();
            o.size = size;
            o.parent = None;
            if o.subformat == Subformat::StreamOptimized {
                let d = new_descriptor(dst, &o)?;
                if dst.exists() {
                    return Err(Error::InvalidArgument(format!("{} already exists", dst.display())));
                }
                let so = StreamOptions { threads: o.threads, level: o.compression_level };
                write_stream(src.dev(), &ranges, dst, &d.to_text(), so, progress)
            } else {
                create(dst, &o)?;
                let out = Image::open_rw(dst)?;
                copy_data(src.dev(), &out, &ranges, progress)?;
                out.flush()
            }
        }
    }
}

/// Compares the guest-visible content. Returns the first differing offset (sector-aligned) or None.
/// A size difference is not a mismatch if the extra tail is zero (as `qemu-img compare`).
/// Reads everything; [`compare_images`] reads only what may hold data.
pub fn compare(a: &dyn BlockDevice, b: &dyn BlockDevice, progress: &(dyn Fn(u64) + Sync)) -> Result<Option<u64>> {
    compare_ranges(a, &[(0, a.len())], b, &[(0, b.len())], progress)
}

/// [`compare`] of two opened images that reads only the ranges where either may hold data (the
/// allocation of sparse extents, SEEK_DATA/SEEK_HOLE on flat extents and raw files), so the cost
/// grows with the allocated data, not the virtual size.
pub fn compare_images(a: &AnyImage, b: &AnyImage, progress: &(dyn Fn(u64) + Sync)) -> Result<Option<u64>> {
    compare_ranges(a.dev(), &a.data_ranges()?, b.dev(), &b.data_ranges()?, progress)
}

/// [`compare`] given, for each device, the byte ranges outside which it reads as zeros.
/// `progress` is called with the bytes covered (read or known zero on both sides).
pub fn compare_ranges(
    a: &dyn BlockDevice,
    ra: &[(u64, u64)],
    b: &dyn BlockDevice,
    rb: &[(u64, u64)],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Option<u64>> {
    let (la, lb) = (a.len(), b.len());
    let total = la.max(lb);
    // Union of both range lists, clipped to the disk, sorted and merged.
    let mut all: Vec<(u64, u64)> = ra
        .iter()
        .map(|&(s, l)| (s.min(la), s.saturating_add(l).min(la)))
        .chain(rb.iter().map(|&(s, l)| (s.min(lb), s.saturating_add(l).min(lb))))
        .filter(|(s, e)| e > s)
        .collect();
    all.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in all {
        match merged.last_mut() {
            Some(m) if s <= m.1 => m.1 = m.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let mut ba = vec![0u8; CHUNK];
    let mut bb = vec![0u8; CHUNK];
    let mut done = 0u64;
    for (s, e) in merged {
        progress(s - done);
        let mut off = s;
        while off < e {
            // Chunks aligned to 1 MiB.
            let n = ((CHUNK as u64 - off % CHUNK as u64).min(e - off)) as usize;
            // Past the end of the shorter image it reads as zeros.
            let read = |d: &dyn BlockDevice, buf: &mut [u8]| -> Result<()> {
                let len = d.len();
                let k = len.saturating_sub(off).min(n as u64) as usize;
                if k > 0 {
                    d.read_at(&mut buf[..k], off)?;
                }
                buf[k..n].fill(0);
                Ok(())
            };
            read(a, &mut ba)?;
            read(b, &mut bb)?;
            if ba[..n] != bb[..n] {
                let i = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y).unwrap_or(0);
                return Ok(Some((off + i as u64) / SECTOR * SECTOR));
            }
            progress(n as u64);
            off += n as u64;
        }
        done = e;
    }
    progress(total - done);
    Ok(None)
}

/// Result of [`commit`].
#[derive(Debug, Clone, Copy)]
pub struct CommitStats {
    /// Bytes of data copied into the parent.
    pub data_bytes: u64,
    /// Bytes zeroed in the parent.
    pub zero_bytes: u64,
    /// The parent's new CID (the child's parentCID was updated to it).
    pub parent_cid: u32,
}

/// Merges the child's own layer into its parent. The child stays valid: its parentCID is updated to
/// the parent's new CID, and its view is unchanged.
pub fn commit(child: &Path, progress: &(dyn Fn(u64) + Sync)) -> Result<CommitStats> {
    let c = Image::open(child)?;
    let parent_path = c.parent_path().ok_or_else(|| {
        Error::InvalidArgument(format!("{} has no parent (parentFileNameHint) to commit into", child.display()))
    })?;
    let layer = c.layer_map()?;
    let parent = Image::open_rw(&parent_path)?;
    let mut stats = CommitStats { data_bytes: 0, zero_bytes: 0, parent_cid: parent.cid() };
    if layer.iter().all(|r| !matches!(r.kind, MapKind::Data { .. } | MapKind::Zero { .. })) {
        return Ok(stats); // nothing to commit; the parent keeps its CID
    }
    for r in &layer {
        let end = r.start + r.len;
        match r.kind {
            MapKind::Data { .. } | MapKind::Zero { .. } if end > parent.size() => {
                return Err(Error::InvalidArgument(format!(
                    "the child has data at {}..{} beyond the parent's size {}",
                    r.start,
                    end,
                    parent.size()
                )))
            }
            _ => {}
        }
    }
    // Renew the parent's CID and point the child at it before any data moves. An interrupted
    // commit then leaves both usable: the parent's changed ranges are exactly the child's own
    // ranges, so the child's view is the same whatever part of the copy happened.
    // The two descriptor writes follow each other with no fsync in between (a process killed
    // between them is the only way to get a CID mismatch); both are synced before data moves.
    let mut d = read_descriptor(child)?;
    stats.parent_cid = parent.renew_cid()?;
    d.parent_cid = stats.parent_cid;
    write_descriptor_opt(child, &d, false)?;
    parent.flush()?;
    std::fs::File::open(child).and_then(|f| f.sync_all()).map_err(io(child))?;
    for r in layer {
        match r.kind {
            MapKind::Data { .. } => {
                copy_data(&c, &parent, &[(r.start, r.len)], progress)?;
                // copy_data skips zero blocks; the child's zero data must also reach the parent.
                let mut buf = vec![0u8; BLOCK];
                let mut p = r.start;
                while p < r.start + r.len {
                    let n = (r.start + r.len - p).min(BLOCK as u64) as usize;
                    c.read_at(&mut buf[..n], p)?;
                    if buf[..n].iter().all(|&x| x == 0) {
                        parent.write_zeroes(p, n as u64)?;
                    }
                    p += n as u64;
                }
                stats.data_bytes += r.len;
            }
            MapKind::Zero { .. } => {
                parent.write_zeroes(r.start, r.len)?;
                stats.zero_bytes += r.len;
            }
            _ => {}
        }
    }
    parent.flush()?;
    debug_assert_eq!(parent.cid(), stats.parent_cid);
    Ok(stats)
}
